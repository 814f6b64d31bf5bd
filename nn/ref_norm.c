/* Reference batch normalisation over (N, H, W) per channel, as torch.nn.BatchNorm2d: training
 * forward (batch statistics, running-stat update with the unbiased variance), eval forward, and
 * both backwards. Statistics and reductions in double. */
#include <math.h>

#include "nn/ref.h"

/* Channel ci of sample ni of an [n, c, hw] array. */
#define PLANE(ptr, ni, ci) ((ptr) + ((long)(ni) * c + (ci)) * hw)

void ref_batchnorm_forward_train(float *y, float *save_mean, float *save_invstd, float *running_mean,
                                 float *running_var, const float *x, const float *gamma, const float *beta,
                                 int n, int c, int h, int w, float eps, float momentum)
{
    const long hw = (long)h * w;
    const long m = (long)n * hw;

#pragma omp parallel for schedule(static)
    for (int ci = 0; ci < c; ci++) {
        double sum = 0.0;
        for (int ni = 0; ni < n; ni++)
            for (long i = 0; i < hw; i++)
                sum += PLANE(x, ni, ci)[i];
        const double mean = sum / (double)m;
        double ss = 0.0; /* two-pass variance */
        for (int ni = 0; ni < n; ni++)
            for (long i = 0; i < hw; i++) {
                const double d = PLANE(x, ni, ci)[i] - mean;
                ss += d * d;
            }
        const double var = ss / (double)m; /* biased: used to normalise */
        const double invstd = 1.0 / sqrt(var + (double)eps);
        const double g = gamma ? gamma[ci] : 1.0, bt = beta ? beta[ci] : 0.0;
        for (int ni = 0; ni < n; ni++)
            for (long i = 0; i < hw; i++)
                PLANE(y, ni, ci)[i] = (float)((PLANE(x, ni, ci)[i] - mean) * invstd * g + bt);
        if (save_mean)
            save_mean[ci] = (float)mean;
        if (save_invstd)
            save_invstd[ci] = (float)invstd;
        /* PyTorch: running = momentum * stat + (1 - momentum) * running, unbiased var for running_var.
         * With a single value per channel (PyTorch refuses to train then) the biased var is used. */
        if (running_mean)
            running_mean[ci] = (float)(momentum * mean + (1.0 - momentum) * running_mean[ci]);
        if (running_var) {
            const double unbiased = m > 1 ? ss / (double)(m - 1) : var;
            running_var[ci] = (float)(momentum * unbiased + (1.0 - momentum) * running_var[ci]);
        }
    }
}

void ref_batchnorm_forward_eval(float *y, const float *x, const float *gamma, const float *beta,
                                const float *running_mean, const float *running_var, int n, int c, int h, int w,
                                float eps)
{
    const long hw = (long)h * w;
#pragma omp parallel for collapse(2) schedule(static)
    for (int ni = 0; ni < n; ni++)
        for (int ci = 0; ci < c; ci++) {
            const double invstd = 1.0 / sqrt((double)running_var[ci] + (double)eps);
            const double g = gamma ? gamma[ci] : 1.0, bt = beta ? beta[ci] : 0.0;
            const float *xp = PLANE(x, ni, ci);
            float *yp = PLANE(y, ni, ci);
            for (long i = 0; i < hw; i++)
                yp[i] = (float)((xp[i] - (double)running_mean[ci]) * invstd * g + bt);
        }
}

/* Shared by both backwards: with xhat = (x - mean) * invstd,
 *   dbeta += sum dy, dgamma += sum dy * xhat,
 *   train: dx += gamma * invstd / m * (m * dy - sum dy - xhat * sum(dy * xhat))
 *   eval:  dx += gamma * invstd * dy  (mean and invstd are constants). */
static void batchnorm_backward(float *dx, float *dgamma, float *dbeta, const float *dy, const float *x,
                               const float *gamma, const double *mean, const double *invstd, int n, int c,
                               long hw, int train)
{
    const long m = (long)n * hw;
#pragma omp parallel for schedule(static)
    for (int ci = 0; ci < c; ci++) {
        double sum_dy = 0.0, sum_dy_xhat = 0.0;
        for (int ni = 0; ni < n; ni++)
            for (long i = 0; i < hw; i++) {
                const double d = PLANE(dy, ni, ci)[i];
                sum_dy += d;
                sum_dy_xhat += d * (PLANE(x, ni, ci)[i] - mean[ci]) * invstd[ci];
            }
        if (dbeta)
            dbeta[ci] += (float)sum_dy;
        if (dgamma)
            dgamma[ci] += (float)sum_dy_xhat;
        if (!dx)
            continue;
        const double g = gamma ? gamma[ci] : 1.0;
        for (int ni = 0; ni < n; ni++)
            for (long i = 0; i < hw; i++) {
                const double d = PLANE(dy, ni, ci)[i];
                double v;
                if (train) {
                    const double xhat = (PLANE(x, ni, ci)[i] - mean[ci]) * invstd[ci];
                    v = g * invstd[ci] / (double)m * ((double)m * d - sum_dy - xhat * sum_dy_xhat);
                } else {
                    v = g * invstd[ci] * d;
                }
                PLANE(dx, ni, ci)[i] += (float)v;
            }
    }
}

void ref_batchnorm_backward_train(float *dx, float *dgamma, float *dbeta, const float *dy, const float *x,
                                  const float *gamma, const float *save_mean, const float *save_invstd, int n,
                                  int c, int h, int w)
{
    double mean[c > 0 ? c : 1], invstd[c > 0 ? c : 1];
    for (int ci = 0; ci < c; ci++) {
        mean[ci] = save_mean[ci];
        invstd[ci] = save_invstd[ci];
    }
    batchnorm_backward(dx, dgamma, dbeta, dy, x, gamma, mean, invstd, n, c, (long)h * w, 1);
}

void ref_batchnorm_backward_eval(float *dx, float *dgamma, float *dbeta, const float *dy, const float *x,
                                 const float *gamma, const float *running_mean, const float *running_var, int n,
                                 int c, int h, int w, float eps)
{
    double mean[c > 0 ? c : 1], invstd[c > 0 ? c : 1];
    for (int ci = 0; ci < c; ci++) {
        mean[ci] = running_mean[ci];
        invstd[ci] = 1.0 / sqrt((double)running_var[ci] + (double)eps);
    }
    batchnorm_backward(dx, dgamma, dbeta, dy, x, gamma, mean, invstd, n, c, (long)h * w, 0);
}
