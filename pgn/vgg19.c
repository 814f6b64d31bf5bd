#include "pgn/vgg19.h"

#include <stdlib.h>
#include <string.h>

/* Channels of conv1_1 .. conv5_1; a pool follows convs 1, 3, 7 and 11 (conv1_2, conv2_2, conv3_4, conv4_4). */
static const int cin_of[VGG19_CONVS] = {3, 64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512};
static const int cout_of[VGG19_CONVS] = {64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512};
static const int feature_index[VGG19_CONVS] = {0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28};

static int pool_after(int i) { return i == 1 ? 0 : i == 3 ? 1 : i == 7 ? 2 : i == 11 ? 3 : -1; }

int vgg19_feature_index(int conv) { return feature_index[conv]; }
int vgg19_cin(int conv) { return cin_of[conv]; }
int vgg19_cout(int conv) { return cout_of[conv]; }

int vgg19_init(vgg19 *v, uint64_t seed, nn_err *e)
{
    memset(v, 0, sizeof *v);
    nn_rng rng;
    nn_rng_seed(&rng, seed);
    for (int i = 0; i < VGG19_CONVS; i++) {
        if (nn_conv2d_init(&v->conv[i], cin_of[i], cout_of[i], 3, 3, 1, 1, 1, 1, 1, NN_PAD_ZERO, 1, &rng, e))
            return nn_err_prefix(e, "vgg19 conv %d", i);
        v->conv[i].frozen = 1;
        v->conv[i].post_relu = 1; /* every VGG conv up to relu5_1 is followed by its ReLU */
        v->conv[i].winograd = NN_WINO_BWD_DATA; /* see winograd_policy */
    }
    v->winograd_auto = 1;
    nn_pool2d_init(&v->pool, 0, 2, 2, 0);
    return 0;
}

void vgg19_free(vgg19 *v)
{
    for (int i = 0; i < VGG19_CONVS; i++) {
        nn_conv2d_free(&v->conv[i]);
        nn_act_free(&v->feat[i]);
        nn_act_free(&v->target[i]);
    }
    for (int i = 0; i < 4; i++)
        nn_act_free(&v->pooled[i]);
    nn_act_free(&v->grad[0]);
    nn_act_free(&v->grad[1]);
    nn_act_free(&v->x);
    nn_act_free(&v->dx);
    pgn_l1_taps_free(&v->sums);
    nn_pool2d_free(&v->pool);
    memset(v, 0, sizeof *v);
}

/* The forward stays direct: it decides every ReLU and L1 sign, and Winograd's different rounding
 * would flip a few of them. The backward-data pass only carries the gradient, where Winograd's
 * ~1e-6 relative rounding is harmless, at half the cost; but its workspace grows with the batch
 * (+79 MB at 8x3x128x128), so batches above 2 run direct. Read when a shape is first seen. */
static void winograd_policy(vgg19 *v, int n)
{
    if (v->winograd_auto)
        for (int i = 0; i < VGG19_CONVS; i++)
            v->conv[i].winograd = n <= 2 ? NN_WINO_BWD_DATA : 0;
}

static int forward(nn_ctx *ctx, vgg19 *v, const float *x, int n, int h, int w, nn_err *e)
{
    winograd_policy(v, n);
    if (h < 16 || w < 16)
        return nn_errf(e, "vgg19: input %dx%d is smaller than 16x16 (four 2x2 pools)", h, w);
    if (nn_act_from_nchw(ctx, &v->x, x, n, 3, h, w, e))
        return -1;
    const nn_act *a = &v->x;
    for (int i = 0; i < VGG19_CONVS; i++) {
        if (nn_conv2d_forward(ctx, &v->conv[i], a, &v->feat[i], e))
            return nn_err_prefix(e, "vgg19 layer %d", i);
        a = &v->feat[i];
        int k = pool_after(i);
        if (k >= 0) {
            if (nn_pool2d_forward(ctx, &v->pool, a, &v->pooled[k], e))
                return -1;
            a = &v->pooled[k];
        }
    }
    return 0;
}

int vgg19_set_target(nn_ctx *ctx, vgg19 *v, const float *target, int n, int h, int w, nn_err *e)
{
    if (forward(ctx, v, target, n, h, w, e))
        return -1;
    for (int i = 0; i < VGG19_CONVS; i++) {
        nn_act *f = &v->feat[i];
        if (nn_act_reserve(&v->target[i], f->n, f->c, f->h, f->w, &f->md, e))
            return -1;
        memcpy(v->target[i].data, f->data, nn_md_bytes(&f->md));
        v->target[i].valid = 1;
    }
    v->target_n = n;
    v->target_h = h;
    v->target_w = w;
    return 0;
}

int vgg19_perceptual(nn_ctx *ctx, vgg19 *v, const float *x, int n, int h, int w, double *loss, double *per_sample,
                     float *grad, nn_err *e)
{
    if (n != v->target_n || h != v->target_h || w != v->target_w)
        return nn_errf(e, "vgg19: input [%d, 3, %d, %d] does not match the cached target [%d, 3, %d, %d]", n, h, w,
                       v->target_n, v->target_h, v->target_w);
    if (forward(ctx, v, x, n, h, w, e))
        return -1;
    const nn_act *taps[VGG19_CONVS];
    for (int i = 0; i < VGG19_CONVS; i++)
        taps[i] = &v->feat[i];
    if (!grad)
        return pgn_l1_taps_sum(ctx, &v->sums, taps, v->target, VGG19_CONVS, n, loss, per_sample, e);
    /* with a gradient, the loss comes from the backward's own pass over each tap */
    double *raw = pgn_l1_taps_raw(&v->sums, VGG19_CONVS, n, e);
    if (!raw)
        return -1;
    /* Backward from relu5_1 to the image. cur holds d loss / d feat[i]. */
    int cur = 0;
    for (int i = VGG19_CONVS - 1; i >= 0; i--) {
        nn_act *g = &v->grad[cur];
        if (i == VGG19_CONVS - 1)
            nn_act_grad_reset(g);
        /* Tap gradient plus the ReLU mask in one pass; dloss = n turns the batch mean into the
         * sum of per-sample means. */
        if (nn_l1_loss_backward_relu_sums(ctx, &v->feat[i], &v->target[i], (float)n, g, raw + (size_t)i * n, e))
            return -1;
        nn_act *gin = i == 0 ? &v->dx : &v->grad[1 - cur];
        nn_act_grad_reset(gin);
        const nn_act *in = i == 0 ? &v->x : pool_after(i - 1) >= 0 ? &v->pooled[pool_after(i - 1)] : &v->feat[i - 1];
        if (nn_conv2d_backward(ctx, &v->conv[i], in, g, gin, 0, e))
            return -1;
        /* The teacher is frozen: once oneDNN holds this layer's weights in both layouts it uses
         * (forward and backward-data), the PyTorch-layout copy would only cost memory. */
        if (v->conv[i].weight.data && nn_conv2d_release_plain(&v->conv[i], e))
            return -1;
        if (i > 0 && pool_after(i - 1) >= 0) {
            /* gin is the pooled gradient: take it back through the pool into the other buffer. */
            nn_act *gf = &v->grad[cur];
            nn_act_grad_reset(gf);
            if (nn_pool2d_backward(ctx, &v->pool, &v->feat[i - 1], gin, gf, e))
                return -1;
            continue; /* cur stays: grad[cur] now holds d/d feat[i-1] */
        }
        cur = 1 - cur;
    }
    pgn_l1_taps_total(&v->sums, taps, VGG19_CONVS, n, loss, per_sample);
    return nn_act_to_nchw(ctx, &v->dx, grad, e);
}
