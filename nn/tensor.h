/* nn_tensor: a dense float32 array with a shape, row-major (C order).
 * Images and activations at the engine's interfaces are NCHW.
 * A tensor either owns its memory (64-byte aligned, freed by nn_tensor_free) or is a view
 * into memory owned elsewhere (nn_tensor_view; freeing a view does nothing). */
#ifndef NN_TENSOR_H
#define NN_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#include "nn/err.h"

#define NN_MAX_DIMS 6
#define NN_ALIGN 64

typedef struct nn_tensor {
    float *data;
    int ndim;
    int64_t shape[NN_MAX_DIMS];
    size_t numel;
    int owns; /* 0: a view; 1: heap memory; 2: mapped pages (large tensors) */
} nn_tensor;

/* Allocates a zero-filled tensor. Returns 0, or -1 with e filled (bad shape, out of memory). */
int nn_tensor_alloc(nn_tensor *t, int ndim, const int64_t *shape, nn_err *e);
/* Shorthand for 4-D NCHW. */
int nn_tensor_alloc4(nn_tensor *t, int64_t n, int64_t c, int64_t h, int64_t w, nn_err *e);
/* Shorthand for 1-D. */
int nn_tensor_alloc1(nn_tensor *t, int64_t n, nn_err *e);
/* A tensor that borrows data (no copy, not freed). */
nn_tensor nn_tensor_view(float *data, int ndim, const int64_t *shape);
/* Frees owned memory and zeroes the struct; safe on a zeroed or view tensor. */
void nn_tensor_free(nn_tensor *t);

void nn_tensor_zero(nn_tensor *t);
void nn_tensor_fill(nn_tensor *t, float v);
/* dst must have the same numel as src. */
void nn_tensor_copy(nn_tensor *dst, const nn_tensor *src);
int nn_tensor_same_shape(const nn_tensor *a, const nn_tensor *b);
/* Writes "[2, 3, 64, 64]" into buf. Returns buf. */
char *nn_shape_str(char *buf, size_t len, int ndim, const int64_t *shape);

/* NCHW accessors (valid for ndim == 4). */
static inline int64_t nn_N(const nn_tensor *t) { return t->shape[0]; }
static inline int64_t nn_C(const nn_tensor *t) { return t->shape[1]; }
static inline int64_t nn_H(const nn_tensor *t) { return t->shape[2]; }
static inline int64_t nn_W(const nn_tensor *t) { return t->shape[3]; }

/* 64-byte aligned malloc/free used across the engine (NULL on failure). Counted by nn/memstat.h;
 * memory from nn_alloc must go back through nn_free (not free) to keep the counts right. */
void *nn_alloc(size_t bytes);
void nn_free(void *p);

#endif
