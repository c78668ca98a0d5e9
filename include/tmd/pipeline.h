/* tmd/pipeline.h — the run driver: one readable list of stages from an input image to one
 * result file, and the state (tmd_run) the stages share.
 *
 * Role: `tmdflow run` fills a tmd_run (configuration, input, output) and calls
 * tmd_run_execute, which walks the stage table in src/pipeline/pipeline.c:
 *
 *     open       input opened first (bad input: one message, no result file), result file
 *                created as OUT.tmp (renamed only when everything succeeded)
 *     scale      pixel size: --pixel-size, else pixel_size=, else measured (lattice stage)
 *     decompose  global tile grid (tmd/decomp.h), Cartesian communicator
 *     normalise  pass over every tile core: background grid + global levels (tmd/normalise.h)
 *     read       [tile] tile + halo read and normalised
 *     unet       [tile] resampled to the nominal grid, overlap-tile U-Net inference
 *     atoms      [tile] columns, sub-pixel centres, kept by the tile holding the centre
 *     ... lattice, graph, classify, track, features, instability, density (other issues)
 *     write      /atoms (and every other table a stage filled), root attributes
 *
 * Two kinds of stage. A GLOBAL stage runs once, on every rank, and may be collective
 * (agree with tmd_agree before collectives). A TILE stage runs for each of the rank's tiles
 * in order (consecutive tile stages form one pass over the tiles, so a tile's buffers live
 * only while it is processed and memory per rank is bounded by the tile); it must NOT be
 * collective (ranks hold different numbers of tiles). A tile stage may have `begin`/`end`
 * functions (collective, once around the pass) for plans and buffers.
 *
 * Adding a stage = one function + one row in STAGES[] (src/pipeline/pipeline.c), e.g.
 *     tmd_status tmd_stage_classify(tmd_ctx *ctx, tmd_run *run);   // in src/classify/
 *     {"classify", TMD_STAGE_GLOBAL, tmd_stage_classify, NULL, NULL, NULL},
 * Stage functions read and fill the shared state below (add fields to tmd_run for new
 * state; free them in tmd_run_free). The per-rank tables hold the rows this rank owns; the
 * write stage writes every non-empty table (atoms, defects, sites, drift, lattice) and
 * stages that want other datasets write them through run->writer themselves (collective).
 * Checkpoint/resume (issue 9): tile stages are pure functions of (tile, configuration,
 * normalisation), so per-tile results are kept and skipped on --resume. Every completed
 * tile's rows (all atom columns incl. latent features, and its class-map rectangle when
 * save_maps=1) are written, as the tile completes, to OUT.ckpt/tile-<global index>.bin
 * (written as .tmp, renamed: a killed rank never leaves a torn file); OUT.ckpt/manifest
 * (rank 0, before the pass) holds the input fingerprint (path, size, mtime), the tile grid
 * and the effective configuration. With run->resume the manifest must match (else refused,
 * naming the difference) and each rank loads the tiles it holds, on any rank count. The
 * directory is removed after a successful run and after a failure other than a stop by a
 * signal (such errors repeat); it is kept after a signal (and whatever a killed job left).
 *
 * At the end a table of stages (time, share, throughput, per-rank peak memory) is logged
 * and stored as the root attribute `stage_table`; per-rank peak RSS as `peak_rss_bytes`.
 *
 * Collective: tmd_run_execute over `comm`. Ownership: tmd_run_free releases everything the
 * stages attached to the run (tables, arrays, plans, reader, writer — an open writer is
 * closed without renaming, so no result file appears).
 */
#ifndef TMD_PIPELINE_H
#define TMD_PIPELINE_H

#include "tmd/atoms.h"
#include "tmd/config.h"
#include "tmd/core.h"
#include "tmd/decomp.h"
#include "tmd/io.h"
#include "tmd/normalise.h"
#include "tmd/table.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tmd_run tmd_run;

/* One tile while the tile pass processes it. Buffers are allocated once per run (largest
 * tile) and reused. */
typedef struct tmd_tile {
    int64_t index;        /* global tile index */
    int64_t local;        /* position in this rank's tile list */
    tmd_box core;         /* the tile's own pixels (input px, frames) */
    tmd_box rbox;         /* input region read: the U-Net window's support, clipped */
    float *pix;           /* (frames, rh, rw) normalised, unclamped, over rbox */
    int64_t Y0, X0;       /* nominal-grid origin of the U-Net window (aligned to the model's multiple) */
    int64_t nh, nw;       /* window size (the plan's size) */
    float *prob;          /* (frames, nclass, nh, nw) U-Net class probabilities */
    int nclass;
} tmd_tile;

typedef tmd_status (*tmd_stage_fn)(tmd_ctx *ctx, tmd_run *run);
typedef tmd_status (*tmd_tile_fn)(tmd_ctx *ctx, tmd_run *run, tmd_tile *tile);

typedef enum { TMD_STAGE_GLOBAL = 0, TMD_STAGE_TILE = 1 } tmd_stage_kind;

typedef struct tmd_stage {
    const char *name;
    tmd_stage_kind kind;
    tmd_stage_fn run;     /* GLOBAL: the stage (collective allowed) */
    tmd_tile_fn tile;     /* TILE: per tile (never collective) */
    tmd_stage_fn begin;   /* TILE, optional: collective set-up before the pass */
    tmd_stage_fn end;     /* TILE, optional: collective tear-down after the pass */
} tmd_stage;

enum { TMD_RUN_MAX_STAGES = 32 };

typedef struct tmd_stage_stat {
    double seconds;       /* this rank's time in the stage */
    int64_t peak_rss;     /* this rank's peak RSS after the stage, bytes */
    int ran;
} tmd_stage_stat;

struct tmd_run {
    /* ---- set by the caller (tmd_run_init gives defaults) ---- */
    tmd_config cfg;                  /* effective configuration (scale stage fills pixel_size) */
    char input[TMD_PATH_MAX];        /* input spec (TIFF path or FILE.h5:/dataset) */
    char output[TMD_PATH_MAX];       /* result file */
    int force;                       /* overwrite an existing result */
    double pixel_size_arg;           /* --pixel-size, 0 = not given */
    int pdims[3];                    /* process grid (t, y, x); zeros = automatic */
    int resume;                      /* 1: load completed tiles from the checkpoint OUT.ckpt/ */

    /* ---- filled by the stages ---- */
    MPI_Comm comm;                   /* duplicate of the caller's communicator */
    tmd_reader *reader;              /* open input (open) */
    tmd_image_info info;             /* frames, height, width, ... */
    double pixel_size;               /* Angstrom per input pixel (scale) */
    char pixel_size_source[64];      /* "--pixel-size", "configuration", "file metadata", "lattice",
                                      * "lattice+Vegard" (root attribute pixel_size_source) */
    char species_warning[640];       /* classify: why the species are uncertain (the pure-compound
                                      * twin without a pixel size), "" when they are not; root
                                      * attribute species_warning */
    double scale_px;                 /* Angstrom per input pixel at which the models see the image:
                                      * the lattice's, at a = 3.22 A, whenever a lattice was measured
                                      * (so a given and a measured pixel size see the same image), else
                                      * pixel_size */
    double s;                        /* nominal_px / scale_px: input pixels per nominal pixel */
    tmd_decomp *decomp;              /* tile grid (decompose) */
    tmd_normalise *norm;             /* background + levels (normalise) */
    tmd_writer *writer;              /* result file, open on OUT.tmp (open) */
    int64_t halo_n;                  /* effective U-Net halo, nominal pixels */

    /* U-Net (unet stage) */
    struct tmd_nn_model *unet;
    struct tmd_nn_plan *unet_plan;
    int unet_reach, unet_multiple;
    int64_t win;                     /* window edge, nominal pixels (plan is win x win) */
    float *net_in;                   /* (win, win) resampled, clamped network input */
    float *rs_tmp;                   /* resampling scratch */
    hid_t seg_dset;                  /* /segmentation/classes when save_maps */
    uint8_t *seg_buf;                /* (frames, tile, tile) class map of one tile core */

    /* atoms */
    tmd_atoms_params atoms_params;
    tmd_atom_table atoms;            /* this rank's atoms (owned: centre in its tiles) */
    tmd_atom_table ghosts;           /* copies of neighbours' atoms near the domain (graph stage) */

    /* later stages (issues 7, 8) fill these; the write stage writes what is non-empty */
    tmd_defect_table defects;        /* this rank's vacancies */
    tmd_site_table sites;            /* this rank's lattice sites */
    double *drift;                   /* (frames, 2) on every rank, or NULL */
    double *lattice_a1, *lattice_a2; /* (frames, 2) on every rank, or NULL */
    int write_defects, write_sites;  /* 1: write the group even if empty everywhere */
    struct tmd_dyn_state *dyn;       /* private state of the dynamics stages (tmd/dynamics.h) */
    void (*dyn_free)(struct tmd_dyn_state **); /* set by whoever allocates dyn; tmd_run_free calls it */

    /* accounting */
    tmd_stage_stat stat[TMD_RUN_MAX_STAGES];
    int64_t tiles_done;              /* this rank's tiles completed in the tile pass */
    int64_t tiles_loaded;            /* of those, loaded from the checkpoint (--resume) */
    char ckpt[TMD_PATH_MAX];         /* checkpoint directory OUT.ckpt (set by the driver) */
    int ckpt_made;                   /* 1: this run created or took over the checkpoint */
    int ckpt_off;                    /* 1: checkpoint could not be written here (warned; run goes on) */
    /* streamed atom table (mosaics with a checkpoint, classify_band_tiles > 0): the tile pass
     * keeps no rows (each tile's atoms are in OUT.ckpt/tile-<g>.bin), the classify stage works
     * band by band and leaves each tile's classified rows in OUT.ckpt/cls-<g>.bin, the write
     * stage streams them to /atoms in pieces. run->atoms then stays empty. */
    int stream;                      /* 1: the atom table is streamed (see above) */
    char stream_kind[8];             /* file kind holding the final rows: "tile" or "cls" */
    int64_t *tile_rows;              /* (ntiles_total) rows per tile of stream_kind, on every rank after classify */
    double t_begin;
};

/* Per-tile files in the checkpoint directory (streamed tables; not collective): rows of an
 * atom table (kind "tile": the tile pass's own checkpoint files; "cls": classified rows) and
 * raw blobs. _read appends to `out`, whose nprob/nlatent must match the file's. */
int tmd_run_tile_file_exists(const tmd_run *run, const char *kind, int64_t g);
tmd_status tmd_run_tile_file_remove(tmd_ctx *ctx, tmd_run *run, const char *kind, int64_t g); /* absent: ok */
tmd_status tmd_run_tile_rows_write(tmd_ctx *ctx, tmd_run *run, const char *kind, int64_t g, tmd_atom_table *t,
                                   int64_t r0, int64_t r1);
tmd_status tmd_run_tile_rows_read(tmd_ctx *ctx, tmd_run *run, const char *kind, int64_t g, tmd_atom_table *out);
tmd_status tmd_run_tile_blob_write(tmd_ctx *ctx, tmd_run *run, const char *kind, int64_t g, const void *data, size_t n);
tmd_status tmd_run_tile_blob_read(tmd_ctx *ctx, tmd_run *run, const char *kind, int64_t g, void *data, size_t n);

/* Defaults: tmd_config_defaults, no input/output, everything else empty. */
void tmd_run_init(tmd_run *run);

/* Collective over comm. Runs every stage in order; on any error every rank returns the
 * same status and no result file is left. */
tmd_status tmd_run_execute(tmd_ctx *ctx, MPI_Comm comm, tmd_run *run);

/* Releases everything attached to the run (not collective unless a writer or plan is still
 * open: call it on every rank). */
void tmd_run_free(tmd_run *run);

/* The stage table (for documentation and tests). */
const tmd_stage *tmd_run_stages(int *n);

/* Window geometry of a tile: nominal origin (aligned down to the model multiple) and the
 * input region it needs. Exposed for tests. */
void tmd_run_tile_window(const tmd_run *run, const tmd_box *core, int64_t *Y0, int64_t *X0, tmd_box *rbox);

#ifdef __cplusplus
}
#endif
#endif
