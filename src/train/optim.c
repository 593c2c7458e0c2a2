/* AdamW, gradient clipping and the learning-rate schedule, matching PyTorch's arithmetic so the
 * golden files' five-step losses agree (tests/test_golden.c). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "cformer/train.h"

void cf_adamw_init(cf_adamw *o, const cf_params *p) {
    o->numel = p->numel;
    o->m = cf_xcalloc((size_t)p->numel, sizeof(float));
    o->v = cf_xcalloc((size_t)p->numel, sizeof(float));
    o->t = 0;
}

void cf_adamw_free(cf_adamw *o) {
    free(o->m);
    free(o->v);
    memset(o, 0, sizeof *o);
}

void cf_adamw_step(cf_adamw *o, cf_params *p, float lr, const cf_train_config *t) {
    o->t++;
    /* PyTorch computes the corrections in double and the step in float */
    float bc1 = (float)(1.0 - pow(t->beta1, (double)o->t));
    float bc2_sqrt = (float)sqrt(1.0 - pow(t->beta2, (double)o->t));
    float step_size = lr / bc1, b1 = t->beta1, b2 = t->beta2, eps = t->eps;
    for (int i = 0; i < p->n; i++) {
        cf_tensor *w = p->t[i];
        float decay = w->ndim >= 2 ? 1.0f - lr * t->weight_decay : 1.0f;
        float *x = w->data, *g = w->grad, *m = o->m + p->offset[i], *v = o->v + p->offset[i];
        #pragma omp parallel for schedule(static) if (w->numel > 65536)
        for (int64_t j = 0; j < w->numel; j++) {
            x[j] *= decay;
            m[j] = m[j] * b1 + g[j] * (1.0f - b1);
            v[j] = v[j] * b2 + g[j] * g[j] * (1.0f - b2);
            float denom = sqrtf(v[j]) / bc2_sqrt + eps;
            x[j] -= step_size * (m[j] / denom);
        }
    }
}

float cf_clip_grad_norm(cf_params *p, float max_norm) {
    /* per-tensor norms, then the norm of norms: PyTorch's order of summation */
    double total = 0;
    for (int i = 0; i < p->n; i++) {
        const float *g = p->t[i]->grad;
        double s = 0;
        for (int64_t j = 0; j < p->t[i]->numel; j++) s += (double)g[j] * g[j];
        total += s;
    }
    float norm = (float)sqrt(total);
    if (max_norm > 0) {
        float coef = max_norm / (norm + 1e-6f);
        if (coef < 1.0f) {
            #pragma omp parallel for schedule(static)
            for (int64_t j = 0; j < p->numel; j++) p->grads[j] *= coef;
        }
    }
    return norm;
}

float cf_lr_at(const cf_train_config *t, int s) {
    if (s < t->warmup_steps) return t->lr * (float)(s + 1) / (float)t->warmup_steps;
    if (t->schedule == CF_SCHED_CONSTANT) return t->lr;
    double span = t->steps - t->warmup_steps > 1 ? t->steps - t->warmup_steps : 1;
    double f = (s - t->warmup_steps) / span;
    if (f > 1) f = 1;
    double w = t->schedule == CF_SCHED_COSINE ? 0.5 * (1.0 + cos(M_PI * f)) : 1.0 - f;
    return (float)(t->min_lr + (t->lr - t->min_lr) * w);
}
