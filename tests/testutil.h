/* Test support: runs CUnit suites under MPI so that a failure on any rank fails the test on
 * every rank, and gives each test a scratch directory.
 *
 *     static void test_x(void) { CU_ASSERT_EQUAL(...); }
 *     int main(int argc, char **argv) {
 *         return tmd_test_main(argc, argv, "io", (tmd_test_case[]){{"reads a tile", test_x}, {0}});
 *     }
 *
 * tmd_test_comm is MPI_COMM_WORLD for the test program (tests are the top level, like main).
 * tmd_test_dir() is a per-run directory shared by all ranks (created by rank 0).
 */
#ifndef TMD_TESTUTIL_H
#define TMD_TESTUTIL_H

#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>
#include <mpi.h>

#include "tmd/core.h"

typedef struct {
    const char *name;
    void (*fn)(void);
} tmd_test_case;

extern MPI_Comm tmd_test_comm;
extern int tmd_test_rank, tmd_test_size;

/* Initialises MPI, runs the cases as one suite, reduces failures over ranks, finalises.
 * Returns 0 only if every assertion on every rank passed. */
int tmd_test_main(int argc, char **argv, const char *suite, const tmd_test_case *cases);

/* Scratch directory for this test run (same path on all ranks), e.g. "/tmp/tmdtest_io_1234". */
const char *tmd_test_dir(void);

/* Joins tmd_test_dir() and name into a static buffer (rotating, 8 slots). */
const char *tmd_test_path(const char *name);

/* A fresh quiet context on tmd_test_comm. */
void tmd_test_ctx(tmd_ctx *ctx);

/* Runs a shell command, returns its exit status (or -1). Output captured into *out
 * (malloc'd, may be NULL to discard). */
int tmd_test_run(const char *cmd, char **out);

/* Collective over tmd_test_comm: every rank's n_mine floats, concatenated in rank order, on
 * every rank (e.g. the row blocks of a map decomposed by rows). The caller frees the result. */
float *tmd_test_allgather_floats(const float *mine, int n_mine);

/* Deterministic pseudo-random float in [0,1) for fixtures. */
float tmd_test_randf(unsigned *state);

#endif
