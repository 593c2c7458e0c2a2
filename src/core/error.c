/* The two tiers of errors (core.h): cf_die for programming errors, cf_set_error for bad input. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cformer/core.h"

void cf_die(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "cformer: internal error at %s:%d: ", file, line);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    abort();
}

static _Thread_local char err_buf[1024];

/* The message is one line whatever the input it quotes holds (a key, a string value or a file name
 * with a newline in it): control bytes other than tab are written as \n, \r or \xHH. */
int cf_set_error(const char *fmt, ...) {
    char raw[sizeof err_buf];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(raw, sizeof raw, fmt, ap);
    va_end(ap);
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)raw; *p; p++) {
        char esc[5];
        int n = (*p >= 0x20 && *p != 0x7f) || *p == '\t' ? (esc[0] = (char)*p, 1)
              : *p == '\n' || *p == '\r' ? snprintf(esc, sizeof esc, "\\%c", *p == '\n' ? 'n' : 'r')
              : snprintf(esc, sizeof esc, "\\x%02x", *p);
        if (o + (size_t)n >= sizeof err_buf) break;
        memcpy(err_buf + o, esc, (size_t)n);
        o += (size_t)n;
    }
    err_buf[o] = 0;
    return -1;
}

const char *cf_error_msg(void) { return err_buf[0] ? err_buf : "unknown error"; }

void *cf_xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    CF_ASSERT(p, "out of memory allocating %zu bytes", n);
    return p;
}

void *cf_xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    CF_ASSERT(p, "out of memory allocating %zu x %zu bytes", n, size);
    return p;
}
