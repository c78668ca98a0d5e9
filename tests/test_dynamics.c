/* Dynamics: patch extraction feeds the encoder the right pixels; the instability score
 * separates synthetic dynamic sites (flickering occupancy, species swaps, feature jumps) from
 * static ones (ROC AUC >= 0.95) and is bit-identical on 1, 2 and 4 ranks; density maps are
 * the same (so seamless) whatever the row blocks, and regions are found where unstable sites
 * crowd, merged across rank edges. */
/* TMD_TEST_RANKS: 1 2 4 */
/* TMD_TEST_TIMEOUT: 120 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "tmd/dynamics.h"
#include "tmd/nn.h"

/* ---- features ------------------------------------------------------------------------- */

static tmd_status copy_encoder(tmd_ctx *ctx, void *user, int n, const float *patches, float *latent)
{
    (void)ctx;
    int P = *(int *)user;
    memcpy(latent, patches, sizeof(float) * n * P * P);
    return TMD_OK;
}

/* On a linear ramp image bilinear sampling is exact: the patch of an atom at (x, y) holds
 * x + dx + 1000 (y + dy) at each sample offset (dx, dy) = (c - (P-1)/2) * step. */
static void test_patches(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    const int64_t y0 = 40, x0 = 30, h = 60, w = 70;
    float *img = malloc(sizeof(float) * h * w);
    for (int64_t y = 0; y < h; y++)
        for (int64_t x = 0; x < w; x++) img[y * w + x] = (float)((x + x0) + 1000.0 * (y + y0));
    int P = 5;
    tmd_encoder enc = {.patch = P, .dim = P * P, .batch = 2, .step_px = 1.5, .fn = copy_encoder, .user = &P};
    double xs[3] = {60.25, 70.0, 80.5}, ys[3] = {70.5, 65.75, 80.0};
    float lat[3 * 25];
    CU_ASSERT_EQUAL(tmd_features_compute(&ctx, &enc, img, y0, x0, h, w, 3, xs, ys, lat), TMD_OK);
    int ok = 1;
    for (int k = 0; k < 3; k++)
        for (int r = 0; r < P; r++)
            for (int c = 0; c < P; c++) {
                double e = xs[k] + (c - 2) * 1.5 + 1000.0 * (ys[k] + (r - 2) * 1.5);
                if (fabs(lat[k * 25 + r * P + c] - e) > 0.05 * 1000) ok = 0;
            }
    CU_ASSERT(ok);
    /* the descriptor: a centred Gaussian has zero centroid offset, a shifted one does not */
    tmd_encoder d;
    tmd_encoder_descriptor(16, 4, 1.0, &d);
    CU_ASSERT_EQUAL(d.dim, 6);
    for (int64_t y = 0; y < h; y++)
        for (int64_t x = 0; x < w; x++) {
            double r2 = (x + x0 - 65.0) * (x + x0 - 65.0) + (y + y0 - 70.0) * (y + y0 - 70.0);
            img[y * w + x] = (float)exp(-r2 / 18.0);
        }
    double px[2] = {65.0, 67.0}, py[2] = {70.0, 70.0};
    float z[12];
    CU_ASSERT_EQUAL(tmd_features_compute(&ctx, &d, img, y0, x0, h, w, 2, px, py, z), TMD_OK);
    CU_ASSERT(fabs(z[4]) < 1e-3 && fabs(z[5]) < 1e-3);
    CU_ASSERT(z[6 + 4] < -0.05); /* centre 2 px to the right of the atom: the atom is to the left */
    CU_ASSERT(z[0] > z[3]);      /* bright core, dark rim */
    tmd_encoder_free(&d);
    tmd_encoder_free(&d); /* twice is fine */
    free(img);
}

/* The encoder of an autoencoder model (built here untrained: the shipped one is trained by
 * tmdflow train) maps patches to its latent layer: the right size, deterministic, and
 * different patches give different latents. */
static void test_model_encoder(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    tmd_nn_model *m = NULL;
    CU_ASSERT_EQUAL_FATAL(tmd_nn_build_autoencoder(&ctx, 16, 4, 6, 7, &m), TMD_OK);
    tmd_encoder enc;
    CU_ASSERT_EQUAL_FATAL(tmd_encoder_from_model(&ctx, m, 3, 1.0, &enc), TMD_OK);
    CU_ASSERT_EQUAL(enc.dim, 6);
    CU_ASSERT_EQUAL(enc.patch, 16);
    const int64_t h = 64, w = 64;
    float *img = malloc(sizeof(float) * h * w);
    unsigned rng = 5;
    for (int64_t i = 0; i < h * w; i++) img[i] = tmd_test_randf(&rng);
    double xs[5] = {20, 30, 40, 20, 33.5}, ys[5] = {20, 30, 40, 20, 25.25};
    float z[5 * 6], z2[5 * 6];
    CU_ASSERT_EQUAL(tmd_features_compute(&ctx, &enc, img, 0, 0, h, w, 5, xs, ys, z), TMD_OK);   /* 2 batches */
    CU_ASSERT_EQUAL(tmd_features_compute(&ctx, &enc, img, 0, 0, h, w, 5, xs, ys, z2), TMD_OK);
    CU_ASSERT_EQUAL(memcmp(z, z2, sizeof z), 0);
    CU_ASSERT_EQUAL(memcmp(z, z + 3 * 6, 6 * sizeof(float)), 0); /* same patch, same latent */
    double diff = 0;
    for (int d = 0; d < 6; d++) diff += fabs(z[d] - z[6 + d]);
    CU_ASSERT(diff > 1e-6);
    /* a classifier has no latent layer: refused with a message */
    tmd_nn_model *c = NULL;
    tmd_encoder e2;
    CU_ASSERT_EQUAL_FATAL(tmd_nn_build_classifier(&ctx, 16, 4, 8, 1, &c), TMD_OK);
    CU_ASSERT_EQUAL(tmd_encoder_from_model(&ctx, c, 1, 1.0, &e2), TMD_ERR_FORMAT);
    tmd_nn_model_free(&c);
    tmd_encoder_free(&enc);
    tmd_nn_model_free(&m);
    free(img);
}

/* ---- a synthetic tracked stack -------------------------------------------------------- */

#define NT 30
#define IMG 400

typedef struct {
    tmd_track_basis b;
    double drift[2 * NT];
    tmd_atom_table atoms;
    tmd_defect_table defects;
} synth;

static int edge_disc; /* a third dynamic disc across the left edge (sites entering the view) */

static int is_dynamic(double x, double y)
{
    return hypot(x - 120, y - 130) < 45 || hypot(x - 290, y - 250) < 35 || (edge_disc && hypot(x + 5, y - 300) < 45);
}

/* Sites of a honeycomb; dynamic sites (two discs) flicker, swap species and change their
 * features; every site's observations go to rank (counter % nranks) to mimic any split. */
static void make_synth(tmd_ctx *ctx, synth *s, int rank, int nranks)
{
    memset(s, 0, sizeof *s);
    double a = 24.0;
    s->b.a1[0] = a;
    s->b.a2[0] = a / 2;
    s->b.a2[1] = a * sqrt(3) / 2;
    s->b.origin[0] = 5;
    s->b.origin[1] = 3;
    s->b.c = 1.0 / 3;
    s->b.bond = a / sqrt(3);
    for (int t = 0; t < NT; t++) {
        s->drift[2 * t] = 0.8 * t;
        s->drift[2 * t + 1] = 0.5 * t;
    }
    tmd_atom_table_init(&s->atoms, 1);
    tmd_atom_table_set_latent(ctx, &s->atoms, 3);
    tmd_defect_table_init(&s->defects);
    unsigned rng = 7;
    int64_t counter = 0;
    for (int i = -25; i <= 25; i++)
        for (int j = -25; j <= 25; j++)
            for (int sub = 1; sub <= 2; sub++) {
                int64_t id = tmd_site_pack(i, j, sub);
                double x, y;
                tmd_track_site_xy(&s->b, id, &x, &y);
                if (x < (edge_disc ? -30 : 0) || y < 0 || x >= IMG || y >= IMG) continue;
                /* disc 1 flickers; disc 2 changes once, for good (a sputtered or exchanged atom) */
                int dyn = is_dynamic(x, y), lasting = dyn && hypot(x - 290, y - 250) < 35;
                int species = sub == 1 ? TMD_SP_MO : TMD_SP_S2;
                int t_change = 5 + (int)(tmd_test_randf(&rng) * 20);
                for (int t = 0; t < NT; t++) {
                    float r = tmd_test_randf(&rng), r2 = tmd_test_randf(&rng), r3 = tmd_test_randf(&rng);
                    double fx = x + s->drift[2 * t], fy = y + s->drift[2 * t + 1];
                    if (fx < 0) continue; /* not yet in the field of view */
                    int present = dyn && !lasting ? r < 0.6f : r < 0.985f;
                    int owner = (int)(counter++ % nranks);
                    if (!present) {
                        if (owner == rank) tmd_defect_table_push(ctx, &s->defects, t, fx, fy, sub == 1 ? TMD_DEF_VM : TMD_DEF_VX2);
                        continue;
                    }
                    if (owner != rank) continue;
                    int64_t k;
                    tmd_atom_table_push(ctx, &s->atoms, &k);
                    s->atoms.frame[k] = t;
                    s->atoms.x[k] = fx + (r2 - 0.5) * (dyn && !lasting ? 2.0 : 0.6);
                    s->atoms.y[k] = fy + (r3 - 0.5) * (dyn && !lasting ? 2.0 : 0.6);
                    s->atoms.sublattice[k] = (int8_t)sub;
                    int sp = species;
                    if (lasting) {
                        if (t >= t_change) sp = sub == 1 ? TMD_SP_W : TMD_SP_S;
                    } else if (dyn && r2 < 0.3f) sp = sub == 1 ? TMD_SP_W : TMD_SP_SSE;
                    if (!dyn && r2 < 0.01f) sp = sub == 1 ? TMD_SP_W : TMD_SP_SSE; /* misclassification */
                    s->atoms.species[k] = (int8_t)sp;
                    /* column intensity: the lasting change dims the column (S2 -> S, W -> Mo) */
                    s->atoms.intensity[k] = (float)((sub == 1 ? 1.0 : 0.5) * (lasting && t >= t_change ? 0.6 : 1.0) *
                                                    (1 + 0.05 * (r3 - 0.5)));
                    float *z = s->atoms.latent + k * 3;
                    z[0] = (float)(sub + 0.1 * (r3 - 0.5) + (dyn && !lasting ? 0.8 * (r - 0.3) : 0));
                    z[1] = (float)(sp * 0.2 + 0.05 * r2);
                    z[2] = (float)(0.1 * r);
                }
            }
    tmd_track_assign(ctx, &s->b, s->drift, NT, 0.45, &s->atoms);
}

static void free_synth(synth *s)
{
    tmd_atom_table_free(&s->atoms);
    tmd_defect_table_free(&s->defects);
}

static double auc(const tmd_site_table *t)
{
    /* Mann-Whitney by pairs (small tables) */
    double win = 0, np = 0, nn = 0;
    for (int64_t i = 0; i < t->n; i++) {
        if (!is_dynamic(t->x[i], t->y[i])) continue;
        np++;
        for (int64_t j = 0; j < t->n; j++) {
            if (is_dynamic(t->x[j], t->y[j])) continue;
            win += t->instability[i] > t->instability[j] ? 1 : t->instability[i] == t->instability[j] ? 0.5 : 0;
        }
    }
    for (int64_t j = 0; j < t->n; j++) nn += !is_dynamic(t->x[j], t->y[j]);
    return np > 0 && nn > 0 ? win / (np * nn) : 0;
}

static void test_instability_auc_and_rank_invariance(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    synth par, ser;
    make_synth(&ctx, &par, tmd_test_rank, tmd_test_size);
    make_synth(&ctx, &ser, 0, 1);
    tmd_config cfg;
    tmd_config_defaults(&cfg);
    tmd_dyn_params prm;
    tmd_dyn_params_from_config(&prm, &cfg, 0.1);
    tmd_site_table sp, ss;
    tmd_site_table_init(&sp);
    tmd_site_table_init(&ss);
    CU_ASSERT_EQUAL_FATAL(tmd_dynamics_sites(&ctx, tmd_test_comm, &par.b, par.drift, NT, IMG, IMG, &par.atoms,
                                             &par.defects, &prm, &sp), TMD_OK);
    CU_ASSERT_EQUAL_FATAL(tmd_dynamics_sites(&ctx, MPI_COMM_SELF, &ser.b, ser.drift, NT, IMG, IMG, &ser.atoms,
                                             &ser.defects, &prm, &ss), TMD_OK);
    double A = auc(&ss);
    if (tmd_test_rank == 0 && getenv("TMDFLOW_TEST_DEBUG")) printf("\nAUC %.4f over %lld sites\n", A, (long long)ss.n);
    CU_ASSERT(A >= 0.95);
    /* this rank's sites are a consecutive, sorted run of the one-rank table, bit for bit */
    int64_t k0 = -1;
    for (int64_t k = 0; k < ss.n && sp.n > 0; k++)
        if (ss.id[k] == sp.id[0]) { k0 = k; break; }
    int same = sp.n == 0 || k0 >= 0;
    for (int64_t k = 0; same && k < sp.n; k++) {
        if (k0 + k >= ss.n) { same = 0; break; }
        same = ss.id[k0 + k] == sp.id[k] && ss.instability[k0 + k] == sp.instability[k] &&
               ss.x[k0 + k] == sp.x[k] && ss.unstable[k0 + k] == sp.unstable[k] && ss.sublattice[k0 + k] == sp.sublattice[k];
        if (k > 0 && sp.id[k] <= sp.id[k - 1]) same = 0;
    }
    CU_ASSERT(same);
    long long total = sp.n, all = 0;
    MPI_Allreduce(&total, &all, 1, MPI_LONG_LONG, MPI_SUM, tmd_test_comm);
    CU_ASSERT_EQUAL(all, ss.n);
    /* the threshold alone can be re-applied */
    tmd_dynamics_threshold(&ss, 1e9);
    int none = 1;
    for (int64_t k = 0; k < ss.n; k++) none &= !ss.unstable[k];
    CU_ASSERT(none);
    tmd_site_table_free(&sp);
    tmd_site_table_free(&ss);
    free_synth(&par);
    free_synth(&ser);
}

/* Frames (of NT) in which a frame-0 position is inside the synthetic field of view. */
static int frames_in_view(const synth *s, double x, double y)
{
    int n = 0;
    for (int t = 0; t < NT; t++) {
        double fx = x + s->drift[2 * t], fy = y + s->drift[2 * t + 1];
        n += fx >= 0 && fy >= 0 && fx <= IMG - 1 && fy <= IMG - 1;
    }
    return n;
}

/* Sites that the drifting field shows in only part of the frames (a dynamic disc across the
 * left edge: its sites enter the view during the stack) are ranked better with the neighbour
 * blend than without it (nb_frames = 0), and the blend keeps the well-seen sites ranked. */
static void test_neighbour_blend(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    edge_disc = 1;
    synth sy;
    make_synth(&ctx, &sy, 0, 1);
    tmd_config cfg;
    tmd_config_defaults(&cfg);
    tmd_dyn_params prm, off;
    tmd_dyn_params_from_config(&prm, &cfg, 0.1);
    off = prm;
    off.nb_frames = 0;
    CU_ASSERT(prm.nb_frames > 0);
    tmd_site_table a, b;
    tmd_site_table_init(&a);
    tmd_site_table_init(&b);
    CU_ASSERT_EQUAL_FATAL(tmd_dynamics_sites(&ctx, MPI_COMM_SELF, &sy.b, sy.drift, NT, IMG, IMG, &sy.atoms, &sy.defects, &prm, &a), TMD_OK);
    CU_ASSERT_EQUAL_FATAL(tmd_dynamics_sites(&ctx, MPI_COMM_SELF, &sy.b, sy.drift, NT, IMG, IMG, &sy.atoms, &sy.defects, &off, &b), TMD_OK);
    CU_ASSERT_EQUAL_FATAL(a.n, b.n);
    /* AUC over the partly seen sites (in view in 1 to NT - 1 frames) */
    double auc_p[2], auc_all[2];
    for (int v = 0; v < 2; v++) {
        const tmd_site_table *t = v == 0 ? &a : &b;
        double win = 0, np = 0, nn = 0;
        for (int64_t i = 0; i < t->n; i++) {
            int ni = frames_in_view(&sy, t->x[i], t->y[i]);
            if (ni < 1 || ni > NT - 1 || !is_dynamic(t->x[i], t->y[i])) continue;
            np++;
            for (int64_t j = 0; j < t->n; j++) {
                int nj = frames_in_view(&sy, t->x[j], t->y[j]);
                if (nj < 1 || nj > NT - 1 || is_dynamic(t->x[j], t->y[j])) continue;
                win += t->instability[i] > t->instability[j] ? 1 : t->instability[i] == t->instability[j] ? 0.5 : 0;
            }
        }
        for (int64_t j = 0; j < t->n; j++) {
            int nj = frames_in_view(&sy, t->x[j], t->y[j]);
            nn += nj >= 1 && nj <= NT - 1 && !is_dynamic(t->x[j], t->y[j]);
        }
        auc_p[v] = np > 0 && nn > 0 ? win / (np * nn) : 0;
        auc_all[v] = auc(t);
        CU_ASSERT(np >= 5 && nn >= 5);
    }
    if (tmd_test_rank == 0 && getenv("TMDFLOW_TEST_DEBUG"))
        printf("\npartly seen AUC %.4f (blend) %.4f (none); all %.4f %.4f\n", auc_p[0], auc_p[1], auc_all[0], auc_all[1]);
    CU_ASSERT(auc_p[0] > auc_p[1]);
    CU_ASSERT(auc_all[0] >= 0.95);
    tmd_site_table_free(&a);
    tmd_site_table_free(&b);
    free_synth(&sy);
    edge_disc = 0;
}

/* Rows of this rank's block gathered into the whole (gh, gw) map on every rank. */
static float *gather_map(const tmd_dyn_maps *m, const float *block)
{
    return tmd_test_allgather_floats(block, (int)(m->rows * m->gw));
}

static void test_maps_and_regions(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    synth par, ser;
    make_synth(&ctx, &par, tmd_test_rank, tmd_test_size);
    make_synth(&ctx, &ser, 0, 1);
    tmd_config cfg;
    tmd_config_defaults(&cfg);
    tmd_dyn_params prm;
    tmd_dyn_params_from_config(&prm, &cfg, 0.1);
    prm.bin_px = 10;
    prm.sigma_px = 12;
    prm.region_threshold = 0.5;
    tmd_site_table sp, ss;
    tmd_site_table_init(&sp);
    tmd_site_table_init(&ss);
    CU_ASSERT_EQUAL_FATAL(tmd_dynamics_sites(&ctx, tmd_test_comm, &par.b, par.drift, NT, IMG, IMG, &par.atoms,
                                             &par.defects, &prm, &sp), TMD_OK);
    CU_ASSERT_EQUAL_FATAL(tmd_dynamics_sites(&ctx, MPI_COMM_SELF, &ser.b, ser.drift, NT, IMG, IMG, &ser.atoms,
                                             &ser.defects, &prm, &ss), TMD_OK);
    tmd_dyn_maps mp, ms;
    CU_ASSERT_EQUAL_FATAL(tmd_dynamics_maps(&ctx, tmd_test_comm, &prm, IMG, IMG, NT, &sp, &par.defects, par.drift, &mp), TMD_OK);
    CU_ASSERT_EQUAL_FATAL(tmd_dynamics_maps(&ctx, MPI_COMM_SELF, &prm, IMG, IMG, NT, &ss, &ser.defects, ser.drift, &ms), TMD_OK);
    CU_ASSERT_EQUAL(mp.gh, 40);
    CU_ASSERT_EQUAL(mp.gw, 40);
    /* the gathered row blocks equal the one-rank map exactly: no seams at block edges */
    float *u = gather_map(&mp, mp.unstable);
    int same = 1;
    for (int64_t i = 0; i < ms.gh * ms.gw; i++) same &= u[i] == ms.unstable[i];
    CU_ASSERT(same);
    free(u);
    /* vacancy maps: layer by layer */
    for (int l = 0; l < 3; l++) {
        float *blk = malloc(sizeof(float) * (mp.rows * mp.gw + 1));
        memcpy(blk, mp.vacancy + l * mp.rows * mp.gw, sizeof(float) * mp.rows * mp.gw);
        float *v = gather_map(&mp, blk);
        int ok = 1;
        for (int64_t i = 0; i < ms.gh * ms.gw; i++) ok &= v[i] == ms.vacancy[l * ms.gh * ms.gw + i];
        CU_ASSERT(ok);
        free(v);
        free(blk);
    }
    /* two crowded discs -> two regions near their centres, identical on every rank count */
    const tmd_dyn_region_list *R = &ms.regions;
    if (tmd_test_rank == 0 && getenv("TMDFLOW_TEST_DEBUG"))
        for (int64_t r = 0; r < R->n; r++)
            printf("\nregion %lld at (%.1f, %.1f) area %.0f px sites %lld", (long long)R->id[r], R->x[r], R->y[r],
                   R->area_px[r], (long long)R->n_sites[r]);
    CU_ASSERT_EQUAL(R->n, 2);
    int found1 = 0, found2 = 0;
    for (int64_t r = 0; r < R->n; r++) {
        if (hypot(R->x[r] - 120, R->y[r] - 130) < 15) found1 = 1;
        if (hypot(R->x[r] - 290, R->y[r] - 250) < 15) found2 = 1;
        CU_ASSERT(R->n_sites[r] > 5);
    }
    CU_ASSERT(found1 && found2);
    CU_ASSERT_EQUAL(mp.regions.n, R->n);
    for (int64_t r = 0; r < R->n && r < mp.regions.n; r++) {
        CU_ASSERT_EQUAL(mp.regions.x[r], R->x[r]);
        CU_ASSERT_EQUAL(mp.regions.y[r], R->y[r]);
        CU_ASSERT_EQUAL(mp.regions.area_px[r], R->area_px[r]);
        CU_ASSERT_EQUAL(mp.regions.n_sites[r], R->n_sites[r]);
    }
    tmd_dyn_maps_free(&mp);
    tmd_dyn_maps_free(&ms);
    tmd_site_table_free(&sp);
    tmd_site_table_free(&ss);
    free_synth(&par);
    free_synth(&ser);
}

/* A region that crosses every row-block edge is one region (union-find across ranks). */
static void test_region_across_ranks(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    tmd_site_table s;
    tmd_site_table_init(&s);
    /* a vertical band of unstable sites from top to bottom, split over ranks by row */
    for (int k = 0; k < 200; k++) {
        if (k % tmd_test_size != tmd_test_rank) continue;
        int64_t r;
        tmd_site_table_push(&ctx, &s, &r);
        s.id[r] = k;
        s.x[r] = 100 + (k % 3) * 4;
        s.y[r] = 2.0 * k;
        s.unstable[r] = 1;
    }
    tmd_dyn_params prm = {.bin_px = 8, .sigma_px = 6, .pixel_size = 0.1, .region_threshold = 1.0, .min_region_bins = 2};
    tmd_dyn_maps m;
    CU_ASSERT_EQUAL_FATAL(tmd_dynamics_maps(&ctx, tmd_test_comm, &prm, 400, 300, 1, &s, NULL, NULL, &m), TMD_OK);
    CU_ASSERT_EQUAL(m.regions.n, 1);
    if (m.regions.n == 1) {
        CU_ASSERT_EQUAL(m.regions.n_sites[0], 200);
        CU_ASSERT(fabs(m.regions.y[0] - 200) < 10);
    }
    tmd_dyn_maps_free(&m);
    tmd_site_table_free(&s);
}

/* Single images (no sites): regions are where the vacancy density reaches twice the image's
 * mean: a cluster of vacancies over a sparse uniform background is one region, found the
 * same on any number of ranks. */
static void test_single_image_vacancy_regions(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    tmd_defect_table d;
    tmd_defect_table_init(&d);
    unsigned rng = 3;
    int64_t counter = 0;
    /* A dense enough background (about 50 vacancies under the kernel's footprint) that its
     * Poisson fluctuations stay far below twice the mean, whatever the compiler's rounding. */
    for (int k = 0; k < 2000; k++) {
        double x = 500 * tmd_test_randf(&rng), y = 400 * tmd_test_randf(&rng);
        if (counter++ % tmd_test_size == tmd_test_rank) tmd_defect_table_push(&ctx, &d, 0, x, y, TMD_DEF_VX);
    }
    for (int k = 0; k < 150; k++) {
        double r = 30 * sqrt(tmd_test_randf(&rng)), a = 2 * M_PI * tmd_test_randf(&rng);
        if (counter++ % tmd_test_size == tmd_test_rank)
            tmd_defect_table_push(&ctx, &d, 0, 320 + r * cos(a), 150 + r * sin(a), TMD_DEF_VM);
    }
    tmd_dyn_params prm = {.bin_px = 10, .sigma_px = 20, .pixel_size = 0.1, .region_threshold = 0.01, .min_region_bins = 4};
    tmd_dyn_maps m;
    CU_ASSERT_EQUAL_FATAL(tmd_dynamics_maps(&ctx, tmd_test_comm, &prm, 400, 500, 1, NULL, &d, NULL, &m), TMD_OK);
    if (tmd_test_rank == 0 && getenv("TMDFLOW_TEST_DEBUG"))
        for (int64_t r = 0; r < m.regions.n; r++)
            printf("\nvacancy region at (%.1f, %.1f) area %.0f", m.regions.x[r], m.regions.y[r], m.regions.area_px[r]);
    CU_ASSERT_EQUAL(m.regions.n, 1);
    if (m.regions.n == 1) CU_ASSERT(hypot(m.regions.x[0] - 320, m.regions.y[0] - 150) < 10);
    tmd_dyn_maps_free(&m);
    tmd_defect_table_free(&d);
}

int main(int argc, char **argv)
{
    return tmd_test_main(argc, argv, "dynamics",
                         (tmd_test_case[]){{"patches and descriptor", test_patches},
                                           {"autoencoder encoder", test_model_encoder},
                                           {"instability AUC, rank invariance", test_instability_auc_and_rank_invariance},
                                           {"neighbour blend", test_neighbour_blend},
                                           {"maps and regions", test_maps_and_regions},
                                           {"region across ranks", test_region_across_ranks},
                                           {"single-image vacancy regions", test_single_image_vacancy_regions},
                                           {0}});
}
