/* Conv2d on oneDNN: forward, backward-data and backward-weights primitives per input shape,
 * weights reordered into oneDNN's preferred layout (once when frozen, every forward otherwise).
 * Reflection padding runs as its own pad layer followed by an unpadded convolution.
 * Grouped convolutions with few channels per group (not pure depthwise) run on our own kernels
 * instead (conv_grouped.c; oneDNN has only a slow gemm for them): see nn_convg_applies. The
 * environment variable PGND_GROUPED_CONV=0 sends them back to oneDNN (A/B timing, escape hatch). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nn/bias_grad.h"
#include "nn/conv_grouped.h"
#include "nn/dw_wgrad.h"
#include "nn/conv_head.h"
#include "nn/dnnl_util.h"
#include "nn/init.h"

struct nn_conv_prims {
    struct nn_conv_prims *next;
    int n, h, w; /* input dims after explicit padding */
    int wino;    /* NN_WINO_* passes that use Winograd for this shape */
    int own;     /* runs on conv_grouped.c's kernels (no primitives; wei holds the bwd-data weights) */
    int own_bwdw; /* depthwise, whose weight gradient oneDNN would run on its gemm fallback: ours */
    int bf16;     /* the passes run on oneDNN's bf16 kernels (nn_conv2d.bf16) */
    dnnl_memory_desc_t in_md;
    dnnl_primitive_desc_t fwd_pd, bwdd_pd, bwdw_pd;
    dnnl_primitive_t fwd, bwdd, bwdw;
    float *wei, *wei_bwdd;       /* weights in the fwd / bwd-data layouts (frozen layers; the own
                                  * kernels' bwd-data weights); those of layers that learn are
                                  * made at each pass in the ctx's transient buffer */
    int wei_ready, wei_bwdd_ready;
    nn_act xr, xr_w, dyr, dyr_w; /* inputs reordered to what a primitive / our kernels want (the
                                  * oneDNN forward's goes to the ctx's scratch) */
    nn_act dx_tmp;               /* bwd-data output when it must be added, not stored */
};

/* Winograd where asked for; callers fall back to direct when oneDNN has no Winograd kernel for a shape. */
static dnnl_alg_kind_t conv_alg(int winograd) { return winograd ? dnnl_convolution_winograd : dnnl_convolution_direct; }

static dnnl_memory_desc_t md_any4t(int n, int c, int h, int w, dnnl_data_type_t dt)
{
    dnnl_memory_desc_t md;
    dnnl_dims_t d = {n, c, h, w};
    dnnl_memory_desc_init_by_tag(&md, 4, d, dt, dnnl_format_tag_any);
    return md;
}

static dnnl_memory_desc_t md_any4(int n, int c, int h, int w) { return md_any4t(n, c, h, w, dnnl_f32); }

/* Weights as PyTorch stores them: oihw, or goihw (same bytes) when grouped. */
static dnnl_memory_desc_t md_weights_t(const nn_conv_shape *g, dnnl_format_tag_t tag_any, dnnl_data_type_t dt)
{
    dnnl_memory_desc_t md;
    if (g->groups > 1) {
        dnnl_dims_t d = {g->groups, g->cout / g->groups, g->cin / g->groups, g->kh, g->kw};
        dnnl_memory_desc_init_by_tag(&md, 5, d, dt, tag_any ? tag_any : dnnl_goihw);
    } else {
        dnnl_dims_t d = {g->cout, g->cin, g->kh, g->kw};
        dnnl_memory_desc_init_by_tag(&md, 4, d, dt, tag_any ? tag_any : dnnl_oihw);
    }
    return md;
}

static dnnl_memory_desc_t md_weights(const nn_conv_shape *g, dnnl_format_tag_t tag_any)
{
    return md_weights_t(g, tag_any, dnnl_f32);
}

/* oneDNN's kernel for pd runs bf16 natively (AVX512_BF16 or AMX): its emulation on plain
 * AVX-512 (jit_bf16*:avx512_core) is slower than f32. */
static int impl_native_bf16(const_dnnl_primitive_desc_t pd)
{
    const char *impl = NULL;
    return pd && dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) == dnnl_success && impl &&
           (strstr(impl, "avx512_core_bf16") || strstr(impl, "amx"));
}

static int make_backward(nn_ctx *ctx, nn_conv2d *l, nn_conv_prims *p, int weights, nn_err *e);

/* A bf16 pass's primitive attributes: the scratchpad is ours to give (the ctx's, shared by every
 * layer; oneDNN's own was one per primitive here), plus the forward's ReLU post-op. */
static dnnl_primitive_attr_t bf16_attr(const nn_conv2d *l, int forward)
{
    dnnl_primitive_attr_t a = NULL;
    if (dnnl_primitive_attr_create(&a) != dnnl_success)
        return NULL;
    dnnl_primitive_attr_set_scratchpad_mode(a, dnnl_scratchpad_mode_user);
    if (forward && l->post_relu) {
        dnnl_post_ops_t po = NULL;
        dnnl_post_ops_create(&po);
        dnnl_post_ops_append_eltwise(po, 1.0f, dnnl_eltwise_relu, l->post_relu_alpha, 0.0f);
        dnnl_primitive_attr_set_post_ops(a, po);
        dnnl_post_ops_destroy(po);
    }
    return a;
}

/* Runs a pass; a bf16 one gets the ctx's scratchpad (args has room for one more). */
static int run_pass(nn_ctx *ctx, const nn_conv_prims *p, dnnl_primitive_t prim, const_dnnl_primitive_desc_t pd,
                    int nargs, nn_arg *args, nn_err *e)
{
    const dnnl_memory_desc_t *sp = p->bf16 ? nn_pd_md(pd, dnnl_query_scratchpad_md, 0) : NULL;
    if (sp && nn_md_bytes(sp) > 0) {
        float *buf = nn_ctx_cvt(ctx, 2, nn_md_bytes(sp), e);
        if (!buf)
            return -1;
        args[nargs++] = (nn_arg){DNNL_ARG_SCRATCHPAD, sp, buf};
    }
    return nn_exec(ctx, prim, nargs, args, e);
}

static dnnl_memory_desc_t md_bias(int cout)
{
    dnnl_memory_desc_t md;
    dnnl_dims_t d = {cout};
    dnnl_memory_desc_init_by_tag(&md, 1, d, dnnl_f32, dnnl_x);
    return md;
}

int nn_conv2d_init(nn_conv2d *l, int cin, int cout, int kh, int kw, int sh, int sw, int ph, int pw, int groups,
                   int pad_mode, int has_bias, nn_rng *rng, nn_err *e)
{
    memset(l, 0, sizeof *l);
    if (groups < 1 || cin % groups || cout % groups)
        return nn_errf(e, "conv2d: channels %d -> %d are not divisible by groups %d", cin, cout, groups);
    if (kh < 1 || kw < 1 || sh < 1 || sw < 1 || ph < 0 || pw < 0)
        return nn_errf(e, "conv2d: bad kernel %dx%d / stride %dx%d / padding %dx%d", kh, kw, sh, sw, ph, pw);
    l->geo = (nn_conv_shape){0, cin, 0, 0, cout, kh, kw, sh, sw, ph, pw, groups, pad_mode, has_bias};
    int64_t ws[4] = {cout, cin / groups, kh, kw};
    if (nn_tensor_alloc(&l->weight, 4, ws, e) || nn_tensor_alloc(&l->dweight, 4, ws, e))
        return -1;
    if (has_bias && (nn_tensor_alloc1(&l->bias, cout, e) || nn_tensor_alloc1(&l->dbias, cout, e)))
        return -1;
    if (rng)
        nn_init_conv(&l->weight, has_bias ? &l->bias : NULL, cin / groups * kh * kw, rng);
    l->weights_stale = 1;
    return 0;
}

static void prims_free(nn_conv_prims *p)
{
    dnnl_primitive_destroy(p->fwd);
    dnnl_primitive_destroy(p->bwdd);
    dnnl_primitive_destroy(p->bwdw);
    dnnl_primitive_desc_destroy(p->fwd_pd);
    dnnl_primitive_desc_destroy(p->bwdd_pd);
    dnnl_primitive_desc_destroy(p->bwdw_pd);
    nn_free(p->wei);
    nn_free(p->wei_bwdd);
    nn_act_free(&p->xr);
    nn_act_free(&p->xr_w);
    nn_act_free(&p->dyr);
    nn_act_free(&p->dyr_w);
    nn_act_free(&p->dx_tmp);
    free(p);
}

void nn_conv2d_free(nn_conv2d *l)
{
    for (nn_conv_prims *p = l->prims, *next; p; p = next) {
        next = p->next;
        prims_free(p);
    }
    nn_tensor_free(&l->weight);
    nn_tensor_free(&l->bias);
    nn_tensor_free(&l->dweight);
    nn_tensor_free(&l->dbias);
    memset(l, 0, sizeof *l);
}

/* Geometry of the convolution oneDNN runs (padding already applied when reflecting). */
static void run_geo(const nn_conv2d *l, int *ph, int *pw)
{
    int reflect = l->geo.pad_mode == NN_PAD_REFLECT;
    *ph = reflect ? 0 : l->geo.ph;
    *pw = reflect ? 0 : l->geo.pw;
}

/* Where oneDNN's weight copies are made from: PyTorch's layout, or, once that copy was released
 * (frozen layers), an existing oneDNN copy. */
static int weights_source(const nn_conv2d *l, dnnl_memory_desc_t *plain, const dnnl_memory_desc_t **md,
                          const float **ptr, nn_err *e)
{
    if (l->weight.data) {
        *plain = md_weights(&l->geo, 0);
        *md = plain;
        *ptr = l->weight.data;
        return 0;
    }
    for (const nn_conv_prims *p = l->prims; p; p = p->next)
        if (p->wei_ready) {
            *md = nn_pd_md(p->fwd_pd, dnnl_query_weights_md, 0);
            *ptr = p->wei;
            return 0;
        }
    return nn_errf(e, "conv2d: weights were released and no copy is left");
}

int nn_conv2d_release_plain(nn_conv2d *l, nn_err *e)
{
    if (!l->frozen)
        return nn_errf(e, "conv2d: only a frozen layer can release its weights");
    if (l->bf16) /* its oneDNN copies are rounded to bf16: a later shape would get them */
        return nn_errf(e, "conv2d: a bf16 layer keeps its float32 weights");
    if (nn_convg_shape_fits(&l->geo))
        return 0; /* our grouped kernels read the PyTorch-layout weights (now, or once switched on): they stay */
    int ready = 0;
    for (const nn_conv_prims *p = l->prims; p; p = p->next)
        ready |= p->wei_ready;
    if (!ready)
        return nn_errf(e, "conv2d: run a forward before releasing the weights");
    nn_tensor_free(&l->weight);
    nn_tensor_free(&l->dweight);
    return 0;
}

static nn_conv_prims *get_prims(nn_ctx *ctx, nn_conv2d *l, const nn_act *x, nn_err *e)
{
    const nn_conv_shape *g = &l->geo;
    const int own = nn_convg_applies(g);
    for (nn_conv_prims *p = l->prims; p; p = p->next)
        if (p->n == x->n && p->h == x->h && p->w == x->w && p->own == own)
            return p;
    int ph, pw;
    run_geo(l, &ph, &pw);
    int oh = (x->h + 2 * ph - g->kh) / g->sh + 1, ow = (x->w + 2 * pw - g->kw) / g->sw + 1;
    if (oh < 1 || ow < 1) {
        nn_errf(e, "conv2d: input %dx%d is too small for kernel %dx%d with padding %d", x->h, x->w, g->kh, g->kw,
                g->ph);
        return NULL;
    }
    nn_conv_prims *p = calloc(1, sizeof *p);
    if (!p) {
        nn_errf(e, "out of memory");
        return NULL;
    }
    p->n = x->n;
    p->h = x->h;
    p->w = x->w;
    if (own) { /* grouped, few channels per group: our kernels, on the PyTorch-layout weights */
        p->own = 1;
        p->wei = nn_alloc((size_t)g->cout * (g->cin / g->groups) * g->kh * g->kw * sizeof(float));
        if (!p->wei) {
            nn_errf(e, "out of memory");
            prims_free(p);
            return NULL;
        }
        p->next = l->prims;
        l->prims = p;
        return p;
    }
    dnnl_memory_desc_t src = md_any4(x->n, g->cin, x->h, x->w), dst = md_any4(x->n, g->cout, oh, ow);
    dnnl_memory_desc_t wei = md_weights(g, dnnl_format_tag_any), bias = md_bias(g->cout);
    dnnl_dims_t strides = {g->sh, g->sw}, pad = {ph, pw};
    dnnl_convolution_desc_t d;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t po = NULL;
    if (l->post_relu) {
        dnnl_primitive_attr_create(&attr);
        dnnl_post_ops_create(&po);
        dnnl_post_ops_append_eltwise(po, 1.0f, dnnl_eltwise_relu, l->post_relu_alpha, 0.0f);
        dnnl_primitive_attr_set_post_ops(attr, po);
    }
    /* oneDNN's Winograd (4x4 tiles) pays where there are enough tiles: below ~768 output positions
     * in the batch it is no faster or slower. Measured on VGG-19's layers, fast teacher, per layer
     * fwd / bwd-data: batch 6 at 16x16 (1536) 4.9 / 4.7 ms against direct 8.8 / 9.0; batch 6 at
     * 8x8 (384) 5.0 / 3.8 against 3.9 / 3.9; batch 6 at 4x4 2x slower; batch 1 at 28x28 (784)
     * faster (a 224 loss and gradient 202 ms against 260); batch 1 at 16x16 (256) no gain. */
    p->wino = (long)x->n * oh * ow >= 768 ? l->winograd : 0;
    int bad = 1;
    if (l->bf16 && g->groups == 1 && !p->wino && nn_conv2d_bf16_native(ctx)) { /* nn_conv2d.bf16 */
        dnnl_memory_desc_t srcb = md_any4t(x->n, g->cin, x->h, x->w, dnnl_bf16);
        dnnl_memory_desc_t weib = md_weights_t(g, dnnl_format_tag_any, dnnl_bf16);
        dnnl_primitive_attr_t battr = bf16_attr(l, 1);
        if (battr &&
            dnnl_convolution_forward_desc_init(&d, dnnl_forward_training, dnnl_convolution_direct, &srcb, &weib,
                                               g->has_bias ? &bias : NULL, &dst, strides, pad, pad) == dnnl_success &&
            nn_make_prim_attr(ctx, &d, battr, NULL, &p->fwd_pd, &p->fwd, e) == 0) {
            /* all three passes on native bf16 kernels (made now, not at the first backward), or the
             * shape runs in f32 */
            p->bf16 = impl_native_bf16(p->fwd_pd);
            bad = !p->bf16 || make_backward(ctx, l, p, 0, e) || make_backward(ctx, l, p, 1, e) ||
                  !impl_native_bf16(p->bwdd_pd) || !impl_native_bf16(p->bwdw_pd);
            if (bad) {
                dnnl_primitive_t *pr[3] = {&p->fwd, &p->bwdd, &p->bwdw};
                dnnl_primitive_desc_t *pp[3] = {&p->fwd_pd, &p->bwdd_pd, &p->bwdw_pd};
                for (int k = 0; k < 3; k++) {
                    if (*pr[k])
                        dnnl_primitive_destroy(*pr[k]);
                    if (*pp[k])
                        dnnl_primitive_desc_destroy(*pp[k]);
                    *pr[k] = NULL, *pp[k] = NULL;
                }
                p->bf16 = 0;
            }
        }
        if (battr)
            dnnl_primitive_attr_destroy(battr);
    }
    for (int wino = (p->wino & NN_WINO_FWD) ? 1 : 0; wino >= 0 && bad; wino--)
        bad = dnnl_convolution_forward_desc_init(&d, dnnl_forward_training, conv_alg(wino), &src, &wei,
                                                 g->has_bias ? &bias : NULL, &dst, strides, pad, pad) != dnnl_success ||
              nn_make_prim_attr(ctx, &d, attr, NULL, &p->fwd_pd, &p->fwd, e);
    if (attr) {
        dnnl_post_ops_destroy(po);
        dnnl_primitive_attr_destroy(attr);
    }
    if (bad) {
        nn_err_prefix(e, "conv2d %d->%d k%dx%d s%d on [%d, %d, %d, %d]", g->cin, g->cout, g->kh, g->kw, g->sh, x->n,
                      x->c, x->h, x->w);
        prims_free(p);
        return NULL;
    }
    p->next = l->prims;
    l->prims = p;
    return p;
}

/* Where a pass's oneDNN-layout weights go: a frozen layer keeps its copy (*kept, made at first
 * use); one that learns makes it again at every pass, into the ctx's transient weight buffer. */
static float *weights_buffer(nn_ctx *ctx, const nn_conv2d *l, float **kept, const dnnl_memory_desc_t *md, nn_err *e)
{
    if (!l->frozen)
        return nn_ctx_wbuf(ctx, 0, nn_md_bytes(md), e);
    if (!*kept && !(*kept = nn_alloc(nn_md_bytes(md))))
        nn_errf(e, "out of memory");
    return *kept;
}

/* x reordered into the layout `want` (no copy when it already is). */
static int input_in(nn_ctx *ctx, const nn_act *x, const dnnl_memory_desc_t *want, nn_act *tmp, const float **out,
                    nn_err *e)
{
    if (nn_md_equal(&x->md, want)) {
        *out = x->data;
        return 0;
    }
    if (nn_act_reserve(tmp, x->n, x->c, x->h, x->w, want, e) || nn_reorder(ctx, &x->md, x->data, want, tmp->data, e))
        return -1;
    *out = tmp->data;
    return 0;
}

/* x converted into `want` (a bf16 pass's data type) in the ctx's conversion buffer `slot`: it is
 * read by this pass only, so one buffer per context serves every layer. */
static int input_cvt(nn_ctx *ctx, const nn_act *x, const dnnl_memory_desc_t *want, int slot, const float **out,
                     nn_err *e)
{
    if (nn_md_equal(&x->md, want)) {
        *out = x->data;
        return 0;
    }
    float *buf = nn_ctx_cvt(ctx, slot, nn_md_bytes(want), e);
    if (!buf || nn_reorder(ctx, &x->md, x->data, want, buf, e))
        return -1;
    *out = buf;
    return 0;
}

/* x as our kernels read it: in place when plain NCHW or nChw8c / nChw16c, else reordered to NCHW. */
static int input_view(nn_ctx *ctx, const nn_act *x, nn_act *tmp, const float **out, nn_view5 *v, nn_err *e)
{
    if (nn_view5_of(&x->md, x->n, x->c, x->h, x->w, v) == 0) {
        *out = x->data;
        return 0;
    }
    dnnl_memory_desc_t plain = nn_md_nchw(x->n, x->c, x->h, x->w);
    if (input_in(ctx, x, &plain, tmp, out, e))
        return -1;
    return nn_view5_of(&plain, x->n, x->c, x->h, x->w, v);
}

/* Grouped convolutions with few channels per group (nn_convg_applies): conv_grouped.c's kernels,
 * output in plain NCHW. The fused post-op runs in the same pass. */
static int own_forward(nn_ctx *ctx, nn_conv2d *l, nn_conv_prims *p, const nn_act *x, nn_act *y, nn_err *e)
{
    nn_conv_shape s = l->geo;
    s.n = x->n, s.h = x->h, s.w = x->w;
    const float *src;
    nn_view5 vx;
    if (input_view(ctx, x, &p->xr, &src, &vx, e) ||
        nn_act_reserve(y, s.n, s.cout, nn_conv_oh(&s), nn_conv_ow(&s), NULL, e) ||
        nn_convg_forward(ctx, &s, src, &vx, l->weight.data, l->bias.data, l->post_relu, l->post_relu_alpha, y->data,
                         e))
        return -1;
    y->valid = 1;
    return 0;
}

/* As the oneDNN path: dy is taken as given (already through a fused activation), parameter
 * gradients accumulate, dx follows the store-or-add rule (added in place when it is plain NCHW). */
static int own_backward(nn_ctx *ctx, nn_conv2d *l, nn_conv_prims *p, const nn_act *x, const nn_act *dy, nn_act *dx,
                        int param_grads, nn_err *e)
{
    nn_conv_shape s = l->geo;
    s.n = p->n, s.h = p->h, s.w = p->w;
    const float *ddst;
    nn_view5 vdy;
    if (input_view(ctx, dy, &p->dyr, &ddst, &vdy, e))
        return -1;
    if (param_grads) {
        const float *src;
        nn_view5 vx;
        if (input_view(ctx, x, &p->xr_w, &src, &vx, e) ||
            nn_convg_backward_weights(ctx, &s, src, &vx, ddst, &vdy, l->dweight.data,
                                      s.has_bias ? l->dbias.data : NULL, e))
            return -1;
    }
    if (!dx)
        return 0;
    dnnl_memory_desc_t plain = nn_md_nchw(s.n, s.cin, s.h, s.w);
    if (!dx->valid || nn_md_equal(&dx->md, &plain)) {
        int add = dx->valid;
        if (!add && nn_act_reserve(dx, s.n, s.cin, s.h, s.w, &plain, e))
            return -1;
        if (add && (dx->n != s.n || dx->c != s.cin || dx->h != s.h || dx->w != s.w))
            return nn_errf(e, "gradient shape mismatch: [%d, %d, %d, %d] into [%d, %d, %d, %d]", s.n, s.cin, s.h,
                           s.w, dx->n, dx->c, dx->h, dx->w);
        if (nn_convg_backward_data(ctx, &s, ddst, &vdy, l->weight.data, p->wei, dx->data, add, e))
            return -1;
        dx->valid = 1;
        return 0;
    }
    if (nn_act_reserve(&p->dx_tmp, s.n, s.cin, s.h, s.w, &plain, e) ||
        nn_convg_backward_data(ctx, &s, ddst, &vdy, l->weight.data, p->wei, p->dx_tmp.data, 0, e))
        return -1;
    return nn_act_accumulate(ctx, dx, &plain, p->dx_tmp.data, s.n, s.cin, s.h, s.w, e);
}

int nn_conv2d_forward(nn_ctx *ctx, nn_conv2d *l, const nn_act *x_in, nn_act *y, nn_err *e)
{
    const nn_conv_shape *g = &l->geo;
    if (x_in->c != g->cin)
        return nn_errf(e, "conv2d: input has %d channels but the layer expects %d", x_in->c, g->cin);
    const nn_act *x = x_in;
    if (g->pad_mode == NN_PAD_REFLECT) {
        if (nn_pad2d_forward(ctx, x_in, &ctx->pad, g->ph, g->pw, NN_PAD_REFLECT, e))
            return -1;
        x = &ctx->pad;
    }
    nn_conv_prims *p = get_prims(ctx, l, x, e);
    if (!p)
        return -1;
    if (p->own)
        return own_forward(ctx, l, p, x, y, e);
    const dnnl_memory_desc_t *src_md = nn_pd_md(p->fwd_pd, dnnl_query_src_md, 0);
    const dnnl_memory_desc_t *wei_md = nn_pd_md(p->fwd_pd, dnnl_query_weights_md, 0);
    const dnnl_memory_desc_t *dst_md = nn_pd_md(p->fwd_pd, dnnl_query_dst_md, 0);
    float *wei = weights_buffer(ctx, l, &p->wei, wei_md, e);
    if (!wei)
        return -1;
    if (!l->frozen || l->weights_stale || !p->wei_ready) {
        dnnl_memory_desc_t plain;
        const dnnl_memory_desc_t *src_md;
        const float *src_w;
        if (weights_source(l, &plain, &src_md, &src_w, e) || nn_reorder(ctx, src_md, src_w, wei_md, wei, e))
            return -1;
        if (l->weights_stale)
            for (nn_conv_prims *q = l->prims; q; q = q->next)
                q->wei_ready = q->wei_bwdd_ready = 0;
        l->weights_stale = 0;
        p->wei_ready = l->frozen;
    }
    /* An input in another layout is reordered into the ctx's shared scratch, not a buffer of this
     * layer: it is read by this pass only (the weight gradient reorders x again), so one buffer the
     * size of the largest such input serves the whole net. */
    const float *src = x->data;
    if (!nn_md_equal(&x->md, src_md)) {
        float *buf = nn_ctx_scratch(ctx, nn_md_bytes(src_md), e);
        if (!buf || nn_reorder(ctx, &x->md, x->data, src_md, buf, e))
            return -1;
        src = buf;
    }
    if (nn_act_reserve(y, x->n, g->cout, (int)dst_md->dims[2], (int)dst_md->dims[3], dst_md, e))
        return -1;
    dnnl_memory_desc_t bias = md_bias(g->cout);
    nn_arg args[5] = {{DNNL_ARG_SRC, src_md, (void *)src},
                      {DNNL_ARG_WEIGHTS, wei_md, wei},
                      {DNNL_ARG_DST, dst_md, y->data},
                      {DNNL_ARG_BIAS, &bias, l->bias.data}};
    y->valid = 1;
    return run_pass(ctx, p, p->fwd, p->fwd_pd, g->has_bias ? 4 : 3, args, e);
}

/* Pure depthwise weight gradients: oneDNN 2.6's jit_dw has them for 3x3 only and runs other
 * kernels (the PGN's and autoencoders' 5x5) on x64:gemm:jit, about 1 ms for a 3 MFLOP pass at
 * 16x16. Our grouped kernels do them at once; the forward and backward-data stay on jit_dw. */
static int depthwise_bwdw_is_slow(nn_ctx *ctx, nn_conv2d *l, nn_conv_prims *p, const dnnl_memory_desc_t *src,
                                  const dnnl_memory_desc_t *wei, const dnnl_memory_desc_t *bias,
                                  const dnnl_memory_desc_t *ddst, const dnnl_dims_t strides, const dnnl_dims_t pad)
{
    const nn_conv_shape *g = &l->geo;
    if (g->groups < 2 || g->cin != g->groups || g->cout != g->groups || g->pad_mode != NN_PAD_ZERO ||
        !nn_convg_enabled())
        return 0;
    dnnl_convolution_desc_t d;
    dnnl_primitive_desc_t pd = NULL;
    if (dnnl_convolution_backward_weights_desc_init(&d, dnnl_convolution_direct, src, wei, g->has_bias ? bias : NULL,
                                                    ddst, strides, pad, pad) != dnnl_success ||
        dnnl_primitive_desc_create(&pd, &d, NULL, ctx->engine, p->fwd_pd) != dnnl_success)
        return 0;
    const char *impl = NULL;
    int slow = dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) == dnnl_success && impl &&
               strstr(impl, "gemm") != NULL;
    dnnl_primitive_desc_destroy(pd);
    return slow;
}

static int make_backward(nn_ctx *ctx, nn_conv2d *l, nn_conv_prims *p, int weights, nn_err *e)
{
    const nn_conv_shape *g = &l->geo;
    const dnnl_memory_desc_t *dst = nn_pd_md(p->fwd_pd, dnnl_query_dst_md, 0);
    int ph, pw;
    run_geo(l, &ph, &pw);
    /* bf16 passes: x, dy and the weights in bf16; dx and the weight gradient in f32 */
    const dnnl_data_type_t in_t = p->bf16 ? dnnl_bf16 : dnnl_f32;
    dnnl_memory_desc_t src = md_any4t(p->n, g->cin, p->h, p->w, in_t);
    dnnl_memory_desc_t ddst = md_any4t(p->n, g->cout, (int)dst->dims[2], (int)dst->dims[3], in_t);
    dnnl_memory_desc_t wei = md_weights(g, dnnl_format_tag_any), bias = md_bias(g->cout);
    dnnl_dims_t strides = {g->sh, g->sw}, pad = {ph, pw};
    dnnl_convolution_desc_t d;
    if (!weights) {
        dnnl_memory_desc_t dsrc = md_any4(p->n, g->cin, p->h, p->w), weid = md_weights_t(g, dnnl_format_tag_any, in_t);
        dnnl_primitive_attr_t battr = p->bf16 ? bf16_attr(l, 0) : NULL;
        int bad = 1;
        for (int wino = (p->wino & NN_WINO_BWD_DATA) ? 1 : 0; wino >= 0 && bad; wino--)
            bad = dnnl_convolution_backward_data_desc_init(&d, conv_alg(wino), &dsrc, &weid, &ddst, strides, pad,
                                                           pad) != dnnl_success ||
                  nn_make_prim_attr(ctx, &d, battr, p->fwd_pd, &p->bwdd_pd, &p->bwdd, e);
        if (battr)
            dnnl_primitive_attr_destroy(battr);
        return bad ? -1 : 0;
    }
    if (depthwise_bwdw_is_slow(ctx, l, p, &src, &wei, &bias, &ddst, strides, pad)) {
        p->own_bwdw = 1;
        return 0;
    }
    /* without the bias: nn_bias_grad takes it (see nn/bias_grad.h and own_bias_grad) */
    dnnl_primitive_attr_t battr = p->bf16 ? bf16_attr(l, 0) : NULL;
    int bad = 1;
    for (int wino = (p->wino & NN_WINO_BWD_WEIGHTS) ? 1 : 0; wino >= 0 && bad; wino--)
        bad = dnnl_convolution_backward_weights_desc_init(&d, conv_alg(wino), &src, &wei, NULL, &ddst, strides, pad,
                                                          pad) != dnnl_success ||
              nn_make_prim_attr(ctx, &d, battr, p->fwd_pd, &p->bwdw_pd, &p->bwdw, e);
    if (battr)
        dnnl_primitive_attr_destroy(battr);
    return bad ? -1 : 0;
}

/* db += the sums of dy per channel: from dy itself where nn_bias_grad reads its layout, else from
 * the weight gradient's f32 copy of it, else from a plain copy. */
static int own_bias_grad(nn_ctx *ctx, nn_conv2d *l, nn_conv_prims *p, const nn_act *dy,
                         const dnnl_memory_desc_t *ddst_md, const float *ddst, nn_err *e)
{
    nn_view5 v;
    if (nn_view5_of(&dy->md, dy->n, dy->c, dy->h, dy->w, &v) == 0)
        return nn_bias_grad(ctx, dy->data, &v, l->dbias.data, e);
    if (nn_view5_of(ddst_md, dy->n, dy->c, dy->h, dy->w, &v) == 0)
        return nn_bias_grad(ctx, ddst, &v, l->dbias.data, e);
    dnnl_memory_desc_t plain = nn_md_nchw(dy->n, dy->c, dy->h, dy->w);
    const float *d;
    if (input_in(ctx, dy, &plain, &p->dyr, &d, e)) /* (bwd-data's buffer: it runs after) */
        return -1;
    nn_view5_of(&plain, dy->n, dy->c, dy->h, dy->w, &v);
    return nn_bias_grad(ctx, d, &v, l->dbias.data, e);
}

/* dy_cvt: dy already in the pass's layout and type (the weight gradient's bf16 copy), or NULL. */
static int backward_data(nn_ctx *ctx, nn_conv2d *l, nn_conv_prims *p, const nn_act *dy, const float *dy_cvt,
                         nn_act *dx, nn_err *e)
{
    if (!p->bwdd && make_backward(ctx, l, p, 0, e))
        return -1;
    const dnnl_memory_desc_t *wei_md = nn_pd_md(p->bwdd_pd, dnnl_query_weights_md, 0);
    const dnnl_memory_desc_t *ddst_md = nn_pd_md(p->bwdd_pd, dnnl_query_diff_dst_md, 0);
    const dnnl_memory_desc_t *dsrc_md = nn_pd_md(p->bwdd_pd, dnnl_query_diff_src_md, 0);
    float *wei = weights_buffer(ctx, l, &p->wei_bwdd, wei_md, e);
    if (!wei)
        return -1;
    if (!l->frozen || !p->wei_bwdd_ready) {
        dnnl_memory_desc_t plain;
        const dnnl_memory_desc_t *src_md;
        const float *src_w;
        if (weights_source(l, &plain, &src_md, &src_w, e) || nn_reorder(ctx, src_md, src_w, wei_md, wei, e))
            return -1;
        p->wei_bwdd_ready = l->frozen;
    }
    if (dy_cvt && !nn_md_equal(nn_pd_md(p->bwdw_pd, dnnl_query_diff_dst_md, 0), ddst_md))
        dy_cvt = NULL; /* the two passes want dy in different layouts */
    const float *ddst = dy_cvt;
    if (!ddst && (p->bf16 ? input_cvt(ctx, dy, ddst_md, 1, &ddst, e) : input_in(ctx, dy, ddst_md, &p->dyr, &ddst, e)))
        return -1;
    /* First gradient into dx: write straight into it; otherwise compute aside and add. */
    nn_act *out = dx->valid ? &p->dx_tmp : dx;
    if (nn_act_reserve(out, p->n, l->geo.cin, p->h, p->w, dsrc_md, e))
        return -1;
    nn_arg args[4] = {{DNNL_ARG_DIFF_DST, ddst_md, (void *)ddst},
                      {DNNL_ARG_WEIGHTS, wei_md, wei},
                      {DNNL_ARG_DIFF_SRC, dsrc_md, out->data}};
    if (run_pass(ctx, p, p->bwdd, p->bwdd_pd, 3, args, e))
        return -1;
    if (out == dx) {
        dx->valid = 1;
        return 0;
    }
    return nn_act_accumulate(ctx, dx, dsrc_md, out->data, p->n, l->geo.cin, p->h, p->w, e);
}

/* *dy_cvt (may be NULL): dy converted for a bf16 pass, for the backward-data pass after it. */
static int backward_weights(nn_ctx *ctx, nn_conv2d *l, nn_conv_prims *p, const nn_act *x, const nn_act *dy,
                            const float **dy_cvt, nn_err *e)
{
    if (!p->bwdw && !p->own_bwdw && make_backward(ctx, l, p, 1, e))
        return -1;
    if (p->own_bwdw) {
        nn_conv_shape s = l->geo;
        s.n = p->n, s.h = p->h, s.w = p->w;
        const float *src, *ddst;
        nn_view5 vx, vdy;
        float *db = l->geo.has_bias ? l->dbias.data : NULL;
        if (input_view(ctx, x, &p->xr_w, &src, &vx, e) || input_view(ctx, dy, &p->dyr_w, &ddst, &vdy, e))
            return -1;
        const int r = nn_dw_wgrad_blocked(ctx, &s, src, &vx, ddst, &vdy, l->dweight.data, db, e); /* nChw16c */
        if (r <= 0)
            return r;
        return nn_convg_backward_weights(ctx, &s, src, &vx, ddst, &vdy, l->dweight.data, db, e) ? -1 : 0;
    }
    const dnnl_memory_desc_t *src_md = nn_pd_md(p->bwdw_pd, dnnl_query_src_md, 0);
    const dnnl_memory_desc_t *ddst_md = nn_pd_md(p->bwdw_pd, dnnl_query_diff_dst_md, 0);
    const dnnl_memory_desc_t *dwei_md = nn_pd_md(p->bwdw_pd, dnnl_query_diff_weights_md, 0);
    const float *src, *ddst;
    if (p->bf16 ? input_cvt(ctx, x, src_md, 0, &src, e) || input_cvt(ctx, dy, ddst_md, 1, &ddst, e)
                : input_in(ctx, x, src_md, &p->xr_w, &src, e) || input_in(ctx, dy, ddst_md, &p->dyr_w, &ddst, e))
        return -1;
    if (dy_cvt && p->bf16)
        *dy_cvt = ddst;
    /* The weight gradient in oneDNN's layout, then in PyTorch's, is added to dweight at once:
     * both copies live in the ctx's transient buffers. */
    float *dwei = nn_ctx_wbuf(ctx, 0, nn_md_bytes(dwei_md), e);
    float *dwei_plain = dwei ? nn_ctx_wbuf(ctx, 1, l->dweight.numel * sizeof(float), e) : NULL;
    if (!dwei_plain)
        return -1;
    nn_arg args[4] = {{DNNL_ARG_SRC, src_md, (void *)src},
                      {DNNL_ARG_DIFF_DST, ddst_md, (void *)ddst},
                      {DNNL_ARG_DIFF_WEIGHTS, dwei_md, dwei}};
    if (run_pass(ctx, p, p->bwdw, p->bwdw_pd, 3, args, e))
        return -1;
    if (l->geo.has_bias && own_bias_grad(ctx, l, p, dy, ddst_md, ddst, e))
        return -1;
    dnnl_memory_desc_t plain = md_weights(&l->geo, 0);
    if (nn_reorder(ctx, dwei_md, dwei, &plain, dwei_plain, e))
        return -1;
    float *dw = l->dweight.data;
    const float *t = dwei_plain;
    size_t n = l->dweight.numel;
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++)
        dw[i] += t[i];
    return 0;
}

int nn_conv2d_backward(nn_ctx *ctx, nn_conv2d *l, const nn_act *x_in, const nn_act *dy, nn_act *dx, int param_grads,
                       nn_err *e)
{
    /* Reflection: the padded input is not kept from the forward (one buffer per layer, as large
     * as its input) but made again here, into the ctx's one buffer. */
    int reflect = l->geo.pad_mode == NN_PAD_REFLECT;
    if (reflect && nn_pad2d_forward(ctx, x_in, &ctx->pad, l->geo.ph, l->geo.pw, NN_PAD_REFLECT, e))
        return -1;
    const nn_act *x = reflect ? &ctx->pad : x_in;
    nn_conv_prims *p = get_prims(ctx, l, x, e);
    if (!p)
        return -1;
    if (param_grads && !l->dweight.data)
        return nn_errf(e, "conv2d: weight gradients of a layer whose weights were released");
    if (p->own)
        return own_backward(ctx, l, p, x, dy, dx, param_grads, e);
    const float *dy_cvt = NULL;
    if (param_grads && backward_weights(ctx, l, p, x, dy, &dy_cvt, e))
        return -1;
    if (!dx)
        return 0;
    if (!reflect)
        return backward_data(ctx, l, p, dy, dy_cvt, dx, e);
    /* The padded input was read by the weight gradient only: its buffer takes the padded gradient. */
    nn_act_grad_reset(&ctx->pad);
    if (backward_data(ctx, l, p, dy, dy_cvt, &ctx->pad, e))
        return -1;
    return nn_pad2d_backward(ctx, &ctx->pad, dx, l->geo.ph, l->geo.pw, NN_PAD_REFLECT, e);
}

int nn_conv2d_backward_relu_input(nn_ctx *ctx, nn_conv2d *l, const nn_act *x, const nn_act *dy, nn_act *dx,
                                  int param_grads, nn_err *e)
{
    const nn_conv_shape *g = &l->geo;
    nn_view5 vx;
    if (!nn_fused_enabled() || !nn_conv_head_applies(g) || l->post_relu || !l->weight.data ||
        nn_view5_of(&x->md, x->n, x->c, x->h, x->w, &vx))
        return 1;
    if (x->c != g->cin)
        return nn_errf(e, "conv2d: input has %d channels but the layer expects %d", x->c, g->cin);
    if (dy->n != x->n || dy->c != g->cout || dy->h != x->h || dy->w != x->w)
        return nn_errf(e, "conv2d: output gradient [%d, %d, %d, %d] does not match the output [%d, %d, %d, %d]",
                       dy->n, dy->c, dy->h, dy->w, x->n, g->cout, x->h, x->w);
    if (param_grads && !l->dweight.data)
        return nn_errf(e, "conv2d: weight gradients of a layer whose weights were released");
    nn_conv_prims *p = get_prims(ctx, l, x, e); /* its buffers; the primitives exist from the forward */
    if (!p)
        return -1;
    dnnl_memory_desc_t plain = nn_md_nchw(dy->n, dy->c, dy->h, dy->w);
    const float *d;
    if (input_in(ctx, dy, &plain, &p->dyr, &d, e))
        return -1;
    /* dx in x's layout: written straight, or added in place when it already is in it */
    int add = dx->valid;
    nn_act *out = dx;
    if (add && (dx->n != x->n || dx->c != x->c || dx->h != x->h || dx->w != x->w))
        return nn_errf(e, "gradient shape mismatch: [%d, %d, %d, %d] into [%d, %d, %d, %d]", x->n, x->c, x->h, x->w,
                       dx->n, dx->c, dx->h, dx->w);
    if (add && !nn_md_equal(&dx->md, &x->md))
        out = &p->dx_tmp, add = 0;
    if (!add && nn_act_reserve(out, x->n, x->c, x->h, x->w, &x->md, e))
        return -1;
    if (nn_conv_head_backward_relu(ctx, g->cout, x->data, &vx, d, l->weight.data, param_grads ? l->dweight.data : NULL,
                                   param_grads && g->has_bias ? l->dbias.data : NULL, out->data, add, e))
        return -1;
    if (out == dx) {
        dx->valid = 1;
        return 0;
    }
    return nn_act_accumulate(ctx, dx, &x->md, out->data, x->n, x->c, x->h, x->w, e) ? -1 : 0;
}

int nn_conv2d_last_input(const nn_conv2d *l, int *n, int *h, int *w)
{
    if (!l->prims)
        return -1; /* new shapes go to the head of the list */
    *n = l->prims->n, *h = l->prims->h, *w = l->prims->w;
    return 0;
}

int nn_conv2d_own_bias_grad(const nn_conv2d *l)
{
    return l->geo.has_bias && l->prims && l->prims->bwdw;
}

int nn_conv2d_runs_bf16(const nn_conv2d *l) { return l->prims && l->prims->bf16; }

int nn_conv2d_bf16_native(nn_ctx *ctx)
{
    static _Atomic int native = -1; /* the CPU's: the same for every context (and thread) */
    if (native >= 0)
        return native;
    const dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa(); /* ONEDNN_MAX_CPU_ISA lowers it */
    if ((isa & dnnl_cpu_isa_avx512_core_bf16) != dnnl_cpu_isa_avx512_core_bf16) {
        native = 0;
        return 0;
    }
    dnnl_memory_desc_t src = md_any4t(1, 16, 4, 4, dnnl_bf16), dst = md_any4(1, 16, 4, 4);
    const nn_conv_shape g = {1, 16, 4, 4, 16, 1, 1, 1, 1, 0, 0, 1, NN_PAD_ZERO, 0};
    dnnl_memory_desc_t wei = md_weights_t(&g, dnnl_format_tag_any, dnnl_bf16);
    dnnl_dims_t strides = {1, 1}, pad = {0, 0};
    dnnl_convolution_desc_t d;
    dnnl_primitive_desc_t pd = NULL;
    int ok = dnnl_convolution_forward_desc_init(&d, dnnl_forward_training, dnnl_convolution_direct, &src, &wei, NULL,
                                                &dst, strides, pad, pad) == dnnl_success &&
             dnnl_primitive_desc_create(&pd, &d, NULL, ctx->engine, NULL) == dnnl_success && impl_native_bf16(pd);
    if (pd)
        dnnl_primitive_desc_destroy(pd);
    native = ok;
    return native;
}

int nn_conv2d_drop_prims(nn_conv2d *l, nn_err *e)
{
    if (!l->weight.data)
        return nn_errf(e, "conv2d: the layer's weights were released; its primitives cannot be made again");
    for (nn_conv_prims *p = l->prims, *next; p; p = next) {
        next = p->next;
        prims_free(p);
    }
    l->prims = NULL;
    l->weights_stale = 1;
    return 0;
}

int nn_conv2d_set_bias(nn_conv2d *l, const float *bias, nn_err *e)
{
    if (!l->weight.data)
        return nn_errf(e, "conv2d: cannot add a bias to a layer whose weights were released");
    int cout = l->geo.cout;
    if (!l->geo.has_bias) {
        if (nn_tensor_alloc1(&l->bias, cout, e) || nn_tensor_alloc1(&l->dbias, cout, e)) {
            nn_tensor_free(&l->bias);
            nn_tensor_free(&l->dbias);
            return -1;
        }
        l->geo.has_bias = 1;
    }
    memcpy(l->bias.data, bias, (size_t)cout * sizeof(float));
    return nn_conv2d_drop_prims(l, e);
}

int nn_conv2d_set_post_relu(nn_conv2d *l, int on, float alpha, nn_err *e)
{
    l->post_relu = on ? 1 : 0;
    l->post_relu_alpha = on ? alpha : 0.0f;
    return nn_conv2d_drop_prims(l, e);
}

int nn_conv2d_fold_bn(nn_conv2d *l, const nn_batchnorm2d *bn, nn_err *e)
{
    const int cout = l->geo.cout;
    if (bn->c != cout)
        return nn_errf(e, "conv2d: cannot fold a batch norm of %d channels into a convolution with %d outputs", bn->c,
                       cout);
    if (!l->weight.data)
        return nn_errf(e, "conv2d: cannot fold a batch norm into a layer whose weights were released");
    float *b = malloc((size_t)cout * sizeof *b);
    if (!b)
        return nn_errf(e, "out of memory");
    const size_t per = l->weight.numel / (size_t)cout; /* [cout, cin/groups, kh, kw]: one row per output */
    for (int c = 0; c < cout; c++) {
        double s = (double)bn->gamma.data[c] / sqrt((double)bn->running_var.data[c] + (double)bn->eps);
        float *w = l->weight.data + (size_t)c * per;
        for (size_t i = 0; i < per; i++)
            w[i] = (float)((double)w[i] * s);
        double b0 = l->geo.has_bias ? (double)l->bias.data[c] : 0.0;
        b[c] = (float)((b0 - (double)bn->running_mean.data[c]) * s + (double)bn->beta.data[c]);
    }
    int rc = nn_conv2d_set_bias(l, b, e); /* also marks the weights stale */
    free(b);
    return rc;
}
