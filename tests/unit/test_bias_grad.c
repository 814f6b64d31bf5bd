/* The bias gradient (nn/bias_grad.c) against a sum in double over plain NCHW:
 *   - plain NCHW, nChw8c and nChw16c; 3 channels (a padded block), 16, 20 and 128; batch 1 to 3;
 *     one pixel, odd sizes, and 64x64 (several chunks per plane); a second call adds;
 *   - bitwise the same on 1 and 2 threads;
 *   - through nn_conv2d: a 1x1 128->128 convolution with bias over nChw16c (the autoencoders' and
 *     the PGNs' case) takes it (nn_conv2d_own_bias_grad) and its dbias matches; also with dy in
 *     nhwc (read from the pass's converted copy) and in bf16 mode (from a plain copy); a
 *     convolution without bias does not. */
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

#include "nn/bias_grad.h"
#include "nn/rng.h"
#include "tests/unit/fixture.h"

#define TOL 1e-5

/* want[c] = base + sum of dy[:, c] (NCHW), in double. */
static void reference(const float *dy, int n, int c, int h, int w, float base, float *want)
{
    for (int k = 0; k < c; k++) {
        double s = 0;
        for (int i = 0; i < n; i++)
            for (int q = 0; q < h * w; q++)
                s += dy[(((size_t)i * c + k) * h * w) + q];
        want[k] = (float)(base + s);
    }
}

static void test_layouts_and_shapes(void **state)
{
    (void)state;
    static const int shapes[][4] = {{1, 3, 1, 1}, {2, 16, 5, 7}, {3, 20, 9, 4}, {2, 128, 64, 64}, {1, 128, 1, 33}};
    static const int blks[] = {1, 8, 16};
    nn_err e;
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
        for (int bi = 0; bi < 3; bi++) {
            const int n = shapes[si][0], c = shapes[si][1], h = shapes[si][2], w = shapes[si][3];
            float *dy = fx_randv((size_t)n * c * h * w, 100 + si);
            nn_act a = {0};
            nn_view5 v;
            fx_act_blocked(&fx_ctx, &a, dy, n, c, h, w, blks[bi]);
            assert_int_equal(nn_view5_of(&a.md, n, c, h, w, &v), 0);
            float *got = malloc((size_t)c * sizeof *got), *want = malloc((size_t)c * sizeof *want);
            for (int k = 0; k < c; k++)
                got[k] = 0.5f;
            fx_ok(nn_bias_grad(&fx_ctx, a.data, &v, got, &e), &e);
            reference(dy, n, c, h, w, 0.5f, want);
            char label[64];
            snprintf(label, sizeof label, "[%d, %d, %d, %d] blk %d", n, c, h, w, blks[bi]);
            fx_expect_close(label, got, want, (size_t)c, TOL);
            fx_ok(nn_bias_grad(&fx_ctx, a.data, &v, got, &e), &e); /* adds */
            for (int k = 0; k < c; k++)
                want[k] = 2 * want[k] - 0.5f;
            fx_expect_close(label, got, want, (size_t)c, TOL);
            free(got), free(want), free(dy);
            nn_act_free(&a);
        }
}

static void test_thread_count_independent(void **state)
{
    (void)state;
    const int n = 3, c = 40, h = 31, w = 29;
    float *dy = fx_randv((size_t)n * c * h * w, 7);
    nn_act a = {0};
    nn_view5 v;
    nn_err e;
    fx_act_blocked(&fx_ctx, &a, dy, n, c, h, w, 16);
    assert_int_equal(nn_view5_of(&a.md, n, c, h, w, &v), 0);
    float one[40] = {0}, two[40] = {0};
    const int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    fx_ok(nn_bias_grad(&fx_ctx, a.data, &v, one, &e), &e);
    omp_set_num_threads(2);
    fx_ok(nn_bias_grad(&fx_ctx, a.data, &v, two, &e), &e);
    omp_set_num_threads(threads);
    assert_memory_equal(one, two, sizeof one);
    nn_act_free(&a);
    free(dy);
}

/* A 1x1 convolution's parameter gradients: dbias against the reference. */
/* dy_nhwc: dy in a layout nn_bias_grad does not read (nhwc), so the bias comes from the weight
 * gradient's f32 copy of dy, or (bf16) from a plain copy. */
static void conv_case(int bias, int expect_own, int dy_nhwc, int bf16)
{
    const int n = 2, c = 128, h = 16, w = 12;
    nn_conv2d l;
    nn_rng r;
    nn_err e;
    nn_rng_seed(&r, 5);
    fx_ok(nn_conv2d_init(&l, c, c, 1, 1, 1, 1, 0, 0, 1, NN_PAD_ZERO, bias, &r, &e), &e);
    l.bf16 = bf16;
    float *x = fx_randv((size_t)n * c * h * w, 1), *dy = fx_randv((size_t)n * c * h * w, 2);
    nn_act xa = {0}, ya = {0}, ga = {0};
    fx_act_blocked(&fx_ctx, &xa, x, n, c, h, w, 16);
    fx_ok(nn_conv2d_forward(&fx_ctx, &l, &xa, &ya, &e), &e);
    fx_act_blocked(&fx_ctx, &ga, dy, n, c, h, w, 16);
    if (dy_nhwc) {
        dnnl_memory_desc_t md;
        dnnl_dims_t d = {n, c, h, w};
        assert_int_equal(dnnl_memory_desc_init_by_tag(&md, 4, d, dnnl_f32, dnnl_nhwc), dnnl_success);
        fx_ok(nn_act_convert(&fx_ctx, &ga, &md, &e), &e);
        nn_view5 v;
        assert_int_not_equal(nn_view5_of(&ga.md, n, c, h, w, &v), 0);
    }
    fx_ok(nn_conv2d_backward(&fx_ctx, &l, &xa, &ga, NULL, 1, &e), &e);
    assert_int_equal(nn_conv2d_own_bias_grad(&l), expect_own);
    if (bias) {
        float want[128];
        reference(dy, n, c, h, w, 0.0f, want);
        fx_expect_close("conv dbias", l.dbias.data, want, (size_t)c, TOL);
    }
    nn_act_free(&xa), nn_act_free(&ya), nn_act_free(&ga);
    free(x), free(dy);
    nn_conv2d_free(&l);
}

static void test_through_conv2d(void **state)
{
    (void)state;
    conv_case(1, 1, 0, 0);
    conv_case(0, 0, 0, 0);
    conv_case(1, 1, 1, 0); /* from the primitive's nChw16c copy of dy */
    conv_case(1, 1, 1, 1); /* bf16: that copy is bf16, so from a plain one */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layouts_and_shapes),
        cmocka_unit_test(test_thread_count_independent),
        cmocka_unit_test(test_through_conv2d),
    };
    return cmocka_run_group_tests(tests, fx_ctx_setup, fx_ctx_teardown);
}
