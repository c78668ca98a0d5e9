#!/usr/bin/env bash
# rr.sh TAG "1 2 3 4" [ENV=..]: classify_rerun on the saved inputs of main, pixel size given
TAG=$1; BL=${2:-"1 2 3 4"}; shift 2
for b in $BL; do
  mkdir -p /tmp/lone/rr/$TAG/b$b
  (cd /tmp/s9/in$b && env OPENBLAS_NUM_THREADS=1 H_PXTRUE=1 "$@" nice -n 5 ${BUILD_DBG:-/work/wt-lone/build-dbg}/benchmarks/classify_rerun /tmp/lone/rr/$TAG/b$b $(cat args.txt)) > /tmp/lone/rr/$TAG/b$b.log 2>&1
  echo "block $b: $(grep -i pooled -A3 /tmp/lone/rr/$TAG/b$b.log | tr '\n' ' ')"
done
