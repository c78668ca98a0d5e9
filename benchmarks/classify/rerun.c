/* classify_rerun: re-runs the classify stage offline on saved inputs and scores it against the
 * simulator's truth, so a change to the contrast model can be judged on many held-out images in
 * seconds instead of a pipeline run each.
 *
 *   1. Save the stage's inputs with a debug build (one rank):
 *        cmake -S . -B build-dbg -DCMAKE_C_FLAGS=-DTMD_CLASSIFY_DEBUG && cmake --build build-dbg
 *        TMD_CLASSIFY_SAVE=in_7001.bin build-dbg/tmdflow run sim_7001.h5:/image -o r.h5
 *      (lattice, atoms with their contrast and segmentation probabilities, pixel size if given)
 *   2. build-dbg/benchmarks/classify_rerun OUTDIR in_7001.bin:sim_7001.h5 in_7002.bin:sim_7002.h5 ...
 *      prints per image the fitted exponent / composition and the scores (species, metal,
 *      chalcogen, V_M / V_X / V_X2 F1, detection F1), then the pooled figures. OUTDIR gets
 *      h_<sim>.h5 (/atoms, /defects) for `tmdflow score`.
 *   Environment: H_PXTRUE=1 gives tmd_classify the truth file's pixel size (as --pixel-size),
 *   H_PX=A a pixel size, H_CONSTRAINT=0|1, H_CONF=1 prints the pooled confusion matrix; the
 *   debug build's TMD_* knobs of classify.c pass through. Vacancy sites are measured on the
 *   truth file's /image with the stage's contrast measure (copied from stage_classify.c: the
 *   column amplitude fitted with the profile, its six neighbour places and a plane over a disc
 *   of 0.6 bond; the profile width from the mean radial profile of all columns of the image,
 *   where the stage takes the central 2048^2 px and sums quantised pixels); H_REMEASURE=1
 *   re-measures every atom with it (the saved contrast is the one of the build that saved it),
 *   H_OLD=1 selects the measure before 2026-11-26 (Gaussian-weighted mean, sigma H_SIGMA = 0.1
 *   bond, minus the mean of the three lowest of the six places one bond away), H_SP=s fixes the
 *   profile width (bond), H_SPF=f scales the measured one. A truth file without /image (e.g.
 *   extsim's IMAGE.tif.truth.h5) runs without the vacancy measurement, unless H_IMG=DIR names
 *   the directory of the image (DIR/IMAGE.tif: the truth file's name minus .truth.h5).
 * Serial (MPI_COMM_SELF). */
#include <hdf5.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tmd/classify.h"
#include "tmd/io.h"
#include "tmd/score.h"

typedef struct {
    float *img;
    int64_t H, W;
    const tmd_lattice *lat;
    double sp;
} img_t;

static double envd(const char *k, double d)
{
    const char *v = getenv(k);
    return v ? atof(v) : d;
}

/* solve A x = b (n x n, symmetric positive definite, in place), Cholesky; returns 0 if singular */
static int chol_solve(double *A, double *b, int n)
{
    for (int j = 0; j < n; j++) {
        double d = A[j * n + j];
        for (int k = 0; k < j; k++) d -= A[j * n + k] * A[j * n + k];
        if (d <= 1e-12) return 0;
        d = sqrt(d);
        A[j * n + j] = d;
        for (int i = j + 1; i < n; i++) {
            double s = A[i * n + j];
            for (int k = 0; k < j; k++) s -= A[i * n + k] * A[j * n + k];
            A[i * n + j] = s / d;
        }
    }
    for (int i = 0; i < n; i++) {
        double s = b[i];
        for (int k = 0; k < i; k++) s -= A[i * n + k] * b[k];
        b[i] = s / A[i * n + i];
    }
    for (int i = n - 1; i >= 0; i--) {
        double s = b[i];
        for (int k = i + 1; k < n; k++) s -= A[k * n + i] * b[k];
        b[i] = s / A[i * n + i];
    }
    return 1;
}

/* the stage's amplitude (stage_classify.c measure_contrast): least squares over a disc of
 * radius H_R (0.6) bond of [column profile at the centre, profiles at the six +-delta_k places
 * (H_NB=0: without), 1, x, y]; profile Gaussian sigma sp px; refitted with the weights
 * 1 / max(first fit, H_POIS (0.1) x its largest) (H_POIS=0: unweighted). Variants tried:
 * H_TW=t Gaussian taper of the weights (bond), H_ROB=1 robust IRLS (Tukey on the positive
 * residuals; 2 both sides; H_C tuning constant in robust sd, H_IT iterations), H_RIDGE, H_Q=1
 * a radial r^2 term in the background (H_QW=w: a Gaussian w times the profile's width), H_NSPF=f
 * the neighbour places' profile f times wider than the column's */
static double model_amp(const img_t *u, double cx, double cy, double bond, double sp, const double dl[3][2])
{
    double R = envd("H_R", 0.6) * bond, tw = envd("H_TW", 0) * bond;
    int nb = (int)envd("H_NB", 1), rob = (int)envd("H_ROB", 0), nq = (int)envd("H_Q", 0), np = 4 + (nb ? 6 : 0) + nq;
    double cc = envd("H_C", 2.5);
    int64_t y0 = (int64_t)floor(cy - R), y1 = (int64_t)ceil(cy + R), x0 = (int64_t)floor(cx - R), x1 = (int64_t)ceil(cx + R);
    int64_t npx = (y1 - y0 + 1) * (x1 - x0 + 1);
    double *G = malloc(sizeof(double) * (size_t)(npx * np)), *v = malloc(sizeof(double) * (size_t)npx),
           *w0 = malloc(sizeof(double) * (size_t)npx), *w = malloc(sizeof(double) * (size_t)npx),
           *e = malloc(sizeof(double) * (size_t)npx);
    int64_t m = 0;
    double is2 = 0.5 / (sp * sp);
    for (int64_t yy = y0; yy <= y1; yy++) {
        if (yy < 0 || yy >= u->H) continue;
        for (int64_t xx = x0; xx <= x1; xx++) {
            if (xx < 0 || xx >= u->W) continue;
            double dx = xx - cx, dy = yy - cy, d2 = dx * dx + dy * dy;
            if (d2 > R * R) continue;
            double *g = G + m * np;
            g[0] = exp(-d2 * is2);
            g[1] = 1;
            g[2] = dx / bond;
            g[3] = dy / bond;
            if (nb) {
                int c = 4;
                for (int q = 0; q < 3; q++)
                    for (int sg = -1; sg <= 1; sg += 2) {
                        double ex = dx - sg * dl[q][0], ey = dy - sg * dl[q][1];
                        g[c++] = exp(-(ex * ex + ey * ey) * is2 / (envd("H_NSPF", 1) * envd("H_NSPF", 1)));
                    }
            }
            if (nq) g[np - 1] = d2 / (bond * bond); /* H_Q=1: a radial bowl r^2 in the background */
            if (nq == 1 && getenv("H_QW")) g[np - 1] = exp(-d2 * is2 / (envd("H_QW", 2) * envd("H_QW", 2))); /* or a wide Gaussian */
            v[m] = u->img[yy * u->W + xx];
            w0[m] = tw > 0 ? exp(-0.5 * d2 / (tw * tw)) : 1;
            w[m] = w0[m];
            m++;
        }
    }
    double amp = NAN;
    int nit = rob ? 1 + (int)envd("H_IT", 4) : envd("H_POIS", 0.1) > 0 ? 2 : 1;
    for (int it = 0; it < nit; it++) {
        double A[144] = {0}, b[12] = {0};
        for (int64_t k = 0; k < m; k++) {
            const double *g = G + k * np;
            for (int i = 0; i < np; i++) {
                b[i] += w[k] * g[i] * v[k];
                for (int j = 0; j <= i; j++) A[i * np + j] += w[k] * g[i] * g[j];
            }
        }
        for (int i = 0; i < np; i++)
            for (int j = i + 1; j < np; j++) A[i * np + j] = A[j * np + i];
        for (int i = 4; i < np; i++) A[i * np + i] += envd("H_RIDGE", 0) * m; /* weak ridge on neighbours */
        if (m < 3 * np || !chol_solve(A, b, np)) break;
        amp = b[0];
        if (envd("H_POIS", 0.1) > 0 && it == 0) { /* shot noise: weights 1 / max(fitted value, floor) */
            double fl = envd("H_POIS", 0.1), fmaxv = 0;
            for (int64_t k = 0; k < m; k++) {
                const double *g = G + k * np;
                double f = 0;
                for (int i = 0; i < np; i++) f += g[i] * b[i];
                e[k] = f;
                if (f > fmaxv) fmaxv = f;
            }
            for (int64_t k = 0; k < m; k++) w[k] = w0[k] / fmax(e[k], fl * fmaxv);
            if (!(fmaxv > 0)) break;
            if (!rob) {
                rob = -1;
                continue;
            }
        }
        if (rob < 0) break;
        if (!rob) break;
        /* residuals and robust scale */
        for (int64_t k = 0; k < m; k++) {
            const double *g = G + k * np;
            double f = 0;
            for (int i = 0; i < np; i++) f += g[i] * b[i];
            e[k] = v[k] - f;
        }
        double *t = malloc(sizeof(double) * (size_t)(m + 1));
        for (int64_t k = 0; k < m; k++) t[k] = fabs(e[k]);
        for (int64_t a = 1; a < m; a++)
            for (int64_t c = a; c > 0 && t[c] < t[c - 1]; c--) {
                double z = t[c];
                t[c] = t[c - 1];
                t[c - 1] = z;
            }
        double s = 1.4826 * (m > 0 ? t[m / 2] : 0) + 1e-12;
        if (getenv("H_SFIX")) s = atof(getenv("H_SFIX"));
        free(t);
        for (int64_t k = 0; k < m; k++) {
            double z = e[k] / (cc * s);
            double wt = 1;
            if ((rob == 2 || e[k] > 0) && fabs(z) < 1) wt = (1 - z * z) * (1 - z * z);
            else if (rob == 2 || e[k] > 0) wt = 0;
            w[k] = w0[k] * wt;
        }
    }
    free(G), free(v), free(w0), free(w), free(e);
    return amp;
}

/* per-image Gaussian profile width (px) from the mean radial profile of all columns */
static double est_sigma(const img_t *u, int64_t n, const double *xs, const double *ys, double bond)
{
    int NB = 24;
    double rmax = 0.6 * bond, sv[24] = {0}, sn[24] = {0};
    for (int64_t i = 0; i < n; i++) {
        double cx = xs[i], cy = ys[i];
        if (cx < rmax + 1 || cy < rmax + 1 || cx > u->W - rmax - 2 || cy > u->H - rmax - 2) continue;
        for (int64_t yy = (int64_t)floor(cy - rmax); yy <= (int64_t)ceil(cy + rmax); yy++)
            for (int64_t xx = (int64_t)floor(cx - rmax); xx <= (int64_t)ceil(cx + rmax); xx++) {
                double d = hypot(xx - cx, yy - cy);
                int bi = (int)(d / rmax * NB);
                if (bi >= NB) continue;
                sv[bi] += u->img[yy * u->W + xx];
                sn[bi] += 1;
            }
    }
    double best = 0.2 * bond, bsse = INFINITY;
    for (double s = 0.05 * bond; s <= 0.45 * bond; s += 0.005 * bond) {
        /* fit m(r) = A exp(-r^2/2s^2) + C */
        double S11 = 0, S12 = 0, S22 = 0, b1 = 0, b2 = 0;
        for (int bi = 0; bi < NB; bi++) {
            if (sn[bi] <= 0) continue;
            double r = (bi + 0.5) * rmax / NB, g = exp(-0.5 * r * r / (s * s)), mv = sv[bi] / sn[bi], wt = sn[bi];
            S11 += wt * g * g, S12 += wt * g, S22 += wt, b1 += wt * g * mv, b2 += wt * mv;
        }
        double det = S11 * S22 - S12 * S12;
        double A = (b1 * S22 - b2 * S12) / det, C = (S11 * b2 - S12 * b1) / det, sse = 0;
        for (int bi = 0; bi < NB; bi++) {
            if (sn[bi] <= 0) continue;
            double r = (bi + 0.5) * rmax / NB, g = exp(-0.5 * r * r / (s * s)), mv = sv[bi] / sn[bi];
            sse += sn[bi] * (mv - A * g - C) * (mv - A * g - C);
        }
        if (sse < bsse) bsse = sse, best = s;
    }
    return best;
}

static tmd_status measure(tmd_ctx *ctx, void *user, int64_t n, const int32_t *frame, const double *xs, const double *ys,
                          float *out)
{
    (void)ctx;
    (void)frame;
    img_t *u = user;
    if (!getenv("H_OLD")) {
        double bond = u->lat->period_px / sqrt(3.0);
        if (u->sp <= 0) {
            u->sp = getenv("H_SP") ? atof(getenv("H_SP")) * bond : est_sigma(u, n, xs, ys, bond) * envd("H_SPF", 1);
            if (getenv("H_VERB")) fprintf(stderr, "sigma %.3f bond\n", u->sp / bond);
        }
    }
    const tmd_lattice *L = u->lat;
    double bond = L->period_px / sqrt(3.0), sw = fmax(0.7, (getenv("H_SIGMA") ? atof(getenv("H_SIGMA")) : 0.1) * bond), rc = 2.5 * sw;
    for (int64_t i = 0; i < n; i++) {
        double cx = xs[i], cy = ys[i];
        if (!getenv("H_OLD")) { /* the amplitude; where the frame edge cuts the disc, the old measure */
            double dm[3][2] = {{(L->a1[0] + L->a2[0]) / 3, (L->a1[1] + L->a2[1]) / 3},
                               {(L->a2[0] - 2 * L->a1[0]) / 3, (L->a2[1] - 2 * L->a1[1]) / 3},
                               {(L->a1[0] - 2 * L->a2[0]) / 3, (L->a1[1] - 2 * L->a2[1]) / 3}};
            double a = model_amp(u, cx, cy, bond, u->sp, dm);
            if (isfinite(a)) {
                out[i] = (float)a;
                continue;
            }
        }
#define GMEAN(px, py, res)                                                                      \
    do {                                                                                        \
        double sv_ = 0, sw_ = 0;                                                                \
        for (int64_t yy = (int64_t)floor((py) - rc); yy <= (int64_t)ceil((py) + rc); yy++) {    \
            if (yy < 0 || yy >= u->H) continue;                                                 \
            for (int64_t xx = (int64_t)floor((px) - rc); xx <= (int64_t)ceil((px) + rc); xx++) { \
                if (xx < 0 || xx >= u->W) continue;                                             \
                double d_ = hypot(xx - (px), yy - (py));                                        \
                if (d_ > rc) continue;                                                          \
                double wt_ = exp(-0.5 * d_ * d_ / (sw * sw));                                   \
                sv_ += wt_ * u->img[yy * u->W + xx];                                            \
                sw_ += wt_;                                                                     \
            }                                                                                   \
        }                                                                                       \
        (res) = sw_ > 0 ? sv_ / sw_ : NAN;                                                      \
    } while (0)
        double peak;
        GMEAN(cx, cy, peak);
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
        for (int a = 1; a < nv; a++)
            for (int b = a; b > 0 && v6[b] < v6[b - 1]; b--) {
                double t = v6[b];
                v6[b] = v6[b - 1];
                v6[b - 1] = t;
            }
        double bg = 0;
        int nb = nv < 3 ? nv : 3;
        for (int a = 0; a < nb; a++) bg += v6[a] / nb;
        out[i] = isfinite(peak) ? (float)(peak - bg) : 0.0f;
    }
    return TMD_OK;
}

static void wr(hid_t f, const char *name, hid_t t, int64_t n, const void *d)
{
    hsize_t dim = (hsize_t)n;
    hid_t sp = H5Screate_simple(1, &dim, NULL);
    hid_t ds = H5Dcreate2(f, name, t, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (n > 0) H5Dwrite(ds, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, d);
    H5Dclose(ds);
    H5Sclose(sp);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    tmd_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    tmd_ctx_init(&ctx, MPI_COMM_SELF);
    const char *outdir = argv[1];
    int64_t conf[8][8] = {{0}}, vac[4][3] = {{0}};
    int64_t dtp = 0, dfp = 0, dfn = 0;
    for (int a = 2; a < argc; a++) {
        char savep[512], simp[512];
        const char *c = strchr(argv[a], ':');
        snprintf(savep, sizeof savep, "%.*s", (int)(c - argv[a]), argv[a]);
        snprintf(simp, sizeof simp, "%s", c + 1);
        FILE *sf = fopen(savep, "rb");
        if (!sf) {
            fprintf(stderr, "cannot open %s\n", savep);
            return 1;
        }
        int64_t hd[5];
        if (fread(hd, sizeof hd, 1, sf) != 1) return 1;
        int64_t nf = hd[0], H = hd[1], W = hd[2], n = hd[3];
        int np = (int)hd[4];
        tmd_lattice *lat = calloc((size_t)nf, sizeof *lat);
        size_t ok = fread(lat, sizeof *lat, (size_t)nf, sf);
        tmd_classify_opts o;
        tmd_classify_opts_default(&o);
        ok += fread(&o.pixel_size, sizeof(double), 1, sf);
        ok += fread(&o.constraint, sizeof(int), 1, sf);
        tmd_atom_table at;
        tmd_atom_table_init(&at, np);
        for (int64_t i = 0; i < n; i++) {
            int64_t k;
            tmd_atom_table_push(&ctx, &at, &k);
        }
        ok += fread(at.frame, sizeof(int32_t), (size_t)n, sf);
        ok += fread(at.x, sizeof(double), (size_t)n, sf);
        ok += fread(at.y, sizeof(double), (size_t)n, sf);
        ok += fread(at.intensity, sizeof(float), (size_t)n, sf);
        ok += fread(at.prob, sizeof(float), (size_t)(n * np), sf);
        float *carry = calloc((size_t)n + 1, sizeof(float));
        ok += fread(carry, sizeof(float), (size_t)n, sf);
        fclose(sf);
        if (ok != (size_t)(nf + 2 + 6 * n) - (size_t)n + (size_t)(n * np)) {
            fprintf(stderr, "%s: truncated (expected %lld frames, %lld atoms)\n", savep, (long long)nf, (long long)n);
            return 1;
        }
        if (getenv("H_CONSTRAINT")) o.constraint = atoi(getenv("H_CONSTRAINT"));
        if (getenv("H_PX")) o.pixel_size = atof(getenv("H_PX"));
        hid_t fs;
        if (tmd_h5_open_read(&ctx, simp, &fs)) {
            tmd_error_print(&ctx);
            return 1;
        }
        img_t im = {0};
        int64_t r, cc;
        int have_img = tmd_h5_exists(fs, "/image");
        if (have_img && tmd_h5_read_rows(&ctx, fs, "/image", TMD_F32, &r, &cc, (void **)&im.img)) {
            tmd_error_print(&ctx);
            return 1;
        }
        if (!have_img && getenv("H_IMG")) { /* the image from a file (e.g. extsim's TIFF): H_IMG=dir, file = truth name minus .truth.h5 */
            char ip[700];
            const char *bn = strrchr(simp, '/');
            snprintf(ip, sizeof ip, "%s/%.*s", getenv("H_IMG"), (int)(strlen(bn ? bn + 1 : simp) - 9), bn ? bn + 1 : simp);
            tmd_reader *rd = NULL;
            if (tmd_reader_open(&ctx, ip, &rd) == TMD_OK) {
                im.img = malloc(sizeof(float) * (size_t)(H * W));
                if (tmd_reader_read(&ctx, rd, 0, 0, 0, H, W, im.img) == TMD_OK) have_img = 1;
                tmd_reader_close(&rd);
            } else
                tmd_error_print(&ctx);
            r = H, cc = W;
        }
        if (!have_img) r = H, cc = W;
        if (getenv("H_PXTRUE")) tmd_h5_read_attr_f64(&ctx, fs, "/", "pixel_size", &o.pixel_size, 1);
        H5Fclose(fs);
        im.H = r;
        im.W = cc;
        im.lat = lat;
        if (getenv("H_SIGMA") || getenv("H_REMEASURE")) { /* recompute the atoms' contrast with the harness measure */
            measure(&ctx, &im, n, at.frame, at.x, at.y, at.intensity);
        }
        if (getenv("H_USECARRY")) for (int64_t i = 0; i < n; i++) at.intensity[i] = carry[i];
        o.carry = carry;
        o.measure = have_img ? measure : NULL;
        o.measure_user = &im;
        tmd_atom_table gh;
        tmd_atom_table_init(&gh, np);
        tmd_defect_table d;
        tmd_defect_table_init(&d);
        tmd_classify_report rep;
        tmd_status st = tmd_classify(&ctx, MPI_COMM_SELF, &o, nf, lat, NULL, H, W, &at, &gh, &d, &rep);
        if (st) {
            tmd_error_print(&ctx);
            return 1;
        }
        char resp[600];
        const char *base = strrchr(simp, '/');
        snprintf(resp, sizeof resp, "%s/h_%s", outdir, base ? base + 1 : simp);
        hid_t f = H5Fcreate(resp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
        H5Gclose(H5Gcreate2(f, "/atoms", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
        H5Gclose(H5Gcreate2(f, "/defects", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
        wr(f, "/atoms/x", H5T_NATIVE_DOUBLE, at.n, at.x);
        wr(f, "/atoms/y", H5T_NATIVE_DOUBLE, at.n, at.y);
        wr(f, "/atoms/frame", H5T_NATIVE_INT32, at.n, at.frame);
        wr(f, "/atoms/species", H5T_NATIVE_INT8, at.n, at.species);
        wr(f, "/defects/x", H5T_NATIVE_DOUBLE, d.n, d.x);
        wr(f, "/defects/y", H5T_NATIVE_DOUBLE, d.n, d.y);
        wr(f, "/defects/frame", H5T_NATIVE_INT32, d.n, d.frame);
        wr(f, "/defects/type", H5T_NATIVE_INT8, d.n, d.type);
        H5Fclose(f);
        tmd_score s;
        if (tmd_score_files(&ctx, resp, simp, &s)) {
            tmd_error_print(&ctx);
            return 1;
        }
        for (int i = 0; i < 8; i++)
            for (int j = 0; j < 8; j++) conf[i][j] += s.confusion[i][j];
        for (int t = 1; t <= 3; t++) {
            vac[t][0] += s.vacancy[t].tp;
            vac[t][1] += s.vacancy[t].fp;
            vac[t][2] += s.vacancy[t].fn;
        }
        dtp += s.detection.tp;
        dfp += s.detection.fp;
        dfn += s.detection.fn;
        printf("%-32s n %.3f x %.2f y %.2f a %.4f (gap %.1f) sp %.4f met %.4f cha %.4f VM %.2f VX %.2f VX2 %.2f det %.4f\n",
               base ? base + 1 : simp, rep.n_exponent, rep.x_w, rep.y_se, rep.a_post, rep.vegard_gap, s.species_acc, s.metal_acc,
               s.chalcogen_acc, s.vacancy[1].f1, s.vacancy[2].f1, s.vacancy[3].f1, s.detection.f1);
        free(im.img);
        free(lat);
        tmd_atom_table_free(&at);
        tmd_atom_table_free(&gh);
        tmd_defect_table_free(&d);
        free(carry);
    }
    int64_t ok = 0, tot = 0, okm = 0, nm = 0, okc = 0, nc = 0;
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 8; j++) {
            tot += conf[i][j];
            ok += i == j ? conf[i][j] : 0;
            if (i == 1 || i == 2) {
                nm += conf[i][j];
                okm += i == j ? conf[i][j] : 0;
            } else if (i >= 3) {
                nc += conf[i][j];
                okc += i == j ? conf[i][j] : 0;
            }
        }
    double f1[4];
    for (int t = 1; t <= 3; t++) f1[t] = 2.0 * vac[t][0] / (2.0 * vac[t][0] + vac[t][1] + vac[t][2]);
    printf("POOLED species %.4f metal %.4f chalcogen %.4f | V_M %.3f (%lld/%lld/%lld) V_X %.3f (%lld/%lld/%lld) V_X2 %.3f "
           "(%lld/%lld/%lld) | det %.4f\n",
           (double)ok / tot, (double)okm / nm, (double)okc / nc, f1[1], (long long)vac[1][0], (long long)vac[1][1],
           (long long)vac[1][2], f1[2], (long long)vac[2][0], (long long)vac[2][1], (long long)vac[2][2], f1[3],
           (long long)vac[3][0], (long long)vac[3][1], (long long)vac[3][2], 2.0 * dtp / (2.0 * dtp + dfp + dfn));
    if (getenv("H_CONF")) {
        const char *nmz[8] = {"?", "Mo", "W", "S2", "SSe", "Se2", "S", "Se"};
        for (int i = 1; i < 8; i++) {
            printf("%4s", nmz[i]);
            for (int j = 0; j < 8; j++) printf(" %5lld", (long long)conf[i][j]);
            printf("\n");
        }
    }
    MPI_Finalize();
    return 0;
}
