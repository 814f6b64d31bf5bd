/* Small helpers shared by the plain-C reference kernels (nn/ref_*.c); not part of the API. */
#ifndef NN_REF_INTERNAL_H
#define NN_REF_INTERNAL_H

#include "nn/shapes.h"

/* Maps a coordinate i of a padded axis (i in [-p, n + p), measured in input coordinates) to the
 * input index it reads: the index itself when 0 <= i < n; otherwise -1 for zero padding, or the
 * mirror image for reflection (torch.nn.ReflectionPad2d: edge not repeated, needs p < n). */
static inline int ref_pad_index(int i, int n, int mode)
{
    if (i >= 0 && i < n)
        return i;
    if (mode != NN_PAD_REFLECT)
        return -1;
    if (n == 1)
        return 0;
    if (i < 0)
        i = -i;
    if (i >= n)
        i = 2 * (n - 1) - i;
    return i;
}

#endif
