/* tmdflow simulate — a simulated HAADF-STEM image, stack or mosaic with its ground truth. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "tmd/sim.h"

static void usage(void)
{
    printf("usage: tmdflow simulate -o OUT.(h5|tif) [options] [name=value ...]\n\n"
           "Every condition is drawn from the seed over the simulator's whole range; any can be fixed:\n"
           "  -o FILE               output: .h5 (/image + truth) or .tif (image; truth in FILE.truth.h5)\n"
           "  --size N              N x N pixels (default 512)\n"
           "  --height H --width W  rectangular image\n"
           "  --frames T            time series of T frames (drift, beam-driven dynamics)\n"
           "  --seed S              seed (default 1); the same seed gives the same file on any rank count\n"
           "  --pixel-size A        Angstrom per pixel (drawn 0.06-0.18)\n"
           "  --dose D              counts at a W column peak (drawn 15-1000)\n"
           "  --composition x,y     W fraction of metals, Se fraction of chalcogens\n"
           "  --u16 | --float32     image sample type (default float32)\n"
           "  --param NAME=VALUE    any simulation parameter (same as a bare NAME=VALUE)\n"
           "  --list-params         the parameters with ranges and meanings\n"
           "  --force               overwrite OUT\n"
           "Runs as plain tmdflow or under mpiexec -n N; each rank renders its own rows.\n");
}

static void list_params(void)
{
    printf("%-22s %-12s %-12s %s\n", "name", "min", "max", "meaning");
    for (int i = 0;; i++) {
        const char *name, *doc;
        double lo, hi;
        if (!tmd_sim_param_info(i, &name, &lo, &hi, &doc)) break;
        printf("%-22s %-12g %-12g %s\n", name, lo, hi, doc);
    }
    printf("%-22s %-12s %-12s %s\n", "composition", "x,y", "", "comp_w and comp_se together");
}

tmd_status tmd_cmd_simulate(tmd_ctx *ctx, MPI_Comm comm, int argc, char **argv)
{
    const char *out = NULL, *v;
    long seed = 1, size = 512, height = -1, width = -1, frames = 1;
    int force = 0, u16 = 0;
    /* first pass: structural options and the seed; overrides are applied after the draw */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            if (ctx->rank == 0) usage();
            return TMD_OK;
        } else if (!strcmp(a, "--list-params")) {
            if (ctx->rank == 0) list_params();
            return TMD_OK;
        } else if (!strcmp(a, "-o") || !strcmp(a, "--output")) {
            TMD_CHECK(tmd_cli_value(ctx, argc, argv, i++, &out));
        } else if (!strcmp(a, "--size")) {
            TMD_CHECK(tmd_cli_value(ctx, argc, argv, i++, &v));
            TMD_CHECK(tmd_cli_int(ctx, a, v, 8, 10000000, &size));
        } else if (!strcmp(a, "--height")) {
            TMD_CHECK(tmd_cli_value(ctx, argc, argv, i++, &v));
            TMD_CHECK(tmd_cli_int(ctx, a, v, 8, 10000000, &height));
        } else if (!strcmp(a, "--width")) {
            TMD_CHECK(tmd_cli_value(ctx, argc, argv, i++, &v));
            TMD_CHECK(tmd_cli_int(ctx, a, v, 8, 10000000, &width));
        } else if (!strcmp(a, "--frames")) {
            TMD_CHECK(tmd_cli_value(ctx, argc, argv, i++, &v));
            TMD_CHECK(tmd_cli_int(ctx, a, v, 1, 1000000, &frames));
        } else if (!strcmp(a, "--seed")) {
            TMD_CHECK(tmd_cli_value(ctx, argc, argv, i++, &v));
            TMD_CHECK(tmd_cli_int(ctx, a, v, 0, 0x7fffffffL, &seed));
        } else if (!strcmp(a, "--force")) {
            force = 1;
        } else if (!strcmp(a, "--u16")) {
            u16 = 1;
        } else if (!strcmp(a, "--float32")) {
            u16 = 0;
        } else if (!strcmp(a, "--pixel-size") || !strcmp(a, "--dose") || !strcmp(a, "--composition") ||
                   !strcmp(a, "--param")) {
            i++; /* second pass */
            if (i >= argc) return TMD_FAIL(ctx, TMD_ERR_ARG, "option %s needs a value", a);
        } else if (a[0] != '-' && strchr(a, '=')) {
            /* NAME=VALUE, second pass */
        } else {
            return TMD_FAIL(ctx, TMD_ERR_ARG, "simulate: unknown option '%s' (see tmdflow simulate --help)", a);
        }
    }
    if (!out) return TMD_FAIL(ctx, TMD_ERR_ARG, "simulate: -o OUT.h5 or -o OUT.tif is required");
    tmd_sim_params p;
    tmd_sim_params_draw(&p, (uint64_t)seed, 0);
    p.height = height > 0 ? height : size;
    p.width = width > 0 ? width : size;
    p.frames = frames;
    p.out_u16 = u16;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        char kv[512];
        if (!strcmp(a, "--pixel-size")) TMD_CHECK(tmd_sim_param_set(ctx, &p, "pixel_size", argv[++i]));
        else if (!strcmp(a, "--dose")) TMD_CHECK(tmd_sim_param_set(ctx, &p, "dose", argv[++i]));
        else if (!strcmp(a, "--composition")) TMD_CHECK(tmd_sim_param_set(ctx, &p, "composition", argv[++i]));
        else if (!strcmp(a, "-o") || !strcmp(a, "--output") || !strcmp(a, "--size") || !strcmp(a, "--height") ||
                 !strcmp(a, "--width") || !strcmp(a, "--frames") || !strcmp(a, "--seed")) i++;
        else if (!strcmp(a, "--param") || (a[0] != '-' && strchr(a, '='))) {
            const char *text = !strcmp(a, "--param") ? argv[++i] : a;
            const char *eq = strchr(text, '=');
            if (!eq || eq == text || strlen(text) >= sizeof kv)
                return TMD_FAIL(ctx, TMD_ERR_ARG, "simulate: expected NAME=VALUE, got '%s'", text);
            memcpy(kv, text, (size_t)(eq - text));
            kv[eq - text] = 0;
            TMD_CHECK(tmd_sim_param_set(ctx, &p, kv, eq + 1));
        }
    }
    TMD_CHECK(tmd_sim_params_finish(ctx, &p));
    return tmd_sim_write(ctx, &p, out, force, comm);
}
