#!/usr/bin/env bash
# Held-out accuracy of the whole pipeline (detection, positions, species, vacancies, pixel size)
# over the simulator's conditions, one axis at a time around a baseline and jointly.
#
#   benchmarks/accuracy/run.sh [BUILD_DIR] [OUT_DIR] [NAME_REGEX]
#
# For every line of conditions.txt: tmdflow simulate (seed >= 900000, never used for training),
# then `mpiexec -n 2 tmdflow run` twice — with --pixel-size (the truth) and without (measured) —
# each scored with `tmdflow score --json`. Writes OUT_DIR/*.json, OUT_DIR/runs.tsv and, through
# summarise.py, benchmarks/accuracy/results.csv (one row per image and mode) and results.md
# (per condition and per axis, worst case). RESUME=1 keeps finished runs of OUT_DIR.
# Everything runs under `nice -n 10` with OPENBLAS_NUM_THREADS=1 (shared 2-core machine);
# about 10-15 minutes for the whole list. RANKS=1 runs without mpiexec; MODES=given runs only the
# given-pixel-size mode (quick iterations); RUN_ARGS="key=value ..." is passed to every tmdflow run.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BUILD=${1:-$ROOT/build-val}
OUT=${2:-$HERE/out}
FILTER=${3:-.}
RANKS=${RANKS:-2}
BIN=$BUILD/tmdflow
PY=/usr/bin/python3
export OPENBLAS_NUM_THREADS=1 TMDFLOW_LOG=${TMDFLOW_LOG:-quiet}
[ -x "$BIN" ] || { echo "no $BIN: build it (cmake --build $BUILD --target tmdflow)" >&2; exit 1; }
mkdir -p "$OUT"
[ "${RESUME:-0}" = 1 ] || rm -f "$OUT"/*.json "$OUT/runs.tsv"

# Baseline: mid-range values of every axis that is scanned; the rest (rotation, strain field,
# gain, offset, ...) is drawn from the seed.
BASE="pixel_size=0.12 dose=150 read_noise=0.5 probe_fwhm=0.9 tail_fraction=0.12 tail_fwhm=3.5
 contamination=0 background=0.1 background_var=0.05 hole_prob=0 edge=0
 jitter=0.15 wobble=0 shear=0 scan_compress=0 scan_rotation=0 scan_smear=0
 composition=0.3,0.4 cluster=0 vac_m=0.02 vac_x=0.04 vac_x2=0.01 z_exponent=1.7 column_jitter=0.04"

if [ "$RANKS" -gt 1 ]; then MPI=(mpiexec --oversubscribe --allow-run-as-root -n "$RANKS"); else MPI=(); fi
attr() { h5dump -a "/$1" "$2" 2>/dev/null | sed -n 's/.*(0): *\([0-9.eE+-]*\).*/\1/p' | head -1; }
models() { # checkpoint stamp: U-Net and classifier training steps (provenance steps_done)
  local s=""
  for m in unet classifier; do
    s+="$m:$(h5dump -a provenance "$ROOT/inputs/models/$m.h5" 2>/dev/null | grep -o '"steps_done": [0-9]*' | grep -o '[0-9]*$' | head -1)"
    s+="@$(md5sum "$ROOT/inputs/models/$m.h5" | cut -c1-7) "
  done
  echo "${s% }"
}
echo "models: $(models)"
t_start=$SECONDS
grep -v '^#' "$HERE/conditions.txt" | grep -v '^\s*$' | while IFS='|' read -r name axis size seed params; do
  name=$(echo $name); axis=$(echo $axis); size=$(echo $size); seed=$(echo $seed); params=$(echo $params)
  [[ "$name" =~ $FILTER ]] || continue
  ext=h5; extra=()
  if [ "$params" = random ]; then extra=(); else
    [[ "$params" == TIF* ]] && { ext=tif; params=${params#TIF}; }
    read -r -a extra <<< "$(echo $BASE $params)"
  fi
  sim=$OUT/sim_$name.$ext
  if [ $ext = tif ]; then truth=$sim.truth.h5; input=$sim; else truth=$sim; input=$sim:/image; fi
  [ -f "$truth" ] || nice -n 10 "$BIN" simulate -o "$sim" --size "$size" --seed "$seed" --force "${extra[@]}" < /dev/null > /dev/null
  px=$(attr pixel_size "$truth")
  for mode in ${MODES:-given auto}; do
    js=$OUT/${name}_$mode.json
    [ -f "$js" ] && continue
    args=(${RUN_ARGS:-}); [ $mode = given ] && args+=(--pixel-size "$px")
    [ $mode = auto ] && args+=(pixel_size_from_file=0) # measured: the file carries the true one
    res=$OUT/res_${name}_$mode.h5
    t0=$(date +%s.%N)
    ok=1
    nice -n 10 "${MPI[@]}" "$BIN" run "$input" -o "$res" --force "${args[@]}" < /dev/null > "$OUT/${name}_$mode.log" 2>&1 || ok=0
    t1=$(date +%s.%N)
    if [ $ok = 1 ]; then
      "$BIN" score "$res" "$truth" --json "$js" > /dev/null
      rpx=$(attr pixel_size "$res")
    else
      echo "run failed: $name $mode (log $OUT/${name}_$mode.log)" >&2; rpx=nan
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.1f\t%s\t%s\n' "$name" "$axis" "$size" "$seed" "$mode" "$px" "$rpx" "$ok" \
      "$(echo "$t1 - $t0" | bc)" "$(models)" "$params" >> "$OUT/runs.tsv"
    echo "$name $mode: $(grep -o '"f1": [0-9.]*' "$js" 2>/dev/null | head -1) px $px -> $rpx ($(echo "$t1 - $t0" | bc | cut -c1-5) s)"
    rm -f "$res"
  done
done
echo "total $((SECONDS - t_start)) s"
# A subset (NAME_REGEX) writes its tables beside its runs, not over the committed full tables.
if [ "$FILTER" = . ]; then DEST=$HERE; else DEST=$OUT; fi
$PY "$HERE/summarise.py" "$OUT" "$DEST/results.csv" "$DEST/results.md"
