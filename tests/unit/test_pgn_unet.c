/* The PGN UNet (pgn/pgn_unet.h) against a PyTorch replica (tests/fixtures/pgn_unet*, written by
 * tools/fixtures_pgn_unet.py; see tests/fixtures/README.md "pgn_unet_*"):
 *   - parameter count (1,765,891), 88 tensors, default init, key names and order;
 *   - the legacy-layout state dict (strided views) loads;
 *   - eval-mode forward (running statistics) and train-mode forward (batch statistics) at
 *     2x6x64x64: max error / max |value| <= 1e-4; BN running statistics after the train forward;
 *   - every parameter gradient at the fixture's sampled elements within 1e-4 of the full tensor's
 *     max |g|, and each tensor's L2 norm within 1e-4, with the ReLU masks pinned to the float64
 *     signs where PyTorch's ReLU input is within 2e-3 of zero (tests/unit/test_dip.c's trick; a
 *     float32 forward could flip one); unpinned, the relative L2 error must stay under 1e-2;
 *   - state-dict refusals (missing, mis-shaped, unexpected keys; another net's file);
 *   - size refusals (48x48, train mode at 32x32 with batch 1) and a 32x64 forward/backward;
 *   - the params list drives nn_adam (a few steps reduce an MSE).
 * UNET_VERBOSE=1 prints every parameter's error. */
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
#include "pgn/pgn_unet.h"
#include "tests/unit/fixture.h"

#define TOL 1e-4
#define STATE "tests/fixtures/pgn_unet_legacy.pth"

static pgn_unet *new_unet(uint64_t seed)
{
    nn_err e;
    pgn_unet *u = calloc(1, sizeof *u);
    assert_non_null(u);
    fx_ok(pgn_unet_init(u, seed, &e), &e);
    return u;
}

static void del_unet(pgn_unet *u)
{
    pgn_unet_free(u);
    free(u);
}

/* The key of parameter tensor i (state-dict order). */
static void param_key(const pgn_unet *u, int i, char *key, size_t len)
{
    int np = 0;
    for (int m = 0; m < PGN_UNET_MODULES; m++) {
        const pgn_unet_module *md = &u->mod[m];
        int nt = md->bn ? 2 : (md->conv->geo.has_bias ? 2 : 1);
        if (i < np + nt) {
            snprintf(key, len, "%s.%s", md->prefix, i - np ? "bias" : "weight");
            return;
        }
        np += nt;
    }
    fail();
}

static void param_count_and_keys(void **state)
{
    (void)state;
    pgn_unet *u = new_unet(7);
    assert_int_equal(pgn_unet_param_count(u), PGN_UNET_PARAM_COUNT);
    assert_int_equal(pgn_unet_param_count(u), 1765891);
    int n;
    const nn_param *p = pgn_unet_params(u, &n);
    assert_int_equal(n, PGN_UNET_PARAM_TENSORS);
    for (int i = 0; i < n; i++) {
        assert_non_null(p[i].value);
        assert_non_null(p[i].grad);
        assert_int_equal(p[i].value->numel, p[i].grad->numel);
    }
    /* PyTorch default init: conv weights within +-1/sqrt(fan_in), BN weight 1, bias 0. */
    const nn_conv2d *c = &u->sep[PGN_UNET_SEP_UP0].c0; /* 320 -> 128, groups 64: fan_in 45 */
    assert_int_equal(c->weight.shape[1], 5);
    float bound = 1.0f / sqrtf(45), mx = 0;
    for (size_t i = 0; i < c->weight.numel; i++)
        mx = fmaxf(mx, fabsf(c->weight.data[i]));
    assert_true(mx <= bound && mx > 0.9f * bound);
    assert_true(u->blk[2].bn1.gamma.data[0] == 1.0f && u->blk[2].bn1.beta.data[0] == 0.0f);

    /* The legacy state dict's keys, in order, are exactly the module table's. */
    nn_weights w;
    nn_err e;
    fx_ok(nn_weights_read(&w, STATE, &e), &e);
    assert_int_equal(w.count, PGN_UNET_STATE_KEYS);
    char report[256];
    assert_int_equal(pgn_unet_check_state(u, &w, report, sizeof report), 0);
    int k = 0;
    for (int m = 0; m < PGN_UNET_MODULES; m++) {
        int nsuf = u->mod[m].bn ? 5 : (u->mod[m].conv->geo.has_bias ? 2 : 1);
        for (int s = 0; s < nsuf; s++, k++) {
            size_t plen = strlen(u->mod[m].prefix);
            if (strncmp(w.entries[k].name, u->mod[m].prefix, plen) || w.entries[k].name[plen] != '.') {
                print_error("key %d: file %s, module %s\n", k, w.entries[k].name, u->mod[m].prefix);
                fail();
            }
        }
    }
    assert_int_equal(k, PGN_UNET_STATE_KEYS);
    assert_string_equal(u->mod[0].prefix, "layer0.0");
    assert_string_equal(u->mod[PGN_UNET_MODULES - 1].prefix, "conv_last");
    /* The params list follows the keys (buffers skipped). */
    char key[96];
    param_key(u, 0, key, sizeof key);
    assert_string_equal(key, "layer0.0.weight");
    param_key(u, n - 1, key, sizeof key);
    assert_string_equal(key, "conv_last.bias");
    nn_weights_free(&w);
    del_unet(u);
}

static double max_abs(const float *a, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++)
        m = fmax(m, fabs((double)a[i]));
    return m;
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

/* Overwrites what each ReLU's backward reads (its input, or for the seps' its output) at the
 * fixture's pinned elements whose float32 sign differs from float64's with +-1e-20 of the float64
 * sign. The ReLUs inside batch norms keep their mask in oneDNN's workspace: there a difference
 * fails the test. Returns the number of elements the float32 forward had on the other side of zero. */
static int pin_masks(nn_ctx *ctx, pgn_unet *u, const nn_weights *fx, int *pinned)
{
    int flips = 0;
    *pinned = 0;
    for (int i = 0; i < PGN_UNET_RELUS; i++) {
        const char *rname;
        nn_act *a = pgn_unet_relu_input(u, i, &rname);
        const int f = fx_pin(ctx, a, fx, rname, pinned);
        if (f && pgn_unet_relu_mask_fixed(u, i)) { /* a mask inside a batch norm: not pinnable */
            print_error("%s: %d float32 ReLU decisions differ from float64's, and its mask cannot be pinned\n", rname, f);
            fail();
        }
        flips += f;
    }
    return flips;
}

/* Compares every parameter gradient with the fixture's samples (relative to the full tensor's
 * max |g|, i.e. 32767 * scale) and L2 norms. Returns the worst sample error; *worst_l2 the worst
 * relative L2-norm error; *rel_l2 the relative L2 error of all samples together. tol > 0: fail
 * above it. */
static double compare_grads(const pgn_unet *u, const nn_weights *fx, double tol, double *worst_l2, double *rel_l2,
                            const char **worst_key)
{
    static char wk[96];
    int np;
    const nn_param *p = pgn_unet_params(u, &np);
    double worst = 0, diff2 = 0, ref2 = 0;
    *worst_l2 = 0;
    *worst_key = "";
    for (int i = 0; i < np; i++) {
        char key[96], name[128];
        param_key(u, i, key, sizeof key);
        snprintf(name, sizeof name, "gidx.%s", key);
        const nn_weight_entry *ix = nn_weights_find(fx, name);
        snprintf(name, sizeof name, "grad.%s", key);
        const nn_weight_entry *gc = nn_weights_find(fx, name);
        if (!ix || !gc || ix->dtype != NN_I32 || gc->dtype != NN_I16 || ix->numel != gc->numel) {
            print_error("fixture gradient %s missing or malformed\n", key);
            fail();
        }
        snprintf(name, sizeof name, "grad_scale.%s", key);
        const double scale = fx_get(fx, name, NULL)[0], gmax = 32767.0 * scale;
        snprintf(name, sizeof name, "grad_l2.%s", key);
        const double l2_want = fx_get(fx, name, NULL)[0];
        const float *g = p[i].grad->data;
        const size_t n = p[i].grad->numel;
        double err = 0, l2 = 0;
        for (size_t j = 0; j < ix->numel; j++) {
            const int32_t at = ((const int32_t *)ix->data)[j];
            assert_true(at >= 0 && (size_t)at < n);
            const double want = ((const int16_t *)gc->data)[j] * scale, dj = (double)g[at] - want;
            err = fmax(err, fabs(dj));
            diff2 += dj * dj;
            ref2 += want * want;
        }
        for (size_t j = 0; j < n; j++)
            l2 += (double)g[j] * g[j];
        err /= gmax;
        const double l2_err = fabs(sqrt(l2) - l2_want) / l2_want;
        /* the max over the full tensor (the fixture's sample includes its arg-max) */
        const double max_err = fabs(max_abs(g, n) - gmax) / gmax;
        if (getenv("UNET_VERBOSE"))
            print_message("%-32s samples %.3e  L2 %.3e  max %.3e\n", key, err, l2_err, max_err);
        if (tol > 0 && !(err <= tol && l2_err <= tol && max_err <= tol)) {
            print_error("gradient of %s: sample error %.3g, L2-norm error %.3g, max error %.3g (> %.3g)\n", key, err,
                        l2_err, max_err, tol);
            fail();
        }
        *worst_l2 = fmax(*worst_l2, l2_err);
        if (err > worst) {
            worst = err;
            snprintf(wk, sizeof wk, "%s", key);
            *worst_key = wk;
        }
    }
    *rel_l2 = sqrt(diff2 / ref2);
    return worst;
}

static void forward_backward_match_torch(void **state)
{
    (void)state;
    nn_err e;
    nn_ctx ctx;
    fx_ok(nn_ctx_init(&ctx, 0, &e), &e);
    pgn_unet *u = new_unet(1);
    fx_ok(pgn_unet_load_file(u, STATE, &e), &e);
    nn_weights fx, st;
    fx_open(&fx, "pgn_unet.safetensors");
    fx_ok(nn_weights_read(&st, STATE, &e), &e);

    const nn_weight_entry *xe = nn_weights_find(&fx, "x");
    assert_non_null(xe);
    assert_int_equal(xe->ndim, 4);
    assert_int_equal(xe->shape[1], 6);
    const int n = (int)xe->shape[0], h = (int)xe->shape[2], w = (int)xe->shape[3];
    size_t nx, no;
    float *x = load_f32(&fx, "x", &nx), *dy = load_f32(&fx, "dy", &no);
    assert_int_equal(no, (size_t)n * 3 * h * w);
    float *o = malloc(no * sizeof *o);
    assert_non_null(o);

    /* Eval mode, the file's running statistics. */
    pgn_unet_set_training(u, 0);
    fx_ok(pgn_unet_forward(&ctx, u, x, n, h, w, o, &e), &e);
    const float *o_eval = fx_get(&fx, "o_eval", NULL);
    fx_expect_close("o_eval", o, o_eval, no, TOL);
    print_message("eval output: relative error %.3g (max |o| %.2f)\n", fx_rel_err(o, o_eval, no), max_abs(o_eval, no));
    fx_expect_error(pgn_unet_backward(&ctx, u, dy, &e), &e, "backward without a train-mode forward");
    for (int m = 0; m < PGN_UNET_MODULES; m++) /* eval leaves the running statistics alone */
        if (u->mod[m].bn) {
            char name[96];
            snprintf(name, sizeof name, "%s.running_var", u->mod[m].prefix);
            const nn_weight_entry *t = nn_weights_find(&st, name);
            assert_non_null(t);
            nn_tensor tv;
            fx_ok(nn_tensor_alloc1(&tv, u->mod[m].bn->c, &e), &e);
            fx_ok(nn_weights_get_f32(&st, name, &tv, &e), &e);
            assert_memory_equal(tv.data, u->mod[m].bn->running_var.data, tv.numel * sizeof(float));
            nn_tensor_free(&tv);
        }

    /* Train mode: batch statistics. */
    pgn_unet_set_training(u, 1);
    pgn_unet_zero_grad(u);
    fx_ok(pgn_unet_forward(&ctx, u, x, n, h, w, o, &e), &e);
    const float *o_want = fx_get(&fx, "o", NULL);
    fx_expect_close("o", o, o_want, no, TOL);
    print_message("train output: relative error %.3g (max |o| %.2f)\n", fx_rel_err(o, o_want, no), max_abs(o_want, no));

    double worst_stat = 0;
    int nbn = 0;
    for (int m = 0; m < PGN_UNET_MODULES; m++) {
        const nn_batchnorm2d *bn = u->mod[m].bn;
        if (!bn)
            continue;
        nbn++;
        char name[96];
        const char *stat[2] = {"running_mean", "running_var"};
        const nn_tensor *have[2] = {&bn->running_mean, &bn->running_var};
        for (int s = 0; s < 2; s++) {
            snprintf(name, sizeof name, "after.%s.%s", u->mod[m].prefix, stat[s]);
            const float *want = fx_get(&fx, name, NULL);
            fx_expect_close(name, have[s]->data, want, (size_t)bn->c, TOL);
            worst_stat = fmax(worst_stat, fx_rel_err(have[s]->data, want, (size_t)bn->c));
        }
        snprintf(name, sizeof name, "%s.num_batches_tracked", u->mod[m].prefix);
        const nn_weight_entry *t = nn_weights_find(&st, name);
        assert_non_null(t);
        assert_int_equal(t->dtype, NN_I64);
        assert_int_equal(bn->num_batches_tracked, *(const int64_t *)t->data + 1);
    }
    assert_int_equal(nbn, 9);
    print_message("BN running statistics: max relative error %.3g\n", worst_stat);

    /* Gradients as they come. */
    fx_ok(pgn_unet_backward(&ctx, u, dy, &e), &e);
    double worst_l2, rel_l2;
    const char *worst_key;
    double worst = compare_grads(u, &fx, 0, &worst_l2, &rel_l2, &worst_key);
    print_message("unpinned: max sample error %.3g (%s), L2 norms %.3g, relative L2 of all samples %.3g\n", worst,
                  worst_key, worst_l2, rel_l2);
    assert_true(rel_l2 <= 1e-2);

    /* Pinned masks: every gradient within 1e-4. */
    pgn_unet_zero_grad(u);
    fx_ok(pgn_unet_forward(&ctx, u, x, n, h, w, NULL, &e), &e);
    int pinned;
    const int flips = pin_masks(&ctx, u, &fx, &pinned);
    fx_ok(pgn_unet_backward(&ctx, u, dy, &e), &e);
    assert_false(u->dec_g[4].valid); /* the fused path: the last sep's gradient went through its ReLU */
    worst = compare_grads(u, &fx, TOL, &worst_l2, &rel_l2, &worst_key);
    print_message("pinned (%d masks, %d flipped by the float32 forward): max sample error %.3g (%s), L2 norms %.3g\n",
                  pinned, flips, worst, worst_key, worst_l2);

    /* A second backward accumulates: twice the gradients. */
    const float g0 = u->params[0].grad->data[5];
    fx_ok(pgn_unet_backward(&ctx, u, dy, &e), &e);
    assert_true(fabsf(u->params[0].grad->data[5] - 2 * g0) <= 1e-5f * fabsf(g0) + 1e-30f);

    /* The separate steps (fused kernels off: conv_last's backward, the upsamplings') too. */
    nn_fused_set_enabled(0);
    pgn_unet_zero_grad(u);
    fx_ok(pgn_unet_forward(&ctx, u, x, n, h, w, NULL, &e), &e);
    pin_masks(&ctx, u, &fx, &pinned);
    fx_ok(pgn_unet_backward(&ctx, u, dy, &e), &e);
    nn_fused_set_enabled(-1);
    assert_true(u->dec_g[4].valid && u->skip_g[4].valid); /* the two-step path ran */
    worst = compare_grads(u, &fx, TOL, &worst_l2, &rel_l2, &worst_key);
    print_message("pinned, two-step backward: max sample error %.3g (%s)\n", worst, worst_key);

    free(x);
    free(dy);
    free(o);
    nn_weights_free(&fx);
    nn_weights_free(&st);
    del_unet(u);
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
    pgn_unet *u = new_unet(3);
    const float w0 = u->l0_conv.weight.data[0];

    nn_weights w;
    fx_ok(nn_weights_read(&w, STATE, &e), &e);
    rename_entry(&w, "layer3.c1.weight", "layer3.c2.weight");                       /* missing + unexpected */
    rename_entry(&w, "layer2.bn1.num_batches_tracked", "layer2.bn1.num_batches");    /* missing + unexpected */
    for (int i = 0; i < w.count; i++)
        if (!strcmp(w.entries[i].name, "conv_up1.0.weight"))
            w.entries[i].shape[1] = 1, w.entries[i].shape[2] = 15; /* [256, 5, 3, 3] -> [256, 1, 15, 3] */
    char report[2048];
    int problems = pgn_unet_check_state(u, &w, report, sizeof report);
    print_message("%s", report);
    assert_int_equal(problems, 5);
    assert_non_null(strstr(report, "missing key layer3.c1.weight\n"));
    assert_non_null(strstr(report, "missing key layer2.bn1.num_batches_tracked\n"));
    assert_non_null(strstr(report, "key conv_up1.0.weight has shape [256, 1, 15, 3], expected [256, 5, 3, 3]\n"));
    assert_non_null(strstr(report, "unexpected key layer3.c2.weight\n"));
    assert_non_null(strstr(report, "unexpected key layer2.bn1.num_batches\n"));
    fx_expect_error(pgn_unet_load(u, &w, &e), &e, STATE " is not a PGN UNet state dict (5 problems)");
    assert_non_null(strstr(e.msg, "missing key layer3.c1.weight;"));
    assert_non_null(strstr(e.msg, "unexpected key layer2.bn1.num_batches"));
    assert_true(u->l0_conv.weight.data[0] == w0); /* nothing was loaded */
    nn_weights_free(&w);

    /* A wrong dtype. */
    fx_ok(nn_weights_read(&w, STATE, &e), &e);
    for (int i = 0; i < w.count; i++)
        if (!strcmp(w.entries[i].name, "layer4.bn2.num_batches_tracked"))
            w.entries[i].dtype = NN_BOOL;
    problems = pgn_unet_check_state(u, &w, report, sizeof report);
    assert_int_equal(problems, 1);
    assert_non_null(strstr(report, "key layer4.bn2.num_batches_tracked has dtype BOOL, expected an integer"));
    nn_weights_free(&w);

    /* Another net's file (the DIP's), and a missing file: errors name the file. */
    fx_expect_error(pgn_unet_load_file(u, "tests/fixtures/dip_state.safetensors", &e), &e,
                 "tests/fixtures/dip_state.safetensors is not a PGN UNet state dict");
    assert_non_null(strstr(e.msg, "missing key layer0.0.weight"));
    assert_non_null(strstr(e.msg, "(296 problems)")); /* 115 missing + 181 unexpected */
    fx_expect_error(pgn_unet_load_file(u, "tests/fixtures/no_such_unet.pth", &e), &e, "no_such_unet.pth");
    assert_true(u->l0_conv.weight.data[0] == w0);
    del_unet(u);
}

static void size_refusals(void **state)
{
    (void)state;
    nn_err e;
    nn_ctx ctx;
    fx_ok(nn_ctx_init(&ctx, 0, &e), &e);
    pgn_unet *u = new_unet(5);
    enum { N = 1, H = 32, W = 64 };
    float *x = calloc(6 * 48 * 64, sizeof *x), *dy = calloc(3 * 48 * 64, sizeof *dy);
    assert_true(x && dy);
    fx_expect_error(pgn_unet_forward(&ctx, u, x, 1, 48, 48, NULL, &e), &e,
                 "input 48x48 is not supported: height and width must be positive multiples of 32");
    fx_expect_error(pgn_unet_forward(&ctx, u, x, 1, 64, 48, NULL, &e), &e, "input 64x48");
    fx_expect_error(pgn_unet_check_size(100, 64, &e), &e, "multiples of 32");
    fx_expect_error(pgn_unet_forward(&ctx, u, x, 1, 32, 32, NULL, &e), &e, "deepest batch norm");
    fx_expect_error(pgn_unet_backward(&ctx, u, dy, &e), &e, "backward without a train-mode forward");
    /* Eval mode runs at 32x32 with batch 1; train mode at 32x64 (deepest level 1x2). */
    pgn_unet_set_training(u, 0);
    fx_ok(pgn_unet_forward(&ctx, u, x, 1, 32, 32, NULL, &e), &e);
    pgn_unet_set_training(u, 1);
    for (int i = 0; i < 6 * H * W; i++)
        x[i] = (float)((i * 37) % 101) / 101.0f;
    for (int i = 0; i < 3 * H * W; i++)
        dy[i] = (float)((i * 53) % 97) / 97.0f - 0.5f;
    fx_ok(pgn_unet_forward(&ctx, u, x, N, H, W, NULL, &e), &e);
    assert_int_equal(u->out.n, N);
    assert_int_equal(u->out.c, 3);
    assert_int_equal(u->out.h, H);
    assert_int_equal(u->out.w, W);
    pgn_unet_zero_grad(u);
    fx_ok(pgn_unet_backward(&ctx, u, dy, &e), &e);
    assert_true(nn_grad_norm(u->params, PGN_UNET_PARAM_TENSORS) > 0);
    free(x);
    free(dy);
    del_unet(u);
    nn_ctx_free(&ctx);
}

/* The pair entry point gives the same output as the concatenated NCHW input; a few Adam steps on
 * the params list reduce an MSE toward a fixed target. */
static void pair_input_and_adam(void **state)
{
    (void)state;
    nn_err e;
    nn_ctx ctx;
    fx_ok(nn_ctx_init(&ctx, 0, &e), &e);
    pgn_unet *u = new_unet(42);
    enum { N = 2, H = 32, W = 32, HW = H * W };
    float *x = malloc(N * 6 * HW * sizeof *x), *a = malloc(N * 3 * HW * sizeof *a), *b = malloc(N * 3 * HW * sizeof *b);
    float *o1 = malloc(N * 3 * HW * sizeof *o1), *o2 = malloc(N * 3 * HW * sizeof *o2);
    assert_true(x && a && b && o1 && o2);
    for (int i = 0; i < N * 3 * HW; i++) {
        a[i] = 0.5f + 0.4f * sinf(0.013f * (float)i);
        b[i] = 0.5f + 0.4f * cosf(0.007f * (float)i);
    }
    for (int n = 0; n < N; n++) {
        memcpy(x + (size_t)n * 6 * HW, a + (size_t)n * 3 * HW, 3 * HW * sizeof *x);
        memcpy(x + (size_t)n * 6 * HW + 3 * HW, b + (size_t)n * 3 * HW, 3 * HW * sizeof *x);
    }
    nn_act aa = {0}, ab = {0}, target = {0}, dy = {0};
    fx_act_from(&ctx, &aa, a, N, 3, H, W);
    fx_act_from(&ctx, &ab, b, N, 3, H, W);
    pgn_unet_set_training(u, 0); /* no running-statistics drift between the two forwards */
    fx_ok(pgn_unet_forward(&ctx, u, x, N, H, W, o1, &e), &e);
    fx_ok(pgn_unet_forward_pair(&ctx, u, &aa, &ab, &e), &e);
    fx_ok(nn_act_to_nchw(&ctx, &u->out, o2, &e), &e);
    assert_memory_equal(o1, o2, N * 3 * HW * sizeof *o1);
    fx_expect_error(pgn_unet_forward_pair(&ctx, u, &aa, &u->x, &e), &e, "not two matching RGB batches");

    pgn_unet_set_training(u, 1);
    fx_act_from(&ctx, &target, b, N, 3, H, W);
    int np;
    const nn_param *p = pgn_unet_params(u, &np);
    nn_adam opt;
    fx_ok(nn_adam_init(&opt, p, np, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f, &e), &e);
    double first = 0, last = 0;
    for (int k = 0; k < 8; k++) {
        pgn_unet_zero_grad(u);
        fx_ok(pgn_unet_forward_pair(&ctx, u, &aa, &ab, &e), &e);
        double loss;
        fx_ok(nn_mse_loss(&ctx, &u->out, &target, &loss, NULL, &e), &e);
        nn_act_grad_reset(&dy);
        fx_ok(nn_mse_loss_backward(&ctx, &u->out, &target, 1.0f, &dy, &e), &e);
        fx_ok(pgn_unet_backward_act(&ctx, u, &dy, &e), &e);
        nn_adam_step(&opt);
        assert_true(isfinite(loss));
        if (k == 0)
            first = loss;
        last = loss;
    }
    print_message("MSE fit: loss %.4f at step 1, %.4f at step 8\n", first, last);
    assert_true(last < 0.75 * first); /* measured 0.415 -> 0.272 */
    nn_adam_free(&opt);
    nn_act_free(&aa);
    nn_act_free(&ab);
    nn_act_free(&target);
    nn_act_free(&dy);
    free(x);
    free(a);
    free(b);
    free(o1);
    free(o2);
    del_unet(u);
    nn_ctx_free(&ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(param_count_and_keys),
        cmocka_unit_test(forward_backward_match_torch),
        cmocka_unit_test(state_dict_refusals),
        cmocka_unit_test(size_refusals),
        cmocka_unit_test(pair_input_and_adam),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
