#include "pgn/proxy.h"

#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "pgn/teacher.h"

pgn_proxy pgn_proxy_default(float grad_scale)
{
    return (pgn_proxy){PGN_PROXY_SIGMOID, PGN_PROXY_KAPPA, grad_scale, PGN_DIRECT_OUT_SCALE};
}

static int positive(const nn_weight_meta *m, const char *path, float *dst, nn_err *e)
{
    if (!m)
        return 0;
    /* torch checkpoints carry numbers; safetensors metadata carries them as text */
    double v = m->num;
    if (!m->is_number) {
        char *end;
        v = strtod(m->str, &end);
        if (end == m->str || *end)
            v = NAN;
    }
    if (!(v > 0) || !isfinite(v))
        return nn_errf(e, "%s: %s is '%s', not a positive number", path, m->key, m->str);
    *dst = (float)v;
    return 0;
}

int pgn_proxy_from_meta(pgn_proxy *h, const nn_weights *w, nn_err *e)
{
    const char *path = w->path ? w->path : "(weights)";
    const nn_weight_meta *m = nn_weights_meta(w, "backbone_to_grad_type");
    if (m) {
        if (!strcmp(m->str, "proxy"))
            h->mode = PGN_PROXY_SIGMOID;
        else if (!strcmp(m->str, "direct"))
            h->mode = PGN_PROXY_DIRECT;
        else
            return nn_errf(e, "%s: backbone_to_grad_type '%s' is not supported ('proxy' or 'direct')", path, m->str);
    }
    if (h->mode == PGN_PROXY_SIGMOID) {
        m = nn_weights_meta(w, "backbone_to_grad_params.type");
        if (m && strcmp(m->str, "sigmoid"))
            return nn_errf(e, "%s: proxy type '%s' is not supported (only 'sigmoid')", path, m->str);
        m = nn_weights_meta(w, "backbone_to_grad_params.grad_type");
        if (m && strcmp(m->str, "mse"))
            return nn_errf(e, "%s: grad_type '%s' is not supported (only 'mse')", path, m->str);
        if (positive(nn_weights_meta(w, "backbone_to_grad_params.sigmoid.scale"), path, &h->kappa, e))
            return -1;
    } else if (positive(nn_weights_meta(w, "backbone_to_grad_params.out_scale"), path, &h->out_scale, e))
        return -1;
    if (positive(nn_weights_meta(w, "backbone_to_grad_params.grad_scale"), path, &h->grad_scale, e) ||
        positive(nn_weights_meta(w, "grad_scale"), path, &h->grad_scale, e)) /* version 0 files */
        return -1;
    return 0;
}

void pgn_proxy_sigmoid_forward(const float *o, const float *yhat, int n, int h, int w, float kappa, float s,
                               float *p, float *g)
{
    const size_t hw = (size_t)h * w;
    const float gk = 2.0f / ((float)(3 * hw) * s);
    for (int i = 0; i < n; i++)
        for (int c = 0; c < 3; c++) {
            const size_t base = ((size_t)i * 3 + c) * hw;
            const float a = kappa / pgn_imagenet_std[c], mu = pgn_imagenet_mean[c];
            for (size_t j = base; j < base + hw; j++) {
                const float sg = 1.0f / (1.0f + expf(-o[j]));
                const float pj = a * (sg - mu);
                if (p)
                    p[j] = pj;
                if (g)
                    g[j] = gk * (yhat[j] - pj);
            }
        }
}

void pgn_proxy_sigmoid_backward(const float *o, const float *dp, const float *dg, int n, int h, int w, float kappa,
                                float s, float *dout)
{
    const size_t hw = (size_t)h * w;
    const float gk = 2.0f / ((float)(3 * hw) * s);
    for (int i = 0; i < n; i++)
        for (int c = 0; c < 3; c++) {
            const size_t base = ((size_t)i * 3 + c) * hw;
            const float a = kappa / pgn_imagenet_std[c];
            for (size_t j = base; j < base + hw; j++) {
                const float sg = 1.0f / (1.0f + expf(-o[j]));
                const float dpt = (dp ? dp[j] : 0.0f) - (dg ? gk * dg[j] : 0.0f);
                dout[j] = dpt * a * sg * (1.0f - sg);
            }
        }
}

void pgn_proxy_direct_forward(const float *o, const float *yhat, int n, int h, int w, float out_scale, float s,
                              float *p, float *g)
{
    const size_t count = (size_t)n * 3 * h * w;
    const float gk = 2.0f / ((float)(3 * (size_t)h * w) * s);
    for (size_t j = 0; j < count; j++) {
        const float o2 = o[j] / out_scale;
        if (p)
            p[j] = yhat[j] - o2;
        if (g)
            g[j] = gk * o2;
    }
}

void pgn_proxy_direct_backward(const float *dp, const float *dg, int n, int h, int w, float out_scale, float s,
                               float *dout)
{
    const size_t count = (size_t)n * 3 * h * w;
    const float gk = 2.0f / ((float)(3 * (size_t)h * w) * s);
    for (size_t j = 0; j < count; j++)
        dout[j] = ((dg ? gk * dg[j] : 0.0f) - (dp ? dp[j] : 0.0f)) / out_scale;
}

void pgn_proxy_forward(const pgn_proxy *hd, const float *o, const float *yhat, int n, int h, int w, float *p,
                       float *g)
{
    if (hd->mode == PGN_PROXY_DIRECT)
        pgn_proxy_direct_forward(o, yhat, n, h, w, hd->out_scale, hd->grad_scale, p, g);
    else
        pgn_proxy_sigmoid_forward(o, yhat, n, h, w, hd->kappa, hd->grad_scale, p, g);
}

void pgn_proxy_backward(const pgn_proxy *hd, const float *o, const float *dp, const float *dg, int n, int h, int w,
                        float *dout)
{
    if (hd->mode == PGN_PROXY_DIRECT)
        pgn_proxy_direct_backward(dp, dg, n, h, w, hd->out_scale, hd->grad_scale, dout);
    else
        pgn_proxy_sigmoid_backward(o, dp, dg, n, h, w, hd->kappa, hd->grad_scale, dout);
}
