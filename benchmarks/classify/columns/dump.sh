#!/usr/bin/env bash
# dump.sh TAG BLOCK [ENV..]: per-image classify_rerun with TMD_CLASSIFY_DUMP -> /tmp/lone/d/TAG/<seed>.txt
TAG=$1; b=$2; shift 2; mkdir -p /tmp/lone/d/$TAG
cd /tmp/s9/in$b
for a in $(cat args.txt); do s=${a#in_}; s=${s%%.bin*}
  env OPENBLAS_NUM_THREADS=1 H_PXTRUE=1 TMD_CLASSIFY_DUMP=/tmp/lone/d/$TAG/$s.txt TMD_VAC_DUMP=/tmp/lone/d/$TAG/v$s.txt "$@" nice -n 5 ${BUILD_DBG:-/work/wt-lone/build-dbg}/benchmarks/classify_rerun /tmp/lone/d/$TAG/o $a > /tmp/lone/d/$TAG/$s.log 2>&1 &
  while [ $(jobs -r | wc -l) -ge 2 ]; do sleep 0.2; done
done; wait
