/* bf16 on a CPU without native bf16 kernels, as oneDNN sees it with its ISA capped at plain
 * AVX-512 (dnnl_set_max_cpu_isa before anything is made; ONEDNN_MAX_CPU_ISA=AVX512_CORE does the
 * same): oneDNN would emulate bf16 there (jit_bf16*:avx512_core, slower than f32), so
 *   - nn_conv2d_bf16_native says no;
 *   - a bf16 convolution runs in f32, bit for bit the same as an f32 one;
 *   - a collect asking for bf16 generators records (and runs) f32. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <dnnl.h>

#include "nn/rng.h"
#include "pgn/collect.h"
#include "tests/unit/fixture.h"

static void test_conv_falls_back(void **state)
{
    (void)state;
    assert_int_equal(nn_conv2d_bf16_native(&fx_ctx), 0);
    const int n = 2, c = 32, h = 8;
    nn_conv2d a, b;
    nn_rng r1, r2;
    nn_err e;
    nn_rng_seed(&r1, 4), nn_rng_seed(&r2, 4);
    fx_ok(nn_conv2d_init(&a, c, c, 1, 1, 1, 1, 0, 0, 1, NN_PAD_ZERO, 1, &r1, &e), &e);
    fx_ok(nn_conv2d_init(&b, c, c, 1, 1, 1, 1, 0, 0, 1, NN_PAD_ZERO, 1, &r2, &e), &e);
    b.bf16 = 1;
    const size_t cnt = (size_t)n * c * h * h;
    float *x = fx_randv(cnt, 1), *dy = fx_randv(cnt, 2);
    nn_act xa = {0}, ya = {0}, yb = {0}, ga = {0}, da = {0}, db = {0};
    fx_act_blocked(&fx_ctx, &xa, x, n, c, h, h, 16);
    fx_ok(nn_conv2d_forward(&fx_ctx, &a, &xa, &ya, &e), &e);
    fx_ok(nn_conv2d_forward(&fx_ctx, &b, &xa, &yb, &e), &e);
    fx_act_blocked(&fx_ctx, &ga, dy, n, c, h, h, 16);
    fx_ok(nn_conv2d_backward(&fx_ctx, &a, &xa, &ga, &da, 1, &e), &e);
    fx_ok(nn_conv2d_backward(&fx_ctx, &b, &xa, &ga, &db, 1, &e), &e);
    assert_int_equal(nn_conv2d_runs_bf16(&b), 0);
    float *y1 = fx_act_to(&fx_ctx, &ya), *y2 = fx_act_to(&fx_ctx, &yb), *d1 = fx_act_to(&fx_ctx, &da),
          *d2 = fx_act_to(&fx_ctx, &db);
    assert_memory_equal(y1, y2, cnt * sizeof(float));
    assert_memory_equal(d1, d2, cnt * sizeof(float));
    assert_memory_equal(a.dweight.data, b.dweight.data, a.dweight.numel * sizeof(float));
    free(y1), free(y2), free(d1), free(d2), free(x), free(dy);
    nn_act_free(&xa), nn_act_free(&ya), nn_act_free(&yb), nn_act_free(&ga), nn_act_free(&da), nn_act_free(&db);
    nn_conv2d_free(&a), nn_conv2d_free(&b);
}

static void test_collect_records_f32(void **state)
{
    (void)state;
    pgn_collect_params p;
    pgn_collect_params_default(&p);
    assert_string_equal(p.generator_precision, "bf16");
    pgn_collect *c;
    nn_err e;
    fx_ok(pgn_collect_open(&c, &p, NULL, 2, &e), &e);
    assert_string_equal(pgn_collect_info(c)->generator_precision, "f32");
    pgn_collect_close(c);
}

int main(void)
{
    /* before oneDNN makes anything */
    if (dnnl_set_max_cpu_isa(dnnl_cpu_isa_avx512_core) != dnnl_success) {
        fprintf(stderr, "test_bf16_emulated: oneDNN refused to cap its ISA\n");
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_conv_falls_back),
        cmocka_unit_test(test_collect_records_f32),
    };
    return cmocka_run_group_tests(tests, fx_ctx_setup, fx_ctx_teardown);
}
