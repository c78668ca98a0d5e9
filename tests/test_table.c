/* test_table — the growable atom table (src/core/table.c).
 *
 * Proves: shrinking a table to its rows (tmd_atom_table_shrink, called by the pipeline after
 * the tile pass to drop the doubling's slack) keeps every column's values, sets cap = n, and
 * the table still grows by push afterwards; an empty table is left alone. Appending rows
 * [from, to) of one table to another (tmd_atom_table_append: the pipeline's resume merge and
 * the streamed classify's ghost gathering) copies every column incl. latent, row by row as
 * well as in a block, and refuses tables whose prob / latent columns differ.
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

static void fill_row(tmd_atom_table *t, int64_t r, int i)
{
    t->frame[r] = i;
    t->x[r] = 0.5 * i;
    t->y[r] = -0.25 * i;
    t->sublattice[r] = (int8_t)(i % 3);
    t->species[r] = (int8_t)(i % 8);
    for (int k = 0; k < t->nprob; k++) t->prob[r * t->nprob + k] = (float)(i + k);
    t->intensity[r] = (float)i / 7;
    t->site[r] = 1000 + i;
    for (int k = 0; k < t->nlatent; k++) t->latent[r * t->nlatent + k] = (float)(2 * i - k);
}

static int row_is(const tmd_atom_table *t, int64_t r, int i)
{
    int ok = t->frame[r] == i && t->x[r] == 0.5 * i && t->y[r] == -0.25 * i && t->sublattice[r] == i % 3;
    ok &= t->species[r] == i % 8 && t->intensity[r] == (float)i / 7 && t->site[r] == 1000 + i;
    for (int k = 0; k < t->nprob; k++) ok &= t->prob[r * t->nprob + k] == (float)(i + k);
    for (int k = 0; k < t->nlatent; k++) ok &= t->latent[r * t->nlatent + k] == (float)(2 * i - k);
    return ok;
}

static void test_append_copies_every_column(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    tmd_atom_table src, dst, other;
    tmd_atom_table_init(&src, 8);
    tmd_atom_table_init(&dst, 8);
    tmd_atom_table_init(&other, 6);
    CU_ASSERT_EQUAL_FATAL(tmd_atom_table_set_latent(&ctx, &src, 3), TMD_OK);
    CU_ASSERT_EQUAL_FATAL(tmd_atom_table_set_latent(&ctx, &dst, 3), TMD_OK);
    for (int i = 0; i < 700; i++) {
        int64_t r;
        CU_ASSERT_EQUAL_FATAL(tmd_atom_table_push(&ctx, &src, &r), TMD_OK);
        fill_row(&src, r, i);
    }
    /* a block, then rows one by one (past several growths), then an empty range */
    CU_ASSERT_EQUAL_FATAL(tmd_atom_table_append(&ctx, &dst, &src, 100, 400), TMD_OK);
    for (int64_t k = 0; k < 700; k += 2) CU_ASSERT_EQUAL_FATAL(tmd_atom_table_append(&ctx, &dst, &src, k, k + 1), TMD_OK);
    CU_ASSERT_EQUAL(tmd_atom_table_append(&ctx, &dst, &src, 5, 5), TMD_OK);
    CU_ASSERT_EQUAL_FATAL(dst.n, 300 + 350);
    int ok = 1;
    for (int i = 0; i < 300; i++) ok &= row_is(&dst, i, 100 + i);
    for (int j = 0; j < 350; j++) ok &= row_is(&dst, 300 + j, 2 * j);
    CU_ASSERT(ok);
    /* different prob columns: refused, nothing appended */
    CU_ASSERT_EQUAL(tmd_atom_table_append(&ctx, &other, &src, 0, 10), TMD_ERR_ARG);
    CU_ASSERT_EQUAL(other.n, 0);
    tmd_error_clear(&ctx);
    tmd_atom_table_free(&src);
    tmd_atom_table_free(&dst);
    tmd_atom_table_free(&other);
}

int main(int argc, char **argv)
{
    return tmd_test_main(argc, argv, "table", (tmd_test_case[]){{"shrink keeps rows", test_shrink_keeps_rows},
                                                            {"append copies every column", test_append_copies_every_column},
                                                            {NULL, NULL}});
}
