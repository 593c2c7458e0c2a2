/* libFuzzer target: the checkpoint loader (checkpoint.h) on arbitrary files.
 *
 * Input: one mode byte, then the file. The file is written to a temporary file ($TMPDIR or /tmp;
 * libhdf5 resolves the real path of what it opens, so a memfd cannot be used) and loaded as
 * `cformer info` (cf_ckpt_load_model) and `train --resume` (cf_ckpt_load with the optimizer and the
 * training state) load it.
 *   mode & 1 == 0  raw: the bytes as they are. A change anywhere in a sealed checkpoint is refused
 *                  by its CRC-32C checksums, so this mode tests the integrity header.
 *   mode & 1 == 1  resealed: the integrity header (the first CF_CKPT_USERBLOCK bytes) is computed
 *                  anew with cf_ckpt_seal over the rest, so the bytes reach libhdf5 and the
 *                  loader's own checks (names, shapes, types, values, the stored config).
 * Properties checked besides the sanitizers: a refusal is one line that names the file.
 * A stored config whose model is far larger than the seed's is not built (the loader would only
 * spend memory and time on it before refusing the weights' shapes).
 * Inputs that would meet the known failures of libhdf5 1.10 in its global heap (tests/fuzz/README.md)
 * are skipped, so that the run's time goes to new failures; FUZZ_ALL=1 in the environment runs them.
 * An allocation above 512 MB fails (returns NULL) as on a machine short of memory, instead of ending
 * the run: libhdf5 sizes some by lengths it reads from the file (a variable-length string's, up to
 * 4 GB) and refuses the file when they fail. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "cformer/checkpoint.h"
#include "cformer/core.h"

enum { MAX_PARAMS = 1 << 22 };

const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "allocator_may_return_null=1:max_allocation_size_mb=512"; }
/* libhdf5 1.10 leaks small blocks on some error paths of damaged files */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void) { return "leak:libhdf5\n"; }

static int fd = -1, run_all;
static char path[1024];

static uint64_t le(const uint8_t *p, int bytes) {
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

/* Whether libhdf5 1.10 would hang or crash in its global heap on image f[n] (8-byte addresses and
 * lengths, as cformer writes): a collection ("GCOL", version, 3 reserved bytes, its size) whose objects
 * (index u16, references u16, 4 reserved bytes, size u64, data padded to 8; index 0 is the free space
 * and its size includes the header) hold one of size 0, where H5HG__cache_heap_deserialize loops for
 * ever, or run past its end, or a collection that is smaller than 4096 bytes or runs past the file's
 * end; or a variable-length value (length u32, the collection's address u64, object index u32) whose
 * length is not its object's size, which H5T__conv_vlen and H5HG_read trust for an allocation and a
 * copy, or whose index is no object of the collection, which H5HG_read trusts as an array index. A
 * candidate value whose length is 0 or larger than the collection is taken for other metadata that
 * happens to hold the collection's address. */
static int known_hdf5_failure(const uint8_t *f, size_t n) {
    for (size_t off = CF_CKPT_USERBLOCK; off + 16 <= n; off++) {
        if (memcmp(f + off, "GCOL", 4)) continue;
        uint64_t size = le(f + off + 8, 8), sizes[256] = {0};
        if (size < 4096 || size > n - off) return 1;
        for (uint64_t at = 16; at + 16 <= size;) {
            uint64_t idx = le(f + off + at, 2), len = le(f + off + at + 8, 8);
            uint64_t need = idx ? 16 + (len + 7) / 8 * 8 : len;
            if (need == 0 || len > size || need > size - at) return 1;
            if (idx && idx < 256) sizes[idx] = len;
            at += need;
        }
        uint64_t addr = off - CF_CKPT_USERBLOCK;
        for (size_t q = CF_CKPT_USERBLOCK + 4; q + 12 <= n; q++) {
            uint64_t len = le(f + q - 4, 4), idx = le(f + q + 8, 4);
            if (le(f + q, 8) != addr || len == 0 || len > size) continue;
            if (idx == 0 || idx >= 256 || !sizes[idx] || len != sizes[idx]) return 1;
        }
    }
    return 0;
}

static void remove_file(void) { unlink(path); }

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc; (void)argv;
    cf_set_num_threads(1);
    run_all = getenv("FUZZ_ALL") && *getenv("FUZZ_ALL") == '1';
    const char *dir = getenv("TMPDIR");
    snprintf(path, sizeof path, "%s/fuzz_checkpoint.XXXXXX", dir && *dir ? dir : "/tmp");
    fd = mkstemp(path);
    if (fd < 0) { perror(path); abort(); }
    atexit(remove_file);
    return 0;
}

static void check_refusal(void) {
    const char *msg = cf_error_msg();
    if (strpbrk(msg, "\n\r") || !strstr(msg, path)) {
        fprintf(stderr, "fuzz_checkpoint: a refusal that is not one line naming %s: %s\n", path, msg);
        abort();
    }
}

/* a lower bound of the parameters of the model a config describes (as cf_model_init estimates) */
static double least_params(const cf_model_config *m) {
    double D = m->d_model, layers = (double)m->enc_layers + m->dec_layers;
    return layers * (4 * D * D + 2 * D * m->d_ff) + (double)m->vocab_size * D;
}

static void load(void) {
    cf_config c;
    if (cf_ckpt_read_config(path, &c)) { check_refusal(); return; }
    if (least_params(&c.model) > MAX_PARAMS) return;
    cf_model m;
    cf_train_state s;
    if (cf_ckpt_load_model(path, &c, &m, &s)) { check_refusal(); return; }
    cf_optim o;
    cf_optim_init(&o, c.train.optimizer, &m.params);
    if (cf_ckpt_load(path, &m, &o, &s)) check_refusal();
    cf_optim_free(&o);
    cf_model_free(&m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int reseal = data[0] & 1;
    const uint8_t *file = data + 1;
    size_t n = size - 1;
    uint8_t *copy = NULL;
    if (reseal && n > CF_CKPT_USERBLOCK) {
        copy = malloc(n);
        memcpy(copy, file, n);
        cf_ckpt_seal(copy, copy + CF_CKPT_USERBLOCK, n - CF_CKPT_USERBLOCK);
        file = copy;
    }
    if (!run_all && known_hdf5_failure(file, n)) {
        free(copy);
        return 0;
    }
    if (ftruncate(fd, 0) || pwrite(fd, file, n, 0) != (ssize_t)n) { perror(path); abort(); }
    free(copy);
    load();
    return 0;
}
