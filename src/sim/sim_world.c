/* The simulated world: lattice, smooth random fields, holes, regions, scan map, drift; site
 * generation from lattice index ranges (never a whole-image atom list); beam-driven dynamics
 * in hot regions. Everything is a pure function of (seed, position or index), so any rank
 * can evaluate any part and get the same bits. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sim_internal.h"

#define PI 3.14159265358979323846

/* ---- random helpers ------------------------------------------------------------------ */

double tmd_sim_norm_ppf(double p)
{
    static const double a[6] = {-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02,
                                1.383577518672690e+02, -3.066479806614716e+01, 2.506628277459239e+00};
    static const double b[5] = {-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
                                6.680131188771972e+01, -1.328068155288572e+01};
    static const double c[6] = {-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
                                -2.549732539343734e+00, 4.374664141464968e+00, 2.938163982698783e+00};
    static const double d[4] = {7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
                                3.754408661907416e+00};
    if (p <= 0) return -40;
    if (p >= 1) return 40;
    double q, r;
    if (p < 0.02425) {
        q = sqrt(-2 * log(p));
        return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
               ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
    }
    if (p > 1 - 0.02425) {
        q = sqrt(-2 * log(1 - p));
        return -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
               ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
    }
    q = p - 0.5;
    r = q * q;
    return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
           (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
}

double tmd_sim_poisson(double lam, uint64_t key, uint64_t purpose, uint64_t idx)
{
    if (!(lam > 0)) return 0;
    if (lam < 12) { /* inversion */
        double u = sim_unif(key, purpose, idx, 0);
        double p = exp(-lam), F = p;
        int k = 0;
        while (u > F && k < 100) {
            k++;
            p *= lam / k;
            F += p;
        }
        return k;
    }
    /* PTRS, transformed rejection (Hormann 1993); draws k = 1, 2, ... of the stream. */
    double slam = sqrt(lam), loglam = log(lam);
    double b = 0.931 + 2.53 * slam, a = -0.059 + 0.02483 * b;
    double invalpha = 1.1239 + 1.1328 / (b - 3.4), vr = 0.9277 - 3.6224 / (b - 2);
    for (uint64_t n = 0; n < 64; n++) {
        double U = sim_unif(key, purpose, idx, 2 * n + 1) - 0.5;
        double V = sim_unif(key, purpose, idx, 2 * n + 2);
        double us = 0.5 - fabs(U);
        double k = floor((2 * a / us + b) * U + lam + 0.43);
        if (us >= 0.07 && V <= vr) return k;
        if (k < 0 || (us < 0.013 && V > us)) continue;
        if (log(V) + log(invalpha) - log(a / (us * us) + b) <= -lam + k * loglam - lgamma(k + 1)) return k;
    }
    return floor(lam + 0.5);
}

/* ---- smooth random fields ------------------------------------------------------------- */

static void make_modes(sim_mode *m, uint64_t key, int purpose, double length, double amp_total)
{
    for (int i = 0; i < SIM_NMODES; i++) {
        double lam = length * (0.5 + 1.5 * sim_unif(key, purpose, (uint64_t)i, 0));
        double phi = 2 * PI * sim_unif(key, purpose, (uint64_t)i, 1);
        double k = 2 * PI / lam;
        m[i].kx = k * cos(phi);
        m[i].ky = k * sin(phi);
        m[i].ph = 2 * PI * sim_unif(key, purpose, (uint64_t)i, 2);
        m[i].amp = amp_total;
    }
}

static double field(const sim_mode *m, double x, double y)
{
    double s = 0;
    for (int i = 0; i < SIM_NMODES; i++) s += m[i].amp * cos(m[i].kx * x + m[i].ky * y + m[i].ph);
    return s;
}

/* ---- world ---------------------------------------------------------------------------- */

int tmd_sim_world_init(tmd_ctx *ctx, sim_world *w, const tmd_sim_params *p)
{
    memset(w, 0, sizeof *w);
    w->p = *p;
    uint64_t key = w->key = p->seed;
    w->px = p->pixel_size;
    w->frames = p->frames;
    double a = p->lattice_a;
    double th = p->rotation * PI / 180;
    /* homogeneous strain: a random share h of the budget */
    double h = sim_unif(key, SP_STRAIN, 100, 0);
    double exx = h * p->strain * (2 * sim_unif(key, SP_STRAIN, 101, 0) - 1);
    double eyy = h * p->strain * (2 * sim_unif(key, SP_STRAIN, 102, 0) - 1);
    double exy = h * p->strain * (sim_unif(key, SP_STRAIN, 103, 0) - 0.5);
    double v1[2] = {a * cos(th), a * sin(th)}, v2[2] = {a * cos(th + PI / 3), a * sin(th + PI / 3)};
    w->b1[0] = (1 + exx) * v1[0] + exy * v1[1];
    w->b1[1] = exy * v1[0] + (1 + eyy) * v1[1];
    w->b2[0] = (1 + exx) * v2[0] + exy * v2[1];
    w->b2[1] = exy * v2[0] + (1 + eyy) * v2[1];
    double det = w->b1[0] * w->b2[1] - w->b2[0] * w->b1[1];
    w->binv[0][0] = w->b2[1] / det;
    w->binv[0][1] = -w->b2[0] / det;
    w->binv[1][0] = -w->b1[1] / det;
    w->binv[1][1] = w->b1[0] / det;
    double u = sim_unif(key, SP_LATTICE, 0, 0), v = sim_unif(key, SP_LATTICE, 1, 0);
    w->origin[0] = u * w->b1[0] + v * w->b2[0];
    w->origin[1] = u * w->b1[1] + v * w->b2[1];
    w->bond = a / sqrt(3.0);
    /* strain field: displacement modes, each contributing strain (1-h) strain / sqrt(K) */
    make_modes(w->umode, key, SP_STRAIN, p->strain_length, 0);
    w->umax = 0;
    for (int i = 0; i < SIM_NMODES; i++) {
        double k = hypot(w->umode[i].kx, w->umode[i].ky);
        w->umode[i].amp = (1 - h) * p->strain / sqrt((double)SIM_NMODES) / k;
        double phi = 2 * PI * sim_unif(key, SP_STRAIN, 200 + (uint64_t)i, 0);
        w->udir[i][0] = cos(phi);
        w->udir[i][1] = sin(phi);
        w->umax += w->umode[i].amp;
    }
    double unit = sqrt(2.0 / SIM_NMODES);
    make_modes(w->alloy_m, key, SP_ALLOY_M, p->cluster_length, unit);
    make_modes(w->alloy_x, key, SP_ALLOY_X, p->cluster_length, unit);
    make_modes(w->bgmode, key, SP_BG, p->background_length, unit);
    make_modes(w->contmode, key, SP_CONT_FIELD, p->contamination_length, unit);
    w->thr_w = p->comp_w <= 0 ? -1e9 : p->comp_w >= 1 ? 1e9 : tmd_sim_norm_ppf(p->comp_w);
    w->thr_se = p->comp_se <= 0 ? -1e9 : p->comp_se >= 1 ? 1e9 : tmd_sim_norm_ppf(p->comp_se);
    double n = p->z_exponent, zw = pow(74, n);
    w->wsp[0] = 0;
    w->wsp[TMD_SP_MO] = pow(42, n) / zw;
    w->wsp[TMD_SP_W] = 1;
    w->wsp[TMD_SP_S2] = 2 * pow(16, n) / zw;
    w->wsp[TMD_SP_SSE] = (pow(16, n) + pow(34, n)) / zw;
    w->wsp[TMD_SP_SE2] = 2 * pow(34, n) / zw;
    w->wsp[TMD_SP_S] = pow(16, n) / zw;
    w->wsp[TMD_SP_SE] = pow(34, n) / zw;
    w->sig_c = p->probe_fwhm / 2.3548200450309493;
    w->sig_t = p->tail_fwhm / 2.3548200450309493;
    w->frac_t = p->tail_fraction;
    w->peak_w = (1 - w->frac_t) / (2 * PI * w->sig_c * w->sig_c) + w->frac_t / (2 * PI * w->sig_t * w->sig_t);
    w->counts_scale = p->dose / w->peak_w;
    w->cont_density = 0.3;
    w->cont_weight = p->contamination * w->wsp[TMD_SP_MO] * w->peak_w / w->cont_density;
    w->lag = p->scan_smear / (1 - p->scan_smear);
    double ea = p->edge_angle * PI / 180;
    w->edge_n[0] = cos(ea);
    w->edge_n[1] = sin(ea);
    w->edge_o = p->edge_offset * 0.5 * hypot((double)p->width, (double)p->height) * p->pixel_size;
    double sr = p->scan_rotation * PI / 180, cr = cos(sr), sn = sin(sr);
    double S[2][2] = {{1, p->shear}, {0, 1 + p->scan_compress}};
    w->M[0][0] = cr * S[0][0] - sn * S[1][0];
    w->M[0][1] = cr * S[0][1] - sn * S[1][1];
    w->M[1][0] = sn * S[0][0] + cr * S[1][0];
    w->M[1][1] = sn * S[0][1] + cr * S[1][1];
    double md = w->M[0][0] * w->M[1][1] - w->M[0][1] * w->M[1][0];
    w->Minv[0][0] = w->M[1][1] / md;
    w->Minv[0][1] = -w->M[0][1] / md;
    w->Minv[1][0] = -w->M[1][0] / md;
    w->Minv[1][1] = w->M[0][0] / md;
    w->cx = 0.5 * (double)(p->width - 1);
    w->cy = 0.5 * (double)(p->height - 1);
    double px2 = p->pixel_size * p->pixel_size;
    w->G[0] = px2 * (w->M[0][0] * w->M[0][0] + w->M[1][0] * w->M[1][0]);
    w->G[1] = px2 * (w->M[0][0] * w->M[0][1] + w->M[1][0] * w->M[1][1]);
    w->G[2] = px2 * (w->M[0][1] * w->M[0][1] + w->M[1][1] * w->M[1][1]);
    tmd_status st = tmd_calloc(ctx, (void **)&w->drift, (size_t)p->frames, 2 * sizeof(double), "simulated drift");
    if (st) return st;
    for (int64_t t = 1; t < p->frames; t++) {
        w->drift[2 * t] = w->drift[2 * t - 2] + p->drift_vx + p->drift_step * sim_normal(key, SP_DRIFT, (uint64_t)t, 0);
        w->drift[2 * t + 1] = w->drift[2 * t - 1] + p->drift_vy + p->drift_step * sim_normal(key, SP_DRIFT, (uint64_t)t, 1);
    }
    return TMD_OK;
}

void tmd_sim_world_free(sim_world *w)
{
    if (!w) return;
    free(w->drift);
    for (int64_t i = 0; i < w->nregions; i++) {
        free(w->regions[i].site_id);
        free(w->regions[i].state);
        free(w->regions[i].jump);
        free(w->regions[i].dynamic);
    }
    free(w->regions);
    free(w->rmap);
    memset(w, 0, sizeof *w);
}

/* ---- geometry -------------------------------------------------------------------------- */

double tmd_sim_row_jitter(const sim_world *w, int64_t t, int64_t y)
{
    const tmd_sim_params *p = &w->p;
    double j = 0;
    if (p->jitter > 0) j += p->jitter * sim_normal(w->key, SP_JITTER, (uint64_t)t, (uint64_t)(y + (1LL << 40)));
    if (p->wobble > 0) {
        double ph = 2 * PI * sim_unif(w->key, SP_JITTER, (uint64_t)t, 1ULL << 62);
        j += p->wobble * sin(2 * PI * (double)y / p->wobble_period + ph);
    }
    return j;
}

/* Probe-weighted mean jitter of the rows a column at row y spans. */
static double mean_jitter(const sim_world *w, int64_t t, double y)
{
    const tmd_sim_params *p = &w->p;
    if (p->jitter <= 0 && p->wobble <= 0) return 0;
    double s = w->sig_c / w->px;
    int64_t r = (int64_t)ceil(3 * s);
    int64_t yc = (int64_t)floor(y + 0.5);
    double num = 0, den = 0;
    for (int64_t yy = yc - r; yy <= yc + r; yy++) {
        double d = (double)yy - y, wt = exp(-d * d / (2 * s * s));
        int64_t o = yy - w->jt_y0;
        num += wt * (w->jt && t == w->jt_t && o >= 0 && o < w->jt_n ? w->jt[o] : tmd_sim_row_jitter(w, t, yy));
        den += wt;
    }
    return num / den;
}

void tmd_sim_specimen_to_pixel(const sim_world *w, int64_t t, double sx, double sy, double *x, double *y)
{
    double ux = sx / w->px, uy = sy / w->px;
    double qx = w->Minv[0][0] * ux + w->Minv[0][1] * uy + w->cx + w->drift[2 * t];
    double qy = w->Minv[1][0] * ux + w->Minv[1][1] * uy + w->cy + w->drift[2 * t + 1];
    *x = qx - mean_jitter(w, t, qy) + w->lag;
    *y = qy;
}

void tmd_sim_pixel_box_to_specimen(const sim_world *w, int64_t t, double x0, double x1, double y0, double y1,
                               double margin_px, double *sx0, double *sx1, double *sy0, double *sy1)
{
    double xs[2] = {x0 - margin_px, x1 + margin_px}, ys[2] = {y0 - margin_px, y1 + margin_px};
    double lo[2] = {DBL_MAX, DBL_MAX}, hi[2] = {-DBL_MAX, -DBL_MAX};
    for (int a = 0; a < 2; a++)
        for (int b = 0; b < 2; b++) {
            double qx = xs[a] - w->cx - w->drift[2 * t], qy = ys[b] - w->cy - w->drift[2 * t + 1];
            double s[2] = {(w->M[0][0] * qx + w->M[0][1] * qy) * w->px, (w->M[1][0] * qx + w->M[1][1] * qy) * w->px};
            for (int k = 0; k < 2; k++) {
                if (s[k] < lo[k]) lo[k] = s[k];
                if (s[k] > hi[k]) hi[k] = s[k];
            }
        }
    *sx0 = lo[0];
    *sx1 = hi[0];
    *sy0 = lo[1];
    *sy1 = hi[1];
}

/* ---- holes, edge, regions -------------------------------------------------------------- */

static uint64_t cell_code(int64_t ci, int64_t cj) { return ((uint64_t)(ci + (1LL << 31)) << 32) ^ (uint64_t)(cj + (1LL << 31)); }

/* Signed distance (Angstrom) to the film boundary: > 0 on the film, < 0 in vacuum. */
static double film_distance(const sim_world *w, double sx, double sy)
{
    const tmd_sim_params *p = &w->p;
    double d = 1e30;
    if (p->hole_prob > 0) {
        double L = p->hole_spacing;
        int64_t ci = (int64_t)floor(sx / L), cj = (int64_t)floor(sy / L);
        for (int64_t a = ci - 1; a <= ci + 1; a++)
            for (int64_t b = cj - 1; b <= cj + 1; b++) {
                uint64_t c = cell_code(a, b);
                if (sim_unif(w->key, SP_HOLE, c, 0) >= p->hole_prob) continue;
                double hx = ((double)a + sim_unif(w->key, SP_HOLE, c, 1)) * L;
                double hy = ((double)b + sim_unif(w->key, SP_HOLE, c, 2)) * L;
                double R = fmin(p->hole_radius * (0.5 + sim_unif(w->key, SP_HOLE, c, 3)), 0.45 * L);
                double dx = sx - hx, dy = sy - hy, ang = atan2(dy, dx);
                double rr = R * (1 + 0.15 * sin(3 * ang + 6.28 * sim_unif(w->key, SP_HOLE, c, 4)) +
                                 0.08 * sin(5 * ang + 6.28 * sim_unif(w->key, SP_HOLE, c, 5)));
                double dd = hypot(dx, dy) - rr;
                if (dd < d) d = dd;
            }
    }
    if (p->edge > 0.5) {
        double tcoord = -w->edge_n[1] * sx + w->edge_n[0] * sy;
        double wav = 3.0 * sin(tcoord / 25.0 + 6.28 * sim_unif(w->key, SP_EDGE, 0, 0)) +
                     1.5 * sin(tcoord / 7.0 + 6.28 * sim_unif(w->key, SP_EDGE, 1, 0));
        double de = w->edge_o - (w->edge_n[0] * sx + w->edge_n[1] * sy) + wav;
        if (de < d) d = de;
    }
    return d;
}

/* Finds the defect-rich region containing (sx, sy); returns 1 and its id/centre/radius. */
static int region_at(const sim_world *w, double sx, double sy, int64_t *id, double *cx, double *cy, double *r)
{
    const tmd_sim_params *p = &w->p;
    if (p->region_prob <= 0) return 0;
    double L = p->region_spacing;
    int64_t ci = (int64_t)floor(sx / L), cj = (int64_t)floor(sy / L);
    for (int64_t a = ci - 1; a <= ci + 1; a++)
        for (int64_t b = cj - 1; b <= cj + 1; b++) {
            uint64_t c = cell_code(a, b);
            if (sim_unif(w->key, SP_REGION, c, 0) >= p->region_prob) continue;
            double hx = ((double)a + sim_unif(w->key, SP_REGION, c, 1)) * L;
            double hy = ((double)b + sim_unif(w->key, SP_REGION, c, 2)) * L;
            double R = fmin(p->region_radius * (0.6 + 0.8 * sim_unif(w->key, SP_REGION, c, 3)), 0.5 * L);
            if (hypot(sx - hx, sy - hy) < R) {
                *id = (int64_t)(c & 0x7fffffffffffffffULL);
                *cx = hx;
                *cy = hy;
                *r = R;
                return 1;
            }
        }
    return 0;
}

static uint64_t rmap_slot(uint64_t id, int64_t cap) { return sim_mix(id) & (uint64_t)(cap - 1); }

static int64_t region_index(tmd_ctx *ctx, sim_world *w, int64_t id, double cx, double cy, double r)
{
    if (w->rmap_cap) {
        for (uint64_t s = rmap_slot((uint64_t)id, w->rmap_cap);; s = (s + 1) & (uint64_t)(w->rmap_cap - 1)) {
            int64_t v = w->rmap[s];
            if (v == 0) break;
            if (w->regions[v - 1].id == id) return v - 1;
        }
    }
    if (w->nregions == w->capregions) {
        int64_t cap = w->capregions ? 2 * w->capregions : 16;
        sim_region *n = realloc(w->regions, (size_t)cap * sizeof *n);
        if (!n) {
            TMD_FAIL(ctx, TMD_ERR_NOMEM, "out of memory for %lld simulated regions", (long long)cap);
            return -1;
        }
        w->regions = n;
        w->capregions = cap;
    }
    if (2 * (w->nregions + 1) > w->rmap_cap) { /* rebuild the map at twice the size */
        int64_t cap = w->rmap_cap ? 2 * w->rmap_cap : 64;
        while (cap < 2 * (w->nregions + 1)) cap *= 2;
        int64_t *m = calloc((size_t)cap, sizeof *m);
        if (!m) {
            TMD_FAIL(ctx, TMD_ERR_NOMEM, "out of memory for the region map");
            return -1;
        }
        for (int64_t i = 0; i < w->nregions; i++) {
            uint64_t s = rmap_slot((uint64_t)w->regions[i].id, cap);
            while (m[s]) s = (s + 1) & (uint64_t)(cap - 1);
            m[s] = i + 1;
        }
        free(w->rmap);
        w->rmap = m;
        w->rmap_cap = cap;
    }
    sim_region *g = &w->regions[w->nregions];
    memset(g, 0, sizeof *g);
    g->id = id;
    g->sx = cx;
    g->sy = cy;
    g->r = r;
    uint64_t s = rmap_slot((uint64_t)id, w->rmap_cap);
    while (w->rmap[s]) s = (s + 1) & (uint64_t)(w->rmap_cap - 1);
    w->rmap[s] = w->nregions + 1;
    return w->nregions++;
}

void tmd_sim_regions_in_box(const sim_world *w, double sx0, double sx1, double sy0, double sy1, sim_region_fn fn, void *arg)
{
    const tmd_sim_params *p = &w->p;
    if (p->region_prob <= 0) return;
    double L = p->region_spacing;
    int64_t a0 = (int64_t)floor(sx0 / L) - 1, a1 = (int64_t)floor(sx1 / L) + 1;
    int64_t b0 = (int64_t)floor(sy0 / L) - 1, b1 = (int64_t)floor(sy1 / L) + 1;
    for (int64_t a = a0; a <= a1; a++)
        for (int64_t b = b0; b <= b1; b++) {
            uint64_t c = cell_code(a, b);
            if (sim_unif(w->key, SP_REGION, c, 0) >= p->region_prob) continue;
            double hx = ((double)a + sim_unif(w->key, SP_REGION, c, 1)) * L;
            double hy = ((double)b + sim_unif(w->key, SP_REGION, c, 2)) * L;
            double R = fmin(p->region_radius * (0.6 + 0.8 * sim_unif(w->key, SP_REGION, c, 3)), 0.5 * L);
            if (hx < sx0 || hx >= sx1 || hy < sy0 || hy >= sy1) continue;
            fn(arg, (int64_t)(c & 0x7fffffffffffffffULL), hx, hy, R);
        }
}

/* ---- sites ------------------------------------------------------------------------------ */

static int64_t site_id(int64_t i, int64_t j, int sub)
{
    return (((i + (1LL << 29)) << 31) + (j + (1LL << 29))) * 2 + sub;
}

static int push_site(tmd_ctx *ctx, sim_site_list *l, const sim_site *s)
{
    if (l->n == l->cap) {
        int64_t cap = l->cap ? 2 * l->cap : 1024;
        sim_site *n = realloc(l->s, (size_t)cap * sizeof *n);
        if (!n) return TMD_FAIL(ctx, TMD_ERR_NOMEM, "out of memory for %lld simulated sites", (long long)cap);
        l->s = n;
        l->cap = cap;
    }
    l->s[l->n++] = *s;
    return TMD_OK;
}

static int8_t chalcogen_species(int ns, int nse)
{
    if (ns == 2) return TMD_SP_S2;
    if (ns == 1 && nse == 1) return TMD_SP_SSE;
    if (nse == 2) return TMD_SP_SE2;
    if (ns == 1) return TMD_SP_S;
    if (nse == 1) return TMD_SP_SE;
    return 0;
}

static void chalcogen_counts(int sp, int *ns, int *nse)
{
    *ns = sp == TMD_SP_S2 ? 2 : (sp == TMD_SP_SSE || sp == TMD_SP_S) ? 1 : 0;
    *nse = sp == TMD_SP_SE2 ? 2 : (sp == TMD_SP_SSE || sp == TMD_SP_SE) ? 1 : 0;
}

int tmd_sim_sites_in_box(tmd_ctx *ctx, sim_world *w, double sx0, double sx1, double sy0, double sy1, sim_site_list *out)
{
    const tmd_sim_params *p = &w->p;
    out->n = 0;
    double m = w->umax + 5 * p->displacement + 0.5;
    double cx[4] = {sx0 - m, sx1 + m, sx0 - m, sx1 + m}, cy[4] = {sy0 - m, sy0 - m, sy1 + m, sy1 + m};
    double fimin = DBL_MAX, fimax = -DBL_MAX, fjmin = DBL_MAX, fjmax = -DBL_MAX;
    for (int k = 0; k < 4; k++) {
        double dx = cx[k] - w->origin[0], dy = cy[k] - w->origin[1];
        double fi = w->binv[0][0] * dx + w->binv[0][1] * dy, fj = w->binv[1][0] * dx + w->binv[1][1] * dy;
        fimin = fmin(fimin, fi);
        fimax = fmax(fimax, fi);
        fjmin = fmin(fjmin, fj);
        fjmax = fmax(fjmax, fj);
    }
    int64_t i0 = (int64_t)floor(fimin) - 1, i1 = (int64_t)ceil(fimax) + 1;
    int64_t j0 = (int64_t)floor(fjmin) - 1, j1 = (int64_t)ceil(fjmax) + 1;
    double c = p->cluster, cc = sqrt(1 - c * c);
    double bx = (w->b1[0] + w->b2[0]) / 3, by = (w->b1[1] + w->b2[1]) / 3;
    uint64_t key = w->key;
    for (int64_t i = i0; i <= i1; i++)
        for (int64_t j = j0; j <= j1; j++)
            for (int sub = 0; sub < 2; sub++) {
                double rx = w->origin[0] + (double)i * w->b1[0] + (double)j * w->b2[0] + sub * bx;
                double ry = w->origin[1] + (double)i * w->b1[1] + (double)j * w->b2[1] + sub * by;
                if (rx < sx0 - m || rx > sx1 + m || ry < sy0 - m || ry > sy1 + m) continue;
                sim_site s;
                s.i = i;
                s.j = j;
                s.sub = sub;
                s.id = site_id(i, j, sub);
                uint64_t id = (uint64_t)s.id;
                double ux = 0, uy = 0;
                for (int k = 0; k < SIM_NMODES; k++) {
                    double v = w->umode[k].amp * cos(w->umode[k].kx * rx + w->umode[k].ky * ry + w->umode[k].ph);
                    ux += v * w->udir[k][0];
                    uy += v * w->udir[k][1];
                }
                if (p->displacement > 0) {
                    ux += p->displacement * sim_normal(key, SP_DISP, id, 0);
                    uy += p->displacement * sim_normal(key, SP_DISP, id, 1);
                }
                s.sx = rx + ux;
                s.sy = ry + uy;
                if (s.sx < sx0 || s.sx >= sx1 || s.sy < sy0 || s.sy >= sy1) continue;
                if ((p->hole_prob > 0 || p->edge > 0.5) && film_distance(w, rx, ry) <= 0) continue;
                double boost = 1;
                int64_t rid;
                double rcx, rcy, rr;
                s.region = -1;
                if (region_at(w, rx, ry, &rid, &rcx, &rcy, &rr)) {
                    boost = p->region_boost;
                    int64_t gi = region_index(ctx, w, rid, rcx, rcy, rr);
                    if (gi < 0) return TMD_ERR_NOMEM;
                    s.region = (int)gi;
                }
                if (sub == 0) {
                    double z = cc * sim_normal(key, SP_SPECIES, id, 0) + (c > 0 ? c * field(w->alloy_m, rx, ry) : 0);
                    s.species = z < w->thr_w ? TMD_SP_W : TMD_SP_MO;
                    if (sim_unif(key, SP_VAC, id, 0) < fmin(0.6, p->vac_m * boost)) s.species = 0;
                } else {
                    double g = c > 0 ? c * field(w->alloy_x, rx, ry) : 0;
                    int ns = 0, nse = 0;
                    int both = sim_unif(key, SP_VAC, id, 3) < fmin(0.6, p->vac_x2 * boost);
                    for (int a = 0; a < 2; a++) {
                        double z = cc * sim_normal(key, SP_SPECIES, id, 1 + (uint64_t)a) + g;
                        if (both || sim_unif(key, SP_VAC, id, 1 + (uint64_t)a) < fmin(0.6, p->vac_x * boost)) continue;
                        if (z < w->thr_se) nse++;
                        else ns++;
                    }
                    s.species = chalcogen_species(ns, nse);
                }
                double f = 1 + p->column_jitter * sim_normal(key, SP_COLINT, id, 0);
                s.weight = (float)fmax(0.2, f);
                int st = push_site(ctx, out, &s);
                if (st) return st;
            }
    return TMD_OK;
}

double tmd_sim_species_weight(const sim_world *w, int species, const sim_site *s)
{
    return w->wsp[species] * s->weight;
}

/* ---- dynamics in hot regions ----------------------------------------------------------- */

static int64_t find_id(const int64_t *ids, int64_t n, int64_t id)
{
    int64_t lo = 0, hi = n - 1;
    while (lo <= hi) {
        int64_t mid = (lo + hi) / 2;
        if (ids[mid] == id) return mid;
        if (ids[mid] < id) lo = mid + 1;
        else hi = mid - 1;
    }
    return -1;
}

static int cmp_site_id(const void *a, const void *b)
{
    int64_t x = ((const sim_site *)a)->id, y = ((const sim_site *)b)->id;
    return x < y ? -1 : x > y;
}

static int simulate_region(tmd_ctx *ctx, sim_world *w, int64_t gi)
{
    const tmd_sim_params *p = &w->p;
    sim_site_list l = {0};
    double cx = w->regions[gi].sx, cy = w->regions[gi].sy, r = w->regions[gi].r;
    int st = tmd_sim_sites_in_box(ctx, w, cx - r - 3, cx + r + 3, cy - r - 3, cy + r + 3, &l);
    if (st) {
        free(l.s);
        return st;
    }
    sim_region *g = &w->regions[gi]; /* re-fetched: the list may have grown */
    int64_t n = 0;
    for (int64_t k = 0; k < l.n; k++)
        if (l.s[k].region == gi) l.s[n++] = l.s[k];
    qsort(l.s, (size_t)n, sizeof *l.s, cmp_site_id);
    int64_t T = w->frames;
    g->nsites = n;
    g->site_id = malloc((size_t)(n ? n : 1) * sizeof *g->site_id);
    g->state = malloc((size_t)(n ? n : 1) * (size_t)T);
    g->jump = malloc((size_t)(n ? n : 1) * (size_t)T);
    g->dynamic = calloc((size_t)(n ? n : 1), 1);
    if (!g->site_id || !g->state || !g->jump || !g->dynamic) {
        free(l.s);
        return TMD_FAIL(ctx, TMD_ERR_NOMEM, "out of memory for the dynamics of a region (%lld sites x %lld frames)",
                        (long long)n, (long long)T);
    }
    for (int64_t k = 0; k < n; k++) {
        g->site_id[k] = l.s[k].id;
        g->state[k * T] = l.s[k].species;
        g->jump[k * T] = 0;
    }
    uint64_t key = w->key;
    static const int nb[6][2] = {{1, 0}, {-1, 0}, {0, 1}, {0, -1}, {1, -1}, {-1, 1}};
    for (int64_t t = 1; t < T; t++) {
        for (int64_t k = 0; k < n; k++) {
            g->state[k * T + t] = g->state[k * T + t - 1];
            g->jump[k * T + t] = g->jump[k * T + t - 1];
        }
        for (int64_t k = 0; k < n; k++) {
            const sim_site *s = &l.s[k];
            uint64_t id = (uint64_t)s->id, c = (uint64_t)t * 16;
            int8_t *sp = &g->state[k * T + t];
            if (s->sub == 0) {
                if (*sp) {
                    if (sim_unif(key, SP_DYN, id, c + 0) < 0.25 * p->p_sputter) *sp = 0;
                } else if (sim_unif(key, SP_DYN, id, c + 1) < 0.5 * p->p_heal) {
                    *sp = sim_unif(key, SP_DYN, id, c + 2) < p->comp_w ? TMD_SP_W : TMD_SP_MO;
                }
            } else {
                int ns, nse;
                chalcogen_counts(*sp, &ns, &nse);
                int atoms[2], na = 0; /* 1 = S, 2 = Se */
                for (int a = 0; a < ns; a++) atoms[na++] = 1;
                for (int a = 0; a < nse; a++) atoms[na++] = 2;
                int out[2], no = 0;
                for (int a = 0; a < na; a++) {
                    if (sim_unif(key, SP_DYN, id, c + 3 + (uint64_t)a) < p->p_sputter) continue;
                    int at = atoms[a];
                    if (sim_unif(key, SP_DYN, id, c + 5 + (uint64_t)a) < p->p_exchange) at = 3 - at;
                    out[no++] = at;
                }
                for (int a = no; a < 2; a++)
                    if (sim_unif(key, SP_DYN, id, c + 7 + (uint64_t)a) < p->p_heal)
                        out[no++] = sim_unif(key, SP_DYN, id, c + 9 + (uint64_t)a) < p->comp_se ? 2 : 1;
                if (no < 2 && sim_unif(key, SP_DYN, id, c + 11) < p->p_hop) {
                    int d = (int)(sim_hash(key, SP_DYN, id, c + 12) % 6);
                    int64_t nid = site_id(s->i + nb[d][0], s->j + nb[d][1], 1);
                    int64_t kn = find_id(g->site_id, n, nid);
                    if (kn >= 0) {
                        int8_t *spn = &g->state[kn * T + t];
                        int mns, mnse;
                        chalcogen_counts(*spn, &mns, &mnse);
                        if (mns + mnse > 0) {
                            int take = mns > 0 ? 1 : 2;
                            if (take == 1) mns--;
                            else mnse--;
                            *spn = chalcogen_species(mns, mnse);
                            out[no++] = take;
                        }
                    }
                }
                int cs = 0, cse = 0;
                for (int a = 0; a < no; a++) {
                    if (out[a] == 1) cs++;
                    else cse++;
                }
                *sp = chalcogen_species(cs, cse);
            }
            int8_t *jp = &g->jump[k * T + t];
            if (*jp == 0) {
                if (*sp && sim_unif(key, SP_DYN, id, c + 13) < p->p_jump) *jp = (int8_t)(1 + sim_hash(key, SP_DYN, id, c + 14) % 3);
            } else if (sim_unif(key, SP_DYN, id, c + 15) < 0.3) {
                *jp = 0;
            }
        }
    }
    for (int64_t k = 0; k < n; k++)
        for (int64_t t = 1; t < T; t++)
            if (g->state[k * T + t] != g->state[k * T] || g->jump[k * T + t] != 0) {
                g->dynamic[k] = 1;
                break;
            }
    g->ready = 1;
    free(l.s);
    return TMD_OK;
}

int tmd_sim_site_state(tmd_ctx *ctx, sim_world *w, const sim_site *s, int64_t t, int8_t *species, double *jx, double *jy,
                   int8_t *dynamic)
{
    *species = s->species;
    *jx = *jy = 0;
    if (dynamic) *dynamic = 0;
    if (w->frames <= 1 || s->region < 0) return TMD_OK;
    if (!w->regions[s->region].ready) {
        int st = simulate_region(ctx, w, s->region);
        if (st) return st;
    }
    sim_region *g = &w->regions[s->region];
    int64_t k = find_id(g->site_id, g->nsites, s->id);
    if (k < 0) return TMD_OK;
    *species = g->state[k * w->frames + t];
    if (dynamic) *dynamic = g->dynamic[k];
    int jmp = g->jump[k * w->frames + t];
    if (jmp) {
        /* half a bond towards one of the three neighbours (A) or away from them (B) */
        double bx = (w->b1[0] + w->b2[0]) / 3, by = (w->b1[1] + w->b2[1]) / 3;
        double ang = 2 * PI / 3 * (jmp - 1), ca = cos(ang), sa = sin(ang);
        double vx = ca * bx - sa * by, vy = sa * bx + ca * by;
        double sgn = s->sub == 0 ? 0.5 : -0.5;
        *jx = sgn * vx;
        *jy = sgn * vy;
    }
    return TMD_OK;
}

int tmd_sim_site_jump(const sim_world *w, const sim_site *s, int64_t t)
{
    if (w->frames <= 1 || s->region < 0 || !w->regions[s->region].ready) return 0;
    const sim_region *g = &w->regions[s->region];
    int64_t k = find_id(g->site_id, g->nsites, s->id);
    return k < 0 ? 0 : g->jump[k * w->frames + t];
}

double tmd_sim_mean_row_jitter(const sim_world *w, int64_t t)
{
    const tmd_sim_params *p = &w->p;
    if ((p->jitter <= 0 && p->wobble <= 0) || p->height <= 0) return 0;
    double s = 0;
    for (int64_t y = 0; y < p->height; y++) s += tmd_sim_row_jitter(w, t, y);
    return s / (double)p->height;
}

int tmd_sim_region_count_sites(tmd_ctx *ctx, sim_world *w, int64_t id, double cx, double cy, double r, int64_t *n)
{
    sim_site_list l = {0};
    *n = 0;
    int st = tmd_sim_sites_in_box(ctx, w, cx - r - 3, cx + r + 3, cy - r - 3, cy + r + 3, &l);
    if (!st)
        for (int64_t k = 0; k < l.n; k++)
            if (l.s[k].region >= 0 && w->regions[l.s[k].region].id == id) (*n)++;
    free(l.s);
    return st;
}

int8_t tmd_sim_species_class(int species)
{
    static const int8_t cls[8] = {0, 1, 2, 3, 4, 5, 3, 4};
    return species >= 0 && species < 8 ? cls[species] : 0;
}

/* Exported for the renderer: film factor and smooth fields. */
double tmd_sim_film_factor(const sim_world *w, double sx, double sy)
{
    if (w->p.hole_prob <= 0 && w->p.edge <= 0.5) return 1;
    double d = film_distance(w, sx, sy);
    return fmin(1, fmax(0, 0.5 + d / 1.5));
}
double tmd_sim_field_bg(const sim_world *w, double sx, double sy) { return field(w->bgmode, sx, sy); }
double tmd_sim_field_cont(const sim_world *w, double sx, double sy) { return field(w->contmode, sx, sy); }
