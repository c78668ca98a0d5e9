/* tmdflow sweep RESULT.h5 --param NAME=V1,V2,... [--param ...] -o SWEEP.h5 [--force]
 *
 * Re-runs only the stages after the cached ones (instability threshold -> density maps ->
 * regions) for every setting of the product of the parameter values (tmd/sweep.h), prints
 * one line per setting on rank 0 and writes SWEEP.h5. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "tmd/sweep.h"

enum { MAX_PARAMS = 8 };

static void usage(FILE *f)
{
    fprintf(f, "usage: tmdflow sweep RESULT.h5 --param NAME=V1,V2,... [--param ...] -o SWEEP.h5 [--force]\n"
               "  Re-runs threshold -> density -> regions from the stages cached in RESULT.h5 for every\n"
               "  combination of the values (the product over --param). NAME is one of\n"
               "  instability_threshold, density_bin_px, density_sigma, region_threshold, min_region_bins.\n"
               "  SWEEP.h5: /sweep/<NAME>, /sweep/n_unstable, /sweep/n_regions, /sweep/region_area_px (one row\n"
               "  per setting) and /settings/NNN/regions/{id,x,y,area_px,n_sites}.\n");
}

tmd_status tmd_cmd_sweep(tmd_ctx *ctx, MPI_Comm comm, int argc, char **argv)
{
    const char *input = NULL, *output = NULL;
    int force = 0, np = 0;
    tmd_sweep_param p[MAX_PARAMS];
    tmd_sweep_input in;
    int loaded = 0;
    tmd_sweep_row *rows = NULL;
    memset(p, 0, sizeof p);
    tmd_status st = TMD_OK;
    for (int i = 1; i < argc && !st; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            if (ctx->rank == 0) usage(stdout);
            goto cleanup;
        } else if (!strcmp(a, "-o") || !strcmp(a, "--output")) {
            st = tmd_cli_value(ctx, argc, argv, i++, &output);
        } else if (!strcmp(a, "--param")) {
            const char *v;
            st = tmd_cli_value(ctx, argc, argv, i++, &v);
            if (!st && np == MAX_PARAMS) st = TMD_FAIL(ctx, TMD_ERR_ARG, "sweep: at most %d --param options", MAX_PARAMS);
            if (!st) st = tmd_sweep_parse(ctx, v, &p[np]);
            if (!st) {
                for (int q = 0; q < np && !st; q++)
                    if (!strcmp(p[q].name, p[np].name))
                        st = TMD_FAIL(ctx, TMD_ERR_ARG, "sweep: --param %s given twice", p[np].name);
                np++;
            }
        } else if (!strcmp(a, "--force")) {
            force = 1;
        } else if (a[0] == '-' && a[1]) {
            st = TMD_FAIL(ctx, TMD_ERR_ARG, "sweep: unknown option '%s' (see tmdflow sweep --help)", a);
        } else if (!input) {
            input = a;
        } else {
            st = TMD_FAIL(ctx, TMD_ERR_ARG, "sweep: one result file expected, got '%s' and '%s'", input, a);
        }
    }
    if (!st && !input) st = TMD_FAIL(ctx, TMD_ERR_ARG, "sweep: no RESULT.h5 given (see tmdflow sweep --help)");
    if (!st && !output) st = TMD_FAIL(ctx, TMD_ERR_ARG, "sweep: no output given (-o SWEEP.h5)");
    if (!st && np == 0) st = TMD_FAIL(ctx, TMD_ERR_ARG, "sweep: no --param NAME=V1,V2,... given");
    if (!st && tmd_sweep_count(p, np) > 100000)
        st = TMD_FAIL(ctx, TMD_ERR_ARG, "sweep: %lld settings is too many (at most 100000)", (long long)tmd_sweep_count(p, np));
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    double t0 = tmd_now();
    st = tmd_sweep_load(ctx, comm, input, &in);
    if (st) goto cleanup;
    loaded = 1;
    double t1 = tmd_now();
    st = tmd_sweep_run(ctx, comm, &in, p, np, output, force, &rows);
    if (st) goto cleanup;
    int64_t n = tmd_sweep_count(p, np);
    if (ctx->rank == 0) {
        printf("setting");
        for (int i = 0; i < np; i++) printf("  %s", p[i].name);
        printf("  n_unstable  n_regions  region_area_px\n");
        for (int64_t k = 0; k < n; k++) {
            printf("%7lld", (long long)k);
            int64_t kk = k;
            double v[MAX_PARAMS];
            for (int i = np - 1; i >= 0; i--) {
                v[i] = p[i].values[kk % p[i].n];
                kk /= p[i].n;
            }
            for (int i = 0; i < np; i++) printf("  %*g", (int)strlen(p[i].name), v[i]);
            printf("  %10lld  %9lld  %14.0f\n", (long long)rows[k].n_unstable, (long long)rows[k].n_regions, rows[k].area_px);
        }
        fflush(stdout);
    }
    tmd_info(ctx, "sweep: %lld settings in %.3f s (loading the cached stages %.3f s) -> %s", (long long)n,
             tmd_now() - t1, t1 - t0, output);
cleanup:
    for (int i = 0; i < MAX_PARAMS; i++) tmd_sweep_param_free(&p[i]);
    if (loaded) tmd_sweep_input_free(&in);
    free(rows);
    return st;
}
