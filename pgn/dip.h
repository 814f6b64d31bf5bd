/* The Deep Image Prior "skip" encoder-decoder used in the evaluation (spec/method.md §3.5; layer
 * list and state-dict keys: spec/pgn-checkpoint-keys.md §2.4), on the engine's layers.
 *
 * Five levels, down/up channels (8, 16, 32, 64, 128), skip channels (0, 0, 0, 4, 4):
 *   level i: [skip_i (1x1 conv -> BN -> LReLU) concatenated FIRST with] deeper_i, where
 *            deeper_i = conv3x3 s2 -> BN -> LReLU -> conv3x3 -> BN -> LReLU -> [level i+1] -> up x2,
 *            then BN -> conv3x3 -> BN -> LReLU -> conv1x1 -> BN -> LReLU;
 *   output = conv1x1 (8 -> 3) of level 0, no sigmoid.
 * Every 3x3 conv reflection-pads by 1; every conv has a bias; LeakyReLU slope 0.2; upsampling is
 * bilinear with align_corners=True; BN (eps 1e-5, momentum 0.1) always in train mode (batch
 * statistics; the running statistics are updated by each forward but never used), as the DIP
 * runs in the official code. 572,827 parameters in 100 tensors (23 convs, 27 BNs).
 *
 * The input is a fixed noise tensor (pgn_dip_noise: U[0, 0.1)), so the backward computes the
 * parameter gradients only. H and W must be multiples of 32 and at least 64 (at 32 the deepest
 * level is 1x1, which neither reflection padding nor train-mode BN can handle; PyTorch refuses it
 * too).
 *
 * Gradients ACCUMULATE into the layers' dweight/dbias/dgamma/dbeta (clear them with
 * pgn_dip_zero_grad or nn_params_zero_grad before each step, as PyTorch's zero_grad). */
#ifndef PGN_DIP_H
#define PGN_DIP_H

#include <stddef.h>
#include <stdint.h>

#include "nn/adam.h"
#include "nn/engine.h"
#include "nn/weights.h"
#include "pgn/state_dict.h"

#define PGN_DIP_LEVELS 5
#define PGN_DIP_CONVS 23
#define PGN_DIP_BNS 27
#define PGN_DIP_PARAM_TENSORS 100   /* weight + bias of every conv and BN */
#define PGN_DIP_PARAM_COUNT 572827  /* their elements */
#define PGN_DIP_STATE_KEYS 181      /* state-dict keys: 23 x 2 + 27 x 5 */

/* Activations of one level, in forward order (s_: skip branch, d_: deeper branch, c_: after the
 * concat). Each BN followed by a LeakyReLU writes into the activation's buffer and the LeakyReLU
 * runs in place: its backward reads the sign of its output (the slope is positive, so the output
 * is positive exactly where the input is). *_conv are conv outputs (the BNs' inputs, kept for
 * their backward). */
enum {
    PGN_DIP_S_CONV, PGN_DIP_S_OUT,
    PGN_DIP_D_CONV1, PGN_DIP_D_ACT1, PGN_DIP_D_CONV2, PGN_DIP_D_ACT2,
    PGN_DIP_D_UP, PGN_DIP_CAT,
    PGN_DIP_C_BN, PGN_DIP_C_CONV3, PGN_DIP_C_ACT3, PGN_DIP_C_CONV1, PGN_DIP_OUT,
    PGN_DIP_ACTS
};

typedef struct pgn_dip_level {
    int cin, skip, down, up, k; /* input, skip, down, up channels; k = channels the deeper branch returns */
    nn_conv2d s_conv;
    nn_batchnorm2d s_bn;
    nn_conv2d d_conv1, d_conv2;
    nn_batchnorm2d d_bn1, d_bn2;
    nn_batchnorm2d c_bn;
    nn_conv2d c_conv3, c_conv1;
    nn_batchnorm2d c_bn3, c_bn1;
    nn_act act[PGN_DIP_ACTS]; /* activations of the last forward */
    /* The gradients that live across the deeper level's backward: of this level's output (written
     * by the level above), of the skip branch's output, of the deeper branch's input to the next
     * level (D_ACT2, written by it). Every other gradient is transient (pgn_dip.gt). */
    nn_act g_out, g_skip, g_deep;
} pgn_dip_level;

/* One state-dict module (pgn/state_dict.h): a conv or a BN, in state-dict order. */
typedef pgn_module pgn_dip_module;

typedef struct pgn_dip {
    pgn_dip_level lv[PGN_DIP_LEVELS];
    nn_conv2d final;
    nn_eltwise lrelu;
    nn_upsample2x up;
    nn_act x;       /* the fixed input, set by pgn_dip_set_input */
    nn_act y, dy;   /* output of the last forward; its gradient */
    nn_act gt[2];   /* the backward's transient gradients: each layer reads one and writes the other */
    pgn_dip_module mod[PGN_DIP_CONVS + PGN_DIP_BNS];
    nn_param params[PGN_DIP_PARAM_TENSORS]; /* state-dict order, as PyTorch's parameters() */
    int forwarded;  /* a forward ran since the input was set */
} pgn_dip;

/* Builds the net with PyTorch's default initialisation drawn from the engine's seeded generator
 * (convs: U(+-1/sqrt(fan_in)) weights and biases; BN: weight 1, bias 0, running mean 0, var 1). */
int pgn_dip_init(pgn_dip *d, uint64_t seed, nn_err *e);
void pgn_dip_free(pgn_dip *d);

/* Fixed input noise U[0, 0.1), count = n*3*h*w floats, from a seeded generator. */
void pgn_dip_noise(float *dst, size_t count, uint64_t seed);
/* Checks the size (H, W multiples of 32, >= 64) and makes x (NCHW [n, 3, h, w]) the net's input. */
int pgn_dip_check_size(int h, int w, nn_err *e);
int pgn_dip_set_input(nn_ctx *ctx, pgn_dip *d, const float *x, int n, int h, int w, nn_err *e);

/* Train-mode forward on the input. y (may be NULL) receives the output NCHW [n, 3, h, w]; the
 * output also stays in d->y (engine layout) for nn_* losses. Updates the BN running statistics. */
int pgn_dip_forward(nn_ctx *ctx, pgn_dip *d, float *y, nn_err *e);
/* Backward of the last forward from dL/dy (NCHW float array, or an activation in any layout),
 * ACCUMULATING every parameter's gradient. */
int pgn_dip_backward(nn_ctx *ctx, pgn_dip *d, const float *dy, nn_err *e);
int pgn_dip_backward_act(nn_ctx *ctx, pgn_dip *d, const nn_act *dy, nn_err *e);

/* The 100 parameter tensors with their gradients (state-dict order), for nn_adam_init. */
const nn_param *pgn_dip_params(const pgn_dip *d, int *count);
void pgn_dip_zero_grad(pgn_dip *d);
/* Sum of the parameters' element counts (572,827). */
size_t pgn_dip_param_count(const pgn_dip *d);

/* State dict (the official key names). Checks w against the 181 keys: writes one problem per line
 * into report ("missing key K", "key K has shape [..], expected [..]", "key K has dtype D",
 * "unexpected key K") and returns the number of problems (0 = loadable). */
int pgn_dip_check_state(const pgn_dip *d, const nn_weights *w, char *report, size_t len);
/* Loads every key (floats of any dtype converted to float32; num_batches_tracked as an integer).
 * Refuses, loading nothing, when pgn_dip_check_state finds problems: the message names the file
 * and lists every problem ("; "-separated). */
int pgn_dip_load(pgn_dip *d, const nn_weights *w, nn_err *e);
int pgn_dip_load_file(pgn_dip *d, const char *path, nn_err *e);
/* Copies parameters and BN buffers (the three DIPs of §5.1 start from identical weights). */
void pgn_dip_copy_state(pgn_dip *dst, const pgn_dip *src);

#endif
