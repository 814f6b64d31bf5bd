/* The fused backward of a last 1x1 convolution and the ReLU before it (nn/conv_head.c, through
 * nn_conv2d_backward_relu_input), against a float64 reference computed here and against the
 * engine's two-step path (nn_conv2d_backward, then the ReLU's backward):
 *   - 1 to 4 outputs; 3, 20 (a partly filled channel block) and 128 inputs; batch 1 and 2; odd
 *     and square images; with and without bias; x (a ReLU's output, with exact zeros) in NCHW,
 *     nChw16c and nChw8c; dy plain or channel-blocked;
 *   - dx is written in x's layout (padding channels zero); a second call adds to dx and to the
 *     parameter gradients; a dx already valid in another layout is added to; param_grads 0
 *     leaves dw and db alone;
 *   - results do not depend on the thread count (bitwise);
 *   - shapes without the fused kernel (3x3, 5 outputs, stride 2, groups), an input in a layout it
 *     does not read (nhwc), released weights, and the switch PGND_FUSED off are declined
 *     (1), and nothing is written. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <omp.h>

#include "nn/dnnl_util.h"
#include "nn/rng.h"
#include "tests/unit/fixture.h"

#define TOL 1e-5

/* uniform [-1, 1); relu: a ReLU's output (about half exact zeros) */
static float *randv(size_t n, uint64_t seed, int relu)
{
    float *v = fx_randv(n, seed);
    for (size_t i = 0; relu && i < n; i++)
        v[i] = v[i] < 0 ? 0 : v[i];
    return v;
}

typedef struct ref {
    double *dx, *dw, *db;
} ref;

static ref reference(const float *x, const float *dy, const float *w, int n, int cin, int cout, int hw)
{
    ref r = {calloc((size_t)n * cin * hw, sizeof(double)), calloc((size_t)cout * cin, sizeof(double)),
             calloc((size_t)cout, sizeof(double))};
    for (int i = 0; i < n; i++)
        for (int c = 0; c < cin; c++)
            for (int q = 0; q < hw; q++) {
                const double xv = x[((size_t)i * cin + c) * hw + q];
                double g = 0;
                for (int k = 0; k < cout; k++) {
                    const double d = dy[((size_t)i * cout + k) * hw + q];
                    g += (double)w[(size_t)k * cin + c] * d;
                    r.dw[(size_t)k * cin + c] += d * xv;
                }
                r.dx[((size_t)i * cin + c) * hw + q] = xv > 0 ? g : 0;
            }
    for (int i = 0; i < n; i++)
        for (int k = 0; k < cout; k++)
            for (int q = 0; q < hw; q++)
                r.db[k] += dy[((size_t)i * cout + k) * hw + q];
    return r;
}

static double max_abs_d(const double *v, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++)
        m = fabs(v[i]) > m ? fabs(v[i]) : m;
    return m;
}

/* max |got - scale * want| / max |scale * want| */
static void expect_close_d(const char *label, const float *got, const double *want, double scale, size_t n)
{
    double m = max_abs_d(want, n) * fabs(scale), err = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs(got[i] - scale * want[i]);
        err = d > err ? d : err;
    }
    double rel = m > 0 ? err / m : err;
    if (!(rel <= TOL)) {
        print_error("%s: relative error %.3g\n", label, rel);
        fail();
    }
}

static void one_case(int n, int cin, int cout, int h, int w, int bias, int xblk, int dyblk)
{
    char label[160];
    snprintf(label, sizeof label, "n %d, %d -> %d, %dx%d, bias %d, x blk %d, dy blk %d", n, cin, cout, h, w, bias,
             xblk, dyblk);
    nn_err e;
    nn_rng rng;
    nn_rng_seed(&rng, 5);
    nn_conv2d l;
    fx_ok(nn_conv2d_init(&l, cin, cout, 1, 1, 1, 1, 0, 0, 1, NN_PAD_ZERO, bias, &rng, &e), &e);
    const int hw = h * w;
    const size_t nx = (size_t)n * cin * hw, ny = (size_t)n * cout * hw;
    float *x = randv(nx, 11, 1), *dy = randv(ny, 12, 0);
    nn_act ax = {0}, ay = {0}, ady = {0}, adx = {0};
    fx_act_blocked(&fx_ctx, &ax, x, n, cin, h, w, xblk);
    fx_act_blocked(&fx_ctx, &ady, dy, n, cout, h, w, dyblk);
    fx_ok(nn_conv2d_forward(&fx_ctx, &l, &ax, &ay, &e), &e);
    ref r = reference(x, dy, l.weight.data, n, cin, cout, hw);

    /* first call: dx written in x's layout, gradients accumulate from zero */
    int rc = nn_conv2d_backward_relu_input(&fx_ctx, &l, &ax, &ady, &adx, 1, &e);
    if (rc) {
        print_error("%s: declined or failed (%d): %s\n", label, rc, rc < 0 ? e.msg : "");
        fail();
    }
    assert_true(adx.valid);
    assert_true(nn_md_equal(&adx.md, &ax.md));
    float *gx = fx_act_to(&fx_ctx, &adx);
    expect_close_d(label, gx, r.dx, 1, nx);
    expect_close_d(label, l.dweight.data, r.dw, 1, (size_t)cout * cin);
    if (bias)
        expect_close_d(label, l.dbias.data, r.db, 1, cout);
    /* padding channels of a blocked dx are zero */
    if (xblk > 1 && cin % xblk) {
        nn_view5 v;
        assert_int_equal(nn_view5_of(&adx.md, n, cin, h, w, &v), 0);
        for (int i = 0; i < n; i++)
            for (int c = cin; c < v.cb * xblk; c++)
                for (int q = 0; q < hw; q++)
                    assert_true(adx.data[nn_view5_off(&v, i, c, q / w, q % w)] == 0.0f);
    }

    /* the engine's two-step path gives the same (up to summation order) */
    nn_conv2d l2;
    nn_rng_seed(&rng, 5);
    fx_ok(nn_conv2d_init(&l2, cin, cout, 1, 1, 1, 1, 0, 0, 1, NN_PAD_ZERO, bias, &rng, &e), &e);
    nn_act ay2 = {0}, g2 = {0}, gpre2 = {0};
    nn_eltwise relu;
    nn_eltwise_init(&relu, NN_RELU, 0);
    fx_ok(nn_conv2d_forward(&fx_ctx, &l2, &ax, &ay2, &e), &e);
    fx_ok(nn_conv2d_backward(&fx_ctx, &l2, &ax, &ady, &g2, 1, &e), &e);
    fx_ok(nn_eltwise_backward(&fx_ctx, &relu, &ax, &g2, &gpre2, &e), &e);
    float *gx2 = fx_act_to(&fx_ctx, &gpre2);
    fx_expect_close(label, gx, gx2, nx, TOL);
    fx_expect_close(label, l.dweight.data, l2.dweight.data, (size_t)cout * cin, TOL);
    if (bias)
        fx_expect_close(label, l.dbias.data, l2.dbias.data, (size_t)cout, TOL);

    /* a second call adds (dx in its layout, dw, db) */
    fx_ok(nn_conv2d_backward_relu_input(&fx_ctx, &l, &ax, &ady, &adx, 1, &e), &e);
    float *gx_twice = fx_act_to(&fx_ctx, &adx);
    expect_close_d(label, gx_twice, r.dx, 2, nx);
    expect_close_d(label, l.dweight.data, r.dw, 2, (size_t)cout * cin);
    if (bias)
        expect_close_d(label, l.dbias.data, r.db, 2, cout);

    /* into a dx already valid in another layout; param_grads 0 leaves dw, db alone */
    nn_act other = {0};
    float *ones = malloc(nx * sizeof(float));
    for (size_t i = 0; i < nx; i++)
        ones[i] = 1.0f;
    fx_act_blocked(&fx_ctx, &other, ones, n, cin, h, w, xblk == 16 ? 8 : 16);
    const float dw0 = l.dweight.data[0], db0 = bias ? l.dbias.data[0] : 0;
    fx_ok(nn_conv2d_backward_relu_input(&fx_ctx, &l, &ax, &ady, &other, 0, &e), &e);
    assert_true(l.dweight.data[0] == dw0);
    if (bias)
        assert_true(l.dbias.data[0] == db0);
    float *go = fx_act_to(&fx_ctx, &other);
    for (size_t i = 0; i < nx; i++)
        go[i] -= 1.0f;
    expect_close_d(label, go, r.dx, 1, nx);

    /* the thread count does not change a bit */
    nn_act d1 = {0};
    float *dw1 = malloc((size_t)cout * cin * sizeof(float));
    memset(l.dweight.data, 0, (size_t)cout * cin * sizeof(float));
    omp_set_num_threads(1);
    fx_ok(nn_conv2d_backward_relu_input(&fx_ctx, &l, &ax, &ady, &d1, 1, &e), &e);
    omp_set_num_threads(2);
    memcpy(dw1, l.dweight.data, (size_t)cout * cin * sizeof(float));
    memset(l.dweight.data, 0, (size_t)cout * cin * sizeof(float));
    nn_act_grad_reset(&adx);
    fx_ok(nn_conv2d_backward_relu_input(&fx_ctx, &l, &ax, &ady, &adx, 1, &e), &e);
    assert_memory_equal(d1.data, adx.data, nn_md_bytes(&adx.md));
    assert_memory_equal(dw1, l.dweight.data, (size_t)cout * cin * sizeof(float));

    free(x), free(dy), free(gx), free(gx2), free(gx_twice), free(ones), free(go), free(dw1);
    free(r.dx), free(r.dw), free(r.db);
    nn_act *acts[] = {&ax, &ay, &ady, &adx, &ay2, &g2, &gpre2, &other, &d1};
    for (size_t i = 0; i < sizeof acts / sizeof *acts; i++)
        nn_act_free(acts[i]);
    nn_eltwise_free(&relu);
    nn_conv2d_free(&l);
    nn_conv2d_free(&l2);
}

static void matches_reference(void **state)
{
    const int blks[3] = {1, 16, 8};
    for (int cout = 1; cout <= 4; cout++)
        for (int xb = 0; xb < 3; xb++)
            one_case(2, 20, cout, 5, 7, cout % 2, blks[xb], blks[(xb + cout) % 3]);
    one_case(1, 3, 3, 9, 4, 1, 1, 1);
    one_case(2, 128, 3, 64, 64, 1, 16, 1); /* the autoencoders' last layer */
    one_case(1, 64, 3, 33, 31, 1, 8, 16);
}

static void declines_other_shapes(void **state)
{
    nn_err e;
    nn_rng rng;
    nn_rng_seed(&rng, 1);
    const int cfgs[][5] = {/* cin, cout, k, stride, groups */
                           {16, 3, 3, 1, 1},
                           {16, 5, 1, 1, 1},
                           {16, 3, 1, 2, 1},
                           {16, 4, 1, 1, 2}};
    float *x = randv(2 * 16 * 8 * 8, 3, 1);
    for (size_t i = 0; i < sizeof cfgs / sizeof *cfgs; i++) {
        const int *c = cfgs[i];
        nn_conv2d l;
        fx_ok(nn_conv2d_init(&l, c[0], c[1], c[2], c[2], c[3], c[3], c[2] / 2, c[2] / 2, c[4], NN_PAD_ZERO, 1, &rng,
                             &e),
              &e);
        nn_act ax = {0}, ay = {0}, dx = {0};
        fx_act_blocked(&fx_ctx, &ax, x, 2, 16, 8, 8, 16);
        fx_ok(nn_conv2d_forward(&fx_ctx, &l, &ax, &ay, &e), &e);
        assert_int_equal(nn_conv2d_backward_relu_input(&fx_ctx, &l, &ax, &ay, &dx, 1, &e), 1);
        assert_false(dx.valid);
        for (size_t j = 0; j < l.dweight.numel; j++)
            assert_true(l.dweight.data[j] == 0.0f);
        nn_act_free(&ax), nn_act_free(&ay), nn_act_free(&dx);
        nn_conv2d_free(&l);
    }
    /* a fitting shape, declined: x in a layout the kernel does not read (nhwc), the fused
     * backwards switched off, a layer whose PyTorch-layout weights were released */
    nn_conv2d l;
    fx_ok(nn_conv2d_init(&l, 16, 3, 1, 1, 1, 1, 0, 0, 1, NN_PAD_ZERO, 1, &rng, &e), &e);
    nn_act ax = {0}, ay = {0}, dx = {0}, nhwc = {0};
    fx_act_blocked(&fx_ctx, &ax, x, 2, 16, 8, 8, 16);
    fx_ok(nn_conv2d_forward(&fx_ctx, &l, &ax, &ay, &e), &e);
    fx_act_from(&fx_ctx, &nhwc, x, 2, 16, 8, 8);
    dnnl_memory_desc_t md;
    dnnl_memory_desc_init_by_tag(&md, 4, (dnnl_dims_t){2, 16, 8, 8}, dnnl_f32, dnnl_nhwc);
    fx_ok(nn_act_convert(&fx_ctx, &nhwc, &md, &e), &e);
    assert_int_equal(nn_conv2d_backward_relu_input(&fx_ctx, &l, &nhwc, &ay, &dx, 1, &e), 1);
    nn_fused_set_enabled(0);
    assert_int_equal(nn_conv2d_backward_relu_input(&fx_ctx, &l, &ax, &ay, &dx, 1, &e), 1);
    nn_fused_set_enabled(-1);
    l.frozen = 1;
    fx_ok(nn_conv2d_forward(&fx_ctx, &l, &ax, &ay, &e), &e);
    fx_ok(nn_conv2d_release_plain(&l, &e), &e);
    assert_null(l.weight.data);
    assert_int_equal(nn_conv2d_backward_relu_input(&fx_ctx, &l, &ax, &ay, &dx, 0, &e), 1);
    assert_false(dx.valid);
    nn_act_free(&ax), nn_act_free(&ay), nn_act_free(&dx), nn_act_free(&nhwc);
    nn_conv2d_free(&l);
    free(x);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(matches_reference),
        cmocka_unit_test(declines_other_shapes),
    };
    return cmocka_run_group_tests(tests, fx_ctx_setup, fx_ctx_teardown);
}
