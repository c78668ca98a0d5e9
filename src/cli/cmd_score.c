/* tmdflow score — accuracy of a result against simulated truth (docs/score.md). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "tmd/score.h"

static void pct(const char *label, double v)
{
    if (isfinite(v)) printf("  %-28s %.4f\n", label, v);
    else printf("  %-28s n/a\n", label);
}

static void print_score(const tmd_score *s)
{
    printf("tmdflow score: %lld frame(s) of %lld x %lld px, match radius %.2f px (a/4), border %.2f px\n",
           (long long)s->frames, (long long)s->height, (long long)s->width, s->match_radius_px, s->border_px);
    printf("  detection: tp %lld, fp %lld, fn %lld\n", (long long)s->detection.tp, (long long)s->detection.fp,
           (long long)s->detection.fn);
    pct("precision", s->detection.precision);
    pct("recall", s->detection.recall);
    pct("F1", s->detection.f1);
    pct("position RMSE (px)", s->rmse_px);
    if (s->has_species) {
        pct("species accuracy", s->species_acc);
        pct("  metal", s->metal_acc);
        pct("  chalcogen", s->chalcogen_acc);
    } else {
        printf("  species: n/a (no /atoms/species in the result)\n");
    }
    if (s->has_vacancies) {
        static const char *names[4] = {"", "V_M", "V_X", "V_X2"};
        for (int k = 1; k <= 3; k++) {
            char l[64];
            snprintf(l, sizeof l, "%s F1 (tp %lld fp %lld fn %lld)", names[k], (long long)s->vacancy[k].tp,
                     (long long)s->vacancy[k].fp, (long long)s->vacancy[k].fn);
            pct(l, s->vacancy[k].f1);
        }
    } else {
        printf("  vacancies: n/a (no /defects in the result)\n");
    }
    if (s->frames > 1) {
        pct("instability ROC AUC", s->instability_auc);
        printf("  instability truth: %lld dynamic of %lld sites (%s)\n", (long long)s->auc_positives,
               (long long)s->auc_sites,
               !s->has_observable ? "/sites/dynamic: changes in any frame"
               : s->observable_jumps ? "state or jump changes between frames in view"
                                     : "species changes between frames in view; truth has no /sites/jump");
        pct("AUC vs any-frame truth", s->instability_auc_any);
        pct("drift RMSE (px)", s->drift_rmse_px);
        pct("region IoU", s->region_iou);
    }
}

tmd_status tmd_cmd_score(tmd_ctx *ctx, MPI_Comm comm, int argc, char **argv)
{
    (void)comm;
    const char *files[2] = {NULL, NULL}, *json_path = NULL;
    int nfiles = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            if (ctx->rank == 0)
                printf("usage: tmdflow score RESULT.h5 TRUTH.h5 [--json FILE]\n"
                       "Matches found columns to true ones (one-to-one, within a/4), prints detection, position,\n"
                       "species, vacancy and (stacks) instability / drift / region metrics; --json writes them\n"
                       "(keys in docs/score.md). Missing result groups give null metrics.\n");
            return TMD_OK;
        } else if (!strcmp(argv[i], "--json")) {
            TMD_CHECK(tmd_cli_value(ctx, argc, argv, i++, &json_path));
        } else if (argv[i][0] == '-') {
            return TMD_FAIL(ctx, TMD_ERR_ARG, "score: unknown option '%s'", argv[i]);
        } else if (nfiles < 2) {
            files[nfiles++] = argv[i];
        } else {
            return TMD_FAIL(ctx, TMD_ERR_ARG, "score: expected RESULT.h5 TRUTH.h5, got a third file '%s'", argv[i]);
        }
    }
    if (nfiles != 2) return TMD_FAIL(ctx, TMD_ERR_ARG, "score: expected RESULT.h5 TRUTH.h5");
    if (ctx->rank != 0) return TMD_OK; /* serial: rank 0 scores, main agrees on its status */
    tmd_score s;
    TMD_CHECK(tmd_score_files(ctx, files[0], files[1], &s));
    print_score(&s);
    if (json_path) {
        char *json = NULL;
        TMD_CHECK(tmd_score_json(ctx, &s, files[0], files[1], &json));
        FILE *f = fopen(json_path, "w");
        if (!f) {
            free(json);
            return TMD_FAIL(ctx, TMD_ERR_IO, "%s: cannot write the score JSON", json_path);
        }
        int bad = fputs(json, f) < 0;
        bad |= fclose(f) != 0;
        free(json);
        if (bad) return TMD_FAIL(ctx, TMD_ERR_IO, "%s: writing the score JSON failed", json_path);
    }
    return TMD_OK;
}
