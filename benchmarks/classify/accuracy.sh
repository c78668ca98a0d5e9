#!/usr/bin/env bash
# Species / vacancy / pixel-size accuracy of the classify stage on held-out simulated images,
# with the ablation "constraint off" and the mode "pixel size given".
#   benchmarks/classify/accuracy.sh [BUILD_DIR] [N_IMAGES] [FIRST_SEED] [OUT_DIR]
# For every seed: tmdflow simulate (512 x 512, conditions drawn over the simulator's whole
# range), then three runs — auto pixel size with the constraint (the default), auto without
# the constraint, and --pixel-size given (truth) with the constraint — each scored with
# tmdflow score --json. Writes OUT_DIR/runs.csv and prints the summary tables (summarise.py).
set -euo pipefail
BUILD=${1:-build}
N=${2:-12}
SEED0=${3:-7001}
OUT=${4:-benchmarks/classify/out}
BIN=$BUILD/tmdflow
export OPENBLAS_NUM_THREADS=1 TMDFLOW_LOG=quiet
mkdir -p "$OUT"
for ((k = 0; k < N; k++)); do
  s=$((SEED0 + k))
  sim=$OUT/sim_$s.h5
  [ -f "$sim" ] || "$BIN" simulate -o "$sim" --size 512 --seed "$s" --force
  attr() { h5dump -a "/$1" "$2" | sed -n 's/.*(0): *\([0-9.eE+-]*\).*/\1/p' | head -1; }
  px=$(attr pixel_size "$sim")
  grep -q "^$s," "$OUT/conditions.csv" 2>/dev/null ||
    echo "$s,$px,$(attr dose "$sim"),$(attr z_exponent "$sim"),$(attr comp_w "$sim"),$(attr comp_se "$sim"),$(attr contamination "$sim"),$(attr probe_fwhm "$sim"),$(attr jitter "$sim")" >> "$OUT/conditions.csv"
  for mode in auto off given; do
    r=$OUT/res_${s}_$mode.h5
    case $mode in
      auto) args=(pixel_size_from_file=0) ;; # measured: the sim file carries the true one
      off) args=(constraint=0) ;;
      given) args=(--pixel-size "$px") ;;
    esac
    [ -f "$OUT/score_${s}_$mode.json" ] && continue
    "$BIN" run "$sim:/image" -o "$r" --force "${args[@]}" || { echo "run failed: seed $s $mode" >&2; continue; }
    "$BIN" score "$r" "$sim" --json "$OUT/score_${s}_$mode.json" > /dev/null
    rpx=$(attr pixel_size "$r")
    echo "$s,$mode,$px,$rpx" >> "$OUT/pixel.csv"
    rm -f "$r"
  done
done
python3 "$(dirname "$0")/summarise.py" "$OUT"
