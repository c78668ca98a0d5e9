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
    float *apod;            /* (n, n) apodisation: Hann in x, Tukey (taper_y) in y */
    float *weight;          /* (n, nh) band-pass */
    fftwf_plan fwd, inv;
    int nu;                 /* points per axis of the upsampled grid */
    double complex *ey;     /* (nu, n) exp(2 pi i ky y_m / n) */
    double complex *ex;     /* (nu, nh) exp(2 pi i kx x_m / n) */
    double complex *tmp;    /* (nu, nh) partial sums over ky */
    double *up;             /* (nu, nu) upsampled correlation */
    float *frame_buf;       /* (n, n) window read from a frame */
    double *integral;       /* (n + 1, n + 1) summed-area table for the local mean */
    double *ramp;           /* (2 n) edge weights of columns, rows */
    int64_t fh, fw;         /* frame size of the stack being registered (window_spectrum) */
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
    o->taper_y = 0.75;
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
    free(p->integral);
    free(p->ramp);
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
    p->integral = malloc((size_t)(n + 1) * (n + 1) * sizeof(double));
    p->ramp = malloc((size_t)2 * n * sizeof(double));
    if (!p->integral || !p->ramp || !p->win || !p->cc || !p->spec || !p->fa || !p->fb || !p->cross || !p->c2r_in || !p->apod || !p->weight ||
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
    /* apodisation: Hann along x; along y a Tukey window (cosine tapers over taper_y of the rows,
     * flat between). The scan's line wobble shifts each row's content in x by a sine of a new
     * phase in every frame; a registration measures the weighted mean of that shift over the
     * rows, and a Hann-squared weighting of 256 rows leaves up to ~half the wobble's amplitude
     * (0.47 px wobble, 190-row period: +-0.22 px per frame), where a flat weighting averages
     * it out over the periods the window spans. 1 = Hann (before 2026-11-26); default 0.75
     * (0.5 averaged the wobble better but biased the 1000-frame film-edge stack of seed 201 by
     * 0.15 px more through frame 0's strip of lattice: drift RMSE 0.369 px, 0.292 with 0.75). */
    double ty = o.taper_y > 0 && o.taper_y <= 1 ? o.taper_y : 1.0;
    for (int y = 0; y < n; y++) {
        double u = (y + 0.5) / n, wy = 1;
        if (u < ty / 2) wy = 0.5 - 0.5 * cos(2 * M_PI * u / ty);
        else if (u > 1 - ty / 2) wy = 0.5 - 0.5 * cos(2 * M_PI * (1 - u) / ty);
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

/* Shortest period of the band-passed power spectrum F (see tmd_drift_period). */
static double period_of(const tmd_drift_plan *p, const fftwf_complex *F)
{
    int n = p->n, nh = p->nh;
    double best = 0, total = 0;
    int bky = 0, bkx = 0;
    for (int ky = 0; ky < n; ky++)
        for (int kx = 0; kx < nh; kx++) {
            size_t i = (size_t)ky * nh + kx;
            double v = (double)p->weight[i] * (crealf(F[i]) * crealf(F[i]) + cimagf(F[i]) * cimagf(F[i]));
            total += v;
            if (v > best) { best = v; bky = ky; bkx = kx; }
        }
    double f = sqrt((double)signed_freq(bky, n) * signed_freq(bky, n) + (double)bkx * bkx) / n;
    /* a lattice peak stands far above the mean of the band; otherwise there is no period */
    double mean = total / ((double)n * nh);
    double period = (f > 0 && best > 20 * mean) ? 1.0 / f : n / 2.0;
    return period > n / 2.0 ? n / 2.0 : period;
}

/* Lattice content of the spectrum F: band-passed power in the bins that stand above ten times
 * the band's mean (Bragg peaks; noise, amorphous contamination and single atoms spread their
 * power over the whole band and contribute little). */
static double lattice_score(const tmd_drift_plan *p, const fftwf_complex *F)
{
    /* unweighted power (noise is white: a flat floor) at periods of 4 to 64 px (the first-order
     * Bragg peaks at any usable pixel size); large blobs (contamination, the step of a film
     * edge) put their power next to the origin, single atoms spread theirs smoothly */
    int n = p->n, nh = p->nh;
    double kmin2 = (n / 64.0) * (n / 64.0), kmax2 = (n / 4.0) * (n / 4.0), total = 0, peaks = 0;
    size_t cnt = 0;
    for (int pass = 0; pass < 2; pass++) {
        double thr = pass ? 30 * total / (double)(cnt ? cnt : 1) : 0;
        for (int ky = 0; ky < n; ky++) {
            double fy = signed_freq(ky, n);
            for (int kx = 0; kx < nh; kx++) {
                double k2 = fy * fy + (double)kx * kx;
                if (k2 < kmin2 || k2 > kmax2) continue;
                size_t i = (size_t)ky * nh + kx;
                double v = (double)crealf(F[i]) * crealf(F[i]) + (double)cimagf(F[i]) * cimagf(F[i]);
                if (!pass) { total += v; cnt++; }
                else if (v > thr) peaks += v;
            }
        }
    }
    return peaks;
}

tmd_status tmd_drift_period(tmd_ctx *ctx, tmd_drift_plan *p, const float *win, double *period)
{
    /* strongest frequency of the band-passed power spectrum (the first-order Bragg peaks of a
     * lattice; contamination and noise are outside the band) */
    (void)ctx;
    spectrum(p, win, p->spec);
    *period = period_of(p, p->spec);
    return TMD_OK;
}

void tmd_drift_block(int64_t frames, int rank, int nranks, int64_t *t0, int64_t *nt)
{
    int64_t base = frames / nranks, rem = frames % nranks;
    *t0 = rank * base + (rank < rem ? rank : rem);
    *nt = base + (rank < rem ? 1 : 0);
}

/* Spectrum of the (n, n) window of frame t whose top-left corner is (y0, x0). Only the part
 * inside the frame (frame size p->fh x p->fw) and inside the support `sup` = {x0, x1, y0, y1}
 * (frame t's coordinates, half-open; NULL = the whole frame) counts. A window entirely inside
 * both: mean removed, Hann-apodised (spectrum()). Otherwise (a window placed where the content
 * is, near a frame edge; or the content region that every frame of a segment shows): the local
 * mean (box of 2 EDGE_BOX + 1 px, clipped to the part) is removed, so that the part's border
 * carries no step of its own, and the part is faded out over EDGE_RAMP px towards each of its
 * borders inside the window, then Hann-apodised. Windows of different frames given the same
 * support in content coordinates therefore weight the same content the same way (no bias from
 * the border). No overlap at all: F = 0. */
#define EDGE_BOX 12
#define EDGE_RAMP 16
static double edge_ramp(int64_t d) /* d = pixels from the border, 0 = the first one inside */
{
    return d >= EDGE_RAMP ? 1.0 : 0.5 - 0.5 * cos(M_PI * (d + 0.5) / EDGE_RAMP);
}

static tmd_status window_spectrum(tmd_ctx *ctx, tmd_drift_plan *p, tmd_frame_read_fn read, void *user, int64_t t,
                                  int64_t y0, int64_t x0, const int64_t *sup, fftwf_complex *F)
{
    int n = p->n;
    int64_t lx = 0, hx = p->fw, ly = 0, hy = p->fh; /* the region that counts */
    if (sup) {
        lx = sup[0] > lx ? sup[0] : lx;
        hx = sup[1] < hx ? sup[1] : hx;
        ly = sup[2] > ly ? sup[2] : ly;
        hy = sup[3] < hy ? sup[3] : hy;
    }
    if (y0 >= ly && x0 >= lx && y0 + n <= hy && x0 + n <= hx) {
        TMD_CHECK(read(ctx, user, t, y0, x0, n, n, p->frame_buf));
        spectrum(p, p->frame_buf, F);
        return TMD_OK;
    }
    int64_t ya = y0 > ly ? y0 : ly, xa = x0 > lx ? x0 : lx;
    int64_t yb = y0 + n < hy ? y0 + n : hy, xb = x0 + n < hx ? x0 + n : hx;
    if (ya >= yb || xa >= xb) {
        memset(F, 0, (size_t)n * p->nh * sizeof(fftwf_complex));
        return TMD_OK;
    }
    int h = (int)(yb - ya), w = (int)(xb - xa);
    TMD_CHECK(read(ctx, user, t, ya, xa, h, w, p->frame_buf)); /* (h, w) */
    /* ramps towards the part's borders that lie inside the window */
    double *rx = p->ramp, *ry = p->ramp + n;
    for (int x = 0; x < w; x++) {
        double r = 1;
        if (xa > x0) r *= edge_ramp(x);
        if (xb < x0 + n) r *= edge_ramp(w - 1 - x);
        rx[x] = r;
    }
    for (int y = 0; y < h; y++) {
        double r = 1;
        if (ya > y0) r *= edge_ramp(y);
        if (yb < y0 + n) r *= edge_ramp(h - 1 - y);
        ry[y] = r;
    }
    /* summed-area table of the part, (h + 1, w + 1) */
    double *S = p->integral;
    for (int x = 0; x <= w; x++) S[x] = 0;
    for (int y = 0; y < h; y++) {
        double row = 0;
        S[(size_t)(y + 1) * (w + 1)] = 0;
        for (int x = 0; x < w; x++) {
            row += p->frame_buf[(size_t)y * w + x];
            S[(size_t)(y + 1) * (w + 1) + x + 1] = S[(size_t)y * (w + 1) + x + 1] + row;
        }
    }
    for (size_t i = 0; i < (size_t)n * n; i++) p->win[i] = 0;
    double sum = 0, wsum = 0;
    for (int y = 0; y < h; y++) {
        int y1 = y - EDGE_BOX < 0 ? 0 : y - EDGE_BOX, y2 = y + EDGE_BOX + 1 > h ? h : y + EDGE_BOX + 1;
        for (int x = 0; x < w; x++) {
            int x1 = x - EDGE_BOX < 0 ? 0 : x - EDGE_BOX, x2 = x + EDGE_BOX + 1 > w ? w : x + EDGE_BOX + 1;
            double box = S[(size_t)y2 * (w + 1) + x2] - S[(size_t)y1 * (w + 1) + x2] - S[(size_t)y2 * (w + 1) + x1] +
                         S[(size_t)y1 * (w + 1) + x1];
            double v = p->frame_buf[(size_t)y * w + x] - box / ((double)(y2 - y1) * (x2 - x1));
            size_t wi = (size_t)(ya + y - y0) * n + (size_t)(xa + x - x0);
            double a = ry[y] * rx[x] * p->apod[wi];
            p->win[wi] = (float)(v * a);
            sum += v * a;
            wsum += a;
        }
    }
    /* what is left of the mean, in proportion to the weights */
    double mean = wsum > 0 ? sum / wsum : 0;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            size_t wi = (size_t)(ya + y - y0) * n + (size_t)(xa + x - x0);
            p->win[wi] -= (float)(mean * ry[y] * rx[x] * p->apod[wi]);
        }
    fftwf_execute_dft_r2c(p->fwd, p->win, F);
    return TMD_OK;
}

/* sup shifted by (ox, oy) into out */
static const int64_t *shifted(const int64_t *sup, int64_t ox, int64_t oy, int64_t out[4])
{
    out[0] = sup[0] + ox;
    out[1] = sup[1] + ox;
    out[2] = sup[2] + oy;
    out[3] = sup[3] + oy;
    return out;
}

/* Window origins tried per axis: k points from -3n/8 (the frame border at 3/8 of the window)
 * to size - 5n/8, plus the centred origin; out[0] is the centred one. Returns the count. */
static int window_origins(int64_t size, int n, int k, int64_t *out)
{
    int64_t lo = -3 * (int64_t)n / 8, hi = size - 5 * (int64_t)n / 8, c = (size - n) / 2;
    int m = 0;
    out[m++] = c;
    for (int i = 0; i < k; i++) {
        int64_t v = k > 1 ? lo + (hi - lo) * i / (k - 1) : c;
        int dup = 0;
        for (int j = 0; j < m; j++) dup |= out[j] == v;
        if (!dup) out[m++] = v;
    }
    return m;
}

/* The window for frames showing the content of frame `ref` at its origin: among the
 * candidate origins (k per axis), the one whose lattice content is largest, taking the smaller
 * of frame `ref` and frame `other` (read at the origin plus (ox, oy); other < 0: ref alone).
 * The centred window is kept unless another has twice its content, so stacks whose centre
 * shows lattice are registered as before. The candidates are split over the ranks of comm and
 * their scores summed (exact: one rank each), so every rank chooses the same window.
 * Collective. If F is not NULL it receives the spectrum of `ref` at the chosen window (every
 * rank computes it). */
static tmd_status choose_window(tmd_ctx *ctx, MPI_Comm comm, tmd_drift_plan *p, tmd_frame_read_fn read, void *user,
                                int64_t ref, int64_t other, int64_t ox, int64_t oy, int k, int64_t win[2],
                                fftwf_complex *F)
{
    int rank, nranks;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &nranks);
    int64_t ys[16], xs[16];
    if (k > 14) k = 14;
    int ny = window_origins(p->fh, p->n, k, ys), nx = window_origins(p->fw, p->n, k, xs);
    double score[16 * 16] = {0};
    tmd_status st = TMD_OK;
    for (int c = 0; c < ny * nx && !st; c++) {
        if (c % nranks != rank) continue;
        int64_t y0 = ys[c / nx], x0 = xs[c % nx];
        st = window_spectrum(ctx, p, read, user, ref, y0, x0, NULL, p->spec);
        if (st) break;
        double e = lattice_score(p, p->spec);
        if (other >= 0) {
            st = window_spectrum(ctx, p, read, user, other, y0 + oy, x0 + ox, NULL, p->spec);
            if (st) break;
            double e2 = lattice_score(p, p->spec);
            e = e < e2 ? e : e2;
        }
        score[c] = e;
    }
    st = tmd_agree(ctx, comm, st);
    if (st) return st;
    TMD_CHECK(TMD_MPI(ctx, MPI_Allreduce(MPI_IN_PLACE, score, ny * nx, MPI_DOUBLE, MPI_SUM, comm)));
    int best = 0; /* centred */
    for (int c = 1; c < ny * nx; c++)
        if (score[c] > score[best] && score[c] > 2 * score[0]) best = c;
    tmd_debug(ctx, "drift: frame %lld: window at (%lld, %lld), lattice content %.3g (centred %.3g)", (long long)ref,
              (long long)xs[best % nx], (long long)ys[best / nx], score[best], score[0]);
    win[0] = xs[best % nx];
    win[1] = ys[best / nx];
    if (F) TMD_CHECK(window_spectrum(ctx, p, read, user, ref, win[1], win[0], NULL, F));
    return TMD_OK;
}

/* Chain step: the window for the pair (t - 1, t), chosen on frame t - 1 alone among 3 x 3
 * origins (not collective: the owner of t decides from the data, so on any rank count the
 * same). F receives frame t - 1's spectrum there. */
static tmd_status pair_window(tmd_ctx *ctx, tmd_drift_plan *p, tmd_frame_read_fn read, void *user, int64_t t,
                              int64_t win[2], fftwf_complex *F)
{
    int64_t ys[8], xs[8];
    int ny = window_origins(p->fh, p->n, 3, ys), nx = window_origins(p->fw, p->n, 3, xs);
    double s0 = 0, sb = -1;
    int best = 0;
    for (int c = 0; c < ny * nx; c++) {
        TMD_CHECK(window_spectrum(ctx, p, read, user, t - 1, ys[c / nx], xs[c % nx], NULL, p->spec));
        double e = lattice_score(p, p->spec);
        if (c == 0) s0 = e;
        if (c == 0 || (e > sb && e > 2 * s0)) {
            sb = e;
            best = c;
            memcpy(F, p->spec, (size_t)p->n * p->nh * sizeof(fftwf_complex));
        }
    }
    win[0] = xs[best % nx];
    win[1] = ys[best / nx];
    return TMD_OK;
}

/* Registers spectrum Fm against Fr: d with mov(x) = ref(x - d), searched within radius of g. */
static tmd_status reg_spectra(tmd_ctx *ctx, tmd_drift_plan *p, const fftwf_complex *Fm, const fftwf_complex *Fr,
                              const double g[2], double radius, double d[2])
{
    cross_power(p, Fm, Fr);
    return find_peak(ctx, p, g[0], g[1], radius, d, NULL);
}

/* q += fixed-point (F shifted by (rx, ry) px) / len: a frame's part of a segment mean */
static void accumulate(const tmd_drift_plan *p, const fftwf_complex *F, double rx, double ry, int64_t len, double qscale,
                       int64_t *q)
{
    int n = p->n;
    for (int ky = 0; ky < n; ky++)
        for (int kx = 0; kx < p->nh; kx++) {
            size_t i = (size_t)ky * p->nh + kx;
            double ph = 2 * M_PI * (signed_freq(ky, n) * ry + kx * rx) / n;
            double complex v = F[i] * cexp(I * ph) / (double)len;
            q[2 * i] += llround(creal(v) * qscale);
            q[2 * i + 1] += llround(cimag(v) * qscale);
        }
}

static void dequantise(const tmd_drift_plan *p, const int64_t *q, double qscale, fftwf_complex *F)
{
    size_t nc = (size_t)p->n * p->nh;
    for (size_t i = 0; i < nc; i++) F[i] = (float)(q[2 * i] / qscale) + I * (float)(q[2 * i + 1] / qscale);
}

/* Sum of fixed-point means over comm, in pieces of at most 2^27 values (MPI counts are int). */
static tmd_status allreduce_q(tmd_ctx *ctx, MPI_Comm comm, int64_t *q, size_t qn)
{
    for (size_t o = 0; o < qn; o += (size_t)1 << 27) {
        size_t cnt = qn - o < ((size_t)1 << 27) ? qn - o : ((size_t)1 << 27);
        TMD_CHECK(TMD_MPI(ctx, MPI_Allreduce(MPI_IN_PLACE, q + o, (int)cnt, MPI_INT64_T, MPI_SUM, comm)));
    }
    return TMD_OK;
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
    int64_t *wseg = NULL;            /* (nseg, 2) window origin (x, y) of each segment, then sup, lsup */
    int64_t *sup = NULL, *lsup = NULL;
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
    p->fh = H;
    p->fw = W;
    double radius = 0, period = 0;
    /* frame 0's window with the most lattice (the centred one unless that shows little, e.g.
     * vacuum beyond a film edge): the lattice period (search radius, band-pass) */
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    int64_t w0[2];
    st = choose_window(ctx, comm, p, read, user, 0, -1, 0, 0, 5, w0, fk);
    if (!st) period = period_of(p, fk);
    if (!st) {
        /* keep the lattice's own frequencies in the band whatever the pixel size */
        if (period < p->n / 2.0 && 2.5 * period > p->o.highpass_px) set_weights(p, 2.5 * period);
        radius = 0.45 * period;
        if (p->o.max_radius_px > 0 && radius > p->o.max_radius_px) radius = p->o.max_radius_px;
        tmd_debug(ctx, "drift: shortest period %.2f px, search radius %.2f px (frame-0 window at %lld, %lld)", period,
                  radius, (long long)w0[0], (long long)w0[1]);
    }
    /* 1. frame-to-frame steps of this block: pair (t-1, t) measured by the owner of t; the
     *    chain is summed in 2^-32 px fixed point (int64, exact and associative), so the block
     *    offsets from MPI_Exscan give the same chain to the last bit on any rank count */
    const double cscale = 4294967296.0;
    int64_t cum[2] = {0, 0};
    for (int64_t k = 0; !st && k < nt; k++) {
        int64_t t = t0 + k;
        if (t == 0) continue;
        int64_t pw[2]; /* the pair's window, chosen on frame t - 1 */
        st = pair_window(ctx, p, read, user, t, pw, p->fa);
        if (st) break;
        st = window_spectrum(ctx, p, read, user, t, pw[1], pw[0], NULL, p->fb);
        if (st) break;
        const double g0[2] = {0, 0};
        double d[2];
        st = reg_spectra(ctx, p, p->fb, p->fa, g0, radius, d);
        if (st) break;
        tmd_debug(ctx, "drift: pair %lld: window at (%lld, %lld), step (%.3f, %.3f)", (long long)t, (long long)pw[0],
                  (long long)pw[1], d[0], d[1]);
        cum[0] += llround(d[0] * cscale);
        cum[1] += llround(d[1] * cscale);
        local[2 * k] = (double)cum[0]; /* exact: |chain| < 2^21 px */
        local[2 * k + 1] = (double)cum[1];
        if (tmd_interrupted(ctx)) st = TMD_FAIL(ctx, TMD_ERR_INTERRUPTED, "drift: interrupted at frame %lld", (long long)t);
    }
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    int64_t off[2] = {0, 0};
    MPI_Exscan(cum, off, 2, MPI_INT64_T, MPI_SUM, comm);
    if (rank == 0) off[0] = off[1] = 0;
    for (int64_t k = 0; k < nt; k++) {
        local[2 * k] = (double)(llround(local[2 * k]) + off[0]) / cscale;
        local[2 * k + 1] = (double)(llround(local[2 * k + 1]) + off[1]) / cscale;
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
    /* each segment's window: where its keyframe and its last frame both show the most lattice
     * (the same content, read at the chained offset); its support: the content (keyframe
     * coordinates) that every frame of the segment shows at its integer chained offset, so that
     * every registration within the segment weights the same content the same way */
    st = tmd_calloc(ctx, (void **)&wseg, (size_t)nseg * 10, sizeof(int64_t), "drift segment windows");
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    sup = wseg + 2 * nseg;   /* (nseg, 4) segment supports */
    lsup = wseg + 6 * nseg;  /* (nseg, 4) link supports: segment s-1's content shown by segment s */
    for (int64_t s = 0; !st && s < nseg; s++) {
        int64_t key = seg_start[s], last = seg_start[s + 1] - 1;
        int64_t ox = llround(chain[2 * last] - chain[2 * key]), oy = llround(chain[2 * last + 1] - chain[2 * key + 1]);
        st = choose_window(ctx, comm, p, read, user, key, last > key ? last : -1, ox, oy, 5, &wseg[2 * s], NULL);
        if (!st && (wseg[2 * s] != (W - n) / 2 || wseg[2 * s + 1] != (H - n) / 2))
            tmd_debug(ctx, "drift: segment %lld (frames %lld-%lld) registered in the window at (%lld, %lld)", (long long)s,
                      (long long)key, (long long)last, (long long)wseg[2 * s], (long long)wseg[2 * s + 1]);
        int64_t *u = sup + 4 * s;
        u[0] = 0, u[1] = W, u[2] = 0, u[3] = H;
        for (int64_t t = key; t <= last; t++) {
            int64_t fx = llround(chain[2 * t] - chain[2 * key]), fy = llround(chain[2 * t + 1] - chain[2 * key + 1]);
            if (t == key) fx = fy = 0;
            u[0] = u[0] > -fx ? u[0] : -fx;
            u[1] = u[1] < W - fx ? u[1] : W - fx;
            u[2] = u[2] > -fy ? u[2] : -fy;
            u[3] = u[3] < H - fy ? u[3] : H - fy;
        }
        if (s > 0) {
            int64_t prev = seg_start[s - 1], *l = lsup + 4 * s;
            memcpy(l, sup + 4 * (s - 1), 4 * sizeof(int64_t));
            for (int64_t t = key; t <= last; t++) {
                int64_t fx = llround(chain[2 * t] - chain[2 * prev]), fy = llround(chain[2 * t + 1] - chain[2 * prev + 1]);
                l[0] = l[0] > -fx ? l[0] : -fx;
                l[1] = l[1] < W - fx ? l[1] : W - fx;
                l[2] = l[2] > -fy ? l[2] : -fy;
                l[3] = l[3] < H - fy ? l[3] : H - fy;
            }
        }
    }
    if (st) goto cleanup;
    /* 3. every own frame against its keyframe's window content */
    int64_t cur_key = -1, sh[4];
    for (int64_t k = 0; !st && k < nt; k++) {
        int64_t t = t0 + k, s = seg_of[t], key = seg_start[s];
        int64_t wx0 = wseg[2 * s], wy0 = wseg[2 * s + 1];
        if (key != cur_key) {
            st = window_spectrum(ctx, p, read, user, key, wy0, wx0, sup + 4 * s, fk);
            cur_key = key;
            if (st) break;
        }
        double dx = chain[2 * t] - chain[2 * key], dy = chain[2 * t + 1] - chain[2 * key + 1];
        int64_t ox = llround(dx), oy = llround(dy);
        if (t == key) continue; /* rel = 0 */
        st = window_spectrum(ctx, p, read, user, t, wy0 + oy, wx0 + ox, shifted(sup + 4 * s, ox, oy, sh), p->fb);
        if (st) break;
        double g[2] = {dx - ox, dy - oy}, d[2];
        st = reg_spectra(ctx, p, p->fb, fk, g, radius, d);
        if (st) break;
        rel[2 * k] = ox + d[0];
        rel[2 * k + 1] = oy + d[1];
    }
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    st = tmd_calloc(ctx, (void **)&m, (size_t)nseg * 4, sizeof(double), "drift keyframe offsets");
    if (!st) st = tmd_calloc(ctx, (void **)&K, (size_t)nseg * 2, sizeof(double), "drift keyframes");
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    double *m2 = m + 2 * nseg; /* (nseg, 2) keyframe s-1 against its link mean (link s) */
    /* fixed-point scale from frame 0's spectrum: |mean| stays within 4 max|F0| */
    double qscale = 1;
    {
        st = window_spectrum(ctx, p, read, user, 0, wseg[1], wseg[0], sup, fk);
        double fmax = 0;
        for (size_t i = 0; !st && i < nc; i++) fmax = fmax > cabsf(fk[i]) ? fmax : cabsf(fk[i]);
        qscale = fmax > 0 ? 0x1p40 / (fmax * 4) : 1;
    }
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
        for (int64_t k = 0; !st && k < nt; k++) {
            int64_t t = t0 + k, s = seg_of[t], key = seg_start[s], len = seg_start[s + 1] - key;
            double dx = chain[2 * t] - chain[2 * key], dy = chain[2 * t + 1] - chain[2 * key + 1];
            int64_t ox = llround(dx), oy = llround(dy), wx0 = wseg[2 * s], wy0 = wseg[2 * s + 1];
            if (t == key) ox = oy = 0;
            st = window_spectrum(ctx, p, read, user, t, wy0 + oy, wx0 + ox, shifted(sup + 4 * s, ox, oy, sh), p->fb);
            if (st) break;
            accumulate(p, p->fb, rel[2 * k] - ox, rel[2 * k + 1] - oy, len, qscale, qsum + (size_t)s * 2 * nc);
        }
        st = tmd_agree(ctx, comm, st);
        if (st) goto cleanup;
        st = allreduce_q(ctx, comm, qsum, qn);
        if (st) goto cleanup;
        /* m_k: keyframe against its mean (every rank, every segment: the same numbers) */
        const double g0[2] = {0, 0};
        for (int64_t s = 0; !st && s < nseg; s++) {
            dequantise(p, qsum + (size_t)s * 2 * nc, qscale, fm);
            st = window_spectrum(ctx, p, read, user, seg_start[s], wseg[2 * s + 1], wseg[2 * s], sup + 4 * s, fk);
            if (!st) st = reg_spectra(ctx, p, fk, fm, g0, radius, &m[2 * s]);
        }
        /* own frames against their segment mean */
        int64_t cur = -1;
        for (int64_t k = 0; !st && k < nt; k++) {
            int64_t t = t0 + k, s = seg_of[t], key = seg_start[s];
            if (t == key) continue;
            if (s != cur) {
                dequantise(p, qsum + (size_t)s * 2 * nc, qscale, fm);
                cur = s;
            }
            double dx = chain[2 * t] - chain[2 * key], dy = chain[2 * t + 1] - chain[2 * key + 1];
            int64_t ox = llround(dx), oy = llround(dy);
            st = window_spectrum(ctx, p, read, user, t, wseg[2 * s + 1] + oy, wseg[2 * s] + ox,
                                 shifted(sup + 4 * s, ox, oy, sh), p->fb);
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
    /* 5. keyframes chained: for link s, the content of segment s-1 that every frame of segment
     *    s still shows (link support). Segment s's frames are read where that content sits in
     *    them (a small residual shift, so the apodisation does not bias it), aligned with their
     *    drift relative to keyframe s plus the chained step dc = chain(key s) - chain(key s-1),
     *    and averaged into M'_s; segment s-1's frames are averaged over the same support into
     *    M''_s-1 (aligned as in 4). M'_s against M''_s-1 gives e = K_s - K_s-1 - dc + m''_s-1,
     *    with m''_s-1 = keyframe s-1 against M''_s-1. Without mean references the keyframes
     *    alone are used. */
    if (nseg > 1) {
        size_t qn = (size_t)nseg * 2 * nc;
        int64_t *q2 = NULL, *q3 = NULL; /* (nseg, n, nh, 2) M'_s, M''_s-1 (indexed by s) */
        st = tmd_calloc(ctx, (void **)&q2, qn, sizeof(int64_t), "drift keyframe links");
        if (!st) st = tmd_calloc(ctx, (void **)&q3, qn, sizeof(int64_t), "drift keyframe links");
        for (int64_t k = 0; !st && k < nt; k++) {
            int64_t t = t0 + k, s = seg_of[t], key = seg_start[s];
            if (!use_mean && t != key) continue;
            /* as a frame of segment s: M'_s */
            if (s > 0) {
                int64_t prev = seg_start[s - 1];
                int64_t len = use_mean ? seg_start[s + 1] - key : 1;
                double dcx = chain[2 * key] - chain[2 * prev], dcy = chain[2 * key + 1] - chain[2 * prev + 1];
                double ex = dcx + rel[2 * k], ey = dcy + rel[2 * k + 1]; /* drift of t relative to key s-1, estimated */
                int64_t ox = llround(chain[2 * t] - chain[2 * prev]), oy = llround(chain[2 * t + 1] - chain[2 * prev + 1]);
                st = window_spectrum(ctx, p, read, user, t, wseg[2 * s - 1] + oy, wseg[2 * s - 2] + ox,
                                     shifted(lsup + 4 * s, ox, oy, sh), p->fb);
                if (st) break;
                accumulate(p, p->fb, ex - ox, ey - oy, len, qscale, q2 + (size_t)s * 2 * nc);
            }
            /* as a frame of segment s, content of link s+1: M''_s */
            if (use_mean && s + 1 < nseg) {
                int64_t len = seg_start[s + 1] - key;
                double dx = chain[2 * t] - chain[2 * key], dy = chain[2 * t + 1] - chain[2 * key + 1];
                int64_t ox = llround(dx), oy = llround(dy);
                if (t == key) ox = oy = 0;
                st = window_spectrum(ctx, p, read, user, t, wseg[2 * s + 1] + oy, wseg[2 * s] + ox,
                                     shifted(lsup + 4 * (s + 1), ox, oy, sh), p->fb);
                if (st) break;
                accumulate(p, p->fb, rel[2 * k] - ox, rel[2 * k + 1] - oy, len, qscale, q3 + (size_t)(s + 1) * 2 * nc);
            }
        }
        st = tmd_agree(ctx, comm, st);
        if (!st) st = allreduce_q(ctx, comm, q2, qn);
        if (!st) st = allreduce_q(ctx, comm, q3, qn);
        for (int64_t s = 1; !st && s < nseg; s++) {
            int64_t key = seg_start[s], prev = seg_start[s - 1];
            dequantise(p, q2 + (size_t)s * 2 * nc, qscale, fm2);
            st = window_spectrum(ctx, p, read, user, prev, wseg[2 * s - 1], wseg[2 * s - 2], lsup + 4 * s, fk);
            if (st) break;
            const double g0[2] = {0, 0};
            double *ms = m2 + 2 * (s - 1);
            if (use_mean) {
                dequantise(p, q3 + (size_t)s * 2 * nc, qscale, fm);
                st = reg_spectra(ctx, p, fk, fm, g0, radius, ms);
                if (st) break;
            } else {
                memcpy(fm, fk, nc * sizeof(fftwf_complex));
                ms[0] = ms[1] = 0;
            }
            double g[2] = {ms[0], ms[1]}, e[2];
            st = reg_spectra(ctx, p, fm2, fm, g, radius, e);
            if (st) break;
            K[2 * s] = K[2 * s - 2] + (chain[2 * key] - chain[2 * prev]) + e[0] - ms[0];
            K[2 * s + 1] = K[2 * s - 1] + (chain[2 * key + 1] - chain[2 * prev + 1]) + e[1] - ms[1];
        }
        free(q2);
        free(q3);
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
    free(wseg);
    fftwf_free(fk);
    fftwf_free(fm);
    fftwf_free(fm2);
    set_weights(p, p->o.highpass_px);
    return st;
}
