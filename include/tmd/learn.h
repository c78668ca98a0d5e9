/* tmd/learn.h — training and validating the shipped networks on the simulator's streams.
 *
 * Role: `tmdflow train` is a thin front end to this module. It joins the simulator's
 * training streams (tmd/sim.h: tmd_sim_training_tile, tmd_sim_training_patches) to the
 * data-parallel trainer (tmd/nn.h: tmd_nn_trainer_*): every step has a global batch of
 * `batch` examples with global example numbers step*batch + b; rank r simulates examples
 * [r*batch/R, (r+1)*batch/R) of each batch at the nominal pixel size jittered by
 * +-px_jitter, augments them (dihedral transform, gamma, contrast, offset, blur, noise, all
 * drawn from (seed, example)), and the gradients are summed with MPI_Allreduce, so every
 * rank holds the same weights and the model does not depend on the rank count (to
 * rounding). Validation uses a simulator stream whose seed is never used for training
 * (seed + 7919*1000003). Checkpoints (the model file + MODEL.h5.adam.h5 with the Adam
 * moments and the step) are written every ckpt_every steps, at the end, at stop_after, and
 * on SIGTERM/SIGUSR1 (tmd_interrupted); resume = 1 continues from them.
 *
 * Usage:
 *     tmd_learn_opts o;
 *     tmd_learn_defaults(&o, TMD_LEARN_UNET);
 *     o.out = "unet.h5"; o.steps = 2000;
 *     st = tmd_learn_train(ctx, comm, &o);            // collective; TMD_ERR_INTERRUPTED on a stop
 *     st = tmd_learn_evaluate(ctx, comm, &o, &v);     // collective; validates o.out
 *
 * Collective: tmd_learn_train, tmd_learn_evaluate, tmd_learn_validate (over comm).
 * tmd_learn_example is local. Ownership: the caller owns every array passed in; the model
 * passed to tmd_learn_validate stays the caller's.
 */
#ifndef TMD_LEARN_H
#define TMD_LEARN_H

#include <stdint.h>

#include "tmd/core.h"
#include "tmd/nn.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { TMD_LEARN_UNET, TMD_LEARN_CLASSIFIER, TMD_LEARN_AUTOENCODER } tmd_learn_kind;

typedef struct {
    tmd_learn_kind kind;
    const char *out;     /* model file (checkpoint beside it: OUT.adam.h5) */
    const char *command; /* recorded in the model's provenance (may be NULL) */
    long steps;          /* length of the learning-rate schedule */
    long stop_after;     /* > 0: checkpoint and return after this step (time-limited jobs) */
    long batch;          /* global batch: U-Net tiles, or classifier/autoencoder tiles of per_tile patches */
    long tile;           /* U-Net tile side (multiple of 8) */
    long seed;           /* training stream seed; the validation stream is seed + 7919*1000003 */
    long ckpt_every, val_every, val_n; /* 0 = never (a checkpoint and a validation still end the run) */
    long base;           /* filters of the first layer */
    long patch, latent, per_tile; /* classifier / autoencoder: patch side, latent size, patches per example */
    double lr, lr_min;   /* cosine schedule from lr to lr_min, 50-step warm-up */
    double px, px_jitter; /* nominal pixel size (A) and its relative jitter in training */
    double weight_decay;
    int resume;          /* continue from the checkpoint beside `out` */
    int augment;         /* dihedral + intensity augmentation of training examples */
} tmd_learn_opts;

/* Validation figures (identical on every rank and for any rank count: integer counts are
 * reduced over the communicator). */
typedef struct {
    double loss;         /* autoencoder: reconstruction MSE */
    double acc;          /* pixel (U-Net) or patch (classifier) accuracy */
    double f1_atoms;     /* U-Net: F1 of atom (class > 0) vs background pixels */
    double f1_mean;      /* U-Net: mean F1 over classes 1..5; classifier: over its labels */
    double atom_f1;      /* U-Net: atom-level detection F1 (components matched within 3 px) */
    double atom_species; /* U-Net: share of matched atoms whose majority class is right */
    long atoms[4];       /* U-Net: true positives, false positives, false negatives, species right */
    long conf[8][8];     /* confusion matrix, rows truth, columns predicted */
} tmd_learn_validation;

/* The defaults of `tmdflow train` for a kind (batch 8 U-Net tiles, 4 patch tiles otherwise). */
void tmd_learn_defaults(tmd_learn_opts *o, tmd_learn_kind kind);

/* Example e of the training (val = 0, augmented when o->augment) or validation (val = 1)
 * stream, a pure function of (o->seed, val, e). U-Net: img (tile x tile) and its class mask
 * cls (tile x tile). Classifier / autoencoder: per_tile patches (patch x patch each) in img
 * and their labels; cls unused. tmp: scratch of per_tile * patch^2 + 16 or tile^2 + 16
 * floats. */
tmd_status tmd_learn_example(tmd_ctx *ctx, const tmd_learn_opts *o, int val, int64_t e, float *img, uint8_t *cls,
                             int *labels, float *tmp);

/* Validates model m (of o->kind) on o->val_n examples of the validation stream; the
 * examples are shared out over the ranks of comm. */
tmd_status tmd_learn_validate(tmd_ctx *ctx, MPI_Comm comm, const tmd_learn_opts *o, const tmd_nn_model *m,
                              tmd_learn_validation *out);

/* Trains a new model (or continues one with o->resume) and writes o->out and its checkpoint. */
tmd_status tmd_learn_train(tmd_ctx *ctx, MPI_Comm comm, const tmd_learn_opts *o);

/* Loads o->out, checks it is of o->kind, validates it and logs the figures (info level). */
tmd_status tmd_learn_evaluate(tmd_ctx *ctx, MPI_Comm comm, const tmd_learn_opts *o, tmd_learn_validation *out);

#ifdef __cplusplus
}
#endif

#endif
