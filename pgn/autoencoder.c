#include "pgn/autoencoder.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn/init.h"
#include "nn/upsample_dwconv.h"

#define BN_EPS 1e-5f
#define BN_MOMENTUM 0.1f

const size_t PGN_AE_PARAM_COUNT[3] = {54019, 111491, 408195};
const int PGN_AE_PARAM_TENSORS[3] = {13, 25, 38};
const int PGN_AE_MODULES[3] = {7, 15, 24};
const int PGN_AE_STATE_KEYS[3] = {16, 34, 53};

/* Decoder sep channels by max_layer (cin, cout of each step). */
static const int DEC_CH[3][3][2] = {
    {{128, 128}},
    {{128, 128}, {128, 128}},
    {{256, 256}, {256, 128}, {128, 128}},
};

/* ------------------------------------------------------------------ construction */

typedef struct builder {
    pgn_autoencoder *ae;
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
    if (b->ae->nmod >= PGN_AE_MAX_MODULES)
        return nn_errf(e, "autoencoder: too many modules");
    pgn_module *m = &b->ae->mod[b->ae->nmod++];
    snprintf(m->prefix, sizeof m->prefix, "%s", prefix);
    m->conv = c;
    int p = (k - 1) / 2;
    if (nn_conv2d_init(c, cin, cout, k, k, stride, stride, p, p, groups, NN_PAD_ZERO, bias, &b->rng, e))
        return nn_err_prefix(e, "autoencoder %s", prefix);
    return 0;
}

static int add_bn(builder *b, const char *prefix, nn_batchnorm2d *l, int c, nn_err *e)
{
    if (b->ae->nmod >= PGN_AE_MAX_MODULES)
        return nn_errf(e, "autoencoder: too many modules");
    pgn_module *m = &b->ae->mod[b->ae->nmod++];
    snprintf(m->prefix, sizeof m->prefix, "%s", prefix);
    m->bn = l;
    if (nn_batchnorm2d_init(l, c, BN_EPS, BN_MOMENTUM, e))
        return nn_err_prefix(e, "autoencoder %s", prefix);
    l->training = 1;
    return 0;
}

static void add_relu(pgn_autoencoder *ae, const char *name)
{
    snprintf(ae->relu_name[ae->nrelu++], sizeof ae->relu_name[0], "%s", name);
}

/* Block registration order: cdw1, cpw1, cdw2, cpw2, bn1, bn2, c1 (pgn-checkpoint-keys.md 2.3). */
static int add_blaze(builder *b, const char *prefix, pgn_ae_blaze *k, int cin, int cout, int stride, nn_err *e)
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
    add_relu(b->ae, SUB("r1"));
    add_relu(b->ae, SUB("r2"));
#undef SUB
    return 0;
}

static int add_sep(builder *b, const char *prefix, pgn_ae_sep *s, int cin, int cout, int k, nn_err *e)
{
    char p[32];
    snprintf(p, sizeof p, "%s.0", prefix);
    if (add_conv(b, p, &s->c0, cin, cout, k, 1, gcd(cin, cout), 1, e))
        return -1;
    snprintf(p, sizeof p, "%s.1", prefix);
    if (add_conv(b, p, &s->c1, cout, cout, 1, 1, 1, 1, e))
        return -1;
    s->c1.post_relu = 1; /* the sep's ReLU (pgn/blaze.h) */
    snprintf(p, sizeof p, "%s.2", prefix);
    add_relu(b->ae, p);
    return 0;
}

int pgn_autoencoder_init(pgn_autoencoder *ae, int max_layer, uint64_t seed, nn_err *e)
{
    memset(ae, 0, sizeof *ae);
    if (max_layer < 0 || max_layer > PGN_AE_MAX_LAYER)
        return nn_errf(e, "autoencoder: max_layer %d is not supported (0, 1 or 2)", max_layer);
    ae->max_layer = max_layer;
    builder b = {.ae = ae};
    nn_rng_seed(&b.rng, seed);
    /* Sequential index of the next module in `model` */
    int idx = 0, c = 128;
    char p[32];
    int rc = add_conv(&b, "model.0.0", &ae->stem, 3, 128, 7, 2, 1, 0, e) ||
             add_bn(&b, "model.0.1", &ae->stem_bn, 128, e);
    ae->stem_bn.fuse_relu = 1; /* model.0.2, inside the batch norm */
    add_relu(ae, "model.0.2");
    idx = 1;
    if (!rc && max_layer >= 1) {
        rc = add_blaze(&b, "model.1.1", &ae->blk[0], 128, 128, 1, e);
        idx = 2;
    }
    if (!rc && max_layer >= 2) {
        rc = add_blaze(&b, "model.2", &ae->blk[1], 128, 256, 2, e);
        c = 256;
        idx = 3;
    }
    if (!rc) {
        snprintf(p, sizeof p, "model.%d", idx++);
        rc = add_sep(&b, p, &ae->mid, c, c, 1, e);
    }
    for (int j = 0; j <= max_layer && !rc; j++) {
        idx++; /* the shared Upsample */
        snprintf(p, sizeof p, "model.%d", idx++);
        rc = add_sep(&b, p, &ae->dec[j], DEC_CH[max_layer][j][0], DEC_CH[max_layer][j][1], 3, e);
    }
    if (!rc) {
        snprintf(p, sizeof p, "model.%d", idx);
        rc = add_conv(&b, p, &ae->last, 128, 3, 1, 1, 1, 1, e);
    }
    if (rc) {
        pgn_autoencoder_free(ae);
        return -1;
    }
    if (ae->nmod != PGN_AE_MODULES[max_layer]) {
        int got = ae->nmod;
        pgn_autoencoder_free(ae);
        return nn_errf(e, "autoencoder: built %d modules, expected %d", got, PGN_AE_MODULES[max_layer]);
    }
    int np = 0;
    for (int m = 0; m < ae->nmod; m++) {
        pgn_module *md = &ae->mod[m];
        if (md->conv) {
            ae->params[np++] = (nn_param){&md->conv->weight, &md->conv->dweight};
            if (md->conv->geo.has_bias)
                ae->params[np++] = (nn_param){&md->conv->bias, &md->conv->dbias};
        } else {
            ae->params[np++] = (nn_param){&md->bn->gamma, &md->bn->dgamma};
            ae->params[np++] = (nn_param){&md->bn->beta, &md->bn->dbeta};
        }
    }
    ae->nparams = np;
    if (np != PGN_AE_PARAM_TENSORS[max_layer]) {
        pgn_autoencoder_free(ae);
        return nn_errf(e, "autoencoder: %d parameter tensors, expected %d", np, PGN_AE_PARAM_TENSORS[max_layer]);
    }
    nn_eltwise_init(&ae->relu, NN_RELU, 0.0f);
    nn_upsample2x_init(&ae->upsample, 1);
    nn_pool2d_init(&ae->pool, 1, 3, 2, 1);
    ae->training = 1;
    return 0;
}

static void free_acts(nn_act *a, int n)
{
    for (int i = 0; i < n; i++)
        nn_act_free(&a[i]);
}

void pgn_autoencoder_free(pgn_autoencoder *ae)
{
    for (int m = 0; m < ae->nmod; m++) {
        if (ae->mod[m].conv)
            nn_conv2d_free(ae->mod[m].conv);
        if (ae->mod[m].bn)
            nn_batchnorm2d_free(ae->mod[m].bn);
    }
    nn_act *l0[] = {&ae->stem_c, &ae->stem_out, &ae->stem_gc, &ae->stem_gout,
                    &ae->pool_out, &ae->pool_g, &ae->mid_g, &ae->x, &ae->out, &ae->dout};
    for (size_t i = 0; i < sizeof l0 / sizeof *l0; i++)
        nn_act_free(l0[i]);
    for (int k = 0; k < 2; k++) {
        free_acts(ae->blk[k].t, PGN_B_ACTS);
        free_acts(ae->blk[k].g, PGN_B_ACTS);
        nn_act_free(&ae->blk[k].out);
    }
    free_acts(ae->blk_gout, 2);
    pgn_sep_free_acts(&ae->mid);
    for (int j = 0; j <= PGN_AE_MAX_LAYER; j++)
        pgn_sep_free_acts(&ae->dec[j]);
    free_acts(ae->up, PGN_AE_MAX_LAYER + 1);
    free_acts(ae->up_g, PGN_AE_MAX_LAYER + 1);
    free_acts(ae->dec_g, PGN_AE_MAX_LAYER + 1);
    nn_eltwise_free(&ae->relu);
    nn_upsample2x_free(&ae->upsample);
    nn_pool2d_free(&ae->pool);
    memset(ae, 0, sizeof *ae);
}

void pgn_autoencoder_reset(pgn_autoencoder *ae, nn_rng *rng)
{
    for (int m = 0; m < ae->nmod; m++) {
        pgn_module *md = &ae->mod[m];
        if (md->conv) {
            nn_conv2d *c = md->conv;
            const int fan_in = c->geo.cin / c->geo.groups * c->geo.kh * c->geo.kw;
            nn_init_conv(&c->weight, c->geo.has_bias ? &c->bias : NULL, fan_in, rng);
            c->weights_stale = 1;
        } else {
            nn_batchnorm2d *l = md->bn;
            nn_tensor_fill(&l->gamma, 1.0f);
            nn_tensor_fill(&l->beta, 0.0f);
            nn_tensor_fill(&l->running_mean, 0.0f);
            nn_tensor_fill(&l->running_var, 1.0f);
            l->num_batches_tracked = 0;
        }
    }
}

int pgn_autoencoder_reset_if_stale(pgn_autoencoder *ae, double l1, double samples, double *best, double *best_at,
                                   double l1_limit, double plateau_samples, double prob, nn_rng *rng)
{
    if (l1 < *best)
        *best = l1, *best_at = samples;
    int reset = !(l1 <= l1_limit); /* NaN resets too */
    if (!reset && samples - *best_at >= plateau_samples)
        reset = nn_rng_uniform(rng) < prob;
    if (!reset)
        return 0;
    pgn_autoencoder_reset(ae, rng);
    *best = INFINITY, *best_at = samples;
    return 1;
}

void pgn_autoencoder_set_training(pgn_autoencoder *ae, int training)
{
    ae->training = training ? 1 : 0;
    for (int m = 0; m < ae->nmod; m++)
        if (ae->mod[m].bn)
            ae->mod[m].bn->training = ae->training;
}

int pgn_autoencoder_set_bf16(pgn_autoencoder *ae, int on, nn_err *e)
{
    for (int m = 0; m < ae->nmod; m++) {
        nn_conv2d *c = ae->mod[m].conv;
        if (!c || c->geo.groups != 1 || c->bf16 == (on != 0))
            continue;
        c->bf16 = on != 0;
        if (nn_conv2d_drop_prims(c, e))
            return -1;
    }
    return 0;
}

int pgn_autoencoder_runs_bf16(const pgn_autoencoder *ae)
{
    for (int m = 0; m < ae->nmod; m++)
        if (ae->mod[m].conv && nn_conv2d_runs_bf16(ae->mod[m].conv))
            return 1;
    return 0;
}

int pgn_autoencoder_check_size(const pgn_autoencoder *ae, int h, int w, nn_err *e)
{
    const int q = 2 << ae->max_layer;
    if (h <= 0 || w <= 0 || h % q || w % q)
        return nn_errf(e,
                       "autoencoder (max_layer %d): input %dx%d is not supported: height and width must be "
                       "positive multiples of %d",
                       ae->max_layer, h, w, q);
    return 0;
}

/* ------------------------------------------------------------------ forward */

#define TRY(call, what)                                                                                                \
    do {                                                                                                               \
        if (call)                                                                                                      \
            return nn_err_prefix(e, "autoencoder %s", what);                                                           \
    } while (0)

static const char *conv_name(const pgn_autoencoder *ae, const nn_conv2d *c)
{
    for (int m = 0; m < ae->nmod; m++)
        if (ae->mod[m].conv == c)
            return ae->mod[m].prefix;
    return "conv";
}

/* The shared blocks (pgn/blaze.c), with this net's relu and its error prefix. */
static int sep_forward(nn_ctx *ctx, pgn_autoencoder *ae, pgn_ae_sep *s, const nn_act *x, nn_err *e)
{
    return pgn_sep_forward(ctx, s, x, conv_name(ae, &s->c0), e) ? nn_err_prefix(e, "autoencoder") : 0;
}

static int sep_backward(nn_ctx *ctx, pgn_autoencoder *ae, pgn_ae_sep *s, const nn_act *x, const nn_act *gout, nn_act *gx,
                        nn_err *e)
{
    return pgn_sep_backward(ctx, s, &ae->relu, x, gout, gx, conv_name(ae, &s->c0), e) ? nn_err_prefix(e, "autoencoder") : 0;
}

static int blaze_forward(nn_ctx *ctx, pgn_autoencoder *ae, pgn_ae_blaze *k, const nn_act *x, nn_err *e)
{
    return pgn_blaze_forward(ctx, k, &ae->relu, x, conv_name(ae, &k->cdw1), e) ? nn_err_prefix(e, "autoencoder") : 0;
}

static int blaze_backward(nn_ctx *ctx, pgn_autoencoder *ae, pgn_ae_blaze *k, const nn_act *x, const nn_act *gout,
                          nn_act *gx, nn_err *e)
{
    return pgn_blaze_backward(ctx, k, &ae->relu, x, gout, gx, conv_name(ae, &k->cdw1), e) ? nn_err_prefix(e, "autoencoder") : 0;
}

/* The encoder's output (mid's input). */
static const nn_act *enc_out(const pgn_autoencoder *ae)
{
    return ae->max_layer == 0 ? &ae->stem_out : &ae->blk[ae->max_layer - 1].out;
}

/* Forward on ae->x (already set). */
static int net_forward(nn_ctx *ctx, pgn_autoencoder *ae, nn_err *e)
{
    const nn_act *x = &ae->x;
    ae->forwarded = 0;
    if (x->c != PGN_AE_IN_CHANNELS)
        return nn_errf(e, "autoencoder: input has %d channels, expected %d", x->c, PGN_AE_IN_CHANNELS);
    if (pgn_autoencoder_check_size(ae, x->h, x->w, e))
        return -1;
    const int q = 2 << ae->max_layer;
    if (ae->training && (long)x->n * (x->h / q) * (x->w / q) < 2)
        return nn_errf(e,
                       "autoencoder: a train-mode forward of [%d, 3, %d, %d] is not possible: the deepest batch "
                       "norm would see one value per channel",
                       x->n, x->h, x->w);
    TRY(nn_conv2d_forward(ctx, &ae->stem, x, &ae->stem_c, e), "model.0");
    TRY(nn_batchnorm2d_forward(ctx, &ae->stem_bn, &ae->stem_c, &ae->stem_out, e), "model.0"); /* + ReLU */
    if (ae->max_layer >= 1) {
        TRY(nn_pool2d_forward(ctx, &ae->pool, &ae->stem_out, &ae->pool_out, e), "model.1.0");
        if (blaze_forward(ctx, ae, &ae->blk[0], &ae->pool_out, e))
            return -1;
    }
    if (ae->max_layer >= 2 && blaze_forward(ctx, ae, &ae->blk[1], &ae->blk[0].out, e))
        return -1;
    if (sep_forward(ctx, ae, &ae->mid, enc_out(ae), e))
        return -1;
    const nn_act *d = &ae->mid.out;
    for (int j = 0; j <= ae->max_layer; j++) {
        /* up, then sep: the upsampling inside the sep's first conv (depthwise, or 256 -> 128 with two
         * inputs per output) where the fused kernel applies */
        pgn_ae_sep *sp = &ae->dec[j];
        int r = nn_upsample_dwconv_forward(ctx, &sp->c0, d, &sp->a0, e);
        TRY(r < 0, conv_name(ae, &sp->c0));
        ae->dec_fused[j] = !r;
        if (!r)
            TRY(nn_conv2d_forward(ctx, &sp->c1, &sp->a0, &sp->out, e), conv_name(ae, &sp->c1));
        else {
            TRY(nn_upsample2x_forward(ctx, &ae->upsample, d, &ae->up[j], e), "upsample");
            if (sep_forward(ctx, ae, sp, &ae->up[j], e))
                return -1;
        }
        d = &sp->out;
    }
    TRY(nn_conv2d_forward(ctx, &ae->last, d, &ae->out, e), conv_name(ae, &ae->last));
    ae->forwarded = ae->training;
    return 0;
}

int pgn_autoencoder_forward(nn_ctx *ctx, pgn_autoencoder *ae, const float *x, int n, int h, int w, float *o,
                            nn_err *e)
{
    ae->forwarded = 0;
    if (n < 1)
        return nn_errf(e, "autoencoder: batch size %d", n);
    if (pgn_autoencoder_check_size(ae, h, w, e) || nn_act_from_nchw(ctx, &ae->x, x, n, PGN_AE_IN_CHANNELS, h, w, e) ||
        net_forward(ctx, ae, e))
        return -1;
    return o ? nn_act_to_nchw(ctx, &ae->out, o, e) : 0;
}

int pgn_autoencoder_forward_act(nn_ctx *ctx, pgn_autoencoder *ae, const nn_act *x, nn_err *e)
{
    ae->forwarded = 0;
    if (x->c != PGN_AE_IN_CHANNELS || x->n < 1)
        return nn_errf(e, "autoencoder: input [%d, %d, %d, %d] is not an RGB batch", x->n, x->c, x->h, x->w);
    if (pgn_autoencoder_check_size(ae, x->h, x->w, e))
        return -1;
    /* copy into ae->x (the backward reads the stem's input) */
    dnnl_memory_desc_t md = x->md;
    float *buf = malloc(nn_act_count(x) * sizeof *buf);
    if (!buf)
        return nn_errf(e, "autoencoder: out of memory");
    int rc = nn_act_to_nchw(ctx, x, buf, e) || nn_act_from_nchw(ctx, &ae->x, buf, x->n, x->c, x->h, x->w, e) ||
             nn_act_convert(ctx, &ae->x, &md, e);
    free(buf);
    if (rc)
        return nn_err_prefix(e, "autoencoder input");
    return net_forward(ctx, ae, e);
}

/* ------------------------------------------------------------------ backward */

int pgn_autoencoder_backward_act(nn_ctx *ctx, pgn_autoencoder *ae, const nn_act *dout, nn_err *e)
{
    if (!ae->forwarded)
        return nn_errf(e, "autoencoder: backward without a train-mode forward before it");
    if (dout->n != ae->out.n || dout->c != ae->out.c || dout->h != ae->out.h || dout->w != ae->out.w)
        return nn_errf(e, "autoencoder: output gradient [%d, %d, %d, %d] does not match the output [%d, %d, %d, %d]",
                       dout->n, dout->c, dout->h, dout->w, ae->out.n, ae->out.c, ae->out.h, ae->out.w);
    nn_act *resets[] = {&ae->stem_gc, &ae->stem_gout, &ae->pool_g, &ae->mid_g,
                        &ae->blk_gout[0], &ae->blk_gout[1]};
    for (size_t i = 0; i < sizeof resets / sizeof *resets; i++)
        nn_act_grad_reset(resets[i]);
    for (int j = 0; j <= PGN_AE_MAX_LAYER; j++) {
        nn_act_grad_reset(&ae->up_g[j]);
        nn_act_grad_reset(&ae->dec_g[j]);
    }
    const int L = ae->max_layer;
    /* Each sep's ReLU is taken back inside its consumer's backward where a fused kernel applies
     * (the last conv, the upsampling): the sep then starts from its gpre (pre_ready). */
    pgn_ae_sep *top = &ae->dec[L];
    nn_act_grad_reset(&top->gpre);
    int two_step = nn_conv2d_backward_relu_input(ctx, &ae->last, &top->out, dout, &top->gpre, 1, e);
    TRY(two_step < 0, conv_name(ae, &ae->last));
    if (two_step)
        TRY(nn_conv2d_backward(ctx, &ae->last, &top->out, dout, &ae->dec_g[L], 1, e), conv_name(ae, &ae->last));
    int pre_ready = !two_step;
    for (int j = L; j >= 0; j--) {
        pgn_ae_sep *sp = &ae->dec[j], *below = j > 0 ? &ae->dec[j - 1] : &ae->mid;
        if (ae->dec_fused[j]) { /* sep's 1x1, then its first conv, the upsampling and below's ReLU */
            if (!pre_ready) {
                nn_act_grad_reset(&sp->gpre);
                TRY(nn_eltwise_backward(ctx, &ae->relu, &sp->out, &ae->dec_g[j], &sp->gpre, e), conv_name(ae, &sp->c1));
            }
            nn_act_grad_reset(&sp->g0);
            TRY(nn_conv2d_backward(ctx, &sp->c1, &sp->a0, &sp->gpre, &sp->g0, 1, e), conv_name(ae, &sp->c1));
            nn_act_grad_reset(&below->gpre);
            const int r = nn_upsample_dwconv_backward(ctx, &sp->c0, &below->out, &sp->g0, &below->gpre, 1, 1, e);
            if (r > 0)
                nn_errf(e, "internal: the fused upsampling's backward cannot run after its forward did");
            TRY(r, conv_name(ae, &sp->c0));
            pre_ready = 1;
            continue;
        }
        if (pre_ready) {
            if (pgn_sep_backward_pre(ctx, sp, &ae->up[j], &sp->gpre, &ae->up_g[j], conv_name(ae, &sp->c0), e))
                return nn_err_prefix(e, "autoencoder");
        } else if (sep_backward(ctx, ae, sp, &ae->up[j], &ae->dec_g[j], &ae->up_g[j], e))
            return -1;
        nn_act_grad_reset(&below->gpre);
        int r = nn_upsample2x_backward_relu(ctx, &ae->upsample, &ae->up_g[j], &below->out, &below->gpre, e);
        TRY(r < 0, "upsample");
        if (r)
            TRY(nn_upsample2x_backward(ctx, &ae->upsample, &ae->up_g[j], j > 0 ? &ae->dec_g[j - 1] : &ae->mid_g, e),
                "upsample");
        pre_ready = !r;
    }
    nn_act *genc = L == 0 ? &ae->stem_gout : &ae->blk_gout[L - 1];
    if (pre_ready) {
        if (pgn_sep_backward_pre(ctx, &ae->mid, enc_out(ae), &ae->mid.gpre, genc, conv_name(ae, &ae->mid.c0), e))
            return nn_err_prefix(e, "autoencoder");
    } else if (sep_backward(ctx, ae, &ae->mid, enc_out(ae), &ae->mid_g, genc, e))
        return -1;
    if (L >= 2 && blaze_backward(ctx, ae, &ae->blk[1], &ae->blk[0].out, &ae->blk_gout[1], &ae->blk_gout[0], e))
        return -1;
    if (L >= 1) {
        if (blaze_backward(ctx, ae, &ae->blk[0], &ae->pool_out, &ae->blk_gout[0], &ae->pool_g, e))
            return -1;
        TRY(nn_pool2d_backward(ctx, &ae->pool, &ae->stem_out, &ae->pool_g, &ae->stem_gout, e), "model.1.0");
    }
    TRY(nn_batchnorm2d_backward(ctx, &ae->stem_bn, &ae->stem_c, &ae->stem_gout, &ae->stem_gc, e), "model.0");
    TRY(nn_conv2d_backward(ctx, &ae->stem, &ae->x, &ae->stem_gc, NULL, 1, e), "model.0");
    return 0;
}

#undef TRY

int pgn_autoencoder_backward(nn_ctx *ctx, pgn_autoencoder *ae, const float *dout, nn_err *e)
{
    if (!ae->forwarded)
        return nn_errf(e, "autoencoder: backward without a train-mode forward before it");
    if (nn_act_from_nchw(ctx, &ae->dout, dout, ae->out.n, ae->out.c, ae->out.h, ae->out.w, e))
        return -1;
    return pgn_autoencoder_backward_act(ctx, ae, &ae->dout, e);
}

/* ------------------------------------------------------------------ parameters */

const nn_param *pgn_autoencoder_params(const pgn_autoencoder *ae, int *count)
{
    if (count)
        *count = ae->nparams;
    return ae->params;
}

void pgn_autoencoder_zero_grad(pgn_autoencoder *ae) { nn_params_zero_grad(ae->params, ae->nparams); }

size_t pgn_autoencoder_param_count(const pgn_autoencoder *ae)
{
    size_t n = 0;
    for (int i = 0; i < ae->nparams; i++)
        n += ae->params[i].value ? ae->params[i].value->numel : 0;
    return n;
}

nn_act *pgn_autoencoder_relu_input(pgn_autoencoder *ae, int i, const char **name)
{
    if (i < 0 || i >= ae->nrelu)
        return NULL;
    if (name)
        *name = ae->relu_name[i];
    /* registration order: stem, blocks (r1, r2 each), mid, decoder seps */
    if (i == 0)
        return &ae->stem_out;
    i--;
    const int nb = ae->max_layer; /* blocks */
    if (i < 2 * nb)
        return &ae->blk[i / 2].t[i % 2 ? PGN_B_PRE2 : PGN_B_ACT1];
    i -= 2 * nb;
    /* the seps' ReLUs run inside their 1x1 convolutions; the backward reads the output's sign */
    if (i == 0)
        return &ae->mid.out;
    return &ae->dec[i - 1].out;
}

int pgn_autoencoder_relu_mask_fixed(const pgn_autoencoder *ae, int i)
{
    /* the stem's ReLU and each block's first run inside their batch norms */
    return i == 0 || (i >= 1 && i <= 2 * ae->max_layer && (i - 1) % 2 == 0);
}

/* ------------------------------------------------------------------ state dict */

int pgn_autoencoder_check_state(const pgn_autoencoder *ae, const nn_weights *w, char *report, size_t len)
{
    return pgn_state_check(ae->mod, ae->nmod, w, report, len);
}

int pgn_autoencoder_load(pgn_autoencoder *ae, const nn_weights *w, nn_err *e)
{
    char what[48];
    snprintf(what, sizeof what, "max_layer %d autoencoder", ae->max_layer);
    return pgn_state_load(ae->mod, ae->nmod, w, what, NULL, e);
}

int pgn_autoencoder_load_file(pgn_autoencoder *ae, const char *path, nn_err *e)
{
    nn_weights w;
    if (nn_weights_read(&w, path, e))
        return nn_err_prefix(e, "autoencoder state dict");
    int rc = pgn_autoencoder_load(ae, &w, e);
    nn_weights_free(&w);
    return rc;
}
