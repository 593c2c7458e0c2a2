/* Linear attention and the Performer against their exact quadratic formulas, computed here in
 * double with an explicit T x T matrix A_ij = phi(q_i) . phi(k_j) on the same features: forward and
 * all gradients, causal and bidirectional, key padding (including queries that see no key); the
 * FAVOR+ feature map against its formula (forward and backward); gradient checks by finite
 * differences of each op and of the whole Performer core; the random matrix (orthogonal blocks,
 * row norms, a pure function of seed, layer and redraw index; the redraw schedule; evaluation on
 * the last training draw); the Performer approaching softmax attention as m grows; bitwise equality
 * across thread counts; and arena peaks that grow linearly in T. */
#include <string.h>
#include <omp.h>
#include "gradcheck.h"
#include "cformer/attention.h"

/* ---- the quadratic reference ------------------------------------------------------------------------ */
/* Features fq, fk [B, T, H, F] and values v (rows of stride sv, head h at column h*Dv) in double.
 * out [B, T, H*Dv]; gradients of sum(out * dO) into dfq, dfk [B, T, H, F] and dv [B, T, H*Dv]. */
typedef struct qref {
    int B, T, H, F, Dv, causal;
    double eps;
    const uint8_t *keep;
} qref;

static void quadratic(const qref *r, const double *fq, const double *fk, const float *v, int64_t sv, const float *dO,
                      double *out, double *dfq, double *dfk, double *dv) {
    int T = r->T, H = r->H, F = r->F, Dv = r->Dv, C = H * Dv;
    double *A = malloc(sizeof(double) * T * T);
    memset(dfq, 0, sizeof(double) * r->B * T * H * F);
    memset(dfk, 0, sizeof(double) * r->B * T * H * F);
    memset(dv, 0, sizeof(double) * r->B * T * C);
    for (int b = 0; b < r->B; b++)
        for (int h = 0; h < H; h++) {
#define FQ(t) (fq + (((int64_t)b * T + (t)) * H + h) * F)
#define FK(t) (fk + (((int64_t)b * T + (t)) * H + h) * F)
#define V(t) (v + ((int64_t)b * T + (t)) * sv + h * Dv)
            for (int i = 0; i < T; i++)
                for (int j = 0; j < T; j++) {
                    double s = 0;
                    if ((!r->causal || j <= i) && (!r->keep || r->keep[b * T + j]))
                        for (int f = 0; f < F; f++) s += FQ(i)[f] * FK(j)[f];
                    A[(int64_t)i * T + j] = s;
                }
            for (int i = 0; i < T; i++) {
                double den = r->eps, *o = out + ((int64_t)b * T + i) * C + h * Dv;
                const float *go = dO + ((int64_t)b * T + i) * C + h * Dv;
                for (int j = 0; j < T; j++) den += A[(int64_t)i * T + j];
                for (int e = 0; e < Dv; e++) o[e] = 0;
                if (den == 0) continue;
                for (int j = 0; j < T; j++)
                    for (int e = 0; e < Dv; e++) o[e] += A[(int64_t)i * T + j] * V(j)[e] / den;
                double dot = 0;
                for (int e = 0; e < Dv; e++) dot += go[e] * o[e];
                for (int j = 0; j < T; j++) {
                    double a = A[(int64_t)i * T + j];
                    if ((r->causal && j > i) || (r->keep && !r->keep[b * T + j])) continue;
                    double dA = -dot / den;
                    for (int e = 0; e < Dv; e++) {
                        dA += go[e] * V(j)[e] / den;
                        dv[((int64_t)b * T + j) * C + h * Dv + e] += a * go[e] / den;
                    }
                    for (int f = 0; f < F; f++) {
                        dfq[(((int64_t)b * T + i) * H + h) * F + f] += dA * FK(j)[f];
                        dfk[(((int64_t)b * T + j) * H + h) * F + f] += dA * FQ(i)[f];
                    }
                }
            }
#undef FQ
#undef FK
#undef V
        }
    free(A);
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

/* padding: batch row 0 drops scattered keys, row 1 its first 3 (its first queries see nothing) */
static void make_keep(int B, int T, uint8_t *keep) {
    cf_rng r;
    cf_rng_seed(&r, 17);
    for (int b = 0; b < B; b++)
        for (int j = 0; j < T; j++) keep[b * T + j] = (uint8_t)(b == 0 ? cf_rng_float(&r) > 0.3f : b == 1 ? j >= 3 : 1);
}

static cf_ctx new_ctx(void) {
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, (size_t)1 << 28, 256) == 0, "%s", cf_error_msg());
    ctx.training = 1;
    cf_ctx_begin(&ctx, 0);
    return ctx;
}

/* ---- linear attention -------------------------------------------------------------------------------- */
static double elu1(double x) { return x > 0 ? x + 1 : exp(x); }
static double elu1d(double x) { return x > 0 ? 1 : exp(x); }

static void linear_exact(int B, int H, int T, int Dh, int causal, int keep_on) {
    int C = H * Dh;
    int64_t n3 = (int64_t)B * T * 3 * C, n = (int64_t)B * T * C, nf = (int64_t)B * T * H * Dh;
    float *qkv = malloc(sizeof(float) * n3), *dO = malloc(sizeof(float) * n);
    uint8_t *keep = malloc((size_t)B * T);
    t_fill_uniform(qkv, n3, -2, 2, 51 + T);
    t_fill_uniform(dO, n, -1, 1, 52 + T);
    make_keep(B, T, keep);
    double *fq = malloc(sizeof(double) * nf), *fk = malloc(sizeof(double) * nf), *out = malloc(sizeof(double) * n);
    double *dfq = malloc(sizeof(double) * nf), *dfk = malloc(sizeof(double) * nf), *dv = malloc(sizeof(double) * n);
    for (int64_t row = 0; row < (int64_t)B * T; row++)
        for (int x = 0; x < C; x++) {
            fq[row * C + x] = elu1(qkv[row * 3 * C + x]);
            fk[row * C + x] = elu1(qkv[row * 3 * C + C + x]);
        }
    qref r = {B, T, H, Dh, Dh, causal, 1e-6, keep_on ? keep : NULL};
    quadratic(&r, fq, fk, qkv + 2 * C, 3 * C, dO, out, dfq, dfk, dv);
    double *G = malloc(sizeof(double) * n3);
    for (int64_t row = 0; row < (int64_t)B * T; row++)
        for (int x = 0; x < C; x++) {
            G[row * 3 * C + x] = dfq[row * C + x] * elu1d(qkv[row * 3 * C + x]);
            G[row * 3 * C + C + x] = dfk[row * C + x] * elu1d(qkv[row * 3 * C + C + x]);
            G[row * 3 * C + 2 * C + x] = dv[row * C + x];
        }
    cf_ctx ctx = new_ctx();
    cf_tensor *t = cf_tensor_leaf(&ctx, qkv, 3, (int[]){B, T, 3 * C}, 1);
    cf_tensor *y = cf_linear_attention_qkv(&ctx, t, H, causal, keep_on ? keep : NULL);
    cf_backward(&ctx, y, dO);
    double eo = err_d(y->data, out, n), eg = err_d(t->grad, G, n3);
    CHECK(eo < 1e-5 && eg < 1e-4, "linear B=%d H=%d T=%d Dh=%d causal=%d keep=%d: output err %.3g, gradient err %.3g", B,
          H, T, Dh, causal, keep_on, eo, eg);
    cf_ctx_free(&ctx);
    free(qkv); free(dO); free(keep); free(fq); free(fk); free(out); free(dfq); free(dfk); free(dv); free(G);
}

/* cf_kernel_attention on given positive features, F != Dv, with and without eps */
static void kernel_exact(int causal, float eps) {
    enum { B = 3, H = 2, T = 90, F = 24, Dv = 8, C = H * Dv };
    int64_t nf = (int64_t)B * T * H * F, n = (int64_t)B * T * C, n3 = 3 * n;
    float *q = malloc(sizeof(float) * nf), *k = malloc(sizeof(float) * nf), *qkv = malloc(sizeof(float) * n3);
    float *dO = malloc(sizeof(float) * n);
    uint8_t keep[B * T];
    t_fill_uniform(q, nf, 0.01f, 1, 61);
    t_fill_uniform(k, nf, 0.01f, 1, 62);
    t_fill_uniform(qkv, n3, -1, 1, 63);
    t_fill_uniform(dO, n, -1, 1, 64);
    make_keep(B, T, keep);
    double *fq = malloc(sizeof(double) * nf), *fk = malloc(sizeof(double) * nf), *out = malloc(sizeof(double) * n);
    double *dfq = malloc(sizeof(double) * nf), *dfk = malloc(sizeof(double) * nf), *dv = malloc(sizeof(double) * n);
    for (int64_t i = 0; i < nf; i++) { fq[i] = q[i]; fk[i] = k[i]; }
    qref r = {B, T, H, F, Dv, causal, eps, keep};
    quadratic(&r, fq, fk, qkv + 2 * C, 3 * C, dO, out, dfq, dfk, dv);
    double *G = calloc(n3, sizeof(double));
    for (int64_t row = 0; row < (int64_t)B * T; row++)
        for (int x = 0; x < C; x++) G[row * 3 * C + 2 * C + x] = dv[row * C + x];
    cf_ctx ctx = new_ctx();
    cf_tensor *tq = cf_tensor_leaf(&ctx, q, 3, (int[]){B, T, H * F}, 1);
    cf_tensor *tk = cf_tensor_leaf(&ctx, k, 3, (int[]){B, T, H * F}, 1);
    cf_tensor *tv = cf_tensor_leaf(&ctx, qkv, 3, (int[]){B, T, 3 * C}, 1);
    cf_tensor *y = cf_kernel_attention(&ctx, tq, tk, tv, H, causal, eps, keep);
    cf_backward(&ctx, y, dO);
    double eo = err_d(y->data, out, n), eq = err_d(tq->grad, dfq, nf), ek = err_d(tk->grad, dfk, nf);
    double ev = err_d(tv->grad, G, n3);
    CHECK(eo < 1e-5 && eq < 1e-4 && ek < 1e-4 && ev < 1e-4,
          "kernel attention causal=%d eps=%g: output err %.3g, grad err q %.3g k %.3g v %.3g", causal, eps, eo, eq, ek, ev);
    /* batch row 1 pads its first 3 keys: with eps 0 its causal queries 0..2 see nothing */
    if (causal && eps == 0) {
        int zero = 1;
        for (int t = 0; t < 3; t++)
            for (int x = 0; x < C; x++) zero &= y->data[((int64_t)1 * T + t) * C + x] == 0;
        CHECK(zero, "kernel attention: a query with no visible key has a nonzero output");
    }
    cf_ctx_free(&ctx);
    free(q); free(k); free(qkv); free(dO); free(fq); free(fk); free(out); free(dfq); free(dfk); free(dv); free(G);
}

/* ---- FAVOR+ features ------------------------------------------------------------------------------- */
/* features of which (0 q, 1 k) in double from w: phi [B, T, H, m]; with dphi, the gradient into dx
 * (the q or k columns of a [B, T, 3C] buffer) */
static void favor_ref(int B, int T, int H, int d, int m, const float *qkv, int which, const float *w, int relu,
                      const uint8_t *keep, double *phi, const double *dphi, double *dx) {
    int C = H * d;
    double dn = relu ? 1.0 / sqrt((double)m) : pow((double)d, -0.25), c = 1.0 / sqrt((double)m);
    double *u = malloc(sizeof(double) * B * T * H * m), *hn = malloc(sizeof(double) * B * T * H);
    double *M = malloc(sizeof(double) * B * T * H);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            double kmax = -INFINITY;
            for (int t = 0; t < T; t++) {
                int64_t rh = ((int64_t)b * T + t) * H + h;
                const float *x = qkv + ((int64_t)b * T + t) * 3 * C + which * C + h * d;
                double s = 0, mx = -INFINITY;
                for (int i = 0; i < d; i++) s += (double)x[i] * x[i];
                hn[rh] = 0.5 * dn * dn * s;
                for (int r = 0; r < m; r++) {
                    double a = 0;
                    for (int i = 0; i < d; i++) a += (double)w[r * d + i] * x[i];
                    u[rh * m + r] = dn * a;
                    if (dn * a > mx) mx = dn * a;
                }
                M[rh] = mx;
                if ((!keep || keep[b * T + t]) && mx > kmax) kmax = mx;
            }
            if (which)
                for (int t = 0; t < T; t++) M[((int64_t)b * T + t) * H + h] = kmax;
        }
    for (int64_t rh = 0; rh < (int64_t)B * T * H; rh++) {
        int64_t row = rh / H;
        int h = (int)(rh % H);
        int kept = !which || !keep || keep[row];
        double s = 0, *du = malloc(sizeof(double) * m);
        for (int r = 0; r < m; r++) {
            double uu = u[rh * m + r];
            if (!kept) { phi[rh * m + r] = 0; du[r] = 0; continue; }
            if (relu) {
                phi[rh * m + r] = (uu > 0 ? uu : 0) + 1e-3;
                du[r] = dphi ? (uu > 0 ? dphi[rh * m + r] : 0) : 0;
            } else {
                double e = c * exp(uu - hn[rh] - M[rh]);
                phi[rh * m + r] = e + c * 1e-6;
                du[r] = dphi ? dphi[rh * m + r] * e : 0;
            }
            s += du[r];
        }
        if (dx) {
            const float *x = qkv + row * 3 * C + which * C + h * d;
            double *g = dx + row * 3 * C + which * C + h * d;
            for (int i = 0; i < d; i++) {
                double a = 0;
                for (int r = 0; r < m; r++) a += du[r] * w[r * d + i];
                g[i] += dn * a - (relu ? 0 : dn * dn * s * x[i]);
            }
        }
        free(du);
    }
    free(u); free(hn); free(M);
}

static void favor_exact(int which, int relu) {
    enum { B = 2, T = 40, H = 2, d = 16, m = 40, C = H * d };
    int64_t n3 = (int64_t)B * T * 3 * C, nf = (int64_t)B * T * H * m;
    float *qkv = malloc(sizeof(float) * n3), *dphi = malloc(sizeof(float) * nf), *w = malloc(sizeof(float) * m * d);
    uint8_t keep[B * T];
    t_fill_uniform(qkv, n3, -1.5f, 1.5f, 71);
    t_fill_uniform(dphi, nf, -1, 1, 72);
    make_keep(B, T, keep);
    cf_ctx ctx = new_ctx();
    cf_performer_draw(&ctx, w, m, d, 3, 4, 5);
    double *phi = malloc(sizeof(double) * nf), *G = calloc(n3, sizeof(double)), *dp = malloc(sizeof(double) * nf);
    for (int64_t i = 0; i < nf; i++) dp[i] = dphi[i];
    favor_ref(B, T, H, d, m, qkv, which, w, relu, keep, phi, dp, G);
    cf_tensor *t = cf_tensor_leaf(&ctx, qkv, 3, (int[]){B, T, 3 * C}, 1);
    cf_tensor *y = cf_favor_features(&ctx, t, which, H, w, m, relu, keep);
    cf_backward(&ctx, y, dphi);
    double eo = err_d(y->data, phi, nf), eg = err_d(t->grad, G, n3);
    CHECK(eo < 1e-5 && eg < 1e-4, "favor features which=%d relu=%d: output err %.3g, gradient err %.3g", which, relu, eo, eg);
    cf_ctx_free(&ctx);
    free(qkv); free(dphi); free(w); free(phi); free(G); free(dp);
}

/* ---- the Performer core of a layer --------------------------------------------------------------------- */
typedef struct layer_box { cf_params p; cf_attn_layer L; } layer_box;

static layer_box *make_layer(cf_attn_kind type, int H, int C, int causal, int m, const char *kernel, int layer) {
    layer_box *x = calloc(1, sizeof *x);
    cf_params_init(&x->p);
    cf_attn_config a;
    memset(&a, 0, sizeof a);
    a.type = type;
    a.features = m;
    a.redraw_every = 10;
    a.kernel = !strcmp(kernel, "relu") ? CF_FAVOR_RELU : CF_FAVOR_SOFTMAX;
    char name[32];
    snprintf(name, sizeof name, "blocks.%d.attn", layer);
    cf_attn_decl(&x->L, &x->p, name, C, H, causal, 0.0f, &a, 1);
    return x;
}
static void free_layer(layer_box *x) { cf_params_free(&x->p); free(x); }

/* the whole Performer core against features and attention computed here in double */
static void performer_exact(int causal, int relu) {
    enum { B = 2, T = 50, H = 2, d = 8, m = 20, C = H * d };
    int64_t n3 = (int64_t)B * T * 3 * C, n = (int64_t)B * T * C, nf = (int64_t)B * T * H * m;
    float *qkv = malloc(sizeof(float) * n3), *dO = malloc(sizeof(float) * n), *w = malloc(sizeof(float) * m * d);
    uint8_t keep[B * T];
    t_fill_uniform(qkv, n3, -1.5f, 1.5f, 81);
    t_fill_uniform(dO, n, -1, 1, 82);
    make_keep(B, T, keep);
    layer_box *lb = make_layer(CF_ATTN_PERFORMER, H, C, causal, m, relu ? "relu" : "softmax", 2);
    cf_ctx ctx = new_ctx();
    ctx.seed = 9;
    cf_ctx_begin(&ctx, 25);                      /* redraw index 2 of redraw_every 10 */
    cf_performer_draw(&ctx, w, m, d, 9, lb->L.layer_key, 2);
    double *fq = malloc(sizeof(double) * nf), *fk = malloc(sizeof(double) * nf), *out = malloc(sizeof(double) * n);
    double *dfq = malloc(sizeof(double) * nf), *dfk = malloc(sizeof(double) * nf), *dv = malloc(sizeof(double) * n);
    favor_ref(B, T, H, d, m, qkv, 0, w, relu, NULL, fq, NULL, NULL);
    favor_ref(B, T, H, d, m, qkv, 1, w, relu, keep, fk, NULL, NULL);
    qref r = {B, T, H, m, d, causal, 0.0, keep};
    quadratic(&r, fq, fk, qkv + 2 * C, 3 * C, dO, out, dfq, dfk, dv);
    /* the gradient: the quadratic formula's, back through the feature maps, plus dv */
    double *G = calloc(n3, sizeof(double));
    favor_ref(B, T, H, d, m, qkv, 0, w, relu, NULL, fq, dfq, G);
    favor_ref(B, T, H, d, m, qkv, 1, w, relu, keep, fk, dfk, G);
    for (int64_t row = 0; row < (int64_t)B * T; row++)
        for (int x = 0; x < C; x++) G[row * 3 * C + 2 * C + x] = dv[row * C + x];
    cf_tensor *t = cf_tensor_leaf(&ctx, qkv, 3, (int[]){B, T, 3 * C}, 1);
    cf_tensor *y = cf_attn_core(&ctx, &lb->L, t, keep);
    cf_backward(&ctx, y, dO);
    double eo = err_d(y->data, out, n), eg = err_d(t->grad, G, n3);
    CHECK(eo < 1e-5 && eg < 1e-4, "performer causal=%d relu=%d: output err %.3g, gradient err %.3g against the "
          "quadratic formula", causal, relu, eo, eg);
    free(G);
    CHECK(lb->L.draw->index == 2 && lb->L.draw->seed == 9, "performer: training draw not recorded (%lld)",
          (long long)lb->L.draw->index);
    cf_ctx_free(&ctx);
    free_layer(lb);
    free(qkv); free(dO); free(w); free(fq); free(fk); free(out); free(dfq); free(dfk); free(dv);
}

/* ---- gradient checks ------------------------------------------------------------------------------- */
typedef struct gc_lin { int H, causal; const uint8_t *keep; float eps; } gc_lin;
static cf_tensor *f_linear(cf_ctx *c, cf_tensor **in, void *arg) {
    gc_lin *a = arg;
    return cf_linear_attention_qkv(c, in[0], a->H, a->causal, a->keep);
}
static cf_tensor *f_kernel(cf_ctx *c, cf_tensor **in, void *arg) {
    gc_lin *a = arg;
    return cf_kernel_attention(c, in[0], in[1], in[2], a->H, a->causal, a->eps, a->keep);
}
typedef struct gc_core { cf_attn_layer *L; const uint8_t *keep; } gc_core;
static cf_tensor *f_core(cf_ctx *c, cf_tensor **in, void *arg) {
    gc_core *a = arg;
    return cf_attn_core(c, a->L, in[0], a->keep);
}

static void gradchecks(void) {
    enum { B = 2, T = 9, H = 2, Dh = 4, C = H * Dh, F = 5 };
    static float qkv[B * T * 3 * C], fq[B * T * H * F], fk[B * T * H * F];
    static uint8_t keep[B * T];
    for (int j = 0; j < B * T; j++) keep[j] = !(j == 2 || j == 9 || j == 10);
    t_fill_uniform(qkv, B * T * 3 * C, -1.5f, 1.5f, 91);
    t_fill_uniform(fq, B * T * H * F, 0.1f, 1, 92);
    t_fill_uniform(fk, B * T * H * F, 0.1f, 1, 93);
    for (int causal = 0; causal < 2; causal++) {
        char name[96];
        gc_lin a = {H, causal, keep, 1e-6f};
        gc_input in1[1] = {{qkv, 3, {B, T, 3 * C}, 1}};
        snprintf(name, sizeof name, "linear attention causal=%d", causal);
        gradcheck(name, f_linear, &a, in1, 1, 1e-2f, 1e-2);
        gc_lin k = {H, causal, keep, 0.0f};
        gc_input in3[3] = {{fq, 3, {B, T, H * F}, 1}, {fk, 3, {B, T, H * F}, 1}, {qkv, 3, {B, T, 3 * C}, 1}};
        snprintf(name, sizeof name, "kernel attention causal=%d", causal);
        gradcheck(name, f_kernel, &k, in3, 3, 1e-2f, 1e-2);
        for (int relu = 0; relu < 2; relu++) {
            layer_box *lb = make_layer(CF_ATTN_PERFORMER, H, C, causal, 7, relu ? "relu" : "softmax", 1);
            gc_core g = {&lb->L, keep};
            snprintf(name, sizeof name, "performer core causal=%d relu=%d", causal, relu);
            /* ReLU features have kinks; a smaller step keeps the differences away from them */
            gradcheck(name, f_core, &g, in1, 1, relu ? 2e-3f : 1e-2f, 1e-2);
            free_layer(lb);
        }
    }
}

/* ---- the random matrix --------------------------------------------------------------------------- */
static void draws(void) {
    enum { m = 40, d = 16 };
    static float w[m * d], w2[m * d], w3[m * d];
    cf_ctx ctx = new_ctx();
    cf_performer_draw(&ctx, w, m, d, 1, 2, 3);
    cf_performer_draw(&ctx, w2, m, d, 1, 2, 3);
    CHECK(!memcmp(w, w2, sizeof w), "performer draw is not a pure function of its key");
    cf_performer_draw(&ctx, w3, m, d, 1, 2, 4);
    CHECK(memcmp(w, w3, sizeof w), "a new redraw index gives the same matrix");
    cf_performer_draw(&ctx, w3, m, d, 1, 5, 3);
    CHECK(memcmp(w, w3, sizeof w), "another layer gives the same matrix");
    /* rows of a block are orthogonal; norms are chi(d) draws, mean about sqrt(d) */
    double worst = 0, norms = 0;
    for (int i = 0; i < m; i++) {
        double ni = 0;
        for (int x = 0; x < d; x++) ni += (double)w[i * d + x] * w[i * d + x];
        norms += sqrt(ni) / m;
        for (int j = i / d * d; j < i; j++) {
            double dot = 0, nj = 0;
            for (int x = 0; x < d; x++) { dot += (double)w[i * d + x] * w[j * d + x]; nj += (double)w[j * d + x] * w[j * d + x]; }
            worst = fmax(worst, fabs(dot) / sqrt(ni * nj));
        }
    }
    CHECK(worst < 1e-5, "rows of one orthogonal block have cosine %.3g", worst);
    CHECK(fabs(norms - sqrt((double)d)) < 0.5, "mean row norm %.3f, expected about %.3f", norms, sqrt((double)d));
    cf_ctx_free(&ctx);
}

/* The schedule: training steps 0..9 share a draw, step 10 redraws; evaluation (not training) uses
 * the draw of the last training step; cf_attn_set_step sets it for a layer fresh from a checkpoint. */
static void redraw_schedule(void) {
    enum { B = 1, T = 12, H = 2, d = 4, C = H * d };
    static float qkv[B * T * 3 * C];
    t_fill_uniform(qkv, B * T * 3 * C, -1, 1, 101);
    layer_box *lb = make_layer(CF_ATTN_PERFORMER, H, C, 1, 8, "softmax", 0);
    float out[4][B * T * C];
    uint64_t steps[3] = {0, 9, 10};
    cf_ctx ctx = new_ctx();
    ctx.seed = 4;
    for (int s = 0; s < 3; s++) {
        cf_ctx_begin(&ctx, steps[s]);
        cf_tensor *t = cf_tensor_leaf(&ctx, qkv, 3, (int[]){B, T, 3 * C}, 0);
        memcpy(out[s], cf_attn_core(&ctx, &lb->L, t, NULL)->data, sizeof out[s]);
    }
    CHECK(!memcmp(out[0], out[1], sizeof out[0]), "performer: steps 0 and 9 (one redraw period) differ");
    CHECK(memcmp(out[1], out[2], sizeof out[0]), "performer: step 10 did not redraw");
    cf_ctx eval;
    CF_ASSERT(cf_ctx_init(&eval, (size_t)1 << 24, 16) == 0, "%s", cf_error_msg());
    cf_ctx_begin(&eval, 0);
    cf_tensor *t = cf_tensor_leaf(&eval, qkv, 3, (int[]){B, T, 3 * C}, 0);
    CHECK(!memcmp(cf_attn_core(&eval, &lb->L, t, NULL)->data, out[2], sizeof out[2]),
          "performer: evaluation does not use the last training draw");
    layer_box *fresh = make_layer(CF_ATTN_PERFORMER, H, C, 1, 8, "softmax", 0);
    cf_attn_set_step(&fresh->L, 4, 13);
    CHECK(!memcmp(cf_attn_core(&eval, &fresh->L, t, NULL)->data, out[2], sizeof out[2]),
          "performer: cf_attn_set_step does not select the draw of its step");
    cf_ctx_free(&eval);
    cf_ctx_free(&ctx);
    free_layer(lb);
    free_layer(fresh);
}

/* ---- the Performer approaches softmax attention ------------------------------------------------------ */
static double softmax_err(int m, int causal, int seeds) {
    enum { B = 1, T = 48, H = 1, d = 16, C = H * d };
    static float qkv[B * T * 3 * C];
    double err = 0;
    for (int s = 0; s < seeds; s++) {
        t_fill_uniform(qkv, B * T * 3 * C, -1, 1, 300 + s);
        layer_box *lb = make_layer(CF_ATTN_PERFORMER, H, C, causal, m, "softmax", 0);
        cf_ctx ctx;
        CF_ASSERT(cf_ctx_init(&ctx, (size_t)1 << 24, 16) == 0, "%s", cf_error_msg());
        ctx.training = 1;
        ctx.seed = (uint64_t)s + 1;
        cf_ctx_begin(&ctx, 0);
        cf_tensor *t = cf_tensor_leaf(&ctx, qkv, 3, (int[]){B, T, 3 * C}, 0);
        const float *y = cf_attn_core(&ctx, &lb->L, t, NULL)->data;
        double sum = 0;
        for (int i = 0; i < T; i++) {
            double p[T], tot = 0, mx = -INFINITY;
            int last = causal ? i : T - 1;
            for (int j = 0; j <= last; j++) {
                double a = 0;
                for (int x = 0; x < d; x++) a += (double)qkv[i * 3 * C + x] * qkv[j * 3 * C + C + x];
                p[j] = a / sqrt((double)d);
                mx = fmax(mx, p[j]);
            }
            for (int j = 0; j <= last; j++) tot += p[j] = exp(p[j] - mx);
            for (int x = 0; x < d; x++) {
                double o = 0;
                for (int j = 0; j <= last; j++) o += p[j] / tot * qkv[j * 3 * C + 2 * C + x];
                sum += fabs(o - y[i * C + x]);
            }
        }
        err += sum / (T * d) / seeds;
        cf_ctx_free(&ctx);
        free_layer(lb);
    }
    return err;
}

static void approximation(void) {
    for (int causal = 0; causal < 2; causal++) {
        double e16 = softmax_err(16, causal, 8), e256 = softmax_err(256, causal, 8);
        printf("performer vs softmax attention causal=%d: mean abs error %.4f at m=16, %.4f at m=256\n", causal, e16, e256);
        CHECK(e256 < 0.5 * e16, "performer causal=%d: error %.4f at m=256 is not clearly below %.4f at m=16", causal,
              e256, e16);
    }
}

/* ---- threads and memory --------------------------------------------------------------------------------- */
typedef struct run_out { float *o, *g; size_t peak; } run_out;

static run_out run_core(cf_attn_kind type, int causal, int B, int T, const float *qkv, const float *dO) {
    enum { H = 2, d = 16, C = H * d };
    layer_box *lb = make_layer(type, H, C, causal, 32, "softmax", 0);
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, (size_t)1 << 28, 64) == 0, "%s", cf_error_msg());
    ctx.training = 1;
    cf_ctx_begin(&ctx, 0);
    int64_t n3 = (int64_t)B * T * 3 * C, n = (int64_t)B * T * C;
    float *x = malloc(sizeof(float) * n3);
    memcpy(x, qkv, sizeof(float) * n3);
    cf_tensor *t = cf_tensor_leaf(&ctx, x, 3, (int[]){B, T, 3 * C}, 1);
    cf_tensor *y = cf_attn_core(&ctx, &lb->L, t, NULL);
    cf_backward(&ctx, y, dO);
    run_out r = {malloc(sizeof(float) * n), malloc(sizeof(float) * n3), ctx.arena.peak};
    memcpy(r.o, y->data, sizeof(float) * n);
    memcpy(r.g, t->grad, sizeof(float) * n3);
    cf_ctx_free(&ctx);
    free(x);
    free_layer(lb);
    return r;
}

static void threads_and_memory(void) {
    enum { C = 32 };
    int nt0 = omp_get_max_threads();
    for (int type = 0; type < 2; type++) {
        cf_attn_kind k = type ? CF_ATTN_PERFORMER : CF_ATTN_LINEAR;
        int B = 3, T = 150;
        int64_t n3 = (int64_t)B * T * 3 * C, n = (int64_t)B * T * C;
        float *qkv = malloc(sizeof(float) * n3), *dO = malloc(sizeof(float) * n);
        t_fill_uniform(qkv, n3, -1, 1, 111);
        t_fill_uniform(dO, n, -1, 1, 112);
        omp_set_num_threads(1);
        run_out r1 = run_core(k, 1, B, T, qkv, dO);
        for (int th = 2; th <= 3; th++) {
            omp_set_num_threads(th);
            run_out r = run_core(k, 1, B, T, qkv, dO);
            CHECK(!memcmp(r.o, r1.o, sizeof(float) * n) && !memcmp(r.g, r1.g, sizeof(float) * n3),
                  "%s: %d threads differ from 1", cf_attn_kind_name(k), th);
            free(r.o); free(r.g);
        }
        omp_set_num_threads(nt0);
        free(r1.o); free(r1.g); free(qkv); free(dO);
        /* memory: linear in T, far below T x T */
        size_t peak[2];
        for (int s = 0; s < 2; s++) {
            int Tm = 2048 << s;
            float *x = malloc(sizeof(float) * Tm * 3 * C), *g = malloc(sizeof(float) * Tm * C);
            t_fill_uniform(x, (int64_t)Tm * 3 * C, -1, 1, 113);
            t_fill_uniform(g, (int64_t)Tm * C, -1, 1, 114);
            run_out r = run_core(k, 1, 1, Tm, x, g);
            peak[s] = r.peak;
            free(r.o); free(r.g); free(x); free(g);
        }
        CHECK(peak[1] < 2.2 * peak[0] && peak[1] < (size_t)4096 * 4096 * 4 / 4,
              "%s: arena peak %zu at T=4096, %zu at 2048", cf_attn_kind_name(k), peak[1], peak[0]);
    }
}

int main(void) {
    for (int causal = 0; causal < 2; causal++) {
        linear_exact(2, 3, 70, 8, causal, 1);
        linear_exact(1, 2, 33, 16, causal, 0);
        linear_exact(2, 1, 1, 4, causal, 0);
        kernel_exact(causal, 1e-6f);
        kernel_exact(causal, 0.0f);
        for (int relu = 0; relu < 2; relu++) performer_exact(causal, relu);
    }
    for (int which = 0; which < 2; which++)
        for (int relu = 0; relu < 2; relu++) favor_exact(which, relu);
    gradchecks();
    draws();
    redraw_schedule();
    approximation();
    threads_and_memory();
    TEST_MAIN_END();
}
