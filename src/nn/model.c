/* nn models: graph construction, shapes, parameters, architectures, HDF5 files. */
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nn/nn_internal.h"

/* Bounds on an architecture (checked when a layer is added or a model file is read, before
 * anything is allocated): channels of any tensor, conv dilation, spatial size of any layer
 * at the reference input, dense input length, and trainable parameters (2^28 floats = 1 GiB). */
#define TMD_NN_MAX_CHANNELS 4096
#define TMD_NN_MAX_DILATION 64
#define TMD_NN_MAX_SPATIAL 65536
#define TMD_NN_MAX_DENSE_IN (1 << 24)
#define TMD_NN_MAX_DENSE_OUT (1 << 20)
#define TMD_NN_MAX_PARAMS ((int64_t)1 << 28)
/* Any tensor side while computing shapes (keeps c*h*w within int64 and h*2 within int). */
#define TMD_NN_SHAPE_LIMIT (1 << 24)

static const char *const OP_NAMES[TMD_NN_OP_COUNT] = {"input", "conv", "maxpool", "upsample", "concat",
                                                      "sum", "dense", "dropout", "reshape", "softmax"};

uint64_t tmd_nn_hash(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

double tmd_nn_randn(uint64_t *state)
{
    *state += 0x9e3779b97f4a7c15ULL;
    double u1 = ((tmd_nn_hash(*state) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
    *state += 0x9e3779b97f4a7c15ULL;
    double u2 = ((tmd_nn_hash(*state) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* ---- shapes ------------------------------------------------------------------------- */

int tmd_nn_shapes(const tmd_nn_model *m, int h, int w, int *c, int *hh, int *ww, char *err, size_t errlen)
{
    c[0] = m->in_channels, hh[0] = h, ww[0] = w;
    for (int i = 1; i < m->n_layers; i++) {
        const tmd_nn_layer *L = &m->layers[i];
        int a = L->in[0], b = L->in[1];
        if (a < 0 || a >= i || (b >= i) || (b < 0 && (L->op == TMD_NN_OP_CONCAT || L->op == TMD_NN_OP_SUM))) {
            snprintf(err, errlen, "layer %d (%s): input layer index %d/%d is not an earlier layer", i,
                     OP_NAMES[L->op], a, b);
            return -1;
        }
        int C = c[a], H = hh[a], W = ww[a];
        switch (L->op) {
        case TMD_NN_OP_CONV:
            if (C != L->cin) {
                snprintf(err, errlen, "layer %d (conv): input has %d channels, weights expect %d", i, C, L->cin);
                return -1;
            }
            C = L->cout;
            break;
        case TMD_NN_OP_MAXPOOL:
            if (H % 2 || W % 2) {
                snprintf(err, errlen, "layer %d (maxpool): input %dx%d is not even", i, H, W);
                return -1;
            }
            H /= 2, W /= 2;
            break;
        case TMD_NN_OP_UPSAMPLE:
            if (H > TMD_NN_SHAPE_LIMIT / 2 || W > TMD_NN_SHAPE_LIMIT / 2) {
                snprintf(err, errlen, "layer %d (upsample): output of %dx%d would exceed %d pixels a side", i, H, W,
                         TMD_NN_SHAPE_LIMIT);
                return -1;
            }
            H *= 2, W *= 2;
            break;
        case TMD_NN_OP_CONCAT:
        case TMD_NN_OP_SUM:
            if (hh[b] != H || ww[b] != W || (L->op == TMD_NN_OP_SUM && c[b] != C)) {
                snprintf(err, errlen, "layer %d (%s): inputs %dx%dx%d and %dx%dx%d do not match", i,
                         OP_NAMES[L->op], C, H, W, c[b], hh[b], ww[b]);
                return -1;
            }
            if (L->op == TMD_NN_OP_CONCAT) {
                if ((int64_t)C + c[b] > TMD_NN_MAX_CHANNELS) {
                    snprintf(err, errlen, "layer %d (concat): %d + %d channels, at most %d expected", i, C, c[b],
                             TMD_NN_MAX_CHANNELS);
                    return -1;
                }
                C += c[b];
            }
            break;
        case TMD_NN_OP_DENSE:
            if ((int64_t)C * H * W != L->cin) {
                snprintf(err, errlen, "layer %d (dense): input has %lld values, weights expect %d", i,
                         (long long)C * H * W, L->cin);
                return -1;
            }
            C = L->cout, H = 1, W = 1;
            break;
        case TMD_NN_OP_RESHAPE:
            if (L->rc < 1 || L->rc > TMD_NN_MAX_CHANNELS || L->rh < 1 || L->rh > TMD_NN_SHAPE_LIMIT || L->rw < 1 ||
                L->rw > TMD_NN_SHAPE_LIMIT) {
                snprintf(err, errlen, "layer %d (reshape): target %dx%dx%d out of range (channels 1..%d, sides 1..%d)",
                         i, L->rc, L->rh, L->rw, TMD_NN_MAX_CHANNELS, TMD_NN_SHAPE_LIMIT);
                return -1;
            }
            if ((int64_t)C * H * W != (int64_t)L->rc * L->rh * L->rw) {
                snprintf(err, errlen, "layer %d (reshape): %dx%dx%d cannot become %dx%dx%d", i, C, H, W, L->rc,
                         L->rh, L->rw);
                return -1;
            }
            C = L->rc, H = L->rh, W = L->rw;
            break;
        case TMD_NN_OP_DROPOUT:
        case TMD_NN_OP_SOFTMAX: break;
        default: snprintf(err, errlen, "layer %d: unknown operation %d", i, L->op); return -1;
        }
        if (H < 1 || W < 1) {
            snprintf(err, errlen, "layer %d (%s): output would be empty", i, OP_NAMES[L->op]);
            return -1;
        }
        c[i] = C, hh[i] = H, ww[i] = W;
    }
    return 0;
}

static void reach_scale(const tmd_nn_model *m, double *r, double *s)
{
    r[0] = 0, s[0] = 1;
    for (int i = 1; i < m->n_layers; i++) {
        const tmd_nn_layer *L = &m->layers[i];
        double ra = r[L->in[0]], sa = s[L->in[0]];
        if (L->in[1] >= 0 && r[L->in[1]] > ra) ra = r[L->in[1]];
        switch (L->op) {
        case TMD_NN_OP_CONV: r[i] = ra + (L->k / 2) * L->dil * sa, s[i] = sa; break;
        case TMD_NN_OP_MAXPOOL: r[i] = ra + sa, s[i] = 2 * sa; break;
        case TMD_NN_OP_UPSAMPLE: r[i] = ra + sa, s[i] = sa / 2; break;
        case TMD_NN_OP_DENSE: r[i] = 1e9, s[i] = sa; break;
        default: r[i] = ra, s[i] = sa; break;
        }
    }
}

int tmd_nn_model_reach(const tmd_nn_model *m)
{
    double r[TMD_NN_MAX_LAYERS], s[TMD_NN_MAX_LAYERS];
    if (!m) return 0;
    reach_scale(m, r, s);
    double x = r[m->n_layers - 1];
    if (m->input_size > 0 && x > m->input_size) x = m->input_size;
    return (int)ceil(x);
}

int tmd_nn_model_multiple(const tmd_nn_model *m)
{
    double r[TMD_NN_MAX_LAYERS], s[TMD_NN_MAX_LAYERS];
    if (!m) return 1;
    reach_scale(m, r, s);
    double mx = 1;
    for (int i = 0; i < m->n_layers; i++)
        if (s[i] > mx) mx = s[i];
    return (int)mx;
}

const char *tmd_nn_model_kind(const tmd_nn_model *m) { return m ? m->kind : ""; }
int tmd_nn_model_in_channels(const tmd_nn_model *m) { return m ? m->in_channels : 0; }
int tmd_nn_model_input_size(const tmd_nn_model *m) { return m ? m->input_size : 0; }
int tmd_nn_model_latent_layer(const tmd_nn_model *m) { return m ? m->latent : -1; }
const char *tmd_nn_model_provenance(const tmd_nn_model *m) { return m && m->provenance ? m->provenance : ""; }
int64_t tmd_nn_model_param_count(const tmd_nn_model *m) { return m ? m->n_params : 0; }

int tmd_nn_model_out_channels(const tmd_nn_model *m)
{
    int c[TMD_NN_MAX_LAYERS], h[TMD_NN_MAX_LAYERS], w[TMD_NN_MAX_LAYERS];
    char err[256];
    int R = m->input_size > 0 ? m->input_size : 64 * tmd_nn_model_multiple(m);
    if (tmd_nn_shapes(m, R, R, c, h, w, err, sizeof err)) return 0;
    return c[m->n_layers - 1];
}

float *tmd_nn_model_params(tmd_nn_model *m, int64_t *n)
{
    *n = m->n_params;
    return m->params;
}

float *tmd_nn_model_stats(tmd_nn_model *m, int64_t *n)
{
    *n = m->n_stats;
    return m->stats;
}

void tmd_nn_model_set_slope(tmd_nn_model *m, float slope) { m->slope = slope; }

/* ---- construction ----------------------------------------------------------------- */

tmd_status tmd_nn_model_new(tmd_ctx *ctx, const char *kind, int in_channels, int input_size, tmd_nn_model **out)
{
    *out = NULL;
    if (in_channels < 1 || input_size < 0)
        return TMD_FAIL(ctx, TMD_ERR_ARG, "nn model: in_channels %d / input_size %d invalid", in_channels, input_size);
    tmd_nn_model *m = NULL;
    TMD_CHECK(tmd_calloc(ctx, (void **)&m, 1, sizeof *m, "nn model"));
    snprintf(m->kind, sizeof m->kind, "%s", kind ? kind : "custom");
    m->in_channels = in_channels;
    m->input_size = input_size;
    m->n_layers = 1;
    m->latent = -1;
    m->slope = 0.1f;
    m->layers[0].op = TMD_NN_OP_INPUT;
    m->layers[0].in[0] = m->layers[0].in[1] = -1;
    m->layers[0].cout = in_channels;
    *out = m;
    return TMD_OK;
}

/* Trainable parameters of one layer (weights, bias, BN affine); 0 for layers without. */
static int64_t layer_params(const tmd_nn_layer *L)
{
    int64_t wn;
    if (L->op == TMD_NN_OP_CONV) wn = (int64_t)L->cout * L->cin * L->k * L->k;
    else if (L->op == TMD_NN_OP_DENSE) wn = (int64_t)L->cout * L->cin;
    else return 0;
    return wn + L->cout + (L->bn ? 2 * (int64_t)L->cout : 0);
}

/* Appends a layer after checking the graph with the reference input size. */
static int add_layer(tmd_ctx *ctx, tmd_nn_model *m, tmd_nn_layer L)
{
    if (!m || m->params) return TMD_FAIL(ctx, TMD_ERR_ARG, "nn model: layers cannot be added after weights exist");
    if (m->n_layers >= TMD_NN_MAX_LAYERS) return TMD_FAIL(ctx, TMD_ERR_RANGE, "nn model: more than %d layers", TMD_NN_MAX_LAYERS);
    int c[TMD_NN_MAX_LAYERS], h[TMD_NN_MAX_LAYERS], w[TMD_NN_MAX_LAYERS];
    char err[256];
    int R = m->input_size > 0 ? m->input_size : 1024;
    int i = m->n_layers;
    if (L.in[0] < 0 || L.in[0] >= i) return TMD_FAIL(ctx, TMD_ERR_ARG, "nn model: layer %d: input %d does not exist", i, L.in[0]);
    if (tmd_nn_shapes(m, R, R, c, h, w, err, sizeof err)) return TMD_FAIL(ctx, TMD_ERR_INTERNAL, "nn model: %s", err);
    int a = L.in[0];
    if ((L.op == TMD_NN_OP_CONCAT || L.op == TMD_NN_OP_SUM) && (L.in[1] < 0 || L.in[1] >= i))
        return TMD_FAIL(ctx, TMD_ERR_ARG, "nn model: layer %d: second input %d does not exist", i, L.in[1]);
    if (L.op == TMD_NN_OP_CONV) L.cin = c[a];
    if (L.op == TMD_NN_OP_DENSE) {
        if (m->input_size <= 0) return TMD_FAIL(ctx, TMD_ERR_ARG, "nn model: a dense layer needs a fixed input size");
        int64_t cin = (int64_t)c[a] * h[a] * w[a]; /* each factor is bounded by tmd_nn_shapes */
        if (cin > TMD_NN_MAX_DENSE_IN)
            return TMD_FAIL(ctx, TMD_ERR_RANGE, "nn model: layer %d (dense): input of %dx%dx%d = %lld values, at most %d expected",
                            i, c[a], h[a], w[a], (long long)cin, TMD_NN_MAX_DENSE_IN);
        L.cin = (int)cin;
    }
    int64_t np = layer_params(&L);
    for (int j = 1; j < i; j++) np += layer_params(&m->layers[j]);
    if (np > TMD_NN_MAX_PARAMS)
        return TMD_FAIL(ctx, TMD_ERR_RANGE, "nn model: layer %d (%s) brings the model to %lld parameters, at most %lld expected",
                        i, OP_NAMES[L.op], (long long)np, (long long)TMD_NN_MAX_PARAMS);
    m->layers[i] = L;
    m->n_layers++;
    if (tmd_nn_shapes(m, R, R, c, h, w, err, sizeof err)) {
        m->n_layers--;
        return TMD_FAIL(ctx, TMD_ERR_ARG, "nn model: %s", err);
    }
    if (h[i] > TMD_NN_MAX_SPATIAL || w[i] > TMD_NN_MAX_SPATIAL) {
        m->n_layers--;
        return TMD_FAIL(ctx, TMD_ERR_RANGE, "nn model: layer %d (%s): output %dx%d at input %d exceeds %d pixels a side",
                        i, OP_NAMES[L.op], h[i], w[i], R, TMD_NN_MAX_SPATIAL);
    }
    return i;
}

static tmd_nn_layer layer0(int op, int a, int b)
{
    tmd_nn_layer L;
    memset(&L, 0, sizeof L);
    L.op = op, L.in[0] = a, L.in[1] = b, L.dil = 1;
    return L;
}

int tmd_nn_add_conv(tmd_ctx *ctx, tmd_nn_model *m, int in, int cout, int k, int dilation, int batchnorm, int act)
{
    if ((k != 1 && k != 3) || cout < 1 || cout > TMD_NN_MAX_CHANNELS || dilation < 1 || dilation > TMD_NN_MAX_DILATION ||
        act < 0 || act > 2 || batchnorm < 0 || batchnorm > 1)
        return TMD_FAIL(ctx, TMD_ERR_ARG,
                        "nn model: conv k=%d cout=%d dilation=%d batchnorm=%d act=%d not supported (expected k 1 or 3, "
                        "cout 1..%d, dilation 1..%d, batchnorm 0/1, act 0..2)",
                        k, cout, dilation, batchnorm, act, TMD_NN_MAX_CHANNELS, TMD_NN_MAX_DILATION);
    tmd_nn_layer L = layer0(TMD_NN_OP_CONV, in, -1);
    L.cout = cout, L.k = k, L.dil = dilation, L.bn = batchnorm ? 1 : 0, L.act = act;
    return add_layer(ctx, m, L);
}
int tmd_nn_add_maxpool(tmd_ctx *ctx, tmd_nn_model *m, int in) { return add_layer(ctx, m, layer0(TMD_NN_OP_MAXPOOL, in, -1)); }
int tmd_nn_add_upsample(tmd_ctx *ctx, tmd_nn_model *m, int in) { return add_layer(ctx, m, layer0(TMD_NN_OP_UPSAMPLE, in, -1)); }
int tmd_nn_add_concat(tmd_ctx *ctx, tmd_nn_model *m, int a, int b) { return add_layer(ctx, m, layer0(TMD_NN_OP_CONCAT, a, b)); }
int tmd_nn_add_sum(tmd_ctx *ctx, tmd_nn_model *m, int a, int b) { return add_layer(ctx, m, layer0(TMD_NN_OP_SUM, a, b)); }
int tmd_nn_add_softmax(tmd_ctx *ctx, tmd_nn_model *m, int in) { return add_layer(ctx, m, layer0(TMD_NN_OP_SOFTMAX, in, -1)); }
int tmd_nn_add_dense(tmd_ctx *ctx, tmd_nn_model *m, int in, int cout, int act)
{
    if (cout < 1 || cout > TMD_NN_MAX_DENSE_OUT || act < 0 || act > 2)
        return TMD_FAIL(ctx, TMD_ERR_ARG, "nn model: dense cout=%d act=%d not supported (expected cout 1..%d, act 0..2)",
                        cout, act, TMD_NN_MAX_DENSE_OUT);
    tmd_nn_layer L = layer0(TMD_NN_OP_DENSE, in, -1);
    L.cout = cout, L.act = act;
    return add_layer(ctx, m, L);
}
int tmd_nn_add_dropout(tmd_ctx *ctx, tmd_nn_model *m, int in, float p)
{
    if (!(p >= 0 && p < 1)) return TMD_FAIL(ctx, TMD_ERR_ARG, "nn model: dropout p=%g not in [0,1)", p);
    tmd_nn_layer L = layer0(TMD_NN_OP_DROPOUT, in, -1);
    L.p = p;
    return add_layer(ctx, m, L);
}
int tmd_nn_add_reshape(tmd_ctx *ctx, tmd_nn_model *m, int in, int c, int h, int w)
{
    tmd_nn_layer L = layer0(TMD_NN_OP_RESHAPE, in, -1);
    L.rc = c, L.rh = h, L.rw = w;
    return add_layer(ctx, m, L);
}

tmd_status tmd_nn_model_set_latent(tmd_ctx *ctx, tmd_nn_model *m, int layer)
{
    if (layer < 1 || layer >= m->n_layers) return TMD_FAIL(ctx, TMD_ERR_ARG, "nn model: latent layer %d does not exist", layer);
    m->latent = layer;
    return TMD_OK;
}

tmd_status tmd_nn_model_alloc_params(tmd_ctx *ctx, tmd_nn_model *m)
{
    int64_t np = 0, ns = 0;
    for (int i = 1; i < m->n_layers; i++) {
        tmd_nn_layer *L = &m->layers[i];
        if (L->op == TMD_NN_OP_CONV) L->w_n = (int64_t)L->cout * L->cin * L->k * L->k;
        else if (L->op == TMD_NN_OP_DENSE) L->w_n = (int64_t)L->cout * L->cin;
        else continue;
        np += L->w_n + L->cout + (L->bn ? 2 * (int64_t)L->cout : 0);
        ns += L->bn ? 2 * (int64_t)L->cout : 0;
    }
    if (np > TMD_NN_MAX_PARAMS)
        return TMD_FAIL(ctx, TMD_ERR_RANGE, "nn model: %lld parameters, at most %lld expected", (long long)np,
                        (long long)TMD_NN_MAX_PARAMS);
    free(m->params);
    free(m->stats);
    m->params = m->stats = NULL;
    TMD_CHECK(tmd_calloc(ctx, (void **)&m->params, np ? np : 1, sizeof(float), "nn parameters"));
    TMD_CHECK(tmd_calloc(ctx, (void **)&m->stats, ns ? ns : 1, sizeof(float), "nn statistics"));
    m->n_params = np, m->n_stats = ns;
    float *p = m->params, *s = m->stats;
    for (int i = 1; i < m->n_layers; i++) {
        tmd_nn_layer *L = &m->layers[i];
        if (L->op != TMD_NN_OP_CONV && L->op != TMD_NN_OP_DENSE) continue;
        L->w = p, p += L->w_n;
        L->b = p, p += L->cout;
        if (L->bn) {
            L->gamma = p, p += L->cout;
            L->beta = p, p += L->cout;
            L->mean = s, s += L->cout;
            L->var = s, s += L->cout;
        }
    }
    return TMD_OK;
}

tmd_status tmd_nn_model_init_weights(tmd_ctx *ctx, tmd_nn_model *m, uint64_t seed)
{
    if (!m->params) TMD_CHECK(tmd_nn_model_alloc_params(ctx, m));
    uint64_t st = tmd_nn_hash(seed ^ 0x5eedULL);
    for (int i = 1; i < m->n_layers; i++) {
        tmd_nn_layer *L = &m->layers[i];
        if (L->op != TMD_NN_OP_CONV && L->op != TMD_NN_OP_DENSE) continue;
        int64_t fan_in = L->w_n / L->cout;
        double sd = L->act ? sqrt(2.0 / fan_in) : sqrt(1.0 / fan_in);
        for (int64_t j = 0; j < L->w_n; j++) L->w[j] = (float)(sd * tmd_nn_randn(&st));
        for (int j = 0; j < L->cout; j++) {
            L->b[j] = 0;
            if (L->bn) L->gamma[j] = 1, L->beta[j] = 0, L->mean[j] = 0, L->var[j] = 1;
        }
    }
    return TMD_OK;
}

void tmd_nn_model_free(tmd_nn_model **mp)
{
    if (!mp || !*mp) return;
    tmd_nn_model *m = *mp;
    free(m->params);
    free(m->stats);
    free(m->provenance);
    free(m);
    *mp = NULL;
}

tmd_status tmd_nn_model_clone(tmd_ctx *ctx, const tmd_nn_model *m, tmd_nn_model **out)
{
    *out = NULL;
    tmd_nn_model *c = NULL;
    TMD_CHECK(tmd_calloc(ctx, (void **)&c, 1, sizeof *c, "nn model"));
    *c = *m;
    c->params = c->stats = NULL;
    c->provenance = NULL;
    tmd_status st = tmd_nn_model_alloc_params(ctx, c);
    if (!st && m->provenance) {
        c->provenance = strdup(m->provenance);
        if (!c->provenance) st = TMD_FAIL(ctx, TMD_ERR_NOMEM, "nn model: provenance copy");
    }
    if (st) {
        tmd_nn_model_free(&c);
        return st;
    }
    memcpy(c->params, m->params, sizeof(float) * (size_t)m->n_params);
    memcpy(c->stats, m->stats, sizeof(float) * (size_t)m->n_stats);
    *out = c;
    return TMD_OK;
}

/* ---- architectures ------------------------------------------------------------------- */

#define ADD(expr) do { int r_ = (expr); if (r_ < 0) { st = r_; goto cleanup; } last = r_; } while (0)

/* A block of n convolutions 3x3 + BN + LeakyReLU. */
static int block(tmd_ctx *ctx, tmd_nn_model *m, int in, int cout, int n)
{
    int x = in;
    for (int i = 0; i < n && x >= 0; i++) x = tmd_nn_add_conv(ctx, m, x, cout, 3, 1, 1, TMD_NN_ACT_LEAKY);
    return x;
}

tmd_status tmd_nn_build_unet(tmd_ctx *ctx, int nf, int ncls, uint64_t seed, tmd_nn_model **out)
{
    tmd_nn_model *m = NULL;
    tmd_status st = TMD_OK;
    int last = 0;
    *out = NULL;
    if (nf < 1 || ncls < 2) return TMD_FAIL(ctx, TMD_ERR_ARG, "unet: base filters %d / classes %d invalid", nf, ncls);
    TMD_CHECK(tmd_nn_model_new(ctx, "unet", 1, 0, &m));
    int c1, c2, c3, b, x;
    ADD(c1 = block(ctx, m, 0, nf, 1));
    ADD(x = tmd_nn_add_maxpool(ctx, m, c1));
    ADD(c2 = block(ctx, m, x, 2 * nf, 2));
    ADD(x = tmd_nn_add_maxpool(ctx, m, c2));
    ADD(c3 = block(ctx, m, x, 4 * nf, 2));
    ADD(x = tmd_nn_add_maxpool(ctx, m, c3));
    /* dilated bottleneck: d = 2, 4, 6 in sequence, their outputs summed */
    int d1, d2, d3;
    ADD(d1 = tmd_nn_add_conv(ctx, m, x, 8 * nf, 3, 2, 1, TMD_NN_ACT_LEAKY));
    ADD(d2 = tmd_nn_add_conv(ctx, m, d1, 8 * nf, 3, 4, 1, TMD_NN_ACT_LEAKY));
    ADD(d3 = tmd_nn_add_conv(ctx, m, d2, 8 * nf, 3, 6, 1, TMD_NN_ACT_LEAKY));
    ADD(b = tmd_nn_add_sum(ctx, m, d1, d2));
    ADD(b = tmd_nn_add_sum(ctx, m, b, d3));
    /* up: 1x1 conv then bilinear x2 (equal to the peer's upsample-then-1x1: both linear,
     * interpolation weights sum to 1; 4x fewer FLOPs) */
    ADD(x = tmd_nn_add_conv(ctx, m, b, 4 * nf, 1, 1, 0, TMD_NN_ACT_NONE));
    ADD(x = tmd_nn_add_upsample(ctx, m, x));
    ADD(x = tmd_nn_add_concat(ctx, m, x, c3));
    ADD(x = block(ctx, m, x, 4 * nf, 2));
    ADD(x = tmd_nn_add_conv(ctx, m, x, 2 * nf, 1, 1, 0, TMD_NN_ACT_NONE));
    ADD(x = tmd_nn_add_upsample(ctx, m, x));
    ADD(x = tmd_nn_add_concat(ctx, m, x, c2));
    ADD(x = block(ctx, m, x, 2 * nf, 2));
    ADD(x = tmd_nn_add_conv(ctx, m, x, nf, 1, 1, 0, TMD_NN_ACT_NONE));
    ADD(x = tmd_nn_add_upsample(ctx, m, x));
    ADD(x = tmd_nn_add_concat(ctx, m, x, c1));
    ADD(x = block(ctx, m, x, nf, 1));
    ADD(x = tmd_nn_add_conv(ctx, m, x, ncls, 1, 1, 0, TMD_NN_ACT_NONE));
    ADD(tmd_nn_add_softmax(ctx, m, x));
    st = tmd_nn_model_init_weights(ctx, m, seed);
cleanup:
    (void)last;
    if (st) tmd_nn_model_free(&m);
    *out = m;
    return st;
}

tmd_status tmd_nn_build_classifier(tmd_ctx *ctx, int patch, int nf, int ncls, uint64_t seed, tmd_nn_model **out)
{
    tmd_nn_model *m = NULL;
    tmd_status st = TMD_OK;
    int last = 0, x;
    *out = NULL;
    if (patch < 8 || patch % 8) return TMD_FAIL(ctx, TMD_ERR_ARG, "classifier: patch %d is not a multiple of 8", patch);
    TMD_CHECK(tmd_nn_model_new(ctx, "classifier", 1, patch, &m));
    ADD(x = tmd_nn_add_conv(ctx, m, 0, nf, 3, 1, 1, TMD_NN_ACT_LEAKY));
    ADD(x = tmd_nn_add_maxpool(ctx, m, x));
    ADD(x = tmd_nn_add_conv(ctx, m, x, 2 * nf, 3, 1, 1, TMD_NN_ACT_LEAKY));
    ADD(x = tmd_nn_add_maxpool(ctx, m, x));
    ADD(x = tmd_nn_add_conv(ctx, m, x, 4 * nf, 3, 1, 1, TMD_NN_ACT_LEAKY));
    ADD(x = tmd_nn_add_maxpool(ctx, m, x));
    ADD(x = tmd_nn_add_dense(ctx, m, x, 64, TMD_NN_ACT_LEAKY));
    ADD(x = tmd_nn_add_dropout(ctx, m, x, 0.2f));
    ADD(x = tmd_nn_add_dense(ctx, m, x, ncls, TMD_NN_ACT_NONE));
    ADD(tmd_nn_add_softmax(ctx, m, x));
    st = tmd_nn_model_init_weights(ctx, m, seed);
cleanup:
    (void)last;
    if (st) tmd_nn_model_free(&m);
    *out = m;
    return st;
}

tmd_status tmd_nn_build_autoencoder(tmd_ctx *ctx, int patch, int nf, int latent, uint64_t seed, tmd_nn_model **out)
{
    tmd_nn_model *m = NULL;
    tmd_status st = TMD_OK;
    int last = 0, x, z;
    *out = NULL;
    if (patch < 8 || patch % 8 || latent < 1)
        return TMD_FAIL(ctx, TMD_ERR_ARG, "autoencoder: patch %d (multiple of 8) / latent %d invalid", patch, latent);
    int s = patch / 8;
    TMD_CHECK(tmd_nn_model_new(ctx, "autoencoder", 1, patch, &m));
    ADD(x = tmd_nn_add_conv(ctx, m, 0, nf, 3, 1, 0, TMD_NN_ACT_LEAKY));
    ADD(x = tmd_nn_add_maxpool(ctx, m, x));
    ADD(x = tmd_nn_add_conv(ctx, m, x, 2 * nf, 3, 1, 0, TMD_NN_ACT_LEAKY));
    ADD(x = tmd_nn_add_maxpool(ctx, m, x));
    ADD(x = tmd_nn_add_conv(ctx, m, x, 2 * nf, 3, 1, 0, TMD_NN_ACT_LEAKY));
    ADD(x = tmd_nn_add_maxpool(ctx, m, x));
    ADD(z = tmd_nn_add_dense(ctx, m, x, latent, TMD_NN_ACT_NONE));
    ADD(x = tmd_nn_add_dense(ctx, m, z, 2 * nf * s * s, TMD_NN_ACT_LEAKY));
    ADD(x = tmd_nn_add_reshape(ctx, m, x, 2 * nf, s, s));
    ADD(x = tmd_nn_add_upsample(ctx, m, x));
    ADD(x = tmd_nn_add_conv(ctx, m, x, 2 * nf, 3, 1, 0, TMD_NN_ACT_LEAKY));
    ADD(x = tmd_nn_add_upsample(ctx, m, x));
    ADD(x = tmd_nn_add_conv(ctx, m, x, nf, 3, 1, 0, TMD_NN_ACT_LEAKY));
    ADD(x = tmd_nn_add_upsample(ctx, m, x));
    ADD(x = tmd_nn_add_conv(ctx, m, x, nf, 3, 1, 0, TMD_NN_ACT_LEAKY));
    ADD(x = tmd_nn_add_conv(ctx, m, x, 1, 1, 1, 0, TMD_NN_ACT_NONE));
    st = tmd_nn_model_set_latent(ctx, m, z);
    if (!st) st = tmd_nn_model_init_weights(ctx, m, seed);
cleanup:
    (void)last;
    if (st) tmd_nn_model_free(&m);
    *out = m;
    return st;
}

/* ---- HDF5 files ----------------------------------------------------------------------- */

#define NN_FORMAT "tmdflow-nn-model"
#define NN_FORMAT_VERSION 1

static int attr_write(hid_t obj, const char *name, hid_t type, const void *v)
{
    hid_t sp = H5Screate(H5S_SCALAR), a = H5I_INVALID_HID;
    int rc = -1;
    if (sp < 0) return -1;
    a = H5Acreate2(obj, name, type, sp, H5P_DEFAULT, H5P_DEFAULT);
    if (a >= 0 && H5Awrite(a, type, v) >= 0) rc = 0;
    if (a >= 0) H5Aclose(a);
    H5Sclose(sp);
    return rc;
}

static int attr_write_str(hid_t obj, const char *name, const char *s)
{
    hid_t t = H5Tcopy(H5T_C_S1);
    int rc = -1;
    if (t < 0) return -1;
    if (H5Tset_size(t, strlen(s) + 1) >= 0) rc = attr_write(obj, name, t, s);
    H5Tclose(t);
    return rc;
}

static int attr_read(hid_t obj, const char *name, hid_t memtype, void *v)
{
    if (H5Aexists(obj, name) <= 0) return -1;
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    if (a < 0) return -1;
    hid_t sp = H5Aget_space(a);
    int rc = -1;
    if (sp >= 0 && H5Sget_simple_extent_npoints(sp) == 1 && H5Aread(a, memtype, v) >= 0) rc = 0;
    if (sp >= 0) H5Sclose(sp);
    H5Aclose(a);
    return rc;
}

/* Reads a string attribute (fixed or variable length) into a malloc'd string. */
static char *attr_read_str(hid_t obj, const char *name)
{
    if (H5Aexists(obj, name) <= 0) return NULL;
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    if (a < 0) return NULL;
    hid_t ft = H5Aget_type(a);
    char *out = NULL;
    if (ft >= 0 && H5Tget_class(ft) == H5T_STRING) {
        if (H5Tis_variable_str(ft) > 0) {
            char *v = NULL;
            hid_t mt = H5Tcopy(H5T_C_S1);
            H5Tset_size(mt, H5T_VARIABLE);
            if (H5Aread(a, mt, &v) >= 0 && v) {
                out = strdup(v);
                H5free_memory(v);
            }
            H5Tclose(mt);
        } else {
            size_t n = H5Tget_size(ft);
            out = calloc(n + 1, 1);
            hid_t mt = H5Tcopy(H5T_C_S1);
            H5Tset_size(mt, n + 1);
            if (out && H5Aread(a, mt, out) < 0) {
                free(out);
                out = NULL;
            }
            H5Tclose(mt);
        }
    }
    if (ft >= 0) H5Tclose(ft);
    H5Aclose(a);
    return out;
}

static int dset_write(hid_t g, const char *name, int rank, const hsize_t *dims, const float *v)
{
    hid_t sp = H5Screate_simple(rank, dims, NULL), d = H5I_INVALID_HID;
    int rc = -1;
    if (sp < 0) return -1;
    d = H5Dcreate2(g, name, H5T_IEEE_F32LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (d >= 0 && H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v) >= 0) rc = 0;
    if (d >= 0) H5Dclose(d);
    H5Sclose(sp);
    return rc;
}

static const char *INT_ATTRS[] = {"op", "in0", "in1", "cout", "k", "dilation", "batchnorm", "act", "rc", "rh", "rw"};

tmd_status tmd_nn_model_save(tmd_ctx *ctx, const tmd_nn_model *m, const char *path, const char *prov)
{
    char tmp[4096];
    hid_t f = H5I_INVALID_HID, lg = H5I_INVALID_HID, g = H5I_INVALID_HID;
    tmd_status st = TMD_OK;
    if (!m || !m->params || !path) return TMD_FAIL(ctx, TMD_ERR_ARG, "nn model save: no model or path");
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    f = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (f < 0) return TMD_FAIL(ctx, TMD_ERR_IO, "%s: cannot create model file", tmp);
    int ver = NN_FORMAT_VERSION;
    const char *p = prov ? prov : (m->provenance ? m->provenance : "{}");
    if (attr_write_str(f, "format", NN_FORMAT) || attr_write(f, "format_version", H5T_NATIVE_INT, &ver) ||
        attr_write_str(f, "kind", m->kind) || attr_write(f, "in_channels", H5T_NATIVE_INT, &m->in_channels) ||
        attr_write(f, "input_size", H5T_NATIVE_INT, &m->input_size) ||
        attr_write(f, "n_layers", H5T_NATIVE_INT, &m->n_layers) || attr_write(f, "latent", H5T_NATIVE_INT, &m->latent) ||
        attr_write(f, "leaky_slope", H5T_NATIVE_FLOAT, &m->slope) || attr_write_str(f, "provenance", p) ||
        attr_write_str(f, "tmdflow_version", TMD_VERSION) || attr_write_str(f, "layout", "CHW float32; conv w (cout,cin,k,k); dense w (cout,cin); BN after conv, before activation")) {
        st = TMD_FAIL(ctx, TMD_ERR_IO, "%s: cannot write model attributes", tmp);
        goto cleanup;
    }
    lg = H5Gcreate2(f, "layers", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (lg < 0) {
        st = TMD_FAIL(ctx, TMD_ERR_IO, "%s: cannot create /layers", tmp);
        goto cleanup;
    }
    for (int i = 1; i < m->n_layers; i++) {
        const tmd_nn_layer *L = &m->layers[i];
        char name[32];
        snprintf(name, sizeof name, "%03d", i);
        g = H5Gcreate2(lg, name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        int iv[11] = {L->op, L->in[0], L->in[1], L->cout, L->k, L->dil, L->bn, L->act, L->rc, L->rh, L->rw};
        int bad = g < 0 || attr_write_str(g, "type", OP_NAMES[L->op]) || attr_write(g, "p", H5T_NATIVE_FLOAT, &L->p);
        for (int j = 0; j < 11 && !bad; j++) bad = attr_write(g, INT_ATTRS[j], H5T_NATIVE_INT, &iv[j]);
        if (!bad && L->w) {
            hsize_t wd[4] = {(hsize_t)L->cout, (hsize_t)L->cin, (hsize_t)L->k, (hsize_t)L->k};
            hsize_t cd[1] = {(hsize_t)L->cout};
            bad = dset_write(g, "w", L->op == TMD_NN_OP_CONV ? 4 : 2, wd, L->w) || dset_write(g, "b", 1, cd, L->b);
            if (!bad && L->bn)
                bad = dset_write(g, "gamma", 1, cd, L->gamma) || dset_write(g, "beta", 1, cd, L->beta) ||
                      dset_write(g, "running_mean", 1, cd, L->mean) || dset_write(g, "running_var", 1, cd, L->var);
        }
        if (g >= 0) H5Gclose(g);
        g = H5I_INVALID_HID;
        if (bad) {
            st = TMD_FAIL(ctx, TMD_ERR_IO, "%s: cannot write layer /layers/%s", tmp, name);
            goto cleanup;
        }
    }
cleanup:
    if (lg >= 0) H5Gclose(lg);
    if (f >= 0 && H5Fclose(f) < 0 && !st) st = TMD_FAIL(ctx, TMD_ERR_IO, "%s: closing failed", tmp);
    if (!st && rename(tmp, path) != 0) st = TMD_FAIL(ctx, TMD_ERR_IO, "%s: cannot rename to %s", tmp, path);
    if (st) unlink(tmp);
    return st;
}

/* Reads dataset `name` of group g into dst (NULL: only checks), checking its shape equals dims. */
static tmd_status dset_read(tmd_ctx *ctx, const char *path, const char *lname, hid_t g, const char *name, int rank,
                            const hsize_t *dims, float *dst)
{
    if (H5Lexists(g, name, H5P_DEFAULT) <= 0)
        return TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: layer %s: dataset '%s' is missing", path, lname, name);
    hid_t d = H5Dopen2(g, name, H5P_DEFAULT);
    if (d < 0) return TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: layer %s: cannot open '%s'", path, lname, name);
    hid_t sp = H5Dget_space(d);
    hsize_t got[8] = {0};
    int r = sp >= 0 ? H5Sget_simple_extent_ndims(sp) : -1;
    tmd_status st = TMD_OK;
    if (r != rank || r > 8) {
        st = TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: layer %s: '%s' has rank %d, expected %d", path, lname, name, r, rank);
    } else {
        H5Sget_simple_extent_dims(sp, got, NULL);
        for (int i = 0; i < rank; i++)
            if (got[i] != dims[i]) {
                st = TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: layer %s: '%s' dimension %d is %llu, expected %llu", path,
                              lname, name, i, (unsigned long long)got[i], (unsigned long long)dims[i]);
                break;
            }
        if (!st && dst && H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, dst) < 0)
            st = TMD_FAIL(ctx, TMD_ERR_IO, "%s: layer %s: reading '%s' failed", path, lname, name);
    }
    if (sp >= 0) H5Sclose(sp);
    H5Dclose(d);
    return st;
}

tmd_status tmd_nn_model_load(tmd_ctx *ctx, const char *path, tmd_nn_model **out)
{
    tmd_nn_model *m = NULL;
    hid_t f = H5I_INVALID_HID, lg = H5I_INVALID_HID, g = H5I_INVALID_HID;
    tmd_status st = TMD_OK;
    char *fmt = NULL, *kind = NULL;
    *out = NULL;
    if (!path) return TMD_FAIL(ctx, TMD_ERR_ARG, "nn model load: no path");
    H5E_auto2_t efunc = NULL;
    void *edata = NULL;
    H5Eget_auto2(H5E_DEFAULT, &efunc, &edata);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL); /* our messages name the file and layer */
    f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) {
        st = TMD_FAIL(ctx, TMD_ERR_IO, "%s: cannot open as an HDF5 model file", path);
        goto cleanup;
    }
    {
        int ver = 0, inc = 0, insz = 0, nl = 0, lat = -1;
        float slope = 0.1f;
        fmt = attr_read_str(f, "format");
        kind = attr_read_str(f, "kind");
        if (!fmt || strcmp(fmt, NN_FORMAT) != 0) {
            st = TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: not a tmdflow model (attribute 'format' is '%s', expected '%s')",
                          path, fmt ? fmt : "(missing)", NN_FORMAT);
            goto cleanup;
        }
        if (attr_read(f, "format_version", H5T_NATIVE_INT, &ver) || ver != NN_FORMAT_VERSION ||
            attr_read(f, "in_channels", H5T_NATIVE_INT, &inc) || attr_read(f, "input_size", H5T_NATIVE_INT, &insz) ||
            attr_read(f, "n_layers", H5T_NATIVE_INT, &nl) || attr_read(f, "latent", H5T_NATIVE_INT, &lat)) {
            st = TMD_FAIL(ctx, TMD_ERR_FORMAT,
                          "%s: root attributes format_version (=%d), in_channels, input_size, n_layers, latent "
                          "missing or wrong",
                          path, NN_FORMAT_VERSION);
            goto cleanup;
        }
        attr_read(f, "leaky_slope", H5T_NATIVE_FLOAT, &slope);
        if (nl < 2 || nl > TMD_NN_MAX_LAYERS || inc < 1 || inc > 4096 || insz < 0 || insz > 65536) {
            st = TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: n_layers %d / in_channels %d / input_size %d out of range", path, nl,
                          inc, insz);
            goto cleanup;
        }
        if ((st = tmd_nn_model_new(ctx, kind ? kind : "custom", inc, insz, &m))) goto cleanup;
        m->slope = slope;
        m->provenance = attr_read_str(f, "provenance");
        lg = H5Gopen2(f, "layers", H5P_DEFAULT);
        if (lg < 0) {
            st = TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: group /layers is missing", path);
            goto cleanup;
        }
        for (int i = 1; i < nl; i++) {
            char name[32];
            snprintf(name, sizeof name, "%03d", i);
            g = H5Gopen2(lg, name, H5P_DEFAULT);
            if (g < 0) {
                st = TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: layer /layers/%s is missing (n_layers = %d)", path, name, nl);
                goto cleanup;
            }
            int iv[11];
            float pp = 0;
            for (int j = 0; j < 11; j++)
                if (attr_read(g, INT_ATTRS[j], H5T_NATIVE_INT, &iv[j])) {
                    st = TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: layer /layers/%s: attribute '%s' missing", path, name,
                                  INT_ATTRS[j]);
                    goto cleanup;
                }
            attr_read(g, "p", H5T_NATIVE_FLOAT, &pp);
            int r;
            tmd_error_clear(ctx);
            switch (iv[0]) {
            case TMD_NN_OP_CONV: r = tmd_nn_add_conv(ctx, m, iv[1], iv[3], iv[4], iv[5], iv[6], iv[7]); break;
            case TMD_NN_OP_MAXPOOL: r = tmd_nn_add_maxpool(ctx, m, iv[1]); break;
            case TMD_NN_OP_UPSAMPLE: r = tmd_nn_add_upsample(ctx, m, iv[1]); break;
            case TMD_NN_OP_CONCAT: r = tmd_nn_add_concat(ctx, m, iv[1], iv[2]); break;
            case TMD_NN_OP_SUM: r = tmd_nn_add_sum(ctx, m, iv[1], iv[2]); break;
            case TMD_NN_OP_DENSE: r = tmd_nn_add_dense(ctx, m, iv[1], iv[3], iv[7]); break;
            case TMD_NN_OP_DROPOUT: r = tmd_nn_add_dropout(ctx, m, iv[1], pp); break;
            case TMD_NN_OP_RESHAPE: r = tmd_nn_add_reshape(ctx, m, iv[1], iv[8], iv[9], iv[10]); break;
            case TMD_NN_OP_SOFTMAX: r = tmd_nn_add_softmax(ctx, m, iv[1]); break;
            default: r = TMD_ERR_FORMAT; break;
            }
            if (r < 0) {
                char why[TMD_ERRMSG_MAX];
                snprintf(why, sizeof why, "%s", ctx->err_msg);
                tmd_error_clear(ctx);
                st = TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: layer /layers/%s (op %d) is invalid: %s", path, name, iv[0],
                              iv[0] > 0 && iv[0] < TMD_NN_OP_COUNT ? why : "unknown operation");
                goto cleanup;
            }
            H5Gclose(g);
            g = H5I_INVALID_HID;
        }
        if (lat < -1 || lat >= m->n_layers) {
            st = TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: latent layer %d does not exist", path, lat);
            goto cleanup;
        }
        m->latent = lat;
        /* Every weight dataset must have the shape the architecture implies before anything
         * is allocated for it (a 4-byte edit of `cout` must not cost gigabytes). */
        for (int i = 1; i < m->n_layers; i++) {
            const tmd_nn_layer *L = &m->layers[i];
            if (L->op != TMD_NN_OP_CONV && L->op != TMD_NN_OP_DENSE) continue;
            char name[32], lname[64];
            snprintf(name, sizeof name, "%03d", i);
            snprintf(lname, sizeof lname, "/layers/%s (%s)", name, OP_NAMES[L->op]);
            g = H5Gopen2(lg, name, H5P_DEFAULT);
            if (g < 0) {
                st = TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: layer %s cannot be opened", path, lname);
                goto cleanup;
            }
            hsize_t wd[4] = {(hsize_t)L->cout, (hsize_t)L->cin, (hsize_t)L->k, (hsize_t)L->k};
            hsize_t cd[1] = {(hsize_t)L->cout};
            if ((st = dset_read(ctx, path, lname, g, "w", L->op == TMD_NN_OP_CONV ? 4 : 2, wd, NULL)) ||
                (st = dset_read(ctx, path, lname, g, "b", 1, cd, NULL)))
                goto cleanup;
            if (L->bn && ((st = dset_read(ctx, path, lname, g, "gamma", 1, cd, NULL)) ||
                          (st = dset_read(ctx, path, lname, g, "beta", 1, cd, NULL)) ||
                          (st = dset_read(ctx, path, lname, g, "running_mean", 1, cd, NULL)) ||
                          (st = dset_read(ctx, path, lname, g, "running_var", 1, cd, NULL))))
                goto cleanup;
            H5Gclose(g);
            g = H5I_INVALID_HID;
        }
        if ((st = tmd_nn_model_alloc_params(ctx, m))) goto cleanup;
        for (int i = 1; i < m->n_layers; i++) {
            tmd_nn_layer *L = &m->layers[i];
            if (!L->w) continue;
            char name[32];
            snprintf(name, sizeof name, "%03d", i);
            g = H5Gopen2(lg, name, H5P_DEFAULT);
            if (g < 0) {
                st = TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: layer /layers/%s cannot be opened", path, name);
                goto cleanup;
            }
            hsize_t wd[4] = {(hsize_t)L->cout, (hsize_t)L->cin, (hsize_t)L->k, (hsize_t)L->k};
            hsize_t cd[1] = {(hsize_t)L->cout};
            char lname[64];
            snprintf(lname, sizeof lname, "/layers/%s (%s)", name, OP_NAMES[L->op]);
            if ((st = dset_read(ctx, path, lname, g, "w", L->op == TMD_NN_OP_CONV ? 4 : 2, wd, L->w)) ||
                (st = dset_read(ctx, path, lname, g, "b", 1, cd, L->b)))
                goto cleanup;
            if (L->bn && ((st = dset_read(ctx, path, lname, g, "gamma", 1, cd, L->gamma)) ||
                          (st = dset_read(ctx, path, lname, g, "beta", 1, cd, L->beta)) ||
                          (st = dset_read(ctx, path, lname, g, "running_mean", 1, cd, L->mean)) ||
                          (st = dset_read(ctx, path, lname, g, "running_var", 1, cd, L->var))))
                goto cleanup;
            if (L->bn)
                for (int j = 0; j < L->cout; j++)
                    if (!(L->var[j] >= 0) || !isfinite(L->var[j])) {
                        st = TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: layer %s: running_var[%d] = %g is not a variance",
                                      path, lname, j, L->var[j]);
                        goto cleanup;
                    }
            for (int64_t j = 0; j < L->w_n; j++)
                if (!isfinite(L->w[j])) {
                    st = TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: layer %s: weight %lld is not finite", path, lname,
                                  (long long)j);
                    goto cleanup;
                }
            H5Gclose(g);
            g = H5I_INVALID_HID;
        }
    }
cleanup:
    free(fmt);
    free(kind);
    if (g >= 0) H5Gclose(g);
    if (lg >= 0) H5Gclose(lg);
    if (f >= 0) H5Fclose(f);
    H5Eset_auto2(H5E_DEFAULT, efunc, edata);
    if (st) tmd_nn_model_free(&m);
    *out = m;
    return st;
}
