/* The Deep Image Prior skip net (pgn/dip.h) against a PyTorch replica (tests/fixtures/dip*.safetensors,
 * written by tools/fixtures_dip.py; see tests/fixtures/README.md "dip_* and quality"):
 *   - parameter count (572,827), default init, key names and order;
 *   - train-mode forward at 1x3x128x128: output and BN running statistics within 1e-4 of max |value|;
 *   - every parameter gradient within 1e-4 of max |value|, with the LeakyReLU masks pinned to the
 *     float64 signs where PyTorch's pre-activation is within 5e-3 of zero (a float32 forward flips a
 *     few of those, and one flip moves gradients by up to ~4e-2); the 27 parameters whose exact
 *     gradient is zero are measured against their module's weight gradient. Unpinned, the relative
 *     L2 error of all gradients together must stay under 1e-1 (a wiring error gives O(1));
 *   - state-dict refusals (missing, mis-shaped, wrong dtype, unexpected keys; another file; no file);
 *   - size refusals; seeded noise; copying state; 20 Adam steps fitting an image with MSE.
 * DIP_VERBOSE=1 prints every parameter's error. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "nn/adam.h"
#include "pgn/dip.h"
#include "tests/unit/fixture.h"

#define TOL 1e-4

static void param_count_and_keys(void **state)
{
    (void)state;
    nn_err e;
    pgn_dip *d = calloc(1, sizeof *d);
    assert_non_null(d);
    fx_ok(pgn_dip_init(d, 7, &e), &e);
    assert_int_equal(pgn_dip_param_count(d), PGN_DIP_PARAM_COUNT);
    int n;
    const nn_param *p = pgn_dip_params(d, &n);
    assert_int_equal(n, PGN_DIP_PARAM_TENSORS);
    for (int i = 0; i < n; i++) {
        assert_non_null(p[i].value);
        assert_non_null(p[i].grad);
        assert_int_equal(p[i].value->numel, p[i].grad->numel);
    }
    /* PyTorch default init: conv weights within +-1/sqrt(fan_in), BN weight 1, bias 0. */
    const nn_conv2d *c = &d->lv[4].c_conv3; /* 132 -> 128, 3x3 */
    float bound = 1.0f / sqrtf(132 * 9), mx = 0;
    for (size_t i = 0; i < c->weight.numel; i++)
        mx = fmaxf(mx, fabsf(c->weight.data[i]));
    assert_true(mx <= bound && mx > 0.9f * bound);
    assert_true(d->lv[4].c_bn.gamma.data[0] == 1.0f && d->lv[4].c_bn.beta.data[0] == 0.0f);

    /* The module table gives exactly the fixture's keys, in the fixture's (state-dict) order. */
    nn_weights w;
    fx_open(&w, "dip_state.safetensors");
    assert_int_equal(w.count, PGN_DIP_STATE_KEYS);
    char report[256];
    assert_int_equal(pgn_dip_check_state(d, &w, report, sizeof report), 0);
    int k = 0;
    for (int m = 0; m < PGN_DIP_CONVS + PGN_DIP_BNS; m++) {
        int nsuf = d->mod[m].conv ? 2 : 5;
        for (int s = 0; s < nsuf; s++, k++) {
            size_t plen = strlen(d->mod[m].prefix);
            if (strncmp(w.entries[k].name, d->mod[m].prefix, plen) || w.entries[k].name[plen] != '.') {
                print_error("key %d: fixture %s, module %s\n", k, w.entries[k].name, d->mod[m].prefix);
                fail();
            }
        }
    }
    assert_string_equal(d->mod[0].prefix, "1.1.1");
    assert_string_equal(d->mod[PGN_DIP_CONVS + PGN_DIP_BNS - 1].prefix, "9.1");
    nn_weights_free(&w);
    pgn_dip_free(d);
    free(d);
}

/* Is `key` in the comma-separated list? */
static int in_list(const char *list, const char *key)
{
    size_t n = strlen(key);
    for (const char *p = list; p && *p;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == n && !strncmp(p, key, n))
            return 1;
        p = end ? end + 1 : NULL;
    }
    return 0;
}

static double max_abs(const float *a, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++)
        m = fmax(m, fabs((double)a[i]));
    return m;
}

/* The fixture's gradient of parameter `key`, decoded (I16 codes * scale), malloc'ed. */
static float *fixture_grad(const nn_weights *fx, const char *key, size_t numel)
{
    char name[96];
    snprintf(name, sizeof name, "grad.%s", key);
    const nn_weight_entry *t = nn_weights_find(fx, name);
    if (!t || t->dtype != NN_I16 || t->numel != numel) {
        print_error("fixture gradient %s missing or not I16 with %zu elements\n", name, numel);
        fail();
    }
    snprintf(name, sizeof name, "grad_scale.%s", key);
    const float scale = fx_get(fx, name, NULL)[0];
    float *g = malloc(numel * sizeof *g);
    assert_non_null(g);
    for (size_t i = 0; i < numel; i++)
        g[i] = (float)((const int16_t *)t->data)[i] * scale;
    return g;
}

/* Tensor `name` of any floating dtype as a malloc'ed float32 array. */
static float *load_f32(const nn_weights *fx, const char *name, size_t *numel)
{
    const nn_weight_entry *t = nn_weights_find(fx, name);
    if (!t) {
        print_error("fixture tensor %s missing\n", name);
        fail();
    }
    nn_tensor dst;
    nn_err e;
    fx_ok(nn_tensor_alloc(&dst, t->ndim, t->shape, &e), &e);
    fx_ok(nn_weights_get_f32(fx, name, &dst, &e), &e);
    if (numel)
        *numel = dst.numel;
    float *out = malloc(dst.numel * sizeof *out);
    assert_non_null(out);
    memcpy(out, dst.data, dst.numel * sizeof *out);
    nn_tensor_free(&dst);
    return out;
}

static const char *prefix_of(const pgn_dip *d, const nn_batchnorm2d *bn)
{
    for (int m = 0; m < PGN_DIP_CONVS + PGN_DIP_BNS; m++)
        if (d->mod[m].bn == bn)
            return d->mod[m].prefix;
    fail();
    return NULL;
}

/* Sets the stored LeakyReLU outputs (whose signs are their inputs': the backward reads them) at
 * the fixture's pinned elements (BN outputs near zero) to +-1e-20 with the float64 sign, so that
 * the backward uses PyTorch's float64 masks there. Returns how many of them the float32 forward
 * had on the other side of zero. */
static int pin_masks(nn_ctx *ctx, pgn_dip *d, const nn_weights *fx, int *pinned)
{
    int flips = 0;
    *pinned = 0;
    for (int i = 0; i < PGN_DIP_LEVELS; i++) {
        pgn_dip_level *L = &d->lv[i];
        const struct {
            nn_batchnorm2d *bn;
            int act;
        } taps[] = {{&L->s_bn, PGN_DIP_S_OUT},    {&L->d_bn1, PGN_DIP_D_ACT1}, {&L->d_bn2, PGN_DIP_D_ACT2},
                    {&L->c_bn3, PGN_DIP_C_ACT3}, {&L->c_bn1, PGN_DIP_OUT}};
        for (size_t k = L->skip ? 0 : 1; k < sizeof taps / sizeof *taps; k++) {
            flips += fx_pin(ctx, &L->act[taps[k].act], fx, prefix_of(d, taps[k].bn), pinned);
        }
    }
    return flips;
}

/* Compares every parameter gradient with the fixture's. Returns the worst max error / max |value|
 * (zero-gradient parameters apart, in *worst_zero); with tol > 0 fails above it. Also returns the
 * relative L2 error of all gradients together in *rel_l2. */
static double compare_grads(const pgn_dip *d, const nn_weights *fx, double tol, double *worst_zero, double *rel_l2,
                            const char **worst_key)
{
    /* The 27 parameters whose exact gradient is zero (a train-mode BN follows them and subtracts
     * the batch mean; listed in the fixture's "zero_grad") are measured against the gradient of
     * their module's weight instead of their own ~0 values. */
    const nn_weight_meta *zm = nn_weights_meta(fx, "zero_grad");
    assert_non_null(zm);
    int np, nzero = 0;
    const nn_param *p = pgn_dip_params(d, &np);
    double worst = 0, diff2 = 0, ref2 = 0;
    *worst_zero = 0;
    *worst_key = "";
    for (int i = 0; i < np; i++) {
        const pgn_dip_module *md = &d->mod[i / 2];
        char key[96];
        snprintf(key, sizeof key, "%s.%s", md->prefix, i % 2 ? "bias" : "weight");
        const size_t n = p[i].grad->numel;
        float *want = fixture_grad(fx, key, n);
        double err = 0, scale = max_abs(want, n);
        const int zero = in_list(zm->str, key);
        if (zero) {
            nzero++;
            char wkey[96];
            snprintf(wkey, sizeof wkey, "%s.weight", md->prefix);
            float *wg = fixture_grad(fx, wkey, p[i - 1].grad->numel);
            scale = max_abs(wg, p[i - 1].grad->numel);
            free(wg);
        }
        for (size_t j = 0; j < n; j++) {
            const double dj = (double)p[i].grad->data[j] - (double)want[j];
            err = fmax(err, fabs(dj));
            diff2 += dj * dj;
            ref2 += (double)want[j] * want[j];
        }
        err /= scale;
        if (getenv("DIP_VERBOSE"))
            print_message("%-35s %.3e\n", key, err);
        if (tol > 0 && !(err <= tol)) {
            print_error("gradient of %s: max error / max |value| = %.3g > %.3g\n", key, err, tol);
            fail();
        }
        if (zero)
            *worst_zero = fmax(*worst_zero, err);
        else if (err > worst) {
            worst = err;
            *worst_key = md->prefix;
        }
        free(want);
    }
    assert_int_equal(nzero, 27);
    *rel_l2 = sqrt(diff2 / ref2);
    return worst;
}

static void forward_backward_match_torch(void **state)
{
    (void)state;
    nn_err e;
    nn_ctx ctx;
    fx_ok(nn_ctx_init(&ctx, 0, &e), &e);
    pgn_dip *d = calloc(1, sizeof *d);
    assert_non_null(d);
    fx_ok(pgn_dip_init(d, 1, &e), &e);
    fx_ok(pgn_dip_load_file(d, "tests/fixtures/dip_state.safetensors", &e), &e);

    nn_weights fx, st;
    fx_open(&fx, "dip.safetensors");
    fx_open(&st, "dip_state.safetensors");
    const nn_weight_entry *xe = nn_weights_find(&fx, "x");
    assert_non_null(xe);
    assert_int_equal(xe->ndim, 4);
    const int h = (int)xe->shape[2], w = (int)xe->shape[3];
    size_t nx;
    float *x = load_f32(&fx, "x", &nx), *dy = load_f32(&fx, "dy", NULL);
    const float *y_want = fx_get(&fx, "y", NULL);
    assert_int_equal(nx, (size_t)3 * h * w);
    fx_ok(pgn_dip_set_input(&ctx, d, x, 1, h, w, &e), &e);
    float *y = malloc(nx * sizeof *y);
    assert_non_null(y);
    pgn_dip_zero_grad(d);
    fx_ok(pgn_dip_forward(&ctx, d, y, &e), &e);
    fx_expect_close("y", y, y_want, nx, TOL);
    print_message("%dx%d output: relative error %.3g (max |y| %.3f)\n", h, w, fx_rel_err(y, y_want, nx),
                  max_abs(y_want, nx));

    /* BN running statistics after one train-mode forward, and the batch counter. */
    double worst_stat = 0;
    for (int m = 0; m < PGN_DIP_CONVS + PGN_DIP_BNS; m++) {
        const nn_batchnorm2d *bn = d->mod[m].bn;
        if (!bn)
            continue;
        char name[96];
        snprintf(name, sizeof name, "after.%s.running_mean", d->mod[m].prefix);
        fx_expect_close(name, bn->running_mean.data, fx_get(&fx, name, NULL), (size_t)bn->c, TOL);
        worst_stat = fmax(worst_stat, fx_rel_err(bn->running_mean.data, fx_get(&fx, name, NULL), (size_t)bn->c));
        snprintf(name, sizeof name, "after.%s.running_var", d->mod[m].prefix);
        fx_expect_close(name, bn->running_var.data, fx_get(&fx, name, NULL), (size_t)bn->c, TOL);
        worst_stat = fmax(worst_stat, fx_rel_err(bn->running_var.data, fx_get(&fx, name, NULL), (size_t)bn->c));
        snprintf(name, sizeof name, "%s.num_batches_tracked", d->mod[m].prefix);
        const nn_weight_entry *t = nn_weights_find(&st, name);
        assert_non_null(t);
        assert_int_equal(bn->num_batches_tracked, *(const int64_t *)t->data + 1);
    }
    print_message("BN running statistics: max relative error %.3g\n", worst_stat);

    /* The gradients as they come, flipped LeakyReLU masks and all: reported, and held to a
     * loose bound on the relative L2 error of all gradients together. */
    fx_ok(pgn_dip_backward(&ctx, d, dy, &e), &e);
    double worst_zero, rel_l2;
    const char *worst_key;
    double worst = compare_grads(d, &fx, 0, &worst_zero, &rel_l2, &worst_key);
    print_message("unpinned: max relative error %.3g (%s), all gradients' relative L2 error %.3g\n", worst, worst_key,
                  rel_l2);
    assert_true(rel_l2 <= 1e-1); /* measured 7e-5 .. 1e-2; a wiring error gives O(1) */

    /* The same with the masks pinned at PyTorch's near-zero LeakyReLU inputs: every gradient
     * within 1e-4 of max |value|. */
    pgn_dip_zero_grad(d);
    fx_ok(pgn_dip_forward(&ctx, d, NULL, &e), &e);
    int pinned;
    const int flips = pin_masks(&ctx, d, &fx, &pinned);
    fx_ok(pgn_dip_backward(&ctx, d, dy, &e), &e);
    worst = compare_grads(d, &fx, TOL, &worst_zero, &rel_l2, &worst_key);
    print_message("pinned (%d masks pinned, %d of them flipped by the float32 forward): max relative error %.3g "
                  "(%s), relative L2 %.3g; zero-gradient parameters %.3g of their weight's gradient\n",
                  pinned, flips, worst, worst_key, rel_l2, worst_zero);

    free(x);
    free(dy);
    free(y);
    nn_weights_free(&fx);
    nn_weights_free(&st);
    pgn_dip_free(d);
    free(d);
    nn_ctx_free(&ctx);
}

static void rename_entry(nn_weights *w, const char *from, const char *to)
{
    for (int i = 0; i < w->count; i++)
        if (!strcmp(w->entries[i].name, from)) {
            free(w->entries[i].name);
            w->entries[i].name = strdup(to);
            return;
        }
    print_error("no entry %s\n", from);
    fail();
}

static void state_dict_refusals(void **state)
{
    (void)state;
    nn_err e;
    pgn_dip *d = calloc(1, sizeof *d);
    assert_non_null(d);
    fx_ok(pgn_dip_init(d, 3, &e), &e);
    const float w0 = d->lv[0].d_conv1.weight.data[0];

    nn_weights w;
    fx_open(&w, "dip_state.safetensors");
    rename_entry(&w, "1.7.1.7.1.7.2.bias", "1.7.1.7.1.7.2.bias_renamed");         /* missing + unexpected */
    rename_entry(&w, "4.num_batches_tracked", "4.num_batches");                    /* missing + unexpected */
    for (int i = 0; i < w.count; i++)
        if (!strcmp(w.entries[i].name, "1.7.1.7.3.1.weight"))
            w.entries[i].shape[1] = 65, w.entries[i].shape[2] = 1; /* [32, 64, 3, 3] -> [32, 65, 1, 3] */
    char report[2048];
    int problems = pgn_dip_check_state(d, &w, report, sizeof report);
    print_message("%s", report);
    assert_int_equal(problems, 5);
    assert_non_null(strstr(report, "missing key 1.7.1.7.1.7.2.bias\n"));
    assert_non_null(strstr(report, "missing key 4.num_batches_tracked\n"));
    assert_non_null(strstr(report, "key 1.7.1.7.3.1.weight has shape [32, 65, 1, 3], expected [32, 64, 3, 3]\n"));
    assert_non_null(strstr(report, "unexpected key 1.7.1.7.1.7.2.bias_renamed\n"));
    assert_non_null(strstr(report, "unexpected key 4.num_batches\n"));
    fx_expect_error(pgn_dip_load(d, &w, &e), &e, "tests/fixtures/dip_state.safetensors is not a DIP skip-net state dict");
    assert_non_null(strstr(e.msg, "(5 problems)"));
    assert_non_null(strstr(e.msg, "unexpected key 4.num_batches"));
    assert_true(d->lv[0].d_conv1.weight.data[0] == w0); /* nothing was loaded */
    nn_weights_free(&w);

    /* A wrong dtype. */
    fx_open(&w, "dip_state.safetensors");
    for (int i = 0; i < w.count; i++)
        if (!strcmp(w.entries[i].name, "2.weight"))
            w.entries[i].dtype = NN_I16; /* same byte count as the F16 it holds */
    problems = pgn_dip_check_state(d, &w, report, sizeof report);
    assert_int_equal(problems, 1);
    assert_non_null(strstr(report, "key 2.weight has dtype I16, expected a floating type"));
    nn_weights_free(&w);

    /* Another net's file, and a missing file: errors name the file. */
    fx_expect_error(pgn_dip_load_file(d, "tests/fixtures/quality.safetensors", &e), &e,
                 "tests/fixtures/quality.safetensors is not a DIP skip-net state dict");
    assert_non_null(strstr(e.msg, "missing key 1.1.1.weight"));
    fx_expect_error(pgn_dip_load_file(d, "tests/fixtures/no_such_dip.safetensors", &e), &e, "no_such_dip.safetensors");
    assert_true(d->lv[0].d_conv1.weight.data[0] == w0);
    pgn_dip_free(d);
    free(d);
}

static void size_refusals(void **state)
{
    (void)state;
    nn_err e;
    nn_ctx ctx;
    fx_ok(nn_ctx_init(&ctx, 0, &e), &e);
    pgn_dip *d = calloc(1, sizeof *d);
    assert_non_null(d);
    fx_ok(pgn_dip_init(d, 3, &e), &e);
    float *x = calloc(3 * 96 * 64, sizeof *x);
    assert_non_null(x);
    fx_expect_error(pgn_dip_forward(&ctx, d, NULL, &e), &e, "before pgn_dip_set_input");
    fx_expect_error(pgn_dip_set_input(&ctx, d, x, 1, 32, 32, &e), &e, "input 32x32 is not supported");
    fx_expect_error(pgn_dip_set_input(&ctx, d, x, 1, 64, 48, &e), &e, "multiples of 32");
    fx_expect_error(pgn_dip_set_input(&ctx, d, x, 1, 100, 64, &e), &e, "input 100x64");
    fx_expect_error(pgn_dip_set_input(&ctx, d, x, 1, 64, 32, &e), &e, "at least 64");
    /* A non-square size that is allowed: 96x64 (deepest level 3x2). */
    pgn_dip_noise(x, 3 * 96 * 64, 5);
    fx_ok(pgn_dip_set_input(&ctx, d, x, 1, 96, 64, &e), &e);
    fx_expect_error(pgn_dip_backward(&ctx, d, x, &e), &e, "backward without a forward");
    fx_ok(pgn_dip_forward(&ctx, d, NULL, &e), &e);
    assert_int_equal(d->y.h, 96);
    assert_int_equal(d->y.w, 64);
    assert_int_equal(d->y.c, 3);
    fx_ok(pgn_dip_backward(&ctx, d, x, &e), &e);
    free(x);
    pgn_dip_free(d);
    free(d);
    nn_ctx_free(&ctx);
}

static void noise_is_uniform_0_01(void **state)
{
    (void)state;
    enum { COUNT = 3 * 64 * 64 };
    float *a = malloc(COUNT * sizeof *a), *b = malloc(COUNT * sizeof *b);
    assert_non_null(a);
    assert_non_null(b);
    pgn_dip_noise(a, COUNT, 11);
    pgn_dip_noise(b, COUNT, 11);
    assert_memory_equal(a, b, COUNT * sizeof *a);
    double mean = 0, mn = 1, mx = 0;
    for (int i = 0; i < COUNT; i++) {
        mean += a[i];
        mn = fmin(mn, a[i]);
        mx = fmax(mx, a[i]);
    }
    mean /= COUNT;
    assert_true(mn >= 0 && mx < 0.1f && mx > 0.099 && mn < 0.001);
    assert_true(fabs(mean - 0.05) < 0.002);
    pgn_dip_noise(b, COUNT, 12);
    assert_true(memcmp(a, b, COUNT * sizeof *a) != 0);
    free(a);
    free(b);
}

/* Copying the state makes two differently-seeded nets compute the same output. */
static void copy_state_gives_identical_nets(void **state)
{
    (void)state;
    nn_err e;
    nn_ctx ctx;
    fx_ok(nn_ctx_init(&ctx, 0, &e), &e);
    pgn_dip *a = calloc(1, sizeof *a), *b = calloc(1, sizeof *b);
    assert_non_null(a);
    assert_non_null(b);
    fx_ok(pgn_dip_init(a, 100, &e), &e);
    fx_ok(pgn_dip_init(b, 200, &e), &e);
    enum { COUNT = 3 * 64 * 64 };
    float *x = malloc(COUNT * sizeof *x), *ya = malloc(COUNT * sizeof *ya), *yb = malloc(COUNT * sizeof *yb);
    assert_true(x && ya && yb);
    pgn_dip_noise(x, COUNT, 1);
    fx_ok(pgn_dip_set_input(&ctx, a, x, 1, 64, 64, &e), &e);
    fx_ok(pgn_dip_set_input(&ctx, b, x, 1, 64, 64, &e), &e);
    fx_ok(pgn_dip_forward(&ctx, a, ya, &e), &e);
    fx_ok(pgn_dip_forward(&ctx, b, yb, &e), &e);
    assert_true(fx_rel_err(yb, ya, COUNT) > 0.1);
    pgn_dip_copy_state(b, a);
    fx_ok(pgn_dip_forward(&ctx, a, ya, &e), &e);
    fx_ok(pgn_dip_forward(&ctx, b, yb, &e), &e);
    assert_memory_equal(ya, yb, COUNT * sizeof *ya);
    free(x);
    free(ya);
    free(yb);
    pgn_dip_free(a);
    pgn_dip_free(b);
    free(a);
    free(b);
    nn_ctx_free(&ctx);
}

/* 20 Adam steps (lr 0.01, as §5.1) fitting a 64x64 image with MSE reduce the loss. */
static void adam_fits_an_image(void **state)
{
    (void)state;
    nn_err e;
    nn_ctx ctx;
    fx_ok(nn_ctx_init(&ctx, 0, &e), &e);
    pgn_dip *d = calloc(1, sizeof *d);
    assert_non_null(d);
    fx_ok(pgn_dip_init(d, 42, &e), &e);
    enum { H = 64, W = 64, COUNT = 3 * H * W };
    float *x = malloc(COUNT * sizeof *x), *t = malloc(COUNT * sizeof *t);
    assert_true(x && t);
    pgn_dip_noise(x, COUNT, 43);
    for (int c = 0; c < 3; c++) /* a smooth colour pattern in [0, 1] */
        for (int i = 0; i < H; i++)
            for (int j = 0; j < W; j++)
                t[(c * H + i) * W + j] = 0.5f + 0.4f * sinf(0.1f * (float)(i + 2 * c) + 0.07f * (float)j * (float)(c + 1));
    fx_ok(pgn_dip_set_input(&ctx, d, x, 1, H, W, &e), &e);
    nn_act target = {0}, dy = {0};
    fx_act_from(&ctx, &target, t, 1, 3, H, W);
    int np;
    const nn_param *p = pgn_dip_params(d, &np);
    nn_adam opt;
    fx_ok(nn_adam_init(&opt, p, np, 0.01f, 0.9f, 0.999f, 1e-8f, 0.0f, &e), &e);
    double first = 0, last = 0, best = INFINITY;
    for (int k = 0; k < 20; k++) {
        pgn_dip_zero_grad(d);
        fx_ok(pgn_dip_forward(&ctx, d, NULL, &e), &e);
        double loss;
        fx_ok(nn_mse_loss(&ctx, &d->y, &target, &loss, NULL, &e), &e);
        nn_act_grad_reset(&dy);
        fx_ok(nn_mse_loss_backward(&ctx, &d->y, &target, 1.0f, &dy, &e), &e);
        fx_ok(pgn_dip_backward_act(&ctx, d, &dy, &e), &e);
        nn_adam_step(&opt);
        assert_true(isfinite(loss));
        if (k == 0)
            first = loss;
        last = loss;
        best = fmin(best, loss);
    }
    print_message("MSE fit: loss %.4f at step 1, %.4f at step 20 (best %.4f)\n", first, last, best);
    assert_true(last < 0.5 * first);
    nn_adam_free(&opt);
    nn_act_free(&target);
    nn_act_free(&dy);
    free(x);
    free(t);
    pgn_dip_free(d);
    free(d);
    nn_ctx_free(&ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(param_count_and_keys),
        cmocka_unit_test(forward_backward_match_torch),
        cmocka_unit_test(state_dict_refusals),
        cmocka_unit_test(size_refusals),
        cmocka_unit_test(noise_is_uniform_0_01),
        cmocka_unit_test(copy_state_gives_identical_nets),
        cmocka_unit_test(adam_fits_an_image),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
