/* Checkpoint and resume of the tile pass (see tmd/pipeline.h, "Checkpoint/resume").
 *
 * OUT.ckpt/manifest          text: input fingerprint, tile grid, effective configuration
 * OUT.ckpt/tile-<g>.bin      one completed tile (global index g), native byte order:
 *     "TMDCKPT1", int64 g, int64 n, int32 nprob, int32 nlatent, int64 segbytes,
 *     frame i32[n], x f64[n], y f64[n], sublattice i8[n], species i8[n], prob f32[n*nprob],
 *     intensity f32[n], site i64[n], latent f32[n*nlatent], class map u8[segbytes]
 * Files are written as NAME.tmp and renamed, so a tile file is either complete or absent. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pipeline_internal.h"

static const char MAGIC[8] = {'T', 'M', 'D', 'C', 'K', 'P', 'T', '1'};

static void tile_path(const tmd_run *run, int64_t g, char *out, size_t n)
{
    snprintf(out, n, "%s/tile-%08lld.bin", run->ckpt, (long long)g);
}

/* The manifest text (malloc'd): what must be equal for a resume. */
static tmd_status manifest_text(tmd_ctx *ctx, const tmd_run *run, char **out)
{
    *out = NULL;
    char path[TMD_PATH_MAX];
    struct stat sb;
    snprintf(path, sizeof path, "%s", run->input);
    int ok = stat(path, &sb) == 0;
    if (!ok) { /* FILE.h5:/dataset */
        char *c = strrchr(path, ':');
        if (c) *c = 0;
        ok = stat(path, &sb) == 0;
    }
    char *cfg = NULL;
    TMD_CHECK(tmd_config_to_text(ctx, &run->cfg, &cfg));
    const tmd_decomp *d = run->decomp;
    size_t cap = strlen(cfg) + 3 * TMD_PATH_MAX + 512;
    char *t = malloc(cap);
    if (!t) {
        free(cfg);
        return TMD_FAIL(ctx, TMD_ERR_NOMEM, "out of memory for the checkpoint manifest");
    }
    snprintf(t, cap,
             "input = %s\ninput size = %lld\ninput mtime = %lld\ninput shape = %lld x %lld x %lld\n%s\n"
             "tile grid = %lld x %lld x %lld tiles of %lld x %lld x %lld\n",
             run->input, ok ? (long long)sb.st_size : -1LL, ok ? (long long)sb.st_mtime : -1LL,
             (long long)run->info.frames, (long long)run->info.height, (long long)run->info.width, cfg,
             (long long)d->ntiles[0], (long long)d->ntiles[1], (long long)d->ntiles[2], (long long)d->tile[0],
             (long long)d->tile[1], (long long)d->tile[2]);
    free(cfg);
    *out = t;
    return TMD_OK;
}

static char *read_all(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 4096, n = 0;
    char *b = malloc(cap);
    while (b) {
        size_t k = fread(b + n, 1, cap - n - 1, f);
        n += k;
        if (n + 1 < cap) break;
        char *nb = realloc(b, cap * 2);
        if (!nb) {
            free(b);
            b = NULL;
            break;
        }
        b = nb;
        cap *= 2;
    }
    fclose(f);
    if (b) b[n] = 0;
    return b;
}

/* First line that differs, as "checkpoint has 'A', this run has 'B'". */
static void first_difference(const char *a, const char *b, char *out, size_t n)
{
    while (*a || *b) {
        const char *ea = strchr(a, '\n'), *eb = strchr(b, '\n');
        size_t la = ea ? (size_t)(ea - a) : strlen(a), lb = eb ? (size_t)(eb - b) : strlen(b);
        if (la != lb || memcmp(a, b, la)) {
            snprintf(out, n, "the checkpoint has '%.*s', this run has '%.*s'", (int)(la > 300 ? 300 : la), a,
                     (int)(lb > 300 ? 300 : lb), b);
            return;
        }
        a += la + (ea != NULL);
        b += lb + (eb != NULL);
    }
    snprintf(out, n, "(no line differs)");
}

static int write_file_atomic(const char *path, const void *data, size_t n)
{
    char tmp[TMD_PATH_MAX + 8];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) return -1;
    int bad = fwrite(data, 1, n, f) != n;
    bad |= fflush(f) != 0;
    bad |= fclose(f) != 0;
    if (!bad && rename(tmp, path) != 0) bad = 1;
    if (bad) unlink(tmp);
    return bad ? -1 : 0;
}

/* Removes the checkpoint directory's files and the directory (rank 0's job). */
static void remove_dir(const char *dir)
{
    DIR *dp = opendir(dir);
    if (!dp) return;
    struct dirent *e;
    char p[TMD_PATH_MAX + 300];
    while ((e = readdir(dp))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        unlink(p);
    }
    closedir(dp);
    rmdir(dir);
}

tmd_status tmd_ckpt_prepare(tmd_ctx *ctx, tmd_run *run)
{
    tmd_status st = TMD_OK;
    char *text = NULL, *old = NULL, mpath[TMD_PATH_MAX + 16];
    snprintf(mpath, sizeof mpath, "%s/manifest", run->ckpt);
    if (ctx->rank == 0) {
        st = manifest_text(ctx, run, &text);
        struct stat sb;
        int exists = stat(run->ckpt, &sb) == 0;
        if (!st && run->resume) {
            old = read_all(mpath);
            if (!old) {
                /* stopped before the tile pass began (or never run): start from the beginning, so
                 * that a requeued job with --resume always works */
                tmd_info(ctx, "run --resume: no checkpoint %s; starting from the first tile", mpath);
                if (exists) remove_dir(run->ckpt);
                if (mkdir(run->ckpt, 0777) != 0 || write_file_atomic(mpath, text, strlen(text)) != 0) {
                    tmd_info(ctx, "warning: cannot write the checkpoint %s (%s): this run goes on without one",
                             run->ckpt, strerror(errno));
                    remove_dir(run->ckpt);
                    run->ckpt_off = 1;
                }
            } else if (strcmp(old, text)) {
                char diff[800];
                first_difference(old, text, diff, sizeof diff);
                st = TMD_FAIL(ctx, TMD_ERR_ARG,
                              "run --resume: the checkpoint %s was made with a different input or configuration: %s "
                              "(resume with the original input and settings, or run with --force to start over)",
                              run->ckpt, diff);
            }
        } else if (!st) {
            if (exists && !run->force)
                st = TMD_FAIL(ctx, TMD_ERR_ARG,
                              "a checkpoint of an interrupted run exists: %s (continue it with --resume, or discard it "
                              "with --force)",
                              run->ckpt);
            if (!st && exists) remove_dir(run->ckpt);
            if (!st && (mkdir(run->ckpt, 0777) != 0 || write_file_atomic(mpath, text, strlen(text)) != 0)) {
                tmd_info(ctx, "warning: cannot write the checkpoint %s (%s): this run goes on without one",
                         run->ckpt, strerror(errno));
                remove_dir(run->ckpt);
                run->ckpt_off = 1;
            }
        }
    }
    free(text);
    free(old);
    st = tmd_agree(ctx, run->comm, st);
    if (!st) MPI_Bcast(&run->ckpt_off, 1, MPI_INT, 0, run->comm);
    return st;
}

int tmd_ckpt_has(const tmd_run *run, int64_t index)
{
    if (!run->resume) return 0;
    char p[TMD_PATH_MAX + 32];
    tile_path(run, index, p, sizeof p);
    return access(p, R_OK) == 0;
}

static size_t seg_bytes(const tmd_run *run, const tmd_box *c)
{
    if (!run->seg_buf) return 0;
    return (size_t)((c->hi[0] - c->lo[0]) * (c->hi[1] - c->lo[1]) * (c->hi[2] - c->lo[2]));
}


/* Bytes per atom row in a tile file: the table's columns in tmd_atom_table_columns order;
 * save and load must agree, so both take the layout from there. */
static size_t ckpt_row_bytes(tmd_atom_table *a)
{
    tmd_atom_column cols[TMD_ATOM_MAX_COLUMNS];
    int ncols = tmd_atom_table_columns(a, cols);
    size_t row = 0;
    for (int c = 0; c < ncols; c++) row += cols[c].row_bytes;
    return row;
}

/* One file of atom rows: the header and rows r0 .. r0+n-1 of t's columns (tmd_atom_table_columns
 * order), then `tail` (tail_bytes, the tile's class map or nothing). Written atomically.
 * Returns 0, or -1 with errno set when the file cannot be written; *nomem on a failed allocation. */
static int rows_file_write(const char *path, int64_t id, tmd_atom_table *t, int64_t r0, int64_t n, const void *tail,
                           int64_t tail_bytes, int *nomem)
{
    int32_t np = t->nprob, nl = t->nlatent;
    size_t total = 8 + 8 + 8 + 4 + 4 + 8 + (size_t)n * ckpt_row_bytes(t) + (size_t)tail_bytes;
    char *buf = malloc(total), *p = buf;
    *nomem = !buf;
    if (!buf) return -1;
#define PUT(src, bytes) (memcpy(p, (src), (bytes)), p += (bytes))
    PUT(MAGIC, 8);
    PUT(&id, 8);
    PUT(&n, 8);
    PUT(&np, 4);
    PUT(&nl, 4);
    PUT(&tail_bytes, 8);
    tmd_atom_column cols[TMD_ATOM_MAX_COLUMNS];
    int ncols = tmd_atom_table_columns(t, cols);
    for (int c = 0; c < ncols && n > 0; c++) /* an empty table's columns may be NULL */
        PUT((const char *)*cols[c].data + (size_t)r0 * cols[c].row_bytes, cols[c].row_bytes * (size_t)n);
    if (tail_bytes) PUT(tail, (size_t)tail_bytes);
#undef PUT
    int e = write_file_atomic(path, buf, total);
    free(buf);
    return e;
}

/* Reads a file of rows_file_write: checks the header against id, out's probability and
 * feature widths and tail_bytes, appends the rows to out and copies the tail into `tail`;
 * tail_bytes < 0 takes a tail of any length and skips it (the streamed passes read the tile
 * checkpoints' rows without their class maps). `what` names the kind of file in the messages. */
static tmd_status rows_file_read(tmd_ctx *ctx, const char *path, const char *what, int64_t id, tmd_atom_table *out,
                                 void *tail, int64_t tail_bytes)
{
    tmd_status st = TMD_OK;
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    if (!f) return TMD_FAIL(ctx, TMD_ERR_IO, "cannot open the %s %s: %s", what, path, strerror(errno));
    char magic[8];
    int64_t g = -1, n = -1, sb = -1;
    int32_t np = -1, nl = -1;
    if (fread(magic, 1, 8, f) != 8 || memcmp(magic, MAGIC, 8) || fread(&g, 8, 1, f) != 1 || fread(&n, 8, 1, f) != 1 ||
        fread(&np, 4, 1, f) != 1 || fread(&nl, 4, 1, f) != 1 || fread(&sb, 8, 1, f) != 1)
        st = TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: not a tmdflow %s", path, what);
    if (!st && (g != id || n < 0 || sb < 0 || np != out->nprob || nl != out->nlatent || (tail_bytes >= 0 && sb != tail_bytes)))
        st = TMD_FAIL(ctx, TMD_ERR_FORMAT,
                      "%s: tile %lld with %d probability and %d feature columns and %lld map bytes; this run expects tile "
                      "%lld, %d, %d and %lld",
                      path, (long long)g, np, nl, (long long)sb, (long long)id, out->nprob, out->nlatent,
                      (long long)(tail_bytes >= 0 ? tail_bytes : sb));
    size_t body = st ? 0 : (size_t)n * ckpt_row_bytes(out) + (size_t)(tail_bytes >= 0 ? sb : 0);
    if (!st) st = tmd_calloc(ctx, (void **)&buf, body + 1, 1, what);
    if (!st && fread(buf, 1, body, f) != body) st = TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: truncated", path);
    fclose(f);
    int64_t first = out->n;
    for (int64_t k = 0; k < n && !st; k++) {
        int64_t i;
        st = tmd_atom_table_push(ctx, out, &i);
    }
    if (!st) {
        const char *p = buf;
#define GET(dst, bytes) (memcpy((dst), p, (bytes)), p += (bytes))
        tmd_atom_column cols[TMD_ATOM_MAX_COLUMNS];
        int ncols = tmd_atom_table_columns(out, cols);
        for (int c = 0; c < ncols && n > 0; c++) /* an empty table's columns may be NULL */
            GET((char *)*cols[c].data + (size_t)first * cols[c].row_bytes, cols[c].row_bytes * (size_t)n);
        if (sb && tail_bytes >= 0) GET(tail, (size_t)sb);
#undef GET
    }
    free(buf);
    return st;
}

tmd_status tmd_ckpt_save(tmd_ctx *ctx, tmd_run *run, const tmd_tile *tile, int64_t row0)
{
    if (run->ckpt_off) return TMD_OK;
    char path[TMD_PATH_MAX + 32];
    tile_path(run, tile->index, path, sizeof path);
    int nomem = 0;
    int e = rows_file_write(path, tile->index, &run->atoms, row0, run->atoms.n - row0, run->seg_buf,
                            (int64_t)seg_bytes(run, &tile->core), &nomem);
    if (nomem) return TMD_FAIL(ctx, TMD_ERR_NOMEM, "out of memory for the checkpoint of tile %lld", (long long)tile->index);
    if (e) { /* best effort: the run itself goes on (a full disk fails later, in the writer, on every rank) */
        tmd_info(ctx, "warning: cannot write the checkpoint %s on rank %d (%s): no more checkpoints from this rank",
                 path, ctx->rank, strerror(errno));
        run->ckpt_off = 1;
    }
    return TMD_OK;
}

tmd_status tmd_ckpt_load(tmd_ctx *ctx, tmd_run *run, int64_t index, tmd_atom_table *out)
{
    char path[TMD_PATH_MAX + 32];
    tile_path(run, index, path, sizeof path);
    tmd_box core;
    tmd_decomp_tile_box(run->decomp, index, &core, NULL);
    int64_t sb = (int64_t)seg_bytes(run, &core);
    tmd_status st = rows_file_read(ctx, path, "tile checkpoint", index, out, run->seg_buf, sb);
    if (!st && sb && run->seg_dset != H5I_INVALID_HID) st = tmd_unet_write_seg(ctx, run, &core, index);
    return st;
}

tmd_status tmd_ckpt_finish(tmd_ctx *ctx, tmd_run *run)
{
    if (ctx->rank == 0 && run->ckpt[0]) remove_dir(run->ckpt);
    return TMD_OK;
}

/* ---- streamed tables (mosaics): per-tile files of the classify passes and the writer ---- */

static void kind_path(const tmd_run *run, const char *kind, int64_t g, char *out, size_t n)
{
    snprintf(out, n, "%s/%s-%08lld.bin", run->ckpt, kind, (long long)g);
}

int tmd_run_tile_file_exists(const tmd_run *run, const char *kind, int64_t g)
{
    char p[TMD_PATH_MAX + 48];
    kind_path(run, kind, g, p, sizeof p);
    return access(p, R_OK) == 0;
}

tmd_status tmd_run_tile_rows_write(tmd_ctx *ctx, tmd_run *run, const char *kind, int64_t g, tmd_atom_table *t,
                                   int64_t r0, int64_t r1)
{
    char path[TMD_PATH_MAX + 48];
    kind_path(run, kind, g, path, sizeof path);
    int nomem = 0;
    if (rows_file_write(path, g, t, r0, r1 - r0, NULL, 0, &nomem))
        return nomem ? TMD_FAIL(ctx, TMD_ERR_NOMEM, "out of memory for the %s rows of tile %lld", kind, (long long)g)
                     : TMD_FAIL(ctx, TMD_ERR_IO, "cannot write %s on rank %d: %s", path, ctx->rank, strerror(errno));
    return TMD_OK;
}

tmd_status tmd_run_tile_rows_read(tmd_ctx *ctx, tmd_run *run, const char *kind, int64_t g, tmd_atom_table *out)
{
    char path[TMD_PATH_MAX + 48];
    kind_path(run, kind, g, path, sizeof path);
    return rows_file_read(ctx, path, "tile file", g, out, NULL, -1);
}

tmd_status tmd_run_tile_blob_write(tmd_ctx *ctx, tmd_run *run, const char *kind, int64_t g, const void *data, size_t n)
{
    char path[TMD_PATH_MAX + 48];
    kind_path(run, kind, g, path, sizeof path);
    if (write_file_atomic(path, data, n))
        return TMD_FAIL(ctx, TMD_ERR_IO, "cannot write %s on rank %d: %s", path, ctx->rank, strerror(errno));
    return TMD_OK;
}

tmd_status tmd_run_tile_blob_read(tmd_ctx *ctx, tmd_run *run, const char *kind, int64_t g, void *data, size_t n)
{
    char path[TMD_PATH_MAX + 48];
    kind_path(run, kind, g, path, sizeof path);
    FILE *f = fopen(path, "rb");
    if (!f) return TMD_FAIL(ctx, TMD_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    size_t k = fread(data, 1, n, f);
    int extra = fgetc(f) != EOF;
    fclose(f);
    if (k != n || extra) return TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: expected %zu bytes", path, n);
    return TMD_OK;
}

tmd_status tmd_run_tile_file_remove(tmd_ctx *ctx, tmd_run *run, const char *kind, int64_t g)
{
    char path[TMD_PATH_MAX + 48];
    kind_path(run, kind, g, path, sizeof path);
    if (unlink(path) != 0 && errno != ENOENT)
        return TMD_FAIL(ctx, TMD_ERR_IO, "cannot remove %s: %s", path, strerror(errno));
    return TMD_OK;
}
