/* tmd/atoms.h — atomic columns from a segmentation: peaks of the column probability,
 * sub-pixel centres on the image, class probabilities and integrated intensity.
 *
 * Role: the U-Net gives, per pixel of the nominal grid, 6 class probabilities (DESIGN.md:
 * 0 background, 1 Mo, 2 W, 3 S2, 4 SSe, 5 Se2). A column is a peak of the column probability
 * P = 1 - p(background) (after a 3x3 binomial smoothing that breaks plateaus): P at least
 * `threshold` and the largest within `sep` (ties broken by the lower global index). Its
 * centre is then measured on the normalised image in input pixels: intensity-weighted
 * centroid over a disc of radius `radius` (weights = intensity minus the disc's minimum,
 * recentred twice), refined by a 2-D Gaussian fit (amplitude, centre, width, offset;
 * Levenberg-Marquardt) where the fit converges and stays within one pixel of the centroid.
 * A column must also be seen in the image: a Gaussian of fixed centre and width (radius/2)
 * plus a constant is fitted by linear least squares over a disc of 1.5 radius, and the
 * amplitude's z-score (amplitude / its standard error from the residuals) must reach min_z,
 * or the peak must sit at 0.7-1.3 bond lengths from at least two columns that do (a dim
 * single chalcogen beside its metals) and not be an empty site between them — a dip with
 * z < min_z_weak whose amplitude is below weak_contrast (< 0) times the median amplitude of
 * those neighbours; peaks of the column probability in vacuum or amorphous noise have z ~ 0
 * and no such neighbours, and are dropped. The rule runs in `weak_rounds` synchronous rounds:
 * in later rounds columns accepted before vouch too, and one bond partner plus two accepted
 * columns at the lattice constant (the site's own sublattice) suffice — a dim patch
 * (contamination, low dose) is taken from its significant rim inwards. Peaks of P between
 * `weak_threshold` and `threshold` (the U-Net unsure) enter only by this rule. Both kinds —
 * unsure, or vouched for by growth — must also reach GROW_CONTRAST (0.35) of the median
 * amplitude of all candidates of their sublattice around them: an empty site in bright
 * lattice does not, a column as dim as its dim neighbours does. Peaks closer than
 * TMD_ATOMS_MERGE bonds are one column: the one of highest column probability among the
 * accepted is kept.
 * Each atom gets the mean class probabilities over the disc (nominal grid), the species and
 * sublattice of the most likely non-background class (a first guess that the classification
 * stage replaces), and the integrated intensity sum(N) * pixel area (Angstrom^2) over the
 * disc around the final centre.
 *
 * Overlap-tile rule: every quantity depends only on pixels within a fixed distance of the
 * column, computed in global coordinates in a fixed order, so the same column seen from two
 * overlapping windows gets bit-identical results. An atom is kept by the tile whose core
 * holds its centre (tmd_decomp_pixel_of), so no atom is lost or duplicated at tile or rank
 * edges — provided the halo covers the U-Net's reach plus tmd_atoms_margin().
 *
 * Usage (per tile and frame; not collective, allocates scratch per call):
 *     tmd_atoms_params ap; tmd_atoms_params_from_config(&ap, &cfg, input_px);
 *     TMD_CHECK(tmd_atoms_find(ctx, &ap, &seg, &img, frame, &core, &atoms));
 *
 * Layout: seg.prob is (nclass, ph, pw) float32 on the nominal grid, nominal pixel (Y, X) at
 * input coordinate (Y * s, X * s); img.pix is (h, w) float32 over input rows [y0, y0 + h),
 * columns [x0, x0 + w) of an image img_h x img_w. Coordinates in the table: input pixels.
 */
#ifndef TMD_ATOMS_H
#define TMD_ATOMS_H

#include "tmd/config.h"
#include "tmd/core.h"
#include "tmd/decomp.h"
#include "tmd/table.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Candidates closer than this many bonds are one column seen twice (columns of the honeycomb
 * are at least ~0.75 bond apart even under strong strain). */
#define TMD_ATOMS_MERGE 0.5

typedef struct tmd_atoms_params {
    double threshold;   /* minimum P at a peak */
    double sep;         /* peaks closer than this (nominal pixels) are one column */
    double radius;      /* centroid / integration disc radius, input pixels */
    int refine;         /* 1: 2-D Gaussian refinement */
    double px_area;     /* Angstrom^2 per input pixel */
    double min_z;       /* minimum significance of the column in the image (0 = no test) */
    double min_z_weak;  /* a column below min_z kept for its neighbours: if its z is below this, */
    double weak_contrast; /* its amplitude must reach weak_contrast x the neighbours' median */
    int weak_rounds;      /* rounds of the neighbour rule (1: neighbours must be significant) */
    double weak_threshold; /* peaks of P in [weak_threshold, threshold) enter only by that rule
                            * (0 or >= threshold: off) */
    double bond;        /* metal-chalcogen bond length, input pixels (neighbour rule) */
} tmd_atoms_params;

/* threshold = atom_threshold, sep = min_atom_separation / nominal_px, radius =
 * 0.7 * min_atom_separation / input_px (at least 1.5), refine = gaussian_refine, min_z =
 * atom_significance, bond = 1.859 A / input_px. */
void tmd_atoms_params_from_config(tmd_atoms_params *p, const tmd_config *cfg, double input_px);

/* Distance (input pixels) around a column that the finder reads beyond the column centre:
 * windows must extend this far (plus the U-Net reach) beyond a tile's core. */
double tmd_atoms_margin(const tmd_atoms_params *p, double s);

typedef struct tmd_atoms_seg {
    const float *prob;    /* (nclass, ph, pw) */
    int nclass;
    int64_t Y0, X0;       /* global nominal index of prob's first row / column */
    int64_t ph, pw;
    double s;             /* nominal_px / input_px */
} tmd_atoms_seg;

typedef struct tmd_atoms_img {
    const float *pix;     /* (h, w) normalised, unclamped */
    int64_t y0, x0, h, w; /* region of the image it covers */
    int64_t img_h, img_w; /* the whole frame */
} tmd_atoms_img;

/* Appends the atoms of one frame whose centres lie in `core` (rows core->lo[1]..hi[1],
 * columns lo[2]..hi[2]; core->lo[0] <= frame < core->hi[0]) to `out` (nprob = nclass). */
tmd_status tmd_atoms_find(tmd_ctx *ctx, const tmd_atoms_params *p, const tmd_atoms_seg *seg, const tmd_atoms_img *img,
                          int32_t frame, const tmd_box *core, tmd_atom_table *out);

#ifdef __cplusplus
}
#endif
#endif
