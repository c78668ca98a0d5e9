#!/usr/bin/env bash
# benchmarks/sim-throughput — simulation throughput (Mpix/s) and per-rank peak memory of
# `tmdflow simulate` at 1 and 2 ranks, from small images to a 32768^2 mosaic.
#
#   benchmarks/sim-throughput/run.sh [BUILD_DIR] [SIZES] [RANKS]
#   e.g. benchmarks/sim-throughput/run.sh build "2048 4096 8192 16384 32768" "1 2"
#
# Every run simulates an N x N float32 HDF5 file (image + truth + class mask) at 0.12 A/px,
# seed 4242 (all other conditions drawn from the seed: the same image at every rank count),
# times it (wall clock, includes writing ~5 bytes/px and the truth tables), reads the
# per-rank peak RSS from the file's `peak_rss_bytes` attribute, then deletes the file.
# Results are appended to benchmarks/sim-throughput/results/sim-throughput.csv (or $OUT):
#   size,ranks,frames,wall_s,mpix_s,render_cpu_s_max,mpix_per_rank_cpu_s,peak_mib_rank0,peak_mib_max,atoms,load_avg
# render_cpu_s_max is the largest CPU time any rank spent rendering (the file's
# `render_cpu_seconds` attribute: not waiting, not writing); size^2 / render_cpu_s_max is the
# rendering throughput the ranks reach with a core each, whatever else runs on the machine.
# The load average is recorded because the development machine is shared: other jobs on the
# same 2 cores lower the Mpix/s figures (peak memory is unaffected).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-$here/../../build}
sizes=${2:-"1024 2048 4096"}
ranks=${3:-"1 2"}
frames=${FRAMES:-1}
bin=$build/tmdflow
out=${OUT:-$here/results}
work=${WORK:-/tmp/tmdflow-simbench}
mpiexec=${MPIEXEC:-"mpiexec --oversubscribe --bind-to none"}
[ "$(id -u)" = 0 ] && mpiexec="$mpiexec --allow-run-as-root"
export OPENBLAS_NUM_THREADS=1 TMDFLOW_LOG=info TMDFLOW_PROGRESS_INTERVAL=60
mkdir -p "$out" "$work"
csv=$out/sim-throughput.csv
[ -f "$csv" ] || echo "size,ranks,frames,wall_s,mpix_s,render_cpu_s_max,mpix_per_rank_cpu_s,peak_mib_rank0,peak_mib_max,atoms,load_avg" >"$csv"
for n in $sizes; do
  for r in $ranks; do
    f=$work/sim_${n}_np$r.h5
    rm -f "$f"
    load=$(cut -d' ' -f1 /proc/loadavg)
    t0=$(date +%s.%N)
    $mpiexec -n "$r" "$bin" simulate -o "$f" --size "$n" --frames "$frames" --seed 4242 --pixel-size 0.12 \
      2>"$out/log_${n}_np$r.txt"
    t1=$(date +%s.%N)
    peaks=$(h5dump -a /peak_rss_bytes "$f" | sed -n 's/.*([0-9]*): *//p' | tr -d ' ' | tr ',' '\n' | grep -v '^$')
    p0=$(echo "$peaks" | head -1)
    pmax=$(echo "$peaks" | sort -n | tail -1)
    cpu=$(h5dump -a /render_cpu_seconds "$f" | sed -n 's/.*([0-9]*): *//p' | tr -d ' ' | tr ',' '\n' | grep -v '^$' | sort -g | tail -1)
    atoms=$(h5dump -H -d /atoms/x "$f" | sed -n 's/.*SIMPLE { ( \([0-9]*\) ).*/\1/p')
    awk -v n="$n" -v r="$r" -v fr="$frames" -v t0="$t0" -v t1="$t1" -v p0="$p0" -v pm="$pmax" -v a="$atoms" -v l="$load" -v c="$cpu" \
      'BEGIN { w = t1 - t0; printf "%d,%d,%d,%.2f,%.2f,%.2f,%.2f,%.1f,%.1f,%d,%s\n", n, r, fr, w, n * n * fr / w / 1e6, c, n * n * fr / c / 1e6, p0 / 1048576, pm / 1048576, a, l }' \
      | tee -a "$csv"
    rm -f "$f"
  done
done
