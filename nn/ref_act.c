/* Reference pointwise activations: ReLU, LeakyReLU, Sigmoid, Tanh (forward and backward), with
 * PyTorch's conventions: ReLU'(0) = 0, LeakyReLU'(0) = slope, NaN passes through the forward.
 * Sigmoid/tanh backward use the forward output y, in PyTorch's order of float operations. */
#include <math.h>

#include "nn/ref.h"

void ref_relu_forward(float *y, const float *x, size_t count)
{
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < count; i++)
        y[i] = (x[i] > 0.0f || isnan(x[i])) ? x[i] : 0.0f;
}

void ref_relu_backward(float *dx, const float *dy, const float *x, size_t count)
{
    if (!dx)
        return;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < count; i++)
        dx[i] += x[i] > 0.0f ? dy[i] : 0.0f;
}

void ref_leaky_relu_forward(float *y, const float *x, size_t count, float slope)
{
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < count; i++)
        y[i] = x[i] > 0.0f ? x[i] : x[i] * slope;
}

void ref_leaky_relu_backward(float *dx, const float *dy, const float *x, size_t count, float slope)
{
    if (!dx)
        return;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < count; i++)
        dx[i] += x[i] > 0.0f ? dy[i] : dy[i] * slope;
}

void ref_sigmoid_forward(float *y, const float *x, size_t count)
{
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < count; i++)
        y[i] = 1.0f / (1.0f + expf(-x[i]));
}

void ref_sigmoid_backward(float *dx, const float *dy, const float *y, size_t count)
{
    if (!dx)
        return;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < count; i++)
        dx[i] += dy[i] * (1.0f - y[i]) * y[i];
}

void ref_tanh_forward(float *y, const float *x, size_t count)
{
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < count; i++)
        y[i] = tanhf(x[i]);
}

void ref_tanh_backward(float *dx, const float *dy, const float *y, size_t count)
{
    if (!dx)
        return;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < count; i++)
        dx[i] += dy[i] * (1.0f - y[i] * y[i]);
}
