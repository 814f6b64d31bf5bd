/* L1 and MSE losses (means over n*c*h*w) on activations in any layout: both sides are brought to
 * the same layout, where padding lanes are zero on both sides and so add nothing. */
#include <math.h>
#include <string.h>

#include "nn/dnnl_util.h"

/* t's data in x's layout (converted into ctx tmp when they differ). */
static const float *target_like(nn_ctx *ctx, const nn_act *x, const nn_act *t, nn_err *e)
{
    if (x->n != t->n || x->c != t->c || x->h != t->h || x->w != t->w) {
        nn_errf(e, "loss: prediction [%d, %d, %d, %d] and target [%d, %d, %d, %d] differ", x->n, x->c, x->h, x->w,
                t->n, t->c, t->h, t->w);
        return NULL;
    }
    if (nn_md_equal(&x->md, &t->md))
        return t->data;
    float *tmp = nn_ctx_tmp(ctx, nn_md_bytes(&x->md), e);
    if (!tmp || nn_reorder(ctx, &t->md, t->data, &x->md, tmp, e))
        return NULL;
    return tmp;
}

static int loss_value(nn_ctx *ctx, const nn_act *x, const nn_act *t, int squared, double *loss, double *per_sample,
                      nn_err *e)
{
    const float *td = target_like(ctx, x, t, e);
    if (!td)
        return -1;
    size_t per = nn_md_bytes(&x->md) / sizeof(float) / x->n; /* n is the outermost dim of every layout */
    double chw = (double)x->c * x->h * x->w, total = 0;
    for (int n = 0; n < x->n; n++) {
        const float *a = x->data + n * per, *b = td + n * per;
        double s = 0;
#pragma omp parallel for simd reduction(+ : s) schedule(static)
        for (size_t i = 0; i < per; i++) {
            double d = (double)a[i] - (double)b[i];
            s += squared ? d * d : fabs(d);
        }
        if (per_sample)
            per_sample[n] = s / chw;
        total += s;
    }
    *loss = total / (chw * x->n);
    return 0;
}

static int loss_backward(nn_ctx *ctx, const nn_act *x, const nn_act *t, float dloss, int squared, nn_act *dx,
                         nn_err *e)
{
    const float *td = target_like(ctx, x, t, e);
    if (!td)
        return -1;
    size_t count = nn_md_bytes(&x->md) / sizeof(float);
    float scale = dloss / (float)nn_act_count(x);
    const float *xd = x->data;
    if (!dx->valid) {
        if (nn_act_reserve(dx, x->n, x->c, x->h, x->w, &x->md, e))
            return -1;
        float *d = dx->data;
#pragma omp parallel for simd schedule(static)
        for (size_t i = 0; i < count; i++) {
            float diff = xd[i] - td[i];
            d[i] = squared ? 2.0f * diff * scale : (float)((diff > 0) - (diff < 0)) * scale;
        }
        dx->valid = 1;
        return 0;
    }
    if (!nn_md_equal(&dx->md, &x->md)) {
        dnnl_memory_desc_t md = x->md;
        if (nn_act_convert(ctx, dx, &md, e))
            return -1;
    }
    float *d = dx->data;
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < count; i++) {
        float diff = xd[i] - td[i];
        d[i] += squared ? 2.0f * diff * scale : (float)((diff > 0) - (diff < 0)) * scale;
    }
    return 0;
}

int nn_l1_loss(nn_ctx *ctx, const nn_act *x, const nn_act *t, double *loss, double *per_sample, nn_err *e)
{
    return loss_value(ctx, x, t, 0, loss, per_sample, e);
}

int nn_l1_loss_backward(nn_ctx *ctx, const nn_act *x, const nn_act *t, float dloss, nn_act *dx, nn_err *e)
{
    return loss_backward(ctx, x, t, dloss, 0, dx, e);
}

int nn_l1_loss_backward_relu(nn_ctx *ctx, const nn_act *x, const nn_act *t, float dloss, nn_act *dx, nn_err *e)
{
    return nn_l1_loss_backward_relu_sums(ctx, x, t, dloss, dx, NULL, e);
}

/* One pass per sample over x, t and dx: the gradient, and (when sums) the sum of |x - t| that
 * nn_l1_loss would read x and t again for. A dx not yet valid is written, not zeroed and added to. */
int nn_l1_loss_backward_relu_sums(nn_ctx *ctx, const nn_act *x, const nn_act *t, float dloss, nn_act *dx,
                                  double *sums, nn_err *e)
{
    const float *td = target_like(ctx, x, t, e);
    if (!td)
        return -1;
    int add = dx->valid;
    if (!dx->valid) {
        if (nn_act_reserve(dx, x->n, x->c, x->h, x->w, &x->md, e))
            return -1;
    } else if (!nn_md_equal(&dx->md, &x->md)) {
        dnnl_memory_desc_t md = x->md;
        if (nn_act_convert(ctx, dx, &md, e))
            return -1;
    }
    size_t per = nn_md_bytes(&x->md) / sizeof(float) / x->n; /* n is the outermost dim of every layout */
    float scale = dloss / (float)nn_act_count(x);
    for (int n = 0; n < x->n; n++) {
        const float *xd = x->data + n * per, *tn = td + n * per;
        float *d = dx->data + n * per;
        double s = 0;
        if (sums) {
#pragma omp parallel for simd reduction(+ : s) schedule(static)
            for (size_t i = 0; i < per; i++) {
                float diff = xd[i] - tn[i];
                s += fabs((double)xd[i] - (double)tn[i]);
                float g = (add ? d[i] : 0.0f) + (float)((diff > 0) - (diff < 0)) * scale;
                d[i] = xd[i] > 0 ? g : 0.0f;
            }
            sums[n] = s;
        } else {
#pragma omp parallel for simd schedule(static)
            for (size_t i = 0; i < per; i++) {
                float diff = xd[i] - tn[i];
                float g = (add ? d[i] : 0.0f) + (float)((diff > 0) - (diff < 0)) * scale;
                d[i] = xd[i] > 0 ? g : 0.0f;
            }
        }
    }
    dx->valid = 1;
    return 0;
}

int nn_mse_loss(nn_ctx *ctx, const nn_act *x, const nn_act *t, double *loss, double *per_sample, nn_err *e)
{
    return loss_value(ctx, x, t, 1, loss, per_sample, e);
}

int nn_mse_loss_backward(nn_ctx *ctx, const nn_act *x, const nn_act *t, float dloss, nn_act *dx, nn_err *e)
{
    return loss_backward(ctx, x, t, dloss, 1, dx, e);
}
