/* Threshold sweeps over cached stages (see tmd/sweep.h). */
#include "tmd/sweep.h"
#include "tmd/io.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *SWEEPABLE[] = {"instability_threshold", "density_bin_px", "density_sigma", "region_threshold",
                                  "min_region_bins"};
#define NSWEEPABLE (sizeof SWEEPABLE / sizeof SWEEPABLE[0])

void tmd_sweep_input_free(tmd_sweep_input *in)
{
    if (!in) return;
    free(in->drift);
    in->drift = NULL;
    tmd_site_table_free(&in->sites);
    tmd_defect_table_free(&in->defects);
}

static void block(int64_t n, int rank, int nranks, int64_t *a, int64_t *m)
{
    int64_t base = n / nranks, rem = n % nranks;
    *a = rank * base + (rank < rem ? rank : rem);
    *m = base + (rank < rem ? 1 : 0);
}

/* Reads one column of n rows into *out (malloc'd); the row count must be n (n < 0: any,
 * returned in *n). */
static tmd_status column(tmd_ctx *ctx, hid_t f, const char *path, const char *dset, tmd_dtype type, int64_t *n, void **out)
{
    int64_t rows = 0, cols = 0;
    TMD_CHECK(tmd_h5_read_rows(ctx, f, dset, type, &rows, &cols, out));
    if (cols != 1 || (*n >= 0 && rows != *n)) {
        free(*out);
        *out = NULL;
        return TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: %s has %lld x %lld values, expected %lld x 1", path, dset, (long long)rows,
                        (long long)cols, (long long)*n);
    }
    *n = rows;
    return TMD_OK;
}

tmd_status tmd_sweep_load(tmd_ctx *ctx, MPI_Comm comm, const char *path, tmd_sweep_input *in)
{
    tmd_status st = TMD_OK;
    hid_t f = H5I_INVALID_HID;
    char *cfgtext = NULL;
    int64_t *id = NULL;
    double *x = NULL, *y = NULL, *dx = NULL, *dy = NULL;
    int8_t *sub = NULL, *dtype = NULL;
    float *score = NULL;
    int32_t *dframe = NULL;
    int rank, nranks;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &nranks);
    memset(in, 0, sizeof *in);
    tmd_site_table_init(&in->sites);
    tmd_defect_table_init(&in->defects);
    snprintf(in->source, sizeof in->source, "%s", path);
    tmd_config_defaults(&in->cfg);
    st = tmd_h5_open_read(ctx, path, &f);
    if (!st) st = tmd_h5_read_attr_str(ctx, f, "/", "config", &cfgtext);
    if (!st) st = tmd_config_from_text(ctx, &in->cfg, cfgtext, path);
    if (!st) st = tmd_h5_read_attr_f64(ctx, f, "/", "pixel_size", &in->pixel_size, 1);
    if (!st && !tmd_h5_exists(f, "/maps/unstable_density"))
        st = TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: no /maps/unstable_density: the result was made without the density stage, "
                      "so there is nothing to sweep (re-run tmdflow run)", path);
    if (!st) st = tmd_h5_read_attr_i64(ctx, f, "/maps/unstable_density", "image_height", &in->H, 1);
    if (!st) st = tmd_h5_read_attr_i64(ctx, f, "/maps/unstable_density", "image_width", &in->W, 1);
    /* drift (stacks) */
    in->T = 1;
    if (!st && tmd_h5_exists(f, "/drift")) {
        int64_t rows = 0, cols = 0;
        st = tmd_h5_read_rows(ctx, f, "/drift", TMD_F64, &rows, &cols, (void **)&in->drift);
        if (!st && cols != 2) st = TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: /drift has %lld columns, expected 2", path, (long long)cols);
        if (!st) in->T = rows;
    }
    /* sites: this rank's block of rows */
    int64_t ns = -1;
    if (!st && tmd_h5_exists(f, "/sites/id")) {
        st = column(ctx, f, path, "/sites/id", TMD_I64, &ns, (void **)&id);
        if (!st) st = column(ctx, f, path, "/sites/x", TMD_F64, &ns, (void **)&x);
        if (!st) st = column(ctx, f, path, "/sites/y", TMD_F64, &ns, (void **)&y);
        if (!st) st = column(ctx, f, path, "/sites/sublattice", TMD_I8, &ns, (void **)&sub);
        if (!st) st = column(ctx, f, path, "/sites/instability", TMD_F32, &ns, (void **)&score);
        int64_t a, m;
        block(ns > 0 ? ns : 0, rank, nranks, &a, &m);
        for (int64_t k = a; !st && k < a + m; k++) {
            int64_t r;
            st = tmd_site_table_push(ctx, &in->sites, &r);
            if (st) break;
            in->sites.id[r] = id[k];
            in->sites.x[r] = x[k];
            in->sites.y[r] = y[k];
            in->sites.sublattice[r] = sub[k];
            in->sites.instability[r] = score[k];
        }
    } else if (!st && in->T > 1) {
        st = TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: a stack result without /sites (the instability stage did not run)", path);
    }
    int64_t nd = -1;
    if (!st && tmd_h5_exists(f, "/defects/frame")) {
        st = column(ctx, f, path, "/defects/frame", TMD_I32, &nd, (void **)&dframe);
        if (!st) st = column(ctx, f, path, "/defects/x", TMD_F64, &nd, (void **)&dx);
        if (!st) st = column(ctx, f, path, "/defects/y", TMD_F64, &nd, (void **)&dy);
        if (!st) st = column(ctx, f, path, "/defects/type", TMD_I8, &nd, (void **)&dtype);
        int64_t a, m;
        block(nd > 0 ? nd : 0, rank, nranks, &a, &m);
        for (int64_t k = a; !st && k < a + m; k++) st = tmd_defect_table_push(ctx, &in->defects, dframe[k], dx[k], dy[k], dtype[k]);
    }
    if (f != H5I_INVALID_HID) H5Fclose(f);
    free(cfgtext);
    free(id);
    free(x);
    free(y);
    free(sub);
    free(score);
    free(dframe);
    free(dx);
    free(dy);
    free(dtype);
    st = tmd_agree(ctx, comm, st);
    if (st) tmd_sweep_input_free(in);
    return st;
}

void tmd_sweep_param_free(tmd_sweep_param *p)
{
    if (!p) return;
    free(p->values);
    p->values = NULL;
    p->n = 0;
}

tmd_status tmd_sweep_parse(tmd_ctx *ctx, const char *spec, tmd_sweep_param *out)
{
    memset(out, 0, sizeof *out);
    const char *eq = strchr(spec, '=');
    if (!eq || eq == spec || (size_t)(eq - spec) >= sizeof out->name)
        return TMD_FAIL(ctx, TMD_ERR_ARG, "--param '%s': expected NAME=V1,V2,...", spec);
    memcpy(out->name, spec, (size_t)(eq - spec));
    out->name[eq - spec] = 0;
    int ok = 0;
    for (size_t i = 0; i < NSWEEPABLE; i++) ok |= !strcmp(out->name, SWEEPABLE[i]);
    if (!ok) {
        if (!tmd_config_has_key(out->name)) {
            tmd_config c;
            tmd_config_defaults(&c);
            return tmd_config_set(ctx, &c, out->name, "0", "--param"); /* names the closest key */
        }
        return TMD_FAIL(ctx, TMD_ERR_ARG, "--param %s: this key acts before the cached stages; a sweep can vary "
                        "instability_threshold, density_bin_px, density_sigma, region_threshold, min_region_bins "
                        "(re-run tmdflow run for %s)", out->name, out->name);
    }
    const char *p = eq + 1;
    int cap = 8;
    out->values = malloc(sizeof(double) * cap);
    if (!out->values) return TMD_FAIL(ctx, TMD_ERR_NOMEM, "--param: no memory");
    while (1) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        char buf[64];
        if (len == 0 || len >= sizeof buf) {
            tmd_sweep_param_free(out);
            return TMD_FAIL(ctx, TMD_ERR_ARG, "--param %s: empty or too long value in '%s'", out->name, eq + 1);
        }
        memcpy(buf, p, len);
        buf[len] = 0;
        /* checked by the configuration table (type and range) */
        tmd_config c;
        tmd_config_defaults(&c);
        tmd_status st = tmd_config_set(ctx, &c, out->name, buf, "--param");
        char *end;
        errno = 0;
        double v = strtod(buf, &end);
        if (!st && (*end || errno || !isfinite(v))) st = TMD_FAIL(ctx, TMD_ERR_ARG, "--param %s: '%s' is not a number", out->name, buf);
        if (st) {
            tmd_sweep_param_free(out);
            return st;
        }
        if (out->n == cap) {
            double *nv = realloc(out->values, sizeof(double) * (cap *= 2));
            if (!nv) {
                tmd_sweep_param_free(out);
                return TMD_FAIL(ctx, TMD_ERR_NOMEM, "--param: no memory");
            }
            out->values = nv;
        }
        out->values[out->n++] = v;
        if (!comma) break;
        p = comma + 1;
    }
    return TMD_OK;
}

int64_t tmd_sweep_count(const tmd_sweep_param *p, int np)
{
    int64_t n = 1;
    for (int i = 0; i < np; i++) n *= p[i].n;
    return n;
}

tmd_status tmd_sweep_config(tmd_ctx *ctx, const tmd_config *base, const tmd_sweep_param *p, int np, int64_t k,
                            tmd_config *out)
{
    *out = *base;
    for (int i = np - 1; i >= 0; i--) {
        int64_t v = k % p[i].n;
        k /= p[i].n;
        char buf[64];
        snprintf(buf, sizeof buf, "%.17g", p[i].values[v]);
        TMD_CHECK(tmd_config_set(ctx, out, p[i].name, buf, "sweep"));
    }
    return TMD_OK;
}

tmd_status tmd_sweep_eval(tmd_ctx *ctx, MPI_Comm comm, tmd_sweep_input *in, const tmd_config *cfg, tmd_dyn_maps *maps,
                          int64_t *n_unstable)
{
    tmd_dyn_params prm;
    tmd_dyn_params_from_config(&prm, cfg, in->pixel_size);
    int stack = in->T > 1;
    int64_t l = 0;
    if (stack) {
        tmd_dynamics_threshold(&in->sites, prm.threshold);
        for (int64_t k = 0; k < in->sites.n; k++) l += in->sites.unstable[k];
    }
    MPI_Allreduce(&l, n_unstable, 1, MPI_INT64_T, MPI_SUM, comm);
    return tmd_dynamics_maps(ctx, comm, &prm, in->H, in->W, in->T, stack ? &in->sites : NULL, &in->defects, in->drift, maps);
}

tmd_status tmd_sweep_run(tmd_ctx *ctx, MPI_Comm comm, tmd_sweep_input *in, const tmd_sweep_param *p, int np,
                         const char *out, int force, tmd_sweep_row **summary)
{
    tmd_status st = TMD_OK;
    tmd_writer *w = NULL;
    int64_t n = tmd_sweep_count(p, np);
    tmd_sweep_row *rows = NULL;
    double *vals = NULL; /* (np, n) the swept values per setting */
    char *cfgtext = NULL, *spec = NULL;
    if (summary) *summary = NULL;
    if (np < 1 || n < 1) st = TMD_FAIL(ctx, TMD_ERR_ARG, "sweep: no --param given");
    if (!st) st = tmd_calloc(ctx, (void **)&rows, (size_t)n, sizeof *rows, "sweep table");
    if (!st) st = tmd_calloc(ctx, (void **)&vals, (size_t)(np * n), sizeof(double), "sweep values");
    if (!st) st = tmd_calloc(ctx, (void **)&spec, (size_t)np * 1024 + 1, 1, "sweep specification");
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    for (int i = 0; i < np; i++) {
        size_t len = strlen(spec);
        len += (size_t)snprintf(spec + len, 1024, "%s%s=", i ? " " : "", p[i].name);
        for (int v = 0; v < p[i].n && len + 40 < (size_t)np * 1024; v++)
            len += (size_t)snprintf(spec + len, 40, "%s%g", v ? "," : "", p[i].values[v]);
    }
    st = tmd_writer_create(ctx, out, force, comm, &w);
    if (st) goto cleanup;
    for (int64_t k = 0; k < n && !st; k++) {
        tmd_config cfg;
        st = tmd_sweep_config(ctx, &in->cfg, p, np, k, &cfg);
        st = tmd_agree(ctx, comm, st);
        if (st) break;
        int64_t kk = k;
        for (int i = np - 1; i >= 0; i--) {
            vals[i * n + k] = p[i].values[kk % p[i].n];
            kk /= p[i].n;
        }
        tmd_dyn_maps maps;
        st = tmd_sweep_eval(ctx, comm, in, &cfg, &maps, &rows[k].n_unstable);
        if (st) break;
        rows[k].n_regions = maps.regions.n;
        for (int64_t r = 0; r < maps.regions.n; r++) rows[k].area_px += maps.regions.area_px[r];
        char pre[64];
        snprintf(pre, sizeof pre, "/settings/%03lld", (long long)k);
        /* regions only (the maps of every setting would dwarf the table) */
        const tmd_dyn_region_list *R = &maps.regions;
        int64_t nr = ctx->rank == 0 ? R->n : 0;
        char path[128];
        snprintf(path, sizeof path, "%s/regions/id", pre);
        st = tmd_writer_rows(ctx, w, path, TMD_I64, nr, 1, R->id);
        snprintf(path, sizeof path, "%s/regions/x", pre);
        if (!st) st = tmd_writer_rows(ctx, w, path, TMD_F64, nr, 1, R->x);
        snprintf(path, sizeof path, "%s/regions/y", pre);
        if (!st) st = tmd_writer_rows(ctx, w, path, TMD_F64, nr, 1, R->y);
        snprintf(path, sizeof path, "%s/regions/area_px", pre);
        if (!st) st = tmd_writer_rows(ctx, w, path, TMD_F64, nr, 1, R->area_px);
        snprintf(path, sizeof path, "%s/regions/n_sites", pre);
        if (!st) st = tmd_writer_rows(ctx, w, path, TMD_I64, nr, 1, R->n_sites);
        snprintf(path, sizeof path, "%s/regions/id", pre);
        for (int i = 0; i < np && !st; i++) st = tmd_writer_attr_f64(ctx, w, path, p[i].name, &vals[i * n + k], 1);
        tmd_dyn_maps_free(&maps);
    }
    /* the table: one row per setting (written by rank 0) */
    int64_t mine = ctx->rank == 0 ? n : 0;
    for (int i = 0; i < np && !st; i++) {
        char path[128];
        snprintf(path, sizeof path, "/sweep/%s", p[i].name);
        st = tmd_writer_rows(ctx, w, path, TMD_F64, mine, 1, vals + i * n);
    }
    if (!st) {
        int64_t *nu = NULL, *nreg = NULL;
        double *area = NULL;
        st = tmd_calloc(ctx, (void **)&nu, (size_t)n, sizeof(int64_t), "sweep column");
        if (!st) st = tmd_calloc(ctx, (void **)&nreg, (size_t)n, sizeof(int64_t), "sweep column");
        if (!st) st = tmd_calloc(ctx, (void **)&area, (size_t)n, sizeof(double), "sweep column");
        st = tmd_agree(ctx, comm, st);
        if (!st) {
            for (int64_t k = 0; k < n; k++) { nu[k] = rows[k].n_unstable; nreg[k] = rows[k].n_regions; area[k] = rows[k].area_px; }
            st = tmd_writer_rows(ctx, w, "/sweep/n_unstable", TMD_I64, mine, 1, nu);
            if (!st) st = tmd_writer_rows(ctx, w, "/sweep/n_regions", TMD_I64, mine, 1, nreg);
            if (!st) st = tmd_writer_rows(ctx, w, "/sweep/region_area_px", TMD_F64, mine, 1, area);
        }
        free(nu);
        free(nreg);
        free(area);
    }
    if (!st) st = tmd_config_to_text(ctx, &in->cfg, &cfgtext);
    st = tmd_agree(ctx, comm, st);
    if (!st) st = tmd_writer_attr_str(ctx, w, "/", "source", in->source);
    if (!st) st = tmd_writer_attr_str(ctx, w, "/", "config", cfgtext);
    if (!st) st = tmd_writer_attr_str(ctx, w, "/", "params", spec);
    if (!st) st = tmd_writer_attr_str(ctx, w, "/", "tmdflow_version", TMD_VERSION);
    if (w) {
        tmd_status e = tmd_writer_close(ctx, &w, st == TMD_OK);
        if (!st) st = e;
    }
    if (!st && summary) {
        *summary = rows;
        rows = NULL;
    }
cleanup:
    free(rows);
    free(vals);
    free(cfgtext);
    free(spec);
    return st;
}
