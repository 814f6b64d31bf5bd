/* Own OpenMP kernels for grouped convolutions with few channels per group (the "sep" convs of the
 * PGN UNet and the autoencoders, and the channel-multiplier depthwise convs of their Blaze blocks),
 * which oneDNN 2.6 runs on its slow x64:gemm:jit fallback (~3 GMAC/s). Pure depthwise convs
 * (1 input and 1 output channel per group) stay on oneDNN's fast jit_dw.
 *
 * nn_conv2d dispatches here when nn_convg_applies(): groups > 1, zero padding, cin/groups <= 8,
 * cout/groups <= 32, not pure depthwise. Any kernel size, stride and padding.
 *
 * Escape hatch / A-B switch: the environment variable PGND_GROUPED_CONV=0 forces the oneDNN path
 * for every convolution (read once, at the first grouped convolution of the process);
 * nn_convg_set_enabled() overrides it (tests). Layers keep the primitives of the path they were
 * created with per shape, so switching takes effect for shapes a layer has not seen yet (or after
 * nn_conv2d_drop_prims).
 *
 * Data: inputs (x, dy) in plain NCHW or nChw8c / nChw16c (nn_view5); outputs (y, dx) plain NCHW.
 * Weights in PyTorch's layout [cout, cin/groups, kh, kw]. Parallel over (image, group, row block)
 * for forward and backward-data and over (group, output-channel block) for backward-weights:
 * no atomics, and a fixed summation order (results do not depend on the thread count). */
#ifndef NN_CONV_GROUPED_H
#define NN_CONV_GROUPED_H

#include "nn/dnnl_util.h"

#define NN_CONVG_MAX_CIG 8
#define NN_CONVG_MAX_COG 32

/* 1 unless PGND_GROUPED_CONV=0 (or nn_convg_set_enabled(0)). */
int nn_convg_enabled(void);
/* 1: own kernels, 0: oneDNN, -1: back to the environment's choice. */
void nn_convg_set_enabled(int on);
/* 1 if the convolution of this geometry runs on the kernels below (includes nn_convg_enabled). */
int nn_convg_applies(const nn_conv_shape *g);
/* 1 if it would, were they enabled (the shape rules alone). */
int nn_convg_shape_fits(const nn_conv_shape *g);

/* s: the layer's geometry with n, h, w of the input. y ([n, cout, oh, ow], plain NCHW) is
 * overwritten with conv(x) + b (b may be NULL), then, when relu, y = y > 0 ? y : alpha * y. */
int nn_convg_forward(nn_ctx *ctx, const nn_conv_shape *s, const float *x, const nn_view5 *vx, const float *w,
                     const float *b, int relu, float alpha, float *y, nn_err *e);
/* dx ([n, cin, h, w], plain NCHW) = (add ? dx : 0) + conv^T(dy). wt: room for cout*cin/groups*kh*kw
 * floats (weights rearranged for the pass). */
int nn_convg_backward_data(nn_ctx *ctx, const nn_conv_shape *s, const float *dy, const nn_view5 *vdy,
                           const float *w, float *wt, float *dx, int add, nn_err *e);
/* dw += d/dw, db += d/db (db may be NULL): parameter gradients accumulate. */
int nn_convg_backward_weights(nn_ctx *ctx, const nn_conv_shape *s, const float *x, const nn_view5 *vx,
                              const float *dy, const nn_view5 *vdy, float *dw, float *db, nn_err *e);

#endif
