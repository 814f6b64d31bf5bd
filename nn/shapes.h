/* Layer geometry shared by the oneDNN path and the plain-C reference kernels.
 * Dimension letters: N batch, C channels, H/W height/width (input), OH/OW (output),
 * K kernel, S stride, P padding. All arrays are NCHW, float32, contiguous. */
#ifndef NN_SHAPES_H
#define NN_SHAPES_H

enum nn_pad_mode { NN_PAD_ZERO = 0, NN_PAD_REFLECT = 1 };

typedef struct nn_conv_shape {
    int n, cin, h, w;      /* input */
    int cout;
    int kh, kw, sh, sw, ph, pw;
    int groups;            /* cin and cout must be divisible by groups */
    int pad_mode;          /* enum nn_pad_mode; reflection requires ph < h and pw < w */
    int has_bias;
} nn_conv_shape;

/* PyTorch's output size: floor((h + 2p - k) / s) + 1. */
static inline int nn_conv_oh(const nn_conv_shape *s) { return (s->h + 2 * s->ph - s->kh) / s->sh + 1; }
static inline int nn_conv_ow(const nn_conv_shape *s) { return (s->w + 2 * s->pw - s->kw) / s->sw + 1; }

typedef struct nn_pool_shape {
    int n, c, h, w;
    int k, s, p; /* square window, stride, zero/implicit padding */
} nn_pool_shape;

/* floor mode, as PyTorch's default ceil_mode=False */
static inline int nn_pool_oh(const nn_pool_shape *s) { return (s->h + 2 * s->p - s->k) / s->s + 1; }
static inline int nn_pool_ow(const nn_pool_shape *s) { return (s->w + 2 * s->p - s->k) / s->s + 1; }

#endif
