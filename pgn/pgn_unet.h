/* The PGN "UNet" (spec/method.md §3.2; layer list and state-dict keys: spec/pgn-checkpoint-keys.md
 * §2.2, the official archs/unet_custom.py UNetCustom with its defaults), on the engine's layers.
 *
 *   sep(cin, cout, k)  = Conv kxk (groups gcd(cin, cout), bias, pad (k-1)/2) -> Conv1x1 (bias) -> ReLU
 *   blaze(cin, cout, s) = dw5x5 (groups cin, stride s) -> pw1x1 -> BN -> ReLU -> dw5x5 (groups cout)
 *                         -> pw1x1 -> BN, + (x, or Conv1x1 stride 2 when s = 2) -> ReLU; no conv biases
 *   x  = concat[yhat, y] (6 channels), x_original = sep(64->64, 3)(sep(6->64, 3)(x))       at H
 *   L0 = Conv7x7 s2 p3 (no bias) -> BN -> ReLU (64)                                        at H/2
 *   L1 = MaxPool(3, s2, p1) -> blaze(64, 64, 1); L2..L4 = blaze(64->128, 128->256, 256->512, 2)
 *   s_i = sep(c_i -> c_i, 1x1) of each level; decoder from s4: up x2 (bilinear, align_corners=True),
 *   concat[up, skip] (upsampled first), sep 3x3: 768->512, 640->256, 320->256, 320->128, and with
 *   x_original 192->64; o = Conv1x1 64->3 (bias). No output activation.
 * BN: eps 1e-5, momentum 0.1; train mode (batch statistics, running statistics updated) or eval mode
 * (running statistics), pgn_unet_set_training. 1,765,891 parameters in 88 tensors (54 modules:
 * 45 convs, 9 BNs); 115 state-dict keys.
 *
 * H and W must be multiples of 32 (five stride-2 levels). Train mode also needs more than one value
 * per channel at the deepest level (n * H/32 * W/32 >= 2).
 *
 * The backward computes the parameter gradients only (no input gradient), ACCUMULATING into the
 * layers' dweight/dbias/dgamma/dbeta (clear them with pgn_unet_zero_grad before each step). */
#ifndef PGN_PGN_UNET_H
#define PGN_PGN_UNET_H

#include <stddef.h>
#include <stdint.h>

#include "nn/adam.h"
#include "nn/engine.h"
#include "nn/weights.h"
#include "pgn/blaze.h"
#include "pgn/state_dict.h"

#define PGN_UNET_IN_CHANNELS 6
#define PGN_UNET_OUT_CHANNELS 3
#define PGN_UNET_MODULES 54         /* 45 convs + 9 BNs, state-dict order */
#define PGN_UNET_PARAM_TENSORS 88   /* conv weights (+ biases of the sep convs and conv_last), BN weight/bias */
#define PGN_UNET_PARAM_COUNT 1765891
#define PGN_UNET_STATE_KEYS 115
#define PGN_UNET_SEPS 12
#define PGN_UNET_RELUS 21           /* 12 seps + layer0 + 2 per block */
#define PGN_UNET_LEAN_BUFS 8        /* activation buffers of the inference-only forward */

/* sep conv: c0 (kxk grouped) -> c1 (1x1, the ReLU as its post-op) -> out. */
typedef pgn_sep pgn_unet_sep;     /* pgn/blaze.h */
typedef pgn_blaze pgn_unet_blaze;

/* One state-dict module (pgn/state_dict.h): a conv or a BN, in state-dict order. */
typedef pgn_module pgn_unet_module;

/* Indices into pgn_unet.sep[] (forward use order differs from state-dict order). */
enum {
    PGN_UNET_SEP_ORIG0, PGN_UNET_SEP_ORIG1,                   /* conv_original_size0/1 */
    PGN_UNET_SEP_SKIP0, PGN_UNET_SEP_SKIP1, PGN_UNET_SEP_SKIP2, PGN_UNET_SEP_SKIP3, PGN_UNET_SEP_SKIP4,
    PGN_UNET_SEP_ORIG2,                                       /* conv_original_size2 (192 -> 64) */
    PGN_UNET_SEP_UP0, PGN_UNET_SEP_UP1, PGN_UNET_SEP_UP2, PGN_UNET_SEP_UP3
};

typedef struct pgn_unet {
    /* layer0 */
    nn_conv2d l0_conv;
    nn_batchnorm2d l0_bn;
    nn_act l0_c, l0_out, l0_gc, l0_gout; /* l0_out = relu(bn(l0_c)), one pass */
    /* layer1's max pool, then blocks 1..4 (blk[0] = layer1.1, blk[1..3] = layer2..4) */
    nn_pool2d pool;
    nn_act pool_out, pool_g;
    pgn_unet_blaze blk[4];
    nn_act blk_gout[4];      /* gradient of each block's output */
    pgn_unet_sep sep[PGN_UNET_SEPS];
    nn_act orig_g;           /* gradient of x_original (conv_original_size1's output) */
    nn_act orig0_g;          /* gradient of conv_original_size0's output */
    nn_act skip_g[5];        /* gradients of s0..s4 (s4's only where the upsampling's fused backward
                              * declined: else it is through the ReLU, in its sep's gpre) */
    nn_act up[5], cat[5];    /* decoder step j = 0..4 (j = 0: 512 @ H/16 ... j = 4: @ H) */
    nn_act up_g[5], cat_g[5], dec_g[5]; /* dec_g[j]: gradient of decoder step j's sep output, where
                                         * its consumer's fused backward declined (else in its gpre) */
    nn_conv2d last;
    nn_eltwise relu;
    nn_upsample2x upsample;
    nn_act x;                /* input of the last forward (6 channels) */
    nn_act out, dout;        /* output of the last forward; its gradient (from NCHW) */
    pgn_unet_module mod[PGN_UNET_MODULES];
    nn_param params[PGN_UNET_PARAM_TENSORS]; /* state-dict order, as PyTorch's parameters() */
    int training;            /* BN mode of the next forward (1 after init) */
    int forwarded;           /* a train-mode forward ran (the backward needs one) */
    int folded;              /* 1: BNs folded, ReLUs fused (pgn_unet_fold_bn), prediction only;
                              * -1: a fold failed partway (the net is unusable) */
    int lean;                /* inference-only forwards (pgn_unet_set_lean): activations live in lean[] */
    nn_act lean_buf[PGN_UNET_LEAN_BUFS];
} pgn_unet;

/* Builds the net with PyTorch's default initialisation drawn from the engine's seeded generator
 * (convs: U(+-1/sqrt(fan_in)) weights and biases; BN weight 1, bias 0, running mean 0, var 1), in
 * train mode. The struct is large: allocate it on the heap. */
int pgn_unet_init(pgn_unet *u, uint64_t seed, nn_err *e);
void pgn_unet_free(pgn_unet *u);
/* 1: BN uses batch statistics and updates its running statistics (PyTorch's .train());
 * 0: BN uses the running statistics (.eval()). */
void pgn_unet_set_training(pgn_unet *u, int training);

/* Prediction only, in eval mode: folds every BN into the convolution before it (with the running
 * statistics, nn_conv2d_fold_bn: layer0's conv and the blocks' pointwise convs get a bias) and
 * fuses into the convolution each ReLU that directly follows one (layer0, each block's first
 * ReLU; every sep's ReLU runs inside its 1x1 convolution in any mode). The blocks' residual sums
 * and the ReLUs after them stay.
 * The output equals the eval-mode output up to float rounding. The convs' weights are frozen
 * (oneDNN's copies made once). Afterwards: the backward is refused, pgn_unet_set_training(u, 1) is
 * ignored, loading a state dict is refused, the conv weights/biases (mod[], params) hold the folded
 * values, so they are NOT the state dict (do not export or train them), and pgn_unet_relu_input's
 * activations are not written. Fails in train mode; a second call does nothing. */
int pgn_unet_fold_bn(pgn_unet *u, nn_err *e);

/* Inference-only forwards, for a folded net (pgn_unet_fold_bn; pgn_net_load turns it on): each
 * forward keeps only what is still needed later (the skip connections s0..s3 and x_original until
 * the decoder consumes them) and writes everything else into a few buffers it reuses layer after
 * layer (PGN_UNET_LEAN_BUFS, owned by the net, sized by the first forward of a shape; a steady-state
 * forward allocates nothing). Same output as the folded forward (the same layers in the same order),
 * about half the activation memory. Only u->x and u->out are written of the net's activations;
 * the backward is refused. on = 1 frees the ordinary forward's activations, on = 0 frees the lean
 * buffers (the next forward is an ordinary folded one). Fails unless the net is folded. */
int pgn_unet_set_lean(pgn_unet *u, int on, nn_err *e);

/* H and W multiples of 32 (and positive). */
int pgn_unet_check_size(int h, int w, nn_err *e);
/* Forward on x = NCHW [n, 6, h, w] (concat[yhat, y] along channels). o (may be NULL) receives the
 * output NCHW [n, 3, h, w]; the output also stays in u->out (engine layout). */
int pgn_unet_forward(nn_ctx *ctx, pgn_unet *u, const float *x, int n, int h, int w, float *o, nn_err *e);
/* The same from two 3-channel activations (any layout): the input is concat[yhat, y]. */
int pgn_unet_forward_pair(nn_ctx *ctx, pgn_unet *u, const nn_act *yhat, const nn_act *y, nn_err *e);
/* Backward of the last (train-mode) forward from dL/do (NCHW float array, or an activation in any
 * layout), ACCUMULATING every parameter's gradient. Refused after an eval-mode forward. */
int pgn_unet_backward(nn_ctx *ctx, pgn_unet *u, const float *dout, nn_err *e);
int pgn_unet_backward_act(nn_ctx *ctx, pgn_unet *u, const nn_act *dout, nn_err *e);

/* The 88 parameter tensors with their gradients (state-dict order), for nn_adam_init. */
const nn_param *pgn_unet_params(const pgn_unet *u, int *count);
void pgn_unet_zero_grad(pgn_unet *u);
/* Sum of the parameters' element counts (1,765,891). */
size_t pgn_unet_param_count(const pgn_unet *u);

/* By the official module name of each ReLU ("layer0.2", "layer1.1.r1", "layer2.r2", "conv_up0.2",
 * ...; i = 0..PGN_UNET_RELUS-1; NULL past the end), what its backward reads from the last forward:
 * its input, or, for the seps' ReLUs (inside their 1x1 convolutions) and those inside a batch
 * norm, its output. For tests (mask pinning) and diagnostics: writing into it changes the next
 * backward's mask, except where pgn_unet_relu_mask_fixed (and, for an output, also what the next
 * layer reads as its input, by as much as is written). */
nn_act *pgn_unet_relu_input(pgn_unet *u, int i, const char **name);
/* 1 for the ReLUs that run inside a batch norm (layer0's, each block's first: nn_batchnorm2d
 * fuse_relu): their backward reads a mask oneDNN kept from the forward, which writing into the
 * activation above does not change. */
int pgn_unet_relu_mask_fixed(const pgn_unet *u, int i);

/* State dict (the official key names). Checks w against the 115 keys: writes one problem per line
 * into report ("missing key K", "key K has shape [..], expected [..]", "key K has dtype D",
 * "unexpected key K") and returns the number of problems (0 = loadable). */
int pgn_unet_check_state(const pgn_unet *u, const nn_weights *w, char *report, size_t len);
/* Loads every key (floats of any dtype converted to float32; num_batches_tracked as an integer).
 * Refuses, loading nothing, when pgn_unet_check_state finds problems: the message names the file
 * and lists every problem ("; "-separated). */
int pgn_unet_load(pgn_unet *u, const nn_weights *w, nn_err *e);
int pgn_unet_load_file(pgn_unet *u, const char *path, nn_err *e);

#endif
