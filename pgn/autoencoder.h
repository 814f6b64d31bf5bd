/* The autoencoders that generate the PGN's training inputs (spec/method.md §3.4; layer list and
 * state-dict keys: spec/pgn-checkpoint-keys.md §2.3, archs/autoencoder.py's
 * Autoencoder("doubleblaze", "sep", max_layer)), on the engine's layers.
 *
 *   sep(cin, cout, k)   = Conv kxk (groups gcd(cin, cout), bias, pad (k-1)/2) -> Conv1x1 (bias) -> ReLU
 *   blaze(cin, cout, s) = dw5x5 (groups cin, stride s) -> pw1x1 -> BN -> ReLU -> dw5x5 (groups cout)
 *                         -> pw1x1 -> BN, + (x, or Conv1x1 stride 2 when s = 2) -> ReLU; no conv biases
 *   model.0 = Conv7x7 3->128 s2 p3 (no bias) -> BN -> ReLU                         (H/2)
 *   max_layer >= 1: model.1 = MaxPool(3, s2, p1) -> blaze(128, 128, 1)            (H/4)
 *   max_layer == 2: model.2 = blaze(128, 256, 2)                                  (H/8)
 *   mid = sep(C -> C, 1x1); then max_layer + 1 times: bilinear up x2 (align_corners=True) -> sep 3x3
 *   (max_layer 0: 128->128; 1: 128->128, 128->128; 2: 256->256, 256->128, 128->128);
 *   last = Conv1x1 128->3 (bias). No output activation. Input: 3 channels (normalised image).
 * Parameters: 54,019 / 111,491 / 408,195 in 13 / 25 / 38 tensors (7 / 15 / 24 modules);
 * state-dict keys 16 / 34 / 53 (all prefixed "model.").
 * BN: eps 1e-5, momentum 0.1; train mode (batch statistics, running statistics updated; the
 * default after init) or eval mode (running statistics), pgn_autoencoder_set_training.
 *
 * H and W must be positive multiples of 2^(max_layer+1) (so every up x2 restores the size).
 *
 * The backward computes the parameter gradients only (no input gradient), ACCUMULATING into the
 * layers' dweight/dbias/dgamma/dbeta (clear them with pgn_autoencoder_zero_grad before each step). */
#ifndef PGN_AUTOENCODER_H
#define PGN_AUTOENCODER_H

#include <stddef.h>
#include <stdint.h>

#include "nn/adam.h"
#include "nn/engine.h"
#include "nn/rng.h"
#include "nn/weights.h"
#include "pgn/blaze.h"
#include "pgn/state_dict.h"

#define PGN_AE_IN_CHANNELS 3
#define PGN_AE_OUT_CHANNELS 3
#define PGN_AE_MAX_LAYER 2
#define PGN_AE_MAX_MODULES 24       /* max_layer 2: 17 convs + 7 BNs */
#define PGN_AE_MAX_PARAM_TENSORS 38
#define PGN_AE_MAX_RELUS 9          /* stem + 2 per block + mid + decoder seps */

/* Parameter counts, tensors, modules and state-dict keys by max_layer. */
extern const size_t PGN_AE_PARAM_COUNT[3];  /* 54019, 111491, 408195 */
extern const int PGN_AE_PARAM_TENSORS[3];   /* 13, 25, 38 */
extern const int PGN_AE_MODULES[3];         /* 7, 15, 24 */
extern const int PGN_AE_STATE_KEYS[3];      /* 16, 34, 53 */

/* sep conv: c0 (kxk grouped) -> c1 (1x1, the ReLU as its post-op) -> out. */
typedef pgn_sep pgn_ae_sep;     /* pgn/blaze.h */
typedef pgn_blaze pgn_ae_blaze;

typedef struct pgn_autoencoder {
    int max_layer;
    /* model.0: stem conv -> BN -> ReLU */
    nn_conv2d stem;
    nn_batchnorm2d stem_bn;
    nn_act stem_c, stem_out, stem_gc, stem_gout; /* stem_out = relu(bn(stem_c)), one pass */
    /* model.1.0 max pool, then blk[0] = model.1.1, blk[1] = model.2 */
    nn_pool2d pool;
    nn_act pool_out, pool_g;
    pgn_ae_blaze blk[2];
    nn_act blk_gout[2];  /* gradient of each block's output */
    pgn_ae_sep mid;
    nn_act mid_g;        /* gradient of mid's output (only when the upsampling's fused backward
                          * declined; otherwise it is already through the ReLU, in mid.gpre) */
    pgn_ae_sep dec[PGN_AE_MAX_LAYER + 1];
    nn_act up[PGN_AE_MAX_LAYER + 1], up_g[PGN_AE_MAX_LAYER + 1];
    nn_act dec_g[PGN_AE_MAX_LAYER + 1]; /* gradient of decoder sep j's output, where its consumer's
                                         * fused backward declined (else it is in dec[j].gpre) */
    int dec_fused[PGN_AE_MAX_LAYER + 1]; /* the last forward ran decoder step j's upsampling inside
                                          * its sep's depthwise conv (nn/upsample_dwconv.h): up[j]
                                          * was not made */
    nn_conv2d last;
    nn_eltwise relu;
    nn_upsample2x upsample;
    nn_act x;            /* input of the last forward */
    nn_act out, dout;    /* output of the last forward; its gradient (from NCHW) */
    pgn_module mod[PGN_AE_MAX_MODULES];
    int nmod;
    nn_param params[PGN_AE_MAX_PARAM_TENSORS]; /* state-dict order, as PyTorch's parameters() */
    int nparams;
    char relu_name[PGN_AE_MAX_RELUS][32];
    int nrelu;
    int training;        /* BN mode of the next forward (1 after init) */
    int forwarded;       /* a train-mode forward ran (the backward needs one) */
} pgn_autoencoder;

/* Builds Autoencoder(max_layer), max_layer in {0, 1, 2}, with PyTorch's default initialisation
 * drawn from a generator seeded with seed (convs: U(+-1/sqrt(fan_in)) weights and biases; BN
 * weight 1, bias 0, running mean 0, var 1), in train mode. */
int pgn_autoencoder_init(pgn_autoencoder *ae, int max_layer, uint64_t seed, nn_err *e);
void pgn_autoencoder_free(pgn_autoencoder *ae);
/* Re-initialises every conv and BN as PyTorch's reset_parameters() does (the paper resets
 * autoencoders that went stale): conv weights and biases U(+-1/sqrt(fan_in)) from rng; BN weight 1,
 * bias 0 and, as BatchNorm2d.reset_parameters also does, running mean 0, running var 1,
 * num_batches_tracked 0. Shapes, gradients, the training flag and any optimiser state are left
 * alone (reset the optimiser's moments separately if wanted). */
void pgn_autoencoder_reset(pgn_autoencoder *ae, nn_rng *rng);
/* The paper's reset rule (method.md §4.1), after a step at `samples` samples seen with L1 error
 * l1: *best / *best_at track the best L1 and when it was reached; L1 above l1_limit (or NaN)
 * resets, else a plateau of plateau_samples resets with probability prob (one draw from rng, only
 * when the plateau holds). A reset re-initialises the net (pgn_autoencoder_reset) and restarts the
 * tracking. Returns 1 when it reset. */
int pgn_autoencoder_reset_if_stale(pgn_autoencoder *ae, double l1, double samples, double *best, double *best_at,
                                   double l1_limit, double plateau_samples, double prob, nn_rng *rng);
/* 1: BN uses batch statistics and updates its running statistics; 0: running statistics. */
void pgn_autoencoder_set_training(pgn_autoencoder *ae, int training);

/* Mixed precision: the dense convolutions (the stem, the 1x1s, the Blaze shortcut) multiply in
 * bf16 where the CPU has native bf16 kernels (nn_conv2d.bf16: x, dy and the weights rounded to
 * bf16, sums, activations, gradients, BN, the optimiser and the parameters in f32), or all in f32
 * (the default, PyTorch's). The depthwise and grouped convolutions stay f32. */
int pgn_autoencoder_set_bf16(pgn_autoencoder *ae, int on, nn_err *e);
/* 1 when a convolution of the last forward ran on bf16 kernels. */
int pgn_autoencoder_runs_bf16(const pgn_autoencoder *ae);

/* H and W positive multiples of 2^(max_layer+1). */
int pgn_autoencoder_check_size(const pgn_autoencoder *ae, int h, int w, nn_err *e);
/* Forward on x = NCHW [n, 3, h, w]. o (may be NULL) receives the output NCHW [n, 3, h, w]; the
 * output also stays in ae->out (engine layout). */
int pgn_autoencoder_forward(nn_ctx *ctx, pgn_autoencoder *ae, const float *x, int n, int h, int w, float *o,
                            nn_err *e);
/* The same from an activation (any layout, 3 channels). */
int pgn_autoencoder_forward_act(nn_ctx *ctx, pgn_autoencoder *ae, const nn_act *x, nn_err *e);
/* Backward of the last (train-mode) forward from dL/do (NCHW float array, or an activation in any
 * layout), ACCUMULATING every parameter's gradient. Refused after an eval-mode forward. */
int pgn_autoencoder_backward(nn_ctx *ctx, pgn_autoencoder *ae, const float *dout, nn_err *e);
int pgn_autoencoder_backward_act(nn_ctx *ctx, pgn_autoencoder *ae, const nn_act *dout, nn_err *e);

/* The parameter tensors with their gradients (state-dict order), for nn_adam_init. */
const nn_param *pgn_autoencoder_params(const pgn_autoencoder *ae, int *count);
void pgn_autoencoder_zero_grad(pgn_autoencoder *ae);
size_t pgn_autoencoder_param_count(const pgn_autoencoder *ae);

/* By the official module name of each ReLU ("model.0.2", "model.1.1.r1", "model.2.r2", "model.3.2",
 * ...; i = 0..ae->nrelu-1, forward order; NULL past the end), what its backward reads from the last
 * forward: its input, or, for the seps' ReLUs (inside their 1x1 convolutions) and those inside a
 * batch norm, its output. For tests (mask pinning): writing into it changes the next backward's
 * mask, except where pgn_autoencoder_relu_mask_fixed (and, for an output, also what the next layer
 * reads as its input, by as much as is written). */
nn_act *pgn_autoencoder_relu_input(pgn_autoencoder *ae, int i, const char **name);
/* 1 for the ReLUs that run inside a batch norm (the stem's, each block's first: nn_batchnorm2d
 * fuse_relu): their backward reads a mask oneDNN kept from the forward, which writing into the
 * activation above does not change. */
int pgn_autoencoder_relu_mask_fixed(const pgn_autoencoder *ae, int i);

/* State dict (the official keys, "model.*"): see pgn/state_dict.h. */
int pgn_autoencoder_check_state(const pgn_autoencoder *ae, const nn_weights *w, char *report, size_t len);
int pgn_autoencoder_load(pgn_autoencoder *ae, const nn_weights *w, nn_err *e);
int pgn_autoencoder_load_file(pgn_autoencoder *ae, const char *path, nn_err *e);

#endif
