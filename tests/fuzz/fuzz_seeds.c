/* Writes the seed corpora of the binary fuzz harnesses into DIR/<harness>/ (run at build
 * time; no binary fixtures in git):
 *   tiff/   tiny TIFFs of every flavour the reader supports (and a few it refuses): striped and
 *           tiled; none, LZW, Deflate, PackBits; u8, u16, f32, f64, signed and 12-bit samples;
 *           palette; RGB; multi-page; BigTIFF; separate planes.
 *   h5input/  edit scripts for fuzz_h5input (it builds the HDF5 file itself).
 * Usage: fuzz_seeds DIR */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <tiffio.h>

typedef struct {
    const char *name;
    int bigtiff, tiled, pages, bps, sf, spp, compression, palette, planar;
    int w, h;
} flavour;

static int write_tiff(const char *dir, const flavour *fl)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.tif", dir, fl->name);
    TIFF *t = TIFFOpen(path, fl->bigtiff ? "w8" : "w");
    if (!t) return -1;
    for (int p = 0; p < fl->pages; p++) {
        TIFFSetField(t, TIFFTAG_IMAGEWIDTH, fl->w);
        TIFFSetField(t, TIFFTAG_IMAGELENGTH, fl->h);
        TIFFSetField(t, TIFFTAG_BITSPERSAMPLE, fl->bps);
        TIFFSetField(t, TIFFTAG_SAMPLEFORMAT, fl->sf);
        TIFFSetField(t, TIFFTAG_SAMPLESPERPIXEL, fl->spp);
        TIFFSetField(t, TIFFTAG_PLANARCONFIG, fl->planar ? PLANARCONFIG_SEPARATE : PLANARCONFIG_CONTIG);
        TIFFSetField(t, TIFFTAG_COMPRESSION, fl->compression);
        TIFFSetField(t, TIFFTAG_PHOTOMETRIC,
                     fl->palette ? PHOTOMETRIC_PALETTE : (fl->spp == 3 ? PHOTOMETRIC_RGB : PHOTOMETRIC_MINISBLACK));
        TIFFSetField(t, TIFFTAG_XRESOLUTION, 1e8 / 0.12);
        TIFFSetField(t, TIFFTAG_YRESOLUTION, 1e8 / 0.12);
        TIFFSetField(t, TIFFTAG_RESOLUTIONUNIT, RESUNIT_CENTIMETER);
        if (fl->pages > 1) {
            TIFFSetField(t, TIFFTAG_SUBFILETYPE, FILETYPE_PAGE);
            TIFFSetField(t, TIFFTAG_PAGENUMBER, p, fl->pages);
        }
        if (fl->palette) {
            uint16_t map[3][256];
            for (int i = 0; i < 256; i++) map[0][i] = map[1][i] = map[2][i] = (uint16_t)(i * 257);
            TIFFSetField(t, TIFFTAG_COLORMAP, map[0], map[1], map[2]);
        }
        int bytes = (fl->bps + 7) / 8;
        int spp_plane = fl->planar ? 1 : fl->spp;
        int nplanes = fl->planar ? fl->spp : 1;
        if (fl->tiled) {
            TIFFSetField(t, TIFFTAG_TILEWIDTH, 16);
            TIFFSetField(t, TIFFTAG_TILELENGTH, 16);
            tmsize_t ts = TIFFTileSize(t);
            unsigned char *buf = calloc(1, (size_t)ts);
            for (int s = 0; s < nplanes; s++)
                for (int y = 0; y < fl->h; y += 16)
                    for (int x = 0; x < fl->w; x += 16) {
                        for (tmsize_t i = 0; i < ts; i++) buf[i] = (unsigned char)((x + y + i * 7 + p) & 0xff);
                        TIFFWriteTile(t, buf, (uint32_t)x, (uint32_t)y, 0, (uint16_t)s);
                    }
            free(buf);
        } else {
            TIFFSetField(t, TIFFTAG_ROWSPERSTRIP, 5);
            size_t row = (size_t)fl->w * (size_t)spp_plane * (size_t)bytes;
            if (fl->bps == 12) row = ((size_t)fl->w * 12 + 7) / 8;
            unsigned char *buf = calloc(1, row);
            for (int s = 0; s < nplanes; s++)
                for (int y = 0; y < fl->h; y++) {
                    for (size_t i = 0; i < row; i++) buf[i] = (unsigned char)((y * 3 + i + p) & 0xff);
                    if (fl->sf == SAMPLEFORMAT_IEEEFP && fl->bps == 32)
                        for (int x = 0; x < fl->w * spp_plane; x++) ((float *)buf)[x] = (float)(x + y) / 10.0f;
                    if (fl->sf == SAMPLEFORMAT_IEEEFP && fl->bps == 64)
                        for (int x = 0; x < fl->w * spp_plane; x++) ((double *)buf)[x] = (x == 3 && y == 2) ? NAN : x * 0.5;
                    TIFFWriteScanline(t, buf, (uint32_t)y, (uint16_t)s);
                }
            free(buf);
        }
        if (!TIFFWriteDirectory(t)) {
            TIFFClose(t);
            return -1;
        }
    }
    TIFFClose(t);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: fuzz_seeds DIR\n");
        return 2;
    }
    char dir[1024];
    mkdir(argv[1], 0755);
    snprintf(dir, sizeof dir, "%s/tiff", argv[1]);
    mkdir(dir, 0755);
    TIFFSetWarningHandler(NULL);
    const int U = SAMPLEFORMAT_UINT, I = SAMPLEFORMAT_INT, F = SAMPLEFORMAT_IEEEFP;
    const flavour fl[] = {
        {"u8_strips", 0, 0, 1, 8, U, 1, COMPRESSION_NONE, 0, 0, 24, 17},
        {"u16_strips_lzw", 0, 0, 1, 16, U, 1, COMPRESSION_LZW, 0, 0, 24, 17},
        {"u16_tiles_deflate", 0, 1, 1, 16, U, 1, COMPRESSION_ADOBE_DEFLATE, 0, 0, 40, 33},
        {"u8_tiles_packbits", 0, 1, 1, 8, U, 1, COMPRESSION_PACKBITS, 0, 0, 32, 32},
        {"f32_strips", 0, 0, 1, 32, F, 1, COMPRESSION_NONE, 0, 0, 16, 9},
        {"f64_strips_nan", 0, 0, 1, 64, F, 1, COMPRESSION_NONE, 0, 0, 8, 6},
        {"u8_palette", 0, 0, 1, 8, U, 1, COMPRESSION_NONE, 1, 0, 20, 10},
        {"u16_stack3", 0, 0, 3, 16, U, 1, COMPRESSION_NONE, 0, 0, 12, 12},
        {"u16_bigtiff_tiles", 1, 1, 2, 16, U, 1, COMPRESSION_LZW, 0, 0, 33, 20},
        {"i16_signed", 0, 0, 1, 16, I, 1, COMPRESSION_NONE, 0, 0, 10, 10},
        {"u8_rgb", 0, 0, 1, 8, U, 3, COMPRESSION_NONE, 0, 0, 10, 10},
        {"u8_rgb_planar", 0, 0, 1, 8, U, 3, COMPRESSION_NONE, 0, 1, 10, 10},
        {"u12_strips", 0, 0, 1, 12, U, 1, COMPRESSION_NONE, 0, 0, 10, 10},
    };
    int bad = 0;
    for (size_t i = 0; i < sizeof fl / sizeof fl[0]; i++)
        if (write_tiff(dir, &fl[i])) {
            fprintf(stderr, "fuzz_seeds: could not write %s\n", fl[i].name);
            bad = 1;
        }
    /* h5input edit scripts: each byte string is a recipe for fuzz_h5input's file builder. */
    snprintf(dir, sizeof dir, "%s/h5input", argv[1]);
    mkdir(dir, 0755);
    static const unsigned char recipes[][16] = {
        {0, 2, 0, 20, 30, 0, 0, 0, 0},  /* u8 2-D 20x30 */
        {1, 2, 1, 16, 16, 0, 0, 0, 0},  /* u16 2-D */
        {2, 3, 2, 3, 8, 8, 0, 0, 0},    /* f32 3-D 3x8x8 */
        {3, 3, 3, 2, 9, 7, 1, 0, 0},    /* f64 3-D, chunked */
        {4, 2, 2, 8, 8, 0, 0, 1, 0},    /* f32 with NaN */
        {5, 1, 0, 50, 0, 0, 0, 0, 0},   /* 1-D: refused */
        {6, 4, 1, 1, 2, 3, 4, 0, 0},    /* 4-D: refused */
        {7, 2, 5, 8, 8, 0, 0, 0, 0},    /* int32 */
        {8, 2, 6, 8, 8, 0, 0, 0, 0},    /* compound: refused */
    };
    for (size_t i = 0; i < sizeof recipes / sizeof recipes[0]; i++) {
        char path[1100];
        snprintf(path, sizeof path, "%s/recipe%02zu", dir, i);
        FILE *f = fopen(path, "wb");
        if (!f) return 1;
        fwrite(recipes[i], 1, sizeof recipes[i], f);
        fclose(f);
    }
    return bad;
}
