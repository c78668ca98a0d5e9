/* tmd/render.h — pictures of a result: the input image with every atom coloured by species,
 * vacancies marked by type, density maps and defect-rich regions, a legend and a scale bar,
 * written as PNG (libpng).
 *
 * Role: `tmdflow render RESULT.h5 -o PICTURE.png [--frame T] [--region x,y,w,h] [--max-size N]`.
 * The image is read from the input named by the result's `input` attribute through tmd_reader,
 * only the region asked for, one output row (= `factor` input rows) at a time and
 * box-averaged by `factor` = ceil(max(w, h) / max_size): a gigapixel result is rendered by
 * region or downsampled and never held whole. Atoms and defects are read from the result in
 * blocks of rows (hyperslabs) and only those in the frame and region are drawn. When the input
 * cannot be opened the picture is drawn on a grey background and a warning is logged.
 *
 * Usage:
 *     tmd_render_opts o; tmd_render_opts_default(&o);
 *     o.frame = 0; o.region[0..3] = x, y, w, h (w = h = 0: the whole frame); o.max_size = 2048;
 *     st = tmd_render(ctx, "R.h5", "R.png", &o);          // not collective; rank 0 only
 *
 * Colours: Mo blue, W red, S2 yellow, SSe orange, Se2 green, S pale yellow, Se teal, unknown
 * grey; V_M magenta square, V_X cyan cross (over the remaining S/Se column), V_X2 white
 * diamond; density maps (/maps/vacancy_density, else /maps/unstable_density) blended with an
 * inferno-like colour map; regions as yellow circles of equal area.
 * Layout: PNG 8-bit RGB, (height, width) = ceil(region / factor). Allocates per call, frees
 * everything before returning.
 */
#ifndef TMD_RENDER_H
#define TMD_RENDER_H

#include "tmd/core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tmd_render_opts {
    int64_t frame;           /* frame to draw (default 0) */
    int64_t region[4];       /* x, y, w, h in input pixels; w or h 0 = whole frame */
    int max_size;            /* longest edge of the picture, pixels (default 2048) */
    int draw_atoms;          /* default 1 */
    int draw_maps;           /* default 1 */
    int legend;              /* default 1: legend and scale bar */
} tmd_render_opts;

void tmd_render_opts_default(tmd_render_opts *o);

/* Renders result_path to png_path. Not collective. Errors name the file and what failed. */
tmd_status tmd_render(tmd_ctx *ctx, const char *result_path, const char *png_path, const tmd_render_opts *o);

/* Writes an RGB image (h, w, 3) as PNG. */
tmd_status tmd_png_write_rgb(tmd_ctx *ctx, const char *path, const uint8_t *rgb, int64_t h, int64_t w);

/* Species colour (DESIGN.md codes), 3 bytes. */
void tmd_render_species_colour(int species, uint8_t rgb[3]);

#ifdef __cplusplus
}
#endif
#endif
