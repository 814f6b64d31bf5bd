/* The metrics of pgn/quality.h and the evaluation resize of pgn/image.h against float64 PyTorch
 * goldens (tests/fixtures/quality.safetensors, written by tools/fixtures_dip.py): L1, MSE, PSNR, SSIM
 * on [0,1] (valid windows and zero padding 5), L1/MSE/SSIM in normalised space (the paper's SSIM),
 * all within 1e-5 relative; identical images (PSNR = +inf, SSIM = 1), too-small images, and
 * torchvision's Resize / CenterCrop sizes and offsets. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "pgn/image.h"
#include "pgn/quality.h"
#include "pgn/teacher.h"
#include "tests/unit/fixture.h"

#define TOL 1e-5

static void expect_rel(const char *what, int i, double got, double want)
{
    const double err = fabs(got - want) / fabs(want);
    if (!(err <= TOL)) {
        print_error("%s[%d]: %.9g, PyTorch %.9g (relative error %.3g > %.3g)\n", what, i, got, want, err, TOL);
        fail();
    }
}

static void metrics_match_torch(void **state)
{
    (void)state;
    nn_weights fx;
    fx_open(&fx, "quality.safetensors");
    const nn_weight_entry *ea = nn_weights_find(&fx, "a");
    assert_non_null(ea);
    assert_int_equal(ea->ndim, 4);
    const int n = (int)ea->shape[0], c = (int)ea->shape[1], h = (int)ea->shape[2], w = (int)ea->shape[3];
    assert_int_equal(c, 3);
    const size_t count = (size_t)c * h * w;
    const float *a = fx_get(&fx, "a", NULL), *b = fx_get(&fx, "b", NULL);
    const float *l1 = fx_get(&fx, "l1", NULL), *mse = fx_get(&fx, "mse", NULL), *psnr = fx_get(&fx, "psnr", NULL);
    const float *ssim = fx_get(&fx, "ssim_unit", NULL), *ssim5 = fx_get(&fx, "ssim_unit_pad5", NULL);
    const float *l1n = fx_get(&fx, "l1_norm", NULL), *msen = fx_get(&fx, "mse_norm", NULL);
    const float *ssimp = fx_get(&fx, "ssim_paper", NULL);
    float *an = malloc(count * sizeof *an), *bn = malloc(count * sizeof *bn);
    assert_true(an && bn);
    for (int i = 0; i < n; i++) {
        const float *ai = a + i * count, *bi = b + i * count;
        expect_rel("l1", i, pgn_l1(ai, bi, count), l1[i]);
        expect_rel("mse", i, pgn_mse(ai, bi, count), mse[i]);
        expect_rel("psnr", i, pgn_psnr(ai, bi, count), psnr[i]);
        expect_rel("ssim (valid windows)", i, pgn_ssim(ai, bi, c, h, w), ssim[i]);
        expect_rel("ssim (zero padding 5, [0,1])", i, pgn_ssim_window(ai, bi, c, h, w, 5), ssim5[i]);
        pgn_to_normalised(an, ai, 1, h, w, PGN_SPACE_UNIT);
        pgn_to_normalised(bn, bi, 1, h, w, PGN_SPACE_UNIT);
        expect_rel("l1 (normalised)", i, pgn_l1(an, bn, count), l1n[i]);
        expect_rel("mse (normalised)", i, pgn_mse(an, bn, count), msen[i]);
        expect_rel("ssim_paper", i, pgn_ssim_paper(an, bn, c, h, w), ssimp[i]);
        print_message("image %d: L1 %.5f MSE %.6f PSNR %.3f dB SSIM %.5f (padded %.5f) | normalised L1 %.5f "
                      "MSE %.5f SSIM %.5f\n",
                      i, pgn_l1(ai, bi, count), pgn_mse(ai, bi, count), pgn_psnr(ai, bi, count),
                      pgn_ssim(ai, bi, c, h, w), pgn_ssim_window(ai, bi, c, h, w, 5), pgn_l1(an, bn, count),
                      pgn_mse(an, bn, count), pgn_ssim_paper(an, bn, c, h, w));
    }
    free(an);
    free(bn);
    nn_weights_free(&fx);
}

static void identical_and_degenerate_images(void **state)
{
    (void)state;
    enum { C = 3, H = 16, W = 12, COUNT = C * H * W };
    float a[COUNT], b[COUNT];
    for (int i = 0; i < COUNT; i++)
        a[i] = b[i] = (float)((i * 37) % 101) / 100.0f;
    const double p = pgn_psnr(a, b, COUNT);
    assert_true(isinf(p) && p > 0);
    assert_true(pgn_l1(a, b, COUNT) == 0.0 && pgn_mse(a, b, COUNT) == 0.0);
    assert_true(fabs(pgn_ssim(a, b, C, H, W) - 1.0) < 1e-12);
    assert_true(fabs(pgn_ssim_paper(a, b, C, H, W) - 1.0) < 1e-12);
    /* A constant offset of 0.1: MSE 0.01, PSNR exactly 20 dB. */
    for (int i = 0; i < COUNT; i++)
        b[i] = a[i] + 0.1f;
    assert_true(fabs(pgn_psnr(a, b, COUNT) - 20.0) < 1e-4);
    assert_true(pgn_ssim(a, b, C, H, W) < 1.0);
    /* Too small for an 11x11 window without padding; fine with it. Zero-size input. */
    assert_true(isnan(pgn_ssim(a, b, 1, 10, 10)));
    assert_false(isnan(pgn_ssim_paper(a, b, 1, 10, 10)));
    assert_true(isnan(pgn_ssim(a, b, 1, 0, 12)));
    assert_true(pgn_l1(a, b, 0) == 0.0);
}

static void resize_matches_torch(void **state)
{
    (void)state;
    nn_weights fx;
    fx_open(&fx, "quality.safetensors");
    const char *cases[] = {"resize_down", "resize_up"};
    const int sizes[] = {20, 12};
    for (int k = 0; k < 2; k++) {
        char in_name[64], out_name[64];
        snprintf(in_name, sizeof in_name, "%s.in", cases[k]);
        snprintf(out_name, sizeof out_name, "%s.out", cases[k]);
        const nn_weight_entry *ein = nn_weights_find(&fx, in_name), *eout = nn_weights_find(&fx, out_name);
        assert_true(ein && eout);
        const int c = (int)ein->shape[1], h = (int)ein->shape[2], w = (int)ein->shape[3];
        int oh, ow;
        pgn_image_shorter_side_size(h, w, sizes[k], &oh, &ow);
        assert_int_equal(oh, eout->shape[2]);
        assert_int_equal(ow, eout->shape[3]);
        float *got = malloc((size_t)c * oh * ow * sizeof *got);
        assert_non_null(got);
        pgn_image_resize(ein->data, c, h, w, got, oh, ow);
        double worst = 0;
        for (size_t i = 0; i < (size_t)c * oh * ow; i++)
            worst = fmax(worst, fabs((double)got[i] - ((const float *)eout->data)[i]));
        print_message("%s: %dx%d -> %dx%d, max error %.3g\n", cases[k], h, w, oh, ow, worst);
        assert_true(worst <= TOL);
        free(got);
    }
    nn_weights_free(&fx);

    /* Resize(256) of 375x500 (a typical ImageNet-val size) is 256x341; of 500x375, 341x256. */
    int oh, ow;
    pgn_image_shorter_side_size(375, 500, 256, &oh, &ow);
    assert_true(oh == 256 && ow == 341);
    pgn_image_shorter_side_size(500, 375, 256, &oh, &ow);
    assert_true(oh == 341 && ow == 256);
    pgn_image_shorter_side_size(300, 300, 256, &oh, &ow);
    assert_true(oh == 256 && ow == 256);
    /* Same size: the identity. */
    float src[2 * 3 * 4], dst[2 * 3 * 4];
    for (int i = 0; i < 24; i++)
        src[i] = (float)i;
    pgn_image_resize(src, 2, 3, 4, dst, 3, 4);
    assert_memory_equal(src, dst, sizeof src);
}

/* CenterCrop offsets with Python's round (halves to even): (7-4)/2 = 1.5 -> 2, (9-4)/2 = 2.5 -> 2,
 * (11-4)/2 = 3.5 -> 4; whole offsets as they are. */
static void center_crop_offsets(void **state)
{
    (void)state;
    const int hs[] = {7, 9, 11, 8};
    const int want_top[] = {2, 2, 4, 2};
    for (int k = 0; k < 4; k++) {
        const int h = hs[k], w = 6;
        float *src = malloc((size_t)h * w * sizeof *src), dst[4 * 2];
        assert_non_null(src);
        for (int i = 0; i < h * w; i++)
            src[i] = (float)i;
        pgn_image_center_crop(src, 1, h, w, dst, 4, 2); /* left = (6-2)/2 = 2 */
        assert_true(dst[0] == (float)(want_top[k] * w + 2));
        assert_true(dst[7] == (float)((want_top[k] + 3) * w + 3));
        free(src);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(metrics_match_torch),
        cmocka_unit_test(identical_and_degenerate_images),
        cmocka_unit_test(resize_matches_torch),
        cmocka_unit_test(center_crop_offsets),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
