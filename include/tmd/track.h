/* tmd/track.h — atoms of every frame of a stack mapped to lattice sites in frame-0
 * coordinates, with a site id that is the same in every frame and on any number of ranks.
 *
 * Role: instability is a property of a lattice site over time, so the atoms of frame t must
 * be recognised as "the same site" as in frame 0 after the drift is removed. A site id is
 * derived from lattice indices, never from a counter: with a global basis (origin o on the A
 * sublattice, lattice vectors a1, a2 fitted on frame 0's atoms, B sites at o + c (a1 + a2),
 * c = 1/3 or 2/3) a drift-corrected position p0 = p - drift[t] is written as
 *     p0 ≈ o + (i + c s) a1 + (j + c s) a2,   s = 0 (A) or 1 (B),
 * the nearest such site is taken, and id = tmd_site_pack(i, j, sublattice). The basis comes
 * from integer (fixed-point) reductions of frame-0 atom phases plus a least-squares fit, so
 * it is the same on every rank and rank count.
 *
 * Usage:
 *     tmd_track_basis b;
 *     st = tmd_track_basis_fit(ctx, comm, &atoms, lat.a1, lat.a2, &b);    // collective
 *     st = tmd_track_assign(ctx, &b, drift, T, 0.45, &atoms);              // sets atoms.site
 *     double x, y; tmd_track_site_xy(&b, atoms.site[k], &x, &y);           // ideal position
 *
 * Id layout (int64): bits 32..62 = i + 2^30, bits 2..31 = j + 2^29, bits 0..1 = sublattice
 * (1 A, 2 B). Sorting ids sorts sites by (i, j, sublattice). -1 = no site.
 * Collective: tmd_track_basis_fit (over comm). Nothing is allocated that the caller frees.
 */
#ifndef TMD_TRACK_H
#define TMD_TRACK_H

#include "tmd/table.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tmd_track_basis {
    double a1[2], a2[2];  /* lattice vectors (x, y), pixels, refined on frame 0 */
    double origin[2];     /* an A site (metal sublattice), frame-0 pixels */
    double c;             /* B sites at origin + c (a1 + a2) (+ lattice vectors); 1/3 or 2/3 */
    double bond;          /* A-B distance, pixels */
    int64_t n_fit;        /* frame-0 atoms used in the fit (all ranks) */
    double rms_px;        /* RMS distance of those atoms to their ideal sites */
} tmd_track_basis;

int64_t tmd_site_pack(int64_t i, int64_t j, int sublattice);
void tmd_site_unpack(int64_t id, int64_t *i, int64_t *j, int *sublattice);

/* Ideal position of a site (frame-0 pixels). */
void tmd_track_site_xy(const tmd_track_basis *b, int64_t id, double *x, double *y);

/* The site nearest to the frame-0 position (x, y) and the distance to it. */
int64_t tmd_track_nearest(const tmd_track_basis *b, double x, double y, double *dist);

/* Collective over comm. Fits the basis on the frame-0 atoms of every rank's table (rows with
 * frame != 0 are ignored): the phase of the A sublattice (atoms labelled A; unlabelled atoms
 * when no labels exist), that of B, then least-squares a1, a2, origin. a1, a2 are the
 * starting lattice vectors (e.g. /lattice/a1, a2 of frame 0). TMD_ERR_NOLATTICE when frame 0
 * has fewer than 8 atoms in all. */
tmd_status tmd_track_basis_fit(tmd_ctx *ctx, MPI_Comm comm, const tmd_atom_table *atoms, const double a1[2],
                               const double a2[2], tmd_track_basis *out);

/* Collective over comm. tmd_track_basis_fit on frame 0 (phase, first least squares); then the
 * given a1, a2 (matched to the fitted vectors' convention, anchored at the frame-0 site nearest
 * the frame-0 atoms' centroid: a frame 0 that is a strip constrains its own fit poorly, so pass a
 * stack-wide estimate, tmd_track_median_vectors) start the
 * least squares again on the drift-corrected atoms (x, y) - drift[frame] of every frame 0..T-1,
 * over a region growing by factors of 2 from the one frame 0's atoms cover, so that a1, a2 are
 * measured over the whole area the stack shows (a frame 0 that shows little lattice no longer
 * sets them alone). n_fit and rms_px then count all those atoms. drift (T, 2); NULL or T < 2:
 * as tmd_track_basis_fit. */
tmd_status tmd_track_basis_fit_stack(tmd_ctx *ctx, MPI_Comm comm, const tmd_atom_table *atoms, const double a1[2],
                                     const double a2[2], const double *drift, int64_t T, tmd_track_basis *out);

/* Lattice vectors for the basis of a stack from per-frame measurements a1s, a2s (T, 2): each
 * frame's pair brought to one convention (the two of the six shortest lattice vectors at angles
 * [0, 60) and [60, 120) degrees), then the component-wise median over the frames with a valid
 * pair. A frame 0 that shows little lattice (a film edge) measures its vectors poorly; the
 * median over the stack does not depend on it. Returns the number of frames used (0: a1, a2
 * unchanged). Not collective; the same on every rank given the same input. */
int tmd_track_median_vectors(const double *a1s, const double *a2s, int64_t T, double a1[2], double a2[2]);

/* Not collective. Sets atoms->site for every row: the site nearest to (x, y) - drift[frame],
 * or -1 when it is farther than tol * bond (tol ~ 0.45). drift is (T, 2); a frame outside
 * 0..T-1 is an error naming it. */
tmd_status tmd_track_assign(tmd_ctx *ctx, const tmd_track_basis *b, const double *drift, int64_t T, double tol,
                            tmd_atom_table *atoms);

#ifdef __cplusplus
}
#endif
#endif
