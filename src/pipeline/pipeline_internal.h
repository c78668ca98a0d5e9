/* Stage functions of the pipeline's own stages (src/pipeline/). Other modules' stage
 * functions are declared in their public headers. */
#ifndef TMD_PIPELINE_INTERNAL_H
#define TMD_PIPELINE_INTERNAL_H

#include "tmd/pipeline.h"

/* global stages (stages.c) */
tmd_status tmd_stage_open(tmd_ctx *ctx, tmd_run *run);
tmd_status tmd_stage_scale(tmd_ctx *ctx, tmd_run *run);
tmd_status tmd_stage_decompose(tmd_ctx *ctx, tmd_run *run);
tmd_status tmd_stage_normalise(tmd_ctx *ctx, tmd_run *run);
tmd_status tmd_stage_write(tmd_ctx *ctx, tmd_run *run);

/* tile stages (stages.c, unet.c) */
tmd_status tmd_tile_read(tmd_ctx *ctx, tmd_run *run, tmd_tile *tile);
tmd_status tmd_unet_begin(tmd_ctx *ctx, tmd_run *run);
tmd_status tmd_unet_end(tmd_ctx *ctx, tmd_run *run);
tmd_status tmd_tile_unet(tmd_ctx *ctx, tmd_run *run, tmd_tile *tile);
tmd_status tmd_tile_atoms(tmd_ctx *ctx, tmd_run *run, tmd_tile *tile);

/* tile buffers sized for the largest tile (stages.c) */
tmd_status tmd_tile_buffers(tmd_ctx *ctx, const tmd_run *run, tmd_tile *tile);
void tmd_tile_buffers_free(tmd_tile *tile);

/* checkpoint (checkpoint.c). prepare: collective, before the tile pass (manifest written or
 * checked). save/load: one tile, not collective. finish: collective, removes the checkpoint. */
tmd_status tmd_ckpt_prepare(tmd_ctx *ctx, tmd_run *run);
int tmd_ckpt_has(const tmd_run *run, int64_t index);
tmd_status tmd_ckpt_save(tmd_ctx *ctx, tmd_run *run, const tmd_tile *tile, int64_t row0);
tmd_status tmd_ckpt_load(tmd_ctx *ctx, tmd_run *run, int64_t index, tmd_atom_table *out);
tmd_status tmd_ckpt_finish(tmd_ctx *ctx, tmd_run *run);
/* class map rectangle of a tile core from run->seg_buf to /segmentation/classes (unet.c) */
tmd_status tmd_unet_write_seg(tmd_ctx *ctx, tmd_run *run, const tmd_box *core, int64_t index);

/* Sum of atoms over ranks (collective). */
int64_t tmd_run_total_atoms(tmd_run *run);

#endif
