/* Kernel-density maps on a coarse grid and defect-rich regions (see tmd/dynamics.h). */
#include "tmd/dynamics.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { L_UNSTABLE = 0, L_VM = 1, L_VX = 2, L_VX2 = 3, L_COUNT = 4, NLAYER = 5 };
#define QSCALE 16777216.0 /* 2^24: fixed point of densities (exact, order-free sums) */

void tmd_dyn_region_list_free(tmd_dyn_region_list *r)
{
    if (!r) return;
    free(r->id);
    free(r->x);
    free(r->y);
    free(r->area_px);
    free(r->n_sites);
    memset(r, 0, sizeof *r);
}

void tmd_dyn_maps_free(tmd_dyn_maps *m)
{
    if (!m) return;
    free(m->unstable);
    free(m->vacancy);
    tmd_dyn_region_list_free(&m->regions);
    memset(m, 0, sizeof *m);
}

static void row_block(int64_t rows, int rank, int nranks, int64_t *r0, int64_t *n)
{
    int64_t base = rows / nranks, rem = rows % nranks;
    *r0 = rank * base + (rank < rem ? rank : rem);
    *n = base + (rank < rem ? 1 : 0);
}

typedef struct {
    double x, y, w;
    int layer;
} point;

/* coarse rows [*a, *z) a point deposits into (its one bin's row for the count layer) */
static void point_rows(const point *p, double reach, int bin, int64_t gh, int64_t *a, int64_t *z)
{
    if (p->layer == L_COUNT) {
        *a = (int64_t)floor((p->y + 0.5) / bin);
        *z = *a + 1;
    } else {
        *a = (int64_t)floor((p->y - reach + 0.5) / bin);
        *z = (int64_t)floor((p->y + reach + 0.5) / bin) + 1;
    }
    if (*a < 0) *a = 0;
    if (*z > gh) *z = gh;
}

/* Adds the fixed-point kernel values of every point to band rows [b0, b1) of buf
 * (NLAYER, b1 - b0, gw). Integer sums: the result does not depend on the order of points. */
static void deposit_band(const point *pts, int64_t np, int64_t b0, int64_t b1, int64_t gw, int bin, double sig,
                         double norm, int64_t *buf)
{
    double reach = 4 * sig;
    int64_t brows = b1 - b0;
    for (int64_t k = 0; k < np; k++) {
        const point *p = &pts[k];
        if (p->layer == L_COUNT) {
            int64_t gy = (int64_t)floor((p->y + 0.5) / bin), gx = (int64_t)floor((p->x + 0.5) / bin);
            if (gy >= b0 && gy < b1 && gx >= 0 && gx < gw) buf[((int64_t)L_COUNT * brows + gy - b0) * gw + gx] += 1;
            continue;
        }
        int64_t y0 = (int64_t)floor((p->y - reach + 0.5) / bin), y1 = (int64_t)floor((p->y + reach + 0.5) / bin);
        if (y1 < b0 || y0 >= b1) continue;
        int64_t x0 = (int64_t)floor((p->x - reach + 0.5) / bin), x1 = (int64_t)floor((p->x + reach + 0.5) / bin);
        for (int64_t gy = y0 < b0 ? b0 : y0; gy <= y1 && gy < b1; gy++) {
            double cy = (gy + 0.5) * bin - 0.5;
            for (int64_t gx = x0 < 0 ? 0 : x0; gx <= x1 && gx < gw; gx++) {
                double cx = (gx + 0.5) * bin - 0.5;
                double r2 = (cx - p->x) * (cx - p->x) + (cy - p->y) * (cy - p->y);
                if (r2 > reach * reach) continue;
                double v = p->w * norm * exp(-r2 / (2 * sig * sig));
                buf[((int64_t)p->layer * brows + gy - b0) * gw + gx] += llround(v * QSCALE);
            }
        }
    }
}

/* provisional components of the streaming row-by-row labelling */
typedef struct {
    int64_t n, cap;
    int64_t *parent;        /* union-find over provisional ids (union keeps the smaller id) */
    int64_t *stat;          /* (cap, 5): first global bin index, bins, sum gx, sum gy, sites */
} comps;

static int comps_new(comps *c, int64_t first)
{
    if (c->n == c->cap) {
        int64_t cap = c->cap ? 2 * c->cap : 1024;
        int64_t *p = realloc(c->parent, (size_t)cap * sizeof(int64_t));
        if (!p) return -1;
        c->parent = p;
        int64_t *s = realloc(c->stat, (size_t)cap * 5 * sizeof(int64_t));
        if (!s) return -1;
        c->stat = s;
        c->cap = cap;
    }
    int64_t id = c->n++;
    c->parent[id] = id;
    memset(c->stat + 5 * id, 0, 5 * sizeof(int64_t));
    c->stat[5 * id] = first;
    return 0;
}

enum { BAND_ROWS = 32 };

tmd_status tmd_dynamics_maps(tmd_ctx *ctx, MPI_Comm comm, const tmd_dyn_params *prm, int64_t H, int64_t W, int64_t T,
                             const tmd_site_table *sites, const tmd_defect_table *defects, const double *drift,
                             tmd_dyn_maps *maps)
{
    tmd_status st = TMD_OK;
    int rank, nranks;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &nranks);
    point *pts = NULL, *rpts = NULL, *spts = NULL;
    int64_t *buf = NULL;     /* (NLAYER, BAND_ROWS, gw) fixed-point sums of one band of this rank's rows */
    int *sc = NULL, *sd = NULL, *rc = NULL, *rd = NULL;
    int64_t *cur = NULL, *prev = NULL, *first = NULL; /* provisional ids of a row (gw each) */
    comps cp = {0};
    int64_t *edges = NULL, *all_edges = NULL, *pairs = NULL, *uniq = NULL, *uparent = NULL;
    int64_t *stats = NULL, *all_stats = NULL;
    int *ecounts = NULL, *edispl = NULL;
    int64_t *o0s = NULL, *cnt = NULL; /* (nranks + 1) first row of every rank's block; points per rank */
    memset(maps, 0, sizeof *maps);
    if (prm->bin_px < 1 || H < 1 || W < 1 || T < 1)
        st = TMD_FAIL(ctx, TMD_ERR_ARG, "maps: bin %d px, image %lldx%lld, %lld frames", prm->bin_px, (long long)H,
                      (long long)W, (long long)T);
    int bin = prm->bin_px > 0 ? prm->bin_px : 1;
    int64_t gh = (H + bin - 1) / bin, gw = (W + bin - 1) / bin;
    maps->gh = gh;
    maps->gw = gw;
    maps->bin_px = bin;
    row_block(gh, rank, nranks, &maps->row0, &maps->rows);
    /* kernel: Gaussian sigma widened by the bin (box) so that narrow kernels keep their mass */
    double sig = sqrt(prm->sigma_px * prm->sigma_px + bin * bin / 12.0);
    double ang = prm->pixel_size > 0 ? prm->pixel_size : 1.0;
    double sig_nm = sig * ang / 10.0, norm = 1.0 / (2 * M_PI * sig_nm * sig_nm);
    double reach = 4 * sig;
    int64_t ns = sites ? sites->n : 0, nd = defects ? defects->n : 0, np = 0;
    if (!st) st = tmd_calloc(ctx, (void **)&pts, (size_t)(2 * ns + nd + 1), sizeof(point), "density points");
    if (!st) st = tmd_calloc(ctx, (void **)&sc, (size_t)nranks * 4, sizeof(int), "density counts");
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    for (int64_t k = 0; k < ns; k++) {
        if (!sites->unstable[k]) continue;
        pts[np++] = (point){sites->x[k], sites->y[k], 1.0, L_UNSTABLE};
        pts[np++] = (point){sites->x[k], sites->y[k], 1.0, L_COUNT};
    }
    for (int64_t k = 0; k < nd; k++) {
        int64_t t = defects->frame[k];
        int ty = defects->type[k];
        if (t < 0 || t >= T || ty < 1 || ty > 3) continue;
        double dx = drift ? drift[2 * t] : 0, dy = drift ? drift[2 * t + 1] : 0;
        pts[np++] = (point){defects->x[k] - dx, defects->y[k] - dy, 1.0 / (double)T, ty};
    }
    /* every point goes to each rank whose row block it deposits into (points, not grid rows,
     * cross the network: no rank ever holds more of the grid than one band of its own rows) */
    sd = sc + nranks;
    rc = sc + 2 * nranks;
    rd = sc + 3 * nranks;
    st = tmd_calloc(ctx, (void **)&o0s, (size_t)nranks + 1, sizeof(int64_t), "row blocks");
    if (!st) st = tmd_calloc(ctx, (void **)&cnt, (size_t)nranks, sizeof(int64_t), "density counts");
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    for (int r = 0; r < nranks; r++) {
        int64_t on;
        row_block(gh, r, nranks, &o0s[r], &on);
    }
    o0s[nranks] = gh;
    for (int64_t k = 0; k < np; k++) {
        int64_t a, z;
        point_rows(&pts[k], reach, bin, gh, &a, &z);
        for (int r = 0; r < nranks; r++)
            if (a < o0s[r + 1] && z > o0s[r] && o0s[r + 1] > o0s[r]) cnt[r]++;
    }
    int64_t stot = 0;
    for (int r = 0; r < nranks; r++) {
        if (cnt[r] * (int64_t)sizeof(point) > INT_MAX || stot * (int64_t)sizeof(point) > INT_MAX) {
            st = TMD_FAIL(ctx, TMD_ERR_RANGE, "maps: %lld points for rank %d are too many for one exchange",
                          (long long)cnt[r], r);
            break;
        }
        sc[r] = (int)(cnt[r] * (int64_t)sizeof(point));
        sd[r] = (int)(stot * (int64_t)sizeof(point));
        stot += cnt[r];
    }
    if (!st) st = tmd_calloc(ctx, (void **)&spts, (size_t)stot + 1, sizeof(point), "density send");
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    for (int r = 0; r < nranks; r++) cnt[r] = sd[r] / (int64_t)sizeof(point);
    for (int64_t k = 0; k < np; k++) {
        int64_t a, z;
        point_rows(&pts[k], reach, bin, gh, &a, &z);
        for (int r = 0; r < nranks; r++)
            if (a < o0s[r + 1] && z > o0s[r] && o0s[r + 1] > o0s[r]) spts[cnt[r]++] = pts[k];
    }
    free(pts);
    pts = NULL;
    st = TMD_MPI(ctx, MPI_Alltoall(sc, 1, MPI_INT, rc, 1, MPI_INT, comm));
    int64_t rtot = 0;
    for (int r = 0; r < nranks && !st; r++) {
        if (rtot + rc[r] > INT_MAX) {
            st = TMD_FAIL(ctx, TMD_ERR_RANGE, "maps: rank %d receives too many points for one exchange", rank);
            break;
        }
        rd[r] = (int)rtot;
        rtot += rc[r];
    }
    int64_t nrp = rtot / (int64_t)sizeof(point);
    if (!st) st = tmd_calloc(ctx, (void **)&rpts, (size_t)nrp + 1, sizeof(point), "density receive");
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    st = TMD_MPI(ctx, MPI_Alltoallv(spts, sc, sd, MPI_BYTE, rpts, rc, rd, MPI_BYTE, comm));
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    free(spts);
    spts = NULL;

    int64_t nb = maps->rows * gw;
    size_t band_bins = (size_t)NLAYER * BAND_ROWS * (size_t)gw;
    st = tmd_calloc(ctx, (void **)&maps->unstable, (size_t)nb + 1, sizeof(float), "unstable density map");
    if (!st) st = tmd_calloc(ctx, (void **)&maps->vacancy, (size_t)3 * nb + 1, sizeof(float), "vacancy density map");
    if (!st) st = tmd_calloc(ctx, (void **)&buf, band_bins + 1, sizeof(int64_t), "density band");
    if (!st) st = tmd_calloc(ctx, (void **)&cur, (size_t)gw + 1, sizeof(int64_t), "region row labels");
    if (!st) st = tmd_calloc(ctx, (void **)&prev, (size_t)gw + 1, sizeof(int64_t), "region row labels");
    if (!st) st = tmd_calloc(ctx, (void **)&first, (size_t)gw + 1, sizeof(int64_t), "region row labels");
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    maps->work_bytes = band_bins * sizeof(int64_t);
    /* regions: 8-connected components of the bins above the threshold. Single images need
     * the image's total vacancy density first (an exact integer sum over every rank's bins):
     * a first pass over the bands makes the maps and the sum, a second labels; stacks label
     * in the first pass. */
    int64_t qthr = llround(prm->region_threshold * QSCALE);
    int passes = sites ? 1 : 2;
    int64_t sum = 0;
    for (int64_t c = 0; c < gw; c++) prev[c] = first[c] = -1;
    for (int pass = 0; pass < passes; pass++) {
        int make_maps = pass == 0, label = pass == passes - 1;
        if (label && !sites) {
            st = TMD_MPI(ctx, MPI_Allreduce(MPI_IN_PLACE, &sum, 1, MPI_INT64_T, MPI_SUM, comm));
            if (st) goto cleanup;
            int64_t twice_mean = gh * gw > 0 ? 2 * (sum / (gh * gw)) : 0;
            if (twice_mean > qthr) qthr = twice_mean;
        }
        for (int64_t b0 = 0; b0 < maps->rows; b0 += BAND_ROWS) {
            int64_t b1 = b0 + BAND_ROWS < maps->rows ? b0 + BAND_ROWS : maps->rows, brows = b1 - b0;
            memset(buf, 0, band_bins * sizeof(int64_t));
            deposit_band(rpts, nrp, maps->row0 + b0, maps->row0 + b1, gw, bin, sig, norm, buf);
#define BAND(l, r, c) buf[((int64_t)(l) * brows + (r)) * gw + (c)]
            if (make_maps)
                for (int64_t r = 0; r < brows; r++)
                    for (int64_t c = 0; c < gw; c++) {
                        int64_t i = (b0 + r) * gw + c;
                        maps->unstable[i] = (float)(BAND(L_UNSTABLE, r, c) / QSCALE);
                        for (int l = 0; l < 3; l++) maps->vacancy[l * nb + i] = (float)(BAND(L_VM + l, r, c) / QSCALE);
                        if (!sites) sum += BAND(L_VM, r, c) + BAND(L_VX, r, c) + BAND(L_VX2, r, c);
                    }
            if (!label) continue;
            for (int64_t r = 0; r < brows; r++) {
                int64_t grow = maps->row0 + b0 + r;
                for (int64_t c = 0; c < gw; c++) {
                    int64_t v = sites ? BAND(L_UNSTABLE, r, c) : BAND(L_VM, r, c) + BAND(L_VX, r, c) + BAND(L_VX2, r, c);
                    if (v <= qthr) {
                        cur[c] = -1;
                        continue;
                    }
                    int64_t id;
                    if (c > 0 && cur[c - 1] >= 0) id = cur[c - 1];
                    else {
                        if (comps_new(&cp, grow * gw + c)) {
                            st = TMD_FAIL(ctx, TMD_ERR_NOMEM, "maps: no memory for %lld region pieces", (long long)cp.n);
                            break;
                        }
                        id = cp.n - 1;
                    }
                    cur[c] = id;
                    for (int64_t dc = -1; dc <= 1; dc++)
                        if (c + dc >= 0 && c + dc < gw && prev[c + dc] >= 0) tmd_uf_union(cp.parent, id, prev[c + dc]);
                    int64_t *s = cp.stat + 5 * id;
                    s[1] += 1;
                    s[2] += c;
                    s[3] += grow;
                    s[4] += BAND(L_COUNT, r, c);
                }
                if (st) break;
                if (b0 + r == 0) memcpy(first, cur, (size_t)gw * sizeof(int64_t));
                int64_t *t = prev;
                prev = cur;
                cur = t;
            }
#undef BAND
            st = tmd_agree(ctx, comm, st);
            if (st) goto cleanup;
        }
    }
    /* roots: the smallest provisional id of a component is its first bin in row-major order;
     * its label is that bin's global index (the same label on any number of ranks) */
    for (int64_t id = 0; id < cp.n; id++) {
        int64_t root = tmd_uf_find(cp.parent, id);
        if (root == id) continue;
        int64_t *s = cp.stat + 5 * id, *d = cp.stat + 5 * root;
        if (s[0] < d[0]) d[0] = s[0];
        for (int q = 1; q < 5; q++) d[q] += s[q];
        s[1] = 0; /* merged into its root */
    }
    /* edge rows of every rank: (first row, last row) labels */
    st = tmd_calloc(ctx, (void **)&edges, (size_t)2 * gw + 1, sizeof(int64_t), "edge labels");
    if (!st) st = tmd_calloc(ctx, (void **)&all_edges, (size_t)2 * gw * nranks + 1, sizeof(int64_t), "edge labels");
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    for (int64_t c = 0; c < gw; c++) {
        edges[c] = maps->rows > 0 && first[c] >= 0 ? cp.stat[5 * tmd_uf_find(cp.parent, first[c])] : -1;
        edges[gw + c] = maps->rows > 0 && prev[c] >= 0 ? cp.stat[5 * tmd_uf_find(cp.parent, prev[c])] : -1;
    }
    st = TMD_MPI(ctx, MPI_Allgather(edges, (int)(2 * gw), MPI_INT64_T, all_edges, (int)(2 * gw), MPI_INT64_T, comm));
    if (st) goto cleanup;
    int64_t npairs = 0;
    st = tmd_calloc(ctx, (void **)&pairs, (size_t)(6 * gw * nranks + 2), sizeof(int64_t), "edge pairs");
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    /* row blocks are consecutive in rank order; empty blocks are skipped */
    for (int r = 0, prv = -1; r < nranks; r++) {
        int64_t o0, on;
        row_block(gh, r, nranks, &o0, &on);
        if (on == 0) continue;
        if (prv >= 0) {
            const int64_t *lo = all_edges + (size_t)prv * 2 * gw + gw, *hi = all_edges + (size_t)r * 2 * gw;
            for (int64_t c = 0; c < gw; c++) {
                if (hi[c] < 0) continue;
                for (int64_t dc = -1; dc <= 1; dc++)
                    if (c + dc >= 0 && c + dc < gw && lo[c + dc] >= 0) {
                        pairs[2 * npairs] = lo[c + dc];
                        pairs[2 * npairs + 1] = hi[c];
                        npairs++;
                    }
            }
        }
        prv = r;
    }
    /* union-find over the labels that appear in pairs: the same on every rank */
    st = tmd_calloc(ctx, (void **)&uniq, (size_t)2 * npairs + 1, sizeof(int64_t), "edge labels");
    if (!st) st = tmd_calloc(ctx, (void **)&uparent, (size_t)2 * npairs + 1, sizeof(int64_t), "edge union-find");
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    memcpy(uniq, pairs, (size_t)2 * npairs * sizeof(int64_t));
    qsort(uniq, (size_t)2 * npairs, sizeof(int64_t), tmd_i64_compare);
    int64_t nu = 0;
    for (int64_t i = 0; i < 2 * npairs; i++)
        if (nu == 0 || uniq[nu - 1] != uniq[i]) uniq[nu++] = uniq[i];
    for (int64_t i = 0; i < nu; i++) uparent[i] = i;
    for (int64_t k = 0; k < npairs; k++)
        tmd_uf_union(uparent, tmd_i64_find_sorted(uniq, nu, pairs[2 * k]), tmd_i64_find_sorted(uniq, nu, pairs[2 * k + 1]));
    /* one piece per local component: (label, bins, sum gx, sum gy, sites) -> all ranks */
    int64_t npiece = 0;
    st = tmd_calloc(ctx, (void **)&stats, (size_t)5 * cp.n + 5, sizeof(int64_t), "region pieces");
    if (!st) st = tmd_calloc(ctx, (void **)&ecounts, (size_t)nranks * 2, sizeof(int), "region counts");
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    for (int64_t id = 0; id < cp.n; id++) {
        const int64_t *s = cp.stat + 5 * id;
        if (tmd_uf_find(cp.parent, id) != id) continue;
        int64_t lab = s[0], u = tmd_i64_find_sorted(uniq, nu, lab);
        if (u >= 0) lab = uniq[tmd_uf_find(uparent, u)]; /* sorted: the root is the smallest label */
        int64_t *d = stats + 5 * npiece++;
        d[0] = lab;
        for (int q = 1; q < 5; q++) d[q] = s[q];
    }
    edispl = ecounts + nranks;
    if (5 * npiece > INT_MAX) st = TMD_FAIL(ctx, TMD_ERR_RANGE, "maps: %lld region pieces on rank %d", (long long)npiece, rank);
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    int mycount = (int)(5 * npiece), total = 0;
    MPI_Allgather(&mycount, 1, MPI_INT, ecounts, 1, MPI_INT, comm);
    for (int r = 0; r < nranks; r++) { edispl[r] = total; total += ecounts[r]; }
    st = tmd_calloc(ctx, (void **)&all_stats, (size_t)total + 5, sizeof(int64_t), "region pieces");
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    st = TMD_MPI(ctx, MPI_Allgatherv(stats, mycount, MPI_INT64_T, all_stats, ecounts, edispl, MPI_INT64_T, comm));
    if (st) goto cleanup;
    int64_t nall = total / 5;
    /* sort pieces by label (rows of 5) and merge (integer sums: the order of equal labels does not matter) */
    {
        int64_t *idx = NULL;
        st = tmd_calloc(ctx, (void **)&idx, (size_t)nall + 1, sizeof(int64_t) * 2, "region sort");
        if (st) goto cleanup;
        for (int64_t k = 0; k < nall; k++) { idx[2 * k] = all_stats[5 * k]; idx[2 * k + 1] = k; }
        qsort(idx, (size_t)nall, 2 * sizeof(int64_t), tmd_i64_compare); /* compares the label (first int64) */
        tmd_dyn_region_list *R = &maps->regions;
        R->id = calloc((size_t)nall + 1, sizeof(int64_t));
        R->x = calloc((size_t)nall + 1, sizeof(double));
        R->y = calloc((size_t)nall + 1, sizeof(double));
        R->area_px = calloc((size_t)nall + 1, sizeof(double));
        R->n_sites = calloc((size_t)nall + 1, sizeof(int64_t));
        if (!R->id || !R->x || !R->y || !R->area_px || !R->n_sites) {
            free(idx);
            st = TMD_FAIL(ctx, TMD_ERR_NOMEM, "maps: no memory for %lld region pieces", (long long)nall);
            goto cleanup;
        }
        for (int64_t k = 0; k < nall;) {
            int64_t label = idx[2 * k], bins = 0, sx = 0, sy = 0, nsite = 0;
            for (; k < nall && idx[2 * k] == label; k++) {
                const int64_t *s = all_stats + 5 * idx[2 * k + 1];
                bins += s[1];
                sx += s[2];
                sy += s[3];
                nsite += s[4];
            }
            if (bins < prm->min_region_bins) continue;
            int64_t r = R->n++;
            R->id[r] = r;
            R->x[r] = ((double)sx / bins + 0.5) * bin - 0.5;
            R->y[r] = ((double)sy / bins + 0.5) * bin - 0.5;
            R->area_px[r] = (double)bins * bin * bin;
            R->n_sites[r] = nsite;
        }
        free(idx);
    }
cleanup:
    free(pts);
    free(o0s);
    free(cnt);
    free(spts);
    free(rpts);
    free(buf);
    free(sc);
    free(cur);
    free(prev);
    free(first);
    free(cp.parent);
    free(cp.stat);
    free(edges);
    free(all_edges);
    free(pairs);
    free(uniq);
    free(uparent);
    free(stats);
    free(all_stats);
    free(ecounts);
    if (st) tmd_dyn_maps_free(maps);
    return st;
}
