#!/usr/bin/env bash
# Proves that `tmdflow info` describes every kind of input and a result file:
#   a 16-bit striped TIFF, a tiled (LZW, float32) TIFF, a BigTIFF, a multi-page stack, a TIFF
#   carrying its pixel size (ImageJ style), an HDF5 3-D dataset (bare file -> /image, and
#   FILE.h5:/path), and a result file written by the parallel writer (groups, datasets with
#   shapes and types, root attributes with the configuration shortened, counts);
#   under 2 ranks the description is printed once; a missing file, a truncated TIFF and a
#   missing HDF5 dataset give a message naming the file and a non-zero exit on every rank count.
# Fixtures come from `test_io --make-fixtures` (libtiff/HDF5, no python needed).
# TMD_TEST_TIMEOUT: 300
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.bash" # bin, mpiexec (array), src, fail, h5_same, tmd_*
fixer=$(tmd_test_bin test_io)
tmd_workdir info-test
"$fixer" --make-fixtures "$work"

# expect FILE PATTERN...: `tmdflow info FILE` succeeds and prints every pattern (grep -E).
expect() {
    local f=$1; shift
    local out
    out=$(timeout 60 "$bin" info "$f" 2>&1) || fail "info $f exited non-zero: $out"
    for p in "$@"; do
        grep -Eq -- "$p" <<<"$out" || { echo "$out"; fail "info $f: no line matching '$p'"; }
    done
    echo "ok: info $(basename "$f")"
}

expect "$work/u16_striped.tif" '^format: +TIFF$' '^frames: +1$' '200 x 300' 'uint16' 'striped 16 rows/strip, uncompressed'
expect "$work/tiled.tif" 'float32' 'tiled 64x64, LZW' '200 x 300'
expect "$work/big.tif" '^format: +BigTIFF$' '256 x 256' 'uint16'
expect "$work/stack.tif" '^frames: +6$' '96 x 128' 'uint8' 'Deflate'
expect "$work/px.tif" 'pixel size: +0.12 A'
expect "$work/stack.h5" '^format: +HDF5$' '/image +float32 +3 x 64 x 80' '/raw/frame0 +uint16 +40 x 50' \
    'pixel_size +0.15' '^frames: +3$' 'chunked 1x32x32, deflate'
expect "$work/stack.h5:/raw/frame0" '^frames: +1$' '40 x 50' 'uint16' 'contiguous'
expect "$work/result.h5" '/atoms/x +float64 +5' '/sites/unstable +int8 +3' 'config +"\[run\]\.\.\." \(54 characters, 5 lines\)' \
    'tmdflow_version +"' '^  atoms +5$' '^  defects +2$' '^  unstable sites +2$'

# Two ranks: same description, printed once, exit 0.
out=$(timeout 60 "${mpiexec[@]}" -n 2 "$bin" info "$work/stack.tif" 2>&1) || fail "info at 2 ranks exited non-zero: $out"
[ "$(grep -c '^frames:' <<<"$out")" = 1 ] || { echo "$out"; fail "info at 2 ranks did not print exactly once"; }
echo "ok: info at 2 ranks prints once"

# Bad files: message names the file, non-zero exit, at 1 and 2 ranks.
for spec in "$work/nothere.tif" "$work/truncated.tif" "$work/stack.h5:/nothere"; do
    file=${spec%%:/*}
    for n in 1 2; do
        set +e
        out=$(timeout 60 "${mpiexec[@]}" -n $n "$bin" info "$spec" 2>&1)
        rc=$?
        set -e
        [ $rc -ne 0 ] && [ $rc -ne 124 ] || fail "info $spec at $n ranks: exit $rc (expected a non-zero exit, no timeout)"
        grep -qF "$file" <<<"$out" || { echo "$out"; fail "info $spec at $n ranks: message does not name the file"; }
        [ "$(grep -c 'error' <<<"$out")" = 1 ] || { echo "$out"; fail "info $spec at $n ranks: error not printed exactly once"; }
    done
    echo "ok: info $(basename "$spec") refused at 1 and 2 ranks"
done
echo "info.sh: all passed"
