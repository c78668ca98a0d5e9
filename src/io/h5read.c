/* io module: serial read-back helpers for HDF5 result and simulation files (see tmd/io.h). */
#include "io_internal.h"

#include <stdlib.h>
#include <string.h>

/* The file name of an open file id, for messages. */
static const char *fname(hid_t file, char *buf, size_t n)
{
    buf[0] = 0;
    if (H5Fget_name(file, buf, n) < 0 || !buf[0]) snprintf(buf, n, "(HDF5 file)");
    return buf;
}

static tmd_status h5fail(tmd_ctx *ctx, tmd_status code, hid_t file, const char *what, const char *obj)
{
    char msg[512], fn[512];
    tmd_io_h5_errmsg(msg, sizeof msg);
    return TMD_FAIL(ctx, code, "%s: %s %s%s%s", fname(file, fn, sizeof fn), what, obj ? obj : "", msg[0] ? ": " : "",
                    msg);
}

tmd_status tmd_h5_open_read(tmd_ctx *ctx, const char *path, hid_t *out)
{
    tmd_io_h5_quiet();
    *out = H5I_INVALID_HID;
    if (!path || !path[0]) return TMD_FAIL(ctx, TMD_ERR_ARG, "no HDF5 file name given");
    if (tmd_io_file_size(path) < 0) return TMD_FAIL(ctx, TMD_ERR_IO, "%s: no such file (or not readable)", path);
    htri_t is = H5Fis_hdf5(path);
    if (is <= 0) return TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: not an HDF5 file (or it is truncated)", path);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) {
        char msg[512];
        tmd_io_h5_errmsg(msg, sizeof msg);
        return TMD_FAIL(ctx, TMD_ERR_IO, "%s: cannot open as HDF5%s%s", path, msg[0] ? ": " : "", msg);
    }
    *out = f;
    return TMD_OK;
}

int tmd_h5_exists(hid_t file, const char *dset)
{
    tmd_io_h5_quiet();
    if (!dset || dset[0] != '/') return 0;
    if (!strcmp(dset, "/")) return 1;
    char buf[1024];
    if (strlen(dset) >= sizeof buf) return 0;
    snprintf(buf, sizeof buf, "%s", dset);
    for (char *p = buf + 1;; p++) {
        char c = *p;
        if (c == '/' || c == 0) {
            *p = 0;
            if (H5Lexists(file, buf, H5P_DEFAULT) <= 0) return 0;
            *p = c;
            if (c == 0) break;
        }
    }
    /* The link must resolve to an object (a dangling soft link does not count). */
    return H5Oexists_by_name(file, dset, H5P_DEFAULT) > 0;
}

tmd_status tmd_h5_dims(tmd_ctx *ctx, hid_t file, const char *dset, int *ndims, int64_t dims[4])
{
    tmd_io_h5_quiet();
    char fn[512];
    if (!tmd_h5_exists(file, dset))
        return TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: dataset %s is missing", fname(file, fn, sizeof fn), dset ? dset : "?");
    tmd_status st = TMD_OK;
    hid_t d = H5Dopen2(file, dset, H5P_DEFAULT), s = H5I_INVALID_HID;
    if (d < 0) {
        st = h5fail(ctx, TMD_ERR_FORMAT, file, "cannot open dataset", dset);
        goto cleanup;
    }
    s = H5Dget_space(d);
    int nd = s >= 0 ? H5Sget_simple_extent_ndims(s) : -1;
    if (nd < 0) {
        st = h5fail(ctx, TMD_ERR_FORMAT, file, "cannot read the shape of", dset);
        goto cleanup;
    }
    if (nd > 4) {
        st = TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: dataset %s has %d dimensions, at most 4 expected",
                      fname(file, fn, sizeof fn), dset, nd);
        goto cleanup;
    }
    hsize_t hd[4] = {0};
    H5Sget_simple_extent_dims(s, hd, NULL);
    *ndims = nd;
    for (int i = 0; i < 4; i++) dims[i] = i < nd ? (int64_t)hd[i] : 1;
cleanup:
    if (s >= 0) H5Sclose(s);
    if (d >= 0) H5Dclose(d);
    return st;
}

tmd_status tmd_h5_read_box(tmd_ctx *ctx, hid_t file, const char *dset, tmd_dtype type, const int64_t *start,
                           const int64_t *count, void *out)
{
    tmd_io_h5_quiet();
    char fn[512];
    int nd = 0;
    int64_t dims[4];
    TMD_CHECK(tmd_h5_dims(ctx, file, dset, &nd, dims));
    hsize_t hs[4], hc[4], n = 1;
    for (int i = 0; i < nd; i++) {
        if (start[i] < 0 || count[i] < 0 || start[i] + count[i] > dims[i])
            return TMD_FAIL(ctx, TMD_ERR_RANGE, "%s: %s dim %d: box [%lld, %lld) is outside 0..%lld",
                            fname(file, fn, sizeof fn), dset, i, (long long)start[i],
                            (long long)(start[i] + count[i]), (long long)dims[i]);
        hs[i] = (hsize_t)start[i];
        hc[i] = (hsize_t)count[i];
        n *= hc[i];
    }
    if (n == 0) return TMD_OK;
    if (tmd_io_h5_native(type) < 0) return TMD_FAIL(ctx, TMD_ERR_ARG, "%s: unknown element type %d", dset, (int)type);
    tmd_status st = TMD_OK;
    hid_t d = H5Dopen2(file, dset, H5P_DEFAULT), fs = H5I_INVALID_HID, ms = H5I_INVALID_HID;
    if (d < 0) {
        st = h5fail(ctx, TMD_ERR_FORMAT, file, "cannot open dataset", dset);
        goto cleanup;
    }
    fs = H5Dget_space(d);
    if (nd == 0) {
        ms = H5Screate(H5S_SCALAR);
    } else {
        ms = H5Screate_simple(nd, hc, NULL);
        if (fs >= 0) H5Sselect_hyperslab(fs, H5S_SELECT_SET, hs, NULL, hc, NULL);
    }
    if (fs < 0 || ms < 0 || H5Dread(d, tmd_io_h5_native(type), ms, fs, H5P_DEFAULT, out) < 0)
        st = h5fail(ctx, TMD_ERR_IO, file, "cannot read", dset);
cleanup:
    if (fs >= 0) H5Sclose(fs);
    if (ms >= 0) H5Sclose(ms);
    if (d >= 0) H5Dclose(d);
    return st;
}

tmd_status tmd_h5_read_rows(tmd_ctx *ctx, hid_t file, const char *dset, tmd_dtype type, int64_t *nrows,
                            int64_t *ncols, void **data)
{
    tmd_io_h5_quiet();
    char fn[512];
    *data = NULL;
    int nd = 0;
    int64_t dims[4];
    TMD_CHECK(tmd_h5_dims(ctx, file, dset, &nd, dims));
    if (nd > 2)
        return TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: dataset %s has %d dimensions, expected rows (1-D) or rows x cols (2-D)",
                        fname(file, fn, sizeof fn), dset, nd);
    int64_t r = nd == 0 ? 1 : dims[0], c = nd == 2 ? dims[1] : 1;
    size_t es = tmd_dtype_size(type), bytes;
    if (!es) return TMD_FAIL(ctx, TMD_ERR_ARG, "%s: unknown element type %d", dset, (int)type);
    TMD_CHECK(tmd_mul_size(ctx, (size_t)r, (size_t)c, &bytes, dset));
    void *buf = NULL;
    TMD_CHECK(tmd_calloc(ctx, &buf, bytes ? bytes : 1, es, dset));
    int64_t st0[2] = {0, 0}, cnt[2] = {r, c};
    tmd_status st = tmd_h5_read_box(ctx, file, dset, type, st0, cnt, buf);
    if (st) {
        free(buf);
        return st;
    }
    *nrows = r;
    *ncols = c;
    *data = buf;
    return TMD_OK;
}

/* Opens attribute name on obj; records an error naming both if missing. */
static hid_t open_attr(tmd_ctx *ctx, hid_t file, const char *obj, const char *name, hid_t *o, tmd_status *st)
{
    char fn[512];
    *o = H5I_INVALID_HID;
    if (!tmd_h5_exists(file, obj)) {
        *st = TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: object %s (holding attribute '%s') is missing",
                       fname(file, fn, sizeof fn), obj ? obj : "?", name);
        return H5I_INVALID_HID;
    }
    *o = H5Oopen(file, obj, H5P_DEFAULT);
    if (*o < 0) {
        *st = h5fail(ctx, TMD_ERR_FORMAT, file, "cannot open", obj);
        return H5I_INVALID_HID;
    }
    if (H5Aexists(*o, name) <= 0) {
        *st = TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: attribute '%s' of %s is missing", fname(file, fn, sizeof fn), name, obj);
        return H5I_INVALID_HID;
    }
    hid_t a = H5Aopen(*o, name, H5P_DEFAULT);
    if (a < 0) *st = h5fail(ctx, TMD_ERR_FORMAT, file, "cannot open attribute", name);
    return a;
}

tmd_status tmd_h5_read_attr_str(tmd_ctx *ctx, hid_t file, const char *obj, const char *name, char **value)
{
    tmd_io_h5_quiet();
    char fn[512];
    *value = NULL;
    tmd_status st = TMD_OK;
    hid_t o, t = H5I_INVALID_HID, mt = H5I_INVALID_HID, s = H5I_INVALID_HID;
    hid_t a = open_attr(ctx, file, obj, name, &o, &st);
    if (st) goto cleanup;
    t = H5Aget_type(a);
    s = H5Aget_space(a);
    if (t < 0 || H5Tget_class(t) != H5T_STRING) {
        st = TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: attribute '%s' of %s is not a string", fname(file, fn, sizeof fn), name,
                      obj);
        goto cleanup;
    }
    if (H5Sget_simple_extent_npoints(s) != 1) {
        st = TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: attribute '%s' of %s holds %lld strings, expected one",
                      fname(file, fn, sizeof fn), name, obj, (long long)H5Sget_simple_extent_npoints(s));
        goto cleanup;
    }
    if (H5Tis_variable_str(t) > 0) {
        mt = H5Tcopy(H5T_C_S1);
        H5Tset_size(mt, H5T_VARIABLE);
        H5Tset_cset(mt, H5Tget_cset(t));
        char *v = NULL;
        if (H5Aread(a, mt, &v) < 0) {
            st = h5fail(ctx, TMD_ERR_IO, file, "cannot read attribute", name);
            goto cleanup;
        }
        *value = strdup(v ? v : "");
        H5free_memory(v);
    } else {
        size_t n = H5Tget_size(t);
        mt = H5Tcopy(t);
        char *v = calloc(1, n + 1);
        if (!v) {
            st = TMD_FAIL(ctx, TMD_ERR_NOMEM, "out of memory reading attribute %s", name);
            goto cleanup;
        }
        if (H5Aread(a, mt, v) < 0) {
            free(v);
            st = h5fail(ctx, TMD_ERR_IO, file, "cannot read attribute", name);
            goto cleanup;
        }
        *value = v;
    }
    if (!*value) st = TMD_FAIL(ctx, TMD_ERR_NOMEM, "out of memory reading attribute %s", name);
cleanup:
    if (mt >= 0) H5Tclose(mt);
    if (t >= 0) H5Tclose(t);
    if (s >= 0) H5Sclose(s);
    if (a >= 0) H5Aclose(a);
    if (o >= 0) H5Oclose(o);
    return st;
}

static tmd_status read_attr_num(tmd_ctx *ctx, hid_t file, const char *obj, const char *name, hid_t mtype, void *v,
                                int n)
{
    tmd_io_h5_quiet();
    char fn[512];
    tmd_status st = TMD_OK;
    hid_t o, t = H5I_INVALID_HID, s = H5I_INVALID_HID;
    hid_t a = open_attr(ctx, file, obj, name, &o, &st);
    if (st) goto cleanup;
    t = H5Aget_type(a);
    s = H5Aget_space(a);
    H5T_class_t c = t >= 0 ? H5Tget_class(t) : H5T_NO_CLASS;
    if (c != H5T_INTEGER && c != H5T_FLOAT) {
        st = TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: attribute '%s' of %s is not a number", fname(file, fn, sizeof fn), name,
                      obj);
        goto cleanup;
    }
    hssize_t np = H5Sget_simple_extent_npoints(s);
    if (np != n) {
        st = TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: attribute '%s' of %s holds %lld values, expected %d",
                      fname(file, fn, sizeof fn), name, obj, (long long)np, n);
        goto cleanup;
    }
    if (H5Aread(a, mtype, v) < 0) st = h5fail(ctx, TMD_ERR_IO, file, "cannot read attribute", name);
cleanup:
    if (t >= 0) H5Tclose(t);
    if (s >= 0) H5Sclose(s);
    if (a >= 0) H5Aclose(a);
    if (o >= 0) H5Oclose(o);
    return st;
}

tmd_status tmd_h5_read_attr_f64(tmd_ctx *ctx, hid_t file, const char *obj, const char *name, double *v, int n)
{
    return read_attr_num(ctx, file, obj, name, H5T_NATIVE_DOUBLE, v, n);
}

tmd_status tmd_h5_read_attr_i64(tmd_ctx *ctx, hid_t file, const char *obj, const char *name, int64_t *v, int n)
{
    return read_attr_num(ctx, file, obj, name, H5T_NATIVE_INT64, v, n);
}
