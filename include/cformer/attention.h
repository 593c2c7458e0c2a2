/* The ops of the attention variants and the table that names them (docs/architecture.md section 7,
 * docs/attention.md sections 3-6). An attention layer (nn.h: cf_attn_layer) is projections around a
 * core; its core runs on a fused projection qkv [B, T, 3D] (all q columns, then k, then v; head h
 * is columns [h*Dh, (h+1)*Dh) of each) and returns [B, T, D] with the heads in the same layout,
 * through one op per family:
 *
 *   full                        cf_attention_qkv (src/ops/attention.c; its row in full.c)
 *   window, sparse_strided,     cf_masked_attention_qkv (src/attention/masked.c): flash attention
 *   sparse_fixed                over the blocks a pattern can see (window.c, sparse.c say which)
 *   linear                      cf_linear_attention_qkv (src/attention/linear.c): elu(x)+1 features
 *   performer                   cf_favor_features twice, then cf_kernel_attention (performer.c,
 *                               linear.c): FAVOR+ random features, the same prefix-sum kernel
 *   xl, infini                  cf_xl_attention, cf_infini_attention (xl.c, infini.c): recurrent,
 *                               their state passed with each call (cf_attn_state)
 *
 * None of them keeps a T x T matrix: window and sparse keep the output and a log-sum-exp per row
 * and head, linear and performer the output and a denominator per row and head (plus, for the
 * performer, the features, O(T m)).
 *
 * The variant table (src/attention/table.c) has one row (cf_attn_variant) per cf_attn_kind: its
 * name, flags, config check, extra parameters and core; the layer (nn/attention.c) and the models
 * reach a variant only through it. To add a variant: write src/attention/<name>.c with its op and
 * its row at the end; add one line to the list in table.c; add the enum value to schema.h and its
 * name to cf_attn_kind_names in schema.c; add its config keys (schema.h, schema.c, io/config.c);
 * add its tests. A stateful one also adds its state to the union cf_attn_state below, and the
 * model that carries that state between calls passes it to cf_block_apply_state. */
#ifndef CFORMER_ATTENTION_H
#define CFORMER_ATTENTION_H

#include <stdint.h>
#include "ops.h"
#include "schema.h"

/* ---- masked softmax attention: window and sparse (src/attention/masked.c) -------------------------
 * Conventions (docs/attention.md sections 3 and 4.1), for query i and key j, l = stride:
 *   window          causal i - window <= j <= i;   bidirectional |i - j| <= window
 *   strided part 1  causal i - l < j <= i;         bidirectional |i - j| < l        ("local")
 *   strided part 2  (i - j) mod l == 0, with j <= i when causal                     ("strided")
 *   fixed part 1    floor(j / l) == floor(i / l), with j <= i when causal           ("own block")
 *   fixed part 2    j mod l >= l - c, with j <= i when causal                       ("summary")
 * combine (sparse only): "alternate": even layers part 1, odd layers part 2; "heads": even heads
 * part 1, odd heads part 2; "merged": every head the union of both parts. */
typedef struct cf_attn_pattern {
    cf_attn_kind type;          /* CF_ATTN_WINDOW, CF_ATTN_SPARSE_STRIDED or CF_ATTN_SPARSE_FIXED */
    int window;                 /* window */
    int stride, c;              /* sparse: l >= 1, and 1 <= c <= l (fixed) */
    int parts;                  /* sparse: 1 = part 1, 2 = part 2, 3 = both (merged) */
    int split_heads;            /* sparse: even heads part 1, odd heads part 2 (parts is ignored) */
} cf_attn_pattern;

/* the pattern that layer `layer` (its index in the stack) of config c uses */
cf_attn_pattern cf_attn_pattern_of(const cf_attn_config *c, int layer);

/* Softmax attention restricted to a pattern, with the options of cf_attention (causal, scale,
 * dropout on the probabilities, key padding). Equal to dense attention under the pattern's mask up
 * to float rounding; a query that sees no key gets a zero output. Costs O(T w) for a window,
 * O(T sqrt T) for the sparse patterns at l ~ sqrt T. */
cf_tensor *cf_masked_attention_qkv(cf_ctx *ctx, cf_tensor *qkv, int n_heads, const cf_attn_pattern *p,
                                   const cf_attn_opts *o);

/* ---- kernelised (linear) attention (src/attention/linear.c) ------------------------------------------
 * out_i = phi(q_i)^T S_i / (phi(q_i) . z_i + eps) with S_i = sum_j phi(k_j) v_j^T and
 * z_i = sum_j phi(k_j) over j <= i (causal) or all j, padded keys excluded. A zero denominator (no
 * visible key) gives a zero output. */

/* Katharopoulos et al. 2020: phi(x) = elu(x) + 1 on the q and k columns of qkv, eps = 1e-6 */
cf_tensor *cf_linear_attention_qkv(cf_ctx *ctx, cf_tensor *qkv, int n_heads, int causal, const uint8_t *key_keep);
/* The same on features given as tensors: fq and fk [B, T, H*F] (head h is columns [h*F, (h+1)*F)),
 * values from the v columns of qkv [B, T, 3*H*Dv]; gradients reach fq, fk and those columns. */
cf_tensor *cf_kernel_attention(cf_ctx *ctx, cf_tensor *fq, cf_tensor *fk, cf_tensor *qkv, int n_heads, int causal,
                               float eps, const uint8_t *key_keep);

/* ---- Performer FAVOR+ (src/attention/performer.c) -----------------------------------------------------
 * w [m, d]: m random features for heads of d (one matrix shared by the heads of a layer, as in the
 * reference implementations). Drawn by orthogonal blocks: each block of d rows is a Gaussian d x d
 * matrix orthonormalised by Gram-Schmidt (the Q of its QR), and row r is then scaled by the norm of
 * an independent N(0, I_d) vector, so each row is marginally N(0, I_d) ("scaling = 0" of the
 * reference). A pure function of (seed, layer_key, draw): no state to checkpoint. Scratch from ctx. */
void cf_performer_draw(cf_ctx *ctx, float *w, int m, int d, uint64_t seed, uint64_t layer_key, uint64_t draw);

/* Features of the q (which = 0) or k (which = 1) columns of qkv [B, T, 3*H*d] -> [B, T, H*m].
 * Softmax kernel (relu = 0): with x^ = x d^(-1/4), u = W x^, h = |x^|^2 / 2,
 *   query: m^(-1/2) (exp(u_r - h - max_r' u_r') + 1e-6)
 *   key:   m^(-1/2) (exp(u_r - h - M) + 1e-6), M = max of u over the (unpadded) rows and features
 *          of the sequence and head,
 * the maxima are constants for the gradient (they cancel between numerator and denominator).
 * ReLU kernel (relu = 1): relu(m^(-1/2) W x) + 1e-3. Padded keys get zero features. */
cf_tensor *cf_favor_features(cf_ctx *ctx, cf_tensor *qkv, int which, int n_heads, const float *w, int m, int relu,
                             const uint8_t *key_keep);

/* ---- Transformer-XL relative-position attention (src/attention/xl.c) -------------------------------
 * q [B, Tq, H*Dh] (the segment's queries), k, v [B, Tk, H*Dh] with Tk = mlen + Tq (memory rows
 * first), rk [Tk, H*Dh] (row j' = the projected sinusoid for distance Tk-1-j'), u and v_bias [H, Dh]:
 *   score_ij = ((q_i + u) . k_j + (q_i + v_bias) . rk_{j + Tq - 1 - i}) / sqrt(Dh),  j <= mlen + i,
 * softmax over j, attention dropout p (training only, counter-based), output P V [B, Tq, H*Dh].
 * Gradients reach every input that needs one; a memory that must get none is passed as a constant.
 * Keeps the output and a log-sum-exp per (batch, head, query): no Tq x Tk matrix. */
cf_tensor *cf_xl_attention(cf_ctx *ctx, cf_tensor *q, cf_tensor *k, cf_tensor *v, cf_tensor *rk, cf_tensor *u,
                           cf_tensor *v_bias, int n_heads, float dropout);

/* The relative sinusoids of Transformer-XL into R [klen, d] (d even): row j' is for distance
 * p = klen - 1 - j' (descending), capped at clamp_len when clamp_len > 0 (as the reference; config -1 = none), and
 * holds [sin(p f_0) ... sin(p f_{d/2-1}) | cos(p f_0) ... cos(p f_{d/2-1})], f_i = 1/10000^(2i/d):
 * not interleaved (mem_transformer.py PositionalEmbedding). */
void cf_xl_sinusoids(float *R, int klen, int d, int clamp_len);

/* ---- Infini-attention compressive memory (src/attention/infini.c) ---------------------------------
 * Munkhdalai et al. 2024, docs/attention.md section 8. qkv [B, T, 3*H*d] as above; the sequence is cut
 * into segments of segment_len rows (the last may be shorter). a_dot [B, T, H*d] is the local
 * attention, causal inside each segment only (the caller computes it: masked attention with the
 * sparse_fixed part-1 pattern of stride segment_len). Per batch row b and head h, with
 * sigma(x) = elu(x) + 1 applied to the q and k columns (no 1/sqrt(d) scale), the memory
 * M [d, d] and normaliser z [d] start from M0, z0 ([B, H, d, d] and [B, H, d], constants: no
 * gradient flows into them) or, when M0 is NULL, from "no memory yet". For each segment s:
 *   with a memory:  A_mem_i = sigma(q_i)^T M / (sigma(q_i) . z)      (memory before this segment)
 *                   out_i   = g A_mem_i + (1 - g) a_dot_i,   g = sigmoid(beta[h])
 *   without one:    out_i   = a_dot_i                               (the first segment of a stream)
 *   update, linear: M += sigma(K)^T V
 *           delta:  M += sigma(K)^T (V - sigma(K) M / (sigma(K) z))   (linear when there is no memory yet)
 *                   z += sum_t sigma(k_t)
 * so gradients flow through M and z across the segments of one call (the paper's unrolled
 * segments). beta [H] is a parameter. The state after the last segment is written to M_out, z_out
 * when they are not NULL (detached: the next call takes it as its M0, z0); M_out may equal M0.
 * Keeps the per-segment states for backward: O(B H d^2 T / segment_len) floats. */
cf_tensor *cf_infini_attention(cf_ctx *ctx, cf_tensor *qkv, cf_tensor *a_dot, cf_tensor *beta, int n_heads,
                               int segment_len, int delta, const float *M0, const float *z0, float *M_out,
                               float *z_out);

/* ---- the variant table (src/attention/table.c; each row at the end of its variant's file) ---------- */

/* The state one call of a recurrent variant reads and writes, one member per such variant, passed
 * with the call (cf_attn_call.state; NULL: none) by the model that keeps it between calls.
 * infini: the memory the call starts from (M0, z0 [B, H, Dh, Dh] and [B, H, Dh]; NULL = none yet)
 * and where it leaves the memory after its last segment (M_out, z_out; NULL = do not write: a
 * checkpointed region's recomputation must not) */
typedef struct cf_infini_io { const float *M0, *z0; float *M_out, *z_out; } cf_infini_io;
/* xl: keys and values come from xc [B, Tk, D] = concat(memory, segment) (memory rows first,
 * Tk = mlen + Tq; the call's input x [B, Tq, D] gives the queries), both through the layer's qkv
 * weights (q rows, then k, v rows); pos [Tk, D] the relative sinusoids (cf_xl_sinusoids,
 * distances Tk-1 ... 0), projected by the layer's r_net; u, v_bias [H, Dh] the model's shared
 * r_w_bias and r_r_bias. xl needs it. */
typedef struct cf_xl_io { cf_tensor *xc, *pos, *u, *v_bias; } cf_xl_io;
typedef union cf_attn_state {
    cf_infini_io infini;
    cf_xl_io     xl;
} cf_attn_state;

/* performer: the draw of random features (train.seed, redraw index) a layer last trained with,
 * read outside training; index -1 = none yet. A record apart from the layer (which its calls take
 * as const): the core writes it in training, cf_attn_set_step after a checkpoint is loaded. */
typedef struct cf_attn_draw { uint64_t seed; int64_t index; } cf_attn_draw;

/* What a variant's core sees of one call of one layer (nn/attention.c fills it from its layer). */
typedef struct cf_attn_call {
    const cf_attn_config *cfg;      /* the variant and its settings */
    int      n_heads, causal;
    float    dropout;               /* on the attention probabilities (training only) */
    int      layer;                 /* the block index: sparse "alternate" takes part 1 or 2 by its parity */
    uint64_t layer_key;             /* a hash of the layer's name prefix: keys the performer's features */
    cf_tensor *qkv_w, *qkv_b;       /* the fused projection [3D, D] and its bias [3D] or NULL */
    cf_tensor *const *extra;        /* the variant's own parameters, in the order of its row's extra[] */
    cf_attn_draw  *draw;            /* the layer's draw record (performer), or NULL */
    const uint8_t *key_keep;        /* [B, T] nonzero = real token, or NULL; borrowed until backward */
    const cf_attn_state *state;     /* the recurrent state of this call, or NULL */
    int      alibi;                 /* ALiBi biases on the scores (rows with CF_ATTN_ALIBI) */
} cf_attn_call;

/* cf_attn_variant.flags */
enum {
    CF_ATTN_RECURRENT   = 1 << 0,   /* carries state along a stream from one call to the next */
    CF_ATTN_KEY_PADDING = 1 << 1,   /* takes key padding masks (key_keep), as an encoder needs */
    CF_ATTN_CAUSAL_ONLY = 1 << 2,   /* has no bidirectional form */
    CF_ATTN_OWN_QKV     = 1 << 3,   /* the core projects the layer's input itself (from qkv_w, qkv_b):
                                     * its input is x [B, T, D], not the fused projection */
    /* what the layer's head ops (nn.h cf_attn_heads) may do before this core, each checked by
     * cf_attn_check_heads: */
    CF_ATTN_SHARED_KV   = 1 << 4,   /* keys and values shared by groups of heads (model.n_kv_heads) */
    CF_ATTN_ROPE        = 1 << 5,   /* rotary positions on queries and keys (model.position "rope") */
    CF_ATTN_ALIBI       = 1 << 6,   /* ALiBi biases added to the scores in its kernels */
    CF_ATTN_QK_NORM     = 1 << 7,   /* RMSNorm of each query and key head (model.qk_norm) */
};

/* the size of an extra parameter's dimension: the model width or the head count */
/* sizes a variant's parameters and state are declared in: d_model, n_heads, d_model / n_heads,
 * and the config's mem_len */
typedef enum { CF_ATTN_DIM_MODEL, CF_ATTN_DIM_HEADS, CF_ATTN_DIM_HEAD, CF_ATTN_DIM_MEM } cf_attn_dim;
int64_t cf_attn_dim_size(cf_attn_dim d, const cf_attn_config *c, int d_model, int n_heads);
/* an extra parameter: declared as "<layer prefix>.<name>" after qkv and proj, in row order */
typedef struct cf_attn_param { const char *name; int ndim; cf_attn_dim shape[2]; } cf_attn_param;
#define CF_ATTN_MAX_EXTRA 2

/* A recurrent variant's state, carried from one call to the next per stream (batch row): arrays
 * whose part for one stream has shape[0..ndim). Its name is the dataset's in checkpoints
 * (/state/attention/layer.<i>/<name>). A first dimension of CF_ATTN_DIM_MEM is a capacity of
 * which a prefix is in use (a memory that has not seen mem_len rows yet); an array of size 0
 * (mem_len 0) is no state at all. */
typedef struct cf_attn_state_array {
    const char *name;
    int         ndim;
    cf_attn_dim shape[3];
    int         nonneg;           /* every value >= 0 (a normaliser), checked when loaded */
} cf_attn_state_array;
#define CF_ATTN_MAX_STATE 2

/* ---- incremental decoding (inference only; docs/architecture.md section 20) ----------------------
 * One layer's cache for one stream of generated bytes. Keys (after any position rotation) and
 * values are kept per key/value head, [Hkv, rows, Dh], as a ring: position p lives in row
 * p % rows; query head h reads key/value head cf_attn_cache_kv_head(c, h). aux holds
 * the variant's own floats (running sums, a compressive memory, projected relative positions).
 * Positions count from the start of the stream, or, for a layer without memory in a recurrent
 * model, from the start of the current call (the model resets such a layer at every call). */
typedef struct cf_attn_cache {
    int     H, Dh;            /* query heads, head width */
    int     Hkv;              /* key/value heads kept (model.n_kv_heads; H without shared heads) */
    int     rows;             /* key and value rows kept (0: none) */
    int     span;             /* positions of one call: a recurrent model's segment, else the context */
    float  *k, *v;            /* [Hkv, rows, Dh] */
    float  *aux;              /* the row's cache_aux floats */
    float  *ws;               /* workspace: cf_attn_cache_ws_floats(rows, Dh) per thread */
    int64_t pos;              /* positions fed since the stream (or, see above, the call) began */
    int64_t call0;            /* recurrent variants: the position the current call starts at */
    int     has_mem;          /* recurrent variants: a memory exists (not the first call) */
} cf_attn_cache;

/* the key/value head that query head h reads: the H / Hkv query heads of a group share one */
static inline int cf_attn_cache_kv_head(const cf_attn_cache *c, int h) { return h / (c->H / c->Hkv); }

/* out [Dh] = softmax_j(scale q . k_j) v_j over the n cache rows listed of query head h (a zero output
 * when n is 0), with scores as workspace (n floats): the one-query attention of every cached
 * softmax step, and of callers that fill a cache's keys and values themselves (the
 * encoder-decoder's cross-attention over its encoder output) */
void cf_attn_cache_attend(const cf_attn_cache *c, int h, const float *q, float scale, const int32_t *rows, int n,
                          float *scores, float *out);

/* floats of workspace one thread of a step needs for a cache of `rows` key rows and heads of d_head */
static inline size_t cf_attn_cache_ws_floats(int rows, int d_head) { return 3 * (size_t)rows + 2 * (size_t)d_head + 64; }

/* One row of the table: what the layer, the models and the config check know of a variant. */
typedef struct cf_attn_variant {
    const char *name;               /* cf_attn_kind_names[kind] */
    unsigned    flags;              /* CF_ATTN_* above */
    /* Can a layer of n_heads heads over d_model columns run config c? 0, or -1 with cf_error_msg()
     * naming the key under path ("model.attention[1].stride: ..."). NULL: every config the reader
     * accepts. */
    int (*check)(const cf_attn_config *c, const char *path, int n_heads, int d_model);
    int           n_extra;
    cf_attn_param extra[CF_ATTN_MAX_EXTRA];
    int                 n_state;  /* CF_ATTN_RECURRENT variants: the arrays of their state */
    cf_attn_state_array state[CF_ATTN_MAX_STATE];
    /* in: qkv [B, T, 3D], or x [B, T, D] with CF_ATTN_OWN_QKV -> [B, T, D] before the output
     * projection */
    cf_tensor *(*core)(cf_ctx *ctx, const cf_attn_call *call, cf_tensor *in);
    /* Incremental decoding (cf_attn_cache above), no autograd. cache_rows: key and value rows a
     * layer keeps when one call holds up to span positions; cache_aux: its own floats.
     * cache_start (NULL: nothing to do): fill aux once the cache is zeroed and sized (the draw of
     * random features, projected positions); ctx gives scratch only. step: n new rows at
     * positions cache->pos, ..., q [n, H*Dh] and k, v [n, Hkv*Dh], all with row stride ld (head h
     * is columns [h*Dh, (h+1)*Dh); query head h reads key/value head cf_attn_cache_kv_head) ->
     * out [n, H*Dh] (row stride H*Dh), each row attending as the core's
     * causal form does to the rows before it; appends the rows and advances pos by n. boundary
     * (recurrent variants; NULL for the others): the end of a call of a recurrent model, where
     * training and streamed evaluation hand the state to the next call. */
    int    (*cache_rows)(const cf_attn_config *c, int span);
    size_t (*cache_aux)(const cf_attn_config *c, int n_heads, int d_head, int span);
    void   (*cache_start)(cf_ctx *ctx, const cf_attn_call *call, cf_attn_cache *cache);
    void   (*step)(const cf_attn_call *call, cf_attn_cache *cache, const float *q, const float *k, const float *v,
                   int ld, int n, float *out);
    void   (*boundary)(const cf_attn_call *call, cf_attn_cache *cache);
} cf_attn_variant;

/* the row of kind k (asserts that k has one) */
const cf_attn_variant *cf_attn_variant_of(cf_attn_kind k);
/* every kind has a row with a core and the kind's name: 0, or -1 with cf_error_msg() */
int cf_attn_table_check(void);
/* The one check of an attention config, for a layer of n_heads heads over d_model columns in a
 * causal decoder stack (encoder 0) or a bidirectional encoder over padded keys (encoder 1): the
 * variant's row check, and whether the variant can serve there. 0, or -1 with cf_error_msg()
 * naming the key; path is the key path of the config ("model.attention" or "model.attention[1]"). */
int cf_attn_check(const cf_attn_config *c, const char *path, int n_heads, int d_model, int encoder);
/* Can the entry's variant take the model's head options (m->position "rope" or "alibi",
 * m->n_kv_heads below n_heads, m->qk_norm)? Its row's CF_ATTN_ROPE, CF_ATTN_ALIBI,
 * CF_ATTN_SHARED_KV and CF_ATTN_QK_NORM say; 0, or -1 with one line naming the model key and the
 * entry's type (path as for cf_attn_check). */
int cf_attn_check_heads(const cf_attn_config *c, const char *path, const cf_model_config *m);
/* Run call's variant on in (see cf_attn_variant.core), asserting what its flags rule out (key
 * padding, a bidirectional call) and the input's shape. */
cf_tensor *cf_attn_forward(cf_ctx *ctx, const cf_attn_call *call, cf_tensor *in);

/* the options of the softmax kernels for a call: its causality, attention dropout, key padding */
static inline cf_attn_opts cf_attn_call_opts(const cf_attn_call *c) {
    return (cf_attn_opts){.causal = c->causal, .dropout = c->dropout, .key_keep = c->key_keep, .alibi = c->alibi};
}

#endif
