/* Every layer of the engine, on the oneDNN path (with the input given in plain NCHW and in the
 * blocked nChw16c / nChw8c layouts) and on the plain-C reference path, against PyTorch's
 * fixtures (tests/fixtures/layers.safetensors): outputs and every gradient within 1e-4 of the
 * largest value. Also checks the engine's gradient store-or-add rule and running statistics, and
 * that the fused upsample-and-concatenate gives upsample then concatenate bit for bit, and the
 * bilinear upsampling's backward through the ReLU before it (nn_upsample2x_backward_relu), and the
 * batch norm with its ReLU fused (fuse_relu). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "nn/dnnl_util.h"
#include "nn/ref.h"
#include "tests/unit/fixture.h"

#define TOL 1e-4

static nn_weights fx;
static nn_ctx ctx;
static const int layouts[3] = {1, 16, 8};

static int setup(void **state)
{
    nn_err e;
    fx_open(&fx, "layers.safetensors");
    if (nn_ctx_init(&ctx, 2, &e)) {
        print_error("%s\n", e.msg);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    nn_weights_free(&fx);
    nn_ctx_free(&ctx);
    return 0;
}

#define P(key) ((int)fx_param(&fx, c, key))

static const float *T(const char *c, const char *role, size_t *numel)
{
    char name[256];
    snprintf(name, sizeof name, "%s.%s", c, role);
    return fx_get(&fx, name, numel);
}

static void check(const char *c, const char *what, int blk, const float *got, const float *want, size_t n)
{
    char label[256];
    snprintf(label, sizeof label, "%s %s (%s)", c, what, blk == 0 ? "reference" : blk == 1 ? "nchw" : blk == 16 ? "nChw16c" : "nChw8c");
    fx_expect_close(label, got, want, n, TOL);
}

static void check_act(const char *c, const char *what, int blk, const nn_act *a, const float *want, size_t n)
{
    assert_int_equal(nn_act_count(a), n);
    float *got = fx_act_to(&ctx, a);
    check(c, what, blk, got, want, n);
    free(got);
}

/* An input activation in the layout of the variant (1 = plain NCHW). */
static void input(nn_act *a, const float *data, int n, int ch, int h, int w, int blk)
{
    nn_err e;
    fx_act_from(&ctx, a, data, n, ch, h, w);
    dnnl_memory_desc_t md = nn_md_blocked(n, ch, h, w, blk);
    assert_int_equal(nn_act_convert(&ctx, a, &md, &e), 0);
}

static void ok(int rc, const nn_err *e)
{
    if (rc) {
        print_error("%s\n", e->msg);
        fail();
    }
}

static float *zeros(size_t n) { return calloc(n, sizeof(float)); }

static nn_conv_shape conv_shape(const char *c)
{
    const char *mode = fx_param_str(&fx, c, "pad_mode");
    return (nn_conv_shape){P("n"), P("cin"), P("h"), P("w"), P("cout"), P("kh"), P("kw"), P("sh"), P("sw"),
                           P("ph"), P("pw"), P("groups"), strcmp(mode, "reflect") ? NN_PAD_ZERO : NN_PAD_REFLECT,
                           P("has_bias")};
}

static void run_conv(const char *c)
{
    nn_conv_shape s = conv_shape(c);
    size_t nx, nw, ny;
    const float *x = T(c, "x", &nx), *w = T(c, "w", &nw), *y = T(c, "y", &ny), *dy = T(c, "dy", NULL);
    const float *b = s.has_bias ? T(c, "b", NULL) : NULL;
    int oh = nn_conv_oh(&s), ow = nn_conv_ow(&s);
    for (int v = 0; v < 3; v++) {
        nn_err e;
        nn_conv2d l;
        ok(nn_conv2d_init(&l, s.cin, s.cout, s.kh, s.kw, s.sh, s.sw, s.ph, s.pw, s.groups, s.pad_mode, s.has_bias,
                          NULL, &e), &e);
        memcpy(l.weight.data, w, nw * sizeof(float));
        if (b)
            memcpy(l.bias.data, b, (size_t)s.cout * sizeof(float));
        nn_act xa = {0}, ya = {0}, dya = {0}, dxa = {0};
        input(&xa, x, s.n, s.cin, s.h, s.w, layouts[v]);
        ok(nn_conv2d_forward(&ctx, &l, &xa, &ya, &e), &e);
        check_act(c, "y", layouts[v], &ya, y, ny);
        input(&dya, dy, s.n, s.cout, oh, ow, layouts[v]);
        ok(nn_conv2d_backward(&ctx, &l, &xa, &dya, &dxa, 1, &e), &e);
        check_act(c, "dx", layouts[v], &dxa, T(c, "dx", NULL), nx);
        check(c, "dw", layouts[v], l.dweight.data, T(c, "dw", NULL), nw);
        if (b)
            check(c, "db", layouts[v], l.dbias.data, T(c, "db", NULL), (size_t)s.cout);
        /* A second backward adds: every gradient doubles. */
        ok(nn_conv2d_backward(&ctx, &l, &xa, &dya, &dxa, 1, &e), &e);
        float *dx2 = fx_act_to(&ctx, &dxa);
        for (size_t i = 0; i < nx; i++)
            dx2[i] *= 0.5f;
        check(c, "dx accumulated twice / 2", layouts[v], dx2, T(c, "dx", NULL), nx);
        for (size_t i = 0; i < nw; i++)
            l.dweight.data[i] *= 0.5f;
        check(c, "dw accumulated twice / 2", layouts[v], l.dweight.data, T(c, "dw", NULL), nw);
        free(dx2);
        nn_act_free(&xa), nn_act_free(&ya), nn_act_free(&dya), nn_act_free(&dxa);
        nn_conv2d_free(&l);
    }
    float *ry = zeros(ny), *rdx = zeros(nx), *rdw = zeros(nw), *rdb = zeros((size_t)s.cout);
    ref_conv2d_forward(ry, x, w, b, &s);
    check(c, "y", 0, ry, y, ny);
    ref_conv2d_backward(rdx, rdw, b ? rdb : NULL, dy, x, w, &s);
    check(c, "dx", 0, rdx, T(c, "dx", NULL), nx);
    check(c, "dw", 0, rdw, T(c, "dw", NULL), nw);
    if (b)
        check(c, "db", 0, rdb, T(c, "db", NULL), (size_t)s.cout);
    free(ry), free(rdx), free(rdw), free(rdb);
}

static void run_bn(const char *c)
{
    int n = P("n"), ch = P("c"), h = P("h"), w = P("w"), training = P("training");
    float eps = (float)fx_param(&fx, c, "eps"), mom = (float)fx_param(&fx, c, "momentum");
    size_t nx;
    const float *x = T(c, "x", &nx), *gamma = T(c, "gamma", NULL), *beta = T(c, "beta", NULL);
    const float *rm = T(c, "running_mean_in", NULL), *rv = T(c, "running_var_in", NULL);
    const float *dy = T(c, "dy", NULL);
    for (int v = 0; v < 3; v++) {
        nn_err e;
        nn_batchnorm2d l;
        ok(nn_batchnorm2d_init(&l, ch, eps, mom, &e), &e);
        l.training = training;
        memcpy(l.gamma.data, gamma, ch * sizeof(float));
        memcpy(l.beta.data, beta, ch * sizeof(float));
        memcpy(l.running_mean.data, rm, ch * sizeof(float));
        memcpy(l.running_var.data, rv, ch * sizeof(float));
        nn_act xa = {0}, ya = {0}, dya = {0}, dxa = {0};
        input(&xa, x, n, ch, h, w, layouts[v]);
        ok(nn_batchnorm2d_forward(&ctx, &l, &xa, &ya, &e), &e);
        check_act(c, "y", layouts[v], &ya, T(c, "y", NULL), nx);
        check(c, "running_mean", layouts[v], l.running_mean.data, T(c, "running_mean_out", NULL), ch);
        check(c, "running_var", layouts[v], l.running_var.data, T(c, "running_var_out", NULL), ch);
        input(&dya, dy, n, ch, h, w, layouts[v]);
        ok(nn_batchnorm2d_backward(&ctx, &l, &xa, &dya, &dxa, &e), &e);
        check_act(c, "dx", layouts[v], &dxa, T(c, "dx", NULL), nx);
        check(c, "dgamma", layouts[v], l.dgamma.data, T(c, "dgamma", NULL), ch);
        check(c, "dbeta", layouts[v], l.dbeta.data, T(c, "dbeta", NULL), ch);
        /* fuse_relu: relu(bn(x)) in one pass, and a backward through that ReLU, against this
         * layer's own y and its backward of dy masked by y > 0 (a fresh layer of the same state) */
        nn_batchnorm2d f, u;
        nn_batchnorm2d *fu[2] = {&f, &u};
        for (int k = 0; k < 2; k++) {
            ok(nn_batchnorm2d_init(fu[k], ch, eps, mom, &e), &e);
            fu[k]->training = training;
            memcpy(fu[k]->gamma.data, gamma, ch * sizeof(float));
            memcpy(fu[k]->beta.data, beta, ch * sizeof(float));
            memcpy(fu[k]->running_mean.data, rm, ch * sizeof(float));
            memcpy(fu[k]->running_var.data, rv, ch * sizeof(float));
        }
        f.fuse_relu = 1;
        nn_act yf = {0}, yu = {0}, dym = {0}, dxf = {0}, dxu = {0};
        float *y32 = fx_act_to(&ctx, &ya), *ym = malloc(nx * sizeof(float)), *dm = malloc(nx * sizeof(float));
        for (size_t i = 0; i < nx; i++)
            ym[i] = y32[i] > 0 ? y32[i] : 0.0f, dm[i] = y32[i] > 0 ? dy[i] : 0.0f;
        ok(nn_batchnorm2d_forward(&ctx, &f, &xa, &yf, &e), &e);
        check_act(c, "y, ReLU fused", layouts[v], &yf, ym, nx);
        check(c, "running_var, ReLU fused", layouts[v], f.running_var.data, T(c, "running_var_out", NULL), ch);
        ok(nn_batchnorm2d_forward(&ctx, &u, &xa, &yu, &e), &e);
        input(&dym, dm, n, ch, h, w, layouts[v]);
        ok(nn_batchnorm2d_backward(&ctx, &f, &xa, &dya, &dxf, &e), &e);
        ok(nn_batchnorm2d_backward(&ctx, &u, &xa, &dym, &dxu, &e), &e);
        float *gu = fx_act_to(&ctx, &dxu);
        check_act(c, "dx, ReLU fused", layouts[v], &dxf, gu, nx);
        check(c, "dgamma, ReLU fused", layouts[v], f.dgamma.data, u.dgamma.data, ch);
        check(c, "dbeta, ReLU fused", layouts[v], f.dbeta.data, u.dbeta.data, ch);
        ok(nn_batchnorm2d_backward(&ctx, &f, &xa, &dya, &dxf, &e), &e); /* adds */
        for (size_t i = 0; i < nx; i++)
            gu[i] *= 2;
        check_act(c, "dx, ReLU fused, twice", layouts[v], &dxf, gu, nx);
        free(y32), free(ym), free(dm), free(gu);
        nn_act_free(&yf), nn_act_free(&yu), nn_act_free(&dym), nn_act_free(&dxf), nn_act_free(&dxu);
        nn_batchnorm2d_free(&f), nn_batchnorm2d_free(&u);
        nn_act_free(&xa), nn_act_free(&ya), nn_act_free(&dya), nn_act_free(&dxa);
        nn_batchnorm2d_free(&l);
    }
    float *ry = zeros(nx), *rdx = zeros(nx), *dg = zeros(ch), *db = zeros(ch), *sm = zeros(ch), *si = zeros(ch);
    float *rrm = zeros(ch), *rrv = zeros(ch);
    memcpy(rrm, rm, ch * sizeof(float));
    memcpy(rrv, rv, ch * sizeof(float));
    if (training) {
        ref_batchnorm_forward_train(ry, sm, si, rrm, rrv, x, gamma, beta, n, ch, h, w, eps, mom);
        ref_batchnorm_backward_train(rdx, dg, db, dy, x, gamma, sm, si, n, ch, h, w);
    } else {
        ref_batchnorm_forward_eval(ry, x, gamma, beta, rm, rv, n, ch, h, w, eps);
        ref_batchnorm_backward_eval(rdx, dg, db, dy, x, gamma, rm, rv, n, ch, h, w, eps);
    }
    check(c, "y", 0, ry, T(c, "y", NULL), nx);
    check(c, "running_mean", 0, rrm, T(c, "running_mean_out", NULL), ch);
    check(c, "running_var", 0, rrv, T(c, "running_var_out", NULL), ch);
    check(c, "dx", 0, rdx, T(c, "dx", NULL), nx);
    check(c, "dgamma", 0, dg, T(c, "dgamma", NULL), ch);
    check(c, "dbeta", 0, db, T(c, "dbeta", NULL), ch);
    free(ry), free(rdx), free(dg), free(db), free(sm), free(si), free(rrm), free(rrv);
}

static void run_act(const char *c, const char *op)
{
    int n = P("n"), ch = P("c"), h = P("h"), w = P("w");
    nn_act_kind kind = !strcmp(op, "relu") ? NN_RELU : !strcmp(op, "leaky_relu") ? NN_LEAKY_RELU
                       : !strcmp(op, "sigmoid") ? NN_SIGMOID : NN_TANH;
    float slope = kind == NN_LEAKY_RELU ? (float)fx_param(&fx, c, "slope") : 0.0f;
    size_t nx;
    const float *x = T(c, "x", &nx), *y = T(c, "y", NULL), *dy = T(c, "dy", NULL), *dx = T(c, "dx", NULL);
    for (int v = 0; v < 3; v++) {
        nn_err e;
        nn_eltwise l;
        nn_eltwise_init(&l, kind, slope);
        nn_act xa = {0}, ya = {0}, dya = {0}, dxa = {0};
        input(&xa, x, n, ch, h, w, layouts[v]);
        ok(nn_eltwise_forward(&ctx, &l, &xa, &ya, &e), &e);
        check_act(c, "y", layouts[v], &ya, y, nx);
        input(&dya, dy, n, ch, h, w, layouts[v]);
        const nn_act *saved = (kind == NN_SIGMOID || kind == NN_TANH) ? &ya : &xa;
        ok(nn_eltwise_backward(&ctx, &l, saved, &dya, &dxa, &e), &e);
        check_act(c, "dx", layouts[v], &dxa, dx, nx);
        nn_act_free(&xa), nn_act_free(&ya), nn_act_free(&dya), nn_act_free(&dxa);
        nn_eltwise_free(&l);
    }
    float *ry = zeros(nx), *rdx = zeros(nx);
    switch (kind) {
    case NN_RELU: ref_relu_forward(ry, x, nx), ref_relu_backward(rdx, dy, x, nx); break;
    case NN_LEAKY_RELU: ref_leaky_relu_forward(ry, x, nx, slope), ref_leaky_relu_backward(rdx, dy, x, nx, slope); break;
    case NN_SIGMOID: ref_sigmoid_forward(ry, x, nx), ref_sigmoid_backward(rdx, dy, ry, nx); break;
    case NN_TANH: ref_tanh_forward(ry, x, nx), ref_tanh_backward(rdx, dy, ry, nx); break;
    }
    check(c, "y", 0, ry, y, nx);
    check(c, "dx", 0, rdx, dx, nx);
    free(ry), free(rdx);
}

static void run_pool(const char *c, int is_max)
{
    int n = P("n"), ch = P("c"), h = P("h"), w = P("w");
    int k = is_max ? P("k") : 2, s = is_max ? P("s") : 2, p = is_max ? P("p") : 0;
    size_t nx, ny;
    const float *x = T(c, "x", &nx), *y = T(c, "y", &ny), *dy = T(c, "dy", NULL), *dx = T(c, "dx", NULL);
    nn_pool_shape ps = {n, ch, h, w, k, s, p};
    int oh = nn_pool_oh(&ps), ow = nn_pool_ow(&ps);
    for (int v = 0; v < 3; v++) {
        nn_err e;
        nn_pool2d l;
        nn_pool2d_init(&l, is_max, k, s, p);
        nn_act xa = {0}, ya = {0}, dya = {0}, dxa = {0};
        input(&xa, x, n, ch, h, w, layouts[v]);
        ok(nn_pool2d_forward(&ctx, &l, &xa, &ya, &e), &e);
        check_act(c, "y", layouts[v], &ya, y, ny);
        input(&dya, dy, n, ch, oh, ow, layouts[v]);
        ok(nn_pool2d_backward(&ctx, &l, &xa, &dya, &dxa, &e), &e);
        check_act(c, "dx", layouts[v], &dxa, dx, nx);
        nn_act_free(&xa), nn_act_free(&ya), nn_act_free(&dya), nn_act_free(&dxa);
        nn_pool2d_free(&l);
    }
    float *ry = zeros(ny), *rdx = zeros(nx);
    if (is_max) {
        int32_t *arg = calloc(ny, sizeof *arg);
        ref_maxpool2d_forward(ry, arg, x, &ps);
        ref_maxpool2d_backward(rdx, dy, arg, &ps);
        free(arg);
    } else {
        ref_avgpool2x2_forward(ry, x, n, ch, h, w);
        ref_avgpool2x2_backward(rdx, dy, n, ch, h, w);
    }
    check(c, "y", 0, ry, y, ny);
    check(c, "dx", 0, rdx, dx, nx);
    free(ry), free(rdx);
}

static void run_upsample(const char *c, int bilinear)
{
    int n = P("n"), ch = P("c"), h = P("h"), w = P("w");
    size_t nx, ny;
    const float *x = T(c, "x", &nx), *y = T(c, "y", &ny), *dy = T(c, "dy", NULL), *dx = T(c, "dx", NULL);
    for (int v = 0; v < 3; v++) {
        nn_err e;
        nn_upsample2x l;
        nn_upsample2x_init(&l, bilinear);
        nn_act xa = {0}, ya = {0}, dya = {0}, dxa = {0};
        input(&xa, x, n, ch, h, w, layouts[v]);
        ok(nn_upsample2x_forward(&ctx, &l, &xa, &ya, &e), &e);
        check_act(c, "y", layouts[v], &ya, y, ny);
        input(&dya, dy, n, ch, 2 * h, 2 * w, layouts[v]);
        ok(nn_upsample2x_backward(&ctx, &l, &dya, &dxa, &e), &e);
        check_act(c, "dx", layouts[v], &dxa, dx, nx);
        /* Accumulates on a second call. */
        ok(nn_upsample2x_backward(&ctx, &l, &dya, &dxa, &e), &e);
        float *twice = fx_act_to(&ctx, &dxa);
        for (size_t i = 0; i < nx; i++)
            twice[i] *= 0.5f;
        check(c, "dx accumulated twice / 2", layouts[v], twice, dx, nx);
        free(twice);
        /* With the ReLU that made x taken back in the same pass (bilinear only): dx = (x > 0) * dx,
         * in x's layout, dy given in the same layout as x or another one; a second call adds. */
        nn_act dyo = {0}, dxr = {0};
        input(&dyo, dy, n, ch, 2 * h, 2 * w, layouts[(v + 1) % 3]);
        for (int k = 0; k < 2; k++) {
            const nn_act *g = k ? &dyo : &dya;
            nn_act_grad_reset(&dxr);
            int r = nn_upsample2x_backward_relu(&ctx, &l, g, &xa, &dxr, &e);
            if (!bilinear) {
                assert_int_equal(r, 1);
                assert_false(dxr.valid);
                continue;
            }
            ok(r, &e);
            assert_true(nn_md_equal(&dxr.md, &xa.md));
            float *masked = malloc(nx * sizeof(float));
            for (size_t i = 0; i < nx; i++)
                masked[i] = x[i] > 0 ? dx[i] : 0.0f;
            check_act(c, "dx through the ReLU", layouts[v], &dxr, masked, nx);
            ok(nn_upsample2x_backward_relu(&ctx, &l, g, &xa, &dxr, &e), &e);
            float *got = fx_act_to(&ctx, &dxr);
            for (size_t i = 0; i < nx; i++)
                got[i] *= 0.5f;
            check(c, "dx through the ReLU, twice / 2", layouts[v], got, masked, nx);
            /* into a dx valid in another layout */
            nn_act other = {0};
            for (size_t i = 0; i < nx; i++)
                got[i] = 1.0f;
            input(&other, got, n, ch, h, w, layouts[(v + 2) % 3]);
            ok(nn_upsample2x_backward_relu(&ctx, &l, g, &xa, &other, &e), &e);
            free(got);
            got = fx_act_to(&ctx, &other);
            for (size_t i = 0; i < nx; i++)
                got[i] -= 1.0f;
            check(c, "dx through the ReLU, added in another layout", layouts[v], got, masked, nx);
            nn_act_free(&other);
            free(masked), free(got);
        }
        nn_act_free(&dyo), nn_act_free(&dxr);
        nn_act_free(&xa), nn_act_free(&ya), nn_act_free(&dya), nn_act_free(&dxa);
        nn_upsample2x_free(&l);
    }
    float *ry = zeros(ny), *rdx = zeros(nx);
    if (bilinear) {
        ref_upsample_bilinear2x_forward(ry, x, n, ch, h, w);
        ref_upsample_bilinear2x_backward(rdx, dy, n, ch, h, w);
    } else {
        ref_upsample_nearest2x_forward(ry, x, n, ch, h, w);
        ref_upsample_nearest2x_backward(rdx, dy, n, ch, h, w);
    }
    check(c, "y", 0, ry, y, ny);
    check(c, "dx", 0, rdx, dx, nx);
    free(ry), free(rdx);
}

static void run_binary(const char *c, int is_concat)
{
    int n = P("n"), ca = P("ca"), cb = P("cb"), h = P("h"), w = P("w");
    size_t na, nb, ny;
    const float *a = T(c, "a", &na), *b = T(c, "b", &nb), *y = T(c, "y", &ny), *dy = T(c, "dy", NULL);
    const float *da = T(c, "da", NULL), *db = T(c, "db", NULL);
    int cy = is_concat ? ca + cb : ca;
    for (int v = 0; v < 3; v++) {
        nn_err e;
        nn_act aa = {0}, ba = {0}, ya = {0}, dya = {0}, daa = {0}, dba = {0};
        input(&aa, a, n, ca, h, w, layouts[v]);
        input(&ba, b, n, cb, h, w, layouts[v]);
        ok(is_concat ? nn_concat_forward(&ctx, &aa, &ba, &ya, &e) : nn_add_forward(&ctx, &aa, &ba, &ya, &e), &e);
        check_act(c, "y", layouts[v], &ya, y, ny);
        input(&dya, dy, n, cy, h, w, layouts[v]);
        ok(is_concat ? nn_concat_backward(&ctx, &dya, ca, &daa, &dba, &e) : nn_add_backward(&ctx, &dya, &daa, &dba, &e),
           &e);
        check_act(c, "da", layouts[v], &daa, da, na);
        check_act(c, "db", layouts[v], &dba, db, nb);
        nn_act_free(&aa), nn_act_free(&ba), nn_act_free(&ya), nn_act_free(&dya), nn_act_free(&daa), nn_act_free(&dba);
    }
    float *ry = zeros(ny), *rda = zeros(na), *rdb = zeros(nb);
    if (is_concat) {
        ref_concat_forward(ry, a, ca, b, cb, n, h * w);
        ref_concat_backward(rda, rdb, dy, ca, cb, n, h * w);
    } else {
        ref_add_forward(ry, a, b, ny);
        ref_add_backward(rda, rdb, dy, ny);
    }
    check(c, "y", 0, ry, y, ny);
    check(c, "da", 0, rda, da, na);
    check(c, "db", 0, rdb, db, nb);
    free(ry), free(rda), free(rdb);
}

static void run_loss(const char *c, int squared)
{
    int n = P("n"), ch = P("c"), h = P("h"), w = P("w");
    size_t nx;
    const float *x = T(c, "x", &nx), *t = T(c, "t", NULL), *loss = T(c, "loss", NULL), *dx = T(c, "dx", NULL);
    for (int v = 0; v < 3; v++) {
        nn_err e;
        nn_act xa = {0}, ta = {0}, dxa = {0};
        input(&xa, x, n, ch, h, w, layouts[v]);
        input(&ta, t, n, ch, h, w, 1); /* the target in another layout than x is allowed */
        double l;
        ok(squared ? nn_mse_loss(&ctx, &xa, &ta, &l, NULL, &e) : nn_l1_loss(&ctx, &xa, &ta, &l, NULL, &e), &e);
        float lf = (float)l;
        check(c, "loss", layouts[v], &lf, loss, 1);
        ok(squared ? nn_mse_loss_backward(&ctx, &xa, &ta, 1.0f, &dxa, &e)
                   : nn_l1_loss_backward(&ctx, &xa, &ta, 1.0f, &dxa, &e),
           &e);
        check_act(c, "dx", layouts[v], &dxa, dx, nx);
        nn_act_free(&xa), nn_act_free(&ta), nn_act_free(&dxa);
    }
    float *rdx = zeros(nx);
    float rl = (float)(squared ? ref_mse_loss(x, t, nx) : ref_l1_loss(x, t, nx));
    check(c, "loss", 0, &rl, loss, 1);
    if (squared)
        ref_mse_loss_backward(rdx, x, t, nx, 1.0f);
    else
        ref_l1_loss_backward(rdx, x, t, nx, 1.0f);
    check(c, "dx", 0, rdx, dx, nx);
    free(rdx);
}

/* Runs every case whose op is in `ops` (space separated); fails if none matched. */
static void run_cases(const char *ops)
{
    int ran = 0;
    for (int i = 0; i < fx.meta_count; i++) {
        const char *c = fx.meta[i].key;
        if (!strcmp(c, "torch_version") || !strcmp(c, "generator") || !strcmp(c, "compute_dtype"))
            continue;
        const char *op = fx_param_str(&fx, c, "op");
        char padded[64];
        snprintf(padded, sizeof padded, " %s ", op);
        char all[256];
        snprintf(all, sizeof all, " %s ", ops);
        if (!strstr(all, padded))
            continue;
        ran++;
        if (!strcmp(op, "conv2d")) run_conv(c);
        else if (!strcmp(op, "batchnorm2d")) run_bn(c);
        else if (!strcmp(op, "avgpool2x2")) run_pool(c, 0);
        else if (!strcmp(op, "maxpool2d")) run_pool(c, 1);
        else if (!strcmp(op, "upsample_nearest2x")) run_upsample(c, 0);
        else if (!strcmp(op, "upsample_bilinear2x")) run_upsample(c, 1);
        else if (!strcmp(op, "concat")) run_binary(c, 1);
        else if (!strcmp(op, "add")) run_binary(c, 0);
        else if (!strcmp(op, "l1_loss")) run_loss(c, 0);
        else if (!strcmp(op, "mse_loss")) run_loss(c, 1);
        else run_act(c, op);
    }
    assert_true(ran > 0);
}

/* nn_upsample2x_concat_forward: bit-identical to upsample then concat where it applies (the same
 * channel-blocked layout on both inputs, whole blocks upsampled), "not applicable" otherwise. */
static void upsample_concat_fused(void **s)
{
    (void)s;
    const int n = 2, cu = 32, cs = 24, h = 5, w = 7;
    size_t nu = (size_t)n * cu * h * w, ns = (size_t)n * cs * 4 * h * w;
    float *xu = malloc(nu * sizeof(float)), *xs = malloc(ns * sizeof(float));
    for (size_t i = 0; i < nu; i++)
        xu[i] = (float)((i * 7919) % 1000) / 997.0f - 0.5f;
    for (size_t i = 0; i < ns; i++)
        xs[i] = (float)((i * 104729) % 1000) / 991.0f - 0.5f;
    for (int v = 0; v < 3; v++) {
        nn_err e;
        nn_upsample2x l;
        nn_upsample2x_init(&l, 1);
        nn_act a = {0}, b = {0}, up = {0}, ref = {0}, y = {0};
        input(&a, xu, n, cu, h, w, layouts[v]);
        input(&b, xs, n, cs, 2 * h, 2 * w, layouts[v]);
        ok(nn_upsample2x_forward(&ctx, &l, &a, &up, &e), &e);
        ok(nn_concat_forward(&ctx, &up, &b, &ref, &e), &e);
        int rc = nn_upsample2x_concat_forward(&ctx, &l, &a, &b, &y, &e);
        if (layouts[v] == 1) {
            assert_int_equal(rc, 1); /* plain NCHW: the caller's two steps */
        } else {
            assert_int_equal(rc, 0);
            float *got = fx_act_to(&ctx, &y), *want = fx_act_to(&ctx, &ref);
            assert_memory_equal(got, want, (nu * 4 + ns) * sizeof(float));
            free(got), free(want);
            /* a skip in another blocking is not fused */
            nn_act b2 = {0}, y2 = {0};
            input(&b2, xs, n, cs, 2 * h, 2 * w, layouts[v] == 16 ? 8 : 16);
            assert_int_equal(nn_upsample2x_concat_forward(&ctx, &l, &a, &b2, &y2, &e), 1);
            nn_act_free(&b2), nn_act_free(&y2);
        }
        nn_act_free(&a), nn_act_free(&b), nn_act_free(&up), nn_act_free(&ref), nn_act_free(&y);
        nn_upsample2x_free(&l);
    }
    free(xu), free(xs);
}

static void conv2d(void **s) { run_cases("conv2d"); }
static void batchnorm2d(void **s) { run_cases("batchnorm2d"); }
static void activations(void **s) { run_cases("relu leaky_relu sigmoid tanh"); }
static void pooling(void **s) { run_cases("avgpool2x2 maxpool2d"); }
static void upsampling(void **s) { run_cases("upsample_nearest2x upsample_bilinear2x"); }
static void concat_and_add(void **s) { run_cases("concat add"); }
static void losses(void **s) { run_cases("l1_loss mse_loss"); }

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(conv2d),     cmocka_unit_test(batchnorm2d),    cmocka_unit_test(activations),
        cmocka_unit_test(pooling),    cmocka_unit_test(upsampling),     cmocka_unit_test(concat_and_add),
        cmocka_unit_test(losses),     cmocka_unit_test(upsample_concat_fused),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
