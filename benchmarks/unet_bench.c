/* unet_bench: times tmdflow's U-Net inference on one tile (batch 1, one BLAS thread
 * recommended) and cblas_sgemm peak on this machine; optionally a training step.
 *   unet_bench [--tile N] [--reps R] [--base F] [--train-tile S --train-batch B]
 * Prints key=value lines: unet_ms (median), unet_mpix_s, unet_gflop_s, sgemm_gflop_s,
 * sgemm_fraction, plan_bytes, peak_rss_bytes. */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tmd/nn.h"

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static int cmpd(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, n, sizeof *v, cmpd);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int tile = 512, reps = 7, base = 16, ttile = 0, tbatch = 8;
    const char *model_path = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--tile")) tile = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--reps")) reps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--base")) base = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--model")) model_path = argv[i + 1];
        else if (!strcmp(argv[i], "--train-tile")) ttile = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--train-batch")) tbatch = atoi(argv[i + 1]);
    }
    if (reps < 1 || reps > 1000) reps = 7;
    tmd_ctx ctx;
    tmd_ctx_init(&ctx, MPI_COMM_SELF);
    tmd_nn_model *m = NULL;
    tmd_nn_plan *p = NULL;
    tmd_status st = model_path ? tmd_nn_model_load(&ctx, model_path, &m) : tmd_nn_build_unet(&ctx, base, 6, 1, &m);
    if (!st) st = tmd_nn_plan_create(&ctx, m, tile, tile, &p);
    if (st) {
        tmd_error_print(&ctx);
        MPI_Finalize();
        return 1;
    }
    float *in = malloc(sizeof(float) * tile * tile), *out = malloc(sizeof(float) * 6 * tile * tile);
    unsigned s = 1;
    for (int i = 0; i < tile * tile; i++) s = s * 1103515245u + 12345u, in[i] = (s >> 8) / 16777216.0f;
    double t[1000], tc[1000];
    tmd_nn_execute(p, in, out); /* warm-up */
    for (int r = 0; r < reps; r++) {
        double t0 = tmd_now(), c0 = cpu_now();
        tmd_nn_execute(p, in, out);
        t[r] = tmd_now() - t0;
        tc[r] = cpu_now() - c0;
    }
    double dt = median(t, reps), fl = tmd_nn_plan_flops(p), dc = median(tc, reps);
    /* sgemm peak: square 1024 and a U-Net-like panel shape, best of both */
    int N = 1024;
    float *A = calloc((size_t)N * N, 4), *B = calloc((size_t)N * N, 4), *C = calloc((size_t)N * N, 4);
    for (int i = 0; i < N * N; i++) A[i] = (float)(i % 7) * 0.1f, B[i] = (float)(i % 5) * 0.1f;
    double best = 0;
    for (int r = 0; r < 5; r++) {
        double t0 = tmd_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, N, N, 1, A, N, B, N, 0, C, N);
        double g = 2.0 * N * N * N / (tmd_now() - t0) / 1e9;
        if (g > best) best = g;
    }
    double gf = fl / dt / 1e9;
    printf("tile=%d base=%d reps=%d\n", tile, base, reps);
    printf("unet_cpu_ms=%.1f\n", dc * 1e3);
    printf("unet_ms=%.1f\nunet_mpix_s=%.3f\nunet_gflop=%.3f\nunet_gflop_s=%.2f\n", dt * 1e3, tile * (double)tile / dt / 1e6,
           fl / 1e9, gf);
    printf("sgemm_gflop_s=%.2f\nsgemm_fraction=%.3f\n", best, gf / best);
    printf("plan_bytes=%lld\npeak_rss_bytes=%lld\n", (long long)tmd_nn_plan_bytes(p), (long long)tmd_peak_rss_bytes());
    if (ttile > 0) {
        tmd_nn_model *tm = NULL;
        tmd_nn_trainer *tr = NULL;
        st = tmd_nn_build_unet(&ctx, base, 6, 2, &tm);
        if (!st) st = tmd_nn_trainer_create(&ctx, tm, MPI_COMM_SELF, tbatch, ttile, ttile, NULL, &tr);
        if (!st) {
            float *x = calloc((size_t)tbatch * ttile * ttile, 4);
            uint8_t *y = calloc((size_t)tbatch * ttile * ttile, 1);
            for (int i = 0; i < tbatch * ttile * ttile; i++) x[i] = (i * 37 % 101) / 101.0f, y[i] = (uint8_t)(i % 6);
            double l;
            tmd_nn_trainer_step(tr, tbatch, tbatch, 0, 0, x, y, NULL, &l);
            for (int r = 0; r < 3; r++) {
                double t0 = tmd_now();
                tmd_nn_trainer_step(tr, tbatch, tbatch, 0, r + 1, x, y, NULL, &l);
                t[r] = tmd_now() - t0;
            }
            printf("train_step_s=%.3f (tile %d batch %d)\n", median(t, 3), ttile, tbatch);
            free(x);
            free(y);
        }
        tmd_nn_trainer_destroy(&tr);
        tmd_nn_model_free(&tm);
    }
    tmd_nn_plan_destroy(&p);
    tmd_nn_model_free(&m);
    free(in), free(out), free(A), free(B), free(C);
    MPI_Finalize();
    return 0;
}
