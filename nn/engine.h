/* The fast path: layers executed by oneDNN 2.6, activations kept in oneDNN's chosen (often
 * blocked, e.g. nChw16c) layouts between layers, primitives created once per input shape.
 *
 * nn_ctx   one per thread of work (a job): oneDNN engine + stream, thread count, reorder cache.
 * nn_act   an activation or an activation gradient: logical NCHW dims + the layout its data is in.
 *          Convert at the edges with nn_act_from_nchw / nn_act_to_nchw.
 *
 * Gradient convention: every layer's *_backward ACCUMULATES into parameter gradients
 * (dweight, dbias, dgamma, dbeta; cleared by the owner, as PyTorch's .grad). Activation gradients
 * accumulate too, with the first write as a plain store: an nn_act gradient whose `valid` is 0
 * is overwritten (and its layout chosen by the layer), one whose `valid` is 1 is added to.
 * Call nn_act_grad_reset() on every activation gradient before a backward pass. */
#ifndef NN_ENGINE_H
#define NN_ENGINE_H

#include <oneapi/dnnl/dnnl.h>
#include <stddef.h>

#include "nn/err.h"
#include "nn/rng.h"
#include "nn/shapes.h"
#include "nn/tensor.h"

#if DNNL_VERSION_MAJOR != 2
#error "pgnd's engine is written against the oneDNN 2.x C API (Debian bookworm's libdnnl-dev 2.6)"
#endif

typedef struct nn_reorder_cache nn_reorder_cache;
typedef struct nn_mem_cache nn_mem_cache;

typedef struct nn_act {
    int n, c, h, w;
    dnnl_memory_desc_t md; /* layout of data; md.ndims == 0 until first use */
    float *data;
    size_t cap;            /* bytes allocated */
    int valid;             /* for gradients: 0 = contents undefined (next write stores) */
    int borrowed;          /* data lies inside another activation's buffer (nn_act_borrow) */
} nn_act;

typedef struct nn_ctx {
    dnnl_engine_t engine;
    dnnl_stream_t stream;
    int threads;
    nn_reorder_cache *reorders;
    nn_mem_cache *mems;
    float *scratch; /* temporary of nn_act_accumulate (layout conversion before adding) */
    size_t scratch_cap;
    float *tmp;     /* temporary of layers that compute a gradient aside before adding it */
    size_t tmp_cap;
    /* Transient copies of the weights of layers that learn, in oneDNN's layouts, and of their
     * weight gradients: they are made again at every pass, so one pair of buffers (sized to the
     * largest layer) serves the whole net instead of three copies per layer. */
    float *wbuf[2];
    size_t wbuf_cap[2];
    /* A bf16 convolution's pass (nn_conv2d.bf16): its inputs (x, dy) converted, and the scratchpad
     * its oneDNN kernel asks for (4 MB for a 128->128 1x1 over 2x64x64), once per context, not per
     * layer. */
    float *cvt[3];
    size_t cvt_cap[3];
    /* The reflection-padded input of the convolution running now: made in its forward, made again
     * in its backward (for the weight gradient), then reused for the padded input's gradient. */
    nn_act pad;
} nn_ctx;

/* threads <= 0: leave OpenMP's default. The calling thread's OpenMP thread count is set. */
int nn_ctx_init(nn_ctx *ctx, int threads, nn_err *e);
void nn_ctx_free(nn_ctx *ctx);
/* Returns a buffer of at least `bytes` (64-byte aligned), valid until the next call. */
float *nn_ctx_scratch(nn_ctx *ctx, size_t bytes, nn_err *e);
float *nn_ctx_tmp(nn_ctx *ctx, size_t bytes, nn_err *e);
float *nn_ctx_wbuf(nn_ctx *ctx, int i, size_t bytes, nn_err *e); /* i = 0 or 1: ctx->wbuf[i] */
float *nn_ctx_cvt(nn_ctx *ctx, int i, size_t bytes, nn_err *e);  /* i = 0, 1 or 2: ctx->cvt[i] */

/* The fused kernels that run a cheap layer inside its neighbour's pass (nn_conv2d_backward_relu_input,
 * nn_upsample2x_backward_relu, nn/upsample_dwconv.h) run unless the environment variable PGND_FUSED=0
 * (read once) or nn_fused_set_enabled(0) (tests: 1 on, 0 off, -1 back to the environment's choice)
 * turns them off: they then decline, and the nets take the separate steps. */
int nn_fused_enabled(void);
void nn_fused_set_enabled(int on);

/* Sets dims and layout; grows the buffer when needed (steady state allocates nothing). */
int nn_act_reserve(nn_act *a, int n, int c, int h, int w, const dnnl_memory_desc_t *md, nn_err *e);
/* Plain NCHW layout for these dims. */
dnnl_memory_desc_t nn_md_nchw(int n, int c, int h, int w);
/* Channel-blocked layout nChw<blk>c (blk 8 or 16); blk 1 is plain NCHW. */
dnnl_memory_desc_t nn_md_blocked(int n, int c, int h, int w, int blk);
int nn_act_from_nchw(nn_ctx *ctx, nn_act *a, const float *src, int n, int c, int h, int w, nn_err *e);
int nn_act_to_nchw(nn_ctx *ctx, const nn_act *a, float *dst, nn_err *e);
/* Converts a to the layout md in place (no-op if already there). */
int nn_act_convert(nn_ctx *ctx, nn_act *a, const dnnl_memory_desc_t *md, nn_err *e);
size_t nn_act_count(const nn_act *a); /* logical n*c*h*w */
size_t nn_md_bytes(const dnnl_memory_desc_t *md);
void nn_act_free(nn_act *a);
/* Makes a an empty activation whose buffer is `bytes` of owner's, from byte `offset` on: a layer
 * writing into a then writes into owner's buffer in place (e.g. straight into a concatenation's
 * channels). a is never grown, converted or freed: doing what would need that fails instead.
 * Valid while owner's buffer is: the owner must not be grown, converted or freed meanwhile, nor
 * reserved with a padded layout (which zeroes what it covers); the caller sees to that. */
int nn_act_borrow(nn_act *a, const nn_act *owner, size_t offset, size_t bytes, nn_err *e);
static inline void nn_act_grad_reset(nn_act *a) { a->valid = 0; }

/* Copies src into dst's buffer in layout dst_md (dst_md may equal src->md). */
int nn_reorder(nn_ctx *ctx, const dnnl_memory_desc_t *src_md, const void *src, const dnnl_memory_desc_t *dst_md,
               void *dst, nn_err *e);
/* Gradient store-or-add: g (in layout md, dims n,c,h,w) goes into acc following the `valid` rule. */
int nn_act_accumulate(nn_ctx *ctx, nn_act *acc, const dnnl_memory_desc_t *md, const float *g, int n, int c, int h,
                      int w, nn_err *e);

/* ------------------------------------------------------------------ convolution */
typedef struct nn_conv_prims nn_conv_prims;

enum { NN_WINO_FWD = 1, NN_WINO_BWD_DATA = 2, NN_WINO_BWD_WEIGHTS = 4 };

typedef struct nn_conv2d {
    nn_conv_shape geo;        /* n, h, w are taken from the input at each call */
    nn_tensor weight, bias;   /* PyTorch layout: [cout, cin/groups, kh, kw], [cout] */
    nn_tensor dweight, dbias; /* accumulated gradients */
    int frozen;               /* weights never change: reorder them to oneDNN's layout once */
    int weights_stale;        /* set when weights were written from outside (load) */
    int winograd;             /* passes run as Winograd where oneDNN has it (3x3, stride 1), a mask
                               * of NN_WINO_*; set before the first forward. Winograd rounds
                               * differently from direct convolution (~1e-6 relative). */
    int post_relu;            /* forward computes relu(conv(x)) in one pass (set before the first
                               * forward); the backward then expects dy already taken through the
                               * ReLU (e.g. by nn_l1_loss_backward_relu or nn_eltwise_backward) */
    float post_relu_alpha;    /* negative slope of post_relu (0: ReLU, the default; 0.2: LeakyReLU(0.2)).
                               * Set with nn_conv2d_set_post_relu, or before the first forward */
    int bf16;                 /* dense convolutions: the passes multiply in bfloat16 (x, dy and the
                               * weights rounded to bf16; sums, y, dx and the weight gradient in f32),
                               * where oneDNN has native bf16 kernels for all three passes of the
                               * shape (CPUs with AVX512_BF16 or AMX; not its emulation on plain
                               * AVX-512), f32 elsewhere. The fused last-layer backward
                               * (nn_conv2d_backward_relu_input) stays f32. Set before the first
                               * forward; nn_conv2d_runs_bf16 says what ran */
    nn_conv_prims *prims;     /* per input shape */
} nn_conv2d;

int nn_conv2d_init(nn_conv2d *l, int cin, int cout, int kh, int kw, int sh, int sw, int ph, int pw, int groups,
                   int pad_mode, int has_bias, nn_rng *rng /* NULL: zero weights */, nn_err *e);
void nn_conv2d_free(nn_conv2d *l);
int nn_conv2d_forward(nn_ctx *ctx, nn_conv2d *l, const nn_act *x, nn_act *y, nn_err *e);
/* The backward of this convolution and of the ReLU (slope 0) that made its input x, in one: dx
 * (store-or-add rule) receives the gradient w.r.t. the ReLU's input, relu'(x) * conv^T(dy)
 * (relu'(x) = x > 0); parameter gradients accumulate as in nn_conv2d_backward. Only where the fused
 * kernel exists (conv_head.h: a 1x1 convolution to at most 4 channels without a post-op, a net's
 * last layer, with its PyTorch-layout weights, on an input in plain or channel-blocked layout):
 * returns 1 and does nothing otherwise, 0 on success, -1 on error. */
int nn_conv2d_backward_relu_input(nn_ctx *ctx, nn_conv2d *l, const nn_act *x, const nn_act *dy, nn_act *dx,
                                  int param_grads, nn_err *e);
/* Input dims (after explicit padding) of the shape most recently prepared, for summaries.
 * -1 before the first forward. */
int nn_conv2d_last_input(const nn_conv2d *l, int *n, int *h, int *w);
/* 1 when that shape's weight gradient runs on oneDNN without the bias, which nn_bias_grad adds
 * (nn/bias_grad.h); 0 otherwise (no bias, not made yet, or our own kernels). */
int nn_conv2d_own_bias_grad(const nn_conv2d *l);
/* 1 when that shape's passes run on oneDNN's bf16 kernels (nn_conv2d.bf16). */
int nn_conv2d_runs_bf16(const nn_conv2d *l);
/* 1 when oneDNN has native bf16 convolution kernels on this CPU (AVX512_BF16 or AMX, within
 * ONEDNN_MAX_CPU_ISA), so nn_conv2d.bf16 takes effect. */
int nn_conv2d_bf16_native(nn_ctx *ctx);
/* Frozen layers only: frees the PyTorch-layout weights (and gradient) once oneDNN's copies exist,
 * so a frozen net holds its weights once per layout oneDNN needs instead of once more. Later
 * shapes copy from oneDNN's copies. */
int nn_conv2d_release_plain(nn_conv2d *l, nn_err *e);
/* x must be the input of the last forward. dx may be NULL (e.g. the first layer of a net
 * trained only w.r.t. its weights); with param_grads 0 the weight gradients are skipped. */
int nn_conv2d_backward(nn_ctx *ctx, nn_conv2d *l, const nn_act *x, const nn_act *dy, nn_act *dx, int param_grads,
                       nn_err *e);
/* Drops the primitives (and oneDNN weight copies) cached per input shape; the next forward makes
 * them again from the PyTorch-layout weights. For changes of what a primitive depends on (bias,
 * post-op). Refused (-1) for a layer whose PyTorch-layout weights were released. */
int nn_conv2d_drop_prims(nn_conv2d *l, nn_err *e);
/* Gives the layer a bias (allocated, with its gradient, when it had none; has_bias becomes 1) and
 * sets it to bias[0..cout-1]; drops the cached primitives. */
int nn_conv2d_set_bias(nn_conv2d *l, const float *bias, nn_err *e);
/* post_relu on (alpha: negative slope, 0 = ReLU) or off; drops the cached primitives. */
int nn_conv2d_set_post_relu(nn_conv2d *l, int on, float alpha, nn_err *e);

/* ------------------------------------------------------------------ batch norm */
typedef struct nn_bn_prims nn_bn_prims;

typedef struct nn_batchnorm2d {
    int c;
    float eps, momentum;
    nn_tensor gamma, beta, dgamma, dbeta;
    nn_tensor running_mean, running_var;
    long num_batches_tracked;
    nn_tensor save_mean, save_var; /* batch statistics of the last training forward */
    int training;
    int fuse_relu; /* y = relu(bn(x)) in one pass; the backward then takes dy w.r.t. the ReLU's
                    * output, applying the ReLU's mask kept from the forward. As without it, the
                    * backward must follow the forward of the same input (the batch statistics
                    * are the last forward's) */
    nn_bn_prims *prims;
} nn_batchnorm2d;

int nn_batchnorm2d_init(nn_batchnorm2d *l, int c, float eps, float momentum, nn_err *e);
void nn_batchnorm2d_free(nn_batchnorm2d *l);
int nn_batchnorm2d_forward(nn_ctx *ctx, nn_batchnorm2d *l, const nn_act *x, nn_act *y, nn_err *e);
int nn_batchnorm2d_backward(nn_ctx *ctx, nn_batchnorm2d *l, const nn_act *x, const nn_act *dy, nn_act *dx,
                            nn_err *e);
/* Folds an eval-mode BatchNorm2d that follows this convolution into it (for prediction):
 * s_c = gamma_c / sqrt(running_var_c + eps), W'_c = W_c s_c, b'_c = (b_c - running_mean_c) s_c + beta_c
 * (b_c = 0 without a bias; the layer gets one), computed in double and stored as float. conv(x) then
 * equals bn(conv(x)) with the running statistics; bn itself is left unchanged. The layer's weights
 * and bias no longer are the state dict's (and their gradients mean nothing for the original net). */
int nn_conv2d_fold_bn(nn_conv2d *l, const nn_batchnorm2d *bn, nn_err *e);

/* ------------------------------------------------------------------ pointwise */
typedef enum nn_act_kind { NN_RELU, NN_LEAKY_RELU, NN_SIGMOID, NN_TANH } nn_act_kind;

typedef struct nn_eltwise_prims nn_eltwise_prims;

typedef struct nn_eltwise {
    nn_act_kind kind;
    float alpha; /* LeakyReLU slope */
    nn_eltwise_prims *prims;
} nn_eltwise;

void nn_eltwise_init(nn_eltwise *l, nn_act_kind kind, float alpha);
void nn_eltwise_free(nn_eltwise *l);
/* y may be x (in place). */
int nn_eltwise_forward(nn_ctx *ctx, nn_eltwise *l, const nn_act *x, nn_act *y, nn_err *e);
/* ReLU / LeakyReLU take the forward input x; Sigmoid / Tanh take the forward output y (`xy`).
 * ReLU may also be given its output (same result, as relu(x) > 0 iff x > 0). */
int nn_eltwise_backward(nn_ctx *ctx, nn_eltwise *l, const nn_act *xy, const nn_act *dy, nn_act *dx, nn_err *e);

/* ------------------------------------------------------------------ pooling */
typedef struct nn_pool_prims nn_pool_prims;

typedef struct nn_pool2d {
    int is_max;
    int k, s, p;
    int avg_exclude_pad; /* average over the window's in-image elements only (TensorFlow's "same"
                          * average pooling; PyTorch's count_include_pad=False). Set before use. */
    nn_pool_prims *prims;
} nn_pool2d;

void nn_pool2d_init(nn_pool2d *l, int is_max, int k, int s, int p);
void nn_pool2d_free(nn_pool2d *l);
int nn_pool2d_forward(nn_ctx *ctx, nn_pool2d *l, const nn_act *x, nn_act *y, nn_err *e);
int nn_pool2d_backward(nn_ctx *ctx, nn_pool2d *l, const nn_act *x, const nn_act *dy, nn_act *dx, nn_err *e);

/* ------------------------------------------------------------------ upsampling x2 */
typedef struct nn_resample_prims nn_resample_prims;

typedef struct nn_upsample2x {
    int bilinear; /* 0: nearest (oneDNN); 1: bilinear with align_corners=True (own kernel) */
    nn_resample_prims *prims;
} nn_upsample2x;

void nn_upsample2x_init(nn_upsample2x *l, int bilinear);
void nn_upsample2x_free(nn_upsample2x *l);
int nn_upsample2x_forward(nn_ctx *ctx, nn_upsample2x *l, const nn_act *x, nn_act *y, nn_err *e);
int nn_upsample2x_backward(nn_ctx *ctx, nn_upsample2x *l, const nn_act *dy, nn_act *dx, nn_err *e);
/* The backward of the upsampling and of the ReLU (slope 0) that made its input x, in one pass: dx
 * (store-or-add rule) = relu'(x) * upsample^T(dy), in x's layout. Bilinear only, x in plain NCHW or
 * channel-blocked layout: returns 1 and does nothing otherwise, 0 on success, -1 on error. */
int nn_upsample2x_backward_relu(nn_ctx *ctx, nn_upsample2x *l, const nn_act *dy, const nn_act *x, nn_act *dx,
                                nn_err *e);
/* y = concat(bilinear upsample(x), skip) without the upsampled map as its own tensor: x is
 * upsampled straight into y's first channels. Only when both are in the same channel-blocked layout
 * and x's channels fill whole blocks; returns 1 (nothing done) otherwise, 0 on success, -1 on error.
 * The values are those of nn_upsample2x_forward then nn_concat_forward. skip may already lie in
 * its place in y (borrowed from y's buffer, nn_act_borrow): it is then not copied. */
int nn_upsample2x_concat_forward(nn_ctx *ctx, nn_upsample2x *l, const nn_act *x, const nn_act *skip, nn_act *y,
                                 nn_err *e);

/* ------------------------------------------------------------------ structure and losses */
int nn_concat_forward(nn_ctx *ctx, const nn_act *a, const nn_act *b, nn_act *y, nn_err *e);
/* Splits dy after its first ca channels; da or db may be NULL. */
int nn_concat_backward(nn_ctx *ctx, const nn_act *dy, int ca, nn_act *da, nn_act *db, nn_err *e);
int nn_add_forward(nn_ctx *ctx, const nn_act *a, const nn_act *b, nn_act *y, nn_err *e);
/* Adds dy into both da and db (either may be NULL). */
int nn_add_backward(nn_ctx *ctx, const nn_act *dy, nn_act *da, nn_act *db, nn_err *e);

/* Reflection / zero padding as its own layer (reflection-padded convolutions use it). */
int nn_pad2d_forward(nn_ctx *ctx, const nn_act *x, nn_act *y, int ph, int pw, int mode, nn_err *e);
int nn_pad2d_backward(nn_ctx *ctx, const nn_act *dy, nn_act *dx, int ph, int pw, int mode, nn_err *e);

/* Mean losses over n*c*h*w; x and t may be in any layout (t is converted to x's if needed).
 * per_sample (may be NULL) receives the n per-sample means. Backward adds dloss * d/dx. */
int nn_l1_loss(nn_ctx *ctx, const nn_act *x, const nn_act *t, double *loss, double *per_sample, nn_err *e);
int nn_l1_loss_backward(nn_ctx *ctx, const nn_act *x, const nn_act *t, float dloss, nn_act *dx, nn_err *e);
/* Fused tap gradient of a perceptual loss: dx = relu'(x) * (dx + dloss * d L1(x, t) / dx), where x
 * is a ReLU output (so relu'(x) = x > 0) and dx already holds the gradient arriving from above
 * (it must be valid, in x's layout). One pass instead of a loss backward plus a ReLU backward. */
int nn_l1_loss_backward_relu(nn_ctx *ctx, const nn_act *x, const nn_act *t, float dloss, nn_act *dx, nn_err *e);
/* The same, dx may also be new (not valid: then written), and sums (may be NULL) receives per sample
 * the sum of |x - t| over C*H*W (nn_l1_loss's per-sample mean times C*H*W), from the same pass. */
int nn_l1_loss_backward_relu_sums(nn_ctx *ctx, const nn_act *x, const nn_act *t, float dloss, nn_act *dx,
                                  double *sums, nn_err *e);
int nn_mse_loss(nn_ctx *ctx, const nn_act *x, const nn_act *t, double *loss, double *per_sample, nn_err *e);
int nn_mse_loss_backward(nn_ctx *ctx, const nn_act *x, const nn_act *t, float dloss, nn_act *dx, nn_err *e);

#endif
