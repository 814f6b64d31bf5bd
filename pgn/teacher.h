/* The teacher: a perceptual loss and its gradient w.r.t. the image, from one of two networks.
 *
 * vgg19 (the paper's, spec/method.md §2.2):
 *   P(x, y) = sum over the 13 ReLU outputs of VGG-19 (conv1_1 .. relu5_1, max-pools replaced by 2x2
 *             average pools) of mean over C,H,W |phi_l(x) - phi_l(y)|, per sample.
 *   Weights: torchvision's vgg19-dcbb9e9d.pth (legacy torch layout, read directly), a zip-layout
 *   re-save, or a safetensors file with the same key names. Native space: ImageNet-normalised.
 * inception3 (issue 7; pgn/inception3.h): the same L1 sum at activation_3, activation_5, mixed0,
 *   mixed1 and mixed2 of Keras InceptionV3. Weights: a tfjs layers model (nsfwjs 4.4.0's
 *   inception_v3 directory). Native space: [-1, 1].
 *
 *   g = dP(x_i, y_i)/dx_i for every sample i of a batch.
 *
 * The weights decide the network: a tfjs model directory (or its model.json / model.min.js) is
 * inception3, any other weights file VGG-19. Callers hand images in any pgn_space and get the
 * gradient back in that space (the chain rule is applied here). The target's features are computed
 * once per target (pgn_teacher_set_target) and reused. Without weights the teacher is seeded random
 * and says so: "random teacher: not a perceptual loss". */
#ifndef PGN_TEACHER_H
#define PGN_TEACHER_H

#include <stdint.h>

#include "nn/weights.h"
#include "pgn/inception3.h"
#include "pgn/vgg19.h"

#define PGN_TEACHER_RANDOM_NOTE "random teacher: not a perceptual loss"

typedef enum pgn_space {
    PGN_SPACE_NORMALISED = 0, /* (x - mean) / std, ImageNet statistics: the method's own space */
    PGN_SPACE_UNIT = 1,       /* [0, 1] images (Deep Image Prior outputs) */
    PGN_SPACE_PM1 = 2,        /* [-1, 1] images (StyleGAN outputs) */
} pgn_space;

extern const float pgn_imagenet_mean[3], pgn_imagenet_std[3];

typedef enum pgn_teacher_kind { PGN_TEACHER_VGG19 = 0, PGN_TEACHER_INCEPTION3 = 1 } pgn_teacher_kind;

typedef struct pgn_teacher {
    pgn_teacher_kind kind;
    vgg19 net;                /* kind vgg19 */
    inception3 inc;           /* kind inception3 */
    char name[16];            /* "vgg19" or "inception3" */
    char weights_path[1024];  /* "" for a random teacher */
    char weights_sha256[65];  /* of the weights file; "" for a random teacher */
    int random;
    uint64_t seed;            /* of the random weights */
    float *xn;                /* the input converted to normalised space (reused) */
    size_t xn_cap;
} pgn_teacher;

/* weights_path NULL or "": seeded random VGG-19 weights. Refuses a file whose keys do not fit, listing
 * every missing, mis-shaped and unexpected key. */
int pgn_teacher_open(pgn_teacher *t, const char *weights_path, uint64_t seed, nn_err *e);
/* The same with the network named: "vgg19", "inception3", or "" / "auto" (from the weights).
 * A name that contradicts the weights is refused, naming both. */
int pgn_teacher_open_named(pgn_teacher *t, const char *name, const char *weights_path, uint64_t seed, nn_err *e);
/* Which teacher a weights path is for, without reading it: "inception3" for a tfjs model, else "vgg19". */
const char *pgn_teacher_kind_of_path(const char *weights_path);
void pgn_teacher_close(pgn_teacher *t);
/* Runs the teacher's 3x3 stride-1 convolutions as Winograd in every pass where oneDNN's Winograd
 * pays (nn_conv2d: enough output positions in the batch): a VGG-19 loss and gradient at 6x64x64
 * takes about 124 ms instead of 162; ~1e-6 relative rounding, so a few near-zero ReLU decisions
 * differ. Before the first use. */
void pgn_teacher_set_fast(pgn_teacher *t);
/* One line for logs and APIs, e.g. "vgg19, weights vgg19-dcbb9e9d.pth (sha256 dcbb9e9d...)" or
 * "vgg19, random teacher: not a perceptual loss (seed 0)". */
const char *pgn_teacher_describe(const pgn_teacher *t, char *buf, size_t len);

/* Caches the target's features. y is [n, 3, h, w] NCHW in `space`. */
int pgn_teacher_set_target(nn_ctx *ctx, pgn_teacher *t, const float *y, int n, int h, int w, pgn_space space,
                           nn_err *e);
/* Loss of x against the cached target: per_sample[n] (may be NULL), their sum in *loss (may be
 * NULL), and with grad != NULL each sample's gradient dP_i/dx_i, in x's space. Allocates nothing
 * once the shapes have been seen. */
int pgn_teacher_loss_grad(nn_ctx *ctx, pgn_teacher *t, const float *x, int n, int h, int w, pgn_space space,
                          double *per_sample, double *loss, float *grad, nn_err *e);
/* The same without a cached target (computes y's features first): for pairs whose target changes. */
int pgn_teacher_loss_grad_pair(nn_ctx *ctx, pgn_teacher *t, const float *x, const float *y, int n, int h, int w,
                               pgn_space space, double *per_sample, double *loss, float *grad, nn_err *e);

/* Checks a weights file's keys against what its teacher needs (a tfjs model: inception3's keys and
 * topology; anything else: VGG-19's). Writes one problem per line into report (missing key, key
 * with its shape and the expected one, unexpected key) and returns the number of problems
 * (0 = usable). torchvision's unused keys (features.30-34, classifier.*) and the layers of a tfjs
 * model past mixed2 are expected, not problems. */
int pgn_teacher_check_weights(const nn_weights *w, char *report, size_t len);
/* Filters for nn_weights_read_filtered: the tensors each teacher reads (VGG-19 needs 80 MB of
 * torchvision's 548 MB file; inception3's is inception3_needs_key). */
int pgn_teacher_vgg19_needs_key(const char *name, void *arg);

/* Space conversions, in place or out of place (count = n*3*h*w, NCHW). */
void pgn_space_convert(float *dst, const float *src, int n, int h, int w, pgn_space from, pgn_space to);
/* Chain rule: g, a gradient w.r.t. an image in space `from`, expressed w.r.t. the image in `to`. */
void pgn_grad_convert(float *g, int n, int h, int w, pgn_space from, pgn_space to);
void pgn_to_normalised(float *dst, const float *src, int n, int h, int w, pgn_space space);
/* Chain rule: a gradient w.r.t. the normalised image, expressed w.r.t. the image in `space`. */
void pgn_grad_from_normalised(float *g, int n, int h, int w, pgn_space space);

#endif
