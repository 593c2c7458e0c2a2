/* Window and sparse attention (cf_masked_attention_qkv, and cf_attn_core on a layer) against dense
 * softmax attention in double under an explicit mask that this file builds from the conventions of
 * docs/attention.md sections 3 and 4.1 on its own: forward and all gradients, causal and
 * bidirectional, every combine mode and both layer parities, strides below, at and above the
 * 64-key block, lengths that leave partial blocks and partial residue classes, key padding,
 * attention dropout (the op's documented mask); gradient checks by finite differences; bitwise
 * equality across thread counts (which pits the two backward drivers against each other); and an
 * arena peak with no T x T term. */
#include <string.h>
#include <omp.h>
#include "gradcheck.h"
#include "cformer/attention.h"

/* ---- the mask, written from the conventions ------------------------------------------------------ */
typedef struct tcase {
    cf_attn_kind type;
    int window, stride, c;
    const char *combine;
    int layer, causal;
    int B, H, T, Dh;
    int keep;        /* pad some keys */
    float p;         /* attention dropout */
} tcase;

static int sees(const tcase *c, int h, int i, int j) {
    if (c->causal && j > i) return 0;
    int d = i > j ? i - j : j - i, l = c->stride;
    if (c->type == CF_ATTN_WINDOW) return d <= c->window;
    int p1, p2;
    if (c->type == CF_ATTN_SPARSE_STRIDED) {
        p1 = d < l;                       /* causal: i - l < j <= i */
        p2 = d % l == 0;
    } else {
        p1 = j / l == i / l;
        p2 = j % l >= l - c->c;
    }
    if (!strcmp(c->combine, "merged")) return p1 || p2;
    int part1 = !strcmp(c->combine, "heads") ? h % 2 == 0 : c->layer % 2 == 0;
    return part1 ? p1 : p2;
}

/* padding per batch row: row 0 drops scattered keys, row 1 its first 3 */
static int key_kept(const tcase *c, const uint8_t *keep, int b, int j) { return !c->keep || keep[b * c->T + j]; }

static void make_keep(const tcase *c, uint8_t *keep) {
    cf_rng r;
    cf_rng_seed(&r, 99);
    for (int b = 0; b < c->B; b++)
        for (int j = 0; j < c->T; j++) {
            int k = 1;
            if (b == 0) k = cf_rng_float(&r) > 0.25f;
            if (b == 1) k = j >= 3;
            keep[b * c->T + j] = (uint8_t)k;
        }
}

/* Dense attention in double on qkv [B, T, 3C], gradients of sum(O * dO) into dqkv [B, T, 3C]. */
static void reference(const tcase *c, const float *qkv, const uint8_t *keep, uint64_t zkey, const float *dO,
                      double *O, double *dqkv) {
    int C = c->H * c->Dh, T = c->T, Dh = c->Dh;
    int64_t s3 = 3 * C;
    double scale = 1.0 / sqrt((double)Dh);
    double *S = malloc(sizeof(double) * T), *P = malloc(sizeof(double) * T), *Z = malloc(sizeof(double) * T);
    int *vis = malloc(sizeof(int) * T);
    memset(dqkv, 0, sizeof(double) * c->B * T * s3);
    for (int b = 0; b < c->B; b++)
        for (int h = 0; h < c->H; h++)
            for (int i = 0; i < T; i++) {
                const float *qi = qkv + ((int64_t)b * T + i) * s3 + h * Dh, *gi = dO + ((int64_t)b * T + i) * C + h * Dh;
                double *oi = O + ((int64_t)b * T + i) * C + h * Dh, mx = -INFINITY, sum = 0;
                int any = 0;
                for (int j = 0; j < T; j++) {
                    vis[j] = sees(c, h, i, j) && key_kept(c, keep, b, j);
                    const float *kj = qkv + ((int64_t)b * T + j) * s3 + C + h * Dh;
                    double s = 0;
                    for (int d = 0; d < Dh; d++) s += (double)qi[d] * kj[d];
                    S[j] = s * scale;
                    if (vis[j] && S[j] > mx) mx = S[j];
                    any |= vis[j];
                    uint64_t idx = (((uint64_t)b * c->H + h) * T + i) * T + j;
                    Z[j] = c->p > 0 ? (cf_rng_uniform(zkey, idx) >= c->p ? 1.0 / (1.0 - c->p) : 0.0) : 1.0;
                }
                for (int d = 0; d < Dh; d++) oi[d] = 0;
                if (!any) continue;
                for (int j = 0; j < T; j++) sum += P[j] = vis[j] ? exp(S[j] - mx) : 0;
                for (int j = 0; j < T; j++) P[j] /= sum;
                double D = 0;
                for (int j = 0; j < T; j++) {
                    const float *vj = qkv + ((int64_t)b * T + j) * s3 + 2 * C + h * Dh;
                    double dpd = 0;
                    for (int d = 0; d < Dh; d++) {
                        oi[d] += P[j] * Z[j] * vj[d];
                        dpd += (double)gi[d] * vj[d];
                        dqkv[((int64_t)b * T + j) * s3 + 2 * C + h * Dh + d] += P[j] * Z[j] * gi[d];
                    }
                    S[j] = dpd * Z[j];
                    D += P[j] * S[j];
                }
                for (int j = 0; j < T; j++) {
                    if (!vis[j]) continue;
                    double ds = P[j] * (S[j] - D) * scale;
                    const float *kj = qkv + ((int64_t)b * T + j) * s3 + C + h * Dh;
                    for (int d = 0; d < Dh; d++) {
                        dqkv[((int64_t)b * T + i) * s3 + h * Dh + d] += ds * kj[d];
                        dqkv[((int64_t)b * T + j) * s3 + C + h * Dh + d] += ds * qi[d];
                    }
                }
            }
    free(S); free(P); free(Z); free(vis);
}

/* ---- running the op ---------------------------------------------------------------------------------- */
typedef struct result { float *o, *g; size_t peak; } result;
static void result_free(result *r) { free(r->o); free(r->g); }

static cf_attn_config config_of(const tcase *c) {
    cf_attn_config a;
    memset(&a, 0, sizeof a);
    a.type = c->type;
    a.window = c->window;
    a.stride = c->stride;
    a.c = c->c;
    for (int i = 0; cf_combine_names[i]; i++)
        if (!strcmp(cf_combine_names[i], c->combine)) a.combine = (cf_combine_kind)i;
    return a;
}

#define STEP 7

/* via_layer: through cf_attn_core on a layer named blocks.<layer>.attn (the pattern it derives from
 * its config and name), else the op on cf_attn_pattern_of */
static result run_op(const tcase *c, const float *qkv, const uint8_t *keep, const float *dO, int via_layer) {
    int C = c->H * c->Dh;
    int64_t n3 = (int64_t)c->B * c->T * 3 * C, n = (int64_t)c->B * c->T * C;
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, (size_t)1 << 28, 64) == 0, "%s", cf_error_msg());
    ctx.training = 1;
    ctx.seed = 5;
    cf_ctx_begin(&ctx, STEP);
    float *x = malloc(sizeof(float) * n3);
    memcpy(x, qkv, sizeof(float) * n3);
    cf_tensor *t = cf_tensor_leaf(&ctx, x, 3, (int[]){c->B, c->T, 3 * C}, 1);
    cf_attn_config a = config_of(c);
    cf_tensor *y;
    if (via_layer) {
        cf_params p;
        cf_params_init(&p);
        cf_attn_layer L;
        char name[32];
        snprintf(name, sizeof name, "blocks.%d.attn", c->layer);
        cf_attn_decl(&L, &p, name, C, c->H, c->causal, c->p, &a, 1);
        y = cf_attn_core(&ctx, &L, t, c->keep ? keep : NULL);
        cf_params_free(&p);
    } else {
        cf_attn_pattern pat = cf_attn_pattern_of(&a, c->layer);
        cf_attn_opts o = {.causal = c->causal, .dropout = c->p, .key_keep = c->keep ? keep : NULL};
        y = cf_masked_attention_qkv(&ctx, t, c->H, &pat, &o);
    }
    cf_backward(&ctx, y, dO);
    result r = {malloc(sizeof(float) * n), malloc(sizeof(float) * n3), ctx.arena.peak};
    memcpy(r.o, y->data, sizeof(float) * n);
    memcpy(r.g, t->grad, sizeof(float) * n3);
    free(x);
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

static void describe(const tcase *c, char *s, size_t n) {
    snprintf(s, n, "%s w=%d l=%d c=%d %s layer=%d causal=%d B=%d H=%d T=%d Dh=%d keep=%d p=%.1f",
             cf_attn_kind_name(c->type), c->window, c->stride, c->c, c->combine, c->layer, c->causal, c->B, c->H,
             c->T, c->Dh, c->keep, c->p);
}

static int n_cases;

static void check_case(const tcase *c, int via_layer) {
    int C = c->H * c->Dh;
    int64_t n3 = (int64_t)c->B * c->T * 3 * C, n = (int64_t)c->B * c->T * C;
    float *qkv = malloc(sizeof(float) * n3), *dO = malloc(sizeof(float) * n);
    uint8_t *keep = malloc((size_t)c->B * c->T);
    /* a spread of 2.5 gives peaked rows as well as flat ones */
    t_fill_uniform(qkv, n3, -2.5f, 2.5f, 100 + c->T + c->stride);
    t_fill_uniform(dO, n, -1, 1, 200 + c->T);
    make_keep(c, keep);
    double *O = malloc(sizeof(double) * n), *G = malloc(sizeof(double) * n3);
    reference(c, qkv, c->keep ? keep : NULL, cf_rng_key(5, STEP, 0), dO, O, G);
    result r = run_op(c, qkv, keep, dO, via_layer);
    char name[256];
    describe(c, name, sizeof name);
    double eo = err_d(r.o, O, n), eg = err_d(r.g, G, n3);
    CHECK(eo < 1e-5, "%s: output rel err %.3g", name, eo);
    CHECK(eg < 1e-4, "%s: gradient rel err %.3g", name, eg);
    n_cases++;
    result_free(&r);
    free(O); free(G); free(qkv); free(dO); free(keep);
}

/* every pattern, combine mode, parity and direction over several shapes */
static void dense_equivalence(void) {
    static const char *combines[] = {"alternate", "heads", "merged"};
    static const int shapes[][2] = {{1, 1}, {7, 3}, {100, 10}, {150, 64}, {200, 70}, {130, 1}};   /* (T, stride) */
    for (int causal = 0; causal < 2; causal++) {
        /* window: narrower than a block, one block exactly, wider than the sequence */
        static const int ws[] = {0, 5, 64, 100, 300};
        for (int wi = 0; wi < 5; wi++) {
            tcase c = {CF_ATTN_WINDOW, ws[wi], 0, 0, "alternate", 0, causal, 2, 2, wi == 2 ? 150 : 97, 16,
                       wi % 2, wi == 3 ? 0.2f : 0.0f};
            check_case(&c, 0);
        }
        for (int type = 0; type < 2; type++)
            for (int ci = 0; ci < 3; ci++)
                for (int si = 0; si < 6; si++) {
                    int T = shapes[si][0], l = shapes[si][1];
                    tcase c = {type ? CF_ATTN_SPARSE_FIXED : CF_ATTN_SPARSE_STRIDED, 0, l, l > 8 ? 8 : l,
                               combines[ci], 0, causal, 2, 3, T, 8, si == 2 || si == 4, si == 3 ? 0.2f : 0.0f};
                    if (si == 4) c.c = l;          /* every column a summary column */
                    if (si == 5) c.c = 1;
                    for (int layer = 0; layer < (ci == 0 ? 2 : 1); layer++) {
                        c.layer = layer;
                        check_case(&c, layer == 1 && si == 2);
                    }
                }
    }
    /* d_head 64 (the bench's) and an odd one, through the layer */
    tcase a = {CF_ATTN_SPARSE_STRIDED, 0, 12, 0, "merged", 0, 1, 1, 2, 180, 64, 0, 0};
    check_case(&a, 1);
    tcase b = {CF_ATTN_SPARSE_FIXED, 0, 16, 5, "merged", 3, 0, 1, 2, 90, 20, 1, 0.1f};
    check_case(&b, 1);
    printf("dense equivalence: %d cases\n", n_cases);
}

/* ---- gradient checks ----------------------------------------------------------------------------- */
typedef struct gc_arg { cf_attn_pattern pat; cf_attn_opts o; int H; } gc_arg;
static cf_tensor *f_masked(cf_ctx *ctx, cf_tensor **in, void *arg) {
    gc_arg *a = arg;
    return cf_masked_attention_qkv(ctx, in[0], a->H, &a->pat, &a->o);
}

static void gradchecks(void) {
    enum { B = 2, T = 13, H = 2, Dh = 4, C = H * Dh };
    static float qkv[B * T * 3 * C];
    static uint8_t keep[B * T];
    for (int j = 0; j < B * T; j++) keep[j] = !(j == 2 || j == 17 || j == 18);
    t_fill_uniform(qkv, B * T * 3 * C, -1.5f, 1.5f, 41);
    static const char *combines[] = {"alternate", "heads", "merged"};
    for (int causal = 0; causal < 2; causal++)
        for (int type = 0; type < 3; type++)
            for (int ci = 0; ci < (type ? 3 : 1); ci++)
                for (int layer = 0; layer < (ci == 0 && type ? 2 : 1); layer++) {
                    cf_attn_config cfg = {.type = type == 0 ? CF_ATTN_WINDOW : type == 1 ? CF_ATTN_SPARSE_STRIDED
                                                                                        : CF_ATTN_SPARSE_FIXED,
                                          .window = 3, .stride = 4, .c = 2};
                    cfg.combine = (cf_combine_kind)ci;
                    for (int p = 0; p < 2; p++) {
                        gc_arg a = {cf_attn_pattern_of(&cfg, layer),
                                    {.causal = causal, .dropout = p ? 0.3f : 0, .key_keep = keep}, H};
                        gc_input in[1] = {{qkv, 3, {B, T, 3 * C}, 1}};
                        char name[96];
                        snprintf(name, sizeof name, "%s %s layer=%d causal=%d dropout=%d", cf_attn_kind_name(cfg.type),
                                 combines[ci], layer, causal, p);
                        gradcheck(name, f_masked, &a, in, 1, 1e-2f, 1e-2);
                    }
                }
}

/* ---- threads ---------------------------------------------------------------------------------------- */
static int same(const result *a, const result *b, int64_t n, int64_t n3) {
    return !memcmp(a->o, b->o, sizeof(float) * n) && !memcmp(a->g, b->g, sizeof(float) * n3);
}

/* B*H = 1: the band stage runs the two-pass backward at 2 and 3 threads and per segment at 1; the
 * strided lanes run per segment; B*H = 6 per segment throughout. All must agree bitwise. */
static void thread_invariance(void) {
    tcase cs[3] = {{CF_ATTN_WINDOW, 0, 0, 0, "alternate", 0, 1, 1, 1, 300, 24, 1, 0.2f},
                   {CF_ATTN_SPARSE_STRIDED, 0, 17, 0, "merged", 0, 1, 1, 1, 290, 16, 1, 0.2f},
                   {CF_ATTN_SPARSE_FIXED, 0, 20, 6, "heads", 0, 0, 2, 3, 200, 16, 1, 0.2f}};
    cs[0].window = 70;
    int nt0 = omp_get_max_threads();
    for (int t = 0; t < 3; t++) {
        tcase *c = &cs[t];
        int C = c->H * c->Dh;
        int64_t n3 = (int64_t)c->B * c->T * 3 * C, n = (int64_t)c->B * c->T * C;
        float *qkv = malloc(sizeof(float) * n3), *dO = malloc(sizeof(float) * n);
        uint8_t *keep = malloc((size_t)c->B * c->T);
        t_fill_uniform(qkv, n3, -2, 2, 7 + t);
        t_fill_uniform(dO, n, -1, 1, 8 + t);
        make_keep(c, keep);
        omp_set_num_threads(1);
        result r1 = run_op(c, qkv, keep, dO, 0);
        for (int th = 2; th <= 3; th++) {
            omp_set_num_threads(th);
            result r = run_op(c, qkv, keep, dO, 0);
            CHECK(same(&r, &r1, n, n3), "%s: %d threads differ from 1 thread", cf_attn_kind_name(c->type), th);
            result_free(&r);
        }
        omp_set_num_threads(nt0);
        result a = run_op(c, qkv, keep, dO, 0), b = run_op(c, qkv, keep, dO, 0);
        CHECK(same(&a, &b, n, n3), "%s: two runs at %d threads differ", cf_attn_kind_name(c->type), nt0);
        result_free(&a); result_free(&b); result_free(&r1);
        free(qkv); free(dO); free(keep);
    }
}

/* ---- memory --------------------------------------------------------------------------------------- */
/* forward + backward keeps no T x T matrix, for every pattern: the arena peak at T = 4096 is far
 * below T^2 floats and about twice the peak at T = 2048 (the stride grows as sqrt(T), as the
 * config's default does) */
static size_t peak_at(tcase c, int T) {
    c.T = T;
    c.stride = (int)lround(sqrt((double)T));
    int C = c.H * c.Dh;
    int64_t n3 = (int64_t)c.T * 3 * C, n = (int64_t)c.T * C;
    float *qkv = malloc(sizeof(float) * n3), *dO = malloc(sizeof(float) * n);
    t_fill_uniform(qkv, n3, -1, 1, 3);
    t_fill_uniform(dO, n, -1, 1, 4);
    result r = run_op(&c, qkv, NULL, dO, 0);
    size_t peak = r.peak;
    result_free(&r);
    free(qkv); free(dO);
    return peak;
}

static void memory_linear(void) {
    tcase cs[4] = {{CF_ATTN_WINDOW, 128, 0, 0, "alternate", 0, 1, 1, 1, 0, 16, 0, 0},
                   {CF_ATTN_SPARSE_STRIDED, 0, 0, 0, "merged", 0, 1, 1, 1, 0, 16, 0, 0},
                   {CF_ATTN_SPARSE_FIXED, 0, 0, 8, "merged", 0, 1, 1, 1, 0, 16, 0, 0},
                   {CF_ATTN_SPARSE_FIXED, 0, 0, 8, "heads", 0, 0, 1, 2, 0, 16, 0, 0}};
    for (int t = 0; t < 4; t++) {
        size_t p2 = peak_at(cs[t], 2048), p4 = peak_at(cs[t], 4096), tt = (size_t)4096 * 4096 * sizeof(float);
        CHECK(p4 < tt / 8 && p4 < 2.3 * p2, "%s %s: arena peak %zu bytes at T=4096, %zu at 2048 (T x T floats: %zu)",
              cf_attn_kind_name(cs[t].type), cs[t].combine, p4, p2, tt);
    }
}

int main(void) {
    CHECK(cf_op_table_check() == 0, "%s", cf_error_msg());
    dense_equivalence();
    gradchecks();
    thread_invariance();
    memory_linear();
    TEST_MAIN_END();
}
