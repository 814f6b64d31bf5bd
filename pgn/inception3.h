/* Keras InceptionV3 up to `mixed2` as a perceptual teacher (issue 7): the stem (conv2d_1 .. conv2d_5,
 * two 3x3/2 max-pools) and the three 35x35 Inception-A blocks, with the ImageNet weights of a tfjs
 * layers model (nsfwjs 4.4.0's inception_v3, whose layers up to mixed5 are untouched ImageNet weights).
 *
 * Keras conventions: input in [-1, 1]; "valid" / "same" padding as the topology says (symmetric for
 * the odd kernels used here); every Conv2D has no bias and is followed by a BatchNormalization with
 * eps 1e-3 and no scale, folded into the convolution at load; "same" 3x3 average pooling counts only
 * in-image elements (TensorFlow's rule).
 *
 * Perceptual loss, per sample: sum over the taps activation_3, activation_5, mixed0, mixed1, mixed2
 * of mean over C,H,W |phi_t(x) - phi_t(y)|, unit weights; the target's taps are cached. */
#ifndef PGN_INCEPTION3_H
#define PGN_INCEPTION3_H

#include "nn/engine.h"
#include "nn/weights.h"
#include "pgn/l1_taps.h"

#define INC3_CONVS 26 /* conv2d_1 .. conv2d_26 (index i holds conv2d_{i+1}) */
#define INC3_BLOCKS 3 /* mixed0 .. mixed2 */
#define INC3_TAPS 5
#define INC3_MIN_SIZE 27 /* the smallest input side for which mixed2 is at least 1x1 */

extern const char *const inc3_tap_names[INC3_TAPS];

typedef struct inception3 {
    nn_conv2d conv[INC3_CONVS];
    nn_pool2d maxpool, avgpool;
    nn_eltwise relu;
    nn_act x, out[INC3_CONVS];       /* input; ReLU outputs of every conv */
    nn_act pool[2];                  /* max-pool outputs (the stem's, then mixed0's input) */
    nn_act avg[INC3_BLOCKS];         /* each block's average-pooled input */
    nn_act cat1[INC3_BLOCKS], cat2[INC3_BLOCKS], mixed[INC3_BLOCKS]; /* concatenation, two at a time */
    nn_act target[INC3_TAPS];
    int target_n, target_h, target_w;
    nn_act dout[INC3_CONVS], dpool[2], davg, dcat1, dcat2, dmixed[INC3_BLOCKS], dmask, dx;
    pgn_l1_taps sums;
} inception3;

/* Seeded random weights (PyTorch's default conv init, with a bias in place of the folded BN). */
int inception3_init(inception3 *v, uint64_t seed, nn_err *e);
void inception3_free(inception3 *v);
/* Checks a tfjs model's weights (and its topology, when the meta holds one) against this network:
 * one problem per line in report; returns the number of problems (0 = usable). Keys of later layers
 * are expected, not problems. */
int inception3_check_weights(const nn_weights *w, char *report, size_t len);
/* Is this weights name one the network reads? (a filter for nn_weights_read_filtered) */
int inception3_needs_key(const char *name, void *arg);
/* Loads (and folds) checked weights into a network made by inception3_init. */
int inception3_load(inception3 *v, const nn_weights *w, nn_err *e);

/* Forward of x (NCHW, [-1, 1], [n, 3, h, w]); the taps are then valid. */
int inception3_forward(nn_ctx *ctx, inception3 *v, const float *x, int n, int h, int w, nn_err *e);
/* Tap t of the last forward (activation_3, activation_5, mixed0, mixed1, mixed2). */
const nn_act *inception3_tap(const inception3 *v, int t);
int inception3_set_target(nn_ctx *ctx, inception3 *v, const float *target, int n, int h, int w, nn_err *e);
/* As vgg19_perceptual: per_sample[n] (may be NULL), their sum in *loss, and with grad != NULL each
 * sample's gradient w.r.t. its [-1, 1] input, NCHW. */
int inception3_perceptual(nn_ctx *ctx, inception3 *v, const float *x, int n, int h, int w, double *loss,
                          double *per_sample, float *grad, nn_err *e);

#endif
