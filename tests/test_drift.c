/* Drift: sub-pixel registration of synthetic honeycomb frames with known shifts, robust to
 * noise, vacancies and a moving contamination blob, not locking onto a lattice period when
 * the total drift is several periods, averaging out the scan's line wobble, and the same drift
 * on 1, 2 and 4 ranks. */
/* TMD_TEST_RANKS: 1 2 4 */
/* TMD_TEST_TIMEOUT: 120 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "tmd/drift.h"

static double blob_amp = 1.5;
static double film_edge = 1e9; /* columns whose frame-0 x exceeds this are vacuum (a film edge) */
static int adatoms = 0;        /* bright single atoms jumping at random over the frame (vacuum too) */
static double wobble_amp = 0, wobble_period = 190, wobble_phase = 0; /* scan line wobble: x += amp sin(2 pi y / P + phase) */

typedef struct {
    int64_t T, H, W;
    float *px;      /* (T, H, W) */
    double *truth;  /* (T, 2) */
    double wob0;    /* frame 0's mean wobble shift */
} synth_stack;

/* Honeycomb of Gaussian columns: lattice constant a px, rotation rot, A bright, B dimmer;
 * content of frame 0 at (x, y) appears at (x + dx, y + dy). Some sites empty (vacancies). */
static void render(float *img, int64_t H, int64_t W, double a, double rot, double dx, double dy, double blob_x,
                   double blob_y, double noise, unsigned *rng)
{
    double a1x = a * cos(rot), a1y = a * sin(rot);
    double a2x = a * cos(rot + M_PI / 3), a2y = a * sin(rot + M_PI / 3);
    double bx = (a1x + a2x) / 3, by = (a1y + a2y) / 3;
    for (int64_t i = 0; i < H * W; i++) img[i] = 0.1f;
    int R = (int)(2 * (H + W) / a) + 4;
    for (int i = -R; i <= R; i++)
        for (int j = -R; j <= R; j++)
            for (int s = 0; s < 2; s++) {
                unsigned h = (unsigned)(i * 7919 + j * 104729 + s * 31) * 2654435761u;
                if ((h >> 24) % 23 == 0) continue; /* a fixed vacancy */
                double x = 10 + i * a1x + j * a2x + s * bx + dx, y = 10 + i * a1y + j * a2y + s * by + dy;
                if (x - dx > film_edge) continue;
                x += wobble_amp * sin(2 * M_PI * y / wobble_period + wobble_phase);
                if (x < -8 || y < -8 || x > W + 8 || y > H + 8) continue;
                double amp = s ? 0.45 : 1.0, sg = 2.6;
                for (int yy = (int)floor(y) - 8; yy <= (int)floor(y) + 9; yy++)
                    for (int xx = (int)floor(x) - 8; xx <= (int)floor(x) + 9; xx++) {
                        if (yy < 0 || xx < 0 || yy >= H || xx >= W) continue;
                        double r2 = (xx - x) * (xx - x) + (yy - y) * (yy - y);
                        img[yy * W + xx] += (float)(amp * exp(-r2 / (2 * sg * sg)));
                    }
            }
    for (int k = 0; k < adatoms; k++) { /* uncorrelated with the drift: they jump every frame */
        double ax = W * tmd_test_randf(rng), ay = H * tmd_test_randf(rng);
        for (int64_t yy = (int64_t)ay - 8; yy <= (int64_t)ay + 8; yy++)
            for (int64_t xx = (int64_t)ax - 8; xx <= (int64_t)ax + 8; xx++)
                if (yy >= 0 && xx >= 0 && yy < H && xx < W)
                    img[yy * W + xx] += (float)(0.8 * exp(-((xx - ax) * (xx - ax) + (yy - ay) * (yy - ay)) / (2 * 2.6 * 2.6)));
    }
    for (int64_t y = 0; y < H; y++)
        for (int64_t x = 0; x < W; x++) {
            double r2 = (x - blob_x) * (x - blob_x) + (y - blob_y) * (y - blob_y);
            float u1 = tmd_test_randf(rng) + 1e-7f, u2 = tmd_test_randf(rng);
            float g = (float)(sqrt(-2 * log(u1)) * cos(2 * M_PI * u2));
            img[y * W + x] += (float)(blob_amp * exp(-r2 / (2 * 30.0 * 30.0))) + (float)noise * g;
        }
}

static void make_stack(synth_stack *s, int64_t T, int64_t H, int64_t W, double step, double noise)
{
    s->T = T;
    s->H = H;
    s->W = W;
    s->px = malloc(sizeof(float) * T * H * W);
    s->truth = malloc(sizeof(double) * T * 2);
    unsigned rng = 12345;
    double dx = 0, dy = 0;
    for (int64_t t = 0; t < T; t++) {
        if (t > 0) {
            dx += step + 0.3 * (tmd_test_randf(&rng) - 0.5);
            dy += -0.6 * step + 0.3 * (tmd_test_randf(&rng) - 0.5);
        }
        s->truth[2 * t] = dx;
        s->truth[2 * t + 1] = dy;
        if (wobble_amp > 0) { /* a new phase per frame; truth: the mean x shift over the rows, relative to frame 0 */
            wobble_phase = 2 * M_PI * tmd_test_randf(&rng);
            double m = 0;
            for (int64_t y = 0; y < H; y++) m += wobble_amp * sin(2 * M_PI * (double)y / wobble_period + wobble_phase);
            m /= (double)H;
            if (t == 0) s->wob0 = m;
            s->truth[2 * t] += m - s->wob0;
        }
        /* the contamination blob moves on its own, against the drift */
        render(s->px + t * H * W, H, W, 29.3, 0.17, dx, dy, 60 + 4.0 * t, 200 - 3.0 * t, noise, &rng);
    }
}

static void free_stack(synth_stack *s)
{
    free(s->px);
    free(s->truth);
}

static tmd_status read_stack(tmd_ctx *ctx, void *user, int64_t t, int64_t y0, int64_t x0, int64_t h, int64_t w,
                             float *out)
{
    synth_stack *s = user;
    if (t < 0 || t >= s->T || y0 < 0 || x0 < 0 || y0 + h > s->H || x0 + w > s->W)
        return TMD_FAIL(ctx, TMD_ERR_RANGE, "test stack: region outside frame %lld", (long long)t);
    for (int64_t y = 0; y < h; y++) memcpy(out + y * w, s->px + (t * s->H + y0 + y) * s->W + x0, sizeof(float) * w);
    return TMD_OK;
}

static double rmse(const double *a, const double *b, int64_t T)
{
    double s = 0;
    for (int64_t i = 0; i < 2 * T; i++) s += (a[i] - b[i]) * (a[i] - b[i]);
    return sqrt(s / T);
}

/* Pairs of noise-free frames with known sub-pixel shifts: each recovered to 0.05 px. */
static void test_pair_subpixel(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    tmd_drift_plan *p = NULL;
    CU_ASSERT_EQUAL_FATAL(tmd_drift_plan_create(&ctx, 128, NULL, &p), TMD_OK);
    float *ref = malloc(sizeof(float) * 128 * 128), *mov = malloc(sizeof(float) * 128 * 128);
    const double shifts[][2] = {{0.0, 0.0}, {1.37, -0.62}, {-3.25, 2.5}, {0.5, 0.5}, {-0.11, 4.93}};
    unsigned rng = 1;
    render(ref, 128, 128, 29.3, 0.17, 0, 0, -1000, -1000, 0, &rng);
    for (size_t k = 0; k < sizeof shifts / sizeof shifts[0]; k++) {
        render(mov, 128, 128, 29.3, 0.17, shifts[k][0], shifts[k][1], -1000, -1000, 0, &rng);
        double d[2], q;
        CU_ASSERT_EQUAL(tmd_drift_register(&ctx, p, ref, mov, 0, 0, 8, d, &q), TMD_OK);
        /* the flat-topped taper along y weights the rows entering and leaving at the window's
         * top and bottom more than Hann: 0.040 px error for the 4.9 px shift with taper_y 0.75
         * (0.057 with 0.5, which would fail here; 0.03 with Hann) */
        double tol = 0.05;
        CU_ASSERT(fabs(d[0] - shifts[k][0]) < tol);
        CU_ASSERT(fabs(d[1] - shifts[k][1]) < tol);
        if (getenv("TMDFLOW_TEST_DEBUG")) printf("\n  pair shift (%.2f, %.2f): error (%.3f, %.3f)", shifts[k][0], shifts[k][1], d[0] - shifts[k][0], d[1] - shifts[k][1]);
        CU_ASSERT(q > 5);
    }
    free(ref);
    free(mov);
    tmd_drift_plan_destroy(&p);
    CU_ASSERT_PTR_NULL(p);
    tmd_drift_plan_destroy(&p); /* NULL is accepted */
}

/* The shortest period of a honeycomb (the (100) row spacing a*sqrt(3)/2) is found through
 * noise and a contamination blob. */
static void test_period(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    tmd_drift_plan *p = NULL;
    CU_ASSERT_EQUAL_FATAL(tmd_drift_plan_create(&ctx, 256, NULL, &p), TMD_OK);
    float *img = malloc(sizeof(float) * 256 * 256);
    unsigned rng = 3;
    render(img, 256, 256, 29.3, 0.17, 0, 0, 100, 100, 0.35, &rng);
    double period = 0;
    CU_ASSERT_EQUAL(tmd_drift_period(&ctx, p, img, &period), TMD_OK);
    /* (100) spacing a*sqrt(3)/2, or (110) spacing a/2 whose structure factor is larger when A ~ B */
    CU_ASSERT(fabs(period - 29.3 * sqrt(3) / 2) < 1.5 || fabs(period - 29.3 / 2) < 1.0);
    free(img);
    tmd_drift_plan_destroy(&p);
}

/* A noisy stack with a moving contamination blob and a total drift of more than one lattice
 * period: RMSE against the truth <= 0.1 px (target 0.3), on any number of ranks, and the
 * parallel answer equals the one-rank answer. */
static void test_stack_noisy_and_rank_invariant(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    synth_stack s;
    if (getenv("DRIFT_BLOB")) blob_amp = atof(getenv("DRIFT_BLOB"));
    make_stack(&s, 24, 300, 300, 1.6, getenv("DRIFT_NOISE") ? atof(getenv("DRIFT_NOISE")) : 0.35);
    tmd_drift_opts o;
    tmd_drift_opts_default(&o);
    if (getenv("DRIFT_ALPHA")) o.alpha = atof(getenv("DRIFT_ALPHA"));
    if (getenv("DRIFT_LP")) o.lowpass = atof(getenv("DRIFT_LP"));
    if (getenv("DRIFT_HP")) o.highpass_px = atof(getenv("DRIFT_HP"));
    tmd_drift_plan *p = NULL;
    CU_ASSERT_EQUAL_FATAL(tmd_drift_plan_create(&ctx, 256, &o, &p), TMD_OK);
    double *par = calloc(2 * s.T, sizeof(double)), *ser = calloc(2 * s.T, sizeof(double));
    int64_t t0, nt;
    tmd_drift_block(s.T, tmd_test_rank, tmd_test_size, &t0, &nt);
    CU_ASSERT_EQUAL(tmd_drift_stack(&ctx, tmd_test_comm, p, read_stack, &s, s.T, s.H, s.W, t0, nt, par), TMD_OK);
    CU_ASSERT_EQUAL(tmd_drift_stack(&ctx, MPI_COMM_SELF, p, read_stack, &s, s.T, s.H, s.W, 0, s.T, ser), TMD_OK);
    double e = rmse(par, s.truth, s.T);
    if (tmd_test_rank == 0 && getenv("TMDFLOW_TEST_DEBUG"))
        for (int64_t t = 0; t < s.T; t++)
            printf("t %2lld truth %7.3f %7.3f est %7.3f %7.3f\n", (long long)t, s.truth[2 * t], s.truth[2 * t + 1], par[2 * t], par[2 * t + 1]);
    if (tmd_test_rank == 0 && getenv("TMDFLOW_TEST_DEBUG")) printf("\ndrift rmse %.4f px, final truth (%.2f, %.2f)\n", e, s.truth[2 * s.T - 2], s.truth[2 * s.T - 1]);
    CU_ASSERT(e < 0.2);
    CU_ASSERT(fabs(s.truth[2 * s.T - 2]) > 29.3); /* more than one period: a period lock would show */
    double maxdiff = 0;
    for (int64_t i = 0; i < 2 * s.T; i++) maxdiff = fmax(maxdiff, fabs(par[i] - ser[i]));
    if (getenv("TMDFLOW_TEST_DEBUG")) printf("rank %d: max difference to one rank %.3g px\n", tmd_test_rank, maxdiff);
    CU_ASSERT(maxdiff == 0); /* the same to the last bit (fixed-point chain and means) */
    CU_ASSERT_EQUAL(par[0], 0);
    CU_ASSERT_EQUAL(par[1], 0);
    /* without the refinements the chain random-walks but stays well within half a period;
     * the chain alone (block sums chained by MPI_Exscan) is the same to the last bit too */
    tmd_drift_plan_destroy(&p);
    o.refine_to_first = 0;
    CU_ASSERT_EQUAL_FATAL(tmd_drift_plan_create(&ctx, 256, &o, &p), TMD_OK);
    CU_ASSERT_EQUAL(tmd_drift_stack(&ctx, tmd_test_comm, p, read_stack, &s, s.T, s.H, s.W, t0, nt, par), TMD_OK);
    CU_ASSERT_EQUAL(tmd_drift_stack(&ctx, MPI_COMM_SELF, p, read_stack, &s, s.T, s.H, s.W, 0, s.T, ser), TMD_OK);
    CU_ASSERT(memcmp(par, ser, sizeof(double) * 2 * s.T) == 0);
    CU_ASSERT(rmse(par, s.truth, s.T) < 1.0);
    tmd_drift_plan_destroy(&p);
    free(par);
    free(ser);
    free_stack(&s);
}

/* The field of view drifts by more than its own size (a long stack, 2.4 px per frame): no frame
 * late in the stack overlaps frame 0, so frames are registered against keyframe segments
 * chained through their means. RMSE <= 0.3 px, and 1 rank = N ranks. */
static void test_stack_drifts_out_of_view(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    synth_stack s;
    make_stack(&s, 90, 192, 192, 2.4, 0.25);
    tmd_drift_plan *p = NULL;
    CU_ASSERT_EQUAL_FATAL(tmd_drift_plan_create(&ctx, 128, NULL, &p), TMD_OK);
    double *par = calloc(2 * s.T, sizeof(double)), *ser = calloc(2 * s.T, sizeof(double));
    int64_t t0, nt;
    tmd_drift_block(s.T, tmd_test_rank, tmd_test_size, &t0, &nt);
    CU_ASSERT_EQUAL(tmd_drift_stack(&ctx, tmd_test_comm, p, read_stack, &s, s.T, s.H, s.W, t0, nt, par), TMD_OK);
    CU_ASSERT_EQUAL(tmd_drift_stack(&ctx, MPI_COMM_SELF, p, read_stack, &s, s.T, s.H, s.W, 0, s.T, ser), TMD_OK);
    double e = rmse(par, s.truth, s.T);
    if (tmd_test_rank == 0 && getenv("TMDFLOW_TEST_DEBUG"))
    {
        printf("\nout-of-view drift rmse %.4f px, final truth (%.1f, %.1f)\n", e, s.truth[2 * s.T - 2], s.truth[2 * s.T - 1]);
        for (int64_t t = 0; t < s.T; t += 3) printf("  t %lld err %.3f %.3f\n", (long long)t, par[2 * t] - s.truth[2 * t], par[2 * t + 1] - s.truth[2 * t + 1]);
    }
    CU_ASSERT(fabs(s.truth[2 * s.T - 2]) > 192); /* the last frame shares nothing with frame 0 */
    CU_ASSERT(e < 0.3);
    double maxdiff = 0;
    for (int64_t i = 0; i < 2 * s.T; i++) maxdiff = fmax(maxdiff, fabs(par[i] - ser[i]));
    CU_ASSERT(maxdiff < 1e-9);
    tmd_drift_plan_destroy(&p);
    free(par);
    free(ser);
    free_stack(&s);
}

/* Frame 0 is mostly vacuum: the film edge crosses it 45 px from its left border (the centred
 * registration window sees only noise, a contamination blob and single atoms jumping about),
 * and the film drifts into the field (1.6 px per frame). The drift convention is relative to
 * frame 0, so its few columns must be used: the window of each keyframe segment is placed where
 * its content shows lattice. RMSE <= 0.3 px (the centred window gave a constant offset of
 * several px), and 1 rank = N ranks. */
static void test_stack_poor_first_frame(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    synth_stack s;
    film_edge = 45;
    adatoms = 12;
    make_stack(&s, 40, 300, 300, 1.6, 0.35);
    film_edge = 1e9;
    adatoms = 0;
    tmd_drift_plan *p = NULL;
    CU_ASSERT_EQUAL_FATAL(tmd_drift_plan_create(&ctx, 256, NULL, &p), TMD_OK);
    double *par = calloc(2 * s.T, sizeof(double)), *ser = calloc(2 * s.T, sizeof(double));
    int64_t t0, nt;
    tmd_drift_block(s.T, tmd_test_rank, tmd_test_size, &t0, &nt);
    CU_ASSERT_EQUAL(tmd_drift_stack(&ctx, tmd_test_comm, p, read_stack, &s, s.T, s.H, s.W, t0, nt, par), TMD_OK);
    CU_ASSERT_EQUAL(tmd_drift_stack(&ctx, MPI_COMM_SELF, p, read_stack, &s, s.T, s.H, s.W, 0, s.T, ser), TMD_OK);
    double e = rmse(par, s.truth, s.T);
    if (tmd_test_rank == 0 && getenv("TMDFLOW_TEST_DEBUG")) {
        printf("\npoor first frame: drift rmse %.4f px, final truth (%.1f, %.1f)\n", e, s.truth[2 * s.T - 2], s.truth[2 * s.T - 1]);
        for (int64_t t = 0; t < s.T; t += 3) printf("  t %lld err %.3f %.3f\n", (long long)t, par[2 * t] - s.truth[2 * t], par[2 * t + 1] - s.truth[2 * t + 1]);
    }
    CU_ASSERT(e < 0.3);
    double maxdiff = 0;
    for (int64_t i = 0; i < 2 * s.T; i++) maxdiff = fmax(maxdiff, fabs(par[i] - ser[i]));
    CU_ASSERT(maxdiff < 1e-9);
    CU_ASSERT_EQUAL(par[0], 0);
    CU_ASSERT_EQUAL(par[1], 0);
    tmd_drift_plan_destroy(&p);
    free(par);
    free(ser);
    free_stack(&s);
}

/* The scan's line wobble (every row's content shifted in x by 0.5 px sin(2 pi y / 190 + phase),
 * a new phase in every frame, as the simulator's wobble): the true drift is the mean shift over
 * the frame's rows; a registration weighting the rows by Hann squared (the apodisation before
 * 2026-11-26) measures a different mean in every frame (RMSE 0.41 px here), the flat-topped
 * taper along y (default taper_y 0.75) averages more of it out (0.30 px; 0.17 with 0.5, which
 * biased the 1000-frame film-edge stack). RMSE <= 0.33 px and at least 0.07 px below the Hann
 * figure, and 1 rank = N ranks. */
static void test_stack_line_wobble(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    synth_stack s;
    wobble_amp = 0.5;
    make_stack(&s, 24, 300, 300, 1.2, 0.2);
    wobble_amp = 0;
    tmd_drift_plan *p = NULL;
    CU_ASSERT_EQUAL_FATAL(tmd_drift_plan_create(&ctx, 256, NULL, &p), TMD_OK);
    double *par = calloc(2 * s.T, sizeof(double)), *ser = calloc(2 * s.T, sizeof(double));
    int64_t t0, nt;
    tmd_drift_block(s.T, tmd_test_rank, tmd_test_size, &t0, &nt);
    CU_ASSERT_EQUAL(tmd_drift_stack(&ctx, tmd_test_comm, p, read_stack, &s, s.T, s.H, s.W, t0, nt, par), TMD_OK);
    CU_ASSERT_EQUAL(tmd_drift_stack(&ctx, MPI_COMM_SELF, p, read_stack, &s, s.T, s.H, s.W, 0, s.T, ser), TMD_OK);
    double e = rmse(par, s.truth, s.T);
    if (tmd_test_rank == 0 && getenv("TMDFLOW_TEST_DEBUG")) printf("\nline wobble: drift rmse %.4f px\n", e);
    CU_ASSERT(e < 0.33);
    double maxdiff = 0;
    for (int64_t i = 0; i < 2 * s.T; i++) maxdiff = fmax(maxdiff, fabs(par[i] - ser[i]));
    CU_ASSERT(maxdiff < 1e-9);
    tmd_drift_plan_destroy(&p);
    /* the same stack with Hann along y (taper_y = 1) */
    tmd_drift_opts o;
    tmd_drift_opts_default(&o);
    o.taper_y = 1;
    CU_ASSERT_EQUAL_FATAL(tmd_drift_plan_create(&ctx, 256, &o, &p), TMD_OK);
    CU_ASSERT_EQUAL(tmd_drift_stack(&ctx, MPI_COMM_SELF, p, read_stack, &s, s.T, s.H, s.W, 0, s.T, ser), TMD_OK);
    double eh = rmse(ser, s.truth, s.T);
    if (tmd_test_rank == 0 && getenv("TMDFLOW_TEST_DEBUG")) printf("line wobble, Hann along y: drift rmse %.4f px\n", eh);
    CU_ASSERT(eh > e + 0.07);
    tmd_drift_plan_destroy(&p);
    free(par);
    free(ser);
    free_stack(&s);
}

/* Blocks that do not follow each other are refused on every rank with a message. */
static void test_bad_blocks_refused(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    synth_stack s;
    make_stack(&s, 4, 64, 64, 0.5, 0.0);
    tmd_drift_plan *p = NULL;
    CU_ASSERT_EQUAL_FATAL(tmd_drift_plan_create(&ctx, 64, NULL, &p), TMD_OK);
    double drift[8];
    tmd_status st = tmd_drift_stack(&ctx, tmd_test_comm, p, read_stack, &s, s.T, s.H, s.W, 1, 3, drift);
    CU_ASSERT_EQUAL(st, TMD_ERR_ARG);
    CU_ASSERT_PTR_NOT_NULL(strstr(ctx.err_msg, "block"));
    tmd_drift_plan_destroy(&p);
    free_stack(&s);
}

int main(int argc, char **argv)
{
    return tmd_test_main(argc, argv, "drift",
                         (tmd_test_case[]){{"pair sub-pixel", test_pair_subpixel},
                                           {"lattice period", test_period},
                                           {"noisy stack, rank invariant", test_stack_noisy_and_rank_invariant},
                                           {"drift beyond the field of view", test_stack_drifts_out_of_view},
                                           {"poor (mostly vacuum) first frame", test_stack_poor_first_frame},
                                           {"scan line wobble", test_stack_line_wobble},
                                           {"bad blocks refused", test_bad_blocks_refused},
                                           {0}});
}
