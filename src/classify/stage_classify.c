/* The pipeline's classify stage: ghosts from the neighbouring ranks, sublattices, species,
 * vacancies; the pixel size refined by Vegard's law when it was measured (tmd/classify.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tmd/classify.h"
#include "tmd/halo.h"
#include "tmd/io.h"
#include "tmd/pipeline.h"

typedef struct {
    int64_t frame;
    double y;
    int64_t i;
} order_t;

static int cmp_order(const void *a, const void *b)
{
    const order_t *p = a, *q = b;
    if (p->frame != q->frame) return p->frame < q->frame ? -1 : 1;
    if (p->y != q->y) return p->y < q->y ? -1 : 1;
    return (p->i > q->i) - (p->i < q->i);
}

/* Column contrast for the Z^n model, measured on the raw input: Gaussian-weighted mean
 * (sigma 0.1 bond) at the column minus the local background, the mean of the three lowest of
 * the same means at the six places +-delta_k one bond away (three are the neighbouring
 * columns, three the hollow sites: the hollow level is the background plus the neighbours'
 * probe tails and the local contamination). Linear in the column's Z^n (checked against
 * simulated truth: medians within 2 % of the Z^n ratios). Rows of this rank's domain are read in strips,
 * so memory is bounded by a strip. out[i] for every owned atom. */
static tmd_status measure_contrast(tmd_ctx *ctx, tmd_run *run, const tmd_box *own, const tmd_lattice *lat, int64_t n,
                                   const int32_t *frame, const double *xs, const double *ys, float *out)
{
    int64_t H = run->info.height, W = run->info.width;
    double bondmax = 0;
    for (int64_t f = 0; f < run->info.frames; f++) bondmax = fmax(bondmax, lat[f].period_px / sqrt(3.0));
    int64_t m = (int64_t)ceil(1.25 * bondmax) + 2, S = 256;
    int64_t x0 = own->lo[2] - m < 0 ? 0 : own->lo[2] - m, x1 = own->hi[2] + m > W ? W : own->hi[2] + m, w = x1 - x0;
    order_t *ord = NULL;
    float *buf = NULL;
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
        st = tmd_reader_read(ctx, run->reader, f, r0, x0, r1 - r0, w, buf);
        if (st) goto cleanup;
        double bond = lat[f].period_px / sqrt(3.0), sw = fmax(0.7, 0.1 * bond), rc = 2.5 * sw;
        for (; k < n && ord[k].frame == f && (int64_t)floor(ord[k].y + 0.5) < ystart + S; k++) {
            int64_t i = ord[k].i;
            double cx = xs[i], cy = ys[i];
            /* Gaussian-weighted mean around (px, py) */
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
            GMEAN(cx, cy, peak);
            /* background: the three hollow sites among the six places at +-delta_k (the other
             * three hold the neighbouring columns): mean of the three lowest */
            const tmd_lattice *L = &lat[f];
            double dl[3][2] = {{(L->a1[0] + L->a2[0]) / 3, (L->a1[1] + L->a2[1]) / 3},
                               {(L->a2[0] - 2 * L->a1[0]) / 3, (L->a2[1] - 2 * L->a1[1]) / 3},
                               {(L->a1[0] - 2 * L->a2[0]) / 3, (L->a1[1] - 2 * L->a2[1]) / 3}};
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
                for (int b = a; b > 0 && v6[b] < v6[b - 1]; b--) {
                    double t = v6[b];
                    v6[b] = v6[b - 1];
                    v6[b - 1] = t;
                }
            double bg = 0;
            int nb = nv < 3 ? nv : 3;
            for (int a = 0; a < nb; a++) bg += v6[a] / nb;
            double sww = isfinite(peak) ? 1 : 0, sv = peak;
            out[i] = sww > 0 ? (float)(sv / sww - bg) : 0.0f;
        }
    }
cleanup:
    free(ord);
    free(buf);
    return st;
}

typedef struct {
    tmd_run *run;
    const tmd_box *own;
    const tmd_lattice *lat;
} measure_user_t;

static tmd_status measure_cb(tmd_ctx *ctx, void *user, int64_t n, const int32_t *frame, const double *x, const double *y,
                             float *out)
{
    measure_user_t *u = user;
    return measure_contrast(ctx, u->run, u->own, u->lat, n, frame, x, y, out);
}

tmd_status tmd_stage_classify(tmd_ctx *ctx, tmd_run *run)
{
    int64_t T = run->info.frames;
    tmd_lattice *lat = NULL;
    tmd_ghost *g = NULL;
    float *contrast = NULL;
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
    measure_user_t mu = {run, &own, lat};
    o.measure = measure_cb;
    o.measure_user = &mu;
    if (!strcmp(run->pixel_size_source, "--pixel-size") || !strcmp(run->pixel_size_source, "configuration"))
        o.pixel_size = run->pixel_size; /* independent of the lattice: its constant tells S from Se */
    tmd_classify_report rep;
    /* the contrast model sees column contrast above the local background, measured on the
     * raw input (/atoms/intensity keeps the atom stage's integrated intensity) */
    st = tmd_calloc(ctx, (void **)&contrast, (size_t)(run->atoms.cap > 0 ? run->atoms.cap : 1), sizeof(float),
                    "classify contrast");
    if (!st)
        st = measure_contrast(ctx, run, &own, lat, run->atoms.n, run->atoms.frame, run->atoms.x, run->atoms.y, contrast);
    st = tmd_agree(ctx, run->comm, st);
    if (st) goto cleanup;
    /* ghosts carry the owner's contrast (the local references of tmd_classify read it) */
    float *keep = run->atoms.intensity;
    run->atoms.intensity = contrast;
    st = tmd_ghost_create(ctx, run->comm, &own, gd, &g);
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
    int64_t v[5] = {rep.n_vm, rep.n_vx, rep.n_vx2, rep.n_dropped, rep.n_removed};
    MPI_Allreduce(MPI_IN_PLACE, v, 5, MPI_INT64_T, MPI_SUM, run->comm);
    tmd_debug(ctx, "classify: %lld proposed empty sites showed a column (missed atoms), dropped; %lld detected "
              "columns fitted \"empty\", reported as vacancies and removed", (long long)v[3], (long long)v[4]);
    tmd_info(ctx, "classify: %lld components; fitted exponent %.2f, composition Mo%.2fW%.2f S%.2fSe%.2f (a = %.3f A); "
             "vacancies V_M %lld, V_X %lld, V_X2 %lld",
             (long long)rep.n_components, rep.n_exponent, 1 - rep.x_w, rep.x_w, 2 * (1 - rep.y_se), 2 * rep.y_se,
             rep.a_vegard, (long long)v[0], (long long)v[1], (long long)v[2]);
    /* Vegard's law refines the pixel size with the posterior mean of the lattice constant over
     * the fitted compositions: the composition's own constant when it is settled, a weighted mean
     * when compositions of different constants tie (at high noise the contrast can tie MoS2 at
     * n 1.75 with W(S,Se)2 at n 2.0, 3 % apart in a: extsim mos2_80kV; for a pure compound MoS2
     * at n and WSe2 at 1.24 n always give the same contrast) */
    if (!strcmp(run->pixel_size_source, "lattice") && rep.a_post > 0) {
        double ps = 0;
        st = tmd_lattice_run_pixel_size(ctx, run, rep.a_post, &ps);
        if (!st) {
            tmd_info(ctx, "pixel size refined by Vegard's law: %.4f -> %.4f A (a = %.3f A; the composition leads "
                     "the best one of a > 1 %% different constant by %.1f log units)", run->pixel_size, ps, rep.a_post,
                     rep.vegard_gap);
            run->pixel_size = ps;
            snprintf(run->pixel_size_source, sizeof run->pixel_size_source, "lattice+Vegard");
        }
    }
cleanup:
    free(lat);
    free(contrast);
    return st;
}
