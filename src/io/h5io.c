/* HDF5 helpers (h5io.h). Intermediate groups are created on write ("params/blocks.0.ln1.weight"
 * makes /params). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cformer/core.h"
#include "cformer/h5io.h"

void cf_h5_quiet(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

hid_t cf_h5_open_read(const char *path) {
    cf_h5_quiet();
#if H5_VERSION_GE(1, 12, 0)
    htri_t ok = H5Fis_accessible(path, H5P_DEFAULT);
#else
    htri_t ok = H5Fis_hdf5(path);
#endif
    if (ok <= 0) {
        cf_set_error("%s: not an HDF5 file (missing, unreadable or truncated)", path);
        return -1;
    }
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) cf_set_error("%s: cannot open as HDF5", path);
    return f;
}

int cf_h5_exists(hid_t f, const char *name) {
    /* H5Lexists needs each intermediate link to exist too */
    char buf[512];
    snprintf(buf, sizeof buf, "%s", name);
    for (char *p = buf + 1; ; p++) {
        char c = *p;
        if (c == '/' || c == 0) {
            *p = 0;
            if (H5Lexists(f, buf, H5P_DEFAULT) <= 0) return 0;
            *p = c;
            if (!c) return 1;
        }
    }
}

int cf_h5_shape(hid_t f, const char *name, int *ndim, int64_t *shape) {
    if (!cf_h5_exists(f, name)) return -1;
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    if (d < 0) return -1;
    hid_t s = H5Dget_space(d);
    int nd = H5Sget_simple_extent_ndims(s);
    hsize_t dims[8];
    if (nd < 0 || nd > 4) { H5Sclose(s); H5Dclose(d); return -1; }
    H5Sget_simple_extent_dims(s, dims, NULL);
    *ndim = nd;
    for (int i = 0; i < nd; i++) shape[i] = (int64_t)dims[i];
    H5Sclose(s);
    H5Dclose(d);
    return 0;
}

/* Bytes one value of type t takes in file f: a variable-length value is stored as its length (4 bytes)
 * and a global heap ID (an address and a 4-byte index; HDF5 file format, "Global Heap ID"). */
static size_t stored_size(hid_t f, hid_t t) {
    if (H5Tis_variable_str(t) <= 0 && H5Tget_class(t) != H5T_VLEN) return H5Tget_size(t);
    size_t addr = 8, len = 8;
    hid_t fcpl = H5Fget_create_plist(f);
    if (fcpl >= 0) {
        H5Pget_sizes(fcpl, &addr, &len);
        H5Pclose(fcpl);
    }
    return 4 + addr + 4;
}

/* Whether an object of type t and dataspace s (both closed here) that stores `have` bytes holds fewer
 * than its values take; the message then names it (`what`). libhdf5 1.10 copies the values out of
 * such an object past the end of what it read (a damaged or crafted datatype size or layout). */
static int stores_too_little(hid_t f, hid_t t, hid_t s, hsize_t have, const char *file, const char *what) {
    hssize_t n = H5Sget_simple_extent_npoints(s);
    size_t need = t < 0 || n < 0 ? 0 : stored_size(f, t);
    H5Sclose(s);
    H5Tclose(t);
    if (need && (hsize_t)n <= have / need) return 0;
    cf_set_error("%s: %s is damaged (%llu bytes for %lld values of %zu)", file, what, (unsigned long long)have,
                 (long long)n, need);
    return 1;
}

/* the dataset, or -1 with a message when it cannot be opened, or when it is compact (its values in
 * its object header) and stores fewer bytes than they take */
static hid_t open_dataset(hid_t f, const char *file, const char *name) {
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    if (d < 0) {
        cf_set_error("%s: cannot open dataset /%s", file, name);
        return -1;
    }
    hid_t p = H5Dget_create_plist(d);
    int compact = p >= 0 && H5Pget_layout(p) == H5D_COMPACT;
    if (p >= 0) H5Pclose(p);
    char what[600];
    snprintf(what, sizeof what, "/%s", name);
    if (compact && stores_too_little(f, H5Dget_type(d), H5Dget_space(d), H5Dget_storage_size(d), file, what)) {
        H5Dclose(d);
        return -1;
    }
    return d;
}

/* the attribute, or -1 with a message when the object or the attribute is missing, or when it stores
 * fewer bytes than its values take */
static hid_t open_attr(hid_t f, const char *file, const char *obj_path, const char *name) {
    if (H5Aexists_by_name(f, obj_path, name, H5P_DEFAULT) <= 0) {
        cf_set_error("%s: missing attribute %s of %s", file, name, obj_path);
        return -1;
    }
    hid_t a = H5Aopen_by_name(f, obj_path, name, H5P_DEFAULT, H5P_DEFAULT);
    if (a < 0) {
        cf_set_error("%s: cannot open attribute %s of %s", file, name, obj_path);
        return -1;
    }
    char what[600];
    snprintf(what, sizeof what, "attribute %s of %s", name, obj_path);
    if (stores_too_little(f, H5Aget_type(a), H5Aget_space(a), H5Aget_storage_size(a), file, what)) {
        H5Aclose(a);
        return -1;
    }
    return a;
}

/* want_f32: a float dataset must be 4 bytes wide (parameters are float32, and a float64 one is
 * a file made by something else); float64 reads accept any float width, widening being exact */
static int read_any(hid_t f, const char *file, const char *name, hid_t memtype, void *dst, int64_t numel,
                    int ndim, const int *shape, H5T_class_t want, int want_f32) {
    if (!cf_h5_exists(f, name)) return cf_set_error("%s: missing dataset /%s", file, name);
    hid_t d = open_dataset(f, file, name);
    if (d < 0) return -1;
    hid_t s = H5Dget_space(d), t = H5Dget_type(d);
    int rc = 0, nd = H5Sget_simple_extent_ndims(s);
    hsize_t dims[8] = {0};
    int64_t n = 1;
    if (nd < 0 || nd > 8) rc = cf_set_error("%s: /%s: unreadable shape", file, name);
    else {
        H5Sget_simple_extent_dims(s, dims, NULL);
        for (int i = 0; i < nd; i++) n *= (int64_t)dims[i];
    }
    if (!rc && H5Tget_class(t) != want)
        rc = cf_set_error("%s: /%s: wrong type (expected %s)", file, name, want == H5T_FLOAT ? "float" : "integer");
    if (!rc && want == H5T_FLOAT && want_f32 && H5Tget_size(t) != 4)
        rc = cf_set_error("%s: /%s: wrong type (expected float32)", file, name);
    if (!rc && shape) {
        int ok = nd == ndim;
        for (int i = 0; ok && i < nd; i++) ok = (int64_t)dims[i] == shape[i];
        if (!ok) {
            char got[96] = "", exp[96] = "";
            for (int i = 0; i < nd; i++) snprintf(got + strlen(got), sizeof got - strlen(got), i ? ", %llu" : "%llu", (unsigned long long)dims[i]);
            for (int i = 0; i < ndim; i++) snprintf(exp + strlen(exp), sizeof exp - strlen(exp), i ? ", %d" : "%d", shape[i]);
            rc = cf_set_error("%s: /%s: shape (%s), expected (%s)", file, name, got, exp);
        }
    }
    if (!rc && n != numel) rc = cf_set_error("%s: /%s: %lld elements, expected %lld", file, name, (long long)n, (long long)numel);
    if (!rc && H5Dread(d, memtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, dst) < 0)
        rc = cf_set_error("%s: /%s: read failed (corrupt file?)", file, name);
    H5Tclose(t);
    H5Sclose(s);
    H5Dclose(d);
    return rc;
}

int cf_h5_read_f32(hid_t f, const char *file, const char *name, float *dst, int ndim, const int *shape, int64_t numel) {
    return read_any(f, file, name, H5T_NATIVE_FLOAT, dst, numel, ndim, shape, H5T_FLOAT, 1);
}
int cf_h5_read_i32(hid_t f, const char *file, const char *name, int32_t *dst, int64_t numel) {
    return read_any(f, file, name, H5T_NATIVE_INT32, dst, numel, 0, NULL, H5T_INTEGER, 0);
}
int cf_h5_read_u64(hid_t f, const char *file, const char *name, uint64_t *dst, int64_t n) {
    return read_any(f, file, name, H5T_NATIVE_UINT64, dst, n, 0, NULL, H5T_INTEGER, 0);
}
int cf_h5_read_i64(hid_t f, const char *file, const char *name, int64_t *dst, int64_t n) {
    return read_any(f, file, name, H5T_NATIVE_INT64, dst, n, 0, NULL, H5T_INTEGER, 0);
}

/* a dataset of dataspace s (closed here) named name, with intermediate groups, from src */
static int write_space(hid_t f, const char *file, const char *name, hid_t filetype, hid_t memtype,
                       const void *src, hid_t s) {
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(lcpl, 1);
    hid_t d = H5Dcreate2(f, name, filetype, s, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    int rc = 0;
    if (d < 0 || H5Dwrite(d, memtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, src) < 0)
        rc = cf_set_error("%s: cannot write /%s (disk full?)", file, name);
    if (d >= 0) H5Dclose(d);
    H5Sclose(s);
    H5Pclose(lcpl);
    return rc;
}

static int write_any(hid_t f, const char *file, const char *name, hid_t filetype, hid_t memtype,
                     const void *src, int ndim, const hsize_t *dims) {
    return write_space(f, file, name, filetype, memtype, src, H5Screate_simple(ndim, dims, NULL));
}

int cf_h5_write_f32(hid_t f, const char *file, const char *name, const float *src, int ndim, const int64_t *shape) {
    hsize_t dims[4];
    for (int i = 0; i < ndim; i++) dims[i] = (hsize_t)shape[i];
    return write_any(f, file, name, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, src, ndim, dims);
}

int cf_h5_write_string(hid_t f, const char *file, const char *name, const char *str) {
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    H5Tset_cset(t, H5T_CSET_UTF8);
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(lcpl, 1);
    hid_t s = H5Screate(H5S_SCALAR);
    hid_t d = H5Dcreate2(f, name, t, s, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    int rc = 0;
    if (d < 0 || H5Dwrite(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, &str) < 0)
        rc = cf_set_error("%s: cannot write /%s (disk full?)", file, name);
    if (d >= 0) H5Dclose(d);
    H5Sclose(s);
    H5Pclose(lcpl);
    H5Tclose(t);
    return rc;
}

char *cf_h5_read_string(hid_t f, const char *file, const char *name) {
    /* a dataset, or else an attribute of the root group (the golden files keep "config" there) */
    int is_attr = !cf_h5_exists(f, name);
    if (is_attr && H5Aexists(f, name) <= 0) { cf_set_error("%s: missing /%s", file, name); return NULL; }
    hid_t o = is_attr ? open_attr(f, file, "/", name) : open_dataset(f, file, name);
    if (o < 0) return NULL;
    hid_t t = is_attr ? H5Aget_type(o) : H5Dget_type(o);
    char *out = NULL;
    if (H5Tget_class(t) != H5T_STRING) {
        cf_set_error("%s: /%s: not a string", file, name);
    } else if (H5Tis_variable_str(t) > 0) {
        hid_t mt = H5Tcopy(H5T_C_S1);
        H5Tset_size(mt, H5T_VARIABLE);
        H5Tset_cset(mt, H5Tget_cset(t));         /* HDF5 converts no character sets */
        char *s = NULL;
        herr_t e = is_attr ? H5Aread(o, mt, &s) : H5Dread(o, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, &s);
        if (e >= 0 && s) { out = strdup(s); H5free_memory(s); }
        else cf_set_error("%s: /%s: unreadable string", file, name);
        H5Tclose(mt);
    } else {
        size_t n = H5Tget_size(t);
        out = cf_xcalloc(n + 1, 1);
        herr_t e = is_attr ? H5Aread(o, t, out) : H5Dread(o, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, out);
        if (e < 0) { free(out); out = NULL; cf_set_error("%s: /%s: unreadable string", file, name); }
    }
    H5Tclose(t);
    if (is_attr) H5Aclose(o); else H5Dclose(o);
    return out;
}

/* ---- float64, scalars, attributes, groups ------------------------------------------------------------------ */
int cf_h5_write_f64(hid_t f, const char *file, const char *name, const double *src, int64_t n) {
    hsize_t dims[1] = {(hsize_t)n};
    return write_any(f, file, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, src, 1, dims);
}

int cf_h5_read_f64(hid_t f, const char *file, const char *name, double *dst, int64_t n) {
    return read_any(f, file, name, H5T_NATIVE_DOUBLE, dst, n, 0, NULL, H5T_FLOAT, 0);
}

/* the little-endian file type that stores a native one */
static hid_t file_type_of(hid_t native) {
    if (H5Tequal(native, H5T_NATIVE_INT64) > 0) return H5T_STD_I64LE;
    if (H5Tequal(native, H5T_NATIVE_UINT64) > 0) return H5T_STD_U64LE;
    if (H5Tequal(native, H5T_NATIVE_DOUBLE) > 0) return H5T_IEEE_F64LE;
    if (H5Tequal(native, H5T_NATIVE_FLOAT) > 0) return H5T_IEEE_F32LE;
    return -1;
}

int cf_h5_write_scalar(hid_t f, const char *file, const char *name, hid_t native_type, const void *v) {
    hid_t ft = file_type_of(native_type);
    CF_ASSERT(ft >= 0, "cf_h5_write_scalar(%s): unsupported type", name);
    return write_space(f, file, name, ft, native_type, v, H5Screate(H5S_SCALAR));
}

int cf_h5_create_group(hid_t f, const char *file, const char *name) {
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(lcpl, 1);
    hid_t g = H5Gcreate2(f, name, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    H5Pclose(lcpl);
    if (g < 0) return cf_set_error("%s: cannot create group /%s (disk full?)", file, name);
    H5Gclose(g);
    return 0;
}

static int write_attr(hid_t f, const char *file, const char *obj_path, const char *name, hid_t ftype, hid_t mtype,
                      const void *v) {
    hid_t s = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate_by_name(f, obj_path, name, ftype, s, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    int rc = 0;
    if (a < 0 || H5Awrite(a, mtype, v) < 0)
        rc = cf_set_error("%s: cannot write attribute %s of %s (disk full?)", file, name, obj_path);
    if (a >= 0) H5Aclose(a);
    H5Sclose(s);
    return rc;
}

int cf_h5_write_attr_i64(hid_t f, const char *file, const char *obj_path, const char *name, int64_t v) {
    return write_attr(f, file, obj_path, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &v);
}

int cf_h5_write_attr_string(hid_t f, const char *file, const char *obj_path, const char *name, const char *str) {
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    H5Tset_cset(t, H5T_CSET_UTF8);
    int rc = write_attr(f, file, obj_path, name, t, t, &str);
    H5Tclose(t);
    return rc;
}

int cf_h5_read_attr_i64(hid_t f, const char *file, const char *obj_path, const char *name, int64_t *v) {
    hid_t a = open_attr(f, file, obj_path, name);
    if (a < 0) return -1;
    hid_t t = H5Aget_type(a), s = H5Aget_space(a);
    int rc = 0;
    if (H5Tget_class(t) != H5T_INTEGER)
        rc = cf_set_error("%s: attribute %s of %s: wrong type (expected an integer)", file, name, obj_path);
    else if (H5Sget_simple_extent_npoints(s) != 1)
        rc = cf_set_error("%s: attribute %s of %s: expected one value", file, name, obj_path);
    else if (H5Aread(a, H5T_NATIVE_INT64, v) < 0)
        rc = cf_set_error("%s: attribute %s of %s: unreadable", file, name, obj_path);
    H5Sclose(s);
    H5Tclose(t);
    H5Aclose(a);
    return rc;
}

char *cf_h5_read_attr_string(hid_t f, const char *file, const char *obj_path, const char *name) {
    hid_t a = open_attr(f, file, obj_path, name);
    if (a < 0) return NULL;
    hid_t t = H5Aget_type(a), s = H5Aget_space(a);
    char *out = NULL;
    if (H5Tget_class(t) != H5T_STRING || H5Sget_simple_extent_npoints(s) != 1) {
        cf_set_error("%s: attribute %s of %s: not a string", file, name, obj_path);
    } else if (H5Tis_variable_str(t) > 0) {
        hid_t mt = H5Tcopy(H5T_C_S1);
        H5Tset_size(mt, H5T_VARIABLE);
        H5Tset_cset(mt, H5Tget_cset(t));   /* HDF5 converts no character sets: ask for the stored one */
        char *str = NULL;
        if (H5Aread(a, mt, &str) >= 0 && str) { out = strdup(str); H5free_memory(str); }
        else cf_set_error("%s: attribute %s of %s: unreadable string", file, name, obj_path);
        H5Tclose(mt);
    } else {
        /* fixed-length (numpy bytes from h5py): read as stored, NUL-terminate */
        size_t n = H5Tget_size(t);
        out = cf_xcalloc(n + 1, 1);
        if (H5Aread(a, t, out) < 0) {
            free(out);
            out = NULL;
            cf_set_error("%s: attribute %s of %s: unreadable string", file, name, obj_path);
        }
    }
    H5Sclose(s);
    H5Tclose(t);
    H5Aclose(a);
    return out;
}
