/* Checkpoint integrity (checkpoint.h): a header in the HDF5 user block carries CRC-32C checksums of
 * the file, and every checkpoint is verified before libhdf5 parses a byte of it.
 *
 * Layout of the header (the first CF_CKPT_USERBLOCK bytes, which HDF5 leaves to its user; numbers
 * little-endian):
 *   0   32 bytes   magic "cformer-checkpoint-integrity\n", zero-padded
 *   32  u32        header version (1)
 *   36  u32        CRC-32C of the whole header with these four bytes zero
 *   40  u64        bytes of the HDF5 image that follows the header
 *   48  u32        chunk size: the image is checked in chunks of this many bytes
 *   52  u32        number of chunks
 *   56  u32        CRC-32C of the whole image
 *   60  u32[n]     CRC-32C of each chunk, in order
 * so a damaged file is refused naming the byte range that changed, and a damaged header is refused
 * by its own checksum. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "cformer/checkpoint.h"

#define MAGIC "cformer-checkpoint-integrity\n"
#define HDF5_SIGNATURE "\x89HDF\r\n\x1a\n"
enum { MAX_CHUNKS = (CF_CKPT_USERBLOCK - 60) / 4, MIN_CHUNK = 1 << 16 };

static void put32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> 8 * i); }
static void put64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> 8 * i); }
static uint32_t get32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static uint64_t get64(const uint8_t *p) { return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32; }

/* the smallest multiple of MIN_CHUNK that cuts n bytes into at most MAX_CHUNKS chunks */
static uint32_t chunk_size(uint64_t n) {
    uint64_t c = (n + MAX_CHUNKS - 1) / MAX_CHUNKS;
    c = (c + MIN_CHUNK - 1) / MIN_CHUNK * MIN_CHUNK;
    return (uint32_t)(c ? c : MIN_CHUNK);
}

void cf_ckpt_seal(uint8_t *h, const uint8_t *image, size_t n) {
    memset(h, 0, CF_CKPT_USERBLOCK);
    memcpy(h, MAGIC, sizeof MAGIC - 1);
    uint32_t cs = chunk_size(n), nc = (uint32_t)((n + cs - 1) / cs);
    put32(h + 32, 1);
    put64(h + 40, n);
    put32(h + 48, cs);
    put32(h + 52, nc);
    put32(h + 56, cf_crc32c(0, image, n));
    for (uint32_t i = 0; i < nc; i++) {
        size_t off = (size_t)i * cs, len = n - off < cs ? n - off : cs;
        put32(h + 60 + 4 * i, cf_crc32c(0, image + off, len));
    }
    put32(h + 36, cf_crc32c(0, h, CF_CKPT_USERBLOCK));
}

/* read exactly n bytes at offset off */
static int read_at(int fd, void *buf, size_t n, off_t off) {
    for (size_t got = 0; got < n;) {
        ssize_t r = pread(fd, (char *)buf + got, n - got, off + (off_t)got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        got += (size_t)r;
    }
    return 0;
}

int cf_ckpt_verify(const char *path, int *sealed) {
    *sealed = 0;
    int fd = cf_open_regular(path);
    if (fd < 0) {
        char msg[1200];
        snprintf(msg, sizeof msg, "%s", cf_error_msg());
        return cf_set_error("%s", msg);
    }
    off_t size = lseek(fd, 0, SEEK_END);
    uint8_t *h = cf_xmalloc(CF_CKPT_USERBLOCK), *buf = NULL;
    int rc = 0;
    if (size < 8 || read_at(fd, h, 8, 0)) {
        rc = cf_set_error("%s: not an HDF5 file (%lld bytes), not a checkpoint", path, (long long)size);
        goto out;
    }
    if (!memcmp(h, HDF5_SIGNATURE, 8)) goto out;            /* HDF5 at byte 0: written without checksums */
    /* a file shorter than the header is refused by what it starts with */
    size_t head = size < CF_CKPT_USERBLOCK ? (size_t)size : CF_CKPT_USERBLOCK;
    if (read_at(fd, h, head, 0) || head < sizeof MAGIC - 1 || memcmp(h, MAGIC, sizeof MAGIC - 1)) {
        rc = cf_set_error("%s: not an HDF5 file, or a checkpoint whose integrity header is damaged (neither is at its "
                          "start)", path);
        goto out;
    }
    if (head < CF_CKPT_USERBLOCK) {
        rc = cf_set_error("%s: %lld bytes, shorter than a checkpoint's integrity header (truncated)", path, (long long)size);
        goto out;
    }
    uint32_t want = get32(h + 36);
    put32(h + 36, 0);
    if (cf_crc32c(0, h, CF_CKPT_USERBLOCK) != want || get32(h + 32) != 1) {
        rc = cf_set_error("%s: the integrity header (bytes 0..%d) is damaged: its checksum does not match", path,
                          CF_CKPT_USERBLOCK - 1);
        goto out;
    }
    uint64_t n = get64(h + 40);
    uint32_t cs = get32(h + 48), nc = get32(h + 52);
    if ((uint64_t)size != CF_CKPT_USERBLOCK + n) {
        rc = cf_set_error("%s: %lld bytes where the header says %llu (truncated or extended)", path, (long long)size,
                          (unsigned long long)(CF_CKPT_USERBLOCK + n));
        goto out;
    }
    /* the checksum matches, yet a crafted header may still describe chunks that do not cut the image */
    if (cs < MIN_CHUNK || nc > MAX_CHUNKS || nc != (n + cs - 1) / cs) {
        rc = cf_set_error("%s: the integrity header (bytes 0..%d) is inconsistent (%u chunks of %u bytes for %llu bytes)",
                          path, CF_CKPT_USERBLOCK - 1, nc, cs, (unsigned long long)n);
        goto out;
    }
    buf = cf_xmalloc(n < cs ? (size_t)n : cs);   /* a crafted chunk size may be far larger than the file */
    uint32_t whole = 0;
    for (uint32_t i = 0; i < nc && !rc; i++) {
        uint64_t off = (uint64_t)i * cs, len = n - off < cs ? n - off : cs;
        if (read_at(fd, buf, (size_t)len, (off_t)(CF_CKPT_USERBLOCK + off))) {
            rc = cf_set_error("%s: cannot read bytes %llu..%llu: %s", path, (unsigned long long)(CF_CKPT_USERBLOCK + off),
                              (unsigned long long)(CF_CKPT_USERBLOCK + off + len - 1), strerror(errno));
            break;
        }
        whole = cf_crc32c(whole, buf, (size_t)len);
        if (cf_crc32c(0, buf, (size_t)len) != get32(h + 60 + 4 * i))
            rc = cf_set_error("%s: bytes %llu..%llu are damaged: their checksum does not match (the file cannot be "
                              "trusted; use an earlier checkpoint)", path, (unsigned long long)(CF_CKPT_USERBLOCK + off),
                              (unsigned long long)(CF_CKPT_USERBLOCK + off + len - 1));
    }
    if (!rc && whole != get32(h + 56)) rc = cf_set_error("%s: the file's checksum does not match", path);
    if (!rc) *sealed = 1;
out:
    free(h);
    free(buf);
    close(fd);
    return rc;
}
