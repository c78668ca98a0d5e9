#!/usr/bin/env bash
# Proves that `tmdflow train` stopped by SIGUSR1 (the cluster's pre-emption warning) saves its
# checkpoint before it exits, at 1 and 2 ranks: the run ends with the "stopped" status (3),
# the model and MODEL.h5.adam.h5 exist and name the step reached, and --resume continues from
# that step. (Regression: the per-step tmd_agree broke out of the loop on the signal before the
# checkpoint was written, so the work since the last periodic checkpoint was lost.)
# TMD_TEST_TIMEOUT: 180
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.bash" # bin, mpiexec (array), src, fail, h5_same, tmd_*
tmd_workdir train-signal
export TMDFLOW_LOG=info
common=(--tile 32 --batch 2 --base 4 --val-every 0 --val-n 2 --seed 5 --steps 100000 --checkpoint-every 0)

for n in 1 2; do
  out="$work/m$n.h5"
  if [ "$n" = 1 ]; then launch=("$bin"); else launch=("${mpiexec[@]}" -n 2 "$bin"); fi
  "${launch[@]}" train unet -o "$out" "${common[@]}" > "$work/run$n.log" 2>&1 &
  pid=$!
  for _ in $(seq 600); do grep -q "step 20/" "$work/run$n.log" && break; sleep 0.1; done
  grep -q "step 20/" "$work/run$n.log" || { kill "$pid"; cat "$work/run$n.log"; fail "$n rank(s): training did not reach step 20"; }
  kill -USR1 "$pid"
  rc=0; wait "$pid" || rc=$?
  [ "$rc" -ne 0 ] || { cat "$work/run$n.log"; fail "$n rank(s): a stopped run exited 0"; }
  grep -q "stopped by a signal at step" "$work/run$n.log" || { cat "$work/run$n.log"; fail "$n rank(s): no stop message"; }
  step=$(sed -n 's/.*stopped by a signal at step \([0-9]*\).*/\1/p' "$work/run$n.log" | head -1)
  grep -q "checkpoint at step $step:" "$work/run$n.log" || { cat "$work/run$n.log"; fail "$n rank(s): no checkpoint at step $step"; }
  [ -f "$out" ] && [ -f "$out.adam.h5" ] || fail "$n rank(s): checkpoint files missing"
  "${launch[@]}" train unet -o "$out" "${common[@]}" --resume --stop-after $((step + 2)) > "$work/resume$n.log" 2>&1 \
    || { cat "$work/resume$n.log"; fail "$n rank(s): --resume failed"; }
  grep -q "100000 steps from $step," "$work/resume$n.log" || { cat "$work/resume$n.log"; fail "$n rank(s): --resume did not start at step $step"; }
  echo "$n rank(s): stopped at step $step, checkpoint written, --resume continued"
done
echo PASS
