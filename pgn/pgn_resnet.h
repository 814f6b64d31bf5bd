/* The PGN backbone "ResNet-N" (spec/method.md §3.1; state-dict keys: spec/pgn-checkpoint-keys.md
 * §2.1), on the engine's layers. N = 4, 6 or 8 in the paper (any 1..PGN_RESNET_MAX_BLOCKS builds).
 *
 *   input x = concat[yhat, y] (6 channels: the generated image FIRST, then the target), H, W even
 *   model.0      conv3x3 6->64, pad 1, no bias       -> model.1 BN -> LReLU(0.2)
 *   model.3      conv3x3 64->128, stride 2, no bias   -> model.4 BN -> LReLU       (H/2 x W/2)
 *   model.6..5+N ResnetBlock(128): x + [conv_block.0 conv3x3 (bias) -> .1 BN -> LReLU ->
 *                conv_block.3 conv3x3 (bias) -> .4 BN]; no activation after the sum
 *   model.6+N    nearest upsample x2
 *   model.7+N    conv3x3 128->64, no bias -> model.8+N BN -> LReLU
 *   model.10+N   conv3x3 64->3 with bias -> o (3 channels, no activation: the proxy head applies
 *                the sigmoid, pgn/proxy.h)
 * Zero padding everywhere; BN eps 1e-5, momentum 0.1. Parameters: 1,335,875 (N=4), 1,927,235
 * (N=6), 2,518,595 (N=8) = 1,335,875 + 295,680 (N-4); state-dict keys 20 + 14 N.
 *
 * BN mode: pgn_resnet_set_training(r, 1) (the default): batch statistics, running statistics
 * updated by each forward (PGN training); 0: running statistics (the PGN at generator-training
 * time, spec §2.5). The backward works in both modes. For prediction, pgn_resnet_fold_bn folds
 * the BNs (eval mode) into the convolutions.
 *
 * The PGN's inputs are detached, so the backward computes parameter gradients only (no input
 * gradient). Gradients ACCUMULATE into the layers' dweight/dbias/dgamma/dbeta (clear them with
 * pgn_resnet_zero_grad or nn_params_zero_grad before each step, as PyTorch's zero_grad). */
#ifndef PGN_PGN_RESNET_H
#define PGN_PGN_RESNET_H

#include <stddef.h>
#include <stdint.h>

#include "nn/adam.h"
#include "nn/engine.h"
#include "nn/weights.h"
#include "pgn/state_dict.h"

#define PGN_RESNET_MAX_BLOCKS 16
#define PGN_RESNET_IN_CH 6
#define PGN_RESNET_OUT_CH 3
#define PGN_RESNET_MAX_MODULES (7 + 4 * PGN_RESNET_MAX_BLOCKS)
#define PGN_RESNET_MAX_PARAMS (11 + 8 * PGN_RESNET_MAX_BLOCKS)
#define PGN_RESNET_MAX_KEYS (20 + 14 * PGN_RESNET_MAX_BLOCKS)
#define PGN_RESNET_LEAN_BUFS 3 /* activation buffers of the inference-only forward */
/* Counts for n blocks. */
#define PGN_RESNET_PARAM_TENSORS(n) (11 + 8 * (n))
#define PGN_RESNET_STATE_KEYS(n) (20 + 14 * (n))
#define PGN_RESNET_PARAM_COUNT(n) (1335875 + 295680 * ((n) - 4))

/* Activations of a residual block (in forward order). B1 is a LeakyReLU input; the block's second
 * BN output goes to a scratch shared by all blocks (the sum's backward does not need it). */
enum { PGN_RB_C1, PGN_RB_B1, PGN_RB_L1, PGN_RB_C2, PGN_RB_OUT, PGN_RB_ACTS };

typedef struct pgn_resnet_block {
    nn_conv2d conv1, conv2;   /* conv_block.0, conv_block.3 */
    nn_batchnorm2d bn1, bn2;  /* conv_block.1, conv_block.4 */
    nn_act act[PGN_RB_ACTS];
} pgn_resnet_block;

/* Activations outside the blocks, in forward order. *_BN are LeakyReLU inputs. */
enum {
    PGN_RS_X,                                   /* the 6-channel input */
    PGN_RS_STEM_CONV, PGN_RS_STEM_BN, PGN_RS_STEM_ACT,
    PGN_RS_DOWN_CONV, PGN_RS_DOWN_BN, PGN_RS_DOWN_ACT,
    PGN_RS_UP, PGN_RS_UP_CONV, PGN_RS_UP_BN, PGN_RS_UP_ACT,
    PGN_RS_OUT,                                 /* o */
    PGN_RS_ACTS
};

/* One state-dict module (pgn/state_dict.h): a conv or a BN, in state-dict order. */
typedef pgn_module pgn_resnet_module;

typedef struct pgn_resnet {
    int blocks;                /* N */
    int training;              /* BN mode (see above) */
    nn_conv2d stem, down, up_conv, final;       /* model.0, model.3, model.7+N, model.10+N */
    nn_batchnorm2d stem_bn, down_bn, up_bn;     /* model.1, model.4, model.8+N */
    pgn_resnet_block blk[PGN_RESNET_MAX_BLOCKS];
    nn_eltwise lrelu;
    nn_upsample2x up;
    nn_act act[PGN_RS_ACTS];   /* activations of the last forward; act[PGN_RS_OUT] is o */
    nn_act b2;                 /* scratch: a block's second BN output */
    nn_act grad[PGN_RS_ACTS];  /* gradients during the backward (grad[PGN_RS_OUT] holds dL/do) */
    nn_act gblk[PGN_RB_ACTS];  /* a block's gradients (shared by all blocks) */
    nn_act gchain[2];          /* gradients of block outputs / inputs (ping-pong) */
    nn_act gb2;
    float *xbuf;               /* host staging of the 6-channel input */
    size_t xbuf_cap;
    pgn_resnet_module mod[PGN_RESNET_MAX_MODULES];
    int nmod;
    nn_param params[PGN_RESNET_MAX_PARAMS]; /* state-dict order, as PyTorch's parameters() */
    int nparams;
    int forwarded;             /* a forward ran and its activations are intact */
    int folded;                /* 1: BNs folded into the convs (pgn_resnet_fold_bn), prediction only;
                                * -1: a fold failed partway (the net is unusable) */
    int lean;                  /* inference-only forwards (pgn_resnet_set_lean): activations in lean_buf[] */
    nn_act lean_buf[PGN_RESNET_LEAN_BUFS];
} pgn_resnet;

/* Builds ResNet-`blocks` with PyTorch's default initialisation drawn from the engine's seeded
 * generator (convs U(+-1/sqrt(fan_in)); BN weight 1, bias 0, running mean 0, var 1), in train mode.
 * blocks must be in 1..PGN_RESNET_MAX_BLOCKS (the paper: 4, 6, 8). */
int pgn_resnet_init(pgn_resnet *r, int blocks, uint64_t seed, nn_err *e);
void pgn_resnet_free(pgn_resnet *r);

/* BN mode of every BN: 1 batch statistics (updates running stats), 0 running statistics.
 * A folded net (pgn_resnet_fold_bn) stays in eval mode: a request for train mode is ignored. */
void pgn_resnet_set_training(pgn_resnet *r, int training);

/* Prediction only, in eval mode: folds every BN into the convolution before it (with the running
 * statistics, nn_conv2d_fold_bn; the stem, down and up convolutions get a bias) and fuses each
 * LeakyReLU(0.2) into its convolution (oneDNN eltwise post-op). The forward then runs 2 + 2N + 2
 * convolutions, N residual sums and the upsampling, with no BN or activation pass, and gives the
 * eval-mode output up to float rounding. The convs' weights are frozen (oneDNN's copies made once).
 * Afterwards: the backward is refused, pgn_resnet_set_training(r, 1) is ignored, loading a state
 * dict is refused, and the conv weights/biases (mod[], params) hold the folded values, so they are
 * NOT the state dict: do not export or train them. The intermediate activations act[*_CONV],
 * act[*_BN], blk[].act[PGN_RB_C1], [PGN_RB_B1] are not written. Fails in train mode; a second call
 * does nothing. */
int pgn_resnet_fold_bn(pgn_resnet *r, nn_err *e);

/* Inference-only forwards, for a folded net (pgn_resnet_fold_bn; pgn_net_load turns it on): the
 * folded forward's layers in the same order, but every activation between the input and the output
 * goes into one of PGN_RESNET_LEAN_BUFS buffers reused layer after layer (the net has no long skip
 * connection: only a residual block's input stays alive, and the block's sum is written into it).
 * The buffers are owned by the net, sized by the first forward of a shape and grown only for a
 * larger one (a steady-state forward allocates nothing). Same output as the folded forward, bit for
 * bit; for ResNet-4 well under half its activation memory. Only act[PGN_RS_X] and act[PGN_RS_OUT]
 * are written of the net's activations; the backward is refused. on = 1 frees the ordinary
 * forward's activations, on = 0 frees the lean buffers (the next forward is an ordinary folded
 * one). Fails unless the net is folded. */
int pgn_resnet_set_lean(pgn_resnet *r, int on, nn_err *e);

/* H and W must be positive and even (the stride-2 conv and the x2 upsample must give back H x W). */
int pgn_resnet_check_size(int h, int w, nn_err *e);

/* Forward on concat[yhat, target], both NCHW [n, 3, h, w] float arrays in normalised space.
 * o (may be NULL) receives the output NCHW [n, 3, h, w]; it also stays in r->act[PGN_RS_OUT]
 * (engine layout). In train mode updates the BN running statistics. */
int pgn_resnet_forward(nn_ctx *ctx, pgn_resnet *r, const float *yhat, const float *target, int n, int h, int w,
                       float *o, nn_err *e);
/* The same from activations (any layout; 3 channels each, same dims). */
int pgn_resnet_forward_act(nn_ctx *ctx, pgn_resnet *r, const nn_act *yhat, const nn_act *target, nn_err *e);
/* The output of the last forward (engine layout). */
static inline const nn_act *pgn_resnet_output(const pgn_resnet *r) { return &r->act[PGN_RS_OUT]; }

/* Backward of the last forward from dL/do (NCHW float array [n, 3, h, w], or an activation in any
 * layout), ACCUMULATING every parameter's gradient. Uses the BN mode of the forward. */
int pgn_resnet_backward(nn_ctx *ctx, pgn_resnet *r, const float *dout, nn_err *e);
int pgn_resnet_backward_act(nn_ctx *ctx, pgn_resnet *r, const nn_act *dout, nn_err *e);

/* The parameter tensors with their gradients (state-dict order: 11 + 8 N), for nn_adam_init. */
const nn_param *pgn_resnet_params(const pgn_resnet *r, int *count);
void pgn_resnet_zero_grad(pgn_resnet *r);
/* Sum of the parameters' element counts (PGN_RESNET_PARAM_COUNT(N)). */
size_t pgn_resnet_param_count(const pgn_resnet *r);

/* The number of residual blocks a state dict / checkpoint holds: the checkpoint meta
 * "backbone_params.num_blocks" when present (v2), else the number of distinct
 * "model.<i>.conv_block" prefixes (v0/v1 files and plain state dicts). Fails when neither gives a
 * number in 1..PGN_RESNET_MAX_BLOCKS, when the two disagree, or when "backbone_type" is present
 * and not "resnet". */
int pgn_resnet_blocks_of(const nn_weights *w, int *blocks, nn_err *e);

/* State dict (the official key names). Checks w against the 20 + 14 N keys: writes one problem
 * per line into report ("missing key K", "key K has shape [..], expected [..]", "key K has dtype
 * D, expected ...", "unexpected key K") and returns the number of problems (0 = loadable). */
int pgn_resnet_check_state(const pgn_resnet *r, const nn_weights *w, char *report, size_t len);
/* Loads every key (floats of any dtype converted to float32; num_batches_tracked as an integer).
 * Refuses, loading nothing, when pgn_resnet_check_state finds problems: the message names the
 * file and lists every problem ("; "-separated). */
int pgn_resnet_load(pgn_resnet *r, const nn_weights *w, nn_err *e);
int pgn_resnet_load_file(pgn_resnet *r, const char *path, nn_err *e);

#endif
