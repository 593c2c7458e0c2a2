/* AdamW (Loshchilov and Hutter 2019) with PyTorch's arithmetic, so the golden files' five-step
 * losses agree (tests/test_golden.c). State: slab 0 = m (first moments), slab 1 = v (second). */
#include <math.h>
#include "steps.h"

/* the first tensor that ends after slab element e (tensors lie in the slab in order) */
static int tensor_at(const cf_params *p, int64_t e) {
    int lo = 0, hi = p->n - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (p->offset[mid] <= e) lo = mid;
        else hi = mid - 1;
    }
    return p->offset[lo] + p->t[lo]->numel > e ? lo : lo + 1;
}

enum { BLOCK = 8192 };   /* slab elements a work item: small tensors share one, large ones span many */

/* One step, exactly as torch.optim.AdamW: decoupled weight decay on tensors of 2+ dims only. One
 * parallel pass over the slab in fixed blocks (one fork and join a step, not one a tensor); each
 * element's arithmetic is the same whichever block or thread updates it. */
void cf_optim_adamw_step(cf_optim *o, cf_params *p, float lr, const cf_train_config *t) {
    /* PyTorch computes the corrections in double and the step in float */
    float bc1 = (float)(1.0 - pow(t->beta1, (double)o->t));
    float bc2_sqrt = (float)sqrt(1.0 - pow(t->beta2, (double)o->t));
    float step_size = lr / bc1, b1 = t->beta1, b2 = t->beta2, eps = t->eps;
    float decay2 = 1.0f - lr * t->weight_decay;
    if (!p->n) return;
    int64_t blocks = (p->numel + BLOCK - 1) / BLOCK;
    #pragma omp parallel for schedule(static) if (p->numel > 65536)
    for (int64_t b = 0; b < blocks; b++) {
        int64_t s = b * BLOCK, e = s + BLOCK < p->numel ? s + BLOCK : p->numel;
        for (int i = tensor_at(p, s); i < p->n && p->offset[i] < e; i++) {
            cf_tensor *w = p->t[i];
            int64_t off = p->offset[i], j0 = s > off ? s - off : 0, j1 = e - off < w->numel ? e - off : w->numel;
            float decay = w->ndim >= 2 ? decay2 : 1.0f;
            float *x = w->data, *g = w->grad, *m = cf_optim_state(o, 0, i), *v = cf_optim_state(o, 1, i);
            for (int64_t j = j0; j < j1; j++) {
                x[j] *= decay;
                m[j] = m[j] * b1 + g[j] * (1.0f - b1);
                v[j] = v[j] * b2 + g[j] * g[j] * (1.0f - b2);
                float denom = sqrtf(v[j]) / bc2_sqrt + eps;
                x[j] -= step_size * (m[j] / denom);
            }
        }
    }
}
