#include "nn/bias_grad.h"

#include <string.h>

#define LANES 16
#define CHUNK (256 * LANES) /* floats summed in float before going into double */

/* part[l % blk] += the sum of lane l of p[0..n) (a task's contiguous [pixels][blk] floats; blk
 * divides LANES, so element i belongs to lane i % blk). */
static void task_sums(const float *p, size_t n, int blk, double *part)
{
    for (size_t c0 = 0; c0 < n; c0 += CHUNK) {
        const size_t c1 = c0 + CHUNK < n ? c0 + CHUNK : n;
        float acc[LANES] = {0};
        size_t i = c0;
        for (; i + LANES <= c1; i += LANES)
            for (int l = 0; l < LANES; l++) /* 16 independent sums: vectorises */
                acc[l] += p[i + l];
        for (; i < c1; i++)
            acc[i % LANES] += p[i];
        for (int l = 0; l < LANES; l++)
            part[l % blk] += acc[l];
    }
}

int nn_bias_grad(nn_ctx *ctx, const float *dy, const nn_view5 *v, float *db, nn_err *e)
{
    const long tasks = (long)v->n * v->cb;
    const size_t per_task = (size_t)v->h * v->w * v->blk;
    double *part = (double *)nn_ctx_tmp(ctx, (size_t)tasks * v->blk * sizeof(double), e);
    if (!part)
        return -1;
#pragma omp parallel for schedule(static)
    for (long t = 0; t < tasks; t++) {
        double *pt = part + (size_t)t * v->blk;
        memset(pt, 0, (size_t)v->blk * sizeof(double));
        task_sums(dy + (size_t)t * per_task, per_task, v->blk, pt);
    }
    for (int c = 0; c < v->c; c++) { /* over the images, in order */
        double s = 0;
        for (int n = 0; n < v->n; n++)
            s += part[((size_t)n * v->cb + c / v->blk) * v->blk + c % v->blk];
        db[c] += (float)s;
    }
    return 0;
}
