/* tmdflow — the command line. A thin layer: MPI start-up, signals, dispatch to a
 * subcommand, one error message, exit code. Only this file names MPI_COMM_WORLD and only
 * here may the process exit. */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"

static volatile sig_atomic_t stop_requested = 0;

static void on_stop_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

static const tmd_cli_command COMMANDS[] = {
    {"run", tmd_cmd_run, "run INPUT -o RESULT.h5 [--pixel-size A] [--config FILE] [--force] [--resume] [key=value ...]"},
    {"simulate", tmd_cmd_simulate, "simulate -o OUT.(tif|h5) [--size N] [--frames T] [--seed S] [...]"},
    {"score", tmd_cmd_score, "score RESULT.h5 TRUTH.h5 [--json FILE]"},
    {"train", tmd_cmd_train, "train unet|classifier|autoencoder -o MODEL.h5 [...]"},
    {"sweep", tmd_cmd_sweep, "sweep RESULT.h5 --param NAME=V1,V2,... -o SWEEP.h5"},
    {"render", tmd_cmd_render, "render RESULT.h5 -o PICTURE.png [--frame T] [--region x,y,w,h]"},
    {"info", tmd_cmd_info, "info FILE"},
};
#define NCOMMANDS (sizeof COMMANDS / sizeof COMMANDS[0])

static void usage(FILE *f)
{
    fprintf(f, "tmdflow %s — atomic columns, species, vacancies and dynamics in HAADF-STEM images of TMD monolayers\n\n"
               "usage (plain, or under mpiexec -n N / srun):\n", TMD_VERSION);
    for (size_t i = 0; i < NCOMMANDS; i++) fprintf(f, "  tmdflow %s\n", COMMANDS[i].usage);
    fprintf(f, "\nEach command takes --help. Environment: TMDFLOW_LOG=quiet|info|debug, TMDFLOW_MODELS=DIR.\n");
}

tmd_status tmd_cli_value(tmd_ctx *ctx, int argc, char **argv, int i, const char **out)
{
    if (i + 1 >= argc) return TMD_FAIL(ctx, TMD_ERR_ARG, "option %s needs a value", argv[i]);
    *out = argv[i + 1];
    return TMD_OK;
}

tmd_status tmd_cli_int(tmd_ctx *ctx, const char *opt, const char *text, long min, long max, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (!*text || *end || errno) return TMD_FAIL(ctx, TMD_ERR_ARG, "option %s: expected an integer, got '%s'", opt, text);
    if (v < min || v > max)
        return TMD_FAIL(ctx, TMD_ERR_ARG, "option %s: %ld is out of range, expected %ld to %ld", opt, v, min, max);
    *out = v;
    return TMD_OK;
}

tmd_status tmd_cli_double(tmd_ctx *ctx, const char *opt, const char *text, double min, double max, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (!*text || *end || errno || !isfinite(v))
        return TMD_FAIL(ctx, TMD_ERR_ARG, "option %s: expected a number, got '%s'", opt, text);
    if (v < min || v > max)
        return TMD_FAIL(ctx, TMD_ERR_ARG, "option %s: %g is out of range, expected %g to %g", opt, v, min, max);
    *out = v;
    return TMD_OK;
}

int main(int argc, char **argv)
{
    int provided;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm world = MPI_COMM_WORLD;
    /* Errors are handled by return codes; an MPI error must not abort silently. */
    MPI_Comm_set_errhandler(world, MPI_ERRORS_RETURN);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    /* The handler only sets a flag that the tile loop polls: restart interrupted system calls,
     * so that a signal landing inside MPI, HDF5 or a read never surfaces as EINTR there. */
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    tmd_ctx ctx;
    tmd_ctx_init(&ctx, world);
    ctx.stop_flag = &stop_requested;

    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        if (ctx.rank == 0) usage(stdout);
        MPI_Finalize();
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
        if (ctx.rank == 0) printf("tmdflow %s\n", TMD_VERSION);
        MPI_Finalize();
        return 0;
    }
    const tmd_cli_command *cmd = NULL;
    for (size_t i = 0; i < NCOMMANDS; i++)
        if (!strcmp(argv[1], COMMANDS[i].name)) cmd = &COMMANDS[i];
    tmd_status st;
    if (!cmd) {
        st = TMD_FAIL(&ctx, TMD_ERR_ARG, "unknown command '%s' (commands: run, simulate, score, train, sweep, render, info)",
                      argv[1]);
    } else {
        st = cmd->fn(&ctx, world, argc - 1, argv + 1);
    }
    st = tmd_agree(&ctx, world, st);
    if (st && ctx.rank == 0) tmd_error_print(&ctx);
    MPI_Finalize();
    if (st == TMD_ERR_INTERRUPTED) return 3;
    return st ? 1 : 0;
}
