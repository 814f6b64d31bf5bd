/* The bias gradient of a layer from its output gradient: db[c] += sum of dy[:, c, :, :].
 *
 * oneDNN 2.6's 1x1 convolution computes it inside its weight-gradient pass with a loop compiled
 * for SSE that adds each pixel's 16 lanes into the same 16 sums (a dependency chain through
 * memory): 0.14-0.2 ms of a 128->128 1x1 weight gradient over 2x64x64 (1.9 ms). nn_conv2d asks
 * oneDNN for the weight gradient alone and takes the bias from here.
 *
 * Tasks: (image, channel block), each summing its plane in float over chunks of at most 256
 * pixels per lane, the chunks added in double, then the images in order: the result does not
 * depend on the thread count. */
#ifndef NN_BIAS_GRAD_H
#define NN_BIAS_GRAD_H

#include "nn/dnnl_util.h"

/* dy in plain NCHW or nChw8c / nChw16c (v); db has v->c floats. */
int nn_bias_grad(nn_ctx *ctx, const float *dy, const nn_view5 *v, float *db, nn_err *e);

#endif
