/* Byte files (docs/architecture.md section 11, data.h). Files are mapped rather than read: enwik8's 90 MB
 * training split is then paged in on demand and shared between processes, and opening it costs
 * nothing. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include "cformer/core.h"
#include "cformer/data.h"

int cf_bytes_open(cf_bytes *b, const char *path) {
    memset(b, 0, sizeof *b);
    int fd = cf_open_regular(path);
    if (fd < 0) return -1;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return cf_set_error("cannot stat \"%s\": %s", path, strerror(e));
    }
    if (st.st_size == 0) {
        close(fd);
        return cf_set_error("\"%s\": file is empty", path);
    }
    size_t len = (size_t)st.st_size;
    void *map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);   /* the mapping keeps the file alive */
    if (map == MAP_FAILED) return cf_set_error("cannot map \"%s\": %s", path, strerror(e));
    b->data = map;
    b->n = len;
    b->map = map;
    b->map_len = len;
    snprintf(b->path, sizeof b->path, "%s", path);
    return 0;
}

void cf_bytes_close(cf_bytes *b) {
    if (b->map) munmap(b->map, b->map_len);
    memset(b, 0, sizeof *b);
}

int cf_bytes_check_vocab(const cf_bytes *b, int vocab) {
    if (vocab >= 256) return 0;
    for (size_t i = 0; i < b->n; i++)
        if (b->data[i] >= vocab)
            return cf_set_error("\"%s\": byte %d at offset %zu is not a token of model.vocab_size %d (bytes are tokens: "
                                "use model.vocab_size 256)", b->path, b->data[i], i, vocab);
    return 0;
}
