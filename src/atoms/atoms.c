/* Atom finding: peaks of the column probability, centroid + Gaussian refinement on the
 * image, ownership by centre (see tmd/atoms.h). */
#include "tmd/atoms.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void tmd_atoms_params_from_config(tmd_atoms_params *p, const tmd_config *cfg, double input_px)
{
    p->threshold = cfg->atom_threshold;
    p->sep = cfg->min_atom_separation / cfg->nominal_pixel_size;
    p->radius = 0.7 * cfg->min_atom_separation / input_px;
    if (p->radius < 1.5) p->radius = 1.5;
    p->refine = cfg->gaussian_refine;
    p->px_area = input_px * input_px;
    p->min_z = cfg->atom_significance;
    p->min_z_weak = cfg->atom_weak_significance;
    p->weak_contrast = cfg->atom_weak_contrast;
    p->weak_rounds = cfg->atom_weak_rounds;
    p->weak_threshold = cfg->atom_weak_threshold;
    /* metal-chalcogen bond a / sqrt(3): 1.82-1.90 A over a = 3.15-3.29 A */
    p->bond = 1.859 / input_px;
}

/* Lowest column probability of a candidate: weak_threshold when it is set below threshold. */
static double candidate_threshold(const tmd_atoms_params *p)
{
    return p->weak_threshold > 0 && p->weak_threshold < p->threshold ? p->weak_threshold : p->threshold;
}

#ifndef GROW_CONTRAST
#define GROW_CONTRAST 0.35
#endif

/* Median of m <= 8 values (sorted in place). */
static double median8(double *v, int m)
{
    for (int a = 1; a < m; a++)
        for (int b = a; b > 0 && v[b - 1] > v[b]; b--) {
            double t = v[b];
            v[b] = v[b - 1];
            v[b - 1] = t;
        }
    return m % 2 ? v[m / 2] : 0.5 * (v[m / 2 - 1] + v[m / 2]);
}

#ifndef MERGE_KEY
#define MERGE_KEY(c) ((c).pk)
#endif

/* Significance of a column at (cy, cx): linear least squares v = A g + B over the disc of
 * radius 1.5 rad (clipped to the frame), g a Gaussian of width rad/2 at the centre; returns
 * A / se(A) (and A in *amp), or NAN if the disc leaves the region held in img or is too small. */
static double column_z(const tmd_atoms_img *img, double cy, double cx, double rad, double *amp)
{
    *amp = NAN;
    double R = 1.5 * rad, sg = rad / 2, Sg = 0, Sgg = 0, Sv = 0, Sgv = 0, Svv = 0;
    int64_t ya = (int64_t)ceil(cy - R), yb = (int64_t)floor(cy + R), xa = (int64_t)ceil(cx - R), xb = (int64_t)floor(cx + R);
    if (ya < 0) ya = 0;
    if (xa < 0) xa = 0;
    if (yb > img->img_h - 1) yb = img->img_h - 1;
    if (xb > img->img_w - 1) xb = img->img_w - 1;
    if (ya < img->y0 || yb >= img->y0 + img->h || xa < img->x0 || xb >= img->x0 + img->w) return NAN;
    int n = 0;
    for (int64_t y = ya; y <= yb; y++)
        for (int64_t x = xa; x <= xb; x++) {
            double dy = (double)y - cy, dx = (double)x - cx, r2 = dy * dy + dx * dx;
            if (r2 > R * R) continue;
            double g = exp(-r2 / (2 * sg * sg)), v = img->pix[(y - img->y0) * img->w + (x - img->x0)];
            Sg += g, Sgg += g * g, Sv += v, Sgv += g * v, Svv += v * v;
            n++;
        }
    double det = n * Sgg - Sg * Sg;
    if (n < 6 || !(det > 0)) return INFINITY; /* too few pixels to test: keep */
    double A = (n * Sgv - Sg * Sv) / det, B = (Sv - A * Sg) / n;
    *amp = A;
    double rss = Svv + A * A * Sgg + n * B * B - 2 * A * Sgv - 2 * B * Sv + 2 * A * B * Sg;
    double se = sqrt((rss > 0 ? rss : 0) / (n - 2) * n / det);
    if (!(se > 0)) return A > 0 ? INFINITY : 0;
    return A / se;
}

double tmd_atoms_margin(const tmd_atoms_params *p, double s)
{
    /* peak search (sep + smoothing) on the nominal grid, then up to 2 recentrings of the
     * disc, the fit's one-pixel tolerance and the integration disc */
    double m = (p->sep + 2) * s + 3 * p->radius + 4;
    /* the significance rule looks at bond partners (1.3 bonds) and, for the weak-column
     * guard and growth, at the candidates of the site's own sublattice (up to 1.15 a = 2
     * bonds); a column accepted in round r vouches for its neighbours in round r + 1, so a
     * decision after R rounds depends on candidates up to 2 R bonds away */
    if (p->min_z > 0 || candidate_threshold(p) < p->threshold)
        m += (p->weak_rounds > 1 || candidate_threshold(p) < p->threshold
                  ? 2.0 * (p->weak_rounds > 1 ? p->weak_rounds : 1)
                  : 1.3) * p->bond + 2;
    else m += TMD_ATOMS_MERGE * p->bond + 2; /* the duplicate rule's partners */
    return m;
}

/* Gaussian fit of a disc of pixels: v ~ A exp(-r^2 / (2 sg^2)) + B. Returns 1 if it
 * converged; (cy, cx) updated. Pure function of the pixel list (global coordinates). */
static int gauss_fit(const double *py, const double *px, const double *pv, int n, double *cy, double *cx, double sg0,
                     double max_shift)
{
    if (n < 8) return 0;
    double vmin = pv[0], vmax = pv[0];
    for (int i = 1; i < n; i++) {
        if (pv[i] < vmin) vmin = pv[i];
        if (pv[i] > vmax) vmax = pv[i];
    }
    if (!(vmax > vmin)) return 0;
    double q[5] = {vmax - vmin, *cy, *cx, sg0, vmin}; /* A, y0, x0, sigma, B */
    double lambda = 1e-3;
    double cost = 0;
    for (int i = 0; i < n; i++) {
        double dy = py[i] - q[1], dx = px[i] - q[2];
        double r = q[0] * exp(-(dy * dy + dx * dx) / (2 * q[3] * q[3])) + q[4] - pv[i];
        cost += r * r;
    }
    int converged = 0;
    for (int it = 0; it < 30 && !converged; it++) {
        double JTJ[5][5] = {{0}}, JTr[5] = {0};
        for (int i = 0; i < n; i++) {
            double dy = py[i] - q[1], dx = px[i] - q[2], s2 = q[3] * q[3];
            double e = exp(-(dy * dy + dx * dx) / (2 * s2));
            double r = q[0] * e + q[4] - pv[i];
            double J[5] = {e, q[0] * e * dy / s2, q[0] * e * dx / s2, q[0] * e * (dy * dy + dx * dx) / (s2 * q[3]), 1};
            for (int a = 0; a < 5; a++) {
                JTr[a] += J[a] * r;
                for (int b = 0; b < 5; b++) JTJ[a][b] += J[a] * J[b];
            }
        }
        /* solve (JTJ + lambda diag) d = -JTr by Gaussian elimination */
        for (int tries = 0; tries < 8; tries++) {
            double M[5][6];
            for (int a = 0; a < 5; a++) {
                for (int b = 0; b < 5; b++) M[a][b] = JTJ[a][b] + (a == b ? lambda * (JTJ[a][a] + 1e-12) : 0);
                M[a][5] = -JTr[a];
            }
            int singular = 0;
            for (int c = 0; c < 5 && !singular; c++) {
                int piv = c;
                for (int r = c + 1; r < 5; r++)
                    if (fabs(M[r][c]) > fabs(M[piv][c])) piv = r;
                if (fabs(M[piv][c]) < 1e-300) {
                    singular = 1;
                    break;
                }
                if (piv != c)
                    for (int k = 0; k < 6; k++) {
                        double t = M[c][k];
                        M[c][k] = M[piv][k];
                        M[piv][k] = t;
                    }
                for (int r = c + 1; r < 5; r++) {
                    double f = M[r][c] / M[c][c];
                    for (int k = c; k < 6; k++) M[r][k] -= f * M[c][k];
                }
            }
            if (singular) return 0;
            double d[5];
            for (int c = 4; c >= 0; c--) {
                double v = M[c][5];
                for (int k = c + 1; k < 5; k++) v -= M[c][k] * d[k];
                d[c] = v / M[c][c];
            }
            double t[5];
            for (int a = 0; a < 5; a++) t[a] = q[a] + d[a];
            if (t[3] <= 0.2) {
                lambda *= 10;
                continue;
            }
            double c2 = 0;
            for (int i = 0; i < n; i++) {
                double dy = py[i] - t[1], dx = px[i] - t[2];
                double r = t[0] * exp(-(dy * dy + dx * dx) / (2 * t[3] * t[3])) + t[4] - pv[i];
                c2 += r * r;
            }
            if (c2 <= cost) {
                memcpy(q, t, sizeof q);
                double step = fabs(d[1]) + fabs(d[2]);
                cost = c2;
                lambda = lambda > 1e-9 ? lambda * 0.3 : lambda;
                if (step < 1e-4) converged = 1;
                break;
            }
            lambda *= 10;
            if (tries == 7) converged = 1; /* no further decrease: at a minimum */
        }
    }
    if (!converged || !(q[0] > 0) || !(q[3] > 0.3 * sg0) || !(q[3] < 4 * sg0)) return 0;
    if (fabs(q[1] - *cy) > max_shift || fabs(q[2] - *cx) > max_shift) return 0;
    *cy = q[1];
    *cx = q[2];
    return 1;
}

/* Pixels of the disc of radius rad around (cy, cx), clipped to the frame; returns the count
 * or -1 if part of the clipped disc lies outside the region held in img. Fills arrays when
 * given (capacity cap). */
static int disc(const tmd_atoms_img *img, double cy, double cx, double rad, double *py, double *px, double *pv, int cap)
{
    int64_t ya = (int64_t)ceil(cy - rad), yb = (int64_t)floor(cy + rad);
    int64_t xa = (int64_t)ceil(cx - rad), xb = (int64_t)floor(cx + rad);
    if (ya < 0) ya = 0;
    if (xa < 0) xa = 0;
    if (yb > img->img_h - 1) yb = img->img_h - 1;
    if (xb > img->img_w - 1) xb = img->img_w - 1;
    if (ya > yb || xa > xb) return 0;
    if (ya < img->y0 || yb >= img->y0 + img->h || xa < img->x0 || xb >= img->x0 + img->w) return -1;
    int n = 0;
    for (int64_t y = ya; y <= yb; y++)
        for (int64_t x = xa; x <= xb; x++) {
            double dy = (double)y - cy, dx = (double)x - cx;
            if (dy * dy + dx * dx > rad * rad) continue;
            if (n < cap) {
                py[n] = (double)y;
                px[n] = (double)x;
                pv[n] = img->pix[(y - img->y0) * img->w + (x - img->x0)];
            }
            n++;
        }
    return n;
}

tmd_status tmd_atoms_find(tmd_ctx *ctx, const tmd_atoms_params *p, const tmd_atoms_seg *seg, const tmd_atoms_img *img,
                          int32_t frame, const tmd_box *core, tmd_atom_table *out)
{
    if (frame < core->lo[0] || frame >= core->hi[0]) return TMD_OK;
    if (seg->nclass < 2 || out->nprob != seg->nclass)
        return TMD_FAIL(ctx, TMD_ERR_ARG, "atoms: %d classes, table holds %d probabilities", seg->nclass, out->nprob);
    tmd_status st = TMD_OK;
    const int64_t ph = seg->ph, pw = seg->pw, npx = ph * pw;
    const double s = seg->s;
    float *P = NULL; /* (ph, pw) smoothed column probability */
    typedef struct {
        double y, x, z; /* refined centre, significance (-inf: not measurable) */
        double amp;     /* fitted amplitude (NAN: not measured) */
        double pk;      /* column probability at the peak */
    } cand_t;
    cand_t *cand = NULL; /* (ncand) every peak out to the neighbour ring */
    uint8_t *shown = NULL, *next = NULL; /* (ncand) accepted by the significance rule */
    int64_t ncand = 0, candcap = 0;
    double *py = NULL, *pxs = NULL, *pv = NULL;
    int cap = (int)((2 * p->radius + 3) * (2 * p->radius + 3)) + 8;
    st = tmd_calloc(ctx, (void **)&P, (size_t)npx, sizeof *P, "column probability");
    if (!st) st = tmd_calloc(ctx, (void **)&py, (size_t)cap, sizeof *py, "atom disc");
    if (!st) st = tmd_calloc(ctx, (void **)&pxs, (size_t)cap, sizeof *pxs, "atom disc");
    if (!st) st = tmd_calloc(ctx, (void **)&pv, (size_t)cap, sizeof *pv, "atom disc");
    if (st) goto cleanup;
    /* 3x3 binomial smoothing of 1 - p(background); the window's outer ring is left 0 */
    const float *bg = seg->prob;
    for (int64_t Y = 1; Y + 1 < ph; Y++)
        for (int64_t X = 1; X + 1 < pw; X++) {
            double a = 0;
            static const double k[3] = {0.25, 0.5, 0.25};
            for (int dy = -1; dy <= 1; dy++)
                for (int dx = -1; dx <= 1; dx++) a += k[dy + 1] * k[dx + 1] * (1.0 - bg[(Y + dy) * pw + X + dx]);
            P[Y * pw + X] = (float)a;
        }
    const int r = (int)ceil(p->sep);
    /* how far a final centre can be from its peak, plus the neighbour ring of the
     * significance rule: candidates are measured out to there, kept only inside the core */
    const int rounds = p->weak_rounds > 1 ? p->weak_rounds : 1;
    const double cand_thr = candidate_threshold(p);
    const double reach =
        p->radius * 3 + 3 +
        (p->min_z > 0 || cand_thr < p->threshold ? (rounds > 1 || cand_thr < p->threshold ? 2.0 * rounds : 1.3) * p->bond + 1
                                                  : TMD_ATOMS_MERGE * p->bond + 1);
    for (int64_t Y = r + 1; Y + r + 1 < ph; Y++) {
        double cyn = (double)(seg->Y0 + Y) * s;
        if (cyn < (double)core->lo[1] - 0.5 - reach || cyn > (double)core->hi[1] - 0.5 + reach) continue;
        for (int64_t X = r + 1; X + r + 1 < pw; X++) {
            float v = P[Y * pw + X];
            if (v < cand_thr) continue;
            double cxn = (double)(seg->X0 + X) * s;
            if (cxn < (double)core->lo[2] - 0.5 - reach || cxn > (double)core->hi[2] - 0.5 + reach) continue;
            /* strict maximum within sep (ties: lower index wins) */
            int is_peak = 1;
            for (int dy = -r; dy <= r && is_peak; dy++)
                for (int dx = -r; dx <= r; dx++) {
                    if (!dy && !dx) continue;
                    if (dy * dy + dx * dx > p->sep * p->sep) continue;
                    float u = P[(Y + dy) * pw + X + dx];
                    if (u > v || (u == v && (dy < 0 || (dy == 0 && dx < 0)))) {
                        is_peak = 0;
                        break;
                    }
                }
            if (!is_peak) continue;
            /* centroid on the image, recentred twice */
            double cy = cyn, cx = cxn;
            int ok = 1;
            for (int it = 0; it < 3 && ok; it++) {
                int n = disc(img, cy, cx, p->radius, py, pxs, pv, cap);
                if (n <= 0 || n > cap) {
                    ok = 0;
                    break;
                }
                double vmin = pv[0];
                for (int i = 1; i < n; i++)
                    if (pv[i] < vmin) vmin = pv[i];
                double sw = 0, sy = 0, sx = 0;
                for (int i = 0; i < n; i++) {
                    double wgt = pv[i] - vmin;
                    sw += wgt;
                    sy += wgt * py[i];
                    sx += wgt * pxs[i];
                }
                if (!(sw > 0)) break; /* flat: keep the peak position */
                cy = sy / sw;
                cx = sx / sw;
            }
            if (!ok) continue;
            if (p->refine) {
                int n = disc(img, cy, cx, p->radius, py, pxs, pv, cap);
                /* A disc cut by the image edge: the centroid of the part inside is pulled
                 * inwards, and a column whose centre lies outside the image (seen through the
                 * reflection that pads the U-Net window) would look like one just inside. Let
                 * the fit move as far as the disc radius there: a column it places outside the
                 * image belongs to no tile. */
                int clipped = cy - p->radius < -0.5 || cx - p->radius < -0.5 ||
                              cy + p->radius > (double)img->img_h - 0.5 || cx + p->radius > (double)img->img_w - 0.5;
                if (n > 0 && n <= cap) gauss_fit(py, pxs, pv, n, &cy, &cx, p->radius / 2, clipped ? p->radius : 1.0);
            }
            if (ncand == candcap) {
                int64_t nc = candcap ? 2 * candcap : 256;
                cand_t *c2 = realloc(cand, sizeof *cand * (size_t)nc);
                if (!c2) {
                    st = TMD_FAIL(ctx, TMD_ERR_NOMEM, "atoms: out of memory for %lld candidates", (long long)nc);
                    goto cleanup;
                }
                cand = c2;
                candcap = nc;
            }
            double amp = NAN, z = p->min_z > 0 ? column_z(img, cy, cx, p->radius, &amp) : INFINITY;
            cand[ncand++] = (cand_t){cy, cx, isnan(z) ? -INFINITY : z, amp, (double)v};
        }
    }
    /* which candidates the image shows: significant ones, and, round after round, those
     * vouched for by columns already shown — two bond partners (a dim single chalcogen beside
     * its metals), or in later rounds one bond partner and two columns of its own sublattice
     * (in a dim patch — contamination, low dose — the lattice is accepted from its significant
     * rim inwards; a peak alone in vacuum has no such neighbours). Rounds update
     * synchronously, so a decision depends only on candidates within 2 x rounds bonds, all
     * measured (reach). */
    st = tmd_calloc(ctx, (void **)&shown, (size_t)(ncand > 0 ? ncand : 1), 1, "atom acceptance");
    if (!st) st = tmd_calloc(ctx, (void **)&next, (size_t)(ncand > 0 ? ncand : 1), 1, "atom acceptance");
    if (st) goto cleanup;
    for (int64_t k = 0; k < ncand; k++)
        shown[k] = cand[k].pk >= p->threshold && (!(p->min_z > 0) || cand[k].z >= p->min_z);
    for (int round = 0; (p->min_z > 0 || candidate_threshold(p) < p->threshold) && round < rounds; round++) {
        int64_t added = 0;
        for (int64_t k = 0; k < ncand; k++) {
            next[k] = shown[k];
            if (shown[k] || cand[k].z == -INFINITY) continue;
            int nb = 0, nb2 = 0, nall2 = 0;
            double lo2 = 0.7 * p->bond * 0.7 * p->bond, hi2 = 1.3 * p->bond * 1.3 * p->bond, nbamp[8], nb2amp[8];
            double lo2b = 3 * 0.85 * p->bond * 0.85 * p->bond, hi2b = 3 * 1.15 * p->bond * 1.15 * p->bond;
            for (int64_t j = 0; j < ncand; j++) {
                if (j == k) continue;
                double dy = cand[j].y - cand[k].y, dx = cand[j].x - cand[k].x, d2 = dy * dy + dx * dx;
                int second = d2 >= lo2b && d2 <= hi2b;
                /* the like-with-like reference: every candidate of its sublattice around it,
                 * shown or not (in a dim patch they are dim too) */
                if (second && !isnan(cand[j].amp) && nall2 < 8) nb2amp[nall2++] = cand[j].amp;
                if (!shown[j]) continue;
                nb2 += second;
                if (d2 < lo2 || d2 > hi2) continue;
                if (nb < 8) nbamp[nb] = cand[j].amp;
                nb++;
            }
            /* round 1: two bond partners. Later rounds grow into a patch: a honeycomb site at
             * the edge of a hole has one partner outside it (three in all), so two bond
             * partners never fill even one empty hexagon; one bond partner and two accepted
             * columns of its own sublattice (at a = sqrt(3) bonds, six in all) do. */
            if (!(nb >= 2 || (round > 0 && nb >= 1 && nb2 >= 2))) continue;
            /* an empty site between columns is a dip: the probe tails of its neighbours raise
             * the ring around it. Dropped when it is both a significant dip (z below
             * min_z_weak) and deep against its neighbours (amplitude below weak_contrast times
             * their median): a dim single chalcogen beside bright metals (S beside W) can be
             * a significant dip too, but a shallow one. */
            if (cand[k].z < p->min_z_weak && !(cand[k].amp >= p->weak_contrast * median8(nbamp, nb < 8 ? nb : 8)))
                continue;
            /* a column the U-Net is unsure of, or one accepted after round 1 (its partners
             * were themselves vouched for), must look like the columns of its own sublattice
             * around it: an empty site inside bright lattice (a vacancy at low dose, where the
             * dip test is noise-limited) does not, while a column of a dim patch is as dim as
             * its neighbours */
            if (cand[k].pk < p->threshold || round > 0) {
                if (nall2 < 2) continue;
                double med2 = median8(nb2amp, nall2);
                if (!(cand[k].amp >= GROW_CONTRAST * med2)) continue;
            }
            next[k] = 1;
            added++;
        }
        memcpy(shown, next, (size_t)ncand);
        if (!added) break;
    }
    /* keep the shown candidates whose centre lies in the core */
    for (int64_t k = 0; k < ncand; k++) {
        double cy = cand[k].y, cx = cand[k].x;
        int64_t iy = tmd_decomp_pixel_of(cy), ix = tmd_decomp_pixel_of(cx);
        if (iy < core->lo[1] || iy >= core->hi[1] || ix < core->lo[2] || ix >= core->hi[2]) continue;
        if (cand[k].z == -INFINITY) { /* its disc was not inside the region read */
            st = TMD_FAIL(ctx, TMD_ERR_INTERNAL,
                          "atoms: column at (%.2f, %.2f) reads beyond the tile's halo; the halo is too small", cx, cy);
            goto cleanup;
        }
        if (!shown[k]) continue;
        /* one column seen as two peaks: of candidates closer than TMD_ATOMS_MERGE bonds, only
         * the most significant is kept (ties: the upper centre, then the left one) */
        int dup = 0;
        double m2 = TMD_ATOMS_MERGE * p->bond * TMD_ATOMS_MERGE * p->bond;
        for (int64_t j = 0; j < ncand && !dup; j++) {
            if (j == k || !shown[j]) continue;
            double dy = cand[j].y - cy, dx = cand[j].x - cx;
            if (dy * dy + dx * dx >= m2) continue;
            double zj = MERGE_KEY(cand[j]), zk = MERGE_KEY(cand[k]);
            /* an exact tie (the same peak reached twice, e.g. through the reflection at the
             * image edge) keeps the first: both would give the same atom */
            dup = zj > zk || (zj == zk && (cand[j].y < cy || (cand[j].y == cy && (cand[j].x < cx || (cand[j].x == cx && j < k)))));
        }
        if (dup) continue;
        int n = disc(img, cy, cx, p->radius, py, pxs, pv, cap);
        if (n < 0 || n > cap) {
            st = TMD_FAIL(ctx, TMD_ERR_INTERNAL,
                          "atoms: column at (%.2f, %.2f) reads beyond the tile's halo; the halo is too small", cx, cy);
            goto cleanup;
        }
        double sum = 0;
        for (int i = 0; i < n; i++) sum += pv[i];
        /* class probabilities: mean over the disc on the nominal grid */
        double acc[16] = {0};
        int cnt = 0;
        double rn = p->radius / s;
        int64_t Ya = (int64_t)ceil(cy / s - rn), Yb = (int64_t)floor(cy / s + rn);
        int64_t Xa = (int64_t)ceil(cx / s - rn), Xb = (int64_t)floor(cx / s + rn);
        for (int64_t YY = Ya; YY <= Yb; YY++)
            for (int64_t XX = Xa; XX <= Xb; XX++) {
                double dy = (double)YY - cy / s, dx = (double)XX - cx / s;
                if (dy * dy + dx * dx > rn * rn) continue;
                int64_t ly = YY - seg->Y0, lx = XX - seg->X0;
                if (ly < 0 || ly >= ph || lx < 0 || lx >= pw) continue;
                for (int c = 0; c < seg->nclass && c < 16; c++) acc[c] += seg->prob[c * npx + ly * pw + lx];
                cnt++;
            }
        int64_t i;
        if ((st = tmd_atom_table_push(ctx, out, &i))) goto cleanup;
        out->frame[i] = frame;
        out->x[i] = cx;
        out->y[i] = cy;
        out->intensity[i] = (float)(sum * p->px_area);
        int best = 1;
        for (int c = 0; c < seg->nclass; c++) {
            out->prob[i * out->nprob + c] = cnt ? (float)(acc[c] / cnt) : 0;
            if (c >= 1 && c < 16 && acc[c] > acc[best]) best = c;
        }
        /* classes 1..5 are species codes 1..5; 1, 2 metal (A), 3..5 chalcogen (B) */
        out->species[i] = (int8_t)(best <= 5 ? best : 0);
        out->sublattice[i] = (int8_t)(best <= 2 ? TMD_SUB_A : (best <= 5 ? TMD_SUB_B : TMD_SUB_UNKNOWN));
    }
cleanup:
    free(cand);
    free(shown);
    free(next);
    free(P);
    free(py);
    free(pxs);
    free(pv);
    return st;
}
