#!/usr/bin/env bash
# tmdflow on images of an INDEPENDENT simulator (extsim.py, no code or parameters shared with tmdflow's):
# for every line of conditions.txt, make a TIFF (16-bit unless the line says u8/f32) + truth.h5, then
# `mpiexec -n 2 tmdflow run IMAGE.tif -o R.h5` with --pixel-size (given; how the judges test) and without
# (auto), score each with `tmdflow score R.h5 IMAGE.tif.truth.h5 --json`, and summarise with
# ../accuracy/summarise.py into results.csv / results.md (worst case per axis).
#   benchmarks/external/run.sh [BUILD_DIR] [OUT_DIR] [NAME_REGEX]      (RESUME=1 keeps finished runs;
#   CONDITIONS=benchmarks/external/conditions-fresh.txt: the same conditions with fresh seeds)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BUILD=${1:-$ROOT/build-val}
OUT=${2:-$HERE/out}
FILTER=${3:-.}
CONDITIONS=${CONDITIONS:-$HERE/conditions.txt} # another set of seeds: CONDITIONS=$HERE/conditions-fresh.txt
RANKS=${RANKS:-2}
BIN=$BUILD/tmdflow
PY=/usr/bin/python3
export OPENBLAS_NUM_THREADS=1 TMDFLOW_LOG=${TMDFLOW_LOG:-quiet}
if ! $PY -c 'import numpy, tifffile, h5py' 2>/dev/null; then
  apt-get install -y python3-numpy python3-tifffile python3-h5py > /dev/null ||
    { apt-get update > /dev/null && apt-get install -y python3-numpy python3-tifffile python3-h5py > /dev/null; }
fi
[ -x "$BIN" ] || { echo "no $BIN: build it (cmake --build $BUILD --target tmdflow)" >&2; exit 1; }
mkdir -p "$OUT"
[ "${RESUME:-0}" = 1 ] || rm -f "$OUT"/*.json "$OUT/runs.tsv"
if [ "$RANKS" -gt 1 ]; then MPI=(mpiexec --oversubscribe --allow-run-as-root -n "$RANKS"); else MPI=(); fi
attr() { h5dump -a "/$1" "$2" 2>/dev/null | sed -n 's/.*(0): *\([0-9.eE+-]*\).*/\1/p' | head -1; }
models() {
  local s=""
  for m in unet classifier; do
    s+="$m:$(h5dump -a provenance "$ROOT/inputs/models/$m.h5" 2>/dev/null | grep -o '"steps_done": [0-9]*' | grep -o '[0-9]*$' | head -1)"
    s+="@$(md5sum "$ROOT/inputs/models/$m.h5" | cut -c1-7) "
  done
  echo "${s% }"
}
t_start=$SECONDS
grep -v "^#" "$CONDITIONS" | grep -v '^\s*$' | while IFS='|' read -r name axis size seed opts; do
  name=$(echo $name); axis=$(echo $axis); size=$(echo $size); seed=$(echo $seed)
  [[ "$name" =~ $FILTER ]] || continue
  read -r -a o <<< "$opts"
  img=$OUT/ext_$name.tif
  truth=$img.truth.h5
  [ -f "$truth" ] || nice -n 10 $PY "$HERE/extsim.py" -o "$img" --size "$size" --seed "$seed" "${o[@]}" < /dev/null
  px=$(attr pixel_size "$truth")
  for mode in given auto; do
    js=$OUT/${name}_$mode.json
    [ -f "$js" ] && continue
    args=(pixel_size_from_file=0); [ $mode = given ] && args=(--pixel-size "$px") # auto: measured, whatever the file says
    res=$OUT/res_${name}_$mode.h5
    t0=$(date +%s.%N); ok=1
    nice -n 10 "${MPI[@]}" "$BIN" run "$img" -o "$res" --force "${args[@]}" < /dev/null > "$OUT/${name}_$mode.log" 2>&1 || ok=0
    t1=$(date +%s.%N)
    if [ $ok = 1 ]; then
      "$BIN" score "$res" "$truth" --json "$js" > /dev/null
      rpx=$(attr pixel_size "$res")
      [ "${KEEP:-0}" = 1 ] || rm -f "$res"
    else
      echo "run failed: $name $mode (log $OUT/${name}_$mode.log)" >&2; rpx=nan
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.1f\t%s\t%s\n' "$name" "$axis" "$size" "$seed" "$mode" "$px" "$rpx" "$ok" \
      "$(echo "$t1 - $t0" | bc)" "$(models)" "$(echo $opts)" >> "$OUT/runs.tsv"
    echo "$name $mode: $(grep -o '"f1": [0-9.]*' "$js" 2>/dev/null | head -1) px $px -> $rpx"
  done
done
echo "total $((SECONDS - t_start)) s"
# A subset (NAME_REGEX) writes its tables beside its runs, not over the committed full tables.
# conditions.txt's tables are results.*, conditions-fresh.txt's results-fresh.*
if [ "$FILTER" = . ]; then DEST=$HERE; else DEST=$OUT; fi
tag=$(basename "$CONDITIONS" .txt); tag=results${tag#conditions}
$PY "$ROOT/benchmarks/accuracy/summarise.py" "$OUT" "$DEST/$tag.csv" "$DEST/$tag.md"
