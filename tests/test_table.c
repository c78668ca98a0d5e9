/* test_table — the growable atom table (src/core/table.c).
 *
 * Proves: shrinking a table to its rows (tmd_atom_table_shrink, called by the pipeline after
 * the tile pass to drop the doubling's slack) keeps every column's values, sets cap = n, and
 * the table still grows by push afterwards; an empty table is left alone.
 */
#include "testutil.h"

#include "tmd/table.h"

static void test_shrink_keeps_rows(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    tmd_atom_table t;
    tmd_atom_table_init(&t, TMD_NCLASSES);
    CU_ASSERT_EQUAL(tmd_atom_table_shrink(&ctx, &t), TMD_OK); /* empty: nothing to do */
    CU_ASSERT_EQUAL(t.cap, 0);
    for (int i = 0; i < 300; i++) {
        int64_t r;
        CU_ASSERT_EQUAL_FATAL(tmd_atom_table_push(&ctx, &t, &r), TMD_OK);
        t.frame[r] = i;
        t.x[r] = 0.5 * i;
        t.y[r] = -0.25 * i;
        t.sublattice[r] = (int8_t)(i % 3);
        t.species[r] = (int8_t)(i % 8);
        for (int k = 0; k < TMD_NCLASSES; k++) t.prob[r * TMD_NCLASSES + k] = (float)(i + k);
        t.intensity[r] = (float)i / 7;
        t.site[r] = 1000 + i;
    }
    CU_ASSERT(t.cap > t.n); /* doubling: 512 rows for 300 */
    CU_ASSERT_EQUAL_FATAL(tmd_atom_table_shrink(&ctx, &t), TMD_OK);
    CU_ASSERT_EQUAL(t.n, 300);
    CU_ASSERT_EQUAL(t.cap, 300);
    int ok = 1;
    for (int i = 0; i < 300; i++) {
        ok &= t.frame[i] == i && t.x[i] == 0.5 * i && t.y[i] == -0.25 * i && t.sublattice[i] == i % 3;
        ok &= t.species[i] == i % 8 && t.intensity[i] == (float)i / 7 && t.site[i] == 1000 + i;
        for (int k = 0; k < TMD_NCLASSES; k++) ok &= t.prob[i * TMD_NCLASSES + k] == (float)(i + k);
    }
    CU_ASSERT(ok);
    int64_t r;
    CU_ASSERT_EQUAL_FATAL(tmd_atom_table_push(&ctx, &t, &r), TMD_OK); /* grows again */
    CU_ASSERT_EQUAL(r, 300);
    CU_ASSERT(t.cap > 300);
    CU_ASSERT_EQUAL(t.site[r], -1);
    CU_ASSERT_EQUAL(t.x[r], 0.0);
    CU_ASSERT_EQUAL(t.x[299], 0.5 * 299);
    tmd_atom_table_free(&t);
}

int main(int argc, char **argv)
{
    return tmd_test_main(argc, argv, "table", (tmd_test_case[]){{"shrink keeps rows", test_shrink_keeps_rows}, {NULL, NULL}});
}
