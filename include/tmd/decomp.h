/* tmd/decomp.h — the global tile grid and its assignment to ranks.
 *
 * Role: an image (or stack) of T x H x W input pixels is cut into a global grid of tiles
 * that depends only on the configuration (tile edge, frames per tile) and the pixel size,
 * never on the number of ranks. Tiles are dealt to ranks as contiguous, balanced blocks
 * over an MPI Cartesian communicator: 2-D (y, x) for single images and mosaics, 3-D
 * (t, y, x) for stacks. Because a tile's result depends only on its pixels and halo, any
 * rank count gives the same answer; the decomposition only decides who computes what.
 *
 * The grid lives in input-pixel space. The tile edge in input pixels is
 *     tile_px = round(tile * nominal_pixel_size / input_pixel_size)
 * (tmd_decomp_tile_edge), the halo is ceil(halo * nominal / input). The last tile of a
 * row/column/time block may be smaller when the grid does not divide the image.
 *
 * Usage:
 *     int64_t dims[3]  = {frames, height, width};
 *     int64_t tile[3]  = {cfg.frames_per_tile, te, te};     // te = tmd_decomp_tile_edge(...)
 *     int64_t halo[3]  = {0, he, he};
 *     tmd_decomp *d = NULL;
 *     TMD_CHECK(tmd_decomp_create(ctx, comm, dims, tile, halo, NULL, &d));   // collective
 *     for (int64_t i = 0; i < d->nlocal; i++) {
 *         int64_t g = tmd_decomp_local_tile(d, i);           // global tile index
 *         tmd_box core, grown;
 *         tmd_decomp_tile_box(d, g, &core, &grown);         // grown = core + halo, clipped
 *         ... read `grown`, keep results whose centre lies in `core` ...
 *     }
 *     tmd_decomp_destroy(&d);                                // collective (frees the cart comm)
 *
 * Layout: boxes are half-open [lo, hi) per axis in the order (t, y, x), int64 global
 * input-pixel (and frame) indices. Tiles are numbered row-major over (t, y, x) of the tile
 * grid: g = (it * ntiles[1] + iy) * ntiles[2] + ix. A rank's local tiles are listed
 * row-major within its block, so a rank's domain (the union of its tiles) is one box.
 * Ownership of a point: pixel centre (0,0) is the centre of the top-left pixel, so a point
 * (y, x) lies in the pixel (floor(y + 0.5), floor(x + 0.5)) (tmd_decomp_pixel_of).
 *
 * Collective: tmd_decomp_create and tmd_decomp_destroy (over `comm`). Everything else is
 * local and answers for any tile or rank (the layout is known everywhere).
 * Ownership: the decomposition owns its Cartesian communicator (`cart`), freed by destroy.
 */
#ifndef TMD_DECOMP_H
#define TMD_DECOMP_H

#include "tmd/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A half-open box [lo, hi) over (t, y, x). */
typedef struct tmd_box {
    int64_t lo[3], hi[3];
} tmd_box;

/* Number of elements in a box (0 if empty along any axis). */
int64_t tmd_box_volume(const tmd_box *b);
/* Intersection of a and b into out; returns 1 if non-empty. */
int tmd_box_intersect(const tmd_box *a, const tmd_box *b, tmd_box *out);

typedef struct tmd_decomp {
    int64_t dims[3];     /* image extent (frames, height, width), input pixels */
    int64_t tile[3];     /* tile extent (frames_per_tile, tile_px, tile_px) */
    int64_t halo[3];     /* halo width per axis, input pixels (halo[0] is normally 0) */
    int64_t ntiles[3];   /* tile grid: ceil(dims / tile) per axis */
    int64_t ntiles_total;
    int cart_ndims;      /* 2 (mosaic: pdims[0] == 1) or 3 (stack) */
    int pdims[3];        /* process grid over (t, y, x) */
    int coords[3];       /* this rank's coordinates in the process grid */
    int rank, nranks;    /* in cart (reorder is off, so equal to the rank in the input comm) */
    MPI_Comm cart;       /* Cartesian communicator (owned) */
    int64_t tlo[3], thi[3]; /* this rank's block of tiles, [tlo, thi) in tile indices */
    int64_t nlocal;      /* tiles in this rank's block */
    int64_t max_local;   /* largest nlocal over all ranks */
} tmd_decomp;

/* Tile edge in input pixels for a tile of `tile` pixels at the nominal scale:
 * round(tile * nominal_px / input_px), at least 1. */
int64_t tmd_decomp_tile_edge(int64_t tile, double nominal_px, double input_px);
/* Halo in input pixels: ceil(halo * nominal_px / input_px). */
int64_t tmd_decomp_halo_edge(int64_t halo, double nominal_px, double input_px);

/* Collective over comm. Builds the tile grid and the process grid. `pdims_req` (may be
 * NULL) forces a process grid (t, y, x) whose product is the rank count; zeros are filled
 * by MPI_Dims_create (axes with a single tile are never split). Image dims and tile
 * extents must be >= 1 (TMD_ERR_ARG otherwise). */
tmd_status tmd_decomp_create(tmd_ctx *ctx, MPI_Comm comm, const int64_t dims[3], const int64_t tile[3],
                             const int64_t halo[3], const int *pdims_req, tmd_decomp **out);

/* Collective. Frees the Cartesian communicator and *d; sets *d = NULL. Accepts NULL. */
void tmd_decomp_destroy(tmd_decomp **d);

/* Tile index <-> tile-grid coordinates (it, iy, ix). */
int64_t tmd_decomp_tile_index(const tmd_decomp *d, const int64_t tc[3]);
void tmd_decomp_tile_coords(const tmd_decomp *d, int64_t g, int64_t tc[3]);

/* Global index of this rank's i-th tile (0 <= i < nlocal), row-major within the block. */
int64_t tmd_decomp_local_tile(const tmd_decomp *d, int64_t i);

/* The tile's own pixels (`core`) and core grown by the halo and clipped to the image
 * (`grown`); either may be NULL. */
void tmd_decomp_tile_box(const tmd_decomp *d, int64_t g, tmd_box *core, tmd_box *grown);

/* Rank (in d->cart) owning tile g. */
int tmd_decomp_tile_owner(const tmd_decomp *d, int64_t g);

/* The block of tiles [tlo, thi) and the pixel box of rank r's domain (empty if r owns no
 * tile). */
void tmd_decomp_rank_tiles(const tmd_decomp *d, int r, int64_t tlo[3], int64_t thi[3]);
void tmd_decomp_rank_box(const tmd_decomp *d, int r, tmd_box *box);

/* Tile holding the point (frame t, y, x) in input-pixel coordinates, or -1 if the point
 * is outside the image. */
int64_t tmd_decomp_tile_of(const tmd_decomp *d, int64_t t, double y, double x);

/* Pixel index holding coordinate c: floor(c + 0.5). */
static inline int64_t tmd_decomp_pixel_of(double c)
{
    double f = c + 0.5;
    int64_t i = (int64_t)f;
    return (f < 0 && (double)i != f) ? i - 1 : i;
}

#ifdef __cplusplus
}
#endif
#endif
