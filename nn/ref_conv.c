/* Reference convolution and padding: conv2d forward/backward (groups incl. depthwise, stride,
 * zero or reflection padding, optional bias) and pad2d as a layer. Accumulation in double.
 * Reflection padding goes through ref_pad_index, the same mapping pad2d uses, so a reflect conv
 * equals ref_pad2d_forward followed by an unpadded conv. */
#include "nn/ref.h"
#include "nn/ref_internal.h"

void ref_conv2d_forward(float *y, const float *x, const float *w, const float *b, const nn_conv_shape *s)
{
    const int oh = nn_conv_oh(s), ow = nn_conv_ow(s);
    const int cig = s->cin / s->groups, cog = s->cout / s->groups;
    const long xplane = (long)s->h * s->w, yplane = (long)oh * ow;

#pragma omp parallel for collapse(2) schedule(static)
    for (int ni = 0; ni < s->n; ni++)
        for (int co = 0; co < s->cout; co++) {
            const int g = co / cog;
            const float *xg = x + ((long)ni * s->cin + (long)g * cig) * xplane;
            const float *wc = w + (long)co * cig * s->kh * s->kw;
            float *yp = y + ((long)ni * s->cout + co) * yplane;
            for (int oy = 0; oy < oh; oy++)
                for (int ox = 0; ox < ow; ox++) {
                    double acc = (s->has_bias && b) ? b[co] : 0.0;
                    for (int ci = 0; ci < cig; ci++)
                        for (int ky = 0; ky < s->kh; ky++) {
                            const int iy = ref_pad_index(oy * s->sh - s->ph + ky, s->h, s->pad_mode);
                            if (iy < 0)
                                continue;
                            for (int kx = 0; kx < s->kw; kx++) {
                                const int ix = ref_pad_index(ox * s->sw - s->pw + kx, s->w, s->pad_mode);
                                if (ix < 0)
                                    continue;
                                acc += (double)xg[ci * xplane + (long)iy * s->w + ix] *
                                       wc[((long)ci * s->kh + ky) * s->kw + kx];
                            }
                        }
                    yp[(long)oy * ow + ox] = (float)acc;
                }
        }
}

/* db[co] += sum dy over (n, oy, ox). One thread per output channel. */
static void conv_backward_bias(float *db, const float *dy, const nn_conv_shape *s, long yplane)
{
#pragma omp parallel for schedule(static)
    for (int co = 0; co < s->cout; co++) {
        double acc = 0.0;
        for (int ni = 0; ni < s->n; ni++) {
            const float *d = dy + ((long)ni * s->cout + co) * yplane;
            for (long i = 0; i < yplane; i++)
                acc += d[i];
        }
        db[co] += (float)acc;
    }
}

/* dw[co, ci, ky, kx] += sum over (n, oy, ox) of dy[n, co, oy, ox] * xpad[n, g*cig + ci, iy, ix].
 * One thread per output channel: it alone writes dw[co]. */
static void conv_backward_weight(float *dw, const float *dy, const float *x, const nn_conv_shape *s)
{
    const int oh = nn_conv_oh(s), ow = nn_conv_ow(s);
    const int cig = s->cin / s->groups, cog = s->cout / s->groups;
    const long xplane = (long)s->h * s->w, yplane = (long)oh * ow;

#pragma omp parallel for schedule(static)
    for (int co = 0; co < s->cout; co++) {
        const int g = co / cog;
        for (int ci = 0; ci < cig; ci++)
            for (int ky = 0; ky < s->kh; ky++)
                for (int kx = 0; kx < s->kw; kx++) {
                    double acc = 0.0;
                    for (int ni = 0; ni < s->n; ni++) {
                        const float *xp = x + ((long)ni * s->cin + (long)g * cig + ci) * xplane;
                        const float *d = dy + ((long)ni * s->cout + co) * yplane;
                        for (int oy = 0; oy < oh; oy++) {
                            const int iy = ref_pad_index(oy * s->sh - s->ph + ky, s->h, s->pad_mode);
                            if (iy < 0)
                                continue;
                            for (int ox = 0; ox < ow; ox++) {
                                const int ix = ref_pad_index(ox * s->sw - s->pw + kx, s->w, s->pad_mode);
                                if (ix < 0)
                                    continue;
                                acc += (double)d[(long)oy * ow + ox] * xp[(long)iy * s->w + ix];
                            }
                        }
                    }
                    dw[(((long)co * cig + ci) * s->kh + ky) * s->kw + kx] += (float)acc;
                }
    }
}

/* dx[n, ci] += scatter of dy * w through the same index mapping as the forward (reflection can send
 * several taps to one input pixel, so this scatters rather than gathers). One thread per (n, ci)
 * input plane: it alone writes that plane. Sums directly into dx in float. */
static void conv_backward_input(float *dx, const float *dy, const float *w, const nn_conv_shape *s)
{
    const int oh = nn_conv_oh(s), ow = nn_conv_ow(s);
    const int cig = s->cin / s->groups, cog = s->cout / s->groups;
    const long xplane = (long)s->h * s->w, yplane = (long)oh * ow;

#pragma omp parallel for collapse(2) schedule(static)
    for (int ni = 0; ni < s->n; ni++)
        for (int cin = 0; cin < s->cin; cin++) {
            const int g = cin / cig, ci = cin % cig;
            float *dxp = dx + ((long)ni * s->cin + cin) * xplane;
            for (int co = g * cog; co < (g + 1) * cog; co++) {
                const float *d = dy + ((long)ni * s->cout + co) * yplane;
                const float *wk = w + ((long)co * cig + ci) * s->kh * s->kw;
                for (int oy = 0; oy < oh; oy++)
                    for (int ky = 0; ky < s->kh; ky++) {
                        const int iy = ref_pad_index(oy * s->sh - s->ph + ky, s->h, s->pad_mode);
                        if (iy < 0)
                            continue;
                        for (int ox = 0; ox < ow; ox++) {
                            const float g_out = d[(long)oy * ow + ox];
                            for (int kx = 0; kx < s->kw; kx++) {
                                const int ix = ref_pad_index(ox * s->sw - s->pw + kx, s->w, s->pad_mode);
                                if (ix < 0)
                                    continue;
                                dxp[(long)iy * s->w + ix] += g_out * wk[ky * s->kw + kx];
                            }
                        }
                    }
            }
        }
}

void ref_conv2d_backward(float *dx, float *dw, float *db, const float *dy, const float *x, const float *w,
                         const nn_conv_shape *s)
{
    const long yplane = (long)nn_conv_oh(s) * nn_conv_ow(s);
    if (db && s->has_bias)
        conv_backward_bias(db, dy, s, yplane);
    if (dw)
        conv_backward_weight(dw, dy, x, s);
    if (dx)
        conv_backward_input(dx, dy, w, s);
}

void ref_pad2d_forward(float *y, const float *x, int n, int c, int h, int w, int ph, int pw, int mode)
{
    const int oh = h + 2 * ph, ow = w + 2 * pw;
#pragma omp parallel for schedule(static)
    for (long p = 0; p < (long)n * c; p++) {
        const float *xp = x + p * h * w;
        float *yp = y + p * oh * ow;
        for (int oy = 0; oy < oh; oy++) {
            const int iy = ref_pad_index(oy - ph, h, mode);
            for (int ox = 0; ox < ow; ox++) {
                const int ix = ref_pad_index(ox - pw, w, mode);
                yp[(long)oy * ow + ox] = (iy < 0 || ix < 0) ? 0.0f : xp[(long)iy * w + ix];
            }
        }
    }
}

void ref_pad2d_backward(float *dx, const float *dy, int n, int c, int h, int w, int ph, int pw, int mode)
{
    if (!dx)
        return;
    const int oh = h + 2 * ph, ow = w + 2 * pw;
#pragma omp parallel for schedule(static)
    for (long p = 0; p < (long)n * c; p++) {
        float *dxp = dx + p * h * w;
        const float *dyp = dy + p * oh * ow;
        for (int oy = 0; oy < oh; oy++) {
            const int iy = ref_pad_index(oy - ph, h, mode);
            if (iy < 0)
                continue;
            for (int ox = 0; ox < ow; ox++) {
                const int ix = ref_pad_index(ox - pw, w, mode);
                if (ix >= 0)
                    dxp[(long)iy * w + ix] += dyp[(long)oy * ow + ox];
            }
        }
    }
}
