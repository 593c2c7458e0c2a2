/* The bfloat16 GEMM: cf_gemm's contract with op(A) and op(B) rounded to bf16 as they are packed
 * and the products summed in fp32; its reference; and the choice of micro-kernel at run time.
 *
 * k is cut into blocks (n_kc near-equal runs of at most the kernel's kc, boundaries on multiples
 * of its kstep) that depend on k and the kernel alone. A block's products are summed by the
 * micro-kernel from zero in its fixed order, and C takes them as C = alpha * sum + beta * C, beta
 * on the first block and 1 after. Tiles lie on a fixed grid (tasks are cut at multiples of the
 * tile), so an element's value depends on the kernel, the call's sizes and its inputs, never on
 * the threads: results are bitwise the same at any thread count and on every call.
 *
 * Work: op(B) is packed, shared by the team, one span at a time (k blocks by columns, at most
 * B_ELEMS bf16, all of op(B) up to k x n = 4 M), in units of one k block by NCB columns that the
 * threads pack between two barriers; then the span's tasks (rows by columns of C, taken
 * dynamically) each pack their rows of op(A) one k block at a time and sweep the micro-kernel
 * over the task's columns, NCB at a time so that the B block in use stays in L2:
 *
 *   span (k blocks q0..q1, columns j0..j0+nb)      pack B units, barrier
 *     task (rc rows x cc columns), any thread       pack A block [rc x kc] into its own buffer
 *       k block q of the span
 *         column block of NCB                       B block [kc x NCB] in L2
 *           mr rows                                 A micro-panel in L1
 *             nr columns                            micro-kernel
 *
 * m or n of 1 run the same tiles (no matrix-vector path): right, at a fraction of the speed.
 *
 * Buffers: each thread that ever runs a call has one, taken on its first call (the A block of
 * one task, then the B span, address space that only a calling thread touches) and freed when
 * the thread exits; later calls allocate nothing. */
#include "cformer/core.h"
#include "cformer/kernels.h"
#include "cpu.h"
#include "gemm_bf16_internal.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <omp.h>

enum {
    NCB = 384,                /* columns per B block and per pack unit (a multiple of every nr) */
    KCP_MAX = 640,            /* most k a packed block holds: every kernel's kc + kstep */
    ROWS_MAX = 256,           /* rows of a task at most (the A buffer), at least ROWS_MIN */
    ROWS_MIN = 64,
    B_ELEMS = 1 << 22,        /* bf16 of packed op(B) at a time (8 MB) */
    TASKS_PER_THREAD = 4,     /* enough tasks for the dynamic schedule to even out a slow core */
    PAR_MIN_WORK = 1 << 20,   /* multiply-adds below which a call stays on the calling thread */
};
#define A_ELEMS ((size_t)ROWS_MAX * KCP_MAX)

static inline int imin(int x, int y) { return x < y ? x : y; }
static inline int round_up(int x, int s) { return (x + s - 1) / s * s; }

float cf_bf16_round(float x) { return cf_bf16_float(cf_bf16_bits(x)); }

/* ---- the reference ----------------------------------------------------------------------- */
/* rows x cols of x (row stride ld), each rounded to bf16, at the same places */
static float *rounded_copy(const float *x, int rows, int cols, int ld) {
    float *y = cf_xcalloc((size_t)rows * ld, sizeof *y);
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) y[(size_t)r * ld + c] = cf_bf16_round(x[(size_t)r * ld + c]);
    return y;
}

void cf_gemm_bf16_ref(int trans_a, int trans_b, int m, int n, int k, float alpha,
                      const float *a, int lda, const float *b, int ldb, float beta, float *c,
                      int ldc) {
    float *ra = rounded_copy(a, trans_a ? k : m, trans_a ? m : k, lda);
    float *rb = rounded_copy(b, trans_b ? n : k, trans_b ? k : n, ldb);
    cf_gemm_ref(trans_a, trans_b, m, n, k, alpha, ra, lda, rb, ldb, beta, c, ldc);
    free(ra);
    free(rb);
}

/* ---- the kernel in use ------------------------------------------------------------------- */
/* in order of preference: the default is the first that this machine runs */
static const cf_bf16_kernel *const kernels[] = {&cf_bf16_amx, &cf_bf16_avx512bf16,
                                                &cf_bf16_portable};
enum { N_KERNELS = sizeof kernels / sizeof *kernels };

/* NULL when this machine runs kernel kr, else why not */
static const char *missing(const cf_bf16_kernel *kr) {
    if (kr == &cf_bf16_portable) return NULL;
    if (!cf_cpu()->avx512bf16) return "this CPU or OS has no AVX512-BF16";
    if (kr == &cf_bf16_amx) {
        if (!cf_cpu()->amx_bf16) return "this CPU or OS has no AMX-BF16 tiles";
        if (!cf_cpu_amx_permit())
            return "Linux refused the AMX tile data permission (arch_prctl ARCH_REQ_XCOMP_PERM)";
    }
    return NULL;
}

static const cf_bf16_kernel *by_name(const char *name) {
    for (int i = 0; i < N_KERNELS; i++)
        if (!strcmp(kernels[i]->name, name)) return kernels[i];
    return NULL;
}

static _Atomic(const cf_bf16_kernel *) in_use;
static pthread_once_t choose_once = PTHREAD_ONCE_INIT;

/* CF_BF16_KERNEL names the kernel, or the best this machine runs is taken. A kernel it names
 * that is unknown or that this machine cannot run stops the program: a run that asked for one
 * kernel must not measure another. */
static void choose(void) {
    const char *env = getenv("CF_BF16_KERNEL");
    const cf_bf16_kernel *kr = NULL;
    if (env && *env) {
        kr = by_name(env);
        const char *why = kr ? missing(kr) : "unknown kernel (amx, avx512bf16 or portable)";
        if (why) {
            fprintf(stderr, "cformer: CF_BF16_KERNEL=%s: %s\n", env, why);
            exit(EXIT_FAILURE);
        }
    } else {
        for (int i = 0; i < N_KERNELS && !kr; i++)
            if (!missing(kernels[i])) kr = kernels[i];
    }
    atomic_store(&in_use, kr);
}

static const cf_bf16_kernel *kernel(void) {
    pthread_once(&choose_once, choose);
    return atomic_load(&in_use);
}

const char *cf_gemm_bf16_kernel(void) { return kernel()->name; }

int cf_gemm_bf16_set_kernel(const char *name) {
    kernel();                                /* CF_BF16_KERNEL first, so that this overrides it */
    const cf_bf16_kernel *kr = by_name(name);
    if (!kr) return cf_set_error("bf16 kernel '%s': unknown (amx, avx512bf16 or portable)", name);
    const char *why = missing(kr);
    if (why) return cf_set_error("bf16 kernel '%s': %s", name, why);
    atomic_store(&in_use, kr);
    return 0;
}

/* ---- buffers ----------------------------------------------------------------------------- */
static pthread_key_t buffer_key;
static pthread_once_t buffer_once = PTHREAD_ONCE_INIT;
static _Thread_local uint16_t *thread_buf;

/* the key frees a thread's buffer when the thread exits */
static void buffer_key_init(void) {
    CF_ASSERT(!pthread_key_create(&buffer_key, free), "cf_gemm_bf16: pthread_key_create failed");
}

/* the thread's buffer: A_ELEMS for its tasks' A blocks, then B_ELEMS for the calls it leads */
static uint16_t *buffer(void) {
    if (thread_buf) return thread_buf;
    pthread_once(&buffer_once, buffer_key_init);
    const size_t bytes = (A_ELEMS + B_ELEMS) * sizeof *thread_buf;
    uint16_t *p = aligned_alloc(64, bytes);
    CF_ASSERT(p && !pthread_setspecific(buffer_key, p),
              "cf_gemm_bf16: no packing buffer of %zu bytes", bytes);
    return thread_buf = p;
}

/* ---- the driver ---------------------------------------------------------------------------- */
typedef struct {
    const cf_bf16_kernel *kr;
    int ta, tb, m, n, k, lda, ldb, ldc;
    int n_kc;                       /* k blocks */
    float alpha, beta;
    const float *a, *b;
    float *c;
    uint16_t *bpack;                /* the calling thread's B span */
    const cf_gemm_hooks *hooks;      /* NULL, or run on each task's block (cf_gemm_epi) */
} job;

/* first k of block q (k itself for q == n_kc) */
static int kbegin(const job *g, int q) {
    if (q >= g->n_kc) return g->k;
    return (int)((int64_t)g->k * q / g->n_kc) / g->kr->kstep * g->kr->kstep;
}

/* A span of op(B) and its tasks. Block q of the span is packed at bpack + (kbegin(q) - kbegin(q0))
 * * nbp (only the last block of k is padded past its length), its panel of column j (of the
 * span) j * kcp further on. */
typedef struct {
    int q0, q1;                     /* k blocks q0 .. q1 - 1 */
    int j0, nb, nbp;                /* columns j0 .. j0 + nb, nbp of them packed */
    int units_q;                    /* pack units per k block: column blocks of NCB */
    int rows, cols, col_tasks, tasks;
} span;

/* Task shape, a pure function of the call and the team: whole column runs while there are rows
 * enough for TASKS_PER_THREAD tasks a thread, else the columns are cut as well. */
static span make_span(const job *g, int q0, int q1, int j0, int nb, int team) {
    const cf_bf16_kernel *kr = g->kr;
    span s = {.q0 = q0, .q1 = q1, .j0 = j0, .nb = nb, .nbp = round_up(nb, kr->nr),
              .units_q = (nb + NCB - 1) / NCB};
    int goal = team > 1 ? TASKS_PER_THREAD * team : 1;
    int rows = round_up((g->m + goal - 1) / goal, kr->mr);
    if (rows < ROWS_MIN) rows = round_up(ROWS_MIN, kr->mr);
    if (rows > ROWS_MAX) rows = ROWS_MAX / kr->mr * kr->mr;
    int row_tasks = (g->m + rows - 1) / rows, panels = s.nbp / kr->nr;
    int cut = row_tasks >= goal ? 1 : imin((goal + row_tasks - 1) / row_tasks, panels);
    s.rows = rows;
    s.cols = (panels + cut - 1) / cut * kr->nr;
    s.col_tasks = (nb + s.cols - 1) / s.cols;
    s.tasks = row_tasks * s.col_tasks;
    return s;
}

static void pack_unit(const job *g, const span *s, int u) {
    int q = s->q0 + u / s->units_q, jc = u % s->units_q * NCB, j = s->j0 + jc;
    int kb = kbegin(g, q), kl = kbegin(g, q + 1) - kb, kcp = round_up(kl, g->kr->kstep);
    const float *b = g->tb ? g->b + (size_t)j * g->ldb + kb : g->b + (size_t)kb * g->ldb + j;
    uint16_t *dst = g->bpack + (size_t)(kb - kbegin(g, s->q0)) * s->nbp + (size_t)jc * kcp;
    g->kr->pack_b(g->tb, b, g->ldb, kl, kcp, imin(NCB, s->nb - jc), dst);
}

static void run_task(const job *g, const span *s, int t, uint16_t *abuf) {
    const cf_bf16_kernel *kr = g->kr;
    int i0 = t / s->col_tasks * s->rows, jt = t % s->col_tasks * s->cols;
    int rows = imin(s->rows, g->m - i0), jend = imin(jt + s->cols, s->nb);
    /* the span that starts k meets the task's block first */
    if (g->hooks && g->hooks->before && s->q0 == 0) g->hooks->before(g->hooks->arg, i0, s->j0 + jt, rows, jend - jt);
    for (int q = s->q0; q < s->q1; q++) {
        int kb = kbegin(g, q), kl = kbegin(g, q + 1) - kb, kcp = round_up(kl, kr->kstep);
        const float *a = g->ta ? g->a + (size_t)kb * g->lda + i0 : g->a + (size_t)i0 * g->lda + kb;
        kr->pack_a(g->ta, a, g->lda, rows, kl, kcp, abuf);
        const uint16_t *bq = g->bpack + (size_t)(kb - kbegin(g, s->q0)) * s->nbp;
        float beta = kb == 0 ? g->beta : 1.0f;      /* beta once, then accumulate */
        for (int jc = jt; jc < jend; jc += NCB)
            for (int ir = 0; ir < rows; ir += kr->mr) {
                float *crow = g->c + (size_t)(i0 + ir) * g->ldc + s->j0;
                for (int jr = jc; jr < imin(jc + NCB, jend); jr += kr->nr)
                    kr->micro(kcp, abuf + (size_t)ir * kcp, bq + (size_t)jr * kcp, crow + jr,
                              g->ldc, g->alpha, beta, imin(kr->mr, rows - ir),
                              imin(kr->nr, jend - jr));
            }
    }
    /* the task's block is final once the span that ends k has been summed into it */
    if (g->hooks && g->hooks->after && s->q1 == g->n_kc) g->hooks->after(g->hooks->arg, i0, s->j0 + jt, rows, jend - jt);
}

/* One thread's part of the call; with a team of one, no OpenMP construct at all (even a
 * serialised one costs). The implicit barrier after the packing loop publishes the span, the
 * one after the tasks keeps it until every task is done. */
static void work(const job *g, int team) {
    const cf_bf16_kernel *kr = g->kr;
    uint16_t *abuf = buffer();
    if (kr->begin) kr->begin();
    /* spans: as many k blocks as fit B_ELEMS with all columns, else one block and fewer columns */
    int64_t block = (int64_t)(kr->kc + kr->kstep) * round_up(g->n, kr->nr);
    int per_span = (int)(B_ELEMS / block), cols = g->n;
    if (per_span < 1) {
        per_span = 1;
        cols = B_ELEMS / (kr->kc + kr->kstep) / NCB * NCB;
    }
    for (int q0 = 0; q0 < g->n_kc; q0 += per_span)
        for (int j0 = 0; j0 < g->n; j0 += cols) {
            int q1 = imin(q0 + per_span, g->n_kc);
            span s = make_span(g, q0, q1, j0, imin(cols, g->n - j0), team);
            int units = (s.q1 - s.q0) * s.units_q;
            if (team == 1) {
                for (int u = 0; u < units; u++) pack_unit(g, &s, u);
                for (int t = 0; t < s.tasks; t++) run_task(g, &s, t, abuf);
                continue;
            }
#pragma omp for schedule(static)
            for (int u = 0; u < units; u++) pack_unit(g, &s, u);
#pragma omp for schedule(dynamic, 1)
            for (int t = 0; t < s.tasks; t++) run_task(g, &s, t, abuf);
        }
    if (kr->end) kr->end();
}

void cf_gemm_bf16(int trans_a, int trans_b, int m, int n, int k, float alpha,
                  const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc) {
    cf_gemm_bf16_epi(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, NULL);
}

void cf_gemm_bf16_epi(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a, int lda,
                      const float *b, int ldb, float beta, float *c, int ldc, const cf_gemm_hooks *hooks) {
    CF_ASSERT(m >= 0 && n >= 0 && k >= 0 && lda >= (trans_a ? m : k) &&
              ldb >= (trans_b ? k : n) && ldc >= n,
              "cf_gemm_bf16: negative size or leading dimension too small (m=%d n=%d k=%d, lda=%d "
              "ldb=%d ldc=%d, trans_a=%d trans_b=%d)", m, n, k, lda, ldb, ldc, trans_a, trans_b);
    /* nothing to multiply (C = beta C, A and B unread; or an empty C): cf_gemm's own path */
    if (m == 0 || n == 0 || k == 0 || alpha == 0.0f) {
        cf_gemm_epi(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, hooks);
        return;
    }
    const cf_bf16_kernel *kr = kernel();
    CF_ASSERT(kr->kc + kr->kstep <= KCP_MAX && NCB % kr->nr == 0 && ROWS_MAX >= kr->mr,
              "cf_gemm_bf16: kernel %s does not fit the driver's buffers", kr->name);
    job g = {.kr = kr, .ta = trans_a, .tb = trans_b, .m = m, .n = n, .k = k, .lda = lda,
             .ldb = ldb, .ldc = ldc, .n_kc = (k + kr->kc - 1) / kr->kc, .alpha = alpha,
             .beta = beta, .a = a, .b = b, .c = c, .bpack = buffer() + A_ELEMS, .hooks = hooks};
    /* a team when the work pays for the fork and OpenMP may open another level here */
    int team = (double)m * n * k < PAR_MIN_WORK ||
               omp_get_active_level() >= omp_get_max_active_levels() ? 1 : omp_get_max_threads();
    if (team > 1) {
#pragma omp parallel num_threads(team)
        work(&g, omp_get_num_threads());
    } else {
        work(&g, 1);
    }
}
