/* The pipeline's own stages: open, scale, decompose, normalise, read, write (see
 * tmd/pipeline.h). The U-Net and atom stages are in unet.c. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pipeline_internal.h"
#include "tmd/lattice.h"
#include "tmd/nn.h"

static int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

/* open: the input first (a bad input fails before anything is created), then the models
 * (a missing model fails before any heavy work), then OUT.tmp. */
tmd_status tmd_stage_open(tmd_ctx *ctx, tmd_run *run)
{
    tmd_status st = tmd_reader_open(ctx, run->input, &run->reader);
    if (!st) {
        run->info = *tmd_reader_info(run->reader);
        tmd_info(ctx, "input %s: %s, %lld frame(s) of %lld x %lld, %s", run->input, run->info.format,
                 (long long)run->info.frames, (long long)run->info.height, (long long)run->info.width,
                 tmd_dtype_name(run->info.sample));
    }
    st = tmd_agree(ctx, run->comm, st);
    if (st) return st;
    char path[TMD_PATH_MAX];
    st = tmd_config_find_model(ctx, run->cfg.unet_model, path, sizeof path);
    if (!st) st = tmd_nn_model_load(ctx, path, &run->unet);
    if (!st && tmd_nn_model_out_channels(run->unet) != TMD_NCLASSES)
        st = TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: the U-Net gives %d classes, expected %d (DESIGN.md segmentation classes)",
                      path, tmd_nn_model_out_channels(run->unet), TMD_NCLASSES);
    if (!st && tmd_nn_model_in_channels(run->unet) != 1)
        st = TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: the U-Net takes %d input channels, expected 1", path,
                      tmd_nn_model_in_channels(run->unet));
    if (!st) {
        run->unet_reach = tmd_nn_model_reach(run->unet);
        run->unet_multiple = tmd_nn_model_multiple(run->unet);
        if (run->unet_multiple < 1) run->unet_multiple = 1;
    }
    st = tmd_agree(ctx, run->comm, st);
    if (st) return st;
    return tmd_writer_create(ctx, run->output, run->force, run->comm, &run->writer);
}

/* scale: Angstrom per input pixel. */
tmd_status tmd_stage_scale(tmd_ctx *ctx, tmd_run *run)
{
    if (run->pixel_size_arg > 0) {
        run->pixel_size = run->pixel_size_arg;
        snprintf(run->pixel_size_source, sizeof run->pixel_size_source, "--pixel-size");
    } else if (run->cfg.pixel_size > 0) {
        run->pixel_size = run->cfg.pixel_size;
        snprintf(run->pixel_size_source, sizeof run->pixel_size_source, "configuration");
    } else if (run->cfg.pixel_size_from_file && run->info.pixel_size > 0) { /* unless the lattice stage refused it */
        run->pixel_size = run->info.pixel_size;
        snprintf(run->pixel_size_source, sizeof run->pixel_size_source, "file metadata");
    } else {
        /* measured: the lattice stage's period along the fast-scan axis with a = 3.22 A
         * (refined by Vegard's law in the classify stage once the composition is known) */
        TMD_CHECK(tmd_lattice_run_pixel_size_fast(ctx, run, TMD_A_DEFAULT, &run->pixel_size));
        snprintf(run->pixel_size_source, sizeof run->pixel_size_source, "lattice");
    }
    run->cfg.pixel_size = run->pixel_size; /* the stored configuration says what was used */
    /* The models see the image resampled so that the measured lattice has the same period
     * whether the pixel size was given or measured: the U-Net and the atom finder's neighbour
     * rules were trained and set on periods of a = 3.15-3.29 A at the nominal scale, and a
     * given pixel size that is right for the compound (or slightly off, as a calibration
     * often is) moved the columns found on a real MoS2 image by ~4 % against the measured one.
     * The pixel size itself (Angstrom, lattice constant, composition, maps) stays the given one.
     * The models' scale is isotropic (area-based period); a measured pixel size is the fast-scan
     * axis's, which a slow-scan compression c leaves alone (the area-based one is off by c / 2). */
    run->scale_px = run->pixel_size;
    if (run->lattice_a1) {
        double lattice_px = 0;
        if (tmd_lattice_run_pixel_size(ctx, run, TMD_A_DEFAULT, &lattice_px) == TMD_OK && lattice_px > 0)
            run->scale_px = lattice_px;
    }
    run->s = run->cfg.nominal_pixel_size / run->scale_px;
    if (run->s < 0.3 || run->s > 3)
        tmd_info(ctx, "warning: pixel size %g A is far from the models' %g A (scale %.2f); results may suffer",
                 run->pixel_size, run->cfg.nominal_pixel_size, run->s);
    char seen[64];
    if (run->lattice_a1) snprintf(seen, sizeof seen, "lattice at a = %.2f A", TMD_A_DEFAULT);
    else snprintf(seen, sizeof seen, "no lattice: the pixel size");
    tmd_info(ctx, "pixel size %.4f A (%s); models see %.4f A/px (%s), nominal %.3f A: %.3f input pixels per nominal pixel",
             run->pixel_size, run->pixel_size_source, run->scale_px, seen, run->cfg.nominal_pixel_size, run->s);
    return TMD_OK;
}

/* Window of a tile on the nominal grid and the input region it needs. */
void tmd_run_tile_window(const tmd_run *run, const tmd_box *core, int64_t *Y0, int64_t *X0, tmd_box *rbox)
{
    const double s = run->s;
    const int64_t m = run->unet_multiple;
    int64_t o[2];
    for (int a = 1; a <= 2; a++) {
        /* first nominal index whose input coordinate is in the core, less the halo, aligned
         * down to the model multiple on the global nominal grid (pooling-grid invariant) */
        int64_t first = (int64_t)floor(((double)core->lo[a] - 0.5) / s);
        o[a - 1] = floor_div(first - run->halo_n, m) * m;
        int64_t lo, hi;
        tmd_resample_support(s, o[a - 1], run->win, &lo, &hi);
        int64_t n = a == 1 ? run->info.height : run->info.width;
        rbox->lo[a] = lo < 0 ? 0 : lo;
        rbox->hi[a] = hi > n ? n : hi;
        /* reflection at the image edge needs the mirrored rows, which lie within the support's
         * length from the edge: widen the region to cover them */
        if (lo < 0 && rbox->hi[a] < -lo + 1) rbox->hi[a] = -lo + 1 > n ? n : -lo + 1;
        if (hi > n && rbox->lo[a] > n - 1 - (hi - n)) rbox->lo[a] = n - 1 - (hi - n) < 0 ? 0 : n - 1 - (hi - n);
    }
    rbox->lo[0] = core->lo[0];
    rbox->hi[0] = core->hi[0];
    *Y0 = o[0];
    *X0 = o[1];
}

/* decompose: the tile grid in input pixels and the window geometry. */
tmd_status tmd_stage_decompose(tmd_ctx *ctx, tmd_run *run)
{
    const tmd_config *cfg = &run->cfg;
    const double s = run->s;
    tmd_atoms_params_from_config(&run->atoms_params, cfg, run->scale_px);
    int64_t te = tmd_decomp_tile_edge(cfg->tile, cfg->nominal_pixel_size, run->scale_px);
    /* halo: at least what the atom finder reads around a column */
    double margin_n = tmd_atoms_margin(&run->atoms_params, s) / s;
    run->halo_n = cfg->halo;
    if (run->halo_n < (int64_t)ceil(margin_n) + 2) run->halo_n = (int64_t)ceil(margin_n) + 2;
    if (run->halo_n < run->unet_reach)
        tmd_debug(ctx, "halo %lld nominal px is below the U-Net's reach bound %d: tiles still give the same result on "
                       "any rank count, but a different tile size may change atoms near tile edges",
                  (long long)run->halo_n, run->unet_reach);
    const int64_t m = run->unet_multiple;
    int64_t tile_n = (int64_t)ceil((double)te / s) + 1;
    run->win = ((tile_n + 2 * run->halo_n + m + 2 + m - 1) / m) * m;
    double hw = s > 1 ? s : 1;
    int64_t he = (int64_t)ceil((double)run->win * s + hw) + 2;
    int64_t dims[3] = {run->info.frames, run->info.height, run->info.width};
    int64_t tile[3] = {cfg->frames_per_tile, te, te}, halo[3] = {0, he, he};
    tmd_status st = tmd_decomp_create(ctx, run->comm, dims, tile, halo, run->pdims, &run->decomp);
    if (st) return st;
    const tmd_decomp *d = run->decomp;
    tmd_info(ctx, "tiles: %lld x %lld x %lld of %lld px (%lld nominal + halo %lld -> window %lld); ranks %d x %d x %d",
             (long long)d->ntiles[0], (long long)d->ntiles[1], (long long)d->ntiles[2], (long long)te,
             (long long)cfg->tile, (long long)run->halo_n, (long long)run->win, d->pdims[0], d->pdims[1], d->pdims[2]);
    return TMD_OK;
}

/* normalise: one pass over this rank's tile cores, then global statistics. */
tmd_status tmd_stage_normalise(tmd_ctx *ctx, tmd_run *run)
{
    const tmd_decomp *d = run->decomp;
    float *buf = NULL;
    tmd_status st = tmd_normalise_create(ctx, d, &run->cfg, run->scale_px, &run->norm);
    if (st) return st;
    size_t n = (size_t)(d->tile[0] * d->tile[1] * d->tile[2]);
    st = tmd_calloc(ctx, (void **)&buf, n, sizeof *buf, "tile buffer");
    for (int64_t i = 0; i < d->nlocal && !st; i++) {
        if (tmd_interrupted(ctx)) {
            st = TMD_FAIL(ctx, TMD_ERR_INTERRUPTED, "stopped by a signal during normalisation");
            break;
        }
        tmd_box core;
        tmd_decomp_tile_box(d, tmd_decomp_local_tile(d, i), &core, NULL);
        int64_t h = core.hi[1] - core.lo[1], w = core.hi[2] - core.lo[2];
        for (int64_t t = core.lo[0]; t < core.hi[0] && !st; t++)
            st = tmd_reader_read(ctx, run->reader, t, core.lo[1], core.lo[2], h, w, buf + (t - core.lo[0]) * h * w);
        if (!st) st = tmd_normalise_accumulate(ctx, run->norm, &core, buf);
    }
    free(buf);
    st = tmd_agree(ctx, run->comm, st);
    if (st) return st;
    st = tmd_normalise_finish(ctx, run->norm);
    if (!st) {
        double lo, hi;
        tmd_normalise_levels(run->norm, &lo, &hi);
        tmd_info(ctx, "levels: %g .. %g (percentiles %g, %g; background %s)", lo, hi, run->cfg.clip_low,
                 run->cfg.clip_high, run->cfg.background_sigma > 0 ? "removed" : "kept");
    }
    return st;
}

/* ---- the tile pass ------------------------------------------------------------------------ */

tmd_status tmd_tile_buffers(tmd_ctx *ctx, const tmd_run *run, tmd_tile *tile)
{
    const tmd_decomp *d = run->decomp;
    double hw = run->s > 1 ? run->s : 1;
    int64_t r = (int64_t)ceil((double)(run->win - 1) * run->s + 2 * hw) + 3;
    if (r > d->dims[1] && r > d->dims[2]) r = d->dims[1] > d->dims[2] ? d->dims[1] : d->dims[2];
    int64_t frames = d->tile[0];
    tmd_status st = tmd_calloc(ctx, (void **)&tile->pix, (size_t)(frames * r * r), sizeof(float), "tile pixels");
    tile->nclass = TMD_NCLASSES;
    if (!st)
        st = tmd_calloc(ctx, (void **)&tile->prob, (size_t)(frames * tile->nclass * run->win * run->win), sizeof(float),
                        "tile class probabilities");
    tile->nh = tile->nw = run->win;
    return st;
}

void tmd_tile_buffers_free(tmd_tile *tile)
{
    free(tile->pix);
    free(tile->prob);
    tile->pix = tile->prob = NULL;
}

/* read: the input region of the tile's window, normalised (unclamped). */
tmd_status tmd_tile_read(tmd_ctx *ctx, tmd_run *run, tmd_tile *tile)
{
    tmd_decomp_tile_box(run->decomp, tile->index, &tile->core, NULL);
    tmd_run_tile_window(run, &tile->core, &tile->Y0, &tile->X0, &tile->rbox);
    const tmd_box *b = &tile->rbox;
    int64_t h = b->hi[1] - b->lo[1], w = b->hi[2] - b->lo[2];
    for (int64_t t = b->lo[0]; t < b->hi[0]; t++)
        TMD_CHECK(tmd_reader_read(ctx, run->reader, t, b->lo[1], b->lo[2], h, w, tile->pix + (t - b->lo[0]) * h * w));
    return tmd_normalise_apply(ctx, run->norm, b, tile->pix);
}

/* ---- write --------------------------------------------------------------------------------- */

int64_t tmd_run_total_atoms(tmd_run *run)
{
    int64_t n = run->atoms.n, total = 0;
    if (run->stream && run->tile_rows) { /* every rank holds every tile's count */
        for (int64_t g = 0; g < run->decomp->ntiles_total; g++) total += run->tile_rows[g];
        return total;
    }
    MPI_Allreduce(&n, &total, 1, MPI_INT64_T, MPI_SUM, run->comm);
    return total;
}

/* Canonical row order: the atoms are moved (MPI_Alltoallv) so that rank r holds the tiles
 * [r*G/P, (r+1)*G/P) of the global tile order, sorted by tile and, within a tile, in the
 * order the tile found them. /atoms is then the same file on any rank count and layout.
 *
 * Memory: the table is moved one column at a time (each column's send and receive buffers
 * live only while it moves, and the old column is freed as soon as it has been sent), so the
 * stage needs the table plus about 90 bytes per atom (the widest column twice, the row keys
 * and the send permutation) rather than a second and third copy of every row. */
typedef struct {
    int64_t g, seq;
} row_key;

static int cmp_key(const void *a, const void *b)
{
    const row_key *p = a, *q = b;
    if (p->g != q->g) return p->g < q->g ? -1 : 1;
    return p->seq < q->seq ? -1 : (p->seq > q->seq);
}

/* Collective. Moves one column of `esize` bytes per row: row perm[k] of *col is sent in
 * position k (rows grouped by destination), the received rows are placed in the order of
 * keys; the old column is freed and *col replaced by the new one (n rows, at least 1). */
static tmd_status move_column(tmd_ctx *ctx, MPI_Comm comm, void **col, size_t esize, int64_t nloc, const int64_t *perm,
                              const int *sc, const int *sd, const int *rc, const int *rd, int64_t n, const row_key *keys,
                              const char *what)
{
    char *sbuf = NULL, *rbuf = NULL, *out = NULL;
    MPI_Datatype row = MPI_DATATYPE_NULL;
    tmd_status st = tmd_calloc(ctx, (void **)&sbuf, (size_t)(nloc > 0 ? nloc : 1), esize, what);
    if (!st) st = tmd_calloc(ctx, (void **)&rbuf, (size_t)(n > 0 ? n : 1), esize, what);
    if (!st && esize > 2147483647u) st = TMD_FAIL(ctx, TMD_ERR_RANGE, "%s: %zu bytes per row", what, esize);
    if (!st) st = TMD_MPI(ctx, MPI_Type_contiguous((int)esize, MPI_BYTE, &row));
    if (!st) st = TMD_MPI(ctx, MPI_Type_commit(&row));
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    const char *src = *col;
    for (int64_t k = 0; k < nloc; k++) memcpy(sbuf + (size_t)k * esize, src + (size_t)perm[k] * esize, esize);
    free(*col);
    *col = NULL;
    st = TMD_MPI(ctx, MPI_Alltoallv(sbuf, sc, sd, row, rbuf, rc, rd, row, comm));
    free(sbuf);
    sbuf = NULL;
    if (!st) st = tmd_calloc(ctx, (void **)&out, (size_t)(n > 0 ? n : 1), esize, what);
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    for (int64_t k = 0; k < n; k++) memcpy(out + (size_t)k * esize, rbuf + (size_t)keys[k].seq * esize, esize);
    *col = out;
    out = NULL;
cleanup:
    if (row != MPI_DATATYPE_NULL) MPI_Type_free(&row);
    free(sbuf);
    free(rbuf);
    free(out);
    return st;
}

static tmd_status canonical_atoms(tmd_ctx *ctx, tmd_run *run)
{
    const tmd_decomp *d = run->decomp;
    tmd_atom_table *a = &run->atoms;
    const int P = ctx->nranks;
    const int64_t G = d->ntiles_total, nloc = a->n;
    tmd_status st = TMD_OK;
    int *sc = NULL, *rc = NULL, *sd = NULL, *rd = NULL, *fill = NULL;
    int64_t *gof = NULL, *perm = NULL, *gsend = NULL, *grecv = NULL, n = 0;
    row_key *keys = NULL;
    MPI_Comm comm = run->comm;
    st = tmd_calloc(ctx, (void **)&sc, (size_t)P, sizeof(int), "row counts");
    if (!st) st = tmd_calloc(ctx, (void **)&rc, (size_t)P, sizeof(int), "row counts");
    if (!st) st = tmd_calloc(ctx, (void **)&sd, (size_t)P, sizeof(int), "row counts");
    if (!st) st = tmd_calloc(ctx, (void **)&rd, (size_t)P, sizeof(int), "row counts");
    if (!st) st = tmd_calloc(ctx, (void **)&fill, (size_t)P, sizeof(int), "row counts");
    if (!st) st = tmd_calloc(ctx, (void **)&gof, (size_t)nloc + 1, sizeof(int64_t), "row tiles");
    if (!st) st = tmd_calloc(ctx, (void **)&perm, (size_t)nloc + 1, sizeof(int64_t), "row permutation");
    for (int64_t i = 0; i < nloc && !st; i++) {
        gof[i] = tmd_decomp_tile_of(d, a->frame[i], a->y[i], a->x[i]);
        if (gof[i] < 0) {
            st = TMD_FAIL(ctx, TMD_ERR_INTERNAL, "atom at (%g, %g) frame %d lies outside the image", a->x[i], a->y[i],
                          a->frame[i]);
            break;
        }
        int dest = (int)(((gof[i] + 1) * (int64_t)P - 1) / G);
        if (sc[dest] == 2147483647)
            st = TMD_FAIL(ctx, TMD_ERR_RANGE, "too many atoms for one message on rank %d", ctx->rank);
        else sc[dest]++;
    }
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    /* rows grouped by destination, in table order within a destination */
    for (int r = 1; r < P; r++) sd[r] = sd[r - 1] + sc[r - 1];
    memcpy(fill, sd, sizeof(int) * (size_t)P);
    for (int64_t i = 0; i < nloc; i++) perm[fill[(int)(((gof[i] + 1) * (int64_t)P - 1) / G)]++] = i;
    st = TMD_MPI(ctx, MPI_Alltoall(sc, 1, MPI_INT, rc, 1, MPI_INT, comm));
    for (int r = 0; r < P && !st; r++) {
        if (n > 2147483647LL - rc[r]) st = TMD_FAIL(ctx, TMD_ERR_RANGE, "too many atoms for one rank's message");
        else rd[r] = (int)n, n += rc[r];
    }
    /* the tile of every received row: rows of one tile all come from its owner, in its
     * order, so (tile, arrival) is the canonical order */
    if (!st) st = tmd_calloc(ctx, (void **)&gsend, (size_t)nloc + 1, sizeof(int64_t), "row tiles");
    if (!st) st = tmd_calloc(ctx, (void **)&grecv, (size_t)n + 1, sizeof(int64_t), "row tiles");
    if (!st) st = tmd_calloc(ctx, (void **)&keys, (size_t)n + 1, sizeof(row_key), "row keys");
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    for (int64_t k = 0; k < nloc; k++) gsend[k] = gof[perm[k]];
    free(gof);
    gof = NULL;
    st = TMD_MPI(ctx, MPI_Alltoallv(gsend, sc, sd, MPI_INT64_T, grecv, rc, rd, MPI_INT64_T, comm));
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    free(gsend);
    gsend = NULL;
    for (int64_t k = 0; k < n; k++) keys[k] = (row_key){grecv[k], k};
    free(grecv);
    grecv = NULL;
    qsort(keys, (size_t)n, sizeof *keys, cmp_key);
    /* column by column; on failure the table is left freed (the run fails anyway) */
    tmd_atom_column cols[TMD_ATOM_MAX_COLUMNS];
    int ncols = tmd_atom_table_columns(a, cols);
    for (int c = 0; c < ncols && !st; c++) /* prob holds at least one float per row (reserve) */
        st = move_column(ctx, comm, cols[c].data, cols[c].row_bytes ? cols[c].row_bytes : sizeof(float), nloc, perm, sc, sd,
                         rc, rd, n, keys, "atom rows");
    if (st) {
        tmd_atom_table_free(a);
        goto cleanup;
    }
    a->n = n;
    a->cap = n > 0 ? n : 1;
cleanup:
    free(sc), free(rc), free(sd), free(rd), free(fill), free(gof), free(perm), free(gsend), free(grecv), free(keys);
    return st;
}

/* The same canonical order for /defects: by the tile holding the position (clamped to the
 * image for sites just outside it), then by (frame, y, x, type) within a tile. */
typedef struct {
    int64_t g;
    int32_t frame;
    double y, x;
    int8_t type;
} defect_row;

static int cmp_defect(const void *a, const void *b)
{
    const defect_row *p = a, *q = b;
    if (p->g != q->g) return p->g < q->g ? -1 : 1;
    if (p->frame != q->frame) return p->frame < q->frame ? -1 : 1;
    if (p->y != q->y) return p->y < q->y ? -1 : 1;
    if (p->x != q->x) return p->x < q->x ? -1 : 1;
    return (p->type > q->type) - (p->type < q->type);
}

static tmd_status canonical_defects(tmd_ctx *ctx, tmd_run *run)
{
    const tmd_decomp *d = run->decomp;
    tmd_defect_table *t = &run->defects;
    const int P = ctx->nranks;
    const int64_t G = d->ntiles_total;
    tmd_status st = TMD_OK;
    int *sc = NULL, *rc = NULL, *sd = NULL, *rd = NULL, *fill = NULL;
    defect_row *sbuf = NULL, *rbuf = NULL;
    MPI_Datatype rowtype = MPI_DATATYPE_NULL;
    st = tmd_calloc(ctx, (void **)&sc, (size_t)P, sizeof(int), "defect counts");
    if (!st) st = tmd_calloc(ctx, (void **)&rc, (size_t)P, sizeof(int), "defect counts");
    if (!st) st = tmd_calloc(ctx, (void **)&sd, (size_t)P, sizeof(int), "defect counts");
    if (!st) st = tmd_calloc(ctx, (void **)&rd, (size_t)P, sizeof(int), "defect counts");
    if (!st) st = tmd_calloc(ctx, (void **)&fill, (size_t)P, sizeof(int), "defect counts");
    if (!st) st = tmd_calloc(ctx, (void **)&sbuf, (size_t)t->n + 1, sizeof *sbuf, "defect rows");
    if (!st) st = TMD_MPI(ctx, MPI_Type_contiguous((int)sizeof(defect_row), MPI_BYTE, &rowtype));
    if (!st) st = TMD_MPI(ctx, MPI_Type_commit(&rowtype));
    st = tmd_agree(ctx, run->comm, st);
    if (st) goto cleanup;
    for (int64_t i = 0; i < t->n; i++) {
        int64_t f = t->frame[i] < 0 ? 0 : (t->frame[i] >= d->dims[0] ? d->dims[0] - 1 : t->frame[i]);
        double y = t->y[i] < 0 ? 0 : (t->y[i] > (double)d->dims[1] - 1 ? (double)d->dims[1] - 1 : t->y[i]);
        double x = t->x[i] < 0 ? 0 : (t->x[i] > (double)d->dims[2] - 1 ? (double)d->dims[2] - 1 : t->x[i]);
        int64_t g = tmd_decomp_tile_of(d, f, y, x);
        if (g < 0) g = 0;
        sbuf[i] = (defect_row){g, t->frame[i], t->y[i], t->x[i], t->type[i]};
        sc[(int)(((g + 1) * (int64_t)P - 1) / G)]++;
    }
    for (int r = 1; r < P; r++) sd[r] = sd[r - 1] + sc[r - 1];
    /* group the rows by destination */
    qsort(sbuf, (size_t)t->n, sizeof *sbuf, cmp_defect); /* tile order is destination order */
    st = TMD_MPI(ctx, MPI_Alltoall(sc, 1, MPI_INT, rc, 1, MPI_INT, run->comm));
    int64_t n = 0;
    for (int r = 0; r < P; r++) rd[r] = (int)n, n += rc[r];
    if (!st) st = tmd_calloc(ctx, (void **)&rbuf, (size_t)n + 1, sizeof *rbuf, "defect rows");
    st = tmd_agree(ctx, run->comm, st);
    if (st) goto cleanup;
    st = TMD_MPI(ctx, MPI_Alltoallv(sbuf, sc, sd, rowtype, rbuf, rc, rd, rowtype, run->comm));
    st = tmd_agree(ctx, run->comm, st);
    if (st) goto cleanup;
    qsort(rbuf, (size_t)n, sizeof *rbuf, cmp_defect);
    tmd_defect_table_free(t);
    tmd_defect_table_init(t);
    for (int64_t i = 0; i < n && !st; i++) st = tmd_defect_table_push(ctx, t, rbuf[i].frame, rbuf[i].x, rbuf[i].y, rbuf[i].type);
    st = tmd_agree(ctx, run->comm, st);
cleanup:
    if (rowtype != MPI_DATATYPE_NULL) MPI_Type_free(&rowtype);
    free(sc), free(rc), free(sd), free(rd), free(fill), free(sbuf), free(rbuf);
    return st;
}

/* The /atoms datasets of the result (DESIGN.md), in the order both write paths use; the
 * latent features come last and are written only with save_features. */
enum { ATOM_DATASETS = 9 };
static const struct {
    const char *name;
    tmd_dtype type;
} atom_datasets[ATOM_DATASETS] = {{"/atoms/frame", TMD_I32},     {"/atoms/x", TMD_F64},         {"/atoms/y", TMD_F64},
                                  {"/atoms/sublattice", TMD_I8}, {"/atoms/species", TMD_I8},    {"/atoms/prob", TMD_F32},
                                  {"/atoms/intensity", TMD_F32}, {"/atoms/site", TMD_I64},      {"/features/latent", TMD_F32}};

/* Row widths and data of t's columns in atom_datasets order. */
static void atom_dataset_columns(const tmd_atom_table *t, int64_t widths[ATOM_DATASETS], const void *cols[ATOM_DATASETS])
{
    const int64_t wd[ATOM_DATASETS] = {1, 1, 1, 1, 1, t->nprob, 1, 1, t->nlatent};
    const void *cd[ATOM_DATASETS] = {t->frame, t->x, t->y, t->sublattice, t->species, t->prob, t->intensity, t->site, t->latent};
    for (int c = 0; c < ATOM_DATASETS; c++) widths[c] = wd[c], cols[c] = cd[c];
}

/* The streamed table (run->stream): each tile's final rows are in OUT.ckpt/<kind>-<g>.bin and
 * every rank knows every tile's row count, so a tile's rows start at the sum of the counts
 * of the tiles before it in the global tile order: the same rows, in the same order, as
 * canonical_atoms gives. Rank r writes the tiles canonical_atoms would send it, in pieces of
 * about 64 Ki rows (collective rounds; a rank with fewer pieces writes empty ones), so the
 * stage holds one piece, not the table. */
static tmd_status write_streamed_atoms(tmd_ctx *ctx, tmd_run *run)
{
    const tmd_decomp *d = run->decomp;
    tmd_writer *w = run->writer;
    const int64_t G = d->ntiles_total, P = ctx->nranks, me = ctx->rank, PIECE = 65536;
    const int cls = !strcmp(run->stream_kind, "cls");
    tmd_atom_table b;
    tmd_atom_table_init(&b, cls ? TMD_SP_COUNT : run->atoms.nprob);
    tmd_status st = run->atoms.nlatent ? tmd_atom_table_set_latent(ctx, &b, run->atoms.nlatent) : TMD_OK;
    int64_t total = 0, first = -1, last = -1, mine = 0, pieces = 0, rounds = 0;
    for (int64_t g = 0; g < G; g++) {
        if ((((g + 1) * P - 1) / G) == me) {
            if (first < 0) first = g;
            last = g + 1;
        }
        total += run->tile_rows[g];
    }
    /* pieces: consecutive tiles until PIECE rows (a tile is never split) */
    for (int64_t g = first, acc = 0; g >= 0 && g < last; g++) {
        acc += run->tile_rows[g];
        if (acc >= PIECE || g == last - 1) {
            pieces++;
            acc = 0;
        }
    }
    st = tmd_agree(ctx, run->comm, st);
    if (!st) st = TMD_MPI(ctx, MPI_Allreduce(&pieces, &rounds, 1, MPI_INT64_T, MPI_MAX, run->comm));
    if (st) goto cleanup;
    int ncol = b.nlatent && run->cfg.save_features ? ATOM_DATASETS : ATOM_DATASETS - 1;
    int64_t widths[ATOM_DATASETS];
    const void *cols[ATOM_DATASETS];
    atom_dataset_columns(&b, widths, cols);
    for (int c = 0; c < ncol && !st; c++)
        st = tmd_writer_rows_create(ctx, w, atom_datasets[c].name, atom_datasets[c].type, total, widths[c]);
    if (st) goto cleanup;
    for (int64_t g = 0; g < first && first >= 0; g++) mine += run->tile_rows[g]; /* first row of my tiles */
    int64_t g = first;
    for (int64_t round = 0; round < rounds && !st; round++) {
        b.n = 0;
        int64_t offset = mine;
        while (g >= 0 && g < last && !st) {
            st = tmd_run_tile_rows_read(ctx, run, run->stream_kind, g, &b);
            mine += run->tile_rows[g];
            g++;
            if (b.n >= PIECE) break;
        }
        if (!st && b.n != mine - offset)
            st = TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: rank %d read %lld rows of tiles before %lld, expected %lld", run->ckpt,
                          ctx->rank, (long long)b.n, (long long)g, (long long)(mine - offset));
        st = tmd_agree(ctx, run->comm, st);
        atom_dataset_columns(&b, widths, cols); /* reading may have grown (moved) the columns */
        for (int c = 0; c < ncol && !st; c++)
            st = tmd_writer_rows_part(ctx, w, atom_datasets[c].name, atom_datasets[c].type, offset, b.n, widths[c], cols[c]);
    }
cleanup:
    tmd_atom_table_free(&b);
    return st;
}

tmd_status tmd_stage_write(tmd_ctx *ctx, tmd_run *run)
{
    tmd_writer *w = run->writer;
    const tmd_atom_table *a = &run->atoms;
    char *text = NULL;
    tmd_status st = tmd_config_to_text(ctx, &run->cfg, &text);
    st = tmd_agree(ctx, run->comm, st);
    if (st) return st;
    int64_t ranks = ctx->nranks;
    st = tmd_writer_attr_str(ctx, w, "/", "tmdflow_version", TMD_VERSION);
    if (!st) st = tmd_writer_attr_str(ctx, w, "/", "config", text);
    if (!st) st = tmd_writer_attr_i64(ctx, w, "/", "ranks", &ranks, 1);
    if (!st) st = tmd_writer_attr_str(ctx, w, "/", "input", run->input);
    if (!st) st = tmd_writer_attr_f64(ctx, w, "/", "pixel_size", &run->pixel_size, 1);
    if (!st) st = tmd_writer_attr_f64(ctx, w, "/", "model_pixel_size", &run->scale_px, 1);
    if (!st) st = tmd_writer_attr_str(ctx, w, "/", "pixel_size_source", run->pixel_size_source);
    if (!st) st = tmd_writer_attr_str(ctx, w, "/", "species_warning", run->species_warning);
    free(text);
    /* /atoms: rows in global tile order, the same on any rank count */
    if (!st && run->stream) {
        st = write_streamed_atoms(ctx, run);
        if (st) return st;
        goto tables;
    }
    if (!st) st = canonical_atoms(ctx, run);
    {
        int ncol = a->nlatent && run->cfg.save_features ? ATOM_DATASETS : ATOM_DATASETS - 1;
        int64_t widths[ATOM_DATASETS];
        const void *cols[ATOM_DATASETS];
        atom_dataset_columns(a, widths, cols);
        for (int c = 0; c < ncol && !st; c++)
            st = tmd_writer_rows(ctx, w, atom_datasets[c].name, atom_datasets[c].type, a->n, widths[c], cols[c]);
    }
    if (st) return st;
tables:;
    /* tables of later stages, when they produced something on any rank */
    int64_t counts[2] = {run->defects.n + run->write_defects, run->sites.n + run->write_sites}, g[2];
    TMD_CHECK(TMD_MPI(ctx, MPI_Allreduce(counts, g, 2, MPI_INT64_T, MPI_SUM, run->comm)));
    if (g[0]) TMD_CHECK(canonical_defects(ctx, run)); /* same file on any rank count */
    const tmd_defect_table *df = &run->defects;
    if (g[0]) {
        st = tmd_writer_rows(ctx, w, "/defects/frame", TMD_I32, df->n, 1, df->frame);
        if (!st) st = tmd_writer_rows(ctx, w, "/defects/x", TMD_F64, df->n, 1, df->x);
        if (!st) st = tmd_writer_rows(ctx, w, "/defects/y", TMD_F64, df->n, 1, df->y);
        if (!st) st = tmd_writer_rows(ctx, w, "/defects/type", TMD_I8, df->n, 1, df->type);
        if (st) return st;
    }
    const tmd_site_table *si = &run->sites;
    if (g[1]) {
        st = tmd_writer_rows(ctx, w, "/sites/id", TMD_I64, si->n, 1, si->id);
        if (!st) st = tmd_writer_rows(ctx, w, "/sites/x", TMD_F64, si->n, 1, si->x);
        if (!st) st = tmd_writer_rows(ctx, w, "/sites/y", TMD_F64, si->n, 1, si->y);
        if (!st) st = tmd_writer_rows(ctx, w, "/sites/sublattice", TMD_I8, si->n, 1, si->sublattice);
        if (!st) st = tmd_writer_rows(ctx, w, "/sites/instability", TMD_F32, si->n, 1, si->instability);
        if (!st) st = tmd_writer_rows(ctx, w, "/sites/unstable", TMD_I8, si->n, 1, si->unstable);
        if (st) return st;
    }
    /* per-frame arrays held on every rank: rank 0 writes them */
    int64_t T = run->info.frames, mine = ctx->rank == 0 ? T : 0;
    int have[3] = {run->drift != NULL, run->lattice_a1 != NULL, run->lattice_a2 != NULL}, all[3];
    TMD_CHECK(TMD_MPI(ctx, MPI_Allreduce(have, all, 3, MPI_INT, MPI_MIN, run->comm)));
    if (all[0]) TMD_CHECK(tmd_writer_rows(ctx, w, "/drift", TMD_F64, mine, 2, run->drift));
    if (all[1]) TMD_CHECK(tmd_writer_rows(ctx, w, "/lattice/a1", TMD_F64, mine, 2, run->lattice_a1));
    if (all[2]) TMD_CHECK(tmd_writer_rows(ctx, w, "/lattice/a2", TMD_F64, mine, 2, run->lattice_a2));
    return TMD_OK;
}
