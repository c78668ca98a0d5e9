/* Private helpers shared by the files of the io module (not installed, not public). */
#ifndef TMD_IO_INTERNAL_H
#define TMD_IO_INTERNAL_H

#include "tmd/io.h"

#include <stdio.h>

/* Turns off HDF5's automatic error-stack printing for this thread (idempotent, cheap). Every
 * io entry point that calls HDF5 calls it first: failures become tmdflow messages instead. */
void tmd_io_h5_quiet(void);

/* Writes the innermost (most specific) HDF5 error description of the current error stack into
 * buf, e.g. "unable to open file: No such file or directory"; "" if the stack is empty. */
void tmd_io_h5_errmsg(char *buf, size_t n);

/* Angstrom per unit of a length unit as image metadata spells it (ImageJ's "unit=", a
 * Berkeley EMD dim vector's "units"; brackets, underscores and spaces ignored, so "[n_m]" is
 * nm): A / Å / angstrom, nm / nanometer, pm, m, um / µm / micron. 0 for anything else,
 * uncalibrated ones ("px", "pixel") included. */
double tmd_io_angstrom_per_unit(const char *unit);

/* HDF5 native memory type of a tmd_dtype, or H5I_INVALID_HID. Not to be closed. */
hid_t tmd_io_h5_native(tmd_dtype t);

/* Size of the file at path in bytes, or -1 (errno set). */
int64_t tmd_io_file_size(const char *path);

/* Installs process-wide libtiff handlers that drop messages (the per-file handlers set
 * through TIFFOpenOptions capture them into the reader/writer instead). Idempotent. */
void tmd_io_tiff_quiet(void);


/* ---- the reader (shared by reader.c, reader_tiff.c, reader_h5.c) ---------------------- */

#include <limits.h>
#include <tiffio.h>

enum { TMD_READER_TIFF = 1, TMD_READER_H5 = 2 };

/* Conversion of a stored sample to float32 grey. */
enum {
    TMD_CONV_PLAIN = 0,      /* value as stored */
    TMD_CONV_INVERT = 1,     /* MINISWHITE: max - value (integers), -value (floats) */
    TMD_CONV_PALETTE = 2,    /* 8-bit index -> grey luminance of the colormap (0..255) */
    TMD_CONV_RGB = 3         /* contiguous RGB(A): luminance 0.299 R + 0.587 G + 0.114 B */
};

struct tmd_reader {
    int kind;                     /* TMD_READER_* */
    tmd_image_info info;
    char path[PATH_MAX];          /* the file */
    char dsetname[512];           /* HDF5 dataset path ("" for TIFF) */
    char msg[512];                /* last libtiff message captured by the handler */
    /* TIFF */
    TIFF *tif;
    uint64_t *dir_offset;         /* (frames) IFD offset of each page, for O(1) page switches */
    int64_t cur_frame;            /* page libtiff currently has loaded */
    int tiled;
    int64_t block_h, block_w;     /* strip: rows_per_strip x width; tile: tile_h x tile_w */
    int64_t blocks_across;        /* tiles per row (1 for strips) */
    int spp;                      /* samples per pixel (contiguous) */
    int conv;                     /* TMD_CONV_* */
    tmd_dtype stored;             /* sample type as stored (int16 etc. included) */
    float palette[256];           /* grey value of each index when conv == PALETTE */
    uint8_t *scratch;             /* uncompressed strips: one scanline; else unused */
    size_t scratch_size;          /* bytes of one decoded strip/tile (or scanline) */
    /* Decoded strips/tiles, least recently used evicted. Slots are added (never freed before
     * close) up to what one region needs, within TMD_IO_CACHE_BYTES, so tile-by-tile reading
     * decodes each compressed strip about once per tile row, not once per tile. */
    struct tmd_io_block {
        int64_t frame, block;     /* -1: empty */
        uint64_t used;            /* clock value of the last use */
        uint8_t *buf;             /* (scratch_size) bytes */
    } *cache;
    int ncache;
    uint64_t clock;
    /* HDF5 */
    hid_t file, dset, fspace;
    int h5rank;                   /* 2 or 3 */
    int frames_last;              /* 1: stored (H, W, T) as Velox EMD does */
    /* ImageJ stacks beyond 4 GiB: one IFD, frames stored back to back after page 0's data. */
    uint64_t raw_base, raw_frame_bytes;   /* raw_frame_bytes == 0: not such a stack */
};

tmd_status tmd_io_tiff_open(tmd_ctx *ctx, tmd_reader *r);
tmd_status tmd_io_tiff_read(tmd_ctx *ctx, tmd_reader *r, int64_t frame, int64_t y0, int64_t x0, int64_t h, int64_t w,
                            float *out);
void tmd_io_tiff_close(tmd_reader *r);
tmd_status tmd_io_h5_open(tmd_ctx *ctx, tmd_reader *r);
tmd_status tmd_io_h5_read(tmd_ctx *ctx, tmd_reader *r, int64_t frame, int64_t y0, int64_t x0, int64_t h, int64_t w,
                          float *out);
void tmd_io_h5_close(tmd_reader *r);

/* Largest accepted frame side and frame count: beyond these a header is taken as corrupt. */
#define TMD_IO_MAX_SIDE ((int64_t)1 << 24)
#define TMD_IO_MAX_FRAMES ((int64_t)1 << 24)
/* Memory a reader may spend on decoded strips/tiles (at least one block is always kept). */
#define TMD_IO_CACHE_BYTES ((size_t)256 << 20)

#endif
