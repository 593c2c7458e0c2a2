/* AdamW (Loshchilov and Hutter 2019) with PyTorch's arithmetic, so the golden files' five-step
 * losses agree (tests/test_golden.c). State: slab 0 = m (first moments), slab 1 = v (second). */
#include <math.h>
#include "steps.h"

/* One step, exactly as torch.optim.AdamW: decoupled weight decay on tensors of 2+ dims only. */
void cf_optim_adamw_step(cf_optim *o, cf_params *p, float lr, const cf_train_config *t) {
    /* PyTorch computes the corrections in double and the step in float */
    float bc1 = (float)(1.0 - pow(t->beta1, (double)o->t));
    float bc2_sqrt = (float)sqrt(1.0 - pow(t->beta2, (double)o->t));
    float step_size = lr / bc1, b1 = t->beta1, b2 = t->beta2, eps = t->eps;
    for (int i = 0; i < p->n; i++) {
        cf_tensor *w = p->t[i];
        float decay = w->ndim >= 2 ? 1.0f - lr * t->weight_decay : 1.0f;
        float *x = w->data, *g = w->grad, *m = cf_optim_state(o, 0, i), *v = cf_optim_state(o, 1, i);
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
