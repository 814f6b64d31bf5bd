#include "pgn/blaze.h"

#define TRY(call)                                                                                                      \
    do {                                                                                                               \
        if (call)                                                                                                      \
            return nn_err_prefix(e, "%s", name);                                                                       \
    } while (0)

int pgn_sep_forward(nn_ctx *ctx, pgn_sep *s, nn_eltwise *relu, const nn_act *x, const char *name, nn_err *e)
{
    TRY(nn_conv2d_forward(ctx, &s->c0, x, &s->a0, e));
    TRY(nn_conv2d_forward(ctx, &s->c1, &s->a0, &s->pre, e));
    TRY(nn_eltwise_forward(ctx, relu, &s->pre, &s->out, e));
    return 0;
}

int pgn_sep_backward(nn_ctx *ctx, pgn_sep *s, nn_eltwise *relu, const nn_act *x, const nn_act *gout, nn_act *gx,
                     const char *name, nn_err *e)
{
    nn_act_grad_reset(&s->gpre);
    nn_act_grad_reset(&s->g0);
    TRY(nn_eltwise_backward(ctx, relu, &s->pre, gout, &s->gpre, e));
    TRY(nn_conv2d_backward(ctx, &s->c1, &s->a0, &s->gpre, &s->g0, 1, e));
    TRY(nn_conv2d_backward(ctx, &s->c0, x, &s->g0, gx, 1, e));
    return 0;
}

int pgn_blaze_forward(nn_ctx *ctx, pgn_blaze *k, nn_eltwise *relu, const nn_act *x, const char *name, nn_err *e)
{
    nn_act *t = k->t;
    TRY(nn_conv2d_forward(ctx, &k->cdw1, x, &t[PGN_B_DW1], e));
    TRY(nn_conv2d_forward(ctx, &k->cpw1, &t[PGN_B_DW1], &t[PGN_B_PW1], e));
    TRY(nn_batchnorm2d_forward(ctx, &k->bn1, &t[PGN_B_PW1], &t[PGN_B_PRE1], e));
    TRY(nn_eltwise_forward(ctx, relu, &t[PGN_B_PRE1], &t[PGN_B_ACT1], e));
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

int pgn_blaze_backward(nn_ctx *ctx, pgn_blaze *k, nn_eltwise *relu, const nn_act *x, const nn_act *gout, nn_act *gx,
                       const char *name, nn_err *e)
{
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
    TRY(nn_eltwise_backward(ctx, relu, &t[PGN_B_PRE1], &g[PGN_B_ACT1], &g[PGN_B_PRE1], e));
    TRY(nn_batchnorm2d_backward(ctx, &k->bn1, &t[PGN_B_PW1], &g[PGN_B_PRE1], &g[PGN_B_PW1], e));
    TRY(nn_conv2d_backward(ctx, &k->cpw1, &t[PGN_B_DW1], &g[PGN_B_PW1], &g[PGN_B_DW1], 1, e));
    TRY(nn_conv2d_backward(ctx, &k->cdw1, x, &g[PGN_B_DW1], gx, 1, e));
    return 0;
}

void pgn_sep_free_acts(pgn_sep *s)
{
    nn_act *a[] = {&s->a0, &s->pre, &s->out, &s->g0, &s->gpre};
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
