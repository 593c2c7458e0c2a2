/* AdamW (Loshchilov and Hutter 2019) with PyTorch's arithmetic, so the golden files' five-step
 * losses agree (tests/test_golden.c). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "cformer/optim.h"

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
