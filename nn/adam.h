/* Adam with PyTorch's semantics (torch.optim.Adam, amsgrad=False, maximize=False) and
 * global-norm gradient clipping (torch.nn.utils.clip_grad_norm_). */
#ifndef NN_ADAM_H
#define NN_ADAM_H

#include "nn/err.h"
#include "nn/tensor.h"

typedef struct nn_param {
    nn_tensor *value;
    nn_tensor *grad; /* same numel as value */
} nn_param;

typedef struct nn_adam {
    float lr, beta1, beta2, eps, weight_decay; /* weight_decay is L2 added to the gradient, as torch Adam */
    long step;                                  /* steps taken so far */
    int count;
    nn_param *params;                           /* copied at init */
    nn_tensor *m, *v;                           /* first/second moments, one per param */
} nn_adam;

/* lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 0 are PyTorch's defaults. */
int nn_adam_init(nn_adam *opt, const nn_param *params, int count, float lr, float beta1, float beta2, float eps,
                 float weight_decay, nn_err *e);
void nn_adam_free(nn_adam *opt);
/* One step: step += 1; for each p: g (+ wd*p); m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
 * p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps). */
void nn_adam_step(nn_adam *opt);
/* Resets all moments and the step count (not used by autoencoder resets: the paper keeps state). */
void nn_adam_reset(nn_adam *opt);
void nn_params_zero_grad(const nn_param *params, int count);

/* Global L2 norm of all gradients (computed in double). */
double nn_grad_norm(const nn_param *params, int count);
/* As clip_grad_norm_: total = norm; if max_norm / (total + 1e-6) < 1 scale every grad by it.
 * Returns the pre-clip total norm. */
double nn_clip_grad_norm(const nn_param *params, int count, double max_norm);

#endif
