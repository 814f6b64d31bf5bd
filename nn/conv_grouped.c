/* Grouped convolutions with few channels per group on our own OpenMP kernels (see conv_grouped.h).
 *
 * Every pass reads its inputs through zero-padded copies of input rows, made per task in a
 * per-thread buffer straight from the input's layout (plain NCHW or channel-blocked): the inner
 * loops are branch-free and contiguous, and vectorise along W (gcc, omp simd).
 *
 * Flat rows: the padded input rows are ld = ow + (kw - 1) / sw floats apart, and split into phases
 * when strided (row phase ih % sh, column phase iw % sw), so that tap (a, b) of output (r, i) sits at
 * a fixed offset from r * ld + i. One flat loop then runs over a whole block of output rows (no
 * per-row overhead however narrow the image), computing ld - ow throwaway columns per row that the
 * copy-out (bias, activation, store-or-add) skips.
 *
 *  forward           a grouped correlation; tasks (image, group, block of output rows), each writes
 *                    its own rows of y.
 *  backward-data     stride 1: the correlation of dy with the kernel flipped and transposed (padding
 *                    k - 1 - p). Stride s: s * s stride-1 correlations, one per output phase
 *                    (ih % s, iw % s), each with the taps that reach that phase.
 *  backward-weights  tasks (group, block of output channels), each owns its rows of dw; per chunk
 *                    (several small images, or a block of rows of a large one) and tap, a sum over
 *                    the flat rows in vector registers (dy is zero in the throwaway columns), added
 *                    up over the chunks in double.
 * Small images are batched (image blocks stacked in the flat layout) so that a task is not all
 * overhead; a task's padded input stays within a few hundred KiB whatever the image size.
 * No atomics; each result's summation order is fixed by the shape (not by the thread count). */
#include "nn/conv_grouped.h"

#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static int enabled = -1; /* -1: not decided yet */

int nn_convg_enabled(void) { return nn_env_switch(&enabled, "PGND_GROUPED_CONV"); }

void nn_convg_set_enabled(int on) { nn_env_switch_set(&enabled, on); }

int nn_convg_shape_fits(const nn_conv_shape *g)
{
    if (g->groups < 2 || g->pad_mode != NN_PAD_ZERO)
        return 0;
    int cig = g->cin / g->groups, cog = g->cout / g->groups;
    if (cig == 1 && cog == 1) /* pure depthwise: oneDNN's jit_dw is fast */
        return 0;
    return cig <= NN_CONVG_MAX_CIG && cog <= NN_CONVG_MAX_COG;
}

int nn_convg_applies(const nn_conv_shape *g) { return nn_convg_shape_fits(g) && nn_convg_enabled(); }

static inline size_t round16(size_t v) { return (v + 15) & ~(size_t)15; }
static inline int imin(int a, int b) { return a < b ? a : b; }
static inline int imax(int a, int b) { return a > b ? a : b; }

/* Columns j < len of a padded row that lie in the image: jlo <= j < jhi (j * sw + q - pw in 0 .. w - 1). */
static inline void row_span(int w, int sw, int q, int pw, int len, int *jlo, int *jhi)
{
    int lo = pw - q > 0 ? (pw - q + sw - 1) / sw : 0;
    int num = w - 1 + pw - q;
    *jhi = imin(num >= 0 ? num / sw + 1 : 0, len);
    *jlo = imin(lo, *jhi);
}

/* The padded input rows of channels c0 .. c0 + nc - 1 (channel k at dst + k * cstride) of images
 * n0 .. n0 + nb - 1 that output rows from oh0 on read (ih0 = oh0 * sh - ph), split into phases: row
 * phase p (rows ih0 + p + sh * r, r < rp) and column phase q (columns j * sw + q - pw), images
 * stacked within a phase:
 *   dst[(((q * sh + p) * nb + m) * rp + r) * ld + j] = x[n0 + m, c, ih0 + p + sh * r, j * sw + q - pw]
 * for j < len, zero outside the image. Tap (a, b) of output row r, column i of image m is then at
 * TAP_OFF(a, b) + (m * rp + r) * ld + i: one flat index for all images and rows. From a blocked
 * layout each channel is gathered at the block's stride. */
#define FILL_MAX_NC 32

static void fill_block(float *restrict dst, size_t cstride, const float *restrict x, const nn_view5 *v, int n0,
                       int nb, int c0, int nc, int ih0, int sh, int rp, int sw, int pw, int len, size_t ld)
{
    const int blk = v->blk;
    for (int q = 0; q < sw; q++) {
        int jlo, jhi;
        row_span(v->w, sw, q, pw, len, &jlo, &jhi);
        const ptrdiff_t col0 = (ptrdiff_t)jlo * sw + q - pw, step = (ptrdiff_t)sw * blk;
        for (int p = 0; p < sh; p++)
            for (int m = 0; m < nb; m++)
                for (int r = 0; r < rp; r++) {
                    const int ih = ih0 + p + sh * r;
                    float *d = dst + ((((size_t)q * sh + p) * nb + m) * rp + r) * ld;
                    if (ih < 0 || ih >= v->h || jhi == jlo) {
                        for (int k = 0; k < nc; k++)
                            memset(d + k * cstride, 0, (size_t)len * sizeof(float));
                        continue;
                    }
                    for (int k = 0; k < nc; k++) {
                        memset(d + k * cstride, 0, (size_t)jlo * sizeof(float));
                        memset(d + k * cstride + jhi, 0, (size_t)(len - jhi) * sizeof(float));
                    }
                    if (blk == 1) {
                        for (int k = 0; k < nc; k++) {
                            const float *src = x + nn_view5_off(v, n0 + m, c0 + k, ih, 0) + col0;
                            float *restrict dk = d + k * cstride;
                            if (sw == 1)
                                memcpy(dk + jlo, src, (size_t)(jhi - jlo) * sizeof(float));
                            else
                                for (int j = jlo; j < jhi; j++)
                                    dk[j] = src[(j - jlo) * step];
                        }
                        continue;
                    }
                    if (sw == 1 && nc <= FILL_MAX_NC) {
                        /* pixel by pixel, all nc channels from the one cache line that holds them (a
                         * channel at a time would reload every line nc times, at a 64-byte stride) */
                        const float *srck[FILL_MAX_NC];
                        float *dkk[FILL_MAX_NC];
                        for (int k = 0; k < nc; k++) {
                            srck[k] = x + nn_view5_off(v, n0 + m, c0 + k, ih, 0) + col0 * blk;
                            dkk[k] = d + k * cstride + jlo;
                        }
                        const int cnt = jhi - jlo;
                        for (int j = 0; j < cnt; j++)
                            for (int k = 0; k < nc; k++)
                                dkk[k][j] = srck[k][(size_t)j * blk];
                        continue;
                    }
                    for (int k = 0; k < nc; k++) {
                        const float *restrict src = x + nn_view5_off(v, n0 + m, c0 + k, ih, 0) + col0 * blk;
                        float *restrict dk = d + k * cstride + jlo;
                        const int cnt = jhi - jlo;
                        if (sw == 1 && blk == 16) {
#pragma omp simd
                            for (int j = 0; j < cnt; j++)
                                dk[j] = src[j * 16];
                        } else if (sw == 1 && blk == 8) {
#pragma omp simd
                            for (int j = 0; j < cnt; j++)
                                dk[j] = src[j * 8];
                        } else {
                            for (int j = 0; j < cnt; j++)
                                dk[j] = src[j * step];
                        }
                    }
                }
    }
}

/* Offset of tap (a, b) in fill_block's layout (ps = nb * rp * ld, one phase). */
#define TAP_OFF(a, b, sh, sw, ps, ld)                                                                                  \
    ((size_t)(((b) % (sw)) * (sh) + (a) % (sh)) * (ps) + (size_t)((a) / (sh)) * (ld) + (b) / (sw))

/* ------------------------------------------------------------------ correlation kernels */

/* y[j] += sum over taps (a, b) of w[a * kw + b] * x[TAP_OFF(a, b) + j], j < n. */
typedef void corr_fn(float *restrict y, const float *restrict x, size_t ld, size_t ps, const float *restrict w,
                     int n, int kh, int kw, int sh, int sw);

/* Fixed kernel size and stride: the taps of an output summed in a register (weights held in
 * registers where they fit), one load and one store of y per output. */
#define CORR_FIXED(KH, KW, S)                                                                                          \
    static void corr_##KH##x##KW##s##S(float *restrict y, const float *restrict x, size_t ld, size_t ps,             \
                                       const float *restrict w, int n, int kh, int kw, int sh, int sw)               \
    {                                                                                                                  \
        float wr[KH * KW];                                                                                             \
        for (int t = 0; t < KH * KW; t++)                                                                              \
            wr[t] = w[t];                                                                                              \
        _Pragma("omp simd") for (int j = 0; j < n; j++)                                                                \
        {                                                                                                              \
            float acc = 0.0f;                                                                                          \
            _Pragma("GCC unroll 16") for (int a = 0; a < KH; a++)                                                      \
                _Pragma("GCC unroll 16") for (int b = 0; b < KW; b++)                                                  \
                    acc += wr[a * KW + b] * x[TAP_OFF(a, b, S, S, ps, ld) + j];                                        \
            y[j] += acc;                                                                                               \
        }                                                                                                              \
    }
/* stride 1: 3x3, 5x5, 7x7 and the phase kernels of 3x3 / 5x5 stride-2 backward-data */
CORR_FIXED(1, 1, 1)
CORR_FIXED(1, 2, 1)
CORR_FIXED(2, 1, 1)
CORR_FIXED(2, 2, 1)
CORR_FIXED(2, 3, 1)
CORR_FIXED(3, 2, 1)
CORR_FIXED(3, 3, 1)
CORR_FIXED(5, 5, 1)
CORR_FIXED(7, 7, 1)
CORR_FIXED(3, 3, 2)
CORR_FIXED(5, 5, 2)

static void corr_any(float *restrict y, const float *restrict x, size_t ld, size_t ps, const float *restrict w, int n,
                     int kh, int kw, int sh, int sw)
{
    for (int a = 0; a < kh; a++)
        for (int b = 0; b < kw; b++) {
            const float wv = w[a * kw + b];
            const float *restrict xx = x + TAP_OFF(a, b, sh, sw, ps, ld);
#pragma omp simd
            for (int j = 0; j < n; j++)
                y[j] += wv * xx[j];
        }
}

static corr_fn *corr_pick(int kh, int kw, int sh, int sw)
{
    static const struct {
        int kh, kw, s;
        corr_fn *fn;
    } fixed[] = {{1, 1, 1, corr_1x1s1}, {1, 2, 1, corr_1x2s1}, {2, 1, 1, corr_2x1s1}, {2, 2, 1, corr_2x2s1},
                 {2, 3, 1, corr_2x3s1}, {3, 2, 1, corr_3x2s1}, {3, 3, 1, corr_3x3s1}, {5, 5, 1, corr_5x5s1},
                 {7, 7, 1, corr_7x7s1}, {3, 3, 2, corr_3x3s2}, {5, 5, 2, corr_5x5s2}};
    for (size_t i = 0; i < sizeof fixed / sizeof *fixed; i++)
        if (fixed[i].kh == kh && fixed[i].kw == kw && fixed[i].s == sh && fixed[i].s == sw)
            return fixed[i].fn;
    return corr_any;
}

/* ------------------------------------------------------------------ grouped correlation */

/* Input [n, groups * cig, h, w] (any nn_view5 layout); weights [groups * cog, cig, kh, kw]; zero
 * padding ph / pw on the top / left (may be negative; the bottom / right follow from oh, ow).
 * Output element (oh, ow) of plane (n, c) goes to
 *   y[((n * groups * cog + c) * yh + oh * ysy + yry) * yw + ow * ysx + yrx]
 * (plain NCHW: ysy = ysx = 1, yry = yrx = 0, yh = oh, yw = ow). */
typedef struct corr_geo {
    int n, groups, cig, h, w, cog, oh, ow, kh, kw, sh, sw, ph, pw;
    int yh, yw, ysy, ysx, yry, yrx;
} corr_geo;

/* The flat-row geometry of a block of nr output rows: row length ld, rows per phase rp. */
static inline int geo_len(const corr_geo *G) { return G->ow + (G->kw - 1) / G->sw; }
static inline int geo_rp(const corr_geo *G, int nr) { return nr + (G->kh - 1) / G->sh; }

/* v > 0 ? v : neg, by v's sign bit (the same for +-0: neg is then +-0 too): a select gcc vectorises,
 * where the comparison is kept as a branch (it could trap). */
static inline float relu_select(float v, float neg)
{
    int32_t vi, ni, r;
    memcpy(&vi, &v, sizeof vi);
    memcpy(&ni, &neg, sizeof ni);
    const int32_t m = vi >> 31; /* all ones when the sign bit is set */
    r = (vi & ~m) | (ni & m);
    float out;
    memcpy(&out, &r, sizeof out);
    return out;
}

/* One task: rows oh0 .. oh1 - 1 of every output channel of group g, images n0 .. n0 + nb - 1 (nb > 1
 * only with whole images). The rows are computed as one flat run into acc, then copied out. */
static void corr_task(const corr_geo *G, corr_fn *fn, const float *x, const nn_view5 *vx, const float *w,
                      const float *b, int relu, float alpha, float *y, int add, int n0, int nb, int g, int oh0,
                      int oh1, float *xb, float *acc)
{
    const int len = geo_len(G), nr = oh1 - oh0, rp = geo_rp(G, nr), taps = G->kh * G->kw;
    const size_t ld = (size_t)len, ps = (size_t)nb * rp * ld, xplane = (size_t)G->sh * G->sw * ps;
    const int flat = ((nb - 1) * rp + nr - 1) * len + G->ow;
    fill_block(xb, xplane, x, vx, n0, nb, g * G->cig, G->cig, oh0 * G->sh - G->ph, G->sh, rp, G->sw, G->pw, len, ld);
    for (int ocl = 0; ocl < G->cog; ocl++) {
        const int oc = g * G->cog + ocl;
        const float *wo = w + (size_t)oc * G->cig * taps;
        memset(acc, 0, (size_t)flat * sizeof(float));
        for (int ic = 0; ic < G->cig; ic++)
            fn(acc, xb + ic * xplane, ld, ps, wo + ic * taps, flat, G->kh, G->kw, G->sh, G->sw);
        const float b0 = b ? b[oc] : 0.0f;
        for (int m = 0; m < nb; m++) {
            float *plane = y + ((size_t)(n0 + m) * G->groups * G->cog + oc) * G->yh * G->yw;
            for (int r = 0; r < nr; r++) {
                const float *restrict ar = acc + ((size_t)m * rp + r) * ld;
                float *restrict yr = plane + (size_t)((oh0 + r) * G->ysy + G->yry) * G->yw + G->yrx;
                if (G->ysx == 1) {
                    if (add) {
#pragma omp simd
                        for (int i = 0; i < G->ow; i++)
                            yr[i] += ar[i];
                    } else if (relu) {
#pragma omp simd
                        for (int i = 0; i < G->ow; i++) {
                            const float v = ar[i] + b0;
                            yr[i] = relu_select(v, alpha * v);
                        }
                    } else {
#pragma omp simd
                        for (int i = 0; i < G->ow; i++)
                            yr[i] = ar[i] + b0;
                    }
                } else { /* phase outputs of the strided backward-data: no bias, no activation */
                    for (int i = 0; i < G->ow; i++)
                        yr[(size_t)i * G->ysx] = add ? yr[(size_t)i * G->ysx] + ar[i] : ar[i];
                }
            }
        }
    }
}

/* Floats of corr_task's buffers for tasks of nb images x `rows` output rows. */
static size_t corr_floats(const corr_geo *G, int nb, int rows, size_t *acc_floats)
{
    const size_t ld = (size_t)geo_len(G), rp = (size_t)geo_rp(G, rows);
    *acc_floats = round16(((size_t)(nb - 1) * rp + rows) * ld);
    return round16((size_t)G->cig * G->sh * G->sw * nb * rp * ld);
}

/* A task's input within ~128 KiB */
#define CORR_TASK_FLOATS 32768

/* Tasks of nb images x `rows` output rows: enough tasks for the threads (4 per thread), small
 * images batched so that a task is not all overhead. */
static void corr_plan(const corr_geo *G, int threads, int *nb, int *rows)
{
    const long want = 4L * threads, ng = (long)G->n * G->groups;
    size_t acc;
    *nb = 1;
    *rows = G->oh;
    if (ng < want) { /* too few (image, group) pairs: split the rows */
        long split = (want + ng - 1) / ng;
        *rows = (int)((G->oh + split - 1) / split);
    }
    while (*rows > 1 && corr_floats(G, 1, *rows, &acc) > CORR_TASK_FLOATS)
        *rows = (*rows + 1) / 2;
    if (*rows < G->oh)
        return;
    while (*nb < G->n && (long)((G->n + *nb) / (*nb + 1)) * G->groups >= want &&
           corr_floats(G, *nb + 1, *rows, &acc) <= CORR_TASK_FLOATS)
        (*nb)++;
}

static int corr_run(nn_ctx *ctx, const corr_geo *G, const float *x, const nn_view5 *vx, const float *w,
                    const float *b, int relu, float alpha, float *y, int add, nn_err *e)
{
    const int T = omp_get_max_threads();
    int nb, rows;
    corr_plan(G, T, &nb, &rows);
    size_t acc_floats, x_floats = corr_floats(G, nb, rows, &acc_floats);
    const size_t per_thread = x_floats + acc_floats;
    float *work = nn_ctx_tmp(ctx, (size_t)T * per_thread * sizeof(float), e);
    if (!work)
        return -1;
    corr_fn *fn = corr_pick(G->kh, G->kw, G->sh, G->sw);
    const int nrb = (G->oh + rows - 1) / rows, nnb = (G->n + nb - 1) / nb;
    const long ntasks = (long)nnb * G->groups * nrb;
#pragma omp parallel
    {
        float *xb = work + (size_t)omp_get_thread_num() * per_thread;
#pragma omp for schedule(static)
        for (long t = 0; t < ntasks; t++) {
            const int rb = (int)(t % nrb), g = (int)(t / nrb % G->groups), n0 = (int)(t / nrb / G->groups) * nb;
            corr_task(G, fn, x, vx, w, b, relu, alpha, y, add, n0, imin(nb, G->n - n0), g, rb * rows,
                      imin(G->oh, (rb + 1) * rows), xb, xb + x_floats);
        }
    }
    return 0;
}

int nn_convg_forward(nn_ctx *ctx, const nn_conv_shape *s, const float *x, const nn_view5 *vx, const float *w,
                     const float *b, int relu, float alpha, float *y, nn_err *e)
{
    const int oh = nn_conv_oh(s), ow = nn_conv_ow(s);
    corr_geo G = {s->n, s->groups, s->cin / s->groups, s->h, s->w, s->cout / s->groups, oh, ow, s->kh, s->kw,
                  s->sh, s->sw, s->ph, s->pw, oh, ow, 1, 1, 0, 0};
    return corr_run(ctx, &G, x, vx, w, s->has_bias ? b : NULL, relu, alpha, y, 0, e);
}

/* ------------------------------------------------------------------ backward-data */

/* dx[ih, iw] = sum over oc of the group and taps (a, b) with ih + ph - a = sh * oh, iw + pw - b = sw * ow
 * of w[oc, icl, a, b] * dy[oc, oh, ow]. For output phase ih = sh * A + ry: the taps a = a0 + sh * u
 * (a0 = (ry + ph) % sh, u < ua) reach it, from oh = A + cy - u (cy = (ry + ph - a0) / sh), a
 * stride-1 correlation with the flipped taps and top padding ua - 1 - cy. The same for columns.
 * Stride 1 is the single phase (0, 0) with the whole kernel flipped and padding k - 1 - p. */
int nn_convg_backward_data(nn_ctx *ctx, const nn_conv_shape *s, const float *dy, const nn_view5 *vdy,
                           const float *w, float *wt, float *dx, int add, nn_err *e)
{
    const int cig = s->cin / s->groups, cog = s->cout / s->groups, kh = s->kh, kw = s->kw, sh = s->sh, sw = s->sw;
    const int OH = nn_conv_oh(s), OW = nn_conv_ow(s);
    size_t woff = 0;
    for (int ry = 0; ry < sh; ry++)
        for (int rx = 0; rx < sw; rx++) {
            const int a0 = (ry + s->ph) % sh, b0 = (rx + s->pw) % sw;
            const int ua = a0 < kh ? (kh - 1 - a0) / sh + 1 : 0, vb = b0 < kw ? (kw - 1 - b0) / sw + 1 : 0;
            const int cy = (ry + s->ph - a0) / sh, cx = (rx + s->pw - b0) / sw;
            const int HA = ry < s->h ? (s->h - ry + sh - 1) / sh : 0, WB = rx < s->w ? (s->w - rx + sw - 1) / sw : 0;
            if (HA == 0 || WB == 0)
                continue;
            if (ua == 0 || vb == 0) { /* no tap reaches this phase */
                if (!add)
                    for (size_t p = 0; p < (size_t)s->n * s->cin; p++)
                        for (int A = 0; A < HA; A++)
                            for (int B = 0; B < WB; B++)
                                dx[(p * s->h + (size_t)A * sh + ry) * s->w + (size_t)B * sw + rx] = 0.0f;
                continue;
            }
            /* wp[ic, ocl, u', v'] = w[g * cog + ocl, icl, a0 + sh * (ua - 1 - u'), b0 + sw * (vb - 1 - v')] */
            float *wp = wt + woff;
            woff += (size_t)s->cin * cog * ua * vb;
            for (int ic = 0; ic < s->cin; ic++) {
                const int g = ic / cig, icl = ic % cig;
                for (int ocl = 0; ocl < cog; ocl++) {
                    const float *src = w + ((size_t)(g * cog + ocl) * cig + icl) * kh * kw;
                    float *dst = wp + ((size_t)ic * cog + ocl) * ua * vb;
                    for (int u = 0; u < ua; u++)
                        for (int v = 0; v < vb; v++)
                            dst[u * vb + v] = src[(a0 + sh * (ua - 1 - u)) * kw + b0 + sw * (vb - 1 - v)];
                }
            }
            corr_geo G = {s->n, s->groups, cog, OH, OW, cig, HA, WB, ua, vb, 1, 1, ua - 1 - cy, vb - 1 - cx,
                          s->h, s->w,      sh,  sw, ry, rx};
            if (corr_run(ctx, &G, dy, vdy, wp, NULL, 0, 0.0f, dx, add, e))
                return -1;
        }
    return 0;
}

/* ------------------------------------------------------------------ backward-weights */

/* o[a * kw + b] += sum over j < n of d[j] * x[TAP_OFF(a, b) + j] (one image's flat rows; d is zero
 * in the throwaway columns), summed in vector registers. */
typedef void wred_fn(double *restrict o, const float *restrict d, const float *restrict x, size_t ld, size_t ps,
                     int n, int kh, int kw, int sh, int sw);

/* 3x3 stride 1: all nine taps in one pass (one load of d per nine products) */
static void wred_3x3s1(double *restrict o, const float *restrict d, const float *restrict x, size_t ld, size_t ps,
                       int n, int kh, int kw, int sh, int sw)
{
    const float *restrict x0 = x, *restrict x1 = x + ld, *restrict x2 = x + 2 * ld;
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0, s8 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3, s4, s5, s6, s7, s8)
    for (int j = 0; j < n; j++) {
        const float v = d[j];
        s0 += v * x0[j], s1 += v * x0[j + 1], s2 += v * x0[j + 2];
        s3 += v * x1[j], s4 += v * x1[j + 1], s5 += v * x1[j + 2];
        s6 += v * x2[j], s7 += v * x2[j + 1], s8 += v * x2[j + 2];
    }
    o[0] += s0, o[1] += s1, o[2] += s2, o[3] += s3, o[4] += s4, o[5] += s5, o[6] += s6, o[7] += s7, o[8] += s8;
}

/* kernel width 3 or 5, stride S: one kernel row per pass */
#define WRED_ROW3(S)                                                                                                   \
    static void wred_row3s##S(double *restrict o, const float *restrict d, const float *restrict x, size_t ld,       \
                              size_t ps, int n, int kh, int kw, int sh, int sw)                                       \
    {                                                                                                                  \
        for (int a = 0; a < kh; a++) {                                                                                 \
            const float *restrict x0 = x + TAP_OFF(a, 0, S, S, ps, ld);                                                \
            const float *restrict x1 = x + TAP_OFF(a, 1, S, S, ps, ld);                                                \
            const float *restrict x2 = x + TAP_OFF(a, 2, S, S, ps, ld);                                                \
            float s0 = 0, s1 = 0, s2 = 0;                                                                              \
            _Pragma("omp simd reduction(+ : s0, s1, s2)") for (int j = 0; j < n; j++)                                  \
            {                                                                                                          \
                const float v = d[j];                                                                                  \
                s0 += v * x0[j], s1 += v * x1[j], s2 += v * x2[j];                                                     \
            }                                                                                                          \
            o[a * 3] += s0, o[a * 3 + 1] += s1, o[a * 3 + 2] += s2;                                                    \
        }                                                                                                              \
    }
#define WRED_ROW5(S)                                                                                                   \
    static void wred_row5s##S(double *restrict o, const float *restrict d, const float *restrict x, size_t ld,       \
                              size_t ps, int n, int kh, int kw, int sh, int sw)                                       \
    {                                                                                                                  \
        for (int a = 0; a < kh; a++) {                                                                                 \
            const float *restrict x0 = x + TAP_OFF(a, 0, S, S, ps, ld);                                                \
            const float *restrict x1 = x + TAP_OFF(a, 1, S, S, ps, ld);                                                \
            const float *restrict x2 = x + TAP_OFF(a, 2, S, S, ps, ld);                                                \
            const float *restrict x3 = x + TAP_OFF(a, 3, S, S, ps, ld);                                                \
            const float *restrict x4 = x + TAP_OFF(a, 4, S, S, ps, ld);                                                \
            float s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0;                                                              \
            _Pragma("omp simd reduction(+ : s0, s1, s2, s3, s4)") for (int j = 0; j < n; j++)                          \
            {                                                                                                          \
                const float v = d[j];                                                                                  \
                s0 += v * x0[j], s1 += v * x1[j], s2 += v * x2[j], s3 += v * x3[j], s4 += v * x4[j];                   \
            }                                                                                                          \
            o[a * 5] += s0, o[a * 5 + 1] += s1, o[a * 5 + 2] += s2, o[a * 5 + 3] += s3, o[a * 5 + 4] += s4;            \
        }                                                                                                              \
    }
WRED_ROW3(2)
WRED_ROW5(1)
WRED_ROW5(2)

static void wred_any(double *restrict o, const float *restrict d, const float *restrict x, size_t ld, size_t ps,
                     int n, int kh, int kw, int sh, int sw)
{
    for (int a = 0; a < kh; a++)
        for (int b = 0; b < kw; b++) {
            const float *restrict xx = x + TAP_OFF(a, b, sh, sw, ps, ld);
            float s = 0;
#pragma omp simd reduction(+ : s)
            for (int j = 0; j < n; j++)
                s += d[j] * xx[j];
            o[a * kw + b] += s;
        }
}

static wred_fn *wred_pick(int kh, int kw, int sh, int sw)
{
    if (sh != sw || (sh != 1 && sh != 2))
        return wred_any;
    if (kw == 3)
        return sh == 1 ? (kh == 3 ? wred_3x3s1 : wred_any) : wred_row3s2;
    if (kw == 5)
        return sh == 1 ? wred_row5s1 : wred_row5s2;
    return wred_any;
}

/* Chunks of nb whole images, or of `rows` output rows of one image (large images). */
typedef struct wgrad_geo {
    int len, taps, nb, rows, nch, cb;
    size_t ld, xfloats, dfloats, per_thread; /* in floats */
} wgrad_geo;

/* A chunk's input within ~256 KiB */
#define WGRAD_CHUNK_FLOATS 65536

static void wgrad_task(const nn_conv_shape *s, const wgrad_geo *W, wred_fn *red, const float *x, const nn_view5 *vx,
                       const float *dy, const nn_view5 *vdy, float *dw, float *db, int g, int c0, int c1, float *buf)
{
    const int cig = s->cin / s->groups, cog = s->cout / s->groups, OH = nn_conv_oh(s), OW = nn_conv_ow(s);
    const int taps = W->taps, nacc = cig * taps + 1;
    const size_t ld = W->ld;
    float *xb = buf, *drows = buf + W->xfloats;
    double *dacc = (double *)(drows + W->dfloats);
    memset(dacc, 0, (size_t)(c1 - c0) * nacc * sizeof(double));
    for (int n0 = 0; n0 < s->n; n0 += W->nb)
        for (int oh0 = 0; oh0 < OH; oh0 += W->rows) {
            const int nb = imin(W->nb, s->n - n0), nr = imin(W->rows, OH - oh0), rp = nr + (s->kh - 1) / s->sh;
            const int flat = ((nb - 1) * rp + nr - 1) * W->len + OW;
            const size_t ps = (size_t)nb * rp * ld, xplane = (size_t)s->sh * s->sw * ps;
            fill_block(xb, xplane, x, vx, n0, nb, g * cig, cig, oh0 * s->sh - s->ph, s->sh, rp, s->sw, s->pw, W->len,
                       ld);
            for (int ocl = c0; ocl < c1; ocl++) {
                const int oc = g * cog + ocl;
                double *da = dacc + (size_t)(ocl - c0) * nacc;
                /* the chunk's dy as flat rows ld apart, rp rows per image, zero in the throwaway rows and columns */
                float bsum = 0.0f;
                for (int m = 0; m < nb; m++) {
                    for (int r = 0; r < nr; r++) {
                        const float *src = dy + nn_view5_off(vdy, n0 + m, oc, oh0 + r, 0);
                        float *restrict dr = drows + ((size_t)m * rp + r) * ld;
                        if (vdy->blk == 1)
                            memcpy(dr, src, (size_t)OW * sizeof(float));
                        else
                            for (int i = 0; i < OW; i++)
                                dr[i] = src[(size_t)i * vdy->blk];
                        memset(dr + OW, 0, (ld - OW) * sizeof(float));
#pragma omp simd reduction(+ : bsum)
                        for (int i = 0; i < OW; i++)
                            bsum += dr[i];
                    }
                    if (m < nb - 1)
                        memset(drows + ((size_t)m * rp + nr) * ld, 0, (size_t)(rp - nr) * ld * sizeof(float));
                }
                da[cig * taps] += bsum;
                for (int ic = 0; ic < cig; ic++)
                    red(da + ic * taps, drows, xb + ic * xplane, ld, ps, flat, s->kh, s->kw, s->sh, s->sw);
            }
        }
    for (int ocl = c0; ocl < c1; ocl++) {
        const int oc = g * cog + ocl;
        const double *da = dacc + (size_t)(ocl - c0) * nacc;
        for (int k = 0; k < cig * taps; k++)
            dw[(size_t)oc * cig * taps + k] += (float)da[k];
        if (db)
            db[oc] += (float)da[cig * taps];
    }
}

int nn_convg_backward_weights(nn_ctx *ctx, const nn_conv_shape *s, const float *x, const nn_view5 *vx,
                              const float *dy, const nn_view5 *vdy, float *dw, float *db, nn_err *e)
{
    const int T = omp_get_max_threads();
    const int groups = s->groups, cig = s->cin / groups, cog = s->cout / groups, OH = nn_conv_oh(s);
    wgrad_geo W;
    W.len = nn_conv_ow(s) + (s->kw - 1) / s->sw;
    W.ld = (size_t)W.len;
    W.taps = s->kh * s->kw;
    /* input floats of a chunk of one image's rows rows */
#define CHUNK(rows) ((size_t)cig * s->sh * s->sw * ((rows) + (s->kh - 1) / s->sh) * W.ld)
    W.rows = OH;
    while (W.rows > 1 && CHUNK(W.rows) > WGRAD_CHUNK_FLOATS)
        W.rows = (W.rows + 1) / 2;
    W.nb = W.rows < OH ? 1 : imax(1, imin(s->n, (int)(WGRAD_CHUNK_FLOATS / CHUNK(OH))));
    W.xfloats = round16(CHUNK(W.rows) * W.nb);
#undef CHUNK
    W.dfloats = round16((size_t)W.nb * (W.rows + (s->kh - 1) / s->sh) * W.ld);
    /* blocks of output channels: enough tasks for the threads */
    W.nch = groups >= 4 * T ? 1 : imin(cog, (4 * T + groups - 1) / groups);
    W.cb = (cog + W.nch - 1) / W.nch;
    W.nch = (cog + W.cb - 1) / W.cb;
    W.per_thread = W.xfloats + W.dfloats + round16((size_t)W.cb * (cig * W.taps + 1) * 2);
    float *work = nn_ctx_tmp(ctx, (size_t)T * W.per_thread * sizeof(float), e);
    if (!work)
        return -1;
    wred_fn *red = wred_pick(s->kh, s->kw, s->sh, s->sw);
    const long ntasks = (long)groups * W.nch;
#pragma omp parallel
    {
        float *buf = work + (size_t)omp_get_thread_num() * W.per_thread;
#pragma omp for schedule(static)
        for (long t = 0; t < ntasks; t++) {
            const int g = (int)(t / W.nch), c0 = (int)(t % W.nch) * W.cb;
            wgrad_task(s, &W, red, x, vx, dy, vdy, dw, db, g, c0, imin(cog, c0 + W.cb), buf);
        }
    }
    return 0;
}
