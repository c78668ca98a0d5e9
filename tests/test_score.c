/* Score: the truth scored against itself gives 1.0 on every defined metric (0 errors);
 * perturbing the truth by known amounts (dropped, shifted, relabelled and spurious atoms,
 * offset drift, reversed instability, missing groups) gives exactly the expected scores; the
 * instability truth counts only changes between frames in which a site is in view (a site that
 * changes only out of view is a negative; a jump counts) and the any-frame AUC is kept beside it;
 * greedy one-to-one matching and the AUC on hand-made cases; a million atoms match. */
/* TMD_TEST_TIMEOUT: 120 */
#include <hdf5.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "tmd/io.h"
#include "tmd/score.h"
#include "tmd/sim.h"
#include "tmd/table.h"

static tmd_ctx C;
static const char *TRUTH;
static double A, PX;
static int64_t H = 320, W = 320, T = 3;

static void make_truth(void)
{
    tmd_ctx_init(&C, MPI_COMM_SELF);
    C.log_level = TMD_LOG_QUIET;
    tmd_sim_params p;
    tmd_sim_params_draw(&p, 42, 0);
    p.height = H;
    p.width = W;
    p.frames = T;
    p.pixel_size = 0.1;
    p.hole_prob = 0;
    p.edge = 0;
    p.strain = 0;
    p.displacement = 0;
    p.vac_m = 0.03; p.vac_x = 0.06; p.vac_x2 = 0.02;
    p.region_prob = 1; p.region_spacing = 20; p.region_radius = 8; p.region_boost = 3;
    p.p_sputter = 0.1; p.p_heal = 0.1;
    tmd_sim_params_finish(&C, &p);
    A = p.lattice_a;
    PX = p.pixel_size;
    TRUTH = strdup(tmd_test_path("truth.h5"));
    CU_ASSERT_EQUAL_FATAL(tmd_sim_write(&C, &p, TRUTH, 1, MPI_COMM_SELF), TMD_OK);
}

typedef struct {
    int64_t n;
    int32_t *frame;
    double *x, *y;
    int8_t *sp;
} atoms_t;

static void read_atoms(const char *path, const char *grp, const char *code, atoms_t *a)
{
    hid_t f;
    char p[128];
    int64_t k;
    memset(a, 0, sizeof *a);
    CU_ASSERT_EQUAL_FATAL(tmd_h5_open_read(&C, path, &f), TMD_OK);
    snprintf(p, sizeof p, "%s/x", grp);
    tmd_h5_read_rows(&C, f, p, TMD_F64, &a->n, &k, (void **)&a->x);
    snprintf(p, sizeof p, "%s/y", grp);
    tmd_h5_read_rows(&C, f, p, TMD_F64, &a->n, &k, (void **)&a->y);
    snprintf(p, sizeof p, "%s/frame", grp);
    tmd_h5_read_rows(&C, f, p, TMD_I32, &a->n, &k, (void **)&a->frame);
    snprintf(p, sizeof p, "%s/%s", grp, code);
    tmd_h5_read_rows(&C, f, p, TMD_I8, &a->n, &k, (void **)&a->sp);
    H5Fclose(f);
}

static int inside(double x, double y)
{
    double b = A / 2 / PX;
    return x >= b - 0.5 && y >= b - 0.5 && x <= W - 0.5 - b && y <= H - 0.5 - b;
}

static void test_truth_against_itself(void)
{
    tmd_score s;
    CU_ASSERT_EQUAL_FATAL(tmd_score_files(&C, TRUTH, TRUTH, &s), TMD_OK);
    CU_ASSERT(s.detection.tp > 300);
    CU_ASSERT_EQUAL(s.detection.f1, 1.0);
    CU_ASSERT_EQUAL(s.detection.precision, 1.0);
    CU_ASSERT_EQUAL(s.detection.recall, 1.0);
    CU_ASSERT_EQUAL(s.rmse_px, 0.0);
    CU_ASSERT_EQUAL(s.species_acc, 1.0);
    CU_ASSERT_EQUAL(s.metal_acc, 1.0);
    CU_ASSERT_EQUAL(s.chalcogen_acc, 1.0);
    for (int k = 1; k <= 3; k++) {
        CU_ASSERT(s.vacancy[k].tp > 0);
        CU_ASSERT_EQUAL(s.vacancy[k].f1, 1.0);
    }
    CU_ASSERT_EQUAL(s.instability_auc, 1.0);
    CU_ASSERT(s.auc_positives > 0 && s.auc_positives < s.auc_sites);
    CU_ASSERT_EQUAL(s.drift_rmse_px, 0.0);
    CU_ASSERT_EQUAL(s.region_iou, 1.0);
    char *json = NULL;
    CU_ASSERT_EQUAL_FATAL(tmd_score_json(&C, &s, TRUTH, TRUTH, &json), TMD_OK);
    CU_ASSERT_PTR_NOT_NULL(strstr(json, "\"f1\": 1}"));
    CU_ASSERT_PTR_NOT_NULL(strstr(json, "\"instability_auc\": 1,"));
    CU_ASSERT_PTR_NULL(strstr(json, "null"));
    free(json);
}

/* A result built from the truth with known changes. */
static void test_known_perturbations(void)
{
    atoms_t t, d;
    read_atoms(TRUTH, "/atoms", "species", &t);
    read_atoms(TRUTH, "/defects", "type", &d);
    CU_ASSERT_FATAL(t.n > 300 && t.x && t.sp);
    hid_t f;
    int64_t k, nl, nd;
    double *a1 = NULL, *a2 = NULL, *drift = NULL;
    CU_ASSERT_EQUAL_FATAL(tmd_h5_open_read(&C, TRUTH, &f), TMD_OK);
    tmd_h5_read_rows(&C, f, "/lattice/a1", TMD_F64, &nl, &k, (void **)&a1);
    tmd_h5_read_rows(&C, f, "/lattice/a2", TMD_F64, &nl, &k, (void **)&a2);
    tmd_h5_read_rows(&C, f, "/drift", TMD_F64, &nd, &k, (void **)&drift);
    int64_t ns;
    double *sx = NULL, *sy = NULL;
    float *inst = NULL;
    tmd_h5_read_rows(&C, f, "/sites/x", TMD_F64, &ns, &k, (void **)&sx);
    tmd_h5_read_rows(&C, f, "/sites/y", TMD_F64, &ns, &k, (void **)&sy);
    tmd_h5_read_rows(&C, f, "/sites/instability", TMD_F32, &ns, &k, (void **)&inst);
    H5Fclose(f);
    CU_ASSERT_FATAL(a1 && a2 && drift && nd == T && sx && inst);
    /* drop every 10th atom, shift the rest by (0.3, 0.4) px, relabel every 5th kept one,
     * add a spurious atom at the hexagon centre next to every 7th metal */
    tmd_atom_table r;
    tmd_atom_table_init(&r, 0);
    int64_t in_true = 0, in_dropped = 0, in_kept = 0, in_wrong = 0, in_spur = 0;
    for (int64_t i = 0; i < t.n; i++) {
        int in = inside(t.x[i], t.y[i]);
        in_true += in;
        if (i % 10 == 3) {
            in_dropped += in;
            continue;
        }
        int64_t j;
        tmd_atom_table_push(&C, &r, &j);
        r.frame[j] = t.frame[i];
        r.x[j] = t.x[i] + 0.3;
        r.y[j] = t.y[i] + 0.4;
        r.species[j] = t.sp[i];
        in_kept += in;
        if (j % 5 == 0) {
            r.species[j] = t.sp[i] == TMD_SP_MO ? TMD_SP_W : TMD_SP_MO;
            in_wrong += in;
        }
        if ((t.sp[i] == TMD_SP_MO || t.sp[i] == TMD_SP_W) && i % 7 == 0) {
            double hx = t.x[i] + (a1[0] + a2[0]) * 2.0 / 3.0, hy = t.y[i] + (a1[1] + a2[1]) * 2.0 / 3.0;
            int64_t q;
            tmd_atom_table_push(&C, &r, &q);
            r.frame[q] = t.frame[i];
            r.x[q] = hx;
            r.y[q] = hy;
            r.species[q] = TMD_SP_MO;
            in_spur += inside(hx, hy);
        }
    }
    for (int64_t i = 1; i < nd; i++) drift[2 * i] += 0.5;
    for (int64_t i = 0; i < ns; i++) inst[i] = -inst[i];
    const char *rp = tmd_test_path("result.h5");
    tmd_writer *w = NULL;
    CU_ASSERT_EQUAL_FATAL(tmd_writer_create(&C, rp, 1, MPI_COMM_SELF, &w), TMD_OK);
    tmd_writer_rows(&C, w, "/atoms/frame", TMD_I32, r.n, 1, r.frame);
    tmd_writer_rows(&C, w, "/atoms/x", TMD_F64, r.n, 1, r.x);
    tmd_writer_rows(&C, w, "/atoms/y", TMD_F64, r.n, 1, r.y);
    tmd_writer_rows(&C, w, "/atoms/species", TMD_I8, r.n, 1, r.species);
    tmd_writer_rows(&C, w, "/drift", TMD_F64, nd, 2, drift);
    tmd_writer_rows(&C, w, "/sites/x", TMD_F64, ns, 1, sx);
    tmd_writer_rows(&C, w, "/sites/y", TMD_F64, ns, 1, sy);
    tmd_writer_rows(&C, w, "/sites/instability", TMD_F32, ns, 1, inst);
    /* regions: none found */
    tmd_writer_rows(&C, w, "/regions/x", TMD_F64, 0, 1, sx);
    tmd_writer_rows(&C, w, "/regions/y", TMD_F64, 0, 1, sx);
    tmd_writer_rows(&C, w, "/regions/area_px", TMD_F64, 0, 1, sx);
    CU_ASSERT_EQUAL_FATAL(tmd_writer_close(&C, &w, 1), TMD_OK);

    tmd_score s;
    CU_ASSERT_EQUAL_FATAL(tmd_score_files(&C, rp, TRUTH, &s), TMD_OK);
    CU_ASSERT_EQUAL(s.detection.tp, in_true - in_dropped);
    CU_ASSERT_EQUAL(s.detection.fn, in_dropped);
    CU_ASSERT_EQUAL(s.detection.fp, in_spur);
    CU_ASSERT(in_spur > 5);
    CU_ASSERT_DOUBLE_EQUAL(s.detection.recall, (double)(in_true - in_dropped) / in_true, 1e-12);
    CU_ASSERT_DOUBLE_EQUAL(s.detection.precision, (double)(in_true - in_dropped) / (in_true - in_dropped + in_spur), 1e-12);
    CU_ASSERT_DOUBLE_EQUAL(s.rmse_px, 0.5, 1e-9);
    CU_ASSERT_DOUBLE_EQUAL(s.species_acc, 1.0 - (double)in_wrong / in_kept, 1e-12);
    CU_ASSERT_FALSE(s.has_vacancies); /* no /defects in the result: null, not a crash */
    CU_ASSERT_DOUBLE_EQUAL(s.drift_rmse_px, 0.5 * sqrt((double)(T - 1) / T), 1e-12);
    CU_ASSERT_EQUAL(s.instability_auc, 0.0); /* reversed scores */
    CU_ASSERT_EQUAL(s.region_iou, 0.0);
    char *json = NULL;
    CU_ASSERT_EQUAL_FATAL(tmd_score_json(&C, &s, rp, TRUTH, &json), TMD_OK);
    CU_ASSERT_PTR_NOT_NULL(strstr(json, "\"vacancies\": null"));
    free(json);
    tmd_atom_table_free(&r);
    free(t.frame); free(t.x); free(t.y); free(t.sp);
    free(d.frame); free(d.x); free(d.y); free(d.sp);
    free(a1); free(a2); free(drift); free(sx); free(sy); free(inst);
}

/* Greedy by distance: each found point used once, the closest pair wins, frames kept apart. */
static void test_matching_and_auc(void)
{
    double tx[3] = {0, 10, 20}, ty[3] = {0, 0, 0};
    double fx[4] = {0.5, 0.2, 10.9, 20}, fy[4] = {0, 0, 0, 0};
    int32_t tf[3] = {0, 0, 0}, ff[4] = {0, 0, 0, 1};
    int64_t m[3];
    CU_ASSERT_EQUAL(tmd_score_match(&C, 3, tf, tx, ty, 4, ff, fx, fy, 1.0, m), TMD_OK);
    CU_ASSERT_EQUAL(m[0], 1);  /* the closer of two candidates */
    CU_ASSERT_EQUAL(m[1], 2);
    CU_ASSERT_EQUAL(m[2], -1); /* same place, other frame */
    double sc[4] = {0.1, 0.4, 0.35, 0.8};
    int8_t lab[4] = {0, 0, 1, 1};
    CU_ASSERT_DOUBLE_EQUAL(tmd_score_auc(4, sc, lab), 0.75, 1e-12);
    int8_t one[2] = {1, 1};
    CU_ASSERT(isnan(tmd_score_auc(2, sc, one)));
}

/* A million columns on a grid, found with small noise: all matched, no O(N^2). */
static void test_million_atoms(void)
{
    int64_t n = 1000000, side = 1000;
    double *x = malloc((size_t)n * 8), *y = malloc((size_t)n * 8), *fx = malloc((size_t)n * 8), *fy = malloc((size_t)n * 8);
    int64_t *m = malloc((size_t)n * 8);
    CU_ASSERT_FATAL(x && y && fx && fy && m);
    unsigned st = 7;
    for (int64_t i = 0; i < n; i++) {
        x[i] = (double)(i % side) * 10;
        y[i] = (double)(i / side) * 10;
        fx[n - 1 - i] = x[i] + tmd_test_randf(&st) - 0.5;
        fy[n - 1 - i] = y[i] + tmd_test_randf(&st) - 0.5;
    }
    CU_ASSERT_EQUAL(tmd_score_match(&C, n, NULL, x, y, n, NULL, fx, fy, 2.5, m), TMD_OK);
    int64_t ok = 0;
    for (int64_t i = 0; i < n; i++) ok += m[i] == n - 1 - i;
    CU_ASSERT_EQUAL(ok, n);
    free(x); free(y); free(fx); free(fy); free(m);
}

static void test_setup(void) { make_truth(); }

/* Observable truth: a copy of the truth with a hand-made drift (frame 2 moves the right half of
 * the field out of view) and hand-made site histories: A (left, in view in every frame) changes
 * species in frame 2, B (right) changes only in frame 2 while out of view, C (right) changes in
 * frame 1 while in view, D (left) jumps in frame 1; every other site is constant. Scores: B 10,
 * A C D 5, others 0. Observable positives A C D, B a negative ranked above them: AUC exactly
 * (neg - 1) / neg; against the any-frame truth (A B C D) exactly 1. */
static void test_observable_truth(void)
{
    const char *cp = tmd_test_path("obs.h5");
    {
        FILE *in = fopen(TRUTH, "rb"), *out = fopen(cp, "wb");
        CU_ASSERT_PTR_NOT_NULL_FATAL(in);
        CU_ASSERT_PTR_NOT_NULL_FATAL(out);
        char buf[65536];
        size_t k;
        while ((k = fread(buf, 1, sizeof buf, in)) > 0) fwrite(buf, 1, k, out);
        fclose(in);
        fclose(out);
    }
    hid_t f;
    int64_t ns, k;
    double *sx = NULL, *sy = NULL;
    CU_ASSERT_EQUAL_FATAL(tmd_h5_open_read(&C, cp, &f), TMD_OK);
    tmd_h5_read_rows(&C, f, "/sites/x", TMD_F64, &ns, &k, (void **)&sx);
    tmd_h5_read_rows(&C, f, "/sites/y", TMD_F64, &ns, &k, (void **)&sy);
    H5Fclose(f);
    CU_ASSERT_FATAL(ns > 20);
    double b = A / 2 / PX, shift = W / 2.0;
    int8_t *state = calloc((size_t)ns * T, 1), *jump = calloc((size_t)ns * T, 1), *dyn = calloc((size_t)ns, 1);
    float *inst = calloc((size_t)ns, sizeof(float));
    double drift[2 * 3] = {0, 0, 0, 0, shift, 0};
    int64_t ia = -1, ib = -1, ic = -1, id = -1, nin = 0;
    for (int64_t i = 0; i < ns; i++) {
        for (int64_t t = 0; t < T; t++) state[i * T + t] = 3;
        if (!inside(sx[i], sy[i])) continue;
        nin++;
        int left = sx[i] + shift <= W - 0.5 - b - 1, right = sx[i] + shift > W - 0.5 + 1;
        if (left && ia < 0) ia = i;
        else if (left && id < 0) id = i;
        else if (right && ib < 0) ib = i;
        else if (right && ic < 0) ic = i;
    }
    CU_ASSERT_FATAL(ia >= 0 && ib >= 0 && ic >= 0 && id >= 0);
    state[ia * T + 2] = 4;
    state[ib * T + 2] = 4;
    state[ic * T + 1] = 5;
    state[ic * T + 2] = 5;
    jump[id * T + 1] = 2;
    dyn[ia] = dyn[ib] = dyn[ic] = dyn[id] = 1;
    inst[ib] = 10;
    inst[ia] = inst[ic] = inst[id] = 5;
    hid_t fw = H5Fopen(cp, H5F_ACC_RDWR, H5P_DEFAULT);
    CU_ASSERT_FATAL(fw >= 0);
    struct { const char *name; hid_t type; const void *data; } sets[] = {
        {"/sites/state", H5T_NATIVE_INT8, state}, {"/sites/jump", H5T_NATIVE_INT8, jump},
        {"/sites/dynamic", H5T_NATIVE_INT8, dyn}, {"/sites/instability", H5T_NATIVE_FLOAT, inst},
        {"/drift", H5T_NATIVE_DOUBLE, drift}};
    for (size_t q = 0; q < sizeof sets / sizeof sets[0]; q++) {
        hid_t d = H5Dopen2(fw, sets[q].name, H5P_DEFAULT);
        CU_ASSERT_FATAL(d >= 0);
        CU_ASSERT(H5Dwrite(d, sets[q].type, H5S_ALL, H5S_ALL, H5P_DEFAULT, sets[q].data) >= 0);
        H5Dclose(d);
    }
    H5Fclose(fw);
    tmd_score s;
    CU_ASSERT_EQUAL_FATAL(tmd_score_files(&C, cp, cp, &s), TMD_OK);
    CU_ASSERT_EQUAL(s.auc_sites, nin);
    CU_ASSERT(s.has_observable);
    CU_ASSERT(s.observable_jumps);
    CU_ASSERT_EQUAL(s.auc_positives, 3);
    CU_ASSERT_EQUAL(s.auc_positives_any, 4);
    CU_ASSERT_DOUBLE_EQUAL(s.instability_auc, (double)(nin - 3 - 1) / (double)(nin - 3), 1e-12);
    CU_ASSERT_EQUAL(s.instability_auc_any, 1.0);
    char *json = NULL;
    CU_ASSERT_EQUAL_FATAL(tmd_score_json(&C, &s, cp, cp, &json), TMD_OK);
    CU_ASSERT_PTR_NOT_NULL(strstr(json, "\"instability_truth\": \"changes_in_view\""));
    CU_ASSERT_PTR_NOT_NULL(strstr(json, "\"instability_positives_any_frame\": 4"));
    free(json);
    free(sx); free(sy); free(state); free(jump); free(dyn); free(inst);
}

int main(int argc, char **argv)
{
    return tmd_test_main(argc, argv, "score",
                         (tmd_test_case[]){{"simulate a truth stack", test_setup},
                                           {"truth against itself", test_truth_against_itself},
                                           {"known perturbations", test_known_perturbations},
                                           {"observable dynamic truth", test_observable_truth},
                                           {"matching and AUC", test_matching_and_auc},
                                           {"a million atoms", test_million_atoms},
                                           {0}});
}
