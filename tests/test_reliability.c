/* Reliability: regression tests for bugs that fuzzing found (tests/fuzz/, docs/reliability.md).
 * Each case names the harness and the reproducer it came from. Serial (parsers are per rank). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "tmd/config.h"

/* fuzz_config, crash-94bfd7ea: "classifier_model =;a" was accepted, but the configuration
 * text written to the result file ("classifier_model = ;a") reads back as an empty value
 * (inih takes "; a" for a comment). Values that cannot round-trip are refused now. */
static void test_config_string_values_round_trip_or_are_refused(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    tmd_config cfg;
    tmd_config_defaults(&cfg);
    CU_ASSERT_EQUAL(tmd_config_from_text(&ctx, &cfg, "classifier_model =;a\n", "x.ini"), TMD_ERR_CONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(ctx.err_msg, "x.ini:1"));
    CU_ASSERT_PTR_NOT_NULL(strstr(ctx.err_msg, "comment"));
    tmd_error_clear(&ctx);
    /* a line break in a command-line value would inject a second key into the config text */
    CU_ASSERT_EQUAL(tmd_config_set(&ctx, &cfg, "unet_model", "a.h5\ntile = 64", "command line"), TMD_ERR_CONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(ctx.err_msg, "control character"));
    tmd_error_clear(&ctx);
    /* a ';' inside a name is fine and survives */
    CU_ASSERT_EQUAL(tmd_config_set(&ctx, &cfg, "unet_model", "run;3/unet.h5", "command line"), TMD_OK);
    char *text = NULL;
    CU_ASSERT_EQUAL(tmd_config_to_text(&ctx, &cfg, &text), TMD_OK);
    tmd_config back;
    tmd_config_defaults(&back);
    CU_ASSERT_EQUAL(tmd_config_from_text(&ctx, &back, text, "round trip"), TMD_OK);
    CU_ASSERT_STRING_EQUAL(back.unet_model, "run;3/unet.h5");
    free(text);
}

/* inih reads lines into a 200-byte buffer and parsed the rest of a longer line as a line of
 * its own: a long model path could smuggle in "tile=99". Long lines are whole values now,
 * and long paths survive the round trip through the config attribute. */
static void test_config_long_lines_are_not_split(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    tmd_config cfg;
    tmd_config_defaults(&cfg);
    char line[700];
    int n = snprintf(line, sizeof line, "unet_model = /");
    memset(line + n, 'a', 190);
    snprintf(line + n + 190, sizeof line - (size_t)n - 190, "tile=99\n[atoms]\n atom_threshold = 0.4 ; comment\n");
    CU_ASSERT_EQUAL(tmd_config_from_text(&ctx, &cfg, line, "long.ini"), TMD_OK);
    CU_ASSERT_EQUAL(cfg.tile, 384);
    CU_ASSERT_EQUAL(strlen(cfg.unet_model), 198u);
    CU_ASSERT_DOUBLE_EQUAL(cfg.atom_threshold, 0.4, 1e-12);

    /* a 600-character path, written to the config text and read back */
    char path[601];
    memset(path, 'b', 600);
    path[0] = '/';
    path[600] = 0;
    CU_ASSERT_EQUAL(tmd_config_set(&ctx, &cfg, "autoencoder_model", path, "command line"), TMD_OK);
    char *text = NULL;
    CU_ASSERT_EQUAL(tmd_config_to_text(&ctx, &cfg, &text), TMD_OK);
    tmd_config back;
    tmd_config_defaults(&back);
    CU_ASSERT_EQUAL(tmd_config_from_text(&ctx, &back, text, "round trip"), TMD_OK);
    CU_ASSERT_STRING_EQUAL(back.autoencoder_model, path);
    free(text);

    /* the same through a file, plus a long line that is not key = value */
    const char *file = tmd_test_path("long.ini");
    FILE *f = fopen(file, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fprintf(f, "[models]\nunet_model = %s\n", path);
    for (int i = 0; i < 300; i++) fputc('x', f);
    fputc('\n', f);
    fclose(f);
    tmd_error_clear(&ctx);
    CU_ASSERT_EQUAL(tmd_config_load_file(&ctx, &cfg, file), TMD_ERR_CONFIG);
    CU_ASSERT_STRING_EQUAL(cfg.unet_model, path);
    CU_ASSERT_PTR_NOT_NULL(strstr(ctx.err_msg, "long.ini:3"));
}

/* A binary file given as configuration is refused with a message, not half-parsed. */
static void test_config_binary_file_is_refused(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    tmd_config cfg;
    tmd_config_defaults(&cfg);
    const char *file = tmd_test_path("binary.ini");
    FILE *f = fopen(file, "wb");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fwrite("tile = 128\nII*\0\x08\0\0\0", 1, 19, f);
    fclose(f);
    CU_ASSERT_EQUAL(tmd_config_load_file(&ctx, &cfg, file), TMD_ERR_CONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(ctx.err_msg, "binary.ini:2"));
    CU_ASSERT_PTR_NOT_NULL(strstr(ctx.err_msg, "NUL"));
}

int main(int argc, char **argv)
{
    return tmd_test_main(argc, argv, "reliability",
                         (tmd_test_case[]){{"config string values round-trip or are refused",
                                            test_config_string_values_round_trip_or_are_refused},
                                           {"config long lines are not split", test_config_long_lines_are_not_split},
                                           {"config binary file is refused", test_config_binary_file_is_refused},
                                           {0}});
}
