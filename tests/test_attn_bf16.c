/* Fused softmax attention in bf16 (ctx->bf16): the operands of its products (Q K^T, P V, dO V^T,
 * P'^T dO, dS^T Q, dS K) rounded to bfloat16, the sums and everything else fp32.
 *   - For every kernel this machine runs (portable, avx512bf16, amx): output and the three
 *     gradients against a double reference that rounds the same tensors
 *     (Q, K, V, dO) to bf16 and keeps P and dS exact, causal and not, Tq == Tk and Tq < Tk,
 *     lengths that are and are not multiples of 64, key padding, with and without dropout.
 *     Bound, per element: |got - ref| <= 2^-7 M, M the sum of the magnitudes of the terms of the
 *     element (below). The kernel rounds each P' and dS element to bf16, a relative error of at
 *     most u = 2^-8; the fp32 sums of exact products of bf16 values add at most (n + 2) 2^-24
 *     relative to the same magnitudes, and P's error from the score sums and 2^x is ~1e-4
 *     relative here; 2u covers the rounding with these far below the other u.
 *       O_id:  M = sum_j P'_ij |v_jd|          dV_jd: M = sum_i P'_ij |dO_id|
 *       dQ_id: M = sum_j m_ij |k_jd|           dK_jd: M = sum_i m_ij |q_id|
 *     with m_ij = scale P_ij (|dP_ij| + |D_i| + E_i + G_ij): dP_ij = dO_i . v_j (times the
 *     dropout multiplier), G_ij its magnitude sum, D_i = dO_i . O_i and E_i = sum_d |dO_id| M(O_id),
 *     which bounds what O's own error carries into D.
 *   - bitwise: inputs rounded to bf16 beforehand change nothing (every product reads its tensors
 *     through their rounding alone); the qkv variant equals separate q, k, v; 1 and 2 threads (both backward drivers);
 *     the portable kernel equals the avx512bf16 one where the machine has AVX512-BF16; an odd Dh
 *     runs the fp32 kernels. */
#include <string.h>
#include <omp.h>
#include "attn_fixture.h"

typedef struct result { float *o, *dq, *dk, *dv; } result;

static int64_t nq_of(const cfg *c) { return (int64_t)c->B * c->Tq * c->H * c->Dh; }
static int64_t nk_of(const cfg *c) { return (int64_t)c->B * c->Tk * c->H * c->Dh; }

static float *copy_of(const float *x, int64_t n) {
    float *y = malloc(sizeof(float) * n);
    memcpy(y, x, sizeof(float) * n);
    return y;
}

static void result_free(result *r) { free(r->o); free(r->dq); free(r->dk); free(r->dv); }

static int same(const result *a, const result *b, const cfg *c) {
    int64_t nq = nq_of(c), nk = nk_of(c);
    return !memcmp(a->o, b->o, sizeof(float) * nq) && !memcmp(a->dq, b->dq, sizeof(float) * nq) &&
           !memcmp(a->dk, b->dk, sizeof(float) * nk) && !memcmp(a->dv, b->dv, sizeof(float) * nk);
}

#define STEP 3
#define SEED 11

/* the op in bf16 on q, k, v (fused: the one qkv tensor, Tq == Tk), backward from dO */
static result run(const cfg *c, int fused, const float *q, const float *k, const float *v, const uint8_t *keep,
                  const float *dO) {
    int C = c->H * c->Dh;
    int64_t nq = nq_of(c), nk = nk_of(c), rows = (int64_t)c->B * c->Tq;
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, (size_t)1 << 27, 64) == 0, "%s", cf_error_msg());
    ctx.training = 1;
    ctx.seed = SEED;
    ctx.bf16 = 1;
    cf_ctx_begin(&ctx, STEP);
    cf_attn_opts o = {.causal = c->causal, .dropout = c->p, .key_keep = c->keep ? keep : NULL};
    result r;
    if (fused) {
        float *qkv = malloc(sizeof(float) * nq * 3);
        for (int64_t i = 0; i < rows; i++) {
            memcpy(qkv + i * 3 * C, q + i * C, sizeof(float) * C);
            memcpy(qkv + i * 3 * C + C, k + i * C, sizeof(float) * C);
            memcpy(qkv + i * 3 * C + 2 * C, v + i * C, sizeof(float) * C);
        }
        cf_tensor *t = cf_tensor_leaf(&ctx, qkv, 3, (int[]){c->B, c->Tq, 3 * C}, 1);
        cf_tensor *y = cf_attention_qkv(&ctx, t, c->H, &o);
        cf_backward(&ctx, y, dO);
        r.o = copy_of(y->data, nq);
        r.dq = malloc(sizeof(float) * nq); r.dk = malloc(sizeof(float) * nq); r.dv = malloc(sizeof(float) * nq);
        for (int64_t i = 0; i < rows; i++) {
            memcpy(r.dq + i * C, t->grad + i * 3 * C, sizeof(float) * C);
            memcpy(r.dk + i * C, t->grad + i * 3 * C + C, sizeof(float) * C);
            memcpy(r.dv + i * C, t->grad + i * 3 * C + 2 * C, sizeof(float) * C);
        }
        free(qkv);
    } else {
        float *qc = copy_of(q, nq), *kc = copy_of(k, nk), *vc = copy_of(v, nk);
        cf_tensor *tq = cf_tensor_leaf(&ctx, qc, 3, (int[]){c->B, c->Tq, C}, 1);
        cf_tensor *tk = cf_tensor_leaf(&ctx, kc, 3, (int[]){c->B, c->Tk, C}, 1);
        cf_tensor *tv = cf_tensor_leaf(&ctx, vc, 3, (int[]){c->B, c->Tk, C}, 1);
        cf_tensor *y = cf_attention(&ctx, tq, tk, tv, c->H, &o);
        cf_backward(&ctx, y, dO);
        r = (result){copy_of(y->data, nq), copy_of(tq->grad, nq), copy_of(tk->grad, nk), copy_of(tv->grad, nk)};
        free(qc); free(kc); free(vc);
    }
    cf_ctx_free(&ctx);
    return r;
}

/* the reference and its magnitudes (file comment), in double from the bf16-rounded tensors */
typedef struct ref { double *o, *dq, *dk, *dv, *mo, *mdq, *mdk, *mdv; } ref;

static void reference(const cfg *c, const float *q, const float *k, const float *v, const uint8_t *keep,
                      const float *dO, ref *R) {
    int C = c->H * c->Dh, Tq = c->Tq, Tk = c->Tk, Dh = c->Dh, off = Tk - Tq;
    double scale = 1.0 / sqrt((double)Dh);
    uint64_t key = cf_rng_key(SEED, STEP, 0);
    double *P = malloc(sizeof(double) * Tk), *Z = malloc(sizeof(double) * Tk), *dP = malloc(sizeof(double) * Tk);
    double *G = malloc(sizeof(double) * Tk);
    int *vis = malloc(sizeof(int) * Tk);
    for (int b = 0; b < c->B; b++)
        for (int h = 0; h < c->H; h++)
            for (int i = 0; i < Tq; i++) {
                int64_t qi = ((int64_t)b * Tq + i) * C + h * Dh;
                double mx = -INFINITY, sum = 0, D = 0, E = 0;
                for (int j = 0; j < Tk; j++) {
                    int64_t kj = ((int64_t)b * Tk + j) * C + h * Dh;
                    vis[j] = (!c->causal || j <= i + off) && (!c->keep || keep[b * Tk + j]);
                    double s = 0;
                    for (int d = 0; d < Dh; d++) s += (double)cf_bf16_round(q[qi + d]) * cf_bf16_round(k[kj + d]);
                    P[j] = s * scale;
                    if (vis[j] && P[j] > mx) mx = P[j];
                    uint64_t idx = (((uint64_t)b * c->H + h) * Tq + i) * Tk + j;
                    Z[j] = c->p > 0 ? (cf_rng_uniform(key, idx) >= c->p ? 1.0 / (1.0 - c->p) : 0.0) : 1.0;
                }
                if (mx == -INFINITY) continue;   /* no visible key: all zero */
                for (int j = 0; j < Tk; j++) sum += P[j] = vis[j] ? exp(P[j] - mx) : 0;
                for (int j = 0; j < Tk; j++) {
                    int64_t kj = ((int64_t)b * Tk + j) * C + h * Dh;
                    double pz = (P[j] /= sum) * Z[j], dp = 0, g = 0;
                    for (int d = 0; d < Dh; d++) {
                        double vd = cf_bf16_round(v[kj + d]), gd = cf_bf16_round(dO[qi + d]);
                        R->o[qi + d] += pz * vd;
                        R->mo[qi + d] += pz * fabs(vd);
                        R->dv[kj + d] += pz * gd;
                        R->mdv[kj + d] += pz * fabs(gd);
                        dp += gd * vd;
                        g += fabs(gd * vd);
                    }
                    dP[j] = dp * Z[j];
                    G[j] = g * Z[j];
                }
                for (int d = 0; d < Dh; d++) {
                    double gd = cf_bf16_round(dO[qi + d]);
                    D += gd * R->o[qi + d];
                    E += fabs(gd) * R->mo[qi + d];
                }
                for (int j = 0; j < Tk; j++) {
                    int64_t kj = ((int64_t)b * Tk + j) * C + h * Dh;
                    double ds = scale * P[j] * (dP[j] - D), m = scale * P[j] * (fabs(dP[j]) + fabs(D) + E + G[j]);
                    for (int d = 0; d < Dh; d++) {
                        double kd = cf_bf16_round(k[kj + d]), qd = cf_bf16_round(q[qi + d]);
                        R->dq[qi + d] += ds * kd;
                        R->mdq[qi + d] += m * fabs(kd);
                        R->dk[kj + d] += ds * qd;
                        R->mdk[kj + d] += m * fabs(qd);
                    }
                }
            }
    free(P); free(Z); free(dP); free(G); free(vis);
}

/* the largest |got - want| / (2^-7 mag) over n elements; <= 1 passes */
static double worst(const float *got, const double *want, const double *mag, int64_t n) {
    double w = 0;
    for (int64_t i = 0; i < n; i++) {
        double e = fabs(got[i] - want[i]) / (0x1p-7 * mag[i] + 1e-30);
        if (!(e <= w)) w = e;   /* NaN included */
    }
    return w;
}

static double overall;   /* the largest error ratio seen, printed at the end */

static void accuracy(const cfg *c) {
    int64_t nq = nq_of(c), nk = nk_of(c);
    data d = make_data(c, 100 + c->Tq + c->Tk + c->Dh);
    ref R;
    double **f[8] = {&R.o, &R.dq, &R.dk, &R.dv, &R.mo, &R.mdq, &R.mdk, &R.mdv};
    for (int i = 0; i < 8; i++) *f[i] = calloc((size_t)(i % 4 == 0 || i % 4 == 1 ? nq : nk), sizeof(double));
    reference(c, d.q, d.k, d.v, d.keep, d.dO, &R);
    result r = run(c, 0, d.q, d.k, d.v, d.keep, d.dO);
    double eo = worst(r.o, R.o, R.mo, nq), eq = worst(r.dq, R.dq, R.mdq, nq);
    double ek = worst(r.dk, R.dk, R.mdk, nk), ev = worst(r.dv, R.dv, R.mdv, nk);
    char name[128];
    snprintf(name, sizeof name, "%s B=%d H=%d Tq=%d Tk=%d Dh=%d causal=%d keep=%d p=%.2f", cf_attn_bf16_kernel_name(), c->B, c->H, c->Tq, c->Tk,
             c->Dh, c->causal, c->keep, c->p);
    printf("%s: error / bound: o %.3f dq %.3f dk %.3f dv %.3f\n", name, eo, eq, ek, ev);
    CHECK(eo <= 1 && eq <= 1 && ek <= 1 && ev <= 1, "%s: beyond 2^-7 M: o %.3g dq %.3g dk %.3g dv %.3g", name, eo,
          eq, ek, ev);
    double e4[4] = {eo, eq, ek, ev};
    for (int i = 0; i < 4; i++) overall = e4[i] > overall ? e4[i] : overall;
    float *rq = copy_of(d.q, nq), *rk = copy_of(d.k, nk), *rv = copy_of(d.v, nk), *rg = copy_of(d.dO, nq);
    for (int64_t i = 0; i < nq; i++) { rq[i] = cf_bf16_round(rq[i]); rg[i] = cf_bf16_round(rg[i]); }
    for (int64_t i = 0; i < nk; i++) { rk[i] = cf_bf16_round(rk[i]); rv[i] = cf_bf16_round(rv[i]); }
    result pre = run(c, 0, rq, rk, rv, d.keep, rg);
    CHECK(same(&pre, &r, c), "%s: inputs rounded to bf16 beforehand change the result", name);
    result_free(&pre);
    free(rq); free(rk); free(rv); free(rg);
    if (c->Tq == c->Tk) {
        result f2 = run(c, 1, d.q, d.k, d.v, d.keep, d.dO);
        CHECK(same(&f2, &r, c), "%s: the qkv variant differs from separate q, k, v", name);
        result_free(&f2);
    }
    result_free(&r);
    for (int i = 0; i < 8; i++) free(*f[i]);
    data_free(&d);
}

/* 1 and 2 threads bitwise: B*H = 1 takes the two-pass backward at 2 threads, B*H = 6 per head */
static void threads(void) {
    cfg cs[2] = {{1, 1, 150, 150, 32, 1, 1, 0.2f}, {2, 3, 130, 130, 16, 0, 1, 0}};
    int nt0 = omp_get_max_threads();
    for (int t = 0; t < 2; t++) {
        data d = make_data(&cs[t], 5);
        omp_set_num_threads(1);
        result a = run(&cs[t], 1, d.q, d.k, d.v, d.keep, d.dO);
        omp_set_num_threads(2);
        result b = run(&cs[t], 1, d.q, d.k, d.v, d.keep, d.dO);
        CHECK(same(&a, &b, &cs[t]), "B=%d H=%d: 1 and 2 threads differ", cs[t].B, cs[t].H);
        result_free(&a); result_free(&b);
        data_free(&d);
    }
    omp_set_num_threads(nt0);
}

/* the portable kernel against avx512bf16, bitwise (chosen through cf_gemm_bf16_set_kernel) */
static void kernels(void) {
    const char *was = cf_gemm_bf16_kernel();
    cfg cs[2] = {{3, 2, 100, 100, 32, 1, 1, 0.1f}, {1, 2, 70, 130, 40, 0, 0, 0}};
    if (cf_gemm_bf16_set_kernel("avx512bf16") != 0) {
        printf("skip: no AVX512-BF16 here, the portable kernel alone is tested\n");
        return;
    }
    for (int t = 0; t < 2; t++) {
        data d = make_data(&cs[t], 9);
        cf_gemm_bf16_set_kernel("avx512bf16");
        result a = run(&cs[t], 0, d.q, d.k, d.v, d.keep, d.dO);
        cf_gemm_bf16_set_kernel("portable");
        result b = run(&cs[t], 0, d.q, d.k, d.v, d.keep, d.dO);
        CHECK(same(&a, &b, &cs[t]), "Tq=%d Tk=%d Dh=%d: portable differs from avx512bf16", cs[t].Tq, cs[t].Tk,
              cs[t].Dh);
        result_free(&a); result_free(&b);
        data_free(&d);
    }
    cf_gemm_bf16_set_kernel(was);
}

/* Dh odd has no whole pairs: bf16 runs the fp32 kernels, bitwise what ctx->bf16 = 0 gives */
static void odd_dh(void) {
    cfg c = {2, 2, 70, 70, 15, 1, 1, 0};
    data d = make_data(&c, 13);
    int64_t nq = nq_of(&c);
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, (size_t)1 << 24, 64) == 0, "%s", cf_error_msg());
    float *out[2];
    for (int bf = 0; bf < 2; bf++) {
        ctx.bf16 = bf;
        cf_ctx_begin(&ctx, 0);
        cf_tensor *tq = cf_tensor_leaf(&ctx, d.q, 3, (int[]){c.B, c.Tq, c.H * c.Dh}, 0);
        cf_tensor *tk = cf_tensor_leaf(&ctx, d.k, 3, (int[]){c.B, c.Tk, c.H * c.Dh}, 0);
        cf_tensor *tv = cf_tensor_leaf(&ctx, d.v, 3, (int[]){c.B, c.Tk, c.H * c.Dh}, 0);
        out[bf] = copy_of(cf_attention(&ctx, tq, tk, tv, c.H, &(cf_attn_opts){.causal = 1})->data, nq);
    }
    CHECK(!memcmp(out[0], out[1], sizeof(float) * nq), "Dh 15: bf16 differs from fp32");
    free(out[0]); free(out[1]);
    cf_ctx_free(&ctx);
    data_free(&d);
}

int main(void) {
    CHECK(!strcmp(cf_attn_bf16_kernel_name(), cf_gemm_bf16_kernel()), "bf16 attention runs %s beside %s",
          cf_attn_bf16_kernel_name(), cf_gemm_bf16_kernel());
    printf("attention kernel: %s\n", cf_attn_bf16_kernel_name());
    cfg cs[] = {
        {3, 2, 64, 64, 32, 0, 1, 0},   {3, 2, 64, 64, 32, 1, 1, 0},    {3, 2, 130, 130, 64, 1, 1, 0},
        {3, 2, 100, 100, 16, 0, 1, 0}, {1, 2, 60, 200, 32, 1, 0, 0},   {3, 1, 200, 200, 64, 1, 1, 0.2f},
        {2, 2, 129, 129, 32, 0, 0, 0.1f},
    };
    /* every kernel this machine runs, the default (the one training picks) last */
    const char *best = cf_gemm_bf16_kernel(), *names[] = {"portable", "avx512bf16", "amx"};
    for (int k = 0; k < 3; k++) {
        if (!strcmp(names[k], best) || cf_gemm_bf16_set_kernel(names[k]) != 0) continue;
        overall = 0;
        for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++) accuracy(&cs[i]);
        printf("%s: largest error / bound: %.3f\n", names[k], overall);
    }
    CF_ASSERT(cf_gemm_bf16_set_kernel(best) == 0, "%s", best);
    overall = 0;
    for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++) accuracy(&cs[i]);
    printf("%s: largest error / bound: %.3f\n", best, overall);
    threads();
    kernels();
    odd_dh();
    TEST_MAIN_END();
}
