/* End-to-end tests of the run driver (module pipeline) with a U-Net built by the nn API.
 * TMD_TEST_RANKS: 1 2 4
 * TMD_TEST_TIMEOUT: 300
 * Proves: `tmd_run_execute` gives exactly the same /atoms (row for row, bit for bit) on
 * 1, 2 and 4 ranks and with different process layouts (1 x P, P x 1) as a single-process run,
 * for a tile grid that does not divide the image and for a 3-frame stack split in time; with
 * the halo at the U-Net's reach, two tile sizes give the same column positions; the
 * result file carries the root attributes (version, config, ranks, input, pixel size, stage
 * table) and /segmentation/classes (one chunk per tile, written independently by the tiles'
 * owners) when save_maps=1; a truncated input and a missing model fail
 * on every rank with one message and leave no result file; an existing result is not
 * overwritten without --force; a run stopped after its first tiles resumes (run->resume)
 * to the same /atoms and /features/latent on a stack.
 * The model has random weights (a trained U-Net is not needed to test the machinery: every
 * quantity is a deterministic function of the tile), and its atoms are many and dense, which
 * stresses tile and rank edges. Detection accuracy is measured by `tmdflow score`, not here. */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"
#include "tmd/decomp.h"
#include "tmd/io.h"
#include "tmd/nn.h"
#include "tmd/pipeline.h"

static char model_path[1024], image_path[1024], stack_path[1024], bad_path[1024];

/* Honeycomb of Gaussian columns with noise, as uint16 counts. */
static float *synth(int64_t T, int64_t H, int64_t W, unsigned seed)
{
    float *img = malloc(sizeof(float) * (size_t)(T * H * W));
    const double b = 1.82 / 0.12, a = b * sqrt(3.0), sg = 0.45 / 0.12;
    for (int64_t t = 0; t < T; t++)
        for (int64_t y = 0; y < H; y++)
            for (int64_t x = 0; x < W; x++) {
                double v = 200 + 0.2 * (double)x;
                /* nearest lattice points of both sublattices */
                for (int sub = 0; sub < 2; sub++) {
                    double oy = sub ? b : 0, ox = 0;
                    double jy = floor(((double)y - oy) / (1.5 * b) + 0.5);
                    for (double j = jy - 1; j <= jy + 1; j++) {
                        double sx = fmod(j, 2.0) != 0 ? a / 2 : 0;
                        double ix = floor(((double)x - sx - ox - t * 0.7) / a + 0.5);
                        for (double i = ix - 1; i <= ix + 1; i++) {
                            double cy = j * 1.5 * b + oy, cx = i * a + sx + ox + t * 0.7 + (sub ? a / 2 : 0);
                            double d2 = (x - cx) * (x - cx) + (y - cy) * (y - cy);
                            v += (sub ? 400 : 1000) * exp(-d2 / (2 * sg * sg));
                        }
                    }
                }
                img[(t * H + y) * W + x] = (float)(v + 40 * tmd_test_randf(&seed));
            }
    return img;
}

static void make_fixtures(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    snprintf(model_path, sizeof model_path, "%s", tmd_test_path("unet.h5"));
    snprintf(image_path, sizeof image_path, "%s", tmd_test_path("image.tif"));
    snprintf(stack_path, sizeof stack_path, "%s", tmd_test_path("stack.tif"));
    snprintf(bad_path, sizeof bad_path, "%s", tmd_test_path("truncated.tif"));
    int ok = 1;
    if (tmd_test_rank == 0) {
        tmd_nn_model *m = NULL;
        ok = tmd_nn_build_unet(&ctx, 4, 6, 1234, &m) == TMD_OK &&
             tmd_nn_model_save(&ctx, m, model_path, "{\"purpose\": \"test_pipeline, random weights\"}") == TMD_OK;
        tmd_nn_model_free(&m);
        float *img = synth(1, 241, 303, 5);
        ok = ok && tmd_tiff_write(&ctx, image_path, img, 1, 241, 303, TMD_U16, 0) == TMD_OK;
        free(img);
        img = synth(3, 130, 150, 9);
        ok = ok && tmd_tiff_write(&ctx, stack_path, img, 3, 130, 150, TMD_F32, 0) == TMD_OK;
        free(img);
        /* a truncated copy of the image */
        FILE *f = fopen(image_path, "rb"), *g = fopen(bad_path, "wb");
        char buf[4096];
        size_t n, total = 0;
        while (f && g && (n = fread(buf, 1, sizeof buf, f)) > 0 && total < 60000) total += fwrite(buf, 1, n, g);
        if (f) fclose(f);
        if (g) fclose(g);
        if (!ctx.err_code) tmd_error_clear(&ctx);
        else fprintf(stderr, "fixture: %s\n", ctx.err_msg);
    }
    MPI_Bcast(&ok, 1, MPI_INT, 0, tmd_test_comm);
    CU_ASSERT_FATAL(ok);
}

typedef struct {
    int64_t n;
    double *rows; /* (n, 11): frame, y, x, intensity, sublattice, species, prob[5] */
} atoms_t;

static int cmp_rows(const void *a, const void *b)
{
    const double *p = a, *q = b;
    for (int k = 0; k < 3; k++)
        if (p[k] != q[k]) return p[k] < q[k] ? -1 : 1;
    return 0;
}

static int read_atoms(const char *path, atoms_t *out)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    hid_t f = H5I_INVALID_HID;
    if (tmd_h5_open_read(&ctx, path, &f)) return 0;
    int64_t n, k;
    int32_t *fr = NULL;
    double *x = NULL, *y = NULL;
    float *in = NULL, *pr = NULL;
    int8_t *sub = NULL, *sp = NULL;
    int ok = !tmd_h5_read_rows(&ctx, f, "/atoms/frame", TMD_I32, &n, &k, (void **)&fr) &&
             !tmd_h5_read_rows(&ctx, f, "/atoms/x", TMD_F64, &n, &k, (void **)&x) &&
             !tmd_h5_read_rows(&ctx, f, "/atoms/y", TMD_F64, &n, &k, (void **)&y) &&
             !tmd_h5_read_rows(&ctx, f, "/atoms/intensity", TMD_F32, &n, &k, (void **)&in) &&
             !tmd_h5_read_rows(&ctx, f, "/atoms/sublattice", TMD_I8, &n, &k, (void **)&sub) &&
             !tmd_h5_read_rows(&ctx, f, "/atoms/species", TMD_I8, &n, &k, (void **)&sp) &&
             !tmd_h5_read_rows(&ctx, f, "/atoms/prob", TMD_F32, &n, &k, (void **)&pr) && k >= 5;
    H5Fclose(f);
    if (ok) {
        out->n = n;
        out->rows = malloc(sizeof(double) * 11 * (size_t)(n + 1));
        for (int64_t i = 0; i < n; i++) {
            double *r = out->rows + 11 * i;
            r[0] = fr[i], r[1] = y[i], r[2] = x[i], r[3] = in[i], r[4] = sub[i], r[5] = sp[i];
            for (int c = 0; c < 5; c++) r[6 + c] = pr[i * k + c];
        }
        (void)cmp_rows; /* rows compared in file order: the write stage makes the order canonical */
    }
    free(fr), free(x), free(y), free(in), free(pr), free(sub), free(sp);
    return ok;
}

static void base_run(tmd_run *run, const char *input, const char *output)
{
    tmd_run_init(run);
    snprintf(run->input, sizeof run->input, "%s", input);
    snprintf(run->output, sizeof run->output, "%s", output);
    snprintf(run->cfg.unet_model, sizeof run->cfg.unet_model, "%s", model_path);
    run->cfg.tile = 64;  /* 241 x 303 at 0.12 -> 4 x 5 tiles, last ones partial */
    run->cfg.halo = 24;
    /* the random-weight U-Net's peaks are rarely on columns: keep them all (no significance
     * test) so that many atoms cross tile and rank edges */
    run->cfg.atom_significance = 0;
    run->force = 1;
    run->pixel_size_arg = 0.12;
}

/* Runs on the whole test communicator (layout pd) and, on rank 0, alone; compares. */
static void compare_ranks(const char *input, double px, int fpt, const int *pd, const char *tag, int64_t *natoms)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    char out_par[1024], out_ser[1024], name[128];
    snprintf(name, sizeof name, "par_%s.h5", tag);
    snprintf(out_par, sizeof out_par, "%s", tmd_test_path(name));
    snprintf(name, sizeof name, "ser_%s.h5", tag);
    snprintf(out_ser, sizeof out_ser, "%s", tmd_test_path(name));
    static tmd_run run;
    base_run(&run, input, out_par);
    run.pixel_size_arg = px;
    run.cfg.frames_per_tile = fpt;
    if (pd) memcpy(run.pdims, pd, sizeof run.pdims);
    tmd_status st = tmd_run_execute(&ctx, tmd_test_comm, &run);
    if (st && tmd_test_rank == 0) fprintf(stderr, "run failed: %s\n", ctx.err_msg);
    CU_ASSERT_EQUAL_FATAL(st, TMD_OK);
    tmd_run_free(&run);
    int same = 1;
    if (tmd_test_rank == 0) {
        tmd_ctx self;
        tmd_ctx_init(&self, MPI_COMM_SELF);
        self.log_level = TMD_LOG_QUIET;
        base_run(&run, input, out_ser);
        run.pixel_size_arg = px;
        run.cfg.frames_per_tile = fpt;
        st = tmd_run_execute(&self, MPI_COMM_SELF, &run);
        tmd_run_free(&run);
        atoms_t a = {0}, b = {0};
        same = st == TMD_OK && read_atoms(out_par, &a) && read_atoms(out_ser, &b) && a.n == b.n && a.n > 0 &&
               memcmp(a.rows, b.rows, sizeof(double) * 11 * (size_t)a.n) == 0;
        if (!same)
            fprintf(stderr, "%s: %lld atoms on %d ranks, %lld alone (status %d)\n", tag, (long long)a.n, tmd_test_size,
                    (long long)b.n, st);
        *natoms = a.n;
        free(a.rows);
        free(b.rows);
    }
    MPI_Bcast(&same, 1, MPI_INT, 0, tmd_test_comm);
    MPI_Bcast(natoms, 1, MPI_INT64_T, 0, tmd_test_comm);
    CU_ASSERT(same);
}

static void test_image_any_ranks(void)
{
    make_fixtures();
    int64_t n = 0;
    compare_ranks(image_path, 0.12, 1, NULL, "auto", &n);
    CU_ASSERT(n > 100);
    int row[3] = {1, 1, tmd_test_size}, col[3] = {1, tmd_test_size, 1};
    compare_ranks(image_path, 0.12, 1, row, "row", &n);
    compare_ranks(image_path, 0.12, 1, col, "col", &n);
    /* resampled: input 0.1 A/px (tile edge 77 px, window resampled by 1.2) */
    compare_ranks(image_path, 0.10, 1, NULL, "px010", &n);
    CU_ASSERT(n > 100);
}

static void test_stack_any_ranks(void)
{
    int64_t n = 0;
    compare_ranks(stack_path, 0.12, 1, NULL, "stack1", &n);
    CU_ASSERT(n > 50);
    int tsplit[3] = {tmd_test_size, 1, 1};
    compare_ranks(stack_path, 0.12, 2, tsplit, "stack2", &n);
}

/* With the halo at the U-Net's reach, a tile's kept centre does not depend on where the
 * tile edges lie: tile 64 and tile 112 give the same columns (positions and intensities).
 * Background removal is off here: its coarse cells follow the tile grid (tmd/normalise.h),
 * so with it on the tile size moves the background, and every column's values, slightly. */
static void test_tile_size_invariance(void)
{
    if (tmd_test_size > 1) return; /* a property of tiles, not ranks: the 1-rank run checks it */
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    int reach = 0;
    tmd_nn_model *m = NULL;
    CU_ASSERT_EQUAL_FATAL(tmd_nn_model_load(&ctx, model_path, &m), TMD_OK);
    reach = tmd_nn_model_reach(m);
    tmd_nn_model_free(&m);
    const char *out[2] = {tmd_test_path("t64.h5"), tmd_test_path("t112.h5")};
    int tiles[2] = {64, 112};
    static tmd_run run;
    for (int k = 0; k < 2; k++) {
        base_run(&run, image_path, out[k]);
        run.cfg.tile = tiles[k];
        run.cfg.halo = reach;
        run.cfg.background_sigma = 0;
        tmd_status st = tmd_run_execute(&ctx, tmd_test_comm, &run);
        tmd_run_free(&run);
        CU_ASSERT_EQUAL_FATAL(st, TMD_OK);
    }
    if (tmd_test_rank == 0) {
        atoms_t a = {0}, b = {0};
        CU_ASSERT_FATAL(read_atoms(out[0], &a) && read_atoms(out[1], &b));
        qsort(a.rows, (size_t)a.n, sizeof(double) * 11, cmp_rows);
        qsort(b.rows, (size_t)b.n, sizeof(double) * 11, cmp_rows);
        CU_ASSERT_EQUAL(a.n, b.n);
        int64_t diff = 0;
        for (int64_t i = 0; i < a.n && a.n == b.n; i++)
            for (int c = 0; c < 4; c++) diff += a.rows[11 * i + c] != b.rows[11 * i + c];
        CU_ASSERT_EQUAL(diff, 0);
        if (a.n != b.n || diff) fprintf(stderr, "tile 64: %lld atoms, tile 112: %lld, %lld values differ\n", (long long)a.n, (long long)b.n, (long long)diff);
        free(a.rows);
        free(b.rows);
    }
}

static void test_result_file(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    static tmd_run run;
    const char *out = tmd_test_path("maps.h5");
    base_run(&run, image_path, out);
    run.cfg.save_maps = 1;
    tmd_status st = tmd_run_execute(&ctx, tmd_test_comm, &run);
    tmd_run_free(&run);
    CU_ASSERT_EQUAL_FATAL(st, TMD_OK);
    if (tmd_test_rank == 0) {
        hid_t f = H5I_INVALID_HID;
        CU_ASSERT_EQUAL_FATAL(tmd_h5_open_read(&ctx, out, &f), TMD_OK);
        char *v = NULL;
        CU_ASSERT_EQUAL(tmd_h5_read_attr_str(&ctx, f, "/", "tmdflow_version", &v), TMD_OK);
        free(v);
        v = NULL;
        CU_ASSERT_EQUAL(tmd_h5_read_attr_str(&ctx, f, "/", "config", &v), TMD_OK);
        CU_ASSERT(v && strstr(v, "pixel_size") && strstr(v, "save_maps"));
        free(v);
        v = NULL;
        CU_ASSERT_EQUAL(tmd_h5_read_attr_str(&ctx, f, "/", "stage_table", &v), TMD_OK);
        CU_ASSERT(v && strstr(v, "unet") && strstr(v, "atoms") && strstr(v, "peak_MiB_per_rank"));
        free(v);
        v = NULL;
        CU_ASSERT_EQUAL(tmd_h5_read_attr_str(&ctx, f, "/", "input", &v), TMD_OK);
        CU_ASSERT(v && !strcmp(v, image_path));
        free(v);
        double px = 0, ranks = 0;
        CU_ASSERT_EQUAL(tmd_h5_read_attr_f64(&ctx, f, "/", "pixel_size", &px, 1), TMD_OK);
        CU_ASSERT_DOUBLE_EQUAL(px, 0.12, 1e-12);
        CU_ASSERT_EQUAL(tmd_h5_read_attr_f64(&ctx, f, "/", "ranks", &ranks, 1), TMD_OK);
        CU_ASSERT_EQUAL((int)ranks, tmd_test_size);
        hid_t d = H5Dopen2(f, "/segmentation/classes", H5P_DEFAULT);
        CU_ASSERT_FATAL(d >= 0);
        hid_t sp = H5Dget_space(d);
        hsize_t dims[3] = {0, 0, 0};
        CU_ASSERT_EQUAL(H5Sget_simple_extent_ndims(sp), 3);
        H5Sget_simple_extent_dims(sp, dims, NULL);
        CU_ASSERT(dims[0] == 1 && dims[1] == 241 && dims[2] == 303);
        hid_t dcpl = H5Dget_create_plist(d);
        hsize_t chunk[3] = {0, 0, 0};
        CU_ASSERT_EQUAL(H5Pget_layout(dcpl), H5D_CHUNKED);
        CU_ASSERT_EQUAL(H5Pget_chunk(dcpl, 3, chunk), 3);
        /* one chunk per tile: 64 nominal px at the scale the models saw (the lattice's) */
        double model_px = 0;
        CU_ASSERT_EQUAL(tmd_h5_read_attr_f64(&ctx, f, "/", "model_pixel_size", &model_px, 1), TMD_OK);
        CU_ASSERT(fabs(model_px / 0.12 - 1) < 0.05);
        int64_t te = tmd_decomp_tile_edge(64, 0.12, model_px);
        CU_ASSERT(chunk[0] == 1 && (int64_t)chunk[1] == te && (int64_t)chunk[2] == te);
        H5Pclose(dcpl);
        uint8_t *cls = malloc(241 * 303);
        CU_ASSERT(H5Dread(d, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, cls) >= 0);
        int maxc = 0;
        for (int i = 0; i < 241 * 303; i++) maxc = cls[i] > maxc ? cls[i] : maxc;
        CU_ASSERT(maxc > 0 && maxc < 6);
        free(cls);
        H5Sclose(sp);
        H5Dclose(d);
        H5Fclose(f);
    }
}

/* Every rank gets the same error; no result file and no .tmp remain. */
static void expect_failure(tmd_run *run, tmd_status code, const char *needle)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    tmd_status st = tmd_run_execute(&ctx, tmd_test_comm, run);
    CU_ASSERT_EQUAL(st, code);
    CU_ASSERT_PTR_NOT_NULL(strstr(ctx.err_msg, needle));
    if (!strstr(ctx.err_msg, needle) && tmd_test_rank == 0) fprintf(stderr, "message: %s\n", ctx.err_msg);
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s.tmp", run->output);
    MPI_Barrier(tmd_test_comm);
    CU_ASSERT(access(run->output, F_OK) != 0);
    CU_ASSERT(access(tmp, F_OK) != 0);
    tmd_run_free(run);
}

static void test_failures(void)
{
    static tmd_run run;
    base_run(&run, bad_path, tmd_test_path("bad.h5"));
    expect_failure(&run, TMD_ERR_FORMAT, "truncated.tif");
    base_run(&run, image_path, tmd_test_path("nomodel.h5"));
    snprintf(run.cfg.unet_model, sizeof run.cfg.unet_model, "%s", tmd_test_path("missing-model.h5"));
    expect_failure(&run, TMD_ERR_IO, "missing-model.h5");
    /* an existing result is kept without --force */
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    const char *exists = tmd_test_path("exists.h5");
    if (tmd_test_rank == 0) {
        FILE *f = fopen(exists, "w");
        if (f) fputs("precious", f), fclose(f);
    }
    MPI_Barrier(tmd_test_comm);
    base_run(&run, image_path, exists);
    run.force = 0;
    tmd_status st = tmd_run_execute(&ctx, tmd_test_comm, &run);
    tmd_run_free(&run);
    CU_ASSERT_EQUAL(st, TMD_ERR_EXISTS);
    char buf[16] = {0};
    FILE *f = fopen(exists, "r");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    CU_ASSERT(fgets(buf, sizeof buf, f) && !strcmp(buf, "precious"));
    fclose(f);
}

/* Reads /features/latent (malloc'd) or returns 0. */
static int read_latent(const char *path, int64_t *n, int64_t *k, float **lat)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    ctx.log_level = TMD_LOG_QUIET;
    hid_t f = H5I_INVALID_HID;
    if (tmd_h5_open_read(&ctx, path, &f)) return 0;
    int ok = !tmd_h5_read_rows(&ctx, f, "/features/latent", TMD_F32, n, k, (void **)lat);
    H5Fclose(f);
    return ok;
}

/* Checkpoint/resume on a 3-frame stack (the features tile stage fills latent columns): a run
 * stopped after 1 computed tile per rank (test hook TMDFLOW_STOP_AFTER_TILES) returns
 * TMD_ERR_INTERRUPTED with no result and a checkpoint; run->resume gives /atoms and
 * /features/latent identical to an uninterrupted run; the checkpoint is then removed. */
static void test_resume_stack(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    volatile sig_atomic_t flag = 0;
    ctx.stop_flag = &flag;
    const char *ref = tmd_test_path("resume_ref.h5"), *out = tmd_test_path("resume_out.h5");
    char ck[1100];
    snprintf(ck, sizeof ck, "%s.ckpt", out);
    static tmd_run run;
    base_run(&run, stack_path, ref);
    tmd_status st = tmd_run_execute(&ctx, tmd_test_comm, &run);
    tmd_run_free(&run);
    CU_ASSERT_EQUAL_FATAL(st, TMD_OK);
    setenv("TMDFLOW_STOP_AFTER_TILES", "1", 1);
    base_run(&run, stack_path, out);
    st = tmd_run_execute(&ctx, tmd_test_comm, &run);
    tmd_run_free(&run);
    unsetenv("TMDFLOW_STOP_AFTER_TILES");
    flag = 0;
    CU_ASSERT_EQUAL_FATAL(st, TMD_ERR_INTERRUPTED);
    MPI_Barrier(tmd_test_comm);
    CU_ASSERT(access(out, F_OK) != 0);
    char man[1200];
    snprintf(man, sizeof man, "%s/manifest", ck);
    CU_ASSERT(access(man, F_OK) == 0);
    base_run(&run, stack_path, out);
    run.force = 0;
    run.resume = 1;
    st = tmd_run_execute(&ctx, tmd_test_comm, &run);
    int64_t loaded = run.tiles_loaded, total_loaded = 0;
    tmd_run_free(&run);
    CU_ASSERT_EQUAL_FATAL(st, TMD_OK);
    MPI_Allreduce(&loaded, &total_loaded, 1, MPI_INT64_T, MPI_SUM, tmd_test_comm);
    CU_ASSERT(total_loaded >= 1);
    MPI_Barrier(tmd_test_comm);
    CU_ASSERT(access(ck, F_OK) != 0);
    if (tmd_test_rank == 0) {
        atoms_t a = {0}, b = {0};
        CU_ASSERT_FATAL(read_atoms(ref, &a) && read_atoms(out, &b));
        CU_ASSERT(a.n == b.n && a.n > 0 && memcmp(a.rows, b.rows, sizeof(double) * 11 * (size_t)a.n) == 0);
        int64_t na = 0, ka = 0, nb = 0, kb = 0;
        float *la = NULL, *lb = NULL;
        int ha = read_latent(ref, &na, &ka, &la), hb = read_latent(out, &nb, &kb, &lb);
        CU_ASSERT(ha && hb); /* a stack has features */
        if (ha && hb) CU_ASSERT(na == nb && ka == kb && !memcmp(la, lb, sizeof(float) * (size_t)(na * ka)));
        free(la), free(lb), free(a.rows), free(b.rows);
    }
}

int main(int argc, char **argv)
{
    return tmd_test_main(argc, argv, "pipeline",
                         (tmd_test_case[]){{"image: same atoms on any rank count and layout", test_image_any_ranks},
                                           {"stack: same atoms, time split", test_stack_any_ranks},
                                           {"tile size does not change atoms (halo = reach)", test_tile_size_invariance},
                                           {"result file attributes and class map", test_result_file},
                                           {"bad input, missing model, existing result", test_failures},
                                           {"checkpoint and resume (stack, features)", test_resume_stack},
                                           {0}});
}
