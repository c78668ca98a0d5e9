/* Tests of the render module: a result file with atoms, vacancies, lattice and a density map,
 * beside its input TIFF, becomes a PNG that libpng decodes, of the expected size (whole frame,
 * region, downsampled by --max-size), with atoms drawn in their species colour; a missing
 * input still gives a picture; a region outside the frame is refused; the command line works.
 */
#include <hdf5.h>
#include <math.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "tmd/io.h"
#include "tmd/render.h"
#include "tmd/table.h"

static void w1(hid_t f, const char *name, hid_t type, hsize_t n, const void *data)
{
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(lcpl, 1);
    hid_t s = H5Screate_simple(1, &n, NULL);
    hid_t d = H5Dcreate2(f, name, type, s, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    H5Dwrite(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data);
    H5Dclose(d);
    H5Sclose(s);
    H5Pclose(lcpl);
}

static void w2(hid_t f, const char *name, hid_t type, hsize_t r, hsize_t c, const void *data)
{
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(lcpl, 1);
    hsize_t dims[2] = {r, c};
    hid_t s = H5Screate_simple(2, dims, NULL);
    hid_t d = H5Dcreate2(f, name, type, s, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    H5Dwrite(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data);
    H5Dclose(d);
    H5Sclose(s);
    H5Pclose(lcpl);
}

static void attr_str(hid_t f, const char *name, const char *v)
{
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, strlen(v) + 1);
    hid_t s = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(f, name, t, s, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, t, v);
    H5Aclose(a);
    H5Sclose(s);
    H5Tclose(t);
}

/* A 300 x 400 honeycomb image and a result with its atoms (species by sublattice), one
 * vacancy of each type, the lattice and a 2-D density map. */
static void make_files(const char *tif, const char *res, const char *input_attr)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    int H = 300, W = 400;
    double per = 18.0;
    float *img = calloc((size_t)H * W, sizeof(float));
    double *x = malloc(sizeof(double) * 4000), *y = malloc(sizeof(double) * 4000);
    int8_t *sp = malloc(4000);
    int32_t *fr = calloc(4000, sizeof(int32_t));
    int n = 0;
    double a1[2] = {per, 0}, a2[2] = {per * 0.5, per * sqrt(3) / 2};
    for (int i = -40; i <= 40; i++)
        for (int j = -40; j <= 40; j++)
            for (int b = 0; b < 2; b++) {
                double px = 5 + i * a1[0] + j * a2[0] + b * (a1[0] + a2[0]) / 3, py = 5 + i * a1[1] + j * a2[1] + b * (a1[1] + a2[1]) / 3;
                if (px < 1 || py < 1 || px > W - 2 || py > H - 2 || n >= 4000) continue;
                x[n] = px;
                y[n] = py;
                sp[n] = b ? TMD_SP_S2 : TMD_SP_MO;
                n++;
                for (int yy = (int)py - 6; yy <= (int)py + 6; yy++)
                    for (int xx = (int)px - 6; xx <= (int)px + 6; xx++)
                        if (xx >= 0 && yy >= 0 && xx < W && yy < H)
                            img[yy * W + xx] += (float)((b ? 0.4 : 1.0) * exp(-((xx - px) * (xx - px) + (yy - py) * (yy - py)) / 4.5));
            }
    CU_ASSERT_EQUAL(tmd_tiff_write(&ctx, tif, img, 1, H, W, TMD_F32, 0), TMD_OK);
    hid_t f = H5Fcreate(res, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    attr_str(f, "input", input_attr);
    double ps = 0.175;
    hid_t s = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(f, "pixel_size", H5T_NATIVE_DOUBLE, s, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, H5T_NATIVE_DOUBLE, &ps);
    H5Aclose(a);
    H5Sclose(s);
    w1(f, "/atoms/x", H5T_NATIVE_DOUBLE, (hsize_t)n, x);
    w1(f, "/atoms/y", H5T_NATIVE_DOUBLE, (hsize_t)n, y);
    w1(f, "/atoms/frame", H5T_NATIVE_INT32, (hsize_t)n, fr);
    w1(f, "/atoms/species", H5T_NATIVE_INT8, (hsize_t)n, sp);
    double dx[3] = {100, 200, 300}, dy[3] = {100, 150, 200};
    int32_t df[3] = {0, 0, 0};
    int8_t dt[3] = {1, 2, 3};
    w1(f, "/defects/x", H5T_NATIVE_DOUBLE, 3, dx);
    w1(f, "/defects/y", H5T_NATIVE_DOUBLE, 3, dy);
    w1(f, "/defects/frame", H5T_NATIVE_INT32, 3, df);
    w1(f, "/defects/type", H5T_NATIVE_INT8, 3, dt);
    w2(f, "/lattice/a1", H5T_NATIVE_DOUBLE, 1, 2, a1);
    w2(f, "/lattice/a2", H5T_NATIVE_DOUBLE, 1, 2, a2);
    float map[10 * 13];
    for (int i = 0; i < 10 * 13; i++) map[i] = (float)(i % 13 > 8 ? (i % 13) : 0);
    w2(f, "/maps/unstable_density", H5T_NATIVE_FLOAT, 10, 13, map);
    hid_t d = H5Dopen2(f, "/maps/unstable_density", H5P_DEFAULT);
    int64_t bin = 32;
    s = H5Screate(H5S_SCALAR);
    a = H5Acreate2(d, "bin_px", H5T_NATIVE_INT64, s, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, H5T_NATIVE_INT64, &bin);
    H5Aclose(a);
    H5Sclose(s);
    H5Dclose(d);
    H5Fclose(f);
    free(img);
    free(x);
    free(y);
    free(sp);
    free(fr);
}

/* Decodes a PNG with libpng; returns the RGB rows (malloc'd) and the size, or NULL. */
static uint8_t *png_read(const char *path, int *w, int *h)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) return NULL;
    png_structp p = png_create_read_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(p);
    uint8_t *rgb = NULL;
    if (setjmp(png_jmpbuf(p))) {
        png_destroy_read_struct(&p, &info, NULL);
        fclose(fp);
        free(rgb);
        return NULL;
    }
    png_init_io(p, fp);
    png_read_info(p, info);
    *w = (int)png_get_image_width(p, info);
    *h = (int)png_get_image_height(p, info);
    if (png_get_color_type(p, info) != PNG_COLOR_TYPE_RGB || png_get_bit_depth(p, info) != 8) longjmp(png_jmpbuf(p), 1);
    rgb = malloc((size_t)*w * *h * 3);
    for (int y = 0; y < *h; y++) png_read_row(p, rgb + (size_t)y * *w * 3, NULL);
    png_read_end(p, NULL);
    png_destroy_read_struct(&p, &info, NULL);
    fclose(fp);
    return rgb;
}

static int count_colour(const uint8_t *rgb, int w, int h, const uint8_t c[3])
{
    int n = 0;
    for (int i = 0; i < w * h; i++)
        if (abs(rgb[3 * i] - c[0]) < 30 && abs(rgb[3 * i + 1] - c[1]) < 30 && abs(rgb[3 * i + 2] - c[2]) < 30) n++;
    return n;
}

static void test_render_sizes(void)
{
    if (tmd_test_rank) return;
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    const char *tif = tmd_test_path("in.tif"), *res = tmd_test_path("r.h5");
    make_files(tif, res, tif);
    tmd_render_opts o;
    tmd_render_opts_default(&o);
    const char *png = tmd_test_path("full.png");
    CU_ASSERT_EQUAL_FATAL(tmd_render(&ctx, res, png, &o), TMD_OK);
    int w, h;
    uint8_t *rgb = png_read(png, &w, &h);
    CU_ASSERT_PTR_NOT_NULL_FATAL(rgb);
    /* 400 x 300 upscaled x2 for readability (<= 700 px on the long edge) */
    CU_ASSERT_EQUAL(w, 800);
    CU_ASSERT_EQUAL(h, 600);
    uint8_t mo[3], s2[3];
    tmd_render_species_colour(TMD_SP_MO, mo);
    tmd_render_species_colour(TMD_SP_S2, s2);
    CU_ASSERT(count_colour(rgb, w, h, mo) > 200);
    CU_ASSERT(count_colour(rgb, w, h, s2) > 200);
    free(rgb);
    /* downsampled: longest edge <= 100 */
    o.max_size = 100;
    CU_ASSERT_EQUAL(tmd_render(&ctx, res, png, &o), TMD_OK);
    rgb = png_read(png, &w, &h);
    CU_ASSERT_PTR_NOT_NULL_FATAL(rgb);
    CU_ASSERT_EQUAL(w, 100);
    CU_ASSERT_EQUAL(h, 75);
    free(rgb);
    /* region */
    o.max_size = 2048;
    o.region[0] = 50;
    o.region[1] = 40;
    o.region[2] = 120;
    o.region[3] = 90;
    CU_ASSERT_EQUAL(tmd_render(&ctx, res, png, &o), TMD_OK);
    rgb = png_read(png, &w, &h);
    CU_ASSERT_PTR_NOT_NULL_FATAL(rgb);
    CU_ASSERT_EQUAL(w, 480);
    CU_ASSERT_EQUAL(h, 360);
    free(rgb);
    /* outside the frame */
    o.region[2] = 1000;
    CU_ASSERT_EQUAL(tmd_render(&ctx, res, png, &o), TMD_ERR_ARG);
    CU_ASSERT(strstr(ctx.err_msg, "region") != NULL);
    tmd_error_clear(&ctx);
    /* the input is gone: grey background, still a picture */
    const char *res2 = tmd_test_path("r2.h5");
    make_files(tmd_test_path("in2.tif"), res2, "/nonexistent/input.tif");
    tmd_render_opts_default(&o);
    CU_ASSERT_EQUAL(tmd_render(&ctx, res2, png, &o), TMD_OK);
    rgb = png_read(png, &w, &h);
    CU_ASSERT_PTR_NOT_NULL(rgb);
    free(rgb);
    /* unwritable output */
    tmd_error_clear(&ctx);
    CU_ASSERT_EQUAL(tmd_render(&ctx, res, "/nonexistent/dir/x.png", &o), TMD_ERR_IO);
}

/* The command line: tmdflow render R.h5 -o P.png --region ... --max-size ... (if the binary is known). */
static void test_cli(void)
{
    if (tmd_test_rank) return;
    const char *bin = getenv("TMDFLOW_BIN");
    if (!bin) return;
    const char *tif = tmd_test_path("c.tif"), *res = tmd_test_path("c.h5"), *png = tmd_test_path("c.png");
    make_files(tif, res, tif);
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "TMDFLOW_LOG=quiet %s render %s -o %s --region 0,0,400,300 --max-size 200", bin, res, png);
    CU_ASSERT_EQUAL(tmd_test_run(cmd, NULL), 0);
    int w = 0, h = 0;
    uint8_t *rgb = png_read(png, &w, &h);
    CU_ASSERT_PTR_NOT_NULL(rgb);
    CU_ASSERT_EQUAL(w, 200);
    CU_ASSERT_EQUAL(h, 150);
    free(rgb);
    snprintf(cmd, sizeof cmd, "TMDFLOW_LOG=quiet %s render %s -o %s --region 1,2 2>/dev/null", bin, res, png);
    CU_ASSERT_NOT_EQUAL(tmd_test_run(cmd, NULL), 0);
}

int main(int argc, char **argv)
{
    return tmd_test_main(argc, argv, "render",
                         (tmd_test_case[]){{"PNG sizes, colours, region, downsampling, errors", test_render_sizes},
                                           {"command line", test_cli},
                                           {NULL, NULL}});
}
