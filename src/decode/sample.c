/* Sampling bytes from a decoder: temperature, top-k and top-p (nucleus) over the logits of the
 * model's incremental decoding (cf_gen: each new byte one row through the blocks), seeded, with a
 * stop string and bytes handed to the caller as they are produced. The uncached reference re-runs
 * the full forward on the last max_seq_len bytes for every byte. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cformer/decode.h"

cf_sample_opts cf_sample_defaults(void) { return (cf_sample_opts){.temperature = 1.0f, .top_p = 1.0f}; }

typedef struct pick { float p; int v; } pick;

static int cmp_pick(const void *a, const void *b) {
    const pick *x = a, *y = b;
    return (x->p < y->p) - (x->p > y->p) ? (x->p < y->p) - (x->p > y->p) : x->v - y->v;
}

/* the next byte from logits z [V]; w: V picks of workspace */
static int choose(const float *z, int V, const cf_sample_opts *o, cf_rng *r, pick *w) {
    int next = 0;
    if (o->temperature <= 0) {
        for (int v = 1; v < V; v++) if (z[v] > z[next]) next = v;
        return next;
    }
    float mx = -INFINITY;
    for (int v = 0; v < V; v++) mx = z[v] > mx ? z[v] : mx;
    for (int v = 0; v < V; v++) w[v] = (pick){expf((z[v] - mx) / o->temperature), v};
    int keep = o->top_k > 0 && o->top_k < V ? o->top_k : V;
    /* a cut needs the bytes by probability, most likely first; the whole distribution does not */
    if (keep < V || o->top_p < 1.0f) qsort(w, (size_t)V, sizeof *w, cmp_pick);
    double sum = 0;
    for (int i = 0; i < keep; i++) sum += w[i].p;
    if (o->top_p < 1.0f) {
        double acc = 0;
        for (int i = 0; i < keep; i++) {
            acc += w[i].p;
            if (acc >= o->top_p * sum) { keep = i + 1; break; }
        }
        sum = acc < sum ? acc : sum;
    }
    double u = cf_rng_float(r) * sum, acc = 0;
    next = w[keep - 1].v;
    for (int i = 0; i < keep; i++) {
        acc += w[i].p;
        if (u < acc) { next = w[i].v; break; }
    }
    return next;
}

/* The bytes produced so far that can be emitted: all but a tail that might begin the stop string.
 * Returns the new total of emitted bytes; *stopped when the text now ends with the stop string. */
static int emit_ready(const uint8_t *gen, int n, int emitted, const cf_sample_opts *o, int *stopped) {
    int L = o->stop ? (int)strlen(o->stop) : 0, hold = 0;
    *stopped = 0;
    if (L > 0 && n >= L && !memcmp(gen + n - L, o->stop, (size_t)L)) {
        *stopped = 1;
        n -= L;
    } else {
        for (int k = L - 1 < n ? L - 1 : n; k > 0; k--)
            if (!memcmp(gen + n - k, o->stop, (size_t)k)) { hold = k; break; }
    }
    int upto = n - hold;
    if (upto > emitted && o->emit) o->emit(o->emit_arg, gen + emitted, upto - emitted);
    return upto > emitted ? upto : emitted;
}

/* the logits of the byte after out[0, n) by the full forward on its last max_seq_len bytes */
static const float *uncached_logits(cf_model *m, cf_ctx *ctx, const uint8_t *out, int n, int32_t *ids) {
    int W = m->cfg.max_seq_len, T = n < W ? n : W;
    for (int t = 0; t < T; t++) ids[t] = out[n - T + t];
    cf_ctx_begin(ctx, 0);
    return cf_model_logits(m, ctx, ids, 1, T)->data + (size_t)(T - 1) * m->cfg.vocab_size;
}

/* ---- the thread count of the one-byte steps --------------------------------------------------
 * A step is a few dozen short parallel regions. On a machine whose cores other processes keep
 * busy, every region waits for a descheduled thread, and two threads run several times slower
 * than one (docs/perf/README.md, "A busy machine"). So the sampler times its steps, and now and
 * then runs PROBE of them at the other thread count (the team or 1); it keeps the count whose
 * median step was shorter. A probe that confirms the count doubles the wait before the next one
 * (from PERIOD0 up to PERIOD_MAX steps), and a step four times the running median brings the next
 * probe forward. The bytes do not depend on the count: every sum of a step is made by one thread
 * in one order (tests/test_generate.c compares the team's logits with one thread's). */
#define PROBE 8
#define PERIOD0 64
#define PERIOD_MAX 2048

typedef struct pace {
    int team, home, cur;          /* the team (omp_get_max_threads at start), the chosen count, the one in use */
    int left, period;             /* steps until the next probe or the end of this one; the wait between probes */
    double t[2][PROBE];           /* the last PROBE step times at the team [0] and at one thread [1] */
    int n[2];
} pace;

static void pace_init(pace *p) {
    *p = (pace){.team = omp_get_max_threads(), .period = PERIOD0, .left = PERIOD0};
    p->home = p->cur = p->team;
}

static double median_of(const double *t, int n) {
    double a[PROBE];
    memcpy(a, t, sizeof(double) * (size_t)n);
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && a[j - 1] > a[j]; j--) { double x = a[j]; a[j] = a[j - 1]; a[j - 1] = x; }
    return a[n / 2];
}

static void pace_set(pace *p, int count) {
    if (count != p->cur) omp_set_num_threads(count);
    p->cur = count;
}

/* after a step of `sec` seconds at p->cur threads: record it, and start or end a probe */
static void pace_step(pace *p, double sec) {
    if (p->team < 2) return;
    int slot = p->cur == p->team ? 0 : 1;
    int have = p->n[slot] < PROBE ? p->n[slot] : PROBE;
    if (p->cur == p->home && have == PROBE && sec > 4 * median_of(p->t[slot], PROBE)) p->left = 0;
    p->t[slot][p->n[slot]++ % PROBE] = sec;
    if (--p->left > 0) return;
    if (p->cur == p->home) {                      /* probe the other count */
        int other = p->home == p->team ? 1 : p->team;
        p->n[other == p->team ? 0 : 1] = 0;
        pace_set(p, other);
        p->left = PROBE;
        return;
    }
    int h = p->home == p->team ? 0 : 1;           /* the probe is over: keep the faster count */
    int keep = p->n[h] >= PROBE && median_of(p->t[h], PROBE) <= median_of(p->t[1 - h], PROBE);
    if (keep) p->period = p->period * 2 < PERIOD_MAX ? p->period * 2 : PERIOD_MAX;
    else p->home = p->cur, p->period = PERIOD0;
    pace_set(p, p->home);
    p->left = p->period;
}

static double now_sec(void) { return omp_get_wtime(); }

#define ROWS 64   /* bytes fed at once while encoding a prompt */

/* feed out[from, n) and return the logits after the last */
static const float *feed_all(cf_gen *g, const uint8_t *out, int from, int n, int32_t *ids) {
    const float *z = NULL;
    for (int i = from; i < n; i += ROWS) {
        int k = n - i < ROWS ? n - i : ROWS;
        for (int j = 0; j < k; j++) ids[j] = out[i + j];
        z = cf_gen_feed(g, ids, k) + (size_t)(k - 1) * g->m->cfg.vocab_size;
    }
    return z;
}

int cf_sample(cf_model *m, cf_ctx *ctx, uint8_t *out, int n_prompt, int n_new, cf_sample_opts *o) {
    int V = m->cfg.vocab_size;
    if (V > 256) return cf_set_error("sample: vocab_size %d is not byte-level", V);
    if (n_new < 1) return 0;
    int absolute = !m->has_xl && cf_pos_has_table(m->cfg.position), recurrent = cf_model_is_recurrent(m);
    int span = o->span > 0 ? o->span : absolute ? m->cfg.max_seq_len : n_prompt + n_new + 1;
    if (recurrent && o->span < 1) return cf_set_error("sample: a model with xl or infini layers needs its call length (span)");
    if (!recurrent && absolute && span > m->cfg.max_seq_len) span = m->cfg.max_seq_len;
    int slide = o->slide > 0 ? o->slide : span / 2 > 0 ? span / 2 : 1;
    if (slide > span) slide = span;
    cf_rng r;
    cf_rng_seed(&r, o->seed);
    int W = m->cfg.max_seq_len;
    int32_t *ids = cf_xmalloc(sizeof(int32_t) * (size_t)(W > ROWS ? W : ROWS));
    pick *w = cf_xmalloc(sizeof(pick) * (size_t)V);
    int saved_grad = ctx->grad_enabled, saved_train = ctx->training;
    ctx->grad_enabled = 0;
    ctx->training = 0;
    o->reencodes = 0;
    cf_gen g;
    int rc = 0;
    o->cache_bytes = 0;
    if (!o->uncached && (rc = cf_gen_init(&g, m, ctx, span, ROWS))) goto done;
    if (!o->uncached) o->cache_bytes = cf_gen_bytes(&g);
    int n = n_prompt, made = 0, emitted = 0, stopped = 0;
    if (n == 0) {                                  /* an empty prompt starts from a newline */
        out[n++] = '\n';
        made = 1;
        emitted = emit_ready(out + n_prompt, made, emitted, o, &stopped);
    }
    const float *z = NULL;
    pace pc;
    pace_init(&pc);
    if (!o->uncached) {
        int from = g.bounded && n > span ? n - span : 0;      /* a longer prompt: its last span bytes */
        z = feed_all(&g, out, from, n, ids);
    }
    while (made < n_new && !stopped) {
        if (o->uncached) z = uncached_logits(m, ctx, out, n, ids);
        out[n++] = (uint8_t)choose(z, V, o, &r, w);
        made++;
        emitted = emit_ready(out + n_prompt, made, emitted, o, &stopped);
        if (stopped || made == n_new || o->uncached) continue;
        if (cf_gen_room(&g) > 0) {
            int32_t id = out[n - 1];
            double t0 = now_sec();
            z = cf_gen_feed(&g, &id, 1);
            pace_step(&pc, now_sec() - t0);
            continue;
        }
        /* the context is full: drop its oldest `slide` bytes, re-encode the rest and the new byte
         * from position 0 */
        if (!o->reencodes)
            fprintf(stderr, "cformer: sample: the context of %d bytes is full: each time it fills, the oldest %d "
                    "bytes are dropped and the rest re-encoded from position 0\n", span, slide);
        o->reencodes++;
        cf_gen_reset(&g);
        z = feed_all(&g, out, n - (span - slide + 1), n, ids);
    }
    if (stopped) made -= (int)strlen(o->stop);
    else if (o->emit && emitted < made)      /* held back as a possible start of the stop string */
        o->emit(o->emit_arg, out + n_prompt + emitted, made - emitted);
    rc = made;
    pace_set(&pc, pc.team);
    if (!o->uncached) cf_gen_free(&g);
done:
    ctx->grad_enabled = saved_grad;
    ctx->training = saved_train;
    free(ids);
    free(w);
    return rc;
}
