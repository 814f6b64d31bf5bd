/* The perceptual losses' common sum: per sample, the sum over taps of mean over C,H,W |x_t - t_t|
 * (VGG-19's 13 ReLU outputs, inception3's five taps), with the target's taps cached by the net. */
#ifndef PGN_L1_TAPS_H
#define PGN_L1_TAPS_H

#include "nn/engine.h"

typedef struct pgn_l1_taps {
    double *ps, *tap; /* per-sample sums and one tap's per-sample means, grown to the batch size */
    int cap;
    double *raw;      /* [taps][n] per-sample sums of |x - t| (pgn_l1_taps_raw) */
    int raw_cap;
} pgn_l1_taps;

/* x[k] against target[k] for k < taps, batch n: per_sample[n] (may be NULL) and their sum in *loss
 * (may be NULL). Allocates only when the batch grows. */
int pgn_l1_taps_sum(nn_ctx *ctx, pgn_l1_taps *s, const nn_act *const *x, const nn_act *target, int taps, int n,
                    double *loss, double *per_sample, nn_err *e);
/* The same sum from per-tap, per-sample sums of |x_t - t_t| over C,H,W that a backward pass made
 * (nn_l1_loss_backward_relu_sums into pgn_l1_taps_raw's buffer: tap k at raw + k * n), so the
 * taps are not read again for the loss. Returns the buffer, or NULL (out of memory, e set). */
double *pgn_l1_taps_raw(pgn_l1_taps *s, int taps, int n, nn_err *e);
void pgn_l1_taps_total(pgn_l1_taps *s, const nn_act *const *x, int taps, int n, double *loss, double *per_sample);
void pgn_l1_taps_free(pgn_l1_taps *s);

#endif
