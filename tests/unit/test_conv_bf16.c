/* Convolutions in bf16 (nn_conv2d.bf16) against the same layer in f32:
 *   - a 1x1 128->64 with bias and ReLU, a strided 1x1 128->256 (the Blaze shortcut), the stem's
 *     7x7 3->128 stride 2 and a 3x3 32->32 with bias: y, dx and dw within 1e-2 of the largest
 *     value (2-3e-3 here: x, dy and the weights are rounded to bf16, 8 bits of mantissa; the sums
 *     are f32), db within 1e-5 (taken from the f32 dy);
 *   - they run on oneDNN's bf16 kernels where nn_conv2d_bf16_native says the CPU has them (this
 *     machine kind has AVX512_BF16), and elsewhere fall back to f32, bit for bit;
 *   - a grouped convolution stays f32. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "nn/rng.h"
#include "tests/unit/fixture.h"

typedef struct ccase {
    int cin, cout, k, s, p, h, bias, relu;
} ccase;

static void run_case(const ccase *c, int groups)
{
    const int n = 2, oh = (c->h + 2 * c->p - c->k) / c->s + 1;
    nn_conv2d a, b;
    nn_rng r1, r2;
    nn_err e;
    nn_rng_seed(&r1, 9), nn_rng_seed(&r2, 9);
    fx_ok(nn_conv2d_init(&a, c->cin, c->cout, c->k, c->k, c->s, c->s, c->p, c->p, groups, NN_PAD_ZERO, c->bias, &r1, &e),
          &e);
    fx_ok(nn_conv2d_init(&b, c->cin, c->cout, c->k, c->k, c->s, c->s, c->p, c->p, groups, NN_PAD_ZERO, c->bias, &r2, &e),
          &e);
    a.post_relu = b.post_relu = c->relu;
    b.bf16 = 1;
    const size_t nx = (size_t)n * c->cin * c->h * c->h, ny = (size_t)n * c->cout * oh * oh;
    float *x = fx_randv(nx, 1), *dy = fx_randv(ny, 2);
    nn_act xa = {0}, ya = {0}, yb = {0}, ga = {0}, dxa = {0}, dxb = {0};
    fx_act_blocked(&fx_ctx, &xa, x, n, c->cin, c->h, c->h, c->cin % 16 ? 1 : 16);
    fx_ok(nn_conv2d_forward(&fx_ctx, &a, &xa, &ya, &e), &e);
    fx_ok(nn_conv2d_forward(&fx_ctx, &b, &xa, &yb, &e), &e);
    fx_act_blocked(&fx_ctx, &ga, dy, n, c->cout, oh, oh, 16);
    fx_ok(nn_conv2d_backward(&fx_ctx, &a, &xa, &ga, &dxa, 1, &e), &e);
    fx_ok(nn_conv2d_backward(&fx_ctx, &b, &xa, &ga, &dxb, 1, &e), &e);
    const int bf = groups == 1 && nn_conv2d_bf16_native(&fx_ctx);
    assert_int_equal(nn_conv2d_runs_bf16(&b), bf);
    assert_int_equal(nn_conv2d_runs_bf16(&a), 0);
    float *y1 = fx_act_to(&fx_ctx, &ya), *y2 = fx_act_to(&fx_ctx, &yb);
    float *d1 = fx_act_to(&fx_ctx, &dxa), *d2 = fx_act_to(&fx_ctx, &dxb);
    char label[96];
    snprintf(label, sizeof label, "%d->%d k%d s%d groups %d", c->cin, c->cout, c->k, c->s, groups);
    if (bf) {
        fx_expect_close(label, y2, y1, ny, 1e-2);
        fx_expect_close(label, d2, d1, nx, 1e-2);
        fx_expect_close(label, b.dweight.data, a.dweight.data, a.dweight.numel, 1e-2);
        assert_true(fx_rel_err(y2, y1, ny) > 0); /* it did round */
    } else { /* f32 after all: the same */
        assert_memory_equal(y2, y1, ny * sizeof(float));
        assert_memory_equal(d2, d1, nx * sizeof(float));
        assert_memory_equal(b.dweight.data, a.dweight.data, a.dweight.numel * sizeof(float));
    }
    if (c->bias)
        fx_expect_close(label, b.dbias.data, a.dbias.data, (size_t)c->cout, 1e-5);
    free(y1), free(y2), free(d1), free(d2), free(x), free(dy);
    nn_act_free(&xa), nn_act_free(&ya), nn_act_free(&yb), nn_act_free(&ga), nn_act_free(&dxa), nn_act_free(&dxb);
    nn_conv2d_free(&a), nn_conv2d_free(&b);
}

static void test_dense_shapes(void **state)
{
    (void)state;
    static const ccase cases[] = {
        {128, 64, 1, 1, 0, 16, 1, 1}, /* a sep's 1x1 with its ReLU */
        {128, 256, 1, 2, 0, 16, 0, 0}, /* the Blaze shortcut */
        {3, 128, 7, 2, 3, 32, 0, 0},  /* the autoencoders' stem */
        {32, 32, 3, 1, 1, 12, 1, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        run_case(&cases[i], 1);
}

static void test_grouped_stays_f32(void **state)
{
    (void)state;
    const ccase c = {32, 32, 3, 1, 1, 12, 1, 0};
    run_case(&c, 32);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dense_shapes),
        cmocka_unit_test(test_grouped_stays_f32),
    };
    return cmocka_run_group_tests(tests, fx_ctx_setup, fx_ctx_teardown);
}
