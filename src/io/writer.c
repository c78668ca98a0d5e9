/* io module: the parallel HDF5 result writer (see tmd/io.h).
 *
 * Every function here is collective over the writer's communicator. The rule that keeps a
 * failure on one rank from hanging the others: each function first does its local checks,
 * then calls tmd_agree, and only if every rank is fine does it enter the collective HDF5 calls.
 * After the collective calls the ranks agree again on their outcome.
 */
#include "io_internal.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

struct tmd_writer {
    MPI_Comm comm;        /* duplicate of the caller's communicator (freed on close) */
    hid_t file;           /* open on path.tmp */
    char path[PATH_MAX];  /* final name */
    char tmp[PATH_MAX];   /* path + ".tmp" */
};

hid_t tmd_writer_file(const tmd_writer *w) { return w ? w->file : H5I_INVALID_HID; }

/* Local HDF5 failure -> message naming the file and what was being done. */
static tmd_status h5fail(tmd_ctx *ctx, const tmd_writer *w, const char *what, const char *obj)
{
    char msg[512];
    tmd_io_h5_errmsg(msg, sizeof msg);
    return TMD_FAIL(ctx, TMD_ERR_IO, "%s: %s %s failed%s%s", w->tmp, what, obj ? obj : "", msg[0] ? ": " : "", msg);
}

/* Every rank must pass the same value v (e.g. a signature of type and shape): max(v) and
 * min(v) = ~max(~v) are compared in one unsigned reduction (no overflow). Collective. */
static tmd_status agree_same(tmd_ctx *ctx, MPI_Comm comm, uint64_t v, const char *what, const char *dset)
{
    uint64_t mm[2] = {v, ~v}, out[2];
    if (MPI_Allreduce(mm, out, 2, MPI_UINT64_T, MPI_MAX, comm) != MPI_SUCCESS)
        return TMD_FAIL(ctx, TMD_ERR_MPI, "MPI_Allreduce failed while checking %s of %s", what, dset);
    if (out[0] != ~out[1])
        return TMD_FAIL(ctx, TMD_ERR_ARG, "%s: ranks passed different %s; every rank must pass the same", dset, what);
    return TMD_OK;
}

tmd_status tmd_writer_create(tmd_ctx *ctx, const char *path, int force, MPI_Comm comm, tmd_writer **out)
{
    tmd_status st = TMD_OK;
    tmd_writer *w = NULL;
    hid_t fapl = H5I_INVALID_HID;
    tmd_io_h5_quiet();
    *out = NULL;

    if (!path || !path[0] || strlen(path) + 5 >= PATH_MAX)
        st = TMD_FAIL(ctx, TMD_ERR_ARG, "result path is empty or too long");
    /* Existence is decided on rank 0 of comm and agreed by all. */
    int me = 0;
    MPI_Comm_rank(comm, &me);
    if (!st && me == 0) {
        if (access(path, F_OK) == 0 && !force)
            st = TMD_FAIL(ctx, TMD_ERR_EXISTS, "%s exists; use --force to overwrite it", path);
    }
    st = tmd_agree(ctx, comm, st);
    if (st) return st;

    w = calloc(1, sizeof *w);
    if (!w) st = TMD_FAIL(ctx, TMD_ERR_NOMEM, "out of memory creating the writer for %s", path);
    if (!st) {
        w->comm = MPI_COMM_NULL;
        w->file = H5I_INVALID_HID;
        snprintf(w->path, sizeof w->path, "%s", path);
        snprintf(w->tmp, sizeof w->tmp, "%s.tmp", path);
    }
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    if (MPI_Comm_dup(comm, &w->comm) != MPI_SUCCESS) {
        w->comm = MPI_COMM_NULL;
        st = TMD_FAIL(ctx, TMD_ERR_MPI, "MPI_Comm_dup failed creating %s", path);
    }
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;

    fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl < 0 || H5Pset_fapl_mpio(fapl, w->comm, MPI_INFO_NULL) < 0 || H5Pset_all_coll_metadata_ops(fapl, 1) < 0 ||
        H5Pset_coll_metadata_write(fapl, 1) < 0)
        st = h5fail(ctx, w, "setting up the MPI-IO file access for", NULL);
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;

    w->file = H5Fcreate(w->tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    if (w->file < 0) {
        char msg[512];
        tmd_io_h5_errmsg(msg, sizeof msg);
        st = TMD_FAIL(ctx, TMD_ERR_IO, "cannot create %s (is the directory there and writable?)%s%s", w->tmp,
                      msg[0] ? ": " : "", msg);
    }
    /* H5Fcreate is collective: it either fails everywhere or we close it collectively. */
    st = tmd_agree(ctx, comm, st);
    if (st) {
        if (w->file >= 0) {
            H5Fclose(w->file);
            w->file = H5I_INVALID_HID;
        }
        if (me == 0) unlink(w->tmp);
        MPI_Barrier(w->comm);
        goto cleanup;
    }
    *out = w;
    w = NULL;

cleanup:
    if (fapl >= 0) H5Pclose(fapl);
    if (w) {
        if (w->comm != MPI_COMM_NULL) MPI_Comm_free(&w->comm);
        free(w);
    }
    return st;
}

/* Rank 0 of the writer checks that the file system holding the file has room for `bytes` more
 * (plus 1 MiB for metadata). Running out of space in the middle of a collective HDF5 write or
 * close can desynchronise HDF5's own collectives, so a write that cannot fit is refused before
 * it starts. Collective (agreed). $TMDFLOW_IO_SKIP_SPACE_CHECK=1 disables the check (tests of
 * the failure path only). */
static tmd_status check_space(tmd_ctx *ctx, tmd_writer *w, const char *dset, double bytes)
{
    tmd_status st = TMD_OK;
    int me = 0;
    MPI_Comm_rank(w->comm, &me);
    const char *skip = getenv("TMDFLOW_IO_SKIP_SPACE_CHECK");
    if (me == 0 && !(skip && skip[0] == '1')) {
        struct statvfs sv;
        if (statvfs(w->tmp, &sv) == 0) {
            double avail = (double)sv.f_bavail * (double)sv.f_frsize;
            double need = bytes + (double)(1 << 20);
            if (need > avail)
                st = TMD_FAIL(ctx, TMD_ERR_IO,
                              "%s: not enough space on the file system for %s: %.1f MB needed, %.1f MB free", w->tmp,
                              dset, need / 1e6, avail / 1e6);
        }
    }
    return tmd_agree(ctx, w->comm, st);
}

/* Creates `dset` (with intermediate groups) of `ndims` dims, chunked. Collective; all ranks
 * pass the same arguments. dims entries may be 0 (then that dim is unlimited, chunk 1). */
static hid_t create_dataset(tmd_ctx *ctx, tmd_writer *w, const char *dset, tmd_dtype type, int ndims,
                            const hsize_t *dims, const hsize_t *chunk, tmd_status *st)
{
    hid_t space = H5I_INVALID_HID, dcpl = H5I_INVALID_HID, lcpl = H5I_INVALID_HID, d = H5I_INVALID_HID;
    hsize_t maxdims[8];
    for (int i = 0; i < ndims; i++) maxdims[i] = dims[i] == 0 ? H5S_UNLIMITED : dims[i];
    space = H5Screate_simple(ndims, dims, maxdims);
    dcpl = H5Pcreate(H5P_DATASET_CREATE);
    lcpl = H5Pcreate(H5P_LINK_CREATE);
    if (space < 0 || dcpl < 0 || lcpl < 0 || H5Pset_chunk(dcpl, ndims, chunk) < 0 ||
        H5Pset_create_intermediate_group(lcpl, 1) < 0 || H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER) < 0) {
        *st = h5fail(ctx, w, "preparing dataset", dset);
        goto cleanup;
    }
    d = H5Dcreate2(w->file, dset, tmd_io_h5_native(type), space, lcpl, dcpl, H5P_DEFAULT);
    if (d < 0) *st = h5fail(ctx, w, "creating dataset", dset);
cleanup:
    if (space >= 0) H5Sclose(space);
    if (dcpl >= 0) H5Pclose(dcpl);
    if (lcpl >= 0) H5Pclose(lcpl);
    return d;
}

/* Collective write of this rank's box [start, start+count) of an open dataset. */
static tmd_status write_box(tmd_ctx *ctx, tmd_writer *w, hid_t d, const char *dset, tmd_dtype type, int ndims,
                            const hsize_t *start, const hsize_t *count, const void *data)
{
    tmd_status st = TMD_OK;
    hid_t fspace = H5I_INVALID_HID, mspace = H5I_INVALID_HID, dxpl = H5I_INVALID_HID;
    hsize_t nelem = 1;
    for (int i = 0; i < ndims; i++) nelem *= count[i];
    static const char dummy[16];
    fspace = H5Dget_space(d);
    dxpl = H5Pcreate(H5P_DATASET_XFER);
    if (fspace < 0 || dxpl < 0 || H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_COLLECTIVE) < 0) {
        st = h5fail(ctx, w, "preparing the write of", dset);
        goto cleanup;
    }
    if (nelem == 0) {
        hsize_t one = 1;
        mspace = H5Screate_simple(1, &one, NULL);
        if (mspace < 0 || H5Sselect_none(mspace) < 0 || H5Sselect_none(fspace) < 0) {
            st = h5fail(ctx, w, "selecting nothing in", dset);
            goto cleanup;
        }
        data = dummy;
    } else {
        mspace = H5Screate_simple(ndims, count, NULL);
        if (mspace < 0 || H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start, NULL, count, NULL) < 0) {
            st = h5fail(ctx, w, "selecting this rank's part of", dset);
            goto cleanup;
        }
    }
    if (H5Dwrite(d, tmd_io_h5_native(type), mspace, fspace, dxpl, data) < 0)
        st = h5fail(ctx, w, "writing (disk full, quota or file-system error?)", dset);
cleanup:
    if (fspace >= 0) H5Sclose(fspace);
    if (mspace >= 0) H5Sclose(mspace);
    if (dxpl >= 0) H5Pclose(dxpl);
    return st;
}

/* Local argument checks shared by rows/array. */
static tmd_status check_common(tmd_ctx *ctx, const tmd_writer *w, const char *dset, tmd_dtype type)
{
    if (!w || w->file < 0) return TMD_FAIL(ctx, TMD_ERR_ARG, "writing %s: the writer is not open", dset ? dset : "?");
    if (!dset || dset[0] != '/') return TMD_FAIL(ctx, TMD_ERR_ARG, "%s: dataset path must start with '/'", w->tmp);
    if (tmd_dtype_size(type) == 0) return TMD_FAIL(ctx, TMD_ERR_ARG, "%s: unknown element type %d", dset, (int)type);
    return TMD_OK;
}

/* The rows of all ranks in rank order: tmd_writer_rows_create with the total, then each rank's
 * part at its MPI_Exscan offset. Collective. */
tmd_status tmd_writer_rows(tmd_ctx *ctx, tmd_writer *w, const char *dset, tmd_dtype type, int64_t n_local,
                           int64_t ncols, const void *data)
{
    tmd_status st = TMD_OK;
    MPI_Comm comm = w ? w->comm : MPI_COMM_NULL;
    if (comm == MPI_COMM_NULL) return TMD_FAIL(ctx, TMD_ERR_ARG, "writing %s: the writer is not open", dset ? dset : "?");
    /* before the row counts are summed: a negative one would corrupt every rank's offset */
    if (n_local < 0)
        st = TMD_FAIL(ctx, TMD_ERR_ARG, "%s: invalid row count %lld", dset ? dset : "?", (long long)n_local);
    st = tmd_agree(ctx, comm, st);
    if (st) return st;
    int64_t offset = 0, total = 0;
    if (MPI_Exscan(&n_local, &offset, 1, MPI_INT64_T, MPI_SUM, comm) != MPI_SUCCESS ||
        MPI_Allreduce(&n_local, &total, 1, MPI_INT64_T, MPI_SUM, comm) != MPI_SUCCESS)
        st = TMD_FAIL(ctx, TMD_ERR_MPI, "%s: MPI_Exscan/MPI_Allreduce of row counts failed", dset ? dset : "?");
    int me = 0;
    MPI_Comm_rank(comm, &me);
    if (me == 0) offset = 0; /* MPI_Exscan leaves rank 0's result undefined */
    st = tmd_agree(ctx, comm, st);
    if (!st) st = tmd_writer_rows_create(ctx, w, dset, type, total, ncols);
    if (!st) st = tmd_writer_rows_part(ctx, w, dset, type, offset, n_local, ncols, data);
    return st;
}

tmd_status tmd_writer_array(tmd_ctx *ctx, tmd_writer *w, const char *dset, tmd_dtype type, int ndims,
                            const int64_t *global_dims, const int64_t *start, const int64_t *count, const int64_t *chunk,
                            const void *data)
{
    tmd_status st;
    hid_t d = H5I_INVALID_HID;
    tmd_io_h5_quiet();
    MPI_Comm comm = w ? w->comm : MPI_COMM_NULL;
    if (comm == MPI_COMM_NULL) return TMD_FAIL(ctx, TMD_ERR_ARG, "writing %s: the writer is not open", dset ? dset : "?");

    hsize_t hd[4] = {0}, hs[4] = {0}, hc[4] = {0}, hk[4] = {0};
    int64_t nelem = 1;
    st = check_common(ctx, w, dset, type);
    if (!st && (ndims < 1 || ndims > 4 || !global_dims || !start || !count))
        st = TMD_FAIL(ctx, TMD_ERR_ARG, "%s: need 1 to 4 dims with global dims, start and count (got %d)", dset, ndims);
    for (int i = 0; !st && i < ndims; i++) {
        if (global_dims[i] < 0 || start[i] < 0 || count[i] < 0 || start[i] + count[i] > global_dims[i])
            st = TMD_FAIL(ctx, TMD_ERR_RANGE, "%s: dim %d: box [%lld, %lld) does not fit in %lld", dset, i,
                          (long long)start[i], (long long)(start[i] + count[i]), (long long)global_dims[i]);
        if (chunk && chunk[i] < 1)
            st = TMD_FAIL(ctx, TMD_ERR_ARG, "%s: chunk size %lld in dim %d must be >= 1", dset, (long long)chunk[i], i);
        if (!st) {
            hd[i] = (hsize_t)global_dims[i];
            hs[i] = (hsize_t)start[i];
            hc[i] = (hsize_t)count[i];
            nelem *= count[i];
        }
    }
    if (!st && nelem > 0 && !data) st = TMD_FAIL(ctx, TMD_ERR_ARG, "%s: a non-empty box but no data", dset);
    st = tmd_agree(ctx, comm, st);
    if (st) return st;
    /* Same shape and type on every rank. */
    uint64_t sig = (uint64_t)type + 16u * (uint64_t)ndims;
    for (int i = 0; i < ndims; i++) sig = sig * 1000003u + (uint64_t)global_dims[i];
    st = agree_same(ctx, comm, sig, "shapes or types", dset);
    st = tmd_agree(ctx, comm, st);
    if (st) return st;

    /* Chunks: as given (clipped to the dims), else the whole array halved along its largest
     * dimension until a chunk is at most 1 MiB. */
    size_t es = tmd_dtype_size(type);
    for (int i = 0; i < ndims; i++) {
        hsize_t want = chunk ? (hsize_t)chunk[i] : hd[i];
        if (hd[i] > 0 && want > hd[i]) want = hd[i];
        hk[i] = want < 1 ? 1 : want;
    }
    if (!chunk) {
        for (;;) {
            double bytes = (double)es;
            int big = 0;
            for (int i = 0; i < ndims; i++) {
                bytes *= (double)hk[i];
                if (hk[i] > hk[big]) big = i;
            }
            if (bytes <= (double)(1 << 20) || hk[big] <= 1) break;
            hk[big] = (hk[big] + 1) / 2;
        }
    }
    double bytes = (double)es;
    for (int i = 0; i < ndims; i++) bytes *= (double)hd[i];
    st = check_space(ctx, w, dset, bytes);
    if (st) return st;
    d = create_dataset(ctx, w, dset, type, ndims, hd, hk, &st);
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    st = write_box(ctx, w, d, dset, type, ndims, hs, hc, data);
    st = tmd_agree(ctx, comm, st);
cleanup:
    if (d >= 0 && H5Dclose(d) < 0 && !st) st = h5fail(ctx, w, "closing dataset", dset);
    return tmd_agree(ctx, comm, st);
}

/* Opens obj ("/" or a path); creates it as a group (with intermediate groups) if it does not
 * exist yet. Collective. */
static hid_t open_or_create_obj(tmd_ctx *ctx, tmd_writer *w, const char *obj, tmd_status *st)
{
    if (!strcmp(obj, "/")) return H5Oopen(w->file, "/", H5P_DEFAULT);
    /* Walk the path: H5Lexists fails if an intermediate component is missing. */
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", obj);
    int exists = 1;
    for (char *p = buf + 1; exists; p++) {
        char c = *p;
        if (c == '/' || c == 0) {
            *p = 0;
            exists = H5Lexists(w->file, buf, H5P_DEFAULT) > 0;
            *p = c;
            if (c == 0) break;
        }
    }
    if (exists) {
        hid_t o = H5Oopen(w->file, obj, H5P_DEFAULT);
        if (o < 0) *st = h5fail(ctx, w, "opening", obj);
        return o;
    }
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(lcpl, 1);
    hid_t g = H5Gcreate2(w->file, obj, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    H5Pclose(lcpl);
    if (g < 0) *st = h5fail(ctx, w, "creating group", obj);
    return g;
}

/* Writes one attribute (type/space given) on obj, replacing an existing one. Collective. */
static tmd_status write_attr(tmd_ctx *ctx, tmd_writer *w, const char *obj, const char *name, hid_t ftype, hid_t mtype,
                             hid_t space, const void *buf)
{
    tmd_status st = TMD_OK;
    hid_t o = H5I_INVALID_HID, a = H5I_INVALID_HID;
    char what[300];
    snprintf(what, sizeof what, "%s attribute '%s'", obj, name);
    o = open_or_create_obj(ctx, w, obj, &st);
    if (st || o < 0) {
        if (!st) st = h5fail(ctx, w, "opening", obj);
        goto cleanup;
    }
    htri_t ex = H5Aexists(o, name);
    if (ex > 0 && H5Adelete(o, name) < 0) {
        st = h5fail(ctx, w, "replacing", what);
        goto cleanup;
    }
    a = H5Acreate2(o, name, ftype, space, H5P_DEFAULT, H5P_DEFAULT);
    if (a < 0) {
        st = h5fail(ctx, w, "creating", what);
        goto cleanup;
    }
    if (H5Awrite(a, mtype, buf) < 0) st = h5fail(ctx, w, "writing", what);
cleanup:
    if (a >= 0) H5Aclose(a);
    if (o >= 0) H5Oclose(o);
    return st;
}

static tmd_status attr_check(tmd_ctx *ctx, tmd_writer *w, const char *obj, const char *name)
{
    if (!w || w->file < 0) return TMD_FAIL(ctx, TMD_ERR_ARG, "attribute %s: the writer is not open", name ? name : "?");
    if (!obj || obj[0] != '/' || !name || !name[0] || strlen(obj) >= 1000)
        return TMD_FAIL(ctx, TMD_ERR_ARG, "%s: attribute needs an object path starting with '/' and a name", w->tmp);
    return TMD_OK;
}

tmd_status tmd_writer_attr_str(tmd_ctx *ctx, tmd_writer *w, const char *obj, const char *name, const char *value)
{
    tmd_io_h5_quiet();
    MPI_Comm comm = w ? w->comm : MPI_COMM_NULL;
    if (comm == MPI_COMM_NULL) return TMD_FAIL(ctx, TMD_ERR_ARG, "attribute %s: the writer is not open", name ? name : "?");
    tmd_status st = attr_check(ctx, w, obj, name);
    if (!st && !value) value = "";
    st = tmd_agree(ctx, comm, st);
    if (st) return st;
    /* Variable-length UTF-8 string, scalar: h5py reads it as str. */
    hid_t t = H5Tcopy(H5T_C_S1), space = H5Screate(H5S_SCALAR);
    if (t < 0 || space < 0 || H5Tset_size(t, H5T_VARIABLE) < 0 || H5Tset_cset(t, H5T_CSET_UTF8) < 0)
        st = h5fail(ctx, w, "preparing string attribute", name);
    if (!st) st = write_attr(ctx, w, obj, name, t, t, space, &value);
    if (t >= 0) H5Tclose(t);
    if (space >= 0) H5Sclose(space);
    return tmd_agree(ctx, comm, st);
}

static tmd_status attr_num(tmd_ctx *ctx, tmd_writer *w, const char *obj, const char *name, hid_t ftype, hid_t mtype,
                           const void *v, int n)
{
    tmd_io_h5_quiet();
    MPI_Comm comm = w ? w->comm : MPI_COMM_NULL;
    if (comm == MPI_COMM_NULL) return TMD_FAIL(ctx, TMD_ERR_ARG, "attribute %s: the writer is not open", name ? name : "?");
    tmd_status st = attr_check(ctx, w, obj, name);
    if (!st && (n < 1 || !v)) st = TMD_FAIL(ctx, TMD_ERR_ARG, "attribute %s: need at least one value", name);
    st = tmd_agree(ctx, comm, st);
    if (st) return st;
    /* One value: a scalar (h5py gives a number); several: a 1-D array. */
    hsize_t dn = (hsize_t)n;
    hid_t space = n == 1 ? H5Screate(H5S_SCALAR) : H5Screate_simple(1, &dn, NULL);
    if (space < 0) st = h5fail(ctx, w, "preparing attribute", name);
    if (!st) st = write_attr(ctx, w, obj, name, ftype, mtype, space, v);
    if (space >= 0) H5Sclose(space);
    return tmd_agree(ctx, comm, st);
}

tmd_status tmd_writer_attr_f64(tmd_ctx *ctx, tmd_writer *w, const char *obj, const char *name, const double *v, int n)
{
    return attr_num(ctx, w, obj, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, v, n);
}

tmd_status tmd_writer_attr_i64(tmd_ctx *ctx, tmd_writer *w, const char *obj, const char *name, const int64_t *v, int n)
{
    return attr_num(ctx, w, obj, name, H5T_STD_I64LE, H5T_NATIVE_INT64, v, n);
}

tmd_status tmd_writer_close_keep(tmd_ctx *ctx, tmd_writer **wp, int ok, int keep_tmp)
{
    if (!wp || !*wp) return ok ? TMD_OK : (ctx->err_code ? ctx->err_code : TMD_ERR_INTERNAL);
    tmd_writer *w = *wp;
    tmd_io_h5_quiet();
    tmd_status local = TMD_OK;
    if (!ok) local = ctx->err_code ? ctx->err_code : TMD_ERR_INTERNAL;
    if (!ok && !ctx->err_code)
        TMD_FAIL(ctx, TMD_ERR_INTERNAL, "%s: the writer was closed as failed without a recorded cause", w->path);
    tmd_status st = tmd_agree(ctx, w->comm, local);

    /* A failed file is deleted anyway: rank 0 first truncates it to zero bytes, so that the
     * metadata HDF5 flushes while closing finds room even if the failure was a full disk (a
     * write error inside H5Fclose on one rank would leave the others waiting in HDF5). */
    int me0 = 0;
    MPI_Comm_rank(w->comm, &me0);
    if (st && !keep_tmp) {
        if (me0 == 0 && truncate(w->tmp, 0) != 0) { /* nothing more to do: the close may still work */ }
        MPI_Barrier(w->comm);
    }
    /* H5Fclose is collective: every rank calls it whatever the outcome. */
    tmd_status cst = TMD_OK;
    if (w->file >= 0 && H5Fclose(w->file) < 0 && !st) cst = h5fail(ctx, w, "closing (flushing)", NULL);
    w->file = H5I_INVALID_HID;
    cst = tmd_agree(ctx, w->comm, cst);
    if (!st) st = cst;

    /* Rank 0 publishes or removes the file; the agreement below doubles as the barrier that
     * makes the final file visible to every rank on return. */
    tmd_status rst = TMD_OK;
    int me = 0;
    MPI_Comm_rank(w->comm, &me);
    if (me == 0) {
        if (!st) {
            if (rename(w->tmp, w->path) != 0)
                rst = TMD_FAIL(ctx, TMD_ERR_IO, "cannot rename %s to %s: %s", w->tmp, w->path, strerror(errno));
        } else if (!keep_tmp) {
            unlink(w->tmp);
        }
    }
    rst = tmd_agree(ctx, w->comm, rst);
    if (!st) st = rst;
    MPI_Comm_free(&w->comm);
    free(w);
    *wp = NULL;
    return st;
}

tmd_status tmd_writer_close(tmd_ctx *ctx, tmd_writer **w, int ok) { return tmd_writer_close_keep(ctx, w, ok, 0); }

/* ---- column datasets written in pieces (tmd_writer_rows_create / tmd_writer_rows_part) ---- */

tmd_status tmd_writer_rows_create(tmd_ctx *ctx, tmd_writer *w, const char *dset, tmd_dtype type, int64_t total,
                                  int64_t ncols)
{
    tmd_status st;
    hid_t d = H5I_INVALID_HID;
    tmd_io_h5_quiet();
    MPI_Comm comm = w ? w->comm : MPI_COMM_NULL;
    if (comm == MPI_COMM_NULL) return TMD_FAIL(ctx, TMD_ERR_ARG, "writing %s: the writer is not open", dset ? dset : "?");
    st = check_common(ctx, w, dset, type);
    if (!st && (total < 0 || ncols < 1))
        st = TMD_FAIL(ctx, TMD_ERR_ARG, "%s: invalid row count %lld or column count %lld", dset, (long long)total,
                      (long long)ncols);
    st = tmd_agree(ctx, comm, st);
    if (st) return st;
    st = agree_same(ctx, comm, (uint64_t)ncols * 64u + (uint64_t)type + ((uint64_t)total << 20), "shapes or types", dset);
    st = tmd_agree(ctx, comm, st);
    if (st) return st;
    /* chunks of about 1 MiB, at most 65536 rows, never 0 rows (an empty dataset: chunk 1) */
    int ndims = ncols == 1 ? 1 : 2;
    size_t rowbytes = (size_t)ncols * tmd_dtype_size(type);
    int64_t crow = (int64_t)((1 << 20) / rowbytes);
    if (crow < 1) crow = 1;
    if (crow > 65536) crow = 65536;
    if (crow > total) crow = total > 0 ? total : 1;
    hsize_t dims[2] = {(hsize_t)total, (hsize_t)ncols}, chunk[2] = {(hsize_t)crow, (hsize_t)ncols};
    st = check_space(ctx, w, dset, (double)total * (double)rowbytes);
    if (st) return st;
    d = create_dataset(ctx, w, dset, type, ndims, dims, chunk, &st);
    st = tmd_agree(ctx, comm, st);
    if (d >= 0 && H5Dclose(d) < 0 && !st) st = h5fail(ctx, w, "closing dataset", dset);
    return tmd_agree(ctx, comm, st);
}

tmd_status tmd_writer_rows_part(tmd_ctx *ctx, tmd_writer *w, const char *dset, tmd_dtype type, int64_t offset,
                                int64_t n_local, int64_t ncols, const void *data)
{
    tmd_status st;
    hid_t d = H5I_INVALID_HID, sp = H5I_INVALID_HID;
    tmd_io_h5_quiet();
    MPI_Comm comm = w ? w->comm : MPI_COMM_NULL;
    if (comm == MPI_COMM_NULL) return TMD_FAIL(ctx, TMD_ERR_ARG, "writing %s: the writer is not open", dset ? dset : "?");
    st = check_common(ctx, w, dset, type);
    if (!st && (n_local < 0 || offset < 0 || ncols < 1))
        st = TMD_FAIL(ctx, TMD_ERR_ARG, "%s: invalid rows [%lld, +%lld) or column count %lld", dset, (long long)offset,
                      (long long)n_local, (long long)ncols);
    if (!st && n_local > 0 && !data) st = TMD_FAIL(ctx, TMD_ERR_ARG, "%s: %lld rows but no data", dset, (long long)n_local);
    st = tmd_agree(ctx, comm, st);
    if (st) return st;
    d = H5Dopen2(w->file, dset, H5P_DEFAULT);
    if (d < 0) st = h5fail(ctx, w, "opening dataset", dset);
    if (!st) {
        hsize_t dims[2] = {0, 0};
        sp = H5Dget_space(d);
        int nd = sp >= 0 ? H5Sget_simple_extent_dims(sp, dims, NULL) : -1;
        if (nd != (ncols == 1 ? 1 : 2) || (nd == 2 && dims[1] != (hsize_t)ncols))
            st = TMD_FAIL(ctx, TMD_ERR_ARG, "%s: expected %lld columns", dset, (long long)ncols);
        else if ((hsize_t)(offset + n_local) > dims[0] && n_local > 0)
            st = TMD_FAIL(ctx, TMD_ERR_RANGE, "%s: rows [%lld, %lld) beyond its %llu rows", dset, (long long)offset,
                          (long long)(offset + n_local), (unsigned long long)dims[0]);
    }
    if (sp >= 0) H5Sclose(sp);
    st = tmd_agree(ctx, comm, st);
    if (!st) {
        hsize_t start[2] = {(hsize_t)offset, 0}, count[2] = {(hsize_t)n_local, (hsize_t)ncols};
        st = write_box(ctx, w, d, dset, type, ncols == 1 ? 1 : 2, start, count, data);
        st = tmd_agree(ctx, comm, st);
    }
    if (d >= 0 && H5Dclose(d) < 0 && !st) st = h5fail(ctx, w, "closing dataset", dset);
    return tmd_agree(ctx, comm, st);
}
