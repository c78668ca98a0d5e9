/* libFuzzer harness: the configuration parser (INI text and files through inih, key=value
 * overrides), src/core/config.c.
 *
 * The first input byte picks the entry point; the rest is the text:
 *   0  INI text            tmd_config_from_text
 *   1  key=value lines     tmd_config_set_kv, one call per line (as on the command line)
 *   2  INI file            tmd_config_load_file on a temporary file holding the text
 * Besides "no crash, no sanitizer report", it checks properties that must hold for every
 * input: a failure returns a negative code and records a non-empty message, the same code
 * as the context holds; a success leaves a configuration whose INI text parses back to the
 * same text (values stay typed and in range). Any violation aborts, which libFuzzer reports.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tmd/config.h"

static void quiet_ctx(tmd_ctx *ctx)
{
    memset(ctx, 0, sizeof *ctx);
    ctx->nranks = 1;
    ctx->log_level = TMD_LOG_QUIET;
    ctx->err_rank = -1;
}

static void check_failure(const tmd_ctx *ctx, tmd_status st)
{
    if (st >= 0) return;
    if (ctx->err_code != st || ctx->err_msg[0] == 0) {
        fprintf(stderr, "fuzz_config: status %d but context holds code %d, message '%s'\n", st, ctx->err_code,
                ctx->err_msg);
        abort();
    }
}

/* A configuration that parsed must survive to_text -> from_text -> to_text unchanged. */
static void check_roundtrip(const tmd_config *cfg)
{
    tmd_ctx ctx;
    quiet_ctx(&ctx);
    char *t1 = NULL, *t2 = NULL;
    tmd_config back;
    if (tmd_config_to_text(&ctx, cfg, &t1)) abort();
    tmd_config_defaults(&back);
    tmd_status st = tmd_config_from_text(&ctx, &back, t1, "round trip");
    if (st) {
        fprintf(stderr, "fuzz_config: own output does not parse back: %s\n--- text ---\n%s\n", ctx.err_msg, t1);
        abort();
    }
    if (tmd_config_to_text(&ctx, &back, &t2)) abort();
    if (strcmp(t1, t2)) {
        fprintf(stderr, "fuzz_config: round trip changed the configuration\n--- first ---\n%s\n--- second ---\n%s\n", t1, t2);
        abort();
    }
    free(t1);
    free(t2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    int mode = data[0] % 3;
    char *text = malloc(size);
    if (!text) return 0;
    memcpy(text, data + 1, size - 1);
    text[size - 1] = 0;

    tmd_ctx ctx;
    quiet_ctx(&ctx);
    tmd_config cfg;
    tmd_config_defaults(&cfg);
    tmd_status st = TMD_OK;

    if (mode == 0) {
        st = tmd_config_from_text(&ctx, &cfg, text, "fuzz.ini");
    } else if (mode == 1) {
        char *save = NULL;
        for (char *line = strtok_r(text, "\n", &save); line && !st; line = strtok_r(NULL, "\n", &save))
            st = tmd_config_set_kv(&ctx, &cfg, line, "command line");
    } else {
        char path[64];
        snprintf(path, sizeof path, "/dev/shm/tmd_fuzz_config_%d.ini", (int)getpid());
        FILE *f = fopen(path, "wb");
        if (f) {
            fwrite(data + 1, 1, size - 1, f); /* raw bytes, NULs included */
            fclose(f);
            st = tmd_config_load_file(&ctx, &cfg, path);
            unlink(path);
        }
    }
    check_failure(&ctx, st);
    if (st == TMD_OK) check_roundtrip(&cfg);
    free(text);
    return 0;
}
