/* benchmarks/mosaic/atom_memory.c — memory per atom held by one rank after the tile pass.
 *
 *   atom_memory N [N ...]      (one rank; build: benchmarks/mosaic/atom_memory.sh BUILD_DIR)
 *
 * A rank's memory grows with the atoms it owns, not with the pixels it reads: the atom table
 * (filled during the tile pass) and the classification stage's neighbour graph, which needs
 * every owned atom at once (sublattice components span tiles and ranks). This program
 * measures both without the U-Net: it fills an atom table with N columns of a synthetic
 * MoS2-like honeycomb (period 26.2 px, the 0.12 A/px mosaics' lattice; metal and chalcogen
 * columns with Z^1.7 contrast and 3 % noise, segmentation probabilities favouring the true
 * class) and runs tmd_classify on it, reading the resident-set peak (VmHWM, reset through
 * /proc/self/clear_refs before each step) around each step. It prints, per N:
 *   table_B_per_atom     resident growth of the table after N pushes (capacity doubling)
 *   classify_B_per_atom  peak during tmd_classify above the resident size before it
 * The numbers multiply the atoms a rank owns (about 3.4 per 1000 input pixels at 0.12 A/px,
 * divided by the rank count) to give its memory beyond the U-Net plan. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tmd/classify.h"
#include "tmd/table.h"

static long status_kib(const char *key)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    size_t k = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, key, k)) v = atol(line + k + 1);
    if (f) fclose(f);
    return v;
}

static int reset_peak(void)
{
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (!f) return -1;
    int ok = fputs("5", f) >= 0;
    return fclose(f) == 0 && ok ? 0 : -1;
}

/* deterministic uniform in [0, 1) */
static double urand(uint64_t *s)
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(*s >> 11) / 9007199254740992.0;
}

static double gauss(uint64_t *s)
{
    double u = urand(s) + 1e-12, v = urand(s);
    return sqrt(-2 * log(u)) * cos(2 * M_PI * v);
}

static int run_one(tmd_ctx *ctx, int64_t target)
{
    const double a = 26.2, rot = 0.3;
    tmd_lattice lat;
    memset(&lat, 0, sizeof lat);
    lat.a1[0] = a * cos(rot), lat.a1[1] = a * sin(rot);
    lat.a2[0] = a * cos(rot + M_PI / 3), lat.a2[1] = a * sin(rot + M_PI / 3);
    double det = lat.a1[0] * lat.a2[1] - lat.a1[1] * lat.a2[0];
    lat.g1[0] = lat.a2[1] / det, lat.g1[1] = -lat.a2[0] / det;
    lat.g2[0] = -lat.a1[1] / det, lat.g2[1] = lat.a1[0] / det;
    lat.period_px = a, lat.rotation_deg = rot * 180 / M_PI, lat.strength = 50, lat.n_peaks = 6, lat.valid = 1;
    /* square of side L holding ~target columns (two per cell of area sqrt(3)/2 a^2) */
    double L = sqrt((double)target * (sqrt(3.0) / 2 * a * a) / 2);
    int64_t H = (int64_t)ceil(L), W = H;
    tmd_atom_table t, ghosts;
    tmd_defect_table defects;
    tmd_atom_table_init(&t, TMD_NCLASSES);
    tmd_atom_table_init(&ghosts, TMD_NCLASSES);
    tmd_defect_table_init(&defects);
    uint64_t seed = 12345;
    long rss0 = status_kib("VmRSS:");
    reset_peak();
    /* lattice points covering the square: solve for the index range from the corners */
    int64_t span = (int64_t)ceil(2 * L / a) + 4;
    const double lm = pow(42, 1.7), lx = 2 * pow(16, 1.7), scale = 1.0 / pow(74, 1.7);
    tmd_status st = TMD_OK;
    for (int64_t i = -span; i <= span && !st; i++)
        for (int64_t j = -span; j <= span && !st; j++)
            for (int s = 0; s < 2 && !st; s++) {
                double x = i * lat.a1[0] + j * lat.a2[0] + s * (lat.a1[0] + lat.a2[0]) / 3;
                double y = i * lat.a1[1] + j * lat.a2[1] + s * (lat.a1[1] + lat.a2[1]) / 3;
                if (x < 2 || y < 2 || x > (double)W - 3 || y > (double)H - 3) continue;
                int64_t k;
                if ((st = tmd_atom_table_push(ctx, &t, &k))) break;
                t.frame[k] = 0, t.x[k] = x, t.y[k] = y;
                double I = (s == 0 ? lm : lx) * scale;
                t.intensity[k] = (float)(I * (1 + 0.03 * gauss(&seed)));
                float *p = t.prob + k * TMD_NCLASSES;
                for (int c = 0; c < TMD_NCLASSES; c++) p[c] = 0.02f;
                p[s == 0 ? 1 : 3] = 0.9f;
            }
    long rss1 = status_kib("VmRSS:"), hwm1 = status_kib("VmHWM:");
    int64_t n = t.n;
    if (st) return st;
    tmd_classify_opts o;
    tmd_classify_opts_default(&o);
    o.pixel_size = 0.12;
    tmd_classify_report rep;
    reset_peak();
    long before = status_kib("VmRSS:");
    st = tmd_classify(ctx, MPI_COMM_SELF, &o, 1, &lat, NULL, H, W, &t, &ghosts, &defects, &rep);
    long hwm2 = status_kib("VmHWM:"), after = status_kib("VmRSS:");
    if (st) return st;
    printf("%lld,%lld,%.1f,%.1f,%.1f,%.1f,%lld\n", (long long)n, (long long)t.cap,
           (double)(hwm1 - rss0) * 1024 / (double)n, (double)(rss1 - rss0) * 1024 / (double)n,
           (double)(hwm2 - before) * 1024 / (double)n, (double)(after - rss0) * 1024 / (double)n,
           (long long)rep.n_components);
    fflush(stdout);
    tmd_atom_table_free(&t);
    tmd_atom_table_free(&ghosts);
    tmd_defect_table_free(&defects);
    return TMD_OK;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    tmd_ctx ctx;
    tmd_ctx_init(&ctx, MPI_COMM_SELF);
    int rc = 0;
    if (reset_peak() != 0) fprintf(stderr, "atom_memory: cannot reset the peak (/proc/self/clear_refs); peaks are cumulative\n");
    printf("atoms,capacity,table_peak_B_per_atom,table_B_per_atom,classify_B_per_atom,after_classify_B_per_atom,components\n");
    for (int i = 1; i < argc && !rc; i++) {
        tmd_status st = run_one(&ctx, atoll(argv[i]));
        if (st) {
            fprintf(stderr, "atom_memory: %s\n", ctx.err_msg);
            rc = 1;
        }
    }
    MPI_Finalize();
    return rc;
}
