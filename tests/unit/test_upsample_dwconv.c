/* The fused bilinear x2 upsampling + depthwise 3x3 convolution (nn/upsample_dwconv.c) against the
 * engine's two steps (nn_upsample2x_forward, then nn_conv2d_forward on oneDNN; the backward: the
 * convolution's, then nn_upsample2x_backward or nn_upsample2x_backward_relu), within 1e-5 of the
 * largest value:
 *   - depthwise: 128, 256 and 20 channels (a partly filled block); grouped with two inputs per
 *     output ("pair"): 256 -> 128, 64 -> 32, 32 -> 16; batch 1 and 2, square, odd and one-pixel
 *     inputs, with and without bias, with and without the ReLU mask of x;
 *   - dy in another layout than x; dx written in x's layout, added to when already valid (in its
 *     layout or another), param_grads 0 leaves the parameter gradients alone;
 *   - results do not depend on the thread count (bitwise);
 *   - plain NCHW and nChw8c inputs, other convolutions (dense, 5x5, four inputs per output, a pair
 *     conv whose outputs are not whole blocks) and the switch PGND_FUSED off are declined
 *     (1), nothing written.
 * The kernel needs AVX-512 at run time; without it (or under valgrind) only the declines run. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <omp.h>

#include "nn/dnnl_util.h"
#include "nn/rng.h"
#include "nn/upsample_dwconv.h"
#include "tests/unit/fixture.h"

#define TOL 1e-5

static void close_acts(const char *label, const nn_act *got, const nn_act *want)
{
    float *g = fx_act_to(&fx_ctx, got), *w = fx_act_to(&fx_ctx, want);
    fx_expect_close(label, g, w, nn_act_count(want), TOL);
    free(g), free(w);
}

/* pair 0: a depthwise conv C -> C; pair 1: a grouped conv C -> C / 2 with two inputs per output */
static void one_case(int n, int C, int h, int w, int blk, int bias, int relu, int pair)
{
    char label[160];
    snprintf(label, sizeof label, "n %d, C %d, %dx%d, blk %d, bias %d, relu %d, pair %d", n, C, h, w, blk, bias, relu,
             pair);
    const int CO = pair ? C / 2 : C;
    nn_err e;
    nn_rng rng;
    const int H = 2 * h, W = 2 * w;
    nn_conv2d a, b; /* fused, reference: the same weights */
    nn_rng_seed(&rng, 9);
    fx_ok(nn_conv2d_init(&a, C, CO, 3, 3, 1, 1, 1, 1, CO, NN_PAD_ZERO, bias, &rng, &e), &e);
    nn_rng_seed(&rng, 9);
    fx_ok(nn_conv2d_init(&b, C, CO, 3, 3, 1, 1, 1, 1, CO, NN_PAD_ZERO, bias, &rng, &e), &e);
    float *x = fx_randv((size_t)n * C * h * w, 21), *dy = fx_randv((size_t)n * CO * H * W, 22);
    if (relu)
        for (size_t i = 0; i < (size_t)n * C * h * w; i++)
            x[i] = x[i] > 0 ? x[i] : 0; /* a ReLU's output, with exact zeros */
    nn_act ax = {0}, ady = {0}, y = {0}, up = {0}, yref = {0}, dx = {0}, gup = {0}, dxref = {0};
    fx_act_blocked(&fx_ctx, &ax, x, n, C, h, w, blk);
    fx_act_blocked(&fx_ctx, &ady, dy, n, CO, H, W, blk == 16 ? 8 : 16); /* another blocking than x's */
    nn_upsample2x us;
    nn_upsample2x_init(&us, 1);

    fx_ok(nn_upsample_dwconv_forward(&fx_ctx, &a, &ax, &y, &e), &e);
    fx_ok(nn_upsample2x_forward(&fx_ctx, &us, &ax, &up, &e), &e);
    fx_ok(nn_conv2d_forward(&fx_ctx, &b, &up, &yref, &e), &e);
    close_acts(label, &y, &yref);

    fx_ok(nn_upsample_dwconv_backward(&fx_ctx, &a, &ax, &ady, &dx, relu, 1, &e), &e);
    assert_true(dx.valid && nn_md_equal(&dx.md, &ax.md));
    fx_ok(nn_conv2d_backward(&fx_ctx, &b, &up, &ady, &gup, 1, &e), &e);
    if (relu)
        fx_ok(nn_upsample2x_backward_relu(&fx_ctx, &us, &gup, &ax, &dxref, &e), &e);
    else
        fx_ok(nn_upsample2x_backward(&fx_ctx, &us, &gup, &dxref, &e), &e);
    close_acts(label, &dx, &dxref);
    fx_expect_close(label, a.dweight.data, b.dweight.data, (size_t)C * 9, TOL);
    if (bias)
        fx_expect_close(label, a.dbias.data, b.dbias.data, (size_t)CO, TOL);

    /* a second call adds: dx (its layout), dw, db */
    fx_ok(nn_upsample_dwconv_backward(&fx_ctx, &a, &ax, &ady, &dx, relu, 1, &e), &e);
    float *twice = fx_act_to(&fx_ctx, &dx), *once = fx_act_to(&fx_ctx, &dxref);
    for (size_t i = 0; i < nn_act_count(&dxref); i++)
        once[i] *= 2;
    fx_expect_close(label, twice, once, nn_act_count(&dxref), TOL);
    for (size_t i = 0; i < (size_t)C * 9; i++)
        b.dweight.data[i] *= 2;
    fx_expect_close(label, a.dweight.data, b.dweight.data, (size_t)C * 9, TOL);

    /* into a dx valid in another layout; param_grads 0 leaves dw alone */
    nn_act other = {0};
    float *ones = malloc(nn_act_count(&ax) * sizeof(float));
    for (size_t i = 0; i < nn_act_count(&ax); i++)
        ones[i] = 1.0f;
    fx_act_blocked(&fx_ctx, &other, ones, n, C, h, w, blk == 16 ? 8 : 16);
    const float dw0 = a.dweight.data[4];
    fx_ok(nn_upsample_dwconv_backward(&fx_ctx, &a, &ax, &ady, &other, relu, 0, &e), &e);
    assert_true(a.dweight.data[4] == dw0);
    float *go = fx_act_to(&fx_ctx, &other);
    for (size_t i = 0; i < nn_act_count(&ax); i++)
        go[i] -= 1.0f, once[i] *= 0.5f;
    fx_expect_close(label, go, once, nn_act_count(&ax), TOL);

    /* the thread count does not change a bit */
    nn_act y1 = {0}, d1 = {0}, d2 = {0};
    size_t nw = (size_t)C * 9;
    float *w1 = malloc(nw * sizeof(float));
    memset(a.dweight.data, 0, nw * sizeof(float));
    omp_set_num_threads(1);
    fx_ok(nn_upsample_dwconv_forward(&fx_ctx, &a, &ax, &y1, &e), &e);
    fx_ok(nn_upsample_dwconv_backward(&fx_ctx, &a, &ax, &ady, &d1, relu, 1, &e), &e);
    omp_set_num_threads(2);
    memcpy(w1, a.dweight.data, nw * sizeof(float));
    memset(a.dweight.data, 0, nw * sizeof(float));
    fx_ok(nn_upsample_dwconv_backward(&fx_ctx, &a, &ax, &ady, &d2, relu, 1, &e), &e);
    assert_memory_equal(y1.data, y.data, nn_md_bytes(&y.md));
    assert_memory_equal(d1.data, d2.data, nn_md_bytes(&d2.md));
    assert_memory_equal(w1, a.dweight.data, nw * sizeof(float));

    free(x), free(dy), free(twice), free(once), free(ones), free(go), free(w1);
    nn_act *acts[] = {&ax, &ady, &y, &up, &yref, &dx, &gup, &dxref, &other, &y1, &d1, &d2};
    for (size_t i = 0; i < sizeof acts / sizeof *acts; i++)
        nn_act_free(acts[i]);
    nn_upsample2x_free(&us);
    nn_conv2d_free(&a);
    nn_conv2d_free(&b);
}

/* Whether the kernel runs on this CPU (AVX-512), for a shape it takes. */
static int kernel_runs(void)
{
    nn_err e;
    nn_conv2d l;
    fx_ok(nn_conv2d_init(&l, 16, 16, 3, 3, 1, 1, 1, 1, 16, NN_PAD_ZERO, 1, NULL, &e), &e);
    float x[16 * 4] = {0};
    nn_act a = {0};
    fx_act_blocked(&fx_ctx, &a, x, 1, 16, 2, 2, 16);
    const int r = nn_upsample_dwconv_applies(&l, &a);
    nn_act_free(&a);
    nn_conv2d_free(&l);
    return r;
}

static void matches_two_steps(void **state)
{
    if (!kernel_runs()) {
        print_message("no AVX-512 here: the fused kernel declines (checked in `declines`)\n");
        return;
    }
    one_case(2, 128, 32, 32, 16, 1, 1, 0); /* the autoencoders' last decoder step at 64x64 */
    one_case(2, 128, 32, 32, 16, 1, 0, 0);
    one_case(1, 256, 8, 8, 16, 1, 1, 0);
    one_case(2, 20, 5, 7, 16, 0, 1, 0);
    one_case(1, 20, 7, 3, 16, 1, 0, 0);
    one_case(2, 16, 1, 1, 16, 1, 1, 0);
    one_case(1, 32, 2, 9, 16, 0, 1, 0);
    one_case(2, 256, 16, 16, 16, 1, 1, 1); /* max_layer 2's middle decoder step (256 -> 128) at 64x64 */
    one_case(1, 256, 16, 16, 16, 1, 0, 1);
    one_case(2, 64, 5, 3, 16, 0, 1, 1);
    one_case(1, 32, 1, 1, 16, 1, 1, 1);
}

static void declines(void **state)
{
    nn_err e;
    nn_rng rng;
    nn_rng_seed(&rng, 2);
    float *x = fx_randv(2 * 16 * 4 * 4, 5);
    nn_act plain = {0}, blocked = {0}, y = {0}, dx = {0};
    fx_act_from(&fx_ctx, &plain, x, 2, 16, 4, 4);
    fx_act_blocked(&fx_ctx, &blocked, x, 2, 16, 4, 4, 16);
    nn_conv2d dw, dense, dw5, quad, pair8;
    fx_ok(nn_conv2d_init(&dw, 16, 16, 3, 3, 1, 1, 1, 1, 16, NN_PAD_ZERO, 1, &rng, &e), &e);
    fx_ok(nn_conv2d_init(&dense, 16, 16, 3, 3, 1, 1, 1, 1, 1, NN_PAD_ZERO, 1, &rng, &e), &e);
    fx_ok(nn_conv2d_init(&dw5, 16, 16, 5, 5, 1, 1, 2, 2, 16, NN_PAD_ZERO, 1, &rng, &e), &e);
    fx_ok(nn_conv2d_init(&quad, 16, 4, 3, 3, 1, 1, 1, 1, 4, NN_PAD_ZERO, 1, &rng, &e), &e);  /* 4 inputs per output */
    fx_ok(nn_conv2d_init(&pair8, 16, 8, 3, 3, 1, 1, 1, 1, 8, NN_PAD_ZERO, 1, &rng, &e), &e); /* outputs not whole blocks */
    nn_act b8 = {0};
    fx_act_blocked(&fx_ctx, &b8, x, 2, 16, 4, 4, 8);
    assert_int_equal(nn_upsample_dwconv_forward(&fx_ctx, &dw, &plain, &y, &e), 1);
    assert_int_equal(nn_upsample_dwconv_forward(&fx_ctx, &dw, &b8, &y, &e), 1);
    assert_int_equal(nn_upsample_dwconv_forward(&fx_ctx, &dense, &blocked, &y, &e), 1);
    assert_int_equal(nn_upsample_dwconv_forward(&fx_ctx, &dw5, &blocked, &y, &e), 1);
    assert_int_equal(nn_upsample_dwconv_forward(&fx_ctx, &quad, &blocked, &y, &e), 1);
    assert_int_equal(nn_upsample_dwconv_forward(&fx_ctx, &pair8, &blocked, &y, &e), 1);
    const int runs = kernel_runs();
    nn_fused_set_enabled(0);
    assert_int_equal(nn_upsample_dwconv_forward(&fx_ctx, &dw, &blocked, &y, &e), 1);
    /* the switch decides the forward only: the backward of a forward that ran fused still runs */
    float *g = fx_randv(2 * 16 * 8 * 8, 6);
    nn_act gy = {0}, gx = {0};
    fx_act_blocked(&fx_ctx, &gy, g, 2, 16, 8, 8, 16);
    assert_int_equal(nn_upsample_dwconv_backward(&fx_ctx, &dw, &blocked, &gy, &gx, 1, 1, &e), runs ? 0 : 1);
    assert_int_equal(gx.valid, runs);
    nn_act_free(&gy), nn_act_free(&gx);
    free(g);
    nn_fused_set_enabled(-1);
    if (!kernel_runs())
        assert_int_equal(nn_upsample_dwconv_forward(&fx_ctx, &dw, &blocked, &y, &e), 1);
    assert_false(y.valid);
    assert_int_equal(nn_upsample_dwconv_backward(&fx_ctx, &dw, &plain, &blocked, &dx, 1, 1, &e), 1);
    assert_false(dx.valid);
    nn_act_free(&plain), nn_act_free(&blocked), nn_act_free(&b8), nn_act_free(&y), nn_act_free(&dx);
    nn_conv2d_free(&dw), nn_conv2d_free(&dense), nn_conv2d_free(&dw5), nn_conv2d_free(&quad), nn_conv2d_free(&pair8);
    free(x);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(matches_two_steps),
        cmocka_unit_test(declines),
    };
    return cmocka_run_group_tests(tests, fx_ctx_setup, fx_ctx_teardown);
}
