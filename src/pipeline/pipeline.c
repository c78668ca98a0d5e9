/* The run driver: the stage list, the tile pass, accounting (see tmd/pipeline.h). */
#include "tmd/pipeline.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pipeline_internal.h"
#include "tmd/classify.h"
#include "tmd/dynamics.h"
#include "tmd/lattice.h"
#include "tmd/nn.h"

/* ======================= THE STAGES, IN ORDER ======================= */
static const tmd_stage STAGES[] = {
    /* name        kind              global fn              tile fn          begin            end */
    {"open",      TMD_STAGE_GLOBAL, tmd_stage_open,       NULL,            NULL,            NULL},
    {"lattice",   TMD_STAGE_GLOBAL, tmd_stage_lattice,    NULL,            NULL,            NULL},
    {"scale",     TMD_STAGE_GLOBAL, tmd_stage_scale,      NULL,            NULL,            NULL},
    {"decompose", TMD_STAGE_GLOBAL, tmd_stage_decompose,  NULL,            NULL,            NULL},
    {"normalise", TMD_STAGE_GLOBAL, tmd_stage_normalise,  NULL,            NULL,            NULL},
    {"read",      TMD_STAGE_TILE,   NULL,                 tmd_tile_read,   NULL,            NULL},
    {"unet",      TMD_STAGE_TILE,   NULL,                 tmd_tile_unet,   tmd_unet_begin,  tmd_unet_end},
    {"atoms",     TMD_STAGE_TILE,   NULL,                 tmd_tile_atoms,  NULL,            NULL},
    {"features",  TMD_STAGE_TILE,   NULL,                 tmd_tile_features, tmd_features_begin, tmd_features_end},
    {"classify",  TMD_STAGE_GLOBAL, tmd_stage_classify,   NULL,            NULL,            NULL},
    {"drift",     TMD_STAGE_GLOBAL, tmd_stage_drift,      NULL,            NULL,            NULL},
    {"track",     TMD_STAGE_GLOBAL, tmd_stage_track,      NULL,            NULL,            NULL},
    {"instability", TMD_STAGE_GLOBAL, tmd_stage_instability, NULL,         NULL,            NULL},
    {"density",   TMD_STAGE_GLOBAL, tmd_stage_density,    NULL,            NULL,            NULL},
    {"write",     TMD_STAGE_GLOBAL, tmd_stage_write,      NULL,            NULL,            NULL},
};
#define NSTAGES ((int)(sizeof STAGES / sizeof STAGES[0]))
/* ==================================================================== */

const tmd_stage *tmd_run_stages(int *n)
{
    *n = NSTAGES;
    return STAGES;
}

void tmd_run_init(tmd_run *run)
{
    memset(run, 0, sizeof *run);
    tmd_config_defaults(&run->cfg);
    run->comm = MPI_COMM_NULL;
    run->seg_dset = H5I_INVALID_HID;
    tmd_atom_table_init(&run->atoms, TMD_NCLASSES);
    tmd_atom_table_init(&run->ghosts, TMD_NCLASSES);
    tmd_defect_table_init(&run->defects);
    tmd_site_table_init(&run->sites);
}

void tmd_run_free(tmd_run *run)
{
    tmd_ctx quiet;
    tmd_ctx_init(&quiet, run->comm != MPI_COMM_NULL ? run->comm : MPI_COMM_SELF);
    quiet.log_level = TMD_LOG_QUIET;
    if (run->seg_dset != H5I_INVALID_HID) H5Dclose(run->seg_dset);
    run->seg_dset = H5I_INVALID_HID;
    if (run->writer) tmd_writer_close(&quiet, &run->writer, 0);
    tmd_reader_close(&run->reader);
    tmd_nn_plan_destroy(&run->unet_plan);
    tmd_nn_model_free(&run->unet);
    tmd_normalise_destroy(&run->norm);
    tmd_decomp_destroy(&run->decomp);
    free(run->tile_rows);
    run->tile_rows = NULL;
    free(run->net_in);
    free(run->rs_tmp);
    free(run->seg_buf);
    tmd_atom_table_free(&run->atoms);
    tmd_atom_table_free(&run->ghosts);
    tmd_defect_table_free(&run->defects);
    tmd_site_table_free(&run->sites);
    if (run->dyn && run->dyn_free) run->dyn_free(&run->dyn);
    free(run->drift);
    free(run->lattice_a1);
    free(run->lattice_a2);
    run->net_in = run->rs_tmp = NULL;
    run->seg_buf = NULL;
    run->drift = run->lattice_a1 = run->lattice_a2 = NULL;
    if (run->comm != MPI_COMM_NULL) MPI_Comm_free(&run->comm);
    run->comm = MPI_COMM_NULL;
}

/* ---- accounting ---------------------------------------------------------------------- */

static void mib(char *buf, size_t n, double bytes) { snprintf(buf, n, "%.0f", bytes / 1048576.0); }

/* Collective. Builds the stage table text (same on every rank) into *out (malloc'd). */
static tmd_status stage_table(tmd_ctx *ctx, tmd_run *run, char **out, int64_t **peaks_out)
{
    *out = NULL;
    *peaks_out = NULL;
    int nr = ctx->nranks;
    double tmax[TMD_RUN_MAX_STAGES] = {0}, tloc[TMD_RUN_MAX_STAGES] = {0};
    int64_t pmax[TMD_RUN_MAX_STAGES] = {0}, ploc[TMD_RUN_MAX_STAGES] = {0};
    for (int i = 0; i < NSTAGES; i++) {
        tloc[i] = run->stat[i].seconds;
        ploc[i] = run->stat[i].peak_rss;
    }
    MPI_Allreduce(tloc, tmax, NSTAGES, MPI_DOUBLE, MPI_MAX, run->comm);
    MPI_Allreduce(ploc, pmax, NSTAGES, MPI_INT64_T, MPI_MAX, run->comm);
    int64_t mypeak = tmd_peak_rss_bytes(), *peaks = calloc((size_t)nr, sizeof *peaks);
    size_t cap = 4096 + (size_t)nr * 24;
    char *t = malloc(cap);
    if (!peaks || !t) {
        free(peaks);
        free(t);
        return TMD_FAIL(ctx, TMD_ERR_NOMEM, "out of memory for the stage table");
    }
    MPI_Allgather(&mypeak, 1, MPI_INT64_T, peaks, 1, MPI_INT64_T, run->comm);
    double total = 0;
    for (int i = 0; i < NSTAGES; i++) total += tmax[i];
    double mpix = (double)run->info.frames * (double)run->info.height * (double)run->info.width / 1e6;
    size_t len = 0;
    len += (size_t)snprintf(t + len, cap - len, "%-12s %10s %7s %10s %12s\n", "stage", "time_s", "share", "Mpix_s",
                            "peak_MiB_max");
    for (int i = 0; i < NSTAGES; i++) {
        char pk[32];
        mib(pk, sizeof pk, (double)pmax[i]);
        /* throughput only where the stage did measurable work (1 ms) over the pixels */
        double thr = tmax[i] >= 1e-3 ? mpix / tmax[i] : 0;
        len += (size_t)snprintf(t + len, cap - len, "%-12s %10.3f %6.1f%% %10.2f %12s\n", STAGES[i].name, tmax[i],
                                total > 0 ? 100 * tmax[i] / total : 0, STAGES[i].kind == TMD_STAGE_TILE || !strcmp(STAGES[i].name, "normalise") ? thr : 0,
                                pk);
    }
    len += (size_t)snprintf(t + len, cap - len, "%-12s %10.3f %6.1f%% %10.2f\n", "total", total, 100.0,
                            total > 0 ? mpix / total : 0);
    len += (size_t)snprintf(t + len, cap - len, "peak_MiB_per_rank");
    for (int r = 0; r < nr && len + 32 < cap; r++) {
        char pk[32];
        mib(pk, sizeof pk, (double)peaks[r]);
        len += (size_t)snprintf(t + len, cap - len, " %s", pk);
    }
    snprintf(t + len, cap - len, "\n");
    *out = t;
    *peaks_out = peaks;
    return TMD_OK;
}

/* ---- the driver ----------------------------------------------------------------------- */

/* The tile pass over stages [first, last]: every local tile goes through each tile stage in
 * order, or (--resume) is loaded from the checkpoint; each computed tile is checkpointed as
 * it completes. Rows end in local tile order either way, so the global stages see the same
 * table as in an uninterrupted run. Not collective inside; the caller agrees afterwards.
 *
 * Test hook: TMDFLOW_STOP_AFTER_TILES=N sets the stop flag (as SIGUSR1 would) once this rank
 * has computed N tiles. */
static tmd_status tile_pass(tmd_ctx *ctx, tmd_run *run, int first, int last)
{
    tmd_status st = TMD_OK;
    const tmd_decomp *d = run->decomp;
    tmd_tile tile;
    memset(&tile, 0, sizeof tile);
    tmd_atom_table loaded, merged;
    tmd_atom_table_init(&loaded, run->atoms.nprob);
    tmd_atom_table_init(&merged, run->atoms.nprob);
    int64_t *r0 = NULL, *r1 = NULL, computed = 0, stop_after = -1;
    char *from_ckpt = NULL;
    const char *hook = getenv("TMDFLOW_STOP_AFTER_TILES");
    if (hook && *hook) stop_after = atoll(hook);
    st = tmd_tile_buffers(ctx, run, &tile);
    if (!st) st = tmd_calloc(ctx, (void **)&r0, (size_t)d->nlocal + 1, sizeof *r0, "tile rows");
    if (!st) st = tmd_calloc(ctx, (void **)&r1, (size_t)d->nlocal + 1, sizeof *r1, "tile rows");
    if (!st) st = tmd_calloc(ctx, (void **)&from_ckpt, (size_t)d->nlocal + 1, 1, "tile sources");
    if (!st && run->atoms.nlatent) st = tmd_atom_table_set_latent(ctx, &loaded, run->atoms.nlatent);
    tmd_progress prog;
    tmd_progress_begin(&prog, ctx, "tiles", (double)d->ntiles_total, "tiles");
    int64_t i = 0;
    for (; i < d->nlocal && !st; i++) {
        if (tmd_interrupted(ctx)) {
            st = TMD_FAIL(ctx, TMD_ERR_INTERRUPTED,
                          "stopped by a signal after %lld of %lld tiles on rank %d; the completed tiles are kept in %s: "
                          "continue with the same command and --resume",
                          (long long)i, (long long)d->nlocal, ctx->rank, run->ckpt);
            break;
        }
        tile.local = i;
        tile.index = tmd_decomp_local_tile(d, i);
        if (tmd_ckpt_has(run, tile.index)) {
            from_ckpt[i] = 1;
            r0[i] = loaded.n;
            st = tmd_ckpt_load(ctx, run, tile.index, &loaded);
            r1[i] = loaded.n;
            run->tiles_loaded++;
            if (run->stream) { /* the rows stay in the file: only their count is kept */
                run->tile_rows[tile.index] = r1[i] - r0[i];
                loaded.n = r0[i];
            }
        } else {
            r0[i] = run->atoms.n;
            for (int s = first; s <= last && !st; s++) {
                double t0 = tmd_now();
                st = STAGES[s].tile(ctx, run, &tile);
                run->stat[s].seconds += tmd_now() - t0;
            }
            r1[i] = run->atoms.n;
            if (!st) st = tmd_ckpt_save(ctx, run, &tile, r0[i]);
            if (!st && run->stream) { /* streamed: the tile file is the only copy of its rows */
                if (run->ckpt_off)
                    st = TMD_FAIL(ctx, TMD_ERR_IO, "rank %d cannot write the tile files in %s that the streamed atom "
                                  "table needs (free space? or run with classify_band_tiles=0)", ctx->rank, run->ckpt);
                run->tile_rows[tile.index] = r1[i] - r0[i];
                run->atoms.n = r0[i];
            }
            computed++;
            if (stop_after >= 0 && computed >= stop_after && ctx->stop_flag) *ctx->stop_flag = 1;
        }
        run->tiles_done = i + 1;
        /* rank 0's share of the work, scaled to the whole grid */
        double frac = (double)(i + 1) / (double)(d->nlocal ? d->nlocal : 1);
        tmd_progress_update(&prog, frac * (double)d->ntiles_total);
    }
    if (!st) tmd_progress_end(&prog);
    if (!st && run->tiles_loaded && !run->stream) {
        /* rows in local tile order, as an uninterrupted run has them */
        if (run->atoms.nlatent) st = tmd_atom_table_set_latent(ctx, &merged, run->atoms.nlatent);
        for (int64_t k = 0; k < d->nlocal && !st; k++)
            st = tmd_atom_table_append(ctx, &merged, from_ckpt[k] ? &loaded : &run->atoms, r0[k], r1[k]);
        if (!st) {
            tmd_atom_table_free(&run->atoms);
            run->atoms = merged;
            tmd_atom_table_init(&merged, run->atoms.nprob);
        }
    }
    /* the table keeps only its rows from here on (classify and write size by cap) */
    if (!st) st = tmd_atom_table_shrink(ctx, &run->atoms);
    tmd_atom_table_free(&loaded);
    tmd_atom_table_free(&merged);
    free(r0);
    free(r1);
    free(from_ckpt);
    tmd_tile_buffers_free(&tile);
    return st;
}

tmd_status tmd_run_execute(tmd_ctx *ctx, MPI_Comm comm, tmd_run *run)
{
    tmd_status st = TMD_OK;
    char *table = NULL;
    int64_t *peaks = NULL;
    run->t_begin = tmd_now();
    snprintf(run->ckpt, sizeof run->ckpt, "%.*s.ckpt", TMD_PATH_MAX - 8, run->output);
    st = TMD_MPI(ctx, MPI_Comm_dup(comm, &run->comm));
    st = tmd_agree(ctx, comm, st);
    if (st) return st;
    for (int i = 0; i < NSTAGES && !st; i++) {
        if (STAGES[i].kind == TMD_STAGE_GLOBAL) {
            tmd_debug(ctx, "stage %s", STAGES[i].name);
            double t0 = tmd_now();
            st = STAGES[i].run(ctx, run);
            st = tmd_agree(ctx, run->comm, st);
            run->stat[i].seconds += tmd_now() - t0;
            run->stat[i].peak_rss = tmd_peak_rss_bytes();
            run->stat[i].ran = 1;
            continue;
        }
        /* a run of consecutive tile stages: begin each (collective), one pass, end each */
        int last = i;
        while (last + 1 < NSTAGES && STAGES[last + 1].kind == TMD_STAGE_TILE) last++;
        int begun = i;
        for (int s = i; s <= last && !st; s++) {
            double t0 = tmd_now();
            if (STAGES[s].begin) st = STAGES[s].begin(ctx, run);
            st = tmd_agree(ctx, run->comm, st);
            run->stat[s].seconds += tmd_now() - t0;
            if (!st) begun = s + 1;
        }
        if (!st) {
            st = tmd_ckpt_prepare(ctx, run); /* collective; after the configuration is final */
            if (!st) run->ckpt_made = 1;
        }
        if (!st) { /* streamed atom table: mosaics with a checkpoint (see tmd/pipeline.h) */
            run->stream = !run->ckpt_off && run->info.frames == 1 && run->cfg.classify_band_tiles > 0;
            /* the classify stage reads its ghosts from other ranks' tile files: every rank must
             * see the checkpoint directory (a shared file system), else the atoms stay in memory */
            char mpath[TMD_PATH_MAX + 16];
            snprintf(mpath, sizeof mpath, "%s/manifest", run->ckpt);
            int sees = access(mpath, R_OK) == 0, all = 0;
            MPI_Allreduce(&sees, &all, 1, MPI_INT, MPI_MIN, run->comm);
            if (run->stream && !all) {
                tmd_info(ctx, "warning: not every rank sees %s: the atoms are kept in memory (classify_band_tiles "
                         "needs the checkpoint directory on a shared file system)", run->ckpt);
                run->stream = 0;
            }
            snprintf(run->stream_kind, sizeof run->stream_kind, "tile");
            free(run->tile_rows);
            run->tile_rows = NULL;
            if (run->stream)
                st = tmd_calloc(ctx, (void **)&run->tile_rows, (size_t)run->decomp->ntiles_total + 1, sizeof(int64_t),
                                "rows per tile");
            st = tmd_agree(ctx, run->comm, st);
        }
        if (!st) {
            tmd_info(ctx, "tile pass (%s) over %lld tiles on %d ranks", STAGES[i].name, (long long)run->decomp->ntiles_total,
                     ctx->nranks);
            st = tile_pass(ctx, run, i, last);
            st = tmd_agree(ctx, run->comm, st);
            if (!st && run->stream) /* every rank knows every tile's row count */
                st = TMD_MPI(ctx, MPI_Allreduce(MPI_IN_PLACE, run->tile_rows, (int)run->decomp->ntiles_total,
                                                MPI_INT64_T, MPI_SUM, run->comm));
        }
        for (int s = i; s < begun; s++) {
            double t0 = tmd_now();
            tmd_status e = STAGES[s].end ? STAGES[s].end(ctx, run) : TMD_OK;
            e = tmd_agree(ctx, run->comm, e);
            if (!st) st = e;
            run->stat[s].seconds += tmd_now() - t0;
        }
        for (int s = i; s <= last; s++) {
            run->stat[s].peak_rss = tmd_peak_rss_bytes();
            run->stat[s].ran = 1;
        }
        i = last;
    }
    if (!st) {
        st = stage_table(ctx, run, &table, &peaks);
        st = tmd_agree(ctx, run->comm, st);
    }
    if (!st) {
        tmd_info(ctx, "stages (%d ranks, %lld x %lld x %lld pixels):\n%s", ctx->nranks, (long long)run->info.frames,
                 (long long)run->info.height, (long long)run->info.width, table);
        st = tmd_writer_attr_str(ctx, run->writer, "/", "stage_table", table);
        if (!st) st = tmd_writer_attr_i64(ctx, run->writer, "/", "peak_rss_bytes", peaks, ctx->nranks);
    }
    if (run->writer) {
        tmd_status e = tmd_writer_close(ctx, &run->writer, st == TMD_OK);
        if (!st) st = e;
    }
    st = tmd_agree(ctx, run->comm, st);
    /* the result is published: the checkpoint is no longer needed. It is kept after a stop by a
     * signal (and a killed job leaves it); any other failure removes it (such errors repeat) */
    if (!st || (st != TMD_ERR_INTERRUPTED && run->ckpt_made)) tmd_ckpt_finish(ctx, run);
    if (!st && run->tiles_loaded >= 0) {
        int64_t l = run->tiles_loaded, g = 0;
        MPI_Allreduce(&l, &g, 1, MPI_INT64_T, MPI_SUM, run->comm);
        if (g) tmd_info(ctx, "resumed: %lld of %lld tiles loaded from the checkpoint", (long long)g,
                        (long long)run->decomp->ntiles_total);
    }
    if (!st) tmd_info(ctx, "result: %s (%lld atoms, %.1f s)", run->output, (long long)tmd_run_total_atoms(run),
                      tmd_now() - run->t_begin);
    free(table);
    free(peaks);
    return st;
}
