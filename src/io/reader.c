/* io module: the image reader front end (see tmd/io.h) — picks TIFF or HDF5 by the file's
 * first bytes, checks regions, converts to float32 and refuses non-finite samples. */
#include "io_internal.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

const tmd_image_info *tmd_reader_info(const tmd_reader *r) { return r ? &r->info : NULL; }

/* Splits "FILE:/dataset" when FILE exists; otherwise the whole spec is the file. */
static void split_spec(const char *spec, char *path, size_t np, char *dset, size_t nd)
{
    snprintf(path, np, "%s", spec);
    dset[0] = 0;
    const char *c = strstr(spec, ":/");
    while (c) {
        size_t len = (size_t)(c - spec);
        if (len > 0 && len < np) {
            char tmp[PATH_MAX];
            memcpy(tmp, spec, len);
            tmp[len] = 0;
            if (tmd_io_file_size(tmp) >= 0) {
                snprintf(path, np, "%s", tmp);
                snprintf(dset, nd, "%s", c + 1);
                return;
            }
        }
        c = strstr(c + 1, ":/");
    }
}

tmd_status tmd_reader_open(tmd_ctx *ctx, const char *spec, tmd_reader **out)
{
    tmd_status st = TMD_OK;
    tmd_reader *r = NULL;
    FILE *f = NULL;
    *out = NULL;
    if (!spec || !spec[0]) return TMD_FAIL(ctx, TMD_ERR_ARG, "no input file given");
    if (strlen(spec) >= PATH_MAX) return TMD_FAIL(ctx, TMD_ERR_ARG, "input name is too long (%zu characters)", strlen(spec));

    r = calloc(1, sizeof *r);
    if (!r) return TMD_FAIL(ctx, TMD_ERR_NOMEM, "out of memory opening %s", spec);
    r->file = r->dset = r->fspace = H5I_INVALID_HID;
    r->cur_frame = -1;
    split_spec(spec, r->path, sizeof r->path, r->dsetname, sizeof r->dsetname);

    int64_t size = tmd_io_file_size(r->path);
    if (size < 0) {
        st = TMD_FAIL(ctx, TMD_ERR_IO, "%s: cannot open input: %s", r->path, strerror(errno));
        goto cleanup;
    }
    struct stat sb;
    if (stat(r->path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        st = TMD_FAIL(ctx, TMD_ERR_ARG, "%s is a directory, not an image file", r->path);
        goto cleanup;
    }
    if (size == 0) {
        st = TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: the file is empty", r->path);
        goto cleanup;
    }
    unsigned char magic[8] = {0};
    f = fopen(r->path, "rb");
    if (!f) {
        st = TMD_FAIL(ctx, TMD_ERR_IO, "%s: cannot open input: %s", r->path, strerror(errno));
        goto cleanup;
    }
    size_t got = fread(magic, 1, sizeof magic, f);
    fclose(f);
    f = NULL;
    int is_tiff = got >= 4 && ((magic[0] == 'I' && magic[1] == 'I' && (magic[2] == 42 || magic[2] == 43) && magic[3] == 0) ||
                               (magic[0] == 'M' && magic[1] == 'M' && magic[2] == 0 && (magic[3] == 42 || magic[3] == 43)));
    if (is_tiff && !r->dsetname[0]) {
        r->kind = TMD_READER_TIFF;
        st = tmd_io_tiff_open(ctx, r);
    } else {
        tmd_io_h5_quiet();
        if (H5Fis_hdf5(r->path) > 0) {
            r->kind = TMD_READER_H5;
            st = tmd_io_h5_open(ctx, r);
        } else if (is_tiff) {
            st = TMD_FAIL(ctx, TMD_ERR_ARG, "%s is a TIFF file; a dataset path (':%s') applies only to HDF5 inputs",
                          r->path, r->dsetname);
        } else {
            st = TMD_FAIL(ctx, TMD_ERR_FORMAT,
                          "%s: not a TIFF or HDF5 file (first bytes %02x %02x %02x %02x), or an HDF5 file whose "
                          "superblock is damaged or truncated",
                          r->path, magic[0], magic[1], magic[2], magic[3]);
        }
    }
    if (st) goto cleanup;
    *out = r;
    r = NULL;
cleanup:
    if (f) fclose(f);
    tmd_reader_close(&r);
    return st;
}

tmd_status tmd_reader_read(tmd_ctx *ctx, tmd_reader *r, int64_t frame, int64_t y0, int64_t x0, int64_t h, int64_t w,
                           float *out)
{
    if (!r) return TMD_FAIL(ctx, TMD_ERR_ARG, "reading from a reader that is not open");
    const tmd_image_info *in = &r->info;
    if (frame < 0 || frame >= in->frames || y0 < 0 || x0 < 0 || h < 0 || w < 0 || y0 + h > in->height ||
        x0 + w > in->width)
        return TMD_FAIL(ctx, TMD_ERR_RANGE,
                        "%s: region frame %lld, rows %lld..%lld, columns %lld..%lld is outside the image "
                        "(%lld frames of %lld x %lld)",
                        r->path, (long long)frame, (long long)y0, (long long)(y0 + h - 1), (long long)x0,
                        (long long)(x0 + w - 1), (long long)in->frames, (long long)in->height, (long long)in->width);
    if (h == 0 || w == 0) return TMD_OK;
    if (!out) return TMD_FAIL(ctx, TMD_ERR_ARG, "%s: no output buffer", r->path);
    tmd_status st = r->kind == TMD_READER_TIFF ? tmd_io_tiff_read(ctx, r, frame, y0, x0, h, w, out)
                                               : tmd_io_h5_read(ctx, r, frame, y0, x0, h, w, out);
    if (st) return st;
    if (in->sample == TMD_F32 || in->sample == TMD_F64) {
        size_t n = (size_t)h * (size_t)w;
        for (size_t i = 0; i < n; i++) {
            if (!isfinite(out[i])) {
                long long yy = y0 + (int64_t)(i / (size_t)w), xx = x0 + (int64_t)(i % (size_t)w);
                return TMD_FAIL(ctx, TMD_ERR_FORMAT,
                                "%s%s%s: frame %lld, pixel (x=%lld, y=%lld) is %s; tmdflow needs finite samples "
                                "(replace NaN/Inf before running)",
                                r->path, r->dsetname[0] ? ":" : "", r->dsetname, (long long)frame, xx, yy,
                                isnan(out[i]) ? "NaN" : "infinite (or beyond the float32 range)");
            }
        }
    }
    return TMD_OK;
}

void tmd_reader_close(tmd_reader **rp)
{
    if (!rp || !*rp) return;
    tmd_reader *r = *rp;
    tmd_io_tiff_close(r);
    tmd_io_h5_close(r);
    free(r);
    *rp = NULL;
}
