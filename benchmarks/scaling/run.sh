#!/usr/bin/env bash
# benchmarks/scaling — strong and weak scaling of `tmdflow run`, through the same scripts the
# cluster uses (jobs/strong-scaling.sbatch, jobs/weak-scaling.sbatch, run here with mpiexec
# instead of srun), plus the per-stage times the cost model in docs/scaling.md is built from.
#
#   benchmarks/scaling/run.sh [BUILD_DIR]
#   STRONG_SIZE=1024 WEAK_BASE=768 RANKS="1 2 4" benchmarks/scaling/run.sh build
#
# Writes benchmarks/scaling/results/ (or $OUT):
#   strong.csv, weak.csv   from the job scripts (ranks, seconds, speedup/efficiency, same result)
#   stages.csv             kind, ranks, stage, time_s, peak_mib_max (from every run's stage table)
#   cpu.csv                ranks, wall_s, cpu_s (user+system of all ranks), command, per launch
#   scaling.svg            wall time and efficiency against ranks
#   logs/                  every run's log; load.txt (load average before/after: the machine is shared)
# On a 2-core machine only 1 and 2 ranks say anything about speed; 4 ranks run oversubscribed
# and check that the result does not change (same_as_first), not speed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
build=$(cd "${1:-$src/build}" && pwd)
out=${OUT:-$here/results}
work=${WORK:-/tmp/tmdflow-scaling}
export TMDFLOW=$build/tmdflow OPENBLAS_NUM_THREADS=1 TMDFLOW_LOG=info TMDFLOW_PROGRESS_INTERVAL=60
launcher="mpiexec --oversubscribe --bind-to none"
[ "$(id -u)" = 0 ] && launcher="$launcher --allow-run-as-root"
mkdir -p "$out/logs" "$work"
# The launcher records the CPU time of all ranks of each run (user + system, from mpiexec's
# reaped children): on a shared machine wall time is noisy, CPU time per tile is not.
cat > "$work/timed-mpiexec" <<EOT
#!/usr/bin/env bash
n=\$2; shift 2
exec /usr/bin/time -a -o "$work/cpu.txt" -f "\$n %e %U %S \$*" $launcher -n "\$n" "\$@"
EOT
chmod +x "$work/timed-mpiexec"
rm -f "$work/cpu.txt"
export TMD_LAUNCHER="$work/timed-mpiexec" TMD_RANKS=${RANKS:-"1 2 4"} SLURM_NTASKS=4
uptime > "$out/logs/load.txt"

TMD_SIZE=${STRONG_SIZE:-1024} bash "$src/jobs/strong-scaling.sbatch" "" "$work/strong" | tee "$out/logs/strong.txt"
TMD_BASE=${WEAK_BASE:-768} bash "$src/jobs/weak-scaling.sbatch" "$work/weak" | tee "$out/logs/weak.txt"
uptime >> "$out/logs/load.txt"
cp "$work/strong/strong.csv" "$work/weak/weak.csv" "$out/"
cp "$work"/strong/strong-n*.log "$work"/weak/weak-n*.log "$out/logs/"
# cpu.csv: every launch (simulations too): ranks, wall_s, cpu_s (all ranks), command
echo "ranks,wall_s,cpu_s,command" > "$out/cpu.csv"
awk '{ c = $5; for (i = 6; i <= NF; i++) c = c " " $i; printf "%s,%s,%.2f,%s\n", $1, $2, $3 + $4, c }' "$work/cpu.txt" >> "$out/cpu.csv"

# Stage tables: lines between "stages (" and "total".
echo "kind,ranks,stage,time_s,peak_mib_max" > "$out/stages.csv"
for f in "$out"/logs/strong-n*.log "$out"/logs/weak-n*.log; do
    b=$(basename "$f" .log); kind=${b%%-*}; n=${b##*-n}
    awk -v k="$kind" -v n="$n" '/stages \(/ { on = 1; next } on && $1 == "stage" { next }
        on && $1 == "total" { print k "," n ",total," $2 ","; on = 0; next }
        on && NF >= 5 { print k "," n "," $1 "," $2 "," $5 }' "$f" >> "$out/stages.csv"
done

# SVG: wall time (left) and efficiency (right) against ranks, strong and weak.
awk -F, -v W=760 -v H=300 '
    FNR == 1 { kind = (FILENAME ~ /strong/) ? "strong" : "weak"; next }
    kind == "strong" { n[kind, ++c[kind]] = $1; t[kind, c[kind]] = $2; e[kind, c[kind]] = $4 }
    kind == "weak"   { n[kind, ++c[kind]] = $1; t[kind, c[kind]] = $5; e[kind, c[kind]] = $6 }
    END {
        tmax = 0; for (k in t) if (t[k] > tmax) tmax = t[k]
        printf "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" font-size=\"12\">\n", W, H
        split("strong weak", kinds, " "); col["strong"] = "#1f77b4"; col["weak"] = "#d62728"
        for (p = 0; p < 2; p++) {
            x0 = 60 + p * 380; y0 = 250; w = 300; h = 200
            printf "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"#888\"/>\n", x0, y0 - h, w, h
            printf "<text x=\"%d\" y=\"%d\">%s</text>\n", x0, y0 - h - 8, p == 0 ? "wall time (s) vs ranks" : "efficiency vs ranks (4 = oversubscribed)"
            top = p == 0 ? tmax * 1.1 : 1.2
            for (i = 0; i <= 4; i++) printf "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">%.2g</text>\n", x0 - 4, y0 - h * i / 4 + 4, top * i / 4
            for (ki = 1; ki <= 2; ki++) {
                k = kinds[ki]; pts = ""
                for (i = 1; i <= c[k]; i++) {
                    xv = x0 + w * (log(n[k, i]) / log(2)) / 2.2 + 10
                    yv = y0 - h * (p == 0 ? t[k, i] : e[k, i]) / top
                    pts = pts sprintf("%.1f,%.1f ", xv, yv)
                    printf "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n", xv, yv, col[k]
                    if (p == 0 && ki == 1) printf "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%d</text>\n", xv, y0 + 14, n[k, i]
                }
                printf "<polyline points=\"%s\" fill=\"none\" stroke=\"%s\"/>\n", pts, col[k]
                printf "<text x=\"%d\" y=\"%d\" fill=\"%s\">%s</text>\n", x0 + w - 60, y0 - h + 16 * ki, col[k], k
            }
        }
        print "</svg>"
    }' "$out/strong.csv" "$out/weak.csv" > "$out/scaling.svg"
echo "scaling: results in $out"
