/* The optimizer interface (optim.h) and its optimizers, on parameters of their own:
 *   - every kind's state: its named slabs, zeroed, laid out exactly as the parameter slab;
 *   - AdamW through cf_optim_step is bitwise PyTorch's float arithmetic, written out here as a
 *     reference independent of src/optim/adamw.c (the golden test holds it to PyTorch itself);
 *   - Lion against a reference in double over several steps at changing lr: weight decay on a
 *     2-D tensor (large enough for the OpenMP loop) and not on a 1-D one, zero gradients (sign(0)
 *     = 0: an element whose momentum and gradient stay zero moves by its decay alone).
 *   - gradient clipping: the norm against a sum in long double, the same bits at 1 and 2 threads,
 *     the scaled gradients exactly coef g.
 * Parameters: "w" [72, 1000] and "b" [37] (the slab pads b to 48 floats). */
#include <string.h>
#include "test.h"

#define STEPS 6

static void make_params(cf_params *p) {
    cf_params_init(p);
    cf_param_add(p, "w", 2, (int[]){72, 1000});
    cf_param_add(p, "b", 1, (int[]){37});
    cf_params_finalize(p);
    t_fill_uniform(p->values, p->numel, -1, 1, 1);
}

/* the gradient of step s: uniform in [-1, 1], with every 7th element of w and every 3rd of b zero
 * at every step (their momentum stays zero), and all of b zero at step 0 */
static void fill_grads(cf_params *p, int s) {
    t_fill_uniform(p->grads, p->numel, -1, 1, 100 + (uint64_t)s);
    for (int i = 0; i < p->n; i++) {
        cf_tensor *t = p->t[i];
        for (int64_t j = 0; j < t->numel; j++)
            if (j % (i == 0 ? 7 : 3) == 0 || (i == 1 && s == 0)) t->grad[j] = 0;
    }
}

static float lr_at(int s) { return 1e-2f * (1.0f - 0.1f * (float)s); }

/* an optimizer of kind k on fresh parameters, at beta2 0.95 (AdamW) or 0.99 (Lion) */
typedef struct fixture { cf_params p; cf_optim o; cf_train_config t; } fixture;

static void fixture_init(fixture *f, cf_optim_kind k, float weight_decay) {
    make_params(&f->p);
    cf_optim_init(&f->o, k, &f->p);
    f->t = (cf_train_config){.beta1 = 0.9f, .beta2 = k == CF_OPTIM_LION ? 0.99f : 0.95f, .eps = 1e-8f,
                             .weight_decay = weight_decay};
}

static void fixture_free(fixture *f) {
    cf_optim_free(&f->o);
    cf_params_free(&f->p);
}

/* STEPS steps of f's optimizer on the gradients of fill_grads at lr_at(s); after each, ref(arg, f,
 * s, lr) takes the same step in the test's own reference */
typedef void (*ref_step)(void *arg, const fixture *f, int s, float lr);

static void run_steps(fixture *f, ref_step ref, void *arg) {
    for (int s = 0; s < STEPS; s++) {
        fill_grads(&f->p, s);
        cf_optim_step(&f->o, &f->p, lr_at(s), &f->t);
        ref(arg, f, s, lr_at(s));
    }
}

static void test_state_layout(void) {
    const char *want[CF_OPTIM_KIND_COUNT] = {[CF_OPTIM_ADAMW] = "m v", [CF_OPTIM_LION] = "m"};
    for (int k = 0; k < CF_OPTIM_KIND_COUNT; k++) {
        fixture f;
        fixture_init(&f, (cf_optim_kind)k, 0.1f);
        const cf_optim *o = &f.o;
        const cf_params *p = &f.p;
        char names[64] = "";
        int zero = 1, layout = o->kind == (cf_optim_kind)k && o->t == 0 && o->n_params == p->n;
        for (int s = 0; s < o->n_slabs; s++) {
            snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", s ? " " : "", o->slab[s].name);
            layout &= o->slab[s].numel == p->numel && !memcmp(o->slab[s].offset, p->offset, sizeof(int64_t) * p->n);
            for (int64_t j = 0; j < o->slab[s].numel; j++) zero &= o->slab[s].data[j] == 0;
            for (int i = 0; i < p->n; i++) {
                int64_t shape[CF_MAX_DIMS];
                int nd = cf_optim_state_shape(o, s, p->t[i], shape);
                layout &= nd == p->t[i]->ndim && cf_optim_state(o, s, i) == o->slab[s].data + p->offset[i];
                for (int d = 0; d < nd && d < CF_MAX_DIMS; d++) layout &= shape[d] == p->t[i]->shape[d];
            }
        }
        const char *name = cf_optim_name(k), *slabs = want[k] ? want[k] : "(give the kind a row in want[])";
        CHECK(!strcmp(names, slabs), "%s: slabs \"%s\", expected \"%s\"", name, names, slabs);
        CHECK(layout, "%s: the state is not laid out as the parameter slab", name);
        CHECK(zero, "%s: the state does not start at zero", name);
        fill_grads(&f.p, 1);
        cf_optim_step(&f.o, &f.p, 1e-3f, &f.t);
        cf_optim_step(&f.o, &f.p, 1e-3f, &f.t);
        CHECK(o->t == 2, "%s: t = %lld after two steps", name, (long long)o->t);
        fixture_free(&f);
    }
    CHECK(!strcmp(cf_optim_name(CF_OPTIM_LION), "lion") && !strcmp(cf_optim_name(CF_OPTIM_KIND_COUNT), "unknown"),
          "cf_optim_name");
}

/* ---- AdamW: bitwise the float arithmetic of torch.optim.AdamW ------------------------------------ */
typedef struct { float *x, *m, *v; } adamw_ref;

static void adamw_ref_step(void *arg, const fixture *f, int s, float lr) {
    adamw_ref *r = arg;
    const cf_params *p = &f->p;
    const cf_train_config *t = &f->t;
    /* bias corrections in double, everything else in float, in PyTorch's order */
    float bc1 = (float)(1.0 - pow(t->beta1, s + 1.0)), bc2_sqrt = (float)sqrt(1.0 - pow(t->beta2, s + 1.0));
    for (int i = 0; i < p->n; i++) {
        float keep = p->t[i]->ndim >= 2 ? 1.0f - lr * t->weight_decay : 1.0f;
        for (int64_t j = p->offset[i]; j < p->offset[i] + p->t[i]->numel; j++) {
            float g = p->grads[j];
            r->m[j] = r->m[j] * t->beta1 + g * (1.0f - t->beta1);
            r->v[j] = r->v[j] * t->beta2 + g * g * (1.0f - t->beta2);
            r->x[j] = r->x[j] * keep - lr / bc1 * (r->m[j] / (sqrtf(r->v[j]) / bc2_sqrt + t->eps));
        }
    }
}

static void test_adamw_bitwise(void) {
    fixture f;
    fixture_init(&f, CF_OPTIM_ADAMW, 0.1f);
    size_t bytes = sizeof(float) * (size_t)f.p.numel;
    adamw_ref r = {malloc(bytes), calloc(1, bytes), calloc(1, bytes)};
    memcpy(r.x, f.p.values, bytes);
    run_steps(&f, adamw_ref_step, &r);
    CHECK(!memcmp(f.p.values, r.x, bytes) && !memcmp(f.o.slab[0].data, r.m, bytes) &&
          !memcmp(f.o.slab[1].data, r.v, bytes), "AdamW through cf_optim_step differs from the float reference after "
          "%d steps", STEPS);
    free(r.x); free(r.m); free(r.v);
    fixture_free(&f);
}

/* ---- Lion: against a reference in double ---------------------------------------------------------- */
typedef struct { double *x, *m, keep_all; } lion_ref;

static void lion_ref_step(void *arg, const fixture *f, int s, float lr) {
    (void)s;
    lion_ref *r = arg;
    const cf_params *p = &f->p;
    double b1 = f->t.beta1, b2 = f->t.beta2, decay = 1 - (double)lr * f->t.weight_decay;
    r->keep_all *= decay;
    for (int i = 0; i < p->n; i++) {
        double keep = p->t[i]->ndim >= 2 ? decay : 1;
        for (int64_t j = p->offset[i]; j < p->offset[i] + p->t[i]->numel; j++) {
            double g = p->grads[j], c = b1 * r->m[j] + (1 - b1) * g;
            r->x[j] = r->x[j] * keep - (double)lr * ((c > 0) - (c < 0));
            r->m[j] = b2 * r->m[j] + (1 - b2) * g;
        }
    }
}

static void test_lion(void) {
    fixture f;
    fixture_init(&f, CF_OPTIM_LION, 0.5f);
    const cf_params *p = &f.p;
    int64_t n = p->numel;
    lion_ref r = {malloc(sizeof(double) * n), calloc(n, sizeof(double)), 1};
    float *x0 = malloc(sizeof(float) * n);
    for (int64_t j = 0; j < n; j++) r.x[j] = x0[j] = p->values[j];
    run_steps(&f, lion_ref_step, &r);
    double ex = 0, em = 0;
    for (int i = 0; i < p->n; i++)
        for (int64_t j = p->offset[i]; j < p->offset[i] + p->t[i]->numel; j++) {
            ex = fmax(ex, fabs(p->values[j] - r.x[j]));
            em = fmax(em, fabs(f.o.slab[0].data[j] - r.m[j]));
        }
    printf("lion: %d steps, max |x - ref| %.3g, max |m - ref| %.3g\n", STEPS, ex, em);
    CHECK(ex < 1e-5 && em < 1e-6, "lion: weights off by %.3g, momentum by %.3g from the double reference", ex, em);
    /* zero gradients throughout: w's element only decays, b's does not move at all */
    const cf_tensor *w = p->t[0], *b = p->t[1];
    float *w0 = x0 + p->offset[0], *b0 = x0 + p->offset[1];
    CHECK(fabs(w->data[7] - w0[7] * r.keep_all) < 1e-6 && cf_optim_state(&f.o, 0, 0)[7] == 0,
          "lion: w[7] (zero gradient) %.9g, expected only decay to %.9g", w->data[7], w0[7] * r.keep_all);
    int still = 1;
    for (int64_t j = 0; j < b->numel; j += 3) still &= b->data[j] == b0[j];
    CHECK(still, "lion: an element of the 1-D b with zero gradients moved");
    /* b's step 0 is all zero gradient: sign(0) = 0 and no decay on 1-D, so b stays put; the
     * elements with gradients from step 1 on move by at most lr per step */
    double most = 0;
    for (int s = 1; s < STEPS; s++) most += lr_at(s);
    int bounded = 1;
    for (int64_t j = 0; j < b->numel; j++) bounded &= fabs(b->data[j] - b0[j]) <= most * (1 + 1e-6);
    CHECK(bounded, "lion: b moved further than the sum of lr over its steps with gradients");
    free(r.x); free(r.m); free(x0);
    fixture_free(&f);
}

/* ---- gradient clipping ------------------------------------------------------------------------------ */
static void test_clip(void) {
    cf_params p;
    make_params(&p);
    fill_grads(&p, 1);
    long double ref = 0;
    for (int64_t j = 0; j < p.numel; j++) ref += (long double)p.grads[j] * p.grads[j];
    float want = (float)sqrtl(ref);
    size_t bytes = sizeof(float) * (size_t)p.numel;
    float *g0 = malloc(bytes), norms[2];
    memcpy(g0, p.grads, bytes);
    int threads = cf_num_threads();
    for (int k = 0; k < 2; k++) {
        cf_set_num_threads(k + 1);
        memcpy(p.grads, g0, bytes);
        norms[k] = cf_clip_grad_norm(&p, 0);
    }
    cf_set_num_threads(threads);
    CHECK(norms[0] == norms[1], "clip: norm %.9g at 1 thread, %.9g at 2", norms[0], norms[1]);
    CHECK(fabsf(norms[0] - want) <= 1e-6f * want, "clip: norm %.9g, long double reference %.9g", norms[0], want);
    float got = cf_clip_grad_norm(&p, 1.0f), coef = 1.0f / (got + 1e-6f);
    int scaled = 1;
    for (int64_t j = 0; j < p.numel; j++) scaled &= p.grads[j] == g0[j] * coef;
    CHECK(got == norms[0] && scaled, "clip: to norm 1 the gradients are not g x %.9g", coef);
    free(g0);
    cf_params_free(&p);
}

int main(void) {
    test_state_layout();
    test_clip();
    test_adamw_bitwise();
    test_lion();
    TEST_MAIN_END();
}
