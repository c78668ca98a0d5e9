/* test_density — the density maps are decomposed by rank (tmd_dynamics_maps, src/dynamics/density.c).
 *
 * Proves: (1) the row blocks of the coarse maps gathered from 1, 2 or 4 ranks equal the map of
 * one rank bit for bit (seamless across rank edges and across the 32-row bands each rank sums
 * in turn), for vacancy maps of a single image and unstable-site maps of a stack; (2) regions
 * found by the streaming row-by-row labelling are the same on any number of ranks, including a
 * U-shaped region whose two arms meet only in a later band / on a later rank (one region, not
 * two) and a second region that starts later but is ordered by its first bin; (3) no rank holds
 * the whole map: each rank's map block is its share of rows, and the int64 work buffer it
 * reports (work_bytes) is the same for an image 4x taller (it is set by the band and the
 * width, not by the image height).
 */
/* TMD_TEST_RANKS: 1 2 4 */
#include "testutil.h"

#include "tmd/dynamics.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Rows of this rank's block gathered into the whole (gh, gw) map on every rank. */
static float *gather_rows(const tmd_dyn_maps *m, const float *block)
{
    return tmd_test_allgather_floats(block, (int)(m->rows * m->gw));
}

/* vacancies of a tall single image: a sparse background, a U of dense vacancies (two arms
 * from the top joined at the bottom) and a later disc; point k goes to rank k % nranks */
static void make_vacancies(tmd_ctx *ctx, tmd_defect_table *d, int64_t H, int rank, int nranks)
{
    unsigned rng = 11;
    int64_t k = 0;
    for (int i = 0; i < 2000; i++) {
        double x = 600 * tmd_test_randf(&rng), y = H * tmd_test_randf(&rng);
        int ty = 1 + i % 3;
        if (k++ % nranks == rank) tmd_defect_table_push(ctx, d, 0, x, y, (int8_t)ty);
    }
    for (int i = 0; i < 4500; i++) { /* left arm, right arm, bottom bar */
        double t = tmd_test_randf(&rng), j = 6 * (tmd_test_randf(&rng) - 0.5), x, y;
        if (i % 3 == 0) { x = 160 + j; y = 40 + t * 1400; }
        else if (i % 3 == 1) { x = 440 + j; y = 40 + t * 1400; }
        else { x = 160 + t * 280; y = 1440 + j; }
        if (k++ % nranks == rank) tmd_defect_table_push(ctx, d, 0, x, y, TMD_DEF_VM);
    }
    for (int i = 0; i < 200; i++) {
        double r = 20 * sqrt(tmd_test_randf(&rng)), a = 2 * M_PI * tmd_test_randf(&rng);
        if (k++ % nranks == rank) tmd_defect_table_push(ctx, d, 0, 300 + r * cos(a), 700 + r * sin(a), TMD_DEF_VX2);
    }
}

static void compare_maps(const tmd_dyn_maps *mp, const tmd_dyn_maps *ms)
{
    CU_ASSERT_EQUAL(mp->gh, ms->gh);
    CU_ASSERT_EQUAL(mp->gw, ms->gw);
    float *u = gather_rows(mp, mp->unstable);
    int same = 1;
    for (int64_t i = 0; i < ms->gh * ms->gw; i++) same &= u[i] == ms->unstable[i];
    CU_ASSERT(same);
    free(u);
    for (int l = 0; l < 3; l++) {
        float *blk = malloc(sizeof(float) * (mp->rows * mp->gw + 1));
        memcpy(blk, mp->vacancy + l * mp->rows * mp->gw, sizeof(float) * mp->rows * mp->gw);
        float *v = gather_rows(mp, blk);
        int ok = 1;
        double tot = 0;
        for (int64_t i = 0; i < ms->gh * ms->gw; i++) {
            ok &= v[i] == ms->vacancy[l * ms->gh * ms->gw + i];
            tot += v[i];
        }
        CU_ASSERT(ok);
        CU_ASSERT(tot > 0); /* the layer is not trivially empty */
        free(v);
        free(blk);
    }
    CU_ASSERT_EQUAL(mp->regions.n, ms->regions.n);
    for (int64_t r = 0; r < ms->regions.n && r < mp->regions.n; r++) {
        CU_ASSERT_EQUAL(mp->regions.id[r], ms->regions.id[r]);
        CU_ASSERT_EQUAL(mp->regions.x[r], ms->regions.x[r]);
        CU_ASSERT_EQUAL(mp->regions.y[r], ms->regions.y[r]);
        CU_ASSERT_EQUAL(mp->regions.area_px[r], ms->regions.area_px[r]);
        CU_ASSERT_EQUAL(mp->regions.n_sites[r], ms->regions.n_sites[r]);
    }
}

static void test_single_image_maps(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    const int64_t H = 1600, W = 600;
    tmd_defect_table dp, ds;
    tmd_defect_table_init(&dp);
    tmd_defect_table_init(&ds);
    make_vacancies(&ctx, &dp, H, tmd_test_rank, tmd_test_size);
    make_vacancies(&ctx, &ds, H, 0, 1);
    tmd_dyn_params prm = {.bin_px = 4, .sigma_px = 14, .pixel_size = 0.1, .region_threshold = 0.01, .min_region_bins = 4};
    tmd_dyn_maps mp, ms;
    CU_ASSERT_EQUAL_FATAL(tmd_dynamics_maps(&ctx, tmd_test_comm, &prm, H, W, 1, NULL, &dp, NULL, &mp), TMD_OK);
    CU_ASSERT_EQUAL_FATAL(tmd_dynamics_maps(&ctx, MPI_COMM_SELF, &prm, H, W, 1, NULL, &ds, NULL, &ms), TMD_OK);
    CU_ASSERT_EQUAL(ms.gh, 400); /* 400 coarse rows: several 32-row bands on every rank */
    compare_maps(&mp, &ms);
    /* the U (first bin at its top-left arm) is one region, then the disc */
    if (tmd_test_rank == 0 && getenv("TMDFLOW_TEST_DEBUG"))
        for (int64_t r = 0; r < ms.regions.n; r++)
            printf("\nregion %lld at (%.1f, %.1f) area %.0f", (long long)r, ms.regions.x[r], ms.regions.y[r],
                   ms.regions.area_px[r]);
    CU_ASSERT_EQUAL(ms.regions.n, 2);
    if (ms.regions.n == 2) {
        CU_ASSERT(fabs(ms.regions.x[0] - 300) < 20); /* centroid of the U: between its arms */
        CU_ASSERT(ms.regions.y[0] > 700 && ms.regions.y[0] < 1100);
        CU_ASSERT(ms.regions.area_px[0] > 2 * 1400 * 10);
        CU_ASSERT(hypot(ms.regions.x[1] - 300, ms.regions.y[1] - 700) < 10);
    }
    tmd_dyn_maps_free(&mp);
    tmd_dyn_maps_free(&ms);
    tmd_defect_table_free(&dp);
    tmd_defect_table_free(&ds);
}

static void test_stack_unstable_maps(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    const int64_t H = 1200, W = 260, T = 4;
    tmd_site_table sp, ss;
    tmd_site_table_init(&sp);
    tmd_site_table_init(&ss);
    unsigned rng = 5;
    for (int k = 0; k < 4000; k++) {
        double x = W * tmd_test_randf(&rng), y = H * tmd_test_randf(&rng);
        int in_band = fabs(x - 130) < 25; /* a long vertical band of unstable sites across every rank */
        int unstable = in_band ? tmd_test_randf(&rng) < 0.9 : tmd_test_randf(&rng) < 0.02;
        for (int pass = 0; pass < 2; pass++) {
            tmd_site_table *s = pass ? &ss : &sp;
            if (!pass && k % tmd_test_size != tmd_test_rank) continue;
            int64_t r;
            tmd_site_table_push(&ctx, s, &r);
            s->id[r] = k;
            s->x[r] = x;
            s->y[r] = y;
            s->unstable[r] = (int8_t)unstable;
        }
    }
    tmd_defect_table dp, ds;
    tmd_defect_table_init(&dp);
    tmd_defect_table_init(&ds);
    for (int k = 0; k < 600; k++) {
        double x = W * tmd_test_randf(&rng), y = H * tmd_test_randf(&rng);
        int t = k % T, ty = 1 + k % 3;
        tmd_defect_table_push(&ctx, &ds, t, x, y, (int8_t)ty);
        if (k % tmd_test_size == tmd_test_rank) tmd_defect_table_push(&ctx, &dp, t, x, y, (int8_t)ty);
    }
    double drift[8] = {0, 0, 1.5, -0.5, 3.0, -1.0, 4.5, -1.5};
    tmd_dyn_params prm = {.bin_px = 5, .sigma_px = 8, .pixel_size = 0.1, .region_threshold = 2.0, .min_region_bins = 4};
    tmd_dyn_maps mp, ms;
    CU_ASSERT_EQUAL_FATAL(tmd_dynamics_maps(&ctx, tmd_test_comm, &prm, H, W, T, &sp, &dp, drift, &mp), TMD_OK);
    CU_ASSERT_EQUAL_FATAL(tmd_dynamics_maps(&ctx, MPI_COMM_SELF, &prm, H, W, T, &ss, &ds, drift, &ms), TMD_OK);
    compare_maps(&mp, &ms);
    int64_t nu = 0;
    for (int64_t k = 0; k < ss.n; k++) nu += ss.unstable[k];
    CU_ASSERT(ms.regions.n >= 1);
    if (ms.regions.n >= 1) {
        CU_ASSERT(ms.regions.area_px[0] > 0.5 * 50 * H); /* the band spans the image: one region */
        CU_ASSERT(ms.regions.n_sites[0] > nu / 2);
    }
    tmd_dyn_maps_free(&mp);
    tmd_dyn_maps_free(&ms);
    tmd_site_table_free(&sp);
    tmd_site_table_free(&ss);
    tmd_defect_table_free(&dp);
    tmd_defect_table_free(&ds);
}

/* No rank holds the whole map: its block is its share of the rows, and its work buffer does
 * not grow with the image height (the old code held an int64 copy of every row it touched). */
static void test_no_rank_holds_the_map(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    tmd_dyn_params prm = {.bin_px = 4, .sigma_px = 10, .pixel_size = 0.1, .region_threshold = 0.01, .min_region_bins = 4};
    size_t work[2] = {0, 0};
    for (int k = 0; k < 2; k++) {
        int64_t H = k ? 6400 : 1600, W = 300;
        tmd_defect_table d;
        tmd_defect_table_init(&d);
        /* every rank holds vacancies spread over the whole image height (worst case) */
        unsigned rng = 21 + (unsigned)tmd_test_rank;
        for (int i = 0; i < 2000; i++)
            tmd_defect_table_push(&ctx, &d, 0, W * tmd_test_randf(&rng), H * tmd_test_randf(&rng), TMD_DEF_VX);
        tmd_dyn_maps m;
        CU_ASSERT_EQUAL_FATAL(tmd_dynamics_maps(&ctx, tmd_test_comm, &prm, H, W, 1, NULL, &d, NULL, &m), TMD_OK);
        int64_t gh = (H + 3) / 4, gw = (W + 3) / 4;
        CU_ASSERT(m.rows <= (gh + tmd_test_size - 1) / tmd_test_size);
        int64_t rows = m.rows, all = 0;
        MPI_Allreduce(&rows, &all, 1, MPI_INT64_T, MPI_SUM, tmd_test_comm);
        CU_ASSERT_EQUAL(all, gh);
        CU_ASSERT(m.work_bytes > 0);
        CU_ASSERT(m.work_bytes < (size_t)gh * gw * sizeof(int64_t)); /* less than one int64 layer of the grid */
        work[k] = m.work_bytes;
        tmd_dyn_maps_free(&m);
        tmd_defect_table_free(&d);
    }
    CU_ASSERT_EQUAL(work[0], work[1]);
}

int main(int argc, char **argv)
{
    return tmd_test_main(argc, argv, "density",
                         (tmd_test_case[]){{"single-image maps and regions, any rank count", test_single_image_maps},
                                           {"stack unstable maps and regions, any rank count", test_stack_unstable_maps},
                                           {"no rank holds the whole map", test_no_rank_holds_the_map},
                                           {0}});
}
