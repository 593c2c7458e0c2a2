/* The block options' ops (src/ops/heads.c, src/ops/activation.c) and ALiBi in the softmax kernels:
 * silu and the gated unit, rope, QK-norm and the repetition of shared key/value heads against
 * references written here in double and by finite differences; cf_rope_rows and cf_qk_norm_rows
 * against the ops;
 * ALiBi slopes against the paper's list; full (fp32 and bf16), window and sparse attention with
 * ALiBi against dense softmax attention in double with the bias and the pattern's mask, forward
 * and every gradient, causal and bidirectional, lengths that leave partial blocks; and bitwise
 * equality of every op across 1 and 2 threads. */
#include <string.h>
#include <omp.h>
#include "gradcheck.h"
#include "cformer/attention.h"

/* ---- silu and glu ---------------------------------------------------------------------------------- */
static cf_tensor *f_silu(cf_ctx *c, cf_tensor **in, void *arg) { (void)arg; return cf_silu(c, in[0]); }
static cf_tensor *f_glu(cf_ctx *c, cf_tensor **in, void *arg) { return cf_glu(c, in[0], in[1], *(cf_act_kind *)arg); }

static void test_activations(void) {
    float x[24], y[24];
    t_fill_uniform(x, 24, -4, 4, 1);
    t_fill_uniform(y, 24, -2, 2, 2);
    for (int i = 0; i < 24; i++) x[i] = x[i] < 0 ? x[i] - 0.05f : x[i] + 0.05f;   /* off relu's kink */
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, (size_t)1 << 24, 1 << 8) == 0, "%s", cf_error_msg());
    cf_ctx_begin(&ctx, 0);
    cf_tensor *s = cf_silu(&ctx, cf_tensor_leaf(&ctx, x, 1, (int[]){24}, 0));
    double worst = 0;
    for (int i = 0; i < 24; i++) {
        double r = x[i] / (1.0 + exp(-(double)x[i])), e = fabs(s->data[i] - r);
        if (e > worst) worst = e;
    }
    CHECK(worst < 1e-6, "silu forward: max abs err %.3g", worst);
    cf_ctx_free(&ctx);
    /* a dense sweep over [-100, 100], past the exponential's clamps: silu relative to its size
     * (floor 1e-3), its derivative (within [-0.1, 1.1]) absolute */
    {
        int n = 1 << 20;
        float *xs = malloc(sizeof(float) * n), *ones = malloc(sizeof(float) * n);
        for (int i = 0; i < n; i++) { xs[i] = -100.0f + 200.0f * (float)i / (float)(n - 1); ones[i] = 1; }
        CF_ASSERT(cf_ctx_init(&ctx, (size_t)1 << 26, 1 << 8) == 0, "%s", cf_error_msg());
        cf_ctx_begin(&ctx, 0);
        ctx.training = 1;
        cf_tensor *X = cf_tensor_leaf(&ctx, xs, 1, &n, 1), *Y = cf_silu(&ctx, X);
        cf_backward(&ctx, Y, ones);
        double ey = 0, eg = 0;
        for (int i = 0; i < n; i++) {
            double v = xs[i], sg = 1.0 / (1.0 + exp(-v)), y = v * sg, g = sg * (1 + v * (1 - sg));
            if (fabs(y) > 1e-30) ey = fmax(ey, fabs(Y->data[i] - y) / fmax(fabs(y), 1e-3));
            eg = fmax(eg, fabs(X->grad[i] - g));
        }
        CHECK(ey < 1e-6 && eg < 1e-6, "silu sweep: output err %.3g, derivative err %.3g", ey, eg);
        cf_ctx_free(&ctx);
        free(xs);
        free(ones);
    }
    gc_input in1[1] = {{x, 2, {4, 6}, 1}};
    gradcheck("silu", f_silu, NULL, in1, 1, 1e-3f, 2e-3);
    for (int a = CF_ACT_GELU; a <= CF_ACT_SILU; a++) {
        cf_act_kind act = (cf_act_kind)a;
        gc_input in2[2] = {{x, 2, {4, 6}, 1}, {y, 2, {4, 6}, 1}};
        char name[32];
        snprintf(name, sizeof name, "glu %s", cf_act_names[a]);
        gradcheck(name, f_glu, &act, in2, 2, 1e-3f, 2e-3);
    }
}

/* ---- rope, qk-norm, kv repeat --------------------------------------------------------------------- */
typedef struct hcase { int B, T, H, Hkv, Dh, rot; float theta; int64_t pos0; } hcase;

static cf_tensor *f_rope(cf_ctx *c, cf_tensor **in, void *arg) {
    const hcase *h = arg;
    return cf_rope(c, in[0], h->H, h->Hkv, h->rot, h->theta, h->pos0);
}
static cf_tensor *f_qkn(cf_ctx *c, cf_tensor **in, void *arg) {
    const hcase *h = arg;
    return cf_qk_norm(c, in[0], in[1], in[2], h->H, h->Hkv, 1e-5f);
}
static cf_tensor *f_rep(cf_ctx *c, cf_tensor **in, void *arg) {
    const hcase *h = arg;
    return cf_kv_repeat(c, in[0], h->H, h->Hkv);
}

/* rope in double: column d of a query or key head at position p, from the definition */
static double rope_ref(const float *xh, int d, int rot, double theta, int64_t p) {
    if (d >= rot) return xh[d];
    int half = rot / 2, i = d % half;
    double a = (double)p * pow(theta, -2.0 * i / rot), c = cos(a), s = sin(a);
    return d < half ? xh[i] * c - xh[i + half] * s : xh[i] * s + xh[i + half] * c;
}

static void test_heads_ops(void) {
    hcase hc[] = {{2, 5, 4, 2, 8, 8, 10000.0f, 0}, {1, 7, 4, 1, 10, 6, 500.0f, 3}, {2, 3, 2, 2, 6, 2, 10000.0f, 1000}};
    for (int ci = 0; ci < 3; ci++) {
        const hcase *h = &hc[ci];
        int C = (h->H + 2 * h->Hkv) * h->Dh, n = h->B * h->T * C;
        float *x = malloc(sizeof(float) * n), wq[16], wk[16];
        t_fill_uniform(x, n, -1, 1, 10 + ci);
        t_fill_uniform(wq, 16, 0.5f, 1.5f, 20 + ci);
        t_fill_uniform(wk, 16, 0.5f, 1.5f, 30 + ci);

        /* forward against the definitions */
        cf_ctx ctx;
        CF_ASSERT(cf_ctx_init(&ctx, (size_t)1 << 24, 1 << 8) == 0, "%s", cf_error_msg());
        cf_ctx_begin(&ctx, 0);
        cf_tensor *X = cf_tensor_leaf(&ctx, x, 3, (int[]){h->B, h->T, C}, 0);
        cf_tensor *R = cf_rope(&ctx, X, h->H, h->Hkv, h->rot, h->theta, h->pos0);
        cf_tensor *N = cf_qk_norm(&ctx, X, cf_tensor_leaf(&ctx, wq, 1, &h->Dh, 0), cf_tensor_leaf(&ctx, wk, 1, &h->Dh, 0),
                                  h->H, h->Hkv, 1e-5f);
        cf_tensor *P = cf_kv_repeat(&ctx, X, h->H, h->Hkv);
        double er = 0, en = 0, ep = 0;
        int D = h->H * h->Dh, g = h->H / h->Hkv;
        for (int r = 0; r < h->B * h->T; r++) {
            int64_t pos = h->pos0 + r % h->T;
            const float *xr = x + (int64_t)r * C;
            for (int hd = 0; hd < h->H + 2 * h->Hkv; hd++) {
                const float *xh = xr + hd * h->Dh;
                double ss = 0;
                for (int d = 0; d < h->Dh; d++) ss += (double)xh[d] * xh[d];
                double rs = 1.0 / sqrt(ss / h->Dh + 1e-5);
                for (int d = 0; d < h->Dh; d++) {
                    int at = r * C + hd * h->Dh + d, qk = hd < h->H + h->Hkv;
                    double want = qk ? rope_ref(xh, d, h->rot, h->theta, pos) : xh[d];
                    er = fmax(er, fabs(R->data[at] - want));
                    double wn = !qk ? xh[d] : (hd < h->H ? wq[d] : wk[d]) * xh[d] * rs;
                    en = fmax(en, fabs(N->data[at] - wn));
                }
            }
            for (int part = 0; part < 3; part++)
                for (int hd = 0; hd < h->H; hd++)
                    for (int d = 0; d < h->Dh; d++) {
                        int src = part == 0 ? hd * h->Dh + d : D + (part - 1) * h->Hkv * h->Dh + (hd / g) * h->Dh + d;
                        ep = fmax(ep, fabs(P->data[(int64_t)r * 3 * D + part * D + hd * h->Dh + d] - xr[src]));
                    }
        }
        CHECK(er < 2e-6, "rope case %d forward: max abs err %.3g", ci, er);
        CHECK(en < 2e-6, "qk_norm case %d forward: max abs err %.3g", ci, en);
        CHECK(ep == 0, "kv_repeat case %d forward: max abs err %.3g", ci, ep);

        /* cf_rope_rows on plain floats gives the op's bits, row by row at its absolute positions */
        float *y = malloc(sizeof(float) * n);
        memcpy(y, x, sizeof(float) * n);
        for (int b = 0; b < h->B; b++)
            for (int t = 0; t < h->T; t++)   /* one row at a time, as cached decoding calls it */
                cf_rope_rows(y + ((int64_t)b * h->T + t) * C, 1, C, h->H + h->Hkv, h->Dh, h->rot, h->theta, h->pos0 + t);
        CHECK(!memcmp(y, R->data, sizeof(float) * n), "rope case %d: cf_rope_rows differs from the op", ci);
        memcpy(y, x, sizeof(float) * n);
        cf_qk_norm_rows(y, h->B * h->T, C, h->H, h->Hkv, h->Dh, wq, wk, 1e-5f);
        CHECK(!memcmp(y, N->data, sizeof(float) * n), "qk_norm case %d: cf_qk_norm_rows differs from the op", ci);
        free(y);
        cf_ctx_free(&ctx);

        char name[64];
        gc_input in[3] = {{x, 3, {h->B, h->T, C}, 1}, {wq, 1, {h->Dh}, 1}, {wk, 1, {h->Dh}, 1}};
        snprintf(name, sizeof name, "rope case %d", ci);
        gradcheck(name, f_rope, (void *)h, in, 1, 1e-3f, 2e-3);
        snprintf(name, sizeof name, "qk_norm case %d", ci);
        gradcheck(name, f_qkn, (void *)h, in, 3, 1e-3f, 3e-3);
        snprintf(name, sizeof name, "kv_repeat case %d", ci);
        gradcheck(name, f_rep, (void *)h, in, 1, 1e-3f, 2e-3);
        free(x);
    }
}

/* ---- ALiBi slopes --------------------------------------------------------------------------------- */
static void test_slopes(void) {
    /* the reference implementation's get_slopes(8) and get_slopes(6) */
    double s8[8] = {0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.0078125, 0.00390625};
    double s6[6] = {0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125};
    int ok = 1;
    for (int h = 0; h < 8; h++) ok &= fabs(cf_alibi_slope(h, 8) - s8[h]) < 1e-9;
    for (int h = 0; h < 6; h++) ok &= fabs(cf_alibi_slope(h, 6) - s6[h]) < 1e-12;
    CHECK(ok, "alibi slopes differ from the paper's for 8 and 6 heads");
}

/* ---- ALiBi in the softmax kernels ------------------------------------------------------------------ */
typedef struct acase { cf_attn_kind type; int window, stride, c, causal, B, H, T, Dh; } acase;

/* what query i sees of key j (docs/attention.md sections 3, 4.1; combine "merged") */
static int sees(const acase *c, int i, int j) {
    if (c->causal && j > i) return 0;
    int d = i > j ? i - j : j - i, l = c->stride;
    switch (c->type) {
    case CF_ATTN_WINDOW: return d <= c->window;
    case CF_ATTN_SPARSE_STRIDED: return d < l || d % l == 0;
    case CF_ATTN_SPARSE_FIXED: return j / l == i / l || j % l >= l - c->c;
    default: return 1;
    }
}

/* dense attention with the bias -m_h |i - j| in double; gradients of sum(O * dO) into dqkv */
static void alibi_reference(const acase *c, const float *qkv, const float *dO, double *O, double *dqkv) {
    int C = c->H * c->Dh, T = c->T, Dh = c->Dh;
    int64_t s3 = 3 * C;
    double scale = 1.0 / sqrt((double)Dh), *S = malloc(sizeof(double) * T), *P = malloc(sizeof(double) * T);
    memset(dqkv, 0, sizeof(double) * c->B * T * s3);
    for (int b = 0; b < c->B; b++)
        for (int h = 0; h < c->H; h++) {
            double m = cf_alibi_slope(h, c->H);
            for (int i = 0; i < T; i++) {
                const float *qi = qkv + ((int64_t)b * T + i) * s3 + h * Dh, *gi = dO + ((int64_t)b * T + i) * C + h * Dh;
                double *oi = O + ((int64_t)b * T + i) * C + h * Dh, mx = -INFINITY, sum = 0, D = 0;
                for (int j = 0; j < T; j++) {
                    const float *kj = qkv + ((int64_t)b * T + j) * s3 + C + h * Dh;
                    double s = 0;
                    for (int d = 0; d < Dh; d++) s += (double)qi[d] * kj[d];
                    S[j] = sees(c, i, j) ? s * scale - m * abs(i - j) : -INFINITY;
                    if (S[j] > mx) mx = S[j];
                }
                for (int j = 0; j < T; j++) sum += P[j] = S[j] == -INFINITY ? 0 : exp(S[j] - mx);
                for (int d = 0; d < Dh; d++) oi[d] = 0;
                for (int j = 0; j < T; j++) {
                    P[j] /= sum;
                    const float *vj = qkv + ((int64_t)b * T + j) * s3 + 2 * C + h * Dh;
                    double dp = 0;
                    for (int d = 0; d < Dh; d++) {
                        oi[d] += P[j] * vj[d];
                        dp += (double)gi[d] * vj[d];
                        dqkv[((int64_t)b * T + j) * s3 + 2 * C + h * Dh + d] += P[j] * gi[d];
                    }
                    S[j] = dp;
                    D += P[j] * dp;
                }
                for (int j = 0; j < T; j++) {
                    if (P[j] == 0) continue;
                    double ds = P[j] * (S[j] - D) * scale;
                    const float *kj = qkv + ((int64_t)b * T + j) * s3 + C + h * Dh;
                    for (int d = 0; d < Dh; d++) {
                        dqkv[((int64_t)b * T + i) * s3 + h * Dh + d] += ds * kj[d];
                        dqkv[((int64_t)b * T + j) * s3 + C + h * Dh + d] += ds * qi[d];
                    }
                }
            }
        }
    free(S); free(P);
}

static cf_tensor *run_alibi(cf_ctx *ctx, const acase *c, cf_tensor *qkv) {
    cf_attn_opts o = {.causal = c->causal, .alibi = 1};
    if (c->type == CF_ATTN_FULL) return cf_attention_qkv(ctx, qkv, c->H, &o);
    cf_attn_pattern p = {.type = c->type, .window = c->window, .stride = c->stride, .c = c->c, .parts = 3};
    return cf_masked_attention_qkv(ctx, qkv, c->H, &p, &o);
}

static cf_tensor *f_alibi(cf_ctx *ctx, cf_tensor **in, void *arg) { return run_alibi(ctx, arg, in[0]); }

/* output and qkv gradient of one run at nt threads (bf16 products when bf16) */
static void alibi_run(const acase *c, const float *qkv, const float *dO, int nt, int bf16, float *o, float *g) {
    int C = c->H * c->Dh;
    int64_t n = (int64_t)c->B * c->T * 3 * C;
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, (size_t)1 << 28, 1 << 8) == 0, "%s", cf_error_msg());
    ctx.training = 1;
    ctx.bf16 = bf16;
    omp_set_num_threads(nt);
    cf_ctx_begin(&ctx, 0);
    cf_tensor *X = cf_tensor_leaf(&ctx, (float *)qkv, 3, (int[]){c->B, c->T, 3 * C}, 1);
    cf_tensor *Y = run_alibi(&ctx, c, X);
    memcpy(o, Y->data, sizeof(float) * Y->numel);
    cf_backward(&ctx, Y, dO);
    memcpy(g, X->grad, sizeof(float) * n);
    cf_ctx_free(&ctx);
}

static void test_alibi_kernels(void) {
    acase cases[] = {
        {CF_ATTN_FULL, 0, 0, 0, 1, 2, 4, 150, 16},
        {CF_ATTN_FULL, 0, 0, 0, 0, 1, 3, 70, 8},
        {CF_ATTN_WINDOW, 40, 0, 0, 1, 2, 2, 140, 8},
        {CF_ATTN_WINDOW, 5, 0, 0, 0, 1, 2, 70, 8},
        {CF_ATTN_SPARSE_STRIDED, 0, 9, 0, 1, 1, 4, 150, 8},
        {CF_ATTN_SPARSE_FIXED, 0, 16, 4, 1, 1, 2, 130, 8},
        {CF_ATTN_SPARSE_FIXED, 0, 70, 8, 0, 1, 2, 150, 8},
    };
    int nt_max = omp_get_max_threads();
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        const acase *c = &cases[ci];
        int C = c->H * c->Dh;
        int64_t n = (int64_t)c->B * c->T * 3 * C, no = (int64_t)c->B * c->T * C;
        float *qkv = malloc(sizeof(float) * n), *dO = malloc(sizeof(float) * no);
        t_fill_uniform(qkv, n, -1.5f, 1.5f, 40 + ci);
        t_fill_uniform(dO, no, -1, 1, 50 + ci);
        double *Or = malloc(sizeof(double) * no), *Gr = malloc(sizeof(double) * n);
        alibi_reference(c, qkv, dO, Or, Gr);
        float *o = malloc(sizeof(float) * no), *g = malloc(sizeof(float) * n);
        float *o2 = malloc(sizeof(float) * no), *g2 = malloc(sizeof(float) * n);
        float *of = malloc(sizeof(float) * no), *gf = malloc(sizeof(float) * n);
        for (int64_t i = 0; i < no; i++) of[i] = (float)Or[i];
        for (int64_t i = 0; i < n; i++) gf[i] = (float)Gr[i];
        alibi_run(c, qkv, dO, 1, 0, o, g);
        double eo = t_max_rel_err(o, of, no, 1e-3), eg = t_max_rel_err(g, gf, n, 1e-3);
        CHECK(eo < 2e-5 && eg < 2e-5, "alibi %s causal %d T %d: output err %.3g, gradient err %.3g",
              cf_attn_kind_name(c->type), c->causal, c->T, eo, eg);
        alibi_run(c, qkv, dO, nt_max > 1 ? nt_max : 2, 0, o2, g2);
        CHECK(!memcmp(o, o2, sizeof(float) * no) && !memcmp(g, g2, sizeof(float) * n),
              "alibi %s causal %d: 1 and %d threads differ", cf_attn_kind_name(c->type), c->causal, nt_max);
        if (c->type == CF_ATTN_FULL) {
            /* bf16 products: the same bias, operands rounded to 8 bits of mantissa */
            alibi_run(c, qkv, dO, 1, 1, o2, g2);
            eo = t_max_rel_err(o2, of, no, 1e-3);
            eg = t_max_rel_err(g2, gf, n, 1e-3);
            CHECK(eo < 3e-2 && eg < 3e-2, "alibi full bf16 causal %d: output err %.3g, gradient err %.3g", c->causal,
                  eo, eg);
        }
        omp_set_num_threads(nt_max);
        free(qkv); free(dO); free(Or); free(Gr); free(o); free(g); free(o2); free(g2); free(of); free(gf);
    }
    /* finite differences on a small case of each kernel */
    acase small[] = {{CF_ATTN_FULL, 0, 0, 0, 1, 1, 2, 9, 4}, {CF_ATTN_WINDOW, 3, 0, 0, 0, 1, 2, 9, 4},
                     {CF_ATTN_SPARSE_STRIDED, 0, 3, 0, 1, 1, 2, 9, 4}};
    for (int ci = 0; ci < 3; ci++) {
        const acase *c = &small[ci];
        int C = c->H * c->Dh;
        float qkv[9 * 24];
        t_fill_uniform(qkv, c->T * 3 * C, -1, 1, 60 + ci);
        gc_input in[1] = {{qkv, 3, {1, c->T, 3 * C}, 1}};
        char name[64];
        snprintf(name, sizeof name, "alibi %s", cf_attn_kind_name(c->type));
        gradcheck(name, f_alibi, (void *)c, in, 1, 1e-3f, 3e-3);
    }
}

/* ---- every op at 1 and 2 threads --------------------------------------------------------------------- */
static void test_threads(void) {
    int B = 2, T = 300, H = 8, Hkv = 2, Dh = 32, C = (H + 2 * Hkv) * Dh, n = B * T * C;
    float *x = malloc(sizeof(float) * n), w[64], *res[2][4] = {{0}};
    t_fill_uniform(x, n, -1, 1, 70);
    t_fill_uniform(w, 64, 0.5f, 1.5f, 71);
    int nt_max = omp_get_max_threads();
    for (int r = 0; r < 2; r++) {
        omp_set_num_threads(r ? (nt_max > 1 ? nt_max : 2) : 1);
        cf_ctx ctx;
        CF_ASSERT(cf_ctx_init(&ctx, (size_t)1 << 28, 1 << 8) == 0, "%s", cf_error_msg());
        ctx.training = 1;
        cf_ctx_begin(&ctx, 0);
        cf_tensor *X = cf_tensor_leaf(&ctx, x, 3, (int[]){B, T, C}, 1);
        cf_tensor *wq = cf_tensor_leaf(&ctx, w, 1, &Dh, 1), *wk = cf_tensor_leaf(&ctx, w + 32, 1, &Dh, 1);
        cf_tensor *Y = cf_kv_repeat(&ctx, cf_rope(&ctx, cf_qk_norm(&ctx, X, wq, wk, H, Hkv, 1e-5f), H, Hkv, 24, 1e4f, 0), H, Hkv);
        float *R = malloc(sizeof(float) * Y->numel);
        t_fill_uniform(R, Y->numel, -1, 1, 72);
        cf_backward(&ctx, Y, R);
        res[r][0] = malloc(sizeof(float) * Y->numel);
        memcpy(res[r][0], Y->data, sizeof(float) * Y->numel);
        res[r][1] = malloc(sizeof(float) * n);
        memcpy(res[r][1], X->grad, sizeof(float) * n);
        res[r][2] = malloc(sizeof(float) * 64);
        memcpy(res[r][2], wq->grad, sizeof(float) * 32);
        memcpy(res[r][2] + 32, wk->grad, sizeof(float) * 32);
        free(R);
        cf_ctx_free(&ctx);
    }
    omp_set_num_threads(nt_max);
    CHECK(!memcmp(res[0][0], res[1][0], sizeof(float) * B * T * 3 * H * Dh), "head ops forward differs across threads");
    CHECK(!memcmp(res[0][1], res[1][1], sizeof(float) * n), "head ops input gradient differs across threads");
    CHECK(!memcmp(res[0][2], res[1][2], sizeof(float) * 64), "qk_norm weight gradient differs across threads");
    for (int r = 0; r < 2; r++)
        for (int k = 0; k < 3; k++) free(res[r][k]);
    free(x);
}

int main(void) {
    test_activations();
    test_heads_ops();
    test_slopes();
    test_alibi_kernels();
    test_threads();
    CHECK(cf_op_table_check() == 0, "%s", cf_error_msg());
    TEST_MAIN_END();
}
