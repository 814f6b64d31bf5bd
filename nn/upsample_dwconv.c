/* Fused bilinear x2 upsampling + depthwise (or two-inputs-per-output) 3x3 convolution: see
 * upsample_dwconv.h.
 *
 * Rows of the upsampled map are kept with one zero block on each side (the convolution's padding
 * columns), so the 3x3 taps of output column c read columns c, c + 1, c + 2 of a padded row. */
#include "nn/upsample_dwconv.h"

#include <immintrin.h>
#include <omp.h>
#include <string.h>

#include "nn/bilinear.h"
#include "nn/dnnl_util.h"

/* The kernels use AVX-512 (one 16-channel block per register; the nine taps, their nine sums and
 * the loaded rows all fit the 32 registers): the build's AVX2 version lost to oneDNN's depthwise
 * convolution plus our upsampling. Without AVX-512 at run time (or under valgrind, which hides
 * it) every call is declined and the nets take the two steps. */
#define AVX512 __attribute__((target("avx512f")))

/* What the kernel takes: 0 nothing, KERNEL_DW a depthwise 3x3 conv, KERNEL_PAIR a grouped 3x3 conv
 * with two inputs per output (groups = out = in / 2, out a multiple of 16): a depthwise conv over
 * the inputs whose outputs are summed in adjacent pairs (PyTorch's [out, 2, 3, 3] weights are
 * [in, 1, 3, 3] in memory). Everything but the switch: the backward of a fused forward must not
 * depend on it. */
enum { KERNEL_DW = 1, KERNEL_PAIR = 2 };

static int kernel_fits(const nn_conv2d *l, const nn_act *x)
{
    const nn_conv_shape *g = &l->geo;
    nn_view5 v;
    if (!(g->kh == 3 && g->kw == 3 && g->sh == 1 && g->sw == 1 && g->ph == 1 && g->pw == 1 &&
          g->pad_mode == NN_PAD_ZERO && l->weight.data && x->c == g->cin &&
          nn_view5_of(&x->md, x->n, x->c, x->h, x->w, &v) == 0 && v.blk == 16 && nn_cpu_has_avx512()))
        return 0;
    if (g->groups == g->cin && g->cout == g->cin)
        return KERNEL_DW;
    if (g->groups == g->cout && g->cin == 2 * g->cout && g->cout % 16 == 0)
        return KERNEL_PAIR;
    return 0;
}

int nn_upsample_dwconv_applies(const nn_conv2d *l, const nn_act *x) { return kernel_fits(l, x) && nn_fused_enabled(); }

/* A padded row of W + 2 blocks: its two border blocks zeroed, or all of it when row r is outside
 * the image (then returns 1: nothing left to fill). */
AVX512 static int padded_row_border(float *u, int H, int W, int r)
{
    const __m512 zero = _mm512_setzero_ps();
    if (r < 0 || r >= H) {
        for (int c = 0; c < W + 2; c++)
            _mm512_storeu_ps(u + (size_t)c * 16, zero);
        return 1;
    }
    _mm512_storeu_ps(u, zero);
    _mm512_storeu_ps(u + (size_t)(W + 1) * 16, zero);
    return 0;
}

/* A padded upsampled row r (of H = 2h) of one plane x (h x w x 16) into u: zero blocks at columns
 * -1 and W, or all zero outside the image. PyTorch's arithmetic order per element. */
AVX512 static void padded_up_row(const float *xp, int h, int w, int r, const col_coord *cc, float *u)
{
    const int H = 2 * h, W = 2 * w;
    if (padded_row_border(u, H, W, r))
        return;
    int h0, h1;
    float lh;
    ac_coord(r, h, H, &h0, &h1, &lh);
    const float *x0 = xp + (size_t)h0 * w * 16, *x1 = xp + (size_t)h1 * w * 16;
    const __m512 kl = _mm512_set1_ps(lh), kl1 = _mm512_set1_ps(1 - lh);
    for (int c = 0; c < W; c++) {
        const __m512 lw = _mm512_set1_ps(cc[c].lw), lw1 = _mm512_set1_ps(1 - cc[c].lw);
        const size_t o0 = (size_t)cc[c].w0 * 16, o1 = (size_t)cc[c].w1 * 16;
        const __m512 top = _mm512_fmadd_ps(lw, _mm512_loadu_ps(x0 + o1), _mm512_mul_ps(lw1, _mm512_loadu_ps(x0 + o0)));
        const __m512 bot = _mm512_fmadd_ps(lw, _mm512_loadu_ps(x1 + o1), _mm512_mul_ps(lw1, _mm512_loadu_ps(x1 + o0)));
        _mm512_storeu_ps(u + (size_t)(c + 1) * 16, _mm512_fmadd_ps(kl, bot, _mm512_mul_ps(kl1, top)));
    }
}

/* Output rows [r0, r1) of one plane into yp (row r0 first, rows W blocks apart); wt: [9][16] taps
 * of this block's channels, bias [16]. */
AVX512 static void fwd_band(const float *xp, float *yp, const float *wt, const float *bias, int h, int w, int r0,
                            int r1, const col_coord *cc, float *buf)
{
    const int W = 2 * w;
    const size_t stride = (size_t)(W + 2) * 16;
    for (int rr = r0 - 1; rr <= r1; rr++)
        padded_up_row(xp, h, w, rr, cc, buf + (size_t)(rr - r0 + 1) * stride);
    __m512 k[9];
    for (int q = 0; q < 9; q++)
        k[q] = _mm512_loadu_ps(wt + q * 16);
    const __m512 bv = _mm512_loadu_ps(bias);
    for (int r = r0; r < r1; r++) {
        const float *u0 = buf + (size_t)(r - r0) * stride, *u1 = u0 + stride, *u2 = u1 + stride;
        float *yr = yp + (size_t)(r - r0) * W * 16;
        for (int c = 0; c < W; c++) {
            const size_t o = (size_t)c * 16;
            __m512 a = _mm512_fmadd_ps(k[0], _mm512_loadu_ps(u0 + o), bv);
            a = _mm512_fmadd_ps(k[1], _mm512_loadu_ps(u0 + o + 16), a);
            a = _mm512_fmadd_ps(k[2], _mm512_loadu_ps(u0 + o + 32), a);
            a = _mm512_fmadd_ps(k[3], _mm512_loadu_ps(u1 + o), a);
            a = _mm512_fmadd_ps(k[4], _mm512_loadu_ps(u1 + o + 16), a);
            a = _mm512_fmadd_ps(k[5], _mm512_loadu_ps(u1 + o + 32), a);
            a = _mm512_fmadd_ps(k[6], _mm512_loadu_ps(u2 + o), a);
            a = _mm512_fmadd_ps(k[7], _mm512_loadu_ps(u2 + o + 16), a);
            a = _mm512_fmadd_ps(k[8], _mm512_loadu_ps(u2 + o + 32), a);
            _mm512_storeu_ps(yr + o, a);
        }
    }
}

/* Input block cb's taps [9][16] and bias [16] (zero for padding channels; in a pair conv the bias
 * is added after the pair sums). */
static void block_params(const nn_conv2d *l, int mode, int cb, float *wt, float *bias)
{
    const int C = l->geo.cin;
    for (int b = 0; b < 16; b++) {
        const int c = cb * 16 + b;
        for (int k = 0; k < 9; k++)
            wt[k * 16 + b] = c < C ? l->weight.data[(size_t)c * 9 + k] : 0.0f;
        bias[b] = c < C && l->geo.has_bias && mode == KERNEL_DW ? l->bias.data[c] : 0.0f;
    }
}

/* Output block ob of a pair conv from the depthwise outputs of input blocks 2 ob (a) and 2 ob + 1
 * (b): lane j of the output sums lanes 2j and 2j + 1 of a (j < 8), or of b (j >= 8). */
AVX512 static void pair_sum(const float *a, const float *b, const float *bias, float *y, size_t pixels)
{
    const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i od = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    const __m512 bv = _mm512_loadu_ps(bias);
    for (size_t i = 0; i < pixels * 16; i += 16) {
        const __m512 va = _mm512_loadu_ps(a + i), vb = _mm512_loadu_ps(b + i);
        const __m512 s = _mm512_add_ps(_mm512_permutex2var_ps(va, ev, vb), _mm512_permutex2var_ps(va, od, vb));
        _mm512_storeu_ps(y + i, _mm512_add_ps(s, bv));
    }
}

#define BAND 8 /* output rows per forward task */

int nn_upsample_dwconv_forward(nn_ctx *ctx, nn_conv2d *l, const nn_act *x, nn_act *y, nn_err *e)
{
    const int mode = kernel_fits(l, x);
    if (!mode || !nn_fused_enabled())
        return 1;
    nn_view5 vx;
    nn_view5_of(&x->md, x->n, x->c, x->h, x->w, &vx);
    const int n = x->n, h = x->h, w = x->w, H = 2 * h, W = 2 * w, blk = vx.blk, cb = vx.cb;
    const int co = l->geo.cout, ocb = (co + blk - 1) / blk; /* output blocks */
    dnnl_memory_desc_t md = nn_md_blocked(n, co, H, W, blk);
    if (nn_act_reserve(y, n, co, H, W, &md, e))
        return -1;
    col_coord *cc = col_coords(w, W);
    const size_t stride = (size_t)(W + 2) * blk, band_out = (size_t)BAND * W * blk;
    /* per thread: the padded upsampled rows, and in a pair conv the two input blocks' outputs */
    const size_t per = (BAND + 2) * stride + (mode == KERNEL_PAIR ? 2 * band_out : 0);
    float *bufs = nn_alloc((size_t)omp_get_max_threads() * per * sizeof(float));
    if (!cc || !bufs) {
        free(cc), nn_free(bufs);
        return nn_errf(e, "upsample+dwconv: out of memory");
    }
    float pair_bias[64 * 16];
    if (mode == KERNEL_PAIR) {
        if (ocb > 64) {
            free(cc), nn_free(bufs);
            return nn_errf(e, "upsample+dwconv: %d output channels, at most 1024", co);
        }
        for (int c = 0; c < ocb * 16; c++)
            pair_bias[c] = c < co && l->geo.has_bias ? l->bias.data[c] : 0.0f;
    }
    const int bands = (H + BAND - 1) / BAND, tasks = n * ocb * bands;
    const size_t xplane = (size_t)h * w * blk, yplane = (size_t)H * W * blk;
#pragma omp parallel for schedule(static)
    for (int t = 0; t < tasks; t++) {
        const int p = t / bands, band = t % bands, r0 = band * BAND, r1 = r0 + BAND < H ? r0 + BAND : H;
        float wt[9 * 16], bias[16];
        float *buf = bufs + (size_t)omp_get_thread_num() * per, *yp = y->data + p * yplane + (size_t)r0 * W * blk;
        if (mode == KERNEL_DW) {
            block_params(l, mode, p % cb, wt, bias);
            fwd_band(x->data + p * xplane, yp, wt, bias, h, w, r0, r1, cc, buf);
            continue;
        }
        const int img = p / ocb, ob = p % ocb;
        float *za = buf + (BAND + 2) * stride, *zb = za + band_out;
        for (int half = 0; half < 2; half++) {
            const int ib = 2 * ob + half;
            block_params(l, mode, ib, wt, bias);
            fwd_band(x->data + ((size_t)img * cb + ib) * xplane, half ? zb : za, wt, bias, h, w, r0, r1, cc, buf);
        }
        pair_sum(za, zb, pair_bias + ob * 16, yp, (size_t)(r1 - r0) * W);
    }
    free(cc);
    nn_free(bufs);
    y->valid = 1;
    return 0;
}

/* Per-thread buffers of the backward: rows of the upsampled map and of dy, padded, three of each
 * (rows r - 1, r, r + 1), the input gradient of the convolution for one row, the column pass of
 * the upsampling's backward, and the plane of dx. */
typedef struct bwd_bufs {
    float *u[3], *g[3], *gup, *t, *dx;
} bwd_bufs;

/* A padded row of dy (zero blocks at columns -1 and W), or zero outside the image. In a pair conv
 * (half 0 or 1) the row is that of the depthwise outputs of one input block: its lane k takes dy's
 * lane 8 half + k / 2 (both inputs of an output share its gradient); otherwise (half -1) dy's. */
AVX512 static void padded_g_row(const float *gp, int H, int W, int r, int half, float *g)
{
    if (padded_row_border(g, H, W, r))
        return;
    const float *src = gp + (size_t)r * W * 16;
    if (half < 0) {
        memcpy(g + 16, src, (size_t)W * 16 * sizeof(float));
        return;
    }
    const __m512i dup = _mm512_add_epi32(_mm512_set1_epi32(8 * half),
                                         _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7));
    for (int c = 0; c < W; c++)
        _mm512_storeu_ps(g + (size_t)(c + 1) * 16, _mm512_permutexvar_ps(dup, _mm512_loadu_ps(src + (size_t)c * 16)));
}

/* The whole plane of one image and input channel block; gp: dy's plane (of the output block that
 * holds this block's outputs in a pair conv, see padded_g_row). dw [9][16] and db [16] accumulate
 * in double. */
AVX512 static void bwd_plane(const float *xp, const float *gp, int half, const float *wt, int h, int w,
                             const col_coord *cc, const col_gather *gt, bwd_bufs *B, int relu_x, int param_grads,
                             double *dw, double *db)
{
    const int H = 2 * h, W = 2 * w;
    const size_t row = (size_t)w * 16;
    float *u[3] = {B->u[0], B->u[1], B->u[2]}, *g[3] = {B->g[0], B->g[1], B->g[2]};
    const __m512 zero = _mm512_setzero_ps();
    for (size_t i = 0; i < (size_t)h * row; i += 16)
        _mm512_storeu_ps(B->dx + i, zero);
    for (int q = 0; q < 3; q++) { /* slot 0: row r - 1, 1: row r, 2: row r + 1 */
        if (param_grads)
            padded_up_row(xp, h, w, q - 1, cc, u[q]);
        padded_g_row(gp, H, W, q - 1, half, g[q]);
    }
    __m512 k[9];
    for (int q = 0; q < 9; q++)
        k[q] = _mm512_loadu_ps(wt + q * 16);
    for (int r = 0; r < H; r++) {
        if (param_grads) { /* dw += dy (x) up, db += dy, over this row */
            __m512 ra[9], rb = zero;
            for (int q = 0; q < 9; q++)
                ra[q] = zero;
            const float *g1 = g[1] + 16, *v0 = u[0], *v1 = u[1], *v2 = u[2];
            for (int c = 0; c < W; c++) {
                const size_t o = (size_t)c * 16;
                const __m512 gv = _mm512_loadu_ps(g1 + o);
                rb = _mm512_add_ps(rb, gv);
                ra[0] = _mm512_fmadd_ps(gv, _mm512_loadu_ps(v0 + o), ra[0]);
                ra[1] = _mm512_fmadd_ps(gv, _mm512_loadu_ps(v0 + o + 16), ra[1]);
                ra[2] = _mm512_fmadd_ps(gv, _mm512_loadu_ps(v0 + o + 32), ra[2]);
                ra[3] = _mm512_fmadd_ps(gv, _mm512_loadu_ps(v1 + o), ra[3]);
                ra[4] = _mm512_fmadd_ps(gv, _mm512_loadu_ps(v1 + o + 16), ra[4]);
                ra[5] = _mm512_fmadd_ps(gv, _mm512_loadu_ps(v1 + o + 32), ra[5]);
                ra[6] = _mm512_fmadd_ps(gv, _mm512_loadu_ps(v2 + o), ra[6]);
                ra[7] = _mm512_fmadd_ps(gv, _mm512_loadu_ps(v2 + o + 16), ra[7]);
                ra[8] = _mm512_fmadd_ps(gv, _mm512_loadu_ps(v2 + o + 32), ra[8]);
            }
            float t16[16];
            for (int q = 0; q < 9; q++) {
                _mm512_storeu_ps(t16, ra[q]);
                for (int b = 0; b < 16; b++)
                    dw[q * 16 + b] += t16[b];
            }
            _mm512_storeu_ps(t16, rb);
            for (int b = 0; b < 16; b++)
                db[b] += t16[b];
        }
        /* the convolution's input gradient at row r: taps flipped, dy rows r + 1, r, r - 1 */
        const float *e0 = g[0], *e1 = g[1], *e2 = g[2];
        for (int c = 0; c < W; c++) {
            const size_t o = (size_t)c * 16;
            __m512 a = _mm512_mul_ps(k[0], _mm512_loadu_ps(e2 + o + 32));
            a = _mm512_fmadd_ps(k[1], _mm512_loadu_ps(e2 + o + 16), a);
            a = _mm512_fmadd_ps(k[2], _mm512_loadu_ps(e2 + o), a);
            a = _mm512_fmadd_ps(k[3], _mm512_loadu_ps(e1 + o + 32), a);
            a = _mm512_fmadd_ps(k[4], _mm512_loadu_ps(e1 + o + 16), a);
            a = _mm512_fmadd_ps(k[5], _mm512_loadu_ps(e1 + o), a);
            a = _mm512_fmadd_ps(k[6], _mm512_loadu_ps(e0 + o + 32), a);
            a = _mm512_fmadd_ps(k[7], _mm512_loadu_ps(e0 + o + 16), a);
            a = _mm512_fmadd_ps(k[8], _mm512_loadu_ps(e0 + o), a);
            _mm512_storeu_ps(B->gup + o, a);
        }
        /* back through the upsampling: columns gathered into t, then t into the two input rows */
        for (int wi = 0; wi < w; wi++) {
            __m512 acc = zero;
            for (int q = 0; q < gt->cnt[wi]; q++)
                acc = _mm512_fmadd_ps(_mm512_set1_ps(gt->wt[(size_t)q * w + wi]),
                                      _mm512_loadu_ps(B->gup + (size_t)gt->idx[(size_t)q * w + wi] * 16), acc);
            _mm512_storeu_ps(B->t + (size_t)wi * 16, acc);
        }
        int h0, h1;
        float lh;
        ac_coord(r, h, H, &h0, &h1, &lh);
        float *d0 = B->dx + (size_t)h0 * row, *d1 = B->dx + (size_t)h1 * row;
        const __m512 k0 = _mm512_set1_ps(1 - lh), k1 = _mm512_set1_ps(lh);
        for (size_t i = 0; i < row; i += 16) {
            const __m512 t = _mm512_loadu_ps(B->t + i);
            if (d0 == d1) {
                _mm512_storeu_ps(d0 + i, _mm512_add_ps(_mm512_loadu_ps(d0 + i),
                                                       _mm512_add_ps(_mm512_mul_ps(k0, t), _mm512_mul_ps(k1, t))));
            } else {
                _mm512_storeu_ps(d0 + i, _mm512_fmadd_ps(k0, t, _mm512_loadu_ps(d0 + i)));
                _mm512_storeu_ps(d1 + i, _mm512_fmadd_ps(k1, t, _mm512_loadu_ps(d1 + i)));
            }
        }
        /* advance: rows r, r + 1, r + 2 */
        float *fu = u[0], *fg = g[0];
        u[0] = u[1], u[1] = u[2], u[2] = fu;
        g[0] = g[1], g[1] = g[2], g[2] = fg;
        if (param_grads)
            padded_up_row(xp, h, w, r + 2, cc, u[2]);
        padded_g_row(gp, H, W, r + 2, half, g[2]);
    }
    if (relu_x)
        for (size_t i = 0; i < (size_t)h * row; i += 16) {
            const __mmask16 m = _mm512_cmp_ps_mask(_mm512_loadu_ps(xp + i), zero, _CMP_GT_OQ);
            _mm512_storeu_ps(B->dx + i, _mm512_maskz_mov_ps(m, _mm512_loadu_ps(B->dx + i)));
        }
}

int nn_upsample_dwconv_backward(nn_ctx *ctx, nn_conv2d *l, const nn_act *x, const nn_act *dy, nn_act *dx, int relu_x,
                                int param_grads, nn_err *e)
{
    const int mode = kernel_fits(l, x);
    if (!mode)
        return 1;
    nn_view5 vx, vy;
    nn_view5_of(&x->md, x->n, x->c, x->h, x->w, &vx);
    const int n = x->n, C = x->c, h = x->h, w = x->w, H = 2 * h, W = 2 * w, blk = vx.blk, cb = vx.cb;
    const int co = l->geo.cout, ocb = (co + blk - 1) / blk;
    if (dy->n != n || dy->c != co || dy->h != H || dy->w != W)
        return nn_errf(e, "upsample+dwconv: output gradient [%d, %d, %d, %d] does not match the output [%d, %d, %d, %d]",
                       dy->n, dy->c, dy->h, dy->w, n, co, H, W);
    if (param_grads && !l->dweight.data)
        return nn_errf(e, "upsample+dwconv: weight gradients of a layer whose weights were released");
    /* dy in x's blocking */
    const float *d = dy->data;
    if (nn_view5_of(&dy->md, n, co, H, W, &vy) || vy.blk != blk) {
        dnnl_memory_desc_t md = nn_md_blocked(n, co, H, W, blk);
        float *buf = nn_ctx_scratch(ctx, nn_md_bytes(&md), e);
        if (!buf || nn_reorder(ctx, &dy->md, dy->data, &md, buf, e))
            return -1;
        d = buf;
    }
    /* dx in x's layout: written straight, or added in place (from the per-thread plane) */
    int add = dx->valid;
    if (add && (dx->n != n || dx->c != C || dx->h != h || dx->w != w))
        return nn_errf(e, "gradient shape mismatch: [%d, %d, %d, %d] into [%d, %d, %d, %d]", n, C, h, w, dx->n, dx->c,
                       dx->h, dx->w);
    nn_act *out = dx;
    float *tmp = NULL;
    if (add && !nn_md_equal(&dx->md, &x->md)) { /* added after, through a layout conversion */
        if (!(tmp = nn_ctx_tmp(ctx, nn_md_bytes(&x->md), e)))
            return -1;
        add = 0;
        out = NULL;
    } else if (!add && nn_act_reserve(dx, n, C, h, w, &x->md, e)) {
        return -1;
    }
    float *dst = out ? out->data : tmp;
    col_coord *cc = col_coords(w, W);
    col_gather gtab = {0};
    const int threads = omp_get_max_threads();
    const size_t stride = (size_t)(W + 2) * blk, row = (size_t)w * blk, xplane = (size_t)h * row;
    const size_t per = 6 * stride + (size_t)W * blk + row + (add ? xplane : 0); /* dx's plane when adding */
    float *bufs = nn_alloc((size_t)threads * per * sizeof(float));
    const int tasks = n * cb;
    double *part = nn_alloc((size_t)tasks * 10 * 16 * sizeof(double)); /* dw [9][16], db [16] */
    if (!cc || !bufs || !part || col_gather_make(&gtab, cc, w, W)) {
        free(cc), nn_free(bufs), nn_free(part), col_gather_free(&gtab);
        return nn_errf(e, "upsample+dwconv: out of memory");
    }
#pragma omp parallel for schedule(static)
    for (int p = 0; p < tasks; p++) {
        float wt[9 * 16], bias[16];
        block_params(l, mode, p % cb, wt, bias);
        float *base = bufs + (size_t)omp_get_thread_num() * per;
        float *o = dst + p * xplane;
        bwd_bufs B = {{base, base + stride, base + 2 * stride},
                      {base + 3 * stride, base + 4 * stride, base + 5 * stride},
                      base + 6 * stride,
                      base + 6 * stride + (size_t)W * blk,
                      add ? base + 6 * stride + (size_t)W * blk + row : o}; /* dx: straight into place */
        double *dw = part + (size_t)p * 10 * 16, *db = dw + 9 * 16;
        memset(dw, 0, 10 * 16 * sizeof(double));
        const int gplane = mode == KERNEL_PAIR ? p / cb * ocb + p % cb / 2 : p;
        const float *xp = x->data + p * xplane, *gp = d + gplane * (size_t)H * W * blk;
        bwd_plane(xp, gp, mode == KERNEL_PAIR ? p % cb % 2 : -1, wt, h, w, cc, &gtab, &B, relu_x, param_grads, dw, db);
        if (add)
            for (size_t i = 0; i < xplane; i++)
                o[i] += B.dx[i];
    }
    if (param_grads) /* over the images, in order */
        for (int c = 0; c < C; c++) {
            const int q = c / blk, b = c % blk;
            double sw[9] = {0}, sb = 0;
            for (int i = 0; i < n; i++) {
                const double *dw = part + ((size_t)i * cb + q) * 10 * 16;
                for (int k = 0; k < 9; k++)
                    sw[k] += dw[k * 16 + b];
                sb += dw[9 * 16 + b];
            }
            for (int k = 0; k < 9; k++)
                l->dweight.data[(size_t)c * 9 + k] += (float)sw[k];
            /* a pair conv's output c / 2 has both inputs' sums of its dy: the even one's is taken */
            if (l->geo.has_bias && (mode == KERNEL_DW || c % 2 == 0))
                l->dbias.data[mode == KERNEL_DW ? c : c / 2] += (float)sb;
        }
    free(cc), nn_free(bufs), nn_free(part), col_gather_free(&gtab);
    if (out) {
        dx->valid = 1;
        return 0;
    }
    return nn_act_accumulate(ctx, dx, &x->md, tmp, n, C, h, w, e);
}
