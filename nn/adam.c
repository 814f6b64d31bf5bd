/* Adam (torch.optim.Adam, single-tensor path of torch 1.13, amsgrad off) and global-norm gradient
 * clipping (torch.nn.utils.clip_grad_norm_).
 *
 * The moments are float32 like PyTorch's, and each element goes through the same float32
 * operations in the same order as torch's CPU kernels (see adam_update). The scalar coefficients
 * are computed in double as PyTorch does in Python; since the struct stores them as float, each is
 * first turned back into the double the caller most likely wrote (the shortest decimal that rounds
 * to the float: 0.9f -> 0.9), so 1 - beta1, lr / (1 - beta1^t), ... match Python's values. */
#include "nn/adam.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The double with the shortest decimal representation that rounds to f. */
static double decimal_double(float f)
{
    char buf[32];
    for (int digits = 1; digits <= 9; digits++) {
        snprintf(buf, sizeof buf, "%.*g", digits, (double)f);
        const double d = strtod(buf, NULL);
        if ((float)d == f)
            return d;
    }
    return (double)f;
}

int nn_adam_init(nn_adam *opt, const nn_param *params, int count, float lr, float beta1, float beta2, float eps,
                 float weight_decay, nn_err *e)
{
    memset(opt, 0, sizeof *opt);
    if (count < 0)
        return nn_errf(e, "adam: negative parameter count %d", count);
    opt->lr = lr;
    opt->beta1 = beta1;
    opt->beta2 = beta2;
    opt->eps = eps;
    opt->weight_decay = weight_decay;
    opt->count = count;
    size_t n = count > 0 ? (size_t)count : 1;
    opt->params = calloc(n, sizeof *opt->params);
    opt->m = calloc(n, sizeof *opt->m);
    opt->v = calloc(n, sizeof *opt->v);
    if (!opt->params || !opt->m || !opt->v) {
        nn_adam_free(opt);
        return nn_errf(e, "adam: out of memory for %d parameters", count);
    }
    for (int i = 0; i < count; i++) {
        const nn_tensor *val = params[i].value;
        if (!val || !params[i].grad || params[i].grad->numel != val->numel) {
            nn_adam_free(opt);
            return nn_errf(e, "adam: parameter %d has no value/grad or their sizes differ", i);
        }
        opt->params[i] = params[i];
        if (nn_tensor_alloc(&opt->m[i], val->ndim, val->shape, e) < 0 ||
            nn_tensor_alloc(&opt->v[i], val->ndim, val->shape, e) < 0) {
            nn_adam_free(opt);
            return nn_err_prefix(e, "adam: moments of parameter %d", i);
        }
    }
    return 0;
}

void nn_adam_free(nn_adam *opt)
{
    if (opt->m)
        for (int i = 0; i < opt->count; i++)
            nn_tensor_free(&opt->m[i]);
    if (opt->v)
        for (int i = 0; i < opt->count; i++)
            nn_tensor_free(&opt->v[i]);
    free(opt->m);
    free(opt->v);
    free(opt->params);
    memset(opt, 0, sizeof *opt);
}

/* float32 coefficients of one step, each rounded from its double as torch converts a Python scalar. */
typedef struct adam_coef {
    float beta1, one_minus_beta1, beta2, one_minus_beta2, weight_decay, eps;
    float neg_step_size, bias_correction2_sqrt;
} adam_coef;

/* One parameter tensor, element by element in torch 1.13's float32 order (its AVX2 CPU kernels, whose
 * add-with-alpha and addcmul compile to fused multiply-adds):
 *   grad = grad.add(param, alpha=wd)                  -> fma(param, wd, grad)
 *   exp_avg.mul_(beta1).add_(grad, alpha=1-beta1)     -> fma(grad, 1-b1, m*b1)
 *   exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1-b2) -> fma((1-b2)*grad, grad, v*b2)
 *   denom = (exp_avg_sq.sqrt() / bc2_sqrt).add_(eps)  -> a true division, not a reciprocal
 *   param.addcdiv_(exp_avg, denom, value=-step_size)  -> p + ((-step_size)*m)/denom
 * Checked bit for bit against torch 1.13.1 (Debian, CPU capability AVX2) on 1000 elements x 5 steps,
 * with and without weight decay. The fmaf calls make the result independent of -ffp-contract. */
static void adam_update(float *restrict p, float *restrict m, float *restrict v, const float *restrict grad, size_t n,
                        const adam_coef *k)
{
    /* the coefficients in locals: stores through p, m, v cannot change them, so the loop vectorises
     * (vsqrtps and vdivps round as their scalar forms do: the same bits) */
    const float wd = k->weight_decay, b1 = k->beta1, omb1 = k->one_minus_beta1, b2 = k->beta2,
                omb2 = k->one_minus_beta2, bc2 = k->bias_correction2_sqrt, eps = k->eps, nss = k->neg_step_size;
    /* orphaned: shares the caller's parallel region, no barrier after each tensor */
#pragma omp for simd schedule(static) nowait
    for (size_t i = 0; i < n; i++) {
        float g = grad[i];
        if (wd != 0.0f)
            g = fmaf(p[i], wd, g);
        float mi = m[i] * b1;
        mi = fmaf(g, omb1, mi);
        float vi = v[i] * b2;
        vi = fmaf(omb2 * g, g, vi);
        const float denom = sqrtf(vi) / bc2 + eps;
        p[i] = p[i] + nss * mi / denom;
        m[i] = mi;
        v[i] = vi;
    }
}

void nn_adam_step(nn_adam *opt)
{
    opt->step += 1;
    const double lr = decimal_double(opt->lr), b1 = decimal_double(opt->beta1), b2 = decimal_double(opt->beta2);
    const double t = (double)opt->step;
    const double bias_correction1 = 1.0 - pow(b1, t);
    const double bias_correction2 = 1.0 - pow(b2, t);
    const double step_size = lr / bias_correction1;
    adam_coef k = {
        .beta1 = (float)b1,
        .one_minus_beta1 = (float)(1.0 - b1),
        .beta2 = (float)b2,
        .one_minus_beta2 = (float)(1.0 - b2),
        .weight_decay = (float)decimal_double(opt->weight_decay),
        .eps = (float)decimal_double(opt->eps),
        .neg_step_size = (float)(-step_size),
        .bias_correction2_sqrt = (float)sqrt(bias_correction2),
    };
    /* One parallel region for every tensor (a net has dozens, many of a few elements: a region each
     * was 7% of a DIP step in fork-join and barriers). Elementwise, so the result is the same. */
#pragma omp parallel
    for (int i = 0; i < opt->count; i++) {
        nn_tensor *val = opt->params[i].value;
        adam_update(val->data, opt->m[i].data, opt->v[i].data, opt->params[i].grad->data, val->numel, &k);
    }
}

void nn_adam_reset(nn_adam *opt)
{
    opt->step = 0;
    for (int i = 0; i < opt->count; i++) {
        nn_tensor_zero(&opt->m[i]);
        nn_tensor_zero(&opt->v[i]);
    }
}

void nn_params_zero_grad(const nn_param *params, int count)
{
    /* one region for every tensor, as nn_adam_step (dozens of tensors, most of them small) */
#pragma omp parallel
    for (int i = 0; i < count; i++) {
        const nn_tensor *g = params[i].grad;
        if (!g || !g->data)
            continue;
        float *d = g->data;
#pragma omp for simd schedule(static) nowait
        for (size_t j = 0; j < g->numel; j++)
            d[j] = 0.0f;
    }
}

/* Sum of squares in fixed chunks of NORM_CHUNK elements, each chunk in NORM_LANES double sums
 * (element j in sum j % NORM_LANES, so they vectorise) added in order, then the chunks in order,
 * tensor after tensor: the same result whatever the thread count. */
#define NORM_CHUNK 16384
#define NORM_LANES 8

static double chunk_squares(const float *x, size_t n, size_t c)
{
    const size_t j0 = c * NORM_CHUNK, j1 = j0 + NORM_CHUNK < n ? j0 + NORM_CHUNK : n;
    double acc[NORM_LANES] = {0};
    size_t j = j0;
    for (; j + NORM_LANES <= j1; j += NORM_LANES)
        for (int l = 0; l < NORM_LANES; l++)
            acc[l] += (double)x[j + l] * x[j + l];
    for (; j < j1; j++)
        acc[j % NORM_LANES] += (double)x[j] * x[j];
    double s = 0.0;
    for (int l = 0; l < NORM_LANES; l++)
        s += acc[l];
    return s;
}

static size_t chunks_of(const nn_param *p)
{
    return p->grad && p->grad->data ? (p->grad->numel + NORM_CHUNK - 1) / NORM_CHUNK : 0;
}

double nn_grad_norm(const nn_param *params, int count)
{
    /* every tensor's chunks in one parallel region (a region per tensor, with a small tensor's one
     * chunk on the calling thread alone, kept the other threads waiting) */
    size_t nch = 0;
    for (int i = 0; i < count; i++)
        nch += chunks_of(&params[i]);
    struct chunk {
        double sum;
        int tensor;
        size_t index; /* in its tensor */
    } *ck = malloc((nch ? nch : 1) * sizeof *ck);
    double ss = 0.0;
    if (!ck) { /* no memory: the same sums on this thread */
        for (int i = 0; i < count; i++)
            for (size_t c = 0; c < chunks_of(&params[i]); c++)
                ss += chunk_squares(params[i].grad->data, params[i].grad->numel, c);
        return sqrt(ss);
    }
    size_t k = 0;
    for (int i = 0; i < count; i++)
        for (size_t c = 0; c < chunks_of(&params[i]); c++, k++)
            ck[k].tensor = i, ck[k].index = c;
#pragma omp parallel for schedule(static)
    for (k = 0; k < nch; k++) {
        const nn_tensor *g = params[ck[k].tensor].grad;
        ck[k].sum = chunk_squares(g->data, g->numel, ck[k].index);
    }
    for (k = 0; k < nch; k++) /* in order */
        ss += ck[k].sum;
    free(ck);
    return sqrt(ss);
}

double nn_clip_grad_norm(const nn_param *params, int count, double max_norm)
{
    const double total = nn_grad_norm(params, count);
    const double coef = max_norm / (total + 1e-6);
    if (coef < 1.0) {
        const float c = (float)coef;
#pragma omp parallel
        for (int i = 0; i < count; i++) {
            nn_tensor *g = params[i].grad;
            if (!g || !g->data)
                continue;
            float *d = g->data;
#pragma omp for simd schedule(static) nowait
            for (size_t j = 0; j < g->numel; j++)
                d[j] *= c;
        }
    }
    return total;
}
