/* tmd/drift.h — frame drift of a time-series stack by phase correlation (FFTW), sub-pixel.
 *
 * Role: the specimen drifts under the beam; every later stage (tracking, instability,
 * density) works in frame-0 coordinates, so the drift of every frame against frame 0 must be
 * known to a fraction of a pixel. Two things make this hard on TMD lattices:
 *   - the lattice is periodic, so the correlation has a peak at every lattice vector, all
 *     nearly as high as the true one. A search that roams the whole correlation locks onto a
 *     wrong period. Here every search is restricted to a disc of radius < half the shortest
 *     period of the lattice (measured once from the autocorrelation of frame 0's window)
 *     around a prediction, so at most one lattice peak is inside it;
 *   - contamination moves on its own and noise is high: the cross-power spectrum is
 *     partially whitened (|F1 F2|^-alpha), high-passed (structures larger than highpass_px,
 *     i.e. contamination blobs and background, carry no weight) and low-passed (noise), and
 *     the window is apodised (Hann along x, a Tukey taper along y: tmd_drift_opts.taper_y) so its
 *     edges do not correlate.
 * Sub-pixel: parabolic fit of the 3x3 peak, then an upsampled matrix DFT of the cross-power
 * spectrum around it (Guizar-Sicairos et al., Opt. Lett. 33, 156 (2008)), parabolic on that.
 *
 * Stack drift (tmd_drift_stack): each rank registers its own contiguous block of frames.
 * The rank owning frame t also reads the window of frame t-1 (so pairs that straddle a
 * rank boundary are measured once), sums its steps, and MPI_Exscan over (dx, dy) of the
 * block totals gives each block its starting drift. This chained estimate (gathered on
 * every rank) only has to be right to within half a lattice period; the precision comes
 * from references with little noise:
 *   - the stack is cut into keyframe segments: a new keyframe whenever the content has
 *     moved by a quarter of the frame's free margin, so long stacks that drift far beyond
 *     the field of view are handled (no frame has to overlap frame 0);
 *   - every frame is registered against its keyframe's window content (read at the chained
 *     integer offset, so the residual shift is small and the apodisation does not bias it),
 *     then against the mean of its segment aligned to the keyframe (sqrt(len) less noise;
 *     summed in fixed point, so the same on any rank count), corrected for the keyframe's own
 *     offset against that mean;
 *   - keyframes are chained through the segments: segment s's frames read where segment
 *     s-1's content sits in them, averaged and registered against segment s-1's mean.
 *
 * Convention (DESIGN.md /drift): drift[t] = (dx, dy) means what sits at (x, y) in frame 0
 * appears at (x + dx, y + dy) in frame t; drift[0] = (0, 0).
 *
 * Usage:
 *     tmd_drift_opts o; tmd_drift_opts_default(&o);
 *     tmd_drift_plan *p = NULL;
 *     TMD_CHECK(tmd_drift_plan_create(ctx, 256, &o, &p));          // FFTW plans made once
 *     double d[2], q;                                                // one pair:
 *     st = tmd_drift_register(ctx, p, ref, mov, 0, 0, radius, d, &q); // ref, mov: (256, 256)
 *     // a whole stack, frames read through a callback (e.g. tmd_reader_read):
 *     st = tmd_drift_stack(ctx, comm, p, read_fn, reader, T, H, W, t0, nt, drift);  // drift: (T, 2)
 *     tmd_drift_plan_destroy(&p);
 *
 * Layout: windows are (n, n) float32 row-major; drift arrays are (T, 2) float64, (dx, dy).
 * Collective: tmd_drift_stack only (over `comm`). Ownership: the plan owns its FFTW buffers
 * and plans; the caller owns every array passed in. A plan is not thread-safe.
 */
#ifndef TMD_DRIFT_H
#define TMD_DRIFT_H

#include "tmd/core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tmd_drift_opts {
    int window;           /* registration window edge, px (even; 0 = 256); clipped to the frame */
    double alpha;         /* whitening exponent: 0 = cross-correlation, 1 = phase correlation */
    double lowpass;       /* Gaussian low-pass sigma of the spectrum, cycles/px (noise) */
    double highpass_px;   /* structures larger than this (px) get no weight (contamination) */
    double max_radius_px; /* cap on the search radius, px (0 = only the lattice rule) */
    int upsample;         /* sub-pixel refinement factor of the matrix DFT (e.g. 40) */
    int refine_to_first;  /* 1: refine the chain against keyframes (recommended; 0 = chain only) */
    int mean_reference;   /* 1: and against the mean of each keyframe segment */
    double taper_y;       /* apodisation along y: Tukey taper share of the rows (1 = Hann; default
                           * 0.75: flat middle quarter, averages the scan's line wobble over more rows) */
} tmd_drift_opts;

void tmd_drift_opts_default(tmd_drift_opts *o);

typedef struct tmd_drift_plan tmd_drift_plan;

/* Builds FFTW plans and buffers for (n, n) windows (n even, 16..4096). Not collective. */
tmd_status tmd_drift_plan_create(tmd_ctx *ctx, int n, const tmd_drift_opts *opts, tmd_drift_plan **out);
void tmd_drift_plan_destroy(tmd_drift_plan **p);
int tmd_drift_plan_size(const tmd_drift_plan *p);

/* Shortest period (px) of the pattern in `win` (n, n): distance to the nearest secondary
 * maximum of its band-passed autocorrelation above 0.25 of the central peak; n/2 when there
 * is none (no lattice). Allocates nothing. */
tmd_status tmd_drift_period(tmd_ctx *ctx, tmd_drift_plan *p, const float *win, double *period);

/* Registers `mov` against `ref` (both (n, n)): d = (dx, dy) with mov(x) ≈ ref(x - d). The
 * peak is searched within `radius` px of (gx, gy) (radius <= 0: anywhere). quality (may be
 * NULL) = peak height over the RMS of the correlation (higher = more certain). Allocates
 * nothing. */
tmd_status tmd_drift_register(tmd_ctx *ctx, tmd_drift_plan *p, const float *ref, const float *mov, double gx,
                              double gy, double radius, double d[2], double *quality);

/* Reads rows y0..y0+h-1, columns x0..x0+w-1 of `frame` into out (h, w); tmd_reader_read
 * has this shape (pass it with the reader as `user`). */
typedef tmd_status (*tmd_frame_read_fn)(tmd_ctx *ctx, void *user, int64_t frame, int64_t y0, int64_t x0, int64_t h,
                                        int64_t w, float *out);

/* The block of frames that rank `rank` of `nranks` registers: contiguous, balanced. */
void tmd_drift_block(int64_t frames, int rank, int nranks, int64_t *t0, int64_t *nt);

/* Collective over comm. Drift of every frame of a (T, H, W) stack. This rank registers frames
 * [t0, t0 + nt) (blocks in rank order must tile [0, T); nt may be 0), reading frames through
 * `read` (frame 0, frame t0 - 1 and its own). On return every rank holds the whole drift
 * (T, 2) (Allgatherv). The search radius is < half the shortest lattice period of frame 0,
 * so the frame-to-frame step must be smaller than that (a few Angstrom per frame). */
tmd_status tmd_drift_stack(tmd_ctx *ctx, MPI_Comm comm, tmd_drift_plan *p, tmd_frame_read_fn read, void *user,
                           int64_t T, int64_t H, int64_t W, int64_t t0, int64_t nt, double *drift);

#ifdef __cplusplus
}
#endif
#endif
