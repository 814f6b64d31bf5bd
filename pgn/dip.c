#include "pgn/dip.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const int DOWN[PGN_DIP_LEVELS] = {8, 16, 32, 64, 128};
static const int UP[PGN_DIP_LEVELS] = {8, 16, 32, 64, 128};
static const int SKIP[PGN_DIP_LEVELS] = {0, 0, 0, 4, 4};
#define SLOPE 0.2f
#define BN_EPS 1e-5f
#define BN_MOMENTUM 0.1f

/* ------------------------------------------------------------------ construction */

typedef struct builder {
    pgn_dip *d;
    int nmod;
    nn_rng rng;
} builder;

/* "a.b" ("b" when a is empty). The longest key prefix is 25 characters, well within the buffers. */
static void join(char *dst, size_t len, const char *a, const char *b)
{
    if ((size_t)snprintf(dst, len, "%s%s%s", a, *a ? "." : "", b) >= len)
        dst[0] = 0; /* cannot happen with the fixed layout; an empty prefix would fail every key */
}

static int add_conv(builder *b, const char *prefix, const char *sub, nn_conv2d *c, int cin, int cout, int k,
                    int stride, nn_err *e)
{
    pgn_dip_module *m = &b->d->mod[b->nmod++];
    join(m->prefix, sizeof m->prefix, prefix, sub);
    m->conv = c;
    /* DIP's conv(): ReflectionPad2d((k-1)/2) then Conv2d(padding=0); for 1x1 the pad is a no-op. */
    int p = (k - 1) / 2;
    if (nn_conv2d_init(c, cin, cout, k, k, stride, stride, p, p, 1, p ? NN_PAD_REFLECT : NN_PAD_ZERO, 1, &b->rng, e))
        return nn_err_prefix(e, "dip %s", m->prefix);
    return 0;
}

static int add_bn(builder *b, const char *prefix, const char *sub, nn_batchnorm2d *l, int c, nn_err *e)
{
    pgn_dip_module *m = &b->d->mod[b->nmod++];
    join(m->prefix, sizeof m->prefix, prefix, sub);
    m->bn = l;
    if (nn_batchnorm2d_init(l, c, BN_EPS, BN_MOMENTUM, e))
        return nn_err_prefix(e, "dip %s", m->prefix);
    l->training = 1;
    return 0;
}

/* Level i inside container prefix `cp` (the official Sequential nesting, state-dict order:
 * skip branch, deeper branch, the next level, then this container's own layers). */
static int build_level(builder *b, int i, const char *cp, nn_err *e)
{
    pgn_dip_level *L = &b->d->lv[i];
    L->cin = i ? DOWN[i - 1] : 3;
    L->skip = SKIP[i];
    L->down = DOWN[i];
    L->up = UP[i];
    L->k = i + 1 < PGN_DIP_LEVELS ? UP[i + 1] : DOWN[i];
    char sp[32], dp[32], next[32];
    if (L->skip) {
        join(sp, sizeof sp, cp, "1.0");
        join(dp, sizeof dp, cp, "1.1");
        if (add_conv(b, sp, "1.1", &L->s_conv, L->cin, L->skip, 1, 1, e) || add_bn(b, sp, "2", &L->s_bn, L->skip, e))
            return -1;
    } else
        join(dp, sizeof dp, cp, "1");
    if (add_conv(b, dp, "1.1", &L->d_conv1, L->cin, L->down, 3, 2, e) || add_bn(b, dp, "2", &L->d_bn1, L->down, e) ||
        add_conv(b, dp, "4.1", &L->d_conv2, L->down, L->down, 3, 1, e) || add_bn(b, dp, "5", &L->d_bn2, L->down, e))
        return -1;
    if (i + 1 < PGN_DIP_LEVELS) {
        join(next, sizeof next, dp, "7");
        if (build_level(b, i + 1, next, e))
            return -1;
    }
    int cc = L->skip + L->k;
    if (add_bn(b, cp, "2", &L->c_bn, cc, e) || add_conv(b, cp, "3.1", &L->c_conv3, cc, L->up, 3, 1, e) ||
        add_bn(b, cp, "4", &L->c_bn3, L->up, e) || add_conv(b, cp, "6.1", &L->c_conv1, L->up, L->up, 1, 1, e) ||
        add_bn(b, cp, "7", &L->c_bn1, L->up, e))
        return -1;
    return 0;
}

int pgn_dip_init(pgn_dip *d, uint64_t seed, nn_err *e)
{
    memset(d, 0, sizeof *d);
    builder b = {.d = d};
    nn_rng_seed(&b.rng, seed);
    if (build_level(&b, 0, "", e) || add_conv(&b, "", "9.1", &d->final, UP[0], 3, 1, 1, e)) {
        pgn_dip_free(d);
        return -1;
    }
    if (b.nmod != PGN_DIP_CONVS + PGN_DIP_BNS) {
        pgn_dip_free(d);
        return nn_errf(e, "dip: built %d modules, expected %d", b.nmod, PGN_DIP_CONVS + PGN_DIP_BNS);
    }
    int np = 0;
    for (int m = 0; m < b.nmod; m++) {
        pgn_dip_module *md = &d->mod[m];
        if (md->conv) {
            d->params[np++] = (nn_param){&md->conv->weight, &md->conv->dweight};
            d->params[np++] = (nn_param){&md->conv->bias, &md->conv->dbias};
        } else {
            d->params[np++] = (nn_param){&md->bn->gamma, &md->bn->dgamma};
            d->params[np++] = (nn_param){&md->bn->beta, &md->bn->dbeta};
        }
    }
    nn_eltwise_init(&d->lrelu, NN_LEAKY_RELU, SLOPE);
    nn_upsample2x_init(&d->up, 1);
    return 0;
}

void pgn_dip_free(pgn_dip *d)
{
    for (int m = 0; m < PGN_DIP_CONVS + PGN_DIP_BNS; m++) {
        if (d->mod[m].conv)
            nn_conv2d_free(d->mod[m].conv);
        if (d->mod[m].bn)
            nn_batchnorm2d_free(d->mod[m].bn);
    }
    for (int i = 0; i < PGN_DIP_LEVELS; i++) {
        pgn_dip_level *L = &d->lv[i];
        for (int k = 0; k < PGN_DIP_ACTS; k++)
            nn_act_free(&L->act[k]);
        nn_act_free(&L->g_out);
        nn_act_free(&L->g_skip);
        nn_act_free(&L->g_deep);
    }
    nn_act_free(&d->gt[0]);
    nn_act_free(&d->gt[1]);
    nn_eltwise_free(&d->lrelu);
    nn_upsample2x_free(&d->up);
    nn_act_free(&d->x);
    nn_act_free(&d->y);
    nn_act_free(&d->dy);
    memset(d, 0, sizeof *d);
}

void pgn_dip_noise(float *dst, size_t count, uint64_t seed)
{
    nn_rng r;
    nn_rng_seed(&r, seed);
    for (size_t i = 0; i < count; i++)
        dst[i] = nn_rng_uniform(&r) * 0.1f; /* < 0.1f: 24-bit uniform times 0.1f rounds below it */
}

int pgn_dip_check_size(int h, int w, nn_err *e)
{
    if (h <= 0 || w <= 0 || h % 32 || w % 32 || h < 64 || w < 64)
        return nn_errf(e,
                       "dip: input %dx%d is not supported: height and width must be multiples of 32 (five "
                       "stride-2 levels) and at least 64 (at 32 the deepest level is 1x1, which reflection "
                       "padding and train-mode batch norm cannot handle)",
                       h, w);
    return 0;
}

int pgn_dip_set_input(nn_ctx *ctx, pgn_dip *d, const float *x, int n, int h, int w, nn_err *e)
{
    if (n < 1)
        return nn_errf(e, "dip: batch size %d", n);
    if (pgn_dip_check_size(h, w, e) || nn_act_from_nchw(ctx, &d->x, x, n, 3, h, w, e))
        return -1;
    d->forwarded = 0;
    return 0;
}

/* ------------------------------------------------------------------ forward / backward */

#define TRY(call)                                                                                                      \
    do {                                                                                                               \
        if (call)                                                                                                      \
            return nn_err_prefix(e, "dip level %d", i);                                                                \
    } while (0)

/* conv -> BN -> LeakyReLU, the BN writing into `out` and the LeakyReLU running there in place. */
static int conv_bn_lrelu(nn_ctx *ctx, pgn_dip *d, nn_conv2d *c, nn_batchnorm2d *bn, const nn_act *x, nn_act *conv_out,
                         nn_act *out, nn_err *e)
{
    return nn_conv2d_forward(ctx, c, x, conv_out, e) || nn_batchnorm2d_forward(ctx, bn, conv_out, out, e) ||
                   nn_eltwise_forward(ctx, &d->lrelu, out, out, e)
               ? -1
               : 0;
}

static int level_forward(nn_ctx *ctx, pgn_dip *d, int i, const nn_act *x, nn_err *e)
{
    pgn_dip_level *L = &d->lv[i];
    nn_act *a = L->act;
    if (L->skip)
        TRY(conv_bn_lrelu(ctx, d, &L->s_conv, &L->s_bn, x, &a[PGN_DIP_S_CONV], &a[PGN_DIP_S_OUT], e));
    TRY(conv_bn_lrelu(ctx, d, &L->d_conv1, &L->d_bn1, x, &a[PGN_DIP_D_CONV1], &a[PGN_DIP_D_ACT1], e));
    TRY(conv_bn_lrelu(ctx, d, &L->d_conv2, &L->d_bn2, &a[PGN_DIP_D_ACT1], &a[PGN_DIP_D_CONV2], &a[PGN_DIP_D_ACT2], e));
    const nn_act *deep = &a[PGN_DIP_D_ACT2];
    if (i + 1 < PGN_DIP_LEVELS) {
        if (level_forward(ctx, d, i + 1, deep, e))
            return -1;
        deep = &d->lv[i + 1].act[PGN_DIP_OUT];
    }
    TRY(nn_upsample2x_forward(ctx, &d->up, deep, &a[PGN_DIP_D_UP], e));
    const nn_act *cat = &a[PGN_DIP_D_UP];
    if (L->skip) {
        /* Concat(skip, deeper): the skip branch's channels first. Sizes always agree here (H and
         * W are multiples of 32), so the official Concat's centre crop never applies. */
        TRY(nn_concat_forward(ctx, &a[PGN_DIP_S_OUT], &a[PGN_DIP_D_UP], &a[PGN_DIP_CAT], e));
        cat = &a[PGN_DIP_CAT];
    }
    TRY(nn_batchnorm2d_forward(ctx, &L->c_bn, cat, &a[PGN_DIP_C_BN], e));
    TRY(conv_bn_lrelu(ctx, d, &L->c_conv3, &L->c_bn3, &a[PGN_DIP_C_BN], &a[PGN_DIP_C_CONV3], &a[PGN_DIP_C_ACT3], e));
    TRY(conv_bn_lrelu(ctx, d, &L->c_conv1, &L->c_bn1, &a[PGN_DIP_C_ACT3], &a[PGN_DIP_C_CONV1], &a[PGN_DIP_OUT], e));
    return 0;
}

static nn_act *other_transient(pgn_dip *d, const nn_act *t) { return t == &d->gt[0] ? &d->gt[1] : &d->gt[0]; }

/* The gradient from gy back through LeakyReLU (read from its output y), BN and the conv, the
 * first two into the transient buffers: the LeakyReLU's into one other than gy's, the BN's into
 * the other one (gy's own when gy is transient: read by then). The conv's input gradient goes
 * into gx by the engine's store-or-add rule, or, with to_transient, into a transient buffer that
 * is returned; gx NULL and not to_transient: none (the level-0 input is fixed noise). NULL on
 * error. */
static nn_act *lrelu_bn_conv_backward(nn_ctx *ctx, pgn_dip *d, const nn_act *y, nn_batchnorm2d *bn,
                                      const nn_act *conv_out, nn_conv2d *c, const nn_act *x, const nn_act *gy,
                                      nn_act *gx, int to_transient, nn_err *e)
{
    nn_act *t0 = other_transient(d, gy), *t1 = other_transient(d, t0); /* t1 may be gy: read by now */
    nn_act_grad_reset(t0);
    if (nn_eltwise_backward(ctx, &d->lrelu, y, gy, t0, e))
        return NULL;
    nn_act_grad_reset(t1);
    if (nn_batchnorm2d_backward(ctx, bn, conv_out, t0, t1, e))
        return NULL;
    if (to_transient) {
        gx = t0;
        nn_act_grad_reset(gx);
    }
    return nn_conv2d_backward(ctx, c, x, t1, gx, 1, e) ? NULL : to_transient ? gx : t1;
}

#define TRYP(call)                                                                                                     \
    do {                                                                                                               \
        if (!(call))                                                                                                   \
            return nn_err_prefix(e, "dip level %d", i);                                                                \
    } while (0)

/* L->g_out holds dL/d(level output); gx (NULL for level 0: the input is fixed noise) receives
 * dL/dx, accumulated from the deeper and the skip branch. Every other gradient is transient
 * (d->gt, each layer reading one and writing the other) and dead when the deeper level's backward
 * starts, so the whole backward needs two of them besides the three per level it keeps. */
static int level_backward(nn_ctx *ctx, pgn_dip *d, int i, const nn_act *x, nn_act *gx, nn_err *e)
{
    pgn_dip_level *L = &d->lv[i];
    nn_act *a = L->act, *g;
    TRYP(g = lrelu_bn_conv_backward(ctx, d, &a[PGN_DIP_OUT], &L->c_bn1, &a[PGN_DIP_C_CONV1], &L->c_conv1,
                                    &a[PGN_DIP_C_ACT3], &L->g_out, NULL, 1, e));
    TRYP(g = lrelu_bn_conv_backward(ctx, d, &a[PGN_DIP_C_ACT3], &L->c_bn3, &a[PGN_DIP_C_CONV3], &L->c_conv3,
                                    &a[PGN_DIP_C_BN], g, NULL, 1, e));
    const int cat_k = L->skip ? PGN_DIP_CAT : PGN_DIP_D_UP;
    nn_act *gcat = other_transient(d, g);
    nn_act_grad_reset(gcat);
    TRY(nn_batchnorm2d_backward(ctx, &L->c_bn, &a[cat_k], g, gcat, e));
    nn_act *gup = gcat;
    if (L->skip) {
        gup = other_transient(d, gcat);
        nn_act_grad_reset(gup);
        nn_act_grad_reset(&L->g_skip);
        TRY(nn_concat_backward(ctx, gcat, L->skip, &L->g_skip, gup, e));
    }
    nn_act_grad_reset(&L->g_deep);
    if (i + 1 < PGN_DIP_LEVELS) {
        nn_act *gdeep = &d->lv[i + 1].g_out;
        nn_act_grad_reset(gdeep);
        TRY(nn_upsample2x_backward(ctx, &d->up, gup, gdeep, e));
        if (level_backward(ctx, d, i + 1, &a[PGN_DIP_D_ACT2], &L->g_deep, e))
            return -1;
    } else
        TRY(nn_upsample2x_backward(ctx, &d->up, gup, &L->g_deep, e));
    TRYP(g = lrelu_bn_conv_backward(ctx, d, &a[PGN_DIP_D_ACT2], &L->d_bn2, &a[PGN_DIP_D_CONV2], &L->d_conv2,
                                    &a[PGN_DIP_D_ACT1], &L->g_deep, NULL, 1, e));
    TRYP(lrelu_bn_conv_backward(ctx, d, &a[PGN_DIP_D_ACT1], &L->d_bn1, &a[PGN_DIP_D_CONV1], &L->d_conv1, x, g, gx, 0,
                                e));
    if (L->skip)
        TRYP(lrelu_bn_conv_backward(ctx, d, &a[PGN_DIP_S_OUT], &L->s_bn, &a[PGN_DIP_S_CONV], &L->s_conv, x,
                                    &L->g_skip, gx, 0, e));
    return 0;
}

#undef TRYP
#undef TRY

int pgn_dip_forward(nn_ctx *ctx, pgn_dip *d, float *y, nn_err *e)
{
    if (!d->x.data)
        return nn_errf(e, "dip: forward before pgn_dip_set_input");
    if (level_forward(ctx, d, 0, &d->x, e) ||
        nn_conv2d_forward(ctx, &d->final, &d->lv[0].act[PGN_DIP_OUT], &d->y, e))
        return -1;
    d->forwarded = 1;
    return y ? nn_act_to_nchw(ctx, &d->y, y, e) : 0;
}

int pgn_dip_backward_act(nn_ctx *ctx, pgn_dip *d, const nn_act *dy, nn_err *e)
{
    if (!d->forwarded)
        return nn_errf(e, "dip: backward without a forward on the current input");
    if (dy->n != d->y.n || dy->c != d->y.c || dy->h != d->y.h || dy->w != d->y.w)
        return nn_errf(e, "dip: output gradient [%d, %d, %d, %d] does not match the output [%d, %d, %d, %d]", dy->n,
                       dy->c, dy->h, dy->w, d->y.n, d->y.c, d->y.h, d->y.w);
    nn_act *g0 = &d->lv[0].g_out;
    nn_act_grad_reset(g0);
    if (nn_conv2d_backward(ctx, &d->final, &d->lv[0].act[PGN_DIP_OUT], dy, g0, 1, e))
        return nn_err_prefix(e, "dip final conv");
    return level_backward(ctx, d, 0, &d->x, NULL, e);
}

int pgn_dip_backward(nn_ctx *ctx, pgn_dip *d, const float *dy, nn_err *e)
{
    if (!d->forwarded)
        return nn_errf(e, "dip: backward without a forward on the current input");
    if (nn_act_from_nchw(ctx, &d->dy, dy, d->y.n, d->y.c, d->y.h, d->y.w, e))
        return -1;
    return pgn_dip_backward_act(ctx, d, &d->dy, e);
}

/* ------------------------------------------------------------------ parameters */

const nn_param *pgn_dip_params(const pgn_dip *d, int *count)
{
    if (count)
        *count = PGN_DIP_PARAM_TENSORS;
    return d->params;
}

void pgn_dip_zero_grad(pgn_dip *d) { nn_params_zero_grad(d->params, PGN_DIP_PARAM_TENSORS); }

size_t pgn_dip_param_count(const pgn_dip *d)
{
    size_t n = 0;
    for (int i = 0; i < PGN_DIP_PARAM_TENSORS; i++)
        n += d->params[i].value ? d->params[i].value->numel : 0;
    return n;
}

/* ------------------------------------------------------------------ state dict */

int pgn_dip_check_state(const pgn_dip *d, const nn_weights *w, char *report, size_t len)
{
    return pgn_state_check(d->mod, PGN_DIP_CONVS + PGN_DIP_BNS, w, report, len);
}

int pgn_dip_load(pgn_dip *d, const nn_weights *w, nn_err *e)
{
    return pgn_state_load(d->mod, PGN_DIP_CONVS + PGN_DIP_BNS, w, "DIP skip-net", NULL, e);
}

int pgn_dip_load_file(pgn_dip *d, const char *path, nn_err *e)
{
    nn_weights w;
    if (nn_weights_read(&w, path, e))
        return nn_err_prefix(e, "dip state dict");
    int rc = pgn_dip_load(d, &w, e);
    nn_weights_free(&w);
    return rc;
}

void pgn_dip_copy_state(pgn_dip *dst, const pgn_dip *src)
{
    for (int m = 0; m < PGN_DIP_CONVS + PGN_DIP_BNS; m++) {
        const pgn_dip_module *s = &src->mod[m];
        pgn_dip_module *t = &dst->mod[m];
        if (s->conv) {
            nn_tensor_copy(&t->conv->weight, &s->conv->weight);
            nn_tensor_copy(&t->conv->bias, &s->conv->bias);
            t->conv->weights_stale = 1;
        } else {
            nn_tensor_copy(&t->bn->gamma, &s->bn->gamma);
            nn_tensor_copy(&t->bn->beta, &s->bn->beta);
            nn_tensor_copy(&t->bn->running_mean, &s->bn->running_mean);
            nn_tensor_copy(&t->bn->running_var, &s->bn->running_var);
            t->bn->num_batches_tracked = s->bn->num_batches_tracked;
        }
    }
}
