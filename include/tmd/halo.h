/* tmd/halo.h — halo exchange for fields and ghost exchange for particles (atoms).
 *
 * Role: a rank owns a box of a global array (its domain); stages that look across domain
 * edges (background removal on the coarse grid, density maps, the atom graph) need the
 * values or atoms that neighbouring ranks own within some distance. This module moves them,
 * PETSc-DMDA style: an exchange object is built once (neighbours found, MPI subarray
 * datatypes committed) and used split-phase, so interior work can overlap communication.
 *
 * Fields:
 *     tmd_box own = ...;                        // this rank's domain (may be empty)
 *     int64_t width[3] = {0, 6, 6};             // halo per axis
 *     tmd_halo *h = NULL;
 *     TMD_CHECK(tmd_halo_create(ctx, comm, gdims, &own, width, MPI_FLOAT, &h)); // collective
 *     tmd_box loc; tmd_halo_local_box(h, &loc); // own grown by width, clipped to [0, gdims)
 *     float *a = calloc(tmd_box_volume(&loc), sizeof *a);  // (t, y, x) row-major over loc
 *     ... fill the owned part of a ...
 *     tmd_halo_begin(ctx, h, a);                // posts receives and sends
 *     ... work on the interior ...
 *     tmd_halo_end(ctx, h);                     // halo of a now holds the neighbours' values
 *     tmd_halo_destroy(&h);
 *
 * Any decomposition into disjoint boxes works: the neighbours of a rank are every rank
 * whose domain meets its halo (so corners are included, domains may differ in size, and a
 * halo wider than a neighbour's domain reaches the ranks beyond it). A single rank, or a
 * rank with an empty domain, has nothing to exchange. Halo cells outside the global array
 * do not exist (the local box is clipped); the caller handles the image edge.
 *
 * Particles (ghosts): atoms whose centre lies within `distance` (Euclidean, in y and x) of
 * another rank's domain, in a frame that domain holds, are copied to that rank:
 *     tmd_ghost *g = NULL;
 *     TMD_CHECK(tmd_ghost_create(ctx, comm, &own, distance, &g));               // collective
 *     tmd_atom_table ghosts; tmd_atom_table_init(&ghosts, atoms.nprob);
 *     TMD_CHECK(tmd_ghost_exchange(ctx, g, &atoms, &ghosts));                   // collective
 *     tmd_ghost_destroy(&g);
 * A domain box covers pixels [lo, hi); an atom at (y, x) belongs to the pixel
 * (floor(y + 0.5), floor(x + 0.5)), so the domain's continuous extent is [lo - 0.5, hi - 0.5).
 * Ghosts arrive ordered by source rank, then in the source's row order; every column of the
 * table (prob, latent when present) is copied.
 *
 * Collective: create, destroy, tmd_ghost_exchange over the comm given at create;
 * tmd_halo_begin/end are collective among neighbours (every rank must call them).
 * Ownership: objects duplicate the communicator and free their copy; the caller owns the
 * field arrays and the tables.
 */
#ifndef TMD_HALO_H
#define TMD_HALO_H

#include "tmd/core.h"
#include "tmd/decomp.h"
#include "tmd/table.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tmd_halo tmd_halo;

/* Collective. Fields are 3-D over (t, y, x); a 2-D field uses boxes and gdims with axis 0
 * equal to [0, 1). `width` is the halo per axis (the same on every rank). `elem` is the MPI
 * datatype of one element (may be derived, e.g. 2 contiguous doubles; it is duplicated). */
tmd_status tmd_halo_create(tmd_ctx *ctx, MPI_Comm comm, const int64_t gdims[3], const tmd_box *own,
                           const int64_t width[3], MPI_Datatype elem, tmd_halo **out);

/* The box the local array covers: own grown by width, clipped to the global array. */
void tmd_halo_local_box(const tmd_halo *h, tmd_box *local);

/* Number of neighbour ranks this rank exchanges with (for diagnostics and tests). */
int tmd_halo_neighbours(const tmd_halo *h);

/* Starts the exchange on `data` (the local array over the local box). The owned part must
 * not change and the halo must not be read until tmd_halo_end. Allocates nothing. */
tmd_status tmd_halo_begin(tmd_ctx *ctx, tmd_halo *h, void *data);
tmd_status tmd_halo_end(tmd_ctx *ctx, tmd_halo *h);

/* Collective. Frees datatypes and the communicator copy, sets *h = NULL. Accepts NULL. */
void tmd_halo_destroy(tmd_halo **h);

typedef struct tmd_ghost tmd_ghost;

/* Collective. `own` is this rank's domain in (frames, rows, columns) input pixels. */
tmd_status tmd_ghost_create(tmd_ctx *ctx, MPI_Comm comm, const tmd_box *own, double distance, tmd_ghost **out);

/* Collective. Appends to `ghosts` every atom that other ranks hold within `distance` of
 * this rank's domain (ghosts must have been initialised with the same nprob as the
 * senders' tables; latent is copied if the senders have one of the same width). */
tmd_status tmd_ghost_exchange(tmd_ctx *ctx, tmd_ghost *g, const tmd_atom_table *atoms, tmd_atom_table *ghosts);

/* Collective. Accepts NULL. */
void tmd_ghost_destroy(tmd_ghost **g);

/* Euclidean distance from (y, x) to the continuous extent of box b's rows and columns
 * ([lo - 0.5, hi - 0.5) per axis); 0 inside. */
double tmd_box_distance(const tmd_box *b, double y, double x);

#ifdef __cplusplus
}
#endif
#endif
