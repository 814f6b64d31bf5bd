/* Online fitting of a perceptual gradient network (spec/method.md §2.6, §3.4, §4.1-4.3).
 *
 * One step on a batch y of B target crops (normalised space, B a multiple of the 3 autoencoders;
 * autoencoder i gets samples [i*B/3, (i+1)*B/3)):
 *   1. y_hat_i = A_i(y_i)                         autoencoders in train mode (batch statistics)
 *   2. o = PGN(concat[y_hat, y])                  PGN in train mode; y_hat is detached
 *      p = proxy(o), g_pred = 2 (y_hat - p) / (N s)                      (pgn/proxy.h)
 *   3. g_true = dP(y_hat, y)/dy_hat, and P(p, y) with dP(p, y)/dp        (teacher, pgn/teacher.h)
 *   4. autoencoders: with max = clip_factor * ae_avg (its value before this step's updates), for
 *      i = 0, 1, 2: zero grads, backward of g_pred's slice i as dL/dy_hat_i, norm_i =
 *      clip_grad_norm(A_i, max), Adam step. Then ae_avg is updated 3 times with norm_2 (the
 *      official code's quirk: the three autoencoders share one MovingAverage, and the update loop
 *      sees the last autoencoder's norm).
 *   5. PGN loss, per sample and SUMMED over the batch:
 *        L = w_grad * mean_chw (g_pred - g_true)^2 + w_prc * P(p, y) + w_l1 * mean_chw |p - y|
 *      (w_grad 2^26, w_prc 0.2, w_l1 0.5). dL/dg = w_grad * 2/N (g_pred - g_true),
 *      dL/dp = w_prc dP/dp + w_l1 sign(p - y)/N (sign(0) = 0); backward through the head into the
 *      PGN; norm = clip_grad_norm(PGN, clip_factor * pgn_avg); Adam step;
 *      pgn_avg = (1 - ema_weight) pgn_avg + ema_weight * norm.
 *   6. Autoencoder resets (§4.1), after the step: samples = step * B. Each autoencoder tracks its
 *      best L1 (mean |y_hat_i - y_i|, normalised space) and the sample count when it was reached.
 *      L1 > reset_l1 -> reset; else samples - best_at >= plateau_samples -> reset with probability
 *      reset_prob (one uniform draw per autoencoder per step from the fit's RNG, only when the
 *      plateau condition holds). A reset re-initialises every conv and BN (pgn_autoencoder_reset),
 *      keeps the optimiser state, and restarts the best-L1 tracking (best = +inf, best_at = samples).
 * Paper defaults everywhere (Adam lr 1e-3 for both; clip factor 5, average initialised to 200,
 * update weight 0.01; plateau 300,000 samples, probability 0.01, L1 limit 1e3) except the crop
 * size, whose CPU default is 64, and the batch (6; the paper 48 per GPU).
 *
 * Reported per step (pgn_fit_stats): loss terms as PER-SAMPLE MEANS, unweighted for the two proxy
 * terms and weighted for the gradient term (as the authors' logs and spec/torch-anchors.md B.3):
 * loss = grad_mse + w_prc * proxy_perceptual + w_l1 * proxy_l1. Gradient quality: mean over samples of
 * the cosine, norm ratio |g_pred|/|g_true| and relative error |g_pred - g_true|/|g_true|, next to
 * the same for the trivial predictor "the MSE direction y_hat - y" at its least-squares scale per
 * sample (a PGN is only useful where it beats it).
 *
 * Validation (pgn_fit_validate): held-out targets, with the PGN in eval mode and no update:
 * pairs from each autoencoder (train-mode BN over the held-out batch, no update of anything:
 * the running statistics are restored) and a fixed degradation (Gaussian blur, kernel 9, sigma 1.5,
 * in normalised space, reflection padding, as torchvision's gaussian_blur), each against the MSE
 * direction on the same pairs. */
#ifndef PGN_FIT_H
#define PGN_FIT_H

#include <stddef.h>
#include <stdint.h>

#include "nn/err.h"
#include "pgn/job.h"

#define PGN_FIT_AES 3

typedef struct pgn_fit_params {
    char data[1024];            /* image folder (PNG/JPEG, recursive); "" when fitting from a collection */
    char collection[1024];      /* a collect job's folder of teacher-gradient shards (pgn/shards.h): the
                                 * PGN steps on its (y_hat, y, g_true) instead of online autoencoders */
    char val_data[1024];        /* held-out folder; "" = hold out val_fraction of data's files */
    char arch[16];              /* "unet", "resnet4", "resnet6", "resnet8" (any resnetN, N 1..16) */
    char init[1024];            /* PGN checkpoint to start from ("" = fresh initialisation) */
    char teacher_weights[1024]; /* "" = the runner's default (or a random teacher) */
    int size, batch;            /* crop side (multiple of 32 for the UNet, 8 for the autoencoders); batch % 3 == 0 */
    int64_t steps;
    uint64_t seed;
    double lr, ae_lr;
    double w_grad, w_proxy_perceptual, w_proxy_l1;
    double grad_scale;          /* s; 0 = the arch default (0.048 UNet, 0.025 ResNet) */
    int direct;                 /* 1: "direct" head (§2.8) instead of the sigmoid proxy */
    int fast_teacher;           /* 1: the teacher's convs run as Winograd forward and backward (~1e-6
                                 * relative rounding; a few ReLU / L1-sign decisions at ~0 differ from
                                 * direct convolution, harmless for a training signal); 0: its exact
                                 * policy (direct forward) */
    double clip_factor, clip_init, clip_ema_weight;
    double ae_plateau_samples, ae_reset_prob, ae_reset_l1;
    double val_fraction;        /* of the image files held out */
    double image_cache_mb;      /* decoded training images kept in memory (pgn_data_set_cache_mb) */
    int val_max;                /* at most this many held-out images per validation */
    int log_every, val_every, image_every, checkpoint_every;
} pgn_fit_params;

/* The paper's values (see above); data, arch "unet", 1000 steps, seed 0, 20% held out (at most 8),
 * log 10, validate 100, fields 500, checkpoint 100. */
void pgn_fit_params_default(pgn_fit_params *p);

typedef struct pgn_fit_stats {
    double loss, grad_mse, proxy_perceptual, proxy_l1; /* per-sample means (see above) */
    double cos, norm_ratio, rel_err;                   /* g_pred vs g_true, mean over samples */
    double mse_cos, mse_norm_ratio, mse_rel_err;       /* MSE direction vs g_true */
    double pgn_norm, pgn_avg;                          /* pre-clip PGN gradient norm; average after */
    double ae_norm[PGN_FIT_AES], ae_avg;               /* pre-clip autoencoder norms; shared average */
    double ae_l1[PGN_FIT_AES];                         /* mean |y_hat_i - y_i| */
    int ae_reset[PGN_FIT_AES];                         /* reset after this step */
    double g_pred_pct[3], g_true_pct[3];               /* 1st, 50th, 99th percentiles of the values */
    double ms_total, ms_ae, ms_pgn, ms_teacher, ms_update; /* wall time split */
} pgn_fit_stats;

typedef struct pgn_fit_val_pairs {
    int n;                                     /* pairs */
    double cos, norm_ratio, rel_err;           /* PGN, mean over pairs */
    double mse_cos, mse_norm_ratio, mse_rel_err; /* MSE direction (least-squares scale) */
} pgn_fit_val_pairs;

typedef struct pgn_fit_val {
    pgn_fit_val_pairs ae, blur, all;
} pgn_fit_val;

typedef struct pgn_fit pgn_fit;

/* Builds the PGN (fresh from seed, or p->init), the three autoencoders (seeds seed+1..seed+3),
 * the teacher (teacher_weights; NULL or "" = random teacher, seed 0) and both optimisers.
 * Checks size/batch against the architecture. threads: OpenMP threads (0 = default). */
int pgn_fit_open(pgn_fit **out, const pgn_fit_params *p, const char *teacher_weights, int threads, nn_err *e);
void pgn_fit_close(pgn_fit *f);
/* Replaces the autoencoders' initial weights (state dicts with the official keys): for tests that
 * start from a PyTorch replica's weights. */
int pgn_fit_load_autoencoder(pgn_fit *f, int i, const char *path, nn_err *e);
/* One training step on y [batch, 3, size, size] (normalised). */
int pgn_fit_step(pgn_fit *f, const float *y, pgn_fit_stats *st, nn_err *e);
/* One step of the PGN alone on given pairs (from a collection of teacher gradients): y_hat, y
 * and g_true [batch, 3, size, size]. The autoencoders do not run; the teacher runs only for the
 * proxy's perceptual term (skipped when w_proxy_perceptual is 0, and then reported as 0). */
int pgn_fit_step_pairs(pgn_fit *f, const float *yhat, const float *y, const float *g_true, pgn_fit_stats *st,
                       nn_err *e);
/* Validation on n held-out targets y [n, 3, size, size] (normalised). Changes nothing. */
int pgn_fit_validate(pgn_fit *f, const float *y, int n, pgn_fit_val *out, nn_err *e);
/* Gradient-field panels (pgn/viz) for target y (one image) against autoencoder ae's output, or
 * (ae -1) against y blurred as in validation. */
int pgn_fit_fields_png(pgn_fit *f, const float *y, int ae, const char *path, nn_err *e);

/* The whole training state (PGN and autoencoders with BN statistics and Adam moments, averages,
 * reset tracking, step and sample counts, RNG states, data RNG when given) as one safetensors
 * file, written atomically; loading it continues bit for bit. */
int pgn_fit_save(pgn_fit *f, const char *path, const uint32_t data_rng[4], nn_err *e);
int pgn_fit_load(pgn_fit *f, const char *path, uint32_t data_rng[4], nn_err *e);
/* The PGN alone, as a checkpoint pgn_net_load (and the authors' loader's keys) understands:
 * the official state-dict keys plus backbone_type / backbone_to_grad_* metadata. */
int pgn_fit_export(pgn_fit *f, const char *path, nn_err *e);
/* Where the fit's data source stands (a collection reader's position as text), saved with the
 * checkpoint and read back by pgn_fit_load; "" when none. */
void pgn_fit_set_source_pos(pgn_fit *f, const char *pos);
const char *pgn_fit_source_pos(const pgn_fit *f);
int64_t pgn_fit_steps_done(const pgn_fit *f);

/* The job: data, steps, validation, metrics, checkpoints, resume (pgn/job.h). */
int pgn_fit_run(const pgn_fit_params *p, const pgn_job_io *io, char *err, size_t errlen);

#endif
