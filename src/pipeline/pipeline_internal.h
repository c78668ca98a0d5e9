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
tmd_status tmd_tiles_begin(tmd_ctx *ctx, tmd_run *run);
tmd_status tmd_tiles_end(tmd_ctx *ctx, tmd_run *run);
tmd_status tmd_tile_read(tmd_ctx *ctx, tmd_run *run, tmd_tile *tile);
tmd_status tmd_unet_begin(tmd_ctx *ctx, tmd_run *run);
tmd_status tmd_unet_end(tmd_ctx *ctx, tmd_run *run);
tmd_status tmd_tile_unet(tmd_ctx *ctx, tmd_run *run, tmd_tile *tile);
tmd_status tmd_tile_atoms(tmd_ctx *ctx, tmd_run *run, tmd_tile *tile);

/* tile buffers sized for the largest tile (stages.c) */
tmd_status tmd_tile_buffers(tmd_ctx *ctx, const tmd_run *run, tmd_tile *tile);
void tmd_tile_buffers_free(tmd_tile *tile);

/* Sum of atoms over ranks (collective). */
int64_t tmd_run_total_atoms(tmd_run *run);

#endif
