/* tmd/table.h — the per-rank tables that flow between stages: atoms, defects, sites.
 *
 * Role: one struct-of-arrays per result group of DESIGN.md, so that a stage appends rows,
 * the next stage reads columns, and the writer writes each column as one dataset. A rank's
 * table holds the rows it owns (an atom belongs to the tile that holds its centre); ghost
 * rows received from neighbours live in separate tables.
 *
 *     tmd_atom_table a;
 *     tmd_atom_table_init(&a, 6);                          // K = 6 segmentation classes in prob
 *     TMD_CHECK(tmd_atom_table_reserve(ctx, &a, 1000));   // optional, grows as needed
 *     int64_t i; TMD_CHECK(tmd_atom_table_push(ctx, &a, &i));  // new zeroed row i
 *     a.x[i] = ...; a.prob[i * a.nprob + k] = ...;
 *     tmd_atom_table_free(&a);
 *
 * Layout: every column has `n` valid rows and capacity `cap`; prob is (cap, nprob) and
 * latent (cap, nlatent) row-major. Species and sublattice codes are DESIGN.md's.
 * Ownership: the table owns its columns; free with tmd_*_table_free (safe on a zeroed table).
 */
#ifndef TMD_TABLE_H
#define TMD_TABLE_H

#include "tmd/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Species codes (DESIGN.md). */
enum {
    TMD_SP_UNKNOWN = 0, TMD_SP_MO = 1, TMD_SP_W = 2, TMD_SP_S2 = 3, TMD_SP_SSE = 4, TMD_SP_SE2 = 5,
    TMD_SP_S = 6, TMD_SP_SE = 7, TMD_SP_COUNT = 8
};
/* Segmentation classes (DESIGN.md): 0 background, 1 Mo, 2 W, 3 S2, 4 SSe, 5 Se2. */
enum { TMD_NCLASSES = 6 };
/* Sublattice codes. */
enum { TMD_SUB_UNKNOWN = 0, TMD_SUB_A = 1, TMD_SUB_B = 2 };
/* Defect types. */
enum { TMD_DEF_VM = 1, TMD_DEF_VX = 2, TMD_DEF_VX2 = 3 };

const char *tmd_species_name(int code);   /* "Mo", "W", "S2", ... "?" */

typedef struct tmd_atom_table {
    int64_t n, cap;
    int nprob;          /* columns of prob (e.g. 6 segmentation classes, or species probabilities) */
    int nlatent;        /* columns of latent (0 until features are computed) */
    int32_t *frame;     /* (cap) */
    double *x, *y;      /* (cap) input-frame pixels, (0,0) = centre of the top-left pixel */
    int8_t *sublattice; /* (cap) TMD_SUB_* */
    int8_t *species;    /* (cap) TMD_SP_* */
    float *prob;        /* (cap, nprob) */
    float *intensity;   /* (cap) integrated column intensity (normalised image) */
    int64_t *site;      /* (cap) lattice-site id, -1 none */
    float *latent;      /* (cap, nlatent) or NULL */
} tmd_atom_table;

void tmd_atom_table_init(tmd_atom_table *t, int nprob);

/* One column of an atom table: where its pointer lives and its bytes per row (0 for prob
 * when nprob = 0). */
typedef struct {
    void **data;
    size_t row_bytes;
} tmd_atom_column;
#define TMD_ATOM_MAX_COLUMNS 9
/* The table's columns in one fixed order — frame, x, y, sublattice, species, prob, intensity,
 * site, then latent if nlatent > 0 — for code that handles every column alike (growing,
 * checkpoint files, moving rows between ranks); returns how many. The data pointers point
 * into *t and stay valid while *t lives. */
int tmd_atom_table_columns(tmd_atom_table *t, tmd_atom_column cols[TMD_ATOM_MAX_COLUMNS]);
tmd_status tmd_atom_table_reserve(tmd_ctx *ctx, tmd_atom_table *t, int64_t cap);
/* Releases the capacity beyond the n rows (cap = n; a later push grows it again). The
 * pipeline calls it after the tile pass: the doubling leaves up to half the rows unused. */
tmd_status tmd_atom_table_shrink(tmd_ctx *ctx, tmd_atom_table *t);
/* Appends a zeroed row (site = -1) and returns its index. */
tmd_status tmd_atom_table_push(tmd_ctx *ctx, tmd_atom_table *t, int64_t *index);
/* Appends rows [from, to) of src to dst, every column; dst and src must have the same nprob
 * and nlatent (TMD_ERR_ARG otherwise). dst grows geometrically, so row-by-row appends stay
 * linear. */
tmd_status tmd_atom_table_append(tmd_ctx *ctx, tmd_atom_table *dst, const tmd_atom_table *src, int64_t from,
                                 int64_t to);
/* Allocates (or resizes) latent to (cap, nlatent), zeroed. */
tmd_status tmd_atom_table_set_latent(tmd_ctx *ctx, tmd_atom_table *t, int nlatent);
void tmd_atom_table_free(tmd_atom_table *t);

typedef struct tmd_defect_table {
    int64_t n, cap;
    int32_t *frame;     /* (cap) */
    double *x, *y;      /* (cap) */
    int8_t *type;       /* (cap) TMD_DEF_* */
} tmd_defect_table;

void tmd_defect_table_init(tmd_defect_table *t);
tmd_status tmd_defect_table_push(tmd_ctx *ctx, tmd_defect_table *t, int32_t frame, double x, double y, int8_t type);
void tmd_defect_table_free(tmd_defect_table *t);

typedef struct tmd_site_table {
    int64_t n, cap;
    int64_t *id;        /* (cap) site id (lattice-index derived) */
    double *x, *y;      /* (cap) frame-0 coordinates */
    int8_t *sublattice; /* (cap) */
    float *instability; /* (cap) */
    int8_t *unstable;   /* (cap) */
    int8_t *dynamic;    /* (cap) truth only (simulator); may be NULL-free zero otherwise */
} tmd_site_table;

void tmd_site_table_init(tmd_site_table *t);
tmd_status tmd_site_table_push(tmd_ctx *ctx, tmd_site_table *t, int64_t *index);
void tmd_site_table_free(tmd_site_table *t);

#ifdef __cplusplus
}
#endif
#endif
