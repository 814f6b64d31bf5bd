#include "daemon/selfcheck.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nn/engine.h"
#include "nn/ref.h"
#include "pgn/vgg19.h"

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static double rel_err(const float *a, const float *b, size_t n)
{
    double md = 0, mb = 0;
    for (size_t i = 0; i < n; i++) {
        md = fmax(md, fabs((double)a[i] - b[i]));
        mb = fmax(mb, fabs((double)b[i]));
    }
    return mb > 0 ? md / mb : md;
}

/* conv 3x3 (6->16) -> batch norm (train) -> LeakyReLU -> mean L1 against a target, forward and
 * backward on both paths. */
static int conv_stack(FILE *out, nn_ctx *ctx, double *worst)
{
    enum { N = 2, CI = 6, CO = 16, H = 24, W = 24 };
    nn_err e;
    nn_rng r;
    nn_rng_seed(&r, 7);
    nn_conv2d conv;
    nn_batchnorm2d bn;
    nn_eltwise act;
    if (nn_conv2d_init(&conv, CI, CO, 3, 3, 1, 1, 1, 1, 1, NN_PAD_ZERO, 1, &r, &e) ||
        nn_batchnorm2d_init(&bn, CO, 1e-5f, 0.1f, &e))
        goto fail;
    nn_eltwise_init(&act, NN_LEAKY_RELU, 0.2f);
    size_t nx = (size_t)N * CI * H * W, ny = (size_t)N * CO * H * W;
    float *x = malloc(nx * 4), *t = malloc(ny * 4), *y_ref = calloc(ny, 4), *z_ref = calloc(ny, 4);
    float *a_ref = calloc(ny, 4), *g = calloc(ny, 4), *gz = calloc(ny, 4), *gy = calloc(ny, 4);
    float *dx_ref = calloc(nx, 4), *dw_ref = calloc(conv.weight.numel, 4), *db_ref = calloc(CO, 4);
    float *sm = calloc(CO, 4), *si = calloc(CO, 4), *dg = calloc(CO, 4), *dbt = calloc(CO, 4);
    float *a_got = malloc(ny * 4), *dx_got = malloc(nx * 4);
    for (size_t i = 0; i < nx; i++)
        x[i] = nn_rng_normal(&r);
    for (size_t i = 0; i < ny; i++)
        t[i] = nn_rng_normal(&r);
    nn_conv_shape s = {N, CI, H, W, CO, 3, 3, 1, 1, 1, 1, 1, NN_PAD_ZERO, 1};
    /* reference */
    ref_conv2d_forward(y_ref, x, conv.weight.data, conv.bias.data, &s);
    ref_batchnorm_forward_train(z_ref, sm, si, NULL, NULL, y_ref, bn.gamma.data, bn.beta.data, N, CO, H, W, 1e-5f, 0.1f);
    ref_leaky_relu_forward(a_ref, z_ref, ny, 0.2f);
    double loss_ref = ref_l1_loss(a_ref, t, ny);
    ref_l1_loss_backward(g, a_ref, t, ny, 1.0f);
    ref_leaky_relu_backward(gz, g, z_ref, ny, 0.2f);
    ref_batchnorm_backward_train(gy, dg, dbt, gz, y_ref, bn.gamma.data, sm, si, N, CO, H, W);
    ref_conv2d_backward(dx_ref, dw_ref, db_ref, gy, x, conv.weight.data, &s);
    /* engine */
    nn_act xa = {0}, ya = {0}, za = {0}, aa = {0}, ta = {0}, ga = {0}, gza = {0}, gya = {0}, dxa = {0};
    double loss;
    double t0 = now_ms();
    if (nn_act_from_nchw(ctx, &xa, x, N, CI, H, W, &e) || nn_act_from_nchw(ctx, &ta, t, N, CO, H, W, &e) ||
        nn_conv2d_forward(ctx, &conv, &xa, &ya, &e) || nn_batchnorm2d_forward(ctx, &bn, &ya, &za, &e) ||
        nn_eltwise_forward(ctx, &act, &za, &aa, &e) || nn_l1_loss(ctx, &aa, &ta, &loss, NULL, &e) ||
        nn_l1_loss_backward(ctx, &aa, &ta, 1.0f, &ga, &e) || nn_eltwise_backward(ctx, &act, &za, &ga, &gza, &e) ||
        nn_batchnorm2d_backward(ctx, &bn, &ya, &gza, &gya, &e) ||
        nn_conv2d_backward(ctx, &conv, &xa, &gya, &dxa, 1, &e) || nn_act_to_nchw(ctx, &aa, a_got, &e) ||
        nn_act_to_nchw(ctx, &dxa, dx_got, &e))
        goto fail;
    double ms = now_ms() - t0;
    double ea = rel_err(a_got, a_ref, ny), edx = rel_err(dx_got, dx_ref, nx);
    double edw = rel_err(conv.dweight.data, dw_ref, conv.weight.numel), edb = 0, mdw = 0;
    /* The batch norm cancels the conv bias, so its true gradient is ~0: measure it on dw's scale. */
    for (size_t i = 0; i < conv.weight.numel; i++)
        mdw = fmax(mdw, fabs(dw_ref[i]));
    for (int i = 0; i < CO; i++)
        edb = fmax(edb, fabs((double)conv.dbias.data[i] - db_ref[i]) / mdw);
    fprintf(out, "conv3x3(6->16)+bn+leaky_relu+l1 on [%d, %d, %d, %d]: loss %.7f (reference %.7f), %.1f ms\n", N, CI,
            H, W, loss, loss_ref, ms);
    fprintf(out, "  max error / max |value| vs reference: out %.2e, dx %.2e, dw %.2e, db (on dw's scale) %.2e\n", ea, edx, edw, edb);
    *worst = fmax(fmax(ea, edx), fmax(fmax(edw, edb), fabs(loss - loss_ref) / fabs(loss_ref)));
    nn_act *acts[] = {&xa, &ya, &za, &aa, &ta, &ga, &gza, &gya, &dxa};
    for (size_t i = 0; i < sizeof acts / sizeof *acts; i++)
        nn_act_free(acts[i]);
    float *bufs[] = {x, t, y_ref, z_ref, a_ref, g, gz, gy, dx_ref, dw_ref, db_ref, sm, si, dg, dbt, a_got, dx_got};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        free(bufs[i]);
    nn_conv2d_free(&conv);
    nn_batchnorm2d_free(&bn);
    nn_eltwise_free(&act);
    return 0;
fail:
    fprintf(out, "selfcheck failed: %s\n", e.msg);
    return -1;
}

static int vgg(FILE *out, nn_ctx *ctx)
{
    enum { N = 1, S = 64 };
    nn_err e;
    vgg19 v;
    if (vgg19_init(&v, 0, &e)) {
        fprintf(out, "selfcheck failed: %s\n", e.msg);
        return -1;
    }
    size_t n = (size_t)N * 3 * S * S;
    float *x = malloc(n * 4), *y = malloc(n * 4), *g = malloc(n * 4);
    nn_rng r;
    nn_rng_seed(&r, 3);
    for (size_t i = 0; i < n; i++) {
        y[i] = nn_rng_normal(&r);
        x[i] = y[i] + 0.3f * nn_rng_normal(&r);
    }
    double loss, t0 = now_ms();
    int rc = vgg19_set_target(ctx, &v, y, N, S, S, &e) || vgg19_perceptual(ctx, &v, x, N, S, S, &loss, NULL, g, &e);
    double ms = now_ms() - t0;
    if (rc)
        fprintf(out, "selfcheck failed: %s\n", e.msg);
    else {
        double norm = 0;
        for (size_t i = 0; i < n; i++)
            norm += (double)g[i] * g[i];
        fprintf(out, "VGG-19 perceptual loss (random teacher: not a perceptual loss) at [%d, 3, %d, %d]: %.6f, "
                     "|grad| %.4e, %.1f ms incl. set-up\n", N, S, S, loss, sqrt(norm), ms);
    }
    free(x), free(y), free(g);
    vgg19_free(&v);
    return rc ? -1 : 0;
}

int selfcheck_run(FILE *out, int threads)
{
    nn_ctx ctx;
    nn_err e;
    if (nn_ctx_init(&ctx, threads, &e)) {
        fprintf(out, "selfcheck: %s\n", e.msg);
        return 1;
    }
    const dnnl_version_t *v = dnnl_version();
    fprintf(out, "pgnd engine self-check: oneDNN %d.%d.%d (cpu runtime %s), %d OpenMP threads\n", v->major, v->minor,
            v->patch, v->cpu_runtime == DNNL_RUNTIME_OMP ? "OpenMP" : "other", ctx.threads);
    double worst = 1;
    int rc = conv_stack(out, &ctx, &worst) || vgg(out, &ctx);
    int agree = !rc && worst <= 1e-4;
    fprintf(out, "%s: oneDNN and reference kernels %s (worst relative error %.2e, limit 1e-4)\n",
            agree ? "OK" : "FAILED", agree ? "agree" : "disagree", worst);
    nn_ctx_free(&ctx);
    return agree ? 0 : 1;
}
