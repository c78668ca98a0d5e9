/* bound: the best chalcogen / V_X / V_X2 figures any per-column measurement could reach on a
 * simulated image, from the simulator's own world (benchmarks/classify/bound.sh runs it over
 * blocks and pools; figures and assumptions: docs/accuracy.md, the per-column bound).
 *
 *   build/benchmarks/bound SIM.h5 [SIM.h5 ...] > bound.csv      one CSV line per image
 *   BOUND_CHECK=1 build/benchmarks/bound SIM.h5                  self-check of the profiles
 *
 * Per image: the world is rebuilt from the file's `simulation` attribute (every parameter and
 * the image key), the noiseless expected-count image lambda is rendered by the simulator itself
 * (sim_world.expected_only), and for every B site inside the score's border (a/2) whose
 * frame-0 state is S2, SSe, Se2, S, Se or empty:
 *   - g_p = the column's expected counts per unit of column weight (W column = 1) at pixel p:
 *     the renderer's probe (core Gaussian with the row jitter, plus the tail as an exact
 *     Gaussian where the renderer interpolates it from a coarse grid; BOUND_CHECK measures the
 *     difference) times counts per unit;
 *   - Fisher information of the amplitude with everything else known, per hypothesis k:
 *     F_k = sum_p g_p^2 / (lambda_p + (mu_k - w_true) g_p + read_noise^2), read noise in counts
 *     (the simulator adds it before gain); the detector smear is an invertible known linear
 *     filter and the gain/offset are known, so neither changes the information;
 *   - the measured amplitude under hypothesis k is taken Gaussian, mean mu_k (the Z^n level of
 *     class k, W = 1) and variance 1/F_k + (column_jitter mu_k)^2 (the intrinsic per-column
 *     scatter, drawn per column by the simulator, is noise for any measurement);
 *   - the Bayes (MAP) decision over the six classes with the image's true class shares as
 *     priors; the expected confusion of the site = the true class's Gaussian mass over each
 *     decision region (a grid of cells of sigma_min/40, exact normal CDF per cell).
 * Variants (CSV column suffixes): "" = K, contamination known (its realisation is part of
 * lambda): the optimistic bound. _c = C, contamination as noise: its mean is known but its
 * scatterers (Poisson count per area, exponential weights, 1 Angstrom blobs) are not; treated as
 * Gaussian noise with their covariance at the site's local density, the best linear estimate
 * over a disc of 8 sigma_c (Woodbury on a grid of scatterer places; BOUND_CDISC, BOUND_CSTEP change
 * the disc and the grid step, 0.7 blob sigma: 6 or 0.4 move V_X by <= 0.003) adds its variance increase
 * to every class. Not a strict bound: a method that resolves single scatterers could beat it.
 * _b = B, the same noise but the amplitude measured with the column's own Poisson-weighted
 * profile only (BLUE): roughly a contrast that does not model contamination. _h = H, the stage's
 * held measure's geometry (column and a constant free over a disc of 0.6 bond) with everything
 * else exact and contamination known. _k = F, K with the lone (V_X) or empty (V_X2) prior
 * scaled by the image's best of 7 factors (F1 is not what MAP maximises). _r = R, realised: K's
 * estimator and rule on the file's own pixels (counts recovered from gain, offset and the
 * smear), one noise draw; z = (estimate - truth) / CRB sd should be N(0, 1) (z_mean, z_var).
 * BOUND_CHECK=1 compares the sum of the columns' profiles with lambda on the same world
 * without background and contamination; BOUND_CHECK=2 prints per site (stderr) the realised
 * contamination in the BLUE beside its predicted sd; BOUND_CHECK=3 compares C's Woodbury solve
 * with the dense one. BOUND_HDISC=b sets H's disc (bonds, default 0.6); BOUND_NOC=1 skips C and
 * B (their columns then equal K), for quick runs.
 *
 * Output per image (CSV): the conditions, the counts of true classes, and for every variant the
 * expected chalcogen accuracy (as `tmdflow score`: a site decided empty leaves /atoms, so it is
 * not in the denominator), V_X F1 (lone S/Se vs the rest) and V_X2 F1 (empty vs the rest),
 * with the expected tp/fp/fn so that blocks pool like tools/pool.py; medians of the S2 sites'
 * sd (Poisson part, K, C, B, H) relative to the S2 level. */
#include <hdf5.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sim/sim_internal.h"
#include "tmd/core.h"
#include "tmd/sim.h"

double tmd_sim_field_cont(const sim_world *w, double sx, double sy);
double tmd_sim_film_factor(const sim_world *w, double sx, double sy);

#define NK 6
static const int kcode[NK] = {0, TMD_SP_S2, TMD_SP_SSE, TMD_SP_SE2, TMD_SP_S, TMD_SP_SE};
#define NKAPPA 7
static const double kappa[NKAPPA] = {0.5, 0.7, 1.4, 2, 2.8, 4, 6};
static int is_lone(int k) { return k == 4 || k == 5; }

/* The file's /image (single frame) as float, or NULL. */
static float *read_image(const char *path, int64_t n)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) return NULL;
    float *out = NULL;
    hid_t d = H5Dopen2(f, "/image", H5P_DEFAULT);
    if (d >= 0) {
        hid_t sp = H5Dget_space(d);
        if (H5Sget_simple_extent_npoints(sp) == n) {
            out = malloc((size_t)n * sizeof(float));
            if (out && H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, out) < 0) {
                free(out);
                out = NULL;
            }
        }
        H5Sclose(sp);
        H5Dclose(d);
    }
    H5Fclose(f);
    return out;
}

static char *read_sim_text(const char *path)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) return NULL;
    hid_t a = H5Aopen(f, "simulation", H5P_DEFAULT);
    char *out = NULL;
    if (a >= 0) {
        hid_t t = H5Tcopy(H5T_C_S1);
        H5Tset_size(t, H5T_VARIABLE);
        H5Tset_cset(t, H5T_CSET_UTF8);
        char *s = NULL;
        if (H5Aread(a, t, &s) >= 0 && s) {
            out = strdup(s);
            H5free_memory(s);
        }
        H5Tclose(t);
        H5Aclose(a);
    }
    H5Fclose(f);
    return out;
}

static int params_from_text(tmd_ctx *ctx, const char *text, tmd_sim_params *p)
{
    tmd_sim_params_draw(p, 1, 0);
    char *buf = strdup(text), *save = NULL;
    for (char *ln = strtok_r(buf, "\n", &save); ln; ln = strtok_r(NULL, "\n", &save)) {
        char *eq = strstr(ln, " = ");
        if (!eq) continue;
        *eq = 0;
        while (*ln == ' ') ln++;
        if (tmd_sim_param_set(ctx, p, ln, eq + 3)) {
            fprintf(stderr, "bad parameter %s = %s\n", ln, eq + 3);
            free(buf);
            return 1;
        }
    }
    free(buf);
    return tmd_sim_params_finish(ctx, p) ? 1 : 0;
}

/* One probe component in pixel offsets: amp * exp(-(A dx^2 + 2B dx dy + C dy^2)). */
typedef struct { double A, B, C, amp; } comp;
static comp mkcomp(const sim_world *w, double sigma, double share)
{
    if (share <= 0 || sigma <= 0) return (comp){0, 0, 0, 0};
    double s2 = 2 * sigma * sigma;
    comp c = {w->G[0] / s2, w->G[1] / s2, w->G[2] / s2, share / (3.14159265358979323846 * s2)};
    return c;
}
static double cval(const comp *c, double dx, double dy)
{
    return c->amp * exp(-(c->A * dx * dx + 2 * c->B * dx * dy + c->C * dy * dy));
}

typedef struct {
    double qx, qy;   /* render position (unjittered pixel) */
    double tx, ty;   /* truth position */
    double wt;       /* column weight incl. the per-column scatter */
    int sp, sub;
    double sx, sy;
} col;

static double ncdf(double z) { return 0.5 * erfc(-z / sqrt(2.0)); }

/* Expected decision distribution P[d] for a site of true class t: MAP over classes with
 * prior pri, means mu, sds sd (classes with pri 0 excluded). */
static void decide(const double *pri, const double *mu, const double *sd, int t, double *P)
{
    for (int k = 0; k < NK; k++) P[k] = 0;
    double smin = 1e300, lp[NK];
    for (int k = 0; k < NK; k++)
        if (pri[k] > 0) {
            if (sd[k] < smin) smin = sd[k];
            lp[k] = log(pri[k]) - log(sd[k]);
        }
    double h = smin / 40, lo = mu[t] - 8.5 * sd[t], hi = mu[t] + 8.5 * sd[t];
    int64_t n = (int64_t)ceil((hi - lo) / h);
    if (n > 400000) {
        n = 400000;
        h = (hi - lo) / (double)n;
    }
    double cprev = ncdf((lo - mu[t]) / sd[t]);
    for (int64_t i = 0; i < n; i++) {
        double x0 = lo + (double)i * h, x = x0 + 0.5 * h;
        double c = ncdf((x0 + h - mu[t]) / sd[t]), m = c - cprev;
        cprev = c;
        int best = -1;
        double bv = -1e300;
        for (int k = 0; k < NK; k++) {
            if (pri[k] <= 0) continue;
            double z = (x - mu[k]) / sd[k], v = lp[k] - 0.5 * z * z;
            if (v > bv) {
                bv = v;
                best = k;
            }
        }
        P[best] += m;
    }
    /* the mass beyond +-8.5 sd (< 1e-16) goes to the true class */
    double s = 0;
    for (int k = 0; k < NK; k++) s += P[k];
    P[t] += 1 - s;
}

/* [A^-1]_00 of a symmetric positive definite n x n matrix (row-major, destroyed); <0 if not SPD. */
static double inv00(double *A, int n)
{
    for (int k = 0; k < n; k++) {
        for (int m = 0; m < k; m++) A[k * n + k] -= A[m * n + k] * A[m * n + k];
        if (A[k * n + k] <= 1e-300) return -1;
        A[k * n + k] = sqrt(A[k * n + k]);
        for (int l = k + 1; l < n; l++) {
            for (int m = 0; m < k; m++) A[k * n + l] -= A[m * n + k] * A[m * n + l];
            A[k * n + l] /= A[k * n + k];
        }
    }
    /* A = U'U: [A^-1]_00 = |U'^-1 ... |: solve U' z = e0, then [A^-1]_00 = |U^-1' e0|^2 = sum z^2 */
    double z[64], q = 0;
    for (int k = 0; k < n; k++) {
        double sacc = k == 0 ? 1 : 0;
        for (int m = 0; m < k; m++) sacc -= A[m * n + k] * z[m];
        z[k] = sacc / A[k * n + k];
    }
    /* that gives e0' A^-1 e0 only through U^-1 U'^-1; U'^-1 e0 = z, so e0' (U'U)^-1 e0 = |z|^2 */
    for (int k = 0; k < n; k++) q += z[k] * z[k];
    return q;
}

static int cmpd(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}
static double median(double *v, int64_t n)
{
    if (n == 0) return NAN;
    qsort(v, (size_t)n, sizeof *v, cmpd);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

typedef struct { double ok, n, vx[3], vx2[3]; } score;
static void add_site(score *s, int t, const double *P)
{
    if (t != 0) {
        s->ok += P[t];
        s->n += 1 - P[0];
    }
    double lone = P[4] + P[5];
    if (is_lone(t)) {
        s->vx[0] += lone;
        s->vx[2] += 1 - lone;
    } else s->vx[1] += lone;
    if (t == 0) {
        s->vx2[0] += P[0];
        s->vx2[2] += 1 - P[0];
    } else s->vx2[1] += P[0];
}
static double f1(const double *v) { return v[0] + v[1] + v[2] > 0 ? 2 * v[0] / (2 * v[0] + v[1] + v[2]) : NAN; }

static int run(tmd_ctx *ctx, const char *path, int check)
{
    char *text = read_sim_text(path);
    if (!text) {
        fprintf(stderr, "%s: no simulation attribute\n", path);
        return 1;
    }
    tmd_sim_params p;
    int st = params_from_text(ctx, text, &p);
    free(text);
    if (st) return 1;
    if (p.frames != 1) {
        fprintf(stderr, "%s: single images only\n", path);
        return 1;
    }
    if (check == 1) { /* only columns: lambda must equal the sum of the columns' profiles */
        p.background = p.background_var = p.contamination = 0;
    }
    sim_world w;
    if (tmd_sim_world_init(ctx, &w, &p)) return 1;
    w.expected_only = 1;
    int64_t H = p.height, W = p.width;
    float *lam = malloc((size_t)(H * W) * sizeof(float));
    sim_site_list sl = {0};
    if (tmd_sim_render_rows(ctx, &w, 0, 0, H, lam, NULL, NULL, 0, &sl)) return 1;
    double *jit = malloc((size_t)H * sizeof(double));
    for (int64_t y = 0; y < H; y++) jit[y] = tmd_sim_row_jitter(&w, 0, y);

    /* every site whose probe reaches the image */
    double sx0, sx1, sy0, sy1;
    double reach = (4 * w.sig_c + (w.frac_t > 0 ? 4 * w.sig_t : 0)) / w.px + 5 * p.jitter + p.wobble + 2;
    tmd_sim_pixel_box_to_specimen(&w, 0, 0, (double)(W - 1), 0, (double)(H - 1), reach, &sx0, &sx1, &sy0, &sy1);
    sim_site_list all = {0};
    if (tmd_sim_sites_in_box(ctx, &w, sx0, sx1, sy0, sy1, &all)) return 1;
    col *cols = malloc((size_t)all.n * sizeof(col));
    int64_t nc = 0;
    for (int64_t k = 0; k < all.n; k++) {
        const sim_site *s = &all.s[k];
        int8_t sp, dyn;
        double jx, jy;
        if (tmd_sim_site_state(ctx, &w, s, 0, &sp, &jx, &jy, &dyn)) return 1;
        col *c = &cols[nc++];
        c->sx = s->sx + jx;
        c->sy = s->sy + jy;
        double ux = c->sx / w.px, uy = c->sy / w.px;
        c->qx = w.Minv[0][0] * ux + w.Minv[0][1] * uy + w.cx + w.drift[0];
        c->qy = w.Minv[1][0] * ux + w.Minv[1][1] * uy + w.cy + w.drift[1];
        c->wt = sp ? tmd_sim_species_weight(&w, sp, s) : 0;
        c->sp = sp;
        c->sub = s->sub;
        tmd_sim_specimen_to_pixel(&w, 0, c->sx, c->sy, &c->tx, &c->ty);
    }
    comp core = mkcomp(&w, w.sig_c, 1 - w.frac_t), tail = mkcomp(&w, w.sig_t, w.frac_t);
    comp ccore = mkcomp(&w, sqrt(w.sig_c * w.sig_c + 0.25), 1 - w.frac_t);
    double gmin = fmin(w.G[0], w.G[2]) * 0.9;
    int Rc = (int)ceil(4 * w.sig_c / sqrt(gmin)) + 2;
    int Rt = w.frac_t > 0 ? (int)ceil(3 * w.sig_t / sqrt(gmin)) + 2 : 0;
    /* C's disc (in core sigmas) must lie inside the window where g is tabulated */
    double cdisc = getenv("BOUND_CDISC") ? atof(getenv("BOUND_CDISC")) : 8.0;
    int Rd = (int)ceil(cdisc * w.sig_c / sqrt(gmin)) + 2;
    /* H's disc (bonds; BOUND_HDISC, default the stage's 0.6) likewise */
    double hdisc = getenv("BOUND_HDISC") ? atof(getenv("BOUND_HDISC")) : 0.6;
    int Rh = (int)ceil(hdisc * p.lattice_a / sqrt(3.0) / p.pixel_size) + 2;
    int R = Rc > Rt ? Rc : Rt;
    if (Rd > R) R = Rd;
    if (Rh > R) R = Rh;
    int D = 2 * R + 1;
    double *g = malloc((size_t)(D * D) * sizeof(double));
    double rn2 = p.read_noise * p.read_noise;

    /* the file's own detector image back in counts (gain, offset, then the smear's IIR filter
     * undone): the realised check below measures every site on it with the bound's own
     * estimator, so the bound's noise model is checked against the pixels, not assumed */
    float *cnt = check == 1 ? NULL : read_image(path, H * W);
    if (cnt) {
        double a = p.scan_smear;
        for (int64_t y = 0; y < H; y++) {
            float *row = cnt + y * W;
            double prev = 0;
            for (int64_t x = 0; x < W; x++) {
                double v = ((double)row[x] - p.offset) / p.gain;
                row[x] = (float)(x == 0 ? v : (v - a * prev) / (1 - a));
                prev = v;
            }
        }
    }
    float *lam0 = NULL; /* BOUND_CHECK=2: the same world without contamination, to measure its realised share */
    if (check == 2) {
        tmd_sim_params p0 = p;
        p0.contamination = 0;
        sim_world w0;
        if (tmd_sim_world_init(ctx, &w0, &p0)) return 1;
        w0.expected_only = 1;
        lam0 = malloc((size_t)(H * W) * sizeof(float));
        sim_site_list sl0 = {0};
        if (tmd_sim_render_rows(ctx, &w0, 0, 0, H, lam0, NULL, NULL, 0, &sl0)) return 1;
        free(sl0.s);
        tmd_sim_world_free(&w0);
    }
    if (check == 1) {
        double *sum = calloc((size_t)(H * W), sizeof(double));
        for (int64_t k = 0; k < nc; k++) {
            if (!cols[k].sp) continue;
            int64_t xc = (int64_t)floor(cols[k].qx + 0.5), yc = (int64_t)floor(cols[k].qy + 0.5);
            for (int64_t y = yc - R; y <= yc + R; y++) {
                if (y < 0 || y >= H) continue;
                for (int64_t x = xc - R; x <= xc + R; x++) {
                    if (x < 0 || x >= W) continue;
                    double dy = (double)y - cols[k].qy, dx = (double)x + jit[y] - cols[k].qx, dxt = (double)x - cols[k].qx;
                    sum[y * W + x] += w.counts_scale * cols[k].wt * (cval(&core, dx, dy) + cval(&tail, dxt, dy));
                }
            }
        }
        double mx = 0, md = 0, s2 = 0;
        for (int64_t i = 0; i < H * W; i++) {
            if (lam[i] > mx) mx = lam[i];
            double d = fabs(sum[i] - lam[i]);
            if (d > md) md = d;
            s2 += (sum[i] - lam[i]) * (sum[i] - lam[i]);
        }
        printf("check %s: max lambda %.4g, max |sum of profiles - lambda| %.4g, rms %.4g (dose %.4g, tail %.3f)\n", path, mx,
               md, sqrt(s2 / (double)(H * W)), p.dose, w.frac_t);
        free(sum);
        goto done;
    }

    /* true class shares of the scored B sites */
    double border = 0.5 * p.lattice_a / p.pixel_size;
    int64_t ncount[NK] = {0}, nb = 0;
    int *cls = malloc((size_t)nc * sizeof(int));
    for (int64_t k = 0; k < nc; k++) {
        cls[k] = -1;
        const col *c = &cols[k];
        if (c->sub != 1) continue;
        if (c->tx < border || c->ty < border || c->tx > (double)(W - 1) - border || c->ty > (double)(H - 1) - border) continue;
        for (int j = 0; j < NK; j++)
            if (kcode[j] == c->sp) cls[k] = j;
        if (cls[k] < 0) continue;
        ncount[cls[k]]++;
        nb++;
    }
    double pri[NK], mu[NK];
    for (int j = 0; j < NK; j++) {
        pri[j] = nb ? (double)ncount[j] / (double)nb : 0;
        mu[j] = w.wsp[kcode[j]];
    }
    int capp = D * D, capk = 4096;
    double *wp_x = malloc((size_t)capp * sizeof(double)), *wp_y = malloc((size_t)capp * sizeof(double));
    double *wp_g = malloc((size_t)capp * sizeof(double)), *wp_d = malloc((size_t)capp * sizeof(double));
    double *ks_x = malloc((size_t)capk * sizeof(double)), *ks_y = malloc((size_t)capk * sizeof(double));
    double *hrow = malloc((size_t)capk * sizeof(double)), *bk = malloc((size_t)capk * sizeof(double));
    double *Mk = malloc((size_t)capk * (size_t)capk * sizeof(double));
    int ncheck3 = 0;
    double zsum = 0, z2sum = 0;
    int64_t nz = 0;
    score s1 = {0}, s2 = {0}, s3 = {0}, s4 = {0}, sr = {0}, sk[NKAPPA], sk2[NKAPPA];
    memset(sk, 0, sizeof sk);
    memset(sk2, 0, sizeof sk2);
    double *rs_p = malloc((size_t)nb * sizeof(double)), *rs_t = malloc((size_t)nb * sizeof(double));
    double *rs_c = malloc((size_t)nb * sizeof(double)), *rs_b = malloc((size_t)nb * sizeof(double));
    double *rs_h = malloc((size_t)nb * sizeof(double));
    int64_t nrs = 0;
    double cov_area = fabs(w.M[0][0] * w.M[1][1] - w.M[0][1] * w.M[1][0]) * w.px * w.px; /* Angstrom^2 per px^2 */
    double thr = p.contamination > 0 && p.contamination_cover > 0 ? tmd_sim_norm_ppf(1 - p.contamination_cover) : 0;
    for (int64_t k = 0; k < nc; k++) {
        if (cls[k] < 0) continue;
        const col *c = &cols[k];
        int t = cls[k];
        int64_t xc = (int64_t)floor(c->qx + 0.5), yc = (int64_t)floor(c->qy + 0.5);
        double F[NK] = {0};
        for (int64_t y = yc - R; y <= yc + R; y++)
            for (int64_t x = xc - R; x <= xc + R; x++) {
                double *gp = &g[(y - yc + R) * D + (x - xc + R)];
                *gp = 0;
                if (y < 0 || y >= H || x < 0 || x >= W) continue;
                double dy = (double)y - c->qy, dx = (double)x + jit[y] - c->qx, dxt = (double)x - c->qx;
                double gv = w.counts_scale * (cval(&core, dx, dy) + cval(&tail, dxt, dy));
                *gp = gv;
                double l = lam[y * W + x];
                for (int j = 0; j < NK; j++) {
                    double v = l + (mu[j] - c->wt) * gv + rn2;
                    if (v > 1e-9) F[j] += gv * gv / v;
                }
            }
        double var[NK], sd[NK], sdc[NK];
        for (int j = 0; j < NK; j++) {
            double cj = p.column_jitter * mu[j];
            var[j] = (F[j] > 0 ? 1 / F[j] : 1e6) + cj * cj;
            sd[j] = sqrt(var[j]);
        }
        /* H: the stage's held measure's geometry (docs/accuracy.md: the column's profile and a
         * constant free over a disc of 0.6 bond, the neighbours held) with everything exact:
         * profile, position, neighbours, contamination known. var_H = [I^-1]_00 of that fit's
         * Fisher matrix, per hypothesis: what a 0.6-bond disc with a free level costs against K. */
        double sdh[NK];
        {
            const int np_ = 2; /* the column's amplitude and a constant */
            double IJ[NK][4];
            memset(IJ, 0, sizeof IJ);
            double rd = hdisc * p.lattice_a / sqrt(3.0) / p.pixel_size, Gv[2];
            for (int64_t y = yc - (int64_t)ceil(rd) - 1; y <= yc + (int64_t)ceil(rd) + 1; y++)
                for (int64_t x = xc - (int64_t)ceil(rd) - 1; x <= xc + (int64_t)ceil(rd) + 1; x++) {
                    if (y < 0 || y >= H || x < 0 || x >= W) continue;
                    double ex = (double)x - c->qx, ey = (double)y - c->qy;
                    if (ex * ex + ey * ey > rd * rd) continue;
                    Gv[0] = g[(y - yc + R) * D + (x - xc + R)];
                    Gv[1] = 1;
                    for (int j = 0; j < NK; j++) {
                        double v = lam[y * W + x] + (mu[j] - c->wt) * Gv[0] + rn2;
                        if (v <= 1e-9) continue;
                        for (int a = 0; a < np_; a++)
                            for (int b2 = a; b2 < np_; b2++) IJ[j][a * np_ + b2] += Gv[a] * Gv[b2] / v;
                    }
                }
            for (int j = 0; j < NK; j++) {
                for (int a = 0; a < np_; a++)
                    for (int b2 = 0; b2 < a; b2++) IJ[j][a * np_ + b2] = IJ[j][b2 * np_ + a];
                double v00 = inv00(IJ[j], np_);
                double cj = p.column_jitter * mu[j];
                sdh[j] = sqrt((v00 > 0 ? v00 : 1e6) + cj * cj);
            }
        }
        /* contamination as noise. Its scatterers are a compound Poisson process (density rho =
         * local cover x cont_density per Angstrom^2, exponential weights, blobs of the core
         * widened to sqrt(sigma_c^2 + 0.25)); treated as Gaussian noise with that covariance
         * (mean known), the best linear per-column estimate over a disc of 8 sigma_c has
         * Fisher information g' (D + H H')^-1 g, D = lambda + read_noise^2, H the scatterer
         * response on a grid of 0.7 blob-sigma spacing (Woodbury: K x K, K grid points). Its
         * variance increase over the same disc without contamination is added to every class. */
        double vcont = 0, vblue = 0;
        double cov = 0;
        if (p.contamination > 0 && p.contamination_cover > 0 && !(getenv("BOUND_NOC") && atoi(getenv("BOUND_NOC")))) {
            const double L = 2.0;
            double ci = floor(c->sx / L), cjj = floor(c->sy / L);
            double mx = (ci + 0.5) * L, my = (cjj + 0.5) * L;
            double gg = tmd_sim_field_cont(&w, mx, my);
            cov = fmin(1, fmax(0, (gg - thr) / 0.6 + 0.5));
            cov *= tmd_sim_film_factor(&w, mx, my) * 0.9 + 0.1;
        }
        if (cov > 0) {
            double rho = cov * w.cont_density, ew2 = 2 * w.cont_weight * w.cont_weight;
            double sc = sqrt(w.sig_c * w.sig_c + 0.25) / sqrt(gmin); /* scatterer core sigma, px */
            double rw = cdisc * w.sig_c / sqrt(gmin), step = (getenv("BOUND_CSTEP") ? atof(getenv("BOUND_CSTEP")) : 0.7) * sc, rs = rw + 3 * sc;
            int ns = (int)ceil(rs / step);
            int np = 0, K = 0;
            for (int64_t y = yc - (int64_t)ceil(rw) - 1; y <= yc + (int64_t)ceil(rw) + 1; y++)
                for (int64_t x = xc - (int64_t)ceil(rw) - 1; x <= xc + (int64_t)ceil(rw) + 1; x++) {
                    if (y < 0 || y >= H || x < 0 || x >= W) continue;
                    double dx = (double)x - c->qx, dy = (double)y - c->qy;
                    if (dx * dx + dy * dy > rw * rw) continue;
                    double v = lam[y * W + x] + rn2;
                    if (v <= 1e-9) continue;
                    wp_x[np] = (double)x;
                    wp_y[np] = (double)y;
                    wp_g[np] = g[(y - yc + R) * D + (x - xc + R)];
                    wp_d[np] = v;
                    np++;
                }
            for (int iy = -ns; iy <= ns; iy++)
                for (int ix = -ns; ix <= ns; ix++) {
                    if ((double)(ix * ix + iy * iy) * step * step > rs * rs) continue;
                    if (K >= capk) {
                        fprintf(stderr, "%s: more than %d scatterer places, C truncated\n", path, capk);
                        continue;
                    }
                    ks_x[K] = c->qx + ix * step;
                    ks_y[K] = c->qy + iy * step;
                    K++;
                }
            double hw = w.counts_scale * sqrt(rho * ew2 * step * step * cov_area);
            memset(Mk, 0, (size_t)K * (size_t)K * sizeof(double));
            memset(bk, 0, (size_t)K * sizeof(double));
            double Fw = 0;
            for (int q = 0; q < np; q++) {
                for (int k = 0; k < K; k++) hrow[k] = hw * cval(&ccore, wp_x[q] - ks_x[k], wp_y[q] - ks_y[k]);
                double id = 1 / wp_d[q];
                Fw += wp_g[q] * wp_g[q] * id;
                for (int k = 0; k < K; k++) {
                    double u = hrow[k] * id;
                    if (u == 0) continue;
                    bk[k] += u * wp_g[q];
                    double *mrow = Mk + (size_t)k * (size_t)K;
                    for (int l = k; l < K; l++) mrow[l] += u * hrow[l];
                }
            }
            for (int k = 0; k < K; k++) Mk[(size_t)k * (size_t)K + (size_t)k] += 1;
            /* Cholesky of the upper triangle (M = U'U), then b' M^-1 b = |U'^-1 b|^2 */
            int ok = 1;
            for (int k = 0; k < K && ok; k++) {
                double *rk = Mk + (size_t)k * (size_t)K;
                for (int m = 0; m < k; m++) rk[k] -= Mk[(size_t)m * (size_t)K + (size_t)k] * Mk[(size_t)m * (size_t)K + (size_t)k];
                if (rk[k] <= 0) {
                    ok = 0;
                    break;
                }
                rk[k] = sqrt(rk[k]);
                for (int l = k + 1; l < K; l++) {
                    double sacc = rk[l];
                    for (int m = 0; m < k; m++) sacc -= Mk[(size_t)m * (size_t)K + (size_t)k] * Mk[(size_t)m * (size_t)K + (size_t)l];
                    rk[l] = sacc / rk[k];
                }
            }
            double q2 = 0;
            for (int k = 0; k < K && ok; k++) {
                double sacc = bk[k];
                for (int m = 0; m < k; m++) sacc -= Mk[(size_t)m * (size_t)K + (size_t)k] * bk[m];
                bk[k] = sacc / Mk[(size_t)k * (size_t)K + (size_t)k];
                q2 += bk[k] * bk[k];
            }
            if (!ok) {
                fprintf(stderr, "%s: Cholesky failed at a site\n", path);
                q2 = 0;
            }
            double Fc = Fw - q2;
            vcont = Fc > 0 ? 1 / Fc - 1 / Fw : 1e6;
            if (check == 3 && ncheck3 < 3 && np <= 2500) { /* Woodbury against the dense (D + H H') solve */
                double *A = malloc((size_t)np * (size_t)np * sizeof(double));
                for (int q = 0; q < np; q++)
                    for (int q2i = q; q2i < np; q2i++) {
                        double sacc = q == q2i ? wp_d[q] : 0;
                        for (int k3 = 0; k3 < K; k3++)
                            sacc += hw * cval(&ccore, wp_x[q] - ks_x[k3], wp_y[q] - ks_y[k3]) * hw *
                                    cval(&ccore, wp_x[q2i] - ks_x[k3], wp_y[q2i] - ks_y[k3]);
                        A[(size_t)q * (size_t)np + (size_t)q2i] = sacc;
                    }
                /* g' A^-1 g: Cholesky A = U'U, z = U'^-1 g, F = |z|^2 */
                int okd = 1;
                for (int k3 = 0; k3 < np && okd; k3++) {
                    double *rk = A + (size_t)k3 * (size_t)np;
                    for (int m = 0; m < k3; m++) rk[k3] -= A[(size_t)m * (size_t)np + (size_t)k3] * A[(size_t)m * (size_t)np + (size_t)k3];
                    if (rk[k3] <= 0) okd = 0;
                    else {
                        rk[k3] = sqrt(rk[k3]);
                        for (int l = k3 + 1; l < np; l++) {
                            double sacc = rk[l];
                            for (int m = 0; m < k3; m++) sacc -= A[(size_t)m * (size_t)np + (size_t)k3] * A[(size_t)m * (size_t)np + (size_t)l];
                            rk[l] = sacc / rk[k3];
                        }
                    }
                }
                double Fd = 0, *zv = malloc((size_t)np * sizeof(double));
                for (int k3 = 0; k3 < np && okd; k3++) {
                    double sacc = wp_g[k3];
                    for (int m = 0; m < k3; m++) sacc -= A[(size_t)m * (size_t)np + (size_t)k3] * zv[m];
                    zv[k3] = sacc / A[(size_t)k3 * (size_t)np + (size_t)k3];
                    Fd += zv[k3] * zv[k3];
                }
                fprintf(stderr, "woodbury check: np %d K %d  F_woodbury %.6g  F_dense %.6g  F_no_contamination %.6g\n", np, K, Fc,
                        okd ? Fd : NAN, Fw);
                free(zv);
                free(A);
                ncheck3++;
            }
            { /* the plain Poisson-weighted (BLUE) estimate's contamination variance: what a
               * measurement fitting only the column's profile would see */
                double acc = 0;
                for (int k = 0; k < K; k++) {
                    double r = 0;
                    for (int q = 0; q < np; q++) r += wp_g[q] / wp_d[q] * hw * cval(&ccore, wp_x[q] - ks_x[k], wp_y[q] - ks_y[k]);
                    acc += r * r;
                }
                vblue = acc / (Fw * Fw);
            }
        }
        if (lam0) { /* realised contamination in the BLUE: sum_p g_p / v_p / F (lambda - lambda0)_p */
            double r = 0;
            for (int64_t y = yc - R; y <= yc + R; y++)
                for (int64_t x = xc - R; x <= xc + R; x++) {
                    if (y < 0 || y >= H || x < 0 || x >= W) continue;
                    double v = lam[y * W + x] + rn2;
                    if (v > 1e-9) r += g[(y - yc + R) * D + (x - xc + R)] / v * (lam[y * W + x] - lam0[y * W + x]);
                }
            fprintf(stderr, "contam %d %.5g %.5g %.5g %.5g %.5g\n", t, mu[1], sqrt(vblue), r / F[t], 1 / sqrt(F[t]), sqrt(vcont));
        }
        double sdb[NK];
        for (int j = 0; j < NK; j++) {
            sdc[j] = sqrt(var[j] + vcont);
            sdb[j] = sqrt(var[j] + vblue);
        }
        double P[NK];
        decide(pri, mu, sd, t, P);
        add_site(&s1, t, P);
        if (cnt) { /* realised: the BLUE amplitude on the file's pixels, then the same MAP rule */
            double r = 0;
            for (int64_t y = yc - R; y <= yc + R; y++)
                for (int64_t x = xc - R; x <= xc + R; x++) {
                    if (y < 0 || y >= H || x < 0 || x >= W) continue;
                    double v = lam[y * W + x] + rn2;
                    if (v > 1e-9) r += g[(y - yc + R) * D + (x - xc + R)] / v * ((double)cnt[y * W + x] - lam[y * W + x]);
                }
            double ahat = c->wt + r / F[t], zz = r / F[t] * sqrt(F[t]);
            zsum += zz;
            z2sum += zz * zz;
            nz++;
            int best = 0;
            double bv = -1e300;
            for (int j = 0; j < NK; j++) {
                if (pri[j] <= 0) continue;
                double z = (ahat - mu[j]) / sd[j], v = log(pri[j]) - log(sd[j]) - 0.5 * z * z;
                if (v > bv) {
                    bv = v;
                    best = j;
                }
            }
            double Q[NK] = {0};
            Q[best] = 1;
            add_site(&sr, t, Q);
        }
        /* F1 is not what MAP maximises: the same decision with the lone (empty) prior scaled
         * by kappa; the image's best kappa is reported (an upper bound over these rules) */
        for (int q = 0; q < NKAPPA; q++) {
            double pk[NK];
            memcpy(pk, pri, sizeof pk);
            pk[4] *= kappa[q];
            pk[5] *= kappa[q];
            decide(pk, mu, sd, t, P);
            add_site(&sk[q], t, P);
            memcpy(pk, pri, sizeof pk);
            pk[0] *= kappa[q];
            decide(pk, mu, sd, t, P);
            add_site(&sk2[q], t, P);
        }
        decide(pri, mu, sdc, t, P);
        add_site(&s2, t, P);
        decide(pri, mu, sdb, t, P);
        add_site(&s3, t, P);
        decide(pri, mu, sdh, t, P);
        add_site(&s4, t, P);
        if (t == 1) {
            rs_p[nrs] = sqrt(1 / F[1]) / mu[1];
            rs_t[nrs] = sd[1] / mu[1];
            rs_c[nrs] = sdc[1] / mu[1];
            rs_b[nrs] = sdb[1] / mu[1];
            rs_h[nrs] = sdh[1] / mu[1];
            nrs++;
        }
    }
    const char *b = strrchr(path, '/');
    b = b ? b + 1 : path;
    long seedno = 0;
    sscanf(b, "sim_%ld", &seedno);
    double mp = median(rs_p, nrs), mt = median(rs_t, nrs), mcn = median(rs_c, nrs), mbn = median(rs_b, nrs), mhn = median(rs_h, nrs);
    printf("%ld,%.4g,%.5f,%.4f,%.4f,%.4f,%.4f,%.3f,%.4f,%" PRId64, seedno, p.dose, p.pixel_size, p.contamination,
           p.contamination_cover, p.column_jitter, p.z_exponent, p.read_noise, w.frac_t, nb);
    for (int j = 0; j < NK; j++) printf(",%" PRId64, ncount[j]);
    printf(",%.4f,%.4f,%.4f,%.4f,%.4f", mp, mt, mcn, mbn, mhn);
    score *ss[4] = {&s1, &s2, &s3, &s4};
    for (int v = 0; v < 4; v++) {
        score *s = ss[v];
        printf(",%.5f,%.4f,%.4f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f", s->n > 0 ? s->ok / s->n : NAN, f1(s->vx),
               f1(s->vx2), s->ok, s->n, s->vx[0], s->vx[1], s->vx[2], s->vx2[0], s->vx2[1], s->vx2[2]);
    }
    /* best kappa per image: V_X and V_X2 F1 with their tp / fp / fn (MAP itself included) */
    const double *bv = s1.vx, *bv2 = s1.vx2;
    for (int q = 0; q < NKAPPA; q++) {
        if (f1(sk[q].vx) > f1(bv)) bv = sk[q].vx;
        if (f1(sk2[q].vx2) > f1(bv2)) bv2 = sk2[q].vx2;
    }
    printf(",%.4f,%.3f,%.3f,%.3f,%.4f,%.3f,%.3f,%.3f", f1(bv), bv[0], bv[1], bv[2], f1(bv2), bv2[0], bv2[1], bv2[2]);
    printf(",%.4f,%.4f,%.5f,%.4f,%.4f,%.0f,%.0f,%.0f,%.0f,%.0f,%.0f,%.0f,%.0f", nz ? zsum / (double)nz : NAN,
           nz ? z2sum / (double)nz : NAN, sr.n > 0 ? sr.ok / sr.n : NAN, f1(sr.vx), f1(sr.vx2), sr.ok, sr.n, sr.vx[0],
           sr.vx[1], sr.vx[2], sr.vx2[0], sr.vx2[1], sr.vx2[2]);
    printf("\n");
    fflush(stdout);
    free(wp_x);
    free(wp_y);
    free(wp_g);
    free(wp_d);
    free(ks_x);
    free(ks_y);
    free(hrow);
    free(bk);
    free(Mk);
    free(cls);
    free(rs_p);
    free(rs_t);
    free(rs_c);
    free(rs_b);
    free(rs_h);
done:
    free(g);
    free(cols);
    free(all.s);
    free(sl.s);
    free(jit);
    free(lam);
    free(lam0);
    free(cnt);
    tmd_sim_world_free(&w);
    return 0;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    tmd_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    tmd_ctx_init(&ctx, MPI_COMM_SELF);
    int check = getenv("BOUND_CHECK") ? atoi(getenv("BOUND_CHECK")) : 0;
    if (check != 1)
        printf("seed,dose,pixel_size,contamination,contamination_cover,column_jitter,z_exponent,read_noise,tail_fraction,n_b,"
               "n_empty,n_S2,n_SSe,n_Se2,n_S,n_Se,s2_sd_poisson,s2_sd_total,s2_sd_cont,s2_sd_blue,s2_sd_held,"
               "chal,vx_f1,vx2_f1,chal_ok,chal_n,vx_tp,vx_fp,vx_fn,vx2_tp,vx2_fp,vx2_fn,"
               "chal_c,vx_f1_c,vx2_f1_c,chal_ok_c,chal_n_c,vx_tp_c,vx_fp_c,vx_fn_c,vx2_tp_c,vx2_fp_c,vx2_fn_c,"
               "chal_b,vx_f1_b,vx2_f1_b,chal_ok_b,chal_n_b,vx_tp_b,vx_fp_b,vx_fn_b,vx2_tp_b,vx2_fp_b,vx2_fn_b,"
               "chal_h,vx_f1_h,vx2_f1_h,chal_ok_h,chal_n_h,vx_tp_h,vx_fp_h,vx_fn_h,vx2_tp_h,vx2_fp_h,vx2_fn_h,"
               "vx_f1_k,vx_tp_k,vx_fp_k,vx_fn_k,vx2_f1_k,vx2_tp_k,vx2_fp_k,vx2_fn_k,"
               "z_mean,z_var,chal_r,vx_f1_r,vx2_f1_r,chal_ok_r,chal_n_r,vx_tp_r,vx_fp_r,vx_fn_r,vx2_tp_r,vx2_fp_r,vx2_fn_r\n");
    int rc = 0;
    for (int a = 1; a < argc; a++)
        if (run(&ctx, argv[a], check)) rc = 1;
    MPI_Finalize();
    return rc;
}
