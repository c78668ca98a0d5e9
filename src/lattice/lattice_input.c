/* Lattice of every frame of an input, measured on tiles spread over the ranks (tmd/lattice.h). */
#include "tmd/io.h"
#include "tmd/lattice.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    double frame, tile, valid, a1x, a1y, a2x, a2y, strength;
} item_t;

tmd_status tmd_lattice_measure_input(tmd_ctx *ctx, MPI_Comm comm, struct tmd_reader *reader, int tile, int max_tiles,
                                     const tmd_lattice_opts *opts, tmd_lattice *out)
{
    const tmd_image_info *info = tmd_reader_info(reader);
    int rank, nranks;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &nranks);
    int64_t T = info->frames, H = info->height, W = info->width;
    int64_t th = tile < H ? tile : H, tw = tile < W ? tile : W;
    if (max_tiles < 1) max_tiles = 1;
    /* tiles per frame: a k x k block around the centre, k^2 <= max_tiles, inside the frame */
    int k = (int)floor(sqrt((double)max_tiles));
    while (k > 1 && ((int64_t)k * th > H || (int64_t)k * tw > W)) k--;
    int per = k * k;
    int64_t nitems = T * per;
    tmd_lattice_plan *plan = NULL;
    float *buf = NULL;
    item_t *mine = NULL, *all = NULL;
    int *counts = NULL, *displs = NULL;
    tmd_lattice *tl = NULL;
    tmd_status st = TMD_OK;
    if (th < 32 || tw < 32)
        st = TMD_FAIL(ctx, TMD_ERR_NOLATTICE, "%s: frames of %lld x %lld px are too small to measure a lattice",
                      "input", (long long)W, (long long)H);
    int64_t nmine = 0;
    for (int64_t i = rank; i < nitems; i += nranks) nmine++;
    if (!st) st = tmd_lattice_plan_create(ctx, (int)th, (int)tw, opts, &plan);
    if (!st) st = tmd_calloc(ctx, (void **)&buf, (size_t)(th * tw), sizeof(float), "lattice tile");
    if (!st) st = tmd_calloc(ctx, (void **)&mine, (size_t)(nmine + 1), sizeof(item_t), "lattice items");
    if (!st) st = tmd_calloc(ctx, (void **)&counts, (size_t)nranks, sizeof(int), "lattice items");
    if (!st) st = tmd_calloc(ctx, (void **)&displs, (size_t)nranks, sizeof(int), "lattice items");
    if (!st) st = tmd_calloc(ctx, (void **)&all, (size_t)(nitems + 1), sizeof(item_t), "lattice items");
    if (!st) st = tmd_calloc(ctx, (void **)&tl, (size_t)(per + 1), sizeof(tmd_lattice), "lattice items");
    int64_t m = 0;
    for (int64_t i = rank; i < nitems && !st; i += nranks) {
        int64_t f = i / per, t = i % per;
        int64_t y0 = (H - k * th) / 2 + (t / k) * th, x0 = (W - k * tw) / 2 + (t % k) * tw;
        st = tmd_reader_read(ctx, reader, f, y0, x0, th, tw, buf);
        if (st) break;
        tmd_lattice lat;
        tmd_status ms = tmd_lattice_measure(ctx, plan, buf, tw, &lat);
        if (ms == TMD_ERR_NOLATTICE) {
            tmd_debug(ctx, "lattice: frame %lld tile %lld: %s", (long long)f, (long long)t, ctx->err_msg);
            tmd_error_clear(ctx);
            memset(&lat, 0, sizeof lat);
        } else if (ms) {
            st = ms;
            break;
        }
        item_t *q = &mine[m++];
        q->frame = (double)f;
        q->tile = (double)t;
        q->valid = lat.valid;
        q->a1x = lat.a1[0];
        q->a1y = lat.a1[1];
        q->a2x = lat.a2[0];
        q->a2y = lat.a2[1];
        q->strength = lat.strength;
        if (tmd_interrupted(ctx)) {
            st = TMD_FAIL(ctx, TMD_ERR_INTERRUPTED, "lattice: interrupted");
            break;
        }
    }
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    int cnt = (int)(m * 8);
    st = TMD_MPI(ctx, MPI_Allgather(&cnt, 1, MPI_INT, counts, 1, MPI_INT, comm));
    if (st) goto cleanup;
    for (int r = 0, off = 0; r < nranks; r++) {
        displs[r] = off;
        off += counts[r];
    }
    st = TMD_MPI(ctx, MPI_Allgatherv(mine, cnt, MPI_DOUBLE, all, counts, displs, MPI_DOUBLE, comm));
    if (st) goto cleanup;
    /* item i sits at a known place: rank i % nranks, position i / nranks */
    int64_t nvalid_frames = 0;
    for (int64_t f = 0; f < T; f++) {
        for (int t = 0; t < per; t++) {
            int64_t i = f * per + t;
            const item_t *q = &all[displs[i % nranks] / 8 + i / nranks];
            memset(&tl[t], 0, sizeof tl[t]);
            if (q->valid > 0.5) {
                double g1[2], g2[2], a1[2] = {q->a1x, q->a1y}, a2[2] = {q->a2x, q->a2y};
                double det = a1[0] * a2[1] - a1[1] * a2[0];
                g1[0] = a2[1] / det;
                g1[1] = -a2[0] / det;
                g2[0] = -a1[1] / det;
                g2[1] = a1[0] / det;
                tmd_lattice_from_reciprocal(&tl[t], g1, g2);
                tl[t].strength = q->strength;
            }
        }
        tmd_status cs = tmd_lattice_combine(ctx, per, tl, &out[f]);
        if (cs == TMD_ERR_NOLATTICE) {
            tmd_error_clear(ctx);
            memset(&out[f], 0, sizeof out[f]);
        } else if (cs) {
            st = cs;
            goto cleanup;
        } else nvalid_frames++;
    }
    if (nvalid_frames == 0) {
        st = TMD_FAIL(ctx, TMD_ERR_NOLATTICE,
                      "no hexagonal lattice found in the input (%lld frame(s), %d tile(s) of %lld x %lld px each "
                      "around the centre): vacuum, amorphous material, or a lattice period outside %.0f-%.0f px; "
                      "give --pixel-size to skip the measurement",
                      (long long)T, per, (long long)tw, (long long)th, opts ? opts->min_period_px : 6.0,
                      opts ? opts->max_period_px : 80.0);
        goto cleanup;
    }
    if (nvalid_frames < T) {
        int64_t nbad = T - nvalid_frames;
        for (int64_t f = 0; f < T; f++) {
            if (out[f].valid) continue;
            for (int64_t d = 1; d < T; d++) {
                if (f - d >= 0 && out[f - d].valid) {
                    out[f] = out[f - d];
                    break;
                }
                if (f + d < T && out[f + d].valid) {
                    out[f] = out[f + d];
                    break;
                }
            }
            out[f].n_peaks = 0; /* borrowed */
        }
        tmd_info(ctx, "lattice: %lld of %lld frames show no lattice; they use their nearest frame's", (long long)nbad,
                 (long long)T);
    }
cleanup:
    tmd_lattice_plan_destroy(&plan);
    free(buf);
    free(mine);
    free(all);
    free(counts);
    free(displs);
    free(tl);
    return st;
}
