/* Frame drift by band-passed, partially whitened phase correlation (see tmd/drift.h). */
#include "tmd/drift.h"

#include <complex.h>
#include <fftw3.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

struct tmd_drift_plan {
    tmd_drift_opts o;
    int n, nh;              /* window edge; n/2 + 1 columns of the half spectrum */
    float *win;             /* (n, n) r2c input (fftwf_malloc) */
    fftwf_complex *spec;    /* (n, nh) r2c output */
    fftwf_complex *fa, *fb; /* (n, nh) spectra kept between calls */
    fftwf_complex *cross;   /* (n, nh) weighted cross-power spectrum (kept for the matrix DFT) */
    fftwf_complex *c2r_in;  /* (n, nh) scratch: c2r destroys its input */
    float *cc;              /* (n, n) correlation */
    float *apod;            /* (n, n) Hann window */
    float *weight;          /* (n, nh) band-pass */
    fftwf_plan fwd, inv;
    int nu;                 /* points per axis of the upsampled grid */
    double complex *ey;     /* (nu, n) exp(2 pi i ky y_m / n) */
    double complex *ex;     /* (nu, nh) exp(2 pi i kx x_m / n) */
    double complex *tmp;    /* (nu, nh) partial sums over ky */
    double *up;             /* (nu, nu) upsampled correlation */
    float *frame_buf;       /* (n, n) window read from a frame */
};

void tmd_drift_opts_default(tmd_drift_opts *o)
{
    o->window = 256;
    o->alpha = 0.0;
    o->lowpass = 0.12;
    o->highpass_px = 40;
    o->max_radius_px = 0;
    o->upsample = 40;
    o->refine_to_first = 1;
    o->mean_reference = 1;
}

int tmd_drift_plan_size(const tmd_drift_plan *p) { return p ? p->n : 0; }

void tmd_drift_plan_destroy(tmd_drift_plan **pp)
{
    if (!pp || !*pp) return;
    tmd_drift_plan *p = *pp;
    if (p->fwd) fftwf_destroy_plan(p->fwd);
    if (p->inv) fftwf_destroy_plan(p->inv);
    fftwf_free(p->win);
    fftwf_free(p->spec);
    fftwf_free(p->fa);
    fftwf_free(p->fb);
    fftwf_free(p->cross);
    fftwf_free(p->c2r_in);
    fftwf_free(p->cc);
    free(p->apod);
    free(p->weight);
    free(p->ey);
    free(p->ex);
    free(p->tmp);
    free(p->up);
    free(p->frame_buf);
    free(p);
    *pp = NULL;
}

static int signed_freq(int k, int n) { return k <= n / 2 ? k : k - n; }

/* Band-pass of the spectrum: Gaussian low-pass (noise) times Gaussian high-pass (blobs larger
 * than highpass_px: contamination, background). */
static void set_weights(tmd_drift_plan *p, double highpass_px)
{
    int n = p->n;
    double sl = p->o.lowpass > 0 ? p->o.lowpass : 1e9;
    double sh = highpass_px > 0 ? 1.0 / highpass_px : 0;
    for (int ky = 0; ky < n; ky++) {
        double fy = (double)signed_freq(ky, n) / n;
        for (int kx = 0; kx < p->nh; kx++) {
            double fx = (double)kx / n, f2 = fx * fx + fy * fy;
            double w = exp(-f2 / (2 * sl * sl));
            if (sh > 0) w *= 1 - exp(-f2 / (2 * sh * sh));
            p->weight[(size_t)ky * p->nh + kx] = (float)w;
        }
    }
}

tmd_status tmd_drift_plan_create(tmd_ctx *ctx, int n, const tmd_drift_opts *opts, tmd_drift_plan **out)
{
    *out = NULL;
    if (n < 16 || n > 4096 || n % 2)
        return TMD_FAIL(ctx, TMD_ERR_ARG, "drift: window edge %d must be even and within 16..4096", n);
    tmd_drift_opts o;
    if (opts) o = *opts;
    else tmd_drift_opts_default(&o);
    if (o.upsample < 2) o.upsample = 2;
    if (o.alpha < 0 || o.alpha > 1) return TMD_FAIL(ctx, TMD_ERR_ARG, "drift: alpha %g must be within 0..1", o.alpha);
    tmd_status st = TMD_OK;
    tmd_drift_plan *p = NULL;
    st = tmd_calloc(ctx, (void **)&p, 1, sizeof *p, "drift plan");
    if (st) return st;
    p->o = o;
    p->n = n;
    p->nh = n / 2 + 1;
    size_t nr = (size_t)n * n, nc = (size_t)n * p->nh;
    p->win = fftwf_malloc(nr * sizeof(float));
    p->cc = fftwf_malloc(nr * sizeof(float));
    p->spec = fftwf_malloc(nc * sizeof(fftwf_complex));
    p->fa = fftwf_malloc(nc * sizeof(fftwf_complex));
    p->fb = fftwf_malloc(nc * sizeof(fftwf_complex));
    p->cross = fftwf_malloc(nc * sizeof(fftwf_complex));
    p->c2r_in = fftwf_malloc(nc * sizeof(fftwf_complex));
    p->nu = 2 * (int)ceil(0.6 * o.upsample) + 1;
    p->apod = malloc(nr * sizeof(float));
    p->weight = malloc(nc * sizeof(float));
    p->ey = malloc((size_t)p->nu * n * sizeof(double complex));
    p->ex = malloc((size_t)p->nu * p->nh * sizeof(double complex));
    p->tmp = malloc((size_t)p->nu * p->nh * sizeof(double complex));
    p->up = malloc((size_t)p->nu * p->nu * sizeof(double));
    p->frame_buf = malloc(nr * sizeof(float));
    if (!p->win || !p->cc || !p->spec || !p->fa || !p->fb || !p->cross || !p->c2r_in || !p->apod || !p->weight ||
        !p->ey || !p->ex || !p->tmp || !p->up || !p->frame_buf) {
        st = TMD_FAIL(ctx, TMD_ERR_NOMEM, "drift: no memory for a %dx%d registration plan", n, n);
        goto cleanup;
    }
    /* FFTW_ESTIMATE: the same algorithm on every rank, so that ranks agree to the last bit
     * (FFTW_MEASURE picks by timing, differently per process) */
    p->fwd = fftwf_plan_dft_r2c_2d(n, n, p->win, p->spec, FFTW_ESTIMATE);
    p->inv = fftwf_plan_dft_c2r_2d(n, n, p->c2r_in, p->cc, FFTW_ESTIMATE);
    if (!p->fwd || !p->inv) {
        st = TMD_FAIL(ctx, TMD_ERR_INTERNAL, "drift: FFTW could not plan a %dx%d transform", n, n);
        goto cleanup;
    }
    for (int y = 0; y < n; y++) {
        double wy = 0.5 - 0.5 * cos(2 * M_PI * (y + 0.5) / n);
        for (int x = 0; x < n; x++) {
            double wx = 0.5 - 0.5 * cos(2 * M_PI * (x + 0.5) / n);
            p->apod[(size_t)y * n + x] = (float)(wy * wx);
        }
    }
    set_weights(p, o.highpass_px);
    *out = p;
    p = NULL;
cleanup:
    tmd_drift_plan_destroy(&p);
    return st;
}

/* Mean removed, apodised, forward transform of an (n, n) window into F. */
static void spectrum(tmd_drift_plan *p, const float *img, fftwf_complex *F)
{
    size_t nr = (size_t)p->n * p->n;
    double mean = 0;
    for (size_t i = 0; i < nr; i++) mean += img[i];
    mean /= (double)nr;
    for (size_t i = 0; i < nr; i++) p->win[i] = (float)((img[i] - mean) * p->apod[i]);
    fftwf_execute_dft_r2c(p->fwd, p->win, F);
}

/* cross = weight * Fm conj(Fr) / |Fm Fr|^alpha; cc = its inverse transform. */
static void cross_power(tmd_drift_plan *p, const fftwf_complex *Fm, const fftwf_complex *Fr)
{
    size_t nc = (size_t)p->n * p->nh;
    double alpha = p->o.alpha, mag_mean = 0;
    for (size_t i = 0; i < nc; i++) mag_mean += cabsf(Fm[i]) * cabsf(Fr[i]);
    mag_mean /= (double)nc;
    double eps = 1e-6 * mag_mean + 1e-30;
    for (size_t i = 0; i < nc; i++) {
        fftwf_complex c = Fm[i] * conjf(Fr[i]);
        double m = cabsf(c);
        double s = p->weight[i] / (alpha > 0 ? pow(m + eps, alpha) : 1.0);
        p->cross[i] = c * (float)s;
    }
    memcpy(p->c2r_in, p->cross, nc * sizeof(fftwf_complex));
    fftwf_execute_dft_c2r(p->inv, p->c2r_in, p->cc);
}

static inline float cc_at(const tmd_drift_plan *p, int y, int x)
{
    int n = p->n;
    y = ((y % n) + n) % n;
    x = ((x % n) + n) % n;
    return p->cc[(size_t)y * n + x];
}

/* Vertex of the parabola through (-1, a), (0, b), (1, c), clamped to [-0.5, 0.5]. */
static double parabolic(double a, double b, double c)
{
    double den = a - 2 * b + c;
    if (den >= 0) return 0;
    double v = 0.5 * (a - c) / den;
    return v < -0.5 ? -0.5 : v > 0.5 ? 0.5 : v;
}

/* Upsampled correlation on a nu x nu grid of step 1/upsample centred at (cx, cy), from
 * p->cross (half spectrum; real correlation, so columns 1..n/2-1 count twice). */
static void upsampled(tmd_drift_plan *p, double cx, double cy)
{
    int n = p->n, nh = p->nh, nu = p->nu, half = nu / 2;
    double step = 1.0 / p->o.upsample;
    for (int m = 0; m < nu; m++) {
        double y = cy + (m - half) * step, x = cx + (m - half) * step;
        for (int k = 0; k < n; k++) p->ey[(size_t)m * n + k] = cexp(2 * M_PI * I * signed_freq(k, n) * y / n);
        for (int k = 0; k < nh; k++) {
            double w = (k == 0 || k == n / 2) ? 1 : 2;
            p->ex[(size_t)m * nh + k] = w * cexp(2 * M_PI * I * k * x / n);
        }
    }
    /* tmp(m, kx) = sum_ky cross(ky, kx) ey(m, ky): (nu, n) x (n, nh) */
    for (size_t i = 0; i < (size_t)nu * nh; i++) p->tmp[i] = 0;
    for (int ky = 0; ky < n; ky++) {
        const fftwf_complex *row = p->cross + (size_t)ky * nh;
        for (int m = 0; m < nu; m++) {
            double complex e = p->ey[(size_t)m * n + ky];
            double complex *t = p->tmp + (size_t)m * nh;
            for (int kx = 0; kx < nh; kx++) t[kx] += e * row[kx];
        }
    }
    /* up(m, j) = Re sum_kx tmp(m, kx) ex(j, kx) */
    for (int m = 0; m < nu; m++)
        for (int j = 0; j < nu; j++) {
            double complex s = 0;
            const double complex *t = p->tmp + (size_t)m * nh, *e = p->ex + (size_t)j * nh;
            for (int kx = 0; kx < nh; kx++) s += t[kx] * e[kx];
            p->up[(size_t)m * nu + j] = creal(s);
        }
}

/* Peak of p->cc within radius of (gx, gy), refined to sub-pixel. */
static tmd_status find_peak(tmd_ctx *ctx, tmd_drift_plan *p, double gx, double gy, double radius, double d[2],
                            double *quality)
{
    int n = p->n;
    double r2max = radius > 0 ? radius * radius : 1e300;
    int best_x = 0, best_y = 0, found = 0;
    float best = -INFINITY;
    double sum2 = 0;
    for (int y = 0; y < n; y++)
        for (int x = 0; x < n; x++) {
            float v = p->cc[(size_t)y * n + x];
            sum2 += (double)v * v;
            /* the lag nearest to the guess among its periodic images */
            double sy = signed_freq(y, n), sx = signed_freq(x, n);
            double dy = sy - gy, dx = sx - gx;
            dy -= n * floor(dy / n + 0.5);
            dx -= n * floor(dx / n + 0.5);
            if (dx * dx + dy * dy > r2max) continue;
            if (v > best) {
                best = v;
                best_x = (int)lround(gx + dx);
                best_y = (int)lround(gy + dy);
                found = 1;
            }
        }
    if (!found) return TMD_FAIL(ctx, TMD_ERR_INTERNAL, "drift: no correlation lag within %g px of (%g, %g)", radius, gx, gy);
    double rms = sqrt(sum2 / ((double)n * n));
    if (quality) *quality = rms > 0 ? best / rms : 0;
    double px = best_x + parabolic(cc_at(p, best_y, best_x - 1), best, cc_at(p, best_y, best_x + 1));
    double py = best_y + parabolic(cc_at(p, best_y - 1, best_x), best, cc_at(p, best_y + 1, best_x));
    /* matrix-DFT refinement; recentre if the maximum sits on the grid border */
    int nu = p->nu, half = nu / 2;
    double step = 1.0 / p->o.upsample;
    for (int iter = 0; iter < 4; iter++) {
        upsampled(p, px, py);
        int bm = 0, bj = 0;
        double bv = -INFINITY;
        for (int m = 0; m < nu; m++)
            for (int j = 0; j < nu; j++)
                if (p->up[(size_t)m * nu + j] > bv) { bv = p->up[(size_t)m * nu + j]; bm = m; bj = j; }
        double ny = py + (bm - half) * step, nx = px + (bj - half) * step;
        int border = bm == 0 || bj == 0 || bm == nu - 1 || bj == nu - 1;
        if (!border) {
            const double *u = p->up;
            ny += step * parabolic(u[(size_t)(bm - 1) * nu + bj], bv, u[(size_t)(bm + 1) * nu + bj]);
            nx += step * parabolic(u[(size_t)bm * nu + bj - 1], bv, u[(size_t)bm * nu + bj + 1]);
            px = nx;
            py = ny;
            break;
        }
        px = nx;
        py = ny;
    }
    d[0] = px;
    d[1] = py;
    return TMD_OK;
}

tmd_status tmd_drift_register(tmd_ctx *ctx, tmd_drift_plan *p, const float *ref, const float *mov, double gx,
                              double gy, double radius, double d[2], double *quality)
{
    spectrum(p, ref, p->fa);
    spectrum(p, mov, p->fb);
    cross_power(p, p->fb, p->fa);
    return find_peak(ctx, p, gx, gy, radius, d, quality);
}

tmd_status tmd_drift_period(tmd_ctx *ctx, tmd_drift_plan *p, const float *win, double *period)
{
    /* strongest frequency of the band-passed power spectrum (the first-order Bragg peaks of a
     * lattice; contamination and noise are outside the band) */
    (void)ctx;
    int n = p->n, nh = p->nh;
    spectrum(p, win, p->spec);
    double best = 0, total = 0;
    int bky = 0, bkx = 0;
    for (int ky = 0; ky < n; ky++)
        for (int kx = 0; kx < nh; kx++) {
            size_t i = (size_t)ky * nh + kx;
            double v = (double)p->weight[i] * (crealf(p->spec[i]) * crealf(p->spec[i]) + cimagf(p->spec[i]) * cimagf(p->spec[i]));
            total += v;
            if (v > best) { best = v; bky = ky; bkx = kx; }
        }
    double f = sqrt((double)signed_freq(bky, n) * signed_freq(bky, n) + (double)bkx * bkx) / n;
    /* a lattice peak stands far above the mean of the band; otherwise there is no period */
    double mean = total / ((double)n * nh);
    *period = (f > 0 && best > 20 * mean) ? 1.0 / f : n / 2.0;
    if (*period > n / 2.0) *period = n / 2.0;
    return TMD_OK;
}

void tmd_drift_block(int64_t frames, int rank, int nranks, int64_t *t0, int64_t *nt)
{
    int64_t base = frames / nranks, rem = frames % nranks;
    *t0 = rank * base + (rank < rem ? rank : rem);
    *nt = base + (rank < rem ? 1 : 0);
}

static int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : v > hi ? hi : v; }

/* Reads the (n, n) window of frame t at (y0, x0) (clamped into the frame) and transforms it. */
static tmd_status window_spectrum(tmd_ctx *ctx, tmd_drift_plan *p, tmd_frame_read_fn read, void *user, int64_t t,
                                  int64_t y0, int64_t x0, fftwf_complex *F)
{
    TMD_CHECK(read(ctx, user, t, y0, x0, p->n, p->n, p->frame_buf));
    spectrum(p, p->frame_buf, F);
    return TMD_OK;
}

/* Registers spectrum Fm against Fr: d with mov(x) = ref(x - d), searched within radius of g. */
static tmd_status reg_spectra(tmd_ctx *ctx, tmd_drift_plan *p, const fftwf_complex *Fm, const fftwf_complex *Fr,
                              const double g[2], double radius, double d[2])
{
    cross_power(p, Fm, Fr);
    return find_peak(ctx, p, g[0], g[1], radius, d, NULL);
}

tmd_status tmd_drift_stack(tmd_ctx *ctx, MPI_Comm comm, tmd_drift_plan *p, tmd_frame_read_fn read, void *user,
                           int64_t T, int64_t H, int64_t W, int64_t t0, int64_t nt, double *drift)
{
    tmd_status st = TMD_OK;
    int n = p->n, rank, nranks;
    size_t nc = (size_t)n * p->nh;
    double *local = NULL;            /* (nt, 2) this block's drift */
    double *chain = NULL;            /* (T, 2) chained frame-to-frame drift, every rank */
    double *rel = NULL;              /* (nt, 2) drift of own frames relative to their keyframe */
    int64_t *seg_start = NULL;       /* (nseg + 1) first frame of each segment, then T */
    int32_t *seg_of = NULL;          /* (T) segment of each frame */
    double *m = NULL;                /* (nseg, 2) keyframe against its segment mean */
    double *K = NULL;                /* (nseg, 2) absolute drift of each keyframe */
    int64_t *qsum = NULL;            /* (nseg, n, nh, 2) fixed-point segment mean spectra */
    fftwf_complex *fk = NULL, *fm = NULL, *fm2 = NULL; /* (n, nh) keyframe / mean spectra */
    int *counts = NULL, *displs = NULL;
    int64_t nseg = 0;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &nranks);
    if (n > H || n > W)
        st = TMD_FAIL(ctx, TMD_ERR_ARG, "drift: window %d exceeds the %lldx%lld frame", n, (long long)H, (long long)W);
    long long before = 0, mine = nt;
    MPI_Exscan(&mine, &before, 1, MPI_LONG_LONG, MPI_SUM, comm);
    if (rank == 0) before = 0;
    if (!st && (before != t0 || nt < 0 || t0 + nt > T))
        st = TMD_FAIL(ctx, TMD_ERR_ARG, "drift: rank %d block [%lld, %lld) does not follow the blocks of ranks below (%lld)",
                      rank, (long long)t0, (long long)(t0 + nt), before);
    if (!st) st = tmd_calloc(ctx, (void **)&local, (size_t)(nt > 0 ? nt : 1) * 2, sizeof(double), "drift block");
    if (!st) st = tmd_calloc(ctx, (void **)&rel, (size_t)(nt > 0 ? nt : 1) * 2, sizeof(double), "drift block");
    if (!st) st = tmd_calloc(ctx, (void **)&chain, (size_t)(T > 0 ? T : 1) * 2, sizeof(double), "drift chain");
    if (!st) st = tmd_calloc(ctx, (void **)&seg_start, (size_t)T + 2, sizeof(int64_t), "drift segments");
    if (!st) st = tmd_calloc(ctx, (void **)&seg_of, (size_t)T + 1, sizeof(int32_t), "drift segments");
    if (!st) st = tmd_calloc(ctx, (void **)&counts, (size_t)nranks * 2, sizeof(int), "drift counts");
    if (!st) {
        fk = fftwf_malloc(nc * sizeof(fftwf_complex));
        fm = fftwf_malloc(nc * sizeof(fftwf_complex));
        fm2 = fftwf_malloc(nc * sizeof(fftwf_complex));
        if (!fk || !fm || !fm2) st = TMD_FAIL(ctx, TMD_ERR_NOMEM, "drift: no memory for reference spectra");
    }
    int64_t wy0 = (H - n) / 2, wx0 = (W - n) / 2;
    double radius = 0, period = 0;
    /* frame 0's window: the lattice period (search radius, band-pass) */
    if (!st) st = read(ctx, user, 0, wy0, wx0, n, n, p->frame_buf);
    if (!st) st = tmd_drift_period(ctx, p, p->frame_buf, &period);
    if (!st) {
        /* keep the lattice's own frequencies in the band whatever the pixel size */
        if (period < p->n / 2.0 && 2.5 * period > p->o.highpass_px) set_weights(p, 2.5 * period);
        radius = 0.45 * period;
        if (p->o.max_radius_px > 0 && radius > p->o.max_radius_px) radius = p->o.max_radius_px;
        tmd_debug(ctx, "drift: shortest period %.2f px, search radius %.2f px", period, radius);
    }
    /* 1. frame-to-frame steps of this block: pair (t-1, t) measured by the owner of t */
    double cum[2] = {0, 0};
    int have_prev = 0; /* p->fa holds the spectrum of frame t - 1 */
    for (int64_t k = 0; !st && k < nt; k++) {
        int64_t t = t0 + k;
        if (t == 0) continue;
        if (!have_prev) {
            st = window_spectrum(ctx, p, read, user, t - 1, wy0, wx0, p->fa);
            if (st) break;
        }
        st = window_spectrum(ctx, p, read, user, t, wy0, wx0, p->fb);
        if (st) break;
        const double g0[2] = {0, 0};
        double d[2];
        st = reg_spectra(ctx, p, p->fb, p->fa, g0, radius, d);
        if (st) break;
        cum[0] += d[0];
        cum[1] += d[1];
        local[2 * k] = cum[0];
        local[2 * k + 1] = cum[1];
        memcpy(p->fa, p->fb, nc * sizeof(fftwf_complex));
        have_prev = 1;
        if (tmd_interrupted(ctx)) st = TMD_FAIL(ctx, TMD_ERR_INTERRUPTED, "drift: interrupted at frame %lld", (long long)t);
    }
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    double off[2] = {0, 0};
    MPI_Exscan(cum, off, 2, MPI_DOUBLE, MPI_SUM, comm);
    if (rank == 0) off[0] = off[1] = 0;
    for (int64_t k = 0; k < nt; k++) {
        local[2 * k] += off[0];
        local[2 * k + 1] += off[1];
    }
    displs = counts + nranks;
    int c = (int)(2 * nt);
    MPI_Allgather(&c, 1, MPI_INT, counts, 1, MPI_INT, comm);
    for (int r = 0, acc = 0; r < nranks; r++) { displs[r] = acc; acc += counts[r]; }
    st = TMD_MPI(ctx, MPI_Allgatherv(local, c, MPI_DOUBLE, chain, counts, displs, MPI_DOUBLE, comm));
    if (st) goto cleanup;
    chain[0] = chain[1] = 0;
    if (!p->o.refine_to_first) {
        memcpy(drift, chain, (size_t)T * 2 * sizeof(double));
        goto cleanup;
    }
    /* 2. segments: a new keyframe when the content has moved by a quarter of the free margin
     *    of the frame (or an eighth of the window), so every frame's window of its keyframe's
     *    content lies inside it; the same on every rank (from the gathered chain) */
    double thr = fmax((double)((W < H ? W : H) - n) / 4.0, n / 8.0);
    seg_start[0] = 0;
    nseg = 1;
    for (int64_t t = 0; t < T; t++) {
        int64_t s0 = seg_start[nseg - 1];
        if (t > s0 && (fabs(chain[2 * t] - chain[2 * s0]) > thr || fabs(chain[2 * t + 1] - chain[2 * s0 + 1]) > thr))
            seg_start[nseg++] = t;
        seg_of[t] = (int32_t)(nseg - 1);
    }
    seg_start[nseg] = T;
    if (nseg > 1) tmd_debug(ctx, "drift: %lld keyframe segments", (long long)nseg);
    /* 3. every own frame against its keyframe's window content */
    int64_t cur_key = -1;
    for (int64_t k = 0; !st && k < nt; k++) {
        int64_t t = t0 + k, s = seg_of[t], key = seg_start[s];
        if (key != cur_key) {
            st = window_spectrum(ctx, p, read, user, key, wy0, wx0, fk);
            cur_key = key;
            if (st) break;
        }
        double dx = chain[2 * t] - chain[2 * key], dy = chain[2 * t + 1] - chain[2 * key + 1];
        int64_t ox = clamp64((int64_t)llround(dx), -wx0, W - n - wx0), oy = clamp64((int64_t)llround(dy), -wy0, H - n - wy0);
        if (t == key) continue; /* rel = 0 */
        st = window_spectrum(ctx, p, read, user, t, wy0 + oy, wx0 + ox, p->fb);
        if (st) break;
        double g[2] = {dx - ox, dy - oy}, d[2];
        st = reg_spectra(ctx, p, p->fb, fk, g, radius, d);
        if (st) break;
        rel[2 * k] = ox + d[0];
        rel[2 * k + 1] = oy + d[1];
    }
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    st = tmd_calloc(ctx, (void **)&m, (size_t)nseg * 2, sizeof(double), "drift keyframe offsets");
    if (!st) st = tmd_calloc(ctx, (void **)&K, (size_t)nseg * 2, sizeof(double), "drift keyframes");
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    /* 4. segment means: every frame's window aligned to its keyframe, averaged (fixed point,
     *    so the same on any rank count); then frames again against their segment mean */
    int use_mean = p->o.mean_reference && T > 1;
    if (use_mean) {
        size_t qn = (size_t)nseg * 2 * nc;
        st = tmd_calloc(ctx, (void **)&qsum, qn, sizeof(int64_t), "drift mean references");
        st = tmd_agree(ctx, comm, st);
        if (st) goto cleanup;
        /* scale from frame 0's spectrum: |mean| stays within 4 max|F0| */
        st = window_spectrum(ctx, p, read, user, 0, wy0, wx0, fk);
        double fmax = 0;
        for (size_t i = 0; i < nc; i++) fmax = fmax > cabsf(fk[i]) ? fmax : cabsf(fk[i]);
        double qscale = fmax > 0 ? 0x1p40 / (fmax * 4) : 1;
        for (int64_t k = 0; !st && k < nt; k++) {
            int64_t t = t0 + k, s = seg_of[t], key = seg_start[s], len = seg_start[s + 1] - key;
            double dx = chain[2 * t] - chain[2 * key], dy = chain[2 * t + 1] - chain[2 * key + 1];
            int64_t ox = clamp64((int64_t)llround(dx), -wx0, W - n - wx0), oy = clamp64((int64_t)llround(dy), -wy0, H - n - wy0);
            if (t == key) ox = oy = 0;
            double rx = rel[2 * k] - ox, ry = rel[2 * k + 1] - oy;
            st = window_spectrum(ctx, p, read, user, t, wy0 + oy, wx0 + ox, p->fb);
            if (st) break;
            int64_t *q = qsum + (size_t)s * 2 * nc;
            for (int ky = 0; ky < n; ky++)
                for (int kx = 0; kx < p->nh; kx++) {
                    size_t i = (size_t)ky * p->nh + kx;
                    double ph = 2 * M_PI * (signed_freq(ky, n) * ry + kx * rx) / n;
                    double complex v = p->fb[i] * cexp(I * ph) / (double)len;
                    q[2 * i] += llround(creal(v) * qscale);
                    q[2 * i + 1] += llround(cimag(v) * qscale);
                }
        }
        st = tmd_agree(ctx, comm, st);
        if (st) goto cleanup;
        /* reduce in pieces of at most 2^27 values (MPI counts are int) */
        for (size_t o = 0; o < qn && !st; o += (size_t)1 << 27) {
            size_t cnt = qn - o < ((size_t)1 << 27) ? qn - o : ((size_t)1 << 27);
            st = TMD_MPI(ctx, MPI_Allreduce(MPI_IN_PLACE, qsum + o, (int)cnt, MPI_INT64_T, MPI_SUM, comm));
        }
        if (st) goto cleanup;
        /* m_k: keyframe against its mean (every rank, every segment: the same numbers) */
        const double g0[2] = {0, 0};
        for (int64_t s = 0; !st && s < nseg; s++) {
            const int64_t *q = qsum + (size_t)s * 2 * nc;
            for (size_t i = 0; i < nc; i++) fm[i] = (float)(q[2 * i] / qscale) + I * (float)(q[2 * i + 1] / qscale);
            st = window_spectrum(ctx, p, read, user, seg_start[s], wy0, wx0, fk);
            if (!st) st = reg_spectra(ctx, p, fk, fm, g0, radius, &m[2 * s]);
        }
        /* own frames against their segment mean */
        int64_t cur = -1;
        for (int64_t k = 0; !st && k < nt; k++) {
            int64_t t = t0 + k, s = seg_of[t], key = seg_start[s];
            if (t == key) continue;
            if (s != cur) {
                const int64_t *q = qsum + (size_t)s * 2 * nc;
                for (size_t i = 0; i < nc; i++) fm[i] = (float)(q[2 * i] / qscale) + I * (float)(q[2 * i + 1] / qscale);
                cur = s;
            }
            double dx = chain[2 * t] - chain[2 * key], dy = chain[2 * t + 1] - chain[2 * key + 1];
            int64_t ox = clamp64((int64_t)llround(dx), -wx0, W - n - wx0), oy = clamp64((int64_t)llround(dy), -wy0, H - n - wy0);
            st = window_spectrum(ctx, p, read, user, t, wy0 + oy, wx0 + ox, p->fb);
            if (st) break;
            double g[2] = {rel[2 * k] - ox + m[2 * s], rel[2 * k + 1] - oy + m[2 * s + 1]}, d[2];
            st = reg_spectra(ctx, p, p->fb, fm, g, radius, d);
            if (st) break;
            rel[2 * k] = ox + d[0] - m[2 * s];
            rel[2 * k + 1] = oy + d[1] - m[2 * s + 1];
        }
        st = tmd_agree(ctx, comm, st);
        if (st) goto cleanup;
    }
    /* 5. keyframes chained: segment s's frames are read once more where the previous
     *    segment's content sits in them (a small residual shift, so the apodisation does not
     *    bias it), aligned with their drift relative to keyframe s plus the chained step
     *    dc = chain(key s) - chain(key s-1), and averaged into M'_s. Then M'_s against M_s-1
     *    gives e = K_s - K_s-1 - dc + m_s-1. Without mean references the keyframe alone is used. */
    if (nseg > 1) {
        size_t qn = (size_t)nseg * 2 * nc;
        int64_t *q2 = NULL; /* (nseg, n, nh, 2) M'_s */
        double qscale = 0;
        st = tmd_calloc(ctx, (void **)&q2, qn, sizeof(int64_t), "drift keyframe links");
        if (!st) st = window_spectrum(ctx, p, read, user, 0, wy0, wx0, fk);
        double fmax = 0;
        for (size_t i = 0; !st && i < nc; i++) fmax = fmax > cabsf(fk[i]) ? fmax : cabsf(fk[i]);
        qscale = fmax > 0 ? 0x1p40 / (fmax * 4) : 1;
        for (int64_t k = 0; !st && k < nt; k++) {
            int64_t t = t0 + k, s = seg_of[t];
            if (s == 0) continue;
            int64_t key = seg_start[s], prev = seg_start[s - 1];
            if (!use_mean && t != key) continue;
            int64_t len = use_mean ? seg_start[s + 1] - key : 1;
            double dcx = chain[2 * key] - chain[2 * prev], dcy = chain[2 * key + 1] - chain[2 * prev + 1];
            double ex = dcx + rel[2 * k], ey = dcy + rel[2 * k + 1]; /* drift of t relative to key s-1, estimated */
            int64_t ox = clamp64((int64_t)llround(ex), -wx0, W - n - wx0), oy = clamp64((int64_t)llround(ey), -wy0, H - n - wy0);
            st = window_spectrum(ctx, p, read, user, t, wy0 + oy, wx0 + ox, p->fb);
            if (st) break;
            double rx = ex - ox, ry = ey - oy;
            int64_t *q = q2 + (size_t)s * 2 * nc;
            for (int ky = 0; ky < n; ky++)
                for (int kx = 0; kx < p->nh; kx++) {
                    size_t i = (size_t)ky * p->nh + kx;
                    double ph = 2 * M_PI * (signed_freq(ky, n) * ry + kx * rx) / n;
                    double complex v = p->fb[i] * cexp(I * ph) / (double)len;
                    q[2 * i] += llround(creal(v) * qscale);
                    q[2 * i + 1] += llround(cimag(v) * qscale);
                }
        }
        st = tmd_agree(ctx, comm, st);
        for (size_t o = 0; o < qn && !st; o += (size_t)1 << 27) {
            size_t cnt = qn - o < ((size_t)1 << 27) ? qn - o : ((size_t)1 << 27);
            st = TMD_MPI(ctx, MPI_Allreduce(MPI_IN_PLACE, q2 + o, (int)cnt, MPI_INT64_T, MPI_SUM, comm));
        }
        for (int64_t s = 1; !st && s < nseg; s++) {
            int64_t key = seg_start[s], prev = seg_start[s - 1];
            const int64_t *q1 = q2 + (size_t)s * 2 * nc;
            for (size_t i = 0; i < nc; i++) fm2[i] = (float)q1[2 * i] + I * (float)q1[2 * i + 1];
            if (use_mean) {
                const int64_t *q0 = qsum + (size_t)(s - 1) * 2 * nc;
                for (size_t i = 0; i < nc; i++) fm[i] = (float)q0[2 * i] + I * (float)q0[2 * i + 1];
            } else {
                st = window_spectrum(ctx, p, read, user, prev, wy0, wx0, fm);
                if (st) break;
            }
            double g[2] = {m[2 * s - 2], m[2 * s - 1]}, e[2];
            st = reg_spectra(ctx, p, fm2, fm, g, radius, e);
            if (st) break;
            K[2 * s] = K[2 * s - 2] + (chain[2 * key] - chain[2 * prev]) + e[0] - m[2 * s - 2];
            K[2 * s + 1] = K[2 * s - 1] + (chain[2 * key + 1] - chain[2 * prev + 1]) + e[1] - m[2 * s - 1];
        }
        free(q2);
    }
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    for (int64_t k = 0; k < nt; k++) {
        int64_t s = seg_of[t0 + k];
        local[2 * k] = K[2 * s] + rel[2 * k];
        local[2 * k + 1] = K[2 * s + 1] + rel[2 * k + 1];
    }
    st = TMD_MPI(ctx, MPI_Allgatherv(local, c, MPI_DOUBLE, drift, counts, displs, MPI_DOUBLE, comm));
    if (!st) drift[0] = drift[1] = 0;
cleanup:
    free(local);
    free(rel);
    free(chain);
    free(seg_start);
    free(seg_of);
    free(m);
    free(K);
    free(qsum);
    free(counts);
    fftwf_free(fk);
    fftwf_free(fm);
    fftwf_free(fm2);
    set_weights(p, p->o.highpass_px);
    return st;
}
