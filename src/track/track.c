/* Lattice-site ids for the atoms of every frame (see tmd/track.h). */
#include "tmd/track.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define NB 60                  /* phase histogram bins per axis */
#define FIX 1073741824.0       /* 2^30: fixed point of phase sums (exact integer reductions) */

int64_t tmd_site_pack(int64_t i, int64_t j, int sublattice)
{
    return ((i + ((int64_t)1 << 30)) << 32) | ((j + ((int64_t)1 << 29)) << 2) | (int64_t)(sublattice & 3);
}

void tmd_site_unpack(int64_t id, int64_t *i, int64_t *j, int *sublattice)
{
    *i = (id >> 32) - ((int64_t)1 << 30);
    *j = ((id >> 2) & 0x3FFFFFFF) - ((int64_t)1 << 29);
    *sublattice = (int)(id & 3);
}

void tmd_track_site_xy(const tmd_track_basis *b, int64_t id, double *x, double *y)
{
    int64_t i, j;
    int s;
    tmd_site_unpack(id, &i, &j, &s);
    double U = (double)i + (s == 2 ? b->c : 0), V = (double)j + (s == 2 ? b->c : 0);
    *x = b->origin[0] + U * b->a1[0] + V * b->a2[0];
    *y = b->origin[1] + U * b->a1[1] + V * b->a2[1];
}

/* Fractional coordinates of (x, y) - o in the basis (a1, a2). */
static void frac(const double a1[2], const double a2[2], const double o[2], double x, double y, double *u, double *v)
{
    double det = a1[0] * a2[1] - a2[0] * a1[1];
    x -= o[0];
    y -= o[1];
    *u = (a2[1] * x - a2[0] * y) / det;
    *v = (-a1[1] * x + a1[0] * y) / det;
}

int64_t tmd_track_nearest(const tmd_track_basis *b, double x, double y, double *dist)
{
    double u, v;
    frac(b->a1, b->a2, b->origin, x, y, &u, &v);
    int64_t best = -1;
    double bd = INFINITY;
    for (int s = 1; s <= 2; s++) {
        double off = s == 2 ? b->c : 0;
        int64_t i0 = (int64_t)llround(u - off), j0 = (int64_t)llround(v - off);
        /* the nearest lattice point is within one step of the rounded fractional position */
        for (int di = -1; di <= 1; di++)
            for (int dj = -1; dj <= 1; dj++) {
                double U = (double)(i0 + di) + off, V = (double)(j0 + dj) + off;
                double sx = b->origin[0] + U * b->a1[0] + V * b->a2[0] - x;
                double sy = b->origin[1] + U * b->a1[1] + V * b->a2[1] - y;
                double d = sqrt(sx * sx + sy * sy);
                if (d < bd) { bd = d; best = tmd_site_pack(i0 + di, j0 + dj, s); }
            }
    }
    if (dist) *dist = bd;
    return best;
}

static double wrap01(double f) { return f - floor(f); }

static int bin_of(double f)
{
    int k = (int)floor(wrap01(f) * NB);
    return k < 0 ? 0 : k >= NB ? NB - 1 : k;
}

/* Sum of a circular 3x3 neighbourhood of bin (bu, bv) of an NB x NB histogram. */
static int64_t hsum3(const int64_t *h, int bu, int bv)
{
    int64_t s = 0;
    for (int du = -1; du <= 1; du++)
        for (int dv = -1; dv <= 1; dv++) s += h[((bu + du + NB) % NB) * NB + (bv + dv + NB) % NB];
    return s;
}

static double circ_dist(double a, double b)
{
    double d = wrap01(a - b);
    return d > 0.5 ? 1 - d : d;
}

/* Least squares p0 = o + U a1 + V a2 (+ c on B) over atoms near their sites (0.35 bond), `iters`
 * times. drift == NULL: the frame-0 atoms. Otherwise the drift-corrected atoms of every frame
 * (p0 = p - drift[frame]) within R of (cx, cy). The origin stays near the atoms' centre of mass
 * through U, V, so the normal equations are well conditioned. Collective. */
static tmd_status ls_refine(tmd_ctx *ctx, MPI_Comm comm, const tmd_atom_table *atoms, const double *drift, int64_t T,
                            double cx, double cy, double R, int iters, tmd_track_basis *out)
{
    tmd_status st = TMD_OK;
    for (int iter = 0; iter < iters; iter++) {
        double bond = sqrt(pow((out->a1[0] + out->a2[0]) / 3, 2) + pow((out->a1[1] + out->a2[1]) / 3, 2));
        out->bond = bond;
        double S[13] = {0}; /* n, U, V, UU, UV, VV, X, UX, VX, Y, UY, VY, r^2 */
        /* two passes: the largest |term| of each sum (every rank), then the terms in fixed
         * point at a scale that cannot overflow (int64, exact and associative): the same sums,
         * so the same basis, to the last bit on any rank count */
        double mx[14] = {0};  /* max |term| of each sum, then the atom count in [13] */
        int64_t Q[13] = {0};
        double scale[13];
        for (int pass = 0; pass < 2; pass++) {
            for (int64_t k = 0; k < atoms->n; k++) {
                double X = atoms->x[k], Y = atoms->y[k];
                if (!drift) {
                    if (atoms->frame[k] != 0) continue;
                } else {
                    int64_t t = atoms->frame[k];
                    if (t < 0 || t >= T) continue;
                    X -= drift[2 * t];
                    Y -= drift[2 * t + 1];
                    if ((X - cx) * (X - cx) + (Y - cy) * (Y - cy) > R * R) continue;
                }
                double d;
                int64_t id = tmd_track_nearest(out, X, Y, &d);
                if (d > 0.35 * bond) continue;
                int64_t i, j;
                int s;
                tmd_site_unpack(id, &i, &j, &s);
                double U = (double)i + (s == 2 ? out->c : 0), V = (double)j + (s == 2 ? out->c : 0);
                double v[13] = {1, U, V, U * U, U * V, V * V, X, U * X, V * X, Y, U * Y, V * Y, d * d};
                if (pass == 0) {
                    for (int c = 0; c < 13; c++)
                        if (fabs(v[c]) > mx[c]) mx[c] = fabs(v[c]);
                    mx[13] += 1;
                } else {
                    for (int c = 0; c < 13; c++) Q[c] += llround(v[c] * scale[c]);
                }
            }
            if (pass == 0) {
                st = TMD_MPI(ctx, MPI_Allreduce(MPI_IN_PLACE, mx, 13, MPI_DOUBLE, MPI_MAX, comm));
                if (!st) st = TMD_MPI(ctx, MPI_Allreduce(MPI_IN_PLACE, mx + 13, 1, MPI_DOUBLE, MPI_SUM, comm));
                if (st) return st;
                /* |sum| <= max |term| x atoms < 2^61 after scaling (llround adds at most 0.5 a term) */
                for (int c = 0; c < 13; c++) {
                    double bound = mx[c] * (mx[13] + 1) + 1;
                    int e = 0;
                    frexp(bound, &e); /* bound < 2^e */
                    scale[c] = ldexp(1.0, e < 61 - 40 ? 40 : 61 - e);
                }
            }
        }
        st = TMD_MPI(ctx, MPI_Allreduce(MPI_IN_PLACE, Q, 13, MPI_INT64_T, MPI_SUM, comm));
        if (st) return st;
        for (int c = 0; c < 13; c++) S[c] = (double)Q[c] / scale[c];
        out->n_fit = (int64_t)S[0];
        out->rms_px = S[0] > 0 ? sqrt(S[12] / S[0]) : 0;
        if (S[0] < 8) break;
        /* solve [n U V; U UU UV; V UV VV] [o a1 a2] = [X UX VX] (and Y) by Cramer's rule */
        double m[3][3] = {{S[0], S[1], S[2]}, {S[1], S[3], S[4]}, {S[2], S[4], S[5]}};
        double D = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0]) +
                   m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
        if (!(fabs(D) > 1e-9 * S[0] * S[3] * S[5])) break; /* atoms on one line: keep the given vectors */
        for (int c = 0; c < 2; c++) {
            double r[3] = {S[6 + 3 * c], S[7 + 3 * c], S[8 + 3 * c]}, sol[3];
            for (int q = 0; q < 3; q++) {
                double mm[3][3];
                memcpy(mm, m, sizeof mm);
                for (int row = 0; row < 3; row++) mm[row][q] = r[row];
                sol[q] = (mm[0][0] * (mm[1][1] * mm[2][2] - mm[1][2] * mm[2][1]) -
                          mm[0][1] * (mm[1][0] * mm[2][2] - mm[1][2] * mm[2][0]) +
                          mm[0][2] * (mm[1][0] * mm[2][1] - mm[1][1] * mm[2][0])) / D;
            }
            out->origin[c] = sol[0];
            out->a1[c] = sol[1];
            out->a2[c] = sol[2];
        }
    }
    return TMD_OK;
}

tmd_status tmd_track_basis_fit(tmd_ctx *ctx, MPI_Comm comm, const tmd_atom_table *atoms, const double a1[2],
                               const double a2[2], tmd_track_basis *out)
{
    tmd_status st = TMD_OK;
    int64_t *hist = NULL; /* (3, NB, NB): labels A, B, all */
    memset(out, 0, sizeof *out);
    double det = a1[0] * a2[1] - a2[0] * a1[1];
    if (!(fabs(det) > 1e-6)) st = TMD_FAIL(ctx, TMD_ERR_ARG, "track: lattice vectors (%g, %g), (%g, %g) are degenerate", a1[0], a1[1], a2[0], a2[1]);
    if (!st) st = tmd_calloc(ctx, (void **)&hist, 3 * NB * NB, sizeof(int64_t), "track phase histogram");
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    /* a 120-degree basis becomes the 60-degree one (B sites then sit at c (a1 + a2)) */
    double b1[2] = {a1[0], a1[1]}, b2[2] = {a2[0], a2[1]};
    if (b1[0] * b2[0] + b1[1] * b2[1] < 0) { b2[0] += b1[0]; b2[1] += b1[1]; }
    a1 = b1;
    a2 = b2;
    const double zero[2] = {0, 0};
    for (int64_t k = 0; k < atoms->n; k++) {
        if (atoms->frame[k] != 0) continue;
        double u, v;
        frac(a1, a2, zero, atoms->x[k], atoms->y[k], &u, &v);
        int b = bin_of(u) * NB + bin_of(v);
        int s = atoms->sublattice[k];
        if (s == TMD_SUB_A) hist[b]++;
        if (s == TMD_SUB_B) hist[NB * NB + b]++;
        hist[2 * NB * NB + b]++;
    }
    st = TMD_MPI(ctx, MPI_Allreduce(MPI_IN_PLACE, hist, 3 * NB * NB, MPI_INT64_T, MPI_SUM, comm));
    if (st) goto cleanup;
    int64_t nA = 0, nB = 0, nall = 0;
    for (int b = 0; b < NB * NB; b++) { nA += hist[b]; nB += hist[NB * NB + b]; nall += hist[2 * NB * NB + b]; }
    if (nall < 8) {
        st = TMD_FAIL(ctx, TMD_ERR_NOLATTICE, "track: frame 0 has %lld atoms; at least 8 are needed to fix the lattice sites",
                      (long long)nall);
        goto cleanup;
    }
    int useA = nA >= 4;
    const int64_t *hA = useA ? hist : hist + 2 * NB * NB;
    int bu = 0, bv = 0;
    int64_t best = -1;
    for (int u = 0; u < NB; u++)
        for (int v = 0; v < NB; v++) {
            int64_t s = hsum3(hA, u, v);
            if (s > best) { best = s; bu = u; bv = v; }
        }
    double pu = (bu + 0.5) / NB, pv = (bv + 0.5) / NB;
    /* B at +1/3 or +2/3 of (1, 1): whichever holds more (B-labelled, or all) atoms */
    const int64_t *hB = nB >= 4 ? hist + NB * NB : hist + 2 * NB * NB;
    int64_t s13 = hsum3(hB, bin_of(pu + 1.0 / 3), bin_of(pv + 1.0 / 3));
    int64_t s23 = hsum3(hB, bin_of(pu + 2.0 / 3), bin_of(pv + 2.0 / 3));
    out->c = s13 >= s23 ? 1.0 / 3 : 2.0 / 3;
    /* circular mean of the A phase in fixed point (exact, rank-count independent) */
    int64_t cs[5] = {0, 0, 0, 0, 0};
    for (int64_t k = 0; k < atoms->n; k++) {
        if (atoms->frame[k] != 0 || (useA && atoms->sublattice[k] != TMD_SUB_A)) continue;
        double u, v;
        frac(a1, a2, zero, atoms->x[k], atoms->y[k], &u, &v);
        if (circ_dist(u, pu) > 0.15 || circ_dist(v, pv) > 0.15) continue;
        cs[0] += llround(cos(2 * M_PI * u) * FIX);
        cs[1] += llround(sin(2 * M_PI * u) * FIX);
        cs[2] += llround(cos(2 * M_PI * v) * FIX);
        cs[3] += llround(sin(2 * M_PI * v) * FIX);
        cs[4]++;
    }
    st = TMD_MPI(ctx, MPI_Allreduce(MPI_IN_PLACE, cs, 5, MPI_INT64_T, MPI_SUM, comm));
    if (st) goto cleanup;
    double phu = atan2((double)cs[1], (double)cs[0]) / (2 * M_PI);
    double phv = atan2((double)cs[3], (double)cs[2]) / (2 * M_PI);
    memcpy(out->a1, a1, sizeof out->a1);
    memcpy(out->a2, a2, sizeof out->a2);
    out->origin[0] = phu * a1[0] + phv * a2[0];
    out->origin[1] = phu * a1[1] + phv * a2[1];
    /* least squares over the frame-0 atoms near their sites */
    st = ls_refine(ctx, comm, atoms, NULL, 0, 0, 0, 0, 3, out);
    if (st) goto cleanup;
    tmd_debug(ctx, "track: basis a1 (%.4f, %.4f) a2 (%.4f, %.4f) origin (%.3f, %.3f) c %.3f from %lld atoms, rms %.3f px",
              out->a1[0], out->a1[1], out->a2[0], out->a2[1], out->origin[0], out->origin[1], out->c,
              (long long)out->n_fit, out->rms_px);
cleanup:
    free(hist);
    return st;
}

tmd_status tmd_track_basis_fit_stack(tmd_ctx *ctx, MPI_Comm comm, const tmd_atom_table *atoms, const double a1[2],
                                     const double a2[2], const double *drift, int64_t T, tmd_track_basis *out)
{
    TMD_CHECK(tmd_track_basis_fit(ctx, comm, atoms, a1, a2, out));
    if (!drift || T < 2) return TMD_OK;
    /* the region the frame-0 atoms cover: centre and radius (exact reductions) */
    int64_t q[3] = {0, 0, 0}; /* sum x, sum y in 1/16 px, count */
    for (int64_t k = 0; k < atoms->n; k++) {
        if (atoms->frame[k] != 0) continue;
        q[0] += llround(atoms->x[k] * 16);
        q[1] += llround(atoms->y[k] * 16);
        q[2]++;
    }
    TMD_CHECK(TMD_MPI(ctx, MPI_Allreduce(MPI_IN_PLACE, q, 3, MPI_INT64_T, MPI_SUM, comm)));
    double cx = q[2] ? q[0] / 16.0 / q[2] : 0, cy = q[2] ? q[1] / 16.0 / q[2] : 0, r[2] = {0, 0};
    /* the frame-0 least squares fixes the phase, but its vectors are only as good as frame 0's
     * atoms span: on a strip (a film edge) one component is barely constrained (512 x 1000 stack
     * of seed 201, the run's atoms: a1 off by 1.5 px, a third of all atoms then off their sites).
     * Start the growing refinement from the given vectors instead (the caller's stack-wide
     * estimate, tmd_track_median_vectors), each matched to the frame-0 basis vector it is
     * nearest to among the six of its star, anchored at the site nearest the frame-0 centroid. */
    {
        double bo = sqrt(pow((a1[0] + a2[0]) / 3, 2) + pow((a1[1] + a2[1]) / 3, 2));
        double p1[2] = {a1[0], a1[1]}, p2[2] = {a2[0], a2[1]};
        double star[6][2] = {{p1[0], p1[1]}, {-p1[0], -p1[1]}, {p2[0], p2[1]}, {-p2[0], -p2[1]},
                             {p2[0] - p1[0], p2[1] - p1[1]}, {p1[0] - p2[0], p1[1] - p2[1]}};
        if (p1[0] * p2[0] + p1[1] * p2[1] < 0) { /* a 120-degree pair: the third star vector is the sum */
            star[4][0] = p1[0] + p2[0]; star[4][1] = p1[1] + p2[1];
            star[5][0] = -star[4][0]; star[5][1] = -star[4][1];
        }
        double n1[2] = {0, 0}, n2[2] = {0, 0}, e1 = INFINITY, e2 = INFINITY;
        for (int k = 0; k < 6; k++) {
            double d1 = hypot(star[k][0] - out->a1[0], star[k][1] - out->a1[1]);
            double d2 = hypot(star[k][0] - out->a2[0], star[k][1] - out->a2[1]);
            if (d1 < e1) { e1 = d1; n1[0] = star[k][0]; n1[1] = star[k][1]; }
            if (d2 < e2) { e2 = d2; n2[0] = star[k][0]; n2[1] = star[k][1]; }
        }
        if (bo > 0 && e1 < 0.5 * bo && e2 < 0.5 * bo) {
            double d;
            int64_t i, j;
            int sl;
            tmd_site_unpack(tmd_track_nearest(out, cx, cy, &d), &i, &j, &sl);
            double U = (double)i + (sl == 2 ? out->c : 0), V = (double)j + (sl == 2 ? out->c : 0);
            double X = out->origin[0] + U * out->a1[0] + V * out->a2[0], Y = out->origin[1] + U * out->a1[1] + V * out->a2[1];
            out->a1[0] = n1[0]; out->a1[1] = n1[1];
            out->a2[0] = n2[0]; out->a2[1] = n2[1];
            out->origin[0] = X - U * n1[0] - V * n2[0];
            out->origin[1] = Y - U * n1[1] - V * n2[1];
        }
    }
    for (int64_t k = 0; k < atoms->n; k++) {
        int64_t t = atoms->frame[k];
        if (t < 0 || t >= T) continue;
        double X = atoms->x[k] - drift[2 * t], Y = atoms->y[k] - drift[2 * t + 1];
        double d = sqrt((X - cx) * (X - cx) + (Y - cy) * (Y - cy));
        if (t == 0 && d > r[0]) r[0] = d;
        if (d > r[1]) r[1] = d;
    }
    TMD_CHECK(TMD_MPI(ctx, MPI_Allreduce(MPI_IN_PLACE, r, 2, MPI_DOUBLE, MPI_MAX, comm)));
    /* grow the region by factors of 2 from frame 0's, refining on the atoms of every frame
     * inside it (drift-corrected), so the basis is measured where it is used, not extrapolated
     * from frame 0 (a frame 0 that is mostly vacuum gives a few atoms on a strip) */
    double R = 2 * (r[0] > 4 * out->bond ? r[0] : 4 * out->bond);
    int64_t n0 = out->n_fit;
    for (int round = 0; round < 24; round++) {
        TMD_CHECK(ls_refine(ctx, comm, atoms, drift, T, cx, cy, R, 2, out));
        if (R > r[1]) break;
        R *= 2;
    }
    tmd_debug(ctx, "track: basis refined on every frame's drift-corrected atoms: %lld atoms (frame 0: %lld), rms %.3f px",
              (long long)out->n_fit, (long long)n0, out->rms_px);
    return TMD_OK;
}

/* Angle of v in degrees, in [0, 360). */
static double angle_deg(const double v[2])
{
    double a = atan2(v[1], v[0]) * 180.0 / M_PI;
    return a < 0 ? a + 360.0 : a;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int tmd_track_median_vectors(const double *a1s, const double *a2s, int64_t T, double a1[2], double a2[2])
{
    double *c = malloc(sizeof(double) * 4 * (size_t)(T > 0 ? T : 1));
    if (!c) return 0;
    int64_t m = 0;
    for (int64_t t = 0; t < T; t++) {
        const double *p = a1s + 2 * t, *q = a2s + 2 * t;
        double det = p[0] * q[1] - p[1] * q[0];
        if (!(fabs(det) > 1e-6) || !isfinite(det)) continue;
        /* the hexagonal star: +-a1, +-a2, +-(a1 + a2), +-(a1 - a2); its six shortest vectors */
        double v[8][2] = {{p[0], p[1]}, {-p[0], -p[1]}, {q[0], q[1]}, {-q[0], -q[1]}, {p[0] + q[0], p[1] + q[1]},
                          {-p[0] - q[0], -p[1] - q[1]}, {p[0] - q[0], p[1] - q[1]}, {q[0] - p[0], q[1] - p[1]}};
        double l[8];
        for (int k = 0; k < 8; k++) l[k] = hypot(v[k][0], v[k][1]);
        /* drop the longest pair: the two of largest length */
        int drop1 = 0;
        for (int k = 1; k < 8; k++) if (l[k] > l[drop1]) drop1 = k;
        int drop2 = drop1 ^ 1;
        int k1 = -1, k2 = -1;
        for (int k = 0; k < 8; k++) {
            if (k == drop1 || k == drop2) continue;
            double a = angle_deg(v[k]);
            if (a < 60.0 && k1 < 0) k1 = k;
            else if (a >= 60.0 && a < 120.0 && k2 < 0) k2 = k;
        }
        if (k1 < 0 || k2 < 0) continue;
        c[4 * m] = v[k1][0]; c[4 * m + 1] = v[k1][1]; c[4 * m + 2] = v[k2][0]; c[4 * m + 3] = v[k2][1];
        m++;
    }
    if (m == 0) { free(c); return 0; }
    double *col = malloc(sizeof(double) * (size_t)m), out[4];
    if (!col) { free(c); return 0; }
    for (int j = 0; j < 4; j++) {
        for (int64_t t = 0; t < m; t++) col[t] = c[4 * t + j];
        qsort(col, (size_t)m, sizeof(double), cmp_double);
        out[j] = m % 2 ? col[m / 2] : 0.5 * (col[m / 2 - 1] + col[m / 2]);
    }
    free(col);
    free(c);
    a1[0] = out[0]; a1[1] = out[1]; a2[0] = out[2]; a2[1] = out[3];
    return (int)(m > 0x7fffffff ? 0x7fffffff : m);
}

tmd_status tmd_track_assign(tmd_ctx *ctx, const tmd_track_basis *b, const double *drift, int64_t T, double tol,
                            tmd_atom_table *atoms)
{
    for (int64_t k = 0; k < atoms->n; k++) {
        int64_t t = atoms->frame[k];
        if (t < 0 || t >= T)
            return TMD_FAIL(ctx, TMD_ERR_RANGE, "track: atom %lld is in frame %lld, but the drift covers frames 0..%lld",
                            (long long)k, (long long)t, (long long)T - 1);
        double d;
        int64_t id = tmd_track_nearest(b, atoms->x[k] - drift[2 * t], atoms->y[k] - drift[2 * t + 1], &d);
        atoms->site[k] = d <= tol * b->bond ? id : -1;
    }
    return TMD_OK;
}
