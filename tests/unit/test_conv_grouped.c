/* Grouped convolutions with few channels per group on our own kernels (nn/conv_grouped.c), through
 * nn_conv2d, against the plain-C reference (nn/ref.h), within 1e-4 of the largest value:
 *   - a grid: groups 2 / 64, per group 3->1, 5->2 and 1->2 (channel multiplier), 3x3 / 5x5,
 *     stride 1 / 2, odd H / W, batch 1 / 3, with and without bias, no post-op / fused ReLU /
 *     fused LeakyReLU(0.2); plus 1x1, 7x7, stride 3, padding above k/2, 8 inputs and 32 outputs
 *     per group, rows wider than a vector, images large enough to be split into row chunks;
 *   - every case with the input in NCHW, nChw16c and nChw8c and dy in another of those layouts:
 *     forward, backward-data, backward-weights (+bias); a second backward doubles dx, dw, db
 *     (parameter gradients accumulate); dx already valid in a blocked layout is added to, and
 *     param_grads 0 leaves dw alone;
 *   - results do not depend on the thread count (bitwise);
 *   - inputs in a layout the kernels do not read directly (nhwc) are reordered, not changed;
 *   - the dispatch criterion and the PGND_GROUPED_CONV switch (nn_convg_set_enabled): the oneDNN
 *     path gives the same results;
 *   - pure depthwise convs (oneDNN's jit_dw, with our weight gradient where oneDNN would fall back
 *     to its gemm: 5x5, strided) in every layout, with the switch on and off. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <omp.h>

#include "nn/conv_grouped.h"
#include "nn/ref.h"
#include "tests/unit/fixture.h"

#define TOL 1e-4

static const int layouts[3] = {1, 16, 8};

typedef struct cfg {
    int cin, cout, groups, k, s, p, h, w, n, bias, post; /* post: 0 none, 1 ReLU, 2 LeakyReLU(0.2) */
} cfg;

static int teardown(void **state)
{
    nn_convg_set_enabled(-1);
    return fx_ctx_teardown(state);
}

static nn_conv_shape shape_of(const cfg *c)
{
    return (nn_conv_shape){c->n, c->cin, c->h, c->w, c->cout, c->k, c->k, c->s, c->s, c->p, c->p,
                           c->groups, NN_PAD_ZERO, c->bias};
}

static void expect_act(const char *label, const nn_act *a, const float *want, size_t n)
{
    assert_int_equal(nn_act_count(a), n);
    float *got = fx_act_to(&fx_ctx, a);
    fx_expect_close(label, got, want, n, TOL);
    free(got);
}

/* The data and reference results of one case. */
typedef struct refcase {
    nn_conv_shape s;
    size_t nx, nw, ny;
    float *x, *w, *b, *dy, *y, *dx, *dw, *db;
} refcase;

static void ref_make(refcase *r, const cfg *c, uint64_t seed)
{
    r->s = shape_of(c);
    int oh = nn_conv_oh(&r->s), ow = nn_conv_ow(&r->s);
    r->nx = (size_t)c->n * c->cin * c->h * c->w;
    r->nw = (size_t)c->cout * (c->cin / c->groups) * c->k * c->k;
    r->ny = (size_t)c->n * c->cout * oh * ow;
    r->x = fx_randv(r->nx, seed);
    r->w = fx_randv(r->nw, seed + 1);
    r->b = fx_randv((size_t)c->cout, seed + 2);
    r->dy = fx_randv(r->ny, seed + 3);
    r->y = calloc(r->ny, sizeof(float));
    r->dx = calloc(r->nx, sizeof(float));
    r->dw = calloc(r->nw, sizeof(float));
    r->db = calloc((size_t)c->cout, sizeof(float));
    ref_conv2d_forward(r->y, r->x, r->w, c->bias ? r->b : NULL, &r->s);
    if (c->post == 1)
        ref_relu_forward(r->y, r->y, r->ny);
    else if (c->post == 2)
        ref_leaky_relu_forward(r->y, r->y, r->ny, 0.2f);
    /* The layer's backward takes dy already through its fused activation: plain conv backward. */
    ref_conv2d_backward(r->dx, r->dw, c->bias ? r->db : NULL, r->dy, r->x, r->w, &r->s);
}

static void ref_free(refcase *r)
{
    free(r->x), free(r->w), free(r->b), free(r->dy), free(r->y), free(r->dx), free(r->dw), free(r->db);
}

static void layer_make(nn_conv2d *l, const cfg *c, const refcase *r)
{
    nn_err e;
    fx_ok(nn_conv2d_init(l, c->cin, c->cout, c->k, c->k, c->s, c->s, c->p, c->p, c->groups, NN_PAD_ZERO, c->bias,
                         NULL, &e),
          &e);
    memcpy(l->weight.data, r->w, r->nw * sizeof(float));
    if (c->bias)
        memcpy(l->bias.data, r->b, (size_t)c->cout * sizeof(float));
    l->post_relu = c->post != 0;
    l->post_relu_alpha = c->post == 2 ? 0.2f : 0.0f;
}

static void label(char *buf, size_t len, const cfg *c, const char *what, int blk)
{
    snprintf(buf, len, "%d->%d g%d k%d s%d p%d %dx%d n%d bias%d post%d %s (x %s)", c->cin, c->cout, c->groups, c->k,
             c->s, c->p, c->h, c->w, c->n, c->bias, c->post, what,
             blk == 1 ? "nchw" : blk == 16 ? "nChw16c" : "nChw8c");
}

/* One case through nn_conv2d, input in every layout. */
static void run_case(const cfg *c, uint64_t seed)
{
    refcase r;
    ref_make(&r, c, seed);
    int oh = nn_conv_oh(&r.s), ow = nn_conv_ow(&r.s);
    char lb[256];
    for (int v = 0; v < 3; v++) {
        nn_err e;
        nn_conv2d l;
        layer_make(&l, c, &r);
        nn_act xa = {0}, ya = {0}, dya = {0}, dxa = {0}, dxb = {0};
        fx_act_blocked(&fx_ctx, &xa, r.x, c->n, c->cin, c->h, c->w, layouts[v]);
        fx_act_blocked(&fx_ctx, &dya, r.dy, c->n, c->cout, oh, ow, layouts[(v + 1) % 3]);
        fx_ok(nn_conv2d_forward(&fx_ctx, &l, &xa, &ya, &e), &e);
        label(lb, sizeof lb, c, "y", layouts[v]);
        expect_act(lb, &ya, r.y, r.ny);

        fx_ok(nn_conv2d_backward(&fx_ctx, &l, &xa, &dya, &dxa, 1, &e), &e);
        label(lb, sizeof lb, c, "dx", layouts[v]);
        expect_act(lb, &dxa, r.dx, r.nx);
        label(lb, sizeof lb, c, "dw", layouts[v]);
        fx_expect_close(lb, l.dweight.data, r.dw, r.nw, TOL);
        if (c->bias) {
            label(lb, sizeof lb, c, "db", layouts[v]);
            fx_expect_close(lb, l.dbias.data, r.db, (size_t)c->cout, TOL);
        }

        /* A second backward adds: every gradient doubles. */
        fx_ok(nn_conv2d_backward(&fx_ctx, &l, &xa, &dya, &dxa, 1, &e), &e);
        float *dx2 = fx_act_to(&fx_ctx, &dxa);
        for (size_t i = 0; i < r.nx; i++)
            dx2[i] *= 0.5f;
        label(lb, sizeof lb, c, "dx accumulated twice / 2", layouts[v]);
        fx_expect_close(lb, dx2, r.dx, r.nx, TOL);
        for (size_t i = 0; i < r.nw; i++)
            l.dweight.data[i] *= 0.5f;
        label(lb, sizeof lb, c, "dw accumulated twice / 2", layouts[v]);
        fx_expect_close(lb, l.dweight.data, r.dw, r.nw, TOL);
        if (c->bias) {
            for (int i = 0; i < c->cout; i++)
                l.dbias.data[i] *= 0.5f;
            label(lb, sizeof lb, c, "db accumulated twice / 2", layouts[v]);
            fx_expect_close(lb, l.dbias.data, r.db, (size_t)c->cout, TOL);
        }
        free(dx2);

        /* dx already valid in a (blocked) layout: added to; no parameter gradients asked: dw unchanged. */
        float *base = fx_randv(r.nx, seed + 7);
        fx_act_blocked(&fx_ctx, &dxb, base, c->n, c->cin, c->h, c->w, layouts[(v + 2) % 3]);
        dxb.valid = 1;
        float *dw_before = malloc(r.nw * sizeof(float));
        memcpy(dw_before, l.dweight.data, r.nw * sizeof(float));
        fx_ok(nn_conv2d_backward(&fx_ctx, &l, &xa, &dya, &dxb, 0, &e), &e);
        for (size_t i = 0; i < r.nx; i++)
            base[i] += r.dx[i];
        label(lb, sizeof lb, c, "dx added to a valid gradient", layouts[v]);
        expect_act(lb, &dxb, base, r.nx);
        assert_memory_equal(dw_before, l.dweight.data, r.nw * sizeof(float));
        free(base);
        free(dw_before);

        /* dx NULL: parameter gradients only. */
        memset(l.dweight.data, 0, r.nw * sizeof(float));
        if (c->bias)
            memset(l.dbias.data, 0, (size_t)c->cout * sizeof(float));
        fx_ok(nn_conv2d_backward(&fx_ctx, &l, &xa, &dya, NULL, 1, &e), &e);
        label(lb, sizeof lb, c, "dw without dx", layouts[v]);
        fx_expect_close(lb, l.dweight.data, r.dw, r.nw, TOL);

        nn_act_free(&xa), nn_act_free(&ya), nn_act_free(&dya), nn_act_free(&dxa), nn_act_free(&dxb);
        nn_conv2d_free(&l);
    }
    ref_free(&r);
}

static void grid(void **state)
{
    static const int per_group[3][2] = {{3, 1}, {5, 2}, {1, 2}};
    static const int group_counts[2] = {2, 64};
    nn_convg_set_enabled(1);
    int i = 0;
    for (int pg = 0; pg < 3; pg++)
        for (int gi = 0; gi < 2; gi++)
            for (int k = 3; k <= 5; k += 2)
                for (int s = 1; s <= 2; s++, i++) {
                    int g = group_counts[gi];
                    cfg c = {per_group[pg][0] * g, per_group[pg][1] * g, g, k, s, i % 5 == 0 ? 0 : k / 2,
                             11 + i % 3, 13 + 2 * (i % 2), i % 2 ? 3 : 1, (i / 2) % 2, i % 3};
                    nn_conv_shape sh = shape_of(&c);
                    assert_true(nn_convg_applies(&sh));
                    run_case(&c, 100 + 10 * (uint64_t)i);
                }
}

static void edges(void **state)
{
    static const cfg cases[] = {
        {6, 64, 2, 3, 1, 1, 17, 70, 2, 1, 1},  /* 32 outputs per group, rows wider than a vector */
        {8, 8, 2, 1, 1, 0, 9, 9, 2, 1, 0},     /* 1x1 (generic kernel) */
        {12, 8, 4, 7, 1, 3, 15, 15, 1, 0, 2},  /* 7x7 (generic kernel) */
        {8, 16, 4, 3, 3, 2, 16, 20, 2, 1, 0},  /* stride 3, padding 2 */
        {16, 8, 2, 3, 1, 2, 7, 9, 1, 1, 2},    /* 8 inputs per group, padding above k / 2 */
        {64, 128, 64, 5, 2, 2, 16, 16, 3, 0, 0}, /* the Blaze channel-multiplier conv */
        {192, 64, 64, 3, 1, 1, 8, 33, 2, 1, 0},  /* the UNet's conv_original_size2, narrower */
        {10, 4, 2, 5, 1, 2, 1, 1, 1, 1, 0},    /* 1x1 image: everything but the centre tap is padding */
        {16, 4, 2, 3, 1, 1, 40, 300, 1, 1, 0}, /* wide rows: backward-weights in row chunks */
        {8, 8, 4, 5, 2, 2, 301, 301, 1, 0, 1}, /* the same, strided */
    };
    nn_convg_set_enabled(1);
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        nn_conv_shape sh = shape_of(&cases[i]);
        assert_true(nn_convg_applies(&sh));
        run_case(&cases[i], 900 + 10 * (uint64_t)i);
    }
}

/* Forward and both backwards with 1 and with 2 threads: bitwise the same. */
static void thread_count(void **state)
{
    static const cfg cases[] = {{320, 128, 64, 3, 1, 1, 12, 20, 3, 1, 0}, {6, 64, 2, 3, 1, 1, 17, 30, 1, 1, 1},
                                {64, 128, 64, 5, 2, 2, 16, 16, 2, 0, 0}};
    nn_convg_set_enabled(1);
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        const cfg *c = &cases[ci];
        refcase r;
        ref_make(&r, c, 7 + ci);
        int oh = nn_conv_oh(&r.s), ow = nn_conv_ow(&r.s);
        float *out[2][3];
        for (int t = 0; t < 2; t++) {
            omp_set_num_threads(t + 1);
            nn_err e;
            nn_conv2d l;
            layer_make(&l, c, &r);
            nn_act xa = {0}, ya = {0}, dya = {0}, dxa = {0};
            fx_act_blocked(&fx_ctx, &xa, r.x, c->n, c->cin, c->h, c->w, 16);
            fx_act_blocked(&fx_ctx, &dya, r.dy, c->n, c->cout, oh, ow, 1);
            fx_ok(nn_conv2d_forward(&fx_ctx, &l, &xa, &ya, &e), &e);
            fx_ok(nn_conv2d_backward(&fx_ctx, &l, &xa, &dya, &dxa, 1, &e), &e);
            out[t][0] = fx_act_to(&fx_ctx, &ya);
            out[t][1] = fx_act_to(&fx_ctx, &dxa);
            out[t][2] = malloc(r.nw * sizeof(float));
            memcpy(out[t][2], l.dweight.data, r.nw * sizeof(float));
            nn_act_free(&xa), nn_act_free(&ya), nn_act_free(&dya), nn_act_free(&dxa);
            nn_conv2d_free(&l);
        }
        omp_set_num_threads(2);
        assert_memory_equal(out[0][0], out[1][0], r.ny * sizeof(float));
        assert_memory_equal(out[0][1], out[1][1], r.nx * sizeof(float));
        assert_memory_equal(out[0][2], out[1][2], r.nw * sizeof(float));
        fx_expect_close("thread-count case y", out[1][0], r.y, r.ny, TOL);
        for (int t = 0; t < 2; t++)
            for (int k = 0; k < 3; k++)
                free(out[t][k]);
        ref_free(&r);
    }
}

/* Inputs in a layout our kernels do not read directly (nhwc): reordered to NCHW first. */
static void other_layouts(void **state)
{
    const cfg c = {20, 8, 4, 3, 1, 1, 9, 12, 2, 1, 0};
    nn_convg_set_enabled(1);
    refcase r;
    ref_make(&r, &c, 77);
    int oh = nn_conv_oh(&r.s), ow = nn_conv_ow(&r.s);
    nn_err e;
    nn_conv2d l;
    layer_make(&l, &c, &r);
    nn_act xa = {0}, ya = {0}, dya = {0}, dxa = {0};
    fx_act_from(&fx_ctx, &xa, r.x, c.n, c.cin, c.h, c.w);
    fx_act_from(&fx_ctx, &dya, r.dy, c.n, c.cout, oh, ow);
    dnnl_dims_t dx_dims = {c.n, c.cin, c.h, c.w}, dy_dims = {c.n, c.cout, oh, ow};
    dnnl_memory_desc_t mx, mdy;
    dnnl_memory_desc_init_by_tag(&mx, 4, dx_dims, dnnl_f32, dnnl_nhwc);
    dnnl_memory_desc_init_by_tag(&mdy, 4, dy_dims, dnnl_f32, dnnl_nhwc);
    fx_ok(nn_act_convert(&fx_ctx, &xa, &mx, &e), &e);
    fx_ok(nn_act_convert(&fx_ctx, &dya, &mdy, &e), &e);
    fx_ok(nn_conv2d_forward(&fx_ctx, &l, &xa, &ya, &e), &e);
    expect_act("nhwc input: y", &ya, r.y, r.ny);
    fx_ok(nn_conv2d_backward(&fx_ctx, &l, &xa, &dya, &dxa, 1, &e), &e);
    expect_act("nhwc input: dx", &dxa, r.dx, r.nx);
    fx_expect_close("nhwc input: dw", l.dweight.data, r.dw, r.nw, TOL);
    fx_expect_close("nhwc input: db", l.dbias.data, r.db, (size_t)c.cout, TOL);
    assert_true(nn_md_equal(&xa.md, &mx)); /* the caller's activation is left as it was */
    nn_act_free(&xa), nn_act_free(&ya), nn_act_free(&dya), nn_act_free(&dxa);
    nn_conv2d_free(&l);
    ref_free(&r);
}

static void criterion_and_switch(void **state)
{
    nn_convg_set_enabled(1);
    nn_conv_shape s = {1, 64, 8, 8, 64, 3, 3, 1, 1, 1, 1, 64, NN_PAD_ZERO, 0};
    assert_false(nn_convg_applies(&s)); /* pure depthwise: oneDNN's jit_dw */
    s.cout = 128;
    assert_true(nn_convg_applies(&s)); /* channel multiplier 2 */
    s.pad_mode = NN_PAD_REFLECT;
    assert_false(nn_convg_applies(&s));
    s.pad_mode = NN_PAD_ZERO;
    s.groups = 1;
    assert_false(nn_convg_applies(&s));
    s = (nn_conv_shape){1, 18, 8, 8, 4, 3, 3, 1, 1, 1, 1, 2, NN_PAD_ZERO, 0};
    assert_false(nn_convg_applies(&s)); /* 9 inputs per group */
    s = (nn_conv_shape){1, 4, 8, 8, 66, 3, 3, 1, 1, 1, 1, 2, NN_PAD_ZERO, 0};
    assert_false(nn_convg_applies(&s)); /* 33 outputs per group */
    s.cout = 64;
    assert_true(nn_convg_applies(&s));
    nn_convg_set_enabled(0);
    assert_false(nn_convg_applies(&s));
    /* The oneDNN path (PGND_GROUPED_CONV=0) still gives the reference's results. */
    cfg c = {192, 64, 64, 3, 1, 1, 9, 11, 2, 1, 1};
    run_case(&c, 5);
    cfg c2 = {64, 128, 64, 5, 2, 2, 12, 12, 1, 0, 0};
    run_case(&c2, 6);
    nn_convg_set_enabled(-1);
}

/* Pure depthwise: forward and backward-data on jit_dw; the weight gradient of kernels jit_dw lacks
 * (5x5: the UNet's and autoencoders' separable convs) on our kernels, 3x3 on jit_dw. */
static void depthwise(void **state)
{
    static const cfg cases[] = {
        {64, 64, 64, 5, 1, 2, 16, 16, 2, 0, 0}, /* the autoencoders' 5x5 at 16x16 */
        {32, 32, 32, 5, 2, 2, 15, 17, 1, 1, 1}, /* strided, bias, ReLU */
        {48, 48, 48, 5, 1, 2, 9, 33, 3, 0, 2},  /* odd sizes, LeakyReLU */
        {16, 16, 16, 3, 1, 1, 12, 12, 2, 1, 0}, /* 3x3: jit_dw throughout */
    };
    for (int on = 1; on >= 0; on--) {
        nn_convg_set_enabled(on);
        for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
            nn_conv_shape sh = shape_of(&cases[i]);
            assert_false(nn_convg_applies(&sh));
            run_case(&cases[i], 300 + 10 * (uint64_t)i);
        }
    }
    nn_convg_set_enabled(-1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(grid),
        cmocka_unit_test(edges),
        cmocka_unit_test(thread_count),
        cmocka_unit_test(other_layouts),
        cmocka_unit_test(criterion_and_switch),
        cmocka_unit_test(depthwise),
    };
    return cmocka_run_group_tests(tests, fx_ctx_setup, teardown);
}
