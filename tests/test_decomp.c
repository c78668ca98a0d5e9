/* Tests of the global tile grid (module decomp).
 * TMD_TEST_RANKS: 1 2 3 4
 * Proves: the tile grid depends only on image, tile and halo (never the rank count); every
 * tile has exactly one owner and lies in that owner's block; rank domains are disjoint boxes
 * that cover the image; blocks are balanced (sizes differ by at most one tile per axis);
 * grids that do not divide the image give a smaller last tile; halos are clipped to the
 * image; forced process layouts (1 x P, P x 1, time-split stacks) work; a point on a tile
 * edge belongs to exactly one tile. */
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "tmd/decomp.h"

static void check_layout(const int64_t dims[3], const int64_t tile[3], const int64_t halo[3], const int *pd)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    tmd_decomp *d = NULL;
    tmd_status st = tmd_decomp_create(&ctx, tmd_test_comm, dims, tile, halo, pd, &d);
    CU_ASSERT_EQUAL_FATAL(st, TMD_OK);
    CU_ASSERT_EQUAL(d->pdims[0] * d->pdims[1] * d->pdims[2], tmd_test_size);
    if (pd)
        for (int a = 0; a < 3; a++)
            if (pd[a]) CU_ASSERT_EQUAL(d->pdims[a], pd[a]);
    /* grid from configuration only */
    for (int a = 0; a < 3; a++) {
        int64_t te = tile[a] < dims[a] ? tile[a] : dims[a];
        CU_ASSERT_EQUAL(d->ntiles[a], (dims[a] + te - 1) / te);
    }
    /* every tile: one owner, inside its block, boxes clipped, cores tile the image exactly */
    int64_t covered = 0;
    int64_t *count = calloc((size_t)tmd_test_size, sizeof *count);
    for (int64_t g = 0; g < d->ntiles_total; g++) {
        tmd_box core, grown;
        tmd_decomp_tile_box(d, g, &core, &grown);
        covered += tmd_box_volume(&core);
        for (int a = 0; a < 3; a++) {
            CU_ASSERT(core.lo[a] >= 0 && core.hi[a] <= dims[a] && core.lo[a] < core.hi[a]);
            CU_ASSERT(grown.lo[a] >= 0 && grown.hi[a] <= dims[a]);
            CU_ASSERT(grown.lo[a] == (core.lo[a] - halo[a] > 0 ? core.lo[a] - halo[a] : 0));
            CU_ASSERT(grown.hi[a] == (core.hi[a] + halo[a] < dims[a] ? core.hi[a] + halo[a] : dims[a]));
        }
        int r = tmd_decomp_tile_owner(d, g);
        CU_ASSERT_FATAL(r >= 0 && r < tmd_test_size);
        count[r]++;
        tmd_box rb;
        tmd_decomp_rank_box(d, r, &rb);
        tmd_box in;
        tmd_box_intersect(&rb, &core, &in);
        CU_ASSERT_EQUAL(tmd_box_volume(&in), tmd_box_volume(&core));
        /* the tile of its own corner points */
        CU_ASSERT_EQUAL(tmd_decomp_tile_of(d, core.lo[0], (double)core.lo[1] - 0.5, (double)core.lo[2] - 0.5), g);
        CU_ASSERT_EQUAL(tmd_decomp_tile_of(d, core.hi[0] - 1, (double)core.hi[1] - 0.5000001,
                                           (double)core.hi[2] - 0.5000001), g);
    }
    CU_ASSERT_EQUAL(covered, dims[0] * dims[1] * dims[2]);
    /* local tile list agrees with the owner function, and with nlocal */
    CU_ASSERT_EQUAL(count[d->rank], d->nlocal);
    for (int64_t i = 0; i < d->nlocal; i++) CU_ASSERT_EQUAL(tmd_decomp_tile_owner(d, tmd_decomp_local_tile(d, i)), d->rank);
    /* rank boxes are disjoint and cover the image; blocks balanced */
    int64_t vol = 0, maxn = 0;
    for (int r = 0; r < tmd_test_size; r++) {
        tmd_box a;
        tmd_decomp_rank_box(d, r, &a);
        vol += tmd_box_volume(&a);
        for (int s = r + 1; s < tmd_test_size; s++) {
            tmd_box b;
            tmd_decomp_rank_box(d, s, &b);
            CU_ASSERT_FALSE(tmd_box_intersect(&a, &b, NULL));
        }
        int64_t lo[3], hi[3];
        tmd_decomp_rank_tiles(d, r, lo, hi);
        int64_t n = 1;
        for (int ax = 0; ax < 3; ax++) {
            int64_t len = hi[ax] - lo[ax];
            CU_ASSERT(len >= d->ntiles[ax] / d->pdims[ax] && len <= (d->ntiles[ax] + d->pdims[ax] - 1) / d->pdims[ax]);
            n *= len;
        }
        CU_ASSERT_EQUAL(n, count[r]);
        if (n > maxn) maxn = n;
    }
    CU_ASSERT_EQUAL(vol, dims[0] * dims[1] * dims[2]);
    CU_ASSERT_EQUAL(maxn, d->max_local);
    /* the Cartesian communicator matches the coordinates */
    int cr;
    MPI_Comm_rank(d->cart, &cr);
    CU_ASSERT_EQUAL(cr, tmd_test_rank);
    free(count);
    tmd_decomp_destroy(&d);
    CU_ASSERT_PTR_NULL(d);
    tmd_decomp_destroy(&d); /* NULL accepted */
}

static void test_tile_edge(void)
{
    CU_ASSERT_EQUAL(tmd_decomp_tile_edge(384, 0.12, 0.12), 384);
    CU_ASSERT_EQUAL(tmd_decomp_tile_edge(384, 0.12, 0.06), 768);
    CU_ASSERT_EQUAL(tmd_decomp_tile_edge(384, 0.12, 0.18), 256);
    CU_ASSERT_EQUAL(tmd_decomp_tile_edge(100, 0.12, 0.09), 133);
    CU_ASSERT_EQUAL(tmd_decomp_halo_edge(48, 0.12, 0.12), 48);
    CU_ASSERT_EQUAL(tmd_decomp_halo_edge(48, 0.12, 0.09), 64);
    CU_ASSERT_EQUAL(tmd_decomp_halo_edge(48, 0.12, 0.10), 58);
}

static void test_mosaic_auto(void)
{
    int64_t dims[3] = {1, 1000, 1300}, tile[3] = {1, 256, 256}, halo[3] = {0, 40, 40};
    check_layout(dims, tile, halo, NULL);
}

static void test_not_dividing_and_tiny(void)
{
    int64_t dims[3] = {1, 257, 255}, tile[3] = {1, 128, 128}, halo[3] = {0, 200, 3};
    check_layout(dims, tile, halo, NULL);
    int64_t d2[3] = {1, 50, 60}, t2[3] = {1, 384, 384}, h2[3] = {0, 8, 8}; /* one tile, maybe fewer tiles than ranks */
    check_layout(d2, t2, h2, NULL);
}

static void test_forced_layouts(void)
{
    int64_t dims[3] = {1, 700, 900}, tile[3] = {1, 100, 100}, halo[3] = {0, 10, 10};
    int row[3] = {1, 1, tmd_test_size}, col[3] = {1, tmd_test_size, 1};
    check_layout(dims, tile, halo, row);
    check_layout(dims, tile, halo, col);
    if (tmd_test_size == 4) {
        int sq[3] = {1, 2, 2};
        check_layout(dims, tile, halo, sq);
    }
}

static void test_stack(void)
{
    int64_t dims[3] = {10, 300, 200}, tile[3] = {3, 128, 128}, halo[3] = {0, 16, 16};
    check_layout(dims, tile, halo, NULL);
    int tsplit[3] = {tmd_test_size, 1, 1};
    check_layout(dims, tile, halo, tsplit);
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    tmd_decomp *d = NULL;
    CU_ASSERT_EQUAL_FATAL(tmd_decomp_create(&ctx, tmd_test_comm, dims, tile, halo, NULL, &d), TMD_OK);
    CU_ASSERT_EQUAL(d->cart_ndims, 3);
    CU_ASSERT_EQUAL(d->ntiles[0], 4);
    tmd_decomp_destroy(&d);
}

static void test_bad_args(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    tmd_decomp *d = NULL;
    int64_t dims[3] = {1, 0, 100}, tile[3] = {1, 64, 64}, halo[3] = {0, 8, 8};
    CU_ASSERT_EQUAL(tmd_decomp_create(&ctx, tmd_test_comm, dims, tile, halo, NULL, &d), TMD_ERR_ARG);
    CU_ASSERT_PTR_NULL(d);
    CU_ASSERT_PTR_NOT_NULL(strstr(ctx.err_msg, "image extent 0"));
    tmd_error_clear(&ctx);
    int64_t dims2[3] = {1, 100, 100};
    int bad[3] = {1, tmd_test_size + 1, 1};
    CU_ASSERT_EQUAL(tmd_decomp_create(&ctx, tmd_test_comm, dims2, tile, halo, bad, &d), TMD_ERR_ARG);
    CU_ASSERT_PTR_NULL(d);
}

int main(int argc, char **argv)
{
    return tmd_test_main(argc, argv, "decomp",
                         (tmd_test_case[]){{"tile edge in input pixels", test_tile_edge},
                                           {"mosaic, automatic process grid", test_mosaic_auto},
                                           {"grid not dividing the image; fewer tiles than ranks", test_not_dividing_and_tiny},
                                           {"forced layouts 1xP, Px1, 2x2", test_forced_layouts},
                                           {"stacks split in time", test_stack},
                                           {"bad arguments refused on every rank", test_bad_args},
                                           {0}});
}
