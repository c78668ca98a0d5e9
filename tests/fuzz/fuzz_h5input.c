/* libFuzzer harness: the HDF5 image input (src/io/reader_h5.c through tmd_reader_open/read
 * with "FILE.h5:/path" and bare FILE.h5 specs), structure-aware.
 *
 * Byte-level fuzzing of HDF5 files mostly tests libhdf5's parser (not hardened against
 * hostile files in 1.10; see docs/reliability.md). This harness builds a well-formed HDF5
 * file from a recipe in the input and so reaches tmdflow's own checks:
 *   [0] variant  [1] rank 0-4 (0 = scalar)  [2] element type: u8 u16 f32 f64 i8 i32 u64 i16,
 *   compound, string, 12-bit integer, enum, array  [3..6] dims (0-253 as is, 254 = 2^31,
 *   255 = 2^40; datasets over 2^16 elements are chunked and left unwritten = sparse)
 *   [7] flags: 1 chunked, 2 a NaN, 4 an Inf, 8 deflate, 16 dataset at /data/img instead of
 *   /image, 32 a second 2-D dataset, 64 a pixel_size attribute of the wrong type, 128
 *   unlimited max dims  [8] spec: FILE:/image, bare FILE, FILE:/missing, FILE:/ (a group),
 *   FILE:/data/img, FILE:image (no slash), FILE: (empty path)
 * Every accepted input is read in a few regions (whole frame when small, corners, a band);
 * out-of-range requests must be refused. Property: success, or a negative status with a
 * message; no sanitizer report, no hang, no allocation the header does not justify.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hdf5.h>

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
        fprintf(stderr, "fuzz_h5input: %s failed with %d but the context holds %d '%s'\n", what, st, ctx->err_code,
                ctx->err_msg);
        abort();
    }
    if (st > 0) abort();
}

static hsize_t dim_of(uint8_t b)
{
    if (b == 254) return (hsize_t)1 << 31;
    if (b == 255) return (hsize_t)1 << 40;
    return b;
}

/* The element type for recipe byte t (caller closes non-native types with H5Tclose). */
static hid_t make_type(uint8_t t, int *owned)
{
    *owned = 0;
    switch (t % 13) {
    case 0: return H5T_NATIVE_UINT8;
    case 1: return H5T_NATIVE_UINT16;
    case 2: return H5T_NATIVE_FLOAT;
    case 3: return H5T_NATIVE_DOUBLE;
    case 4: return H5T_NATIVE_INT8;
    case 5: return H5T_NATIVE_INT32;
    case 6: return H5T_NATIVE_UINT64;
    case 7: return H5T_NATIVE_INT16;
    case 8: {
        hid_t c = H5Tcreate(H5T_COMPOUND, 8);
        H5Tinsert(c, "re", 0, H5T_NATIVE_FLOAT);
        H5Tinsert(c, "im", 4, H5T_NATIVE_FLOAT);
        *owned = 1;
        return c;
    }
    case 9: {
        hid_t s = H5Tcopy(H5T_C_S1);
        H5Tset_size(s, 4);
        *owned = 1;
        return s;
    }
    case 10: {
        hid_t b = H5Tcopy(H5T_NATIVE_UINT16);
        H5Tset_precision(b, 12);
        *owned = 1;
        return b;
    }
    case 11: {
        hid_t e = H5Tenum_create(H5T_NATIVE_INT);
        int v0 = 0, v1 = 1;
        H5Tenum_insert(e, "a", &v0);
        H5Tenum_insert(e, "b", &v1);
        *owned = 1;
        return e;
    }
    default: {
        hsize_t ad[1] = {2};
        *owned = 1;
        return H5Tarray_create2(H5T_NATIVE_FLOAT, 1, ad);
    }
    }
}

static int build_file(const uint8_t *r)
{
    hid_t f = H5Fcreate(g_path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (f < 0) return -1;
    int rank = r[1] % 5;
    hsize_t dims[4] = {1, 1, 1, 1}, maxd[4], chunk[4];
    hsize_t n = 1;
    for (int i = 0; i < rank; i++) {
        dims[i] = dim_of(r[3 + i]);
        maxd[i] = (r[7] & 128) ? H5S_UNLIMITED : dims[i];
        chunk[i] = dims[i] == 0 ? 1 : (dims[i] < 16 ? dims[i] : 16);
        if (n != 0 && dims[i] > (((hsize_t)1 << 50) / n)) n = (hsize_t)1 << 50;
        else n *= dims[i];
    }
    int big = n > ((hsize_t)1 << 16);
    int chunked = (r[7] & 1) || big || (r[7] & 128) || (r[7] & 8);
    int owned;
    hid_t type = make_type(r[2], &owned);
    hid_t sp = rank == 0 ? H5Screate(H5S_SCALAR) : H5Screate_simple(rank, dims, maxd);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    if (chunked && rank > 0) {
        H5Pset_chunk(dcpl, rank, chunk);
        if (r[7] & 8) H5Pset_deflate(dcpl, 1);
        H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_INCR);
    }
    hid_t parent = f;
    const char *name = "image";
    hid_t grp = H5I_INVALID_HID;
    if (r[7] & 16) {
        grp = H5Gcreate2(f, "data", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        parent = grp;
        name = "img";
    }
    hid_t d = H5Dcreate2(parent, name, type, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    if (d >= 0 && !big && n > 0) {
        size_t es = H5Tget_size(type);
        unsigned char *buf = calloc((size_t)n, es ? es : 1);
        if (buf) {
            for (size_t i = 0; i < (size_t)n * es; i++) buf[i] = (unsigned char)(i * 37 + r[0]);
            if (H5Tequal(type, H5T_NATIVE_FLOAT) > 0) {
                float *fv = (float *)buf;
                for (size_t i = 0; i < (size_t)n; i++) fv[i] = (float)(i % 17) * 0.25f;
                if (r[7] & 2) fv[n / 2] = NAN;
                if (r[7] & 4) fv[0] = INFINITY;
            } else if (H5Tequal(type, H5T_NATIVE_DOUBLE) > 0) {
                double *dv = (double *)buf;
                for (size_t i = 0; i < (size_t)n; i++) dv[i] = (double)(i % 17) * 0.25;
                if (r[7] & 2) dv[n / 2] = NAN;
                if (r[7] & 4) dv[0] = -INFINITY;
            }
            H5Dwrite(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf);
            free(buf);
        }
    }
    if (d >= 0 && (r[7] & 64)) {
        hid_t as = H5Screate(H5S_SCALAR);
        hid_t st = H5Tcopy(H5T_C_S1);
        H5Tset_size(st, 5);
        hid_t a = H5Acreate2(d, "pixel_size", st, as, H5P_DEFAULT, H5P_DEFAULT);
        if (a >= 0) {
            H5Awrite(a, st, "0.12");
            H5Aclose(a);
        }
        H5Tclose(st);
        H5Sclose(as);
    } else if (d >= 0) {
        hid_t as = H5Screate(H5S_SCALAR);
        double ps = (r[0] & 1) ? 0.12 : -3.0;
        hid_t a = H5Acreate2(d, "pixel_size", H5T_NATIVE_DOUBLE, as, H5P_DEFAULT, H5P_DEFAULT);
        if (a >= 0) {
            H5Awrite(a, H5T_NATIVE_DOUBLE, &ps);
            H5Aclose(a);
        }
        H5Sclose(as);
    }
    if (r[7] & 32) {
        hsize_t d2[2] = {4, 4};
        hid_t s2 = H5Screate_simple(2, d2, NULL);
        hid_t x = H5Dcreate2(f, "other", H5T_NATIVE_UINT8, s2, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        if (x >= 0) H5Dclose(x);
        H5Sclose(s2);
    }
    if (d >= 0) H5Dclose(d);
    if (grp >= 0) H5Gclose(grp);
    H5Pclose(dcpl);
    H5Sclose(sp);
    if (owned) H5Tclose(type);
    H5Fclose(f);
    return 0;
}

static void read_region(tmd_reader *r, int64_t f, int64_t y, int64_t x, int64_t h, int64_t w)
{
    if (h <= 0 || w <= 0) return;
    float *buf = malloc((size_t)(h * w) * sizeof(float));
    if (!buf) return;
    tmd_ctx ctx;
    quiet_ctx(&ctx);
    check(&ctx, tmd_reader_read(&ctx, r, f, y, x, h, w, buf), "read");
    free(buf);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    /* Speed (63 -> see docs/reliability.md exec/s): HDF5 allocates its per-file metadata cache
     * and other large structures from free lists that, at the default limits, hand blocks over
     * 64 KiB back to malloc at every H5Fclose; under ASan each such block is a fresh mmap whose
     * pages are faulted in and zeroed again for every input (about half of the run time).
     * Unlimited free lists keep those blocks for reuse. HDF5-internal memory only. */
    H5set_free_list_limits(-1, -1, -1, -1, -1, -1);
    snprintf(g_path, sizeof g_path, "/dev/shm/tmd_fuzz_h5input_%d.h5", (int)getpid());
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t r[9] = {0};
    memcpy(r, data, size < 9 ? size : 9);
    if (build_file(r)) return 0;
    static const char *specs[] = {":/image", "", ":/missing", ":/", ":/data/img", ":image", ":"};
    char spec[128];
    snprintf(spec, sizeof spec, "%s%s", g_path, specs[r[8] % 7]);

    tmd_ctx ctx;
    quiet_ctx(&ctx);
    tmd_reader *rd = NULL;
    tmd_status st = tmd_reader_open(&ctx, spec, &rd);
    check(&ctx, st, "open");
    if (st == TMD_OK) {
        const tmd_image_info *in = tmd_reader_info(rd);
        if (!in || in->frames < 1 || in->height < 1 || in->width < 1) abort();
        int64_t H = in->height, W = in->width;
        int64_t nf = in->frames < 4 ? in->frames : 4;
        for (int64_t t = 0; t < nf; t++) {
            if (H * W <= 128 * 128) {
                read_region(rd, t, 0, 0, H, W);
            } else {
                int64_t bh = H < 32 ? H : 32, bw = W < 32 ? W : 32;
                read_region(rd, t, 0, 0, bh, bw);
                read_region(rd, t, H - bh, W - bw, bh, bw);
                read_region(rd, t, H / 2, 0, 1, W < 1024 ? W : 1024);
            }
        }
        tmd_ctx c2;
        quiet_ctx(&c2);
        float one;
        if (tmd_reader_read(&c2, rd, in->frames, 0, 0, 1, 1, &one) == TMD_OK) abort();
        quiet_ctx(&c2);
        if (tmd_reader_read(&c2, rd, 0, 0, W, 1, 1, &one) == TMD_OK) abort();
        quiet_ctx(&c2);
        if (tmd_reader_read(&c2, rd, 0, -1, 0, 1, 1, &one) == TMD_OK) abort();
    } else if (rd) {
        abort();
    }
    tmd_reader_close(&rd);
    unlink(g_path);
    return 0;
}
