/* tmdflow render RESULT.h5 -o PICTURE.png [--frame T] [--region x,y,w,h] [--max-size N]
 * The picture is drawn by rank 0 (reading only the region asked for); other ranks wait and
 * agree on the outcome. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "tmd/render.h"

static void render_usage(FILE *f)
{
    fprintf(f, "usage: tmdflow render RESULT.h5 -o PICTURE.png [--frame T] [--region x,y,w,h] [--max-size N]\n"
               "                      [--no-atoms] [--no-maps] [--no-legend]\n"
               "Draws the input image (region only, downsampled to at most N px, default 2048) with every atom\n"
               "coloured by species, vacancies marked by type, density maps, a legend and a scale bar.\n");
}

tmd_status tmd_cmd_render(tmd_ctx *ctx, MPI_Comm comm, int argc, char **argv)
{
    const char *result = NULL, *out = NULL;
    tmd_render_opts o;
    tmd_render_opts_default(&o);
    tmd_status st = TMD_OK;
    for (int i = 1; i < argc && !st; i++) {
        const char *a = argv[i], *v = NULL;
        long l;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            if (ctx->rank == 0) render_usage(stdout);
            return TMD_OK;
        } else if (!strcmp(a, "-o") || !strcmp(a, "--output")) {
            if (!(st = tmd_cli_value(ctx, argc, argv, i, &v))) out = v, i++;
        } else if (!strcmp(a, "--frame")) {
            if (!(st = tmd_cli_value(ctx, argc, argv, i, &v)) && !(st = tmd_cli_int(ctx, a, v, 0, 1L << 40, &l)))
                o.frame = l, i++;
        } else if (!strcmp(a, "--max-size")) {
            if (!(st = tmd_cli_value(ctx, argc, argv, i, &v)) && !(st = tmd_cli_int(ctx, a, v, 16, 65536, &l)))
                o.max_size = (int)l, i++;
        } else if (!strcmp(a, "--region")) {
            if (!(st = tmd_cli_value(ctx, argc, argv, i, &v))) {
                long long r[4];
                char tail;
                if (sscanf(v, "%lld,%lld,%lld,%lld%c", &r[0], &r[1], &r[2], &r[3], &tail) != 4 || r[0] < 0 || r[1] < 0 ||
                    r[2] <= 0 || r[3] <= 0)
                    st = TMD_FAIL(ctx, TMD_ERR_ARG, "option --region: expected x,y,w,h (w, h > 0), got '%s'", v);
                else
                    for (int k = 0; k < 4; k++) o.region[k] = r[k];
                i++;
            }
        } else if (!strcmp(a, "--no-atoms")) {
            o.draw_atoms = 0;
        } else if (!strcmp(a, "--no-maps")) {
            o.draw_maps = 0;
        } else if (!strcmp(a, "--no-legend")) {
            o.legend = 0;
        } else if (a[0] == '-') {
            st = TMD_FAIL(ctx, TMD_ERR_ARG, "render: unknown option %s (see tmdflow render --help)", a);
        } else if (!result) {
            result = a;
        } else {
            st = TMD_FAIL(ctx, TMD_ERR_ARG, "render: unexpected argument '%s' (one RESULT.h5 only)", a);
        }
    }
    if (!st && (!result || !out))
        st = TMD_FAIL(ctx, TMD_ERR_ARG, "render: need RESULT.h5 and -o PICTURE.png (see tmdflow render --help)");
    if (!st && ctx->rank == 0) st = tmd_render(ctx, result, out, &o);
    return tmd_agree(ctx, comm, st);
}
