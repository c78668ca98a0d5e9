/* The pipeline's classify stage: ghosts from the neighbouring ranks, sublattices, species,
 * vacancies; the pixel size refined by Vegard's law when it was measured (tmd/classify.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tmd/classify.h"
#include "tmd/halo.h"
#include "tmd/pipeline.h"

tmd_status tmd_stage_classify(tmd_ctx *ctx, tmd_run *run)
{
    int64_t T = run->info.frames;
    tmd_lattice *lat = NULL;
    tmd_ghost *g = NULL;
    tmd_status st = TMD_OK;
    int have = run->lattice_a1 != NULL && run->lattice_a2 != NULL, all = 0;
    MPI_Allreduce(&have, &all, 1, MPI_INT, MPI_MIN, run->comm);
    if (!all) {
        tmd_info(ctx, "classify: skipped (no lattice was found, so no sublattices): species stay the segmentation's");
        return TMD_OK;
    }
    st = tmd_calloc(ctx, (void **)&lat, (size_t)(T > 0 ? T : 1), sizeof *lat, "classify lattices");
    st = tmd_agree(ctx, run->comm, st);
    if (st) return st;
    double gd = 0;
    for (int64_t f = 0; f < T; f++) {
        const double *a1 = run->lattice_a1 + 2 * f, *a2 = run->lattice_a2 + 2 * f;
        double det = a1[0] * a2[1] - a1[1] * a2[0];
        double g1[2] = {a2[1] / det, -a2[0] / det}, g2[2] = {-a1[1] / det, a1[0] / det};
        tmd_lattice_from_reciprocal(&lat[f], g1, g2);
        double d = tmd_classify_ghost_distance(&lat[f]);
        if (d > gd) gd = d;
    }
    tmd_box own;
    tmd_decomp_rank_box(run->decomp, run->decomp->rank, &own);
    st = tmd_ghost_create(ctx, run->comm, &own, gd, &g);
    if (!st) {
        run->ghosts.n = 0;
        st = tmd_ghost_exchange(ctx, g, &run->atoms, &run->ghosts);
    }
    tmd_ghost_destroy(&g);
    if (st) goto cleanup;
    tmd_classify_opts o;
    tmd_classify_opts_default(&o);
    o.constraint = run->cfg.constraint;
    tmd_classify_report rep;
    st = tmd_classify(ctx, run->comm, &o, T, lat, &own, run->info.height, run->info.width, &run->atoms, &run->ghosts,
                      &run->defects, &rep);
    if (st) goto cleanup;
    run->write_defects = 1;
    int64_t v[3] = {rep.n_vm, rep.n_vx, rep.n_vx2};
    MPI_Allreduce(MPI_IN_PLACE, v, 3, MPI_INT64_T, MPI_SUM, run->comm);
    tmd_info(ctx, "classify: %lld components; fitted exponent %.2f, composition Mo%.2fW%.2f S%.2fSe%.2f (a = %.3f A); "
             "vacancies V_M %lld, V_X %lld, V_X2 %lld",
             (long long)rep.n_components, rep.n_exponent, 1 - rep.x_w, rep.x_w, 2 * (1 - rep.y_se), 2 * rep.y_se,
             rep.a_vegard, (long long)v[0], (long long)v[1], (long long)v[2]);
    if (!strcmp(run->pixel_size_source, "lattice") && rep.a_vegard > 0) {
        double ps = 0;
        st = tmd_lattice_run_pixel_size(ctx, run, rep.a_vegard, &ps);
        if (!st) {
            tmd_info(ctx, "pixel size refined by Vegard's law: %.4f -> %.4f A", run->pixel_size, ps);
            run->pixel_size = ps;
            snprintf(run->pixel_size_source, sizeof run->pixel_size_source, "lattice+Vegard");
        }
    }
cleanup:
    free(lat);
    return st;
}
