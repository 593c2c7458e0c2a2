/* Transformer-XL relative-position attention (cf_xl_attention, src/attention/xl.c) against a direct
 * double-precision computation of the paper's four terms (docs/attention.md section 7.2) written from
 * distances, without the rel_shift trick:
 *   a = q_i . k_j,  b = q_i . R_{mlen+i-j},  c = u . k_j,  d = v . R_{mlen+i-j},
 * where R_dist is row Tk-1-dist of rk; mask j <= mlen + i. Forward and every gradient (q, k, v,
 * rk, u, v_bias) for mlen 0 and > 0, H 1 and 3, with and without attention dropout; finite-
 * difference gradient checks; bitwise equality at 1 and 2 threads. Then the xl decoder: its
 * parameters, the relative sinusoids, two segments with memory against one long run, training on a
 * repeated batch, finite differences on a few parameters with a memory present, and bitwise equal
 * gradients with gradient checkpointing (memory and dropout replayed). */
#include <string.h>
#include <omp.h>
#include "gradcheck.h"
#include "cformer/attention.h"

typedef struct xcase { int B, H, Tq, mlen, Dh; float p; } xcase;

typedef struct xdata {
    float *q, *k, *v, *rk, *u, *vb;
} xdata;

static void xdata_make(const xcase *c, xdata *x, uint64_t seed) {
    int C = c->H * c->Dh, Tk = c->mlen + c->Tq;
    x->q = malloc(sizeof(float) * c->B * c->Tq * C);
    x->k = malloc(sizeof(float) * c->B * Tk * C);
    x->v = malloc(sizeof(float) * c->B * Tk * C);
    x->rk = malloc(sizeof(float) * Tk * C);
    x->u = malloc(sizeof(float) * C);
    x->vb = malloc(sizeof(float) * C);
    t_fill_uniform(x->q, (int64_t)c->B * c->Tq * C, -1, 1, seed);
    t_fill_uniform(x->k, (int64_t)c->B * Tk * C, -1, 1, seed + 1);
    t_fill_uniform(x->v, (int64_t)c->B * Tk * C, -1, 1, seed + 2);
    t_fill_uniform(x->rk, (int64_t)Tk * C, -1, 1, seed + 3);
    t_fill_uniform(x->u, C, -0.5f, 0.5f, seed + 4);
    t_fill_uniform(x->vb, C, -0.5f, 0.5f, seed + 5);
}

static void xdata_free(xdata *x) {
    free(x->q); free(x->k); free(x->v); free(x->rk); free(x->u); free(x->vb);
}

/* the op's documented dropout multiplier for element (b, h, i, j) */
static double ref_z(const xcase *c, uint64_t key, int b, int h, int i, int j) {
    if (c->p <= 0) return 1;
    int Tk = c->mlen + c->Tq;
    uint64_t idx = (uint64_t)((((int64_t)b * c->H + h) * c->Tq + i) * Tk + j);
    return cf_rng_uniform(key, idx) >= c->p ? 1.0 / (1.0 - c->p) : 0.0;
}

/* Reference forward O and the gradients of sum(O * dO), all in double. */
typedef struct xref { double *O, *dq, *dk, *dv, *drk, *du, *dvb; } xref;

static void reference(const xcase *c, const xdata *x, uint64_t key, const float *dO, xref *r) {
    int C = c->H * c->Dh, Tk = c->mlen + c->Tq, Tq = c->Tq, Dh = c->Dh, m = c->mlen;
    double sc = 1.0 / sqrt((double)Dh);
    double *P = malloc(sizeof(double) * Tk), *dP = malloc(sizeof(double) * Tk);
    for (int b = 0; b < c->B; b++)
        for (int h = 0; h < c->H; h++)
            for (int i = 0; i < Tq; i++) {
                const float *qi = x->q + ((int64_t)b * Tq + i) * C + h * Dh;
                const float *u = x->u + h * Dh, *vb = x->vb + h * Dh;
                int n = m + i + 1;
                double mx = -INFINITY;
                for (int j = 0; j < n; j++) {
                    const float *kj = x->k + ((int64_t)b * Tk + j) * C + h * Dh;
                    const float *R = x->rk + (int64_t)(Tk - 1 - (m + i - j)) * C + h * Dh;  /* distance m+i-j */
                    double ta = 0, tb = 0, tc = 0, td = 0;
                    for (int d = 0; d < Dh; d++) {
                        ta += (double)qi[d] * kj[d];
                        tb += (double)qi[d] * R[d];
                        tc += (double)u[d] * kj[d];
                        td += (double)vb[d] * R[d];
                    }
                    P[j] = (ta + tb + tc + td) * sc;
                    if (P[j] > mx) mx = P[j];
                }
                double s = 0;
                for (int j = 0; j < n; j++) { P[j] = exp(P[j] - mx); s += P[j]; }
                for (int j = 0; j < n; j++) P[j] /= s;
                double *O = r->O + ((int64_t)b * Tq + i) * C + h * Dh;
                const float *g = dO + ((int64_t)b * Tq + i) * C + h * Dh;
                for (int d = 0; d < Dh; d++) O[d] = 0;
                for (int j = 0; j < n; j++) {
                    const float *vj = x->v + ((int64_t)b * Tk + j) * C + h * Dh;
                    double z = ref_z(c, key, b, h, i, j), dpd = 0;
                    for (int d = 0; d < Dh; d++) {
                        O[d] += P[j] * z * vj[d];
                        r->dv[((int64_t)b * Tk + j) * C + h * Dh + d] += P[j] * z * g[d];
                        dpd += (double)g[d] * vj[d];
                    }
                    dP[j] = dpd * z;
                }
                double D = 0;
                for (int j = 0; j < n; j++) D += P[j] * dP[j];
                for (int j = 0; j < n; j++) {
                    double G = sc * P[j] * (dP[j] - D);
                    const float *kj = x->k + ((int64_t)b * Tk + j) * C + h * Dh;
                    int rrow = Tk - 1 - (m + i - j);
                    const float *R = x->rk + (int64_t)rrow * C + h * Dh;
                    for (int d = 0; d < Dh; d++) {
                        /* a: q.k, b: q.R, c: u.k, d: v.R */
                        r->dq[((int64_t)b * Tq + i) * C + h * Dh + d] += G * (kj[d] + R[d]);
                        r->dk[((int64_t)b * Tk + j) * C + h * Dh + d] += G * ((double)qi[d] + u[d]);
                        r->drk[(int64_t)rrow * C + h * Dh + d] += G * ((double)qi[d] + vb[d]);
                        r->du[h * Dh + d] += G * kj[d];
                        r->dvb[h * Dh + d] += G * R[d];
                    }
                }
            }
    free(P); free(dP);
}

static double max_rel(const float *a, const double *b, int64_t n) {
    double num = 0, den = 1e-3;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs(a[i] - b[i]);
        if (d > num || d != d) num = d != d ? INFINITY : d;
        if (fabs(b[i]) > den) den = fabs(b[i]);
    }
    return num / den;
}

/* run the op once with gradients; out/grads copied into caller buffers (NULL: skip) */
typedef struct xout { float *O, *dq, *dk, *dv, *drk, *du, *dvb; } xout;

static void run_op(const xcase *c, const xdata *x, const float *dO, xout *o, uint64_t *key_out) {
    int C = c->H * c->Dh, Tk = c->mlen + c->Tq;
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, (size_t)256 << 20, 1024) == 0, "%s", cf_error_msg());
    ctx.training = 1;
    ctx.seed = 77;
    cf_ctx_begin(&ctx, 5);
    if (key_out) *key_out = cf_rng_key(ctx.seed, ctx.step, ctx.rng_calls);
    cf_tensor *q = cf_tensor_leaf(&ctx, x->q, 3, (int[]){c->B, c->Tq, C}, 1);
    cf_tensor *k = cf_tensor_leaf(&ctx, x->k, 3, (int[]){c->B, Tk, C}, 1);
    cf_tensor *v = cf_tensor_leaf(&ctx, x->v, 3, (int[]){c->B, Tk, C}, 1);
    cf_tensor *rk = cf_tensor_leaf(&ctx, x->rk, 2, (int[]){Tk, C}, 1);
    cf_tensor *u = cf_tensor_leaf(&ctx, x->u, 2, (int[]){c->H, c->Dh}, 1);
    cf_tensor *vb = cf_tensor_leaf(&ctx, x->vb, 2, (int[]){c->H, c->Dh}, 1);
    cf_tensor *y = cf_xl_attention(&ctx, q, k, v, rk, u, vb, c->H, c->p);
    cf_backward(&ctx, y, dO);
    size_t f = sizeof(float);
    memcpy(o->O, y->data, f * y->numel);
    memcpy(o->dq, cf_grad(&ctx, q), f * q->numel);
    memcpy(o->dk, cf_grad(&ctx, k), f * k->numel);
    memcpy(o->dv, cf_grad(&ctx, v), f * v->numel);
    memcpy(o->drk, cf_grad(&ctx, rk), f * rk->numel);
    memcpy(o->du, cf_grad(&ctx, u), f * u->numel);
    memcpy(o->dvb, cf_grad(&ctx, vb), f * vb->numel);
    cf_ctx_free(&ctx);
}

static void xout_alloc(const xcase *c, xout *o) {
    int C = c->H * c->Dh, Tk = c->mlen + c->Tq;
    o->O = malloc(sizeof(float) * c->B * c->Tq * C);
    o->dq = malloc(sizeof(float) * c->B * c->Tq * C);
    o->dk = malloc(sizeof(float) * c->B * Tk * C);
    o->dv = malloc(sizeof(float) * c->B * Tk * C);
    o->drk = malloc(sizeof(float) * Tk * C);
    o->du = malloc(sizeof(float) * C);
    o->dvb = malloc(sizeof(float) * C);
}
static void xout_free(xout *o) {
    free(o->O); free(o->dq); free(o->dk); free(o->dv); free(o->drk); free(o->du); free(o->dvb);
}

static void test_reference(const xcase *c) {
    int C = c->H * c->Dh, Tk = c->mlen + c->Tq;
    int64_t nq = (int64_t)c->B * c->Tq * C, nk = (int64_t)c->B * Tk * C;
    xdata x;
    xdata_make(c, &x, 100 + c->Tq + c->mlen);
    float *dO = malloc(sizeof(float) * nq);
    t_fill_uniform(dO, nq, -1, 1, 7);
    xout o;
    xout_alloc(c, &o);
    uint64_t key;
    run_op(c, &x, dO, &o, &key);
    xref r = {calloc(nq, 8), calloc(nq, 8), calloc(nk, 8), calloc(nk, 8), calloc((size_t)Tk * C, 8), calloc(C, 8),
              calloc(C, 8)};
    reference(c, &x, key, dO, &r);
    const char *nm[7] = {"O", "dq", "dk", "dv", "drk", "du", "dv_bias"};
    float *got[7] = {o.O, o.dq, o.dk, o.dv, o.drk, o.du, o.dvb};
    double *want[7] = {r.O, r.dq, r.dk, r.dv, r.drk, r.du, r.dvb};
    int64_t len[7] = {nq, nq, nk, nk, (int64_t)Tk * C, C, C};
    for (int t = 0; t < 7; t++) {
        double e = max_rel(got[t], want[t], len[t]);
        CHECK(e < 2e-5, "xl B%d H%d Tq%d mlen%d Dh%d p%.1f: %s rel err %.3g", c->B, c->H, c->Tq, c->mlen, c->Dh,
              c->p, nm[t], e);
    }
    for (int t = 0; t < 7; t++) free(want[t]);
    xout_free(&o);
    xdata_free(&x);
    free(dO);
}

/* ---- gradient checks --------------------------------------------------------------------------- */
typedef struct gcarg { int H; float p; } gcarg;

static cf_tensor *gc_xl(cf_ctx *ctx, cf_tensor **in, void *arg) {
    gcarg *a = arg;
    return cf_xl_attention(ctx, in[0], in[1], in[2], in[3], in[4], in[5], a->H, a->p);
}

static void test_gradcheck(const xcase *c) {
    int C = c->H * c->Dh, Tk = c->mlen + c->Tq;
    xdata x;
    xdata_make(c, &x, 500 + c->H);
    gc_input ins[6] = {
        {x.q, 3, {c->B, c->Tq, C}, 1}, {x.k, 3, {c->B, Tk, C}, 1}, {x.v, 3, {c->B, Tk, C}, 1},
        {x.rk, 2, {Tk, C}, 1},         {x.u, 2, {c->H, c->Dh}, 1}, {x.vb, 2, {c->H, c->Dh}, 1},
    };
    gcarg a = {c->H, c->p};
    char name[64];
    snprintf(name, sizeof name, "xl H%d mlen%d p%.1f", c->H, c->mlen, c->p);
    gradcheck(name, gc_xl, &a, ins, 6, 1e-3f, 2e-2);
    xdata_free(&x);
}

/* ---- bitwise equality across thread counts ------------------------------------------------------ */
static void test_threads(const xcase *c) {
    int C = c->H * c->Dh, Tk = c->mlen + c->Tq;
    int64_t nq = (int64_t)c->B * c->Tq * C, nk = (int64_t)c->B * Tk * C;
    xdata x;
    xdata_make(c, &x, 900);
    float *dO = malloc(sizeof(float) * nq);
    t_fill_uniform(dO, nq, -1, 1, 8);
    xout o1, o2;
    xout_alloc(c, &o1);
    xout_alloc(c, &o2);
    int saved = cf_num_threads();
    cf_set_num_threads(1);
    run_op(c, &x, dO, &o1, NULL);
    cf_set_num_threads(2);
    run_op(c, &x, dO, &o2, NULL);
    cf_set_num_threads(saved);
    size_t f = sizeof(float);
    int same = !memcmp(o1.O, o2.O, f * nq) && !memcmp(o1.dq, o2.dq, f * nq) && !memcmp(o1.dk, o2.dk, f * nk) &&
               !memcmp(o1.dv, o2.dv, f * nk) && !memcmp(o1.drk, o2.drk, f * Tk * C) &&
               !memcmp(o1.du, o2.du, f * C) && !memcmp(o1.dvb, o2.dvb, f * C);
    CHECK(same, "xl B%d H%d Tq%d mlen%d p%.1f: 1 and 2 threads differ", c->B, c->H, c->Tq, c->mlen, c->p);
    xout_free(&o1);
    xout_free(&o2);
    xdata_free(&x);
    free(dO);
}

/* ---- arena: no Tq x Tk term kept for backward --------------------------------------------------- */
static void test_memory(void) {
    int B = 1, H = 2, Dh = 8, C = H * Dh, Tq = 256, mlen = 256, Tk = Tq + mlen;
    float *q = calloc((size_t)B * Tq * C, 4), *k = calloc((size_t)B * Tk * C, 4), *v = calloc((size_t)B * Tk * C, 4);
    float *rk = calloc((size_t)Tk * C, 4), *u = calloc(C, 4), *vb = calloc(C, 4);
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, (size_t)64 << 20, 64) == 0, "%s", cf_error_msg());
    cf_ctx_begin(&ctx, 0);
    cf_tensor *tq = cf_tensor_leaf(&ctx, q, 3, (int[]){B, Tq, C}, 1);
    cf_tensor *tk = cf_tensor_leaf(&ctx, k, 3, (int[]){B, Tk, C}, 1);
    cf_tensor *tv = cf_tensor_leaf(&ctx, v, 3, (int[]){B, Tk, C}, 1);
    cf_tensor *tr = cf_tensor_leaf(&ctx, rk, 2, (int[]){Tk, C}, 1);
    cf_tensor *tu = cf_tensor_leaf(&ctx, u, 2, (int[]){H, Dh}, 1);
    cf_tensor *tb = cf_tensor_leaf(&ctx, vb, 2, (int[]){H, Dh}, 1);
    size_t before = ctx.arena.used;
    cf_xl_attention(&ctx, tq, tk, tv, tr, tu, tb, H, 0);
    size_t kept = ctx.arena.used - before;
    /* output + LSE + the packed rk/u/v copy, with headers: far below one Tq x Tk matrix per head */
    size_t tt = (size_t)B * H * Tq * Tk * sizeof(float);
    CHECK(kept < tt / 4, "xl attention keeps %zu bytes (one T x T per head would be %zu)", kept, tt);
    cf_ctx_free(&ctx);
    free(q); free(k); free(v); free(rk); free(u); free(vb);
}

/* ---- the xl decoder (deliverable of model.attention.type "xl") ------------------------------------ */
#include "cformer/train.h"

static void make_model(cf_config *c, cf_model *m, const char *const *extra, int n_extra) {
    const char *sets[16] = {"model.d_model=16", "model.n_layers=2", "model.n_heads=2", "model.vocab_size=64",
                            "train.batch_size=2", "train.seq_len=6",
                            "model.attention={\"type\":\"xl\",\"mem_len\":6,\"clamp_len\":-1}"};
    int n = 7;
    for (int i = 0; i < n_extra; i++) sets[n++] = extra[i];
    CF_ASSERT(cf_config_parse(c, "{}", sets, n, 0) == 0, "%s", cf_error_msg());
    CF_ASSERT(cf_model_init(m, &c->model, 1) == 0, "%s", cf_error_msg());
}

static void make_batch(int B, int T, int V, int shift, int32_t *x, int32_t *y) {
    const char *text = "the quick brown fox jumps over the lazy dog; ";
    int L = (int)strlen(text);
    for (int i = 0; i < B * T; i++) {
        int p = (i % T) + shift + 7 * (i / T);
        x[i] = (uint8_t)text[p % L] % V;
        y[i] = (uint8_t)text[(p + 1) % L] % V;
    }
}

static void test_sinusoids(void) {
    float R[5 * 6];
    cf_xl_sinusoids(R, 5, 6, -1);
    double err = 0;
    for (int j = 0; j < 5; j++)
        for (int i = 0; i < 3; i++) {
            double p = 4 - j, f = 1.0 / pow(10000.0, 2.0 * i / 6);
            err = fmax(err, fabs(R[j * 6 + i] - sin(p * f)));
            err = fmax(err, fabs(R[j * 6 + 3 + i] - cos(p * f)));
        }
    CHECK(err < 1e-6, "xl sinusoids: err %.3g", err);
    float C[5 * 6];
    cf_xl_sinusoids(C, 5, 6, 2);
    CHECK(!memcmp(C, R + 2 * 6, sizeof(float) * 6) && !memcmp(C + 6, R + 2 * 6, sizeof(float) * 6) &&
          !memcmp(C + 12, R + 12, sizeof(float) * 18), "xl sinusoids: clamp_len 2 does not reuse distance 2");
}

static void test_model_params(void) {
    cf_config c;
    cf_model m;
    make_model(&c, &m, NULL, 0);
    CHECK(cf_params_find(&m.params, "r_w_bias") && cf_params_find(&m.params, "r_r_bias") &&
          cf_params_find(&m.params, "blocks.0.attn.r_net.weight") && cf_params_find(&m.params, "blocks.1.attn.r_net.weight"),
          "xl model: r_w_bias, r_r_bias or r_net missing");
    cf_tensor *u = cf_params_find(&m.params, "r_w_bias");
    CHECK(u && u->ndim == 2 && u->shape[0] == 2 && u->shape[1] == 8, "r_w_bias shape %s", u ? cf_shape_str(u) : "-");
    CHECK(!cf_params_find(&m.params, "pos_emb.weight") && !m.pos_table, "xl model: absolute positions present");
    cf_model_free(&m);
}

/* Two segments with memory give the logits of the second half of one run over both without
 * memory (mem_len >= T, causal: the first half's hidden states are the same either way). */
static void test_memory_equivalence(const char *norm) {
    const char *extra[2] = {norm};
    cf_config c;
    cf_model m;
    make_model(&c, &m, extra, 1);
    int B = 2, T = 6, V = c.model.vocab_size;
    int32_t x[2 * 12], y[2 * 12], x1[2 * 6], x2[2 * 6], y1[2 * 6];
    make_batch(B, 2 * T, V, 0, x, y);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            x1[b * T + t] = x[b * 2 * T + t];
            x2[b * T + t] = x[b * 2 * T + T + t];
            y1[b * T + t] = y[b * 2 * T + t];
        }
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, cf_model_arena_bytes(&c.model, B, 2 * T), 1 << 14) == 0, "%s", cf_error_msg());
    ctx.training = 1;   /* memory is read and written in training; dropout is 0 */
    cf_ctx_begin(&ctx, 0);
    cf_model_reset_memory(&m);
    cf_tensor *full = cf_model_logits(&m, &ctx, x, B, 2 * T);
    float *want = malloc(sizeof(float) * B * T * V);
    for (int b = 0; b < B; b++)
        memcpy(want + (size_t)b * T * V, full->data + ((size_t)b * 2 * T + T) * V, sizeof(float) * T * V);
    cf_model_reset_memory(&m);
    cf_ctx_begin(&ctx, 0);
    cf_tensor *l1 = cf_model_logits(&m, &ctx, x1, B, T);
    CHECK(m.rec.used[0] == T && m.rec.used[1] == T, "memory rows %d %d after one segment", m.rec.used[0], m.rec.used[1]);
    /* layer 0's memory is its input: the embeddings times sqrt(D) */
    double e0 = 0;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int d = 0; d < 16; d++)
                e0 = fmax(e0, fabs(m.rec.arr[0][0][((size_t)b * 6 + t) * 16 + d] - 4.0f * m.tok_emb->data[x1[b * T + t] * 16 + d]));
    CHECK(e0 < 1e-6, "layer 0 memory is not its input (err %.3g)", e0);
    (void)l1;
    cf_ctx_begin(&ctx, 1);
    cf_tensor *l2 = cf_model_logits(&m, &ctx, x2, B, T);
    double e = t_max_rel_err(l2->data, want, (int64_t)B * T * V, 1e-3);
    printf("xl %s: segment with memory vs one long run: rel err %.3g\n", norm, e);
    CHECK(e < 1e-4, "xl %s: segment with memory vs one long run: rel err %.3g", norm, e);
    /* without memory the second segment differs */
    cf_model_reset_memory(&m);
    cf_ctx_begin(&ctx, 2);
    cf_tensor *l3 = cf_model_logits(&m, &ctx, x2, B, T);
    CHECK(t_max_rel_err(l3->data, want, (int64_t)B * T * V, 1e-3) > 1e-3, "xl %s: the memory changes nothing", norm);
    /* outside training no memory is used or written */
    cf_model_reset_memory(&m);
    ctx.training = 0;
    cf_ctx_begin(&ctx, 3);
    cf_model_logits(&m, &ctx, x1, B, T);
    CHECK(m.rec.used[0] == 0, "evaluation wrote the memory");
    (void)y1;
    free(want);
    cf_ctx_free(&ctx);
    cf_model_free(&m);
}

static void test_model_trains(const char *norm) {
    const char *extra[1] = {norm};
    cf_config c;
    cf_model m;
    make_model(&c, &m, extra, 1);
    int B = 2, T = 6, V = c.model.vocab_size;
    int32_t x[12], y[12];
    make_batch(B, T, V, 3, x, y);
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, cf_model_arena_bytes(&c.model, B, T), 1 << 14) == 0, "%s", cf_error_msg());
    ctx.training = 1;
    ctx.seed = 1;
    cf_optim opt;
    cf_optim_init(&opt, c.train.optimizer, &m.params);
    float first = 0, last = 0;
    int finite = 1;
    for (int s = 0; s < 15; s++) {
        cf_ctx_begin(&ctx, (uint64_t)s);
        cf_params_zero_grad(&m.params);
        cf_tensor *loss = cf_model_loss(&m, &ctx, x, y, B, T, NULL);
        cf_backward(&ctx, loss, NULL);
        float g = cf_clip_grad_norm(&m.params, 1.0f);
        finite &= isfinite(loss->data[0]) && isfinite(g);
        if (s == 0) first = loss->data[0];
        last = loss->data[0];
        cf_optim_step(&opt, &m.params, 1e-2f, &c.train);
    }
    printf("xl %s: loss %.4f -> %.4f in 15 steps (memory carried)\n", norm, first, last);
    CHECK(finite, "xl %s: a loss or gradient norm is not finite", norm);
    CHECK(last < first - 0.5f, "xl %s: loss %.4f -> %.4f does not go down", norm, first, last);
    cf_optim_free(&opt);
    cf_ctx_free(&ctx);
    cf_model_free(&m);
}

/* memory state save / restore, so that finite differences see the same memory each time */
static float *mem_save(const cf_model *m, int M, int D, int *used) {
    float *s = malloc(sizeof(float) * m->n_blocks * m->rec.batch * M * D);
    for (int l = 0; l < m->n_blocks; l++) {
        used[l] = m->rec.used[l];
        memcpy(s + (size_t)l * m->rec.batch * M * D, m->rec.arr[0][l], sizeof(float) * m->rec.batch * M * D);
    }
    return s;
}
static void mem_restore(cf_model *m, const float *s, int M, int D, const int *used) {
    for (int l = 0; l < m->n_blocks; l++) {
        m->rec.used[l] = used[l];
        memcpy(m->rec.arr[0][l], s + (size_t)l * m->rec.batch * M * D, sizeof(float) * m->rec.batch * M * D);
    }
}

static void test_model_gradcheck(void) {
    const char *extra[2] = {"model.init_std=0.2", "model.norm_position=post"};
    cf_config c;
    cf_model m;
    make_model(&c, &m, extra, 2);
    int B = 2, T = 6, V = c.model.vocab_size, M = 6, D = 16;
    int32_t x[12], y[12], x0[12], y0[12];
    make_batch(B, T, V, 0, x0, y0);
    make_batch(B, T, V, 5, x, y);
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, cf_model_arena_bytes(&c.model, B, T), 1 << 14) == 0, "%s", cf_error_msg());
    ctx.training = 1;
    cf_ctx_begin(&ctx, 0);
    cf_model_loss(&m, &ctx, x0, y0, B, T, NULL);       /* fills the memory */
    int used[2];
    float *saved = mem_save(&m, M, D, used);
    cf_ctx_begin(&ctx, 1);
    cf_params_zero_grad(&m.params);
    cf_backward(&ctx, cf_model_loss(&m, &ctx, x, y, B, T, NULL), NULL);
    const char *names[] = {"r_w_bias", "r_r_bias", "blocks.0.attn.r_net.weight", "blocks.1.attn.qkv.weight",
                           "blocks.0.attn.qkv.weight"};
    for (int p = 0; p < 5; p++) {
        cf_tensor *t = cf_params_find(&m.params, names[p]);
        /* the three elements with the largest analytic gradient */
        int idx[3] = {0, 0, 0};
        float gmax = 0;
        for (int r = 0; r < 3; r++) {
            float best = -1;
            for (int64_t j = 0; j < t->numel; j++) {
                int taken = 0;
                for (int q = 0; q < r; q++) taken |= idx[q] == j;
                if (!taken && fabsf(t->grad[j]) > best) { best = fabsf(t->grad[j]); idx[r] = (int)j; }
            }
            if (r == 0) gmax = best;
        }
        double worst = 0;
        for (int r = 0; r < 3; r++) {
            float x0v = t->data[idx[r]], h = 1e-2f;
            double f[2];
            for (int sgn = 0; sgn < 2; sgn++) {
                t->data[idx[r]] = x0v + (sgn ? -h : h);
                mem_restore(&m, saved, M, D, used);
                cf_ctx_begin(&ctx, 1);
                int ge = ctx.grad_enabled;
                ctx.grad_enabled = 0;
                f[sgn] = cf_model_loss(&m, &ctx, x, y, B, T, NULL)->data[0];
                ctx.grad_enabled = ge;
            }
            t->data[idx[r]] = x0v;
            double num = (f[0] - f[1]) / (2.0 * h), err = fabs(num - t->grad[idx[r]]) / fmax(gmax, 1e-3);
            if (err > worst) worst = err;
        }
        printf("xl model gradient of %s: max rel err %.3g (max |g| %.3g)\n", names[p], worst, gmax);
        CHECK(gmax > 1e-4 && worst < 5e-2, "xl model gradient of %s: max rel err %.3g (max |g| %.3g)", names[p],
              worst, gmax);
    }
    free(saved);
    cf_ctx_free(&ctx);
    cf_model_free(&m);
}

/* gradient checkpointing replays the memory and the dropout: bitwise the same gradients */
static void test_model_checkpoint(void) {
    const char *extra[1] = {"model.dropout=0.1"};
    cf_config c;
    cf_model m;
    make_model(&c, &m, extra, 1);
    int B = 2, T = 6, V = c.model.vocab_size;
    int32_t x[12], y[12];
    make_batch(B, T, V, 2, x, y);
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, cf_model_arena_bytes(&c.model, B, T), 1 << 14) == 0, "%s", cf_error_msg());
    ctx.training = 1;
    ctx.seed = 3;
    float *g[2];
    float loss[2];
    for (int k = 0; k < 2; k++) {
        cf_model_set_checkpointing(&m, k);
        cf_model_reset_memory(&m);
        for (int s = 0; s < 2; s++) {
            cf_ctx_begin(&ctx, (uint64_t)s);
            cf_params_zero_grad(&m.params);
            cf_tensor *l = cf_model_loss(&m, &ctx, x, y, B, T, NULL);
            cf_backward(&ctx, l, NULL);
            loss[k] = l->data[0];
        }
        g[k] = malloc(sizeof(float) * m.params.numel);
        memcpy(g[k], m.params.grads, sizeof(float) * m.params.numel);
    }
    CHECK(loss[0] == loss[1] && !memcmp(g[0], g[1], sizeof(float) * m.params.numel),
          "xl: gradient checkpointing changes the loss (%.6f vs %.6f) or the gradients", loss[0], loss[1]);
    free(g[0]); free(g[1]);
    cf_ctx_free(&ctx);
    cf_model_free(&m);
}

int main(void) {
    CHECK(cf_op_table_check() == 0, "%s", cf_error_msg());
    const xcase ref_cases[] = {
        {2, 1, 5, 0, 4, 0},  {2, 3, 7, 4, 8, 0},   {1, 3, 6, 9, 5, 0}, {2, 1, 4, 3, 16, 0},
        {2, 3, 7, 4, 8, 0.3f}, {1, 1, 9, 0, 4, 0.5f}, {2, 2, 24, 16, 16, 0}, {3, 3, 20, 12, 12, 0.2f},
    };
    for (size_t i = 0; i < sizeof ref_cases / sizeof *ref_cases; i++) test_reference(&ref_cases[i]);
    const xcase gc_cases[] = {
        {2, 1, 3, 0, 3, 0}, {2, 3, 3, 2, 2, 0}, {1, 1, 4, 3, 3, 0}, {2, 3, 3, 2, 2, 0.3f},
    };
    for (size_t i = 0; i < sizeof gc_cases / sizeof *gc_cases; i++) test_gradcheck(&gc_cases[i]);
    const xcase th_cases[] = {{2, 3, 24, 16, 16, 0}, {2, 3, 24, 16, 16, 0.25f}, {4, 1, 32, 0, 32, 0.1f}};
    for (size_t i = 0; i < sizeof th_cases / sizeof *th_cases; i++) test_threads(&th_cases[i]);
    test_memory();
    test_sinusoids();
    test_model_params();
    test_memory_equivalence("model.norm_position=pre");
    test_memory_equivalence("model.norm_position=post");
    test_model_trains("model.norm_position=pre");
    test_model_trains("model.norm_position=post");
    test_model_gradcheck();
    test_model_checkpoint();
    TEST_MAIN_END();
}
