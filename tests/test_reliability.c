/* Reliability: regression tests for bugs that fuzzing found (tests/fuzz/, docs/reliability.md).
 * Each case names the harness and the reproducer it came from. Serial (parsers are per rank). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hdf5.h>

#include "testutil.h"

#include "tmd/config.h"
#include "tmd/io.h"

/* fuzz_config, crash-94bfd7ea: "classifier_model =;a" was accepted, but the configuration
 * text written to the result file ("classifier_model = ;a") reads back as an empty value
 * (inih takes "; a" for a comment). Values that cannot round-trip are refused now. */
static void test_config_string_values_round_trip_or_are_refused(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    tmd_config cfg;
    tmd_config_defaults(&cfg);
    CU_ASSERT_EQUAL(tmd_config_from_text(&ctx, &cfg, "classifier_model =;a\n", "x.ini"), TMD_ERR_CONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(ctx.err_msg, "x.ini:1"));
    CU_ASSERT_PTR_NOT_NULL(strstr(ctx.err_msg, "comment"));
    tmd_error_clear(&ctx);
    /* a line break in a command-line value would inject a second key into the config text */
    CU_ASSERT_EQUAL(tmd_config_set(&ctx, &cfg, "unet_model", "a.h5\ntile = 64", "command line"), TMD_ERR_CONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(ctx.err_msg, "control character"));
    tmd_error_clear(&ctx);
    /* a ';' inside a name is fine and survives */
    CU_ASSERT_EQUAL(tmd_config_set(&ctx, &cfg, "unet_model", "run;3/unet.h5", "command line"), TMD_OK);
    char *text = NULL;
    CU_ASSERT_EQUAL(tmd_config_to_text(&ctx, &cfg, &text), TMD_OK);
    tmd_config back;
    tmd_config_defaults(&back);
    CU_ASSERT_EQUAL(tmd_config_from_text(&ctx, &back, text, "round trip"), TMD_OK);
    CU_ASSERT_STRING_EQUAL(back.unet_model, "run;3/unet.h5");
    free(text);
}

/* inih reads lines into a 200-byte buffer and parsed the rest of a longer line as a line of
 * its own: a long model path could smuggle in "tile=99". Long lines are whole values now,
 * and long paths survive the round trip through the config attribute. */
static void test_config_long_lines_are_not_split(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    tmd_config cfg;
    tmd_config_defaults(&cfg);
    char line[700];
    int n = snprintf(line, sizeof line, "unet_model = /");
    memset(line + n, 'a', 190);
    snprintf(line + n + 190, sizeof line - (size_t)n - 190, "tile=99\n[atoms]\n atom_threshold = 0.4 ; comment\n");
    CU_ASSERT_EQUAL(tmd_config_from_text(&ctx, &cfg, line, "long.ini"), TMD_OK);
    CU_ASSERT_EQUAL(cfg.tile, 384);
    CU_ASSERT_EQUAL(strlen(cfg.unet_model), 198u);
    CU_ASSERT_DOUBLE_EQUAL(cfg.atom_threshold, 0.4, 1e-12);

    /* a 600-character path, written to the config text and read back */
    char path[601];
    memset(path, 'b', 600);
    path[0] = '/';
    path[600] = 0;
    CU_ASSERT_EQUAL(tmd_config_set(&ctx, &cfg, "autoencoder_model", path, "command line"), TMD_OK);
    char *text = NULL;
    CU_ASSERT_EQUAL(tmd_config_to_text(&ctx, &cfg, &text), TMD_OK);
    tmd_config back;
    tmd_config_defaults(&back);
    CU_ASSERT_EQUAL(tmd_config_from_text(&ctx, &back, text, "round trip"), TMD_OK);
    CU_ASSERT_STRING_EQUAL(back.autoencoder_model, path);
    free(text);

    /* the same through a file, plus a long line that is not key = value */
    const char *file = tmd_test_path("long.ini");
    FILE *f = fopen(file, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fprintf(f, "[models]\nunet_model = %s\n", path);
    for (int i = 0; i < 300; i++) fputc('x', f);
    fputc('\n', f);
    fclose(f);
    tmd_error_clear(&ctx);
    CU_ASSERT_EQUAL(tmd_config_load_file(&ctx, &cfg, file), TMD_ERR_CONFIG);
    CU_ASSERT_STRING_EQUAL(cfg.unet_model, path);
    CU_ASSERT_PTR_NOT_NULL(strstr(ctx.err_msg, "long.ini:3"));
}

/* A binary file given as configuration is refused with a message, not half-parsed. */
static void test_config_binary_file_is_refused(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    tmd_config cfg;
    tmd_config_defaults(&cfg);
    const char *file = tmd_test_path("binary.ini");
    FILE *f = fopen(file, "wb");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fwrite("tile = 128\nII*\0\x08\0\0\0", 1, 19, f);
    fclose(f);
    CU_ASSERT_EQUAL(tmd_config_load_file(&ctx, &cfg, file), TMD_ERR_CONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(ctx.err_msg, "binary.ini:2"));
    CU_ASSERT_PTR_NOT_NULL(strstr(ctx.err_msg, "NUL"));
}

/* ---- hostile-input fixtures for tests/cli/bad_input.sh ----------------------------------
 * `test_reliability --make-fixtures DIR` writes them (no data fixtures in git). TIFFs are built
 * byte by byte (libtiff's writer refuses most of these), HDF5 files through the HDF5 API. */

typedef struct {
    uint16_t tag, type; /* type 3 SHORT, 4 LONG */
    uint32_t count;
    const uint32_t *v;
} raw_tag;

/* Classic little-endian TIFF: header, `data` (ndata bytes at offset 8), IFD, out-of-line values.
 * Tags must be sorted. */
static int raw_tiff(const char *path, const raw_tag *tags, int ntags, const unsigned char *data, size_t ndata)
{
    FILE *f = fopen(path, "wb");
    if (!f) return 1;
    uint32_t ifd = (uint32_t)(8 + ndata);
    ifd += ifd & 1;
    uint32_t extra = ifd + 2 + 12 * (uint32_t)ntags + 4;
    unsigned char hdr[8] = {'I', 'I', 42, 0, (unsigned char)ifd, (unsigned char)(ifd >> 8), (unsigned char)(ifd >> 16),
                            (unsigned char)(ifd >> 24)};
    fwrite(hdr, 1, 8, f);
    if (ndata) fwrite(data, 1, ndata, f);
    if ((8 + ndata) & 1) fputc(0, f);
    unsigned char b[12];
    b[0] = (unsigned char)ntags;
    b[1] = 0;
    fwrite(b, 1, 2, f);
    for (int i = 0; i < ntags; i++) {
        const raw_tag *t = &tags[i];
        uint32_t sz = t->type == 3 ? 2 : 4, bytes = sz * t->count;
        memset(b, 0, sizeof b);
        b[0] = (unsigned char)t->tag;
        b[1] = (unsigned char)(t->tag >> 8);
        b[2] = (unsigned char)t->type;
        for (int k = 0; k < 4; k++) b[4 + k] = (unsigned char)(t->count >> (8 * k));
        if (bytes <= 4) {
            for (uint32_t j = 0; j < t->count; j++)
                for (uint32_t k = 0; k < sz; k++) b[8 + j * sz + k] = (unsigned char)(t->v[j] >> (8 * k));
        } else {
            for (int k = 0; k < 4; k++) b[8 + k] = (unsigned char)(extra >> (8 * k));
            extra += bytes;
        }
        fwrite(b, 1, 12, f);
    }
    memset(b, 0, 4);
    fwrite(b, 1, 4, f); /* no next IFD */
    for (int i = 0; i < ntags; i++) {
        const raw_tag *t = &tags[i];
        uint32_t sz = t->type == 3 ? 2 : 4;
        if (sz * t->count <= 4) continue;
        for (uint32_t j = 0; j < t->count; j++)
            for (uint32_t k = 0; k < sz; k++) fputc((int)((t->v[j] >> (8 * k)) & 255), f);
    }
    return fclose(f) ? 1 : 0;
}

/* A 32 x 32 uint16 image in four 16 x 16 uncompressed tiles; tile 2 gets (off2, count2). */
static int tiled_tiff(const char *path, uint32_t off2, uint32_t count2)
{
    static unsigned char data[4 * 512];
    for (size_t i = 0; i < sizeof data; i++) data[i] = (unsigned char)(i * 7);
    uint32_t w = 32, h = 32, bps = 16, comp = 1, phot = 1, spp = 1, tw = 16, th = 16;
    uint32_t offs[4] = {8, 8 + 512, off2, 8 + 1536}, counts[4] = {512, 512, count2, 512};
    raw_tag t[] = {{256, 4, 1, &w},   {257, 4, 1, &h},    {258, 3, 1, &bps},    {259, 3, 1, &comp},
                   {262, 3, 1, &phot}, {277, 3, 1, &spp}, {322, 4, 1, &tw},     {323, 4, 1, &th},
                   {324, 4, 4, offs},  {325, 4, 4, counts}};
    return raw_tiff(path, t, (int)(sizeof t / sizeof t[0]), data, sizeof data);
}

/* A striped image of w x h, spp samples of bps bits (sample format sf), one strip (off, count)
 * over 64 bytes of data. */
static int striped_tiff(const char *path, uint32_t w, uint32_t h, uint32_t bps, uint32_t spp, uint32_t sf,
                        uint32_t count)
{
    unsigned char data[64];
    for (size_t i = 0; i < sizeof data; i++) data[i] = (unsigned char)i;
    uint32_t comp = 1, phot = spp >= 3 ? 2 : 1, off = 8, rps = h, planar = 1;
    uint32_t bpsv[16];
    for (int i = 0; i < 16; i++) bpsv[i] = bps;
    raw_tag t[] = {{256, 4, 1, &w},       {257, 4, 1, &h},   {258, 3, spp, bpsv}, {259, 3, 1, &comp},
                   {262, 3, 1, &phot},    {273, 4, 1, &off}, {277, 3, 1, &spp},   {278, 4, 1, &rps},
                   {279, 4, 1, &count},   {284, 3, 1, &planar}, {339, 3, 1, &sf}};
    return raw_tiff(path, t, (int)(sizeof t / sizeof t[0]), data, sizeof data);
}

/* An HDF5 file with one dataset /image of the given rank, dims and type (data: a ramp). */
static int h5_with(const char *path, int rank, const hsize_t *dims, hid_t type)
{
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (f < 0) return 1;
    hid_t s = H5Screate_simple(rank, dims, NULL);
    hid_t d = H5Dcreate2(f, "/image", type, s, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    hssize_t n = H5Sget_simple_extent_npoints(s);
    size_t es = H5Tget_size(type);
    unsigned char *buf = calloc(n > 0 ? (size_t)n : 1, es);
    int rc = d < 0 || !buf;
    if (!rc && n > 0) {
        for (size_t i = 0; i < (size_t)n * es; i++) buf[i] = (unsigned char)(i % 251);
        rc = H5Dwrite(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0;
    }
    free(buf);
    if (d >= 0) H5Dclose(d);
    H5Sclose(s);
    H5Fclose(f);
    return rc;
}

/* A float64 64 x 64 image with +Inf at (x=7, y=9). */
static int h5_inf(const char *path)
{
    static double v[64 * 64];
    for (int i = 0; i < 64 * 64; i++) v[i] = (i % 97) * 0.5;
    v[9 * 64 + 7] = INFINITY;
    hsize_t dims[2] = {64, 64};
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (f < 0) return 1;
    hid_t s = H5Screate_simple(2, dims, NULL);
    hid_t d = H5Dcreate2(f, "/image", H5T_IEEE_F64LE, s, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    int rc = d < 0 || H5Dwrite(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, v) < 0;
    if (d >= 0) H5Dclose(d);
    H5Sclose(s);
    H5Fclose(f);
    return rc;
}

/* A copy of the shipped U-Net whose first convolution's weights have the wrong shape. */
static int bad_model(const char *src, const char *path)
{
    FILE *in = fopen(src, "rb"), *out = fopen(path, "wb");
    int rc = !in || !out;
    char buf[65536];
    size_t n;
    while (!rc && (n = fread(buf, 1, sizeof buf, in)) > 0) rc = fwrite(buf, 1, n, out) != n;
    if (in) fclose(in);
    if (out && fclose(out)) rc = 1;
    if (rc) return 1;
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    if (f < 0) return 1;
    rc = H5Ldelete(f, "/layers/001/w", H5P_DEFAULT) < 0;
    hsize_t dims[4] = {2, 1, 3, 3};
    float w[18] = {0};
    hid_t s = H5Screate_simple(4, dims, NULL);
    hid_t d = rc ? H5I_INVALID_HID
                 : H5Dcreate2(f, "/layers/001/w", H5T_IEEE_F32LE, s, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (d < 0 || H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, w) < 0) rc = 1;
    if (d >= 0) H5Dclose(d);
    H5Sclose(s);
    H5Fclose(f);
    return rc;
}

/* Hostile TIFF block tables (tests/cli/bad_input.sh cases, found while writing them): a tile
 * at offset 0 (inside the header) was read as pixels — the header bytes became image data;
 * a 2^32-1 square page said only "cannot read the TIFF header". Both are refused by name now,
 * while the same file with a valid table reads back its pixels. */
static void test_tiff_block_table_refused(void)
{
    char dir[] = "/tmp/tmd-rel-XXXXXX", p[256];
    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    tmd_reader *r = NULL;
    snprintf(p, sizeof p, "%s/good.tif", dir);
    CU_ASSERT_EQUAL_FATAL(tiled_tiff(p, 8 + 1024, 512), 0);
    CU_ASSERT_EQUAL_FATAL(tmd_reader_open(&ctx, p, &r), TMD_OK);
    float px[32 * 32];
    CU_ASSERT_EQUAL(tmd_reader_read(&ctx, r, 0, 0, 0, 32, 32, px), TMD_OK);
    /* tile 2 = rows 16..31, columns 0..15: its first sample is bytes 1024, 1025 of the data */
    CU_ASSERT_EQUAL(px[16 * 32], (float)(((1024 * 7) & 255) | (((1025 * 7) & 255) << 8)));
    tmd_reader_close(&r);
    unlink(p);

    snprintf(p, sizeof p, "%s/off0.tif", dir);
    CU_ASSERT_EQUAL_FATAL(tiled_tiff(p, 0, 512), 0);
    CU_ASSERT_EQUAL(tmd_reader_open(&ctx, p, &r), TMD_ERR_FORMAT);
    CU_ASSERT_PTR_NULL(r);
    CU_ASSERT_PTR_NOT_NULL(strstr(ctx.err_msg, "tile 2 starts at offset 0, inside the 8-byte TIFF header"));
    CU_ASSERT_PTR_NOT_NULL(strstr(ctx.err_msg, p));
    tmd_error_clear(&ctx);
    unlink(p);

    snprintf(p, sizeof p, "%s/huge.tif", dir);
    CU_ASSERT_EQUAL_FATAL(striped_tiff(p, 0xffffffffu, 0xffffffffu, 64, 16, 3, 64), 0);
    CU_ASSERT_EQUAL(tmd_reader_open(&ctx, p, &r), TMD_ERR_FORMAT);
    CU_ASSERT_PTR_NOT_NULL(strstr(ctx.err_msg, "unusable size 4294967295 x 4294967295"));
    tmd_error_clear(&ctx);
    unlink(p);
    rmdir(dir);
}

static int make_fixtures(const char *dir)
{
    char p[1200];
    int rc = 0;
#define FX(name) (snprintf(p, sizeof p, "%s/%s", dir, name), p)
    /* width x height x samples beyond size_t: 2^32-1 squared, 16 samples of 64 bits */
    rc |= striped_tiff(FX("bad_overflow.tif"), 0xffffffffu, 0xffffffffu, 64, 16, 3, 64);
    /* 50000 x 50000 RGB 16-bit (15 GB) in a 400-byte file; the strip claims 4 GB */
    rc |= striped_tiff(FX("bad_beyond.tif"), 50000, 50000, 16, 3, 1, 4000000000u);
    /* absurd: 1 x 16777217 (one row past the largest side) */
    rc |= striped_tiff(FX("bad_absurd.tif"), 1, 16777217u, 8, 1, 1, 64);
    /* 24-bit integer samples */
    rc |= striped_tiff(FX("bad_24bit.tif"), 4, 4, 24, 1, 1, 48);
    rc |= tiled_tiff(FX("bad_tileoff0.tif"), 0, 512);
    rc |= tiled_tiff(FX("bad_tileoff_past.tif"), 1u << 30, 512);
    rc |= tiled_tiff(FX("bad_tilecount0.tif"), 8 + 1024, 0);
    rc |= tiled_tiff(FX("good_tiled.tif"), 8 + 1024, 512);
    hsize_t d1[1] = {4096}, d4[4] = {2, 2, 32, 32}, d2[2] = {48, 48};
    rc |= h5_with(FX("bad_rank1.h5"), 1, d1, H5T_NATIVE_FLOAT);
    rc |= h5_with(FX("bad_rank4.h5"), 4, d4, H5T_NATIVE_UINT16);
    hsize_t d0[2] = {0, 64};
    rc |= h5_with(FX("bad_zero.h5"), 2, d0, H5T_NATIVE_FLOAT);
    hid_t c = H5Tcreate(H5T_COMPOUND, 8);
    H5Tinsert(c, "re", 0, H5T_NATIVE_FLOAT);
    H5Tinsert(c, "im", 4, H5T_NATIVE_FLOAT);
    rc |= h5_with(FX("bad_compound.h5"), 2, d2, c);
    H5Tclose(c);
    rc |= h5_with(FX("bad_u64.h5"), 2, d2, H5T_NATIVE_UINT64);
    rc |= h5_inf(FX("bad_inf.h5"));
    rc |= bad_model(TMD_SOURCE_DIR "/inputs/models/unet.h5", FX("bad_model.h5"));
#undef FX
    if (rc) fprintf(stderr, "test_reliability: could not write the fixtures in %s\n", dir);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "--make-fixtures")) {
        H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
        return make_fixtures(argv[2]);
    }
    return tmd_test_main(argc, argv, "reliability",
                         (tmd_test_case[]){{"config string values round-trip or are refused",
                                            test_config_string_values_round_trip_or_are_refused},
                                           {"config long lines are not split", test_config_long_lines_are_not_split},
                                           {"config binary file is refused", test_config_binary_file_is_refused},
                                           {"TIFF block table and huge page refused", test_tiff_block_table_refused},
                                           {0}});
}
