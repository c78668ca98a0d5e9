/* The dynamics stages of the run driver (tmd/pipeline.h): drift, features (tile pass),
 * track, instability, density. Stacks only, except density (vacancy maps of single images). */
#include "tmd/drift.h"
#include "tmd/dynamics.h"
#include "tmd/lattice.h"
#include "tmd/nn.h"
#include "tmd/pipeline.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* State the dynamics stages keep in the run (run->dyn). */
struct tmd_dyn_state {
    tmd_encoder enc;          /* features: patch encoder */
    tmd_nn_model *model;      /* the autoencoder (freed after enc) */
    int64_t encoded;          /* atoms rows already encoded */
    tmd_track_basis basis;    /* track */
    int have_basis;
};

void tmd_dyn_state_free(struct tmd_dyn_state **s)
{
    if (!s || !*s) return;
    tmd_encoder_free(&(*s)->enc);
    tmd_nn_model_free(&(*s)->model);
    free(*s);
    *s = NULL;
}

static tmd_status state(tmd_ctx *ctx, tmd_run *run)
{
    if (run->dyn) return TMD_OK;
    TMD_CHECK(tmd_calloc(ctx, (void **)&run->dyn, 1, sizeof *run->dyn, "dynamics state"));
    run->dyn_free = tmd_dyn_state_free; /* tmd_run_free calls it */
    return TMD_OK;
}

static int is_stack(const tmd_run *run) { return run->info.frames > 1; }

/* ---- drift ------------------------------------------------------------------------------ */

static tmd_status read_frame(tmd_ctx *ctx, void *user, int64_t t, int64_t y0, int64_t x0, int64_t h, int64_t w, float *out)
{
    return tmd_reader_read(ctx, (tmd_reader *)user, t, y0, x0, h, w, out);
}

tmd_status tmd_stage_drift(tmd_ctx *ctx, tmd_run *run)
{
    if (!is_stack(run)) return TMD_OK;
    int64_t T = run->info.frames, H = run->info.height, W = run->info.width;
    int64_t e = H < W ? H : W;
    int n = (int)(e < 256 ? e : 256) & ~1;
    tmd_status st = TMD_OK;
    tmd_drift_plan *p = NULL;
    if (n < 16) st = TMD_FAIL(ctx, TMD_ERR_RANGE, "drift: frames of %lldx%lld px are too small to register (16 px at least)",
                              (long long)H, (long long)W);
    if (!st) st = tmd_drift_plan_create(ctx, n, NULL, &p);
    if (!st && !run->drift) st = tmd_calloc(ctx, (void **)&run->drift, (size_t)T * 2, sizeof(double), "drift");
    st = tmd_agree(ctx, run->comm, st);
    if (!st) {
        int64_t t0, nt;
        tmd_drift_block(T, ctx->rank, ctx->nranks, &t0, &nt);
        st = tmd_drift_stack(ctx, run->comm, p, read_frame, run->reader, T, H, W, t0, nt, run->drift);
    }
    if (!st) tmd_info(ctx, "drift: %lld frames registered (%dx%d window), last frame (%.2f, %.2f) px", (long long)T, n, n,
                      run->drift[2 * (T - 1)], run->drift[2 * (T - 1) + 1]);
    tmd_drift_plan_destroy(&p);
    return st;
}

/* ---- features (tile pass, after atoms) ---------------------------------------------------- */

tmd_status tmd_features_begin(tmd_ctx *ctx, tmd_run *run)
{
    if (!is_stack(run)) return TMD_OK;
    tmd_status st = state(ctx, run);
    char path[TMD_PATH_MAX];
    int use_model = 0;
    if (!st && strcmp(run->cfg.autoencoder_model, "none")) {
        tmd_ctx probe = *ctx;
        probe.log_level = TMD_LOG_QUIET;
        if (tmd_config_find_model(&probe, run->cfg.autoencoder_model, path, sizeof path) == TMD_OK) use_model = 1;
        else tmd_info(ctx, "features: autoencoder model '%s' not found; using the ring descriptor instead "
                      "(set autoencoder_model=none to silence this)", run->cfg.autoencoder_model);
    }
    if (!st && use_model) {
        st = tmd_nn_model_load(ctx, path, &run->dyn->model);
        if (!st) st = tmd_encoder_from_model(ctx, run->dyn->model, 64, run->s > 0 ? run->s : 1, &run->dyn->enc);
        if (!st) tmd_info(ctx, "features: autoencoder %s, %d-dim latent of %dx%d patches", path, run->dyn->enc.dim,
                          run->dyn->enc.patch, run->dyn->enc.patch);
    } else if (!st) {
        tmd_encoder_descriptor(24, 8, run->s > 0 ? run->s : 1, &run->dyn->enc);
        if (!run->dyn->enc.fn) st = TMD_FAIL(ctx, TMD_ERR_NOMEM, "features: no memory for the descriptor");
    }
    if (!st) st = tmd_atom_table_set_latent(ctx, &run->atoms, run->dyn->enc.dim);
    if (!st) run->dyn->encoded = run->atoms.n;
    return st;
}

tmd_status tmd_tile_features(tmd_ctx *ctx, tmd_run *run, tmd_tile *tile)
{
    if (!is_stack(run) || !run->dyn || !run->dyn->enc.fn) return TMD_OK;
    tmd_atom_table *a = &run->atoms;
    const tmd_box *b = &tile->rbox;
    int64_t h = b->hi[1] - b->lo[1], w = b->hi[2] - b->lo[2], D = a->nlatent;
    int64_t k = run->dyn->encoded;
    while (k < a->n) {
        int64_t t = a->frame[k], e = k;
        while (e < a->n && a->frame[e] == t) e++;
        if (t < b->lo[0] || t >= b->hi[0])
            return TMD_FAIL(ctx, TMD_ERR_INTERNAL, "features: atom %lld of frame %lld is outside tile %lld's frames [%lld, %lld)",
                            (long long)k, (long long)t, (long long)tile->index, (long long)b->lo[0], (long long)b->hi[0]);
        TMD_CHECK(tmd_features_compute(ctx, &run->dyn->enc, tile->pix + (t - b->lo[0]) * h * w, b->lo[1], b->lo[2], h, w,
                                       e - k, a->x + k, a->y + k, a->latent + k * D));
        k = e;
    }
    run->dyn->encoded = a->n;
    return TMD_OK;
}

tmd_status tmd_features_end(tmd_ctx *ctx, tmd_run *run)
{
    (void)ctx;
    if (run->dyn) {
        tmd_encoder_free(&run->dyn->enc);
        tmd_nn_model_free(&run->dyn->model);
    }
    return TMD_OK;
}

/* ---- track ------------------------------------------------------------------------------ */

tmd_status tmd_stage_track(tmd_ctx *ctx, tmd_run *run)
{
    if (!is_stack(run)) return TMD_OK;
    tmd_status st = state(ctx, run);
    if (!st && !run->drift) st = TMD_FAIL(ctx, TMD_ERR_INTERNAL, "track: the drift stage has not run");
    double a1[2], a2[2];
    int have = run->lattice_a1 && run->lattice_a2;
    st = tmd_agree(ctx, run->comm, st);
    if (st) return st;
    if (have) {
        /* the median over the frames, not frame 0's: a frame 0 that is mostly vacuum (a film
         * edge) measures them poorly (512 x 1000 stack of seed 201: |a1| 28.2 px against 31.75),
         * and a poor start left a third of the run's atoms off their sites */
        memcpy(a1, run->lattice_a1, sizeof a1);
        memcpy(a2, run->lattice_a2, sizeof a2);
        tmd_track_median_vectors(run->lattice_a1, run->lattice_a2, run->info.frames, a1, a2);
    } else {
        /* no lattice stage ran: measure frame 0 around its centre (every rank the same) */
        int64_t H = run->info.height, W = run->info.width, e = H < W ? H : W;
        int tile = (int)(e < 512 ? e : 512);
        float *buf = NULL;
        tmd_lattice_plan *lp = NULL;
        tmd_lattice lat;
        st = tmd_calloc(ctx, (void **)&buf, (size_t)tile * tile, sizeof(float), "lattice window");
        if (!st) st = tmd_reader_read(ctx, run->reader, 0, (H - tile) / 2, (W - tile) / 2, tile, tile, buf);
        if (!st) st = tmd_lattice_plan_create(ctx, tile, tile, NULL, &lp);
        if (!st) st = tmd_lattice_measure(ctx, lp, buf, tile, &lat);
        tmd_lattice_plan_destroy(&lp);
        free(buf);
        st = tmd_agree(ctx, run->comm, st);
        if (st) return st;
        memcpy(a1, lat.a1, sizeof a1);
        memcpy(a2, lat.a2, sizeof a2);
    }
    /* phase from frame 0, lattice vectors refined on every frame's drift-corrected atoms */
    st = tmd_track_basis_fit_stack(ctx, run->comm, &run->atoms, a1, a2, run->drift, run->info.frames, &run->dyn->basis);
    if (!st) st = tmd_track_assign(ctx, &run->dyn->basis, run->drift, run->info.frames, 0.45, &run->atoms);
    st = tmd_agree(ctx, run->comm, st);
    if (!st) {
        run->dyn->have_basis = 1;
        int64_t n = 0, none = 0, g[2];
        for (int64_t k = 0; k < run->atoms.n; k++) none += run->atoms.site[k] < 0;
        n = run->atoms.n;
        int64_t l[2] = {n, none};
        MPI_Allreduce(l, g, 2, MPI_INT64_T, MPI_SUM, run->comm);
        tmd_info(ctx, "track: %lld atoms on lattice sites (%lld off-lattice); basis from %lld atoms of all frames, rms %.2f px",
                 (long long)(g[0] - g[1]), (long long)g[1], (long long)run->dyn->basis.n_fit, run->dyn->basis.rms_px);
    }
    return st;
}

/* ---- instability ------------------------------------------------------------------------ */

tmd_status tmd_stage_instability(tmd_ctx *ctx, tmd_run *run)
{
    if (!is_stack(run)) return TMD_OK;
    if (!run->dyn || !run->dyn->have_basis) return TMD_FAIL(ctx, TMD_ERR_INTERNAL, "instability: the track stage has not run");
    tmd_dyn_params prm;
    tmd_dyn_params_from_config(&prm, &run->cfg, run->pixel_size);
    tmd_site_table_free(&run->sites);
    tmd_site_table_init(&run->sites);
    tmd_status st = tmd_dynamics_sites(ctx, run->comm, &run->dyn->basis, run->drift, run->info.frames, run->info.height,
                                       run->info.width, &run->atoms, &run->defects, &prm, &run->sites);
    if (!st) {
        run->write_sites = 1;
        int64_t l[2] = {run->sites.n, 0}, g[2];
        for (int64_t k = 0; k < run->sites.n; k++) l[1] += run->sites.unstable[k];
        MPI_Allreduce(l, g, 2, MPI_INT64_T, MPI_SUM, run->comm);
        tmd_info(ctx, "instability: %lld sites, %lld unstable (score > %g)", (long long)g[0], (long long)g[1], prm.threshold);
    }
    return st;
}

/* ---- density maps and regions --------------------------------------------------------------- */

tmd_status tmd_stage_density(tmd_ctx *ctx, tmd_run *run)
{
    tmd_dyn_params prm;
    tmd_dyn_params_from_config(&prm, &run->cfg, run->pixel_size);
    tmd_dyn_maps maps;
    int64_t T = run->info.frames;
    tmd_status st = tmd_dynamics_maps(ctx, run->comm, &prm, run->info.height, run->info.width, T,
                                      is_stack(run) ? &run->sites : NULL, &run->defects, is_stack(run) ? run->drift : NULL,
                                      &maps);
    if (st) return st;
    st = tmd_dynamics_write(ctx, run->writer, "", NULL, &maps, run->info.height, run->info.width);
    if (!st) {
        double area = 0;
        for (int64_t r = 0; r < maps.regions.n; r++) area += maps.regions.area_px[r];
        tmd_info(ctx, "density: %lldx%lld maps of %d px bins, %lld defect-rich regions (%.0f px^2)", (long long)maps.gh,
                 (long long)maps.gw, maps.bin_px, (long long)maps.regions.n, area);
    }
    tmd_dyn_maps_free(&maps);
    return st;
}
