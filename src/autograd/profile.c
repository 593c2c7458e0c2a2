/* The profiler (core.h): time, calls and FLOPs per op kind and direction, charged by the tape.
 * docs/architecture.md section 13 says how `cformer bench --profile` reports them. */
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

void cf_prof_start(cf_prof *p) {
    settle(p);
    p->dir = CF_PROF_FORWARD;
    p->last = cf_prof_now();
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

void cf_prof_backward(cf_prof *p, const cf_node *n, double t0, double c0) {
    settle(p);
    double sec = cf_prof_now() - t0 - (p->charged - c0);
    if (sec < 0) sec = 0;
    p->charged += sec;
    cf_prof_cell *c = &p->cell[n->op][CF_PROF_BACKWARD];
    c->sec += sec;
    c->calls++;
    if (cf_op_table[n->op].flops) {
        double f = -1, b = -1;
        cf_op_table[n->op].flops(n, 1, &f, &b);
        add(c, sec, b);
    }
}
