#!/usr/bin/env bash
# Pixel size without --pixel-size on held-out images: for every image, `tmdflow run` (no
# --pixel-size) and read (1) the lattice stage's period (log line "lattice: period P px"),
# compared with the true period a_true / px_true (the lattice stage's own error, independent
# of the composition), and (2) the final /pixel_size (after the classify stage's Vegard
# refinement), compared with the true pixel size. Prints a TSV per image and a summary.
#   benchmarks/lattice/pixel_size.sh BUILD_DIR OUT_DIR [sim|ext|acc|all]
# sim: tmdflow simulate, seeds 960001-960040 (512^2, every condition drawn) and 960101-960132
#      (768^2, pixel sizes 0.06-0.18 x compositions MoSe2, WSe2, MoS2, alloy); seeds >= 900000
#      are never used in training.
# acc: the images of benchmarks/accuracy/out/sim_*.h5 (run benchmarks/accuracy/run.sh first).
# ext: the images of benchmarks/external/out/ext_*.tif (run benchmarks/external/run.sh first).
# Every simulate and run goes under `nice -n ${NICE:-10}` (NICE=19: only idle cycles).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BUILD=${1:?build dir}
OUT=${2:?output dir}
SET=${3:-all}
BIN=$BUILD/tmdflow
export OPENBLAS_NUM_THREADS=1
mkdir -p "$OUT"
attr() { h5dump -a "/$1" "$2" 2>/dev/null | sed -n 's/.*(0): *\([0-9.eE+-]*\).*/\1/p' | head -1; }
list=$OUT/list.txt
: > "$list"
if [ "$SET" = sim ] || [ "$SET" = all ]; then
  for s in $(seq 960001 960040); do
    f=$OUT/r$s.h5
    [ -f "$f" ] || nice -n ${NICE:-10} "$BIN" simulate -o "$f" --seed "$s" --size 512 > /dev/null
    echo "$f:/image $(attr pixel_size "$f") $(attr lattice_a "$f")" >> "$list"
  done
  i=0
  for px in 0.06 0.065 0.07 0.08 0.10 0.14 0.16 0.18; do
    for comp in 0,1 1,1 0,0 0.5,0.5; do
      i=$((i + 1))
      f=$OUT/t$px-$comp.h5
      [ -f "$f" ] || nice -n ${NICE:-10} "$BIN" simulate -o "$f" --seed $((960100 + i)) --size 768 --pixel-size "$px" \
        --composition "$comp" > /dev/null
      echo "$f:/image $(attr pixel_size "$f") $(attr lattice_a "$f")" >> "$list"
    done
  done
fi
if [ "$SET" = acc ] || [ "$SET" = all ]; then
  for f in "$ROOT"/benchmarks/accuracy/out/sim_*.h5; do
    case $f in *.truth.h5) continue ;; esac
    [ -f "$f" ] && echo "$f:/image $(attr pixel_size "$f") $(attr lattice_a "$f")" >> "$list"
  done
fi
if [ "$SET" = ext ] || [ "$SET" = all ]; then
  for f in "$ROOT"/benchmarks/external/out/ext_*.tif; do
    [ -f "$f.truth.h5" ] && echo "$f $(attr pixel_size "$f.truth.h5") $(attr lattice_a "$f.truth.h5")" >> "$list"
  done
fi
tsv=$OUT/pixel_size.tsv
printf 'input\tpx_true\ta_true\tperiod\tperiod_err_pct\tpx_final\tpx_err_pct\ta_vegard\tcomposition\n' > "$tsv"
while read -r f px a; do
  res=$OUT/res.h5
  log=$(TMDFLOW_LOG=info nice -n ${NICE:-10} "$BIN" run "$f" -o "$res" --force pixel_size_from_file=0 2>&1 < /dev/null) || { echo "run failed: $f" >&2; continue; }
  per=$(echo "$log" | sed -n 's/.*lattice: period \([0-9.]*\) px.*/\1/p' | head -1)
  av=$(echo "$log" | sed -n 's/.*(a = \([0-9.]*\) A).*/\1/p' | head -1)
  comp=$(echo "$log" | sed -n 's/.*composition \(Mo[0-9.]*W[0-9.]* S[0-9.]*Se[0-9.]*\).*/\1/p' | head -1)
  rpx=$(attr pixel_size "$res")
  awk -v f="$f" -v px="$px" -v a="$a" -v per="$per" -v rpx="$rpx" -v av="$av" -v c="$comp" 'BEGIN {
      printf "%s\t%s\t%s\t%s\t%+.2f\t%s\t%+.2f\t%s\t%s\n", f, px, a, per, 100 * (per / (a / px) - 1), rpx,
             100 * (rpx / px - 1), av, c }' >> "$tsv"
done < "$list"
rm -f "$OUT/res.h5"
awk -F'\t' 'NR > 1 { n++; e = $5 < 0 ? -$5 : $5; f = $7 < 0 ? -$7 : $7; se += e; sf += f
                     if (e > we) { we = e; wen = $1 } if (f > wf) { wf = f; wfn = $1 }
                     if (e <= 1) ie++; if (f <= 1) jf++ }
     END { printf "%d images\nlattice period vs a_true/px_true: mean |err| %.2f %%, worst %.2f %% (%s), within 1 %%: %d\n", n, se / n, we, wen, ie
           printf "final pixel size (after Vegard):   mean |err| %.2f %%, worst %.2f %% (%s), within 1 %%: %d\n", sf / n, wf, wfn, jf }' "$tsv"
