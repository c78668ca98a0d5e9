/* Tests of the image reader (TIFF/BigTIFF/HDF5) and the TIFF writer.
 * TMD_TEST_RANKS: 1
 * TMD_TEST_TIMEOUT: 120
 *
 * What this proves (fixtures are written here with libtiff and HDF5, nothing is committed):
 * - every TIFF flavour the reader promises gives exactly the expected float32 pixels: striped
 *   uint8/uint16/float32/float64, int16, tiled, LZW (with predictor)/Deflate/PackBits, 8-bit
 *   palette (grey luminance), MINISWHITE (inverted), RGB (luminance), big-endian, BigTIFF,
 *   multi-page stacks, ImageJ's one-header raw stacks (how ImageJ saves stacks beyond 4 GiB); HDF5 2-D and 3-D datasets (u16, f32 chunked+deflate, i16), "FILE:/path"
 *   and bare files (/image, or the only image dataset); Velox EMD files (frames-last images,
 *   pixel size from the JSON metadata); Berkeley EMD groups (pixel size from the
 *   fast-scan axis's dim vector and its units; none from a "[px]" axis; a dataset's own
 *   pixel_size attribute first);
 * - region reads equal the same pixels of a whole-frame read, at random regions and frames;
 * - a region read decodes only the strips that overlap it: a file with one corrupt strip
 *   reads fine away from it and fails, naming the strip, over it;
 * - every bad input is refused with a non-zero status and a message naming the file (and what
 *   was found): missing/empty/non-image file, truncated TIFF, zero and absurd dimensions, a
 *   strip byte count of 0 or beyond the end of the file, 12-bit and complex samples, a codec
 *   libtiff lacks, pages of different sizes, NaN/Inf samples (message names frame and pixel),
 *   an HDF5 dataset of the wrong rank, a missing dataset, several candidate datasets, a
 *   truncated HDF5 file; regions outside the image are TMD_ERR_RANGE;
 * - tmd_tiff_write round-trips float32 and uint16 (rounded, clamped), stacks, BigTIFF, and the
 *   pixel size (ImageJ style) comes back through tmd_reader_info.
 *
 * `test_io --make-fixtures DIR` writes the fixtures used by tests/cli/info.sh and
 * tests/cli/bad_input.sh (so those scripts need neither python nor h5py).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <tiffio.h>
#include <unistd.h>

#include "testutil.h"
#include "tmd/io.h"

/* ---- fixture writer ------------------------------------------------------------------- */

typedef struct {
    int w, h, frames;
    int bps, sf, spp;
    int photometric;
    int compression, predictor;
    int tiled, tw, th;
    int rps;
    int big, bigendian;
    int nan_at;          /* 1: a NaN at frame 0, (x=5, y=3); 2: +Inf there */
    int vary_page;       /* page 1 is 1 pixel wider */
} fx_opts;

static fx_opts fx_default(void)
{
    fx_opts o;
    memset(&o, 0, sizeof o);
    o.w = 45;
    o.h = 38;
    o.frames = 1;
    o.bps = 16;
    o.sf = SAMPLEFORMAT_UINT;
    o.spp = 1;
    o.photometric = PHOTOMETRIC_MINISBLACK;
    o.compression = COMPRESSION_NONE;
    o.rps = 7;
    return o;
}

static int base_val(int f, int y, int x, int s) { return (f * 131 + y * 31 + x * 17 + s * 50 + (x * y) % 13) % 256; }

/* Stored sample value for (f, y, x, s) as a double. */
static double stored_val(const fx_opts *o, int f, int y, int x, int s)
{
    int b = base_val(f, y, x, s);
    if (o->nan_at && f == 0 && y == 3 && x == 5) return o->nan_at == 1 ? NAN : INFINITY;
    if (o->sf == SAMPLEFORMAT_IEEEFP) return o->bps == 32 ? b * 0.5 - 3.0 : b * 0.25 + 0.001;
    if (o->sf == SAMPLEFORMAT_INT) return o->bps == 8 ? b - 128 : (o->bps == 16 ? (b - 128) * 200.0 : (b - 128) * 100000.0);
    return o->bps == 8 ? b : (o->bps == 16 ? b * 257.0 : b * 100000.0);
}

static void palette_rgb(int i, uint16_t *r, uint16_t *g, uint16_t *b)
{
    *r = (uint16_t)(i * 257);
    *g = (uint16_t)((255 - i) * 257);
    *b = (uint16_t)(((i * 7) % 256) * 257);
}

/* What the reader must return for (f, y, x). */
static float expected_val(const fx_opts *o, int f, int y, int x)
{
    if (o->photometric == PHOTOMETRIC_PALETTE) {
        uint16_t r, g, b;
        palette_rgb((int)stored_val(o, f, y, x, 0), &r, &g, &b);
        return (float)((0.299 * r + 0.587 * g + 0.114 * b) / 257.0);
    }
    if (o->photometric == PHOTOMETRIC_RGB)
        return (float)(0.299 * stored_val(o, f, y, x, 0) + 0.587 * stored_val(o, f, y, x, 1) +
                       0.114 * stored_val(o, f, y, x, 2));
    double v = stored_val(o, f, y, x, 0);
    if (o->photometric == PHOTOMETRIC_MINISWHITE) {
        if (o->sf == SAMPLEFORMAT_UINT) v = (o->bps == 8 ? 255.0 : o->bps == 16 ? 65535.0 : 4294967295.0) - v;
        else v = -v;
    }
    return (float)v;
}

static void put_sample(const fx_opts *o, uint8_t *dst, double v)
{
    switch (o->bps) {
    case 8:
        if (o->sf == SAMPLEFORMAT_INT) *(int8_t *)dst = (int8_t)v;
        else *dst = (uint8_t)v;
        break;
    case 16: {
        uint16_t u = o->sf == SAMPLEFORMAT_INT ? (uint16_t)(int16_t)v : (uint16_t)v;
        memcpy(dst, &u, 2);
        break;
    }
    case 32: {
        if (o->sf == SAMPLEFORMAT_IEEEFP) {
            float fv = (float)v;
            memcpy(dst, &fv, 4);
        } else {
            uint32_t u = o->sf == SAMPLEFORMAT_INT ? (uint32_t)(int32_t)v : (uint32_t)v;
            memcpy(dst, &u, 4);
        }
        break;
    }
    case 64: memcpy(dst, &v, 8); break;
    default: break;
    }
}

/* Writes a TIFF of the flavour o. Returns 0 on success. */
static int fx_write_tiff(const char *path, const fx_opts *o)
{
    char mode[8] = "w";
    if (o->big) strcat(mode, "8");
    if (o->bigendian) strcat(mode, "b");
    TIFF *t = TIFFOpen(path, mode);
    if (!t) return -1;
    int ps = o->bps / 8 * o->spp;
    int rc = 0;
    for (int f = 0; f < o->frames && !rc; f++) {
        int w = o->w + (o->vary_page && f == 1 ? 1 : 0), h = o->h;
        TIFFSetField(t, TIFFTAG_IMAGEWIDTH, (uint32_t)w);
        TIFFSetField(t, TIFFTAG_IMAGELENGTH, (uint32_t)h);
        TIFFSetField(t, TIFFTAG_BITSPERSAMPLE, (uint16_t)o->bps);
        TIFFSetField(t, TIFFTAG_SAMPLEFORMAT, (uint16_t)o->sf);
        TIFFSetField(t, TIFFTAG_SAMPLESPERPIXEL, (uint16_t)o->spp);
        TIFFSetField(t, TIFFTAG_PHOTOMETRIC, (uint16_t)o->photometric);
        TIFFSetField(t, TIFFTAG_PLANARCONFIG, PLANARCONFIG_CONTIG);
        TIFFSetField(t, TIFFTAG_COMPRESSION, (uint16_t)o->compression);
        if (o->predictor) TIFFSetField(t, TIFFTAG_PREDICTOR, (uint16_t)o->predictor);
        if (o->frames > 1) {
            TIFFSetField(t, TIFFTAG_SUBFILETYPE, FILETYPE_PAGE);
            TIFFSetField(t, TIFFTAG_PAGENUMBER, (uint16_t)f, (uint16_t)o->frames);
        }
        if (o->photometric == PHOTOMETRIC_PALETTE) {
            uint16_t r[256], g[256], b[256];
            for (int i = 0; i < 256; i++) palette_rgb(i, &r[i], &g[i], &b[i]);
            TIFFSetField(t, TIFFTAG_COLORMAP, r, g, b);
        }
        if (o->tiled) {
            TIFFSetField(t, TIFFTAG_TILEWIDTH, (uint32_t)o->tw);
            TIFFSetField(t, TIFFTAG_TILELENGTH, (uint32_t)o->th);
            uint8_t *buf = calloc((size_t)o->tw * o->th, (size_t)ps);
            for (int ty = 0; ty < h && !rc; ty += o->th)
                for (int tx = 0; tx < w && !rc; tx += o->tw) {
                    memset(buf, 0, (size_t)o->tw * o->th * ps);
                    for (int y = ty; y < ty + o->th && y < h; y++)
                        for (int x = tx; x < tx + o->tw && x < w; x++)
                            for (int s = 0; s < o->spp; s++)
                                put_sample(o, buf + ((size_t)(y - ty) * o->tw + (x - tx)) * ps + s * (o->bps / 8),
                                           stored_val(o, f, y, x, s));
                    if (TIFFWriteTile(t, buf, (uint32_t)tx, (uint32_t)ty, 0, 0) < 0) rc = -1;
                }
            free(buf);
        } else {
            TIFFSetField(t, TIFFTAG_ROWSPERSTRIP, (uint32_t)o->rps);
            uint8_t *row = calloc((size_t)w, (size_t)ps);
            for (int y = 0; y < h && !rc; y++) {
                for (int x = 0; x < w; x++)
                    for (int s = 0; s < o->spp; s++)
                        put_sample(o, row + (size_t)x * ps + s * (o->bps / 8), stored_val(o, f, y, x, s));
                if (TIFFWriteScanline(t, row, (uint32_t)y, 0) < 0) rc = -1;
            }
            free(row);
        }
        if (!rc && !TIFFWriteDirectory(t)) rc = -1;
    }
    TIFFClose(t);
    return rc;
}

/* A 16 x 4 image of 12-bit samples (uncompressed, packed). */
static int fx_write_12bit(const char *path)
{
    TIFF *t = TIFFOpen(path, "w");
    if (!t) return -1;
    TIFFSetField(t, TIFFTAG_IMAGEWIDTH, 16u);
    TIFFSetField(t, TIFFTAG_IMAGELENGTH, 4u);
    TIFFSetField(t, TIFFTAG_BITSPERSAMPLE, 12);
    TIFFSetField(t, TIFFTAG_SAMPLESPERPIXEL, 1);
    TIFFSetField(t, TIFFTAG_PHOTOMETRIC, PHOTOMETRIC_MINISBLACK);
    TIFFSetField(t, TIFFTAG_ROWSPERSTRIP, 4u);
    uint8_t row[24] = {0};
    int rc = 0;
    for (uint32_t y = 0; y < 4; y++) rc |= TIFFWriteScanline(t, row, y, 0) < 0;
    TIFFClose(t);
    return rc ? -1 : 0;
}

/* An ImageJ-style stack beyond 4 GiB, in miniature: ONE big-endian IFD with
 * "ImageJ=...\nimages=K" in the description and the K uint16 frames stored back to back.
 * `frames_written` < K makes it truncated. */
static void be16(uint8_t *p, uint32_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static void be32(uint8_t *p, uint32_t v) { be16(p, v >> 16); be16(p + 2, v & 0xFFFF); }
static int fx_write_imagej_raw(const char *path, int w, int h, int k, int frames_written)
{
    char desc[128];
    snprintf(desc, sizeof desc, "ImageJ=1.54f\nimages=%d\nframes=%d\nunit=nm\nloop=false\n", k, k);
    uint32_t dlen = (uint32_t)strlen(desc) + 1, nent = 10, ifd = 8, dofs = ifd + 2 + nent * 12 + 4;
    uint32_t data = (dofs + dlen + 15) & ~15u, fb = (uint32_t)(w * h * 2);
    size_t total = data + (size_t)fb * frames_written;
    uint8_t *f = calloc(1, total);
    memcpy(f, "MM\0*", 4);
    be32(f + 4, ifd);
    be16(f + ifd, (uint16_t)nent);
    const uint32_t ent[10][4] = {{256, 4, 1, (uint32_t)w}, {257, 4, 1, (uint32_t)h}, {258, 3, 1, 16}, {259, 3, 1, 1},
                                 {262, 3, 1, 1}, {270, 2, dlen, dofs}, {273, 4, 1, data}, {277, 3, 1, 1},
                                 {278, 4, 1, (uint32_t)h}, {279, 4, 1, fb}};
    for (uint32_t i = 0; i < nent; i++) {
        uint8_t *e = f + ifd + 2 + i * 12;
        be16(e, ent[i][0]);
        be16(e + 2, ent[i][1]);
        be32(e + 4, ent[i][2]);
        if (ent[i][1] == 3) be16(e + 8, ent[i][3]); /* SHORT values are left-justified */
        else be32(e + 8, ent[i][3]);
    }
    memcpy(f + dofs, desc, dlen);
    fx_opts o = fx_default();
    for (int t = 0; t < frames_written; t++)
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) be16(f + data + (size_t)t * fb + ((size_t)y * w + x) * 2, (uint32_t)stored_val(&o, t, y, x, 0));
    FILE *out = fopen(path, "wb");
    int rc = !out || fwrite(f, 1, total, out) != total;
    if (out) fclose(out);
    free(f);
    return rc ? -1 : 0;
}

/* ---- byte-level patching of classic little-endian TIFFs (for corrupt headers) --------- */

static int read_at(FILE *f, long off, void *buf, size_t n) { return fseek(f, off, SEEK_SET) || fread(buf, 1, n, f) != n; }
static int write_at(FILE *f, long off, const void *buf, size_t n)
{
    return fseek(f, off, SEEK_SET) || fwrite(buf, 1, n, f) != n;
}

/* Sets element `index` of tag `tag` in the first IFD of a classic little-endian TIFF.
 * Returns 0 on success. */
static int patch_tag(const char *path, uint16_t tag, uint32_t index, uint32_t value)
{
    FILE *f = fopen(path, "r+b");
    if (!f) return -1;
    uint32_t ifd;
    uint16_t n;
    int rc = -1;
    if (read_at(f, 4, &ifd, 4) || read_at(f, (long)ifd, &n, 2)) goto done;
    for (uint16_t i = 0; i < n; i++) {
        long e = (long)ifd + 2 + 12L * i;
        uint16_t tg, type;
        uint32_t count, voff;
        if (read_at(f, e, &tg, 2) || read_at(f, e + 2, &type, 2) || read_at(f, e + 4, &count, 4) ||
            read_at(f, e + 8, &voff, 4))
            goto done;
        if (tg != tag) continue;
        size_t es = type == 3 ? 2 : 4;
        if (index >= count) goto done;
        long where = count * es <= 4 ? e + 8 + (long)(index * es) : (long)voff + (long)(index * es);
        if (es == 2) {
            uint16_t v16 = (uint16_t)value;
            rc = write_at(f, where, &v16, 2);
        } else {
            rc = write_at(f, where, &value, 4);
        }
        goto done;
    }
done:
    fclose(f);
    return rc;
}

/* Reads element `index` of tag `tag` (first IFD, classic LE). */
static uint32_t get_tag(const char *path, uint16_t tag, uint32_t index)
{
    FILE *f = fopen(path, "rb");
    uint32_t ifd, out = 0;
    uint16_t n;
    if (!f) return 0;
    if (read_at(f, 4, &ifd, 4) || read_at(f, (long)ifd, &n, 2)) goto done;
    for (uint16_t i = 0; i < n; i++) {
        long e = (long)ifd + 2 + 12L * i;
        uint16_t tg, type;
        uint32_t count, voff;
        if (read_at(f, e, &tg, 2) || read_at(f, e + 2, &type, 2) || read_at(f, e + 4, &count, 4) ||
            read_at(f, e + 8, &voff, 4))
            break;
        if (tg != tag) continue;
        size_t es = type == 3 ? 2 : 4;
        long where = count * es <= 4 ? e + 8 + (long)(index * es) : (long)voff + (long)(index * es);
        if (es == 2) {
            uint16_t v;
            if (!read_at(f, where, &v, 2)) out = v;
        } else {
            read_at(f, where, &out, 4);
        }
        break;
    }
done:
    fclose(f);
    return out;
}

static int truncate_to(const char *path, double fraction)
{
    struct stat sb;
    if (stat(path, &sb)) return -1;
    return truncate(path, (off_t)((double)sb.st_size * fraction));
}

/* ---- HDF5 fixtures ------------------------------------------------------------------ */

/* Writes dataset `name` (rank nd, dims) of mtype from buf into file (created if create). */
static int fx_h5_dataset(const char *path, int create, const char *name, int nd, const hsize_t *dims, hid_t ftype,
                         hid_t mtype, const void *buf, const hsize_t *chunk, int deflate)
{
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t f = create ? H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT) : H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    if (f < 0) return -1;
    hid_t s = H5Screate_simple(nd, dims, NULL), dcpl = H5Pcreate(H5P_DATASET_CREATE), lcpl = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(lcpl, 1);
    if (chunk) H5Pset_chunk(dcpl, nd, chunk);
    if (chunk && deflate) H5Pset_deflate(dcpl, 4);
    hid_t d = H5Dcreate2(f, name, ftype, s, lcpl, dcpl, H5P_DEFAULT);
    int rc = d < 0 || H5Dwrite(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0;
    if (d >= 0) H5Dclose(d);
    H5Pclose(dcpl);
    H5Pclose(lcpl);
    H5Sclose(s);
    H5Fclose(f);
    return rc ? -1 : 0;
}

static int fx_h5_root_attr(const char *path, const char *name, double v)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    if (f < 0) return -1;
    hid_t s = H5Screate(H5S_SCALAR), a = H5Acreate2(f, name, H5T_IEEE_F64LE, s, H5P_DEFAULT, H5P_DEFAULT);
    int rc = a < 0 || H5Awrite(a, H5T_NATIVE_DOUBLE, &v) < 0;
    if (a >= 0) H5Aclose(a);
    H5Sclose(s);
    H5Fclose(f);
    return rc ? -1 : 0;
}

/* a string attribute on an object of the file (variable-length when vlen, else fixed-size) */
static int fx_h5_str_attr(const char *path, const char *obj, const char *name, const char *v, int vlen)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    if (f < 0) return -1;
    hid_t o = H5Oopen(f, obj, H5P_DEFAULT), t = H5Tcopy(H5T_C_S1), s = H5Screate(H5S_SCALAR);
    H5Tset_size(t, vlen ? H5T_VARIABLE : strlen(v));
    hid_t a = o >= 0 ? H5Acreate2(o, name, t, s, H5P_DEFAULT, H5P_DEFAULT) : -1;
    int rc = a < 0 || H5Awrite(a, t, vlen ? (const void *)&v : (const void *)v) < 0;
    if (a >= 0) H5Aclose(a);
    if (o >= 0) H5Oclose(o);
    H5Sclose(s);
    H5Tclose(t);
    H5Fclose(f);
    return rc ? -1 : 0;
}

/* ---- checks ----------------------------------------------------------------------- */

/* Opens spec, checks the geometry, reads every frame whole and compares with expected(), then
 * 25 random regions against the whole-frame read. */
static void check_flavour(const char *what, const char *spec, int frames, int h, int w,
                          float (*expect)(const void *, int, int, int), const void *arg, const char *format)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    tmd_reader *r = NULL;
    tmd_status st = tmd_reader_open(&ctx, spec, &r);
    if (st) fprintf(stderr, "%s: %s\n", what, ctx.err_msg);
    CU_ASSERT_EQUAL_FATAL(st, TMD_OK);
    const tmd_image_info *in = tmd_reader_info(r);
    CU_ASSERT_EQUAL(in->frames, frames);
    CU_ASSERT_EQUAL(in->height, h);
    CU_ASSERT_EQUAL(in->width, w);
    if (format) CU_ASSERT_STRING_EQUAL(in->format, format);
    float *whole = malloc(sizeof(float) * (size_t)h * (size_t)w * (size_t)frames);
    int bad = 0;
    for (int f = 0; f < frames; f++) {
        float *fr = whole + (size_t)f * h * w;
        CU_ASSERT_EQUAL(tmd_reader_read(&ctx, r, f, 0, 0, h, w, fr), TMD_OK);
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) {
                float e = expect(arg, f, y, x);
                if (fr[y * w + x] != e) {
                    if (bad < 3)
                        fprintf(stderr, "%s: frame %d (x=%d,y=%d): got %.9g expected %.9g\n", what, f, x, y,
                                fr[y * w + x], e);
                    bad++;
                }
            }
    }
    CU_ASSERT_EQUAL(bad, 0);
    /* Random regions, frames in random order (exercises page switching and the block cache). */
    unsigned seed = 12345u + (unsigned)h * 7u + (unsigned)w;
    float *reg = malloc(sizeof(float) * (size_t)h * (size_t)w);
    int rbad = 0;
    for (int k = 0; k < 25; k++) {
        int f = (int)(tmd_test_randf(&seed) * frames);
        int y0 = (int)(tmd_test_randf(&seed) * h), x0 = (int)(tmd_test_randf(&seed) * w);
        int rh = 1 + (int)(tmd_test_randf(&seed) * (h - y0)), rw = 1 + (int)(tmd_test_randf(&seed) * (w - x0));
        if (y0 + rh > h) rh = h - y0;
        if (x0 + rw > w) rw = w - x0;
        CU_ASSERT_EQUAL(tmd_reader_read(&ctx, r, f, y0, x0, rh, rw, reg), TMD_OK);
        const float *fr = whole + (size_t)f * h * w;
        for (int y = 0; y < rh; y++)
            for (int x = 0; x < rw; x++) rbad += reg[y * rw + x] != fr[(y0 + y) * w + x0 + x];
    }
    CU_ASSERT_EQUAL(rbad, 0);
    /* Regions outside the image are refused. */
    tmd_ctx c2;
    tmd_test_ctx(&c2);
    CU_ASSERT_EQUAL(tmd_reader_read(&c2, r, 0, h - 1, 0, 2, 1, reg), TMD_ERR_RANGE);
    CU_ASSERT_EQUAL(tmd_reader_read(&c2, r, frames, 0, 0, 1, 1, reg), TMD_ERR_RANGE);
    free(reg);
    free(whole);
    tmd_reader_close(&r);
    CU_ASSERT_PTR_NULL(r);
    tmd_reader_close(&r); /* NULL is fine */
}

static float expect_fx(const void *arg, int f, int y, int x) { return expected_val((const fx_opts *)arg, f, y, x); }

static void tiff_case(const char *name, fx_opts o)
{
    const char *path = tmd_test_path(name);
    if (fx_write_tiff(path, &o)) {
        CU_FAIL("fixture could not be written");
        return;
    }
    check_flavour(name, path, o.frames, o.h, o.w, expect_fx, &o, o.big ? "BigTIFF" : "TIFF");
}

static void test_tiff_flavours(void)
{
    fx_opts o;
    o = fx_default(); o.bps = 8; tiff_case("u8_striped.tif", o);
    o = fx_default(); tiff_case("u16_striped.tif", o);
    o = fx_default(); o.bps = 32; o.sf = SAMPLEFORMAT_IEEEFP; tiff_case("f32_striped.tif", o);
    o = fx_default(); o.bps = 64; o.sf = SAMPLEFORMAT_IEEEFP; o.rps = 1; tiff_case("f64_striped.tif", o);
    o = fx_default(); o.sf = SAMPLEFORMAT_INT; tiff_case("i16_striped.tif", o);
    o = fx_default(); o.bps = 32; o.sf = SAMPLEFORMAT_UINT; tiff_case("u32_striped.tif", o);
    o = fx_default(); o.tiled = 1; o.tw = 16; o.th = 16; tiff_case("u16_tiled.tif", o);
    o = fx_default(); o.tiled = 1; o.tw = 32; o.th = 16; o.bps = 32; o.sf = SAMPLEFORMAT_IEEEFP;
    o.compression = COMPRESSION_LZW; tiff_case("f32_tiled_lzw.tif", o);
    o = fx_default(); o.compression = COMPRESSION_LZW; o.predictor = PREDICTOR_HORIZONTAL; tiff_case("u16_lzw_pred.tif", o);
    o = fx_default(); o.bps = 32; o.sf = SAMPLEFORMAT_IEEEFP; o.compression = COMPRESSION_ADOBE_DEFLATE;
    o.predictor = PREDICTOR_FLOATINGPOINT; tiff_case("f32_deflate_fpred.tif", o);
    o = fx_default(); o.bps = 8; o.compression = COMPRESSION_ADOBE_DEFLATE; tiff_case("u8_deflate.tif", o);
    o = fx_default(); o.tiled = 1; o.tw = 16; o.th = 32; o.compression = COMPRESSION_ADOBE_DEFLATE;
    tiff_case("u16_tiled_deflate.tif", o);
    o = fx_default(); o.bps = 8; o.compression = COMPRESSION_PACKBITS; tiff_case("u8_packbits.tif", o);
    o = fx_default(); o.bps = 8; o.photometric = PHOTOMETRIC_PALETTE; tiff_case("u8_palette.tif", o);
    o = fx_default(); o.photometric = PHOTOMETRIC_MINISWHITE; tiff_case("u16_miniswhite.tif", o);
    o = fx_default(); o.bps = 8; o.spp = 3; o.photometric = PHOTOMETRIC_RGB; tiff_case("u8_rgb.tif", o);
    o = fx_default(); o.bigendian = 1; tiff_case("u16_bigendian.tif", o);
    o = fx_default(); o.bigendian = 1; o.bps = 32; o.sf = SAMPLEFORMAT_IEEEFP; o.compression = COMPRESSION_LZW;
    tiff_case("f32_bigendian_lzw.tif", o);
    o = fx_default(); o.big = 1; o.frames = 3; tiff_case("u16_bigtiff_stack.tif", o);
    o = fx_default(); o.big = 1; o.tiled = 1; o.tw = 16; o.th = 16; o.compression = COMPRESSION_LZW;
    tiff_case("u16_bigtiff_tiled_lzw.tif", o);
    o = fx_default(); o.frames = 5; o.compression = COMPRESSION_LZW; tiff_case("u16_stack_lzw.tif", o);
    o = fx_default(); o.frames = 4; o.tiled = 1; o.tw = 16; o.th = 16; o.bps = 32; o.sf = SAMPLEFORMAT_IEEEFP;
    tiff_case("f32_stack_tiled.tif", o);
    o = fx_default(); o.w = 1; o.h = 1; o.rps = 1; tiff_case("u16_1x1.tif", o);
    /* ImageJ's one-header raw stack (what ImageJ writes beyond 4 GiB), big-endian. */
    o = fx_default();
    o.w = 33;
    o.h = 17;
    o.frames = 4;
    CU_ASSERT_EQUAL_FATAL(fx_write_imagej_raw(tmd_test_path("imagej_raw.tif"), 33, 17, 4, 4), 0);
    check_flavour("imagej_raw.tif", tmd_test_path("imagej_raw.tif"), 4, 17, 33, expect_fx, &o, "TIFF");
    /* Layout text says what the file is. */
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    tmd_reader *r = NULL;
    CU_ASSERT_EQUAL_FATAL(tmd_reader_open(&ctx, tmd_test_path("u16_tiled_deflate.tif"), &r), TMD_OK);
    CU_ASSERT_PTR_NOT_NULL(strstr(tmd_reader_info(r)->layout, "tiled 16x32"));
    CU_ASSERT_PTR_NOT_NULL(strstr(tmd_reader_info(r)->layout, "Deflate"));
    CU_ASSERT_EQUAL(tmd_reader_info(r)->sample, TMD_U16);
    tmd_reader_close(&r);
}

/* ---- HDF5 inputs ------------------------------------------------------------------- */

typedef struct {
    int kind; /* 0: u16 2-D, 1: f32 3-D, 2: i16 2-D */
    int frames, h, w;
} h5fx;

static float h5_val(const h5fx *o, int f, int y, int x)
{
    int b = base_val(f, y, x, 0);
    if (o->kind == 0) return (float)(b * 257);
    if (o->kind == 1) return (float)(b * 0.5 - 3.0);
    return (float)((b - 128) * 200);
}

static float expect_h5(const void *arg, int f, int y, int x) { return h5_val(arg, f, y, x); }

static void *h5_buf(const h5fx *o)
{
    size_t n = (size_t)o->frames * o->h * o->w;
    if (o->kind == 0) {
        uint16_t *b = malloc(n * 2);
        for (int f = 0; f < o->frames; f++)
            for (int y = 0; y < o->h; y++)
                for (int x = 0; x < o->w; x++) b[((size_t)f * o->h + y) * o->w + x] = (uint16_t)h5_val(o, f, y, x);
        return b;
    }
    if (o->kind == 1) {
        float *b = malloc(n * 4);
        for (int f = 0; f < o->frames; f++)
            for (int y = 0; y < o->h; y++)
                for (int x = 0; x < o->w; x++) b[((size_t)f * o->h + y) * o->w + x] = h5_val(o, f, y, x);
        return b;
    }
    int16_t *b = malloc(n * 2);
    for (int f = 0; f < o->frames; f++)
        for (int y = 0; y < o->h; y++)
            for (int x = 0; x < o->w; x++) b[((size_t)f * o->h + y) * o->w + x] = (int16_t)h5_val(o, f, y, x);
    return b;
}

static void test_hdf5_inputs(void)
{
    char spec[1200];
    /* 2-D uint16, contiguous, named explicitly. */
    h5fx a = {0, 1, 33, 41};
    void *ba = h5_buf(&a);
    hsize_t da[2] = {33, 41};
    CU_ASSERT_EQUAL_FATAL(fx_h5_dataset(tmd_test_path("in2d.h5"), 1, "/data/frame", 2, da, H5T_STD_U16LE,
                                        H5T_NATIVE_UINT16, ba, NULL, 0), 0);
    snprintf(spec, sizeof spec, "%s:/data/frame", tmd_test_path("in2d.h5"));
    check_flavour("h5 2-D u16", spec, 1, 33, 41, expect_h5, &a, "HDF5");
    /* Bare path: the only image dataset is used. */
    check_flavour("h5 2-D bare", tmd_test_path("in2d.h5"), 1, 33, 41, expect_h5, &a, "HDF5");
    free(ba);
    /* 3-D float32, chunked + deflate, as /image with a root pixel_size. */
    h5fx b = {1, 4, 30, 27};
    void *bb = h5_buf(&b);
    hsize_t db[3] = {4, 30, 27}, cb[3] = {1, 16, 16};
    CU_ASSERT_EQUAL_FATAL(fx_h5_dataset(tmd_test_path("in3d.h5"), 1, "/image", 3, db, H5T_IEEE_F32LE,
                                        H5T_NATIVE_FLOAT, bb, cb, 1), 0);
    /* A second image-like dataset: /image still wins on a bare path. */
    CU_ASSERT_EQUAL_FATAL(fx_h5_dataset(tmd_test_path("in3d.h5"), 0, "/truth/classes", 3, db, H5T_IEEE_F32LE,
                                        H5T_NATIVE_FLOAT, bb, NULL, 0), 0);
    CU_ASSERT_EQUAL_FATAL(fx_h5_root_attr(tmd_test_path("in3d.h5"), "pixel_size", 0.2), 0);
    check_flavour("h5 3-D f32 bare", tmd_test_path("in3d.h5"), 4, 30, 27, expect_h5, &b, "HDF5");
    snprintf(spec, sizeof spec, "%s:/image", tmd_test_path("in3d.h5"));
    check_flavour("h5 3-D f32", spec, 4, 30, 27, expect_h5, &b, "HDF5");
    free(bb);
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    tmd_reader *r = NULL;
    CU_ASSERT_EQUAL_FATAL(tmd_reader_open(&ctx, spec, &r), TMD_OK);
    CU_ASSERT_DOUBLE_EQUAL(tmd_reader_info(r)->pixel_size, 0.2, 1e-12);
    CU_ASSERT_EQUAL(tmd_reader_info(r)->sample, TMD_F32);
    CU_ASSERT_PTR_NOT_NULL(strstr(tmd_reader_info(r)->layout, "chunked 1x16x16"));
    CU_ASSERT_PTR_NOT_NULL(strstr(tmd_reader_info(r)->layout, "deflate"));
    tmd_reader_close(&r);
    /* Velox EMD: /Data/Image/<id>/Data shaped (H, W, frames), pixel size in the JSON of the
     * sibling Metadata (uint8, characters x frames); a bare path finds it among other
     * 2-D datasets. */
    {
        h5fx v = {0, 3, 21, 26};
        uint16_t *hw = malloc(sizeof(uint16_t) * 3 * 21 * 26);
        for (int f = 0; f < 3; f++)
            for (int y = 0; y < 21; y++)
                for (int x = 0; x < 26; x++) hw[((size_t)y * 26 + x) * 3 + f] = (uint16_t)h5_val(&v, f, y, x);
        const char *json = "{\"BinaryResult\": {\"PixelSize\": {\"width\": \"1.5e-11\", \"height\": \"1.5e-11\"}}}";
        size_t L = strlen(json);
        uint8_t *meta = calloc(L * 3, 1);
        for (size_t i = 0; i < L; i++)
            for (int f = 0; f < 3; f++) meta[i * 3 + f] = (uint8_t)json[i];
        hsize_t dv[3] = {21, 26, 3}, cv[3] = {21, 26, 1}, dm[2] = {L, 3};
        const char *e = tmd_test_path("velox.emd");
        CU_ASSERT_EQUAL_FATAL(fx_h5_dataset(e, 1, "/Data/Image/4d2c7f/Data", 3, dv, H5T_STD_U16LE, H5T_NATIVE_UINT16,
                                            hw, cv, 0), 0);
        CU_ASSERT_EQUAL_FATAL(fx_h5_dataset(e, 0, "/Data/Image/4d2c7f/Metadata", 2, dm, H5T_STD_U8LE, H5T_NATIVE_UINT8,
                                            meta, NULL, 0), 0);
        CU_ASSERT_EQUAL_FATAL(fx_h5_dataset(e, 0, "/Presentation/Thumbnail", 2, dm, H5T_STD_U8LE, H5T_NATIVE_UINT8,
                                            meta, NULL, 0), 0);
        check_flavour("Velox EMD (H, W, T)", e, 3, 21, 26, expect_h5, &v, "HDF5");
        tmd_ctx vc;
        tmd_test_ctx(&vc);
        tmd_reader *vr = NULL;
        CU_ASSERT_EQUAL_FATAL(tmd_reader_open(&vc, e, &vr), TMD_OK);
        CU_ASSERT_DOUBLE_EQUAL(tmd_reader_info(vr)->pixel_size, 0.15, 1e-9);
        CU_ASSERT_PTR_NOT_NULL(strstr(tmd_reader_info(vr)->layout, "Velox"));
        tmd_reader_close(&vr);
        free(hw);
        free(meta);
    }
    /* Berkeley EMD (emd_group_type 1): /data/<name>/data with the axes' coordinates in dim1 ..
     * dimN beside it; the pixel size is the step of the last (fast-scan) axis in its units
     * ("[n_m]" = nm), an uncalibrated axis ("[px]") gives none, and an explicit pixel_size
     * attribute on the dataset wins. */
    {
        h5fx b = {1, 1, 12, 14};
        void *bb = h5_buf(&b);
        hsize_t db[2] = {12, 14}, n1 = 12, n2 = 14;
        double d1[12], d2[14];
        for (int i = 0; i < 12; i++) d1[i] = 0.5 + 0.02 * i;     /* slow axis: 0.2 A */
        for (int i = 0; i < 14; i++) d2[i] = -1.0 + 0.0137 * i;  /* fast axis: 0.137 A */
        const char *e = tmd_test_path("berkeley.emd");
        CU_ASSERT_EQUAL_FATAL(fx_h5_dataset(e, 1, "/data/frame0/data", 2, db, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, bb,
                                            NULL, 0), 0);
        CU_ASSERT_EQUAL_FATAL(fx_h5_dataset(e, 0, "/data/frame0/dim1", 1, &n1, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, d1,
                                            NULL, 0), 0);
        CU_ASSERT_EQUAL_FATAL(fx_h5_dataset(e, 0, "/data/frame0/dim2", 1, &n2, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, d2,
                                            NULL, 0), 0);
        CU_ASSERT_EQUAL_FATAL(fx_h5_str_attr(e, "/data/frame0/dim1", "units", "[n_m]", 0), 0);
        CU_ASSERT_EQUAL_FATAL(fx_h5_str_attr(e, "/data/frame0/dim2", "units", "[n_m]", 1), 0);
        /* a second group whose fast axis is in pixels */
        CU_ASSERT_EQUAL_FATAL(fx_h5_dataset(e, 0, "/data/frame1/data", 2, db, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, bb,
                                            NULL, 0), 0);
        CU_ASSERT_EQUAL_FATAL(fx_h5_dataset(e, 0, "/data/frame1/dim2", 1, &n2, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, d2,
                                            NULL, 0), 0);
        CU_ASSERT_EQUAL_FATAL(fx_h5_str_attr(e, "/data/frame1/dim2", "units", "[px]", 0), 0);
        struct { const char *dset; double px; } want[] = {{"/data/frame0/data", 0.137}, {"/data/frame1/data", 0}};
        for (int k = 0; k < 2; k++) {
            snprintf(spec, sizeof spec, "%s:%s", e, want[k].dset);
            tmd_ctx bc;
            tmd_test_ctx(&bc);
            tmd_reader *br = NULL;
            CU_ASSERT_EQUAL_FATAL(tmd_reader_open(&bc, spec, &br), TMD_OK);
            CU_ASSERT_DOUBLE_EQUAL(tmd_reader_info(br)->pixel_size, want[k].px, 1e-9);
            tmd_reader_close(&br);
        }
        hid_t f = H5Fopen(e, H5F_ACC_RDWR, H5P_DEFAULT);
        hid_t d = H5Dopen2(f, "/data/frame0/data", H5P_DEFAULT), sc = H5Screate(H5S_SCALAR);
        hid_t a = H5Acreate2(d, "pixel_size", H5T_IEEE_F64LE, sc, H5P_DEFAULT, H5P_DEFAULT);
        double pv = 0.25;
        H5Awrite(a, H5T_NATIVE_DOUBLE, &pv);
        H5Aclose(a), H5Sclose(sc), H5Dclose(d), H5Fclose(f);
        snprintf(spec, sizeof spec, "%s:/data/frame0/data", e);
        tmd_ctx bc;
        tmd_test_ctx(&bc);
        tmd_reader *br = NULL;
        CU_ASSERT_EQUAL_FATAL(tmd_reader_open(&bc, spec, &br), TMD_OK);
        CU_ASSERT_DOUBLE_EQUAL(tmd_reader_info(br)->pixel_size, 0.25, 1e-12);
        tmd_reader_close(&br);
        free(bb);
    }
    /* int16 2-D, converted. */
    h5fx c = {2, 1, 20, 22};
    void *bc = h5_buf(&c);
    hsize_t dc[2] = {20, 22};
    CU_ASSERT_EQUAL_FATAL(fx_h5_dataset(tmd_test_path("ini16.h5"), 1, "/img", 2, dc, H5T_STD_I16LE, H5T_NATIVE_INT16,
                                        bc, NULL, 0), 0);
    snprintf(spec, sizeof spec, "%s:/img", tmd_test_path("ini16.h5"));
    check_flavour("h5 2-D i16", spec, 1, 20, 22, expect_h5, &c, "HDF5");
    free(bc);
}

/* ---- bad inputs ----------------------------------------------------------------------- */

/* Opening (and, if it opens, reading every frame of) spec must fail with a message that
 * names `name_in_msg` and contains `also` (if given). */
static void expect_refused(const char *what, const char *spec, const char *name_in_msg, const char *also)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    tmd_reader *r = NULL;
    tmd_status st = tmd_reader_open(&ctx, spec, &r);
    if (!st) {
        const tmd_image_info *in = tmd_reader_info(r);
        float *buf = malloc(sizeof(float) * (size_t)in->height * (size_t)in->width);
        for (int64_t f = 0; f < in->frames && !st; f++)
            st = tmd_reader_read(&ctx, r, f, 0, 0, in->height, in->width, buf);
        free(buf);
        tmd_reader_close(&r);
    }
    CU_ASSERT_NOT_EQUAL(st, TMD_OK);
    CU_ASSERT_PTR_NULL(r);
    int names = strstr(ctx.err_msg, name_in_msg) != NULL;
    int has = !also || strstr(ctx.err_msg, also) != NULL;
    if (!names || !has || !st) fprintf(stderr, "%s: status %d, message: %s\n", what, st, ctx.err_msg);
    CU_ASSERT_TRUE(names);
    CU_ASSERT_TRUE(has);
}

static void test_bad_tiffs(void)
{
    fx_opts o;
    const char *p;
    /* Missing, empty and non-image files. */
    p = tmd_test_path("missing.tif");
    expect_refused("missing", p, p, "cannot open");
    expect_refused("directory", tmd_test_dir(), tmd_test_dir(), "is a directory");
    p = tmd_test_path("empty.tif");
    fclose(fopen(p, "wb"));
    expect_refused("empty", p, p, "empty");
    p = tmd_test_path("text.tif");
    FILE *f = fopen(p, "wb");
    fputs("this is not an image at all\n", f);
    fclose(f);
    expect_refused("text", p, p, "not a TIFF or HDF5");

    /* Truncated (uncompressed and LZW): IFD is at the end, so the header goes first. */
    o = fx_default();
    p = tmd_test_path("trunc.tif");
    CU_ASSERT_EQUAL_FATAL(fx_write_tiff(p, &o), 0);
    CU_ASSERT_EQUAL_FATAL(truncate_to(p, 0.6), 0);
    expect_refused("truncated", p, p, NULL);
    o.compression = COMPRESSION_LZW;
    p = tmd_test_path("trunc_lzw.tif");
    CU_ASSERT_EQUAL_FATAL(fx_write_tiff(p, &o), 0);
    CU_ASSERT_EQUAL_FATAL(truncate_to(p, 0.5), 0);
    expect_refused("truncated lzw", p, p, NULL);

    o = fx_default();
    o.frames = 4;
    p = tmd_test_path("trunc_stack.tif");
    CU_ASSERT_EQUAL_FATAL(fx_write_tiff(p, &o), 0);
    CU_ASSERT_EQUAL_FATAL(truncate_to(p, 0.7), 0);
    expect_refused("truncated stack", p, p, NULL);

    p = tmd_test_path("imagej_trunc.tif");
    CU_ASSERT_EQUAL_FATAL(fx_write_imagej_raw(p, 33, 17, 5, 3), 0);
    expect_refused("truncated ImageJ raw stack", p, p, "ImageJ stack of 5 images");

    /* Zero and absurd dimensions. */
    o = fx_default();
    p = tmd_test_path("zero_w.tif");
    CU_ASSERT_EQUAL_FATAL(fx_write_tiff(p, &o), 0);
    CU_ASSERT_EQUAL_FATAL(patch_tag(p, TIFFTAG_IMAGEWIDTH, 0, 0), 0);
    expect_refused("zero width", p, p, "unusable size 0 x 38");
    p = tmd_test_path("zero_h.tif");
    CU_ASSERT_EQUAL_FATAL(fx_write_tiff(p, &o), 0);
    CU_ASSERT_EQUAL_FATAL(patch_tag(p, TIFFTAG_IMAGELENGTH, 0, 0), 0);
    expect_refused("zero height", p, p, "unusable size 45 x 0");
    o = fx_default();
    o.w = 70000; /* LONG-typed width tag, then made absurd */
    o.h = 2;
    o.rps = 1;
    p = tmd_test_path("absurd_w.tif");
    CU_ASSERT_EQUAL_FATAL(fx_write_tiff(p, &o), 0);
    CU_ASSERT_EQUAL_FATAL(patch_tag(p, TIFFTAG_IMAGEWIDTH, 0, 0x7FFFFFF0u), 0);
    expect_refused("absurd width", p, p, NULL);

    /* Byte counts: beyond the end of the file, and zero (LZW: libtiff does not re-estimate). */
    o = fx_default();
    o.compression = COMPRESSION_LZW;
    p = tmd_test_path("bc_beyond.tif");
    CU_ASSERT_EQUAL_FATAL(fx_write_tiff(p, &o), 0);
    CU_ASSERT_EQUAL_FATAL(patch_tag(p, TIFFTAG_STRIPBYTECOUNTS, 3, 60000u), 0); /* SHORT-typed tag */
    expect_refused("byte count beyond file", p, p, "strip 3 promises 60000 bytes");
    p = tmd_test_path("bc_zero.tif");
    CU_ASSERT_EQUAL_FATAL(fx_write_tiff(p, &o), 0);
    CU_ASSERT_EQUAL_FATAL(patch_tag(p, TIFFTAG_STRIPBYTECOUNTS, 2, 0), 0);
    expect_refused("byte count zero", p, p, "strip 2");
    o = fx_default();
    p = tmd_test_path("off_beyond.tif");
    CU_ASSERT_EQUAL_FATAL(fx_write_tiff(p, &o), 0);
    CU_ASSERT_EQUAL_FATAL(patch_tag(p, TIFFTAG_STRIPOFFSETS, 4, 0x7FFF0000u), 0);
    expect_refused("offset beyond file", p, p, "strip 4");

    /* Sample formats tmdflow does not read. */
    o = fx_default();
    o.bps = 12;
    o.rps = 38;
    p = tmd_test_path("b12.tif");
    CU_ASSERT_EQUAL_FATAL(fx_write_12bit(p), 0);
    expect_refused("12-bit", p, p, "12-bit");
    p = tmd_test_path("complex.tif");
    {
        TIFF *t = TIFFOpen(p, "w");
        TIFFSetField(t, TIFFTAG_IMAGEWIDTH, 8u);
        TIFFSetField(t, TIFFTAG_IMAGELENGTH, 4u);
        TIFFSetField(t, TIFFTAG_BITSPERSAMPLE, 64);
        TIFFSetField(t, TIFFTAG_SAMPLEFORMAT, SAMPLEFORMAT_COMPLEXIEEEFP);
        TIFFSetField(t, TIFFTAG_SAMPLESPERPIXEL, 1);
        TIFFSetField(t, TIFFTAG_PHOTOMETRIC, PHOTOMETRIC_MINISBLACK);
        TIFFSetField(t, TIFFTAG_ROWSPERSTRIP, 4u);
        uint8_t row[64] = {0};
        for (uint32_t y = 0; y < 4; y++) TIFFWriteScanline(t, row, y, 0);
        TIFFClose(t);
    }
    expect_refused("complex", p, p, "complex");
    /* A codec libtiff lacks (JPEG 2000 code 34712 patched in). */
    o = fx_default();
    p = tmd_test_path("codec.tif");
    CU_ASSERT_EQUAL_FATAL(fx_write_tiff(p, &o), 0);
    CU_ASSERT_EQUAL_FATAL(patch_tag(p, TIFFTAG_COMPRESSION, 0, 34712), 0);
    expect_refused("codec", p, p, "compression");

    /* Pages of different sizes. */
    o = fx_default();
    o.frames = 3;
    o.vary_page = 1;
    p = tmd_test_path("vary.tif");
    CU_ASSERT_EQUAL_FATAL(fx_write_tiff(p, &o), 0);
    expect_refused("pages differ", p, p, "page 1");

    /* NaN and Inf samples: message names file, frame and pixel. */
    o = fx_default();
    o.bps = 32;
    o.sf = SAMPLEFORMAT_IEEEFP;
    o.nan_at = 1;
    p = tmd_test_path("nan.tif");
    CU_ASSERT_EQUAL_FATAL(fx_write_tiff(p, &o), 0);
    expect_refused("NaN", p, p, "frame 0, pixel (x=5, y=3) is NaN");
    o.nan_at = 2;
    o.bps = 64;
    p = tmd_test_path("inf.tif");
    CU_ASSERT_EQUAL_FATAL(fx_write_tiff(p, &o), 0);
    expect_refused("Inf", p, p, "infinite");
    /* ... but a region that avoids the bad pixel reads fine. */
    {
        tmd_ctx ctx;
        tmd_test_ctx(&ctx);
        tmd_reader *r = NULL;
        float buf[16];
        CU_ASSERT_EQUAL_FATAL(tmd_reader_open(&ctx, p, &r), TMD_OK);
        CU_ASSERT_EQUAL(tmd_reader_read(&ctx, r, 0, 10, 10, 4, 4, buf), TMD_OK);
        tmd_reader_close(&r);
    }
}

/* Only the strips overlapping a region are decoded: corrupt strip 3 (rows 21..27) of an LZW
 * file; rows 0..20 and 28.. read fine, a region over rows 21..27 fails naming strip 3. */
static void test_region_touches_only_its_strips(void)
{
    fx_opts o = fx_default();
    o.compression = COMPRESSION_LZW;
    const char *p = tmd_test_path("corrupt_strip.tif");
    CU_ASSERT_EQUAL_FATAL(fx_write_tiff(p, &o), 0);
    uint32_t off = get_tag(p, TIFFTAG_STRIPOFFSETS, 3), cnt = get_tag(p, TIFFTAG_STRIPBYTECOUNTS, 3);
    CU_ASSERT_TRUE_FATAL(off > 0 && cnt > 4);
    FILE *f = fopen(p, "r+b");
    uint8_t junk[4096];
    memset(junk, 0xFF, sizeof junk);
    CU_ASSERT_EQUAL(write_at(f, (long)off, junk, cnt < sizeof junk ? cnt : sizeof junk), 0);
    fclose(f);
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    tmd_reader *r = NULL;
    CU_ASSERT_EQUAL_FATAL(tmd_reader_open(&ctx, p, &r), TMD_OK);
    float *buf = malloc(sizeof(float) * 45 * 38);
    CU_ASSERT_EQUAL(tmd_reader_read(&ctx, r, 0, 0, 0, 21, 45, buf), TMD_OK);
    int bad = 0;
    for (int y = 0; y < 21; y++)
        for (int x = 0; x < 45; x++) bad += buf[y * 45 + x] != expected_val(&o, 0, y, x);
    CU_ASSERT_EQUAL(bad, 0);
    CU_ASSERT_EQUAL(tmd_reader_read(&ctx, r, 0, 28, 3, 10, 40, buf), TMD_OK);
    tmd_status st = tmd_reader_read(&ctx, r, 0, 20, 0, 3, 45, buf);
    CU_ASSERT_NOT_EQUAL(st, TMD_OK);
    CU_ASSERT_PTR_NOT_NULL(strstr(ctx.err_msg, "strip 3"));
    CU_ASSERT_PTR_NOT_NULL(strstr(ctx.err_msg, p));
    free(buf);
    tmd_reader_close(&r);
}

static void test_bad_hdf5(void)
{
    char spec[1200];
    const char *p = tmd_test_path("bad.h5");
    float v[64] = {0};
    hsize_t d1[1] = {64}, d4[4] = {2, 2, 4, 4}, d2[2] = {8, 8};
    CU_ASSERT_EQUAL_FATAL(fx_h5_dataset(p, 1, "/line", 1, d1, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, v, NULL, 0), 0);
    CU_ASSERT_EQUAL_FATAL(fx_h5_dataset(p, 0, "/hyper", 4, d4, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, v, NULL, 0), 0);
    /* Wrong rank. */
    snprintf(spec, sizeof spec, "%s:/line", p);
    expect_refused("h5 1-D", spec, p, "1 dimensions");
    snprintf(spec, sizeof spec, "%s:/hyper", p);
    expect_refused("h5 4-D", spec, p, "4 dimensions");
    /* Missing dataset; bare file without any image dataset. */
    snprintf(spec, sizeof spec, "%s:/image", p);
    expect_refused("h5 missing", spec, p, "/image is missing");
    expect_refused("h5 no image", p, p, "no 2-D or 3-D");
    /* Two candidates and no /image: the message lists them. */
    const char *q = tmd_test_path("two.h5");
    CU_ASSERT_EQUAL_FATAL(fx_h5_dataset(q, 1, "/a", 2, d2, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, v, NULL, 0), 0);
    CU_ASSERT_EQUAL_FATAL(fx_h5_dataset(q, 0, "/b/c", 2, d2, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, v, NULL, 0), 0);
    expect_refused("h5 two candidates", q, q, "/b/c");
    /* A NaN in an HDF5 float image. */
    v[2 * 8 + 5] = NAN;
    const char *n = tmd_test_path("nan.h5");
    CU_ASSERT_EQUAL_FATAL(fx_h5_dataset(n, 1, "/image", 2, d2, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, v, NULL, 0), 0);
    expect_refused("h5 NaN", n, n, "pixel (x=5, y=2) is NaN");
    /* A truncated HDF5 file (big contiguous dataset, cut in half). */
    const char *t = tmd_test_path("trunc.h5");
    float *big = calloc(256 * 256, sizeof(float));
    hsize_t db[2] = {256, 256};
    CU_ASSERT_EQUAL_FATAL(fx_h5_dataset(t, 1, "/image", 2, db, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, big, NULL, 0), 0);
    free(big);
    CU_ASSERT_EQUAL_FATAL(truncate_to(t, 0.5), 0);
    expect_refused("h5 truncated", t, t, NULL);
    /* A dataset path on a TIFF. */
    fx_opts o = fx_default();
    const char *tif = tmd_test_path("plain.tif");
    CU_ASSERT_EQUAL_FATAL(fx_write_tiff(tif, &o), 0);
    snprintf(spec, sizeof spec, "%s:/image", tif);
    expect_refused("tiff with dataset", spec, tif, "TIFF");
}

/* ---- TIFF writer ------------------------------------------------------------------------ */

static float writer_val(const void *arg, int f, int y, int x)
{
    (void)arg;
    return (float)(f * 1000 + y * 10 + x) * 0.75f - 20.0f;
}

static float writer_u16(const void *arg, int f, int y, int x)
{
    float v = writer_val(arg, f, y, x) * 60.0f;
    return v <= 0 ? 0.0f : v >= 65535.0f ? 65535.0f : (float)lrintf(v);
}

static void test_tiff_write(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    const int T = 3, H = 50, W = 61;
    float *img = malloc(sizeof(float) * T * H * W), *img16 = malloc(sizeof(float) * T * H * W);
    for (int f = 0; f < T; f++)
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++) {
                img[(f * H + y) * W + x] = writer_val(NULL, f, y, x);
                img16[(f * H + y) * W + x] = writer_val(NULL, f, y, x) * 60.0f;
            }
    img16[0] = NAN; /* NaN -> 0 */
    CU_ASSERT_EQUAL(tmd_tiff_write(&ctx, tmd_test_path("w_f32.tif"), img, T, H, W, TMD_F32, 0), TMD_OK);
    check_flavour("written f32 stack", tmd_test_path("w_f32.tif"), T, H, W, writer_val, NULL, "TIFF");
    CU_ASSERT_EQUAL(tmd_tiff_write(&ctx, tmd_test_path("w_u16.tif"), img16, T, H, W, TMD_U16, 1), TMD_OK);
    check_flavour("written u16 BigTIFF stack (clamped)", tmd_test_path("w_u16.tif"), T, H, W, writer_u16, NULL,
                  "BigTIFF");
    CU_ASSERT_EQUAL(tmd_tiff_write_ex(&ctx, tmd_test_path("w_px.tif"), img, 1, H, W, TMD_F32, 0, 0.137), TMD_OK);
    tmd_reader *r = NULL;
    CU_ASSERT_EQUAL_FATAL(tmd_reader_open(&ctx, tmd_test_path("w_px.tif"), &r), TMD_OK);
    CU_ASSERT_DOUBLE_EQUAL(tmd_reader_info(r)->pixel_size, 0.137, 1e-6);
    tmd_reader_close(&r);
    /* No pixel size stored: 0. */
    CU_ASSERT_EQUAL_FATAL(tmd_reader_open(&ctx, tmd_test_path("w_f32.tif"), &r), TMD_OK);
    CU_ASSERT_EQUAL(tmd_reader_info(r)->pixel_size, 0.0);
    tmd_reader_close(&r);
    /* An unwritable path: error naming it, nothing left. */
    tmd_ctx c2;
    tmd_test_ctx(&c2);
    const char *bad = tmd_test_path("no/such/dir/x.tif");
    CU_ASSERT_EQUAL(tmd_tiff_write(&c2, bad, img, 1, H, W, TMD_F32, 0), TMD_ERR_IO);
    CU_ASSERT_PTR_NOT_NULL(strstr(c2.err_msg, bad));
    free(img);
    free(img16);
}

/* ---- fixtures for the command-line tests ---------------------------------------------- */

static int make_fixtures(const char *dir)
{
    char p[1200];
    int rc = 0;
    fx_opts o = fx_default();
    o.w = 300;
    o.h = 200;
    o.rps = 16;
    snprintf(p, sizeof p, "%s/u16_striped.tif", dir);
    rc |= fx_write_tiff(p, &o);
    o = fx_default();
    o.w = 300;
    o.h = 200;
    o.tiled = 1;
    o.tw = 64;
    o.th = 64;
    o.bps = 32;
    o.sf = SAMPLEFORMAT_IEEEFP;
    o.compression = COMPRESSION_LZW;
    snprintf(p, sizeof p, "%s/tiled.tif", dir);
    rc |= fx_write_tiff(p, &o);
    o = fx_default();
    o.w = 256;
    o.h = 256;
    o.rps = 32;
    o.big = 1;
    snprintf(p, sizeof p, "%s/big.tif", dir);
    rc |= fx_write_tiff(p, &o);
    o = fx_default();
    o.w = 128;
    o.h = 96;
    o.frames = 6;
    o.bps = 8;
    o.compression = COMPRESSION_ADOBE_DEFLATE;
    snprintf(p, sizeof p, "%s/stack.tif", dir);
    rc |= fx_write_tiff(p, &o);
    /* Truncated: a 512 x 512 uint16 image cut to 60 %. */
    o = fx_default();
    o.w = 512;
    o.h = 512;
    o.rps = 16;
    snprintf(p, sizeof p, "%s/truncated.tif", dir);
    rc |= fx_write_tiff(p, &o);
    rc |= truncate_to(p, 0.6);
    /* HDF5: 3-D float32 /image, chunked, with pixel_size; plus a 2-D u16 elsewhere. */
    h5fx b = {1, 3, 64, 80};
    void *bb = h5_buf(&b);
    hsize_t db[3] = {3, 64, 80}, cb[3] = {1, 32, 32};
    snprintf(p, sizeof p, "%s/stack.h5", dir);
    rc |= fx_h5_dataset(p, 1, "/image", 3, db, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, bb, cb, 1);
    rc |= fx_h5_root_attr(p, "pixel_size", 0.15);
    free(bb);
    h5fx a = {0, 1, 40, 50};
    void *ba = h5_buf(&a);
    hsize_t da[2] = {40, 50};
    rc |= fx_h5_dataset(p, 0, "/raw/frame0", 2, da, H5T_STD_U16LE, H5T_NATIVE_UINT16, ba, NULL, 0);
    free(ba);
    /* Bad inputs for tests/cli/bad_input.sh. */
    o = fx_default();
    o.w = 200;
    o.h = 150;
    o.bps = 32;
    o.sf = SAMPLEFORMAT_IEEEFP;
    o.nan_at = 1;
    snprintf(p, sizeof p, "%s/bad_nan.tif", dir);
    rc |= fx_write_tiff(p, &o);
    o = fx_default();
    snprintf(p, sizeof p, "%s/bad_zero.tif", dir);
    rc |= fx_write_tiff(p, &o);
    rc |= patch_tag(p, TIFFTAG_IMAGEWIDTH, 0, 0);
    o.compression = COMPRESSION_LZW;
    snprintf(p, sizeof p, "%s/bad_bytecount.tif", dir);
    rc |= fx_write_tiff(p, &o);
    rc |= patch_tag(p, TIFFTAG_STRIPBYTECOUNTS, 3, 60000u);
    snprintf(p, sizeof p, "%s/bad_12bit.tif", dir);
    rc |= fx_write_12bit(p);

    /* A TIFF carrying its pixel size the ImageJ way. */
    tmd_ctx ctx;
    tmd_ctx_init(&ctx, MPI_COMM_SELF);
    ctx.log_level = TMD_LOG_QUIET;
    float *img = calloc(64 * 64, sizeof(float));
    for (int i = 0; i < 64 * 64; i++) img[i] = (float)(i % 97);
    snprintf(p, sizeof p, "%s/px.tif", dir);
    if (tmd_tiff_write_ex(&ctx, p, img, 1, 64, 64, TMD_U16, 0, 0.12)) rc = 1;
    free(img);
    /* A small result file written by the result writer. */
    snprintf(p, sizeof p, "%s/result.h5", dir);
    tmd_writer *w = NULL;
    double x[5] = {1, 2, 3, 4, 5}, px = 0.12;
    int8_t un[3] = {1, 0, 1};
    int64_t ranks = 1;
    const char *config = "[run]\ntile = 512\nhalo = 32\n[classify]\nthreshold = 0.5\n";
    tmd_status st = tmd_writer_create(&ctx, p, 1, MPI_COMM_SELF, &w);
    if (!st) st = tmd_writer_rows(&ctx, w, "/atoms/x", TMD_F64, 5, 1, x);
    if (!st) st = tmd_writer_rows(&ctx, w, "/defects/x", TMD_F64, 2, 1, x);
    if (!st) st = tmd_writer_rows(&ctx, w, "/sites/x", TMD_F64, 3, 1, x);
    if (!st) st = tmd_writer_rows(&ctx, w, "/sites/unstable", TMD_I8, 3, 1, un);
    if (!st) st = tmd_writer_attr_str(&ctx, w, "/", "tmdflow_version", TMD_VERSION);
    if (!st) st = tmd_writer_attr_str(&ctx, w, "/", "config", config);
    if (!st) st = tmd_writer_attr_str(&ctx, w, "/", "input", "sample.tif");
    if (!st) st = tmd_writer_attr_f64(&ctx, w, "/", "pixel_size", &px, 1);
    if (!st) st = tmd_writer_attr_i64(&ctx, w, "/", "ranks", &ranks, 1);
    st = tmd_writer_close(&ctx, &w, st == TMD_OK);
    if (st) {
        fprintf(stderr, "test_io: %s\n", ctx.err_msg);
        rc = 1;
    }
    if (rc) fprintf(stderr, "test_io: could not write the fixtures in %s\n", dir);
    return rc ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "--make-fixtures")) {
        TIFFSetWarningHandler(NULL);
        MPI_Init(&argc, &argv);
        int rc = make_fixtures(argv[2]);
        MPI_Finalize();
        return rc;
    }
    TIFFSetWarningHandler(NULL); /* the fixture writer's own libtiff warnings */
    TIFFSetErrorHandler(NULL);
    return tmd_test_main(argc, argv, "io",
                         (tmd_test_case[]){{"TIFF flavours: whole and region reads", test_tiff_flavours},
                                           {"HDF5 inputs: 2-D, 3-D, bare and named", test_hdf5_inputs},
                                           {"bad TIFF inputs are refused naming the file", test_bad_tiffs},
                                           {"a region decodes only its strips", test_region_touches_only_its_strips},
                                           {"bad HDF5 inputs are refused naming the file", test_bad_hdf5},
                                           {"TIFF writer round-trips", test_tiff_write},
                                           {0}});
}
