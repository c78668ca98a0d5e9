/* Per-site instability over time (see tmd/dynamics.h). */
#include "tmd/dynamics.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void tmd_dyn_params_from_config(tmd_dyn_params *p, const tmd_config *cfg, double pixel_size)
{
    memset(p, 0, sizeof *p);
    p->threshold = cfg->instability_threshold;
    p->bin_px = cfg->density_bin_px;
    p->pixel_size = pixel_size;
    p->sigma_px = pixel_size > 0 ? cfg->density_sigma / pixel_size : cfg->density_sigma;
    p->region_threshold = cfg->region_threshold;
    p->min_region_bins = cfg->min_region_bins;
    p->tol = 0.45;
    p->fov_margin_px = -1; /* auto: 0.2 bond (columns at the very edge are still found) */
    /* occupancy is the most reliable signal; the species labels of single frames are the
     * noisiest (a chalcogen S/S2/SSe call flickers even on static sites), so they count
     * little (tuned on held-out simulated stacks, docs/accuracy.md) */
    p->w_feature = 1;
    p->w_occupancy = 4;
    p->w_species = 0.25;
    p->w_position = 1;
    p->w_intensity = 1;
    /* a site leans on its neighbours (2 bonds) as far as it was not seen: K = 10 frames
     * (chosen on held-out simulated stacks, docs/accuracy.md) */
    p->nb_frames = 10;
    p->nb_radius = 2.0;
}

void tmd_dynamics_threshold(tmd_site_table *sites, double threshold)
{
    for (int64_t k = 0; k < sites->n; k++) sites->unstable[k] = sites->instability[k] > threshold;
}

/* Mean and standard deviation of k columns of (n, k) values over every rank, from integer
 * sums of round(v * scale): the same numbers on any number of ranks. ok[r] (may be NULL)
 * selects rows. */
static tmd_status fixed_stats(tmd_ctx *ctx, MPI_Comm comm, int64_t n, int k, const double *v, const int8_t *ok,
                              double scale, double *mean, double *sd)
{
    int64_t *s = NULL; /* (2k + 1): sums, sums of squares, count */
    tmd_status st = tmd_calloc(ctx, (void **)&s, (size_t)2 * k + 1, sizeof(int64_t), "fixed-point sums");
    st = tmd_agree(ctx, comm, st);
    if (st) { free(s); return st; }
    for (int64_t r = 0; r < n; r++) {
        if (ok && !ok[r]) continue;
        for (int c = 0; c < k; c++) {
            int64_t q = llround(v[r * k + c] * scale);
            s[c] += q;
            s[k + c] += q * q;
        }
        s[2 * k]++;
    }
    st = TMD_MPI(ctx, MPI_Allreduce(MPI_IN_PLACE, s, 2 * k + 1, MPI_INT64_T, MPI_SUM, comm));
    for (int c = 0; !st && c < k; c++) {
        double N = (double)s[2 * k];
        double m = N > 0 ? (double)s[c] / N / scale : 0;
        double m2 = N > 0 ? (double)s[k + c] / N / (scale * scale) : 0;
        mean[c] = m;
        sd[c] = m2 > m * m ? sqrt(m2 - m * m) : 0;
    }
    free(s);
    return st;
}

/* One shuffled observation: an atom (kind 0) or a vacancy (kind = defect type) at a site in
 * a frame, followed by D floats of scaled latent. */
typedef struct {
    int64_t site;
    double x0, y0;   /* drift-corrected position */
    int32_t frame;
    int8_t kind;
    int8_t species;
    int16_t pad;
    float intensity; /* column intensity, z-scored within its sublattice (global statistics) */
    float pad2;
} rec_hdr;

static size_t rec_size(int D) { return (sizeof(rec_hdr) + (size_t)D * sizeof(float) + 7) / 8 * 8; }

static int cmp_rec(const void *a, const void *b)
{
    const rec_hdr *p = a, *q = b;
    if (p->site != q->site) return p->site < q->site ? -1 : 1;
    if (p->frame != q->frame) return p->frame < q->frame ? -1 : 1;
    if (p->kind != q->kind) return p->kind < q->kind ? -1 : 1;
    if (p->x0 != q->x0) return p->x0 < q->x0 ? -1 : 1;
    if (p->y0 != q->y0) return p->y0 < q->y0 ? -1 : 1;
    return 0;
}

/* Components of a site's score: three rates of change between consecutive frames (flicker),
 * the position spread, and three change-point statistics (a lasting change: a sputtered
 * chalcogen, an exchanged atom): max over splits t of sqrt(n1 n2 / n) |mean before - mean
 * after| of the occupancy, the species (one-hot) and the latent vector. */
enum { NCOMP = 9 }; /* ... + intensity rate and intensity step (z-scored per sublattice) */
enum { NSPECIES_STATES = 10 };

/* Change-point statistic of n vectors of m values, v(k, c) given by the caller's arrays:
 * vals (n, m) row-major. tot and run are scratch of m doubles. */
static double step_stat(const double *vals, int64_t n, int m, double *tot, double *run)
{
    if (n < 2) return 0;
    for (int c = 0; c < m; c++) tot[c] = run[c] = 0;
    for (int64_t k = 0; k < n; k++)
        for (int c = 0; c < m; c++) tot[c] += vals[k * m + c];
    double best = 0;
    for (int64_t t = 1; t < n; t++) {
        for (int c = 0; c < m; c++) run[c] += vals[(t - 1) * m + c];
        double n1 = (double)t, n2 = (double)(n - t), d2 = 0;
        for (int c = 0; c < m; c++) {
            double d = run[c] / n1 - (tot[c] - run[c]) / n2;
            d2 += d * d;
        }
        double v = sqrt(n1 * n2 / (double)n * d2);
        if (v > best) best = v;
    }
    return best;
}


/* Evidence-weighted blend with the neighbours (the sites within R, frame-0 coordinates):
 *   raw_s <- w_s raw_s + (1 - w_s) nb_s,   w_s = n_s / (n_ref + K),
 * n_s = frames in which site s is in view, n_ref = the most frames any site is in view (every
 * rank), K = nb_frames, nb_s = the n-weighted mean raw score of the scorable neighbours
 * (itself excluded). A site seen in every frame keeps nearly its own score; one seen in a few
 * frames at the edge of a drifting field (or never in a pair of frames) leans on its
 * neighbours, whose beam damage is what it most likely shares in the frames where it was not
 * seen. All sites are gathered on every rank (x, y, raw, n: 32 bytes a site) in id order, the
 * same array on any rank count, and neighbours are summed in that order: the result does not
 * depend on the rank count. */
static tmd_status blend_neighbours(tmd_ctx *ctx, MPI_Comm comm, int64_t n, const double *x, const double *y,
                                   const int64_t *nin, const int8_t *ok, double *raw, double K, double R)
{
    int nr, rank;
    MPI_Comm_size(comm, &nr);
    MPI_Comm_rank(comm, &rank);
    tmd_status st = TMD_OK;
    int *cnt = NULL, *dis = NULL;
    double *buf = NULL, *all = NULL, *out = NULL;
    int64_t *head = NULL, *next = NULL;
    st = tmd_calloc(ctx, (void **)&cnt, (size_t)nr * 2, sizeof(int), "blend counts");
    if (!st) st = tmd_calloc(ctx, (void **)&buf, (size_t)(4 * n + 1), sizeof(double), "blend send");
    if (!st) st = tmd_calloc(ctx, (void **)&out, (size_t)(n + 1), sizeof(double), "blend out");
    if (!st && 4 * n > INT_MAX) st = TMD_FAIL(ctx, TMD_ERR_RANGE, "sites: %lld sites on rank %d; use more ranks", (long long)n, rank);
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    dis = cnt + nr;
    int mine = (int)(4 * n);
    int64_t nref = 0;
    for (int64_t s = 0; s < n; s++) {
        buf[4 * s] = x[s];
        buf[4 * s + 1] = y[s];
        buf[4 * s + 2] = ok[s] ? raw[s] : 0;
        buf[4 * s + 3] = ok[s] ? (double)nin[s] : 0;
        if (nin[s] > nref) nref = nin[s];
    }
    st = TMD_MPI(ctx, MPI_Allreduce(MPI_IN_PLACE, &nref, 1, MPI_INT64_T, MPI_MAX, comm));
    if (!st) st = TMD_MPI(ctx, MPI_Allgather(&mine, 1, MPI_INT, cnt, 1, MPI_INT, comm));
    int64_t tot = 0;
    for (int r = 0; !st && r < nr; r++) {
        if (tot + cnt[r] > INT_MAX) st = TMD_FAIL(ctx, TMD_ERR_RANGE, "sites: more than %d site values to gather", INT_MAX);
        dis[r] = (int)tot;
        tot += cnt[r];
    }
    int64_t na = tot / 4;
    if (!st) st = tmd_calloc(ctx, (void **)&all, (size_t)(tot + 1), sizeof(double), "all sites");
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    st = TMD_MPI(ctx, MPI_Allgatherv(buf, mine, MPI_DOUBLE, all, cnt, dis, MPI_DOUBLE, comm));
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    /* grid of R cells over all sites: head[cell] -> first site, next[site] -> next (id order) */
    double xmin = 0, ymin = 0, xmax = 0, ymax = 0;
    for (int64_t q = 0; q < na; q++) {
        double qx = all[4 * q], qy = all[4 * q + 1];
        if (q == 0 || qx < xmin) xmin = qx;
        if (q == 0 || qy < ymin) ymin = qy;
        if (q == 0 || qx > xmax) xmax = qx;
        if (q == 0 || qy > ymax) ymax = qy;
    }
    int64_t gw = (int64_t)((xmax - xmin) / R) + 1, gh = (int64_t)((ymax - ymin) / R) + 1;
    st = tmd_calloc(ctx, (void **)&head, (size_t)(gw * gh + 1), sizeof(int64_t), "site grid");
    if (!st) st = tmd_calloc(ctx, (void **)&next, (size_t)(na + 1), sizeof(int64_t), "site grid links");
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    for (int64_t c = 0; c < gw * gh; c++) head[c] = -1;
    for (int64_t q = na - 1; q >= 0; q--) { /* backwards: lists come out in id order */
        int64_t c = (int64_t)((all[4 * q + 1] - ymin) / R) * gw + (int64_t)((all[4 * q] - xmin) / R);
        next[q] = head[c];
        head[c] = q;
    }
    for (int64_t s = 0; s < n; s++) {
        int64_t cx = (int64_t)((x[s] - xmin) / R), cy = (int64_t)((y[s] - ymin) / R);
        double sw = 0, sv = 0;
        for (int64_t gy = cy - 1; gy <= cy + 1; gy++)
            for (int64_t gx = cx - 1; gx <= cx + 1; gx++) {
                if (gx < 0 || gy < 0 || gx >= gw || gy >= gh) continue;
                for (int64_t q = head[gy * gw + gx]; q >= 0; q = next[q]) {
                    double dx = all[4 * q] - x[s], dy = all[4 * q + 1] - y[s];
                    if (dx * dx + dy * dy > R * R || (dx == 0 && dy == 0)) continue;
                    sw += all[4 * q + 3];
                    sv += all[4 * q + 3] * all[4 * q + 2];
                }
            }
        double nb = sw > 0 ? sv / sw : 0;
        double w = ok[s] ? (double)nin[s] / ((double)nref + K) : 0;
        out[s] = w * raw[s] + (1 - w) * nb;
    }
    for (int64_t s = 0; s < n; s++) raw[s] = out[s];
cleanup:
    free(cnt);
    free(buf);
    free(all);
    free(out);
    free(head);
    free(next);
    return st;
}

tmd_status tmd_dynamics_sites(tmd_ctx *ctx, MPI_Comm comm, const tmd_track_basis *b, const double *drift, int64_t T,
                              int64_t H, int64_t W, const tmd_atom_table *atoms, const tmd_defect_table *defects,
                              const tmd_dyn_params *prm, tmd_site_table *sites)
{
    tmd_status st = TMD_OK;
    int rank, nranks;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &nranks);
    char *send = NULL, *recv = NULL;       /* records, (n, rec_size) bytes */
    int *owner = NULL;                     /* (n_send) destination rank */
    int *scount = NULL, *sdispl = NULL, *rcount = NULL, *rdispl = NULL;
    double *lat_mean = NULL, *lat_sd = NULL;
    double *comp = NULL;                   /* (n_sites, NCOMP) */
    int8_t *scorable = NULL;               /* (n_sites) */
    int8_t *state = NULL;                  /* (T) per-frame state of one site */
    int64_t *latent_of = NULL;             /* (T) record index of the site's atom in frame t */
    double *seq = NULL;                    /* (T, max(D, NSPECIES_STATES)) one site's sequence */
    double *scr = NULL;                    /* (2 max(D, NSPECIES_STATES)) step-statistic scratch */
    int64_t nrecv = 0;
    int64_t *nin_of = NULL;                /* (n_sites) frames in which the site is in view */

    /* latent size agreed by every rank */
    int D = atoms->nlatent > 0 && atoms->latent ? atoms->nlatent : 0, Dmax = 0, Dmin = 0;
    int Dl = atoms->n > 0 ? D : INT_MAX;
    MPI_Allreduce(&D, &Dmax, 1, MPI_INT, MPI_MAX, comm);
    MPI_Allreduce(&Dl, &Dmin, 1, MPI_INT, MPI_MIN, comm);
    if (Dmin != INT_MAX && Dmin != Dmax)
        st = TMD_FAIL(ctx, TMD_ERR_INTERNAL, "sites: ranks hold latents of different sizes (%d and %d)", Dmin, Dmax);
    D = Dmax;
    if (!st && T < 1) st = TMD_FAIL(ctx, TMD_ERR_ARG, "sites: a stack of %lld frames", (long long)T);
    if (!st) st = tmd_calloc(ctx, (void **)&lat_mean, (size_t)D + 1, sizeof(double), "latent means");
    if (!st) st = tmd_calloc(ctx, (void **)&lat_sd, (size_t)D + 1, sizeof(double), "latent std");
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    /* per-dimension spread of the latents (global) */
    if (D > 0) {
        double *v = NULL;
        st = tmd_calloc(ctx, (void **)&v, (size_t)(atoms->n > 0 ? atoms->n : 1) * D, sizeof(double), "latent copy");
        for (int64_t k = 0; !st && k < atoms->n * D; k++) v[k] = atoms->latent[k];
        st = tmd_agree(ctx, comm, st);
        if (!st) st = fixed_stats(ctx, comm, atoms->n, D, v, NULL, 4096.0, lat_mean, lat_sd);
        free(v);
        if (st) goto cleanup;
    }
    /* column intensity per sublattice (global): S2 -> S halves a B column, W -> Mo dims an A */
    double imean[3] = {0, 0, 0}, isd[3] = {0, 0, 0};
    {
        double *v = NULL; /* (n, 3): the intensity in the column of its sublattice, others 0 */
        int8_t *ok = NULL;
        st = tmd_calloc(ctx, (void **)&v, (size_t)(atoms->n + 1) * 3, sizeof(double), "intensities");
        if (!st) st = tmd_calloc(ctx, (void **)&ok, (size_t)atoms->n + 1, 1, "intensity rows");
        st = tmd_agree(ctx, comm, st);
        for (int sub = 0; !st && sub < 3; sub++) {
            for (int64_t k = 0; k < atoms->n; k++) {
                int sl = atoms->sublattice[k] == TMD_SUB_A || atoms->sublattice[k] == TMD_SUB_B ? atoms->sublattice[k] : 0;
                ok[k] = sl == sub;
                v[k] = atoms->intensity ? atoms->intensity[k] : 0;
            }
            double m, sd;
            st = fixed_stats(ctx, comm, atoms->n, 1, v, ok, 4096.0, &m, &sd);
            imean[sub] = m;
            isd[sub] = sd;
        }
        free(v);
        free(ok);
        if (st) goto cleanup;
    }
    size_t RS = rec_size(D);
    int64_t nd = defects ? defects->n : 0, nsend = 0;
    st = tmd_calloc(ctx, (void **)&send, (size_t)(atoms->n + nd + 1), RS, "site records");
    if (!st) st = tmd_calloc(ctx, (void **)&owner, (size_t)(atoms->n + nd + 1), sizeof(int), "record owners");
    if (!st) st = tmd_calloc(ctx, (void **)&scount, (size_t)nranks * 4, sizeof(int), "shuffle counts");
    if (st) goto agree_fail;
    for (int64_t k = 0; k < atoms->n; k++) {
        if (atoms->site[k] < 0) continue;
        int64_t t = atoms->frame[k];
        if (t < 0 || t >= T) {
            st = TMD_FAIL(ctx, TMD_ERR_RANGE, "sites: atom %lld is in frame %lld of %lld", (long long)k, (long long)t, (long long)T);
            goto agree_fail;
        }
        rec_hdr *r = (rec_hdr *)(send + (size_t)nsend * RS);
        r->site = atoms->site[k];
        r->frame = (int32_t)t;
        r->kind = 0;
        r->species = atoms->species[k];
        {
            int sl = atoms->sublattice[k] == TMD_SUB_A || atoms->sublattice[k] == TMD_SUB_B ? atoms->sublattice[k] : 0;
            double iv = atoms->intensity ? atoms->intensity[k] : 0;
            r->intensity = (float)(isd[sl] > 0 ? (iv - imean[sl]) / isd[sl] : 0);
        }
        r->x0 = atoms->x[k] - drift[2 * t];
        r->y0 = atoms->y[k] - drift[2 * t + 1];
        float *z = (float *)(r + 1);
        for (int d = 0; d < D; d++)
            z[d] = (float)(lat_sd[d] > 0 ? (atoms->latent[k * D + d] - lat_mean[d]) / lat_sd[d] : 0);
        nsend++;
    }
    for (int64_t k = 0; k < nd; k++) {
        int64_t t = defects->frame[k];
        if (t < 0 || t >= T) continue;
        double x0 = defects->x[k] - drift[2 * t], y0 = defects->y[k] - drift[2 * t + 1], dist;
        int64_t id = tmd_track_nearest(b, x0, y0, &dist);
        if (dist > prm->tol * b->bond) continue;
        rec_hdr *r = (rec_hdr *)(send + (size_t)nsend * RS);
        r->site = id;
        r->frame = (int32_t)t;
        r->kind = defects->type[k];
        r->x0 = x0;
        r->y0 = y0;
        nsend++;
    }
agree_fail:
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    /* owners: contiguous ranges of the lattice row index i */
    int64_t irange[2] = {INT64_MAX, INT64_MAX}; /* min i, -max i */
    for (int64_t k = 0; k < nsend; k++) {
        int64_t i, j;
        int s;
        tmd_site_unpack(((rec_hdr *)(send + (size_t)k * RS))->site, &i, &j, &s);
        if (i < irange[0]) irange[0] = i;
        if (-i < irange[1]) irange[1] = -i;
    }
    MPI_Allreduce(MPI_IN_PLACE, irange, 2, MPI_INT64_T, MPI_MIN, comm);
    int64_t imin = irange[0], span = irange[0] == INT64_MAX ? 1 : -irange[1] - imin + 1;
    sdispl = scount + nranks;
    rcount = scount + 2 * nranks;
    rdispl = scount + 3 * nranks;
    for (int64_t k = 0; k < nsend; k++) {
        int64_t i, j;
        int s;
        tmd_site_unpack(((rec_hdr *)(send + (size_t)k * RS))->site, &i, &j, &s);
        owner[k] = (int)((i - imin) * nranks / span);
        scount[owner[k]]++;
    }
    /* order the send buffer by owner (stable) */
    {
        char *tmp = NULL;
        st = tmd_calloc(ctx, (void **)&tmp, (size_t)(nsend + 1), RS, "site records (by owner)");
        if (!st) {
            int64_t *pos = NULL;
            st = tmd_calloc(ctx, (void **)&pos, (size_t)nranks, sizeof(int64_t), "record offsets");
            if (!st) {
                for (int r = 1; r < nranks; r++) pos[r] = pos[r - 1] + scount[r - 1];
                for (int64_t k = 0; k < nsend; k++) memcpy(tmp + (size_t)(pos[owner[k]]++) * RS, send + (size_t)k * RS, RS);
                free(send);
                send = tmp;
                tmp = NULL;
            }
            free(pos);
        }
        free(tmp);
    }
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    MPI_Alltoall(scount, 1, MPI_INT, rcount, 1, MPI_INT, comm);
    {
        int64_t so = 0, ro = 0;
        for (int r = 0; r < nranks; r++) {
            if ((so + scount[r]) * (int64_t)RS > INT_MAX || (ro + rcount[r]) * (int64_t)RS > INT_MAX) {
                st = TMD_FAIL(ctx, TMD_ERR_RANGE, "sites: more than 2 GiB of site records on rank %d; use more ranks", rank);
                break;
            }
            sdispl[r] = (int)(so * RS);
            rdispl[r] = (int)(ro * RS);
            so += scount[r];
            ro += rcount[r];
        }
        nrecv = ro;
        for (int r = 0; r < nranks; r++) { scount[r] *= (int)RS; rcount[r] *= (int)RS; }
        if (!st) st = tmd_calloc(ctx, (void **)&recv, (size_t)(nrecv + 1), RS, "received site records");
    }
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    st = TMD_MPI(ctx, MPI_Alltoallv(send, scount, sdispl, MPI_BYTE, recv, rcount, rdispl, MPI_BYTE, comm));
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    free(send);
    send = NULL;
    qsort(recv, (size_t)nrecv, RS, cmp_rec);

    /* per site: components */
    int64_t nsites = 0;
    for (int64_t k = 0; k < nrecv; k++)
        if (k == 0 || ((rec_hdr *)(recv + (size_t)k * RS))->site != ((rec_hdr *)(recv + (size_t)(k - 1) * RS))->site) nsites++;
    st = tmd_calloc(ctx, (void **)&comp, (size_t)(nsites + 1) * NCOMP, sizeof(double), "site components");
    if (!st) st = tmd_calloc(ctx, (void **)&scorable, (size_t)(nsites + 1), 1, "site flags");
    if (!st) st = tmd_calloc(ctx, (void **)&state, (size_t)T, 1, "site states");
    if (!st) st = tmd_calloc(ctx, (void **)&latent_of, (size_t)T, sizeof(int64_t), "site latents");
    int M = D > NSPECIES_STATES ? D : NSPECIES_STATES;
    if (!st) st = tmd_calloc(ctx, (void **)&seq, (size_t)T * M, sizeof(double), "site sequence");
    if (!st) st = tmd_calloc(ctx, (void **)&scr, (size_t)2 * M, sizeof(double), "site scratch");
    double margin = prm->fov_margin_px >= 0 ? prm->fov_margin_px : 0.2 * b->bond;

    if (!st) st = tmd_calloc(ctx, (void **)&nin_of, (size_t)(nsites + 1), sizeof(int64_t), "frames in view");
    for (int64_t k = 0, s = 0; !st && k < nrecv; s++) {
        const rec_hdr *h0 = (const rec_hdr *)(recv + (size_t)k * RS);
        int64_t id = h0->site, e = k;
        while (e < nrecv && ((rec_hdr *)(recv + (size_t)e * RS))->site == id) e++;
        /* position: mean of the atoms' drift-corrected positions */
        double sx = 0, sy = 0;
        int64_t na = 0;
        for (int64_t q = k; q < e; q++) {
            const rec_hdr *h = (const rec_hdr *)(recv + (size_t)q * RS);
            if (h->kind == 0) { sx += h->x0; sy += h->y0; na++; }
        }
        double px, py;
        if (na > 0) { px = sx / na; py = sy / na; }
        else tmd_track_site_xy(b, id, &px, &py);
        double jit = 0;
        /* per-frame state: -1 outside the field of view, 0 absent, 1 + species present,
         * 100 one chalcogen left with no atom row */
        for (int64_t t = 0; t < T; t++) {
            double fx = px + drift[2 * t], fy = py + drift[2 * t + 1];
            int in = fx >= margin && fy >= margin && fx <= W - 1 - margin && fy <= H - 1 - margin;
            state[t] = in ? 0 : -1;
            latent_of[t] = -1;
        }
        for (int64_t q = k; q < e; q++) {
            const rec_hdr *h = (const rec_hdr *)(recv + (size_t)q * RS);
            int64_t t = h->frame;
            if (state[t] < 0) continue;
            if (h->kind == 0) {
                /* several atoms on one site in a frame (a false detection, a neighbour that
                 * jumped): keep the one nearest to the site */
                double d = (h->x0 - px) * (h->x0 - px) + (h->y0 - py) * (h->y0 - py);
                if (latent_of[t] >= 0) {
                    const rec_hdr *o = (const rec_hdr *)(recv + (size_t)latent_of[t] * RS);
                    if ((o->x0 - px) * (o->x0 - px) + (o->y0 - py) * (o->y0 - py) <= d) continue;
                }
                state[t] = (int8_t)(1 + h->species);
                latent_of[t] = q;
            } else if (h->kind == TMD_DEF_VX && state[t] == 0) {
                state[t] = 100;
            }
        }
        int64_t pairs = 0, occ = 0, sp_pairs = 0, sp = 0, nchosen = 0;
        nin_of[s] = 0;
        for (int64_t t = 0; t < T; t++) nin_of[s] += state[t] >= 0;
        double feat = 0, inten = 0;
        for (int64_t t = 0; t < T; t++) {
            if (latent_of[t] < 0) continue;
            const rec_hdr *h = (const rec_hdr *)(recv + (size_t)latent_of[t] * RS);
            jit += (h->x0 - px) * (h->x0 - px) + (h->y0 - py) * (h->y0 - py);
            nchosen++;
        }
        for (int64_t t = 1; t < T; t++) {
            if (state[t] < 0 || state[t - 1] < 0) continue;
            pairs++;
            int p1 = state[t] > 0, p0 = state[t - 1] > 0;
            if (p1 != p0) occ++;
            if (latent_of[t] >= 0 && latent_of[t - 1] >= 0) {
                sp_pairs++;
                if (state[t] != state[t - 1]) sp++;
                const float *z1 = (const float *)((const rec_hdr *)(recv + (size_t)latent_of[t] * RS) + 1);
                const float *z0 = (const float *)((const rec_hdr *)(recv + (size_t)latent_of[t - 1] * RS) + 1);
                double dd = 0;
                for (int d = 0; d < D; d++) dd += (double)(z1[d] - z0[d]) * (z1[d] - z0[d]);
                feat += D > 0 ? dd / D : 0;
                double di = ((const rec_hdr *)(recv + (size_t)latent_of[t] * RS))->intensity -
                            ((const rec_hdr *)(recv + (size_t)latent_of[t - 1] * RS))->intensity;
                inten += di * di;
            }
        }
        /* rates over pairs of frames, shrunk towards 0 by K0 pseudo-pairs: a site seen in a
         * few frames only (at the edge of a drifting field of view) cannot look unstable
         * from one change */
        const double K0 = 4;
        double *c = comp + s * NCOMP;
        c[0] = feat / (sp_pairs + K0);
        c[1] = (double)occ / (pairs + K0);
        c[2] = (double)sp / (sp_pairs + K0);
        c[3] = nchosen > 0 ? sqrt(jit / (nchosen + K0)) / b->bond : 0;
        c[7] = inten / (sp_pairs + K0);
        /* change points: occupancy over the field-of-view frames */
        int64_t nf = 0, npres = 0;
        for (int64_t t = 0; t < T; t++)
            if (state[t] >= 0) seq[nf++] = state[t] > 0;
        c[4] = step_stat(seq, nf, 1, scr, scr + M);
        /* species (one-hot of the state) over the present frames */
        for (int64_t t = 0; t < T; t++) {
            if (state[t] <= 0) continue;
            double *v = seq + npres * NSPECIES_STATES;
            for (int q = 0; q < NSPECIES_STATES; q++) v[q] = 0;
            v[state[t] >= 100 ? NSPECIES_STATES - 1 : (state[t] < NSPECIES_STATES - 1 ? state[t] : 0)] = 1;
            npres++;
        }
        c[5] = step_stat(seq, npres, NSPECIES_STATES, scr, scr + M);
        /* latent vector over the frames with an atom */
        int64_t nl = 0;
        for (int64_t t = 0; t < T && D > 0; t++) {
            if (latent_of[t] < 0) continue;
            const float *z = (const float *)((const rec_hdr *)(recv + (size_t)latent_of[t] * RS) + 1);
            for (int d = 0; d < D; d++) seq[nl * D + d] = z[d];
            nl++;
        }
        c[6] = D > 0 ? step_stat(seq, nl, D, scr, scr + M) / sqrt((double)D) : 0;
        /* intensity over the frames with an atom */
        int64_t ni = 0;
        for (int64_t t = 0; t < T; t++)
            if (latent_of[t] >= 0) seq[ni++] = ((const rec_hdr *)(recv + (size_t)latent_of[t] * RS))->intensity;
        c[8] = step_stat(seq, ni, 1, scr, scr + M);
        scorable[s] = pairs > 0;
        int64_t row;
        st = tmd_site_table_push(ctx, sites, &row);
        if (st) break;
        int64_t ii, jj;
        int sub;
        tmd_site_unpack(id, &ii, &jj, &sub);
        sites->id[row] = id;
        sites->x[row] = px;
        sites->y[row] = py;
        sites->sublattice[row] = (int8_t)sub;
        k = e;
    }
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    /* global normalisation of the components, weighted sum, normalised again */
    {
        double cm[NCOMP], cs[NCOMP], w[NCOMP] = {prm->w_feature, prm->w_occupancy, prm->w_species, prm->w_position,
                                                  prm->w_occupancy, prm->w_species, prm->w_feature,
                                                  prm->w_intensity, prm->w_intensity};
        st = fixed_stats(ctx, comm, nsites, NCOMP, comp, scorable, 4096.0, cm, cs);
        if (st) goto cleanup;
        double *raw = comp; /* reuse column 0 storage: raw[s * NCOMP] */
        for (int64_t s = 0; s < nsites; s++) {
            double r = 0;
            for (int c = 0; c < NCOMP; c++)
                if (cs[c] > 0) r += w[c] * (comp[s * NCOMP + c] - cm[c]) / cs[c];
            raw[s * NCOMP] = r;
        }
        double rm, rs;
        /* raw as a (n, NCOMP) array whose first column is used: pass stride via a copy */
        double *col = NULL;
        st = tmd_calloc(ctx, (void **)&col, (size_t)(nsites + 1), sizeof(double), "raw scores");
        st = tmd_agree(ctx, comm, st);
        if (st) goto cleanup;
        for (int64_t s = 0; s < nsites; s++) col[s] = raw[s * NCOMP];
        int blended = prm->nb_frames > 0 && prm->nb_radius > 0 && b->bond > 0;
        if (blended) {
            st = blend_neighbours(ctx, comm, nsites, sites->x + sites->n - nsites, sites->y + sites->n - nsites, nin_of,
                                  scorable, col, prm->nb_frames, prm->nb_radius * b->bond);
            if (st) goto cleanup;
        }
        st = fixed_stats(ctx, comm, nsites, 1, col, scorable, 1024.0, &rm, &rs);
        for (int64_t s = 0; !st && s < nsites; s++) {
            /* a site with no pair of frames in view has only its neighbours' score (blend) */
            double z = (scorable[s] || blended) && rs > 0 ? (col[s] - rm) / rs : 0;
            sites->instability[sites->n - nsites + s] = (float)z;
        }
        free(col);
        if (st) goto cleanup;
        for (int64_t s = sites->n - nsites; s < sites->n; s++) sites->unstable[s] = sites->instability[s] > prm->threshold;
    }
    if (rank == 0) {
        tmd_debug(ctx, "sites: %lld records on rank 0, %lld sites", (long long)nrecv, (long long)nsites);
    }
cleanup:
    free(send);
    free(recv);
    free(owner);
    free(scount);
    free(lat_mean);
    free(lat_sd);
    free(comp);
    free(scorable);
    free(state);
    free(latent_of);
    free(nin_of);
    free(seq);
    free(scr);
    return st;
}
