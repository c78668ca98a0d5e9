/* Tests of the field halo exchange and the atom ghost exchange (module halo).
 * TMD_TEST_RANKS: 1 2 3 4
 * Proves: after begin/end every element of a rank's local box (own + halo, corners included)
 * holds the owner's value, for domains of unequal size (grid not dividing the array), for
 * halos wider than a neighbour's domain, for ranks with empty domains, for 3-D (t, y, x)
 * fields with a derived element type, for several process layouts, and with one rank (no
 * neighbours); ghost exchange delivers exactly the atoms of other ranks within the distance
 * of this rank's domain (corners, atoms exactly on domain edges, frames outside the domain
 * excluded), each once, with every column intact. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "tmd/decomp.h"
#include "tmd/halo.h"

static double field_value(int64_t t, int64_t y, int64_t x) { return (double)(t * 1000000 + y * 1000 + x); }

/* Field exchange over the decomposition's rank boxes; nc doubles per element. */
static void check_field(const int64_t dims[3], const int64_t tile[3], const int64_t width[3], const int *pd, int nc)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    tmd_decomp *d = NULL;
    int64_t halo0[3] = {0, 0, 0};
    CU_ASSERT_EQUAL_FATAL(tmd_decomp_create(&ctx, tmd_test_comm, dims, tile, halo0, pd, &d), TMD_OK);
    tmd_box own, loc;
    tmd_decomp_rank_box(d, d->rank, &own);
    MPI_Datatype elem;
    MPI_Type_contiguous(nc, MPI_DOUBLE, &elem);
    MPI_Type_commit(&elem);
    tmd_halo *h = NULL;
    CU_ASSERT_EQUAL_FATAL(tmd_halo_create(&ctx, d->cart, dims, &own, width, elem, &h), TMD_OK);
    MPI_Type_free(&elem); /* the halo object keeps its own copy */
    tmd_halo_local_box(h, &loc);
    int64_t n = tmd_box_volume(&loc);
    double *a = calloc((size_t)(n * nc + 1), sizeof *a);
    int64_t ly = loc.hi[1] - loc.lo[1], lx = loc.hi[2] - loc.lo[2];
    for (int64_t t = loc.lo[0]; t < loc.hi[0]; t++)
        for (int64_t y = loc.lo[1]; y < loc.hi[1]; y++)
            for (int64_t x = loc.lo[2]; x < loc.hi[2]; x++) {
                int64_t i = ((t - loc.lo[0]) * ly + (y - loc.lo[1])) * lx + (x - loc.lo[2]);
                int inside = t >= own.lo[0] && t < own.hi[0] && y >= own.lo[1] && y < own.hi[1] && x >= own.lo[2] &&
                             x < own.hi[2];
                for (int c = 0; c < nc; c++) a[i * nc + c] = inside ? field_value(t, y, x) + 0.25 * c : -1;
            }
    /* twice, to check the object is reusable */
    for (int rep = 0; rep < 2; rep++) {
        CU_ASSERT_EQUAL(tmd_halo_begin(&ctx, h, a), TMD_OK);
        CU_ASSERT_EQUAL(tmd_halo_end(&ctx, h), TMD_OK);
    }
    int64_t bad = 0;
    for (int64_t t = loc.lo[0]; t < loc.hi[0]; t++)
        for (int64_t y = loc.lo[1]; y < loc.hi[1]; y++)
            for (int64_t x = loc.lo[2]; x < loc.hi[2]; x++) {
                int64_t i = ((t - loc.lo[0]) * ly + (y - loc.lo[1])) * lx + (x - loc.lo[2]);
                for (int c = 0; c < nc; c++) bad += a[i * nc + c] != field_value(t, y, x) + 0.25 * c;
            }
    CU_ASSERT_EQUAL(bad, 0);
    /* local box = own grown by width, clipped */
    if (tmd_box_volume(&own))
        for (int ax = 0; ax < 3; ax++) {
            int64_t lo = own.lo[ax] - width[ax], hi = own.hi[ax] + width[ax];
            CU_ASSERT_EQUAL(loc.lo[ax], lo < 0 ? 0 : lo);
            CU_ASSERT_EQUAL(loc.hi[ax], hi > dims[ax] ? dims[ax] : hi);
        }
    if (tmd_test_size == 1) CU_ASSERT_EQUAL(tmd_halo_neighbours(h), 0);
    free(a);
    tmd_halo_destroy(&h);
    CU_ASSERT_PTR_NULL(h);
    tmd_halo_destroy(&h);
    tmd_decomp_destroy(&d);
}

static void test_field_2d(void)
{
    int64_t dims[3] = {1, 37, 53}, tile[3] = {1, 7, 6}, w[3] = {0, 3, 3};
    check_field(dims, tile, w, NULL, 1);
    int row[3] = {1, 1, tmd_test_size}, col[3] = {1, tmd_test_size, 1};
    check_field(dims, tile, w, row, 1);
    check_field(dims, tile, w, col, 1);
}

static void test_field_wide_halo(void)
{
    /* halo (12) wider than a neighbour's domain (7 or 14): values come from ranks beyond */
    int64_t dims[3] = {1, 29, 31}, tile[3] = {1, 7, 7}, w[3] = {0, 12, 12};
    int row[3] = {1, 1, tmd_test_size};
    check_field(dims, tile, w, row, 1);
    check_field(dims, tile, w, NULL, 1);
}

static void test_field_empty_domains(void)
{
    /* a 1-tile array: every rank but one owns nothing */
    int64_t dims[3] = {1, 9, 11}, tile[3] = {1, 64, 64}, w[3] = {0, 2, 2};
    check_field(dims, tile, w, NULL, 1);
}

static void test_field_3d(void)
{
    int64_t dims[3] = {5, 17, 19}, tile[3] = {2, 5, 4}, w[3] = {1, 2, 3};
    check_field(dims, tile, w, NULL, 2);
    int tsplit[3] = {tmd_test_size, 1, 1};
    check_field(dims, tile, w, tsplit, 2);
}

/* ---- ghosts ---- */

static void test_ghosts(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    int64_t dims[3] = {3, 120, 100}, tile[3] = {1, 20, 20}, h0[3] = {0, 0, 0};
    int pd[3] = {1, 0, 0};
    tmd_decomp *d = NULL;
    CU_ASSERT_EQUAL_FATAL(tmd_decomp_create(&ctx, tmd_test_comm, dims, tile, h0, pd, &d), TMD_OK);
    tmd_box own;
    tmd_decomp_rank_box(d, d->rank, &own);
    const double dist = 7.5;
    /* the same global atom set on every rank: random points plus points exactly on tile and
     * rank edges (x or y = k*20 - 0.5) and corners */
    enum { NRAND = 3000 };
    int64_t nall = 0;
    double *gx = malloc(sizeof(double) * (NRAND + 200)), *gy = malloc(sizeof(double) * (NRAND + 200));
    int *gf = malloc(sizeof(int) * (NRAND + 200));
    unsigned seed = 42;
    for (int i = 0; i < NRAND; i++) {
        gf[nall] = (int)(tmd_test_randf(&seed) * 3);
        gy[nall] = tmd_test_randf(&seed) * 120 - 0.5;
        gx[nall] = tmd_test_randf(&seed) * 100 - 0.5;
        nall++;
    }
    for (int k = 0; k <= 5; k++)
        for (int m = 0; m <= 4; m++) {
            gf[nall] = k % 3;
            gy[nall] = k * 20 - 0.5 + (k == 0 ? 0.5 : 0);
            gx[nall] = m * 20 - 0.5 + (m == 0 ? 0.5 : 0);
            nall++;
        }
    tmd_atom_table mine, ghosts;
    tmd_atom_table_init(&mine, 6);
    tmd_atom_table_init(&ghosts, 6);
    for (int64_t i = 0; i < nall; i++) {
        int64_t g = tmd_decomp_tile_of(d, gf[i], gy[i], gx[i]);
        CU_ASSERT_FATAL(g >= 0);
        if (tmd_decomp_tile_owner(d, g) != d->rank) continue;
        int64_t r;
        CU_ASSERT_EQUAL_FATAL(tmd_atom_table_push(&ctx, &mine, &r), TMD_OK);
        mine.frame[r] = gf[i];
        mine.x[r] = gx[i];
        mine.y[r] = gy[i];
        mine.site[r] = i;
        mine.intensity[r] = (float)i * 0.5f;
        mine.species[r] = (int8_t)(i % 8);
        mine.sublattice[r] = (int8_t)(i % 3);
        for (int c = 0; c < 6; c++) mine.prob[r * 6 + c] = (float)(i % 7) + c;
    }
    /* every atom owned exactly once */
    int64_t nmine = mine.n, ntot = 0;
    MPI_Allreduce(&nmine, &ntot, 1, MPI_INT64_T, MPI_SUM, tmd_test_comm);
    CU_ASSERT_EQUAL(ntot, nall);

    tmd_ghost *gh = NULL;
    CU_ASSERT_EQUAL_FATAL(tmd_ghost_create(&ctx, d->cart, &own, dist, &gh), TMD_OK);
    CU_ASSERT_EQUAL_FATAL(tmd_ghost_exchange(&ctx, gh, &mine, &ghosts), TMD_OK);
    tmd_ghost_destroy(&gh);
    CU_ASSERT_PTR_NULL(gh);

    /* expected: every atom not mine, frame in my domain, within dist of my box */
    char *seen = calloc((size_t)nall, 1);
    int64_t expected = 0;
    for (int64_t i = 0; i < nall; i++) {
        int64_t g = tmd_decomp_tile_of(d, gf[i], gy[i], gx[i]);
        if (tmd_decomp_tile_owner(d, g) == d->rank) continue;
        if (gf[i] < own.lo[0] || gf[i] >= own.hi[0] || !tmd_box_volume(&own)) continue;
        if (tmd_box_distance(&own, gy[i], gx[i]) <= dist) expected++;
    }
    CU_ASSERT_EQUAL(ghosts.n, expected);
    for (int64_t k = 0; k < ghosts.n; k++) {
        int64_t i = ghosts.site[k];
        CU_ASSERT_FATAL(i >= 0 && i < nall);
        CU_ASSERT_FALSE(seen[i]);
        seen[i] = 1;
        CU_ASSERT_EQUAL(ghosts.x[k], gx[i]);
        CU_ASSERT_EQUAL(ghosts.y[k], gy[i]);
        CU_ASSERT_EQUAL(ghosts.frame[k], gf[i]);
        CU_ASSERT_EQUAL(ghosts.intensity[k], (float)i * 0.5f);
        CU_ASSERT_EQUAL(ghosts.species[k], i % 8);
        CU_ASSERT_EQUAL(ghosts.sublattice[k], i % 3);
        CU_ASSERT_EQUAL(ghosts.prob[k * 6 + 5], (float)(i % 7) + 5);
        CU_ASSERT(tmd_box_distance(&own, gy[i], gx[i]) <= dist);
    }
    if (tmd_test_size == 1) CU_ASSERT_EQUAL(ghosts.n, 0);
    free(seen);
    free(gx);
    free(gy);
    free(gf);
    tmd_atom_table_free(&mine);
    tmd_atom_table_free(&ghosts);
    tmd_decomp_destroy(&d);
}

static void test_box_distance(void)
{
    tmd_box b = {{0, 10, 20}, {1, 20, 30}};
    CU_ASSERT_DOUBLE_EQUAL(tmd_box_distance(&b, 15, 25), 0, 1e-12);
    CU_ASSERT_DOUBLE_EQUAL(tmd_box_distance(&b, 9.5, 25), 0, 1e-12);   /* on the lower edge: inside */
    CU_ASSERT_DOUBLE_EQUAL(tmd_box_distance(&b, 19.5, 25), 0, 1e-12);  /* upper edge is outside, by 0 */
    CU_ASSERT_DOUBLE_EQUAL(tmd_box_distance(&b, 6.5, 25), 3, 1e-12);
    CU_ASSERT_DOUBLE_EQUAL(tmd_box_distance(&b, 6.5, 15.5), 5, 1e-12); /* corner: 3-4-5 */
}

int main(int argc, char **argv)
{
    return tmd_test_main(argc, argv, "halo",
                         (tmd_test_case[]){{"2-D field, unequal domains, several layouts", test_field_2d},
                                           {"halo wider than a neighbour's domain", test_field_wide_halo},
                                           {"ranks with empty domains", test_field_empty_domains},
                                           {"3-D field, derived element type", test_field_3d},
                                           {"box distance", test_box_distance},
                                           {"atom ghosts incl. corners and edges", test_ghosts},
                                           {0}});
}
