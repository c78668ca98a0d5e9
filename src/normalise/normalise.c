/* Background removal on a tile-aligned coarse grid, global robust levels by histogram
 * Allreduce, and resampling to the nominal scale (see tmd/normalise.h). */
#include "tmd/normalise.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tmd/halo.h"

/* Cells along one axis. Tile i is cut into k cells with edges i*te + floor(j*te/k),
 * clipped to the axis; zero-width cells (past the end) are dropped, so the cells of tile i
 * are [i*k, min((i+1)*k, ncell)). */
typedef struct {
    int64_t n;        /* pixels */
    int64_t te, k;    /* tile edge, cells per tile */
    int64_t ncell;
    int64_t *edge;    /* (ncell + 1) */
    int32_t *cell_of; /* (n) pixel -> cell */
    int32_t *c0;      /* (n) interpolation: lower cell (c0 + 1 is the upper one when w != 0) */
    float *w;         /* (n) weight of the upper cell (< 0 or > 1: extrapolated at the edges) */
} axis_cells;

struct tmd_normalise {
    const tmd_decomp *d; /* borrowed: outlives this object */
    int background;      /* 1: B from the coarse grid; 0: B = 0 */
    double sigma_c[3];   /* Gaussian sigma in cells, per axis (axis 0: none) */
    int64_t R[3];        /* blur radius, cells */
    axis_cells ax[3];    /* ax[0]: frames (one cell per frame) */
    tmd_box own_c;       /* this rank's cells */
    tmd_box loc_c;       /* accumulator box: own grown by blur radius + margin */
    tmd_box bg_c;        /* background box: own grown by margin */
    double *acc;         /* (loc volume, 2): pixel sum, pixel count */
    double *bg;          /* (bg volume) blurred background per cell */
    tmd_halo *halo;
    int64_t step;        /* sample step s */
    float *samples;      /* (nsamples) raw values at sample pixels, local tile order */
    int64_t nsamples, cap;
    int64_t next_tile;   /* accumulate order check */
    double clip_low, clip_high; /* percentiles */
    double lo, hi;
    int finished;
};

static void axis_free(axis_cells *a)
{
    free(a->edge);
    free(a->cell_of);
    free(a->c0);
    free(a->w);
    memset(a, 0, sizeof *a);
}

static tmd_status axis_build(tmd_ctx *ctx, axis_cells *a, int64_t n, int64_t te, int64_t k)
{
    memset(a, 0, sizeof *a);
    a->n = n;
    a->te = te;
    a->k = k;
    int64_t nt = (n + te - 1) / te;
    TMD_CHECK(tmd_calloc(ctx, (void **)&a->edge, (size_t)(nt * k + 1), sizeof *a->edge, "background cells"));
    int64_t nc = 0;
    a->edge[0] = 0;
    for (int64_t i = 0; i < nt; i++)
        for (int64_t j = 1; j <= k; j++) {
            int64_t e = i * te + (j * te) / k;
            if (e > n) e = n;
            if (e > a->edge[nc]) a->edge[++nc] = e;
        }
    a->ncell = nc;
    TMD_CHECK(tmd_calloc(ctx, (void **)&a->cell_of, (size_t)n, sizeof *a->cell_of, "background cells"));
    TMD_CHECK(tmd_calloc(ctx, (void **)&a->c0, (size_t)n, sizeof *a->c0, "background cells"));
    TMD_CHECK(tmd_calloc(ctx, (void **)&a->w, (size_t)n, sizeof *a->w, "background cells"));
    for (int64_t c = 0; c < nc; c++)
        for (int64_t p = a->edge[c]; p < a->edge[c + 1]; p++) a->cell_of[p] = (int32_t)c;
    for (int64_t p = 0; p < n; p++) {
        int64_t c = a->cell_of[p];
        double cc = 0.5 * (double)(a->edge[c] + a->edge[c + 1] - 1);
        if ((double)p < cc && c > 0) c--;
        if (nc < 2) {
            a->c0[p] = (int32_t)c;
            a->w[p] = 0;
            continue;
        }
        /* before the first cell centre and beyond the last, the line through the two
         * outermost centres is extrapolated (w < 0 or > 1), so a background ramp is followed
         * up to the image edge */
        if (c + 1 >= nc) c = nc - 2;
        double lo = 0.5 * (double)(a->edge[c] + a->edge[c + 1] - 1);
        double hi = 0.5 * (double)(a->edge[c + 1] + a->edge[c + 2] - 1);
        a->c0[p] = (int32_t)c;
        a->w[p] = (float)(((double)p - lo) / (hi - lo));
    }
    return TMD_OK;
}

static int64_t box_index(const tmd_box *b, int64_t t, int64_t y, int64_t x)
{
    return ((t - b->lo[0]) * (b->hi[1] - b->lo[1]) + (y - b->lo[1])) * (b->hi[2] - b->lo[2]) + (x - b->lo[2]);
}

tmd_status tmd_normalise_create(tmd_ctx *ctx, const tmd_decomp *d, const tmd_config *cfg, double input_px,
                                tmd_normalise **out)
{
    *out = NULL;
    tmd_status st = TMD_OK;
    tmd_normalise *n = NULL;
    MPI_Datatype pair = MPI_DATATYPE_NULL;
    double sigma_px = cfg->background_sigma / input_px;
    if (!(input_px > 0)) st = TMD_FAIL(ctx, TMD_ERR_ARG, "normalise: pixel size %g (expected > 0)", input_px);
    if (!st && !(cfg->clip_high > cfg->clip_low))
        st = TMD_FAIL(ctx, TMD_ERR_CONFIG, "normalise: clip_high (%g) must be above clip_low (%g)", cfg->clip_high,
                      cfg->clip_low);
    if (!st) st = tmd_calloc(ctx, (void **)&n, 1, sizeof *n, "normalisation");
    if (st) goto agree;
    n->d = d;
    n->clip_low = cfg->clip_low;
    n->clip_high = cfg->clip_high;
    n->background = cfg->background_sigma > 0;
    /* cells about sigma/2 wide (at least 2 pixels), a whole number per tile */
    double b_target = sigma_px / 2 < 2 ? 2 : sigma_px / 2;
    for (int a = 0; a < 3 && !st; a++) {
        int64_t k = 1;
        if (a > 0) {
            k = (int64_t)floor((double)d->tile[a] / b_target + 0.5);
            if (k < 1) k = 1;
            if (k > d->tile[a]) k = d->tile[a];
        } else {
            k = d->tile[0];
        }
        st = axis_build(ctx, &n->ax[a], d->dims[a], d->tile[a], k);
        if (a > 0 && !st) {
            double b = (double)d->tile[a] / (double)k;
            n->sigma_c[a] = sigma_px / b;
            n->R[a] = n->background ? (int64_t)ceil(3 * n->sigma_c[a]) : 0;
        }
    }
    if (st) goto agree;
    /* this rank's cells, and the boxes for the blur */
    int64_t tlo[3], thi[3];
    tmd_decomp_rank_tiles(d, d->rank, tlo, thi);
    int64_t width[3] = {0, 0, 0}, margin[3] = {0, 0, 0};
    for (int a = 0; a < 3; a++) {
        const axis_cells *c = &n->ax[a];
        n->own_c.lo[a] = tlo[a] * c->k < c->ncell ? tlo[a] * c->k : c->ncell;
        n->own_c.hi[a] = thi[a] * c->k < c->ncell ? thi[a] * c->k : c->ncell;
        if (a > 0) {
            int64_t min_cell = c->te / c->k;
            margin[a] = (d->halo[a] + min_cell - 1) / min_cell + 1;
            width[a] = n->R[a] + margin[a];
        }
    }
    int64_t gdims[3] = {n->ax[0].ncell, n->ax[1].ncell, n->ax[2].ncell};
    for (int a = 0; a < 3; a++) {
        int64_t lo = n->own_c.lo[a] - width[a], hi = n->own_c.hi[a] + width[a];
        n->loc_c.lo[a] = lo < 0 ? 0 : lo;
        n->loc_c.hi[a] = hi > gdims[a] ? gdims[a] : hi;
        lo = n->own_c.lo[a] - margin[a];
        hi = n->own_c.hi[a] + margin[a];
        n->bg_c.lo[a] = lo < 0 ? 0 : lo;
        n->bg_c.hi[a] = hi > gdims[a] ? gdims[a] : hi;
    }
    if (!tmd_box_volume(&n->own_c)) {
        memset(&n->loc_c, 0, sizeof n->loc_c);
        memset(&n->bg_c, 0, sizeof n->bg_c);
    }
    if (n->background) {
        st = tmd_calloc(ctx, (void **)&n->acc, (size_t)tmd_box_volume(&n->loc_c) * 2 + 2, sizeof *n->acc,
                        "background accumulator");
        if (!st)
            st = tmd_calloc(ctx, (void **)&n->bg, (size_t)tmd_box_volume(&n->bg_c) + 1, sizeof *n->bg,
                            "background grid");
    }
    /* sample step: s = ceil(sqrt(T*H*W / budget)) */
    double npix = (double)d->dims[0] * (double)d->dims[1] * (double)d->dims[2];
    n->step = npix <= TMD_NORM_SAMPLE_BUDGET ? 1 : (int64_t)ceil(sqrt(npix / TMD_NORM_SAMPLE_BUDGET));
agree:
    st = tmd_agree(ctx, d->cart, st);
    if (st) goto cleanup;
    if (n->background) {
        st = TMD_MPI(ctx, MPI_Type_contiguous(2, MPI_DOUBLE, &pair));
        if (!st) st = TMD_MPI(ctx, MPI_Type_commit(&pair));
        st = tmd_agree(ctx, d->cart, st);
        if (st) goto cleanup;
        st = tmd_halo_create(ctx, d->cart, gdims, &n->own_c, width, pair, &n->halo);
        if (st) goto cleanup;
    }
    tmd_debug(ctx, "normalise: background %s (sigma %.1f px, %lld x %lld cells), sample step %lld",
              n->background ? "on" : "off", sigma_px, (long long)n->ax[1].ncell, (long long)n->ax[2].ncell,
              (long long)n->step);
    *out = n;
    n = NULL;
cleanup:
    if (pair != MPI_DATATYPE_NULL) MPI_Type_free(&pair);
    if (n) {
        /* every rank reaches here together (after an agree), so the collective destroy is safe */
        tmd_normalise_destroy(&n);
    }
    return st;
}

void tmd_normalise_destroy(tmd_normalise **np)
{
    if (!np || !*np) return;
    tmd_normalise *n = *np;
    tmd_halo_destroy(&n->halo);
    for (int a = 0; a < 3; a++) axis_free(&n->ax[a]);
    free(n->acc);
    free(n->bg);
    free(n->samples);
    free(n);
    *np = NULL;
}

/* Core accumulate with strides (elements) between rows and frames of pix. */
static tmd_status accumulate_strided(tmd_ctx *ctx, tmd_normalise *n, const tmd_box *core, const float *pix,
                                     int64_t rs, int64_t fs)
{
    const tmd_decomp *d = n->d;
    if (n->finished) return TMD_FAIL(ctx, TMD_ERR_INTERNAL, "normalise: accumulate after finish");
    if (n->next_tile >= d->nlocal)
        return TMD_FAIL(ctx, TMD_ERR_INTERNAL, "normalise: more tiles accumulated than this rank owns (%lld)",
                        (long long)d->nlocal);
    tmd_box expect;
    tmd_decomp_tile_box(d, tmd_decomp_local_tile(d, n->next_tile), &expect, NULL);
    if (memcmp(&expect, core, sizeof expect))
        return TMD_FAIL(ctx, TMD_ERR_INTERNAL, "normalise: tiles must be accumulated in local tile order (tile %lld)",
                        (long long)n->next_tile);
    n->next_tile++;
    const int64_t s = n->step;
    const int64_t h = core->hi[1] - core->lo[1], w = core->hi[2] - core->lo[2];
    /* samples: rows and columns that are multiples of s */
    int64_t ny = 0, nx = 0;
    for (int64_t y = core->lo[1]; y < core->hi[1]; y++) ny += y % s == 0;
    for (int64_t x = core->lo[2]; x < core->hi[2]; x++) nx += x % s == 0;
    int64_t need = n->nsamples + ny * nx * (core->hi[0] - core->lo[0]);
    if (need > n->cap) {
        int64_t cap = n->cap ? n->cap : 4096;
        while (cap < need) cap *= 2;
        float *p = realloc(n->samples, (size_t)cap * sizeof *p);
        if (!p) return TMD_FAIL(ctx, TMD_ERR_NOMEM, "normalise: out of memory for %lld samples", (long long)cap);
        n->samples = p;
        n->cap = cap;
    }
    const axis_cells *ay = &n->ax[1], *ax = &n->ax[2];
    for (int64_t t = core->lo[0]; t < core->hi[0]; t++) {
        const float *f = pix + (t - core->lo[0]) * fs;
        for (int64_t y = core->lo[1]; y < core->hi[1]; y++) {
            const float *row = f + (y - core->lo[1]) * rs;
            if (y % s == 0)
                for (int64_t x = core->lo[2] + (s - core->lo[2] % s) % s; x < core->hi[2]; x += s)
                    n->samples[n->nsamples++] = row[x - core->lo[2]];
            if (!n->background) continue;
            double *acc_row = n->acc + 2 * box_index(&n->loc_c, t, ay->cell_of[y], n->loc_c.lo[2]);
            /* runs of pixels in one cell, summed left to right */
            int64_t x = core->lo[2];
            while (x < core->hi[2]) {
                int64_t c = ax->cell_of[x], end = ax->edge[c + 1] < core->hi[2] ? ax->edge[c + 1] : core->hi[2];
                double sum = 0;
                for (int64_t xx = x; xx < end; xx++) sum += row[xx - core->lo[2]];
                double *cell = acc_row + 2 * (c - n->loc_c.lo[2]);
                cell[0] += sum;
                cell[1] += (double)(end - x);
                x = end;
            }
        }
    }
    (void)h;
    (void)w;
    return TMD_OK;
}

tmd_status tmd_normalise_accumulate(tmd_ctx *ctx, tmd_normalise *n, const tmd_box *core, const float *pix)
{
    int64_t w = core->hi[2] - core->lo[2], h = core->hi[1] - core->lo[1];
    return accumulate_strided(ctx, n, core, pix, w, w * h);
}

/* Intercept at u = 0 of the weighted least-squares line through values with weights
 * (sums S = sum w, Sv = sum w v, Su = sum w u, Suu = sum w u^2, Suv = sum w u v); the
 * weighted mean where the line is not determined (one cell, or a degenerate spread). */
static double local_line(double S, double Sv, double Su, double Suu, double Suv)
{
    if (!(S > 0)) return 0;
    double det = S * Suu - Su * Su;
    if (!(det > 1e-6 * S * Suu)) return Sv / S;
    return (Sv * Suu - Su * Suv) / det;
}

/* Blurs the accumulated sums and counts into n->bg: per axis, a Gaussian-weighted
 * least-squares line through the cell means (weights: Gaussian x pixel count), evaluated at
 * the cell centre. In the interior the weights are symmetric and this is the normalised
 * Gaussian average; at the image edges, where the window is one-sided, the line removes the
 * bias a plain average has on a slope (a linear background ramp is removed exactly up to the
 * edge). Positions are cell centres in pixels / the blur's sigma. */
static tmd_status blur(tmd_ctx *ctx, tmd_normalise *n)
{
    const tmd_box *L = &n->loc_c, *B = &n->bg_c;
    if (!tmd_box_volume(B)) return TMD_OK;
    int64_t R1 = n->R[1], R2 = n->R[2];
    const axis_cells *ay = &n->ax[1], *ax = &n->ax[2];
    double *wy = NULL, *wx = NULL, *tmp = NULL;
    tmd_status st = tmd_calloc(ctx, (void **)&wy, (size_t)R1 + 1, sizeof *wy, "blur weights");
    if (!st) st = tmd_calloc(ctx, (void **)&wx, (size_t)R2 + 1, sizeof *wx, "blur weights");
    /* tmp: rows of L (all), columns of B; 2 channels (value, weight) */
    int64_t ly = L->hi[1] - L->lo[1], bx = B->hi[2] - B->lo[2];
    if (!st) st = tmd_calloc(ctx, (void **)&tmp, (size_t)(ly * bx * 2), sizeof *tmp, "blur buffer");
    if (st) goto cleanup;
    for (int64_t i = 0; i <= R1; i++) wy[i] = exp(-(double)(i * i) / (2 * n->sigma_c[1] * n->sigma_c[1]));
    for (int64_t i = 0; i <= R2; i++) wx[i] = exp(-(double)(i * i) / (2 * n->sigma_c[2] * n->sigma_c[2]));
    /* cell centres in units of the cell width x sigma (well scaled for the sums) */
    double uy = (double)ay->te / (double)ay->k * (n->sigma_c[1] > 0 ? n->sigma_c[1] : 1);
    double ux = (double)ax->te / (double)ax->k * (n->sigma_c[2] > 0 ? n->sigma_c[2] : 1);
#define CENTRE(a, c) (0.5 * (double)((a)->edge[c] + (a)->edge[(c) + 1] - 1))
    for (int64_t t = B->lo[0]; t < B->hi[0]; t++) {
        /* along x: every row of L, the columns of B */
        for (int64_t y = L->lo[1]; y < L->hi[1]; y++) {
            const double *src = n->acc + 2 * box_index(L, t, y, L->lo[2]);
            for (int64_t x = B->lo[2]; x < B->hi[2]; x++) {
                double S = 0, Sv = 0, Su = 0, Suu = 0, Suv = 0, cx = CENTRE(ax, x);
                int64_t a = x - R2 < L->lo[2] ? L->lo[2] : x - R2, b = x + R2 >= L->hi[2] ? L->hi[2] - 1 : x + R2;
                for (int64_t j = a; j <= b; j++) {
                    double wgt = wx[j > x ? j - x : x - j], u = (CENTRE(ax, j) - cx) / ux;
                    double sum = src[2 * (j - L->lo[2])], cnt = src[2 * (j - L->lo[2]) + 1];
                    S += wgt * cnt;
                    Sv += wgt * sum;
                    Su += wgt * u * cnt;
                    Suu += wgt * u * u * cnt;
                    Suv += wgt * u * sum;
                }
                double *o = tmp + 2 * ((y - L->lo[1]) * bx + (x - B->lo[2]));
                o[0] = local_line(S, Sv, Su, Suu, Suv);
                o[1] = S;
            }
        }
        /* along y: the rows of B */
        for (int64_t y = B->lo[1]; y < B->hi[1]; y++) {
            int64_t a = y - R1 < L->lo[1] ? L->lo[1] : y - R1, b = y + R1 >= L->hi[1] ? L->hi[1] - 1 : y + R1;
            double cy = CENTRE(ay, y);
            for (int64_t x = B->lo[2]; x < B->hi[2]; x++) {
                double S = 0, Sv = 0, Su = 0, Suu = 0, Suv = 0;
                for (int64_t j = a; j <= b; j++) {
                    const double *v = tmp + 2 * ((j - L->lo[1]) * bx + (x - B->lo[2]));
                    double wgt = wy[j > y ? j - y : y - j] * v[1], u = (CENTRE(ay, j) - cy) / uy;
                    S += wgt;
                    Sv += wgt * v[0];
                    Su += wgt * u;
                    Suu += wgt * u * u;
                    Suv += wgt * u * v[0];
                }
                n->bg[box_index(B, t, y, x)] = local_line(S, Sv, Su, Suu, Suv);
            }
        }
    }
#undef CENTRE
cleanup:
    free(wy);
    free(wx);
    free(tmp);
    return st;
}

double tmd_normalise_background(const tmd_normalise *n, int64_t t, int64_t y, int64_t x)
{
    if (!n->background) return 0;
    const axis_cells *ay = &n->ax[1], *ax = &n->ax[2];
    if (y < 0 || y >= ay->n || x < 0 || x >= ax->n) return NAN;
    int64_t cy = ay->c0[y], cx = ax->c0[x];
    double fy = ay->w[y], fx = ax->w[x];
    int64_t cy1 = fy != 0 ? cy + 1 : cy, cx1 = fx != 0 ? cx + 1 : cx;
    const tmd_box *B = &n->bg_c;
    if (t < B->lo[0] || t >= B->hi[0] || cy < B->lo[1] || cy1 >= B->hi[1] || cx < B->lo[2] || cx1 >= B->hi[2])
        return NAN;
    const double *r0 = n->bg + box_index(B, t, cy, B->lo[2]) - B->lo[2];
    const double *r1 = n->bg + box_index(B, t, cy1, B->lo[2]) - B->lo[2];
    double top = (1 - fx) * r0[cx] + fx * r0[cx1];
    double bot = (1 - fx) * r1[cx] + fx * r1[cx1];
    return (1 - fy) * top + fy * bot;
}

/* The q-th percentile from a histogram of `total` counts over [vmin, vmax]. */
static double hist_percentile(const int64_t *hist, int64_t total, double vmin, double vmax, double q)
{
    double target = q / 100.0 * (double)total;
    double width = (vmax - vmin) / TMD_NORM_BINS;
    int64_t cum = 0;
    for (int i = 0; i < TMD_NORM_BINS; i++) {
        if (hist[i] && (double)(cum + hist[i]) >= target) {
            double frac = (target - (double)cum) / (double)hist[i];
            if (frac < 0) frac = 0;
            return vmin + ((double)i + frac) * width;
        }
        cum += hist[i];
    }
    return vmax;
}

tmd_status tmd_normalise_finish(tmd_ctx *ctx, tmd_normalise *n)
{
    const tmd_decomp *d = n->d;
    tmd_status st = TMD_OK;
    int64_t *hist = NULL;
    if (n->next_tile != d->nlocal)
        st = TMD_FAIL(ctx, TMD_ERR_INTERNAL, "normalise: %lld of %lld local tiles accumulated",
                      (long long)n->next_tile, (long long)d->nlocal);
    if (!st) st = tmd_calloc(ctx, (void **)&hist, TMD_NORM_BINS, sizeof *hist, "histogram");
    st = tmd_agree(ctx, d->cart, st);
    if (st) goto cleanup;
    if (n->background) {
        st = tmd_halo_begin(ctx, n->halo, n->acc);
        if (!st) st = tmd_halo_end(ctx, n->halo);
        if (!st) st = blur(ctx, n);
        st = tmd_agree(ctx, d->cart, st);
        if (st) goto cleanup;
    }
    n->finished = 1;
    /* samples minus background, in the order they were taken */
    double vmin = INFINITY, vmax = -INFINITY;
    int64_t k = 0;
    for (int pass = 0; pass < 2; pass++) {
        k = 0;
        for (int64_t i = 0; i < d->nlocal; i++) {
            tmd_box core;
            tmd_decomp_tile_box(d, tmd_decomp_local_tile(d, i), &core, NULL);
            for (int64_t t = core.lo[0]; t < core.hi[0]; t++)
                for (int64_t y = core.lo[1]; y < core.hi[1]; y++) {
                    if (y % n->step) continue;
                    for (int64_t x = core.lo[2] + (n->step - core.lo[2] % n->step) % n->step; x < core.hi[2];
                         x += n->step) {
                        double v = (double)n->samples[k++] - tmd_normalise_background(n, t, y, x);
                        if (pass == 0) {
                            if (v < vmin) vmin = v;
                            if (v > vmax) vmax = v;
                        } else {
                            double f = (v - vmin) / (vmax - vmin) * TMD_NORM_BINS;
                            int64_t b = f >= TMD_NORM_BINS ? TMD_NORM_BINS - 1 : (f < 0 ? 0 : (int64_t)f);
                            hist[b]++;
                        }
                    }
                }
        }
        if (pass == 0) {
            double mm[2] = {-vmin, vmax}, g[2];
            st = TMD_MPI(ctx, MPI_Allreduce(mm, g, 2, MPI_DOUBLE, MPI_MAX, d->cart));
            st = tmd_agree(ctx, d->cart, st);
            if (st) goto cleanup;
            vmin = -g[0];
            vmax = g[1];
            if (!(vmax > vmin)) break; /* flat image: no histogram needed */
        }
    }
    if (k != n->nsamples) {
        st = TMD_FAIL(ctx, TMD_ERR_INTERNAL, "normalise: %lld samples taken, %lld revisited", (long long)n->nsamples,
                      (long long)k);
    }
    st = tmd_agree(ctx, d->cart, st);
    if (st) goto cleanup;
    if (!(vmax > vmin)) {
        n->lo = vmin;
        n->hi = vmin + 1;
        tmd_info(ctx, "normalise: the image is flat (every sample %g); levels %g..%g", vmin, n->lo, n->hi);
    } else {
        int64_t total = 0;
        st = TMD_MPI(ctx, MPI_Allreduce(MPI_IN_PLACE, hist, TMD_NORM_BINS, MPI_INT64_T, MPI_SUM, d->cart));
        st = tmd_agree(ctx, d->cart, st);
        if (st) goto cleanup;
        for (int i = 0; i < TMD_NORM_BINS; i++) total += hist[i];
        n->lo = hist_percentile(hist, total, vmin, vmax, n->clip_low);
        n->hi = hist_percentile(hist, total, vmin, vmax, n->clip_high);
        if (!(n->hi > n->lo)) n->hi = n->lo + (vmax - vmin) / TMD_NORM_BINS;
    }
cleanup:
    free(hist);
    return st;
}

void tmd_normalise_levels(const tmd_normalise *n, double *lo, double *hi)
{
    *lo = n->lo;
    *hi = n->hi;
}

static tmd_status apply_strided(tmd_ctx *ctx, const tmd_normalise *n, const tmd_box *box, float *pix, int64_t rs,
                                int64_t fs)
{
    if (!n->finished) return TMD_FAIL(ctx, TMD_ERR_INTERNAL, "normalise: apply before finish");
    const double lo = n->lo, inv = 1.0 / (n->hi - n->lo);
    const int64_t w = box->hi[2] - box->lo[2];
    if (n->background) {
        /* the background grid must cover the box (a local tile grown by the halo) */
        const axis_cells *ay = &n->ax[1], *ax = &n->ax[2];
        const tmd_box *B = &n->bg_c;
        int ok = tmd_box_volume(box) > 0 && box->lo[0] >= B->lo[0] && box->hi[0] <= B->hi[0];
        if (ok) {
            int64_t y1 = box->hi[1] - 1, x1 = box->hi[2] - 1;
            ok = box->lo[1] >= 0 && box->lo[2] >= 0 && y1 < ay->n && x1 < ax->n && ay->c0[box->lo[1]] >= B->lo[1] &&
                 ax->c0[box->lo[2]] >= B->lo[2] && ay->c0[y1] + (ay->w[y1] != 0) < B->hi[1] &&
                 ax->c0[x1] + (ax->w[x1] != 0) < B->hi[2];
        }
        if (!ok)
            return TMD_FAIL(ctx, TMD_ERR_RANGE,
                            "normalise: box t %lld..%lld y %lld..%lld x %lld..%lld is outside this rank's tiles and "
                            "halo",
                            (long long)box->lo[0], (long long)box->hi[0], (long long)box->lo[1], (long long)box->hi[1],
                            (long long)box->lo[2], (long long)box->hi[2]);
    }
    for (int64_t t = box->lo[0]; t < box->hi[0]; t++)
        for (int64_t y = box->lo[1]; y < box->hi[1]; y++) {
            float *row = pix + (t - box->lo[0]) * fs + (y - box->lo[1]) * rs;
            if (!n->background) {
                for (int64_t i = 0; i < w; i++) row[i] = (float)(((double)row[i] - lo) * inv);
                continue;
            }
            const axis_cells *ay = &n->ax[1], *ax = &n->ax[2];
            const tmd_box *B = &n->bg_c;
            int64_t cy = ay->c0[y], cy1 = ay->w[y] != 0 ? cy + 1 : cy;
            double fy = ay->w[y];
            const double *r0 = n->bg + box_index(B, t, cy, B->lo[2]) - B->lo[2];
            const double *r1 = n->bg + box_index(B, t, cy1, B->lo[2]) - B->lo[2];
            for (int64_t x = box->lo[2]; x < box->hi[2]; x++) {
                int64_t cx = ax->c0[x], cx1 = ax->w[x] != 0 ? cx + 1 : cx;
                double fx = ax->w[x];
                double top = (1 - fx) * r0[cx] + fx * r0[cx1];
                double bot = (1 - fx) * r1[cx] + fx * r1[cx1];
                double b = (1 - fy) * top + fy * bot;
                row[x - box->lo[2]] = (float)(((double)row[x - box->lo[2]] - b - lo) * inv);
            }
        }
    return TMD_OK;
}

tmd_status tmd_normalise_apply(tmd_ctx *ctx, const tmd_normalise *n, const tmd_box *box, float *pix)
{
    int64_t w = box->hi[2] - box->lo[2], h = box->hi[1] - box->lo[1];
    return apply_strided(ctx, n, box, pix, w, w * h);
}

tmd_status tmd_normalise_image(tmd_ctx *ctx, const tmd_config *cfg, double input_px, int64_t frames, int64_t h,
                               int64_t w, const float *img, float *out)
{
    tmd_status st = TMD_OK;
    tmd_decomp *d = NULL;
    tmd_normalise *n = NULL;
    if (!(input_px > 0)) return TMD_FAIL(ctx, TMD_ERR_ARG, "normalise: pixel size %g (expected > 0)", input_px);
    int64_t te = tmd_decomp_tile_edge(cfg->tile, cfg->nominal_pixel_size, input_px);
    int64_t dims[3] = {frames, h, w}, tile[3] = {cfg->frames_per_tile, te, te}, halo[3] = {0, 0, 0};
    /* The serial path must not take part in collectives of the caller's communicator: a
     * private single-rank decomposition on MPI_COMM_SELF. Agreement inside is with self. */
    st = tmd_decomp_create(ctx, MPI_COMM_SELF, dims, tile, halo, NULL, &d);
    if (!st) st = tmd_normalise_create(ctx, d, cfg, input_px, &n);
    for (int64_t i = 0; !st && i < d->nlocal; i++) {
        tmd_box core;
        tmd_decomp_tile_box(d, tmd_decomp_local_tile(d, i), &core, NULL);
        const float *p = img + (core.lo[0] * h + core.lo[1]) * w + core.lo[2];
        st = accumulate_strided(ctx, n, &core, p, w, w * h);
    }
    if (!st) st = tmd_normalise_finish(ctx, n);
    if (!st && out != img) memcpy(out, img, sizeof *out * (size_t)(frames * h * w));
    for (int64_t i = 0; !st && i < d->nlocal; i++) {
        tmd_box core;
        tmd_decomp_tile_box(d, tmd_decomp_local_tile(d, i), &core, NULL);
        float *p = out + (core.lo[0] * h + core.lo[1]) * w + core.lo[2];
        st = apply_strided(ctx, n, &core, p, w, w * h);
    }
    if (!st) tmd_normalise_clamp(out, frames * h * w);
    tmd_normalise_destroy(&n);
    tmd_decomp_destroy(&d);
    return st;
}

void tmd_normalise_clamp(float *pix, int64_t n)
{
    for (int64_t i = 0; i < n; i++) pix[i] = pix[i] < 0 ? 0 : (pix[i] > 1 ? 1 : pix[i]);
}

/* ---- resampling ------------------------------------------------------------------------ */

static int64_t reflect(int64_t i, int64_t n)
{
    if (n == 1) return 0;
    int64_t period = 2 * (n - 1);
    i %= period;
    if (i < 0) i += period;
    return i < n ? i : period - i;
}

void tmd_resample_support(double s, int64_t Y0, int64_t n, int64_t *lo, int64_t *hi)
{
    double hw = s > 1 ? s : 1;
    *lo = (int64_t)ceil((double)Y0 * s - hw);
    *hi = (int64_t)floor((double)(Y0 + n - 1) * s + hw) + 1;
}

/* Taps of output coordinate Y: input indices (reflected and clamped into [r0, r0 + rn)) and
 * normalised weights. Returns the tap count (<= cap). */
static int taps(double s, int64_t Y, int64_t img_n, int64_t r0, int64_t rn, int64_t *idx, double *wt, int cap)
{
    double hw = s > 1 ? s : 1, c = (double)Y * s, sum = 0;
    int64_t a = (int64_t)ceil(c - hw), b = (int64_t)floor(c + hw);
    int m = 0;
    for (int64_t i = a; i <= b && m < cap; i++) {
        double wgt = 1 - fabs((double)i - c) / hw;
        if (wgt <= 0) continue;
        int64_t j = reflect(i, img_n);
        if (j < r0) j = r0;
        if (j >= r0 + rn) j = r0 + rn - 1;
        idx[m] = j - r0;
        wt[m] = wgt;
        sum += wgt;
        m++;
    }
    for (int k = 0; k < m; k++) wt[k] /= sum;
    return m;
}

tmd_status tmd_resample(tmd_ctx *ctx, const float *in, int64_t y0, int64_t x0, int64_t h, int64_t w, int64_t img_h,
                        int64_t img_w, double s, int64_t Y0, int64_t X0, int64_t oh, int64_t ow, float *out, float *tmp)
{
    if (!(s > 0) || h < 1 || w < 1 || oh < 0 || ow < 0)
        return TMD_FAIL(ctx, TMD_ERR_ARG, "resample: scale %g, region %lld x %lld, output %lld x %lld", s, (long long)h,
                        (long long)w, (long long)oh, (long long)ow);
    tmd_status st = TMD_OK;
    float *own_tmp = NULL;
    int64_t *xi = NULL;
    double *xw = NULL;
    int cap = 2 * (int)ceil(s > 1 ? s : 1) + 3;
    if (cap > 64) return TMD_FAIL(ctx, TMD_ERR_RANGE, "resample: scale %g is too large (at most 30)", s);
    if (!tmp) {
        st = tmd_calloc(ctx, (void **)&own_tmp, (size_t)(oh * w + 1), sizeof *own_tmp, "resample buffer");
        tmp = own_tmp;
    }
    if (!st) st = tmd_calloc(ctx, (void **)&xi, (size_t)(ow * cap + 1), sizeof *xi, "resample taps");
    if (!st) st = tmd_calloc(ctx, (void **)&xw, (size_t)(ow * cap + 1), sizeof *xw, "resample taps");
    if (st) goto cleanup;
    int *xn = (int *)malloc(sizeof(int) * (size_t)(ow + 1));
    if (!xn) {
        st = TMD_FAIL(ctx, TMD_ERR_NOMEM, "resample: out of memory");
        goto cleanup;
    }
    for (int64_t X = 0; X < ow; X++)
        xn[X] = taps(s, X0 + X, img_w, x0, w, xi + X * cap, xw + X * cap, cap);
    /* along y: (oh, w) */
    for (int64_t Y = 0; Y < oh; Y++) {
        int64_t yi[64];
        double yw[64];
        int m = taps(s, Y0 + Y, img_h, y0, h, yi, yw, cap < 64 ? cap : 64);
        float *o = tmp + Y * w;
        for (int64_t x = 0; x < w; x++) {
            double acc = 0;
            for (int k = 0; k < m; k++) acc += yw[k] * in[yi[k] * w + x];
            o[x] = (float)acc;
        }
    }
    /* along x: (oh, ow) */
    for (int64_t Y = 0; Y < oh; Y++) {
        const float *r = tmp + Y * w;
        float *o = out + Y * ow;
        for (int64_t X = 0; X < ow; X++) {
            const int64_t *ii = xi + X * cap;
            const double *ww = xw + X * cap;
            double acc = 0;
            for (int k = 0; k < xn[X]; k++) acc += ww[k] * r[ii[k]];
            o[X] = (float)acc;
        }
    }
    free(xn);
cleanup:
    free(own_tmp);
    free(xi);
    free(xw);
    return st;
}
