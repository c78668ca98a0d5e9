#!/usr/bin/env bash
# Proves checkpoint and resume of `tmdflow run` (issue 9) end to end on a simulated 768^2 image
# with tile=128 (49 tiles) and save_maps=1:
#   - a run stopped after its first tiles (test hook TMDFLOW_STOP_AFTER_TILES=N: the stop flag is
#     set as SIGUSR1/SIGTERM would, once a rank has computed N tiles) exits with code 3, leaves
#     the checkpoint RESULT.h5.ckpt/ (manifest + tile files) and neither RESULT.h5 nor RESULT.h5.tmp;
#   - a real SIGUSR1 delivered to the ranks (through mpiexec) leads to the same checkpoint path;
#   - `--resume` at 2 ranks and at 1 rank (a different rank count) loads the kept tiles and gives a
#     result whose every dataset equals an uninterrupted run's (h5_same), incl.
#     /segmentation/classes; the checkpoint is removed after success;
#   - a resume with another configuration key (tile=256) is refused naming the key, and a new run
#     over an existing checkpoint without --resume/--force is refused;
#   - --resume without a checkpoint starts from the first tile with a note; --resume of a
#     finished result (no checkpoint left) succeeds without touching it.
# Skipped (77) while no trained U-Net is in inputs/models/.
# TMD_TEST_TIMEOUT: 900
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.bash" # bin, mpiexec (array), src, fail, h5_same, tmd_*
tmd_need_unet
tmd_need_tools h5diff h5ls
tmd_workdir resume-test
in="$work/sim.h5:/image"
opts=(tile=128 save_maps=1)

"$bin" simulate -o "$work/sim.h5" --size 768 --seed 5 --pixel-size 0.12 >/dev/null 2>&1 || fail "simulate"
"${mpiexec[@]}" -n 2 "$bin" run "$in" -o "$work/ref.h5" "${opts[@]}" 2>"$work/ref.log" || { cat "$work/ref.log"; fail "reference run"; }
[ ! -e "$work/ref.h5.ckpt" ] || fail "checkpoint left after a successful run"

same() { # every dataset of $1 equals $2's
    local n=0
    for d in $(h5ls -r "$1" | awk '$2 == "Dataset" {print $1}'); do
        h5_same "$1" "$2" "$d" || fail "$2: dataset $d differs from the uninterrupted run"
        n=$((n + 1))
    done
    [ "$n" -ge 8 ] || fail "only $n datasets in $1"
    h5ls "$2/segmentation/classes" >/dev/null 2>&1 || fail "$2: no /segmentation/classes"
}

interrupt() { # $1 = output; stops after 3 tiles per rank
    set +e
    TMDFLOW_STOP_AFTER_TILES=3 "${mpiexec[@]}" -n 2 "$bin" run "$in" -o "$1" "${opts[@]}" 2>"$1.log"; rc=$?
    set -e
    [ $rc -eq 3 ] || { cat "$1.log"; fail "interrupted run: exit $rc, expected 3"; }
    grep -q -- "--resume" "$1.log" || { cat "$1.log"; fail "no resume hint in the message"; }
    [ -f "$1.ckpt/manifest" ] || fail "no checkpoint manifest"
    [ "$(ls "$1.ckpt" | grep -c '^tile-.*\.bin$')" -ge 6 ] || fail "fewer than 6 tiles checkpointed"
    [ ! -e "$1" ] && [ ! -e "$1.tmp" ] || fail "an interrupted run left $1 or $1.tmp"
}

# resume at 2 ranks
interrupt "$work/a.h5"
"${mpiexec[@]}" -n 2 "$bin" run "$in" -o "$work/a.h5" "${opts[@]}" --resume 2>"$work/a.log" || { cat "$work/a.log"; fail "resume at 2 ranks"; }
grep -q "resumed: [0-9]* of 49 tiles" "$work/a.log" || { cat "$work/a.log"; fail "no 'resumed' line"; }
same "$work/ref.h5" "$work/a.h5"
[ ! -e "$work/a.h5.ckpt" ] || fail "checkpoint not removed after the resumed run"

# refusals, then resume at 1 rank
interrupt "$work/b.h5"
set +e
out=$("${mpiexec[@]}" -n 2 "$bin" run "$in" -o "$work/b.h5" tile=256 save_maps=1 --resume 2>&1); rc=$?
set -e
[ $rc -ne 0 ] && grep -q "tile = 128" <<<"$out" && grep -q "tile = 256" <<<"$out" ||
    { echo "$out"; fail "a resume with another configuration was not refused naming the key"; }
set +e
out=$("$bin" run "$in" -o "$work/b.h5" "${opts[@]}" 2>&1); rc=$?
set -e
[ $rc -ne 0 ] && grep -q "checkpoint" <<<"$out" || { echo "$out"; fail "a run over a checkpoint without --resume was not refused"; }
[ -f "$work/b.h5.ckpt/manifest" ] || fail "a refused run removed the checkpoint"
"$bin" run "$in" -o "$work/b.h5" "${opts[@]}" --resume 2>"$work/b.log" || { cat "$work/b.log"; fail "resume at 1 rank"; }
same "$work/ref.h5" "$work/b.h5"

# a real signal: SIGUSR1 to mpiexec (forwarded to the ranks) once the tile pass has started
set +e
"${mpiexec[@]}" -n 2 "$bin" run "$in" -o "$work/c.h5" "${opts[@]}" 2>"$work/c.log" &
pid=$!
for _ in $(seq 1 300); do
    [ "$(ls "$work/c.h5.ckpt" 2>/dev/null | grep -c '^tile-.*\.bin$')" -ge 2 ] && break
    sleep 0.1
done
kill -USR1 $pid
wait $pid; rc=$?
set -e
[ $rc -eq 3 ] || { tail -20 "$work/c.log"; fail "SIGUSR1: exit $rc, expected 3"; }
[ ! -e "$work/c.h5" ] && [ ! -e "$work/c.h5.tmp" ] && [ -f "$work/c.h5.ckpt/manifest" ] || fail "SIGUSR1: wrong files left"
"${mpiexec[@]}" -n 2 "$bin" run "$in" -o "$work/c.h5" "${opts[@]}" --resume 2>"$work/c2.log" || { cat "$work/c2.log"; fail "resume after SIGUSR1"; }
same "$work/ref.h5" "$work/c.h5"
# --resume with no checkpoint starts from the first tile (a requeued job stopped before the tile
# pass); --resume of a finished result does nothing and succeeds
"$bin" run "$in" -o "$work/d.h5" "${opts[@]}" --resume 2>"$work/d.log" || { cat "$work/d.log"; fail "--resume without a checkpoint"; }
grep -q "starting from the first tile" "$work/d.log" || { cat "$work/d.log"; fail "no note for --resume without a checkpoint"; }
same "$work/ref.h5" "$work/d.h5"
sum=$(md5sum <"$work/d.h5")
"$bin" run "$in" -o "$work/d.h5" "${opts[@]}" --resume 2>"$work/d2.log" || { cat "$work/d2.log"; fail "--resume of a finished result"; }
grep -q "already complete" "$work/d2.log" && [ "$(md5sum <"$work/d.h5")" = "$sum" ] || fail "--resume of a finished result changed it"
echo "ok"
