/* tmd/sim.h — the HAADF-STEM simulator: images, stacks and mosaics of monolayer
 * Mo(1-x)W(x)S(2(1-y))Se(2y) with complete ground truth, and streamed training data.
 *
 * Role: every model tmdflow ships is trained on images made here, and every accuracy figure
 * is measured against the truth written here. The physical model (docs/simulator.md):
 * 2H honeycomb (A = metal, B = chalcogen pair) by Vegard's law, alloy disorder with optional
 * short-range order, strain and column displacements, vacancies (scattered and in
 * defect-rich regions), contrast sum(Z^n) per column, a probe with Gaussian core and broad
 * tail, smooth background, amorphous contamination, holes and edges, scan jitter / wobble /
 * shear / rotation, fast-scan detector smear, Poisson + read noise, gain and offset; stacks
 * add drift and beam-driven dynamics in hot regions.
 *
 * Every random value comes from a counter-based hash keyed by (seed, purpose, site or pixel
 * index), never from a sequential stream, so a pixel or a column is the same whichever rank
 * draws it: 1, 2 or 4 ranks write byte-identical images.
 *
 * Usage — a file (collective over comm):
 *     tmd_sim_params p;
 *     tmd_sim_params_draw(&p, 77, 0);                       // every condition from seed 77
 *     p.height = p.width = 1024;
 *     TMD_CHECK(tmd_sim_param_set(ctx, &p, "dose", "300"));  // any override by name
 *     TMD_CHECK(tmd_sim_params_finish(ctx, &p));            // derived values (Vegard a), checks
 *     st = tmd_sim_write(ctx, &p, "X.h5", force, comm);
 *
 * Usage — training (not collective, no MPI, thread-compatible if each thread has its ctx):
 *     float img[256 * 256]; uint8_t cls[256 * 256];
 *     for (int64_t i = 0; ; i++) tmd_sim_training_tile(ctx, seed, i, 256, 0.12, img, cls);
 *
 * Layout: images (height, width) row-major, (0,0) = centre of the top-left pixel, x =
 * column, y = row. Patches (n, patch, patch). All coordinates in output files are input
 * pixels as in DESIGN.md.
 * Ownership: the caller owns every buffer; nothing returned needs freeing.
 */
#ifndef TMD_SIM_H
#define TMD_SIM_H

#include "tmd/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Every simulation parameter. tmd_sim_params_draw fills all of them from a seed; any can be
 * overridden by name (tmd_sim_param_set), and all are written as root attributes of the
 * output file. Ranges and reasons: docs/simulator.md (also tmd_sim_param_doc). */
typedef struct tmd_sim_params {
    uint64_t seed;            /* image key (all hashes derive from it) */
    int64_t height, width;    /* pixels */
    int64_t frames;           /* 1 = single image */
    int out_u16;              /* 1: /image as uint16 (rounded, clamped); 0: float32 */
    /* specimen */
    double pixel_size;        /* Angstrom / pixel, 0.06-0.18 */
    double comp_w;            /* x: W fraction of metal sites */
    double comp_se;           /* y: Se fraction of chalcogen atoms */
    double cluster;           /* 0-1 short-range order strength (alloy field weight) */
    double cluster_length;    /* Angstrom, correlation length of the alloy field */
    double lattice_a;         /* Angstrom; <= 0: Vegard's law from comp_w, comp_se */
    double rotation;          /* degrees, in-plane lattice rotation */
    double strain;            /* maximum strain (homogeneous + smooth field), 0-0.015 */
    double strain_length;     /* Angstrom, wavelength scale of the strain field */
    double displacement;      /* Angstrom rms random static displacement of each column */
    /* defects */
    double vac_m;             /* V_M probability per metal site */
    double vac_x;             /* probability per chalcogen atom of being missing */
    double vac_x2;            /* extra probability per chalcogen site of losing both */
    double region_spacing;    /* Angstrom, grid of candidate defect-rich (hot) regions */
    double region_prob;       /* probability that a grid cell holds a region */
    double region_radius;     /* Angstrom, mean region radius */
    double region_boost;      /* vacancy-rate multiplier inside a region */
    /* contrast and probe */
    double z_exponent;        /* n in sum(Z^n) */
    double column_jitter;     /* rms relative intensity variation of columns (channelling) */
    double probe_fwhm;        /* Angstrom, Gaussian core */
    double tail_fraction;     /* share of the probe intensity in the broad tail */
    double tail_fwhm;         /* Angstrom, tail Gaussian */
    /* detector */
    double dose;              /* expected counts at an isolated W column's peak */
    double read_noise;        /* counts rms, Gaussian */
    double gain;              /* output units per count */
    double offset;            /* output units added */
    double scan_smear;        /* 0-0.35: detector afterglow along the fast scan (IIR coeff.) */
    /* background, contamination, holes */
    double background;        /* mean background, fraction of a Mo column's peak */
    double background_var;    /* amplitude of its smooth variation (same unit) */
    double background_length; /* Angstrom, scale of the variation */
    double contamination;     /* amorphous contamination mean, fraction of a Mo peak (0-0.4) */
    double contamination_cover; /* 0-1 share of the area covered */
    double contamination_length; /* Angstrom, patch scale */
    double hole_prob;         /* probability per hole cell of a hole (vacuum) */
    double hole_spacing;      /* Angstrom, hole cell size */
    double hole_radius;       /* Angstrom, mean hole radius */
    double edge;              /* 1: the film ends at a wavy edge inside the image */
    double edge_angle;        /* degrees, direction of the edge normal */
    double edge_offset;       /* fraction of the image half-diagonal from the centre */
    /* scan distortions */
    double jitter;            /* pixels rms, line-to-line jitter along x */
    double wobble;            /* pixels, amplitude of a periodic line wobble (mains hum) */
    double wobble_period;     /* rows */
    double shear;             /* slow-scan drift: x shift per row (pixels / pixel) */
    double scan_compress;     /* slow-scan drift: relative y scale change */
    double scan_rotation;     /* degrees */
    /* stacks */
    double drift_step;        /* pixels rms per frame, random-walk part of the drift */
    double drift_vx, drift_vy;/* pixels per frame, steady part */
    double p_sputter;         /* per frame, per chalcogen atom in hot regions */
    double p_heal;            /* per frame, per empty chalcogen slot in hot regions */
    double p_exchange;        /* per frame, S<->Se exchange per atom in hot regions */
    double p_hop;             /* per frame, a chalcogen vacancy takes an atom from a neighbour */
    double p_jump;            /* per frame, a column jumps to a neighbouring position */
    /* truth */
    double class_radius;      /* /truth/classes disk radius, fraction of the bond a/sqrt(3) */
} tmd_sim_params;

/* Fills every parameter from (seed, index) over the simulator's whole range (index selects
 * one image of a series: training uses index = example number; `simulate --seed S` uses
 * index 0). Sets height = width = 512, frames = 1, out_u16 = 0, lattice_a = 0 (Vegard). */
void tmd_sim_params_draw(tmd_sim_params *p, uint64_t seed, int64_t index);

/* Overrides one parameter by name (the field names above; "composition" = "x,y" too).
 * TMD_ERR_CONFIG names the key and its range on a bad key or value. */
tmd_status tmd_sim_param_set(tmd_ctx *ctx, tmd_sim_params *p, const char *key, const char *value);

/* Checks ranges and fills derived values (lattice_a by Vegard's law if <= 0). */
tmd_status tmd_sim_params_finish(tmd_ctx *ctx, tmd_sim_params *p);

/* Parameter table access (for attributes and docs): the i-th parameter's name, range,
 * one-line meaning and current value; returns 0 past the end. */
int tmd_sim_param_info(int i, const char **name, double *min, double *max, const char **doc);
double tmd_sim_param_get(const tmd_sim_params *p, int i);

/* Vegard's law between MoS2 3.160, WS2 3.153, MoSe2 3.288, WSe2 3.282 Angstrom. */
double tmd_sim_vegard(double comp_w, double comp_se);

/* Collective over comm. Simulates p into `path`: ".h5" -> HDF5 with /image and the truth
 * groups (DESIGN.md); ".tif"/".tiff" -> TIFF image (u16 or f32) plus path + ".truth.h5"
 * beside it. Each rank renders and writes its own block of rows in bands of bounded size
 * (memory per rank does not grow with the image). */
tmd_status tmd_sim_write(tmd_ctx *ctx, const tmd_sim_params *p, const char *path, int force, MPI_Comm comm);

/* ---- training data (no MPI, no files) ---------------------------------------------------- */

/* Robust normalisation used by the training data and by the pipeline: the 0.5 and 99.9
 * percentiles of img[0..n) are mapped to 0 and 1, values clipped to [0, 1]. In place.
 * A constant image becomes all 0. */
void tmd_sim_normalise(float *img, int64_t n);
/* The same with explicit percentiles (0-100) and the values found returned (lo, hi may be NULL). */
void tmd_sim_normalise_pct(float *img, int64_t n, double pct_lo, double pct_hi, float *lo, float *hi);
/* Applies a given mapping: v -> clamp((v - lo) / (hi - lo), 0, 1); hi <= lo gives all 0. */
void tmd_sim_normalise_apply(float *img, int64_t n, float lo, float hi);

/* A training example at pixel size px (Angstrom/pixel): conditions drawn from (seed, index)
 * over the whole simulator range (everything random except the pixel size), image (size,
 * size) float32 normalised with tmd_sim_normalise (raw counts -> 0.5/99.9 percentiles ->
 * 0..1), classes (size, size) uint8 in DESIGN.md's 6 classes (0 background, 1 Mo, 2 W,
 * 3 S2, 4 SSe, 5 Se2; a single S is class 3, a single Se class 4, nearest in intensity).
 * Deterministic in (seed, index, size, px). Not collective. size 16..4096. */
tmd_status tmd_sim_training_tile(tmd_ctx *ctx, uint64_t seed, int64_t index, int size, double px, float *image,
                                 uint8_t *classes);

/* Patch labels of tmd_sim_training_patches. */
enum { TMD_PATCH_MO = 0, TMD_PATCH_W, TMD_PATCH_S2, TMD_PATCH_SSE, TMD_PATCH_SE2, TMD_PATCH_S, TMD_PATCH_SE,
       TMD_PATCH_EMPTY, TMD_PATCH_NLABELS };

/* n atom-centred patches (n, patch, patch) at px, centred on true column positions + a
 * uniform random offset of up to +-1 px in x and y, labels 0..7 = Mo, W, S2, SSe, Se2, S,
 * Se, empty (a V_M or V_X2 site, centred on where the column would be). The surrounding tile
 * is normalised with tmd_sim_normalise first, then patches are cut. Half of the patches are
 * drawn uniformly over the tile's sites, half balanced over the labels present (so rare
 * labels such as vacancies and single chalcogens are seen often). Deterministic in
 * (seed, index, n, patch, px). patch 8..128, n >= 1. */
tmd_status tmd_sim_training_patches(tmd_ctx *ctx, uint64_t seed, int64_t index, int n, int patch, double px,
                                    float *patches, int *labels);

#ifdef __cplusplus
}
#endif
#endif
