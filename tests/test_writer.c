/* Tests of the parallel HDF5 result writer (tmd_writer_*) and the serial read-back helpers.
 * TMD_TEST_RANKS: 1 2 4
 * TMD_TEST_TIMEOUT: 120
 *
 * What this proves, at 1, 2 and 4 ranks:
 * - rows from every rank land in one dataset in rank order (offsets by MPI_Exscan), with uneven
 *   counts including ranks that hold zero rows, for 1-D columns and N x K columns of every type;
 * - a dataset with zero rows in total is created and reads back as shape (0,);
 * - N-d boxes (tmd_writer_array) assemble into the global array, with given and default chunks;
 * - string (variable-length UTF-8), float64 and int64 attributes round-trip, replace, and can
 *   be put on a group that did not exist;
 * - the file is written as PATH.tmp and appears as PATH only after a successful close;
 * - a failure on one rank (bad argument, failed close) reaches every rank with the same message,
 *   leaves neither PATH nor PATH.tmp, and nothing hangs;
 * - an existing result is refused without force (TMD_ERR_EXISTS, message names it) and replaced
 *   with force; an unwritable location is an error naming the path.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"
#include "tmd/io.h"

static int exists(const char *p) { return access(p, F_OK) == 0; }

/* Rows held by rank r: uneven, rank 1 holds none. */
static int64_t rows_of(int r) { return r == 1 ? 0 : 3 + (r * 37) % 11; }

static int64_t offset_of(int r)
{
    int64_t o = 0;
    for (int i = 0; i < r; i++) o += rows_of(i);
    return o;
}

static void test_rows_roundtrip(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    const char *path = tmd_test_path("rows.h5");
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int r = tmd_test_rank;
    int64_t n = rows_of(r), off = offset_of(r), total = offset_of(tmd_test_size);
    enum { K = 6 };
    double *x = calloc((size_t)n + 1, sizeof *x);
    int8_t *sp = calloc((size_t)n + 1, 1);
    float *prob = calloc((size_t)(n * K) + 1, sizeof *prob);
    int64_t *site = calloc((size_t)n + 1, sizeof *site);
    int32_t *fr = calloc((size_t)n + 1, sizeof *fr);
    for (int64_t i = 0; i < n; i++) {
        int64_t g = off + i;
        x[i] = 0.5 * (double)g + 0.25;
        sp[i] = (int8_t)(g % 8);
        site[i] = g * 1000003LL - 7;
        fr[i] = (int32_t)(g / 3);
        for (int k = 0; k < K; k++) prob[i * K + k] = (float)g + 0.125f * (float)k;
    }
    tmd_writer *w = NULL;
    CU_ASSERT_EQUAL_FATAL(tmd_writer_create(&ctx, path, 1, tmd_test_comm, &w), TMD_OK);
    MPI_Barrier(tmd_test_comm);
    /* While open: only the .tmp exists. */
    CU_ASSERT_TRUE(exists(tmp));
    CU_ASSERT_FALSE(exists(path));
    tmd_status st = tmd_writer_rows(&ctx, w, "/atoms/x", TMD_F64, n, 1, x);
    CU_ASSERT_EQUAL(st, TMD_OK);
    if (!st) st = tmd_writer_rows(&ctx, w, "/atoms/species", TMD_I8, n, 1, sp);
    if (!st) st = tmd_writer_rows(&ctx, w, "/atoms/prob", TMD_F32, n, K, prob);
    if (!st) st = tmd_writer_rows(&ctx, w, "/atoms/site", TMD_I64, n, 1, site);
    if (!st) st = tmd_writer_rows(&ctx, w, "/atoms/frame", TMD_I32, n, 1, fr);
    /* Zero rows everywhere. */
    if (!st) st = tmd_writer_rows(&ctx, w, "/defects/x", TMD_F64, 0, 1, NULL);
    if (!st) st = tmd_writer_rows(&ctx, w, "/features/latent", TMD_F32, 0, 16, NULL);
    CU_ASSERT_EQUAL(st, TMD_OK);
    if (st) fprintf(stderr, "rank %d: %s\n", r, ctx.err_msg);
    st = tmd_writer_close(&ctx, &w, st == TMD_OK);
    CU_ASSERT_EQUAL(st, TMD_OK);
    CU_ASSERT_PTR_NULL(w);
    /* Close returns after the rename on every rank. */
    CU_ASSERT_TRUE(exists(path));
    CU_ASSERT_FALSE(exists(tmp));

    if (r == 0) {
        hid_t f = H5I_INVALID_HID;
        CU_ASSERT_EQUAL_FATAL(tmd_h5_open_read(&ctx, path, &f), TMD_OK);
        int64_t nr = -1, nc = -1;
        double *rx = NULL;
        CU_ASSERT_EQUAL(tmd_h5_read_rows(&ctx, f, "/atoms/x", TMD_F64, &nr, &nc, (void **)&rx), TMD_OK);
        CU_ASSERT_EQUAL(nr, total);
        CU_ASSERT_EQUAL(nc, 1);
        int bad = 0;
        for (int64_t g = 0; rx && g < nr; g++) bad += rx[g] != 0.5 * (double)g + 0.25;
        CU_ASSERT_EQUAL(bad, 0);
        free(rx);
        float *rp = NULL;
        CU_ASSERT_EQUAL(tmd_h5_read_rows(&ctx, f, "/atoms/prob", TMD_F32, &nr, &nc, (void **)&rp), TMD_OK);
        CU_ASSERT_EQUAL(nr, total);
        CU_ASSERT_EQUAL(nc, K);
        bad = 0;
        for (int64_t g = 0; rp && g < nr; g++)
            for (int k = 0; k < K; k++) bad += rp[g * K + k] != (float)g + 0.125f * (float)k;
        CU_ASSERT_EQUAL(bad, 0);
        free(rp);
        int8_t *rs = NULL;
        CU_ASSERT_EQUAL(tmd_h5_read_rows(&ctx, f, "/atoms/species", TMD_I8, &nr, &nc, (void **)&rs), TMD_OK);
        bad = 0;
        for (int64_t g = 0; rs && g < nr; g++) bad += rs[g] != (int8_t)(g % 8);
        CU_ASSERT_EQUAL(bad, 0);
        free(rs);
        int64_t *ri = NULL;
        CU_ASSERT_EQUAL(tmd_h5_read_rows(&ctx, f, "/atoms/site", TMD_I64, &nr, &nc, (void **)&ri), TMD_OK);
        bad = 0;
        for (int64_t g = 0; ri && g < nr; g++) bad += ri[g] != g * 1000003LL - 7;
        CU_ASSERT_EQUAL(bad, 0);
        free(ri);
        int32_t *rf = NULL;
        CU_ASSERT_EQUAL(tmd_h5_read_rows(&ctx, f, "/atoms/frame", TMD_I32, &nr, &nc, (void **)&rf), TMD_OK);
        bad = 0;
        for (int64_t g = 0; rf && g < nr; g++) bad += rf[g] != (int32_t)(g / 3);
        CU_ASSERT_EQUAL(bad, 0);
        free(rf);
        /* Zero-row datasets exist with shape (0,) and (0, 16). */
        void *z = NULL;
        CU_ASSERT_EQUAL(tmd_h5_read_rows(&ctx, f, "/defects/x", TMD_F64, &nr, &nc, &z), TMD_OK);
        CU_ASSERT_EQUAL(nr, 0);
        free(z);
        z = NULL;
        CU_ASSERT_EQUAL(tmd_h5_read_rows(&ctx, f, "/features/latent", TMD_F32, &nr, &nc, &z), TMD_OK);
        CU_ASSERT_EQUAL(nr, 0);
        CU_ASSERT_EQUAL(nc, 16);
        free(z);
        /* Chunked storage, chunk rows > 0. */
        hid_t d = H5Dopen2(f, "/atoms/x", H5P_DEFAULT), pl = H5Dget_create_plist(d);
        CU_ASSERT_EQUAL(H5Pget_layout(pl), H5D_CHUNKED);
        hsize_t ch = 0;
        H5Pget_chunk(pl, 1, &ch);
        CU_ASSERT_TRUE(ch >= 1 && ch <= (hsize_t)total);
        H5Pclose(pl);
        H5Dclose(d);
        /* An empty dataset: chunk of 1 row, unlimited maximum, shape (0,). */
        d = H5Dopen2(f, "/defects/x", H5P_DEFAULT);
        pl = H5Dget_create_plist(d);
        ch = 0;
        H5Pget_chunk(pl, 1, &ch);
        CU_ASSERT_EQUAL(ch, 1);
        hid_t sp = H5Dget_space(d);
        hsize_t cur = 9, mx = 0;
        H5Sget_simple_extent_dims(sp, &cur, &mx);
        CU_ASSERT_EQUAL(cur, 0);
        CU_ASSERT_EQUAL(mx, H5S_UNLIMITED);
        H5Sclose(sp);
        H5Pclose(pl);
        H5Dclose(d);
        /* A missing dataset is an error naming it. */
        tmd_ctx c2;
        tmd_test_ctx(&c2);
        CU_ASSERT_NOT_EQUAL(tmd_h5_read_rows(&c2, f, "/atoms/nothere", TMD_F64, &nr, &nc, &z), TMD_OK);
        CU_ASSERT_PTR_NOT_NULL(strstr(c2.err_msg, "/atoms/nothere"));
        CU_ASSERT_EQUAL(tmd_h5_exists(f, "/atoms/x"), 1);
        CU_ASSERT_EQUAL(tmd_h5_exists(f, "/nope/x"), 0);
        H5Fclose(f);
    }
    free(x);
    free(sp);
    free(prob);
    free(site);
    free(fr);
    MPI_Barrier(tmd_test_comm);
}

static void test_array_boxes(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    const char *path = tmd_test_path("array.h5");
    const int64_t T = 3, H = 37, W = 29;
    /* Split rows unevenly (boundaries H*r^2/(P-1)^2); with P > 1 the last rank holds nothing. */
    int r = tmd_test_rank, P = tmd_test_size;
    int64_t a = 0, b = H;
    if (P > 1) {
        int64_t q = (int64_t)(P - 1) * (P - 1);
        a = r == P - 1 ? H : H * r * r / q;
        b = r == P - 1 ? H : H * (r + 1) * (r + 1) / q;
    }
    int64_t dims[3] = {T, H, W}, start[3] = {0, a, 0}, count[3] = {T, b - a, W}, chunk[3] = {1, 16, 16};
    uint8_t *box = calloc((size_t)(T * (b - a) * W) + 1, 1);
    float *fbox = calloc((size_t)(T * (b - a) * W) + 1, sizeof(float));
    for (int64_t t = 0; t < T; t++)
        for (int64_t y = a; y < b; y++)
            for (int64_t x = 0; x < W; x++) {
                size_t i = (size_t)((t * (b - a) + (y - a)) * W + x);
                box[i] = (uint8_t)((t * 7 + y * 3 + x) % 251);
                fbox[i] = (float)(t * 10000 + y * 100 + x);
            }
    tmd_writer *w = NULL;
    CU_ASSERT_EQUAL_FATAL(tmd_writer_create(&ctx, path, 1, tmd_test_comm, &w), TMD_OK);
    tmd_status st = tmd_writer_array(&ctx, w, "/segmentation/classes", TMD_U8, 3, dims, start, count, chunk, box);
    CU_ASSERT_EQUAL(st, TMD_OK);
    if (!st) st = tmd_writer_array(&ctx, w, "/maps/test", TMD_F32, 3, dims, start, count, NULL, fbox);
    CU_ASSERT_EQUAL(st, TMD_OK);
    if (st) fprintf(stderr, "rank %d: %s\n", r, ctx.err_msg);
    CU_ASSERT_EQUAL(tmd_writer_close(&ctx, &w, st == TMD_OK), TMD_OK);
    if (r == 0) {
        hid_t f = H5I_INVALID_HID;
        CU_ASSERT_EQUAL_FATAL(tmd_h5_open_read(&ctx, path, &f), TMD_OK);
        int nd = 0;
        int64_t d[4];
        CU_ASSERT_EQUAL(tmd_h5_dims(&ctx, f, "/segmentation/classes", &nd, d), TMD_OK);
        CU_ASSERT_EQUAL(nd, 3);
        CU_ASSERT_TRUE(d[0] == T && d[1] == H && d[2] == W);
        uint8_t *all = calloc((size_t)(T * H * W), 1);
        float *fall = calloc((size_t)(T * H * W), sizeof(float));
        int64_t s0[3] = {0, 0, 0};
        CU_ASSERT_EQUAL(tmd_h5_read_box(&ctx, f, "/segmentation/classes", TMD_U8, s0, dims, all), TMD_OK);
        CU_ASSERT_EQUAL(tmd_h5_read_box(&ctx, f, "/maps/test", TMD_F32, s0, dims, fall), TMD_OK);
        int bad = 0;
        for (int64_t t = 0; t < T; t++)
            for (int64_t y = 0; y < H; y++)
                for (int64_t x = 0; x < W; x++) {
                    size_t i = (size_t)((t * H + y) * W + x);
                    bad += all[i] != (uint8_t)((t * 7 + y * 3 + x) % 251);
                    bad += fall[i] != (float)(t * 10000 + y * 100 + x);
                }
        CU_ASSERT_EQUAL(bad, 0);
        /* A box read in the middle. */
        int64_t bs[3] = {1, 5, 7}, bc[3] = {2, 3, 4};
        float sub[24];
        CU_ASSERT_EQUAL(tmd_h5_read_box(&ctx, f, "/maps/test", TMD_F32, bs, bc, sub), TMD_OK);
        CU_ASSERT_EQUAL(sub[0], 10000.0f + 500 + 7);
        CU_ASSERT_EQUAL(sub[23], 20000.0f + 700 + 10);
        free(all);
        free(fall);
        H5Fclose(f);
    }
    free(box);
    free(fbox);
    MPI_Barrier(tmd_test_comm);
}

static void test_attributes(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    const char *path = tmd_test_path("attrs.h5");
    /* A long configuration text with non-ASCII characters. */
    size_t cn = 20000;
    char *config = malloc(cn + 1);
    for (size_t i = 0; i < cn; i++) config[i] = (char)('a' + i % 26);
    for (size_t i = 80; i < cn; i += 81) config[i] = '\n';
    memcpy(config, "unit = \xC3\x85\n", 10);
    config[cn] = 0;
    tmd_writer *w = NULL;
    CU_ASSERT_EQUAL_FATAL(tmd_writer_create(&ctx, path, 1, tmd_test_comm, &w), TMD_OK);
    double px = 0.125, v3[3] = {1.5, -2.5, 3.0};
    int64_t ranks = tmd_test_size, i2[2] = {-5, 1LL << 40};
    tmd_status st = tmd_writer_attr_str(&ctx, w, "/", "tmdflow_version", "old");
    if (!st) st = tmd_writer_attr_str(&ctx, w, "/", "tmdflow_version", TMD_VERSION); /* replaces */
    if (!st) st = tmd_writer_attr_str(&ctx, w, "/", "config", config);
    if (!st) st = tmd_writer_attr_f64(&ctx, w, "/", "pixel_size", &px, 1);
    if (!st) st = tmd_writer_attr_i64(&ctx, w, "/", "ranks", &ranks, 1);
    if (!st) st = tmd_writer_attr_f64(&ctx, w, "/maps/unstable_density", "bin_px", v3, 3); /* new group */
    if (!st) st = tmd_writer_attr_i64(&ctx, w, "/maps", "pair", i2, 2);
    CU_ASSERT_EQUAL(st, TMD_OK);
    if (st) fprintf(stderr, "rank %d: %s\n", tmd_test_rank, ctx.err_msg);
    CU_ASSERT_EQUAL(tmd_writer_close(&ctx, &w, st == TMD_OK), TMD_OK);
    if (tmd_test_rank == 0) {
        hid_t f = H5I_INVALID_HID;
        CU_ASSERT_EQUAL_FATAL(tmd_h5_open_read(&ctx, path, &f), TMD_OK);
        char *s = NULL;
        CU_ASSERT_EQUAL(tmd_h5_read_attr_str(&ctx, f, "/", "tmdflow_version", &s), TMD_OK);
        CU_ASSERT_STRING_EQUAL(s ? s : "", TMD_VERSION);
        free(s);
        s = NULL;
        CU_ASSERT_EQUAL(tmd_h5_read_attr_str(&ctx, f, "/", "config", &s), TMD_OK);
        CU_ASSERT_TRUE(s && strcmp(s, config) == 0);
        free(s);
        double rpx = 0, r3[3] = {0};
        CU_ASSERT_EQUAL(tmd_h5_read_attr_f64(&ctx, f, "/", "pixel_size", &rpx, 1), TMD_OK);
        CU_ASSERT_EQUAL(rpx, 0.125);
        CU_ASSERT_EQUAL(tmd_h5_read_attr_f64(&ctx, f, "/maps/unstable_density", "bin_px", r3, 3), TMD_OK);
        CU_ASSERT_TRUE(r3[0] == 1.5 && r3[1] == -2.5 && r3[2] == 3.0);
        int64_t rr = 0, ri2[2] = {0};
        CU_ASSERT_EQUAL(tmd_h5_read_attr_i64(&ctx, f, "/", "ranks", &rr, 1), TMD_OK);
        CU_ASSERT_EQUAL(rr, tmd_test_size);
        CU_ASSERT_EQUAL(tmd_h5_read_attr_i64(&ctx, f, "/maps", "pair", ri2, 2), TMD_OK);
        CU_ASSERT_TRUE(ri2[0] == -5 && ri2[1] == (1LL << 40));
        /* The string is a variable-length UTF-8 string (what h5py returns as str). */
        hid_t a = H5Aopen_by_name(f, "/", "config", H5P_DEFAULT, H5P_DEFAULT), t = H5Aget_type(a);
        CU_ASSERT_TRUE(H5Tis_variable_str(t) > 0);
        CU_ASSERT_EQUAL(H5Tget_cset(t), H5T_CSET_UTF8);
        H5Tclose(t);
        H5Aclose(a);
        /* Missing attribute: error naming it. */
        tmd_ctx c2;
        tmd_test_ctx(&c2);
        CU_ASSERT_NOT_EQUAL(tmd_h5_read_attr_f64(&c2, f, "/", "nothere", &rpx, 1), TMD_OK);
        CU_ASSERT_PTR_NOT_NULL(strstr(c2.err_msg, "nothere"));
        H5Fclose(f);
    }
    free(config);
    MPI_Barrier(tmd_test_comm);
}

static void test_failure_on_one_rank(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    const char *path = tmd_test_path("fail.h5");
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int last = tmd_test_size - 1;
    double v[4] = {1, 2, 3, 4};
    tmd_writer *w = NULL;
    CU_ASSERT_EQUAL_FATAL(tmd_writer_create(&ctx, path, 1, tmd_test_comm, &w), TMD_OK);
    tmd_status st = tmd_writer_rows(&ctx, w, "/atoms/x", TMD_F64, 4, 1, v);
    CU_ASSERT_EQUAL(st, TMD_OK);
    /* The last rank passes an invalid row count: every rank must get the error. */
    st = tmd_writer_rows(&ctx, w, "/atoms/y", TMD_F64, tmd_test_rank == last ? -3 : 4, 1, v);
    CU_ASSERT_EQUAL(st, TMD_ERR_ARG);
    CU_ASSERT_PTR_NOT_NULL(strstr(ctx.err_msg, "/atoms/y"));
    CU_ASSERT_EQUAL(ctx.err_rank, last);
    st = tmd_writer_close(&ctx, &w, st == TMD_OK);
    CU_ASSERT_EQUAL(st, TMD_ERR_ARG);
    CU_ASSERT_FALSE(exists(path));
    CU_ASSERT_FALSE(exists(tmp));

    /* Ranks disagree on the column count: refused everywhere, no hang. */
    tmd_test_ctx(&ctx);
    CU_ASSERT_EQUAL_FATAL(tmd_writer_create(&ctx, path, 1, tmd_test_comm, &w), TMD_OK);
    if (tmd_test_size > 1) {
        st = tmd_writer_rows(&ctx, w, "/atoms/prob", TMD_F64, 1, tmd_test_rank == last ? 4 : 2, v);
        CU_ASSERT_EQUAL(st, TMD_ERR_ARG);
    } else {
        st = TMD_OK;
    }
    /* Only the last rank says the run failed: nothing is published. */
    tmd_test_ctx(&ctx);
    if (tmd_test_rank == last) TMD_FAIL(&ctx, TMD_ERR_FORMAT, "rank %d: simulated stage failure", last);
    st = tmd_writer_close(&ctx, &w, tmd_test_rank != last);
    CU_ASSERT_EQUAL(st, TMD_ERR_FORMAT);
    CU_ASSERT_PTR_NOT_NULL(strstr(ctx.err_msg, "simulated stage failure"));
    CU_ASSERT_FALSE(exists(path));
    CU_ASSERT_FALSE(exists(tmp));
    MPI_Barrier(tmd_test_comm);
}

static void test_exists_and_force(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    const char *path = tmd_test_path("exists.h5");
    double one = 1.0, two = 2.0;
    tmd_writer *w = NULL;
    CU_ASSERT_EQUAL_FATAL(tmd_writer_create(&ctx, path, 0, tmd_test_comm, &w), TMD_OK);
    CU_ASSERT_EQUAL(tmd_writer_attr_f64(&ctx, w, "/", "pixel_size", &one, 1), TMD_OK);
    CU_ASSERT_EQUAL(tmd_writer_close(&ctx, &w, 1), TMD_OK);
    /* Again without force: refused on every rank, file untouched. */
    tmd_status st = tmd_writer_create(&ctx, path, 0, tmd_test_comm, &w);
    CU_ASSERT_EQUAL(st, TMD_ERR_EXISTS);
    CU_ASSERT_PTR_NULL(w);
    CU_ASSERT_PTR_NOT_NULL(strstr(ctx.err_msg, path));
    CU_ASSERT_PTR_NOT_NULL(strstr(ctx.err_msg, "--force"));
    /* With force: replaced. */
    tmd_test_ctx(&ctx);
    CU_ASSERT_EQUAL_FATAL(tmd_writer_create(&ctx, path, 1, tmd_test_comm, &w), TMD_OK);
    CU_ASSERT_EQUAL(tmd_writer_attr_f64(&ctx, w, "/", "pixel_size", &two, 1), TMD_OK);
    CU_ASSERT_EQUAL(tmd_writer_close(&ctx, &w, 1), TMD_OK);
    if (tmd_test_rank == 0) {
        hid_t f = H5I_INVALID_HID;
        double v = 0;
        CU_ASSERT_EQUAL_FATAL(tmd_h5_open_read(&ctx, path, &f), TMD_OK);
        CU_ASSERT_EQUAL(tmd_h5_read_attr_f64(&ctx, f, "/", "pixel_size", &v, 1), TMD_OK);
        CU_ASSERT_EQUAL(v, 2.0);
        H5Fclose(f);
    }
    /* A directory that does not exist: an error naming the path on every rank. */
    tmd_test_ctx(&ctx);
    const char *bad = tmd_test_path("no/such/dir/r.h5");
    st = tmd_writer_create(&ctx, bad, 1, tmd_test_comm, &w);
    CU_ASSERT_EQUAL(st, TMD_ERR_IO);
    CU_ASSERT_PTR_NULL(w);
    CU_ASSERT_PTR_NOT_NULL(strstr(ctx.err_msg, "no/such/dir/r.h5"));
    /* Closing a NULL writer is harmless. */
    CU_ASSERT_EQUAL(tmd_writer_close(&ctx, &w, 1), TMD_OK);
    MPI_Barrier(tmd_test_comm);
}

int main(int argc, char **argv)
{
    return tmd_test_main(argc, argv, "writer",
                         (tmd_test_case[]){{"rows round-trip, uneven and zero counts", test_rows_roundtrip},
                                           {"N-d boxes assemble", test_array_boxes},
                                           {"attributes round-trip", test_attributes},
                                           {"failure on one rank: no file, no hang", test_failure_on_one_rank},
                                           {"exists without force; unwritable path", test_exists_and_force},
                                           {0}});
}
