/* Performer, FAVOR+ (Choromanski et al. 2020; docs/attention.md section 6): random features whose dot
 * products estimate the softmax kernel exp(q . k / sqrt(d)) (positive orthogonal random features),
 * or the generalised ReLU kernel; the attention itself is the prefix-sum kernel of linear.c on
 * these features (cf_kernel_attention), so no T x T matrix and O(T m) memory.
 *
 * The random matrix W [m, d] is not a parameter: it has no gradient and is never stored. It is a
 * pure function of (train.seed, the layer, the redraw index step / redraw_every), drawn again
 * whenever a layer runs (a few d x d Gram-Schmidt passes, nothing beside the attention). A
 * checkpoint therefore needs nothing extra to resume with the same features: the step it stores
 * determines them. Gradients flow through the feature map into q and k.
 *
 * The softmax features follow google-research's fast_attention and performer-pytorch:
 *   x^ = x d^(-1/4),  u = W x^,  h = |x^|^2 / 2,
 *   query: phi_r = m^(-1/2) (exp(u_r - h - max_r' u_r') + eps)   (the row's own maximum)
 *   key:   phi_r = m^(-1/2) (exp(u_r - h - M) + eps)              (M: maximum over the sequence and
 *                                                                 features, per batch row and head)
 * with eps = 1e-6. The maxima only keep exp in range: a query's factor cancels between numerator
 * and denominator, the key factor cancels for every query; they are constants for the gradient
 * (performer-pytorch detaches them). As in those implementations M spans the whole sequence in the
 * causal case too, so a later key can reach an earlier query only through the eps terms.
 * ReLU features (TF relu_kernel_transformation): phi_r = relu(m^(-1/2) w_r . x) + 1e-3.
 *
 * Backward of the softmax features (M constant): e_r = m^(-1/2) exp(u_r - h - M),
 *   du_r = dphi_r e_r,  dx = d^(-1/4) W^T du - d^(-1/2) (sum_r du_r) x;
 * of the ReLU features: dx = m^(-1/2) W^T (dphi [u > 0]). u is recomputed (one GEMM) rather than
 * kept. The products with W run through cf_gemm, which is deterministic for a thread count. */
#include <math.h>
#include <string.h>
#include <omp.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif
#include "cformer/attention.h"
#include "cformer/kernels.h"
#include "../kernels/attn_tiles.h"
#include "../ops/backward.h"
#include "cache.h"

#define FAVOR_EPS 1e-6f
#define RELU_EPS 1e-3f

void cf_performer_draw(cf_ctx *ctx, float *w, int m, int d, uint64_t seed, uint64_t layer_key, uint64_t draw) {
    CF_ASSERT(m >= 1 && d >= 1, "performer draw: m %d, d %d", m, d);
    cf_rng r;
    cf_rng_seed(&r, cf_rng_key(seed, layer_key, draw));
    size_t mark = cf_arena_mark(&ctx->arena);
    double *G = cf_scratch(ctx, (size_t)d * d * sizeof(double));
    for (int r0 = 0; r0 < m; r0 += d) {
        for (int64_t i = 0; i < (int64_t)d * d; i++) G[i] = cf_rng_normal(&r);
        /* modified Gram-Schmidt on the rows, twice ("twice is enough"): the rows of Q^T of G's QR */
        for (int pass = 0; pass < 2; pass++)
            for (int i = 0; i < d; i++) {
                double *gi = G + (int64_t)i * d;
                for (int j = 0; j < i; j++) {
                    const double *gj = G + (int64_t)j * d;
                    double dot = 0;
                    for (int x = 0; x < d; x++) dot += gi[x] * gj[x];
                    for (int x = 0; x < d; x++) gi[x] -= dot * gj[x];
                }
                double nrm = 0;
                for (int x = 0; x < d; x++) nrm += gi[x] * gi[x];
                nrm = sqrt(nrm);
                CF_ASSERT(nrm > 0, "performer draw: degenerate Gaussian block");
                for (int x = 0; x < d; x++) gi[x] /= nrm;
            }
        int rows = m - r0 < d ? m - r0 : d;
        for (int i = 0; i < rows; i++)
            for (int x = 0; x < d; x++) w[(int64_t)(r0 + i) * d + x] = (float)G[(int64_t)i * d + x];
    }
    /* row norms of independent Gaussian vectors: each row is then marginally N(0, I_d) */
    for (int i = 0; i < m; i++) {
        double nrm = 0;
        for (int x = 0; x < d; x++) {
            double g = cf_rng_normal(&r);
            nrm += g * g;
        }
        nrm = sqrt(nrm);
        for (int x = 0; x < d; x++) w[(int64_t)i * d + x] = (float)(w[(int64_t)i * d + x] * nrm);
    }
    cf_arena_rewind(&ctx->arena, mark);
}

/* out[r] = c (exp(u[r] - shift) + add) for r < m */
static void exp_shift(const float *u, float shift, float c, float add, float *out, int m) {
    int r = 0;
#ifdef __AVX512F__
    const __m512 l2e = _mm512_set1_ps(LOG2E), sv = _mm512_set1_ps(shift);
    const __m512 cv = _mm512_set1_ps(c), av = _mm512_set1_ps(add), lo = _mm512_set1_ps(-200.0f);
    for (; r + 16 <= m; r += 16) {
        __m512 t = _mm512_max_ps(_mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(u + r), sv), l2e), lo);
        _mm512_storeu_ps(out + r, _mm512_mul_ps(cv, _mm512_add_ps(exp2_16(t), av)));
    }
#endif
    for (; r < m; r++) out[r] = c * (expf(u[r] - shift) + add);
}

typedef struct fgeom {
    int B, T, H, d, m, which, relu;
    int64_t C;
    const float *x;                 /* the q or k columns of qkv, head 0, row 0; row stride 3C */
    const float *w;                 /* [m, d] */
    const uint8_t *keep;            /* keys only */
    float alpha;                    /* u = alpha W x: d^(-1/4) (softmax) or m^(-1/2) (relu) */
} fgeom;

static fgeom fgeom_of(cf_tensor *qkv, int which, int n_heads, const float *w, int m, int relu, const uint8_t *keep) {
    fgeom g = {qkv->shape[0], qkv->shape[1], n_heads, 0, m, which, relu, qkv->shape[2] / 3, NULL, w, NULL, 0};
    g.d = (int)(g.C / n_heads);
    g.x = qkv->data + which * g.C;
    g.keep = which ? keep : NULL;
    g.alpha = relu ? 1.0f / sqrtf((float)m) : 1.0f / sqrtf(sqrtf((float)g.d));
    return g;
}

/* u = alpha W x for every row and head: [B*T, H*m] */
static void project(const fgeom *g, float *u) {
    int rows = g->B * g->T;
    for (int h = 0; h < g->H; h++)
        cf_gemm(0, 1, rows, g->m, g->d, g->alpha, g->x + (int64_t)h * g->d, (int)(3 * g->C), g->w, g->d, 0.0f,
                u + (int64_t)h * g->m, g->H * g->m);
}

static int row_kept(const fgeom *g, int64_t row) { return !g->keep || g->keep[row]; }

/* h = |x^|^2 / 2 of row, head */
static float half_norm(const fgeom *g, int64_t row, int h) {
    const float *x = g->x + row * 3 * g->C + (int64_t)h * g->d;
    float s = 0;
    for (int i = 0; i < g->d; i++) s += x[i] * x[i];
    return 0.5f * g->alpha * g->alpha * s;
}

static float row_max(const float *u, int m) {
    float mx = -INFINITY;
    for (int r = 0; r < m; r++) mx = u[r] > mx ? u[r] : mx;
    return mx;
}

/* The stabilisers: per (row, head) for queries, per (batch row, head) for keys, written to stab
 * ([B*T*H] or [B*H]); u holds the projections. Maxima do not depend on the order of the scan. */
static void stabilisers(const fgeom *g, const float *u, float *stab, float *rowmax) {
    int64_t n = (int64_t)g->B * g->T * g->H;
    float *dst = g->which ? rowmax : stab;
    #pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) dst[i] = row_max(u + i * g->m, g->m);
    if (!g->which) return;
    for (int b = 0; b < g->B; b++)
        for (int h = 0; h < g->H; h++) {
            float M = -INFINITY;
            for (int t = 0; t < g->T; t++) {
                int64_t row = (int64_t)b * g->T + t;
                if (row_kept(g, row) && rowmax[row * g->H + h] > M) M = rowmax[row * g->H + h];
            }
            stab[b * g->H + h] = M == -INFINITY ? 0.0f : M;   /* every key padded: no feature is used */
        }
}

static float stab_of(const fgeom *g, const float *stab, int64_t row, int h) {
    return g->which ? stab[(row / g->T) * g->H + h] : stab[row * g->H + h];
}

typedef struct fsaved { float *stab; const float *w; const uint8_t *keep; int which, H, m, relu; } fsaved;

cf_tensor *cf_favor_features(cf_ctx *ctx, cf_tensor *qkv, int which, int n_heads, const float *w, int m, int relu,
                             const uint8_t *key_keep) {
    CF_ASSERT(qkv->ndim == 3 && n_heads > 0 && qkv->shape[2] % (3 * n_heads) == 0 && qkv->shape[1] > 0,
              "favor features: qkv %s is not [B, T, 3*H*d] with H = %d", cf_shape_str(qkv), n_heads);
    CF_ASSERT((which == 0 || which == 1) && m >= 1 && w, "favor features: which %d, m %d", which, m);
    fgeom g = fgeom_of(qkv, which, n_heads, w, m, relu, key_keep);
    cf_tensor *out = cf_tensor_3d(ctx, g.B, g.T, g.H * m);
    int record = cf_needs_grad(ctx, 1, &qkv);
    size_t nstab = relu ? 1 : which ? (size_t)g.B * g.H : (size_t)g.B * g.T * g.H;
    fsaved *sv = record ? cf_scratch(ctx, sizeof *sv) : NULL;
    float *stab = record ? cf_scratch(ctx, nstab * sizeof(float)) : NULL;
    size_t mark = cf_arena_mark(&ctx->arena);
    if (!stab) stab = cf_scratch(ctx, nstab * sizeof(float));
    project(&g, out->data);
    int64_t n = (int64_t)g.B * g.T * g.H;
    float c = 1.0f / sqrtf((float)m);
    if (relu) {
        #pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; i++) {
            float *u = out->data + i * m;
            int kept = row_kept(&g, i / g.H);
            for (int r = 0; r < m; r++) u[r] = kept ? (u[r] > 0 ? u[r] : 0.0f) + RELU_EPS : 0.0f;
        }
    } else {
        float *rowmax = which ? cf_scratch(ctx, (size_t)n * sizeof(float)) : NULL;
        stabilisers(&g, out->data, stab, rowmax);
        #pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; i++) {
            int64_t row = i / g.H;
            int h = (int)(i % g.H);
            float *u = out->data + i * m;
            if (!row_kept(&g, row)) {
                memset(u, 0, sizeof(float) * m);
                continue;
            }
            exp_shift(u, half_norm(&g, row, h) + stab_of(&g, stab, row, h), c, FAVOR_EPS, u, m);
        }
    }
    cf_arena_rewind(&ctx->arena, mark);
    cf_node *nd = cf_record(ctx, CF_OP_FAVOR, out, 1, &qkv);
    if (nd) {
        *sv = (fsaved){stab, w, key_keep, which, n_heads, m, relu};
        nd->saved = sv;
    }
    return out;
}

void cf_favor_backward(cf_ctx *ctx, cf_node *n) {
    const fsaved *sv = n->saved;
    cf_tensor *qkv = n->in[0];
    fgeom g = fgeom_of(qkv, sv->which, sv->H, sv->w, sv->m, sv->relu, sv->keep);
    int m = g.m;
    int64_t nr = (int64_t)g.B * g.T * g.H;
    const float *dphi = n->out->grad;
    size_t mark = cf_arena_mark(&ctx->arena);
    float *du = cf_scratch(ctx, (size_t)nr * m * sizeof(float));
    float *ssum = g.relu ? NULL : cf_scratch(ctx, (size_t)nr * sizeof(float));
    project(&g, du);
    float c = 1.0f / sqrtf((float)m);
    #pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < nr; i++) {
        int64_t row = i / g.H;
        int h = (int)(i % g.H);
        float *u = du + i * m;
        const float *dp = dphi + i * m;
        if (!row_kept(&g, row)) {
            memset(u, 0, sizeof(float) * m);
            if (ssum) ssum[i] = 0;
            continue;
        }
        if (g.relu) {
            for (int r = 0; r < m; r++) u[r] = u[r] > 0 ? dp[r] : 0.0f;
            continue;
        }
        exp_shift(u, half_norm(&g, row, h) + stab_of(&g, sv->stab, row, h), c, 0.0f, u, m);
        float s = 0;
        for (int r = 0; r < m; r++) {
            u[r] *= dp[r];
            s += u[r];
        }
        ssum[i] = s;
    }
    float *gx = cf_grad(ctx, qkv) + sv->which * g.C;
    int rows = g.B * g.T;
    for (int h = 0; h < g.H; h++)
        cf_gemm(0, 0, rows, g.d, m, g.alpha, du + (int64_t)h * m, g.H * m, g.w, g.d, 1.0f, gx + (int64_t)h * g.d,
                (int)(3 * g.C));
    if (ssum) {
        float a2 = g.alpha * g.alpha;
        #pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < nr; i++) {
            int64_t row = i / g.H, at = row * 3 * g.C + (i % g.H) * g.d;
            float s = a2 * ssum[i];
            for (int x = 0; x < g.d; x++) gx[at + x] -= s * g.x[at + x];
        }
    }
    cf_arena_rewind(&ctx->arena, mark);
}

/* ---- the row of the Performer ----------------------------------------------------------------------- */

static int performer_check(const cf_attn_config *c, const char *path, int n_heads, int d_model) {
    (void)n_heads; (void)d_model;
    if (c->features < 1) return cf_set_error("%s.features: must be >= 1 (got %d)", path, c->features);
    if (c->redraw_every < 1) return cf_set_error("%s.redraw_every: must be >= 1 (got %d)", path, c->redraw_every);
    return 0;
}

/* The random features of this call: in training a pure function of (train.seed, layer,
 * ctx->step / redraw_every), noted in the layer's draw record; outside training the noted draw,
 * so evaluation and sampling use the features the weights were last trained with. */
static float *performer_w(cf_ctx *ctx, const cf_attn_call *c, int m, int d) {
    uint64_t seed;
    int64_t index;
    if (ctx->training) {
        seed = ctx->seed;
        index = (int64_t)(ctx->step / (uint64_t)c->cfg->redraw_every);
        if (c->draw) *c->draw = (cf_attn_draw){.seed = seed, .index = index};
    } else if (c->draw && c->draw->index >= 0) {
        seed = c->draw->seed;
        index = c->draw->index;
    } else {
        seed = ctx->seed;
        index = 0;
    }
    float *w = cf_scratch(ctx, (size_t)m * d * sizeof(float));
    cf_performer_draw(ctx, w, m, d, seed, c->layer_key, (uint64_t)index);
    return w;
}

static cf_tensor *performer_core(cf_ctx *ctx, const cf_attn_call *c, cf_tensor *qkv) {
    int m = c->cfg->features, d = qkv->shape[2] / 3 / c->n_heads, relu = c->cfg->kernel == CF_FAVOR_RELU;
    float *w = performer_w(ctx, c, m, d);
    cf_tensor *fq = cf_favor_features(ctx, qkv, 0, c->n_heads, w, m, relu, NULL);
    cf_tensor *fk = cf_favor_features(ctx, qkv, 1, c->n_heads, w, m, relu, c->key_keep);
    /* no eps: the features are positive (their own eps terms), so the denominator is too */
    return cf_kernel_attention(ctx, fq, fk, qkv, c->n_heads, c->causal, 0.0f, c->key_keep);
}

/* ---- incremental decoding: the recurrent form of the kernel attention above -------------------------
 * Per head: S = sum_j phi(k_j) v_j^T and z = sum_j phi(k_j), then out = phi(q)^T S / (phi(q) . z).
 * The key features of the softmax kernel, c (exp(u_j - h_j - M) + eps), depend on M, the largest
 * projection among the keys so far (the causal forward over the same prefix uses the maximum over
 * the whole prefix). The sums are therefore kept in two parts: E = sum_j exp(u_j - h_j - M) v_j^T
 * (and its z part), rescaled by exp(M_old - M) whenever a key raises M, and sum_j v_j (and the
 * count) for the eps term: S = c (E + eps sum_j v_j^T), z = c (E 1 + eps n), exactly the prefix
 * forward's sums. The ReLU kernel has no maximum: S and z are plain sums. Constant memory and cost
 * per byte. */

/* aux: W [m, d] (the layer's draw), then per head E [m, d], e [m], vsum [d], M, and a workspace
 * of 2 m floats */
static size_t perf_head_floats(int m, int d) { return (size_t)m * d + m + d + 1 + 2 * (size_t)m; }

static int performer_rows(const cf_attn_config *c, int span) { (void)c, (void)span; return 0; }
static size_t performer_aux(const cf_attn_config *c, int n_heads, int d_head, int span) {
    (void)span;
    return (size_t)c->features * d_head + (size_t)n_heads * perf_head_floats(c->features, d_head);
}

static void performer_start(cf_ctx *ctx, const cf_attn_call *call, cf_attn_cache *c) {
    int m = call->cfg->features, d = c->Dh;
    size_t mark = cf_arena_mark(&ctx->arena);
    memcpy(c->aux, performer_w(ctx, call, m, d), sizeof(float) * (size_t)m * d);
    cf_arena_rewind(&ctx->arena, mark);
    for (int h = 0; h < c->H; h++) {
        float *E = c->aux + (size_t)m * d + (size_t)h * perf_head_floats(m, d);
        E[(size_t)m * d + m + d] = -INFINITY;                     /* M: no key yet */
    }
}

/* u = alpha W x [m] and h = |alpha x|^2 / 2 */
static float perf_project(const float *W, const float *x, int m, int d, float alpha, float *u) {
    cf_dot_rows(m, d, W, d, NULL, x, u);
    for (int r = 0; r < m; r++) u[r] *= alpha;
    float xx;
    cf_dot_rows(1, d, x, d, NULL, x, &xx);
    return 0.5f * alpha * alpha * xx;
}

static void performer_step(const cf_attn_call *call, cf_attn_cache *c, const float *q, const float *k,
                           const float *v, int ld, int n, float *out) {
    int m = call->cfg->features, d = c->Dh, H = c->H, relu = call->cfg->kernel == CF_FAVOR_RELU;
    float alpha = relu ? 1.0f / sqrtf((float)m) : 1.0f / sqrtf(sqrtf((float)d)), cm = 1.0f / sqrtf((float)m);
    const float *W = c->aux;
    for (int r = 0; r < n; r++) {
        double count = (double)(c->pos + 1);                      /* keys so far, this one included */
        #pragma omp parallel for schedule(static) if (H * m * d >= CF_CACHE_PAR_MIN)
        for (int h = 0; h < H; h++) {
            float *E = c->aux + (size_t)m * d + (size_t)h * perf_head_floats(m, d), *e = E + (size_t)m * d;
            float *vsum = e + m, *M = vsum + d, *u = M + 1, *f = u + m;
            int g = cf_attn_cache_kv_head(c, h);
            const float *kr = k + (int64_t)r * ld + g * d, *vr = v + (int64_t)r * ld + g * d;
            const float *qr = q + (int64_t)r * ld + h * d;
            float *o = out + ((int64_t)r * H + h) * d;
            /* the key */
            float hn = perf_project(W, kr, m, d, alpha, u);
            if (relu) {
                for (int j = 0; j < m; j++) f[j] = (u[j] > 0 ? u[j] : 0.0f) + RELU_EPS;
            } else {
                float mx = row_max(u, m);
                if (mx > *M) {
                    if (*M > -INFINITY) {
                        float s = expf(*M - mx);
                        for (size_t j = 0; j < (size_t)m * d + m; j++) E[j] *= s;
                    }
                    *M = mx;
                }
                exp_shift(u, hn + *M, 1.0f, 0.0f, f, m);
                for (int i = 0; i < d; i++) vsum[i] += vr[i];
            }
            for (int j = 0; j < m; j++) {
                for (int i = 0; i < d; i++) E[(size_t)j * d + i] += f[j] * vr[i];
                e[j] += f[j];
            }
            /* the query */
            float hq = perf_project(W, qr, m, d, alpha, u);
            if (relu) for (int j = 0; j < m; j++) f[j] = (u[j] > 0 ? u[j] : 0.0f) + RELU_EPS;
            else exp_shift(u, hq + row_max(u, m), cm, FAVOR_EPS, f, m);
            float den = 0;
            memset(o, 0, sizeof(float) * d);
            for (int j = 0; j < m; j++) {
                float fj = relu ? f[j] : f[j] * cm;
                den += fj * (relu ? e[j] : e[j] + FAVOR_EPS * (float)count);
                for (int i = 0; i < d; i++) o[i] += fj * (E[(size_t)j * d + i] + (relu ? 0.0f : FAVOR_EPS * vsum[i]));
            }
            float inv = den > 0 ? 1.0f / den : 0.0f;
            for (int i = 0; i < d; i++) o[i] *= inv;
        }
        c->pos++;
    }
}

const cf_attn_variant cf_attn_performer = {
    .name = "performer", .flags = CF_ATTN_KEY_PADDING | CF_ATTN_SHARED_KV | CF_ATTN_ROPE | CF_ATTN_QK_NORM,
    .check = performer_check, .core = performer_core,
    .cache_rows = performer_rows, .cache_aux = performer_aux, .cache_start = performer_start,
    .step = performer_step};
