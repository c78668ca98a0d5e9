#!/usr/bin/env bash
# Proves that `tmdflow run` refuses hostile inputs cleanly at 1, 2 AND 4 ranks (issue 10). Each
# case below gives
#   - one message that names the file (printed once) and says what was wrong (a pattern per case),
#   - a non-zero exit, within the 60 s timeout (no rank left hanging),
#   - no result file and no RESULT.h5.tmp left behind,
#   - in a sanitizer build, no AddressSanitizer/LeakSanitizer/UBSan report (error paths free all).
# Cases: TIFF truncated; strip byte count past the end; width 0; height 2^24+1; 2^32-1 squared
# x 16 samples x 64 bit (beyond size_t); 50000^2 RGB16 in a 216-byte file (beyond the file);
# 12-bit samples; tile offset 0 (inside the header); tile offset past the end; tile byte count
# 0; a NaN pixel (found while reading, on one rank only at 2 and 4 ranks); a missing file;
# HDF5: missing dataset, 1-D and 4-D datasets, 0 x 64, compound elements, +Inf in float64; a
# model file whose first convolution's weights do not match its architecture; a configuration
# value out of range, in a --config file and on the command line.
# The three rank counts of one case run side by side (tiny inputs; keeps the wall time low).
# TIFF cases are also checked through `tmdflow info` (plus 24-bit samples), beside a valid file
# made the same way.
# Fixtures: test_io --make-fixtures and test_reliability --make-fixtures (hostile TIFFs built
# byte by byte, HDF5 files, a damaged copy of inputs/models/unet.h5).
# TMD_TEST_TIMEOUT: 600
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.bash" # bin, mpiexec (array), src, fail, h5_same, tmd_*
tmd_workdir badinput-test
"$(tmd_test_bin test_io)" --make-fixtures "$work"
"$(tmd_test_bin test_reliability)" --make-fixtures "$work"
printf '[decomposition]\ntile = 5\n' >"$work/bad_tile.ini"
t0=$(date +%s)

# check DESC FILE PATTERN OUTDIR rc out: the common assertions.
check() {
    local what=$1 file=$2 pattern=$3 outdir=$4 rc=$5 out=$6
    [ "$rc" -ne 124 ] || fail "$what: timed out (a rank hung?)"
    [ "$rc" -ne 0 ] || { echo "$out"; fail "$what: exit 0 on a bad input"; }
    grep -qF "$file" <<<"$out" || { echo "$out"; fail "$what: the message does not name $file"; }
    grep -qF "$pattern" <<<"$out" || { echo "$out"; fail "$what: the message does not say '$pattern'"; }
    [ "$(grep -c 'tmdflow: error' <<<"$out")" = 1 ] || { echo "$out"; fail "$what: error not printed exactly once"; }
    # in a sanitizer build: the error path must not leak or touch bad memory either
    ! grep -qE "ERROR: (Address|Leak)Sanitizer|runtime error:" <<<"$out" || { echo "$out"; fail "$what: sanitizer report"; }
    if [ -n "$outdir" ]; then
        [ -z "$(ls -A "$outdir")" ] || { ls -la "$outdir"; fail "$what: left files behind in the output directory"; }
    fi
}

# name | input spec | extra run arguments | file the message must name | what it must say
good=$work/u16_striped.tif
cases=(
  "truncated|$work/truncated.tif|||truncated"
  "strip past end|$work/bad_bytecount.tif|||promises 60000 bytes"
  "zero width|$work/bad_zero.tif|||unusable size 0 x"
  "absurd height|$work/bad_absurd.tif|||unusable size 1 x 16777217"
  "beyond size_t|$work/bad_overflow.tif|||unusable size 4294967295 x 4294967295"
  "beyond the file|$work/bad_beyond.tif|||but the file holds only"
  "12-bit samples|$work/bad_12bit.tif|||12-bit"
  "tile offset 0|$work/bad_tileoff0.tif|||tile 2 starts at offset 0"
  "tile past end|$work/bad_tileoff_past.tif|||tile 2 promises 512 bytes at offset 1073741824"
  "tile byte count 0|$work/bad_tilecount0.tif|||tile 2 has no data (byte count 0)"
  "NaN pixel|$work/bad_nan.tif|||frame 0, pixel (x=5, y=3) is NaN"
  "missing file|$work/nothere.tif|||nothere.tif"
  "missing dataset|$work/stack.h5:/nothere||$work/stack.h5|dataset /nothere is missing"
  "HDF5 1-D|$work/bad_rank1.h5|||has 1 dimensions"
  "HDF5 4-D|$work/bad_rank4.h5|||has 4 dimensions"
  "HDF5 0 rows|$work/bad_zero.h5|||unusable shape 1 x 0 x 64"
  "HDF5 compound|$work/bad_compound.h5|||compound elements"
  "HDF5 +Inf|$work/bad_inf.h5|||pixel (x=7, y=9) is infinite"
  "model shapes|$good|unet_model=$work/bad_model.h5|$work/bad_model.h5|'w' dimension 0 is 2, expected 16"
  "config file range|$good|--config $work/bad_tile.ini|$work/bad_tile.ini|key 'tile': 5 is out of range"
  "config arg range|$good|tile=5|command line|key 'tile': 5 is out of range"
)

# info: every TIFF case but NaN (and a valid file built like the hostile tiled ones)
"$bin" info "$work/good_tiled.tif" >/dev/null || fail "info good_tiled.tif: the valid tiled fixture is refused"
for c in "${cases[@]}"; do
    IFS='|' read -r name spec args file pattern <<<"$c"
    case "$name" in "NaN pixel") continue ;; esac # only reading the pixels finds it
    case "$spec" in *.tif) ;; *) continue ;; esac
    [ -z "$args" ] || continue # the input is fine, the model or configuration is not
    [ -n "$file" ] || file=${spec%%:/*}
    set +e
    out=$(timeout 60 "$bin" info "$spec" 2>&1)
    rc=$?
    set -e
    check "info $name" "$file" "$pattern" "" $rc "$out"
done
set +e
out=$(timeout 60 "$bin" info "$work/bad_24bit.tif" 2>&1)
rc=$?
set -e
check "info 24-bit samples" "$work/bad_24bit.tif" "24-bit unsigned samples" "" $rc "$out"
echo "ok: info refuses every bad TIFF ($(( $(date +%s) - t0 )) s)"

for c in "${cases[@]}"; do
    IFS='|' read -r name spec args file pattern <<<"$c"
    [ -n "$file" ] || file=${spec%%:/*}
    start=$(date +%s)
    for n in 1 2 4; do
        outdir="$work/out_${n}_${name// /_}"
        mkdir -p "$outdir"
        # --pixel-size so that nothing but the input itself can stop the run
        # shellcheck disable=SC2086  # $args: extra words on purpose
        (set +e; timeout 60 "${mpiexec[@]}" -n $n "$bin" run "$spec" -o "$outdir/result.h5" --pixel-size 0.12 $args \
            >"$outdir.log" 2>&1; echo $? >"$outdir.rc") &
    done
    wait
    for n in 1 2 4; do
        outdir="$work/out_${n}_${name// /_}"
        check "run $name at $n ranks" "$file" "$pattern" "$outdir" "$(cat "$outdir.rc")" "$(cat "$outdir.log")"
    done
    rcs=$(cat "$work/out_1_${name// /_}.rc" "$work/out_2_${name// /_}.rc" "$work/out_4_${name// /_}.rc" | paste -sd/)
    echo "ok: run $name at 1, 2 and 4 ranks: exit $rcs after $(( $(date +%s) - start )) s, nothing left"
done
echo "bad_input.sh: all passed in $(( $(date +%s) - t0 )) s"
