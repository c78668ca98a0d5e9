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
 *   truth file's /image with the stage's contrast measure (copied from stage_classify.c:
 *   Gaussian-weighted mean, sigma 0.1 bond, minus the mean of the three lowest of the six places
 *   one bond away); H_SIGMA=s re-measures every atom with sigma s bond. A truth file without
 *   /image (e.g. extsim's IMAGE.tif.truth.h5) runs without the vacancy measurement.
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
} img_t;

static tmd_status measure(tmd_ctx *ctx, void *user, int64_t n, const int32_t *frame, const double *xs, const double *ys,
                          float *out)
{
    (void)ctx;
    (void)frame;
    img_t *u = user;
    const tmd_lattice *L = u->lat;
    double bond = L->period_px / sqrt(3.0), sw = fmax(0.7, (getenv("H_SIGMA") ? atof(getenv("H_SIGMA")) : 0.1) * bond), rc = 2.5 * sw;
    for (int64_t i = 0; i < n; i++) {
        double cx = xs[i], cy = ys[i];
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
