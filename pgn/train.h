/* Generator training side by side (spec/method.md §5.1): Deep Image Prior nets from one
 * initialisation, fitted to one target image, one per arm:
 *   vgg  the teacher's perceptual loss P (VGG-19, §2.2),
 *   mse  mean squared error in normalised space,
 *   pgn  a trained PGN's predicted gradient (§2.5: the PGN runs in eval mode on y_hat and y and is
 *        never backpropagated; the generator regresses to its proxy target), optionally plus
 *        lambda * MSE; its metrics add the cosine, norm ratio and relative error of the predicted
 *        gradient against the teacher's, next to the same for the MSE direction (y_hat - y) at its
 *        least-squares scale, the trivial predictor a PGN must beat.
 * Adam, lr 0.01 by default, N steps (paper: 3000). Metrics per arm at the log steps (§5.4): L1 and
 * L2 in normalised space, PSNR and SSIM on [0,1] images, the paper's SSIM variant on normalised
 * tensors, the perceptual value, step time and memory; generated images as PNG artifacts;
 * checkpoints hold every arm's weights and optimiser state so a run resumes exactly. */
#ifndef PGN_TRAIN_H
#define PGN_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "pgn/job.h"

enum { PGN_ARM_VGG = 0, PGN_ARM_MSE = 1, PGN_ARM_PGN = 2, PGN_ARMS = 3 };

typedef struct pgn_train_params {
    char image[1024];       /* target photograph (PNG or JPEG) */
    int size;               /* shorter side resized to size*256/224, then a centre crop size x size
                             * (the paper's Resize 256 + CenterCrop 224, scaled); a multiple of 32 */
    int steps;
    double lr;
    int arms[PGN_ARMS];     /* which arms run */
    uint64_t seed;          /* DIP initialisation and input noise */
    int log_every, image_every, checkpoint_every;
    char teacher_weights[1024]; /* "" = the daemon's (or random) */
    char pgn_checkpoint[1024];  /* the pgn arm's network (pgnd's or the authors' checkpoint) */
    double lambda_mse;          /* pgn arm: + lambda * MSE (the paper: 0 for DIP) */
    /* Stability mode (§5.2; off when 0): an arm stops once its perceptual loss reaches
     * stop_divergence x its first value (diverged), or has not improved for stop_plateau steps;
     * the step and reason are logged as <arm>.stop_step / <arm>.stop_reason (1 diverged, 2
     * plateau). The paper: 10,000 steps, 2.0 and 2,000. */
    double stop_divergence;
    int stop_plateau;
} pgn_train_params;

const char *pgn_arm_name(int arm);
int pgn_train_run(const pgn_train_params *p, const pgn_job_io *io, char *err, size_t errlen);

#endif
