/* Band renderer: rows [y0, y0+ny) of one frame, full width. Atoms and contamination
 * scatterers are splatted with the probe (core + tail Gaussians, in specimen distance, with
 * per-row scan jitter), the smooth background is added from a global coarse grid, then
 * Poisson + read noise, detector smear along the fast scan, gain and offset.
 *
 * Byte-identity across rank counts: a pixel's value is a sum over the same sources in the
 * same global order (lattice order i, j, sub, then contamination cells), and each source's
 * contribution to a row is computed from (source, row) only; noise is hashed by the global
 * pixel index. So rows come out the same whichever band they are rendered in. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sim_internal.h"

double tmd_sim_film_factor(const sim_world *w, double sx, double sy);
double tmd_sim_field_bg(const sim_world *w, double sx, double sy);
double tmd_sim_field_cont(const sim_world *w, double sx, double sy);

#define BG_STEP 8

typedef struct {
    double A, B, C;        /* exponent coefficients in pixel offsets: A dx^2 + 2B dx dy + C dy^2 */
    double amp;            /* normalisation: share / (2 pi sigma^2) */
    int R;                 /* window half-width, pixels */
    double *T;             /* (2R+2) exp(-A k^2) */
} psf_comp;

typedef struct {
    sim_world *w;
    int64_t t, y0, ny, W;
    double *acc;           /* (ny, W) */
    double *jit;           /* (ny + 2 Rmax + 1) jitter of rows y0 - Rmax .. */
    int Rmax;
    psf_comp comp[2];
    int ncomp;
} render_ctx;

/* A Gaussian probe component on a grid of `f` pixels per node. */
static int psf_init(tmd_ctx *ctx, psf_comp *c, const sim_world *w, double sigma, double share, double nsig, int f)
{
    double s2 = 2 * sigma * sigma, f2 = (double)f * f;
    c->A = w->G[0] * f2 / s2;
    c->B = w->G[1] * f2 / s2;
    c->C = w->G[2] * f2 / s2;
    c->amp = share / (3.14159265358979323846 * s2);
    /* reach in nodes along the worst axis of the scan map */
    double gmin = fmin(w->G[0], w->G[2]) * 0.9 * f2;
    c->R = (int)ceil(nsig * sigma / sqrt(gmin)) + 1;
    c->T = malloc((size_t)(2 * c->R + 2) * sizeof(double));
    if (!c->T) return TMD_FAIL(ctx, TMD_ERR_NOMEM, "out of memory for a probe table");
    for (int k = 0; k < 2 * c->R + 2; k++) c->T[k] = exp(-c->A * (double)k * (double)k);
    return TMD_OK;
}

/* Adds weight * psf component c around pixel position (qx, qy) (unjittered) into the band. */
static void splat(render_ctx *r, const psf_comp *c, double qx, double qy, double weight)
{
    {
        int R = c->R;
        int64_t yc = (int64_t)floor(qy + 0.5);
        int64_t ya = yc - R, yb = yc + R;
        if (ya < r->y0) ya = r->y0;
        if (yb > r->y0 + r->ny - 1) yb = r->y0 + r->ny - 1;
        if (ya > yb) return;
        int64_t xs = (int64_t)floor(qx) - R, xe = xs + 2 * R + 1;
        int64_t k0 = 0;
        if (xs < 0) {
            k0 = -xs;
        }
        if (xe > r->W - 1) xe = r->W - 1;
        if (xs + k0 > xe) return;
        double amp = weight * c->amp;
        for (int64_t y = ya; y <= yb; y++) {
            double dy = (double)y - qy;
            double u0 = (double)xs + (r->jit ? r->jit[y - r->y0 + r->Rmax] : 0) - qx;
            double beta = 2 * c->A * u0 + 2 * c->B * dy;
            double gamma = c->A * u0 * u0 + 2 * c->B * u0 * dy + c->C * dy * dy;
            double ratio = exp(-beta);
            /* the start depends only on the source and the image border (k0), never on the
             * band, so a pixel's bits are the same in every band that holds it */
            double pk = amp * exp(-gamma - beta * (double)k0);
            double *row = r->acc + (y - r->y0) * r->W + xs;
            const double *T = c->T;
            /* four interleaved geometric chains (vectorisable, no serial dependency) */
            double r2 = ratio * ratio, r4 = r2 * r2;
            double p0 = pk, p1 = pk * ratio, p2 = pk * r2, p3 = p1 * r2;
            int64_t k = k0, kend = xe - xs;
            for (; k + 3 <= kend; k += 4) {
                row[k] += T[k] * p0;
                row[k + 1] += T[k + 1] * p1;
                row[k + 2] += T[k + 2] * p2;
                row[k + 3] += T[k + 3] * p3;
                p0 *= r4;
                p1 *= r4;
                p2 *= r4;
                p3 *= r4;
            }
            double pl[3] = {p0, p1, p2};
            for (int l = 0; k <= kend; k++, l++) row[k] += T[k] * pl[l];
        }
    }
}

static void paint_disk(uint8_t *cls, int64_t y0, int64_t ny, int64_t W, double x, double y, double rad, uint8_t v)
{
    int64_t ya = (int64_t)ceil(y - rad), yb = (int64_t)floor(y + rad);
    if (ya < y0) ya = y0;
    if (yb > y0 + ny - 1) yb = y0 + ny - 1;
    for (int64_t yy = ya; yy <= yb; yy++) {
        double dy = (double)yy - y, h = sqrt(fmax(0, rad * rad - dy * dy));
        int64_t xa = (int64_t)ceil(x - h), xb = (int64_t)floor(x + h);
        if (xa < 0) xa = 0;
        if (xb > W - 1) xb = W - 1;
        for (int64_t xx = xa; xx <= xb; xx++) cls[(yy - y0) * W + xx] = v;
    }
}

static int owned(double x, double y, int64_t y0, int64_t ny, int64_t W)
{
    double yr = floor(y + 0.5);
    return x >= -0.5 && x < (double)W - 0.5 && yr >= (double)y0 && yr < (double)(y0 + ny);
}

int tmd_sim_render_rows(tmd_ctx *ctx, sim_world *w, int64_t t, int64_t y0, int64_t ny, float *out, uint8_t *classes,
                    sim_truth *truth, int want_sites, sim_site_list *scratch)
{
    const tmd_sim_params *p = &w->p;
    int64_t W = p->width, H = p->height;
    render_ctx r, tc; /* full-resolution core; tail on a coarse grid of f pixels */
    memset(&r, 0, sizeof r);
    memset(&tc, 0, sizeof tc);
    int f = 1;
    r.w = w;
    r.t = t;
    r.y0 = y0;
    r.ny = ny;
    r.W = W;
    int st = TMD_OK;
    double *bgc = NULL;
    st = psf_init(ctx, &r.comp[0], w, w->sig_c, 1 - w->frac_t, 4.0, 1);
    if (st) goto cleanup;
    /* amorphous scatterers are blobs of projected thickness, not points: wider core */
    st = psf_init(ctx, &r.comp[1], w, sqrt(w->sig_c * w->sig_c + 0.25), 1 - w->frac_t, 4.0, 1);
    if (st) goto cleanup;
    r.ncomp = 2;
    r.Rmax = r.comp[1].R;
    int reach = r.Rmax;
    if (w->frac_t > 0) {
        /* the tail is smooth: splat it on a global grid of f pixels (>= 3 nodes per sigma)
         * and interpolate; nodes are at multiples of f, so every band sees the same nodes */
        f = (int)floor(w->sig_t / w->px / 3.0);
        if (f < 1) f = 1;
        st = psf_init(ctx, &tc.comp[0], w, w->sig_t, w->frac_t, 3.0, f);
        if (st) goto cleanup;
        tc.ncomp = 1;
        tc.Rmax = tc.comp[0].R;
        tc.w = w;
        tc.y0 = y0 / f;
        tc.ny = (y0 + ny - 1) / f + 2 - tc.y0;
        tc.W = (W - 1) / f + 2;
        st = tmd_calloc(ctx, (void **)&tc.acc, (size_t)(tc.ny * tc.W), sizeof(double), "simulated tail band");
        if (st) goto cleanup;
        if (tc.Rmax * f + 2 * f > reach) reach = tc.Rmax * f + 2 * f;
    }
    st = tmd_calloc(ctx, (void **)&r.acc, (size_t)(ny * W), sizeof(double), "simulated band");
    if (st) goto cleanup;
    st = tmd_calloc(ctx, (void **)&r.jit, (size_t)(ny + 2 * r.Rmax + 1), sizeof(double), "row jitter");
    if (st) goto cleanup;
    for (int64_t y = y0 - r.Rmax; y <= y0 + ny - 1 + r.Rmax; y++) r.jit[y - y0 + r.Rmax] = tmd_sim_row_jitter(w, t, y);
    w->jt = r.jit;
    w->jt_t = t;
    w->jt_y0 = y0 - r.Rmax;
    w->jt_n = ny + 2 * r.Rmax + 1;
    double jmargin = 5 * p->jitter + p->wobble + 2;
    double sx0, sx1, sy0, sy1;
    tmd_sim_pixel_box_to_specimen(w, t, 0, (double)(W - 1), (double)y0, (double)(y0 + ny - 1), reach + jmargin, &sx0, &sx1,
                              &sy0, &sy1);
    double jm = 0.6 * w->bond; /* dynamic jumps move columns by half a bond */
    st = tmd_sim_sites_in_box(ctx, w, sx0 - jm, sx1 + jm, sy0 - jm, sy1 + jm, scratch);
    if (st) goto cleanup;
    double crad = p->class_radius * w->bond / w->px;
    for (int64_t k = 0; k < scratch->n; k++) {
        const sim_site *s = &scratch->s[k];
        int8_t sp, dyn;
        double jx, jy;
        st = tmd_sim_site_state(ctx, w, s, t, &sp, &jx, &jy, &dyn);
        if (st) goto cleanup;
        double sx = s->sx + jx, sy = s->sy + jy;
        double ux = sx / w->px, uy = sy / w->px;
        double qx = w->Minv[0][0] * ux + w->Minv[0][1] * uy + w->cx + w->drift[2 * t];
        double qy = w->Minv[1][0] * ux + w->Minv[1][1] * uy + w->cy + w->drift[2 * t + 1];
        double wt = sp ? tmd_sim_species_weight(w, sp, s) : 0;
        if (sp) {
            splat(&r, &r.comp[0], qx, qy, wt);
            if (tc.acc) splat(&tc, &tc.comp[0], qx / f, qy / f, wt);
        }
        if (!classes && !truth) continue;
        double tx, ty;
        tmd_sim_specimen_to_pixel(w, t, sx, sy, &tx, &ty);
        if (classes && sp) paint_disk(classes, y0, ny, W, tx, ty, crad, (uint8_t)tmd_sim_species_class(sp));
        if (truth && owned(tx, ty, y0, ny, W)) {
            if (sp) {
                int64_t i;
                st = tmd_atom_table_push(ctx, &truth->atoms, &i);
                if (st) goto cleanup;
                truth->atoms.frame[i] = (int32_t)t;
                truth->atoms.x[i] = tx;
                truth->atoms.y[i] = ty;
                truth->atoms.sublattice[i] = s->sub == 0 ? TMD_SUB_A : TMD_SUB_B;
                truth->atoms.species[i] = sp;
                truth->atoms.intensity[i] = (float)wt;
                truth->atoms.site[i] = s->id;
            }
            if (sp == 0 || sp == TMD_SP_S || sp == TMD_SP_SE) {
                double dx = tx, dy = ty;
                if (sp == 0) tmd_sim_specimen_to_pixel(w, t, s->sx, s->sy, &dx, &dy);
                int8_t type = sp == 0 ? (s->sub == 0 ? TMD_DEF_VM : TMD_DEF_VX2) : TMD_DEF_VX;
                st = tmd_defect_table_push(ctx, &truth->defects, (int32_t)t, dx, dy, type);
                if (st) goto cleanup;
            }
        }
        if (truth && want_sites && t == 0) {
            double fx, fy;
            tmd_sim_specimen_to_pixel(w, 0, s->sx, s->sy, &fx, &fy);
            if (owned(fx, fy, y0, ny, W)) {
                int64_t i;
                st = tmd_site_table_push(ctx, &truth->sites, &i);
                if (st) goto cleanup;
                truth->sites.id[i] = s->id;
                truth->sites.x[i] = fx;
                truth->sites.y[i] = fy;
                truth->sites.sublattice[i] = s->sub == 0 ? TMD_SUB_A : TMD_SUB_B;
                truth->sites.dynamic[i] = dyn;
                int64_t T = w->frames;
                int8_t *ns = realloc(truth->site_state, (size_t)truth->sites.cap * (size_t)T);
                if (!ns) {
                    st = TMD_FAIL(ctx, TMD_ERR_NOMEM, "out of memory for site states");
                    goto cleanup;
                }
                truth->site_state = ns;
                int8_t *nj = realloc(truth->site_jump, (size_t)truth->sites.cap * (size_t)T);
                if (!nj) {
                    st = TMD_FAIL(ctx, TMD_ERR_NOMEM, "out of memory for site jumps");
                    goto cleanup;
                }
                truth->site_jump = nj;
                int changes = 0;
                int8_t prev = -1;
                for (int64_t tt = 0; tt < T; tt++) {
                    int8_t sp2;
                    double a, b;
                    st = tmd_sim_site_state(ctx, w, s, tt, &sp2, &a, &b, NULL);
                    if (st) goto cleanup;
                    ns[i * T + tt] = sp2;
                    nj[i * T + tt] = (int8_t)tmd_sim_site_jump(w, s, tt);
                    if (tt > 0 && (sp2 != prev)) changes++;
                    prev = sp2;
                }
                truth->sites.instability[i] = (float)changes + (dyn ? 0.5f : 0.0f);
                truth->sites.unstable[i] = dyn;
            }
        }
    }
    /* amorphous contamination: scatterers in 2 Angstrom cells, density from a patchy field */
    if (p->contamination > 0 && p->contamination_cover > 0) {
        const double L = 2.0;
        double thr = tmd_sim_norm_ppf(1 - p->contamination_cover);
        int64_t ci0 = (int64_t)floor(sx0 / L), ci1 = (int64_t)floor(sx1 / L);
        int64_t cj0 = (int64_t)floor(sy0 / L), cj1 = (int64_t)floor(sy1 / L);
        for (int64_t ci = ci0; ci <= ci1; ci++)
            for (int64_t cj = cj0; cj <= cj1; cj++) {
                double mx = ((double)ci + 0.5) * L, my = ((double)cj + 0.5) * L;
                double g = tmd_sim_field_cont(w, mx, my);
                double cov = fmin(1, fmax(0, (g - thr) / 0.6 + 0.5));
                if (cov <= 0) continue;
                cov *= tmd_sim_film_factor(w, mx, my) * 0.9 + 0.1; /* a little hangs over vacuum */
                uint64_t code = ((uint64_t)(ci + (1LL << 31)) << 32) ^ (uint64_t)(cj + (1LL << 31));
                int nsc = (int)tmd_sim_poisson(cov * w->cont_density * L * L, w->key, SP_CONT_ATOM, code);
                for (int a = 0; a < nsc; a++) {
                    double ax = ((double)ci + sim_unif(w->key, SP_CONT_ATOM, code, 100 + 3 * (uint64_t)a)) * L;
                    double ay = ((double)cj + sim_unif(w->key, SP_CONT_ATOM, code, 101 + 3 * (uint64_t)a)) * L;
                    double wt = -w->cont_weight * log(1 - sim_unif(w->key, SP_CONT_ATOM, code, 102 + 3 * (uint64_t)a));
                    double ux = ax / w->px, uy = ay / w->px;
                    double qx = w->Minv[0][0] * ux + w->Minv[0][1] * uy + w->cx + w->drift[2 * t];
                    double qy = w->Minv[1][0] * ux + w->Minv[1][1] * uy + w->cy + w->drift[2 * t + 1];
                    splat(&r, &r.comp[1], qx, qy, wt);
                    if (tc.acc) splat(&tc, &tc.comp[0], qx / f, qy / f, wt);
                }
            }
    }
    /* smooth background on a global coarse grid (every BG_STEP pixels), bilinear */
    {
        int64_t gy0 = (y0 / BG_STEP) * BG_STEP, gy1 = ((y0 + ny - 1) / BG_STEP + 1) * BG_STEP;
        int64_t nx = (W - 1) / BG_STEP + 2, nyg = (gy1 - gy0) / BG_STEP + 1;
        st = tmd_calloc(ctx, (void **)&bgc, (size_t)(nx * nyg), sizeof(double), "background grid");
        if (st) goto cleanup;
        double base = w->wsp[TMD_SP_MO] * w->peak_w;
        for (int64_t gj = 0; gj < nyg; gj++)
            for (int64_t gi = 0; gi < nx; gi++) {
                double qx = (double)(gi * BG_STEP) - w->cx - w->drift[2 * t];
                double qy = (double)(gy0 + gj * BG_STEP) - w->cy - w->drift[2 * t + 1];
                double sx = (w->M[0][0] * qx + w->M[0][1] * qy) * w->px, sy = (w->M[1][0] * qx + w->M[1][1] * qy) * w->px;
                double v = p->background + p->background_var * tmd_sim_field_bg(w, sx, sy);
                bgc[gj * nx + gi] = fmax(0, v) * base * tmd_sim_film_factor(w, sx, sy);
            }
        for (int64_t y = y0; y < y0 + ny; y++) {
            int64_t gj = (y - gy0) / BG_STEP;
            double fy = (double)((y - gy0) % BG_STEP) / BG_STEP;
            double *row = r.acc + (y - y0) * W;
            const double *b0 = bgc + gj * nx, *b1 = b0 + nx;
            for (int64_t gi = 0, x = 0; x < W; gi++) {
                double l0 = (1 - fy) * b0[gi] + fy * b1[gi], l1 = (1 - fy) * b0[gi + 1] + fy * b1[gi + 1];
                for (int k = 0; k < BG_STEP && x < W; k++, x++) {
                    double fx = (double)k / BG_STEP;
                    row[x] += (1 - fx) * l0 + fx * l1;
                }
            }
        }
    }
    /* tail: bilinear from the coarse grid */
    if (tc.acc) {
        for (int64_t y = y0; y < y0 + ny; y++) {
            int64_t gy = y / f - tc.y0;
            double fy = (double)(y % f) / f;
            const double *c0 = tc.acc + gy * tc.W, *c1 = c0 + tc.W;
            double *row = r.acc + (y - y0) * W;
            for (int64_t gx = 0, x = 0; x < W; gx++) {
                double l0 = (1 - fy) * c0[gx] + fy * c1[gx], l1 = (1 - fy) * c0[gx + 1] + fy * c1[gx + 1];
                for (int k = 0; k < f && x < W; k++, x++) {
                    double fx = (double)k / f;
                    row[x] += (1 - fx) * l0 + fx * l1;
                }
            }
        }
    }
    /* detector: Poisson counts, read noise, fast-scan smear, gain, offset */
    for (int64_t y = y0; y < y0 + ny; y++) {
        double *row = r.acc + (y - y0) * W;
        double prev = 0;
        for (int64_t x = 0; x < W; x++) {
            uint64_t idx = ((uint64_t)t * (uint64_t)H + (uint64_t)y) * (uint64_t)W + (uint64_t)x;
            double lam = row[x] * w->counts_scale;
            if (w->expected_only) {
                out[(y - y0) * W + x] = (float)lam;
                continue;
            }
            double n = tmd_sim_poisson(lam, w->key, SP_NOISE, idx);
            if (p->read_noise > 0) { /* Irwin-Hall: sum of four 16-bit uniforms, unit variance */
                uint64_t h = sim_hash(w->key, SP_READ, idx, 0);
                double sum = (double)(h & 0xffff) + (double)((h >> 16) & 0xffff) + (double)((h >> 32) & 0xffff) +
                             (double)(h >> 48);
                n += p->read_noise * (sum * (1.0 / 65536.0) - 2.0) * 1.7320508075688772;
            }
            double v = x == 0 ? n : (1 - p->scan_smear) * n + p->scan_smear * prev;
            prev = v;
            out[(y - y0) * W + x] = (float)(p->gain * v + p->offset);
        }
    }
cleanup:
    w->jt = NULL;
    free(r.comp[0].T);
    free(r.comp[1].T);
    free(tc.comp[0].T);
    free(tc.acc);
    free(r.acc);
    free(r.jit);
    free(bgc);
    return st;
}
