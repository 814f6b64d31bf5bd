/* The depthwise weight gradient on nChw16c tensors (nn/dw_wgrad.c) against the plain-C reference
 * (nn/ref.h), within 1e-4 of the largest value:
 *   - 5x5 (the Blaze blocks'), 7x7, 3x3 and the one-tap-at-a-time widths 1, 2, 4 and 6; stride 1, 2
 *     and 3; padding 0 to above k / 2; 16, 20 (a partly filled block), 64 and 256 channels; batch
 *     1 to 3; one-pixel, odd, narrow and wide images (wide: several bands of rows per image); with
 *     and without bias; a second call adds;
 *   - through nn_conv2d (both tensors in nChw16c: the autoencoders' case), the same;
 *   - results do not depend on the thread count (bitwise);
 *   - declined (1, nothing written): a tensor in nChw8c or plain NCHW, a dense or grouped conv, an
 *     8x8 kernel, the switch PGND_FUSED off.
 * The kernel needs AVX-512 at run time; without it (or under valgrind) only the declines run. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <omp.h>

#include "nn/dw_wgrad.h"
#include "nn/ref.h"
#include "tests/unit/fixture.h"

#define TOL 1e-4

typedef struct dcase {
    int c, kh, kw, s, p, h, w, n, bias;
} dcase;

static nn_conv_shape shape_of(const dcase *d)
{
    return (nn_conv_shape){d->n, d->c, d->h, d->w, d->c, d->kh, d->kw, d->s, d->s, d->p, d->p, d->c, NN_PAD_ZERO,
                           d->bias};
}

/* x, dy in nChw16c, and their views. */
typedef struct blocked_in {
    nn_act x, dy;
    nn_view5 vx, vdy;
} blocked_in;

static void blocked_make(blocked_in *b, const nn_conv_shape *s, const float *x, const float *dy, int blk)
{
    memset(b, 0, sizeof *b);
    fx_act_blocked(&fx_ctx, &b->x, x, s->n, s->cin, s->h, s->w, blk);
    fx_act_blocked(&fx_ctx, &b->dy, dy, s->n, s->cout, nn_conv_oh(s), nn_conv_ow(s), blk);
    assert_int_equal(nn_view5_of(&b->x.md, s->n, s->cin, s->h, s->w, &b->vx), 0);
    assert_int_equal(nn_view5_of(&b->dy.md, s->n, s->cout, nn_conv_oh(s), nn_conv_ow(s), &b->vdy), 0);
}

static void blocked_free(blocked_in *b) { nn_act_free(&b->x), nn_act_free(&b->dy); }

static int kernel_runs(void)
{
    nn_err e;
    dcase d = {16, 5, 5, 1, 2, 4, 4, 1, 0};
    nn_conv_shape s = shape_of(&d);
    float *x = fx_randv(16 * 16, 1), dw[16 * 25] = {0};
    blocked_in b;
    blocked_make(&b, &s, x, x, 16);
    const int r = nn_dw_wgrad_blocked(&fx_ctx, &s, b.x.data, &b.vx, b.dy.data, &b.vdy, dw, NULL, &e);
    assert_true(r == 0 || r == 1);
    blocked_free(&b);
    free(x);
    return r == 0;
}

static void one_case(const dcase *d, uint64_t seed)
{
    char label[200];
    snprintf(label, sizeof label, "C %d, %dx%d s%d p%d, %dx%d, n %d, bias %d", d->c, d->kh, d->kw, d->s, d->p, d->h,
             d->w, d->n, d->bias);
    nn_err e;
    nn_conv_shape s = shape_of(d);
    const int oh = nn_conv_oh(&s), ow = nn_conv_ow(&s);
    const size_t nx = (size_t)d->n * d->c * d->h * d->w, ny = (size_t)d->n * d->c * oh * ow;
    const size_t nw = (size_t)d->c * d->kh * d->kw;
    float *x = fx_randv(nx, seed), *dy = fx_randv(ny, seed + 1), *w = fx_randv(nw, seed + 2);
    float *rdx = calloc(nx, sizeof(float)), *rdw = calloc(nw, sizeof(float)), *rdb = calloc((size_t)d->c, sizeof(float));
    ref_conv2d_backward(rdx, rdw, d->bias ? rdb : NULL, dy, x, w, &s);

    blocked_in b;
    blocked_make(&b, &s, x, dy, 16);
    float *dw = calloc(nw, sizeof(float)), *db = calloc((size_t)d->c, sizeof(float));
    fx_ok(nn_dw_wgrad_blocked(&fx_ctx, &s, b.x.data, &b.vx, b.dy.data, &b.vdy, dw, d->bias ? db : NULL, &e), &e);
    fx_expect_close(label, dw, rdw, nw, TOL);
    if (d->bias)
        fx_expect_close(label, db, rdb, (size_t)d->c, TOL);
    else
        for (int c = 0; c < d->c; c++)
            assert_true(db[c] == 0.0f);

    /* a second call adds */
    fx_ok(nn_dw_wgrad_blocked(&fx_ctx, &s, b.x.data, &b.vx, b.dy.data, &b.vdy, dw, d->bias ? db : NULL, &e), &e);
    for (size_t i = 0; i < nw; i++)
        dw[i] *= 0.5f;
    fx_expect_close(label, dw, rdw, nw, TOL);

    /* one thread: bitwise the same */
    float *dw1 = calloc(nw, sizeof(float)), *dw2 = calloc(nw, sizeof(float));
    omp_set_num_threads(1);
    fx_ok(nn_dw_wgrad_blocked(&fx_ctx, &s, b.x.data, &b.vx, b.dy.data, &b.vdy, dw1, NULL, &e), &e);
    omp_set_num_threads(2);
    fx_ok(nn_dw_wgrad_blocked(&fx_ctx, &s, b.x.data, &b.vx, b.dy.data, &b.vdy, dw2, NULL, &e), &e);
    assert_memory_equal(dw1, dw2, nw * sizeof(float));

    /* through the layer: nn_conv2d takes this kernel for what oneDNN would run on its gemm */
    nn_conv2d l;
    fx_ok(nn_conv2d_init(&l, d->c, d->c, d->kh, d->kw, d->s, d->s, d->p, d->p, d->c, NN_PAD_ZERO, d->bias, NULL, &e),
          &e);
    memcpy(l.weight.data, w, nw * sizeof(float));
    nn_act y = {0};
    fx_ok(nn_conv2d_forward(&fx_ctx, &l, &b.x, &y, &e), &e);
    fx_ok(nn_conv2d_backward(&fx_ctx, &l, &b.x, &b.dy, NULL, 1, &e), &e);
    fx_expect_close(label, l.dweight.data, rdw, nw, TOL);
    if (d->bias)
        fx_expect_close(label, l.dbias.data, rdb, (size_t)d->c, TOL);
    nn_act_free(&y);
    nn_conv2d_free(&l);

    blocked_free(&b);
    free(x), free(dy), free(w), free(rdx), free(rdw), free(rdb), free(dw), free(db), free(dw1), free(dw2);
}

static void matches_reference(void **state)
{
    if (!kernel_runs()) {
        print_message("no AVX-512 here: the kernel declines (checked in `declines`)\n");
        return;
    }
    static const dcase cases[] = {
        {128, 5, 5, 1, 2, 16, 16, 2, 0}, /* the autoencoders' DoubleBlaze at 64x64 */
        {128, 5, 5, 2, 2, 16, 16, 2, 0}, /* its strided first conv */
        {256, 5, 5, 1, 2, 8, 8, 2, 0},
        {20, 5, 5, 1, 2, 9, 13, 3, 1},   /* a partly filled block, odd sizes, bias */
        {16, 5, 5, 2, 1, 15, 17, 1, 1},  /* padding below k / 2 */
        {16, 5, 5, 1, 4, 6, 5, 2, 0},    /* padding above k / 2: outputs with no interior column */
        {32, 5, 5, 1, 2, 1, 1, 2, 1},    /* one pixel: only the centre tap */
        {16, 7, 7, 1, 3, 12, 10, 1, 1},
        {16, 3, 3, 3, 1, 14, 19, 2, 1},  /* stride 3 */
        {16, 1, 1, 1, 0, 5, 7, 2, 1},    /* one tap at a time: widths 1, 2, 4, 6 */
        {16, 2, 2, 2, 0, 8, 9, 1, 0},
        {16, 4, 4, 1, 2, 7, 7, 1, 1},
        {16, 3, 6, 1, 2, 9, 9, 1, 0},
        {16, 6, 3, 1, 2, 9, 9, 1, 0},    /* six tap rows of a 3-wide kernel */
        {16, 5, 5, 1, 2, 40, 300, 1, 1}, /* wide rows: a band per row */
        {64, 5, 5, 2, 2, 70, 61, 1, 0},  /* several bands of rows */
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        one_case(&cases[i], 40 + 10 * (uint64_t)i);
}

static void declines(void **state)
{
    nn_err e;
    dcase d = {16, 5, 5, 1, 2, 6, 6, 2, 1};
    nn_conv_shape s = shape_of(&d);
    float *x = fx_randv(2 * 16 * 64, 3), dw[16 * 64] = {0}, db[16] = {0}; /* room for the 8x8 case's dy */
    const float zero[16 * 64] = {0};
    blocked_in b16, b8, plain;
    blocked_make(&b16, &s, x, x, 16);
    blocked_make(&b8, &s, x, x, 8);
    blocked_make(&plain, &s, x, x, 1);
    assert_int_equal(nn_dw_wgrad_blocked(&fx_ctx, &s, b8.x.data, &b8.vx, b8.dy.data, &b8.vdy, dw, db, &e), 1);
    assert_int_equal(nn_dw_wgrad_blocked(&fx_ctx, &s, plain.x.data, &plain.vx, plain.dy.data, &plain.vdy, dw, db, &e), 1);
    assert_int_equal(nn_dw_wgrad_blocked(&fx_ctx, &s, b16.x.data, &b16.vx, plain.dy.data, &plain.vdy, dw, db, &e), 1);
    nn_conv_shape g = s;
    g.groups = 8; /* two channels per group */
    assert_int_equal(nn_dw_wgrad_blocked(&fx_ctx, &g, b16.x.data, &b16.vx, b16.dy.data, &b16.vdy, dw, db, &e), 1);
    g.groups = 1;
    assert_int_equal(nn_dw_wgrad_blocked(&fx_ctx, &g, b16.x.data, &b16.vx, b16.dy.data, &b16.vdy, dw, db, &e), 1);
    nn_conv_shape k8 = s;
    k8.kh = k8.kw = 8, k8.ph = k8.pw = 4; /* 8x8: more taps than the kernel keeps */
    blocked_in b16k8;
    blocked_make(&b16k8, &k8, x, x, 16);
    assert_int_equal(nn_dw_wgrad_blocked(&fx_ctx, &k8, b16k8.x.data, &b16k8.vx, b16k8.dy.data, &b16k8.vdy, dw, db, &e), 1);
    nn_fused_set_enabled(0);
    assert_int_equal(nn_dw_wgrad_blocked(&fx_ctx, &s, b16.x.data, &b16.vx, b16.dy.data, &b16.vdy, dw, db, &e), 1);
    nn_fused_set_enabled(-1);
    assert_memory_equal(dw, zero, sizeof dw);
    assert_memory_equal(db, zero, sizeof db);
    blocked_free(&b16), blocked_free(&b8), blocked_free(&plain), blocked_free(&b16k8);
    free(x);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(matches_reference),
        cmocka_unit_test(declines),
    };
    return cmocka_run_group_tests(tests, fx_ctx_setup, fx_ctx_teardown);
}
