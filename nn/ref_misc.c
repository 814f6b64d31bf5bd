/* Reference structural layers and losses: channel concat, elementwise add, and the mean L1 and
 * MSE losses. Loss values are summed serially in double (independent of the thread count);
 * backwards as PyTorch: sign(x - t) * (dloss / count) and (2 / count) * (x - t) * dloss. */
#include <string.h>

#include "nn/ref.h"

void ref_concat_forward(float *y, const float *a, int ca, const float *b, int cb, int n, int hw)
{
    const size_t na = (size_t)ca * hw, nb = (size_t)cb * hw;
    for (int ni = 0; ni < n; ni++) {
        memcpy(y + ni * (na + nb), a + ni * na, na * sizeof(float));
        memcpy(y + ni * (na + nb) + na, b + ni * nb, nb * sizeof(float));
    }
}

void ref_concat_backward(float *da, float *db, const float *dy, int ca, int cb, int n, int hw)
{
    const size_t na = (size_t)ca * hw, nb = (size_t)cb * hw;
    for (int ni = 0; ni < n; ni++) {
        const float *d = dy + ni * (na + nb);
        if (da)
            for (size_t i = 0; i < na; i++)
                da[ni * na + i] += d[i];
        if (db)
            for (size_t i = 0; i < nb; i++)
                db[ni * nb + i] += d[na + i];
    }
}

void ref_add_forward(float *y, const float *a, const float *b, size_t count)
{
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < count; i++)
        y[i] = a[i] + b[i];
}

void ref_add_backward(float *da, float *db, const float *dy, size_t count)
{
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < count; i++) {
        if (da)
            da[i] += dy[i];
        if (db)
            db[i] += dy[i];
    }
}

double ref_l1_loss(const float *x, const float *t, size_t count)
{
    double sum = 0.0;
    for (size_t i = 0; i < count; i++) {
        const double d = (double)x[i] - (double)t[i];
        sum += d < 0 ? -d : d;
    }
    return count ? sum / (double)count : 0.0;
}

void ref_l1_loss_backward(float *dx, const float *x, const float *t, size_t count, float dloss)
{
    if (!dx || !count)
        return;
    const float g = dloss / (float)count;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < count; i++) {
        const float d = x[i] - t[i];
        const float sign = d > 0.0f ? 1.0f : (d < 0.0f ? -1.0f : 0.0f);
        dx[i] += sign * g;
    }
}

double ref_mse_loss(const float *x, const float *t, size_t count)
{
    double sum = 0.0;
    for (size_t i = 0; i < count; i++) {
        const double d = (double)x[i] - (double)t[i];
        sum += d * d;
    }
    return count ? sum / (double)count : 0.0;
}

void ref_mse_loss_backward(float *dx, const float *x, const float *t, size_t count, float dloss)
{
    if (!dx || !count)
        return;
    const float norm = (float)(2.0 / (double)count);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < count; i++)
        dx[i] += norm * (x[i] - t[i]) * dloss;
}
