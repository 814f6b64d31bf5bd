/* x2 upsampling. Nearest runs on oneDNN's resampling primitive. Bilinear is PyTorch's
 * align_corners=True, which oneDNN's resampling (half-pixel centres) cannot express, so it is our
 * own OpenMP kernel over plain or channel-blocked layouts. */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "nn/bilinear.h"
#include "nn/dnnl_util.h"

struct nn_resample_prims {
    struct nn_resample_prims *next;
    dnnl_memory_desc_t md;
    dnnl_primitive_desc_t fwd_pd, bwd_pd;
    dnnl_primitive_t fwd, bwd;
    nn_act dyr, dx_tmp;
};

void nn_upsample2x_init(nn_upsample2x *l, int bilinear)
{
    memset(l, 0, sizeof *l);
    l->bilinear = bilinear;
}

void nn_upsample2x_free(nn_upsample2x *l)
{
    for (nn_resample_prims *p = l->prims, *next; p; p = next) {
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

static nn_resample_prims *get_prims(nn_ctx *ctx, nn_upsample2x *l, const nn_act *x, nn_err *e)
{
    /* Most recently used first: the nearest backward runs on the head's primitives. */
    for (nn_resample_prims **pp = &l->prims; *pp; pp = &(*pp)->next)
        if (nn_md_equal(&(*pp)->md, &x->md)) {
            nn_resample_prims *p = *pp;
            *pp = p->next;
            p->next = l->prims;
            l->prims = p;
            return p;
        }
    nn_resample_prims *p = calloc(1, sizeof *p);
    if (!p) {
        nn_errf(e, "out of memory");
        return NULL;
    }
    p->md = x->md;
    dnnl_memory_desc_t dst = nn_md_blocked(x->n, x->c, 2 * x->h, 2 * x->w, 1);
    nn_view5 v;
    if (nn_view5_of(&x->md, x->n, x->c, x->h, x->w, &v) == 0)
        dst = nn_md_blocked(x->n, x->c, 2 * x->h, 2 * x->w, v.blk);
    dnnl_resampling_desc_t d;
    dnnl_memory_desc_t src = x->md;
    if (dnnl_resampling_forward_desc_init(&d, dnnl_forward_training, dnnl_resampling_nearest, NULL, &src, &dst) !=
            dnnl_success ||
        nn_make_prim(ctx, &d, NULL, &p->fwd_pd, &p->fwd, e) ||
        dnnl_resampling_backward_desc_init(&d, dnnl_resampling_nearest, NULL, &src, &dst) != dnnl_success ||
        nn_make_prim(ctx, &d, p->fwd_pd, &p->bwd_pd, &p->bwd, e)) {
        nn_errf(e, "upsample2x: cannot create resampling primitives");
        free(p);
        return NULL;
    }
    p->next = l->prims;
    l->prims = p;
    return p;
}

/* One output row of BLK-channel blocks: the same arithmetic, in the same order, as PyTorch's. BLK is
 * a compile-time constant for the blocked layouts, so the channel loop is one vector. */
#define BILINEAR_ROW(BLK)                                                                                             \
    for (int ow = 0; ow < wout; ow++) {                                                                                \
        const float *a0 = x0 + (size_t)cc[ow].w0 * (BLK), *a1 = x0 + (size_t)cc[ow].w1 * (BLK);                      \
        const float *b0 = x1 + (size_t)cc[ow].w0 * (BLK), *b1 = x1 + (size_t)cc[ow].w1 * (BLK);                      \
        float lw = cc[ow].lw;                                                                                          \
        float *o = yr + (size_t)ow * (BLK);                                                                            \
        _Pragma("omp simd") for (int b = 0; b < (BLK); b++)                                                           \
        {                                                                                                              \
            float top = (1 - lw) * a0[b] + lw * a1[b];                                                                 \
            float bot = (1 - lw) * b0[b] + lw * b1[b];                                                                 \
            o[b] = (1 - lh) * top + lh * bot;                                                                          \
        }                                                                                                              \
    }

/* y: channel blocks ycb_off .. ycb_off + vx->cb - 1 of a tensor of ycb blocks per image (ycb =
 * vx->cb, ycb_off = 0: y is the upsampled x alone). */
static int bilinear_forward(float *y, const nn_view5 *vy, const float *x, const nn_view5 *vx, int ycb, int ycb_off)
{
    int blk = vx->blk, wout = vy->w;
    col_coord *cc = col_coords(vx->w, vy->w);
    if (!cc)
        return -1;
#pragma omp parallel for collapse(2) schedule(static)
    for (int nc = 0; nc < vx->n * vx->cb; nc++)
        for (int oh = 0; oh < vy->h; oh++) {
            int h0, h1;
            float lh;
            ac_coord(oh, vx->h, vy->h, &h0, &h1, &lh);
            const float *x0 = x + ((size_t)nc * vx->h + h0) * vx->w * blk;
            const float *x1 = x + ((size_t)nc * vx->h + h1) * vx->w * blk;
            const size_t yplane = (size_t)(nc / vx->cb) * ycb + ycb_off + nc % vx->cb;
            float *yr = y + (yplane * vy->h + oh) * vy->w * blk;
            if (blk == 16) {
                BILINEAR_ROW(16)
            } else if (blk == 8) {
                BILINEAR_ROW(8)
            } else {
                BILINEAR_ROW(blk)
            }
        }
    free(cc);
    return 0;
}


/* One output row's column pass: input column w of the row buffer t gets the weighted sum of the
 * output columns that read it (gathered: no chain of adds through memory), BLK channels per vector. */
#define BILINEAR_COL_GATHER(BLK)                                                                                      \
    for (int w = 0; w < win; w++) {                                                                                    \
        float acc[(BLK)];                                                                                              \
        _Pragma("omp simd") for (int b = 0; b < (BLK); b++) acc[b] = 0.0f;                                            \
        for (int k = 0; k < gt->cnt[w]; k++) { /* the forward's reads only (as PyTorch, weight-0 ones too) */         \
            const float wt = gt->wt[(size_t)k * win + w];                                                              \
            const float *v = g + (size_t)gt->idx[(size_t)k * win + w] * (BLK);                                         \
            _Pragma("omp simd") for (int b = 0; b < (BLK); b++) acc[b] += wt * v[b];                                  \
        }                                                                                                              \
        _Pragma("omp simd") for (int b = 0; b < (BLK); b++) t[(size_t)w * (BLK) + b] = acc[b];                        \
    }

/* Per (n, channel block) plane, independent of the others (no races): zeroed, then each output
 * row's column pass into a row buffer, added into its two input rows with the row weights. The
 * sums group differently from PyTorch's per-pixel scatter (rounding differences only). mask (may be
 * NULL; a ReLU's output in dx's layout): the plane is then multiplied by mask > 0 while in cache. */
static int bilinear_backward(float *dx, const nn_view5 *vx, const float *dy, const nn_view5 *vy, const float *mask)
{
    const int blk = vx->blk, win = vx->w;
    const size_t plane = (size_t)vx->h * vx->w * blk, row = (size_t)win * blk;
    col_coord *cc = col_coords(vx->w, vy->w);
    float *rowbuf = nn_alloc((size_t)omp_get_max_threads() * row * sizeof(float));
    col_gather gtab = {0}, *gt = &gtab;
    if (!cc || !rowbuf || col_gather_make(gt, cc, vx->w, vy->w)) {
        free(cc);
        nn_free(rowbuf);
        col_gather_free(gt);
        return -1;
    }
#pragma omp parallel for schedule(static)
    for (int nc = 0; nc < vx->n * vx->cb; nc++) {
        float *d = dx + nc * plane, *t = rowbuf + (size_t)omp_get_thread_num() * row;
        memset(d, 0, plane * sizeof(float));
        for (int oh = 0; oh < vy->h; oh++) {
            int h0, h1;
            float lh;
            ac_coord(oh, vx->h, vy->h, &h0, &h1, &lh);
            const float *g = dy + ((size_t)nc * vy->h + oh) * vy->w * blk;
            if (blk == 16) {
                BILINEAR_COL_GATHER(16)
            } else if (blk == 8) {
                BILINEAR_COL_GATHER(8)
            } else {
                BILINEAR_COL_GATHER(1) /* plain NCHW has blk 1 */
            }
            float *restrict r0 = d + (size_t)h0 * row, *restrict r1 = d + (size_t)h1 * row;
            const float k0 = 1 - lh, k1 = lh;
            if (r0 == r1) { /* the last row reads one input row twice */
#pragma omp simd
                for (size_t i = 0; i < row; i++)
                    r0[i] += k0 * t[i] + k1 * t[i];
                continue;
            }
#pragma omp simd
            for (size_t i = 0; i < row; i++) {
                r0[i] += k0 * t[i];
                r1[i] += k1 * t[i];
            }
        }
        if (mask) {
            const float *m = mask + nc * plane;
#pragma omp simd
            for (size_t i = 0; i < plane; i++)
                d[i] = m[i] > 0.0f ? d[i] : 0.0f;
        }
    }
    free(cc);
    nn_free(rowbuf);
    col_gather_free(gt);
    return 0;
}

int nn_upsample2x_forward(nn_ctx *ctx, nn_upsample2x *l, const nn_act *x_in, nn_act *y, nn_err *e)
{
    if (!l->bilinear) {
        nn_resample_prims *p = get_prims(ctx, l, x_in, e);
        if (!p)
            return -1;
        const dnnl_memory_desc_t *dst = nn_pd_md(p->fwd_pd, dnnl_query_dst_md, 0);
        if (nn_act_reserve(y, x_in->n, x_in->c, 2 * x_in->h, 2 * x_in->w, dst, e))
            return -1;
        nn_arg args[] = {{DNNL_ARG_SRC, &x_in->md, x_in->data}, {DNNL_ARG_DST, dst, y->data}};
        y->valid = 1;
        return nn_exec(ctx, p->fwd, 2, args, e);
    }
    nn_act *x = (nn_act *)x_in; /* nn_act_view5 may convert an exotic layout to NCHW in place */
    nn_view5 vx, vy;
    if (nn_act_view5(ctx, x, &vx, e))
        return -1;
    dnnl_memory_desc_t md = nn_md_blocked(x->n, x->c, 2 * x->h, 2 * x->w, vx.blk);
    if (nn_act_reserve(y, x->n, x->c, 2 * x->h, 2 * x->w, &md, e))
        return -1;
    nn_view5_of(&md, x->n, x->c, 2 * x->h, 2 * x->w, &vy);
    if (bilinear_forward(y->data, &vy, x->data, &vx, vx.cb, 0))
        return nn_errf(e, "out of memory");
    y->valid = 1;
    return 0;
}

/* dx (store-or-add rule) = the bilinear backward of dy (seen through vy), times mask > 0 when
 * mask is given (in the layout dx gets: dy's blocking at the input's size). */
static int bilinear_backward_into(nn_ctx *ctx, const float *dy, const nn_view5 *vy, const float *mask, nn_act *dx,
                                  nn_err *e)
{
    const int n = vy->n, c = vy->c, h = vy->h / 2, w = vy->w / 2;
    nn_view5 vx;
    dnnl_memory_desc_t md = nn_md_blocked(n, c, h, w, vy->blk);
    nn_view5_of(&md, n, c, h, w, &vx);
    float *out = dx->valid ? nn_ctx_tmp(ctx, nn_md_bytes(&md), e) : NULL;
    if (!dx->valid) {
        if (nn_act_reserve(dx, n, c, h, w, &md, e))
            return -1;
        out = dx->data;
    } else if (!out) {
        return -1;
    }
    if (bilinear_backward(out, &vx, dy, vy, mask))
        return nn_errf(e, "out of memory");
    if (out == dx->data) {
        dx->valid = 1;
        return 0;
    }
    return nn_act_accumulate(ctx, dx, &md, out, n, c, h, w, e);
}

int nn_upsample2x_backward(nn_ctx *ctx, nn_upsample2x *l, const nn_act *dy_in, nn_act *dx, nn_err *e)
{
    if (!l->bilinear) {
        int n = dy_in->n, c = dy_in->c, h = dy_in->h / 2, w = dy_in->w / 2;
        nn_resample_prims *p = l->prims;
        if (!p)
            return nn_errf(e, "upsample2x: backward before forward");
        const dnnl_memory_desc_t *ddst = nn_pd_md(p->bwd_pd, dnnl_query_diff_dst_md, 0);
        const dnnl_memory_desc_t *dsrc = nn_pd_md(p->bwd_pd, dnnl_query_diff_src_md, 0);
        const float *dd = dy_in->data;
        if (!nn_md_equal(&dy_in->md, ddst)) {
            if (nn_act_reserve(&p->dyr, dy_in->n, c, dy_in->h, dy_in->w, ddst, e) ||
                nn_reorder(ctx, &dy_in->md, dy_in->data, ddst, p->dyr.data, e))
                return -1;
            dd = p->dyr.data;
        }
        nn_act *out = dx->valid ? &p->dx_tmp : dx;
        if (nn_act_reserve(out, n, c, h, w, dsrc, e))
            return -1;
        nn_arg args[] = {{DNNL_ARG_DIFF_DST, ddst, (void *)dd}, {DNNL_ARG_DIFF_SRC, dsrc, out->data}};
        if (nn_exec(ctx, p->bwd, 2, args, e))
            return -1;
        if (out == dx) {
            dx->valid = 1;
            return 0;
        }
        return nn_act_accumulate(ctx, dx, dsrc, out->data, n, c, h, w, e);
    }
    nn_act *dy = (nn_act *)dy_in;
    nn_view5 vy;
    if (nn_act_view5(ctx, dy, &vy, e))
        return -1;
    return bilinear_backward_into(ctx, dy->data, &vy, NULL, dx, e);
}

int nn_upsample2x_backward_relu(nn_ctx *ctx, nn_upsample2x *l, const nn_act *dy, const nn_act *x, nn_act *dx,
                                nn_err *e)
{
    nn_view5 vx, vy;
    if (!nn_fused_enabled() || !l->bilinear || nn_view5_of(&x->md, x->n, x->c, x->h, x->w, &vx))
        return 1;
    if (dy->n != x->n || dy->c != x->c || dy->h != 2 * x->h || dy->w != 2 * x->w)
        return nn_errf(e, "upsample2x: output gradient [%d, %d, %d, %d] does not match the input [%d, %d, %d, %d]",
                       dy->n, dy->c, dy->h, dy->w, x->n, x->c, x->h, x->w);
    /* dy in x's blocking, so that dx comes out in x's layout, where the mask is read */
    const float *d = dy->data;
    if (nn_view5_of(&dy->md, dy->n, dy->c, dy->h, dy->w, &vy) || vy.blk != vx.blk) {
        dnnl_memory_desc_t md = nn_md_blocked(dy->n, dy->c, dy->h, dy->w, vx.blk);
        float *buf = nn_ctx_scratch(ctx, nn_md_bytes(&md), e);
        if (!buf || nn_reorder(ctx, &dy->md, dy->data, &md, buf, e))
            return -1;
        nn_view5_of(&md, dy->n, dy->c, dy->h, dy->w, &vy);
        d = buf;
    }
    return bilinear_backward_into(ctx, d, &vy, x->data, dx, e);
}

int nn_upsample2x_concat_forward(nn_ctx *ctx, nn_upsample2x *l, const nn_act *x_in, const nn_act *skip_in, nn_act *y,
                                 nn_err *e)
{
    nn_act *x = (nn_act *)x_in, *skip = (nn_act *)skip_in; /* nn_act_view5 may convert an exotic layout in place */
    nn_view5 vx, vs;
    if (skip->borrowed && nn_view5_of(&skip->md, skip->n, skip->c, skip->h, skip->w, &vs))
        return 1; /* a borrowed buffer cannot be converted in place */
    if (!l->bilinear || nn_act_view5(ctx, x, &vx, e) || nn_act_view5(ctx, skip, &vs, e))
        return l->bilinear ? -1 : 1;
    const int n = x->n, h = 2 * x->h, w = 2 * x->w, blk = vx.blk;
    if (blk == 1 || vs.blk != blk || x->c % blk || skip->n != n || skip->h != h || skip->w != w)
        return 1; /* not one run of whole channel blocks per image: the caller upsamples and concatenates */
    dnnl_memory_desc_t md = nn_md_blocked(n, x->c + skip->c, h, w, blk);
    if (nn_act_reserve(y, n, x->c + skip->c, h, w, &md, e))
        return -1;
    nn_view5 vy;
    nn_view5_of(&md, n, x->c + skip->c, h, w, &vy);
    if (bilinear_forward(y->data, &vy, x->data, &vx, vy.cb, 0))
        return nn_errf(e, "out of memory");
    /* the skip's blocks after the upsampled ones, image by image */
    const size_t up = (size_t)vx.cb * h * w * blk, sk = (size_t)vs.cb * h * w * blk, per = up + sk;
    for (int i = 0; i < n; i++)
        if (skip->data + i * sk != y->data + i * per + up) /* not already in place (nn_act_borrow) */
            nn_par_copy(y->data + i * per + up, skip->data + i * sk, sk);
    y->valid = 1;
    return 0;
}
