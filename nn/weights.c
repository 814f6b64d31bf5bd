/* Weights files: format detection, the nn_weights container, lookup and conversion to float32.
 * The format readers live in safetensors.c and torch_pth.c. */
#include "nn/weights.h"
#include "nn/tfjs.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static const struct { const char *name; size_t size; } dtypes[] = {
    [NN_F32] = {"F32", 4}, [NN_F64] = {"F64", 8}, [NN_F16] = {"F16", 2}, [NN_BF16] = {"BF16", 2},
    [NN_I64] = {"I64", 8}, [NN_I32] = {"I32", 4}, [NN_I16] = {"I16", 2}, [NN_I8] = {"I8", 1},
    [NN_U8] = {"U8", 1},   [NN_BOOL] = {"BOOL", 1},
};
#define NDTYPES (sizeof dtypes / sizeof dtypes[0])

const char *nn_dtype_name(nn_dtype t) { return (unsigned)t < NDTYPES ? dtypes[t].name : "?"; }

size_t nn_dtype_size(nn_dtype t) { return (unsigned)t < NDTYPES ? dtypes[t].size : 0; }

/* Makes room for one more element. The capacity is not stored: it is 8, then each power of two
 * that count reaches, so the array grows exactly when count is 0 or such a power. */
static int grow(void **arr, int count, size_t elem)
{
    if (count && (count < 8 || (count & (count - 1))))
        return 0;
    if (count > INT_MAX / 2)
        return -1;
    void *p = realloc(*arr, (size_t)(count ? 2 * count : 8) * elem);
    if (!p)
        return -1;
    *arr = p;
    return 0;
}

nn_weight_entry *nn_weights_add(nn_weights *w, const char *name, nn_dtype dtype, int ndim, const int64_t *shape,
                                nn_err *e)
{
    size_t numel = 1, bytes;
    if (ndim < 0 || ndim > NN_MAX_DIMS) {
        nn_errf(e, "tensor '%s' has %d dimensions (at most %d supported)", name, ndim, NN_MAX_DIMS);
        return NULL;
    }
    for (int d = 0; d < ndim; d++)
        if (shape[d] < 0 || __builtin_mul_overflow(numel, (size_t)shape[d], &numel)) {
            nn_errf(e, "tensor '%s' has an invalid shape", name);
            return NULL;
        }
    if (__builtin_mul_overflow(numel, nn_dtype_size(dtype), &bytes)) {
        nn_errf(e, "tensor '%s' is too large", name);
        return NULL;
    }
    if (grow((void **)&w->entries, w->count, sizeof *w->entries)) {
        nn_errf(e, "out of memory");
        return NULL;
    }
    nn_weight_entry *t = &w->entries[w->count];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    int skip = w->want && !w->want(name, w->want_arg);
    t->data = skip ? NULL : nn_alloc(bytes);
    if (!t->name || (!skip && !t->data)) {
        free(t->name);
        nn_free(t->data);
        nn_errf(e, "out of memory for tensor '%s' (%zu bytes)", name, bytes);
        return NULL;
    }
    t->dtype = dtype;
    t->ndim = ndim;
    if (ndim)
        memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
    t->numel = numel;
    w->count++;
    return t;
}

int nn_weights_add_meta(nn_weights *w, const char *key, const char *str, int is_number, double num, nn_err *e)
{
    if (grow((void **)&w->meta, w->meta_count, sizeof *w->meta))
        return nn_errf(e, "out of memory");
    nn_weight_meta *m = &w->meta[w->meta_count];
    m->key = strdup(key);
    m->str = strdup(str);
    if (!m->key || !m->str) {
        free(m->key);
        free(m->str);
        return nn_errf(e, "out of memory");
    }
    m->is_number = is_number;
    m->num = num;
    w->meta_count++;
    return 0;
}

void nn_weights_free(nn_weights *w)
{
    for (int i = 0; i < w->count; i++) {
        free(w->entries[i].name);
        nn_free(w->entries[i].data);
    }
    for (int i = 0; i < w->meta_count; i++) {
        free(w->meta[i].key);
        free(w->meta[i].str);
    }
    free(w->entries);
    free(w->meta);
    free(w->path);
    memset(w, 0, sizeof *w);
}

int nn_weights_select_prefix(nn_weights *w, const char *prefix)
{
    size_t len = strlen(prefix);
    int kept = 0;
    for (int i = 0; i < w->count; i++) {
        nn_weight_entry *t = &w->entries[i];
        if (strncmp(t->name, prefix, len)) {
            free(t->name);
            nn_free(t->data);
            continue;
        }
        memmove(t->name, t->name + len, strlen(t->name + len) + 1);
        w->entries[kept++] = *t;
    }
    w->count = kept;
    return kept;
}

const nn_weight_entry *nn_weights_find(const nn_weights *w, const char *name)
{
    for (int i = 0; i < w->count; i++)
        if (!strcmp(w->entries[i].name, name))
            return &w->entries[i];
    return NULL;
}

const nn_weight_meta *nn_weights_meta(const nn_weights *w, const char *key)
{
    for (int i = 0; i < w->meta_count; i++)
        if (!strcmp(w->meta[i].key, key))
            return &w->meta[i];
    return NULL;
}

/* ---- reading ---- */

/* Maps the file read-only: parsing copies out only the tensors it keeps, so a large file costs
 * no heap copy of itself. */
static int map_file(const char *path, uint8_t **buf, size_t *len, nn_err *e)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return nn_errf(e, "cannot open: %s", strerror(errno));
    struct stat st;
    int rc = 0;
    if (fstat(fd, &st))
        rc = nn_errf(e, "cannot stat: %s", strerror(errno));
    else if (!S_ISREG(st.st_mode))
        rc = nn_errf(e, "not a regular file");
    else if (st.st_size == 0)
        rc = nn_errf(e, "the file is empty");
    if (!rc) {
        void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED)
            rc = nn_errf(e, "cannot map %lld bytes: %s", (long long)st.st_size, strerror(errno));
        else {
            *buf = p;
            *len = (size_t)st.st_size;
        }
    }
    close(fd);
    return rc;
}

/* Picks the reader from the first bytes. */
static int parse(nn_weights *w, const uint8_t *buf, size_t len, nn_err *e)
{
    if (len >= 9 && buf[8] == '{') /* u64 header length, then the JSON header */
        return nn_safetensors_parse(w, buf, len, e);
    if (len >= 4 && !memcmp(buf, "PK\x03\x04", 4))
        return nn_torch_zip_parse(w, buf, len, e);
    if (len >= 2 && buf[0] == 0x80) /* pickle PROTO: the legacy layout starts with a pickle */
        return nn_torch_legacy_parse(w, buf, len, e);
    char hex[3 * 8 + 1] = "";
    for (size_t i = 0; i < len && i < 8; i++)
        snprintf(hex + 3 * i, sizeof hex - 3 * i, " %02x", buf[i]);
    return nn_errf(e, "not a weights file (safetensors, torch zip or legacy torch); it starts with%s", hex);
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp((*(const nn_weight_entry *const *)a)->name, (*(const nn_weight_entry *const *)b)->name);
}

/* Lookups go by name, so a name that appears twice would make one tensor unreachable. */
static int check_unique(const nn_weights *w, nn_err *e)
{
    if (w->count < 2)
        return 0;
    const nn_weight_entry **s = malloc((size_t)w->count * sizeof *s);
    if (!s)
        return nn_errf(e, "out of memory");
    for (int i = 0; i < w->count; i++)
        s[i] = &w->entries[i];
    qsort(s, (size_t)w->count, sizeof *s, cmp_names);
    int rc = 0;
    for (int i = 1; i < w->count && !rc; i++)
        if (!strcmp(s[i - 1]->name, s[i]->name))
            rc = nn_errf(e, "tensor '%s' appears twice", s[i]->name);
    free(s);
    return rc;
}

int nn_weights_read(nn_weights *w, const char *path, nn_err *e)
{
    return nn_weights_read_filtered(w, path, NULL, NULL, e);
}

int nn_weights_read_filtered(nn_weights *w, const char *path, nn_weights_filter want, void *arg, nn_err *e)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    char dir[1024], manifest[1200];
    memset(w, 0, sizeof *w); /* a failed read leaves w empty (safe to free) on every path */
    if (nn_tfjs_locate(path, dir, sizeof dir, manifest, sizeof manifest))
        return nn_tfjs_read(w, path, want, arg, e) ? -1 : check_unique(w, e) ? (nn_weights_free(w), -1) : 0;
    struct stat st;
    if (!stat(path, &st) && S_ISDIR(st.st_mode))
        return nn_errf(e, "%s: a folder, but not a tfjs layers model (no model.json, model.min.js or model.js in it)",
                       path);
    w->want = want;
    w->want_arg = arg;
    if (!(w->path = strdup(path)))
        return nn_errf(e, "%s: out of memory", path);
    int rc = map_file(path, &buf, &len, e);
    if (!rc)
        rc = parse(w, buf, len, e);
    if (!rc)
        rc = check_unique(w, e);
    if (buf)
        munmap(buf, len);
    if (rc) {
        nn_err_prefix(e, "%s", path);
        nn_weights_free(w);
    }
    return rc;
}

/* ---- conversion ---- */

static float bits_to_float(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static float half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = h >> 10 & 0x1f, man = h & 0x3ff;
    if (exp == 0x1f) /* inf and nan (payload kept) */
        return bits_to_float(sign | 0x7f800000 | man << 13);
    if (exp)
        return bits_to_float(sign | (exp + 112) << 23 | man << 13);
    if (!man)
        return bits_to_float(sign);
    /* Subnormal half: a normal float once the mantissa is shifted up to its leading one. */
    exp = 113;
    while (!(man & 0x400)) {
        man <<= 1;
        exp--;
    }
    return bits_to_float(sign | exp << 23 | (man & 0x3ff) << 13);
}

static void to_f32(float *dst, const nn_weight_entry *t)
{
    const void *src = t->data;
    size_t n = t->numel;
#define CONVERT(T, EXPR)                                                                                   \
    for (size_t i = 0; i < n; i++) {                                                                       \
        T x;                                                                                               \
        memcpy(&x, (const char *)src + i * sizeof x, sizeof x);                                            \
        dst[i] = EXPR;                                                                                     \
    }                                                                                                      \
    break
    switch (t->dtype) {
    case NN_F32:
        memcpy(dst, src, n * sizeof *dst);
        break;
    case NN_F64: CONVERT(double, (float)x);
    case NN_F16: CONVERT(uint16_t, half_to_float(x));
    case NN_BF16: CONVERT(uint16_t, bits_to_float((uint32_t)x << 16));
    case NN_I64: CONVERT(int64_t, (float)x);
    case NN_I32: CONVERT(int32_t, (float)x);
    case NN_I16: CONVERT(int16_t, (float)x);
    case NN_I8: CONVERT(int8_t, (float)x);
    case NN_U8: CONVERT(uint8_t, (float)x);
    case NN_BOOL: CONVERT(uint8_t, x ? 1.0f : 0.0f);
    }
#undef CONVERT
}

int nn_weights_get_f32(const nn_weights *w, const char *name, nn_tensor *dst, nn_err *e)
{
    const nn_weight_entry *t = nn_weights_find(w, name);
    if (!t)
        return nn_errf(e, "%s: tensor '%s' not found", w->path, name);
    if (t->ndim != dst->ndim || (t->ndim && memcmp(t->shape, dst->shape, (size_t)t->ndim * sizeof *t->shape))) {
        char have[128], want[128];
        nn_shape_str(have, sizeof have, t->ndim, t->shape);
        nn_shape_str(want, sizeof want, dst->ndim, dst->shape);
        return nn_errf(e, "%s: tensor '%s' has shape %s but the model expects %s", w->path, name, have, want);
    }
    if (!t->data)
        return nn_errf(e, "%s: tensor '%s' was not loaded (filtered out)", w->path, name);
    to_f32(dst->data, t);
    return 0;
}
