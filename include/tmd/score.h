/* tmd/score.h — accuracy of a result file against simulated ground truth.
 *
 * Role: `tmdflow score RESULT.h5 TRUTH.h5` and the accuracy benchmarks. Found and true
 * columns are matched one-to-one per frame, greedily by increasing distance within a match
 * radius of a/4 (candidate pairs come from a uniform grid of cell = radius, so the cost is
 * O(N log N) for millions of atoms). True columns closer than `border` (a/2) to the image
 * edge are not scored, nor are unmatched found columns there. Metric definitions and JSON
 * keys: docs/score.md.
 *
 * Usage (serial, any rank):
 *     tmd_score s;
 *     TMD_CHECK(tmd_score_files(ctx, "R.h5", "X.h5", &s));
 *     char *json = NULL; TMD_CHECK(tmd_score_json(ctx, &s, "R.h5", "X.h5", &json)); ... free(json);
 *
 * A metric that cannot be computed (the result lacks the group, e.g. no /defects yet, or it
 * is undefined, e.g. no positives) is NAN here and null in JSON — never a crash.
 * Ownership: tmd_score holds no pointers; the JSON text is malloc'd, caller frees.
 */
#ifndef TMD_SCORE_H
#define TMD_SCORE_H

#include "tmd/core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tmd_prf {
    int64_t tp, fp, fn;
    double precision, recall, f1;   /* NAN when undefined (no found / no true items) */
} tmd_prf;

typedef struct tmd_score {
    int64_t frames, height, width;
    double pixel_size, lattice_a;    /* from the truth file's attributes */
    double match_radius_px, border_px;
    tmd_prf detection;
    double rmse_px;                  /* position RMSE over matched pairs */
    int has_species;                 /* result has /atoms/species */
    double species_acc, metal_acc, chalcogen_acc;
    int64_t species_n, metal_n, chalcogen_n;
    int64_t confusion[8][8];         /* [true species][found species], DESIGN.md codes */
    int has_vacancies;               /* result has /defects */
    tmd_prf vacancy[4];              /* index 1 V_M, 2 V_X, 3 V_X2 (0 unused) */
    /* ROC AUC of /sites/instability against the observable truth: a site counts as dynamic if
     * its state (/sites/state species, /sites/jump) differs between two frames in which it is in
     * view (frame-0 position + true /drift inside the frame less the border). Without
     * /sites/state in the truth: against /sites/dynamic (has_observable = 0). */
    double instability_auc;
    int64_t auc_sites, auc_positives;
    int has_observable, observable_jumps; /* truth had /sites/state (+ /drift), and /sites/jump */
    /* the same sites against /sites/dynamic (changes in any frame, also out of view) */
    double instability_auc_any;
    int64_t auc_positives_any;
    double drift_rmse_px;            /* sqrt(mean |drift_found - drift_true|^2) over frames */
    double region_iou;               /* IoU of found and true defect-rich regions (as disks) */
} tmd_score;

/* Reads both files and computes every metric. Serial. */
tmd_status tmd_score_files(tmd_ctx *ctx, const char *result, const char *truth, tmd_score *out);

/* One-to-one greedy matching within `radius` per frame. match_t[i] = index of the found item
 * matched to true item i, or -1. frames may be NULL (all frame 0). Serial, O(N log N). */
tmd_status tmd_score_match(tmd_ctx *ctx, int64_t nt, const int32_t *tframe, const double *tx, const double *ty,
                           int64_t nf, const int32_t *fframe, const double *fx, const double *fy, double radius,
                           int64_t *match_t);

/* ROC AUC (Mann-Whitney, ties count one half) of scores against 0/1 labels; NAN if either
 * class is empty. */
double tmd_score_auc(int64_t n, const double *score, const int8_t *label);

/* The score as JSON (keys in docs/score.md); *json malloc'd. */
tmd_status tmd_score_json(tmd_ctx *ctx, const tmd_score *s, const char *result, const char *truth, char **json);

#ifdef __cplusplus
}
#endif
#endif
