/* tmdflow info FILE — what a file holds.
 *
 * An image input (TIFF, BigTIFF, multi-page stack, "FILE.h5:/dataset"): format, frames, size,
 * sample type, layout (strips/tiles, compression), pixel size if the metadata has it.
 * An HDF5 file (result, simulation, EMD): every group and dataset with its shape and type, the
 * root attributes (long text such as the configuration shortened), the row counts of the
 * result groups, and, if it holds an image dataset, that image's description as above.
 * Rank 0 reads and prints; every rank returns the same status. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "tmd/io.h"

static void usage(void)
{
    printf("usage: tmdflow info FILE\n"
           "  FILE: a TIFF/BigTIFF image or stack, an HDF5 file (result, simulation, EMD), or FILE.h5:/dataset\n"
           "  Prints what the file holds: for images frames, size, sample type, layout and pixel size;\n"
           "  for HDF5 files the groups, datasets (shape, type), root attributes and counts.\n");
}

static void print_image(const char *spec, const tmd_image_info *in)
{
    printf("input:       %s\n", spec);
    printf("format:      %s\n", in->format);
    printf("frames:      %lld\n", (long long)in->frames);
    printf("size:        %lld x %lld (height x width)\n", (long long)in->height, (long long)in->width);
    printf("sample type: %s\n", tmd_dtype_name(in->sample));
    printf("layout:      %s\n", in->layout);
    if (in->pixel_size > 0) printf("pixel size:  %.6g A (from the file's metadata)\n", in->pixel_size);
    else printf("pixel size:  unknown (give --pixel-size, or the lattice stage measures it)\n");
}

/* "uint16", "float32", "string", ... for an HDF5 datatype. */
static void type_name(hid_t t, char *buf, size_t n)
{
    H5T_class_t c = H5Tget_class(t);
    size_t sz = H5Tget_size(t);
    switch (c) {
    case H5T_INTEGER: snprintf(buf, n, "%sint%zu", H5Tget_sign(t) == H5T_SGN_NONE ? "u" : "", sz * 8); break;
    case H5T_FLOAT: snprintf(buf, n, "float%zu", sz * 8); break;
    case H5T_STRING: snprintf(buf, n, "string"); break;
    case H5T_COMPOUND: snprintf(buf, n, "compound"); break;
    case H5T_ENUM: snprintf(buf, n, "enum"); break;
    case H5T_ARRAY: snprintf(buf, n, "array"); break;
    case H5T_VLEN: snprintf(buf, n, "vlen"); break;
    default: snprintf(buf, n, "other"); break;
    }
}

static void shape_text(hid_t space, char *buf, size_t n)
{
    int nd = H5Sget_simple_extent_ndims(space);
    hsize_t d[H5S_MAX_RANK];
    if (nd <= 0) {
        snprintf(buf, n, "scalar");
        return;
    }
    H5Sget_simple_extent_dims(space, d, NULL);
    size_t len = 0;
    buf[0] = 0;
    for (int i = 0; i < nd && len + 24 < n; i++)
        len += (size_t)snprintf(buf + len, n - len, "%s%llu", i ? " x " : "", (unsigned long long)d[i]);
}

static herr_t visit_cb(hid_t obj, const char *name, const H5O_info_t *info, void *data)
{
    (void)data;
    if (!strcmp(name, ".")) return 0;
    if (info->type == H5O_TYPE_GROUP) {
        printf("  /%s/\n", name);
    } else if (info->type == H5O_TYPE_DATASET) {
        hid_t d = H5Dopen2(obj, name, H5P_DEFAULT);
        if (d < 0) {
            printf("  /%s  (unreadable)\n", name);
            return 0;
        }
        hid_t t = H5Dget_type(d), s = H5Dget_space(d), pl = H5Dget_create_plist(d);
        char tn[32], sh[128], ch[96] = "";
        type_name(t, tn, sizeof tn);
        shape_text(s, sh, sizeof sh);
        if (pl >= 0 && H5Pget_layout(pl) == H5D_CHUNKED) {
            hsize_t c[H5S_MAX_RANK];
            int nd = H5Pget_chunk(pl, H5S_MAX_RANK, c);
            size_t len = (size_t)snprintf(ch, sizeof ch, ", chunks ");
            for (int i = 0; i < nd && len + 24 < sizeof ch; i++)
                len += (size_t)snprintf(ch + len, sizeof ch - len, "%s%llu", i ? "x" : "", (unsigned long long)c[i]);
        }
        printf("  /%-28s %-8s %s%s\n", name, tn, sh, ch);
        if (pl >= 0) H5Pclose(pl);
        H5Sclose(s);
        H5Tclose(t);
        H5Dclose(d);
    }
    return 0;
}

/* Prints one attribute: numbers in full (up to 8), strings shortened to their first line. */
static herr_t attr_cb(hid_t loc, const char *name, const H5A_info_t *ainfo, void *data)
{
    (void)ainfo; (void)data;
    hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
    if (a < 0) return 0;
    hid_t t = H5Aget_type(a), s = H5Aget_space(a);
    H5T_class_t c = H5Tget_class(t);
    hssize_t np = H5Sget_simple_extent_npoints(s);
    printf("  %-18s ", name);
    if (c == H5T_STRING && np == 1) {
        char *v = NULL;
        if (H5Tis_variable_str(t) > 0) {
            hid_t mt = H5Tcopy(H5T_C_S1);
            H5Tset_size(mt, H5T_VARIABLE);
            H5Tset_cset(mt, H5Tget_cset(t));
            char *tmp = NULL;
            if (H5Aread(a, mt, &tmp) >= 0 && tmp) {
                v = strdup(tmp);
                H5free_memory(tmp);
            }
            H5Tclose(mt);
        } else {
            size_t n = H5Tget_size(t);
            v = calloc(1, n + 1);
            if (v && H5Aread(a, t, v) < 0) v[0] = 0;
        }
        if (v) {
            size_t len = strlen(v), lines = 0;
            for (size_t i = 0; i < len; i++) lines += v[i] == '\n';
            char *nl = strchr(v, '\n');
            size_t first = nl ? (size_t)(nl - v) : len;
            if (first > 70) first = 70;
            if (first < len)
                printf("\"%.*s...\" (%zu characters, %zu lines)\n", (int)first, v, len, lines + (v[len - 1] != '\n'));
            else
                printf("\"%s\"\n", v);
            free(v);
        } else {
            printf("(unreadable string)\n");
        }
    } else if ((c == H5T_INTEGER || c == H5T_FLOAT) && np >= 1) {
        double vals[8];
        hssize_t show = np < 8 ? np : 8;
        double *buf = malloc(sizeof(double) * (size_t)np);
        if (buf && H5Aread(a, H5T_NATIVE_DOUBLE, buf) >= 0) {
            memcpy(vals, buf, sizeof(double) * (size_t)show);
            for (hssize_t i = 0; i < show; i++) printf("%s%.10g", i ? ", " : "", vals[i]);
            if (np > show) printf(", ... (%lld values)", (long long)np);
            printf("\n");
        } else {
            printf("(unreadable)\n");
        }
        free(buf);
    } else {
        char tn[32];
        type_name(t, tn, sizeof tn);
        printf("(%s, %lld values)\n", tn, (long long)np);
    }
    H5Sclose(s);
    H5Tclose(t);
    H5Aclose(a);
    return 0;
}

static int64_t rows_of(hid_t f, const char *dset)
{
    if (!tmd_h5_exists(f, dset)) return -1;
    hid_t d = H5Dopen2(f, dset, H5P_DEFAULT);
    if (d < 0) return -1;
    hid_t s = H5Dget_space(d);
    hsize_t dims[H5S_MAX_RANK] = {0};
    int nd = H5Sget_simple_extent_ndims(s);
    if (nd > 0) H5Sget_simple_extent_dims(s, dims, NULL);
    H5Sclose(s);
    H5Dclose(d);
    return nd > 0 ? (int64_t)dims[0] : 1;
}

static tmd_status info_hdf5(tmd_ctx *ctx, const char *path)
{
    hid_t f = H5I_INVALID_HID;
    TMD_CHECK(tmd_h5_open_read(ctx, path, &f));
    printf("file:        %s\n", path);
    printf("format:      HDF5\n");
    printf("contents:\n");
    H5Ovisit2(f, H5_INDEX_NAME, H5_ITER_INC, visit_cb, NULL, H5O_INFO_BASIC);
    H5O_info_t oi;
    if (H5Oget_info2(f, &oi, H5O_INFO_NUM_ATTRS) >= 0 && oi.num_attrs > 0) {
        printf("root attributes:\n");
        hsize_t idx = 0;
        H5Aiterate2(f, H5_INDEX_NAME, H5_ITER_INC, &idx, attr_cb, NULL);
    }
    /* Counts of the result / truth groups (DESIGN.md layout). */
    static const struct {
        const char *label, *dset;
    } counts[] = {{"atoms", "/atoms/x"},     {"defects", "/defects/x"}, {"sites", "/sites/x"},
                  {"regions", "/regions/id"}, {"frames (drift)", "/drift"}};
    int any = 0;
    for (size_t i = 0; i < sizeof counts / sizeof counts[0]; i++) {
        int64_t n = rows_of(f, counts[i].dset);
        if (n < 0) continue;
        if (!any) printf("counts:\n");
        any = 1;
        printf("  %-18s %lld\n", counts[i].label, (long long)n);
    }
    if (tmd_h5_exists(f, "/sites/unstable")) {
        int64_t nr = 0, nc = 0;
        int8_t *u = NULL;
        if (tmd_h5_read_rows(ctx, f, "/sites/unstable", TMD_I8, &nr, &nc, (void **)&u) == TMD_OK) {
            int64_t k = 0;
            for (int64_t i = 0; i < nr; i++) k += u[i] != 0;
            printf("  %-18s %lld\n", "unstable sites", (long long)k);
        }
        free(u);
        tmd_error_clear(ctx);
    }
    H5Fclose(f);
    return TMD_OK;
}

tmd_status tmd_cmd_info(tmd_ctx *ctx, MPI_Comm comm, int argc, char **argv)
{
    tmd_status st = TMD_OK;
    const char *file = NULL;
    for (int i = 1; i < argc && !st; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            if (ctx->rank == 0) usage();
            return TMD_OK;
        }
        if (argv[i][0] == '-' && argv[i][1]) st = TMD_FAIL(ctx, TMD_ERR_ARG, "info: unknown option %s", argv[i]);
        else if (file) st = TMD_FAIL(ctx, TMD_ERR_ARG, "info: one file at a time (got %s and %s)", file, argv[i]);
        else file = argv[i];
    }
    if (!st && !file) st = TMD_FAIL(ctx, TMD_ERR_ARG, "info: which file? usage: tmdflow info FILE");
    if (!st && ctx->rank == 0) {
        H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
        /* HDF5 files without a dataset path: the whole file (and its image, if any). */
        int whole_h5 = !strstr(file, ":/") && H5Fis_hdf5(file) > 0;
        if (whole_h5) {
            st = info_hdf5(ctx, file);
            if (!st) {
                tmd_ctx quiet = *ctx;
                tmd_error_clear(&quiet);
                tmd_reader *r = NULL;
                if (tmd_reader_open(&quiet, file, &r) == TMD_OK) {
                    printf("image dataset:\n");
                    print_image(file, tmd_reader_info(r));
                    tmd_reader_close(&r);
                } /* else: a result file, no image to describe */
            }
        } else {
            tmd_reader *r = NULL;
            st = tmd_reader_open(ctx, file, &r);
            if (!st) {
                print_image(file, tmd_reader_info(r));
                tmd_reader_close(&r);
            }
        }
        fflush(stdout);
    }
    return tmd_agree(ctx, comm, st);
}
