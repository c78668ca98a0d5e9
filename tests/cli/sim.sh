#!/usr/bin/env bash
# Proves the issue's "done when" for `tmdflow simulate` and `tmdflow score` at the command line:
#   2 ranks and 1 rank write identical /image (h5diff) for the same seed; the truth scored
#   against itself gives F1 1.0 in the JSON; TIFF output (uint16 and float32) writes
#   OUT.truth.h5 beside the image; a stack has /drift (T x 2) and /sites/dynamic; bad
#   options and an existing output give a message and a non-zero exit.
# TMD_TEST_TIMEOUT: 180
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.bash" # bin, mpiexec (array), src, fail, h5_same, tmd_*
tmd_workdir sim-test
export TMDFLOW_LOG=quiet

"${mpiexec[@]}" -n 2 "$bin" simulate -o "$work/x2.h5" --size 384 --seed 77
"$bin" simulate -o "$work/x1.h5" --size 384 --seed 77
h5diff "$work/x1.h5" "$work/x2.h5" /image /image || fail "1 and 2 ranks differ in /image"
h5diff "$work/x1.h5" "$work/x2.h5" /truth/classes /truth/classes || fail "1 and 2 ranks differ in /truth/classes"
echo "ok: 1 and 2 ranks give identical /image"

"$bin" score "$work/x1.h5" "$work/x2.h5" --json "$work/s.json" >/dev/null
grep -q '"detection": {[^}]*"f1": 1}' "$work/s.json" || { cat "$work/s.json"; fail "self-score F1 is not 1"; }
grep -q '"species": {"accuracy": 1,' "$work/s.json" || fail "self-score species accuracy is not 1"
echo "ok: score X.h5 X.h5 gives F1 1.0"

"$bin" simulate -o "$work/t.tif" --size 200 --seed 5 --u16 --pixel-size 0.1 --dose 200 --composition 0.3,0.6
[ -s "$work/t.tif" ] && [ -s "$work/t.tif.truth.h5" ] || fail "TIFF output or its .truth.h5 missing"
"$bin" info "$work/t.tif" 2>&1 | grep -qi "u16\|uint16\|16" || fail "info does not see a 16-bit TIFF"
"${mpiexec[@]}" -n 2 "$bin" simulate -o "$work/t2.tif" --size 200 --seed 5 --u16 --pixel-size 0.1 --dose 200 --composition 0.3,0.6
cmp "$work/t.tif" "$work/t2.tif" || fail "TIFF differs between 1 and 2 ranks"
echo "ok: TIFF + truth.h5, identical on 1 and 2 ranks"

"${mpiexec[@]}" -n 2 "$bin" simulate -o "$work/st.h5" --size 160 --frames 5 --seed 9 --pixel-size 0.1 region_prob=1 region_spacing=20 region_radius=8 p_sputter=0.2 p_heal=0.2
h5dump -H -d /drift "$work/st.h5" | grep -q "( 5, 2 )" || fail "stack /drift is not 5 x 2"
h5dump -H -d /image "$work/st.h5" | grep -q "( 5, 160, 160 )" || fail "stack /image is not 5 x 160 x 160"
h5dump -H -d /sites/dynamic "$work/st.h5" >/dev/null || fail "no /sites/dynamic"
"$bin" score "$work/st.h5" "$work/st.h5" | grep -q "instability ROC AUC *1.0000" || fail "stack self-score AUC is not 1"
echo "ok: stack truth"

if "$bin" simulate -o "$work/x1.h5" --size 64 2>"$work/err"; then fail "overwrote an existing output"; fi
grep -q "exists" "$work/err" || fail "no 'exists' message: $(cat "$work/err")"
if "$bin" simulate -o "$work/y.h5" dsoe=3 2>"$work/err"; then fail "accepted an unknown parameter"; fi
grep -q "dsoe" "$work/err" || fail "unknown parameter not named"
if "$bin" simulate -o "$work/y.png" 2>"$work/err"; then fail "accepted a .png output"; fi
if "$bin" score "$work/x1.h5" 2>"$work/err"; then fail "score accepted one file"; fi
echo "ok: errors"
