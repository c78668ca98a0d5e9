/* The global tile grid and its block assignment to ranks (see tmd/decomp.h). */
#include "tmd/decomp.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int64_t tmd_box_volume(const tmd_box *b)
{
    int64_t v = 1;
    for (int a = 0; a < 3; a++) {
        if (b->hi[a] <= b->lo[a]) return 0;
        v *= b->hi[a] - b->lo[a];
    }
    return v;
}

int tmd_box_intersect(const tmd_box *a, const tmd_box *b, tmd_box *out)
{
    tmd_box r;
    for (int k = 0; k < 3; k++) {
        r.lo[k] = a->lo[k] > b->lo[k] ? a->lo[k] : b->lo[k];
        r.hi[k] = a->hi[k] < b->hi[k] ? a->hi[k] : b->hi[k];
    }
    if (out) *out = r;
    return tmd_box_volume(&r) > 0;
}

int64_t tmd_decomp_tile_edge(int64_t tile, double nominal_px, double input_px)
{
    double e = floor((double)tile * nominal_px / input_px + 0.5);
    return e < 1 ? 1 : (int64_t)e;
}

int64_t tmd_decomp_halo_edge(int64_t halo, double nominal_px, double input_px)
{
    /* a tiny tolerance so that an exact ratio does not round up through float error */
    double e = ceil((double)halo * nominal_px / input_px - 1e-9);
    return e < 0 ? 0 : (int64_t)e;
}

/* Block c of P over n items: [c*n/P, (c+1)*n/P). */
static int64_t block_lo(int64_t n, int P, int c) { return (int64_t)c * n / P; }

/* The block holding item i (the non-empty block c with block_lo(c) <= i < block_lo(c+1)). */
static int block_of(int64_t n, int P, int64_t i) { return (int)(((i + 1) * (int64_t)P - 1) / n); }

tmd_status tmd_decomp_create(tmd_ctx *ctx, MPI_Comm comm, const int64_t dims[3], const int64_t tile[3],
                             const int64_t halo[3], const int *pdims_req, tmd_decomp **out)
{
    *out = NULL;
    tmd_status st = TMD_OK;
    tmd_decomp *d = NULL;
    for (int a = 0; a < 3; a++) {
        if (dims[a] < 1 || tile[a] < 1 || halo[a] < 0)
            st = TMD_FAIL(ctx, TMD_ERR_ARG,
                          "decomposition: axis %d: image extent %lld, tile %lld, halo %lld (expected >= 1, >= 1, >= 0)", a,
                          (long long)dims[a], (long long)tile[a], (long long)halo[a]);
    }
    if (!st) st = tmd_calloc(ctx, (void **)&d, 1, sizeof *d, "decomposition");
    /* Arguments are the same on every rank, so a failure here is everyone's: no agree needed,
     * but agreeing keeps the rule simple and costs one allreduce. */
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;

    d->cart = MPI_COMM_NULL;
    d->ntiles_total = 1;
    for (int a = 0; a < 3; a++) {
        d->dims[a] = dims[a];
        d->tile[a] = tile[a] < dims[a] ? tile[a] : dims[a];
        d->halo[a] = halo[a];
        d->ntiles[a] = (dims[a] + d->tile[a] - 1) / d->tile[a];
        d->ntiles_total *= d->ntiles[a];
    }
    int nranks;
    MPI_Comm_size(comm, &nranks);
    d->nranks = nranks;

    /* Process grid: a stack (more than one tile along time) is split in 3-D, a mosaic in
     * 2-D. Axes with one tile are never split; MPI_Dims_create fills the rest. */
    int pd[3] = {0, 0, 0};
    if (pdims_req) memcpy(pd, pdims_req, sizeof pd);
    int autofixed[3] = {0, 0, 0}, anyfree = 0;
    for (int a = 0; a < 3; a++)
        if (d->ntiles[a] == 1 && pd[a] == 0) pd[a] = 1, autofixed[a] = 1;
    for (int a = 0; a < 3; a++) anyfree |= pd[a] == 0;
    /* a single tile in all free axes: ranks beyond the tile count simply own nothing; keep
     * one axis free (x, then y) so that the grid still spans every rank */
    if (!anyfree) {
        if (autofixed[2]) pd[2] = 0;
        else if (autofixed[1]) pd[1] = 0;
    }
    int fixed = 1, nfree = 0;
    for (int a = 0; a < 3; a++) {
        if (pd[a] < 0) {
            st = TMD_FAIL(ctx, TMD_ERR_ARG, "decomposition: process grid axis %d is %d (expected >= 0)", a, pd[a]);
            goto cleanup;
        }
        if (pd[a]) fixed *= pd[a];
        else nfree++;
    }
    if (nranks % fixed != 0 || (nfree == 0 && fixed != nranks)) {
        st = TMD_FAIL(ctx, TMD_ERR_ARG, "decomposition: process grid %d x %d x %d does not fit %d ranks", pd[0], pd[1],
                      pd[2], nranks);
        goto cleanup;
    }
    if (nfree) {
        /* MPI_Dims_create gives a non-increasing sequence over the free axes: give the larger
         * factor to the axis with more tiles. */
        int free_axes[3], nf = 0;
        for (int a = 0; a < 3; a++)
            if (!pd[a]) free_axes[nf++] = a;
        int sub[3] = {0, 0, 0};
        TMD_MPI(ctx, MPI_Dims_create(nranks / fixed, nf, sub));
        /* order free axes by tile count, descending (stable) */
        for (int i = 0; i < nf; i++)
            for (int j = i + 1; j < nf; j++)
                if (d->ntiles[free_axes[j]] > d->ntiles[free_axes[i]]) {
                    int t = free_axes[i];
                    free_axes[i] = free_axes[j];
                    free_axes[j] = t;
                }
        for (int i = 0; i < nf; i++) pd[free_axes[i]] = sub[i];
    }
    memcpy(d->pdims, pd, sizeof pd);
    d->cart_ndims = (d->ntiles[0] > 1 || pd[0] > 1) ? 3 : 2;

    int periods[3] = {0, 0, 0};
    if (d->cart_ndims == 3) {
        st = TMD_MPI(ctx, MPI_Cart_create(comm, 3, pd, periods, 0, &d->cart));
    } else {
        st = TMD_MPI(ctx, MPI_Cart_create(comm, 2, pd + 1, periods, 0, &d->cart));
    }
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    MPI_Comm_rank(d->cart, &d->rank);
    int c[3] = {0, 0, 0};
    if (d->cart_ndims == 3) MPI_Cart_coords(d->cart, d->rank, 3, c);
    else MPI_Cart_coords(d->cart, d->rank, 2, c + 1);
    memcpy(d->coords, c, sizeof c);
    tmd_decomp_rank_tiles(d, d->rank, d->tlo, d->thi);
    d->nlocal = 1;
    for (int a = 0; a < 3; a++) d->nlocal *= d->thi[a] - d->tlo[a];
    /* the largest block: block sizes along an axis are floor or ceil of n/P */
    d->max_local = 1;
    for (int a = 0; a < 3; a++) d->max_local *= (d->ntiles[a] + d->pdims[a] - 1) / d->pdims[a];

    *out = d;
    d = NULL;
cleanup:
    tmd_decomp_destroy(&d);
    return st;
}

void tmd_decomp_destroy(tmd_decomp **d)
{
    if (!d || !*d) return;
    if ((*d)->cart != MPI_COMM_NULL && (*d)->cart != 0) MPI_Comm_free(&(*d)->cart);
    free(*d);
    *d = NULL;
}

int64_t tmd_decomp_tile_index(const tmd_decomp *d, const int64_t tc[3])
{
    return (tc[0] * d->ntiles[1] + tc[1]) * d->ntiles[2] + tc[2];
}

void tmd_decomp_tile_coords(const tmd_decomp *d, int64_t g, int64_t tc[3])
{
    tc[2] = g % d->ntiles[2];
    g /= d->ntiles[2];
    tc[1] = g % d->ntiles[1];
    tc[0] = g / d->ntiles[1];
}

int64_t tmd_decomp_local_tile(const tmd_decomp *d, int64_t i)
{
    int64_t n1 = d->thi[1] - d->tlo[1], n2 = d->thi[2] - d->tlo[2];
    int64_t tc[3];
    tc[2] = d->tlo[2] + i % n2;
    i /= n2;
    tc[1] = d->tlo[1] + i % n1;
    tc[0] = d->tlo[0] + i / n1;
    return tmd_decomp_tile_index(d, tc);
}

void tmd_decomp_tile_box(const tmd_decomp *d, int64_t g, tmd_box *core, tmd_box *grown)
{
    int64_t tc[3];
    tmd_decomp_tile_coords(d, g, tc);
    for (int a = 0; a < 3; a++) {
        int64_t lo = tc[a] * d->tile[a];
        int64_t hi = lo + d->tile[a];
        if (hi > d->dims[a]) hi = d->dims[a];
        if (core) {
            core->lo[a] = lo;
            core->hi[a] = hi;
        }
        if (grown) {
            int64_t glo = lo - d->halo[a], ghi = hi + d->halo[a];
            grown->lo[a] = glo < 0 ? 0 : glo;
            grown->hi[a] = ghi > d->dims[a] ? d->dims[a] : ghi;
        }
    }
}

int tmd_decomp_tile_owner(const tmd_decomp *d, int64_t g)
{
    int64_t tc[3];
    tmd_decomp_tile_coords(d, g, tc);
    int c[3];
    for (int a = 0; a < 3; a++) c[a] = block_of(d->ntiles[a], d->pdims[a], tc[a]);
    /* MPI_Cart_rank with reorder off is row-major over the process grid */
    return (c[0] * d->pdims[1] + c[1]) * d->pdims[2] + c[2];
}

void tmd_decomp_rank_tiles(const tmd_decomp *d, int r, int64_t tlo[3], int64_t thi[3])
{
    int c[3];
    c[2] = r % d->pdims[2];
    c[1] = (r / d->pdims[2]) % d->pdims[1];
    c[0] = r / (d->pdims[2] * d->pdims[1]);
    for (int a = 0; a < 3; a++) {
        tlo[a] = block_lo(d->ntiles[a], d->pdims[a], c[a]);
        thi[a] = block_lo(d->ntiles[a], d->pdims[a], c[a] + 1);
    }
}

void tmd_decomp_rank_box(const tmd_decomp *d, int r, tmd_box *box)
{
    int64_t tlo[3], thi[3];
    tmd_decomp_rank_tiles(d, r, tlo, thi);
    for (int a = 0; a < 3; a++) {
        box->lo[a] = tlo[a] * d->tile[a];
        box->hi[a] = thi[a] * d->tile[a];
        if (box->hi[a] > d->dims[a]) box->hi[a] = d->dims[a];
        if (box->lo[a] > box->hi[a]) box->lo[a] = box->hi[a];
    }
}

int64_t tmd_decomp_tile_of(const tmd_decomp *d, int64_t t, double y, double x)
{
    int64_t p[3] = {t, tmd_decomp_pixel_of(y), tmd_decomp_pixel_of(x)};
    int64_t tc[3];
    for (int a = 0; a < 3; a++) {
        if (p[a] < 0 || p[a] >= d->dims[a]) return -1;
        tc[a] = p[a] / d->tile[a];
    }
    return tmd_decomp_tile_index(d, tc);
}
