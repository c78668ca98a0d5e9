/* Tests of the nn engine (src/nn). What they prove:
 * - forward: a tiny net using every inference layer (3x3 dilated conv + folded batch norm +
 *   LeakyReLU, 2x2 max-pool, 1x1 conv, bilinear x2 with PyTorch align_corners=False
 *   semantics, concat, sum, softmax, dense, reshape) equals a slow, obvious reference written
 *   here, independently of the engine's im2col/sgemm kernels, including panel blocking;
 * - gradients: the backward pass of every layer (conv 3x3 with dilation, 1x1, batch norm,
 *   ReLU, LeakyReLU, max-pool, upsample, concat, sum, dense, dropout, reshape, softmax +
 *   cross-entropy, MSE) agrees with central finite differences of the loss;
 * - model files: save -> load round-trips weights and outputs exactly; a file with a wrong
 *   weight shape, a missing dataset or a wrong format tag is refused with a message naming
 *   the file and the layer;
 * - U-Net: shape, reach and multiple; plan refuses sizes that are not multiples of 8.
 */
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "tmd/nn.h"

static unsigned rs = 12345;
static float rnd(void) { return 2.0f * tmd_test_randf(&rs) - 1.0f; }

/* ---- reference kernels (slow and obvious) ---- */
static void ref_conv(const float *x, int C, int H, int W, const float *w, const float *b, int O, int k, int d,
                     float *y)
{
    int pad = d * (k / 2);
    for (int o = 0; o < O; o++)
        for (int i = 0; i < H; i++)
            for (int j = 0; j < W; j++) {
                double s = b[o];
                for (int c = 0; c < C; c++)
                    for (int ky = 0; ky < k; ky++)
                        for (int kx = 0; kx < k; kx++) {
                            int yy = i - pad + ky * d, xx = j - pad + kx * d;
                            if (yy < 0 || yy >= H || xx < 0 || xx >= W) continue;
                            s += (double)w[((o * C + c) * k + ky) * k + kx] * x[(c * H + yy) * W + xx];
                        }
                y[(o * H + i) * W + j] = (float)s;
            }
}
static float src_coord(int o, int n, int *i0, int *i1)
{
    float s = (o + 0.5f) / 2.0f - 0.5f;
    if (s < 0) s = 0;
    *i0 = (int)floorf(s);
    *i1 = *i0 + 1 < n ? *i0 + 1 : n - 1;
    return s - *i0;
}
static void ref_up(const float *x, int C, int H, int W, float *y)
{
    for (int c = 0; c < C; c++)
        for (int i = 0; i < 2 * H; i++)
            for (int j = 0; j < 2 * W; j++) {
                int y0, y1, x0, x1;
                float ly = src_coord(i, H, &y0, &y1), lx = src_coord(j, W, &x0, &x1);
                const float *p = x + c * H * W;
                y[(c * 2 * H + i) * 2 * W + j] = (1 - ly) * ((1 - lx) * p[y0 * W + x0] + lx * p[y0 * W + x1]) +
                                                 ly * ((1 - lx) * p[y1 * W + x0] + lx * p[y1 * W + x1]);
            }
}
static void ref_pool(const float *x, int C, int H, int W, float *y)
{
    for (int c = 0; c < C; c++)
        for (int i = 0; i < H / 2; i++)
            for (int j = 0; j < W / 2; j++) {
                float m = -INFINITY;
                for (int a = 0; a < 2; a++)
                    for (int b = 0; b < 2; b++) m = fmaxf(m, x[(c * H + 2 * i + a) * W + 2 * j + b]);
                y[(c * H / 2 + i) * W / 2 + j] = m;
            }
}

static void randomise(tmd_nn_model *m)
{
    int64_t n, ns;
    float *p = tmd_nn_model_params(m, &n), *s = tmd_nn_model_stats(m, &ns);
    for (int64_t i = 0; i < n; i++) p[i] = 0.5f * rnd();
    for (int64_t i = 0; i < ns; i++) s[i] = (i / 1) % 2 ? 0.5f + tmd_test_randf(&rs) : 0.3f * rnd();
}

/* Layer order of the tiny net, so the test can find each layer's parameters. */
static void test_forward_reference(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    tmd_nn_model *m = NULL;
    CU_ASSERT_FATAL(tmd_nn_model_new(&ctx, "custom", 2, 0, &m) == 0);
    int c1 = tmd_nn_add_conv(&ctx, m, 0, 3, 3, 2, 1, TMD_NN_ACT_LEAKY); /* 1: conv d2 + BN + leaky */
    int p1 = tmd_nn_add_maxpool(&ctx, m, c1);                           /* 2 */
    int c2 = tmd_nn_add_conv(&ctx, m, p1, 4, 3, 1, 0, TMD_NN_ACT_RELU);  /* 3 */
    int c3 = tmd_nn_add_conv(&ctx, m, c2, 3, 1, 1, 0, TMD_NN_ACT_NONE);  /* 4: 1x1 */
    int u = tmd_nn_add_upsample(&ctx, m, c3);                           /* 5 */
    int s = tmd_nn_add_sum(&ctx, m, u, c1);                             /* 6 */
    int cc = tmd_nn_add_concat(&ctx, m, s, 0);                          /* 7: 5 channels */
    int c4 = tmd_nn_add_conv(&ctx, m, cc, 4, 1, 1, 0, TMD_NN_ACT_NONE);  /* 8 */
    int sm = tmd_nn_add_softmax(&ctx, m, c4);                           /* 9 */
    CU_ASSERT_FATAL(sm == 9);
    CU_ASSERT_FATAL(tmd_nn_model_init_weights(&ctx, m, 7) == 0);
    randomise(m);
    CU_ASSERT_EQUAL(tmd_nn_model_multiple(m), 2);
    const int H = 12, W = 10;
    float x[2 * 12 * 10], out[4 * 12 * 10];
    for (int i = 0; i < 2 * H * W; i++) x[i] = rnd();
    /* reference, from the flat parameter layout: per weighted layer w, b, [gamma, beta] */
    int64_t np, ns;
    float *P = tmd_nn_model_params(m, &np), *S = tmd_nn_model_stats(m, &ns);
    float *w1 = P, *b1 = w1 + 3 * 2 * 9, *g1 = b1 + 3, *be1 = g1 + 3;
    float *w2 = be1 + 3, *b2 = w2 + 4 * 3 * 9, *w3 = b2 + 4, *b3 = w3 + 3 * 4, *w4 = b3 + 3, *b4 = w4 + 4 * 5;
    CU_ASSERT_EQUAL(b4 + 4 - P, np);
    float y1[3 * 12 * 10], y2[3 * 6 * 5], y3[4 * 6 * 5], y4[3 * 6 * 5], y5[3 * 12 * 10], y7[5 * 12 * 10],
        y8[4 * 12 * 10];
    ref_conv(x, 2, H, W, w1, b1, 3, 3, 2, y1);
    for (int c = 0; c < 3; c++)
        for (int i = 0; i < H * W; i++) {
            float v = (y1[c * H * W + i] - S[c]) / sqrtf(S[3 + c] + 1e-5f) * g1[c] + be1[c];
            y1[c * H * W + i] = v > 0 ? v : 0.1f * v;
        }
    ref_pool(y1, 3, H, W, y2);
    ref_conv(y2, 3, 6, 5, w2, b2, 4, 3, 1, y3);
    for (int i = 0; i < 4 * 30; i++) y3[i] = y3[i] > 0 ? y3[i] : 0;
    ref_conv(y3, 4, 6, 5, w3, b3, 3, 1, 1, y4);
    ref_up(y4, 3, 6, 5, y5);
    for (int i = 0; i < 3 * H * W; i++) y7[i] = y5[i] + y1[i];
    memcpy(y7 + 3 * H * W, x, sizeof(float) * 2 * H * W);
    ref_conv(y7, 5, H, W, w4, b4, 4, 1, 1, y8);
    for (int i = 0; i < H * W; i++) {
        double mx = -1e30, se = 0;
        for (int c = 0; c < 4; c++) mx = fmax(mx, y8[c * H * W + i]);
        for (int c = 0; c < 4; c++) se += exp(y8[c * H * W + i] - mx);
        for (int c = 0; c < 4; c++) y8[c * H * W + i] = (float)(exp(y8[c * H * W + i] - mx) / se);
    }
    /* the engine, with big panels and with one-row panels */
    const char *panels[2] = {"0", "1025"};
    for (int k = 0; k < 2; k++) {
        setenv("TMDFLOW_NN_PANEL_FLOATS", panels[k], 1);
        tmd_nn_plan *p = NULL;
        CU_ASSERT_FATAL(tmd_nn_plan_create(&ctx, m, H, W, &p) == 0);
        CU_ASSERT_EQUAL(tmd_nn_execute(p, x, out), 0);
        double err = 0;
        for (int i = 0; i < 4 * H * W; i++) err = fmax(err, fabs(out[i] - y8[i]));
        CU_ASSERT(err < 1e-5);
        if (err >= 1e-5) printf("forward max error %g (panel %s)\n", err, panels[k]);
        tmd_nn_plan_destroy(&p);
        CU_ASSERT_PTR_NULL(p);
    }
    unsetenv("TMDFLOW_NN_PANEL_FLOATS");
    tmd_nn_model_free(&m);
    CU_ASSERT_PTR_NULL(m);
    tmd_nn_model_free(&m); /* accepts NULL */
}

/* Central finite differences of the training loss against the analytic gradient for
 * `count` parameters spread over the model. */
static double gradcheck(tmd_nn_model *m, int n, int h, int w, int ce, int ncls)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    tmd_nn_trainer *t = NULL;
    CU_ASSERT_FATAL(tmd_nn_trainer_create(&ctx, m, MPI_COMM_SELF, n, h, w, NULL, &t) == 0);
    int C = tmd_nn_model_in_channels(m);
    int oc = tmd_nn_model_out_channels(m);
    size_t in_n = (size_t)n * C * h * w;
    float *x = malloc(sizeof(float) * in_n), *tg = NULL;
    uint8_t *lab = NULL;
    for (size_t i = 0; i < in_n; i++) x[i] = rnd();
    /* output spatial size: the model's own (dense: 1x1) */
    tmd_nn_plan *pl = NULL;
    CU_ASSERT_FATAL(tmd_nn_plan_create_ex(&ctx, m, 1, h, w, -1, &pl) == 0);
    int oh, ow;
    tmd_nn_plan_out_shape(pl, NULL, &oh, &ow);
    tmd_nn_plan_destroy(&pl);
    if (ce) {
        lab = malloc((size_t)n * oh * ow);
        for (int i = 0; i < n * oh * ow; i++) lab[i] = (uint8_t)(tmd_test_randf(&rs) * ncls);
        float cw[16];
        for (int i = 0; i < ncls; i++) cw[i] = 0.5f + i;
        CU_ASSERT(tmd_nn_trainer_set_class_weights(t, cw, ncls) == 0);
    } else {
        tg = malloc(sizeof(float) * n * oc * oh * ow);
        for (int i = 0; i < n * oc * oh * ow; i++) tg[i] = rnd();
    }
    double loss;
    CU_ASSERT_FATAL(tmd_nn_trainer_grad(t, n, n, 0, 5, x, lab, tg, &loss) == 0);
    int64_t np;
    float *p = tmd_nn_model_params(m, &np);
    float *g = malloc(sizeof(float) * np);
    memcpy(g, tmd_nn_trainer_grads(t), sizeof(float) * np);
    double worst = 0;
    int64_t step = np / 40 + 1;
    for (int64_t j = 0; j < np; j += step) {
        /* the smaller step avoids max-pool / LeakyReLU kinks, the larger float noise: the
         * better of the two must agree */
        float keep = p[j];
        double err = 1e30, fd = 0;
        const float steps[3] = {3e-4f, 1e-3f, 3e-3f};
        for (int e = 0; e < 3; e++) {
            double lp, lm;
            p[j] = keep + steps[e];
            tmd_nn_trainer_grad(t, n, n, 0, 5, x, lab, tg, &lp);
            p[j] = keep - steps[e];
            tmd_nn_trainer_grad(t, n, n, 0, 5, x, lab, tg, &lm);
            p[j] = keep;
            double f = (lp - lm) / (2 * steps[e]);
            double er = fabs(f - g[j]) / fmax(fabs(f) + fabs(g[j]), 1e-3);
            if (er < err) err = er, fd = f;
        }
        if (err > worst) worst = err;
        if (err > 0.05) printf("  param %lld: analytic %.6g numeric %.6g\n", (long long)j, g[j], fd);
    }
    free(x);
    free(tg);
    free(lab);
    free(g);
    tmd_nn_trainer_destroy(&t);
    return worst;
}

static tmd_nn_model *newm(tmd_ctx *ctx, int cin, int size)
{
    tmd_nn_model *m = NULL;
    CU_ASSERT_FATAL(tmd_nn_model_new(ctx, "custom", cin, size, &m) == 0);
    return m;
}

static void test_grad_conv_bn_pool_up(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    /* conv3x3 d2 + BN + leaky -> pool -> conv3x3 relu -> 1x1 -> up -> concat(skip) ->
     * sum -> conv 1x1 -> softmax + weighted CE */
    tmd_nn_model *m = newm(&ctx, 2, 0);
    int a = tmd_nn_add_conv(&ctx, m, 0, 3, 3, 2, 1, TMD_NN_ACT_LEAKY);
    int b = tmd_nn_add_maxpool(&ctx, m, a);
    b = tmd_nn_add_conv(&ctx, m, b, 4, 3, 1, 0, TMD_NN_ACT_LEAKY);
    b = tmd_nn_add_conv(&ctx, m, b, 3, 1, 1, 1, TMD_NN_ACT_NONE);
    b = tmd_nn_add_upsample(&ctx, m, b);
    int s = tmd_nn_add_sum(&ctx, m, b, a);
    int c = tmd_nn_add_concat(&ctx, m, s, a);
    c = tmd_nn_add_conv(&ctx, m, c, 3, 3, 1, 1, TMD_NN_ACT_LEAKY);
    c = tmd_nn_add_conv(&ctx, m, c, 3, 1, 1, 0, TMD_NN_ACT_NONE);
    CU_ASSERT_FATAL(tmd_nn_add_softmax(&ctx, m, c) > 0);
    CU_ASSERT_FATAL(tmd_nn_model_init_weights(&ctx, m, 3) == 0);
    tmd_nn_model_set_slope(m, 0.2f);
    double e = gradcheck(m, 3, 8, 6, 1, 3);
    printf("\n  conv/bn/pool/up/sum/concat/softmax-CE worst relative error %.3g\n", e);
    CU_ASSERT(e < 0.05);
    /* im2col panels that split image rows (64 pixels) give the same gradients as
     * whole-image panels, to rounding */
    {
        const int n = 2, H = 16, W = 12;
        float x[2 * 2 * 16 * 12];
        uint8_t lab[2 * 16 * 12];
        for (int i = 0; i < n * 2 * H * W; i++) x[i] = rnd();
        for (int i = 0; i < n * H * W; i++) lab[i] = (uint8_t)(tmd_test_randf(&rs) * 3);
        int64_t np;
        tmd_nn_model_params(m, &np);
        float *g[2];
        for (int k = 0; k < 2; k++) {
            if (k) setenv("TMDFLOW_NN_PANEL_FLOATS", "1025", 1);
            tmd_nn_trainer *t = NULL;
            double loss;
            CU_ASSERT_FATAL(tmd_nn_trainer_create(&ctx, m, MPI_COMM_SELF, n, H, W, NULL, &t) == 0);
            CU_ASSERT(tmd_nn_trainer_grad(t, n, n, 0, 1, x, lab, NULL, &loss) == 0);
            g[k] = malloc(sizeof(float) * np);
            memcpy(g[k], tmd_nn_trainer_grads(t), sizeof(float) * np);
            tmd_nn_trainer_destroy(&t);
        }
        unsetenv("TMDFLOW_NN_PANEL_FLOATS");
        double gmax = 0, d = 0;
        for (int64_t i = 0; i < np; i++) gmax = fmax(gmax, fabs(g[0][i])), d = fmax(d, fabs(g[0][i] - g[1][i]));
        printf("  64-pixel vs whole-image im2col panels: gradient difference %.3g of max %.3g\n", d, gmax);
        CU_ASSERT(d <= 1e-5 * gmax);
        free(g[0]);
        free(g[1]);
    }
    tmd_nn_model_free(&m);
}

static void test_grad_dense_dropout_mse(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    /* autoencoder-like: conv relu -> pool -> dense -> dropout -> dense -> reshape -> up ->
     * conv, MSE */
    tmd_nn_model *m = newm(&ctx, 1, 8);
    int a = tmd_nn_add_conv(&ctx, m, 0, 2, 3, 1, 0, TMD_NN_ACT_RELU);
    a = tmd_nn_add_maxpool(&ctx, m, a);
    a = tmd_nn_add_dense(&ctx, m, a, 5, TMD_NN_ACT_LEAKY);
    a = tmd_nn_add_dropout(&ctx, m, a, 0.3f);
    a = tmd_nn_add_dense(&ctx, m, a, 2 * 4 * 4, TMD_NN_ACT_NONE);
    a = tmd_nn_add_reshape(&ctx, m, a, 2, 4, 4);
    a = tmd_nn_add_upsample(&ctx, m, a);
    CU_ASSERT_FATAL(tmd_nn_add_conv(&ctx, m, a, 1, 3, 1, 0, TMD_NN_ACT_NONE) > 0);
    CU_ASSERT_FATAL(tmd_nn_model_init_weights(&ctx, m, 4) == 0);
    double e = gradcheck(m, 3, 8, 8, 0, 0);
    printf("  dense/dropout/reshape/MSE worst relative error %.3g\n", e);
    CU_ASSERT(e < 0.05);
    tmd_nn_model_free(&m);
}

static void test_grad_classifier(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    tmd_nn_model *m = NULL;
    CU_ASSERT_FATAL(tmd_nn_build_classifier(&ctx, 16, 2, 8, 9, &m) == 0);
    double e = gradcheck(m, 4, 16, 16, 1, 8);
    printf("  classifier (BN + dense + dropout + softmax CE) worst relative error %.3g\n", e);
    CU_ASSERT(e < 0.05);
    tmd_nn_model_free(&m);
}

static void test_unet_shapes(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    tmd_nn_model *m = NULL;
    CU_ASSERT_FATAL(tmd_nn_build_unet(&ctx, 4, 6, 1, &m) == 0);
    CU_ASSERT_EQUAL(tmd_nn_model_multiple(m), 8);
    CU_ASSERT(tmd_nn_model_reach(m) > 100);
    CU_ASSERT_EQUAL(tmd_nn_model_out_channels(m), 6);
    tmd_nn_plan *p = NULL;
    CU_ASSERT(tmd_nn_plan_create(&ctx, m, 36, 32, &p) != 0); /* not a multiple of 8 */
    CU_ASSERT_PTR_NULL(p);
    CU_ASSERT_FATAL(tmd_nn_plan_create(&ctx, m, 40, 32, &p) == 0);
    int c, h, w;
    tmd_nn_plan_out_shape(p, &c, &h, &w);
    CU_ASSERT(c == 6 && h == 40 && w == 32);
    float *x = calloc(40 * 32, sizeof(float)), *y = calloc(6 * 40 * 32, sizeof(float));
    for (int i = 0; i < 40 * 32; i++) x[i] = tmd_test_randf(&rs);
    CU_ASSERT(tmd_nn_execute(p, x, y) == 0);
    double s = 0;
    for (int i = 0; i < 6; i++) s += y[i * 40 * 32 + 77];
    CU_ASSERT(fabs(s - 1) < 1e-5);
    free(x);
    free(y);
    tmd_nn_plan_destroy(&p);
    tmd_nn_model_free(&m);
}

static void test_roundtrip_and_malformed(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    if (tmd_test_rank != 0) return;
    tmd_nn_model *m = NULL, *r = NULL;
    CU_ASSERT_FATAL(tmd_nn_build_autoencoder(&ctx, 16, 4, 6, 2, &m) == 0);
    const char *path = tmd_test_path("ae.h5");
    CU_ASSERT_FATAL(tmd_nn_model_save(&ctx, m, path, "{\"command\":\"test\"}") == 0);
    CU_ASSERT_FATAL(tmd_nn_model_load(&ctx, path, &r) == 0);
    int64_t n1, n2;
    float *p1 = tmd_nn_model_params(m, &n1), *p2 = tmd_nn_model_params(r, &n2);
    CU_ASSERT_EQUAL(n1, n2);
    CU_ASSERT(memcmp(p1, p2, sizeof(float) * n1) == 0);
    CU_ASSERT_STRING_EQUAL(tmd_nn_model_kind(r), "autoencoder");
    CU_ASSERT_STRING_EQUAL(tmd_nn_model_provenance(r), "{\"command\":\"test\"}");
    CU_ASSERT_EQUAL(tmd_nn_model_latent_layer(r), tmd_nn_model_latent_layer(m));
    /* encoder plan gives the latent vector */
    tmd_nn_plan *pe = NULL;
    CU_ASSERT_FATAL(tmd_nn_plan_create_ex(&ctx, r, 3, 16, 16, tmd_nn_model_latent_layer(r), &pe) == 0);
    int c, h, w;
    tmd_nn_plan_out_shape(pe, &c, &h, &w);
    CU_ASSERT(c == 6 && h == 1 && w == 1);
    tmd_nn_plan_destroy(&pe);
    tmd_nn_model_free(&r);

    /* wrong weight shape in layer 001 */
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    CU_ASSERT_FATAL(f >= 0);
    H5Ldelete(f, "/layers/001/w", H5P_DEFAULT);
    hsize_t d[4] = {4, 1, 3, 2};
    hid_t sp = H5Screate_simple(4, d, NULL);
    hid_t ds = H5Dcreate2(f, "/layers/001/w", H5T_NATIVE_FLOAT, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dclose(ds);
    H5Sclose(sp);
    H5Fclose(f);
    tmd_error_clear(&ctx);
    CU_ASSERT_EQUAL(tmd_nn_model_load(&ctx, path, &r), TMD_ERR_FORMAT);
    CU_ASSERT_PTR_NULL(r);
    CU_ASSERT(strstr(ctx.err_msg, path) != NULL);
    CU_ASSERT(strstr(ctx.err_msg, "/layers/001") != NULL);
    CU_ASSERT(strstr(ctx.err_msg, "dimension 3") != NULL);

    /* missing dataset */
    f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    H5Ldelete(f, "/layers/001/w", H5P_DEFAULT);
    H5Fclose(f);
    tmd_error_clear(&ctx);
    CU_ASSERT_EQUAL(tmd_nn_model_load(&ctx, path, &r), TMD_ERR_FORMAT);
    CU_ASSERT(strstr(ctx.err_msg, "missing") != NULL);

    /* not a model */
    const char *other = tmd_test_path("other.h5");
    f = H5Fcreate(other, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    H5Fclose(f);
    tmd_error_clear(&ctx);
    CU_ASSERT_EQUAL(tmd_nn_model_load(&ctx, other, &r), TMD_ERR_FORMAT);
    CU_ASSERT(strstr(ctx.err_msg, "not a tmdflow model") != NULL);
    tmd_error_clear(&ctx);
    CU_ASSERT_EQUAL(tmd_nn_model_load(&ctx, tmd_test_path("absent.h5"), &r), TMD_ERR_IO);
    tmd_nn_model_free(&m);
}

/* Sets integer attribute `name` of object `obj` in model file `path` (a hostile edit). */
static void set_int_attr(const char *path, const char *obj, const char *name, int v)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    CU_ASSERT_FATAL(f >= 0);
    hid_t o = H5Oopen(f, obj, H5P_DEFAULT);
    CU_ASSERT_FATAL(o >= 0);
    CU_ASSERT(H5Adelete(o, name) >= 0);
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(o, name, H5T_NATIVE_INT, sp, H5P_DEFAULT, H5P_DEFAULT);
    CU_ASSERT_FATAL(a >= 0);
    CU_ASSERT(H5Awrite(a, H5T_NATIVE_INT, &v) >= 0);
    H5Aclose(a);
    H5Sclose(sp);
    H5Oclose(o);
    H5Fclose(f);
}

/* fuzz_model, reproducers huge-cout-43GB-alloc / oom-8GB-alloc: a 4-byte edit of a layer's
 * `cout` made the loader allocate 8-43 GB (or fail with "out of memory") before it looked at
 * the weight datasets. Proves: the architecture is bounded (channels <= 4096, parameters
 * <= 2^28) and a file whose layer is out of bounds is refused as a format error naming the
 * file, the layer and the bound, before anything is allocated for it. */
static void test_hostile_layer_sizes_refused(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    if (tmd_test_rank != 0) return;
    tmd_nn_model *m = NULL, *r = NULL;
    /* API: absurd conv/dense sizes are refused when the layer is added */
    CU_ASSERT_FATAL(tmd_nn_model_new(&ctx, "custom", 1, 0, &m) == 0);
    CU_ASSERT(tmd_nn_add_conv(&ctx, m, 0, 100664064, 3, 1, 1, TMD_NN_ACT_RELU) < 0);
    CU_ASSERT(strstr(ctx.err_msg, "cout=100664064") != NULL);
    tmd_error_clear(&ctx);
    CU_ASSERT(tmd_nn_add_conv(&ctx, m, 0, 8, 3, 1 << 20, 1, TMD_NN_ACT_RELU) < 0); /* dilation */
    tmd_error_clear(&ctx);
    int c = tmd_nn_add_conv(&ctx, m, 0, 4096, 3, 1, 0, TMD_NN_ACT_RELU);
    CU_ASSERT_FATAL(c > 0);
    /* 4096 x 4096 x 3 x 3 = 151 M parameters; a second one passes 2^28 */
    c = tmd_nn_add_conv(&ctx, m, c, 4096, 3, 1, 0, TMD_NN_ACT_RELU);
    CU_ASSERT_FATAL(c > 0);
    CU_ASSERT(tmd_nn_add_conv(&ctx, m, c, 4096, 3, 1, 0, TMD_NN_ACT_RELU) < 0);
    CU_ASSERT(strstr(ctx.err_msg, "parameters") != NULL);
    tmd_error_clear(&ctx);
    /* concat of a tensor with itself until the channels pass the bound */
    int x = tmd_nn_add_concat(&ctx, m, c, c);
    CU_ASSERT(x < 0);
    tmd_error_clear(&ctx);
    tmd_nn_model_free(&m);

    /* file: the classifier with layer 005 (conv) edited to cout = 100664064 / 2^31 - 1 */
    CU_ASSERT_FATAL(tmd_nn_build_classifier(&ctx, 16, 2, 8, 1, &m) == 0);
    const char *path = tmd_test_path("hostile_cout.h5");
    const int bad[] = {100664064, 2147483647};
    for (int i = 0; i < 2; i++) {
        CU_ASSERT_FATAL(tmd_nn_model_save(&ctx, m, path, NULL) == 0);
        set_int_attr(path, "/layers/005", "cout", bad[i]);
        tmd_error_clear(&ctx);
        CU_ASSERT_EQUAL(tmd_nn_model_load(&ctx, path, &r), TMD_ERR_FORMAT);
        CU_ASSERT_PTR_NULL(r);
        CU_ASSERT(strstr(ctx.err_msg, path) != NULL);
        CU_ASSERT(strstr(ctx.err_msg, "/layers/005") != NULL);
        CU_ASSERT(strstr(ctx.err_msg, "cout 1..4096") != NULL);
    }
    /* an in-bounds cout that does not match the weights: refused by the shape check that
     * now runs before the parameters are allocated */
    CU_ASSERT_FATAL(tmd_nn_model_save(&ctx, m, path, NULL) == 0);
    set_int_attr(path, "/layers/005", "cout", 4000);
    tmd_error_clear(&ctx);
    CU_ASSERT_EQUAL(tmd_nn_model_load(&ctx, path, &r), TMD_ERR_FORMAT);
    CU_ASSERT(strstr(ctx.err_msg, "/layers/005") != NULL);
    CU_ASSERT(strstr(ctx.err_msg, "expected 4000") != NULL);
    CU_ASSERT(tmd_nn_model_param_count(r) == 0);
    tmd_nn_model_free(&m);
}

/* fuzz_model, reproducer dense-cin-int-overflow: the dense input length c*h*w was computed in
 * int and overflowed (UBSan) for a hostile input_size / channel count. Proves: it is computed
 * in int64 and refused above 2^24 values, through the API and from a file. */
static void test_dense_input_overflow_refused(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    if (tmd_test_rank != 0) return;
    tmd_nn_model *m = NULL, *r = NULL;
    CU_ASSERT_FATAL(tmd_nn_model_new(&ctx, "custom", 4096, 65536, &m) == 0);
    CU_ASSERT(tmd_nn_add_dense(&ctx, m, 0, 2, TMD_NN_ACT_NONE) < 0); /* 4096*65536^2 = 2^44 */
    CU_ASSERT(strstr(ctx.err_msg, "17592186044416 values") != NULL);
    tmd_error_clear(&ctx);
    tmd_nn_model_free(&m);

    /* classifier file with input_size 65536 and the last conv at 4096 channels:
     * dense input 4096 * 8192 * 8192 = 2^38 */
    CU_ASSERT_FATAL(tmd_nn_build_classifier(&ctx, 16, 2, 8, 1, &m) == 0);
    const char *path = tmd_test_path("hostile_dense.h5");
    CU_ASSERT_FATAL(tmd_nn_model_save(&ctx, m, path, NULL) == 0);
    set_int_attr(path, "/", "input_size", 65536);
    set_int_attr(path, "/layers/005", "cout", 4096);
    tmd_error_clear(&ctx);
    CU_ASSERT_EQUAL(tmd_nn_model_load(&ctx, path, &r), TMD_ERR_FORMAT);
    CU_ASSERT_PTR_NULL(r);
    CU_ASSERT(strstr(ctx.err_msg, path) != NULL);
    CU_ASSERT(strstr(ctx.err_msg, "/layers/007") != NULL);
    CU_ASSERT(strstr(ctx.err_msg, "274877906944 values, at most 16777216") != NULL);
    tmd_nn_model_free(&m);
}

int main(int argc, char **argv)
{
    return tmd_test_main(argc, argv, "nn",
                         (tmd_test_case[]){{"forward equals an independent reference", test_forward_reference},
                                           {"gradients: conv, BN, pool, upsample, sum, concat, CE", test_grad_conv_bn_pool_up},
                                           {"gradients: dense, dropout, reshape, MSE", test_grad_dense_dropout_mse},
                                           {"gradients: classifier", test_grad_classifier},
                                           {"U-Net shapes, reach, multiple", test_unet_shapes},
                                           {"model file round trip; malformed refused", test_roundtrip_and_malformed},
                                           {"model file: hostile layer sizes refused before allocation", test_hostile_layer_sizes_refused},
                                           {"model file: dense input length overflow refused", test_dense_input_overflow_refused},
                                           {0}});
}
