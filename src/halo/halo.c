/* Halo exchange for fields (subarray datatypes, non-blocking, split-phase) and ghost
 * exchange for atoms (see tmd/halo.h). */
#include "tmd/halo.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { TAG_HALO = 7101, TAG_GHOST_COUNT = 7102, TAG_GHOST_DATA = 7103 };

typedef struct {
    int rank;
    MPI_Datatype type; /* subarray of the local array */
} halo_peer;

struct tmd_halo {
    MPI_Comm comm;      /* duplicate, owned */
    MPI_Datatype elem;  /* duplicate, owned */
    tmd_box own, local;
    int nrecv, nsend;
    halo_peer *recv, *send; /* (nrecv), (nsend), ascending rank */
    MPI_Request *req;       /* (nrecv + nsend) */
    int active;
};

static void grow_clip(const tmd_box *own, const int64_t width[3], const int64_t gdims[3], tmd_box *out)
{
    if (tmd_box_volume(own) == 0) {
        memset(out, 0, sizeof *out);
        return;
    }
    for (int a = 0; a < 3; a++) {
        int64_t lo = own->lo[a] - width[a], hi = own->hi[a] + width[a];
        out->lo[a] = lo < 0 ? 0 : lo;
        out->hi[a] = hi > gdims[a] ? gdims[a] : hi;
    }
}

/* Subarray datatype selecting `region` inside the array laid over `local`. */
static tmd_status make_subarray(tmd_ctx *ctx, const tmd_box *local, const tmd_box *region, MPI_Datatype elem,
                                MPI_Datatype *out)
{
    int sizes[3], sub[3], start[3];
    for (int a = 0; a < 3; a++) {
        int64_t n = local->hi[a] - local->lo[a];
        if (n > INT_MAX)
            return TMD_FAIL(ctx, TMD_ERR_RANGE, "halo: local array axis %d has %lld elements (at most %d)", a,
                            (long long)n, INT_MAX);
        sizes[a] = (int)n;
        sub[a] = (int)(region->hi[a] - region->lo[a]);
        start[a] = (int)(region->lo[a] - local->lo[a]);
    }
    TMD_CHECK(TMD_MPI(ctx, MPI_Type_create_subarray(3, sizes, sub, start, MPI_ORDER_C, elem, out)));
    return TMD_MPI(ctx, MPI_Type_commit(out));
}

tmd_status tmd_halo_create(tmd_ctx *ctx, MPI_Comm comm, const int64_t gdims[3], const tmd_box *own,
                           const int64_t width[3], MPI_Datatype elem, tmd_halo **out)
{
    *out = NULL;
    tmd_status st = TMD_OK;
    tmd_halo *h = NULL;
    int64_t *all = NULL; /* (nranks, 6): every rank's own box */
    int nranks, me;
    MPI_Comm_size(comm, &nranks);
    MPI_Comm_rank(comm, &me);

    st = tmd_calloc(ctx, (void **)&h, 1, sizeof *h, "halo exchange");
    if (!st) {
        h->comm = MPI_COMM_NULL;
        h->elem = MPI_DATATYPE_NULL;
        st = tmd_calloc(ctx, (void **)&all, (size_t)nranks * 6, sizeof *all, "halo boxes");
    }
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    if ((st = TMD_MPI(ctx, MPI_Comm_dup(comm, &h->comm)))) goto agree;
    if ((st = TMD_MPI(ctx, MPI_Type_dup(elem, &h->elem)))) goto agree;
    h->own = *own;
    grow_clip(own, width, gdims, &h->local);
    int64_t mine[6] = {own->lo[0], own->lo[1], own->lo[2], own->hi[0], own->hi[1], own->hi[2]};
    if ((st = TMD_MPI(ctx, MPI_Allgather(mine, 6, MPI_INT64_T, all, 6, MPI_INT64_T, h->comm)))) goto agree;
    st = tmd_calloc(ctx, (void **)&h->recv, (size_t)nranks, sizeof *h->recv, "halo peers");
    if (!st) st = tmd_calloc(ctx, (void **)&h->send, (size_t)nranks, sizeof *h->send, "halo peers");
    if (!st) st = tmd_calloc(ctx, (void **)&h->req, (size_t)nranks * 2, sizeof *h->req, "halo requests");
    for (int j = 0; j < nranks && !st; j++) {
        if (j == me) continue;
        tmd_box oj, lj, region;
        memcpy(oj.lo, all + 6 * j, sizeof oj.lo);
        memcpy(oj.hi, all + 6 * j + 3, sizeof oj.hi);
        grow_clip(&oj, width, gdims, &lj);
        /* what I receive from j: j's own values inside my local box */
        if (tmd_box_volume(&h->local) && tmd_box_intersect(&h->local, &oj, &region)) {
            h->recv[h->nrecv].rank = j;
            st = make_subarray(ctx, &h->local, &region, h->elem, &h->recv[h->nrecv].type);
            if (!st) h->nrecv++;
        }
        /* what I send to j: my own values inside j's local box */
        if (!st && tmd_box_volume(&lj) && tmd_box_intersect(&lj, own, &region)) {
            h->send[h->nsend].rank = j;
            st = make_subarray(ctx, &h->local, &region, h->elem, &h->send[h->nsend].type);
            if (!st) h->nsend++;
        }
    }
agree:
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    *out = h;
    h = NULL;
cleanup:
    free(all);
    tmd_halo_destroy(&h);
    return st;
}

void tmd_halo_local_box(const tmd_halo *h, tmd_box *local) { *local = h->local; }

int tmd_halo_neighbours(const tmd_halo *h)
{
    /* distinct ranks among recv and send (both lists ascending) */
    int n = 0, i = 0, j = 0;
    while (i < h->nrecv || j < h->nsend) {
        if (j >= h->nsend || (i < h->nrecv && h->recv[i].rank < h->send[j].rank)) i++;
        else if (i >= h->nrecv || h->send[j].rank < h->recv[i].rank) j++;
        else i++, j++;
        n++;
    }
    return n;
}

tmd_status tmd_halo_begin(tmd_ctx *ctx, tmd_halo *h, void *data)
{
    if (h->active) return TMD_FAIL(ctx, TMD_ERR_INTERNAL, "halo: begin called twice without end");
    int nreq = 0;
    tmd_status st = TMD_OK;
    for (int i = 0; i < h->nrecv && !st; i++)
        st = TMD_MPI(ctx, MPI_Irecv(data, 1, h->recv[i].type, h->recv[i].rank, TAG_HALO, h->comm, &h->req[nreq++]));
    for (int i = 0; i < h->nsend && !st; i++)
        st = TMD_MPI(ctx, MPI_Isend(data, 1, h->send[i].type, h->send[i].rank, TAG_HALO, h->comm, &h->req[nreq++]));
    h->active = nreq ? nreq : -1;
    return st;
}

tmd_status tmd_halo_end(tmd_ctx *ctx, tmd_halo *h)
{
    if (!h->active) return TMD_FAIL(ctx, TMD_ERR_INTERNAL, "halo: end called without begin");
    int nreq = h->active > 0 ? h->active : 0;
    h->active = 0;
    return TMD_MPI(ctx, MPI_Waitall(nreq, h->req, MPI_STATUSES_IGNORE));
}

void tmd_halo_destroy(tmd_halo **hp)
{
    if (!hp || !*hp) return;
    tmd_halo *h = *hp;
    for (int i = 0; i < h->nrecv; i++) MPI_Type_free(&h->recv[i].type);
    for (int i = 0; i < h->nsend; i++) MPI_Type_free(&h->send[i].type);
    if (h->elem != MPI_DATATYPE_NULL && h->elem != 0) MPI_Type_free(&h->elem);
    if (h->comm != MPI_COMM_NULL && h->comm != 0) MPI_Comm_free(&h->comm);
    free(h->recv);
    free(h->send);
    free(h->req);
    free(h);
    *hp = NULL;
}

/* ---- particles ------------------------------------------------------------------------ */

struct tmd_ghost {
    MPI_Comm comm;   /* duplicate, owned */
    tmd_box own;
    double distance;
    int npeer;
    int *peer;       /* (npeer) candidate ranks, ascending */
    tmd_box *pbox;   /* (npeer) their domains */
};

double tmd_box_distance(const tmd_box *b, double y, double x)
{
    double c[2] = {y, x}, d2 = 0;
    for (int a = 0; a < 2; a++) {
        double lo = (double)b->lo[a + 1] - 0.5, hi = (double)b->hi[a + 1] - 0.5;
        double g = c[a] < lo ? lo - c[a] : (c[a] >= hi ? c[a] - hi : 0);
        d2 += g * g;
    }
    return sqrt(d2);
}

/* Distance between two boxes' continuous extents in (y, x); infinite if their frames do
 * not overlap or either is empty. */
static double box_box_distance(const tmd_box *a, const tmd_box *b)
{
    if (!tmd_box_volume(a) || !tmd_box_volume(b)) return INFINITY;
    if (a->hi[0] <= b->lo[0] || b->hi[0] <= a->lo[0]) return INFINITY;
    double d2 = 0;
    for (int k = 1; k < 3; k++) {
        int64_t g = 0;
        if (b->lo[k] > a->hi[k]) g = b->lo[k] - a->hi[k];
        else if (a->lo[k] > b->hi[k]) g = a->lo[k] - b->hi[k];
        d2 += (double)g * (double)g;
    }
    return sqrt(d2);
}

tmd_status tmd_ghost_create(tmd_ctx *ctx, MPI_Comm comm, const tmd_box *own, double distance, tmd_ghost **out)
{
    *out = NULL;
    tmd_status st = TMD_OK;
    tmd_ghost *g = NULL;
    int64_t *all = NULL;
    int nranks, me;
    MPI_Comm_size(comm, &nranks);
    MPI_Comm_rank(comm, &me);
    if (!(distance >= 0)) st = TMD_FAIL(ctx, TMD_ERR_ARG, "ghost exchange: distance %g (expected >= 0)", distance);
    if (!st) st = tmd_calloc(ctx, (void **)&g, 1, sizeof *g, "ghost exchange");
    if (!st) {
        g->comm = MPI_COMM_NULL;
        st = tmd_calloc(ctx, (void **)&all, (size_t)nranks * 6, sizeof *all, "ghost boxes");
    }
    if (!st) st = tmd_calloc(ctx, (void **)&g->peer, (size_t)nranks, sizeof *g->peer, "ghost peers");
    if (!st) st = tmd_calloc(ctx, (void **)&g->pbox, (size_t)nranks, sizeof *g->pbox, "ghost peers");
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    if ((st = TMD_MPI(ctx, MPI_Comm_dup(comm, &g->comm)))) goto agree;
    g->own = *own;
    g->distance = distance;
    int64_t mine[6] = {own->lo[0], own->lo[1], own->lo[2], own->hi[0], own->hi[1], own->hi[2]};
    if ((st = TMD_MPI(ctx, MPI_Allgather(mine, 6, MPI_INT64_T, all, 6, MPI_INT64_T, g->comm)))) goto agree;
    for (int j = 0; j < nranks; j++) {
        if (j == me) continue;
        tmd_box bj;
        memcpy(bj.lo, all + 6 * j, sizeof bj.lo);
        memcpy(bj.hi, all + 6 * j + 3, sizeof bj.hi);
        /* symmetric test, so both sides agree on who exchanges with whom */
        if (box_box_distance(own, &bj) <= distance) {
            g->peer[g->npeer] = j;
            g->pbox[g->npeer] = bj;
            g->npeer++;
        }
    }
agree:
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    *out = g;
    g = NULL;
cleanup:
    free(all);
    tmd_ghost_destroy(&g);
    return st;
}

void tmd_ghost_destroy(tmd_ghost **gp)
{
    if (!gp || !*gp) return;
    tmd_ghost *g = *gp;
    if (g->comm != MPI_COMM_NULL && g->comm != 0) MPI_Comm_free(&g->comm);
    free(g->peer);
    free(g->pbox);
    free(g);
    *gp = NULL;
}

/* One atom as doubles: frame, x, y, sublattice, species, intensity, site, prob[nprob],
 * latent[nlatent]. Every field is exactly representable in a double. */
enum { GHOST_FIXED = 7 };

tmd_status tmd_ghost_exchange(tmd_ctx *ctx, tmd_ghost *g, const tmd_atom_table *atoms, tmd_atom_table *ghosts)
{
    tmd_status st = TMD_OK;
    int np = g->npeer;
    const int rec = GHOST_FIXED + atoms->nprob + atoms->nlatent;
    int64_t *cnt_send = NULL, *cnt_recv = NULL; /* (np, 3): count, nprob, nlatent */
    double **sbuf = NULL, **rbuf = NULL;        /* (np) each (count, rec) */
    MPI_Request *req = NULL;

    st = tmd_calloc(ctx, (void **)&cnt_send, (size_t)np * 3 + 1, sizeof *cnt_send, "ghost counts");
    if (!st) st = tmd_calloc(ctx, (void **)&cnt_recv, (size_t)np * 3 + 1, sizeof *cnt_recv, "ghost counts");
    if (!st) st = tmd_calloc(ctx, (void **)&sbuf, (size_t)np + 1, sizeof *sbuf, "ghost buffers");
    if (!st) st = tmd_calloc(ctx, (void **)&rbuf, (size_t)np + 1, sizeof *rbuf, "ghost buffers");
    if (!st) st = tmd_calloc(ctx, (void **)&req, (size_t)np * 2 + 1, sizeof *req, "ghost requests");
    /* pack: for each peer, the atoms within `distance` of its domain in a frame it holds */
    for (int p = 0; p < np && !st; p++) {
        const tmd_box *b = &g->pbox[p];
        int64_t n = 0;
        for (int pass = 0; pass < 2 && !st; pass++) {
            int64_t k = 0;
            for (int64_t i = 0; i < atoms->n; i++) {
                if (atoms->frame[i] < b->lo[0] || atoms->frame[i] >= b->hi[0]) continue;
                if (tmd_box_distance(b, atoms->y[i], atoms->x[i]) > g->distance) continue;
                if (pass == 1) {
                    double *r = sbuf[p] + k * rec;
                    r[0] = atoms->frame[i];
                    r[1] = atoms->x[i];
                    r[2] = atoms->y[i];
                    r[3] = atoms->sublattice[i];
                    r[4] = atoms->species[i];
                    r[5] = atoms->intensity[i];
                    r[6] = (double)atoms->site[i];
                    for (int c = 0; c < atoms->nprob; c++) r[GHOST_FIXED + c] = atoms->prob[i * atoms->nprob + c];
                    for (int c = 0; c < atoms->nlatent; c++)
                        r[GHOST_FIXED + atoms->nprob + c] = atoms->latent[i * atoms->nlatent + c];
                }
                k++;
            }
            n = k;
            if (pass == 0) st = tmd_calloc(ctx, (void **)&sbuf[p], (size_t)(n * rec + 1), sizeof(double), "ghost send buffer");
        }
        cnt_send[3 * p] = n;
        cnt_send[3 * p + 1] = atoms->nprob;
        cnt_send[3 * p + 2] = atoms->nlatent;
    }
    st = tmd_agree(ctx, g->comm, st);
    if (st) goto cleanup;

    int nreq = 0;
    for (int p = 0; p < np; p++) {
        MPI_Irecv(cnt_recv + 3 * p, 3, MPI_INT64_T, g->peer[p], TAG_GHOST_COUNT, g->comm, &req[nreq++]);
        MPI_Isend(cnt_send + 3 * p, 3, MPI_INT64_T, g->peer[p], TAG_GHOST_COUNT, g->comm, &req[nreq++]);
    }
    st = TMD_MPI(ctx, MPI_Waitall(nreq, req, MPI_STATUSES_IGNORE));
    for (int p = 0; p < np && !st; p++) {
        if (cnt_recv[3 * p] && (cnt_recv[3 * p + 1] != ghosts->nprob || cnt_recv[3 * p + 2] != atoms->nlatent))
            st = TMD_FAIL(ctx, TMD_ERR_INTERNAL,
                          "ghost exchange: rank %d sends atoms with %lld probabilities and %lld features, rank %d expects "
                          "%d and %d",
                          g->peer[p], (long long)cnt_recv[3 * p + 1], (long long)cnt_recv[3 * p + 2], ctx->rank,
                          ghosts->nprob, atoms->nlatent);
        if (!st)
            st = tmd_calloc(ctx, (void **)&rbuf[p], (size_t)(cnt_recv[3 * p] * rec + 1), sizeof(double),
                            "ghost receive buffer");
        if (!st && cnt_recv[3 * p] * rec > INT_MAX)
            st = TMD_FAIL(ctx, TMD_ERR_RANGE, "ghost exchange: %lld ghosts from rank %d is too many for one message",
                          (long long)cnt_recv[3 * p], g->peer[p]);
    }
    st = tmd_agree(ctx, g->comm, st);
    if (st) goto cleanup;
    nreq = 0;
    for (int p = 0; p < np; p++) {
        if (cnt_recv[3 * p])
            MPI_Irecv(rbuf[p], (int)(cnt_recv[3 * p] * rec), MPI_DOUBLE, g->peer[p], TAG_GHOST_DATA, g->comm,
                      &req[nreq++]);
        if (cnt_send[3 * p])
            MPI_Isend(sbuf[p], (int)(cnt_send[3 * p] * rec), MPI_DOUBLE, g->peer[p], TAG_GHOST_DATA, g->comm,
                      &req[nreq++]);
    }
    st = TMD_MPI(ctx, MPI_Waitall(nreq, req, MPI_STATUSES_IGNORE));
    /* unpack in peer (rank) order */
    if (!st && atoms->nlatent && ghosts->nlatent != atoms->nlatent) st = tmd_atom_table_set_latent(ctx, ghosts, atoms->nlatent);
    for (int p = 0; p < np && !st; p++) {
        for (int64_t k = 0; k < cnt_recv[3 * p] && !st; k++) {
            const double *r = rbuf[p] + k * rec;
            int64_t i;
            st = tmd_atom_table_push(ctx, ghosts, &i);
            if (st) break;
            ghosts->frame[i] = (int32_t)r[0];
            ghosts->x[i] = r[1];
            ghosts->y[i] = r[2];
            ghosts->sublattice[i] = (int8_t)r[3];
            ghosts->species[i] = (int8_t)r[4];
            ghosts->intensity[i] = (float)r[5];
            ghosts->site[i] = (int64_t)r[6];
            for (int c = 0; c < ghosts->nprob; c++) ghosts->prob[i * ghosts->nprob + c] = (float)r[GHOST_FIXED + c];
            for (int c = 0; c < ghosts->nlatent; c++)
                ghosts->latent[i * ghosts->nlatent + c] = (float)r[GHOST_FIXED + ghosts->nprob + c];
        }
    }
    st = tmd_agree(ctx, g->comm, st);
cleanup:
    for (int p = 0; p < np; p++) {
        if (sbuf) free(sbuf[p]);
        if (rbuf) free(rbuf[p]);
    }
    free(sbuf);
    free(rbuf);
    free(cnt_send);
    free(cnt_recv);
    free(req);
    return st;
}
