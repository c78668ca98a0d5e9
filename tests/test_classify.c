/* Tests of the classify stage on atom tables built from known honeycombs: sublattice and
 * species of pure MoS2, WSe2 and MoSe2 (where the chalcogen columns are the brighter ones) and
 * of random alloys come out of the contrast physics without being told the material, also
 * when the segmentation's vote says "brighter = metal" on MoSe2; the constraint layer helps;
 * vacancies V_M, V_X, V_X2 are found, also where the lattice relaxes around a V_M and where lone
 * chalcogens are rare beside a heavy-tailed pair level or read as SSe by the segmentation, a column
 * seen on an empty chalcogen site is the V_X2 it more probably is rather than a V_X, and no
 * site is both a
 * vacancy and a column; a contaminated half is helped by
 * the local noise estimate; two grains with swapped
 * sublattices are both right (components split); and ranks split by domain boxes with ghosts
 * give exactly the serial answer, also for vacancies right on the rank edges.
 * TMD_TEST_RANKS: 1 2 3 4
 * TMD_TEST_TIMEOUT: 300
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "tmd/classify.h"
#include "../src/classify/classify_internal.h"

typedef struct {
    double n_exp, x_w, y_se, p_vm, p_vx, p_vx2, noise_rel, noise_abs, period, rot;
    int size;        /* frame edge, px */
    int twin;        /* 1: right half has A and B swapped (mirror grain) */
    double patch_noise; /* extra additive noise (Mo units) on the left half: a contaminated patch */
    unsigned seed;
    int nlines;         /* every site within 1.5 px of x = line[k] is empty (V_M on A, V_X2 on B) */
    double line[8];
    double xtalk;       /* cross-talk: a chalcogen column loses xtalk x the sum of its bonded metals' levels */
    double relax;       /* px: each column bonded to a V_M is moved this far in a random direction (the
                           lattice relaxes around a vacancy) */
    double tail_frac, tail_sd; /* heavy tail: this share of the columns gets tail_sd x N(0,1) more
                                  (Mo units; contamination on a column, a missed background) */
    int vx2_seen;      /* 1: the atom finder reports a column on every V_X2 site (truth: empty), of
                          contrast vx2_level (Mo units) plus the additive noise: a probe tail or a
                          scatterer next to the empty site */
    double vx2_level;
    int nislet;         /* islets: the columns within 1.6 bond of (islet[k][0], islet[k][1]) are a mirror
                           grain (A and B swapped, shifted by 0.6 bond), the others within 3.7 bond are
                           left out: a few columns bonded to nothing around them */
    double islet[4][2];
} scene_t;

static int on_line(const scene_t *sc, double x)
{
    for (int k = 0; k < sc->nlines; k++)
        if (fabs(x - sc->line[k]) < 1.5) return 1;
    return 0;
}

typedef struct {
    int64_t n;
    double *x, *y;
    float *I;
    int8_t *sp, *sub;        /* truth */
    int64_t nv;
    double *vx, *vy;
    int8_t *vt;
} truth_t;

static double gauss01(unsigned *s)
{
    double u1 = tmd_test_randf(s) + 1e-9, u2 = tmd_test_randf(s);
    return sqrt(-2 * log(u1)) * cos(2 * M_PI * u2);
}

static void make_scene(const scene_t *sc, truth_t *t)
{
    memset(t, 0, sizeof *t);
    int cap = 20000;
    t->x = malloc(sizeof(double) * cap);
    t->y = malloc(sizeof(double) * cap);
    t->I = malloc(sizeof(float) * cap);
    t->sp = malloc(cap);
    t->sub = malloc(cap);
    t->vx = malloc(sizeof(double) * cap);
    t->vy = malloc(sizeof(double) * cap);
    t->vt = malloc(cap);
    unsigned s = sc->seed;
    double a1[2] = {sc->period * cos(sc->rot), sc->period * sin(sc->rot)};
    double a2[2] = {sc->period * cos(sc->rot + M_PI / 3), sc->period * sin(sc->rot + M_PI / 3)};
    double mo = pow(42, sc->n_exp), w = pow(74, sc->n_exp), S = pow(16, sc->n_exp), Se = pow(34, sc->n_exp);
    int nmax = (int)(2.5 * sc->size / sc->period);
    for (int i = -nmax; i <= nmax; i++)
        for (int j = -nmax; j <= nmax; j++)
            for (int b = 0; b < 2; b++) {
                double x = 7.1 + i * a1[0] + j * a2[0] + b * (a1[0] + a2[0]) / 3;
                double y = 4.3 + i * a1[1] + j * a2[1] + b * (a1[1] + a2[1]) / 3;
                if (x < 2 || y < 2 || x > sc->size - 3 || y > sc->size - 3) continue;
                int isA = b == 0;
                double bnd = sc->period / sqrt(3.0), dis = 1e30;
                for (int k = 0; k < sc->nislet; k++) dis = fmin(dis, hypot(x - sc->islet[k][0], y - sc->islet[k][1]));
                int islet = dis < 1.6 * bnd;
                if (!islet && dis < 3.7 * bnd) continue; /* the hole around an islet */
                if (islet || (sc->twin && x > sc->size / 2.0)) { /* mirror grain: sublattices swapped, */
                    isA = !isA;                                     /* shifted by 0.6 bond so no bond */
                    x += 0.6 * bnd;                                 /* crosses the boundary */
                }
                double Iv;
                int sp;
                if (on_line(sc, x)) {
                    t->vx[t->nv] = x;
                    t->vy[t->nv] = y;
                    t->vt[t->nv++] = isA ? TMD_DEF_VM : TMD_DEF_VX2;
                    continue;
                }
                if (isA) {
                    if (tmd_test_randf(&s) < sc->p_vm) {
                        t->vx[t->nv] = x;
                        t->vy[t->nv] = y;
                        t->vt[t->nv++] = TMD_DEF_VM;
                        continue;
                    }
                    int isw = tmd_test_randf(&s) < sc->x_w;
                    Iv = isw ? w : mo;
                    sp = isw ? TMD_SP_W : TMD_SP_MO;
                } else {
                    int nat = 0, nse = 0;
                    for (int k = 0; k < 2; k++) {
                        if (tmd_test_randf(&s) < sc->p_vx) continue;
                        nat++;
                        nse += tmd_test_randf(&s) < sc->y_se;
                    }
                    if (tmd_test_randf(&s) < sc->p_vx2) nat = 0;
                    if (nat == 0) {
                        t->vx[t->nv] = x;
                        t->vy[t->nv] = y;
                        t->vt[t->nv++] = TMD_DEF_VX2;
                        if (!sc->vx2_seen) continue;
                        t->x[t->n] = x + 0.15 * gauss01(&s);
                        t->y[t->n] = y + 0.15 * gauss01(&s);
                        t->I[t->n] = (float)(sc->vx2_level + sc->noise_abs * gauss01(&s));
                        t->sp[t->n] = TMD_SP_UNKNOWN;
                        t->sub[t->n++] = TMD_SUB_B;
                        continue;
                    }
                    Iv = nse * Se + (nat - nse) * S;
                    if (nat == 1) {
                        sp = nse ? TMD_SP_SE : TMD_SP_S;
                        t->vx[t->nv] = x;
                        t->vy[t->nv] = y;
                        t->vt[t->nv++] = TMD_DEF_VX;
                    } else sp = nse == 2 ? TMD_SP_SE2 : nse == 1 ? TMD_SP_SSE : TMD_SP_S2;
                }
                Iv = Iv / mo * (1 + sc->noise_rel * gauss01(&s)) + sc->noise_abs * gauss01(&s);
                if (sc->patch_noise > 0 && x < sc->size / 2.0) Iv += sc->patch_noise * gauss01(&s);
                if (sc->tail_frac > 0 && tmd_test_randf(&s) < sc->tail_frac) Iv += sc->tail_sd * gauss01(&s);
                t->x[t->n] = x + 0.15 * gauss01(&s);
                t->y[t->n] = y + 0.15 * gauss01(&s);
                t->I[t->n] = (float)Iv;
                t->sp[t->n] = (int8_t)sp;
                t->sub[t->n] = isA ? TMD_SUB_A : TMD_SUB_B;
                t->n++;
            }
    if (sc->relax > 0) {
        double bond = sc->period / sqrt(3.0);
        unsigned r = sc->seed + 1000;
        for (int64_t v = 0; v < t->nv; v++) {
            if (t->vt[v] != TMD_DEF_VM) continue;
            for (int64_t i = 0; i < t->n; i++) {
                double d = hypot(t->x[i] - t->vx[v], t->y[i] - t->vy[v]);
                if (d < 0.6 * bond || d > 1.3 * bond) continue;
                double ang = 2 * M_PI * tmd_test_randf(&r);
                t->x[i] += sc->relax * cos(ang);
                t->y[i] += sc->relax * sin(ang);
            }
        }
    }
    if (sc->xtalk != 0) { /* the measure's cross-talk: bright bonded metals lower a chalcogen */
        double bond = sc->period / sqrt(3.0), lw = w / mo;
        float *dI = calloc((size_t)t->n + 1, sizeof *dI);
        for (int64_t i = 0; i < t->n; i++) {
            if (t->sub[i] != TMD_SUB_B) continue;
            double nsum = 0;
            for (int64_t j = 0; j < t->n; j++) {
                double d = hypot(t->x[j] - t->x[i], t->y[j] - t->y[i]);
                if (t->sub[j] == TMD_SUB_A && d > 0.6 * bond && d < 1.3 * bond) nsum += t->sp[j] == TMD_SP_W ? lw : 1.0;
            }
            dI[i] = (float)(sc->xtalk * nsum);
        }
        for (int64_t i = 0; i < t->n; i++) t->I[i] -= dI[i];
        free(dI);
    }
}

static void free_truth(truth_t *t)
{
    free(t->x);
    free(t->y);
    free(t->I);
    free(t->sp);
    free(t->sub);
    free(t->vx);
    free(t->vy);
    free(t->vt);
}

static void lattice_of(const scene_t *sc, tmd_lattice *lat)
{
    double a1[2] = {sc->period * cos(sc->rot), sc->period * sin(sc->rot)};
    double a2[2] = {sc->period * cos(sc->rot + M_PI / 3), sc->period * sin(sc->rot + M_PI / 3)};
    double det = a1[0] * a2[1] - a1[1] * a2[0];
    double g1[2] = {a2[1] / det, -a2[0] / det}, g2[2] = {-a1[1] / det, a1[0] / det};
    memset(lat, 0, sizeof *lat);
    tmd_lattice_from_reciprocal(lat, g1, g2);
}

/* Owned atoms of box `own` (pixel rule) and ghosts within gd of it. */
static void split(const truth_t *t, const tmd_box *own, double gd, tmd_atom_table *a, tmd_atom_table *g, int64_t *map)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    for (int64_t i = 0; i < t->n; i++) {
        int64_t py = (int64_t)floor(t->y[i] + 0.5), px = (int64_t)floor(t->x[i] + 0.5);
        int mine = !own || (py >= own->lo[1] && py < own->hi[1] && px >= own->lo[2] && px < own->hi[2]);
        double dy = 0, dx = 0;
        if (own) {
            double ylo = own->lo[1] - 0.5, yhi = own->hi[1] - 0.5, xlo = own->lo[2] - 0.5, xhi = own->hi[2] - 0.5;
            dy = t->y[i] < ylo ? ylo - t->y[i] : t->y[i] >= yhi ? t->y[i] - yhi : 0;
            dx = t->x[i] < xlo ? xlo - t->x[i] : t->x[i] >= xhi ? t->x[i] - xhi : 0;
        }
        tmd_atom_table *dst = mine ? a : (hypot(dx, dy) <= gd ? g : NULL);
        if (!dst) continue;
        int64_t k;
        tmd_atom_table_push(&ctx, dst, &k);
        dst->frame[k] = 0;
        dst->x[k] = t->x[i];
        dst->y[k] = t->y[i];
        dst->intensity[k] = t->I[i];
        if (mine && map) map[k] = i;
    }
}

typedef struct {
    double acc, acc_metal, acc_chal, sub_acc;
    double f1[4];   /* by defect type 1..3 */
    int both;       /* V_M / V_X2 on a column of the table */
    tmd_classify_report rep;
} score_t;

static double f1(int tp, int fp, int fn) { return tp + fp + fn ? 2.0 * tp / (2.0 * tp + fp + fn) : 1.0; }

static double local_radius_override = -1; /* >= 0: run_serial uses it as opts.local_radius */
static int xtalk_override = -1;             /* >= 0: run_serial uses it as opts.xtalk */
static int misleading_vote = 0;             /* 1: segmentation probabilities say "brighter = metal" */
static int trained_vote = 0; /* 1: segmentation probabilities as the U-Net learnt them: the true column's class
                                0.6 (lone S painted S2, lone Se SSe, as in training), the others 0.08 */

/* Rows judged empty leave the table (order kept): map[k] (table row -> truth index) re-made
 * by position. */
static void remap(const truth_t *t, const tmd_atom_table *a, int64_t *map)
{
    int64_t q = 0;
    for (int64_t k = 0; k < a->n; k++) {
        while (t->x[map[q]] != a->x[k] || t->y[map[q]] != a->y[k]) q++;
        map[k] = map[q++];
    }
}

/* V_M / V_X2 reported within 0.3 bond of a column still in the table (a site cannot be both). */
static int both_empty_and_occupied(const tmd_atom_table *a, const tmd_defect_table *d, double bond)
{
    int c = 0;
    for (int64_t k = 0; k < d->n; k++) {
        if (d->type[k] == TMD_DEF_VX) continue;
        for (int64_t i = 0; i < a->n; i++)
            if (hypot(a->x[i] - d->x[k], a->y[i] - d->y[k]) < 0.3 * bond) {
                c++;
                break;
            }
    }
    return c;
}

static void run_serial(const scene_t *sc, int constraint, double pixel_size, score_t *out)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    truth_t t;
    make_scene(sc, &t);
    tmd_lattice lat;
    lattice_of(sc, &lat);
    tmd_atom_table a, g;
    tmd_atom_table_init(&a, misleading_vote || trained_vote ? TMD_NCLASSES : 0);
    tmd_atom_table_init(&g, misleading_vote || trained_vote ? TMD_NCLASSES : 0);
    int64_t *map = malloc(sizeof(int64_t) * (t.n + 1));
    split(&t, NULL, 0, &a, &g, map);
    if (misleading_vote) { /* a U-Net that learnt "brighter = metal": confident and wrong on MoSe2 */
        double thr = 0.5 * (pow(42, sc->n_exp) + 2 * pow(34, sc->n_exp)) / pow(42, sc->n_exp);
        for (int64_t k = 0; k < a.n; k++) {
            float *p = a.prob + k * TMD_NCLASSES;
            for (int c = 0; c < TMD_NCLASSES; c++) p[c] = 0.01f;
            p[a.intensity[k] > thr ? 1 : 4] = 0.95f;
        }
    }
    if (trained_vote) {
        static const int cls[8] = {0, 1, 2, 3, 4, 5, 3, 4}; /* species -> U-Net class (training labels) */
        for (int64_t k = 0; k < a.n; k++) {
            float *p = a.prob + k * TMD_NCLASSES;
            for (int c = 0; c < TMD_NCLASSES; c++) p[c] = 0.08f;
            p[cls[t.sp[map[k]]]] = 0.6f;
        }
    }
    tmd_defect_table d;
    tmd_defect_table_init(&d);
    tmd_classify_opts o;
    tmd_classify_opts_default(&o);
    o.constraint = constraint;
    o.pixel_size = pixel_size;
    if (local_radius_override >= 0) o.local_radius = local_radius_override;
    if (xtalk_override >= 0) o.xtalk = xtalk_override;
    memset(out, 0, sizeof *out);
    tmd_status st = tmd_classify(&ctx, MPI_COMM_SELF, &o, 1, &lat, NULL, sc->size, sc->size, &a, &g, &d, &out->rep);
    CU_ASSERT_EQUAL(st, TMD_OK);
    if (st) tmd_error_print(&ctx);
    CU_ASSERT_EQUAL(a.nprob, TMD_SP_COUNT);
    remap(&t, &a, map);
    out->both = both_empty_and_occupied(&a, &d, sc->period / sqrt(3.0));
    int ok = 0, okm = 0, nm = 0, okc = 0, nc = 0, oks = 0;
    for (int64_t k = 0; k < a.n; k++) {
        int64_t i = map[k];
        int good = a.species[k] == t.sp[i];
        ok += good;
        oks += a.sublattice[k] == t.sub[i];
        if (t.sub[i] == TMD_SUB_A) {
            nm++;
            okm += good;
        } else {
            nc++;
            okc += good;
        }
    }
    out->acc = (double)ok / a.n;
    out->acc_metal = nm ? (double)okm / nm : 1;
    out->acc_chal = nc ? (double)okc / nc : 1;
    out->sub_acc = (double)oks / a.n;
    /* vacancies matched within 0.5 bond, by type */
    double bond = sc->period / sqrt(3.0);
    for (int ty = 1; ty <= 3; ty++) {
        int tp = 0, fp = 0, fn = 0;
        char *used = calloc((size_t)t.nv + 1, 1);
        for (int64_t k = 0; k < d.n; k++) {
            if (d.type[k] != ty) continue;
            int hit = 0;
            for (int64_t v = 0; v < t.nv && !hit; v++)
                if (!used[v] && t.vt[v] == ty && hypot(t.vx[v] - d.x[k], t.vy[v] - d.y[k]) < 0.5 * bond) {
                    used[v] = 1;
                    hit = 1;
                }
            tp += hit;
            fp += !hit;
        }
        for (int64_t v = 0; v < t.nv; v++) {
            if (t.vt[v] != ty || used[v]) continue;
            /* truth vacancies near the frame edge are not expected */
            if (t.vx[v] < bond || t.vy[v] < bond || t.vx[v] > sc->size - 1 - bond || t.vy[v] > sc->size - 1 - bond) continue;
            fn++;
        }
        free(used);
        out->f1[ty] = f1(tp, fp, fn);
    }
    free(map);
    tmd_atom_table_free(&a);
    tmd_atom_table_free(&g);
    tmd_defect_table_free(&d);
    free_truth(&t);
}

static scene_t base_scene(void)
{
    scene_t s = {.n_exp = 1.7, .x_w = 0, .y_se = 0, .p_vm = 0, .p_vx = 0, .p_vx2 = 0, .noise_rel = 0.06,
                 .noise_abs = 0.03, .period = 18.0, .rot = 0.3, .size = 400, .twin = 0, .seed = 1};
    return s;
}

/* Pure binaries come out as themselves from the contrast physics alone: MoS2 (metal 2.6x
 * brighter), WSe2 (1.9x), MoSe2 (chalcogen brighter than metal), WS2, at exponents 1.6-1.8.
 * Without a known pixel size the exponent is free, and a pure binary's one contrast ratio can
 * be read two ways (MoS2 at n gives the ratio of WSe2 at 1.24 n: WSe2 n 1.8 = MoS2 n 1.45,
 * MoS2 n 1.6 = WSe2 n 1.99): those cases are decided by the lattice constant (Vegard) when the
 * pixel size is known; cases whose twin lies far out in the exponent prior (1.85 +- 0.25)
 * must come out right without it. */
static void test_pure_compounds(void)
{
    if (tmd_test_rank) return;
    struct {
        double x, y, n;
        const char *name;
        int unambiguous;
    } cases[] = {{0, 0, 1.7, "MoS2", 1},       {1, 1, 1.7, "WSe2", 1},         {0, 1, 1.7, "MoSe2", 1},
                 {1, 0, 1.7, "WS2", 1},        {0, 0, 1.6, "MoS2 n1.6", 0},   {1, 1, 1.8, "WSe2 n1.8", 0},
                 {0, 1, 1.8, "MoSe2 n1.8", 1}, {0, 0, 1.45, "MoS2 n1.45", 0}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
        for (int known = 0; known < 2; known++) {
            scene_t s = base_scene();
            s.x_w = cases[c].x;
            s.y_se = cases[c].y;
            s.n_exp = cases[c].n;
            s.seed = 10 + (unsigned)c;
            score_t r;
            double px = known ? tmd_lattice_vegard(s.x_w, s.y_se) / s.period : 0.0;
            run_serial(&s, 1, px, &r);
            fprintf(stderr, "%-11s %s species %.3f metal %.3f chalc %.3f sublattice %.3f  fit n %.2f x %.2f y %.2f\n",
                    cases[c].name, known ? "px known" : "px free ", r.acc, r.acc_metal, r.acc_chal, r.sub_acc,
                    r.rep.n_exponent, r.rep.x_w, r.rep.y_se);
            CU_ASSERT(r.sub_acc >= 0.99);
            if (known || cases[c].unambiguous) CU_ASSERT(r.acc >= 0.97);
        }
    /* MoSe2 with segmentation probabilities that call every bright (Se2) column Mo and every
     * dim (Mo) column SSe: the contrast likelihood decides, the vote only breaks ties (the
     * summed vote swapped the sublattices of whole MoSe2 images, validation F1) */
    for (int known = 0; known < 2; known++) {
        scene_t s = base_scene();
        s.y_se = 1;
        s.seed = 12;
        score_t r;
        misleading_vote = 1;
        run_serial(&s, 1, known ? tmd_lattice_vegard(0, 1) / s.period : 0.0, &r);
        misleading_vote = 0;
        fprintf(stderr, "MoSe2, misleading vote, %s: species %.3f sublattice %.3f\n", known ? "px known" : "px free ",
                r.acc, r.sub_acc);
        CU_ASSERT(r.sub_acc >= 0.99);
        CU_ASSERT(r.acc >= 0.97);
    }
}

/* Random alloys and vacancies: species accuracy >= 0.9 overall; V_M, V_X >= 0.9 F1, V_X2 >= 0.8;
 * turning the constraint off costs accuracy (the ablation's direction). */
static void test_alloys_and_vacancies(void)
{
    if (tmd_test_rank) return;
    double xs[] = {0.3, 0.0, 0.5}, ys[] = {0.0, 0.5, 0.3};
    for (int c = 0; c < 3; c++) {
        scene_t s = base_scene();
        s.x_w = xs[c];
        s.y_se = ys[c];
        s.p_vm = 0.02;
        s.p_vx = 0.03;
        s.p_vx2 = 0.01;
        s.seed = 40 + (unsigned)c;
        score_t on, off;
        run_serial(&s, 1, 0, &on);
        run_serial(&s, 0, 0, &off);
        fprintf(stderr, "fit n %.2f x %.2f y %.2f | ", on.rep.n_exponent, on.rep.x_w, on.rep.y_se);
        fprintf(stderr, "x %.1f y %.1f: species on %.3f (metal %.3f chalc %.3f) off %.3f; F1 V_M %.3f V_X %.3f V_X2 %.3f\n",
                xs[c], ys[c], on.acc, on.acc_metal, on.acc_chal, off.acc, on.f1[1], on.f1[2], on.f1[3]);
        CU_ASSERT(on.acc >= 0.9);
        CU_ASSERT(on.acc >= off.acc);
        CU_ASSERT(on.f1[1] >= 0.9);
        CU_ASSERT(on.f1[2] >= 0.85);
        CU_ASSERT(on.f1[3] >= 0.8);
        CU_ASSERT_EQUAL(on.both, 0); /* no site both empty and occupied (validation F8) */
    }
}

/* Metal vacancies whose three bonded chalcogens are each moved 0.2 bond in a random direction
 * (the held-out simulator relaxes the lattice around a vacancy): the empty site is still
 * proposed and found. Each chalcogen proposes its missing metal along the lattice's bond vector
 * rotated like its measured bonds; the earlier proposal, minus the sum of its two measured bonds,
 * added two neighbours' displacements, the three proposals fell > 0.45 bond apart and most such
 * sites were never proposed (V_M F1 0.14 here at 7093ff7, 0.95 now; moved 0.3 bond: 0.00 and 0.82). */
static void test_relaxed_vacancies(void)
{
    if (tmd_test_rank) return;
    scene_t s = base_scene();
    s.x_w = 0.3;
    s.p_vm = 0.03;
    s.seed = 61;
    s.relax = 0.2 * s.period / sqrt(3.0);
    score_t r;
    run_serial(&s, 1, 0, &r);
    fprintf(stderr, "relaxed V_M neighbours (0.2 bond): F1 V_M %.3f, species %.3f\n", r.f1[1], r.acc);
    CU_ASSERT(r.f1[1] >= 0.9);
    CU_ASSERT(r.acc >= 0.97);
    CU_ASSERT_EQUAL(r.both, 0);
}

/* Rare lone chalcogens beside a dominant level with a heavy tail (MoSe2 600 x 600 px, 0.2 % of the
 * Se atoms missing: ~0.4 % of the ~1300 B columns a lone Se, 8 core noise sd below Se2; 20 % of
 * the columns with 0.3 of a Mo column more noise): the fitted lone rate must not collapse into
 * Se2's broad component. Plain EM did (held-out 7001 / 7109: v at its floor 0.001, every lone Se
 * called Se2 or SSe); the Beta prior on the lone share (LONE_K pseudo-columns, em_fit) keeps the
 * level. Measured (debug build, TMD_VK): V_X F1 of the three seeds 0.29 / 0.00 / 0.29 (mean 0.19)
 * without the prior, 0.40 / 0.40 / 0.83 (mean 0.54) with LONE_K 5. */
static void test_rare_lone_chalcogens(void)
{
    if (tmd_test_rank) return;
    double sum = 0;
    for (int c = 0; c < 3; c++) {
        scene_t s = base_scene();
        s.y_se = 1;
        s.n_exp = 1.8;
        s.p_vx = 0.002;
        s.tail_frac = 0.2;
        s.tail_sd = 0.3;
        s.seed = 120 + (unsigned)c;
        s.size = 600;
        score_t r;
        run_serial(&s, 1, tmd_lattice_vegard(0, 1) / s.period, &r);
        fprintf(stderr, "rare lone Se, seed %u: species %.3f chalc %.3f V_X F1 %.3f\n", s.seed, r.acc, r.acc_chal, r.f1[2]);
        CU_ASSERT(r.acc >= 0.95);
        sum += r.f1[2];
    }
    fprintf(stderr, "rare lone Se: mean V_X F1 %.3f\n", sum / 3);
    CU_ASSERT(sum / 3 >= 0.4);
}

/* Lone Se in a Se-rich alloy (y 0.85, 3 % of the chalcogen atoms missing, additive noise 0.08 of
 * a Mo column) with segmentation probabilities as the U-Net learnt them: it cannot tell a lone Se
 * from SSe (both painted SSe in training) and says so. The stage must read a lone Se's opinion from
 * the SSe class; read from Se2 (as before), the U-Net's opinion counted against every lone Se.
 * Measured V_X F1 of the three seeds: 0.59 / 0.55 / 0.51 (mean 0.55) with the Se2 reading,
 * 0.69 / 0.67 / 0.79 (mean 0.71) now. */
static void test_lone_se_opinion(void)
{
    if (tmd_test_rank) return;
    double sum = 0;
    for (int c = 0; c < 3; c++) {
        scene_t s = base_scene();
        s.x_w = 0.3;
        s.y_se = 0.85;
        s.p_vx = 0.03;
        s.seed = 140 + (unsigned)c;
        s.noise_abs = 0.08;
        score_t r;
        trained_vote = 1;
        run_serial(&s, 1, tmd_lattice_vegard(s.x_w, s.y_se) / s.period, &r);
        trained_vote = 0;
        fprintf(stderr, "lone Se, U-Net opinion, seed %u: species %.3f chalc %.3f V_X F1 %.3f\n", s.seed, r.acc, r.acc_chal, r.f1[2]);
        sum += r.f1[2];
    }
    fprintf(stderr, "lone Se, U-Net opinion: mean V_X F1 %.3f\n", sum / 3);
    CU_ASSERT(sum / 3 >= 0.63);
}

/* MoS2 scene s at seeds seed0 .. seed0 + 2 with the pixel size given: the means of V_X2 F1, V_X F1
 * and species accuracy (each seed printed under `what`; no site both empty and occupied). */
static void seen_vx2_means(scene_t s, unsigned seed0, const char *what, double *vx2, double *vx, double *species)
{
    double s2 = 0, sx = 0, sa = 0;
    for (int c = 0; c < 3; c++) {
        s.seed = seed0 + (unsigned)c;
        score_t r;
        run_serial(&s, 1, tmd_lattice_vegard(0, 0) / s.period, &r);
        fprintf(stderr, "%s, seed %u: species %.3f chalc %.3f V_X F1 %.3f V_X2 F1 %.3f\n", what, s.seed, r.acc,
                r.acc_chal, r.f1[2], r.f1[3]);
        CU_ASSERT_EQUAL(r.both, 0);
        s2 += r.f1[3];
        sx += r.f1[2];
        sa += r.acc;
    }
    *vx2 = s2 / 3, *vx = sx / 3, *species = sa / 3;
    fprintf(stderr, "%s: mean V_X2 F1 %.3f V_X F1 %.3f species %.3f\n", what, *vx2, *vx, *species);
}

/* Detected columns on empty chalcogen sites (MoS2, 4 % of the S atoms missing, 3 % of the B
 * sites empty, each of these seen as a column at 0.05 of a Mo column, additive noise 0.06: the
 * held-out low-dose images, where empty sites measured 0.03-0.05 against a lone S at 0.16-0.19).
 * Such a column is closer to "empty" than to a lone S, but its P(empty) rarely reaches the 0.85
 * that protects a dark S2, and the species argmax named it S: a false V_X and a missed V_X2.
 * A B column called S / Se is now reported as V_X2 where "empty" is more probable than a single
 * chalcogen. Measured (debug build, TMD_VX2MAP=0 / 1), mean of the three seeds: V_X2 F1
 * 0.57 -> 0.71 (seeds 0.71 / 0.62 / 0.38 -> 0.79 / 0.63 / 0.71), V_X F1 0.690 -> 0.698, species
 * 0.974 -> 0.977. */
static void test_vx2_or_vx(void)
{
    if (tmd_test_rank) return;
    scene_t s = base_scene();
    s.p_vx = 0.04;
    s.p_vx2 = 0.03;
    s.noise_abs = 0.06;
    s.vx2_seen = 1;
    s.vx2_level = 0.05;
    double vx2, vx, species;
    seen_vx2_means(s, 160, "seen V_X2 sites", &vx2, &vx, &species);
    CU_ASSERT(vx2 >= 0.65);
    CU_ASSERT(vx >= 0.66);
    CU_ASSERT(species >= 0.97);
}

/* Rare V_X2 sites seen as columns under heavy noise (the extsim MoS2 regime: 0.6 % of the B sites
 * empty, each seen as a column at 0.045 of a Mo column, 3 % of the S atoms missing, additive noise
 * 0.06 against a lone S at 0.145 (exponent 2): amorphous carbon at 0.25 of an S2 peak). The EM
 * fit cannot see a few empty columns under the lone-S level and drives their share to its floor,
 * so a column measured at 0 was named S; the decision's prior on "empty" is now floored at 0.01
 * (EX_FLOOR). Measured (debug build, TMD_EXF=0 / default 0.01), seeds 180-182: V_X2 F1 0.00 / 0.44 /
 * 0.10 (mean 0.18) -> 0.41 / 0.69 / 0.24 (mean 0.45), V_X F1 0.565 -> 0.559, species 0.975 ->
 * 0.976; the V_X2 assertion fails with TMD_EXF=0. */
static void test_rare_seen_vx2(void)
{
    if (tmd_test_rank) return;
    scene_t s = base_scene();
    s.n_exp = 2.0;
    s.p_vx = 0.03;
    s.p_vx2 = 0.006;
    s.noise_abs = 0.06;
    s.vx2_seen = 1;
    s.vx2_level = 0.045;
    s.size = 800;
    double vx2, vx, species;
    seen_vx2_means(s, 180, "rare seen V_X2", &vx2, &vx, &species);
    CU_ASSERT(vx2 >= 0.35);
    CU_ASSERT(vx >= 0.53);
    CU_ASSERT(species >= 0.97);
}

/* A contaminated half (extra additive noise 0.12 of a Mo column on the left): the local noise
 * measured from the metal columns' residuals makes the dirty half lean on the fitted
 * composition, so species and single-chalcogen vacancies there are better than with one global
 * noise level (local_radius 0) on the alloys (measured 0.953 vs 0.949 for y = 0, 0.942 vs
 * 0.937 for y = 0.5; pure Se2 0.996 vs 0.998); the alloy test's thresholds hold with it on. */
static void test_contaminated_patch(void)
{
    if (tmd_test_rank) return;
    double ys[] = {0.0, 0.5, 1.0}, sum_on = 0, sum_off = 0;
    for (int c = 0; c < 3; c++) {
        scene_t s = base_scene();
        s.x_w = 0.3;
        s.y_se = ys[c];
        s.p_vx = 0.03;
        s.patch_noise = 0.12;
        s.seed = 90 + (unsigned)c;
        score_t on, off;
        run_serial(&s, 1, 0, &on);
        local_radius_override = 0;
        run_serial(&s, 1, 0, &off);
        local_radius_override = -1;
        fprintf(stderr, "patch y %.1f: local noise on: species %.3f chalc %.3f V_X F1 %.3f | off: species %.3f chalc %.3f V_X F1 %.3f\n",
                ys[c], on.acc, on.acc_chal, on.f1[2], off.acc, off.acc_chal, off.f1[2]);
        CU_ASSERT(on.acc_chal >= off.acc_chal - 0.005); /* pure Se2: one column either way */
        CU_ASSERT(on.acc >= 0.9);
        sum_on += on.acc_chal;
        sum_off += off.acc_chal;
    }
    CU_ASSERT(sum_on > sum_off);
}

/* A mirror grain (A and B swapped in the right half) is its own component and comes out right. */
static void test_twin_grains(void)
{
    if (tmd_test_rank) return;
    scene_t s = base_scene();
    s.twin = 1;
    s.seed = 77;
    score_t r;
    run_serial(&s, 1, 0, &r);
    fprintf(stderr, "twin: species %.3f sublattice %.3f components %lld conflicts %lld\n", r.acc, r.sub_acc,
            (long long)r.rep.n_components, (long long)r.rep.n_conflicts);
    CU_ASSERT(r.sub_acc >= 0.97);
    CU_ASSERT(r.acc >= 0.95);
}

/* Domains split over the ranks (vertical strips of unequal width), ghosts within the
 * documented distance: every rank's atoms get exactly the serial species, sublattice and
 * probabilities, and the vacancies found over all ranks are the serial ones. */
static int min_fit_override = -1; /* >= 0: ranks_agree uses it as opts.min_fit_atoms */

static void ranks_agree(scene_t s)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    tmd_classify_opts opts, *op = NULL;
    if (min_fit_override >= 0) {
        tmd_classify_opts_default(&opts);
        opts.min_fit_atoms = min_fit_override;
        op = &opts;
    }
    truth_t t;
    make_scene(&s, &t);
    tmd_lattice lat;
    lattice_of(&s, &lat);
    double gd = tmd_classify_ghost_distance(&lat);
    /* serial, on every rank */
    tmd_atom_table sa, sg;
    tmd_atom_table_init(&sa, 0);
    tmd_atom_table_init(&sg, 0);
    int64_t *smap = malloc(sizeof(int64_t) * (t.n + 1));
    split(&t, NULL, 0, &sa, &sg, smap);
    tmd_defect_table sd;
    tmd_defect_table_init(&sd);
    CU_ASSERT_EQUAL_FATAL(tmd_classify(&ctx, MPI_COMM_SELF, op, 1, &lat, NULL, s.size, s.size, &sa, &sg, &sd, NULL), TMD_OK);
    /* parallel: strips with boundaries at uneven places */
    tmd_box own;
    memset(&own, 0, sizeof own);
    own.lo[0] = 0;
    own.hi[0] = 1;
    own.lo[1] = 0;
    own.hi[1] = s.size;
    own.lo[2] = (int64_t)s.size * tmd_test_rank * tmd_test_rank / (tmd_test_size * tmd_test_size);
    own.hi[2] = (int64_t)s.size * (tmd_test_rank + 1) * (tmd_test_rank + 1) / (tmd_test_size * tmd_test_size);
    tmd_atom_table pa, pg;
    tmd_atom_table_init(&pa, 0);
    tmd_atom_table_init(&pg, 0);
    int64_t *pmap = malloc(sizeof(int64_t) * (t.n + 1));
    split(&t, &own, gd, &pa, &pg, pmap);
    tmd_defect_table pd;
    tmd_defect_table_init(&pd);
    CU_ASSERT_EQUAL_FATAL(tmd_classify(&ctx, tmd_test_comm, op, 1, &lat, &own, s.size, s.size, &pa, &pg, &pd, NULL), TMD_OK);
    remap(&t, &sa, smap);
    remap(&t, &pa, pmap);
    int64_t *inv = malloc(sizeof(int64_t) * (t.n + 1));
    for (int64_t i = 0; i <= t.n; i++) inv[i] = -1;
    for (int64_t k = 0; k < sa.n; k++) inv[smap[k]] = k;
    int diff = 0;
    for (int64_t k = 0; k < pa.n; k++) {
        int64_t j = inv[pmap[k]];
        if (j < 0) { /* kept here, removed in the serial run */
            diff++;
            continue;
        }
        if (pa.species[k] != sa.species[j] || pa.sublattice[k] != sa.sublattice[j] ||
            memcmp(pa.prob + k * TMD_SP_COUNT, sa.prob + j * TMD_SP_COUNT, sizeof(float) * TMD_SP_COUNT))
            diff++;
    }
    int diff_all = 0; /* summed, so rank 0's report names the test whatever rank differs */
    MPI_Allreduce(&diff, &diff_all, 1, MPI_INT, MPI_SUM, tmd_test_comm);
    if (diff_all && tmd_test_rank == 0) printf("\n    %d atoms differ from the serial run\n", diff_all);
    CU_ASSERT_EQUAL(diff_all, 0);
    int64_t kept = pa.n, kept_all = 0; /* rows judged empty are removed on every rank alike */
    MPI_Allreduce(&kept, &kept_all, 1, MPI_INT64_T, MPI_SUM, tmd_test_comm);
    CU_ASSERT_EQUAL(kept_all, sa.n);
    int64_t nd = pd.n, ndef = 0;
    MPI_Allreduce(&nd, &ndef, 1, MPI_INT64_T, MPI_SUM, tmd_test_comm);
    CU_ASSERT_EQUAL(ndef, sd.n);
    int missing = 0;
    for (int64_t k = 0; k < pd.n; k++) {
        int found = 0;
        for (int64_t q = 0; q < sd.n && !found; q++)
            found = sd.type[q] == pd.type[k] && fabs(sd.x[q] - pd.x[k]) < 1e-9 && fabs(sd.y[q] - pd.y[k]) < 1e-9;
        missing += !found;
    }
    CU_ASSERT_EQUAL(missing, 0);
    free(inv);
    free(smap);
    free(pmap);
    tmd_atom_table_free(&sa);
    tmd_atom_table_free(&sg);
    tmd_atom_table_free(&pa);
    tmd_atom_table_free(&pg);
    tmd_defect_table_free(&sd);
    tmd_defect_table_free(&pd);
    free_truth(&t);
}

static void test_ranks_agree(void)
{
    scene_t s = base_scene();
    s.x_w = 0.2;
    s.y_se = 0.4;
    s.p_vm = 0.02;
    s.p_vx = 0.03;
    s.p_vx2 = 0.01;
    s.seed = 99;
    ranks_agree(s);
}

/* Step 6's second pass at several ranks: a frame whose components are all smaller than
 * min_fit_atoms has them fitted from 8 atoms up. With min_fit_atoms above the crystal's size the
 * whole crystal, one component spanning every rank's strip (a cross component), is fitted there:
 * by one rank, the model shared with the others (session 11). The answer must be the serial one.
 * Checked to fail (session 11) with the cross components skipped in the second pass: "1102 atoms
 * differ from the serial run" at 2 ranks. */
static void test_second_pass_ranks(void)
{
    scene_t s = base_scene();
    s.x_w = 0.3;
    s.p_vm = 0.01;
    s.p_vx = 0.03;
    s.seed = 17;
    min_fit_override = 1000000;
    ranks_agree(s);
    min_fit_override = -1;
}

static scene_t xtalk_scene(void)
{
    scene_t s = base_scene();
    s.x_w = 0.5;
    s.p_vm = 0.01;
    s.p_vx = 0.03;
    s.p_vx2 = 0.01;
    s.xtalk = 0.03;
    s.seed = 7;
    return s;
}

/* The cross-talk correction (tmd_classify_opts.xtalk): a Mo0.5W0.5S2 alloy whose chalcogen
 * columns lose 0.03 x the sum of their bonded metals' levels (an S2 column among three W
 * falls to the level of a lone S: what the fitted amplitude does next to bright metals).
 * Without the correction many S2 columns are called S (V_X); with it the slope is found and
 * removed and the chalcogen sublattice comes out right. In a pure MoS2 crystal with the same
 * cross-talk (all N alike: the exponent takes the shift) the correction does not run: the
 * answer is that of xtalk = 0. And the split over 2-4 ranks gives exactly the serial answer
 * with the correction running (the slope's sums are integers summed over ranks). */
static void test_crosstalk(void)
{
    scene_t s = xtalk_scene();
    if (!tmd_test_rank) {
        score_t off, on;
        xtalk_override = 0;
        run_serial(&s, 1, 0, &off);
        xtalk_override = 1;
        run_serial(&s, 1, 0, &on);
        xtalk_override = -1;
        printf("\n  cross-talk alloy: species %.4f -> %.4f, chalcogen %.4f -> %.4f, V_X F1 %.3f -> %.3f\n", off.acc, on.acc,
               off.acc_chal, on.acc_chal, off.f1[TMD_DEF_VX], on.f1[TMD_DEF_VX]);
        CU_ASSERT(off.acc_chal < 0.9);
        CU_ASSERT(on.acc_chal >= 0.97);
        CU_ASSERT(on.acc_metal >= 0.97);
        CU_ASSERT(on.f1[TMD_DEF_VX] > off.f1[TMD_DEF_VX]);
        scene_t p = s;
        p.x_w = 0;
        xtalk_override = 0;
        run_serial(&p, 1, 0, &off);
        xtalk_override = 1;
        run_serial(&p, 1, 0, &on);
        xtalk_override = -1;
        CU_ASSERT_EQUAL(off.acc, on.acc);
        CU_ASSERT_EQUAL(off.f1[TMD_DEF_VX], on.f1[TMD_DEF_VX]);
        CU_ASSERT_EQUAL(off.f1[TMD_DEF_VX2], on.f1[TMD_DEF_VX2]);
    }
    ranks_agree(s);
}

/* Islets near the rank edges: a few columns of a mirror grain in a hole of the crystal, bonded to
 * nothing around them, owned by one rank and within the ghost distance of the next (ranks_agree's
 * strips: edges at x = 100 for 2 and 4 ranks, 178 for 3). The owner's islet is a small component
 * of owned atoms with no ghost bond; the next rank holds the same columns as ghosts only. Each
 * must be linked to the other (one cross component, fitted from the owner's histogram): else the
 * ghosts' component was fitted from an empty histogram, took the other colour as metal, and its
 * chalcogens entered the local noise of the neighbouring columns there as metals, so those got
 * other probabilities than in a serial run (contaminated half: the local noise counts). Without
 * the link this failed at 2, 3 and 4 ranks (tmdflow's held 2048^2 seed 4242 image had it too:
 * two columns near a rank edge, 2 ranks in memory). */
static void test_islets_on_rank_edge(void)
{
    scene_t s = base_scene();
    s.x_w = 0.3;
    s.p_vx = 0.03;
    s.patch_noise = 0.12;
    s.seed = 91;
    double bond = s.period / sqrt(3.0);
    s.nislet = 2;
    s.islet[0][0] = 100 - 2.5 * bond, s.islet[0][1] = 200;
    s.islet[1][0] = 400.0 * 4 / 9 - 2.5 * bond, s.islet[1][1] = 300;
    ranks_agree(s);
}

/* Vacancies exactly on the rank edges (the pixel rule's boundary x = lo - 0.5 of 2, 3 and 4
 * equal strips): a site's proposals (its neighbours' missing bond partners, sd ~ 0.5 px) fall
 * on both sides of the edge. Each rank must see all of them, average, and own the site by the
 * averaged position: every planted V_M / V_X2 is found once, of its type, at exactly the
 * serial position, at any rank count (filtering the proposals by ownership before averaging
 * moved such a site or lost it, depending on the number of ranks). */
static void test_vacancy_on_rank_edge(void)
{
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    scene_t s = base_scene();
    s.x_w = 0.2;
    s.y_se = 0.4;
    s.seed = 7;
    const double edges[5] = {100, 133, 200, 266, 300}; /* strips of 400 px over 2, 3, 4 ranks */
    s.nlines = 5;
    for (int k = 0; k < 5; k++) s.line[k] = edges[k] - 0.5;
    truth_t t;
    make_scene(&s, &t);
    tmd_lattice lat;
    lattice_of(&s, &lat);
    double gd = tmd_classify_ghost_distance(&lat), bond = s.period / sqrt(3.0);
    tmd_atom_table sa, sg;
    tmd_atom_table_init(&sa, 0);
    tmd_atom_table_init(&sg, 0);
    split(&t, NULL, 0, &sa, &sg, NULL);
    tmd_defect_table sd;
    tmd_defect_table_init(&sd);
    CU_ASSERT_EQUAL_FATAL(tmd_classify(&ctx, MPI_COMM_SELF, NULL, 1, &lat, NULL, s.size, s.size, &sa, &sg, &sd, NULL), TMD_OK);
    /* the serial run finds every planted vacancy, of its type */
    int planted = 0, found = 0;
    for (int64_t v = 0; v < t.nv; v++) {
        /* (sites within a bond of the frame edge are not looked for) */
        if (!on_line(&s, t.vx[v]) || t.vy[v] < bond || t.vy[v] > s.size - 1 - bond) continue;
        planted++;
        for (int64_t q = 0; q < sd.n; q++)
            if (sd.type[q] == t.vt[v] && hypot(sd.x[q] - t.vx[v], sd.y[q] - t.vy[v]) < 0.3 * bond) {
                found++;
                break;
            }
    }
    CU_ASSERT(planted >= 15);
    CU_ASSERT_EQUAL(found, planted);
    tmd_box own;
    memset(&own, 0, sizeof own);
    own.hi[0] = 1;
    own.hi[1] = s.size;
    own.lo[2] = (int64_t)s.size * tmd_test_rank / tmd_test_size;
    own.hi[2] = (int64_t)s.size * (tmd_test_rank + 1) / tmd_test_size;
    tmd_atom_table pa, pg;
    tmd_atom_table_init(&pa, 0);
    tmd_atom_table_init(&pg, 0);
    split(&t, &own, gd, &pa, &pg, NULL);
    tmd_defect_table pd;
    tmd_defect_table_init(&pd);
    CU_ASSERT_EQUAL_FATAL(tmd_classify(&ctx, tmd_test_comm, NULL, 1, &lat, &own, s.size, s.size, &pa, &pg, &pd, NULL), TMD_OK);
    /* all ranks' vacancies together are exactly the serial ones */
    int64_t nd = pd.n, ndef = 0;
    MPI_Allreduce(&nd, &ndef, 1, MPI_INT64_T, MPI_SUM, tmd_test_comm);
    CU_ASSERT_EQUAL(ndef, sd.n);
    int missing = 0;
    for (int64_t k = 0; k < pd.n; k++) {
        int hit = 0;
        for (int64_t q = 0; q < sd.n && !hit; q++)
            hit = sd.type[q] == pd.type[k] && fabs(sd.x[q] - pd.x[k]) < 1e-9 && fabs(sd.y[q] - pd.y[k]) < 1e-9;
        missing += !hit;
    }
    int missing_all = 0;
    MPI_Allreduce(&missing, &missing_all, 1, MPI_INT, MPI_SUM, tmd_test_comm);
    CU_ASSERT_EQUAL(missing_all, 0);
    if (tmd_test_rank == 0)
        printf("\n    rank edge: %d planted on the edges, %d found serially; %lld vacancies serial, %lld over %d ranks, "
               "%d not at a serial position\n", planted, found, (long long)sd.n, (long long)ndef, tmd_test_size, missing_all);
    tmd_atom_table_free(&sa);
    tmd_atom_table_free(&sg);
    tmd_atom_table_free(&pa);
    tmd_atom_table_free(&pg);
    tmd_defect_table_free(&sd);
    tmd_defect_table_free(&pd);
    free_truth(&t);
}

/* ---- held-neighbour column contrast (tmd_classify_opts.held_gate; the stage's measure) ---- */

static double poisson(unsigned *s, double lam)
{
    if (lam > 30) return fmax(0, lam + sqrt(lam) * gauss01(s));
    double L = exp(-lam), p = 1;
    int k = 0;
    do {
        k++;
        p *= tmd_test_randf(s);
    } while (p > L);
    return k - 1;
}

typedef struct {
    int n;
    double *x, *y;
    int *sub; /* 0: A (metal, amplitude 1), 1: B (S2, amplitude 0.5) */
} held_scene_t;

/* A MoS2-like honeycomb (period 16 px, Gaussian columns of 0.23 bond) on 0.05 background, at
 * `dose` counts per unit, Poisson noise; with clutter > 0 also column-scale structure: blobs of
 * 0.3 bond and amplitude up to clutter at random places (contamination). Detected positions
 * are the true ones plus 0.3 px of scatter. */
static float *held_image(int size, double dose, double clutter, unsigned seed, held_scene_t *sc)
{
    const double P = 16, bond = P / sqrt(3.0), s = 0.23 * bond;
    double a1[2] = {P, 0}, a2[2] = {P * 0.5, P * sqrt(3.0) / 2};
    float *img = calloc((size_t)size * size, sizeof *img);
    double *clean = calloc((size_t)size * size, sizeof *clean);
    int cap = 4 * (int)(size * size / (P * P)) + 64;
    sc->x = calloc((size_t)cap, sizeof(double));
    sc->y = calloc((size_t)cap, sizeof(double));
    sc->sub = calloc((size_t)cap, sizeof(int));
    sc->n = 0;
    unsigned r = seed;
    for (int i = -4; i < size / P + 4; i++)
        for (int j = -4; j < size / P + 4; j++)
            for (int b = 0; b < 2; b++) {
                double x = 3 + i * a1[0] + j * a2[0] + b * (a1[0] + a2[0]) / 3;
                double y = 3 + i * a1[1] + j * a2[1] + b * (a1[1] + a2[1]) / 3;
                if (x < -8 || y < -8 || x > size + 8 || y > size + 8) continue;
                double amp = b ? 0.5 : 1.0;
                for (int yy = (int)y - 8; yy <= (int)y + 8; yy++)
                    for (int xx = (int)x - 8; xx <= (int)x + 8; xx++)
                        if (yy >= 0 && xx >= 0 && yy < size && xx < size)
                            clean[yy * size + xx] += amp * exp(-((xx - x) * (xx - x) + (yy - y) * (yy - y)) / (2 * s * s));
                if (x < 2 || y < 2 || x > size - 3 || y > size - 3 || sc->n >= cap) continue;
                sc->x[sc->n] = x + 0.3 * gauss01(&r);
                sc->y[sc->n] = y + 0.3 * gauss01(&r);
                sc->sub[sc->n++] = b;
            }
    for (int k = 0; clutter > 0 && k < size * size / 40; k++) {
        double cx = size * tmd_test_randf(&r), cy = size * tmd_test_randf(&r), am = clutter * tmd_test_randf(&r);
        double cs = 0.3 * bond;
        for (int yy = (int)cy - 8; yy <= (int)cy + 8; yy++)
            for (int xx = (int)cx - 8; xx <= (int)cx + 8; xx++)
                if (yy >= 0 && xx >= 0 && yy < size && xx < size)
                    clean[yy * size + xx] += am * exp(-((xx - cx) * (xx - cx) + (yy - cy) * (yy - cy)) / (2 * cs * cs));
    }
    for (int k = 0; k < size * size; k++) img[k] = (float)(poisson(&r, dose * (clean[k] + 0.05)) / dose);
    free(clean);
    return img;
}

static void held_scene_free(held_scene_t *sc)
{
    free(sc->x), free(sc->y), free(sc->sub);
}

/* sd of the contrast of the interior B (S2) columns */
static double held_sd(const held_scene_t *sc, const float *c, int size)
{
    double s1 = 0, s2 = 0;
    int k = 0;
    for (int i = 0; i < sc->n; i++) {
        if (!sc->sub[i] || sc->x[i] < 20 || sc->y[i] < 20 || sc->x[i] > size - 20 || sc->y[i] > size - 20) continue;
        s1 += c[i], s2 += (double)c[i] * c[i], k++;
    }
    return k > 1 ? sqrt((s2 - s1 * s1 / k) / (k - 1)) : NAN;
}

/* The stage's held-neighbour contrast on synthetic images (tmd_cls_held_image: the stage's own
 * measure, pass 1, gate, pass 2): with Poisson noise only (dose 15 / unit) the gate holds and
 * the held contrast of the pure S2 class scatters less than the free one (shot noise of the six
 * place terms no longer enters); with column-scale clutter at a high dose the free place terms
 * soak up structure, the gate does not hold and the contrast is the free one, value for value.
 * Split by x over the ranks (owned atoms by the pixel rule, the rest as ghosts), the contrast
 * and the gate are bitwise those of one rank (the gate's medians are summed over ranks). */
static void test_held_contrast(void)
{
    const int size = 224;
    tmd_ctx ctx;
    tmd_test_ctx(&ctx);
    double P = 16;
    tmd_lattice lat;
    {
        double a1[2] = {P, 0}, a2[2] = {P * 0.5, P * sqrt(3.0) / 2}, det = a1[0] * a2[1] - a1[1] * a2[0];
        double g1[2] = {a2[1] / det, -a2[0] / det}, g2[2] = {-a1[1] / det, a1[0] / det};
        memset(&lat, 0, sizeof lat);
        tmd_lattice_from_reciprocal(&lat, g1, g2);
    }
    for (int cl = 0; cl < 2; cl++) {
        held_scene_t sc;
        float *img = held_image(size, cl ? 3000 : 15, cl ? 0.6 : 0, 9001 + cl, &sc);
        float *fr = calloc((size_t)sc.n + 1, sizeof *fr), *hd = calloc((size_t)sc.n + 1, sizeof *hd);
        tmd_box all = {{0, 0, 0}, {1, size, size}};
        int hold = -1;
        double stat = NAN;
        CU_ASSERT_EQUAL(tmd_cls_held_image(&ctx, MPI_COMM_SELF, img, size, size, &lat, 0.23, 1.4, &all, sc.n, sc.x, sc.y,
                                           0, NULL, NULL, fr, hd, &hold, &stat), TMD_OK);
        double sdf = held_sd(&sc, fr, size), sdh = held_sd(&sc, hd, size);
        int same = 1;
        for (int i = 0; i < sc.n; i++) same &= fr[i] == hd[i];
        if (tmd_test_rank == 0)
            printf("\n    held contrast, %s: %d atoms, gate statistic %.2f (hold %d), S2 sd free %.4f held %.4f%s",
                   cl ? "clutter" : "Poisson", sc.n, stat, hold, sdf, sdh, cl ? "\n" : "");
        if (cl == 0) {
            CU_ASSERT_EQUAL(hold, 1);
            CU_ASSERT(sdh < 0.9 * sdf);
            CU_ASSERT(!same);
        } else {
            CU_ASSERT_EQUAL(hold, 0);
            CU_ASSERT(same);
        }
        /* ranks: strips in x */
        int P_ = tmd_test_size, R_ = tmd_test_rank;
        int64_t x0 = (int64_t)size * R_ / P_, x1 = (int64_t)size * (R_ + 1) / P_;
        tmd_box own = {{0, 0, x0}, {1, size, x1}};
        double *ox = calloc((size_t)sc.n + 1, sizeof(double)), *oy = calloc((size_t)sc.n + 1, sizeof(double));
        double *gx = calloc((size_t)sc.n + 1, sizeof(double)), *gy = calloc((size_t)sc.n + 1, sizeof(double));
        int *idx = calloc((size_t)sc.n + 1, sizeof(int));
        int n = 0, m = 0;
        for (int i = 0; i < sc.n; i++) {
            int64_t px = (int64_t)floor(sc.x[i] + 0.5);
            if (px >= x0 && px < x1) ox[n] = sc.x[i], oy[n] = sc.y[i], idx[n++] = i;
            else gx[m] = sc.x[i], gy[m] = sc.y[i], m++;
        }
        float *pf = calloc((size_t)n + 1, sizeof *pf), *ph = calloc((size_t)n + 1, sizeof *ph);
        float *allh = calloc((size_t)sc.n + 1, sizeof *allh);
        int hold_r = -1;
        double stat_r = NAN;
        CU_ASSERT_EQUAL(tmd_cls_held_image(&ctx, tmd_test_comm, img, size, size, &lat, 0.23, 1.4, &own, n, ox, oy, m, gx,
                                           gy, pf, ph, &hold_r, &stat_r), TMD_OK);
        for (int k = 0; k < n; k++) allh[idx[k]] = ph[k];
        MPI_Allreduce(MPI_IN_PLACE, allh, sc.n, MPI_FLOAT, MPI_SUM, tmd_test_comm); /* each atom on one rank */
        int diff = 0;
        for (int i = 0; i < sc.n; i++) diff += allh[i] != hd[i];
        CU_ASSERT_EQUAL(diff, 0);
        CU_ASSERT_EQUAL(hold_r, hold);
        CU_ASSERT(stat_r == stat);
        free(ox), free(oy), free(gx), free(gy), free(idx), free(pf), free(ph), free(allh);
        free(fr), free(hd), free(img);
        held_scene_free(&sc);
    }
}

int main(int argc, char **argv)
{
    return tmd_test_main(argc, argv, "classify",
                         (tmd_test_case[]){{"pure compounds from physics", test_pure_compounds},
                                           {"alloys, constraint, vacancies", test_alloys_and_vacancies},
                                           {"contaminated patch", test_contaminated_patch},
                                           {"mirror grains", test_twin_grains},
                                           {"ranks agree with serial", test_ranks_agree},
                                           {"second fit pass across ranks", test_second_pass_ranks},
                                           {"cross-talk correction", test_crosstalk},
                                           {"vacancy on a rank edge", test_vacancy_on_rank_edge},
                                           {"islets on a rank edge", test_islets_on_rank_edge},
                                           {"vacancies in a relaxed lattice", test_relaxed_vacancies},
                                           {"held-neighbour contrast and its gate", test_held_contrast},
                                           {"rare lone chalcogens", test_rare_lone_chalcogens},
                                           {"lone Se and the U-Net's opinion", test_lone_se_opinion},
                                           {"V_X2 or V_X on a seen empty site", test_vx2_or_vx},
                                           {"rare V_X2 seen as columns, heavy noise", test_rare_seen_vx2},
                                           {NULL, NULL}});
}
