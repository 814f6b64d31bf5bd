/* Seeded random numbers (xoshiro128** seeded by splitmix64): the same seed gives the same
 * stream on every machine, so a net built with seed S is reproducible. It is not PyTorch's
 * generator: parity tests load PyTorch's initial weights from fixtures instead. */
#ifndef NN_RNG_H
#define NN_RNG_H

#include <stdint.h>

typedef struct nn_rng {
    uint32_t s[4];
} nn_rng;

void nn_rng_seed(nn_rng *r, uint64_t seed);
uint32_t nn_rng_u32(nn_rng *r);
/* Uniform in [0, 1) with 24 random bits. */
float nn_rng_uniform(nn_rng *r);
/* Uniform in [lo, hi). */
float nn_rng_uniform_range(nn_rng *r, float lo, float hi);
/* Standard normal (Box-Muller, one value per call). */
float nn_rng_normal(nn_rng *r);
/* Uniform integer in [0, n). */
uint32_t nn_rng_below(nn_rng *r, uint32_t n);

#endif
