/* libFuzzer harness: the TIFF reader (src/io/reader_tiff.c through tmd_reader_open/read):
 * libtiff plus tmdflow's own checks of sizes, tiles, strips, byte counts, sample formats,
 * palettes, multi-page stacks and BigTIFF.
 *
 * The input bytes are written to a file and opened as an image. If the reader accepts it,
 * every frame (at most 8) is read in a few regions: the whole frame when it is small, else
 * its corners and a middle band, and a region that straddles the tile/strip grid. Property:
 * open and read either succeed or fail with a negative status and a message; no sanitizer
 * report, no hang (libFuzzer -timeout), no allocation beyond what the header justifies
 * (-malloc_limit_mb). Seeds: tiny TIFFs of every flavour, made by fuzz_seeds at build time.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tmd/io.h"

static char g_path[64];

static void quiet_ctx(tmd_ctx *ctx)
{
    memset(ctx, 0, sizeof *ctx);
    ctx->nranks = 1;
    ctx->log_level = TMD_LOG_QUIET;
    ctx->err_rank = -1;
}

static void check(const tmd_ctx *ctx, tmd_status st, const char *what)
{
    if (st < 0 && (ctx->err_code != st || ctx->err_msg[0] == 0)) {
        fprintf(stderr, "fuzz_tiff: %s failed with %d but the context holds %d '%s'\n", what, st, ctx->err_code,
                ctx->err_msg);
        abort();
    }
    if (st > 0) abort();
}

static void read_region(tmd_reader *r, int64_t f, int64_t y, int64_t x, int64_t h, int64_t w)
{
    if (h <= 0 || w <= 0) return;
    float *buf = malloc((size_t)(h * w) * sizeof(float));
    if (!buf) return;
    tmd_ctx ctx;
    quiet_ctx(&ctx);
    tmd_status st = tmd_reader_read(&ctx, r, f, y, x, h, w, buf);
    check(&ctx, st, "read");
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!g_path[0]) snprintf(g_path, sizeof g_path, "/dev/shm/tmd_fuzz_tiff_%d.tif", (int)getpid());
    FILE *f = fopen(g_path, "wb");
    if (!f) return 0;
    fwrite(data, 1, size, f);
    fclose(f);

    tmd_ctx ctx;
    quiet_ctx(&ctx);
    tmd_reader *r = NULL;
    tmd_status st = tmd_reader_open(&ctx, g_path, &r);
    check(&ctx, st, "open");
    if (st == TMD_OK) {
        const tmd_image_info *in = tmd_reader_info(r);
        if (!in || in->frames < 1 || in->height < 1 || in->width < 1) abort();
        int64_t H = in->height, W = in->width;
        int64_t nf = in->frames < 8 ? in->frames : 8;
        for (int64_t t = 0; t < nf; t++) {
            if (H * W <= 256 * 256) {
                read_region(r, t, 0, 0, H, W);
            } else {
                int64_t bh = H < 64 ? H : 64, bw = W < 64 ? W : 64;
                read_region(r, t, 0, 0, bh, bw);
                read_region(r, t, H - bh, W - bw, bh, bw);
                read_region(r, t, H / 2, 0, 1, W < 4096 ? W : 4096);
                read_region(r, t, H / 3, W / 3, bh, bw);
            }
        }
        /* out-of-range requests must be refused, not read */
        tmd_ctx c2;
        quiet_ctx(&c2);
        float one;
        if (tmd_reader_read(&c2, r, in->frames, 0, 0, 1, 1, &one) == TMD_OK) abort();
        quiet_ctx(&c2);
        if (tmd_reader_read(&c2, r, 0, H, 0, 1, 1, &one) == TMD_OK) abort();
    } else if (r) {
        abort(); /* a failed open must not hand out a reader */
    }
    tmd_reader_close(&r);
    unlink(g_path);
    return 0;
}
