#!/usr/bin/env bash
# benchmarks/gate — the classify stage and its held-neighbour gate on a streamed mosaic,
# resumed from a saved tile checkpoint (no U-Net), at several rank counts.
#
#   benchmarks/gate/run.sh BUILD IMAGE CKPT_DIR "RANKS" REPS [key=value ...]
#
# IMAGE: the mosaic the checkpoint was made from; CKPT_DIR: a copy of a real run's
# OUT.ckpt/ (tile-*.bin and manifest, taken after the tile pass: see docs/performance.md,
# "The held-neighbour gate"). Each repetition copies CKPT_DIR to $WORK/r.h5.ckpt and runs
# `tmdflow run IMAGE -o $WORK/r.h5 --pixel-size 0.12 --resume` at TMDFLOW_LOG=info; every tile
# comes from the checkpoint, so the run is the classify, density and write stages.
# Appends to $OUT (default benchmarks/gate/results/gate.csv): label, ranks, rep, classify
# stage wall s (stage table, max over ranks), gate pass-1 sweep s, gate medians s (rank 0's
# log line, wall), load average at the start, CPU s of the whole resumed run (user + system
# of all ranks, GNU time on mpiexec: classify is ~95 % of it, and CPU time depends less on the
# machine's load than wall time). Keeps the last result as $WORK/r<ranks>.h5.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=$1 img=$2 ck=$3 ranks=$4 reps=$5
shift 5
out=${OUT:-$here/results/gate.csv}
work=${WORK:-/tmp/gate-bench}
label=${LABEL:-$(git -C "$here" rev-parse --short HEAD)}
mpiexec="mpiexec --oversubscribe --bind-to none"
[ "$(id -u)" = 0 ] && mpiexec="$mpiexec --allow-run-as-root"
export OPENBLAS_NUM_THREADS=1 TMDFLOW_LOG=info
mkdir -p "$(dirname "$out")" "$work"
[ -f "$out" ] || echo "label,ranks,rep,classify_s,gate_sweep_s,gate_medians_s,load_avg,run_cpu_s" >"$out"
for r in $ranks; do
    for k in $(seq 1 "$reps"); do
        rm -rf "$work/r.h5.ckpt" "$work/r.h5"
        mkdir -p "$work/r.h5.ckpt" && cp "$ck"/* "$work/r.h5.ckpt/"
        load=$(cut -d' ' -f1 /proc/loadavg)
        /usr/bin/time -f "%U %S" -o "$work/time" $mpiexec -n "$r" "$build/tmdflow" run "$img" -o "$work/r.h5" --pixel-size 0.12 --resume "$@" \
            2>"$work/log_${r}_${k}.txt"
        cls=$(awk '$1 == "classify" && $2 ~ /^[0-9.]+$/ {print $2; exit}' "$work/log_${r}_${k}.txt")
        gs=$(sed -n 's/.*held gate on rank 0: pass-1 sweep \([0-9.]*\) s, medians \([0-9.]*\) s.*/\1,\2/p' \
            "$work/log_${r}_${k}.txt")
        cpu=$(awk 'END { print $1 + $2 }' "$work/time")
        echo "$label,$r,$k,${cls:-NA},${gs:-NA,NA},$load,$cpu" | tee -a "$out"
        cp "$work/r.h5" "$work/r$r.h5"
    done
done
