/* nn training: losses (class-weighted cross-entropy on logits, MSE), data-parallel
 * gradient reduction over a communicator, Adam. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nn/nn_internal.h"

struct tmd_nn_trainer {
    tmd_ctx *ctx;
    tmd_nn_model *m;
    tmd_nn_net net;
    int ce;              /* 1: cross-entropy on the softmax's input; 0: MSE on the output */
    int ncls;
    float cw[256];       /* class weights */
    float *grad;         /* (n_params) */
    float *am, *av;      /* Adam moments (n_params) */
    int64_t steps;
    tmd_nn_adam opt;
};

tmd_status tmd_nn_trainer_create(tmd_ctx *ctx, tmd_nn_model *m, MPI_Comm comm, int local_batch, int height, int width,
                                 const tmd_nn_adam *opt, tmd_nn_trainer **out)
{
    tmd_nn_trainer *t = NULL;
    tmd_status st = TMD_OK;
    *out = NULL;
    if (!m || !m->params || local_batch < 1) return TMD_FAIL(ctx, TMD_ERR_ARG, "nn trainer: no model or batch < 1");
    TMD_CHECK(tmd_calloc(ctx, (void **)&t, 1, sizeof *t, "nn trainer"));
    t->ctx = ctx;
    t->m = m;
    t->net.comm = MPI_COMM_NULL;
    int last = m->n_layers - 1;
    t->ce = m->layers[last].op == TMD_NN_OP_SOFTMAX;
    int until = t->ce ? m->layers[last].in[0] : last;
    if ((st = tmd_nn_net_init(ctx, &t->net, m, local_batch, height, width, until, 1))) goto cleanup;
    t->ncls = t->net.t[until].c;
    if (t->ce && t->ncls > 256) {
        st = TMD_FAIL(ctx, TMD_ERR_ARG, "nn trainer: %d classes (max 256)", t->ncls);
        goto cleanup;
    }
    for (int i = 0; i < 256; i++) t->cw[i] = 1.0f;
    if (comm != MPI_COMM_NULL && (st = TMD_MPI(ctx, MPI_Comm_dup(comm, &t->net.comm)))) goto cleanup;
    if ((st = tmd_calloc(ctx, (void **)&t->grad, (size_t)m->n_params, sizeof(float), "nn gradients")) ||
        (st = tmd_calloc(ctx, (void **)&t->am, (size_t)m->n_params, sizeof(float), "nn Adam m")) ||
        (st = tmd_calloc(ctx, (void **)&t->av, (size_t)m->n_params, sizeof(float), "nn Adam v")))
        goto cleanup;
    if (opt) t->opt = *opt;
    else t->opt = (tmd_nn_adam){1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f};
cleanup:
    if (st) tmd_nn_trainer_destroy(&t);
    *out = t;
    return st;
}

void tmd_nn_trainer_destroy(tmd_nn_trainer **tp)
{
    if (!tp || !*tp) return;
    tmd_nn_trainer *t = *tp;
    tmd_nn_net_free(&t->net);
    free(t->grad);
    free(t->am);
    free(t->av);
    free(t);
    *tp = NULL;
}

tmd_status tmd_nn_trainer_set_class_weights(tmd_nn_trainer *t, const float *w, int n)
{
    if (!t || !w || n != t->ncls) return TMD_ERR_ARG;
    for (int i = 0; i < n; i++) t->cw[i] = w[i];
    return TMD_OK;
}

void tmd_nn_trainer_set_lr(tmd_nn_trainer *t, float lr) { t->opt.lr = lr; }
const float *tmd_nn_trainer_grads(const tmd_nn_trainer *t) { return t->grad; }
void tmd_nn_trainer_adam_state(tmd_nn_trainer *t, float **m, float **v, int64_t *n, int64_t **steps)
{
    if (m) *m = t->am;
    if (v) *v = t->av;
    if (n) *n = t->m->n_params;
    if (steps) *steps = &t->steps;
}

tmd_status tmd_nn_trainer_grad(tmd_nn_trainer *t, int n_local, int n_global, int64_t first_index, uint64_t step,
                               const float *in, const uint8_t *labels, const float *target, double *loss)
{
    tmd_ctx *ctx = t->ctx;
    tmd_nn_net *net = &t->net;
    tmd_status st = TMD_OK;
    if (n_local < 0 || n_local > net->batch || n_global < 1)
        return TMD_FAIL(ctx, TMD_ERR_ARG, "nn trainer: batch %d/%d outside 0..%d", n_local, n_global, net->batch);
    if (t->ce ? !labels : !target)
        return TMD_FAIL(ctx, TMD_ERR_ARG, "nn trainer: %s needed for this model", t->ce ? "labels" : "targets");
    net->bn_count = n_global;
    net->seed = tmd_nn_hash(step + 0x1234567ULL);
    net->first_index = first_index;
    int rc = tmd_nn_net_forward(net, n_local, in);
    if (rc != MPI_SUCCESS) return TMD_FAIL(ctx, TMD_ERR_MPI, "nn trainer: batch-norm reduction failed");
    /* zero gradients of every buffer */
    for (int i = 0; i <= net->until; i++)
        if (net->t[i].root == i) memset(net->t[i].grad, 0, sizeof(float) * (size_t)(net->t[i].ss * net->batch));
    memset(t->grad, 0, sizeof(float) * (size_t)t->m->n_params);
    /* loss and its gradient at the last executed layer */
    tmd_nn_tensor *Y = &net->t[net->until];
    int64_t HW = (int64_t)Y->h * Y->w;
    double norm = 1.0 / ((double)n_global * HW), lsum = 0;
    if (t->ce) {
        int C = Y->c;
        for (int s = 0; s < n_local; s++) {
            const float *z = Y->data + s * Y->ss;
            float *g = Y->grad + s * Y->ss;
            const uint8_t *lab = labels + s * HW;
            for (int64_t j = 0; j < HW; j++) {
                int y = lab[j];
                if (y >= C) {
                    st = TMD_FAIL(ctx, TMD_ERR_ARG, "nn trainer: label %d >= %d classes", y, C);
                    goto done;
                }
                float mx = z[j];
                for (int c = 1; c < C; c++) mx = z[c * HW + j] > mx ? z[c * HW + j] : mx;
                double se = 0;
                for (int c = 0; c < C; c++) se += exp((double)z[c * HW + j] - mx);
                double w = t->cw[y] * norm;
                lsum += t->cw[y] * (log(se) - ((double)z[y * HW + j] - mx));
                for (int c = 0; c < C; c++) {
                    double p = exp((double)z[c * HW + j] - mx) / se;
                    g[c * HW + j] = (float)(w * (p - (c == y)));
                }
            }
        }
    } else {
        int64_t N = (int64_t)Y->c * HW;
        norm = 1.0 / ((double)n_global * N);
        for (int s = 0; s < n_local; s++) {
            const float *z = Y->data + s * Y->ss, *tg = target + s * N;
            float *g = Y->grad + s * Y->ss;
            for (int64_t j = 0; j < N; j++) {
                double d = (double)z[j] - tg[j];
                lsum += d * d;
                g[j] = (float)(2 * d * norm);
            }
        }
    }
    lsum *= norm;
    rc = tmd_nn_net_backward(net, n_local, t->grad);
    if (rc == MPI_SUCCESS && net->comm != MPI_COMM_NULL) {
        rc = MPI_Allreduce(MPI_IN_PLACE, t->grad, (int)t->m->n_params, MPI_FLOAT, MPI_SUM, net->comm);
        if (rc == MPI_SUCCESS) rc = MPI_Allreduce(MPI_IN_PLACE, &lsum, 1, MPI_DOUBLE, MPI_SUM, net->comm);
    }
    if (rc != MPI_SUCCESS) st = TMD_FAIL(ctx, TMD_ERR_MPI, "nn trainer: gradient reduction failed");
done:
    if (loss) *loss = lsum;
    return st;
}

void tmd_nn_trainer_update(tmd_nn_trainer *t)
{
    tmd_nn_adam *o = &t->opt;
    t->steps++;
    double b1 = 1 - pow(o->beta1, (double)t->steps), b2 = 1 - pow(o->beta2, (double)t->steps);
    float a = (float)(o->lr * sqrt(b2) / b1);
    float *p = t->m->params;
    for (int64_t j = 0; j < t->m->n_params; j++) {
        float g = t->grad[j] + o->weight_decay * p[j];
        t->am[j] = o->beta1 * t->am[j] + (1 - o->beta1) * g;
        t->av[j] = o->beta2 * t->av[j] + (1 - o->beta2) * g * g;
        p[j] -= a * t->am[j] / (sqrtf(t->av[j]) + o->eps);
    }
}

tmd_status tmd_nn_trainer_step(tmd_nn_trainer *t, int n_local, int n_global, int64_t first_index, uint64_t step,
                               const float *in, const uint8_t *labels, const float *target, double *loss)
{
    TMD_CHECK(tmd_nn_trainer_grad(t, n_local, n_global, first_index, step, in, labels, target, loss));
    tmd_nn_trainer_update(t);
    return TMD_OK;
}
