/* train.precision "bf16": matmul and linear products on bfloat16 operands with fp32 sums.
 *   - cf_linear forward and both backward products against a reference that rounds the same
 *     operands to bf16 and sums in double, within the fp32 summation bound;
 *   - a tiny model trained in bf16 tracks the same run in fp32, and is bitwise repeatable;
 *   - a bf16 run stopped and resumed from its checkpoint ends bitwise where the straight run does. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "test.h"

/* |got - want| <= k 2^-22 sum|a||b| for every element: the fp32 sums of products of bf16 operands */
static int within(const float *got, const double *want, const double *mag, int n, int k, double *worst) {
    int ok = 1;
    for (int i = 0; i < n; i++) {
        double bound = (k + 2) * 2.4e-7 * mag[i] + 1e-30, e = fabs(got[i] - want[i]) / bound;
        if (e > *worst) *worst = e;
        ok &= e <= 1;
    }
    return ok;
}

static void linear_products(void) {
    enum { R = 37, IN = 70, OUT = 53 };
    static float x[R * IN], w[OUT * IN], g[R * OUT];
    t_fill_uniform(x, R * IN, -2, 2, 1);
    t_fill_uniform(w, OUT * IN, -1, 1, 2);
    t_fill_uniform(g, R * OUT, -1, 1, 3);
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, 1 << 22, 64) == 0, "ctx");
    ctx.bf16 = 1;
    cf_ctx_begin(&ctx, 0);
    cf_tensor *xt = cf_tensor_view(&ctx, x, 2, (int[]){R, IN}), *wt = cf_tensor_view(&ctx, w, 2, (int[]){OUT, IN});
    xt->requires_grad = wt->requires_grad = 1;
    cf_tensor *y = cf_linear(&ctx, xt, wt, NULL);
    cf_backward(&ctx, y, g);
    /* the reference: the same operands rounded, products summed in double */
    static double ry[R * OUT], my[R * OUT], rdx[R * IN], mdx[R * IN], rdw[OUT * IN], mdw[OUT * IN];
    for (int r = 0; r < R; r++)
        for (int o = 0; o < OUT; o++)
            for (int i = 0; i < IN; i++) {
                double p = (double)cf_bf16_round(x[r * IN + i]) * cf_bf16_round(w[o * IN + i]);
                ry[r * OUT + o] += p, my[r * OUT + o] += fabs(p);
                double q = (double)cf_bf16_round(g[r * OUT + o]) * cf_bf16_round(w[o * IN + i]);
                rdx[r * IN + i] += q, mdx[r * IN + i] += fabs(q);
                double u = (double)cf_bf16_round(g[r * OUT + o]) * cf_bf16_round(x[r * IN + i]);
                rdw[o * IN + i] += u, mdw[o * IN + i] += fabs(u);
            }
    double worst = 0;
    CHECK(within(y->data, ry, my, R * OUT, IN, &worst), "bf16 linear forward outside the bound (%.2f of it)", worst);
    CHECK(within(xt->grad, rdx, mdx, R * IN, OUT, &worst), "bf16 linear dX outside the bound (%.2f of it)", worst);
    CHECK(within(wt->grad, rdw, mdw, OUT * IN, R, &worst), "bf16 linear dW outside the bound (%.2f of it)", worst);
    double far = 0;   /* and it is not the fp32 product: the rounding is really there */
    for (int r = 0; r < R * OUT; r++) {
        double exact = 0;
        for (int i = 0; i < IN; i++) exact += (double)x[(r / OUT) * IN + i] * w[(r % OUT) * IN + i];
        far = fmax(far, fabs(y->data[r] - exact));
    }
    CHECK(far > 1e-4, "bf16 linear equals the fp32 product (max difference %g)", far);
    printf("bf16 linear: worst error %.2f of the bound, %g from the fp32 product, kernel %s\n", worst, far,
           cf_gemm_bf16_kernel());
    cf_ctx_free(&ctx);
}

static char root[] = "/tmp/cf_test_bf16_XXXXXX";

/* train configs/tiny.json (40 steps) into RUN; 0 on success */
static int train(const char *run, const char *precision, const char *resume, int until) {
    char out[300], prec[64];
    snprintf(out, sizeof out, "%s/%s", root, run);
    snprintf(prec, sizeof prec, "train.precision=\"%s\"", precision);
    const char *sets[] = {prec, "train.steps=40", "train.eval_every=0", "train.checkpoint_every=20", "train.log_every=1",
                          "model.dropout=0.1"};
    cf_config c;
    if (cf_config_load(&c, "configs/tiny.json", sets, 6, 1)) return -1;
    char rdir[300];
    if (resume) snprintf(rdir, sizeof rdir, "%s/%s", root, resume);
    cf_train_opts o = {.out_dir = out, .resume = resume ? rdir : NULL, .until = until, .quiet = 1};
    return t_train_quietly(&c, &o);
}

/* the losses logged by RUN, in step order */
static int losses(const char *run, double *l, int cap) {
    char path[400], line[512];
    snprintf(path, sizeof path, "%s/%s/log.jsonl", root, run);
    FILE *f = fopen(path, "r");
    int n = 0;
    while (f && fgets(line, sizeof line, f) && n < cap) {
        const char *p = strstr(line, "\"loss\": ");
        if (p) l[n++] = atof(p + 8);
    }
    if (f) fclose(f);
    return n;
}

/* the parameters of two checkpoints are bitwise equal */
static int same_params(const char *a, const char *b) {
    char pa[400], pb[400];
    snprintf(pa, sizeof pa, "%s/%s/ckpt/latest.h5", root, a);
    snprintf(pb, sizeof pb, "%s/%s/ckpt/latest.h5", root, b);
    cf_config ca, cb;
    cf_model ma, mb;
    if (cf_ckpt_load_model(pa, &ca, &ma, NULL)) return 0;
    if (cf_ckpt_load_model(pb, &cb, &mb, NULL)) { cf_model_free(&ma); return 0; }
    int same = ma.params.numel == mb.params.numel &&
               !memcmp(ma.params.values, mb.params.values, sizeof(float) * (size_t)ma.params.numel);
    cf_model_free(&ma);
    cf_model_free(&mb);
    return same;
}

static void training(void) {
    CF_ASSERT(mkdtemp(root), "mkdtemp");
    CHECK(train("fp32", "fp32", NULL, 0) == 0, "fp32 run: %s", cf_error_msg());
    CHECK(train("bf16", "bf16", NULL, 0) == 0, "bf16 run: %s", cf_error_msg());
    CHECK(train("bf16-again", "bf16", NULL, 0) == 0, "second bf16 run: %s", cf_error_msg());
    double lf[64], lb[64], lb2[64];
    int nf = losses("fp32", lf, 64), nb = losses("bf16", lb, 64), nb2 = losses("bf16-again", lb2, 64);
    CHECK(nf == 40 && nb == 40 && nb2 == 40, "logged losses: %d, %d, %d", nf, nb, nb2);
    double dev = 0, mean_f = 0, mean_b = 0;
    for (int i = 0; i < 40 && nf == 40 && nb == 40; i++) dev = fmax(dev, fabs(lb[i] - lf[i]) / lf[i]);
    for (int i = 30; i < 40 && nf == 40 && nb == 40; i++) mean_f += lf[i] / 10, mean_b += lb[i] / 10;
    CHECK(dev < 0.02 && dev > 0, "bf16 losses differ from fp32 by up to %.4f (relative)", dev);
    CHECK(nf == 40 && mean_b < lb[0] - 0.5, "bf16 loss does not fall: %.3f at the start, %.3f over the last 10", lb[0], mean_b);
    CHECK(nb == nb2 && !memcmp(lb, lb2, sizeof(double) * (size_t)nb) && same_params("bf16", "bf16-again"),
          "two bf16 runs differ");
    printf("bf16 vs fp32 over 40 steps: largest relative loss difference %.4f; last 10 steps %.4f vs %.4f\n", dev,
           mean_b, mean_f);
    /* stopped at 20 (a checkpoint), resumed to 40: bitwise the straight run */
    CHECK(train("bf16-resumed", "bf16", NULL, 20) == 0, "bf16 run to 20: %s", cf_error_msg());
    CHECK(train("bf16-resumed", "bf16", "bf16-resumed", 0) == 0, "bf16 resume: %s", cf_error_msg());
    CHECK(same_params("bf16", "bf16-resumed"), "a resumed bf16 run ends elsewhere than the straight one");
}

int main(void) {
    linear_products();
    training();
    if (t_failed == 0) {
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf %s", root);
        CHECK(system(cmd) == 0, "cannot remove %s", root);
    }
    TEST_MAIN_END();
}
