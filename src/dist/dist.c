/* Data-parallel training over MPI (dist.h): the job, a few collectives, the parameter checksum and
 * the bucketed gradient all-reduce driven by the tape hook (core.h: cf_hook).
 *
 * Built without CF_MPI this is the one-process case: rank 0 of 1, collectives are identities, and
 * a reducer (which the trainer creates only for several ranks; tests create one to check the hook)
 * starts its buckets without communicating. */
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "cformer/core.h"
#include "cformer/dist.h"
#ifdef CF_MPI
#include <mpi.h>
#endif

static int g_rank = 0, g_size = 1;
static int g_quiet;       /* this rank's error is reported by another rank */

#ifdef CF_MPI
static int g_inited;      /* cf_dist_init called MPI_Init_thread */
static int g_finalized;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}
#endif

int cf_dist_mpi_built(void) {
#ifdef CF_MPI
    return 1;
#else
    return 0;
#endif
}

int cf_dist_init(int *argc, char ***argv) {
#ifdef CF_MPI
    int flag = 0;
    MPI_Initialized(&flag);
    if (!flag) {
        int provided = 0;
        if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
            return cf_set_error("MPI_Init_thread failed");
        g_inited = 1;
        if (provided < MPI_THREAD_FUNNELED)
            fprintf(stderr, "cformer: warning: the MPI library gives thread level %d, below MPI_THREAD_FUNNELED; "
                            "only the main thread calls MPI\n", provided);
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_size);
#else
    (void)argc;
    (void)argv;
#endif
    return 0;
}

void cf_dist_finalize(void) {
#ifdef CF_MPI
    if (g_inited && !g_finalized) MPI_Finalize();
    g_finalized = 1;
#endif
}

int cf_dist_rank(void) { return g_rank; }
int cf_dist_size(void) { return g_size; }

void cf_dist_abort(const char *fmt, ...) {
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "cformer: rank %d of %d: %s\n", g_rank, g_size, msg);
    fflush(stderr);
    fflush(stdout);
#ifdef CF_MPI
    int up = 0, down = 0;
    MPI_Initialized(&up);
    MPI_Finalized(&down);
    if (up && !down) MPI_Abort(MPI_COMM_WORLD, 1);
#endif
    exit(1);
}

int cf_dist_first_failed(int failed, int *n_failed) {
    int first = failed ? g_rank : INT_MAX, count = failed != 0;
#ifdef CF_MPI
    if (g_size > 1) {
        MPI_Allreduce(MPI_IN_PLACE, &first, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
        MPI_Allreduce(MPI_IN_PLACE, &count, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    }
#endif
    if (n_failed) *n_failed = count;
    return first == INT_MAX ? -1 : first;
}

int cf_dist_agree_error(int failed) {
    if (g_size == 1) return failed ? -1 : 0;
    int n = 0, first = cf_dist_first_failed(failed, &n);
    if (first < 0) return 0;
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", cf_error_msg());
    if (failed && n == g_size) {
        if (g_rank != 0) g_quiet = 1;                    /* every rank failed: rank 0 speaks for all */
    } else if (failed) {
        cf_set_error("rank %d of %d: %s", g_rank, g_size, msg);
    } else if (g_rank == 0) {
        cf_set_error("rank 0 of %d: stopping: rank %d%s failed (see its error)", g_size, first, n > 1 ? " and others" : "");
    } else {
        g_quiet = 1;
    }
    return -1;
}

void cf_dist_set_quiet(void) { g_quiet = 1; }
int  cf_dist_quiet(void) { return g_quiet; }

void cf_dist_sum_f64(double *x, int n) {
#ifdef CF_MPI
    if (g_size > 1) MPI_Allreduce(MPI_IN_PLACE, x, n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
#else
    (void)x;
    (void)n;
#endif
}

void cf_dist_max_f64(double *x, int n) {
#ifdef CF_MPI
    if (g_size > 1) MPI_Allreduce(MPI_IN_PLACE, x, n, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
#else
    (void)x;
    (void)n;
#endif
}

void cf_dist_bcast(void *buf, size_t bytes) {
#ifdef CF_MPI
    if (g_size > 1)
        for (size_t off = 0; off < bytes;) {
            size_t n = bytes - off < (size_t)1 << 30 ? bytes - off : (size_t)1 << 30;
            MPI_Bcast((char *)buf + off, (int)n, MPI_BYTE, 0, MPI_COMM_WORLD);
            off += n;
        }
#else
    (void)buf;
    (void)bytes;
#endif
}

void cf_dist_gather_f32(const float *send, float *recv, int64_t n) {
#ifdef CF_MPI
    if (g_size > 1) {
        CF_ASSERT(n <= INT_MAX, "cf_dist_gather_f32: %lld floats per rank (at most %d)", (long long)n, INT_MAX);
        MPI_Gather(send, (int)n, MPI_FLOAT, recv, (int)n, MPI_FLOAT, 0, MPI_COMM_WORLD);
        return;
    }
#endif
    if (recv != send) memcpy(recv, send, (size_t)n * sizeof(float));
}

/* ---- parameter checksum ------------------------------------------------------------------------- */
uint64_t cf_params_checksum(const cf_params *p) {
    const uint32_t *w = (const uint32_t *)p->values;
    uint64_t s = 0;
    /* a sum modulo 2^64 of mixed (index, bits) pairs: any single changed bit changes it, and the
     * order of the additions (threads) does not */
    #pragma omp parallel for reduction(+ : s) schedule(static)
    for (int64_t i = 0; i < p->numel; i++) s += cf_mix64(((uint64_t)i << 32) ^ w[i]);
    return s;
}

void cf_dist_check_params(const cf_params *p, int64_t step) {
    if (g_size <= 1) return;
#ifdef CF_MPI
    uint64_t mine = cf_params_checksum(p);
    uint64_t *all = cf_xmalloc(sizeof(uint64_t) * (size_t)g_size);
    MPI_Allgather(&mine, 1, MPI_UINT64_T, all, 1, MPI_UINT64_T, MPI_COMM_WORLD);
    int bad = 0;
    for (int r = 1; r < g_size; r++) bad += all[r] != all[0];
    if (!bad) { free(all); return; }
    if (g_rank == 0) {
        char list[1024];
        int n = 0;
        for (int r = 1; r < g_size && n < (int)sizeof list - 40; r++)
            if (all[r] != all[0])
                n += snprintf(list + n, sizeof list - (size_t)n, "%srank %d (%016llx)", n ? ", " : "", r,
                              (unsigned long long)all[r]);
        cf_dist_abort("step %lld: parameters differ across ranks: %s differ%s from rank 0 (%016llx); the ranks "
                      "no longer train one model (CF_MPI_CHECK_EVERY checks every k steps)",
                      (long long)step, list, bad == 1 ? "s" : "", (unsigned long long)all[0]);
    }
    /* rank 0 stops the job (one message); should it not manage to within a minute, stop from here */
    sleep(60);
    MPI_Abort(MPI_COMM_WORLD, 1);
    exit(1);
#else
    (void)p;
    (void)step;
#endif
}

/* ---- the gradient reducer ---------------------------------------------------------------------- */
struct cf_grad_sync {
    cf_hook    hook;            /* first member: ctx->hook points at the reducer */
    cf_params *p;
    const float *lo, *hi;       /* the gradient slab [lo, hi) */
    int        n_buckets;
    int64_t   *b_off, *b_len;   /* [n_buckets] slab elements of each bucket */
    int       *b_first, *b_last;/* [n_buckets] parameters [first, last] of each bucket */
    int       *bucket_of;       /* [p->n] */
    int       *reader;          /* [p->n] lowest tape index that read the parameter (INT_MAX: none) */
    int       *ready;           /* [n_buckets] a bucket may start once the node at this index has run */
    int       *order;           /* [n_buckets] buckets in starting order */
    int        next;            /* order[next] is the next bucket to start */
    int        planned;         /* order computed for this backward */
    int       *started;         /* [n_buckets] */
    int        open;            /* reductions started and not known to be complete */
    int        armed;
    double     mpi_s;           /* seconds inside MPI during this backward */
    void     (*probe)(void *arg, int bucket, int64_t off, int64_t len);
    void      *probe_arg;
#ifdef CF_MPI
    MPI_Request *req;           /* [n_buckets] */
#endif
};

size_t cf_grad_sync_default_bytes(void) {
    const char *e = getenv("CF_MPI_BUCKET_MB");
    double mb = e && *e ? atof(e) : 4.0;
    if (!(mb > 0)) mb = 4.0;
    return (size_t)(mb * 1048576.0);
}

int cf_grad_sync_buckets(const cf_grad_sync *s) { return s->n_buckets; }

/* the parameter whose slab range holds element e (offsets ascend; padding belongs to the one before) */
static int param_at(const cf_params *p, int64_t e) {
    int lo = 0, hi = p->n - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (p->offset[mid] <= e) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

/* slab parameter range [*a, *b] that tensor t's gradient covers; 0 when t's gradient is elsewhere */
static int slab_range(const cf_grad_sync *s, const cf_tensor *t, int *a, int *b) {
    if (!t || !t->grad || t->grad < s->lo || t->grad >= s->hi) return 0;
    int64_t e = t->grad - s->lo;
    *a = param_at(s->p, e);
    *b = param_at(s->p, e + (t->numel > 0 ? t->numel - 1 : 0));
    return 1;
}

static void on_read(cf_hook *h, int index, int n_in, cf_tensor *const *in) {
    cf_grad_sync *s = (cf_grad_sync *)h;
    for (int i = 0; i < n_in; i++) {
        int a, b;
        if (!slab_range(s, in[i], &a, &b)) continue;
        for (int k = a; k <= b; k++)
            if (index < s->reader[k]) s->reader[k] = index;
    }
}

/* the order buckets start in: by the index after which they are final, highest first (backward
 * walks down), ties by bucket. A function of the tape alone, which is the same on every rank, so
 * every rank starts the same reductions in the same order (as MPI requires). */
static int *sort_ready;
static int cmp_ready(const void *x, const void *y) {
    int a = *(const int *)x, b = *(const int *)y;
    if (sort_ready[a] != sort_ready[b]) return sort_ready[a] > sort_ready[b] ? -1 : 1;
    return a > b ? -1 : a < b;
}

static void plan(cf_grad_sync *s) {
    for (int b = 0; b < s->n_buckets; b++) {
        int r = INT_MAX;
        for (int k = s->b_first[b]; k <= s->b_last[b]; k++)
            if (s->reader[k] < r) r = s->reader[k];
        s->ready[b] = r;
        s->order[b] = b;
    }
    sort_ready = s->ready;
    qsort(s->order, (size_t)s->n_buckets, sizeof(int), cmp_ready);
    s->next = 0;
    s->planned = 1;
}

static void start_bucket(cf_grad_sync *s, int b) {
    if (s->probe) s->probe(s->probe_arg, b, s->b_off[b], s->b_len[b]);
    s->started[b] = 1;
#ifdef CF_MPI
    if (g_size > 1) {
        double t0 = now_s();
        MPI_Iallreduce(MPI_IN_PLACE, s->p->grads + s->b_off[b], (int)s->b_len[b], MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD,
                       &s->req[b]);
        s->open++;
        s->mpi_s += now_s() - t0;
    }
#endif
}

/* let started reductions progress (MPI progresses non-blocking collectives inside MPI calls) */
static void progress(cf_grad_sync *s) {
#ifdef CF_MPI
    if (!s->open) return;
    double t0 = now_s();
    int done = 0;
    MPI_Testall(s->n_buckets, s->req, &done, MPI_STATUSES_IGNORE);
    if (done) s->open = 0;
    s->mpi_s += now_s() - t0;
#else
    (void)s;
#endif
}

static void on_node(cf_hook *h, const cf_node *n, int index, int done) {
    cf_grad_sync *s = (cf_grad_sync *)h;
    if (!done) {
        /* exactness: this backward must not add into a bucket that has started */
        for (int i = 0; i < n->n_in; i++) {
            int a, b;
            if (!slab_range(s, n->in[i], &a, &b)) continue;
            for (int k = a; k <= b; k++)
                CF_ASSERT(!s->started[s->bucket_of[k]],
                          "gradient all-reduce: %s gets a gradient from tape node %d (%s) after its bucket started; "
                          "an op read it without reporting the read to cf_record",
                          s->p->t[k]->name, index, cf_op_table[n->op].name);
        }
        return;
    }
    if (!s->planned) plan(s);
    while (s->next < s->n_buckets && s->ready[s->order[s->next]] >= index) start_bucket(s, s->order[s->next++]);
    progress(s);
}

cf_grad_sync *cf_grad_sync_new(cf_params *p, size_t bucket_bytes) {
    CF_ASSERT(p->finalized && p->n > 0, "cf_grad_sync_new: parameters not finalized");
    cf_grad_sync *s = cf_xcalloc(1, sizeof *s);
    s->hook.read = on_read;
    s->hook.node = on_node;
    s->p = p;
    s->lo = p->grads;
    s->hi = p->grads + p->numel;
    int64_t cap = (int64_t)(bucket_bytes / sizeof(float));
    if (cap < 1) cap = 1;
    s->bucket_of = cf_xcalloc((size_t)p->n, sizeof(int));
    s->reader = cf_xcalloc((size_t)p->n, sizeof(int));
    int *first = cf_xcalloc((size_t)p->n, sizeof(int)), *last = cf_xcalloc((size_t)p->n, sizeof(int));
    /* from the end of the slab: whole parameters until a bucket holds cap elements */
    int nb = 0;
    for (int k = p->n - 1; k >= 0;) {
        int end = k;
        int64_t hi = k + 1 < p->n ? p->offset[k + 1] : p->numel, len = 0;
        while (k >= 0 && (len == 0 || hi - p->offset[k] <= cap)) { len = hi - p->offset[k]; k--; }
        first[nb] = k + 1;
        last[nb] = end;
        nb++;
    }
    s->n_buckets = nb;
    s->b_off = cf_xmalloc(sizeof(int64_t) * (size_t)nb);
    s->b_len = cf_xmalloc(sizeof(int64_t) * (size_t)nb);
    s->b_first = first;
    s->b_last = last;
    for (int b = 0; b < nb; b++) {
        s->b_off[b] = p->offset[first[b]];
        s->b_len[b] = (last[b] + 1 < p->n ? p->offset[last[b] + 1] : p->numel) - s->b_off[b];
        CF_ASSERT(s->b_len[b] <= INT_MAX, "gradient all-reduce: parameter %s has more than %d elements",
                  p->t[first[b]]->name, INT_MAX);
        for (int k = first[b]; k <= last[b]; k++) s->bucket_of[k] = b;
    }
    s->ready = cf_xcalloc((size_t)nb, sizeof(int));
    s->order = cf_xcalloc((size_t)nb, sizeof(int));
    s->started = cf_xcalloc((size_t)nb, sizeof(int));
#ifdef CF_MPI
    s->req = cf_xmalloc(sizeof(MPI_Request) * (size_t)nb);
    for (int b = 0; b < nb; b++) s->req[b] = MPI_REQUEST_NULL;
#endif
    return s;
}

void cf_grad_sync_free(cf_grad_sync *s) {
    if (!s) return;
    free(s->b_off); free(s->b_len); free(s->b_first); free(s->b_last); free(s->bucket_of);
    free(s->reader); free(s->ready); free(s->order); free(s->started);
#ifdef CF_MPI
    free(s->req);
#endif
    free(s);
}

void cf_grad_sync_set_probe(cf_grad_sync *s, void (*probe)(void *arg, int bucket, int64_t off, int64_t len),
                            void *arg) {
    s->probe = probe;
    s->probe_arg = arg;
}

void cf_grad_sync_arm(cf_grad_sync *s, cf_ctx *ctx) {
    CF_ASSERT(!s->armed && !ctx->hook, "cf_grad_sync_arm: already armed");
    for (int k = 0; k < s->p->n; k++) s->reader[k] = INT_MAX;
    memset(s->started, 0, sizeof(int) * (size_t)s->n_buckets);
    s->planned = 0;
    s->next = 0;
    s->open = 0;
    s->mpi_s = 0;
    s->armed = 1;
    ctx->hook = &s->hook;
}

double cf_grad_sync_finish(cf_grad_sync *s, cf_ctx *ctx) {
    CF_ASSERT(s->armed && ctx->hook == &s->hook, "cf_grad_sync_finish: not armed on this context");
    ctx->hook = NULL;
    if (!s->planned) plan(s);
    while (s->next < s->n_buckets) start_bucket(s, s->order[s->next++]);
#ifdef CF_MPI
    if (g_size > 1) {
        double t0 = now_s();
        MPI_Waitall(s->n_buckets, s->req, MPI_STATUSES_IGNORE);
        s->open = 0;
        s->mpi_s += now_s() - t0;
    }
#endif
    s->armed = 0;
    return s->mpi_s;
}
