/* tmd_sim_write: collective simulation into an HDF5 file (image + truth) or a TIFF image
 * with its truth beside it.
 *
 * Decomposition: the image rows are cut into bands of B rows (B fixed by the width, never by
 * the rank count); rank r owns a contiguous block of bands. Every rank renders its bands one
 * at a time and writes each one collectively into /image (a round: every rank writes its
 * k-th band or an empty selection), so memory per rank is a band, not its block. Chunks are
 * band-aligned, so each chunk has one writer. Truth rows are those whose centre lies in the
 * rank's bands; they are appended by tmd_writer_rows at the end (rank order = row order). */
#include <hdf5.h>
#include <tiffio.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "sim_internal.h"
#include "tmd/config.h"
#include "tmd/io.h"

static int ends_with(const char *s, const char *suf)
{
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && !strcmp(s + n - m, suf);
}

static tmd_status h5fail(tmd_ctx *ctx, const char *what, const char *dset, const char *path)
{
    return TMD_FAIL(ctx, TMD_ERR_IO, "%s: HDF5 failed %s %s", path, what, dset);
}

/* Collective: creates a chunked dataset (no fill) in the writer's file. */
static tmd_status create_dset(tmd_ctx *ctx, hid_t file, const char *path, const char *dset, hid_t type, int nd,
                              const hsize_t *dims, const hsize_t *chunk, hid_t *out)
{
    tmd_status st = TMD_OK;
    hid_t space = H5Screate_simple(nd, dims, NULL), dcpl = H5Pcreate(H5P_DATASET_CREATE), lcpl = H5Pcreate(H5P_LINK_CREATE);
    *out = H5I_INVALID_HID;
    if (space < 0 || dcpl < 0 || lcpl < 0 || H5Pset_chunk(dcpl, nd, chunk) < 0 || H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER) < 0 ||
        H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY) < 0 || H5Pset_create_intermediate_group(lcpl, 1) < 0) {
        st = h5fail(ctx, "preparing", dset, path);
    } else {
        *out = H5Dcreate2(file, dset, type, space, lcpl, dcpl, H5P_DEFAULT);
        if (*out < 0) st = h5fail(ctx, "creating", dset, path);
    }
    if (space >= 0) H5Sclose(space);
    if (dcpl >= 0) H5Pclose(dcpl);
    if (lcpl >= 0) H5Pclose(lcpl);
    return st;
}

/* Collective: this rank writes rows [y0, y0+ny) of frame t (ny may be 0). */
static tmd_status write_band(tmd_ctx *ctx, hid_t d, int nd, hid_t memtype, int64_t t, int64_t y0, int64_t ny, int64_t W,
                             const void *buf, const char *dset, const char *path)
{
    tmd_status st = TMD_OK;
    hid_t fspace = H5Dget_space(d), mspace = H5I_INVALID_HID, dxpl = H5Pcreate(H5P_DATASET_XFER);
    static const char dummy[16];
    if (fspace < 0 || dxpl < 0 || H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_COLLECTIVE) < 0) {
        st = h5fail(ctx, "preparing the write of", dset, path);
        goto cleanup;
    }
    if (ny == 0) {
        hsize_t one = 1;
        mspace = H5Screate_simple(1, &one, NULL);
        if (mspace < 0 || H5Sselect_none(mspace) < 0 || H5Sselect_none(fspace) < 0) {
            st = h5fail(ctx, "selecting nothing in", dset, path);
            goto cleanup;
        }
        buf = dummy;
    } else {
        hsize_t start[3], count[3];
        if (nd == 3) {
            start[0] = (hsize_t)t; start[1] = (hsize_t)y0; start[2] = 0;
            count[0] = 1; count[1] = (hsize_t)ny; count[2] = (hsize_t)W;
        } else {
            start[0] = (hsize_t)y0; start[1] = 0;
            count[0] = (hsize_t)ny; count[1] = (hsize_t)W;
        }
        mspace = H5Screate_simple(nd, count, NULL);
        if (mspace < 0 || H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start, NULL, count, NULL) < 0) {
            st = h5fail(ctx, "selecting this rank's band of", dset, path);
            goto cleanup;
        }
    }
    if (H5Dwrite(d, memtype, mspace, fspace, dxpl, buf) < 0) st = h5fail(ctx, "writing", dset, path);
cleanup:
    if (fspace >= 0) H5Sclose(fspace);
    if (mspace >= 0) H5Sclose(mspace);
    if (dxpl >= 0) H5Pclose(dxpl);
    return st;
}

typedef struct {
    tmd_ctx *ctx;
    sim_world *w;
    int64_t y0, y1;   /* rank's rows */
    int64_t n, cap;
    int64_t *id;
    double *x, *y, *rad, *area;
    int64_t *nsites;
    int st;
} region_acc;

static void add_region(void *arg, int64_t id, double sx, double sy, double r)
{
    region_acc *a = arg;
    if (a->st) return;
    double x, y;
    tmd_sim_specimen_to_pixel(a->w, 0, sx, sy, &x, &y);
    double yr = floor(y + 0.5);
    if (x < -0.5 || x >= (double)a->w->p.width - 0.5 || yr < (double)a->y0 || yr >= (double)a->y1) return;
    if (a->n == a->cap) {
        int64_t cap = a->cap ? 2 * a->cap : 16;
        int64_t *nid = realloc(a->id, (size_t)cap * sizeof *nid);
        if (nid) a->id = nid;
        double *nx = realloc(a->x, (size_t)cap * sizeof *nx);
        if (nx) a->x = nx;
        double *ny = realloc(a->y, (size_t)cap * sizeof *ny);
        if (ny) a->y = ny;
        double *nr = realloc(a->rad, (size_t)cap * sizeof *nr);
        if (nr) a->rad = nr;
        double *na = realloc(a->area, (size_t)cap * sizeof *na);
        if (na) a->area = na;
        int64_t *ns = realloc(a->nsites, (size_t)cap * sizeof *ns);
        if (ns) a->nsites = ns;
        if (!nid || !nx || !ny || !nr || !na || !ns) {
            a->st = TMD_FAIL(a->ctx, TMD_ERR_NOMEM, "out of memory for region truth");
            return;
        }
        a->cap = cap;
    }
    int64_t k = a->n++;
    a->id[k] = id;
    a->x[k] = x;
    a->y[k] = y;
    a->rad[k] = r / a->w->px;
    a->area[k] = 3.14159265358979323846 * a->rad[k] * a->rad[k];
    int st = tmd_sim_region_count_sites(a->ctx, a->w, id, sx, sy, r, &a->nsites[k]);
    if (st) a->st = st;
}

static tmd_status write_attrs(tmd_ctx *ctx, tmd_writer *wr, const tmd_sim_params *p, int nranks)
{
    TMD_CHECK(tmd_writer_attr_str(ctx, wr, "/", "tmdflow_version", TMD_VERSION));
    TMD_CHECK(tmd_writer_attr_str(ctx, wr, "/", "input", "simulated by tmdflow simulate"));
    int64_t r = nranks;
    TMD_CHECK(tmd_writer_attr_i64(ctx, wr, "/", "ranks", &r, 1));
    char text[8192] = "", line[256];
    for (int i = 0;; i++) {
        const char *name;
        if (!tmd_sim_param_info(i, &name, NULL, NULL, NULL)) break;
        if (!strcmp(name, "seed")) {
            snprintf(line, sizeof line, "%llu", (unsigned long long)p->seed);
            TMD_CHECK(tmd_writer_attr_str(ctx, wr, "/", "seed", line));
            snprintf(line, sizeof line, "seed = %llu\n", (unsigned long long)p->seed);
        } else {
            double v = tmd_sim_param_get(p, i);
            TMD_CHECK(tmd_writer_attr_f64(ctx, wr, "/", name, &v, 1));
            snprintf(line, sizeof line, "%s = %.17g\n", name, v);
        }
        strncat(text, line, sizeof text - strlen(text) - 1);
    }
    TMD_CHECK(tmd_writer_attr_str(ctx, wr, "/", "simulation", text));
    return TMD_OK;
}

/* ---- streaming TIFF (rank 0 writes every band as one strip, in any order) ---------------- */

typedef struct { char msg[512]; } tiff_msg;

static int tiff_on_err(TIFF *tif, void *ud, const char *module, const char *fmt, va_list ap)
{
    (void)tif;
    tiff_msg *m = ud;
    char body[400];
    vsnprintf(body, sizeof body, fmt, ap);
    if (!m->msg[0]) snprintf(m->msg, sizeof m->msg, "%s%s%s", module ? module : "", module ? ": " : "", body);
    return 1;
}
static int tiff_on_warn(TIFF *tif, void *ud, const char *module, const char *fmt, va_list ap)
{
    (void)tif; (void)ud; (void)module; (void)fmt; (void)ap;
    return 1;
}

static void tiff_page_tags(TIFF *t, const tmd_sim_params *p, int64_t B, int64_t frame)
{
    int es = p->out_u16 ? 2 : 4;
    TIFFSetField(t, TIFFTAG_IMAGEWIDTH, (uint32_t)p->width);
    TIFFSetField(t, TIFFTAG_IMAGELENGTH, (uint32_t)p->height);
    TIFFSetField(t, TIFFTAG_BITSPERSAMPLE, (uint16_t)(es * 8));
    TIFFSetField(t, TIFFTAG_SAMPLESPERPIXEL, (uint16_t)1);
    TIFFSetField(t, TIFFTAG_SAMPLEFORMAT, p->out_u16 ? SAMPLEFORMAT_UINT : SAMPLEFORMAT_IEEEFP);
    TIFFSetField(t, TIFFTAG_PHOTOMETRIC, PHOTOMETRIC_MINISBLACK);
    TIFFSetField(t, TIFFTAG_PLANARCONFIG, PLANARCONFIG_CONTIG);
    TIFFSetField(t, TIFFTAG_COMPRESSION, COMPRESSION_NONE);
    TIFFSetField(t, TIFFTAG_ROWSPERSTRIP, (uint32_t)B);
    if (p->frames > 1) {
        TIFFSetField(t, TIFFTAG_SUBFILETYPE, FILETYPE_PAGE);
        TIFFSetField(t, TIFFTAG_PAGENUMBER, (uint16_t)(frame < 65535 ? frame : 65535),
                     (uint16_t)(p->frames < 65535 ? p->frames : 65535));
    }
    /* the pixel size the ImageJ way (pixels per nm, unit=nm), as tmd_reader_open reads it */
    float res = (float)(10.0 / p->pixel_size);
    TIFFSetField(t, TIFFTAG_XRESOLUTION, res);
    TIFFSetField(t, TIFFTAG_YRESOLUTION, res);
    TIFFSetField(t, TIFFTAG_RESOLUTIONUNIT, RESUNIT_NONE);
    if (frame == 0) {
        char desc[256];
        snprintf(desc, sizeof desc, "ImageJ=1.54f\nimages=%lld\nslices=%lld\nunit=nm\ntmdflow simulate pixel_size=%.9g A\n",
                 (long long)p->frames, (long long)p->frames, p->pixel_size);
        TIFFSetField(t, TIFFTAG_IMAGEDESCRIPTION, desc);
    }
    TIFFSetField(t, TIFFTAG_SOFTWARE, "tmdflow " TMD_VERSION " simulate");
}

/* Collective round: rank 0 writes its band and receives and writes every other rank's band of
 * this round as strips; others send theirs. Band k of rank r is strip nb*r/n + k. */
static tmd_status tiff_round(tmd_ctx *ctx, TIFF *t, tiff_msg *m, const char *path, MPI_Comm comm, int rank, int nranks,
                             int64_t nb, int64_t B, int64_t H, int64_t W, int64_t k, int es, const void *mine, int64_t myny,
                             void *recv)
{
    tmd_status st = TMD_OK;
    if (rank != 0) {
        if (myny > 0)
            st = TMD_MPI(ctx, MPI_Send(mine, (int)(myny * W * es), MPI_BYTE, 0, 77, comm));
        return st;
    }
    for (int r = 0; r < nranks; r++) {
        int64_t b = nb * r / nranks + k;
        if (b >= nb * (r + 1) / nranks) continue;
        int64_t ny = H - b * B < B ? H - b * B : B;
        const void *src = mine;
        if (r != 0) {
            tmd_status rs = TMD_MPI(ctx, MPI_Recv(recv, (int)(ny * W * es), MPI_BYTE, r, 77, comm, MPI_STATUS_IGNORE));
            if (rs && !st) st = rs;
            src = recv;
        }
        if (!st && TIFFWriteEncodedStrip(t, (uint32_t)b, (void *)src, (tmsize_t)(ny * W * es)) < 0)
            st = TMD_FAIL(ctx, TMD_ERR_IO, "%s: writing rows %lld..%lld failed%s%s", path, (long long)(b * B),
                          (long long)(b * B + ny - 1), m->msg[0] ? ": " : "", m->msg);
    }
    return st;
}

/* ---- truth rows appended band by band (extendible datasets, flat memory) ----------------- */

typedef struct {
    const char *name;
    hid_t type;
    int64_t ncols;
    hid_t d;
    int64_t size;
} appender;

/* Collective: creates an empty extendible dataset (rows x ncols, 1-D when ncols == 1). */
static tmd_status app_create(tmd_ctx *ctx, hid_t file, const char *path, appender *a)
{
    tmd_status st = TMD_OK;
    int nd = a->ncols > 1 ? 2 : 1;
    hsize_t dims[2] = {0, (hsize_t)a->ncols}, maxd[2] = {H5S_UNLIMITED, (hsize_t)a->ncols};
    hsize_t rows = a->ncols > 1 ? (hsize_t)(65536 / a->ncols) : 65536;
    hsize_t chunk[2] = {rows ? rows : 1, (hsize_t)a->ncols};
    hid_t space = H5Screate_simple(nd, dims, maxd), dcpl = H5Pcreate(H5P_DATASET_CREATE), lcpl = H5Pcreate(H5P_LINK_CREATE);
    a->d = H5I_INVALID_HID;
    a->size = 0;
    if (space < 0 || dcpl < 0 || lcpl < 0 || H5Pset_chunk(dcpl, nd, chunk) < 0 || H5Pset_create_intermediate_group(lcpl, 1) < 0)
        st = h5fail(ctx, "preparing", a->name, path);
    else if ((a->d = H5Dcreate2(file, a->name, a->type, space, lcpl, dcpl, H5P_DEFAULT)) < 0)
        st = h5fail(ctx, "creating", a->name, path);
    if (space >= 0) H5Sclose(space);
    if (dcpl >= 0) H5Pclose(dcpl);
    if (lcpl >= 0) H5Pclose(lcpl);
    return st;
}

/* Collective: appends every rank's n rows (rank order) to the dataset. */
static tmd_status app_append(tmd_ctx *ctx, MPI_Comm comm, const char *path, appender *a, int64_t n, const void *data)
{
    int rank, nranks;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &nranks);
    int64_t off = 0, total = 0, *all = malloc((size_t)nranks * sizeof *all);
    if (!all) return TMD_FAIL(ctx, TMD_ERR_NOMEM, "out of memory appending to %s", a->name);
    tmd_status st = TMD_MPI(ctx, MPI_Allgather(&n, 1, MPI_INT64_T, all, 1, MPI_INT64_T, comm));
    if (st) {
        free(all);
        return st;
    }
    for (int r = 0; r < nranks; r++) {
        if (r < rank) off += all[r];
        total += all[r];
    }
    free(all);
    if (total == 0) return TMD_OK;
    int nd = a->ncols > 1 ? 2 : 1;
    hsize_t ext[2] = {(hsize_t)(a->size + total), (hsize_t)a->ncols};
    hid_t fspace = H5I_INVALID_HID, mspace = H5I_INVALID_HID, dxpl = H5I_INVALID_HID;
    static const char dummy[16];
    if (H5Dset_extent(a->d, ext) < 0) {
        st = h5fail(ctx, "extending", a->name, path);
        goto cleanup;
    }
    fspace = H5Dget_space(a->d);
    dxpl = H5Pcreate(H5P_DATASET_XFER);
    if (fspace < 0 || dxpl < 0 || H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_COLLECTIVE) < 0) {
        st = h5fail(ctx, "preparing the write of", a->name, path);
        goto cleanup;
    }
    if (n == 0) {
        hsize_t one = 1;
        mspace = H5Screate_simple(1, &one, NULL);
        if (mspace < 0 || H5Sselect_none(mspace) < 0 || H5Sselect_none(fspace) < 0) {
            st = h5fail(ctx, "selecting nothing in", a->name, path);
            goto cleanup;
        }
        data = dummy;
    } else {
        hsize_t start[2] = {(hsize_t)(a->size + off), 0}, count[2] = {(hsize_t)n, (hsize_t)a->ncols};
        mspace = H5Screate_simple(nd, count, NULL);
        if (mspace < 0 || H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start, NULL, count, NULL) < 0) {
            st = h5fail(ctx, "selecting rows of", a->name, path);
            goto cleanup;
        }
    }
    if (H5Dwrite(a->d, a->type, mspace, fspace, dxpl, data) < 0) st = h5fail(ctx, "writing", a->name, path);
    a->size += total;
cleanup:
    if (fspace >= 0) H5Sclose(fspace);
    if (mspace >= 0) H5Sclose(mspace);
    if (dxpl >= 0) H5Pclose(dxpl);
    return st;
}

enum { AP_NATOMS = 7, AP_NDEF = 4, AP_NSITES = 9, AP_N = AP_NATOMS + AP_NDEF + AP_NSITES };

/* Appends the truth rows of this round and empties the tables. Collective. */
static tmd_status append_truth(tmd_ctx *ctx, MPI_Comm comm, const char *path, appender *ap, sim_truth *tr)
{
    const tmd_atom_table *a = &tr->atoms;
    const tmd_defect_table *d = &tr->defects;
    const tmd_site_table *s = &tr->sites;
    const void *col[AP_N] = {a->frame, a->x, a->y, a->sublattice, a->species, a->intensity, a->site,
                             d->frame, d->x, d->y, d->type,
                             s->id, s->x, s->y, s->sublattice, s->instability, s->unstable, s->dynamic, tr->site_state,
                             tr->site_jump};
    int64_t n[AP_N];
    for (int i = 0; i < AP_N; i++) n[i] = i < AP_NATOMS ? a->n : i < AP_NATOMS + AP_NDEF ? d->n : s->n;
    tmd_status st = TMD_OK;
    for (int i = 0; i < AP_N && !st; i++) {
        st = app_append(ctx, comm, path, &ap[i], n[i], col[i]);
        st = tmd_agree(ctx, comm, st);
    }
    tr->atoms.n = 0;
    tr->defects.n = 0;
    tr->sites.n = 0;
    return st;
}

tmd_status tmd_sim_write(tmd_ctx *ctx, const tmd_sim_params *pin, const char *path, int force, MPI_Comm comm)
{
    tmd_status st = TMD_OK;
    int rank, nranks;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &nranks);
    tmd_sim_params p = *pin;
    sim_world w;
    int world_ok = 0;
    sim_truth truth;
    memset(&truth, 0, sizeof truth);
    tmd_atom_table_init(&truth.atoms, 0);
    sim_site_list scratch = {0};
    tmd_writer *wr = NULL;
    hid_t dimg = H5I_INVALID_HID, dcls = H5I_INVALID_HID;
    float *band = NULL;
    void *tiff_recv = NULL;
    TIFF *tif = NULL;
    tiff_msg tmsg;
    memset(&tmsg, 0, sizeof tmsg);
    uint16_t *band16 = NULL;
    uint8_t *cls = NULL;
    region_acc reg;
    memset(&reg, 0, sizeof reg);
    appender ap[AP_N] = {
        {"/atoms/frame", H5T_NATIVE_INT32, 1, -1, 0}, {"/atoms/x", H5T_NATIVE_DOUBLE, 1, -1, 0},
        {"/atoms/y", H5T_NATIVE_DOUBLE, 1, -1, 0}, {"/atoms/sublattice", H5T_NATIVE_INT8, 1, -1, 0},
        {"/atoms/species", H5T_NATIVE_INT8, 1, -1, 0}, {"/atoms/intensity", H5T_NATIVE_FLOAT, 1, -1, 0},
        {"/atoms/site", H5T_NATIVE_INT64, 1, -1, 0},
        {"/defects/frame", H5T_NATIVE_INT32, 1, -1, 0}, {"/defects/x", H5T_NATIVE_DOUBLE, 1, -1, 0},
        {"/defects/y", H5T_NATIVE_DOUBLE, 1, -1, 0}, {"/defects/type", H5T_NATIVE_INT8, 1, -1, 0},
        {"/sites/id", H5T_NATIVE_INT64, 1, -1, 0}, {"/sites/x", H5T_NATIVE_DOUBLE, 1, -1, 0},
        {"/sites/y", H5T_NATIVE_DOUBLE, 1, -1, 0}, {"/sites/sublattice", H5T_NATIVE_INT8, 1, -1, 0},
        {"/sites/instability", H5T_NATIVE_FLOAT, 1, -1, 0}, {"/sites/unstable", H5T_NATIVE_INT8, 1, -1, 0},
        {"/sites/dynamic", H5T_NATIVE_INT8, 1, -1, 0}, {"/sites/state", H5T_NATIVE_INT8, 1, -1, 0},
        {"/sites/jump", H5T_NATIVE_INT8, 1, -1, 0}};
    int64_t atoms_total = 0;
    double render_cpu = 0;
    char h5path[TMD_PATH_MAX + 16];
    int is_h5 = ends_with(path, ".h5") || ends_with(path, ".hdf5");
    int is_tif = ends_with(path, ".tif") || ends_with(path, ".tiff");
    if (!is_h5 && !is_tif) {
        st = TMD_FAIL(ctx, TMD_ERR_ARG, "%s: output must end in .h5/.hdf5 (image and truth) or .tif/.tiff (image; truth in %s.truth.h5)",
                      path, path);
    } else if (strlen(path) > TMD_PATH_MAX) {
        st = TMD_FAIL(ctx, TMD_ERR_ARG, "output path too long (%zu characters)", strlen(path));
    } else {
        snprintf(h5path, sizeof h5path, is_h5 ? "%s" : "%s.truth.h5", path);
        if (is_tif && !force && rank == 0 && access(path, F_OK) == 0)
            st = TMD_FAIL(ctx, TMD_ERR_EXISTS, "%s exists (use --force to overwrite)", path);
    }
    if (!st) st = tmd_sim_world_init(ctx, &w, &p);
    if (!st) world_ok = 1;
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;

    int64_t H = p.height, W = p.width, T = p.frames;
    /* band height: ~32 MB of band buffers per rank whatever the width, 8..256 rows */
    int64_t B = (int64_t)(32e6 / (13.0 * (double)W));
    if (B > 256) B = 256;
    if (B < 8) B = 8;
    const char *env = getenv("TMDFLOW_SIM_BAND"); /* band height override (tests, tuning) */
    if (env && atol(env) > 0) B = atol(env);
    if (B > H) B = H;
    int64_t nb = (H + B - 1) / B;
    int64_t kb0 = nb * rank / nranks, kb1 = nb * (rank + 1) / nranks;
    int64_t maxb = 0;
    for (int r = 0; r < nranks; r++) {
        int64_t c = nb * (r + 1) / nranks - nb * r / nranks;
        if (c > maxb) maxb = c;
    }
    int64_t row0 = kb0 * B, row1 = kb1 * B < H ? kb1 * B : H;
    if (row1 < row0) row1 = row0;
    tmd_info(ctx, "simulate: %lld frame(s) of %lld x %lld px at %.4f A/px, a = %.4f A, x(W) = %.3f, y(Se) = %.3f, dose %.0f -> %s",
             (long long)T, (long long)H, (long long)W, p.pixel_size, p.lattice_a,
             p.comp_w, p.comp_se, p.dose, path);

    st = tmd_calloc(ctx, (void **)&band, (size_t)(B * W), sizeof(float), "simulated band");
    if (!st) st = tmd_calloc(ctx, (void **)&cls, (size_t)(B * W), 1, "class band");
    if (!st && p.out_u16) st = tmd_calloc(ctx, (void **)&band16, (size_t)(B * W), sizeof(uint16_t), "u16 band");
    if (!st && is_tif && rank == 0) {
        st = tmd_calloc(ctx, &tiff_recv, (size_t)(B * W), 4, "TIFF receive band");
        if (!st) {
            double total = (double)T * (double)H * (double)W * (p.out_u16 ? 2 : 4);
            TIFFOpenOptions *opts = TIFFOpenOptionsAlloc();
            if (opts) {
                TIFFOpenOptionsSetErrorHandlerExtR(opts, tiff_on_err, &tmsg);
                TIFFOpenOptionsSetWarningHandlerExtR(opts, tiff_on_warn, &tmsg);
                tif = TIFFOpenExt(path, total > 2.0e9 ? "w8" : "w", opts);
                TIFFOpenOptionsFree(opts);
            }
            if (!tif) st = TMD_FAIL(ctx, TMD_ERR_IO, "cannot create TIFF %s%s%s", path, tmsg.msg[0] ? ": " : "", tmsg.msg);
            else tiff_page_tags(tif, &p, B, 0);
        }
    }
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    st = tmd_writer_create(ctx, h5path, force, comm, &wr);
    if (st) goto cleanup;
    hid_t file = tmd_writer_file(wr);
    int nd = T > 1 ? 3 : 2;
    hsize_t dims[3], chunk[3];
    if (nd == 3) {
        dims[0] = (hsize_t)T; dims[1] = (hsize_t)H; dims[2] = (hsize_t)W;
        chunk[0] = 1; chunk[1] = (hsize_t)B; chunk[2] = (hsize_t)(W < 4096 ? W : 4096);
    } else {
        dims[0] = (hsize_t)H; dims[1] = (hsize_t)W;
        chunk[0] = (hsize_t)B; chunk[1] = (hsize_t)(W < 4096 ? W : 4096);
    }
    if (is_h5) st = create_dset(ctx, file, h5path, "/image", p.out_u16 ? H5T_NATIVE_UINT16 : H5T_NATIVE_FLOAT, nd, dims, chunk, &dimg);
    if (!st) st = create_dset(ctx, file, h5path, "/truth/classes", H5T_NATIVE_UINT8, nd, dims, chunk, &dcls);
    ap[AP_N - 2].ncols = T; /* /sites/state */
    ap[AP_N - 1].ncols = T; /* /sites/jump */
    for (int i = 0; i < AP_N && !st; i++) st = app_create(ctx, file, h5path, &ap[i]);
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;

    tmd_progress prog;
    tmd_progress_begin(&prog, ctx, "simulate", (double)(T * maxb), "bands");
    for (int64_t t = 0; t < T && !st; t++) {
        for (int64_t k = 0; k < maxb; k++) {
            int64_t y0 = (kb0 + k) * B, ny = 0;
            tmd_status lst = TMD_OK;
            if (kb0 + k < kb1) {
                ny = H - y0 < B ? H - y0 : B;
                memset(cls, 0, (size_t)(ny * W));
                struct timespec c0, c1;
                clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);
                lst = tmd_sim_render_rows(ctx, &w, t, y0, ny, band, cls, &truth, 1, &scratch);
                clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c1);
                render_cpu += (double)(c1.tv_sec - c0.tv_sec) + 1e-9 * (double)(c1.tv_nsec - c0.tv_nsec);
                if (!lst && p.out_u16)
                    for (int64_t i = 0; i < ny * W; i++) {
                        double v = floor((double)band[i] + 0.5);
                        band16[i] = (uint16_t)(v < 0 ? 0 : v > 65535 ? 65535 : v);
                    }
            }
            if (tmd_interrupted(ctx) && !lst) lst = TMD_FAIL(ctx, TMD_ERR_INTERRUPTED, "simulation interrupted by a signal");
            st = tmd_agree(ctx, comm, lst);
            if (st) break;
            if (is_h5) {
                st = write_band(ctx, dimg, nd, p.out_u16 ? H5T_NATIVE_UINT16 : H5T_NATIVE_FLOAT, t, y0, ny, W,
                                p.out_u16 ? (const void *)band16 : (const void *)band, "/image", h5path);
                st = tmd_agree(ctx, comm, st);
                if (st) break;
            }
            st = write_band(ctx, dcls, nd, H5T_NATIVE_UINT8, t, y0, ny, W, cls, "/truth/classes", h5path);
            st = tmd_agree(ctx, comm, st);
            if (st) break;
            st = append_truth(ctx, comm, h5path, ap, &truth);
            if (st) break;
            if (is_tif) {
                st = tiff_round(ctx, tif, &tmsg, path, comm, rank, nranks, nb, B, H, W, k, p.out_u16 ? 2 : 4,
                                p.out_u16 ? (const void *)band16 : (const void *)band, ny, tiff_recv);
                st = tmd_agree(ctx, comm, st);
                if (st) break;
            }
            tmd_progress_update(&prog, (double)(t * maxb + k + 1));
        }
        if (!st && is_tif && T > 1 && t + 1 < T) { /* next page */
            tmd_status lst = TMD_OK;
            if (rank == 0) {
                if (!TIFFWriteDirectory(tif)) lst = TMD_FAIL(ctx, TMD_ERR_IO, "%s: writing page %lld failed%s%s", path, (long long)t, tmsg.msg[0] ? ": " : "", tmsg.msg);
                else tiff_page_tags(tif, &p, B, t + 1);
            }
            st = tmd_agree(ctx, comm, lst);
        }
    }
    tmd_progress_end(&prog);
    if (st) goto cleanup;
    if (dimg >= 0) H5Dclose(dimg);
    if (dcls >= 0) H5Dclose(dcls);
    dimg = dcls = H5I_INVALID_HID;

    atoms_total = ap[0].size;
    for (int i = 0; i < AP_N; i++) {
        if (ap[i].d >= 0) H5Dclose(ap[i].d);
        ap[i].d = H5I_INVALID_HID;
    }
#define ROWS(name, type, n, k, data)                                              \
    do {                                                                          \
        st = tmd_writer_rows(ctx, wr, name, type, n, k, data);                    \
        if (st) goto cleanup;                                                     \
    } while (0)
    /* drift and lattice vectors: rank 0 writes all frames */
    {
        double *dr = NULL, *a1 = NULL, *a2 = NULL;
        int64_t n0 = rank == 0 ? T : 0;
        st = tmd_calloc(ctx, (void **)&dr, (size_t)T, 2 * sizeof(double), "drift rows");
        if (!st) st = tmd_calloc(ctx, (void **)&a1, (size_t)T, 2 * sizeof(double), "lattice rows");
        if (!st) st = tmd_calloc(ctx, (void **)&a2, (size_t)T, 2 * sizeof(double), "lattice rows");
        if (!st) {
            double l1x = (w.Minv[0][0] * w.b1[0] + w.Minv[0][1] * w.b1[1]) / w.px, l1y = (w.Minv[1][0] * w.b1[0] + w.Minv[1][1] * w.b1[1]) / w.px;
            double l2x = (w.Minv[0][0] * w.b2[0] + w.Minv[0][1] * w.b2[1]) / w.px, l2y = (w.Minv[1][0] * w.b2[0] + w.Minv[1][1] * w.b2[1]) / w.px;
            /* the scan's row jitter/wobble moves each row's content by -jitter in x; its mean
             * over the frame's rows (relative to frame 0's) is part of what the frame's content
             * moved: what a registration can and should measure */
            double j0 = tmd_sim_mean_row_jitter(&w, 0);
            for (int64_t t = 0; t < T; t++) {
                dr[2 * t] = w.drift[2 * t] - (t > 0 ? tmd_sim_mean_row_jitter(&w, t) - j0 : 0);
                dr[2 * t + 1] = w.drift[2 * t + 1];
                a1[2 * t] = l1x; a1[2 * t + 1] = l1y;
                a2[2 * t] = l2x; a2[2 * t + 1] = l2y;
            }
        }
        st = tmd_agree(ctx, comm, st);
        if (!st) st = tmd_writer_rows(ctx, wr, "/drift", TMD_F64, n0, 2, dr);
        if (!st) st = tmd_writer_rows(ctx, wr, "/lattice/a1", TMD_F64, n0, 2, a1);
        if (!st) st = tmd_writer_rows(ctx, wr, "/lattice/a2", TMD_F64, n0, 2, a2);
        free(dr);
        free(a1);
        free(a2);
        if (st) goto cleanup;
    }
    /* defect-rich (hot) regions whose centre lies in this rank's rows */
    reg.ctx = ctx;
    reg.w = &w;
    reg.y0 = row0;
    reg.y1 = row1;
    if (row1 > row0) {
        double sx0, sx1, sy0, sy1;
        tmd_sim_pixel_box_to_specimen(&w, 0, 0, (double)(W - 1), (double)row0, (double)(row1 - 1), 4, &sx0, &sx1, &sy0, &sy1);
        tmd_sim_regions_in_box(&w, sx0, sx1, sy0, sy1, add_region, &reg);
    }
    st = tmd_agree(ctx, comm, reg.st);
    if (st) goto cleanup;
    ROWS("/regions/id", TMD_I64, reg.n, 1, reg.id);
    ROWS("/regions/x", TMD_F64, reg.n, 1, reg.x);
    ROWS("/regions/y", TMD_F64, reg.n, 1, reg.y);
    ROWS("/regions/radius_px", TMD_F64, reg.n, 1, reg.rad);
    ROWS("/regions/area_px", TMD_F64, reg.n, 1, reg.area);
    ROWS("/regions/n_sites", TMD_I64, reg.n, 1, reg.nsites);
#undef ROWS
    st = write_attrs(ctx, wr, &p, nranks);
    if (!st) { /* peak memory of every rank, for the benchmarks (flat-memory check) */
        int64_t mine = tmd_peak_rss_bytes(), *all = NULL;
        st = tmd_calloc(ctx, (void **)&all, (size_t)nranks, sizeof *all, "peak memory table");
        st = tmd_agree(ctx, comm, st);
        if (!st) st = TMD_MPI(ctx, MPI_Allgather(&mine, 1, MPI_INT64_T, all, 1, MPI_INT64_T, comm));
        st = tmd_agree(ctx, comm, st);
        if (!st) st = tmd_writer_attr_i64(ctx, wr, "/", "peak_rss_bytes", all, nranks);
        if (!st) { /* CPU seconds each rank spent rendering (not waiting in collectives or in I/O):
                    * a throughput that does not depend on other jobs sharing the cores */
            double cpu = render_cpu;
            double *cpus = malloc((size_t)nranks * sizeof *cpus);
            st = cpus ? TMD_OK : TMD_FAIL(ctx, TMD_ERR_NOMEM, "out of memory for the CPU time table");
            st = tmd_agree(ctx, comm, st);
            if (!st) st = TMD_MPI(ctx, MPI_Allgather(&cpu, 1, MPI_DOUBLE, cpus, 1, MPI_DOUBLE, comm));
            st = tmd_agree(ctx, comm, st);
            if (!st) st = tmd_writer_attr_f64(ctx, wr, "/", "render_cpu_seconds", cpus, nranks);
            free(cpus);
        }
        if (!st) {
            int64_t mx = 0;
            for (int r = 0; r < nranks; r++) mx = all[r] > mx ? all[r] : mx;
            tmd_info(ctx, "simulate: peak memory %.1f MiB on rank 0, %.1f MiB max over %d rank(s)", (double)all[0] / 1048576.0,
                     (double)mx / 1048576.0, nranks);
        }
        free(all);
    }
    if (!st) {
        double cr = p.class_radius * w.bond / w.px;
        st = tmd_writer_attr_f64(ctx, wr, "/truth/classes", "disk_radius_px", &cr, 1);
    }
    if (st) goto cleanup;

    if (is_tif) {
        tmd_status lst = TMD_OK;
        if (rank == 0) {
            TIFF *tt = tif;
            tif = NULL;
            TIFFClose(tt); /* flushes the last directory */
            if (tmsg.msg[0]) lst = TMD_FAIL(ctx, TMD_ERR_IO, "%s: %s", path, tmsg.msg);
        }
        st = tmd_agree(ctx, comm, lst);
        if (st) goto cleanup;
    }
    if (rank == 0 && ctx->log_level >= TMD_LOG_INFO) {
        tmd_info(ctx, "simulate: wrote %s%s%s (%lld atoms, %lld defects, %lld sites)", path, is_tif ? " and " : "",
                 is_tif ? h5path : "", (long long)atoms_total, (long long)ap[AP_NATOMS].size,
                 (long long)ap[AP_NATOMS + AP_NDEF].size);
    }

cleanup:
    if (dimg >= 0) H5Dclose(dimg);
    if (dcls >= 0) H5Dclose(dcls);
    for (int i = 0; i < AP_N; i++)
        if (ap[i].d >= 0) H5Dclose(ap[i].d);
    if (wr) {
        tmd_status cst = tmd_writer_close(ctx, &wr, st == TMD_OK);
        if (!st) st = cst;
    }
    free(band);
    free(band16);
    free(cls);
    if (tif) {
        TIFFClose(tif);
        if (st) unlink(path); /* no partial image left behind */
    }
    free(tiff_recv);
    free(scratch.s);
    tmd_atom_table_free(&truth.atoms);
    tmd_defect_table_free(&truth.defects);
    tmd_site_table_free(&truth.sites);
    free(truth.site_state);
    free(truth.site_jump);
    free(reg.id);
    free(reg.x);
    free(reg.y);
    free(reg.rad);
    free(reg.area);
    free(reg.nsites);
    if (world_ok) tmd_sim_world_free(&w);
    return st;
}
