/* tmdflow run INPUT -o RESULT.h5 [--pixel-size A] [--config FILE] [--force] [--resume]
 *              [key=value ...]
 * Parses the command line into a tmd_run and calls the pipeline (tmd/pipeline.h). */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "commands.h"
#include "tmd/pipeline.h"

static void run_usage(FILE *f)
{
    fprintf(f,
            "usage: tmdflow run INPUT -o RESULT.h5 [--pixel-size A] [--config FILE] [--force] [--resume] [key=value ...]\n"
            "\n"
            "Finds every atomic column of INPUT (TIFF/BigTIFF, multi-page stack, or FILE.h5:/dataset) and writes\n"
            "RESULT.h5 (written as RESULT.h5.tmp, renamed only on success). Run under mpiexec/srun for many ranks.\n"
            "\n"
            "  -o, --output FILE    result file (required)\n"
            "  --pixel-size A       Angstrom per input pixel (same as pixel_size=A); without it, the input's own\n"
            "                       calibration if it has one (pixel_size_from_file=0 ignores it), else measured\n"
            "                       from the lattice\n"
            "  --config FILE        INI configuration; key=value arguments override it\n"
            "  --force              overwrite an existing result\n"
            "  --resume             continue an interrupted run from its checkpoint RESULT.h5.ckpt/ (same input\n"
            "                       and configuration; any rank count)\n"
            "  --list-keys          print every configuration key (Markdown) and exit\n"
            "  key=value            any configuration key (docs/configuration.md)\n");
}

tmd_status tmd_cmd_run(tmd_ctx *ctx, MPI_Comm comm, int argc, char **argv)
{
    static tmd_run run; /* large (configuration strings); one per process */
    tmd_run_init(&run);
    const char *input = NULL, *output = NULL, *config_file = NULL;
    int resume = 0;
    tmd_status st = TMD_OK;
    /* pass 1: options; key=value collected in order */
    for (int i = 1; i < argc && !st; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            if (ctx->rank == 0) run_usage(stdout);
            tmd_run_free(&run);
            return TMD_OK;
        } else if (!strcmp(a, "--list-keys")) {
            tmd_run_free(&run);
            return ctx->rank == 0 ? tmd_config_write_markdown(ctx, "/dev/stdout") : TMD_OK;
        } else if (!strcmp(a, "-o") || !strcmp(a, "--output")) {
            st = tmd_cli_value(ctx, argc, argv, i++, &output);
        } else if (!strcmp(a, "--config")) {
            st = tmd_cli_value(ctx, argc, argv, i++, &config_file);
        } else if (!strcmp(a, "--pixel-size")) {
            const char *v;
            st = tmd_cli_value(ctx, argc, argv, i++, &v);
            if (!st) st = tmd_cli_double(ctx, "--pixel-size", v, 1e-4, 10, &run.pixel_size_arg);
        } else if (!strcmp(a, "--force")) {
            run.force = 1;
        } else if (!strcmp(a, "--resume")) {
            resume = 1;
        } else if (a[0] == '-' && a[1]) {
            st = TMD_FAIL(ctx, TMD_ERR_ARG, "run: unknown option '%s' (see tmdflow run --help)", a);
        } else if (strchr(a, '=')) {
            /* applied after the configuration file */
        } else if (!input) {
            input = a;
        } else {
            st = TMD_FAIL(ctx, TMD_ERR_ARG, "run: unexpected argument '%s' (the input is already '%s')", a, input);
        }
    }
    if (!st && !input) st = TMD_FAIL(ctx, TMD_ERR_ARG, "run: no input given (usage: tmdflow run INPUT -o RESULT.h5 ...)");
    if (!st && !output) st = TMD_FAIL(ctx, TMD_ERR_ARG, "run: no result file given (-o RESULT.h5)");
    if (!st && resume && run.force)
        st = TMD_FAIL(ctx, TMD_ERR_ARG, "run: --resume and --force contradict each other (--force discards a checkpoint)");
    run.resume = resume;
    if (!st && (strlen(input) >= sizeof run.input || strlen(output) >= sizeof run.output))
        st = TMD_FAIL(ctx, TMD_ERR_ARG, "run: path too long (at most %d characters)", TMD_PATH_MAX - 1);
    if (!st && config_file) st = tmd_config_load_file(ctx, &run.cfg, config_file);
    for (int i = 1; i < argc && !st; i++) {
        if (!strcmp(argv[i], "-o") || !strcmp(argv[i], "--output") || !strcmp(argv[i], "--config") ||
            !strcmp(argv[i], "--pixel-size")) {
            i++;
            continue;
        }
        if (argv[i][0] != '-' && strchr(argv[i], '=')) st = tmd_config_set_kv(ctx, &run.cfg, argv[i], "command line");
    }
    /* every rank parsed the same arguments; agree anyway before the collective run */
    st = tmd_agree(ctx, comm, st);
    if (!st && resume) {
        /* a resubmitted job whose previous attempt finished: nothing to do */
        char ck[TMD_PATH_MAX + 8];
        snprintf(ck, sizeof ck, "%s.ckpt", output);
        int done = ctx->rank == 0 && access(output, F_OK) == 0 && access(ck, F_OK) != 0;
        MPI_Bcast(&done, 1, MPI_INT, 0, comm);
        if (done) {
            tmd_info(ctx, "run --resume: %s is already complete (no checkpoint %s); nothing to do", output, ck);
            tmd_run_free(&run);
            return TMD_OK;
        }
    }
    if (!st) {
        snprintf(run.input, sizeof run.input, "%s", input);
        snprintf(run.output, sizeof run.output, "%s", output);
        st = tmd_run_execute(ctx, comm, &run);
    }
    tmd_run_free(&run);
    return st;
}
