/* Gradient-field panels: the true gradient's per-channel min/max map (shared by the prediction),
 * de-normalisation, and the six-panel PNG read back. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "pgn/image.h"
#include "pgn/teacher.h"
#include "pgn/viz.h"

enum { H = 8, W = 10, PLANE = H * W, COUNT = 3 * PLANE };

static void gradient_map_uses_the_true_field(void **s)
{
    float ref[COUNT], pred[COUNT], a[COUNT], b[COUNT];
    for (int i = 0; i < COUNT; i++) {
        ref[i] = (float)((i * 37) % 101) * 0.01f - 0.5f + (float)(i / PLANE); /* per-channel offsets */
        pred[i] = 2.0f * ref[i];
    }
    pgn_viz_gradient(a, ref, ref, H, W);
    pgn_viz_gradient(b, pred, ref, H, W);
    for (int c = 0; c < 3; c++) {
        float lo = 2, hi = -1;
        for (int i = 0; i < PLANE; i++) {
            lo = fminf(lo, a[c * PLANE + i]);
            hi = fmaxf(hi, a[c * PLANE + i]);
            assert_true(b[c * PLANE + i] >= 0.0f && b[c * PLANE + i] <= 1.0f); /* clamped */
        }
        assert_true(fabsf(lo) < 1e-6f && fabsf(hi - 1.0f) < 1e-6f);
    }
    /* The prediction is not rescaled to its own range: 2x the field saturates somewhere. */
    int saturated = 0;
    for (int i = 0; i < COUNT; i++)
        saturated += b[i] == 1.0f;
    assert_true(saturated > 0);
}

static void six_panels_read_back(void **s)
{
    float u[COUNT], xn[COUNT], back[COUNT], g[COUNT];
    for (int i = 0; i < COUNT; i++)
        u[i] = (float)((i * 13) % 256) / 255.0f, g[i] = sinf((float)i);
    pgn_to_normalised(xn, u, 1, H, W, PGN_SPACE_UNIT);
    pgn_viz_denormalise(back, xn, H, W);
    for (int i = 0; i < COUNT; i++)
        assert_true(fabsf(back[i] - u[i]) < 1e-5f);
    char path[] = "/tmp/pgnd-viz-XXXXXX.png";
    int fd = mkstemps(path, 4);
    assert_true(fd >= 0);
    close(fd);
    pgn_fields f = {H, W, xn, xn, g, g, xn, NULL};
    char err[256];
    assert_int_equal(pgn_viz_fields_png(path, &f, err, sizeof err), 0);
    float *img;
    int h, w;
    assert_int_equal(pgn_image_load(path, &img, &h, &w, err, sizeof err), 0);
    assert_int_equal(h, H);
    assert_int_equal(w, 6 * W + 5 * 2);
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < H; y++) {
            for (int x = 0; x < W; x++) /* panel 0 is the target, to 8-bit precision */
                assert_true(fabsf(img[(c * H + y) * w + x] - u[(c * H + y) * W + x]) <= 0.5f / 255 + 1e-6f);
            assert_true(img[(c * H + y) * w + W] == 1.0f);            /* white gap */
            assert_true(img[(c * H + y) * w + 5 * (W + 2)] == 1.0f); /* the missing panel is blank */
        }
    free(img);
    unlink(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(gradient_map_uses_the_true_field),
                                       cmocka_unit_test(six_panels_read_back)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
