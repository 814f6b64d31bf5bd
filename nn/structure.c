/* Channel concatenation, elementwise add and 2-D padding (zero or reflection), as our own
 * OpenMP kernels over plain NCHW or channel-blocked (nChw8c / nChw16c) layouts. */
#include <string.h>

#include "nn/dnnl_util.h"

/* Stores g into acc or adds it, following the gradient `valid` rule. g may be ctx tmp. */
static int give_grad(nn_ctx *ctx, nn_act *acc, const dnnl_memory_desc_t *md, const float *g, int n, int c, int h,
                     int w, nn_err *e)
{
    return nn_act_accumulate(ctx, acc, md, g, n, c, h, w, e);
}

/* memcpy of n floats split over the threads: a concatenation's copies are a few MB each, and one
 * thread copying while the other waits was 3% of a PGN-arm DIP step. */
void nn_par_copy(float *dst, const float *src, size_t n)
{
    const size_t chunk = 16384;
    if (n < 4 * chunk) {
        memcpy(dst, src, n * sizeof(float));
        return;
    }
    const long nch = (long)((n + chunk - 1) / chunk);
#pragma omp parallel for schedule(static)
    for (long i = 0; i < nch; i++) {
        size_t at = (size_t)i * chunk, len = at + chunk <= n ? chunk : n - at;
        memcpy(dst + at, src + at, len * sizeof(float));
    }
}

/* Copies a whole [n][cb][h][w][blk] chunk per sample when the block layout allows it. */
static int concat_blocked_ok(const nn_view5 *va, const nn_view5 *vb)
{
    return va->blk == vb->blk && (va->blk == 1 || va->c % va->blk == 0);
}

int nn_concat_forward(nn_ctx *ctx, const nn_act *a_in, const nn_act *b_in, nn_act *y, nn_err *e)
{
    if (a_in->n != b_in->n || a_in->h != b_in->h || a_in->w != b_in->w)
        return nn_errf(e, "concat: [%d, %d, %d, %d] and [%d, %d, %d, %d] differ outside the channels", a_in->n,
                       a_in->c, a_in->h, a_in->w, b_in->n, b_in->c, b_in->h, b_in->w);
    nn_act *a = (nn_act *)a_in, *b = (nn_act *)b_in;
    nn_view5 va, vb;
    if (nn_act_view5(ctx, a, &va, e) || nn_act_view5(ctx, b, &vb, e))
        return -1;
    if (!concat_blocked_ok(&va, &vb)) {
        dnnl_memory_desc_t pa = nn_md_nchw(a->n, a->c, a->h, a->w), pb = nn_md_nchw(b->n, b->c, b->h, b->w);
        if (nn_act_convert(ctx, a, &pa, e) || nn_act_convert(ctx, b, &pb, e))
            return -1;
        nn_view5_of(&a->md, a->n, a->c, a->h, a->w, &va);
        nn_view5_of(&b->md, b->n, b->c, b->h, b->w, &vb);
    }
    int c = a->c + b->c;
    dnnl_memory_desc_t md = nn_md_blocked(a->n, c, a->h, a->w, va.blk);
    if (nn_act_reserve(y, a->n, c, a->h, a->w, &md, e))
        return -1;
    size_t sa = (size_t)va.cb * va.h * va.w * va.blk, sb = (size_t)vb.cb * vb.h * vb.w * vb.blk;
    size_t sy = nn_md_bytes(&md) / sizeof(float) / a->n;
    for (int n = 0; n < a->n; n++) {
        nn_par_copy(y->data + n * sy, a->data + n * sa, sa);
        nn_par_copy(y->data + n * sy + sa, b->data + n * sb, sb);
    }
    y->valid = 1;
    return 0;
}

int nn_concat_backward(nn_ctx *ctx, const nn_act *dy_in, int ca, nn_act *da, nn_act *db, nn_err *e)
{
    int cb = dy_in->c - ca;
    if (ca <= 0 || cb <= 0)
        return nn_errf(e, "concat backward: cannot split %d channels at %d", dy_in->c, ca);
    nn_act *dy = (nn_act *)dy_in;
    nn_view5 vy;
    if (nn_act_view5(ctx, dy, &vy, e))
        return -1;
    if (vy.blk > 1 && ca % vy.blk) {
        dnnl_memory_desc_t plain = nn_md_nchw(dy->n, dy->c, dy->h, dy->w);
        if (nn_act_convert(ctx, dy, &plain, e))
            return -1;
        nn_view5_of(&dy->md, dy->n, dy->c, dy->h, dy->w, &vy);
    }
    int n = dy->n, h = dy->h, w = dy->w;
    dnnl_memory_desc_t ma = nn_md_blocked(n, ca, h, w, vy.blk), mb = nn_md_blocked(n, cb, h, w, vy.blk);
    size_t sa = nn_md_bytes(&ma) / sizeof(float) / n, sb = nn_md_bytes(&mb) / sizeof(float) / n;
    size_t sy = nn_md_bytes(&dy->md) / sizeof(float) / n;
    for (int part = 0; part < 2; part++) {
        nn_act *d = part ? db : da;
        if (!d)
            continue;
        size_t s = part ? sb : sa, off = part ? sa : 0;
        float *g = nn_ctx_tmp(ctx, s * n * sizeof(float), e);
        if (!g)
            return -1;
        for (int i = 0; i < n; i++)
            nn_par_copy(g + i * s, dy->data + i * sy + off, s);
        if (give_grad(ctx, d, part ? &mb : &ma, g, n, part ? cb : ca, h, w, e))
            return -1;
    }
    return 0;
}

int nn_add_forward(nn_ctx *ctx, const nn_act *a, const nn_act *b, nn_act *y, nn_err *e)
{
    if (a->n != b->n || a->c != b->c || a->h != b->h || a->w != b->w)
        return nn_errf(e, "add: shapes [%d, %d, %d, %d] and [%d, %d, %d, %d] differ", a->n, a->c, a->h, a->w, b->n,
                       b->c, b->h, b->w);
    const float *bd = b->data;
    if (!nn_md_equal(&a->md, &b->md)) {
        float *t = nn_ctx_tmp(ctx, nn_md_bytes(&a->md), e);
        if (!t || nn_reorder(ctx, &b->md, b->data, &a->md, t, e))
            return -1;
        bd = t;
    }
    if (y != a && nn_act_reserve(y, a->n, a->c, a->h, a->w, &a->md, e))
        return -1;
    size_t count = nn_md_bytes(&a->md) / sizeof(float);
    const float *ad = a->data;
    float *yd = y->data;
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < count; i++)
        yd[i] = ad[i] + bd[i];
    y->valid = 1;
    return 0;
}

int nn_add_backward(nn_ctx *ctx, const nn_act *dy, nn_act *da, nn_act *db, nn_err *e)
{
    if (da && give_grad(ctx, da, &dy->md, dy->data, dy->n, dy->c, dy->h, dy->w, e))
        return -1;
    if (db && give_grad(ctx, db, &dy->md, dy->data, dy->n, dy->c, dy->h, dy->w, e))
        return -1;
    return 0;
}

/* Index of padded coordinate i (may be negative or >= n) in the source, or -1 for zero padding. */
static inline int pad_src(int i, int n, int mode)
{
    if (i >= 0 && i < n)
        return i;
    if (mode != NN_PAD_REFLECT)
        return -1;
    return i < 0 ? -i : 2 * (n - 1) - i;
}

int nn_pad2d_forward(nn_ctx *ctx, const nn_act *x_in, nn_act *y, int ph, int pw, int mode, nn_err *e)
{
    if (mode == NN_PAD_REFLECT && (ph >= x_in->h || pw >= x_in->w))
        return nn_errf(e, "reflection padding %dx%d needs an input larger than %dx%d", ph, pw, x_in->h, x_in->w);
    nn_act *x = (nn_act *)x_in;
    nn_view5 vx;
    if (nn_act_view5(ctx, x, &vx, e))
        return -1;
    int oh = x->h + 2 * ph, ow = x->w + 2 * pw, blk = vx.blk;
    dnnl_memory_desc_t md = nn_md_blocked(x->n, x->c, oh, ow, blk);
    if (nn_act_reserve(y, x->n, x->c, oh, ow, &md, e))
        return -1;
    float *yd = y->data;
    const float *xd = x->data;
#pragma omp parallel for collapse(2) schedule(static)
    for (int nc = 0; nc < vx.n * vx.cb; nc++)
        for (int i = 0; i < oh; i++) {
            int si = pad_src(i - ph, x->h, mode);
            float *yr = yd + ((size_t)nc * oh + i) * ow * blk;
            for (int j = 0; j < ow; j++) {
                int sj = pad_src(j - pw, x->w, mode);
                for (int b = 0; b < blk; b++)
                    yr[j * blk + b] = (si < 0 || sj < 0) ? 0.0f : xd[(((size_t)nc * x->h + si) * x->w + sj) * blk + b];
            }
        }
    y->valid = 1;
    return 0;
}

int nn_pad2d_backward(nn_ctx *ctx, const nn_act *dy_in, nn_act *dx, int ph, int pw, int mode, nn_err *e)
{
    nn_act *dy = (nn_act *)dy_in;
    nn_view5 vy;
    if (nn_act_view5(ctx, dy, &vy, e))
        return -1;
    int h = dy->h - 2 * ph, w = dy->w - 2 * pw, blk = vy.blk;
    dnnl_memory_desc_t md = nn_md_blocked(dy->n, dy->c, h, w, blk);
    float *g = nn_ctx_tmp(ctx, nn_md_bytes(&md), e);
    if (!g)
        return -1;
    const float *gy = dy->data;
    size_t plane = (size_t)h * w * blk;
    /* One (n, channel block) plane per iteration: reflected rows fold onto the same plane only. */
#pragma omp parallel for schedule(static)
    for (int nc = 0; nc < vy.n * vy.cb; nc++) {
        float *d = g + nc * plane;
        memset(d, 0, plane * sizeof(float));
        for (int i = 0; i < dy->h; i++) {
            int si = pad_src(i - ph, h, mode);
            if (si < 0)
                continue;
            const float *r = gy + ((size_t)nc * dy->h + i) * dy->w * blk;
            for (int j = 0; j < dy->w; j++) {
                int sj = pad_src(j - pw, w, mode);
                if (sj < 0)
                    continue;
                for (int b = 0; b < blk; b++)
                    d[((size_t)si * w + sj) * blk + b] += r[j * blk + b];
            }
        }
    }
    return give_grad(ctx, dx, &md, g, dy->n, dy->c, h, w, e);
}
