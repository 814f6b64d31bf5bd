/* Bilinear x2 upsampling with align_corners=True (PyTorch's), the coordinates shared by its kernels
 * (upsample2x.c, and the fused upsampling + depthwise convolution in upsample_dwconv.c). */
#ifndef NN_BILINEAR_H
#define NN_BILINEAR_H

#include <stdlib.h>
#include <string.h>

/* Source coordinate of output index o for align_corners=True, in float as PyTorch computes it. */
static inline void ac_coord(int o, int in, int out, int *i0, int *i1, float *lambda)
{
    float scale = out > 1 ? (float)(in - 1) / (float)(out - 1) : 0.0f;
    float src = scale * (float)o;
    int i = (int)src;
    *i0 = i;
    *i1 = i + (i < in - 1 ? 1 : 0);
    *lambda = src - (float)i;
}

/* Per output column: its two source columns and weight (the same for every row and channel). */
typedef struct col_coord {
    int w0, w1;
    float lw;
} col_coord;

static inline col_coord *col_coords(int in, int out)
{
    col_coord *c = malloc((size_t)out * sizeof *c);
    if (c)
        for (int o = 0; o < out; o++)
            ac_coord(o, in, out, &c[o].w0, &c[o].w1, &c[o].lw);
    return c;
}

/* The column pass of the backward as a gather: input column w receives wt[k][w] * g[idx[k][w]]
 * for k < k (unused entries have weight 0), in the output-column order of the forward's scatter. */
typedef struct col_gather {
    int k;
    int *cnt; /* contributions per input column (<= k) */
    int *idx;
    float *wt;
} col_gather;

static inline int col_gather_make(col_gather *gt, const col_coord *cc, int in, int out)
{
    int *cnt = calloc((size_t)in, sizeof *cnt), k = 0;
    gt->cnt = cnt;
    if (!cnt)
        return -1;
    for (int o = 0; o < out; o++)
        cnt[cc[o].w0]++, cnt[cc[o].w1]++;
    for (int w = 0; w < in; w++)
        k = cnt[w] > k ? cnt[w] : k;
    gt->k = k;
    gt->idx = calloc((size_t)k * in, sizeof *gt->idx);
    gt->wt = calloc((size_t)k * in, sizeof *gt->wt);
    if (!gt->idx || !gt->wt)
        return -1; /* the caller frees what was made */
    memset(cnt, 0, (size_t)in * sizeof *cnt);
    for (int o = 0; o < out; o++) {
        int a = cc[o].w0, b = cc[o].w1;
        gt->idx[(size_t)cnt[a] * in + a] = o, gt->wt[(size_t)cnt[a]++ * in + a] = 1 - cc[o].lw;
        gt->idx[(size_t)cnt[b] * in + b] = o, gt->wt[(size_t)cnt[b]++ * in + b] = cc[o].lw;
    }
    return 0;
}

static inline void col_gather_free(col_gather *gt)
{
    free(gt->cnt);
    free(gt->idx);
    free(gt->wt);
}

#endif
