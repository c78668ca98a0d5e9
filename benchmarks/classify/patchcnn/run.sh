#!/usr/bin/env bash
# run.sh DEBUG_BUILD WORK: the patch-CNN screen of session 11, end to end (~40 min on 2 cores).
# DEBUG_BUILD: a build with -DCMAKE_C_FLAGS=-DTMD_CLASSIFY_DEBUG (its tmdflow and classify_rerun).
# Needs python3-torch, python3-scipy, python3-h5py, python3-tifffile (apt-get install), the
# held-out blocks' sims and saved classify inputs (/tmp/s9/m1..m4, /tmp/s9/in1..in4:
# benchmarks/classify/save_inputs.sh) and extsim's 20 images (benchmarks/classify/columns/ext.sh:
# /tmp/lone/ext). Writes into WORK: training sims (seeds 9001-9600; 9101-9200 and 9401-9600 with
# vac_x=0.05 vac_x2=0.015 for more lone and empty examples), patches, models, per-column dumps.
set -euo pipefail
BUILD=$(readlink -f "$1"); WORK=$2; HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$WORK"/train "$WORK"/dump "$WORK"/ext
export OPENBLAS_NUM_THREADS=1 TMDFLOW_LOG=quiet
py() { /usr/bin/python3 "$HERE/$1" "${@:2}"; }
for s in $(seq 9001 9600); do
    f="$WORK/train/sim_$s.h5"; [ -f "$f" ] && continue
    extra=(); if { [ $s -gt 9100 ] && [ $s -le 9200 ]; } || [ $s -gt 9400 ]; then extra=(vac_x=0.05 vac_x2=0.015); fi
    "$BUILD/tmdflow" simulate -o "$f" --size 512 --seed $s --force "${extra[@]}" > /dev/null
done
[ -f "$WORK/train.npz" ] || py extract.py "$WORK/train.npz" "$WORK"/train/sim_*.h5
for b in 1 2 3 4; do [ -f "$WORK/test$b.npz" ] || py extract.py "$WORK/test$b.npz" /tmp/s9/m$b/sim_*.h5; done
[ -f "$WORK/lin.pt" ] || py train.py lin 4 "$WORK/train.npz" "$WORK/lin.pt" 9001-9100,9201-9400
[ -f "$WORK/cnn.pt" ] || py train.py cnn 8 "$WORK/train.npz" "$WORK/cnn.pt" 9001-9100,9201-9400
py evaluate.py "$WORK/lin.pt" "$WORK"/test?.npz
py evaluate.py "$WORK/cnn.pt" "$WORK"/test?.npz
# main's per-column posteriors: the blocks from the saved inputs, extsim end to end (pixel size given)
for b in 1 2 3 4; do
    cd /tmp/s9/in$b
    for a in $(cat args.txt); do s=${a#in_}; s=${s%%.bin*}
        [ -s "$WORK/dump/$s.txt" ] || H_PXTRUE=1 TMD_CLASSIFY_DUMP="$WORK/dump/$s.txt" "$BUILD/benchmarks/classify_rerun" "$WORK/dump/o" $a > /dev/null
    done
done
for img in /tmp/lone/ext/ext_*.tif; do n=$(basename "$img" .tif)
    [ -s "$WORK/ext/$n.txt" ] && continue
    px=$(h5dump -a /pixel_size "$img.truth.h5" | sed -n 's/.*(0): *\([0-9.eE+-]*\).*/\1/p' | head -1)
    TMD_CLASSIFY_DUMP="$WORK/ext/$n.txt" TMDFLOW_MODELS="$HERE/../../../inputs/models" \
        "$BUILD/tmdflow" run "$img" -o "$WORK/ext/r.h5" --force --pixel-size "$px" > /dev/null
done
rm -f "$WORK/ext/r.h5"
cd "$HERE"
py combine.py "$WORK/cnn.pt" 0,0.25,0.5 "block 1:/tmp/s9/m1/sim_*.h5::$WORK/dump" "block 2:/tmp/s9/m2/sim_*.h5::$WORK/dump" \
    "block 3:/tmp/s9/m3/sim_*.h5::$WORK/dump" "block 4:/tmp/s9/m4/sim_*.h5::$WORK/dump"
PER_IMAGE=1 py combine.py "$WORK/cnn.pt" 0,0.25 "extsim:/tmp/lone/ext/ext_*.tif:.truth.h5:$WORK/ext"
