/* Typed configuration keys (see tmd/config.h). The key table is the single source of
 * truth: defaults, ranges, parsing, the config attribute and docs/configuration.md. */
#include "tmd/config.h"

#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef enum { KEY_INT, KEY_DOUBLE, KEY_BOOL, KEY_STRING } key_type;

typedef struct {
    const char *name;
    const char *section;
    key_type type;
    size_t offset;
    double min, max;      /* for numbers */
    const char *def;      /* default, as text */
    const char *doc;
} key_desc;

#define OFF(f) offsetof(tmd_config, f)
static const key_desc KEYS[] = {
    {"tile", "decomposition", KEY_INT, OFF(tile), 64, 8192, "384",
     "Tile edge in pixels at the nominal scale. Fixes the global tile grid (never the rank count)."},
    {"halo", "decomposition", KEY_INT, OFF(halo), 0, 1024, "96",
     "Overlap on each side of a tile, pixels at the nominal scale. Results never depend on the rank count; with 96 and background_sigma = 0 they also do not depend on the tile size (48 changed ~1 atom in 800 at tile edges; the background cells follow the tile grid)."},
    {"frames_per_tile", "decomposition", KEY_INT, OFF(frames_per_tile), 1, 100000, "1",
     "Frames per tile along the time axis of a stack."},
    {"pixel_size", "scale", KEY_DOUBLE, OFF(pixel_size), 0, 10, "0",
     "Angstrom per input pixel (same as --pixel-size); 0 = the input's own calibration (pixel_size_from_file), else measured from the lattice."},
    {"pixel_size_from_file", "scale", KEY_BOOL, OFF(pixel_size_from_file), 0, 1, "1",
     "Without pixel_size, take the input's calibration (TIFF resolution tags or ImageJ metadata, Velox or Berkeley EMD metadata, a pixel_size attribute) unless the lattice found puts it outside every TMD's lattice constant (then measured, with a warning). 0 = ignore it and measure: how the benchmarks test the measured pixel size on simulated files, which carry the true one."},
    {"nominal_pixel_size", "scale", KEY_DOUBLE, OFF(nominal_pixel_size), 0.03, 0.5, "0.12",
     "Angstrom per pixel at which the models work; input is resampled to it."},
    {"background_sigma", "normalise", KEY_DOUBLE, OFF(background_sigma), 0, 1000, "10",
     "Angstrom; Gaussian scale of the smooth background (a local least-squares plane, so ramps are removed up to the image edges) subtracted before the global levels; 0 = off. About three lattice periods: an image that is not background-subtracted (a thickness or contamination ramp) gives the same columns as one that is. The shipped models were trained without it; on held-out simulations (whose background is smooth) it changes detection F1 by less than 0.002 (docs/accuracy.md)."},
    {"clip_low", "normalise", KEY_DOUBLE, OFF(clip_low), 0, 50, "0.5",
     "Percentile of the global intensity histogram mapped to 0."},
    {"clip_high", "normalise", KEY_DOUBLE, OFF(clip_high), 50, 100, "99.9",
     "Percentile of the global intensity histogram mapped to 1."},
    {"unet_model", "models", KEY_STRING, OFF(unet_model), 0, 0, "unet.h5",
     "U-Net model file (searched in $TMDFLOW_MODELS and inputs/models/ if not a path)."},
    {"classifier_model", "models", KEY_STRING, OFF(classifier_model), 0, 0, "classifier.h5",
     "Atom-patch classifier model file (`tmdflow train classifier`); not read by `tmdflow run`, whose "
     "species come from the fitted contrast model and the U-Net (docs/models.md)."},
    {"autoencoder_model", "models", KEY_STRING, OFF(autoencoder_model), 0, 0, "autoencoder.h5",
     "Autoencoder model file."},
    {"blas_threads", "models", KEY_INT, OFF(blas_threads), 1, 256, "1",
     "OpenBLAS threads per rank."},
    {"atom_threshold", "atoms", KEY_DOUBLE, OFF(atom_threshold), 0.01, 0.99, "0.5",
     "Minimum column probability (1 - background) at an atom's peak."},
    {"min_atom_separation", "atoms", KEY_DOUBLE, OFF(min_atom_separation), 0.1, 5, "1.0",
     "Angstrom; peaks closer than this are one column."},
    {"gaussian_refine", "atoms", KEY_BOOL, OFF(gaussian_refine), 0, 1, "1",
     "Refine column centres by a 2-D Gaussian fit where it converges."},
    {"atom_significance", "atoms", KEY_DOUBLE, OFF(atom_significance), 0, 100, "3",
     "Minimum significance (z-score) of a column's fitted amplitude against the local noise in the image; peaks of the column probability without image evidence (vacuum, amorphous noise) are dropped. 0 = off."},
    {"atom_weak_significance", "atoms", KEY_DOUBLE, OFF(atom_weak_significance), -100, 100, "-2",
     "A column below atom_significance is kept when it sits at bond length from two significant columns (a dim single chalcogen), unless it is an empty site between them: a dip (z below this value: the probe tails of the neighbours raise the ring around an empty site) that is also deep (see atom_weak_contrast)."},
    {"atom_weak_contrast", "atoms", KEY_DOUBLE, OFF(atom_weak_contrast), -10, 10, "-0.1",
     "With atom_weak_significance: a dip is an empty site if its fitted amplitude is below this times the median amplitude of its significant neighbours (a single S beside W dips by ~0.01-0.05 of a W column, an empty site between Mo/W columns by ~0.06-0.3)."},
    {"atom_weak_rounds", "atoms", KEY_INT, OFF(atom_weak_rounds), 1, 8, "2",
     "Rounds of the neighbour rule of atom_weak_significance: in round 1 a column below atom_significance needs two significant neighbours at bond length; in each further round columns accepted before count too, and one bond partner plus two columns of its own sublattice (at the lattice constant) suffice, if the column is as bright as 0.35 of the candidates of its sublattice around it — so a dim patch (contamination, low dose) is accepted from its significant rim inwards, while an empty site in bright lattice is not. The rule reads 2 bonds per round around a column and the halo grows to cover it (at 0.12 A/px the default 2 rounds keep the 592-px U-Net window; at 0.175 A/px it grows to 600)."},
    {"atom_weak_threshold", "atoms", KEY_DOUBLE, OFF(atom_weak_threshold), 0.01, 0.99, "0.2",
     "Peaks of the column probability between this and atom_threshold are columns only by the neighbour rule (see atom_weak_rounds), never on their own significance, and only if their amplitude reaches 0.35 of the median of the candidates of their own sublattice around them (an empty site in bright lattice does not; a column in a dim patch does): at low dose and under contamination the U-Net is less sure of dim columns inside the lattice, and the lattice vouches for them. Equal to atom_threshold (or above): off."},
    {"constraint", "classify", KEY_BOOL, OFF(constraint), 0, 1, "1",
     "Sublattice constraint: metals only on A sites, chalcogens only on B sites."},
    {"classify_band_tiles", "classify", KEY_INT, OFF(classify_band_tiles), 0, 4096, "4",
     "Mosaics: the atoms are not kept in memory after the tile pass; classification works on chunks of this many tiles square (with ghosts from the neighbouring tiles) and the result is written in pieces, so memory per rank is set by the tile, not the image. The same result as 0 (all of a rank's atoms at once, kept in memory)."},
    {"instability_threshold", "dynamics", KEY_DOUBLE, OFF(instability_threshold), -100, 100, "2.0",
     "Instability z-score above which a site is unstable."},
    {"density_bin_px", "dynamics", KEY_INT, OFF(density_bin_px), 1, 4096, "16",
     "Bin of the coarse density maps, input pixels."},
    {"density_sigma", "dynamics", KEY_DOUBLE, OFF(density_sigma), 0.1, 1000, "8",
     "Angstrom; Gaussian kernel width of the density maps."},
    {"region_threshold", "dynamics", KEY_DOUBLE, OFF(region_threshold), 0, 1e6, "0.5",
     "Unstable-site density (sites per nm^2) above which a bin belongs to a defect-rich region."},
    {"min_region_bins", "dynamics", KEY_INT, OFF(min_region_bins), 1, 1000000, "4",
     "Smallest defect-rich region kept, in bins."},
    {"save_maps", "output", KEY_BOOL, OFF(save_maps), 0, 1, "0",
     "Write the segmentation class map /segmentation/classes."},
    {"save_features", "output", KEY_BOOL, OFF(save_features), 0, 1, "1",
     "Write the autoencoder features /features/latent."},
};
#undef OFF
#define NKEYS (sizeof KEYS / sizeof KEYS[0])

static const key_desc *find_key(const char *name)
{
    for (size_t i = 0; i < NKEYS; i++)
        if (!strcmp(KEYS[i].name, name)) return &KEYS[i];
    return NULL;
}

int tmd_config_has_key(const char *key) { return find_key(key) != NULL; }

static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 63 || lb > 63) return 99;
    size_t d[64][64];
    for (size_t i = 0; i <= la; i++) d[i][0] = i;
    for (size_t j = 0; j <= lb; j++) d[0][j] = j;
    for (size_t i = 1; i <= la; i++)
        for (size_t j = 1; j <= lb; j++) {
            size_t c = d[i - 1][j - 1] + (tolower((unsigned char)a[i - 1]) != tolower((unsigned char)b[j - 1]));
            if (d[i - 1][j] + 1 < c) c = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < c) c = d[i][j - 1] + 1;
            d[i][j] = c;
        }
    return d[la][lb];
}

static const char *closest_key(const char *name)
{
    const char *best = KEYS[0].name;
    size_t bd = (size_t)-1;
    for (size_t i = 0; i < NKEYS; i++) {
        size_t d = edit_distance(name, KEYS[i].name);
        /* a key that contains the typed word is a strong hint too */
        if (strstr(KEYS[i].name, name) && strlen(name) >= 3) d = d < 2 ? d : 2;
        if (d < bd) { bd = d; best = KEYS[i].name; }
    }
    return best;
}

static tmd_status set_value(tmd_ctx *ctx, tmd_config *cfg, const key_desc *k, const char *value, const char *origin)
{
    char *p = (char *)cfg + k->offset;
    while (isspace((unsigned char)*value)) value++;
    size_t len = strlen(value);
    while (len && isspace((unsigned char)value[len - 1])) len--;
    char buf[TMD_PATH_MAX];
    if (len >= sizeof buf)
        return TMD_FAIL(ctx, TMD_ERR_CONFIG, "%s: key '%s': value is too long (%zu characters, at most %zu)", origin,
                        k->name, len, sizeof buf - 1);
    memcpy(buf, value, len);
    buf[len] = 0;
    switch (k->type) {
    case KEY_STRING:
        if (len == 0) return TMD_FAIL(ctx, TMD_ERR_CONFIG, "%s: key '%s': expected a file name, got nothing", origin, k->name);
        /* The value must survive the trip through the result file's `config` attribute
         * (INI text read back by inih): no line breaks or other control characters, and no
         * ';' that inih would take for the start of a comment (first, or after a blank). */
        for (size_t i = 0; i < len; i++) {
            unsigned char c = (unsigned char)buf[i];
            if ((c < 0x20 && c != '\t') || c == 0x7f)
                return TMD_FAIL(ctx, TMD_ERR_CONFIG,
                                "%s: key '%s': the value contains a control character (byte 0x%02x at position %zu)",
                                origin, k->name, c, i);
            if (c == ';' && (i == 0 || buf[i - 1] == ' ' || buf[i - 1] == '\t'))
                return TMD_FAIL(ctx, TMD_ERR_CONFIG,
                                "%s: key '%s': '%s' has a ';' %s, which INI files read as the start of a comment",
                                origin, k->name, buf, i == 0 ? "at the start" : "after a blank");
        }
        memcpy(p, buf, len + 1);
        return TMD_OK;
    case KEY_BOOL: {
        int v;
        if (!strcmp(buf, "1") || !strcasecmp(buf, "true") || !strcasecmp(buf, "yes") || !strcasecmp(buf, "on")) v = 1;
        else if (!strcmp(buf, "0") || !strcasecmp(buf, "false") || !strcasecmp(buf, "no") || !strcasecmp(buf, "off")) v = 0;
        else return TMD_FAIL(ctx, TMD_ERR_CONFIG, "%s: key '%s': expected 0 or 1 (true/false), got '%s'", origin, k->name, buf);
        *(int *)p = v;
        return TMD_OK;
    }
    case KEY_INT: {
        char *end;
        errno = 0;
        long v = strtol(buf, &end, 10);
        if (len == 0 || *end || errno)
            return TMD_FAIL(ctx, TMD_ERR_CONFIG, "%s: key '%s': expected an integer, got '%s'", origin, k->name, buf);
        if (v < k->min || v > k->max)
            return TMD_FAIL(ctx, TMD_ERR_CONFIG, "%s: key '%s': %ld is out of range, expected %g to %g", origin, k->name, v,
                            k->min, k->max);
        *(int *)p = (int)v;
        return TMD_OK;
    }
    case KEY_DOUBLE: {
        char *end;
        errno = 0;
        double v = strtod(buf, &end);
        if (len == 0 || *end || errno || !isfinite(v))
            return TMD_FAIL(ctx, TMD_ERR_CONFIG, "%s: key '%s': expected a finite number, got '%s'", origin, k->name, buf);
        if (v < k->min || v > k->max)
            return TMD_FAIL(ctx, TMD_ERR_CONFIG, "%s: key '%s': %g is out of range, expected %g to %g", origin, k->name, v,
                            k->min, k->max);
        *(double *)p = v;
        return TMD_OK;
    }
    }
    return TMD_FAIL(ctx, TMD_ERR_INTERNAL, "key '%s' has no type", k->name);
}

tmd_status tmd_config_set(tmd_ctx *ctx, tmd_config *cfg, const char *key, const char *value, const char *origin)
{
    const key_desc *k = find_key(key);
    if (!k)
        return TMD_FAIL(ctx, TMD_ERR_CONFIG, "%s: unknown configuration key '%s' (did you mean '%s'?)", origin, key,
                        closest_key(key));
    return set_value(ctx, cfg, k, value, origin);
}

void tmd_config_defaults(tmd_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    tmd_ctx quiet;
    memset(&quiet, 0, sizeof quiet);
    for (size_t i = 0; i < NKEYS; i++) set_value(&quiet, cfg, &KEYS[i], KEYS[i].def, "defaults");
}

tmd_status tmd_config_set_kv(tmd_ctx *ctx, tmd_config *cfg, const char *kv, const char *origin)
{
    const char *eq = strchr(kv, '=');
    if (!eq || eq == kv)
        return TMD_FAIL(ctx, TMD_ERR_CONFIG, "%s: expected key=value, got '%s'", origin, kv);
    char key[128];
    size_t n = (size_t)(eq - kv);
    if (n >= sizeof key) return TMD_FAIL(ctx, TMD_ERR_CONFIG, "%s: key in '%s' is too long", origin, kv);
    memcpy(key, kv, n);
    key[n] = 0;
    while (n && isspace((unsigned char)key[n - 1])) key[--n] = 0;
    return tmd_config_set(ctx, cfg, key, eq + 1, origin);
}

/* Debian's inih is built without line numbers in the handler, so the reader below counts
 * lines itself: messages must say where in the file a bad key is. */
typedef struct {
    tmd_ctx *ctx;
    tmd_config *cfg;
    const char *origin;
    tmd_status st;
    int lineno;
    FILE *file;          /* source when reading a file */
    const char *text;    /* source when reading a string */
    char *line;          /* the current physical line (getline buffer), malloc'd */
    size_t line_cap;
} ini_state;

static int config_ini_line(void *user, const char *section, const char *name, const char *value);

/* inih (as Debian builds it) reads lines into a fixed buffer of INI_MAX_LINE = 200 bytes and
 * would parse the rest of a longer line as a line of its own — a long model path could then
 * smuggle in another key. So this reader takes whole physical lines itself: a line that fits
 * goes to inih; a longer one ("key = value", a comment, or a section header) is handled here
 * the way inih would, and inih is handed an empty line in its place. Lines with NUL bytes are
 * refused (not a text file). */
static char *config_read_line(char *str, int num, void *stream)
{
    ini_state *s = stream;
    if (num < 2 || s->st) return NULL;
    size_t n = 0;
    if (s->file) {
        ssize_t got = getline(&s->line, &s->line_cap, s->file);
        if (got < 0) return NULL;
        n = (size_t)got;
    } else {
        if (!*s->text) return NULL;
        while (s->text[n] && s->text[n] != '\n') n++;
        if (s->text[n] == '\n') n++;
        if (n + 1 > s->line_cap) {
            char *grown = realloc(s->line, n + 1);
            if (!grown) {
                s->st = TMD_FAIL(s->ctx, TMD_ERR_NOMEM, "%s: out of memory reading a line", s->origin);
                return NULL;
            }
            s->line = grown;
            s->line_cap = n + 1;
        }
        memcpy(s->line, s->text, n);
        s->line[n] = 0;
        s->text += n;
    }
    s->lineno++;
    if (strlen(s->line) != n) {
        s->st = TMD_FAIL(s->ctx, TMD_ERR_CONFIG, "%s:%d: the line contains a NUL byte (is this a text file?)", s->origin,
                         s->lineno);
        return NULL;
    }
    if (n < (size_t)num - 1 || (n == (size_t)num - 1 && s->line[n - 1] == '\n')) {
        memcpy(str, s->line, n + 1);
        return str;
    }
    /* A long line: strip blanks and the newline. */
    char *b = s->line, *e = s->line + n;
    while (e > b && isspace((unsigned char)e[-1])) *--e = 0;
    while (isspace((unsigned char)*b)) b++;
    if (*b && *b != ';' && *b != '#' && *b != '[') {
        /* key = value (inih accepts '=' or ':'), an inline comment starts at a ';' after a blank */
        char *d = b + strcspn(b, "=:");
        if (!*d) {
            s->st = TMD_FAIL(s->ctx, TMD_ERR_CONFIG, "%s:%d: cannot parse this line (expected key = value or [section])",
                             s->origin, s->lineno);
            return NULL;
        }
        *d = 0;
        char *v = d + 1;
        for (char *c = v; *c; c++)
            if (*c == ';' && (c == v || isspace((unsigned char)c[-1]))) {
                *c = 0;
                break;
            }
        char *ke = d;
        while (ke > b && isspace((unsigned char)ke[-1])) *--ke = 0;
        if (!config_ini_line(s, "", b, v)) return NULL;
    }
    str[0] = '\n';
    str[1] = 0;
    return str;
}

static int config_ini_line(void *user, const char *section, const char *name, const char *value)
{
    ini_state *s = user;
    int lineno = s->lineno;
    (void)section;
    if (s->st) return 0;
    char where[TMD_PATH_MAX + 32];
    snprintf(where, sizeof where, "%s:%d", s->origin, lineno);
    if (!value) {
        s->st = TMD_FAIL(s->ctx, TMD_ERR_CONFIG, "%s: key '%s' has no value (expected key = value)", where, name);
        return 0;
    }
    s->st = tmd_config_set(s->ctx, s->cfg, name, value, where);
    return s->st ? 0 : 1;
}

tmd_status tmd_config_load_file(tmd_ctx *ctx, tmd_config *cfg, const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) return TMD_FAIL(ctx, TMD_ERR_IO, "cannot open configuration file %s: %s", path, strerror(errno));
    ini_state s = {ctx, cfg, path, TMD_OK, 0, f, NULL, NULL, 0};
    int rc = ini_parse_stream(config_read_line, &s, config_ini_line, &s);
    fclose(f);
    free(s.line);
    if (s.st) return s.st;
    if (rc > 0) return TMD_FAIL(ctx, TMD_ERR_CONFIG, "%s:%d: cannot parse this line (expected key = value or [section])", path, rc);
    if (rc < 0) return TMD_FAIL(ctx, TMD_ERR_IO, "cannot read configuration file %s", path);
    return TMD_OK;
}

tmd_status tmd_config_from_text(tmd_ctx *ctx, tmd_config *cfg, const char *text, const char *origin)
{
    ini_state s = {ctx, cfg, origin, TMD_OK, 0, NULL, text, NULL, 0};
    int rc = ini_parse_stream(config_read_line, &s, config_ini_line, &s);
    free(s.line);
    if (s.st) return s.st;
    if (rc > 0) return TMD_FAIL(ctx, TMD_ERR_CONFIG, "%s:%d: cannot parse this line (expected key = value)", origin, rc);
    return TMD_OK;
}

static void format_value(const tmd_config *cfg, const key_desc *k, char *out, size_t n)
{
    const char *p = (const char *)cfg + k->offset;
    switch (k->type) {
    case KEY_INT:
    case KEY_BOOL: snprintf(out, n, "%d", *(const int *)p); break;
    case KEY_DOUBLE: snprintf(out, n, "%.17g", *(const double *)p); break;
    case KEY_STRING: snprintf(out, n, "%s", p); break;
    }
}

tmd_status tmd_config_to_text(tmd_ctx *ctx, const tmd_config *cfg, char **text)
{
    size_t cap = 256 + NKEYS * (TMD_PATH_MAX + 64), len = 0;
    char *buf;
    TMD_CHECK(tmd_calloc(ctx, (void **)&buf, cap, 1, "configuration text"));
    const char *section = "";
    for (size_t i = 0; i < NKEYS; i++) {
        if (strcmp(section, KEYS[i].section)) {
            section = KEYS[i].section;
            len += (size_t)snprintf(buf + len, cap - len, "%s[%s]\n", len ? "\n" : "", section);
        }
        char v[TMD_PATH_MAX];
        format_value(cfg, &KEYS[i], v, sizeof v);
        len += (size_t)snprintf(buf + len, cap - len, "%s = %s\n", KEYS[i].name, v);
    }
    *text = buf;
    return TMD_OK;
}

tmd_status tmd_config_write_markdown(tmd_ctx *ctx, const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f) return TMD_FAIL(ctx, TMD_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    fprintf(f, "# Configuration keys\n\n"
               "Generated from the key table in `src/core/config.c` (regenerate with\n"
               "`TMDFLOW_UPDATE_DOCS=1 ctest -R test_core_np1` in the build directory).\n"
               "Keys go in an INI file given with `--config FILE` (any `[section]`; sections only group\n"
               "keys) or on the command line as `key=value` after the input; the command line wins.\n"
               "Every value is type- and range-checked; an unknown key is an error that names the\n"
               "closest known key. The full effective configuration is stored in the result file's\n"
               "`config` attribute.\n\n"
               "| key | section | type | default | range | meaning |\n|---|---|---|---|---|---|\n");
    static const char *tn[] = {"int", "float", "bool", "string"};
    for (size_t i = 0; i < NKEYS; i++) {
        const key_desc *k = &KEYS[i];
        char range[64] = "";
        if (k->type == KEY_INT || k->type == KEY_DOUBLE) snprintf(range, sizeof range, "%g – %g", k->min, k->max);
        else if (k->type == KEY_BOOL) snprintf(range, sizeof range, "0, 1");
        fprintf(f, "| `%s` | %s | %s | `%s` | %s | %s |\n", k->name, k->section, tn[k->type], k->def, range, k->doc);
    }
    if (fclose(f) != 0) return TMD_FAIL(ctx, TMD_ERR_IO, "cannot write %s", path);
    return TMD_OK;
}

tmd_status tmd_config_find_model(tmd_ctx *ctx, const char *name, char *out, size_t out_size)
{
    char tried[4][TMD_PATH_MAX + 64];
    int nt = 0;
    const char *env = getenv("TMDFLOW_MODELS");
    const char *dirs[3] = {env, TMD_SOURCE_DIR "/inputs/models", NULL};
    snprintf(tried[nt++], sizeof tried[0], "%s", name);
    if (access(name, R_OK) == 0) {
        snprintf(out, out_size, "%s", name);
        return TMD_OK;
    }
    if (!strchr(name, '/')) {
        for (int i = 0; i < 2; i++) {
            if (!dirs[i]) continue;
            snprintf(tried[nt], sizeof tried[0], "%s/%s", dirs[i], name);
            if (access(tried[nt], R_OK) == 0) {
                snprintf(out, out_size, "%s", tried[nt]);
                return TMD_OK;
            }
            nt++;
        }
    }
    return TMD_FAIL(ctx, TMD_ERR_IO, "model file '%s' not found (tried %s%s%s%s%s; set $TMDFLOW_MODELS or give a path)",
                    name, tried[0], nt > 1 ? ", " : "", nt > 1 ? tried[1] : "", nt > 2 ? ", " : "", nt > 2 ? tried[2] : "");
}
