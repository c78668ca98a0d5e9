#!/usr/bin/env bash
# ext.sh: extsim's 20 images (benchmarks/external/conditions.txt) generated once into /tmp/lone/ext,
# then main's binary and this branch's run with the true pixel size (one rank), scored.
set -u
H=/work/wt-lone/benchmarks/external; OUT=/tmp/lone/ext; mkdir -p $OUT/base $OUT/new
export OPENBLAS_NUM_THREADS=1 TMDFLOW_LOG=quiet
attr() { h5dump -a "/$1" "$2" 2>/dev/null | sed -n 's/.*(0): *\([0-9.eE+-]*\).*/\1/p' | head -1; }
grep -v '^#' $H/conditions.txt | grep -v '^\s*$' | while IFS='|' read -r name axis size seed opts; do
  name=$(echo $name); size=$(echo $size); seed=$(echo $seed); read -r -a o <<< "$opts"
  img=$OUT/ext_$name.tif; truth=$img.truth.h5
  [ -f "$truth" ] || nice -n 10 /usr/bin/python3 $H/extsim.py -o "$img" --size "$size" --seed "$seed" "${o[@]}" < /dev/null > /dev/null
  px=$(attr pixel_size "$truth")
  for v in base new; do
    js=$OUT/$v/score_${name}_given.json; [ -f $js ] && continue
    if [ $v = base ]; then BIN=/tmp/s9/base-bin/tmdflow; export TMDFLOW_MODELS=/work/main/inputs/models; else BIN=/work/wt-lone/build/tmdflow; unset TMDFLOW_MODELS; fi
    nice -n 10 $BIN run "$img" -o $OUT/$v/r.h5 --force --pixel-size "$px" < /dev/null > /dev/null 2>&1 && $BIN score $OUT/$v/r.h5 "$truth" --json $js > /dev/null
    rm -f $OUT/$v/r.h5
  done
  echo "$name done"
done
