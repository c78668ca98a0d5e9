/* Tests of normalisation and resampling (module normalise).
 * TMD_TEST_RANKS: 1 2 4
 * Proves: the distributed normalisation (tiles accumulated per rank, coarse background
 * halo-exchanged, histogram reduced) is bit-identical to the serial tmd_normalise_image on
 * any rank count and process layout, for images and stacks, with the tile grid not dividing
 * the image, including the halo pixels of every tile; the background estimate follows a
 * smooth known background and removes it, a linear ramp exactly up to the image edges (with the
 * default configuration, whose background removal is on); the levels are the configured percentiles; apply
 * refuses boxes outside the rank's tiles; resampling is exact on linear ramps when
 * enlarging, preserves constants when shrinking, reflects at the image edge, and gives
 * bit-identical values for the same output pixel from overlapping regions. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "tmd/decomp.h"
#include "tmd/normalise.h"

/* Smooth background + a lattice of bright blobs + deterministic noise. */
static float *make_image(int64_t T, int64_t H, int64_t W, unsigned seed)
{
    float *img = malloc(sizeof(float) * (size_t)(T * H * W));
    for (int64_t t = 0; t < T; t++)
        for (int64_t y = 0; y < H; y++)
            for (int64_t x = 0; x < W; x++) {
                double bg = 50 + 30 * sin(0.01 * (double)x + 0.3 * (double)t) + 0.1 * (double)y;
                double cx = fmod((double)x, 12.0) - 6, cy = fmod((double)y, 10.0) - 5;
                double peak = 100 * exp(-(cx * cx + cy * cy) / 4.0);
                img[(t * H + y) * W + x] = (float)(bg + peak + 5 * tmd_test_randf(&seed));
            }
    return img;
}

static void run_distributed(const tmd_config *cfg, double px, int64_t T, int64_t H, int64_t W, const int *pd)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    float *img = make_image(T, H, W, 7);
    float *ref = malloc(sizeof(float) * (size_t)(T * H * W));
    CU_ASSERT_EQUAL_FATAL(tmd_normalise_image(&ctx, cfg, px, T, H, W, img, ref), TMD_OK);

    int64_t te = tmd_decomp_tile_edge(cfg->tile, cfg->nominal_pixel_size, px);
    int64_t he = tmd_decomp_halo_edge(cfg->halo, cfg->nominal_pixel_size, px);
    int64_t dims[3] = {T, H, W}, tile[3] = {cfg->frames_per_tile, te, te}, halo[3] = {0, he, he};
    tmd_decomp *d = NULL;
    CU_ASSERT_EQUAL_FATAL(tmd_decomp_create(&ctx, tmd_test_comm, dims, tile, halo, pd, &d), TMD_OK);
    tmd_normalise *n = NULL;
    CU_ASSERT_EQUAL_FATAL(tmd_normalise_create(&ctx, d, cfg, px, &n), TMD_OK);
    float *buf = malloc(sizeof(float) * (size_t)(T * H * W));
    for (int64_t i = 0; i < d->nlocal; i++) {
        tmd_box core;
        tmd_decomp_tile_box(d, tmd_decomp_local_tile(d, i), &core, NULL);
        int64_t k = 0;
        for (int64_t t = core.lo[0]; t < core.hi[0]; t++)
            for (int64_t y = core.lo[1]; y < core.hi[1]; y++)
                for (int64_t x = core.lo[2]; x < core.hi[2]; x++) buf[k++] = img[(t * H + y) * W + x];
        CU_ASSERT_EQUAL(tmd_normalise_accumulate(&ctx, n, &core, buf), TMD_OK);
    }
    CU_ASSERT_EQUAL_FATAL(tmd_normalise_finish(&ctx, n), TMD_OK);
    int64_t mismatched = 0, checked = 0;
    for (int64_t i = 0; i < d->nlocal; i++) {
        tmd_box grown;
        tmd_decomp_tile_box(d, tmd_decomp_local_tile(d, i), NULL, &grown);
        int64_t k = 0;
        for (int64_t t = grown.lo[0]; t < grown.hi[0]; t++)
            for (int64_t y = grown.lo[1]; y < grown.hi[1]; y++)
                for (int64_t x = grown.lo[2]; x < grown.hi[2]; x++) buf[k++] = img[(t * H + y) * W + x];
        CU_ASSERT_EQUAL(tmd_normalise_apply(&ctx, n, &grown, buf), TMD_OK);
        k = 0;
        for (int64_t t = grown.lo[0]; t < grown.hi[0]; t++)
            for (int64_t y = grown.lo[1]; y < grown.hi[1]; y++)
                for (int64_t x = grown.lo[2]; x < grown.hi[2]; x++, k++) {
                    float v = buf[k] < 0 ? 0 : (buf[k] > 1 ? 1 : buf[k]);
                    mismatched += memcmp(&v, &ref[(t * H + y) * W + x], sizeof(float)) != 0;
                    checked++;
                }
    }
    CU_ASSERT_EQUAL(mismatched, 0);
    if (mismatched && getenv("TMDFLOW_TEST_DEBUG"))
        fprintf(stderr, "rank %d: %lld of %lld mismatched (px %g, bg %g, %lldx%lldx%lld)\n", tmd_test_rank,
                (long long)mismatched, (long long)checked, px, cfg->background_sigma, (long long)T, (long long)H, (long long)W);
    if (d->nlocal) CU_ASSERT(checked > 0);
    /* a box beyond the rank's tiles and halo is refused */
    if (d->nlocal && tmd_test_size > 1) {
        tmd_box own, far;
        tmd_decomp_rank_box(d, d->rank, &own);
        far = own;
        if (own.lo[2] > 0) {
            far.lo[2] = 0;
            far.hi[2] = 1;
        } else if (own.hi[2] < W) {
            far.lo[2] = W - 1;
            far.hi[2] = W;
        } else if (own.lo[1] > 0) {
            far.lo[1] = 0;
            far.hi[1] = 1;
        } else {
            far.lo[1] = H - 1;
            far.hi[1] = H;
        }
        float *tmp = calloc((size_t)tmd_box_volume(&far), sizeof(float));
        int expect_fail = cfg->background_sigma > 0 &&
                          (far.lo[2] + he + te * 3 < own.lo[2] || far.lo[2] > own.hi[2] + he + te * 3 ||
                           far.lo[1] + he + te * 3 < own.lo[1] || far.lo[1] > own.hi[1] + he + te * 3);
        tmd_status st = tmd_normalise_apply(&ctx, n, &far, tmp);
        if (expect_fail) CU_ASSERT_EQUAL(st, TMD_ERR_RANGE);
        tmd_error_clear(&ctx);
        free(tmp);
    }
    tmd_normalise_destroy(&n);
    CU_ASSERT_PTR_NULL(n);
    tmd_decomp_destroy(&d);
    free(buf);
    free(ref);
    free(img);
}

static void base_config(tmd_config *cfg)
{
    tmd_config_defaults(cfg);
    cfg->tile = 64;
    cfg->halo = 12;
    cfg->nominal_pixel_size = 0.12;
    cfg->background_sigma = 3.0; /* 25 px at 0.12 */
}

static void test_rank_invariance_image(void)
{
    tmd_config cfg;
    base_config(&cfg);
    run_distributed(&cfg, 0.12, 1, 300, 270, NULL); /* 5 x 5 tiles, last ones partial */
    int row[3] = {1, 1, tmd_test_size}, col[3] = {1, tmd_test_size, 1};
    run_distributed(&cfg, 0.12, 1, 300, 270, row);
    run_distributed(&cfg, 0.12, 1, 300, 270, col);
    run_distributed(&cfg, 0.09, 1, 257, 333, NULL); /* tile edge 85 px, halo 16 px */
    cfg.background_sigma = 0;
    run_distributed(&cfg, 0.12, 1, 200, 190, NULL);
}

static void test_rank_invariance_stack(void)
{
    tmd_config cfg;
    base_config(&cfg);
    cfg.frames_per_tile = 2;
    run_distributed(&cfg, 0.12, 5, 150, 140, NULL);
    int tsplit[3] = {tmd_test_size, 1, 1};
    run_distributed(&cfg, 0.12, 5, 150, 140, tsplit);
}

static void test_background_and_levels(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    tmd_config cfg;
    base_config(&cfg);
    cfg.background_sigma = 6.0; /* 50 px */
    const int64_t H = 400, W = 400;
    /* smooth background (a wide bump) + a fine periodic pattern of zero mean */
    float *img = malloc(sizeof(float) * H * W), *out = malloc(sizeof(float) * H * W);
    for (int64_t y = 0; y < H; y++)
        for (int64_t x = 0; x < W; x++) {
            double bg = 1000 * exp(-((x - 200.0) * (x - 200.0) + (y - 150.0) * (y - 150.0)) / (2 * 300.0 * 300.0));
            img[y * W + x] = (float)(bg + 10 * sin(2 * M_PI * (double)x / 8) * sin(2 * M_PI * (double)y / 8));
        }
    CU_ASSERT_EQUAL_FATAL(tmd_normalise_image(&ctx, &cfg, 0.12, 1, H, W, img, out), TMD_OK);
    /* away from the edges the output is the zero-mean pattern mapped by the levels: its mean
     * over a period block is the same everywhere (the background is gone) */
    double m1 = 0, m2 = 0;
    for (int64_t y = 100; y < 108; y++)
        for (int64_t x = 100; x < 108; x++) m1 += out[y * W + x];
    for (int64_t y = 280; y < 288; y++)
        for (int64_t x = 300; x < 308; x++) m2 += out[y * W + x];
    m1 /= 64;
    m2 /= 64;
    /* the raw background differs by ~100 between these places, the pattern spans 20 */
    if (getenv("TMDFLOW_TEST_DEBUG")) fprintf(stderr, "bump: m1 %.4f m2 %.4f\n", m1, m2);
    /* (a blur of 50 px over a bump of 300 px leaves part of its curvature: 0.09 here, against
     * 0.21 without removal; a plane is removed exactly, see test_ramp_removed) */
    CU_ASSERT(fabs(m1 - m2) < 0.12);
    /* without background removal the same two places differ a lot */
    cfg.background_sigma = 0;
    CU_ASSERT_EQUAL_FATAL(tmd_normalise_image(&ctx, &cfg, 0.12, 1, H, W, img, out), TMD_OK);
    double n1 = 0, n2 = 0;
    for (int64_t y = 100; y < 108; y++)
        for (int64_t x = 100; x < 108; x++) n1 += out[y * W + x];
    for (int64_t y = 280; y < 288; y++)
        for (int64_t x = 300; x < 308; x++) n2 += out[y * W + x];
    if (getenv("TMDFLOW_TEST_DEBUG")) fprintf(stderr, "bump, no removal: %.4f %.4f\n", n1 / 64, n2 / 64);
    CU_ASSERT(fabs(n1 - n2) / 64 > 0.2);
    free(img);
    free(out);

    /* levels: background off, values 0..N-1 each once: the percentiles are exact to a bin */
    cfg.background_sigma = 0;
    cfg.clip_low = 1;
    cfg.clip_high = 99;
    const int64_t N = 100 * 100;
    float *v = malloc(sizeof(float) * N), *o = malloc(sizeof(float) * N);
    for (int64_t i = 0; i < N; i++) v[i] = (float)((i * 7919) % N);
    CU_ASSERT_EQUAL_FATAL(tmd_normalise_image(&ctx, &cfg, 0.12, 1, 100, 100, v, o), TMD_OK);
    /* value 100 (the 1st percentile) -> 0, value 9900 (99th) -> 1, clamped outside */
    for (int64_t i = 0; i < N; i++) {
        if (v[i] == 100.0f) CU_ASSERT(fabs(o[i]) < 0.002);
        if (v[i] == 9900.0f) CU_ASSERT(fabs(o[i] - 1) < 0.002);
        if (v[i] == 5000.0f) CU_ASSERT(fabs(o[i] - 4900.0 / 9800.0) < 0.002);
        CU_ASSERT(o[i] >= 0 && o[i] <= 1);
    }
    free(v);
    free(o);
}

/* A linear ramp (an image that is not background-subtracted) is removed up to the image
 * edges: the network input is the same zero-mean pattern everywhere — at the corners as in the
 * centre — with the background removal of the default configuration. Without it the ramp
 * spans 16 times the pattern. */
static void test_ramp_removed(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    tmd_config cfg;
    tmd_config_defaults(&cfg);
    CU_ASSERT_FATAL(cfg.background_sigma > 0);
    const int64_t H = 400, W = 416;
    float *img = malloc(sizeof(float) * H * W), *out = malloc(sizeof(float) * H * W);
    for (int64_t y = 0; y < H; y++)
        for (int64_t x = 0; x < W; x++)
            img[y * W + x] = (float)(1000 + 0.5 * (double)x + 0.3 * (double)y +
                                     10 * sin(2 * M_PI * (double)x / 8) * sin(2 * M_PI * (double)y / 8));
    CU_ASSERT_EQUAL_FATAL(tmd_normalise_image(&ctx, &cfg, 0.12, 1, H, W, img, out), TMD_OK);
    /* mean of 8 x 8 blocks (one period of the pattern: mean 0) at the corners, edges, centre */
    int64_t at[7][2] = {{0, 0}, {0, W - 8}, {H - 8, 0}, {H - 8, W - 8}, {200, 0}, {0, 208}, {200, 208}};
    double m[7], lo = 1e9, hi = -1e9;
    for (int k = 0; k < 7; k++) {
        m[k] = 0;
        for (int64_t y = at[k][0]; y < at[k][0] + 8; y++)
            for (int64_t x = at[k][1]; x < at[k][1] + 8; x++) m[k] += out[y * W + x] / 64.0;
        if (m[k] < lo) lo = m[k];
        if (m[k] > hi) hi = m[k];
    }
    if (getenv("TMDFLOW_TEST_DEBUG"))
        fprintf(stderr, "ramp: block means %.4f %.4f %.4f %.4f %.4f %.4f %.4f\n", m[0], m[1], m[2], m[3], m[4], m[5], m[6]);
    CU_ASSERT(hi - lo < 0.03);
    free(img);
    free(out);
}

static void test_resample(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    const int64_t H = 40, W = 50;
    float *in = malloc(sizeof(float) * H * W);
    for (int64_t y = 0; y < H; y++)
        for (int64_t x = 0; x < W; x++) in[y * W + x] = (float)(2 * x + 3 * y);
    /* enlarging (s = 0.5): bilinear is exact on a ramp, inside the image */
    float out[30 * 30];
    CU_ASSERT_EQUAL_FATAL(tmd_resample(&ctx, in, 0, 0, H, W, H, W, 0.5, 10, 12, 30, 30, out, NULL), TMD_OK);
    int bad = 0;
    for (int Y = 0; Y < 30; Y++)
        for (int X = 0; X < 30; X++) bad += fabs(out[Y * 30 + X] - (2 * 0.5 * (12 + X) + 3 * 0.5 * (10 + Y))) > 1e-4;
    CU_ASSERT_EQUAL(bad, 0);
    /* s = 1: identity */
    CU_ASSERT_EQUAL_FATAL(tmd_resample(&ctx, in, 0, 0, H, W, H, W, 1.0, 5, 5, 20, 20, out, NULL), TMD_OK);
    bad = 0;
    for (int Y = 0; Y < 20; Y++)
        for (int X = 0; X < 20; X++) bad += out[Y * 20 + X] != in[(5 + Y) * W + 5 + X];
    CU_ASSERT_EQUAL(bad, 0);
    /* reflection at the image edge: nominal row -2 at s = 1 reads input row 2 */
    CU_ASSERT_EQUAL_FATAL(tmd_resample(&ctx, in, 0, 0, H, W, H, W, 1.0, -2, -3, 5, 5, out, NULL), TMD_OK);
    CU_ASSERT_EQUAL(out[0], in[2 * W + 3]);
    /* shrinking (s = 1.7) keeps a constant; overlapping regions agree bit for bit */
    float *c = malloc(sizeof(float) * H * W);
    for (int64_t i = 0; i < H * W; i++) c[i] = 3.25f;
    CU_ASSERT_EQUAL_FATAL(tmd_resample(&ctx, c, 0, 0, H, W, H, W, 1.7, 0, 0, 20, 25, out, NULL), TMD_OK);
    bad = 0;
    for (int i = 0; i < 20 * 25; i++) bad += fabs(out[i] - 3.25f) > 1e-5;
    CU_ASSERT_EQUAL(bad, 0);
    float a[10 * 10], b[10 * 10];
    /* nominal rows/cols 5..14 from the whole image and from a sub-region that covers the support */
    int64_t lo, hi;
    tmd_resample_support(1.7, 5, 10, &lo, &hi);
    CU_ASSERT(lo >= 0 && hi <= H);
    CU_ASSERT_EQUAL_FATAL(tmd_resample(&ctx, in, 0, 0, H, W, H, W, 1.7, 5, 5, 10, 10, a, NULL), TMD_OK);
    int64_t rw = hi - lo;
    float *sub = malloc(sizeof(float) * (size_t)(rw * rw));
    for (int64_t y = 0; y < rw; y++)
        for (int64_t x = 0; x < rw; x++) sub[y * rw + x] = in[(lo + y) * W + lo + x];
    CU_ASSERT_EQUAL_FATAL(tmd_resample(&ctx, sub, lo, lo, rw, rw, H, W, 1.7, 5, 5, 10, 10, b, NULL), TMD_OK);
    free(sub);
    CU_ASSERT_EQUAL(memcmp(a, b, sizeof a), 0);
    (void)bad;
    free(c);
    free(in);
}

int main(int argc, char **argv)
{
    return tmd_test_main(argc, argv, "normalise",
                         (tmd_test_case[]){{"distributed == serial, images, layouts", test_rank_invariance_image},
                                           {"distributed == serial, stacks", test_rank_invariance_stack},
                                           {"background removed, levels at percentiles", test_background_and_levels},
                                           {"a linear ramp is removed up to the edges (defaults)", test_ramp_removed},
                                           {"resampling", test_resample},
                                           {0}});
}
