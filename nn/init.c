#include "nn/init.h"

#include <math.h>

void nn_init_uniform(nn_tensor *t, float lo, float hi, nn_rng *rng)
{
    for (size_t i = 0; i < t->numel; i++)
        t->data[i] = nn_rng_uniform_range(rng, lo, hi);
}

void nn_init_normal(nn_tensor *t, float mean, float std, nn_rng *rng)
{
    for (size_t i = 0; i < t->numel; i++)
        t->data[i] = mean + std * nn_rng_normal(rng);
}

void nn_init_conv(nn_tensor *weight, nn_tensor *bias, int fan_in, nn_rng *rng)
{
    /* gain = sqrt(2 / (1 + a^2)) with a = sqrt(5); bound = gain * sqrt(3 / fan_in) = 1 / sqrt(fan_in). */
    float bound = fan_in > 0 ? 1.0f / sqrtf((float)fan_in) : 0.0f;
    nn_init_uniform(weight, -bound, bound, rng);
    if (bias)
        nn_init_uniform(bias, -bound, bound, rng);
}
