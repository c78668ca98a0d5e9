#include "commands.h"
/* Placeholder until the train command lands (being written now); refuses clearly. */
tmd_status tmd_cmd_train(tmd_ctx *ctx, MPI_Comm comm, int argc, char **argv)
{
    (void)comm; (void)argc; (void)argv;
    return TMD_FAIL(ctx, TMD_ERR_ARG, "'tmdflow train' is not available in this build yet");
}
