#!/usr/bin/env bash
# Proves a time-series stack gives the same answer at 1, 2 and 4 ranks with every frame split in
# space: a low-dose 384^2 x 6 stack (seed 11, dose 20; the held-neighbour gate holds) run with
# tile=192 frames_per_tile=6 (one tile along time, 2 x 2 in space: ranks 1 x 2 x 1 at 2 ranks,
# 1 x 2 x 2 at 4, so each frame's columns are classified in memory by ranks that hold each
# other's columns as ghosts) writes bitwise identical /atoms, /defects, /sites, /regions, /drift
# and /maps (h5_same, no tolerance), and the classify summary (components, composition,
# vacancies) reads the same. The default decomposition splits a stack by frames first (2 ranks:
# 2 x 1 x 1), where no frame has a shared box side; tests/cli/sweep.sh covers that one, and
# tests/cli/ranks_memory.sh a single frame split in space.
# Also proves the cross-rank components (each frame's big component here) are fitted once and the
# work is shared (tmd_classify step 6, session 11): the debug log's fits per rank show every rank
# with a share at 2 and 4 ranks (3 3 and 2 2 1 1), where before every rank fitted all of them.
# Checked to fail (session 11) with every cross component given to rank 0: "2 ranks: a rank
# fitted no component (fits per rank: 6 0)".
# Checked to fail (session 11): with the component records of owned atoms near a shared box side
# switched off (tmd_classify step 4, the session 10 fix) it fails at 2 ranks ("/atoms differs
# from 1 rank"); with the 4-rank run made from the same stack at dose 22, "/atoms: datasets or
# shapes differ".
# TMD_TEST_TIMEOUT: 300
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.bash" # bin, mpiexec (array), src, fail, h5_same, tmd_*
tmd_need_unet
tmd_need_tools h5diff h5ls
tmd_workdir ranks-stack-test

TMDFLOW_LOG=quiet "$bin" simulate -o "$work/s.h5" --size 384 --frames 6 --seed 11 --pixel-size 0.12 --dose 20 \
    > /dev/null || fail "simulate"
run() { # ranks grid
    TMDFLOW_LOG=debug "${mpiexec[@]}" -n "$1" "$bin" run "$work/s.h5:/image" -o "$work/r$1.h5" --pixel-size 0.12 \
        tile=192 frames_per_tile=6 2> "$work/r$1.log" > /dev/null || { cat "$work/r$1.log"; fail "run at $1 ranks"; }
    grep -q "tiles: .*; ranks $2\$" "$work/r$1.log" || { grep "tiles:" "$work/r$1.log"; fail "$1 ranks: not ranks $2"; }
    grep -q "neighbour places held in 6 of 6 frames" "$work/r$1.log" || { grep "held in" "$work/r$1.log"; fail "$1 ranks: the gate did not hold"; }
    ! grep -q "classify: streamed" "$work/r$1.log" || fail "$1 ranks: streamed, not in memory"
    [ "$1" = 1 ] && return 0
    # every rank fits a share of the cross-rank components (a rank with 0 fits: not shared)
    local fits
    fits=$(sed -n 's/.*classify: fit pass 0: [0-9]* cross-rank components; fits per rank (local and cross):\(.*\)$/\1/p' \
        "$work/r$1.log" | head -1)
    [ "$(wc -w <<< "$fits")" = "$1" ] || fail "$1 ranks: no fits per rank for all $1 ranks in the log ('$fits')"
    ! grep -qw 0 <<< "$fits" || fail "$1 ranks: a rank fitted no component (fits per rank:$fits)"
}
summary() { sed -n 's/^\[ *[0-9.]*s\] \(classify: [0-9]* components;.*\)$/\1/p' "$1"; }
count() { "$bin" info "$work/r1.h5" | awk -v d="$1" '$1 == d {gsub(",", "", $3); print $3}'; }
run 1 "1 x 1 x 1"
n=$(count /atoms/x) nd=$(count /defects/x) ns=$(count /sites/x)
nu=$(sed -n 's/.*instability: [0-9]* sites, \([0-9]*\) unstable.*/\1/p' "$work/r1.log")
[ "${n:-0}" -gt 2000 ] || fail "only ${n:-0} atoms"
[ "${nd:-0}" -ge 100 ] || fail "only ${nd:-0} vacancies"
[ "${nu:-0}" -ge 5 ] || fail "only ${nu:-0} unstable sites"
grep -q "density: .* [1-9][0-9]* defect-rich regions" "$work/r1.log" || fail "no defect-rich region"
[ -n "$(summary "$work/r1.log")" ] || fail "no classify summary in the log"
for r in 2 4; do
    if [ "$r" = 2 ]; then run 2 "1 x 2 x 1"; else run 4 "1 x 2 x 2"; fi
    for g in /atoms /defects /sites /regions /drift /maps/unstable_density /maps/vacancy_density; do
        h5_same "$work/r1.h5" "$work/r$r.h5" "$g" || fail "$r ranks: $g differs from 1 rank"
    done
    [ "$(summary "$work/r1.log")" = "$(summary "$work/r$r.log")" ] ||
        { summary "$work/r1.log"; summary "$work/r$r.log"; fail "$r ranks: the classify summary differs"; }
done
echo "ok: $n atoms, $nd vacancies, $ns sites ($nu unstable) identical at 1, 2 and 4 ranks, frames split in space"
