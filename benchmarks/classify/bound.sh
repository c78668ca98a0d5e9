#!/usr/bin/env bash
# bound.sh BUILD [CSV] [SCOREDIR] [SIMDIR ...]: the best chalcogen / V_X / V_X2 figures any
# per-column measurement could reach (benchmarks/classify/bound.c: Cramer-Rao amplitude variance
# with everything else known + the simulator's per-column scatter, Bayes decision with the true
# class levels and shares) on every sim_<seed>.h5 of the SIMDIRs (default: the held-out blocks
# /tmp/s9/m1..m4), written to CSV (default benchmarks/classify/bound.csv), then a table per image
# and pooled per block (seed // 100) and over all, beside the pipeline's own figures from
# SCOREDIR/score_<seed>_given.json (default /tmp/s9/base; /work/tools/given.sh makes them),
# also written to CSV's name with _summary.txt. About 1 s per 512^2 image.
set -euo pipefail
BUILD=$(cd "$1" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
CSV=${2:-$HERE/bound.csv}
SCORES=${3:-/tmp/s9/base}
shift 3 2>/dev/null || shift $#
DIRS=("$@")
[ ${#DIRS[@]} -gt 0 ] || DIRS=(/tmp/s9/m1 /tmp/s9/m2 /tmp/s9/m3 /tmp/s9/m4)
files=()
for d in "${DIRS[@]}"; do files+=("$d"/sim_*.h5); done
OPENBLAS_NUM_THREADS=1 nice -n 5 "$BUILD/benchmarks/bound" "${files[@]}" > "$CSV"
/usr/bin/python3 "$HERE/bound_summary.py" "$CSV" "$SCORES" | tee "${CSV%.csv}_summary.txt"
