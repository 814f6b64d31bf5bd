#include "pgn/blaze.h"

#include "nn/err.h"

#define TRY(call)                                                                                                      \
    do {                                                                                                               \
        if (call)                                                                                                      \
            return nn_err_prefix(e, "%s", name);                                                                       \
    } while (0)

int pgn_sep_forward(nn_ctx *ctx, pgn_sep *s, const nn_act *x, const char *name, nn_err *e)
{
    if (!s->c1.post_relu)
        return nn_errf(e, "%s: internal: the sep's 1x1 convolution has no ReLU post-op", name);
    TRY(nn_conv2d_forward(ctx, &s->c0, x, &s->a0, e));
    TRY(nn_conv2d_forward(ctx, &s->c1, &s->a0, &s->out, e)); /* relu(c1(a0)) in one pass */
    return 0;
}

int pgn_sep_forward_into(nn_ctx *ctx, pgn_sep *s, const nn_act *x, nn_act *tmp, nn_act *y,
                         const char *name, nn_err *e)
{
    /* y may be x: the first conv has read all of x (into tmp) before the second writes y */
    if (tmp == x || y == tmp)
        return nn_errf(e, "%s: internal: buffers of a lean sep forward overlap", name);
    if (!s->c1.post_relu)
        return nn_errf(e, "%s: internal: the sep's 1x1 convolution has no ReLU post-op", name);
    TRY(nn_conv2d_forward(ctx, &s->c0, x, tmp, e));
    TRY(nn_conv2d_forward(ctx, &s->c1, tmp, y, e));
    return 0;
}

int pgn_sep_backward_pre(nn_ctx *ctx, pgn_sep *s, const nn_act *x, const nn_act *gpre, nn_act *gx, const char *name,
                         nn_err *e)
{
    nn_act_grad_reset(&s->g0);
    TRY(nn_conv2d_backward(ctx, &s->c1, &s->a0, gpre, &s->g0, 1, e));
    TRY(nn_conv2d_backward(ctx, &s->c0, x, &s->g0, gx, 1, e));
    return 0;
}

int pgn_sep_backward(nn_ctx *ctx, pgn_sep *s, nn_eltwise *relu, const nn_act *x, const nn_act *gout, nn_act *gx,
                     const char *name, nn_err *e)
{
    nn_act_grad_reset(&s->gpre);
    TRY(nn_eltwise_backward(ctx, relu, &s->out, gout, &s->gpre, e)); /* relu'(pre) = out > 0 */
    return pgn_sep_backward_pre(ctx, s, x, &s->gpre, gx, name, e);
}

int pgn_blaze_forward(nn_ctx *ctx, pgn_blaze *k, nn_eltwise *relu, const nn_act *x, const char *name, nn_err *e)
{
    nn_act *t = k->t;
    if (k->folded) {
        /* BNs folded into the pointwise convs, the first ReLU fused into cpw1. */
        TRY(nn_conv2d_forward(ctx, &k->cdw1, x, &t[PGN_B_DW1], e));
        TRY(nn_conv2d_forward(ctx, &k->cpw1, &t[PGN_B_DW1], &t[PGN_B_ACT1], e));
        TRY(nn_conv2d_forward(ctx, &k->cdw2, &t[PGN_B_ACT1], &t[PGN_B_DW2], e));
        TRY(nn_conv2d_forward(ctx, &k->cpw2, &t[PGN_B_DW2], &t[PGN_B_BN2], e));
        const nn_act *res = x;
        if (k->stride == 2) {
            TRY(nn_conv2d_forward(ctx, &k->c1, x, &t[PGN_B_RES], e));
            res = &t[PGN_B_RES];
        }
        TRY(nn_add_forward(ctx, &t[PGN_B_BN2], res, &t[PGN_B_PRE2], e));
        TRY(nn_eltwise_forward(ctx, relu, &t[PGN_B_PRE2], &k->out, e));
        return 0;
    }
    TRY(nn_conv2d_forward(ctx, &k->cdw1, x, &t[PGN_B_DW1], e));
    TRY(nn_conv2d_forward(ctx, &k->cpw1, &t[PGN_B_DW1], &t[PGN_B_PW1], e));
    if (!k->bn1.fuse_relu)
        return nn_errf(e, "%s: internal: the block's first batch norm has no fused ReLU", name);
    TRY(nn_batchnorm2d_forward(ctx, &k->bn1, &t[PGN_B_PW1], &t[PGN_B_ACT1], e)); /* relu(bn1) */
    TRY(nn_conv2d_forward(ctx, &k->cdw2, &t[PGN_B_ACT1], &t[PGN_B_DW2], e));
    TRY(nn_conv2d_forward(ctx, &k->cpw2, &t[PGN_B_DW2], &t[PGN_B_PW2], e));
    TRY(nn_batchnorm2d_forward(ctx, &k->bn2, &t[PGN_B_PW2], &t[PGN_B_BN2], e));
    const nn_act *res = x;
    if (k->stride == 2) {
        TRY(nn_conv2d_forward(ctx, &k->c1, x, &t[PGN_B_RES], e));
        res = &t[PGN_B_RES];
    }
    TRY(nn_add_forward(ctx, &t[PGN_B_BN2], res, &t[PGN_B_PRE2], e));
    TRY(nn_eltwise_forward(ctx, relu, &t[PGN_B_PRE2], &k->out, e));
    return 0;
}

int pgn_blaze_forward_into(nn_ctx *ctx, pgn_blaze *k, nn_eltwise *relu, const nn_act *x, nn_act *p, nn_act *q,
                           const char *name, nn_err *e)
{
    if (!k->folded)
        return nn_errf(e, "%s: the lean forward needs the block's batch norms folded (pgn_blaze_fold_bn)", name);
    if (p == x || q == x || p == q)
        return nn_errf(e, "%s: internal: buffers of a lean block forward overlap", name);
    /* The folded forward's chain, ping-ponging between p and q: x stays until the residual. */
    TRY(nn_conv2d_forward(ctx, &k->cdw1, x, p, e));
    TRY(nn_conv2d_forward(ctx, &k->cpw1, p, q, e)); /* bn1 folded, ReLU fused */
    TRY(nn_conv2d_forward(ctx, &k->cdw2, q, p, e));
    TRY(nn_conv2d_forward(ctx, &k->cpw2, p, q, e)); /* bn2 folded */
    const nn_act *res = x;
    if (k->stride == 2) {
        TRY(nn_conv2d_forward(ctx, &k->c1, x, p, e));
        res = p;
    }
    TRY(nn_add_forward(ctx, q, res, q, e));     /* in place */
    TRY(nn_eltwise_forward(ctx, relu, q, q, e)); /* in place */
    return 0;
}

int pgn_blaze_backward(nn_ctx *ctx, pgn_blaze *k, nn_eltwise *relu, const nn_act *x, const nn_act *gout, nn_act *gx,
                       const char *name, nn_err *e)
{
    if (k->folded)
        return nn_errf(e, "%s: backward of a block whose batch norms were folded for prediction", name);
    nn_act *t = k->t, *g = k->g;
    for (int i = 0; i < PGN_B_ACTS; i++)
        nn_act_grad_reset(&g[i]);
    TRY(nn_eltwise_backward(ctx, relu, &t[PGN_B_PRE2], gout, &g[PGN_B_PRE2], e));
    if (k->stride == 2) {
        TRY(nn_add_backward(ctx, &g[PGN_B_PRE2], &g[PGN_B_BN2], &g[PGN_B_RES], e));
        TRY(nn_conv2d_backward(ctx, &k->c1, x, &g[PGN_B_RES], gx, 1, e));
    } else
        TRY(nn_add_backward(ctx, &g[PGN_B_PRE2], &g[PGN_B_BN2], gx, e));
    TRY(nn_batchnorm2d_backward(ctx, &k->bn2, &t[PGN_B_PW2], &g[PGN_B_BN2], &g[PGN_B_PW2], e));
    TRY(nn_conv2d_backward(ctx, &k->cpw2, &t[PGN_B_DW2], &g[PGN_B_PW2], &g[PGN_B_DW2], 1, e));
    TRY(nn_conv2d_backward(ctx, &k->cdw2, &t[PGN_B_ACT1], &g[PGN_B_DW2], &g[PGN_B_ACT1], 1, e));
    TRY(nn_batchnorm2d_backward(ctx, &k->bn1, &t[PGN_B_PW1], &g[PGN_B_ACT1], &g[PGN_B_PW1], e)); /* ReLU too */
    TRY(nn_conv2d_backward(ctx, &k->cpw1, &t[PGN_B_DW1], &g[PGN_B_PW1], &g[PGN_B_DW1], 1, e));
    TRY(nn_conv2d_backward(ctx, &k->cdw1, x, &g[PGN_B_DW1], gx, 1, e));
    return 0;
}

int pgn_blaze_fold_bn(pgn_blaze *k, nn_err *e)
{
    if (k->folded)
        return 0;
    if (k->bn1.training || k->bn2.training)
        return nn_errf(e, "blaze: batch norms can only be folded in eval mode (running statistics)");
    if (nn_conv2d_fold_bn(&k->cpw1, &k->bn1, e) || nn_conv2d_set_post_relu(&k->cpw1, 1, 0.0f, e) ||
        nn_conv2d_fold_bn(&k->cpw2, &k->bn2, e))
        return -1;
    k->folded = 1;
    return 0;
}

void pgn_sep_free_acts(pgn_sep *s)
{
    nn_act *a[] = {&s->a0, &s->out, &s->g0, &s->gpre};
    for (size_t i = 0; i < sizeof a / sizeof *a; i++)
        nn_act_free(a[i]);
}

void pgn_blaze_free_acts(pgn_blaze *k)
{
    for (int i = 0; i < PGN_B_ACTS; i++) {
        nn_act_free(&k->t[i]);
        nn_act_free(&k->g[i]);
    }
    nn_act_free(&k->out);
}
