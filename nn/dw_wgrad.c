/* Depthwise weight gradient on nChw16c tensors: see dw_wgrad.h. */
#include "nn/dw_wgrad.h"

#include <immintrin.h>
#include <omp.h>
#include <string.h>

#define AVX512 __attribute__((target("avx512f")))
#define MAX_K 7
#define BAND_OUTPUTS 512 /* output pixels per band: float sums stay short */

typedef struct geo {
    int h, w, oh, ow, kh, kw, sh, sw, ph, pw;
    int lo, hi; /* output columns whose taps all lie in the image */
} geo;

/* One tap row a over output rows [r0, r1) of one plane: acc[b] += dy(r, c) * x(r sh - ph + a,
 * c sw - pw + b), b < KW. Inlined with KW a constant, so that the sums stay in registers. */
AVX512 static inline __attribute__((always_inline)) void tap_row(const geo *G, const float *xp, const float *dp,
                                                                 int r0, int r1, int a, const int KW, __m512 *acc)
{
    for (int r = r0; r < r1; r++) {
        const int ih = r * G->sh - G->ph + a;
        if (ih < 0 || ih >= G->h)
            continue;
        const float *xr = xp + (size_t)ih * G->w * 16, *dr = dp + (size_t)r * G->ow * 16;
        for (int c = G->lo; c < G->hi; c++) {
            const __m512 d = _mm512_loadu_ps(dr + (size_t)c * 16);
            const float *xc = xr + (size_t)(c * G->sw - G->pw) * 16;
            for (int b = 0; b < KW; b++)
                acc[b] = _mm512_fmadd_ps(d, _mm512_loadu_ps(xc + b * 16), acc[b]);
        }
        for (int c = 0; c < G->ow; c++) { /* the border columns: only the taps inside the image */
            if (c == G->lo)
                c = G->hi > G->lo ? G->hi : G->lo;
            if (c >= G->ow)
                break;
            const __m512 d = _mm512_loadu_ps(dr + (size_t)c * 16);
            for (int b = 0; b < KW; b++) {
                const int iw = c * G->sw - G->pw + b;
                if (iw >= 0 && iw < G->w)
                    acc[b] = _mm512_fmadd_ps(d, _mm512_loadu_ps(xr + (size_t)iw * 16), acc[b]);
            }
        }
    }
}

/* A band's sums, tap by tap, into part[(a * kw + b) * 16 + lane] (double). */
AVX512 static void band_sums(const geo *G, const float *xp, const float *dp, int r0, int r1, double *part)
{
    for (int a = 0; a < G->kh; a++) {
        __m512 acc[MAX_K];
        for (int b = 0; b < MAX_K; b++)
            acc[b] = _mm512_setzero_ps();
        switch (G->kw) { /* constant widths: unrolled, sums in registers */
        case 3: tap_row(G, xp, dp, r0, r1, a, 3, acc); break;
        case 5: tap_row(G, xp, dp, r0, r1, a, 5, acc); break;
        case 7: tap_row(G, xp, dp, r0, r1, a, 7, acc); break;
        default:
            for (int b = 0; b < G->kw; b++) { /* one tap at a time */
                __m512 one = _mm512_setzero_ps();
                geo g1 = *G;
                g1.kw = 1, g1.pw = G->pw - b;
                g1.lo = g1.pw > 0 ? (g1.pw + g1.sw - 1) / g1.sw : 0;
                g1.hi = g1.w - 1 + g1.pw >= 0 ? (g1.w - 1 + g1.pw) / g1.sw + 1 : 0;
                g1.hi = g1.hi < g1.ow ? g1.hi : g1.ow;
                g1.hi = g1.hi > g1.lo ? g1.hi : g1.lo;
                tap_row(&g1, xp, dp, r0, r1, a, 1, &one);
                acc[b] = one;
            }
        }
        float t[16];
        for (int b = 0; b < G->kw; b++) {
            _mm512_storeu_ps(t, acc[b]);
            for (int l = 0; l < 16; l++)
                part[(a * G->kw + b) * 16 + l] += t[l];
        }
    }
}

/* The band's dy sums per lane (the bias gradient) into part[lane]. */
AVX512 static void band_bias(const geo *G, const float *dp, int r0, int r1, double *part)
{
    __m512 s = _mm512_setzero_ps();
    for (size_t i = (size_t)r0 * G->ow * 16; i < (size_t)r1 * G->ow * 16; i += 16)
        s = _mm512_add_ps(s, _mm512_loadu_ps(dp + i));
    float t[16];
    _mm512_storeu_ps(t, s);
    for (int l = 0; l < 16; l++)
        part[l] += t[l];
}

int nn_dw_wgrad_blocked(nn_ctx *ctx, const nn_conv_shape *s, const float *x, const nn_view5 *vx, const float *dy,
                        const nn_view5 *vdy, float *dw, float *db, nn_err *e)
{
    if (s->groups != s->cin || s->cout != s->cin || s->pad_mode != NN_PAD_ZERO || s->kh > MAX_K || s->kw > MAX_K ||
        vx->blk != 16 || vdy->blk != 16 || !nn_cpu_has_avx512() || !nn_fused_enabled())
        return 1;
    geo G = {s->h, s->w, nn_conv_oh(s), nn_conv_ow(s), s->kh, s->kw, s->sh, s->sw, s->ph, s->pw, 0, 0};
    if (vx->h != G.h || vx->w != G.w || vdy->h != G.oh || vdy->w != G.ow || vx->n != s->n || vdy->n != s->n ||
        vx->c != s->cin || vdy->c != s->cout)
        return nn_errf(e, "depthwise weight gradient: input [%d, %d, %d] / output gradient [%d, %d, %d] do not match "
                          "the convolution's [%d, %d, %d] -> [%d, %d]",
                       vx->n, vx->h, vx->w, vdy->n, vdy->h, vdy->w, s->n, s->h, s->w, G.oh, G.ow);
    G.lo = s->pw > 0 ? (s->pw + s->sw - 1) / s->sw : 0;
    const int last = s->w - s->kw + s->pw; /* the last column's first tap, for a column whose taps all fit */
    G.hi = last >= 0 ? last / s->sw + 1 : 0;
    G.hi = G.hi < G.ow ? G.hi : G.ow;
    G.hi = G.hi > G.lo ? G.hi : G.lo;
    const int cb = vx->cb, taps = s->kh * s->kw, nacc = (taps + 1) * 16;
    const int rows = G.ow >= BAND_OUTPUTS ? 1 : BAND_OUTPUTS / G.ow, bands = (G.oh + rows - 1) / rows;
    const long tasks = (long)cb * s->n * bands;
    double *part = (double *)nn_ctx_tmp(ctx, (size_t)tasks * nacc * sizeof(double), e);
    if (!part)
        return -1;
    const size_t xplane = (size_t)G.h * G.w * 16, dplane = (size_t)G.oh * G.ow * 16;
#pragma omp parallel for schedule(static)
    for (long t = 0; t < tasks; t++) {
        const int band = (int)(t % bands), img = (int)(t / bands % s->n), q = (int)(t / bands / s->n);
        const int r0 = band * rows, r1 = r0 + rows < G.oh ? r0 + rows : G.oh;
        double *pt = part + (size_t)t * nacc;
        memset(pt, 0, (size_t)nacc * sizeof(double));
        const float *xp = x + ((size_t)img * cb + q) * xplane, *dp = dy + ((size_t)img * cb + q) * dplane;
        band_sums(&G, xp, dp, r0, r1, pt);
        if (db)
            band_bias(&G, dp, r0, r1, pt + taps * 16);
    }
    /* over the images and bands, in order */
    for (int c = 0; c < s->cin; c++) {
        const int q = c / 16, l = c % 16;
        double sw[MAX_K * MAX_K] = {0}, sb = 0;
        for (long t = (long)q * s->n * bands; t < (long)(q + 1) * s->n * bands; t++) {
            const double *pt = part + (size_t)t * nacc;
            for (int k = 0; k < taps; k++)
                sw[k] += pt[k * 16 + l];
            sb += pt[taps * 16 + l];
        }
        for (int k = 0; k < taps; k++)
            dw[(size_t)c * taps + k] += (float)sw[k];
        if (db)
            db[c] += (float)sb;
    }
    return 0;
}
