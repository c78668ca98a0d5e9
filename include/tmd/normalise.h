/* tmd/normalise.h — intensity normalisation (background removal + global robust levels) and
 * resampling to the nominal pixel size. ONE definition serves the pipeline and the training
 * data: models see exactly the statistics they were trained on.
 *
 * The normalised image is
 *     N(t, y, x) = (I(t, y, x) - B(t, y, x) - lo) / (hi - lo)
 * where
 *   - B is a smooth background: the frame's Gaussian blur at background_sigma (Angstrom),
 *     computed on a coarse grid of cells (about sigma/2 wide; cells are aligned with the
 *     tile grid, so each cell lies in one tile, and B depends on the tile size), smoothed
 *     separably over cells by a Gaussian-weighted least-squares line per axis (in the
 *     interior the normalised Gaussian average; at the image edges it follows a slope
 *     instead of flattening it), and interpolated bilinearly between cell centres,
 *     extrapolated linearly beyond the outermost centres: a plane (a linear ramp) is
 *     removed exactly everywhere. background_sigma = 0 switches it off (B = 0); the
 *     default (10 A) makes images that are not background-subtracted look like ones that are.
 *   - lo, hi are the clip_low and clip_high percentiles of I - B over the whole image or
 *     stack, from a global histogram (65536 bins between the global min and max, counts
 *     reduced with MPI_Allreduce) of the pixels whose row and column are multiples of a
 *     step s = ceil(sqrt(T*H*W / 2^22)) (s = 1, every pixel, up to 4 Mpixel).
 * The network input is clamp(N, 0, 1) (tmd_normalise_clamp) — with background_sigma = 0 and
 * the default clip_low/clip_high this is the robust 0.5/99.9-percentile mapping of
 * tmd_sim_normalise that the shipped models are trained on (up to the histogram's bin width,
 * range/65536); on images with a smooth background (the simulator's) the default removal
 * changes it little (docs/accuracy.md). Measurements (column intensities) use the unclamped N, so the brightest
 * columns keep their contrast above 1.
 * Every quantity is computed in a fixed order per tile and combined exactly (integer counts,
 * sums that have one non-zero contributor), so the result is bit-identical on any number
 * of ranks. The background sees across tile and rank edges: the coarse cell sums are halo-
 * exchanged (tmd/halo.h) before the blur.
 *
 * Pipeline use (collective where marked; d is the run's decomposition):
 *     tmd_normalise *n = NULL;
 *     TMD_CHECK(tmd_normalise_create(ctx, d, &cfg, input_px, &n));      // collective
 *     for each local tile:  read its core (frames, h, w) -> tmd_normalise_accumulate(ctx, n, &core, pix);
 *     TMD_CHECK(tmd_normalise_finish(ctx, n));                           // collective
 *     for each local tile:  read core + halo -> tmd_normalise_apply(ctx, n, &grown, pix);
 *     tmd_normalise_destroy(&n);                                         // collective
 *
 * Training / single images (serial, any rank; the same numbers as the pipeline):
 *     TMD_CHECK(tmd_normalise_image(ctx, &cfg, input_px, frames, h, w, img, out));
 *
 * Resampling: tmd_resample maps an input region to the nominal grid. Nominal pixel (Y, X)
 * sits at input coordinate (Y * s, X * s), s = nominal_px / input_px (pixel centres, (0, 0)
 * = centre of the top-left pixel of both grids). Each output value is a separable tent
 * (triangle) filter of half-width max(1, s) input pixels: bilinear interpolation when
 * enlarging (s <= 1), an anti-aliasing average when shrinking (s > 1). Outside the image,
 * coordinates reflect at the image edge (the image, not the region).
 *
 * Layout: pixel buffers are float32 (frames, h, w) row-major over the box they cover.
 * Ownership: the normalise object owns its coarse grids and halo exchange; callers own the
 * pixel buffers.
 */
#ifndef TMD_NORMALISE_H
#define TMD_NORMALISE_H

#include "tmd/config.h"
#include "tmd/core.h"
#include "tmd/decomp.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tmd_normalise tmd_normalise;

/* Number of histogram bins and the sample budget that sets the step s. */
enum { TMD_NORM_BINS = 65536 };
#define TMD_NORM_SAMPLE_BUDGET 4194304.0

/* Collective over d->cart. Builds the coarse background grid for this rank's domain and its
 * halo exchange. input_px: Angstrom per input pixel (> 0). */
tmd_status tmd_normalise_create(tmd_ctx *ctx, const tmd_decomp *d, const tmd_config *cfg, double input_px,
                                tmd_normalise **out);

/* Not collective. Adds one tile core's raw pixels (frames, h, w) over `core` (a tile core
 * from tmd_decomp_tile_box of one of this rank's tiles). Call once per local tile, in the
 * order of tmd_decomp_local_tile. */
tmd_status tmd_normalise_accumulate(tmd_ctx *ctx, tmd_normalise *n, const tmd_box *core, const float *pix);

/* Collective. Exchanges the coarse halo, blurs the background, reduces the histogram and
 * fixes lo and hi. */
tmd_status tmd_normalise_finish(tmd_ctx *ctx, tmd_normalise *n);

/* Not collective, after finish. Normalises pix (frames, h, w) over `box` in place; `box`
 * must lie within a local tile's core grown by the decomposition's halo (TMD_ERR_RANGE
 * otherwise). */
tmd_status tmd_normalise_apply(tmd_ctx *ctx, const tmd_normalise *n, const tmd_box *box, float *pix);

/* The levels after finish: I - B = lo maps to 0, hi to 1. */
void tmd_normalise_levels(const tmd_normalise *n, double *lo, double *hi);

/* Background B at one pixel (after finish; the pixel must be inside the range apply accepts;
 * returns NAN otherwise). */
double tmd_normalise_background(const tmd_normalise *n, int64_t t, int64_t y, int64_t x);

/* Collective (over the comm of the decomposition given at create). Accepts NULL. */
void tmd_normalise_destroy(tmd_normalise **n);

/* Serial: the network input for a whole image or stack (frames, h, w) held in memory:
 * clamp(N, 0, 1), exactly as the pipeline feeds the U-Net with this configuration and pixel
 * size. THE function for training data. out may equal img. Uses the configuration's tile,
 * frames_per_tile, nominal_pixel_size, background_sigma, clip_low, clip_high. */
tmd_status tmd_normalise_image(tmd_ctx *ctx, const tmd_config *cfg, double input_px, int64_t frames, int64_t h,
                               int64_t w, const float *img, float *out);

/* Clamps n values to [0, 1] in place (the network input). */
void tmd_normalise_clamp(float *pix, int64_t n);

/* Resamples frame data `in` (h, w) covering input rows [y0, y0 + h) and columns
 * [x0, x0 + w) of an image of img_h x img_w pixels onto the nominal grid rows
 * [Y0, Y0 + oh) and columns [X0, X0 + ow): out (oh, ow). s = nominal_px / input_px. The
 * region must cover the filter support of every output pixel after reflection at the image
 * edge; samples that fall outside it are clamped into it. `tmp` is scratch of oh * w floats
 * (NULL: allocated and freed inside). Not collective. */
tmd_status tmd_resample(tmd_ctx *ctx, const float *in, int64_t y0, int64_t x0, int64_t h, int64_t w, int64_t img_h,
                        int64_t img_w, double s, int64_t Y0, int64_t X0, int64_t oh, int64_t ow, float *out, float *tmp);

/* Input rows [*lo, *hi) that tmd_resample needs for nominal rows [Y0, Y0 + n) (before
 * clipping to the image; reflection brings outside rows back in). */
void tmd_resample_support(double s, int64_t Y0, int64_t n, int64_t *lo, int64_t *hi);

#ifdef __cplusplus
}
#endif
#endif
