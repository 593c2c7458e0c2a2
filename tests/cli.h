/* Running the cformer binary from a test (the CLI tests): a child with its standard streams in
 * files, its exit status, and the check that bad input ends in exit status 2 with one line on
 * stderr. Each test sets the paths (t_cli) once, under its own scratch directory. */
#ifndef CFORMER_TESTS_CLI_H
#define CFORMER_TESTS_CLI_H

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include "test.h"

typedef struct t_cli_paths {
    const char *bin;                   /* the cformer binary */
    const char *in, *out, *err;        /* stdin (NULL: /dev/null), stdout and stderr of the child */
} t_cli_paths;
static t_cli_paths t_cli;

static inline int t_count_lines(const char *s) {
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

/* start `cformer args...` (args ends with NULL) */
static inline pid_t t_spawn(const char *const *args) {
    const char *argv[48] = {t_cli.bin};
    int n = 1;
    for (; args[n - 1]; n++) {
        CF_ASSERT(n < 47, "t_spawn: too many arguments");
        argv[n] = args[n - 1];
    }
    argv[n] = NULL;
    fflush(stdout);
    pid_t p = fork();
    CF_ASSERT(p >= 0, "fork: %s", strerror(errno));
    if (p == 0) {
        int i = open(t_cli.in ? t_cli.in : "/dev/null", O_RDONLY);
        int o = open(t_cli.out, O_WRONLY | O_CREAT | O_TRUNC, 0644), e = open(t_cli.err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(i, 0);
        dup2(o, 1);
        dup2(e, 2);
        execv(t_cli.bin, (char *const *)argv);
        _exit(127);
    }
    return p;
}

/* the exit status of child p (128 + the signal that ended it) */
static inline int t_wait(pid_t p) {
    int st;
    waitpid(p, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static inline int t_run(const char *const *args) { return t_wait(t_spawn(args)); }

/* exit status 2 and exactly one stderr line "cformer: ...want..."; with quiet_out, nothing on stdout */
static inline void t_expect_bad(const char *what, const char *const *args, const char *want, int quiet_out) {
    int rc = t_run(args);
    char *err = t_read_text(t_cli.err), *out = t_read_text(t_cli.out);
    CHECK(rc == 2 && t_count_lines(err) == 1 && !strncmp(err, "cformer: ", 9) && strstr(err, want) &&
              (!quiet_out || !*out),
          "%s: status %d, stderr \"%s\" (want exit 2 and one line containing \"%s\"%s)", what, rc, err, want,
          quiet_out ? ", nothing on stdout" : "");
    printf("bad input %-26s -> exit %d: %s", what, rc, err);
    free(err);
    free(out);
}

#endif
