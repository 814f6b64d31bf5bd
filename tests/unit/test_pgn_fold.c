/* Batch norm folded into the convolutions for prediction (pgn_resnet_fold_bn, pgn_unet_fold_bn,
 * pgn_net_load / pgn_net_load_opts), with the fixtures' weights (tests/fixtures/pgn_resnet4_*,
 * pgn_unet_legacy.pth: BN weight U[0.5, 1.5), bias U[-0.2, 0.2), running mean U[-0.1, 0.1),
 * running var U[0.5, 1.5), so every part of the fold is exercised):
 *   - ResNet-4 and the UNet: the folded eval output equals the unfolded eval output within 1e-4 of
 *     max |o| on a batch of 2, at two input sizes and back at the first (cached primitives);
 *   - after folding the backward, train mode, loading a state dict and folding in train mode are
 *     refused (or ignored, for set_training), and a second fold changes nothing;
 *   - the engine's nn_conv2d_fold_bn on a conv with and without a bias (grouped, strided) against
 *     conv -> eval BN;
 *   - pgn_net_predict gives the same p and g folded (pgn_net_load) and unfolded
 *     (pgn_net_load_opts(.., 0, ..)) for both backbones; the folded net holds no weight gradients
 *     and, after its first prediction, no PyTorch-layout weights but its grouped convs', and still
 *     predicts the same at a new size;
 *   - the UNet's inference-only forward (pgn_unet_set_lean, what pgn_net_load sets): the same output
 *     as the folded forward (bit for bit; 1e-6 of max |o| allowed should oneDNN ever lay an
 *     activation out differently) at 64x64 and 128x128, batch 1 and 2, repeated and across changes
 *     of size; less engine memory than the folded forward (printed; at least 35% less at 128x128,
 *     25% at 64x64, batch 1); no engine allocation in a steady-state forward; the backward refused;
 *   - the same for the ResNet's inference-only forward (pgn_resnet_set_lean, also set by
 *     pgn_net_load): ResNet-4 (fixture) and ResNet-8 (seeded weights, BN statistics drawn in the
 *     fixture's ranges), bit-identical to the folded forward at 64x64 and 128x128, batch 1 and 2,
 *     repeated and across changes of size; less engine memory (printed; ResNet-4 at least 40% less
 *     at 128x128, 28% at 64x64, batch 1; ResNet-8 50% and 32%); no engine allocation in a
 *     steady-state forward; the backward refused. */
#include "nn/conv_grouped.h"
#include "nn/memstat.h"
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "pgn/pgn_net.h"
#include "pgn/pgn_resnet.h"
#include "pgn/pgn_unet.h"
#include "tests/unit/fixture.h"

#define TOL 1e-4
#define RESNET_SD "tests/fixtures/pgn_resnet4_sd_legacy.pth"
#define RESNET_V2 "tests/fixtures/pgn_resnet4_v2_legacy.pth"
#define UNET_SD "tests/fixtures/pgn_unet_legacy.pth"

static double max_abs(const float *a, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++)
        m = fmax(m, fabs((double)a[i]));
    return m;
}

static double max_diff(const float *a, const float *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++)
        m = fmax(m, fabs((double)a[i] - (double)b[i]));
    return m;
}

/* Deterministic values in [-2, 2) (normalised image space). */
static float *rand_buf(size_t n, uint32_t seed)
{
    float *x = malloc(n * sizeof *x);
    assert_non_null(x);
    uint32_t s = seed * 2654435761u + 12345u;
    for (size_t i = 0; i < n; i++) {
        s = s * 1664525u + 1013904223u;
        x[i] = (float)((s >> 8) * (1.0 / 16777216.0) * 4.0 - 2.0);
    }
    return x;
}

/* got within TOL * max |want| of want; prints the error. */
static void expect_same(const char *label, const float *got, const float *want, size_t n, double tol)
{
    double m = max_abs(want, n), d = max_diff(got, want, n);
    print_message("%s: max |diff| %.3g, max |ref| %.3g, relative %.3g\n", label, d, m, m > 0 ? d / m : d);
    assert_true(m > 0);
    if (d > tol * m) {
        print_error("%s: max |diff| %.3g > %.3g * %.3g\n", label, d, tol, m);
        fail();
    }
}

/* ------------------------------------------------------------------ engine */

static void conv_fold_matches_conv_bn(void **state)
{
    (void)state;
    nn_err e;
    nn_ctx ctx;
    fx_ok(nn_ctx_init(&ctx, 0, &e), &e);
    nn_rng rng;
    nn_rng_seed(&rng, 3);
    /* (cin, cout, k, stride, groups, bias) */
    const int cases[][6] = {{6, 16, 3, 1, 1, 0}, {16, 32, 3, 2, 1, 1}, {16, 16, 5, 1, 16, 0}, {8, 24, 1, 1, 4, 1}};
    for (size_t t = 0; t < sizeof cases / sizeof *cases; t++) {
        const int *c = cases[t];
        nn_conv2d a, b;
        fx_ok(nn_conv2d_init(&a, c[0], c[1], c[2], c[2], c[3], c[3], c[2] / 2, c[2] / 2, c[4], NN_PAD_ZERO, c[5], &rng,
                             &e),
              &e);
        fx_ok(nn_conv2d_init(&b, c[0], c[1], c[2], c[2], c[3], c[3], c[2] / 2, c[2] / 2, c[4], NN_PAD_ZERO, c[5], NULL,
                             &e),
              &e);
        memcpy(b.weight.data, a.weight.data, a.weight.numel * sizeof(float));
        if (c[5])
            memcpy(b.bias.data, a.bias.data, a.bias.numel * sizeof(float));
        nn_batchnorm2d bn;
        fx_ok(nn_batchnorm2d_init(&bn, c[1], 1e-5f, 0.1f, &e), &e);
        bn.training = 0;
        float *r = rand_buf((size_t)4 * c[1], 100 + (uint32_t)t);
        for (int i = 0; i < c[1]; i++) {
            bn.gamma.data[i] = 1.0f + 0.25f * r[i];
            bn.beta.data[i] = 0.1f * r[c[1] + i];
            bn.running_mean.data[i] = 0.05f * r[2 * c[1] + i];
            bn.running_var.data[i] = 1.0f + 0.25f * r[3 * c[1] + i];
        }
        free(r);
        const int n = 2, h = 12, w = 10;
        float *xs = rand_buf((size_t)n * c[0] * h * w, 7 + (uint32_t)t);
        nn_act x = {0}, y = {0}, z = {0}, yf = {0};
        fx_act_from(&ctx, &x, xs, n, c[0], h, w);
        fx_ok(nn_conv2d_forward(&ctx, &a, &x, &y, &e), &e);
        fx_ok(nn_batchnorm2d_forward(&ctx, &bn, &y, &z, &e), &e);
        /* b runs once unfolded first, so the fold must drop primitives made without a bias. */
        fx_ok(nn_conv2d_forward(&ctx, &b, &x, &yf, &e), &e);
        fx_ok(nn_conv2d_fold_bn(&b, &bn, &e), &e);
        assert_int_equal(b.geo.has_bias, 1);
        assert_non_null(b.bias.data);
        assert_non_null(b.dbias.data);
        fx_ok(nn_conv2d_forward(&ctx, &b, &x, &yf, &e), &e);
        float *want = fx_act_to(&ctx, &z), *got = fx_act_to(&ctx, &yf);
        size_t no = nn_act_count(&z);
        assert_int_equal(nn_act_count(&yf), no);
        char label[64];
        snprintf(label, sizeof label, "conv %d->%d k%d s%d g%d bias %d", c[0], c[1], c[2], c[3], c[4], c[5]);
        expect_same(label, got, want, no, 1e-5);
        /* LeakyReLU post-op. */
        fx_ok(nn_conv2d_set_post_relu(&b, 1, 0.2f, &e), &e);
        fx_ok(nn_conv2d_forward(&ctx, &b, &x, &yf, &e), &e);
        free(got);
        got = fx_act_to(&ctx, &yf);
        for (size_t i = 0; i < no; i++)
            want[i] = want[i] > 0 ? want[i] : 0.2f * want[i];
        expect_same("  + LeakyReLU(0.2) post-op", got, want, no, 1e-5);
        free(got);
        free(want);
        free(xs);
        nn_act_free(&x);
        nn_act_free(&y);
        nn_act_free(&z);
        nn_act_free(&yf);
        nn_batchnorm2d_free(&bn);
        nn_conv2d_free(&a);
        nn_conv2d_free(&b);
    }
    /* Channel mismatch is refused. */
    nn_conv2d a;
    nn_batchnorm2d bn;
    fx_ok(nn_conv2d_init(&a, 4, 8, 3, 3, 1, 1, 1, 1, 1, NN_PAD_ZERO, 0, &rng, &e), &e);
    fx_ok(nn_batchnorm2d_init(&bn, 6, 1e-5f, 0.1f, &e), &e);
    fx_expect_error(nn_conv2d_fold_bn(&a, &bn, &e), &e, "6 channels");
    nn_batchnorm2d_free(&bn);
    nn_conv2d_free(&a);
    nn_ctx_free(&ctx);
}

/* ------------------------------------------------------------------ ResNet-4 */

static pgn_resnet *load_resnet(void)
{
    nn_err e;
    pgn_resnet *r = calloc(1, sizeof *r);
    assert_non_null(r);
    fx_ok(pgn_resnet_init(r, 4, 0, &e), &e);
    fx_ok(pgn_resnet_load_file(r, RESNET_SD, &e), &e);
    return r;
}

static void del_resnet(pgn_resnet *r)
{
    pgn_resnet_free(r);
    free(r);
}

static void resnet_folded_matches_eval(void **state)
{
    (void)state;
    nn_err e;
    nn_ctx ctx;
    fx_ok(nn_ctx_init(&ctx, 0, &e), &e);
    pgn_resnet *ref = load_resnet(), *fold = load_resnet();
    /* Folding needs eval mode. */
    fx_expect_error(pgn_resnet_fold_bn(fold, &e), &e, "eval mode");
    assert_int_equal(fold->folded, 0);
    pgn_resnet_set_training(ref, 0);
    pgn_resnet_set_training(fold, 0);
    fx_ok(pgn_resnet_fold_bn(fold, &e), &e);
    assert_int_equal(fold->folded, 1);
    fx_ok(pgn_resnet_fold_bn(fold, &e), &e); /* a second call does nothing */
    assert_true(fold->stem.geo.has_bias && fold->down.geo.has_bias && fold->up_conv.geo.has_bias);

    const int sizes[][2] = {{32, 32}, {24, 40}, {32, 32}};
    const int n = 2;
    for (int s = 0; s < 3; s++) {
        const int h = sizes[s][0], w = sizes[s][1];
        const size_t ni = (size_t)n * 3 * h * w;
        float *yhat = rand_buf(ni, 1 + (uint32_t)s), *y = rand_buf(ni, 11 + (uint32_t)s);
        float *o_ref = malloc(ni * sizeof(float)), *o_fold = malloc(ni * sizeof(float));
        assert_non_null(o_ref);
        assert_non_null(o_fold);
        fx_ok(pgn_resnet_forward(&ctx, ref, yhat, y, n, h, w, o_ref, &e), &e);
        fx_ok(pgn_resnet_forward(&ctx, fold, yhat, y, n, h, w, o_fold, &e), &e);
        char label[64];
        snprintf(label, sizeof label, "resnet4 folded vs eval, %dx6x%dx%d", n, h, w);
        expect_same(label, o_fold, o_ref, ni, TOL);
        /* The activation path gives the same. */
        nn_act a = {0}, b = {0};
        fx_act_from(&ctx, &a, yhat, n, 3, h, w);
        fx_act_from(&ctx, &b, y, n, 3, h, w);
        fx_ok(pgn_resnet_forward_act(&ctx, fold, &a, &b, &e), &e);
        float *o_act = fx_act_to(&ctx, pgn_resnet_output(fold));
        assert_memory_equal(o_act, o_fold, ni * sizeof(float));
        free(o_act);
        nn_act_free(&a);
        nn_act_free(&b);
        /* The unfolded eval net still has a backward; the folded one refuses it. */
        fx_ok(pgn_resnet_backward(&ctx, ref, o_ref, &e), &e);
        fx_expect_error(pgn_resnet_backward(&ctx, fold, o_ref, &e), &e, "folded");
        fx_expect_error(pgn_resnet_backward_act(&ctx, fold, pgn_resnet_output(fold), &e), &e, "prediction only");
        free(yhat);
        free(y);
        free(o_ref);
        free(o_fold);
    }
    /* Train mode is ignored, loading refused; the forward still works. */
    pgn_resnet_set_training(fold, 1);
    assert_int_equal(fold->training, 0);
    for (int m = 0; m < fold->nmod; m++)
        if (fold->mod[m].bn)
            assert_int_equal(fold->mod[m].bn->training, 0);
    fx_expect_error(pgn_resnet_load_file(fold, RESNET_SD, &e), &e, "folded");
    char report[256];
    nn_weights w;
    fx_ok(nn_weights_read(&w, RESNET_SD, &e), &e);
    assert_int_equal(pgn_resnet_check_state(ref, &w, report, sizeof report), 0);
    assert_true(pgn_resnet_check_state(fold, &w, report, sizeof report) > 0);
    assert_non_null(strstr(report, "folded"));
    nn_weights_free(&w);
    float *x = rand_buf(3 * 16 * 16, 5), *o = malloc(3 * 16 * 16 * sizeof(float));
    fx_ok(pgn_resnet_forward(&ctx, fold, x, x, 1, 16, 16, o, &e), &e);
    free(x);
    free(o);
    del_resnet(ref);
    del_resnet(fold);
    nn_ctx_free(&ctx);
}

/* ------------------------------------------------------------------ UNet */

static pgn_unet *load_unet(void)
{
    nn_err e;
    pgn_unet *u = calloc(1, sizeof *u);
    assert_non_null(u);
    fx_ok(pgn_unet_init(u, 0, &e), &e);
    fx_ok(pgn_unet_load_file(u, UNET_SD, &e), &e);
    return u;
}

static void del_unet(pgn_unet *u)
{
    pgn_unet_free(u);
    free(u);
}

static void unet_folded_matches_eval(void **state)
{
    (void)state;
    nn_err e;
    nn_ctx ctx;
    fx_ok(nn_ctx_init(&ctx, 0, &e), &e);
    pgn_unet *ref = load_unet(), *fold = load_unet();
    fx_expect_error(pgn_unet_fold_bn(fold, &e), &e, "eval mode");
    assert_int_equal(fold->folded, 0);
    pgn_unet_set_training(ref, 0);
    pgn_unet_set_training(fold, 0);
    fx_ok(pgn_unet_fold_bn(fold, &e), &e);
    assert_int_equal(fold->folded, 1);
    fx_ok(pgn_unet_fold_bn(fold, &e), &e);
    assert_true(fold->l0_conv.geo.has_bias && fold->l0_conv.post_relu);
    for (int k = 0; k < 4; k++)
        assert_true(fold->blk[k].folded && fold->blk[k].cpw1.geo.has_bias && fold->blk[k].cpw2.geo.has_bias);

    const int sizes[][2] = {{64, 64}, {32, 96}, {64, 64}};
    const int n = 2;
    for (int s = 0; s < 3; s++) {
        const int h = sizes[s][0], w = sizes[s][1];
        const size_t nx = (size_t)n * 6 * h * w, no = (size_t)n * 3 * h * w;
        float *x = rand_buf(nx, 21 + (uint32_t)s);
        float *o_ref = malloc(no * sizeof(float)), *o_fold = malloc(no * sizeof(float));
        assert_non_null(o_ref);
        assert_non_null(o_fold);
        fx_ok(pgn_unet_forward(&ctx, ref, x, n, h, w, o_ref, &e), &e);
        fx_ok(pgn_unet_forward(&ctx, fold, x, n, h, w, o_fold, &e), &e);
        char label[64];
        snprintf(label, sizeof label, "unet folded vs eval, %dx6x%dx%d", n, h, w);
        expect_same(label, o_fold, o_ref, no, TOL);
        fx_expect_error(pgn_unet_backward(&ctx, fold, o_ref, &e), &e, "folded");
        fx_expect_error(pgn_unet_backward_act(&ctx, fold, &fold->out, &e), &e, "prediction only");
        free(x);
        free(o_ref);
        free(o_fold);
    }
    /* Even right after a train-mode request the folded net stays in eval mode. */
    pgn_unet_set_training(fold, 1);
    assert_int_equal(fold->training, 0);
    float *x = rand_buf((size_t)6 * 32 * 32, 9);
    fx_ok(pgn_unet_forward(&ctx, fold, x, 1, 32, 32, NULL, &e), &e); /* train mode would refuse batch 1 at 32x32 */
    fx_expect_error(pgn_unet_backward_act(&ctx, fold, &fold->out, &e), &e, "folded");
    free(x);
    fx_expect_error(pgn_unet_load_file(fold, UNET_SD, &e), &e, "folded");
    char report[256];
    nn_weights w;
    fx_ok(nn_weights_read(&w, UNET_SD, &e), &e);
    assert_int_equal(pgn_unet_check_state(ref, &w, report, sizeof report), 0);
    assert_true(pgn_unet_check_state(fold, &w, report, sizeof report) > 0);
    nn_weights_free(&w);
    del_unet(ref);
    del_unet(fold);
    nn_ctx_free(&ctx);
}

/* ------------------------------------------------------------------ UNet, inference-only forward */

static pgn_unet *load_folded_unet(int lean)
{
    nn_err e;
    pgn_unet *u = load_unet();
    pgn_unet_set_training(u, 0);
    fx_ok(pgn_unet_fold_bn(u, &e), &e);
    if (lean)
        fx_ok(pgn_unet_set_lean(u, 1, &e), &e);
    assert_int_equal(u->lean, lean);
    return u;
}

/* got equals want bit for bit, or within 1e-6 of max |want| (prints which). */
static void expect_lean_same(const char *label, const float *got, const float *want, size_t n)
{
    size_t differ = 0;
    for (size_t i = 0; i < n; i++)
        differ += memcmp(&got[i], &want[i], sizeof(float)) != 0;
    if (!differ) {
        print_message("%s: bit-identical (%zu values)\n", label, n);
        return;
    }
    print_message("%s: %zu of %zu values differ\n", label, differ, n);
    expect_same(label, got, want, n, 1e-6);
}

static void unet_lean_matches_folded(void **state)
{
    (void)state;
    nn_err e;
    nn_ctx ctx;
    fx_ok(nn_ctx_init(&ctx, 0, &e), &e);
    pgn_unet *fold = load_folded_unet(0), *lean = load_folded_unet(1);
    /* (n, h, w): both sizes and batches, a size change down and back up, and a non-square input. */
    const int cases[][3] = {{1, 64, 64}, {2, 64, 64},  {1, 128, 128}, {2, 128, 128},
                            {1, 64, 64}, {1, 32, 96}, {1, 128, 128}};
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        const int n = cases[c][0], h = cases[c][1], w = cases[c][2];
        const size_t nx = (size_t)n * 6 * h * w, no = (size_t)n * 3 * h * w;
        float *x = rand_buf(nx, 41 + (uint32_t)c);
        float *o_fold = malloc(no * sizeof(float)), *o_lean = malloc(no * sizeof(float));
        assert_non_null(o_fold);
        assert_non_null(o_lean);
        fx_ok(pgn_unet_forward(&ctx, fold, x, n, h, w, o_fold, &e), &e);
        for (int rep = 0; rep < 2; rep++) { /* the second forward runs on the buffers as the first left them */
            memset(o_lean, 0xff, no * sizeof(float));
            fx_ok(pgn_unet_forward(&ctx, lean, x, n, h, w, o_lean, &e), &e);
            char label[96];
            snprintf(label, sizeof label, "unet lean vs folded, %dx6x%dx%d, forward %d", n, h, w, rep + 1);
            expect_lean_same(label, o_lean, o_fold, no);
        }
        /* The activation entry point (concat of the two RGB halves) gives the same. */
        if (c == 1) {
            float *yh = malloc(no * sizeof(float)), *yy = malloc(no * sizeof(float));
            const size_t img = (size_t)3 * h * w;
            for (int i = 0; i < n; i++) {
                memcpy(yh + i * img, x + i * 2 * img, img * sizeof(float));
                memcpy(yy + i * img, x + i * 2 * img + img, img * sizeof(float));
            }
            nn_act a = {0}, b = {0};
            fx_act_from(&ctx, &a, yh, n, 3, h, w);
            fx_act_from(&ctx, &b, yy, n, 3, h, w);
            fx_ok(pgn_unet_forward_pair(&ctx, lean, &a, &b, &e), &e);
            float *o_pair = fx_act_to(&ctx, &lean->out);
            expect_lean_same("unet lean forward_pair vs folded", o_pair, o_fold, no);
            free(o_pair);
            free(yh);
            free(yy);
            nn_act_free(&a);
            nn_act_free(&b);
        }
        /* No backward after an inference-only forward. */
        fx_expect_error(pgn_unet_backward(&ctx, lean, o_fold, &e), &e, "backward after an inference-only forward");
        fx_expect_error(pgn_unet_backward_act(&ctx, lean, &lean->out, &e), &e, "inference-only");
        /* The ordinary forward's activations are not written. */
        assert_null(lean->sep[PGN_UNET_SEP_ORIG1].out.data);
        assert_null(lean->cat[4].data);
        assert_null(lean->blk[0].out.data);
        free(x);
        free(o_fold);
        free(o_lean);
    }
    /* Lean mode off: the ordinary folded forward again, same output; on again: the same. */
    const int n = 1, h = 64, w = 64;
    const size_t nx = (size_t)n * 6 * h * w, no = (size_t)n * 3 * h * w;
    float *x = rand_buf(nx, 77), *o1 = malloc(no * sizeof(float)), *o2 = malloc(no * sizeof(float));
    fx_ok(pgn_unet_forward(&ctx, fold, x, n, h, w, o1, &e), &e);
    fx_ok(pgn_unet_set_lean(lean, 0, &e), &e);
    assert_int_equal(lean->lean, 0);
    for (int i = 0; i < PGN_UNET_LEAN_BUFS; i++)
        assert_null(lean->lean_buf[i].data);
    fx_ok(pgn_unet_forward(&ctx, lean, x, n, h, w, o2, &e), &e);
    assert_memory_equal(o2, o1, no * sizeof(float));
    assert_non_null(lean->sep[PGN_UNET_SEP_ORIG1].out.data);
    fx_expect_error(pgn_unet_backward(&ctx, lean, o1, &e), &e, "folded");
    fx_ok(pgn_unet_set_lean(lean, 1, &e), &e);
    assert_null(lean->sep[PGN_UNET_SEP_ORIG1].out.data); /* set_lean frees the ordinary activations */
    fx_ok(pgn_unet_forward(&ctx, lean, x, n, h, w, o2, &e), &e);
    assert_memory_equal(o2, o1, no * sizeof(float));
    free(x);
    free(o1);
    free(o2);
    /* Only a folded net has the lean forward. */
    pgn_unet *plain = load_unet();
    fx_expect_error(pgn_unet_set_lean(plain, 1, &e), &e, "folded");
    pgn_unet_set_training(plain, 0);
    fx_expect_error(pgn_unet_set_lean(plain, 1, &e), &e, "folded");
    assert_int_equal(plain->lean, 0);
    fx_ok(pgn_unet_set_lean(plain, 0, &e), &e); /* off is always fine */
    del_unet(plain);
    del_unet(fold);
    del_unet(lean);
    nn_ctx_free(&ctx);
}

/* Engine memory of a fresh net's first forward of [n, 6, h, w]: the high-water mark above what was
 * in use before (activations, oneDNN weight copies for the shape, scratch). Fresh context too. */
static int64_t first_forward_bytes(int lean, int n, int h, int w)
{
    nn_err e;
    nn_ctx ctx;
    fx_ok(nn_ctx_init(&ctx, 0, &e), &e);
    pgn_unet *u = load_folded_unet(lean);
    const size_t nx = (size_t)n * 6 * h * w;
    float *x = rand_buf(nx, 5);
    nn_memstat before, after;
    nn_memstat_reset_peak();
    nn_memstat_get(&before);
    fx_ok(pgn_unet_forward(&ctx, u, x, n, h, w, NULL, &e), &e);
    nn_memstat_get(&after);
    free(x);
    del_unet(u);
    nn_ctx_free(&ctx);
    return after.total_peak - before.total;
}

static void unet_lean_uses_less_memory(void **state)
{
    (void)state;
    /* (h, w, largest lean/folded ratio): measured 0.52 at 128x128 and 0.61 at 64x64 (AVX-512). */
    const struct {
        int h, w;
        double max_ratio;
    } cases[] = {{128, 128, 0.65}, {64, 64, 0.75}};
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        const int n = 1, h = cases[c].h, w = cases[c].w;
        int64_t folded = first_forward_bytes(0, n, h, w), lean = first_forward_bytes(1, n, h, w);
        double ratio = (double)lean / (double)folded;
        print_message("unet engine memory of the first forward, %dx6x%dx%d: folded %.2f MB, lean %.2f MB (%.0f%% "
                      "less)\n",
                      n, h, w, folded / 1e6, lean / 1e6, 100.0 * (1.0 - ratio));
        assert_true(folded > 0 && lean > 0);
        if (ratio > cases[c].max_ratio) {
            print_error("lean/folded %.3f > %.2f\n", ratio, cases[c].max_ratio);
            fail();
        }
    }
}

static void unet_lean_steady_state_allocates_nothing(void **state)
{
    (void)state;
    nn_err e;
    nn_ctx ctx;
    fx_ok(nn_ctx_init(&ctx, 0, &e), &e);
    pgn_unet *u = load_folded_unet(1);
    /* (n, h, w) in turn; each is forwarded once (it may allocate: a new shape), then again counted. */
    const int shapes[][3] = {{1, 128, 128}, {1, 64, 64}, {2, 64, 64}, {1, 128, 128}};
    for (size_t c = 0; c < sizeof shapes / sizeof *shapes; c++) {
        const int n = shapes[c][0], h = shapes[c][1], w = shapes[c][2];
        float *x = rand_buf((size_t)n * 6 * h * w, 90 + (uint32_t)c);
        nn_memstat s0, s1, s2;
        nn_memstat_reset_peak();
        nn_memstat_get(&s0);
        fx_ok(pgn_unet_forward(&ctx, u, x, n, h, w, NULL, &e), &e);
        nn_memstat_get(&s1);
        nn_memstat_reset_peak();
        for (int rep = 0; rep < 2; rep++)
            fx_ok(pgn_unet_forward(&ctx, u, x, n, h, w, NULL, &e), &e);
        nn_memstat_get(&s2);
        print_message("lean unet %dx6x%dx%d: first forward +%.2f MB (peak +%.2f MB); two more: cur %+lld B, peak "
                      "%+lld B\n",
                      n, h, w, (s1.total - s0.total) / 1e6, (s1.total_peak - s0.total) / 1e6,
                      (long long)(s2.total - s1.total), (long long)(s2.total_peak - s1.total));
        assert_true(s2.total == s1.total);
        assert_true(s2.total_peak == s1.total);
        for (int k = 0; k < NN_MEM_KINDS; k++)
            assert_true(s2.cur[k] == s1.cur[k] && s2.peak[k] == s1.cur[k]);
        free(x);
    }
    del_unet(u);
    nn_ctx_free(&ctx);
}

/* ------------------------------------------------------------------ ResNet, inference-only forward */

/* ResNet-4: the fixture; other depths: seeded weights with BN parameters and running statistics
 * drawn in the fixture's ranges (weight U[0.5, 1.5), bias U[-0.2, 0.2), mean U[-0.1, 0.1), var
 * U[0.5, 1.5)), so the fold changes every conv. Folded; lean on request. */
static pgn_resnet *load_folded_resnet(int blocks, int lean)
{
    nn_err e;
    pgn_resnet *r;
    if (blocks == 4) {
        r = load_resnet();
    } else {
        r = calloc(1, sizeof *r);
        assert_non_null(r);
        fx_ok(pgn_resnet_init(r, blocks, 17, &e), &e);
        for (int m = 0; m < r->nmod; m++) {
            nn_batchnorm2d *bn = r->mod[m].bn;
            if (!bn)
                continue;
            const int c = (int)bn->gamma.numel;
            float *u = rand_buf((size_t)4 * c, 200 + (uint32_t)m); /* [-2, 2) */
            for (int i = 0; i < c; i++) {
                bn->gamma.data[i] = 1.0f + 0.25f * u[i];
                bn->beta.data[i] = 0.1f * u[c + i];
                bn->running_mean.data[i] = 0.05f * u[2 * c + i];
                bn->running_var.data[i] = 1.0f + 0.25f * u[3 * c + i];
            }
            free(u);
        }
    }
    pgn_resnet_set_training(r, 0);
    fx_ok(pgn_resnet_fold_bn(r, &e), &e);
    if (lean)
        fx_ok(pgn_resnet_set_lean(r, 1, &e), &e);
    assert_int_equal(r->lean, lean);
    return r;
}

static void resnet_lean_case(int blocks)
{
    nn_err e;
    nn_ctx ctx;
    fx_ok(nn_ctx_init(&ctx, 0, &e), &e);
    pgn_resnet *fold = load_folded_resnet(blocks, 0), *lean = load_folded_resnet(blocks, 1);
    /* (n, h, w): both sizes and batches, a size change down and back up, and a non-square input. */
    const int cases[][3] = {{1, 64, 64}, {2, 64, 64},  {1, 128, 128}, {2, 128, 128},
                            {1, 64, 64}, {1, 24, 40}, {1, 128, 128}};
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        const int n = cases[c][0], h = cases[c][1], w = cases[c][2];
        const size_t ni = (size_t)n * 3 * h * w;
        float *yhat = rand_buf(ni, 51 + (uint32_t)c), *y = rand_buf(ni, 61 + (uint32_t)c);
        float *o_fold = malloc(ni * sizeof(float)), *o_lean = malloc(ni * sizeof(float));
        assert_non_null(o_fold);
        assert_non_null(o_lean);
        fx_ok(pgn_resnet_forward(&ctx, fold, yhat, y, n, h, w, o_fold, &e), &e);
        for (int rep = 0; rep < 2; rep++) { /* the second forward runs on the buffers as the first left them */
            memset(o_lean, 0xff, ni * sizeof(float));
            fx_ok(pgn_resnet_forward(&ctx, lean, yhat, y, n, h, w, o_lean, &e), &e);
            char label[96];
            snprintf(label, sizeof label, "resnet%d lean vs folded, %dx6x%dx%d, forward %d", blocks, n, h, w, rep + 1);
            expect_lean_same(label, o_lean, o_fold, ni);
        }
        /* The activation entry point gives the same. */
        if (c == 1) {
            nn_act a = {0}, b = {0};
            fx_act_from(&ctx, &a, yhat, n, 3, h, w);
            fx_act_from(&ctx, &b, y, n, 3, h, w);
            fx_ok(pgn_resnet_forward_act(&ctx, lean, &a, &b, &e), &e);
            float *o_act = fx_act_to(&ctx, pgn_resnet_output(lean));
            expect_lean_same("resnet lean forward_act vs folded", o_act, o_fold, ni);
            free(o_act);
            nn_act_free(&a);
            nn_act_free(&b);
        }
        /* No backward after an inference-only forward. */
        fx_expect_error(pgn_resnet_backward(&ctx, lean, o_fold, &e), &e, "backward after an inference-only forward");
        fx_expect_error(pgn_resnet_backward_act(&ctx, lean, pgn_resnet_output(lean), &e), &e, "inference-only");
        /* Only the input and the output of the net's activations are written. */
        assert_null(lean->act[PGN_RS_UP].data);
        assert_null(lean->act[PGN_RS_STEM_ACT].data);
        assert_null(lean->b2.data);
        for (int i = 0; i < blocks; i++)
            assert_null(lean->blk[i].act[PGN_RB_OUT].data);
        assert_non_null(lean->act[PGN_RS_X].data);
        for (int k = 0; k < PGN_RESNET_LEAN_BUFS; k++)
            assert_non_null(lean->lean_buf[k].data);
        free(yhat);
        free(y);
        free(o_fold);
        free(o_lean);
    }
    /* Lean mode off: the ordinary folded forward again, same output; on again: the same. */
    const int n = 1, h = 64, w = 64;
    const size_t ni = (size_t)n * 3 * h * w;
    float *yhat = rand_buf(ni, 87), *y = rand_buf(ni, 88);
    float *o1 = malloc(ni * sizeof(float)), *o2 = malloc(ni * sizeof(float));
    fx_ok(pgn_resnet_forward(&ctx, fold, yhat, y, n, h, w, o1, &e), &e);
    fx_ok(pgn_resnet_set_lean(lean, 0, &e), &e);
    assert_int_equal(lean->lean, 0);
    for (int i = 0; i < PGN_RESNET_LEAN_BUFS; i++)
        assert_null(lean->lean_buf[i].data);
    fx_ok(pgn_resnet_forward(&ctx, lean, yhat, y, n, h, w, o2, &e), &e);
    assert_memory_equal(o2, o1, ni * sizeof(float));
    assert_non_null(lean->act[PGN_RS_UP].data);
    fx_expect_error(pgn_resnet_backward(&ctx, lean, o1, &e), &e, "folded");
    fx_ok(pgn_resnet_set_lean(lean, 1, &e), &e);
    assert_null(lean->act[PGN_RS_UP].data); /* set_lean frees the ordinary activations */
    assert_null(lean->blk[0].act[PGN_RB_L1].data);
    fx_ok(pgn_resnet_forward(&ctx, lean, yhat, y, n, h, w, o2, &e), &e);
    assert_memory_equal(o2, o1, ni * sizeof(float));
    free(yhat);
    free(y);
    free(o1);
    free(o2);
    del_resnet(fold);
    del_resnet(lean);
    nn_ctx_free(&ctx);
}

static void resnet_lean_matches_folded(void **state)
{
    (void)state;
    resnet_lean_case(4);
    resnet_lean_case(8);
    /* Only a folded net has the lean forward. */
    nn_err e;
    pgn_resnet *plain = load_resnet();
    fx_expect_error(pgn_resnet_set_lean(plain, 1, &e), &e, "folded");
    pgn_resnet_set_training(plain, 0);
    fx_expect_error(pgn_resnet_set_lean(plain, 1, &e), &e, "folded");
    assert_int_equal(plain->lean, 0);
    fx_ok(pgn_resnet_set_lean(plain, 0, &e), &e); /* off is always fine */
    /* The unfolded eval net keeps its backward. */
    nn_ctx ctx;
    fx_ok(nn_ctx_init(&ctx, 0, &e), &e);
    float *x = rand_buf((size_t)3 * 16 * 16, 3), *o = malloc((size_t)3 * 16 * 16 * sizeof(float));
    fx_ok(pgn_resnet_forward(&ctx, plain, x, x, 1, 16, 16, o, &e), &e);
    fx_ok(pgn_resnet_backward(&ctx, plain, o, &e), &e);
    free(x);
    free(o);
    nn_ctx_free(&ctx);
    del_resnet(plain);
}

/* As first_forward_bytes, for a folded ResNet-`blocks`. */
static int64_t resnet_first_forward_bytes(int blocks, int lean, int n, int h, int w)
{
    nn_err e;
    nn_ctx ctx;
    fx_ok(nn_ctx_init(&ctx, 0, &e), &e);
    pgn_resnet *r = load_folded_resnet(blocks, lean);
    const size_t ni = (size_t)n * 3 * h * w;
    float *x = rand_buf(ni, 5);
    nn_memstat before, after;
    nn_memstat_reset_peak();
    nn_memstat_get(&before);
    fx_ok(pgn_resnet_forward(&ctx, r, x, x, n, h, w, NULL, &e), &e);
    nn_memstat_get(&after);
    free(x);
    del_resnet(r);
    nn_ctx_free(&ctx);
    return after.total_peak - before.total;
}

static void resnet_lean_uses_less_memory(void **state)
{
    (void)state;
    /* (blocks, h, w, largest lean/folded ratio): measured 0.48 and 0.62 (ResNet-4 at 128x128 and
     * 64x64), 0.40 and 0.59 (ResNet-8), with AVX-512 and with AVX2 alike. The activations shrink
     * from 6 + 64 + 32 + 64 N + 32 + 128 + 64 + 3 to 6 + 128 + 64 + 32 + 3 units of n*H*W floats;
     * the rest (oneDNN's weight copies, the convs' input reorders) is the same in both. */
    const struct {
        int blocks, h, w;
        double max_ratio;
    } cases[] = {{4, 128, 128, 0.60}, {4, 64, 64, 0.72}, {8, 128, 128, 0.50}, {8, 64, 64, 0.68}};
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        const int n = 1, nb = cases[c].blocks, h = cases[c].h, w = cases[c].w;
        int64_t folded = resnet_first_forward_bytes(nb, 0, n, h, w), lean = resnet_first_forward_bytes(nb, 1, n, h, w);
        double ratio = (double)lean / (double)folded;
        print_message("resnet%d engine memory of the first forward, %dx6x%dx%d: folded %.2f MB, lean %.2f MB (%.0f%% "
                      "less)\n",
                      nb, n, h, w, folded / 1e6, lean / 1e6, 100.0 * (1.0 - ratio));
        assert_true(folded > 0 && lean > 0);
        if (ratio > cases[c].max_ratio) {
            print_error("lean/folded %.3f > %.2f\n", ratio, cases[c].max_ratio);
            fail();
        }
    }
}

static void resnet_lean_steady_state_allocates_nothing(void **state)
{
    (void)state;
    nn_err e;
    nn_ctx ctx;
    fx_ok(nn_ctx_init(&ctx, 0, &e), &e);
    pgn_resnet *r = load_folded_resnet(4, 1);
    /* (n, h, w) in turn; each is forwarded once (it may allocate: a new shape), then again counted. */
    const int shapes[][3] = {{1, 128, 128}, {1, 64, 64}, {2, 64, 64}, {1, 128, 128}};
    for (size_t c = 0; c < sizeof shapes / sizeof *shapes; c++) {
        const int n = shapes[c][0], h = shapes[c][1], w = shapes[c][2];
        const size_t ni = (size_t)n * 3 * h * w;
        float *yhat = rand_buf(ni, 90 + (uint32_t)c), *y = rand_buf(ni, 95 + (uint32_t)c);
        float *o = malloc(ni * sizeof(float));
        assert_non_null(o);
        nn_memstat s0, s1, s2;
        nn_memstat_reset_peak();
        nn_memstat_get(&s0);
        fx_ok(pgn_resnet_forward(&ctx, r, yhat, y, n, h, w, o, &e), &e);
        nn_memstat_get(&s1);
        nn_memstat_reset_peak();
        for (int rep = 0; rep < 2; rep++)
            fx_ok(pgn_resnet_forward(&ctx, r, yhat, y, n, h, w, o, &e), &e);
        nn_memstat_get(&s2);
        print_message("lean resnet4 %dx6x%dx%d: first forward +%.2f MB (peak +%.2f MB); two more: cur %+lld B, peak "
                      "%+lld B\n",
                      n, h, w, (s1.total - s0.total) / 1e6, (s1.total_peak - s0.total) / 1e6,
                      (long long)(s2.total - s1.total), (long long)(s2.total_peak - s1.total));
        assert_true(s2.total == s1.total);
        assert_true(s2.total_peak == s1.total);
        for (int k = 0; k < NN_MEM_KINDS; k++)
            assert_true(s2.cur[k] == s1.cur[k] && s2.peak[k] == s1.cur[k]);
        free(yhat);
        free(y);
        free(o);
    }
    del_resnet(r);
    nn_ctx_free(&ctx);
}

/* ------------------------------------------------------------------ pgn_net */

static void net_same(const char *path, int h, int w)
{
    nn_err e;
    nn_ctx ctx;
    fx_ok(nn_ctx_init(&ctx, 0, &e), &e);
    pgn_net a, b;
    fx_ok(pgn_net_load_opts(&a, path, 0, &e), &e);
    fx_ok(pgn_net_load(&b, path, &e), &e);
    assert_int_equal(a.folded, 0);
    assert_int_equal(b.folded, 1);
    assert_string_equal(a.desc, b.desc);
    if (b.resnet) {
        assert_int_equal(b.resnet->folded, 1);
        assert_int_equal(b.resnet->lean, 1); /* inference-only forwards */
        assert_int_equal(b.lean, 1);
        assert_int_equal(a.resnet->lean, 0);
    } else {
        assert_int_equal(b.unet->folded, 1);
        assert_int_equal(b.unet->lean, 1); /* inference-only forwards */
        assert_int_equal(b.lean, 1);
        assert_int_equal(a.unet->lean, 0);
    }
    assert_int_equal(a.lean, 0);
    const int n = 2;
    const size_t ni = (size_t)n * 3 * h * w;
    float *yhat = rand_buf(ni, 31), *y = rand_buf(ni, 32);
    for (size_t i = 0; i < ni; i++) /* y_hat: y plus a perturbation, as in use */
        yhat[i] = y[i] + 0.2f * yhat[i];
    float *pa = malloc(ni * sizeof(float)), *ga = malloc(ni * sizeof(float));
    float *pb = malloc(ni * sizeof(float)), *gb = malloc(ni * sizeof(float));
    fx_ok(pgn_net_predict(&ctx, &a, yhat, y, n, h, w, pa, ga, &e), &e);
    fx_ok(pgn_net_predict(&ctx, &b, yhat, y, n, h, w, pb, gb, &e), &e);
    /* o agrees within 1e-4 of max |o| (see above); through the sigmoid head p and g agree at
     * least as well relative to their own ranges. */
    char label[320];
    snprintf(label, sizeof label, "%s: backbone output o", a.desc);
    expect_same(label, b.o, a.o, ni, TOL);
    snprintf(label, sizeof label, "%s: p", a.desc);
    expect_same(label, pb, pa, ni, TOL);
    snprintf(label, sizeof label, "%s: g", a.desc);
    expect_same(label, gb, ga, ni, TOL);
    /* The folded net keeps no weight gradients, and after its first prediction no PyTorch-layout
     * weights but those our grouped kernels read. */
    assert_int_equal(b.released, 1);
    pgn_module *mod = b.resnet ? b.resnet->mod : b.unet->mod;
    int nmod = b.resnet ? b.resnet->nmod : PGN_UNET_MODULES, convs = 0;
    for (int m = 0; m < nmod; m++)
        if (mod[m].conv) {
            convs++;
            assert_null(mod[m].conv->dweight.data);
            assert_null(mod[m].conv->dbias.data);
            assert_true((mod[m].conv->weight.data != NULL) == nn_convg_shape_fits(&mod[m].conv->geo));
        }
    assert_true(convs > 0);
    /* and predicts as before at another size (new primitives from oneDNN's own weight copies) */
    free(yhat), free(y), free(pa), free(ga), free(pb), free(gb);
    const int h2 = h + (b.unet ? 32 : 8);
    const size_t n2 = (size_t)n * 3 * h2 * w;
    yhat = rand_buf(n2, 41), y = rand_buf(n2, 42);
    for (size_t i = 0; i < n2; i++)
        yhat[i] = y[i] + 0.2f * yhat[i];
    pa = malloc(n2 * sizeof(float)), ga = malloc(n2 * sizeof(float));
    pb = malloc(n2 * sizeof(float)), gb = malloc(n2 * sizeof(float));
    fx_ok(pgn_net_predict(&ctx, &a, yhat, y, n, h2, w, pa, ga, &e), &e);
    fx_ok(pgn_net_predict(&ctx, &b, yhat, y, n, h2, w, pb, gb, &e), &e);
    snprintf(label, sizeof label, "%s: g at %dx%d after the weights were released", a.desc, h2, w);
    expect_same(label, gb, ga, n2, TOL);
    free(yhat);
    free(y);
    free(pa);
    free(ga);
    free(pb);
    free(gb);
    pgn_net_free(&a);
    pgn_net_free(&b);
    nn_ctx_free(&ctx);
}

static void net_predict_same_folded(void **state)
{
    (void)state;
    net_same(RESNET_V2, 32, 32);
    net_same(RESNET_SD, 16, 24);
    net_same(UNET_SD, 64, 64);
    net_same(UNET_SD, 128, 128);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(conv_fold_matches_conv_bn),
        cmocka_unit_test(resnet_folded_matches_eval),
        cmocka_unit_test(unet_folded_matches_eval),
        cmocka_unit_test(unet_lean_matches_folded),
        cmocka_unit_test(unet_lean_uses_less_memory),
        cmocka_unit_test(unet_lean_steady_state_allocates_nothing),
        cmocka_unit_test(resnet_lean_matches_folded),
        cmocka_unit_test(resnet_lean_uses_less_memory),
        cmocka_unit_test(resnet_lean_steady_state_allocates_nothing),
        cmocka_unit_test(net_predict_same_folded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
