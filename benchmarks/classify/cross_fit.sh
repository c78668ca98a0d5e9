#!/usr/bin/env bash
# Classify stage time of two builds on a stack split in space, where every frame's big component
# spans ranks (a "cross component"): main fitted each cross component on every rank holding it,
# branch fitshare fits it on one rank and shares the model (tmd_classify step 6).
#
#   benchmarks/classify/cross_fit.sh BASE_BIN NEW_BIN [CSV] [REPS] [RANKS]
#   e.g. benchmarks/classify/cross_fit.sh /work/main/build/tmdflow build/tmdflow \
#            benchmarks/classify/cross_fit.csv 3 "1 2 4"
#
# Input: tmdflow simulate --size 512 --frames 8 --seed 11 --pixel-size 0.12 --dose 20, run with
# --pixel-size 0.12 tile=256 frames_per_tile=8 (2 x 2 tiles in space, one along time: ranks
# 1 x 2 x 1 at 2, 1 x 2 x 2 at 4). For each repeat and rank count the two builds run one after the
# other (alternating, the machine is shared and noisy), and their results must be bitwise equal
# (/atoms /defects /sites, tests/cli/lib/h5same.bash). CSV rows: build, ranks, rep, classify_s,
# total_s, same (the classify and total rows of the run log's stage table). Prints the medians.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
base=$1 new=$2
csv=${3:-$here/cross_fit.csv}
reps=${4:-3}
ranks=${5:-1 2 4}
work=${WORK:-/tmp/tmdflow-cross-fit}
export OPENBLAS_NUM_THREADS=1 TMDFLOW_LOG=info
mpi=(mpiexec --oversubscribe --bind-to none)
[ "$(id -u)" = 0 ] && mpi+=(--allow-run-as-root)
. "$here/../../tests/cli/lib/h5same.bash"
mkdir -p "$work"
[ -f "$work/s.h5" ] || "$new" simulate -o "$work/s.h5" --size 512 --frames 8 --seed 11 --pixel-size 0.12 --dose 20 \
    > /dev/null 2>&1
echo "build,ranks,rep,classify_s,total_s,same" > "$csv"
stage() { awk -v s="$1" '$1 == s {print $2; exit}' "$2"; }
for ((k = 1; k <= reps; k++)); do
    for r in $ranks; do
        for b in base new; do
            bin=$base
            rm -f "$work/$b.h5"
            [ "$b" = base ] || bin=$new
            nice -n 5 "${mpi[@]}" -n "$r" "$bin" run "$work/s.h5:/image" -o "$work/$b.h5" --pixel-size 0.12 \
                tile=256 frames_per_tile=8 2> "$work/$b.log" > /dev/null
        done
        same=1
        h5_same "$work/base.h5" "$work/new.h5" /atoms /defects /sites > /dev/null || same=0
        for b in base new; do
            echo "$b,$r,$k,$(stage classify "$work/$b.log"),$(stage total "$work/$b.log"),$same" >> "$csv"
        done
        tail -2 "$csv"
    done
done
echo "medians (s): build ranks classify total"
python3 - "$csv" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
for b in ("base", "new"):
    for r in sorted({int(x["ranks"]) for x in rows}):
        sel = [x for x in rows if x["build"] == b and int(x["ranks"]) == r]
        print(b, r, "%.2f" % statistics.median(float(x["classify_s"]) for x in sel),
              "%.2f" % statistics.median(float(x["total_s"]) for x in sel), "same" if all(x["same"] == "1" for x in sel) else "DIFFERS")
PY
