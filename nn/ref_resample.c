/* Reference x2 upsampling: nearest (torch.nn.Upsample(scale_factor=2), i.e. src = dst / 2) and
 * bilinear with align_corners=True, forward and backward, in torch 1.13's CPU float32 arithmetic
 * (its NCHW kernel; checked bit for bit against torch 1.13.1 for C > 1. A 1-channel tensor is also
 * "channels-last contiguous" for torch, which then takes another kernel that rounds differently,
 * within an ulp or two). Per axis, as torch's compute_source_index_and_lambda:
 *   scale = (float)(in - 1) / (float)(out - 1)   (float; 0 when out == 1)
 *   src = (double)scale * dst                     (accumulate type: double on the CPU)
 *   i0 = floor(src), i1 = i0 + (i0 < in - 1), lambda1 = (float)(src - i0), lambda0 = 1.0f - lambda1. */
#include <math.h>

#include "nn/ref.h"

void ref_upsample_nearest2x_forward(float *y, const float *x, int n, int c, int h, int w)
{
    const int oh = 2 * h, ow = 2 * w;
#pragma omp parallel for schedule(static)
    for (long p = 0; p < (long)n * c; p++) {
        const float *xp = x + p * h * w;
        float *yp = y + p * oh * ow;
        for (int oy = 0; oy < oh; oy++)
            for (int ox = 0; ox < ow; ox++)
                yp[(long)oy * ow + ox] = xp[(long)(oy / 2) * w + ox / 2];
    }
}

void ref_upsample_nearest2x_backward(float *dx, const float *dy, int n, int c, int h, int w)
{
    if (!dx)
        return;
    const int oh = 2 * h, ow = 2 * w;
#pragma omp parallel for schedule(static)
    for (long p = 0; p < (long)n * c; p++) {
        float *dxp = dx + p * h * w;
        const float *dyp = dy + p * oh * ow;
        for (int oy = 0; oy < oh; oy++)
            for (int ox = 0; ox < ow; ox++)
                dxp[(long)(oy / 2) * w + ox / 2] += dyp[(long)oy * ow + ox];
    }
}

/* Source taps and weights of one output coordinate along one axis. */
typedef struct lin_tap {
    int i0, i1;
    float l0, l1;
} lin_tap;

static lin_tap lin_tap_at(int dst, int in, int out)
{
    const float scale = out > 1 ? (float)(in - 1) / (float)(out - 1) : 0.0f;
    const double src = (double)scale * dst; /* >= 0, so the cast floors */
    lin_tap t;
    t.i0 = (int)src;
    t.i1 = t.i0 + (t.i0 < in - 1 ? 1 : 0);
    double l1 = src - t.i0;
    l1 = l1 < 0.0 ? 0.0 : (l1 > 1.0 ? 1.0 : l1);
    t.l1 = (float)l1;
    t.l0 = 1.0f - t.l1;
    return t;
}

/* a * wa + b * wb as torch's compiled kernel rounds it: one product rounded, the other fused. */
static inline float lerp2(float a, float wa, float b, float wb) { return fmaf(a, wa, b * wb); }

void ref_upsample_bilinear2x_forward(float *y, const float *x, int n, int c, int h, int w)
{
    const int oh = 2 * h, ow = 2 * w;
#pragma omp parallel for schedule(static)
    for (long p = 0; p < (long)n * c; p++) {
        const float *xp = x + p * h * w;
        float *yp = y + p * oh * ow;
        for (int oy = 0; oy < oh; oy++) {
            const lin_tap ty = lin_tap_at(oy, h, oh);
            const float *r0 = xp + (long)ty.i0 * w, *r1 = xp + (long)ty.i1 * w;
            for (int ox = 0; ox < ow; ox++) {
                const lin_tap tx = lin_tap_at(ox, w, ow);
                const float t0 = lerp2(r0[tx.i0], tx.l0, r0[tx.i1], tx.l1);
                const float t1 = lerp2(r1[tx.i0], tx.l0, r1[tx.i1], tx.l1);
                yp[(long)oy * ow + ox] = lerp2(t0, ty.l0, t1, ty.l1);
            }
        }
    }
}

/* Scatter of every output gradient to its four taps, in output row-major order as PyTorch:
 * dx[tap] += (lambda_y * lambda_x) * dy, fused as torch's compiled kernel does. One thread per
 * (n, c) plane. */
void ref_upsample_bilinear2x_backward(float *dx, const float *dy, int n, int c, int h, int w)
{
    if (!dx)
        return;
    const int oh = 2 * h, ow = 2 * w;
#pragma omp parallel for schedule(static)
    for (long p = 0; p < (long)n * c; p++) {
        float *dxp = dx + p * h * w;
        const float *dyp = dy + p * oh * ow;
        for (int oy = 0; oy < oh; oy++) {
            const lin_tap ty = lin_tap_at(oy, h, oh);
            float *r0 = dxp + (long)ty.i0 * w, *r1 = dxp + (long)ty.i1 * w;
            for (int ox = 0; ox < ow; ox++) {
                const lin_tap tx = lin_tap_at(ox, w, ow);
                const float g = dyp[(long)oy * ow + ox];
                r0[tx.i0] = fmaf(ty.l0 * tx.l0, g, r0[tx.i0]);
                r0[tx.i1] = fmaf(ty.l0 * tx.l1, g, r0[tx.i1]);
                r1[tx.i0] = fmaf(ty.l1 * tx.l0, g, r1[tx.i0]);
                r1[tx.i1] = fmaf(ty.l1 * tx.l1, g, r1[tx.i1]);
            }
        }
    }
}
