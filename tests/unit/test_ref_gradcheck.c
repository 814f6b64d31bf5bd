/* Finite-difference checks of every reference backward in nn/ref_*.c, plus the semantics the
 * gradients rely on: backward accumulates (+=), NULL gradients are skipped, max-pool ties go to the
 * first element of the window, and batch norm updates its running statistics as PyTorch.
 *
 * Method: for a layer y = f(inputs) and a fixed random r, the scalar loss L = sum(y * r) (in double)
 * has dL/dinput = backward(dy = r). Each float input element is moved by +-eps and
 * (L+ - L-) / (x+ - x-) is compared with the analytic gradient:
 *     max |analytic - fd| <= 2e-2 * max |fd| + 1e-4. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "nn/ref.h"

/* ---------------------------------------------------------------- random numbers */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static float urand(void) /* [0, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 40) * (1.0 / 16777216.0));
}

static float nrand(void)
{
    const float u = urand() + 1e-7f, v = urand();
    return sqrtf(-2.0f * logf(u)) * cosf(6.2831853f * v);
}

static float *rand_array(size_t n, float scale)
{
    float *a = malloc(n * sizeof *a);
    assert_non_null(a);
    for (size_t i = 0; i < n; i++)
        a[i] = scale * nrand();
    return a;
}

static float *zeros(size_t n)
{
    float *a = calloc(n ? n : 1, sizeof *a);
    assert_non_null(a);
    return a;
}

/* Values with |v| in [lo, lo + scale): away from a kink at 0. */
static float *away_from_zero(size_t n, float lo, float scale)
{
    float *a = malloc(n * sizeof *a);
    assert_non_null(a);
    for (size_t i = 0; i < n; i++)
        a[i] = (urand() < 0.5f ? -1.0f : 1.0f) * (lo + scale * urand());
    return a;
}

/* ---------------------------------------------------------------- the checker */

#define MAX_VARS 4

typedef struct gc_var {
    const char *name;
    float *value; /* perturbed in place */
    float *grad;  /* filled by backward (accumulated) */
    size_t n;
} gc_var;

typedef struct gc_layer {
    const char *name;
    void (*forward)(void *ctx);  /* computes y (and whatever the backward needs) from the vars */
    void (*backward)(void *ctx); /* accumulates into every var's grad, with dy = r */
    double (*scalar)(void *ctx); /* optional: the loss itself instead of sum(y * r) (losses) */
    void *ctx;
    const float *y, *r;
    size_t ny;
    gc_var var[MAX_VARS];
    int nvars;
    double eps;
} gc_layer;

static double layer_loss(const gc_layer *L)
{
    L->forward(L->ctx);
    if (L->scalar)
        return L->scalar(L->ctx);
    double s = 0.0;
    for (size_t i = 0; i < L->ny; i++)
        s += (double)L->y[i] * L->r[i];
    return s;
}

/* Central differences of the loss with respect to every element of v. */
static double *finite_differences(const gc_layer *L, const gc_var *v)
{
    double *fd = malloc(v->n * sizeof *fd);
    assert_non_null(fd);
    for (size_t i = 0; i < v->n; i++) {
        const float saved = v->value[i];
        const float hi = saved + (float)L->eps, lo = saved - (float)L->eps;
        v->value[i] = hi;
        const double lp = layer_loss(L);
        v->value[i] = lo;
        const double lm = layer_loss(L);
        v->value[i] = saved;
        fd[i] = (lp - lm) / ((double)hi - (double)lo);
    }
    layer_loss(L); /* leave the forward state at the unperturbed point */
    return fd;
}

/* The comparison: max |a - fd| <= 2e-2 * max |fd| + 1e-4. Returns 1 if it holds. */
static int grad_matches(const float *analytic, const double *fd, size_t n, double *err, double *scale)
{
    double max_err = 0.0, max_fd = 0.0;
    for (size_t i = 0; i < n; i++) {
        const double d = fabs((double)analytic[i] - fd[i]);
        if (isnan(d) || isnan(max_err))
            max_err = NAN; /* sticky: NaN never passes */
        else if (d > max_err)
            max_err = d;
        if (fabs(fd[i]) > max_fd)
            max_fd = fabs(fd[i]);
    }
    if (err)
        *err = max_err;
    if (scale)
        *scale = max_fd;
    return max_err <= 2e-2 * max_fd + 1e-4;
}

static void zero_grads(gc_layer *L)
{
    for (int k = 0; k < L->nvars; k++)
        memset(L->var[k].grad, 0, L->var[k].n * sizeof(float));
}

/* Runs the whole check on a layer; fails the current test on any mismatch. */
static void gradcheck(gc_layer *L)
{
    layer_loss(L);
    zero_grads(L);
    L->backward(L->ctx);

    float *once[MAX_VARS];
    for (int k = 0; k < L->nvars; k++) {
        once[k] = malloc(L->var[k].n * sizeof(float));
        assert_non_null(once[k]);
        memcpy(once[k], L->var[k].grad, L->var[k].n * sizeof(float));
    }

    /* Accumulation: a second backward adds the same gradient again. */
    L->backward(L->ctx);
    for (int k = 0; k < L->nvars; k++) {
        double max_err = 0.0, max_g = 0.0;
        for (size_t i = 0; i < L->var[k].n; i++) {
            max_err = fmax(max_err, fabs((double)L->var[k].grad[i] - 2.0 * once[k][i]));
            max_g = fmax(max_g, fabs((double)once[k][i]));
        }
        if (max_err > 1e-5 * max_g + 1e-7) {
            print_error("%s: d%s does not accumulate: two backwards differ from 2x one by %.3g (max |g| %.3g)\n",
                        L->name, L->var[k].name, max_err, max_g);
            fail();
        }
    }

    for (int k = 0; k < L->nvars; k++) {
        double *fd = finite_differences(L, &L->var[k]);
        double err, scale;
        const int ok = grad_matches(once[k], fd, L->var[k].n, &err, &scale);
        if (!ok) {
            print_error("%s: d%s differs from finite differences: max err %.4g, max |fd| %.4g\n", L->name,
                        L->var[k].name, err, scale);
            for (size_t i = 0; i < L->var[k].n && i < 8; i++)
                print_error("  [%zu] analytic %.6g fd %.6g\n", i, once[k][i], fd[i]);
        }
        free(fd);
        free(once[k]);
        if (!ok)
            fail();
    }
}

/* ---------------------------------------------------------------- convolution and padding */

typedef struct conv_ctx {
    nn_conv_shape s;
    float *x, *w, *b, *y, *r, *dx, *dw, *db;
} conv_ctx;

static void conv_fwd(void *c)
{
    conv_ctx *k = c;
    ref_conv2d_forward(k->y, k->x, k->w, k->b, &k->s);
}

static void conv_bwd(void *c)
{
    conv_ctx *k = c;
    ref_conv2d_backward(k->dx, k->dw, k->db, k->r, k->x, k->w, &k->s);
}

static void conv_setup(conv_ctx *k, gc_layer *L, nn_conv_shape s, const char *name)
{
    memset(k, 0, sizeof *k);
    memset(L, 0, sizeof *L);
    k->s = s;
    const size_t nx = (size_t)s.n * s.cin * s.h * s.w;
    const size_t nw = (size_t)s.cout * (s.cin / s.groups) * s.kh * s.kw;
    const size_t ny = (size_t)s.n * s.cout * nn_conv_oh(&s) * nn_conv_ow(&s);
    k->x = rand_array(nx, 1.0f);
    k->w = rand_array(nw, 0.5f);
    k->b = s.has_bias ? rand_array((size_t)s.cout, 0.5f) : NULL;
    k->y = zeros(ny);
    k->r = rand_array(ny, 1.0f);
    k->dx = zeros(nx);
    k->dw = zeros(nw);
    k->db = s.has_bias ? zeros((size_t)s.cout) : NULL;
    *L = (gc_layer){.name = name, .forward = conv_fwd, .backward = conv_bwd, .ctx = k, .y = k->y, .r = k->r,
                    .ny = ny, .eps = 1e-2};
    L->var[L->nvars++] = (gc_var){"x", k->x, k->dx, nx};
    L->var[L->nvars++] = (gc_var){"w", k->w, k->dw, nw};
    if (s.has_bias)
        L->var[L->nvars++] = (gc_var){"b", k->b, k->db, (size_t)s.cout};
}

static void conv_free(conv_ctx *k)
{
    free(k->x), free(k->w), free(k->b), free(k->y), free(k->r), free(k->dx), free(k->dw), free(k->db);
}

static void check_conv(nn_conv_shape s, const char *name)
{
    conv_ctx k;
    gc_layer L;
    conv_setup(&k, &L, s, name);
    gradcheck(&L);
    conv_free(&k);
}

/*                                    n cin h  w cout kh kw sh sw ph pw g  pad_mode    bias */
static void test_conv_3x3(void **st)
{
    (void)st;
    check_conv((nn_conv_shape){2, 3, 6, 5, 4, 3, 3, 1, 1, 1, 1, 1, NN_PAD_ZERO, 1}, "conv 3x3");
}

static void test_conv_groups_stride2_reflect_nobias(void **st)
{
    (void)st;
    check_conv((nn_conv_shape){1, 4, 7, 8, 6, 3, 3, 2, 2, 1, 1, 2, NN_PAD_REFLECT, 0}, "conv groups=2 s2 reflect");
}

static void test_conv_depthwise(void **st)
{
    (void)st;
    check_conv((nn_conv_shape){2, 4, 5, 6, 4, 3, 3, 1, 1, 1, 1, 4, NN_PAD_ZERO, 1}, "conv depthwise");
    check_conv((nn_conv_shape){1, 2, 6, 7, 4, 3, 3, 2, 2, 1, 1, 2, NN_PAD_ZERO, 0}, "conv depthwise x2 s2");
}

static void test_conv_5x5_stride2_reflect(void **st)
{
    (void)st;
    check_conv((nn_conv_shape){1, 2, 9, 8, 3, 5, 5, 2, 2, 2, 2, 1, NN_PAD_REFLECT, 1}, "conv 5x5 s2 reflect");
}

static void test_conv_1x1(void **st)
{
    (void)st;
    check_conv((nn_conv_shape){2, 3, 4, 5, 5, 1, 1, 1, 1, 0, 0, 1, NN_PAD_ZERO, 1}, "conv 1x1");
}

static void test_conv_7x7_reflect(void **st)
{
    (void)st;
    check_conv((nn_conv_shape){1, 2, 8, 9, 3, 7, 7, 1, 1, 3, 3, 1, NN_PAD_REFLECT, 1}, "conv 7x7 reflect");
}

static void test_conv_3x1_reflect(void **st)
{
    (void)st;
    check_conv((nn_conv_shape){1, 2, 5, 4, 2, 3, 1, 1, 1, 1, 0, 1, NN_PAD_REFLECT, 1}, "conv 3x1 reflect");
}

/* A reflect conv is pad2d(reflect) followed by an unpadded conv. */
static void test_conv_reflect_equals_pad_then_conv(void **st)
{
    (void)st;
    const nn_conv_shape s = {1, 2, 6, 5, 3, 3, 3, 2, 2, 2, 1, 1, NN_PAD_REFLECT, 1};
    nn_conv_shape u = s;
    u.h += 2 * s.ph, u.w += 2 * s.pw, u.ph = u.pw = 0, u.pad_mode = NN_PAD_ZERO;
    const size_t ny = (size_t)s.n * s.cout * nn_conv_oh(&s) * nn_conv_ow(&s);
    assert_int_equal(nn_conv_oh(&s), nn_conv_oh(&u));
    assert_int_equal(nn_conv_ow(&s), nn_conv_ow(&u));
    float *x = rand_array((size_t)s.n * s.cin * s.h * s.w, 1.0f), *w = rand_array(3 * 2 * 9, 0.5f);
    float *b = rand_array(3, 0.5f), *xp = zeros((size_t)u.n * u.cin * u.h * u.w);
    float *y1 = zeros(ny), *y2 = zeros(ny);
    ref_conv2d_forward(y1, x, w, b, &s);
    ref_pad2d_forward(xp, x, s.n, s.cin, s.h, s.w, s.ph, s.pw, NN_PAD_REFLECT);
    ref_conv2d_forward(y2, xp, w, b, &u);
    for (size_t i = 0; i < ny; i++)
        assert_float_equal(y1[i], y2[i], 1e-6);
    free(x), free(w), free(b), free(xp), free(y1), free(y2);
}

typedef struct pad_ctx {
    int n, c, h, w, ph, pw, mode;
    float *x, *y, *r, *dx;
} pad_ctx;

static void pad_fwd(void *c)
{
    pad_ctx *k = c;
    ref_pad2d_forward(k->y, k->x, k->n, k->c, k->h, k->w, k->ph, k->pw, k->mode);
}

static void pad_bwd(void *c)
{
    pad_ctx *k = c;
    ref_pad2d_backward(k->dx, k->r, k->n, k->c, k->h, k->w, k->ph, k->pw, k->mode);
}

static void test_pad2d(void **st)
{
    (void)st;
    for (int mode = NN_PAD_ZERO; mode <= NN_PAD_REFLECT; mode++) {
        pad_ctx k = {2, 2, 4, 5, 2, 1, mode, NULL, NULL, NULL, NULL};
        const size_t nx = 2 * 2 * 4 * 5, ny = 2 * 2 * 8 * 7;
        k.x = rand_array(nx, 1.0f), k.y = zeros(ny), k.r = rand_array(ny, 1.0f), k.dx = zeros(nx);
        gc_layer L = {.name = mode ? "pad2d reflect" : "pad2d zero", .forward = pad_fwd, .backward = pad_bwd,
                      .ctx = &k, .y = k.y, .r = k.r, .ny = ny, .eps = 1e-2};
        L.var[L.nvars++] = (gc_var){"x", k.x, k.dx, nx};
        gradcheck(&L);
        /* torch.nn.ReflectionPad2d((1, 1, 2, 2)) on one plane: padded row 0 is input row 2 (edge not
         * repeated), padded column 0 is input column 1, padded row 7 is input row 1. */
        if (mode == NN_PAD_REFLECT) {
            assert_true(k.y[0 * 7 + 0] == k.x[2 * 5 + 1]);
            assert_true(k.y[1 * 7 + 6] == k.x[1 * 5 + 3]);
            assert_true(k.y[7 * 7 + 3] == k.x[1 * 5 + 2]);
        } else {
            assert_true(k.y[0] == 0.0f && k.y[2 * 7 + 1] == k.x[0]);
        }
        free(k.x), free(k.y), free(k.r), free(k.dx);
    }
}

/* ---------------------------------------------------------------- batch norm */

typedef struct bn_ctx {
    int n, c, h, w, train;
    float eps;
    float *x, *gamma, *beta, *y, *r, *dx, *dgamma, *dbeta;
    float *save_mean, *save_invstd, *rmean, *rvar;
} bn_ctx;

static void bn_fwd(void *p)
{
    bn_ctx *k = p;
    if (k->train)
        ref_batchnorm_forward_train(k->y, k->save_mean, k->save_invstd, NULL, NULL, k->x, k->gamma, k->beta, k->n,
                                    k->c, k->h, k->w, k->eps, 0.1f);
    else
        ref_batchnorm_forward_eval(k->y, k->x, k->gamma, k->beta, k->rmean, k->rvar, k->n, k->c, k->h, k->w,
                                   k->eps);
}

static void bn_bwd(void *p)
{
    bn_ctx *k = p;
    if (k->train)
        ref_batchnorm_backward_train(k->dx, k->dgamma, k->dbeta, k->r, k->x, k->gamma, k->save_mean,
                                     k->save_invstd, k->n, k->c, k->h, k->w);
    else
        ref_batchnorm_backward_eval(k->dx, k->dgamma, k->dbeta, k->r, k->x, k->gamma, k->rmean, k->rvar, k->n,
                                    k->c, k->h, k->w, k->eps);
}

static void check_bn(int train, int affine)
{
    bn_ctx k = {.n = 3, .c = 4, .h = 3, .w = 5, .train = train, .eps = 1e-5f};
    const size_t nx = (size_t)k.n * k.c * k.h * k.w, c = (size_t)k.c;
    k.x = rand_array(nx, 2.0f);
    for (size_t i = 0; i < nx; i++)
        k.x[i] += 0.5f;
    k.gamma = affine ? rand_array(c, 1.0f) : NULL;
    k.beta = affine ? rand_array(c, 1.0f) : NULL;
    k.y = zeros(nx), k.r = rand_array(nx, 1.0f), k.dx = zeros(nx);
    k.dgamma = zeros(c), k.dbeta = zeros(c), k.save_mean = zeros(c), k.save_invstd = zeros(c);
    k.rmean = rand_array(c, 1.0f), k.rvar = zeros(c);
    for (size_t i = 0; i < c; i++)
        k.rvar[i] = 0.5f + urand();
    char name[64];
    snprintf(name, sizeof name, "batchnorm %s%s", train ? "train" : "eval", affine ? "" : " affine=False");
    gc_layer L = {.name = name, .forward = bn_fwd, .backward = bn_bwd, .ctx = &k, .y = k.y, .r = k.r,
                  .ny = nx, .eps = 1e-2};
    L.var[L.nvars++] = (gc_var){"x", k.x, k.dx, nx};
    if (affine) {
        L.var[L.nvars++] = (gc_var){"gamma", k.gamma, k.dgamma, c};
        L.var[L.nvars++] = (gc_var){"beta", k.beta, k.dbeta, c};
    }
    gradcheck(&L);
    free(k.x), free(k.gamma), free(k.beta), free(k.y), free(k.r), free(k.dx), free(k.dgamma), free(k.dbeta);
    free(k.save_mean), free(k.save_invstd), free(k.rmean), free(k.rvar);
}

static void test_batchnorm_train(void **st)
{
    (void)st;
    check_bn(1, 1);
    check_bn(1, 0);
}

static void test_batchnorm_eval(void **st)
{
    (void)st;
    check_bn(0, 1);
    check_bn(0, 0);
}

/* n = 2, c = 2, h = 1, w = 2. Channel 0 holds {1, 2, 3, 6}: mean 3, biased var 14/4 = 3.5,
 * unbiased var 14/3. Channel 1 holds {0, 0, 0, 4}: mean 1, biased var 12/4 = 3, unbiased 4.
 * torch.nn.BatchNorm2d(2, momentum=0.1) with running_mean {0.5, -1}, running_var {1, 2}:
 * running_mean = 0.9 * old + 0.1 * mean = {0.75, -0.8}; running_var = 0.9 * old + 0.1 * unbiased
 * = {0.9 + 14/30, 2.2}. */
static void test_batchnorm_running_stats_by_hand(void **st)
{
    (void)st;
    const float x[8] = {1, 2, 0, 0, 3, 6, 0, 4}; /* [n][c][w] */
    const float gamma[2] = {2.0f, 1.0f}, beta[2] = {0.5f, 0.0f};
    float y[8], sm[2], si[2], rm[2] = {0.5f, -1.0f}, rv[2] = {1.0f, 2.0f};
    const float eps = 1e-5f;
    ref_batchnorm_forward_train(y, sm, si, rm, rv, x, gamma, beta, 2, 2, 1, 2, eps, 0.1f);
    assert_float_equal(sm[0], 3.0, 1e-6);
    assert_float_equal(sm[1], 1.0, 1e-6);
    assert_float_equal(si[0], 1.0 / sqrt(3.5 + 1e-5), 1e-6);
    assert_float_equal(si[1], 1.0 / sqrt(3.0 + 1e-5), 1e-6);
    assert_float_equal(rm[0], 0.75, 1e-6);
    assert_float_equal(rm[1], -0.8, 1e-6);
    assert_float_equal(rv[0], 0.9 + 1.4 / 3.0, 1e-6);
    assert_float_equal(rv[1], 2.2, 1e-6);
    /* y = (x - mean) * invstd * gamma + beta, e.g. channel 0, x = 6: 3 / sqrt(3.5) * 2 + 0.5 */
    assert_float_equal(y[5], 3.0 / sqrt(3.5 + 1e-5) * 2.0 + 0.5, 1e-5);
    assert_float_equal(y[3], -1.0 / sqrt(3.0 + 1e-5), 1e-5);

    /* NULL running stats: no update, same output. */
    float y2[8];
    ref_batchnorm_forward_train(y2, sm, si, NULL, NULL, x, gamma, beta, 2, 2, 1, 2, eps, 0.1f);
    for (int i = 0; i < 8; i++)
        assert_true(y[i] == y2[i]);

    /* Eval uses the running statistics: channel 1, x = 4: (4 + 0.8) / sqrt(2.2 + eps). */
    ref_batchnorm_forward_eval(y2, x, gamma, beta, rm, rv, 2, 2, 1, 2, eps);
    assert_float_equal(y2[7], (4.0 + 0.8) / sqrt(2.2 + 1e-5), 1e-5);
    assert_float_equal(y2[0], (1.0 - 0.75) / sqrt(0.9 + 1.4 / 3.0 + 1e-5) * 2.0 + 0.5, 1e-5);
}

/* ---------------------------------------------------------------- activations */

enum act_kind { ACT_RELU, ACT_LEAKY, ACT_SIGMOID, ACT_TANH };

typedef struct act_ctx {
    int kind;
    float slope;
    size_t n;
    float *x, *y, *r, *dx;
} act_ctx;

static void act_fwd(void *p)
{
    act_ctx *k = p;
    switch (k->kind) {
    case ACT_RELU: ref_relu_forward(k->y, k->x, k->n); break;
    case ACT_LEAKY: ref_leaky_relu_forward(k->y, k->x, k->n, k->slope); break;
    case ACT_SIGMOID: ref_sigmoid_forward(k->y, k->x, k->n); break;
    default: ref_tanh_forward(k->y, k->x, k->n); break;
    }
}

static void act_bwd(void *p)
{
    act_ctx *k = p;
    switch (k->kind) {
    case ACT_RELU: ref_relu_backward(k->dx, k->r, k->x, k->n); break;
    case ACT_LEAKY: ref_leaky_relu_backward(k->dx, k->r, k->x, k->n, k->slope); break;
    case ACT_SIGMOID: ref_sigmoid_backward(k->dx, k->r, k->y, k->n); break;
    default: ref_tanh_backward(k->dx, k->r, k->y, k->n); break;
    }
}

static void test_activations(void **st)
{
    (void)st;
    static const char *names[] = {"relu", "leaky_relu", "sigmoid", "tanh"};
    for (int kind = ACT_RELU; kind <= ACT_TANH; kind++) {
        act_ctx k = {.kind = kind, .slope = 0.2f, .n = 200};
        /* |x| >= 0.05 and eps 1e-3: no point crosses the ReLU kink. */
        k.x = away_from_zero(k.n, 0.05f, 3.0f), k.y = zeros(k.n), k.r = rand_array(k.n, 1.0f), k.dx = zeros(k.n);
        gc_layer L = {.name = names[kind], .forward = act_fwd, .backward = act_bwd, .ctx = &k, .y = k.y, .r = k.r,
                      .ny = k.n, .eps = 1e-3};
        L.var[L.nvars++] = (gc_var){"x", k.x, k.dx, k.n};
        gradcheck(&L);
        free(k.x), free(k.y), free(k.r), free(k.dx);
    }
}

/* PyTorch's conventions at the kink: ReLU'(0) = 0, LeakyReLU'(0) = slope. */
static void test_activation_kinks(void **st)
{
    (void)st;
    const float x[3] = {0.0f, -1.0f, 2.0f}, dy[3] = {1.0f, 1.0f, 1.0f};
    float y[3], dx[3] = {0};
    ref_relu_forward(y, x, 3);
    assert_true(y[0] == 0.0f && y[1] == 0.0f && y[2] == 2.0f);
    ref_relu_backward(dx, dy, x, 3);
    assert_true(dx[0] == 0.0f && dx[1] == 0.0f && dx[2] == 1.0f);
    memset(dx, 0, sizeof dx);
    ref_leaky_relu_forward(y, x, 3, 0.2f);
    assert_true(y[0] == 0.0f && y[1] == -0.2f && y[2] == 2.0f);
    ref_leaky_relu_backward(dx, dy, x, 3, 0.2f);
    assert_true(dx[0] == 0.2f && dx[1] == 0.2f && dx[2] == 1.0f);
}

/* ---------------------------------------------------------------- pooling */

typedef struct pool_ctx {
    nn_pool_shape s; /* max-pool; avg-pool uses n, c, h, w */
    int avg;
    float *x, *y, *r, *dx;
    int32_t *argmax;
} pool_ctx;

static void pool_fwd(void *p)
{
    pool_ctx *k = p;
    if (k->avg)
        ref_avgpool2x2_forward(k->y, k->x, k->s.n, k->s.c, k->s.h, k->s.w);
    else
        ref_maxpool2d_forward(k->y, k->argmax, k->x, &k->s);
}

static void pool_bwd(void *p)
{
    pool_ctx *k = p;
    if (k->avg)
        ref_avgpool2x2_backward(k->dx, k->r, k->s.n, k->s.c, k->s.h, k->s.w);
    else
        ref_maxpool2d_backward(k->dx, k->r, k->argmax, &k->s);
}

static void check_pool(nn_pool_shape s, int avg, const char *name)
{
    pool_ctx k = {.s = s, .avg = avg};
    const size_t nx = (size_t)s.n * s.c * s.h * s.w;
    const size_t plane_out = avg ? (size_t)(s.h / 2) * (s.w / 2) : (size_t)nn_pool_oh(&s) * nn_pool_ow(&s);
    const size_t ny = (size_t)s.n * s.c * plane_out;
    /* Distinct values 0.05 apart (a shuffled ramp) and eps 1e-3: no perturbation changes a winner. */
    k.x = zeros(nx);
    for (size_t i = 0; i < nx; i++)
        k.x[i] = 0.05f * (float)i - 0.025f * (float)nx;
    for (size_t i = nx - 1; i > 0; i--) {
        const size_t j = (size_t)(urand() * (float)(i + 1)) % (i + 1);
        const float t = k.x[i];
        k.x[i] = k.x[j], k.x[j] = t;
    }
    k.y = zeros(ny), k.r = rand_array(ny, 1.0f), k.dx = zeros(nx);
    k.argmax = calloc(ny, sizeof *k.argmax);
    assert_non_null(k.argmax);
    gc_layer L = {.name = name, .forward = pool_fwd, .backward = pool_bwd, .ctx = &k, .y = k.y, .r = k.r, .ny = ny,
                  .eps = 1e-3};
    L.var[L.nvars++] = (gc_var){"x", k.x, k.dx, nx};
    gradcheck(&L);
    free(k.x), free(k.y), free(k.r), free(k.dx), free(k.argmax);
}

static void test_maxpool(void **st)
{
    (void)st;
    check_pool((nn_pool_shape){2, 3, 7, 6, 3, 2, 1}, 0, "maxpool k3 s2 p1");
    check_pool((nn_pool_shape){1, 2, 7, 9, 2, 2, 0}, 0, "maxpool k2 s2 odd");
    check_pool((nn_pool_shape){1, 2, 5, 5, 3, 1, 1}, 0, "maxpool k3 s1 p1");
}

static void test_avgpool_odd_sizes(void **st)
{
    (void)st;
    check_pool((nn_pool_shape){2, 2, 7, 9, 2, 2, 0}, 1, "avgpool 7x9");
    check_pool((nn_pool_shape){1, 3, 6, 5, 2, 2, 0}, 1, "avgpool 6x5");
}

/* Ties go to the first maximum in row-major window order; the gradient goes there only. */
static void test_maxpool_tie_rule(void **st)
{
    (void)st;
    float x[16], y[9], dx[16] = {0}, dy[9];
    int32_t am[9];
    for (int i = 0; i < 16; i++)
        x[i] = 1.5f;
    const nn_pool_shape s2 = {1, 1, 4, 4, 2, 2, 0};
    ref_maxpool2d_forward(y, am, x, &s2);
    for (int oy = 0; oy < 2; oy++)
        for (int ox = 0; ox < 2; ox++)
            assert_int_equal(am[oy * 2 + ox], (2 * oy) * 4 + 2 * ox);
    /* k3 s1 p1 on a 3x3 plane of equal values: the window is clipped to the input, and its first
     * valid element wins (padding never wins). */
    const nn_pool_shape s3 = {1, 1, 3, 3, 3, 1, 1};
    ref_maxpool2d_forward(y, am, x, &s3);
    const int32_t want[9] = {0, 0, 1, 0, 0, 1, 3, 3, 4};
    for (int i = 0; i < 9; i++) {
        assert_int_equal(am[i], want[i]);
        assert_true(y[i] == 1.5f);
        dy[i] = 1.0f;
    }
    ref_maxpool2d_backward(dx, dy, am, &s3);
    assert_true(dx[0] == 4.0f && dx[1] == 2.0f && dx[3] == 2.0f && dx[4] == 1.0f && dx[2] == 0.0f);
    /* Two equal maxima that are not first in the window: the earlier one wins. */
    const float z[4] = {1.0f, 5.0f, 5.0f, 2.0f};
    const nn_pool_shape s1 = {1, 1, 2, 2, 2, 2, 0};
    ref_maxpool2d_forward(y, am, z, &s1);
    assert_int_equal(am[0], 1);
    assert_true(y[0] == 5.0f);
    /* Negative values only, with padding: padding (-inf) never wins. */
    const float neg[4] = {-3.0f, -2.0f, -4.0f, -5.0f};
    const nn_pool_shape sp = {1, 1, 2, 2, 2, 1, 1};
    ref_maxpool2d_forward(y, am, neg, &sp);
    assert_int_equal(am[0], 0);
    assert_true(y[0] == -3.0f);
    /* NaN propagates as in PyTorch's CPU kernel. */
    const float nanx[4] = {1.0f, NAN, 3.0f, 2.0f};
    ref_maxpool2d_forward(y, am, nanx, &s1);
    assert_true(isnan(y[0]));
    assert_int_equal(am[0], 1);
}

/* ---------------------------------------------------------------- upsampling */

typedef struct up_ctx {
    int n, c, h, w, bilinear;
    float *x, *y, *r, *dx;
} up_ctx;

static void up_fwd(void *p)
{
    up_ctx *k = p;
    if (k->bilinear)
        ref_upsample_bilinear2x_forward(k->y, k->x, k->n, k->c, k->h, k->w);
    else
        ref_upsample_nearest2x_forward(k->y, k->x, k->n, k->c, k->h, k->w);
}

static void up_bwd(void *p)
{
    up_ctx *k = p;
    if (k->bilinear)
        ref_upsample_bilinear2x_backward(k->dx, k->r, k->n, k->c, k->h, k->w);
    else
        ref_upsample_nearest2x_backward(k->dx, k->r, k->n, k->c, k->h, k->w);
}

static void check_upsample(int bilinear, int n, int c, int h, int w)
{
    up_ctx k = {n, c, h, w, bilinear, NULL, NULL, NULL, NULL};
    const size_t nx = (size_t)n * c * h * w, ny = 4 * nx;
    k.x = rand_array(nx, 1.0f), k.y = zeros(ny), k.r = rand_array(ny, 1.0f), k.dx = zeros(nx);
    char name[64];
    snprintf(name, sizeof name, "upsample %s %dx%d", bilinear ? "bilinear" : "nearest", h, w);
    gc_layer L = {.name = name, .forward = up_fwd, .backward = up_bwd, .ctx = &k, .y = k.y, .r = k.r, .ny = ny,
                  .eps = 1e-2};
    L.var[L.nvars++] = (gc_var){"x", k.x, k.dx, nx};
    gradcheck(&L);
    free(k.x), free(k.y), free(k.r), free(k.dx);
}

static void test_upsample_nearest(void **st)
{
    (void)st;
    check_upsample(0, 2, 3, 5, 7);
    check_upsample(0, 1, 2, 1, 3);
}

static void test_upsample_bilinear(void **st)
{
    (void)st;
    check_upsample(1, 2, 3, 5, 7);
    check_upsample(1, 1, 2, 1, 3);
    check_upsample(1, 1, 2, 8, 6);
}

/* align_corners=True: corners copy the input corners; 1x2 -> 2x4 gives x0, x0 + (x1-x0)/3, ... */
static void test_upsample_bilinear_values(void **st)
{
    (void)st;
    const float x[2] = {0.0f, 3.0f};
    float y[8];
    ref_upsample_bilinear2x_forward(y, x, 1, 1, 1, 2);
    const float want[4] = {0.0f, 1.0f, 2.0f, 3.0f};
    for (int i = 0; i < 4; i++) {
        assert_float_equal(y[i], want[i], 1e-6);
        assert_float_equal(y[4 + i], want[i], 1e-6);
    }
}

/* ---------------------------------------------------------------- concat and add */

typedef struct cat_ctx {
    int concat, n, ca, cb, hw;
    float *a, *b, *y, *r, *da, *db;
} cat_ctx;

static void cat_fwd(void *p)
{
    cat_ctx *k = p;
    if (k->concat)
        ref_concat_forward(k->y, k->a, k->ca, k->b, k->cb, k->n, k->hw);
    else
        ref_add_forward(k->y, k->a, k->b, (size_t)k->n * k->ca * k->hw);
}

static void cat_bwd(void *p)
{
    cat_ctx *k = p;
    if (k->concat)
        ref_concat_backward(k->da, k->db, k->r, k->ca, k->cb, k->n, k->hw);
    else
        ref_add_backward(k->da, k->db, k->r, (size_t)k->n * k->ca * k->hw);
}

static void check_cat(int concat)
{
    cat_ctx k = {concat, 2, 3, concat ? 2 : 3, 10, NULL, NULL, NULL, NULL, NULL, NULL};
    const size_t na = (size_t)k.n * k.ca * k.hw, nb = (size_t)k.n * k.cb * k.hw, ny = concat ? na + nb : na;
    k.a = rand_array(na, 1.0f), k.b = rand_array(nb, 1.0f), k.y = zeros(ny), k.r = rand_array(ny, 1.0f);
    k.da = zeros(na), k.db = zeros(nb);
    gc_layer L = {.name = concat ? "concat" : "add", .forward = cat_fwd, .backward = cat_bwd, .ctx = &k, .y = k.y,
                  .r = k.r, .ny = ny, .eps = 1e-2};
    L.var[L.nvars++] = (gc_var){"a", k.a, k.da, na};
    L.var[L.nvars++] = (gc_var){"b", k.b, k.db, nb};
    gradcheck(&L);
    if (concat) { /* sample 1, channel ca (the first of b) */
        assert_true(k.y[1 * (k.ca + k.cb) * k.hw + k.ca * k.hw] == k.b[1 * k.cb * k.hw]);
    }
    free(k.a), free(k.b), free(k.y), free(k.r), free(k.da), free(k.db);
}

static void test_concat(void **st)
{
    (void)st;
    check_cat(1);
}

static void test_add(void **st)
{
    (void)st;
    check_cat(0);
}

/* ---------------------------------------------------------------- losses */

typedef struct loss_ctx {
    int mse;
    size_t n;
    float dloss;
    float *x, *t, *dx;
    double value;
} loss_ctx;

static void loss_fwd(void *p)
{
    loss_ctx *k = p;
    k->value = k->mse ? ref_mse_loss(k->x, k->t, k->n) : ref_l1_loss(k->x, k->t, k->n);
}

static double loss_scalar(void *p)
{
    loss_ctx *k = p;
    return k->dloss * k->value; /* the upstream scalar times the loss */
}

static void loss_bwd(void *p)
{
    loss_ctx *k = p;
    if (k->mse)
        ref_mse_loss_backward(k->dx, k->x, k->t, k->n, k->dloss);
    else
        ref_l1_loss_backward(k->dx, k->x, k->t, k->n, k->dloss);
}

static void check_loss(int mse)
{
    loss_ctx k = {.mse = mse, .n = 60, .dloss = 0.7f};
    k.t = rand_array(k.n, 1.0f), k.dx = zeros(k.n);
    k.x = away_from_zero(k.n, 0.05f, 2.0f); /* x - t away from 0: L1 has a kink there */
    for (size_t i = 0; i < k.n; i++)
        k.x[i] += k.t[i];
    gc_layer L = {.name = mse ? "mse" : "l1", .forward = loss_fwd, .backward = loss_bwd, .scalar = loss_scalar,
                  .ctx = &k, .eps = 1e-3};
    L.var[L.nvars++] = (gc_var){"x", k.x, k.dx, k.n};
    gradcheck(&L);
    free(k.x), free(k.t), free(k.dx);
}

static void test_l1_loss(void **st)
{
    (void)st;
    check_loss(0);
    const float x[4] = {1, 2, 3, 4}, t[4] = {0, 2, 5, 4.5f};
    assert_float_equal(ref_l1_loss(x, t, 4), (1 + 0 + 2 + 0.5) / 4.0, 1e-12);
    float dx[4] = {0};
    ref_l1_loss_backward(dx, x, t, 4, 2.0f); /* sign(0) = 0 */
    assert_true(dx[0] == 0.5f && dx[1] == 0.0f && dx[2] == -0.5f && dx[3] == -0.5f);
}

static void test_mse_loss(void **st)
{
    (void)st;
    check_loss(1);
    const float x[4] = {1, 2, 3, 4}, t[4] = {0, 2, 5, 4.5f};
    assert_float_equal(ref_mse_loss(x, t, 4), (1 + 0 + 4 + 0.25) / 4.0, 1e-12);
}

/* ---------------------------------------------------------------- the checker itself */

/* The comparison must reject gradients that are slightly wrong, or it proves nothing. */
static void test_checker_detects_wrong_gradients(void **st)
{
    (void)st;
    conv_ctx k;
    gc_layer L;
    conv_setup(&k, &L, (nn_conv_shape){1, 2, 5, 5, 2, 3, 3, 1, 1, 1, 1, 1, NN_PAD_REFLECT, 1}, "conv");
    layer_loss(&L);
    L.backward(L.ctx);
    gc_var *w = &L.var[1];
    double *fd = finite_differences(&L, w);
    double err, scale;
    assert_true(grad_matches(w->grad, fd, w->n, &err, &scale));
    assert_true(scale > 1.0);

    float *bad = malloc(w->n * sizeof *bad);
    assert_non_null(bad);
    /* 5% too large everywhere */
    for (size_t i = 0; i < w->n; i++)
        bad[i] = 1.05f * w->grad[i];
    assert_false(grad_matches(bad, fd, w->n, NULL, NULL));
    /* one element off by 5% of the largest gradient */
    memcpy(bad, w->grad, w->n * sizeof *bad);
    bad[w->n / 2] += 0.05f * (float)scale;
    assert_false(grad_matches(bad, fd, w->n, NULL, NULL));
    /* two elements swapped (an index mix-up): the largest and the smallest */
    memcpy(bad, w->grad, w->n * sizeof *bad);
    size_t imax = 0, imin = 0;
    for (size_t i = 1; i < w->n; i++) {
        imax = w->grad[i] > w->grad[imax] ? i : imax;
        imin = w->grad[i] < w->grad[imin] ? i : imin;
    }
    bad[imax] = w->grad[imin], bad[imin] = w->grad[imax];
    assert_false(grad_matches(bad, fd, w->n, NULL, NULL));
    /* NaN */
    memcpy(bad, w->grad, w->n * sizeof *bad);
    bad[3] = NAN;
    assert_false(grad_matches(bad, fd, w->n, NULL, NULL));
    free(bad);
    free(fd);
    conv_free(&k);

    /* A plausible bug: leaky ReLU backward with the wrong slope. */
    act_ctx a = {.kind = ACT_LEAKY, .slope = 0.2f, .n = 50};
    a.x = away_from_zero(a.n, 0.05f, 3.0f), a.y = zeros(a.n), a.r = rand_array(a.n, 1.0f), a.dx = zeros(a.n);
    gc_layer La = {.name = "leaky", .forward = act_fwd, .backward = act_bwd, .ctx = &a, .y = a.y, .r = a.r,
                   .ny = a.n, .eps = 1e-3};
    La.var[La.nvars++] = (gc_var){"x", a.x, a.dx, a.n};
    double *fda = finite_differences(&La, &La.var[0]);
    ref_leaky_relu_backward(a.dx, a.r, a.x, a.n, 0.25f);
    assert_false(grad_matches(a.dx, fda, a.n, NULL, NULL));
    free(fda);
    free(a.x), free(a.y), free(a.r), free(a.dx);
}

/* ---------------------------------------------------------------- NULL gradients */

/* Every backward skips NULL gradient pointers, and computes the others unchanged. */
static void test_null_gradients_skipped(void **st)
{
    (void)st;
    const nn_conv_shape s = {1, 2, 4, 4, 2, 3, 3, 1, 1, 1, 1, 1, NN_PAD_ZERO, 1};
    float *x = rand_array(32, 1.0f), *w = rand_array(36, 1.0f), *dy = rand_array(32, 1.0f), *t = rand_array(32, 1.0f);
    float *dw1 = zeros(36), *dw2 = zeros(36), *dx = zeros(32), *db = zeros(2), *y = zeros(128);
    ref_conv2d_backward(NULL, NULL, NULL, dy, x, w, &s);
    ref_conv2d_backward(dx, dw1, db, dy, x, w, &s);
    ref_conv2d_backward(NULL, dw2, NULL, dy, x, w, &s);
    for (int i = 0; i < 36; i++)
        assert_true(dw1[i] == dw2[i]);

    float g[2] = {1.0f, 2.0f}, stat[2] = {0.1f, 0.2f}, var[2] = {1.0f, 1.5f};
    ref_batchnorm_backward_train(NULL, NULL, NULL, dy, x, g, stat, var, 1, 2, 4, 4);
    ref_batchnorm_backward_eval(NULL, NULL, NULL, dy, x, g, stat, var, 1, 2, 4, 4, 1e-5f);
    float dg1[2] = {0}, dg2[2] = {0};
    ref_batchnorm_backward_train(dx, dg1, NULL, dy, x, g, stat, var, 1, 2, 4, 4);
    ref_batchnorm_backward_train(NULL, dg2, NULL, dy, x, g, stat, var, 1, 2, 4, 4);
    assert_true(dg1[0] == dg2[0] && dg1[1] == dg2[1]);

    ref_pad2d_backward(NULL, y, 1, 2, 4, 4, 1, 1, NN_PAD_REFLECT);
    ref_relu_backward(NULL, dy, x, 32);
    ref_leaky_relu_backward(NULL, dy, x, 32, 0.2f);
    ref_sigmoid_backward(NULL, dy, x, 32);
    ref_tanh_backward(NULL, dy, x, 32);
    ref_avgpool2x2_backward(NULL, dy, 1, 2, 4, 4);
    int32_t am[32] = {0};
    const nn_pool_shape ps = {1, 2, 4, 4, 2, 2, 0};
    ref_maxpool2d_backward(NULL, dy, am, &ps);
    ref_upsample_nearest2x_backward(NULL, y, 1, 2, 4, 4);
    ref_upsample_bilinear2x_backward(NULL, y, 1, 2, 4, 4);
    ref_l1_loss_backward(NULL, x, t, 32, 1.0f);
    ref_mse_loss_backward(NULL, x, t, 32, 1.0f);

    float da[32] = {0}, dbb[32] = {0};
    ref_concat_backward(NULL, dbb, y, 2, 2, 1, 16);
    ref_concat_backward(da, NULL, y, 2, 2, 1, 16);
    for (int i = 0; i < 32; i++)
        assert_true(da[i] == y[i] && dbb[i] == y[32 + i]);
    memset(da, 0, sizeof da);
    ref_add_backward(NULL, da, dy, 32);
    ref_add_backward(NULL, NULL, dy, 32);
    for (int i = 0; i < 32; i++)
        assert_true(da[i] == dy[i]);
    free(x), free(w), free(dy), free(t), free(dw1), free(dw2), free(dx), free(db), free(y);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_checker_detects_wrong_gradients),
        cmocka_unit_test(test_conv_3x3),
        cmocka_unit_test(test_conv_groups_stride2_reflect_nobias),
        cmocka_unit_test(test_conv_depthwise),
        cmocka_unit_test(test_conv_5x5_stride2_reflect),
        cmocka_unit_test(test_conv_1x1),
        cmocka_unit_test(test_conv_7x7_reflect),
        cmocka_unit_test(test_conv_3x1_reflect),
        cmocka_unit_test(test_conv_reflect_equals_pad_then_conv),
        cmocka_unit_test(test_pad2d),
        cmocka_unit_test(test_batchnorm_train),
        cmocka_unit_test(test_batchnorm_eval),
        cmocka_unit_test(test_batchnorm_running_stats_by_hand),
        cmocka_unit_test(test_activations),
        cmocka_unit_test(test_activation_kinks),
        cmocka_unit_test(test_maxpool),
        cmocka_unit_test(test_maxpool_tie_rule),
        cmocka_unit_test(test_avgpool_odd_sizes),
        cmocka_unit_test(test_upsample_nearest),
        cmocka_unit_test(test_upsample_bilinear),
        cmocka_unit_test(test_upsample_bilinear_values),
        cmocka_unit_test(test_concat),
        cmocka_unit_test(test_add),
        cmocka_unit_test(test_l1_loss),
        cmocka_unit_test(test_mse_loss),
        cmocka_unit_test(test_null_gradients_skipped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
