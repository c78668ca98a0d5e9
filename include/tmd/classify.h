/* tmd/classify.h — sublattices, species and vacancies of the atoms of a TMD monolayer.
 *
 * Role: intensity alone cannot name a column (Mo ~ SSe); the honeycomb's two sublattices can.
 * This stage (1) builds the neighbour graph of the atoms (bond = a / sqrt(3) from the frame's
 * lattice, owned atoms plus ghosts from neighbouring ranks), (2) 2-colours it — an atom's
 * colour is the coset of the honeycomb it sits on, read from the directions of its bonds
 * (+delta or -delta against the frame lattice), and components are the atoms joined by bonds
 * consistent with that colouring, so grain boundaries, holes and 5-7 rings split components
 * rather than break them; components spanning ranks are merged by a union-find over the
 * ranks' boundary atoms (same on every rank), (3) decides per component which colour is the
 * metal sublattice by comparing, for both assignments, the likelihood of the two colours'
 * intensity histograms under a physical Z^n contrast model — metal levels {Mo, W}, chalcogen
 * levels {S2, SSe, Se2, S, Se} of a random alloy Mo(1-x)W(x)S(2(1-y))Se(2y) with single-chalcogen
 * vacancies, a common scale and exponent n (1.4-2.1, prior 1.6 +- 0.2; Krivanek et al.
 * 2010 measured 1.64 at 60 kV), fitted by EM (each composition free at a BIC cost of
 * 0.5 ln(columns), or held at a pure end member), with the
 * lattice constant through Vegard's law when the pixel size is known — plus, as a tie-breaker
 * only, the mean vote of the segmentation/classifier probabilities when present, (4) gives every atom species
 * probabilities (intensity posterior x classifier probabilities^0.5 when present; the level
 * variances widened by the local excess noise of the nearby metal columns), masks the
 * species its sublattice forbids when `constraint` is on and renormalises, (5) finds
 * vacancies: V_X = a B-site column classified S or Se, V_M / V_X2 = an A / B site of the
 * locally fitted lattice with no column, or with a column whose intensity fits "empty" — that
 * column is then removed from the table (drop_empty), so no site is both a vacancy and a column.
 * Nothing depends on a material the user states: the composition comes out of the fit.
 *
 * Usage (collective over comm; every rank calls with its own atoms, possibly none):
 *     tmd_classify_opts o; tmd_classify_opts_default(&o); o.constraint = cfg.constraint;
 *     // ghosts: tmd_ghost_exchange with distance >= tmd_classify_ghost_distance(&lat[f])
 *     tmd_classify_report rep;
 *     st = tmd_classify(ctx, comm, &o, nframes, lat, &own_box, height, width,
 *                       &atoms, &ghosts, &defects, &rep);
 *     // atoms.sublattice, .species filled; atoms.prob is now (n, TMD_SP_COUNT): the final
 *     // probabilities over species codes (column 0 = unknown/empty); defects appended; rows
 *     // judged empty removed (atoms.n may shrink; o.carry moves along).
 *     // rep.a_vegard: lattice constant of the fitted composition, for the pixel size.
 *
 * Inputs: atoms.frame, x, y, intensity (integrated column intensity with the background
 * removed: zero for an empty site — the contrast model has no offset), and atoms.prob with
 * nprob = TMD_NCLASSES (segmentation classes), TMD_SP_COUNT (classifier species probabilities
 * over codes 0..7) or anything else (ignored). lat[f] is frame f's lattice (same on every
 * rank). A vacancy belongs to the rank whose box holds its position (pixel rule of tmd/halo.h);
 * own == NULL means this rank owns everything. Ghost atoms are read only.
 * Results do not depend on the number of ranks when the ghost distance is at least
 * tmd_classify_ghost_distance(). Allocates internally and frees before returning.
 */
#ifndef TMD_CLASSIFY_H
#define TMD_CLASSIFY_H

#include "tmd/core.h"
#include "tmd/decomp.h"
#include "tmd/lattice.h"
#include "tmd/table.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tmd_classify_opts {
    int constraint;          /* 1: species forbidden by the sublattice are masked (default 1) */
    void *bands;             /* internal (banded classification, classify_internal.h); NULL */
    double bond_tol;         /* relative tolerance of a bond's length (default 0.35) */
    double bond_angle_tol;   /* tolerance of a bond's direction against the lattice's, degrees (default 25) */
    int min_fit_atoms;       /* components with fewer atoms use the frame's reference model (default 40) */
    double n_prior;          /* prior mean of the exponent of the contrast measure (default 1.85: pure
                                MoS2 / WSe2 at physical exponents 1.6-2.0 fit 1.64-2.28 on both
                                simulators, the measure running above the physical n with probe tails) */
    double n_prior_sd;       /* its standard deviation (default 0.25). For a pure compound the exponent is
                                not identifiable from the contrast: MoS2 at n and WSe2 at 1.24 n give the
                                same Mo/S2 = W/Se2 ratio and (n fitted continuously) the same likelihood,
                                so without a pixel size this prior decides: the twin nearer 1.85 wins
                                (MoS2 above a fitted n of 1.65, WSe2 below 2.05). The earlier 1.6 +- 0.2
                                named every WSe2 at n > 1.77 MoS2 (held-out seed 7004); 1.75 +- 0.25 every
                                extsim WSe2 at a physical n of 1.8 or more */
    double vote_weight;      /* weight of the segmentation/classifier vote, the mean per-atom log-odds
                                difference of the two colours (a tie-breaker: default 0.5) */
    double empty_prob;       /* a detected column whose posterior "empty" exceeds this is a vacancy (default
                                0.85: the atom finder's detection is evidence of a column, so only strong
                                contrast evidence overrules it. At 0.5, 11 real S2 columns of a contaminated
                                0.061 A/px image (held-out random5) were removed: detection F1 0.966; at 0.95
                                0.983. With the heavy-tailed noise (heavy_tail) an empty site's posterior is
                                lower (a dark S2 is plausible): at 0.95 the 12 sims of benchmarks/classify
                                kept true V_X2 sites at contrast ~0 (P 0.87-0.92) as S2, V_X2 F1 0.744; at
                                0.85 0.799, detection 0.9945 -> 0.9950, random5 0.9889 -> 0.9831). B sites
                                (and atoms of unknown sublattice) only: A sites use empty_prob_metal. A B
                                column whose argmax species is S or Se is a V_X2 already when P(empty) >
                                P(S) + P(Se): it is a vacancy either way, and this margin is for full
                                columns, not for the choice between V_X and V_X2 */
    double empty_prob_metal; /* the same on an A site (V_M; default 0.5: empty when more probable than a metal).
                                The metal levels are far from empty, so no dark-S2 ambiguity calls for a
                                margin: a detected column on an empty metal site is a scatterer or a
                                probe tail next to it, at 0.0-0.3 of the Mo level, and its P(empty) is
                                0.5-0.85 under the broad noise component; real metals sit at P < 0.05 (1 of
                                8 000 above 0.3 on the held-out blocks). 0.85 -> 0.5: V_M F1 0.880 -> 0.903
                                and 0.904 -> 0.923, metal accuracy 0.9987 -> 0.9989 and 1.0000 */
    double pixel_size;       /* Angstrom per pixel when known independently of the lattice (given by the
                                user), else 0. Then the measured lattice constant enters the fit through
                                Vegard's law (sd a_sd_rel): it tells S from Se where the contrast ratio
                                alone is ambiguous (MoS2 at n ~ 1.4 looks like WSe2 at n ~ 1.8) */
    /* Optional: contrast (same measure as atoms->intensity) at n arbitrary positions. When
     * set, every empty site the graph proposes is measured and classified with the fitted
     * levels: empty -> V_M / V_X2, a single chalcogen -> V_X, a full column -> dropped (a
     * column the atom finder missed). Not collective. */
    tmd_status (*measure)(tmd_ctx *ctx, void *user, int64_t n, const int32_t *frame, const double *x,
                          const double *y, float *out);
    void *measure_user;
    double a_sd_rel;         /* relative uncertainty of that lattice constant (default 0.0075: the FFT period
                                times the given pixel size was within +-0.8 % of the true a on the 12
                                held-out sims of benchmarks/classify, while the end members differ by up
                                to 4 %: MoS2 3.16, WS2 3.15, MoSe2 3.29, WSe2 3.28 A) */
    double local_radius;     /* local noise radius, bonds (default 4: about 20 metal columns): the robust
                                spread of the metal columns' residuals within it against the fitted Mo / W
                                levels, beyond what the model expects, is added to every level's variance
                                there (amorphous contamination is patchy); 0 = off */
    int drop_empty;          /* 1 (default): a detected column whose posterior "empty" exceeds empty_prob on
                                an A / B site is reported as V_M / V_X2 and removed from the atom table (a
                                site is empty or occupied, not both); 0: it stays, species unknown */
    int heavy_tail;          /* 1 (default): the contrast noise has a broad second component (share and
                                width fitted) besides the Gaussian core, so a contaminated column is not
                                named by its distance to the nearest level alone; 0: one Gaussian */
    float *carry;            /* optional (atoms->n) per-atom values moved along when rows are removed (the
                                pipeline's integrated intensity while atoms->intensity holds the contrast) */
    int xtalk;               /* 1 (default): per-image chalcogen cross-talk correction in metal alloys. The
                                fitted column amplitude of a chalcogen falls as its bonded metals brighten
                                (W against Mo: the neighbours' profile tails raise the fitted plane). After a
                                first classification, in frames whose fitted W fraction is in (0.05, 0.95),
                                the amplitude of every interior chalcogen column is regressed on N, the sum
                                of the contrasts of the A-site atoms 0.6-1.3 bond away (its bonded metals),
                                one slope c pooled within species groups (S with S2, Se with SSe, Se2),
                                trimmed at 3 robust sd; when c < 0, c N is subtracted from every chalcogen's
                                contrast (and from the contrast measured at an empty B site whose N exceeds
                                twice the median metal contrast) and the atoms are classified again. The
                                regression runs on integer histograms summed over ranks, so c does not
                                depend on the rank count. 0: one classification */
    double held_gate;        /* held-neighbour column contrast of the pipeline stage (tmd_stage_classify; a
                                caller's own `measure` here is not affected). Default 1.4; 0: never held
                                (the free measure only). Pass 1 measures every column with its six
                                neighbour places free (stage_classify.c). Per frame, the free place
                                amplitudes are compared with the pass-1 amplitudes of the atoms sitting at
                                those places: r = median free / held ratio over the brighter half of the
                                held ones, sd = robust sd of (free - r held). Where sd < held_gate x
                                sqrt(median LSQ variance of the free place amplitudes) (the place terms
                                are shot noise, not column-scale structure: low dose, little
                                contamination), each column (and each empty site measured for the
                                vacancies) is refitted at its pass-1 refined centre with [profile,
                                constant] free and the six places held at their atoms' pass-1 amplitudes
                                and centres (0 where no atom is); elsewhere the free measure stays. The
                                medians are taken on integer histograms summed over ranks, so the result
                                does not depend on the rank count or the streamed chunk size */
} tmd_classify_opts;

void tmd_classify_opts_default(tmd_classify_opts *o);

typedef struct tmd_classify_report {
    int64_t n_components;    /* global components with >= 2 atoms */
    int64_t n_isolated;      /* atoms with no bond (sublattice unknown) */
    int64_t n_conflicts;     /* bonds dropped as inconsistent with the 2-colouring */
    double n_exponent;       /* fitted exponent of the largest component (frame 0) */
    double x_w, y_se;        /* fitted composition of the largest component (frame 0) */
    double a_vegard;         /* lattice constant of that composition, Angstrom */
    double vegard_gap;       /* how sure that lattice constant is: the fit's score (log units) of that
                                composition minus the best score of any composition whose Vegard
                                constant differs by more than 1 % (a tie: MoS2 at n 1.75 against
                                W(S0.5Se1.5)2 at n 2.0 can differ by < 1 log unit at high noise) */
    double alt_exponent;     /* that best composition of a > 1 % different constant: its exponent */
    double alt_x_w, alt_y_se; /* and its composition (0 when there is none); for a pure compound, its
                                 contrast twin (MoS2 at n and WSe2 at 1.24 n fit alike) */
    double a_post;           /* the posterior mean of the lattice constant over the compositions fitted
                                (each weighted by exp(score - best)): what the pixel size is refined
                                with; = a_vegard when the composition is settled, between the
                                candidates' constants when they tie */
    int64_t n_vm, n_vx, n_vx2; /* vacancies found on this rank */
    int64_t n_dropped;       /* proposed empty sites whose contrast showed a column (this rank) */
    int64_t n_removed;       /* detected columns judged empty, reported as vacancies and removed (this rank) */
} tmd_classify_report;

/* Ghost distance (pixels) the pipeline must use for rank-independent results. */
double tmd_classify_ghost_distance(const tmd_lattice *lat);

/* Collective over comm (see above). nframes = global number of frames (lat has nframes
 * entries); height, width = frame size in pixels (vacancies are not looked for within half a
 * bond of the frame edge). rep may be NULL. */
tmd_status tmd_classify(tmd_ctx *ctx, MPI_Comm comm, const tmd_classify_opts *opt, int64_t nframes,
                        const tmd_lattice *lat, const tmd_box *own, int64_t height, int64_t width,
                        tmd_atom_table *atoms, const tmd_atom_table *ghosts, tmd_defect_table *defects,
                        tmd_classify_report *rep);

struct tmd_run;
/* Collective. The pipeline's "classify" stage (after the atoms): exchanges ghosts within
 * tmd_classify_ghost_distance of each rank's domain, runs tmd_classify on run->atoms with
 * the lattice of each frame and the `constraint` key, appends run->defects; when the pixel
 * size came from the lattice it is refined with the fitted composition (Vegard's law).
 * Without a measured lattice it logs that it is skipped.
 * Mosaics with a streamed atom table (run->stream, classify_band_tiles > 0: tmd/pipeline.h)
 * are classified chunk by chunk instead, with memory set by one chunk of B x B tiles: a
 * graph pass (contrast, bonds, colours, components per chunk, with ghosts read from the
 * neighbouring tiles' files), a merge of the chunks' components into global ones, the
 * histograms and the model fit of the global components, and an apply pass (tmd_classify
 * per chunk with the global components and models) whose rows go to per-tile files for the
 * write stage. Same /atoms and /defects as classify_band_tiles = 0 at any chunk size and rank
 * count (tests/cli/classify_bands.sh); design in src/classify/stage_classify.c. */
tmd_status tmd_stage_classify(tmd_ctx *ctx, struct tmd_run *run);

#ifdef __cplusplus
}
#endif
#endif
