/* libFuzzer harness: the model-file loader tmd_nn_model_load (src/nn/model.c), structure-aware.
 *
 * Byte-flipping an HDF5 file mostly exercises libhdf5's own parser (not ours, and HDF5 1.10
 * is not hardened against malicious files — see docs/reliability.md). This harness instead
 * starts from a VALID model file and applies edits that a broken or hostile model could
 * carry, so that every check in tmdflow's loader is reached:
 *
 *   input = template byte, then 8-byte edit records:
 *     [0] edit kind   [1..7] arguments
 *   kinds: root integer attribute (format_version, in_channels, input_size, n_layers,
 *          latent) set to a value, or rewritten as a string / a 2-element array;
 *          a layer's integer attribute (op, in0, in1, cout, k, dilation, batchnorm, act,
 *          rc, rh, rw) set to a value; a layer's weight dataset (w, b, gamma, beta,
 *          running_mean, running_var) replaced by one of another rank/shape, or with NaN,
 *          Inf or negative values; an attribute, dataset or layer group deleted; the
 *          `format` or `kind` string changed; the dropout `p` or leaky_slope changed.
 *
 * Property checked: the loader either refuses (negative status, non-empty message, no model
 * returned) or returns a model that plans (or is refused by the planner with a message) and
 * executes at a small size without any sanitizer report. (Outputs are not required to be
 * finite: finite but absurd weights such as 1e30 may overflow legitimately.)
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hdf5.h>

#include "tmd/nn.h"

static char g_tpl[2][256];   /* template model files */
static char g_path[256];     /* the file edited and loaded on each input */

static void quiet_ctx(tmd_ctx *ctx)
{
    memset(ctx, 0, sizeof *ctx);
    ctx->nranks = 1;
    ctx->log_level = TMD_LOG_QUIET;
    ctx->err_rank = -1;
}

static void die(const char *what, const tmd_ctx *ctx)
{
    fprintf(stderr, "fuzz_model: setup failed: %s: %s\n", what, ctx ? ctx->err_msg : "");
    abort();
}

/* Template 0: fully convolutional (conv+BN+ReLU, pool, dilated conv, upsample, concat, sum,
 * 1x1 conv, softmax). Template 1: dense model on 8x8 patches (conv, pool, reshape via dense,
 * dropout, leaky, softmax) with a latent layer. */
static void build_templates(void)
{
    tmd_ctx ctx;
    quiet_ctx(&ctx);
    tmd_nn_model *m = NULL;
    if (tmd_nn_model_new(&ctx, "custom", 1, 0, &m)) die("model_new 0", &ctx);
    int c1 = tmd_nn_add_conv(&ctx, m, 0, 4, 3, 1, 1, TMD_NN_ACT_RELU);
    int p1 = tmd_nn_add_maxpool(&ctx, m, c1);
    int c2 = tmd_nn_add_conv(&ctx, m, p1, 4, 3, 2, 0, TMD_NN_ACT_LEAKY);
    int u1 = tmd_nn_add_upsample(&ctx, m, c2);
    int s1 = tmd_nn_add_sum(&ctx, m, u1, c1);
    int k1 = tmd_nn_add_concat(&ctx, m, s1, c1);
    int c3 = tmd_nn_add_conv(&ctx, m, k1, 3, 1, 1, 0, TMD_NN_ACT_NONE);
    int sm = tmd_nn_add_softmax(&ctx, m, c3);
    if (sm < 0) die("layers 0", &ctx);
    if (tmd_nn_model_init_weights(&ctx, m, 1)) die("init 0", &ctx);
    snprintf(g_tpl[0], sizeof g_tpl[0], "/dev/shm/tmd_fuzz_model_tpl0_%d.h5", (int)getpid());
    if (tmd_nn_model_save(&ctx, m, g_tpl[0], "{\"fuzz\": 0}")) die("save 0", &ctx);
    tmd_nn_model_free(&m);

    if (tmd_nn_model_new(&ctx, "classifier", 1, 8, &m)) die("model_new 1", &ctx);
    c1 = tmd_nn_add_conv(&ctx, m, 0, 2, 3, 1, 1, TMD_NN_ACT_LEAKY);
    p1 = tmd_nn_add_maxpool(&ctx, m, c1);
    int d1 = tmd_nn_add_dense(&ctx, m, p1, 6, TMD_NN_ACT_RELU);
    int dr = tmd_nn_add_dropout(&ctx, m, d1, 0.5f);
    int d2 = tmd_nn_add_dense(&ctx, m, dr, 8, TMD_NN_ACT_NONE);
    int rs = tmd_nn_add_reshape(&ctx, m, d2, 2, 2, 2);
    int d3 = tmd_nn_add_dense(&ctx, m, rs, 4, TMD_NN_ACT_NONE);
    sm = tmd_nn_add_softmax(&ctx, m, d3);
    if (sm < 0) die("layers 1", &ctx);
    if (tmd_nn_model_init_weights(&ctx, m, 2)) die("init 1", &ctx);
    if (tmd_nn_model_set_latent(&ctx, m, d1)) die("latent 1", &ctx);
    snprintf(g_tpl[1], sizeof g_tpl[1], "/dev/shm/tmd_fuzz_model_tpl1_%d.h5", (int)getpid());
    if (tmd_nn_model_save(&ctx, m, g_tpl[1], NULL)) die("save 1", &ctx);
    tmd_nn_model_free(&m);
    snprintf(g_path, sizeof g_path, "/dev/shm/tmd_fuzz_model_%d.h5", (int)getpid());
}

static void cleanup_files(void)
{
    unlink(g_tpl[0]);
    unlink(g_tpl[1]);
    unlink(g_path);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    /* Keep HDF5's large per-file blocks (metadata cache) on its free lists instead of handing
     * them back to malloc at every H5Fclose (under ASan each is a fresh mmap, faulted in and
     * zeroed again per input; see fuzz_h5input.c). HDF5-internal memory only. */
    H5set_free_list_limits(-1, -1, -1, -1, -1, -1);
    build_templates();
    atexit(cleanup_files);
    return 0;
}

static int copy_file(const char *from, const char *to)
{
    FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
    int ok = a && b;
    char buf[65536];
    size_t n;
    while (ok && (n = fread(buf, 1, sizeof buf, a)) > 0) ok = fwrite(buf, 1, n, b) == n;
    if (a) fclose(a);
    if (b && fclose(b)) ok = 0;
    return ok ? 0 : -1;
}

static int32_t i32(const uint8_t *p) { return (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24); }

/* A value biased towards the small, boundary and hostile numbers that matter. */
static int32_t pick_int(const uint8_t *a)
{
    static const int32_t special[] = {0, 1, -1, 2, 3, 4, 5, 7, 8, 9, 12, 16, 64, 255, 256, 4096, 4097, 65536, 65537,
                                      INT32_MAX, INT32_MIN, 1 << 20, -2, 11, 13, 40};
    switch (a[0] % 3) {
    case 0: return special[a[1] % (sizeof special / sizeof special[0])];
    case 1: return (int8_t)a[1];
    default: return i32(a + 1);
    }
}

static void set_attr_int(hid_t obj, const char *name, int32_t v, int shape)
{
    if (H5Aexists(obj, name) > 0) H5Adelete(obj, name);
    hid_t sp, t = H5T_NATIVE_INT32, a;
    int32_t vals[2] = {v, v};
    if (shape == 1) { /* as a 2-element array */
        hsize_t d[1] = {2};
        sp = H5Screate_simple(1, d, NULL);
    } else if (shape == 2) { /* as a string */
        char s[32];
        snprintf(s, sizeof s, "%d", (int)v);
        hid_t st = H5Tcopy(H5T_C_S1);
        H5Tset_size(st, strlen(s) + 1);
        sp = H5Screate(H5S_SCALAR);
        a = H5Acreate2(obj, name, st, sp, H5P_DEFAULT, H5P_DEFAULT);
        if (a >= 0) {
            H5Awrite(a, st, s);
            H5Aclose(a);
        }
        H5Tclose(st);
        H5Sclose(sp);
        return;
    } else if (shape == 3) { /* as a double */
        double dv = v + 0.5;
        sp = H5Screate(H5S_SCALAR);
        a = H5Acreate2(obj, name, H5T_NATIVE_DOUBLE, sp, H5P_DEFAULT, H5P_DEFAULT);
        if (a >= 0) {
            H5Awrite(a, H5T_NATIVE_DOUBLE, &dv);
            H5Aclose(a);
        }
        H5Sclose(sp);
        return;
    } else {
        sp = H5Screate(H5S_SCALAR);
    }
    a = H5Acreate2(obj, name, t, sp, H5P_DEFAULT, H5P_DEFAULT);
    if (a >= 0) {
        H5Awrite(a, t, vals);
        H5Aclose(a);
    }
    H5Sclose(sp);
}

static void set_attr_float(hid_t obj, const char *name, float v)
{
    if (H5Aexists(obj, name) > 0) H5Adelete(obj, name);
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(obj, name, H5T_NATIVE_FLOAT, sp, H5P_DEFAULT, H5P_DEFAULT);
    if (a >= 0) {
        H5Awrite(a, H5T_NATIVE_FLOAT, &v);
        H5Aclose(a);
    }
    H5Sclose(sp);
}

static void set_attr_str(hid_t obj, const char *name, const char *s)
{
    if (H5Aexists(obj, name) > 0) H5Adelete(obj, name);
    hid_t st = H5Tcopy(H5T_C_S1);
    H5Tset_size(st, strlen(s) + 1);
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(obj, name, st, sp, H5P_DEFAULT, H5P_DEFAULT);
    if (a >= 0) {
        H5Awrite(a, st, s);
        H5Aclose(a);
    }
    H5Sclose(sp);
    H5Tclose(st);
}

static const char *ROOT_INT[] = {"format_version", "in_channels", "input_size", "n_layers", "latent"};
static const char *LAYER_INT[] = {"op", "in0", "in1", "cout", "k", "dilation", "batchnorm", "act", "rc", "rh", "rw"};
static const char *DSETS[] = {"w", "b", "gamma", "beta", "running_mean", "running_var"};

static void replace_dset(hid_t g, const char *name, const uint8_t *a)
{
    if (H5Lexists(g, name, H5P_DEFAULT) > 0) H5Ldelete(g, name, H5P_DEFAULT);
    int rank = 1 + a[0] % 4;
    hsize_t d[4];
    hsize_t n = 1;
    for (int i = 0; i < rank; i++) {
        d[i] = a[1 + i] % 10;
        n *= d[i];
    }
    hid_t type = (a[5] & 8) ? H5T_NATIVE_DOUBLE : ((a[5] & 16) ? H5T_NATIVE_INT32 : H5T_NATIVE_FLOAT);
    float *v = calloc(n ? n : 1, sizeof(float));
    double *dv = calloc(n ? n : 1, sizeof(double));
    int32_t *iv = calloc(n ? n : 1, sizeof(int32_t));
    for (hsize_t i = 0; i < n; i++) {
        float x;
        switch (a[6] % 5) {
        case 0: x = 0.1f * (float)((i % 7) - 3); break;
        case 1: x = (i == n / 2) ? NAN : 0.5f; break;
        case 2: x = (i == 0) ? INFINITY : 0.5f; break;
        case 3: x = -1.0f; break;
        default: x = 1e30f; break;
        }
        v[i] = x;
        dv[i] = x;
        iv[i] = (int32_t)(i % 3);
    }
    hid_t sp = H5Screate_simple(rank, d, NULL);
    hid_t ds = H5Dcreate2(g, name, type, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (ds >= 0) {
        H5Dwrite(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                 type == H5T_NATIVE_DOUBLE ? (void *)dv : (type == H5T_NATIVE_INT32 ? (void *)iv : (void *)v));
        H5Dclose(ds);
    }
    H5Sclose(sp);
    free(v);
    free(dv);
    free(iv);
}

/* Applies one 8-byte edit record to the open model file. */
static void apply_edit(hid_t f, int n_layers, const uint8_t *r)
{
    char lname[32];
    snprintf(lname, sizeof lname, "layers/%03d", 1 + r[1] % (n_layers > 1 ? n_layers - 1 : 1));
    switch (r[0] % 8) {
    case 0:
        set_attr_int(f, ROOT_INT[r[2] % 5], pick_int(r + 3), r[7] % 8 == 0 ? 1 + r[6] % 3 : 0);
        break;
    case 1:
    case 2: {
        hid_t g = H5Gopen2(f, lname, H5P_DEFAULT);
        if (g < 0) break;
        set_attr_int(g, LAYER_INT[r[2] % 11], pick_int(r + 3), r[7] % 16 == 0 ? 1 + r[6] % 3 : 0);
        H5Gclose(g);
        break;
    }
    case 3: {
        hid_t g = H5Gopen2(f, lname, H5P_DEFAULT);
        if (g < 0) break;
        replace_dset(g, DSETS[r[2] % 6], r + 1);
        H5Gclose(g);
        break;
    }
    case 4: {
        hid_t g = H5Gopen2(f, lname, H5P_DEFAULT);
        if (g < 0) break;
        if (r[2] % 3 == 0) {
            const char *a = LAYER_INT[r[3] % 11];
            if (H5Aexists(g, a) > 0) H5Adelete(g, a);
        } else if (r[2] % 3 == 1) {
            const char *d = DSETS[r[3] % 6];
            if (H5Lexists(g, d, H5P_DEFAULT) > 0) H5Ldelete(g, d, H5P_DEFAULT);
        }
        H5Gclose(g);
        if (r[2] % 3 == 2) H5Ldelete(f, lname, H5P_DEFAULT);
        break;
    }
    case 5: {
        static const char *fmts[] = {"", "tmdflow-nn", "tmdflow-nn-model", "x", "unet", "classifier", "autoencoder",
                                     "custom"};
        set_attr_str(f, (r[1] & 1) ? "kind" : "format", fmts[r[2] % 8]);
        break;
    }
    case 6: {
        float vals[] = {0.5f, 0.0f, 1.0f, -0.5f, 2.0f, NAN, INFINITY, 1e-30f};
        hid_t g = H5Gopen2(f, lname, H5P_DEFAULT);
        if (g < 0) break;
        set_attr_float(g, "p", vals[r[2] % 8]);
        H5Gclose(g);
        if (r[3] & 1) set_attr_float(f, "leaky_slope", vals[r[4] % 8]);
        break;
    }
    default: {
        /* root attribute deleted */
        const char *a = ROOT_INT[r[2] % 5];
        if (H5Aexists(f, a) > 0) H5Adelete(f, a);
        break;
    }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 8 * 64 + 1) return 0;
    int tpl = data[0] & 1;
    if (copy_file(g_tpl[tpl], g_path)) abort();
    hid_t f = H5Fopen(g_path, H5F_ACC_RDWR, H5P_DEFAULT);
    if (f < 0) abort();
    int n_layers = 9; /* both templates: input + 8 layers */
    for (size_t off = 1; off + 8 <= size; off += 8) apply_edit(f, n_layers, data + off);
    H5Fclose(f);

    tmd_ctx ctx;
    quiet_ctx(&ctx);
    tmd_nn_model *m = NULL;
    tmd_status st = tmd_nn_model_load(&ctx, g_path, &m);
    if (st) {
        if (st >= 0 || ctx.err_msg[0] == 0 || m != NULL) {
            fprintf(stderr, "fuzz_model: load failed with status %d, message '%s', model %p\n", st, ctx.err_msg, (void *)m);
            abort();
        }
        return 0;
    }
    if (!m) abort();
    /* A model the loader accepted must be usable at a small size. */
    int mult = tmd_nn_model_multiple(m), fixed = tmd_nn_model_input_size(m), cin = tmd_nn_model_in_channels(m);
    int hw = fixed > 0 ? fixed : (mult > 0 ? mult * (mult < 16 ? 2 : 1) : 8);
    if (hw > 64 || cin > 16 || tmd_nn_model_param_count(m) > 1000000) {
        tmd_nn_model_free(&m);
        return 0;
    }
    tmd_nn_plan *p = NULL;
    st = tmd_nn_plan_create(&ctx, m, hw, hw, &p);
    if (st == TMD_OK) {
        if (tmd_nn_plan_bytes(p) < ((int64_t)256 << 20)) {
            int c, h, w;
            tmd_nn_plan_out_shape(p, &c, &h, &w);
            size_t nin = (size_t)cin * (size_t)hw * (size_t)hw, nout = (size_t)c * (size_t)h * (size_t)w;
            float *in = malloc(nin * sizeof(float)), *out = malloc((nout ? nout : 1) * sizeof(float));
            for (size_t i = 0; i < nin; i++) in[i] = (float)(i % 13) / 13.0f;
            if (in && out) tmd_nn_execute(p, in, out);
            free(in);
            free(out);
        }
        tmd_nn_plan_destroy(&p);
    } else if (ctx.err_msg[0] == 0) {
        fprintf(stderr, "fuzz_model: plan_create failed without a message (status %d)\n", st);
        abort();
    }
    tmd_nn_model_free(&m);
    return 0;
}
