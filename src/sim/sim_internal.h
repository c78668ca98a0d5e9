/* Simulator internals: counter-based random numbers, the "world" built from the parameters
 * (lattice, fields, scan map), site generation, band rendering and truth collection.
 * Not a public interface (src/sim only). */
#ifndef TMD_SIM_INTERNAL_H
#define TMD_SIM_INTERNAL_H

#include <math.h>
#include <stdint.h>

#include "tmd/sim.h"
#include "tmd/table.h"

/* ---- counter-based random numbers ------------------------------------------------------ */

/* splitmix64 finaliser: a bijective avalanche mix of 64 bits. */
static inline uint64_t sim_mix(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
/* Hash of (key, purpose, a, b): independent streams for every purpose and index. */
static inline uint64_t sim_hash(uint64_t key, uint64_t purpose, uint64_t a, uint64_t b)
{
    return sim_mix(sim_mix(sim_mix(key ^ (purpose * 0xd1b54a32d192ed03ULL)) ^ a) + b * 0x9e3779b97f4a7c15ULL);
}
/* Uniform in [0, 1) with 53 bits. */
static inline double sim_u01(uint64_t h) { return (double)(h >> 11) * (1.0 / 9007199254740992.0); }
static inline double sim_unif(uint64_t key, uint64_t purpose, uint64_t a, uint64_t b)
{
    return sim_u01(sim_hash(key, purpose, a, b));
}
/* Standard normal from two hashes (Box-Muller). */
static inline double sim_normal(uint64_t key, uint64_t purpose, uint64_t a, uint64_t b)
{
    uint64_t h1 = sim_hash(key, purpose, a, 2 * b), h2 = sim_hash(key, purpose, a, 2 * b + 1);
    double u1 = (double)((h1 >> 11) + 1) * (1.0 / 9007199254740993.0); /* (0, 1] */
    double u2 = sim_u01(h2);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* Purposes (stream names). Never renumber: files depend on them. */
enum {
    SP_PARAM = 1, SP_LATTICE, SP_STRAIN, SP_ALLOY_M, SP_ALLOY_X, SP_SPECIES, SP_VAC, SP_DISP, SP_COLINT,
    SP_REGION, SP_HOLE, SP_BG, SP_CONT_FIELD, SP_CONT_ATOM, SP_JITTER, SP_NOISE, SP_READ, SP_DRIFT, SP_DYN,
    SP_PATCH, SP_EDGE
};

/* Poisson deviate with mean lam from a counter stream (key, purpose, idx, k = 0, 1, ...). */
double tmd_sim_poisson(double lam, uint64_t key, uint64_t purpose, uint64_t idx);
/* Inverse standard normal CDF (Acklam, |rel err| < 1.2e-9). */
double tmd_sim_norm_ppf(double p);

/* ---- world ------------------------------------------------------------------------------ */

#define SIM_NMODES 12

typedef struct { double kx, ky, ph, amp; } sim_mode; /* amp * cos(kx x + ky y + ph) */

typedef struct sim_region {
    int64_t id;               /* from the cell indices (same on every rank) */
    double sx, sy, r;         /* centre and radius, specimen Angstrom */
    /* dynamics cache (stacks): sites in the region, states per frame */
    int64_t nsites;
    int64_t *site_id;         /* (nsites) sorted */
    int8_t *state;            /* (nsites, frames) species code, 0 empty */
    int8_t *jump;             /* (nsites, frames) 0 none, 1..3 direction */
    int8_t *dynamic;          /* (nsites) */
    int ready;
} sim_region;

typedef struct sim_world {
    tmd_sim_params p;
    uint64_t key;
    double px;                /* Angstrom per pixel */
    double b1[2], b2[2];      /* strained lattice vectors, Angstrom */
    double binv[2][2];        /* inverse of [b1 b2] (columns) */
    double origin[2];         /* Angstrom */
    double bond;              /* a / sqrt(3) */
    double M[2][2], Minv[2][2]; /* specimen = M (q - c - D) px */
    double cx, cy;
    double G[3];              /* px^2 M^T M: g11, g12, g22 */
    sim_mode umode[SIM_NMODES]; double udir[SIM_NMODES][2]; double umax;
    sim_mode alloy_m[SIM_NMODES], alloy_x[SIM_NMODES];
    sim_mode bgmode[SIM_NMODES], contmode[SIM_NMODES];
    double thr_w, thr_se;     /* Phi^-1 of the compositions */
    double wsp[8];            /* column weight per species code, W column = 1 */
    double sig_c, sig_t, frac_t; /* probe core / tail sigma (Angstrom), tail share */
    double peak_w;            /* psf value at the centre of an isolated W column (per Angstrom^2 scale) */
    double counts_scale;      /* counts per unit of rendered value: dose / peak_w */
    double cont_density;      /* scatterers per Angstrom^2 at full cover */
    double cont_weight;       /* mean scatterer weight */
    double lag;               /* mean delay of the detector smear, pixels */
    double edge_n[2], edge_o; /* film where n.s > o (+ wobble) */
    double *drift;            /* (frames, 2) pixels; row 0 = 0 */
    int64_t frames;
    /* row-jitter cache of the band being rendered (rows jt_y0 .. jt_y0 + jt_n - 1 of frame jt_t) */
    const double *jt;
    int64_t jt_t, jt_y0, jt_n;
    /* regions cache */
    sim_region *regions;
    int64_t nregions, capregions;
    int64_t *rmap;            /* open-addressing map region id -> index + 1 (0 = empty) */
    int64_t rmap_cap;
    /* 1: tmd_sim_render_rows writes the expected counts lambda (before Poisson, read noise,
     * smear, gain, offset) instead of the detector image. Never set by the simulator itself
     * (tmd_sim_world_init clears it, so every file renders as before); for measurement bounds
     * that need the noiseless image of the same world (benchmarks/classify/bound.c). */
    int expected_only;
} sim_world;

int tmd_sim_world_init(tmd_ctx *ctx, sim_world *w, const tmd_sim_params *p);
void tmd_sim_world_free(sim_world *w);

/* A lattice site with its static state. */
typedef struct sim_site {
    int64_t i, j;
    int sub;                  /* 0 = A (metal), 1 = B (chalcogen) */
    int64_t id;
    double sx, sy;            /* specimen position incl. displacements, Angstrom */
    int8_t species;           /* static species code (0 = vacancy) */
    float weight;             /* static column weight (W = 1), 0 if empty */
    int region;               /* index into w->regions, -1 none */
} sim_site;

typedef struct { sim_site *s; int64_t n, cap; } sim_site_list;

/* Sites (canonical order: i, then j, then sub) whose specimen position lies in the box.
 * Holes remove sites. Regions touching the box are registered in w->regions. */
int tmd_sim_sites_in_box(tmd_ctx *ctx, sim_world *w, double sx0, double sx1, double sy0, double sy1, sim_site_list *out);
/* Specimen box covering pixel rectangle [x0,x1] x [y0,y1] of frame t, grown by margin_px. */
void tmd_sim_pixel_box_to_specimen(const sim_world *w, int64_t t, double x0, double x1, double y0, double y1,
                               double margin_px, double *sx0, double *sx1, double *sy0, double *sy1);

/* Defect-rich regions whose centre lies in the specimen box: calls fn for each in cell order. */
typedef void (*sim_region_fn)(void *arg, int64_t id, double sx, double sy, double r);
void tmd_sim_regions_in_box(const sim_world *w, double sx0, double sx1, double sy0, double sy1, sim_region_fn fn, void *arg);
/* Number of lattice sites (inside the film) of the region with this id / centre / radius. */
int tmd_sim_region_count_sites(tmd_ctx *ctx, sim_world *w, int64_t id, double sx, double sy, double r, int64_t *n);

/* State of a site in frame t (dynamics in hot regions), jump offset in Angstrom. */
int tmd_sim_site_state(tmd_ctx *ctx, sim_world *w, const sim_site *s, int64_t t, int8_t *species, double *jx, double *jy,
                   int8_t *dynamic);
double tmd_sim_species_weight(const sim_world *w, int species, const sim_site *s);

/* Pixel position (truth convention) of specimen point (sx, sy) in frame t. */
void tmd_sim_specimen_to_pixel(const sim_world *w, int64_t t, double sx, double sy, double *x, double *y);
/* Jitter offset of row y in frame t, pixels (the pixel samples specimen x + jitter). */
double tmd_sim_row_jitter(const sim_world *w, int64_t t, int64_t y);
/* Mean of the row jitter over the frame's rows: the content of frame t sits -this further in x
 * on average (the wobble's and jitter's net displacement, part of the true /drift). */
double tmd_sim_mean_row_jitter(const sim_world *w, int64_t t);
/* Jump of a site in frame t (0 none, 1..3 direction); call after tmd_sim_site_state for it. */
int tmd_sim_site_jump(const sim_world *w, const sim_site *s, int64_t t);

/* Truth collected for a box. */
typedef struct sim_truth {
    tmd_atom_table atoms;
    tmd_defect_table defects;
    tmd_site_table sites;     /* frame 0 only (caller asks with want_sites) */
    int8_t *site_state;       /* (sites.n, frames) when collected over frames */
    int8_t *site_jump;        /* (sites.n, frames) 0 on its site, 1..3 jumped (direction) */
} sim_truth;

/* Renders rows [y0, y0+ny) x columns [0, width) of frame t into out (ny, width) in detector
 * units (noise, gain, offset applied); classes (ny, width) if non-NULL; truth rows owned by
 * the box appended to truth if non-NULL (sites only when frame == 0 and want_sites). */
int tmd_sim_render_rows(tmd_ctx *ctx, sim_world *w, int64_t t, int64_t y0, int64_t ny, float *out, uint8_t *classes,
                    sim_truth *truth, int want_sites, sim_site_list *scratch);

int8_t tmd_sim_species_class(int species);

#endif
