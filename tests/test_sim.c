/* Simulator: rank invariance (byte-identical /image and truth at 1, 2, 4 ranks and any band
 * height), truth consistent with the pixels (column centroids at the truth positions under
 * jitter and detector smear, class disks under the columns), Z^n intensity ratios, stack drift
 * truth equal to the images' phase correlation, training API ranges and determinism,
 * parameter parsing. Images are small so the suite takes seconds. */
/* TMD_TEST_RANKS: 1 2 4 */
/* TMD_TEST_TIMEOUT: 240 */
#include <complex.h>
#include <fftw3.h>
#include <hdf5.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../src/sim/sim_internal.h" /* sim_world.expected_only (benchmarks/classify/bound.c) */
#include "testutil.h"
#include "tmd/io.h"
#include "tmd/sim.h"
#include "tmd/table.h"

/* Reads a whole 2-D or 3-D dataset as float (or raw bytes of its native type if raw). */
static void *read_all(const char *path, const char *dset, hid_t memtype, size_t elsize, int64_t *n)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) return NULL;
    hid_t d = H5Dopen2(f, dset, H5P_DEFAULT);
    void *buf = NULL;
    if (d >= 0) {
        hid_t sp = H5Dget_space(d);
        hssize_t cnt = H5Sget_simple_extent_npoints(sp);
        buf = malloc((size_t)(cnt > 0 ? cnt : 1) * elsize);
        if (buf && H5Dread(d, memtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0) {
            free(buf);
            buf = NULL;
        }
        *n = cnt;
        H5Sclose(sp);
        H5Dclose(d);
    }
    H5Fclose(f);
    return buf;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void base_params(tmd_sim_params *p, uint64_t seed, int64_t h, int64_t w)
{
    tmd_sim_params_draw(p, seed, 0);
    p->height = h;
    p->width = w;
}

/* 1, 2 or 4 ranks (this run) and one rank alone write byte-identical /image, /truth/classes
 * and truth tables; and a different band height gives the same image. */
static void test_rank_invariance(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    for (int seed = 1; seed <= 3; seed++) {
        tmd_sim_params p;
        base_params(&p, (uint64_t)seed, 157, 203);
        if (seed == 2) p.frames = 3; /* a stack too */
        if (seed == 3) { p.hole_prob = 0.8; p.hole_spacing = 20; p.hole_radius = 5; p.contamination = 0.4; p.contamination_cover = 0.6; }
        CU_ASSERT_EQUAL_FATAL(tmd_sim_params_finish(&ctx, &p), TMD_OK);
        setenv("TMDFLOW_SIM_BAND", "16", 1);
        const char *par = tmd_test_path("par.h5");
        CU_ASSERT_EQUAL_FATAL(tmd_sim_write(&ctx, &p, par, 1, tmd_test_comm), TMD_OK);
        if (tmd_test_rank == 0) {
            const char *ser = tmd_test_path("ser.h5"), *ser2 = tmd_test_path("ser_band.h5");
            tmd_ctx c1;
            tmd_ctx_init(&c1, MPI_COMM_SELF);
            c1.log_level = TMD_LOG_QUIET;
            CU_ASSERT_EQUAL(tmd_sim_write(&c1, &p, ser, 1, MPI_COMM_SELF), TMD_OK);
            setenv("TMDFLOW_SIM_BAND", seed == 1 ? "100" : "16", 1); /* another band height once */
            if (seed == 1) CU_ASSERT_EQUAL(tmd_sim_write(&c1, &p, ser2, 1, MPI_COMM_SELF), TMD_OK);
            if (seed != 1) ser2 = ser;
            int64_t n1 = 0, n2 = 0, n3 = 0;
            float *a = read_all(par, "/image", H5T_NATIVE_FLOAT, 4, &n1);
            float *b = read_all(ser, "/image", H5T_NATIVE_FLOAT, 4, &n2);
            float *c = read_all(ser2, "/image", H5T_NATIVE_FLOAT, 4, &n3);
            CU_ASSERT_PTR_NOT_NULL_FATAL(a);
            CU_ASSERT_PTR_NOT_NULL_FATAL(b);
            CU_ASSERT_PTR_NOT_NULL_FATAL(c);
            CU_ASSERT_EQUAL(n1, p.frames * 157 * 203);
            CU_ASSERT_EQUAL(n1, n2);
            CU_ASSERT_EQUAL(n1, n3);
            CU_ASSERT(memcmp(a, b, (size_t)n1 * 4) == 0);
            CU_ASSERT(memcmp(a, c, (size_t)n1 * 4) == 0);
            free(a); free(b); free(c);
            uint8_t *ca = read_all(par, "/truth/classes", H5T_NATIVE_UINT8, 1, &n1);
            uint8_t *cb = read_all(ser, "/truth/classes", H5T_NATIVE_UINT8, 1, &n2);
            CU_ASSERT(ca && cb && n1 == n2 && memcmp(ca, cb, (size_t)n1) == 0);
            free(ca); free(cb);
            /* truth: the same rows (appended round by round, so in rank-dependent order) */
            const char *cols[3] = {"/atoms/x", "/defects/y", "/sites/x"};
            for (int c = 0; c < 3; c++) {
                double *xa = read_all(par, cols[c], H5T_NATIVE_DOUBLE, 8, &n1);
                double *xb = read_all(ser, cols[c], H5T_NATIVE_DOUBLE, 8, &n2);
                CU_ASSERT_FATAL(xa && xb);
                CU_ASSERT_EQUAL(n1, n2);
                if (c != 1) CU_ASSERT(n1 > 20);
                qsort(xa, (size_t)n1, 8, cmp_double);
                qsort(xb, (size_t)n2, 8, cmp_double);
                CU_ASSERT(n1 == n2 && memcmp(xa, xb, (size_t)n1 * 8) == 0);
                free(xa); free(xb);
            }
        }
        unsetenv("TMDFLOW_SIM_BAND");
        MPI_Barrier(tmd_test_comm);
    }
}

/* TIFF output (strips streamed to rank 0 in any order, uint16, a 3-frame stack) holds the same
 * pixels as the HDF5 /image of a serial run, and carries the pixel size. */
static void test_tiff_matches_hdf5(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    tmd_sim_params p;
    base_params(&p, 8, 120, 90);
    p.frames = 3;
    p.out_u16 = 1;
    CU_ASSERT_EQUAL_FATAL(tmd_sim_params_finish(&ctx, &p), TMD_OK);
    setenv("TMDFLOW_SIM_BAND", "16", 1);
    const char *tif = tmd_test_path("par.tif");
    CU_ASSERT_EQUAL_FATAL(tmd_sim_write(&ctx, &p, tif, 1, tmd_test_comm), TMD_OK);
    unsetenv("TMDFLOW_SIM_BAND");
    if (tmd_test_rank == 0) {
        tmd_ctx c1;
        tmd_ctx_init(&c1, MPI_COMM_SELF);
        c1.log_level = TMD_LOG_QUIET;
        const char *h5 = tmd_test_path("ser16.h5");
        CU_ASSERT_EQUAL_FATAL(tmd_sim_write(&c1, &p, h5, 1, MPI_COMM_SELF), TMD_OK);
        int64_t n;
        uint16_t *ref = read_all(h5, "/image", H5T_NATIVE_UINT16, 2, &n);
        CU_ASSERT_FATAL(ref && n == 3 * 120 * 90);
        tmd_reader *r = NULL;
        CU_ASSERT_EQUAL_FATAL(tmd_reader_open(&c1, tif, &r), TMD_OK);
        CU_ASSERT_EQUAL(tmd_reader_info(r)->frames, 3);
        CU_ASSERT_DOUBLE_EQUAL(tmd_reader_info(r)->pixel_size, p.pixel_size, 1e-4);
        float *buf = malloc(120 * 90 * sizeof(float));
        int64_t bad = 0;
        for (int t = 0; t < 3; t++) {
            CU_ASSERT_EQUAL(tmd_reader_read(&c1, r, t, 0, 0, 120, 90, buf), TMD_OK);
            for (int i = 0; i < 120 * 90; i++) bad += buf[i] != (float)ref[t * 120 * 90 + i];
        }
        CU_ASSERT_EQUAL(bad, 0);
        tmd_reader_close(&r);
        free(buf);
        free(ref);
        /* the truth sits beside the TIFF */
        char tp[1100];
        snprintf(tp, sizeof tp, "%s.truth.h5", tif);
        int64_t na;
        double *x = read_all(tp, "/atoms/x", H5T_NATIVE_DOUBLE, 8, &na);
        CU_ASSERT(x && na > 10);
        free(x);
    }
    MPI_Barrier(tmd_test_comm);
}

/* Serial helpers for the physics checks: a clean, high-dose image and its truth. */
static int render_clean(tmd_ctx *ctx, tmd_sim_params *p, const char *name, float **img, tmd_atom_table *atoms)
{
    const char *path = tmd_test_path(name);
    if (tmd_sim_write(ctx, p, path, 1, MPI_COMM_SELF)) return -1;
    int64_t n;
    *img = read_all(path, "/image", H5T_NATIVE_FLOAT, 4, &n);
    tmd_atom_table_init(atoms, 0);
    int64_t k;
    hid_t f;
    if (tmd_h5_open_read(ctx, path, &f)) return -1;
    tmd_h5_read_rows(ctx, f, "/atoms/x", TMD_F64, &atoms->n, &k, (void **)&atoms->x);
    tmd_h5_read_rows(ctx, f, "/atoms/y", TMD_F64, &atoms->n, &k, (void **)&atoms->y);
    tmd_h5_read_rows(ctx, f, "/atoms/species", TMD_I8, &atoms->n, &k, (void **)&atoms->species);
    H5Fclose(f);
    return *img && atoms->x && atoms->y && atoms->species ? 0 : -1;
}

static void clean_params(tmd_sim_params *p, uint64_t seed, int64_t size, double px)
{
    tmd_sim_params_draw(p, seed, 0);
    p->height = p->width = size;
    p->pixel_size = px;
    p->dose = 1e5; p->read_noise = 0; p->gain = 1; p->offset = 0; p->scan_smear = 0;
    p->background = 0; p->background_var = 0; p->contamination = 0;
    p->hole_prob = 0; p->edge = 0; p->jitter = 0; p->wobble = 0; p->shear = 0; p->scan_compress = 0; p->scan_rotation = 0;
    p->strain = 0; p->displacement = 0; p->column_jitter = 0; p->tail_fraction = 0;
    p->vac_m = 0.02; p->vac_x = 0.05; p->vac_x2 = 0.01;
}

/* Integrated column intensity ratios follow sum(Z^n): W/Mo = (74/42)^n, Se2/S2 = (34/16)^n,
 * SSe/S2 = (16^n + 34^n) / (2 16^n); and n fitted from W/Mo comes back. */
static void test_intensity_follows_z_power(void)
{
    if (tmd_test_rank != 0) return;
    tmd_ctx ctx;
    tmd_ctx_init(&ctx, MPI_COMM_SELF);
    ctx.log_level = TMD_LOG_QUIET;
    tmd_sim_params p;
    clean_params(&p, 11, 320, 0.07);
    p.comp_w = 0.5; p.comp_se = 0.5; p.cluster = 0; p.z_exponent = 1.73; p.probe_fwhm = 0.6;
    CU_ASSERT_EQUAL_FATAL(tmd_sim_params_finish(&ctx, &p), TMD_OK);
    float *img = NULL;
    tmd_atom_table a;
    CU_ASSERT_EQUAL_FATAL(render_clean(&ctx, &p, "z.h5", &img, &a), 0);
    double sum[8] = {0};
    int64_t cnt[8] = {0};
    double rad = 0.7 / p.pixel_size;
    for (int64_t i = 0; i < a.n; i++) {
        double x = a.x[i], y = a.y[i];
        if (x < rad + 2 || y < rad + 2 || x > 320 - rad - 3 || y > 320 - rad - 3) continue;
        double s = 0;
        for (int64_t yy = (int64_t)floor(y - rad); yy <= (int64_t)ceil(y + rad); yy++)
            for (int64_t xx = (int64_t)floor(x - rad); xx <= (int64_t)ceil(x + rad); xx++)
                if ((xx - x) * (xx - x) + (yy - y) * (yy - y) <= rad * rad) s += img[yy * 320 + xx];
        sum[a.species[i]] += s;
        cnt[a.species[i]]++;
    }
    double m[8];
    for (int k = 1; k < 8; k++) m[k] = cnt[k] ? sum[k] / (double)cnt[k] : NAN;
    CU_ASSERT(cnt[1] > 20 && cnt[2] > 20 && cnt[3] > 10 && cnt[4] > 10 && cnt[5] > 10);
    double n = p.z_exponent;
    CU_ASSERT_DOUBLE_EQUAL(m[2] / m[1], pow(74.0 / 42.0, n), 0.03 * pow(74.0 / 42.0, n));
    CU_ASSERT_DOUBLE_EQUAL(m[5] / m[3], pow(34.0 / 16.0, n), 0.04 * pow(34.0 / 16.0, n));
    CU_ASSERT_DOUBLE_EQUAL(m[4] / m[3], (pow(16, n) + pow(34, n)) / (2 * pow(16, n)), 0.04 * (pow(16, n) + pow(34, n)) / (2 * pow(16, n)));
    CU_ASSERT_DOUBLE_EQUAL(log(m[2] / m[1]) / log(74.0 / 42.0), n, 0.06);
    free(img);
    tmd_atom_table_free(&a);
}

/* Truth positions are where the columns appear, with scan jitter, wobble, shear, rotation
 * and detector smear on: intensity centroids agree with the truth to a fraction of a pixel;
 * every column's centre pixel carries its class in /truth/classes. */
static void test_truth_positions_match_pixels(void)
{
    if (tmd_test_rank != 0) return;
    tmd_ctx ctx;
    tmd_ctx_init(&ctx, MPI_COMM_SELF);
    ctx.log_level = TMD_LOG_QUIET;
    tmd_sim_params p;
    clean_params(&p, 12, 256, 0.1);
    p.jitter = 0.4; p.wobble = 0.4; p.shear = 0.02; p.scan_rotation = 1.5; p.scan_smear = 0.25; p.strain = 0.01;
    p.displacement = 0.05; p.probe_fwhm = 0.8; p.vac_x = 0; p.vac_m = 0; p.vac_x2 = 0;
    CU_ASSERT_EQUAL_FATAL(tmd_sim_params_finish(&ctx, &p), TMD_OK);
    float *img = NULL;
    tmd_atom_table a;
    CU_ASSERT_EQUAL_FATAL(render_clean(&ctx, &p, "pos.h5", &img, &a), 0);
    double rad = 0.6 / p.pixel_size, bx = 0, by = 0, e2 = 0;
    int64_t n = 0;
    for (int64_t i = 0; i < a.n; i++) {
        double x = a.x[i], y = a.y[i];
        if (x < rad + 3 || y < rad + 3 || x > 256 - rad - 4 || y > 256 - rad - 4) continue;
        double s = 0, sx = 0, sy = 0;
        for (int64_t yy = (int64_t)floor(y - rad); yy <= (int64_t)ceil(y + rad); yy++)
            for (int64_t xx = (int64_t)floor(x - rad); xx <= (int64_t)ceil(x + rad); xx++)
                if ((xx - x) * (xx - x) + (yy - y) * (yy - y) <= rad * rad) {
                    double v = img[yy * 256 + xx];
                    s += v; sx += v * (double)xx; sy += v * (double)yy;
                }
        double dx = sx / s - x, dy = sy / s - y;
        bx += dx; by += dy; e2 += dx * dx + dy * dy;
        n++;
    }
    CU_ASSERT(n > 100);
    bx /= (double)n; by /= (double)n;
    CU_ASSERT(fabs(bx) < 0.1);
    CU_ASSERT(fabs(by) < 0.1);
    CU_ASSERT(sqrt(e2 / (double)n) < 0.3);
    /* the class mask under each column */
    int64_t nc;
    uint8_t *cls = read_all(tmd_test_path("pos.h5"), "/truth/classes", H5T_NATIVE_UINT8, 1, &nc);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cls);
    static const int want[8] = {0, 1, 2, 3, 4, 5, 3, 4};
    int64_t bad = 0, tot = 0;
    for (int64_t i = 0; i < a.n; i++) {
        int64_t xx = (int64_t)floor(a.x[i] + 0.5), yy = (int64_t)floor(a.y[i] + 0.5);
        if (xx < 0 || yy < 0 || xx >= 256 || yy >= 256) continue;
        tot++;
        bad += cls[yy * 256 + xx] != want[a.species[i]];
    }
    CU_ASSERT(tot > 100);
    CU_ASSERT_EQUAL(bad, 0);
    free(cls);
    free(img);
    tmd_atom_table_free(&a);
}

/* Sub-pixel FFT cross-correlation of frame t against frame 0 (Hann window, parabolic peak):
 * the shift d with f_t(x) = f_0(x - d). */
static void phase_corr(const float *f0, const float *f1, int n, double *dx, double *dy)
{
    fftwf_complex *a = fftwf_malloc(sizeof(fftwf_complex) * (size_t)n * (size_t)n);
    fftwf_complex *b = fftwf_malloc(sizeof(fftwf_complex) * (size_t)n * (size_t)n);
    fftwf_plan pa = fftwf_plan_dft_2d(n, n, a, a, FFTW_FORWARD, FFTW_ESTIMATE);
    fftwf_plan pb = fftwf_plan_dft_2d(n, n, b, b, FFTW_FORWARD, FFTW_ESTIMATE);
    fftwf_plan pi = fftwf_plan_dft_2d(n, n, a, a, FFTW_BACKWARD, FFTW_ESTIMATE);
    double m0 = 0, m1 = 0;
    for (int i = 0; i < n * n; i++) { m0 += f0[i]; m1 += f1[i]; }
    m0 /= n * n; m1 /= n * n;
    for (int y = 0; y < n; y++)
        for (int x = 0; x < n; x++) { /* Hann window against edge effects */
            double w = (0.5 - 0.5 * cos(2 * M_PI * x / n)) * (0.5 - 0.5 * cos(2 * M_PI * y / n));
            a[y * n + x] = (float)((f0[y * n + x] - m0) * w);
            b[y * n + x] = (float)((f1[y * n + x] - m1) * w);
        }
    fftwf_execute(pa);
    fftwf_execute(pb);
    for (int i = 0; i < n * n; i++) {
        fftwf_complex c = b[i] * conjf(a[i]);
        /* plain cross-power (no whitening): with a lattice under shot noise the whitened
         * (pure-phase) peak is biased by tenths of a pixel; the broad peak fits well */
        a[i] = c;
    }
    fftwf_execute(pi);
    int best = 0;
    for (int i = 1; i < n * n; i++)
        if (crealf(a[i]) > crealf(a[best])) best = i;
    int by = best / n, bx = best % n;
#define R(yy, xx) crealf(a[(((yy) + n) % n) * n + (((xx) + n) % n)])
    double c0 = R(by, bx), cl = R(by, bx - 1), cr = R(by, bx + 1), cu = R(by - 1, bx), cd = R(by + 1, bx);
#undef R
    double ox = 0.5 * (cl - cr) / (cl - 2 * c0 + cr), oy = 0.5 * (cu - cd) / (cu - 2 * c0 + cd);
    *dx = (bx > n / 2 ? bx - n : bx) + ox;
    *dy = (by > n / 2 ? by - n : by) + oy;
    fftwf_destroy_plan(pa); fftwf_destroy_plan(pb); fftwf_destroy_plan(pi);
    fftwf_free(a); fftwf_free(b);
}

/* A stack's /drift (DESIGN.md: content at (x, y) in frame 0 is at (x + dx, y + dy) in frame t)
 * agrees with the FFT cross-correlation of the frames within 0.3 px. */
static void test_stack_drift_matches_phase_correlation(void)
{
    if (tmd_test_rank != 0) return;
    tmd_ctx ctx;
    tmd_ctx_init(&ctx, MPI_COMM_SELF);
    ctx.log_level = TMD_LOG_QUIET;
    tmd_sim_params p;
    tmd_sim_params_draw(&p, 21, 0);
    p.height = p.width = 256;
    p.frames = 4;
    p.pixel_size = 0.1; p.dose = 300; p.drift_vx = 1.3; p.drift_vy = -0.7; p.drift_step = 0.4;
    p.contamination = 0.3; p.contamination_cover = 0.5; p.hole_prob = 0; p.edge = 0;
    CU_ASSERT_EQUAL_FATAL(tmd_sim_params_finish(&ctx, &p), TMD_OK);
    const char *path = tmd_test_path("stack.h5");
    CU_ASSERT_EQUAL_FATAL(tmd_sim_write(&ctx, &p, path, 1, MPI_COMM_SELF), TMD_OK);
    int64_t n, nd;
    float *img = read_all(path, "/image", H5T_NATIVE_FLOAT, 4, &n);
    double *drift = read_all(path, "/drift", H5T_NATIVE_DOUBLE, 8, &nd);
    CU_ASSERT_PTR_NOT_NULL_FATAL(img);
    CU_ASSERT_PTR_NOT_NULL_FATAL(drift);
    CU_ASSERT_EQUAL(nd, 8);
    CU_ASSERT_EQUAL(drift[0], 0);
    CU_ASSERT_EQUAL(drift[1], 0);
    for (int t = 1; t < 4; t++) {
        double dx, dy;
        phase_corr(img, img + (size_t)t * 256 * 256, 256, &dx, &dy);
        CU_ASSERT_DOUBLE_EQUAL(dx, drift[2 * t], 0.3);
        CU_ASSERT_DOUBLE_EQUAL(dy, drift[2 * t + 1], 0.3);
    }
    /* sites outside hot regions never change; dynamic sites do */
    int64_t ns, nst;
    int8_t *dyn = read_all(path, "/sites/dynamic", H5T_NATIVE_INT8, 1, &ns);
    int8_t *state = read_all(path, "/sites/state", H5T_NATIVE_INT8, 1, &nst);
    CU_ASSERT_FATAL(dyn && state && nst == ns * 4);
    for (int64_t i = 0; i < ns; i++) {
        int changed = 0;
        for (int t = 1; t < 4; t++) changed |= state[i * 4 + t] != state[i * 4];
        if (changed) CU_ASSERT(dyn[i]);
    }
    free(dyn); free(state); free(img); free(drift);
}

/* Training tiles: values in [0, 1], classes 0..5 with columns present, deterministic in
 * (seed, index), different for another index; patches: labels 0..7, normalised values. */
static void test_training_api(void)
{
    if (tmd_test_rank != 0) return;
    tmd_ctx ctx;
    tmd_ctx_init(&ctx, MPI_COMM_SELF);
    enum { S = 96 };
    float a[S * S], b[S * S];
    uint8_t ca[S * S], cb[S * S];
    int64_t with_columns = 0;
    for (int idx = 0; idx < 8; idx++) {
        CU_ASSERT_EQUAL_FATAL(tmd_sim_training_tile(&ctx, 5, idx, S, 0.12, a, ca), TMD_OK);
        CU_ASSERT_EQUAL_FATAL(tmd_sim_training_tile(&ctx, 5, idx, S, 0.12, b, cb), TMD_OK);
        CU_ASSERT(memcmp(a, b, sizeof a) == 0);
        CU_ASSERT(memcmp(ca, cb, sizeof ca) == 0);
        float lo = 1, hi = 0;
        int64_t ncol = 0;
        for (int i = 0; i < S * S; i++) {
            lo = fminf(lo, a[i]);
            hi = fmaxf(hi, a[i]);
            CU_ASSERT(ca[i] <= 5);
            ncol += ca[i] > 0;
        }
        CU_ASSERT(lo >= 0 && hi <= 1);
        with_columns += ncol > 0;
    }
    CU_ASSERT(with_columns >= 6);
    CU_ASSERT_EQUAL(tmd_sim_training_tile(&ctx, 5, 1, S, 0.12, b, cb), TMD_OK);
    CU_ASSERT(memcmp(a, b, sizeof a) != 0);
    enum { N = 64, P = 24 };
    static float pt[N * P * P];
    int lab[N];
    int seen[TMD_PATCH_NLABELS] = {0};
    for (int idx = 0; idx < 6; idx++) {
        CU_ASSERT_EQUAL_FATAL(tmd_sim_training_patches(&ctx, 9, idx, N, P, 0.12, pt, lab), TMD_OK);
        for (int i = 0; i < N; i++) {
            CU_ASSERT(lab[i] >= 0 && lab[i] < TMD_PATCH_NLABELS);
            seen[lab[i]]++;
        }
        for (int i = 0; i < N * P * P; i++) CU_ASSERT(pt[i] >= 0 && pt[i] <= 1);
    }
    int kinds = 0;
    for (int k = 0; k < TMD_PATCH_NLABELS; k++) kinds += seen[k] > 0;
    CU_ASSERT(kinds >= 5);
    CU_ASSERT(seen[TMD_PATCH_EMPTY] > 0);
    /* bad arguments are refused with a message */
    CU_ASSERT_EQUAL(tmd_sim_training_tile(&ctx, 5, 0, 8, 0.12, a, ca), TMD_ERR_ARG);
    CU_ASSERT_EQUAL(tmd_sim_training_patches(&ctx, 5, 0, 4, 4, 0.12, pt, lab), TMD_ERR_ARG);
}

/* The normalisation maps the 0.5 / 99.9 percentiles to 0 / 1 and clips. */
static void test_normalise(void)
{
    enum { N = 10000 };
    static float v[N];
    for (int i = 0; i < N; i++) v[i] = (float)((i * 7919) % N); /* a permutation of 0..N-1 */
    float lo, hi;
    tmd_sim_normalise_pct(v, N, 0.5, 99.9, &lo, &hi);
    CU_ASSERT_DOUBLE_EQUAL(lo, 0.005 * (N - 1), 1.0);
    CU_ASSERT_DOUBLE_EQUAL(hi, 0.999 * (N - 1), 1.0);
    int64_t zeros = 0, ones = 0;
    for (int i = 0; i < N; i++) {
        zeros += v[i] == 0;
        ones += v[i] == 1;
    }
    CU_ASSERT(zeros >= 50 && zeros <= 52);
    CU_ASSERT(ones >= 10 && ones <= 12);
    float c[5] = {3, 3, 3, 3, 3};
    tmd_sim_normalise(c, 5);
    CU_ASSERT_EQUAL(c[0], 0);
}

/* Parameters: names and ranges are checked, composition parses, Vegard corners. */
static void test_params(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    tmd_sim_params p;
    tmd_sim_params_draw(&p, 3, 0);
    CU_ASSERT(p.pixel_size >= 0.06 && p.pixel_size <= 0.18);
    CU_ASSERT(p.z_exponent >= 1.5 && p.z_exponent <= 2.0);
    CU_ASSERT_EQUAL(tmd_sim_param_set(&ctx, &p, "dose", "250"), TMD_OK);
    CU_ASSERT_EQUAL(p.dose, 250);
    CU_ASSERT_EQUAL(tmd_sim_param_set(&ctx, &p, "composition", "0.25,0.75"), TMD_OK);
    CU_ASSERT_EQUAL(p.comp_w, 0.25);
    CU_ASSERT_EQUAL(p.comp_se, 0.75);
    CU_ASSERT_EQUAL(tmd_sim_param_set(&ctx, &p, "composition", "0.25"), TMD_ERR_CONFIG);
    tmd_error_clear(&ctx);
    CU_ASSERT_EQUAL(tmd_sim_param_set(&ctx, &p, "dsoe", "1"), TMD_ERR_CONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(ctx.err_msg, "'dsoe'"));
    tmd_error_clear(&ctx);
    CU_ASSERT_EQUAL(tmd_sim_param_set(&ctx, &p, "pixel_size", "7"), TMD_ERR_CONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(ctx.err_msg, "out of range"));
    CU_ASSERT_DOUBLE_EQUAL(tmd_sim_vegard(0, 0), 3.160, 1e-12);
    CU_ASSERT_DOUBLE_EQUAL(tmd_sim_vegard(1, 0), 3.153, 1e-12);
    CU_ASSERT_DOUBLE_EQUAL(tmd_sim_vegard(0, 1), 3.288, 1e-12);
    CU_ASSERT_DOUBLE_EQUAL(tmd_sim_vegard(1, 1), 3.282, 1e-12);
    p.lattice_a = 0;
    CU_ASSERT_EQUAL(tmd_sim_params_finish(&ctx, &p), TMD_OK);
    CU_ASSERT_DOUBLE_EQUAL(p.lattice_a, tmd_sim_vegard(0.25, 0.75), 1e-12);
}

/* The noiseless image (sim_world.expected_only, which benchmarks/classify/bound.c uses for its
 * Cramer-Rao bound) is the expected count of the detector image of the same world: with gain 1,
 * offset 0, no smear and no read noise, (counts - lambda) has mean 0 and variance lambda over
 * the pixels (Poisson), and lambda is not integer; a world initialised without the flag renders
 * the detector image bit for bit as before. */
static void test_expected_counts(void)
{
    if (tmd_test_rank != 0) return;
    tmd_ctx ctx;
    tmd_ctx_init(&ctx, MPI_COMM_SELF);
    ctx.log_level = TMD_LOG_QUIET;
    tmd_sim_params p;
    base_params(&p, 21, 128, 128);
    p.gain = 1;
    p.offset = 0;
    p.scan_smear = 0;
    p.read_noise = 0;
    p.dose = 200;
    CU_ASSERT_EQUAL_FATAL(tmd_sim_params_finish(&ctx, &p), TMD_OK);
    int64_t n = p.height * p.width;
    float *cnt = malloc((size_t)n * sizeof(float)), *cnt2 = malloc((size_t)n * sizeof(float));
    float *lam = malloc((size_t)n * sizeof(float));
    CU_ASSERT_FATAL(cnt && cnt2 && lam);
    sim_site_list sl = {0};
    sim_world w;
    CU_ASSERT_EQUAL_FATAL(tmd_sim_world_init(&ctx, &w, &p), TMD_OK);
    CU_ASSERT_EQUAL_FATAL(tmd_sim_render_rows(&ctx, &w, 0, 0, p.height, cnt, NULL, NULL, 0, &sl), TMD_OK);
    w.expected_only = 1;
    CU_ASSERT_EQUAL_FATAL(tmd_sim_render_rows(&ctx, &w, 0, 0, p.height, lam, NULL, NULL, 0, &sl), TMD_OK);
    tmd_sim_world_free(&w);
    CU_ASSERT_EQUAL_FATAL(tmd_sim_world_init(&ctx, &w, &p), TMD_OK);
    CU_ASSERT_EQUAL(w.expected_only, 0);
    CU_ASSERT_EQUAL_FATAL(tmd_sim_render_rows(&ctx, &w, 0, 0, p.height, cnt2, NULL, NULL, 0, &sl), TMD_OK);
    tmd_sim_world_free(&w);
    free(sl.s);
    CU_ASSERT_EQUAL(memcmp(cnt, cnt2, (size_t)n * sizeof(float)), 0);
    double d = 0, d2 = 0, sl_ = 0;
    int64_t frac = 0;
    for (int64_t i = 0; i < n; i++) {
        d += (double)cnt[i] - lam[i];
        d2 += ((double)cnt[i] - lam[i]) * ((double)cnt[i] - lam[i]);
        sl_ += lam[i];
        if (lam[i] != floorf(lam[i])) frac++;
    }
    CU_ASSERT(sl_ > 0);
    CU_ASSERT(fabs(d) < 4 * sqrt(sl_));         /* mean: z within 4 */
    CU_ASSERT_DOUBLE_EQUAL(d2 / sl_, 1.0, 0.06); /* variance = lambda (se ~0.015 over 16k px) */
    CU_ASSERT(frac > n / 2);
    free(cnt);
    free(cnt2);
    free(lam);
}

int main(int argc, char **argv)
{
    return tmd_test_main(argc, argv, "sim",
                         (tmd_test_case[]){{"rank and band invariance", test_rank_invariance},
                                           {"TIFF output matches HDF5", test_tiff_matches_hdf5},
                                           {"intensity follows Z^n", test_intensity_follows_z_power},
                                           {"truth positions match the pixels", test_truth_positions_match_pixels},
                                           {"stack drift matches phase correlation", test_stack_drift_matches_phase_correlation},
                                           {"training API", test_training_api},
                                           {"normalisation", test_normalise},
                                           {"parameters", test_params},
                                           {"expected counts (noiseless image)", test_expected_counts},
                                           {0}});
}
