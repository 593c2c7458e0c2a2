/* The activation arena: one mmap'd reservation, bump-allocated, reset every step.
 * Reserving address space costs nothing until pages are touched, so the capacity can be
 * generous while peak RSS still shows what a step really used. */
#include <omp.h>
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

#define ZERO_PAR_MIN ((size_t)1 << 18)   /* bytes below which one thread zeroes faster than a team */
#define PAGE 4096

void cf_zero_parallel(void *p, size_t n) {
    if (n < ZERO_PAR_MIN) {
        memset(p, 0, n);
        return;
    }
    char *c = p;
    #pragma omp parallel
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        size_t lo = n / (size_t)nt * (size_t)t, hi = t == nt - 1 ? n : n / (size_t)nt * (size_t)(t + 1);
        memset(c + lo, 0, hi - lo);
    }
}

void *cf_arena_alloc(cf_arena *a, size_t n) {
    size_t start = (a->used + CF_ALIGN - 1) & ~(size_t)(CF_ALIGN - 1);
    CF_ASSERT(start + n <= a->cap && start + n >= start,
              "activation arena full: %zu MB reserved, %zu MB more asked; raise the arena size",
              a->cap >> 20, n >> 20);
    a->used = start + n;
    if (a->used > a->peak) a->peak = a->used;
    /* the first step grows the arena: its new pages are touched by the threads of the static
     * schedule, before an op's serial part (a gradient's zeroing, say) can touch them from one */
    if (a->used > a->touched) {
        size_t end = (a->used + PAGE - 1) & ~(size_t)(PAGE - 1);
        if (end > a->cap) end = a->cap;
        cf_zero_parallel(a->base + a->touched, end - a->touched);
        a->touched = end;
    }
    return a->base + start;
}
