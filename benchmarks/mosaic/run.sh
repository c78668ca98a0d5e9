#!/usr/bin/env bash
# benchmarks/mosaic — end-to-end `tmdflow run` on simulated square mosaics at 1 and 2 ranks.
#
#   benchmarks/mosaic/run.sh [BUILD_DIR] [SIZES] [RANKS]
#   e.g. benchmarks/mosaic/run.sh build "4096 8192 16384 32768" "1 2"
#
# For each size N the simulator writes an N x N uint16 TIFF at 0.12 A/px (seed 4242, every
# other condition drawn from the seed; the same file for every rank count), then
# `tmdflow run` processes it at each rank count with the default configuration. Written to
# benchmarks/mosaic/results/ (or $OUT):
#   mosaic.csv   size, ranks, wall_s, mpix_s, peak_mib_rank0, peak_mib_max, atoms, load_avg,
#                cpu_s, mpix_per_cpu_s
#   mosaic.svg   Mpix per CPU-second and per-rank peak memory against image size (a line per rank count)
#   logs/        the stage table of every run
# Wall time includes reading, normalisation, U-Net, atoms, classification and writing, not the
# simulation. Peak memory per rank comes from the result file's `peak_rss_bytes` attribute.
# The machine's load average is recorded because other jobs on the same cores distort times;
# cpu_s is the user + system CPU time of all ranks together (GNU time on mpiexec, whose
# children the ranks are), so mpix_per_cpu_s is the throughput per core whatever the load:
# with R free cores the wall time would be about cpu_s / R.
# ARGS="key=value ..." passes configuration keys to every run (e.g. ARGS=tile=768 with a
# separate OUT= and WORK= for a comparison; the default configuration otherwise).
# KEEP=1 keeps the result files in $WORK (to compare /atoms between rank counts with h5diff);
# by default each is deleted once its row is written.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-$here/../../build}
sizes=${2:-"4096 8192"}
ranks=${3:-"1 2"}
bin=$build/tmdflow
out=${OUT:-$here/results}
work=${WORK:-/tmp/tmdflow-mosaic}
mpiexec=${MPIEXEC:-"mpiexec --oversubscribe --bind-to none"}
[ "$(id -u)" = 0 ] && mpiexec="$mpiexec --allow-run-as-root"
export OPENBLAS_NUM_THREADS=1 TMDFLOW_LOG=info TMDFLOW_PROGRESS_INTERVAL=60
mkdir -p "$out/logs" "$work"
csv=$out/mosaic.csv
[ -f "$csv" ] || echo "size,ranks,wall_s,mpix_s,peak_mib_rank0,peak_mib_max,atoms,load_avg,cpu_s,mpix_per_cpu_s" >"$csv"

for n in $sizes; do
    img=$work/mosaic_$n.tif
    if [ ! -f "$img" ]; then
        echo "simulating $n x $n ..."
        $mpiexec -n 2 "$bin" simulate -o "$img" --size "$n" --seed 4242 --pixel-size 0.12 --u16 --force \
            >"$out/logs/simulate_$n.log" 2>&1
    fi
    for r in $ranks; do
        res=$work/result_${n}_$r.h5
        log=$out/logs/run_${n}_np$r.log
        load=$(cut -d' ' -f1 /proc/loadavg)
        t0=$(date +%s.%N)
        /usr/bin/time -f "%U %S" -o "$work/time_${n}_$r" \
            $mpiexec -n "$r" "$bin" run "$img" -o "$res" --pixel-size 0.12 --force ${ARGS:-} 2>"$log"
        t1=$(date +%s.%N)
        wall=$(echo "$t1 - $t0" | bc -l)
        peaks=$(h5dump -a /peak_rss_bytes "$res" | sed -n 's/.*([0-9]*): *//p' | tr -d ',' | tr '\n' ' ')
        read -r -a pk <<<"$peaks"
        p0=$(echo "${pk[0]} / 1048576" | bc)
        pmax=0
        for p in "${pk[@]}"; do v=$(echo "$p / 1048576" | bc); [ "$v" -gt "$pmax" ] && pmax=$v; done
        atoms=$("$bin" info "$res" | awk '$1 == "/atoms/x" {gsub(",", "", $3); print $3}')
        mpix=$(echo "$n * $n / 1000000 / $wall" | bc -l)
        cpu=$(awk 'END { print $1 + $2 }' "$work/time_${n}_$r")
        mpc=$(echo "$n * $n / 1000000 / $cpu" | bc -l)
        printf "%d,%d,%.1f,%.4f,%d,%d,%s,%s,%.1f,%.4f\n" "$n" "$r" "$wall" "$mpix" "$p0" "$pmax" "$atoms" "$load" "$cpu" "$mpc" \
            | tee -a "$csv"
        [ "${KEEP:-0}" = 1 ] || rm -f "$res"
    done
done

# SVG plot: two panels (Mpix per CPU-second, peak MiB per rank) against log2(size)
# (throughput per CPU-second where the row has it: wall-clock Mpix/s measures the machine's load)
# PREV=FILE.csv adds that file's rows as dashed lines ("before"); rows without a throughput
# (e.g. a run resumed from a checkpoint) are left out of the throughput panel
awk -F, -v prev="${PREV:-}" 'FNR > 1 { key = (prev != "" && FILENAME == prev ? "before: " : "") $2; t = $10 != "" ? $10 : $4; x[key] = x[key] " " $1; m[key] = m[key] " " t; p[key] = p[key] " " $6;
                   if (t > mmax) mmax = t; if ($6 > pmax) pmax = $6; ranks[key] = 1 }
  function lx(s) { return 60 + (log(s) / log(2) - 12) * 110 }
  END {
    if (mmax == 0) mmax = 1; if (pmax == 0) pmax = 1;
    print "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"900\" height=\"360\" font-family=\"sans-serif\" font-size=\"12\">";
    split("#1f77b4 #d62728 #2ca02c #9467bd", col, " ");
    for (panel = 0; panel < 2; panel++) {
      ox = panel * 450;
      printf "<g transform=\"translate(%d,0)\"><rect x=\"60\" y=\"30\" width=\"340\" height=\"260\" fill=\"none\" stroke=\"black\"/>\n", ox;
      printf "<text x=\"230\" y=\"20\" text-anchor=\"middle\">%s</text>\n", panel ? "peak memory per rank (MiB)" : "throughput (Mpix per CPU-second)";
      for (e = 12; e <= 15; e++) printf "<text x=\"%d\" y=\"308\" text-anchor=\"middle\">%d</text>\n", lx(2^e), 2^e;
      top = panel ? pmax : mmax;
      printf "<text x=\"55\" y=\"35\" text-anchor=\"end\">%.3g</text><text x=\"55\" y=\"290\" text-anchor=\"end\">0</text>\n", top;
      ci = 0;
      for (k in ranks) {
        ci++; n = split(x[k], xs, " "); split(panel ? p[k] : m[k], ys, " "); pts = "";
        for (i = 1; i <= n; i++) if (panel || ys[i] > 0) pts = pts sprintf("%.1f,%.1f ", lx(xs[i]), 290 - 250 * ys[i] / top);
        printf "<polyline points=\"%s\" fill=\"none\" stroke=\"%s\" stroke-width=\"2\"%s/>\n", pts, col[ci], k ~ /^before/ ? " stroke-dasharray=\"5,4\"" : "";
        for (i = 1; i <= n; i++) if (panel || ys[i] > 0) printf "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n", lx(xs[i]), 290 - 250 * ys[i] / top, col[ci];
        printf "<text x=\"330\" y=\"%d\" fill=\"%s\">%s rank(s)</text>\n", 40 + 15 * ci, col[ci], k;
      }
      print "<text x=\"230\" y=\"325\" text-anchor=\"middle\">image edge (pixels)</text></g>";
    }
    print "</svg>"
  }' ${PREV:-} "$csv" >"$out/mosaic.svg"
echo "wrote $csv and $out/mosaic.svg"
