/* Fused attention: forward and backward against a naive double reference that materialises S and P
 * (causal and not, Tq == Tk, Tq < Tk and Tq > Tk, key padding including queries that see no key,
 * awkward lengths, several H and Dh, dropout with the op's own mask), the fused qkv variant against
 * separate q, k, v (bitwise), self-attention with one tensor as q, k and v, gradient checks, the
 * statistics of dropout, bitwise equality across thread counts (which also pits the per-head
 * backward driver against the two-pass one), a checkpointed region replaying its dropout mask, and
 * an arena peak with no T x T term. */
#include <string.h>
#include <omp.h>
#include "gradcheck.h"
#include "attn_fixture.h"

/* Attention in double, materialising S and P, and the gradients of sum(O * dO). z_key is the
 * op's dropout key; the mask is the op's documented one. */
static void reference(const cfg *c, const float *q, const float *k, const float *v, const uint8_t *keep,
                      uint64_t z_key, const float *dO, double *O, double *dq, double *dk, double *dv) {
    int C = c->H * c->Dh, Tq = c->Tq, Tk = c->Tk, Dh = c->Dh, off = Tk - Tq;
    double scale = 1.0 / sqrt((double)Dh);
    double *S = malloc(sizeof(double) * Tk), *P = malloc(sizeof(double) * Tk), *Z = malloc(sizeof(double) * Tk);
    int *vis = malloc(sizeof(int) * Tk);
    memset(dq, 0, sizeof(double) * c->B * Tq * C);
    memset(dk, 0, sizeof(double) * c->B * Tk * C);
    memset(dv, 0, sizeof(double) * c->B * Tk * C);
    for (int b = 0; b < c->B; b++)
        for (int h = 0; h < c->H; h++)
            for (int i = 0; i < Tq; i++) {
                const float *qi = q + ((int64_t)b * Tq + i) * C + h * Dh, *gi = dO + ((int64_t)b * Tq + i) * C + h * Dh;
                double *oi = O + ((int64_t)b * Tq + i) * C + h * Dh, mx = -INFINITY, sum = 0;
                int any = 0;
                for (int j = 0; j < Tk; j++) {
                    vis[j] = (!c->causal || j <= i + off) && (!keep || keep[b * Tk + j]);
                    const float *kj = k + ((int64_t)b * Tk + j) * C + h * Dh;
                    double s = 0;
                    for (int d = 0; d < Dh; d++) s += (double)qi[d] * kj[d];
                    S[j] = s * scale;
                    if (vis[j] && S[j] > mx) mx = S[j];
                    any |= vis[j];
                    uint64_t idx = (((uint64_t)b * c->H + h) * Tq + i) * Tk + j;
                    Z[j] = c->p > 0 ? (cf_rng_uniform(z_key, idx) >= c->p ? 1.0 / (1.0 - c->p) : 0.0) : 1.0;
                }
                for (int d = 0; d < Dh; d++) oi[d] = 0;
                if (!any) continue;
                for (int j = 0; j < Tk; j++) sum += P[j] = vis[j] ? exp(S[j] - mx) : 0;
                for (int j = 0; j < Tk; j++) P[j] /= sum;
                double D = 0;
                for (int j = 0; j < Tk; j++) {
                    const float *vj = v + ((int64_t)b * Tk + j) * C + h * Dh;
                    double dpd = 0;   /* dP'_ij */
                    for (int d = 0; d < Dh; d++) {
                        oi[d] += P[j] * Z[j] * vj[d];
                        dpd += (double)gi[d] * vj[d];
                        dv[((int64_t)b * Tk + j) * C + h * Dh + d] += P[j] * Z[j] * gi[d];
                    }
                    S[j] = dpd * Z[j];   /* S now holds dP */
                    D += P[j] * S[j];
                }
                for (int j = 0; j < Tk; j++) {
                    double ds = P[j] * (S[j] - D) * scale;
                    const float *kj = k + ((int64_t)b * Tk + j) * C + h * Dh;
                    for (int d = 0; d < Dh; d++) {
                        dq[((int64_t)b * Tq + i) * C + h * Dh + d] += ds * kj[d];
                        dk[((int64_t)b * Tk + j) * C + h * Dh + d] += ds * qi[d];
                    }
                }
            }
    free(S); free(P); free(Z); free(vis);
}

typedef struct result { float *o, *dq, *dk, *dv; size_t peak; } result;

static void result_free(result *r) { free(r->o); free(r->dq); free(r->dk); free(r->dv); }

static float *dup_floats(const float *x, int64_t n) {
    float *y = malloc(sizeof(float) * n);
    memcpy(y, x, sizeof(float) * n);
    return y;
}

#define STEP 7

/* The op on copies of q, k, v (fused: packed into one qkv [B, T, 3C]), backward from dO.
 * selfattn: q is passed as q, k and v (Tq == Tk); its one gradient lands in dq. */
static result run_op(const cfg *c, int fused, int selfattn, const float *q, const float *k, const float *v,
                     const uint8_t *keep, const float *dO, uint64_t seed) {
    int C = c->H * c->Dh;
    int64_t nq = (int64_t)c->B * c->Tq * C, nk = (int64_t)c->B * c->Tk * C;
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, (size_t)1 << 28, 64) == 0, "%s", cf_error_msg());
    ctx.training = 1;
    ctx.seed = seed;
    cf_ctx_begin(&ctx, STEP);
    cf_attn_opts o = {.causal = c->causal, .dropout = c->p, .key_keep = c->keep ? keep : NULL};
    result r = {0};
    cf_tensor *y;
    float *qkv = NULL;
    if (fused) {
        qkv = malloc(sizeof(float) * nq * 3);
        for (int64_t row = 0; row < (int64_t)c->B * c->Tq; row++) {
            memcpy(qkv + row * 3 * C, q + row * C, sizeof(float) * C);
            memcpy(qkv + row * 3 * C + C, k + row * C, sizeof(float) * C);
            memcpy(qkv + row * 3 * C + 2 * C, v + row * C, sizeof(float) * C);
        }
        cf_tensor *t = cf_tensor_leaf(&ctx, qkv, 3, (int[]){c->B, c->Tq, 3 * C}, 1);
        y = cf_attention_qkv(&ctx, t, c->H, &o);
        cf_backward(&ctx, y, dO);
        r.dq = malloc(sizeof(float) * nq); r.dk = malloc(sizeof(float) * nq); r.dv = malloc(sizeof(float) * nq);
        for (int64_t row = 0; row < (int64_t)c->B * c->Tq; row++) {
            memcpy(r.dq + row * C, t->grad + row * 3 * C, sizeof(float) * C);
            memcpy(r.dk + row * C, t->grad + row * 3 * C + C, sizeof(float) * C);
            memcpy(r.dv + row * C, t->grad + row * 3 * C + 2 * C, sizeof(float) * C);
        }
    } else {
        float *qc = dup_floats(q, nq), *kc = dup_floats(k, nk), *vc = dup_floats(v, nk);
        cf_tensor *tq = cf_tensor_leaf(&ctx, qc, 3, (int[]){c->B, c->Tq, C}, 1);
        cf_tensor *tk = selfattn ? tq : cf_tensor_leaf(&ctx, kc, 3, (int[]){c->B, c->Tk, C}, 1);
        cf_tensor *tv = selfattn ? tq : cf_tensor_leaf(&ctx, vc, 3, (int[]){c->B, c->Tk, C}, 1);
        y = cf_attention(&ctx, tq, tk, tv, c->H, &o);
        cf_backward(&ctx, y, dO);
        r.dq = dup_floats(tq->grad, nq);
        r.dk = dup_floats(tk->grad, nk);
        r.dv = dup_floats(tv->grad, nk);
        free(qc); free(kc); free(vc);
    }
    r.o = dup_floats(y->data, nq);
    r.peak = ctx.arena.peak;
    free(qkv);
    cf_ctx_free(&ctx);
    return r;
}

static double err_d(const float *a, const double *b, int64_t n) {
    double num = 0, den = 1e-2;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs(a[i] - b[i]);
        if (d > num || d != d) num = d != d ? INFINITY : d;
        if (fabs(b[i]) > den) den = fabs(b[i]);
    }
    return num / den;
}

/* the op (separate and fused) against the reference */
static void check_cfg(const cfg *c) {
    int C = c->H * c->Dh;
    int64_t nq = (int64_t)c->B * c->Tq * C, nk = (int64_t)c->B * c->Tk * C;
    data d = make_data(c, 1000 + c->Tq * 31 + c->Tk * 7 + c->Dh);
    uint64_t seed = 5;
    double *O = malloc(sizeof(double) * nq), *dq = malloc(sizeof(double) * nq);
    double *dk = malloc(sizeof(double) * nk), *dv = malloc(sizeof(double) * nk);
    reference(c, d.q, d.k, d.v, c->keep ? d.keep : NULL, cf_rng_key(seed, STEP, 0), d.dO, O, dq, dk, dv);
    result r = run_op(c, 0, 0, d.q, d.k, d.v, d.keep, d.dO, seed);
    char name[160];
    snprintf(name, sizeof name, "B=%d H=%d Tq=%d Tk=%d Dh=%d causal=%d keep=%d p=%.2f", c->B, c->H, c->Tq, c->Tk,
             c->Dh, c->causal, c->keep, c->p);
    double eo = err_d(r.o, O, nq), eq = err_d(r.dq, dq, nq), ek = err_d(r.dk, dk, nk), ev = err_d(r.dv, dv, nk);
    CHECK(eo < 1e-5, "%s: output rel err %.3g", name, eo);
    CHECK(eq < 1e-4 && ek < 1e-4 && ev < 1e-4, "%s: grad rel err dq %.3g dk %.3g dv %.3g", name, eq, ek, ev);
    /* queries that see no key: zero output and zero gradient */
    if (c->keep && c->causal && c->B > 1) {
        int zero = 1;
        for (int i = 0; i < c->Tq && i + c->Tk - c->Tq < 3; i++)
            for (int x = 0; x < C; x++) {
                int64_t at = ((int64_t)1 * c->Tq + i) * C + x;
                zero &= r.o[at] == 0 && r.dq[at] == 0;
            }
        CHECK(zero, "%s: a query with no visible key has nonzero output or gradient", name);
    }
    if (c->Tq == c->Tk) {
        result f = run_op(c, 1, 0, d.q, d.k, d.v, d.keep, d.dO, seed);
        CHECK(!memcmp(f.o, r.o, sizeof(float) * nq) && !memcmp(f.dq, r.dq, sizeof(float) * nq) &&
              !memcmp(f.dk, r.dk, sizeof(float) * nk) && !memcmp(f.dv, r.dv, sizeof(float) * nk),
              "%s: qkv variant differs from separate q, k, v", name);
        result_free(&f);
    }
    result_free(&r);
    free(O); free(dq); free(dk); free(dv);
    data_free(&d);
}

/* one tensor as q, k and v: its gradient is dQ + dK + dV, written by several heads and passes */
static void check_self(int causal, int threads) {
    cfg c = {2, 3, 70, 70, 16, causal, 1, 0};
    int64_t n = (int64_t)c.B * c.Tq * c.H * c.Dh;
    data d = make_data(&c, 77);
    double *O = malloc(sizeof(double) * n), *dq = malloc(sizeof(double) * n);
    double *dk = malloc(sizeof(double) * n), *dv = malloc(sizeof(double) * n);
    reference(&c, d.q, d.q, d.q, d.keep, 0, d.dO, O, dq, dk, dv);
    for (int64_t i = 0; i < n; i++) dq[i] += dk[i] + dv[i];
    omp_set_num_threads(threads);
    result r = run_op(&c, 0, 1, d.q, d.q, d.q, d.keep, d.dO, 1);
    double eo = err_d(r.o, O, n), eg = err_d(r.dq, dq, n);
    CHECK(eo < 2e-5 && eg < 1e-4, "self-attention causal=%d threads=%d: output err %.3g grad err %.3g", causal,
          threads, eo, eg);
    result_free(&r);
    free(O); free(dq); free(dk); free(dv);
    data_free(&d);
}

/* ---- gradient checks ------------------------------------------------------------------------- */
typedef struct gc_arg { int H; cf_attn_opts o; } gc_arg;
static cf_tensor *f_attn(cf_ctx *c, cf_tensor **in, void *arg) {
    gc_arg *a = arg;
    return cf_attention(c, in[0], in[1], in[2], a->H, &a->o);
}
static cf_tensor *f_qkv(cf_ctx *c, cf_tensor **in, void *arg) {
    gc_arg *a = arg;
    return cf_attention_qkv(c, in[0], a->H, &a->o);
}

static void gradchecks(void) {
    enum { B = 2, H = 2, Dh = 4, C = H * Dh };
    static float q[B * 9 * C], k[B * 11 * C], v[B * 11 * C], qkv[B * 6 * 3 * C];
    static uint8_t keep[B * 11], keep6[B * 6] = {1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 0};
    for (int j = 0; j < B * 11; j++) keep[j] = !(j == 1 || j == 13 || j == 14);
    t_fill_uniform(q, B * 9 * C, -1.5f, 1.5f, 11);
    t_fill_uniform(k, B * 11 * C, -1.5f, 1.5f, 12);
    t_fill_uniform(v, B * 11 * C, -1, 1, 13);
    t_fill_uniform(qkv, B * 6 * 3 * C, -1.5f, 1.5f, 14);
    /* Tq = 9 < Tk = 11, padding; q, k, v each alone (the others constant) and all at once */
    for (int causal = 0; causal < 2; causal++)
        for (int p = 0; p < 2; p++) {
            gc_arg a = {H, {.causal = causal, .dropout = p ? 0.3f : 0, .key_keep = keep}};
            gc_input all[3] = {{q, 3, {B, 9, C}, 1}, {k, 3, {B, 11, C}, 1}, {v, 3, {B, 11, C}, 1}};
            char name[64];
            snprintf(name, sizeof name, "attention causal=%d dropout=%d", causal, p);
            gradcheck(name, f_attn, &a, all, 3, 1e-2f, 1e-2);
            for (int only = 0; only < 3 && !p; only++) {
                gc_input one[3] = {{q, 3, {B, 9, C}, only == 0}, {k, 3, {B, 11, C}, only == 1},
                                   {v, 3, {B, 11, C}, only == 2}};
                snprintf(name, sizeof name, "attention causal=%d input %d alone", causal, only);
                gradcheck(name, f_attn, &a, one, 3, 1e-2f, 1e-2);
            }
        }
    for (int p = 0; p < 2; p++) {
        gc_arg a = {H, {.causal = 1, .dropout = p ? 0.3f : 0, .key_keep = keep6}};
        gc_input in[1] = {{qkv, 3, {B, 6, 3 * C}, 1}};
        gradcheck(p ? "attention_qkv dropout" : "attention_qkv", f_qkv, &a, in, 1, 1e-2f, 1e-2);
    }
}

/* ---- dropout statistics --------------------------------------------------------------------- */
static void dropout_mean(void) {
    cfg c = {1, 2, 12, 12, 8, 1, 0, 0.3f};
    int64_t n = (int64_t)c.Tq * c.H * c.Dh;
    data d = make_data(&c, 5);
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, (size_t)1 << 24, 16) == 0, "%s", cf_error_msg());
    cf_attn_opts plain = {.causal = 1}, drop = {.causal = 1, .dropout = c.p};
    cf_ctx_begin(&ctx, 0);
    int shape[3] = {1, c.Tq, c.H * c.Dh};
    cf_tensor *q = cf_tensor_leaf(&ctx, d.q, 3, shape, 0), *k = cf_tensor_leaf(&ctx, d.k, 3, shape, 0);
    cf_tensor *v = cf_tensor_leaf(&ctx, d.v, 3, shape, 0);
    float *base = dup_floats(cf_attention(&ctx, q, k, v, c.H, &plain)->data, n);
    /* evaluation mode ignores dropout */
    float *ev = cf_attention(&ctx, q, k, v, c.H, &drop)->data;
    CHECK(!memcmp(ev, base, sizeof(float) * n), "dropout active outside training");
    ctx.training = 1;
    double *mean = calloc(n, sizeof(double));
    int N = 4000, differs = 0;
    for (int s = 0; s < N; s++) {
        ctx.seed = (uint64_t)s;
        cf_ctx_begin(&ctx, 0);
        q = cf_tensor_leaf(&ctx, d.q, 3, shape, 0); k = cf_tensor_leaf(&ctx, d.k, 3, shape, 0);
        v = cf_tensor_leaf(&ctx, d.v, 3, shape, 0);
        float *y = cf_attention(&ctx, q, k, v, c.H, &drop)->data;
        for (int64_t i = 0; i < n; i++) mean[i] += y[i] / N;
        differs |= memcmp(y, base, sizeof(float) * n) != 0;
    }
    double worst = 0;
    for (int64_t i = 0; i < n; i++) worst = fmax(worst, fabs(mean[i] - base[i]));
    CHECK(differs, "dropout never changed the output");
    CHECK(worst < 0.03, "dropout: mean over %d seeds is %.3g away from the no-dropout output", N, worst);
    free(mean); free(base);
    cf_ctx_free(&ctx);
    data_free(&d);
}

/* ---- threads ---------------------------------------------------------------------------------- */
static int same(const result *a, const result *b, int64_t nq, int64_t nk) {
    return !memcmp(a->o, b->o, sizeof(float) * nq) && !memcmp(a->dq, b->dq, sizeof(float) * nq) &&
           !memcmp(a->dk, b->dk, sizeof(float) * nk) && !memcmp(a->dv, b->dv, sizeof(float) * nk);
}

/* B*H = 1 runs the two-pass backward at 2 or 3 threads and the per-head one at 1; B*H = 6 runs
 * per head at every count here: all must agree bitwise, and a rerun must repeat bitwise */
static void thread_invariance(void) {
    cfg cs[2] = {{1, 1, 150, 150, 24, 1, 1, 0.2f}, {2, 3, 130, 130, 16, 1, 1, 0.2f}};
    int nt0 = omp_get_max_threads();
    for (int t = 0; t < 2; t++) {
        cfg *c = &cs[t];
        int64_t nq = (int64_t)c->B * c->Tq * c->H * c->Dh, nk = nq;
        data d = make_data(c, 21);
        omp_set_num_threads(1);
        result r1 = run_op(c, t, 0, d.q, d.k, d.v, d.keep, d.dO, 3);
        for (int th = 1; th <= 3; th++) {
            omp_set_num_threads(th);
            result r = run_op(c, t, 0, d.q, d.k, d.v, d.keep, d.dO, 3);
            CHECK(same(&r, &r1, nq, nk), "B=%d H=%d: %d threads differ from 1 thread", c->B, c->H, th);
            result_free(&r);
        }
        omp_set_num_threads(nt0);
        result a = run_op(c, t, 0, d.q, d.k, d.v, d.keep, d.dO, 3);
        result b = run_op(c, t, 0, d.q, d.k, d.v, d.keep, d.dO, 3);
        CHECK(same(&a, &b, nq, nk), "B=%d H=%d: two runs at %d threads differ", c->B, c->H, nt0);
        result_free(&a); result_free(&b); result_free(&r1);
        data_free(&d);
    }
}

/* a checkpointed region replays the dropout mask: gradients bitwise equal to the plain graph.
 * (The scale keeps the region's output from being its first allocation, which cf_checkpoint
 * cannot move down.) */
static cf_tensor *region(cf_ctx *ctx, void *closure, cf_tensor *x) {
    return cf_attention_qkv(ctx, cf_scale(ctx, x, 0.5f), 2, closure);
}

static void checkpointed(void) {
    enum { B = 2, T = 70, C = 2 * 16 };
    static float x[B * T * 3 * C], dO[B * T * C];
    t_fill_uniform(x, B * T * 3 * C, -2, 2, 31);
    t_fill_uniform(dO, B * T * C, -1, 1, 32);
    cf_attn_opts o = {.causal = 1, .dropout = 0.2f};
    float *grad[2], *out[2];
    for (int ck = 0; ck < 2; ck++) {
        cf_ctx ctx;
        CF_ASSERT(cf_ctx_init(&ctx, (size_t)1 << 26, 64) == 0, "%s", cf_error_msg());
        ctx.training = 1;
        ctx.seed = 9;
        cf_ctx_begin(&ctx, 3);
        cf_tensor *t = cf_tensor_leaf(&ctx, x, 3, (int[]){B, T, 3 * C}, 1);
        cf_tensor *y0 = cf_attention_qkv(&ctx, t, 2, &o);   /* an earlier dropout call in the step */
        cf_tensor *y = ck ? cf_checkpoint(&ctx, region, &o, t) : region(&ctx, &o, t);
        cf_backward(&ctx, cf_add(&ctx, y, y0), dO);
        out[ck] = dup_floats(y->data, B * T * C);
        grad[ck] = dup_floats(t->grad, B * T * 3 * C);
        cf_ctx_free(&ctx);
    }
    CHECK(!memcmp(out[0], out[1], sizeof(float) * B * T * C) && !memcmp(grad[0], grad[1], sizeof(float) * B * T * 3 * C),
          "checkpointed attention with dropout differs from the plain graph");
    free(out[0]); free(out[1]); free(grad[0]); free(grad[1]);
}

/* forward + backward at T = 1024 keeps no T x T matrix: the arena peak stays far below T^2 floats */
static void memory_linear(void) {
    cfg c = {1, 1, 1024, 1024, 16, 1, 0, 0};
    data d = make_data(&c, 8);
    result r = run_op(&c, 0, 0, d.q, d.k, d.v, NULL, d.dO, 1);
    size_t tt = (size_t)c.Tq * c.Tk * sizeof(float);
    CHECK(r.peak < tt / 4, "arena peak %zu bytes at T=1024 (T x T floats would be %zu)", r.peak, tt);
    result_free(&r);
    data_free(&d);
}

int main(void) {
    int nt0 = omp_get_max_threads();
    static const int Ts[] = {1, 7, 65, 130}, Dhs[] = {8, 16, 64};
    for (int ti = 0; ti < 4; ti++)
        for (int di = 0; di < 3; di++)
            for (int causal = 0; causal < 2; causal++)
                for (int keep = 0; keep < 2; keep++) {
                    int H = (ti + di + keep) % 2 ? 3 : 1;
                    cfg c = {keep ? 3 : 2, H, Ts[ti], Ts[ti], Dhs[di], causal, keep, 0};
                    check_cfg(&c);
                }
    /* Tq != Tk (causal offset Tk - Tq; with Tq > Tk the first queries see nothing), Dh past one
     * 64-column chunk and not a multiple of 16, and dropout against the reference's mask */
    static const cfg more[] = {
        {2, 3, 1, 7, 16, 1, 0, 0},    {3, 1, 7, 65, 8, 1, 1, 0},   {3, 3, 65, 130, 64, 1, 1, 0},
        {2, 1, 3, 200, 16, 1, 0, 0},  {3, 3, 65, 130, 16, 0, 1, 0}, {2, 1, 70, 7, 16, 1, 0, 0},
        {3, 1, 70, 7, 8, 0, 1, 0},    {2, 3, 67, 67, 80, 1, 0, 0},  {3, 1, 33, 33, 24, 1, 1, 0},
        {3, 3, 130, 130, 16, 1, 1, 0.25f}, {2, 1, 65, 130, 64, 0, 0, 0.5f}, {3, 3, 7, 7, 8, 1, 1, 0.1f},
    };
    for (size_t i = 0; i < sizeof more / sizeof *more; i++) check_cfg(&more[i]);
    for (int th = 1; th <= 2; th++) { check_self(0, th); check_self(1, th); }
    omp_set_num_threads(nt0);
    gradchecks();
    dropout_mean();
    thread_invariance();
    checkpointed();
    memory_linear();
    TEST_MAIN_END();
}
