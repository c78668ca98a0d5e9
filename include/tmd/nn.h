/* tmd/nn.h — the neural-network engine: float32 CNN inference and training on OpenBLAS.
 *
 * Role: tmdflow runs its own networks (U-Net segmentation, atom-patch classifier,
 * autoencoder) in C. A model is a small directed graph of layers (3x3 / 1x1 convolution
 * with dilation, batch norm, ReLU / LeakyReLU, 2x2 max-pool, 2x bilinear upsampling with
 * PyTorch align_corners=False semantics, channel concatenation, sum, dense, softmax,
 * dropout, reshape), loaded from / saved to HDF5. Inference follows "plan once, execute
 * many": a plan for a model and an input size folds batch norm into the convolutions and
 * allocates every buffer; executing it allocates nothing. Convolutions are im2col in
 * cache-sized row panels + cblas_sgemm (1x1 convolutions call sgemm directly).
 *
 * Usage (inference, e.g. the segmentation stage):
 *     tmd_nn_model *m = NULL; tmd_nn_plan *p = NULL;
 *     TMD_CHECK(tmd_nn_model_load(ctx, "inputs/models/unet.h5", &m));
 *     int mult = tmd_nn_model_multiple(m);          // 8: H, W must be multiples of it
 *     int reach = tmd_nn_model_reach(m);            // receptive-field radius (pixels)
 *     TMD_CHECK(tmd_nn_plan_create(ctx, m, 512, 512, &p));
 *     for each tile: tmd_nn_execute(p, img, prob);  // img (1,512,512) -> prob (6,512,512)
 *     tmd_nn_plan_destroy(&p); tmd_nn_model_free(&m);
 *
 * Data layout: every tensor is float32, row-major CHW (channel, row, column), contiguous;
 * a batch is N consecutive CHW tensors (NCHW). Input of the shipped models: one channel,
 * the image normalised so that the robust low/high percentiles map to 0 and 1 (what
 * tmd_sim_training_tile produces), at the nominal pixel size (0.12 A/px). U-Net output:
 * 6 softmax probabilities per pixel (DESIGN.md classes). Classifier: patch (1,P,P) -> 8
 * probabilities (Mo W S2 SSe Se2 S Se empty). Autoencoder: patch (1,P,P) -> reconstruction;
 * its encoder plan (tmd_nn_plan_create_ex with tmd_nn_model_latent_layer) -> latent (D).
 *
 * Threads and ranks: nothing here is collective except the trainer (tmd_nn_trainer_*),
 * which is collective over the communicator given to tmd_nn_trainer_create. A plan may be
 * used by one thread at a time; BLAS threads follow OpenBLAS (set 1 per rank).
 *
 * Ownership: tmd_nn_model_* / tmd_nn_plan_* / tmd_nn_trainer_* objects are freed by their
 * _free / _destroy functions, which accept NULL and clear the handle. A plan and a trainer
 * point at the model: free the model last. Callers own the in/out arrays.
 */
#ifndef TMD_NN_H
#define TMD_NN_H

#include <stdint.h>

#include "tmd/core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tmd_nn_model tmd_nn_model;
typedef struct tmd_nn_plan tmd_nn_plan;
typedef struct tmd_nn_trainer tmd_nn_trainer;

/* ---- model files ------------------------------------------------------------------ */

/* Reads a model file (HDF5, serial; every rank may call it). Checks the format tag, every
 * layer's attributes and every weight dataset's shape; refuses a malformed file with a
 * message naming the file and the layer. */
tmd_status tmd_nn_model_load(tmd_ctx *ctx, const char *path, tmd_nn_model **out);

/* Writes the model (architecture as attributes of /layers/NNN, weights as datasets) with
 * the provenance text (JSON: command, seeds, version, validation scores; may be NULL).
 * Writes to path.tmp and renames, so a crash never leaves a half-written model. Serial:
 * call it on one rank. */
tmd_status tmd_nn_model_save(tmd_ctx *ctx, const tmd_nn_model *m, const char *path,
                             const char *provenance_json);

void tmd_nn_model_free(tmd_nn_model **m);

/* Receptive-field radius in input pixels (a conservative upper bound): an output pixel
 * depends only on inputs within this distance, so a tile halo of this width makes tiled
 * inference equal to whole-image inference. */
int tmd_nn_model_reach(const tmd_nn_model *m);
/* Input H and W must be multiples of this (2^pools; 8 for the U-Net). */
int tmd_nn_model_multiple(const tmd_nn_model *m);
/* "unet", "classifier", "autoencoder" or "custom". */
const char *tmd_nn_model_kind(const tmd_nn_model *m);
int tmd_nn_model_in_channels(const tmd_nn_model *m);
/* Fixed input size for models with dense layers (classifier, autoencoder); 0 = any. */
int tmd_nn_model_input_size(const tmd_nn_model *m);
/* Output channels of the last layer (6 U-Net, 8 classifier). */
int tmd_nn_model_out_channels(const tmd_nn_model *m);
/* Index of the latent (bottleneck) layer of an autoencoder, -1 if none. */
int tmd_nn_model_latent_layer(const tmd_nn_model *m);
/* Provenance JSON stored with the model ("" if none). Owned by the model. */
const char *tmd_nn_model_provenance(const tmd_nn_model *m);
/* Number of trainable parameters. */
int64_t tmd_nn_model_param_count(const tmd_nn_model *m);

/* ---- inference plans -------------------------------------------------------------- */

/* Plan for a batch of 1 at height x width (multiples of tmd_nn_model_multiple; equal to
 * the fixed input size for dense models). Folds batch norm, allocates every buffer. */
tmd_status tmd_nn_plan_create(tmd_ctx *ctx, const tmd_nn_model *m, int height, int width,
                              tmd_nn_plan **out);
/* General form: batch of n inputs, output taken from layer `until` (-1 = the last layer;
 * tmd_nn_model_latent_layer(m) gives the autoencoder's encoder). */
tmd_status tmd_nn_plan_create_ex(tmd_ctx *ctx, const tmd_nn_model *m, int batch, int height,
                                 int width, int until, tmd_nn_plan **out);
/* in: (batch, C_in, H, W); out: (batch, C_out, H_out, W_out) — see tmd_nn_plan_out_shape.
 * Allocates nothing. Returns TMD_ERR_ARG on NULL pointers. */
tmd_status tmd_nn_execute(tmd_nn_plan *p, const float *in, float *out);
/* Executes the first n <= batch inputs only (a partial last batch). */
tmd_status tmd_nn_execute_n(tmd_nn_plan *p, int n, const float *in, float *out);
/* Shape of one output sample: channels, height, width. */
void tmd_nn_plan_out_shape(const tmd_nn_plan *p, int *c, int *h, int *w);
/* Bytes held by the plan's buffers (activations, im2col panel, folded weights). */
int64_t tmd_nn_plan_bytes(const tmd_nn_plan *p);
/* Floating-point operations of one execute (multiply-add = 2), convolutions and dense. */
double tmd_nn_plan_flops(const tmd_nn_plan *p);
void tmd_nn_plan_destroy(tmd_nn_plan **p);

/* ---- building models ----------------------------------------------------------------- */

/* Architectures. base = filters of the first level (16 = the AtomAI-style default).
 * Weights are initialised (He normal) from `seed`. */
tmd_status tmd_nn_build_unet(tmd_ctx *ctx, int base, int n_classes, uint64_t seed,
                             tmd_nn_model **out);
/* Patch classifier on (1, patch, patch) patches, patch a multiple of 8: three conv+pool
 * levels (base, 2base, 4base), dense 64, dropout, dense n_classes, softmax. */
tmd_status tmd_nn_build_classifier(tmd_ctx *ctx, int patch, int base, int n_classes,
                                   uint64_t seed, tmd_nn_model **out);
/* Autoencoder on (1, patch, patch): encoder conv+pool x3, dense -> latent; decoder dense,
 * reshape, upsample+conv x3, 1x1 conv to one channel. */
tmd_status tmd_nn_build_autoencoder(tmd_ctx *ctx, int patch, int base, int latent,
                                    uint64_t seed, tmd_nn_model **out);

/* Layer-by-layer construction (tests and custom nets). Each add returns the new layer's
 * index (>= 1; layer 0 is the input) or a negative status. `in` is a layer index. */
enum { TMD_NN_ACT_NONE = 0, TMD_NN_ACT_RELU = 1, TMD_NN_ACT_LEAKY = 2 };
tmd_status tmd_nn_model_new(tmd_ctx *ctx, const char *kind, int in_channels, int input_size,
                            tmd_nn_model **out);
int tmd_nn_add_conv(tmd_ctx *ctx, tmd_nn_model *m, int in, int cout, int k, int dilation,
                    int batchnorm, int act);
int tmd_nn_add_maxpool(tmd_ctx *ctx, tmd_nn_model *m, int in);
int tmd_nn_add_upsample(tmd_ctx *ctx, tmd_nn_model *m, int in);
int tmd_nn_add_concat(tmd_ctx *ctx, tmd_nn_model *m, int a, int b);
int tmd_nn_add_sum(tmd_ctx *ctx, tmd_nn_model *m, int a, int b);
int tmd_nn_add_dense(tmd_ctx *ctx, tmd_nn_model *m, int in, int cout, int act);
int tmd_nn_add_dropout(tmd_ctx *ctx, tmd_nn_model *m, int in, float p);
int tmd_nn_add_reshape(tmd_ctx *ctx, tmd_nn_model *m, int in, int c, int h, int w);
int tmd_nn_add_softmax(tmd_ctx *ctx, tmd_nn_model *m, int in);
/* Allocates (after the last add) and initialises all weights (He normal, zero biases,
 * BN gamma 1 beta 0 mean 0 var 1). */
tmd_status tmd_nn_model_init_weights(tmd_ctx *ctx, tmd_nn_model *m, uint64_t seed);
tmd_status tmd_nn_model_set_latent(tmd_ctx *ctx, tmd_nn_model *m, int layer);
/* LeakyReLU slope of every leaky layer (default 0.1). */
void tmd_nn_model_set_slope(tmd_nn_model *m, float slope);

/* Flat views of the trainable parameters (weights, biases, BN gamma/beta, in layer order)
 * and of the BN running statistics (mean, var per BN layer). Owned by the model. */
float *tmd_nn_model_params(tmd_nn_model *m, int64_t *n);
float *tmd_nn_model_stats(tmd_nn_model *m, int64_t *n);
/* Deep copy. */
tmd_status tmd_nn_model_clone(tmd_ctx *ctx, const tmd_nn_model *m, tmd_nn_model **out);

/* ---- training ----------------------------------------------------------------------- */

/* Loss: models that end in softmax are trained with (class-weighted) cross-entropy on the
 * logits; other models with mean squared error against a target of the output's shape. */
typedef struct tmd_nn_adam {
    float lr;             /* learning rate (e.g. 1e-3) */
    float beta1, beta2;   /* 0.9, 0.999 */
    float eps;            /* 1e-8 */
    float weight_decay;   /* L2 added to the gradient (0 = none) */
} tmd_nn_adam;

/* Trainer for `m` (updated in place) on batches of up to local_batch samples per rank of
 * height x width. Batch norm uses the statistics of the whole global batch (summed over
 * comm), so the same global batch on 1 or N ranks gives the same weights. comm is
 * duplicated; MPI_COMM_SELF for single-process use. Collective. */
tmd_status tmd_nn_trainer_create(tmd_ctx *ctx, tmd_nn_model *m, MPI_Comm comm, int local_batch,
                                 int height, int width, const tmd_nn_adam *opt,
                                 tmd_nn_trainer **out);
/* Class weights for cross-entropy (n = output channels); default all 1. */
tmd_status tmd_nn_trainer_set_class_weights(tmd_nn_trainer *t, const float *w, int n);
/* Forward + backward on this rank's n_local samples; gradients summed over ranks; loss =
 * global mean over n_global samples (and pixels). in: (n_local, C, H, W); labels: uint8
 * (n_local, H_out, W_out) class per pixel (CE models) or NULL; target: float of the output
 * shape (MSE models) or NULL. first_index: global index of this rank's first sample
 * (makes dropout masks independent of the rank count). step: dropout seed. Collective. */
tmd_status tmd_nn_trainer_grad(tmd_nn_trainer *t, int n_local, int n_global, int64_t first_index,
                               uint64_t step, const float *in, const uint8_t *labels,
                               const float *target, double *loss);
/* Adam update with the gradients of the last tmd_nn_trainer_grad (identical on all ranks). */
void tmd_nn_trainer_update(tmd_nn_trainer *t);
/* grad + update. Collective. */
tmd_status tmd_nn_trainer_step(tmd_nn_trainer *t, int n_local, int n_global, int64_t first_index,
                               uint64_t step, const float *in, const uint8_t *labels,
                               const float *target, double *loss);
/* Gradient of the trainable parameters (same layout as tmd_nn_model_params). */
const float *tmd_nn_trainer_grads(const tmd_nn_trainer *t);
/* Adam state for checkpoints: first and second moments (each n = param count floats) and
 * the number of steps taken; owned by the trainer, writable (for --resume). */
void tmd_nn_trainer_adam_state(tmd_nn_trainer *t, float **m, float **v, int64_t *n, int64_t **steps);
void tmd_nn_trainer_set_lr(tmd_nn_trainer *t, float lr);
void tmd_nn_trainer_destroy(tmd_nn_trainer **t);

/* splitmix64 finaliser: the counter-based hash used for weights, dropout and training
 * example draws (rank-count independent randomness). */
uint64_t tmd_nn_hash(uint64_t x);

#ifdef __cplusplus
}
#endif
#endif
