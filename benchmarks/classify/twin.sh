#!/usr/bin/env bash
# The pure-compound twin without a pixel size: MoS2 at exponent n gives the contrast ratios of
# WSe2 at 1.24 n, so without a pixel size only the exponent prior names the compound
# (docs/accuracy.md, "The pure-compound twin"). This runs pure MoS2 and WSe2 at physical
# exponents 1.6-2.0, two seeds each, from both simulators (benchmarks/external/extsim.py and
# tmdflow simulate), 512 px, without --pixel-size, and prints per image the compound found, its
# fitted exponent and the runner-up of the twin warning, then how many were named wrong.
#   benchmarks/classify/twin.sh [BUILD_DIR] [OUT_DIR]
# About 5 minutes on an idle 2-core machine (40 images).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BUILD=${1:-$ROOT/build}
OUT=${2:-$HERE/twin-out}
BIN=$BUILD/tmdflow
export OPENBLAS_NUM_THREADS=1
[ -x "$BIN" ] || { echo "no $BIN: build it (cmake --build $BUILD --target tmdflow)" >&2; exit 1; }
/usr/bin/python3 -c 'import numpy, tifffile, h5py' 2>/dev/null ||
  { echo "extsim.py needs python3-numpy python3-tifffile python3-h5py" >&2; exit 1; }
mkdir -p "$OUT"
wrong=0 total=0
printf '%-18s %-5s %-6s %-28s %s\n' image truth found "fit" "twin warning (lead, runner-up)"
for n in 1.6 1.7 1.8 1.9 2.0; do
  for mat in MoS2 WSe2; do
    for seed in 1 2; do
      for sim in ext own; do
        tag=${sim}_${mat}_${n}_$seed
        if [ $sim = ext ]; then
          in=$OUT/$tag.tif
          [ -f "$in.truth.h5" ] || nice -n 10 /usr/bin/python3 "$ROOT/benchmarks/external/extsim.py" -o "$in" --size 512 \
            --seed $((800 + seed + ${n/./})) --material $mat --px 0.12 --dose 60 --n $n < /dev/null > /dev/null
        else
          comp=$([ $mat = MoS2 ] && echo 0,0 || echo 1,1)
          [ -f "$OUT/$tag.h5" ] || nice -n 10 "$BIN" simulate -o "$OUT/$tag.h5" --size 512 --seed $((900 + seed + ${n/./})) \
            --composition $comp z_exponent=$n --force > /dev/null
          in=$OUT/$tag.h5:/image
        fi
        TMDFLOW_LOG=info nice -n 10 "$BIN" run "$in" -o "$OUT/r.h5" --force pixel_size_from_file=0 > "$OUT/$tag.log" 2>&1
        fit=$(sed -n 's/.*fitted exponent \([0-9.]*\), composition \([A-Za-z0-9.]*\) \([A-Za-z0-9.]*\).*/n \1 \2\3/p' "$OUT/$tag.log" | head -1)
        case "$fit" in
          *Mo1.00W0.00S2.00Se0.00) got=MoS2 ;;
          *Mo0.00W1.00S0.00Se2.00) got=WSe2 ;;
          *) got=other ;;
        esac
        warn=$(sed -n 's/.*only \([0-9.]*\) log units better than \([A-Za-z0-9.]*\) \([A-Za-z0-9.]*\) at n \([0-9.]*\).*/\1 over \2\3 at n \4/p' "$OUT/$tag.log" | head -1)
        total=$((total + 1))
        [ "$got" = "$mat" ] || wrong=$((wrong + 1))
        printf '%-18s %-5s %-6s %-28s %s\n' "$tag" "$mat" "$got" "$fit" "$warn"
      done
    done
  done
done
rm -f "$OUT/r.h5"
echo "named wrong: $wrong of $total"
