/* Internal interface of the banded (streamed) classification: src/classify/stage_classify.c
 * drives tmd_classify (src/classify/classify.c) chunk by chunk with MPI_COMM_SELF.
 *
 * Phase 1 (graph): tmd_classify builds the chunk's bond graph over its atoms and ghosts, joins
 * components only through bonds with at least one owned end (a bond between two ghosts is
 * judged by the chunks that own them), exports each atom's colour, local component and
 * whether it ends a joining owned-ghost bond, and returns. The driver merges the chunks'
 * components into global ones (union-find), accumulates the per-component histograms and
 * fits the models with tmd_cls_fit (collective), then
 * Phase 2 (apply): tmd_classify rebuilds the same graph, takes each atom's global component
 * and the fitted models from here, and runs the per-atom part (local noise, species
 * probabilities, vacancies, removal of empty columns) exactly as the unbanded code does. */
#ifndef TMD_CLASSIFY_INTERNAL_H
#define TMD_CLASSIFY_INTERNAL_H

#include "tmd/classify.h"

typedef struct tmd_cls_bands {
    int phase;               /* 1: graph only, 2: apply the given models, 3: cross-talk statistics (the
                                given first-pass models: species, then xn and xhist; no vacancies, no
                                rows removed) */
    /* phase 1 outputs, N = atoms->n + ghosts->n entries each (caller allocates) */
    int64_t *comp;           /* local component of each atom (owned, then ghosts) */
    int8_t *colour;          /* colour, -1 = none */
    int8_t *edge;            /* 1: the atom ends a joining bond between an owned atom and a ghost (zeroed by caller) */
    /* phase 2 inputs */
    const int64_t *slot;     /* N: global component of each atom, -1 = none */
    const int8_t *gcolour;   /* ghosts->n: the ghosts' colours as their owners computed them */
    int64_t nslot;
    const void *models;      /* nslot models, tmd_cls_model_size() bytes each */
    const void *ref;         /* nframes reference models */
    const double *fmax;      /* nframes: largest owned contrast of each frame, all ranks */
    /* cross-talk correction (opt->xtalk; tmd_cls_xt_*) */
    float *xn;               /* atoms->n: phase 3 out, phase 2 in: N of each owned first-pass chalcogen in a
                                frame with the correction on (else 0) */
    int64_t *xhist;          /* phase 3: tmd_cls_xt_size() sums the chunk's atoms are added to */
    const void *models1;     /* phase 2 with xc < 0: the first pass's nslot models (A sites around an empty
                                B site); NULL otherwise */
    const int8_t *xframe;    /* phase 2: nframes, 1 where the correction is on (tmd_cls_xt_frames of the
                                first pass's references) */
    double xc, xmed;         /* phase 2: slope (0: no correction) and median metal contrast / fmax */
} tmd_cls_bands;

size_t tmd_cls_model_size(void);
int tmd_cls_hist_width(void);
/* Adds one owned atom of colour `colour` and normalised contrast In (contrast / fmax of its
 * frame) with segmentation probabilities p (np columns) to a component's histogram row h. */
void tmd_cls_hist_add(int64_t *h, int colour, double In, const float *p, int np);
/* Collective over comm. Fits the components' models from their global histograms (nslot x
 * tmd_cls_hist_width(), the same on every rank) as tmd_classify does (components of at least
 * min_fit_atoms, the frame reference = the largest, a second pass at >= 8 atoms for frames
 * without one, small components borrowing the reference), each rank fitting every P-th
 * component. slot_f: frame of each component; slot_a: its measured lattice constant
 * (period x pixel size). models (nslot) and ref (nframes) must be zeroed; they come out the
 * same on every rank. rp gets the composition fields and n_components. */
tmd_status tmd_cls_fit(tmd_ctx *ctx, MPI_Comm comm, const tmd_classify_opts *opt, int64_t nframes, int64_t nslot,
                       const int64_t *hist, const int64_t *slot_f, const double *slot_a, void *models, void *ref,
                       tmd_classify_report *rp);

/* Cross-talk correction (tmd_classify_opts.xtalk), for the banded driver: sums of
 * tmd_cls_xt_size() int64 (phase 3 adds a chunk's atoms), summed over ranks, give the slope c
 * and the median metal contrast (tmd_cls_xt_solve, the same on every rank: it only reads the
 * sums). tmd_cls_xt_frames: the frames whose first-pass reference (ref, nframes models) is a
 * metal alloy; returns whether any is. tmd_cls_xt_apply: the corrected contrast of a column
 * with contrast raw and neighbour sum xn. */
size_t tmd_cls_xt_size(void);
int tmd_cls_xt_frames(const void *ref, int64_t nframes, int8_t *on);
tmd_status tmd_cls_xt_solve(tmd_ctx *ctx, const int64_t *xhist, double *c, double *med);
float tmd_cls_xt_apply(float raw, float xn, double c);

/* Test hook (tests/test_classify.c): the pipeline stage's column contrast (stage_classify.c)
 * on one frame of H x W in memory, psig the profile width (bond), gate as
 * tmd_classify_opts.held_gate. Collective over comm: n owned atoms (x, y) inside own, m other
 * atoms (ghosts; the ones within 2 bond of own are measured too). free_c[n]: the free measure
 * (pass 1); held_c[n]: the stage's contrast (the held refit where the gate holds, else the
 * free one); *hold: the gate; *stat: the free places' robust scatter / their LSQ error. */
tmd_status tmd_cls_held_image(tmd_ctx *ctx, MPI_Comm comm, const float *img, int64_t H, int64_t W,
                              const tmd_lattice *lat, double psig, double gate, const tmd_box *own, int64_t n,
                              const double *x, const double *y, int64_t m, const double *gx, const double *gy,
                              float *free_c, float *held_c, int *hold, double *stat);

#endif
