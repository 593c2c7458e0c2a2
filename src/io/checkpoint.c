/* HDF5 checkpoints (checkpoint.h, docs/architecture.md section 9).
 *
 * Saving never exposes a partial file under a checkpoint's name: HDF5 builds the file in memory,
 * its checksums go into the header (integrity.c), and the bytes are written under a dot-prefixed
 * temporary name in the target's directory (rename is atomic only within one file system),
 * fsync'ed, renamed, and the directory is fsync'ed so the rename itself survives a power cut
 * (run_files.c). Loading verifies the checksums first, then checks every name, shape, type and
 * value before the caller uses anything, and never opens the file for writing. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cjson/cJSON.h>
#include "cformer/checkpoint.h"
#include "cformer/attention.h"
#include "cformer/h5io.h"
#include "run_files.h"

void cf_train_state_init(cf_train_state *s, const cf_config *c) {
    memset(s, 0, sizeof *s);
    s->seed = c->train.seed;
    s->sampling = c->train.sampling;
    s->batch_size = c->train.batch_size;
    s->seq_len = c->train.seq_len;
    s->best_valid_bpb = INFINITY;
}




/* ---- fault injection (tests) ---------------------------------------------------------------------- */
static long n_writes;   /* datasets and attributes written by the current save */


/* called before each write: CF_CKPT_FAIL_WRITE makes its write fail the way ENOSPC would */
static int pre_write(const char *file, const char *what) {
    long fail = cf_io_env_long("CF_CKPT_FAIL_WRITE");
    if (fail > 0 && n_writes + 1 == fail) {
        n_writes++;
        return cf_set_error("%s: cannot write %s: %s (CF_CKPT_FAIL_WRITE)", file, what, strerror(ENOSPC));
    }
    return 0;
}

/* called after each write: CF_CKPT_FAIL_AFTER kills the writer with the file half written */
static void post_write(void) {
    n_writes++;
    long after = cf_io_env_long("CF_CKPT_FAIL_AFTER");
    if (after > 0 && n_writes == after) {
        fprintf(stderr, "cformer: CF_CKPT_FAIL_AFTER=%ld: aborting in the middle of a checkpoint write\n", after);
        abort();
    }
}

#define WRITE(what, call) do { if (pre_write(file, what) || (call)) return -1; post_write(); } while (0)

/* ---- save ----------------------------------------------------------------------------------------- */
/* tensor i of a group: the parameter p->t[i] (o NULL) or its state in slab s of o; its shape in shape[] */
static float *group_tensor(const cf_params *p, const cf_optim *o, int s, int i, int *ndim, int64_t shape[CF_MAX_DIMS]) {
    const cf_tensor *t = p->t[i];
    if (o) {
        *ndim = cf_optim_state_shape(o, s, t, shape);
        return cf_optim_state(o, s, i);
    }
    *ndim = t->ndim;
    for (int d = 0; d < t->ndim; d++) shape[d] = t->shape[d];
    return t->data;
}

static int write_tensors(hid_t f, const char *file, const char *group, const cf_params *p, const cf_optim *o, int s) {
    for (int i = 0; i < p->n; i++) {
        char name[512];
        int nd;
        int64_t shape[CF_MAX_DIMS];
        const float *x = group_tensor(p, o, s, i, &nd, shape);
        snprintf(name, sizeof name, "/%s/%s", group, p->t[i]->name);
        WRITE(name, cf_h5_write_f32(f, file, name + 1, x, nd, shape));
    }
    return 0;
}

/* the training streams' recurrent state (model.h cf_rec_state), layer by layer: each array of a
 * layer that holds state as [B, used, ...] (only the sub-rows in use) */
static int write_rec_state(hid_t f, const char *file, const cf_model *m) {
    const cf_rec_state *st = &m->rec;
    if (!st->batch) return 0;
    int64_t B = st->batch;
    for (int l = 0; l < m->n_blocks; l++) {
        cf_state_array arr[CF_STATE_MAX_ARRAYS];
        int present, n = cf_rec_state_arrays(m, st, l, arr, &present);
        if (!present) continue;
        for (int k = 0; k < n; k++) {
            const cf_state_array *a = &arr[k];
            int64_t sub = a->row / a->shape[0], part = a->used * sub, dims[4] = {B, a->used, a->shape[1], a->shape[2]};
            float *rows = cf_xmalloc((size_t)(B * part) * sizeof(float));
            for (int64_t b = 0; b < B; b++)
                memcpy(rows + b * part, a->data + b * a->row, (size_t)part * sizeof(float));
            char name[128];
            snprintf(name, sizeof name, "/state/attention/layer.%d/%s", l, a->name);
            int rc = pre_write(file, name) || cf_h5_write_f32(f, file, name + 1, rows, a->ndim + 1, dims);
            free(rows);
            if (rc) return -1;
            post_write();
        }
    }
    return 0;
}

static int write_all(hid_t f, const char *file, const cf_config *c, const cf_model *m, const cf_optim *o,
                     const cf_train_state *s) {
    WRITE("attribute format", cf_h5_write_attr_string(f, file, "/", "format", CF_CKPT_FORMAT));
    WRITE("attribute format_version", cf_h5_write_attr_i64(f, file, "/", "format_version", CF_CKPT_VERSION));
    WRITE("attribute step", cf_h5_write_attr_i64(f, file, "/", "step", s->step));
    WRITE("attribute tokens_seen", cf_h5_write_attr_i64(f, file, "/", "tokens_seen", s->tokens_seen));
    char *json = cf_config_to_json(c);
    int rc = pre_write(file, "/config") || cf_h5_write_string(f, file, "config", json);
    free(json);
    if (rc) return -1;
    post_write();
    if (write_tensors(f, file, "params", &m->params, NULL, 0)) return -1;
    WRITE("/optimizer/name", cf_h5_write_string(f, file, "optimizer/name", cf_optim_name(o->kind)));
    int64_t t = o->t;
    WRITE("/optimizer/t", cf_h5_write_scalar(f, file, "optimizer/t", H5T_NATIVE_INT64, &t));
    for (int k = 0; k < o->n_slabs; k++) {
        char group[64];
        snprintf(group, sizeof group, "optimizer/%s", o->slab[k].name);
        if (write_tensors(f, file, group, &m->params, o, k)) return -1;
    }
    int64_t bs = s->batch_size, sl = s->seq_len;
    WRITE("/state/seed", cf_h5_write_scalar(f, file, "state/seed", H5T_NATIVE_UINT64, &s->seed));
    WRITE("/state/next_batch", cf_h5_write_scalar(f, file, "state/next_batch", H5T_NATIVE_UINT64, &s->next_batch));
    WRITE("/state/best_valid_bpb",
          cf_h5_write_scalar(f, file, "state/best_valid_bpb", H5T_NATIVE_DOUBLE, &s->best_valid_bpb));
    WRITE("/state/elapsed_s", cf_h5_write_scalar(f, file, "state/elapsed_s", H5T_NATIVE_DOUBLE, &s->elapsed_s));
    WRITE("/state/sampler/mode", cf_h5_write_string(f, file, "state/sampler/mode",
                                                    s->sampling == CF_SAMPLE_ORDERED ? "ordered" : "random"));
    WRITE("/state/sampler/batch_size", cf_h5_write_scalar(f, file, "state/sampler/batch_size", H5T_NATIVE_INT64, &bs));
    WRITE("/state/sampler/seq_len", cf_h5_write_scalar(f, file, "state/sampler/seq_len", H5T_NATIVE_INT64, &sl));
    WRITE("/state/attention", cf_h5_create_group(f, file, "state/attention"));
    return write_rec_state(f, file, m);
}

/* the first non-finite element of n floats, or -1 */
static int64_t first_non_finite(const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return i;
    return -1;
}


int cf_ckpt_save(const char *path, const cf_config *c, const cf_model *m, const cf_optim *o,
                 const cf_train_state *s) {
    CF_ASSERT(m && o && s && o->n_params == m->params.n, "cf_ckpt_save: model, optimizer and state are required");
    const char *file = path;
    for (int i = 0; i < m->params.n; i++) {
        const cf_tensor *t = m->params.t[i];
        int64_t j = first_non_finite(t->data, t->numel);
        if (j >= 0)
            return cf_set_error("%s: not saved: parameter %s holds %s at element %lld (the previous checkpoint is kept)",
                                file, t->name, isnan(t->data[j]) ? "NaN" : "inf", (long long)j);
    }
    char tmp[1400], dir[1024];
    if (cf_io_temp_name(path, tmp, sizeof tmp, dir, sizeof dir)) return -1;
    /* create it ourselves first: errno then says exactly why a directory refuses it */
    n_writes = 0;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return cf_set_error("%s: cannot write in \"%s\": %s", file, dir, strerror(errno));
    close(fd);
    /* HDF5 builds the file in memory (the core driver, no backing store) and never touches the
     * disk: a full disk then fails in write() below, where it is reported and cleaned up, instead
     * of leaving libhdf5 with a file it cannot close */
    cf_h5_quiet();
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS), fcpl = H5Pcreate(H5P_FILE_CREATE);
    H5Pset_fapl_core(fapl, (size_t)1 << 20, 0);
    H5Pset_userblock(fcpl, CF_CKPT_USERBLOCK);
    hid_t f = H5Fcreate(tmp, H5F_ACC_TRUNC, fcpl, fapl);
    H5Pclose(fapl);
    H5Pclose(fcpl);
    if (f < 0) {
        unlink(tmp);
        return cf_set_error("%s: cannot create the HDF5 file %s", file, tmp);
    }
    int rc = write_all(f, file, c, m, o, s);
    if (!rc && H5Fflush(f, H5F_SCOPE_GLOBAL) < 0) rc = cf_set_error("%s: building %s failed", file, tmp);
    ssize_t n = rc ? -1 : H5Fget_file_image(f, NULL, 0);
    uint8_t *img = n > 0 ? malloc(CF_CKPT_USERBLOCK + (size_t)n) : NULL;
    if (!rc && (!img || H5Fget_file_image(f, img + CF_CKPT_USERBLOCK, (size_t)n) != n))
        rc = cf_set_error("%s: cannot take the image of %s (%zd bytes)", file, tmp, n);
    H5Fclose(f);
    if (!rc) {
        cf_ckpt_seal(img, img + CF_CKPT_USERBLOCK, (size_t)n);
        rc = cf_io_write_file(tmp, img, CF_CKPT_USERBLOCK + (size_t)n, file);
    }
    free(img);
    if (!rc && rename(tmp, path)) rc = cf_set_error("%s: cannot rename %s into place: %s", file, tmp, strerror(errno));
    if (rc) {
        unlink(tmp);
        return -1;
    }
    return cf_io_fsync_path(dir, file, 1);
}



/* ---- load ----------------------------------------------------------------------------------------- */
/* once per file: a checkpoint without checksums is loaded as it is, and said so */
static void warn_unsealed(const char *path) {
    static char last[1024];
    if (!strcmp(last, path)) return;
    snprintf(last, sizeof last, "%s", path);
    fprintf(stderr, "cformer: warning: %s has no checksums (written by an earlier cformer): it is loaded unverified\n",
            path);
}

/* Open read-only, after verifying the checksums, and check that this is a checkpoint of a format
 * this build reads. */
static hid_t ckpt_open(const char *path) {
    struct stat st;
    if (stat(path, &st)) { cf_set_error("%s: cannot open: %s", path, strerror(errno)); return -1; }
    if (!S_ISREG(st.st_mode)) { cf_set_error("%s: not a regular file", path); return -1; }
    if (access(path, R_OK)) { cf_set_error("%s: cannot open: %s", path, strerror(errno)); return -1; }
    int sealed;
    if (cf_ckpt_verify(path, &sealed)) return -1;
    if (!sealed) warn_unsealed(path);
    cf_h5_quiet();
    if (H5Fis_hdf5(path) <= 0) { cf_set_error("%s: not an HDF5 file (or its header is damaged)", path); return -1; }
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) { cf_set_error("%s: cannot open as HDF5 (truncated or damaged file)", path); return -1; }
    if (H5Aexists(f, "format") <= 0) {
        cf_set_error("%s: not a cformer checkpoint (no \"format\" attribute on /)", path);
        H5Fclose(f);
        return -1;
    }
    char *fmt = cf_h5_read_attr_string(f, path, "/", "format");
    int64_t version = 0;
    int rc = fmt ? 0 : -1;
    if (!rc && strcmp(fmt, CF_CKPT_FORMAT))
        rc = cf_set_error("%s: not a cformer checkpoint (format \"%s\", expected \"%s\")", path, fmt, CF_CKPT_FORMAT);
    if (!rc) rc = cf_h5_read_attr_i64(f, path, "/", "format_version", &version);
    if (!rc && version != CF_CKPT_VERSION)
        rc = cf_set_error("%s: format_version %lld is not supported (this build reads version %d)", path,
                          (long long)version, CF_CKPT_VERSION);
    free(fmt);
    if (rc) { H5Fclose(f); return -1; }
    return f;
}

static const char *shape_str(int nd, const int64_t *d, char *buf, size_t n) {
    buf[0] = 0;
    for (int i = 0; i < nd; i++) snprintf(buf + strlen(buf), n - strlen(buf), i ? ", %lld" : "%lld", (long long)d[i]);
    return buf;
}

/* read group/<name> of every parameter into the parameters (o NULL) or slab s of o */
static int read_tensors(hid_t f, const char *path, const char *group, const cf_params *p, cf_optim *o, int s) {
    for (int i = 0; i < p->n; i++) {
        const cf_tensor *t = p->t[i];
        char name[512], a[96], b[96];
        snprintf(name, sizeof name, "%s/%s", group, t->name);
        int64_t dims[CF_MAX_DIMS], want[CF_MAX_DIMS], numel = 1;
        int nd = 0, want_nd, shape[CF_MAX_DIMS];
        float *dst = group_tensor(p, o, s, i, &want_nd, want);
        for (int d = 0; d < want_nd; d++) numel *= shape[d] = (int)want[d];
        if (!cf_h5_exists(f, name))
            return cf_set_error("%s: /%s: missing (the model has parameter %s; was the checkpoint made for another "
                                "model shape?)", path, name, t->name);
        if (cf_h5_shape(f, name, &nd, dims))
            return cf_set_error("%s: /%s: not a dataset of at most %d dimensions", path, name, CF_MAX_DIMS);
        int same = nd == want_nd;
        for (int d = 0; same && d < nd; d++) same = dims[d] == want[d];
        if (!same)
            return cf_set_error("%s: /%s: shape (%s) in the checkpoint, (%s) in the model: the model's shape must "
                                "match the checkpoint's", path, name, shape_str(nd, dims, a, sizeof a),
                                shape_str(want_nd, want, b, sizeof b));
        if (cf_h5_read_f32(f, path, name, dst, want_nd, shape, numel)) return -1;
        int64_t j = first_non_finite(dst, numel);
        if (j >= 0)
            return cf_set_error("%s: /%s: element %lld is %s", path, name, (long long)j, isnan(dst[j]) ? "NaN" : "infinite");
        if (o && o->info->slabs[s].nonneg)
            for (int64_t k = 0; k < numel; k++)
                if (dst[k] < 0)
                    return cf_set_error("%s: /%s: element %lld is negative (%s's %s is never negative)", path, name,
                                        (long long)k, cf_optim_name(o->kind), o->slab[s].name);
    }
    return 0;
}

typedef struct { const cf_params *p; char extra[512]; } extra_arg;

static herr_t find_extra(hid_t g, const char *name, const H5L_info_t *info, void *arg) {
    (void)g; (void)info;
    extra_arg *e = arg;
    if (cf_params_find(e->p, name)) return 0;
    snprintf(e->extra, sizeof e->extra, "%s", name);
    return 1;   /* stop at the first */
}

/* names in group that the model has no parameter for */
static int check_no_extra(hid_t f, const char *path, const char *group, const cf_params *p) {
    extra_arg e = {.p = p};
    hsize_t idx = 0;
    if (H5Literate_by_name(f, group, H5_INDEX_NAME, H5_ITER_INC, &idx, find_extra, &e, H5P_DEFAULT) < 0)
        return cf_set_error("%s: /%s: cannot list its members", path, group);
    if (e.extra[0])
        return cf_set_error("%s: /%s/%s: in the checkpoint but not in the model (was the checkpoint made for "
                            "another model shape?)", path, group, e.extra);
    return 0;
}

/* The file's optimizer must be the run's: one optimizer's state means nothing to another. A file
 * without /optimizer/name holds AdamW's state. */
static int check_optimizer(hid_t f, const char *path, const cf_optim *o) {
    char *name = NULL;
    if (cf_h5_exists(f, "optimizer/name") && !(name = cf_h5_read_string(f, path, "optimizer/name"))) return -1;
    const char *have = name ? name : cf_optim_name(CF_OPTIM_ADAMW), *want = cf_optim_name(o->kind);
    int rc = 0;
    if (strcmp(have, want))
        rc = cf_set_error("%s: the checkpoint holds the state of optimizer \"%s\", the run's train.optimizer is \"%s\" "
                          "(resume with train.optimizer \"%s\", or start a new run)", path, have, want, have);
    free(name);
    return rc;
}

static int read_scalar_u64(hid_t f, const char *path, const char *name, uint64_t *v) {
    return cf_h5_read_u64(f, path, name, v, 1);
}

static int load_state(hid_t f, const char *path, cf_train_state *s) {
    memset(s, 0, sizeof *s);
    int64_t bs = 0, sl = 0;
    if (cf_h5_read_attr_i64(f, path, "/", "step", &s->step)) return -1;
    if (cf_h5_read_attr_i64(f, path, "/", "tokens_seen", &s->tokens_seen)) return -1;
    if (s->step < 0 || s->step > 2147483647 || s->tokens_seen < 0)
        return cf_set_error("%s: step %lld / tokens_seen %lld out of range", path, (long long)s->step,
                            (long long)s->tokens_seen);
    if (read_scalar_u64(f, path, "state/seed", &s->seed)) return -1;
    if (read_scalar_u64(f, path, "state/next_batch", &s->next_batch)) return -1;
    if (cf_h5_read_f64(f, path, "state/best_valid_bpb", &s->best_valid_bpb, 1)) return -1;
    if (cf_h5_read_f64(f, path, "state/elapsed_s", &s->elapsed_s, 1)) return -1;
    if (isnan(s->best_valid_bpb) || s->best_valid_bpb < 0)
        return cf_set_error("%s: /state/best_valid_bpb: %g is not a bits-per-byte value", path, s->best_valid_bpb);
    if (!isfinite(s->elapsed_s) || s->elapsed_s < 0) s->elapsed_s = 0;   /* informational only */
    char *mode = cf_h5_read_string(f, path, "state/sampler/mode");
    if (!mode) return -1;
    int ordered = !strcmp(mode, "ordered");
    if (!ordered && strcmp(mode, "random")) {
        cf_set_error("%s: /state/sampler/mode: \"%s\", expected \"random\" or \"ordered\"", path, mode);
        free(mode);
        return -1;
    }
    free(mode);
    s->sampling = ordered ? CF_SAMPLE_ORDERED : CF_SAMPLE_RANDOM;
    if (cf_h5_read_i64(f, path, "state/sampler/batch_size", &bs, 1)) return -1;
    if (cf_h5_read_i64(f, path, "state/sampler/seq_len", &sl, 1)) return -1;
    if (bs < 1 || bs > (1 << 20) || sl < 1 || sl > (1 << 20))
        return cf_set_error("%s: /state/sampler: batch_size %lld, seq_len %lld out of range", path, (long long)bs,
                            (long long)sl);
    s->batch_size = (int)bs;
    s->seq_len = (int)sl;
    return 0;
}

/* /state/attention: one group "layer.<i>" per layer that held state, with the datasets of its
 * type; anything else is an error naming it. Restores the model's training state (m->rec). */
typedef struct { char names[64][32]; int n; } member_list;

static herr_t list_member(hid_t g, const char *name, const H5L_info_t *info, void *arg) {
    (void)g; (void)info;
    member_list *ml = arg;
    if (ml->n == 64) return 1;
    snprintf(ml->names[ml->n++], sizeof ml->names[0], "%s", name);
    return 0;
}

static int list_group(hid_t f, const char *path, const char *group, member_list *ml) {
    memset(ml, 0, sizeof *ml);
    hsize_t idx = 0;
    if (H5Literate_by_name(f, group, H5_INDEX_NAME, H5_ITER_INC, &idx, list_member, ml, H5P_DEFAULT) < 0)
        return cf_set_error("%s: /%s: not a group, or unreadable", path, group);
    return 0;
}

/* the shape of a state dataset, which must be float32 [B, ...] with the given trailing sizes */
static int state_shape(hid_t f, const char *path, const char *name, int ndim, const int64_t *want, int64_t *B,
                       int64_t *rows) {
    int nd = 0;
    int64_t dims[4] = {0};
    if (cf_h5_shape(f, name, &nd, dims)) return cf_set_error("%s: /%s: missing or not a dataset", path, name);
    int ok = nd == ndim && dims[0] >= 1 && (*B == 0 || dims[0] == *B);
    for (int i = 1; ok && i < ndim; i++) ok = want[i] < 0 ? dims[i] >= 1 && dims[i] <= -want[i] : dims[i] == want[i];
    if (!ok) {
        char a[96];
        return cf_set_error("%s: /%s: shape (%s) does not fit this model's state", path, name,
                            shape_str(nd, dims, a, sizeof a));
    }
    *B = dims[0];
    if (rows) *rows = dims[1];
    return 0;
}

static int load_rec_state(hid_t f, const char *path, cf_model *m) {
    if (!cf_h5_exists(f, "state/attention")) return cf_set_error("%s: missing group /state/attention", path);
    member_list layers;
    if (list_group(f, path, "state/attention", &layers)) return -1;
    if (!layers.n) {
        if (m->rec.batch) cf_rec_state_free(m, &m->rec);
        return 0;
    }
    int64_t B = 0;
    /* first pass: names and shapes, so that nothing is allocated for a file that is wrong */
    for (int i = 0; i < layers.n; i++) {
        char *end;
        const char *nm = layers.names[i];
        long l = strncmp(nm, "layer.", 6) ? -1 : strtol(nm + 6, &end, 10);
        if (l < 0 || l >= m->n_blocks || *end)
            return cf_set_error("%s: /state/attention/%s: not a layer of this model (layer.0 .. layer.%d)", path, nm,
                                m->n_blocks - 1);
        cf_attn_kind type = m->blocks[l].attn.cfg.type;
        cf_state_array arr[CF_STATE_MAX_ARRAYS];
        int n = cf_rec_state_arrays(m, NULL, (int)l, arr, NULL);
        if (!n)
            return cf_set_error("%s: /state/attention/%s: recurrent attention state, but layer %ld is of type %s and "
                                "keeps none", path, nm, l, cf_attn_kind_name(type));
        char want[96] = "";
        for (int k = 0; k < n; k++)
            snprintf(want + strlen(want), sizeof want - strlen(want), "%s%s", k ? " " : "", arr[k].name);
        member_list ds;
        char group[64], name[128];
        snprintf(group, sizeof group, "state/attention/%s", nm);
        if (list_group(f, path, group, &ds)) return -1;
        for (int j = 0; j < ds.n; j++) {
            int known = 0;
            for (int k = 0; k < n; k++) known |= !strcmp(ds.names[j], arr[k].name);
            if (!known)
                return cf_set_error("%s: /%s/%s: unexpected in the state of a layer of type %s (expected %s)", path,
                                    group, ds.names[j], cf_attn_kind_name(type), want);
        }
        for (int k = 0; k < n; k++) {
            /* the first sub-row dimension may be shorter than the capacity (a memory not yet full) */
            int64_t shape[4] = {0, arr[k].used < arr[k].shape[0] ? -arr[k].shape[0] : arr[k].shape[0],
                                arr[k].shape[1], arr[k].shape[2]};
            snprintf(name, sizeof name, "%s/%s", group, arr[k].name);
            if (state_shape(f, path, name, arr[k].ndim + 1, shape, &B, NULL)) return -1;
        }
    }
    cf_rec_state_alloc(m, &m->rec, (int)B);
    cf_rec_state *st = &m->rec;
    for (int i = 0; i < layers.n; i++) {
        int l = atoi(layers.names[i] + 6), used = 0;
        cf_state_array arr[CF_STATE_MAX_ARRAYS];
        int n = cf_rec_state_arrays(m, st, l, arr, NULL);
        for (int k = 0; k < n; k++) {
            cf_state_array *a = &arr[k];
            char name[128];
            snprintf(name, sizeof name, "state/attention/%s/%s", layers.names[i], a->name);
            int64_t b0 = B, rows = 0, sub = a->row / a->shape[0];
            state_shape(f, path, name, a->ndim + 1, (int64_t[]){0, -a->shape[0], a->shape[1], a->shape[2]}, &b0, &rows);
            int64_t part = rows * sub;
            int dims[4] = {(int)B, (int)rows, (int)a->shape[1], (int)a->shape[2]};
            float *buf = cf_xmalloc((size_t)(B * part) * sizeof(float));
            int rc = cf_h5_read_f32(f, path, name, buf, a->ndim + 1, dims, B * part);
            for (int64_t b = 0; !rc && b < B; b++)
                memcpy(a->data + b * a->row, buf + b * part, (size_t)part * sizeof(float));
            int64_t bad = -1;
            for (int64_t j = 0; !rc && j < B * part && bad < 0; j++)
                if (!isfinite(buf[j]) || (a->nonneg && !(buf[j] >= 0))) bad = j;
            float v = bad >= 0 ? buf[bad] : 0;
            free(buf);
            if (rc) return -1;
            if (bad >= 0 && a->nonneg)
                return cf_set_error("%s: /%s: element %lld is %g (a normaliser is a sum of positive features)", path,
                                    name, (long long)bad, v);
            if (bad >= 0) return cf_set_error("%s: /%s: element %lld is not finite", path, name, (long long)bad);
            if (k == 0) used = (int)rows;
        }
        cf_rec_state_set_used(m, st, l, used);
    }
    return 0;
}

int cf_ckpt_load(const char *path, cf_model *m, cf_optim *o, cf_train_state *s) {
    hid_t f = ckpt_open(path);
    if (f < 0) return -1;
    int rc = read_tensors(f, path, "params", &m->params, NULL, 0);
    if (!rc) rc = check_no_extra(f, path, "params", &m->params);
    if (!rc && o) {
        CF_ASSERT(o->n_params == m->params.n, "cf_ckpt_load: optimizer not initialised for this model");
        int64_t t = 0;
        rc = check_optimizer(f, path, o);
        if (!rc) rc = cf_h5_read_i64(f, path, "optimizer/t", &t, 1);
        if (!rc && t < 0) rc = cf_set_error("%s: /optimizer/t: %lld is negative", path, (long long)t);
        o->t = t;
        for (int k = 0; !rc && k < o->n_slabs; k++) {
            char group[64];
            snprintf(group, sizeof group, "optimizer/%s", o->slab[k].name);
            rc = read_tensors(f, path, group, &m->params, o, k);
            if (!rc) rc = check_no_extra(f, path, group, &m->params);
        }
    }
    if (!rc && s) rc = load_state(f, path, s);
    if (!rc) rc = load_rec_state(f, path, m);
    H5Fclose(f);
    return rc;
}

int cf_ckpt_read_config(const char *path, cf_config *c) {
    hid_t f = ckpt_open(path);
    if (f < 0) return -1;
    char *json = cf_h5_read_string(f, path, "config");
    H5Fclose(f);
    if (!json) return -1;
    int rc = cf_config_parse(c, json, NULL, 0, 0);
    free(json);
    if (rc) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", cf_error_msg());
        return cf_set_error("%s: /config: %s", path, msg);
    }
    char dir[1024], base[256];
    cf_io_split_path(path, dir, sizeof dir, base, sizeof base);
    char *dot = strrchr(base, '.');
    if (dot && dot != base) *dot = 0;
    memset(c->name, 0, sizeof c->name);
    snprintf(c->name, sizeof c->name, "%s", base);
    return 0;
}

int cf_ckpt_load_model(const char *path, cf_config *c, cf_model *m, cf_train_state *s) {
    memset(m, 0, sizeof *m);
    if (cf_ckpt_read_config(path, c)) return -1;
    if (cf_model_init(m, &c->model, CF_SEED_NONE)) {        /* every parameter comes from the file */
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", cf_error_msg());
        cf_model_free(m);
        return cf_set_error("%s: /config: %s", path, msg);
    }
    cf_train_state local;
    if (!s) s = &local;
    if (cf_ckpt_load(path, m, NULL, s)) {
        cf_model_free(m);
        return -1;
    }
    /* evaluation and sampling use the random features (performer) of the last training step */
    if (s->next_batch) {
        uint64_t last = s->next_batch - 1;
        cf_model_set_step(m, s->seed, last);
    }
    return 0;
}


/* ---- config differences ------------------------------------------------------------------------------ */
typedef struct { char *buf; size_t len, cap; const char *prefix; const char *const *skip; } diff_out;

static void diff_add(diff_out *d, const char *key, const cJSON *a, const cJSON *b) {
    if (d->prefix && strncmp(key, d->prefix, strlen(d->prefix))) return;
    for (int i = 0; d->skip && d->skip[i]; i++)
        if (!strcmp(key, d->skip[i])) return;
    char *sa = a ? cJSON_PrintUnformatted(a) : NULL, *sb = b ? cJSON_PrintUnformatted(b) : NULL;
    size_t need = strlen(key) + (sa ? strlen(sa) : 6) + (sb ? strlen(sb) : 6) + 16;
    if (d->len + need >= d->cap) {
        d->cap = (d->len + need) * 2;
        char *nb = realloc(d->buf, d->cap);
        CF_ASSERT(nb, "out of memory");
        d->buf = nb;
    }
    d->len += (size_t)sprintf(d->buf + d->len, "%s%s: %s -> %s", d->len ? ", " : "", key, sa ? sa : "(none)",
                              sb ? sb : "(none)");
    free(sa);
    free(sb);
}

static void diff_walk(diff_out *d, const char *key, const cJSON *a, const cJSON *b) {
    char sub[512];
    if (a && b && cJSON_IsObject(a) && cJSON_IsObject(b)) {
        for (const cJSON *x = a->child; x; x = x->next) {
            snprintf(sub, sizeof sub, "%s%s%s", key, key[0] ? "." : "", x->string);
            diff_walk(d, sub, x, cJSON_GetObjectItemCaseSensitive(b, x->string));
        }
        for (const cJSON *y = b->child; y; y = y->next)
            if (!cJSON_GetObjectItemCaseSensitive(a, y->string)) {
                snprintf(sub, sizeof sub, "%s%s%s", key, key[0] ? "." : "", y->string);
                diff_add(d, sub, NULL, y);
            }
        return;
    }
    if (a && b && cJSON_IsArray(a) && cJSON_IsArray(b) && cJSON_GetArraySize(a) == cJSON_GetArraySize(b)) {
        int i = 0;
        for (const cJSON *x = a->child, *y = b->child; x && y; x = x->next, y = y->next, i++) {
            snprintf(sub, sizeof sub, "%s[%d]", key, i);
            diff_walk(d, sub, x, y);
        }
        return;
    }
    if (a && b && cJSON_Compare(a, b, 1)) return;
    diff_add(d, key, a, b);
}

char *cf_ckpt_config_diff(const cf_config *saved, const cf_config *now, const char *prefix, const char *const *skip) {
    char *ja = cf_config_to_json(saved), *jb = cf_config_to_json(now);
    cJSON *a = cJSON_Parse(ja), *b = cJSON_Parse(jb);
    CF_ASSERT(a && b, "cf_ckpt_config_diff: cf_config_to_json gave invalid JSON");
    diff_out d = {.prefix = prefix, .skip = skip};
    diff_walk(&d, "", a, b);
    cJSON_Delete(a);
    cJSON_Delete(b);
    free(ja);
    free(jb);
    return d.buf;
}





