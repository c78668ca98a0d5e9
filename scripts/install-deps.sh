#!/usr/bin/env bash
# Installs the Debian 12 packages tmdflow needs to build, test and run.
# Idempotent: when every package is already installed it returns in well under a second.
set -euo pipefail
PKGS=(build-essential cmake pkg-config
      libopenmpi-dev openmpi-bin
      libhdf5-openmpi-dev hdf5-tools
      libopenblas-dev
      libfftw3-dev
      libtiff-dev
      libcunit1-dev
      libinih-dev
      libpng-dev)
if [ "${TMDFLOW_WITH_SLURM:-1}" = 1 ]; then PKGS+=(slurm-wlm munge); fi
if [ "${TMDFLOW_WITH_FUZZ:-0}" = 1 ]; then PKGS+=(clang libclang-rt-14-dev); fi
# benchmarks/unet-vs-torch compares against PyTorch (large; only on request)
if [ "${TMDFLOW_WITH_TORCH:-0}" = 1 ]; then PKGS+=(python3-torch); fi
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
