/* Training and validating the shipped networks on the simulator's streams (tmd/learn.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hdf5.h>

#include "tmd/learn.h"
#include "tmd/sim.h"

static uint64_t h64(uint64_t a, uint64_t b) { return tmd_nn_hash(a * 0x9e3779b97f4a7c15ULL ^ tmd_nn_hash(b)); }
static double u01(uint64_t a, uint64_t b, uint64_t c) { return (h64(h64(a, b), c) >> 11) * (1.0 / 9007199254740992.0); }

/* Dihedral transform k (0..7) of a square (n x n) array of esize-byte elements (the image
 * and its class mask get the same transform), out-of-place through tmp. */
static void dihedral(void *a, size_t esize, int n, int k, void *tmp)
{
    if (!k) return;
    unsigned char *src = a, *dst = tmp;
    for (int y = 0; y < n; y++)
        for (int x = 0; x < n; x++) {
            int sx = x, sy = y;
            if (k & 1) sx = n - 1 - sx;
            if (k & 2) sy = n - 1 - sy;
            if (k & 4) { int t = sx; sx = sy; sy = t; }
            memcpy(dst + ((size_t)y * n + x) * esize, src + ((size_t)sy * n + sx) * esize, esize);
        }
    memcpy(a, tmp, (size_t)n * n * esize);
}

/* Intensity augmentation of an image in [0,1]: gamma, contrast, offset, blur, noise; all
 * drawn from (seed, example). */
static void augment_intensity(float *a, int n, uint64_t seed, int64_t e, float *tmp)
{
    double g = exp(0.25 * (2 * u01(seed, e, 11) - 1));           /* gamma 0.78..1.28 */
    double c = 0.8 + 0.4 * u01(seed, e, 12), o = 0.1 * (2 * u01(seed, e, 13) - 1);
    double blur = u01(seed, e, 14) < 0.3 ? 0.8 * u01(seed, e, 15) : 0;
    double noise = u01(seed, e, 16) < 0.5 ? 0.06 * u01(seed, e, 17) : 0;
    int64_t N = (int64_t)n * n;
    for (int64_t i = 0; i < N; i++) a[i] = (float)(c * pow(a[i] > 0 ? a[i] : 0, g) + o);
    if (blur > 0.2) {
        double w1 = exp(-0.5 / (blur * blur)), s = 1 + 2 * w1;
        float k0 = (float)(1 / s), k1 = (float)(w1 / s);
        for (int y = 0; y < n; y++)
            for (int x = 0; x < n; x++) {
                int l = x > 0 ? x - 1 : x, r = x < n - 1 ? x + 1 : x;
                tmp[y * n + x] = k1 * a[y * n + l] + k0 * a[y * n + x] + k1 * a[y * n + r];
            }
        for (int y = 0; y < n; y++)
            for (int x = 0; x < n; x++) {
                int u = y > 0 ? y - 1 : y, d = y < n - 1 ? y + 1 : y;
                a[y * n + x] = k1 * tmp[u * n + x] + k0 * tmp[y * n + x] + k1 * tmp[d * n + x];
            }
    }
    if (noise > 0) {
        uint64_t st = h64(seed, (uint64_t)e * 31 + 7);
        for (int64_t i = 0; i < N; i++) {
            st += 0x9e3779b97f4a7c15ULL;
            double u1 = ((tmd_nn_hash(st) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
            st += 0x9e3779b97f4a7c15ULL;
            double u2 = ((tmd_nn_hash(st) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
            a[i] += (float)(noise * sqrt(-2 * log(u1)) * cos(6.283185307179586 * u2));
        }
    }
}

/* Example e of the training (val = 0) or validation (val = 1) stream. unet: image + mask
 * of (tile x tile); classifier / autoencoder: per_tile patches + labels. */
tmd_status tmd_learn_example(tmd_ctx *ctx, const tmd_learn_opts *o, int val, int64_t e, float *img, uint8_t *cls,
                               int *labels, float *tmp)
{
    uint64_t seed = (uint64_t)o->seed + (val ? 7919u * 1000003u : 0);
    double px = o->px;
    if (!val) px *= 1 + o->px_jitter * (2 * u01(seed, e, 1) - 1);
    if (o->kind == TMD_LEARN_UNET) {
        TMD_CHECK(tmd_sim_training_tile(ctx, seed, e, (int)o->tile, px, img, cls));
        if (!val && o->augment) {
            int k = (int)(u01(seed, e, 2) * 8) & 7;
            dihedral(img, sizeof(float), (int)o->tile, k, tmp);
            dihedral(cls, 1, (int)o->tile, k, tmp);
            augment_intensity(img, (int)o->tile, seed, e, tmp);
        }
        return TMD_OK;
    }
    int P = (int)o->patch;
    TMD_CHECK(tmd_sim_training_patches(ctx, seed, e, (int)o->per_tile, P, px, img, labels));
    if (!val && o->augment)
        for (int i = 0; i < o->per_tile; i++) {
            int64_t ee = e * o->per_tile + i;
            dihedral(img + (int64_t)i * P * P, sizeof(float), P, (int)(u01(seed, ee, 2) * 8) & 7, tmp);
            augment_intensity(img + (int64_t)i * P * P, P, seed, ee, tmp);
        }
    return TMD_OK;
}

/* ---- checkpoints: model file + MODEL.h5.adam.h5 (Adam moments, step) ---- */

static tmd_status save_adam(tmd_ctx *ctx, tmd_nn_trainer *t, const char *path, long step)
{
    float *m, *v;
    int64_t n, *steps;
    tmd_nn_trainer_adam_state(t, &m, &v, &n, &steps);
    char tmp[4300];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    hid_t f = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (f < 0) return TMD_FAIL(ctx, TMD_ERR_IO, "%s: cannot create checkpoint", tmp);
    hsize_t d = (hsize_t)n;
    hid_t sp = H5Screate_simple(1, &d, NULL), s1 = H5Screate(H5S_SCALAR);
    int bad = 0;
    const char *names[2] = {"adam_m", "adam_v"};
    float *arr[2] = {m, v};
    for (int i = 0; i < 2; i++) {
        hid_t ds = H5Dcreate2(f, names[i], H5T_IEEE_F32LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        bad |= ds < 0 || H5Dwrite(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, arr[i]) < 0;
        if (ds >= 0) H5Dclose(ds);
    }
    long long vals[2] = {step, (long long)*steps};
    const char *an[2] = {"step", "adam_steps"};
    for (int i = 0; i < 2; i++) {
        hid_t a = H5Acreate2(f, an[i], H5T_NATIVE_LLONG, s1, H5P_DEFAULT, H5P_DEFAULT);
        bad |= a < 0 || H5Awrite(a, H5T_NATIVE_LLONG, &vals[i]) < 0;
        if (a >= 0) H5Aclose(a);
    }
    H5Sclose(sp);
    H5Sclose(s1);
    bad |= H5Fclose(f) < 0;
    if (bad || rename(tmp, path)) return TMD_FAIL(ctx, TMD_ERR_IO, "%s: writing checkpoint failed", path);
    return TMD_OK;
}

static tmd_status load_adam(tmd_ctx *ctx, tmd_nn_trainer *t, const char *path, long *step)
{
    float *m, *v;
    int64_t n, *steps;
    tmd_nn_trainer_adam_state(t, &m, &v, &n, &steps);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) return TMD_FAIL(ctx, TMD_ERR_IO, "%s: cannot open checkpoint for --resume", path);
    int bad = 0;
    const char *names[2] = {"adam_m", "adam_v"};
    float *arr[2] = {m, v};
    for (int i = 0; i < 2 && !bad; i++) {
        hid_t ds = H5Dopen2(f, names[i], H5P_DEFAULT);
        hid_t sp = ds >= 0 ? H5Dget_space(ds) : -1;
        bad = ds < 0 || sp < 0 || H5Sget_simple_extent_npoints(sp) != n ||
              H5Dread(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, arr[i]) < 0;
        if (sp >= 0) H5Sclose(sp);
        if (ds >= 0) H5Dclose(ds);
    }
    long long vals[2] = {0, 0};
    const char *an[2] = {"step", "adam_steps"};
    for (int i = 0; i < 2 && !bad; i++) {
        hid_t a = H5Aopen(f, an[i], H5P_DEFAULT);
        bad = a < 0 || H5Aread(a, H5T_NATIVE_LLONG, &vals[i]) < 0;
        if (a >= 0) H5Aclose(a);
    }
    H5Fclose(f);
    if (bad) return TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: checkpoint does not match the model (%lld parameters)", path, (long long)n);
    *step = (long)vals[0];
    *steps = vals[1];
    return TMD_OK;
}

/* ---- validation ---- */

/* Connected components (4-neighbour) of mask[j] > 0 in an S x S tile: centroids and
 * majority class of each component (at most cap). lab: S*S ints scratch, stack: S*S ints. */
static int components(const uint8_t *mask, int S, int *lab, int *stack, double *cx, double *cy, int *cls, int cap)
{
    int n = 0;
    for (int j = 0; j < S * S; j++) lab[j] = -1;
    for (int j0 = 0; j0 < S * S; j0++) {
        if (!mask[j0] || lab[j0] >= 0 || n >= cap) continue;
        long votes[8] = {0};
        double sx = 0, sy = 0;
        long cnt = 0;
        int top = 0;
        stack[top++] = j0;
        lab[j0] = n;
        while (top) {
            int j = stack[--top], y = j / S, x = j % S;
            sx += x, sy += y, cnt++;
            votes[mask[j] & 7]++;
            int nb[4] = {x > 0 ? j - 1 : -1, x < S - 1 ? j + 1 : -1, y > 0 ? j - S : -1, y < S - 1 ? j + S : -1};
            for (int k = 0; k < 4; k++)
                if (nb[k] >= 0 && mask[nb[k]] && lab[nb[k]] < 0) lab[nb[k]] = n, stack[top++] = nb[k];
        }
        int best = 1;
        for (int c = 2; c < 8; c++)
            if (votes[c] > votes[best]) best = c;
        cx[n] = sx / cnt, cy[n] = sy / cnt, cls[n] = best;
        n++;
    }
    return n;
}

/* Scratch of the atom-level scorer for S x S tiles, allocated once per validation: at
 * most S*S/2 + 1 four-connected components fit in a tile. */
typedef struct {
    int cap;
    int *lab, *stack, *tc, *pc, *used;
    double *tx, *ty, *px, *py;
} atom_match;

static tmd_status atom_match_alloc(tmd_ctx *ctx, int S, atom_match *a)
{
    memset(a, 0, sizeof *a);
    a->cap = S * S / 2 + 1;
    size_t n = (size_t)S * S, c = (size_t)a->cap;
    tmd_status st = tmd_calloc(ctx, (void **)&a->lab, n, sizeof(int), "validation component labels");
    if (!st) st = tmd_calloc(ctx, (void **)&a->stack, n, sizeof(int), "validation component stack");
    if (!st) st = tmd_calloc(ctx, (void **)&a->tc, 3 * c, sizeof(int), "validation component classes");
    if (!st) st = tmd_calloc(ctx, (void **)&a->tx, 4 * c, sizeof(double), "validation component centres");
    if (!st) a->pc = a->tc + c, a->used = a->tc + 2 * c, a->ty = a->tx + c, a->px = a->tx + 2 * c, a->py = a->tx + 3 * c;
    return st;
}

static void atom_match_free(atom_match *a)
{
    free(a->lab);
    free(a->stack);
    free(a->tc);
    free(a->tx);
    memset(a, 0, sizeof *a);
}

/* Atom-level scores of one tile: predicted components matched to true ones (centroids
 * within 3 px, greedy nearest); components centred within 6 px of the border ignored.
 * Adds to tp, fp, fn and, for matched atoms, to species_ok. */
static void atom_scores(const uint8_t *truth, const uint8_t *pred, int S, atom_match *a, long *tp, long *fp, long *fn,
                        long *species_ok)
{
    int nt = components(truth, S, a->lab, a->stack, a->tx, a->ty, a->tc, a->cap);
    int np = components(pred, S, a->lab, a->stack, a->px, a->py, a->pc, a->cap);
    const double *tx = a->tx, *ty = a->ty, *px = a->px, *py = a->py;
    for (int i = 0; i < nt; i++) a->used[i] = 0;
    const double B = 6;
    for (int k = 0; k < np; k++) {
        int inside = px[k] >= B && py[k] >= B && px[k] < S - B && py[k] < S - B;
        int best = -1;
        double bd = 9.0;
        for (int i = 0; i < nt; i++) {
            double d = (tx[i] - px[k]) * (tx[i] - px[k]) + (ty[i] - py[k]) * (ty[i] - py[k]);
            if (!a->used[i] && d <= bd) bd = d, best = i;
        }
        if (best >= 0) {
            a->used[best] = 1;
            int tin = tx[best] >= B && ty[best] >= B && tx[best] < S - B && ty[best] < S - B;
            if (tin || inside) (*tp)++, *species_ok += a->tc[best] == a->pc[k];
        } else if (inside) (*fp)++;
    }
    for (int i = 0; i < nt; i++)
        if (!a->used[i] && tx[i] >= B && ty[i] >= B && tx[i] < S - B && ty[i] < S - B) (*fn)++;
}

/* tmd_agree for the training loop: a stop signal (agreed by every rank, since real errors
 * win in tmd_agree) is not a failure here but sets *sig, so that the loop finishes the step and
 * saves its checkpoint before it stops. */
static tmd_status agree_step(tmd_ctx *ctx, MPI_Comm comm, tmd_status st, int *sig)
{
    st = tmd_agree(ctx, comm, st);
    if (st == TMD_ERR_INTERRUPTED) {
        tmd_error_clear(ctx);
        *sig = 1;
        st = TMD_OK;
    }
    return st;
}

tmd_status tmd_learn_validate(tmd_ctx *ctx, MPI_Comm comm, const tmd_learn_opts *o, const tmd_nn_model *m,
                              tmd_learn_validation *r)
{
    tmd_status st = TMD_OK;
    tmd_nn_plan *p = NULL;
    float *img = NULL, *out = NULL, *tmp = NULL;
    uint8_t *cls = NULL, *pred = NULL;
    int *labels = NULL;
    atom_match match = {0};
    int unet = o->kind == TMD_LEARN_UNET;
    int S = unet ? (int)o->tile : (int)o->patch, nb = unet ? 1 : (int)o->per_tile;
    int C = tmd_nn_model_out_channels(m);
    memset(r, 0, sizeof *r);
    double sse = 0;
    st = tmd_nn_plan_create_ex(ctx, m, nb, S, S, -1, &p);
    if (!st) st = tmd_calloc(ctx, (void **)&img, (size_t)nb * S * S, sizeof(float), "validation images");
    if (!st) st = tmd_calloc(ctx, (void **)&out, (size_t)nb * C * S * S, sizeof(float), "validation outputs");
    if (!st) st = tmd_calloc(ctx, (void **)&cls, (size_t)S * S, 1, "validation classes");
    if (!st) st = tmd_calloc(ctx, (void **)&labels, (size_t)nb, sizeof(int), "validation labels");
    if (!st) st = tmd_calloc(ctx, (void **)&tmp, (size_t)nb * S * S + 16, sizeof(float), "validation scratch");
    if (!st) st = tmd_calloc(ctx, (void **)&pred, (size_t)S * S, 1, "validation prediction");
    if (!st && unet) st = atom_match_alloc(ctx, S, &match);
    int rank = 0, nranks = 1;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &nranks);
    for (long e = rank; e < o->val_n && !st; e += nranks) {
        if ((st = tmd_learn_example(ctx, o, 1, e, img, cls, labels, tmp))) break;
        tmd_nn_execute(p, img, out);
        if (unet) {
            int64_t HW = (int64_t)S * S;
            for (int64_t j = 0; j < HW; j++) {
                int best = 0;
                for (int c = 1; c < C; c++)
                    if (out[c * HW + j] > out[best * HW + j]) best = c;
                r->conf[cls[j] < 8 ? cls[j] : 7][best < 8 ? best : 7]++;
                pred[j] = (uint8_t)best;
            }
            atom_scores(cls, pred, S, &match, &r->atoms[0], &r->atoms[1], &r->atoms[2], &r->atoms[3]);
        } else if (o->kind == TMD_LEARN_CLASSIFIER) {
            for (int i = 0; i < nb; i++) {
                int best = 0;
                for (int c = 1; c < C; c++)
                    if (out[i * C + c] > out[i * C + best]) best = c;
                r->conf[labels[i] & 7][best & 7]++;
            }
        } else {
            for (int64_t j = 0; j < (int64_t)nb * S * S; j++) sse += ((double)out[j] - img[j]) * ((double)out[j] - img[j]);
        }
    }
    st = tmd_agree(ctx, comm, st);
    if (!st) st = TMD_MPI(ctx, MPI_Allreduce(MPI_IN_PLACE, r->conf, 64, MPI_LONG, MPI_SUM, comm));
    if (!st) st = TMD_MPI(ctx, MPI_Allreduce(MPI_IN_PLACE, &sse, 1, MPI_DOUBLE, MPI_SUM, comm));
    if (!st) st = TMD_MPI(ctx, MPI_Allreduce(MPI_IN_PLACE, r->atoms, 4, MPI_LONG, MPI_SUM, comm));
    if (!st && r->atoms[0]) {
        r->atom_f1 = 2.0 * r->atoms[0] / (2.0 * r->atoms[0] + r->atoms[1] + r->atoms[2]);
        r->atom_species = (double)r->atoms[3] / r->atoms[0];
    }
    if (!st) {
        long tot = 0, ok = 0;
        for (int a = 0; a < 8; a++)
            for (int b = 0; b < 8; b++) tot += r->conf[a][b], ok += a == b ? r->conf[a][b] : 0;
        r->acc = tot ? (double)ok / tot : 0;
        r->loss = sse / ((double)o->val_n * nb * S * S);
        int c0 = unet ? 1 : 0, n = 0;
        for (int c = c0; c < C && c < 8; c++) {
            long tp = r->conf[c][c], fp = 0, fn = 0;
            for (int k = 0; k < 8; k++)
                if (k != c) fp += r->conf[k][c], fn += r->conf[c][k];
            if (tp + fp + fn == 0) continue;
            r->f1_mean += 2.0 * tp / (2.0 * tp + fp + fn);
            n++;
        }
        if (n) r->f1_mean /= n;
        if (unet) {
            long tp = 0, fp = 0, fn = 0;
            for (int a = 0; a < 8; a++)
                for (int b = 0; b < 8; b++) {
                    if (a > 0 && b > 0) tp += r->conf[a][b];
                    else if (a == 0 && b > 0) fp += r->conf[a][b];
                    else if (a > 0 && b == 0) fn += r->conf[a][b];
                }
            r->f1_atoms = tp ? 2.0 * tp / (2.0 * tp + fp + fn) : 0;
        }
    }
    tmd_nn_plan_destroy(&p);
    free(img);
    free(out);
    free(cls);
    free(labels);
    free(tmp);
    free(pred);
    atom_match_free(&match);
    return st;
}

void tmd_learn_defaults(tmd_learn_opts *o, tmd_learn_kind kind)
{
    *o = (tmd_learn_opts){.kind = kind, .steps = 2000, .batch = kind == TMD_LEARN_UNET ? 8 : 4, .tile = 128, .seed = 1,
                          .ckpt_every = 100, .val_every = 200, .val_n = 8, .base = 16, .patch = 32, .latent = 12,
                          .per_tile = 16, .lr = 2e-3, .lr_min = 1e-4, .px = 0.12, .px_jitter = 0.08, .augment = 1};
}

static const char *kind_name(tmd_learn_kind k)
{
    return k == TMD_LEARN_UNET ? "unet" : k == TMD_LEARN_CLASSIFIER ? "classifier" : "autoencoder";
}

static tmd_status check_opts(tmd_ctx *ctx, const tmd_learn_opts *o)
{
    if ((unsigned)o->kind > TMD_LEARN_AUTOENCODER || !o->out)
        return TMD_FAIL(ctx, TMD_ERR_ARG, "train: need the model kind (unet, classifier, autoencoder) and an output file");
    if (o->kind != TMD_LEARN_UNET && (o->patch < 8 || o->patch % 8))
        return TMD_FAIL(ctx, TMD_ERR_ARG, "train: --patch %ld is not a multiple of 8", o->patch);
    if (o->kind == TMD_LEARN_UNET && (o->tile < 8 || o->tile % 8))
        return TMD_FAIL(ctx, TMD_ERR_ARG, "train: --tile %ld is not a multiple of 8", o->tile);
    if (o->batch < 1 || o->val_n < 1 || o->per_tile < 1 || o->steps < 0)
        return TMD_FAIL(ctx, TMD_ERR_ARG, "train: batch %ld, val_n %ld, per_tile %ld must be >= 1, steps %ld >= 0",
                        o->batch, o->val_n, o->per_tile, o->steps);
    return TMD_OK;
}

static void log_confusion(tmd_ctx *ctx, const tmd_learn_validation *v, int nc)
{
    for (int a = 0; a < nc; a++) {
        char line[256];
        int l = 0;
        for (int b = 0; b < nc; b++) l += snprintf(line + l, sizeof line - l, " %9ld", v->conf[a][b]);
        tmd_info(ctx, "  truth %d:%s", a, line);
    }
}

tmd_status tmd_learn_evaluate(tmd_ctx *ctx, MPI_Comm comm, const tmd_learn_opts *o, tmd_learn_validation *ev)
{
    tmd_nn_model *m = NULL;
    tmd_status st = check_opts(ctx, o);
    tmd_learn_opts eo = *o;
    if (!st) st = tmd_nn_model_load(ctx, o->out, &m);
    if (!st && strcmp(tmd_nn_model_kind(m), kind_name(o->kind)))
        st = TMD_FAIL(ctx, TMD_ERR_ARG, "%s: a '%s' model evaluated as '%s'", o->out, tmd_nn_model_kind(m),
                      kind_name(o->kind));
    st = tmd_agree(ctx, comm, st);
    if (!st && o->kind != TMD_LEARN_UNET) eo.patch = tmd_nn_model_input_size(m);
    if (!st) st = tmd_learn_validate(ctx, comm, &eo, m, ev);
    if (!st) {
        tmd_info(ctx, "evaluation of %s on %ld held-out examples (seed %ld + 7919*1000003): accuracy %.4f, "
                 "atom-pixel F1 %.4f, mean F1 %.4f, MSE %.6f", o->out, o->val_n, o->seed, ev->acc, ev->f1_atoms,
                 ev->f1_mean, ev->loss);
        if (o->kind == TMD_LEARN_UNET)
            tmd_info(ctx, "atoms: F1 %.4f (tp %ld fp %ld fn %ld), species of matched atoms %.4f", ev->atom_f1,
                     ev->atoms[0], ev->atoms[1], ev->atoms[2], ev->atom_species);
        log_confusion(ctx, ev, o->kind == TMD_LEARN_UNET ? 6 : o->kind == TMD_LEARN_CLASSIFIER ? 8 : 0);
    }
    tmd_nn_model_free(&m);
    return st;
}

/* Provenance of a checkpoint (JSON), malloc'ed; NULL when out of memory. */
static char *provenance(const tmd_learn_opts *o, long done, int S, long per, int R, const float cw[6], double ema,
                        const tmd_learn_validation *vr, int have_val)
{
    const char *cmd = o->command ? o->command : "";
    size_t plen = 4096 + strlen(cmd);
    char *prov = malloc(plen);
    if (!prov) return NULL;
    snprintf(prov, plen,
             "{\"command\": \"%s\", \"kind\": \"%s\", \"tmdflow_version\": \"%s\", \"train_seed\": %ld, "
             "\"validation_seed\": %lu, \"steps_done\": %ld, \"steps\": %ld, \"global_batch\": %ld, "
             "\"size\": %d, \"nominal_pixel_size\": %.4f, \"pixel_jitter\": %.3f, \"ranks\": %d, "
             "\"class_weights\": [%.3f, %.3f, %.3f, %.3f, %.3f, %.3f], \"train_loss_avg\": %.5f, "
             "\"validation\": {\"examples\": %ld, \"at_step\": %ld, \"accuracy\": %.5f, "
             "\"atom_pixel_f1\": %.5f, \"mean_f1\": %.5f, \"mse\": %.6f, \"atom_f1\": %.5f, \"atom_species\": %.5f}, "
             "\"input\": \"1 channel, image normalised by tmd_sim_normalise (0.5/99.9 percentiles -> 0..1)\"}",
             cmd, kind_name(o->kind), TMD_VERSION, o->seed, (unsigned long)((uint64_t)o->seed + 7919u * 1000003u), done,
             o->steps, o->batch * per, S, o->px, o->px_jitter, R, cw[0], cw[1], cw[2], cw[3], cw[4], cw[5], ema,
             o->val_n * per, have_val ? done : 0, vr->acc, vr->f1_atoms, vr->f1_mean, vr->loss, vr->atom_f1,
             vr->atom_species);
    return prov;
}

tmd_status tmd_learn_train(tmd_ctx *ctx, MPI_Comm comm, const tmd_learn_opts *opts)
{
    tmd_status st = check_opts(ctx, opts);
    tmd_nn_model *m = NULL;
    tmd_nn_trainer *t = NULL;
    float *img = NULL, *target = NULL, *tmp = NULL;
    uint8_t *cls = NULL;
    int *labels = NULL;
    char adam_path[4200], *prov = NULL;
    if (st) return st;
    tmd_learn_opts o = *opts;
    snprintf(adam_path, sizeof adam_path, "%s.adam.h5", o.out);
    const char *kname = kind_name(o.kind);

    long start = 0;
    if (o.resume) {
        st = tmd_nn_model_load(ctx, o.out, &m);
        if (!st && strcmp(tmd_nn_model_kind(m), kname))
            st = TMD_FAIL(ctx, TMD_ERR_ARG, "%s: --resume of a '%s' model as '%s'", o.out, tmd_nn_model_kind(m), kname);
    } else if (o.kind == TMD_LEARN_UNET) {
        st = tmd_nn_build_unet(ctx, (int)o.base, 6, (uint64_t)o.seed, &m);
    } else if (o.kind == TMD_LEARN_CLASSIFIER) {
        st = tmd_nn_build_classifier(ctx, (int)o.patch, (int)o.base, TMD_PATCH_NLABELS, (uint64_t)o.seed, &m);
    } else {
        st = tmd_nn_build_autoencoder(ctx, (int)o.patch, (int)o.base, (int)o.latent, (uint64_t)o.seed, &m);
    }
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    if (o.kind != TMD_LEARN_UNET) o.patch = tmd_nn_model_input_size(m);

    int R = 1, r = 0;
    MPI_Comm_size(comm, &R);
    MPI_Comm_rank(comm, &r);
    long b0 = o.batch * r / R, b1 = o.batch * (r + 1) / R, nloc = b1 - b0, cap = (o.batch + R - 1) / R;
    int S = o.kind == TMD_LEARN_UNET ? (int)o.tile : (int)o.patch;
    long per = o.kind == TMD_LEARN_UNET ? 1 : o.per_tile; /* network samples per example */
    size_t px_per = (size_t)S * S;
    tmd_nn_adam opt = {(float)o.lr, 0.9f, 0.999f, 1e-8f, (float)o.weight_decay};
    st = tmd_nn_trainer_create(ctx, m, comm, (int)(cap * per), S, S, &opt, &t);
    if (!st) st = tmd_calloc(ctx, (void **)&img, (size_t)cap * per * px_per, sizeof(float), "training images");
    if (!st) st = tmd_calloc(ctx, (void **)&cls, (size_t)cap * per * px_per, 1, "training classes");
    if (!st) st = tmd_calloc(ctx, (void **)&labels, (size_t)cap * per + 1, sizeof(int), "training labels");
    if (!st) st = tmd_calloc(ctx, (void **)&tmp, (size_t)per * px_per + 16, sizeof(float), "training scratch");
    if (!st && o.kind == TMD_LEARN_AUTOENCODER)
        st = tmd_calloc(ctx, (void **)&target, (size_t)cap * per * px_per, sizeof(float), "targets");
    if (!st && o.resume) st = load_adam(ctx, t, adam_path, &start);
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;

    /* class weights for the U-Net: background pixels dominate; weight each class by
     * (f_background / f_class)^0.5 measured on 16 training tiles, clipped to [1, 8] */
    float cw[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    if (o.kind == TMD_LEARN_UNET) {
        double cnt[6] = {0};
        for (long e = r; e < 16 && !st; e += R) {
            st = tmd_learn_example(ctx, &o, 0, 1000000000L + e, img, cls, labels, tmp);
            for (size_t j = 0; j < px_per && !st; j++) cnt[cls[j] < 6 ? cls[j] : 0]++;
        }
        st = tmd_agree(ctx, comm, st);
        if (!st) st = TMD_MPI(ctx, MPI_Allreduce(MPI_IN_PLACE, cnt, 6, MPI_DOUBLE, MPI_SUM, comm));
        if (st) goto cleanup;
        for (int c = 1; c < 6; c++) {
            double w = cnt[c] > 0 ? sqrt(cnt[0] / cnt[c]) : 8;
            cw[c] = (float)(w < 1 ? 1 : w > 8 ? 8 : w);
        }
        tmd_nn_trainer_set_class_weights(t, cw, 6);
        tmd_info(ctx, "train unet: class weights %.2f %.2f %.2f %.2f %.2f %.2f", cw[0], cw[1], cw[2], cw[3], cw[4], cw[5]);
    }
    tmd_info(ctx, "train %s: %lld parameters, %ld steps from %ld, global batch %ld (%ld per rank max), %s %d px, "
             "%d rank(s), px %.3f +- %.0f%%",
             kname, (long long)tmd_nn_model_param_count(m), o.steps, start, o.batch * per, cap * per,
             o.kind == TMD_LEARN_UNET ? "tile" : "patch", S, R, o.px, 100 * o.px_jitter);

    tmd_progress prog;
    tmd_progress_begin(&prog, ctx, "training", (double)(o.steps - start), "steps");
    double ema = -1, t0 = tmd_now();
    tmd_learn_validation vr;
    memset(&vr, 0, sizeof vr);
    int have_val = 0, sig = 0;
    for (long step = start; step < o.steps; step++) {
        /* cosine schedule with a 50-step warm-up */
        double f = (double)step / (double)(o.steps > 1 ? o.steps - 1 : 1);
        double lr = o.lr_min + 0.5 * (o.lr - o.lr_min) * (1 + cos(3.141592653589793 * f));
        if (step < 50) lr *= (step + 1) / 50.0;
        tmd_nn_trainer_set_lr(t, (float)lr);
        for (long b = b0; b < b1 && !st; b++) {
            int64_t e = (int64_t)step * o.batch + b;
            long k = b - b0;
            st = tmd_learn_example(ctx, &o, 0, e, img + k * per * px_per, cls + k * per * px_per, labels + k * per, tmp);
        }
        if (!st && o.kind == TMD_LEARN_CLASSIFIER)
            for (long j = 0; j < nloc * per; j++) cls[j] = (uint8_t)labels[j];
        if (!st && o.kind == TMD_LEARN_AUTOENCODER) memcpy(target, img, sizeof(float) * nloc * per * px_per);
        st = agree_step(ctx, comm, st, &sig);
        if (st) break;
        double loss = 0;
        st = tmd_nn_trainer_step(t, (int)(nloc * per), (int)(o.batch * per), (int64_t)b0 * per, (uint64_t)step, img,
                                 o.kind == TMD_LEARN_AUTOENCODER ? NULL : cls, target, &loss);
        st = agree_step(ctx, comm, st, &sig);
        if (st) break;
        ema = ema < 0 ? loss : 0.95 * ema + 0.05 * loss;
        long done = step + 1;
        tmd_progress_update(&prog, (double)(done - start));
        if (done % 20 == 0 || done == o.steps) {
            double rate = (done - start) / (tmd_now() - t0);
            tmd_info(ctx, "step %ld/%ld loss %.4f (avg %.4f) lr %.2e  %.2f steps/s  ETA %.0f s", done, o.steps, loss,
                     ema, lr, rate, (o.steps - done) / rate);
        }
        int last = done == o.steps, stop = sig; /* agreed by every rank in agree_step */
        int pause = o.stop_after > 0 && done == o.stop_after && !last; /* chunked runs (time-limited jobs) */
        if (((o.val_every && done % o.val_every == 0) || last) && !stop) {
            if ((st = tmd_learn_validate(ctx, comm, &o, m, &vr))) break;
            have_val = 1;
            if (o.kind == TMD_LEARN_UNET)
                tmd_info(ctx, "validation at step %ld: pixel accuracy %.4f, atom-pixel F1 %.4f, mean class F1 %.4f; "
                         "atoms: F1 %.4f (tp %ld fp %ld fn %ld), species of matched %.4f", done, vr.acc, vr.f1_atoms,
                         vr.f1_mean, vr.atom_f1, vr.atoms[0], vr.atoms[1], vr.atoms[2], vr.atom_species);
            else if (o.kind == TMD_LEARN_CLASSIFIER)
                tmd_info(ctx, "validation at step %ld: accuracy %.4f, mean F1 %.4f", done, vr.acc, vr.f1_mean);
            else tmd_info(ctx, "validation at step %ld: reconstruction MSE %.5f", done, vr.loss);
            if (o.kind != TMD_LEARN_AUTOENCODER && last) {
                tmd_info(ctx, "confusion matrix (rows truth, columns predicted):");
                log_confusion(ctx, &vr, o.kind == TMD_LEARN_UNET ? 6 : 8);
            }
        }
        if ((o.ckpt_every && done % o.ckpt_every == 0) || last || stop || pause) {
            free(prov);
            prov = provenance(&o, done, S, per, R, cw, ema, &vr, have_val);
            if (!prov) st = TMD_FAIL(ctx, TMD_ERR_NOMEM, "train: no memory for the provenance text");
            if (!st && r == 0) {
                st = tmd_nn_model_save(ctx, m, o.out, prov);
                if (!st) st = save_adam(ctx, t, adam_path, done);
            }
            st = agree_step(ctx, comm, st, &sig);
            if (st) break;
            tmd_info(ctx, "checkpoint at step %ld: %s", done, o.out);
        }
        if (stop) {
            st = TMD_FAIL(ctx, TMD_ERR_INTERRUPTED, "train: stopped by a signal at step %ld; --resume continues", done);
            break;
        }
        if (pause) {
            tmd_info(ctx, "stopping after step %ld as asked (--stop-after); --resume continues", done);
            break;
        }
    }
    tmd_progress_end(&prog);
    if (!st) tmd_info(ctx, "trained %s in %.0f s: %s", kname, tmd_now() - t0, o.out);
cleanup:
    tmd_nn_trainer_destroy(&t);
    tmd_nn_model_free(&m);
    free(img);
    free(cls);
    free(labels);
    free(tmp);
    free(target);
    free(prov);
    return st;
}
