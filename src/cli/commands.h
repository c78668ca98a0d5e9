/* The subcommands of the tmdflow program. Each lives in src/cli/cmd_<name>.c, parses its own
 * arguments and calls the library. Every command is collective over `comm` (all ranks run
 * it) and returns a status that main agrees on across ranks before printing the error once. */
#ifndef TMD_CLI_COMMANDS_H
#define TMD_CLI_COMMANDS_H

#include "tmd/core.h"

typedef tmd_status (*tmd_cli_fn)(tmd_ctx *ctx, MPI_Comm comm, int argc, char **argv);

typedef struct {
    const char *name;
    tmd_cli_fn fn;
    const char *usage;   /* one line, after "tmdflow " */
} tmd_cli_command;

tmd_status tmd_cmd_info(tmd_ctx *ctx, MPI_Comm comm, int argc, char **argv);
tmd_status tmd_cmd_run(tmd_ctx *ctx, MPI_Comm comm, int argc, char **argv);
tmd_status tmd_cmd_simulate(tmd_ctx *ctx, MPI_Comm comm, int argc, char **argv);
tmd_status tmd_cmd_score(tmd_ctx *ctx, MPI_Comm comm, int argc, char **argv);
tmd_status tmd_cmd_train(tmd_ctx *ctx, MPI_Comm comm, int argc, char **argv);
tmd_status tmd_cmd_render(tmd_ctx *ctx, MPI_Comm comm, int argc, char **argv);
tmd_status tmd_cmd_sweep(tmd_ctx *ctx, MPI_Comm comm, int argc, char **argv);

/* Shared argument helpers: parse a number with a message naming the option. */
tmd_status tmd_cli_int(tmd_ctx *ctx, const char *opt, const char *text, long min, long max, long *out);
tmd_status tmd_cli_double(tmd_ctx *ctx, const char *opt, const char *text, double min, double max, double *out);
/* Returns argv[i+1] or records "option X needs a value". */
tmd_status tmd_cli_value(tmd_ctx *ctx, int argc, char **argv, int i, const char **out);

#endif
