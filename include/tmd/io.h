/* tmd/io.h — image input (TIFF, BigTIFF, multi-page stacks, HDF5/EMD datasets) and the
 * parallel HDF5 result writer, plus small serial helpers to read result files back.
 *
 * Role: every pixel tmdflow sees comes through tmd_reader, and every result it keeps goes
 * through tmd_writer. A rank reads only its own region: for TIFF only the strips/tiles that
 * overlap it are decoded, for HDF5 a hyperslab is read. Bad files are refused with a message
 * naming the file and what was found (never a crash, never a hang).
 *
 * Reading (not collective; each rank opens the file itself):
 *     tmd_reader *r = NULL;
 *     TMD_CHECK(tmd_reader_open(ctx, "stack.tif", &r));          // or "file.h5:/image"
 *     const tmd_image_info *info = tmd_reader_info(r);            // frames, height, width, ...
 *     float *buf = malloc(h * w * sizeof(float));                 // (h, w) row-major
 *     st = tmd_reader_read(ctx, r, frame, y0, x0, h, w, buf);     // region inside the frame
 *     tmd_reader_close(&r);
 *
 * Writing (collective over the writer's communicator; every rank calls every function in
 * the same order, with zero rows where it has nothing):
 *     tmd_writer *w = NULL;
 *     TMD_CHECK(tmd_writer_create(ctx, "R.h5", force, comm, &w)); // creates R.h5.tmp
 *     st = tmd_writer_rows(ctx, w, "/atoms/x", TMD_F64, n_local, 1, x); // offsets by MPI_Exscan
 *     st = tmd_writer_close(ctx, &w, st == TMD_OK);               // renames R.h5.tmp -> R.h5 only on success
 *
 * Conversion on read: samples become float32 as stored (uint8/16/32, int8/16/32, float32/64);
 * MINISWHITE is inverted (max - v for unsigned, -v otherwise); an 8-bit palette maps to the
 * grey luminance of its colour map (0..255); RGB becomes 0.299 R + 0.587 G + 0.114 B. A reader
 * is not thread-safe: one per thread. Memory: uncompressed strips are read row by row with
 * pread (no buffer beyond one row); compressed strips/tiles go through a cache of decoded
 * blocks sized to the largest region read (at most 256 MiB).
 * Failure (writer): every tmd_writer_* call agrees across ranks before and after its
 * collective HDF5 calls, so all ranks return the same status and message; a write that would
 * not fit on the file system is refused before it starts.
 *
 * Layout: images are (frames, height, width) float32 row-major; region buffers are (h, w).
 * Result datasets are the columns of DESIGN.md's result file; an N x K dataset is N rows of
 * K values, row-major. All global offsets and sizes are int64_t.
 * Ownership: the caller owns every buffer passed in; tmd_*_close frees the handle and sets
 * it to NULL (NULL is accepted). Arrays returned by tmd_h5_read_* are malloc'd; caller frees.
 */
#ifndef TMD_IO_H
#define TMD_IO_H

#include "tmd/core.h"

#include <hdf5.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Sample types of inputs and element types of result datasets. */
typedef enum {
    TMD_U8 = 1,
    TMD_U16,
    TMD_F32,
    TMD_F64,
    TMD_I8,
    TMD_I32,
    TMD_I64,
    TMD_I16,                 /* added: int16 inputs (converted to float32 on read) */
    TMD_U32,                 /* added: uint32 inputs (converted to float32 on read) */
} tmd_dtype;

const char *tmd_dtype_name(tmd_dtype t);
size_t tmd_dtype_size(tmd_dtype t);

/* ---- input --------------------------------------------------------------------------- */

typedef struct tmd_image_info {
    int64_t frames, height, width;
    tmd_dtype sample;        /* as stored: TMD_U8, TMD_U16, TMD_F32 or TMD_F64 */
    char format[16];         /* "TIFF", "BigTIFF", "HDF5" */
    char layout[96];         /* e.g. "striped 64 rows, LZW", "tiled 256x256", "chunked 1x512x512" */
    double pixel_size;       /* Angstrom per pixel from the file's metadata, 0 if unknown */
} tmd_image_info;

typedef struct tmd_reader tmd_reader;

/* Opens an input. `spec` is a TIFF path, or "FILE.h5:/path/to/dataset" for HDF5 (a bare
 * HDF5/EMD path is accepted too: /image if present, else a single Velox EMD image, else the
 * only 2-D/3-D dataset; otherwise the message lists the candidates). The format is decided by
 * the file's first bytes, not its name. Validates the header completely (every page's size,
 * sample format and codec; every strip/tile byte count against the file size) so that later
 * reads cannot run past the end of a truncated file. Not collective. */
tmd_status tmd_reader_open(tmd_ctx *ctx, const char *spec, tmd_reader **out);

const tmd_image_info *tmd_reader_info(const tmd_reader *r);

/* Reads rows y0..y0+h-1, columns x0..x0+w-1 of `frame` into out (h, w) float32, converting
 * from the stored sample type. The region must lie inside the frame (TMD_ERR_RANGE otherwise).
 * Non-finite float samples are an error naming the file, frame and pixel. Not collective. */
tmd_status tmd_reader_read(tmd_ctx *ctx, tmd_reader *r, int64_t frame, int64_t y0, int64_t x0, int64_t h, int64_t w,
                           float *out);

void tmd_reader_close(tmd_reader **r);

/* Writes a 2-D (frames == 1) or 3-D float32/uint16 image as a TIFF (BigTIFF if > 2 GB or
 * bigtiff != 0), striped, uncompressed, one page per frame. uint16 values are rounded and clamped
 * to 0..65535 (NaN -> 0). img is (frames, height, width) row-major. A failed write removes the
 * file. Used by the simulator and by tests. Serial. */
tmd_status tmd_tiff_write(tmd_ctx *ctx, const char *path, const float *img, int64_t frames, int64_t height,
                          int64_t width, tmd_dtype sample, int bigtiff);
/* As tmd_tiff_write, also TMD_U8 samples, and (pixel_size > 0, Angstrom) the pixel size stored the
 * ImageJ way (resolution in pixels per nm, "unit=nm"), which tmd_reader_open reads back. */
tmd_status tmd_tiff_write_ex(tmd_ctx *ctx, const char *path, const float *img, int64_t frames, int64_t height,
                             int64_t width, tmd_dtype sample, int bigtiff, double pixel_size);

/* ---- result file (parallel HDF5) --------------------------------------------------- */

typedef struct tmd_writer tmd_writer;

/* Collective. Creates `path`.tmp with the MPI-IO driver and collective metadata. If `path`
 * exists and !force: TMD_ERR_EXISTS (checked on rank 0, agreed by all). The communicator
 * is duplicated; the writer frees its copy. */
tmd_status tmd_writer_create(tmd_ctx *ctx, const char *path, int force, MPI_Comm comm, tmd_writer **out);

/* Collective. Writes this rank's n_local rows of a column dataset (n_local x ncols elements,
 * row-major); rows of rank r follow those of ranks < r (offsets by MPI_Exscan). Creates the
 * intermediate groups. The dataset is chunked and 1-D when ncols == 1, else N x ncols.
 * n_local may be 0 (the rank takes part with an empty selection). */
tmd_status tmd_writer_rows(tmd_ctx *ctx, tmd_writer *w, const char *dset, tmd_dtype type, int64_t n_local,
                           int64_t ncols, const void *data);

/* Collective. A column dataset written in pieces: _create makes it with `total` rows (every
 * rank passes the same total and ncols; chunking as tmd_writer_rows), then each _part call
 * writes this rank's n_local rows at global row `offset` (ranks' pieces must not overlap;
 * n_local may be 0). Used when a table is streamed to the file band by band. */
tmd_status tmd_writer_rows_create(tmd_ctx *ctx, tmd_writer *w, const char *dset, tmd_dtype type, int64_t total,
                                  int64_t ncols);
tmd_status tmd_writer_rows_part(tmd_ctx *ctx, tmd_writer *w, const char *dset, tmd_dtype type, int64_t offset,
                                int64_t n_local, int64_t ncols, const void *data);

/* Collective. Writes an N-d array (rank <= 4) of which this rank holds the box
 * [start, start + count) (count may be all zero). `chunk` (may be NULL) sets chunk sizes;
 * match them to tiles so each chunk has one writer. */
tmd_status tmd_writer_array(tmd_ctx *ctx, tmd_writer *w, const char *dset, tmd_dtype type, int ndims,
                            const int64_t *global_dims, const int64_t *start, const int64_t *count, const int64_t *chunk,
                            const void *data);

/* Collective. Attributes on an object ("/" or a group/dataset path created before); every
 * rank must pass the same value. */
tmd_status tmd_writer_attr_str(tmd_ctx *ctx, tmd_writer *w, const char *obj, const char *name, const char *value);
tmd_status tmd_writer_attr_f64(tmd_ctx *ctx, tmd_writer *w, const char *obj, const char *name, const double *v, int n);
tmd_status tmd_writer_attr_i64(tmd_ctx *ctx, tmd_writer *w, const char *obj, const char *name, const int64_t *v, int n);

/* Collective. Closes the file. If ok (and every rank agrees it is ok), renames path.tmp to
 * path; otherwise removes path.tmp (unless keep_tmp, for checkpoints). Frees *w, sets NULL.
 * Returns the first error on any rank. Accepts *w == NULL. */
tmd_status tmd_writer_close(tmd_ctx *ctx, tmd_writer **w, int ok);
tmd_status tmd_writer_close_keep(tmd_ctx *ctx, tmd_writer **w, int ok, int keep_tmp);

/* The HDF5 file id, for modules that need something the writer does not offer. The file is
 * open with the MPI-IO driver and collective metadata: every rank must make the same HDF5
 * calls, agree on failure (tmd_agree) before each collective call, and close every object it
 * opened before tmd_writer_close (the MPI-IO driver refuses to close a file with open objects). */
hid_t tmd_writer_file(const tmd_writer *w);

/* ---- reading results back (serial, any rank) ---------------------------------------- */

/* Opens an HDF5 file read-only (serial driver). Returns H5I_INVALID_HID and records an error
 * naming the file if it cannot. Close with H5Fclose. */
tmd_status tmd_h5_open_read(tmd_ctx *ctx, const char *path, hid_t *out);

/* 1 if the dataset exists. */
int tmd_h5_exists(hid_t file, const char *dset);

/* Reads a whole dataset of N rows x K cols (K = 1 for 1-D) converted to `type`. *data is
 * malloc'd (caller frees). A missing dataset or rank > 2 is an error naming file and path. */
tmd_status tmd_h5_read_rows(tmd_ctx *ctx, hid_t file, const char *dset, tmd_dtype type, int64_t *nrows,
                            int64_t *ncols, void **data);

/* Reads attributes; a missing one is an error naming it. *value (string) is malloc'd. */
tmd_status tmd_h5_read_attr_str(tmd_ctx *ctx, hid_t file, const char *obj, const char *name, char **value);
tmd_status tmd_h5_read_attr_f64(tmd_ctx *ctx, hid_t file, const char *obj, const char *name, double *v, int n);
tmd_status tmd_h5_read_attr_i64(tmd_ctx *ctx, hid_t file, const char *obj, const char *name, int64_t *v, int n);

/* Shape of a dataset: *ndims (0..4) and dims[0..ndims-1] (unused entries set to 1). A missing
 * dataset or more than 4 dims is an error naming file and path. */
tmd_status tmd_h5_dims(tmd_ctx *ctx, hid_t file, const char *dset, int *ndims, int64_t dims[4]);

/* Reads the box [start, start + count) of an N-d dataset (N = its rank, <= 4) into the
 * caller's buffer `out` (prod(count) elements, row-major), converted to `type`. */
tmd_status tmd_h5_read_box(tmd_ctx *ctx, hid_t file, const char *dset, tmd_dtype type, const int64_t *start,
                           const int64_t *count, void *out);

#ifdef __cplusplus
}
#endif
#endif
