/* Overlap-tile U-Net inference and atom finding per tile (see tmd/pipeline.h). */
#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/statvfs.h>

#include "pipeline_internal.h"
#include "tmd/nn.h"

/* Collective: the plan (once per run), scratch, and /segmentation/classes if asked. */
tmd_status tmd_unet_begin(tmd_ctx *ctx, tmd_run *run)
{
    const tmd_decomp *d = run->decomp;
    tmd_status st = tmd_nn_plan_create(ctx, run->unet, (int)run->win, (int)run->win, &run->unet_plan);
    if (!st) st = tmd_calloc(ctx, (void **)&run->net_in, (size_t)(run->win * run->win), sizeof(float), "U-Net input");
    double hw = run->s > 1 ? run->s : 1;
    int64_t r = (int64_t)ceil((double)(run->win - 1) * run->s + 2 * hw) + 3;
    if (!st) st = tmd_calloc(ctx, (void **)&run->rs_tmp, (size_t)(run->win * r), sizeof(float), "resampling scratch");
    if (!st && run->cfg.save_maps)
        st = tmd_calloc(ctx, (void **)&run->seg_buf, (size_t)(d->tile[0] * d->tile[1] * d->tile[2]), 1, "class map");
    if (!st) tmd_debug(ctx, "U-Net plan %lld x %lld: %.1f MiB, %.2f GFLOP per window", (long long)run->win,
                       (long long)run->win, (double)tmd_nn_plan_bytes(run->unet_plan) / 1048576.0,
                       tmd_nn_plan_flops(run->unet_plan) / 1e9);
    st = tmd_agree(ctx, run->comm, st);
    if (st || !run->cfg.save_maps) return st;
    /* (T, H, W) uint8, one chunk per tile (frames_per_tile, tile, tile), so every chunk has
     * one writer. Space is allocated at creation (parallel HDF5 needs early allocation for
     * independent writes to chunked datasets) but never filled (H5D_FILL_TIME_NEVER: no data
     * written by the collective create, so nothing there can fail on one rank only; every
     * pixel is written by its tile anyway); each rank then writes its tiles'
     * rectangles independently as they complete. The chunk-index lookups of those writes are
     * metadata reads outside any collective, so collective metadata reads are switched off
     * for this dataset (its access property list). */
    /* Free space first, agreed: a full disk must fail here, on every rank, and not inside a
     * later independent write while another rank waits in a collective call. */
    {
        const double need = (double)d->dims[0] * (double)d->dims[1] * (double)d->dims[2] * 1.05 + 1048576.0;
        char dir[TMD_PATH_MAX];
        snprintf(dir, sizeof dir, "%s", run->output);
        char *slash = strrchr(dir, '/');
        if (slash) slash[slash == dir ? 1 : 0] = 0;
        else snprintf(dir, sizeof dir, ".");
        struct statvfs sv;
        if (ctx->rank == 0 && statvfs(dir, &sv) == 0 && (double)sv.f_bavail * (double)sv.f_frsize < need)
            st = TMD_FAIL(ctx, TMD_ERR_IO,
                          "%s: not enough space for /segmentation/classes (save_maps=1): %.1f MB needed, %.1f MB free in %s",
                          run->output, need / 1e6, (double)sv.f_bavail * (double)sv.f_frsize / 1e6, dir);
        st = tmd_agree(ctx, run->comm, st);
        if (st) return st;
    }
    hid_t file = tmd_writer_file(run->writer), lcpl = H5I_INVALID_HID, space = H5I_INVALID_HID;
    hid_t dcpl = H5I_INVALID_HID, dapl = H5I_INVALID_HID;
    hsize_t dims[3] = {(hsize_t)d->dims[0], (hsize_t)d->dims[1], (hsize_t)d->dims[2]};
    hsize_t chunk[3] = {(hsize_t)d->tile[0], (hsize_t)d->tile[1], (hsize_t)d->tile[2]};
    lcpl = H5Pcreate(H5P_LINK_CREATE);
    space = H5Screate_simple(3, dims, NULL);
    dcpl = H5Pcreate(H5P_DATASET_CREATE);
    dapl = H5Pcreate(H5P_DATASET_ACCESS);
    uint8_t zero = 0;
    if (lcpl < 0 || space < 0 || dcpl < 0 || dapl < 0 || H5Pset_create_intermediate_group(lcpl, 1) < 0 ||
        H5Pset_chunk(dcpl, 3, chunk) < 0 || H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY) < 0 ||
        H5Pset_fill_value(dcpl, H5T_NATIVE_UINT8, &zero) < 0 || H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER) < 0 || H5Pset_all_coll_metadata_ops(dapl, 0) < 0)
        st = TMD_FAIL(ctx, TMD_ERR_IO, "%s: cannot prepare /segmentation/classes", run->output);
    if (!st) {
        run->seg_dset = H5Dcreate2(file, "/segmentation/classes", H5T_NATIVE_UINT8, space, lcpl, dcpl, dapl);
        if (run->seg_dset < 0) st = TMD_FAIL(ctx, TMD_ERR_IO, "%s: cannot create /segmentation/classes", run->output);
    }
    if (lcpl >= 0) H5Pclose(lcpl);
    if (space >= 0) H5Sclose(space);
    if (dcpl >= 0) H5Pclose(dcpl);
    if (dapl >= 0) H5Pclose(dapl);
    return st;
}

tmd_status tmd_unet_end(tmd_ctx *ctx, tmd_run *run)
{
    tmd_nn_plan_destroy(&run->unet_plan);
    free(run->net_in);
    free(run->rs_tmp);
    free(run->seg_buf);
    run->net_in = run->rs_tmp = NULL;
    run->seg_buf = NULL;
    if (run->seg_dset != H5I_INVALID_HID) {
        herr_t e = H5Dclose(run->seg_dset); /* collective */
        run->seg_dset = H5I_INVALID_HID;
        if (e < 0) return TMD_FAIL(ctx, TMD_ERR_IO, "%s: cannot close /segmentation/classes", run->output);
    }
    return TMD_OK;
}

/* Class map of the tile core at input pixels: the most likely class of the nearest nominal
 * pixel. */
static tmd_status write_classes(tmd_ctx *ctx, tmd_run *run, const tmd_tile *tile)
{
    const tmd_box *c = &tile->core;
    int64_t h = c->hi[1] - c->lo[1], w = c->hi[2] - c->lo[2], np = tile->nh * tile->nw;
    for (int64_t t = c->lo[0]; t < c->hi[0]; t++) {
        const float *prob = tile->prob + (t - c->lo[0]) * tile->nclass * np;
        uint8_t *o = run->seg_buf + (t - c->lo[0]) * h * w;
        for (int64_t y = 0; y < h; y++) {
            int64_t Y = (int64_t)floor((double)(c->lo[1] + y) / run->s + 0.5) - tile->Y0;
            for (int64_t x = 0; x < w; x++) {
                int64_t X = (int64_t)floor((double)(c->lo[2] + x) / run->s + 0.5) - tile->X0;
                int best = 0;
                if (Y >= 0 && Y < tile->nh && X >= 0 && X < tile->nw) {
                    float bv = prob[Y * tile->nw + X];
                    for (int k = 1; k < tile->nclass; k++)
                        if (prob[k * np + Y * tile->nw + X] > bv) bv = prob[k * np + Y * tile->nw + X], best = k;
                }
                o[y * w + x] = (uint8_t)best;
            }
        }
    }
    return tmd_unet_write_seg(ctx, run, c, tile->index);
}

/* The class map of one tile core (in run->seg_buf) to its rectangle of /segmentation/classes
 * (independent write; also used for tiles loaded from a checkpoint). */
tmd_status tmd_unet_write_seg(tmd_ctx *ctx, tmd_run *run, const tmd_box *c, int64_t index)
{
    int64_t h = c->hi[1] - c->lo[1], w = c->hi[2] - c->lo[2];
    hsize_t start[3] = {(hsize_t)c->lo[0], (hsize_t)c->lo[1], (hsize_t)c->lo[2]};
    hsize_t count[3] = {(hsize_t)(c->hi[0] - c->lo[0]), (hsize_t)h, (hsize_t)w};
    hid_t fs = H5Dget_space(run->seg_dset), ms = H5Screate_simple(3, count, NULL);
    herr_t e = -1;
    if (fs >= 0 && ms >= 0 && H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL) >= 0)
        e = H5Dwrite(run->seg_dset, H5T_NATIVE_UINT8, ms, fs, H5P_DEFAULT, run->seg_buf);
    if (fs >= 0) H5Sclose(fs);
    if (ms >= 0) H5Sclose(ms);
    if (e < 0) return TMD_FAIL(ctx, TMD_ERR_IO, "%s: cannot write the class map of tile %lld", run->output, (long long)index);
    return TMD_OK;
}

/* unet: resample the tile's region onto its nominal window, clamp, infer. */
tmd_status tmd_tile_unet(tmd_ctx *ctx, tmd_run *run, tmd_tile *tile)
{
    const tmd_box *b = &tile->rbox;
    int64_t h = b->hi[1] - b->lo[1], w = b->hi[2] - b->lo[2], np = tile->nh * tile->nw;
    for (int64_t t = b->lo[0]; t < b->hi[0]; t++) {
        const float *pix = tile->pix + (t - b->lo[0]) * h * w;
        float *prob = tile->prob + (t - b->lo[0]) * tile->nclass * np;
        TMD_CHECK(tmd_resample(ctx, pix, b->lo[1], b->lo[2], h, w, run->info.height, run->info.width, run->s, tile->Y0,
                               tile->X0, tile->nh, tile->nw, run->net_in, run->rs_tmp));
        tmd_normalise_clamp(run->net_in, np); /* (1, nh, nw): what the models were trained on */
        tmd_status st = tmd_nn_execute(run->unet_plan, run->net_in, prob); /* -> (6, nh, nw) */
        if (st) return TMD_FAIL(ctx, st, "U-Net inference failed on tile %lld", (long long)tile->index);
    }
    if (run->seg_dset != H5I_INVALID_HID) TMD_CHECK(write_classes(ctx, run, tile));
    return TMD_OK;
}

/* atoms: columns whose centres lie in the tile core. */
tmd_status tmd_tile_atoms(tmd_ctx *ctx, tmd_run *run, tmd_tile *tile)
{
    const tmd_box *b = &tile->rbox;
    int64_t h = b->hi[1] - b->lo[1], w = b->hi[2] - b->lo[2], np = tile->nh * tile->nw;
    for (int64_t t = b->lo[0]; t < b->hi[0]; t++) {
        tmd_atoms_seg seg = {tile->prob + (t - b->lo[0]) * tile->nclass * np, tile->nclass, tile->Y0, tile->X0,
                             tile->nh, tile->nw, run->s};
        tmd_atoms_img img = {tile->pix + (t - b->lo[0]) * h * w, b->lo[1], b->lo[2], h, w, run->info.height,
                             run->info.width};
        TMD_CHECK(tmd_atoms_find(ctx, &run->atoms_params, &seg, &img, (int32_t)t, &tile->core, &run->atoms));
    }
    return TMD_OK;
}
