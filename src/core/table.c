/* Growable struct-of-arrays tables (see tmd/table.h). */
#include "tmd/table.h"

#include <stdlib.h>
#include <string.h>

const char *tmd_species_name(int code)
{
    static const char *names[TMD_SP_COUNT] = {"?", "Mo", "W", "S2", "SSe", "Se2", "S", "Se"};
    return code >= 0 && code < TMD_SP_COUNT ? names[code] : "?";
}

/* Grows one column to new_cap elements of `size` bytes, zeroing the new part. */
static tmd_status grow(tmd_ctx *ctx, void **col, int64_t old_cap, int64_t new_cap, size_t size, const char *what)
{
    size_t bytes;
    TMD_CHECK(tmd_mul_size(ctx, (size_t)new_cap, size, &bytes, what));
    void *p = realloc(*col, bytes ? bytes : 1);
    if (!p) return TMD_FAIL(ctx, TMD_ERR_NOMEM, "out of memory growing %s to %lld rows", what, (long long)new_cap);
    memset((char *)p + (size_t)old_cap * size, 0, bytes - (size_t)old_cap * size);
    *col = p;
    return TMD_OK;
}

void tmd_atom_table_init(tmd_atom_table *t, int nprob)
{
    memset(t, 0, sizeof *t);
    t->nprob = nprob;
}

int tmd_atom_table_columns(tmd_atom_table *t, tmd_atom_column cols[TMD_ATOM_MAX_COLUMNS])
{
    int k = 0;
    cols[k++] = (tmd_atom_column){(void **)&t->frame, sizeof *t->frame};
    cols[k++] = (tmd_atom_column){(void **)&t->x, sizeof *t->x};
    cols[k++] = (tmd_atom_column){(void **)&t->y, sizeof *t->y};
    cols[k++] = (tmd_atom_column){(void **)&t->sublattice, sizeof *t->sublattice};
    cols[k++] = (tmd_atom_column){(void **)&t->species, sizeof *t->species};
    cols[k++] = (tmd_atom_column){(void **)&t->prob, sizeof *t->prob * (size_t)(t->nprob > 0 ? t->nprob : 0)};
    cols[k++] = (tmd_atom_column){(void **)&t->intensity, sizeof *t->intensity};
    cols[k++] = (tmd_atom_column){(void **)&t->site, sizeof *t->site};
    if (t->nlatent > 0) cols[k++] = (tmd_atom_column){(void **)&t->latent, sizeof *t->latent * (size_t)t->nlatent};
    return k;
}

tmd_status tmd_atom_table_reserve(tmd_ctx *ctx, tmd_atom_table *t, int64_t cap)
{
    if (cap <= t->cap) return TMD_OK;
    tmd_atom_column cols[TMD_ATOM_MAX_COLUMNS];
    int ncols = tmd_atom_table_columns(t, cols);
    /* prob keeps at least one float per row, so its pointer is valid even with nprob = 0 */
    for (int c = 0; c < ncols; c++)
        TMD_CHECK(grow(ctx, cols[c].data, t->cap, cap, cols[c].row_bytes ? cols[c].row_bytes : sizeof(float), "atom table"));
    t->cap = cap;
    return TMD_OK;
}

tmd_status tmd_atom_table_shrink(tmd_ctx *ctx, tmd_atom_table *t)
{
    if (t->n == 0 || t->n == t->cap) return TMD_OK;
    tmd_atom_column cols[TMD_ATOM_MAX_COLUMNS];
    int ncols = tmd_atom_table_columns(t, cols);
    for (int c = 0; c < ncols; c++) {
        size_t bytes, rb = cols[c].row_bytes ? cols[c].row_bytes : sizeof(float);
        TMD_CHECK(tmd_mul_size(ctx, (size_t)t->n, rb, &bytes, "atom table"));
        void *p = realloc(*cols[c].data, bytes);
        if (!p) return TMD_FAIL(ctx, TMD_ERR_NOMEM, "out of memory shrinking the atom table to %lld rows", (long long)t->n);
        *cols[c].data = p;
    }
    t->cap = t->n;
    return TMD_OK;
}

tmd_status tmd_atom_table_push(tmd_ctx *ctx, tmd_atom_table *t, int64_t *index)
{
    if (t->n == t->cap) TMD_CHECK(tmd_atom_table_reserve(ctx, t, t->cap ? t->cap * 2 : 256));
    *index = t->n++;
    t->site[*index] = -1;
    return TMD_OK;
}

tmd_status tmd_atom_table_append(tmd_ctx *ctx, tmd_atom_table *dst, const tmd_atom_table *src, int64_t from,
                                 int64_t to)
{
    if (dst->nprob != src->nprob || dst->nlatent != src->nlatent)
        return TMD_FAIL(ctx, TMD_ERR_ARG, "atom table append: %d prob / %d latent columns into %d / %d", src->nprob,
                        src->nlatent, dst->nprob, dst->nlatent);
    if (to <= from) return TMD_OK;
    int64_t need = dst->n + (to - from);
    if (need > dst->cap) {
        int64_t cap = dst->cap ? dst->cap * 2 : 256;
        TMD_CHECK(tmd_atom_table_reserve(ctx, dst, need > cap ? need : cap));
    }
    tmd_atom_column dc[TMD_ATOM_MAX_COLUMNS], sc[TMD_ATOM_MAX_COLUMNS];
    int ncols = tmd_atom_table_columns(dst, dc);
    tmd_atom_table_columns((tmd_atom_table *)src, sc); /* read only: same layout as dst */
    for (int c = 0; c < ncols; c++)
        if (dc[c].row_bytes)
            memcpy((char *)*dc[c].data + (size_t)dst->n * dc[c].row_bytes,
                   (const char *)*sc[c].data + (size_t)from * sc[c].row_bytes, (size_t)(to - from) * dc[c].row_bytes);
    dst->n = need;
    return TMD_OK;
}

tmd_status tmd_atom_table_set_latent(tmd_ctx *ctx, tmd_atom_table *t, int nlatent)
{
    free(t->latent);
    t->latent = NULL;
    t->nlatent = nlatent;
    if (nlatent <= 0) return TMD_OK;
    return tmd_calloc(ctx, (void **)&t->latent, (size_t)(t->cap ? t->cap : 1), sizeof(float) * (size_t)nlatent, "atom latent features");
}

void tmd_atom_table_free(tmd_atom_table *t)
{
    free(t->frame); free(t->x); free(t->y); free(t->sublattice); free(t->species);
    free(t->prob); free(t->intensity); free(t->site); free(t->latent);
    int nprob = t->nprob;
    memset(t, 0, sizeof *t);
    t->nprob = nprob;
}

void tmd_defect_table_init(tmd_defect_table *t) { memset(t, 0, sizeof *t); }

tmd_status tmd_defect_table_push(tmd_ctx *ctx, tmd_defect_table *t, int32_t frame, double x, double y, int8_t type)
{
    if (t->n == t->cap) {
        int64_t old = t->cap, cap = old ? old * 2 : 64;
        TMD_CHECK(grow(ctx, (void **)&t->frame, old, cap, sizeof *t->frame, "defect table"));
        TMD_CHECK(grow(ctx, (void **)&t->x, old, cap, sizeof *t->x, "defect table"));
        TMD_CHECK(grow(ctx, (void **)&t->y, old, cap, sizeof *t->y, "defect table"));
        TMD_CHECK(grow(ctx, (void **)&t->type, old, cap, sizeof *t->type, "defect table"));
        t->cap = cap;
    }
    int64_t i = t->n++;
    t->frame[i] = frame; t->x[i] = x; t->y[i] = y; t->type[i] = type;
    return TMD_OK;
}

void tmd_defect_table_free(tmd_defect_table *t)
{
    free(t->frame); free(t->x); free(t->y); free(t->type);
    memset(t, 0, sizeof *t);
}

void tmd_site_table_init(tmd_site_table *t) { memset(t, 0, sizeof *t); }

tmd_status tmd_site_table_push(tmd_ctx *ctx, tmd_site_table *t, int64_t *index)
{
    if (t->n == t->cap) {
        int64_t old = t->cap, cap = old ? old * 2 : 256;
        TMD_CHECK(grow(ctx, (void **)&t->id, old, cap, sizeof *t->id, "site table"));
        TMD_CHECK(grow(ctx, (void **)&t->x, old, cap, sizeof *t->x, "site table"));
        TMD_CHECK(grow(ctx, (void **)&t->y, old, cap, sizeof *t->y, "site table"));
        TMD_CHECK(grow(ctx, (void **)&t->sublattice, old, cap, sizeof *t->sublattice, "site table"));
        TMD_CHECK(grow(ctx, (void **)&t->instability, old, cap, sizeof *t->instability, "site table"));
        TMD_CHECK(grow(ctx, (void **)&t->unstable, old, cap, sizeof *t->unstable, "site table"));
        TMD_CHECK(grow(ctx, (void **)&t->dynamic, old, cap, sizeof *t->dynamic, "site table"));
        t->cap = cap;
    }
    *index = t->n++;
    return TMD_OK;
}

void tmd_site_table_free(tmd_site_table *t)
{
    free(t->id); free(t->x); free(t->y); free(t->sublattice); free(t->instability); free(t->unstable); free(t->dynamic);
    memset(t, 0, sizeof *t);
}
