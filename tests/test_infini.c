/* Infini-attention's compressive memory (cf_infini_attention, src/attention/infini.c) against a
 * direct double-precision reference written here from docs/attention.md section 8.1, one segment after
 * another with explicit loops: forward and final memory for the linear and the delta rule, with no
 * initial memory and with a given M0, z0, a last partial segment, segments longer than the op's
 * chunk of 64 rows, d from 4 to 64. Gradients of qkv, a_dot and beta against central differences of
 * that double reference (step 1e-6, so the reference gradient is exact to ~1e-9), and against the
 * float finite-difference harness (gradcheck.h). Then: one call over 3 segments equals three calls
 * that carry M_out, z_out into the next call's M0, z0 (with M_out aliasing M0); bitwise equal
 * outputs, memories and gradients at 1, 2, 3 and 4 threads; the no-memory first segment returns
 * a_dot exactly; the op is in the op table. */
#include <string.h>
#include <omp.h>
#include "gradcheck.h"
#include "cformer/attention.h"

typedef struct icase { int B, T, H, d, L, delta, with_m0; } icase;

static int64_t n_qkv(const icase *k) { return (int64_t)k->B * k->T * 3 * k->H * k->d; }
static int64_t n_out(const icase *k) { return (int64_t)k->B * k->T * k->H * k->d; }
static int64_t n_mem(const icase *k) { return (int64_t)k->B * k->H * k->d * k->d; }
static int64_t n_z(const icase *k) { return (int64_t)k->B * k->H * k->d; }

/* test inputs in float (for the op) */
typedef struct idata { float *qkv, *adot, *beta, *M0, *z0; } idata;

static idata idata_make(const icase *k, uint64_t seed) {
    idata x;
    x.qkv = malloc(sizeof(float) * n_qkv(k));
    x.adot = malloc(sizeof(float) * n_out(k));
    x.beta = malloc(sizeof(float) * k->H);
    x.M0 = malloc(sizeof(float) * n_mem(k));
    x.z0 = malloc(sizeof(float) * n_z(k));
    t_fill_uniform(x.qkv, n_qkv(k), -1.5f, 1.5f, seed);
    t_fill_uniform(x.adot, n_out(k), -1, 1, seed + 1);
    t_fill_uniform(x.beta, k->H, -1, 1, seed + 2);
    t_fill_uniform(x.M0, n_mem(k), -1, 1, seed + 3);
    t_fill_uniform(x.z0, n_z(k), 1, 4, seed + 4);
    return x;
}
static void idata_free(idata *x) { free(x->qkv); free(x->adot); free(x->beta); free(x->M0); free(x->z0); }

static double *to_double(const float *x, int64_t n) {
    double *y = malloc(sizeof(double) * n);
    for (int64_t i = 0; i < n; i++) y[i] = x[i];
    return y;
}

/* ---- the reference ------------------------------------------------------------------------------ */
static double sig(double x) { return x > 0 ? x + 1 : exp(x); }

/* out [B, T, H*d]; Mout [B, H, d, d] and zout [B, H, d] when not NULL. M0 == NULL: no memory. */
static void reference(const icase *k, const double *qkv, const double *adot, const double *beta, const double *M0,
                      const double *z0, double *out, double *Mout, double *zout) {
    int T = k->T, H = k->H, d = k->d, C = H * d;
    double *M = malloc(sizeof(double) * d * d), *z = malloc(sizeof(double) * d);
    double *Mn = malloc(sizeof(double) * d * d), *zn = malloc(sizeof(double) * d);
    double *sq = malloc(sizeof(double) * d), *sk = malloc(sizeof(double) * d), *u = malloc(sizeof(double) * d);
    for (int b = 0; b < k->B; b++)
        for (int h = 0; h < H; h++) {
            int64_t bh = (int64_t)b * H + h;
            int has = M0 != NULL;
            for (int i = 0; i < d * d; i++) M[i] = has ? M0[bh * d * d + i] : 0;
            for (int i = 0; i < d; i++) z[i] = has ? z0[bh * d + i] : 0;
            double g = 1 / (1 + exp(-beta[h]));
            for (int s0 = 0; s0 < T; s0 += k->L) {
                int s1 = s0 + k->L < T ? s0 + k->L : T;
                /* retrieval from the memory before this segment */
                for (int t = s0; t < s1; t++) {
                    const double *q = qkv + ((int64_t)b * T + t) * 3 * C + h * d;
                    const double *a = adot + ((int64_t)b * T + t) * C + h * d;
                    double *o = out + ((int64_t)b * T + t) * C + h * d;
                    if (!has) {
                        for (int c = 0; c < d; c++) o[c] = a[c];
                        continue;
                    }
                    double den = 0;
                    for (int r = 0; r < d; r++) {
                        sq[r] = sig(q[r]);
                        den += sq[r] * z[r];
                    }
                    for (int c = 0; c < d; c++) {
                        double num = 0;
                        for (int r = 0; r < d; r++) num += sq[r] * M[r * d + c];
                        o[c] = g * num / den + (1 - g) * a[c];
                    }
                }
                /* update: every key of the segment reads the memory before it */
                memcpy(Mn, M, sizeof(double) * d * d);
                memcpy(zn, z, sizeof(double) * d);
                for (int t = s0; t < s1; t++) {
                    const double *kk = qkv + ((int64_t)b * T + t) * 3 * C + C + h * d, *v = kk + C;
                    double den = 0;
                    for (int r = 0; r < d; r++) {
                        sk[r] = sig(kk[r]);
                        den += sk[r] * z[r];
                    }
                    for (int c = 0; c < d; c++) {
                        double rt = 0;
                        if (has && k->delta) {
                            for (int r = 0; r < d; r++) rt += sk[r] * M[r * d + c];
                            rt /= den;
                        }
                        u[c] = v[c] - rt;
                    }
                    for (int r = 0; r < d; r++) {
                        for (int c = 0; c < d; c++) Mn[r * d + c] += sk[r] * u[c];
                        zn[r] += sk[r];
                    }
                }
                memcpy(M, Mn, sizeof(double) * d * d);
                memcpy(z, zn, sizeof(double) * d);
                has = 1;
            }
            if (Mout) memcpy(Mout + bh * d * d, M, sizeof(double) * d * d);
            if (zout) memcpy(zout + bh * d, z, sizeof(double) * d);
        }
    free(M); free(z); free(Mn); free(zn); free(sq); free(sk); free(u);
}

/* max |a - b| / max(max |b|, floor) */
static double err_d(const float *a, const double *b, int64_t n, double floor) {
    double num = 0, den = floor;
    for (int64_t i = 0; i < n; i++) {
        double e = fabs(a[i] - b[i]);
        if (e > num || e != e) num = e != e ? INFINITY : e;
        if (fabs(b[i]) > den) den = fabs(b[i]);
    }
    return num / den;
}

static cf_ctx new_ctx(void) {
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, (size_t)1 << 28, 256) == 0, "%s", cf_error_msg());
    ctx.training = 1;
    cf_ctx_begin(&ctx, 0);
    return ctx;
}

/* ---- forward ------------------------------------------------------------------------------------ */
static void forward_exact(icase k) {
    idata x = idata_make(&k, 10 + k.d + k.T);
    double *qd = to_double(x.qkv, n_qkv(&k)), *ad = to_double(x.adot, n_out(&k)), *bd = to_double(x.beta, k.H);
    double *Md = to_double(x.M0, n_mem(&k)), *zd = to_double(x.z0, n_z(&k));
    double *out = malloc(sizeof(double) * n_out(&k)), *Mr = malloc(sizeof(double) * n_mem(&k));
    double *zr = malloc(sizeof(double) * n_z(&k));
    reference(&k, qd, ad, bd, k.with_m0 ? Md : NULL, k.with_m0 ? zd : NULL, out, Mr, zr);
    float *Mo = malloc(sizeof(float) * n_mem(&k)), *zo = malloc(sizeof(float) * n_z(&k));
    cf_ctx ctx = new_ctx();
    int C = k.H * k.d;
    /* once recording (the states kept for backward), once not (the two-state workspace) */
    for (int rec = 0; rec < 2; rec++) {
        cf_tensor *q = cf_tensor_leaf(&ctx, x.qkv, 3, (int[]){k.B, k.T, 3 * C}, rec);
        cf_tensor *a = cf_tensor_leaf(&ctx, x.adot, 3, (int[]){k.B, k.T, C}, 0);
        cf_tensor *be = cf_tensor_leaf(&ctx, x.beta, 1, (int[]){k.H}, 0);
        cf_tensor *y = cf_infini_attention(&ctx, q, a, be, k.H, k.L, k.delta, k.with_m0 ? x.M0 : NULL,
                                           k.with_m0 ? x.z0 : NULL, Mo, zo);
        double eo = err_d(y->data, out, n_out(&k), 1e-2), eM = err_d(Mo, Mr, n_mem(&k), 1e-2);
        double ez = err_d(zo, zr, n_z(&k), 1e-2);
        CHECK(eo < 1e-5 && eM < 1e-5 && ez < 1e-6,
              "forward B=%d T=%d H=%d d=%d L=%d delta=%d M0=%d record=%d: rel err out %.3g, M_out %.3g, z_out %.3g",
              k.B, k.T, k.H, k.d, k.L, k.delta, k.with_m0, rec, eo, eM, ez);
        if (!k.with_m0) {
            int same = 1;
            for (int64_t r = 0; r < (int64_t)k.B * k.T; r++)
                if (r % k.T < k.L) same &= !memcmp(y->data + r * C, x.adot + r * C, sizeof(float) * C);
            CHECK(same, "forward delta=%d: the first segment without memory is not a_dot exactly", k.delta);
        }
    }
    cf_ctx_free(&ctx);
    idata_free(&x);
    free(qd); free(ad); free(bd); free(Md); free(zd); free(out); free(Mr); free(zr); free(Mo); free(zo);
}

/* ---- gradients against the double reference ------------------------------------------------------ */
/* d/dx of sum(reference(x) * R) by central differences in double, for every element of x */
static void ref_grad(const icase *k, double *qkv, double *adot, double *beta, const double *M0, const double *z0,
                     const double *R, double *x, int64_t n, double *gx) {
    int64_t no = n_out(k);
    double *o = malloc(sizeof(double) * no);
    for (int64_t j = 0; j < n; j++) {
        double x0 = x[j], h = 1e-6, f[2];
        for (int sgn = 0; sgn < 2; sgn++) {
            x[j] = x0 + (sgn ? -h : h);
            reference(k, qkv, adot, beta, M0, z0, o, NULL, NULL);
            f[sgn] = 0;
            for (int64_t i = 0; i < no; i++) f[sgn] += o[i] * R[i];
        }
        x[j] = x0;
        gx[j] = (f[0] - f[1]) / (2 * h);
    }
    free(o);
}

static void grad_exact(icase k) {
    idata x = idata_make(&k, 40 + k.d + k.T + k.delta);
    int64_t nq = n_qkv(&k), no = n_out(&k);
    float *dO = malloc(sizeof(float) * no);
    t_fill_uniform(dO, no, -1, 1, 77);
    double *qd = to_double(x.qkv, nq), *ad = to_double(x.adot, no), *bd = to_double(x.beta, k.H);
    double *Md = to_double(x.M0, n_mem(&k)), *zd = to_double(x.z0, n_z(&k)), *Rd = to_double(dO, no);
    const double *M0 = k.with_m0 ? Md : NULL, *z0 = k.with_m0 ? zd : NULL;
    double *gq = malloc(sizeof(double) * nq), *ga = malloc(sizeof(double) * no), *gb = malloc(sizeof(double) * k.H);
    ref_grad(&k, qd, ad, bd, M0, z0, Rd, qd, nq, gq);
    ref_grad(&k, qd, ad, bd, M0, z0, Rd, ad, no, ga);
    ref_grad(&k, qd, ad, bd, M0, z0, Rd, bd, k.H, gb);
    cf_ctx ctx = new_ctx();
    int C = k.H * k.d;
    cf_tensor *q = cf_tensor_leaf(&ctx, x.qkv, 3, (int[]){k.B, k.T, 3 * C}, 1);
    cf_tensor *a = cf_tensor_leaf(&ctx, x.adot, 3, (int[]){k.B, k.T, C}, 1);
    cf_tensor *be = cf_tensor_leaf(&ctx, x.beta, 1, (int[]){k.H}, 1);
    cf_tensor *y = cf_infini_attention(&ctx, q, a, be, k.H, k.L, k.delta, k.with_m0 ? x.M0 : NULL,
                                       k.with_m0 ? x.z0 : NULL, NULL, NULL);
    cf_backward(&ctx, y, dO);
    double eq = err_d(q->grad, gq, nq, 1e-2), ea = err_d(a->grad, ga, no, 1e-2), eb = err_d(be->grad, gb, k.H, 1e-2);
    printf("grad vs reference B=%d T=%d H=%d d=%d L=%d delta=%d M0=%d: rel err qkv %.2g a_dot %.2g beta %.2g\n", k.B,
           k.T, k.H, k.d, k.L, k.delta, k.with_m0, eq, ea, eb);
    /* float rounding gives ~3e-7 (qkv), ~2e-7 (a_dot), ~2e-6 (beta); a wrong term gives O(1) */
    CHECK(eq < 1e-5 && ea < 1e-6 && eb < 2e-5,
          "gradients B=%d T=%d H=%d d=%d L=%d delta=%d M0=%d: rel err qkv %.3g, a_dot %.3g, beta %.3g", k.B, k.T, k.H,
          k.d, k.L, k.delta, k.with_m0, eq, ea, eb);
    cf_ctx_free(&ctx);
    idata_free(&x);
    free(dO); free(qd); free(ad); free(bd); free(Md); free(zd); free(Rd); free(gq); free(ga); free(gb);
}

/* ---- finite differences of the op itself (gradcheck.h) ------------------------------------------- */
typedef struct gc_inf { int H, L, delta; const float *M0, *z0; } gc_inf;
static cf_tensor *f_infini(cf_ctx *c, cf_tensor **in, void *arg) {
    gc_inf *a = arg;
    return cf_infini_attention(c, in[0], in[1], in[2], a->H, a->L, a->delta, a->M0, a->z0, NULL, NULL);
}

static void gradchecks(void) {
    icase k = {2, 11, 2, 4, 4, 0, 1};   /* segments of 4, 4, 3 */
    idata x = idata_make(&k, 90);
    int C = k.H * k.d;
    for (int delta = 0; delta < 2; delta++)
        for (int m0 = 0; m0 < 2; m0++)
            for (int all = 0; all < 2; all++) {
                /* all = 0: a_dot and beta constant, so backward skips their gradients */
                gc_inf a = {k.H, k.L, delta, m0 ? x.M0 : NULL, m0 ? x.z0 : NULL};
                gc_input in[3] = {{x.qkv, 3, {k.B, k.T, 3 * C}, 1},
                                  {x.adot, 3, {k.B, k.T, C}, all},
                                  {x.beta, 1, {k.H}, all}};
                char name[96];
                snprintf(name, sizeof name, "infini delta=%d M0=%d a_dot,beta=%d", delta, m0, all);
                double e = gradcheck(name, f_infini, &a, in, 3, 1e-2f, 1e-2);
                printf("gradcheck %s: worst rel err %.2g\n", name, e);
            }
    idata_free(&x);
}

/* ---- carrying the memory across calls ---------------------------------------------------------- */
static void carry(int delta) {
    enum { B = 2, H = 2, d = 8, C = H * d, L = 80, T = 3 * L };   /* 80: two chunks per segment */
    icase k = {B, T, H, d, L, delta, 0};
    idata x = idata_make(&k, 120 + delta);
    float *M1 = malloc(sizeof(float) * n_mem(&k)), *z1 = malloc(sizeof(float) * n_z(&k));
    float *M3 = malloc(sizeof(float) * n_mem(&k)), *z3 = malloc(sizeof(float) * n_z(&k));
    cf_ctx ctx = new_ctx();
    cf_tensor *be = cf_tensor_leaf(&ctx, x.beta, 1, (int[]){H}, 0);
    cf_tensor *q = cf_tensor_leaf(&ctx, x.qkv, 3, (int[]){B, T, 3 * C}, 0);
    cf_tensor *a = cf_tensor_leaf(&ctx, x.adot, 3, (int[]){B, T, C}, 0);
    const float *one = cf_infini_attention(&ctx, q, a, be, H, L, delta, NULL, NULL, M1, z1)->data;
    /* three calls of L rows; each call's M_out is written over its own M0 */
    float *qs = malloc(sizeof(float) * B * L * 3 * C), *as = malloc(sizeof(float) * B * L * C);
    double eo = 0;
    for (int s = 0; s < 3; s++) {
        for (int b = 0; b < B; b++) {
            memcpy(qs + (int64_t)b * L * 3 * C, x.qkv + ((int64_t)b * T + s * L) * 3 * C, sizeof(float) * L * 3 * C);
            memcpy(as + (int64_t)b * L * C, x.adot + ((int64_t)b * T + s * L) * C, sizeof(float) * L * C);
        }
        cf_tensor *qt = cf_tensor_leaf(&ctx, qs, 3, (int[]){B, L, 3 * C}, 1);   /* recording path too */
        cf_tensor *at = cf_tensor_leaf(&ctx, as, 3, (int[]){B, L, C}, 0);
        const float *y = cf_infini_attention(&ctx, qt, at, be, H, L, delta, s ? M3 : NULL, s ? z3 : NULL, M3, z3)->data;
        for (int b = 0; b < B; b++)
            for (int64_t i = 0; i < (int64_t)L * C; i++) {
                double e = fabs((double)y[b * L * C + i] - one[((int64_t)b * T + s * L) * C + i]);
                if (e > eo) eo = e;
            }
    }
    double eM = t_max_rel_err(M3, M1, n_mem(&k), 1e-2), ez = t_max_rel_err(z3, z1, n_z(&k), 1e-2);
    printf("carry delta=%d: one call of 3 segments vs 3 calls: max abs diff out %.2g, rel M %.2g, z %.2g\n", delta, eo,
           eM, ez);
    CHECK(eo <= 1e-6 && eM <= 1e-6 && ez <= 1e-6,
          "carry delta=%d: 3 chained calls differ from one call: out %.3g, M_out %.3g, z_out %.3g", delta, eo, eM, ez);
    cf_ctx_free(&ctx);
    idata_free(&x);
    free(M1); free(z1); free(M3); free(z3); free(qs); free(as);
}

/* ---- threads ------------------------------------------------------------------------------------ */
typedef struct run_out { float *o, *M, *z, *gq, *ga, gb[8]; } run_out;

static run_out run_op(const icase *k, const idata *x, const float *dO) {
    int C = k->H * k->d;
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, (size_t)1 << 28, 64) == 0, "%s", cf_error_msg());
    cf_ctx_begin(&ctx, 0);
    run_out r = {malloc(sizeof(float) * n_out(k)), malloc(sizeof(float) * n_mem(k)), malloc(sizeof(float) * n_z(k)),
                 malloc(sizeof(float) * n_qkv(k)), malloc(sizeof(float) * n_out(k)), {0}};
    cf_tensor *q = cf_tensor_leaf(&ctx, x->qkv, 3, (int[]){k->B, k->T, 3 * C}, 1);
    cf_tensor *a = cf_tensor_leaf(&ctx, x->adot, 3, (int[]){k->B, k->T, C}, 1);
    cf_tensor *be = cf_tensor_leaf(&ctx, x->beta, 1, (int[]){k->H}, 1);
    cf_tensor *y = cf_infini_attention(&ctx, q, a, be, k->H, k->L, k->delta, k->with_m0 ? x->M0 : NULL,
                                       k->with_m0 ? x->z0 : NULL, r.M, r.z);
    cf_backward(&ctx, y, dO);
    memcpy(r.o, y->data, sizeof(float) * n_out(k));
    memcpy(r.gq, q->grad, sizeof(float) * n_qkv(k));
    memcpy(r.ga, a->grad, sizeof(float) * n_out(k));
    memcpy(r.gb, be->grad, sizeof(float) * k->H);
    cf_ctx_free(&ctx);
    return r;
}
static void run_free(run_out *r) { free(r->o); free(r->M); free(r->z); free(r->gq); free(r->ga); }

static void threads(int delta, int with_m0, int L) {
    icase k = {2, 256, 4, 32, L, delta, with_m0};
    idata x = idata_make(&k, 140);
    float *dO = malloc(sizeof(float) * n_out(&k));
    t_fill_uniform(dO, n_out(&k), -1, 1, 141);
    int nt0 = omp_get_max_threads();
    omp_set_num_threads(1);
    run_out r1 = run_op(&k, &x, dO);
    for (int th = 2; th <= 4; th++) {
        omp_set_num_threads(th);
        run_out r = run_op(&k, &x, dO);
        CHECK(!memcmp(r.o, r1.o, sizeof(float) * n_out(&k)) && !memcmp(r.M, r1.M, sizeof(float) * n_mem(&k)) &&
              !memcmp(r.z, r1.z, sizeof(float) * n_z(&k)) && !memcmp(r.gq, r1.gq, sizeof(float) * n_qkv(&k)) &&
              !memcmp(r.ga, r1.ga, sizeof(float) * n_out(&k)) && !memcmp(r.gb, r1.gb, sizeof(float) * k.H),
              "infini delta=%d M0=%d L=%d: %d threads differ from 1", delta, with_m0, L, th);
        run_free(&r);
    }
    omp_set_num_threads(nt0);
    run_free(&r1);
    idata_free(&x);
    free(dO);
}

int main(void) {
    CHECK(cf_op_table_check() == 0, "%s", cf_error_msg());
    for (int delta = 0; delta < 2; delta++)
        for (int m0 = 0; m0 < 2; m0++) {
            forward_exact((icase){2, 23, 2, 4, 6, delta, m0});     /* segments 6, 6, 6, 5 */
            forward_exact((icase){2, 23, 2, 8, 6, delta, m0});
            forward_exact((icase){1, 150, 2, 8, 70, delta, m0});   /* chunks of 64 and 6 in a segment */
            forward_exact((icase){1, 40, 1, 64, 16, delta, m0});
            forward_exact((icase){2, 5, 2, 4, 8, delta, m0});      /* one partial segment */
            grad_exact((icase){2, 23, 2, 4, 6, delta, m0});
            grad_exact((icase){1, 16, 1, 32, 6, delta, m0});
            grad_exact((icase){1, 75, 1, 8, 70, delta, m0});
        }
    gradchecks();
    carry(0);
    carry(1);
    threads(0, 0, 64);
    threads(1, 1, 64);
    threads(1, 0, 100);
    TEST_MAIN_END();
}
