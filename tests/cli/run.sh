#!/usr/bin/env bash
# Proves, end to end through the command line on a simulated 16-bit TIFF (`tmdflow simulate`)
# with the shipped U-Net, that `tmdflow run`
#   - succeeds at 1 and at 2 ranks and writes identical /atoms and /defects (h5_same) — the same
#     answer on any rank count — with a tile grid (tile=128) that does not divide the image;
#   - logs the stage table (time, share, throughput, per-rank peak memory) and stores it;
#   - leaves no RESULT.h5.tmp behind;
#   - refuses to overwrite a result without --force (the file is left untouched), refuses
#     --resume together with --force (tests/cli/resume.sh covers resuming) and an unknown key (suggesting the closest), each with
#     one message and a non-zero exit.
# Skipped (77) while no trained U-Net is in inputs/models/.
# TMD_TEST_TIMEOUT: 600
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.bash" # bin, mpiexec (array), src, fail, h5_same, tmd_*
tmd_need_unet
tmd_workdir run-test

"$bin" simulate -o "$work/sim.tif" --height 300 --width 420 --seed 21 --pixel-size 0.1 --u16 >/dev/null 2>&1 ||
    fail "simulate"

# 1 rank, then 2 ranks
TMDFLOW_LOG=info "$bin" run "$work/sim.tif" -o "$work/r1.h5" --pixel-size 0.1 tile=128 2>"$work/log1" ||
    { cat "$work/log1"; fail "run at 1 rank"; }
TMDFLOW_LOG=info "${mpiexec[@]}" -n 2 "$bin" run "$work/sim.tif" -o "$work/r2.h5" --pixel-size 0.1 tile=128 2>"$work/log2" ||
    { cat "$work/log2"; fail "run at 2 ranks"; }
[ -f "$work/r1.h5" ] && [ -f "$work/r2.h5" ] || fail "result files missing"
[ ! -e "$work/r1.h5.tmp" ] && [ ! -e "$work/r2.h5.tmp" ] || fail "a .tmp file was left behind"
grep -q "peak_MiB_per_rank" "$work/log1" || { cat "$work/log1"; fail "no stage table in the log"; }
grep -qE "^unet +[0-9.]+ " "$work/log2" || { cat "$work/log2"; fail "no unet row in the stage table"; }
n1=$("$bin" info "$work/r1.h5" | awk '$1 == "/atoms/x" {gsub(",", "", $3); print $3}')
n2=$("$bin" info "$work/r2.h5" | awk '$1 == "/atoms/x" {gsub(",", "", $3); print $3}')
echo "atoms: $n1 at 1 rank, $n2 at 2 ranks"
[ -n "$n1" ] && [ "$n1" -gt 100 ] || fail "too few atoms at 1 rank: '$n1'"
[ "$n1" = "$n2" ] || fail "different atom counts: $n1 vs $n2"
if command -v h5diff >/dev/null; then
    h5_same "$work/r1.h5" "$work/r2.h5" /atoms || fail "/atoms differs between 1 and 2 ranks"
    if h5ls "$work/r1.h5/defects" >/dev/null 2>&1; then
        h5_same "$work/r1.h5" "$work/r2.h5" /defects || fail "/defects differs between 1 and 2 ranks"
    fi
    h5dump -a /stage_table "$work/r2.h5" | grep -q "peak_MiB_per_rank" || fail "no stage_table attribute"
fi

# refusals: each one message, non-zero exit
sum=$(md5sum <"$work/r1.h5")
set +e
out=$("$bin" run "$work/sim.tif" -o "$work/r1.h5" --pixel-size 0.1 2>&1); rc=$?
set -e
[ $rc -ne 0 ] || fail "overwrote a result without --force"
[ "$(md5sum <"$work/r1.h5")" = "$sum" ] || fail "the existing result was changed"
[ "$(grep -c 'tmdflow: error' <<<"$out")" = 1 ] || { echo "$out"; fail "exists: not exactly one error message"; }
set +e
out=$("${mpiexec[@]}" -n 2 "$bin" run "$work/sim.tif" -o "$work/r3.h5" --resume --force 2>&1); rc=$?
set -e
[ $rc -ne 0 ] && grep -q -- "--resume" <<<"$out" || { echo "$out"; fail "--resume --force not refused clearly"; }
set +e
out=$("$bin" run "$work/sim.tif" -o "$work/r3.h5" tyle=128 2>&1); rc=$?
set -e
[ $rc -ne 0 ] && grep -q "tile" <<<"$out" || { echo "$out"; fail "unknown key not refused with a suggestion"; }
[ ! -e "$work/r3.h5" ] && [ ! -e "$work/r3.h5.tmp" ] || fail "a refused run left a file"
"$bin" run --help | grep -q "pixel-size" || fail "run --help"
echo "ok"
