/* GEMM: cformer's hot path, and the reference triple loop the tests trust.
 *
 * Structure (GotoBLAS/BLIS). op(B) is packed once per call into NR-column micro-panels shared by
 * the whole team; C is cut into tasks (a run of rows by a run of columns) that the threads take
 * dynamically; a task packs its own rows of op(A) and runs the micro-kernel:
 *
 *   super-block of op(B) (all of it unless n x k is large): a barrier between two
 *     task: rows i0..i1 x columns j0..j1 of C, taken by whichever thread is free
 *       pc over k in KC        A block  [rows x KC]  packed into the thread's own buffer
 *         jc over columns in NC   B block  [KC x NC] of the shared pack, packed by the first
 *                                 thread to need it; stays in the core's L2
 *           ir over MR rows          A micro-panel [KC x MR] stays in L1 across the jr loop
 *             jr over NR columns     B micro-panels stream from L2
 *               micro-kernel: MR x NR tile of C in registers
 *
 * The kernel broadcasts from A and loads vectors from B (gemm_internal.h), which is why the L1-
 * resident panel is A's: B's micro-panel (KC x 48 floats = 72 KB) would not fit in L1 at all.
 * Packing reads op(A) and op(B) through their transposes, so NN, NT, TN and TT all run the same
 * kernel on the same packed layout; nothing is transposed in memory beforehand.
 *
 * Why dynamic tasks and not one rectangle per thread: the cores are shared (data loading, other
 * programs), and with a static split a thread that loses its core for a while holds up the whole
 * call; with tasks the other thread takes up the slack. Sharing the packed B makes small tasks
 * cheap: a task repacks only its own rows of A.
 *
 * With m == 1 or n == 1 a micro-tile would be almost all padding: those calls stream the matrix
 * once as dot products or row updates instead (gemv below).
 *
 * Determinism: an element of C is the sum over k blocks in order, each block summed in k order in
 * one register lane, whatever thread ran its task and wherever the task edges fell: results are
 * bitwise repeatable, and in fact the same at any thread count.
 *
 * Packing buffers: one per thread, taken on that thread's first call at a fixed size (the A block
 * of one task, about 0.4 MB, and the B super-block, 8 MB of address space that only a call's
 * calling thread touches), 64-byte aligned, held in a static _Thread_local pointer for the
 * thread's lifetime and reused by every later call: after warm-up a call does no allocation.
 * OpenMP keeps its worker threads alive, so there is one buffer per worker, not per call
 * (pack_buffer below). */
#include "cformer/core.h"
#include "cformer/kernels.h"
#include "gemm_internal.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

enum {
    MR = CF_GEMM_MR,
    NR = CF_GEMM_NR,
    /* KC x MR floats of A (14 KB at 384 x 9) stay in the 32 KB L1 next to the B lines in flight;
     * KC x NC of B (576 KB at 384 x 384) stays in the 1 MB L2 next to the A panels and C tiles
     * passing through. On Cascade Lake NC = 288..384 beat 576, and KC = 384 beat 256 and 512. */
    KC = 384,
    NC = (384 + NR - 1) / NR * NR,
    /* rows of one task: at least RC_MIN so that a B block brought into L2 serves enough A panels,
     * at most RC_MAX (the size of the per-thread A buffer) */
    RC_MIN = 8 * MR,
    RC_MAX = 32 * MR,
    /* tasks per thread to aim for: enough for the dynamic schedule to even out a slow core */
    TASKS_PER_THREAD = 4,
    /* floats of packed op(B) at a time (8 MB): bounds the buffer however large n and k are */
    B_FLOATS = 1 << 21,
    /* rows of op(B) per super-block: with k above this, the B super-blocks go down k as well */
    KB_MAX = 8 * KC,
    /* pack units (k block x NC columns) in one B super-block: bounds its columns */
    MAX_UNITS = 512,
    /* below this many multiply-adds a call runs on the calling thread alone: the fork/join would
     * cost more than it saves */
    GEMM_PAR_MIN_WORK = 1 << 20,
};

/* ---- the reference ----------------------------------------------------------------------- */
void cf_gemm_ref(int trans_a, int trans_b, int m, int n, int k, float alpha,
                 const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc) {
    /* op(A)(i, p) = a[i * ai + p * ap], op(B)(p, j) = b[p * bp + j * bj] */
    size_t ai = trans_a ? 1 : (size_t)lda, ap = trans_a ? (size_t)lda : 1;
    size_t bp = trans_b ? 1 : (size_t)ldb, bj = trans_b ? (size_t)ldb : 1;
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int p = 0; p < k; p++) s += (double)a[i * ai + p * ap] * b[p * bp + j * bj];
            float *cij = &c[(size_t)i * ldc + j];
            /* beta == 0 must not read C: it may hold NaN or be uninitialised */
            *cij = beta == 0.0f ? (float)(alpha * s) : (float)(alpha * s + (double)beta * *cij);
        }
}

const char *cf_gemm_isa(void) { return CF_GEMM_ISA; }

/* ---- portable micro-kernel --------------------------------------------------------------- */
#if !defined(__AVX512F__) && !(defined(__AVX2__) && defined(__FMA__))
/* A 4 x 8 tile: 32 accumulators fit the 16 SSE registers of baseline x86-64 as 8 vectors, and
 * the inner j loop is what the compiler vectorises. */
void cf_gemm_micro(int kc, const float *restrict a, const float *restrict b, float *restrict c,
                   int ldc, float alpha, float beta, int mr, int nr) {
    float acc[MR][NR] = {{0}};
    for (int p = 0; p < kc; p++, a += MR, b += NR)
        for (int r = 0; r < MR; r++)
            for (int j = 0; j < NR; j++) acc[r][j] += a[r] * b[j];
    for (int r = 0; r < mr; r++) {
        float *cr = c + (size_t)r * ldc;
        for (int j = 0; j < nr; j++) {
            float v = acc[r][j] * alpha;
            cr[j] = beta == 0.0f ? v : beta * cr[j] + v;
        }
    }
}
#endif

/* ---- packing for AVX2 and portable builds (gemm_avx512.c has its own) ------------------ */
#if !defined(__AVX512F__)
void cf_gemm_pack_a(int trans, const float *a, int lda, int mc, int kc, float *restrict out) {
    for (int i = 0; i < mc; i += MR, out += (size_t)kc * MR) {
        int mr = mc - i < MR ? mc - i : MR;
        if (trans) {           /* op(A)(i, p) = a[p * lda + i]: rows of the panel are contiguous */
            for (int p = 0; p < kc; p++) {
                const float *src = a + (size_t)p * lda + i;
                float *dst = out + (size_t)p * MR;
                int r = 0;
                for (; r < mr; r++) dst[r] = src[r];
                for (; r < MR; r++) dst[r] = 0.0f;
            }
        } else {               /* op(A)(i, p) = a[i * lda + p]: MR rows read side by side */
            const float *rows[MR];
            for (int r = 0; r < MR; r++) rows[r] = a + (size_t)(i + (r < mr ? r : 0)) * lda;
            for (int p = 0; p < kc; p++) {
                float *dst = out + (size_t)p * MR;
                for (int r = 0; r < MR; r++) dst[r] = r < mr ? rows[r][p] : 0.0f;
            }
        }
    }
}

void cf_gemm_pack_b(int trans, const float *b, int ldb, int kc, int nc, float *restrict out) {
    for (int j = 0; j < nc; j += NR, out += (size_t)kc * NR) {
        int nr = nc - j < NR ? nc - j : NR;
        if (trans) {           /* op(B)(p, j) = b[j * ldb + p]: NR rows of B read side by side */
            const float *rows[NR];
            for (int c = 0; c < NR; c++) rows[c] = b + (size_t)(j + (c < nr ? c : 0)) * ldb;
            for (int p = 0; p < kc; p++) {
                float *dst = out + (size_t)p * NR;
                for (int c = 0; c < NR; c++) dst[c] = c < nr ? rows[c][p] : 0.0f;
            }
        } else {               /* op(B)(p, j) = b[p * ldb + j]: rows of the panel are contiguous */
            for (int p = 0; p < kc; p++) {
                const float *src = b + (size_t)p * ldb + j;
                float *dst = out + (size_t)p * NR;
                int c = 0;
                for (; c < nr; c++) dst[c] = src[c];
                for (; c < NR; c++) dst[c] = 0.0f;
            }
        }
    }
}

#endif

/* ---- buffers ----------------------------------------------------------------------------- */
#define A_FLOATS ((size_t)RC_MAX * KC)

/* Every buffer ever made stays on one global list, never freed: a thread takes a free one on its
 * first call and marks it free again when it exits (a pthread key destructor), so memory is
 * bounded by the most threads that ever ran cf_gemm at once, thread churn does not leak, and
 * leak checkers see every buffer reachable. */
typedef struct pack_buf {
    struct pack_buf *next;
    int in_use;
    _Alignas(64) float data[];
} pack_buf;

static pack_buf *pool;
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_key_t pool_key;
static pthread_once_t pool_once = PTHREAD_ONCE_INIT;
static _Thread_local pack_buf *tl_pack;

static void pool_release(void *p) {
    pthread_mutex_lock(&pool_lock);
    ((pack_buf *)p)->in_use = 0;
    pthread_mutex_unlock(&pool_lock);
}

static void pool_init(void) {
    CF_ASSERT(pthread_key_create(&pool_key, pool_release) == 0,
              "cf_gemm: pthread_key_create failed");
}

/* the thread's buffer: A_FLOATS for its tasks' A blocks, then B_FLOATS for calls it leads */
static float *pack_buffer(void) {
    if (!tl_pack) {
        pthread_once(&pool_once, pool_init);
        pthread_mutex_lock(&pool_lock);
        pack_buf *p = pool;
        while (p && p->in_use) p = p->next;
        if (!p) {
            size_t bytes = sizeof(pack_buf) + (A_FLOATS + B_FLOATS) * sizeof(float);
            p = aligned_alloc(64, (bytes + 63) / 64 * 64);
            CF_ASSERT(p, "cf_gemm: cannot allocate %zu bytes of packing buffer", bytes);
            p->next = pool;
            pool = p;
        }
        p->in_use = 1;
        pthread_mutex_unlock(&pool_lock);
        pthread_setspecific(pool_key, p);
        tl_pack = p;
    }
    return tl_pack->data;
}

/* ---- the driver ---------------------------------------------------------------------------- */
/* The call, shared by the team. Threads meet only through the claim counters below and, between
 * B super-blocks, a barrier: a thread that loses its core for a while (the cores are shared)
 * delays the others only if they need the very unit it is packing. */
typedef struct {
    int ta, tb, m, n, k, lda, ldb, ldc;
    float alpha, beta;
    const float *a, *b;
    float *c;
    float *bpack;                  /* the calling thread's B super-block buffer */
    const cf_gemm_hooks *hooks;    /* NULL, or run on each task's block: before its first k block of
                                    * the first B super-block, after its last of the last */
    /* per pack unit of the current super-block: UNPACKED, PACKING (claimed) or READY */
    atomic_int unit[MAX_UNITS];
} gemm_job;

enum { UNPACKED, PACKING, READY };

/* One B super-block and its tasks: a pure function of the call, the super-block's origin and
 * the team size, so every thread works it out for itself and none waits to be told. */
typedef struct {
    int kb, kbn, n_kc;             /* rows kb .. kb + kbn of op(B), in n_kc blocks */
    int jb, nb, nb_pad, n_jc;      /* columns jb .. jb + nb, in n_jc blocks of NC */
    int rc, cc, n_rt, n_ct;        /* tasks: rc rows by cc columns, n_rt x n_ct of them */
} sblock;

static inline int imin(int x, int y) { return x < y ? x : y; }

/* threads for a call of `work` multiply-adds: one when small, or when called from inside a
 * parallel region that may not nest (the region would be serialised anyway, at a cost) */
static int threads_for(double work) {
    if (work < GEMM_PAR_MIN_WORK || omp_get_active_level() >= omp_get_max_active_levels()) return 1;
    return omp_get_max_threads();
}

/* The super-block's k rows are cut into n_kc near-equal blocks of at most KC (k = 512 makes two
 * blocks of 256, not 384 + 128: a short block pays a whole pass over C for little work). Block q
 * starts at row kb + kstart(s, q) and its panels (kc x NR each) sit at bpack + kstart * nb_pad. */
static inline int kstart(const sblock *s, int q) { return (int)((int64_t)s->kbn * q / s->n_kc); }

/* Task shape: rows first (a task packs only its own rows of A), columns cut too only when there
 * are too few row runs to go round the team. */
static sblock plan(const gemm_job *g, int kb, int kbn, int jb, int nb, int team) {
    sblock s = {.kb = kb, .kbn = kbn, .n_kc = (kbn + KC - 1) / KC,
                .jb = jb, .nb = nb, .nb_pad = (nb + NR - 1) / NR * NR, .n_jc = (nb + NC - 1) / NC};
    int want = team > 1 ? TASKS_PER_THREAD * team : 1;
    int rc = ((g->m + want - 1) / want + MR - 1) / MR * MR;
    s.rc = rc < RC_MIN ? RC_MIN : rc > RC_MAX ? RC_MAX : rc;
    s.n_rt = (g->m + s.rc - 1) / s.rc;
    int panels = (nb + NR - 1) / NR;
    int n_ct = s.n_rt >= want ? 1 : imin((want + s.n_rt - 1) / s.n_rt, panels);
    s.cc = (panels + n_ct - 1) / n_ct * NR;
    s.n_ct = (nb + s.cc - 1) / s.cc;
    return s;
}

/* pack unit u = q * n_jc + jc / NC: k block q by column block jc of the super-block */
static void pack_b_unit(const gemm_job *g, const sblock *s, int u) {
    int q = u / s->n_jc, jc = (u % s->n_jc) * NC;
    int p0 = kstart(s, q), kc = kstart(s, q + 1) - p0, nc = imin(NC, s->nb - jc);
    int pc = s->kb + p0, j = s->jb + jc;
    const float *src = g->tb ? g->b + (size_t)j * g->ldb + pc : g->b + (size_t)pc * g->ldb + j;
    cf_gemm_pack_b(g->tb, src, g->ldb, kc, nc, g->bpack + (size_t)p0 * s->nb_pad + (size_t)jc * kc);
}

static int claim(gemm_job *g, int u) {
    int expect = UNPACKED;
    return atomic_compare_exchange_strong_explicit(&g->unit[u], &expect, PACKING,
                                                   memory_order_relaxed, memory_order_relaxed);
}

/* Returns once unit u is packed. Whoever needs a unit first packs it; a thread that finds it
 * being packed by another packs units nobody has claimed yet while it waits, so the team packs B
 * together without a barrier. */
static void need_unit(gemm_job *g, const sblock *s, int u) {
    if (atomic_load_explicit(&g->unit[u], memory_order_acquire) == READY) return;
    if (claim(g, u)) {
        pack_b_unit(g, s, u);
        atomic_store_explicit(&g->unit[u], READY, memory_order_release);
        return;
    }
    int units = s->n_kc * s->n_jc;
    for (int v = u + 1; v < units + u; v++) {
        if (atomic_load_explicit(&g->unit[u], memory_order_acquire) == READY) return;
        int w = v % units;
        if (claim(g, w)) {
            pack_b_unit(g, s, w);
            atomic_store_explicit(&g->unit[w], READY, memory_order_release);
        }
    }
    while (atomic_load_explicit(&g->unit[u], memory_order_acquire) != READY) sched_yield();
}

static void run_task(gemm_job *g, const sblock *s, int t, float *abuf) {
    int i0 = (t / s->n_ct) * s->rc, j0 = (t % s->n_ct) * s->cc;
    int rows = imin(s->rc, g->m - i0), cols = imin(s->cc, s->nb - j0);
    if (g->hooks && g->hooks->before && s->kb == 0) g->hooks->before(g->hooks->arg, i0, s->jb + j0, rows, cols);
    for (int q = 0; q < s->n_kc; q++) {
        int p0 = kstart(s, q), kc = kstart(s, q + 1) - p0, pc = s->kb + p0;
        float beta_k = pc == 0 ? g->beta : 1.0f;   /* beta once, then accumulate */
        const float *a0 = g->ta ? g->a + (size_t)pc * g->lda + i0 : g->a + (size_t)i0 * g->lda + pc;
        cf_gemm_pack_a(g->ta, a0, g->lda, rows, kc, abuf);
        const float *bblock = g->bpack + (size_t)p0 * s->nb_pad;
        /* a task's columns, cut at NC boundaries: [jc, jc_end) lies inside unit jc / NC */
        for (int jc = j0; jc < j0 + cols; jc = (jc / NC + 1) * NC) {
            int jc_end = imin((jc / NC + 1) * NC, j0 + cols);
            need_unit(g, s, q * s->n_jc + jc / NC);
            for (int ir = 0; ir < rows; ir += MR) {
                const float *ap = abuf + (size_t)ir * kc;
                float *cp = g->c + (size_t)(i0 + ir) * g->ldc + s->jb;
                for (int jr = jc; jr < jc_end; jr += NR)
                    cf_gemm_micro(kc, ap, bblock + (size_t)jr * kc, cp + jr, g->ldc, g->alpha,
                                  beta_k, imin(MR, rows - ir), imin(NR, jc_end - jr));
            }
        }
    }
    if (g->hooks && g->hooks->after && s->kb + s->kbn == g->k) g->hooks->after(g->hooks->arg, i0, s->jb + j0, rows, cols);
}

static void reset_units(gemm_job *g) {
    for (int u = 0; u < MAX_UNITS; u++)
        atomic_store_explicit(&g->unit[u], UNPACKED, memory_order_relaxed);
}

/* The team's loop over B super-blocks. With a team of one it runs without OpenMP constructs,
 * which cost a fork, allocations and barriers per call even when serialised. */
static void gemm_team(gemm_job *g, int team) {
    float *abuf = pack_buffer();
    /* super-blocks of op(B) no larger than B_FLOATS and the unit table: all of k when n is small
     * enough to allow it (else KB_MAX rows at a time), then as many columns as fit */
    int n_pad = (g->n + NR - 1) / NR * NR, n_jc = (g->n + NC - 1) / NC;
    int kbn_max = B_FLOATS / n_pad / KC * KC, kc_units = MAX_UNITS / n_jc;
    if (kbn_max < KB_MAX) kbn_max = KB_MAX;
    if (kc_units < 1) kc_units = 1;
    kbn_max = imin(g->k, imin(kbn_max, kc_units * KC));
    int n_kc_max = (kbn_max + KC - 1) / KC;
    int nb_max = imin(g->n, imin(B_FLOATS / kbn_max / NR * NR, MAX_UNITS / n_kc_max * NC));
    int first = 1;
    for (int kb = 0; kb < g->k; kb += kbn_max)
        for (int jb = 0; jb < g->n; jb += nb_max) {
            sblock s = plan(g, kb, imin(kbn_max, g->k - kb), jb, imin(nb_max, g->n - jb), team);
            int tasks = s.n_rt * s.n_ct;
            if (team == 1) {
                if (!first) reset_units(g);
                first = 0;
                for (int t = 0; t < tasks; t++) run_task(g, &s, t, abuf);
                continue;
            }
            if (!first) {
                /* every task of the last super-block is done before its units are reset and
                 * the buffer packed again (the second barrier publishes the reset) */
#pragma omp barrier
#pragma omp single
                reset_units(g);
            }
            first = 0;
#pragma omp for schedule(dynamic, 1) nowait
            for (int t = 0; t < tasks; t++) run_task(g, &s, t, abuf);
        }
}

/* ---- matrix times vector: m == 1 or n == 1 -------------------------------------------------
 * A micro-tile would be 1/MR or 1/NR useful there, and the call is bound by reading the matrix
 * anyway, so it is streamed once, unpacked. Output o of len is y[o * ys] = alpha * sum_p M(o, p)
 * x[p * incx] + beta * y[o * ys], with M(o, p) = mat[o * so + p * sp] and either sp == 1 (each
 * output is a dot product along a row) or so == 1 (each row of M updates a run of outputs).
 * Every output is summed in an order fixed by k alone: deterministic at any thread count. */
typedef struct {
    int len, k, so, sp, incx, ys;
    const float *mat, *x;
    float *y;
    float alpha, beta;
} gemv_job;

static inline void gemv_store(const gemv_job *v, int o, float acc) {
    float *y = v->y + (size_t)o * v->ys;
    *y = v->beta == 0.0f ? v->alpha * acc : v->alpha * acc + v->beta * *y;
}

/* 64 partial sums (the compiler keeps them in vector registers), added up as a fixed tree; the
 * strided copy of the loop does the same arithmetic in the same order */
static float dot(const float *restrict r, const float *restrict x, int incx, int k) {
    float s[64] = {0};
    int p = 0;
    if (incx == 1)
        for (; p + 64 <= k; p += 64)
            for (int j = 0; j < 64; j++) s[j] += r[p + j] * x[p + j];
    else
        for (; p + 64 <= k; p += 64)
            for (int j = 0; j < 64; j++) s[j] += r[p + j] * x[(size_t)(p + j) * incx];
    for (int j = 0; p + j < k; j++) s[j] += r[p + j] * x[(size_t)(p + j) * incx];
    for (int w = 32; w >= 1; w /= 2)
        for (int j = 0; j < w; j++) s[j] += s[j + w];
    return s[0];
}

/* outputs per unit of work: dot products are independent, any run will do; the row updates
 * accumulate a run of outputs in a local array, long enough to stream each row in big pieces */
enum { GEMV_DOT_CHUNK = 64, GEMV_AXPY_CHUNK = 2048 };

static void gemv_chunk(const gemv_job *v, int o0, int o1) {
    if (v->sp == 1) {
        for (int o = o0; o < o1; o++)
            gemv_store(v, o, dot(v->mat + (size_t)o * v->so, v->x, v->incx, v->k));
        return;
    }
    float acc[GEMV_AXPY_CHUNK] = {0};
    int n = o1 - o0, p = 0;
    const float *m0 = v->mat + o0;
    /* four rows per pass over acc, each output still adding them one at a time in p order */
    for (; p + 4 <= v->k; p += 4) {
        const float *r0 = m0 + (size_t)p * v->sp, *r1 = r0 + v->sp;
        const float *r2 = r1 + v->sp, *r3 = r2 + v->sp;
        float x0 = v->x[(size_t)p * v->incx], x1 = v->x[(size_t)(p + 1) * v->incx];
        float x2 = v->x[(size_t)(p + 2) * v->incx], x3 = v->x[(size_t)(p + 3) * v->incx];
        for (int o = 0; o < n; o++) {
            float t = acc[o];
            t += r0[o] * x0;
            t += r1[o] * x1;
            t += r2[o] * x2;
            t += r3[o] * x3;
            acc[o] = t;
        }
    }
    for (; p < v->k; p++) {
        const float *r = m0 + (size_t)p * v->sp;
        float xp = v->x[(size_t)p * v->incx];
        for (int o = 0; o < n; o++) acc[o] += r[o] * xp;
    }
    for (int o = 0; o < n; o++) gemv_store(v, o0 + o, acc[o]);
}

static void gemv(const gemv_job *v) {
    int nt = threads_for((double)v->len * v->k);
    /* runs of outputs: enough for every thread, no longer than the row updates' array */
    int run = (v->len + nt - 1) / nt;
    run = v->sp == 1 ? imin(run, GEMV_DOT_CHUNK) : imin(run, GEMV_AXPY_CHUNK);
    int runs = (v->len + run - 1) / run;
    if (nt == 1 || runs == 1) {        /* no OpenMP at all: even a serialised region costs */
        for (int r = 0; r < runs; r++) gemv_chunk(v, r * run, imin((r + 1) * run, v->len));
        return;
    }
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int r = 0; r < runs; r++) gemv_chunk(v, r * run, imin((r + 1) * run, v->len));
}

void cf_gemm(int trans_a, int trans_b, int m, int n, int k, float alpha,
             const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc) {
    cf_gemm_epi(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, NULL);
}

void cf_gemm_epi(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a, int lda,
                 const float *b, int ldb, float beta, float *c, int ldc, const cf_gemm_hooks *hooks) {
    CF_ASSERT(m >= 0 && n >= 0 && k >= 0, "cf_gemm: negative size m=%d n=%d k=%d", m, n, k);
    CF_ASSERT(lda >= (trans_a ? m : k) && ldb >= (trans_b ? k : n) && ldc >= n,
              "cf_gemm: leading dimension too small (lda=%d ldb=%d ldc=%d for m=%d n=%d k=%d)",
              lda, ldb, ldc, m, n, k);
    if (m == 0 || n == 0) return;
    /* the paths below that do not go through tasks fill all of C first */
    int whole = k == 0 || alpha == 0.0f || n == 1 || m == 1;
    if (whole && hooks && hooks->before) hooks->before(hooks->arg, 0, 0, m, n);
    if (k == 0 || alpha == 0.0f) {     /* as BLAS: C = beta C, A and B unread */
        for (int i = 0; i < m; i++) {
            float *cr = c + (size_t)i * ldc;
            if (beta == 0.0f) memset(cr, 0, (size_t)n * sizeof(float));
            else if (beta != 1.0f) for (int j = 0; j < n; j++) cr[j] *= beta;
        }
        if (hooks && hooks->after) hooks->after(hooks->arg, 0, 0, m, n);
        return;
    }
    if (n == 1) {          /* C[:, 0] = op(A) op(B)[:, 0] */
        gemv_job v = {.len = m, .k = k, .so = trans_a ? 1 : lda, .sp = trans_a ? lda : 1,
                      .incx = trans_b ? 1 : ldb, .ys = ldc, .mat = a, .x = b, .y = c,
                      .alpha = alpha, .beta = beta};
        gemv(&v);
        if (hooks && hooks->after) hooks->after(hooks->arg, 0, 0, m, n);
        return;
    }
    if (m == 1) {          /* C[0, :] = op(A)[0, :] op(B): op(B)'s columns against one row */
        gemv_job v = {.len = n, .k = k, .so = trans_b ? ldb : 1, .sp = trans_b ? 1 : ldb,
                      .incx = trans_a ? lda : 1, .ys = 1, .mat = b, .x = a, .y = c,
                      .alpha = alpha, .beta = beta};
        gemv(&v);
        if (hooks && hooks->after) hooks->after(hooks->arg, 0, 0, m, n);
        return;
    }
    /* static initialisation leaves every unit UNPACKED (0) */
    gemm_job g = {.ta = trans_a, .tb = trans_b, .m = m, .n = n, .k = k, .lda = lda, .ldb = ldb,
                  .ldc = ldc, .alpha = alpha, .beta = beta, .a = a, .b = b, .c = c,
                  .bpack = pack_buffer() + A_FLOATS, .hooks = hooks};
    int nt = threads_for((double)m * n * k);
    if (nt == 1) {
        gemm_team(&g, 1);
        return;
    }
#pragma omp parallel num_threads(nt)
    gemm_team(&g, omp_get_num_threads());
}
