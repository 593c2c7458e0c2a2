/* add, mul, scale: gradient checks, including broadcasting of the second operand. */
#include "gradcheck.h"

static cf_tensor *f_add(cf_ctx *c, cf_tensor **in, void *arg) { (void)arg; return cf_add(c, in[0], in[1]); }
static cf_tensor *f_mul(cf_ctx *c, cf_tensor **in, void *arg) { (void)arg; return cf_mul(c, in[0], in[1]); }
static cf_tensor *f_scale(cf_ctx *c, cf_tensor **in, void *arg) { (void)arg; return cf_scale(c, in[0], -1.7f); }
/* fan-out: x used twice must accumulate both contributions */
static cf_tensor *f_fan(cf_ctx *c, cf_tensor **in, void *arg) { (void)arg; return cf_mul(c, cf_add(c, in[0], in[0]), in[0]); }

int main(void) {
    float a[2 * 3 * 4], b[3 * 4], b2[2 * 3 * 4];
    t_fill_uniform(a, 24, -1, 1, 1);
    t_fill_uniform(b, 12, -1, 1, 2);
    t_fill_uniform(b2, 24, -1, 1, 3);
    gc_input same[2] = {{a, 3, {2, 3, 4}, 1}, {b2, 3, {2, 3, 4}, 1}};
    gc_input bcast[2] = {{a, 3, {2, 3, 4}, 1}, {b, 2, {3, 4}, 1}};
    gradcheck("add", f_add, NULL, same, 2, 1e-2f, 1e-2);
    gradcheck("add broadcast", f_add, NULL, bcast, 2, 1e-2f, 1e-2);
    gradcheck("mul", f_mul, NULL, same, 2, 1e-2f, 1e-2);
    gradcheck("mul broadcast", f_mul, NULL, bcast, 2, 1e-2f, 1e-2);
    gradcheck("scale", f_scale, NULL, same, 1, 1e-2f, 1e-2);
    gradcheck("fan-out", f_fan, NULL, same, 1, 1e-2f, 1e-2);
    TEST_MAIN_END();
}
