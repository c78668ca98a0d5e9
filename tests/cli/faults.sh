#!/usr/bin/env bash
# Proves that failures across ranks end the whole job quickly and cleanly, at 2 and 4 ranks:
#   1. one rank fails (a NaN pixel that only the last rank's tiles contain): every rank
#      exits, the job's exit code is 1, the failing rank's message (file, pixel, rank) is
#      printed exactly once, and no result file (nor RESULT.h5.tmp) remains;
#   2. one rank is killed outright (kill -9 of one rank's pid in the middle of the tile
#      pass): the job ends (mpiexec tears the others down) instead of hanging, exit code
#      non-zero, no finished-looking result;
#   3. the output directory does not exist, or its "directory" is a regular file: a clear
#      error naming the path, exit 1, nothing written;
#   4. the disk is full (a 200 KiB tmpfs, when this machine lets root mount one; save_maps=1,
#      whose class-map writes once hung on a full disk): a clear
#      error naming the file system shortage, exit 1, no result, no .tmp left behind.
# Each run is guarded by `timeout`: exit status 124 means a hang and fails the test.
# TMD_TEST_TIMEOUT: 600
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.bash" # bin, mpiexec (array), src, fail, h5_same, tmd_*
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mnt=""
tmd_cleanup_hook() { [ -n "$mnt" ] && umount "$mnt" 2>/dev/null || true; } # before the work dir goes
tmd_workdir faults
cd "$work"
ok() { echo "ok: $*"; }

# Inputs: a simulated 1024x1024 image, and the same with one NaN near the bottom-right
# corner (row 1019, column 1019), which only the last rank's tiles cover at tile=128.
"$bin" simulate -o s.h5 --size 1024 --seed 3 > sim.log 2>&1 || { cat sim.log; fail "simulate"; }
"$bin" simulate -o big.h5 --size 2048 --seed 4 > sim.log 2>&1 || { cat sim.log; fail "simulate 2048"; }
h5dump -d /image -y -w 0 -o img.txt s.h5 > /dev/null
[ "$(grep -c . img.txt)" = 1024 ] || fail "h5dump gave $(grep -c . img.txt) rows, expected 1024"
awk 'NF == 0 { next } { gsub(/,/, " "); row++ } row == 1020 { $1020 = "nan" } { print }' img.txt > bad.txt
printf 'PATH /image\nINPUT-CLASS TEXTFP\nRANK 2\nDIMENSION-SIZES 1024 1024\nOUTPUT-CLASS FP\nOUTPUT-SIZE 32\n' > bad.cfg
h5import bad.txt -c bad.cfg -o bad.h5 > /dev/null
rm -f img.txt bad.txt

for n in 2 4; do
    # 1. one rank fails
    rc=0
    timeout 120 "${mpiexec[@]}" -n "$n" "$bin" run bad.h5:/image -o r1.h5 --pixel-size 0.17 tile=128 > out1.txt 2>&1 || rc=$?
    [ "$rc" != 124 ] || fail "$n ranks: a failing rank left the job hanging"
    [ "$rc" != 0 ] || fail "$n ranks: a NaN pixel was accepted"
    grep -q "tmdflow: error (rank $((n - 1))): bad.h5:/image: frame 0, pixel (x=1019, y=1019) is NaN" out1.txt ||
        { cat out1.txt; fail "$n ranks: expected the last rank's message naming the file and the pixel"; }
    [ "$(grep -c "^tmdflow: error" out1.txt)" = 1 ] || { cat out1.txt; fail "$n ranks: the error should be printed once"; }
    [ ! -e r1.h5 ] && [ ! -e r1.h5.tmp ] || fail "$n ranks: a failed run left r1.h5 or r1.h5.tmp"
    ok "$n ranks: rank $((n - 1)) fails -> all ranks exit (status $rc), its message printed once, no result"

    # 2. one rank killed outright in the middle of the tile pass. The 2048^2 input keeps the
    # tile pass busy for several seconds even at 4 ranks, so the kill lands inside it; every
    # step that can miss (the job already gone, no rank found) fails with a message.
    TMDFLOW_PROGRESS_INTERVAL=1 timeout 300 "${mpiexec[@]}" -n "$n" "$bin" run big.h5:/image -o r2.h5 \
        --pixel-size 0.17 tile=128 > out2.txt 2>&1 &
    tpid=$!
    # up to 240 s to reach the tile pass ("tile pass ..." is logged as it starts): 4 sanitized
    # ranks on 2 busy cores start slowly
    for _ in $(seq 1 2400); do
        grep -q "tile pass" out2.txt 2>/dev/null && break
        kill -0 "$tpid" 2>/dev/null || break
        sleep 0.1
    done
    if ! grep -q "tile pass" out2.txt; then
        rc=0
        if kill -0 "$tpid" 2>/dev/null; then kill "$tpid"; wait "$tpid" || rc=$?; else wait "$tpid" || rc=$?; fi
        cat out2.txt
        fail "$n ranks: the run never reached the tile pass (status $rc)"
    fi
    mpid=$(pgrep -P "$tpid" || true)
    mpid=${mpid%%$'\n'*}
    [ -n "$mpid" ] || { cat out2.txt; fail "$n ranks: mpiexec had already exited before a rank could be killed"; }
    victim=$(pgrep -P "$mpid" -x tmdflow || true)
    victim=${victim##*$'\n'}
    [ -n "$victim" ] || { cat out2.txt; fail "$n ranks: no tmdflow rank process found under mpiexec $mpid"; }
    kill -9 "$victim" || fail "$n ranks: rank pid $victim was gone before it could be killed"
    rc=0
    wait "$tpid" || rc=$?
    [ "$rc" != 124 ] || fail "$n ranks: after kill -9 of one rank the job hung"
    [ "$rc" != 0 ] || { cat out2.txt; fail "$n ranks: the job reported success although a rank was killed"; }
    [ ! -e r2.h5 ] || fail "$n ranks: a killed job left a result that looks finished"
    ok "$n ranks: kill -9 of rank pid $victim -> job ended (status $rc), no finished-looking result"
    # the tile checkpoint of the killed run (r2.h5.ckpt) is what --resume would continue;
    # the next rank count starts afresh
    rm -rf r2.h5.tmp r2.h5.ckpt
done

# 3. output directory missing / not a directory
for out in "$work/no/such/dir/r.h5" "$work/s.h5/r.h5"; do
    rc=0
    timeout 120 "${mpiexec[@]}" -n 2 "$bin" run s.h5:/image -o "$out" > out3.txt 2>&1 || rc=$?
    [ "$rc" = 1 ] || { cat out3.txt; fail "-o $out: expected exit 1, got $rc"; }
    grep -q "tmdflow: error.*cannot create $out.tmp" out3.txt || { cat out3.txt; fail "-o $out: message does not name the path"; }
    [ ! -e "$out" ] || fail "-o $out: something was written"
done
ok "missing output directory / a file as directory: clear error naming the path, exit 1"

# 4. disk full
if [ "$(id -u)" = 0 ] && mkdir -p "$work/full" && mount -t tmpfs -o size=200k tmpfs "$work/full" 2>/dev/null; then
    mnt="$work/full"
    rc=0
    timeout 300 "${mpiexec[@]}" -n 2 "$bin" run s.h5:/image -o "$mnt/r.h5" --pixel-size 0.17 save_maps=1 > out4.txt 2>&1 || rc=$?
    [ "$rc" != 124 ] || fail "disk full: the job hung"
    [ "$rc" = 1 ] || { cat out4.txt; fail "disk full: expected exit 1, got $rc"; }
    grep -q "tmdflow: error.*not enough space" out4.txt || { cat out4.txt; fail "disk full: no clear message"; }
    [ -z "$(ls -A "$mnt")" ] || { ls -la "$mnt"; fail "disk full: files left behind on the full file system"; }
    ok "disk full (200 KiB tmpfs): clear error, exit 1, nothing left behind"
else
    echo "note: cannot mount a small tmpfs here; the disk-full case was not run"
fi
