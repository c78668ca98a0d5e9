/* The pipeline's lattice stage: lattice of every frame, /lattice/a1, /lattice/a2, and the
 * pixel size when none was given (tmd/lattice.h, tmd/pipeline.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tmd/lattice.h"
#include "tmd/pipeline.h"

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

tmd_status tmd_stage_lattice(tmd_ctx *ctx, tmd_run *run)
{
    int64_t T = run->info.frames;
    tmd_lattice *lat = NULL;
    double *per = NULL;
    tmd_status st = tmd_calloc(ctx, (void **)&lat, (size_t)(T > 0 ? T : 1), sizeof *lat, "lattice per frame");
    if (!st) st = tmd_calloc(ctx, (void **)&per, (size_t)(T > 0 ? T : 1), sizeof *per, "lattice per frame");
    if (!st) st = tmd_calloc(ctx, (void **)&run->lattice_a1, (size_t)(T > 0 ? T : 1) * 2, sizeof(double), "lattice a1");
    if (!st) st = tmd_calloc(ctx, (void **)&run->lattice_a2, (size_t)(T > 0 ? T : 1) * 2, sizeof(double), "lattice a2");
    st = tmd_agree(ctx, run->comm, st);
    if (st) goto cleanup;
    tmd_lattice_opts o;
    tmd_lattice_opts_default(&o);
    /* single images: 3 x 3 tiles of 512 with the precise refinement; stacks: one tile per frame */
    int tiles = T == 1 ? 9 : T <= 16 ? 4 : 1;
    o.refine_dtft = T <= 16;
    /* a pixel size from --pixel-size or the configuration is the user's word; one from the input's
     * metadata (TIFF resolution tags, ImageJ / Velox / Berkeley EMD calibration) is taken as given
     * too, unless the lattice contradicts it (below) */
    if (!run->cfg.pixel_size_from_file) run->info.pixel_size = 0; /* the scale stage then measures it */
    int from_file = !(run->pixel_size_arg > 0) && !(run->cfg.pixel_size > 0) && run->info.pixel_size > 0;
    double given_px = run->pixel_size_arg > 0 ? run->pixel_size_arg
                      : run->cfg.pixel_size > 0 ? run->cfg.pixel_size
                                                 : run->info.pixel_size;
    int measured = 0;
    double lo = given_px > 0 ? 0.85 * TMD_A_WS2 / given_px : 0, hi = given_px > 0 ? 1.15 * TMD_A_MOSE2 / given_px : 0;
    if (given_px > 0) {
        /* A known pixel size fixes the period to a = 3.15-3.29 A (WS2 .. MoSe2), give or take
         * strain and scan distortion (+-15 %). First the whole band, as without a pixel size:
         * the walk from the strongest set of peaks down to the first order also finds a {100}
         * set too weak to stand out by itself (sublattices alike, heavy contamination), and
         * its strong higher orders sharpen the fit. If that gives nothing or a period outside
         * the expected range on any frame, search only that range, which keeps the search off
         * the {110} reflections (period a/sqrt(3)) and off half periods. measure_input gives
         * the same answer on every rank, so every rank takes the same branch. */
        tmd_lattice_opts full = o;
        st = tmd_lattice_measure_input(ctx, run->comm, run->reader, 512, tiles, &full, lat);
        if (st == TMD_ERR_NOLATTICE) {
            tmd_error_clear(ctx);
            st = TMD_OK;
        } else if (st == TMD_OK) {
            int64_t inside = 0;
            for (int64_t f = 0; f < T; f++) inside += lat[f].period_px >= lo && lat[f].period_px <= hi;
            measured = inside == T;
            if (inside == 0 && from_file) {
                /* a calibration that puts the lattice found over the whole band outside every TMD's
                 * constant on every frame is wrong (a stale or foreign calibration: binning, nm
                 * taken for A), not the lattice: measure the scale as without one */
                tmd_info(ctx, "warning: %s: the pixel size in its metadata (%.4f A) puts the lattice period of %.2f px "
                         "at a = %.2f A, not 3.15-3.29 A: not used; the pixel size is measured from the lattice "
                         "(give --pixel-size to override)",
                         run->input, given_px, lat[0].period_px, lat[0].period_px * given_px);
                run->info.pixel_size = 0; /* the scale stage measures it */
                given_px = 0;
                measured = 1; /* the whole band's measurement is the one made without a pixel size */
            } else if (!measured)
                tmd_info(ctx, "lattice: period %.2f px (frame 0) is not a = 3.15-3.29 A at the given %.4f A/px; "
                         "searching %.1f-%.1f px only", lat[0].period_px, given_px, lo, hi);
        }
        if (st) goto cleanup;
    }
    if (given_px > 0) { /* (a refused calibration has set given_px to 0) */
        if (lo > o.min_period_px) o.min_period_px = lo;
        if (hi < 512.0 / 4) o.max_period_px = hi; /* at least four periods in a 512 px tile */
        else o.max_period_px = 512.0 / 4;
    }
    if (!measured) st = tmd_lattice_measure_input(ctx, run->comm, run->reader, 512, tiles, &o, lat);
    if (st) {
        /* with a pixel size given, a missing lattice is not fatal for detection: classification
         * will say so; without one, there is nothing to scale by */
        if (st == TMD_ERR_NOLATTICE && given_px > 0) {
            tmd_info(ctx, "warning: %s", ctx->err_msg);
            tmd_error_clear(ctx);
            free(run->lattice_a1);
            free(run->lattice_a2);
            run->lattice_a1 = run->lattice_a2 = NULL;
            st = TMD_OK;
        } else if (st == TMD_ERR_NOLATTICE) {
            char msg[TMD_ERRMSG_MAX];
            snprintf(msg, sizeof msg, "%s", ctx->err_msg);
            tmd_error_clear(ctx);
            st = TMD_FAIL(ctx, TMD_ERR_NOLATTICE, "%s: %s", run->input, msg);
        }
        goto cleanup;
    }
    for (int64_t f = 0; f < T; f++) {
        run->lattice_a1[2 * f] = lat[f].a1[0];
        run->lattice_a1[2 * f + 1] = lat[f].a1[1];
        run->lattice_a2[2 * f] = lat[f].a2[0];
        run->lattice_a2[2 * f + 1] = lat[f].a2[1];
        per[f] = lat[f].period_px;
    }
    qsort(per, (size_t)T, sizeof *per, cmp_double);
    double p = per[T / 2];
    tmd_info(ctx, "lattice: period %.3f px (along the fast-scan axis x %.3f px), rotation %.2f deg, distortion %.3f "
             "(frame 0), %.4f A/px at a = %.2f A", p, tmd_lattice_period_fast(&lat[0]), lat[0].rotation_deg,
             lat[0].distortion, TMD_A_DEFAULT / p, TMD_A_DEFAULT);
cleanup:
    free(lat);
    free(per);
    return st;
}

/* median over frames of the area-based period (fast = 0) or of the fast-scan one (fast = 1) */
static tmd_status run_period(tmd_ctx *ctx, tmd_run *run, int fast, double *period)
{
    if (!run->lattice_a1 || !run->lattice_a2 || run->info.frames < 1)
        return TMD_FAIL(ctx, TMD_ERR_NOLATTICE, "%s: no lattice was measured, so no pixel size: give --pixel-size",
                        run->input);
    int64_t T = run->info.frames;
    double *per = malloc(sizeof(double) * (size_t)T);
    if (!per) return TMD_FAIL(ctx, TMD_ERR_NOMEM, "lattice: out of memory");
    for (int64_t f = 0; f < T; f++) {
        const double *a1 = run->lattice_a1 + 2 * f, *a2 = run->lattice_a2 + 2 * f;
        per[f] = fast ? tmd_lattice_basis_period_fast(a1, a2)
                      : sqrt(fabs(a1[0] * a2[1] - a1[1] * a2[0]) / (sqrt(3.0) / 2.0));
    }
    qsort(per, (size_t)T, sizeof *per, cmp_double);
    *period = per[T / 2];
    free(per);
    return TMD_OK;
}

tmd_status tmd_lattice_run_pixel_size(tmd_ctx *ctx, tmd_run *run, double a_angstrom, double *pixel_size)
{
    double p = 0;
    TMD_CHECK(run_period(ctx, run, 0, &p));
    *pixel_size = a_angstrom / p;
    return TMD_OK;
}

tmd_status tmd_lattice_run_pixel_size_fast(tmd_ctx *ctx, tmd_run *run, double a_angstrom, double *pixel_size)
{
    double p = 0;
    TMD_CHECK(run_period(ctx, run, 1, &p));
    *pixel_size = a_angstrom / p;
    return TMD_OK;
}
