/* Tests of training on the simulator's streams (src/learn, tmd/learn.h). What they prove:
 * - an example is a pure function of (seed, stream, number): made twice it is identical,
 *   another number gives another example, and augmentation only permutes the class mask
 *   (a dihedral transform keeps every class's pixel count) while it changes the image;
 * - validation reduces over the communicator without losing or repeating an example: on
 *   all ranks together it gives exactly the counts of one rank validating alone;
 * - a run stopped at a step (stop_after) and resumed gives bitwise the weights of the run
 *   that was not stopped (the checkpoint holds the Adam moments and the step);
 * - malformed options are refused with a message naming the option.
 * TMD_TEST_RANKS: 1 2
 * TMD_TEST_TIMEOUT: 200
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "tmd/learn.h"

static void test_example_is_deterministic(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    tmd_learn_opts o;
    tmd_learn_defaults(&o, TMD_LEARN_UNET);
    o.tile = 64;
    const int S = 64, N = S * S;
    float *a = calloc(N, sizeof(float)), *b = calloc(N, sizeof(float)), *plain = calloc(N, sizeof(float));
    float *tmp = calloc(N + 16, sizeof(float));
    uint8_t *ca = calloc(N, 1), *cb = calloc(N, 1), *cp = calloc(N, 1);
    int labels[1];
    CU_ASSERT_FATAL(tmd_learn_example(&ctx, &o, 0, 5, a, ca, labels, tmp) == TMD_OK);
    CU_ASSERT_FATAL(tmd_learn_example(&ctx, &o, 0, 5, b, cb, labels, tmp) == TMD_OK);
    CU_ASSERT(memcmp(a, b, sizeof(float) * N) == 0 && memcmp(ca, cb, N) == 0);
    CU_ASSERT_FATAL(tmd_learn_example(&ctx, &o, 0, 6, b, cb, labels, tmp) == TMD_OK);
    CU_ASSERT(memcmp(a, b, sizeof(float) * N) != 0);
    /* the same example without augmentation: the same class histogram, another image */
    o.augment = 0;
    CU_ASSERT_FATAL(tmd_learn_example(&ctx, &o, 0, 5, plain, cp, labels, tmp) == TMD_OK);
    long ha[8] = {0}, hp[8] = {0};
    for (int i = 0; i < N; i++) ha[ca[i] & 7]++, hp[cp[i] & 7]++;
    CU_ASSERT(memcmp(ha, hp, sizeof ha) == 0);
    CU_ASSERT(ha[0] > 0 && ha[0] < N); /* a tile with atoms and background */
    CU_ASSERT(memcmp(a, plain, sizeof(float) * N) != 0);
    free(a), free(b), free(plain), free(tmp), free(ca), free(cb), free(cp);
}

static tmd_learn_opts small_unet_opts(void)
{
    tmd_learn_opts o;
    tmd_learn_defaults(&o, TMD_LEARN_UNET);
    o.tile = 48, o.base = 4, o.val_n = 5, o.seed = 3;
    return o;
}

static void test_validation_counts_every_example_once(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    tmd_learn_opts o = small_unet_opts();
    tmd_nn_model *m = NULL;
    CU_ASSERT_FATAL(tmd_nn_build_unet(&ctx, (int)o.base, 6, 11, &m) == TMD_OK);
    tmd_learn_validation all, alone;
    CU_ASSERT_FATAL(tmd_learn_validate(&ctx, tmd_test_comm, &o, m, &all) == TMD_OK);
    CU_ASSERT_FATAL(tmd_learn_validate(&ctx, MPI_COMM_SELF, &o, m, &alone) == TMD_OK);
    long pixels = 0;
    for (int a = 0; a < 8; a++)
        for (int b = 0; b < 8; b++) pixels += all.conf[a][b];
    CU_ASSERT(pixels == o.val_n * o.tile * o.tile);
    CU_ASSERT(memcmp(all.conf, alone.conf, sizeof all.conf) == 0);
    CU_ASSERT(memcmp(all.atoms, alone.atoms, sizeof all.atoms) == 0);
    CU_ASSERT(all.acc >= 0 && all.acc <= 1 && all.atom_f1 >= 0 && all.atom_f1 <= 1);
    tmd_nn_model_free(&m);
}

static void test_resume_equals_uninterrupted(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    tmd_learn_opts o;
    tmd_learn_defaults(&o, TMD_LEARN_AUTOENCODER);
    o.patch = 16, o.base = 4, o.latent = 4, o.per_tile = 4, o.batch = 2, o.val_n = 1, o.val_every = 0;
    o.ckpt_every = 0, o.steps = 4;
    char full[512], part[512];
    snprintf(full, sizeof full, "%s", tmd_test_path("ae_full.h5"));
    snprintf(part, sizeof part, "%s", tmd_test_path("ae_part.h5"));
    o.out = full;
    CU_ASSERT_FATAL(tmd_learn_train(&ctx, tmd_test_comm, &o) == TMD_OK);
    o.out = part, o.stop_after = 2;
    CU_ASSERT_FATAL(tmd_learn_train(&ctx, tmd_test_comm, &o) == TMD_OK);
    o.stop_after = 0, o.resume = 1;
    CU_ASSERT_FATAL(tmd_learn_train(&ctx, tmd_test_comm, &o) == TMD_OK);
    tmd_nn_model *a = NULL, *b = NULL;
    CU_ASSERT_FATAL(tmd_nn_model_load(&ctx, full, &a) == TMD_OK);
    CU_ASSERT_FATAL(tmd_nn_model_load(&ctx, part, &b) == TMD_OK);
    int64_t na, nb;
    float *pa = tmd_nn_model_params(a, &na), *pb = tmd_nn_model_params(b, &nb);
    CU_ASSERT_FATAL(na == nb && na > 0);
    CU_ASSERT(memcmp(pa, pb, sizeof(float) * (size_t)na) == 0);
    /* and training moved the weights away from their initial values */
    tmd_nn_model *init = NULL;
    CU_ASSERT_FATAL(tmd_nn_build_autoencoder(&ctx, 16, 4, 4, (uint64_t)o.seed, &init) == TMD_OK);
    int64_t ni;
    float *pi = tmd_nn_model_params(init, &ni);
    CU_ASSERT(ni == na && memcmp(pi, pa, sizeof(float) * (size_t)na) != 0);
    tmd_nn_model_free(&a), tmd_nn_model_free(&b), tmd_nn_model_free(&init);
}

static void test_bad_options_refused(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    tmd_learn_opts o = small_unet_opts();
    o.out = tmd_test_path("never.h5");
    o.tile = 36;
    CU_ASSERT(tmd_learn_train(&ctx, tmd_test_comm, &o) == TMD_ERR_ARG);
    CU_ASSERT(strstr(ctx.err_msg, "--tile 36") != NULL);
    tmd_error_clear(&ctx);
    o = small_unet_opts();
    o.out = NULL;
    CU_ASSERT(tmd_learn_train(&ctx, tmd_test_comm, &o) == TMD_ERR_ARG);
    tmd_error_clear(&ctx);
    /* evaluating a file that is not there names it */
    o.out = tmd_test_path("missing_model.h5");
    tmd_learn_validation v;
    CU_ASSERT(tmd_learn_evaluate(&ctx, tmd_test_comm, &o, &v) != TMD_OK);
    CU_ASSERT(strstr(ctx.err_msg, "missing_model.h5") != NULL);
    tmd_error_clear(&ctx);
}

int main(int argc, char **argv)
{
    return tmd_test_main(argc, argv, "learn",
                         (tmd_test_case[]){{"an example is a pure function of its number", test_example_is_deterministic},
                                           {"validation counts every example once on any rank count",
                                            test_validation_counts_every_example_once},
                                           {"stop and resume give the uninterrupted weights",
                                            test_resume_equals_uninterrupted},
                                           {"bad options are refused", test_bad_options_refused},
                                           {0}});
}
