/* Simulation parameters: the table (names, ranges, meanings), random draws over the whole
 * simulator range, overrides by name, derived values. */
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sim_internal.h"

typedef enum { PT_DOUBLE, PT_I64, PT_INT, PT_U64 } ptype;
typedef struct {
    const char *name;
    ptype type;
    size_t off;
    double min, max;
    const char *doc;
} pdesc;

#define OFF(f) offsetof(tmd_sim_params, f)
static const pdesc PARAMS[] = {
    {"seed", PT_U64, OFF(seed), 0, 1.8446744073709552e19, "image key (derived from --seed and the image index)"},
    {"height", PT_I64, OFF(height), 8, 1e7, "image rows"},
    {"width", PT_I64, OFF(width), 8, 1e7, "image columns"},
    {"frames", PT_I64, OFF(frames), 1, 1e6, "frames (1 = single image)"},
    {"out_u16", PT_INT, OFF(out_u16), 0, 1, "1: /image stored as uint16, 0: float32"},
    {"pixel_size", PT_DOUBLE, OFF(pixel_size), 0.02, 1.0, "Angstrom per pixel (drawn 0.06-0.18)"},
    {"comp_w", PT_DOUBLE, OFF(comp_w), 0, 1, "x: W fraction of the metal sites"},
    {"comp_se", PT_DOUBLE, OFF(comp_se), 0, 1, "y: Se fraction of the chalcogen atoms"},
    {"cluster", PT_DOUBLE, OFF(cluster), 0, 1, "short-range order: weight of a smooth field in the alloy draw"},
    {"cluster_length", PT_DOUBLE, OFF(cluster_length), 1, 1000, "Angstrom, correlation length of the alloy field"},
    {"lattice_a", PT_DOUBLE, OFF(lattice_a), 0, 5, "Angstrom; 0 = Vegard's law from the composition"},
    {"rotation", PT_DOUBLE, OFF(rotation), -360, 360, "degrees, in-plane rotation of the lattice"},
    {"strain", PT_DOUBLE, OFF(strain), 0, 0.05, "maximum strain (homogeneous part + smooth field)"},
    {"strain_length", PT_DOUBLE, OFF(strain_length), 10, 1e5, "Angstrom, wavelength scale of the strain field"},
    {"displacement", PT_DOUBLE, OFF(displacement), 0, 0.5, "Angstrom rms static random displacement per column"},
    {"vac_m", PT_DOUBLE, OFF(vac_m), 0, 0.5, "V_M probability per metal site (outside regions)"},
    {"vac_x", PT_DOUBLE, OFF(vac_x), 0, 0.5, "probability per chalcogen atom of being missing"},
    {"vac_x2", PT_DOUBLE, OFF(vac_x2), 0, 0.5, "extra probability per chalcogen site of a V_X2"},
    {"region_spacing", PT_DOUBLE, OFF(region_spacing), 10, 1e5, "Angstrom, cell of candidate defect-rich regions"},
    {"region_prob", PT_DOUBLE, OFF(region_prob), 0, 1, "probability that a cell holds a defect-rich region"},
    {"region_radius", PT_DOUBLE, OFF(region_radius), 1, 1e4, "Angstrom, mean radius of a region"},
    {"region_boost", PT_DOUBLE, OFF(region_boost), 1, 100, "vacancy-rate multiplier inside a region"},
    {"z_exponent", PT_DOUBLE, OFF(z_exponent), 1.0, 2.5, "n of the Z^n contrast"},
    {"column_jitter", PT_DOUBLE, OFF(column_jitter), 0, 0.3, "rms relative intensity scatter of columns"},
    {"probe_fwhm", PT_DOUBLE, OFF(probe_fwhm), 0.3, 3, "Angstrom, FWHM of the probe's Gaussian core"},
    {"tail_fraction", PT_DOUBLE, OFF(tail_fraction), 0, 0.6, "share of the probe intensity in the tail"},
    {"tail_fwhm", PT_DOUBLE, OFF(tail_fwhm), 1, 10, "Angstrom, FWHM of the tail Gaussian"},
    {"dose", PT_DOUBLE, OFF(dose), 1, 1e6, "expected counts at an isolated W column's peak"},
    {"read_noise", PT_DOUBLE, OFF(read_noise), 0, 100, "counts rms, Gaussian detector noise"},
    {"gain", PT_DOUBLE, OFF(gain), 1e-6, 1e4, "output units per count"},
    {"offset", PT_DOUBLE, OFF(offset), -1e6, 1e6, "output units added to every pixel"},
    {"scan_smear", PT_DOUBLE, OFF(scan_smear), 0, 0.9, "detector afterglow: IIR coefficient along the fast scan"},
    {"background", PT_DOUBLE, OFF(background), 0, 5, "mean background, fraction of a Mo column peak"},
    {"background_var", PT_DOUBLE, OFF(background_var), 0, 5, "smooth background variation amplitude, same unit"},
    {"background_length", PT_DOUBLE, OFF(background_length), 5, 1e5, "Angstrom, scale of the background variation"},
    {"contamination", PT_DOUBLE, OFF(contamination), 0, 5, "amorphous contamination mean, fraction of a Mo peak"},
    {"contamination_cover", PT_DOUBLE, OFF(contamination_cover), 0, 1, "share of the area under contamination"},
    {"contamination_length", PT_DOUBLE, OFF(contamination_length), 2, 1e4, "Angstrom, contamination patch scale"},
    {"hole_prob", PT_DOUBLE, OFF(hole_prob), 0, 1, "probability that a hole cell holds a hole (vacuum)"},
    {"hole_spacing", PT_DOUBLE, OFF(hole_spacing), 10, 1e5, "Angstrom, hole cell size"},
    {"hole_radius", PT_DOUBLE, OFF(hole_radius), 1, 1e4, "Angstrom, mean hole radius"},
    {"edge", PT_DOUBLE, OFF(edge), 0, 1, "1: the film ends at a wavy edge"},
    {"edge_angle", PT_DOUBLE, OFF(edge_angle), -360, 360, "degrees, direction of the edge normal"},
    {"edge_offset", PT_DOUBLE, OFF(edge_offset), -1, 1, "edge distance from the centre, fraction of the half-diagonal"},
    {"jitter", PT_DOUBLE, OFF(jitter), 0, 5, "pixels rms, line-to-line scan jitter along x"},
    {"wobble", PT_DOUBLE, OFF(wobble), 0, 5, "pixels, amplitude of a periodic line wobble"},
    {"wobble_period", PT_DOUBLE, OFF(wobble_period), 2, 1e6, "rows per wobble period"},
    {"shear", PT_DOUBLE, OFF(shear), -0.2, 0.2, "slow-scan drift shear (x shift per row)"},
    {"scan_compress", PT_DOUBLE, OFF(scan_compress), -0.2, 0.2, "slow-scan relative y scale change"},
    {"scan_rotation", PT_DOUBLE, OFF(scan_rotation), -30, 30, "degrees, scan rotation"},
    {"drift_step", PT_DOUBLE, OFF(drift_step), 0, 20, "pixels rms per frame (random walk)"},
    {"drift_vx", PT_DOUBLE, OFF(drift_vx), -20, 20, "pixels per frame, steady drift x"},
    {"drift_vy", PT_DOUBLE, OFF(drift_vy), -20, 20, "pixels per frame, steady drift y"},
    {"p_sputter", PT_DOUBLE, OFF(p_sputter), 0, 1, "per frame: a chalcogen atom in a hot region is removed"},
    {"p_heal", PT_DOUBLE, OFF(p_heal), 0, 1, "per frame: an empty chalcogen slot in a hot region is refilled"},
    {"p_exchange", PT_DOUBLE, OFF(p_exchange), 0, 1, "per frame: S<->Se exchange of an atom in a hot region"},
    {"p_hop", PT_DOUBLE, OFF(p_hop), 0, 1, "per frame: a chalcogen vacancy takes an atom from a neighbour"},
    {"p_jump", PT_DOUBLE, OFF(p_jump), 0, 1, "per frame: a column in a hot region jumps to a neighbouring position"},
    {"class_radius", PT_DOUBLE, OFF(class_radius), 0.05, 0.5, "/truth/classes disk radius, fraction of the bond"},
};
#undef OFF
#define NPARAMS ((int)(sizeof PARAMS / sizeof PARAMS[0]))

int tmd_sim_param_info(int i, const char **name, double *min, double *max, const char **doc)
{
    if (i < 0 || i >= NPARAMS) return 0;
    if (name) *name = PARAMS[i].name;
    if (min) *min = PARAMS[i].min;
    if (max) *max = PARAMS[i].max;
    if (doc) *doc = PARAMS[i].doc;
    return 1;
}

double tmd_sim_param_get(const tmd_sim_params *p, int i)
{
    if (i < 0 || i >= NPARAMS) return NAN;
    const char *base = (const char *)p + PARAMS[i].off;
    switch (PARAMS[i].type) {
    case PT_DOUBLE: return *(const double *)base;
    case PT_I64: return (double)*(const int64_t *)base;
    case PT_INT: return (double)*(const int *)base;
    case PT_U64: return (double)*(const uint64_t *)base;
    }
    return NAN;
}

double tmd_sim_vegard(double x, double y)
{
    return (1 - x) * (1 - y) * 3.160 + x * (1 - y) * 3.153 + (1 - x) * y * 3.288 + x * y * 3.282;
}

/* Uniform in [a, b) from parameter stream k. */
static double U(uint64_t key, int k, double a, double b) { return a + (b - a) * sim_unif(key, SP_PARAM, (uint64_t)k, 0); }
static double logU(uint64_t key, int k, double a, double b) { return exp(U(key, k, log(a), log(b))); }
static int coin(uint64_t key, int k, double p) { return sim_unif(key, SP_PARAM, (uint64_t)k, 1) < p; }

void tmd_sim_params_draw(tmd_sim_params *p, uint64_t seed, int64_t index)
{
    memset(p, 0, sizeof *p);
    uint64_t key = sim_mix(sim_mix(seed) ^ (uint64_t)index);
    p->seed = key;
    p->height = p->width = 512;
    p->frames = 1;
    p->out_u16 = 0;
    int k = 0;
    p->pixel_size = U(key, k++, 0.06, 0.18);
    /* Binary compounds are common in practice (the real MoS2 image is one): give the pure
     * end members real weight, and the rest uniform over the alloy range. */
    double r = U(key, k++, 0, 1);
    p->comp_w = r < 0.3 ? 0.0 : r < 0.4 ? 1.0 : U(key, k, 0, 1);
    k++;
    r = U(key, k++, 0, 1);
    p->comp_se = r < 0.3 ? 0.0 : r < 0.4 ? 1.0 : U(key, k, 0, 1);
    k++;
    p->cluster = coin(key, k++, 0.5) ? 0.0 : U(key, k, 0, 0.85);
    k++;
    p->cluster_length = U(key, k++, 4, 30);
    p->lattice_a = 0;
    p->rotation = U(key, k++, 0, 360);
    p->strain = U(key, k++, 0, 0.015);
    p->strain_length = U(key, k++, 30, 400);
    p->displacement = U(key, k++, 0, 0.1);
    p->vac_m = U(key, k++, 0, 0.04);
    p->vac_x = U(key, k++, 0, 0.08);
    p->vac_x2 = U(key, k++, 0, 0.02);
    p->region_spacing = U(key, k++, 40, 120);
    p->region_prob = U(key, k++, 0.2, 0.9);
    p->region_radius = U(key, k++, 6, 25);
    p->region_boost = U(key, k++, 2, 8);
    p->z_exponent = U(key, k++, 1.5, 2.0);
    p->column_jitter = U(key, k++, 0, 0.08);
    p->probe_fwhm = U(key, k++, 0.6, 1.2);
    p->tail_fraction = U(key, k++, 0, 0.25);
    p->tail_fwhm = U(key, k++, 2.0, 5.0);
    /* The real MoS2 image sits near 15 counts at a W-equivalent peak: reach below 20. */
    p->dose = logU(key, k++, 15, 1000);
    p->read_noise = U(key, k++, 0, 1.5);
    p->gain = logU(key, k++, 1, 20);
    p->offset = U(key, k++, 0, 1000);
    p->scan_smear = coin(key, k++, 0.3) ? 0.0 : U(key, k, 0, 0.35);
    k++;
    p->background = U(key, k++, 0, 0.5); /* the real MoS2 image sits near 0.45 */
    p->background_var = U(key, k++, 0, 0.15);
    p->background_length = U(key, k++, 30, 300);
    p->contamination = U(key, k++, 0, 0.4);
    p->contamination_cover = U(key, k++, 0, 0.7);
    p->contamination_length = U(key, k++, 5, 40);
    p->hole_prob = coin(key, k++, 0.15) ? U(key, k, 0.2, 0.8) : 0.0;
    k++;
    p->hole_spacing = U(key, k++, 60, 300);
    p->hole_radius = U(key, k++, 5, 30);
    p->edge = coin(key, k++, 0.1) ? 1.0 : 0.0;
    p->edge_angle = U(key, k++, 0, 360);
    p->edge_offset = U(key, k++, -0.6, 0.6);
    p->jitter = U(key, k++, 0, 0.5);
    p->wobble = coin(key, k++, 0.5) ? 0.0 : U(key, k, 0, 0.5);
    k++;
    p->wobble_period = U(key, k++, 10, 200);
    p->shear = U(key, k++, -0.03, 0.03);
    p->scan_compress = U(key, k++, -0.02, 0.02);
    p->scan_rotation = U(key, k++, -2, 2);
    p->drift_step = U(key, k++, 0.05, 1.0);
    p->drift_vx = U(key, k++, -1.5, 1.5);
    p->drift_vy = U(key, k++, -1.5, 1.5);
    p->p_sputter = U(key, k++, 0.005, 0.05);
    p->p_heal = U(key, k++, 0.01, 0.1);
    p->p_exchange = U(key, k++, 0, 0.03);
    p->p_hop = U(key, k++, 0, 0.1);
    p->p_jump = U(key, k++, 0, 0.03);
    p->class_radius = 0.25;
}

static int find_param(const char *key)
{
    for (int i = 0; i < NPARAMS; i++)
        if (!strcmp(PARAMS[i].name, key)) return i;
    return -1;
}

tmd_status tmd_sim_param_set(tmd_ctx *ctx, tmd_sim_params *p, const char *key, const char *value)
{
    if (!strcmp(key, "composition")) {
        char *end;
        double x = strtod(value, &end);
        if (*end != ',') return TMD_FAIL(ctx, TMD_ERR_CONFIG, "simulation parameter composition: expected 'x,y' (W and Se fractions), got '%s'", value);
        double y = strtod(end + 1, &end);
        if (*end || !(x >= 0 && x <= 1 && y >= 0 && y <= 1))
            return TMD_FAIL(ctx, TMD_ERR_CONFIG, "simulation parameter composition: expected 'x,y' with both in 0..1, got '%s'", value);
        p->comp_w = x;
        p->comp_se = y;
        return TMD_OK;
    }
    int i = find_param(key);
    if (i < 0) {
        char names[2048] = "";
        for (int k = 0; k < NPARAMS; k++) {
            strncat(names, PARAMS[k].name, sizeof names - strlen(names) - 3);
            if (k + 1 < NPARAMS) strncat(names, ", ", sizeof names - strlen(names) - 1);
        }
        return TMD_FAIL(ctx, TMD_ERR_CONFIG, "unknown simulation parameter '%s' (known: composition, %s)", key, names);
    }
    const pdesc *d = &PARAMS[i];
    char *end;
    errno = 0;
    char *base = (char *)p + d->off;
    if (d->type == PT_U64) {
        unsigned long long v = strtoull(value, &end, 0);
        if (!*value || *end || errno) return TMD_FAIL(ctx, TMD_ERR_CONFIG, "simulation parameter %s: expected an unsigned integer, got '%s'", key, value);
        *(uint64_t *)base = v;
        return TMD_OK;
    }
    double v = strtod(value, &end);
    if (!*value || *end || errno || !isfinite(v))
        return TMD_FAIL(ctx, TMD_ERR_CONFIG, "simulation parameter %s: expected a number, got '%s'", key, value);
    if (v < d->min || v > d->max)
        return TMD_FAIL(ctx, TMD_ERR_CONFIG, "simulation parameter %s: %g is out of range, expected %g to %g (%s)", key, v,
                        d->min, d->max, d->doc);
    if (d->type == PT_DOUBLE) *(double *)base = v;
    else if (d->type == PT_I64) {
        if (v != floor(v)) return TMD_FAIL(ctx, TMD_ERR_CONFIG, "simulation parameter %s: expected an integer, got '%s'", key, value);
        *(int64_t *)base = (int64_t)v;
    } else {
        if (v != floor(v)) return TMD_FAIL(ctx, TMD_ERR_CONFIG, "simulation parameter %s: expected an integer, got '%s'", key, value);
        *(int *)base = (int)v;
    }
    return TMD_OK;
}

tmd_status tmd_sim_params_finish(tmd_ctx *ctx, tmd_sim_params *p)
{
    if (p->lattice_a <= 0) p->lattice_a = tmd_sim_vegard(p->comp_w, p->comp_se);
    for (int i = 0; i < NPARAMS; i++) {
        if (PARAMS[i].type == PT_U64) continue;
        double v = tmd_sim_param_get(p, i);
        if (!(v >= PARAMS[i].min && v <= PARAMS[i].max) && !(i == find_param("lattice_a") && v > 0))
            return TMD_FAIL(ctx, TMD_ERR_CONFIG, "simulation parameter %s = %g is out of range %g to %g", PARAMS[i].name, v,
                            PARAMS[i].min, PARAMS[i].max);
    }
    if (p->lattice_a < 2 || p->lattice_a > 5)
        return TMD_FAIL(ctx, TMD_ERR_CONFIG, "simulation parameter lattice_a = %g Angstrom, expected 2 to 5", p->lattice_a);
    /* Sizes that overflow the pixel count or the per-frame index space are refused. */
    if ((double)p->height * (double)p->width * (double)p->frames > 9.0e15)
        return TMD_FAIL(ctx, TMD_ERR_RANGE, "simulation of %lld x %lld x %lld pixels is too large", (long long)p->frames,
                        (long long)p->height, (long long)p->width);
    return TMD_OK;
}
