/* Tests of the atom finder (module atoms) on simulated images and probability maps.
 * Proves: every column of a synthetic honeycomb (Gaussian columns of two brightnesses at
 * sub-pixel positions, some exactly on tile edges, some at the image border) is found once,
 * with sub-pixel accuracy (noise-free rms < 0.02 px; with noise rms < 0.15 px), with the class of
 * its probability map and an intensity that orders bright above dim; running it tile by tile
 * with a halo (ownership by centre) gives exactly — bit for bit — the whole-image atoms, for
 * tile grids that do and do not divide the image and for two nominal/input scales; an empty
 * probability map gives no atoms; peaks of a probability map over an image of pure noise are
 * dropped by the significance test (and kept without it); a column too dim to be significant
 * is kept beside significant neighbours at bond length and dropped when alone; an empty site
 * there (a dip between the neighbours' probe tails) is dropped even where the probability map
 * claims a column; one column seen as two close peaks gives one atom; a dim, unsure patch
 * inside the lattice is found from its significant rim inwards over rounds of the neighbour
 * rule (and noise is not, whatever the rounds). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "tmd/atoms.h"

typedef struct {
    int64_t n;
    double *x, *y;
    int *cls;
} truth_t;

/* Honeycomb with bond b px, plus columns forced onto tile edges x = k*edge - 0.5. */
static void make_truth(truth_t *t, int64_t H, int64_t W, double b, int64_t edge)
{
    t->n = 0;
    t->x = malloc(sizeof(double) * 20000);
    t->y = malloc(sizeof(double) * 20000);
    t->cls = malloc(sizeof(int) * 20000);
    double a = b * sqrt(3.0);
    for (int j = -2; j < (int)(H / (1.5 * b)) + 2; j++)
        for (int i = -2; i < (int)(W / a) + 2; i++)
            for (int sub = 0; sub < 2; sub++) {
                double x = i * a + (j % 2 ? a / 2 : 0) + 3.3;
                double y = j * 1.5 * b + (sub ? b : 0) + 2.7;
                if (sub) { /* the B site sits b below the A site, shifted by a/2 */
                    x += a / 2;
                    y -= b / 2;
                }
                if (x < 1 || y < 1 || x > W - 2 || y > H - 2) continue;
                t->x[t->n] = x;
                t->y[t->n] = y;
                t->cls[t->n] = sub ? 3 : 2; /* W on A, S2 on B */
                t->n++;
            }
    /* move the column nearest to each tile edge exactly onto it */
    for (int64_t k = 1; k * edge < W; k++) {
        double ex = (double)(k * edge) - 0.5;
        int64_t best = -1;
        for (int64_t i = 0; i < t->n; i++)
            if (t->y[i] > 10 && t->y[i] < H - 10 && (best < 0 || fabs(t->x[i] - ex) < fabs(t->x[best] - ex))) best = i;
        if (best >= 0 && fabs(t->x[best] - ex) < 1.2) t->x[best] = ex;
    }
}

static float *render(const truth_t *t, int64_t H, int64_t W, double sg, unsigned noise_seed, double noise)
{
    float *img = calloc((size_t)(H * W), sizeof(float));
    for (int64_t i = 0; i < t->n; i++) {
        double amp = t->cls[i] == 2 ? 1.0 : 0.45;
        for (int64_t y = (int64_t)(t->y[i] - 4 * sg); y <= (int64_t)(t->y[i] + 4 * sg) + 1; y++)
            for (int64_t x = (int64_t)(t->x[i] - 4 * sg); x <= (int64_t)(t->x[i] + 4 * sg) + 1; x++) {
                if (y < 0 || x < 0 || y >= H || x >= W) continue;
                double dy = y - t->y[i], dx = x - t->x[i];
                img[y * W + x] += (float)(amp * exp(-(dx * dx + dy * dy) / (2 * sg * sg)));
            }
    }
    if (noise > 0)
        for (int64_t i = 0; i < H * W; i++) img[i] += (float)(noise * (tmd_test_randf(&noise_seed) - 0.5));
    return img;
}

/* 6-class probabilities on the nominal grid (nominal pixel Y at input y = Y * s). */
static float *prob_map(const truth_t *t, int64_t M, int64_t PH, int64_t PW, double s, double sg)
{
    /* rows/columns -M .. PH-M-1: the map extends M nominal pixels beyond the image, as the
     * pipeline's windows do (there the U-Net sees the reflected image) */
    int64_t np = PH * PW;
    float *p = calloc((size_t)(6 * np), sizeof(float));
    for (int64_t i = 0; i < np; i++) p[i] = 1;
    for (int64_t k = 0; k < t->n; k++) {
        int64_t Yc = (int64_t)(t->y[k] / s) + M, Xc = (int64_t)(t->x[k] / s) + M;
        int64_t R = (int64_t)(4 * sg / s) + 2;
        for (int64_t Y = Yc - R; Y <= Yc + R; Y++)
            for (int64_t X = Xc - R; X <= Xc + R; X++) {
                if (Y < 0 || X < 0 || Y >= PH || X >= PW) continue;
                double dy = (Y - M) * s - t->y[k], dx = (X - M) * s - t->x[k];
                double v = exp(-(dx * dx + dy * dy) / (2 * sg * sg));
                int64_t i = Y * PW + X;
                if (1 - v < p[i]) {
                    p[i] = (float)(1 - v);
                    for (int c = 1; c < 6; c++) p[c * np + i] = c == t->cls[k] ? (float)v : 0;
                }
            }
    }
    return p;
}

static int cmp_atoms(const void *a, const void *b)
{
    const double *p = a, *q = b;
    if (p[0] != q[0]) return p[0] < q[0] ? -1 : 1;
    if (p[1] != q[1]) return p[1] < q[1] ? -1 : 1;
    return 0;
}

/* Rows (y, x, intensity, p1..p5) sorted, for exact comparison. */
static double *rows_of(const tmd_atom_table *a)
{
    double *r = malloc(sizeof(double) * (size_t)(a->n * 8 + 1));
    for (int64_t i = 0; i < a->n; i++) {
        r[i * 8] = a->y[i];
        r[i * 8 + 1] = a->x[i];
        r[i * 8 + 2] = a->intensity[i];
        for (int c = 1; c < 6; c++) r[i * 8 + 2 + c] = a->prob[i * 6 + c];
    }
    qsort(r, (size_t)a->n, sizeof(double) * 8, cmp_atoms);
    return r;
}

static void find_tiled(const tmd_atoms_params *ap, const float *img, const float *prob, int64_t H, int64_t W, int64_t M,
                       int64_t PH, int64_t PW, double s, int64_t edge, int64_t halo, tmd_atom_table *out)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    for (int64_t ty = 0; ty * edge < H; ty++)
        for (int64_t tx = 0; tx * edge < W; tx++) {
            tmd_box core = {{0, ty * edge, tx * edge}, {1, (ty + 1) * edge, (tx + 1) * edge}};
            if (core.hi[1] > H) core.hi[1] = H;
            if (core.hi[2] > W) core.hi[2] = W;
            int64_t y0 = core.lo[1] - halo < 0 ? 0 : core.lo[1] - halo, y1 = core.hi[1] + halo > H ? H : core.hi[1] + halo;
            int64_t x0 = core.lo[2] - halo < 0 ? 0 : core.lo[2] - halo, x1 = core.hi[2] + halo > W ? W : core.hi[2] + halo;
            float *sub = malloc(sizeof(float) * (size_t)((y1 - y0) * (x1 - x0)));
            for (int64_t y = y0; y < y1; y++) memcpy(sub + (y - y0) * (x1 - x0), img + y * W + x0, sizeof(float) * (size_t)(x1 - x0));
            /* nominal window covering the tile grown by the halo (beyond the image at its edges) */
            int64_t Y0 = (int64_t)ceil((core.lo[1] - halo) / s), Y1 = (int64_t)floor((core.hi[1] - 1 + halo) / s) + 1;
            int64_t X0 = (int64_t)ceil((core.lo[2] - halo) / s), X1 = (int64_t)floor((core.hi[2] - 1 + halo) / s) + 1;
            if (Y0 < -M) Y0 = -M;
            if (X0 < -M) X0 = -M;
            if (Y1 > PH - M) Y1 = PH - M;
            if (X1 > PW - M) X1 = PW - M;
            int64_t ph = Y1 - Y0, pw = X1 - X0;
            float *ps = malloc(sizeof(float) * (size_t)(6 * ph * pw));
            for (int c = 0; c < 6; c++)
                for (int64_t Y = 0; Y < ph; Y++)
                    memcpy(ps + c * ph * pw + Y * pw, prob + c * PH * PW + (Y0 + M + Y) * PW + X0 + M,
                           sizeof(float) * (size_t)pw);
            tmd_atoms_seg seg = {ps, 6, Y0, X0, ph, pw, s};
            tmd_atoms_img im = {sub, y0, x0, y1 - y0, x1 - x0, H, W};
            CU_ASSERT_EQUAL(tmd_atoms_find(&ctx, ap, &seg, &im, 0, &core, out), TMD_OK);
            free(sub);
            free(ps);
        }
}

static void check_scale(double s, double noise, double tol)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    const int64_t H = 203, W = 251, edge = 50;
    const double b = 1.82 / 0.12 * 0.8; /* bond in input px (input 0.15 A/px) */
    truth_t t;
    make_truth(&t, H, W, b, edge);
    float *img = render(&t, H, W, 2.2, 11, noise);
    const int64_t M = 20;
    int64_t PH = (int64_t)floor((H - 1) / s) + 1 + 2 * M, PW = (int64_t)floor((W - 1) / s) + 1 + 2 * M;
    float *prob = prob_map(&t, M, PH, PW, s, 2.0);
    tmd_atoms_params ap = {.threshold = 0.5, .sep = 1.0 / 0.12, .radius = 0.7 * 1.0 / 0.15, .refine = 1, .px_area = 0.0225};
    ap.sep = 5.0 / s; /* about 0.6 of the bond, in nominal px */
    ap.min_z = 3;     /* every real column passes the significance test */
    /* whole image as one tile */
    tmd_atom_table whole, tiled;
    tmd_atom_table_init(&whole, 6);
    tmd_atom_table_init(&tiled, 6);
    tmd_box all = {{0, 0, 0}, {1, H, W}};
    tmd_atoms_seg seg = {prob, 6, -M, -M, PH, PW, s};
    tmd_atoms_img im = {img, 0, 0, H, W, H, W};
    CU_ASSERT_EQUAL_FATAL(tmd_atoms_find(&ctx, &ap, &seg, &im, 0, &all, &whole), TMD_OK);
    /* every true column matched once, within tol */
    int64_t matched = 0, class_ok = 0;
    double maxerr = 0, ibright = 0, idim = 0, sq = 0;
    int nb = 0, nd = 0;
    char *used = calloc((size_t)whole.n + 1, 1);
    for (int64_t k = 0; k < t.n; k++) {
        int64_t best = -1;
        double bd = 1e9;
        for (int64_t i = 0; i < whole.n; i++) {
            double d = hypot(whole.x[i] - t.x[k], whole.y[i] - t.y[k]);
            if (d < bd) bd = d, best = i;
        }
        if (best >= 0 && bd < 2 && !used[best]) {
            used[best] = 1;
            matched++;
            if (bd > maxerr) maxerr = bd;
            sq += bd * bd;
            class_ok += whole.species[best] == t.cls[k];
            if (t.cls[k] == 2) ibright += whole.intensity[best], nb++;
            else idim += whole.intensity[best], nd++;
        }
    }
    CU_ASSERT_EQUAL(matched, t.n);
    CU_ASSERT_EQUAL(whole.n, t.n);
    double rms = sqrt(sq / (double)(matched ? matched : 1));
    CU_ASSERT(rms < tol);
    CU_ASSERT(maxerr < 4 * tol);
    CU_ASSERT_EQUAL(class_ok, t.n);
    CU_ASSERT(nb && nd && ibright / nb > 1.5 * idim / nd);
    if (getenv("TMDFLOW_TEST_DEBUG"))
        fprintf(stderr, "s %.2f noise %.2f: %lld/%lld matched, found %lld, rms %.4f max error %.4f px\n", s, noise,
                (long long)matched, (long long)t.n, (long long)whole.n, rms, maxerr);
    /* tile by tile: exactly the same atoms */
    int64_t halo = (int64_t)ceil(tmd_atoms_margin(&ap, s)) + 2;
    find_tiled(&ap, img, prob, H, W, M, PH, PW, s, edge, halo, &tiled);
    CU_ASSERT_EQUAL_FATAL(tiled.n, whole.n);
    double *r1 = rows_of(&whole), *r2 = rows_of(&tiled);
    CU_ASSERT_EQUAL(memcmp(r1, r2, sizeof(double) * 8 * (size_t)whole.n), 0);
    free(r1);
    free(r2);
    /* a grid that does not divide the image (edge 64: 203 = 3*64 + 11) */
    tmd_atom_table t2;
    tmd_atom_table_init(&t2, 6);
    find_tiled(&ap, img, prob, H, W, M, PH, PW, s, 64, halo, &t2);
    CU_ASSERT_EQUAL(t2.n, whole.n);
    r1 = rows_of(&whole);
    r2 = rows_of(&t2);
    if (t2.n == whole.n) CU_ASSERT_EQUAL(memcmp(r1, r2, sizeof(double) * 8 * (size_t)whole.n), 0);
    free(r1);
    free(r2);
    tmd_atom_table_free(&t2);
    free(used);
    tmd_atom_table_free(&whole);
    tmd_atom_table_free(&tiled);
    free(img);
    free(prob);
    free(t.x);
    free(t.y);
    free(t.cls);
}

static void test_noise_free_same_scale(void) { check_scale(1.0, 0, 0.02); }
static void test_noise_free_resampled(void) { check_scale(0.8, 0, 0.02); }
static void test_noisy(void) { check_scale(1.25, 0.2, 0.15); }
static void test_noisy_fine(void) { check_scale(0.7, 0.2, 0.15); }

/* Peaks of the probability map over pure noise are not columns: the significance test drops
 * them (and keeps them when switched off). */
static void test_noise_only(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    const int64_t H = 160, W = 170;
    truth_t t;
    make_truth(&t, H, W, 12.0, 1000);
    truth_t none = {0, NULL, NULL, NULL};
    float *img = render(&none, H, W, 2.0, 99, 0.3); /* noise only */
    const int64_t M = 10;
    int64_t PH = H + 2 * M, PW = W + 2 * M;
    float *prob = prob_map(&t, M, PH, PW, 1.0, 2.0);
    tmd_atoms_params ap = {.threshold = 0.5, .sep = 5, .radius = 4, .refine = 1, .px_area = 0.0144, .min_z = 3};
    tmd_box all = {{0, 0, 0}, {1, H, W}};
    tmd_atoms_seg seg = {prob, 6, -M, -M, PH, PW, 1.0};
    tmd_atoms_img im = {img, 0, 0, H, W, H, W};
    tmd_atom_table a, b;
    tmd_atom_table_init(&a, 6);
    tmd_atom_table_init(&b, 6);
    CU_ASSERT_EQUAL(tmd_atoms_find(&ctx, &ap, &seg, &im, 0, &all, &a), TMD_OK);
    ap.min_z = 0;
    CU_ASSERT_EQUAL(tmd_atoms_find(&ctx, &ap, &seg, &im, 0, &all, &b), TMD_OK);
    if (getenv("TMDFLOW_TEST_DEBUG"))
        fprintf(stderr, "noise: %lld peaks kept with the test, %lld without, %lld columns in the map\n", (long long)a.n,
                (long long)b.n, (long long)t.n);
    CU_ASSERT(b.n > t.n * 9 / 10);
    CU_ASSERT(a.n < b.n / 20);
    /* the lattice of the map does not vouch for itself: with the neighbour rule over many
     * rounds and weak candidates admitted, noise still gives (almost) nothing, because growth
     * needs significant columns to start from */
    tmd_atom_table c;
    tmd_atom_table_init(&c, 6);
    ap.min_z = 3, ap.min_z_weak = -2, ap.weak_contrast = -0.1, ap.bond = 12.0, ap.weak_rounds = 6, ap.weak_threshold = 0.3;
    CU_ASSERT_EQUAL(tmd_atoms_find(&ctx, &ap, &seg, &im, 0, &all, &c), TMD_OK);
    if (getenv("TMDFLOW_TEST_DEBUG")) fprintf(stderr, "noise, 6 rounds: %lld kept\n", (long long)c.n);
    CU_ASSERT(c.n < b.n / 20);
    tmd_atom_table_free(&a);
    tmd_atom_table_free(&b);
    tmd_atom_table_free(&c);
    free(img);
    free(prob);
    free(t.x), free(t.y), free(t.cls);
}

/* A dim column (below the significance threshold on its own) is kept when it sits at bond
 * length from significant columns, and dropped when it stands alone. */
static void test_dim_neighbour_rule(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    const int64_t H = 120, W = 120;
    const double b = 15.0; /* bond, px */
    /* a dim column at (60, 60) with three bright metals at bond length; a dim one alone at (25, 95) */
    truth_t t = {0, malloc(sizeof(double) * 8), malloc(sizeof(double) * 8), malloc(sizeof(int) * 8)};
    double ang[3] = {M_PI / 2, M_PI / 2 + 2 * M_PI / 3, M_PI / 2 + 4 * M_PI / 3};
    for (int k = 0; k < 3; k++) {
        t.x[t.n] = 60 + b * cos(ang[k]), t.y[t.n] = 60 + b * sin(ang[k]), t.cls[t.n] = 2;
        t.n++;
    }
    t.x[t.n] = 60, t.y[t.n] = 60, t.cls[t.n] = 3, t.n++;
    t.x[t.n] = 95, t.y[t.n] = 25, t.cls[t.n] = 3, t.n++;
    float *img = render(&t, H, W, 2.0, 5, 0.0);
    /* make the dim columns nearly invisible: scale them down under strong noise */
    unsigned seed = 77;
    for (int64_t y = 0; y < H; y++)
        for (int64_t x = 0; x < W; x++) {
            double d1 = hypot(x - 60.0, y - 60.0), d2 = hypot(x - 95.0, y - 25.0);
            if (d1 < 7 || d2 < 7) img[y * W + x] *= 0.05f;
            img[y * W + x] += (float)(0.3 * (tmd_test_randf(&seed) - 0.5));
        }
    const int64_t M = 10;
    float *prob = prob_map(&t, M, H + 2 * M, W + 2 * M, 1.0, 2.0);
    tmd_atoms_params ap = {.threshold = 0.5, .sep = 6, .radius = 4, .refine = 1, .px_area = 0.0144, .min_z = 3,
                           .min_z_weak = -2, .weak_contrast = -0.1, .bond = b};
    tmd_box all = {{0, 0, 0}, {1, H, W}};
    tmd_atoms_seg seg = {prob, 6, -M, -M, H + 2 * M, W + 2 * M, 1.0};
    tmd_atoms_img im = {img, 0, 0, H, W, H, W};
    tmd_atom_table a;
    tmd_atom_table_init(&a, 6);
    CU_ASSERT_EQUAL(tmd_atoms_find(&ctx, &ap, &seg, &im, 0, &all, &a), TMD_OK);
    int centre = 0, alone = 0, metals = 0;
    for (int64_t i = 0; i < a.n; i++) {
        centre += hypot(a.x[i] - 60, a.y[i] - 60) < 2;
        alone += hypot(a.x[i] - 95, a.y[i] - 25) < 2;
        metals += a.species[i] == 2;
    }
    CU_ASSERT_EQUAL(metals, 3);
    CU_ASSERT_EQUAL(centre, 1);
    CU_ASSERT_EQUAL(alone, 0);
    tmd_atom_table_free(&a);
    free(img);
    free(prob);
    free(t.x), free(t.y), free(t.cls);
}

/* A dim patch inside the lattice (a contaminated or low-dose region): columns there are too
 * dim to be significant and the probability map is unsure of them (column probability 0.4).
 * One round of the neighbour rule keeps only the patch's rim; with weak candidates admitted
 * (weak_threshold 0.3) and 6 rounds the whole patch is found from its rim inwards, every
 * column once — and tile by tile with the halo of tmd_atoms_margin the atoms are bit-identical
 * to the whole image's (the rounds reach further, the margin grows with them). Without
 * weak_threshold the unsure columns are not candidates at all. */
#ifndef PATCH_DIM
#define PATCH_DIM 0.35f
#define PATCH_NOISE 1.2
#endif
static void test_dim_patch_rounds(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    const int64_t H = 200, W = 240, M = 10;
    const double b = 12.0, cy = 100, cx = 120, rp = 36; /* patch: 3 bonds in radius */
    truth_t t;
    make_truth(&t, H, W, b, 1000);
    /* an empty metal site in the bright lattice that the map calls a column with 0.4 */
    int64_t vac = -1;
    for (int64_t k = 0; k < t.n; k++)
        if (t.cls[k] == 2 && (vac < 0 || hypot(t.y[k] - cy, t.x[k] - 195) < hypot(t.y[vac] - cy, t.x[vac] - 195))) vac = k;
    double vy = t.y[vac], vx = t.x[vac];
    t.n--; /* rendered without it, mapped with it */
    double sy = t.y[t.n], sx = t.x[t.n];
    int scl = t.cls[t.n];
    t.y[t.n] = vy, t.x[t.n] = vx, t.cls[t.n] = 2;
    t.y[vac] = sy, t.x[vac] = sx, t.cls[vac] = scl;
    float *img = render(&t, H, W, 2.0, 3, 0.0);
    t.n++;
    unsigned seed = 21;
    for (int64_t y = 0; y < H; y++)
        for (int64_t x = 0; x < W; x++) {
            if (hypot(y - cy, x - cx) < rp + 4) img[y * W + x] *= PATCH_DIM;
            img[y * W + x] += (float)(PATCH_NOISE * (tmd_test_randf(&seed) - 0.5));
        }
    int64_t PH = H + 2 * M, PW = W + 2 * M, np = PH * PW;
    float *prob = prob_map(&t, M, PH, PW, 1.0, 2.0);
    for (int64_t Y = 0; Y < PH; Y++)
        for (int64_t X = 0; X < PW; X++) {
            if (hypot((double)(Y - M) - cy, (double)(X - M) - cx) >= rp + 4 && hypot((double)(Y - M) - vy, (double)(X - M) - vx) > 6)
                continue;
            int64_t i = Y * PW + X;
            prob[i] = 1 - 0.4f * (1 - prob[i]);
            for (int c = 1; c < 6; c++) prob[c * np + i] *= 0.4f;
        }
    t.n--; /* the columns: without the empty site */
    int64_t inside = 0;
    for (int64_t k = 0; k < t.n; k++) inside += hypot(t.y[k] - cy, t.x[k] - cx) < rp;
    tmd_box all = {{0, 0, 0}, {1, H, W}};
    tmd_atoms_seg seg = {prob, 6, -M, -M, PH, PW, 1.0};
    tmd_atoms_img im = {img, 0, 0, H, W, H, W};
    struct {
        int rounds;
        double weak_threshold;
    } pass[3] = {{1, 0.3}, {6, 0}, {6, 0.3}};
    for (int ps = 0; ps < 3; ps++) {
        tmd_atoms_params ap = {.threshold = 0.5, .sep = 5, .radius = 4, .refine = 1, .px_area = 0.0144, .min_z = 3,
                               .min_z_weak = -2, .weak_contrast = -0.1, .bond = b, .weak_rounds = pass[ps].rounds,
                               .weak_threshold = pass[ps].weak_threshold};
        tmd_atom_table a;
        tmd_atom_table_init(&a, 6);
        CU_ASSERT_EQUAL_FATAL(tmd_atoms_find(&ctx, &ap, &seg, &im, 0, &all, &a), TMD_OK);
        int64_t found_in = 0, matched = 0, at_vacancy = 0;
        for (int64_t i = 0; i < a.n; i++) at_vacancy += hypot(a.x[i] - vx, a.y[i] - vy) < 0.3 * b;
        for (int64_t k = 0; k < t.n; k++) {
            int hit = 0;
            /* within 0.3 bond: the patch's columns are at SNR ~0.2, their centres noise-limited */
            for (int64_t i = 0; i < a.n; i++) hit += hypot(a.x[i] - t.x[k], a.y[i] - t.y[k]) < 0.3 * b;
            matched += hit == 1;
            if (hypot(t.y[k] - cy, t.x[k] - cx) < rp) found_in += hit > 0;
        }
        if (getenv("TMDFLOW_TEST_DEBUG"))
            fprintf(stderr,
                    "rounds %d, weak_threshold %.1f: %lld atoms, %lld of %lld columns once, %lld of %lld in the patch, "
                    "%lld at the empty site\n",
                    pass[ps].rounds, pass[ps].weak_threshold, (long long)a.n, (long long)matched, (long long)t.n,
                    (long long)found_in, (long long)inside, (long long)at_vacancy);
        CU_ASSERT_EQUAL(at_vacancy, 0);
        if (ps < 2) {
            CU_ASSERT(found_in < inside / 2);
        } else {
            /* the patch's columns are at SNR ~1 (the dim chalcogens below): nearly all, and
             * nothing that is not a column */
            CU_ASSERT(found_in >= inside - 2);
            CU_ASSERT_EQUAL(a.n, matched);
            tmd_atom_table tiled;
            tmd_atom_table_init(&tiled, 6);
            int64_t halo = (int64_t)ceil(tmd_atoms_margin(&ap, 1.0)) + 2;
            find_tiled(&ap, img, prob, H, W, M, PH, PW, 1.0, 60, halo, &tiled);
            CU_ASSERT_EQUAL(tiled.n, a.n);
            if (tiled.n == a.n) {
                double *r1 = rows_of(&a), *r2 = rows_of(&tiled);
                CU_ASSERT_EQUAL(memcmp(r1, r2, sizeof(double) * 8 * (size_t)a.n), 0);
                free(r1);
                free(r2);
            }
            tmd_atom_table_free(&tiled);
        }
        tmd_atom_table_free(&a);
    }
    free(img);
    free(prob);
    free(t.x), free(t.y), free(t.cls);
}

/* Adds a column with a probe tail (a second, wide Gaussian) to img. */
static void add_column(float *img, int64_t H, int64_t W, double cy, double cx, double amp, double sg, double tail,
                       double tail_sg)
{
    for (int64_t y = 0; y < H; y++)
        for (int64_t x = 0; x < W; x++) {
            double r2 = (y - cy) * (y - cy) + (x - cx) * (x - cx);
            img[y * W + x] += (float)(amp * exp(-r2 / (2 * sg * sg)) + tail * amp * exp(-r2 / (2 * tail_sg * tail_sg)));
        }
}

/* A vacancy between columns: the probability map claims a column at an empty B site with
 * three bright metals at bond length (as the U-Net does in contaminated, vacancy-rich
 * regions). The metals' probe tails raise the ring around the empty site, so its amplitude
 * is negative (-0.17 of a metal's here): dropped with min_z_weak = -2 and weak_contrast =
 * -0.1, kept when either part of the rule is relaxed (which proves both take part), while a
 * dim column (0.12 of a metal, its own amplitude about cancelled by the dip) at another B
 * site of the same kind is kept. */
static void test_empty_site_dropped(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    const int64_t H = 140, W = 180;
    const double b = 15.0, sg = 5.0; /* a 1.4 A probe at 0.12 A/px, bond 1.8 A */
    double site[2][2] = {{70, 55}, {70, 125}}; /* (y, x): [0] dim column, [1] empty */
    truth_t t = {0, malloc(sizeof(double) * 8), malloc(sizeof(double) * 8), malloc(sizeof(int) * 8)};
    float *img = calloc((size_t)(H * W), sizeof(float));
    double ang[3] = {M_PI / 2, M_PI / 2 + 2 * M_PI / 3, M_PI / 2 + 4 * M_PI / 3};
    for (int s = 0; s < 2; s++) {
        for (int k = 0; k < 3; k++) {
            double y = site[s][0] + b * sin(ang[k]), x = site[s][1] + b * cos(ang[k]);
            t.x[t.n] = x, t.y[t.n] = y, t.cls[t.n] = 2, t.n++;
            add_column(img, H, W, y, x, 1.0, sg, 0.05, 12.0);
        }
        t.x[t.n] = site[s][1], t.y[t.n] = site[s][0], t.cls[t.n] = 3, t.n++; /* in the map at both */
    }
    add_column(img, H, W, site[0][0], site[0][1], 0.12, sg, 0.05, 12.0);
    unsigned seed = 5;
    for (int64_t i = 0; i < H * W; i++) img[i] += (float)(0.02 * (tmd_test_randf(&seed) - 0.5));
    const int64_t M = 10;
    float *prob = prob_map(&t, M, H + 2 * M, W + 2 * M, 1.0, 2.0);
    tmd_atoms_params ap = {.threshold = 0.5, .sep = 6, .radius = 4, .refine = 1, .px_area = 0.0144, .min_z = 3,
                           .min_z_weak = -2, .weak_contrast = -0.1, .bond = b};
    tmd_box all = {{0, 0, 0}, {1, H, W}};
    tmd_atoms_seg seg = {prob, 6, -M, -M, H + 2 * M, W + 2 * M, 1.0};
    tmd_atoms_img im = {img, 0, 0, H, W, H, W};
    for (int pass = 0; pass < 3; pass++) {
        tmd_atom_table a;
        tmd_atom_table_init(&a, 6);
        ap.min_z_weak = pass == 1 ? -100 : -2;
        ap.weak_contrast = pass == 2 ? -1 : -0.1; /* pass 2: only dips deeper than a metal count */
        CU_ASSERT_EQUAL(tmd_atoms_find(&ctx, &ap, &seg, &im, 0, &all, &a), TMD_OK);
        int dim = 0, empty = 0, metals = 0;
        for (int64_t i = 0; i < a.n; i++) {
            dim += hypot(a.x[i] - site[0][1], a.y[i] - site[0][0]) < 2;
            empty += hypot(a.x[i] - site[1][1], a.y[i] - site[1][0]) < 3;
            metals += a.species[i] == 2;
        }
        if (getenv("TMDFLOW_TEST_DEBUG"))
            fprintf(stderr, "min_z_weak %g, weak_contrast %g: metals %d, dim column %d, empty site %d\n", ap.min_z_weak,
                    ap.weak_contrast, metals, dim, empty);
        CU_ASSERT_EQUAL(metals, 6);
        CU_ASSERT_EQUAL(dim, 1);
        CU_ASSERT_EQUAL(empty, pass ? 1 : 0);
        tmd_atom_table_free(&a);
    }
    free(img);
    free(prob);
    free(t.x), free(t.y), free(t.cls);
}

/* One column seen as two peaks of the probability map (0.27 bond apart, both beyond sep)
 * gives one atom — the peak of higher column probability — whether the image shows it
 * clearly or not at all (min_z off); two real columns 0.8 bond apart stay two atoms. */
static void test_duplicates_merged(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    const int64_t H = 100, W = 140;
    const double b = 15.0, sg = 2.0;
    truth_t map = {0, malloc(sizeof(double) * 8), malloc(sizeof(double) * 8), malloc(sizeof(int) * 8)};
    float *img = calloc((size_t)(H * W), sizeof(float));
    /* one column at (50, 40) with map peaks at x = 38 and 42; two columns at (50, 94) and (50, 106) */
    add_column(img, H, W, 50, 40, 1.0, sg, 0, 1);
    add_column(img, H, W, 50, 94, 1.0, sg, 0, 1);
    add_column(img, H, W, 50, 106, 1.0, sg, 0, 1);
    double mx[4] = {38, 42, 94, 106};
    for (int k = 0; k < 4; k++) map.x[map.n] = mx[k], map.y[map.n] = 50, map.cls[map.n] = 2, map.n++;
    const int64_t M = 10;
    float *prob = prob_map(&map, M, H + 2 * M, W + 2 * M, 1.0, 1.2);
    tmd_atoms_params ap = {.threshold = 0.5, .sep = 2, .radius = 4, .refine = 1, .px_area = 0.0144, .min_z = 3,
                           .min_z_weak = -2, .weak_contrast = -0.1, .bond = b};
    tmd_box all = {{0, 0, 0}, {1, H, W}};
    tmd_atoms_seg seg = {prob, 6, -M, -M, H + 2 * M, W + 2 * M, 1.0};
    tmd_atoms_img im = {img, 0, 0, H, W, H, W};
    for (int pass = 0; pass < 2; pass++) {
        tmd_atom_table a;
        tmd_atom_table_init(&a, 6);
        ap.min_z = pass ? 0 : 3;
        CU_ASSERT_EQUAL(tmd_atoms_find(&ctx, &ap, &seg, &im, 0, &all, &a), TMD_OK);
        int one = 0, two = 0;
        for (int64_t i = 0; i < a.n; i++) {
            one += hypot(a.x[i] - 40, a.y[i] - 50) < 3;
            two += fabs(a.y[i] - 50) < 2 && (fabs(a.x[i] - 94) < 2 || fabs(a.x[i] - 106) < 2);
        }
        if (getenv("TMDFLOW_TEST_DEBUG"))
            fprintf(stderr, "min_z %g: %lld atoms, %d at the single column, %d at the pair\n", ap.min_z, (long long)a.n,
                    one, two);
        CU_ASSERT_EQUAL(a.n, 3);
        CU_ASSERT_EQUAL(one, 1);
        CU_ASSERT_EQUAL(two, 2);
        tmd_atom_table_free(&a);
    }
    free(img);
    free(prob);
    free(map.x), free(map.y), free(map.cls);
}

static void test_empty(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    const int64_t H = 64, W = 64;
    float *img = calloc(H * W, sizeof(float)), *prob = calloc(6 * H * W, sizeof(float));
    for (int64_t i = 0; i < H * W; i++) prob[i] = 1; /* all background */
    tmd_atoms_params ap = {.threshold = 0.5, .sep = 8, .radius = 4, .refine = 1, .px_area = 0.0144};
    tmd_atom_table a;
    tmd_atom_table_init(&a, 6);
    tmd_box all = {{0, 0, 0}, {1, H, W}};
    tmd_atoms_seg seg = {prob, 6, 0, 0, H, W, 1.0};
    tmd_atoms_img im = {img, 0, 0, H, W, H, W};
    CU_ASSERT_EQUAL(tmd_atoms_find(&ctx, &ap, &seg, &im, 0, &all, &a), TMD_OK);
    CU_ASSERT_EQUAL(a.n, 0);
    tmd_atom_table_free(&a);
    free(img);
    free(prob);
}

int main(int argc, char **argv)
{
    return tmd_test_main(argc, argv, "atoms",
                         (tmd_test_case[]){{"noise-free, s = 1: exact, tiled == whole", test_noise_free_same_scale},
                                           {"noise-free, s = 0.8 (resampled grid)", test_noise_free_resampled},
                                           {"noisy, s = 1.25", test_noisy},
                                           {"noisy, s = 0.7", test_noisy_fine},
                                           {"empty probability map", test_empty},
                                           {"noise only: significance test drops the peaks", test_noise_only},
                                           {"dim column kept beside significant neighbours only", test_dim_neighbour_rule},
                                           {"empty site between columns dropped, dim column kept", test_empty_site_dropped},
                                           {"one column seen as two peaks: one atom", test_duplicates_merged},
                                           {"dim patch found from its rim in rounds, tiled == whole", test_dim_patch_rounds},
                                           {0}});
}
