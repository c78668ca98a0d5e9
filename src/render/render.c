/* Pictures of a result (tmd/render.h): image by region / downsampled, atoms by species,
 * vacancies by type, density maps, regions, legend, scale bar; PNG through libpng. */
#include "tmd/render.h"

#include <hdf5.h>
#include <math.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tmd/io.h"
#include "tmd/table.h"

void tmd_render_opts_default(tmd_render_opts *o)
{
    memset(o, 0, sizeof *o);
    o->max_size = 2048;
    o->draw_atoms = 1;
    o->draw_maps = 1;
    o->legend = 1;
}

static const uint8_t SPECIES_RGB[TMD_SP_COUNT][3] = {
    {160, 160, 160}, /* unknown */
    {40, 140, 255},  /* Mo */
    {255, 50, 50},   /* W */
    {255, 225, 0},   /* S2 */
    {255, 140, 0},   /* SSe */
    {80, 220, 60},   /* Se2 */
    {255, 250, 170}, /* S */
    {0, 200, 170},   /* Se */
};

void tmd_render_species_colour(int species, uint8_t rgb[3])
{
    if (species < 0 || species >= TMD_SP_COUNT) species = 0;
    memcpy(rgb, SPECIES_RGB[species], 3);
}

/* ---- PNG ------------------------------------------------------------------------------- */

tmd_status tmd_png_write_rgb(tmd_ctx *ctx, const char *path, const uint8_t *rgb, int64_t h, int64_t w)
{
    if (h <= 0 || w <= 0 || h > 100000 || w > 100000)
        return TMD_FAIL(ctx, TMD_ERR_ARG, "%s: picture size %lld x %lld out of range", path, (long long)w, (long long)h);
    FILE *f = fopen(path, "wb");
    if (!f) return TMD_FAIL(ctx, TMD_ERR_IO, "%s: cannot create the picture", path);
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!png || !info) {
        png_destroy_write_struct(&png, &info);
        fclose(f);
        return TMD_FAIL(ctx, TMD_ERR_NOMEM, "%s: libpng could not start", path);
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        fclose(f);
        remove(path);
        return TMD_FAIL(ctx, TMD_ERR_IO, "%s: libpng failed while writing (disk full?)", path);
    }
    png_init_io(png, f);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (int64_t y = 0; y < h; y++) png_write_row(png, (png_const_bytep)(rgb + (size_t)y * (size_t)w * 3));
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    if (fclose(f) != 0) {
        remove(path);
        return TMD_FAIL(ctx, TMD_ERR_IO, "%s: could not finish writing the picture", path);
    }
    return TMD_OK;
}

/* ---- canvas and drawing ------------------------------------------------------------------ */

typedef struct {
    uint8_t *p; /* (h, w, 3) */
    int64_t h, w;
} canvas_t;

static void put(canvas_t *c, int64_t x, int64_t y, const uint8_t rgb[3], double alpha)
{
    if (x < 0 || y < 0 || x >= c->w || y >= c->h) return;
    uint8_t *q = c->p + ((size_t)y * (size_t)c->w + (size_t)x) * 3;
    for (int k = 0; k < 3; k++) q[k] = (uint8_t)lround(q[k] * (1 - alpha) + rgb[k] * alpha);
}

static void disc(canvas_t *c, double cx, double cy, double r, const uint8_t rgb[3], double alpha)
{
    if (r < 0.75) {
        put(c, (int64_t)floor(cx + 0.5), (int64_t)floor(cy + 0.5), rgb, alpha);
        return;
    }
    for (int64_t y = (int64_t)floor(cy - r); y <= (int64_t)ceil(cy + r); y++)
        for (int64_t x = (int64_t)floor(cx - r); x <= (int64_t)ceil(cx + r); x++)
            if ((x - cx) * (x - cx) + (y - cy) * (y - cy) <= r * r) put(c, x, y, rgb, alpha);
}

static void ring(canvas_t *c, double cx, double cy, double r, double t, const uint8_t rgb[3])
{
    for (int64_t y = (int64_t)floor(cy - r - t); y <= (int64_t)ceil(cy + r + t); y++)
        for (int64_t x = (int64_t)floor(cx - r - t); x <= (int64_t)ceil(cx + r + t); x++) {
            double d = hypot(x - cx, y - cy);
            if (fabs(d - r) <= t * 0.5 + 0.35) put(c, x, y, rgb, 1.0);
        }
}

static void line(canvas_t *c, double x0, double y0, double x1, double y1, double t, const uint8_t rgb[3])
{
    double len = hypot(x1 - x0, y1 - y0);
    int n = (int)ceil(len * 2) + 1;
    for (int i = 0; i <= n; i++) {
        double u = (double)i / n;
        disc(c, x0 + u * (x1 - x0), y0 + u * (y1 - y0), t * 0.5, rgb, 1.0);
    }
}

static void rect(canvas_t *c, int64_t x0, int64_t y0, int64_t w, int64_t h, const uint8_t rgb[3], double alpha)
{
    for (int64_t y = y0; y < y0 + h; y++)
        for (int64_t x = x0; x < x0 + w; x++) put(c, x, y, rgb, alpha);
}

/* vacancy markers: 1 V_M square, 2 V_X cross, 3 V_X2 diamond */
static const uint8_t VAC_RGB[4][3] = {{0, 0, 0}, {255, 0, 255}, {0, 255, 255}, {255, 255, 255}};

static void marker(canvas_t *c, int type, double cx, double cy, double r)
{
    double t = r > 4 ? 2.0 : 1.0;
    if (r < 2.5) r = 2.5;
    const uint8_t *col = VAC_RGB[type >= 1 && type <= 3 ? type : 3];
    if (type == TMD_DEF_VM) {
        line(c, cx - r, cy - r, cx + r, cy - r, t, col);
        line(c, cx + r, cy - r, cx + r, cy + r, t, col);
        line(c, cx + r, cy + r, cx - r, cy + r, t, col);
        line(c, cx - r, cy + r, cx - r, cy - r, t, col);
    } else if (type == TMD_DEF_VX) {
        line(c, cx - r, cy - r, cx + r, cy + r, t, col);
        line(c, cx - r, cy + r, cx + r, cy - r, t, col);
    } else {
        line(c, cx, cy - r, cx + r, cy, t, col);
        line(c, cx + r, cy, cx, cy + r, t, col);
        line(c, cx, cy + r, cx - r, cy, t, col);
        line(c, cx - r, cy, cx, cy - r, t, col);
    }
}

/* ---- tiny 5x7 font ------------------------------------------------------------------------ */

typedef struct {
    char ch;
    uint8_t rows[7];
} glyph_t;

static const glyph_t FONT[] = {
    {'0', {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E}}, {'1', {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E}},
    {'2', {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F}}, {'3', {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E}},
    {'4', {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02}}, {'5', {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E}},
    {'6', {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E}}, {'7', {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08}},
    {'8', {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E}}, {'9', {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C}},
    {'.', {0, 0, 0, 0, 0, 0x0C, 0x0C}},               {'_', {0, 0, 0, 0, 0, 0, 0x1F}},
    {'-', {0, 0, 0, 0x1F, 0, 0, 0}},                  {'?', {0x0E, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04}},
    {'/', {0x01, 0x01, 0x02, 0x04, 0x08, 0x10, 0x10}}, {':', {0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0}},
    {'A', {0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11}}, {'M', {0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11}},
    {'S', {0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E}}, {'V', {0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04}},
    {'W', {0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A}}, {'X', {0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11}},
    {'a', {0, 0, 0x0E, 0x01, 0x0F, 0x11, 0x0F}},      {'b', {0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1E}},
    {'c', {0, 0, 0x0E, 0x10, 0x10, 0x11, 0x0E}},      {'d', {0x01, 0x01, 0x0D, 0x13, 0x11, 0x11, 0x0F}},
    {'e', {0, 0, 0x0E, 0x11, 0x1F, 0x10, 0x0E}},      {'f', {0x06, 0x09, 0x08, 0x1C, 0x08, 0x08, 0x08}},
    {'g', {0, 0, 0x0F, 0x11, 0x0F, 0x01, 0x0E}},      {'h', {0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11}},
    {'i', {0x04, 0, 0x0C, 0x04, 0x04, 0x04, 0x0E}},   {'k', {0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12}},
    {'l', {0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E}}, {'m', {0, 0, 0x1A, 0x15, 0x15, 0x11, 0x11}},
    {'n', {0, 0, 0x16, 0x19, 0x11, 0x11, 0x11}},      {'o', {0, 0, 0x0E, 0x11, 0x11, 0x11, 0x0E}},
    {'p', {0, 0, 0x1E, 0x11, 0x1E, 0x10, 0x10}},      {'r', {0, 0, 0x16, 0x19, 0x10, 0x10, 0x10}},
    {'s', {0, 0, 0x0E, 0x10, 0x0E, 0x01, 0x1E}},      {'t', {0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06}},
    {'u', {0, 0, 0x11, 0x11, 0x11, 0x13, 0x0D}},      {'x', {0, 0, 0x11, 0x0A, 0x04, 0x0A, 0x11}},
    {'y', {0, 0, 0x11, 0x11, 0x0F, 0x01, 0x0E}},
};

static const uint8_t *glyph(char ch)
{
    for (size_t i = 0; i < sizeof FONT / sizeof FONT[0]; i++)
        if (FONT[i].ch == ch) return FONT[i].rows;
    return NULL;
}

/* Draws text at (x, y) (top-left), scale s; returns the width drawn. */
static int64_t text(canvas_t *c, int64_t x, int64_t y, const char *s, int sc, const uint8_t rgb[3])
{
    int64_t x0 = x;
    for (; *s; s++) {
        if (*s != ' ') {
            const uint8_t *g = glyph(*s);
            if (!g) g = glyph('?');
            for (int r = 0; r < 7; r++)
                for (int b = 0; b < 5; b++)
                    if (g[r] & (0x10 >> b)) rect(c, x + b * sc, y + r * sc, sc, sc, rgb, 1.0);
        }
        x += 6 * sc;
    }
    return x - x0;
}

/* ---- result reading in blocks ------------------------------------------------------------- */

static int64_t dset_rows(hid_t f, const char *name)
{
    if (!tmd_h5_exists(f, name)) return -1;
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    if (d < 0) return -1;
    hid_t s = H5Dget_space(d);
    hsize_t dims[4] = {0};
    int nd = H5Sget_simple_extent_ndims(s);
    if (nd >= 1 && nd <= 4) H5Sget_simple_extent_dims(s, dims, NULL);
    H5Sclose(s);
    H5Dclose(d);
    return nd >= 1 ? (int64_t)dims[0] : -1;
}

static tmd_status read_block(tmd_ctx *ctx, hid_t f, const char *file, const char *name, hid_t mtype, int64_t off,
                             int64_t cnt, void *buf)
{
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT), fs = H5I_INVALID_HID, ms = H5I_INVALID_HID;
    tmd_status st = TMD_OK;
    if (d < 0) return TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: cannot open dataset %s", file, name);
    fs = H5Dget_space(d);
    hsize_t o[1] = {(hsize_t)off}, n[1] = {(hsize_t)cnt};
    if (H5Sget_simple_extent_ndims(fs) != 1) {
        st = TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: dataset %s is not 1-D", file, name);
        goto cleanup;
    }
    ms = H5Screate_simple(1, n, NULL);
    if (H5Sselect_hyperslab(fs, H5S_SELECT_SET, o, NULL, n, NULL) < 0 || H5Dread(d, mtype, ms, fs, H5P_DEFAULT, buf) < 0)
        st = TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: cannot read rows %lld..%lld of %s", file, (long long)off,
                      (long long)(off + cnt - 1), name);
cleanup:
    if (ms >= 0) H5Sclose(ms);
    if (fs >= 0) H5Sclose(fs);
    H5Dclose(d);
    return st;
}

/* inferno-like colour map, t in [0, 1] */
static void cmap(double t, uint8_t rgb[3])
{
    static const double K[5][3] = {{0, 0, 4}, {87, 16, 110}, {188, 55, 84}, {249, 142, 9}, {252, 255, 164}};
    t = t < 0 ? 0 : t > 1 ? 1 : t;
    double u = t * 4;
    int i = (int)u;
    if (i > 3) i = 3;
    double fr = u - i;
    for (int k = 0; k < 3; k++) rgb[k] = (uint8_t)lround(K[i][k] * (1 - fr) + K[i + 1][k] * fr);
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

tmd_status tmd_render(tmd_ctx *ctx, const char *result_path, const char *png_path, const tmd_render_opts *opt)
{
    tmd_render_opts od;
    if (!opt) {
        tmd_render_opts_default(&od);
        opt = &od;
    }
    hid_t f = H5I_INVALID_HID;
    char *input = NULL;
    tmd_reader *rd = NULL;
    float *img = NULL, *strip = NULL, *sorted = NULL, *map = NULL;
    double *bx = NULL, *by = NULL;
    int32_t *bf = NULL;
    int8_t *bs = NULL;
    canvas_t cv = {NULL, 0, 0};
    tmd_status st = tmd_h5_open_read(ctx, result_path, &f);
    if (st) return st;
    double pixel_size = 0;
    if (tmd_h5_read_attr_f64(ctx, f, "/", "pixel_size", &pixel_size, 1)) {
        tmd_error_clear(ctx);
        pixel_size = 0;
    }
    st = tmd_h5_read_attr_str(ctx, f, "/", "input", &input);
    if (st) goto cleanup;
    /* the frame's size: from the input, else from the lattice / atoms extent */
    int64_t H = 0, W = 0, T = 1;
    if (tmd_reader_open(ctx, input, &rd) == TMD_OK) {
        const tmd_image_info *in = tmd_reader_info(rd);
        H = in->height;
        W = in->width;
        T = in->frames;
    } else {
        tmd_info(ctx, "render: warning: the input %s cannot be opened (%s); drawing on grey", input, ctx->err_msg);
        tmd_error_clear(ctx);
        rd = NULL;
    }
    if (opt->frame < 0 || (rd && opt->frame >= T)) {
        st = TMD_FAIL(ctx, TMD_ERR_ARG, "%s: frame %lld out of range, the input has %lld frame(s)", result_path,
                      (long long)opt->frame, (long long)T);
        goto cleanup;
    }
    int64_t rx = opt->region[0], ry = opt->region[1], rw = opt->region[2], rh = opt->region[3];
    if (!rd && (rw <= 0 || rh <= 0)) {
        /* no input: the extent of the atoms */
        int64_t na = dset_rows(f, "/atoms/x");
        double mx = 0, my = 0;
        for (int64_t o = 0; na > 0 && o < na && !st; o += 1 << 20) {
            int64_t cnt = na - o < (1 << 20) ? na - o : (1 << 20);
            double *tx = malloc(sizeof(double) * cnt), *ty = malloc(sizeof(double) * cnt);
            if (!tx || !ty) st = TMD_FAIL(ctx, TMD_ERR_NOMEM, "render: out of memory");
            if (!st) st = read_block(ctx, f, result_path, "/atoms/x", H5T_NATIVE_DOUBLE, o, cnt, tx);
            if (!st) st = read_block(ctx, f, result_path, "/atoms/y", H5T_NATIVE_DOUBLE, o, cnt, ty);
            for (int64_t i = 0; !st && i < cnt; i++) {
                if (tx[i] > mx) mx = tx[i];
                if (ty[i] > my) my = ty[i];
            }
            free(tx);
            free(ty);
        }
        if (st) goto cleanup;
        W = (int64_t)mx + 8;
        H = (int64_t)my + 8;
    }
    if (rw <= 0 || rh <= 0) {
        rx = ry = 0;
        rw = W;
        rh = H;
    }
    if (rx < 0 || ry < 0 || rw <= 0 || rh <= 0 || rx + rw > W || ry + rh > H) {
        st = TMD_FAIL(ctx, TMD_ERR_ARG, "render: region %lld,%lld,%lld,%lld is not inside the %lld x %lld frame",
                      (long long)rx, (long long)ry, (long long)rw, (long long)rh, (long long)W, (long long)H);
        goto cleanup;
    }
    int maxs = opt->max_size > 16 ? opt->max_size : 16;
    int64_t big = rw > rh ? rw : rh;
    int64_t fac = (big + maxs - 1) / maxs;
    if (fac < 1) fac = 1;
    int64_t oh = (rh + fac - 1) / fac, ow = (rw + fac - 1) / fac;
    /* upscale small regions so that markers and text are readable */
    int64_t up = 1;
    if (fac == 1) {
        while (big * up * 2 <= maxs && up < 4 && big * up < 700) up *= 2;
        oh *= up;
        ow *= up;
    }
    cv.h = oh;
    cv.w = ow;
    st = tmd_calloc(ctx, (void **)&cv.p, (size_t)(oh * ow), 3, "render canvas");
    if (!st) st = tmd_calloc(ctx, (void **)&img, (size_t)(oh * ow), sizeof(float), "render image");
    if (st) goto cleanup;
    /* 1. image: one output row at a time (fac input rows), box average */
    if (rd) {
        int64_t ih = (rh + fac - 1) / fac, iw = (rw + fac - 1) / fac;
        st = tmd_calloc(ctx, (void **)&strip, (size_t)(fac * rw), sizeof(float), "render strip");
        if (st) goto cleanup;
        for (int64_t oy = 0; oy < ih; oy++) {
            int64_t y0 = ry + oy * fac, nrow = (y0 + fac <= ry + rh) ? fac : ry + rh - y0;
            st = tmd_reader_read(ctx, rd, opt->frame, y0, rx, nrow, rw, strip);
            if (st) goto cleanup;
            for (int64_t ox = 0; ox < iw; ox++) {
                double s = 0;
                int64_t cnt = 0;
                for (int64_t yy = 0; yy < nrow; yy++)
                    for (int64_t xx = ox * fac; xx < (ox + 1) * fac && xx < rw; xx++) {
                        s += strip[yy * rw + xx];
                        cnt++;
                    }
                float v = (float)(cnt ? s / cnt : 0);
                for (int64_t a = 0; a < up; a++)
                    for (int64_t b = 0; b < up; b++) img[(oy * up + a) * ow + ox * up + b] = v;
            }
        }
        /* robust contrast: 0.5 and 99.7 percentiles */
        st = tmd_calloc(ctx, (void **)&sorted, (size_t)(oh * ow), sizeof(float), "render");
        if (st) goto cleanup;
        memcpy(sorted, img, sizeof(float) * (size_t)(oh * ow));
        qsort(sorted, (size_t)(oh * ow), sizeof(float), cmp_float);
        float lo = sorted[(size_t)((oh * ow - 1) * 0.005)], hi = sorted[(size_t)((oh * ow - 1) * 0.997)];
        if (!(hi > lo)) hi = lo + 1;
        for (int64_t i = 0; i < oh * ow; i++) {
            double t = (img[i] - lo) / (hi - lo);
            uint8_t g = (uint8_t)lround(255 * (t < 0 ? 0 : t > 1 ? 1 : t));
            cv.p[3 * i] = cv.p[3 * i + 1] = cv.p[3 * i + 2] = g;
        }
    } else {
        memset(cv.p, 96, (size_t)(oh * ow * 3));
    }
    double scale = (double)up / (double)fac; /* output px per input px */
#define OX(x) (((x) - rx + 0.5) * scale - 0.5)
#define OY(y) (((y) - ry + 0.5) * scale - 0.5)
    /* 2. density map (coarse), blended */
    int have_map = 0;
    if (opt->draw_maps) {
        const char *names[2] = {"/maps/unstable_density", "/maps/vacancy_density"};
        for (int k = 0; k < 2 && !have_map; k++) {
            if (!tmd_h5_exists(f, names[k])) continue;
            hid_t d = H5Dopen2(f, names[k], H5P_DEFAULT);
            hid_t s = H5Dget_space(d);
            hsize_t dims[3] = {0, 0, 0};
            int nd = H5Sget_simple_extent_ndims(s);
            if (nd >= 2 && nd <= 3) H5Sget_simple_extent_dims(s, dims, NULL);
            int64_t bin = 0;
            hid_t at = H5Aexists(d, "bin_px") > 0 ? H5Aopen(d, "bin_px", H5P_DEFAULT) : H5I_INVALID_HID;
            if (at >= 0) {
                H5Aread(at, H5T_NATIVE_INT64, &bin);
                H5Aclose(at);
            }
            size_t tot = (nd == 2) ? dims[0] * dims[1] : dims[0] * dims[1] * dims[2];
            if ((nd == 2 || nd == 3) && bin > 0 && tot > 0 && tot < ((size_t)1 << 28)) {
                map = malloc(sizeof(float) * tot);
                if (map && H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, map) >= 0) {
                    int64_t gh = nd == 2 ? (int64_t)dims[0] : (int64_t)dims[1], gw = nd == 2 ? (int64_t)dims[1] : (int64_t)dims[2];
                    int layers = nd == 2 ? 1 : (int)dims[0];
                    float vmax = 0;
                    for (int64_t i = 0; i < gh * gw; i++) {
                        float v = 0;
                        for (int l = 0; l < layers; l++) v += map[l * gh * gw + i];
                        map[i] = v;
                        if (v > vmax) vmax = v;
                    }
                    if (vmax > 0) {
                        have_map = 1;
                        for (int64_t y = 0; y < oh; y++)
                            for (int64_t x = 0; x < ow; x++) {
                                double ix = rx + (x + 0.5) / scale - 0.5, iy = ry + (y + 0.5) / scale - 0.5;
                                int64_t gx = (int64_t)floor(ix / bin), gy = (int64_t)floor(iy / bin);
                                if (gx < 0 || gy < 0 || gx >= gw || gy >= gh) continue;
                                double t = map[gy * gw + gx] / vmax;
                                if (t <= 0.05) continue;
                                uint8_t c[3];
                                cmap(t, c);
                                put(&cv, x, y, c, 0.08 + 0.42 * t);
                            }
                    }
                }
                free(map);
                map = NULL;
            }
            H5Sclose(s);
            H5Dclose(d);
        }
        /* regions: circles of equal area */
        int64_t nr = dset_rows(f, "/regions/x");
        if (nr > 0 && nr < 1000000 && dset_rows(f, "/regions/area_px") == nr) {
            double *qx = malloc(sizeof(double) * nr), *qy = malloc(sizeof(double) * nr), *qa = malloc(sizeof(double) * nr);
            if (qx && qy && qa && !read_block(ctx, f, result_path, "/regions/x", H5T_NATIVE_DOUBLE, 0, nr, qx) &&
                !read_block(ctx, f, result_path, "/regions/y", H5T_NATIVE_DOUBLE, 0, nr, qy) &&
                !read_block(ctx, f, result_path, "/regions/area_px", H5T_NATIVE_DOUBLE, 0, nr, qa)) {
                static const uint8_t yel[3] = {255, 230, 0};
                for (int64_t i = 0; i < nr; i++)
                    ring(&cv, OX(qx[i]), OY(qy[i]), sqrt(qa[i] / M_PI) * scale, 2.0, yel);
            }
            tmd_error_clear(ctx);
            free(qx);
            free(qy);
            free(qa);
        }
    }
    /* 3. atoms and vacancies, in blocks of rows */
    double bond = 0;
    {
        int64_t nl = dset_rows(f, "/lattice/a1");
        if (nl > 0) {
            int64_t nr1, nc1;
            double *a1 = NULL, *a2 = NULL;
            if (!tmd_h5_read_rows(ctx, f, "/lattice/a1", TMD_F64, &nr1, &nc1, (void **)&a1) && nc1 == 2 &&
                !tmd_h5_read_rows(ctx, f, "/lattice/a2", TMD_F64, &nr1, &nc1, (void **)&a2) && nc1 == 2) {
                int64_t fr = opt->frame < nr1 ? opt->frame : 0;
                double cr = fabs(a1[2 * fr] * a2[2 * fr + 1] - a1[2 * fr + 1] * a2[2 * fr]);
                bond = sqrt(cr / (sqrt(3.0) / 2)) / sqrt(3.0);
            }
            tmd_error_clear(ctx);
            free(a1);
            free(a2);
        }
    }
    double rad = bond > 0 ? 0.26 * bond * scale : 2.0;
    int64_t counts[TMD_SP_COUNT] = {0}, vcounts[4] = {0};
    const int64_t BLK = 1 << 20;
    if (opt->draw_atoms) {
        bx = malloc(sizeof(double) * BLK);
        by = malloc(sizeof(double) * BLK);
        bf = malloc(sizeof(int32_t) * BLK);
        bs = malloc(BLK);
        if (!bx || !by || !bf || !bs) {
            st = TMD_FAIL(ctx, TMD_ERR_NOMEM, "render: out of memory for atom blocks");
            goto cleanup;
        }
        for (int pass = 0; pass < 2; pass++) {
            const char *g = pass ? "/defects" : "/atoms";
            char nx[64], ny[64], nf[64], ns[64];
            snprintf(nx, sizeof nx, "%s/x", g);
            snprintf(ny, sizeof ny, "%s/y", g);
            snprintf(nf, sizeof nf, "%s/frame", g);
            snprintf(ns, sizeof ns, pass ? "%s/type" : "%s/species", g);
            int64_t na = dset_rows(f, nx);
            if (na <= 0) continue;
            int has_s = dset_rows(f, ns) == na, has_f = dset_rows(f, nf) == na;
            for (int64_t o = 0; o < na; o += BLK) {
                int64_t cnt = na - o < BLK ? na - o : BLK;
                st = read_block(ctx, f, result_path, nx, H5T_NATIVE_DOUBLE, o, cnt, bx);
                if (!st) st = read_block(ctx, f, result_path, ny, H5T_NATIVE_DOUBLE, o, cnt, by);
                if (!st && has_f) st = read_block(ctx, f, result_path, nf, H5T_NATIVE_INT32, o, cnt, bf);
                if (!st && has_s) st = read_block(ctx, f, result_path, ns, H5T_NATIVE_INT8, o, cnt, bs);
                if (st) goto cleanup;
                for (int64_t i = 0; i < cnt; i++) {
                    if (has_f && bf[i] != opt->frame) continue;
                    if (bx[i] < rx - 0.5 || by[i] < ry - 0.5 || bx[i] >= rx + rw - 0.5 || by[i] >= ry + rh - 0.5) continue;
                    int s = has_s ? bs[i] : 0;
                    if (pass == 0) {
                        if (s < 0 || s >= TMD_SP_COUNT) s = 0;
                        counts[s]++;
                        disc(&cv, OX(bx[i]), OY(by[i]), rad, SPECIES_RGB[s], 0.85);
                    } else {
                        if (s < 1 || s > 3) continue;
                        vcounts[s]++;
                        marker(&cv, s, OX(bx[i]), OY(by[i]), rad * 1.7);
                    }
                }
            }
        }
    }
    /* 4. legend and scale bar */
    if (opt->legend) {
        int sc = ow >= 900 ? 2 : 1;
        static const uint8_t white[3] = {255, 255, 255}, black[3] = {0, 0, 0};
        const char *names[TMD_SP_COUNT] = {"?", "Mo", "W", "S2", "SSe", "Se2", "S", "Se"};
        const char *vnames[4] = {"", "V_M", "V_X", "V_X2"};
        int nitems = 0;
        for (int k = 0; k < TMD_SP_COUNT; k++) nitems += counts[k] > 0;
        for (int k = 1; k < 4; k++) nitems += vcounts[k] > 0;
        if (have_map) nitems++;
        int64_t lh = (int64_t)(nitems * 10 + 6) * sc, lw = 70 * sc;
        if (nitems > 0 && lw < ow && lh < oh) {
            rect(&cv, 4, 4, lw, lh, black, 0.6);
            int64_t y = 4 + 4 * sc;
            for (int k = 0; k < TMD_SP_COUNT; k++) {
                if (!counts[k]) continue;
                disc(&cv, 4 + 7 * sc, y + 3.5 * sc, 3.0 * sc, SPECIES_RGB[k], 1.0);
                text(&cv, 4 + 14 * sc, y, names[k], sc, white);
                y += 10 * sc;
            }
            for (int k = 1; k < 4; k++) {
                if (!vcounts[k]) continue;
                marker(&cv, k, 4 + 7 * sc, y + 3.5 * sc, 3.0 * sc);
                text(&cv, 4 + 14 * sc, y, vnames[k], sc, white);
                y += 10 * sc;
            }
            if (have_map) {
                for (int i = 0; i < 10 * sc; i++) {
                    uint8_t c[3];
                    cmap(i / (10.0 * sc), c);
                    rect(&cv, 4 + 2 * sc + i, y, 1, 7 * sc, c, 1.0);
                }
                text(&cv, 4 + 14 * sc, y, "density", sc, white);
            }
        }
        if (pixel_size > 0) {
            /* a round length near a fifth of the width */
            double target_nm = ow / scale * pixel_size / 10.0 / 5.0, len_nm = 0.1;
            static const double nice[] = {0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000};
            for (size_t i = 0; i < sizeof nice / sizeof nice[0]; i++)
                if (nice[i] <= target_nm) len_nm = nice[i];
            int64_t bl = (int64_t)lround(len_nm * 10.0 / pixel_size * scale);
            char lab[32];
            if (len_nm < 1) snprintf(lab, sizeof lab, "%.1f nm", len_nm);
            else snprintf(lab, sizeof lab, "%.0f nm", len_nm);
            int64_t bh = 4 * sc, by0 = oh - 6 * sc - 10 * sc - bh;
            if (bl > 4 && bl + 16 < ow && by0 > 0) {
                rect(&cv, 6, by0 - 3 * sc, bl + 8 + 0, bh + 16 * sc, black, 0.55);
                rect(&cv, 10, by0 + 12 * sc, bl, bh, white, 1.0);
                text(&cv, 10, by0, lab, sc, white);
            }
        }
    }
    st = tmd_png_write_rgb(ctx, png_path, cv.p, oh, ow);
    if (!st)
        tmd_info(ctx, "render: %s (%lld x %lld, 1 px = %.3g input px), frame %lld, region %lld,%lld,%lld,%lld", png_path,
                 (long long)ow, (long long)oh, 1.0 / scale, (long long)opt->frame, (long long)rx, (long long)ry,
                 (long long)rw, (long long)rh);
#undef OX
#undef OY
cleanup:
    if (f >= 0) H5Fclose(f);
    free(input);
    tmd_reader_close(&rd);
    free(img);
    free(strip);
    free(sorted);
    free(map);
    free(bx);
    free(by);
    free(bf);
    free(bs);
    free(cv.p);
    return st;
}
