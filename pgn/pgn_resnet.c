#include "pgn/pgn_resnet.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SLOPE 0.2f
#define BN_EPS 1e-5f
#define BN_MOMENTUM 0.1f
#define CH_STEM 64
#define CH_MID 128
#define CH_UP 64

/* ------------------------------------------------------------------ construction */

typedef struct builder {
    pgn_resnet *r;
    nn_rng rng;
} builder;

static int add_conv(builder *b, const char *prefix, nn_conv2d *c, int cin, int cout, int stride, int bias, nn_err *e)
{
    pgn_resnet_module *m = &b->r->mod[b->r->nmod++];
    snprintf(m->prefix, sizeof m->prefix, "%s", prefix);
    m->conv = c;
    if (nn_conv2d_init(c, cin, cout, 3, 3, stride, stride, 1, 1, 1, NN_PAD_ZERO, bias, &b->rng, e))
        return nn_err_prefix(e, "pgn resnet %s", m->prefix);
    return 0;
}

static int add_bn(builder *b, const char *prefix, nn_batchnorm2d *l, int c, nn_err *e)
{
    pgn_resnet_module *m = &b->r->mod[b->r->nmod++];
    snprintf(m->prefix, sizeof m->prefix, "%s", prefix);
    m->bn = l;
    if (nn_batchnorm2d_init(l, c, BN_EPS, BN_MOMENTUM, e))
        return nn_err_prefix(e, "pgn resnet %s", m->prefix);
    l->training = 1;
    return 0;
}

static int build(builder *b, nn_err *e)
{
    pgn_resnet *r = b->r;
    const int nb = r->blocks;
    char p[32];
    if (add_conv(b, "model.0", &r->stem, PGN_RESNET_IN_CH, CH_STEM, 1, 0, e) ||
        add_bn(b, "model.1", &r->stem_bn, CH_STEM, e) || add_conv(b, "model.3", &r->down, CH_STEM, CH_MID, 2, 0, e) ||
        add_bn(b, "model.4", &r->down_bn, CH_MID, e))
        return -1;
    for (int i = 0; i < nb; i++) {
        pgn_resnet_block *k = &r->blk[i];
        snprintf(p, sizeof p, "model.%d.conv_block.0", 6 + i);
        if (add_conv(b, p, &k->conv1, CH_MID, CH_MID, 1, 1, e))
            return -1;
        snprintf(p, sizeof p, "model.%d.conv_block.1", 6 + i);
        if (add_bn(b, p, &k->bn1, CH_MID, e))
            return -1;
        snprintf(p, sizeof p, "model.%d.conv_block.3", 6 + i);
        if (add_conv(b, p, &k->conv2, CH_MID, CH_MID, 1, 1, e))
            return -1;
        snprintf(p, sizeof p, "model.%d.conv_block.4", 6 + i);
        if (add_bn(b, p, &k->bn2, CH_MID, e))
            return -1;
    }
    snprintf(p, sizeof p, "model.%d", 7 + nb);
    if (add_conv(b, p, &r->up_conv, CH_MID, CH_UP, 1, 0, e))
        return -1;
    snprintf(p, sizeof p, "model.%d", 8 + nb);
    if (add_bn(b, p, &r->up_bn, CH_UP, e))
        return -1;
    snprintf(p, sizeof p, "model.%d", 10 + nb);
    return add_conv(b, p, &r->final, CH_UP, PGN_RESNET_OUT_CH, 1, 1, e);
}

int pgn_resnet_init(pgn_resnet *r, int blocks, uint64_t seed, nn_err *e)
{
    memset(r, 0, sizeof *r);
    if (blocks < 1 || blocks > PGN_RESNET_MAX_BLOCKS)
        return nn_errf(e, "pgn resnet: %d residual blocks (supported: 1..%d; the paper uses 4, 6, 8)", blocks,
                       PGN_RESNET_MAX_BLOCKS);
    r->blocks = blocks;
    r->training = 1;
    builder b = {.r = r};
    nn_rng_seed(&b.rng, seed);
    if (build(&b, e)) {
        pgn_resnet_free(r);
        return -1;
    }
    for (int m = 0; m < r->nmod; m++) {
        pgn_resnet_module *md = &r->mod[m];
        if (md->conv) {
            r->params[r->nparams++] = (nn_param){&md->conv->weight, &md->conv->dweight};
            if (md->conv->geo.has_bias)
                r->params[r->nparams++] = (nn_param){&md->conv->bias, &md->conv->dbias};
        } else {
            r->params[r->nparams++] = (nn_param){&md->bn->gamma, &md->bn->dgamma};
            r->params[r->nparams++] = (nn_param){&md->bn->beta, &md->bn->dbeta};
        }
    }
    if (r->nparams != PGN_RESNET_PARAM_TENSORS(blocks) || r->nmod != 7 + 4 * blocks) {
        int np = r->nparams, nm = r->nmod;
        pgn_resnet_free(r);
        return nn_errf(e, "pgn resnet: built %d modules and %d parameter tensors, expected %d and %d", nm, np,
                       7 + 4 * blocks, PGN_RESNET_PARAM_TENSORS(blocks));
    }
    nn_eltwise_init(&r->lrelu, NN_LEAKY_RELU, SLOPE);
    nn_upsample2x_init(&r->up, 0);
    return 0;
}

/* The ordinary forward's and the backward's activations, but the input and the output (the lean
 * forward writes those too). */
static void free_layer_acts(pgn_resnet *r)
{
    for (int i = 0; i < PGN_RESNET_MAX_BLOCKS; i++)
        for (int k = 0; k < PGN_RB_ACTS; k++)
            nn_act_free(&r->blk[i].act[k]);
    for (int k = 0; k < PGN_RS_ACTS; k++) {
        if (k != PGN_RS_X && k != PGN_RS_OUT)
            nn_act_free(&r->act[k]);
        nn_act_free(&r->grad[k]);
    }
    for (int k = 0; k < PGN_RB_ACTS; k++)
        nn_act_free(&r->gblk[k]);
    nn_act_free(&r->gchain[0]);
    nn_act_free(&r->gchain[1]);
    nn_act_free(&r->b2);
    nn_act_free(&r->gb2);
}

void pgn_resnet_free(pgn_resnet *r)
{
    for (int m = 0; m < r->nmod; m++) {
        if (r->mod[m].conv)
            nn_conv2d_free(r->mod[m].conv);
        if (r->mod[m].bn)
            nn_batchnorm2d_free(r->mod[m].bn);
    }
    free_layer_acts(r);
    nn_act_free(&r->act[PGN_RS_X]);
    nn_act_free(&r->act[PGN_RS_OUT]);
    for (int k = 0; k < PGN_RESNET_LEAN_BUFS; k++)
        nn_act_free(&r->lean_buf[k]);
    nn_eltwise_free(&r->lrelu);
    nn_upsample2x_free(&r->up);
    free(r->xbuf);
    memset(r, 0, sizeof *r);
}

void pgn_resnet_set_training(pgn_resnet *r, int training)
{
    r->training = training && !r->folded ? 1 : 0;
    for (int m = 0; m < r->nmod; m++)
        if (r->mod[m].bn)
            r->mod[m].bn->training = r->training;
    r->forwarded = 0; /* a backward must follow a forward in the same mode */
}

int pgn_resnet_check_size(int h, int w, nn_err *e)
{
    if (h <= 0 || w <= 0 || h % 2 || w % 2)
        return nn_errf(e,
                       "pgn resnet: input %dx%d is not supported: height and width must be even (a stride-2 "
                       "convolution halves them and a x2 upsampling restores them)",
                       h, w);
    return 0;
}

/* ------------------------------------------------------------------ forward / backward */

#define TRY(call, what)                                                                                                \
    do {                                                                                                               \
        if (call)                                                                                                      \
            return nn_err_prefix(e, "pgn resnet %s", what);                                                            \
    } while (0)

/* The folded net: BN folded into the convs, LeakyReLU fused into them. */
static int forward_folded(nn_ctx *ctx, pgn_resnet *r, nn_err *e)
{
    nn_act *a = r->act;
    TRY(nn_conv2d_forward(ctx, &r->stem, &a[PGN_RS_X], &a[PGN_RS_STEM_ACT], e), "model.0");
    TRY(nn_conv2d_forward(ctx, &r->down, &a[PGN_RS_STEM_ACT], &a[PGN_RS_DOWN_ACT], e), "model.3");
    const nn_act *x = &a[PGN_RS_DOWN_ACT];
    for (int i = 0; i < r->blocks; i++) {
        pgn_resnet_block *k = &r->blk[i];
        nn_act *ka = k->act;
        const char *what = r->mod[4 + 4 * i].prefix;
        TRY(nn_conv2d_forward(ctx, &k->conv1, x, &ka[PGN_RB_L1], e), what);
        TRY(nn_conv2d_forward(ctx, &k->conv2, &ka[PGN_RB_L1], &r->b2, e), what);
        TRY(nn_add_forward(ctx, x, &r->b2, &ka[PGN_RB_OUT], e), what);
        x = &ka[PGN_RB_OUT];
    }
    const char *up = r->mod[r->nmod - 3].prefix, *fin = r->mod[r->nmod - 1].prefix;
    TRY(nn_upsample2x_forward(ctx, &r->up, x, &a[PGN_RS_UP], e), "upsample");
    TRY(nn_conv2d_forward(ctx, &r->up_conv, &a[PGN_RS_UP], &a[PGN_RS_UP_ACT], e), up);
    TRY(nn_conv2d_forward(ctx, &r->final, &a[PGN_RS_UP_ACT], &a[PGN_RS_OUT], e), fin);
    return 0;
}

/* The lean buffers (pgn_resnet_set_lean). In units of n*H*W floats, the largest each one gets:
 * BIG 128 (the upsampled map), A 64 (model.0's and model.7+N's outputs), T 32. A holds the chain
 * of block outputs at H/2 (each block adds its branch into its input's buffer, in place), BIG and
 * T the branch's two convolutions; peak use is at model.7+N (BIG -> A). The assignment depends only
 * on the net, not on the input size, so the buffers grow at the first forward of a larger shape and
 * are reused as they are afterwards. */
enum { LB_BIG, LB_A, LB_T, LB_COUNT };
_Static_assert(LB_COUNT == PGN_RESNET_LEAN_BUFS, "PGN_RESNET_LEAN_BUFS");

/* The folded forward's layers in the same order, on the lean buffers. The sum x + b2 is the same
 * float sum whichever buffer receives it (nn_add_forward keeps the layout of its first operand, as
 * the folded forward does), so the output is bit-identical. */
static int forward_lean(nn_ctx *ctx, pgn_resnet *r, nn_err *e)
{
    nn_act *b = r->lean_buf, *big = &b[LB_BIG], *chain = &b[LB_A], *t = &b[LB_T];
    TRY(nn_conv2d_forward(ctx, &r->stem, &r->act[PGN_RS_X], big, e), "model.0");
    TRY(nn_conv2d_forward(ctx, &r->down, big, chain, e), "model.3");
    for (int i = 0; i < r->blocks; i++) {
        pgn_resnet_block *k = &r->blk[i];
        const char *what = r->mod[4 + 4 * i].prefix;
        TRY(nn_conv2d_forward(ctx, &k->conv1, chain, big, e), what);
        TRY(nn_conv2d_forward(ctx, &k->conv2, big, t, e), what);
        TRY(nn_add_forward(ctx, chain, t, chain, e), what); /* in place: the block's output */
    }
    const char *up = r->mod[r->nmod - 3].prefix, *fin = r->mod[r->nmod - 1].prefix;
    TRY(nn_upsample2x_forward(ctx, &r->up, chain, big, e), "upsample");
    TRY(nn_conv2d_forward(ctx, &r->up_conv, big, &b[LB_A], e), up); /* the chain is consumed */
    TRY(nn_conv2d_forward(ctx, &r->final, &b[LB_A], &r->act[PGN_RS_OUT], e), fin);
    return 0;
}

int pgn_resnet_set_lean(pgn_resnet *r, int on, nn_err *e)
{
    if (on) {
        if (r->folded <= 0)
            return nn_errf(e, "pgn resnet: the inference-only forward needs a net whose batch norms are folded "
                              "(pgn_resnet_fold_bn)");
        if (!r->lean)
            free_layer_acts(r);
        r->lean = 1;
        r->forwarded = 0;
    } else if (r->lean) {
        for (int k = 0; k < PGN_RESNET_LEAN_BUFS; k++)
            nn_act_free(&r->lean_buf[k]);
        r->lean = 0;
    }
    return 0;
}

static int forward_from_x(nn_ctx *ctx, pgn_resnet *r, nn_err *e)
{
    nn_act *a = r->act;
    r->forwarded = 0;
    if (r->folded < 0)
        return nn_errf(e, "pgn resnet: folding the batch norms failed partway; load the net again");
    if (r->lean)
        return forward_lean(ctx, r, e); /* no backward: forwarded stays 0 */
    if (r->folded)
        return forward_folded(ctx, r, e); /* no backward: forwarded stays 0 */
    TRY(nn_conv2d_forward(ctx, &r->stem, &a[PGN_RS_X], &a[PGN_RS_STEM_CONV], e), "model.0");
    TRY(nn_batchnorm2d_forward(ctx, &r->stem_bn, &a[PGN_RS_STEM_CONV], &a[PGN_RS_STEM_BN], e), "model.1");
    TRY(nn_eltwise_forward(ctx, &r->lrelu, &a[PGN_RS_STEM_BN], &a[PGN_RS_STEM_ACT], e), "model.2");
    TRY(nn_conv2d_forward(ctx, &r->down, &a[PGN_RS_STEM_ACT], &a[PGN_RS_DOWN_CONV], e), "model.3");
    TRY(nn_batchnorm2d_forward(ctx, &r->down_bn, &a[PGN_RS_DOWN_CONV], &a[PGN_RS_DOWN_BN], e), "model.4");
    TRY(nn_eltwise_forward(ctx, &r->lrelu, &a[PGN_RS_DOWN_BN], &a[PGN_RS_DOWN_ACT], e), "model.5");
    const nn_act *x = &a[PGN_RS_DOWN_ACT];
    for (int i = 0; i < r->blocks; i++) {
        pgn_resnet_block *k = &r->blk[i];
        nn_act *ka = k->act;
        const char *what = r->mod[4 + 4 * i].prefix;
        TRY(nn_conv2d_forward(ctx, &k->conv1, x, &ka[PGN_RB_C1], e), what);
        TRY(nn_batchnorm2d_forward(ctx, &k->bn1, &ka[PGN_RB_C1], &ka[PGN_RB_B1], e), what);
        TRY(nn_eltwise_forward(ctx, &r->lrelu, &ka[PGN_RB_B1], &ka[PGN_RB_L1], e), what);
        TRY(nn_conv2d_forward(ctx, &k->conv2, &ka[PGN_RB_L1], &ka[PGN_RB_C2], e), what);
        TRY(nn_batchnorm2d_forward(ctx, &k->bn2, &ka[PGN_RB_C2], &r->b2, e), what);
        TRY(nn_add_forward(ctx, x, &r->b2, &ka[PGN_RB_OUT], e), what);
        x = &ka[PGN_RB_OUT];
    }
    const char *up = r->mod[r->nmod - 3].prefix, *bn = r->mod[r->nmod - 2].prefix, *fin = r->mod[r->nmod - 1].prefix;
    TRY(nn_upsample2x_forward(ctx, &r->up, x, &a[PGN_RS_UP], e), "upsample");
    TRY(nn_conv2d_forward(ctx, &r->up_conv, &a[PGN_RS_UP], &a[PGN_RS_UP_CONV], e), up);
    TRY(nn_batchnorm2d_forward(ctx, &r->up_bn, &a[PGN_RS_UP_CONV], &a[PGN_RS_UP_BN], e), bn);
    TRY(nn_eltwise_forward(ctx, &r->lrelu, &a[PGN_RS_UP_BN], &a[PGN_RS_UP_ACT], e), bn);
    TRY(nn_conv2d_forward(ctx, &r->final, &a[PGN_RS_UP_ACT], &a[PGN_RS_OUT], e), fin);
    r->forwarded = 1;
    return 0;
}

int pgn_resnet_forward(nn_ctx *ctx, pgn_resnet *r, const float *yhat, const float *target, int n, int h, int w,
                       float *o, nn_err *e)
{
    if (n < 1)
        return nn_errf(e, "pgn resnet: batch size %d", n);
    if (pgn_resnet_check_size(h, w, e))
        return -1;
    const size_t plane = (size_t)3 * h * w, need = (size_t)n * 2 * plane * sizeof(float);
    if (need > r->xbuf_cap) {
        float *nb = realloc(r->xbuf, need);
        if (!nb)
            return nn_errf(e, "pgn resnet: out of memory for a [%d, 6, %d, %d] input", n, h, w);
        r->xbuf = nb;
        r->xbuf_cap = need;
    }
    for (int i = 0; i < n; i++) { /* concat[yhat, target] per sample: generated image first */
        memcpy(r->xbuf + (size_t)i * 2 * plane, yhat + (size_t)i * plane, plane * sizeof(float));
        memcpy(r->xbuf + ((size_t)i * 2 + 1) * plane, target + (size_t)i * plane, plane * sizeof(float));
    }
    r->forwarded = 0;
    if (nn_act_from_nchw(ctx, &r->act[PGN_RS_X], r->xbuf, n, PGN_RESNET_IN_CH, h, w, e) ||
        forward_from_x(ctx, r, e))
        return -1;
    return o ? nn_act_to_nchw(ctx, &r->act[PGN_RS_OUT], o, e) : 0;
}

int pgn_resnet_forward_act(nn_ctx *ctx, pgn_resnet *r, const nn_act *yhat, const nn_act *target, nn_err *e)
{
    if (yhat->c != 3 || target->c != 3 || yhat->n != target->n || yhat->h != target->h || yhat->w != target->w)
        return nn_errf(e, "pgn resnet: inputs [%d, %d, %d, %d] and [%d, %d, %d, %d] are not two 3-channel images of "
                       "the same size", yhat->n, yhat->c, yhat->h, yhat->w, target->n, target->c, target->h,
                       target->w);
    if (yhat->n < 1)
        return nn_errf(e, "pgn resnet: batch size %d", yhat->n);
    if (pgn_resnet_check_size(yhat->h, yhat->w, e))
        return -1;
    r->forwarded = 0;
    if (nn_concat_forward(ctx, yhat, target, &r->act[PGN_RS_X], e))
        return nn_err_prefix(e, "pgn resnet input");
    return forward_from_x(ctx, r, e);
}

#define FOLDED_MSG                                                                                                     \
    "pgn resnet: the batch norms were folded into the convolutions (pgn_resnet_fold_bn): the net is prediction "     \
    "only, no backward"

#define LEAN_MSG                                                                                                       \
    "pgn resnet: backward after an inference-only forward (pgn_resnet_set_lean: the activations it needs were not "  \
    "kept; the net is prediction only)"

int pgn_resnet_backward_act(nn_ctx *ctx, pgn_resnet *r, const nn_act *dout, nn_err *e)
{
    if (r->lean)
        return nn_errf(e, LEAN_MSG);
    if (r->folded)
        return nn_errf(e, FOLDED_MSG);
    if (!r->forwarded)
        return nn_errf(e, "pgn resnet: backward without a forward (or after a change of BN mode)");
    nn_act *a = r->act, *g = r->grad;
    const nn_act *o = &a[PGN_RS_OUT];
    if (dout->n != o->n || dout->c != o->c || dout->h != o->h || dout->w != o->w)
        return nn_errf(e, "pgn resnet: output gradient [%d, %d, %d, %d] does not match the output [%d, %d, %d, %d]",
                       dout->n, dout->c, dout->h, dout->w, o->n, o->c, o->h, o->w);
    for (int k = 0; k < PGN_RS_ACTS; k++)
        if (k != PGN_RS_OUT)
            nn_act_grad_reset(&g[k]);
    const char *up = r->mod[r->nmod - 3].prefix, *bn = r->mod[r->nmod - 2].prefix, *fin = r->mod[r->nmod - 1].prefix;
    TRY(nn_conv2d_backward(ctx, &r->final, &a[PGN_RS_UP_ACT], dout, &g[PGN_RS_UP_ACT], 1, e), fin);
    TRY(nn_eltwise_backward(ctx, &r->lrelu, &a[PGN_RS_UP_BN], &g[PGN_RS_UP_ACT], &g[PGN_RS_UP_BN], e), bn);
    TRY(nn_batchnorm2d_backward(ctx, &r->up_bn, &a[PGN_RS_UP_CONV], &g[PGN_RS_UP_BN], &g[PGN_RS_UP_CONV], e), bn);
    TRY(nn_conv2d_backward(ctx, &r->up_conv, &a[PGN_RS_UP], &g[PGN_RS_UP_CONV], &g[PGN_RS_UP], 1, e), up);
    int cur = 0;
    nn_act_grad_reset(&r->gchain[cur]);
    TRY(nn_upsample2x_backward(ctx, &r->up, &g[PGN_RS_UP], &r->gchain[cur], e), "upsample");
    for (int i = r->blocks - 1; i >= 0; i--) {
        pgn_resnet_block *k = &r->blk[i];
        nn_act *ka = k->act, *gk = r->gblk;
        const nn_act *x = i ? &r->blk[i - 1].act[PGN_RB_OUT] : &a[PGN_RS_DOWN_ACT];
        nn_act *gout = &r->gchain[cur], *gin = &r->gchain[1 - cur];
        const char *what = r->mod[4 + 4 * i].prefix;
        for (int j = 0; j < PGN_RB_ACTS; j++)
            nn_act_grad_reset(&gk[j]);
        nn_act_grad_reset(gin);
        nn_act_grad_reset(&r->gb2);
        /* out = x + b2: the sum passes dL/dout to both. */
        TRY(nn_add_backward(ctx, gout, gin, &r->gb2, e), what);
        TRY(nn_batchnorm2d_backward(ctx, &k->bn2, &ka[PGN_RB_C2], &r->gb2, &gk[PGN_RB_C2], e), what);
        TRY(nn_conv2d_backward(ctx, &k->conv2, &ka[PGN_RB_L1], &gk[PGN_RB_C2], &gk[PGN_RB_L1], 1, e), what);
        TRY(nn_eltwise_backward(ctx, &r->lrelu, &ka[PGN_RB_B1], &gk[PGN_RB_L1], &gk[PGN_RB_B1], e), what);
        TRY(nn_batchnorm2d_backward(ctx, &k->bn1, &ka[PGN_RB_C1], &gk[PGN_RB_B1], &gk[PGN_RB_C1], e), what);
        TRY(nn_conv2d_backward(ctx, &k->conv1, x, &gk[PGN_RB_C1], gin, 1, e), what); /* adds into gin */
        cur = 1 - cur;
    }
    nn_act *gdown = &r->gchain[cur];
    TRY(nn_eltwise_backward(ctx, &r->lrelu, &a[PGN_RS_DOWN_BN], gdown, &g[PGN_RS_DOWN_BN], e), "model.5");
    TRY(nn_batchnorm2d_backward(ctx, &r->down_bn, &a[PGN_RS_DOWN_CONV], &g[PGN_RS_DOWN_BN], &g[PGN_RS_DOWN_CONV], e),
        "model.4");
    TRY(nn_conv2d_backward(ctx, &r->down, &a[PGN_RS_STEM_ACT], &g[PGN_RS_DOWN_CONV], &g[PGN_RS_STEM_ACT], 1, e),
        "model.3");
    TRY(nn_eltwise_backward(ctx, &r->lrelu, &a[PGN_RS_STEM_BN], &g[PGN_RS_STEM_ACT], &g[PGN_RS_STEM_BN], e), "model.2");
    TRY(nn_batchnorm2d_backward(ctx, &r->stem_bn, &a[PGN_RS_STEM_CONV], &g[PGN_RS_STEM_BN], &g[PGN_RS_STEM_CONV], e),
        "model.1");
    /* The input is detached: weight gradients only. */
    TRY(nn_conv2d_backward(ctx, &r->stem, &a[PGN_RS_X], &g[PGN_RS_STEM_CONV], NULL, 1, e), "model.0");
    return 0;
}

#undef TRY

int pgn_resnet_backward(nn_ctx *ctx, pgn_resnet *r, const float *dout, nn_err *e)
{
    if (r->lean)
        return nn_errf(e, LEAN_MSG);
    if (r->folded)
        return nn_errf(e, FOLDED_MSG);
    if (!r->forwarded)
        return nn_errf(e, "pgn resnet: backward without a forward (or after a change of BN mode)");
    const nn_act *o = &r->act[PGN_RS_OUT];
    if (nn_act_from_nchw(ctx, &r->grad[PGN_RS_OUT], dout, o->n, o->c, o->h, o->w, e))
        return -1;
    return pgn_resnet_backward_act(ctx, r, &r->grad[PGN_RS_OUT], e);
}

int pgn_resnet_fold_bn(pgn_resnet *r, nn_err *e)
{
    if (r->folded > 0)
        return 0;
    if (r->folded < 0)
        return nn_errf(e, "pgn resnet: folding the batch norms failed partway before; load the net again");
    if (r->training)
        return nn_errf(e, "pgn resnet: batch norms can only be folded in eval mode (pgn_resnet_set_training(r, 0))");
    /* Each BN follows the conv registered just before it (module table, state-dict order). */
    r->folded = -1;
    r->forwarded = 0;
    for (int m = 1; m < r->nmod; m++) {
        if (!r->mod[m].bn)
            continue;
        nn_conv2d *c = r->mod[m - 1].conv;
        if (!c)
            return nn_errf(e, "pgn resnet: %s does not follow a convolution", r->mod[m].prefix);
        /* Every BN is followed by LeakyReLU(0.2) except a residual block's second one. */
        int second = 0;
        for (int i = 0; i < r->blocks; i++)
            second |= r->mod[m].bn == &r->blk[i].bn2;
        if (nn_conv2d_fold_bn(c, r->mod[m].bn, e) || (!second && nn_conv2d_set_post_relu(c, 1, SLOPE, e)))
            return nn_err_prefix(e, "pgn resnet: folding %s into %s", r->mod[m].prefix, r->mod[m - 1].prefix);
    }
    for (int m = 0; m < r->nmod; m++)
        if (r->mod[m].conv)
            r->mod[m].conv->frozen = 1; /* the weights never change again */
    r->folded = 1;
    return 0;
}

/* ------------------------------------------------------------------ parameters */

const nn_param *pgn_resnet_params(const pgn_resnet *r, int *count)
{
    if (count)
        *count = r->nparams;
    return r->params;
}

void pgn_resnet_zero_grad(pgn_resnet *r) { nn_params_zero_grad(r->params, r->nparams); }

size_t pgn_resnet_param_count(const pgn_resnet *r)
{
    size_t n = 0;
    for (int i = 0; i < r->nparams; i++)
        n += r->params[i].value ? r->params[i].value->numel : 0;
    return n;
}

/* ------------------------------------------------------------------ state dict */

int pgn_resnet_blocks_of(const nn_weights *w, int *blocks, nn_err *e)
{
    const char *path = w->path ? w->path : "(weights)";
    const nn_weight_meta *bt = nn_weights_meta(w, "backbone_type");
    if (bt && strcmp(bt->str, "resnet"))
        return nn_errf(e, "%s: backbone_type is '%s', not 'resnet'", path, bt->str);
    /* Distinct model.<i>.conv_block prefixes. */
    unsigned char seen[256] = {0};
    int from_keys = 0, lowest = 1 << 30, highest = -1;
    for (int j = 0; j < w->count; j++) {
        int idx, len = 0;
        if (sscanf(w->entries[j].name, "model.%d.conv_block.%n", &idx, &len) == 1 && len > 0 && idx >= 0 &&
            idx < 256 && !seen[idx]) {
            seen[idx] = 1;
            from_keys++;
            lowest = idx < lowest ? idx : lowest;
            highest = idx > highest ? idx : highest;
        }
    }
    if (from_keys && (lowest != 6 || highest != 5 + from_keys))
        return nn_errf(e, "%s: residual blocks at model.%d..model.%d (%d of them); expected model.6..model.%d", path,
                       lowest, highest, from_keys, 5 + from_keys);
    const nn_weight_meta *nbm = nn_weights_meta(w, "backbone_params.num_blocks");
    int n = from_keys;
    if (nbm) {
        if (!nbm->is_number || nbm->num != (double)(int)nbm->num)
            return nn_errf(e, "%s: backbone_params.num_blocks is '%s', not an integer", path, nbm->str);
        n = (int)nbm->num;
        if (from_keys && from_keys != n)
            return nn_errf(e, "%s: backbone_params.num_blocks is %d but the state dict has %d residual blocks", path,
                           n, from_keys);
    }
    if (n < 1 || n > PGN_RESNET_MAX_BLOCKS)
        return nn_errf(e, "%s: %s %d residual blocks (supported: 1..%d)", path,
                       nbm ? "backbone_params.num_blocks gives" : "the state dict has", n, PGN_RESNET_MAX_BLOCKS);
    *blocks = n;
    return 0;
}

int pgn_resnet_check_state(const pgn_resnet *r, const nn_weights *w, char *report, size_t len)
{
    if (r->folded) {
        if (len)
            snprintf(report, len, "the net's batch norms were folded into its convolutions: it has no state dict\n");
        return 1;
    }
    return pgn_state_check(r->mod, r->nmod, w, report, len);
}

int pgn_resnet_load(pgn_resnet *r, const nn_weights *w, nn_err *e)
{
    if (r->folded)
        return nn_errf(e, "pgn resnet: cannot load a state dict into a net whose batch norms were folded");
    /* A file of another depth lists dozens of keys: say what it holds first. */
    char hint[64] = "", what[32];
    int other;
    nn_err ignored;
    if (!pgn_resnet_blocks_of(w, &other, &ignored) && other != r->blocks)
        snprintf(hint, sizeof hint, "; it holds a ResNet-%d", other);
    snprintf(what, sizeof what, "PGN ResNet-%d", r->blocks);
    return pgn_state_load(r->mod, r->nmod, w, what, hint, e);
}

int pgn_resnet_load_file(pgn_resnet *r, const char *path, nn_err *e)
{
    nn_weights w;
    if (nn_weights_read(&w, path, e))
        return nn_err_prefix(e, "pgn resnet state dict");
    int rc = pgn_resnet_load(r, &w, e);
    nn_weights_free(&w);
    return rc;
}
