/* Core: rank agreement on failure, typed configuration keys. */
/* TMD_TEST_RANKS: 1 2 4 */
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "tmd/config.h"

/* The last rank fails; every rank must come out with that rank's code and message. */
static void test_agree_broadcasts_the_failing_ranks_message(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    tmd_status st = TMD_OK;
    if (tmd_test_rank == tmd_test_size - 1) st = TMD_FAIL(&ctx, TMD_ERR_FORMAT, "tile %d of file x.tif is bad", 7);
    st = tmd_agree(&ctx, tmd_test_comm, st);
    CU_ASSERT_EQUAL(st, TMD_ERR_FORMAT);
    CU_ASSERT_EQUAL(ctx.err_rank, tmd_test_size - 1);
    CU_ASSERT_STRING_EQUAL(ctx.err_msg, "tile 7 of file x.tif is bad");
    /* and when nobody fails, everybody passes */
    tmd_error_clear(&ctx);
    CU_ASSERT_EQUAL(tmd_agree(&ctx, tmd_test_comm, TMD_OK), TMD_OK);
}

/* A real error on a high rank wins over an interruption on a lower rank. */
static void test_agree_prefers_errors_over_interruptions(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    volatile sig_atomic_t flag = (tmd_test_rank == 0);
    ctx.stop_flag = &flag;
    tmd_status st = TMD_OK;
    if (tmd_test_size > 1 && tmd_test_rank == tmd_test_size - 1) st = TMD_FAIL(&ctx, TMD_ERR_IO, "disk full");
    st = tmd_agree(&ctx, tmd_test_comm, st);
    if (tmd_test_size > 1) {
        CU_ASSERT_EQUAL(st, TMD_ERR_IO);
        CU_ASSERT_STRING_EQUAL(ctx.err_msg, "disk full");
    } else {
        CU_ASSERT_EQUAL(st, TMD_ERR_INTERRUPTED);
    }
}

static void test_config_unknown_key_suggests_closest(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    tmd_config cfg;
    tmd_config_defaults(&cfg);
    CU_ASSERT_EQUAL(tmd_config_set_kv(&ctx, &cfg, "atom_treshold=0.3", "command line"), TMD_ERR_CONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(ctx.err_msg, "'atom_treshold'"));
    CU_ASSERT_PTR_NOT_NULL(strstr(ctx.err_msg, "did you mean 'atom_threshold'"));
}

static void test_config_values_are_typed_and_range_checked(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    tmd_config cfg;
    tmd_config_defaults(&cfg);
    CU_ASSERT_EQUAL(cfg.tile, 384);
    CU_ASSERT_EQUAL(tmd_config_set_kv(&ctx, &cfg, "tile=100000", "cl"), TMD_ERR_CONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(ctx.err_msg, "out of range"));
    tmd_error_clear(&ctx);
    CU_ASSERT_EQUAL(tmd_config_set_kv(&ctx, &cfg, "tile=12x", "cl"), TMD_ERR_CONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(ctx.err_msg, "expected an integer"));
    tmd_error_clear(&ctx);
    CU_ASSERT_EQUAL(tmd_config_set_kv(&ctx, &cfg, "atom_threshold=nan", "cl"), TMD_ERR_CONFIG);
    tmd_error_clear(&ctx);
    CU_ASSERT_EQUAL(tmd_config_set_kv(&ctx, &cfg, "save_maps=maybe", "cl"), TMD_ERR_CONFIG);
    tmd_error_clear(&ctx);
    CU_ASSERT_EQUAL(tmd_config_set_kv(&ctx, &cfg, "tile = 256", "cl"), TMD_OK);
    CU_ASSERT_EQUAL(cfg.tile, 256);
    CU_ASSERT_EQUAL(tmd_config_set_kv(&ctx, &cfg, "save_maps=true", "cl"), TMD_OK);
    CU_ASSERT_EQUAL(cfg.save_maps, 1);
}

/* INI file: sections are ignored, errors name file:line and key; text round-trips. */
static void test_config_file_and_text_round_trip(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    char path[600];
    snprintf(path, sizeof path, "%s/r%d.ini", tmd_test_dir(), tmd_test_rank);
    FILE *f = fopen(path, "w");
    fprintf(f, "# comment\n[decomposition]\ntile = 200\n\n[atoms]\natom_threshold = 0.42\n");
    fclose(f);
    tmd_config cfg, back;
    tmd_config_defaults(&cfg);
    CU_ASSERT_EQUAL(tmd_config_load_file(&ctx, &cfg, path), TMD_OK);
    CU_ASSERT_EQUAL(cfg.tile, 200);
    CU_ASSERT_DOUBLE_EQUAL(cfg.atom_threshold, 0.42, 1e-12);
    char *text = NULL;
    CU_ASSERT_EQUAL(tmd_config_to_text(&ctx, &cfg, &text), TMD_OK);
    tmd_config_defaults(&back);
    CU_ASSERT_EQUAL(tmd_config_from_text(&ctx, &back, text, "attr"), TMD_OK);
    CU_ASSERT_EQUAL(memcmp(&cfg, &back, sizeof cfg), 0);
    free(text);

    f = fopen(path, "w");
    fprintf(f, "[atoms]\n\nhalo = -5\n");
    fclose(f);
    CU_ASSERT_EQUAL(tmd_config_load_file(&ctx, &cfg, path), TMD_ERR_CONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(ctx.err_msg, ":3: key 'halo'"));
    tmd_error_clear(&ctx);
    CU_ASSERT_EQUAL(tmd_config_load_file(&ctx, &cfg, "/nonexistent/x.ini"), TMD_ERR_IO);
    CU_ASSERT_PTR_NOT_NULL(strstr(ctx.err_msg, "/nonexistent/x.ini"));
}

static void test_size_overflow_is_caught(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    size_t out;
    CU_ASSERT_EQUAL(tmd_mul_size(&ctx, SIZE_MAX / 2, 3, &out, "image"), TMD_ERR_RANGE);
    CU_ASSERT_EQUAL(tmd_mul_size(&ctx, 1000, 1000, &out, "image"), TMD_OK);
    CU_ASSERT_EQUAL(out, 1000000u);
}

/* docs/configuration.md is generated from the key table; this fails when they drift apart.
 * Regenerate with: TMDFLOW_UPDATE_DOCS=1 ctest -R test_core_np1 */
static void test_configuration_doc_matches_key_table(void)
{
    if (tmd_test_rank != 0) return;
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    const char *doc = TMD_SOURCE_DIR "/docs/configuration.md";
    if (getenv("TMDFLOW_UPDATE_DOCS")) CU_ASSERT_EQUAL_FATAL(tmd_config_write_markdown(&ctx, doc), TMD_OK);
    const char *fresh = tmd_test_path("configuration.md");
    CU_ASSERT_EQUAL_FATAL(tmd_config_write_markdown(&ctx, fresh), TMD_OK);
    char *a = NULL, *b = NULL;
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "cat '%s'", doc);
    tmd_test_run(cmd, &a);
    snprintf(cmd, sizeof cmd, "cat '%s'", fresh);
    tmd_test_run(cmd, &b);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    if (strcmp(a, b))
        fprintf(stderr, "docs/configuration.md is stale: TMDFLOW_UPDATE_DOCS=1 ctest -R test_core_np1\n");
    CU_ASSERT_STRING_EQUAL(a, b);
    free(a);
    free(b);
}

int main(int argc, char **argv)
{
    return tmd_test_main(argc, argv, "core",
                         (tmd_test_case[]){{"agree broadcasts the failing rank's message", test_agree_broadcasts_the_failing_ranks_message},
                                           {"agree prefers errors over interruptions", test_agree_prefers_errors_over_interruptions},
                                           {"unknown key suggests the closest", test_config_unknown_key_suggests_closest},
                                           {"values are typed and range-checked", test_config_values_are_typed_and_range_checked},
                                           {"INI file and text round trip", test_config_file_and_text_round_trip},
                                           {"size overflow is caught", test_size_overflow_is_caught},
                                           {"configuration doc matches the key table", test_configuration_doc_matches_key_table},
                                           {NULL, NULL}});
}
