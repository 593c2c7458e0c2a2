/* The files of a run directory (checkpoint.h): temporary names beside their target, durable writes
 * and renames, latest.h5 published as a second name of a finished checkpoint, --resume resolved,
 * leftovers of interrupted saves removed, old step files rotated out. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "cformer/checkpoint.h"
#include "run_files.h"

/* ---- paths ---------------------------------------------------------------------------------------- */
void cf_io_split_path(const char *path, char *dir, size_t dn, char *base, size_t bn) {
    const char *slash = strrchr(path, '/');
    if (!slash) {
        snprintf(dir, dn, ".");
        snprintf(base, bn, "%s", path);
    } else {
        int len = slash == path ? 1 : (int)(slash - path);   /* "/x.h5" lives in "/" */
        snprintf(dir, dn, "%.*s", len, path);
        snprintf(base, bn, "%s", slash + 1);
    }
}

/* ".<base>.tmp.<pid>" beside path: never a checkpoint's name (those do not start with a dot) */
int cf_io_temp_name(const char *path, char *tmp, size_t n, char *dir, size_t dn) {
    char base[512];
    cf_io_split_path(path, dir, dn, base, sizeof base);
    if (!base[0]) return cf_set_error("%s: not a file name", path);
    if ((size_t)snprintf(tmp, n, "%s/.%s.tmp.%ld", dir, base, (long)getpid()) >= n)
        return cf_set_error("%s: path too long", path);
    return 0;
}

int cf_io_fsync_path(const char *path, const char *label, int is_dir) {
    int fd = open(path, (is_dir ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
    if (fd < 0) return cf_set_error("%s: cannot open %s for fsync: %s", label, path, strerror(errno));
    int rc = fsync(fd), e = errno;
    close(fd);
    /* some file systems cannot fsync a directory (EINVAL); the rename is then as durable as they allow */
    if (rc && !(is_dir && (e == EINVAL || e == ENOTSUP)))
        return cf_set_error("%s: fsync of %s failed: %s", label, path, strerror(e));
    return 0;
}

long cf_io_env_long(const char *name) {
    const char *v = getenv(name);
    return v && *v ? strtol(v, NULL, 10) : 0;
}

/* bytes[n] into path (created), fsync'ed and closed; a short write (a full disk) is an error
 * naming the file. CF_CKPT_FAIL_DISK=1 makes the write stop half way with ENOSPC, as a full disk
 * does (tests). */
int cf_io_write_file(const char *path, const uint8_t *bytes, size_t n, const char *label) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return cf_set_error("%s: cannot create %s: %s", label, path, strerror(errno));
    size_t limit = cf_io_env_long("CF_CKPT_FAIL_DISK") > 0 ? n / 2 : n;
    int e = 0;
    for (size_t off = 0; off < n && !e;) {
        ssize_t w = off < limit ? write(fd, bytes + off, (limit < n ? limit : n) - off) : -1;
        if (off >= limit) errno = ENOSPC;
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) e = w < 0 ? errno : EIO;
        else off += (size_t)w;
    }
    if (!e && fsync(fd)) e = errno;
    if (close(fd) && !e) e = errno;
    if (e) return cf_set_error("%s: writing %s failed: %s", label, path, strerror(e));
    return 0;
}

/* copy src to dst (created), fsync'ed; for file systems without hard links */
static int copy_file(const char *src, const char *dst, const char *label) {
    int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0) return cf_set_error("%s: cannot read %s: %s", label, src, strerror(errno));
    int out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0) {
        int e = errno;
        close(in);
        return cf_set_error("%s: cannot create %s: %s", label, dst, strerror(e));
    }
    char buf[1 << 16];
    int rc = 0;
    for (;;) {
        ssize_t n = read(in, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) { rc = cf_set_error("%s: reading %s: %s", label, src, strerror(errno)); break; }
        if (n == 0) break;
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(out, buf + off, (size_t)(n - off));
            if (w < 0 && errno == EINTR) continue;
            if (w < 0) { rc = cf_set_error("%s: writing %s: %s", label, dst, strerror(errno)); break; }
            off += w;
        }
        if (rc) break;
    }
    if (!rc && fsync(out)) rc = cf_set_error("%s: fsync of %s failed: %s", label, dst, strerror(errno));
    close(in);
    if (close(out) && !rc) rc = cf_set_error("%s: writing %s: %s", label, dst, strerror(errno));
    return rc;
}

int cf_ckpt_publish(const char *src, const char *dst) {
    char tmp[1400], dir[1024];
    if (cf_io_temp_name(dst, tmp, sizeof tmp, dir, sizeof dir)) return -1;
    unlink(tmp);
    /* a second name for the same bytes costs nothing and is as durable as the first */
    if (link(src, tmp) && copy_file(src, tmp, dst)) {
        unlink(tmp);
        return -1;
    }
    if (rename(tmp, dst)) {
        int e = errno;
        unlink(tmp);
        return cf_set_error("%s: cannot rename %s into place: %s", dst, tmp, strerror(e));
    }
    return cf_io_fsync_path(dir, dst, 1);
}

int cf_ckpt_resolve(const char *arg, char *path, size_t path_size, char *run_dir, size_t run_dir_size) {
    struct stat st;
    if (stat(arg, &st)) return cf_set_error("resume: \"%s\": %s", arg, strerror(errno));
    if (!S_ISDIR(st.st_mode)) {
        if ((size_t)snprintf(path, path_size, "%s", arg) >= path_size) return cf_set_error("resume: \"%s\": path too long", arg);
        run_dir[0] = 0;
        return 0;
    }
    size_t n = strlen(arg);
    while (n > 1 && arg[n - 1] == '/') n--;   /* "run/" and "run" are the same directory */
    if ((size_t)snprintf(path, path_size, "%.*s/ckpt/latest.h5", (int)n, arg) >= path_size ||
        (size_t)snprintf(run_dir, run_dir_size, "%.*s", (int)n, arg) >= run_dir_size)
        return cf_set_error("resume: \"%s\": path too long", arg);
    if (stat(path, &st)) return cf_set_error("resume: run directory \"%s\" has no checkpoint (%s: %s)", run_dir, path,
                                            strerror(errno));
    return 0;
}

/* ---- directory housekeeping ------------------------------------------------------------------------- */
/* ".<name>.tmp.<digits>": the temporary names of cf_io_temp_name() */
static int is_temp_name(const char *n) {
    const char *t = strstr(n, ".tmp.");
    if (n[0] != '.' || !t || !t[5]) return 0;
    for (const char *p = t + 5; *p; p++)
        if (*p < '0' || *p > '9') return 0;
    return 1;
}

int cf_ckpt_remove_temps(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    int removed = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (!is_temp_name(e->d_name)) continue;
        char p[1400];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        if (!unlink(p)) removed++;
    }
    closedir(d);
    return removed;
}

/* N of "step_<N>.h5" (digits only), or -1 */
static int64_t step_of(const char *n) {
    if (strncmp(n, "step_", 5)) return -1;
    const char *p = n + 5;
    int64_t v = 0;
    if (*p < '0' || *p > '9') return -1;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (v > (INT64_MAX - 9) / 10) return -1;
        v = v * 10 + (*p - '0');
    }
    return strcmp(p, ".h5") ? -1 : v;
}

static int cmp_desc_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x < y) - (x > y);
}

int cf_ckpt_rotate(const char *ckpt_dir, int64_t newest_step, int keep) {
    DIR *d = opendir(ckpt_dir);
    if (!d) return cf_set_error("%s: cannot list: %s", ckpt_dir, strerror(errno));
    int64_t *older = NULL;
    int n = 0, cap = 0;
    for (struct dirent *e; (e = readdir(d));) {
        int64_t s = step_of(e->d_name);
        if (s < 0 || s >= newest_step) continue;   /* later steps (an earlier run went further) are kept */
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            int64_t *t = realloc(older, (size_t)cap * sizeof *older);
            CF_ASSERT(t, "out of memory");
            older = t;
        }
        older[n++] = s;
    }
    closedir(d);
    if (n > 1) qsort(older, (size_t)n, sizeof *older, cmp_desc_i64);   /* older is NULL when n == 0 */
    int rc = 0;
    for (int i = keep - 1 > 0 ? keep - 1 : 0; i < n; i++) {
        char p[1400];
        snprintf(p, sizeof p, "%s/step_%lld.h5", ckpt_dir, (long long)older[i]);
        if (unlink(p) && errno != ENOENT) rc = cf_set_error("%s: cannot delete: %s", p, strerror(errno));
    }
    free(older);
    return rc;
}
