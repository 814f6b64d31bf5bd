/* The light blocks shared by the PGN UNet (§3.2) and the autoencoders (§3.4), on engine layers:
 *   sep(cin, cout, k):  Conv kxk (groups gcd(cin, cout), bias) -> Conv1x1 (bias) -> ReLU
 *                       (the ReLU runs inside the 1x1 as its post-op, in training too: the net
 *                       that builds a sep sets c1.post_relu; the backward reads the output's sign)
 *   DoubleBlaze:        dw5x5 (stride) -> pw1x1 -> BN -> ReLU -> dw5x5 -> pw1x1 -> BN,
 *                       + residual (identity, or Conv1x1 stride 2), -> ReLU   (no conv biases)
 * The nets build them (and register their state-dict prefixes) themselves; these run them.
 * Backward functions ACCUMULATE parameter gradients and the input gradient (engine rules). */
#ifndef PGN_BLAZE_H
#define PGN_BLAZE_H

#include "nn/engine.h"

typedef struct pgn_sep {
    nn_conv2d c0, c1;
    nn_act a0, out;      /* activations of the last forward (out = relu(c1(a0))) */
    nn_act g0, gpre;     /* their gradients; gpre is w.r.t. the ReLU's input (the output's
                          * gradient is held by the consumer) */
} pgn_sep;

/* DoubleBlaze activations, in forward order; ACT1 = relu(bn1(PW1)) (the ReLU inside the batch norm,
 * bn1.fuse_relu, set by the net that builds the block), PRE2 = bn2 + residual. */
enum { PGN_B_DW1, PGN_B_PW1, PGN_B_ACT1, PGN_B_DW2, PGN_B_PW2, PGN_B_BN2, PGN_B_RES, PGN_B_PRE2, PGN_B_ACTS };

typedef struct pgn_blaze {
    int cin, cout, stride;
    nn_conv2d cdw1, cpw1, cdw2, cpw2, c1; /* c1 only when stride == 2 */
    nn_batchnorm2d bn1, bn2;
    nn_act t[PGN_B_ACTS];
    nn_act g[PGN_B_ACTS];
    nn_act out;
    int folded;          /* pgn_blaze_fold_bn ran: prediction only (t[PGN_B_PW1] and
                          * t[PGN_B_PW2] are not written; t[PGN_B_BN2] holds cpw2's folded output) */
} pgn_blaze;

/* name goes into error messages (the block's state-dict prefix). */
int pgn_sep_forward(nn_ctx *ctx, pgn_sep *s, const nn_act *x, const char *name, nn_err *e);
/* Inference-only forms (lean forwards): the activations go into the caller's buffers, nothing is
 * kept in the block for a backward. The sep writes c0's output into tmp and its output into y; the
 * block (folded only, pgn_blaze_fold_bn) ping-pongs between p and q and leaves its output in q. The
 * buffers must be distinct from each other and from x (but the sep's y may be x); x is only read
 * (until y is written). */
int pgn_sep_forward_into(nn_ctx *ctx, pgn_sep *s, const nn_act *x, nn_act *tmp, nn_act *y,
                         const char *name, nn_err *e);
int pgn_blaze_forward_into(nn_ctx *ctx, pgn_blaze *k, nn_eltwise *relu, const nn_act *x, nn_act *p, nn_act *q,
                           const char *name, nn_err *e);
/* gout: gradient of s->out; gx (may be NULL) receives the input gradient. */
int pgn_sep_backward(nn_ctx *ctx, pgn_sep *s, nn_eltwise *relu, const nn_act *x, const nn_act *gout, nn_act *gx,
                     const char *name, nn_err *e);
/* The same from gpre, the gradient already taken through the ReLU (w.r.t. c1's output), e.g. by a
 * consumer that applied the ReLU's mask in its own backward pass. */
int pgn_sep_backward_pre(nn_ctx *ctx, pgn_sep *s, const nn_act *x, const nn_act *gpre, nn_act *gx, const char *name,
                         nn_err *e);
int pgn_blaze_forward(nn_ctx *ctx, pgn_blaze *k, nn_eltwise *relu, const nn_act *x, const char *name, nn_err *e);
/* gout: gradient of k->out; gx receives the input gradient (both paths). */
int pgn_blaze_backward(nn_ctx *ctx, pgn_blaze *k, nn_eltwise *relu, const nn_act *x, const nn_act *gout, nn_act *gx,
                       const char *name, nn_err *e);
/* Prediction only: folds bn1 into cpw1 (with the ReLU after it fused in) and bn2 into cpw2, with
 * the BNs' running statistics (nn_conv2d_fold_bn). The forward then skips both BNs; the residual
 * sum and the last ReLU stay. The backward is refused afterwards. */
int pgn_blaze_fold_bn(pgn_blaze *k, nn_err *e);
/* Frees the blocks' activations (their layers belong to the net's free). */
void pgn_sep_free_acts(pgn_sep *s);
void pgn_blaze_free_acts(pgn_blaze *k);

#endif
