/* The pipeline's classify stage: ghosts from the neighbouring ranks, sublattices, species,
 * vacancies; the pixel size refined by Vegard's law when it was measured (tmd/classify.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tmd/classify.h"
#include "classify_internal.h"
#include "tmd/halo.h"
#include "tmd/io.h"
#include "tmd/pipeline.h"

typedef struct {
    int64_t frame;
    double y;
    int64_t i;
} order_t;

/* below this lead (log units) of the fitted composition over the best one of a different
 * lattice constant, a run without a known pixel size warns that the species may be the twin's */
#define TWIN_WARN_LOG_UNITS 5.0

static int cmp_order(const void *a, const void *b)
{
    const order_t *p = a, *q = b;
    if (p->frame != q->frame) return p->frame < q->frame ? -1 : 1;
    if (p->y != q->y) return p->y < q->y ? -1 : 1;
    return (p->i > q->i) - (p->i < q->i);
}

/* Column contrast for the Z^n model, measured on the raw input: the column's amplitude in a
 * linear least-squares fit over a disc of MODEL_R bond around it of
 *     a0 p(r - c) + sum_k a_k p(r - c - s delta_k) + b0 + b1 x + b2 y
 * where p is the column profile (a Gaussian of width psig bond, measured on the image by
 * profile_sigma), the six places +-delta_k one bond away hold the three bonded neighbours and
 * the three hollow sites (their amplitudes are fitted, so a neighbour's overlap is not taken
 * for the column), and the plane is the local background (substrate, probe tails, the smooth
 * part of contamination). Fitted twice: unweighted, then weighted by 1 / (the first fit's
 * value, floored at 0.1 of its largest in the disc), the shot-noise variance; this is the
 * optimal linear estimate of the column's height under Poisson-like noise. The earlier measure
 * (Gaussian-weighted mean, sigma 0.1 bond, at the column minus the mean of the three lowest of
 * the same means at the six places) is kept for columns whose disc the frame edge cuts too
 * much for the fit (fewer than 30 pixels). Linear in the column's Z^n.
 * Before the fit the centre is refined once (column_shift): a detected centre off the column
 * (scan jitter, a contamination scatterer pulling the detection) reads the amplitude low by up
 * to exp(-d^2 / 4 s^2). An unweighted fit of the same terms plus the profile's x and y
 * derivatives at the centre gives the first-order shift (derivative coefficient / a0); each
 * component is shrunk by SHIFT_TAU^2 / (SHIFT_TAU^2 + its least-squares variance) (a prior
 * of SHIFT_TAU bond on the detection's error, so a dim or noisy column barely moves: moving to
 * the noise's maximum would bias it high) and the move is capped at SHIFT_MAX bond; the six
 * places move with it. The read margin (1.25 bond) holds the moved disc.
 * Rows of this rank's domain are read in strips, so memory is bounded by a strip. out[i]
 * for every atom. With hist non-NULL nothing is measured: the radial profile of the columns
 * (PROF_NB bins over PROF_R bond; sums of the pixels quantised on the global levels, then
 * counts) of the atoms inside the central profile window is added to hist (exact integers, so
 * the sum over ranks does not depend on how the atoms are split). */
#define MODEL_R 0.6
#define MODEL_NP 10
#define SHIFT_NP (MODEL_NP + 2)
#define SHIFT_TAU 0.1
#define SHIFT_MAX 0.1
#define MODEL_FLOOR 0.1
#define PROF_NB 24
#define PROF_R 0.6
#define PROF_WIN 2048
#define PROF_Q 65536.0

/* Cholesky factor of the symmetric positive definite n x n A, in place (lower triangle and
 * diagonal; the upper triangle is left as it was); returns 0 if A is not positive definite */
static int chol_factor(double *A, int n)
{
    for (int j = 0; j < n; j++) {
        double d = A[j * n + j];
        for (int k = 0; k < j; k++) d -= A[j * n + k] * A[j * n + k];
        if (!(d > 1e-12 * (A[j * n + j] > 0 ? A[j * n + j] : 1))) return 0;
        d = sqrt(d);
        A[j * n + j] = d;
        for (int i = j + 1; i < n; i++) {
            double v = A[i * n + j];
            for (int k = 0; k < j; k++) v -= A[i * n + k] * A[j * n + k];
            A[i * n + j] = v / d;
        }
    }
    return 1;
}

/* solve L L^T x = b in place, L from chol_factor (so one factor serves several right-hand sides) */
static void chol_subst(const double *A, double *b, int n)
{
    for (int i = 0; i < n; i++) {
        double v = b[i];
        for (int k = 0; k < i; k++) v -= A[i * n + k] * b[k];
        b[i] = v / A[i * n + i];
    }
    for (int i = n - 1; i >= 0; i--) {
        double v = b[i];
        for (int k = i + 1; k < n; k++) v -= A[k * n + i] * b[k];
        b[i] = v / A[i * n + i];
    }
}

static int chol_solve(double *A, double *b, int n)
{
    if (!chol_factor(A, n)) return 0;
    chol_subst(A, b, n);
    return 1;
}

/* is the atom in the window whose columns make the profile (central PROF_WIN^2 of the frame,
 * disc inside the frame) */
static int in_profile_window(int64_t H, int64_t W, double x, double y, double rmax)
{
    double wx = W < PROF_WIN ? (double)W : PROF_WIN, wy = H < PROF_WIN ? (double)H : PROF_WIN;
    double x0 = floor(0.5 * ((double)W - wx)), y0 = floor(0.5 * ((double)H - wy));
    if (x < x0 || x >= x0 + wx || y < y0 || y >= y0 + wy) return 0;
    return x >= rmax + 1 && y >= rmax + 1 && x <= (double)W - rmax - 2 && y <= (double)H - rmax - 2;
}

/* The design rows of the column contrast fit over the disc of radius R about (cx, cy): per
 * pixel the MODEL_NP terms — the column profile exp(-d^2 is2), a constant, the x/y plane (per
 * bond) and the profile at the six neighbour places one bond away (dl) — and, with
 * `derivatives`, the profile's derivatives d/dcx, d/dcy (per bond) after them; row stride
 * SHIFT_NP with derivatives, MODEL_NP without. The pixels are buf[(yy - r0) * w + (xx - x0)]
 * for rows [r0, r1), columns [x0, x1); their values go to v. Returns the number of rows. */
static int64_t disc_design(const float *buf, int64_t r0, int64_t r1, int64_t x0, int64_t x1, int64_t w, double cx,
                           double cy, double R, double is2, double bond, const double dl[3][2], int derivatives,
                           double *G, double *v)
{
    int stride = derivatives ? SHIFT_NP : MODEL_NP;
    int64_t np = 0;
    for (int64_t yy = (int64_t)floor(cy - R); yy <= (int64_t)ceil(cy + R); yy++) {
        if (yy < r0 || yy >= r1) continue;
        for (int64_t xx = (int64_t)floor(cx - R); xx <= (int64_t)ceil(cx + R); xx++) {
            if (xx < x0 || xx >= x1) continue;
            double dx = xx - cx, dy = yy - cy, d2 = dx * dx + dy * dy;
            if (d2 > R * R) continue;
            double *g = G + np * stride;
            g[0] = exp(-d2 * is2);
            g[1] = 1;
            g[2] = dx / bond;
            g[3] = dy / bond;
            int c = 4;
            for (int q = 0; q < 3; q++)
                for (int sg = -1; sg <= 1; sg += 2) {
                    double ex = dx - sg * dl[q][0], ey = dy - sg * dl[q][1];
                    g[c++] = exp(-(ex * ex + ey * ey) * is2);
                }
            if (derivatives) {
                g[MODEL_NP] = 2 * is2 * dx * g[0] * bond;
                g[MODEL_NP + 1] = 2 * is2 * dy * g[0] * bond;
            }
            v[np++] = buf[(yy - r0) * w + (xx - x0)];
        }
    }
    return np;
}

/* The first-order shift (px) of the column at (cx, cy): least squares over the disc of radius R
 * of the MODEL_NP terms of measure_contrast plus d p / d cx, d p / d cy (per bond), each
 * component shrunk by its variance (SHIFT_TAU) and the move capped at SHIFT_MAX bond. The
 * pixels are buf[(yy - r0) * w + (xx - x0)] for rows [r0, r1), columns [x0, x1); G holds at
 * least SHIFT_NP doubles per disc pixel, v one. Returns 0 (no move) if the fit is not
 * determined or the column not positive. */
static int column_shift(const float *buf, int64_t r0, int64_t r1, int64_t x0, int64_t x1, int64_t w, double cx,
                        double cy, double R, double is2, double bond, const double dl[3][2], double *G, double *v,
                        double *sx, double *sy)
{
    double A[SHIFT_NP * SHIFT_NP] = {0}, b[SHIFT_NP] = {0};
    int64_t np = disc_design(buf, r0, r1, x0, x1, w, cx, cy, R, is2, bond, dl, 1, G, v);
    for (int64_t p = 0; p < np; p++) {
        const double *g = G + p * SHIFT_NP;
        for (int a = 0; a < SHIFT_NP; a++) {
            b[a] += g[a] * v[p];
            for (int k = 0; k <= a; k++) A[a * SHIFT_NP + k] += g[a] * g[k];
        }
    }
    if (np < 3 * SHIFT_NP) return 0;
    for (int a = 0; a < SHIFT_NP; a++)
        for (int k = a + 1; k < SHIFT_NP; k++) A[a * SHIFT_NP + k] = A[k * SHIFT_NP + a];
    if (!chol_solve(A, b, SHIFT_NP) || !(b[0] > 0)) return 0; /* (A now holds its factor) */
    double rss = 0;
    for (int64_t p = 0; p < np; p++) {
        const double *g = G + p * SHIFT_NP;
        double f = 0;
        for (int a = 0; a < SHIFT_NP; a++) f += g[a] * b[a];
        rss += (v[p] - f) * (v[p] - f);
    }
    double s2 = rss / (double)(np - SHIFT_NP), tau2 = SHIFT_TAU * bond * SHIFT_TAU * bond, sh[2];
    for (int c = 0; c < 2; c++) { /* variance of the c-th derivative coefficient: s2 (A^-1)_cc */
        double e[SHIFT_NP] = {0};
        e[MODEL_NP + c] = 1;
        chol_subst(A, e, SHIFT_NP);
        double var = s2 * e[MODEL_NP + c] / (b[0] * b[0]) * bond * bond;
        sh[c] = b[MODEL_NP + c] / b[0] * bond * tau2 / (tau2 + var);
    }
    double l = hypot(sh[0], sh[1]), lmax = SHIFT_MAX * bond;
    if (!isfinite(l)) return 0;
    if (l > lmax) sh[0] *= lmax / l, sh[1] *= lmax / l;
    *sx = sh[0];
    *sy = sh[1];
    return 1;
}

/* Where measure_contrast reads its pixels: the run's input (reader), or (test hook) frames
 * of H x W in memory. */
typedef struct {
    tmd_run *run; /* NULL: img */
    const float *img;
    int64_t H, W, T;
} pix_t;

static pix_t pix_of_run(tmd_run *run)
{
    pix_t p = {run, NULL, run->info.height, run->info.width, run->info.frames};
    return p;
}

static tmd_status pix_read(tmd_ctx *ctx, const pix_t *px, int64_t f, int64_t r0, int64_t x0, int64_t nr, int64_t w,
                           float *buf)
{
    if (px->run) return tmd_reader_read(ctx, px->run->reader, f, r0, x0, nr, w, buf);
    for (int64_t r = 0; r < nr; r++)
        memcpy(buf + r * w, px->img + (f * px->H + r0 + r) * px->W + x0, (size_t)w * sizeof(float));
    return TMD_OK;
}

/* ---- held neighbours (tmd_classify_opts.held_gate) ----------------------------------------
 * Pass 1 (the free measure above) keeps, per column, its refined centre and amplitude (NaN
 * where the fit could not be made) in a table of the owned atoms and the ghosts within
 * HELD_NEAR bond of the box (their pass 1 recomputed here from the same pixels, so the table
 * does not depend on who owns what). The atom at a place is the table's nearest within
 * HELD_JR bond of it and not within HELD_SELF bond of the column itself. The held refit
 * (held_fit) is a weighted least-squares fit of [profile, constant] at the pass-1 centre with
 * the data minus the held part (each place's atom: its amplitude times its own profile at its
 * own refined centre; an empty place: 0), unweighted and then weighted by 1 / the full model
 * (held part included) floored at MODEL_FLOOR of its largest, as the free fit. */
#define HELD_JR 0.35
#define HELD_SELF 0.5
#define HELD_NEAR 2.0

typedef struct {
    int64_t f, gy, gx;
    double y, x;
    int64_t i;
} cell_t;

typedef struct {
    int64_t n;
    int32_t *frame;
    double *x, *y, *a; /* refined centre (px), amplitude (NaN: no fit) */
    cell_t *cell;      /* sorted by (frame, cell row, cell column, y, x) */
    double csize;      /* cell edge (px): the largest bond */
} held_tab;

static void held_tab_free(held_tab *t)
{
    free(t->frame), free(t->x), free(t->y), free(t->a), free(t->cell);
    memset(t, 0, sizeof *t);
}

static int cmp_cell(const void *p, const void *q)
{
    const cell_t *a = p, *b = q;
    if (a->f != b->f) return a->f < b->f ? -1 : 1;
    if (a->gy != b->gy) return a->gy < b->gy ? -1 : 1;
    if (a->gx != b->gx) return a->gx < b->gx ? -1 : 1;
    if (a->y != b->y) return a->y < b->y ? -1 : 1;
    if (a->x != b->x) return a->x < b->x ? -1 : 1;
    return (a->i > b->i) - (a->i < b->i);
}

/* the cells of tab's n rows (cell edge: the largest bond) */
static void held_tab_index(held_tab *tab, double bondmax)
{
    tab->csize = bondmax > 1 ? bondmax : 1;
    for (int64_t i = 0; i < tab->n; i++)
        tab->cell[i] = (cell_t){tab->frame[i], (int64_t)floor(tab->y[i] / tab->csize),
                                (int64_t)floor(tab->x[i] / tab->csize), tab->y[i], tab->x[i], i};
    if (tab->n > 1) qsort(tab->cell, (size_t)tab->n, sizeof *tab->cell, cmp_cell);
}

static tmd_status held_tab_alloc(tmd_ctx *ctx, held_tab *tab, int64_t N)
{
    memset(tab, 0, sizeof *tab);
    tmd_status st = tmd_calloc(ctx, (void **)&tab->frame, (size_t)N + 1, sizeof *tab->frame, "held contrast");
    if (!st) st = tmd_calloc(ctx, (void **)&tab->x, (size_t)N + 1, sizeof *tab->x, "held contrast");
    if (!st) st = tmd_calloc(ctx, (void **)&tab->y, (size_t)N + 1, sizeof *tab->y, "held contrast");
    if (!st) st = tmd_calloc(ctx, (void **)&tab->a, (size_t)N + 1, sizeof *tab->a, "held contrast");
    if (!st) st = tmd_calloc(ctx, (void **)&tab->cell, (size_t)N + 1, sizeof *tab->cell, "held contrast");
    if (!st) tab->n = N;
    return st;
}

/* the table's atom at the place (px, py) of the column at (cx, cy) in frame f, or -1 */
static int64_t held_find(const held_tab *t, int64_t f, double px, double py, double cx, double cy, double bond)
{
    double best = HELD_JR * bond * HELD_JR * bond, self = HELD_SELF * bond * HELD_SELF * bond;
    int64_t bj = -1, gx = (int64_t)floor(px / t->csize), gy = (int64_t)floor(py / t->csize);
    for (int64_t ey = gy - 1; ey <= gy + 1; ey++)
        for (int64_t ex = gx - 1; ex <= gx + 1; ex++) {
            cell_t key = {f, ey, ex, -INFINITY, -INFINITY, INT64_MIN};
            int64_t lo = 0, hi = t->n;
            while (lo < hi) {
                int64_t mid = lo + (hi - lo) / 2;
                if (cmp_cell(&t->cell[mid], &key) < 0) lo = mid + 1;
                else hi = mid;
            }
            for (int64_t k = lo; k < t->n && t->cell[k].f == f && t->cell[k].gy == ey && t->cell[k].gx == ex; k++) {
                int64_t j = t->cell[k].i;
                double d2 = (t->x[j] - px) * (t->x[j] - px) + (t->y[j] - py) * (t->y[j] - py);
                double c2 = (t->x[j] - cx) * (t->x[j] - cx) + (t->y[j] - cy) * (t->y[j] - cy);
                if (!isfinite(t->a[j]) || c2 < self || d2 >= best) continue;
                best = d2, bj = j;
            }
        }
    return bj;
}

/* The two-pass least squares of the column contrast fit and the held refit: the nt terms of the
 * np design rows G (row stride gs) against v; pass 0 unweighted, pass 1 weighted by 1 / the
 * model's value (the terms, plus the row's column `off` when off >= 0: a part of the model held
 * fixed, not fitted), floored at MODEL_FLOOR of its largest in the disc: the shot-noise
 * variance, so the fit is the optimal linear estimate under Poisson-like noise. Term 1 is the
 * constant (G's column 1 is not read): its products are taken as the other factor, which is
 * exact (x * 1 = x), and saves the multiplications — the normal equations are those of the
 * full products, bit for bit. b[nt] gets the kept pass's coefficients, Ak (optional, nt x nt)
 * its Cholesky factor (chol_subst) and *kept (optional) which pass: a weighted pass that fails
 * (no positive model, not positive definite, b[0] not finite) keeps the unweighted one.
 * Returns 0 if the unweighted pass fails. wt: np doubles of scratch. 2 <= nt <= MODEL_NP. */
static inline int wls_two_pass(const double *G, int gs, int nt, int off, const double *v, int64_t np, double *wt,
                               double *b, double *Ak, int *kept)
{
    int ok = 0;
    for (int pass = 0; pass < 2; pass++) {
        double A[MODEL_NP * MODEL_NP] = {0}, fl = 0;
        if (pass == 1) {
            for (int64_t p = 0; p < np; p++) {
                const double *g = G + p * gs;
                double fv = 0;
                fv += g[0] * b[0];
                fv += b[1];
                for (int a = 2; a < nt; a++) fv += g[a] * b[a];
                if (off >= 0) fv += g[off];
                wt[p] = fv;
                if (fv > fl) fl = fv;
            }
            if (!(fl > 0)) break; /* no positive signal: keep the unweighted fit */
            fl *= MODEL_FLOOR;
            for (int64_t p = 0; p < np; p++) wt[p] = 1 / (wt[p] > fl ? wt[p] : fl);
        }
        double bb[MODEL_NP] = {0};
        for (int64_t p = 0; p < np; p++) {
            const double *g = G + p * gs;
            double ww = pass == 1 ? wt[p] : 1;
            for (int a = 0; a < nt; a++) { /* row a of the lower triangle: (ww g_a) g_c */
                double wg = a == 1 ? ww : ww * g[a], *Ar = A + a * nt;
                bb[a] += wg * v[p];
                Ar[0] += wg * g[0];
                if (a >= 1) Ar[1] += wg;
                for (int c = 2; c <= a; c++) Ar[c] += wg * g[c];
            }
        }
        for (int a = 0; a < nt; a++)
            for (int c = a + 1; c < nt; c++) A[a * nt + c] = A[c * nt + a];
        if (!chol_solve(A, bb, nt) || !isfinite(bb[0])) break;
        memcpy(b, bb, (size_t)nt * sizeof *b);
        if (Ak) memcpy(Ak, A, (size_t)(nt * nt) * sizeof *Ak);
        if (kept) *kept = pass;
        ok = 1;
    }
    return ok;
}

/* The held refit of the column at (cx, cy) (frame f) over the disc of radius R; G holds at
 * least 3, v and wt one double per disc pixel. Returns the amplitude or NaN. */
static double held_fit(const held_tab *t, int64_t f, const float *buf, int64_t r0, int64_t r1, int64_t x0, int64_t x1,
                       int64_t w, double cx, double cy, double R, double is2, double bond, const double dl[3][2],
                       double *G, double *v, double *wt)
{
    double hx[6], hy[6], ha[6];
    int nh = 0;
    for (int q = 0; q < 3; q++)
        for (int sg = -1; sg <= 1; sg += 2) {
            int64_t j = held_find(t, f, cx + sg * dl[q][0], cy + sg * dl[q][1], cx, cy, bond);
            if (j < 0) continue; /* an empty place: held at 0 */
            hx[nh] = t->x[j], hy[nh] = t->y[j], ha[nh] = t->a[j];
            nh++;
        }
    int64_t np = 0;
    for (int64_t yy = (int64_t)floor(cy - R); yy <= (int64_t)ceil(cy + R); yy++) {
        if (yy < r0 || yy >= r1) continue;
        for (int64_t xx = (int64_t)floor(cx - R); xx <= (int64_t)ceil(cx + R); xx++) {
            if (xx < x0 || xx >= x1) continue;
            double dx = xx - cx, dy = yy - cy, d2 = dx * dx + dy * dy;
            if (d2 > R * R) continue;
            double fx = 0;
            for (int h = 0; h < nh; h++) {
                double ex = (double)xx - hx[h], ey = (double)yy - hy[h];
                fx += ha[h] * exp(-(ex * ex + ey * ey) * is2);
            }
            /* terms [profile, constant]; the held part is the fixed part of the weights' model */
            G[3 * np] = exp(-d2 * is2);
            G[3 * np + 1] = 1;
            G[3 * np + 2] = fx;
            v[np] = buf[(yy - r0) * w + (xx - x0)] - fx;
            np++;
        }
    }
    double b[2] = {0, 0};
    return np >= 6 && wls_two_pass(G, 3, 2, 2, v, np, wt, b, NULL, NULL) ? b[0] : NAN;
}

/* measure_contrast's held-neighbour inputs and outputs (NULL: the free measure only) */
typedef struct {
    double *rx, *ry, *ra;  /* optional out, per atom: pass 1's refined centre and amplitude (NaN: no fit) */
    float *pb, *pv;        /* optional out, 6 per atom: pass 1's free place amplitudes, their LSQ variances */
    const held_tab *tab;   /* held refit with this table in the frames where hold[f] (NULL: none) */
    const int8_t *hold;
    int given;             /* 1: the atoms are tab's rows 0..n-1 and out[] holds their pass-1 contrast: only
                              the held refit at the table's centres (held frames, fitted rows) */
} held_io;

static tmd_status measure_contrast(tmd_ctx *ctx, const pix_t *px, const tmd_box *own, const tmd_lattice *lat,
                                   double psig, int64_t n, const int32_t *frame, const double *xs, const double *ys,
                                   float *out, int64_t *hist, const held_io *io)
{
    tmd_run *run = px->run;
    int64_t H = px->H, W = px->W;
    double bondmax = 0;
    for (int64_t f = 0; f < px->T; f++) bondmax = fmax(bondmax, lat[f].period_px / sqrt(3.0));
    int64_t m = (int64_t)ceil(1.25 * bondmax) + 2, S = 256;
    int64_t x0 = own->lo[2] - m < 0 ? 0 : own->lo[2] - m, x1 = own->hi[2] + m > W ? W : own->hi[2] + m, w = x1 - x0;
    double qlo = 0, qhi = 1;
    if (run && run->norm) tmd_normalise_levels(run->norm, &qlo, &qhi);
    double qs = qhi > qlo ? PROF_Q / (qhi - qlo) : PROF_Q;
    order_t *ord = NULL;
    float *buf = NULL;
    double *G = NULL, *v = NULL, *wt = NULL;
    int64_t gcap = 0;
    tmd_status st = tmd_calloc(ctx, (void **)&ord, (size_t)(n > 0 ? n : 1), sizeof *ord, "contrast order");
    if (!st) st = tmd_calloc(ctx, (void **)&buf, (size_t)((S + 2 * m) * (w > 0 ? w : 1)), sizeof(float), "contrast strip");
    if (st) goto cleanup;
    for (int64_t i = 0; i < n; i++) {
        ord[i].frame = frame[i];
        ord[i].y = ys[i];
        ord[i].i = i;
    }
    qsort(ord, (size_t)n, sizeof *ord, cmp_order);
    int64_t k = 0;
    while (k < n) {
        int64_t f = ord[k].frame;
        int64_t ystart = (int64_t)floor(ord[k].y + 0.5);
        int64_t r0 = ystart - m < 0 ? 0 : ystart - m, r1 = ystart + S + m > H ? H : ystart + S + m;
        const tmd_lattice *L = &lat[f];
        double bond = L->period_px / sqrt(3.0), sw = fmax(0.7, 0.1 * bond), rc = 2.5 * sw;
        double dl[3][2] = {{(L->a1[0] + L->a2[0]) / 3, (L->a1[1] + L->a2[1]) / 3},
                           {(L->a2[0] - 2 * L->a1[0]) / 3, (L->a2[1] - 2 * L->a1[1]) / 3},
                           {(L->a1[0] - 2 * L->a2[0]) / 3, (L->a1[1] - 2 * L->a2[1]) / 3}};
        int64_t kend = k;
        int any = 0;
        while (kend < n && ord[kend].frame == f && (int64_t)floor(ord[kend].y + 0.5) < ystart + S) {
            if (hist ? in_profile_window(H, W, xs[ord[kend].i], ys[ord[kend].i], PROF_R * bond)
                     : !(io && io->given) || io->hold[f])
                any = 1;
            kend++;
        }
        if (any) st = pix_read(ctx, px, f, r0, x0, r1 - r0, w, buf);
        if (st) goto cleanup;
        if (hist) { /* radial profile of the columns in the window */
            double rmax = PROF_R * bond;
            for (; k < kend; k++) {
                int64_t i = ord[k].i;
                double cx = xs[i], cy = ys[i];
                if (!in_profile_window(H, W, cx, cy, rmax)) continue;
                for (int64_t yy = (int64_t)floor(cy - rmax); yy <= (int64_t)ceil(cy + rmax); yy++) {
                    if (yy < r0 || yy >= r1) continue;
                    for (int64_t xx = (int64_t)floor(cx - rmax); xx <= (int64_t)ceil(cx + rmax); xx++) {
                        if (xx < x0 || xx >= x1) continue;
                        int b = (int)(hypot(xx - cx, yy - cy) / rmax * PROF_NB);
                        if (b >= PROF_NB) continue;
                        hist[b] += (int64_t)llround(((double)buf[(yy - r0) * w + (xx - x0)] - qlo) * qs);
                        hist[PROF_NB + b]++;
                    }
                }
            }
            continue;
        }
        /* the fit's disc and its design matrix rows (at most (2R + 2)^2 pixels) */
        double R = MODEL_R * bond, is2 = 0.5 / (psig * bond * psig * bond);
        int64_t need = ((int64_t)ceil(2 * R) + 3) * ((int64_t)ceil(2 * R) + 3);
        if (need > gcap) {
            free(G), free(v), free(wt);
            G = NULL, v = NULL, wt = NULL;
            st = tmd_calloc(ctx, (void **)&G, (size_t)need * SHIFT_NP, sizeof *G, "contrast fit");
            if (!st) st = tmd_calloc(ctx, (void **)&v, (size_t)need, sizeof *v, "contrast fit");
            if (!st) st = tmd_calloc(ctx, (void **)&wt, (size_t)need, sizeof *wt, "contrast fit");
            if (st) goto cleanup;
            gcap = need;
        }
        if (io && io->given) { /* the held refit of the table's rows at their pass-1 centres */
            for (; k < kend; k++) {
                int64_t i = ord[k].i;
                if (!io->hold[f] || !isfinite(io->tab->a[i])) continue;
                double a = held_fit(io->tab, f, buf, r0, r1, x0, x1, w, io->tab->x[i], io->tab->y[i], R, is2, bond, dl,
                                    G, v, wt);
                if (isfinite(a)) out[i] = (float)a;
            }
            continue;
        }
        for (; k < kend; k++) {
            int64_t i = ord[k].i;
            double cx = xs[i], cy = ys[i], shx, shy;
            if (column_shift(buf, r0, r1, x0, x1, w, xs[i], ys[i], R, is2, bond, dl, G, v, &shx, &shy))
                cx += shx, cy += shy;
            int64_t np = disc_design(buf, r0, r1, x0, x1, w, cx, cy, R, is2, bond, dl, 0, G, v);
            int kept = 0;
            double b[MODEL_NP] = {0}, Ak[MODEL_NP * MODEL_NP];
            int ok = np >= 3 * MODEL_NP && wls_two_pass(G, MODEL_NP, MODEL_NP, -1, v, np, wt, b, Ak, &kept);
            if (ok) {
                out[i] = (float)b[0];
                if (io && io->ra) io->rx[i] = cx, io->ry[i] = cy, io->ra[i] = b[0];
                if (io && io->pb) { /* the place amplitudes and their variances (A^-1)_cc s^2 of the kept fit */
                    double rss = 0;
                    for (int64_t p = 0; p < np; p++) {
                        const double *g = G + p * MODEL_NP;
                        double fv = 0;
                        for (int a = 0; a < MODEL_NP; a++) fv += g[a] * b[a];
                        rss += (kept ? wt[p] : 1) * (v[p] - fv) * (v[p] - fv);
                    }
                    double s2 = rss / (double)(np - MODEL_NP);
                    for (int c = 4; c < MODEL_NP; c++) {
                        double e[MODEL_NP] = {0};
                        e[c] = 1;
                        chol_subst(Ak, e, MODEL_NP);
                        io->pb[6 * i + c - 4] = (float)b[c];
                        io->pv[6 * i + c - 4] = (float)(e[c] * s2);
                    }
                }
                if (io && io->tab && io->hold[f]) { /* held refit at the refined centre */
                    double a = held_fit(io->tab, f, buf, r0, r1, x0, x1, w, cx, cy, R, is2, bond, dl, G, v, wt);
                    if (isfinite(a)) out[i] = (float)a;
                }
                continue;
            }
            if (io && io->ra) io->rx[i] = cx, io->ry[i] = cy, io->ra[i] = NAN;
            if (io && io->pb)
                for (int c = 0; c < 6; c++) io->pb[6 * i + c] = io->pv[6 * i + c] = NAN;
            /* fallback (disc cut by the frame edge): Gaussian-weighted mean around (px, py) */
#define GMEAN(px, py, res)                                                                                        \
    do {                                                                                                          \
        double sv_ = 0, sw_ = 0;                                                                                  \
        for (int64_t yy = (int64_t)floor((py) - rc); yy <= (int64_t)ceil((py) + rc); yy++) {                      \
            if (yy < r0 || yy >= r1) continue;                                                                    \
            for (int64_t xx = (int64_t)floor((px) - rc); xx <= (int64_t)ceil((px) + rc); xx++) {                  \
                if (xx < x0 || xx >= x1) continue;                                                                \
                double d_ = hypot(xx - (px), yy - (py));                                                          \
                if (d_ > rc) continue;                                                                            \
                double wt_ = exp(-0.5 * d_ * d_ / (sw * sw));                                                     \
                sv_ += wt_ * buf[(yy - r0) * w + (xx - x0)];                                                      \
                sw_ += wt_;                                                                                       \
            }                                                                                                     \
        }                                                                                                         \
        (res) = sw_ > 0 ? sv_ / sw_ : NAN;                                                                        \
    } while (0)
            double peak;
            cx = xs[i], cy = ys[i]; /* (the detected centre, as before the shift) */
            GMEAN(cx, cy, peak);
            double v6[6];
            int nv = 0;
            for (int q = 0; q < 3; q++)
                for (int sg = -1; sg <= 1; sg += 2) {
                    double val;
                    GMEAN(cx + sg * dl[q][0], cy + sg * dl[q][1], val);
                    if (isfinite(val)) v6[nv++] = val;
                }
#undef GMEAN
            for (int a = 1; a < nv; a++)
                for (int c = a; c > 0 && v6[c] < v6[c - 1]; c--) {
                    double t = v6[c];
                    v6[c] = v6[c - 1];
                    v6[c - 1] = t;
                }
            double bg = 0;
            int nb = nv < 3 ? nv : 3;
            for (int a = 0; a < nb; a++) bg += v6[a] / nb;
            out[i] = isfinite(peak) ? (float)(peak - bg) : 0.0f;
        }
    }
cleanup:
    free(ord);
    free(buf);
    free(G);
    free(v);
    free(wt);
    return st;
}

/* Pass 1 of the held contrast: the free measure of the n owned atoms (contrast[n]) and of the
 * ghosts (m) within HELD_NEAR bond of `own` (recomputed from the same pixels: their disc is
 * read through a box widened to hold it), into the table tab (owned atoms first, as rows
 * 0..n-1). With trip non-NULL, per owned atom and place (18 floats: 6 x [held amplitude of
 * the place's atom (NaN: no atom), free place amplitude, its LSQ variance]) for the gate. */
static tmd_status held_pass1(tmd_ctx *ctx, const pix_t *px, const tmd_box *own, const tmd_lattice *lat, double psig,
                             int64_t n, const int32_t *frame, const double *x, const double *y, int64_t m,
                             const int32_t *gframe, const double *gx, const double *gy, float *contrast, held_tab *tab,
                             float *trip)
{
    double bondmax = 0;
    for (int64_t f = 0; f < px->T; f++) bondmax = fmax(bondmax, lat[f].period_px / sqrt(3.0));
    int64_t N = n;
    for (int64_t j = 0; j < m; j++)
        if (tmd_box_distance(own, gy[j], gx[j]) <= HELD_NEAR * lat[gframe[j]].period_px / sqrt(3.0) + 1) N++;
    float *out = NULL, *pb = NULL, *pv = NULL;
    tmd_status st = held_tab_alloc(ctx, tab, N);
    if (!st) st = tmd_calloc(ctx, (void **)&out, (size_t)N + 1, sizeof *out, "held contrast");
    if (!st && trip) st = tmd_calloc(ctx, (void **)&pb, (size_t)(6 * N) + 1, sizeof *pb, "held contrast");
    if (!st && trip) st = tmd_calloc(ctx, (void **)&pv, (size_t)(6 * N) + 1, sizeof *pv, "held contrast");
    double *ix = NULL, *iy = NULL;
    if (!st) st = tmd_calloc(ctx, (void **)&ix, (size_t)N + 1, sizeof *ix, "held contrast");
    if (!st) st = tmd_calloc(ctx, (void **)&iy, (size_t)N + 1, sizeof *iy, "held contrast");
    if (st) goto cleanup;
    for (int64_t i = 0; i < n; i++) tab->frame[i] = frame[i], ix[i] = x[i], iy[i] = y[i];
    for (int64_t j = 0, k = n; j < m; j++)
        if (tmd_box_distance(own, gy[j], gx[j]) <= HELD_NEAR * lat[gframe[j]].period_px / sqrt(3.0) + 1)
            tab->frame[k] = gframe[j], ix[k] = gx[j], iy[k] = gy[j], k++;
    tmd_box wide = *own;
    int64_t e = (int64_t)ceil(HELD_NEAR * bondmax) + 2;
    for (int a = 1; a < 3; a++) wide.lo[a] -= e, wide.hi[a] += e;
    held_io io = {tab->x, tab->y, tab->a, pb, pv, NULL, NULL, 0};
    st = measure_contrast(ctx, px, &wide, lat, psig, N, tab->frame, ix, iy, out, NULL, &io);
    if (st) goto cleanup;
    memcpy(contrast, out, (size_t)n * sizeof *contrast);
    held_tab_index(tab, bondmax);
    for (int64_t i = 0; trip && i < n; i++) {
        int64_t f = tab->frame[i];
        const tmd_lattice *L = &lat[f];
        double bond = L->period_px / sqrt(3.0);
        double dl[3][2] = {{(L->a1[0] + L->a2[0]) / 3, (L->a1[1] + L->a2[1]) / 3},
                           {(L->a2[0] - 2 * L->a1[0]) / 3, (L->a2[1] - 2 * L->a1[1]) / 3},
                           {(L->a1[0] - 2 * L->a2[0]) / 3, (L->a1[1] - 2 * L->a2[1]) / 3}};
        for (int p = 0; p < 6; p++) {
            int q = p / 2, sg = p % 2 ? 1 : -1;
            int64_t j = isfinite(tab->a[i]) ? held_find(tab, f, tab->x[i] + sg * dl[q][0], tab->y[i] + sg * dl[q][1],
                                                        tab->x[i], tab->y[i], bond)
                                            : -1;
            trip[18 * i + 3 * p] = j >= 0 ? (float)tab->a[j] : NAN;
            trip[18 * i + 3 * p + 1] = pb[6 * i + p];
            trip[18 * i + 3 * p + 2] = pv[6 * i + p];
        }
    }
cleanup:
    free(out), free(pb), free(pv), free(ix), free(iy);
    if (st) held_tab_free(tab);
    return st;
}

/* Pass 2: the held refit of the owned atoms (tab's rows 0..n-1) in the frames where hold[f];
 * contrast[n] holds their pass-1 contrast and gets the held one where the refit succeeds. */
static tmd_status held_pass2(tmd_ctx *ctx, const pix_t *px, const tmd_box *own, const tmd_lattice *lat, double psig,
                             const held_tab *tab, const int8_t *hold, int64_t n, float *contrast)
{
    held_io io = {NULL, NULL, NULL, NULL, NULL, tab, hold, 1};
    return measure_contrast(ctx, px, own, lat, psig, n, tab->frame, tab->x, tab->y, contrast, NULL, &io);
}

/* ---- the gate: per frame, medians over every rank's (held, free, variance) place triples ----
 * Each median is exact to 24 bits of the float (relative 3e-5): a histogram of the top 12 bits
 * of the order-preserving key of the value, summed over ranks, finds the bucket of the middle
 * element(s); a second one of the next 12 bits inside it finds the sub-bucket. Integer sums,
 * so every rank count gets the same medians. The triples come from an iterator (memory, or the
 * streamed path's side files) that calls gate_add for each owned atom's 18 floats. */
#define GATE_B 4096

typedef struct {
    int64_t T;
    int stage, nq, level;   /* stage 1: held, variance; 2: free / held (held >= its median); 3: free -
                               r held; 4: |free - r held - its median|. level 1 / 2: top / next 12 bits */
    const double *hmed, *r, *dm;
    const int64_t *bsel;    /* level 2: T x nq x 2 buckets of the middle elements */
    int64_t *h;             /* level 1: T x nq x GATE_B; level 2: T x nq x 2 x GATE_B */
} gacc_t;

typedef tmd_status (*gate_iter)(tmd_ctx *ctx, void *user, gacc_t *acc);

static uint32_t fkey(float v)
{
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

static float fkey_inv(uint32_t k)
{
    uint32_t u = (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k;
    float v;
    memcpy(&v, &u, sizeof v);
    return v;
}

static void gate_put(gacc_t *a, int64_t f, int q, double val)
{
    float fv = (float)val;
    if (!isfinite(fv)) return;
    uint32_t k = fkey(fv);
    int64_t s = f * a->nq + q;
    if (a->level == 1) {
        a->h[s * GATE_B + (k >> 20)]++;
        return;
    }
    for (int e = 0; e < 2; e++)
        if (a->bsel[2 * s + e] == (int64_t)(k >> 20)) a->h[(2 * s + e) * GATE_B + ((k >> 8) & 0xfff)]++;
}

static void gate_add(gacc_t *a, int64_t f, const float *t)
{
    if (f < 0 || f >= a->T) return;
    for (int p = 0; p < 6; p++) {
        double hh = t[3 * p], bb = t[3 * p + 1], vv = t[3 * p + 2];
        if (!isfinite(hh) || !isfinite(bb) || !isfinite(vv)) continue;
        if (a->stage == 1) gate_put(a, f, 0, hh), gate_put(a, f, 1, vv);
        else if (a->stage == 2) {
            if (hh >= a->hmed[f] && hh > 0) gate_put(a, f, 0, bb / hh);
        } else if (a->stage == 3) gate_put(a, f, 0, bb - a->r[f] * hh);
        else gate_put(a, f, 0, fabs(bb - a->r[f] * hh - a->dm[f]));
    }
}

/* Collective: the medians (T x nq, NaN where none) and counts of the stage's values */
static tmd_status gate_medians(tmd_ctx *ctx, MPI_Comm comm, gacc_t *a, gate_iter it, void *user, double *med,
                               int64_t *cnt)
{
    int64_t S = a->T * a->nq, *h = NULL, *bsel = NULL, *rr = NULL;
    tmd_status st = tmd_calloc(ctx, (void **)&h, (size_t)(2 * S * GATE_B), sizeof *h, "held gate");
    if (!st) st = tmd_calloc(ctx, (void **)&bsel, (size_t)(2 * S), sizeof *bsel, "held gate");
    if (!st) st = tmd_calloc(ctx, (void **)&rr, (size_t)(2 * S), sizeof *rr, "held gate");
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    a->h = h;
    a->level = 1;
    st = it(ctx, user, a);
    st = tmd_agree(ctx, comm, st);
    if (!st) st = TMD_MPI(ctx, MPI_Allreduce(MPI_IN_PLACE, h, (int)(S * GATE_B), MPI_INT64_T, MPI_SUM, comm));
    if (st) goto cleanup;
    for (int64_t s = 0; s < S; s++) {
        const int64_t *hs = h + s * GATE_B;
        int64_t nn = 0;
        for (int b = 0; b < GATE_B; b++) nn += hs[b];
        cnt[s] = nn;
        for (int e = 0; e < 2; e++) {
            bsel[2 * s + e] = -1;
            if (nn == 0) continue;
            int64_t want = e == 0 ? (nn - 1) / 2 : nn / 2, c = 0;
            for (int b = 0; b < GATE_B; b++) {
                if (c + hs[b] > want) {
                    bsel[2 * s + e] = b, rr[2 * s + e] = want - c;
                    break;
                }
                c += hs[b];
            }
        }
    }
    memset(h, 0, (size_t)(2 * S * GATE_B) * sizeof *h);
    a->level = 2;
    a->bsel = bsel;
    st = it(ctx, user, a);
    st = tmd_agree(ctx, comm, st);
    if (!st) st = TMD_MPI(ctx, MPI_Allreduce(MPI_IN_PLACE, h, (int)(2 * S * GATE_B), MPI_INT64_T, MPI_SUM, comm));
    if (st) goto cleanup;
    for (int64_t s = 0; s < S; s++) {
        double v2[2] = {NAN, NAN};
        for (int e = 0; e < 2; e++) {
            if (bsel[2 * s + e] < 0) continue;
            const int64_t *hs = h + (2 * s + e) * GATE_B;
            int64_t c = 0;
            for (int b = 0; b < GATE_B; b++) {
                if (c + hs[b] > rr[2 * s + e]) {
                    v2[e] = fkey_inv((uint32_t)bsel[2 * s + e] << 20 | (uint32_t)b << 8 | 0x80u);
                    break;
                }
                c += hs[b];
            }
        }
        med[s] = 0.5 * (v2[0] + v2[1]);
    }
cleanup:
    a->h = NULL;
    a->bsel = NULL;
    free(h), free(bsel), free(rr);
    return st;
}

/* Collective. hold[f] = 1 where frame f's free place terms look like shot noise: robust sd of
 * (free - r held) < gate x sqrt(median LSQ variance), with over 20 places (fewer: not held);
 * stat[f] = that sd / sqrt(median variance) (NaN: no places). */
static tmd_status gate_compute(tmd_ctx *ctx, MPI_Comm comm, int64_t T, double gate, gate_iter it, void *user,
                               int8_t *hold, double *stat)
{
    double *m1 = NULL, *hmed = NULL, *vmed = NULL, *r = NULL, *dm = NULL, *mad = NULL;
    int64_t *c1 = NULL, *c2 = NULL;
    tmd_status st = tmd_calloc(ctx, (void **)&m1, (size_t)(2 * T) + 1, sizeof *m1, "held gate");
    if (!st) st = tmd_calloc(ctx, (void **)&hmed, (size_t)T + 1, sizeof *hmed, "held gate");
    if (!st) st = tmd_calloc(ctx, (void **)&vmed, (size_t)T + 1, sizeof *vmed, "held gate");
    if (!st) st = tmd_calloc(ctx, (void **)&r, (size_t)T + 1, sizeof *r, "held gate");
    if (!st) st = tmd_calloc(ctx, (void **)&dm, (size_t)T + 1, sizeof *dm, "held gate");
    if (!st) st = tmd_calloc(ctx, (void **)&mad, (size_t)T + 1, sizeof *mad, "held gate");
    if (!st) st = tmd_calloc(ctx, (void **)&c1, (size_t)(2 * T) + 1, sizeof *c1, "held gate");
    if (!st) st = tmd_calloc(ctx, (void **)&c2, (size_t)T + 1, sizeof *c2, "held gate");
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    gacc_t a;
    memset(&a, 0, sizeof a);
    a.T = T, a.hmed = hmed, a.r = r, a.dm = dm;
    a.stage = 1, a.nq = 2;
    st = gate_medians(ctx, comm, &a, it, user, m1, c1);
    if (st) goto cleanup;
    for (int64_t f = 0; f < T; f++) hmed[f] = m1[2 * f], vmed[f] = m1[2 * f + 1];
    a.stage = 2, a.nq = 1;
    st = gate_medians(ctx, comm, &a, it, user, r, c2);
    if (st) goto cleanup;
    for (int64_t f = 0; f < T; f++)
        if (c2[f] == 0) r[f] = 1;
    a.stage = 3;
    st = gate_medians(ctx, comm, &a, it, user, dm, c2);
    if (!st) a.stage = 4, st = gate_medians(ctx, comm, &a, it, user, mad, c2);
    if (st) goto cleanup;
    for (int64_t f = 0; f < T; f++) {
        double sd = 1.4826 * mad[f], ls = sqrt(vmed[f]);
        hold[f] = c1[2 * f] > 20 && sd < gate * ls;
        if (stat) stat[f] = c1[2 * f] > 0 && ls > 0 ? sd / ls : NAN;
    }
cleanup:
    free(m1), free(hmed), free(vmed), free(r), free(dm), free(mad), free(c1), free(c2);
    return st;
}

typedef struct { /* in memory: n atoms' frames and place triples */
    int64_t n;
    const int32_t *frame;
    const float *trip;
} trip_mem_t;

static tmd_status trip_mem_iter(tmd_ctx *ctx, void *user, gacc_t *acc)
{
    (void)ctx;
    const trip_mem_t *t = user;
    for (int64_t i = 0; i < t->n; i++) gate_add(acc, t->frame[i], t->trip + 18 * i);
    return TMD_OK;
}

/* Collective. The whole held contrast of n owned atoms with the m ghosts around them (the
 * in-memory path and the test hook): pass 1, the gate, pass 2. contrast[n] out; tab (kept for
 * the vacancy sites) and hold[T] out; stat[T] optional. */
static tmd_status held_measure(tmd_ctx *ctx, MPI_Comm comm, const pix_t *px, const tmd_box *own,
                               const tmd_lattice *lat, double psig, double gate, int64_t n, const int32_t *frame,
                               const double *x, const double *y, int64_t m, const int32_t *gframe, const double *gx,
                               const double *gy, float *contrast, held_tab *tab, int8_t *hold, double *stat)
{
    float *trip = NULL;
    tmd_status st = tmd_calloc(ctx, (void **)&trip, (size_t)(18 * n) + 1, sizeof *trip, "held contrast");
    if (!st) st = held_pass1(ctx, px, own, lat, psig, n, frame, x, y, m, gframe, gx, gy, contrast, tab, trip);
    st = tmd_agree(ctx, comm, st);
    double t1 = MPI_Wtime();
    if (!st) {
        trip_mem_t tm = {n, frame, trip};
        st = gate_compute(ctx, comm, px->T, gate, trip_mem_iter, &tm, hold, stat);
    }
    tmd_debug(ctx, "classify: held gate medians on rank 0: %.3f s", MPI_Wtime() - t1);
    free(trip);
    int any = 0;
    for (int64_t f = 0; f < px->T && !st; f++) any |= hold[f];
    if (!st && any) st = held_pass2(ctx, px, own, lat, psig, tab, hold, n, contrast);
    return tmd_agree(ctx, comm, st);
}

tmd_status tmd_cls_held_image(tmd_ctx *ctx, MPI_Comm comm, const float *img, int64_t H, int64_t W,
                              const tmd_lattice *lat, double psig, double gate, const tmd_box *own, int64_t n,
                              const double *x, const double *y, int64_t m, const double *gx, const double *gy,
                              float *free_c, float *held_c, int *hold, double *stat)
{
    pix_t px = {NULL, img, H, W, 1};
    held_tab tab;
    memset(&tab, 0, sizeof tab);
    int32_t *fr = NULL;
    int8_t h1 = 0;
    tmd_status st = tmd_calloc(ctx, (void **)&fr, (size_t)(n + m) + 1, sizeof *fr, "held contrast");
    st = tmd_agree(ctx, comm, st);
    if (!st) st = held_measure(ctx, comm, &px, own, lat, psig, gate, n, fr, x, y, m, fr, gx, gy, held_c, &tab, &h1, stat);
    if (!st) {
        memcpy(free_c, held_c, (size_t)n * sizeof *free_c);
        for (int64_t i = 0; i < n; i++) /* pass 1's contrast: the table's amplitude where fitted */
            if (isfinite(tab.a[i])) free_c[i] = (float)tab.a[i];
        *hold = h1;
    }
    held_tab_free(&tab);
    free(fr);
    return st;
}

/* Collective. The column profile's width (bond lengths): the Gaussian A exp(-r^2 / 2 s^2) + C
 * that fits the mean radial profile of the columns in the central window of every frame best
 * (s on a grid of 0.005 bond in [0.05, 0.45]; 0.2 bond when no column is in the window). The
 * profile is summed in integers over ranks, so every rank count finds the same s. n atoms
 * (x, y, frame) of this rank, each counted on one rank only. */
static tmd_status profile_accumulate(tmd_ctx *ctx, tmd_run *run, const tmd_box *own, const tmd_lattice *lat, int64_t n,
                                     const int32_t *frame, const double *xs, const double *ys, int64_t *hist)
{
    pix_t px = pix_of_run(run);
    return measure_contrast(ctx, &px, own, lat, 0.2, n, frame, xs, ys, NULL, hist, NULL);
}

static tmd_status profile_sigma(tmd_ctx *ctx, tmd_run *run, int64_t *hist, double *psig)
{
    MPI_Allreduce(MPI_IN_PLACE, hist, 2 * PROF_NB, MPI_INT64_T, MPI_SUM, run->comm);
    double best = 0.2, bsse = INFINITY;
    for (int gi = 0; gi <= 80; gi++) {
        double s = 0.05 + 0.005 * gi, S11 = 0, S12 = 0, S22 = 0, b1 = 0, b2 = 0;
        for (int b = 0; b < PROF_NB; b++) {
            if (hist[PROF_NB + b] <= 0) continue;
            double r = (b + 0.5) * PROF_R / PROF_NB, g = exp(-0.5 * r * r / (s * s)), wt = (double)hist[PROF_NB + b];
            double mv = (double)hist[b] / wt;
            S11 += wt * g * g, S12 += wt * g, S22 += wt, b1 += wt * g * mv, b2 += wt * mv;
        }
        double det = S11 * S22 - S12 * S12;
        if (!(det > 0)) continue;
        double A = (b1 * S22 - b2 * S12) / det, C = (S11 * b2 - S12 * b1) / det, sse = 0;
        for (int b = 0; b < PROF_NB; b++) {
            if (hist[PROF_NB + b] <= 0) continue;
            double r = (b + 0.5) * PROF_R / PROF_NB, g = exp(-0.5 * r * r / (s * s)), mv = (double)hist[b] / hist[PROF_NB + b];
            sse += (double)hist[PROF_NB + b] * (mv - A * g - C) * (mv - A * g - C);
        }
        if (sse < bsse) bsse = sse, best = s;
    }
    *psig = best;
    tmd_info(ctx, "classify: column profile sigma %.3f bond (from the columns of the central %d px window)", best, PROF_WIN);
    return TMD_OK;
}

typedef struct {
    tmd_run *run;
    const tmd_box *own;
    const tmd_lattice *lat;
    double psig;
    const held_tab *tab; /* the held refit of the sites in the frames where hold[f] (NULL: free only) */
    const int8_t *hold;
} measure_user_t;

/* the contrast at the sites tmd_classify proposes (empty sites): pass 1 with the centre
 * refined, then in held frames the held refit there */
static tmd_status measure_cb(tmd_ctx *ctx, void *user, int64_t n, const int32_t *frame, const double *x, const double *y,
                             float *out)
{
    measure_user_t *u = user;
    pix_t px = pix_of_run(u->run);
    held_io io = {NULL, NULL, NULL, NULL, NULL, u->tab, u->hold, 0};
    return measure_contrast(ctx, &px, u->own, u->lat, u->psig, n, frame, x, y, out, NULL, u->tab ? &io : NULL);
}

/* ---- banded (streamed) classification ------------------------------------------------------
 *
 * Mosaics with run->stream (tmd/pipeline.h): the tile pass kept no atoms; each tile's rows are
 * in OUT.ckpt/tile-<g>.bin. The rank's tile block is cut into chunks of B x B tiles
 * (B = classify_band_tiles); a chunk is classified from its own tiles' atoms plus ghosts read
 * from the tiles around it (any rank's: the checkpoint directory is shared), within 4 lattice
 * periods of the chunk (the 3 of tmd_classify_ghost_distance, plus a bond length so that the
 * ghosts the local-noise window reaches have all their neighbours too). Memory is one chunk.
 *
 *   pass 1, per chunk: column contrast of the owned atoms (measure_contrast on the chunk box),
 *     the bond graph, colours and components (tmd_classify phase 1); per tile a side file
 *     OUT.ckpt/cp1-<g>.bin holds each atom's contrast, colour and component id
 *     (chunk << 32 | local component). A joining bond between an owned atom and a ghost
 *     links the two chunks' components; it is resolved from the ghost's side file when that
 *     exists (its chunk is done), else later by the chunk that owns the ghost (same rank)
 *     or after the pass (other ranks).
 *   merge: every rank gathers the components and links (a few per chunk) and forms the
 *     global components by union-find (the same on every rank).
 *   histograms: the owned atoms' contrast (over the frame's largest, all ranks) and votes per
 *     global component, summed over ranks; the models are fitted (tmd_cls_fit, collective).
 *   pass 2, per chunk: the same graph again (tmd_classify phase 2) with each atom's global
 *     component and the ghosts' contrast and colour from the side files: species, vacancies
 *     (to run->defects), empty columns removed; each tile's rows go to OUT.ckpt/cls-<g>.bin,
 *     which the write stage streams to /atoms in the canonical order.
 *   cross-talk (tmd_classify_opts.xtalk, where the first fit found a metal alloy): between the
 *     fit and pass 2, a statistics pass per chunk (tmd_classify phase 3: species with the first
 *     models, N of each owned chalcogen to OUT.ckpt/xt1-<g>.bin, the regression sums); the sums
 *     of all ranks give the slope; with a negative one the histograms are made again from the
 *     corrected contrast (side + xt1 files) and refitted, and pass 2 applies the correction
 *     (owned chalcogens from xt1; empty B sites from the first models' A sites around them).
 *   held neighbours (tmd_classify_opts.held_gate > 0): before pass 1, a gate sweep per chunk
 *     (pass 1 of the column contrast of its atoms and of the ghosts within HELD_NEAR bond,
 *     recomputed from the same pixels; the place triples to OUT.ckpt/hp1-<g>.bin), then the
 *     gate's medians over all ranks' side files. In held frames pass 1 measures the chunk's
 *     atoms and near ghosts the same way and refits the owned ones with their places held,
 *     and pass 2 rebuilds that table for the vacancy sites' held refit (measure_cb).
 * The result is the unbanded one's (same bonds: every atom a chunk uses has all its
 * neighbours; same components; same sums; same models) at any chunk size and rank count. */

typedef struct {
    int64_t ty0, ty1, tx0, tx1; /* tile rows and columns [ty0, ty1) x [tx0, tx1) */
} chunk_t;

typedef struct { /* per-atom side data of pass 1, per tile */
    float *contrast;
    int8_t *colour;
    int64_t *gid;
    int64_t n;
} side_t;

static void side_free(side_t *s)
{
    free(s->contrast);
    free(s->colour);
    free(s->gid);
    memset(s, 0, sizeof *s);
}

static tmd_status side_read(tmd_ctx *ctx, tmd_run *run, int64_t g, int64_t n, side_t *s)
{
    size_t bytes = (size_t)n * 13;
    char *buf = NULL;
    side_free(s);
    tmd_status st = tmd_calloc(ctx, (void **)&buf, bytes + 1, 1, "classify side file");
    if (!st) st = tmd_calloc(ctx, (void **)&s->contrast, (size_t)n + 1, sizeof(float), "classify side file");
    if (!st) st = tmd_calloc(ctx, (void **)&s->colour, (size_t)n + 1, 1, "classify side file");
    if (!st) st = tmd_calloc(ctx, (void **)&s->gid, (size_t)n + 1, sizeof(int64_t), "classify side file");
    if (!st) st = tmd_run_tile_blob_read(ctx, run, "cp1", g, buf, bytes);
    if (!st) {
        memcpy(s->contrast, buf, (size_t)n * 4);
        memcpy(s->colour, buf + (size_t)n * 4, (size_t)n);
        memcpy(s->gid, buf + (size_t)n * 5, (size_t)n * 8);
        s->n = n;
    }
    free(buf);
    return st;
}

static tmd_status side_write(tmd_ctx *ctx, tmd_run *run, int64_t g, int64_t n, const float *contrast,
                             const int8_t *colour, const int64_t *gid)
{
    char *buf = NULL;
    tmd_status st = tmd_calloc(ctx, (void **)&buf, (size_t)n * 13 + 1, 1, "classify side file");
    if (st) return st;
    memcpy(buf, contrast, (size_t)n * 4);
    memcpy(buf + (size_t)n * 4, colour, (size_t)n);
    memcpy(buf + (size_t)n * 5, gid, (size_t)n * 8);
    st = tmd_run_tile_blob_write(ctx, run, "cp1", g, buf, (size_t)n * 13);
    free(buf);
    return st;
}

static void chunk_box(const tmd_decomp *d, const chunk_t *c, tmd_box *b)
{
    int64_t t0[3] = {0, c->ty0, c->tx0}, t1[3] = {0, c->ty1 - 1, c->tx1 - 1};
    tmd_box a, z;
    tmd_decomp_tile_box(d, tmd_decomp_tile_index(d, t0), &a, NULL);
    tmd_decomp_tile_box(d, tmd_decomp_tile_index(d, t1), &z, NULL);
    for (int k = 0; k < 3; k++) {
        b->lo[k] = a.lo[k];
        b->hi[k] = z.hi[k];
    }
}

/* The chunk's owned atoms (its tiles in row-major order) and its ghosts: atoms of the tiles
 * around it within gd of its box; gtile/gidx: each ghost's tile and row in that tile. */
static tmd_status chunk_load(tmd_ctx *ctx, tmd_run *run, const chunk_t *c, const tmd_box *box, double gd,
                             tmd_atom_table *own, tmd_atom_table *gh, int64_t **gtile, int64_t **gidx)
{
    const tmd_decomp *d = run->decomp;
    tmd_status st = TMD_OK;
    tmd_atom_table tmp;
    tmd_atom_table_init(&tmp, own->nprob);
    if (own->nlatent) st = tmd_atom_table_set_latent(ctx, &tmp, own->nlatent);
    own->n = gh->n = 0;
    for (int64_t ty = c->ty0; ty < c->ty1 && !st; ty++)
        for (int64_t tx = c->tx0; tx < c->tx1 && !st; tx++) {
            int64_t tc[3] = {0, ty, tx};
            st = tmd_run_tile_rows_read(ctx, run, "tile", tmd_decomp_tile_index(d, tc), own);
        }
    int64_t R = (int64_t)ceil(gd / (double)d->tile[1]) + 1, cap = 0, ng = 0;
    for (int64_t ty = c->ty0 - R; ty < c->ty1 + R && !st; ty++)
        for (int64_t tx = c->tx0 - R; tx < c->tx1 + R && !st; tx++) {
            if (ty < 0 || tx < 0 || ty >= d->ntiles[1] || tx >= d->ntiles[2]) continue;
            if (ty >= c->ty0 && ty < c->ty1 && tx >= c->tx0 && tx < c->tx1) continue;
            int64_t tc[3] = {0, ty, tx}, g = tmd_decomp_tile_index(d, tc);
            tmd_box tb;
            tmd_decomp_tile_box(d, g, &tb, NULL);
            /* skip tiles whose whole box is farther than gd */
            double dy = tb.hi[1] - 0.5 < box->lo[1] - 0.5 ? (box->lo[1] - 0.5) - (tb.hi[1] - 0.5)
                        : tb.lo[1] - 0.5 > box->hi[1] - 0.5 ? (tb.lo[1] - 0.5) - (box->hi[1] - 0.5) : 0;
            double dx = tb.hi[2] - 0.5 < box->lo[2] - 0.5 ? (box->lo[2] - 0.5) - (tb.hi[2] - 0.5)
                        : tb.lo[2] - 0.5 > box->hi[2] - 0.5 ? (tb.lo[2] - 0.5) - (box->hi[2] - 0.5) : 0;
            if (hypot(dy, dx) > gd + 2) continue;
            tmp.n = 0;
            st = tmd_run_tile_rows_read(ctx, run, "tile", g, &tmp);
            for (int64_t k = 0; k < tmp.n && !st; k++) {
                if (tmd_box_distance(box, tmp.y[k], tmp.x[k]) > gd) continue;
                st = tmd_atom_table_append(ctx, gh, &tmp, k, k + 1);
                if (st) break;
                if (ng + 1 > cap) {
                    int64_t nc = cap ? 2 * cap : 1024;
                    int64_t *a = realloc(*gtile, (size_t)nc * sizeof(int64_t)), *b2 = a ? realloc(*gidx, (size_t)nc * sizeof(int64_t)) : NULL;
                    if (a) *gtile = a;
                    if (b2) *gidx = b2;
                    if (!a || !b2) {
                        st = TMD_FAIL(ctx, TMD_ERR_NOMEM, "out of memory for the ghosts of a classify chunk");
                        break;
                    }
                    cap = nc;
                }
                (*gtile)[ng] = g;
                (*gidx)[ng] = k;
                ng++;
            }
        }
    tmd_atom_table_free(&tmp);
    return st;
}

typedef struct {
    int64_t a, b;
} link_t;

static int cmp_link(const void *p, const void *q)
{
    const link_t *x = p, *y = q;
    if (x->a != y->a) return x->a < y->a ? -1 : 1;
    return (x->b > y->b) - (x->b < y->b);
}

typedef struct {
    int64_t tile, idx, gid;
} pending_t;

static int cmp_pending(const void *p, const void *q)
{
    const pending_t *x = p, *y = q;
    if (x->tile != y->tile) return x->tile < y->tile ? -1 : 1;
    return (x->idx > y->idx) - (x->idx < y->idx);
}

/* growable arrays of int64 pairs / triples */
static tmd_status grow(tmd_ctx *ctx, void **p, int64_t *cap, int64_t need, size_t es)
{
    if (need <= *cap) return TMD_OK;
    int64_t nc = *cap ? *cap : 256;
    while (nc < need) nc *= 2;
    void *q = realloc(*p, (size_t)nc * es);
    if (!q) return TMD_FAIL(ctx, TMD_ERR_NOMEM, "out of memory in the banded classification");
    *p = q;
    *cap = nc;
    return TMD_OK;
}

/* global component of a chunk component id (-1: not gathered) */
static int64_t gslot(const int64_t *allnodes, int64_t nall, const int64_t *uf, const int64_t *root_slot, int64_t id)
{
    int64_t u = tmd_i64_find_sorted(allnodes, nall, id);
    return u >= 0 ? root_slot[uf[u]] : -1;
}

/* The profile sums of a mosaic: the atoms of this rank's tiles that meet the profile window,
 * read from their tile files. */
static tmd_status streamed_profile(tmd_ctx *ctx, tmd_run *run, const tmd_lattice *lat, int64_t *hist)
{
    const tmd_decomp *d = run->decomp;
    int64_t H = run->info.height, W = run->info.width;
    double wx = W < PROF_WIN ? (double)W : PROF_WIN, wy = H < PROF_WIN ? (double)H : PROF_WIN;
    double x0 = floor(0.5 * ((double)W - wx)), y0 = floor(0.5 * ((double)H - wy));
    tmd_atom_table t;
    tmd_atom_table_init(&t, run->atoms.nprob);
    tmd_status st = run->atoms.nlatent ? tmd_atom_table_set_latent(ctx, &t, run->atoms.nlatent) : TMD_OK;
    for (int64_t i = 0; i < d->nlocal && !st; i++) {
        int64_t g = tmd_decomp_local_tile(d, i);
        tmd_box tb;
        tmd_decomp_tile_box(d, g, &tb, NULL);
        if ((double)tb.hi[2] <= x0 || (double)tb.lo[2] >= x0 + wx + 1 || (double)tb.hi[1] <= y0 ||
            (double)tb.lo[1] >= y0 + wy + 1)
            continue;
        t.n = 0;
        st = tmd_run_tile_rows_read(ctx, run, "tile", g, &t);
        if (!st) st = profile_accumulate(ctx, run, &tb, lat, t.n, t.frame, t.x, t.y, hist);
    }
    tmd_atom_table_free(&t);
    return st;
}

/* The histograms of the global components from this rank's tiles (their atoms' votes, the
 * contrast from the side files, corrected by the cross-talk slope xc < 0 where the xt1 side
 * files hold an N), summed over ranks, and the models fitted (collective). hist, slot_f,
 * slot_a, models and ref are zeroed here. */
static tmd_status streamed_fit(tmd_ctx *ctx, tmd_run *run, const tmd_lattice *lat, const tmd_classify_opts *o,
                               const int64_t *tn, const double *fmax, double xc, const int64_t *allnodes, int64_t nall,
                               const int64_t *uf, const int64_t *root_slot, int64_t nslot, int64_t *hist,
                               int64_t *slot_f, double *slot_a, void *models, void *ref, tmd_classify_report *rep)
{
    const tmd_decomp *d = run->decomp;
    const int64_t T = run->info.frames, HW = tmd_cls_hist_width();
    const size_t MS = tmd_cls_model_size();
    tmd_atom_table own;
    tmd_atom_table_init(&own, run->atoms.nprob);
    side_t side;
    memset(&side, 0, sizeof side);
    float *xn = NULL;
    int64_t xcap = 0;
    tmd_status st = run->atoms.nlatent ? tmd_atom_table_set_latent(ctx, &own, run->atoms.nlatent) : TMD_OK;
    memset(hist, 0, (size_t)nslot * (size_t)HW * sizeof *hist);
    memset(slot_f, 0, (size_t)nslot * sizeof *slot_f);
    memset(slot_a, 0, (size_t)nslot * sizeof *slot_a);
    memset(models, 0, (size_t)nslot * MS);
    memset(ref, 0, (size_t)T * MS);
    for (int64_t i = 0; i < d->nlocal && !st; i++) {
        int64_t g = tmd_decomp_local_tile(d, i);
        own.n = 0;
        st = tmd_run_tile_rows_read(ctx, run, "tile", g, &own);
        if (!st) st = side_read(ctx, run, g, tn[g], &side);
        if (!st && xc < 0) {
            st = grow(ctx, (void **)&xn, &xcap, tn[g] + 1, sizeof *xn);
            if (!st) st = tmd_run_tile_blob_read(ctx, run, "xt1", g, xn, (size_t)tn[g] * sizeof *xn);
        }
        for (int64_t k = 0; k < own.n && !st; k++) {
            if (side.colour[k] < 0) continue;
            int64_t sl = gslot(allnodes, nall, uf, root_slot, side.gid[k]), f = own.frame[k];
            if (sl < 0) {
                st = TMD_FAIL(ctx, TMD_ERR_INTERNAL, "classify: component %llx of tile %lld not gathered",
                              (unsigned long long)side.gid[k], (long long)g);
                break;
            }
            float cv = xc < 0 && xn[k] != 0 ? tmd_cls_xt_apply(side.contrast[k], xn[k], xc) : side.contrast[k];
            double In = fmax[f] > 0 ? cv / fmax[f] : 0;
            tmd_cls_hist_add(hist + sl * HW, side.colour[k], In, own.prob + k * own.nprob, own.nprob);
            slot_f[sl] = f;
            slot_a[sl] = lat[f].period_px * o->pixel_size;
        }
    }
    tmd_atom_table_free(&own);
    side_free(&side);
    free(xn);
    st = tmd_agree(ctx, run->comm, st);
    if (!st) st = TMD_MPI(ctx, MPI_Allreduce(MPI_IN_PLACE, hist, (int)(nslot * HW), MPI_INT64_T, MPI_SUM, run->comm));
    if (!st) st = TMD_MPI(ctx, MPI_Allreduce(MPI_IN_PLACE, slot_f, (int)nslot, MPI_INT64_T, MPI_MAX, run->comm));
    if (!st) st = TMD_MPI(ctx, MPI_Allreduce(MPI_IN_PLACE, slot_a, (int)nslot, MPI_DOUBLE, MPI_MAX, run->comm));
    if (st) return st;
    st = tmd_cls_fit(ctx, run->comm, o, T, nslot, hist, slot_f, slot_a, models, ref, rep);
    return tmd_agree(ctx, run->comm, st);
}

/* held neighbours in a mosaic: the side files OUT.ckpt/hp1-<g>.bin hold per atom of tile g
 * HP1_NF floats (frame, held_pass1's 18 place floats, the pass-1 contrast) and 3 doubles (the
 * pass-1 refined centre x, y and amplitude), HP1_B bytes */
#define HP1_NF 20
#define HP1_B (HP1_NF * 4 + 3 * 8)

static tmd_status hp1_read(tmd_ctx *ctx, tmd_run *run, int64_t g, int64_t n, char **buf, int64_t *cap)
{
    tmd_status st = grow(ctx, (void **)buf, cap, n * HP1_B + 1, 1);
    if (!st) st = tmd_run_tile_blob_read(ctx, run, "hp1", g, *buf, (size_t)(n * HP1_B));
    return st;
}

static float hp1_f(const char *buf, int64_t k, int c)
{
    float v;
    memcpy(&v, buf + k * HP1_B + 4 * c, sizeof v);
    return v;
}

static double hp1_d(const char *buf, int64_t k, int c)
{
    double v;
    memcpy(&v, buf + k * HP1_B + 4 * HP1_NF + 8 * c, sizeof v);
    return v;
}

typedef struct {
    tmd_run *run;
    const int64_t *tn;
} trip_file_t;

static tmd_status trip_file_iter(tmd_ctx *ctx, void *user, gacc_t *acc)
{
    const trip_file_t *u = user;
    const tmd_decomp *d = u->run->decomp;
    char *buf = NULL;
    int64_t cap = 0;
    tmd_status st = TMD_OK;
    for (int64_t i = 0; i < d->nlocal && !st; i++) {
        int64_t g = tmd_decomp_local_tile(d, i), n = u->tn[g];
        st = hp1_read(ctx, u->run, g, n, &buf, &cap);
        for (int64_t k = 0; k < n && !st; k++) {
            float t[19];
            memcpy(t, buf + k * HP1_B, sizeof t);
            gate_add(acc, (int64_t)t[0], t + 1);
        }
    }
    free(buf);
    return st;
}

/* A chunk's pass-1 table from the hp1 side files (every one written by the gate sweep): its
 * own atoms (rows 0..n-1; contrast[n] gets their pass-1 contrast) and the ghosts within
 * HELD_NEAR bond of the box, as held_pass1 would compute them. */
static tmd_status chunk_held_table(tmd_ctx *ctx, tmd_run *run, const chunk_t *c, const tmd_box *box,
                                   const tmd_lattice *lat, const int64_t *tn, const tmd_atom_table *own,
                                   const tmd_atom_table *gh, const int64_t *gtile, const int64_t *gidx, float *contrast,
                                   held_tab *tab)
{
    const tmd_decomp *d = run->decomp;
    double bondmax = 0;
    for (int64_t f = 0; f < run->info.frames; f++) bondmax = fmax(bondmax, lat[f].period_px / sqrt(3.0));
    int64_t n = own->n, N = n;
    for (int64_t j = 0; j < gh->n; j++)
        if (tmd_box_distance(box, gh->y[j], gh->x[j]) <= HELD_NEAR * lat[gh->frame[j]].period_px / sqrt(3.0) + 1) N++;
    char *buf = NULL;
    int64_t cap = 0, r = 0;
    tmd_status st = held_tab_alloc(ctx, tab, N);
    for (int64_t ty = c->ty0; ty < c->ty1 && !st; ty++)
        for (int64_t tx = c->tx0; tx < c->tx1 && !st; tx++) {
            int64_t tc[3] = {0, ty, tx}, g = tmd_decomp_tile_index(d, tc), k = tn[g];
            if (r + k > n) {
                st = TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: tile %lld has fewer rows than counted", run->ckpt, (long long)g);
                break;
            }
            st = hp1_read(ctx, run, g, k, &buf, &cap);
            for (int64_t a = 0; a < k && !st; a++, r++) {
                tab->frame[r] = own->frame[r];
                contrast[r] = hp1_f(buf, a, 19);
                tab->x[r] = hp1_d(buf, a, 0), tab->y[r] = hp1_d(buf, a, 1), tab->a[r] = hp1_d(buf, a, 2);
            }
        }
    int64_t cached = -1;
    for (int64_t j = 0; j < gh->n && !st; j++) {
        if (tmd_box_distance(box, gh->y[j], gh->x[j]) > HELD_NEAR * lat[gh->frame[j]].period_px / sqrt(3.0) + 1) continue;
        if (gtile[j] != cached) {
            st = hp1_read(ctx, run, gtile[j], tn[gtile[j]], &buf, &cap);
            cached = st ? -1 : gtile[j];
        }
        if (st) break;
        tab->frame[r] = gh->frame[j];
        tab->x[r] = hp1_d(buf, gidx[j], 0), tab->y[r] = hp1_d(buf, gidx[j], 1), tab->a[r] = hp1_d(buf, gidx[j], 2);
        r++;
    }
    free(buf);
    if (!st) held_tab_index(tab, bondmax);
    else held_tab_free(tab);
    return st;
}

/* A chunk's held-neighbour pass 1 (owned atoms and the ghosts near the box); with trip, the
 * gate's triples go to the chunk's tiles' hp1 side files. contrast[own->n] out, tab out. */
static tmd_status chunk_held_pass1(tmd_ctx *ctx, tmd_run *run, const chunk_t *c, const tmd_box *box,
                                   const tmd_lattice *lat, double psig, const int64_t *tn, const tmd_atom_table *own,
                                   const tmd_atom_table *gh, float *contrast, held_tab *tab, int want_trip)
{
    const tmd_decomp *d = run->decomp;
    pix_t px = pix_of_run(run);
    int64_t n = own->n;
    float *trip = NULL;
    char *buf = NULL;
    tmd_status st = TMD_OK;
    if (want_trip) st = tmd_calloc(ctx, (void **)&trip, (size_t)(18 * n) + 1, sizeof *trip, "held contrast");
    if (!st) st = held_pass1(ctx, &px, box, lat, psig, n, own->frame, own->x, own->y, gh->n, gh->frame, gh->x, gh->y,
                             contrast, tab, trip);
    int64_t r = 0;
    for (int64_t ty = c->ty0; ty < c->ty1 && !st && want_trip; ty++)
        for (int64_t tx = c->tx0; tx < c->tx1 && !st; tx++) {
            int64_t tc[3] = {0, ty, tx}, g = tmd_decomp_tile_index(d, tc), k = tn[g];
            if (r + k > n) {
                st = TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: tile %lld has fewer rows than counted", run->ckpt, (long long)g);
                break;
            }
            free(buf);
            buf = NULL;
            st = tmd_calloc(ctx, (void **)&buf, (size_t)(HP1_B * k) + 1, 1, "held contrast");
            for (int64_t a = 0; a < k && !st; a++) {
                char *rec = buf + a * HP1_B;
                float fr = (float)own->frame[r + a];
                double dd[3] = {tab->x[r + a], tab->y[r + a], tab->a[r + a]};
                memcpy(rec, &fr, 4);
                memcpy(rec + 4, trip + 18 * (r + a), 18 * 4);
                memcpy(rec + 76, contrast + r + a, 4);
                memcpy(rec + 4 * HP1_NF, dd, sizeof dd);
            }
            if (!st) st = tmd_run_tile_blob_write(ctx, run, "hp1", g, buf, (size_t)(HP1_B * k));
            r += k;
        }
    free(trip), free(buf);
    return st;
}

static tmd_status classify_streamed(tmd_ctx *ctx, tmd_run *run, const tmd_lattice *lat, double psig,
                                    tmd_classify_opts *o, tmd_classify_report *rep)
{
    const tmd_decomp *d = run->decomp;
    const int64_t T = run->info.frames, H = run->info.height, Wd = run->info.width, G = d->ntiles_total;
    const int64_t B = run->cfg.classify_band_tiles, HW = tmd_cls_hist_width();
    const size_t MS = tmd_cls_model_size();
    tmd_status st = TMD_OK;
    tmd_atom_table own, gh;
    tmd_atom_table_init(&own, run->atoms.nprob);
    tmd_atom_table_init(&gh, run->atoms.nprob);
    chunk_t *chunks = NULL;
    int64_t nch = 0, *gtile = NULL, *gidx = NULL, *comp = NULL, *gid = NULL, *slot = NULL;
    int8_t *colour = NULL, *edge = NULL, *gcol = NULL;
    float *contrast = NULL;
    link_t *links = NULL, *alllinks = NULL;
    pending_t *pend = NULL;
    int64_t *tn = NULL, *cls_n = NULL; /* rows per tile: of the tile pass, classified */
    int64_t *nodes = NULL, *allnodes = NULL, *uf = NULL, *root_slot = NULL, *hist = NULL, *slot_f = NULL;
    double *slot_a = NULL, *fmax = NULL;
    void *models = NULL, *ref = NULL;
    int *cnt = NULL, *dsp = NULL;
    side_t side, side2;
    memset(&side, 0, sizeof side);
    memset(&side2, 0, sizeof side2);
    int64_t nlinks = 0, caplinks = 0, npend = 0, cappend = 0, nnodes = 0, capnodes = 0, nall = 0, nslot = 0;
    int8_t *xfr = NULL; /* cross-talk: frames where it is on, the sums, the first fit's models, N per row */
    int64_t *xh = NULL;
    void *models1 = NULL;
    float *xnb = NULL;
    held_tab htab; /* held neighbours: a chunk's pass-1 table, the frames held */
    memset(&htab, 0, sizeof htab);
    int8_t *hold = NULL;
    double *hstat = NULL;
    int held_any = 0;
    double xc = 0, xmed = 0;
    int xany = 0;
    memset(rep, 0, sizeof *rep);
    double gd = 0;
    for (int64_t f = 0; f < T; f++) gd = gd > 4.0 * lat[f].period_px ? gd : 4.0 * lat[f].period_px;
    if (run->atoms.nlatent) {
        st = tmd_atom_table_set_latent(ctx, &own, run->atoms.nlatent);
        if (!st) st = tmd_atom_table_set_latent(ctx, &gh, run->atoms.nlatent);
    }
    /* chunks of B x B tiles over this rank's block, row-major */
    int64_t ny = (d->thi[1] - d->tlo[1] + B - 1) / B, nx = (d->thi[2] - d->tlo[2] + B - 1) / B;
    if (d->nlocal > 0 && ny > 0 && nx > 0)
        st = tmd_calloc(ctx, (void **)&chunks, (size_t)(ny * nx), sizeof *chunks, "classify chunks");
    if (!st) st = tmd_calloc(ctx, (void **)&fmax, (size_t)T + 1, sizeof *fmax, "classify");
    if (!st) st = tmd_calloc(ctx, (void **)&xfr, (size_t)T + 1, 1, "classify");
    if (!st) st = tmd_calloc(ctx, (void **)&tn, (size_t)G + 1, sizeof *tn, "classify");
    if (!st) st = tmd_calloc(ctx, (void **)&cls_n, (size_t)G + 1, sizeof *cls_n, "classify");
    if (!st) memcpy(tn, run->tile_rows, (size_t)G * sizeof *tn);
    for (int64_t a = 0; a < ny && !st && d->nlocal > 0; a++)
        for (int64_t b = 0; b < nx; b++) {
            chunk_t *c = &chunks[nch++];
            c->ty0 = d->tlo[1] + a * B;
            c->ty1 = c->ty0 + B < d->thi[1] ? c->ty0 + B : d->thi[1];
            c->tx0 = d->tlo[2] + b * B;
            c->tx1 = c->tx0 + B < d->thi[2] ? c->tx0 + B : d->thi[2];
        }
    /* side and classified files of an interrupted earlier run (--resume, possibly at another
     * rank count, so with other chunks) must not be taken for this run's */
    for (int64_t i = 0; i < d->nlocal && !st; i++) {
        int64_t g = tmd_decomp_local_tile(d, i);
        st = tmd_run_tile_file_remove(ctx, run, "cp1", g);
        if (!st) st = tmd_run_tile_file_remove(ctx, run, "cls", g);
        if (!st) st = tmd_run_tile_file_remove(ctx, run, "xt1", g);
        if (!st) st = tmd_run_tile_file_remove(ctx, run, "hp1", g);
    }
    st = tmd_agree(ctx, run->comm, st); /* (a barrier: no rank reads before all removed) */
    if (st) goto cleanup;

    /* ---- held neighbours (o->held_gate): the gate's sweep. Per chunk pass 1 of its atoms and
     * the ghosts near it (recomputed from the same pixels), the place triples to hp1 side
     * files; then the gate from all ranks' triples (same medians as in memory) ---- */
    if (o->held_gate > 0) {
        double t0 = MPI_Wtime(), t1 = t0;
        st = tmd_calloc(ctx, (void **)&hold, (size_t)T + 1, sizeof *hold, "classify held");
        if (!st) st = tmd_calloc(ctx, (void **)&hstat, (size_t)T + 1, sizeof *hstat, "classify held");
        for (int64_t ci = 0; ci < nch && !st; ci++) {
            const chunk_t *c = &chunks[ci];
            tmd_box box;
            chunk_box(d, c, &box);
            st = chunk_load(ctx, run, c, &box, gd, &own, &gh, &gtile, &gidx);
            free(contrast);
            contrast = NULL;
            if (!st) st = tmd_calloc(ctx, (void **)&contrast, (size_t)own.n + 1, sizeof *contrast, "classify contrast");
            if (!st) st = chunk_held_pass1(ctx, run, c, &box, lat, psig, tn, &own, &gh, contrast, &htab, 1);
            held_tab_free(&htab);
        }
        st = tmd_agree(ctx, run->comm, st); /* (a barrier: every hp1 file is written) */
        t1 = MPI_Wtime();
        if (!st) {
            trip_file_t tf = {run, tn};
            st = gate_compute(ctx, run->comm, T, o->held_gate, trip_file_iter, &tf, hold, hstat);
        }
        if (st) goto cleanup;
        int64_t nh = 0;
        for (int64_t f = 0; f < T; f++) nh += hold[f];
        held_any = nh > 0;
        tmd_info(ctx, "classify: neighbour places held in %lld of %lld frames (frame 0: free-place scatter %.2f x its "
                 "LSQ error, gate %.2f)", (long long)nh, (long long)T, hstat[0], o->held_gate);
        tmd_info(ctx, "classify: held gate on rank 0: pass-1 sweep %.3f s, medians %.3f s", t1 - t0, MPI_Wtime() - t1);
    }

    /* ---- pass 1: contrast, graph, components, links ---- */
    for (int64_t ci = 0; ci < nch && !st; ci++) {
        const chunk_t *c = &chunks[ci];
        tmd_box box;
        chunk_box(d, c, &box);
        st = chunk_load(ctx, run, c, &box, gd, &own, &gh, &gtile, &gidx);
        int64_t n = own.n, m = gh.n, N = n + m;
        free(contrast), free(comp), free(colour), free(edge), free(gid);
        contrast = NULL, comp = NULL, colour = NULL, edge = NULL, gid = NULL;
        if (!st) st = tmd_calloc(ctx, (void **)&contrast, (size_t)n + 1, sizeof *contrast, "classify contrast");
        if (!st) st = tmd_calloc(ctx, (void **)&comp, (size_t)N + 1, sizeof *comp, "classify");
        if (!st) st = tmd_calloc(ctx, (void **)&gid, (size_t)N + 1, sizeof *gid, "classify");
        if (!st) st = tmd_calloc(ctx, (void **)&colour, (size_t)N + 1, 1, "classify");
        if (!st) st = tmd_calloc(ctx, (void **)&edge, (size_t)N + 1, 1, "classify");
        if (!st && o->held_gate > 0) { /* held neighbours: pass 1 from the gate sweep, the held refit */
            pix_t px = pix_of_run(run);
            st = chunk_held_table(ctx, run, c, &box, lat, tn, &own, &gh, gtile, gidx, contrast, &htab);
            if (!st && held_any) st = held_pass2(ctx, &px, &box, lat, psig, &htab, hold, n, contrast);
            held_tab_free(&htab);
        } else if (!st) {
            pix_t px = pix_of_run(run);
            st = measure_contrast(ctx, &px, &box, lat, psig, n, own.frame, own.x, own.y, contrast, NULL, NULL);
        }
        for (int64_t i = 0; i < n && !st; i++)
            if (contrast[i] > fmax[own.frame[i]]) fmax[own.frame[i]] = contrast[i];
        if (st) break;
        tmd_cls_bands bd;
        memset(&bd, 0, sizeof bd);
        bd.phase = 1;
        bd.comp = comp;
        bd.colour = colour;
        bd.edge = edge;
        tmd_classify_opts o1 = *o;
        o1.bands = &bd;
        o1.measure = NULL;
        o1.carry = NULL;
        tmd_defect_table none;
        tmd_defect_table_init(&none);
        st = tmd_classify(ctx, MPI_COMM_SELF, &o1, T, lat, &box, H, Wd, &own, &gh, &none, NULL);
        tmd_defect_table_free(&none);
        if (st) break;
        int64_t key;
        {
            int64_t tc[3] = {0, c->ty0, c->tx0};
            key = tmd_decomp_tile_index(d, tc) << 32;
        }
        for (int64_t i = 0; i < N; i++) gid[i] = key | comp[i];
        /* side files, per tile (rows in tile order) */
        int64_t r = 0;
        for (int64_t ty = c->ty0; ty < c->ty1 && !st; ty++)
            for (int64_t tx = c->tx0; tx < c->tx1 && !st; tx++) {
                int64_t tc[3] = {0, ty, tx}, g = tmd_decomp_tile_index(d, tc), k = tn[g];
                if (r + k > n) {
                    st = TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: tile %lld has fewer rows than counted", run->ckpt, (long long)g);
                    break;
                }
                st = side_write(ctx, run, g, k, contrast + r, colour + r, gid + r);
                r += k;
            }
        /* components with owned atoms */
        for (int64_t i = 0; i < n && !st; i++) {
            if (colour[i] < 0) continue;
            st = grow(ctx, (void **)&nodes, &capnodes, nnodes + 1, sizeof *nodes);
            if (!st) nodes[nnodes++] = gid[i];
        }
        if (!st && nnodes > 0) { /* keep them unique as we go */
            if (nnodes > 1) qsort(nodes, (size_t)nnodes, sizeof *nodes, tmd_i64_compare);
            int64_t u = 0;
            for (int64_t i = 0; i < nnodes; i++)
                if (u == 0 || nodes[u - 1] != nodes[i]) nodes[u++] = nodes[i];
            nnodes = u;
        }
        /* links through the ghosts that end joining bonds */
        int64_t cached = -1;
        for (int64_t j = n; j < N && !st; j++) {
            if (!edge[j] || colour[j] < 0) continue;
            int64_t gt = gtile[j - n], gk = gidx[j - n];
            if (gt != cached) {
                if (tmd_run_tile_file_exists(run, "cp1", gt)) {
                    st = side_read(ctx, run, gt, tn[gt], &side);
                    cached = st ? -1 : gt;
                } else {
                    side_free(&side);
                    cached = -2 - gt;
                }
            }
            if (st) break;
            if (cached == gt) {
                st = grow(ctx, (void **)&links, &caplinks, nlinks + 1, sizeof *links);
                if (!st) links[nlinks++] = (link_t){gid[j], side.gid[gk]};
            } else if (tmd_decomp_tile_owner(d, gt) != ctx->rank) {
                st = grow(ctx, (void **)&pend, &cappend, npend + 1, sizeof *pend);
                if (!st) pend[npend++] = (pending_t){gt, gk, gid[j]};
            } /* else: a later chunk of this rank owns it and sees this bond from its side */
        }
        if (!st && nlinks > 0) {
            if (nlinks > 1) qsort(links, (size_t)nlinks, sizeof *links, cmp_link);
            int64_t u = 0;
            for (int64_t i = 0; i < nlinks; i++)
                if (u == 0 || links[u - 1].a != links[i].a || links[u - 1].b != links[i].b) links[u++] = links[i];
            nlinks = u;
        }
    }
    st = tmd_agree(ctx, run->comm, st);
    if (st) goto cleanup;
    st = TMD_MPI(ctx, MPI_Allreduce(MPI_IN_PLACE, fmax, (int)T, MPI_DOUBLE, MPI_MAX, run->comm));
    if (st) goto cleanup;
    /* links to other ranks' tiles, now that every side file exists */
    if (npend > 1) qsort(pend, (size_t)npend, sizeof *pend, cmp_pending); /* pend is NULL when empty */
    for (int64_t p = 0; p < npend && !st; p++) {
        if (p == 0 || pend[p].tile != pend[p - 1].tile) st = side_read(ctx, run, pend[p].tile, tn[pend[p].tile], &side);
        if (!st) st = grow(ctx, (void **)&links, &caplinks, nlinks + 1, sizeof *links);
        if (!st) links[nlinks++] = (link_t){pend[p].gid, side.gid[pend[p].idx]};
    }
    st = tmd_agree(ctx, run->comm, st);
    if (st) goto cleanup;

    /* ---- merge: global components (same on every rank) ---- */
    {
        int P = ctx->nranks;
        int mine = (int)nnodes, tot = 0;
        st = tmd_calloc(ctx, (void **)&cnt, (size_t)P, sizeof(int), "classify");
        if (!st) st = tmd_calloc(ctx, (void **)&dsp, (size_t)P, sizeof(int), "classify");
        st = tmd_agree(ctx, run->comm, st);
        if (st) goto cleanup;
        st = TMD_MPI(ctx, MPI_Allgather(&mine, 1, MPI_INT, cnt, 1, MPI_INT, run->comm));
        for (int r = 0; r < P; r++) dsp[r] = tot, tot += cnt[r];
        nall = tot;
        if (!st) st = tmd_calloc(ctx, (void **)&allnodes, (size_t)nall + 1, sizeof *allnodes, "classify components");
        if (!st) st = tmd_calloc(ctx, (void **)&uf, (size_t)nall + 1, sizeof *uf, "classify components");
        if (!st) st = tmd_calloc(ctx, (void **)&root_slot, (size_t)nall + 1, sizeof *root_slot, "classify components");
        st = tmd_agree(ctx, run->comm, st);
        if (st) goto cleanup;
        st = TMD_MPI(ctx, MPI_Allgatherv(nodes, mine, MPI_INT64_T, allnodes, cnt, dsp, MPI_INT64_T, run->comm));
        if (st) goto cleanup;
        if (nall > 1) qsort(allnodes, (size_t)nall, sizeof *allnodes, tmd_i64_compare); /* unique: each chunk's ids differ */
        for (int64_t i = 0; i < nall; i++) uf[i] = i;
        mine = (int)(2 * nlinks), tot = 0;
        st = TMD_MPI(ctx, MPI_Allgather(&mine, 1, MPI_INT, cnt, 1, MPI_INT, run->comm));
        for (int r = 0; r < P; r++) dsp[r] = tot, tot += cnt[r];
        if (!st) st = tmd_calloc(ctx, (void **)&alllinks, (size_t)tot / 2 + 1, sizeof *alllinks, "classify links");
        st = tmd_agree(ctx, run->comm, st);
        if (st) goto cleanup;
        st = TMD_MPI(ctx, MPI_Allgatherv(links, mine, MPI_INT64_T, alllinks, cnt, dsp, MPI_INT64_T, run->comm));
        if (st) goto cleanup;
        for (int64_t l = 0; l < tot / 2; l++) {
            int64_t a = tmd_i64_find_sorted(allnodes, nall, alllinks[l].a), b = tmd_i64_find_sorted(allnodes, nall, alllinks[l].b);
            if (a >= 0 && b >= 0) tmd_uf_union(uf, a, b);
        }
        /* slots in the order of each set's first (smallest) id */
        for (int64_t i = 0; i < nall; i++) root_slot[i] = -1;
        for (int64_t i = 0; i < nall; i++) {
            int64_t r = tmd_uf_find(uf, i);
            if (root_slot[r] < 0) root_slot[r] = nslot++;
        }
        for (int64_t i = 0; i < nall; i++) uf[i] = tmd_uf_find(uf, i);
        free(alllinks);
        alllinks = NULL;
    }
#define GSLOT(id) gslot(allnodes, nall, uf, root_slot, (id))

    /* ---- histograms of the global components, fit ---- */
    st = tmd_calloc(ctx, (void **)&hist, (size_t)nslot * (size_t)HW + 1, sizeof *hist, "classify histograms");
    if (!st) st = tmd_calloc(ctx, (void **)&slot_f, (size_t)nslot + 1, sizeof *slot_f, "classify");
    if (!st) st = tmd_calloc(ctx, (void **)&slot_a, (size_t)nslot + 1, sizeof *slot_a, "classify");
    if (!st) st = tmd_calloc(ctx, (void **)&models, (size_t)nslot + 1, MS, "classify models");
    if (!st) st = tmd_calloc(ctx, (void **)&ref, (size_t)T + 1, MS, "classify models");
    st = tmd_agree(ctx, run->comm, st);
    if (st) goto cleanup;
    st = streamed_fit(ctx, run, lat, o, tn, fmax, 0.0, allnodes, nall, uf, root_slot, nslot, hist, slot_f, slot_a, models,
                      ref, rep);
    if (st) goto cleanup;
    tmd_info(ctx, "classify: streamed over %lld chunks of up to %lld x %lld tiles on rank 0; %lld components (%lld "
             "pieces merged)", (long long)nch, (long long)B, (long long)B, (long long)nslot, (long long)nall);

    /* ---- cross-talk correction (tmd_classify_opts.xtalk): in metal alloys, a statistics pass
     * (tmd_classify phase 3 per chunk with the first fit's models: species, then each owned
     * chalcogen's N to the xt1 side files and the regression sums), the slope from the sums of
     * all ranks, and with a negative slope the fit again on the corrected contrast ---- */
    xany = o->xtalk && tmd_cls_xt_frames(ref, T, xfr) ? 1 : 0;
    if (xany) {
        st = tmd_calloc(ctx, (void **)&xh, tmd_cls_xt_size(), sizeof *xh, "classify cross-talk sums");
        if (!st) st = tmd_calloc(ctx, (void **)&models1, (size_t)nslot + 1, MS, "classify models");
        st = tmd_agree(ctx, run->comm, st);
        if (st) goto cleanup;
        memcpy(models1, models, (size_t)nslot * MS);
    }
    /* ---- pass 2: apply (ap = 1), after the cross-talk statistics (ap = 0) ---- */
    for (int ap = xany ? 0 : 1; ap < 2 && !st; ap++) {
    if (ap == 1 && xany) {
        st = TMD_MPI(ctx, MPI_Allreduce(MPI_IN_PLACE, xh, (int)tmd_cls_xt_size(), MPI_INT64_T, MPI_SUM, run->comm));
        if (!st) st = tmd_cls_xt_solve(ctx, xh, &xc, &xmed);
        st = tmd_agree(ctx, run->comm, st);
        if (st) goto cleanup;
        tmd_info(ctx, "classify: cross-talk slope %.5f in the metal alloy (median metal %.3f of the maximum)%s", xc, xmed,
                 xc < 0 ? ": classified again on the corrected contrast" : ": none");
        if (xc < 0)
            st = streamed_fit(ctx, run, lat, o, tn, fmax, xc, allnodes, nall, uf, root_slot, nslot, hist, slot_f, slot_a,
                              models, ref, rep);
        if (st) goto cleanup;
    }
    for (int64_t ci = 0; ci < nch && !st; ci++) {
        const chunk_t *c = &chunks[ci];
        tmd_box box;
        chunk_box(d, c, &box);
        tmd_atom_table_free(&own); /* tmd_classify left it with the species probabilities */
        tmd_atom_table_init(&own, run->atoms.nprob);
        if (run->atoms.nlatent) st = tmd_atom_table_set_latent(ctx, &own, run->atoms.nlatent);
        if (!st) st = chunk_load(ctx, run, c, &box, gd, &own, &gh, &gtile, &gidx);
        int64_t n = own.n, m = gh.n, N = n + m;
        free(contrast), free(slot), free(gcol);
        contrast = NULL, slot = NULL, gcol = NULL;
        if (!st) st = tmd_calloc(ctx, (void **)&contrast, (size_t)(own.cap > n ? own.cap : n) + 1, sizeof *contrast, "classify contrast");
        if (!st) st = tmd_calloc(ctx, (void **)&slot, (size_t)N + 1, sizeof *slot, "classify");
        if (!st) st = tmd_calloc(ctx, (void **)&gcol, (size_t)m + 1, 1, "classify");
        /* owned: their tiles' side files, in order */
        int64_t r = 0;
        for (int64_t ty = c->ty0; ty < c->ty1 && !st; ty++)
            for (int64_t tx = c->tx0; tx < c->tx1 && !st; tx++) {
                int64_t tc[3] = {0, ty, tx}, g = tmd_decomp_tile_index(d, tc);
                st = side_read(ctx, run, g, tn[g], &side);
                for (int64_t k = 0; k < side.n && !st; k++, r++) {
                    contrast[r] = side.contrast[k];
                    slot[r] = side.colour[k] >= 0 ? GSLOT(side.gid[k]) : -1;
                }
            }
        if (!st && r != n) st = TMD_FAIL(ctx, TMD_ERR_INTERNAL, "classify: chunk side files hold %lld rows, tiles %lld", (long long)r, (long long)n);
        free(xnb);
        xnb = NULL;
        if (!st && (ap == 0 || xc < 0)) st = tmd_calloc(ctx, (void **)&xnb, (size_t)n + 1, sizeof *xnb, "classify");
        /* pass 2 with the correction: the owned chalcogens' N from the statistics pass */
        r = 0;
        for (int64_t ty = c->ty0; ty < c->ty1 && !st && ap == 1 && xc < 0; ty++)
            for (int64_t tx = c->tx0; tx < c->tx1 && !st; tx++) {
                int64_t tc[3] = {0, ty, tx}, g = tmd_decomp_tile_index(d, tc);
                st = tmd_run_tile_blob_read(ctx, run, "xt1", g, xnb + r, (size_t)tn[g] * sizeof *xnb);
                r += tn[g];
            }
        /* ghosts: the owners' contrast, colour and component */
        int64_t cached = -1;
        for (int64_t j = 0; j < m && !st; j++) {
            if (gtile[j] != cached) {
                st = side_read(ctx, run, gtile[j], tn[gtile[j]], &side2);
                cached = gtile[j];
            }
            if (st) break;
            int64_t k = gidx[j];
            gh.intensity[j] = side2.contrast[k];
            gcol[j] = side2.colour[k];
            slot[n + j] = side2.colour[k] >= 0 ? GSLOT(side2.gid[k]) : -1;
        }
        if (st) break;
        tmd_cls_bands bd;
        memset(&bd, 0, sizeof bd);
        bd.phase = 2;
        bd.slot = slot;
        bd.gcolour = gcol;
        bd.nslot = nslot;
        bd.models = models;
        bd.ref = ref;
        bd.fmax = fmax;
        tmd_classify_opts o2 = *o;
        o2.bands = &bd;
        if (ap == 0) { /* cross-talk statistics: N of the owned chalcogens to xt1, sums to xh */
            bd.phase = 3;
            bd.models = models1;
            bd.xn = xnb;
            bd.xhist = xh;
            o2.measure = NULL;
            o2.carry = NULL;
            tmd_defect_table none;
            tmd_defect_table_init(&none);
            float *keep = own.intensity;
            own.intensity = contrast;
            st = tmd_classify(ctx, MPI_COMM_SELF, &o2, T, lat, &box, H, Wd, &own, &gh, &none, NULL);
            own.intensity = keep;
            tmd_defect_table_free(&none);
            r = 0;
            for (int64_t ty = c->ty0; ty < c->ty1 && !st; ty++)
                for (int64_t tx = c->tx0; tx < c->tx1 && !st; tx++) {
                    int64_t tc[3] = {0, ty, tx}, g = tmd_decomp_tile_index(d, tc);
                    st = tmd_run_tile_blob_write(ctx, run, "xt1", g, xnb + r, (size_t)tn[g] * sizeof *xnb);
                    r += tn[g];
                }
            continue;
        }
        if (xc < 0) {
            bd.xn = xnb;
            bd.models1 = models1;
            bd.xframe = xfr;
            bd.xc = xc;
            bd.xmed = xmed;
        }
        measure_user_t mu = {run, &box, lat, psig, NULL, NULL};
        held_tab_free(&htab);
        if (held_any) { /* the vacancy sites' held refit needs the chunk's pass-1 table again */
            float *scratch = NULL;
            st = tmd_calloc(ctx, (void **)&scratch, (size_t)n + 1, sizeof *scratch, "classify held");
            if (!st) st = chunk_held_table(ctx, run, c, &box, lat, tn, &own, &gh, gtile, gidx, scratch, &htab);
            free(scratch);
            if (st) break;
            mu.tab = &htab, mu.hold = hold;
        }
        o2.measure_user = &mu;
        float *keep = own.intensity;
        own.intensity = contrast;
        o2.carry = keep;
        tmd_classify_report rc;
        st = tmd_classify(ctx, MPI_COMM_SELF, &o2, T, lat, &box, H, Wd, &own, &gh, &run->defects, &rc);
        own.intensity = keep;
        if (st) break;
        rep->n_vm += rc.n_vm, rep->n_vx += rc.n_vx, rep->n_vx2 += rc.n_vx2;
        rep->n_dropped += rc.n_dropped, rep->n_removed += rc.n_removed;
        rep->n_isolated += rc.n_isolated, rep->n_conflicts += rc.n_conflicts;
        /* each tile's rows (the tile holding the centre: the canonical order's key) */
        int64_t i = 0;
        for (int64_t ty = c->ty0; ty < c->ty1 && !st; ty++)
            for (int64_t tx = c->tx0; tx < c->tx1 && !st; tx++) {
                int64_t tc[3] = {0, ty, tx}, g = tmd_decomp_tile_index(d, tc), i0 = i;
                while (i < own.n && tmd_decomp_tile_of(d, own.frame[i], own.y[i], own.x[i]) == g) i++;
                st = tmd_run_tile_rows_write(ctx, run, "cls", g, &own, i0, i);
                cls_n[g] = i - i0;
            }
        if (!st && i != own.n)
            st = TMD_FAIL(ctx, TMD_ERR_INTERNAL, "classify: atom at (%g, %g) is not in the tile that found it", own.x[i],
                          own.y[i]);
    }
    st = tmd_agree(ctx, run->comm, st);
    }
    st = tmd_agree(ctx, run->comm, st);
    if (st) goto cleanup;
    /* the classified rows' counts: each tile's owner set its own */
    st = TMD_MPI(ctx, MPI_Allreduce(MPI_IN_PLACE, cls_n, (int)G, MPI_INT64_T, MPI_SUM, run->comm));
    if (!st) {
        memcpy(run->tile_rows, cls_n, (size_t)G * sizeof *cls_n);
        snprintf(run->stream_kind, sizeof run->stream_kind, "cls");
    }
#undef GSLOT
cleanup:
    tmd_atom_table_free(&own);
    tmd_atom_table_free(&gh);
    side_free(&side);
    side_free(&side2);
    free(chunks), free(gtile), free(gidx), free(comp), free(gid), free(slot), free(colour), free(edge), free(gcol);
    free(contrast), free(links), free(alllinks), free(pend), free(nodes), free(allnodes), free(uf), free(root_slot);
    free(tn), free(cls_n), free(hist), free(slot_f), free(slot_a), free(fmax), free(models), free(ref), free(cnt), free(dsp);
    free(xfr), free(xh), free(models1), free(xnb);
    held_tab_free(&htab);
    free(hold), free(hstat);
    return st;
}

tmd_status tmd_stage_classify(tmd_ctx *ctx, tmd_run *run)
{
    int64_t T = run->info.frames;
    tmd_lattice *lat = NULL;
    tmd_ghost *g = NULL;
    float *contrast = NULL;
    held_tab htab;
    memset(&htab, 0, sizeof htab);
    int8_t *hold = NULL;
    double *hstat = NULL;
    tmd_status st = TMD_OK;
    int have = run->lattice_a1 != NULL && run->lattice_a2 != NULL, all = 0;
    MPI_Allreduce(&have, &all, 1, MPI_INT, MPI_MIN, run->comm);
    if (!all) {
        tmd_info(ctx, "classify: skipped (no lattice was found, so no sublattices): species stay the segmentation's");
        return TMD_OK;
    }
    st = tmd_calloc(ctx, (void **)&lat, (size_t)(T > 0 ? T : 1), sizeof *lat, "classify lattices");
    st = tmd_agree(ctx, run->comm, st);
    if (st) return st;
    double gd = 0;
    for (int64_t f = 0; f < T; f++) {
        const double *a1 = run->lattice_a1 + 2 * f, *a2 = run->lattice_a2 + 2 * f;
        double det = a1[0] * a2[1] - a1[1] * a2[0];
        double g1[2] = {a2[1] / det, -a2[0] / det}, g2[2] = {-a1[1] / det, a1[0] / det};
        tmd_lattice_from_reciprocal(&lat[f], g1, g2);
        double d = tmd_classify_ghost_distance(&lat[f]);
        if (d > gd) gd = d;
    }
    tmd_box own;
    tmd_decomp_rank_box(run->decomp, run->decomp->rank, &own);
    tmd_classify_opts o;
    tmd_classify_opts_default(&o);
    o.constraint = run->cfg.constraint;
    /* the column profile (collective): from the rank's atoms, or in a mosaic from its tile files */
    int64_t hist[2 * PROF_NB] = {0};
    if (!run->stream)
        st = profile_accumulate(ctx, run, &own, lat, run->atoms.n, run->atoms.frame, run->atoms.x, run->atoms.y, hist);
    else
        st = streamed_profile(ctx, run, lat, hist);
    st = tmd_agree(ctx, run->comm, st);
    if (st) goto cleanup;
    double psig = 0.2;
    profile_sigma(ctx, run, hist, &psig);
    measure_user_t mu = {run, &own, lat, psig, NULL, NULL};
    o.measure = measure_cb;
    o.measure_user = &mu;
    if (!strcmp(run->pixel_size_source, "--pixel-size") || !strcmp(run->pixel_size_source, "configuration") ||
        !strcmp(run->pixel_size_source, "file metadata"))
        o.pixel_size = run->pixel_size; /* independent of the lattice: its constant tells S from Se */
    tmd_classify_report rep;
    if (run->stream) { /* mosaics: chunk by chunk from the tile files (above) */
        st = classify_streamed(ctx, run, lat, psig, &o, &rep);
        st = tmd_agree(ctx, run->comm, st);
        if (st) goto cleanup;
        goto report;
    }
    /* the contrast model sees column contrast above the local background, measured on the
     * raw input (/atoms/intensity keeps the atom stage's integrated intensity) */
    st = tmd_calloc(ctx, (void **)&contrast, (size_t)(run->atoms.cap > 0 ? run->atoms.cap : 1), sizeof(float),
                    "classify contrast");
    st = tmd_agree(ctx, run->comm, st);
    if (st) goto cleanup;
    pix_t px = pix_of_run(run);
    float *keep = run->atoms.intensity;
    if (o.held_gate > 0) { /* held neighbours: the ghosts' positions first (their pass 1 is recomputed here) */
        st = tmd_calloc(ctx, (void **)&hold, (size_t)T + 1, sizeof *hold, "classify held");
        if (!st) st = tmd_calloc(ctx, (void **)&hstat, (size_t)T + 1, sizeof *hstat, "classify held");
        st = tmd_agree(ctx, run->comm, st);
        if (!st) st = tmd_ghost_create(ctx, run->comm, &own, gd, &g);
        if (!st) {
            run->ghosts.n = 0;
            st = tmd_ghost_exchange(ctx, g, &run->atoms, &run->ghosts);
        }
        st = tmd_agree(ctx, run->comm, st);
        if (!st)
            st = held_measure(ctx, run->comm, &px, &own, lat, psig, o.held_gate, run->atoms.n, run->atoms.frame,
                              run->atoms.x, run->atoms.y, run->ghosts.n, run->ghosts.frame, run->ghosts.x,
                              run->ghosts.y, contrast, &htab, hold, hstat);
        if (st) goto cleanup;
        int64_t nh = 0;
        for (int64_t f = 0; f < T; f++) nh += hold[f];
        tmd_info(ctx, "classify: neighbour places held in %lld of %lld frames (frame 0: free-place scatter %.2f x its "
                 "LSQ error, gate %.2f)", (long long)nh, (long long)T, hstat[0], o.held_gate);
        if (nh > 0) mu.tab = &htab, mu.hold = hold;
    } else
        st = measure_contrast(ctx, &px, &own, lat, psig, run->atoms.n, run->atoms.frame, run->atoms.x, run->atoms.y,
                              contrast, NULL, NULL);
    st = tmd_agree(ctx, run->comm, st);
    if (st) goto cleanup;
    /* ghosts carry the owner's (final) contrast (the local references of tmd_classify read it) */
    run->atoms.intensity = contrast;
    if (!g) st = tmd_ghost_create(ctx, run->comm, &own, gd, &g);
    if (!st) {
        run->ghosts.n = 0;
        st = tmd_ghost_exchange(ctx, g, &run->atoms, &run->ghosts);
    }
    tmd_ghost_destroy(&g);
    run->atoms.intensity = keep;
    if (st) goto cleanup;
    if (ctx->log_level >= TMD_LOG_DEBUG) {
        int64_t c[TMD_NCLASSES] = {0};
        for (int64_t i = 0; i < run->atoms.n && run->atoms.nprob == TMD_NCLASSES; i++) {
            int b = 1;
            for (int q = 2; q < TMD_NCLASSES; q++)
                if (run->atoms.prob[i * TMD_NCLASSES + q] > run->atoms.prob[i * TMD_NCLASSES + b]) b = q;
            c[b]++;
        }
        tmd_debug(ctx, "classify: segmentation's own guess on rank 0: Mo %lld W %lld S2 %lld SSe %lld Se2 %lld",
                  (long long)c[1], (long long)c[2], (long long)c[3], (long long)c[4], (long long)c[5]);
    }
    run->atoms.intensity = contrast;
    o.carry = keep; /* rows judged empty leave the table: the integrated intensity moves with them */
    st = tmd_classify(ctx, run->comm, &o, T, lat, &own, run->info.height, run->info.width, &run->atoms, &run->ghosts,
                      &run->defects, &rep);
    run->atoms.intensity = keep;
    if (st) goto cleanup;
report:;
    int64_t v[5] = {rep.n_vm, rep.n_vx, rep.n_vx2, rep.n_dropped, rep.n_removed};
    MPI_Allreduce(MPI_IN_PLACE, v, 5, MPI_INT64_T, MPI_SUM, run->comm);
    tmd_debug(ctx, "classify: %lld proposed empty sites showed a column (missed atoms), dropped; %lld detected "
              "columns fitted \"empty\", reported as vacancies and removed", (long long)v[3], (long long)v[4]);
    tmd_info(ctx, "classify: %lld components; fitted exponent %.2f, composition Mo%.2fW%.2f S%.2fSe%.2f (a = %.3f A); "
             "vacancies V_M %lld, V_X %lld, V_X2 %lld",
             (long long)rep.n_components, rep.n_exponent, 1 - rep.x_w, rep.x_w, 2 * (1 - rep.y_se), 2 * rep.y_se,
             rep.a_vegard, (long long)v[0], (long long)v[1], (long long)v[2]);
    /* Vegard's law refines the pixel size (along the fast-scan axis) with the lattice constant
     * of the fitted, most probable composition. Not the posterior mean over the fitted
     * compositions: where compositions of different constants tie (for a pure compound MoS2 at
     * n and WSe2 at 1.24 n give the same contrast; at high noise MoS2 at n 1.75 and W(S,Se)2 at
     * n 2.0, extsim mos2_80kV) the mean lies between two constants 2-4 % apart and is within
     * 1 % of neither, while the most probable one is exact whenever its compound is right (on
     * the independent simulator's WSe2 images the mean gave -1.3 to -1.9 %, the fit's own
     * constant -0.2 to +0.3 %). The mean and the margin are logged. */
    if (!strcmp(run->pixel_size_source, "lattice") && rep.a_vegard > 0) {
        double ps = 0;
        st = tmd_lattice_run_pixel_size_fast(ctx, run, rep.a_vegard, &ps);
        if (!st) {
            tmd_info(ctx, "pixel size refined by Vegard's law: %.4f -> %.4f A (a = %.3f A; posterior mean %.3f A; the "
                     "composition leads the best one of a > 1 %% different constant by %.1f log units)", run->pixel_size,
                     ps, rep.a_vegard, rep.a_post, rep.vegard_gap);
            run->pixel_size = ps;
            snprintf(run->pixel_size_source, sizeof run->pixel_size_source, "lattice+Vegard");
        }
        /* Without a known pixel size the contrast is all that names the species, and for a pure
         * compound it cannot: MoS2 at n and WSe2 at 1.24 n give the same contrast ratios, and
         * only the prior on n picks one. Say so when the runner-up of another lattice constant
         * is that close, since a pixel size (or a TIFF's resolution tags) settles it. */
        /* the text also goes into the result file (root attribute species_warning): a run logged
         * with TMDFLOW_LOG=quiet, or read later by another tool, must still see it; rep is reduced,
         * so every rank writes the same text */
        if (!st && rep.vegard_gap < TWIN_WARN_LOG_UNITS && rep.alt_exponent > 0) { /* 0: no runner-up */
            snprintf(run->species_warning, sizeof run->species_warning,
                     "the species are uncertain: Mo%.2fW%.2f S%.2fSe%.2f at n %.2f (a = %.3f A) fits the "
                     "contrast only %.1f log units better than Mo%.2fW%.2f S%.2fSe%.2f at n %.2f (a = %.3f A), and "
                     "without a known pixel size nothing else tells them apart; give --pixel-size (or a TIFF with "
                     "its resolution tags) to decide",
                     1 - rep.x_w, rep.x_w, 2 * (1 - rep.y_se), 2 * rep.y_se, rep.n_exponent, rep.a_vegard,
                     rep.vegard_gap, 1 - rep.alt_x_w, rep.alt_x_w, 2 * (1 - rep.alt_y_se), 2 * rep.alt_y_se,
                     rep.alt_exponent, tmd_lattice_vegard(rep.alt_x_w, rep.alt_y_se));
            tmd_info(ctx, "warning: %s", run->species_warning);
        }
    }
cleanup:
    tmd_ghost_destroy(&g);
    held_tab_free(&htab);
    free(hold), free(hstat);
    free(lat);
    free(contrast);
    return st;
}
