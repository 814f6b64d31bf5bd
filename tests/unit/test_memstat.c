/* Engine memory accounting (nn/memstat.h): each kind's current and peak bytes follow what is
 * allocated and freed (heap and mapped tensors, activations, scratch), a reset brings the peaks
 * down to the current values, and concurrent allocations from several threads add up exactly. */
#include <omp.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <cmocka.h>

#include "nn/engine.h"
#include "nn/memstat.h"

static int64_t cur(nn_mem_kind k)
{
    nn_memstat s;
    nn_memstat_get(&s);
    return s.cur[k];
}

static void tensors_and_buffers(void **state)
{
    nn_memstat s0, s;
    nn_memstat_get(&s0);
    nn_tensor small, big;
    nn_err e;
    assert_int_equal(nn_tensor_alloc1(&small, 1000, &e), 0);          /* heap */
    assert_int_equal(nn_tensor_alloc1(&big, 1 << 19, &e), 0);         /* 2 MiB: mapped pages */
    int64_t t = cur(NN_MEM_TENSOR) - s0.cur[NN_MEM_TENSOR];
    assert_true(t >= 4000 + (4 << 19) && t < 4000 + (4 << 19) + 256); /* usable sizes: a few bytes over */
    void *p = nn_alloc(10000);
    assert_true(cur(NN_MEM_OTHER) - s0.cur[NN_MEM_OTHER] >= 10000);
    nn_memstat_get(&s);
    assert_true(s.total - s0.total >= 4000 + (4 << 19) + 10000);
    assert_true(s.total_peak >= s.total);
    nn_free(p);
    nn_tensor_free(&big);
    nn_tensor_free(&small);
    nn_memstat_get(&s);
    for (int k = 0; k < NN_MEM_KINDS; k++)
        assert_int_equal(s.cur[k], s0.cur[k]);
    assert_int_equal(s.total, s0.total);
    /* The peak stays up until reset, then falls to the current value. */
    assert_true(s.total_peak >= s0.total + 4000 + (4 << 19) + 10000);
    nn_memstat_reset_peak();
    nn_memstat_get(&s);
    assert_int_equal(s.total_peak, s.total);
    assert_int_equal(s.peak[NN_MEM_TENSOR], s.cur[NN_MEM_TENSOR]);
}

static void activations_and_scratch(void **state)
{
    nn_ctx ctx;
    nn_err e;
    assert_int_equal(nn_ctx_init(&ctx, 2, &e), 0);
    int64_t a0 = cur(NN_MEM_ACT), s0 = cur(NN_MEM_SCRATCH);
    nn_act a = {0};
    assert_int_equal(nn_act_reserve(&a, 1, 16, 32, 32, NULL, &e), 0);
    assert_true(cur(NN_MEM_ACT) - a0 >= 16 * 32 * 32 * 4);
    /* A layout change through nn_act_convert stays an activation. */
    dnnl_memory_desc_t blk = nn_md_blocked(1, 16, 32, 32, 16);
    assert_int_equal(nn_act_convert(&ctx, &a, &blk, &e), 0);
    assert_true(cur(NN_MEM_ACT) - a0 >= 16 * 32 * 32 * 4);
    assert_non_null(nn_ctx_scratch(&ctx, 5000, &e));
    assert_non_null(nn_ctx_tmp(&ctx, 7000, &e));
    assert_true(cur(NN_MEM_SCRATCH) - s0 >= 12000);
    nn_act_free(&a);
    assert_int_equal(cur(NN_MEM_ACT), a0);
    nn_ctx_free(&ctx);
    assert_int_equal(cur(NN_MEM_SCRATCH), s0);
}

static void concurrent(void **state)
{
    nn_memstat s0, s;
    nn_memstat_get(&s0);
    enum { N = 4000 };
    static void *p[N];
#pragma omp parallel for num_threads(4) schedule(dynamic, 7)
    for (int i = 0; i < N; i++)
        p[i] = nn_alloc(64 * (size_t)(1 + i % 5));
    nn_memstat_get(&s);
    int64_t want = 0;
    for (int i = 0; i < N; i++)
        want += (int64_t)nn_memstat_size_of(p[i]);
    assert_int_equal(s.cur[NN_MEM_OTHER] - s0.cur[NN_MEM_OTHER], want);
    assert_true(s.total_peak - s0.total >= want);
#pragma omp parallel for num_threads(4) schedule(dynamic, 5)
    for (int i = 0; i < N; i++)
        nn_free(p[i]);
    nn_memstat_get(&s);
    assert_int_equal(s.cur[NN_MEM_OTHER], s0.cur[NN_MEM_OTHER]);
    assert_int_equal(s.total, s0.total);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(tensors_and_buffers), cmocka_unit_test(activations_and_scratch),
                                       cmocka_unit_test(concurrent)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
