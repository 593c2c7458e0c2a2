/* The model interface (model.h): the table of model families, and the calls that go through it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cformer/model.h"

const cf_model_family *const cf_model_families[CF_ARCH_COUNT] = {
    [CF_ARCH_DECODER] = &cf_decoder_family,
    [CF_ARCH_ENCODER_DECODER] = &cf_encdec_family,
};
_Static_assert(sizeof cf_model_families / sizeof *cf_model_families == CF_ARCH_COUNT, "one family per model.arch");

int cf_model_init(cf_model *m, const cf_model_config *c, uint64_t seed) {
    memset(m, 0, sizeof *m);
    CF_ASSERT((unsigned)c->arch < CF_ARCH_COUNT && cf_model_families[c->arch], "model.arch %d has no family", (int)c->arch);
    m->family = cf_model_families[c->arch];
    /* a lower bound of the parameters (each block's projections and feed-forward, the embedding),
     * so that a model far too large is refused before millions of parameters are declared */
    double D = c->d_model, layers = (double)c->enc_layers + c->dec_layers;
    double least = layers * (4 * D * D + 2 * D * c->d_ff) + (double)c->vocab_size * D, phys = (double)cf_phys_mem_bytes();
    if (phys > 0 && least * 2 * sizeof(float) > phys)
        return cf_set_error("model: at least %.0f parameters need %.0f MB for their values and gradients, more than the "
                            "machine's %.0f MB of memory (model.d_model %d, model.n_layers %d, model.d_ff %d, "
                            "model.vocab_size %d: choose a smaller model)", least, least * 8 / 1048576, phys / 1048576,
                            c->d_model, c->n_layers, c->d_ff, c->vocab_size);
    if (m->family->init(m, c, seed) == 0) return 0;
    if (m->params.n && !m->params.finalized) {   /* the parameters did not fit: say which keys size them */
        char msg[512];
        snprintf(msg, sizeof msg, "%s", cf_error_msg());
        return cf_set_error("model: %s (model.d_model %d, model.n_layers %d, model.d_ff %d, model.vocab_size %d: "
                            "choose a smaller model)", msg, c->d_model, c->n_layers, c->d_ff, c->vocab_size);
    }
    return -1;
}

void cf_model_free(cf_model *m) {
    if (m->family) m->family->free(m);
    cf_params_free(&m->params);
    memset(m, 0, sizeof *m);
}

size_t cf_model_arena_bytes(const cf_model_config *c, int B, int T) {
    return cf_model_families[c->arch]->arena_bytes(c, B, T);
}

cf_tensor *cf_model_batch_loss(cf_model *m, cf_ctx *ctx, const cf_batch *b) { return m->family->loss(m, ctx, b); }

void cf_model_set_step(cf_model *m, uint64_t seed, uint64_t step) {
    int n = m->family->attn_layers(m, NULL);
    cf_attn_layer **layers = cf_xmalloc(sizeof *layers * (size_t)(n > 0 ? n : 1));
    m->family->attn_layers(m, layers);
    for (int i = 0; i < n; i++) cf_attn_set_step(layers[i], seed, step);
    free(layers);
}
