/* PyTorch's default initialisation of Conv2d / Linear (reset_parameters):
 * weight ~ kaiming_uniform(a = sqrt(5))  =>  U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
 * bias   ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)),  fan_in = (cin / groups) * kh * kw.
 * BatchNorm: weight 1, bias 0, running_mean 0, running_var 1. */
#ifndef NN_INIT_H
#define NN_INIT_H

#include "nn/rng.h"
#include "nn/tensor.h"

void nn_init_conv(nn_tensor *weight, nn_tensor *bias /* may be NULL */, int fan_in, nn_rng *rng);
void nn_init_uniform(nn_tensor *t, float lo, float hi, nn_rng *rng);
void nn_init_normal(nn_tensor *t, float mean, float std, nn_rng *rng);

#endif
