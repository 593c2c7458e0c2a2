/* Run configuration (docs/architecture.md section 8, config.h): strict JSON through cJSON.
 *
 * Every key is one row of a table {name, type, offset, size, names}; parsing, printing and the
 * unknown-key check all walk the same rows, so a new key is one line here plus its validation and
 * its row in configs/README.md. Overrides edit the parsed JSON tree before conversion, so a
 * "--set" value goes through exactly the checks a value in the file does. Parsing resolves every
 * "derived" default (d_ff, dropouts, eval.ctx/stride, sparse stride, stack sizes) so that the
 * struct, and the config.json written into a run directory, say what the run really uses. */
#include <errno.h>
#include <float.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cjson/cJSON.h>
#include "cformer/config.h"
#include "cformer/core.h"
#include "cformer/data.h"

/* enum fields are read and written as int */
_Static_assert(sizeof(cf_arch) == sizeof(int) && sizeof(cf_norm_kind) == sizeof(int) &&
               sizeof(cf_norm_pos) == sizeof(int) && sizeof(cf_act_kind) == sizeof(int) &&
               sizeof(cf_pos_kind) == sizeof(int) && sizeof(cf_attn_kind) == sizeof(int) &&
               sizeof(cf_sched_kind) == sizeof(int) && sizeof(cf_sample_kind) == sizeof(int) &&
               sizeof(cf_combine_kind) == sizeof(int) && sizeof(cf_favor_kernel) == sizeof(int) &&
               sizeof(cf_update_kind) == sizeof(int) && sizeof(cf_precision) == sizeof(int) && sizeof(cf_optim_kind) == sizeof(int) &&
               sizeof(cf_recompute_kind) == sizeof(int),
               "config enums must be int-sized");

/* ---- key tables ---------------------------------------------------------------------------------- */
typedef enum {
    K_INT,      /* int, integral JSON number */
    K_FLOAT,    /* float */
    K_BOOL,     /* int 0/1 from true/false */
    K_ENUM,     /* int from a string in names[] */
    K_STR,      /* char[size], any string */
    K_SEED,     /* uint64_t, integral number exactly representable as a double */
    K_CKPT,     /* train.grad_checkpoint: "none" = 0 | "blocks" = 1 | positive integer */
} key_type;

typedef struct {
    const char *key;
    key_type type;
    size_t off, size;
    const char *const *names;
} key_def;

#define KEY(S, f, t, names) { #f, t, offsetof(S, f), sizeof(((S *)0)->f), names }
#define NKEYS(a) ((int)(sizeof a / sizeof *a))

static const key_def model_keys[] = {
    KEY(cf_model_config, arch, K_ENUM, cf_arch_names),
    KEY(cf_model_config, vocab_size, K_INT, NULL),
    KEY(cf_model_config, d_model, K_INT, NULL),
    KEY(cf_model_config, n_layers, K_INT, NULL),
    KEY(cf_model_config, n_heads, K_INT, NULL),
    KEY(cf_model_config, d_ff, K_INT, NULL),
    KEY(cf_model_config, norm, K_ENUM, cf_norm_names),
    KEY(cf_model_config, norm_position, K_ENUM, cf_norm_pos_names),
    KEY(cf_model_config, activation, K_ENUM, cf_act_names),
    KEY(cf_model_config, glu, K_BOOL, NULL),
    KEY(cf_model_config, position, K_ENUM, cf_pos_names),
    KEY(cf_model_config, rope_theta, K_FLOAT, NULL),
    KEY(cf_model_config, rope_fraction, K_FLOAT, NULL),
    KEY(cf_model_config, n_kv_heads, K_INT, NULL),
    KEY(cf_model_config, qk_norm, K_BOOL, NULL),
    KEY(cf_model_config, max_seq_len, K_INT, NULL),
    KEY(cf_model_config, dropout, K_FLOAT, NULL),
    KEY(cf_model_config, attn_dropout, K_FLOAT, NULL),
    KEY(cf_model_config, emb_dropout, K_FLOAT, NULL),
    KEY(cf_model_config, tie_embeddings, K_BOOL, NULL),
    KEY(cf_model_config, bias, K_BOOL, NULL),
    KEY(cf_model_config, norm_eps, K_FLOAT, NULL),
    KEY(cf_model_config, init_std, K_FLOAT, NULL),
    KEY(cf_model_config, label_smoothing, K_FLOAT, NULL),
    /* "attention", "encoder" and "decoder" are objects: see model_special() */
};

static const key_def attn_keys[] = {
    KEY(cf_attn_config, type, K_ENUM, cf_attn_kind_names),
    KEY(cf_attn_config, window, K_INT, NULL),
    KEY(cf_attn_config, stride, K_INT, NULL),
    KEY(cf_attn_config, c, K_INT, NULL),
    KEY(cf_attn_config, combine, K_ENUM, cf_combine_names),
    KEY(cf_attn_config, features, K_INT, NULL),
    KEY(cf_attn_config, kernel, K_ENUM, cf_favor_kernel_names),
    KEY(cf_attn_config, redraw_every, K_INT, NULL),
    KEY(cf_attn_config, mem_len, K_INT, NULL),
    KEY(cf_attn_config, clamp_len, K_INT, NULL),
    KEY(cf_attn_config, segment_len, K_INT, NULL),
    KEY(cf_attn_config, update, K_ENUM, cf_update_names),
};

/* model.encoder / model.decoder */
typedef struct { int n_layers; } stack_config;
static const key_def stack_keys[] = {
    KEY(stack_config, n_layers, K_INT, NULL),
};

static const key_def train_keys[] = {
    KEY(cf_train_config, batch_size, K_INT, NULL),
    KEY(cf_train_config, seq_len, K_INT, NULL),
    KEY(cf_train_config, steps, K_INT, NULL),
    KEY(cf_train_config, lr, K_FLOAT, NULL),
    KEY(cf_train_config, warmup_steps, K_INT, NULL),
    KEY(cf_train_config, schedule, K_ENUM, cf_sched_names),
    KEY(cf_train_config, min_lr, K_FLOAT, NULL),
    KEY(cf_train_config, optimizer, K_ENUM, cf_optim_names),
    KEY(cf_train_config, weight_decay, K_FLOAT, NULL),
    KEY(cf_train_config, beta1, K_FLOAT, NULL),
    KEY(cf_train_config, beta2, K_FLOAT, NULL),
    KEY(cf_train_config, eps, K_FLOAT, NULL),
    KEY(cf_train_config, grad_clip, K_FLOAT, NULL),
    KEY(cf_train_config, grad_accum, K_INT, NULL),
    KEY(cf_train_config, seed, K_SEED, NULL),
    KEY(cf_train_config, grad_checkpoint, K_CKPT, NULL),
    KEY(cf_train_config, recompute, K_ENUM, cf_recompute_names),
    KEY(cf_train_config, log_every, K_INT, NULL),
    KEY(cf_train_config, eval_every, K_INT, NULL),
    KEY(cf_train_config, eval_tokens, K_INT, NULL),
    KEY(cf_train_config, checkpoint_every, K_INT, NULL),
    KEY(cf_train_config, keep_checkpoints, K_INT, NULL),
    KEY(cf_train_config, sampling, K_ENUM, cf_sample_names),
    KEY(cf_train_config, threads, K_INT, NULL),
    KEY(cf_train_config, precision, K_ENUM, cf_precision_names),
    KEY(cf_train_config, bucket_pool, K_INT, NULL),
};

static const key_def data_keys[] = {
    KEY(cf_data_config, train, K_STR, NULL),
    KEY(cf_data_config, valid, K_STR, NULL),
    KEY(cf_data_config, test, K_STR, NULL),
};

static const key_def eval_keys[] = {
    KEY(cf_eval_config, ctx, K_INT, NULL),
    KEY(cf_eval_config, stride, K_INT, NULL),
    KEY(cf_eval_config, bytes, K_INT, NULL),
};

/* Zero-padded copy: structs are compared bytewise (round-trip test), so no stale bytes after NUL. */
static void set_str(char *dst, size_t size, const char *src) {
    memset(dst, 0, size);
    strncpy(dst, src, size - 1);
}

/* ---- JSON -> struct ------------------------------------------------------------------------------ */
static const char *json_type(const cJSON *v) {
    if (cJSON_IsString(v)) return "string";
    if (cJSON_IsNumber(v)) return "number";
    if (cJSON_IsBool(v)) return "boolean";
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsArray(v)) return "list";
    if (cJSON_IsObject(v)) return "object";
    return "invalid value";
}

static int name_index(const char *const *names, const char *s) {
    for (int i = 0; names[i]; i++)
        if (strcmp(names[i], s) == 0) return i;
    return -1;
}

static int bad_choice(const char *path, const char *const *names, const cJSON *v) {
    char list[256] = "";
    for (int i = 0; names[i]; i++) {
        size_t l = strlen(list);
        snprintf(list + l, sizeof list - l, "%s%s", i ? ", " : "", names[i]);
    }
    if (cJSON_IsString(v)) return cf_set_error("%s: expected one of %s, got \"%s\"", path, list, v->valuestring);
    return cf_set_error("%s: expected one of %s, got %s", path, list, json_type(v));
}

static int get_integer(const char *path, const cJSON *v, double lo, double hi, double *out) {
    if (!cJSON_IsNumber(v)) return cf_set_error("%s: expected an integer, got %s", path, json_type(v));
    double d = v->valuedouble;
    if (d != floor(d)) return cf_set_error("%s: expected an integer, got %g", path, d);
    if (d < lo || d > hi) return cf_set_error("%s: %.0f is out of range (%.0f..%.0f)", path, d, lo, hi);
    *out = d;
    return 0;
}

static int set_value(const key_def *k, const cJSON *v, const char *path, char *base) {
    void *dst = base + k->off;
    double d = 0;
    int i;
    switch (k->type) {
    case K_INT:
        if (get_integer(path, v, INT_MIN, INT_MAX, &d)) return -1;
        i = (int)d;
        memcpy(dst, &i, sizeof i);
        return 0;
    case K_FLOAT: {
        if (!cJSON_IsNumber(v)) return cf_set_error("%s: expected a number, got %s", path, json_type(v));
        if (!isfinite(v->valuedouble) || fabs(v->valuedouble) > FLT_MAX)
            return cf_set_error("%s: %g is out of range for a float", path, v->valuedouble);
        float f = (float)v->valuedouble;
        memcpy(dst, &f, sizeof f);
        return 0;
    }
    case K_BOOL:
        if (!cJSON_IsBool(v)) return cf_set_error("%s: expected true or false, got %s", path, json_type(v));
        i = cJSON_IsTrue(v) ? 1 : 0;
        memcpy(dst, &i, sizeof i);
        return 0;
    case K_ENUM:
        if (!cJSON_IsString(v) || (i = name_index(k->names, v->valuestring)) < 0)
            return bad_choice(path, k->names, v);
        memcpy(dst, &i, sizeof i);
        return 0;
    case K_STR:
        if (!cJSON_IsString(v)) return cf_set_error("%s: expected a string, got %s", path, json_type(v));
        if (strlen(v->valuestring) >= k->size)
            return cf_set_error("%s: longer than %zu bytes", path, k->size - 1);
        set_str(dst, k->size, v->valuestring);
        return 0;
    case K_SEED: {
        /* below 2^53 every integer is exact in a double: a larger literal may have been rounded */
        if (get_integer(path, v, 0, 9007199254740991.0, &d)) return -1;
        uint64_t u = (uint64_t)d;
        memcpy(dst, &u, sizeof u);
        return 0;
    }
    case K_CKPT:
        if (cJSON_IsString(v) && strcmp(v->valuestring, "none") == 0) i = 0;
        else if (cJSON_IsString(v) && strcmp(v->valuestring, "blocks") == 0) i = 1;
        else if (cJSON_IsNumber(v) && v->valuedouble == floor(v->valuedouble) && v->valuedouble >= 1 &&
                 v->valuedouble <= INT_MAX) i = (int)v->valuedouble;
        else if (cJSON_IsString(v))
            return cf_set_error("%s: expected \"none\", \"blocks\" or a positive integer, got \"%s\"", path,
                                v->valuestring);
        else if (cJSON_IsNumber(v))
            return cf_set_error("%s: expected \"none\", \"blocks\" or a positive integer, got %g", path,
                                v->valuedouble);
        else
            return cf_set_error("%s: expected \"none\", \"blocks\" or a positive integer, got %s", path,
                                json_type(v));
        memcpy(dst, &i, sizeof i);
        return 0;
    }
    CF_ASSERT(0, "config: key type %d", (int)k->type);
}

static void join_path(char *out, size_t size, const char *parent, const char *key) {
    if (parent[0]) snprintf(out, size, "%s.%s", parent, key);
    else snprintf(out, size, "%s", key);
}

/* Keys that are not plain table rows: return 1 when handled, 0 when unknown, -1 on error. */
typedef int (*special_fn)(const cJSON *item, const char *path, void *arg);

/* Convert the members of obj into base through a key table. Unknown and duplicate keys are errors. */
static int parse_object(const cJSON *obj, const char *path, const key_def *keys, int n_keys, void *base,
                        special_fn special, void *arg) {
    if (!cJSON_IsObject(obj)) return cf_set_error("%s: expected an object, got %s", path, json_type(obj));
    for (const cJSON *it = obj->child; it; it = it->next) {
        char p[512];
        join_path(p, sizeof p, path, it->string);
        for (const cJSON *prev = obj->child; prev != it; prev = prev->next)
            if (strcmp(prev->string, it->string) == 0) return cf_set_error("%s: duplicate key", p);
        int done = 0;
        for (int k = 0; k < n_keys && !done; k++)
            if (strcmp(keys[k].key, it->string) == 0) {
                if (set_value(&keys[k], it, p, base)) return -1;
                done = 1;
            }
        if (!done && special) {
            int r = special(it, p, arg);
            if (r < 0) return -1;
            done = r;
        }
        if (!done) return cf_set_error("%s: unknown key", p);
    }
    return 0;
}

typedef struct {
    cf_config *c;
    int attn_is_list;
    int enc_given, dec_given;
    stack_config enc, dec;
} parse_state;

static int model_special(const cJSON *it, const char *path, void *arg) {
    parse_state *st = arg;
    cf_model_config *m = &st->c->model;
    if (strcmp(it->string, "attention") == 0) {
        if (cJSON_IsObject(it)) {
            st->attn_is_list = 0;
            m->n_attn = 1;
            cf_attn_config_defaults(&m->attn[0]);
            return parse_object(it, path, attn_keys, NKEYS(attn_keys), &m->attn[0], NULL, NULL) ? -1 : 1;
        }
        if (!cJSON_IsArray(it))
            return cf_set_error("%s: expected an object or a list of objects, got %s", path, json_type(it));
        int n = cJSON_GetArraySize(it);
        if (n == 0) return cf_set_error("%s: expected an object or a non-empty list of objects", path);
        if (n > CF_MAX_LAYER_ATTN)
            return cf_set_error("%s: %d entries, at most %d", path, n, CF_MAX_LAYER_ATTN);
        st->attn_is_list = 1;
        m->n_attn = n;
        int i = 0;
        for (const cJSON *e = it->child; e; e = e->next, i++) {
            char p[512];
            snprintf(p, sizeof p, "%s[%d]", path, i);
            cf_attn_config_defaults(&m->attn[i]);
            if (parse_object(e, p, attn_keys, NKEYS(attn_keys), &m->attn[i], NULL, NULL)) return -1;
        }
        return 1;
    }
    int enc = strcmp(it->string, "encoder") == 0;
    if (enc || strcmp(it->string, "decoder") == 0) {
        stack_config *s = enc ? &st->enc : &st->dec;
        *(enc ? &st->enc_given : &st->dec_given) = 1;
        return parse_object(it, path, stack_keys, NKEYS(stack_keys), s, NULL, NULL) ? -1 : 1;
    }
    return 0;
}

static int top_special(const cJSON *it, const char *path, void *arg) {
    parse_state *st = arg;
    cf_config *c = st->c;
    const char *k = it->string;
    if (strcmp(k, "model") == 0)
        return parse_object(it, path, model_keys, NKEYS(model_keys), &c->model, model_special, st) ? -1 : 1;
    if (strcmp(k, "train") == 0)
        return parse_object(it, path, train_keys, NKEYS(train_keys), &c->train, NULL, NULL) ? -1 : 1;
    if (strcmp(k, "data") == 0)
        return parse_object(it, path, data_keys, NKEYS(data_keys), &c->data, NULL, NULL) ? -1 : 1;
    if (strcmp(k, "eval") == 0)
        return parse_object(it, path, eval_keys, NKEYS(eval_keys), &c->eval, NULL, NULL) ? -1 : 1;
    if (strcmp(k, "comment") == 0) {
        if (!cJSON_IsString(it)) return cf_set_error("%s: expected a string, got %s", path, json_type(it));
        return 1;
    }
    return 0;
}

/* ---- overrides ----------------------------------------------------------------------------------- */
/* One segment of "a.b[2].c": a name and an optional list index (-1 when none). */
static int split_segment(const char *ov, const char *seg, size_t len, char *name, size_t name_size, int *index) {
    *index = -1;
    const char *br = memchr(seg, '[', len);
    size_t nlen = br ? (size_t)(br - seg) : len;
    if (nlen == 0) return cf_set_error("override \"%s\": empty key in the path", ov);
    if (nlen >= name_size) return cf_set_error("override \"%s\": key too long", ov);
    memcpy(name, seg, nlen);
    name[nlen] = 0;
    if (br) {
        char *end;
        errno = 0;
        long v = strtol(br + 1, &end, 10);
        if (end == br + 1 || *end != ']' || end + 1 != seg + len || v < 0 || v > INT_MAX || errno)
            return cf_set_error("override \"%s\": bad list index in \"%.*s\"", ov, (int)len, seg);
        *index = (int)v;
    }
    return 0;
}

/* The offset of a \u0000 escape inside a JSON string of text, or -1: cJSON's strings end at their
 * first NUL, so a path "a\u0000b" would silently become "a". */
static long nul_escape(const char *text) {
    int in_string = 0;
    for (const char *p = text; *p; p++) {
        if (!in_string) { in_string = *p == '"'; continue; }
        if (*p == '"') in_string = 0;
        else if (*p == '\\' && p[1]) {
            if (p[1] == 'u' && !strncmp(p + 2, "0000", 4)) return p - text;
            p++;   /* the escaped character, which may be a quote */
        }
    }
    return -1;
}

static int apply_override(cJSON *root, const char *ov) {
    const char *eq = strchr(ov, '=');
    if (!eq || eq == ov) return cf_set_error("override \"%s\": expected key.path=value", ov);
    const char *val = eq + 1;
    if (nul_escape(val) >= 0) return cf_set_error("override \"%s\": \\u0000 (a NUL byte) cannot be part of a value", ov);
    cJSON *v = cJSON_ParseWithOpts(val, NULL, 1);
    if (!v) v = cJSON_CreateString(val);   /* a bare string: --set data.train=x.bin */
    CF_ASSERT(v, "out of memory in cJSON");

    cJSON *cur = root;
    char path[512] = "";
    const char *seg = ov;
    for (;;) {
        const char *dot = memchr(seg, '.', (size_t)(eq - seg));
        size_t len = dot ? (size_t)(dot - seg) : (size_t)(eq - seg);
        char name[128];
        int index;
        if (split_segment(ov, seg, len, name, sizeof name, &index)) goto fail;
        char p[512];
        join_path(p, sizeof p, path, name);
        cJSON *child = cJSON_GetObjectItemCaseSensitive(cur, name);
        if (!dot && index < 0) {   /* the leaf */
            if (child) cJSON_ReplaceItemInObjectCaseSensitive(cur, name, v);
            else cJSON_AddItemToObject(cur, name, v);
            return 0;
        }
        if (!child && index >= 0) {
            cf_set_error("override \"%s\": %s is not set, so it has no entry %d", ov, p, index);
            goto fail;
        }
        if (!child) {
            child = cJSON_CreateObject();
            CF_ASSERT(child, "out of memory in cJSON");
            cJSON_AddItemToObject(cur, name, child);
        }
        if (index >= 0) {
            if (!cJSON_IsArray(child)) {
                cf_set_error("override \"%s\": %s is not a list", ov, p);
                goto fail;
            }
            int n = cJSON_GetArraySize(child);
            if (index >= n) {
                cf_set_error("override \"%s\": %s has %d entries", ov, p, n);
                goto fail;
            }
            size_t l = strlen(p);
            snprintf(p + l, sizeof p - l, "[%d]", index);
            if (!dot) {
                cJSON_ReplaceItemInArray(child, index, v);
                return 0;
            }
            child = cJSON_GetArrayItem(child, index);
        }
        if (cJSON_IsArray(child)) {
            cf_set_error("override \"%s\": %s is a list; name an entry, as in %s[0]", ov, p, p);
            goto fail;
        }
        if (!cJSON_IsObject(child)) {
            cf_set_error("override \"%s\": %s is a %s, not an object", ov, p, json_type(child));
            goto fail;
        }
        cur = child;
        snprintf(path, sizeof path, "%s", p);
        seg = dot + 1;
    }
fail:
    cJSON_Delete(v);
    return -1;
}

/* ---- validation and resolution of derived defaults ----------------------------------------------- */
static int check_int(const char *path, int v, int lo, int hi) {
    if (v >= lo && v <= hi) return 0;
    if (v < lo && lo == 1) return cf_set_error("%s: must be positive (got %d)", path, v);
    if (v < lo && lo == 0) return cf_set_error("%s: must not be negative (got %d)", path, v);
    if (v < lo || hi == INT_MAX) return cf_set_error("%s: must be at least %d (got %d)", path, lo, v);
    return cf_set_error("%s: must be in %d..%d (got %d)", path, lo, hi, v);
}

/* lo <= v (or lo < v when lo_open), v < hi (or v <= hi when hi_closed) */
static int check_float(const char *path, float v, float lo, int lo_open, float hi, int hi_closed) {
    int ok = (lo_open ? v > lo : v >= lo) && (hi_closed ? v <= hi : v < hi);
    if (ok) return 0;
    if (hi == INFINITY) return cf_set_error("%s: must be %s %g (got %g)", path, lo_open ? ">" : ">=", lo, v);
    return cf_set_error("%s: must be in %c%g, %g%c (got %g)", path, lo_open ? '(' : '[', lo, hi,
                        hi_closed ? ']' : ')', v);
}

#define TRY(x) do { if (x) return -1; } while (0)
#define MAX_SIZE (1 << 20)   /* far beyond any model here; keeps 4 * d_model and friends in int */

static int check_attn(cf_attn_config *a, const char *path, int seq_len) {
    char p[512];
#define P(key) (snprintf(p, sizeof p, "%s.%s", path, key), p)
    TRY(check_int(P("window"), a->window, 1, INT_MAX));
    TRY(check_int(P("stride"), a->stride, 0, MAX_SIZE));
    if (a->stride == 0) a->stride = (int)lround(sqrt((double)seq_len));
    TRY(check_int(P("c"), a->c, 1, INT_MAX));
    if (a->type == CF_ATTN_SPARSE_FIXED && a->c > a->stride)
        return cf_set_error("%s: must not exceed the stride (%d > %d)", P("c"), a->c, a->stride);
    TRY(check_int(P("features"), a->features, 1, MAX_SIZE));
    TRY(check_int(P("redraw_every"), a->redraw_every, 1, INT_MAX));
    TRY(check_int(P("mem_len"), a->mem_len, 0, MAX_SIZE));
    TRY(check_int(P("clamp_len"), a->clamp_len, -1, INT_MAX));
    TRY(check_int(P("segment_len"), a->segment_len, 1, MAX_SIZE));
#undef P
    return 0;
}

static int validate(parse_state *st) {
    cf_config *c = st->c;
    cf_model_config *m = &c->model;
    cf_train_config *t = &c->train;

    TRY(check_int("model.vocab_size", m->vocab_size, 1, 65536));
    TRY(check_int("model.d_model", m->d_model, 1, MAX_SIZE));
    TRY(check_int("model.n_layers", m->n_layers, 1, MAX_SIZE));
    TRY(check_int("model.n_heads", m->n_heads, 1, MAX_SIZE));
    if (m->d_model % m->n_heads)
        return cf_set_error("model.n_heads: must divide model.d_model (%d %% %d != 0)", m->d_model, m->n_heads);
    TRY(check_int("model.n_kv_heads", m->n_kv_heads, 0, m->n_heads));
    if (m->n_kv_heads == 0) m->n_kv_heads = m->n_heads;
    if (m->n_heads % m->n_kv_heads)
        return cf_set_error("model.n_kv_heads: must divide model.n_heads (%d %% %d != 0)", m->n_heads, m->n_kv_heads);
    TRY(check_float("model.rope_theta", m->rope_theta, 0, 1, INFINITY, 0));
    TRY(check_float("model.rope_fraction", m->rope_fraction, 0, 1, 1, 1));
    if (m->position == CF_POS_ROPE && cf_rope_dims(m) < 2)
        return cf_set_error("model.rope_fraction: %g of a head's %d dimensions rotates no pair of them",
                            m->rope_fraction, m->d_model / m->n_heads);
    /* the default 4 * d_model may exceed MAX_SIZE, and the resolved config states it: it must read back */
    TRY(check_int("model.d_ff", m->d_ff, 0, 4 * MAX_SIZE));
    if (m->d_ff == 0) m->d_ff = 4 * m->d_model;
    TRY(check_int("model.max_seq_len", m->max_seq_len, 1, MAX_SIZE));
    TRY(check_float("model.dropout", m->dropout, 0, 0, 1, 0));
    if (m->attn_dropout != -1.0f) TRY(check_float("model.attn_dropout", m->attn_dropout, 0, 0, 1, 0));
    else m->attn_dropout = m->dropout;
    if (m->emb_dropout != -1.0f) TRY(check_float("model.emb_dropout", m->emb_dropout, 0, 0, 1, 0));
    else m->emb_dropout = m->dropout;
    TRY(check_float("model.norm_eps", m->norm_eps, 0, 1, INFINITY, 0));
    TRY(check_float("model.init_std", m->init_std, 0, 1, INFINITY, 0));
    TRY(check_float("model.label_smoothing", m->label_smoothing, 0, 0, 1, 0));

    if (m->arch == CF_ARCH_DECODER) {
        if (st->enc_given || st->dec_given)
            return cf_set_error("model.%s: only for model.arch \"encoder_decoder\"",
                                st->enc_given ? "encoder" : "decoder");
        m->enc_layers = 0;
        m->dec_layers = m->n_layers;
    } else {
        m->enc_layers = st->enc_given ? st->enc.n_layers : m->n_layers;
        m->dec_layers = st->dec_given ? st->dec.n_layers : m->n_layers;
        TRY(check_int("model.encoder.n_layers", m->enc_layers, 1, MAX_SIZE));
        TRY(check_int("model.decoder.n_layers", m->dec_layers, 1, MAX_SIZE));
    }
    int layers = m->enc_layers > m->dec_layers ? m->enc_layers : m->dec_layers;
    if (m->n_attn > layers)
        return cf_set_error("model.attention: %d entries for %d layers", m->n_attn, layers);

    TRY(check_int("train.batch_size", t->batch_size, 1, MAX_SIZE));
    TRY(check_int("train.seq_len", t->seq_len, 1, MAX_SIZE));
    /* a position table caps the context; rope and alibi have none and run at any length */
    int positions = m->position == CF_POS_LEARNED || m->position == CF_POS_SINUSOIDAL;
    if (positions && t->seq_len > m->max_seq_len)
        return cf_set_error("train.seq_len: must not exceed model.max_seq_len with %s positions (%d > %d)",
                            cf_pos_names[m->position], t->seq_len, m->max_seq_len);
    for (int i = 0; i < m->n_attn; i++) {
        char p[64];
        if (st->attn_is_list) snprintf(p, sizeof p, "model.attention[%d]", i);
        else snprintf(p, sizeof p, "model.attention");
        TRY(check_attn(&m->attn[i], p, t->seq_len));
    }
    TRY(check_int("train.steps", t->steps, 1, INT_MAX));
    TRY(check_float("train.lr", t->lr, 0, 1, INFINITY, 0));
    TRY(check_int("train.warmup_steps", t->warmup_steps, 0, INT_MAX));
    TRY(check_float("train.min_lr", t->min_lr, 0, 0, INFINITY, 0));
    if (t->min_lr > t->lr)
        return cf_set_error("train.min_lr: must not exceed train.lr (%g > %g)", t->min_lr, t->lr);
    TRY(check_float("train.weight_decay", t->weight_decay, 0, 0, INFINITY, 0));
    TRY(check_float("train.beta1", t->beta1, 0, 0, 1, 0));
    TRY(check_float("train.beta2", t->beta2, 0, 0, 1, 0));
    TRY(check_float("train.eps", t->eps, 0, 1, INFINITY, 0));
    TRY(check_float("train.grad_clip", t->grad_clip, 0, 0, INFINITY, 0));
    TRY(check_int("train.grad_accum", t->grad_accum, 1, MAX_SIZE));
    TRY(check_int("train.log_every", t->log_every, 1, INT_MAX));
    TRY(check_int("train.eval_every", t->eval_every, 0, INT_MAX));
    TRY(check_int("train.eval_tokens", t->eval_tokens, 0, INT_MAX));
    TRY(check_int("eval.bytes", c->eval.bytes, 0, INT_MAX));
    TRY(check_int("train.checkpoint_every", t->checkpoint_every, 0, INT_MAX));
    TRY(check_int("train.keep_checkpoints", t->keep_checkpoints, 1, INT_MAX));
    TRY(check_int("train.threads", t->threads, 0, CF_MAX_THREADS));
    TRY(check_int("train.bucket_pool", t->bucket_pool, 1, 4096));

    TRY(check_int("eval.ctx", c->eval.ctx, 0, MAX_SIZE));
    if (c->eval.ctx == 0) c->eval.ctx = t->seq_len;
    if (positions && c->eval.ctx > m->max_seq_len)
        return cf_set_error("eval.ctx: must not exceed model.max_seq_len with %s positions (%d > %d)",
                            cf_pos_names[m->position], c->eval.ctx, m->max_seq_len);
    TRY(check_int("eval.stride", c->eval.stride, 0, MAX_SIZE));
    if (c->eval.stride == 0) c->eval.stride = c->eval.ctx > 1 ? c->eval.ctx / 2 : 1;
    if (c->eval.stride > c->eval.ctx)
        return cf_set_error("eval.stride: must not exceed eval.ctx (%d > %d)", c->eval.stride, c->eval.ctx);
    return 0;
}

static int check_data_files(const cf_data_config *d) {
    if (!d->train[0]) return cf_set_error("data.train: required (the training bytes)");
    const char *keys[3] = {"data.train", "data.valid", "data.test"};
    const char *paths[3] = {d->train, d->valid, d->test};
    for (int i = 0; i < 3; i++) {
        if (!paths[i][0]) continue;
        cf_bytes b;
        if (cf_bytes_open(&b, paths[i])) {
            char msg[1024];
            snprintf(msg, sizeof msg, "%s", cf_error_msg());
            return cf_set_error("%s: %s", keys[i], msg);
        }
        cf_bytes_close(&b);
    }
    return 0;
}

/* ---- entry points -------------------------------------------------------------------------------- */
static int parse_source(cf_config *c, const char *text, const char *source, const char *const *overrides,
                        int n_overrides, int check_files) {
    cf_config_defaults(c);
    long nul = nul_escape(text);
    if (nul >= 0) {
        int line = 1, col = 1;
        for (long i = 0; i < nul; i++) {
            if (text[i] == '\n') line++, col = 1;
            else col++;
        }
        return cf_set_error("%s%s\\u0000 (a NUL byte) at line %d, column %d cannot be part of a value",
                            source ? source : "", source ? ": " : "", line, col);
    }
    const char *err = NULL;
    cJSON *root = cJSON_ParseWithOpts(text, &err, 1);
    if (!root) {
        int line = 1, col = 1;
        for (const char *p = text; err && p < err && *p; p++) {
            if (*p == '\n') line++, col = 1;
            else col++;
        }
        return cf_set_error("%s%sinvalid JSON at line %d, column %d", source ? source : "", source ? ": " : "",
                            line, col);
    }
    int rc = -1;
    parse_state st = {.c = c};
    if (!cJSON_IsObject(root)) {
        cf_set_error("%s%sexpected a JSON object at the top level, got %s", source ? source : "",
                     source ? ": " : "", json_type(root));
        goto done;
    }
    for (int i = 0; i < n_overrides; i++)
        if (apply_override(root, overrides[i])) goto done;
    if (parse_object(root, "", NULL, 0, c, top_special, &st)) goto done;
    if (validate(&st)) goto done;
    if (check_files && check_data_files(&c->data)) goto done;
    rc = 0;
done:
    cJSON_Delete(root);
    return rc;
}

int cf_config_parse(cf_config *c, const char *json_text, const char *const *overrides, int n_overrides,
                    int check_files) {
    return parse_source(c, json_text, NULL, overrides, n_overrides, check_files);
}

int cf_config_load(cf_config *c, const char *path, const char *const *overrides, int n_overrides,
                   int check_files) {
    int fd = cf_open_regular(path);
    FILE *f = fd < 0 ? NULL : fdopen(fd, "rb");
    if (fd >= 0 && !f) close(fd);
    if (!f) return fd < 0 ? -1 : cf_set_error("cannot open \"%s\": %s", path, strerror(errno));
    size_t cap = 4096, n = 0;
    char *text = cf_xmalloc(cap);
    for (;;) {
        if (n + 1 == cap) {
            if (cap >= (64u << 20)) {
                fclose(f);
                free(text);
                return cf_set_error("\"%s\": larger than 64 MB, not a config", path);
            }
            cap *= 2;
            char *t = realloc(text, cap);
            CF_ASSERT(t, "out of memory reading %s", path);
            text = t;
        }
        size_t got = fread(text + n, 1, cap - 1 - n, f);
        n += got;
        if (got == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(text);
        return cf_set_error("cannot read \"%s\"", path);
    }
    text[n] = 0;
    if (strlen(text) != n) {
        free(text);
        return cf_set_error("\"%s\": contains a NUL byte, not a JSON config", path);
    }
    int rc = parse_source(c, text, path, overrides, n_overrides, check_files);
    free(text);
    if (rc) return rc;
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    const char *ext = strrchr(base, '.');
    size_t len = ext && ext != base ? (size_t)(ext - base) : strlen(base);
    if (len >= sizeof c->name) len = sizeof c->name - 1;
    memset(c->name, 0, sizeof c->name);
    memcpy(c->name, base, len);
    return 0;
}

/* ---- struct -> JSON ------------------------------------------------------------------------------ */
/* The shortest decimal that reads back as the same float: readable ("0.0003", not 0.000300000014...)
 * and exact, so that printing and parsing again gives an identical struct. */
static void format_float(char *buf, size_t size, float f) {
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(buf, size, "%.*g", prec, (double)f);
        if (strtof(buf, NULL) == f) return;
    }
}

static int name_count(const char *const *names) {
    int n = 0;
    while (names[n]) n++;
    return n;
}

static void emit_object(cJSON *obj, const key_def *keys, int n_keys, const void *base) {
    const char *b = base;
    for (int k = 0; k < n_keys; k++) {
        const key_def *d = &keys[k];
        const void *src = b + d->off;
        int i;
        float f;
        uint64_t u;
        char buf[32];
        cJSON *r = NULL;
        switch (d->type) {
        case K_INT:
            memcpy(&i, src, sizeof i);
            r = cJSON_AddNumberToObject(obj, d->key, i);
            break;
        case K_FLOAT:
            memcpy(&f, src, sizeof f);
            format_float(buf, sizeof buf, f);
            r = cJSON_AddRawToObject(obj, d->key, buf);
            break;
        case K_BOOL:
            memcpy(&i, src, sizeof i);
            r = cJSON_AddBoolToObject(obj, d->key, i);
            break;
        case K_ENUM:
            memcpy(&i, src, sizeof i);
            CF_ASSERT(i >= 0 && i < name_count(d->names), "config: %s = %d is not a valid value", d->key, i);
            r = cJSON_AddStringToObject(obj, d->key, d->names[i]);
            break;
        case K_STR:
            r = cJSON_AddStringToObject(obj, d->key, (const char *)src);
            break;
        case K_SEED:
            memcpy(&u, src, sizeof u);
            snprintf(buf, sizeof buf, "%" PRIu64, u);
            r = cJSON_AddRawToObject(obj, d->key, buf);
            break;
        case K_CKPT:
            memcpy(&i, src, sizeof i);
            if (i <= 1) r = cJSON_AddStringToObject(obj, d->key, i == 0 ? "none" : "blocks");
            else r = cJSON_AddNumberToObject(obj, d->key, i);
            break;
        }
        CF_ASSERT(r, "out of memory in cJSON");
    }
}

static cJSON *add_object(cJSON *parent, const char *key) {
    cJSON *o = cJSON_AddObjectToObject(parent, key);
    CF_ASSERT(o, "out of memory in cJSON");
    return o;
}

/* cJSON indents with tabs and puts a tab after ':'; two spaces and one space read better. */
static char *retab(char *s) {
    size_t tabs = 0, n = 0;
    for (; s[n]; n++) tabs += s[n] == '\t';
    char *out = cf_xmalloc(n + tabs + 1), *o = out;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '\t') *o++ = s[i];
        else if (i > 0 && s[i - 1] == ':') *o++ = ' ';
        else *o++ = ' ', *o++ = ' ';
    }
    *o = 0;
    free(s);
    return out;
}

char *cf_config_to_json(const cf_config *c) {
    cJSON *root = cJSON_CreateObject();
    CF_ASSERT(root, "out of memory in cJSON");
    const cf_model_config *m = &c->model;
    cJSON *model = add_object(root, "model");
    emit_object(model, model_keys, NKEYS(model_keys), m);
    if (m->n_attn == 1) {
        emit_object(add_object(model, "attention"), attn_keys, NKEYS(attn_keys), &m->attn[0]);
    } else {
        cJSON *list = cJSON_AddArrayToObject(model, "attention");
        CF_ASSERT(list, "out of memory in cJSON");
        for (int i = 0; i < m->n_attn; i++) {
            cJSON *o = cJSON_CreateObject();
            CF_ASSERT(o, "out of memory in cJSON");
            emit_object(o, attn_keys, NKEYS(attn_keys), &m->attn[i]);
            cJSON_AddItemToArray(list, o);
        }
    }
    if (m->arch == CF_ARCH_ENCODER_DECODER) {
        stack_config enc = {m->enc_layers}, dec = {m->dec_layers};
        emit_object(add_object(model, "encoder"), stack_keys, NKEYS(stack_keys), &enc);
        emit_object(add_object(model, "decoder"), stack_keys, NKEYS(stack_keys), &dec);
    }
    emit_object(add_object(root, "train"), train_keys, NKEYS(train_keys), &c->train);
    emit_object(add_object(root, "data"), data_keys, NKEYS(data_keys), &c->data);
    emit_object(add_object(root, "eval"), eval_keys, NKEYS(eval_keys), &c->eval);
    char *s = cJSON_Print(root);
    cJSON_Delete(root);
    CF_ASSERT(s, "out of memory printing the config");
    return retab(s);
}
