/* Atom-centred patches -> latent features (see tmd/dynamics.h). */
#include "tmd/dynamics.h"
#include "tmd/nn.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- encoder from an autoencoder model ---------------------------------------------- */

typedef struct {
    tmd_nn_plan *plan;
    int batch, dim, patch;
    float *in;  /* (batch, 1, P, P) */
    float *out; /* (batch, D) */
} model_enc;

static void model_enc_free(void *user)
{
    model_enc *e = user;
    if (!e) return;
    tmd_nn_plan_destroy(&e->plan);
    free(e->in);
    free(e->out);
    free(e);
}

static tmd_status model_encode(tmd_ctx *ctx, void *user, int n, const float *patches, float *latent)
{
    model_enc *e = user;
    size_t pp = (size_t)e->patch * e->patch;
    for (int k0 = 0; k0 < n; k0 += e->batch) {
        int m = n - k0 < e->batch ? n - k0 : e->batch;
        memcpy(e->in, patches + (size_t)k0 * pp, (size_t)m * pp * sizeof(float));
        tmd_status st = tmd_nn_execute_n(e->plan, m, e->in, e->out);
        if (st) return TMD_FAIL(ctx, st, "features: the autoencoder's encoder failed on a batch of %d patches", m);
        memcpy(latent + (size_t)k0 * e->dim, e->out, (size_t)m * e->dim * sizeof(float));
    }
    return TMD_OK;
}

tmd_status tmd_encoder_from_model(tmd_ctx *ctx, const struct tmd_nn_model *model, int batch, double step_px,
                                  tmd_encoder *out)
{
    memset(out, 0, sizeof *out);
    int latent_layer = tmd_nn_model_latent_layer(model);
    int P = tmd_nn_model_input_size(model);
    if (latent_layer < 0 || P <= 0)
        return TMD_FAIL(ctx, TMD_ERR_FORMAT, "features: the model is a '%s' with no latent layer and input size %d; an "
                        "autoencoder is needed", tmd_nn_model_kind(model), P);
    if (batch < 1) batch = 1;
    tmd_status st = TMD_OK;
    model_enc *e = NULL;
    st = tmd_calloc(ctx, (void **)&e, 1, sizeof *e, "encoder");
    if (st) return st;
    e->batch = batch;
    e->patch = P;
    st = tmd_nn_plan_create_ex(ctx, model, batch, P, P, latent_layer, &e->plan);
    if (st) goto fail;
    int c, h, w;
    tmd_nn_plan_out_shape(e->plan, &c, &h, &w);
    e->dim = c * h * w;
    st = tmd_calloc(ctx, (void **)&e->in, (size_t)batch * P * P, sizeof(float), "encoder input batch");
    if (!st) st = tmd_calloc(ctx, (void **)&e->out, (size_t)batch * e->dim, sizeof(float), "encoder output batch");
    if (st) goto fail;
    out->patch = P;
    out->dim = e->dim;
    out->batch = batch;
    out->step_px = step_px;
    out->fn = model_encode;
    out->user = e;
    out->free_user = model_enc_free;
    return TMD_OK;
fail:
    model_enc_free(e);
    return st;
}

/* ---- hand-made descriptor ------------------------------------------------------------ */

typedef struct {
    int patch, rings;
} desc_enc;

static tmd_status desc_encode(tmd_ctx *ctx, void *user, int n, const float *patches, float *latent)
{
    (void)ctx;
    const desc_enc *d = user;
    int P = d->patch, R = d->rings, D = R + 2;
    double c = (P - 1) / 2.0, rmax = P / 2.0;
    for (int k = 0; k < n; k++) {
        const float *p = patches + (size_t)k * P * P;
        float *z = latent + (size_t)k * D;
        double sum[64] = {0}, cnt[64] = {0}, m = 0, mx = 0, my = 0;
        for (int y = 0; y < P; y++)
            for (int x = 0; x < P; x++) {
                double r = hypot(x - c, y - c);
                int ring = (int)(r / rmax * R);
                double v = p[y * P + x];
                if (ring < R) { sum[ring] += v; cnt[ring] += 1; }
                if (r < rmax / 2) { m += v; mx += v * (x - c); my += v * (y - c); }
            }
        for (int r = 0; r < R; r++) z[r] = (float)(cnt[r] > 0 ? sum[r] / cnt[r] : 0);
        z[R] = (float)(fabs(m) > 1e-12 ? mx / m / rmax : 0);
        z[R + 1] = (float)(fabs(m) > 1e-12 ? my / m / rmax : 0);
    }
    return TMD_OK;
}

void tmd_encoder_descriptor(int patch, int rings, double step_px, tmd_encoder *out)
{
    memset(out, 0, sizeof *out);
    if (rings > 62) rings = 62;
    desc_enc *d = malloc(sizeof *d);
    if (!d) return; /* out->fn stays NULL: tmd_features_compute reports "no encoder" */
    d->patch = patch;
    d->rings = rings;
    out->patch = patch;
    out->dim = rings + 2;
    out->batch = 256;
    out->step_px = step_px;
    out->fn = desc_encode;
    out->user = d;
    out->free_user = free;
}

void tmd_encoder_free(tmd_encoder *enc)
{
    if (!enc) return;
    if (enc->free_user && enc->user) enc->free_user(enc->user);
    memset(enc, 0, sizeof *enc);
}

/* ---- patches ------------------------------------------------------------------------- */

static float bilinear(const float *img, int64_t h, int64_t w, double y, double x)
{
    if (x < 0) x = 0;
    if (y < 0) y = 0;
    if (x > w - 1) x = (double)(w - 1);
    if (y > h - 1) y = (double)(h - 1);
    int64_t x0 = (int64_t)floor(x), y0 = (int64_t)floor(y);
    int64_t x1 = x0 + 1 < w ? x0 + 1 : x0, y1 = y0 + 1 < h ? y0 + 1 : y0;
    double fx = x - x0, fy = y - y0;
    return (float)((1 - fy) * ((1 - fx) * img[y0 * w + x0] + fx * img[y0 * w + x1]) +
                   fy * ((1 - fx) * img[y1 * w + x0] + fx * img[y1 * w + x1]));
}

tmd_status tmd_features_compute(tmd_ctx *ctx, const tmd_encoder *enc, const float *img, int64_t y0, int64_t x0,
                                int64_t h, int64_t w, int64_t n, const double *xs, const double *ys, float *latent)
{
    if (!enc || !enc->fn || enc->patch < 1 || enc->dim < 1)
        return TMD_FAIL(ctx, TMD_ERR_ARG, "features: no encoder");
    if (n == 0) return TMD_OK;
    if (h < 1 || w < 1) return TMD_FAIL(ctx, TMD_ERR_ARG, "features: empty image region %lldx%lld", (long long)h, (long long)w);
    int P = enc->patch, B = enc->batch > 0 ? enc->batch : 1;
    float *patches = NULL; /* (B, P, P) */
    tmd_status st = tmd_calloc(ctx, (void **)&patches, (size_t)B * P * P, sizeof(float), "feature patches");
    if (st) return st;
    double c = (P - 1) / 2.0;
    for (int64_t k0 = 0; k0 < n && !st; k0 += B) {
        int m = (int)(n - k0 < B ? n - k0 : B);
        for (int q = 0; q < m; q++) {
            float *p = patches + (size_t)q * P * P;
            double cx = xs[k0 + q] - x0, cy = ys[k0 + q] - y0;
            for (int yy = 0; yy < P; yy++)
                for (int xx = 0; xx < P; xx++)
                    p[yy * P + xx] = bilinear(img, h, w, cy + (yy - c) * enc->step_px, cx + (xx - c) * enc->step_px);
        }
        st = enc->fn(ctx, enc->user, m, patches, latent + (size_t)k0 * enc->dim);
    }
    free(patches);
    return st;
}
