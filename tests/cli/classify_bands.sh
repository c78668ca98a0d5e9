#!/usr/bin/env bash
# Proves the streamed (banded) classification of mosaics (classify_band_tiles, src/classify/
# stage_classify.c) gives the result of the classification of all atoms at once:
#   - a 768^2 image on a 6 x 6 grid of 128-px tiles, classified in chunks of 1 x 1 and 2 x 2
#     tiles at 1, 2 and 4 ranks, has /atoms and /defects bitwise identical (h5_same, no
#     tolerance) to classify_band_tiles=0 on 1 rank (every atom kept in memory, one graph):
#     same rows in the same order, so an atom near a chunk or rank edge is classified once,
#     with the same species, sublattice, probabilities, and no vacancy is lost or doubled;
#   - the image is not trivial: over a thousand atoms and dozens of vacancies, and the streamed
#     runs really worked in chunks (the log's chunk count);
#   - the image is a metal alloy (Mo0.6W0.4) on which the cross-talk correction runs (a negative
#     slope, a second classification: the log says so in every run), so its slope, the corrected
#     contrast and the second fit are the same unbanded and streamed, at every rank count;
#   - a low-dose image where the held-neighbour gate holds gives the same too (see below).
# TMD_TEST_TIMEOUT: 400
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.bash" # bin, mpiexec (array), src, fail, h5_same, tmd_*
tmd_need_tools h5diff
tmd_workdir bands-test

TMDFLOW_LOG=quiet "$bin" simulate -o "$work/s.tif" --size 768 --seed 4243 --pixel-size 0.12 --u16 > /dev/null
run() { # name ranks band
    TMDFLOW_LOG=info "${mpiexec[@]}" -n "$2" "$bin" run "$work/s.tif" -o "$work/$1.h5" --pixel-size 0.12 tile=128 \
        classify_band_tiles="$3" 2> "$work/$1.log" > /dev/null || { cat "$work/$1.log"; fail "run $1"; }
}
run ref 1 0
n=$("$bin" info "$work/ref.h5" | awk '$1 == "/atoms/x" {gsub(",", "", $3); print $3}')
nd=$("$bin" info "$work/ref.h5" | awk '$1 == "/defects/x" {gsub(",", "", $3); print $3}')
echo "reference: ${n:-0} atoms, ${nd:-0} vacancies"
[ "${n:-0}" -gt 1000 ] || fail "only ${n:-0} atoms"
[ "${nd:-0}" -ge 15 ] || fail "only ${nd:-0} vacancies"
xt() { grep -q "cross-talk slope -.*classified again" "$work/$1.log" || fail "$1: the cross-talk correction did not run"; }
xt ref
for cfg in "1 1" "2 1" "4 1" "2 2"; do
    set -- $cfg
    name="r$1b$2"
    run "$name" "$1" "$2"
    chunks=$(sed -n 's/.*classify: streamed over \([0-9]*\) chunks.*/\1/p' "$work/$name.log" | head -1)
    [ "${chunks:-0}" -ge 2 ] || fail "$name: not streamed in chunks (${chunks:-none})"
    xt "$name"
    for g in /atoms /defects; do
        h5_same "$work/ref.h5" "$work/$name.h5" "$g" || fail "$name: $g differs from the unbanded run"
    done
done
echo "ok: $n atoms, $nd vacancies identical unbanded and in chunks of 1 and 2 tiles at 1, 2, 4 ranks"

# The held-neighbour contrast (tmd_classify_opts.held_gate): a low-dose, clean image whose gate
# holds (the log says so), so the streamed gate sweep (hp1 side files, medians summed over
# ranks), the held refit of the chunks' atoms and of the vacancy sites are exercised; /atoms and
# /defects must be the in-memory run's, dataset by dataset (h5dump text: h5diff on a group
# does not fail on datasets of different lengths).
TMDFLOW_LOG=quiet "$bin" simulate -o "$work/h.tif" --size 512 --seed 4244 --pixel-size 0.12 --dose 25 --u16 \
    contamination=0 > /dev/null
same() { # a.h5 b.h5
    for dset in /atoms/x /atoms/y /atoms/species /atoms/sublattice /atoms/prob /defects/x /defects/y /defects/type; do
        cmp -s <(h5dump -d "$dset" -y -w 0 "$1" 2>&1 | sed -n '/DATA {/,/}/p') \
            <(h5dump -d "$dset" -y -w 0 "$2" 2>&1 | sed -n '/DATA {/,/}/p') || { echo "$dset differs"; return 1; }
    done
}
runh() { # name ranks band
    TMDFLOW_LOG=info "${mpiexec[@]}" -n "$2" "$bin" run "$work/h.tif" -o "$work/$1.h5" --pixel-size 0.12 tile=128 \
        classify_band_tiles="$3" 2> "$work/$1.log" > /dev/null || { cat "$work/$1.log"; fail "run $1"; }
    grep -q "neighbour places held in 1 of 1 frames" "$work/$1.log" || { grep "held in" "$work/$1.log"; fail "$1: the gate did not hold"; }
}
runh href 1 0
hn=$("$bin" info "$work/href.h5" | awk '$1 == "/atoms/x" {gsub(",", "", $3); print $3}')
[ "${hn:-0}" -gt 500 ] || fail "held image: only ${hn:-0} atoms"
for cfg in "1 1" "2 1" "4 2"; do
    set -- $cfg
    runh "h$1b$2" "$1" "$2"
    same "$work/href.h5" "$work/h$1b$2.h5" || fail "held image, $1 ranks, chunks of $2: differs from the unbanded run"
done
echo "ok: held-neighbour contrast ($hn atoms) identical unbanded and in chunks of 1 and 2 tiles at 1, 2, 4 ranks"
