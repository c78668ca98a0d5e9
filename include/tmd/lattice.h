/* tmd/lattice.h — FFT lattice registration of a hexagonal TMD monolayer, the pixel size from
 * the measured period, and local fits of ideal lattice sites.
 *
 * Role: seen along [001] a 2H monolayer is a honeycomb whose Bravais lattice is hexagonal
 * with constant a (3.15-3.29 Angstrom). Its first-order reflections — the {100} family of
 * the 2H cell — lie on a hexagon of radius |g| = 2 / (sqrt(3) a) in the power spectrum. This
 * module finds that hexagon in a tile's windowed power spectrum (never a higher order such as
 * {110} at sqrt(3)|g| — the strongest reflections when the two sublattices look alike — or
 * {200}, {300} at small pixel sizes: the strongest set of peaks is walked down to the first
 * order by testing its sub-harmonic places, which hold peaks only if it is a higher order;
 * never a sub-harmonic), refines the six peaks to sub-pixel precision together with the
 * second-order peaks, and returns the lattice vectors a1, a2 in pixels, the rotation and the
 * period. With a lattice constant (default 3.22 Angstrom, refined by Vegard's law once the
 * composition is known) the period gives the pixel size: the area-based period (period_px) the
 * isotropic scale the models see, the period along x (tmd_lattice_period_fast) the pixel size
 * proper, which a slow-scan compression of the rows does not change. A tile without a lattice (vacuum,
 * amorphous carbon, a period outside the searched range, or peaks whose lattice vectors differ
 * in length by more than 25 %) is TMD_ERR_NOLATTICE with a message saying how strong the best
 * hexagonal candidate was — never a guess.
 *
 * Usage (plan once per tile size, execute per tile/frame, as in FFTW):
 *     tmd_lattice_plan *p = NULL;
 *     TMD_CHECK(tmd_lattice_plan_create(ctx, 512, 512, NULL, &p));   // NULL: default options
 *     tmd_lattice lat;
 *     st = tmd_lattice_measure(ctx, p, tile, 512, &lat);               // tile (512, 512) row-major
 *     if (st == TMD_ERR_NOLATTICE) ...                                  // vacuum / amorphous tile
 *     double px = tmd_lattice_pixel_size(&lat, 3.22);                    // Angstrom per pixel
 *     tmd_lattice_plan_destroy(&p);
 *
 *     // one lattice per frame from many tiles, the same on every rank and rank count:
 *     st = tmd_lattice_allreduce(ctx, comm, n_local, tile_ids, tile_lats, &frame_lat);
 *
 *     // ideal sites near (cx, cy), strain tolerated: local affine fit of found atoms
 *     tmd_lattice_local fit;
 *     st = tmd_lattice_fit_local(ctx, &frame_lat, n, xs, ys, cx, cy, 2.5 * frame_lat.period_px, &fit);
 *     double sx, sy; tmd_lattice_local_site(&fit, i, j, sub, &sx, &sy);
 *
 * Conventions: coordinates are (x = column, y = row) in pixels; a reciprocal vector g is in
 * cycles per pixel. a1 has angle in [0, 60) degrees measured from +x towards +y (image rows
 * grow downwards), a2 is a1 turned by about +60 degrees; |a1| ~ |a2| ~ period. A honeycomb
 * has its two sublattices at s and s + (a1 + a2) / 3 (+ integer combinations); which of them
 * is the metal is not a geometric question (tmd/classify.h decides it from the intensities).
 *
 * Layout: tiles are float32 (h, w) row-major with a row stride in elements. The plan owns its
 * FFTW buffers (one r2c plan made with FFTW_ESTIMATE, so results are bit-identical from run to
 * run); tmd_lattice_measure allocates nothing. Not collective, except tmd_lattice_allreduce.
 * A plan is not thread-safe (give each thread its own). Free with tmd_lattice_plan_destroy
 * (accepts NULL, clears the handle).
 */
#ifndef TMD_LATTICE_H
#define TMD_LATTICE_H

#include "tmd/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Lattice constants of the binary end members (Angstrom) and the default. */
#define TMD_A_MOS2 3.160
#define TMD_A_WS2 3.153
#define TMD_A_MOSE2 3.288
#define TMD_A_WSE2 3.282
#define TMD_A_DEFAULT 3.22

typedef struct tmd_lattice_opts {
    double min_period_px;   /* shortest lattice period searched, pixels (default 6) */
    double max_period_px;   /* longest, pixels (default 80; must fit >= 4 periods in the tile) */
    double min_strength;    /* weakest of the three first-order peaks over the radial background
                               of the power spectrum for a lattice to count (default 12) */
    int refine_dtft;        /* 1 (default): refine each peak by maximising the DTFT magnitude at
                               continuous frequency (~1e-3 bins; costs ~100 passes over the tile);
                               0: Gaussian interpolation on the FFT grid only (~0.05 bins) */
} tmd_lattice_opts;

void tmd_lattice_opts_default(tmd_lattice_opts *o);

typedef struct tmd_lattice {
    double a1[2], a2[2];    /* lattice vectors (x, y), pixels */
    double g1[2], g2[2];    /* dual basis of a1, a2 (gi . aj = delta_ij), cycles / pixel: two
                               first-order reflections, |g| = 2 / (sqrt(3) |a|), 120 deg apart */
    double period_px;       /* sqrt(cell area / (sqrt(3)/2)): the lattice constant in pixels, robust
                               to shear from scan distortion */
    double rotation_deg;    /* angle of a1, [0, 60) */
    double distortion;      /* max | |ai| / period - 1 | over a1, a2, a2 - a1: 0 for a perfect hexagon */
    double strength;        /* weakest first-order peak / radial background (>= min_strength) */
    int n_peaks;            /* peaks used in the fit (3 first order + up to 3 second order) */
    int valid;              /* 1 when measured; 0 in a zeroed struct */
} tmd_lattice;

typedef struct tmd_lattice_plan tmd_lattice_plan;

/* Plans the FFT and allocates the buffers for (h, w) tiles. opts may be NULL (defaults). */
tmd_status tmd_lattice_plan_create(tmd_ctx *ctx, int h, int w, const tmd_lattice_opts *opts, tmd_lattice_plan **out);

/* Measures the lattice of one (h, w) tile (row stride `stride` elements). Allocates nothing.
 * TMD_ERR_NOLATTICE (message recorded) when the tile shows no hexagonal lattice. */
tmd_status tmd_lattice_measure(tmd_ctx *ctx, tmd_lattice_plan *p, const float *tile, int64_t stride, tmd_lattice *out);

void tmd_lattice_plan_destroy(tmd_lattice_plan **p);

/* Angstrom per pixel for lattice constant a_angstrom: area-based (period_px), the isotropic
 * scale that maps the measured cell onto an ideal one of the same area. */
double tmd_lattice_pixel_size(const tmd_lattice *lat, double a_angstrom);

/* The lattice constant in pixels along x, the fast-scan axis. The measured basis B = [a1 a2]
 * (columns, pixels) is split as B = T R A0 with A0 an ideal hexagonal basis of constant 1, R
 * a rotation and T = [[t11, t12], [0, t22]] upper triangular: the scan's own distortion, in
 * which a slow-scan drift shears the rows (t12) and compresses or stretches them apart (t22)
 * but leaves the fast-scan axis alone. t11 = |det B A0^-1| / |row 2 of B A0^-1| is returned.
 * Equal to period_px for an undistorted lattice; with rows (1 + c) x farther apart than the
 * pixels of a row, period_px is off by about c / 2 and this is not. 0 for an invalid lattice. */
double tmd_lattice_period_fast(const tmd_lattice *lat);
/* The same for a basis a1, a2 given as vectors (pixels; either handedness). */
double tmd_lattice_basis_period_fast(const double a1[2], const double a2[2]);

/* Lattice constant of Mo(1-x)W(x)S(2(1-y))Se(2y) by Vegard's law (bilinear between the four
 * binary end members), Angstrom. */
double tmd_lattice_vegard(double x_w, double y_se);

/* The same lattice seen at another pixel size: every length multiplied by `factor`
 * (old pixel size / new pixel size). */
void tmd_lattice_scale(tmd_lattice *lat, double factor);

/* Fills a1, a2, period, rotation, distortion from g1, g2 (cycles / pixel), choosing the
 * canonical pair (a1 angle in [0, 60), a2 ~ a1 + 60 deg). */
void tmd_lattice_from_reciprocal(tmd_lattice *lat, const double g1[2], const double g2[2]);

/* Combines per-tile measurements of one frame into one lattice: every valid tile is turned to
 * the equivalent of the strongest tile's basis and the component-wise median is taken.
 * Deterministic for a given list. TMD_ERR_NOLATTICE if no tile is valid. Not collective. */
tmd_status tmd_lattice_combine(tmd_ctx *ctx, int64_t n, const tmd_lattice *tiles, tmd_lattice *out);

/* Collective over comm. Each rank passes its n_local tile measurements with their global tile
 * ids (invalid tiles may be passed with valid = 0); every rank gets the combination of all
 * tiles taken in tile-id order, so the answer does not depend on the number of ranks. */
tmd_status tmd_lattice_allreduce(tmd_ctx *ctx, MPI_Comm comm, int64_t n_local, const int64_t *tile_ids,
                                 const tmd_lattice *tiles, tmd_lattice *out);

/* ---- whole inputs -------------------------------------------------------------------- */

struct tmd_reader;

/* Collective over comm. Measures the lattice of every frame of an input: per frame, up to
 * `max_tiles` (e.g. 9 for a single image, 1 for long stacks) tiles of edge `tile`
 * (clipped to the frame) around the frame centre are read with tmd_reader_read and
 * measured; the (frame, tile) work is dealt round-robin over the ranks and combined in
 * tile order, so every rank gets the same out[frame] on any number of ranks. A frame with
 * no lattice takes its nearest valid frame's lattice (logged); if no frame has one:
 * TMD_ERR_NOLATTICE naming the input. out has `frames` entries (the input's frame count). */
tmd_status tmd_lattice_measure_input(tmd_ctx *ctx, MPI_Comm comm, struct tmd_reader *reader, int tile, int max_tiles,
                                     const tmd_lattice_opts *opts, tmd_lattice *out);

/* ---- pipeline stage (tmd/pipeline.h) ---------------------------------------------------- */

struct tmd_run;
/* Collective. The "lattice" stage: measures every frame of run->reader (after "open"),
 * fills run->lattice_a1/a2 (frames x 2, every rank). No lattice: TMD_ERR_NOLATTICE naming
 * the input unless a pixel size was given (then a warning, and no /lattice). */
tmd_status tmd_stage_lattice(tmd_ctx *ctx, struct tmd_run *run);
/* Isotropic scale from the measured lattice (median area-based period over frames) and a
 * lattice constant, Angstrom per pixel: what the models' resampling needs. */
tmd_status tmd_lattice_run_pixel_size(tmd_ctx *ctx, struct tmd_run *run, double a_angstrom, double *pixel_size);
/* Pixel size along the fast-scan axis x (median of tmd_lattice_period_fast over frames) for
 * a lattice constant, Angstrom per pixel: the pixel size a microscope's calibration states
 * (a slow-scan drift changes the row spacing, not the spacing of the pixels along a row). */
tmd_status tmd_lattice_run_pixel_size_fast(tmd_ctx *ctx, struct tmd_run *run, double a_angstrom, double *pixel_size);

/* ---- local ideal-site fit ------------------------------------------------------------- */

/* A local affine model of the honeycomb: site (i, j, sub) sits at
 *     origin + i * a1 + j * a2 + (sub == 1 ? (a1 + a2) * third : 0)
 * where third = +1/3 or -1/3 tells on which side the second sublattice lies. Sublattice 0 is
 * the one the atom nearest the centre belongs to. Strain, shear and local rotation are
 * absorbed into a1, a2 (fitted), so the model predicts empty sites in a distorted lattice. */
typedef struct tmd_lattice_local {
    double origin[2];       /* position of site (0, 0, 0), pixels */
    double a1[2], a2[2];    /* local lattice vectors, pixels */
    double third;           /* +1/3 or -1/3 */
    double rms;             /* rms residual of the atoms used, pixels */
    int n_used;             /* atoms used in the fit */
} tmd_lattice_local;

/* Fits the local model to the atoms (xs, ys) within `radius` of (cx, cy), starting from the
 * global lattice `lat`. Needs >= 6 atoms in the window (TMD_ERR_RANGE otherwise, not
 * recorded as an error message: the caller decides). Not collective, allocates nothing. */
tmd_status tmd_lattice_fit_local(tmd_ctx *ctx, const tmd_lattice *lat, int64_t n, const double *xs, const double *ys,
                                 double cx, double cy, double radius, tmd_lattice_local *out);

/* Position of site (i, j, sub) of a local fit. */
void tmd_lattice_local_site(const tmd_lattice_local *fit, int64_t i, int64_t j, int sub, double *x, double *y);

/* Indices of the site nearest (x, y): returns the squared distance (pixels^2) to it. */
double tmd_lattice_local_index(const tmd_lattice_local *fit, double x, double y, int64_t *i, int64_t *j, int *sub);

#ifdef __cplusplus
}
#endif
#endif
