/* Private structures of the nn module: the model graph, the executable net (shared by
 * inference plans and trainers) and the kernels. */
#ifndef TMD_NN_INTERNAL_H
#define TMD_NN_INTERNAL_H

#include <stdint.h>

#include "tmd/nn.h"

enum {
    TMD_NN_OP_INPUT = 0,
    TMD_NN_OP_CONV = 1,
    TMD_NN_OP_MAXPOOL = 2,
    TMD_NN_OP_UPSAMPLE = 3,
    TMD_NN_OP_CONCAT = 4,
    TMD_NN_OP_SUM = 5,
    TMD_NN_OP_DENSE = 6,
    TMD_NN_OP_DROPOUT = 7,
    TMD_NN_OP_RESHAPE = 8,
    TMD_NN_OP_SOFTMAX = 9,
    TMD_NN_OP_COUNT
};

#define TMD_NN_MAX_LAYERS 128
#define TMD_NN_BN_EPS 1e-5f
#define TMD_NN_BN_MOMENTUM 0.1f

typedef struct tmd_nn_layer {
    int op;
    int in[2];          /* input layer indices (-1 unused) */
    int cout;           /* conv/dense output channels */
    int k, dil;         /* conv kernel (1 or 3) and dilation */
    int bn, act;        /* batch norm flag, TMD_NN_ACT_* */
    float p;            /* dropout probability */
    int rc, rh, rw;     /* reshape target */
    /* shape of this layer's output for the model's reference input (computed by
     * tmd_nn_model_shapes for a given H, W) */
    int cin;            /* input channels (flattened input length for dense) */
    /* parameters: pointers into the model's flat arrays (NULL when absent) */
    float *w;           /* conv (cout, cin, k, k); dense (cout, cin) */
    float *b;           /* (cout) */
    float *gamma, *beta;/* (cout) BN affine */
    float *mean, *var;  /* (cout) BN running statistics */
    int64_t w_n;        /* elements of w */
} tmd_nn_layer;

struct tmd_nn_model {
    char kind[32];
    int in_channels;
    int input_size;     /* fixed H = W for dense models, 0 = any */
    int n_layers;       /* including the input layer 0 */
    int latent;         /* latent layer (-1) */
    float slope;        /* LeakyReLU slope */
    tmd_nn_layer layers[TMD_NN_MAX_LAYERS];
    float *params;      /* trainables, flat */
    int64_t n_params;
    float *stats;       /* BN running mean/var, flat */
    int64_t n_stats;
    char *provenance;
};

/* Output shape of every layer for input (in_channels, h, w); returns 0 or an error message
 * written to err. c/hh/ww arrays of n_layers. */
int tmd_nn_shapes(const tmd_nn_model *m, int h, int w, int *c, int *hh, int *ww, char *err,
                  size_t errlen);
/* (Re)assigns the layer parameter pointers into params/stats, allocating them. Model
 * layer cin must be set (tmd_nn_shapes at the model's reference size). */
tmd_status tmd_nn_model_alloc_params(tmd_ctx *ctx, tmd_nn_model *m);

/* One tensor of the net: (N, c, h, w) with per-sample stride `ss` floats; data may be a
 * view into another tensor (concat members, reshape/dropout aliases). */
typedef struct tmd_nn_tensor {
    int c, h, w;
    int64_t ss;         /* floats between samples */
    float *data;        /* sample 0 */
    float *grad;        /* same layout (training) */
    int root;           /* layer owning the memory */
    int64_t off;        /* offset of this view within the root's sample */
} tmd_nn_tensor;

typedef struct tmd_nn_net {
    const tmd_nn_model *m;
    int batch, h, w;
    int until;          /* last layer executed */
    int training;
    tmd_nn_tensor t[TMD_NN_MAX_LAYERS];
    float *wfold[TMD_NN_MAX_LAYERS]; /* inference: BN-folded conv weights (or NULL) */
    float *bfold[TMD_NN_MAX_LAYERS];
    float *pre[TMD_NN_MAX_LAYERS];   /* training: pre-BN conv output (N, cout, h, w) */
    float *mask[TMD_NN_MAX_LAYERS];  /* training: dropout masks */
    float *bn_mean[TMD_NN_MAX_LAYERS], *bn_istd[TMD_NN_MAX_LAYERS]; /* batch statistics */
    float *col, *dcol;  /* im2col panels */
    int64_t col_n;      /* floats per panel buffer */
    float *scratch;     /* training: dz (max N*c*h*w over layers) */
    double *red;        /* reduction scratch (4 * max cout doubles) */
    int64_t bytes;
    double flops;
    MPI_Comm comm;      /* training BN reduction (MPI_COMM_NULL: none) */
    int64_t bn_count;   /* global samples (training BN) */
    uint64_t seed;      /* dropout */
    int64_t first_index;
    int profile;        /* $TMDFLOW_NN_PROFILE: per-layer CPU time, printed at destroy */
    double prof_s[TMD_NN_MAX_LAYERS];
    float *allocs[4 * TMD_NN_MAX_LAYERS];
    int n_allocs;
} tmd_nn_net;

tmd_status tmd_nn_net_init(tmd_ctx *ctx, tmd_nn_net *net, const tmd_nn_model *m, int batch,
                           int h, int w, int until, int training);
void tmd_nn_net_free(tmd_nn_net *net);
/* Forward on n samples; input copied into layer 0. Returns 0 or an MPI error code. */
int tmd_nn_net_forward(tmd_nn_net *net, int n, const float *in);
/* Backward from net->t[until].grad (already set); accumulates parameter gradients into
 * g (flat, model layout). */
int tmd_nn_net_backward(tmd_nn_net *net, int n, float *g);

/* Box-Muller normal from a 64-bit state (splitmix64). */
double tmd_nn_randn(uint64_t *state);
uint64_t tmd_nn_hash(uint64_t x);

#endif
