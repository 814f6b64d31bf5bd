#include "pgn/quality.h"

#include <math.h>
#include <stdlib.h>

#define WIN 11
#define SIGMA 1.5
#define C1 (0.01 * 0.01)
#define C2 (0.03 * 0.03)

double pgn_l1(const float *a, const float *b, size_t count)
{
    double s = 0;
    for (size_t i = 0; i < count; i++)
        s += fabs((double)a[i] - (double)b[i]);
    return count ? s / (double)count : 0.0;
}

double pgn_mse(const float *a, const float *b, size_t count)
{
    double s = 0;
    for (size_t i = 0; i < count; i++) {
        const double d = (double)a[i] - (double)b[i];
        s += d * d;
    }
    return count ? s / (double)count : 0.0;
}

double pgn_psnr(const float *a, const float *b, size_t count)
{
    const double mse = pgn_mse(a, b, count);
    return mse > 0 ? 10.0 * log10(1.0 / mse) : INFINITY;
}

static void gaussian(double g[WIN])
{
    double s = 0;
    for (int k = 0; k < WIN; k++) {
        const double d = k - WIN / 2;
        g[k] = exp(-d * d / (2 * SIGMA * SIGMA));
        s += g[k];
    }
    for (int k = 0; k < WIN; k++)
        g[k] /= s;
}

double pgn_ssim_window(const float *a, const float *b, int c, int h, int w, int zero_pad)
{
    const int p = zero_pad;
    if (c < 1 || h < 1 || w < 1 || p < 0 || h + 2 * p < WIN || w + 2 * p < WIN)
        return NAN;
    const int oh = h + 2 * p - WIN + 1, ow = w + 2 * p - WIN + 1;
    double g[WIN];
    gaussian(g);
    /* Separable filtering: a horizontal pass over every input row into t (5 quantities: a, b,
     * a^2, b^2, ab), then a vertical pass. Zero padding = terms outside the image are skipped. */
    double *t = malloc((size_t)5 * h * ow * sizeof *t);
    if (!t)
        return NAN;
    const size_t plane = (size_t)h * w, tq = (size_t)h * ow;
    double total = 0;
    for (int ch = 0; ch < c; ch++) {
        const float *x = a + ch * plane, *y = b + ch * plane;
        for (int r = 0; r < h; r++)
            for (int j = 0; j < ow; j++) {
                double s[5] = {0, 0, 0, 0, 0};
                for (int k = 0; k < WIN; k++) {
                    const int col = j - p + k;
                    if (col < 0 || col >= w)
                        continue;
                    const double u = x[(size_t)r * w + col], v = y[(size_t)r * w + col];
                    s[0] += g[k] * u;
                    s[1] += g[k] * v;
                    s[2] += g[k] * u * u;
                    s[3] += g[k] * v * v;
                    s[4] += g[k] * u * v;
                }
                for (int q = 0; q < 5; q++)
                    t[q * tq + (size_t)r * ow + j] = s[q];
            }
        for (int i = 0; i < oh; i++)
            for (int j = 0; j < ow; j++) {
                double s[5] = {0, 0, 0, 0, 0};
                for (int k = 0; k < WIN; k++) {
                    const int row = i - p + k;
                    if (row < 0 || row >= h)
                        continue;
                    for (int q = 0; q < 5; q++)
                        s[q] += g[k] * t[q * tq + (size_t)row * ow + j];
                }
                const double mx = s[0], my = s[1];
                const double vx = s[2] - mx * mx, vy = s[3] - my * my, cxy = s[4] - mx * my;
                total += ((2 * mx * my + C1) * (2 * cxy + C2)) / ((mx * mx + my * my + C1) * (vx + vy + C2));
            }
    }
    free(t);
    return total / ((double)c * oh * ow);
}

double pgn_ssim(const float *a, const float *b, int c, int h, int w) { return pgn_ssim_window(a, b, c, h, w, 0); }

double pgn_ssim_paper(const float *an, const float *bn, int c, int h, int w)
{
    return pgn_ssim_window(an, bn, c, h, w, WIN / 2);
}
