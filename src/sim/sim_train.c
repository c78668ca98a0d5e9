/* Training data straight from the simulator (no files, no MPI): normalised tiles with class
 * masks, and atom-centred patches with species labels. Also the robust normalisation shared
 * with the pipeline. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sim_internal.h"

/* k-th smallest of a[0..n) (quickselect, a is permuted). */
static float kth(float *a, int64_t n, int64_t k)
{
    int64_t lo = 0, hi = n - 1;
    while (lo < hi) {
        float pivot = a[lo + (hi - lo) / 2];
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (a[i] < pivot) i++;
            while (a[j] > pivot) j--;
            if (i <= j) {
                float t = a[i];
                a[i] = a[j];
                a[j] = t;
                i++;
                j--;
            }
        }
        if (k <= j) hi = j;
        else if (k >= i) lo = i;
        else return a[k];
    }
    return a[k];
}

void tmd_sim_normalise_apply(float *img, int64_t n, float lo, float hi)
{
    if (!(hi > lo)) {
        for (int64_t i = 0; i < n; i++) img[i] = 0;
        return;
    }
    float s = 1.0f / (hi - lo);
    for (int64_t i = 0; i < n; i++) {
        float v = (img[i] - lo) * s;
        img[i] = v < 0 ? 0 : v > 1 ? 1 : v;
    }
}

void tmd_sim_normalise_pct(float *img, int64_t n, double pct_lo, double pct_hi, float *plo, float *phi)
{
    if (n <= 0) return;
    float *tmp = malloc((size_t)n * sizeof *tmp);
    float lo, hi;
    int64_t klo = (int64_t)floor(pct_lo / 100.0 * (double)(n - 1) + 0.5);
    int64_t khi = (int64_t)floor(pct_hi / 100.0 * (double)(n - 1) + 0.5);
    if (klo < 0) klo = 0;
    if (khi > n - 1) khi = n - 1;
    if (tmp) {
        memcpy(tmp, img, (size_t)n * sizeof *tmp);
        lo = kth(tmp, n, klo);
        hi = kth(tmp, n, khi);
        free(tmp);
    } else { /* no memory for a copy: fall back to min / max */
        lo = hi = img[0];
        for (int64_t i = 1; i < n; i++) {
            if (img[i] < lo) lo = img[i];
            if (img[i] > hi) hi = img[i];
        }
    }
    if (plo) *plo = lo;
    if (phi) *phi = hi;
    tmd_sim_normalise_apply(img, n, lo, hi);
}

void tmd_sim_normalise(float *img, int64_t n) { tmd_sim_normalise_pct(img, n, 0.5, 99.9, NULL, NULL); }

/* Renders one training image of size x size with truth; the caller frees truth tables. */
static tmd_status render_example(tmd_ctx *ctx, uint64_t seed, int64_t index, int size, double px, float *image,
                                 uint8_t *classes, sim_truth *truth)
{
    if (size < 16 || size > 4096) return TMD_FAIL(ctx, TMD_ERR_ARG, "training tile size %d: expected 16 to 4096", size);
    if (!(px >= 0.02 && px <= 1.0)) return TMD_FAIL(ctx, TMD_ERR_ARG, "training pixel size %g Angstrom: expected 0.02 to 1", px);
    tmd_sim_params p;
    tmd_sim_params_draw(&p, seed, index);
    p.pixel_size = px;
    p.height = p.width = size;
    p.frames = 1;
    tmd_status st = tmd_sim_params_finish(ctx, &p);
    if (st) return st;
    sim_world w;
    st = tmd_sim_world_init(ctx, &w, &p);
    sim_site_list scratch = {0};
    if (!st) {
        if (classes) memset(classes, 0, (size_t)size * (size_t)size);
        st = tmd_sim_render_rows(ctx, &w, 0, 0, size, image, classes, truth, 0, &scratch);
    }
    free(scratch.s);
    tmd_sim_world_free(&w);
    if (!st) tmd_sim_normalise(image, (int64_t)size * size);
    return st;
}

tmd_status tmd_sim_training_tile(tmd_ctx *ctx, uint64_t seed, int64_t index, int size, double px, float *image,
                                 uint8_t *classes)
{
    if (!image) return TMD_FAIL(ctx, TMD_ERR_ARG, "tmd_sim_training_tile: image buffer is NULL");
    return render_example(ctx, seed, index, size, px, image, classes, NULL);
}

static int patch_label(int species)
{
    switch (species) {
    case TMD_SP_MO: return TMD_PATCH_MO;
    case TMD_SP_W: return TMD_PATCH_W;
    case TMD_SP_S2: return TMD_PATCH_S2;
    case TMD_SP_SSE: return TMD_PATCH_SSE;
    case TMD_SP_SE2: return TMD_PATCH_SE2;
    case TMD_SP_S: return TMD_PATCH_S;
    case TMD_SP_SE: return TMD_PATCH_SE;
    default: return TMD_PATCH_EMPTY;
    }
}

tmd_status tmd_sim_training_patches(tmd_ctx *ctx, uint64_t seed, int64_t index, int n, int patch, double px,
                                    float *patches, int *labels)
{
    if (n < 1 || patch < 8 || patch > 128 || !patches || !labels)
        return TMD_FAIL(ctx, TMD_ERR_ARG, "tmd_sim_training_patches: n = %d (>= 1), patch = %d (8..128), buffers %s", n, patch,
                        patches && labels ? "given" : "missing");
    int size = 4 * patch;
    if (size < 128) size = 128;
    if (size > 512) size = 512;
    float *img = NULL;
    double *cx = NULL, *cy = NULL;
    int *lab = NULL;
    tmd_status st = tmd_calloc(ctx, (void **)&img, (size_t)size * (size_t)size, sizeof(float), "training patch tile");
    if (st) return st;
    sim_truth truth;
    memset(&truth, 0, sizeof truth);
    int64_t nc = 0;
    /* a tile with no usable column (all vacuum) is replaced by the next attempt */
    for (int attempt = 0; attempt < 16 && nc == 0; attempt++) {
        tmd_atom_table_free(&truth.atoms);
        tmd_defect_table_free(&truth.defects);
        tmd_atom_table_init(&truth.atoms, 0);
        tmd_defect_table_init(&truth.defects);
        uint64_t s2 = attempt ? sim_mix(seed ^ sim_mix((uint64_t)attempt)) : seed;
        st = render_example(ctx, s2, index, size, px, img, NULL, &truth);
        if (st) goto cleanup;
        int64_t cap = truth.atoms.n + truth.defects.n + 1;
        free(cx);
        free(cy);
        free(lab);
        cx = malloc((size_t)cap * sizeof *cx);
        cy = malloc((size_t)cap * sizeof *cy);
        lab = malloc((size_t)cap * sizeof *lab);
        if (!cx || !cy || !lab) {
            st = TMD_FAIL(ctx, TMD_ERR_NOMEM, "out of memory for patch candidates");
            goto cleanup;
        }
        double lim0 = patch / 2 + 2, lim1 = size - patch / 2 - 3;
        nc = 0;
        for (int64_t i = 0; i < truth.atoms.n; i++) {
            double x = truth.atoms.x[i], y = truth.atoms.y[i];
            if (x < lim0 || x > lim1 || y < lim0 || y > lim1) continue;
            cx[nc] = x;
            cy[nc] = y;
            lab[nc++] = patch_label(truth.atoms.species[i]);
        }
        for (int64_t i = 0; i < truth.defects.n; i++) {
            if (truth.defects.type[i] == TMD_DEF_VX) continue; /* the S / Se atom is the patch */
            double x = truth.defects.x[i], y = truth.defects.y[i];
            if (x < lim0 || x > lim1 || y < lim0 || y > lim1) continue;
            cx[nc] = x;
            cy[nc] = y;
            lab[nc++] = TMD_PATCH_EMPTY;
        }
    }
    if (nc == 0) {
        st = TMD_FAIL(ctx, TMD_ERR_INTERNAL, "no column in 16 simulated tiles for seed %llu index %lld",
                      (unsigned long long)seed, (long long)index);
        goto cleanup;
    }
    int64_t count[TMD_PATCH_NLABELS] = {0};
    for (int64_t i = 0; i < nc; i++) count[lab[i]]++;
    int present[TMD_PATCH_NLABELS], npresent = 0;
    for (int k = 0; k < TMD_PATCH_NLABELS; k++)
        if (count[k]) present[npresent++] = k;
    uint64_t key = sim_mix(seed ^ sim_mix((uint64_t)index + 0x5bd1e995ULL));
    for (int q = 0; q < n; q++) {
        int64_t pick;
        if (sim_unif(key, SP_PATCH, (uint64_t)q, 0) < 0.5) {
            pick = (int64_t)(sim_hash(key, SP_PATCH, (uint64_t)q, 1) % (uint64_t)nc);
        } else {
            int want = present[sim_hash(key, SP_PATCH, (uint64_t)q, 2) % (uint64_t)npresent];
            int64_t r = (int64_t)(sim_hash(key, SP_PATCH, (uint64_t)q, 3) % (uint64_t)count[want]);
            pick = -1;
            for (int64_t i = 0; i < nc; i++)
                if (lab[i] == want && r-- == 0) {
                    pick = i;
                    break;
                }
        }
        double ox = 2 * sim_unif(key, SP_PATCH, (uint64_t)q, 4) - 1, oy = 2 * sim_unif(key, SP_PATCH, (uint64_t)q, 5) - 1;
        int64_t x0 = (int64_t)floor(cx[pick] + ox + 0.5) - patch / 2, y0 = (int64_t)floor(cy[pick] + oy + 0.5) - patch / 2;
        float *dst = patches + (size_t)q * (size_t)patch * (size_t)patch;
        for (int v = 0; v < patch; v++)
            for (int u = 0; u < patch; u++) {
                int64_t xx = x0 + u, yy = y0 + v;
                xx = xx < 0 ? 0 : xx >= size ? size - 1 : xx;
                yy = yy < 0 ? 0 : yy >= size ? size - 1 : yy;
                dst[v * patch + u] = img[yy * size + xx];
            }
        labels[q] = lab[pick];
    }
cleanup:
    free(img);
    free(cx);
    free(cy);
    free(lab);
    tmd_atom_table_free(&truth.atoms);
    tmd_defect_table_free(&truth.defects);
    free(truth.site_state);
    free(truth.site_jump);
    return st;
}
