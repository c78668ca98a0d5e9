/* tmd/config.h — the run configuration: typed, range-checked keys from an INI file
 * (parsed by the maintained inih library) and `key=value` overrides.
 *
 * Role: one struct holds every tunable of a run. Every key has a type, a default, a valid
 * range and a one-line meaning in a single table (src/core/config.c), which also produces
 * docs/configuration.md (`tmdflow run --list-keys`). An unknown key is an error that names
 * it and suggests the closest known key. The full effective configuration is written to
 * the result file's `config` attribute as INI text, and can be read back from it.
 *
 * Usage:
 *     tmd_config cfg;
 *     tmd_config_defaults(&cfg);
 *     TMD_CHECK(tmd_config_load_file(ctx, &cfg, "run.ini"));     // optional
 *     TMD_CHECK(tmd_config_set(ctx, &cfg, "tile", "256", "command line"));
 *     char *text = NULL; TMD_CHECK(tmd_config_to_text(ctx, &cfg, &text)); ... free(text);
 *
 * Keys in the INI file may sit in any [section]; the section is ignored (sections exist
 * only to group keys for the reader). Not collective: each rank parses the same inputs.
 * Strings are fixed-size arrays inside the struct; nothing to free.
 */
#ifndef TMD_CONFIG_H
#define TMD_CONFIG_H

#include "tmd/core.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TMD_PATH_MAX 1024

typedef struct tmd_config {
    /* decomposition */
    int tile;                 /* tile edge, pixels at the nominal scale */
    int halo;                 /* halo width, pixels at the nominal scale (>= U-Net reach) */
    int frames_per_tile;      /* frames per tile in the time dimension for stacks */
    /* scale */
    double pixel_size;        /* Angstrom per input pixel; 0 = the input's calibration, else measured */
    int pixel_size_from_file; /* 1: without pixel_size, use the input's calibration (lattice-checked) */
    double nominal_pixel_size;/* Angstrom per pixel at which the models work */
    /* normalisation */
    double background_sigma;  /* Angstrom; Gaussian scale of the background removed; 0 = off */
    double clip_low, clip_high; /* robust percentiles (0-100) mapped to 0 and 1 */
    /* models */
    char unet_model[TMD_PATH_MAX];
    char classifier_model[TMD_PATH_MAX];
    char autoencoder_model[TMD_PATH_MAX];
    int blas_threads;         /* OpenBLAS threads per rank */
    /* atoms */
    double atom_threshold;    /* minimum column probability (1 - background) of a peak */
    double min_atom_separation; /* Angstrom; peaks closer than this are merged */
    int gaussian_refine;      /* 1: refine centres by a 2-D Gaussian fit */
    double atom_significance; /* minimum z-score of a column's amplitude over the local noise; 0 = off */
    double atom_weak_significance; /* z below which a column kept for its neighbours is tested as a dip */
    double atom_weak_contrast; /* ... and dropped if its amplitude is below this x its neighbours' */
    int atom_weak_rounds;     /* rounds of the neighbour rule: a column accepted vouches for the next */
    double atom_weak_threshold; /* peaks of P between this and atom_threshold: only by the neighbour rule */
    /* classification */
    int constraint;           /* 1: sublattice constraint on species */
    int classify_band_tiles;  /* mosaics: classify in chunks of this many tiles square, streamed; 0 = all at once */
    /* dynamics */
    double instability_threshold; /* z-score above which a site is unstable */
    int density_bin_px;       /* coarse-map bin, input pixels */
    double density_sigma;     /* kernel width, Angstrom */
    double region_threshold;  /* density (per nm^2) above which a bin is defect-rich */
    int min_region_bins;      /* smallest region kept, bins */
    /* output */
    int save_maps;            /* 1: write /segmentation/classes */
    int save_features;        /* 1: write /features/latent */
} tmd_config;

void tmd_config_defaults(tmd_config *cfg);

/* Reads an INI file; every key is set through tmd_config_set (so checked). Errors name the
 * file, line and key. */
tmd_status tmd_config_load_file(tmd_ctx *ctx, tmd_config *cfg, const char *path);

/* Sets one key from text. `origin` names where the value came from for messages
 * ("run.ini:12", "command line"). Unknown key: TMD_ERR_CONFIG with the closest known key. */
tmd_status tmd_config_set(tmd_ctx *ctx, tmd_config *cfg, const char *key, const char *value, const char *origin);

/* Parses "key=value". */
tmd_status tmd_config_set_kv(tmd_ctx *ctx, tmd_config *cfg, const char *kv, const char *origin);

/* The whole configuration as INI text, every key, one per line. *text is malloc'd; caller frees. */
tmd_status tmd_config_to_text(tmd_ctx *ctx, const tmd_config *cfg, char **text);

/* Parses INI text (as written by tmd_config_to_text) into cfg. */
tmd_status tmd_config_from_text(tmd_ctx *ctx, tmd_config *cfg, const char *text, const char *origin);

/* Writes the key table as Markdown (docs/configuration.md). */
tmd_status tmd_config_write_markdown(tmd_ctx *ctx, const char *path);

/* 1 if `key` is a known key. */
int tmd_config_has_key(const char *key);

/* Resolves a model path: as given if it exists; else relative to $TMDFLOW_MODELS, the
 * installed share directory, and the source tree's inputs/models. Writes the found path to
 * out; TMD_ERR_IO naming every place tried if none exists. */
tmd_status tmd_config_find_model(tmd_ctx *ctx, const char *name, char *out, size_t out_size);

#ifdef __cplusplus
}
#endif
#endif
