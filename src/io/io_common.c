/* io module: sample types, HDF5 and libtiff error silencing, small file helpers. */
#include "io_internal.h"

#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <tiffio.h>

double tmd_io_angstrom_per_unit(const char *unit)
{
    char u[32];
    int n = 0;
    for (const char *p = unit; *p && *p != '\n' && *p != '\r' && n < 31; p++)
        if (*p != '[' && *p != ']' && *p != '_' && *p != ' ') u[n++] = *p;
    u[n] = 0;
    if (!strcmp(u, "A") || !strcmp(u, "\xC3\x85") || !strcmp(u, "\xC5") || !strcmp(u, "\\u00C5") ||
        !strcmp(u, "\xE2\x84\xAB") || !strcasecmp(u, "angstrom") || !strcasecmp(u, "angstroms"))
        return 1;
    if (!strcmp(u, "nm") || !strcasecmp(u, "nanometer") || !strcasecmp(u, "nanometers")) return 10;
    if (!strcmp(u, "pm")) return 0.01;
    if (!strcmp(u, "m")) return 1e10;
    if (!strcmp(u, "um") || !strcmp(u, "micron") || !strcmp(u, "\xC2\xB5m") || !strcmp(u, "\\u00B5m") ||
        !strcmp(u, "\xCE\xBCm"))
        return 1e4;
    return 0;
}

const char *tmd_dtype_name(tmd_dtype t)
{
    switch (t) {
    case TMD_U8: return "uint8";
    case TMD_U16: return "uint16";
    case TMD_F32: return "float32";
    case TMD_F64: return "float64";
    case TMD_I8: return "int8";
    case TMD_I32: return "int32";
    case TMD_I64: return "int64";
    case TMD_I16: return "int16";
    case TMD_U32: return "uint32";
    default: return "?";
    }
}

size_t tmd_dtype_size(tmd_dtype t)
{
    switch (t) {
    case TMD_U8: case TMD_I8: return 1;
    case TMD_U16: case TMD_I16: return 2;
    case TMD_F32: case TMD_I32: case TMD_U32: return 4;
    case TMD_F64: case TMD_I64: return 8;
    default: return 0;
    }
}

hid_t tmd_io_h5_native(tmd_dtype t)
{
    switch (t) {
    case TMD_U8: return H5T_NATIVE_UINT8;
    case TMD_U16: return H5T_NATIVE_UINT16;
    case TMD_F32: return H5T_NATIVE_FLOAT;
    case TMD_F64: return H5T_NATIVE_DOUBLE;
    case TMD_I8: return H5T_NATIVE_INT8;
    case TMD_I32: return H5T_NATIVE_INT32;
    case TMD_I64: return H5T_NATIVE_INT64;
    case TMD_I16: return H5T_NATIVE_INT16;
    case TMD_U32: return H5T_NATIVE_UINT32;
    default: return H5I_INVALID_HID;
    }
}

void tmd_io_h5_quiet(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

typedef struct {
    char *buf;
    size_t n;
} errwalk;

static herr_t errwalk_cb(unsigned n, const H5E_error2_t *e, void *data)
{
    errwalk *w = data;
    if (n == 0 && e->desc && e->desc[0]) { /* upward walk: entry 0 is the innermost cause */
        snprintf(w->buf, w->n, "%s", e->desc);
        return 1;
    }
    return 0;
}

void tmd_io_h5_errmsg(char *buf, size_t n)
{
    if (!buf || !n) return;
    buf[0] = 0;
    errwalk w = {buf, n};
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, errwalk_cb, &w);
    /* Trim a trailing newline or period-space clutter. */
    size_t len = strlen(buf);
    while (len && (buf[len - 1] == '\n' || buf[len - 1] == ' ')) buf[--len] = 0;
}

int64_t tmd_io_file_size(const char *path)
{
    struct stat sb;
    if (stat(path, &sb) != 0) return -1;
    return (int64_t)sb.st_size;
}

void tmd_io_tiff_quiet(void)
{
    static int done = 0;
    if (done) return;
    TIFFSetErrorHandler(NULL);
    TIFFSetWarningHandler(NULL);
    TIFFSetErrorHandlerExt(NULL);
    TIFFSetWarningHandlerExt(NULL);
    done = 1;
}
