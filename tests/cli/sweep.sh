#!/usr/bin/env bash
# Proves the stack path end to end on the command line: a simulated 6-frame stack is run at
# 1, 2 and 4 ranks (the dynamics stages write /drift, /sites, /maps, /regions and the runs
# agree on them exactly), then `tmdflow sweep` over 3 x 2 settings writes one table row and one
# region list per setting, and the same sweep at 2 ranks gives the same file contents; a
# parameter that acts before the cached stages is refused with a message naming it.
# TMD_TEST_TIMEOUT: 600
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.bash" # bin, mpiexec (array), src, fail, h5_same, tmd_*
tmd_workdir sweep-test
cd "$work"
"$bin" simulate -o stack.h5 --size 160 --frames 6 --seed 42 --pixel-size 0.1 region_spacing=12 region_prob=1 \
    region_radius=6 > sim.log 2>&1 || { cat sim.log; fail "simulate"; }
"$bin" run stack.h5:/image -o r1.h5 --pixel-size 0.1 > run1.log 2>&1 || { cat run1.log; fail "run at 1 rank"; }
"${mpiexec[@]}" -n 2 "$bin" run stack.h5:/image -o r2.h5 --pixel-size 0.1 > run2.log 2>&1 || { cat run2.log; fail "run at 2 ranks"; }
"${mpiexec[@]}" -n 4 "$bin" run stack.h5:/image -o r4.h5 --pixel-size 0.1 > run4.log 2>&1 || { cat run4.log; fail "run at 4 ranks"; }
for d in /drift /atoms/site /sites/id /sites/instability /sites/unstable /maps/unstable_density /maps/vacancy_density /regions/area_px; do
    h5ls "r1.h5$d" > /dev/null 2>&1 || fail "r1.h5 has no $d"
    h5_same r1.h5 r2.h5 "$d" || fail "$d differs between 1 and 2 ranks"
    h5_same r1.h5 r4.h5 "$d" || fail "$d differs between 1 and 4 ranks"
done
"$bin" sweep r1.h5 --param instability_threshold=0.5,1,2 --param region_threshold=0.05,0.5 -o s1.h5 > sweep1.log 2>&1 ||
    { cat sweep1.log; fail "sweep"; }
[ "$(grep -cE '^ +[0-9]+ ' sweep1.log)" = 6 ] || { cat sweep1.log; fail "sweep did not print 6 settings"; }
for k in 000 001 002 003 004 005; do h5ls "s1.h5/settings/$k/regions/area_px" > /dev/null || fail "no regions of setting $k"; done
h5ls s1.h5/sweep/n_unstable | grep -q '{6}' || fail "/sweep/n_unstable does not have 6 rows"
"${mpiexec[@]}" -n 2 "$bin" sweep r1.h5 --param instability_threshold=0.5,1,2 --param region_threshold=0.05,0.5 -o s2.h5 \
    > sweep2.log 2>&1 || { cat sweep2.log; fail "sweep at 2 ranks"; }
h5_same s1.h5 s2.h5 /sweep || fail "the sweep table differs between 1 and 2 ranks"
h5_same s1.h5 s2.h5 /settings || fail "the sweep regions differ between 1 and 2 ranks"
if "$bin" sweep r1.h5 --param tile=128,256 -o s3.h5 > bad.log 2>&1; then fail "a sweep over 'tile' was accepted"; fi
grep -q "tile" bad.log || { cat bad.log; fail "the refusal does not name the key"; }
[ ! -e s3.h5 ] || fail "a refused sweep left s3.h5"
echo "sweep.sh: ok"
