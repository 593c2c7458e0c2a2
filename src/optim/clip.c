/* Gradient clipping by the global L2 norm (optim.h). */
#include <math.h>
#include "cformer/optim.h"

enum { PARTS = 256 };   /* fixed pieces of the slab: the sum's order depends on neither threads nor timing */

float cf_clip_grad_norm(cf_params *p, float max_norm) {
    /* The sum of squares over the gradient slab (padding between tensors is zero), in double: each
     * of PARTS equal pieces summed in order, then the pieces in order. One parallel pass, and the
     * same bits at any thread count. */
    double part[PARTS];
    int64_t n = p->numel, len = (n + PARTS - 1) / PARTS;
    const float *g = p->grads;
    #pragma omp parallel for schedule(static) if (n > 65536)
    for (int q = 0; q < PARTS; q++) {
        int64_t s = (int64_t)q * len, e = s + len < n ? s + len : n;
        double acc = 0;
        for (int64_t j = s; j < e; j++) acc += (double)g[j] * g[j];
        part[q] = acc;
    }
    double total = 0;
    for (int q = 0; q < PARTS; q++) total += part[q];
    float norm = (float)sqrt(total);
    if (max_norm > 0) {
        float coef = max_norm / (norm + 1e-6f);
        if (coef < 1.0f) {
            #pragma omp parallel for schedule(static) if (n > 65536)
            for (int64_t j = 0; j < n; j++) p->grads[j] *= coef;
        }
    }
    return norm;
}
