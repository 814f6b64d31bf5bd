#include "nn/tensor.h"

#include "nn/memstat.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* Tensors at least this large are mapped pages (zero, untouched until written). */
#define BIG_ALLOC (1u << 20)

/* Counted in nn/memstat.h (as "other" unless a caller names the kind). */
void *nn_alloc(size_t bytes) { return nn_alloc_kind(bytes, NN_MEM_OTHER); }

void nn_free(void *p) { nn_free_kind(p, NN_MEM_OTHER); }

int nn_tensor_alloc(nn_tensor *t, int ndim, const int64_t *shape, nn_err *e)
{
    memset(t, 0, sizeof *t);
    if (ndim < 0 || ndim > NN_MAX_DIMS)
        return nn_errf(e, "tensor rank %d is outside 0..%d", ndim, NN_MAX_DIMS);
    size_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return nn_errf(e, "tensor dimension %d is negative (%lld)", i, (long long)shape[i]);
        if (shape[i] > 0 && numel > SIZE_MAX / 4 / (size_t)shape[i])
            return nn_errf(e, "tensor too large");
        numel *= (size_t)shape[i];
        t->shape[i] = shape[i];
    }
    t->ndim = ndim;
    t->numel = numel;
    size_t bytes = numel * sizeof(float);
    if (bytes >= BIG_ALLOC) {
        /* Fresh anonymous pages are zero and cost no memory until written: gradient buffers
         * of frozen layers never count towards the resident set. */
        void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
            memset(t, 0, sizeof *t);
            return nn_errf(e, "out of memory allocating %zu floats", numel);
        }
        t->data = p;
        t->owns = 2;
        nn_memstat_add(NN_MEM_TENSOR, (int64_t)bytes);
        return 0;
    }
    t->data = nn_alloc_kind(bytes, NN_MEM_TENSOR);
    if (!t->data) {
        memset(t, 0, sizeof *t);
        return nn_errf(e, "out of memory allocating %zu floats", numel);
    }
    memset(t->data, 0, bytes);
    t->owns = 1;
    return 0;
}

int nn_tensor_alloc4(nn_tensor *t, int64_t n, int64_t c, int64_t h, int64_t w, nn_err *e)
{
    int64_t s[4] = {n, c, h, w};
    return nn_tensor_alloc(t, 4, s, e);
}

int nn_tensor_alloc1(nn_tensor *t, int64_t n, nn_err *e)
{
    return nn_tensor_alloc(t, 1, &n, e);
}

nn_tensor nn_tensor_view(float *data, int ndim, const int64_t *shape)
{
    nn_tensor t;
    memset(&t, 0, sizeof t);
    t.data = data;
    t.ndim = ndim;
    t.numel = 1;
    for (int i = 0; i < ndim; i++) {
        t.shape[i] = shape[i];
        t.numel *= (size_t)shape[i];
    }
    return t;
}

void nn_tensor_free(nn_tensor *t)
{
    if (t->owns == 2) {
        munmap(t->data, t->numel * sizeof(float));
        nn_memstat_add(NN_MEM_TENSOR, -(int64_t)(t->numel * sizeof(float)));
    } else if (t->owns) {
        nn_free_kind(t->data, NN_MEM_TENSOR);
    }
    memset(t, 0, sizeof *t);
}

void nn_tensor_zero(nn_tensor *t) { memset(t->data, 0, t->numel * sizeof(float)); }

void nn_tensor_fill(nn_tensor *t, float v)
{
    for (size_t i = 0; i < t->numel; i++)
        t->data[i] = v;
}

void nn_tensor_copy(nn_tensor *dst, const nn_tensor *src)
{
    memcpy(dst->data, src->data, src->numel * sizeof(float));
}

int nn_tensor_same_shape(const nn_tensor *a, const nn_tensor *b)
{
    if (a->ndim != b->ndim)
        return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i])
            return 0;
    return 1;
}

char *nn_shape_str(char *buf, size_t len, int ndim, const int64_t *shape)
{
    size_t k = 0;
    k += (size_t)snprintf(buf + k, len - k, "[");
    for (int i = 0; i < ndim && k < len; i++)
        k += (size_t)snprintf(buf + k, len - k, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (k < len)
        snprintf(buf + k, len - k, "]");
    return buf;
}
