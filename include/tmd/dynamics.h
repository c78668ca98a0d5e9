/* tmd/dynamics.h — the unsupervised half for stacks: per-atom features, per-site
 * instability over time, kernel-density maps of unstable sites and vacancies, and the
 * defect-rich regions where they crowd together.
 *
 * Role, in pipeline order (after drift, tmd/drift.h, and site ids, tmd/track.h):
 *   1. features   every atom-centred patch of every frame -> a latent vector (D floats) by an
 *                 encoder: the autoencoder's encoder (tmd_encoder_from_model), or any function
 *                 with the tmd_encode_fn shape (tests use a deterministic one).
 *   2. sites      atoms (with site ids and latents) and vacancies are shuffled to the rank that
 *                 owns their site (sites split by lattice row index i, so each rank owns a
 *                 contiguous range of ids and /sites comes out sorted by id on any rank count).
 *                 Per site, over the frames where the site is in the field of view:
 *                   occupancy/species changes  state (absent, or species) differs from the last frame
 *                   feature change             mean |z_t - z_t-1|^2 / D of consecutive present frames,
 *                                              z = latent scaled by the global per-dimension std
 *                   position jitter            RMS of the drift-corrected position, in bonds
 *                   intensity change           column intensity z-scored within its sublattice
 *                 each component z-scored over all sites with global statistics, weighted sum,
 *                 z-scored again: instability. unstable = instability > threshold.
 *                 All global sums are integer (fixed point) reductions, so a site's score is
 *                 bit-identical on any number of ranks.
 *   3. density    kernel density (Gaussian, sigma px) on a coarse grid of bin px: unstable sites
 *                 (sites per nm^2), and each vacancy kind (vacancies per nm^2 per frame). The
 *                 coarse grid is split into row blocks, one per rank; each point is sent to
 *                 every rank whose block its kernel reaches, and the owner sums the kernels
 *                 band by band (32 rows) in fixed point: seamless across ranks, independent
 *                 of the rank count, and no rank holds more than its own block of the maps
 *                 (float32) plus one band of int64 sums.
 *   4. regions    bins above region_threshold (single images, no unstable sites: bins of the
 *                 total vacancy density above twice its image mean and region_threshold),
 *                 8-connected components on each owner's rows (labelled row by row while the
 *                 bands stream through: union-find over runs, no per-bin label array),
 *                 merged across row-block edges by a union-find over the edge label pairs of all
 *                 ranks; regions smaller than min_bins dropped; id, centroid (mean bin centre),
 *                 area_px, n_sites (unstable sites in it). Ordered by their first bin.
 *
 * Usage:
 *     tmd_encoder enc; TMD_CHECK(tmd_encoder_from_model(ctx, model, 64, step_px, &enc));
 *     st = tmd_features_compute(ctx, &enc, img, y0, x0, h, w, n, xs, ys, latent);  // latent (n, D)
 *     tmd_dyn_params prm; tmd_dyn_params_from_config(&prm, cfg, pixel_size);
 *     tmd_site_table sites; tmd_site_table_init(&sites);
 *     st = tmd_dynamics_sites(ctx, comm, &basis, drift, T, H, W, &atoms, &defects, &prm, &sites);
 *     tmd_dyn_maps maps = {0};
 *     st = tmd_dynamics_maps(ctx, comm, &prm, H, W, T, &sites, &defects, drift, &maps);
 *     st = tmd_dynamics_write(ctx, writer, &sites, &maps);   // /sites, /maps, /regions
 *     tmd_dyn_maps_free(&maps); tmd_site_table_free(&sites); tmd_encoder_free(&enc);
 *
 * Layout: patches (n, P, P) float32 row-major; latents (n, D); a map block (rows, gw) float32
 * for global coarse rows [row0, row0 + rows) of a (gh, gw) grid; vacancy maps (3, rows, gw),
 * kinds V_M, V_X, V_X2. Coordinates are input pixels, frame 0 (drift removed).
 * Collective: tmd_dynamics_sites, tmd_dynamics_maps, tmd_dynamics_write (over comm / the
 * writer's communicator). Ownership: tables and maps are filled by the callee and freed by the
 * caller with their _free functions; the encoder owns its plan.
 */
#ifndef TMD_DYNAMICS_H
#define TMD_DYNAMICS_H

#include "tmd/config.h"
#include "tmd/io.h"
#include "tmd/table.h"
#include "tmd/track.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- features ------------------------------------------------------------------------ */

/* Maps n patches (n, P, P) to latents (n, D). */
typedef tmd_status (*tmd_encode_fn)(tmd_ctx *ctx, void *user, int n, const float *patches, float *latent);

typedef struct tmd_encoder {
    int patch;            /* P: patch edge, samples */
    int dim;              /* D: latent size */
    int batch;            /* patches per call (>= 1) */
    double step_px;       /* input pixels between patch samples (nominal / input pixel size) */
    tmd_encode_fn fn;
    void *user;           /* passed to fn */
    void (*free_user)(void *user);  /* frees user (may be NULL) */
} tmd_encoder;

struct tmd_nn_model;
/* Encoder of an autoencoder model (its latent layer), batch patches per call. The encoder
 * keeps a plan pointing at the model: free the model after the encoder. */
tmd_status tmd_encoder_from_model(tmd_ctx *ctx, const struct tmd_nn_model *model, int batch, double step_px,
                                  tmd_encoder *out);
/* A hand-made descriptor (no model): mean intensity in rings around the centre and the
 * intensity-weighted centre offset, D = rings + 2. Deterministic; used by tests and when no
 * autoencoder is configured (autoencoder_model=none). */
void tmd_encoder_descriptor(int patch, int rings, double step_px, tmd_encoder *out);
void tmd_encoder_free(tmd_encoder *enc);

/* Latents of the n atoms at (xs[k], ys[k]) (input pixels, global) from an image region
 * holding rows y0..y0+h-1, columns x0..x0+w-1 (h, w) row-major; patch samples are bilinear
 * at (x + (c - (P-1)/2) step, ...), clamped to the region (give it a halo of P/2 * step).
 * latent: (n, D). Not collective. */
tmd_status tmd_features_compute(tmd_ctx *ctx, const tmd_encoder *enc, const float *img, int64_t y0, int64_t x0,
                                int64_t h, int64_t w, int64_t n, const double *xs, const double *ys, float *latent);

/* ---- instability ----------------------------------------------------------------------- */

typedef struct tmd_dyn_params {
    double threshold;       /* instability z-score above which a site is unstable */
    int bin_px;             /* coarse map bin, input pixels */
    double sigma_px;        /* density kernel sigma, input pixels */
    double pixel_size;      /* Angstrom per input pixel (for per-nm^2 units; 0: per 100 px^2) */
    double region_threshold;/* unstable-site density per nm^2 of a defect-rich bin */
    int min_region_bins;    /* smallest region kept */
    double tol;             /* max distance to a site, in bonds (0.45) */
    double fov_margin_px;   /* a site counts in a frame only this far inside the frame (< 0: 0.2 bond) */
    double w_feature, w_occupancy, w_species, w_position, w_intensity; /* component weights */
    double nb_frames;       /* neighbour blend: a site keeps n / (n_max + nb_frames) of its own score (n = its
                             * frames in view), the rest is its neighbours' mean; 0 = no blend (10) */
    double nb_radius;       /* neighbours within this many bonds (2) */
} tmd_dyn_params;

/* Defaults from the configuration keys (instability_threshold, density_bin_px, density_sigma
 * [Angstrom], region_threshold, min_region_bins). */
void tmd_dyn_params_from_config(tmd_dyn_params *p, const tmd_config *cfg, double pixel_size);

/* Collective. Builds this rank's share of /sites (sorted by id; ranks hold consecutive id
 * ranges) from every rank's atoms (site ids set, latents if nlatent > 0) and vacancies.
 * Sites are the sites of atoms and vacancies seen in any frame; x, y = mean drift-corrected
 * position of the site's atoms (ideal position if it never held one). */
tmd_status tmd_dynamics_sites(tmd_ctx *ctx, MPI_Comm comm, const tmd_track_basis *b, const double *drift, int64_t T,
                              int64_t H, int64_t W, const tmd_atom_table *atoms, const tmd_defect_table *defects,
                              const tmd_dyn_params *prm, tmd_site_table *sites);

/* Re-applies the threshold to the scores (the sweep's first step). Not collective. */
void tmd_dynamics_threshold(tmd_site_table *sites, double threshold);

/* ---- density maps and regions ------------------------------------------------------------ */

typedef struct tmd_dyn_region_list {
    int64_t n;
    int64_t *id;
    double *x, *y;          /* centroid, input pixels (frame 0) */
    double *area_px;        /* bins * bin_px^2 */
    int64_t *n_sites;       /* unstable sites in the region */
} tmd_dyn_region_list;

typedef struct tmd_dyn_maps {
    int64_t gh, gw;         /* global coarse grid */
    int bin_px;
    int64_t row0, rows;     /* this rank's block of coarse rows */
    float *unstable;        /* (rows, gw) unstable sites per nm^2 */
    float *vacancy;         /* (3, rows, gw) V_M, V_X, V_X2 per nm^2 per frame */
    tmd_dyn_region_list regions; /* every region, the same list on every rank */
    size_t work_bytes;      /* largest per-bin work buffer this rank allocated besides the maps
                             * (one band of its rows; does not grow with the image height) */
} tmd_dyn_maps;

/* Collective. Density maps of unstable sites (sites with unstable = 1; may be NULL) and of
 * vacancies (defects, drift-corrected with drift (T, 2); may be NULL), then regions on the
 * unstable map (on the total vacancy map when sites is NULL: single images). */
tmd_status tmd_dynamics_maps(tmd_ctx *ctx, MPI_Comm comm, const tmd_dyn_params *prm, int64_t H, int64_t W, int64_t T,
                             const tmd_site_table *sites, const tmd_defect_table *defects, const double *drift,
                             tmd_dyn_maps *maps);
void tmd_dyn_maps_free(tmd_dyn_maps *maps);
void tmd_dyn_region_list_free(tmd_dyn_region_list *r);

/* Collective over the writer. /sites/{id,x,y,sublattice,instability,unstable} (sites may be
 * NULL), /maps/unstable_density (gh, gw), /maps/vacancy_density (3, gh, gw) with attrs
 * bin_px, image_height, image_width, and /regions/{id,x,y,area_px,n_sites}. prefix ("" or
 * e.g. "/setting_003") is put before every path. */
tmd_status tmd_dynamics_write(tmd_ctx *ctx, tmd_writer *w, const char *prefix, const tmd_site_table *sites,
                              const tmd_dyn_maps *maps, int64_t H, int64_t W);

/* ---- stages of the run driver (tmd/pipeline.h; src/dynamics/stages.c) --------------------- */

struct tmd_run;
struct tmd_tile;
struct tmd_dyn_state;
/* GLOBAL, stacks: run->drift (T, 2) from the input frames. */
tmd_status tmd_stage_drift(tmd_ctx *ctx, struct tmd_run *run);
/* TILE, stacks, right after the atoms stage: latents of the tile's new atoms from tile->pix. */
tmd_status tmd_features_begin(tmd_ctx *ctx, struct tmd_run *run);
tmd_status tmd_tile_features(tmd_ctx *ctx, struct tmd_run *run, struct tmd_tile *tile);
tmd_status tmd_features_end(tmd_ctx *ctx, struct tmd_run *run);
/* GLOBAL, stacks, after classify and drift: basis on frame 0 (run->lattice_a1/a2 if set,
 * else measured), atoms.site. */
tmd_status tmd_stage_track(tmd_ctx *ctx, struct tmd_run *run);
/* GLOBAL, stacks: run->sites with instability and unstable. */
tmd_status tmd_stage_instability(tmd_ctx *ctx, struct tmd_run *run);
/* GLOBAL: /maps and /regions written (unstable sites for stacks; vacancies always). */
tmd_status tmd_stage_density(tmd_ctx *ctx, struct tmd_run *run);
/* Frees the stages' state kept in the run (called by tmd_run_free). */
void tmd_dyn_state_free(struct tmd_dyn_state **s);

#ifdef __cplusplus
}
#endif
#endif
