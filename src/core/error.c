/* The two tiers of errors (core.h): cf_die for programming errors, cf_set_error for bad input. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
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

int cf_set_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_buf, sizeof err_buf, fmt, ap);
    va_end(ap);
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
