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


tmd_status tmd_dynamics_maps(tmd_ctx *ctx, MPI_Comm comm, const tmd_dyn_params *prm, int64_t H, int64_t W, int64_t T,
                             const tmd_site_table *sites, const tmd_defect_table *defects, const double *drift,
                             tmd_dyn_maps *maps)
{
    tmd_status st = TMD_OK;
    int rank, nranks;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &nranks);
    point *pts = NULL;
    int64_t *loc = NULL;     /* (NLAYER, lrows, gw) this rank's deposits */
    int64_t *own = NULL;     /* (NLAYER, rows, gw) summed owned block */
    int64_t *sbuf = NULL, *rbuf = NULL;
    int *sc = NULL, *sd = NULL, *rc = NULL, *rd = NULL;
    int64_t *ext = NULL;     /* (nranks, 2) every rank's deposit rows [lr0, lr1) */
    int64_t *parent = NULL, *lab = NULL, *edges = NULL, *all_edges = NULL, *pairs = NULL, *uniq = NULL, *uparent = NULL;
    int64_t *stats = NULL, *all_stats = NULL;
    int *ecounts = NULL, *edispl = NULL;
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
    int64_t ns = sites ? sites->n : 0, nd = defects ? defects->n : 0, np = 0;
    if (!st) st = tmd_calloc(ctx, (void **)&pts, (size_t)(2 * ns + nd + 1), sizeof(point), "density points");
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
    /* rows of the coarse grid this rank deposits into */
    double reach = 4 * sig;
    int64_t lr0 = gh, lr1 = 0;
    for (int64_t k = 0; k < np; k++) {
        int64_t a = (int64_t)floor((pts[k].y - reach + 0.5) / bin), z = (int64_t)floor((pts[k].y + reach + 0.5) / bin) + 1;
        if (a < 0) a = 0;
        if (z > gh) z = gh;
        if (a < lr0) lr0 = a;
        if (z > lr1) lr1 = z;
    }
    if (lr1 <= lr0) lr0 = lr1 = 0;
    int64_t lrows = lr1 - lr0;
    st = tmd_calloc(ctx, (void **)&loc, (size_t)(NLAYER * lrows * gw + 1), sizeof(int64_t), "density deposits");
    if (!st) st = tmd_calloc(ctx, (void **)&own, (size_t)(NLAYER * maps->rows * gw + 1), sizeof(int64_t), "density block");
    if (!st) st = tmd_calloc(ctx, (void **)&ext, (size_t)nranks * 2, sizeof(int64_t), "deposit extents");
    if (!st) st = tmd_calloc(ctx, (void **)&sc, (size_t)nranks * 4, sizeof(int), "density counts");
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    for (int64_t k = 0; k < np; k++) {
        const point *p = &pts[k];
        if (p->layer == L_COUNT) {
            int64_t gy = (int64_t)floor((p->y + 0.5) / bin), gx = (int64_t)floor((p->x + 0.5) / bin);
            if (gy >= lr0 && gy < lr1 && gx >= 0 && gx < gw) loc[((int64_t)L_COUNT * lrows + gy - lr0) * gw + gx] += 1;
            continue;
        }
        int64_t y0 = (int64_t)floor((p->y - reach + 0.5) / bin), y1 = (int64_t)floor((p->y + reach + 0.5) / bin);
        int64_t x0 = (int64_t)floor((p->x - reach + 0.5) / bin), x1 = (int64_t)floor((p->x + reach + 0.5) / bin);
        for (int64_t gy = y0 < lr0 ? lr0 : y0; gy <= y1 && gy < lr1; gy++) {
            double cy = (gy + 0.5) * bin - 0.5;
            for (int64_t gx = x0 < 0 ? 0 : x0; gx <= x1 && gx < gw; gx++) {
                double cx = (gx + 0.5) * bin - 0.5;
                double r2 = (cx - p->x) * (cx - p->x) + (cy - p->y) * (cy - p->y);
                if (r2 > reach * reach) continue;
                double v = p->w * norm * exp(-r2 / (2 * sig * sig));
                loc[((int64_t)p->layer * lrows + gy - lr0) * gw + gx] += llround(v * QSCALE);
            }
        }
    }
    /* send each owner the rows of its block that this rank touched */
    int64_t mine[2] = {lr0, lr1};
    MPI_Allgather(mine, 2, MPI_INT64_T, ext, 2, MPI_INT64_T, comm);
    sd = sc + nranks;
    rc = sc + 2 * nranks;
    rd = sc + 3 * nranks;
    int64_t stot = 0, rtot = 0;
    for (int r = 0; r < nranks; r++) {
        int64_t o0, on;
        row_block(gh, r, nranks, &o0, &on);
        int64_t a = lr0 > o0 ? lr0 : o0, z = lr1 < o0 + on ? lr1 : o0 + on;
        int64_t cnt = z > a ? NLAYER * (z - a) * gw : 0;
        int64_t b0 = ext[2 * r] > maps->row0 ? ext[2 * r] : maps->row0;
        int64_t b1 = ext[2 * r + 1] < maps->row0 + maps->rows ? ext[2 * r + 1] : maps->row0 + maps->rows;
        int64_t rcnt = b1 > b0 ? NLAYER * (b1 - b0) * gw : 0;
        if (stot + cnt > INT_MAX || rtot + rcnt > INT_MAX) {
            st = TMD_FAIL(ctx, TMD_ERR_RANGE, "maps: the coarse grid %lldx%lld is too large for one exchange; raise density_bin_px",
                          (long long)gh, (long long)gw);
            break;
        }
        sc[r] = (int)cnt;
        sd[r] = (int)stot;
        rc[r] = (int)rcnt;
        rd[r] = (int)rtot;
        stot += cnt;
        rtot += rcnt;
    }
    if (!st) st = tmd_calloc(ctx, (void **)&sbuf, (size_t)stot + 1, sizeof(int64_t), "density send");
    if (!st) st = tmd_calloc(ctx, (void **)&rbuf, (size_t)rtot + 1, sizeof(int64_t), "density receive");
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    for (int r = 0; r < nranks; r++) {
        int64_t o0, on;
        row_block(gh, r, nranks, &o0, &on);
        int64_t a = lr0 > o0 ? lr0 : o0, z = lr1 < o0 + on ? lr1 : o0 + on;
        if (z <= a) continue;
        int64_t *dst = sbuf + sd[r];
        for (int l = 0; l < NLAYER; l++)
            for (int64_t gy = a; gy < z; gy++, dst += gw) memcpy(dst, loc + ((int64_t)l * lrows + gy - lr0) * gw, gw * sizeof(int64_t));
    }
    st = TMD_MPI(ctx, MPI_Alltoallv(sbuf, sc, sd, MPI_INT64_T, rbuf, rc, rd, MPI_INT64_T, comm));
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    for (int r = 0; r < nranks; r++) {
        int64_t b0 = ext[2 * r] > maps->row0 ? ext[2 * r] : maps->row0;
        int64_t b1 = ext[2 * r + 1] < maps->row0 + maps->rows ? ext[2 * r + 1] : maps->row0 + maps->rows;
        if (b1 <= b0) continue;
        const int64_t *src = rbuf + rd[r];
        for (int l = 0; l < NLAYER; l++)
            for (int64_t gy = b0; gy < b1; gy++, src += gw) {
                int64_t *d = own + ((int64_t)l * maps->rows + gy - maps->row0) * gw;
                for (int64_t x = 0; x < gw; x++) d[x] += src[x];
            }
    }
    int64_t nb = maps->rows * gw;
    st = tmd_calloc(ctx, (void **)&maps->unstable, (size_t)nb + 1, sizeof(float), "unstable density map");
    if (!st) st = tmd_calloc(ctx, (void **)&maps->vacancy, (size_t)3 * nb + 1, sizeof(float), "vacancy density map");
    if (!st) st = tmd_calloc(ctx, (void **)&parent, (size_t)nb + 1, sizeof(int64_t), "region labels");
    if (!st) st = tmd_calloc(ctx, (void **)&lab, (size_t)nb + 1, sizeof(int64_t), "region labels");
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    for (int64_t i = 0; i < nb; i++) {
        maps->unstable[i] = (float)(own[L_UNSTABLE * nb + i] / QSCALE);
        for (int l = 0; l < 3; l++) maps->vacancy[l * nb + i] = (float)(own[(L_VM + l) * nb + i] / QSCALE);
    }
    /* regions: 8-connected components of the bins above the threshold */
    int64_t qthr = llround(prm->region_threshold * QSCALE);
    if (!sites) {
        /* single images: defect-rich = at least twice the image's mean vacancy density (and
         * above region_threshold), from an exact integer sum over every rank's bins */
        int64_t sum = 0;
        for (int64_t i = 0; i < nb; i++) sum += own[L_VM * nb + i] + own[L_VX * nb + i] + own[L_VX2 * nb + i];
        st = TMD_MPI(ctx, MPI_Allreduce(MPI_IN_PLACE, &sum, 1, MPI_INT64_T, MPI_SUM, comm));
        if (st) goto cleanup;
        int64_t twice_mean = gh * gw > 0 ? 2 * (sum / (gh * gw)) : 0;
        if (twice_mean > qthr) qthr = twice_mean;
    }
    for (int64_t i = 0; i < nb; i++) {
        int64_t v = sites ? own[L_UNSTABLE * nb + i] : own[L_VM * nb + i] + own[L_VX * nb + i] + own[L_VX2 * nb + i];
        parent[i] = v > qthr ? i : -1;
    }
    for (int64_t r = 0; r < maps->rows; r++)
        for (int64_t c = 0; c < gw; c++) {
            int64_t i = r * gw + c;
            if (parent[i] < 0) continue;
            if (c > 0 && parent[i - 1] >= 0) tmd_uf_union(parent, i, i - 1);
            if (r > 0) {
                for (int64_t dc = -1; dc <= 1; dc++) {
                    int64_t cc = c + dc;
                    if (cc >= 0 && cc < gw && parent[i - gw + dc] >= 0) tmd_uf_union(parent, i, i - gw + dc);
                }
            }
        }
    /* provisional label: global index of the component's first bin (its root is its minimum) */
    int64_t base = maps->row0 * gw;
    for (int64_t i = 0; i < nb; i++) lab[i] = parent[i] >= 0 ? base + tmd_uf_find(parent, i) : -1;
    /* edge rows of every rank: (first row, last row) labels */
    st = tmd_calloc(ctx, (void **)&edges, (size_t)2 * gw + 1, sizeof(int64_t), "edge labels");
    if (!st) st = tmd_calloc(ctx, (void **)&all_edges, (size_t)2 * gw * nranks + 1, sizeof(int64_t), "edge labels");
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    for (int64_t c = 0; c < gw; c++) {
        edges[c] = maps->rows > 0 ? lab[c] : -1;
        edges[gw + c] = maps->rows > 0 ? lab[(maps->rows - 1) * gw + c] : -1;
    }
    st = TMD_MPI(ctx, MPI_Allgather(edges, (int)(2 * gw), MPI_INT64_T, all_edges, (int)(2 * gw), MPI_INT64_T, comm));
    if (st) goto cleanup;
    int64_t npairs = 0;
    st = tmd_calloc(ctx, (void **)&pairs, (size_t)(6 * gw * nranks + 2), sizeof(int64_t), "edge pairs");
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    /* row blocks are consecutive in rank order; empty blocks are skipped */
    for (int r = 0, prev = -1; r < nranks; r++) {
        int64_t o0, on;
        row_block(gh, r, nranks, &o0, &on);
        if (on == 0) continue;
        if (prev >= 0) {
            const int64_t *lo = all_edges + (size_t)prev * 2 * gw + gw, *hi = all_edges + (size_t)r * 2 * gw;
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
        prev = r;
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
    for (int64_t i = 0; i < nb; i++) {
        if (lab[i] < 0) continue;
        int64_t u = tmd_i64_find_sorted(uniq, nu, lab[i]);
        if (u >= 0) lab[i] = uniq[tmd_uf_find(uparent, u)]; /* sorted: the root is the smallest label */
    }
    /* per local piece: (label, bins, sum gx, sum gy, sites) -> all ranks */
    int64_t npiece = 0;
    st = tmd_calloc(ctx, (void **)&stats, (size_t)5 * nb + 5, sizeof(int64_t), "region pieces");
    if (!st) st = tmd_calloc(ctx, (void **)&ecounts, (size_t)nranks * 2, sizeof(int), "region counts");
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    /* the distinct labels of this block, sorted; one piece per label */
    for (int64_t i = 0; i < nb; i++)
        if (lab[i] >= 0) stats[npiece++] = lab[i];
    qsort(stats, (size_t)npiece, sizeof(int64_t), tmd_i64_compare);
    {
        int64_t nl = 0;
        for (int64_t k = 0; k < npiece; k++)
            if (nl == 0 || stats[nl - 1] != stats[k]) stats[nl++] = stats[k];
        npiece = nl;
        /* spread to rows of 5, from the end so nothing is overwritten */
        for (int64_t k = npiece - 1; k >= 0; k--) {
            int64_t l = stats[k];
            memset(stats + 5 * k, 0, 5 * sizeof(int64_t));
            stats[5 * k] = l;
        }
    }
    for (int64_t i = 0; i < nb; i++) {
        if (lab[i] < 0) continue;
        int64_t lo = 0, hi = npiece - 1, p = -1;
        while (lo <= hi) {
            int64_t mid = (lo + hi) / 2;
            if (stats[5 * mid] == lab[i]) { p = mid; break; }
            if (stats[5 * mid] < lab[i]) lo = mid + 1;
            else hi = mid - 1;
        }
        if (p < 0) continue; /* cannot happen: every label was listed */
        stats[5 * p + 1] += 1;
        stats[5 * p + 2] += i % gw;
        stats[5 * p + 3] += maps->row0 + i / gw;
        stats[5 * p + 4] += own[L_COUNT * nb + i];
    }
    edispl = ecounts + nranks;
    int mycount = (int)(5 * npiece), total = 0;
    MPI_Allgather(&mycount, 1, MPI_INT, ecounts, 1, MPI_INT, comm);
    for (int r = 0; r < nranks; r++) { edispl[r] = total; total += ecounts[r]; }
    st = tmd_calloc(ctx, (void **)&all_stats, (size_t)total + 5, sizeof(int64_t), "region pieces");
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    st = TMD_MPI(ctx, MPI_Allgatherv(stats, mycount, MPI_INT64_T, all_stats, ecounts, edispl, MPI_INT64_T, comm));
    if (st) goto cleanup;
    int64_t nall = total / 5;
    /* sort pieces by label (rows of 5) and merge */
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
    free(loc);
    free(own);
    free(sbuf);
    free(rbuf);
    free(sc);
    free(ext);
    free(parent);
    free(lab);
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
