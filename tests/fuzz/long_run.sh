#!/usr/bin/env bash
# Runs fuzz harnesses one at a time for a long time (by hand; not part of ctest), the way the
# figures in docs/reliability.md were taken:
#   bash tests/fuzz/long_run.sh BUILD_DIR SECONDS WORKDIR harness...   (e.g. config tiff h5input model)
# BUILD_DIR is a clang -DTMD_FUZZ=ON -DTMD_SANITIZE=ON build. Each harness fuzzes a copy of
# its seed corpus in WORKDIR/corpus-<name> (kept out of git), niced, with the sanitizer
# environment of scripts/test.sh; crashes land in WORKDIR/crash-<name>-*, the log in
# WORKDIR/<name>.log. Exit status: non-zero if any harness found a crash.
set -uo pipefail
build=$(cd "$1" && pwd); secs=$2; work=$3; shift 3
src=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$work"
[ -f "$build/libnodlclose.so" ] || cc -shared -fPIC -O2 -o "$build/libnodlclose.so" "$src/tests/sanitizers/nodlclose.c"
export TMDFLOW_LOG=quiet OPENBLAS_NUM_THREADS=1 HDF5_USE_FILE_LOCKING=FALSE
export ASAN_OPTIONS=fast_unwind_on_malloc=0:malloc_context_size=12:detect_leaks=1
export LSAN_OPTIONS=suppressions=$src/tests/sanitizers/lsan.supp:print_suppressions=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export LD_PRELOAD=$build/libnodlclose.so
status=0
for h in "$@"; do
    corpus=$work/corpus-$h
    mkdir -p "$corpus"
    cp -n "$build/tests/fuzz/corpus/$h/"* "$corpus/" 2>/dev/null
    echo "== fuzz_$h: $(date -u +%H:%M:%S) start, $(ls "$corpus" | wc -l) seeds, load $(cut -d' ' -f1-3 /proc/loadavg)"
    nice -n 10 "$build/tests/fuzz/fuzz_$h" -max_total_time="$secs" -timeout=20 -rss_limit_mb=2048 -malloc_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$work/crash-$h-" "$corpus" >"$work/$h.log" 2>&1
    rc=$?
    [ $rc -eq 0 ] || status=1
    echo "== fuzz_$h: $(date -u +%H:%M:%S) exit $rc, corpus $(ls "$corpus" | wc -l), load $(cut -d' ' -f1-3 /proc/loadavg)"
    grep -E "^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)|^Done" "$work/$h.log"
done
exit $status
