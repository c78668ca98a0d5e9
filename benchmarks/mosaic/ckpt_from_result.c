/* ckpt_from_result — a tile-pass checkpoint rebuilt from a result file, so that the stages
 * after the U-Net (classify, density, write) can be measured on a big mosaic without running
 * the U-Net again (`tmdflow run ... --resume`; benchmarks/mosaic/README.md).
 *
 *   ckpt_from_result RESULT.h5 CKPT_DIR TILE_PX WIDTH HEIGHT
 *
 * Writes CKPT_DIR/tile-<g>.bin (the format of src/pipeline/checkpoint.c) for every tile of the
 * TILE_PX grid over the WIDTH x HEIGHT image (1 frame; empty tiles too), from /atoms in the result's row order (the
 * canonical order: by tile, in the order the tile found them). The segmentation's six class
 * probabilities are not in the result; they are made from the eight species probabilities
 * (S added to S2's class, Se to Se2's, as tmd_classify reads them back), so the species vote
 * differs from the original run: this is a memory and time benchmark, not an accuracy one.
 * The manifest is not written (copy the one a real run writes). Serial. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tmd/io.h"
#include "tmd/table.h"

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    if (argc != 6) {
        fprintf(stderr, "usage: ckpt_from_result RESULT.h5 CKPT_DIR TILE_PX WIDTH HEIGHT\n");
        return 2;
    }
    tmd_ctx ctx;
    tmd_ctx_init(&ctx, MPI_COMM_SELF);
    hid_t f = H5I_INVALID_HID;
    int64_t n = 0, c = 0, tile = atoll(argv[3]);
    int32_t *fr = NULL;
    double *x = NULL, *y = NULL;
    int8_t *sub = NULL, *sp = NULL;
    float *prob = NULL, *inten = NULL;
    int64_t *site = NULL;
    int64_t np8 = 0;
    tmd_status st = tmd_h5_open_read(&ctx, argv[1], &f);
    if (!st) st = tmd_h5_read_rows(&ctx, f, "/atoms/frame", TMD_I32, &n, &c, (void **)&fr);
    if (!st) st = tmd_h5_read_rows(&ctx, f, "/atoms/x", TMD_F64, &n, &c, (void **)&x);
    if (!st) st = tmd_h5_read_rows(&ctx, f, "/atoms/y", TMD_F64, &n, &c, (void **)&y);
    if (!st) st = tmd_h5_read_rows(&ctx, f, "/atoms/sublattice", TMD_I8, &n, &c, (void **)&sub);
    if (!st) st = tmd_h5_read_rows(&ctx, f, "/atoms/species", TMD_I8, &n, &c, (void **)&sp);
    if (!st) st = tmd_h5_read_rows(&ctx, f, "/atoms/intensity", TMD_F32, &n, &c, (void **)&inten);
    if (!st) st = tmd_h5_read_rows(&ctx, f, "/atoms/site", TMD_I64, &n, &c, (void **)&site);
    if (!st) st = tmd_h5_read_rows(&ctx, f, "/atoms/prob", TMD_F32, &n, &np8, (void **)&prob);
    if (f >= 0) H5Fclose(f);
    if (st || np8 != TMD_SP_COUNT) {
        fprintf(stderr, "ckpt_from_result: %s\n", st ? ctx.err_msg : "expected 8 species probabilities");
        return 1;
    }
    int64_t ntx = (atoll(argv[4]) + tile - 1) / tile, nty = (atoll(argv[5]) + tile - 1) / tile;
    int64_t i = 0, files = 0;
    for (int64_t g = 0; g < ntx * nty; g++) {
        int64_t gy = g / ntx, gx = g % ntx, j = i;
        while (j < n && (int64_t)floor(y[j] + 0.5) / tile == gy && (int64_t)floor(x[j] + 0.5) / tile == gx) j++;
        int64_t k = j - i, sb = 0;
        int32_t np = TMD_NCLASSES, nl = 0;
        char path[4096];
        snprintf(path, sizeof path, "%s/tile-%08lld.bin", argv[2], (long long)g);
        FILE *o = fopen(path, "wb");
        if (!o) {
            perror(path);
            return 1;
        }
        fwrite("TMDCKPT1", 1, 8, o);
        fwrite(&g, 8, 1, o), fwrite(&k, 8, 1, o), fwrite(&np, 4, 1, o), fwrite(&nl, 4, 1, o), fwrite(&sb, 8, 1, o);
        fwrite(fr + i, 4, (size_t)k, o), fwrite(x + i, 8, (size_t)k, o), fwrite(y + i, 8, (size_t)k, o);
        fwrite(sub + i, 1, (size_t)k, o), fwrite(sp + i, 1, (size_t)k, o);
        for (int64_t a = i; a < j; a++) {
            const float *p = prob + a * TMD_SP_COUNT;
            float q[TMD_NCLASSES] = {p[0], p[1], p[2], p[3] + p[TMD_SP_S], p[4], p[5] + p[TMD_SP_SE]};
            fwrite(q, 4, TMD_NCLASSES, o);
        }
        fwrite(inten + i, 4, (size_t)k, o), fwrite(site + i, 8, (size_t)k, o);
        if (fclose(o)) {
            perror(path);
            return 1;
        }
        files++;
        i = j;
    }
    if (i != n) {
        fprintf(stderr, "ckpt_from_result: row %lld is not in tile order\n", (long long)i);
        return 1;
    }
    printf("%lld atoms in %lld tile files (grid %lld wide)\n", (long long)n, (long long)files, (long long)ntx);
    MPI_Finalize();
    return 0;
}
