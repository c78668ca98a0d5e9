#!/usr/bin/env bash
# Installs what tmdflow needs, builds it, and runs the main job on the bundled demo input
# (inputs/demo/demo.tif, a 16-bit HAADF image made by `tmdflow simulate`, 0.12 A/px) on 2 ranks.
# The result goes to demo-out/ (or $1): result.h5, result.png and score.json (accuracy
# against the simulator's ground truth).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target tmdflow
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
out=${1:-demo-out}
mkdir -p "$out"
mpiexec --oversubscribe -n 2 build/tmdflow run inputs/demo/demo.tif -o "$out/result.h5" --pixel-size 0.12 --force
build/tmdflow render "$out/result.h5" -o "$out/result.png"
# The demo image's ground truth, re-made by the simulator from the same seed (inputs/demo/README.md).
build/tmdflow simulate -o "$out/truth.tif" --size 512 --seed 424242 --pixel-size 0.12 \
    --composition 0.3,0.4 --dose 400 --u16 --force
cmp -s "$out/truth.tif" inputs/demo/demo.tif || echo "demo: note: the simulator no longer reproduces inputs/demo/demo.tif byte for byte" >&2
build/tmdflow score "$out/result.h5" "$out/truth.tif.truth.h5" --json "$out/score.json"
build/tmdflow info "$out/result.h5" | head -20
echo
echo "demo: result in $(cd "$out" && pwd)/result.h5, picture in $(cd "$out" && pwd)/result.png"
