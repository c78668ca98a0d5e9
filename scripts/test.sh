#!/usr/bin/env bash
# Installs what the build needs, builds tmdflow and runs every test (ctest): unit tests, MPI
# tests at 1/2/4 ranks, command-line tests, the real-SLURM test.
# Usage: bash scripts/test.sh                      (Release build in build/)
#        TMDFLOW_SANITIZE=1 bash scripts/test.sh   (clang AddressSanitizer + UndefinedBehavior-
#            Sanitizer build in build-asan/: the whole suite under the sanitizers, plus a
#            smoke run of every libFuzzer harness in tests/fuzz/; installs clang)
# Extra arguments go to ctest (e.g. -R slurm).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
build=build
flags=(-DCMAKE_BUILD_TYPE=Release)
if [ "${TMDFLOW_SANITIZE:-0}" = 1 ]; then
    TMDFLOW_WITH_FUZZ=1 bash scripts/install-deps.sh
    build=build-asan
    # One clang build serves both: the suite under ASan+UBSan and the fuzz harnesses.
    if [ -f "$build/CMakeCache.txt" ] && ! grep -q "CMAKE_C_COMPILER:.*clang" "$build/CMakeCache.txt"; then
        rm -rf "$build"
    fi
    flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang -DTMD_SANITIZE=ON -DTMD_FUZZ=ON)
    mkdir -p "$build"
    # Open MPI's plugins must stay mapped for LeakSanitizer to name them (see the file).
    cc -shared -fPIC -O2 -o "$build/libnodlclose.so" tests/sanitizers/nodlclose.c
    # Full stack unwinding at malloc (fast unwinding stops in libraries built without frame
    # pointers, and the suppressions could not match); 12 frames reach MPI_Init from any
    # allocation Open MPI makes at start-up and keep the cost moderate.
    san_env=(ASAN_OPTIONS=fast_unwind_on_malloc=0:malloc_context_size=12:detect_leaks=1
             LSAN_OPTIONS=suppressions=$PWD/tests/sanitizers/lsan.supp:print_suppressions=0
             UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
             LD_PRELOAD=$PWD/$build/libnodlclose.so)
else
    bash scripts/install-deps.sh
    san_env=()
fi
cmake -S . -B "$build" "${flags[@]}" >/dev/null
cmake --build "$build" -j"$(nproc)"
[ ${#san_env[@]} -gt 0 ] && export "${san_env[@]}"
cd "$build" && ctest --output-on-failure -j"${TMDFLOW_TEST_JOBS:-2}" "$@"
