/* dyn_bench STACK.h5 [--no-features] [--atoms RESULT.h5 [--descriptor]] — speed and accuracy of the dynamics
 * stages alone on a simulated stack (tmdflow simulate --frames T -o STACK.h5), with the
 * simulator's own atoms standing in for the upstream stages (segmentation, atoms,
 * classification), or with --atoms the atoms, species, intensities, latents and vacancies
 * of a tmdflow run on that stack (so the current dynamics code is measured on real upstream
 * output without re-running the U-Net):
 *   drift       tmd_drift_stack on /image (each rank its block of frames)
 *   features    ring-descriptor latents of every atom's patch (each rank its frames)
 *   track       basis on frame 0 + site ids
 *   instability tmd_dynamics_sites
 *   density     tmd_dynamics_maps (maps + regions)
 * Prints per-stage seconds (max over ranks), frames/s, drift RMSE against /drift and the
 * instability ROC AUC against /sites/dynamic (all truth sites, and those in view in every
 * frame), and against the observable truth exactly as `tmdflow score` does (docs/score.md).
 * Run as `mpiexec -n N dyn_bench STACK.h5`. Options: --run-drift takes /drift from the
 * --atoms result instead of registering again; --no-blend turns the neighbour blend off,
 * --nb-frames K / --nb-radius B set it;
 * --dump FILE writes one line per truth site (x y dynamic found score frames-in-view
 * changes-in-view changes). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tmd/drift.h"
#include "tmd/dynamics.h"
#include "tmd/io.h"

#include <time.h>

/* CPU seconds of this process (the machine may be shared: wall time alone misleads). */
static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static tmd_status read_frame(tmd_ctx *ctx, void *user, int64_t t, int64_t y0, int64_t x0, int64_t h, int64_t w, float *out)
{
    return tmd_reader_read(ctx, (tmd_reader *)user, t, y0, x0, h, w, out);
}

static void *col(tmd_ctx *ctx, hid_t f, const char *d, tmd_dtype t, int64_t *n, int64_t *k)
{
    void *p = NULL;
    if (tmd_h5_read_rows(ctx, f, d, t, n, k, &p)) {
        fprintf(stderr, "dyn_bench: %s\n", ctx->err_msg);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    return p;
}

static double auc(int n, const double *score, const int8_t *pos, const int8_t *use)
{
    double win = 0, np = 0, nn = 0;
    for (int i = 0; i < n; i++) {
        if (!use[i] || !pos[i]) continue;
        np++;
        for (int j = 0; j < n; j++)
            if (use[j] && !pos[j]) win += score[i] > score[j] ? 1 : score[i] == score[j] ? 0.5 : 0;
    }
    for (int j = 0; j < n; j++) nn += use[j] && !pos[j];
    return np > 0 && nn > 0 ? win / (np * nn) : NAN;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm comm = MPI_COMM_WORLD;
    tmd_ctx ctx;
    tmd_ctx_init(&ctx, comm);
    if (!getenv("TMDFLOW_LOG")) ctx.log_level = TMD_LOG_QUIET; /* TMDFLOW_LOG=debug shows the stages' debug lines */
    if (argc < 2) {
        if (ctx.rank == 0) fprintf(stderr, "usage: dyn_bench STACK.h5 [--no-features]\n");
        MPI_Finalize();
        return 2;
    }
    int features = 1, descriptor = 0, run_drift = 0, no_blend = 0, drift_only = 0;
    int64_t max_frames = 0;
    int basis0 = 0; /* --basis-frame0: the track basis from frame 0 only (as before 2026-11-25 evening) */
    double nb_radius = -1;     /* --nb-radius B: neighbour blend radius, bonds */
    double nb_frames = -1;     /* --nb-frames K: neighbour blend K (tmd_dyn_params.nb_frames) */
    int win_opt = 0;           /* --window N: drift window edge */
    double taper_y = 0;        /* --taper-y F: drift apodisation along y (tmd_drift_opts.taper_y) */
    const char *dump_track = NULL;
    const char *atoms_from = NULL, *dump = NULL, *dump_drift = NULL;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--no-features")) features = 0;
        else if (!strcmp(argv[i], "--no-blend")) no_blend = 1; /* instability without the neighbour blend */
        else if (!strcmp(argv[i], "--run-drift")) run_drift = 1; /* /drift of the --atoms result, not re-registered */
        else if (!strcmp(argv[i], "--descriptor")) descriptor = 1; /* ring descriptor even if the run has latents */
        else if (!strcmp(argv[i], "--atoms") && i + 1 < argc) atoms_from = argv[++i];
        else if (!strcmp(argv[i], "--dump") && i + 1 < argc) dump = argv[++i]; /* per truth site, for diagnosis */
        else if (!strcmp(argv[i], "--nb-radius") && i + 1 < argc) nb_radius = atof(argv[++i]);
        else if (!strcmp(argv[i], "--nb-frames") && i + 1 < argc) nb_frames = atof(argv[++i]);
        else if (!strcmp(argv[i], "--drift-only")) drift_only = 1;
        else if (!strcmp(argv[i], "--taper-y") && i + 1 < argc) taper_y = atof(argv[++i]);
        else if (!strcmp(argv[i], "--dump-track") && i + 1 < argc) dump_track = argv[++i]; /* per frame: atoms, on sites (1 rank) */
        else if (!strcmp(argv[i], "--window") && i + 1 < argc) win_opt = atoi(argv[++i]); /* drift window edge (default min(256, side)) */
        else if (!strcmp(argv[i], "--basis-frame0")) basis0 = 1; /* register, print the RMSE, stop */
        else if (!strcmp(argv[i], "--frames") && i + 1 < argc) max_frames = atoll(argv[++i]); /* first N frames (with --drift-only) */
        else if (!strcmp(argv[i], "--dump-drift") && i + 1 < argc) dump_drift = argv[++i]; /* t dx dy true_dx true_dy */
    }
    char spec[1100];
    snprintf(spec, sizeof spec, "%s:/image", argv[1]);
    tmd_reader *rd = NULL;
    if (tmd_reader_open(&ctx, spec, &rd)) {
        fprintf(stderr, "dyn_bench: %s\n", ctx.err_msg);
        MPI_Abort(comm, 1);
    }
    const tmd_image_info *info = tmd_reader_info(rd);
    int64_t T = info->frames, H = info->height, W = info->width, n, k;
    if (max_frames > 0 && max_frames < T && drift_only) T = max_frames;
    hid_t f;
    tmd_h5_open_read(&ctx, argv[1], &f);
    double px = 0;
    tmd_h5_read_attr_f64(&ctx, f, "/", "pixel_size", &px, 1);
    double *tdrift = col(&ctx, f, "/drift", TMD_F64, &n, &k);
    double *a1 = col(&ctx, f, "/lattice/a1", TMD_F64, &n, &k), *a2 = col(&ctx, f, "/lattice/a2", TMD_F64, &n, &k);
    double t[6] = {0}, cpu[6] = {0}, u0;
    /* drift */
    int64_t t0, nt;
    tmd_drift_block(T, ctx.rank, ctx.nranks, &t0, &nt);
    double *drift = calloc((size_t)T * 2, sizeof(double));
    tmd_drift_plan *dp = NULL;
    int win = (int)((H < W ? H : W) < 256 ? (H < W ? H : W) : 256) & ~1;
    if (win_opt > 0) win = win_opt & ~1;
    MPI_Barrier(comm);
    double c0 = MPI_Wtime();
    u0 = cpu_now();
    tmd_drift_opts dopt;
    tmd_drift_opts_default(&dopt);
    if (taper_y > 0) dopt.taper_y = taper_y;
    tmd_status st = tmd_drift_plan_create(&ctx, win, &dopt, &dp);
    if (!st && run_drift && atoms_from) {
        hid_t fd;
        int64_t nr, kr;
        double *rdft = NULL;
        st = tmd_h5_open_read(&ctx, atoms_from, &fd);
        if (!st) st = tmd_h5_read_rows(&ctx, fd, "/drift", TMD_F64, &nr, &kr, (void **)&rdft);
        if (!st) memcpy(drift, rdft, sizeof(double) * 2 * T);
        free(rdft);
        if (fd >= 0) H5Fclose(fd);
    } else if (!st) st = tmd_drift_stack(&ctx, comm, dp, read_frame, rd, T, H, W, t0, nt, drift);
    tmd_drift_plan_destroy(&dp);
    t[0] = MPI_Wtime() - c0;
    cpu[0] = cpu_now() - u0;
    if (st) {
        fprintf(stderr, "dyn_bench: drift: %s\n", ctx.err_msg);
        MPI_Abort(comm, 1);
    }
    double se = 0;
    for (int64_t i = 0; i < T; i++) se += pow(drift[2 * i] - tdrift[2 * i], 2) + pow(drift[2 * i + 1] - tdrift[2 * i + 1], 2);
    if (dump_drift && ctx.rank == 0) {
        FILE *fd = fopen(dump_drift, "w");
        for (int64_t i = 0; fd && i < T; i++)
            fprintf(fd, "%lld %.4f %.4f %.4f %.4f\n", (long long)i, drift[2 * i], drift[2 * i + 1], tdrift[2 * i], tdrift[2 * i + 1]);
        if (fd) fclose(fd);
    }
    if (drift_only) {
        if (ctx.rank == 0)
            printf("dyn_bench %s: %lld frames, drift %.3f s wall, %.3f CPU s (rank 0); drift RMSE %.4f px\n", argv[1],
                   (long long)T, t[0], cpu[0], sqrt(se / T));
        MPI_Finalize();
        return 0;
    }
    /* the atoms of this rank's frames: the simulator's, or a run's (--atoms) */
    hid_t fa = f;
    if (atoms_from && tmd_h5_open_read(&ctx, atoms_from, &fa)) {
        fprintf(stderr, "dyn_bench: %s\n", ctx.err_msg);
        MPI_Abort(comm, 1);
    }
    int64_t na, D = 0;
    double *x = col(&ctx, fa, "/atoms/x", TMD_F64, &na, &k), *y = col(&ctx, fa, "/atoms/y", TMD_F64, &na, &k);
    int32_t *fr = col(&ctx, fa, "/atoms/frame", TMD_I32, &na, &k);
    int8_t *sub = col(&ctx, fa, "/atoms/sublattice", TMD_I8, &na, &k), *sp = col(&ctx, fa, "/atoms/species", TMD_I8, &na, &k);
    float *inten = col(&ctx, fa, "/atoms/intensity", TMD_F32, &na, &k), *lat = NULL;
    if (atoms_from && !descriptor && tmd_h5_exists(fa, "/features/latent")) {
        lat = col(&ctx, fa, "/features/latent", TMD_F32, &na, &D);
        features = 0; /* the run's own latents */
    }
    if (atoms_from && tmd_h5_exists(fa, "/lattice/a1")) {
        free(a1);
        free(a2);
        a1 = col(&ctx, fa, "/lattice/a1", TMD_F64, &n, &k);
        a2 = col(&ctx, fa, "/lattice/a2", TMD_F64, &n, &k);
    }
    tmd_atom_table a;
    tmd_atom_table_init(&a, 1);
    tmd_encoder enc;
    tmd_encoder_descriptor(24, 8, 0.12 / px, &enc);
    if (features) tmd_atom_table_set_latent(&ctx, &a, enc.dim);
    else if (lat) tmd_atom_table_set_latent(&ctx, &a, (int)D);
    for (int64_t i = 0; i < na; i++) {
        if (fr[i] < t0 || fr[i] >= t0 + nt) continue;
        int64_t r;
        tmd_atom_table_push(&ctx, &a, &r);
        a.x[r] = x[i];
        a.y[r] = y[i];
        a.frame[r] = fr[i];
        a.sublattice[r] = sub[i];
        a.species[r] = sp[i];
        a.intensity[r] = inten[i];
        if (lat) memcpy(a.latent + r * D, lat + i * D, sizeof(float) * D);
    }
    tmd_defect_table df;
    tmd_defect_table_init(&df);
    int64_t nd = 0;
    if (tmd_h5_exists(fa, "/defects/frame")) {
        int32_t *dfr = col(&ctx, fa, "/defects/frame", TMD_I32, &nd, &k);
        double *dx = col(&ctx, fa, "/defects/x", TMD_F64, &nd, &k), *dy = col(&ctx, fa, "/defects/y", TMD_F64, &nd, &k);
        int8_t *dt = col(&ctx, fa, "/defects/type", TMD_I8, &nd, &k);
        for (int64_t i = 0; i < nd; i++)
            if (dfr[i] >= t0 && dfr[i] < t0 + nt) tmd_defect_table_push(&ctx, &df, dfr[i], dx[i], dy[i], dt[i]);
    }
    if (fa != f) H5Fclose(fa);
    /* features: one frame at a time (atoms are in frame order) */
    MPI_Barrier(comm);
    c0 = MPI_Wtime();
    u0 = cpu_now();
    float *img = malloc(sizeof(float) * H * W);
    for (int64_t i = 0; features && i < a.n;) {
        int64_t e = i;
        while (e < a.n && a.frame[e] == a.frame[i]) e++;
        st = tmd_reader_read(&ctx, rd, a.frame[i], 0, 0, H, W, img);
        if (!st) st = tmd_features_compute(&ctx, &enc, img, 0, 0, H, W, e - i, a.x + i, a.y + i, a.latent + i * enc.dim);
        if (st) MPI_Abort(comm, 1);
        i = e;
    }
    t[1] = MPI_Wtime() - c0;
    cpu[1] = cpu_now() - u0;
    /* track, instability, density */
    MPI_Barrier(comm);
    c0 = MPI_Wtime();
    u0 = cpu_now();
    tmd_track_basis b;
    double v1[2] = {a1[0], a1[1]}, v2[2] = {a2[0], a2[1]}; /* as the run's track stage: the median over the frames */
    if (!getenv("DYN_BENCH_A_FRAME0")) tmd_track_median_vectors(a1, a2, T, v1, v2);
    if (ctx.rank == 0) printf("  track: start vectors (%.2f, %.2f) (%.2f, %.2f), frame 0 (%.2f, %.2f) (%.2f, %.2f)\n", v1[0], v1[1], v2[0], v2[1], a1[0], a1[1], a2[0], a2[1]);
    if (basis0) st = tmd_track_basis_fit(&ctx, comm, &a, v1, v2, &b);
    else st = tmd_track_basis_fit_stack(&ctx, comm, &a, v1, v2, drift, T, &b);
    if (!st) st = tmd_track_assign(&ctx, &b, drift, T, 0.45, &a);
    if (!st) {
        int64_t on[2] = {0, a.n};
        for (int64_t q = 0; q < a.n; q++) on[0] += a.site[q] >= 0;
        MPI_Allreduce(MPI_IN_PLACE, on, 2, MPI_INT64_T, MPI_SUM, comm);
        if (ctx.rank == 0)
            printf("  track: %lld of %lld atoms on lattice sites (basis from %lld atoms, rms %.2f px; a1 (%.4f, %.4f) a2 (%.4f, %.4f) origin (%.2f, %.2f) c %.3f)\n", (long long)on[0],
                   (long long)on[1], (long long)b.n_fit, b.rms_px, b.a1[0], b.a1[1], b.a2[0], b.a2[1], b.origin[0], b.origin[1], b.c);
        if (dump_track && ctx.nranks == 1) { /* frame, atoms, atoms on sites, mean residual x, y of those on sites */
            FILE *ft = fopen(dump_track, "w");
            for (int64_t q = 0; ft && q < a.n;) {
                int64_t e = q, non = 0;
                double rx = 0, ry = 0;
                while (e < a.n && a.frame[e] == a.frame[q]) {
                    if (a.site[e] >= 0) {
                        double sx, sy;
                        tmd_track_site_xy(&b, a.site[e], &sx, &sy);
                        rx += a.x[e] - drift[2 * a.frame[e]] - sx;
                        ry += a.y[e] - drift[2 * a.frame[e] + 1] - sy;
                        non++;
                    }
                    e++;
                }
                fprintf(ft, "%d %lld %lld %.3f %.3f\n", a.frame[q], (long long)(e - q), (long long)non, non ? rx / non : 0,
                        non ? ry / non : 0);
                q = e;
            }
            if (ft) fclose(ft);
        }
    }
    t[2] = MPI_Wtime() - c0;
    cpu[2] = cpu_now() - u0;
    tmd_config cfg;
    tmd_config_defaults(&cfg);
    tmd_dyn_params prm;
    tmd_dyn_params_from_config(&prm, &cfg, px);
    if (no_blend) prm.nb_frames = 0;
    if (nb_radius >= 0) prm.nb_radius = nb_radius;
    if (nb_frames >= 0) prm.nb_frames = nb_frames;
    tmd_site_table s;
    tmd_site_table_init(&s);
    c0 = MPI_Wtime();
    u0 = cpu_now();
    if (!st) st = tmd_dynamics_sites(&ctx, comm, &b, drift, T, H, W, &a, &df, &prm, &s);
    t[3] = MPI_Wtime() - c0;
    cpu[3] = cpu_now() - u0;
    tmd_dyn_maps maps;
    c0 = MPI_Wtime();
    u0 = cpu_now();
    if (!st) st = tmd_dynamics_maps(&ctx, comm, &prm, H, W, T, &s, &df, drift, &maps);
    t[4] = MPI_Wtime() - c0;
    cpu[4] = cpu_now() - u0;
    if (st) {
        fprintf(stderr, "dyn_bench: %s\n", ctx.err_msg);
        MPI_Abort(comm, 1);
    }
    double tmax[6], cmax[6];
    MPI_Reduce(t, tmax, 5, MPI_DOUBLE, MPI_MAX, 0, comm);
    MPI_Reduce(cpu, cmax, 5, MPI_DOUBLE, MPI_MAX, 0, comm);
    /* scores to rank 0, matched to the truth sites by position */
    int mine = (int)s.n, *cnt = calloc(ctx.nranks, sizeof(int)), *dis = calloc(ctx.nranks, sizeof(int));
    MPI_Gather(&mine, 1, MPI_INT, cnt, 1, MPI_INT, 0, comm);
    int tot = 0;
    for (int r = 0; r < ctx.nranks; r++) { dis[r] = tot; tot += cnt[r]; }
    double *buf = malloc(sizeof(double) * 3 * (s.n + 1)), *all = malloc(sizeof(double) * 3 * (tot + 1));
    for (int64_t i = 0; i < s.n; i++) { buf[3 * i] = s.x[i]; buf[3 * i + 1] = s.y[i]; buf[3 * i + 2] = s.instability[i]; }
    for (int r = 0; r < ctx.nranks; r++) { cnt[r] *= 3; dis[r] *= 3; }
    MPI_Gatherv(buf, 3 * mine, MPI_DOUBLE, all, cnt, dis, MPI_DOUBLE, 0, comm);
    if (ctx.rank == 0) {
        int64_t ns;
        double *tx = col(&ctx, f, "/sites/x", TMD_F64, &ns, &k), *ty = col(&ctx, f, "/sites/y", TMD_F64, &ns, &k);
        int8_t *dyn = col(&ctx, f, "/sites/dynamic", TMD_I8, &ns, &k);
        double *score = calloc(ns, sizeof(double));
        int8_t *found = calloc(ns, 1), *inview = calloc(ns, 1);
        /* a grid of the found sites for the matching */
        for (int64_t i = 0; i < ns; i++) {
            double bd = 0.25 * b.bond * b.bond;
            for (int q = 0; q < tot; q++) {
                double d = pow(all[3 * q] - tx[i], 2) + pow(all[3 * q + 1] - ty[i], 2);
                if (d < bd) { bd = d; score[i] = all[3 * q + 2]; found[i] = 1; }
            }
            int in = found[i];
            for (int64_t q = 0; q < T && in; q++) {
                double fx = tx[i] + tdrift[2 * q], fy = ty[i] + tdrift[2 * q + 1];
                in = fx >= b.bond && fy >= b.bond && fx <= W - 1 - b.bond && fy <= H - 1 - b.bond;
            }
            inview[i] = (int8_t)in;
        }
        if (dump) {
            /* per truth site: position, dynamic, found, score, frames in view (one bond inside),
             * state changes between consecutive in-view frames and over all frames */
            int64_t nst, T2;
            int8_t *tstate = col(&ctx, f, "/sites/state", TMD_I8, &nst, &T2);
            FILE *fo = fopen(dump, "w");
            for (int64_t i = 0; fo && i < ns; i++) {
                int nin = 0, cin = 0, call = 0, prev = -1;
                for (int64_t q = 0; q < T; q++) {
                    double fx = tx[i] + tdrift[2 * q], fy = ty[i] + tdrift[2 * q + 1];
                    int in = fx >= 0.2 * b.bond && fy >= 0.2 * b.bond && fx <= W - 1 - 0.2 * b.bond && fy <= H - 1 - 0.2 * b.bond;
                    if (q > 0 && tstate[i * T + q] != tstate[i * T + q - 1]) call++;
                    if (in) {
                        if (prev >= 0 && tstate[i * T + q] != prev) cin++;
                        prev = tstate[i * T + q];
                        nin++;
                    }
                }
                fprintf(fo, "%.1f %.1f %d %d %.3f %d %d %d\n", tx[i], ty[i], dyn[i], found[i], score[i], nin, cin, call);
            }
            if (fo) fclose(fo);
            free(tstate);
        }
        /* observable truth as `tmdflow score` (docs/score.md): truth sites inside frame 0 less a
         * border of a/2, matched to the nearest found site within a/4, dynamic if (state, jump)
         * differs between two frames in which the site is in view (same border, true drift) */
        double oauc = NAN;
        int64_t opos = 0, on = 0;
        {
            double la = 0;
            tmd_h5_read_attr_f64(&ctx, f, "/", "lattice_a", &la, 1);
            int64_t nst, T2, nj = 0, Tj = 0;
            int8_t *tst = col(&ctx, f, "/sites/state", TMD_I8, &nst, &T2), *tj = NULL;
            if (tmd_h5_exists(f, "/sites/jump")) tj = col(&ctx, f, "/sites/jump", TMD_I8, &nj, &Tj);
            double bd = px > 0 ? la / 2 / px : 0, mr = px > 0 ? la / 4 / px : 0;
            double *osc = calloc(ns + 1, sizeof(double));
            int8_t *olab = calloc(ns + 1, 1), *ouse = calloc(ns + 1, 1);
#define INSIDE(x, y) ((x) >= bd - 0.5 && (y) >= bd - 0.5 && (x) <= W - 0.5 - bd && (y) <= H - 0.5 - bd)
            for (int64_t i = 0; i < ns && la > 0 && T2 == T; i++) {
                if (!INSIDE(tx[i], ty[i])) continue;
                double best = mr * mr;
                int q0 = -1;
                for (int q = 0; q < tot; q++) {
                    double d = pow(all[3 * q] - tx[i], 2) + pow(all[3 * q + 1] - ty[i], 2);
                    if (d <= best) { best = d; q0 = q; }
                }
                if (q0 < 0) continue;
                int seen = 0, s0 = 0, j0 = 0, obs = 0;
                for (int64_t q = 0; q < T && !obs; q++) {
                    if (!INSIDE(tx[i] + tdrift[2 * q], ty[i] + tdrift[2 * q + 1])) continue;
                    int sp = tst[i * T + q], jj = tj && Tj == T ? tj[i * T + q] : 0;
                    if (!seen) { seen = 1; s0 = sp; j0 = jj; }
                    else if (sp != s0 || jj != j0) obs = 1;
                }
#undef INSIDE
                osc[i] = all[3 * q0 + 2];
                olab[i] = (int8_t)obs;
                ouse[i] = 1;
                opos += obs;
                on++;
            }
            oauc = auc((int)ns, osc, olab, ouse);
            free(osc); free(olab); free(ouse); free(tst); free(tj);
        }
        double total = tmax[0] + tmax[1] + tmax[2] + tmax[3] + tmax[4];
        printf("dyn_bench %s: %lld frames of %lldx%lld, %d ranks, %lld atoms (%s), %d sites\n", argv[1], (long long)T,
               (long long)H, (long long)W, ctx.nranks, (long long)na, atoms_from ? atoms_from : "simulator's", tot);
        const char *names[5] = {"drift", "features", "track", "instability", "density"};
        double ctot = 0;
        printf("  %-12s %10s %12s %10s %12s\n", "stage", "wall_s", "frames/s", "cpu_s", "frames/cpu_s");
        for (int i = 0; i < 5; i++) {
            ctot += cmax[i];
            printf("  %-12s %10.3f %12.1f %10.3f %12.1f\n", names[i], tmax[i], tmax[i] > 0 ? T / tmax[i] : 0, cmax[i],
                   cmax[i] > 0 ? T / cmax[i] : 0);
        }
        printf("  %-12s %10.3f %12.1f %10.3f %12.1f\n", "total", total, T / total, ctot, T / ctot);
        printf("  drift RMSE %.4f px\n", sqrt(se / T));
        printf("  instability AUC %.4f (all %lld truth sites), %.4f (in view in every frame)\n", auc((int)ns, score, dyn, found),
               (long long)ns, auc((int)ns, score, dyn, inview));
        printf("  observable AUC %.4f (%lld positives of %lld sites; as tmdflow score)\n", oauc, (long long)opos, (long long)on);
        printf("CSV,%lld,%lld,%d,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.4f,%.4f,%.4f\n", (long long)T, (long long)H, ctx.nranks,
               tmax[0], tmax[1], tmax[2], tmax[3], tmax[4], ctot, sqrt(se / T), auc((int)ns, score, dyn, found), auc((int)ns, score, dyn, inview));
    }
    H5Fclose(f);
    tmd_reader_close(&rd);
    MPI_Finalize();
    return 0;
}
