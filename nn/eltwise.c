/* ReLU, LeakyReLU, Sigmoid and Tanh on oneDNN eltwise primitives, in whatever layout the
 * activation is (padding lanes stay zero: oneDNN leaves them alone). */
#include <stdlib.h>
#include <string.h>

#include "nn/dnnl_util.h"

struct nn_eltwise_prims {
    struct nn_eltwise_prims *next;
    dnnl_memory_desc_t md;
    dnnl_primitive_desc_t fwd_pd, bwd_pd;
    dnnl_primitive_t fwd, bwd;
    nn_act dyr, dx_tmp;
};

void nn_eltwise_init(nn_eltwise *l, nn_act_kind kind, float alpha)
{
    memset(l, 0, sizeof *l);
    l->kind = kind;
    l->alpha = kind == NN_LEAKY_RELU ? alpha : 0.0f;
}

void nn_eltwise_free(nn_eltwise *l)
{
    for (nn_eltwise_prims *p = l->prims, *next; p; p = next) {
        next = p->next;
        dnnl_primitive_destroy(p->fwd);
        dnnl_primitive_destroy(p->bwd);
        dnnl_primitive_desc_destroy(p->fwd_pd);
        dnnl_primitive_desc_destroy(p->bwd_pd);
        nn_act_free(&p->dyr);
        nn_act_free(&p->dx_tmp);
        free(p);
    }
    memset(l, 0, sizeof *l);
}

/* Sigmoid and Tanh differentiate from their output; ReLU-likes from the input. */
static dnnl_alg_kind_t alg_of(nn_act_kind k)
{
    switch (k) {
    case NN_SIGMOID: return dnnl_eltwise_logistic_use_dst_for_bwd;
    case NN_TANH: return dnnl_eltwise_tanh_use_dst_for_bwd;
    default: return dnnl_eltwise_relu;
    }
}

static nn_eltwise_prims *get_prims(nn_ctx *ctx, nn_eltwise *l, const dnnl_memory_desc_t *md, nn_err *e)
{
    for (nn_eltwise_prims *p = l->prims; p; p = p->next)
        if (nn_md_equal(&p->md, md))
            return p;
    nn_eltwise_prims *p = calloc(1, sizeof *p);
    if (!p) {
        nn_errf(e, "out of memory");
        return NULL;
    }
    p->md = *md;
    dnnl_eltwise_desc_t d;
    if (dnnl_eltwise_forward_desc_init(&d, dnnl_forward_training, alg_of(l->kind), md, l->alpha, 0.0f) !=
            dnnl_success ||
        nn_make_prim(ctx, &d, NULL, &p->fwd_pd, &p->fwd, e) ||
        dnnl_eltwise_backward_desc_init(&d, alg_of(l->kind), md, md, l->alpha, 0.0f) != dnnl_success ||
        nn_make_prim(ctx, &d, p->fwd_pd, &p->bwd_pd, &p->bwd, e)) {
        nn_errf(e, "eltwise: cannot create primitives for this layout");
        dnnl_primitive_destroy(p->fwd);
        dnnl_primitive_desc_destroy(p->fwd_pd);
        free(p);
        return NULL;
    }
    p->next = l->prims;
    l->prims = p;
    return p;
}

int nn_eltwise_forward(nn_ctx *ctx, nn_eltwise *l, const nn_act *x, nn_act *y, nn_err *e)
{
    nn_eltwise_prims *p = get_prims(ctx, l, &x->md, e);
    if (!p)
        return -1;
    if (y != x && nn_act_reserve(y, x->n, x->c, x->h, x->w, &x->md, e))
        return -1;
    nn_arg args[] = {{DNNL_ARG_SRC, &x->md, x->data}, {DNNL_ARG_DST, &x->md, y->data}};
    y->valid = 1;
    return nn_exec(ctx, p->fwd, 2, args, e);
}

/* dx may be dy itself: the gradient is then transformed in place. */
int nn_eltwise_backward(nn_ctx *ctx, nn_eltwise *l, const nn_act *xy, const nn_act *dy, nn_act *dx, nn_err *e)
{
    nn_eltwise_prims *p = get_prims(ctx, l, &xy->md, e);
    if (!p)
        return -1;
    const float *dd = dy->data;
    if (!nn_md_equal(&dy->md, &xy->md)) {
        if (dx == dy)
            return nn_errf(e, "eltwise: in-place backward needs the gradient in the activation's layout");
        if (nn_act_reserve(&p->dyr, dy->n, dy->c, dy->h, dy->w, &xy->md, e) ||
            nn_reorder(ctx, &dy->md, dy->data, &xy->md, p->dyr.data, e))
            return -1;
        dd = p->dyr.data;
    }
    int in_place = dx == dy;
    nn_act *out = (in_place || !dx->valid) ? dx : &p->dx_tmp;
    if (!in_place && nn_act_reserve(out, xy->n, xy->c, xy->h, xy->w, &xy->md, e))
        return -1;
    int data_arg = l->kind == NN_SIGMOID || l->kind == NN_TANH ? DNNL_ARG_DST : DNNL_ARG_SRC;
    nn_arg args[] = {{data_arg, &xy->md, xy->data}, {DNNL_ARG_DIFF_DST, &xy->md, (void *)dd},
                     {DNNL_ARG_DIFF_SRC, &xy->md, out->data}};
    if (nn_exec(ctx, p->bwd, 3, args, e))
        return -1;
    if (out == dx) {
        dx->valid = 1;
        return 0;
    }
    return nn_act_accumulate(ctx, dx, &xy->md, out->data, xy->n, xy->c, xy->h, xy->w, e);
}
