/* Per-image reconstruction metrics (spec/method.md §5.1 / §5.4).
 *
 * Images are float32 CHW arrays (one image, c channels). All sums are taken in double.
 *
 *   pgn_l1, pgn_mse     mean |a - b| and mean (a - b)^2 over all elements. The paper reports them
 *                       in ImageNet-normalised space: convert first (pgn_to_normalised, teacher.h).
 *   pgn_psnr            10 log10(1 / MSE) for images in [0, 1] (peak 1); +INFINITY when equal.
 *   SSIM                Gaussian window 11x11, sigma 1.5 (normalised to sum 1), per channel,
 *                       C1 = 0.01^2, C2 = 0.03^2 (i.e. dynamic range L = 1), the mean of the SSIM
 *                       map over channels and positions; local (co)variances are E[xy] - E[x]E[y]
 *                       under the window (population, not sample, statistics). Two variants:
 *     pgn_ssim          the standard metric on [0, 1] images: only windows lying wholly inside
 *                       the image (the map is (h-10) x (w-10), as Wang et al.'s ssim.m or
 *                       skimage's gaussian-weighted SSIM); needs h, w >= 11.
 *     pgn_ssim_paper    the official code's metric: computed on ImageNet-NORMALISED tensors (a
 *                       quirk: C1, C2 stay those of L = 1), with zero padding 5 so that the map is
 *                       h x w and windows near the border see zeros (pytorch_ssim-style).
 *                       Pass images already normalised.
 *   pgn_ssim_window     either, on whatever inputs: zero_pad 0 (valid windows) or 5 (zero padding).
 * The SSIM functions return NAN when the image is too small or memory runs out. */
#ifndef PGN_QUALITY_H
#define PGN_QUALITY_H

#include <stddef.h>

double pgn_l1(const float *a, const float *b, size_t count);
double pgn_mse(const float *a, const float *b, size_t count);
double pgn_psnr(const float *a, const float *b, size_t count);

double pgn_ssim_window(const float *a, const float *b, int c, int h, int w, int zero_pad);
double pgn_ssim(const float *a, const float *b, int c, int h, int w);
double pgn_ssim_paper(const float *an, const float *bn, int c, int h, int w);

#endif
