/* tmd/sweep.h — threshold sweeps over a finished result file, reusing its cached stages.
 *
 * Role: users tune the dynamics thresholds after a run. The expensive stages (segmentation,
 * atoms, features, tracking, instability scores) are in the result file; a sweep reads
 * /sites (with their instability scores), /defects and /drift and re-runs only
 *     threshold -> density maps -> regions
 * for every setting of the swept parameters (the Cartesian product of their values). Each
 * setting costs a few milliseconds, so 20 settings cost far less than 10% of a run.
 * Sweepable keys: instability_threshold, density_bin_px, density_sigma, region_threshold,
 * min_region_bins (any other key needs earlier stages: re-run `tmdflow run`).
 *
 * Usage:
 *     tmd_sweep_input in;
 *     TMD_CHECK(tmd_sweep_load(ctx, comm, "R.h5", &in));                 // collective
 *     tmd_sweep_param p[2];
 *     TMD_CHECK(tmd_sweep_parse(ctx, "instability_threshold=1,2,3", &p[0]));
 *     TMD_CHECK(tmd_sweep_parse(ctx, "region_threshold=0.2,0.5", &p[1]));
 *     st = tmd_sweep_run(ctx, comm, &in, p, 2, "SWEEP.h5", force, &summary);  // 6 settings
 *     tmd_sweep_param_free(&p[0]); ...; tmd_sweep_input_free(&in);
 *
 * SWEEP.h5 layout: /sweep/<key> float64 (one row per setting, for every swept key),
 * /sweep/n_unstable, /sweep/n_regions (int64), /sweep/region_area_px (float64, total);
 * /settings/NNN/regions/{id,x,y,area_px,n_sites} for setting NNN (000, 001, ...), with the
 * setting's values as attributes of /settings/NNN/regions/id; root attrs `source` (the result
 * file), `config` (its configuration), `params` (the sweep specification).
 * Setting k varies the last parameter fastest (row-major over the value lists).
 * Collective: tmd_sweep_load, tmd_sweep_eval, tmd_sweep_run (over comm). Each rank keeps a
 * contiguous block of the sites and defects; the maps and regions do not depend on the
 * split (tmd/dynamics.h), so a sweep gives the same numbers on any number of ranks and the
 * same as a run at that setting.
 */
#ifndef TMD_SWEEP_H
#define TMD_SWEEP_H

#include "tmd/config.h"
#include "tmd/dynamics.h"
#include "tmd/table.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tmd_sweep_input {
    tmd_config cfg;            /* the run's configuration (root attribute `config`) */
    double pixel_size;         /* Angstrom per input pixel (root attribute) */
    int64_t T, H, W;           /* frames, image height and width (input pixels) */
    double *drift;             /* (T, 2), or NULL for single images */
    tmd_site_table sites;      /* this rank's block of /sites (id, x, y, sublattice, instability) */
    tmd_defect_table defects;  /* this rank's block of /defects */
    char source[TMD_PATH_MAX];
} tmd_sweep_input;

/* Collective. Reads the cached stages of a result file. Errors name the file and the
 * missing dataset or attribute (e.g. a result of a build without the dynamics stages). */
tmd_status tmd_sweep_load(tmd_ctx *ctx, MPI_Comm comm, const char *path, tmd_sweep_input *in);
void tmd_sweep_input_free(tmd_sweep_input *in);

typedef struct tmd_sweep_param {
    char name[64];
    int n;                     /* number of values */
    double *values;            /* (n) */
} tmd_sweep_param;

/* Parses "NAME=V1,V2,...". The key must be sweepable and every value valid for it
 * (checked through the configuration key table). */
tmd_status tmd_sweep_parse(tmd_ctx *ctx, const char *spec, tmd_sweep_param *out);
void tmd_sweep_param_free(tmd_sweep_param *p);

/* Number of settings: the product of the value counts. */
int64_t tmd_sweep_count(const tmd_sweep_param *p, int np);

/* cfg with setting k applied (last parameter fastest). */
tmd_status tmd_sweep_config(tmd_ctx *ctx, const tmd_config *base, const tmd_sweep_param *p, int np, int64_t k,
                            tmd_config *out);

/* Collective. One setting: unstable = instability > threshold on this rank's sites (the
 * input's unstable column is overwritten), then maps and regions (maps filled; free with
 * tmd_dyn_maps_free). */
tmd_status tmd_sweep_eval(tmd_ctx *ctx, MPI_Comm comm, tmd_sweep_input *in, const tmd_config *cfg, tmd_dyn_maps *maps,
                          int64_t *n_unstable);

typedef struct tmd_sweep_row {
    int64_t n_unstable, n_regions;
    double area_px;
} tmd_sweep_row;

/* Collective. Every setting, written to `out` (see the layout above). summary (may be NULL)
 * receives a malloc'd array of tmd_sweep_count rows (caller frees). */
tmd_status tmd_sweep_run(tmd_ctx *ctx, MPI_Comm comm, tmd_sweep_input *in, const tmd_sweep_param *p, int np,
                         const char *out, int force, tmd_sweep_row **summary);

#ifdef __cplusplus
}
#endif
#endif
