/* The backward of a net's last layer, a 1x1 convolution to a few channels (an image's 3), together
 * with the backward of the ReLU that made its input, as one pass over that input on our own
 * OpenMP kernel. oneDNN needs three (backward-data, backward-weights, the ReLU's backward), each
 * streaming the full-resolution, many-channel input or its gradient once more, while the real
 * work is a few multiply-adds per element. Used through nn_conv2d_backward_relu_input.
 *
 * AVX2 (the build's baseline); a 16-channel block on AVX-512 where the CPU has it.
 * Parallel over (image, block of input channels); each task owns its elements of dx and its
 * channels' partial weight gradient, summed over the images afterwards in a fixed order: no
 * atomics, and results do not depend on the thread count. */
#ifndef NN_CONV_HEAD_H
#define NN_CONV_HEAD_H

#include "nn/dnnl_util.h"

#define NN_CONV_HEAD_MAX_COUT 4

/* 1 if a convolution of this geometry has the fused kernel: 1x1, stride 1, no padding, no groups,
 * at most NN_CONV_HEAD_MAX_COUT outputs (and the build has AVX2 and FMA, -march=x86-64-v3). */
int nn_conv_head_applies(const nn_conv_shape *g);

/* x: the convolution's input (a ReLU's output), [n, cin, h, w] seen through vx (plain NCHW or
 * nChw8c / nChw16c); dy: [n, cout, h, w], plain NCHW; w: [cout, cin] (PyTorch's layout).
 * dx (x's layout) = (add ? dx : 0) + (x > 0) * w^T dy (padding channels get 0 added, or written
 * as 0); the ReLU before the convolution is a plain ReLU (slope 0);
 * dw += dy x^T and db += sum dy (db may be NULL) when dw is not NULL. */
int nn_conv_head_backward_relu(nn_ctx *ctx, int cout, const float *x, const nn_view5 *vx, const float *dy,
                               const float *w, float *dw, float *db, float *dx, int add, nn_err *e);

#endif
