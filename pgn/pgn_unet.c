#include "pgn/pgn_unet.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BN_EPS 1e-5f
#define BN_MOMENTUM 0.1f

static const int DOWN[5] = {64, 64, 128, 256, 512};

/* Decoder step j: which sep, which skip (sep index of the skip, or -1 for x_original). */
static const int DEC_SEP[5] = {PGN_UNET_SEP_UP3, PGN_UNET_SEP_UP2, PGN_UNET_SEP_UP1, PGN_UNET_SEP_UP0,
                               PGN_UNET_SEP_ORIG2};
static const int DEC_SKIP[5] = {3, 2, 1, 0, -1};

/* ------------------------------------------------------------------ construction */

typedef struct builder {
    pgn_unet *u;
    int nmod;
    nn_rng rng;
} builder;

static int gcd(int a, int b)
{
    while (b) {
        int t = a % b;
        a = b;
        b = t;
    }
    return a;
}

static int add_conv(builder *b, const char *prefix, nn_conv2d *c, int cin, int cout, int k, int stride, int groups,
                    int bias, nn_err *e)
{
    pgn_unet_module *m = &b->u->mod[b->nmod++];
    snprintf(m->prefix, sizeof m->prefix, "%s", prefix);
    m->conv = c;
    int p = (k - 1) / 2;
    if (nn_conv2d_init(c, cin, cout, k, k, stride, stride, p, p, groups, NN_PAD_ZERO, bias, &b->rng, e))
        return nn_err_prefix(e, "pgn unet %s", prefix);
    return 0;
}

static int add_bn(builder *b, const char *prefix, nn_batchnorm2d *l, int c, nn_err *e)
{
    pgn_unet_module *m = &b->u->mod[b->nmod++];
    snprintf(m->prefix, sizeof m->prefix, "%s", prefix);
    m->bn = l;
    if (nn_batchnorm2d_init(l, c, BN_EPS, BN_MOMENTUM, e))
        return nn_err_prefix(e, "pgn unet %s", prefix);
    l->training = 1;
    return 0;
}

/* Block registration order: cdw1, cpw1, cdw2, cpw2, bn1, bn2, c1 (pgn-checkpoint-keys.md 2.2). */
static int add_blaze(builder *b, const char *prefix, pgn_unet_blaze *k, int cin, int cout, int stride, nn_err *e)
{
    char p[32];
    k->cin = cin;
    k->cout = cout;
    k->stride = stride;
#define SUB(s) (snprintf(p, sizeof p, "%s.%s", prefix, s), p)
    if (add_conv(b, SUB("cdw1"), &k->cdw1, cin, cout, 5, stride, cin, 0, e) ||
        add_conv(b, SUB("cpw1"), &k->cpw1, cout, cout, 1, 1, 1, 0, e) ||
        add_conv(b, SUB("cdw2"), &k->cdw2, cout, cout, 5, 1, cout, 0, e) ||
        add_conv(b, SUB("cpw2"), &k->cpw2, cout, cout, 1, 1, 1, 0, e) || add_bn(b, SUB("bn1"), &k->bn1, cout, e) ||
        add_bn(b, SUB("bn2"), &k->bn2, cout, e))
        return -1;
    k->bn1.fuse_relu = 1; /* the block's first ReLU (pgn/blaze.h) */
    if (stride == 2 && add_conv(b, SUB("c1"), &k->c1, cin, cout, 1, 2, 1, 0, e))
        return -1;
#undef SUB
    return 0;
}

static int add_sep(builder *b, const char *prefix, pgn_unet_sep *s, int cin, int cout, int k, nn_err *e)
{
    char p[32];
    snprintf(p, sizeof p, "%s.0", prefix);
    if (add_conv(b, p, &s->c0, cin, cout, k, 1, gcd(cin, cout), 1, e))
        return -1;
    snprintf(p, sizeof p, "%s.1", prefix);
    if (add_conv(b, p, &s->c1, cout, cout, 1, 1, 1, 1, e))
        return -1;
    s->c1.post_relu = 1; /* the sep's ReLU (pgn/blaze.h) */
    return 0;
}

int pgn_unet_init(pgn_unet *u, uint64_t seed, nn_err *e)
{
    memset(u, 0, sizeof *u);
    builder b = {.u = u};
    nn_rng_seed(&b.rng, seed);
    pgn_unet_sep *s = u->sep;
    int rc = add_conv(&b, "layer0.0", &u->l0_conv, 6, 64, 7, 2, 1, 0, e) || add_bn(&b, "layer0.1", &u->l0_bn, 64, e) ||
             add_blaze(&b, "layer1.1", &u->blk[0], 64, 64, 1, e) || add_blaze(&b, "layer2", &u->blk[1], 64, 128, 2, e) ||
             add_blaze(&b, "layer3", &u->blk[2], 128, 256, 2, e) ||
             add_blaze(&b, "layer4", &u->blk[3], 256, 512, 2, e) ||
             add_sep(&b, "conv_original_size0", &s[PGN_UNET_SEP_ORIG0], 6, 64, 3, e) ||
             add_sep(&b, "conv_original_size1", &s[PGN_UNET_SEP_ORIG1], 64, 64, 3, e);
    u->l0_bn.fuse_relu = 1; /* layer0.2, inside the batch norm */
    for (int i = 0; i < 5 && !rc; i++) {
        char p[32];
        snprintf(p, sizeof p, "layer%d_1x1", i);
        rc = add_sep(&b, p, &s[PGN_UNET_SEP_SKIP0 + i], DOWN[i], DOWN[i], 1, e);
    }
    rc = rc || add_sep(&b, "conv_original_size2", &s[PGN_UNET_SEP_ORIG2], 192, 64, 3, e) ||
         add_sep(&b, "conv_up0", &s[PGN_UNET_SEP_UP0], 320, 128, 3, e) ||
         add_sep(&b, "conv_up1", &s[PGN_UNET_SEP_UP1], 320, 256, 3, e) ||
         add_sep(&b, "conv_up2", &s[PGN_UNET_SEP_UP2], 640, 256, 3, e) ||
         add_sep(&b, "conv_up3", &s[PGN_UNET_SEP_UP3], 768, 512, 3, e) ||
         add_conv(&b, "conv_last", &u->last, 64, 3, 1, 1, 1, 1, e);
    if (rc) {
        pgn_unet_free(u);
        return -1;
    }
    if (b.nmod != PGN_UNET_MODULES) {
        pgn_unet_free(u);
        return nn_errf(e, "pgn unet: built %d modules, expected %d", b.nmod, PGN_UNET_MODULES);
    }
    int np = 0;
    for (int m = 0; m < b.nmod; m++) {
        pgn_unet_module *md = &u->mod[m];
        if (md->conv) {
            u->params[np++] = (nn_param){&md->conv->weight, &md->conv->dweight};
            if (md->conv->geo.has_bias)
                u->params[np++] = (nn_param){&md->conv->bias, &md->conv->dbias};
        } else {
            u->params[np++] = (nn_param){&md->bn->gamma, &md->bn->dgamma};
            u->params[np++] = (nn_param){&md->bn->beta, &md->bn->dbeta};
        }
    }
    if (np != PGN_UNET_PARAM_TENSORS) {
        pgn_unet_free(u);
        return nn_errf(e, "pgn unet: %d parameter tensors, expected %d", np, PGN_UNET_PARAM_TENSORS);
    }
    nn_eltwise_init(&u->relu, NN_RELU, 0.0f);
    nn_upsample2x_init(&u->upsample, 1);
    nn_pool2d_init(&u->pool, 1, 3, 2, 1);
    u->training = 1;
    return 0;
}

static void free_acts(nn_act *a, int n)
{
    for (int i = 0; i < n; i++)
        nn_act_free(&a[i]);
}

/* Every activation (and gradient) of the ordinary forward and backward, except x, out and dout. */
static void free_layer_acts(pgn_unet *u)
{
    nn_act *l0[] = {&u->l0_c,     &u->l0_out, &u->l0_gc,  &u->l0_gout, &u->pool_out,
                    &u->pool_g,   &u->orig_g, &u->orig0_g};
    for (size_t i = 0; i < sizeof l0 / sizeof *l0; i++)
        nn_act_free(l0[i]);
    for (int k = 0; k < 4; k++)
        pgn_blaze_free_acts(&u->blk[k]);
    free_acts(u->blk_gout, 4);
    for (int i = 0; i < PGN_UNET_SEPS; i++)
        pgn_sep_free_acts(&u->sep[i]);
    free_acts(u->skip_g, 5);
    free_acts(u->up, 5);
    free_acts(u->cat, 5);
    free_acts(u->up_g, 5);
    free_acts(u->cat_g, 5);
    free_acts(u->dec_g, 5);
}

void pgn_unet_free(pgn_unet *u)
{
    for (int m = 0; m < PGN_UNET_MODULES; m++) {
        if (u->mod[m].conv)
            nn_conv2d_free(u->mod[m].conv);
        if (u->mod[m].bn)
            nn_batchnorm2d_free(u->mod[m].bn);
    }
    free_layer_acts(u);
    nn_act_free(&u->x);
    nn_act_free(&u->out);
    nn_act_free(&u->dout);
    free_acts(u->lean_buf, PGN_UNET_LEAN_BUFS);
    nn_eltwise_free(&u->relu);
    nn_upsample2x_free(&u->upsample);
    nn_pool2d_free(&u->pool);
    memset(u, 0, sizeof *u);
}

void pgn_unet_set_training(pgn_unet *u, int training)
{
    u->training = training && !u->folded ? 1 : 0;
    for (int m = 0; m < PGN_UNET_MODULES; m++)
        if (u->mod[m].bn)
            u->mod[m].bn->training = u->training;
}

int pgn_unet_check_size(int h, int w, nn_err *e)
{
    if (h <= 0 || w <= 0 || h % 32 || w % 32)
        return nn_errf(e,
                       "pgn unet: input %dx%d is not supported: height and width must be positive multiples of 32 "
                       "(five stride-2 levels)",
                       h, w);
    return 0;
}

/* ------------------------------------------------------------------ forward */

#define TRY(call, what)                                                                                                \
    do {                                                                                                               \
        if (call)                                                                                                      \
            return nn_err_prefix(e, "pgn unet %s", what);                                                              \
    } while (0)

static const char *sep_name(const pgn_unet *u, const pgn_unet_sep *s)
{
    for (int m = 0; m < PGN_UNET_MODULES; m++)
        if (u->mod[m].conv == &s->c0)
            return u->mod[m].prefix;
    return "sep";
}

/* The shared blocks (pgn/blaze.c), with this net's relu and its error prefix. */
static int sep_forward(nn_ctx *ctx, pgn_unet *u, pgn_unet_sep *s, const nn_act *x, nn_err *e)
{
    return pgn_sep_forward(ctx, s, x, sep_name(u, s), e) ? nn_err_prefix(e, "pgn unet") : 0;
}

static int sep_backward(nn_ctx *ctx, pgn_unet *u, pgn_unet_sep *s, const nn_act *x, const nn_act *gout, nn_act *gx,
                        nn_err *e)
{
    return pgn_sep_backward(ctx, s, &u->relu, x, gout, gx, sep_name(u, s), e) ? nn_err_prefix(e, "pgn unet") : 0;
}

static int blaze_forward(nn_ctx *ctx, pgn_unet *u, pgn_unet_blaze *k, const nn_act *x, const char *name, nn_err *e)
{
    return pgn_blaze_forward(ctx, k, &u->relu, x, name, e) ? nn_err_prefix(e, "pgn unet") : 0;
}

static int blaze_backward(nn_ctx *ctx, pgn_unet *u, pgn_unet_blaze *k, const nn_act *x, const nn_act *gout,
                          nn_act *gx, const char *name, nn_err *e)
{
    return pgn_blaze_backward(ctx, k, &u->relu, x, gout, gx, name, e) ? nn_err_prefix(e, "pgn unet") : 0;
}

static const char *const BLK_NAME[4] = {"layer1.1", "layer2", "layer3", "layer4"};

static int sep_into(nn_ctx *ctx, pgn_unet *u, pgn_unet_sep *s, const nn_act *x, nn_act *tmp, nn_act *y, nn_err *e)
{
    return pgn_sep_forward_into(ctx, s, x, tmp, y, sep_name(u, s), e) ? nn_err_prefix(e, "pgn unet") : 0;
}

/* The lean buffers (pgn_unet_set_lean). S0..S3 hold the skips s0..s3 until their decoder step's
 * concat; BIG, CAT and T take everything else in turn, each layer writing into one that holds
 * nothing still needed. x_original waits for the last concat: with one image it is written
 * straight into the last concat's place in CAT (its channels 128-191, a contiguous tail of the
 * buffer in the channel-blocked and plain layouts oneDNN gives it; should the fused upsample-
 * concatenate not apply, it is copied out to XORIG first), while CAT's first 128 channels' worth
 * serve every step before (the largest: the H/2 concat, 80 units); with a batch it waits in XORIG.
 * In units of n*H*W floats, the largest each one gets: CAT 192 (the last concat), BIG 64, XORIG 64
 * (batches, and that fallback), T 32, S0 16, S1 4, S2 2, S3 1. The assignment depends only on the net, not on
 * the input size, so the buffers grow at the first forward of a larger shape and are reused as
 * they are afterwards. */
enum { LB_XORIG, LB_BIG, LB_CAT, LB_T, LB_S0, LB_S1, LB_S2, LB_S3, LB_COUNT };
_Static_assert(LB_COUNT == PGN_UNET_LEAN_BUFS, "PGN_UNET_LEAN_BUFS");

/* The last decoder step: up(d) concatenated with x_original into cat. x0 borrowed from cat's tail
 * is already in place when the fused upsample-concatenate applies (the layouts oneDNN picks make
 * it apply); otherwise it is copied out to XORIG first, and the two steps run apart. */
static int last_concat(nn_ctx *ctx, pgn_unet *u, const nn_act *d, const nn_act *x0, nn_act *cat, nn_err *e)
{
    nn_act *b = u->lean_buf, *big = &b[LB_BIG];
    int fused = nn_upsample2x_concat_forward(ctx, &u->upsample, d, x0, cat, e);
    if (fused <= 0)
        return fused < 0 ? nn_err_prefix(e, "pgn unet: upsample") : 0;
    if (x0->borrowed) {
        nn_act *xo = &b[LB_XORIG];
        if (nn_act_reserve(xo, x0->n, x0->c, x0->h, x0->w, &x0->md, e))
            return -1;
        memcpy(xo->data, x0->data, nn_md_bytes(&x0->md));
        x0 = xo;
    }
    TRY(nn_upsample2x_forward(ctx, &u->upsample, d, big, e), "upsample");
    TRY(nn_concat_forward(ctx, big, x0, cat, e), "concat");
    return 0;
}

/* The folded forward's layers in the same order, on the lean buffers. */
static int lean_forward(nn_ctx *ctx, pgn_unet *u, nn_err *e)
{
    nn_act *b = u->lean_buf, *big = &b[LB_BIG], *cat = &b[LB_CAT];
    const nn_act *x = &u->x;
    pgn_unet_sep *s = u->sep;
    /* x_original's place: the tail of CAT, sized now for the last concat (it never grows later) */
    nn_act x0_tail, *xorig = &b[LB_XORIG];
    const size_t unit = (size_t)x->h * x->w * sizeof(float);
    if (x->n == 1) {
        if (nn_act_reserve(cat, 1, 192, x->h, x->w, NULL, e) || nn_act_borrow(&x0_tail, cat, 128 * unit, 64 * unit, e))
            return -1;
        xorig = &x0_tail;
    }
    if (sep_into(ctx, u, &s[PGN_UNET_SEP_ORIG0], x, big, cat, e) ||
        sep_into(ctx, u, &s[PGN_UNET_SEP_ORIG1], cat, big, xorig, e))
        return -1;
    TRY(nn_conv2d_forward(ctx, &u->l0_conv, x, big, e), "layer0"); /* BN folded, ReLU fused */
    if (sep_into(ctx, u, &s[PGN_UNET_SEP_SKIP0], big, cat, &b[LB_S0], e))
        return -1;
    TRY(nn_pool2d_forward(ctx, &u->pool, big, cat, e), "layer1.0");
    /* Blocks: the input in `in`, the output into `q`, BIG as the blocks' and the skips' temporary;
     * in and q swap roles. s4 goes into the last block's input buffer (T). */
    nn_act *in = cat, *q = &b[LB_T];
    for (int k = 0; k < 4; k++) {
        if (pgn_blaze_forward_into(ctx, &u->blk[k], &u->relu, in, big, q, BLK_NAME[k], e))
            return nn_err_prefix(e, "pgn unet");
        if (sep_into(ctx, u, &s[PGN_UNET_SEP_SKIP1 + k], q, big, k < 3 ? &b[LB_S1 + k] : in, e))
            return -1;
        nn_act *t = in;
        in = q;
        q = t;
    }
    nn_act *d = &b[LB_T]; /* s4 */
    for (int j = 0; j < 5; j++) {
        if (j < 4) {
            const nn_act *skip = &b[LB_S0 + DEC_SKIP[j]];
            int fused = nn_upsample2x_concat_forward(ctx, &u->upsample, d, skip, cat, e);
            if (fused < 0)
                return nn_err_prefix(e, "pgn unet: upsample");
            if (fused > 0) {
                TRY(nn_upsample2x_forward(ctx, &u->upsample, d, big, e), "upsample");
                TRY(nn_concat_forward(ctx, big, skip, cat, e), "concat");
            }
        } else if (last_concat(ctx, u, d, xorig, cat, e))
            return -1;
        /* d (T) is consumed by the upsample; the last step's output goes over its own input (the
         * sep's first conv has read all of it before the second writes) */
        nn_act *dst = j < 4 ? &b[LB_T] : cat;
        if (sep_into(ctx, u, &s[DEC_SEP[j]], cat, big, dst, e))
            return -1;
        d = dst;
    }
    TRY(nn_conv2d_forward(ctx, &u->last, d, &u->out, e), "conv_last");
    return 0;
}

int pgn_unet_set_lean(pgn_unet *u, int on, nn_err *e)
{
    if (on) {
        if (u->folded <= 0)
            return nn_errf(e, "pgn unet: the inference-only forward needs a net whose batch norms are folded "
                              "(pgn_unet_fold_bn)");
        if (!u->lean)
            free_layer_acts(u);
        u->lean = 1;
        u->forwarded = 0;
    } else if (u->lean) {
        free_acts(u->lean_buf, PGN_UNET_LEAN_BUFS);
        u->lean = 0;
    }
    return 0;
}

/* Forward on u->x (already set). */
static int net_forward(nn_ctx *ctx, pgn_unet *u, nn_err *e)
{
    const nn_act *x = &u->x;
    u->forwarded = 0;
    if (u->folded < 0)
        return nn_errf(e, "pgn unet: folding the batch norms failed partway; load the net again");
    if (x->c != PGN_UNET_IN_CHANNELS)
        return nn_errf(e, "pgn unet: input has %d channels, expected %d", x->c, PGN_UNET_IN_CHANNELS);
    if (pgn_unet_check_size(x->h, x->w, e))
        return -1;
    if (u->training && (long)x->n * (x->h / 32) * (x->w / 32) < 2)
        return nn_errf(e,
                       "pgn unet: a train-mode forward of [%d, 6, %d, %d] is not possible: the deepest batch norm "
                       "would see one value per channel (batch statistics need n * H/32 * W/32 >= 2)",
                       x->n, x->h, x->w);
    if (u->lean)
        return lean_forward(ctx, u, e);
    pgn_unet_sep *s = u->sep;
    if (sep_forward(ctx, u, &s[PGN_UNET_SEP_ORIG0], x, e) ||
        sep_forward(ctx, u, &s[PGN_UNET_SEP_ORIG1], &s[PGN_UNET_SEP_ORIG0].out, e))
        return -1;
    if (u->folded) { /* BN folded and ReLU fused into the conv */
        TRY(nn_conv2d_forward(ctx, &u->l0_conv, x, &u->l0_out, e), "layer0");
    } else {
        TRY(nn_conv2d_forward(ctx, &u->l0_conv, x, &u->l0_c, e), "layer0");
        TRY(nn_batchnorm2d_forward(ctx, &u->l0_bn, &u->l0_c, &u->l0_out, e), "layer0"); /* + ReLU */
    }
    if (sep_forward(ctx, u, &s[PGN_UNET_SEP_SKIP0], &u->l0_out, e))
        return -1;
    TRY(nn_pool2d_forward(ctx, &u->pool, &u->l0_out, &u->pool_out, e), "layer1.0");
    const nn_act *in = &u->pool_out;
    for (int k = 0; k < 4; k++) {
        if (blaze_forward(ctx, u, &u->blk[k], in, BLK_NAME[k], e) ||
            sep_forward(ctx, u, &s[PGN_UNET_SEP_SKIP1 + k], &u->blk[k].out, e))
            return -1;
        in = &u->blk[k].out;
    }
    const nn_act *d = &s[PGN_UNET_SEP_SKIP4].out;
    for (int j = 0; j < 5; j++) {
        const nn_act *skip = DEC_SKIP[j] >= 0 ? &s[PGN_UNET_SEP_SKIP0 + DEC_SKIP[j]].out : &s[PGN_UNET_SEP_ORIG1].out;
        TRY(nn_upsample2x_forward(ctx, &u->upsample, d, &u->up[j], e), "upsample");
        TRY(nn_concat_forward(ctx, &u->up[j], skip, &u->cat[j], e), "concat");
        if (sep_forward(ctx, u, &s[DEC_SEP[j]], &u->cat[j], e))
            return -1;
        d = &s[DEC_SEP[j]].out;
    }
    TRY(nn_conv2d_forward(ctx, &u->last, d, &u->out, e), "conv_last");
    u->forwarded = u->training;
    return 0;
}

int pgn_unet_forward(nn_ctx *ctx, pgn_unet *u, const float *x, int n, int h, int w, float *o, nn_err *e)
{
    u->forwarded = 0;
    if (n < 1)
        return nn_errf(e, "pgn unet: batch size %d", n);
    if (pgn_unet_check_size(h, w, e) || nn_act_from_nchw(ctx, &u->x, x, n, PGN_UNET_IN_CHANNELS, h, w, e) ||
        net_forward(ctx, u, e))
        return -1;
    return o ? nn_act_to_nchw(ctx, &u->out, o, e) : 0;
}

int pgn_unet_forward_pair(nn_ctx *ctx, pgn_unet *u, const nn_act *yhat, const nn_act *y, nn_err *e)
{
    u->forwarded = 0;
    if (yhat->c != 3 || y->c != 3 || yhat->n != y->n || yhat->h != y->h || yhat->w != y->w)
        return nn_errf(e, "pgn unet: inputs [%d, %d, %d, %d] and [%d, %d, %d, %d] are not two matching RGB batches",
                       yhat->n, yhat->c, yhat->h, yhat->w, y->n, y->c, y->h, y->w);
    if (pgn_unet_check_size(yhat->h, yhat->w, e))
        return -1;
    TRY(nn_concat_forward(ctx, yhat, y, &u->x, e), "input concat");
    return net_forward(ctx, u, e);
}

/* ------------------------------------------------------------------ backward */

#define FOLDED_MSG                                                                                                     \
    "pgn unet: the batch norms were folded into the convolutions (pgn_unet_fold_bn): the net is prediction only, no " \
    "backward"

#define LEAN_MSG                                                                                                       \
    "pgn unet: backward after an inference-only forward (pgn_unet_set_lean: the activations it needs were not "      \
    "kept; the net is prediction only)"

int pgn_unet_backward_act(nn_ctx *ctx, pgn_unet *u, const nn_act *dout, nn_err *e)
{
    if (u->lean)
        return nn_errf(e, LEAN_MSG);
    if (u->folded)
        return nn_errf(e, FOLDED_MSG);
    if (!u->forwarded)
        return nn_errf(e, "pgn unet: backward without a train-mode forward before it");
    if (dout->n != u->out.n || dout->c != u->out.c || dout->h != u->out.h || dout->w != u->out.w)
        return nn_errf(e, "pgn unet: output gradient [%d, %d, %d, %d] does not match the output [%d, %d, %d, %d]",
                       dout->n, dout->c, dout->h, dout->w, u->out.n, u->out.c, u->out.h, u->out.w);
    pgn_unet_sep *s = u->sep;
    nn_act *resets[] = {&u->l0_gc, &u->l0_gout, &u->pool_g, &u->orig_g, &u->orig0_g};
    for (size_t i = 0; i < sizeof resets / sizeof *resets; i++)
        nn_act_grad_reset(resets[i]);
    for (int i = 0; i < 5; i++) {
        nn_act_grad_reset(&u->skip_g[i]);
        nn_act_grad_reset(&u->up_g[i]);
        nn_act_grad_reset(&u->cat_g[i]);
        nn_act_grad_reset(&u->dec_g[i]);
    }
    for (int k = 0; k < 4; k++)
        nn_act_grad_reset(&u->blk_gout[k]);

    /* Decoder, last step first. dec_g[j] = gradient of decoder step j's output. */
    /* conv_last and the last sep's ReLU in one pass where the fused kernel applies */
    pgn_unet_sep *top = &s[PGN_UNET_SEP_ORIG2];
    nn_act_grad_reset(&top->gpre);
    int two_step = nn_conv2d_backward_relu_input(ctx, &u->last, &top->out, dout, &top->gpre, 1, e);
    TRY(two_step < 0, "conv_last");
    if (two_step)
        TRY(nn_conv2d_backward(ctx, &u->last, &top->out, dout, &u->dec_g[4], 1, e), "conv_last");
    /* Each upsampling's input is a sep's output (the previous step's, or s4's): its ReLU is taken
     * back inside the upsampling's backward where the fused kernel applies (pre_ready). */
    int pre_ready = !two_step;
    for (int j = 4; j >= 0; j--) {
        nn_act *gskip = DEC_SKIP[j] >= 0 ? &u->skip_g[DEC_SKIP[j]] : &u->orig_g;
        pgn_unet_sep *sp = &s[DEC_SEP[j]], *below = &s[j > 0 ? DEC_SEP[j - 1] : PGN_UNET_SEP_SKIP4];
        if (pre_ready) {
            if (pgn_sep_backward_pre(ctx, sp, &u->cat[j], &sp->gpre, &u->cat_g[j], sep_name(u, sp), e))
                return nn_err_prefix(e, "pgn unet");
        } else if (sep_backward(ctx, u, sp, &u->cat[j], &u->dec_g[j], &u->cat_g[j], e))
            return -1;
        TRY(nn_concat_backward(ctx, &u->cat_g[j], u->up[j].c, &u->up_g[j], gskip, e), "concat");
        nn_act_grad_reset(&below->gpre);
        int r = nn_upsample2x_backward_relu(ctx, &u->upsample, &u->up_g[j], &below->out, &below->gpre, e);
        TRY(r < 0, "upsample");
        if (r)
            TRY(nn_upsample2x_backward(ctx, &u->upsample, &u->up_g[j], j > 0 ? &u->dec_g[j - 1] : &u->skip_g[4], e),
                "upsample");
        pre_ready = !r; /* after the loop: s4's */
    }
    /* Full-resolution branch: the input gradient is not needed. */
    if (sep_backward(ctx, u, &s[PGN_UNET_SEP_ORIG1], &s[PGN_UNET_SEP_ORIG0].out, &u->orig_g, &u->orig0_g, e) ||
        sep_backward(ctx, u, &s[PGN_UNET_SEP_ORIG0], &u->x, &u->orig0_g, NULL, e))
        return -1;
    /* Encoder, deepest first: each level's output gets its skip's and the next block's gradients. */
    for (int k = 3; k >= 0; k--) {
        nn_act *gin = k > 0 ? &u->blk_gout[k - 1] : &u->pool_g;
        const nn_act *in = k > 0 ? &u->blk[k - 1].out : &u->pool_out;
        pgn_unet_sep *sk = &s[PGN_UNET_SEP_SKIP1 + k];
        if (k == 3 && pre_ready) { /* s4's gradient came through the upsampling, ReLU included */
            if (pgn_sep_backward_pre(ctx, sk, &u->blk[k].out, &sk->gpre, &u->blk_gout[k], sep_name(u, sk), e))
                return nn_err_prefix(e, "pgn unet");
        } else if (sep_backward(ctx, u, sk, &u->blk[k].out, &u->skip_g[k + 1], &u->blk_gout[k], e))
            return -1;
        if (blaze_backward(ctx, u, &u->blk[k], in, &u->blk_gout[k], gin, BLK_NAME[k], e))
            return -1;
    }
    TRY(nn_pool2d_backward(ctx, &u->pool, &u->l0_out, &u->pool_g, &u->l0_gout, e), "layer1.0");
    if (sep_backward(ctx, u, &s[PGN_UNET_SEP_SKIP0], &u->l0_out, &u->skip_g[0], &u->l0_gout, e))
        return -1;
    TRY(nn_batchnorm2d_backward(ctx, &u->l0_bn, &u->l0_c, &u->l0_gout, &u->l0_gc, e), "layer0");
    TRY(nn_conv2d_backward(ctx, &u->l0_conv, &u->x, &u->l0_gc, NULL, 1, e), "layer0");
    return 0;
}

#undef TRY

int pgn_unet_backward(nn_ctx *ctx, pgn_unet *u, const float *dout, nn_err *e)
{
    if (u->lean)
        return nn_errf(e, LEAN_MSG);
    if (u->folded)
        return nn_errf(e, FOLDED_MSG);
    if (!u->forwarded)
        return nn_errf(e, "pgn unet: backward without a train-mode forward before it");
    if (nn_act_from_nchw(ctx, &u->dout, dout, u->out.n, u->out.c, u->out.h, u->out.w, e))
        return -1;
    return pgn_unet_backward_act(ctx, u, &u->dout, e);
}

int pgn_unet_fold_bn(pgn_unet *u, nn_err *e)
{
    if (u->folded > 0)
        return 0;
    if (u->folded < 0)
        return nn_errf(e, "pgn unet: folding the batch norms failed partway before; load the net again");
    if (u->training)
        return nn_errf(e, "pgn unet: batch norms can only be folded in eval mode (pgn_unet_set_training(u, 0))");
    u->folded = -1;
    u->forwarded = 0;
    if (nn_conv2d_fold_bn(&u->l0_conv, &u->l0_bn, e) || nn_conv2d_set_post_relu(&u->l0_conv, 1, 0.0f, e))
        return nn_err_prefix(e, "pgn unet: folding layer0.1 into layer0.0");
    for (int k = 0; k < 4; k++)
        if (pgn_blaze_fold_bn(&u->blk[k], e))
            return nn_err_prefix(e, "pgn unet: folding %s", BLK_NAME[k]);
    for (int m = 0; m < PGN_UNET_MODULES; m++)
        if (u->mod[m].conv)
            u->mod[m].conv->frozen = 1; /* the weights never change again */
    u->folded = 1;
    return 0;
}

/* ------------------------------------------------------------------ parameters */

const nn_param *pgn_unet_params(const pgn_unet *u, int *count)
{
    if (count)
        *count = PGN_UNET_PARAM_TENSORS;
    return u->params;
}

void pgn_unet_zero_grad(pgn_unet *u) { nn_params_zero_grad(u->params, PGN_UNET_PARAM_TENSORS); }

size_t pgn_unet_param_count(const pgn_unet *u)
{
    size_t n = 0;
    for (int i = 0; i < PGN_UNET_PARAM_TENSORS; i++)
        n += u->params[i].value ? u->params[i].value->numel : 0;
    return n;
}

nn_act *pgn_unet_relu_input(pgn_unet *u, int i, const char **name)
{
    static const char *const NAMES[PGN_UNET_RELUS] = {
        "layer0.2",     "layer1.1.r1",  "layer1.1.r2",  "layer2.r1",   "layer2.r2",
        "layer3.r1",    "layer3.r2",    "layer4.r1",    "layer4.r2",   "conv_original_size0.2",
        "conv_original_size1.2", "layer0_1x1.2", "layer1_1x1.2", "layer2_1x1.2", "layer3_1x1.2",
        "layer4_1x1.2", "conv_original_size2.2", "conv_up0.2", "conv_up1.2", "conv_up2.2",
        "conv_up3.2"};
    if (i < 0 || i >= PGN_UNET_RELUS)
        return NULL;
    if (name)
        *name = NAMES[i];
    if (i == 0)
        return &u->l0_out;
    if (i < 9)
        return &u->blk[(i - 1) / 2].t[(i - 1) % 2 ? PGN_B_PRE2 : PGN_B_ACT1];
    /* seps 9..20 in pgn_unet.sep[] order (= state-dict order); their ReLU runs inside the 1x1
     * convolution, and its backward reads the output's sign (the same mask) */
    return &u->sep[i - 9].out;
}

int pgn_unet_relu_mask_fixed(const pgn_unet *u, int i)
{
    (void)u;
    /* layer0's ReLU and each block's first run inside their batch norms */
    return i == 0 || (i >= 1 && i < 9 && (i - 1) % 2 == 0);
}

/* ------------------------------------------------------------------ state dict */

int pgn_unet_check_state(const pgn_unet *u, const nn_weights *w, char *report, size_t len)
{
    if (u->folded) {
        if (len)
            snprintf(report, len, "the net's batch norms were folded into its convolutions: it has no state dict\n");
        return 1;
    }
    return pgn_state_check(u->mod, PGN_UNET_MODULES, w, report, len);
}

int pgn_unet_load(pgn_unet *u, const nn_weights *w, nn_err *e)
{
    if (u->folded)
        return nn_errf(e, "pgn unet: cannot load a state dict into a net whose batch norms were folded");
    return pgn_state_load(u->mod, PGN_UNET_MODULES, w, "PGN UNet", NULL, e);
}

int pgn_unet_load_file(pgn_unet *u, const char *path, nn_err *e)
{
    nn_weights w;
    if (nn_weights_read(&w, path, e))
        return nn_err_prefix(e, "pgn unet state dict");
    int rc = pgn_unet_load(u, &w, e);
    nn_weights_free(&w);
    return rc;
}
