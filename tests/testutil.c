#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

MPI_Comm tmd_test_comm = MPI_COMM_NULL;
int tmd_test_rank = 0, tmd_test_size = 1;
static char test_dir[512];

const char *tmd_test_dir(void) { return test_dir; }

const char *tmd_test_path(const char *name)
{
    static char slots[8][1024];
    static int next = 0;
    char *s = slots[next++ % 8];
    snprintf(s, 1024, "%s/%s", test_dir, name);
    return s;
}

void tmd_test_ctx(tmd_ctx *ctx)
{
    tmd_ctx_init(ctx, tmd_test_comm);
    ctx->log_level = TMD_LOG_QUIET;
    if (getenv("TMDFLOW_TEST_DEBUG")) ctx->log_level = TMD_LOG_DEBUG;
}

int tmd_test_run(const char *cmd, char **out)
{
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    size_t n;
    while (buf && (n = fread(buf + len, 1, cap - len - 1, p)) > 0) {
        len += n;
        if (cap - len < 1024) {
            cap *= 2;
            buf = realloc(buf, cap);
        }
    }
    if (buf) buf[len] = 0;
    int rc = pclose(p);
    if (out) *out = buf;
    else free(buf);
    if (rc == -1) return -1;
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128 + WTERMSIG(rc);
}

float tmd_test_randf(unsigned *state)
{
    *state = *state * 1664525u + 1013904223u;
    return (float)((*state >> 8) & 0xFFFFFF) / 16777216.0f;
}

int tmd_test_main(int argc, char **argv, const char *suite, const tmd_test_case *cases)
{
    MPI_Init(&argc, &argv);
    tmd_test_comm = MPI_COMM_WORLD;
    MPI_Comm_rank(tmd_test_comm, &tmd_test_rank);
    MPI_Comm_size(tmd_test_comm, &tmd_test_size);
    long stamp = 0;
    if (tmd_test_rank == 0) stamp = (long)getpid();
    MPI_Bcast(&stamp, 1, MPI_LONG, 0, tmd_test_comm);
    const char *base = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(test_dir, sizeof test_dir, "%s/tmdtest_%s_%d_%ld", base, suite, tmd_test_size, stamp);
    if (tmd_test_rank == 0) mkdir(test_dir, 0755);
    MPI_Barrier(tmd_test_comm);

    int failures = 0;
    if (CU_initialize_registry() != CUE_SUCCESS) {
        failures = 1;
    } else {
        CU_pSuite s = CU_add_suite(suite, NULL, NULL);
        for (const tmd_test_case *c = cases; c->name; c++) CU_add_test(s, c->name, c->fn);
        CU_basic_set_mode(tmd_test_rank == 0 ? CU_BRM_VERBOSE : CU_BRM_SILENT);
        CU_basic_run_tests();
        failures = (int)CU_get_number_of_failures() + (int)CU_get_number_of_tests_failed();
        if (failures && tmd_test_rank != 0) {
            fprintf(stderr, "rank %d: %d failure(s)\n", tmd_test_rank, failures);
            CU_basic_show_failures(CU_get_failure_list());
            fprintf(stderr, "\n");
        }
        CU_cleanup_registry();
    }
    int total = 0;
    MPI_Allreduce(&failures, &total, 1, MPI_INT, MPI_SUM, tmd_test_comm);
    MPI_Barrier(tmd_test_comm);
    if (tmd_test_rank == 0 && total == 0 && !getenv("TMDFLOW_KEEP_TEST_DIR")) {
        char cmd[700];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", test_dir);
        if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", test_dir);
    }
    MPI_Finalize();
    return total ? 1 : 0;
}
