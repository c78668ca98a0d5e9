/* tmdflow train unet|classifier|autoencoder -o MODEL.h5 [options]
 *
 * The command line of tmd/learn.h: data-parallel training of the shipped networks on the
 * simulator's streams (the model does not depend on the rank count), validation on a
 * held-out simulator seed, checkpoints every N steps and on SIGTERM/SIGUSR1, --resume. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "tmd/learn.h"

static void usage_msg(tmd_ctx *ctx)
{
    if (ctx->rank == 0)
        fprintf(stderr,
                "usage: tmdflow train unet|classifier|autoencoder -o MODEL.h5 [--steps N] [--batch B] [--tile S]\n"
                "       [--seed S] [--lr LR] [--lr-min LR] [--resume] [--checkpoint-every N] [--val-every N]\n"
                "       [--val-n N] [--base F] [--patch P] [--latent D] [--per-tile N] [--px A] [--px-jitter F]\n"
                "       [--no-augment] [--weight-decay W] [--eval] [--stop-after N]\n"
                "  --stop-after N: checkpoint and exit after step N of the --steps schedule (resume later)\n"
                "  --eval: only validate the existing model -o MODEL.h5 on --val-n held-out examples\n");
}

tmd_status tmd_cmd_train(tmd_ctx *ctx, MPI_Comm comm, int argc, char **argv)
{
    tmd_learn_opts o;
    tmd_learn_defaults(&o, TMD_LEARN_UNET);
    int kind = -1, eval = 0;
    long batch = 0; /* 0: the kind's default */
    char cmdline[2048] = "";
    for (int i = 0; i < argc; i++) {
        size_t l = strlen(cmdline);
        snprintf(cmdline + l, sizeof cmdline - l, "%s%s", i ? " " : "", argv[i]);
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        long *lp = NULL;
        double *dp = NULL;
        long lo = 1, hi = 1000000000L;
        if (!strcmp(a, "unet")) kind = TMD_LEARN_UNET;
        else if (!strcmp(a, "classifier")) kind = TMD_LEARN_CLASSIFIER;
        else if (!strcmp(a, "autoencoder")) kind = TMD_LEARN_AUTOENCODER;
        else if (!strcmp(a, "--resume")) o.resume = 1;
        else if (!strcmp(a, "--no-augment")) o.augment = 0;
        else if (!strcmp(a, "--eval")) eval = 1;
        else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage_msg(ctx);
            return TMD_OK;
        } else if (!strcmp(a, "-o")) {
            TMD_CHECK(tmd_cli_value(ctx, argc, argv, i++, &o.out));
        } else if (!strcmp(a, "--steps")) lp = &o.steps, lo = 0;
        else if (!strcmp(a, "--stop-after")) lp = &o.stop_after, lo = 0;
        else if (!strcmp(a, "--batch")) lp = &batch, hi = 4096;
        else if (!strcmp(a, "--tile")) lp = &o.tile, lo = 16, hi = 4096;
        else if (!strcmp(a, "--seed")) lp = &o.seed, lo = 0;
        else if (!strcmp(a, "--checkpoint-every")) lp = &o.ckpt_every, lo = 0;
        else if (!strcmp(a, "--val-every")) lp = &o.val_every, lo = 0;
        else if (!strcmp(a, "--val-n")) lp = &o.val_n;
        else if (!strcmp(a, "--base")) lp = &o.base, hi = 256;
        else if (!strcmp(a, "--patch")) lp = &o.patch, lo = 8, hi = 128;
        else if (!strcmp(a, "--latent")) lp = &o.latent, hi = 1024;
        else if (!strcmp(a, "--per-tile")) lp = &o.per_tile, hi = 4096;
        else if (!strcmp(a, "--lr")) dp = &o.lr;
        else if (!strcmp(a, "--lr-min")) dp = &o.lr_min;
        else if (!strcmp(a, "--px")) dp = &o.px;
        else if (!strcmp(a, "--px-jitter")) dp = &o.px_jitter;
        else if (!strcmp(a, "--weight-decay")) dp = &o.weight_decay;
        else {
            usage_msg(ctx);
            return TMD_FAIL(ctx, TMD_ERR_ARG, "train: unknown argument '%s'", a);
        }
        if (lp || dp) {
            TMD_CHECK(tmd_cli_value(ctx, argc, argv, i++, &v));
            if (lp) TMD_CHECK(tmd_cli_int(ctx, a, v, lo, hi, lp));
            else TMD_CHECK(tmd_cli_double(ctx, a, v, 0, 10, dp));
        }
    }
    if (kind < 0 || !o.out) {
        usage_msg(ctx);
        return TMD_FAIL(ctx, TMD_ERR_ARG, "train: need the model kind (unet, classifier, autoencoder) and -o MODEL.h5");
    }
    o.kind = (tmd_learn_kind)kind;
    o.batch = batch ? batch : (kind == TMD_LEARN_UNET ? 8 : 4);
    o.command = cmdline;
    if (eval) {
        tmd_learn_validation v;
        return tmd_learn_evaluate(ctx, comm, &o, &v);
    }
    return tmd_learn_train(ctx, comm, &o);
}
