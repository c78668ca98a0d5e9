/* Tests of nn training (src/nn/train.c). What they prove:
 * - data parallelism: training on the communicator (each rank its share of every global
 *   batch, batch-norm statistics and gradients summed over ranks) gives the same weights as
 *   training the whole global batch in one process (run at 1 and 2 ranks);
 * - a short training run of a small U-Net on a synthetic spot-segmentation task reduces
 *   the loss severalfold and then segments held-out images well (so forward, backward,
 *   batch norm, Adam and the folded-BN inference plan fit together);
 * - the autoencoder (MSE) loss decreases.
 * TMD_TEST_RANKS: 1 2
 * TMD_TEST_TIMEOUT: 200
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "tmd/nn.h"

/* Synthetic example e: S x S image with bright (class 2) and dim (class 1) Gaussian spots
 * on noise; class mask = disks of radius 2 around the spots. */
static void example(int64_t e, int S, float *img, uint8_t *cls)
{
    unsigned st = (unsigned)(e * 2654435761u + 17);
    for (int i = 0; i < S * S; i++) img[i] = 0.05f * tmd_test_randf(&st), cls[i] = 0;
    int n = 3 + (int)(tmd_test_randf(&st) * 3);
    for (int k = 0; k < n; k++) {
        float cx = 2 + tmd_test_randf(&st) * (S - 4), cy = 2 + tmd_test_randf(&st) * (S - 4);
        int bright = tmd_test_randf(&st) < 0.5f;
        float amp = bright ? 0.9f : 0.45f;
        for (int y = 0; y < S; y++)
            for (int x = 0; x < S; x++) {
                float d2 = (x - cx) * (x - cx) + (y - cy) * (y - cy);
                img[y * S + x] += amp * expf(-d2 / 2.0f);
                if (d2 <= 4.0f) cls[y * S + x] = (uint8_t)(bright ? 2 : 1);
            }
    }
}

/* One Gaussian spot of random position, width and amplitude (3 numbers to encode). */
static void spot(int64_t e, int S, float *img)
{
    unsigned st = (unsigned)(e * 2654435761u + 5);
    float cx = 4 + tmd_test_randf(&st) * (S - 8), cy = 4 + tmd_test_randf(&st) * (S - 8);
    float amp = 0.3f + 0.7f * tmd_test_randf(&st), w = 1.5f + 2 * tmd_test_randf(&st);
    for (int y = 0; y < S; y++)
        for (int x = 0; x < S; x++)
            img[y * S + x] = amp * expf(-((x - cx) * (x - cx) + (y - cy) * (y - cy)) / (2 * w * w));
}

static tmd_nn_model *small_unet(tmd_ctx *ctx)
{
    tmd_nn_model *m = NULL;
    CU_ASSERT_FATAL(tmd_nn_build_unet(ctx, 4, 3, 11, &m) == 0);
    return m;
}

static void test_ranks_same_weights(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    const int S = 16, B = 4, STEPS = 3;
    tmd_nn_model *dist = small_unet(&ctx), *ref = small_unet(&ctx);
    tmd_nn_trainer *td = NULL, *tr = NULL;
    int R = tmd_test_size, r = tmd_test_rank;
    int b0 = B * r / R, b1 = B * (r + 1) / R;
    CU_ASSERT_FATAL(tmd_nn_trainer_create(&ctx, dist, tmd_test_comm, (B + R - 1) / R, S, S, NULL, &td) == 0);
    CU_ASSERT_FATAL(tmd_nn_trainer_create(&ctx, ref, MPI_COMM_SELF, B, S, S, NULL, &tr) == 0);
    float *img = malloc(sizeof(float) * B * S * S);
    uint8_t *cls = malloc((size_t)B * S * S);
    for (int step = 0; step < STEPS; step++) {
        for (int b = 0; b < B; b++) example(step * B + b, S, img + b * S * S, cls + b * S * S);
        double ld, lr;
        CU_ASSERT(tmd_nn_trainer_step(td, b1 - b0, B, b0, step, img + b0 * S * S, cls + b0 * S * S, NULL, &ld) == 0);
        CU_ASSERT(tmd_nn_trainer_step(tr, B, B, 0, step, img, cls, NULL, &lr) == 0);
        CU_ASSERT(fabs(ld - lr) <= 1e-4 * fabs(lr));
        if (step == 0) {
            /* the summed gradients agree to rounding */
            int64_t n;
            tmd_nn_model_params(ref, &n);
            const float *g1 = tmd_nn_trainer_grads(td), *g2 = tmd_nn_trainer_grads(tr);
            double gmax = 0, gdiff = 0;
            for (int64_t i = 0; i < n; i++) gmax = fmax(gmax, fabs(g2[i])), gdiff = fmax(gdiff, fabs(g1[i] - g2[i]));
            if (r == 0) printf("\n  %d rank(s): gradient difference %.3g of max %.3g", R, gdiff, gmax);
            CU_ASSERT(gdiff <= 1e-4 * gmax);
        }
    }
    int64_t n1, n2, s1, s2;
    float *p1 = tmd_nn_model_params(dist, &n1), *p2 = tmd_nn_model_params(ref, &n2);
    float *q1 = tmd_nn_model_stats(dist, &s1), *q2 = tmd_nn_model_stats(ref, &s2);
    CU_ASSERT_FATAL(n1 == n2 && s1 == s2);
    double worst = 0, worst_s = 0;
    for (int64_t i = 0; i < n1; i++) worst = fmax(worst, fabs(p1[i] - p2[i]));
    for (int64_t i = 0; i < s1; i++) worst_s = fmax(worst_s, fabs(q1[i] - q2[i]) / (1 + fabs(q2[i])));
    if (r == 0) printf("\n  %d rank(s): max weight difference %.3g, statistics %.3g\n", R, worst, worst_s);
    /* Adam normalises each step to ~lr (1e-3) whatever the gradient's size, so parameters
     * whose true gradient is 0 (conv biases before batch norm) move by rounding noise; the
     * weights must still agree far below one step */
    CU_ASSERT(worst < 2e-4);
    CU_ASSERT(worst_s < 1e-4);
    /* every rank holds the same weights */
    float *all = malloc(sizeof(float) * n1);
    memcpy(all, p1, sizeof(float) * n1);
    MPI_Bcast(all, (int)n1, MPI_FLOAT, 0, tmd_test_comm);
    CU_ASSERT(memcmp(all, p1, sizeof(float) * n1) == 0);
    free(all);
    free(img);
    free(cls);
    tmd_nn_trainer_destroy(&td);
    tmd_nn_trainer_destroy(&tr);
    tmd_nn_model_free(&dist);
    tmd_nn_model_free(&ref);
}

static void test_loss_decreases(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    const int S = 32, B = 6, STEPS = 120;
    tmd_nn_model *m = small_unet(&ctx);
    tmd_nn_trainer *t = NULL;
    tmd_nn_adam opt = {3e-3f, 0.9f, 0.999f, 1e-8f, 0};
    CU_ASSERT_FATAL(tmd_nn_trainer_create(&ctx, m, MPI_COMM_SELF, B, S, S, &opt, &t) == 0);
    float cw[3] = {1, 3, 3};
    CU_ASSERT(tmd_nn_trainer_set_class_weights(t, cw, 3) == 0);
    float *img = malloc(sizeof(float) * B * S * S), *out = malloc(sizeof(float) * 3 * S * S);
    uint8_t *cls = malloc((size_t)B * S * S);
    double first = 0, last = 0;
    for (int step = 0; step < STEPS; step++) {
        for (int b = 0; b < B; b++) example(step * B + b, S, img + b * S * S, cls + b * S * S);
        double l;
        CU_ASSERT_FATAL(tmd_nn_trainer_step(t, B, B, 0, step, img, cls, NULL, &l) == 0);
        if (step < 10) first += l / 10;
        if (step >= STEPS - 10) last += l / 10;
    }
    /* held-out images through the inference plan (BN folded from running statistics) */
    tmd_nn_plan *p = NULL;
    CU_ASSERT_FATAL(tmd_nn_plan_create(&ctx, m, S, S, &p) == 0);
    long ok = 0, tot = 0;
    for (int e = 0; e < 10; e++) {
        example(100000 + e, S, img, cls);
        tmd_nn_execute(p, img, out);
        for (int j = 0; j < S * S; j++) {
            int best = 0;
            for (int c = 1; c < 3; c++)
                if (out[c * S * S + j] > out[best * S * S + j]) best = c;
            if (cls[j]) tot++, ok += best == cls[j];
        }
    }
    double acc = (double)ok / tot;
    if (tmd_test_rank == 0) printf("  loss %.4f -> %.4f, held-out spot-pixel accuracy %.3f\n", first, last, acc);
    CU_ASSERT(last < 0.35 * first);
    CU_ASSERT(acc > 0.8);
    tmd_nn_plan_destroy(&p);
    tmd_nn_trainer_destroy(&t);
    tmd_nn_model_free(&m);
    free(img);
    free(out);
    free(cls);
}

static void test_autoencoder_learns(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    const int S = 16, B = 8, STEPS = 300;
    tmd_nn_model *m = NULL;
    CU_ASSERT_FATAL(tmd_nn_build_autoencoder(&ctx, S, 4, 8, 5, &m) == 0);
    tmd_nn_trainer *t = NULL;
    tmd_nn_adam opt = {3e-3f, 0.9f, 0.999f, 1e-8f, 0};
    CU_ASSERT_FATAL(tmd_nn_trainer_create(&ctx, m, MPI_COMM_SELF, B, S, S, &opt, &t) == 0);
    float *img = malloc(sizeof(float) * B * S * S);
    uint8_t *cls = malloc((size_t)S * S);
    double first = 0, last = 0;
    for (int step = 0; step < STEPS; step++) {
        for (int b = 0; b < B; b++) spot(step * B + b, S, img + b * S * S);
        double l;
        CU_ASSERT_FATAL(tmd_nn_trainer_step(t, B, B, 0, step, img, NULL, img, &l) == 0);
        if (step < 5) first += l / 5;
        if (step >= STEPS - 5) last += l / 5;
    }
    if (tmd_test_rank == 0) printf("  autoencoder MSE %.5f -> %.5f\n", first, last);
    CU_ASSERT(last < 0.5 * first);
    tmd_nn_trainer_destroy(&t);
    tmd_nn_model_free(&m);
    free(img);
    free(cls);
}

int main(int argc, char **argv)
{
    return tmd_test_main(argc, argv, "train",
                         (tmd_test_case[]){{"1 or N ranks: same weights for the same global batch", test_ranks_same_weights},
                                           {"short U-Net training reduces the loss", test_loss_decreases},
                                           {"autoencoder reconstruction improves", test_autoencoder_learns},
                                           {0}});
}
