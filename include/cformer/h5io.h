/* Small HDF5 helpers shared by checkpoints, golden-file tests and tools. Every function returns
 * 0, or -1 with cf_error_msg() naming the file and the dataset. HDF5's own error stack printing
 * is turned off: our one-line messages replace it. */
#ifndef CFORMER_H5IO_H
#define CFORMER_H5IO_H

#include <stdint.h>
#include <hdf5.h>

void  cf_h5_quiet(void);
hid_t cf_h5_open_read(const char *path);                  /* < 0 on error */
/* read a float32 dataset whose shape must equal (ndim, shape); shape NULL accepts any shape
 * with exactly numel elements */
int   cf_h5_read_f32(hid_t f, const char *file, const char *name, float *dst, int ndim, const int *shape, int64_t numel);
int   cf_h5_read_i32(hid_t f, const char *file, const char *name, int32_t *dst, int64_t numel);
/* shape of a dataset (ndim <= 4); -1 when missing */
int   cf_h5_shape(hid_t f, const char *name, int *ndim, int64_t *shape);
int   cf_h5_write_f32(hid_t f, const char *file, const char *name, const float *src, int ndim, const int64_t *shape);
int   cf_h5_read_u64(hid_t f, const char *file, const char *name, uint64_t *dst, int64_t n);
int   cf_h5_read_i64(hid_t f, const char *file, const char *name, int64_t *dst, int64_t n);
int   cf_h5_exists(hid_t f, const char *name);
/* variable-length string dataset or attribute */
int   cf_h5_write_string(hid_t f, const char *file, const char *name, const char *s);
char *cf_h5_read_string(hid_t f, const char *file, const char *name);   /* malloc'd, NULL on error */

/* ---- float64, scalars, attributes, groups ----
 * float64 datasets, scalar (0-d) datasets, attributes, groups. Reads accept a scalar or a
 * one-element 1-D dataset alike, so h5py-written files with either form load. */
int   cf_h5_write_f64(hid_t f, const char *file, const char *name, const double *src, int64_t n);
int   cf_h5_read_f64(hid_t f, const char *file, const char *name, double *dst, int64_t n);
/* a 0-d dataset (h5py reads it as f[name][()]); type is H5T_NATIVE_INT64, _UINT64 or _DOUBLE */
int   cf_h5_write_scalar(hid_t f, const char *file, const char *name, hid_t native_type, const void *v);
int   cf_h5_create_group(hid_t f, const char *file, const char *name);   /* with intermediate groups */
/* attributes of the object at obj_path ("/" for the root) */
int   cf_h5_write_attr_i64(hid_t f, const char *file, const char *obj_path, const char *name, int64_t v);
int   cf_h5_write_attr_string(hid_t f, const char *file, const char *obj_path, const char *name, const char *s);
int   cf_h5_read_attr_i64(hid_t f, const char *file, const char *obj_path, const char *name, int64_t *v);
char *cf_h5_read_attr_string(hid_t f, const char *file, const char *obj_path, const char *name); /* malloc'd */

#endif
