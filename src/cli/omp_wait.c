/* How the command's OpenMP threads wait (docs/architecture.md section 6, "Waiting threads").
 *
 * A thread that reaches the end of a parallel region before the others waits for them. libgomp's
 * default is to spin about 300000 times before sleeping, which costs nothing on an idle machine
 * and a great deal on a busy one: when another program holds the cores, the spinning waiter takes
 * the core from the very thread it waits for, at every one of the step's many regions (the
 * enwik8-small step ran 6x slower at 2 threads beside two busy processes). A bounded spin keeps
 * the quick hand-over of an idle machine, where a region's threads arrive within microseconds of
 * each other, and then sleeps, leaving the core to whoever can use it.
 *
 * libgomp reads GOMP_SPINCOUNT once, in its initialiser, before main() runs, and the C library
 * resets the environment from the kernel's copy after an executable's pre-initialisers: the only
 * way to give libgomp another default is to start the program again with it. A user's
 * OMP_WAIT_POLICY or GOMP_SPINCOUNT is left as it is (and then nothing is restarted). */
#include <stdlib.h>
#include <unistd.h>
#include "omp_wait.h"

#define CF_OMP_SPINCOUNT "1000"

void cf_cli_omp_wait_default(char **argv) {
    if (getenv("OMP_WAIT_POLICY") || getenv("GOMP_SPINCOUNT")) return;
    if (setenv("GOMP_SPINCOUNT", CF_OMP_SPINCOUNT, 0)) return;
    execv("/proc/self/exe", argv);
    /* no restart (no /proc, say): run on with libgomp's default */
}
