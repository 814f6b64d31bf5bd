/* Internal helpers shared by the oneDNN-backed layers (not part of the engine's public API). */
#ifndef NN_DNNL_UTIL_H
#define NN_DNNL_UTIL_H

#include "nn/engine.h"

/* Runs a oneDNN call; on failure fills e with the call's text and status and returns -1. */
#define DNNL_TRY(e, call)                                                                        \
    do {                                                                                         \
        dnnl_status_t st_ = (call);                                                              \
        if (st_ != dnnl_success)                                                                 \
            return nn_errf((e), "oneDNN: %s failed (%s)", #call, nn_dnnl_status_str(st_));       \
    } while (0)

const char *nn_dnnl_status_str(dnnl_status_t st);

/* Executes prim with up to 8 (arg, md, ptr) triples; memory objects are created on the fly. */
typedef struct nn_arg {
    int arg;
    const dnnl_memory_desc_t *md;
    void *ptr;
} nn_arg;
int nn_exec(nn_ctx *ctx, dnnl_primitive_t prim, int nargs, const nn_arg *args, nn_err *e);

/* Creates a primitive from an op descriptor (hint may be NULL). */
int nn_make_prim(nn_ctx *ctx, const void *op_desc, const_dnnl_primitive_desc_t hint, dnnl_primitive_desc_t *pd,
                 dnnl_primitive_t *prim, nn_err *e);
/* The same with primitive attributes (post-ops). */
int nn_make_prim_attr(nn_ctx *ctx, const void *op_desc, const_dnnl_primitive_attr_t attr,
                      const_dnnl_primitive_desc_t hint, dnnl_primitive_desc_t *pd, dnnl_primitive_t *prim, nn_err *e);
const dnnl_memory_desc_t *nn_pd_md(const_dnnl_primitive_desc_t pd, dnnl_query_t what, int index);
int nn_md_equal(const dnnl_memory_desc_t *a, const dnnl_memory_desc_t *b);
/* 1 if the layout pads a dimension (e.g. 3 channels in nChw16c). */
int nn_md_padded(const dnnl_memory_desc_t *md);

/* The layouts our own kernels understand, viewed as [n][c/blk][h][w][blk] (blk 1 = plain NCHW). */
typedef struct nn_view5 {
    int n, c, h, w, blk, cb; /* cb = ceil(c / blk) */
} nn_view5;
/* 0 if md is plain nchw or nChw8c / nChw16c for these dims; -1 otherwise. */
int nn_view5_of(const dnnl_memory_desc_t *md, int n, int c, int h, int w, nn_view5 *v);
static inline size_t nn_view5_off(const nn_view5 *v, int n, int c, int h, int w)
{
    return ((((size_t)n * v->cb + c / v->blk) * v->h + h) * v->w + w) * v->blk + c % v->blk;
}
/* Makes sure an act is in a layout our own kernels understand (converts to plain NCHW if not). */
int nn_act_view5(nn_ctx *ctx, nn_act *a, nn_view5 *v, nn_err *e);

/* An on/off switch read once from the environment variable var ("0": off, anything else or unset:
 * on) and cached in *state (-1: not read yet); nn_env_switch_set overrides it (1 on, 0 off, -1
 * back to the environment's choice). Safe to read from several threads. */
int nn_env_switch(int *state, const char *var);
void nn_env_switch_set(int *state, int on);

/* 1 if the CPU runs AVX-512F (the kernels of ours built for it with a target attribute: valgrind
 * hides it, and they then decline). */
int nn_cpu_has_avx512(void);

/* memcpy of n floats over the OpenMP threads (serial below a few hundred KB). */
void nn_par_copy(float *dst, const float *src, size_t n);

#endif
