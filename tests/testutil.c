#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <sys/stat.h>
#include <sys/wait.h>
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

/* The command runs through /bin/sh with stdout captured. Its environment is this process's
 * minus the MPI launcher's variables (OMPI_*, PMIX_*, OPAL_*): a tmdflow started from a test
 * must start its own MPI world, not try to join the test's (a singleton's child that inherits
 * them misbehaves, e.g. LeakSanitizer's tracer crashes at its exit). */
static FILE *spawn_clean_env(const char *cmd, pid_t *pid_out)
{
    int fd[2];
    if (pipe(fd) != 0) return NULL;
    pid_t pid = fork();
    if (pid < 0) {
        close(fd[0]);
        close(fd[1]);
        return NULL;
    }
    if (pid == 0) {
        extern char **environ;
        close(fd[0]);
        if (fd[1] != STDOUT_FILENO) {
            dup2(fd[1], STDOUT_FILENO);
            close(fd[1]);
        }
        for (int again = 1; again;) {
            again = 0;
            for (char **e = environ; *e; e++) {
                if (!strncmp(*e, "OMPI_", 5) || !strncmp(*e, "PMIX_", 5) || !strncmp(*e, "OPAL_", 5)) {
                    char name[256];
                    size_t n = strcspn(*e, "=");
                    if (n >= sizeof name) continue;
                    memcpy(name, *e, n);
                    name[n] = 0;
                    /* keep the run-as-root permission the suite relies on */
                    if (!strcmp(name, "OMPI_ALLOW_RUN_AS_ROOT") || !strcmp(name, "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM")) continue;
                    unsetenv(name);
                    again = 1;
                    break;
                }
            }
        }
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    close(fd[1]);
    *pid_out = pid;
    return fdopen(fd[0], "r");
}

int tmd_test_run(const char *cmd, char **out)
{
    pid_t pid = -1;
    FILE *p = spawn_clean_env(cmd, &pid);
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
    fclose(p);
    int rc = 0;
    while (waitpid(pid, &rc, 0) < 0)
        if (errno != EINTR) {
            rc = -1;
            break;
        }
    if (out) *out = buf;
    else free(buf);
    if (rc == -1) return -1;
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128 + WTERMSIG(rc);
}

float *tmd_test_allgather_floats(const float *mine, int n_mine)
{
    int *cnt = calloc((size_t)tmd_test_size, sizeof(int)), *dis = calloc((size_t)tmd_test_size, sizeof(int));
    MPI_Allgather(&n_mine, 1, MPI_INT, cnt, 1, MPI_INT, tmd_test_comm);
    int64_t total = cnt[0];
    for (int r = 1; r < tmd_test_size; r++) {
        dis[r] = dis[r - 1] + cnt[r - 1];
        total += cnt[r];
    }
    float *all = calloc((size_t)total + 1, sizeof(float));
    MPI_Allgatherv(mine, n_mine, MPI_FLOAT, all, cnt, dis, MPI_FLOAT, tmd_test_comm);
    free(cnt);
    free(dis);
    return all;
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
