/* BatchNorm2d on oneDNN: training uses batch statistics (biased variance) and updates the
 * running statistics as PyTorch does (momentum, UNBIASED variance); eval uses the running ones.
 * With fuse_relu the ReLU after it runs inside the same primitive (oneDNN's fuse_norm_relu), which
 * keeps the ReLU's mask in a workspace (a bit per element) for the backward. */
#include <stdlib.h>
#include <string.h>

#include "nn/dnnl_util.h"

struct nn_bn_prims {
    struct nn_bn_prims *next;
    dnnl_memory_desc_t md;
    int training;
    dnnl_primitive_desc_t fwd_pd, bwd_pd;
    dnnl_primitive_t fwd, bwd;
    nn_act dyr, dx_tmp;
    float *dgamma, *dbeta, *inv; /* per channel */
    int fuse_relu;
    void *ws;                    /* fuse_relu: the ReLU's mask from the last forward of this shape */
    int ws_ready;
};

int nn_batchnorm2d_init(nn_batchnorm2d *l, int c, float eps, float momentum, nn_err *e)
{
    memset(l, 0, sizeof *l);
    l->c = c;
    l->eps = eps;
    l->momentum = momentum;
    l->training = 1;
    nn_tensor *ts[] = {&l->gamma, &l->beta, &l->dgamma, &l->dbeta, &l->running_mean, &l->running_var,
                       &l->save_mean, &l->save_var};
    for (size_t i = 0; i < sizeof ts / sizeof *ts; i++)
        if (nn_tensor_alloc1(ts[i], c, e))
            return -1;
    nn_tensor_fill(&l->gamma, 1.0f);
    nn_tensor_fill(&l->running_var, 1.0f);
    return 0;
}

static void prims_free(nn_bn_prims *p);

void nn_batchnorm2d_free(nn_batchnorm2d *l)
{
    for (nn_bn_prims *p = l->prims, *next; p; p = next) {
        next = p->next;
        prims_free(p);
    }
    nn_tensor *ts[] = {&l->gamma, &l->beta, &l->dgamma, &l->dbeta, &l->running_mean, &l->running_var,
                       &l->save_mean, &l->save_var};
    for (size_t i = 0; i < sizeof ts / sizeof *ts; i++)
        nn_tensor_free(ts[i]);
    memset(l, 0, sizeof *l);
}

static void prims_free(nn_bn_prims *p)
{
    dnnl_primitive_destroy(p->fwd);
    dnnl_primitive_destroy(p->bwd);
    dnnl_primitive_desc_destroy(p->fwd_pd);
    dnnl_primitive_desc_destroy(p->bwd_pd);
    nn_act_free(&p->dyr);
    nn_act_free(&p->dx_tmp);
    nn_free(p->dgamma);
    nn_free(p->dbeta);
    nn_free(p->ws);
    free(p);
}

static nn_bn_prims *get_prims(nn_ctx *ctx, nn_batchnorm2d *l, const dnnl_memory_desc_t *md, nn_err *e)
{
    for (nn_bn_prims *p = l->prims; p; p = p->next)
        if (p->training == l->training && p->fuse_relu == l->fuse_relu && nn_md_equal(&p->md, md))
            return p;
    nn_bn_prims *p = calloc(1, sizeof *p);
    if (!p) {
        nn_errf(e, "out of memory");
        return NULL;
    }
    p->md = *md;
    p->training = l->training;
    p->fuse_relu = l->fuse_relu;
    unsigned flags = dnnl_use_scale | dnnl_use_shift | (l->training ? 0 : dnnl_use_global_stats) |
                     (l->fuse_relu ? dnnl_fuse_norm_relu : 0);
    dnnl_batch_normalization_desc_t d;
    if (dnnl_batch_normalization_forward_desc_init(&d, dnnl_forward_training, md, l->eps, flags) != dnnl_success ||
        nn_make_prim(ctx, &d, NULL, &p->fwd_pd, &p->fwd, e) ||
        dnnl_batch_normalization_backward_desc_init(&d, dnnl_backward, md, md, l->eps, flags) != dnnl_success ||
        nn_make_prim(ctx, &d, p->fwd_pd, &p->bwd_pd, &p->bwd, e)) {
        nn_errf(e, "batchnorm2d: cannot create primitives");
        prims_free(p);
        return NULL;
    }
    p->dgamma = nn_alloc((size_t)l->c * sizeof(float));
    p->dbeta = nn_alloc((size_t)l->c * sizeof(float));
    if (l->fuse_relu) { /* the ReLU's mask: without it the backward could not apply the ReLU */
        const dnnl_memory_desc_t *ws = nn_pd_md(p->fwd_pd, dnnl_query_workspace_md, 0);
        if (!ws || !nn_md_bytes(ws)) {
            nn_errf(e, "batchnorm2d: oneDNN gives the fused ReLU no workspace");
            prims_free(p);
            return NULL;
        }
        p->ws = nn_alloc(nn_md_bytes(ws));
    }
    if (!p->dgamma || !p->dbeta || (l->fuse_relu && !p->ws)) {
        nn_errf(e, "out of memory");
        prims_free(p);
        return NULL;
    }
    p->next = l->prims;
    l->prims = p;
    return p;
}

static dnnl_memory_desc_t md_c(int c)
{
    dnnl_memory_desc_t md;
    dnnl_dims_t d = {c};
    dnnl_memory_desc_init_by_tag(&md, 1, d, dnnl_f32, dnnl_x);
    return md;
}

int nn_batchnorm2d_forward(nn_ctx *ctx, nn_batchnorm2d *l, const nn_act *x, nn_act *y, nn_err *e)
{
    if (x->c != l->c)
        return nn_errf(e, "batchnorm2d: input has %d channels but the layer has %d", x->c, l->c);
    size_t m = (size_t)x->n * x->h * x->w;
    if (l->training && m < 2)
        return nn_errf(e, "batchnorm2d: training needs more than one value per channel (got [%d, %d, %d, %d])",
                       x->n, x->c, x->h, x->w);
    nn_bn_prims *p = get_prims(ctx, l, &x->md, e);
    if (!p)
        return -1;
    if (y != x && nn_act_reserve(y, x->n, x->c, x->h, x->w, &x->md, e))
        return -1;
    dnnl_memory_desc_t cmd = md_c(l->c);
    float *mean = l->training ? l->save_mean.data : l->running_mean.data;
    float *var = l->training ? l->save_var.data : l->running_var.data;
    nn_arg args[] = {{DNNL_ARG_SRC, &x->md, x->data},        {DNNL_ARG_DST, &x->md, y->data},
                     {DNNL_ARG_SCALE, &cmd, l->gamma.data},  {DNNL_ARG_SHIFT, &cmd, l->beta.data},
                     {DNNL_ARG_MEAN, &cmd, mean},            {DNNL_ARG_VARIANCE, &cmd, var},
                     {DNNL_ARG_WORKSPACE, nn_pd_md(p->fwd_pd, dnnl_query_workspace_md, 0), p->ws}};
    p->ws_ready = 0;
    if (nn_exec(ctx, p->fwd, p->ws ? 7 : 6, args, e))
        return -1;
    p->ws_ready = p->ws != NULL;
    y->valid = 1;
    if (l->training) {
        float mo = l->momentum;
        double unbias = (double)m / (double)(m - 1);
        for (int c = 0; c < l->c; c++) {
            l->running_mean.data[c] = (1 - mo) * l->running_mean.data[c] + mo * l->save_mean.data[c];
            l->running_var.data[c] = (1 - mo) * l->running_var.data[c] + mo * (float)(l->save_var.data[c] * unbias);
        }
        l->num_batches_tracked++;
    }
    return 0;
}

int nn_batchnorm2d_backward(nn_ctx *ctx, nn_batchnorm2d *l, const nn_act *x, const nn_act *dy, nn_act *dx,
                            nn_err *e)
{
    nn_bn_prims *p = get_prims(ctx, l, &x->md, e);
    if (!p)
        return -1;
    if (p->ws && !p->ws_ready)
        return nn_errf(e, "batchnorm2d: backward of a fused batch norm + ReLU without a forward of this shape "
                          "before it");
    const float *dd = dy->data;
    if (!nn_md_equal(&dy->md, &x->md)) {
        if (nn_act_reserve(&p->dyr, dy->n, dy->c, dy->h, dy->w, &x->md, e) ||
            nn_reorder(ctx, &dy->md, dy->data, &x->md, p->dyr.data, e))
            return -1;
        dd = p->dyr.data;
    }
    nn_act *out = (dx && !dx->valid) ? dx : &p->dx_tmp;
    if (nn_act_reserve(out, x->n, x->c, x->h, x->w, &x->md, e))
        return -1;
    dnnl_memory_desc_t cmd = md_c(l->c);
    float *mean = l->training ? l->save_mean.data : l->running_mean.data;
    float *var = l->training ? l->save_var.data : l->running_var.data;
    nn_arg args[] = {{DNNL_ARG_SRC, &x->md, x->data},          {DNNL_ARG_DIFF_DST, &x->md, (void *)dd},
                     {DNNL_ARG_SCALE, &cmd, l->gamma.data},    {DNNL_ARG_MEAN, &cmd, mean},
                     {DNNL_ARG_VARIANCE, &cmd, var},           {DNNL_ARG_DIFF_SRC, &x->md, out->data},
                     {DNNL_ARG_DIFF_SCALE, &cmd, p->dgamma},   {DNNL_ARG_DIFF_SHIFT, &cmd, p->dbeta},
                     {DNNL_ARG_SHIFT, &cmd, l->beta.data}, /* oneDNN 2.6 wants it though it is unused */
                     {DNNL_ARG_WORKSPACE, nn_pd_md(p->bwd_pd, dnnl_query_workspace_md, 0), p->ws}};
    if (nn_exec(ctx, p->bwd, p->ws ? 10 : 9, args, e))
        return -1;
    for (int c = 0; c < l->c; c++) {
        l->dgamma.data[c] += p->dgamma[c];
        l->dbeta.data[c] += p->dbeta[c];
    }
    if (!dx)
        return 0;
    if (out == dx) {
        dx->valid = 1;
        return 0;
    }
    return nn_act_accumulate(ctx, dx, &x->md, out->data, x->n, x->c, x->h, x->w, e);
}
