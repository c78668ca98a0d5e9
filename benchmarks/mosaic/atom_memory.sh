#!/usr/bin/env bash
# Builds and runs benchmarks/mosaic/atom_memory.c against BUILD_DIR/libtmdflow.a (the link line
# of the tmdflow program), for the given atom counts (default: the per-rank atoms of 8192² to
# 32768² mosaics on 1 and 2 ranks). One process, no MPI job; prints CSV (see the .c file).
#   benchmarks/mosaic/atom_memory.sh [BUILD_DIR] [N ...]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=$(cd "${1:-$here/../../build}" && pwd)
shift || true
counts=${*:-"110000 225000 450000 900000 1800000 3600000"}
link=$(sed -e 's/^.*-o tmdflow *//' "$build/CMakeFiles/tmdflow.dir/link.txt")
exe=$build/atom_memory
(cd "$build" && mpicc -O2 -std=c11 -D_GNU_SOURCE -I"$here/../../include" "$here/atom_memory.c" -o "$exe" $link)
export OPENBLAS_NUM_THREADS=1
exec "$exe" $counts
