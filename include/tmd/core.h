/* tmd/core.h — status codes, the run context, errors, rank agreement, logging,
 * progress and timing. Every other module builds on this one.
 *
 * Role: a library that runs on many MPI ranks must never exit() and must never leave a
 * rank waiting in a collective that another rank will not reach. Every function that can
 * fail returns a tmd_status (0 = ok, < 0 = error) and records a message in the context it
 * was given. Before any collective step the ranks call tmd_agree(): if any rank failed,
 * every rank leaves with the same code and the failing rank's message.
 *
 * Usage:
 *     tmd_ctx ctx;
 *     tmd_ctx_init(&ctx, comm);                       // rank, size, log level
 *     tmd_status st = do_my_part(&ctx, ...);          // may call TMD_FAIL(&ctx, ...)
 *     st = tmd_agree(&ctx, comm, st);                 // collective: all ranks now agree
 *     if (st) { if (ctx.rank == 0) tmd_error_print(&ctx); return st; }
 *
 *     static tmd_status read_header(tmd_ctx *ctx, const char *path) {
 *         if (!ok) return TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: expected ..., found ...", path);
 *     }
 *
 * Ownership: the context owns nothing that needs freeing. It is not thread-safe; give each
 * thread its own. The communicator passed to tmd_ctx_init is only read (rank and size).
 */
#ifndef TMD_CORE_H
#define TMD_CORE_H

#include <mpi.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#ifndef TMD_VERSION
#define TMD_VERSION "0.1.0"
#endif

typedef int tmd_status;
enum {
    TMD_OK = 0,
    TMD_ERR_IO = -1,          /* a file could not be opened, read or written */
    TMD_ERR_FORMAT = -2,      /* a file's contents are not what was expected */
    TMD_ERR_CONFIG = -3,      /* a configuration key or value is wrong */
    TMD_ERR_NOMEM = -4,       /* allocation failed */
    TMD_ERR_MPI = -5,         /* an MPI call failed */
    TMD_ERR_ARG = -6,         /* a caller passed an invalid argument */
    TMD_ERR_RANGE = -7,       /* a value (size, index, parameter) is out of range */
    TMD_ERR_INTERRUPTED = -8, /* a signal asked the run to stop (checkpoint kept) */
    TMD_ERR_EXISTS = -9,      /* the output exists and --force was not given */
    TMD_ERR_NOLATTICE = -10,  /* the image shows no crystal lattice */
    TMD_ERR_INTERNAL = -11    /* a bug: an invariant did not hold */
};

/* Name of a status code, e.g. "format error". */
const char *tmd_status_name(tmd_status st);

enum { TMD_LOG_QUIET = 0, TMD_LOG_INFO = 1, TMD_LOG_DEBUG = 2 };

#define TMD_ERRMSG_MAX 1024

typedef struct tmd_ctx {
    int rank;               /* rank in the communicator given to tmd_ctx_init */
    int nranks;             /* size of that communicator */
    int log_level;          /* TMD_LOG_* */
    int log_all_ranks;      /* 1: every rank logs (prefixed); 0: rank 0 only */
    int progress_tty;       /* 1: redraw progress in place (stderr is a terminal) */
    double t_start;         /* MPI_Wtime() at init, for log timestamps */
    /* Set asynchronously by a signal handler owned by main (may be NULL). Long loops poll
     * it through tmd_interrupted() and stop at the next tile boundary. */
    volatile sig_atomic_t *stop_flag;
    /* The last error recorded on this rank (or received from the failing rank). */
    tmd_status err_code;
    int err_rank;           /* rank where the error was first recorded */
    int err_line;
    char err_file[64];
    char err_msg[TMD_ERRMSG_MAX];
} tmd_ctx;

/* Fills rank/size from comm, log level from $TMDFLOW_LOG (quiet|info|debug, default info),
 * progress_tty from isatty(stderr). Not collective. */
void tmd_ctx_init(tmd_ctx *ctx, MPI_Comm comm);

/* Records an error (code, printf-style message, source location) in ctx and returns code.
 * Use through TMD_FAIL so the location is filled in. A later error does not overwrite an
 * earlier one unless the earlier one was cleared with tmd_error_clear: the first cause is
 * what the user needs to see. */
tmd_status tmd_fail_at(tmd_ctx *ctx, tmd_status code, const char *file, int line,
                       const char *fmt, ...) __attribute__((format(printf, 5, 6)));
#define TMD_FAIL(ctx, code, ...) tmd_fail_at((ctx), (code), __FILE__, __LINE__, __VA_ARGS__)

/* Propagate: if (st) return st; */
#define TMD_CHECK(expr) do { tmd_status tmd_check_st_ = (expr); if (tmd_check_st_) return tmd_check_st_; } while (0)

void tmd_error_clear(tmd_ctx *ctx);

/* Prints "tmdflow: error: <message>" (with rank and source location at debug level) to
 * stderr. Call on one rank after tmd_agree. */
void tmd_error_print(const tmd_ctx *ctx);

/* Collective over comm. Every rank passes its local status; the lowest-numbered failing
 * rank's code and message are broadcast so that every rank returns the same error and
 * holds the same message. Returns TMD_OK only if every rank passed TMD_OK. Also folds in
 * the stop flag: if any rank was asked to stop, every rank returns TMD_ERR_INTERRUPTED. */
tmd_status tmd_agree(tmd_ctx *ctx, MPI_Comm comm, tmd_status local);

/* Checks an MPI return code; records a message naming the call on failure. */
tmd_status tmd_mpi_check(tmd_ctx *ctx, int mpi_rc, const char *what, const char *file, int line);
#define TMD_MPI(ctx, call) tmd_mpi_check((ctx), (call), #call, __FILE__, __LINE__)

/* 1 if the stop flag is set (a signal arrived). Cheap; poll between tiles. */
static inline int tmd_interrupted(const tmd_ctx *ctx)
{
    return ctx->stop_flag && *ctx->stop_flag;
}

/* Allocation that records TMD_ERR_NOMEM with the size and purpose on failure. The memory is
 * zeroed; free with free(). */
tmd_status tmd_calloc(tmd_ctx *ctx, void **out, size_t count, size_t size, const char *what);
/* count*size with overflow check: returns TMD_ERR_RANGE (recorded) if it overflows size_t. */
tmd_status tmd_mul_size(tmd_ctx *ctx, size_t a, size_t b, size_t *out, const char *what);

/* Union-find over int64 indices, for merging components (atom graphs, density regions).
 * parent[i] == i marks a root; the smaller index always becomes the root, so the labels do
 * not depend on the order of the unions (and so not on the rank count). Path halving. */
int64_t tmd_uf_find(int64_t *parent, int64_t i);
void tmd_uf_union(int64_t *parent, int64_t a, int64_t b);

/* qsort comparator for int64_t, and the index of `key` in a sorted array of n values (-1 if
 * absent): the sort-unique-search idiom that maps global labels to local indices. */
int tmd_i64_compare(const void *a, const void *b);
int64_t tmd_i64_find_sorted(const int64_t *sorted, int64_t n, int64_t key);

/* ---- logging ---------------------------------------------------------------------- */

/* printf-style line to stderr with elapsed time "[  12.3s] ", if level <= ctx->log_level and
 * this rank logs (rank 0, or all ranks when log_all_ranks). */
void tmd_log(const tmd_ctx *ctx, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
#define tmd_info(ctx, ...) tmd_log((ctx), TMD_LOG_INFO, __VA_ARGS__)
#define tmd_debug(ctx, ...) tmd_log((ctx), TMD_LOG_DEBUG, __VA_ARGS__)

/* Progress of a long stage: rate and ETA. On a terminal the line is redrawn in place at most
 * 5 times a second; in a batch log a plain line is written at most every `interval_s`
 * seconds (default 30, $TMDFLOW_PROGRESS_INTERVAL). Only on ranks that log. */
typedef struct tmd_progress {
    const tmd_ctx *ctx;
    char label[48];
    char unit[16];
    double total;           /* units of work in all (e.g. tiles, frames, steps) */
    double done;
    double t_begin, t_last_print;
    double interval_s;
} tmd_progress;

void tmd_progress_begin(tmd_progress *p, const tmd_ctx *ctx, const char *label, double total, const char *unit);
/* done = units completed so far (as this rank estimates the global count). */
void tmd_progress_update(tmd_progress *p, double done);
/* Prints the final line with the count last given to tmd_progress_update. */
void tmd_progress_end(tmd_progress *p);

/* Wall time in seconds (MPI_Wtime). */
double tmd_now(void);

/* Peak resident set size of this process, bytes (from getrusage). */
int64_t tmd_peak_rss_bytes(void);

#ifdef __cplusplus
}
#endif
#endif
