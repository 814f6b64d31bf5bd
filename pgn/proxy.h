/* The PGN head: from the backbone output o to the proxy target p and the predicted gradient g
 * (spec/method.md §2.4 "proxy" mode with the "sigmoid" proxy, and §2.8 "direct" mode), on plain
 * NCHW float arrays [n, 3, h, w]. Everything is per sample, with N = C*H*W = 3*h*w the number of
 * elements of ONE sample (at the current resolution) and s the grad scale.
 *
 * Proxy mode (the default, backbone_to_grad_type 'proxy', type 'sigmoid'):
 *   p      = kappa * (sigmoid(o) - mean_c) / std_c          (kappa 1.1; ImageNet mean/std of pgn/teacher.h)
 *   g_pred = (1/s) d/dyhat mean_{c,h,w}(p - yhat)^2 = 2 (yhat - p) / (N s)   (yhat detached)
 * Backward, given dL/dp and/or dL/dg (yhat is detached, so g depends on o only through p):
 *   dL/dp_total = dL/dp - 2/(N s) * dL/dg
 *   dL/do       = dL/dp_total * kappa / std_c * sigmoid(o) * (1 - sigmoid(o))
 *
 * Direct mode (backbone_to_grad_type 'direct'; out_scale 512):
 *   o' = o / out_scale,  p = yhat - o',  g_pred = 2 o' / (N s)
 *   dL/do = (-dL/dp + 2/(N s) * dL/dg) / out_scale
 *
 * Defaults: s = 0.025 for the ResNet PGNs, 0.048 for the UNet (spec §2.4); a checkpoint's own values
 * are read by pgn_proxy_from_meta. The sigmoid is computed in float32 as 1 / (1 + exp(-o)). */
#ifndef PGN_PROXY_H
#define PGN_PROXY_H

#include "nn/err.h"
#include "nn/weights.h"

#define PGN_PROXY_KAPPA 1.1f
#define PGN_GRAD_SCALE_RESNET 0.025f
#define PGN_GRAD_SCALE_UNET 0.048f
#define PGN_DIRECT_OUT_SCALE 512.0f

typedef enum pgn_proxy_mode { PGN_PROXY_SIGMOID = 0, PGN_PROXY_DIRECT = 1 } pgn_proxy_mode;

typedef struct pgn_proxy {
    pgn_proxy_mode mode;
    float kappa;      /* sigmoid mode: backbone_to_grad_params.sigmoid.scale (1.1) */
    float grad_scale; /* s: backbone_to_grad_params.grad_scale */
    float out_scale;  /* direct mode: backbone_to_grad_params.out_scale (512) */
} pgn_proxy;

/* Sigmoid mode, kappa 1.1, out_scale 512, the given grad scale. */
pgn_proxy pgn_proxy_default(float grad_scale);

/* Reads the head from a checkpoint's meta (nn_weights_read flattens a v2 checkpoint's
 * backbone_to_grad_type / backbone_to_grad_params.* into dotted keys; a v0 file's top-level
 * "grad_scale" is read too). Keys that are absent keep the values *h already holds (start from
 * pgn_proxy_default). Refuses proxy types other than 'sigmoid', grad types other than 'mse',
 * backbone_to_grad_type other than 'proxy'/'direct', and non-positive scales. */
int pgn_proxy_from_meta(pgn_proxy *h, const nn_weights *w, nn_err *e);

/* Forward: p and/or g (either may be NULL) from o and yhat, all [n, 3, h, w]. */
void pgn_proxy_forward(const pgn_proxy *hd, const float *o, const float *yhat, int n, int h, int w, float *p,
                       float *g);
/* Backward: dL/do (written, not accumulated) from dL/dp and/or dL/dg (either may be NULL: zero).
 * o is the forward's input (the sigmoid is recomputed from it). */
void pgn_proxy_backward(const pgn_proxy *hd, const float *o, const float *dp, const float *dg, int n, int h, int w,
                        float *dout);

/* The sigmoid-mode formulas on their own, for callers that do not hold a pgn_proxy. */
void pgn_proxy_sigmoid_forward(const float *o, const float *yhat, int n, int h, int w, float kappa, float s,
                               float *p, float *g);
void pgn_proxy_sigmoid_backward(const float *o, const float *dp, const float *dg, int n, int h, int w, float kappa,
                                float s, float *dout);
void pgn_proxy_direct_forward(const float *o, const float *yhat, int n, int h, int w, float out_scale, float s,
                              float *p, float *g);
void pgn_proxy_direct_backward(const float *dp, const float *dg, int n, int h, int w, float out_scale, float s,
                               float *dout);

#endif
