#!/usr/bin/env bash
# Proves that `tmdflow train` works end to end on the simulator at 1 and 2 ranks:
#   - a short U-Net run writes a loadable model with provenance and a checkpoint;
#   - --resume continues from the checkpoint to more steps, and the result equals an
#     uninterrupted run of the same length (checkpoints keep the Adam state and the step);
#   - 2 ranks give the same model as 1 rank for the same global batch (to rounding);
#   - --eval validates an existing model; classifier and autoencoder runs work;
#   - bad arguments are refused with a message and a non-zero exit.
# TMD_TEST_TIMEOUT: 300
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.bash" # bin, mpiexec (array), src, fail, h5_same, tmd_*
tmd_workdir train-test
export TMDFLOW_LOG=info
common=(--tile 32 --batch 2 --base 4 --val-every 0 --val-n 2 --seed 5)

"$bin" train unet -o "$work/full.h5" --steps 4 --checkpoint-every 4 "${common[@]}" > "$work/full.log" 2>&1 \
  || { cat "$work/full.log"; fail "4-step training failed"; }
"$bin" train unet -o "$work/part.h5" --steps 4 --stop-after 2 --checkpoint-every 0 "${common[@]}" > /dev/null 2>&1 || fail "2-step run"
[ -f "$work/part.h5.adam.h5" ] || fail "no checkpoint written"
"$bin" train unet -o "$work/part.h5" --steps 4 --resume "${common[@]}" > "$work/resume.log" 2>&1 \
  || { cat "$work/resume.log"; fail "--resume failed"; }
grep -q "4 steps from 2" "$work/resume.log" || { cat "$work/resume.log"; fail "--resume did not start at step 2"; }
"${mpiexec[@]}" -n 2 "$bin" train unet -o "$work/two.h5" --steps 4 --checkpoint-every 4 "${common[@]}" > "$work/two.log" 2>&1 \
  || { cat "$work/two.log"; fail "2-rank training failed"; }
grep -q '"command"' <(h5dump -a provenance "$work/full.h5" 2> /dev/null || strings "$work/full.h5") \
  || fail "no provenance in the model"

# compare weights: resumed == uninterrupted (bitwise), 2 ranks ~ 1 rank
cmp_models() {
  local i=0
  for d in /layers/001/w /layers/018/w /layers/028/b; do
    h5dump -d "$d" -b LE -o "$work/a$i.bin" "$1" > /dev/null || return 1
    h5dump -d "$d" -b LE -o "$work/b$i.bin" "$2" > /dev/null || return 1
    i=$((i + 1))
  done
  python3 - "$work" "$3" << 'PY'
import sys, struct
w, tol = sys.argv[1], float(sys.argv[2])
d = 0.0
for i in range(3):
    a = open(f"{w}/a{i}.bin", "rb").read(); b = open(f"{w}/b{i}.bin", "rb").read()
    assert len(a) == len(b) and len(a) > 0, "could not read weights"
    fa = struct.unpack(f"<{len(a)//4}f", a); fb = struct.unpack(f"<{len(b)//4}f", b)
    d = max(d, max(abs(x - y) for x, y in zip(fa, fb)))
print("max weight difference", d)
sys.exit(0 if d <= tol else 1)
PY
}
if command -v h5dump > /dev/null; then
  cmp_models "$work/full.h5" "$work/part.h5" 0 || fail "resumed run differs from the uninterrupted run"
  cmp_models "$work/full.h5" "$work/two.h5" 2e-4 || fail "2 ranks differ from 1 rank"
fi

"$bin" train unet -o "$work/full.h5" --eval "${common[@]}" > "$work/eval.log" 2>&1 || fail "--eval failed"
grep -q "evaluation of" "$work/eval.log" || fail "--eval printed no figures"
"$bin" train classifier -o "$work/c.h5" --steps 2 --batch 1 --per-tile 4 --patch 16 --base 4 --val-n 1 --val-every 0 \
  > /dev/null 2>&1 || fail "classifier training"
"$bin" train autoencoder -o "$work/a.h5" --steps 2 --batch 1 --per-tile 4 --patch 16 --base 4 --latent 4 --val-n 1 \
  --val-every 0 > /dev/null 2>&1 || fail "autoencoder training"

set +e
out=$("$bin" train dragon -o "$work/x.h5" 2>&1); rc=$?
set -e
[ $rc -ne 0 ] || fail "unknown model kind accepted"
grep -q "dragon" <<<"$out" || { echo "$out"; fail "message does not name the bad argument"; }
set +e
out=$("$bin" train unet -o "$work/y.h5" --tile 36 2>&1); rc=$?
set -e
[ $rc -ne 0 ] || fail "--tile 36 accepted"
echo "train.sh: all checks passed"
