/* VGG-19 `features` up to relu5_1 with every max-pool replaced by a 2x2 average pool, and the
 * perceptual loss of spec/method.md §2.2 on it: per sample, the sum over the 13 ReLU outputs of
 * mean |phi_l(x) - phi_l(y)|, with the target's features computed once and cached.
 * Weights are frozen; the gradient is taken w.r.t. the input image only. */
#ifndef PGN_VGG19_H
#define PGN_VGG19_H

#include "nn/engine.h"
#include "pgn/l1_taps.h"

#define VGG19_CONVS 13

typedef struct vgg19 {
    nn_conv2d conv[VGG19_CONVS];
    nn_pool2d pool;
    nn_act feat[VGG19_CONVS];   /* ReLU outputs of the last forward (the loss taps) */
    nn_act pooled[4];
    nn_act target[VGG19_CONVS]; /* cached target features */
    int target_n, target_h, target_w;
    nn_act grad[2];             /* gradients, ping-pong between consecutive layers */
    nn_act x;                   /* the input of the last forward, NCHW */
    pgn_l1_taps sums;
    int winograd_auto;          /* pick Winograd per batch size (0: conv[i].winograd as set) */
    nn_act dx;
} vgg19;

/* torchvision's key names of conv i: "features.<idx>.weight" / ".bias". */
int vgg19_feature_index(int conv);
int vgg19_cin(int conv);
int vgg19_cout(int conv);
/* Seeded random weights (PyTorch's default conv init) until real weights are loaded. */
int vgg19_init(vgg19 *v, uint64_t seed, nn_err *e);
void vgg19_free(vgg19 *v);
/* Caches the features of target (NCHW, normalised space, [n, 3, h, w]). */
int vgg19_set_target(nn_ctx *ctx, vgg19 *v, const float *target, int n, int h, int w, nn_err *e);
/* Perceptual loss of x against the cached target: per_sample[n] (may be NULL) and their sum in *loss;
 * with grad != NULL also d(sum of per-sample losses)/dx, i.e. each sample's own gradient, NCHW. */
int vgg19_perceptual(nn_ctx *ctx, vgg19 *v, const float *x, int n, int h, int w, double *loss, double *per_sample,
                     float *grad, nn_err *e);

#endif
