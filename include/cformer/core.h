/* cformer core: tensors, the activation arena, the autograd tape and the context that owns them.
 *
 * The model of computation (define-by-run, as in micrograd and kann):
 *   - every op is a function cf_<op>(ctx, inputs...) that computes its output at once and, when a
 *     gradient will be needed, records one cf_node on ctx's tape;
 *   - the tape is the execution order, so cf_backward() walks it in reverse, and each node's
 *     backward ADDS (+=) into its inputs' gradients (fan-out such as residuals is then free);
 *   - activations, their gradients and whatever backward keeps come from one arena, reset at the
 *     start of every step: the training step does no malloc;
 *   - parameters and their gradients live in slabs (cf_params, param.h) allocated once.
 *
 * Dimension letters used in shape comments throughout: B batch, T tokens, D d_model, H heads,
 * Dh d_head, F d_ff, V vocabulary.
 */
#ifndef CFORMER_CORE_H
#define CFORMER_CORE_H

#include <stddef.h>
#include <stdint.h>

#define CF_VERSION "0.1.0"
#define CF_MAX_DIMS 4
#define CF_NODE_MAX_IN 4

/* ---- errors -------------------------------------------------------------------------------
 * Two tiers. Programming errors (shape mismatches, broken invariants) abort at once with the
 * file, line and a message: CF_ASSERT stays on in release builds. Errors of input (config, data,
 * checkpoints) are returned as status codes with a message in cf_error_msg(); only main() exits. */
void cf_die(const char *file, int line, const char *fmt, ...) __attribute__((noreturn, format(printf, 3, 4)));
#define CF_ASSERT(cond, ...) do { if (!(cond)) cf_die(__FILE__, __LINE__, __VA_ARGS__); } while (0)

int         cf_set_error(const char *fmt, ...) __attribute__((format(printf, 1, 2))); /* returns -1; one line */
const char *cf_error_msg(void);

/* malloc that dies with a message instead of returning NULL (for set-up time, never the step) */
void *cf_xmalloc(size_t n);
void *cf_xcalloc(size_t n, size_t size);

/* ---- tensors ------------------------------------------------------------------------------ */
typedef struct cf_tensor {
    int      ndim;
    int      shape[CF_MAX_DIMS];   /* row-major, contiguous */
    int64_t  numel;
    float   *data;                 /* borrowed: owned by the arena or a parameter slab */
    float   *grad;                 /* NULL until backward first touches it (cf_grad) */
    unsigned requires_grad : 1;    /* a gradient must flow into this tensor */
    unsigned is_param : 1;         /* data/grad live in a cf_params slab */
    unsigned grad_owned : 1;       /* grad came from cf_grad, so backward may recycle it */
    const char *name;              /* parameters only */
} cf_tensor;

/* "(2, 3, 4)" into a static per-thread buffer slot, for error messages */
const char *cf_shape_str(const cf_tensor *t);
int  cf_same_shape(const cf_tensor *a, const cf_tensor *b);
/* size of the last dimension, and the product of the others ("rows") */
static inline int     cf_cols(const cf_tensor *t) { return t->shape[t->ndim - 1]; }
static inline int64_t cf_rows(const cf_tensor *t) { return t->numel / t->shape[t->ndim - 1]; }

/* ---- arena ---------------------------------------------------------------------------------
 * One reservation of address space, touched (and so counted in RSS) only as far as it is used.
 * Allocations are 64-byte aligned bump allocations; mark/rewind release everything allocated
 * after a mark, which is what gradient checkpointing does with a recomputed region. */
typedef struct cf_arena {
    char  *base;
    size_t cap, used, peak;
    size_t touched;                /* bytes from base whose pages were first touched (cf_zero_parallel) */
} cf_arena;

int    cf_arena_init(cf_arena *a, size_t cap_bytes);   /* 0, or -1 with cf_error_msg() */
void   cf_arena_free(cf_arena *a);
void  *cf_arena_alloc(cf_arena *a, size_t nbytes);     /* dies naming the capacity when full */
static inline size_t cf_arena_mark(const cf_arena *a) { return a->used; }
static inline void   cf_arena_rewind(cf_arena *a, size_t mark) { a->used = mark; }
/* Zero n bytes, large spans by all threads in equal contiguous parts: the static schedule of the
 * ops' row loops and of the optimizer's slab pass. Memory touched first here (the arena as it
 * grows, the parameter, gradient and optimizer slabs) lands on the NUMA node of the thread that
 * will use it (docs/perf/README.md, "First touch"). */
void   cf_zero_parallel(void *p, size_t n);
static inline void   cf_arena_reset(cf_arena *a) { a->used = 0; }

/* ---- tape ---------------------------------------------------------------------------------- */
typedef enum cf_op_kind {
    CF_OP_MATMUL,          /* batched A·B with optional transposes */
    CF_OP_LINEAR,          /* x W^T + b */
    CF_OP_ADD,
    CF_OP_MUL,
    CF_OP_SCALE,
    CF_OP_GELU,
    CF_OP_RELU,
    CF_OP_ELU,
    CF_OP_SOFTMAX,
    CF_OP_CROSS_ENTROPY,   /* fused log-softmax + mean NLL with ignore index */
    CF_OP_LAYERNORM,
    CF_OP_RMSNORM,
    CF_OP_EMBEDDING,
    CF_OP_DROPOUT,
    CF_OP_RESHAPE,
    CF_OP_PERMUTE,
    CF_OP_CONCAT,
    CF_OP_SLICE,           /* a column range of the last dim */
    CF_OP_MASK,            /* masked_fill(-inf) where a causal or explicit mask says so */
    CF_OP_SUM,
    CF_OP_MEAN,
    CF_OP_ATTENTION,       /* fused scaled-dot-product attention (tiled, O(T) memory) */
    CF_OP_CHECKPOINT,      /* a recomputed region (gradient checkpointing) */
    CF_OP_MASKED_ATTENTION, /* softmax attention under a window or sparse pattern (src/attention/masked.c) */
    CF_OP_KERNEL_ATTENTION, /* linear / performer attention by prefix sums (src/attention/linear.c) */
    CF_OP_FAVOR,           /* Performer FAVOR+ random features (src/attention/performer.c) */
    CF_OP_XL_ATTENTION,    /* Transformer-XL relative-position attention (src/attention/xl.c) */
    CF_OP_INFINI_ATTENTION, /* Infini-attention compressive memory (src/attention/infini.c) */
    CF_OP_LINEAR_GELU,     /* gelu(x W^T + b), the GELU in the GEMM's epilogue (src/ops/linear_gelu.c) */
    CF_OP_SILU,
    CF_OP_GLU,             /* act(a) * b, the gated feed-forward */
    CF_OP_ROPE,            /* rotary positions on the query and key heads of a fused qkv (src/ops/heads.c) */
    CF_OP_QK_NORM,         /* RMSNorm of each query and key head */
    CF_OP_KV_REPEAT,       /* shared key/value heads repeated for grouped-query attention */
    CF_OP_COUNT
} cf_op_kind;

struct cf_ctx;
struct cf_node;
typedef void (*cf_backward_fn)(struct cf_ctx *ctx, struct cf_node *n);

/* Floating-point operations of one node, forward and backward, from its inputs' and output's
 * shapes and its attributes (a multiply-add counts 2). `recorded` is 0 for an op that ran without
 * recording (no attributes): an op whose count needs them reports -1 (unknown) then. */
typedef void (*cf_flops_fn)(const struct cf_node *n, int recorded, double *fwd, double *bwd);

/* What selective recompute (cf_checkpoint_selective) may do with an op: flags of its row. A row
 * without CF_RC_SET counts as a backward that reads its inputs and its output, which is always safe. */
#define CF_RC_IN   1u   /* backward reads the values of the inputs (or state computed from them) */
#define CF_RC_OUT  2u   /* backward reads the values of the output */
#define CF_RC_SKIP 4u   /* the op keeps no state: a replay may leave an output no one reads uncomputed */
#define CF_RC_KEEP 8u   /* a region keeps the op's output (and saved state) for its replay, when needed */
#define CF_RC_SET  16u  /* CF_RC_IN and CF_RC_OUT are declared */

typedef struct cf_op_info {
    const char    *name;
    cf_backward_fn backward;       /* reads n->out->grad, ADDS into n->in[i]->grad */
    cf_flops_fn    flops;          /* NULL: no FLOP count defined (memory-bound ops) */
    unsigned       recompute;      /* CF_RC_* flags */
} cf_op_info;
extern const cf_op_info cf_op_table[CF_OP_COUNT];
int cf_op_table_check(void);   /* 0 when every op kind has a name and a backward */

typedef struct cf_node {
    cf_op_kind  op;
    int         n_in;
    cf_tensor  *in[CF_NODE_MAX_IN];
    cf_tensor  *out;
    void       *saved;             /* what forward kept for backward (arena memory) */
    const void *ptr;               /* a borrowed pointer argument (token ids, targets, closure) */
    int64_t     iarg[6];           /* op attributes */
    float       farg[4];
} cf_node;

/* An observer of the tape (dist.h: the gradient all-reduce that overlaps backward). A context's
 * hook is NULL unless one is armed, and then costs nothing. When set, cf_record calls read() with
 * the inputs of every op, recorded or not, and the tape index the op's node takes (for the ops of a
 * checkpointed region's unrecorded forward: the index of the region's node); cf_backward_range
 * calls node() before (done 0) and after (done 1) each node's backward. */
typedef struct cf_hook {
    void (*read)(struct cf_hook *h, int index, int n_in, cf_tensor *const *in);
    void (*node)(struct cf_hook *h, const cf_node *n, int index, int done);
} cf_hook;

/* ---- context -------------------------------------------------------------------------------
 * One per model instance (training or evaluation). Owns the arena and the tape. */
typedef struct cf_ctx {
    cf_arena  arena;
    cf_node  *tape;
    int       n_nodes, cap_nodes;
    int       grad_enabled;        /* 0: ops record nothing (evaluation, checkpointed forward) */
    int       training;            /* dropout active */
    uint64_t  seed;                /* dropout RNG: key = (seed, step, call counter, element) */
    uint64_t  step;
    uint64_t  rng_calls;           /* dropout calls so far in this step */
    /* Gradient buffers whose tensor is dead (its producer's backward has run), kept for reuse by
     * the next cf_grad of the same size: backward then holds a few layers' gradients at a time,
     * not all of them. Rewound with the arena. */
    float   **free_grad;
    int64_t  *free_numel;
    int       n_free, cap_free;
    cf_hook  *hook;                /* NULL: nothing observes the tape (cf_hook above) */
    struct cf_prof *prof;          /* NULL: no profiling (cf_prof below), and no timer is read */
    struct cf_rc   *rc;            /* selective recompute: the region being run or replayed (checkpoint.c) */
    int       bf16;                /* matmul, linear and the fused softmax attention round their
                                    * products' operands to bfloat16 and sum in fp32
                                    * (train.precision "bf16"); tensors stay fp32 */
} cf_ctx;

int  cf_ctx_init(cf_ctx *ctx, size_t arena_bytes, int max_nodes);
void cf_ctx_free(cf_ctx *ctx);
/* start a step: forget the tape, reset the arena, key dropout by `step` */
void cf_ctx_begin(cf_ctx *ctx, uint64_t step);

/* a fresh tensor (data uninitialised) from the arena; ndim 1..4, shape as varargs */
cf_tensor *cf_tensor_new(cf_ctx *ctx, int ndim, const int *shape);
cf_tensor *cf_tensor_1d(cf_ctx *ctx, int a);
cf_tensor *cf_tensor_2d(cf_ctx *ctx, int a, int b);
cf_tensor *cf_tensor_3d(cf_ctx *ctx, int a, int b, int c);
/* a tensor header that views existing memory (no copy); the caller keeps `data` alive */
cf_tensor *cf_tensor_view(cf_ctx *ctx, float *data, int ndim, const int *shape);
/* an input that needs a gradient (tests, gradient checks) */
cf_tensor *cf_tensor_leaf(cf_ctx *ctx, float *data, int ndim, const int *shape, int requires_grad);
void      *cf_scratch(cf_ctx *ctx, size_t nbytes);   /* arena bytes for an op's saved state */

/* the gradient buffer of t, zeroed on first use (from the arena or a released buffer) */
float *cf_grad(cf_ctx *ctx, cf_tensor *t);
/* cf_grad for a caller that overwrites the whole buffer: *fresh = 1 means it was allocated now
 * and holds garbage (write it, e.g. GEMM with beta 0), 0 means accumulate into it as usual */
float *cf_grad_nozero(cf_ctx *ctx, cf_tensor *t, int *fresh);
/* t is dead for backward: give its gradient buffer to the next cf_grad of the same size */
void   cf_grad_release(cf_ctx *ctx, cf_tensor *t);
/* drop released buffers at or above an arena mark (before rewinding to it) */
void   cf_grad_forget_above(cf_ctx *ctx, size_t mark);

/* Record a node when any input needs a gradient and recording is on. Sets out->requires_grad.
 * Returns the node (to fill saved/args) or NULL when nothing is recorded. */
cf_node *cf_record(cf_ctx *ctx, cf_op_kind op, cf_tensor *out, int n_in, cf_tensor **in);
/* does an op with these inputs need to record (and keep state for backward)? */
int cf_needs_grad(const cf_ctx *ctx, int n_in, cf_tensor **in);

/* Backpropagate from `out`: seed its gradient with `seed` (NULL means 1 for every element,
 * the usual case of a scalar loss), then run every node's backward in reverse order. */
void cf_backward(cf_ctx *ctx, cf_tensor *out, const float *seed);
/* run the backward of nodes [from, to) in reverse; used by cf_backward and checkpointing */
void cf_backward_range(cf_ctx *ctx, int from, int to);

/* ---- gradient checkpointing ------------------------------------------------------------------
 * fn(ctx, closure, x) is a region (usually one transformer block) whose forward is run without
 * recording; its single node keeps x and the dropout call counter. Backward re-runs fn with
 * recording on, backpropagates through the fresh nodes and rewinds the arena, so the gradients
 * are bitwise those of the uncheckpointed region. fn must be a pure function of x, the
 * parameters it closes over and the dropout stream. */
typedef cf_tensor *(*cf_region_fn)(cf_ctx *ctx, void *closure, cf_tensor *x);
cf_tensor *cf_checkpoint(cf_ctx *ctx, cf_region_fn fn, void *closure, cf_tensor *x);

/* Selective recompute (docs/architecture.md section 5): as cf_checkpoint, but the region's forward
 * also keeps the outputs of the ops whose rows say CF_RC_KEEP (attention with its log-sum-exp,
 * residual adds) where the replay needs them, and the replay computes only what backward reads:
 * kept ops hand back their kept output, and CF_RC_SKIP ops (linear) whose output nothing reads
 * leave it uncomputed. Gradients are bitwise those of cf_checkpoint. Every read of an activation
 * inside fn must go through an op (cf_record), which holds for the blocks of src/nn/. */
cf_tensor *cf_checkpoint_selective(cf_ctx *ctx, cf_region_fn fn, void *closure, cf_tensor *x);

/* For ops with CF_RC_KEEP or CF_RC_SKIP, asked at their start: what a replay wants of the op about
 * to run. CF_RC_COMPUTE outside a replay. CF_RC_KEPT: *data is the kept output, *saved the kept
 * state; the op records its node on them and computes nothing. CF_RC_SKIPPED: make the output
 * tensor, record, compute nothing. */
enum { CF_RC_COMPUTE, CF_RC_SKIPPED, CF_RC_KEPT };
int  cf_rc_action(cf_ctx *ctx, float **data, void **saved);
/* while a selective region runs forward: does it keep the state of the op about to run? (The op
 * then allocates that state before any workspace mark and passes it to cf_rc_keep_saved.) */
int  cf_rc_keeping(const cf_ctx *ctx);
/* after cf_record: the state (bytes at `saved`) the op just recorded keeps for its backward */
void cf_rc_keep_saved(cf_ctx *ctx, void *saved, size_t bytes);
/* the tape's calls: every op, recorded or not, while a selective region runs or replays; and
 * cf_ctx_free's */
void cf_rc_note(cf_ctx *ctx, cf_op_kind op, cf_tensor *out, int n_in, cf_tensor **in);
void cf_rc_free(cf_ctx *ctx);
/* ops replayed since the context was made: counts[CF_RC_COMPUTE], [CF_RC_SKIPPED], [CF_RC_KEPT] */
void cf_rc_counts(const cf_ctx *ctx, int64_t counts[3]);

/* ---- profiler (src/autograd/profile.c) ---------------------------------------------------------
 * Time, calls and FLOPs per op kind and direction. Attach one to a context (ctx->prof) and call
 * cf_prof_start when a forward pass begins: each op's forward is charged the time since the
 * previous op ended (cf_record marks the end of an op), each node's backward its own time less what
 * nested work (a checkpointed region's recompute and backward) was charged, and the forward ops a
 * checkpointed region reruns in backward go to "recompute". With ctx->prof NULL the tape reads no
 * clock: the cost is one branch per op. */
typedef enum cf_prof_dir { CF_PROF_FORWARD, CF_PROF_BACKWARD, CF_PROF_RECOMPUTE, CF_PROF_DIRS } cf_prof_dir;
extern const char *const cf_prof_dir_names[CF_PROF_DIRS];   /* "forward", "backward", "recompute" */

/* The OpenMP parallel regions the main thread started while cf_prof_par_count(1) is in force:
 * profile.c stands in for libgomp's GOMP_parallel (the call gcc makes for every `#pragma omp
 * parallel`), times each region and its threads' work, and hands the call on. An `if` clause that
 * is false, or num_threads(1), reaches GOMP_parallel as a team of 1 asked for: a "solo" region.
 * Step time outside all regions plus solo time is the serial part that more threads cannot cut. */
typedef struct cf_prof_par {
    double regions;                /* regions run by a team (of any size, 1 at OMP_NUM_THREADS=1) */
    double wall;                   /* ... the time inside them */
    double team;                   /* ... that time times the team's size: the thread time they held */
    double busy;                   /* ... the threads' time in the region's body (the rest: waiting at its end) */
    double solo_regions;           /* regions asked for one thread (an `if` that was false) */
    double solo;                   /* ... the time inside them */
} cf_prof_par;

typedef struct cf_prof_cell {
    double  sec;                   /* time charged */
    int64_t calls;
    double  flops;                 /* FLOPs of the calls whose count is known ... */
    double  flop_sec;              /* ... and their time, so GFLOP/s = flops / flop_sec / 1e9 */
    cf_prof_par par;               /* the parallel regions inside that time */
} cf_prof_cell;

typedef struct cf_prof {
    cf_prof_cell cell[CF_OP_COUNT][CF_PROF_DIRS];
    cf_prof_dir  dir;              /* what a forward op is charged to now; backward ignores ops */
    double       last;             /* when the previous forward op ended */
    double       charged;          /* all time charged so far (for exclusive backward times) */
    cf_prof_par  par_last;         /* the region counts when the previous forward op ended */
    cf_prof_par  par_charged;      /* all region counts charged so far */
    const struct cf_node *pend;    /* a recorded forward node whose FLOPs wait for its attributes */
    int          idle_op;          /* the op now ending computed nothing (a selective replay) */
    cf_prof_dir  pend_dir;
    double       pend_sec;
} cf_prof;

/* where a node's backward began: the clock, the charged time and the region counts then */
typedef struct cf_prof_mark { double t, charged; cf_prof_par par, par_charged; } cf_prof_mark;

double cf_prof_now(void);                  /* monotonic seconds */
void   cf_prof_clear(cf_prof *p);
void   cf_prof_start(cf_prof *p);          /* a forward pass starts now */
void   cf_prof_resume(cf_prof *p, cf_prof_dir dir);   /* forward ops run from now on, charged to dir */
void   cf_prof_flush(cf_prof *p);          /* settle pending counts (before reading the cells) */
/* the tape's calls: an op's forward has ended (n: its node, NULL when not recorded); a node's
 * backward begins (m is filled) and has ended */
void   cf_prof_forward(cf_prof *p, cf_op_kind op, cf_tensor *out, int n_in, cf_tensor **in, const struct cf_node *n);
void   cf_prof_begin(const cf_prof *p, cf_prof_mark *m);
void   cf_prof_backward(cf_prof *p, const struct cf_node *n, const cf_prof_mark *m);
/* parallel regions: counting on or off (off, the stand-in costs one branch per region); the
 * counts so far; a += b; a -= b */
void   cf_prof_par_count(int on);
void   cf_prof_par_read(cf_prof_par *out);
void   cf_prof_par_add(cf_prof_par *a, const cf_prof_par *b);
void   cf_prof_par_sub(cf_prof_par *a, const cf_prof_par *b);

/* ---- counter-based RNG ------------------------------------------------------------------------
 * Dropout masks and random windows are pure functions of (key, index): independent of thread
 * count and reproducible in recomputation and after resume. */
static inline uint64_t cf_mix64(uint64_t x) {       /* splitmix64 finaliser */
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}
static inline uint64_t cf_rng_key(uint64_t seed, uint64_t a, uint64_t b) {
    return cf_mix64(cf_mix64(cf_mix64(seed) ^ a) ^ b);
}
/* uniform in [0, 1) from a key and an index (24 random bits) */
static inline float cf_rng_uniform(uint64_t key, uint64_t i) {
    return (float)(cf_mix64(key ^ (i * 0xd1b54a32d192ed03ull)) >> 40) * (1.0f / 16777216.0f);
}

/* A stateful generator for set-up work (initialisation, sampling): xoshiro256** */
typedef struct cf_rng { uint64_t s[4]; } cf_rng;
void     cf_rng_seed(cf_rng *r, uint64_t seed);
uint64_t cf_rng_next(cf_rng *r);
float    cf_rng_float(cf_rng *r);                    /* [0, 1) */
float    cf_rng_normal(cf_rng *r);                   /* N(0, 1), Box-Muller */

/* threads: OpenMP's count, or 1 without OpenMP */
int  cf_num_threads(void);
void cf_set_num_threads(int n);

/* peak resident set size of the process in MB (from /proc/self/status VmHWM) */
double cf_peak_rss_mb(void);
/* CRC-32C of n bytes continuing crc (0 to start): cf_crc32c(0, "123456789", 9) == 0xe3069283 */
uint32_t cf_crc32c(uint32_t crc, const void *data, size_t n);

/* the machine's physical memory in bytes (0 when unknown) */
uint64_t cf_phys_mem_bytes(void);

/* Open a regular file for reading: a FIFO, a device or a directory is refused before anything
 * could block on it. The descriptor, or -1 with cf_error_msg() naming the file and the reason
 * ("permission denied", "not a regular file"). */
int cf_open_regular(const char *path);

#endif
