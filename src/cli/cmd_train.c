/* tmdflow train unet|classifier|autoencoder -o MODEL.h5 [options]
 *
 * Data-parallel training on simulated data: every step has a global batch of B examples
 * with global example numbers step*B + b; rank r simulates examples [r*B/R, (r+1)*B/R) of
 * each batch (tmd_sim_training_tile / tmd_sim_training_patches at the nominal pixel size
 * jittered by +-8%, plus augmentation), gradients are summed with MPI_Allreduce, so every
 * rank holds the same weights and the result does not depend on the rank count.
 * Validation on a simulator seed never used for training; checkpoints (model + Adam state)
 * every N steps and on SIGTERM/SIGUSR1; --resume continues from them. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "commands.h"
#include "tmd/nn.h"
#include "tmd/sim.h"

#include <hdf5.h>

enum { K_UNET, K_CLS, K_AE };

typedef struct {
    int kind;
    const char *out;
    long steps, stop_after, batch, tile, seed, ckpt_every, val_every, val_n, base, patch, latent, per_tile;
    double lr, lr_min, px, px_jitter, wd;
    int resume, eval;
    int aug;
} train_opts;

static uint64_t h64(uint64_t a, uint64_t b) { return tmd_nn_hash(a * 0x9e3779b97f4a7c15ULL ^ tmd_nn_hash(b)); }
static double u01(uint64_t a, uint64_t b, uint64_t c) { return (h64(h64(a, b), c) >> 11) * (1.0 / 9007199254740992.0); }

/* Dihedral transform k (0..7) of a square (n x n) array, out-of-place through tmp. */
static void dihedral_f(float *a, int n, int k, float *tmp)
{
    if (!k) return;
    for (int y = 0; y < n; y++)
        for (int x = 0; x < n; x++) {
            int sx = x, sy = y;
            if (k & 1) sx = n - 1 - sx;
            if (k & 2) sy = n - 1 - sy;
            if (k & 4) { int t = sx; sx = sy; sy = t; }
            tmp[y * n + x] = a[sy * n + sx];
        }
    memcpy(a, tmp, sizeof(float) * n * n);
}
static void dihedral_u8(uint8_t *a, int n, int k, uint8_t *tmp)
{
    if (!k) return;
    for (int y = 0; y < n; y++)
        for (int x = 0; x < n; x++) {
            int sx = x, sy = y;
            if (k & 1) sx = n - 1 - sx;
            if (k & 2) sy = n - 1 - sy;
            if (k & 4) { int t = sx; sx = sy; sy = t; }
            tmp[y * n + x] = a[sy * n + sx];
        }
    memcpy(a, tmp, (size_t)n * n);
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
static tmd_status make_example(tmd_ctx *ctx, const train_opts *o, int val, int64_t e, float *img, uint8_t *cls,
                               int *labels, float *tmp)
{
    uint64_t seed = (uint64_t)o->seed + (val ? 7919u * 1000003u : 0);
    double px = o->px;
    if (!val) px *= 1 + o->px_jitter * (2 * u01(seed, e, 1) - 1);
    if (o->kind == K_UNET) {
        TMD_CHECK(tmd_sim_training_tile(ctx, seed, e, (int)o->tile, px, img, cls));
        if (!val && o->aug) {
            int k = (int)(u01(seed, e, 2) * 8) & 7;
            dihedral_f(img, (int)o->tile, k, tmp);
            dihedral_u8(cls, (int)o->tile, k, (uint8_t *)tmp);
            augment_intensity(img, (int)o->tile, seed, e, tmp);
        }
        return TMD_OK;
    }
    int P = (int)o->patch;
    TMD_CHECK(tmd_sim_training_patches(ctx, seed, e, (int)o->per_tile, P, px, img, labels));
    if (!val && o->aug)
        for (int i = 0; i < o->per_tile; i++) {
            int64_t ee = e * o->per_tile + i;
            dihedral_f(img + (int64_t)i * P * P, P, (int)(u01(seed, ee, 2) * 8) & 7, tmp);
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

/* Atom-level scores of one tile: predicted components matched to true ones (centroids
 * within 3 px, greedy nearest); components centred within 6 px of the border ignored.
 * Adds to tp, fp, fn and, for matched atoms, to species_ok. */
static void atom_scores(const uint8_t *truth, const uint8_t *pred, int S, int *lab, int *stack, long *tp, long *fp,
                        long *fn, long *species_ok)
{
    enum { CAP = 4096 };
    static double tx[CAP], ty[CAP], px_[CAP], py[CAP];
    static int tc[CAP], pc[CAP], used[CAP];
    int nt = components(truth, S, lab, stack, tx, ty, tc, CAP);
    int np = components(pred, S, lab, stack, px_, py, pc, CAP);
    for (int i = 0; i < nt; i++) used[i] = 0;
    const double B = 6;
    for (int k = 0; k < np; k++) {
        int inside = px_[k] >= B && py[k] >= B && px_[k] < S - B && py[k] < S - B;
        int best = -1;
        double bd = 9.0;
        for (int i = 0; i < nt; i++) {
            double d = (tx[i] - px_[k]) * (tx[i] - px_[k]) + (ty[i] - py[k]) * (ty[i] - py[k]);
            if (!used[i] && d <= bd) bd = d, best = i;
        }
        if (best >= 0) {
            used[best] = 1;
            int tin = tx[best] >= B && ty[best] >= B && tx[best] < S - B && ty[best] < S - B;
            if (tin || inside) (*tp)++, *species_ok += tc[best] == pc[k];
        } else if (inside) (*fp)++;
    }
    for (int i = 0; i < nt; i++)
        if (!used[i] && tx[i] >= B && ty[i] >= B && tx[i] < S - B && ty[i] < S - B) (*fn)++;
}

typedef struct {
    double loss;       /* autoencoder MSE */
    double acc;        /* pixel / patch accuracy */
    double f1_atoms;   /* unet: F1 of atom (class > 0) vs background pixels */
    double f1_mean;    /* unet: mean F1 over classes 1..5; classifier: mean over labels */
    double atom_f1;    /* unet: atom-level detection F1 (components matched within 3 px) */
    double atom_species; /* unet: share of matched atoms whose majority class is right */
    long atoms[4];     /* tp, fp, fn, species ok */
    long conf[8][8];
} val_result;

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

static tmd_status validate(tmd_ctx *ctx, MPI_Comm comm, const train_opts *o, const tmd_nn_model *m, val_result *r)
{
    tmd_status st = TMD_OK;
    tmd_nn_plan *p = NULL;
    float *img = NULL, *out = NULL, *tmp = NULL;
    uint8_t *cls = NULL, *pred = NULL;
    int *labels = NULL, *lab = NULL, *stk = NULL;
    int unet = o->kind == K_UNET;
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
    if (!st) st = tmd_calloc(ctx, (void **)&lab, (size_t)S * S, sizeof(int), "validation labels");
    if (!st) st = tmd_calloc(ctx, (void **)&stk, (size_t)S * S, sizeof(int), "validation stack");
    for (long e = ctx->rank; e < o->val_n && !st; e += ctx->nranks) {
        if ((st = make_example(ctx, o, 1, e, img, cls, labels, tmp))) break;
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
            atom_scores(cls, pred, S, lab, stk, &r->atoms[0], &r->atoms[1], &r->atoms[2], &r->atoms[3]);
        } else if (o->kind == K_CLS) {
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
    free(lab);
    free(stk);
    return st;
}

static void usage_msg(tmd_ctx *ctx)
{
    if (ctx->rank == 0)
        fprintf(stderr,
                "usage: tmdflow train unet|classifier|autoencoder -o MODEL.h5 [--steps N] [--batch B] [--tile S]\n"
                "       [--seed S] [--lr LR] [--lr-min LR] [--resume] [--checkpoint-every N] [--val-every N]\n"
                "       [--val-n N] [--base F] [--patch P] [--latent D] [--per-tile N] [--px A] [--px-jitter F]\n"
                "       [--no-augment] [--weight-decay W] [--eval] [--stop-after N]\n"
                "  --stop-after N: checkpoint and exit after step N of the --steps schedule (resume later)\n"
                "  --eval: only validate the existing model -o MODEL.h5 on --val-n held-out examples\n");
}

tmd_status tmd_cmd_train(tmd_ctx *ctx, MPI_Comm comm, int argc, char **argv)
{
    train_opts o = {.kind = -1, .steps = 2000, .batch = 8, .tile = 128, .seed = 1, .ckpt_every = 100,
                    .val_every = 200, .val_n = 8, .base = 16, .patch = 32, .latent = 12, .per_tile = 16,
                    .lr = 2e-3, .lr_min = 1e-4, .px = 0.12, .px_jitter = 0.08, .aug = 1};
    tmd_status st = TMD_OK;
    tmd_nn_model *m = NULL;
    tmd_nn_trainer *t = NULL;
    float *img = NULL, *target = NULL, *tmp = NULL;
    uint8_t *cls = NULL;
    int *labels = NULL;
    char adam_path[4200], cmdline[2048] = "", *prov = NULL;
    long batch_override = 0;
    for (int i = 0; i < argc; i++) {
        size_t l = strlen(cmdline);
        snprintf(cmdline + l, sizeof cmdline - l, "%s%s", i ? " " : "", argv[i]);
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        long *lp = NULL;
        double *dp = NULL;
        long lo = 1, hi = 1000000000L;
        if (!strcmp(a, "unet")) o.kind = K_UNET;
        else if (!strcmp(a, "classifier")) o.kind = K_CLS;
        else if (!strcmp(a, "autoencoder")) o.kind = K_AE;
        else if (!strcmp(a, "--resume")) o.resume = 1;
        else if (!strcmp(a, "--no-augment")) o.aug = 0;
        else if (!strcmp(a, "--eval")) o.eval = 1;
        else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage_msg(ctx);
            return TMD_OK;
        } else if (!strcmp(a, "-o")) {
            TMD_CHECK(tmd_cli_value(ctx, argc, argv, i++, &o.out));
        } else if (!strcmp(a, "--steps")) lp = &o.steps, lo = 0;
        else if (!strcmp(a, "--stop-after")) lp = &o.stop_after, lo = 0;
        else if (!strcmp(a, "--batch")) lp = &batch_override, hi = 4096;
        else if (!strcmp(a, "--tile")) lp = &o.tile, lo = 16, hi = 4096;
        else if (!strcmp(a, "--seed")) lp = &o.seed, lo = 0;
        else if (!strcmp(a, "--checkpoint-every")) lp = &o.ckpt_every, lo = 0;
        else if (!strcmp(a, "--val-every")) lp = &o.val_every, lo = 0;
        else if (!strcmp(a, "--val-n")) lp = &o.val_n;
        else if (!strcmp(a, "--base")) lp = &o.base, hi = 256;
        else if (!strcmp(a, "--patch")) lp = &o.patch, lo = 8, hi = 128;
        else if (!strcmp(a, "--latent")) lp = &o.latent, hi = 1024;
        else if (!strcmp(a, "--per-tile")) lp = &o.per_tile, hi = 4096;
        else if (!strcmp(a, "--lr")) dp = &o.lr;
        else if (!strcmp(a, "--lr-min")) dp = &o.lr_min;
        else if (!strcmp(a, "--px")) dp = &o.px;
        else if (!strcmp(a, "--px-jitter")) dp = &o.px_jitter;
        else if (!strcmp(a, "--weight-decay")) dp = &o.wd;
        else {
            usage_msg(ctx);
            return TMD_FAIL(ctx, TMD_ERR_ARG, "train: unknown argument '%s'", a);
        }
        if (lp || dp) {
            TMD_CHECK(tmd_cli_value(ctx, argc, argv, i++, &v));
            if (lp) TMD_CHECK(tmd_cli_int(ctx, a, v, lo, hi, lp));
            else TMD_CHECK(tmd_cli_double(ctx, a, v, 0, 10, dp));
        }
    }
    if (o.kind < 0 || !o.out) {
        usage_msg(ctx);
        return TMD_FAIL(ctx, TMD_ERR_ARG, "train: need the model kind (unet, classifier, autoencoder) and -o MODEL.h5");
    }
    if (o.kind != K_UNET && o.patch % 8) return TMD_FAIL(ctx, TMD_ERR_ARG, "train: --patch %ld is not a multiple of 8", o.patch);
    if (o.kind == K_UNET && o.tile % 8) return TMD_FAIL(ctx, TMD_ERR_ARG, "train: --tile %ld is not a multiple of 8", o.tile);
    /* batch: unet tiles; classifier/autoencoder tiles of per_tile patches each */
    o.batch = batch_override ? batch_override : (o.kind == K_UNET ? 8 : 4);
    snprintf(adam_path, sizeof adam_path, "%s.adam.h5", o.out);
    const char *kname = o.kind == K_UNET ? "unet" : o.kind == K_CLS ? "classifier" : "autoencoder";

    long start = 0;
    if (o.resume || o.eval) {
        st = tmd_nn_model_load(ctx, o.out, &m);
        if (!st && strcmp(tmd_nn_model_kind(m), kname))
            st = TMD_FAIL(ctx, TMD_ERR_ARG, "%s: --resume of a '%s' model as '%s'", o.out, tmd_nn_model_kind(m), kname);
    } else if (o.kind == K_UNET) {
        st = tmd_nn_build_unet(ctx, (int)o.base, 6, (uint64_t)o.seed, &m);
    } else if (o.kind == K_CLS) {
        st = tmd_nn_build_classifier(ctx, (int)o.patch, (int)o.base, TMD_PATCH_NLABELS, (uint64_t)o.seed, &m);
    } else {
        st = tmd_nn_build_autoencoder(ctx, (int)o.patch, (int)o.base, (int)o.latent, (uint64_t)o.seed, &m);
    }
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;
    if (o.kind != K_UNET) o.patch = tmd_nn_model_input_size(m);

    int R = ctx->nranks, r = ctx->rank;
    long b0 = o.batch * r / R, b1 = o.batch * (r + 1) / R, nloc = b1 - b0, cap = (o.batch + R - 1) / R;
    int S = o.kind == K_UNET ? (int)o.tile : (int)o.patch;
    long per = o.kind == K_UNET ? 1 : o.per_tile; /* network samples per example */
    size_t px_per = (size_t)S * S;
    tmd_nn_adam opt = {(float)o.lr, 0.9f, 0.999f, 1e-8f, (float)o.wd};
    st = tmd_nn_trainer_create(ctx, m, comm, (int)(cap * per), S, S, &opt, &t);
    if (!st) st = tmd_calloc(ctx, (void **)&img, (size_t)cap * per * px_per, sizeof(float), "training images");
    if (!st) st = tmd_calloc(ctx, (void **)&cls, (size_t)cap * per * px_per, 1, "training classes");
    if (!st) st = tmd_calloc(ctx, (void **)&labels, (size_t)cap * per + 1, sizeof(int), "training labels");
    if (!st) st = tmd_calloc(ctx, (void **)&tmp, (size_t)per * px_per + 16, sizeof(float), "training scratch");
    if (!st && o.kind == K_AE) st = tmd_calloc(ctx, (void **)&target, (size_t)cap * per * px_per, sizeof(float), "targets");
    if (!st && o.resume && !o.eval) st = load_adam(ctx, t, adam_path, &start);
    st = tmd_agree(ctx, comm, st);
    if (st) goto cleanup;

    /* class weights for the U-Net: background pixels dominate; weight each class by
     * (f_background / f_class)^0.5 measured on 16 training tiles, clipped to [1, 8] */
    float cw[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    if (o.kind == K_UNET) {
        double cnt[6] = {0};
        for (long e = r; e < 16 && !st; e += R) {
            st = make_example(ctx, &o, 0, 1000000000L + e, img, cls, labels, tmp);
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
             o.kind == K_UNET ? "tile" : "patch", S, R, o.px, 100 * o.px_jitter);

    if (o.eval) {
        /* validation of an existing model only (the figures in docs/models.md) */
        val_result ev;
        st = validate(ctx, comm, &o, m, &ev);
        if (!st) {
            tmd_info(ctx, "evaluation of %s on %ld held-out examples (seed %ld + 7919*1000003): accuracy %.4f, "
                     "atom-pixel F1 %.4f, mean F1 %.4f, MSE %.6f", o.out, o.val_n, o.seed, ev.acc, ev.f1_atoms,
                     ev.f1_mean, ev.loss);
            if (o.kind == K_UNET)
                tmd_info(ctx, "atoms: F1 %.4f (tp %ld fp %ld fn %ld), species of matched atoms %.4f", ev.atom_f1,
                         ev.atoms[0], ev.atoms[1], ev.atoms[2], ev.atom_species);
            int nc = o.kind == K_UNET ? 6 : o.kind == K_CLS ? 8 : 0;
            for (int a = 0; a < nc; a++) {
                char line[256];
                int l = 0;
                for (int b = 0; b < nc; b++) l += snprintf(line + l, sizeof line - l, " %9ld", ev.conf[a][b]);
                tmd_info(ctx, "  truth %d:%s", a, line);
            }
        }
        goto cleanup;
    }
    tmd_progress prog;
    tmd_progress_begin(&prog, ctx, "training", (double)(o.steps - start), "steps");
    double ema = -1, t0 = tmd_now();
    val_result vr;
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
            st = make_example(ctx, &o, 0, e, img + k * per * px_per, cls + k * per * px_per, labels + k * per, tmp);
        }
        if (!st && o.kind == K_CLS)
            for (long j = 0; j < nloc * per; j++) cls[j] = (uint8_t)labels[j];
        if (!st && o.kind == K_AE) memcpy(target, img, sizeof(float) * nloc * per * px_per);
        st = agree_step(ctx, comm, st, &sig);
        if (st) break;
        double loss = 0;
        st = tmd_nn_trainer_step(t, (int)(nloc * per), (int)(o.batch * per), (int64_t)b0 * per, (uint64_t)step, img,
                                 o.kind == K_AE ? NULL : cls, target, &loss);
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
            if ((st = validate(ctx, comm, &o, m, &vr))) break;
            have_val = 1;
            if (o.kind == K_UNET)
                tmd_info(ctx, "validation at step %ld: pixel accuracy %.4f, atom-pixel F1 %.4f, mean class F1 %.4f; "
                         "atoms: F1 %.4f (tp %ld fp %ld fn %ld), species of matched %.4f", done, vr.acc, vr.f1_atoms,
                         vr.f1_mean, vr.atom_f1, vr.atoms[0], vr.atoms[1], vr.atoms[2], vr.atom_species);
            else if (o.kind == K_CLS)
                tmd_info(ctx, "validation at step %ld: accuracy %.4f, mean F1 %.4f", done, vr.acc, vr.f1_mean);
            else tmd_info(ctx, "validation at step %ld: reconstruction MSE %.5f", done, vr.loss);
            if (o.kind != K_AE && last) {
                int nc = o.kind == K_UNET ? 6 : 8;
                tmd_info(ctx, "confusion matrix (rows truth, columns predicted):");
                for (int a = 0; a < nc; a++) {
                    char line[256];
                    int l = 0;
                    for (int b = 0; b < nc; b++) l += snprintf(line + l, sizeof line - l, " %9ld", vr.conf[a][b]);
                    tmd_info(ctx, "  %d:%s", a, line);
                }
            }
        }
        if ((o.ckpt_every && done % o.ckpt_every == 0) || last || stop || pause) {
            free(prov);
            prov = NULL;
            size_t plen = 4096 + strlen(cmdline);
            prov = malloc(plen);
            if (!prov) { st = TMD_FAIL(ctx, TMD_ERR_NOMEM, "provenance"); break; }
            snprintf(prov, plen,
                     "{\"command\": \"%s\", \"kind\": \"%s\", \"tmdflow_version\": \"%s\", \"train_seed\": %ld, "
                     "\"validation_seed\": %lu, \"steps_done\": %ld, \"steps\": %ld, \"global_batch\": %ld, "
                     "\"size\": %d, \"nominal_pixel_size\": %.4f, \"pixel_jitter\": %.3f, \"ranks\": %d, "
                     "\"class_weights\": [%.3f, %.3f, %.3f, %.3f, %.3f, %.3f], \"train_loss_avg\": %.5f, "
                     "\"validation\": {\"examples\": %ld, \"at_step\": %ld, \"accuracy\": %.5f, "
                     "\"atom_pixel_f1\": %.5f, \"mean_f1\": %.5f, \"mse\": %.6f, \"atom_f1\": %.5f, \"atom_species\": %.5f}, "
                     "\"input\": \"1 channel, image normalised by tmd_sim_normalise (0.5/99.9 percentiles -> 0..1)\"}",
                     cmdline, kname, TMD_VERSION, o.seed, (unsigned long)((uint64_t)o.seed + 7919u * 1000003u), done,
                     o.steps, o.batch * per, S, o.px, o.px_jitter, R, cw[0], cw[1], cw[2], cw[3], cw[4], cw[5], ema,
                     o.val_n * (o.kind == K_UNET ? 1 : o.per_tile), have_val ? done : 0, vr.acc, vr.f1_atoms,
                     vr.f1_mean, vr.loss, vr.atom_f1, vr.atom_species);
            if (r == 0) {
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
