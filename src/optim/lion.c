/* Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms") with the arithmetic of
 * the reference lion-pytorch: per element, with g the gradient and m the momentum,
 *   x *= 1 - lr * weight_decay          (decoupled, on tensors of 2+ dims only, as AdamW here)
 *   x -= lr * sign(beta1 * m + (1 - beta1) * g)      (sign(0) = 0, as torch.sign)
 *   m  = beta2 * m + (1 - beta2) * g
 * State: slab 0 = m. The update has the same size lr in every coordinate, so Lion's customary lr
 * is 3-10x smaller than AdamW's, and its betas 0.9 and 0.99. */
#include "steps.h"

void cf_optim_lion_step(cf_optim *o, cf_params *p, float lr, const cf_train_config *t) {
    float b1 = t->beta1, b2 = t->beta2;
    for (int i = 0; i < p->n; i++) {
        cf_tensor *w = p->t[i];
        float decay = w->ndim >= 2 ? 1.0f - lr * t->weight_decay : 1.0f;
        float *x = w->data, *g = w->grad, *m = cf_optim_state(o, 0, i);
        #pragma omp parallel for schedule(static) if (w->numel > 65536)
        for (int64_t j = 0; j < w->numel; j++) {
            float c = m[j] * b1 + g[j] * (1.0f - b1);
            x[j] *= decay;
            x[j] -= lr * (float)((c > 0) - (c < 0));
            m[j] = m[j] * b2 + g[j] * (1.0f - b2);
        }
    }
}
