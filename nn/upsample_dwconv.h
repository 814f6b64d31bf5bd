/* Bilinear x2 upsampling (align_corners=True) followed by a 3x3 convolution (stride 1, zero padding
 * 1, bias) that is depthwise, or grouped with two input channels per output (a "pair" conv: groups
 * = out = in / 2, as max_layer 2's 256 -> 128 decoder step), as one kernel each way, on our own
 * OpenMP code: the autoencoders' decoder steps "up, then sep". The upsampled map, four times the
 * input and as large as the output, is never in memory: the forward makes its rows in a small
 * per-task buffer as the convolution needs them, the backward makes them again for the weight
 * gradient and takes the convolution's input gradient back through the upsampling (and,
 * optionally, the ReLU that made the input) row by row. A pair conv runs as a depthwise conv over
 * its inputs whose outputs are summed in adjacent pairs (PyTorch's [out, 2, 3, 3] weights are
 * [in, 1, 3, 3] in memory); its backward gives both inputs of an output that output's gradient.
 * Apart from the saved passes, the results are those of nn_upsample2x_forward / nn_conv2d_forward
 * and their backwards, up to float rounding (sums in another order).
 *
 * nChw16c inputs and AVX-512 at run time only (one channel block per register). Hot in cache the
 * depthwise kernel is no faster than oneDNN's depthwise convolution and our upsampling; in the
 * autoencoders' step, with the 4 MB maps it no longer writes and reads, the three of them take
 * 2-3 ms less (of ~35). The pair conv replaces our grouped kernels (conv_grouped.c) on plain rows,
 * their layout conversions and the 2 MB upsampled map: max_layer 2's step takes about 1 ms less.
 * Forward tasks: (image, output channel block, band of output rows); backward tasks: (image, input
 * channel block), each owning its plane of dx and a partial weight gradient, added up over the
 * images in a fixed order (no atomics; results do not depend on the thread count). */
#ifndef NN_UPSAMPLE_DWCONV_H
#define NN_UPSAMPLE_DWCONV_H

#include "nn/engine.h"

/* 1 if l is a 3x3 convolution (stride 1, zero padding 1) with PyTorch-layout weights that is
 * depthwise (groups = in = out channels) or a pair conv (groups = out = in / 2, out a multiple of
 * 16), x (the upsampling's input) is in nChw16c, the CPU has AVX-512 and the fused kernels are on
 * (nn_fused_enabled). */
int nn_upsample_dwconv_applies(const nn_conv2d *l, const nn_act *x);

/* y = l(upsample2x(x)), in x's blocking. Returns 1 (nothing done) where it does not apply. */
int nn_upsample_dwconv_forward(nn_ctx *ctx, nn_conv2d *l, const nn_act *x, nn_act *y, nn_err *e);

/* dy: gradient of y (l's output channels). Parameter gradients accumulate (param_grads 1); dx (store-or-add rule, x's
 * layout) = upsample2x^T(l^T(dy)), times relu'(x) = (x > 0) when relu_x (x is a ReLU's output).
 * Returns 1 (nothing done) where the kernel cannot run; the fused-kernels switch is not read here,
 * so the backward of a fused forward runs whatever it says now. */
int nn_upsample_dwconv_backward(nn_ctx *ctx, nn_conv2d *l, const nn_act *x, const nn_act *dy, nn_act *dx, int relu_x,
                                int param_grads, nn_err *e);

#endif
