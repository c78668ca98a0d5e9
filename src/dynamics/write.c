/* /sites, /maps and /regions of the result file (see tmd/dynamics.h). */
#include "tmd/dynamics.h"

#include <stdio.h>
#include <string.h>

tmd_status tmd_dynamics_write(tmd_ctx *ctx, tmd_writer *w, const char *prefix, const tmd_site_table *sites,
                              const tmd_dyn_maps *maps, int64_t H, int64_t W)
{
    char path[512];
    const char *pre = prefix ? prefix : "";
#define P(name) (snprintf(path, sizeof path, "%s%s", pre, name), path)
    if (sites) {
        int64_t n = sites->n;
        TMD_CHECK(tmd_writer_rows(ctx, w, P("/sites/id"), TMD_I64, n, 1, sites->id));
        TMD_CHECK(tmd_writer_rows(ctx, w, P("/sites/x"), TMD_F64, n, 1, sites->x));
        TMD_CHECK(tmd_writer_rows(ctx, w, P("/sites/y"), TMD_F64, n, 1, sites->y));
        TMD_CHECK(tmd_writer_rows(ctx, w, P("/sites/sublattice"), TMD_I8, n, 1, sites->sublattice));
        TMD_CHECK(tmd_writer_rows(ctx, w, P("/sites/instability"), TMD_F32, n, 1, sites->instability));
        TMD_CHECK(tmd_writer_rows(ctx, w, P("/sites/unstable"), TMD_I8, n, 1, sites->unstable));
    }
    if (maps) {
        int64_t dims2[2] = {maps->gh, maps->gw}, start2[2] = {maps->row0, 0}, count2[2] = {maps->rows, maps->gw};
        int64_t dims3[3] = {3, maps->gh, maps->gw}, start3[3] = {0, maps->row0, 0}, count3[3] = {3, maps->rows, maps->gw};
        TMD_CHECK(tmd_writer_array(ctx, w, P("/maps/unstable_density"), TMD_F32, 2, dims2, start2, count2, NULL,
                                   maps->unstable));
        TMD_CHECK(tmd_writer_array(ctx, w, P("/maps/vacancy_density"), TMD_F32, 3, dims3, start3, count3, NULL,
                                   maps->vacancy));
        int64_t bin = maps->bin_px, hw[2] = {H, W};
        const char *names[2] = {"/maps/unstable_density", "/maps/vacancy_density"};
        for (int k = 0; k < 2; k++) {
            char obj[512];
            snprintf(obj, sizeof obj, "%s%s", pre, names[k]);
            TMD_CHECK(tmd_writer_attr_i64(ctx, w, obj, "bin_px", &bin, 1));
            TMD_CHECK(tmd_writer_attr_i64(ctx, w, obj, "image_height", &hw[0], 1));
            TMD_CHECK(tmd_writer_attr_i64(ctx, w, obj, "image_width", &hw[1], 1));
        }
        snprintf(path, sizeof path, "%s/maps/vacancy_density", pre);
        TMD_CHECK(tmd_writer_attr_str(ctx, w, path, "layers", "V_M, V_X, V_X2 (vacancies per nm^2 per frame)"));
        snprintf(path, sizeof path, "%s/maps/unstable_density", pre);
        TMD_CHECK(tmd_writer_attr_str(ctx, w, path, "units", "unstable sites per nm^2"));
        /* every rank holds the whole region list: rank 0 (of ctx, the writer's ranks) writes it */
        const tmd_dyn_region_list *R = &maps->regions;
        int64_t n = ctx->rank == 0 ? R->n : 0;
        TMD_CHECK(tmd_writer_rows(ctx, w, P("/regions/id"), TMD_I64, n, 1, R->id));
        TMD_CHECK(tmd_writer_rows(ctx, w, P("/regions/x"), TMD_F64, n, 1, R->x));
        TMD_CHECK(tmd_writer_rows(ctx, w, P("/regions/y"), TMD_F64, n, 1, R->y));
        TMD_CHECK(tmd_writer_rows(ctx, w, P("/regions/area_px"), TMD_F64, n, 1, R->area_px));
        TMD_CHECK(tmd_writer_rows(ctx, w, P("/regions/n_sites"), TMD_I64, n, 1, R->n_sites));
    }
#undef P
    return TMD_OK;
}
