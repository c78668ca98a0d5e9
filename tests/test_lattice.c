/* Tests of the lattice module: FFT registration of synthetic honeycombs of known period,
 * rotation, sublattice contrast and noise; refusal of images without a lattice; the
 * tile combination being the same on any number of ranks; the pixel size along the fast-scan
 * axis under a slow-scan compression and shear; the local ideal-site fit under strain; and
 * the real MoS2 image (pixel size ~0.175 A/px with a = 3.16 A).
 * TMD_TEST_RANKS: 1 2
 * TMD_TEST_TIMEOUT: 120
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <tiffio.h>

#include "testutil.h"
#include "tmd/io.h"
#include "tmd/lattice.h"
#include "tmd/pipeline.h"

/* Synthetic honeycomb: A sites at o + i a1 + j a2 (a1 at `rot_deg`, a2 = a1 turned +60),
 * B sites at A + (a1 + a2) / 3; Gaussian columns of sigma `sig` px, heights ia and ib,
 * optional strain (x stretched by 1 + exx), additive Gaussian noise of sd `noise`. */
static void honeycomb_m(float *img, int h, int w, double period, double rot_deg, double ia, double ib, double sig,
                        const double M[4], double noise, unsigned seed);
static void honeycomb(float *img, int h, int w, double period, double rot_deg, double ia, double ib, double sig,
                      double exx, double noise, unsigned seed)
{
    const double M[4] = {1.0 + exx, 0.0, 0.0, 1.0};
    honeycomb_m(img, h, w, period, rot_deg, ia, ib, sig, M, noise, seed);
}

/* The same with every position p mapped to M p (M row-major 2 x 2), e.g. a scan distortion
 * {1, shear, 0, 1 + c}: rows (1 + c) x farther apart in the sample than pixels along a row. */
static void honeycomb_m(float *img, int h, int w, double period, double rot_deg, double ia, double ib, double sig,
                        const double M[4], double noise, unsigned seed)
{
    double t = rot_deg * M_PI / 180.0;
    double a1[2] = {period * cos(t), period * sin(t)};
    double a2[2] = {period * cos(t + M_PI / 3), period * sin(t + M_PI / 3)};
    double o[2] = {3.3, 5.7};
    for (int i = 0; i < h * w; i++) img[i] = 0.0f;
    int nmax = (int)(2.0 * (h + w) / period) + 4;
    int rad = (int)ceil(4 * sig);
    for (int i = -nmax; i <= nmax; i++)
        for (int j = -nmax; j <= nmax; j++)
            for (int s = 0; s < 2; s++) {
                double x = o[0] + i * a1[0] + j * a2[0] + s * (a1[0] + a2[0]) / 3.0;
                double y = o[1] + i * a1[1] + j * a2[1] + s * (a1[1] + a2[1]) / 3.0;
                double mx = M[0] * x + M[1] * y, my = M[2] * x + M[3] * y;
                x = mx;
                y = my;
                if (x < -rad || y < -rad || x > w + rad || y > h + rad) continue;
                double amp = s ? ib : ia;
                for (int yy = (int)y - rad; yy <= (int)y + rad; yy++)
                    for (int xx = (int)x - rad; xx <= (int)x + rad; xx++) {
                        if (xx < 0 || yy < 0 || xx >= w || yy >= h) continue;
                        double d2 = (xx - x) * (xx - x) + (yy - y) * (yy - y);
                        img[yy * w + xx] += (float)(amp * exp(-d2 / (2 * sig * sig)));
                    }
            }
    unsigned st = seed;
    for (int i = 0; i < h * w; i++) {
        double u1 = tmd_test_randf(&st) + 1e-7, u2 = tmd_test_randf(&st);
        img[i] += (float)(noise * sqrt(-2 * log(u1)) * cos(2 * M_PI * u2));
    }
}

static double angdiff60(double a, double b)
{
    double d = fmod(a - b, 60.0);
    if (d > 30) d -= 60;
    if (d < -30) d += 60;
    return fabs(d);
}

/* Period and rotation of synthetic lattices are recovered to 0.3% and 0.3 degrees over a
 * grid of periods, rotations, contrasts (including equal sublattices, where {110} is the
 * strongest reflection) and noise. */
static void test_synthetic_grid(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    int n = 256;
    float *img = malloc(sizeof(float) * n * n);
    tmd_lattice_plan *p = NULL;
    CU_ASSERT_EQUAL_FATAL(tmd_lattice_plan_create(&ctx, n, n, NULL, &p), TMD_OK);
    const double periods[] = {12.0, 18.2, 29.5};
    const double rots[] = {0.0, 13.0, 47.0, 59.6};
    const double ratios[] = {2.6, 1.0, 0.72};
    int count = 0, bad = 0;
    for (int a = 0; a < 3; a++)
        for (int r = 0; r < 4; r++)
            for (int c = 0; c < 3; c++) {
                double period = periods[a];
                honeycomb(img, n, n, period, rots[r], ratios[c], 1.0, period * 0.09, 0.0, 0.5, 11u + (unsigned)count);
                tmd_lattice lat;
                tmd_status st = tmd_lattice_measure(&ctx, p, img, n, &lat);
                count++;
                double rel = st ? 1 : fabs(lat.period_px / period - 1);
                double dang = st ? 99 : angdiff60(lat.rotation_deg, rots[r]);
                if (st || rel > 0.003 || dang > 0.3) {
                    bad++;
                    fprintf(stderr, "period %.1f rot %.1f ratio %.2f: st %d period %.3f rot %.2f strength %.1f\n", period,
                            rots[r], ratios[c], st, lat.period_px, lat.rotation_deg, lat.strength);
                }
            }
    CU_ASSERT_EQUAL(bad, 0);
    tmd_lattice_plan_destroy(&p);
    CU_ASSERT_PTR_NULL(p);
    tmd_lattice_plan_destroy(&p); /* NULL accepted */
    free(img);
}

/* Gaussian blur of img (h, w) with sigma s (separable, clamped edges) subtracted from it: the
 * high-pass some users apply before saving, which weakens the {100} reflections most. */
static void highpass(float *img, int h, int w, double s)
{
    int r = (int)ceil(3 * s);
    double *k = malloc(sizeof(double) * (2 * r + 1)), ks = 0;
    for (int i = -r; i <= r; i++) ks += k[i + r] = exp(-i * i / (2 * s * s));
    float *t = malloc(sizeof(float) * h * w), *b = malloc(sizeof(float) * h * w);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            double a = 0;
            for (int i = -r; i <= r; i++) a += k[i + r] * img[y * w + (x + i < 0 ? 0 : x + i >= w ? w - 1 : x + i)];
            t[y * w + x] = (float)(a / ks);
        }
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            double a = 0;
            for (int i = -r; i <= r; i++) a += k[i + r] * t[(y + i < 0 ? 0 : y + i >= h ? h - 1 : y + i) * w + x];
            b[y * w + x] = (float)(a / ks);
        }
    for (int i = 0; i < h * w; i++) img[i] -= b[i];
    free(k);
    free(t);
    free(b);
}

/* Harmonic traps, measured with the default (unrestricted) band as without --pixel-size:
 * long periods (small pixel sizes, 40-56 px in a 512 tile), sharp columns, sublattice
 * contrasts 1.0 and 0.72 (the {110} set the strongest), and a high-passed image (the {100} set
 * weakened further). The strongest regular set of peaks is then {110}, {200} or {300}; the
 * period must still be the first-order one, to 0.5 %. (Before the sub-harmonic descent, long
 * periods gave period / sqrt 3.) */
static void test_harmonic_traps(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    int n = 512;
    float *img = malloc(sizeof(float) * n * n);
    tmd_lattice_plan *p = NULL;
    CU_ASSERT_EQUAL_FATAL(tmd_lattice_plan_create(&ctx, n, n, NULL, &p), TMD_OK);
    const double periods[] = {19.0, 40.0, 47.3, 55.5};
    const double ratios[] = {1.0, 0.72, 1.9};
    int count = 0, bad = 0;
    for (int a = 0; a < 4; a++)
        for (int c = 0; c < 3; c++)
            for (int hp = 0; hp < 2; hp++) {
                double period = periods[a], rot = 7.0 + 17.0 * count;
                honeycomb(img, n, n, period, fmod(rot, 60.0), ratios[c], 1.0, period * 0.045, 0.0, 0.3,
                          300u + (unsigned)count);
                if (hp) highpass(img, n, n, period / 5.0);
                tmd_lattice lat;
                tmd_status st = tmd_lattice_measure(&ctx, p, img, n, &lat);
                count++;
                double rel = st ? 1 : fabs(lat.period_px / period - 1);
                if (st || rel > 0.005) {
                    bad++;
                    fprintf(stderr, "trap: period %.1f ratio %.2f highpass %d: st %d period %.3f (x%.3f) distortion %.3f\n",
                            period, ratios[c], hp, st, lat.period_px, lat.period_px / period, lat.distortion);
                }
            }
    CU_ASSERT_EQUAL(bad, 0);
    tmd_lattice_plan_destroy(&p);
    free(img);
}

/* Vectors follow the documented convention: a1 angle in [0, 60), a2 ~ a1 + 60 deg, g dual. */
static void test_conventions(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    int n = 256;
    float *img = malloc(sizeof(float) * n * n);
    tmd_lattice_plan *p = NULL;
    CU_ASSERT_EQUAL_FATAL(tmd_lattice_plan_create(&ctx, n, n, NULL, &p), TMD_OK);
    honeycomb(img, n, n, 20.0, 25.0, 2.0, 1.0, 1.8, 0.0, 0.2, 5);
    tmd_lattice lat;
    CU_ASSERT_EQUAL_FATAL(tmd_lattice_measure(&ctx, p, img, n, &lat), TMD_OK);
    double a1 = atan2(lat.a1[1], lat.a1[0]) * 180 / M_PI, a2 = atan2(lat.a2[1], lat.a2[0]) * 180 / M_PI;
    CU_ASSERT(fabs(a1 - 25.0) < 0.3);
    CU_ASSERT(fabs(a2 - 85.0) < 0.3);
    CU_ASSERT(fabs(lat.g1[0] * lat.a1[0] + lat.g1[1] * lat.a1[1] - 1) < 1e-9);
    CU_ASSERT(fabs(lat.g1[0] * lat.a2[0] + lat.g1[1] * lat.a2[1]) < 1e-9);
    CU_ASSERT(lat.distortion < 0.005);
    CU_ASSERT(fabs(tmd_lattice_pixel_size(&lat, 3.2) - 0.16) < 0.16 * 0.003);
    /* a 1.5% uniaxial strain: the area-based period lies between, distortion reports it */
    honeycomb(img, n, n, 20.0, 25.0, 2.0, 1.0, 1.8, 0.015, 0.2, 6);
    CU_ASSERT_EQUAL_FATAL(tmd_lattice_measure(&ctx, p, img, n, &lat), TMD_OK);
    CU_ASSERT(lat.period_px > 20.0 && lat.period_px < 20.0 * 1.015);
    CU_ASSERT(lat.distortion > 0.003);
    CU_ASSERT(fabs(tmd_lattice_vegard(0, 0) - TMD_A_MOS2) < 1e-12);
    CU_ASSERT(fabs(tmd_lattice_vegard(1, 1) - TMD_A_WSE2) < 1e-12);
    CU_ASSERT(fabs(tmd_lattice_vegard(0.5, 0.5) - 0.25 * (TMD_A_MOS2 + TMD_A_WS2 + TMD_A_MOSE2 + TMD_A_WSE2)) < 1e-12);
    tmd_lattice_plan_destroy(&p);
    free(img);
}

/* The pixel size along the fast-scan axis x. A slow-scan compression c (the image shows the
 * sample's rows 1 / (1 + c) as far apart as they are) with a shear: the area-based period is
 * off by sqrt(1 + c) (about c / 2: 1 % at c = 0.02), tmd_lattice_period_fast finds the x period
 * to 0.3 % at any rotation, the same for every choice of basis (a2, a2 - a1) and for a mirrored
 * one, and equal to period_px without distortion. tmd_lattice_run_pixel_size_fast takes the
 * median over frames like tmd_lattice_run_pixel_size. */
static void test_fast_scan(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    int n = 256;
    float *img = malloc(sizeof(float) * n * n);
    tmd_lattice_plan *p = NULL;
    CU_ASSERT_EQUAL_FATAL(tmd_lattice_plan_create(&ctx, n, n, NULL, &p), TMD_OK);
    const double rots[] = {0.0, 17.0, 41.0, 58.0}, cs[] = {0.02, -0.02, 0.0};
    const double period = 18.2;
    int bad = 0;
    for (int r = 0; r < 4; r++)
        for (int c = 0; c < 3; c++) {
            const double M[4] = {1.0, cs[c] != 0 ? 0.03 : 0.0, 0.0, 1.0 / (1.0 + cs[c])};
            honeycomb_m(img, n, n, period, rots[r], 1.6, 1.0, 1.5, M, 0.1, 40 + (unsigned)(3 * r + c));
            tmd_lattice lat;
            tmd_status st = tmd_lattice_measure(&ctx, p, img, n, &lat);
            CU_ASSERT_EQUAL(st, TMD_OK);
            if (st) continue;
            double fast = tmd_lattice_period_fast(&lat), area = lat.period_px / period;
            int ok = fabs(fast / period - 1) < 0.003 && fabs(area - 1 / sqrt(1 + cs[c])) < 0.003;
            /* the same lattice in other bases: (a2, a2 - a1) and mirrored (a2, a1) */
            double b2[2] = {lat.a2[0] - lat.a1[0], lat.a2[1] - lat.a1[1]};
            ok = ok && fabs(tmd_lattice_basis_period_fast(lat.a2, b2) / fast - 1) < 1e-9;
            ok = ok && fabs(tmd_lattice_basis_period_fast(lat.a2, lat.a1) / fast - 1) < 1e-9;
            if (cs[c] == 0) ok = ok && fabs(fast / lat.period_px - 1) < 0.002;
            if (!ok) {
                bad++;
                fprintf(stderr, "fast scan: rot %.0f c %+.2f: fast %.4f area %.4f (period %.2f)\n", rots[r], cs[c], fast,
                        lat.period_px, period);
            }
        }
    CU_ASSERT_EQUAL(bad, 0);
    /* the run-level median over three frames */
    double a1[6] = {20, 0, 19, 0, 21, 0}, a2[6] = {10, 20 * sqrt(3) / 2, 9.5, 19 * sqrt(3) / 2, 10.5, 21 * sqrt(3) / 2};
    tmd_run run;
    memset(&run, 0, sizeof run);
    run.info.frames = 3;
    run.lattice_a1 = a1;
    run.lattice_a2 = a2;
    double px = 0, pxa = 0;
    CU_ASSERT_EQUAL(tmd_lattice_run_pixel_size_fast(&ctx, &run, 3.2, &px), TMD_OK);
    CU_ASSERT(fabs(px - 0.16) < 1e-12);
    /* rows compressed by 1 / 1.02: the fast-scan pixel size stays, the area-based one moves */
    for (int f = 0; f < 3; f++) {
        a1[2 * f + 1] /= 1.02;
        a2[2 * f + 1] /= 1.02;
    }
    CU_ASSERT_EQUAL(tmd_lattice_run_pixel_size_fast(&ctx, &run, 3.2, &px), TMD_OK);
    CU_ASSERT_EQUAL(tmd_lattice_run_pixel_size(&ctx, &run, 3.2, &pxa), TMD_OK);
    CU_ASSERT(fabs(px - 0.16) < 1e-12);
    CU_ASSERT(fabs(pxa / 0.16 - sqrt(1.02)) < 1e-9);
    tmd_lattice_plan_destroy(&p);
    free(img);
}

/* Pure noise, a smooth blob field (amorphous-like) and a flat image are refused with
 * TMD_ERR_NOLATTICE and a message; nothing is guessed. */
static void test_no_lattice(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    int n = 256;
    float *img = malloc(sizeof(float) * n * n);
    tmd_lattice_plan *p = NULL;
    CU_ASSERT_EQUAL_FATAL(tmd_lattice_plan_create(&ctx, n, n, NULL, &p), TMD_OK);
    tmd_lattice lat;
    for (int trial = 0; trial < 6; trial++) {
        unsigned s = 100u + (unsigned)trial;
        for (int i = 0; i < n * n; i++) img[i] = tmd_test_randf(&s);
        if (trial >= 3) { /* amorphous: random Gaussian blobs at random places */
            for (int i = 0; i < n * n; i++) img[i] *= 0.2f;
            for (int b = 0; b < 600; b++) {
                double bx = tmd_test_randf(&s) * n, by = tmd_test_randf(&s) * n;
                for (int y = (int)by - 6; y <= (int)by + 6; y++)
                    for (int x = (int)bx - 6; x <= (int)bx + 6; x++)
                        if (x >= 0 && y >= 0 && x < n && y < n)
                            img[y * n + x] += (float)exp(-((x - bx) * (x - bx) + (y - by) * (y - by)) / 8.0);
            }
        }
        tmd_error_clear(&ctx);
        tmd_status st = tmd_lattice_measure(&ctx, p, img, n, &lat);
        CU_ASSERT_EQUAL(st, TMD_ERR_NOLATTICE);
        CU_ASSERT(strstr(ctx.err_msg, "no hexagonal lattice") != NULL);
        CU_ASSERT_EQUAL(lat.valid, 0);
    }
    for (int i = 0; i < n * n; i++) img[i] = 1.0f;
    tmd_error_clear(&ctx);
    CU_ASSERT_EQUAL(tmd_lattice_measure(&ctx, p, img, n, &lat), TMD_ERR_NOLATTICE);
    tmd_lattice_plan_destroy(&p);
    free(img);
}

/* Tiles of a 768 x 768 image spread over the ranks in blocks: the allreduced frame lattice
 * is the same bits on every rank and equals the serial combination of the same tiles. */
static void test_allreduce(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    int n = 768, t = 256, nt = 9;
    float *img = malloc(sizeof(float) * n * n);
    honeycomb(img, n, n, 16.3, 33.0, 2.5, 1.0, 1.5, 0.0, 0.4, 77);
    tmd_lattice_plan *p = NULL;
    CU_ASSERT_EQUAL_FATAL(tmd_lattice_plan_create(&ctx, t, t, NULL, &p), TMD_OK);
    tmd_lattice all[9], mine[9];
    int64_t ids[9];
    int nm = 0;
    for (int k = 0; k < nt; k++) {
        int ty = k / 3, tx = k % 3;
        tmd_status st = tmd_lattice_measure(&ctx, p, img + (size_t)ty * t * n + (size_t)tx * t, n, &all[k]);
        CU_ASSERT_EQUAL(st, TMD_OK);
        if (k * tmd_test_size / nt == tmd_test_rank) {
            mine[nm] = all[k];
            ids[nm++] = k;
        }
    }
    tmd_lattice ser, par;
    CU_ASSERT_EQUAL(tmd_lattice_combine(&ctx, nt, all, &ser), TMD_OK);
    CU_ASSERT_EQUAL(tmd_lattice_allreduce(&ctx, tmd_test_comm, nm, ids, mine, &par), TMD_OK);
    CU_ASSERT_EQUAL(memcmp(ser.a1, par.a1, sizeof ser.a1), 0);
    CU_ASSERT_EQUAL(memcmp(ser.a2, par.a2, sizeof ser.a2), 0);
    CU_ASSERT(fabs(par.period_px / 16.3 - 1) < 0.002);
    double ref[4] = {par.a1[0], par.a1[1], par.a2[0], par.a2[1]}, r0[4];
    memcpy(r0, ref, sizeof ref);
    MPI_Bcast(r0, 4, MPI_DOUBLE, 0, tmd_test_comm);
    CU_ASSERT_EQUAL(memcmp(r0, ref, sizeof ref), 0);
    /* no valid tile anywhere: every rank gets NOLATTICE */
    for (int k = 0; k < nm; k++) mine[k].valid = 0;
    tmd_error_clear(&ctx);
    CU_ASSERT_EQUAL(tmd_lattice_allreduce(&ctx, tmd_test_comm, nm, ids, mine, &par), TMD_ERR_NOLATTICE);
    tmd_lattice_plan_destroy(&p);
    free(img);
}

/* The local fit predicts the position of a removed site in a strained, rotated lattice to
 * 0.1 px, and indexes atoms of both sublattices. */
static void test_local_fit(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    double period = 19.0, t = 0.4, exx = 0.012;
    double a1[2] = {period * cos(t), period * sin(t)}, a2[2] = {period * cos(t + M_PI / 3), period * sin(t + M_PI / 3)};
    double xs[400], ys[400], hole[2] = {0, 0};
    int n = 0;
    for (int i = -6; i <= 6; i++)
        for (int j = -6; j <= 6; j++)
            for (int s = 0; s < 2; s++) {
                double x = 200 + i * a1[0] + j * a2[0] + s * (a1[0] + a2[0]) / 3.0;
                double y = 200 + i * a1[1] + j * a2[1] + s * (a1[1] + a2[1]) / 3.0;
                x = 200 + (x - 200) * (1 + exx);
                if (i == 1 && j == 0 && s == 1) {
                    hole[0] = x;
                    hole[1] = y;
                    continue;
                }
                if (n < 400 && fabs(x - 200) < 90 && fabs(y - 200) < 90) {
                    xs[n] = x;
                    ys[n] = y;
                    n++;
                }
            }
    tmd_lattice lat;
    memset(&lat, 0, sizeof lat);
    double b1[2] = {a1[0], a1[1]}, b2[2] = {a2[0], a2[1]};
    double g1[2], g2[2];
    double det = b1[0] * b2[1] - b1[1] * b2[0];
    g1[0] = b2[1] / det;
    g1[1] = -b2[0] / det;
    g2[0] = -b1[1] / det;
    g2[1] = b1[0] / det;
    tmd_lattice_from_reciprocal(&lat, g1, g2);
    tmd_lattice_local fit;
    CU_ASSERT_EQUAL_FATAL(tmd_lattice_fit_local(&ctx, &lat, n, xs, ys, hole[0], hole[1], 2.5 * period, &fit), TMD_OK);
    CU_ASSERT(fit.rms < 0.01);
    CU_ASSERT(fit.n_used > 20);
    /* the hole: the index nearest to it, position predicted */
    int64_t i, j;
    int sub;
    tmd_lattice_local_index(&fit, hole[0] + 0.7, hole[1] - 0.5, &i, &j, &sub);
    double px, py;
    tmd_lattice_local_site(&fit, i, j, sub, &px, &py);
    CU_ASSERT(hypot(px - hole[0], py - hole[1]) < 0.1);
    /* every atom is within 0.05 px of a model site */
    int far = 0;
    for (int k = 0; k < n; k++)
        if (hypot(xs[k] - hole[0], ys[k] - hole[1]) < 2.5 * period &&
            tmd_lattice_local_index(&fit, xs[k], ys[k], &i, &j, &sub) > 0.05 * 0.05)
            far++;
    CU_ASSERT_EQUAL(far, 0);
}

static float *read_tiff_f32(const char *path, int *h, int *w)
{
    TIFF *t = TIFFOpen(path, "r");
    if (!t) return NULL;
    uint32_t W = 0, H = 0;
    uint16_t bps = 0;
    TIFFGetField(t, TIFFTAG_IMAGEWIDTH, &W);
    TIFFGetField(t, TIFFTAG_IMAGELENGTH, &H);
    TIFFGetField(t, TIFFTAG_BITSPERSAMPLE, &bps);
    float *img = NULL;
    if (bps == 32 && W > 0 && H > 0) {
        img = malloc(sizeof(float) * W * H);
        for (uint32_t y = 0; y < H; y++)
            if (TIFFReadScanline(t, img + (size_t)y * W, y, 0) < 0) {
                free(img);
                img = NULL;
                break;
            }
    }
    TIFFClose(t);
    *h = (int)H;
    *w = (int)W;
    return img;
}

/* The real MoS2 image gives ~0.175 A/px with a = 3.16 A (README of shared/realdata) to 2%,
 * and each 256 x 256 quarter agrees to 3% (the image has a strong, non-uniform scan
 * distortion: |a| varies by ~10% with direction and a few % across the field). */
static void test_real_image(void)
{
    const char *path = TMD_SOURCE_DIR "/../shared/realdata/mos2-770da85.tif";
    int h, w;
    float *img = read_tiff_f32(path, &h, &w);
    if (!img) {
        fprintf(stderr, "skipping: %s not readable\n", path);
        return;
    }
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    tmd_lattice_plan *p = NULL;
    CU_ASSERT_EQUAL_FATAL(tmd_lattice_plan_create(&ctx, h, w, NULL, &p), TMD_OK);
    tmd_lattice lat;
    CU_ASSERT_EQUAL_FATAL(tmd_lattice_measure(&ctx, p, img, w, &lat), TMD_OK);
    double px = tmd_lattice_pixel_size(&lat, TMD_A_MOS2);
    if (tmd_test_rank == 0)
        fprintf(stderr, "real MoS2: period %.3f px, rotation %.2f deg, distortion %.4f, strength %.0f, %.4f A/px\n",
                lat.period_px, lat.rotation_deg, lat.distortion, lat.strength, px);
    CU_ASSERT(fabs(px - 0.175) < 0.175 * 0.02);
    tmd_lattice_plan_destroy(&p);
    CU_ASSERT_EQUAL_FATAL(tmd_lattice_plan_create(&ctx, 256, 256, NULL, &p), TMD_OK);
    for (int q = 0; q < 4; q++) {
        tmd_lattice lq;
        CU_ASSERT_EQUAL(tmd_lattice_measure(&ctx, p, img + (q / 2) * 256 * w + (q % 2) * 256, w, &lq), TMD_OK);
        CU_ASSERT(fabs(lq.period_px / lat.period_px - 1) < 0.03);
    }
    tmd_lattice_plan_destroy(&p);
    free(img);
}

/* tmd_lattice_measure_input over the ranks: the real image gives the same lattice bits on
 * every rank (and rank count), ~0.177 A/px; a noise image is refused with NOLATTICE on all
 * ranks, and the message names the remedy. */
static void test_measure_input(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    const char *path = TMD_SOURCE_DIR "/../shared/realdata/mos2-770da85.tif";
    tmd_reader *r = NULL;
    int ok = tmd_reader_open(&ctx, path, &r) == TMD_OK;
    int all_ok = 0;
    MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, tmd_test_comm);
    if (!all_ok) {
        tmd_reader_close(&r);
        return;
    }
    tmd_lattice lat;
    CU_ASSERT_EQUAL_FATAL(tmd_lattice_measure_input(&ctx, tmd_test_comm, r, 256, 4, NULL, &lat), TMD_OK);
    tmd_reader_close(&r);
    double px = tmd_lattice_pixel_size(&lat, TMD_A_MOS2);
    CU_ASSERT(fabs(px - 0.175) < 0.175 * 0.02);
    double v[4] = {lat.a1[0], lat.a1[1], lat.a2[0], lat.a2[1]}, v0[4];
    memcpy(v0, v, sizeof v);
    MPI_Bcast(v0, 4, MPI_DOUBLE, 0, tmd_test_comm);
    CU_ASSERT_EQUAL(memcmp(v, v0, sizeof v), 0);
    /* noise stack of 2 frames */
    const char *np = tmd_test_path("noise.tif");
    if (tmd_test_rank == 0) {
        float *img = malloc(sizeof(float) * 2 * 300 * 300);
        unsigned s = 3;
        for (int i = 0; i < 2 * 300 * 300; i++) img[i] = tmd_test_randf(&s);
        CU_ASSERT_EQUAL(tmd_tiff_write(&ctx, np, img, 2, 300, 300, TMD_F32, 0), TMD_OK);
        free(img);
    }
    MPI_Barrier(tmd_test_comm);
    CU_ASSERT_EQUAL_FATAL(tmd_reader_open(&ctx, np, &r), TMD_OK);
    tmd_lattice l2[2];
    CU_ASSERT_EQUAL(tmd_lattice_measure_input(&ctx, tmd_test_comm, r, 256, 1, NULL, l2), TMD_ERR_NOLATTICE);
    CU_ASSERT(strstr(ctx.err_msg, "--pixel-size") != NULL);
    tmd_reader_close(&r);
}

/* The input's own calibration (here a TIFF's ImageJ resolution, written by tmd_tiff_write_ex) is
 * what the lattice stage takes as the given pixel size when neither --pixel-size nor the
 * pixel_size key is set: the real MoS2 image saved with its true 0.175 A/px keeps it, with
 * 0.5 A/px (the lattice would be a = 9 A: a foreign or stale calibration) the stage refuses it
 * and measures, as it does with pixel_size_from_file = 0. Same decision on every rank. */
static void run_lattice_stage(tmd_ctx *ctx, const char *path, int from_file, double *file_px, double *period)
{
    tmd_run run;
    tmd_run_init(&run);
    run.cfg.pixel_size_from_file = from_file;
    MPI_Comm_dup(tmd_test_comm, &run.comm);
    snprintf(run.input, sizeof run.input, "%s", path);
    CU_ASSERT_EQUAL_FATAL(tmd_reader_open(ctx, path, &run.reader), TMD_OK);
    run.info = *tmd_reader_info(run.reader);
    CU_ASSERT_EQUAL(tmd_stage_lattice(ctx, &run), TMD_OK);
    *file_px = run.info.pixel_size;
    *period = run.lattice_a1 ? hypot(run.lattice_a1[0], run.lattice_a1[1]) : 0;
    tmd_run_free(&run);
}

static void test_file_calibration(void)
{
    const char *path = TMD_SOURCE_DIR "/../shared/realdata/mos2-770da85.tif";
    int h = 0, w = 0, ok = 1;
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    const char *good = tmd_test_path("calibrated.tif"), *bad = tmd_test_path("miscalibrated.tif");
    if (tmd_test_rank == 0) {
        float *img = read_tiff_f32(path, &h, &w);
        ok = img && tmd_tiff_write_ex(&ctx, good, img, 1, h, w, TMD_F32, 0, 0.175) == TMD_OK &&
             tmd_tiff_write_ex(&ctx, bad, img, 1, h, w, TMD_F32, 0, 0.5) == TMD_OK;
        free(img);
    }
    MPI_Bcast(&ok, 1, MPI_INT, 0, tmd_test_comm);
    if (!ok) {
        fprintf(stderr, "skipping: %s not readable\n", path);
        return;
    }
    double px = 0, period = 0, period_measured = 0;
    run_lattice_stage(&ctx, good, 1, &px, &period);
    CU_ASSERT(fabs(px - 0.175) < 1e-6);           /* kept: the scale stage uses it */
    CU_ASSERT(period * 0.175 > 2.9 && period * 0.175 < 3.5); /* the lattice agrees with it */
    run_lattice_stage(&ctx, good, 0, &px, &period_measured);
    CU_ASSERT_EQUAL(px, 0);                       /* pixel_size_from_file = 0: measured */
    run_lattice_stage(&ctx, bad, 1, &px, &period);
    CU_ASSERT_EQUAL(px, 0);                       /* refused: measured as without one */
    CU_ASSERT_EQUAL(period, period_measured);     /* the same lattice as with no calibration */
    double v[2] = {px, period}, v0[2] = {px, period};
    MPI_Bcast(v0, 2, MPI_DOUBLE, 0, tmd_test_comm);
    CU_ASSERT(v[0] == v0[0] && v[1] == v0[1]);
}

int main(int argc, char **argv)
{
    return tmd_test_main(argc, argv, "lattice",
                         (tmd_test_case[]){{"synthetic period/rotation/contrast grid", test_synthetic_grid},
                                           {"harmonic traps: first order at long periods and alike sublattices",
                                            test_harmonic_traps},
                                           {"vector conventions, strain, Vegard", test_conventions},
                                           {"fast-scan pixel size under scan compression", test_fast_scan},
                                           {"no lattice is refused", test_no_lattice},
                                           {"allreduce same on any rank count", test_allreduce},
                                           {"local ideal-site fit", test_local_fit},
                                           {"real MoS2 image pixel size", test_real_image},
                                           {"whole input over ranks", test_measure_input},
                                           {"the input's calibration: kept or refused by the lattice",
                                            test_file_calibration},
                                           {NULL, NULL}});
}
