/* The VGG-19 teacher against PyTorch (tests/fixtures/teacher*.{pth,safetensors}, written by
 * tools/fixtures_teacher.py): a torch-saved state dict in the legacy and zip layouts, batch 2 at
 * 64x64 and one 48x80 image; loss within 1e-5, gradient within 1e-4 of max |g|. Also: cached and
 * uncached targets agree, the [0,1] and [-1,1] helpers apply the chain rule, broken weight files
 * are refused with every problem listed, and a steady-state call allocates nothing. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <execinfo.h>
#include <malloc.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "pgn/teacher.h"
#include "tests/unit/fixture.h"

/* ---- allocation counting: this executable's malloc family interposes on every library's.
 * An allocation made on behalf of oneDNN's dnnl_primitive_execute (its per-call argument map,
 * which the C API gives no way to avoid) is counted apart from everything else. */
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
static volatile int counting;
static long ours, onednn;

static void count(void)
{
    if (!counting)
        return;
    counting = 0; /* backtrace itself may allocate */
    void *frames[24];
    int n = backtrace(frames, 24), in_dnnl = 0;
    for (int i = 0; i < n && !in_dnnl; i++) {
        Dl_info info;
        if (dladdr(frames[i], &info) && info.dli_fname && strstr(info.dli_fname, "libdnnl"))
            in_dnnl = 1;
    }
    if (in_dnnl)
        onednn++;
    else
        ours++;
    counting = 1;
}

void *malloc(size_t n)
{
    count();
    return __libc_malloc(n);
}
void *calloc(size_t a, size_t b)
{
    count();
    return __libc_calloc(a, b);
}
void *realloc(void *p, size_t n)
{
    count();
    return __libc_realloc(p, n);
}
int posix_memalign(void **p, size_t align, size_t n)
{
    count();
    *p = __libc_memalign(align, n);
    return *p ? 0 : 12 /* ENOMEM */;
}
void *aligned_alloc(size_t align, size_t n)
{
    count();
    return __libc_memalign(align, n);
}
void *memalign(size_t align, size_t n)
{
    count();
    return __libc_memalign(align, n);
}

static nn_ctx ctx;
static nn_weights fx;

static int setup(void **s)
{
    nn_err e;
    fx_open(&fx, "teacher.safetensors");
    return nn_ctx_init(&ctx, 2, &e);
}

static int teardown(void **s)
{
    nn_weights_free(&fx);
    nn_ctx_free(&ctx);
    return 0;
}

static void ok(int rc, const nn_err *e)
{
    if (rc) {
        print_error("%s\n", e->msg);
        fail();
    }
}

static void open_teacher(pgn_teacher *t, const char *fixture)
{
    char path[256];
    nn_err e;
    snprintf(path, sizeof path, "tests/fixtures/%s", fixture);
    ok(pgn_teacher_open(t, path, 0, &e), &e);
    assert_int_equal(t->random, 0);
    assert_int_equal(strlen(t->weights_sha256), 64);
}

/* Loss and gradient of pair (x, y) against the fixture's, on the cached-target path. */
static void check_pair(pgn_teacher *t, const char *xs, const char *ys, const char *ls, const char *gs, int n, int h,
                       int w)
{
    nn_err e;
    size_t count = (size_t)n * 3 * h * w, nx;
    const float *x = fx_get(&fx, xs, &nx), *y = fx_get(&fx, ys, NULL), *want_l = fx_get(&fx, ls, NULL);
    const float *want_g = fx_get(&fx, gs, NULL);
    assert_int_equal(nx, count);
    double ps[4], total;
    float *g = malloc(count * sizeof(float));
    ok(pgn_teacher_set_target(&ctx, t, y, n, h, w, PGN_SPACE_NORMALISED, &e), &e);
    ok(pgn_teacher_loss_grad(&ctx, t, x, n, h, w, PGN_SPACE_NORMALISED, ps, &total, g, &e), &e);
    double sum = 0;
    for (int i = 0; i < n; i++) {
        double rel = fabs(ps[i] - want_l[i]) / fabs(want_l[i]);
        print_message("%s sample %d: loss %.8f, PyTorch %.8f, relative error %.2e\n", xs, i, ps[i], want_l[i], rel);
        assert_true(rel <= 1e-5);
        sum += ps[i];
    }
    assert_true(fabs(total - sum) <= 1e-9 * fabs(sum));
    /* the loss alone (taps read for it) and the loss the backward pass sums agree */
    double ps_only[4], total_only;
    ok(pgn_teacher_loss_grad(&ctx, t, x, n, h, w, PGN_SPACE_NORMALISED, ps_only, &total_only, NULL, &e), &e);
    for (int i = 0; i < n; i++)
        assert_true(fabs(ps_only[i] - ps[i]) <= 1e-12 * fabs(ps[i]));
    assert_true(fabs(total_only - total) <= 1e-12 * fabs(total));
    double gerr = fx_rel_err(g, want_g, count);
    print_message("%s gradient: max error / max |g| %.2e\n", xs, gerr);
    fx_expect_close("teacher gradient", g, want_g, count, 1e-4);
    free(g);
}

static void matches_torch(const char *fixture)
{
    pgn_teacher t;
    open_teacher(&t, fixture);
    check_pair(&t, "x", "y", "loss", "grad", 2, 64, 64);
    check_pair(&t, "x_odd", "y_odd", "loss_odd", "grad_odd", 1, 48, 80);
    pgn_teacher_close(&t);
}

static void legacy_state_dict_matches_torch(void **s) { matches_torch("teacher_vgg19_legacy.pth"); }
static void zip_state_dict_matches_torch(void **s) { matches_torch("teacher_vgg19_zip.pth"); }

/* A second call with a new x on the cached target equals the uncached pair call. */
static void cached_target_equals_uncached(void **s)
{
    nn_err e;
    pgn_teacher t;
    open_teacher(&t, "teacher_vgg19_legacy.pth");
    const int n = 2, h = 64, w = 64;
    size_t count = (size_t)n * 3 * h * w;
    const float *x = fx_get(&fx, "x", NULL), *y = fx_get(&fx, "y", NULL);
    float *x2 = malloc(count * 4), *g1 = malloc(count * 4), *g2 = malloc(count * 4);
    for (size_t i = 0; i < count; i++)
        x2[i] = 0.5f * (x[i] + y[i]);
    double l1[2], l2[2];
    ok(pgn_teacher_set_target(&ctx, &t, y, n, h, w, PGN_SPACE_NORMALISED, &e), &e);
    ok(pgn_teacher_loss_grad(&ctx, &t, x, n, h, w, PGN_SPACE_NORMALISED, NULL, NULL, g1, &e), &e);
    ok(pgn_teacher_loss_grad(&ctx, &t, x2, n, h, w, PGN_SPACE_NORMALISED, l1, NULL, g1, &e), &e);
    ok(pgn_teacher_loss_grad_pair(&ctx, &t, x2, y, n, h, w, PGN_SPACE_NORMALISED, l2, NULL, g2, &e), &e);
    for (int i = 0; i < n; i++)
        assert_true(l1[i] == l2[i]);
    assert_memory_equal(g1, g2, count * sizeof(float));
    free(x2), free(g1), free(g2);
    pgn_teacher_close(&t);
}

/* [0,1] and [-1,1] inputs give the same loss as their normalised image, and the gradient is the
 * normalised one divided by std (and by 2 for [-1,1]); checked by finite differences too. */
static void spaces_apply_the_chain_rule(void **s)
{
    nn_err e;
    pgn_teacher t;
    ok(pgn_teacher_open(&t, NULL, 3, &e), &e);
    assert_int_equal(t.random, 1);
    char d[256];
    assert_non_null(strstr(pgn_teacher_describe(&t, d, sizeof d), PGN_TEACHER_RANDOM_NOTE));
    const int n = 1, h = 32, w = 32;
    size_t count = (size_t)3 * h * w;
    float *u = malloc(count * 4), *yu = malloc(count * 4), *xn = malloc(count * 4), *yn = malloc(count * 4);
    float *pm = malloc(count * 4), *ypm = malloc(count * 4), *gn = malloc(count * 4), *gu = malloc(count * 4);
    float *gp = malloc(count * 4);
    nn_rng r;
    nn_rng_seed(&r, 11);
    for (size_t i = 0; i < count; i++) {
        u[i] = nn_rng_uniform(&r);
        yu[i] = nn_rng_uniform(&r);
        pm[i] = 2 * u[i] - 1;
        ypm[i] = 2 * yu[i] - 1;
    }
    pgn_to_normalised(xn, u, n, h, w, PGN_SPACE_UNIT);
    pgn_to_normalised(yn, yu, n, h, w, PGN_SPACE_UNIT);
    double ln, lu, lp;
    ok(pgn_teacher_loss_grad_pair(&ctx, &t, xn, yn, n, h, w, PGN_SPACE_NORMALISED, NULL, &ln, gn, &e), &e);
    ok(pgn_teacher_loss_grad_pair(&ctx, &t, u, yu, n, h, w, PGN_SPACE_UNIT, NULL, &lu, gu, &e), &e);
    ok(pgn_teacher_loss_grad_pair(&ctx, &t, pm, ypm, n, h, w, PGN_SPACE_PM1, NULL, &lp, gp, &e), &e);
    assert_true(fabs(lu - ln) <= 1e-5 * ln && fabs(lp - ln) <= 1e-5 * ln);
    float *want = malloc(count * 4);
    memcpy(want, gn, count * 4);
    pgn_grad_from_normalised(want, n, h, w, PGN_SPACE_UNIT);
    for (size_t i = 0; i < count; i++)
        assert_true(fabsf(want[i] - gn[i] / pgn_imagenet_std[i / (h * w)]) <= 1e-6f * fabsf(want[i]) + 1e-12f);
    fx_expect_close("[0,1] gradient", gu, want, count, 1e-5);
    for (size_t i = 0; i < count; i++)
        want[i] *= 0.5f;
    fx_expect_close("[-1,1] gradient", gp, want, count, 1e-5);
    /* Directional finite difference in [0,1] space along the gradient itself. */
    double eps = 1e-3, gg = 0;
    for (size_t i = 0; i < count; i++)
        gg += (double)gu[i] * gu[i];
    double scale = eps / sqrt(gg), lplus, lminus;
    float *xp = malloc(count * 4), *xm = malloc(count * 4);
    for (size_t i = 0; i < count; i++) {
        xp[i] = u[i] + (float)(scale * gu[i]);
        xm[i] = u[i] - (float)(scale * gu[i]);
    }
    ok(pgn_teacher_loss_grad(&ctx, &t, xp, n, h, w, PGN_SPACE_UNIT, NULL, &lplus, NULL, &e), &e);
    ok(pgn_teacher_loss_grad(&ctx, &t, xm, n, h, w, PGN_SPACE_UNIT, NULL, &lminus, NULL, &e), &e);
    double fd = (lplus - lminus) / (2 * eps), analytic = sqrt(gg);
    print_message("directional derivative: finite difference %.6e, gradient norm %.6e\n", fd, analytic);
    assert_true(fabs(fd - analytic) <= 0.02 * analytic);
    free(u), free(yu), free(xn), free(yn), free(pm), free(ypm), free(gn), free(gu), free(gp), free(want), free(xp),
        free(xm);
    pgn_teacher_close(&t);
}

static void refused(const char *fixture, const char *const *must_say, int n)
{
    char path[256];
    nn_err e;
    pgn_teacher t;
    snprintf(path, sizeof path, "tests/fixtures/%s", fixture);
    assert_int_equal(pgn_teacher_open(&t, path, 0, &e), -1);
    print_message("%s\n", e.msg);
    assert_non_null(strstr(e.msg, path));
    for (int i = 0; i < n; i++)
        if (!strstr(e.msg, must_say[i])) {
            print_error("message lacks '%s'\n", must_say[i]);
            fail();
        }
}

static void broken_weights_are_refused(void **s)
{
    const char *shape[] = {"features.5.weight has shape [128, 64, 5, 5], expected [128, 64, 3, 3]"};
    refused("teacher_vgg19_bad_shape.pth", shape, 1);
    const char *missing[] = {"missing key features.12.bias"};
    refused("teacher_vgg19_missing_key.pth", missing, 1);
    const char *unexpected[] = {"unexpected key features.99.weight"};
    refused("teacher_vgg19_unexpected_key.pth", unexpected, 1);
    const char *notvgg[] = {"missing key features.0.weight", "unexpected key"};
    refused("weights_sd_legacy.pth", notvgg, 2);
    const char *nofile[] = {"cannot open"};
    refused("does_not_exist.pth", nofile, 1);
    const char *notweights[] = {"not a weights file"};
    refused("README.md", notweights, 1);
}

/* After one warm-up call with the shapes, pgnd allocates nothing in a step (oneDNN's execute
 * call allocates its own small argument map each time; counted and printed, not asserted). */
static void steady_state_allocates_nothing(void **s)
{
    nn_err e;
    pgn_teacher t;
    ok(pgn_teacher_open(&t, NULL, 0, &e), &e);
    const int n = 2, h = 64, w = 64;
    size_t count = (size_t)n * 3 * h * w;
    float *x = malloc(count * 4), *y = malloc(count * 4), *g = malloc(count * 4);
    nn_rng r;
    nn_rng_seed(&r, 2);
    for (size_t i = 0; i < count; i++)
        x[i] = nn_rng_uniform(&r), y[i] = nn_rng_uniform(&r);
    double ps[2];
    ok(pgn_teacher_set_target(&ctx, &t, y, n, h, w, PGN_SPACE_UNIT, &e), &e);
    for (int i = 0; i < 2; i++)
        ok(pgn_teacher_loss_grad(&ctx, &t, x, n, h, w, PGN_SPACE_UNIT, ps, NULL, g, &e), &e);
    ours = onednn = 0;
    counting = 1;
    int rc = 0;
    for (int i = 0; i < 3 && !rc; i++)
        rc = pgn_teacher_loss_grad(&ctx, &t, x, n, h, w, PGN_SPACE_UNIT, ps, NULL, g, &e);
    counting = 0;
    ok(rc, &e);
    print_message("allocations in 3 steady-state calls: %ld by pgnd, %ld inside dnnl_primitive_execute\n", ours,
                  onednn);
    assert_int_equal(ours, 0);
    free(x), free(y), free(g);
    pgn_teacher_close(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(legacy_state_dict_matches_torch), cmocka_unit_test(zip_state_dict_matches_torch),
        cmocka_unit_test(cached_target_equals_uncached),   cmocka_unit_test(spaces_apply_the_chain_rule),
        cmocka_unit_test(broken_weights_are_refused),      cmocka_unit_test(steady_state_allocates_nothing),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
