/* Reference pooling: AvgPool2d(2, 2) (odd sizes floored) and MaxPool2d(k, s, p) with an argmax
 * for the backward. Max-pool follows PyTorch's CPU kernel: padding never wins, the first maximum
 * in row-major window order wins ties, and a NaN wins over numbers (the last NaN in the window). */
#include <math.h>

#include "nn/ref.h"

void ref_avgpool2x2_forward(float *y, const float *x, int n, int c, int h, int w)
{
    const int oh = h / 2, ow = w / 2;
#pragma omp parallel for schedule(static)
    for (long p = 0; p < (long)n * c; p++) {
        const float *xp = x + p * h * w;
        float *yp = y + p * oh * ow;
        for (int oy = 0; oy < oh; oy++)
            for (int ox = 0; ox < ow; ox++) {
                const float *r0 = xp + (long)(2 * oy) * w + 2 * ox, *r1 = r0 + w;
                const float sum = r0[0] + r0[1] + r1[0] + r1[1];
                yp[(long)oy * ow + ox] = sum / 4.0f;
            }
    }
}

void ref_avgpool2x2_backward(float *dx, const float *dy, int n, int c, int h, int w)
{
    if (!dx)
        return;
    const int oh = h / 2, ow = w / 2;
#pragma omp parallel for schedule(static)
    for (long p = 0; p < (long)n * c; p++) {
        float *dxp = dx + p * h * w;
        const float *dyp = dy + p * oh * ow;
        for (int oy = 0; oy < oh; oy++)
            for (int ox = 0; ox < ow; ox++) {
                const float g = dyp[(long)oy * ow + ox] / 4.0f;
                float *r0 = dxp + (long)(2 * oy) * w + 2 * ox, *r1 = r0 + w;
                r0[0] += g;
                r0[1] += g;
                r1[0] += g;
                r1[1] += g;
            }
    }
}

void ref_maxpool2d_forward(float *y, int32_t *argmax, const float *x, const nn_pool_shape *s)
{
    const int oh = nn_pool_oh(s), ow = nn_pool_ow(s);
#pragma omp parallel for schedule(static)
    for (long p = 0; p < (long)s->n * s->c; p++) {
        const float *xp = x + p * s->h * s->w;
        for (int oy = 0; oy < oh; oy++)
            for (int ox = 0; ox < ow; ox++) {
                int y0 = oy * s->s - s->p, x0 = ox * s->s - s->p;
                int y1 = y0 + s->k < s->h ? y0 + s->k : s->h, x1 = x0 + s->k < s->w ? x0 + s->k : s->w;
                if (y0 < 0)
                    y0 = 0;
                if (x0 < 0)
                    x0 = 0;
                /* Empty window (only if p > k/2, which PyTorch rejects): -inf, argmax -1. */
                int32_t best = (y0 < y1 && x0 < x1) ? y0 * s->w + x0 : -1;
                float bestv = -INFINITY;
                for (int iy = y0; iy < y1; iy++)
                    for (int ix = x0; ix < x1; ix++) {
                        const float v = xp[(long)iy * s->w + ix];
                        if (v > bestv || isnan(v)) {
                            bestv = v;
                            best = iy * s->w + ix;
                        }
                    }
                const long o = p * oh * ow + (long)oy * ow + ox;
                y[o] = bestv;
                if (argmax)
                    argmax[o] = best;
            }
    }
}

void ref_maxpool2d_backward(float *dx, const float *dy, const int32_t *argmax, const nn_pool_shape *s)
{
    if (!dx)
        return;
    const long oplane = (long)nn_pool_oh(s) * nn_pool_ow(s);
#pragma omp parallel for schedule(static)
    for (long p = 0; p < (long)s->n * s->c; p++) {
        float *dxp = dx + p * s->h * s->w;
        for (long o = p * oplane; o < (p + 1) * oplane; o++)
            if (argmax[o] >= 0)
                dxp[argmax[o]] += dy[o];
    }
}
