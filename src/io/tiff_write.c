/* io module: TIFF writer for simulated images and test data (see tmd/io.h). Striped
 * (about 256 KiB per strip), uncompressed, one page per frame; BigTIFF when asked or when the
 * data would come near 2 GiB (classic offsets are 32-bit, and some readers take them as
 * signed). The pixel size, when given, is stored the way ImageJ/Fiji stores it
 * (XResolution/YResolution in pixels per nm, "unit=nm" in the ImageDescription), which
 * tmd_reader reads back. */
#include "io_internal.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    char msg[400];
} tiff_msgs;

static int on_err(TIFF *tif, void *ud, const char *module, const char *fmt, va_list ap)
{
    (void)tif;
    tiff_msgs *m = ud;
    if (!m->msg[0]) {
        char body[300];
        vsnprintf(body, sizeof body, fmt, ap);
        snprintf(m->msg, sizeof m->msg, "%s%s%s", module ? module : "", module ? ": " : "", body);
    }
    return 1;
}

static int on_warn(TIFF *tif, void *ud, const char *module, const char *fmt, va_list ap)
{
    (void)tif; (void)ud; (void)module; (void)fmt; (void)ap;
    return 1;
}

tmd_status tmd_tiff_write_ex(tmd_ctx *ctx, const char *path, const float *img, int64_t frames, int64_t height,
                             int64_t width, tmd_dtype sample, int bigtiff, double pixel_size)
{
    tmd_status st = TMD_OK;
    TIFF *t = NULL;
    void *row = NULL;
    tiff_msgs m = {{0}};
    tmd_io_tiff_quiet();
    if (!path || !img || frames < 1 || height < 1 || width < 1 || height > TMD_IO_MAX_SIDE || width > TMD_IO_MAX_SIDE)
        return TMD_FAIL(ctx, TMD_ERR_ARG, "writing TIFF %s: need an image of at least 1x1x1 (got %lld x %lld x %lld)",
                        path ? path : "?", (long long)frames, (long long)height, (long long)width);
    if (sample != TMD_F32 && sample != TMD_U16 && sample != TMD_U8)
        return TMD_FAIL(ctx, TMD_ERR_ARG, "writing TIFF %s: sample type %s not supported (float32, uint16 or uint8)", path,
                        tmd_dtype_name(sample));
    size_t es = tmd_dtype_size(sample);
    double total = (double)frames * (double)height * (double)width * (double)es;
    int big = bigtiff || total > 2.0e9; /* some readers take classic offsets as signed 32-bit */
    TIFFOpenOptions *opts = TIFFOpenOptionsAlloc();
    if (!opts) return TMD_FAIL(ctx, TMD_ERR_NOMEM, "out of memory writing %s", path);
    TIFFOpenOptionsSetErrorHandlerExtR(opts, on_err, &m);
    TIFFOpenOptionsSetWarningHandlerExtR(opts, on_warn, &m);
    t = TIFFOpenExt(path, big ? "w8" : "w", opts);
    TIFFOpenOptionsFree(opts);
    if (!t) {
        st = TMD_FAIL(ctx, TMD_ERR_IO, "cannot create TIFF %s%s%s", path, m.msg[0] ? ": " : "", m.msg);
        goto cleanup;
    }
    st = tmd_calloc(ctx, &row, (size_t)width, es, "a TIFF row");
    if (st) goto cleanup;
    uint32_t rps = (uint32_t)((256 * 1024) / ((size_t)width * es));
    if (rps < 1) rps = 1;
    if (rps > (uint32_t)height) rps = (uint32_t)height;
    char desc[200];
    if (pixel_size > 0)
        snprintf(desc, sizeof desc, "ImageJ=1.54f\nimages=%lld\nslices=%lld\nunit=nm\ntmdflow pixel_size=%.9g A\n",
                 (long long)frames, (long long)frames, pixel_size);
    for (int64_t f = 0; f < frames && !st; f++) {
        TIFFSetField(t, TIFFTAG_IMAGEWIDTH, (uint32_t)width);
        TIFFSetField(t, TIFFTAG_IMAGELENGTH, (uint32_t)height);
        TIFFSetField(t, TIFFTAG_BITSPERSAMPLE, (uint16_t)(es * 8));
        TIFFSetField(t, TIFFTAG_SAMPLESPERPIXEL, (uint16_t)1);
        TIFFSetField(t, TIFFTAG_SAMPLEFORMAT, sample == TMD_F32 ? SAMPLEFORMAT_IEEEFP : SAMPLEFORMAT_UINT);
        TIFFSetField(t, TIFFTAG_PHOTOMETRIC, PHOTOMETRIC_MINISBLACK);
        TIFFSetField(t, TIFFTAG_PLANARCONFIG, PLANARCONFIG_CONTIG);
        TIFFSetField(t, TIFFTAG_COMPRESSION, COMPRESSION_NONE);
        TIFFSetField(t, TIFFTAG_ROWSPERSTRIP, rps);
        if (frames > 1) {
            TIFFSetField(t, TIFFTAG_SUBFILETYPE, FILETYPE_PAGE);
            TIFFSetField(t, TIFFTAG_PAGENUMBER, (uint16_t)(f < 65535 ? f : 65535), (uint16_t)(frames < 65535 ? frames : 65535));
        }
        if (pixel_size > 0) {
            float res = (float)(10.0 / pixel_size); /* pixels per nm */
            TIFFSetField(t, TIFFTAG_XRESOLUTION, res);
            TIFFSetField(t, TIFFTAG_YRESOLUTION, res);
            TIFFSetField(t, TIFFTAG_RESOLUTIONUNIT, RESUNIT_NONE);
            if (f == 0) TIFFSetField(t, TIFFTAG_IMAGEDESCRIPTION, desc);
        }
        TIFFSetField(t, TIFFTAG_SOFTWARE, "tmdflow " TMD_VERSION);
        for (int64_t y = 0; y < height; y++) {
            const float *src = img + ((size_t)f * (size_t)height + (size_t)y) * (size_t)width;
            if (sample == TMD_F32) {
                memcpy(row, src, (size_t)width * sizeof(float));
            } else if (sample == TMD_U16) {
                uint16_t *d = row;
                for (int64_t x = 0; x < width; x++) {
                    float v = src[x];
                    d[x] = !(v > 0) ? 0 : v >= 65535.0f ? 65535 : (uint16_t)lrintf(v);
                }
            } else {
                uint8_t *d = row;
                for (int64_t x = 0; x < width; x++) {
                    float v = src[x];
                    d[x] = !(v > 0) ? 0 : v >= 255.0f ? 255 : (uint8_t)lrintf(v);
                }
            }
            if (TIFFWriteScanline(t, row, (uint32_t)y, 0) < 0) {
                st = TMD_FAIL(ctx, TMD_ERR_IO, "writing TIFF %s: frame %lld, row %lld failed (disk full?)%s%s", path,
                              (long long)f, (long long)y, m.msg[0] ? ": " : "", m.msg);
                break;
            }
        }
        if (!st && !TIFFWriteDirectory(t))
            st = TMD_FAIL(ctx, TMD_ERR_IO, "writing TIFF %s: page %lld could not be finished (disk full?)%s%s", path,
                          (long long)f, m.msg[0] ? ": " : "", m.msg);
    }
cleanup:
    if (t) {
        TIFFClose(t);
        if (!st && m.msg[0]) st = TMD_FAIL(ctx, TMD_ERR_IO, "writing TIFF %s: %s", path, m.msg);
        if (st) unlink(path); /* never leave a half-written image behind */
    }
    free(row);
    return st;
}

tmd_status tmd_tiff_write(tmd_ctx *ctx, const char *path, const float *img, int64_t frames, int64_t height,
                          int64_t width, tmd_dtype sample, int bigtiff)
{
    return tmd_tiff_write_ex(ctx, path, img, frames, height, width, sample, bigtiff, 0.0);
}
