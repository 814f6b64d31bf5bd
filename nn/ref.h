/* Plain-C reference kernels: the slow, obviously-correct twin of every engine layer.
 * Tests cross-check the oneDNN path against these and both against PyTorch fixtures.
 *
 * Conventions (llm.c style):
 *  - all arrays NCHW float32 contiguous; sizes passed explicitly;
 *  - *_forward overwrites its output;
 *  - *_backward ACCUMULATES (+=) into every gradient it is given (dx, dw, db, ...);
 *    any gradient pointer may be NULL to skip it;
 *  - PyTorch's conventions: ReLU'(0) = 0, sign(0) = 0, LeakyReLU'(0) = slope,
 *    max-pool ties go to the first maximum in scan order (row-major within the window),
 *    padding of max-pool never wins (it is -inf), avg-pool 2x2/s2 floors odd sizes. */
#ifndef NN_REF_H
#define NN_REF_H

#include <stddef.h>
#include <stdint.h>

#include "nn/shapes.h"

/* ---- convolution: w is [cout, cin/groups, kh, kw], b is [cout] (used iff s->has_bias) ---- */
void ref_conv2d_forward(float *y, const float *x, const float *w, const float *b, const nn_conv_shape *s);
void ref_conv2d_backward(float *dx, float *dw, float *db, const float *dy, const float *x, const float *w,
                         const nn_conv_shape *s);

/* ---- padding as a layer (used by reflection-padded convs and tests) ----
 * y is [n, c, h + 2ph, w + 2pw]. Reflection as torch.nn.ReflectionPad2d (edge not repeated). */
void ref_pad2d_forward(float *y, const float *x, int n, int c, int h, int w, int ph, int pw, int mode);
void ref_pad2d_backward(float *dx, const float *dy, int n, int c, int h, int w, int ph, int pw, int mode);

/* ---- batch norm over (N, H, W) per channel ----
 * Training: uses batch mean and biased variance for normalisation, writes save_mean[c] and
 * save_invstd[c] = 1/sqrt(var + eps) for the backward, and updates the running statistics as
 * PyTorch: running = (1 - momentum) * running + momentum * stat, with the UNBIASED variance
 * (var * m / (m - 1), m = n*h*w) for running_var. running_* may be NULL (no update).
 * Eval: y = (x - running_mean) / sqrt(running_var + eps) * gamma + beta.
 * gamma/beta may be NULL (affine=False: gamma 1, beta 0). */
void ref_batchnorm_forward_train(float *y, float *save_mean, float *save_invstd, float *running_mean,
                                 float *running_var, const float *x, const float *gamma, const float *beta,
                                 int n, int c, int h, int w, float eps, float momentum);
void ref_batchnorm_forward_eval(float *y, const float *x, const float *gamma, const float *beta,
                                const float *running_mean, const float *running_var, int n, int c, int h, int w,
                                float eps);
void ref_batchnorm_backward_train(float *dx, float *dgamma, float *dbeta, const float *dy, const float *x,
                                  const float *gamma, const float *save_mean, const float *save_invstd, int n,
                                  int c, int h, int w);
void ref_batchnorm_backward_eval(float *dx, float *dgamma, float *dbeta, const float *dy, const float *x,
                                 const float *gamma, const float *running_mean, const float *running_var, int n,
                                 int c, int h, int w, float eps);

/* ---- pointwise activations over count elements ---- */
void ref_relu_forward(float *y, const float *x, size_t count);
void ref_relu_backward(float *dx, const float *dy, const float *x, size_t count);
void ref_leaky_relu_forward(float *y, const float *x, size_t count, float slope);
void ref_leaky_relu_backward(float *dx, const float *dy, const float *x, size_t count, float slope);
void ref_sigmoid_forward(float *y, const float *x, size_t count);
void ref_sigmoid_backward(float *dx, const float *dy, const float *y, size_t count); /* uses the output y */
void ref_tanh_forward(float *y, const float *x, size_t count);
void ref_tanh_backward(float *dx, const float *dy, const float *y, size_t count); /* uses the output y */

/* ---- pooling ---- */
/* AvgPool2d(2, 2): y is [n, c, h/2, w/2] (floor). */
void ref_avgpool2x2_forward(float *y, const float *x, int n, int c, int h, int w);
void ref_avgpool2x2_backward(float *dx, const float *dy, int n, int c, int h, int w);
/* MaxPool2d(k, s, p): argmax[i] is the flat index into the (n, c) input plane (h*w) of the winner. */
void ref_maxpool2d_forward(float *y, int32_t *argmax, const float *x, const nn_pool_shape *s);
void ref_maxpool2d_backward(float *dx, const float *dy, const int32_t *argmax, const nn_pool_shape *s);

/* ---- upsampling x2: y is [n, c, 2h, 2w] ---- */
void ref_upsample_nearest2x_forward(float *y, const float *x, int n, int c, int h, int w);
void ref_upsample_nearest2x_backward(float *dx, const float *dy, int n, int c, int h, int w);
/* bilinear, align_corners=True: src = dst * (in - 1) / (out - 1) (0 when out == 1). */
void ref_upsample_bilinear2x_forward(float *y, const float *x, int n, int c, int h, int w);
void ref_upsample_bilinear2x_backward(float *dx, const float *dy, int n, int c, int h, int w);

/* ---- structure ---- */
/* y = cat([a, b], dim=1): a is [n, ca, h, w], b is [n, cb, h, w], y is [n, ca+cb, h, w]. */
void ref_concat_forward(float *y, const float *a, int ca, const float *b, int cb, int n, int hw);
void ref_concat_backward(float *da, float *db, const float *dy, int ca, int cb, int n, int hw);
void ref_add_forward(float *y, const float *a, const float *b, size_t count);
void ref_add_backward(float *da, float *db, const float *dy, size_t count);

/* ---- losses (mean over all count elements); backward scales by dloss (the upstream scalar) ---- */
double ref_l1_loss(const float *x, const float *t, size_t count);
void ref_l1_loss_backward(float *dx, const float *x, const float *t, size_t count, float dloss);
double ref_mse_loss(const float *x, const float *t, size_t count);
void ref_mse_loss_backward(float *dx, const float *x, const float *t, size_t count, float dloss);

#endif
