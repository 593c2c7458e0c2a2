/* Internal to src/io/: the file handling that checkpoint.c shares with run_files.c. */
#ifndef CFORMER_IO_RUN_FILES_H
#define CFORMER_IO_RUN_FILES_H

#include <stddef.h>
#include <stdint.h>

/* path's directory ("." when none) and base name */
void cf_io_split_path(const char *path, char *dir, size_t dn, char *base, size_t bn);
/* ".<base>.tmp.<pid>" beside path, and path's directory */
int  cf_io_temp_name(const char *path, char *tmp, size_t n, char *dir, size_t dn);
/* fsync a file or a directory; label names the checkpoint in the error */
int  cf_io_fsync_path(const char *path, const char *label, int is_dir);
/* an integer from the environment (0 when unset): the fault-injection switches of the tests */
long cf_io_env_long(const char *name);
/* bytes[n] into path (created), fsync'ed and closed; a short write is an error naming the file */
int  cf_io_write_file(const char *path, const uint8_t *bytes, size_t n, const char *label);

#endif
