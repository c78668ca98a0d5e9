#!/usr/bin/env bash
# valgrind memcheck over a small single-rank session (by hand, not part of ctest; needs
# `apt-get install valgrind`). Figures in docs/reliability.md.
#   bash tests/sanitizers/valgrind_run.sh BUILD_DIR [WORKDIR]
# BUILD_DIR must not be a -march=native Release build (valgrind 3.19 cannot decode AVX-512):
#   cmake -S . -B build-vg -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTMD_BUILD_TESTS=OFF
#   cmake --build build-vg --target tmdflow
# Steps: simulate a 128^2 image, run it (tile=128 halo=32: one 256^2 U-Net window, ~5x less work than the default 592^2), score,
# render, and three error paths (unknown config key, out-of-range value, bad input file). Each
# must give memcheck no error and no definite/possible leak (--error-exitcode=1, errors-for-
# leak-kinds definite,possible), with tests/sanitizers/valgrind.supp (Open MPI MPI_Init /
# MPI_Finalize one-time allocations only) and Open MPI's own suppression file.
set -uo pipefail
bin=$(cd "$1" && pwd)/tmdflow
src=$(cd "$(dirname "$0")/../.." && pwd)
work=${2:-$(mktemp -d /tmp/tmdflow-valgrind.XXXXXX)}
mkdir -p "$work" && cd "$work" || exit 1
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
vg=(valgrind --leak-check=full --error-exitcode=1 --num-callers=40
    --suppressions=/usr/share/openmpi/openmpi-valgrind.supp --suppressions="$src/tests/sanitizers/valgrind.supp")
status=0
# step NAME EXPECTED_EXIT tmdflow-args...
step() {
    local name=$1 want=$2
    shift 2
    local t0=$SECONDS
    "${vg[@]}" --log-file="$work/$name.vg" "$bin" "$@" >"$work/$name.out" 2>&1
    local rc=$?
    local errs
    errs=$(grep -o "ERROR SUMMARY: [0-9]* errors" "$work/$name.vg" | grep -o "[0-9]*" | head -1)
    local lost
    lost=$(grep -E "definitely lost:|possibly lost:" "$work/$name.vg" | sed 's/==[0-9]*== *//' | tr -s ' ' | paste -sd';')
    if [ "${errs:-1}" != 0 ] || [ "$rc" != "$want" ]; then status=1; fi
    echo "$name: exit $rc (want $want), memcheck errors ${errs:-?}, ${lost:-no leaks}, $((SECONDS - t0)) s"
}
step simulate 0 simulate -o s.h5 --size 128 --seed 7 --pixel-size 0.12 --force
step run 0 run s.h5:/image -o r.h5 --pixel-size 0.12 tile=128 halo=32 --force
step score 0 score r.h5 s.h5
step render 0 render r.h5 -o r.png
step bad_key 1 run s.h5:/image -o bad1.h5 --pixel-size 0.12 no_such_key=3
step bad_range 1 run s.h5:/image -o bad2.h5 --pixel-size 0.12 tile=5
printf 'II*\0garbage' >bad.tif
step bad_input 1 run bad.tif -o bad3.h5 --pixel-size 0.12
exit $status
