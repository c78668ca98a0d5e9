#!/usr/bin/env bash
# Installs what the build needs, builds tmdflow and runs every test (ctest).
# Usage: bash scripts/test.sh            (build directory: build/)
#        TMDFLOW_SANITIZE=1 bash scripts/test.sh   (ASan+UBSan build in build-asan/)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
build=build
flags=(-DCMAKE_BUILD_TYPE=Release)
if [ "${TMDFLOW_SANITIZE:-0}" = 1 ]; then build=build-asan; flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DTMD_SANITIZE=ON); fi
cmake -S . -B "$build" "${flags[@]}" >/dev/null
cmake --build "$build" -j"$(nproc)"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
cd "$build" && ctest --output-on-failure -j"${TMDFLOW_TEST_JOBS:-2}" "$@"
