/* AvgPool2d and MaxPool2d on oneDNN pooling_v2 (max keeps a workspace for its backward).
 * Output size follows PyTorch's floor mode; oneDNN's right padding is derived from it. */
#include <stdlib.h>
#include <string.h>

#include "nn/dnnl_util.h"
#include "nn/memstat.h"

struct nn_pool_prims {
    struct nn_pool_prims *next;
    dnnl_memory_desc_t md;
    int n, c, h, w;
    dnnl_primitive_desc_t fwd_pd, bwd_pd;
    dnnl_primitive_t fwd, bwd;
    void *ws;
    nn_act dyr, dx_tmp;
};

void nn_pool2d_init(nn_pool2d *l, int is_max, int k, int s, int p)
{
    memset(l, 0, sizeof *l);
    l->is_max = is_max;
    l->k = k;
    l->s = s;
    l->p = p;
}

void nn_pool2d_free(nn_pool2d *l)
{
    for (nn_pool_prims *p = l->prims, *next; p; p = next) {
        next = p->next;
        dnnl_primitive_destroy(p->fwd);
        dnnl_primitive_destroy(p->bwd);
        dnnl_primitive_desc_destroy(p->fwd_pd);
        dnnl_primitive_desc_destroy(p->bwd_pd);
        nn_free_kind(p->ws, NN_MEM_SCRATCH);
        nn_act_free(&p->dyr);
        nn_act_free(&p->dx_tmp);
        free(p);
    }
    memset(l, 0, sizeof *l);
}

static nn_pool_prims *get_prims(nn_ctx *ctx, nn_pool2d *l, const nn_act *x, nn_err *e)
{
    for (nn_pool_prims *p = l->prims; p; p = p->next)
        if (nn_md_equal(&p->md, &x->md))
            return p;
    int oh = (x->h + 2 * l->p - l->k) / l->s + 1, ow = (x->w + 2 * l->p - l->k) / l->s + 1;
    if (oh < 1 || ow < 1) {
        nn_errf(e, "pool2d: input %dx%d is too small for window %d", x->h, x->w, l->k);
        return NULL;
    }
    nn_pool_prims *p = calloc(1, sizeof *p);
    if (!p) {
        nn_errf(e, "out of memory");
        return NULL;
    }
    p->md = x->md;
    p->n = x->n, p->c = x->c, p->h = x->h, p->w = x->w;
    dnnl_memory_desc_t dst;
    dnnl_dims_t dd = {x->n, x->c, oh, ow};
    dnnl_memory_desc_init_by_tag(&dst, 4, dd, dnnl_f32, dnnl_format_tag_any);
    dnnl_dims_t strides = {l->s, l->s}, kernel = {l->k, l->k}, dil = {0, 0}, pl = {l->p, l->p};
    dnnl_dims_t pr = {(oh - 1) * l->s + l->k - x->h - l->p, (ow - 1) * l->s + l->k - x->w - l->p};
    dnnl_alg_kind_t alg = l->is_max            ? dnnl_pooling_max
                          : l->avg_exclude_pad ? dnnl_pooling_avg_exclude_padding
                                               : dnnl_pooling_avg_include_padding;
    dnnl_pooling_v2_desc_t d;
    dnnl_memory_desc_t src_any = x->md;
    if (dnnl_pooling_v2_forward_desc_init(&d, dnnl_forward_training, alg, &src_any, &dst, strides, kernel, dil, pl,
                                          pr) != dnnl_success ||
        nn_make_prim(ctx, &d, NULL, &p->fwd_pd, &p->fwd, e)) {
        nn_errf(e, "pool2d: cannot create the forward primitive");
        free(p);
        return NULL;
    }
    const dnnl_memory_desc_t *ddst = nn_pd_md(p->fwd_pd, dnnl_query_dst_md, 0);
    dnnl_memory_desc_t dsrc = x->md;
    if (dnnl_pooling_v2_backward_desc_init(&d, alg, &dsrc, ddst, strides, kernel, dil, pl, pr) != dnnl_success ||
        nn_make_prim(ctx, &d, p->fwd_pd, &p->bwd_pd, &p->bwd, e)) {
        nn_errf(e, "pool2d: cannot create the backward primitive");
        dnnl_primitive_destroy(p->fwd);
        dnnl_primitive_desc_destroy(p->fwd_pd);
        free(p);
        return NULL;
    }
    const dnnl_memory_desc_t *ws = nn_pd_md(p->fwd_pd, dnnl_query_workspace_md, 0);
    if (ws && nn_md_bytes(ws) > 0)
        p->ws = nn_alloc_kind(nn_md_bytes(ws), NN_MEM_SCRATCH);
    p->next = l->prims;
    l->prims = p;
    return p;
}

int nn_pool2d_forward(nn_ctx *ctx, nn_pool2d *l, const nn_act *x, nn_act *y, nn_err *e)
{
    nn_pool_prims *p = get_prims(ctx, l, x, e);
    if (!p)
        return -1;
    const dnnl_memory_desc_t *dst = nn_pd_md(p->fwd_pd, dnnl_query_dst_md, 0);
    if (nn_act_reserve(y, x->n, x->c, (int)dst->dims[2], (int)dst->dims[3], dst, e))
        return -1;
    const dnnl_memory_desc_t *ws = nn_pd_md(p->fwd_pd, dnnl_query_workspace_md, 0);
    nn_arg args[] = {{DNNL_ARG_SRC, &x->md, x->data}, {DNNL_ARG_DST, dst, y->data}, {DNNL_ARG_WORKSPACE, ws, p->ws}};
    y->valid = 1;
    return nn_exec(ctx, p->fwd, p->ws ? 3 : 2, args, e);
}

int nn_pool2d_backward(nn_ctx *ctx, nn_pool2d *l, const nn_act *x, const nn_act *dy, nn_act *dx, nn_err *e)
{
    nn_pool_prims *p = get_prims(ctx, l, x, e);
    if (!p)
        return -1;
    const dnnl_memory_desc_t *ddst = nn_pd_md(p->bwd_pd, dnnl_query_diff_dst_md, 0);
    const dnnl_memory_desc_t *dsrc = nn_pd_md(p->bwd_pd, dnnl_query_diff_src_md, 0);
    const float *dd = dy->data;
    if (!nn_md_equal(&dy->md, ddst)) {
        if (nn_act_reserve(&p->dyr, dy->n, dy->c, dy->h, dy->w, ddst, e) ||
            nn_reorder(ctx, &dy->md, dy->data, ddst, p->dyr.data, e))
            return -1;
        dd = p->dyr.data;
    }
    nn_act *out = dx->valid ? &p->dx_tmp : dx;
    if (nn_act_reserve(out, x->n, x->c, x->h, x->w, dsrc, e))
        return -1;
    const dnnl_memory_desc_t *ws = nn_pd_md(p->fwd_pd, dnnl_query_workspace_md, 0);
    nn_arg args[] = {{DNNL_ARG_DIFF_DST, ddst, (void *)dd}, {DNNL_ARG_DIFF_SRC, dsrc, out->data},
                     {DNNL_ARG_WORKSPACE, ws, p->ws}};
    if (nn_exec(ctx, p->bwd, p->ws ? 3 : 2, args, e))
        return -1;
    if (out == dx) {
        dx->valid = 1;
        return 0;
    }
    return nn_act_accumulate(ctx, dx, dsrc, out->data, x->n, x->c, x->h, x->w, e);
}
