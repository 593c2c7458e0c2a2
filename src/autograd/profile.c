/* The profiler (core.h): time, calls and FLOPs per op kind and direction, charged by the tape,
 * and the OpenMP parallel regions inside that time. docs/architecture.md section 13 says how
 * `cformer bench --profile` reports them, docs/perf/README.md how to read the regions. */
#include <dlfcn.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "cformer/core.h"

const char *const cf_prof_dir_names[CF_PROF_DIRS] = {"forward", "backward", "recompute"};

double cf_prof_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void cf_prof_clear(cf_prof *p) {
    memset(p, 0, sizeof *p);
}

static void add(cf_prof_cell *c, double sec, double flops) {
    if (flops >= 0) {
        c->flops += flops;
        c->flop_sec += sec;
    }
}

/* a recorded node's attributes are filled after cf_record returns: its FLOPs are counted at the
 * profiler's next event, when they are there */
static void settle(cf_prof *p) {
    const cf_node *n = p->pend;
    if (!n) return;
    p->pend = NULL;
    double f = -1, b = -1;
    cf_op_table[n->op].flops(n, 1, &f, &b);
    add(&p->cell[n->op][p->pend_dir], p->pend_sec, f);
}

void cf_prof_flush(cf_prof *p) {
    settle(p);
}

/* ---- parallel regions ---------------------------------------------------------------------- */

#define MAX_TEAM 1024                       /* threads whose body time is counted; more: not timed */

typedef void (*gomp_parallel_fn)(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags);
static gomp_parallel_fn real_parallel;
static volatile int par_on;
static cf_prof_par par_now;                 /* written by the main thread only (level-0 regions) */
static struct { double sec; char pad[56]; } body_sec[MAX_TEAM];   /* a cache line per thread */

typedef struct timed { void (*fn)(void *); void *data; int team; } timed;

static void timed_body(void *arg) {
    timed *t = arg;
    int id = omp_get_thread_num();
    double t0 = cf_prof_now();
    t->fn(t->data);
    if (id == 0) t->team = omp_get_num_threads();
    if (id < MAX_TEAM) body_sec[id].sec = cf_prof_now() - t0;
}

/* gcc lowers every `#pragma omp parallel` to this call, and a definition in the program comes
 * before libgomp's; libgomp's own is found once, at load time */
__attribute__((constructor)) static void find_gomp_parallel(void) {
    real_parallel = (gomp_parallel_fn)dlsym(RTLD_NEXT, "GOMP_parallel");
}

void GOMP_parallel(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags);
void GOMP_parallel(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags) {
    if (!real_parallel) {
        fprintf(stderr, "cformer: libgomp's GOMP_parallel not found (link with -fopenmp)\n");
        exit(2);
    }
    if (!par_on || omp_get_level() > 0) {   /* nested regions are part of their outer one */
        real_parallel(fn, data, num_threads, flags);
        return;
    }
    timed t = {fn, data, 1};
    double t0 = cf_prof_now();
    real_parallel(timed_body, &t, num_threads, flags);
    double wall = cf_prof_now() - t0;
    if (num_threads == 1) {
        par_now.solo_regions += 1;
        par_now.solo += wall;
        return;
    }
    par_now.regions += 1;
    par_now.wall += wall;
    par_now.team += wall * t.team;
    for (int i = 0; i < t.team && i < MAX_TEAM; i++) par_now.busy += body_sec[i].sec;
}

void cf_prof_par_count(int on) {
    par_on = on;
}

void cf_prof_par_read(cf_prof_par *out) {
    *out = par_now;
}

void cf_prof_par_add(cf_prof_par *a, const cf_prof_par *b) {
    a->regions += b->regions;
    a->wall += b->wall;
    a->team += b->team;
    a->busy += b->busy;
    a->solo_regions += b->solo_regions;
    a->solo += b->solo;
}

void cf_prof_par_sub(cf_prof_par *a, const cf_prof_par *b) {
    a->regions -= b->regions;
    a->wall -= b->wall;
    a->team -= b->team;
    a->busy -= b->busy;
    a->solo_regions -= b->solo_regions;
    a->solo -= b->solo;
}

/* ---- charging the tape's events -------------------------------------------------------------- */

void cf_prof_resume(cf_prof *p, cf_prof_dir dir) {
    p->dir = dir;
    p->last = cf_prof_now();
    cf_prof_par_read(&p->par_last);
}

void cf_prof_start(cf_prof *p) {
    settle(p);
    cf_prof_resume(p, CF_PROF_FORWARD);
}

void cf_prof_forward(cf_prof *p, cf_op_kind op, cf_tensor *out, int n_in, cf_tensor **in, const cf_node *n) {
    if (p->dir == CF_PROF_BACKWARD) return;    /* an op inside a backward: part of that node's time */
    settle(p);
    double now = cf_prof_now(), sec = now - p->last;
    p->last = now;
    p->charged += sec;
    cf_prof_cell *c = &p->cell[op][p->dir];
    c->sec += sec;
    c->calls++;
    cf_prof_par par, d;
    cf_prof_par_read(&par);
    d = par;
    cf_prof_par_sub(&d, &p->par_last);
    p->par_last = par;
    cf_prof_par_add(&c->par, &d);
    cf_prof_par_add(&p->par_charged, &d);
    int idle = p->idle_op;
    p->idle_op = 0;
    if (!cf_op_table[op].flops || idle) return;   /* a kept or skipped op did none of its FLOPs */
    if (n) {
        p->pend = n;
        p->pend_dir = p->dir;
        p->pend_sec = sec;
        return;
    }
    cf_node shape_only;
    memset(&shape_only, 0, sizeof shape_only);
    shape_only.op = op;
    shape_only.n_in = n_in;
    for (int i = 0; i < n_in; i++) shape_only.in[i] = in[i];
    shape_only.out = out;
    double f = -1, b = -1;
    cf_op_table[op].flops(&shape_only, 0, &f, &b);
    add(c, sec, f);
}

void cf_prof_begin(const cf_prof *p, cf_prof_mark *m) {
    m->t = cf_prof_now();
    m->charged = p->charged;
    cf_prof_par_read(&m->par);
    m->par_charged = p->par_charged;
}

void cf_prof_backward(cf_prof *p, const cf_node *n, const cf_prof_mark *m) {
    settle(p);
    double sec = cf_prof_now() - m->t - (p->charged - m->charged);
    if (sec < 0) sec = 0;
    p->charged += sec;
    cf_prof_cell *c = &p->cell[n->op][CF_PROF_BACKWARD];
    c->sec += sec;
    c->calls++;
    cf_prof_par d, nested = p->par_charged;   /* the regions since m less those nested work was charged */
    cf_prof_par_read(&d);
    cf_prof_par_sub(&d, &m->par);
    cf_prof_par_sub(&nested, &m->par_charged);
    cf_prof_par_sub(&d, &nested);
    cf_prof_par_add(&c->par, &d);
    cf_prof_par_add(&p->par_charged, &d);
    if (cf_op_table[n->op].flops) {
        double f = -1, b = -1;
        cf_op_table[n->op].flops(n, 1, &f, &b);
        add(c, sec, b);
    }
}
