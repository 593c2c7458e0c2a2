/* Byte files and the batch sampler: random windows are deterministic and in range, ordered
 * streams are contiguous from batch to batch, disjoint between rows and wrap at their ends;
 * files too short and missing files are errors that name the file. */
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "test.h"
#include "cformer/data.h"

/* Pseudo-random bytes, so that any window of 8 or more bytes occurs once (checked by find_pos). */
static uint8_t *make_bytes(size_t n) {
    uint8_t *d = malloc(n);
    for (size_t i = 0; i < n; i++) d[i] = (uint8_t)(cf_mix64(i + 12345) >> 56);
    return d;
}

static void write_file(const char *path, const uint8_t *d, size_t n) {
    FILE *f = fopen(path, "wb");
    CHECK(f && fwrite(d, 1, n, f) == n, "write %s", path);
    if (f) fclose(f);
}

/* the one position where row x (T bytes) occurs in d, or -1 when absent or ambiguous */
static long find_pos(const uint8_t *d, size_t n, const int32_t *x, int T) {
    long found = -1;
    for (size_t s = 0; s + (size_t)T <= n; s++) {
        int t = 0;
        while (t < T && d[s + t] == x[t]) t++;
        if (t == T) {
            if (found >= 0) return -1;
            found = (long)s;
        }
    }
    return found;
}

static int y_is_shifted_x(const uint8_t *d, long pos, const int32_t *y, int T) {
    for (int t = 0; t < T; t++)
        if (y[t] != d[pos + 1 + t]) return 0;
    return 1;
}

static void test_random(const char *path, const uint8_t *d, size_t n) {
    cf_bytes b;
    CHECK(cf_bytes_open(&b, path) == 0, "open: %s", cf_error_msg());
    CHECK(b.n == n && memcmp(b.data, d, n) == 0, "mapped bytes equal the file");
    enum { B = 4, T = 16 };
    cf_sampler s;
    CHECK(cf_sampler_init(&s, &b, B, T, 0, 7) == 0, "init: %s", cf_error_msg());
    CHECK(cf_sampler_period(&s) == 0, "random has no period");
    int32_t x[B * T], y[B * T], x2[B * T], y2[B * T];
    int differ = 0;
    for (uint64_t i = 0; i < 50; i++) {
        cf_sampler_batch(&s, i, x, y);
        cf_sampler_batch(&s, i, x2, y2);
        CHECK(memcmp(x, x2, sizeof x) == 0 && memcmp(y, y2, sizeof y) == 0, "batch %d is deterministic", (int)i);
        for (int r = 0; r < B; r++) {
            long p = find_pos(d, n, x + r * T, T);
            CHECK(p >= 0 && (size_t)p + T + 1 <= n, "batch %d row %d: a window of the file in range (%ld)", (int)i, r, p);
            if (p >= 0) CHECK(y_is_shifted_x(d, p, y + r * T, T), "batch %d row %d: y = x shifted", (int)i, r);
        }
        if (memcmp(x, x + T, T * sizeof *x)) differ++;
    }
    CHECK(differ > 40, "rows of a batch differ (%d of 50 batches)", differ);
    cf_sampler_batch(&s, 3, x, y);
    cf_sampler_batch(&s, 4, x2, y2);
    CHECK(memcmp(x, x2, sizeof x) != 0, "batches differ");
    cf_sampler s2;
    CHECK(cf_sampler_init(&s2, &b, B, T, 0, 8) == 0, "init");
    cf_sampler_batch(&s2, 3, x2, y2);
    CHECK(memcmp(x, x2, sizeof x) != 0, "the seed changes the batches");

    /* every start in [0, n - T - 1] is reachable: the first and the last both occur */
    cf_bytes small = b;
    small.n = T + 3;   /* 3 possible starts */
    CHECK(cf_sampler_init(&s, &small, 1, T, 0, 1) == 0, "init small");
    int seen[3] = {0, 0, 0};
    for (uint64_t i = 0; i < 200; i++) {
        cf_sampler_batch(&s, i, x, y);
        long p = find_pos(d, small.n, x, T);
        CHECK(p >= 0 && p <= 2, "start %ld in [0, 2]", p);
        if (p >= 0 && p <= 2) seen[p] = 1;
    }
    CHECK(seen[0] && seen[1] && seen[2], "all starts drawn");
    cf_bytes_close(&b);
    CHECK(b.data == NULL && b.map == NULL, "closed");
    cf_bytes_close(&b);   /* closing twice is harmless */
}

static void test_ordered(const char *path, const uint8_t *d, size_t n) {
    cf_bytes b;
    CHECK(cf_bytes_open(&b, path) == 0, "open: %s", cf_error_msg());
    enum { B = 4, T = 10 };
    cf_sampler s;
    CHECK(cf_sampler_init(&s, &b, B, T, 1, 99) == 0, "init: %s", cf_error_msg());
    size_t L = n / B;
    uint64_t W = cf_sampler_period(&s);
    CHECK(W == (L - 1) / T, "period %d", (int)W);
    int32_t x[B * T], y[B * T];
    long prev[B];
    for (uint64_t i = 0; i < 2 * W + 3; i++) {
        cf_sampler_batch(&s, i, x, y);
        for (int r = 0; r < B; r++) {
            long p = find_pos(d, n, x + r * T, T);
            CHECK(p >= 0, "batch %d row %d is a window of the file", (int)i, r);
            if (p < 0) continue;
            CHECK(y_is_shifted_x(d, p, y + r * T, T), "batch %d row %d: y = x shifted", (int)i, r);
            CHECK((size_t)p >= r * L && (size_t)p + T + 1 <= (r + 1) * L,
                  "batch %d row %d: inside stream %d (%ld)", (int)i, r, r, p);
            if (i % W == 0) CHECK((size_t)p == r * L, "batch %d row %d: a pass starts at the stream's start", (int)i, r);
            else CHECK(p == prev[r] + T, "batch %d row %d: continues where the last batch ended", (int)i, r);
            prev[r] = p;
        }
        /* one stream's batch continues into the next: y's last byte is the next x's first */
        if (i % W != W - 1) {
            int32_t nx[B * T], ny[B * T];
            cf_sampler_batch(&s, i + 1, nx, ny);
            for (int r = 0; r < B; r++) CHECK(nx[r * T] == y[r * T + T - 1], "batch %d row %d: contiguous", (int)i, r);
        }
    }
    CHECK(W >= 2, "the test walks several windows per stream (W = %d)", (int)W);
    cf_sampler s2;
    CHECK(cf_sampler_init(&s2, &b, B, T, 1, 12345) == 0, "init");
    int32_t x2[B * T], y2[B * T];
    cf_sampler_batch(&s, 5, x, y);
    cf_sampler_batch(&s2, 5, x2, y2);
    CHECK(memcmp(x, x2, sizeof x) == 0, "ordered batches do not depend on the seed");
    cf_bytes_close(&b);
}

static void test_errors(const char *path, const char *empty) {
    cf_bytes b;
    const char *missing = "/nonexistent/cf_test/x.bin";
    CHECK(cf_bytes_open(&b, missing) == -1 && strstr(cf_error_msg(), missing) &&
          strstr(cf_error_msg(), "No such file"), "missing file: %s", cf_error_msg());
    CHECK(cf_bytes_open(&b, empty) == -1 && strstr(cf_error_msg(), empty) && strstr(cf_error_msg(), "empty"),
          "empty file: %s", cf_error_msg());
    CHECK(cf_bytes_open(&b, "/tmp") == -1 && strstr(cf_error_msg(), "not a regular file"), "directory: %s",
          cf_error_msg());

    CHECK(cf_bytes_open(&b, path) == 0, "open");
    cf_bytes short_b = b;
    short_b.n = 16;
    cf_sampler s;
    CHECK(cf_sampler_init(&s, &short_b, 2, 16, 0, 1) == -1 && strstr(cf_error_msg(), path) &&
          strstr(cf_error_msg(), "seq_len 16"), "random, 16 bytes for seq_len 16: %s", cf_error_msg());
    CHECK(cf_sampler_init(&s, &short_b, 2, 15, 0, 1) == 0, "random, 16 bytes for seq_len 15");
    short_b.n = 100;   /* 10 streams of 10 bytes */
    CHECK(cf_sampler_init(&s, &short_b, 10, 10, 1, 1) == -1 && strstr(cf_error_msg(), path) &&
          strstr(cf_error_msg(), "stream"), "ordered, streams of 10 bytes for seq_len 10: %s", cf_error_msg());
    CHECK(cf_sampler_init(&s, &short_b, 10, 9, 1, 1) == 0, "ordered, streams of 10 bytes for seq_len 9");
    CHECK(cf_sampler_period(&s) == 1, "one window per stream");
    int32_t x[90], y[90];
    cf_sampler_batch(&s, 0, x, y);
    int32_t x1[90], y1[90];
    cf_sampler_batch(&s, 1, x1, y1);
    CHECK(memcmp(x, x1, sizeof x) == 0, "a period of 1 repeats the same batch");
    CHECK(cf_sampler_init(&s, &b, 0, 8, 0, 1) == -1, "batch 0 is an error");
    cf_bytes_close(&b);
}

int main(void) {
    char path[] = "/tmp/cf_test_data_XXXXXX", empty[] = "/tmp/cf_test_data_XXXXXX";
    int fd = mkstemp(path), fd2 = mkstemp(empty);
    CHECK(fd >= 0 && fd2 >= 0, "temp files");
    close(fd);
    close(fd2);
    size_t n = 1003;   /* not a multiple of the batch: the tail is never read by ordered streams */
    uint8_t *d = make_bytes(n);
    write_file(path, d, n);
    test_random(path, d, n);
    test_ordered(path, d, n);
    test_errors(path, empty);
    free(d);
    unlink(path);
    unlink(empty);
    TEST_MAIN_END();
}
