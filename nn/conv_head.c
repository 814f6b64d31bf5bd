/* The fused backward of a last 1x1 convolution and the ReLU before it: see conv_head.h. */
#include "nn/conv_head.h"

#include <immintrin.h>
#include <string.h>

#if defined(__AVX2__) && defined(__FMA__)
#define HAVE_KERNEL 1
#else
#define HAVE_KERNEL 0 /* built for a CPU without AVX2 and FMA: every call is declined */
#endif

int nn_conv_head_applies(const nn_conv_shape *g)
{
    return HAVE_KERNEL && g->kh == 1 && g->kw == 1 && g->sh == 1 && g->sw == 1 && g->ph == 0 && g->pw == 0 &&
           g->groups == 1 && g->cout >= 1 && g->cout <= NN_CONV_HEAD_MAX_COUT;
}

#if HAVE_KERNEL

#define MC NN_CONV_HEAD_MAX_COUT

/* One task of a channel-blocked x: blk channels (one block, 8 or 16) of one image, 8 at a time in
 * AVX2 registers. The weights of the missing outputs (k >= cout) are zero, so every pixel does
 * the same four multiply-adds; per-row float sums of the weight gradient go into double (a row is
 * at most a few hundred pixels). */
static void task_blocked(int blk, int h, int w, int cout, const float *restrict x, const float *restrict d,
                         size_t hw, const float wv[MC][16], float *restrict g, int add, double acc[MC][16])
{
    const float *d1 = cout > 1 ? d + hw : d, *d2 = cout > 2 ? d + 2 * hw : d, *d3 = cout > 3 ? d + 3 * hw : d;
    const __m256 zero = _mm256_setzero_ps();
    for (int half = 0; half < blk; half += 8) {
        const __m256 w0 = _mm256_loadu_ps(wv[0] + half), w1 = _mm256_loadu_ps(wv[1] + half),
                     w2 = _mm256_loadu_ps(wv[2] + half), w3 = _mm256_loadu_ps(wv[3] + half);
        for (int r = 0; r < h; r++) {
            __m256 a0 = zero, a1 = zero, a2 = zero, a3 = zero;
            for (int q = r * w; q < (r + 1) * w; q++) {
                const __m256 v0 = _mm256_broadcast_ss(d + q), v1 = _mm256_broadcast_ss(d1 + q),
                             v2 = _mm256_broadcast_ss(d2 + q), v3 = _mm256_broadcast_ss(d3 + q);
                const size_t at = (size_t)q * blk + half;
                const __m256 xv = _mm256_loadu_ps(x + at);
                __m256 gv = _mm256_mul_ps(w0, v0);
                gv = _mm256_fmadd_ps(w1, v1, gv);
                gv = _mm256_fmadd_ps(w2, v2, gv);
                gv = _mm256_fmadd_ps(w3, v3, gv);
                gv = _mm256_and_ps(gv, _mm256_cmp_ps(xv, zero, _CMP_GT_OQ));
                if (add)
                    gv = _mm256_add_ps(gv, _mm256_loadu_ps(g + at));
                _mm256_storeu_ps(g + at, gv);
                a0 = _mm256_fmadd_ps(v0, xv, a0);
                a1 = _mm256_fmadd_ps(v1, xv, a1);
                a2 = _mm256_fmadd_ps(v2, xv, a2);
                a3 = _mm256_fmadd_ps(v3, xv, a3);
            }
            float t[MC][8];
            _mm256_storeu_ps(t[0], a0), _mm256_storeu_ps(t[1], a1), _mm256_storeu_ps(t[2], a2);
            _mm256_storeu_ps(t[3], a3);
            for (int k = 0; k < MC; k++)
                for (int j = 0; j < 8; j++)
                    acc[k][half + j] += t[k][j];
        }
    }
}

#define AVX512 __attribute__((target("avx512f")))

/* The same for a 16-channel block on AVX-512: the whole block in one register, and two pixels per
 * iteration into two sets of sums, so the weight gradient's multiply-adds do not wait on each
 * other (the AVX2 loop above walks every pixel twice, and its four sums are one chain each). */
AVX512 static void task_blocked16(int h, int w, int cout, const float *restrict x, const float *restrict d,
                                  size_t hw, const float wv[MC][16], float *restrict g, int add, double acc[MC][16])
{
    const float *d1 = cout > 1 ? d + hw : d, *d2 = cout > 2 ? d + 2 * hw : d, *d3 = cout > 3 ? d + 3 * hw : d;
    const __m512 zero = _mm512_setzero_ps(), w0 = _mm512_loadu_ps(wv[0]), w1 = _mm512_loadu_ps(wv[1]),
                 w2 = _mm512_loadu_ps(wv[2]), w3 = _mm512_loadu_ps(wv[3]);
#define PIXEL(q, s0, s1, s2, s3)                                                                                   \
    do {                                                                                                           \
        const __m512 v0 = _mm512_set1_ps(d[q]), v1 = _mm512_set1_ps(d1[q]), v2 = _mm512_set1_ps(d2[q]),           \
                     v3 = _mm512_set1_ps(d3[q]);                                                                   \
        const size_t at = (size_t)(q) * 16;                                                                        \
        const __m512 xv = _mm512_loadu_ps(x + at);                                                                 \
        __m512 gv = _mm512_mul_ps(w0, v0);                                                                         \
        gv = _mm512_fmadd_ps(w1, v1, gv);                                                                          \
        gv = _mm512_fmadd_ps(w2, v2, gv);                                                                          \
        gv = _mm512_fmadd_ps(w3, v3, gv);                                                                          \
        gv = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(xv, zero, _CMP_GT_OQ), gv);                                   \
        if (add)                                                                                                   \
            gv = _mm512_add_ps(gv, _mm512_loadu_ps(g + at));                                                       \
        _mm512_storeu_ps(g + at, gv);                                                                              \
        s0 = _mm512_fmadd_ps(v0, xv, s0);                                                                          \
        s1 = _mm512_fmadd_ps(v1, xv, s1);                                                                          \
        s2 = _mm512_fmadd_ps(v2, xv, s2);                                                                          \
        s3 = _mm512_fmadd_ps(v3, xv, s3);                                                                          \
    } while (0)
    for (int r = 0; r < h; r++) {
        __m512 a0 = zero, a1 = zero, a2 = zero, a3 = zero, b0 = zero, b1 = zero, b2 = zero, b3 = zero;
        int q = r * w;
        for (; q + 1 < (r + 1) * w; q += 2) {
            PIXEL(q, a0, a1, a2, a3);
            PIXEL(q + 1, b0, b1, b2, b3);
        }
        if (q < (r + 1) * w)
            PIXEL(q, a0, a1, a2, a3);
        float t[MC][16];
        _mm512_storeu_ps(t[0], _mm512_add_ps(a0, b0)), _mm512_storeu_ps(t[1], _mm512_add_ps(a1, b1));
        _mm512_storeu_ps(t[2], _mm512_add_ps(a2, b2)), _mm512_storeu_ps(t[3], _mm512_add_ps(a3, b3));
        for (int k = 0; k < MC; k++)
            for (int j = 0; j < 16; j++)
                acc[k][j] += t[k][j];
    }
#undef PIXEL
}

/* One task of a plain NCHW x: one channel of one image. */
static void task_plain(int h, int w, int cout, const float *restrict x, const float *restrict d, size_t hw,
                       const float wc[MC], float *restrict g, int add, double acc[MC])
{
    const float *d1 = cout > 1 ? d + hw : d, *d2 = cout > 2 ? d + 2 * hw : d, *d3 = cout > 3 ? d + 3 * hw : d;
    for (int r = 0; r < h; r++) {
        float a0 = 0, a1 = 0, a2 = 0, a3 = 0;
        const int q0 = r * w;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
        for (int q = q0; q < q0 + w; q++) {
            const float xv = x[q];
            float gv = wc[0] * d[q] + wc[1] * d1[q] + wc[2] * d2[q] + wc[3] * d3[q];
            gv = xv > 0.0f ? gv : 0.0f;
            g[q] = add ? g[q] + gv : gv;
            a0 += d[q] * xv;
            a1 += d1[q] * xv;
            a2 += d2[q] * xv;
            a3 += d3[q] * xv;
        }
        acc[0] += a0, acc[1] += a1, acc[2] += a2, acc[3] += a3;
    }
}

int nn_conv_head_backward_relu(nn_ctx *ctx, int cout, const float *x, const nn_view5 *vx, const float *dy,
                               const float *w, float *dw, float *db, float *dx, int add, nn_err *e)
{
    if (cout < 1 || cout > MC || (vx->blk != 1 && vx->blk != 8 && vx->blk != 16))
        return nn_errf(e, "conv head: %d outputs in blocks of %d channels are not supported", cout, vx->blk);
    const int n = vx->n, cin = vx->c, blk = vx->blk, cb = vx->cb, cpad = cb * blk, h = vx->h, wd = vx->w;
    const size_t hw = (size_t)h * wd;
    /* per image and (padded) channel, the cout sums of the weight gradient */
    double *part = NULL;
    if (dw && !(part = (double *)nn_ctx_tmp(ctx, (size_t)n * cpad * MC * sizeof(double), e)))
        return -1;
    const int tasks = n * cb, avx512 = nn_cpu_has_avx512();
#pragma omp parallel for schedule(static)
    for (int t = 0; t < tasks; t++) {
        const int i = t / cb, b = t % cb;
        const float *xb = x + (size_t)t * hw * blk; /* [n][cb][h][w][blk]: task t's block */
        float *gb = dx + (size_t)t * hw * blk;
        const float *d = dy + (size_t)i * cout * hw;
        float wv[MC][16];
        double acc[MC][16] = {{0}};
        for (int k = 0; k < MC; k++)
            for (int j = 0; j < 16; j++) {
                const int c = b * blk + j;
                wv[k][j] = k < cout && j < blk && c < cin ? w[(size_t)k * cin + c] : 0.0f;
            }
        if (blk == 16 && avx512)
            task_blocked16(h, wd, cout, xb, d, hw, wv, gb, add, acc);
        else if (blk > 1)
            task_blocked(blk, h, wd, cout, xb, d, hw, wv, gb, add, acc);
        else {
            const float wc[MC] = {wv[0][0], wv[1][0], wv[2][0], wv[3][0]};
            double a[MC] = {0};
            task_plain(h, wd, cout, xb, d, hw, wc, gb, add, a);
            for (int k = 0; k < MC; k++)
                acc[k][0] = a[k];
        }
        if (part)
            for (int j = 0; j < blk; j++)
                for (int k = 0; k < MC; k++)
                    part[((size_t)i * cpad + b * blk + j) * MC + k] = acc[k][j];
    }
    if (!dw)
        return 0;
    for (int k = 0; k < cout; k++) {
        for (int c = 0; c < cin; c++) {
            double s = 0;
            for (int i = 0; i < n; i++)
                s += part[((size_t)i * cpad + c) * MC + k];
            dw[(size_t)k * cin + c] += (float)s;
        }
        if (db) {
            double s = 0;
            for (int i = 0; i < n; i++) {
                const float *d = dy + ((size_t)i * cout + k) * hw;
                for (size_t q = 0; q < hw; q++)
                    s += d[q];
            }
            db[k] += (float)s;
        }
    }
    return 0;
}

#else

int nn_conv_head_backward_relu(nn_ctx *ctx, int cout, const float *x, const nn_view5 *vx, const float *dy,
                               const float *w, float *dw, float *db, float *dx, int add, nn_err *e)
{
    return nn_errf(e, "conv head: this build has no AVX2 kernel");
}

#endif
