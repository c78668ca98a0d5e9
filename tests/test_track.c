/* Track: atoms of drifting frames (with position noise, missing atoms, a slightly wrong
 * starting lattice) get the lattice-site id of their true site in every frame; ids are the
 * same whichever rank holds which atoms (1, 2, 4 ranks); pack/unpack round-trips. */
/* TMD_TEST_RANKS: 1 2 4 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "tmd/track.h"

#define T 12

static double strip0 = 1e9; /* frame 0 keeps only atoms with x below this (a film edge) */
static double noise_w = 1.5; /* atom positions: uniform noise of this full width, px */

static const double A = 30.7, ROT = 0.31;

static void truth_site(int i, int j, int s, double *x, double *y)
{
    double a1x = A * cos(ROT), a1y = A * sin(ROT), a2x = A * cos(ROT + M_PI / 3), a2y = A * sin(ROT + M_PI / 3);
    double u = i + (s == 2 ? 1.0 / 3 : 0), v = j + (s == 2 ? 1.0 / 3 : 0);
    *x = 7.3 + u * a1x + v * a2x;
    *y = -4.1 + u * a1y + v * a2y;
}

/* Atoms of all frames; this rank keeps every nranks-th one (any split must give the same ids).
 * truth_key[k] = a key of the true site (i, j, s). */
static void make_atoms(tmd_ctx *ctx, tmd_atom_table *a, int64_t **truth_key, double *drift, int rank, int nranks,
                       int labelled)
{
    tmd_atom_table_init(a, 1);
    unsigned rng = 99;
    int64_t cap = 0, counter = 0;
    *truth_key = NULL;
    for (int t = 0; t < T; t++) {
        drift[2 * t] = 1.7 * t + 0.3 * sin(t);
        drift[2 * t + 1] = -0.9 * t;
    }
    for (int t = 0; t < T; t++)
        for (int i = -20; i <= 20; i++)
            for (int j = -20; j <= 20; j++)
                for (int s = 1; s <= 2; s++) {
                    double x, y;
                    truth_site(i, j, s, &x, &y);
                    x += drift[2 * t];
                    y += drift[2 * t + 1];
                    float r1 = tmd_test_randf(&rng), r2 = tmd_test_randf(&rng), r3 = tmd_test_randf(&rng);
                    if (x < 0 || y < 0 || x > 400 || y > 400) continue;
                    if (t == 0 && x > strip0) continue;
                    if (r3 < 0.05f) continue; /* vacancy in this frame */
                    if (counter++ % nranks != rank) continue;
                    int64_t k;
                    tmd_atom_table_push(ctx, a, &k);
                    a->frame[k] = t;
                    a->x[k] = x + noise_w * (r1 - 0.5);
                    a->y[k] = y + noise_w * (r2 - 0.5);
                    a->sublattice[k] = labelled ? s : 0;
                    if (k >= cap) {
                        cap = 2 * (k + 1);
                        *truth_key = realloc(*truth_key, sizeof(int64_t) * cap);
                    }
                    (*truth_key)[k] = ((int64_t)(i + 100) * 1000 + (j + 100)) * 10 + s;
                }
}

static void check(int labelled)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    double drift[2 * T];
    tmd_atom_table mine, all;
    int64_t *key_mine, *key_all;
    make_atoms(&ctx, &mine, &key_mine, drift, tmd_test_rank, tmd_test_size, labelled);
    make_atoms(&ctx, &all, &key_all, drift, 0, 1, labelled);
    /* starting lattice vectors 0.4% too long and 0.3 degrees off, as a lattice stage might give */
    double s = 1.004, r = ROT + 0.005;
    double a1[2] = {s * A * cos(r), s * A * sin(r)}, a2[2] = {s * A * cos(r + M_PI / 3), s * A * sin(r + M_PI / 3)};
    tmd_track_basis b, bs;
    CU_ASSERT_EQUAL_FATAL(tmd_track_basis_fit(&ctx, tmd_test_comm, &mine, a1, a2, &b), TMD_OK);
    CU_ASSERT_EQUAL_FATAL(tmd_track_basis_fit(&ctx, MPI_COMM_SELF, &all, a1, a2, &bs), TMD_OK);
    CU_ASSERT(fabs(hypot(b.a1[0], b.a1[1]) - A) < 0.01);
    CU_ASSERT(b.rms_px < 0.7);
    /* the rank-split basis is the one-rank basis to the last bit (fixed-point sums) */
    CU_ASSERT(memcmp(b.a1, bs.a1, sizeof b.a1) == 0 && memcmp(b.a2, bs.a2, sizeof b.a2) == 0);
    CU_ASSERT(memcmp(b.origin, bs.origin, sizeof b.origin) == 0 && b.c == bs.c);
    CU_ASSERT_EQUAL(tmd_track_assign(&ctx, &b, drift, T, 0.45, &mine), TMD_OK);
    CU_ASSERT_EQUAL(tmd_track_assign(&ctx, &bs, drift, T, 0.45, &all), TMD_OK);
    /* every atom has a site; one true site <-> one id; sublattice from the id matches */
    /* (unlabelled: which sublattice is called A is arbitrary, but it must be consistent) */
    int ok_map = 1, ok_sub = 1, ok_all = 1, flip = -1;
    for (int64_t k = 0; k < all.n; k++) {
        if (all.site[k] < 0) { ok_all = 0; continue; }
        int64_t i, j;
        int sub;
        tmd_site_unpack(all.site[k], &i, &j, &sub);
        int f = sub != key_all[k] % 10;
        if (flip < 0) flip = labelled ? 0 : f;
        if (f != flip) ok_sub = 0;
        for (int64_t q = k + 1; q < all.n && q < k + 4000; q++)
            if ((key_all[q] == key_all[k]) != (all.site[q] == all.site[k])) ok_map = 0;
    }
    CU_ASSERT(ok_all);
    CU_ASSERT(ok_map);
    CU_ASSERT(ok_sub);
    /* the rank-split ids equal the one-rank ids (the split is every nranks-th atom) */
    int64_t q = 0, same = 1;
    for (int64_t k = 0; k < all.n; k++)
        if (k % tmd_test_size == tmd_test_rank) {
            if (q >= mine.n || mine.site[q] != all.site[k]) same = 0;
            q++;
        }
    CU_ASSERT(same);
    /* ideal site positions lie within the position noise of the truth (in frame 0) */
    double x, y, tx, ty;
    tmd_track_site_xy(&b, all.site[0], &x, &y);
    int64_t kk = key_all[0];
    truth_site((int)(kk / 10000) - 100, (int)(kk / 10 % 1000) - 100, (int)(kk % 10), &tx, &ty);
    /* the origin may sit on any A site: compare positions modulo the id, via the nearest site */
    double d;
    CU_ASSERT_EQUAL(tmd_track_nearest(&b, tx, ty, &d), all.site[0]);
    CU_ASSERT(d < 0.3);
    CU_ASSERT(hypot(x - tx, y - ty) < 0.3);
    (void)x; (void)y;
    free(key_mine);
    free(key_all);
    tmd_atom_table_free(&mine);
    tmd_atom_table_free(&all);
}

static void test_labelled(void) { check(1); }
/* Without sublattice labels the A phase comes from the most populated phase bin. */
static void test_unlabelled(void) { check(0); }

static void test_pack(void)
{
    const int64_t v[][3] = {{0, 0, 1}, {-5, 7, 2}, {123456, -98765, 1}, {-1000000, 1000000, 2}};
    for (size_t k = 0; k < sizeof v / sizeof v[0]; k++) {
        int64_t id = tmd_site_pack(v[k][0], v[k][1], (int)v[k][2]), i, j;
        int s;
        CU_ASSERT(id >= 0);
        tmd_site_unpack(id, &i, &j, &s);
        CU_ASSERT_EQUAL(i, v[k][0]);
        CU_ASSERT_EQUAL(j, v[k][1]);
        CU_ASSERT_EQUAL(s, v[k][2]);
    }
    /* ids sort by i first */
    CU_ASSERT(tmd_site_pack(1, -100, 1) > tmd_site_pack(0, 100, 2));
}

/* Too few atoms in frame 0: refused with TMD_ERR_NOLATTICE on every rank. */
static void test_empty(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    tmd_atom_table a;
    tmd_atom_table_init(&a, 1);
    tmd_track_basis b;
    double a1[2] = {30, 0}, a2[2] = {15, 26};
    CU_ASSERT_EQUAL(tmd_track_basis_fit(&ctx, tmd_test_comm, &a, a1, a2, &b), TMD_ERR_NOLATTICE);
    tmd_atom_table_free(&a);
}

/* Frame 0 shows lattice only in a strip 45 px wide (vacuum beyond a film edge): the basis
 * refined on every frame's drift-corrected atoms (tmd_track_basis_fit_stack) recovers the
 * lattice constant to 0.01 px, puts every atom of every frame on its site, and is the same
 * on 1, 2 and 4 ranks. */
static void test_stack_basis_poor_frame0(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    double drift[2 * T];
    tmd_atom_table mine, all;
    int64_t *key_mine, *key_all;
    strip0 = 45;
    make_atoms(&ctx, &mine, &key_mine, drift, tmd_test_rank, tmd_test_size, 1);
    make_atoms(&ctx, &all, &key_all, drift, 0, 1, 1);
    strip0 = 1e9;
    double s = 1.004, r = ROT + 0.005;
    double a1[2] = {s * A * cos(r), s * A * sin(r)}, a2[2] = {s * A * cos(r + M_PI / 3), s * A * sin(r + M_PI / 3)};
    tmd_track_basis b, bs;
    CU_ASSERT_EQUAL_FATAL(tmd_track_basis_fit_stack(&ctx, tmd_test_comm, &mine, a1, a2, drift, T, &b), TMD_OK);
    CU_ASSERT_EQUAL_FATAL(tmd_track_basis_fit_stack(&ctx, MPI_COMM_SELF, &all, a1, a2, drift, T, &bs), TMD_OK);
    if (tmd_test_rank == 0 && getenv("TMDFLOW_TEST_DEBUG"))
        printf("\nstack basis |a1| %.4f (true %.4f) from %lld atoms, rms %.3f\n", hypot(b.a1[0], b.a1[1]), A,
               (long long)b.n_fit, b.rms_px);
    CU_ASSERT(fabs(hypot(b.a1[0], b.a1[1]) - A) < 0.01);
    CU_ASSERT(fabs(hypot(b.a2[0], b.a2[1]) - A) < 0.01);
    CU_ASSERT(b.n_fit > 10 * 40); /* atoms of all frames, not the strip's few */
    for (int c = 0; c < 2; c++) {
        CU_ASSERT(b.a1[c] == bs.a1[c]); /* to the last bit */
        CU_ASSERT(b.a2[c] == bs.a2[c]);
        CU_ASSERT(b.origin[c] == bs.origin[c]);
    }
    CU_ASSERT_EQUAL(tmd_track_assign(&ctx, &bs, drift, T, 0.45, &all), TMD_OK);
    int64_t none = 0;
    for (int64_t k = 0; k < all.n; k++) none += all.site[k] < 0;
    CU_ASSERT_EQUAL(none, 0);
    tmd_atom_table_free(&mine);
    tmd_atom_table_free(&all);
    free(key_mine);
    free(key_all);
}

/* Frame 0 a strip 20 px wide and atoms placed with 1.4 px rms noise (a run's atoms at a film
 * edge): the frame-0 least squares barely constrains the lattice vectors across the strip; the
 * stack fit starts its growing refinement from the given (stack-wide) vectors, so every atom of
 * every frame lands on its site, on 1, 2 and 4 ranks alike. And tmd_track_median_vectors: per-frame
 * pairs in different conventions (60/120 degrees, signs, order) with a third of them bad give the
 * true pair. */
static void test_stack_basis_noisy_strip(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    double drift[2 * T];
    tmd_atom_table mine, all;
    int64_t *key_mine, *key_all;
    strip0 = 20;
    noise_w = 5;
    make_atoms(&ctx, &mine, &key_mine, drift, tmd_test_rank, tmd_test_size, 1);
    make_atoms(&ctx, &all, &key_all, drift, 0, 1, 1);
    strip0 = 1e9;
    noise_w = 1.5;
    /* per-frame measurements: good ones in varying conventions, every third one 8 % short */
    double a1s[2 * T], a2s[2 * T];
    for (int t = 0; t < T; t++) {
        double sc = t % 3 == 0 ? 0.92 : 1.0, r = ROT + (t % 3 == 0 ? 0.1 : 0);
        double u[2] = {sc * A * cos(r), sc * A * sin(r)}, v[2] = {sc * A * cos(r + M_PI / 3), sc * A * sin(r + M_PI / 3)};
        int form = t % 4; /* (u, v), (v, u), (-u, v - u) (120 degrees), (u - v, -v) ... */
        double p[2], q[2];
        if (form == 0) { p[0] = u[0]; p[1] = u[1]; q[0] = v[0]; q[1] = v[1]; }
        else if (form == 1) { p[0] = v[0]; p[1] = v[1]; q[0] = u[0]; q[1] = u[1]; }
        else if (form == 2) { p[0] = -u[0]; p[1] = -u[1]; q[0] = v[0] - u[0]; q[1] = v[1] - u[1]; }
        else { p[0] = u[0] - v[0]; p[1] = u[1] - v[1]; q[0] = -v[0]; q[1] = -v[1]; }
        a1s[2 * t] = p[0]; a1s[2 * t + 1] = p[1]; a2s[2 * t] = q[0]; a2s[2 * t + 1] = q[1];
    }
    double m1[2] = {0, 0}, m2[2] = {0, 0};
    CU_ASSERT(tmd_track_median_vectors(a1s, a2s, T, m1, m2) == T);
    /* the true star vectors at angles [0, 60) and [60, 120) degrees: ROT = 17.8 deg, +60 */
    CU_ASSERT(fabs(m1[0] - A * cos(ROT)) < 1e-9 && fabs(m1[1] - A * sin(ROT)) < 1e-9);
    CU_ASSERT(fabs(m2[0] - A * cos(ROT + M_PI / 3)) < 1e-9 && fabs(m2[1] - A * sin(ROT + M_PI / 3)) < 1e-9);
    tmd_track_basis b, bs;
    CU_ASSERT_EQUAL_FATAL(tmd_track_basis_fit_stack(&ctx, tmd_test_comm, &mine, m1, m2, drift, T, &b), TMD_OK);
    CU_ASSERT_EQUAL_FATAL(tmd_track_basis_fit_stack(&ctx, MPI_COMM_SELF, &all, m1, m2, drift, T, &bs), TMD_OK);
    for (int c = 0; c < 2; c++) {
        CU_ASSERT(b.a1[c] == bs.a1[c]); /* to the last bit */
        CU_ASSERT(b.origin[c] == bs.origin[c]);
    }
    CU_ASSERT_EQUAL(tmd_track_assign(&ctx, &bs, drift, T, 0.45, &all), TMD_OK);
    int64_t none = 0;
    for (int64_t k = 0; k < all.n; k++) none += all.site[k] < 0;
    if (tmd_test_rank == 0 && getenv("TMDFLOW_TEST_DEBUG"))
        printf("\nnoisy strip: %lld of %lld atoms off their sites, |a1| %.4f\n", (long long)none, (long long)all.n,
               hypot(bs.a1[0], bs.a1[1]));
    CU_ASSERT_EQUAL(none, 0);
    tmd_atom_table_free(&mine);
    tmd_atom_table_free(&all);
    free(key_mine);
    free(key_all);
}

int main(int argc, char **argv)
{
    return tmd_test_main(argc, argv, "track",
                         (tmd_test_case[]){{"site ids, labelled", test_labelled},
                                           {"site ids, unlabelled", test_unlabelled},
                                           {"pack/unpack", test_pack},
                                           {"empty frame 0 refused", test_empty},
                                           {"stack basis, frame 0 a strip", test_stack_basis_poor_frame0},
                                           {"stack basis, noisy strip, median vectors", test_stack_basis_noisy_strip},
                                           {0}});
}
