/* nn execution: buffers of a net (inference plan or trainer), forward and backward
 * kernels. Convolutions: im2col of a panel of output rows into a cache-sized column
 * buffer, then one cblas_sgemm per panel writing straight into the CHW output. */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nn/nn_internal.h"

#define MAXF(a, b) ((a) > (b) ? (a) : (b))

/* Column-buffer budget per panel, floats (default 2^17 = 512 KiB: stays in L2). */
static int64_t panel_floats(void)
{
    const char *e = getenv("TMDFLOW_NN_PANEL_FLOATS");
    long v = e ? atol(e) : 0;
    return v > 1024 ? v : (1 << 17);
}

/* Output pixels per im2col panel: the budget over K rows, a multiple of 16 (at least 64),
 * at most the whole image. Panels need not be whole image rows. */
static int64_t panel_pixels(int K, int H, int W)
{
    int64_t p = panel_floats() / K / 16 * 16;
    if (p < 64) p = 64;
    if (p > (int64_t)H * W) p = (int64_t)H * W;
    return p;
}

static float *net_alloc(tmd_ctx *ctx, tmd_nn_net *net, int64_t n, const char *what, tmd_status *st)
{
    float *p = NULL;
    if (*st) return NULL;
    if (net->n_allocs >= (int)(sizeof net->allocs / sizeof net->allocs[0])) {
        *st = TMD_FAIL(ctx, TMD_ERR_INTERNAL, "nn: too many buffers");
        return NULL;
    }
    *st = tmd_calloc(ctx, (void **)&p, (size_t)(n > 0 ? n : 1), sizeof(float), what);
    if (*st) return NULL;
    net->allocs[net->n_allocs++] = p;
    net->bytes += (n > 0 ? n : 1) * (int64_t)sizeof(float);
    return p;
}

void tmd_nn_net_free(tmd_nn_net *net)
{
    if (net->profile && net->m) {
        static const char *names[TMD_NN_OP_COUNT] = {"input", "conv", "maxpool", "upsample", "concat",
                                                     "sum", "dense", "dropout", "reshape", "softmax"};
        double tot = 0;
        for (int i = 1; i <= net->until; i++) tot += net->prof_s[i];
        for (int i = 1; i <= net->until; i++) {
            const tmd_nn_layer *L = &net->m->layers[i];
            fprintf(stderr, "nn profile: layer %3d %-8s %4d->%-4d k%d d%d %6.1f%%  %8.2f ms\n", i, names[L->op], L->cin,
                    L->cout, L->k, L->dil, 100 * net->prof_s[i] / (tot > 0 ? tot : 1), 1e3 * net->prof_s[i]);
        }
    }
    for (int i = 0; i < net->n_allocs; i++) free(net->allocs[i]);
    free(net->red);
    if (net->comm != MPI_COMM_NULL) MPI_Comm_free(&net->comm);
    memset(net, 0, sizeof *net);
    net->comm = MPI_COMM_NULL;
}

tmd_status tmd_nn_net_init(tmd_ctx *ctx, tmd_nn_net *net, const tmd_nn_model *m, int batch, int h, int w, int until,
                           int training)
{
    int c[TMD_NN_MAX_LAYERS], hh[TMD_NN_MAX_LAYERS], ww[TMD_NN_MAX_LAYERS];
    int parent[TMD_NN_MAX_LAYERS];
    int64_t poff[TMD_NN_MAX_LAYERS];
    char err[256];
    tmd_status st = TMD_OK;
    memset(net, 0, sizeof *net);
    net->comm = MPI_COMM_NULL;
    if (!m || !m->params) return TMD_FAIL(ctx, TMD_ERR_ARG, "nn plan: model has no weights");
    if (until < 0) until = m->n_layers - 1;
    if (until < 1 || until >= m->n_layers) return TMD_FAIL(ctx, TMD_ERR_ARG, "nn plan: layer %d does not exist", until);
    int mult = tmd_nn_model_multiple(m);
    if (batch < 1 || h < 1 || w < 1 || h % mult || w % mult)
        return TMD_FAIL(ctx, TMD_ERR_ARG, "nn plan (%s): input %dx%d (batch %d) must be positive multiples of %d",
                        m->kind, h, w, batch, mult);
    if (m->input_size > 0 && (h != m->input_size || w != m->input_size))
        return TMD_FAIL(ctx, TMD_ERR_ARG, "nn plan (%s): input must be %dx%d, got %dx%d", m->kind, m->input_size,
                        m->input_size, h, w);
    if (tmd_nn_shapes(m, h, w, c, hh, ww, err, sizeof err)) return TMD_FAIL(ctx, TMD_ERR_ARG, "nn plan: %s", err);
    net->m = m, net->batch = batch, net->h = h, net->w = w, net->until = until, net->training = training;
    net->profile = getenv("TMDFLOW_NN_PROFILE") != NULL;

    /* views: concat members live inside the concat; reshape (and dropout at inference)
     * alias their input */
    for (int i = 0; i <= until; i++) parent[i] = -1, poff[i] = 0;
    for (int i = 1; i <= until; i++) {
        const tmd_nn_layer *L = &m->layers[i];
        int alias = L->op == TMD_NN_OP_RESHAPE || (L->op == TMD_NN_OP_DROPOUT && (!training || L->p == 0));
        if (alias) parent[i] = L->in[0], poff[i] = 0;
        if (L->op == TMD_NN_OP_CONCAT) {
            int a = L->in[0], b = L->in[1];
            if (parent[a] >= 0 || parent[b] >= 0 || a == b)
                return TMD_FAIL(ctx, TMD_ERR_ARG, "nn plan: layer %d: concat of a layer that is already a view", i);
            parent[a] = i, poff[a] = 0;
            parent[b] = i, poff[b] = (int64_t)c[a] * hh[a] * ww[a];
        }
    }
    for (int i = 0; i <= until; i++) {
        int r = i;
        int64_t off = 0;
        while (parent[r] >= 0) off += poff[r], r = parent[r];
        /* an alias's offset is its input's offset */
        net->t[i].root = r, net->t[i].off = off;
        net->t[i].c = c[i], net->t[i].h = hh[i], net->t[i].w = ww[i];
    }
    for (int i = 0; i <= until; i++) {
        tmd_nn_tensor *T = &net->t[i];
        int64_t rs = (int64_t)c[T->root] * hh[T->root] * ww[T->root];
        T->ss = rs;
        if (T->root == i && training) {
            T->data = net_alloc(ctx, net, rs * batch, "nn activations", &st);
            T->grad = net_alloc(ctx, net, rs * batch, "nn gradients", &st);
        }
    }
    if (!training && !st) {
        /* inference: activation buffers are reused once every reader of a tensor has run.
         * A root lives from the first layer that writes into it (a concat member) to the
         * last layer that reads it (the output: to the end). Best-fit reuse of freed
         * buffers, else a new buffer. */
        int birth[TMD_NN_MAX_LAYERS], death[TMD_NN_MAX_LAYERS];
        float *fbuf[TMD_NN_MAX_LAYERS];
        int64_t fsize[TMD_NN_MAX_LAYERS], rsize[TMD_NN_MAX_LAYERS];
        int nfree = 0;
        for (int i = 0; i <= until; i++) birth[i] = -1, death[i] = -1;
        for (int i = 0; i <= until; i++) {
            int r = net->t[i].root;
            if (birth[r] < 0 || i < birth[r]) birth[r] = i;
            if (death[r] < i) death[r] = i;
            for (int k = 0; k < 2 && i > 0; k++) {
                int a = m->layers[i].in[k];
                if (a >= 0 && death[net->t[a].root] < i) death[net->t[a].root] = i;
            }
        }
        death[net->t[until].root] = until + 1;
        for (int i = 0; i <= until && !st; i++) {
            for (int r = 0; r <= until && !st; r++) {
                if (birth[r] != i || net->t[r].root != r) continue;
                rsize[r] = net->t[r].ss * batch;
                int best = -1;
                for (int k = 0; k < nfree; k++)
                    if (fsize[k] >= rsize[r] && (best < 0 || fsize[k] < fsize[best])) best = k;
                if (best >= 0) {
                    net->t[r].data = fbuf[best];
                    rsize[r] = fsize[best];
                    fbuf[best] = fbuf[nfree - 1], fsize[best] = fsize[nfree - 1], nfree--;
                } else {
                    net->t[r].data = net_alloc(ctx, net, rsize[r], "nn activations", &st);
                }
            }
            for (int r = 0; r <= until; r++)
                if (net->t[r].root == r && death[r] == i && birth[r] >= 0 && net->t[r].data)
                    fbuf[nfree] = net->t[r].data, fsize[nfree] = rsize[r], nfree++;
        }
    }
    if (st) goto cleanup;
    for (int i = 0; i <= until; i++) {
        tmd_nn_tensor *T = &net->t[i], *R = &net->t[T->root];
        T->data = R->data + T->off;
        if (training) T->grad = R->grad + T->off;
    }

    int64_t col_n = 2 * (int64_t)MAXF(h, 1) * w, scratch_n = 0;
    int maxc = 1;
    for (int i = 1; i <= until && !st; i++) {
        const tmd_nn_layer *L = &m->layers[i];
        int a = L->in[0];
        int64_t HW = (int64_t)hh[i] * ww[i];
        if (L->op == TMD_NN_OP_CONV) {
            int K = L->cin * L->k * L->k;
            if (L->k > 1) {
                col_n = MAXF(col_n, (int64_t)K * panel_pixels(K, hh[a], ww[a]));
            }
            net->flops += 2.0 * L->cout * K * HW * batch;
            if (!training && L->bn) {
                net->wfold[i] = net_alloc(ctx, net, L->w_n, "nn folded weights", &st);
                net->bfold[i] = net_alloc(ctx, net, L->cout, "nn folded biases", &st);
                if (st) break;
                int64_t per = L->w_n / L->cout;
                for (int o = 0; o < L->cout; o++) {
                    float s = L->gamma[o] / sqrtf(L->var[o] + TMD_NN_BN_EPS);
                    for (int64_t j = 0; j < per; j++) net->wfold[i][o * per + j] = L->w[o * per + j] * s;
                    net->bfold[i][o] = (L->b[o] - L->mean[o]) * s + L->beta[o];
                }
            }
            if (training && L->bn) {
                net->pre[i] = net_alloc(ctx, net, (int64_t)L->cout * HW * batch, "nn pre-activations", &st);
                net->bn_mean[i] = net_alloc(ctx, net, L->cout, "nn bn", &st);
                net->bn_istd[i] = net_alloc(ctx, net, L->cout, "nn bn", &st);
            }
            scratch_n = MAXF(scratch_n, (int64_t)L->cout * HW * batch);
            maxc = MAXF(maxc, L->cout);
        } else if (L->op == TMD_NN_OP_DENSE) {
            net->flops += 2.0 * L->cout * L->cin * batch;
            scratch_n = MAXF(scratch_n, (int64_t)L->cout * batch);
        } else if (L->op == TMD_NN_OP_DROPOUT && training && L->p > 0) {
            net->mask[i] = net_alloc(ctx, net, (int64_t)c[i] * HW * batch, "nn dropout mask", &st);
        }
        col_n = MAXF(col_n, 2 * (int64_t)hh[i] * ww[i] + 2 * ww[i] + 4);
    }
    net->col_n = col_n;
    net->col = net_alloc(ctx, net, col_n, "nn im2col panel", &st);
    if (training) {
        net->dcol = net_alloc(ctx, net, col_n, "nn im2col gradient panel", &st);
        net->scratch = net_alloc(ctx, net, scratch_n, "nn scratch", &st);
    }
    if (!st) st = tmd_calloc(ctx, (void **)&net->red, 4 * (size_t)maxc + 8, sizeof(double), "nn reductions");
cleanup:
    if (st) tmd_nn_net_free(net);
    return st;
}

/* ---- kernels ------------------------------------------------------------------------- */

/* col (C*9, p1-p0) <- 3x3 patches (dilation d, zero padding d) of x (C, H, W) for the
 * output pixels [p0, p1) in row-major order. Row index of col = (c*3 + ky)*3 + kx,
 * matching w (cout, C, 3, 3). */
static void im2col3(const float *x, int C, int H, int W, int d, int64_t p0, int64_t p1, float *col)
{
    int64_t P = p1 - p0;
    int ya = (int)(p0 / W), yb = (int)((p1 - 1) / W);
    for (int ch = 0; ch < C; ch++)
        for (int ky = 0; ky < 3; ky++)
            for (int kx = 0; kx < 3; kx++) {
                float *row = col + (((int64_t)ch * 3 + ky) * 3 + kx) * P;
                int dy = (ky - 1) * d, dx = (kx - 1) * d;
                for (int yy = ya; yy <= yb; yy++) {
                    int xa = yy == ya ? (int)(p0 % W) : 0, xb = yy == yb ? (int)((p1 - 1) % W) + 1 : W;
                    float *dst = row + ((int64_t)yy * W - p0); /* dst[x] for x in [xa, xb) */
                    int iy = yy + dy;
                    int xs = dx < 0 ? -dx : 0, xe = dx > 0 ? W - dx : W; /* valid x: 0 <= x+dx < W */
                    if (xs < xa) xs = xa;
                    if (xe > xb) xe = xb;
                    if (iy < 0 || iy >= H || xe <= xs) {
                        memset(dst + xa, 0, sizeof(float) * (xb - xa));
                        continue;
                    }
                    const float *src = x + ((int64_t)ch * H + iy) * W + dx;
                    if (xs > xa) memset(dst + xa, 0, sizeof(float) * (xs - xa));
                    memcpy(dst + xs, src + xs, sizeof(float) * (xe - xs));
                    if (xe < xb) memset(dst + xe, 0, sizeof(float) * (xb - xe));
                }
            }
}

/* dx (C, H, W) += transpose of im2col3 applied to dcol (pixels [p0, p1)). */
static void col2im3(const float *dcol, int C, int H, int W, int d, int64_t p0, int64_t p1, float *dx)
{
    int64_t P = p1 - p0;
    int ya = (int)(p0 / W), yb = (int)((p1 - 1) / W);
    for (int ch = 0; ch < C; ch++)
        for (int ky = 0; ky < 3; ky++)
            for (int kx = 0; kx < 3; kx++) {
                const float *row = dcol + (((int64_t)ch * 3 + ky) * 3 + kx) * P;
                int dy = (ky - 1) * d, dxo = (kx - 1) * d;
                for (int yy = ya; yy <= yb; yy++) {
                    int iy = yy + dy;
                    if (iy < 0 || iy >= H) continue;
                    int xa = yy == ya ? (int)(p0 % W) : 0, xb = yy == yb ? (int)((p1 - 1) % W) + 1 : W;
                    int xs = dxo < 0 ? -dxo : 0, xe = dxo > 0 ? W - dxo : W;
                    if (xs < xa) xs = xa;
                    if (xe > xb) xe = xb;
                    const float *src = row + ((int64_t)yy * W - p0);
                    float *dst = dx + ((int64_t)ch * H + iy) * W + dxo;
                    for (int xx = xs; xx < xe; xx++) dst[xx] += src[xx];
                }
            }
}

/* y (cout, H, W) = conv(x (cin, H, W), w (cout, cin, k, k)), no bias. */
static void conv_fwd(tmd_nn_net *net, const tmd_nn_layer *L, const float *wt, const float *x, int H, int W, float *y)
{
    int64_t HW = (int64_t)H * W;
    if (L->k == 1) {
        /* (cout, HW) = (cout, cin) x (cin, HW) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, L->cout, (int)HW, L->cin, 1.0f, wt, L->cin, x,
                    (int)HW, 0.0f, y, (int)HW);
        return;
    }
    int K = L->cin * 9;
    int64_t pp = panel_pixels(K, H, W);
    for (int64_t p0 = 0; p0 < HW; p0 += pp) {
        int64_t p1 = p0 + pp < HW ? p0 + pp : HW;
        int P = (int)(p1 - p0);
        im2col3(x, L->cin, H, W, L->dil, p0, p1, net->col); /* (K, P) */
        /* (cout, P) block of y (ld HW) = (cout, K) x (K, P) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, L->cout, P, K, 1.0f, wt, K, net->col, P, 0.0f, y + p0,
                    (int)HW);
    }
}

/* gw (cout, cin, k, k) += dy x col^T; dx (cin, H, W) += w^T dy (if dx). */
static void conv_bwd(tmd_nn_net *net, const tmd_nn_layer *L, const float *x, const float *dy, int H, int W, float *gw,
                     float *dx)
{
    int64_t HW = (int64_t)H * W;
    if (L->k == 1) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, L->cout, L->cin, (int)HW, 1.0f, dy, (int)HW, x, (int)HW,
                    1.0f, gw, L->cin);
        if (dx)
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, L->cin, (int)HW, L->cout, 1.0f, L->w, L->cin, dy,
                        (int)HW, 1.0f, dx, (int)HW);
        return;
    }
    int K = L->cin * 9;
    int64_t pp = panel_pixels(K, H, W);
    for (int64_t p0 = 0; p0 < HW; p0 += pp) {
        int64_t p1 = p0 + pp < HW ? p0 + pp : HW;
        int P = (int)(p1 - p0);
        im2col3(x, L->cin, H, W, L->dil, p0, p1, net->col);
        /* (cout, K) += (cout, P) x (P, K) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, L->cout, K, P, 1.0f, dy + p0, (int)HW, net->col, P, 1.0f,
                    gw, K);
        if (dx) {
            /* (K, P) = (K, cout) x (cout, P) */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K, P, L->cout, 1.0f, L->w, K, dy + p0, (int)HW, 0.0f,
                        net->dcol, P);
            col2im3(net->dcol, L->cin, H, W, L->dil, p0, p1, dx);
        }
    }
}

static inline float act_f(int act, float v, float slope)
{
    if (act == TMD_NN_ACT_RELU) return v > 0 ? v : 0;
    if (act == TMD_NN_ACT_LEAKY) return v > 0 ? v : slope * v;
    return v;
}

/* y = act(y + b[c]) per channel, in place over (C, HW). */
static void bias_act(float *y, const float *b, int C, int64_t HW, int act, float slope)
{
    for (int ch = 0; ch < C; ch++) {
        float *p = y + ch * HW, bb = b ? b[ch] : 0.0f;
        if (act == TMD_NN_ACT_LEAKY)
            for (int64_t j = 0; j < HW; j++) {
                float v = p[j] + bb;
                p[j] = v > 0 ? v : slope * v;
            }
        else if (act == TMD_NN_ACT_RELU)
            for (int64_t j = 0; j < HW; j++) {
                float v = p[j] + bb;
                p[j] = v > 0 ? v : 0;
            }
        else
            for (int64_t j = 0; j < HW; j++) p[j] += bb;
    }
}

static void maxpool_fwd(const float *x, int C, int H, int W, float *y)
{
    int Ho = H / 2, Wo = W / 2;
    for (int ch = 0; ch < C; ch++)
        for (int i = 0; i < Ho; i++) {
            const float *r0 = x + ((int64_t)ch * H + 2 * i) * W, *r1 = r0 + W;
            float *o = y + ((int64_t)ch * Ho + i) * Wo;
            for (int j = 0; j < Wo; j++) {
                float a = r0[2 * j] > r0[2 * j + 1] ? r0[2 * j] : r0[2 * j + 1];
                float b = r1[2 * j] > r1[2 * j + 1] ? r1[2 * j] : r1[2 * j + 1];
                o[j] = a > b ? a : b;
            }
        }
}

static void maxpool_bwd(const float *x, int C, int H, int W, const float *dy, float *dx)
{
    int Ho = H / 2, Wo = W / 2;
    for (int ch = 0; ch < C; ch++)
        for (int i = 0; i < Ho; i++) {
            const float *r0 = x + ((int64_t)ch * H + 2 * i) * W, *r1 = r0 + W;
            float *d0 = dx + ((int64_t)ch * H + 2 * i) * W, *d1 = d0 + W;
            const float *g = dy + ((int64_t)ch * Ho + i) * Wo;
            for (int j = 0; j < Wo; j++) {
                float v[4] = {r0[2 * j], r0[2 * j + 1], r1[2 * j], r1[2 * j + 1]};
                int k = 0;
                for (int q = 1; q < 4; q++)
                    if (v[q] > v[k]) k = q;
                float *t = k < 2 ? d0 + 2 * j + k : d1 + 2 * j + (k - 2);
                *t += g[j];
            }
        }
}

/* 2x bilinear, align_corners=False: output 2i <- 0.25 in[i-1] + 0.75 in[i], 2i+1 <- 0.75
 * in[i] + 0.25 in[i+1], indices clamped at the borders (as PyTorch). tmp: 2*Wo floats. */
static void upsample_fwd(const float *x, int C, int H, int W, float *y, float *tmp)
{
    int Ho = 2 * H, Wo = 2 * W;
    for (int ch = 0; ch < C; ch++) {
        const float *xc = x + (int64_t)ch * H * W;
        for (int oy = 0; oy < Ho; oy++) {
            int i = oy / 2, r0, r1;
            float w0, w1;
            if (oy % 2 == 0) r0 = i > 0 ? i - 1 : 0, r1 = i, w0 = 0.25f, w1 = 0.75f;
            else r0 = i, r1 = i + 1 < H ? i + 1 : H - 1, w0 = 0.75f, w1 = 0.25f;
            const float *a = xc + (int64_t)r0 * W, *b = xc + (int64_t)r1 * W;
            for (int j = 0; j < W; j++) tmp[j] = w0 * a[j] + w1 * b[j];
            float *o = y + ((int64_t)ch * Ho + oy) * Wo;
            for (int j = 0; j < W; j++) {
                float l = tmp[j > 0 ? j - 1 : 0], c = tmp[j], r = tmp[j + 1 < W ? j + 1 : W - 1];
                o[2 * j] = 0.25f * l + 0.75f * c;
                o[2 * j + 1] = 0.75f * c + 0.25f * r;
            }
        }
    }
}

static void upsample_bwd(const float *dy, int C, int H, int W, float *dx, float *tmp)
{
    int Ho = 2 * H, Wo = 2 * W;
    for (int ch = 0; ch < C; ch++) {
        float *dc = dx + (int64_t)ch * H * W;
        for (int oy = 0; oy < Ho; oy++) {
            int i = oy / 2, r0, r1;
            float w0, w1;
            if (oy % 2 == 0) r0 = i > 0 ? i - 1 : 0, r1 = i, w0 = 0.25f, w1 = 0.75f;
            else r0 = i, r1 = i + 1 < H ? i + 1 : H - 1, w0 = 0.75f, w1 = 0.25f;
            const float *g = dy + ((int64_t)ch * Ho + oy) * Wo;
            memset(tmp, 0, sizeof(float) * W);
            for (int j = 0; j < W; j++) {
                tmp[j > 0 ? j - 1 : 0] += 0.25f * g[2 * j];
                tmp[j] += 0.75f * g[2 * j] + 0.75f * g[2 * j + 1];
                tmp[j + 1 < W ? j + 1 : W - 1] += 0.25f * g[2 * j + 1];
            }
            float *a = dc + (int64_t)r0 * W, *b = dc + (int64_t)r1 * W;
            for (int j = 0; j < W; j++) a[j] += w0 * tmp[j];
            for (int j = 0; j < W; j++) b[j] += w1 * tmp[j];
        }
    }
}

/* softmax over channels per pixel; tmp: 2*HW floats. */
static void softmax_fwd(const float *x, int C, int64_t HW, float *y, float *tmp)
{
    float *mx = tmp, *sum = tmp + HW;
    memcpy(mx, x, sizeof(float) * HW);
    for (int ch = 1; ch < C; ch++)
        for (int64_t j = 0; j < HW; j++)
            if (x[ch * HW + j] > mx[j]) mx[j] = x[ch * HW + j];
    memset(sum, 0, sizeof(float) * HW);
    for (int ch = 0; ch < C; ch++)
        for (int64_t j = 0; j < HW; j++) {
            float e = expf(x[ch * HW + j] - mx[j]);
            y[ch * HW + j] = e;
            sum[j] += e;
        }
    for (int64_t j = 0; j < HW; j++) sum[j] = 1.0f / sum[j];
    for (int ch = 0; ch < C; ch++)
        for (int64_t j = 0; j < HW; j++) y[ch * HW + j] *= sum[j];
}

static float dropout_mask(uint64_t seed, int64_t sample, int64_t j, float p)
{
    uint64_t h = tmd_nn_hash(seed ^ tmd_nn_hash((uint64_t)sample * 0x100000001b3ULL + (uint64_t)j));
    double u = (h >> 11) * (1.0 / 9007199254740992.0);
    return u < p ? 0.0f : 1.0f / (1.0f - p);
}

static double cpu_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static int reduce_sum(tmd_nn_net *net, double *v, int n)
{
    if (net->comm == MPI_COMM_NULL) return MPI_SUCCESS;
    return MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_DOUBLE, MPI_SUM, net->comm);
}

/* ---- forward / backward ------------------------------------------------------------- */

int tmd_nn_net_forward(tmd_nn_net *net, int n, const float *in)
{
    const tmd_nn_model *m = net->m;
    tmd_nn_tensor *T = net->t;
    int64_t in_n = (int64_t)T[0].c * T[0].h * T[0].w;
    for (int s = 0; s < n; s++) memcpy(T[0].data + s * T[0].ss, in + s * in_n, sizeof(float) * in_n);
    for (int i = 1; i <= net->until; i++) {
        const tmd_nn_layer *L = &m->layers[i];
        tmd_nn_tensor *X = &T[L->in[0]], *Y = &T[i];
        int64_t HW = (int64_t)Y->h * Y->w, XN = (int64_t)X->c * X->h * X->w;
        double t0 = net->profile ? cpu_seconds() : 0;
        switch (L->op) {
        case TMD_NN_OP_CONV: {
            const float *wt = net->wfold[i] ? net->wfold[i] : L->w;
            const float *b = net->bfold[i] ? net->bfold[i] : L->b;
            int train_bn = net->training && L->bn;
            for (int s = 0; s < n; s++) {
                float *y = train_bn ? net->pre[i] + s * (int64_t)L->cout * HW : Y->data + s * Y->ss;
                conv_fwd(net, L, wt, X->data + s * X->ss, X->h, X->w, y);
                if (!train_bn) bias_act(y, b, L->cout, HW, L->act, m->slope);
                else bias_act(y, b, L->cout, HW, TMD_NN_ACT_NONE, 0);
            }
            if (train_bn) {
                double *sum = net->red, *sq = net->red + L->cout;
                memset(net->red, 0, sizeof(double) * 2 * L->cout);
                for (int s = 0; s < n; s++)
                    for (int ch = 0; ch < L->cout; ch++) {
                        const float *p = net->pre[i] + (s * (int64_t)L->cout + ch) * HW;
                        double a = 0, q = 0;
                        for (int64_t j = 0; j < HW; j++) a += p[j], q += (double)p[j] * p[j];
                        sum[ch] += a, sq[ch] += q;
                    }
                int rc = reduce_sum(net, net->red, 2 * L->cout);
                if (rc != MPI_SUCCESS) return rc;
                double M = (double)(net->bn_count > 0 ? net->bn_count : n) * HW;
                for (int ch = 0; ch < L->cout; ch++) {
                    double mean = sum[ch] / M, var = sq[ch] / M - mean * mean;
                    if (var < 0) var = 0;
                    net->bn_mean[i][ch] = (float)mean;
                    net->bn_istd[i][ch] = (float)(1.0 / sqrt(var + TMD_NN_BN_EPS));
                    L->mean[ch] = (1 - TMD_NN_BN_MOMENTUM) * L->mean[ch] + TMD_NN_BN_MOMENTUM * (float)mean;
                    L->var[ch] = (1 - TMD_NN_BN_MOMENTUM) * L->var[ch] +
                                 TMD_NN_BN_MOMENTUM * (float)(M > 1 ? var * M / (M - 1) : var);
                }
                for (int s = 0; s < n; s++)
                    for (int ch = 0; ch < L->cout; ch++) {
                        const float *p = net->pre[i] + (s * (int64_t)L->cout + ch) * HW;
                        float *y = Y->data + s * Y->ss + ch * HW;
                        float mu = net->bn_mean[i][ch], is = net->bn_istd[i][ch], g = L->gamma[ch], be = L->beta[ch];
                        for (int64_t j = 0; j < HW; j++) y[j] = act_f(L->act, g * (p[j] - mu) * is + be, m->slope);
                    }
            }
            break;
        }
        case TMD_NN_OP_DENSE: {
            /* (n, cout) = (n, K) x (cout, K)^T */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, L->cout, L->cin, 1.0f, X->data, (int)X->ss, L->w,
                        L->cin, 0.0f, Y->data, (int)Y->ss);
            for (int s = 0; s < n; s++) bias_act(Y->data + s * Y->ss, L->b, L->cout, 1, L->act, m->slope);
            break;
        }
        case TMD_NN_OP_MAXPOOL:
            for (int s = 0; s < n; s++) maxpool_fwd(X->data + s * X->ss, X->c, X->h, X->w, Y->data + s * Y->ss);
            break;
        case TMD_NN_OP_UPSAMPLE:
            for (int s = 0; s < n; s++) upsample_fwd(X->data + s * X->ss, X->c, X->h, X->w, Y->data + s * Y->ss, net->col);
            break;
        case TMD_NN_OP_SUM: {
            tmd_nn_tensor *B = &T[L->in[1]];
            for (int s = 0; s < n; s++) {
                const float *a = X->data + s * X->ss, *b = B->data + s * B->ss;
                float *y = Y->data + s * Y->ss;
                for (int64_t j = 0; j < XN; j++) y[j] = a[j] + b[j];
            }
            break;
        }
        case TMD_NN_OP_SOFTMAX:
            for (int s = 0; s < n; s++) softmax_fwd(X->data + s * X->ss, X->c, HW, Y->data + s * Y->ss, net->col);
            break;
        case TMD_NN_OP_DROPOUT:
            if (net->mask[i])
                for (int s = 0; s < n; s++) {
                    float *mk = net->mask[i] + s * XN, *y = Y->data + s * Y->ss;
                    const float *x = X->data + s * X->ss;
                    for (int64_t j = 0; j < XN; j++) {
                        mk[j] = dropout_mask(net->seed ^ (uint64_t)i * 0x9e37ULL, net->first_index + s, j, L->p);
                        y[j] = x[j] * mk[j];
                    }
                }
            break;
        default: break; /* concat, reshape: views */
        }
        if (net->profile) net->prof_s[i] += cpu_seconds() - t0;
    }
    return MPI_SUCCESS;
}

/* Offset of layer i's parameters in the flat parameter array. */
static int64_t param_off(const tmd_nn_model *m, const float *p) { return p - m->params; }

int tmd_nn_net_backward(tmd_nn_net *net, int n, float *g)
{
    const tmd_nn_model *m = net->m;
    tmd_nn_tensor *T = net->t;
    for (int i = net->until; i >= 1; i--) {
        const tmd_nn_layer *L = &m->layers[i];
        int a = L->in[0];
        tmd_nn_tensor *X = &T[a], *Y = &T[i];
        int64_t HW = (int64_t)Y->h * Y->w, XN = (int64_t)X->c * X->h * X->w;
        int need_dx = a != 0;
        switch (L->op) {
        case TMD_NN_OP_CONV:
        case TMD_NN_OP_DENSE: {
            int dense = L->op == TMD_NN_OP_DENSE;
            int64_t per = dense ? L->cout : L->cout * HW; /* dz sample size */
            float *dz = net->scratch;                     /* (n, cout, HW) */
            for (int s = 0; s < n; s++) {
                const float *gy = Y->grad + s * Y->ss, *y = Y->data + s * Y->ss;
                float *d = dz + s * per;
                if (L->act == TMD_NN_ACT_NONE) memcpy(d, gy, sizeof(float) * per);
                else {
                    float sl = L->act == TMD_NN_ACT_LEAKY ? m->slope : 0.0f;
                    for (int64_t j = 0; j < per; j++) d[j] = y[j] > 0 ? gy[j] : sl * gy[j];
                }
            }
            float *gw = g + param_off(m, L->w), *gb = g + param_off(m, L->b);
            if (L->bn && !dense) {
                double *sd = net->red, *sdx = net->red + L->cout;
                memset(net->red, 0, sizeof(double) * 2 * L->cout);
                for (int s = 0; s < n; s++)
                    for (int ch = 0; ch < L->cout; ch++) {
                        const float *p = net->pre[i] + (s * (int64_t)L->cout + ch) * HW, *d = dz + s * per + ch * HW;
                        float mu = net->bn_mean[i][ch], is = net->bn_istd[i][ch];
                        double a1 = 0, a2 = 0;
                        for (int64_t j = 0; j < HW; j++) a1 += d[j], a2 += (double)d[j] * (p[j] - mu) * is;
                        sd[ch] += a1, sdx[ch] += a2;
                    }
                int rc = reduce_sum(net, net->red, 2 * L->cout);
                if (rc != MPI_SUCCESS) return rc;
                /* gamma/beta gradients: summed over ranks here already, so only rank-local
                 * share is added: divide by nranks is avoided by adding on rank 0 only */
                int rank0 = 1;
                if (net->comm != MPI_COMM_NULL) {
                    int r;
                    MPI_Comm_rank(net->comm, &r);
                    rank0 = r == 0;
                }
                float *gg = g + param_off(m, L->gamma), *gbe = g + param_off(m, L->beta);
                if (rank0)
                    for (int ch = 0; ch < L->cout; ch++) gg[ch] += (float)sdx[ch], gbe[ch] += (float)sd[ch];
                double M = (double)(net->bn_count > 0 ? net->bn_count : n) * HW;
                for (int s = 0; s < n; s++)
                    for (int ch = 0; ch < L->cout; ch++) {
                        const float *p = net->pre[i] + (s * (int64_t)L->cout + ch) * HW;
                        float *d = dz + s * per + ch * HW;
                        float mu = net->bn_mean[i][ch], is = net->bn_istd[i][ch], gm = L->gamma[ch];
                        float m1 = (float)(sd[ch] / M), m2 = (float)(sdx[ch] / M);
                        for (int64_t j = 0; j < HW; j++) {
                            float xh = (p[j] - mu) * is;
                            d[j] = gm * is * (d[j] - m1 - xh * m2);
                        }
                    }
            }
            for (int s = 0; s < n; s++)
                for (int ch = 0; ch < L->cout; ch++) {
                    const float *d = dz + s * per + (dense ? ch : ch * HW);
                    double acc = 0;
                    for (int64_t j = 0; j < (dense ? 1 : HW); j++) acc += d[j];
                    gb[ch] += (float)acc;
                }
            if (dense) {
                /* (cout, K) += dz^T (cout, n) x (n, K) */
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, L->cout, L->cin, n, 1.0f, dz, L->cout, X->data,
                            (int)X->ss, 1.0f, gw, L->cin);
                if (need_dx)
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, L->cin, L->cout, 1.0f, dz, L->cout, L->w,
                                L->cin, 1.0f, X->grad, (int)X->ss);
            } else {
                for (int s = 0; s < n; s++)
                    conv_bwd(net, L, X->data + s * X->ss, dz + s * per, X->h, X->w, gw,
                             need_dx ? X->grad + s * X->ss : NULL);
            }
            break;
        }
        case TMD_NN_OP_MAXPOOL:
            if (need_dx)
                for (int s = 0; s < n; s++)
                    maxpool_bwd(X->data + s * X->ss, X->c, X->h, X->w, Y->grad + s * Y->ss, X->grad + s * X->ss);
            break;
        case TMD_NN_OP_UPSAMPLE:
            if (need_dx)
                for (int s = 0; s < n; s++)
                    upsample_bwd(Y->grad + s * Y->ss, X->c, X->h, X->w, X->grad + s * X->ss, net->col);
            break;
        case TMD_NN_OP_SUM: {
            tmd_nn_tensor *B = &T[L->in[1]];
            for (int s = 0; s < n; s++) {
                const float *gy = Y->grad + s * Y->ss;
                float *ga = X->grad + s * X->ss, *gbb = B->grad + s * B->ss;
                if (need_dx)
                    for (int64_t j = 0; j < XN; j++) ga[j] += gy[j];
                if (L->in[1] != 0)
                    for (int64_t j = 0; j < XN; j++) gbb[j] += gy[j];
            }
            break;
        }
        case TMD_NN_OP_DROPOUT:
            if (net->mask[i] && need_dx)
                for (int s = 0; s < n; s++) {
                    const float *mk = net->mask[i] + s * XN, *gy = Y->grad + s * Y->ss;
                    float *gx = X->grad + s * X->ss;
                    for (int64_t j = 0; j < XN; j++) gx[j] += gy[j] * mk[j];
                }
            break;
        case TMD_NN_OP_SOFTMAX:
            if (need_dx)
                for (int s = 0; s < n; s++) {
                    const float *p = Y->data + s * Y->ss, *gy = Y->grad + s * Y->ss;
                    float *gx = X->grad + s * X->ss;
                    for (int64_t j = 0; j < HW; j++) {
                        double dot = 0;
                        for (int ch = 0; ch < Y->c; ch++) dot += (double)p[ch * HW + j] * gy[ch * HW + j];
                        for (int ch = 0; ch < Y->c; ch++) gx[ch * HW + j] += p[ch * HW + j] * (gy[ch * HW + j] - (float)dot);
                    }
                }
            break;
        default: break; /* concat, reshape, alias dropout: gradients share memory */
        }
    }
    return MPI_SUCCESS;
}

/* ---- plans ------------------------------------------------------------------------- */

struct tmd_nn_plan {
    tmd_nn_net net;
};

tmd_status tmd_nn_plan_create_ex(tmd_ctx *ctx, const tmd_nn_model *m, int batch, int height, int width, int until,
                                 tmd_nn_plan **out)
{
    tmd_nn_plan *p = NULL;
    *out = NULL;
    TMD_CHECK(tmd_calloc(ctx, (void **)&p, 1, sizeof *p, "nn plan"));
    tmd_status st = tmd_nn_net_init(ctx, &p->net, m, batch, height, width, until, 0);
    if (st) {
        free(p);
        return st;
    }
    *out = p;
    return TMD_OK;
}

tmd_status tmd_nn_plan_create(tmd_ctx *ctx, const tmd_nn_model *m, int height, int width, tmd_nn_plan **out)
{
    return tmd_nn_plan_create_ex(ctx, m, 1, height, width, -1, out);
}

tmd_status tmd_nn_execute_n(tmd_nn_plan *p, int n, const float *in, float *out)
{
    if (!p || !in || !out || n < 0 || n > p->net.batch) return TMD_ERR_ARG;
    tmd_nn_net *net = &p->net;
    tmd_nn_tensor *Y = &net->t[net->until];
    tmd_nn_net_forward(net, n, in);
    int64_t on = (int64_t)Y->c * Y->h * Y->w;
    for (int s = 0; s < n; s++) memcpy(out + s * on, Y->data + s * Y->ss, sizeof(float) * on);
    return TMD_OK;
}

tmd_status tmd_nn_execute(tmd_nn_plan *p, const float *in, float *out)
{
    return tmd_nn_execute_n(p, p ? p->net.batch : 0, in, out);
}

void tmd_nn_plan_out_shape(const tmd_nn_plan *p, int *c, int *h, int *w)
{
    const tmd_nn_tensor *Y = &p->net.t[p->net.until];
    if (c) *c = Y->c;
    if (h) *h = Y->h;
    if (w) *w = Y->w;
}

int64_t tmd_nn_plan_bytes(const tmd_nn_plan *p) { return p ? p->net.bytes : 0; }
double tmd_nn_plan_flops(const tmd_nn_plan *p) { return p ? p->net.flops : 0; }

void tmd_nn_plan_destroy(tmd_nn_plan **pp)
{
    if (!pp || !*pp) return;
    tmd_nn_net_free(&(*pp)->net);
    free(*pp);
    *pp = NULL;
}
