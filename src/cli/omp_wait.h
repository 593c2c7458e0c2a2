/* The command's default for how OpenMP threads wait (omp_wait.c). */
#ifndef CFORMER_CLI_OMP_WAIT_H
#define CFORMER_CLI_OMP_WAIT_H

/* Unless OMP_WAIT_POLICY or GOMP_SPINCOUNT is set, restart the program (argv) with a bounded
 * GOMP_SPINCOUNT; returns only when nothing was restarted. Call first thing in main(). */
void cf_cli_omp_wait_default(char **argv);

#endif
