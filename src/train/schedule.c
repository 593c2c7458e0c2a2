/* The learning-rate schedule (train.h): linear warm-up, then cosine, linear or constant. */
#include <math.h>
#include "cformer/train.h"

float cf_lr_at(const cf_train_config *t, int s) {
    if (s < t->warmup_steps) return t->lr * (float)(s + 1) / (float)t->warmup_steps;
    if (t->schedule == CF_SCHED_CONSTANT) return t->lr;
    double span = t->steps - t->warmup_steps > 1 ? t->steps - t->warmup_steps : 1;
    double f = (s - t->warmup_steps) / span;
    if (f > 1) f = 1;
    double w = t->schedule == CF_SCHED_COSINE ? 0.5 * (1.0 + cos(M_PI * f)) : 1.0 - f;
    return (float)(t->min_lr + (t->lr - t->min_lr) * w);
}
