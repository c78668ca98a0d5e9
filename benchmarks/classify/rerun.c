/* classify_rerun: re-runs the classify stage offline on saved inputs and scores it against the
 * simulator's truth, so a change to the contrast model can be judged on many held-out images in
 * seconds instead of a pipeline run each.
 *
 *   Faithful figures: save the inputs with the build under test (benchmarks/classify/save_inputs.sh)
 *   and run without H_REMEASURE: species / chalcogen are then accuracy.sh's "given" figures to the
 *   last digit. H_REMEASURE on inputs saved by an older build re-measures with this file's copy of
 *   the measure, which is not the stage's (session 7: a change looked +0.0013 on block 2 that way,
 *   +0.0004 end to end).
 *   1. Save the stage's inputs with a debug build (one rank):
 *        cmake -S . -B build-dbg -DCMAKE_C_FLAGS=-DTMD_CLASSIFY_DEBUG && cmake --build build-dbg
 *        TMD_CLASSIFY_SAVE=in_7001.bin build-dbg/tmdflow run sim_7001.h5:/image -o r.h5
 *      (lattice, atoms with their contrast and segmentation probabilities, pixel size if given)
 *   2. build-dbg/benchmarks/classify_rerun OUTDIR in_7001.bin:sim_7001.h5 in_7002.bin:sim_7002.h5 ...
 *      prints per image the fitted exponent / composition and the scores (species, metal,
 *      chalcogen, V_M / V_X / V_X2 F1, detection F1), then the pooled figures. OUTDIR gets
 *      h_<sim>.h5 (/atoms, /defects) for `tmdflow score`.
 *   Environment: H_PXTRUE=1 gives tmd_classify the truth file's pixel size (as --pixel-size),
 *   H_PX=A a pixel size, H_CONSTRAINT=0|1, H_CONF=1 prints the pooled confusion matrix; the
 *   debug build's TMD_* knobs of classify.c pass through. Vacancy sites are measured on the
 *   truth file's /image with the stage's contrast measure (copied from stage_classify.c: the
 *   column amplitude fitted with the profile, its six neighbour places and a plane over a disc
 *   of 0.6 bond; the profile width from the mean radial profile of all columns of the image,
 *   where the stage takes the central 2048^2 px and sums quantised pixels); H_REMEASURE=1
 *   re-measures every atom with it (the saved contrast is the one of the build that saved it),
 *   H_OLD=1 selects the measure before 2026-11-26 (Gaussian-weighted mean, sigma H_SIGMA = 0.1
 *   bond, minus the mean of the three lowest of the six places one bond away), H_SP=s fixes the
 *   profile width (bond), H_SPF=f scales the measured one. The centre refinement (stage:
 *   column_shift, since 2026-11-26 session 6) is on by default: H_RC=0 turns it off (the measure
 *   of 512c12a), H_RC=k refines k times (each step capped at H_RCSTEP 0.1 bond, in all at
 *   H_RCMAX 0.25), H_RCTAU=t the shift's prior (0.1 bond; 0: no shrinkage), H_RCFIX=1 keeps the
 *   six places where the detected centre put them, H_RCATOMS=1 refines only the detected atoms
 *   (not the empty sites), H_DER=1 keeps the two derivative terms in the amplitude's fit instead
 *   of moving, H_RCDUMP=file appends "x y x_refined y_refined amplitude" per measured column.
 *   H_RCW=1 fits the shift with the shot-noise weights (tried: no gain).
 *   H_PRED=1 measures every atom at the site its bonded neighbours predict (H_PREDW=w: the
 *   detected centre as w more votes); refined after that unless H_RC=0 (tried: V_X2 loses).
 *   H_TRUEPOS=r (oracle) measures every atom at the true column within r bond (the truth file's
 *   /atoms). The result files carry /atoms/intensity (the contrast the model saw). A truth file without /image (e.g.
 *   extsim's IMAGE.tif.truth.h5) runs without the vacancy measurement, unless H_IMG=DIR names
 *   the directory of the image (DIR/IMAGE.tif: the truth file's name minus .truth.h5).
 * Cross-talk: since session 6 the stage corrects it itself (tmd_classify_opts.xtalk, default on,
 * the H_XS=1 H_XSG=1 H_XSX=0.05 variant below with the regression on integer histograms and N
 * from the first pass's A sites); H_NOXT=1 turns the stage's correction off. Any of the
 * variants below (H_XS, H_XR, H_XT, H_TAIL) turns it off too, so they are measured alone.
 * Cross-talk variants (2026-11-26, session 5):
 *   H_XS=k  two passes: classify, then regress the chalcogens' amplitude on N, the sum of the
 *           amplitudes of their bonded metals (atoms 0.6-1.3 bond away classified Mo/W), one
 *           slope pooled within species groups (H_XSG=1: S with S2 and Se with SSe, so the
 *           S <-> S2 boundary does not select on the amplitude), trimmed at 3 robust sd, interior
 *           atoms; a negative slope c times k is removed in full (amplitude - c N), the empty
 *           sites measured in pass 2 with N > H_XSM (2) x the median metal amplitude get the
 *           same; H_XSX=q applies it only where pass 1 found a metal alloy (W fraction in
 *           (q, 1 - q)), else the slope is not identifiable and the exponent takes the bias.
 *   H_XR=k  the same without labels (chalcogen-like: amplitude < N / 3), about the median N
 *           (H_XR0=1: in full), H_XRL=R on deviations from the means within R bond;
 *   H_XT=c  a fixed c x (sum of the six fitted neighbour-place amplitudes) added;
 *   H_TAIL=t two-component profile g(s) + B g(t s) for the column and its neighbour places, B
 *           fitted on the radial profile (H_TAILF=B fixes it); H_NSPFAUTO=1 the neighbour
 *           profile's width factor (1.0 .. H_NSPFMAX) with the least residual over all fits.
 * Neighbours held (issue #7, 2026-11-26 session 7; needs H_REMEASURE=1): H_JOINT=1 refits each
 * atom's amplitude with the six places held at the pass-1 amplitudes of the atoms there (0 where
 * none) and a constant background; H_JOINT=2 the held part with one free factor; H_JOINT=3 the
 * stage's free fit with an empirical-Bayes prior towards the held values; H_JGATE=g holds only in
 * images where the free - held differences are noise-like; H_JDUMP=file "x y amplitude lsq_sd" per
 * atom; H_JRS=1 (with H_JGATE) holds the places at r x their amplitude, r the median free / held
 * ratio (session 8, held-out hard_MoS2 of benchmarks/accuracy: species 0.9041 held, 0.9049 with
 * H_JRS, 0.9138 free: the tails are not a uniform scale). Details at g_jon below; findings in notes/joint.md (statistical variance of the S2
 * amplitude halved, observed spread not: contamination and column scatter dominate).
 * GLS column measure (session 9, helper gls; needs H_REMEASURE=1, screening only, not in the stage):
 * H_GLS=1 fits the amplitude by generalized least squares with the covariance
 * diag(a + s2 x fitted value) + c x (probe autocorrelation), (s2, a, c) estimated per image by
 * moments of the OLS residuals of the fainter half of the atoms (H_GLSLO=q: quantile, 1 = all);
 * H_GLSW=w local c from the atoms within w bond; H_GLSCF=f scales c (0: diagonal only, the
 * offset-aware Poisson variance); H_GLSKF=f the kernel's width factor; H_GLSER=r the estimate's
 * disc (bond; default H_R); H_GLSN the most atoms in the estimate (400); H_GLSG=g the guard
 * (fall back to the Poisson WLS when |GLS - OLS| > g x the disc's fitted range); H_GLSORACLE=1
 * the Poisson part from the truth file's gain / offset / scan_smear / read_noise; H_GLSVERB=1
 * prints the estimates and the cost; H_GLSEFF=1 the mean var(OLS) / var(GLS) and
 * var(diagonal WLS) / var(GLS) under the estimated covariance, and var(GLS, all free) over the GLS
 * variance with only [profile] or [profile, constant] free (the rest known). Details and figures: notes/gls.md
 * (no consistent gain on the four held-out blocks).
 * Measured column profile (session 10, helper motif; needs H_REMEASURE=1, screening only, not in
 * the stage): H_PTAB=k measures a tabulated radial profile on the whole image with the lattice's
 * atoms (image = B-spline background + sum_j a_j p(|x - r_j|), k alternations amplitudes <->
 * profile; H_PDR, H_PRMAX, H_PBG, H_PSM; H_PMONO=0 drops the non-increasing, non-negative
 * constraint; H_PVERB=1 prints p) and uses it instead of the Gaussian in the amplitude's fit;
 * H_PTRUE=1 (oracle) uses the simulator's probe (core + tail from the truth file's probe_fwhm,
 * tail_fraction, tail_fwhm, pixel_size) instead; H_PALL=1 (with H_JOINT) holds every pass-1 atom
 * within the disc + H_PRMAX with that profile, not only the six places; H_RJ=r the held fit's disc
 * (bond; default H_R). H_GJ=1 (with H_JOINT and H_PTAB or H_PTRUE) takes every atom's amplitude
 * from one least squares over the whole image (all amplitudes + a B-spline background every H_PBG
 * bond; H_GJW=1 shot-noise weights). Figures in notes/s10/motif.md (no gain: the exact probe moves
 * species by +0.0002 at 0.6 bond; a 1.0-bond held disc and the global fit lose with it too).
 * Serial (MPI_COMM_SELF). */
#include <hdf5.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tmd/classify.h"
#include "tmd/io.h"
#include "tmd/score.h"

typedef struct {
    float *img;
    int64_t H, W;
    const tmd_lattice *lat;
    double sp;
} img_t;

/* H_XR=1: per-image cross-talk correction; model_amp leaves the sum of the six neighbour
 * amplitudes in g_nsum; chalcogen-like (amp < nsum / 3) columns regressed on it */
static double g_nsum = NAN, xr_slope = NAN, xr_nmed = 0, *xr_x, *xr_y, *xr_a;
static int64_t xr_n;
static int xr_stored = 0;
static double xs_metal = 0; /* H_XS: median metal amplitude of pass 1 */
/* H_NSPFAUTO=1: the neighbour profile's width factor chosen per image by the fits' residuals */
static double g_nspf = 0, g_rss = 0;
/* H_TAIL=t: two-component profile g(s) + g_tail g(t s), g_tail fitted with s on the radial profile */
static double g_tail = 0;
static double g_offx = 0, g_offy = 0; /* H_RCFIX=1: the six places stay where the detected centre put them */
/* H_JOINT=1 (issue #7): the amplitude refitted with the neighbour terms held. Pass 1 measures
 * every detected atom as the stage does and keeps its refined centre and amplitude (j_*); pass 2
 * (and any site measured later, e.g. the vacancy sites) fits [column profile, background] with
 * each of the six places one bond away that holds a pass-1 atom (nearest within H_JR 0.35 bond of
 * the place, not within 0.5 bond of the centre) fixed at that atom's amplitude and at its own
 * refined centre; places without an atom are held at 0 (H_JE=1: a free amplitude there as now).
 * The background is a constant (H_JBG=3: constant + x/y plane as now). H_JIT=k repeats pass 2
 * k times, each with the previous pass's amplitudes held (Jacobi steps towards the joint fit of
 * all columns). H_JOINT=2: the held neighbours' part (sum of their amplitude x profile) enters
 * as one term with a free factor (the tails' scale free, their pattern held). g_jon / g_jfix / g_jx / g_jy / g_ja: the held places of the fit in progress. */
static int g_jon = 0, g_jfix[6];
static double g_jx[6], g_jy[6], g_ja[6], g_rcx, g_rcy;
/* H_JOINT=3: the six places free as in the stage, each pulled towards g_jr x its held value by a
 * Gaussian prior of variance g_jtau2 (empirical Bayes, per image from pass 1: g_jr the median
 * ratio free / held over the brighter half of the held atom places, g_jtau2 the robust variance of
 * free - g_jr x held minus the median LSQ variance of the free ones); g_bn / g_vn: the last fit's
 * six place amplitudes and their LSQ variances (exported while g_jexp) */
static double g_jr = 1, g_jtau2 = 0, g_bn[6], g_vn[6];
static int g_jexp = 0, g_jatom[6], g_jskip = 0; /* g_jskip: H_JGATE found the image unfit for holding */
static double *j_b, *j_v;
static double g_asd = NAN; /* H_JDUMP=file: model_amp's LSQ standard error of the amplitude, dumped per atom */
static double *j_x, *j_y, *j_a;
static int64_t j_n, *j_head, *j_next;
static int j_gw, j_gh;
static double j_cell;

static double envd(const char *k, double d)
{
    const char *v = getenv(k);
    return v ? atof(v) : d;
}

/* solve A x = b (n x n, symmetric positive definite, in place), Cholesky; returns 0 if singular */
static int chol_solve(double *A, double *b, int n)
{
    for (int j = 0; j < n; j++) {
        double d = A[j * n + j];
        for (int k = 0; k < j; k++) d -= A[j * n + k] * A[j * n + k];
        if (d <= 1e-12) return 0;
        d = sqrt(d);
        A[j * n + j] = d;
        for (int i = j + 1; i < n; i++) {
            double s = A[i * n + j];
            for (int k = 0; k < j; k++) s -= A[i * n + k] * A[j * n + k];
            A[i * n + j] = s / d;
        }
    }
    for (int i = 0; i < n; i++) {
        double s = b[i];
        for (int k = 0; k < i; k++) s -= A[i * n + k] * b[k];
        b[i] = s / A[i * n + i];
    }
    for (int i = n - 1; i >= 0; i--) {
        double s = b[i];
        for (int k = i + 1; k < n; k++) s -= A[k * n + i] * b[k];
        b[i] = s / A[i * n + i];
    }
    return 1;
}

/* H_GLS=1 (session 9, helper gls): generalized least squares for the column amplitude. The
 * simulator's contamination is amorphous scatterers splatted with the probe, so its noise is
 * spatially correlated with covariance ~ (local density) x the probe's autocorrelation, a
 * Gaussian of width sqrt(2) sp (H_GLSKF=f scales it); OLS / Poisson WLS treat it as white.
 * Model per pixel pair: Cov = diag(gl_a + gl_s2 x fitted value) + c K(p, q),
 * K = exp(-|p - q|^2 / (4 sp^2)); gl_a takes the image offset (the Poisson variance is gain x
 * (value - offset)) and the read noise. (gl_s2, gl_a, c) are estimated per image from the OLS
 * residuals r of the stage's free fit (profile, plane, six places) over the interior detected
 * atoms (at most H_GLSN 400) by the method of moments with the fit's projection accounted for:
 * E[r r^T] = (I - P) Cov (I - P), P the hat matrix, regressed over all pixel pairs of each disc
 * except pairs in the same row (the fast-scan smear correlates those). H_GLSW=w (bond): c local,
 * from the moments of the atoms within w bond (gl_s2, gl_a global); 0: one c per image.
 * H_GLSCF=f scales c (0: Poisson-only GLS with the offset-aware variance). The amplitude is then
 * the GLS fit of the same terms (held or free neighbours as the rest of the knobs say) over the
 * disc, Sigma factored per column (Cholesky, m^3/6 with m ~ 110-380 pixels). H_GLSVERB=1 prints
 * the per-image estimates. */
void dpotrf_(const char *uplo, const int *n, double *a, const int *lda, int *info);
void dpotrs_(const char *uplo, const int *n, const int *nrhs, const double *a, const int *lda, double *b, const int *ldb, int *info);
static int dcmp(const void *a, const void *b);
static int gl_est = 0; /* the current image's estimates are made */
static double gl_s2 = 0, gl_a = 0, gl_c = 0, gl_kw2 = 1; /* gl_kw2: 4 sp^2 x H_GLSKF^2 */
static double *gl_x, *gl_y, *gl_mom, *gl_amp; /* per estimation atom: centre, N (9) and y (3) of its moments */
static int64_t gl_n = 0, gl_nfit = 0, gl_nfall = 0;
static double gl_tru[4]; /* H_GLSORACLE=1: the truth file's gain, offset, scan_smear, read_noise */
static double gl_msum = 0, gl_eff[5]; /* H_GLSEFF: sums of var_OLS / var_GLS, var_diagWLS / var_GLS, count */
static double gl_ktab[64 * 64]; /* K at integer pixel offsets |dx|, |dy| < 64 */
static double gl_k(double dx, double dy)
{
    int ix = (int)fabs(dx), iy = (int)fabs(dy);
    return ix < 64 && iy < 64 ? gl_ktab[ix * 64 + iy] : 0;
}

/* modified Gram-Schmidt of G (m x np, row-major) into Q; returns 0 if rank deficient */
static int gl_orth(const double *G, double *Q, int64_t m, int np)
{
    memcpy(Q, G, sizeof(double) * (size_t)(m * np));
    for (int j = 0; j < np; j++) {
        for (int i = 0; i < j; i++) {
            double d = 0;
            for (int64_t k = 0; k < m; k++) d += Q[k * np + i] * Q[k * np + j];
            for (int64_t k = 0; k < m; k++) Q[k * np + j] -= d * Q[k * np + i];
        }
        double nn = 0;
        for (int64_t k = 0; k < m; k++) nn += Q[k * np + j] * Q[k * np + j];
        if (nn <= 1e-10) return 0;
        nn = 1 / sqrt(nn);
        for (int64_t k = 0; k < m; k++) Q[k * np + j] *= nn;
    }
    return 1;
}

/* the stage's free basis over a disc of radius R at (cx, cy); returns m, 0 if the frame cuts it */
static int64_t gl_basis(const img_t *u, double cx, double cy, double bond, double sp, const double dl[3][2], double R,
                        double **G, double **v, double **px, double **py)
{
    int64_t y0 = (int64_t)floor(cy - R), y1 = (int64_t)ceil(cy + R), x0 = (int64_t)floor(cx - R), x1 = (int64_t)ceil(cx + R);
    if (y0 < 0 || x0 < 0 || y1 >= u->H || x1 >= u->W) return 0;
    int64_t npx = (y1 - y0 + 1) * (x1 - x0 + 1), m = 0;
    *G = malloc(sizeof(double) * (size_t)(npx * 10)), *v = malloc(sizeof(double) * (size_t)npx);
    *px = malloc(sizeof(double) * (size_t)npx), *py = malloc(sizeof(double) * (size_t)npx);
    double is2 = 0.5 / (sp * sp);
    for (int64_t yy = y0; yy <= y1; yy++)
        for (int64_t xx = x0; xx <= x1; xx++) {
            double dx = xx - cx, dy = yy - cy, d2 = dx * dx + dy * dy;
            if (d2 > R * R) continue;
            double *g = *G + m * 10;
            g[0] = exp(-d2 * is2), g[1] = 1, g[2] = dx / bond, g[3] = dy / bond;
            int c = 4;
            for (int q = 0; q < 3; q++)
                for (int sg = -1; sg <= 1; sg += 2) {
                    double ex = dx - sg * dl[q][0], ey = dy - sg * dl[q][1];
                    g[c++] = exp(-(ex * ex + ey * ey) * is2);
                }
            (*v)[m] = u->img[yy * u->W + xx], (*px)[m] = (double)xx, (*py)[m] = (double)yy;
            m++;
        }
    return m;
}

/* per image: (gl_s2, gl_a, gl_c) from the moments of the OLS residuals (see above) */
static void gls_estimate(const img_t *u, int64_t n, const double *xs, const double *ys, double bond, const double dl[3][2])
{
    const int np = 10;
    double R = envd("H_GLSER", envd("H_R", 0.6)) * bond, kf = envd("H_GLSKF", 1);
    gl_kw2 = 4 * u->sp * u->sp * kf * kf;
    for (int ix = 0; ix < 64; ix++)
        for (int iy = 0; iy < 64; iy++) gl_ktab[ix * 64 + iy] = exp(-(double)(ix * ix + iy * iy) / gl_kw2);
    int64_t nmax = (int64_t)envd("H_GLSN", 400), stride = n > nmax ? (n + nmax - 1) / nmax : 1;
    free(gl_x), free(gl_y), free(gl_mom), free(gl_amp);
    gl_amp = malloc(sizeof(double) * (size_t)(n + 1));
    gl_x = malloc(sizeof(double) * (size_t)(n + 1)), gl_y = malloc(sizeof(double) * (size_t)(n + 1));
    gl_mom = malloc(sizeof(double) * 12 * (size_t)(n + 1));
    gl_n = 0;
    double N[9] = {0}, Y[3] = {0};
    for (int64_t i = 0; i < n; i += stride) {
        double *G, *v, *px, *py;
        int64_t m = gl_basis(u, xs[i], ys[i], bond, u->sp, dl, R, &G, &v, &px, &py);
        if (m < 3 * np) {
            if (m) free(G), free(v), free(px), free(py);
            continue;
        }
        double *Q = malloc(sizeof(double) * (size_t)(m * np)), *r = malloc(sizeof(double) * (size_t)m),
               *f = malloc(sizeof(double) * (size_t)m), *Z = calloc((size_t)(m * np), sizeof(double)),
               *QM1 = calloc((size_t)(m * np), sizeof(double)), *QMK = calloc((size_t)(m * np), sizeof(double));
        if (!gl_orth(G, Q, m, np)) {
            free(G), free(v), free(px), free(py), free(Q), free(r), free(f), free(Z), free(QM1), free(QMK);
            continue;
        }
        double qv[10] = {0};
        for (int64_t k = 0; k < m; k++)
            for (int j = 0; j < np; j++) qv[j] += Q[k * np + j] * v[k];
        for (int64_t k = 0; k < m; k++) {
            double s = 0;
            for (int j = 0; j < np; j++) s += Q[k * np + j] * qv[j];
            f[k] = s, r[k] = v[k] - s;
        }
        for (int64_t p = 0; p < m; p++) /* Z = K Q */
            for (int64_t q = 0; q < m; q++) {
                double kk = gl_k(px[p] - px[q], py[p] - py[q]);
                for (int j = 0; j < np; j++) Z[p * np + j] += kk * Q[q * np + j];
            }
        double M1[100] = {0}, MK[100] = {0};
        for (int64_t k = 0; k < m; k++)
            for (int a = 0; a < np; a++)
                for (int b = 0; b < np; b++) M1[a * np + b] += Q[k * np + a] * f[k] * Q[k * np + b], MK[a * np + b] += Q[k * np + a] * Z[k * np + b];
        for (int64_t k = 0; k < m; k++)
            for (int a = 0; a < np; a++)
                for (int b = 0; b < np; b++) QM1[k * np + b] += Q[k * np + a] * M1[a * np + b], QMK[k * np + b] += Q[k * np + a] * MK[a * np + b];
        double n9[9] = {0}, y3[3] = {0};
        for (int64_t p = 0; p < m; p++)
            for (int64_t q = p; q < m; q++) {
                if (q != p && py[q] == py[p]) continue; /* the smear correlates pixels along a row */
                const double *Qp = Q + p * np, *Qq = Q + q * np;
                double P = 0, t1 = 0, t3 = 0;
                for (int j = 0; j < np; j++)
                    P += Qp[j] * Qq[j], t1 += QM1[p * np + j] * Qq[j],
                        t3 += QMK[p * np + j] * Qq[j] - Qp[j] * Z[q * np + j] - Z[p * np + j] * Qq[j];
                double T[3] = {(p == q ? f[p] : 0) - (f[p] + f[q]) * P + t1, (p == q ? 1 : 0) - P, gl_k(px[p] - px[q], py[p] - py[q]) + t3};
                double wt = p == q ? 1 : 2, yy = r[p] * r[q];
                for (int a = 0; a < 3; a++) {
                    y3[a] += wt * T[a] * yy;
                    for (int b = 0; b < 3; b++) n9[a * 3 + b] += wt * T[a] * T[b];
                }
            }
        { /* the column's OLS amplitude (H_GLSLO: the estimate from the fainter columns only) */
            double A[100] = {0}, bb[10] = {0};
            for (int64_t k = 0; k < m; k++)
                for (int a = 0; a < np; a++) {
                    bb[a] += G[k * np + a] * v[k];
                    for (int c = 0; c < np; c++) A[a * np + c] += G[k * np + a] * G[k * np + c];
                }
            gl_amp[gl_n] = chol_solve(A, bb, np) ? bb[0] : NAN;
        }
        gl_x[gl_n] = xs[i], gl_y[gl_n] = ys[i];
        memcpy(gl_mom + 12 * gl_n, n9, sizeof n9), memcpy(gl_mom + 12 * gl_n + 9, y3, sizeof y3);
        gl_n++;
        free(G), free(v), free(px), free(py), free(Q), free(r), free(f), free(Z), free(QM1), free(QMK);
    }
    double q = envd("H_GLSLO", 0.5), thr = INFINITY; /* amplitude quantile below which columns enter (1: all) */
    if (q < 1 && gl_n > 0) {
        double *t = malloc(sizeof(double) * (size_t)gl_n);
        int64_t nt = 0;
        for (int64_t i = 0; i < gl_n; i++)
            if (isfinite(gl_amp[i])) t[nt++] = gl_amp[i];
        qsort(t, (size_t)nt, sizeof(double), dcmp);
        if (nt > 0) thr = t[(int64_t)(q * (double)(nt - 1))];
        free(t);
    }
    for (int64_t i = 0; i < gl_n; i++) {
        if (!(gl_amp[i] <= thr)) {
            memset(gl_mom + 12 * i, 0, 12 * sizeof(double)); /* out of the local c too */
            continue;
        }
        for (int a = 0; a < 9; a++) N[a] += gl_mom[12 * i + a];
        for (int a = 0; a < 3; a++) Y[a] += gl_mom[12 * i + 9 + a];
    }
    double Ns[9], th[3];
    memcpy(Ns, N, sizeof N), memcpy(th, Y, sizeof Y);
    if (gl_n > 0 && chol_solve(Ns, th, 3)) gl_s2 = th[0], gl_a = th[1], gl_c = th[2];
    else gl_s2 = 0, gl_a = 0, gl_c = 0;
    if (getenv("H_GLSORACLE") && gl_tru[0] > 0) { /* oracle: the Poisson part from the truth file's detector, c alone fitted */
        double sm = gl_tru[2], f = (1 - sm) / (1 + sm);
        gl_s2 = gl_tru[0] * f, gl_a = -gl_s2 * gl_tru[1] + gl_tru[0] * gl_tru[0] * gl_tru[3] * gl_tru[3] * f;
        gl_c = N[8] > 0 ? (Y[2] - gl_s2 * N[6] - gl_a * N[7]) / N[8] : 0;
    }
    if (getenv("H_GLSVERB"))
        fprintf(stderr, "gls: %lld atoms, s2 %.4g a %.4g c %.4g (sp %.2f px)\n", (long long)gl_n, gl_s2, gl_a, gl_c, u->sp);
    gl_est = 1;
}

/* c at (cx, cy): one per image, or (H_GLSW) from the atoms' moments within w bond */
static double gls_c(double cx, double cy, double bond)
{
    double w = envd("H_GLSW", 0) * bond, c = gl_c;
    if (w > 0) {
        double num = 0, den = 0;
        for (int64_t i = 0; i < gl_n; i++) {
            if (hypot(gl_x[i] - cx, gl_y[i] - cy) > w) continue;
            const double *mo = gl_mom + 12 * i;
            num += mo[11] - gl_s2 * mo[6] - gl_a * mo[7], den += mo[8];
        }
        if (den > 0) c = num / den;
    }
    return fmax(0, c) * envd("H_GLSCF", 1);
}

/* GLS of v on G (m x np) with Cov = diag(max(gl_a + gl_s2 e, floor)) + c K; returns the first coefficient */
static double gls_fit(const double *G, const double *v, const double *e, const double *px, const double *py, int64_t m, int np, double c)
{
    double *S = malloc(sizeof(double) * (size_t)(m * m)), *Gt = malloc(sizeof(double) * (size_t)(m * (np + 1)));
    double vmax = 0;
    for (int64_t k = 0; k < m; k++) vmax = fmax(vmax, gl_a + gl_s2 * e[k]);
    double fl = envd("H_POIS", 0.1) * vmax;
    for (int64_t p = 0; p < m; p++)
        for (int64_t q = 0; q <= p; q++) {
            S[p * m + q] = c * gl_k(px[p] - px[q], py[p] - py[q]) + (p == q ? fmax(gl_a + gl_s2 * e[p], fl) : 0);
        }
    double amp = NAN;
    gl_nfit++, gl_msum += (double)m;
    double *Sf = NULL; /* H_GLSEFF=1: a copy of Sigma for the OLS / diagonal-WLS variances under it */
    if (getenv("H_GLSEFF")) {
        Sf = malloc(sizeof(double) * (size_t)(m * m));
        for (int64_t p = 0; p < m; p++)
            for (int64_t q = 0; q <= p; q++) Sf[p * m + q] = Sf[q * m + p] = S[p * m + q];
    }
    { /* LAPACK (OpenBLAS): S row-major lower = column-major upper; B = Sigma^-1 [G v], column-major */
        int mm = (int)m, nr = np + 1, info = 0;
        dpotrf_("U", &mm, S, &mm, &info);
        if (info) goto out;
        for (int64_t k = 0; k < m; k++) {
            for (int j = 0; j < np; j++) Gt[j * m + k] = G[k * np + j];
            Gt[np * m + k] = v[k];
        }
        dpotrs_("U", &mm, &nr, S, &mm, Gt, &mm, &info);
        if (info) goto out;
    }
    double A[256] = {0}, b[16] = {0};
    for (int64_t k = 0; k < m; k++)
        for (int i = 0; i < np; i++) {
            b[i] += G[k * np + i] * Gt[np * m + k];
            for (int j = 0; j < np; j++) A[i * np + j] += G[k * np + i] * Gt[j * m + k];
        }
    double Ai[256], e0[16] = {1}, a00 = A[0], a01 = A[1], a11 = A[np + 1];
    memcpy(Ai, A, sizeof(double) * (size_t)(np * np));
    if (chol_solve(A, b, np)) amp = b[0];
    if (Sf && isfinite(amp) && chol_solve(Ai, e0, np)) { /* variances of the amplitude under Sigma: GLS e0[0]; OLS and diag WLS: sandwich */
        double vg = e0[0], vv[2];
        for (int mode = 0; mode < 2; mode++) {
            double B[256] = {0}, h[16] = {0};
            for (int64_t k = 0; k < m; k++) {
                double wk = mode ? 1 / Sf[k * m + k] : 1;
                for (int i = 0; i < np; i++)
                    for (int j = 0; j < np; j++) B[i * np + j] += wk * G[k * np + i] * G[k * np + j];
            }
            h[0] = 1;
            if (!chol_solve(B, h, np)) { vv[mode] = NAN; continue; }
            double *u1 = malloc(sizeof(double) * (size_t)m), var = 0; /* u = W G h: the estimator's pixel weights */
            for (int64_t k = 0; k < m; k++) {
                double wk = mode ? 1 / Sf[k * m + k] : 1, t = 0;
                for (int i = 0; i < np; i++) t += G[k * np + i] * h[i];
                u1[k] = wk * t;
            }
            for (int64_t p = 0; p < m; p++) {
                double t = 0;
                for (int64_t q = 0; q < m; q++) t += Sf[p * m + q] * u1[q];
                var += u1[p] * t;
            }
            vv[mode] = var;
            free(u1);
        }
        if (isfinite(vv[0]) && isfinite(vv[1]) && vg > 0) {
            gl_eff[0] += vv[0] / vg, gl_eff[1] += vv[1] / vg, gl_eff[2] += 1;
            gl_eff[3] += vg * a00;                                  /* var(all free) / var(profile alone, the rest known) */
            gl_eff[4] += vg * (a00 * a11 - a01 * a01) / a11;        /* var(all free) / var([profile, constant], the rest known) */
        }
    }
out:
    free(S), free(Gt), free(Sf);
    return amp;
}

/* the stage's amplitude (stage_classify.c measure_contrast): least squares over a disc of
 * radius H_R (0.6) bond of [column profile at the centre, profiles at the six +-delta_k places
 * (H_NB=0: without), 1, x, y]; profile Gaussian sigma sp px; refitted with the weights
 * 1 / max(first fit, H_POIS (0.1) x its largest) (H_POIS=0: unweighted). Variants tried:
 * H_TW=t Gaussian taper of the weights (bond), H_ROB=1 robust IRLS (Tukey on the positive
 * residuals; 2 both sides; H_C tuning constant in robust sd, H_IT iterations), H_RIDGE, H_Q=1
 * a radial r^2 term in the background (H_QW=w: a Gaussian w times the profile's width), H_NSPF=f
 * the neighbour places' profile f times wider than the column's */
/* H_PTAB=k (session 10, helper motif): the column profile measured on the whole image with the
 * lattice instead of the Gaussian. The image is modelled as background + sum_j a_j p(|x - r_j|)
 * over all detected atoms j (refined centres and amplitudes of a free pass with the current
 * profile); p is piecewise linear on nodes every H_PDR (0.05) bond out to H_PRMAX (2.0) bond
 * (0 beyond), the background a bilinear B-spline on a grid of H_PBG (3) bond; both by one linear
 * least squares over every pixel at least H_PRMAX from the frame edge, a second-difference ridge
 * H_PSM (1e-3, relative) on p; p normalised to p(0) = 1. k alternations (amplitudes <- profile,
 * profile <- amplitudes). The measured p then replaces the Gaussian in the amplitude's fit
 * (column, the six places, the held neighbours); the centre refinement keeps the Gaussian.
 * H_PVERB=1 prints p at every 0.1 bond. H_PALL=1 (with H_JOINT): the held fit subtracts every
 * pass-1 atom within the disc + H_PRMAX (not only the six places) with p. */
static int g_pon = 0, g_pk = 0;
static double g_ptru[4]; /* H_PTRUE=1 (oracle): the truth file's probe_fwhm, tail_fraction, tail_fwhm, pixel_size */
static double g_ptab[256], g_pdr = 1;
static inline double prof(double d2, double is2)
{
    if (!g_pon) return exp(-d2 * is2);
    double t = sqrt(d2) / g_pdr;
    int k = (int)t;
    if (k >= g_pk) return 0;
    double f = t - k;
    return g_ptab[k] * (1 - f) + g_ptab[k + 1] * f;
}
static double pall_sum(double px, double py, double cx, double cy, double bond, double is2);

static double model_amp(const img_t *u, double cx, double cy, double bond, double sp, const double dl[3][2])
{
    double R = (g_jon ? envd("H_RJ", envd("H_R", 0.6)) : envd("H_R", 0.6)) * bond, tw = envd("H_TW", 0) * bond; /* H_RJ: the held fit's disc */
    int nb = (int)envd("H_NB", 1), rob = (int)envd("H_ROB", 0), nq = (int)envd("H_Q", 0), nder = getenv("H_DER") ? 2 : 0,
        np = 4 + (nb ? 6 : 0) + nq + nder;
    double cc = envd("H_C", 2.5), nsf = g_nspf > 0 ? g_nspf : envd("H_NSPF", 1);
    int64_t y0 = (int64_t)floor(cy - R), y1 = (int64_t)ceil(cy + R), x0 = (int64_t)floor(cx - R), x1 = (int64_t)ceil(cx + R);
    int64_t npx = (y1 - y0 + 1) * (x1 - x0 + 1);
    double *G = malloc(sizeof(double) * (size_t)(npx * np)), *v = malloc(sizeof(double) * (size_t)npx),
           *w0 = malloc(sizeof(double) * (size_t)npx), *w = malloc(sizeof(double) * (size_t)npx),
           *e = malloc(sizeof(double) * (size_t)npx), *pxk = malloc(sizeof(double) * (size_t)npx),
           *pyk = malloc(sizeof(double) * (size_t)npx); /* pixel coordinates (H_GLS) */
    int64_t m = 0;
    double is2 = 0.5 / (sp * sp);
    for (int64_t yy = y0; yy <= y1; yy++) {
        if (yy < 0 || yy >= u->H) continue;
        for (int64_t xx = x0; xx <= x1; xx++) {
            if (xx < 0 || xx >= u->W) continue;
            double dx = xx - cx, dy = yy - cy, d2 = dx * dx + dy * dy;
            if (d2 > R * R) continue;
            double *g = G + m * np;
            double tt = envd("H_TAIL", 0), it2 = tt > 0 ? is2 / (tt * tt) : 0;
            g[0] = prof(d2, is2) + (tt > 0 ? g_tail * exp(-d2 * it2) : 0);
            g[1] = 1;
            g[2] = dx / bond;
            g[3] = dy / bond;
            if (nb) {
                int c = 4;
                for (int q = 0; q < 3; q++)
                    for (int sg = -1; sg <= 1; sg += 2) {
                        double ex = dx + g_offx - sg * dl[q][0], ey = dy + g_offy - sg * dl[q][1];
                        if (g_jon && g_jfix[c - 4]) { /* H_JOINT: a held neighbour, its own profile at its own centre */
                            ex = (double)xx - g_jx[c - 4], ey = (double)yy - g_jy[c - 4];
                            g[c++] = prof(ex * ex + ey * ey, is2) + (tt > 0 ? g_tail * exp(-(ex * ex + ey * ey) * it2) : 0);
                            continue;
                        }
                        g[c++] = prof((ex * ex + ey * ey) / (nsf * nsf), is2) +
                                 (tt > 0 ? g_tail * exp(-(ex * ex + ey * ey) * it2) : 0);
                    }
            }
            if (nq) g[np - 1 - nder] = d2 / (bond * bond); /* H_Q=1: a radial bowl r^2 in the background */
            if (nq == 1 && getenv("H_QW")) g[np - 1 - nder] = exp(-d2 * is2 / (envd("H_QW", 2) * envd("H_QW", 2))); /* or a wide Gaussian */
            if (nder) g[np - 2] = 2 * is2 * dx * g[0] * bond, g[np - 1] = 2 * is2 * dy * g[0] * bond;
            v[m] = u->img[yy * u->W + xx];
            pxk[m] = (double)xx, pyk[m] = (double)yy;
            w0[m] = tw > 0 ? exp(-0.5 * d2 / (tw * tw)) : 1;
            w[m] = w0[m];
            m++;
        }
    }
    double *fx = calloc((size_t)(m + 1), sizeof(double)); /* H_JOINT: the held neighbours' part of the model */
    if ((g_jon == 1 || g_jon == 2) && nb) { /* keep the free columns: profile, constant (plane: H_JBG=3), free places, extras */
        int act[16], na = 0, full = np;
        act[na++] = 0, act[na++] = 1;
        if ((int)envd("H_JBG", 1) >= 3) act[na++] = 2, act[na++] = 3;
        for (int c = 4; c < 10; c++)
            if (!g_jfix[c - 4]) act[na++] = c;
        for (int c = 10; c < full; c++) act[na++] = c;
        double fxmax = 0;
        for (int64_t k = 0; k < m; k++) {
            if (getenv("H_PALL") && g_pon) fx[k] = pall_sum(pxk[k], pyk[k], cx, cy, bond, is2);
            else
                for (int c = 4; c < 10; c++)
                    if (g_jfix[c - 4]) fx[k] += G[k * full + c] * g_ja[c - 4] * (getenv("H_JRS") ? g_jr : 1); /* H_JRS=1: held at r x their amplitude */
            fxmax = fmax(fxmax, fabs(fx[k]));
        }
        int scale = g_jon == 2 && fxmax > 0 && na < full; /* H_JOINT=2: the held part times one free factor */
        double *G2 = malloc(sizeof(double) * (size_t)((m + 1) * (na + scale)));
        for (int64_t k = 0; k < m; k++) {
            for (int a = 0; a < na; a++) G2[k * (na + scale) + a] = G[k * full + act[a]];
            if (scale) G2[k * (na + 1) + na] = fx[k], fx[k] = 0;
            v[k] -= fx[k];
        }
        free(G);
        G = G2;
        np = na + scale;
    }
    double amp = NAN;
    int nit = rob ? 1 + (int)envd("H_IT", 4) : envd("H_POIS", 0.1) > 0 ? 2 : 1;
    for (int it = 0; it < nit; it++) {
        double A[256] = {0}, b[16] = {0};
        for (int64_t k = 0; k < m; k++) {
            const double *g = G + k * np;
            for (int i = 0; i < np; i++) {
                b[i] += w[k] * g[i] * v[k];
                for (int j = 0; j <= i; j++) A[i * np + j] += w[k] * g[i] * g[j];
            }
        }
        for (int i = 0; i < np; i++)
            for (int j = i + 1; j < np; j++) A[i * np + j] = A[j * np + i];
        for (int i = 4; i < np; i++) A[i * np + i] += envd("H_RIDGE", 0) * m; /* weak ridge on neighbours */
        if (g_jon == 3 && nb && g_jtau2 > 0 && np >= 10) { /* the prior: residual variance of the free fit / tau^2 */
            double A1[256], b1[16], rs = 0;
            memcpy(A1, A, sizeof(double) * (size_t)(np * np)), memcpy(b1, b, sizeof(double) * (size_t)np);
            if (m >= 3 * np && chol_solve(A1, b1, np)) {
                for (int64_t k = 0; k < m; k++) {
                    double f = 0;
                    for (int i = 0; i < np; i++) f += G[k * np + i] * b1[i];
                    rs += w[k] * (v[k] - f) * (v[k] - f);
                }
                double lam = rs / (double)(m - np) / g_jtau2;
                for (int c = 4; c < 10; c++)
                    if (g_jfix[c - 4]) A[c * np + c] += lam, b[c] += lam * g_jr * g_ja[c - 4];
            }
        }
        double Ac[256], e0[16] = {1};
        memcpy(Ac, A, sizeof(double) * (size_t)(np * np));
        double Av[256];
        if (g_jexp) memcpy(Av, A, sizeof Av);
        if (m < 3 * np || !chol_solve(A, b, np)) break;
        amp = b[0];
        g_asd = chol_solve(Ac, e0, np) ? e0[0] : NAN; /* (A^-1)_00; times the residual variance below */
        g_rss = 0;
        for (int64_t k = 0; k < m; k++) {
            const double *g = G + k * np;
            double f = 0;
            for (int i = 0; i < np; i++) f += g[i] * b[i];
            g_rss += w[k] * (v[k] - f) * (v[k] - f);
        }
        g_asd = sqrt(g_asd * g_rss / (double)(m - np)); /* the amplitude's LSQ standard error */
        if (g_jexp && nb && np >= 10)
            for (int c = 4; c < 10; c++) {
                double Aw[256], ec[16] = {0};
                memcpy(Aw, Av, sizeof Aw);
                ec[c] = 1;
                g_bn[c - 4] = b[c];
                g_vn[c - 4] = chol_solve(Aw, ec, np) ? ec[c] * g_rss / (double)(m - np) : NAN;
            }
        g_nsum = nb && !g_jon ? b[4] + b[5] + b[6] + b[7] + b[8] + b[9] : NAN;
        if (nb && !g_jon && getenv("H_XT")) amp += envd("H_XT", 0) * (b[4] + b[5] + b[6] + b[7] + b[8] + b[9]);
        if (gl_est && it == 0 && !rob) { /* H_GLS: the GLS fit from the OLS fitted values */
            for (int64_t k = 0; k < m; k++) {
                double f = fx[k];
                for (int i = 0; i < np; i++) f += G[k * np + i] * b[i];
                e[k] = f;
            }
            double ag = gls_fit(G, v, e, pxk, pyk, m, np, gls_c(cx, cy, bond)), emn = INFINITY, emx = -INFINITY;
            for (int64_t k = 0; k < m; k++) emn = fmin(emn, e[k]), emx = fmax(emx, e[k]);
            /* guard: an ill-conditioned Sigma can throw the amplitude far off (7107: 6424 against a
             * largest column of 35); more than H_GLSG (0.5) x the disc's fitted range from OLS -> the
             * stage's Poisson WLS instead */
            if (isfinite(ag) && fabs(ag - amp) <= envd("H_GLSG", 0.5) * (emx - emn)) {
                amp = ag;
                break;
            }
            gl_nfall++;
        }
        if (envd("H_POIS", 0.1) > 0 && it == 0) { /* shot noise: weights 1 / max(fitted value, floor) */
            double fl = envd("H_POIS", 0.1), fmaxv = 0;
            for (int64_t k = 0; k < m; k++) {
                const double *g = G + k * np;
                double f = 0;
                for (int i = 0; i < np; i++) f += g[i] * b[i];
                f += fx[k]; /* the fitted value includes the held neighbours */
                e[k] = f;
                if (f > fmaxv) fmaxv = f;
            }
            for (int64_t k = 0; k < m; k++) w[k] = w0[k] / fmax(e[k], fl * fmaxv);
            if (!(fmaxv > 0)) break;
            if (!rob) {
                rob = -1;
                continue;
            }
        }
        if (rob < 0) break;
        if (!rob) break;
        /* residuals and robust scale */
        for (int64_t k = 0; k < m; k++) {
            const double *g = G + k * np;
            double f = 0;
            for (int i = 0; i < np; i++) f += g[i] * b[i];
            e[k] = v[k] - f;
        }
        double *t = malloc(sizeof(double) * (size_t)(m + 1));
        for (int64_t k = 0; k < m; k++) t[k] = fabs(e[k]);
        for (int64_t a = 1; a < m; a++)
            for (int64_t c = a; c > 0 && t[c] < t[c - 1]; c--) {
                double z = t[c];
                t[c] = t[c - 1];
                t[c - 1] = z;
            }
        double s = 1.4826 * (m > 0 ? t[m / 2] : 0) + 1e-12;
        if (getenv("H_SFIX")) s = atof(getenv("H_SFIX"));
        free(t);
        for (int64_t k = 0; k < m; k++) {
            double z = e[k] / (cc * s);
            double wt = 1;
            if ((rob == 2 || e[k] > 0) && fabs(z) < 1) wt = (1 - z * z) * (1 - z * z);
            else if (rob == 2 || e[k] > 0) wt = 0;
            w[k] = w0[k] * wt;
        }
    }
    free(G), free(v), free(w0), free(w), free(e), free(fx), free(pxk), free(pyk);
    return amp;
}

/* H_RC=k: the column's centre refined k times before the amplitude: an unweighted fit of the
 * stage's ten terms plus the column profile's x and y derivatives at the centre, whose
 * coefficients over a0 are the first-order shift; the centre (and the six places with it)
 * moves by it, each step capped at H_RCSTEP (0.1) bond, in all at H_RCMAX (0.25) bond.
 * H_DER=1: the derivative terms kept in the final fit instead (no move). */
static int fit_shift(const img_t *u, double cx, double cy, double bond, double sp, const double dl[3][2], double *sx,
                     double *sy)
{
    enum { NP = 12 };
    double R = envd("H_RCR", envd("H_R", 0.6)) * bond, is2 = 0.5 / (sp * sp);
    int64_t cap = ((int64_t)ceil(2 * R) + 3) * ((int64_t)ceil(2 * R) + 3), m = 0;
    double *G = malloc(sizeof(double) * (size_t)(cap * NP)), *v = malloc(sizeof(double) * (size_t)cap),
           *w = malloc(sizeof(double) * (size_t)cap);
    for (int64_t yy = (int64_t)floor(cy - R); yy <= (int64_t)ceil(cy + R); yy++) {
        if (yy < 0 || yy >= u->H) continue;
        for (int64_t xx = (int64_t)floor(cx - R); xx <= (int64_t)ceil(cx + R); xx++) {
            if (xx < 0 || xx >= u->W) continue;
            double dx = xx - cx, dy = yy - cy, d2 = dx * dx + dy * dy;
            if (d2 > R * R) continue;
            double *g = G + m * NP;
            g[0] = exp(-d2 * is2);
            g[1] = 1, g[2] = dx / bond, g[3] = dy / bond;
            int c = 4;
            for (int q = 0; q < 3; q++)
                for (int sg = -1; sg <= 1; sg += 2) {
                    double ex = dx - sg * dl[q][0], ey = dy - sg * dl[q][1];
                    g[c++] = exp(-(ex * ex + ey * ey) * is2);
                }
            g[10] = 2 * is2 * dx * g[0] * bond, g[11] = 2 * is2 * dy * g[0] * bond; /* d p / d c, per bond */
            v[m] = u->img[yy * u->W + xx];
            w[m] = 1;
            m++;
        }
    }
    int ok = m >= 3 * NP, npass = getenv("H_RCW") ? 2 : 1;
    double b[NP] = {0}, A0[NP * NP];
    for (int pass = 0; pass < npass && ok; pass++) {
        if (pass == 1) { /* H_RCW=1: shot-noise weights from the unweighted fit, as the amplitude's */
            double fmx = 0;
            for (int64_t k = 0; k < m; k++) {
                double f = 0;
                for (int a = 0; a < NP; a++) f += G[k * NP + a] * b[a];
                w[k] = f;
                if (f > fmx) fmx = f;
            }
            if (!(fmx > 0)) break;
            for (int64_t k = 0; k < m; k++) w[k] = 1 / fmax(w[k], 0.1 * fmx);
        }
        double A[NP * NP] = {0}, bb[NP] = {0};
        for (int64_t k = 0; k < m; k++) {
            const double *g = G + k * NP;
            for (int i = 0; i < NP; i++) {
                bb[i] += w[k] * g[i] * v[k];
                for (int j = 0; j <= i; j++) A[i * NP + j] += w[k] * g[i] * g[j];
            }
        }
        for (int i = 0; i < NP; i++)
            for (int j = i + 1; j < NP; j++) A[i * NP + j] = A[j * NP + i];
        memcpy(A0, A, sizeof A0);
        if (!chol_solve(A, bb, NP) || !(bb[0] > 0)) ok = 0;
        else memcpy(b, bb, sizeof b);
    }
    double tau = envd("H_RCTAU", 0.1) * bond;
    if (ok) {
        *sx = b[10] / b[0] * bond, *sy = b[11] / b[0] * bond;
        if (tau > 0) { /* shrink by the shift's LSQ variance: k = tau^2 / (tau^2 + var) (the stage's column_shift) */
            double rss = 0, e[NP];
            for (int64_t k = 0; k < m; k++) {
                double f = 0;
                for (int a = 0; a < NP; a++) f += G[k * NP + a] * b[a];
                rss += w[k] * (v[k] - f) * (v[k] - f);
            }
            double s2 = rss / (double)(m - NP);
            for (int c = 10; c <= 11 && ok; c++) {
                double Ac[NP * NP];
                memcpy(Ac, A0, sizeof Ac);
                for (int i = 0; i < NP; i++) e[i] = i == c ? 1 : 0;
                if (!chol_solve(Ac, e, NP)) ok = 0;
                double var = s2 * e[c] / (b[0] * b[0]) * bond * bond, k = tau * tau / (tau * tau + var);
                if (c == 10) *sx *= k; else *sy *= k;
            }
        }
        if (!isfinite(hypot(*sx, *sy))) ok = 0;
    }
    free(G), free(v), free(w);
    return ok;
}

static int g_atoms = 0; /* set while the detected atoms are measured (H_RCATOMS=1: refine only those) */
static double model_amp_c(const img_t *u, double cx, double cy, double bond, double sp, const double dl[3][2])
{
    int nrc = getenv("H_RCATOMS") && !g_atoms ? 0 : (int)envd("H_RC", 1);
    double step = envd("H_RCSTEP", 0.1) * bond, tmax = envd("H_RCMAX", 0.25) * bond, ox = cx, oy = cy;
    for (int it = 0; it < nrc; it++) {
        double sx, sy;
        if (!fit_shift(u, cx, cy, bond, sp, dl, &sx, &sy)) break;
        double l = hypot(sx, sy);
        if (l > step) sx *= step / l, sy *= step / l;
        cx += sx, cy += sy;
        l = hypot(cx - ox, cy - oy);
        if (l > tmax) cx = ox + (cx - ox) * tmax / l, cy = oy + (cy - oy) * tmax / l;
    }
    if (getenv("H_RCFIX")) g_offx = cx - ox, g_offy = cy - oy;
    g_rcx = cx, g_rcy = cy;
    double a = model_amp(u, cx, cy, bond, sp, dl);
    g_offx = g_offy = 0;
    if (getenv("H_RCDUMP")) {
        FILE *fd = fopen(getenv("H_RCDUMP"), "a");
        fprintf(fd, "%.4f %.4f %.4f %.4f %.6g\n", ox, oy, cx, cy, a);
        fclose(fd);
    }
    return a;
}

/* median of t[0..n) (reorders t) */
static int dcmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}
static double dmedian(double *t, int64_t n)
{
    qsort(t, (size_t)n, sizeof(double), dcmp);
    return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

/* H_JOINT: the amplitude of the column at (cx, cy) (a refined centre) with its six places held
 * from the pass-1 atoms (see g_jon) */
static void joint_places(double cx, double cy, double bond, const double dl[3][2])
{
    double jr = envd("H_JR", 0.35) * bond, self = 0.5 * bond;
    int free_empty = (int)envd("H_JE", 0);
    for (int p = 0; p < 6; p++) { /* the order of model_amp's places: q outer, sign -1 then +1 */
        int q = p / 2, sg = p % 2 ? 1 : -1;
        double px = cx - g_offx + sg * dl[q][0], py = cy - g_offy + sg * dl[q][1], best = jr * jr;
        int64_t bj = -1;
        int gx = (int)floor(px / j_cell), gy = (int)floor(py / j_cell);
        for (int ey = gy - 1; ey <= gy + 1; ey++)
            for (int ex = gx - 1; ex <= gx + 1; ex++) {
                if (ex < 0 || ey < 0 || ex >= j_gw || ey >= j_gh) continue;
                for (int64_t j = j_head[ey * j_gw + ex]; j >= 0; j = j_next[j]) {
                    double d2 = (j_x[j] - px) * (j_x[j] - px) + (j_y[j] - py) * (j_y[j] - py);
                    double c2 = (j_x[j] - cx) * (j_x[j] - cx) + (j_y[j] - cy) * (j_y[j] - cy);
                    if (!isfinite(j_a[j]) || c2 < self * self || d2 >= best) continue;
                    best = d2, bj = j;
                }
            }
        g_jatom[p] = bj >= 0;
        if (bj >= 0) g_jfix[p] = 1, g_jx[p] = j_x[bj], g_jy[p] = j_y[bj], g_ja[p] = j_a[bj];
        else if (free_empty) g_jfix[p] = 0;
        else g_jfix[p] = 1, g_jx[p] = px, g_jy[p] = py, g_ja[p] = 0;
    }
}

static double joint_amp(const img_t *u, double cx, double cy, double bond, double sp, const double dl[3][2])
{
    joint_places(cx, cy, bond, dl);
    g_jon = (int)envd("H_JOINT", 1);
    double a = model_amp(u, cx, cy, bond, sp, dl);
    g_jon = 0;
    return a;
}

/* H_GJ=1 (with H_JOINT and H_PTAB or H_PTRUE; screening): every pass-1 atom's amplitude from ONE
 * least squares over the whole image, image = B-spline background (H_PBG bond) + sum_j a_j p(|x -
 * r_j|) at the pass-1 centres (all amplitudes jointly, dense normal equations); H_GJW=1 a second
 * pass with shot-noise weights 1 / max(fitted value, 0.1 max). The atoms then take these
 * amplitudes; other sites (vacancy proposals) are measured by the held fit (H_PALL=1 holds all). */
static void global_joint(const img_t *u, double bond)
{
    int64_t n = j_n;
    double rmax = g_pk * g_pdr, sb = envd("H_PBG", 3) * bond;
    int bx = (int)ceil((double)u->W / sb) + 1, by = (int)ceil((double)u->H / sb) + 1, nbg = bx * by;
    int N = (int)n + nbg, info = 0, one = 1;
    double *A = malloc(sizeof(double) * (size_t)N * N), *b = malloc(sizeof(double) * (size_t)N), *x = NULL;
    int *ix = malloc(sizeof(int) * 4096);
    double *gv = malloc(sizeof(double) * 4096), *w = NULL;
    int npass = getenv("H_GJW") ? 2 : 1;
    int nc = (int)ceil(rmax / j_cell);
    for (int pass = 0; pass < npass; pass++) {
        memset(A, 0, sizeof(double) * (size_t)N * N), memset(b, 0, sizeof(double) * (size_t)N);
        double fmx = 0;
        if (pass == 1) { /* fitted values of pass 0 for the weights */
            w = malloc(sizeof(double) * (size_t)(u->H * u->W));
        }
        for (int rep = 0; rep < (pass == 1 ? 2 : 1); rep++)
            for (int64_t yy = 0; yy < u->H; yy++)
                for (int64_t xx = 0; xx < u->W; xx++) {
                    int m = 0;
                    int gx = (int)floor(xx / j_cell), gy = (int)floor(yy / j_cell);
                    for (int ey = gy - nc; ey <= gy + nc; ey++)
                        for (int ex = gx - nc; ex <= gx + nc; ex++) {
                            if (ex < 0 || ey < 0 || ex >= j_gw || ey >= j_gh) continue;
                            for (int64_t j = j_head[ey * j_gw + ex]; j >= 0; j = j_next[j]) {
                                if (!isfinite(j_a[j])) continue;
                                double d2 = (j_x[j] - xx) * (j_x[j] - xx) + (j_y[j] - yy) * (j_y[j] - yy);
                                if (d2 >= rmax * rmax || m >= 4090) continue;
                                ix[m] = (int)j, gv[m++] = prof(d2, 0);
                            }
                        }
                    double su = (double)xx / sb, sv = (double)yy / sb;
                    int iu = (int)su, iv = (int)sv;
                    double fu = su - iu, fv = sv - iv;
                    ix[m] = (int)n + iv * bx + iu, gv[m++] = (1 - fu) * (1 - fv);
                    ix[m] = (int)n + iv * bx + iu + 1, gv[m++] = fu * (1 - fv);
                    ix[m] = (int)n + (iv + 1) * bx + iu, gv[m++] = (1 - fu) * fv;
                    ix[m] = (int)n + (iv + 1) * bx + iu + 1, gv[m++] = fu * fv;
                    double v = u->img[yy * u->W + xx];
                    if (pass == 1 && rep == 0) { /* fitted value */
                        double f = 0;
                        for (int a = 0; a < m; a++) f += gv[a] * x[ix[a]];
                        w[yy * u->W + xx] = f;
                        if (f > fmx) fmx = f;
                        continue;
                    }
                    double wt = pass == 1 ? 1 / fmax(w[yy * u->W + xx], 0.1 * fmx) : 1;
                    for (int a = 0; a < m; a++) {
                        b[ix[a]] += wt * gv[a] * v;
                        for (int c = 0; c < m; c++)
                            if (ix[c] <= ix[a]) A[(size_t)ix[a] * N + ix[c]] += wt * gv[a] * gv[c];
                    }
                }
        for (int a = 0; a < N; a++)
            if (A[(size_t)a * N + a] == 0) A[(size_t)a * N + a] = 1;
        /* row-major lower = column-major upper */
        dpotrf_("U", &N, A, &N, &info);
        if (!info) dpotrs_("U", &N, &one, A, &N, b, &N, &info);
        if (info) {
            fprintf(stderr, "global joint: solve failed (%d)\n", info);
            break;
        }
        free(x);
        x = malloc(sizeof(double) * (size_t)N);
        memcpy(x, b, sizeof(double) * (size_t)N);
    }
    if (x)
        for (int64_t i = 0; i < n; i++)
            if (isfinite(j_a[i])) j_a[i] = x[i];
    free(A), free(b), free(x), free(ix), free(gv), free(w);
}

/* H_JOINT pass 1: every detected atom measured as the stage does; its refined centre and
 * amplitude kept (j_*), with a grid of cell 1 bond for the place look-up; then H_JIT - 1 Jacobi
 * steps (each atom refitted with the others held at the previous step's amplitudes) */
static void joint_pass1(const img_t *u, int64_t n, const double *xs, const double *ys, double bond, const double dl[3][2])
{
    free(j_x), free(j_y), free(j_a), free(j_head), free(j_next);
    j_x = malloc(sizeof(double) * (size_t)(n + 1)), j_y = malloc(sizeof(double) * (size_t)(n + 1));
    j_a = malloc(sizeof(double) * (size_t)(n + 1)), j_next = malloc(sizeof(int64_t) * (size_t)(n + 1));
    int eb = (int)envd("H_JOINT", 1) == 3 || getenv("H_JGATE");
    g_jskip = 0;
    free(j_b), free(j_v);
    j_b = malloc(sizeof(double) * (size_t)(6 * n + 1)), j_v = malloc(sizeof(double) * (size_t)(6 * n + 1));
    g_jexp = eb;
    for (int64_t i = 0; i < n; i++) {
        for (int p = 0; p < 6; p++) g_bn[p] = g_vn[p] = NAN;
        j_a[i] = model_amp_c(u, xs[i], ys[i], bond, u->sp, dl);
        j_x[i] = g_rcx, j_y[i] = g_rcy;
        for (int p = 0; p < 6; p++) j_b[6 * i + p] = g_bn[p], j_v[6 * i + p] = g_vn[p];
    }
    g_jexp = 0;
    j_n = n, j_cell = bond;
    j_gw = (int)(u->W / j_cell) + 1, j_gh = (int)(u->H / j_cell) + 1;
    j_head = malloc(sizeof(int64_t) * (size_t)j_gw * (size_t)j_gh);
    for (int64_t g = 0; g < (int64_t)j_gw * j_gh; g++) j_head[g] = -1;
    for (int64_t j = 0; j < n; j++) {
        int gx = (int)floor(j_x[j] / j_cell), gy = (int)floor(j_y[j] / j_cell);
        if (gx < 0 || gy < 0 || gx >= j_gw || gy >= j_gh) {
            j_next[j] = -1;
            continue;
        }
        j_next[j] = j_head[gy * j_gw + gx], j_head[gy * j_gw + gx] = j;
    }
    if (eb) { /* the prior's ratio and variance from the free fits' place amplitudes at held atoms */
        double *hh = malloc(sizeof(double) * (size_t)(6 * n + 1)), *bb = malloc(sizeof(double) * (size_t)(6 * n + 1)),
               *vv = malloc(sizeof(double) * (size_t)(6 * n + 1)), *t2 = malloc(sizeof(double) * (size_t)(6 * n + 1));
        int64_t k = 0;
        for (int64_t i = 0; i < n; i++) {
            if (!isfinite(j_a[i])) continue;
            joint_places(j_x[i], j_y[i], bond, dl);
            for (int p = 0; p < 6; p++)
                if (g_jatom[p] && isfinite(j_b[6 * i + p]) && isfinite(j_v[6 * i + p]))
                    hh[k] = g_ja[p], bb[k] = j_b[6 * i + p], vv[k] = j_v[6 * i + p], k++;
        }
        if (k > 20) {
            memcpy(t2, hh, sizeof(double) * (size_t)k);
            double hmed = dmedian(t2, k);
            int64_t q = 0;
            for (int64_t a = 0; a < k; a++)
                if (hh[a] >= hmed && hh[a] > 0) t2[q++] = bb[a] / hh[a];
            g_jr = q > 0 ? dmedian(t2, q) : 1;
            for (int64_t a = 0; a < k; a++) t2[a] = bb[a] - g_jr * hh[a];
            double dm = dmedian(t2, k);
            for (int64_t a = 0; a < k; a++) t2[a] = fabs(bb[a] - g_jr * hh[a] - dm);
            double sd = 1.4826 * dmedian(t2, k);
            memcpy(t2, vv, sizeof(double) * (size_t)k);
            double vmed = dmedian(t2, k);
            g_jtau2 = fmax(sd * sd - vmed, 1e-4 * hmed * hmed) * envd("H_JTAUF", 1);
            /* H_JGATE=g (exploratory, chosen after seeing the per-image figures): hold only where the
             * free - held differences are noise-like (robust sd < g x the free fits' LSQ sd) */
            if (getenv("H_JGATE") && !(sd < envd("H_JGATE", 1.4) * sqrt(vmed))) g_jskip = 1;
            fprintf(stderr, "joint-eb: skip %d ratio %.3f, free - held: robust sd %.4g, LSQ sd %.4g, tau %.4g (held median %.4g, %lld places)\n", g_jskip,
                    g_jr, sd, sqrt(vmed), sqrt(g_jtau2), hmed, (long long)k);
        } else
            g_jtau2 = 0;
        free(hh), free(bb), free(vv), free(t2);
    }
    double *t = malloc(sizeof(double) * (size_t)(n + 1));
    for (int it = 1; it < (int)envd("H_JIT", 1); it++) {
        for (int64_t i = 0; i < n; i++) t[i] = isfinite(j_a[i]) ? joint_amp(u, j_x[i], j_y[i], bond, u->sp, dl) : NAN;
        for (int64_t i = 0; i < n; i++)
            if (isfinite(t[i])) j_a[i] = t[i];
    }
    free(t);
    if (getenv("H_GJ") && g_pon) global_joint(u, bond);
}

/* per-image Gaussian profile width (px) from the mean radial profile of all columns */
static double est_sigma(const img_t *u, int64_t n, const double *xs, const double *ys, double bond)
{
    int NB = 24;
    double rmax = 0.6 * bond, sv[24] = {0}, sn[24] = {0};
    for (int64_t i = 0; i < n; i++) {
        double cx = xs[i], cy = ys[i];
        if (cx < rmax + 1 || cy < rmax + 1 || cx > u->W - rmax - 2 || cy > u->H - rmax - 2) continue;
        for (int64_t yy = (int64_t)floor(cy - rmax); yy <= (int64_t)ceil(cy + rmax); yy++)
            for (int64_t xx = (int64_t)floor(cx - rmax); xx <= (int64_t)ceil(cx + rmax); xx++) {
                double d = hypot(xx - cx, yy - cy);
                int bi = (int)(d / rmax * NB);
                if (bi >= NB) continue;
                sv[bi] += u->img[yy * u->W + xx];
                sn[bi] += 1;
            }
    }
    double best = 0.2 * bond, bsse = INFINITY, tt = envd("H_TAIL", 0);
    if (tt > 0) { /* m(r) = A g(s) + B g(t s) + C, 3x3 least squares per s */
        for (double s = 0.05 * bond; s <= 0.45 * bond; s += 0.005 * bond) {
            double M[9] = {0}, rhs[3] = {0};
            for (int bi = 0; bi < NB; bi++) {
                if (sn[bi] <= 0) continue;
                double r = (bi + 0.5) * rmax / NB, mv = sv[bi] / sn[bi], wt = sn[bi];
                double f[3] = {exp(-0.5 * r * r / (s * s)), exp(-0.5 * r * r / (tt * tt * s * s)), 1};
                for (int a = 0; a < 3; a++) {
                    rhs[a] += wt * f[a] * mv;
                    for (int c = 0; c < 3; c++) M[a * 3 + c] += wt * f[a] * f[c];
                }
            }
            if (!chol_solve(M, rhs, 3)) continue;
            double sse = 0;
            for (int bi = 0; bi < NB; bi++) {
                if (sn[bi] <= 0) continue;
                double r = (bi + 0.5) * rmax / NB, mv = sv[bi] / sn[bi];
                double e = mv - rhs[0] * exp(-0.5 * r * r / (s * s)) - rhs[1] * exp(-0.5 * r * r / (tt * tt * s * s)) - rhs[2];
                sse += sn[bi] * e * e;
            }
            if (sse < bsse && rhs[0] > 0) bsse = sse, best = s, g_tail = fmax(0, rhs[1] / rhs[0]);
        }
        if (getenv("H_TAILF")) g_tail = envd("H_TAILF", 0);
        if (getenv("H_VERB")) fprintf(stderr, "tail: s %.3f bond, B/A %.3f\n", best / bond, g_tail);
        return best;
    }
    for (double s = 0.05 * bond; s <= 0.45 * bond; s += 0.005 * bond) {
        /* fit m(r) = A exp(-r^2/2s^2) + C */
        double S11 = 0, S12 = 0, S22 = 0, b1 = 0, b2 = 0;
        for (int bi = 0; bi < NB; bi++) {
            if (sn[bi] <= 0) continue;
            double r = (bi + 0.5) * rmax / NB, g = exp(-0.5 * r * r / (s * s)), mv = sv[bi] / sn[bi], wt = sn[bi];
            S11 += wt * g * g, S12 += wt * g, S22 += wt, b1 += wt * g * mv, b2 += wt * mv;
        }
        double det = S11 * S22 - S12 * S12;
        double A = (b1 * S22 - b2 * S12) / det, C = (S11 * b2 - S12 * b1) / det, sse = 0;
        for (int bi = 0; bi < NB; bi++) {
            if (sn[bi] <= 0) continue;
            double r = (bi + 0.5) * rmax / NB, g = exp(-0.5 * r * r / (s * s)), mv = sv[bi] / sn[bi];
            sse += sn[bi] * (mv - A * g - C) * (mv - A * g - C);
        }
        if (sse < bsse) bsse = sse, best = s;
    }
    return best;
}

/* H_PALL: the held part at pixel (px, py): every pass-1 atom (j_*) within H_PRMAX bond of it except
 * the column itself (within 0.5 bond of (cx, cy)), its amplitude times p */
static double pall_sum(double px, double py, double cx, double cy, double bond, double is2)
{
    double rmax = g_pk * g_pdr, s = 0, self = 0.25 * bond * bond;
    int nc = (int)ceil(rmax / j_cell), gx = (int)floor(px / j_cell), gy = (int)floor(py / j_cell);
    for (int ey = gy - nc; ey <= gy + nc; ey++)
        for (int ex = gx - nc; ex <= gx + nc; ex++) {
            if (ex < 0 || ey < 0 || ex >= j_gw || ey >= j_gh) continue;
            for (int64_t j = j_head[ey * j_gw + ex]; j >= 0; j = j_next[j]) {
                if (!isfinite(j_a[j])) continue;
                double c2 = (j_x[j] - cx) * (j_x[j] - cx) + (j_y[j] - cy) * (j_y[j] - cy);
                if (c2 < self) continue;
                double d2 = (j_x[j] - px) * (j_x[j] - px) + (j_y[j] - py) * (j_y[j] - py);
                if (d2 < rmax * rmax) s += j_a[j] * prof(d2, is2);
            }
        }
    return s;
}

/* H_PMONO=1 (default with H_PTAB): the profile's least squares with p non-increasing and
 * non-negative. The background block is eliminated exactly (Schur complement S = App - Apb
 * Abb^-1 Abp, g likewise); then min 0.5 c'Sc - g'c over c = T d, d >= 0 (c_k = sum_{m >= k} d_m)
 * by projected coordinate descent. A (N x N, symmetric, full) and b in; b[0..K) out. */
static int est_mono(const double *A, double *b, int K, int N)
{
    int nb = N - K, info = 0, nrhs = K + 1;
    double *Abb = malloc(sizeof(double) * (size_t)nb * nb), *R = malloc(sizeof(double) * (size_t)nb * nrhs),
           *S = malloc(sizeof(double) * (size_t)K * K), *g = malloc(sizeof(double) * (size_t)K),
           *Q = malloc(sizeof(double) * (size_t)K * K), *h = malloc(sizeof(double) * (size_t)K), *d = calloc((size_t)K, sizeof(double));
    for (int i = 0; i < nb; i++)
        for (int j = 0; j < nb; j++) Abb[i * nb + j] = A[(K + i) * N + K + j];
    for (int c = 0; c < K; c++) /* column c of R: Abp[:, c] */
        for (int i = 0; i < nb; i++) R[c * nb + i] = A[(K + i) * N + c];
    for (int i = 0; i < nb; i++) R[K * nb + i] = b[K + i];
    dpotrf_("U", &nb, Abb, &nb, &info);
    if (!info) dpotrs_("U", &nb, &nrhs, Abb, &nb, R, &nb, &info);
    int ok = !info;
    for (int a = 0; a < K && ok; a++) {
        double t = 0;
        for (int i = 0; i < nb; i++) t += A[(K + i) * N + a] * R[K * nb + i];
        g[a] = b[a] - t;
        for (int c = 0; c < K; c++) {
            double u = 0;
            for (int i = 0; i < nb; i++) u += A[(K + i) * N + a] * R[c * nb + i];
            S[a * K + c] = A[a * N + c] - u;
        }
    }
    /* Q = T' S T, h = T' g with T[k][m] = (m >= k) */
    for (int m = 0; m < K && ok; m++) {
        double t = 0;
        for (int k = 0; k <= m; k++) t += g[k];
        h[m] = t;
        for (int m2 = 0; m2 < K; m2++) {
            double u = 0;
            for (int k = 0; k <= m; k++)
                for (int k2 = 0; k2 <= m2; k2++) u += S[k * K + k2];
            Q[m * K + m2] = u;
        }
    }
    for (int it = 0; it < 5000 && ok; it++) {
        double mv = 0;
        for (int m = 0; m < K; m++) {
            double r = -h[m];
            for (int m2 = 0; m2 < K; m2++) r += Q[m * K + m2] * d[m2];
            if (!(Q[m * K + m] > 0)) continue;
            double nd = fmax(0, d[m] - r / Q[m * K + m]);
            mv = fmax(mv, fabs(nd - d[m]));
            d[m] = nd;
        }
        if (it > 10 && mv < 1e-12 * (fabs(d[0]) + 1e-300)) break;
    }
    double c = 0;
    for (int k = K - 1; k >= 0; k--) c += d[k], b[k] = c;
    ok = ok && b[0] > 0;
    free(Abb), free(R), free(S), free(g), free(Q), free(h), free(d);
    return ok;
}

/* H_PTAB: the profile from the whole image (see g_pon) */
static void est_profile(const img_t *u, int64_t n, const double *xs, const double *ys, double bond, const double dl[3][2])
{
    double dr = envd("H_PDR", 0.05) * bond, rmax = envd("H_PRMAX", 2.0) * bond, sb = envd("H_PBG", 3) * bond;
    int K = (int)floor(rmax / dr + 0.5);
    if (K > 250) K = 250;
    rmax = K * dr;
    int bx = (int)ceil((double)u->W / sb) + 1, by = (int)ceil((double)u->H / sb) + 1, nbg = bx * by, N = K + nbg;
    double *ax = malloc(sizeof(double) * (size_t)(n + 1)), *ay = malloc(sizeof(double) * (size_t)(n + 1)),
           *aa = malloc(sizeof(double) * (size_t)(n + 1));
    double *A = malloc(sizeof(double) * (size_t)N * N), *b = malloc(sizeof(double) * (size_t)N), F[256];
    int nit = (int)envd("H_PTAB", 1);
    for (int it = 0; it < nit; it++) {
        for (int64_t i = 0; i < n; i++) { /* the free measure with the current profile */
            aa[i] = model_amp_c(u, xs[i], ys[i], bond, u->sp, dl);
            ax[i] = g_rcx, ay[i] = g_rcy;
        }
        /* grid of the atoms, cell 1 bond */
        int gw = (int)(u->W / bond) + 1, gh = (int)(u->H / bond) + 1;
        int64_t *hd = malloc(sizeof(int64_t) * (size_t)gw * gh), *nx = malloc(sizeof(int64_t) * (size_t)(n + 1));
        for (int64_t g = 0; g < (int64_t)gw * gh; g++) hd[g] = -1;
        for (int64_t j = 0; j < n; j++) {
            int gx = (int)floor(ax[j] / bond), gy = (int)floor(ay[j] / bond);
            nx[j] = -1;
            if (!isfinite(aa[j]) || gx < 0 || gy < 0 || gx >= gw || gy >= gh) continue;
            nx[j] = hd[gy * gw + gx], hd[gy * gw + gx] = j;
        }
        memset(A, 0, sizeof(double) * (size_t)N * N), memset(b, 0, sizeof(double) * (size_t)N);
        int nc = (int)ceil(rmax / bond);
        int64_t edge = (int64_t)ceil(rmax);
        for (int64_t yy = edge; yy < u->H - edge; yy++)
            for (int64_t xx = edge; xx < u->W - edge; xx++) {
                memset(F, 0, sizeof(double) * (size_t)(K + 1));
                int gx = (int)floor(xx / bond), gy = (int)floor(yy / bond);
                for (int ey = gy - nc; ey <= gy + nc; ey++)
                    for (int ex = gx - nc; ex <= gx + nc; ex++) {
                        if (ex < 0 || ey < 0 || ex >= gw || ey >= gh) continue;
                        for (int64_t j = hd[ey * gw + ex]; j >= 0; j = nx[j]) {
                            double r = hypot(xx - ax[j], yy - ay[j]);
                            if (r >= rmax) continue;
                            double t = r / dr;
                            int k = (int)t;
                            double f = t - k;
                            F[k] += aa[j] * (1 - f), F[k + 1] += aa[j] * f;
                        }
                    }
                double v = u->img[yy * u->W + xx], su = (double)xx / sb, sv = (double)yy / sb;
                int iu = (int)su, iv = (int)sv;
                double fu = su - iu, fv = sv - iv, bw[4] = {(1 - fu) * (1 - fv), fu * (1 - fv), (1 - fu) * fv, fu * fv};
                int bi[4] = {K + iv * bx + iu, K + iv * bx + iu + 1, K + (iv + 1) * bx + iu, K + (iv + 1) * bx + iu + 1};
                for (int a = 0; a < K; a++) {
                    if (F[a] == 0) continue;
                    b[a] += F[a] * v;
                    for (int c = 0; c <= a; c++) A[a * N + c] += F[a] * F[c];
                    for (int q = 0; q < 4; q++) A[bi[q] * N + a] += bw[q] * F[a];
                }
                for (int q = 0; q < 4; q++) {
                    b[bi[q]] += bw[q] * v;
                    for (int q2 = 0; q2 < 4; q2++)
                        if (bi[q2] <= bi[q]) A[bi[q] * N + bi[q2]] += bw[q] * bw[q2];
                }
            }
        double tr = 0;
        for (int a = 0; a < K; a++) tr += A[a * N + a] / K;
        double lam = envd("H_PSM", 1e-3) * tr;
        for (int a = 1; a + 1 < K + 1; a++) { /* second differences (node K is 0) */
            int id[3] = {a - 1, a, a + 1};
            double w3[3] = {1, -2, 1};
            for (int p = 0; p < 3; p++)
                for (int q = 0; q < 3; q++)
                    if (id[p] < K && id[q] < K && id[q] <= id[p]) A[id[p] * N + id[q]] += lam * w3[p] * w3[q];
        }
        for (int a = 0; a < N; a++) {
            if (A[a * N + a] == 0) A[a * N + a] = 1; /* background nodes without pixels */
            for (int c = a + 1; c < N; c++) A[a * N + c] = A[c * N + a];
        }
        if (envd("H_PMONO", 1) > 0) { /* p non-increasing and >= 0: p_k = sum_{m >= k} d_m, d >= 0 (see est_mono) */
            if (!est_mono(A, b, K, N)) {
                fprintf(stderr, "ptab: monotone fit failed\n");
                free(hd), free(nx);
                break;
            }
        } else if (!chol_solve(A, b, N) || !(b[0] > 0)) {
            fprintf(stderr, "ptab: solve failed\n");
            free(hd), free(nx);
            break;
        }
        for (int k = 0; k < K; k++) g_ptab[k] = b[k] / b[0];
        g_ptab[K] = 0;
        g_pk = K, g_pdr = dr, g_pon = 1;
        if (getenv("H_PVERB")) {
            fprintf(stderr, "ptab it %d (sigma %.3f bond, Gaussian at 1 bond %.4f):", it, u->sp / bond, exp(-0.5 * bond * bond / (u->sp * u->sp)));
            for (int k = 0; k < K; k += (int)floor(0.1 * bond / dr + 0.5)) fprintf(stderr, " %.4f", g_ptab[k]);
            fprintf(stderr, "\n");
        }
        free(hd), free(nx);
    }
    free(ax), free(ay), free(aa), free(A), free(b);
}

static tmd_status measure(tmd_ctx *ctx, void *user, int64_t n, const int32_t *frame, const double *xs, const double *ys,
                          float *out)
{
    (void)ctx;
    (void)frame;
    img_t *u = user;
    if (!getenv("H_OLD")) {
        double bond = u->lat->period_px / sqrt(3.0);
        if (u->sp <= 0) {
            u->sp = getenv("H_SP") ? atof(getenv("H_SP")) * bond : est_sigma(u, n, xs, ys, bond) * envd("H_SPF", 1);
            if (getenv("H_VERB")) fprintf(stderr, "sigma %.3f bond\n", u->sp / bond);
        }
        if (getenv("H_PTRUE") && !g_pon && g_ptru[0] > 0 && g_ptru[2] > 0 && g_ptru[3] > 0) { /* the probe at the specimen distance in px (no scan map) */
            double sc = g_ptru[0] / 2.3548200450309493 / g_ptru[3], st = g_ptru[2] / 2.3548200450309493 / g_ptru[3],
                   f = g_ptru[1], A = (1 - f) / (sc * sc), B = f / (st * st);
            g_pdr = 0.05 * bond, g_pk = (int)(envd("H_PRMAX", 2.0) * 20 + 0.5);
            for (int k = 0; k <= g_pk; k++) {
                double r = k * g_pdr;
                g_ptab[k] = k == g_pk ? 0 : (A * exp(-0.5 * r * r / (sc * sc)) + B * exp(-0.5 * r * r / (st * st))) / (A + B);
            }
            g_pon = 1;
        }
        if (getenv("H_PTAB") && g_atoms && !g_pon) {
            const tmd_lattice *L0 = u->lat;
            double dm[3][2] = {{(L0->a1[0] + L0->a2[0]) / 3, (L0->a1[1] + L0->a2[1]) / 3},
                               {(L0->a2[0] - 2 * L0->a1[0]) / 3, (L0->a2[1] - 2 * L0->a1[1]) / 3},
                               {(L0->a1[0] - 2 * L0->a2[0]) / 3, (L0->a1[1] - 2 * L0->a2[1]) / 3}};
            est_profile(u, n, xs, ys, bond, dm);
        }
    }
    if (getenv("H_GLS") && atoi(getenv("H_GLS")) && g_atoms && !gl_est && !getenv("H_OLD")) {
        const tmd_lattice *L0 = u->lat;
        double bd = L0->period_px / sqrt(3.0);
        double dm[3][2] = {{(L0->a1[0] + L0->a2[0]) / 3, (L0->a1[1] + L0->a2[1]) / 3},
                           {(L0->a2[0] - 2 * L0->a1[0]) / 3, (L0->a2[1] - 2 * L0->a1[1]) / 3},
                           {(L0->a1[0] - 2 * L0->a2[0]) / 3, (L0->a1[1] - 2 * L0->a2[1]) / 3}};
        clock_t t0 = clock();
        gls_estimate(u, n, xs, ys, bd, dm);
        if (getenv("H_GLSVERB")) fprintf(stderr, "gls: estimate %.2f s cpu\n", (double)(clock() - t0) / CLOCKS_PER_SEC);
    }
    double *nsum = getenv("H_XR") || getenv("H_XS") ? calloc((size_t)(n > 0 ? n : 1), sizeof(double)) : NULL;
    if (getenv("H_NSPFAUTO") && !getenv("H_OLD") && g_nspf == 0) { /* first call: pick the width factor */
        const tmd_lattice *L0 = u->lat;
        double bd = L0->period_px / sqrt(3.0), best = 1, brss = INFINITY;
        double dm[3][2] = {{(L0->a1[0] + L0->a2[0]) / 3, (L0->a1[1] + L0->a2[1]) / 3},
                           {(L0->a2[0] - 2 * L0->a1[0]) / 3, (L0->a2[1] - 2 * L0->a1[1]) / 3},
                           {(L0->a1[0] - 2 * L0->a2[0]) / 3, (L0->a1[1] - 2 * L0->a2[1]) / 3}};
        for (double f = 1.0; f <= envd("H_NSPFMAX", 1.4) + 1e-9; f += 0.1) {
            g_nspf = f;
            double tot = 0;
            for (int64_t i = 0; i < n; i++) {
                double a = model_amp(u, xs[i], ys[i], bd, u->sp, dm);
                if (isfinite(a) && xs[i] > bd && ys[i] > bd && xs[i] < u->W - bd && ys[i] < u->H - bd) tot += g_rss;
            }
            if (getenv("H_VERB")) fprintf(stderr, "nspf %.1f rss %.6g\n", f, tot);
            if (tot < brss) brss = tot, best = f;
        }
        g_nspf = best;
        if (getenv("H_VERB")) fprintf(stderr, "nspf chosen %.1f\n", best);
    }
    const tmd_lattice *L = u->lat;
    int joint = getenv("H_JOINT") && atoi(getenv("H_JOINT")) && !getenv("H_OLD");
    if (joint && g_atoms) {
        g_jskip = 0;
        double bj = L->period_px / sqrt(3.0), dj[3][2] = {{(L->a1[0] + L->a2[0]) / 3, (L->a1[1] + L->a2[1]) / 3},
                                                         {(L->a2[0] - 2 * L->a1[0]) / 3, (L->a2[1] - 2 * L->a1[1]) / 3},
                                                         {(L->a1[0] - 2 * L->a2[0]) / 3, (L->a1[1] - 2 * L->a2[1]) / 3}};
        joint_pass1(u, n, xs, ys, bj, dj);
    }
    double bond = L->period_px / sqrt(3.0), sw = fmax(0.7, (getenv("H_SIGMA") ? atof(getenv("H_SIGMA")) : 0.1) * bond), rc = 2.5 * sw;
    for (int64_t i = 0; i < n; i++) {
        double cx = xs[i], cy = ys[i];
        if (!getenv("H_OLD")) { /* the amplitude; where the frame edge cuts the disc, the old measure */
            double dm[3][2] = {{(L->a1[0] + L->a2[0]) / 3, (L->a1[1] + L->a2[1]) / 3},
                               {(L->a2[0] - 2 * L->a1[0]) / 3, (L->a2[1] - 2 * L->a1[1]) / 3},
                               {(L->a1[0] - 2 * L->a2[0]) / 3, (L->a1[1] - 2 * L->a2[1]) / 3}};
            g_nsum = NAN;
            double a;
            if (joint && g_jskip) /* H_JGATE: this image measured as the stage does */
                a = g_atoms && n == j_n ? j_a[i] : model_amp_c(u, cx, cy, bond, u->sp, dm);
            else if (joint && g_atoms && n == j_n && getenv("H_GJ") && g_pon) /* H_GJ: the global joint amplitude */
                a = j_a[i];
            else if (joint && g_atoms && n == j_n) { /* pass 2 at the pass-1 centre; pass 1's amplitude if it fails */
                a = isfinite(j_a[i]) ? joint_amp(u, j_x[i], j_y[i], bond, u->sp, dm) : NAN;
                if (!isfinite(a)) a = j_a[i];
            } else if (joint && j_n > 0) { /* a site measured later (vacancy sites): its centre refined, then held */
                double a1 = model_amp_c(u, cx, cy, bond, u->sp, dm);
                a = isfinite(a1) ? joint_amp(u, g_rcx, g_rcy, bond, u->sp, dm) : NAN;
                if (!isfinite(a)) a = a1;
            } else
                a = model_amp_c(u, cx, cy, bond, u->sp, dm);
            if (nsum) nsum[i] = g_nsum;
            if (getenv("H_JDUMP") && g_atoms) { /* "x y amplitude lsq_sd" per detected atom */
                FILE *fd = fopen(getenv("H_JDUMP"), "a");
                if (fd) fprintf(fd, "%.4f %.4f %.6g %.6g\n", cx, cy, a, g_asd), fclose(fd);
            }
            if (isfinite(a)) {
                out[i] = (float)a;
                continue;
            }
        }
#define GMEAN(px, py, res)                                                                      \
    do {                                                                                        \
        double sv_ = 0, sw_ = 0;                                                                \
        for (int64_t yy = (int64_t)floor((py) - rc); yy <= (int64_t)ceil((py) + rc); yy++) {    \
            if (yy < 0 || yy >= u->H) continue;                                                 \
            for (int64_t xx = (int64_t)floor((px) - rc); xx <= (int64_t)ceil((px) + rc); xx++) { \
                if (xx < 0 || xx >= u->W) continue;                                             \
                double d_ = hypot(xx - (px), yy - (py));                                        \
                if (d_ > rc) continue;                                                          \
                double wt_ = exp(-0.5 * d_ * d_ / (sw * sw));                                   \
                sv_ += wt_ * u->img[yy * u->W + xx];                                            \
                sw_ += wt_;                                                                     \
            }                                                                                   \
        }                                                                                       \
        (res) = sw_ > 0 ? sv_ / sw_ : NAN;                                                      \
    } while (0)
        double peak;
        GMEAN(cx, cy, peak);
        double dl[3][2] = {{(L->a1[0] + L->a2[0]) / 3, (L->a1[1] + L->a2[1]) / 3},
                           {(L->a2[0] - 2 * L->a1[0]) / 3, (L->a2[1] - 2 * L->a1[1]) / 3},
                           {(L->a1[0] - 2 * L->a2[0]) / 3, (L->a1[1] - 2 * L->a2[1]) / 3}};
        double v6[6];
        int nv = 0;
        for (int q = 0; q < 3; q++)
            for (int sg = -1; sg <= 1; sg += 2) {
                double val;
                GMEAN(cx + sg * dl[q][0], cy + sg * dl[q][1], val);
                if (isfinite(val)) v6[nv++] = val;
            }
        for (int a = 1; a < nv; a++)
            for (int b = a; b > 0 && v6[b] < v6[b - 1]; b--) {
                double t = v6[b];
                v6[b] = v6[b - 1];
                v6[b - 1] = t;
            }
        double bg = 0;
        int nb = nv < 3 ? nv : 3;
        for (int a = 0; a < nb; a++) bg += v6[a] / nb;
        out[i] = isfinite(peak) ? (float)(peak - bg) : 0.0f;
    }
    if (nsum) { /* H_XR: bonded-neighbour sums from the atoms' own amplitudes (kept from the first call) */
        double r0 = 0.6 * bond, r1 = 1.3 * bond;
        if (!xr_stored) {
            xr_stored = 1;
            free(xr_x), free(xr_y), free(xr_a);
            xr_x = malloc(sizeof(double) * (size_t)(n + 1)), xr_y = malloc(sizeof(double) * (size_t)(n + 1)),
            xr_a = malloc(sizeof(double) * (size_t)(n + 1));
            for (int64_t i = 0; i < n; i++) xr_x[i] = xs[i], xr_y[i] = ys[i], xr_a[i] = out[i];
            xr_n = n;
        }
        /* grid of the stored atoms */
        int gw = (int)(u->W / r1) + 1, gh = (int)(u->H / r1) + 1;
        int64_t *head = malloc(sizeof(int64_t) * (size_t)(gw * gh)), *nxt = malloc(sizeof(int64_t) * (size_t)(xr_n + 1));
        for (int g = 0; g < gw * gh; g++) head[g] = -1;
        for (int64_t j = 0; j < xr_n; j++) {
            int gx = (int)(xr_x[j] / r1), gy = (int)(xr_y[j] / r1);
            if (gx < 0 || gy < 0 || gx >= gw || gy >= gh) { nxt[j] = -1; continue; }
            nxt[j] = head[gy * gw + gx], head[gy * gw + gx] = j;
        }
        for (int64_t i = 0; i < n; i++) {
            double sum = 0;
            int gx = (int)(xs[i] / r1), gy = (int)(ys[i] / r1);
            for (int ey = gy - 1; ey <= gy + 1; ey++)
                for (int ex = gx - 1; ex <= gx + 1; ex++) {
                    if (ex < 0 || ey < 0 || ex >= gw || ey >= gh) continue;
                    for (int64_t j = head[ey * gw + ex]; j >= 0; j = nxt[j]) {
                        double dd = hypot(xr_x[j] - xs[i], xr_y[j] - ys[i]);
                        if (dd > r0 && dd < r1) sum += xr_a[j];
                    }
                }
            nsum[i] = sum;
        }
        free(head), free(nxt);
        double edge = 1.5 * bond;
#define XR_IN(i) (out[i] < nsum[i] / 3 && xs[i] > edge && ys[i] > edge && xs[i] < u->W - edge && ys[i] < u->H - edge)
        double *yl = NULL, *xl = NULL; /* H_XRL=R: regression on deviations from the local means (R bond) */
        if (getenv("H_XS")) { /* within-species slope set by main after pass 1; here only the vacancy sites */
            if (isfinite(xr_slope) && n != xr_n)
                for (int64_t i = 0; i < n; i++)
                    if (nsum[i] > envd("H_XSM", 2) * xs_metal) out[i] -= (float)(xr_slope * nsum[i]);
            free(nsum);
            return TMD_OK;
        }
        if (!isfinite(xr_slope) && getenv("H_XRL")) {
            double RL = envd("H_XRL", 3) * bond;
            int nc = (int)ceil(RL / r1);
            yl = calloc((size_t)(n + 1), sizeof(double)), xl = calloc((size_t)(n + 1), sizeof(double));
            int64_t *hd = malloc(sizeof(int64_t) * (size_t)(gw * gh)), *nx = malloc(sizeof(int64_t) * (size_t)(n + 1));
            for (int g = 0; g < gw * gh; g++) hd[g] = -1;
            for (int64_t j = 0; j < n; j++) {
                int gx = (int)(xs[j] / r1), gy = (int)(ys[j] / r1);
                if (gx < 0 || gy < 0 || gx >= gw || gy >= gh || !(out[j] < nsum[j] / 3)) { nx[j] = -1; continue; }
                nx[j] = hd[gy * gw + gx], hd[gy * gw + gx] = j;
            }
            for (int64_t i = 0; i < n; i++) {
                int gx = (int)(xs[i] / r1), gy = (int)(ys[i] / r1);
                double sy = 0, sx = 0, c = 0;
                for (int ey = gy - nc; ey <= gy + nc; ey++)
                    for (int ex = gx - nc; ex <= gx + nc; ex++) {
                        if (ex < 0 || ey < 0 || ex >= gw || ey >= gh) continue;
                        for (int64_t j = hd[ey * gw + ex]; j >= 0; j = nx[j])
                            if (j != i && hypot(xs[j] - xs[i], ys[j] - ys[i]) < RL) sy += out[j], sx += nsum[j], c++;
                    }
                yl[i] = c > 0 ? sy / c : NAN, xl[i] = c > 0 ? sx / c : NAN;
            }
            free(hd), free(nx);
        }
        if (!isfinite(xr_slope)) { /* first call (the atoms): fit the slope */
            double *t = malloc(sizeof(double) * (size_t)(n + 1)), *rs = malloc(sizeof(double) * (size_t)(n + 1));
            int64_t m = 0;
            for (int64_t i = 0; i < n; i++)
                if (XR_IN(i)) t[m++] = nsum[i];
            for (int64_t a = 1; a < m; a++)
                for (int64_t c = a; c > 0 && t[c] < t[c - 1]; c--) { double z = t[c]; t[c] = t[c - 1]; t[c - 1] = z; }
            xr_nmed = m ? t[m / 2] : 0;
            double cut = INFINITY, c0 = 0, c1 = 0;
            for (int it = 0; it < 4; it++) {
                double S0 = 0, Sx = 0, Sy = 0, Sxx = 0, Sxy = 0;
                for (int64_t i = 0; i < n; i++) {
                    if (!XR_IN(i)) continue;
                    double x = nsum[i] - xr_nmed, y = out[i];
                    if (yl) { if (!isfinite(yl[i])) continue; x = nsum[i] - xl[i], y = out[i] - yl[i]; }
                    if (fabs(y - c0 - c1 * x) > cut) continue;
                    S0 += 1, Sx += x, Sy += y, Sxx += x * x, Sxy += x * y;
                }
                double det = S0 * Sxx - Sx * Sx;
                if (!(det > 0)) break;
                c1 = (S0 * Sxy - Sx * Sy) / det, c0 = (Sy - c1 * Sx) / S0;
                int64_t k = 0;
                for (int64_t i = 0; i < n; i++)
                    if (XR_IN(i) && (!yl || isfinite(yl[i])))
                        rs[k++] = yl ? fabs(out[i] - yl[i] - c0 - c1 * (nsum[i] - xl[i])) : fabs(out[i] - c0 - c1 * (nsum[i] - xr_nmed));
                for (int64_t a = 1; a < k; a++)
                    for (int64_t c = a; c > 0 && rs[c] < rs[c - 1]; c--) { double z = rs[c]; rs[c] = rs[c - 1]; rs[c - 1] = z; }
                cut = envd("H_XRC", 3) * 1.4826 * (k ? rs[k / 2] : 0);
            }
            xr_slope = c1 < 0 ? c1 : 0; /* only a loss with brighter neighbours is cross-talk */
            if (getenv("H_VERB")) fprintf(stderr, "xr: slope %.5f (rel %.4f) nmed %.3f c0 %.3f (%lld chalcogen-like)\n", c1, c1 * xr_nmed / c0, xr_nmed, c0, (long long)m);
            if (getenv("H_XDUMP")) {
                FILE *fd = fopen(getenv("H_XDUMP"), "w");
                for (int64_t i = 0; i < n; i++) fprintf(fd, "%.3f %.3f %.5f %.5f\n", xs[i], ys[i], out[i], nsum[i]);
                fclose(fd);
            }
            free(t), free(rs);
        }
        free(yl), free(xl);
#undef XR_IN
        for (int64_t i = 0; i < n; i++)
            if (out[i] < nsum[i] / 3) out[i] -= (float)(envd("H_XR", 1) * xr_slope * (nsum[i] - (getenv("H_XR0") ? 0 : xr_nmed)));
        free(nsum);
    }
    return TMD_OK;
}

static void wr(hid_t f, const char *name, hid_t t, int64_t n, const void *d)
{
    hsize_t dim = (hsize_t)n;
    hid_t sp = H5Screate_simple(1, &dim, NULL);
    hid_t ds = H5Dcreate2(f, name, t, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (n > 0) H5Dwrite(ds, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, d);
    H5Dclose(ds);
    H5Sclose(sp);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    tmd_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    tmd_ctx_init(&ctx, MPI_COMM_SELF);
    const char *outdir = argv[1];
    int64_t conf[8][8] = {{0}}, vac[4][3] = {{0}};
    int64_t dtp = 0, dfp = 0, dfn = 0;
    for (int a = 2; a < argc; a++) {
        char savep[512], simp[512];
        const char *c = strchr(argv[a], ':');
        snprintf(savep, sizeof savep, "%.*s", (int)(c - argv[a]), argv[a]);
        snprintf(simp, sizeof simp, "%s", c + 1);
        FILE *sf = fopen(savep, "rb");
        if (!sf) {
            fprintf(stderr, "cannot open %s\n", savep);
            return 1;
        }
        int64_t hd[5];
        if (fread(hd, sizeof hd, 1, sf) != 1) return 1;
        int64_t nf = hd[0], H = hd[1], W = hd[2], n = hd[3];
        int np = (int)hd[4];
        tmd_lattice *lat = calloc((size_t)nf, sizeof *lat);
        size_t ok = fread(lat, sizeof *lat, (size_t)nf, sf);
        tmd_classify_opts o;
        tmd_classify_opts_default(&o);
        if (getenv("H_NOXT") || getenv("H_XS") || getenv("H_XR") || getenv("H_XT") || getenv("H_TAIL")) o.xtalk = 0;
        ok += fread(&o.pixel_size, sizeof(double), 1, sf);
        ok += fread(&o.constraint, sizeof(int), 1, sf);
        tmd_atom_table at;
        tmd_atom_table_init(&at, np);
        for (int64_t i = 0; i < n; i++) {
            int64_t k;
            tmd_atom_table_push(&ctx, &at, &k);
        }
        ok += fread(at.frame, sizeof(int32_t), (size_t)n, sf);
        ok += fread(at.x, sizeof(double), (size_t)n, sf);
        ok += fread(at.y, sizeof(double), (size_t)n, sf);
        ok += fread(at.intensity, sizeof(float), (size_t)n, sf);
        ok += fread(at.prob, sizeof(float), (size_t)(n * np), sf);
        float *carry = calloc((size_t)n + 1, sizeof(float));
        ok += fread(carry, sizeof(float), (size_t)n, sf);
        fclose(sf);
        if (ok != (size_t)(nf + 2 + 6 * n) - (size_t)n + (size_t)(n * np)) {
            fprintf(stderr, "%s: truncated (expected %lld frames, %lld atoms)\n", savep, (long long)nf, (long long)n);
            return 1;
        }
        if (getenv("H_CONSTRAINT")) o.constraint = atoi(getenv("H_CONSTRAINT"));
        if (getenv("H_PX")) o.pixel_size = atof(getenv("H_PX"));
        hid_t fs;
        if (tmd_h5_open_read(&ctx, simp, &fs)) {
            tmd_error_print(&ctx);
            return 1;
        }
        img_t im = {0};
        xr_slope = NAN;
        g_nspf = 0;
        j_n = 0; /* H_JOINT: no pass-1 atoms of this image yet */
        g_pon = 0; /* H_PTAB: this image's profile not measured yet */
        gl_est = 0; /* H_GLS: this image's noise model not estimated yet */
        xr_stored = 0;
        int64_t r, cc;
        int have_img = tmd_h5_exists(fs, "/image");
        if (have_img && tmd_h5_read_rows(&ctx, fs, "/image", TMD_F32, &r, &cc, (void **)&im.img)) {
            tmd_error_print(&ctx);
            return 1;
        }
        if (!have_img && getenv("H_IMG")) { /* the image from a file (e.g. extsim's TIFF): H_IMG=dir, file = truth name minus .truth.h5 */
            char ip[700];
            const char *bn = strrchr(simp, '/');
            snprintf(ip, sizeof ip, "%s/%.*s", getenv("H_IMG"), (int)(strlen(bn ? bn + 1 : simp) - 9), bn ? bn + 1 : simp);
            tmd_reader *rd = NULL;
            if (tmd_reader_open(&ctx, ip, &rd) == TMD_OK) {
                im.img = malloc(sizeof(float) * (size_t)(H * W));
                if (tmd_reader_read(&ctx, rd, 0, 0, 0, H, W, im.img) == TMD_OK) have_img = 1;
                tmd_reader_close(&rd);
            } else
                tmd_error_print(&ctx);
            r = H, cc = W;
        }
        if (!have_img) r = H, cc = W;
        if (getenv("H_PXTRUE")) tmd_h5_read_attr_f64(&ctx, fs, "/", "pixel_size", &o.pixel_size, 1);
        if (getenv("H_PTRUE")) { /* oracle: the simulator's probe (core + tail) as the measured profile */
            const char *kn[4] = {"probe_fwhm", "tail_fraction", "tail_fwhm", "pixel_size"};
            for (int q = 0; q < 4; q++)
                if (tmd_h5_read_attr_f64(&ctx, fs, "/", kn[q], &g_ptru[q], 1)) g_ptru[q] = 0;
        }
        if (getenv("H_GLSORACLE")) {
            const char *kn[4] = {"gain", "offset", "scan_smear", "read_noise"};
            for (int q = 0; q < 4; q++)
                if (tmd_h5_read_attr_f64(&ctx, fs, "/", kn[q], &gl_tru[q], 1)) gl_tru[q] = 0;
        }
        H5Fclose(fs);
        im.H = r;
        im.W = cc;
        im.lat = lat;
        if (getenv("H_SIGMA") || getenv("H_REMEASURE")) { /* recompute the atoms' contrast with the harness measure */
            double *mx = at.x, *my = at.y;
            if (getenv("H_TRUEPOS")) { /* oracle: measure at the nearest true column (within 0.35 bond) */
                hid_t tf;
                int64_t tn = 0, t1;
                double *tx = NULL, *ty = NULL;
                if (!tmd_h5_open_read(&ctx, simp, &tf)) {
                    tmd_h5_read_rows(&ctx, tf, "/atoms/x", TMD_F64, &tn, &t1, (void **)&tx);
                    tmd_h5_read_rows(&ctx, tf, "/atoms/y", TMD_F64, &tn, &t1, (void **)&ty);
                    H5Fclose(tf);
                }
                double bd = lat[0].period_px / sqrt(3.0), lim = envd("H_TRUEPOS", 0.35) * bd;
                mx = malloc(sizeof(double) * (size_t)(n + 1)), my = malloc(sizeof(double) * (size_t)(n + 1));
                for (int64_t i = 0; i < n; i++) {
                    double best = lim * lim;
                    mx[i] = at.x[i], my[i] = at.y[i];
                    for (int64_t j = 0; j < tn; j++) {
                        double d2 = (tx[j] - at.x[i]) * (tx[j] - at.x[i]) + (ty[j] - at.y[i]) * (ty[j] - at.y[i]);
                        if (d2 < best) best = d2, mx[i] = tx[j], my[i] = ty[j];
                    }
                }
                free(tx), free(ty);
            }
            if (getenv("H_PRED")) { /* the site the bonded neighbours predict (mean over neighbours of x_j + bond vector) */
                const tmd_lattice *L = &lat[0];
                double bd = L->period_px / sqrt(3.0), dl[3][2] = {{(L->a1[0] + L->a2[0]) / 3, (L->a1[1] + L->a2[1]) / 3},
                                                                  {(L->a2[0] - 2 * L->a1[0]) / 3, (L->a2[1] - 2 * L->a1[1]) / 3},
                                                                  {(L->a1[0] - 2 * L->a2[0]) / 3, (L->a1[1] - 2 * L->a2[1]) / 3}};
                double wself = envd("H_PREDW", 0); /* weight of the detected centre itself */
                mx = malloc(sizeof(double) * (size_t)(n + 1)), my = malloc(sizeof(double) * (size_t)(n + 1));
                for (int64_t i = 0; i < n; i++) {
                    double sx = wself * at.x[i], sy = wself * at.y[i], c = wself;
                    for (int64_t j = 0; j < n; j++) {
                        double ddx = at.x[i] - at.x[j], ddy = at.y[i] - at.y[j], d = hypot(ddx, ddy);
                        if (j == i || d < 0.6 * bd || d > 1.4 * bd) continue;
                        double best = INFINITY, px = 0, py = 0;
                        for (int q = 0; q < 3; q++)
                            for (int sg = -1; sg <= 1; sg += 2) {
                                double e = hypot(ddx - sg * dl[q][0], ddy - sg * dl[q][1]);
                                if (e < best) best = e, px = at.x[j] + sg * dl[q][0], py = at.y[j] + sg * dl[q][1];
                            }
                        if (best > 0.35 * bd) continue;
                        sx += px, sy += py, c += 1;
                    }
                    mx[i] = c > 0 ? sx / c : at.x[i], my[i] = c > 0 ? sy / c : at.y[i];
                    if (c - wself < 2) mx[i] = at.x[i], my[i] = at.y[i];
                }
            }
            g_atoms = 1;
            measure(&ctx, &im, n, at.frame, mx, my, at.intensity);
            g_atoms = 0;
            if (mx != at.x) free(mx), free(my);
        }
        if (getenv("H_USECARRY")) for (int64_t i = 0; i < n; i++) at.intensity[i] = carry[i];
        o.carry = carry;
        o.measure = have_img ? measure : NULL;
        o.measure_user = &im;
        tmd_atom_table gh;
        tmd_atom_table_init(&gh, np);
        tmd_defect_table d;
        tmd_defect_table_init(&d);
        tmd_classify_report rep;
        int xs_on = getenv("H_XS") != NULL;
        double *s_x = NULL, *s_y = NULL;
        int32_t *s_f = NULL;
        float *s_in = NULL, *s_pr = NULL, *s_ca = NULL, *idx = NULL;
        if (xs_on) { /* H_XS=1: pass 1, then the within-species cross-talk slope, then pass 2 */
            s_x = malloc(sizeof(double) * (size_t)(n + 1)), s_y = malloc(sizeof(double) * (size_t)(n + 1));
            s_f = malloc(sizeof(int32_t) * (size_t)(n + 1));
            s_in = malloc(sizeof(float) * (size_t)(n + 1)), s_pr = malloc(sizeof(float) * (size_t)(n * np + 1));
            s_ca = malloc(sizeof(float) * (size_t)(n + 1)), idx = malloc(sizeof(float) * (size_t)(n + 1));
            memcpy(s_x, at.x, sizeof(double) * (size_t)n), memcpy(s_y, at.y, sizeof(double) * (size_t)n);
            memcpy(s_f, at.frame, sizeof(int32_t) * (size_t)n), memcpy(s_in, at.intensity, sizeof(float) * (size_t)n);
            memcpy(s_pr, at.prob, sizeof(float) * (size_t)(n * np)), memcpy(s_ca, carry, sizeof(float) * (size_t)n);
            for (int64_t i = 0; i < n; i++) idx[i] = (float)i;
            o.carry = idx;
        }
        tmd_status st = tmd_classify(&ctx, MPI_COMM_SELF, &o, nf, lat, NULL, H, W, &at, &gh, &d, &rep);
        if (getenv("H_GLSVERB")) fprintf(stderr, "gls: %lld fits, mean %.0f px, %lld fell back\n", (long long)gl_nfit, gl_nfit ? gl_msum / gl_nfit : 0, (long long)gl_nfall);
        if (getenv("H_GLSEFF") && gl_eff[2] > 0)
            fprintf(stderr, "gls-eff: var OLS / GLS %.3f, diag WLS / GLS %.3f, GLS free / profile alone %.3f, free / [profile, const] %.3f over %.0f fits (c %.4g, s2 %.4g)\n",
                    gl_eff[0] / gl_eff[2], gl_eff[1] / gl_eff[2], gl_eff[3] / gl_eff[2], gl_eff[4] / gl_eff[2], gl_eff[2], gl_c, gl_s2);
        memset(gl_eff, 0, sizeof gl_eff);
        if (st) {
            tmd_error_print(&ctx);
            return 1;
        }
        if (xs_on) {
            int8_t *sp = malloc((size_t)(n + 1));
            memset(sp, 0, (size_t)(n + 1));
            for (int64_t k = 0; k < at.n; k++) sp[(int64_t)idx[k]] = at.species[k];
            if (getenv("H_XSG")) /* coarse groups, so the S <-> S2 boundary does not select on the contrast */
                for (int64_t i = 0; i < n; i++)
                    sp[i] = sp[i] == TMD_SP_S ? TMD_SP_S2 : sp[i] == TMD_SP_SE ? TMD_SP_SSE : sp[i];
            double bond = lat[0].period_px / sqrt(3.0), r0 = 0.6 * bond, r1 = 1.3 * bond, edge = 1.5 * bond;
            double *N = calloc((size_t)(n + 1), sizeof(double)), *met = malloc(sizeof(double) * (size_t)(n + 1));
            int64_t nm = 0;
            for (int64_t i = 0; i < n; i++)
                if (sp[i] == TMD_SP_MO || sp[i] == TMD_SP_W) met[nm++] = s_in[i];
            for (int64_t a = 1; a < nm; a++)
                for (int64_t c = a; c > 0 && met[c] < met[c - 1]; c--) { double z = met[c]; met[c] = met[c - 1]; met[c - 1] = z; }
            xs_metal = nm ? met[nm / 2] : 0;
            /* neighbour sums: O(n) grid */
            int gw = (int)(W / r1) + 1, gh2 = (int)(H / r1) + 1;
            int64_t *hd = malloc(sizeof(int64_t) * (size_t)(gw * gh2)), *nx = malloc(sizeof(int64_t) * (size_t)(n + 1));
            for (int g = 0; g < gw * gh2; g++) hd[g] = -1;
            for (int64_t j = 0; j < n; j++) {
                int gx = (int)(s_x[j] / r1), gy = (int)(s_y[j] / r1);
                if (gx < 0 || gy < 0 || gx >= gw || gy >= gh2 || !(sp[j] == TMD_SP_MO || sp[j] == TMD_SP_W)) { nx[j] = -1; continue; }
                nx[j] = hd[gy * gw + gx], hd[gy * gw + gx] = j;
            }
            for (int64_t i = 0; i < n; i++) {
                if (sp[i] < TMD_SP_S2) continue;
                int gx = (int)(s_x[i] / r1), gy = (int)(s_y[i] / r1);
                for (int ey = gy - 1; ey <= gy + 1; ey++)
                    for (int ex = gx - 1; ex <= gx + 1; ex++) {
                        if (ex < 0 || ey < 0 || ex >= gw || ey >= gh2) continue;
                        for (int64_t j = hd[ey * gw + ex]; j >= 0; j = nx[j]) {
                            double dd = hypot(s_x[j] - s_x[i], s_y[j] - s_y[i]);
                            if (dd > r0 && dd < r1) N[i] += s_in[j];
                        }
                    }
            }
            free(hd), free(nx);
            /* pooled within-species slope, trimmed at 3 robust sd, interior chalcogens */
            double c1 = 0, cut = INFINITY, mx[8], my[8], mc[8];
            for (int it = 0; it < 4; it++) {
                for (int c = 0; c < 8; c++) mx[c] = my[c] = mc[c] = 0;
                double *rs = malloc(sizeof(double) * (size_t)(n + 1));
                int64_t k = 0;
                /* class means with the current slope's trimming */
                for (int64_t i = 0; i < n; i++) {
                    if (sp[i] < TMD_SP_S2 || s_x[i] < edge || s_y[i] < edge || s_x[i] > W - edge || s_y[i] > H - edge) continue;
                    mx[sp[i]] += N[i], my[sp[i]] += s_in[i], mc[sp[i]]++;
                }
                for (int c = 0; c < 8; c++) if (mc[c] > 0) mx[c] /= mc[c], my[c] /= mc[c];
                double sxy = 0, sxx = 0;
                for (int64_t i = 0; i < n; i++) {
                    if (sp[i] < TMD_SP_S2 || s_x[i] < edge || s_y[i] < edge || s_x[i] > W - edge || s_y[i] > H - edge) continue;
                    double x = N[i] - mx[sp[i]], y = s_in[i] - my[sp[i]];
                    if (fabs(y - c1 * x) > cut) continue;
                    sxy += x * y, sxx += x * x;
                }
                if (!(sxx > 0)) { free(rs); break; }
                c1 = sxy / sxx;
                for (int64_t i = 0; i < n; i++) {
                    if (sp[i] < TMD_SP_S2 || s_x[i] < edge || s_y[i] < edge || s_x[i] > W - edge || s_y[i] > H - edge) continue;
                    rs[k++] = fabs(s_in[i] - my[sp[i]] - c1 * (N[i] - mx[sp[i]]));
                }
                for (int64_t a = 1; a < k; a++)
                    for (int64_t c = a; c > 0 && rs[c] < rs[c - 1]; c--) { double z = rs[c]; rs[c] = rs[c - 1]; rs[c - 1] = z; }
                cut = 3 * 1.4826 * (k ? rs[k / 2] : 0);
                free(rs);
            }
            xr_slope = c1 < 0 ? c1 * envd("H_XS", 1) : 0;
            /* H_XSX=q: only where pass 1 found a metal alloy (W fraction in (q, 1 - q)): there the
             * neighbour sum varies and the slope is identifiable; in a pure crystal the cross-talk
             * is the same for every chalcogen and the fitted exponent takes it */
            if (getenv("H_XSX") && !(rep.x_w > envd("H_XSX", 0.05) && rep.x_w < 1 - envd("H_XSX", 0.05))) xr_slope = 0;
            if (getenv("H_VERB")) fprintf(stderr, "xs: slope %.5f (x metal median %.3f: %.4f), metal median %.3f\n", c1, xs_metal, c1 * xs_metal, xs_metal);
            for (int64_t i = 0; i < n; i++)
                if (sp[i] >= TMD_SP_S2) s_in[i] -= (float)(xr_slope * N[i]);
            /* pass 2 on the corrected contrast */
            tmd_atom_table_free(&at), tmd_atom_table_free(&gh), tmd_defect_table_free(&d);
            tmd_atom_table_init(&at, np), tmd_atom_table_init(&gh, np), tmd_defect_table_init(&d);
            for (int64_t i = 0; i < n; i++) {
                int64_t kk;
                tmd_atom_table_push(&ctx, &at, &kk);
            }
            memcpy(at.x, s_x, sizeof(double) * (size_t)n), memcpy(at.y, s_y, sizeof(double) * (size_t)n);
            memcpy(at.frame, s_f, sizeof(int32_t) * (size_t)n), memcpy(at.intensity, s_in, sizeof(float) * (size_t)n);
            memcpy(at.prob, s_pr, sizeof(float) * (size_t)(n * np)), memcpy(carry, s_ca, sizeof(float) * (size_t)n);
            o.carry = carry;
            st = tmd_classify(&ctx, MPI_COMM_SELF, &o, nf, lat, NULL, H, W, &at, &gh, &d, &rep);
            if (st) {
                tmd_error_print(&ctx);
                return 1;
            }
            free(sp), free(N), free(met);
            free(s_x), free(s_y), free(s_f), free(s_in), free(s_pr), free(s_ca), free(idx);
        }
        char resp[600];
        const char *base = strrchr(simp, '/');
        snprintf(resp, sizeof resp, "%s/h_%s", outdir, base ? base + 1 : simp);
        hid_t f = H5Fcreate(resp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
        H5Gclose(H5Gcreate2(f, "/atoms", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
        H5Gclose(H5Gcreate2(f, "/defects", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
        wr(f, "/atoms/x", H5T_NATIVE_DOUBLE, at.n, at.x);
        wr(f, "/atoms/y", H5T_NATIVE_DOUBLE, at.n, at.y);
        wr(f, "/atoms/frame", H5T_NATIVE_INT32, at.n, at.frame);
        wr(f, "/atoms/species", H5T_NATIVE_INT8, at.n, at.species);
        wr(f, "/atoms/intensity", H5T_NATIVE_FLOAT, at.n, at.intensity);
        wr(f, "/defects/x", H5T_NATIVE_DOUBLE, d.n, d.x);
        wr(f, "/defects/y", H5T_NATIVE_DOUBLE, d.n, d.y);
        wr(f, "/defects/frame", H5T_NATIVE_INT32, d.n, d.frame);
        wr(f, "/defects/type", H5T_NATIVE_INT8, d.n, d.type);
        H5Fclose(f);
        tmd_score s;
        if (tmd_score_files(&ctx, resp, simp, &s)) {
            tmd_error_print(&ctx);
            return 1;
        }
        for (int i = 0; i < 8; i++)
            for (int j = 0; j < 8; j++) conf[i][j] += s.confusion[i][j];
        for (int t = 1; t <= 3; t++) {
            vac[t][0] += s.vacancy[t].tp;
            vac[t][1] += s.vacancy[t].fp;
            vac[t][2] += s.vacancy[t].fn;
        }
        dtp += s.detection.tp;
        dfp += s.detection.fp;
        dfn += s.detection.fn;
        printf("%-32s n %.3f x %.2f y %.2f a %.4f (gap %.1f) sp %.4f met %.4f cha %.4f VM %.2f VX %.2f VX2 %.2f det %.4f\n",
               base ? base + 1 : simp, rep.n_exponent, rep.x_w, rep.y_se, rep.a_post, rep.vegard_gap, s.species_acc, s.metal_acc,
               s.chalcogen_acc, s.vacancy[1].f1, s.vacancy[2].f1, s.vacancy[3].f1, s.detection.f1);
        free(im.img);
        free(lat);
        tmd_atom_table_free(&at);
        tmd_atom_table_free(&gh);
        tmd_defect_table_free(&d);
        free(carry);
    }
    int64_t ok = 0, tot = 0, okm = 0, nm = 0, okc = 0, nc = 0;
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 8; j++) {
            tot += conf[i][j];
            ok += i == j ? conf[i][j] : 0;
            if (i == 1 || i == 2) {
                nm += conf[i][j];
                okm += i == j ? conf[i][j] : 0;
            } else if (i >= 3) {
                nc += conf[i][j];
                okc += i == j ? conf[i][j] : 0;
            }
        }
    double f1[4];
    for (int t = 1; t <= 3; t++) f1[t] = 2.0 * vac[t][0] / (2.0 * vac[t][0] + vac[t][1] + vac[t][2]);
    printf("POOLED species %.4f metal %.4f chalcogen %.4f | V_M %.3f (%lld/%lld/%lld) V_X %.3f (%lld/%lld/%lld) V_X2 %.3f "
           "(%lld/%lld/%lld) | det %.4f\n",
           (double)ok / tot, (double)okm / nm, (double)okc / nc, f1[1], (long long)vac[1][0], (long long)vac[1][1],
           (long long)vac[1][2], f1[2], (long long)vac[2][0], (long long)vac[2][1], (long long)vac[2][2], f1[3],
           (long long)vac[3][0], (long long)vac[3][1], (long long)vac[3][2], 2.0 * dtp / (2.0 * dtp + dfp + dfn));
    if (getenv("H_CONF")) {
        const char *nmz[8] = {"?", "Mo", "W", "S2", "SSe", "Se2", "S", "Se"};
        for (int i = 1; i < 8; i++) {
            printf("%4s", nmz[i]);
            for (int j = 0; j < 8; j++) printf(" %5lld", (long long)conf[i][j]);
            printf("\n");
        }
    }
    MPI_Finalize();
    return 0;
}
