#include "commands.h"
/* Placeholder until the score command lands (being written now); refuses clearly. */
tmd_status tmd_cmd_score(tmd_ctx *ctx, MPI_Comm comm, int argc, char **argv)
{
    (void)comm; (void)argc; (void)argv;
    return TMD_FAIL(ctx, TMD_ERR_ARG, "'tmdflow score' is not available in this build yet");
}
