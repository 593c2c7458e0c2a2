/* The activation arena: one mmap'd reservation, bump-allocated, reset every step.
 * Reserving address space costs nothing until pages are touched, so the capacity can be
 * generous while peak RSS still shows what a step really used. */
#include <string.h>
#include <sys/mman.h>
#include "cformer/core.h"

#define CF_ALIGN 64

int cf_arena_init(cf_arena *a, size_t cap) {
    memset(a, 0, sizeof *a);
    cap = (cap + 4095) & ~(size_t)4095;
    void *p = mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return cf_set_error("cannot reserve %zu MB for the activation arena", cap >> 20);
    a->base = p;
    a->cap = cap;
    return 0;
}

void cf_arena_free(cf_arena *a) {
    if (a->base) munmap(a->base, a->cap);
    memset(a, 0, sizeof *a);
}

void *cf_arena_alloc(cf_arena *a, size_t n) {
    size_t start = (a->used + CF_ALIGN - 1) & ~(size_t)(CF_ALIGN - 1);
    CF_ASSERT(start + n <= a->cap && start + n >= start,
              "activation arena full: %zu MB reserved, %zu MB more asked; raise the arena size",
              a->cap >> 20, n >> 20);
    a->used = start + n;
    if (a->used > a->peak) a->peak = a->used;
    return a->base + start;
}
