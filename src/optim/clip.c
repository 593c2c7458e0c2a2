/* Gradient clipping by the global L2 norm, summed in PyTorch's order (optim.h). */
#include <math.h>
#include "cformer/optim.h"

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
