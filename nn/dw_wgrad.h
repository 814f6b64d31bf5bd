/* Weight gradient of a depthwise convolution (one input and one output channel per group) whose
 * input and output gradient are both in nChw16c, on AVX-512: one 16-channel block per register,
 * the sums of one tap row in registers over a band of output rows, straight from the blocked
 * tensors (no per-channel gathers, no padded copies; the border columns take their in-image taps
 * only).
 *
 * oneDNN 2.6's jit_dw has this pass for 3x3 kernels only and runs the others (the Blaze blocks'
 * 5x5, in the autoencoders and the PGN UNet) on its slow gemm; nn_conv2d then runs
 * conv_grouped.c's kernels, which gather every channel's plane out of the blocked layout first.
 * This kernel takes those shapes where both tensors are nChw16c and the CPU has AVX-512, and
 * declines otherwise (PGND_FUSED=0 too, like our other AVX-512 kernels).
 *
 * Tasks: (channel block, image, band of output rows), each summing in float over its band (at
 * most a few hundred outputs per lane), then added up in double over the bands in a fixed order:
 * results do not depend on the thread count. */
#ifndef NN_DW_WGRAD_H
#define NN_DW_WGRAD_H

#include "nn/dnnl_util.h"

/* s: the layer's geometry with n, h, w of the input (any kernel size up to 7x7, stride, zero
 * padding). dw ([C, 1, kh, kw]) and db (may be NULL) accumulate. Returns 1 (nothing done) where it
 * does not apply. */
int nn_dw_wgrad_blocked(nn_ctx *ctx, const nn_conv_shape *s, const float *x, const nn_view5 *vx, const float *dy,
                        const nn_view5 *vdy, float *dw, float *db, nn_err *e);

#endif
