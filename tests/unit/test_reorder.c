/* nn_reorder's own path from plain f32 into layouts whose only inner block is 16 of the first dim
 * (convolution weights Acdb16a / Abcd16a / Abcde16a, and a 3-d Acb16a): bitwise what oneDNN's
 * reorder gives (reached through a non-plain source, which the own path does not take), for the
 * autoencoders' stem weights and other shapes, and back; the own path ran (its counter), and a
 * first dim that is not a multiple of 16 (padded) goes to oneDNN and gives the same. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "nn/dnnl_util.h"
#include "nn/engine.h"
#include "tests/unit/fixture.h"

static void one(int nd, const dnnl_dim_t *dims, dnnl_format_tag_t plain, dnnl_format_tag_t other,
                dnnl_format_tag_t blocked, int own)
{
    nn_err e;
    dnnl_memory_desc_t mp, mo, mb;
    assert_int_equal(dnnl_memory_desc_init_by_tag(&mp, nd, dims, dnnl_f32, plain), dnnl_success);
    assert_int_equal(dnnl_memory_desc_init_by_tag(&mo, nd, dims, dnnl_f32, other), dnnl_success);
    assert_int_equal(dnnl_memory_desc_init_by_tag(&mb, nd, dims, dnnl_f32, blocked), dnnl_success);
    size_t n = nn_md_bytes(&mp) / sizeof(float), nb = nn_md_bytes(&mb) / sizeof(float);
    float *x = fx_randv(n, 3 + (uint64_t)dims[0]), *o = malloc(n * sizeof(float));
    float *got = malloc(nb * sizeof(float)), *want = malloc(nb * sizeof(float));
    memset(got, 0, nb * sizeof(float)), memset(want, 0, nb * sizeof(float));
    const int before = nn_reorder_own_calls();
    fx_ok(nn_reorder(&fx_ctx, &mp, x, &mb, got, &e), &e);   /* plain: the own path where it applies */
    assert_int_equal(nn_reorder_own_calls() - before, own);
    fx_ok(nn_reorder(&fx_ctx, &mp, x, &mo, o, &e), &e);     /* oneDNN */
    fx_ok(nn_reorder(&fx_ctx, &mo, o, &mb, want, &e), &e);  /* oneDNN: the source is not plain */
    assert_memory_equal(got, want, nb * sizeof(float));
    /* and back */
    float *back = malloc(n * sizeof(float));
    fx_ok(nn_reorder(&fx_ctx, &mb, got, &mp, back, &e), &e);
    assert_memory_equal(back, x, n * sizeof(float));
    free(x), free(o), free(got), free(want), free(back);
}

static void plain_to_first_dim_blocked(void **state)
{
    one(4, (dnnl_dim_t[]){128, 3, 7, 7}, dnnl_abcd, dnnl_acdb, dnnl_Acdb16a, 1); /* the autoencoders' stem */
    one(4, (dnnl_dim_t[]){32, 6, 3, 3}, dnnl_abcd, dnnl_acdb, dnnl_Acdb16a, 1);
    one(4, (dnnl_dim_t[]){64, 4, 5, 5}, dnnl_abcd, dnnl_acdb, dnnl_Abcd16a, 1);
    one(5, (dnnl_dim_t[]){32, 1, 1, 5, 5}, dnnl_abcde, dnnl_acdeb, dnnl_Abcde16a, 1);
    one(4, (dnnl_dim_t[]){20, 3, 3, 3}, dnnl_abcd, dnnl_acdb, dnnl_Acdb16a, 0); /* padded: oneDNN's */
    one(3, (dnnl_dim_t[]){48, 5, 2}, dnnl_abc, dnnl_acb, dnnl_Acb16a, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(plain_to_first_dim_blocked)};
    return cmocka_run_group_tests(tests, fx_ctx_setup, fx_ctx_teardown);
}
