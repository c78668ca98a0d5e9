/* io module: HDF5 / EMD input. "FILE.h5:/path" names the dataset; a bare file uses /image if
 * it is there, else its only 2-D/3-D numeric dataset. Datasets are 2-D (H x W) or 3-D
 * (T x H x W); regions are read as hyperslabs converted to float32 by HDF5. Each rank opens
 * the file itself with the serial driver (reading needs no collectives). */
#include "io_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static tmd_status h5fail(tmd_ctx *ctx, const tmd_reader *r, const char *what)
{
    char msg[512];
    tmd_io_h5_errmsg(msg, sizeof msg);
    return TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s:%s: %s%s%s", r->path, r->dsetname[0] ? r->dsetname : "", what,
                    msg[0] ? ": " : "", msg);
}

/* Candidate image datasets (2-D or 3-D, integer or float), collected by H5Ovisit. */
typedef struct {
    char list[900];
    char first[512];
    int count;
    char velox_first[512];   /* first Velox EMD image (/Data/Image/<id>/Data) */
    int velox_count;
} candidates;

/* Velox (Thermo Fisher) EMD stores images as /Data/Image/<uuid>/Data, shaped (H, W, frames). */
static int is_velox_image_path(const char *p)
{
    if (p[0] == '/') p++;
    if (strncmp(p, "Data/Image/", 11)) return 0;
    const char *rest = strchr(p + 11, '/');
    return rest && !strcmp(rest, "/Data");
}

static herr_t visit_cb(hid_t obj, const char *name, const H5O_info_t *info, void *data)
{
    candidates *c = data;
    if (info->type != H5O_TYPE_DATASET) return 0;
    hid_t d = H5Dopen2(obj, name, H5P_DEFAULT);
    if (d < 0) return 0;
    hid_t s = H5Dget_space(d), t = H5Dget_type(d);
    int nd = s >= 0 ? H5Sget_simple_extent_ndims(s) : -1;
    H5T_class_t cl = t >= 0 ? H5Tget_class(t) : H5T_NO_CLASS;
    if ((nd == 2 || nd == 3) && (cl == H5T_INTEGER || cl == H5T_FLOAT)) {
        hsize_t dims[3] = {0, 0, 0};
        H5Sget_simple_extent_dims(s, dims, NULL);
        if (c->count == 0) snprintf(c->first, sizeof c->first, "/%s", name);
        if (nd == 3 && is_velox_image_path(name)) {
            if (c->velox_count == 0) snprintf(c->velox_first, sizeof c->velox_first, "/%s", name);
            c->velox_count++;
        }
        size_t len = strlen(c->list);
        if (len < sizeof c->list - 80) {
            if (nd == 2)
                snprintf(c->list + len, sizeof c->list - len, "%s/%s (%llux%llu)", c->count ? ", " : "", name,
                         (unsigned long long)dims[0], (unsigned long long)dims[1]);
            else
                snprintf(c->list + len, sizeof c->list - len, "%s/%s (%llux%llux%llu)", c->count ? ", " : "", name,
                         (unsigned long long)dims[0], (unsigned long long)dims[1], (unsigned long long)dims[2]);
        } else if (len < sizeof c->list - 5 && !strstr(c->list, "...")) {
            strcat(c->list, ", ...");
        }
        c->count++;
    }
    if (t >= 0) H5Tclose(t);
    if (s >= 0) H5Sclose(s);
    H5Dclose(d);
    return 0;
}

static void find_candidates(hid_t file, candidates *c)
{
    memset(c, 0, sizeof *c);
#if H5_VERSION_GE(1, 12, 0)
    H5Ovisit3(file, H5_INDEX_NAME, H5_ITER_INC, (H5O_iterate2_t)visit_cb, c, H5O_INFO_BASIC);
#else
    H5Ovisit2(file, H5_INDEX_NAME, H5_ITER_INC, visit_cb, c, H5O_INFO_BASIC);
#endif
}

static int is_image_dataset(hid_t file, const char *path)
{
    if (!tmd_h5_exists(file, path)) return 0;
    H5O_info_t oi;
    if (H5Oget_info_by_name2(file, path, &oi, H5O_INFO_BASIC, H5P_DEFAULT) < 0 || oi.type != H5O_TYPE_DATASET) return 0;
    return 1;
}

static double read_pixel_size(hid_t obj)
{
    static const char *names[] = {"pixel_size", "pixel_size_A", "pixelsize"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (H5Aexists(obj, names[i]) <= 0) continue;
        hid_t a = H5Aopen(obj, names[i], H5P_DEFAULT);
        if (a < 0) continue;
        hid_t s = H5Aget_space(a), t = H5Aget_type(a);
        double v = 0;
        H5T_class_t cl = H5Tget_class(t);
        if ((cl == H5T_FLOAT || cl == H5T_INTEGER) && H5Sget_simple_extent_npoints(s) == 1 &&
            H5Aread(a, H5T_NATIVE_DOUBLE, &v) < 0)
            v = 0;
        H5Tclose(t);
        H5Sclose(s);
        H5Aclose(a);
        if (v > 0 && v < 1e6) return v;
    }
    return 0;
}

/* out = the path of `name` in the group of the reader's dataset; 0 if the dataset path has no '/' */
static int sibling_path(const tmd_reader *r, const char *name, char *out, size_t n)
{
    const char *slash = strrchr(r->dsetname, '/');
    if (!slash) return 0;
    snprintf(out, n, "%.*s/%s", (int)(slash - r->dsetname), r->dsetname, name);
    return 1;
}

/* Velox EMD: the pixel size (metres) is in the JSON of the sibling Metadata dataset, a uint8
 * array (characters, frames): "PixelSize": {"width": "1.2e-11", ...}. Best effort, 0 if absent. */
static double velox_pixel_size(const tmd_reader *r)
{
    char mpath[600];
    if (!sibling_path(r, "Metadata", mpath, sizeof mpath) || !tmd_h5_exists(r->file, mpath)) return 0;
    double px = 0;
    hid_t d = H5Dopen2(r->file, mpath, H5P_DEFAULT);
    if (d < 0) return 0;
    hid_t s = H5Dget_space(d);
    int nd = H5Sget_simple_extent_ndims(s);
    hsize_t dims[2] = {0, 1};
    if (nd >= 1 && nd <= 2) H5Sget_simple_extent_dims(s, dims, NULL);
    size_t n = (size_t)dims[0] * (size_t)(nd == 2 ? dims[1] : 1);
    if (nd >= 1 && nd <= 2 && n > 0 && n < ((size_t)64 << 20)) {
        unsigned char *all = malloc(n);
        char *json = malloc((size_t)dims[0] + 1);
        if (all && json && H5Dread(d, H5T_NATIVE_UCHAR, H5S_ALL, H5S_ALL, H5P_DEFAULT, all) >= 0) {
            size_t stride = nd == 2 ? (size_t)dims[1] : 1; /* column 0 = frame 0's metadata */
            for (size_t i = 0; i < dims[0]; i++) json[i] = (char)all[i * stride];
            json[dims[0]] = 0;
            const char *p = strstr(json, "\"PixelSize\"");
            if (p) p = strstr(p, "\"width\"");
            if (p) {
                p = strchr(p + 7, ':');
                while (p && (*p == ':' || *p == ' ' || *p == '"')) p++;
                double v = p ? strtod(p, NULL) : 0;
                if (v > 0 && v < 1e-6) px = v * 1e10; /* metres -> Angstrom */
            }
        }
        free(all);
        free(json);
    }
    H5Sclose(s);
    H5Dclose(d);
    return px;
}

/* Berkeley EMD (emd_group_type = 1): the dataset's group holds dim1 .. dimN, the coordinates of
 * each axis with a "units" attribute; the last one is the fast-scan axis (the pixel size
 * tmdflow uses). Its first step in Angstrom, or 0 when the group has no calibrated dim vector.
 * Best effort: anything unexpected gives 0 (the lattice then measures the scale). */
static double berkeley_pixel_size(const tmd_reader *r)
{
    char path[600], dim[16];
    int nd = r->h5rank;
    if (nd < 2 || nd > 3 || r->frames_last) return 0;
    snprintf(dim, sizeof dim, "dim%d", nd);
    if (!sibling_path(r, dim, path, sizeof path) || !tmd_h5_exists(r->file, path)) return 0;
    double px = 0, v[2] = {0, 0};
    hid_t d = H5Dopen2(r->file, path, H5P_DEFAULT);
    if (d < 0) return 0;
    hid_t s = H5Dget_space(d), a = H5I_INVALID_HID, at = H5I_INVALID_HID, mt = H5I_INVALID_HID;
    hsize_t n = 0;
    if (H5Sget_simple_extent_ndims(s) == 1) H5Sget_simple_extent_dims(s, &n, NULL);
    if (n >= 2 && n < ((hsize_t)1 << 31) && H5Aexists(d, "units") > 0) {
        hsize_t two = 2, zero = 0;
        hid_t ms = H5Screate_simple(1, &two, NULL);
        H5Sselect_hyperslab(s, H5S_SELECT_SET, &zero, NULL, &two, NULL);
        int ok = H5Dread(d, H5T_NATIVE_DOUBLE, ms, s, H5P_DEFAULT, v) >= 0;
        H5Sclose(ms);
        char units[64] = "";
        a = H5Aopen(d, "units", H5P_DEFAULT);
        if (a >= 0) at = H5Aget_type(a);
        if (ok && at >= 0 && H5Tget_class(at) == H5T_STRING) {
            if (H5Tis_variable_str(at) > 0) {
                char *str = NULL;
                mt = H5Tcopy(H5T_C_S1);
                H5Tset_size(mt, H5T_VARIABLE);
                if (H5Aread(a, mt, &str) >= 0 && str) {
                    snprintf(units, sizeof units, "%s", str);
                    H5free_memory(str);
                }
            } else {
                size_t sz = H5Tget_size(at);
                if (sz > 0 && sz < sizeof units) {
                    mt = H5Tcopy(H5T_C_S1);
                    H5Tset_size(mt, sz + 1);
                    if (H5Aread(a, mt, units) < 0) units[0] = 0;
                }
            }
            double scale = tmd_io_angstrom_per_unit(units), step = fabs(v[1] - v[0]) * scale;
            if (scale > 0 && isfinite(step) && step >= 1e-3 && step <= 100) px = step;
        }
    }
    if (mt >= 0) H5Tclose(mt);
    if (at >= 0) H5Tclose(at);
    if (a >= 0) H5Aclose(a);
    H5Sclose(s);
    H5Dclose(d);
    return px;
}

tmd_status tmd_io_h5_open(tmd_ctx *ctx, tmd_reader *r)
{
    tmd_status st = TMD_OK;
    hid_t t = H5I_INVALID_HID, dcpl = H5I_INVALID_HID;
    tmd_io_h5_quiet();
    snprintf(r->info.format, sizeof r->info.format, "HDF5");
    r->file = H5Fopen(r->path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (r->file < 0) {
        char msg[512];
        tmd_io_h5_errmsg(msg, sizeof msg);
        return TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: cannot open as HDF5 (damaged or truncated?)%s%s", r->path,
                        msg[0] ? ": " : "", msg);
    }
    candidates c;
    if (!r->dsetname[0]) {
        if (is_image_dataset(r->file, "/image")) {
            snprintf(r->dsetname, sizeof r->dsetname, "/image");
        } else {
            find_candidates(r->file, &c);
            if (c.velox_count == 1) {
                snprintf(r->dsetname, sizeof r->dsetname, "%s", c.velox_first);
            } else if (c.count == 1) {
                snprintf(r->dsetname, sizeof r->dsetname, "%s", c.first);
            } else if (c.count == 0) {
                return TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: holds no 2-D or 3-D numeric dataset to read as an image",
                                r->path);
            } else {
                return TMD_FAIL(ctx, TMD_ERR_ARG,
                                "%s: holds %d image-like datasets and no /image; name one as %s:/path. Candidates: %s",
                                r->path, c.count, r->path, c.list);
            }
        }
    } else if (!is_image_dataset(r->file, r->dsetname)) {
        find_candidates(r->file, &c);
        return TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: dataset %s is missing (image-like datasets in the file: %s)", r->path,
                        r->dsetname, c.count ? c.list : "none");
    }

    r->dset = H5Dopen2(r->file, r->dsetname, H5P_DEFAULT);
    if (r->dset < 0) return h5fail(ctx, r, "cannot open the dataset");
    r->fspace = H5Dget_space(r->dset);
    int nd = r->fspace >= 0 ? H5Sget_simple_extent_ndims(r->fspace) : -1;
    if (nd != 2 && nd != 3)
        return TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s:%s has %d dimensions; expected 2 (height x width) or 3 (frames x height x width)",
                        r->path, r->dsetname, nd);
    hsize_t dims[3] = {1, 1, 1};
    H5Sget_simple_extent_dims(r->fspace, nd == 3 ? dims : dims + 1, NULL);
    r->h5rank = nd;
    r->frames_last = nd == 3 && is_velox_image_path(r->dsetname);
    if (r->frames_last) { /* (H, W, T) -> report as T x H x W */
        hsize_t t = dims[2];
        dims[2] = dims[1];
        dims[1] = dims[0];
        dims[0] = t;
    }
    if (dims[0] < 1 || dims[1] < 1 || dims[2] < 1 || (int64_t)dims[1] > TMD_IO_MAX_SIDE ||
        (int64_t)dims[2] > TMD_IO_MAX_SIDE || (int64_t)dims[0] > TMD_IO_MAX_FRAMES)
        return TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s:%s has an unusable shape %llu x %llu x %llu (frames x height x width)",
                        r->path, r->dsetname, (unsigned long long)dims[0], (unsigned long long)dims[1],
                        (unsigned long long)dims[2]);
    r->info.frames = (int64_t)dims[0];
    r->info.height = (int64_t)dims[1];
    r->info.width = (int64_t)dims[2];
    size_t pix;
    TMD_CHECK(tmd_mul_size(ctx, (size_t)dims[0] * (size_t)dims[1], (size_t)dims[2], &pix, r->path));

    /* Sample type. */
    t = H5Dget_type(r->dset);
    H5T_class_t cl = t >= 0 ? H5Tget_class(t) : H5T_NO_CLASS;
    size_t sz = t >= 0 ? H5Tget_size(t) : 0;
    int sgn = cl == H5T_INTEGER && H5Tget_sign(t) == H5T_SGN_2;
    tmd_dtype sample = 0;
    if (cl == H5T_FLOAT && sz == 4) sample = TMD_F32;
    else if (cl == H5T_FLOAT && sz == 8) sample = TMD_F64;
    else if (cl == H5T_INTEGER && sz == 1) sample = sgn ? TMD_I8 : TMD_U8;
    else if (cl == H5T_INTEGER && sz == 2) sample = sgn ? TMD_I16 : TMD_U16;
    else if (cl == H5T_INTEGER && sz == 4) sample = sgn ? TMD_I32 : TMD_U32;
    if (!sample) {
        st = TMD_FAIL(ctx, TMD_ERR_FORMAT,
                      "%s:%s holds %zu-byte %s elements; expected uint8/16/32, int8/16/32, float32 or float64", r->path,
                      r->dsetname, sz,
                      cl == H5T_INTEGER ? "integer" : cl == H5T_FLOAT ? "float" : cl == H5T_COMPOUND ? "compound"
                                                  : cl == H5T_STRING ? "string" : "non-numeric");
        goto cleanup;
    }
    r->info.sample = sample;
    r->stored = sample;

    /* Storage: every filter must be available; contiguous data must lie inside the file. */
    dcpl = H5Dget_create_plist(r->dset);
    H5D_layout_t lay = dcpl >= 0 ? H5Pget_layout(dcpl) : H5D_LAYOUT_ERROR;
    char filters[64] = "";
    int nf = dcpl >= 0 ? H5Pget_nfilters(dcpl) : 0;
    for (int i = 0; i < nf; i++) {
        unsigned flags = 0, cd[8];
        size_t ncd = 8;
        char fname[64] = "";
        H5Z_filter_t id = H5Pget_filter2(dcpl, (unsigned)i, &flags, &ncd, cd, sizeof fname, fname, NULL);
        if (id < 0) continue;
        if (H5Zfilter_avail(id) <= 0) {
            st = TMD_FAIL(ctx, TMD_ERR_FORMAT,
                          "%s:%s is compressed with HDF5 filter %d (%s), which this HDF5 library does not have",
                          r->path, r->dsetname, (int)id, fname[0] ? fname : "unknown");
            goto cleanup;
        }
        size_t len = strlen(filters);
        snprintf(filters + len, sizeof filters - len, ", %s",
                 id == H5Z_FILTER_DEFLATE ? "deflate" : id == H5Z_FILTER_SHUFFLE ? "shuffle"
                 : id == H5Z_FILTER_FLETCHER32 ? "fletcher32" : id == H5Z_FILTER_SZIP ? "szip"
                 : fname[0] ? fname : "filter");
    }
    int64_t fsize = tmd_io_file_size(r->path);
    if (lay == H5D_CONTIGUOUS) {
        haddr_t off = H5Dget_offset(r->dset);
        hsize_t bytes = H5Dget_storage_size(r->dset);
        if (off != HADDR_UNDEF && (int64_t)(off + bytes) > fsize) {
            st = TMD_FAIL(ctx, TMD_ERR_FORMAT,
                          "%s:%s promises %llu bytes at offset %llu but the file holds only %lld bytes (truncated file?)",
                          r->path, r->dsetname, (unsigned long long)bytes, (unsigned long long)off, (long long)fsize);
            goto cleanup;
        }
        snprintf(r->info.layout, sizeof r->info.layout, "contiguous");
    } else if (lay == H5D_CHUNKED) {
        hsize_t ch[3] = {1, 1, 1};
        H5Pget_chunk(dcpl, nd, nd == 3 ? ch : ch + 1);
        if (nd == 3)
            snprintf(r->info.layout, sizeof r->info.layout, "chunked %llux%llux%llu%s", (unsigned long long)ch[0],
                     (unsigned long long)ch[1], (unsigned long long)ch[2], filters);
        else
            snprintf(r->info.layout, sizeof r->info.layout, "chunked %llux%llu%s", (unsigned long long)ch[1],
                     (unsigned long long)ch[2], filters);
        /* Chunks beyond the end of the file (truncated) — checked when the index is small. */
        hsize_t nchunks = 0;
        if (H5Dget_num_chunks(r->dset, H5S_ALL, &nchunks) >= 0 && nchunks <= 4096) {
            for (hsize_t i = 0; i < nchunks; i++) {
                hsize_t coff[3];
                unsigned fm = 0;
                haddr_t addr = 0;
                hsize_t csz = 0;
                if (H5Dget_chunk_info(r->dset, H5S_ALL, i, coff, &fm, &addr, &csz) < 0) break;
                if (addr != HADDR_UNDEF && (int64_t)(addr + csz) > fsize) {
                    st = TMD_FAIL(ctx, TMD_ERR_FORMAT,
                                  "%s:%s: chunk %llu promises %llu bytes at offset %llu but the file holds only %lld "
                                  "bytes (truncated file?)",
                                  r->path, r->dsetname, (unsigned long long)i, (unsigned long long)csz,
                                  (unsigned long long)addr, (long long)fsize);
                    goto cleanup;
                }
            }
        }
    } else {
        snprintf(r->info.layout, sizeof r->info.layout, "%s", lay == H5D_COMPACT ? "compact" : "virtual");
    }

    if (r->frames_last) {
        size_t len = strlen(r->info.layout);
        snprintf(r->info.layout + len, sizeof r->info.layout - len, ", Velox EMD (frames last)");
    }
    r->info.pixel_size = r->frames_last ? velox_pixel_size(r) : 0;
    if (r->info.pixel_size == 0) r->info.pixel_size = read_pixel_size(r->dset);
    if (r->info.pixel_size == 0) r->info.pixel_size = berkeley_pixel_size(r);
    if (r->info.pixel_size == 0) {
        hid_t root = H5Oopen(r->file, "/", H5P_DEFAULT);
        if (root >= 0) {
            r->info.pixel_size = read_pixel_size(root);
            H5Oclose(root);
        }
    }
cleanup:
    if (t >= 0) H5Tclose(t);
    if (dcpl >= 0) H5Pclose(dcpl);
    return st;
}

tmd_status tmd_io_h5_read(tmd_ctx *ctx, tmd_reader *r, int64_t frame, int64_t y0, int64_t x0, int64_t h, int64_t w,
                          float *out)
{
    tmd_io_h5_quiet();
    hsize_t start[3] = {(hsize_t)frame, (hsize_t)y0, (hsize_t)x0}, count[3] = {1, (hsize_t)h, (hsize_t)w};
    int off = r->h5rank == 3 ? 0 : 1;
    hsize_t mdims[2] = {(hsize_t)h, (hsize_t)w};
    if (r->frames_last) { /* file order (y, x, t): the (h, w, 1) box is (h, w) row-major */
        start[0] = (hsize_t)y0; start[1] = (hsize_t)x0; start[2] = (hsize_t)frame;
        count[0] = (hsize_t)h; count[1] = (hsize_t)w; count[2] = 1;
    }
    hid_t ms = H5Screate_simple(2, mdims, NULL);
    tmd_status st = TMD_OK;
    if (ms < 0 || H5Sselect_hyperslab(r->fspace, H5S_SELECT_SET, start + off, NULL, count + off, NULL) < 0 ||
        H5Dread(r->dset, H5T_NATIVE_FLOAT, ms, r->fspace, H5P_DEFAULT, out) < 0) {
        char what[160];
        snprintf(what, sizeof what, "reading frame %lld, rows %lld..%lld failed", (long long)frame, (long long)y0,
                 (long long)(y0 + h - 1));
        st = h5fail(ctx, r, what);
    }
    if (ms >= 0) H5Sclose(ms);
    return st;
}

void tmd_io_h5_close(tmd_reader *r)
{
    if (r->fspace >= 0) H5Sclose(r->fspace);
    if (r->dset >= 0) H5Dclose(r->dset);
    if (r->file >= 0) H5Fclose(r->file);
    r->fspace = r->dset = r->file = H5I_INVALID_HID;
}
