/* Errors, rank agreement, logging, progress, timing (see tmd/core.h). */
#include "tmd/core.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

const char *tmd_status_name(tmd_status st)
{
    switch (st) {
    case TMD_OK: return "ok";
    case TMD_ERR_IO: return "I/O error";
    case TMD_ERR_FORMAT: return "format error";
    case TMD_ERR_CONFIG: return "configuration error";
    case TMD_ERR_NOMEM: return "out of memory";
    case TMD_ERR_MPI: return "MPI error";
    case TMD_ERR_ARG: return "invalid argument";
    case TMD_ERR_RANGE: return "value out of range";
    case TMD_ERR_INTERRUPTED: return "interrupted";
    case TMD_ERR_EXISTS: return "output exists";
    case TMD_ERR_NOLATTICE: return "no lattice";
    case TMD_ERR_INTERNAL: return "internal error";
    default: return "unknown error";
    }
}

void tmd_ctx_init(tmd_ctx *ctx, MPI_Comm comm)
{
    memset(ctx, 0, sizeof *ctx);
    int inited = 0;
    MPI_Initialized(&inited);
    if (inited && comm != MPI_COMM_NULL) {
        MPI_Comm_rank(comm, &ctx->rank);
        MPI_Comm_size(comm, &ctx->nranks);
    } else {
        ctx->nranks = 1;
    }
    ctx->log_level = TMD_LOG_INFO;
    const char *lv = getenv("TMDFLOW_LOG");
    if (lv) {
        if (!strcmp(lv, "quiet")) ctx->log_level = TMD_LOG_QUIET;
        else if (!strcmp(lv, "debug")) ctx->log_level = TMD_LOG_DEBUG;
    }
    ctx->progress_tty = isatty(STDERR_FILENO);
    ctx->t_start = tmd_now();
    ctx->err_rank = -1;
}

tmd_status tmd_fail_at(tmd_ctx *ctx, tmd_status code, const char *file, int line, const char *fmt, ...)
{
    if (!ctx) return code;
    if (ctx->err_code != TMD_OK) return code; /* keep the first cause */
    ctx->err_code = code;
    ctx->err_rank = ctx->rank;
    ctx->err_line = line;
    const char *base = strrchr(file, '/');
    snprintf(ctx->err_file, sizeof ctx->err_file, "%s", base ? base + 1 : file);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx->err_msg, sizeof ctx->err_msg, fmt, ap);
    va_end(ap);
    if (ctx->log_level >= TMD_LOG_DEBUG)
        fprintf(stderr, "tmdflow: [rank %d] recorded %s at %s:%d: %s\n", ctx->rank, tmd_status_name(code),
                ctx->err_file, line, ctx->err_msg);
    return code;
}

void tmd_error_clear(tmd_ctx *ctx)
{
    ctx->err_code = TMD_OK;
    ctx->err_rank = -1;
    ctx->err_line = 0;
    ctx->err_file[0] = 0;
    ctx->err_msg[0] = 0;
}

void tmd_error_print(const tmd_ctx *ctx)
{
    if (ctx->err_code == TMD_OK) return;
    const char *msg = ctx->err_msg[0] ? ctx->err_msg : tmd_status_name(ctx->err_code);
    if (ctx->err_code == TMD_ERR_INTERRUPTED) {
        fprintf(stderr, "tmdflow: stopped: %s\n", msg);
    } else if (ctx->nranks > 1 && ctx->err_rank >= 0) {
        fprintf(stderr, "tmdflow: error (rank %d): %s\n", ctx->err_rank, msg);
    } else {
        fprintf(stderr, "tmdflow: error: %s\n", msg);
    }
    if (ctx->log_level >= TMD_LOG_DEBUG && ctx->err_file[0])
        fprintf(stderr, "tmdflow:   (%s, recorded at %s:%d)\n", tmd_status_name(ctx->err_code), ctx->err_file,
                ctx->err_line);
    fflush(stderr);
}

tmd_status tmd_agree(tmd_ctx *ctx, MPI_Comm comm, tmd_status local)
{
    if (local == TMD_OK && tmd_interrupted(ctx)) local = TMD_ERR_INTERRUPTED;
    if (local != TMD_OK && ctx->err_code == TMD_OK) {
        if (local == TMD_ERR_INTERRUPTED)
            TMD_FAIL(ctx, local, "a stop signal arrived; completed work was kept");
        else
            TMD_FAIL(ctx, local, "%s (no message recorded)", tmd_status_name(local));
    }
    int size = 1;
    MPI_Comm_size(comm, &size);
    if (size == 1) return local;
    /* Lowest failing rank wins: real errors take precedence over interruptions so that a
     * signal arriving during a failure does not hide the cause. */
    int me;
    MPI_Comm_rank(comm, &me);
    int key[2], out[2];
    key[0] = local == TMD_OK ? 2 : (local == TMD_ERR_INTERRUPTED ? 1 : 0);
    key[1] = me;
    MPI_Allreduce(key, out, 1, MPI_2INT, MPI_MINLOC, comm);
    if (out[0] == 2) return TMD_OK;
    int root = out[1];
    struct {
        int code, rank, line;
        char file[64];
        char msg[TMD_ERRMSG_MAX];
    } packet;
    memset(&packet, 0, sizeof packet);
    if (me == root) {
        packet.code = ctx->err_code;
        packet.rank = ctx->err_rank >= 0 ? ctx->err_rank : me;
        packet.line = ctx->err_line;
        memcpy(packet.file, ctx->err_file, sizeof packet.file);
        memcpy(packet.msg, ctx->err_msg, sizeof packet.msg);
    }
    MPI_Bcast(&packet, (int)sizeof packet, MPI_BYTE, root, comm);
    ctx->err_code = packet.code;
    ctx->err_rank = packet.rank;
    ctx->err_line = packet.line;
    memcpy(ctx->err_file, packet.file, sizeof ctx->err_file);
    memcpy(ctx->err_msg, packet.msg, sizeof ctx->err_msg);
    return packet.code;
}

tmd_status tmd_mpi_check(tmd_ctx *ctx, int mpi_rc, const char *what, const char *file, int line)
{
    if (mpi_rc == MPI_SUCCESS) return TMD_OK;
    char s[MPI_MAX_ERROR_STRING];
    int n = 0;
    MPI_Error_string(mpi_rc, s, &n);
    return tmd_fail_at(ctx, TMD_ERR_MPI, file, line, "MPI call failed: %s: %s", what, s);
}

tmd_status tmd_mul_size(tmd_ctx *ctx, size_t a, size_t b, size_t *out, const char *what)
{
    if (a != 0 && b > SIZE_MAX / a)
        return TMD_FAIL(ctx, TMD_ERR_RANGE, "%s: size %zu x %zu overflows", what, a, b);
    *out = a * b;
    return TMD_OK;
}

tmd_status tmd_calloc(tmd_ctx *ctx, void **out, size_t count, size_t size, const char *what)
{
    size_t bytes = 0;
    *out = NULL;
    TMD_CHECK(tmd_mul_size(ctx, count, size, &bytes, what));
    if (bytes == 0) bytes = 1;
    void *p = calloc(1, bytes);
    if (!p)
        return TMD_FAIL(ctx, TMD_ERR_NOMEM, "out of memory allocating %.1f MiB for %s", bytes / 1048576.0, what);
    *out = p;
    return TMD_OK;
}

int64_t tmd_uf_find(int64_t *parent, int64_t i)
{
    while (parent[i] != i) {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    return i;
}

void tmd_uf_union(int64_t *parent, int64_t a, int64_t b)
{
    a = tmd_uf_find(parent, a);
    b = tmd_uf_find(parent, b);
    if (a == b) return;
    if (a < b) parent[b] = a;
    else parent[a] = b;
}

int tmd_i64_compare(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

int64_t tmd_i64_find_sorted(const int64_t *sorted, int64_t n, int64_t key)
{
    int64_t lo = 0, hi = n - 1;
    while (lo <= hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (sorted[mid] == key) return mid;
        if (sorted[mid] < key) lo = mid + 1;
        else hi = mid - 1;
    }
    return -1;
}

/* ---- logging ---------------------------------------------------------------------- */

static int logs_here(const tmd_ctx *ctx) { return ctx->rank == 0 || ctx->log_all_ranks; }

void tmd_log(const tmd_ctx *ctx, int level, const char *fmt, ...)
{
    if (level > ctx->log_level || !logs_here(ctx)) return;
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (ctx->log_all_ranks)
        fprintf(stderr, "[%8.1fs r%d] %s\n", tmd_now() - ctx->t_start, ctx->rank, buf);
    else
        fprintf(stderr, "[%8.1fs] %s\n", tmd_now() - ctx->t_start, buf);
    fflush(stderr);
}

double tmd_now(void) { return MPI_Wtime(); }

int64_t tmd_peak_rss_bytes(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return -1;
    return (int64_t)ru.ru_maxrss * 1024; /* Linux reports KiB */
}

static void fmt_duration(char *out, size_t n, double s)
{
    if (s < 0 || s > 1e7) { snprintf(out, n, "?"); return; }
    int t = (int)(s + 0.5);
    if (t >= 3600) snprintf(out, n, "%dh%02dm", t / 3600, (t / 60) % 60);
    else if (t >= 60) snprintf(out, n, "%dm%02ds", t / 60, t % 60);
    else snprintf(out, n, "%ds", t);
}

static void progress_print(tmd_progress *p, int final)
{
    double now = tmd_now(), el = now - p->t_begin;
    double rate = el > 0 ? p->done / el : 0;
    double eta = rate > 0 ? (p->total - p->done) / rate : -1;
    char eta_s[32], el_s[32];
    fmt_duration(eta_s, sizeof eta_s, eta);
    fmt_duration(el_s, sizeof el_s, el);
    double pct = p->total > 0 ? 100.0 * p->done / p->total : 100.0;
    if (p->ctx->progress_tty) {
        fprintf(stderr, "\r[%8.1fs] %s: %.0f/%.0f %s (%5.1f%%) %.2f %s/s ETA %s   ", now - p->ctx->t_start, p->label,
                p->done, p->total, p->unit, pct, rate, p->unit, final ? "0s" : eta_s);
        if (final) fputc('\n', stderr);
    } else {
        fprintf(stderr, "[%8.1fs] %s: %.0f/%.0f %s (%.1f%%) %.2f %s/s elapsed %s ETA %s\n", now - p->ctx->t_start,
                p->label, p->done, p->total, p->unit, pct, rate, p->unit, el_s, final ? "0s" : eta_s);
    }
    fflush(stderr);
    p->t_last_print = now;
}

void tmd_progress_begin(tmd_progress *p, const tmd_ctx *ctx, const char *label, double total, const char *unit)
{
    memset(p, 0, sizeof *p);
    p->ctx = ctx;
    snprintf(p->label, sizeof p->label, "%s", label);
    snprintf(p->unit, sizeof p->unit, "%s", unit);
    p->total = total;
    p->t_begin = p->t_last_print = tmd_now();
    p->interval_s = 30.0;
    const char *iv = getenv("TMDFLOW_PROGRESS_INTERVAL");
    if (iv && atof(iv) > 0) p->interval_s = atof(iv);
}

void tmd_progress_update(tmd_progress *p, double done)
{
    p->done = done;
    if (!p->ctx || p->ctx->log_level < TMD_LOG_INFO || !logs_here(p->ctx)) return;
    double now = tmd_now();
    double every = p->ctx->progress_tty ? 0.2 : p->interval_s;
    if (now - p->t_last_print >= every) progress_print(p, 0);
}

void tmd_progress_end(tmd_progress *p)
{
    if (!p->ctx || p->ctx->log_level < TMD_LOG_INFO || !logs_here(p->ctx)) return;
    /* the count as last updated: a run stopped early must not claim 100% */
    progress_print(p, 1);
}
