/* The encoder-decoder Transformer (Vaswani et al. 2017; docs/architecture.md sections 4 and 7.4), its
 * cross-attention layer, and decoding (greedy and beam search with cached keys and values).
 *
 * Tokens. The vocabulary is the 256 byte values plus three specials, so model.vocab_size must be
 * at least 259 (ids above 258 are never produced by the data and never decoded):
 *   CF_TOK_BOS 256  starts every decoder input
 *   CF_TOK_EOS 257  ends every source and every target
 *   CF_TOK_PAD 258  fills batch rows up to the longest sequence; padded source positions are never
 *                   attended to (key masks) and padded target positions never count in the loss
 * A pair (source bytes s, target bytes t) becomes
 *   src     = s EOS                      (encoder input)
 *   tgt_in  = BOS t                      (decoder input)
 *   tgt_out = t EOS                      (what each decoder position predicts)
 * each at most train.seq_len tokens: a longer source keeps its first seq_len - 1 bytes and its EOS;
 * a longer target keeps its first seq_len bytes as tgt_out with no EOS (the model is not taught
 * to stop where the text did not end) and the BOS plus the first seq_len - 1 as tgt_in.
 *
 * Architecture (model.* keys are shared by the two stacks; model.encoder.n_layers and
 * model.decoder.n_layers size them):
 *   encoder block: bidirectional self-attention over the source (padding keys masked), MLP
 *   decoder block: causal self-attention, cross-attention (queries from the decoder, keys and
 *                  values from the final encoder output through one fused kv projection, padded
 *                  source keys masked), MLP
 * Pre-norm x + f(norm(x)) with a final norm per stack, or post-norm norm(x + f(x)) (Vaswani)
 * without one. Position: learned tables per stack, sinusoids (embeddings then scaled by
 * sqrt(d_model), as the paper does), or none. post-norm + sinusoidal + relu + tie_embeddings
 * with 6 + 6 layers, d_model 512, 8 heads, d_ff 2048 is the paper's base model.
 *
 * Parameter names (docs/architecture.md section 4; linear weights [out, in]):
 *   emb.weight [V, D]                     tie_embeddings: source, target and output embedding shared
 *   src_emb.weight, tgt_emb.weight,       untied: three separate tables [V, D]
 *   lm_head.weight
 *   encoder.pos_emb.weight [max_seq_len, D], decoder.pos_emb.weight   (learned positions only)
 *   encoder.blocks.i.ln1.{weight,bias}, .attn.qkv.{weight,bias} [3D, D], .attn.proj [D, D],
 *                   .ln2, .mlp.fc [d_ff, D], .mlp.proj [D, d_ff]        (as the decoder-only model)
 *   decoder.blocks.i.ln1, .attn.qkv, .attn.proj        causal self-attention
 *                   .ln_cross, .cross.q [D, D], .cross.kv [2D, D] (rows: all of k, then all of v),
 *                   .cross.proj [D, D]                  cross-attention
 *                   .ln2, .mlp.fc, .mlp.proj
 *   encoder.ln_f, decoder.ln_f            pre-norm only
 * (RMSNorm layers have no .bias; bias: false drops every linear bias.)
 * Initialisation as the decoder-only model: normal(0, init_std), zero biases, unit norm weights,
 * and the residual output projections (*.proj.weight) scaled by 1/sqrt(2 L) in the encoder and
 * 1/sqrt(3 L) in the decoder (two and three residual branches per block).
 *
 * Attention variants: model.attention configures the encoder's self-attention, whose non-recurrent
 * variants (full, window, sparse_*, linear, performer) run in their bidirectional form with key
 * padding masks (cf_attn_apply_keep); a list cycles over the encoder layers. The decoder's
 * self-attention is always full causal attention (its cached incremental decoding relies on it),
 * and cross-attention is full attention over the source.
 *
 * Gradient checkpointing (train.grad_checkpoint = k) recomputes regions of k encoder blocks and of
 * k decoder blocks; the gradients are bitwise those without it (src/model/encdec.c says how the
 * encoder output's gradient reaches the encoder from recomputed decoder blocks).
 */
#ifndef CFORMER_ENCDEC_H
#define CFORMER_ENCDEC_H

#include <stdint.h>
#include "model.h"

#define CF_TOK_BOS 256
#define CF_TOK_EOS 257
#define CF_TOK_PAD 258
#define CF_ENCDEC_MIN_VOCAB 259

/* ---- src/model/encdec.c ------------------------------------------------------------------------ */
typedef struct cf_dec_block {
    cf_block            self;         /* ln1, attn (causal), ln2, mlp, norm position, residual dropout */
    cf_norm_layer       ln_cross;
    cf_cross_attn_layer cross;
} cf_dec_block;

typedef struct cf_encdec {
    cf_tensor    *src_emb, *tgt_emb, *out_emb;   /* [V, D]; the same tensor when tied */
    cf_tensor    *enc_pos, *dec_pos;             /* [max_seq_len, D] learned positions, else NULL */
    float        *pos_table;                     /* [max_seq_len, D] sinusoids, else NULL */
    cf_block     *enc;
    cf_dec_block *dec;
    int           n_enc, n_dec;
    cf_norm_layer enc_ln_f, dec_ln_f;            /* pre-norm only */
} cf_encdec;

/* One batch of token sequences (pairs.h builds them from pair files). Rows are padded with
 * CF_TOK_PAD to the longest sequence of the batch. */
typedef struct cf_s2s_batch {
    int      B, S, T;          /* rows, source length, target length (tokens, padded) */
    int32_t *src;              /* [B, S] */
    uint8_t *src_keep;         /* [B, S] 1 = real token (bytes and EOS), 0 = padding */
    int32_t *tgt_in;           /* [B, T] */
    int32_t *tgt_out;          /* [B, T], CF_TOK_PAD where nothing is predicted */
    int64_t  src_tokens, tgt_tokens;   /* real (unpadded) tokens of each side */
    int     *rows;             /* [cap_B] scratch for the pair index of each row (pairs.h) */
    int      cap_B, cap_len;   /* allocated capacity */
} cf_s2s_batch;

void cf_s2s_batch_alloc(cf_s2s_batch *b, int max_B, int max_len);
void cf_s2s_batch_free(cf_s2s_batch *b);

/* cf_model_init builds it for model.arch "encoder_decoder" (cf_encdec_family): -1 with
 * cf_error_msg() naming the key for a config it cannot build (vocab_size below 259, an attention
 * type without padding masks). */
/* a generous bound on the arena bytes of one training step of B rows of at most S source and
 * T target tokens (also enough for evaluation and decoding of B rows) */
size_t cf_encdec_arena_bytes(const cf_model_config *c, int B, int S, int T);

/* token embedding (source table, or target table when decoder is 1) of ids [B, T] plus the positions
 * pos0 .. pos0 + T - 1 of that stack, then embedding dropout -> [B, T, D] */
cf_tensor *cf_encdec_embed(cf_model *m, cf_ctx *ctx, int decoder, const int32_t *ids, int B, int T, int pos0);
/* the final encoder output [B, S, D] (after encoder.ln_f with pre-norm) */
cf_tensor *cf_encdec_encode(cf_model *m, cf_ctx *ctx, const int32_t *src, const uint8_t *src_keep, int B, int S);
/* decoder logits [B, T, V] for decoder inputs tgt_in [B, T] over the memory mem [B, S, D] */
cf_tensor *cf_encdec_decode(cf_model *m, cf_ctx *ctx, cf_tensor *mem, const uint8_t *src_keep, const int32_t *tgt_in,
                            int T);
cf_tensor *cf_encdec_logits(cf_model *m, cf_ctx *ctx, const cf_s2s_batch *b);
/* mean cross-entropy in nats over the real target tokens, with label smoothing; logits_out
 * (optional) receives the logits. The batch's arrays are borrowed until backward has run. */
cf_tensor *cf_encdec_loss(cf_model *m, cf_ctx *ctx, const cf_s2s_batch *b, float smoothing, cf_tensor **logits_out);

#endif
