/* A trained perceptual gradient network ready to predict: either backbone (ResNet-N or UNet),
 * found from the checkpoint's keys, in eval mode, with its proxy head. Loads pgnd's own
 * checkpoints and the authors' (plain state dicts, v0, v2 with backbone_to_grad_params). */
#ifndef PGN_PGN_NET_H
#define PGN_PGN_NET_H

#include "pgn/pgn_resnet.h"
#include "pgn/pgn_unet.h"
#include "pgn/proxy.h"

typedef struct pgn_net {
    pgn_resnet *resnet; /* exactly one is set */
    pgn_unet *unet;
    pgn_proxy head;
    float *x, *o;       /* the UNet's concatenated input; the backbone output (reused) */
    size_t cap;
    char desc[256];     /* "resnet4, grad scale 0.025" */
    int folded;         /* the backbone's BNs are folded into its convolutions (pgn_*_fold_bn) */
    int lean;           /* its forward keeps no activations for a backward (pgn_*_set_lean) */
    int released;       /* the plain (PyTorch-layout) weights of its oneDNN convs were freed */
} pgn_net;

/* Loads the checkpoint and puts the backbone in eval mode with its batch norms folded into the
 * convolutions (pgn_resnet_fold_bn / pgn_unet_fold_bn): prediction only, same output up to float
 * rounding, fewer passes; and runs inference-only forwards (pgn_unet_set_lean / pgn_resnet_set_lean:
 * the same output, about half the engine memory of a forward at 128x128). A folded net keeps no
 * weight gradients, and after its first prediction no PyTorch-layout copy of the weights oneDNN
 * holds in its own layout (the weights then live once in memory). = pgn_net_load_opts(n, path, 1,
 * e). */
int pgn_net_load(pgn_net *n, const char *path, nn_err *e);
/* fold 0: the backbone stays an ordinary eval-mode net (BNs run as their own layers; its backward,
 * state dict and pgn_*_set_training keep working). */
int pgn_net_load_opts(pgn_net *n, const char *path, int fold, nn_err *e);
/* Reads a PGN checkpoint's tensors and metadata: an exported PGN, the authors' files, or a fit's
 * training checkpoint (pgn/fit.h), of which only the PGN part ("pgn/" tensors) is kept, so a fit can
 * be tried out before it ends. */
int pgn_checkpoint_read(nn_weights *w, const char *path, nn_err *e);
void pgn_net_free(pgn_net *n);
/* From y_hat and y (NCHW [b, 3, h, w], normalised space): the proxy target p and the predicted
 * gradient g = dP/dy_hat (either may be NULL). The PGN never backpropagates (stop-gradient). */
int pgn_net_predict(nn_ctx *ctx, pgn_net *n, const float *yhat, const float *y, int b, int h, int w, float *p,
                    float *g, nn_err *e);

#endif
