/* Scoring a result against simulated truth (see tmd/score.h, docs/score.md). */
#include "tmd/score.h"

#include <hdf5.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tmd/io.h"
#include "tmd/table.h"

/* ---- matching ----------------------------------------------------------------------------- */

typedef struct { double d; int64_t t, f; } pair_t;

static int cmp_pair(const void *a, const void *b)
{
    const pair_t *x = a, *y = b;
    if (x->d != y->d) return x->d < y->d ? -1 : 1;
    if (x->t != y->t) return x->t < y->t ? -1 : 1;
    return x->f < y->f ? -1 : x->f > y->f;
}

typedef struct { int64_t key; int64_t idx; } cell_t;

static int cmp_cell(const void *a, const void *b)
{
    const cell_t *x = a, *y = b;
    if (x->key != y->key) return x->key < y->key ? -1 : 1;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

static int64_t cell_key(int32_t frame, int64_t cx, int64_t cy)
{
    return ((int64_t)frame << 42) ^ ((cx + (1LL << 20)) << 21) ^ (cy + (1LL << 20));
}

tmd_status tmd_score_match(tmd_ctx *ctx, int64_t nt, const int32_t *tframe, const double *tx, const double *ty,
                           int64_t nf, const int32_t *fframe, const double *fx, const double *fy, double radius,
                           int64_t *match_t)
{
    tmd_status st = TMD_OK;
    cell_t *cells = NULL;
    pair_t *pairs = NULL;
    char *fused = NULL;
    int64_t np = 0, capp = 0;
    for (int64_t i = 0; i < nt; i++) match_t[i] = -1;
    if (nt == 0 || nf == 0) return TMD_OK;
    if (!(radius > 0)) return TMD_FAIL(ctx, TMD_ERR_ARG, "match radius %g must be positive", radius);
    st = tmd_calloc(ctx, (void **)&cells, (size_t)nf, sizeof *cells, "found-atom grid");
    if (st) goto cleanup;
    /* grid of the found items: cell = radius, sorted by cell key for binary search */
    for (int64_t j = 0; j < nf; j++) {
        cells[j].key = cell_key(fframe ? fframe[j] : 0, (int64_t)floor(fx[j] / radius), (int64_t)floor(fy[j] / radius));
        cells[j].idx = j;
    }
    qsort(cells, (size_t)nf, sizeof *cells, cmp_cell);
    capp = nt + 16;
    st = tmd_calloc(ctx, (void **)&pairs, (size_t)capp, sizeof *pairs, "candidate pairs");
    if (st) goto cleanup;
    double r2 = radius * radius;
    for (int64_t i = 0; i < nt; i++) {
        if (!isfinite(tx[i]) || !isfinite(ty[i])) continue;
        int64_t cx = (int64_t)floor(tx[i] / radius), cy = (int64_t)floor(ty[i] / radius);
        for (int64_t a = cx - 1; a <= cx + 1; a++)
            for (int64_t b = cy - 1; b <= cy + 1; b++) {
                int64_t key = cell_key(tframe ? tframe[i] : 0, a, b);
                int64_t lo = 0, hi = nf;
                while (lo < hi) { /* first cell with this key */
                    int64_t mid = (lo + hi) / 2;
                    if (cells[mid].key < key) lo = mid + 1;
                    else hi = mid;
                }
                for (int64_t k = lo; k < nf && cells[k].key == key; k++) {
                    int64_t j = cells[k].idx;
                    double dx = fx[j] - tx[i], dy = fy[j] - ty[i], d2 = dx * dx + dy * dy;
                    if (d2 > r2) continue;
                    if (np == capp) {
                        capp *= 2;
                        pair_t *n = realloc(pairs, (size_t)capp * sizeof *n);
                        if (!n) {
                            st = TMD_FAIL(ctx, TMD_ERR_NOMEM, "out of memory for %lld candidate pairs", (long long)capp);
                            goto cleanup;
                        }
                        pairs = n;
                    }
                    pairs[np].d = d2;
                    pairs[np].t = i;
                    pairs[np].f = j;
                    np++;
                }
            }
    }
    qsort(pairs, (size_t)np, sizeof *pairs, cmp_pair);
    st = tmd_calloc(ctx, (void **)&fused, (size_t)nf, 1, "found-atom flags");
    if (st) goto cleanup;
    for (int64_t k = 0; k < np; k++) {
        if (match_t[pairs[k].t] >= 0 || fused[pairs[k].f]) continue;
        match_t[pairs[k].t] = pairs[k].f;
        fused[pairs[k].f] = 1;
    }
cleanup:
    free(cells);
    free(pairs);
    free(fused);
    return st;
}

typedef struct { double s; int8_t l; } sl_t;
static int cmp_sl(const void *a, const void *b)
{
    double x = ((const sl_t *)a)->s, y = ((const sl_t *)b)->s;
    return x < y ? -1 : x > y;
}

double tmd_score_auc(int64_t n, const double *score, const int8_t *label)
{
    sl_t *v = malloc((size_t)(n ? n : 1) * sizeof *v);
    if (!v) return NAN;
    int64_t npos = 0, nneg = 0;
    for (int64_t i = 0; i < n; i++) {
        v[i].s = isfinite(score[i]) ? score[i] : -1e300;
        v[i].l = label[i] ? 1 : 0;
        if (v[i].l) npos++;
        else nneg++;
    }
    if (!npos || !nneg) {
        free(v);
        return NAN;
    }
    qsort(v, (size_t)n, sizeof *v, cmp_sl);
    double rsum = 0; /* sum of ranks of positives, ties averaged */
    for (int64_t i = 0; i < n;) {
        int64_t j = i;
        while (j < n && v[j].s == v[i].s) j++;
        double rank = 0.5 * (double)(i + 1 + j);
        for (int64_t k = i; k < j; k++)
            if (v[k].l) rsum += rank;
        i = j;
    }
    free(v);
    return (rsum - 0.5 * (double)npos * (double)(npos + 1)) / ((double)npos * (double)nneg);
}

/* ---- file reading helpers ---------------------------------------------------------------- */

typedef struct {
    int64_t n;
    int32_t *frame;
    double *x, *y;
    int8_t *code;       /* species (atoms) or type (defects), may be NULL */
} items_t;

static void items_free(items_t *it)
{
    free(it->frame);
    free(it->x);
    free(it->y);
    free(it->code);
    memset(it, 0, sizeof *it);
}

/* Reads group/x, group/y, group/frame (optional, default 0), group/<codename> (optional). */
static tmd_status read_items(tmd_ctx *ctx, hid_t f, const char *group, const char *codename, items_t *it)
{
    char p[256];
    int64_t n, k, n2;
    memset(it, 0, sizeof *it);
    snprintf(p, sizeof p, "%s/x", group);
    TMD_CHECK(tmd_h5_read_rows(ctx, f, p, TMD_F64, &n, &k, (void **)&it->x));
    snprintf(p, sizeof p, "%s/y", group);
    TMD_CHECK(tmd_h5_read_rows(ctx, f, p, TMD_F64, &n2, &k, (void **)&it->y));
    if (n2 != n) return TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s/x has %lld rows but %s/y has %lld", group, (long long)n, group, (long long)n2);
    it->n = n;
    snprintf(p, sizeof p, "%s/frame", group);
    if (tmd_h5_exists(f, p)) {
        TMD_CHECK(tmd_h5_read_rows(ctx, f, p, TMD_I32, &n2, &k, (void **)&it->frame));
        if (n2 != n) return TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s has %lld rows, expected %lld", p, (long long)n2, (long long)n);
    } else {
        TMD_CHECK(tmd_calloc(ctx, (void **)&it->frame, (size_t)(n ? n : 1), sizeof(int32_t), "frames"));
    }
    if (codename) {
        snprintf(p, sizeof p, "%s/%s", group, codename);
        if (tmd_h5_exists(f, p)) {
            TMD_CHECK(tmd_h5_read_rows(ctx, f, p, TMD_I8, &n2, &k, (void **)&it->code));
            if (n2 != n) return TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s has %lld rows, expected %lld", p, (long long)n2, (long long)n);
        }
    }
    return TMD_OK;
}

static void prf_finish(tmd_prf *p)
{
    p->precision = p->tp + p->fp ? (double)p->tp / (double)(p->tp + p->fp) : NAN;
    p->recall = p->tp + p->fn ? (double)p->tp / (double)(p->tp + p->fn) : NAN;
    p->f1 = p->tp + p->fp + p->fn ? 2.0 * (double)p->tp / (double)(2 * p->tp + p->fp + p->fn) : NAN;
}

static int inside(const tmd_score *s, double x, double y)
{
    double b = s->border_px;
    return x >= b - 0.5 && y >= b - 0.5 && x <= (double)s->width - 0.5 - b && y <= (double)s->height - 0.5 - b;
}

/* Matches truth items to found items and fills tp/fp/fn; match (nt) returned (malloc'd). */
static tmd_status score_items(tmd_ctx *ctx, const tmd_score *s, const items_t *t, const items_t *f, tmd_prf *prf,
                              int64_t **match_out)
{
    int64_t *match = NULL;
    char *fm = NULL;
    tmd_status st = tmd_calloc(ctx, (void **)&match, (size_t)(t->n ? t->n : 1), sizeof *match, "matches");
    if (!st) st = tmd_calloc(ctx, (void **)&fm, (size_t)(f->n ? f->n : 1), 1, "found flags");
    if (!st) st = tmd_score_match(ctx, t->n, t->frame, t->x, t->y, f->n, f->frame, f->x, f->y, s->match_radius_px, match);
    if (!st) {
        memset(prf, 0, sizeof *prf);
        for (int64_t i = 0; i < t->n; i++) {
            if (match[i] >= 0) fm[match[i]] = 1;
            if (!inside(s, t->x[i], t->y[i])) continue;
            if (match[i] >= 0) prf->tp++;
            else prf->fn++;
        }
        /* a found item matched to an unscored (border) truth item is neither TP nor FP */
        for (int64_t j = 0; j < f->n; j++)
            if (!fm[j] && inside(s, f->x[j], f->y[j])) prf->fp++;
        prf_finish(prf);
    }
    free(fm);
    if (st) {
        free(match);
        match = NULL;
    }
    *match_out = match;
    return st;
}

/* Rasterises disks on a coarse grid; returns bitmap (malloc'd). */
static tmd_status disks(tmd_ctx *ctx, int64_t gw, int64_t gh, double bin, int64_t n, const double *x, const double *y,
                        const double *r, uint8_t **out)
{
    uint8_t *m = NULL;
    TMD_CHECK(tmd_calloc(ctx, (void **)&m, (size_t)(gw * gh), 1, "region raster"));
    for (int64_t i = 0; i < n; i++) {
        double cx = x[i] / bin, cy = y[i] / bin, rr = r[i] / bin;
        int64_t ya = (int64_t)floor(cy - rr), yb = (int64_t)ceil(cy + rr);
        for (int64_t gy = ya < 0 ? 0 : ya; gy <= yb && gy < gh; gy++)
            for (int64_t gx = (int64_t)floor(cx - rr) < 0 ? 0 : (int64_t)floor(cx - rr); gx <= (int64_t)ceil(cx + rr) && gx < gw; gx++) {
                double dx = (double)gx + 0.5 - cx, dy = (double)gy + 0.5 - cy;
                if (dx * dx + dy * dy <= rr * rr) m[gy * gw + gx] = 1;
            }
    }
    *out = m;
    return TMD_OK;
}

static tmd_status image_dims(tmd_ctx *ctx, hid_t f, const char *path, int64_t *T, int64_t *H, int64_t *W)
{
    const char *cands[] = {"/image", "/truth/classes"};
    for (int c = 0; c < 2; c++) {
        if (!tmd_h5_exists(f, cands[c])) continue;
        hid_t d = H5Dopen2(f, cands[c], H5P_DEFAULT);
        if (d < 0) continue;
        hid_t sp = H5Dget_space(d);
        hsize_t dims[3] = {1, 1, 1};
        int nd = H5Sget_simple_extent_ndims(sp);
        if (nd == 2 || nd == 3) H5Sget_simple_extent_dims(sp, dims, NULL);
        H5Sclose(sp);
        H5Dclose(d);
        if (nd == 2) {
            *T = 1; *H = (int64_t)dims[0]; *W = (int64_t)dims[1];
            return TMD_OK;
        }
        if (nd == 3) {
            *T = (int64_t)dims[0]; *H = (int64_t)dims[1]; *W = (int64_t)dims[2];
            return TMD_OK;
        }
    }
    return TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: no /image or /truth/classes (2-D or 3-D) to take the image size from; is it a simulated truth file?", path);
}

tmd_status tmd_score_files(tmd_ctx *ctx, const char *result, const char *truth, tmd_score *s)
{
    tmd_status st = TMD_OK;
    hid_t fr = H5I_INVALID_HID, ft = H5I_INVALID_HID;
    items_t ta = {0}, fa = {0}, td = {0}, fd = {0};
    int64_t *match = NULL, *dmatch = NULL;
    double *tsx = NULL, *tsy = NULL, *fsx = NULL, *fsy = NULL, *finst = NULL, *tdrift = NULL, *fdrift = NULL;
    double *trx = NULL, *try_ = NULL, *trr = NULL, *frx = NULL, *fry = NULL, *fra = NULL;
    int8_t *tdyn = NULL, *lab = NULL, *tstate = NULL, *tjump = NULL, *lab_any = NULL;
    double *tdrift_v = NULL;
    double *sc = NULL;
    int64_t *smatch = NULL;
    uint8_t *mt = NULL, *mf = NULL;
    memset(s, 0, sizeof *s);
    s->rmse_px = s->species_acc = s->metal_acc = s->chalcogen_acc = NAN;
    s->instability_auc = s->instability_auc_any = s->drift_rmse_px = s->region_iou = NAN;
    for (int k = 0; k < 4; k++) s->vacancy[k].precision = s->vacancy[k].recall = s->vacancy[k].f1 = NAN;
    st = tmd_h5_open_read(ctx, truth, &ft);
    if (st) goto cleanup;
    st = tmd_h5_open_read(ctx, result, &fr);
    if (st) goto cleanup;
    st = tmd_h5_read_attr_f64(ctx, ft, "/", "pixel_size", &s->pixel_size, 1);
    if (st) goto cleanup;
    if (tmd_h5_read_attr_f64(ctx, ft, "/", "lattice_a", &s->lattice_a, 1) != TMD_OK || !(s->lattice_a > 0)) {
        tmd_error_clear(ctx);
        s->lattice_a = 3.22; /* middle of the MoS2..WSe2 range */
    }
    st = image_dims(ctx, ft, truth, &s->frames, &s->height, &s->width);
    if (st) goto cleanup;
    s->match_radius_px = s->lattice_a / 4 / s->pixel_size;
    s->border_px = s->lattice_a / 2 / s->pixel_size;

    /* atoms */
    st = read_items(ctx, ft, "/atoms", "species", &ta);
    if (st) goto cleanup;
    if (!tmd_h5_exists(fr, "/atoms/x")) {
        st = TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: no /atoms/x; nothing to score (is it a tmdflow result?)", result);
        goto cleanup;
    }
    st = read_items(ctx, fr, "/atoms", "species", &fa);
    if (st) goto cleanup;
    st = score_items(ctx, s, &ta, &fa, &s->detection, &match);
    if (st) goto cleanup;
    double se = 0;
    int64_t nm = 0;
    s->has_species = fa.code != NULL && ta.code != NULL;
    int64_t ok = 0, okm = 0, okc = 0;
    for (int64_t i = 0; i < ta.n; i++) {
        if (match[i] < 0 || !inside(s, ta.x[i], ta.y[i])) continue;
        int64_t j = match[i];
        double dx = fa.x[j] - ta.x[i], dy = fa.y[j] - ta.y[i];
        se += dx * dx + dy * dy;
        nm++;
        if (s->has_species) {
            int a = ta.code[i], b = fa.code[j];
            if (a < 0 || a > 7) a = 0;
            if (b < 0 || b > 7) b = 0;
            s->confusion[a][b]++;
            s->species_n++;
            ok += a == b;
            if (a == TMD_SP_MO || a == TMD_SP_W) {
                s->metal_n++;
                okm += a == b;
            } else if (a >= TMD_SP_S2) {
                s->chalcogen_n++;
                okc += a == b;
            }
        }
    }
    s->rmse_px = nm ? sqrt(se / (double)nm) : NAN;
    if (s->has_species) {
        s->species_acc = s->species_n ? (double)ok / (double)s->species_n : NAN;
        s->metal_acc = s->metal_n ? (double)okm / (double)s->metal_n : NAN;
        s->chalcogen_acc = s->chalcogen_n ? (double)okc / (double)s->chalcogen_n : NAN;
    }

    /* vacancies, per type */
    s->has_vacancies = tmd_h5_exists(fr, "/defects/x") && tmd_h5_exists(ft, "/defects/x");
    if (s->has_vacancies) {
        st = read_items(ctx, ft, "/defects", "type", &td);
        if (!st) st = read_items(ctx, fr, "/defects", "type", &fd);
        if (st) goto cleanup;
        for (int type = 1; type <= 3; type++) {
            items_t a = {0}, b = {0};
            /* views of one type (arrays compacted into fresh buffers) */
            items_t *src[2] = {&td, &fd}, *dst[2] = {&a, &b};
            for (int w = 0; w < 2; w++) {
                int64_t n = 0;
                dst[w]->frame = malloc((size_t)(src[w]->n + 1) * sizeof(int32_t));
                dst[w]->x = malloc((size_t)(src[w]->n + 1) * sizeof(double));
                dst[w]->y = malloc((size_t)(src[w]->n + 1) * sizeof(double));
                if (!dst[w]->frame || !dst[w]->x || !dst[w]->y) {
                    items_free(&a);
                    items_free(&b);
                    st = TMD_FAIL(ctx, TMD_ERR_NOMEM, "out of memory for defect matching");
                    goto cleanup;
                }
                for (int64_t i = 0; i < src[w]->n; i++)
                    if (src[w]->code && src[w]->code[i] == type) {
                        dst[w]->frame[n] = src[w]->frame[i];
                        dst[w]->x[n] = src[w]->x[i];
                        dst[w]->y[n] = src[w]->y[i];
                        n++;
                    }
                dst[w]->n = n;
            }
            st = score_items(ctx, s, &a, &b, &s->vacancy[type], &dmatch);
            free(dmatch);
            dmatch = NULL;
            items_free(&a);
            items_free(&b);
            if (st) goto cleanup;
        }
    }

    /* stacks: instability AUC against /sites/dynamic (sites matched by position) */
    if (tmd_h5_exists(ft, "/sites/dynamic") && tmd_h5_exists(fr, "/sites/instability") && tmd_h5_exists(fr, "/sites/x")) {
        int64_t nts, nfs, k, n2;
        st = tmd_h5_read_rows(ctx, ft, "/sites/x", TMD_F64, &nts, &k, (void **)&tsx);
        if (!st) st = tmd_h5_read_rows(ctx, ft, "/sites/y", TMD_F64, &n2, &k, (void **)&tsy);
        if (!st) st = tmd_h5_read_rows(ctx, ft, "/sites/dynamic", TMD_I8, &n2, &k, (void **)&tdyn);
        if (!st) st = tmd_h5_read_rows(ctx, fr, "/sites/x", TMD_F64, &nfs, &k, (void **)&fsx);
        if (!st) st = tmd_h5_read_rows(ctx, fr, "/sites/y", TMD_F64, &n2, &k, (void **)&fsy);
        if (!st) st = tmd_h5_read_rows(ctx, fr, "/sites/instability", TMD_F64, &n2, &k, (void **)&finst);
        if (!st) st = tmd_calloc(ctx, (void **)&smatch, (size_t)(nts ? nts : 1), sizeof *smatch, "site matches");
        if (!st) st = tmd_score_match(ctx, nts, NULL, tsx, tsy, nfs, NULL, fsx, fsy, s->match_radius_px, smatch);
        if (!st) st = tmd_calloc(ctx, (void **)&sc, (size_t)(nts ? nts : 1), sizeof *sc, "site scores");
        if (!st) st = tmd_calloc(ctx, (void **)&lab, (size_t)(nts ? nts : 1), 1, "site labels");
        if (st) goto cleanup;
        /* observable truth: a site is dynamic if its state (species, or a column jump) differs
         * between two frames in which it is in view (inside the frame less the border, at its
         * frame-0 position plus the true drift). Needs /sites/state (and /sites/jump, written by
         * the simulator since 2026-11-26; without it only species changes count) and /drift. */
        int64_t T = s->frames, kst = 0, kj = 0, ntd = 0, kd = 0;
        int have_state = 0;
        if (!st && T > 1 && tmd_h5_exists(ft, "/sites/state") && tmd_h5_exists(ft, "/drift")) {
            int64_t ns2;
            st = tmd_h5_read_rows(ctx, ft, "/sites/state", TMD_I8, &ns2, &kst, (void **)&tstate);
            if (!st) st = tmd_h5_read_rows(ctx, ft, "/drift", TMD_F64, &ntd, &kd, (void **)&tdrift_v);
            if (!st && tmd_h5_exists(ft, "/sites/jump")) {
                st = tmd_h5_read_rows(ctx, ft, "/sites/jump", TMD_I8, &ns2, &kj, (void **)&tjump);
                if (!st && (ns2 != nts || kj != T)) { free(tjump); tjump = NULL; }
            }
            have_state = !st && ns2 == nts && kst == T && ntd == T && kd == 2;
            if (!st) st = tmd_calloc(ctx, (void **)&lab_any, (size_t)(nts ? nts : 1), 1, "site labels");
        }
        if (st) goto cleanup;
        s->has_observable = have_state;
        s->observable_jumps = have_state && tjump;
        int64_t n = 0;
        for (int64_t i = 0; i < nts; i++) {
            if (smatch[i] < 0 || !inside(s, tsx[i], tsy[i])) continue;
            sc[n] = finst[smatch[i]];
            int any = tdyn[i] ? 1 : 0, obs = any;
            if (have_state) {
                int seen = 0, first_sp = 0, first_j = 0;
                obs = 0;
                for (int64_t t = 0; t < T && !obs; t++) {
                    if (!inside(s, tsx[i] + tdrift_v[2 * t], tsy[i] + tdrift_v[2 * t + 1])) continue;
                    int sp = tstate[i * T + t], j = tjump ? tjump[i * T + t] : 0;
                    if (!seen) { seen = 1; first_sp = sp; first_j = j; }
                    else if (sp != first_sp || j != first_j) obs = 1;
                }
                lab_any[n] = (int8_t)any;
                s->auc_positives_any += any;
            }
            lab[n] = (int8_t)obs;
            s->auc_positives += lab[n];
            n++;
        }
        s->auc_sites = n;
        s->instability_auc = tmd_score_auc(n, sc, lab);
        if (have_state) s->instability_auc_any = tmd_score_auc(n, sc, lab_any);
        else {
            s->instability_auc_any = s->instability_auc;
            s->auc_positives_any = s->auc_positives;
        }
    }
    /* drift */
    if (tmd_h5_exists(ft, "/drift") && tmd_h5_exists(fr, "/drift")) {
        int64_t nt, nf, kt, kf;
        st = tmd_h5_read_rows(ctx, ft, "/drift", TMD_F64, &nt, &kt, (void **)&tdrift);
        if (!st) st = tmd_h5_read_rows(ctx, fr, "/drift", TMD_F64, &nf, &kf, (void **)&fdrift);
        if (st) goto cleanup;
        if (nt == nf && kt == 2 && kf == 2 && nt > 0) {
            double e = 0;
            for (int64_t t = 0; t < nt; t++) {
                double dx = fdrift[2 * t] - tdrift[2 * t], dy = fdrift[2 * t + 1] - tdrift[2 * t + 1];
                e += dx * dx + dy * dy;
            }
            s->drift_rmse_px = sqrt(e / (double)nt);
        }
    }
    /* regions: IoU of disks on a coarse grid */
    if (tmd_h5_exists(ft, "/regions/x") && tmd_h5_exists(fr, "/regions/x") && tmd_h5_exists(fr, "/regions/area_px")) {
        int64_t nt, nf, k, n2;
        st = tmd_h5_read_rows(ctx, ft, "/regions/x", TMD_F64, &nt, &k, (void **)&trx);
        if (!st) st = tmd_h5_read_rows(ctx, ft, "/regions/y", TMD_F64, &n2, &k, (void **)&try_);
        if (!st) st = tmd_h5_read_rows(ctx, ft, "/regions/radius_px", TMD_F64, &n2, &k, (void **)&trr);
        if (!st) st = tmd_h5_read_rows(ctx, fr, "/regions/x", TMD_F64, &nf, &k, (void **)&frx);
        if (!st) st = tmd_h5_read_rows(ctx, fr, "/regions/y", TMD_F64, &n2, &k, (void **)&fry);
        if (!st) st = tmd_h5_read_rows(ctx, fr, "/regions/area_px", TMD_F64, &n2, &k, (void **)&fra);
        if (st) goto cleanup;
        for (int64_t i = 0; i < nf; i++) fra[i] = sqrt(fmax(0, fra[i]) / 3.14159265358979323846);
        double bin = fmax(2.0, ceil(sqrt((double)s->height * (double)s->width / 4e6)));
        int64_t gw = (int64_t)ceil((double)s->width / bin), gh = (int64_t)ceil((double)s->height / bin);
        st = disks(ctx, gw, gh, bin, nt, trx, try_, trr, &mt);
        if (!st) st = disks(ctx, gw, gh, bin, nf, frx, fry, fra, &mf);
        if (st) goto cleanup;
        int64_t inter = 0, uni = 0;
        for (int64_t i = 0; i < gw * gh; i++) {
            inter += mt[i] && mf[i];
            uni += mt[i] || mf[i];
        }
        s->region_iou = uni ? (double)inter / (double)uni : NAN;
    }
cleanup:
    if (fr >= 0) H5Fclose(fr);
    if (ft >= 0) H5Fclose(ft);
    items_free(&ta);
    items_free(&fa);
    items_free(&td);
    items_free(&fd);
    free(match);
    free(dmatch);
    free(tsx); free(tsy); free(fsx); free(fsy); free(finst); free(tdrift); free(fdrift);
    free(trx); free(try_); free(trr); free(frx); free(fry); free(fra);
    free(tdyn); free(lab); free(sc); free(smatch); free(mt); free(mf);
    free(tstate); free(tjump); free(lab_any); free(tdrift_v);
    return st;
}

/* ---- JSON ------------------------------------------------------------------------------- */

typedef struct { char *s; size_t n, cap; int fail; } buf_t;

static void put(buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(buf_t *b, const char *fmt, ...)
{
    if (b->fail) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(b->s + b->n, b->cap - b->n, fmt, ap);
        va_end(ap);
        if (k < 0) { b->fail = 1; return; }
        if ((size_t)k < b->cap - b->n) { b->n += (size_t)k; return; }
        size_t cap = b->cap * 2 + (size_t)k + 64;
        char *n = realloc(b->s, cap);
        if (!n) { b->fail = 1; return; }
        b->s = n;
        b->cap = cap;
    }
}

static void num(buf_t *b, double v)
{
    if (isfinite(v)) put(b, "%.6g", v);
    else put(b, "null");
}

static void str(buf_t *b, const char *s)
{
    put(b, "\"");
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') put(b, "\\%c", *s);
        else if ((unsigned char)*s < 32) put(b, "\\u%04x", *s);
        else put(b, "%c", *s);
    }
    put(b, "\"");
}

static void prf(buf_t *b, const tmd_prf *p)
{
    put(b, "{\"tp\": %lld, \"fp\": %lld, \"fn\": %lld, \"precision\": ", (long long)p->tp, (long long)p->fp, (long long)p->fn);
    num(b, p->precision);
    put(b, ", \"recall\": ");
    num(b, p->recall);
    put(b, ", \"f1\": ");
    num(b, p->f1);
    put(b, "}");
}

tmd_status tmd_score_json(tmd_ctx *ctx, const tmd_score *s, const char *result, const char *truth, char **json)
{
    buf_t b = {malloc(4096), 0, 4096, 0};
    if (!b.s) return TMD_FAIL(ctx, TMD_ERR_NOMEM, "out of memory for the score JSON");
    b.s[0] = 0;
    put(&b, "{\n  \"result\": ");
    str(&b, result);
    put(&b, ",\n  \"truth\": ");
    str(&b, truth);
    put(&b, ",\n  \"frames\": %lld, \"height\": %lld, \"width\": %lld,\n", (long long)s->frames, (long long)s->height,
        (long long)s->width);
    put(&b, "  \"pixel_size\": ");
    num(&b, s->pixel_size);
    put(&b, ", \"lattice_a\": ");
    num(&b, s->lattice_a);
    put(&b, ", \"match_radius_px\": ");
    num(&b, s->match_radius_px);
    put(&b, ", \"border_px\": ");
    num(&b, s->border_px);
    put(&b, ",\n  \"detection\": ");
    prf(&b, &s->detection);
    put(&b, ",\n  \"position_rmse_px\": ");
    num(&b, s->rmse_px);
    put(&b, ", \"position_rmse_angstrom\": ");
    num(&b, s->rmse_px * s->pixel_size);
    put(&b, ",\n  \"species\": ");
    if (!s->has_species) {
        put(&b, "null");
    } else {
        put(&b, "{\"accuracy\": ");
        num(&b, s->species_acc);
        put(&b, ", \"metal_accuracy\": ");
        num(&b, s->metal_acc);
        put(&b, ", \"chalcogen_accuracy\": ");
        num(&b, s->chalcogen_acc);
        put(&b, ", \"n\": %lld, \"metal_n\": %lld, \"chalcogen_n\": %lld,\n    \"labels\": [\"?\", \"Mo\", \"W\", \"S2\", \"SSe\", \"Se2\", \"S\", \"Se\"],\n    \"confusion\": [",
            (long long)s->species_n, (long long)s->metal_n, (long long)s->chalcogen_n);
        for (int i = 0; i < 8; i++) {
            put(&b, "%s[", i ? ", " : "");
            for (int j = 0; j < 8; j++) put(&b, "%s%lld", j ? ", " : "", (long long)s->confusion[i][j]);
            put(&b, "]");
        }
        put(&b, "]}");
    }
    put(&b, ",\n  \"vacancies\": ");
    if (!s->has_vacancies) {
        put(&b, "null");
    } else {
        static const char *names[4] = {"", "V_M", "V_X", "V_X2"};
        put(&b, "{");
        for (int k = 1; k <= 3; k++) {
            put(&b, "%s\"%s\": ", k > 1 ? ", " : "", names[k]);
            prf(&b, &s->vacancy[k]);
        }
        put(&b, "}");
    }
    put(&b, ",\n  \"instability_auc\": ");
    num(&b, s->instability_auc);
    put(&b, ", \"instability_sites\": %lld, \"instability_positives\": %lld", (long long)s->auc_sites,
        (long long)s->auc_positives);
    put(&b, ", \"instability_truth\": \"%s\"",
        !s->has_observable ? "any_frame" : s->observable_jumps ? "changes_in_view" : "species_changes_in_view");
    put(&b, ",\n  \"instability_auc_any_frame\": ");
    num(&b, s->instability_auc_any);
    put(&b, ", \"instability_positives_any_frame\": %lld", (long long)s->auc_positives_any);
    put(&b, ",\n  \"drift_rmse_px\": ");
    num(&b, s->drift_rmse_px);
    put(&b, ",\n  \"region_iou\": ");
    num(&b, s->region_iou);
    put(&b, "\n}\n");
    if (b.fail) {
        free(b.s);
        return TMD_FAIL(ctx, TMD_ERR_NOMEM, "out of memory for the score JSON");
    }
    *json = b.s;
    return TMD_OK;
}
