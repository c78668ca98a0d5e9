/* Sweep: a result file with cached sites, vacancies and drift is swept over a product of
 * settings; every setting equals a separate run of the instability threshold, density and
 * region stages at that setting (on 1, 2 and 4 ranks); bad parameters are refused. */
/* TMD_TEST_RANKS: 1 2 4 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "tmd/io.h"
#include "tmd/sweep.h"

#define NT 20
#define IMG 320

static int hot(double x, double y) { return hypot(x - 100, y - 110) < 40 || hypot(x - 240, y - 220) < 30; }

/* A tracked synthetic stack (every rank holds every nranks-th observation). */
static void make(tmd_ctx *ctx, tmd_track_basis *b, double *drift, tmd_atom_table *a, tmd_defect_table *d)
{
    memset(b, 0, sizeof *b);
    double L = 22.0;
    b->a1[0] = L;
    b->a2[0] = L / 2;
    b->a2[1] = L * sqrt(3) / 2;
    b->c = 1.0 / 3;
    b->bond = L / sqrt(3);
    for (int t = 0; t < NT; t++) {
        drift[2 * t] = 0.6 * t;
        drift[2 * t + 1] = -0.4 * t;
    }
    tmd_atom_table_init(a, 1);
    tmd_atom_table_set_latent(ctx, a, 2);
    tmd_defect_table_init(d);
    unsigned rng = 11;
    int64_t counter = 0;
    for (int i = -30; i <= 30; i++)
        for (int j = -30; j <= 30; j++)
            for (int s = 1; s <= 2; s++) {
                double x, y;
                tmd_track_site_xy(b, tmd_site_pack(i, j, s), &x, &y);
                if (x < 0 || y < 0 || x >= IMG || y >= IMG) continue;
                int h = hot(x, y);
                for (int t = 0; t < NT; t++) {
                    float r = tmd_test_randf(&rng), r2 = tmd_test_randf(&rng);
                    int mine = (int)(counter++ % tmd_test_size) == tmd_test_rank;
                    double fx = x + drift[2 * t], fy = y + drift[2 * t + 1];
                    if (r < (h ? 0.35f : 0.02f)) {
                        if (mine) tmd_defect_table_push(ctx, d, t, fx, fy, s == 1 ? TMD_DEF_VM : TMD_DEF_VX2);
                        continue;
                    }
                    if (!mine) continue;
                    int64_t k;
                    tmd_atom_table_push(ctx, a, &k);
                    a->frame[k] = t;
                    a->x[k] = fx;
                    a->y[k] = fy;
                    a->sublattice[k] = (int8_t)s;
                    a->species[k] = (int8_t)(s == 1 ? (h && r2 < 0.3f ? TMD_SP_W : TMD_SP_MO) : TMD_SP_S2);
                    a->latent[2 * k] = (float)(s + 0.05 * r2);
                    a->latent[2 * k + 1] = (float)(a->species[k] * 0.3);
                }
            }
    tmd_track_assign(ctx, b, drift, NT, 0.45, a);
}

static void test_sweep_equals_separate_runs(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    tmd_track_basis b;
    double drift[2 * NT];
    tmd_atom_table atoms;
    tmd_defect_table defects;
    make(&ctx, &b, drift, &atoms, &defects);
    tmd_config cfg;
    tmd_config_defaults(&cfg);
    double px = 0.1;
    tmd_dyn_params prm;
    tmd_dyn_params_from_config(&prm, &cfg, px);
    tmd_site_table sites;
    tmd_site_table_init(&sites);
    CU_ASSERT_EQUAL_FATAL(tmd_dynamics_sites(&ctx, tmd_test_comm, &b, drift, NT, IMG, IMG, &atoms, &defects, &prm, &sites), TMD_OK);
    tmd_dyn_maps maps;
    CU_ASSERT_EQUAL_FATAL(tmd_dynamics_maps(&ctx, tmd_test_comm, &prm, IMG, IMG, NT, &sites, &defects, drift, &maps), TMD_OK);
    /* the result file: what a run writes for the cached stages */
    const char *rpath = tmd_test_path("R.h5"), *spath = tmd_test_path("SWEEP.h5");
    tmd_writer *w = NULL;
    CU_ASSERT_EQUAL_FATAL(tmd_writer_create(&ctx, rpath, 1, tmd_test_comm, &w), TMD_OK);
    char *text = NULL;
    tmd_config_to_text(&ctx, &cfg, &text);
    tmd_status st = tmd_writer_attr_str(&ctx, w, "/", "config", text);
    free(text);
    if (!st) st = tmd_writer_attr_f64(&ctx, w, "/", "pixel_size", &px, 1);
    if (!st) st = tmd_dynamics_write(&ctx, w, "", &sites, &maps, IMG, IMG);
    if (!st) st = tmd_writer_rows(&ctx, w, "/defects/frame", TMD_I32, defects.n, 1, defects.frame);
    if (!st) st = tmd_writer_rows(&ctx, w, "/defects/x", TMD_F64, defects.n, 1, defects.x);
    if (!st) st = tmd_writer_rows(&ctx, w, "/defects/y", TMD_F64, defects.n, 1, defects.y);
    if (!st) st = tmd_writer_rows(&ctx, w, "/defects/type", TMD_I8, defects.n, 1, defects.type);
    if (!st) st = tmd_writer_rows(&ctx, w, "/drift", TMD_F64, tmd_test_rank == 0 ? NT : 0, 2, drift);
    CU_ASSERT_EQUAL(st, TMD_OK);
    CU_ASSERT_EQUAL_FATAL(tmd_writer_close(&ctx, &w, st == TMD_OK), TMD_OK);
    tmd_dyn_maps_free(&maps);

    /* the sweep: 3 x 2 settings */
    tmd_sweep_input in;
    CU_ASSERT_EQUAL_FATAL(tmd_sweep_load(&ctx, tmd_test_comm, rpath, &in), TMD_OK);
    CU_ASSERT_EQUAL(in.T, NT);
    CU_ASSERT_EQUAL(in.H, IMG);
    tmd_sweep_param p[2];
    CU_ASSERT_EQUAL_FATAL(tmd_sweep_parse(&ctx, "instability_threshold=1,2,3", &p[0]), TMD_OK);
    CU_ASSERT_EQUAL_FATAL(tmd_sweep_parse(&ctx, "region_threshold=0.2,0.6", &p[1]), TMD_OK);
    CU_ASSERT_EQUAL(tmd_sweep_count(p, 2), 6);
    tmd_sweep_row *rows = NULL;
    CU_ASSERT_EQUAL_FATAL(tmd_sweep_run(&ctx, tmd_test_comm, &in, p, 2, spath, 1, &rows), TMD_OK);

    hid_t f = H5I_INVALID_HID;
    CU_ASSERT_EQUAL_FATAL(tmd_h5_open_read(&ctx, spath, &f), TMD_OK);
    int any_regions = 0, distinct = 0;
    for (int64_t k = 0; k < 6; k++) {
        /* a separate run at this setting: scores, threshold, maps, regions from scratch */
        tmd_config c;
        CU_ASSERT_EQUAL(tmd_sweep_config(&ctx, &cfg, p, 2, k, &c), TMD_OK);
        CU_ASSERT_EQUAL(c.instability_threshold, p[0].values[k / 2]);
        CU_ASSERT_EQUAL(c.region_threshold, p[1].values[k % 2]);
        tmd_dyn_params q;
        tmd_dyn_params_from_config(&q, &c, px);
        tmd_site_table s2;
        tmd_site_table_init(&s2);
        CU_ASSERT_EQUAL_FATAL(tmd_dynamics_sites(&ctx, tmd_test_comm, &b, drift, NT, IMG, IMG, &atoms, &defects, &q, &s2), TMD_OK);
        tmd_dyn_maps m2;
        CU_ASSERT_EQUAL_FATAL(tmd_dynamics_maps(&ctx, tmd_test_comm, &q, IMG, IMG, NT, &s2, &defects, drift, &m2), TMD_OK);
        int64_t nu = 0, g = 0;
        for (int64_t i = 0; i < s2.n; i++) nu += s2.unstable[i];
        MPI_Allreduce(&nu, &g, 1, MPI_INT64_T, MPI_SUM, tmd_test_comm);
        CU_ASSERT_EQUAL(rows[k].n_unstable, g);
        CU_ASSERT_EQUAL(rows[k].n_regions, m2.regions.n);
        any_regions |= m2.regions.n > 0;
        if (k > 0 && rows[k].n_unstable != rows[0].n_unstable) distinct = 1;
        /* the setting's regions in SWEEP.h5 */
        char path[128];
        snprintf(path, sizeof path, "/settings/%03lld/regions/area_px", (long long)k);
        int64_t nr = 0, nc = 0;
        double *area = NULL;
        CU_ASSERT_EQUAL(tmd_h5_read_rows(&ctx, f, path, TMD_F64, &nr, &nc, (void **)&area), TMD_OK);
        CU_ASSERT_EQUAL(nr, m2.regions.n);
        snprintf(path, sizeof path, "/settings/%03lld/regions/x", (long long)k);
        double *x = NULL;
        CU_ASSERT_EQUAL(tmd_h5_read_rows(&ctx, f, path, TMD_F64, &nr, &nc, (void **)&x), TMD_OK);
        for (int64_t r = 0; r < nr && r < m2.regions.n; r++) {
            CU_ASSERT_EQUAL(area[r], m2.regions.area_px[r]);
            CU_ASSERT_EQUAL(x[r], m2.regions.x[r]);
        }
        free(area);
        free(x);
        tmd_dyn_maps_free(&m2);
        tmd_site_table_free(&s2);
    }
    CU_ASSERT(any_regions);
    CU_ASSERT(distinct);
    int64_t nr = 0, nc = 0;
    double *thr = NULL;
    CU_ASSERT_EQUAL(tmd_h5_read_rows(&ctx, f, "/sweep/instability_threshold", TMD_F64, &nr, &nc, (void **)&thr), TMD_OK);
    CU_ASSERT_EQUAL(nr, 6);
    if (nr == 6) CU_ASSERT_EQUAL(thr[5], 3);
    free(thr);
    H5Fclose(f);
    free(rows);
    tmd_sweep_param_free(&p[0]);
    tmd_sweep_param_free(&p[1]);
    tmd_sweep_input_free(&in);
    tmd_site_table_free(&sites);
    tmd_atom_table_free(&atoms);
    tmd_defect_table_free(&defects);
}

static void test_bad_params(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    tmd_sweep_param p;
    CU_ASSERT_EQUAL(tmd_sweep_parse(&ctx, "tile=128,256", &p), TMD_ERR_ARG);
    CU_ASSERT_PTR_NOT_NULL(strstr(ctx.err_msg, "cached stages"));
    tmd_error_clear(&ctx);
    CU_ASSERT_EQUAL(tmd_sweep_parse(&ctx, "instability_treshold=1", &p), TMD_ERR_CONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(ctx.err_msg, "instability_threshold"));
    tmd_error_clear(&ctx);
    CU_ASSERT_NOT_EQUAL(tmd_sweep_parse(&ctx, "density_bin_px=8,abc", &p), TMD_OK);
    tmd_error_clear(&ctx);
    CU_ASSERT_NOT_EQUAL(tmd_sweep_parse(&ctx, "density_bin_px=0", &p), TMD_OK); /* out of range */
    tmd_error_clear(&ctx);
    CU_ASSERT_EQUAL(tmd_sweep_parse(&ctx, "nothing", &p), TMD_ERR_ARG);
}

int main(int argc, char **argv)
{
    return tmd_test_main(argc, argv, "sweep",
                         (tmd_test_case[]){{"sweep equals separate runs", test_sweep_equals_separate_runs},
                                           {"bad parameters refused", test_bad_params},
                                           {0}});
}
