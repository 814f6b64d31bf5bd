/* The PGN-training autoencoders (pgn/autoencoder.h) against a PyTorch replica
 * (tests/fixtures/autoencoder<L>*, written by tools/fixtures_autoencoder.py), for max_layer 0, 1, 2:
 *   - parameter counts (54,019 / 111,491 / 408,195), tensors, state-dict keys in order;
 *   - the legacy-layout state dicts (strided views) load;
 *   - eval- and train-mode forward at 2x3x32x32: max error / max |value| <= 1e-4; BN running
 *     statistics after the train forward;
 *   - every parameter gradient at the fixture's sampled elements within 1e-4 of the full tensor's
 *     max |g|, and each tensor's L2 norm within 1e-4, with the ReLU masks pinned to the float64
 *     signs near zero; unpinned, the relative L2 error must stay under 1e-2;
 *   - pgn_autoencoder_reset re-initialises every conv and BN (PyTorch default init), keeps shapes,
 *     the params list and gradients; the net still runs;
 *   - in bf16 (pgn_autoencoder_set_bf16, the collect's default where the CPU has bf16 kernels): the
 *     train-mode output within 3e-2 and the gradients' relative L2 error within 1e-1 of the same
 *     fixtures;
 *   - refusals (max_layer 3, sizes, another max_layer's state dict), and nn_adam on the params.
 * AE_VERBOSE=1 prints every parameter's error. */
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
#include "nn/rng.h"
#include "nn/upsample_dwconv.h"
#include "pgn/autoencoder.h"
#include "tests/unit/fixture.h"

#define TOL 1e-4

static void state_path(int L, char *buf, size_t len)
{
    snprintf(buf, len, "tests/fixtures/autoencoder%d_legacy.pth", L);
}

static pgn_autoencoder *new_ae(int L, uint64_t seed)
{
    nn_err e;
    pgn_autoencoder *ae = calloc(1, sizeof *ae);
    assert_non_null(ae);
    fx_ok(pgn_autoencoder_init(ae, L, seed, &e), &e);
    return ae;
}

static void del_ae(pgn_autoencoder *ae)
{
    pgn_autoencoder_free(ae);
    free(ae);
}

static void param_key(const pgn_autoencoder *ae, int i, char *key, size_t len)
{
    int np = 0;
    for (int m = 0; m < ae->nmod; m++) {
        const pgn_module *md = &ae->mod[m];
        int nt = md->bn ? 2 : (md->conv->geo.has_bias ? 2 : 1);
        if (i < np + nt) {
            snprintf(key, len, "%s.%s", md->prefix, i - np ? "bias" : "weight");
            return;
        }
        np += nt;
    }
    fail();
}

static double max_abs(const float *a, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++)
        m = fmax(m, fabs((double)a[i]));
    return m;
}

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

static void param_counts_and_keys(void **state)
{
    (void)state;
    static const size_t COUNTS[3] = {54019, 111491, 408195};
    static const char *const LAST[3] = {"model.4.bias", "model.7.bias", "model.10.bias"};
    for (int L = 0; L <= 2; L++) {
        pgn_autoencoder *ae = new_ae(L, 7 + L);
        assert_int_equal(pgn_autoencoder_param_count(ae), COUNTS[L]);
        assert_int_equal(pgn_autoencoder_param_count(ae), PGN_AE_PARAM_COUNT[L]);
        int n;
        const nn_param *p = pgn_autoencoder_params(ae, &n);
        assert_int_equal(n, PGN_AE_PARAM_TENSORS[L]);
        for (int i = 0; i < n; i++) {
            assert_non_null(p[i].value);
            assert_non_null(p[i].grad);
            assert_int_equal(p[i].value->numel, p[i].grad->numel);
        }
        assert_int_equal(pgn_state_key_count(ae->mod, ae->nmod), PGN_AE_STATE_KEYS[L]);
        /* default init: stem weights within +-1/sqrt(147) */
        float bound = 1.0f / sqrtf(147.0f), mx = 0;
        for (size_t i = 0; i < ae->stem.weight.numel; i++)
            mx = fmaxf(mx, fabsf(ae->stem.weight.data[i]));
        assert_true(mx <= bound && mx > 0.9f * bound);
        assert_true(ae->stem_bn.gamma.data[0] == 1.0f && ae->stem_bn.beta.data[0] == 0.0f);

        nn_weights w;
        nn_err e;
        char path[96];
        state_path(L, path, sizeof path);
        fx_ok(nn_weights_read(&w, path, &e), &e);
        assert_int_equal(w.count, PGN_AE_STATE_KEYS[L]);
        char report[512];
        int problems = pgn_autoencoder_check_state(ae, &w, report, sizeof report);
        if (problems)
            print_error("%s", report);
        assert_int_equal(problems, 0);
        int k = 0;
        for (int m = 0; m < ae->nmod; m++) {
            int nsuf = ae->mod[m].bn ? 5 : (ae->mod[m].conv->geo.has_bias ? 2 : 1);
            for (int s = 0; s < nsuf; s++, k++) {
                size_t plen = strlen(ae->mod[m].prefix);
                if (strncmp(w.entries[k].name, ae->mod[m].prefix, plen) || w.entries[k].name[plen] != '.') {
                    print_error("key %d: file %s, module %s\n", k, w.entries[k].name, ae->mod[m].prefix);
                    fail();
                }
            }
        }
        assert_int_equal(k, PGN_AE_STATE_KEYS[L]);
        char key[96];
        param_key(ae, 0, key, sizeof key);
        assert_string_equal(key, "model.0.0.weight");
        param_key(ae, n - 1, key, sizeof key);
        assert_string_equal(key, LAST[L]);
        nn_weights_free(&w);
        del_ae(ae);
    }
    nn_err e;
    pgn_autoencoder ae;
    fx_expect_error(pgn_autoencoder_init(&ae, 3, 1, &e), &e, "max_layer 3 is not supported");
}

static double compare_grads(const pgn_autoencoder *ae, const nn_weights *fx, double tol, double *worst_l2,
                            double *rel_l2, const char **worst_key)
{
    static char wk[96];
    int np;
    const nn_param *p = pgn_autoencoder_params(ae, &np);
    double worst = 0, diff2 = 0, ref2 = 0;
    *worst_l2 = 0;
    *worst_key = "";
    for (int i = 0; i < np; i++) {
        char key[96], name[128];
        param_key(ae, i, key, sizeof key);
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
        const double max_err = fabs(max_abs(g, n) - gmax) / gmax;
        if (getenv("AE_VERBOSE"))
            print_message("%-24s samples %.3e  L2 %.3e  max %.3e\n", key, err, l2_err, max_err);
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

/* Gradients zeroed, a forward, every ReLU mask pinned to float64's decision (those inside a batch
 * norm cannot be: a flip there fails the test), a backward. Returns the flips. */
static int pinned_backward(nn_ctx *ctx, pgn_autoencoder *ae, const nn_weights *fx, const float *x, const float *dy,
                           int n, int h, int w, int *pinned)
{
    nn_err e;
    pgn_autoencoder_zero_grad(ae);
    fx_ok(pgn_autoencoder_forward(ctx, ae, x, n, h, w, NULL, &e), &e);
    int flips = 0;
    for (int i = 0; i < ae->nrelu; i++) {
        const char *rname;
        nn_act *a = pgn_autoencoder_relu_input(ae, i, &rname);
        assert_non_null(a);
        const int f = fx_pin(ctx, a, fx, rname, pinned);
        if (f && pgn_autoencoder_relu_mask_fixed(ae, i)) {
            print_error("%s: %d float32 ReLU decisions differ from float64's, and its mask cannot be pinned\n",
                        rname, f);
            fail();
        }
        flips += f;
    }
    assert_null(pgn_autoencoder_relu_input(ae, ae->nrelu, NULL));
    fx_ok(pgn_autoencoder_backward(ctx, ae, dy, &e), &e);
    return flips;
}

/* bf16 mode against the float32 fixtures: the output's max error over its max |value|, and the
 * gradients' relative L2 error over the fixture's sampled elements. */
#define BF16_TOL_OUT 3e-2 /* 0.005-0.014 here */
#define BF16_TOL_GRAD 1e-1 /* 0.026-0.049 here */

static void match_torch(int L)
{
    nn_err e;
    nn_ctx ctx;
    fx_ok(nn_ctx_init(&ctx, 0, &e), &e);
    pgn_autoencoder *ae = new_ae(L, 1);
    char path[96], fxname[64];
    state_path(L, path, sizeof path);
    fx_ok(pgn_autoencoder_load_file(ae, path, &e), &e);
    nn_weights fx, st;
    snprintf(fxname, sizeof fxname, "autoencoder%d.safetensors", L);
    fx_open(&fx, fxname);
    fx_ok(nn_weights_read(&st, path, &e), &e);

    const nn_weight_entry *xe = nn_weights_find(&fx, "x");
    assert_non_null(xe);
    assert_int_equal(xe->ndim, 4);
    assert_int_equal(xe->shape[1], 3);
    const int n = (int)xe->shape[0], h = (int)xe->shape[2], w = (int)xe->shape[3];
    size_t nx, no;
    float *x = load_f32(&fx, "x", &nx), *dy = load_f32(&fx, "dy", &no);
    assert_int_equal(no, (size_t)n * 3 * h * w);
    float *o = malloc(no * sizeof *o);
    assert_non_null(o);

    pgn_autoencoder_set_training(ae, 0);
    fx_ok(pgn_autoencoder_forward(&ctx, ae, x, n, h, w, o, &e), &e);
    const float *o_eval = fx_get(&fx, "o_eval", NULL);
    fx_expect_close("o_eval", o, o_eval, no, TOL);
    print_message("max_layer %d eval output: relative error %.3g (max |o| %.2f)\n", L, fx_rel_err(o, o_eval, no),
                  max_abs(o_eval, no));
    fx_expect_error(pgn_autoencoder_backward(&ctx, ae, dy, &e), &e, "backward without a train-mode forward");

    pgn_autoencoder_set_training(ae, 1);
    pgn_autoencoder_zero_grad(ae);
    fx_ok(pgn_autoencoder_forward(&ctx, ae, x, n, h, w, o, &e), &e);
    const float *o_want = fx_get(&fx, "o", NULL);
    fx_expect_close("o", o, o_want, no, TOL);
    print_message("max_layer %d train output: relative error %.3g (max |o| %.2f)\n", L, fx_rel_err(o, o_want, no),
                  max_abs(o_want, no));

    int nbn = 0;
    for (int m = 0; m < ae->nmod; m++) {
        const nn_batchnorm2d *bn = ae->mod[m].bn;
        if (!bn)
            continue;
        nbn++;
        char name[96];
        const char *stat[2] = {"running_mean", "running_var"};
        const nn_tensor *have[2] = {&bn->running_mean, &bn->running_var};
        for (int s = 0; s < 2; s++) {
            snprintf(name, sizeof name, "after.%s.%s", ae->mod[m].prefix, stat[s]);
            fx_expect_close(name, have[s]->data, fx_get(&fx, name, NULL), (size_t)bn->c, TOL);
        }
        snprintf(name, sizeof name, "%s.num_batches_tracked", ae->mod[m].prefix);
        const nn_weight_entry *t = nn_weights_find(&st, name);
        assert_non_null(t);
        assert_int_equal(bn->num_batches_tracked, *(const int64_t *)t->data + 1);
    }
    assert_int_equal(nbn, 1 + 2 * L);

    fx_ok(pgn_autoencoder_backward(&ctx, ae, dy, &e), &e);
    double worst_l2, rel_l2;
    const char *worst_key;
    double worst = compare_grads(ae, &fx, 0, &worst_l2, &rel_l2, &worst_key);
    print_message("max_layer %d unpinned: max sample error %.3g (%s), L2 norms %.3g, relative L2 %.3g\n", L, worst,
                  worst_key, worst_l2, rel_l2);
    assert_true(rel_l2 <= 1e-2);

    int pinned = 0, flips = pinned_backward(&ctx, ae, &fx, x, dy, n, h, w, &pinned);
    assert_false(ae->dec_g[L].valid); /* the fused path: the last sep's gradient went through its ReLU */
    for (int j = 0; j <= L; j++) { /* depthwise steps, and max_layer 2's 256 -> 128 (two inputs per output) */
        const nn_act *below_out = j > 0 ? &ae->dec[j - 1].out : &ae->mid.out;
        assert_int_equal(ae->dec_fused[j], nn_upsample_dwconv_applies(&ae->dec[j].c0, below_out));
        print_message("max_layer %d: decoder step %d's upsampling %s\n", L, j,
                      ae->dec_fused[j] ? "inside its grouped conv (AVX-512)" : "on its own");
    }
    worst = compare_grads(ae, &fx, TOL, &worst_l2, &rel_l2, &worst_key);
    print_message("max_layer %d pinned (%d masks, %d flipped): max sample error %.3g (%s), L2 norms %.3g\n", L,
                  pinned, flips, worst, worst_key, worst_l2);

    /* A second backward accumulates. */
    const float g0 = ae->params[0].grad->data[5];
    fx_ok(pgn_autoencoder_backward(&ctx, ae, dy, &e), &e);
    assert_true(fabsf(ae->params[0].grad->data[5] - 2 * g0) <= 1e-5f * fabsf(g0) + 1e-30f);

    /* The separate steps (fused kernels off: the last conv's backward, the upsamplings) too. */
    nn_fused_set_enabled(0);
    pinned = 0;
    pinned_backward(&ctx, ae, &fx, x, dy, n, h, w, &pinned);
    nn_fused_set_enabled(-1);
    assert_true(ae->dec_g[L].valid); /* the two-step path ran */
    for (int j = 0; j <= L; j++)
        assert_false(ae->dec_fused[j]);
    worst = compare_grads(ae, &fx, TOL, &worst_l2, &rel_l2, &worst_key);
    print_message("max_layer %d pinned, two-step backward: max sample error %.3g (%s)\n", L, worst, worst_key);

    /* Mixed precision (the collect's default): the same PyTorch float32 run, within bf16's rounding. */
    fx_ok(pgn_autoencoder_set_bf16(ae, 1, &e), &e);
    pgn_autoencoder_zero_grad(ae);
    fx_ok(pgn_autoencoder_forward(&ctx, ae, x, n, h, w, o, &e), &e);
    assert_int_equal(pgn_autoencoder_runs_bf16(ae), nn_conv2d_bf16_native(&ctx));
    const double o_bf16 = fx_rel_err(o, o_want, no);
    fx_ok(pgn_autoencoder_backward(&ctx, ae, dy, &e), &e);
    worst = compare_grads(ae, &fx, 0, &worst_l2, &rel_l2, &worst_key);
    print_message("max_layer %d in bf16 (%s): output %.3g, gradients relative L2 %.3g, L2 norms %.3g\n", L,
                  pgn_autoencoder_runs_bf16(ae) ? "native kernels" : "no bf16 kernels here: f32", o_bf16, rel_l2,
                  worst_l2);
    assert_true(o_bf16 <= BF16_TOL_OUT);
    assert_true(rel_l2 <= BF16_TOL_GRAD);
    fx_ok(pgn_autoencoder_set_bf16(ae, 0, &e), &e);

    free(x);
    free(dy);
    free(o);
    nn_weights_free(&fx);
    nn_weights_free(&st);
    del_ae(ae);
    nn_ctx_free(&ctx);
}

static void match_torch_0(void **state)
{
    (void)state;
    match_torch(0);
}
static void match_torch_1(void **state)
{
    (void)state;
    match_torch(1);
}
static void match_torch_2(void **state)
{
    (void)state;
    match_torch(2);
}

/* Reset after loading the fixture weights: every conv weight/bias differs and lies within
 * +-1/sqrt(fan_in); BN gamma 1, beta 0, running stats 0/1, count 0; shapes, the params list and
 * the gradients are untouched; a forward/backward still runs. */
static void reset_reinitialises(void **state)
{
    (void)state;
    nn_err e;
    nn_ctx ctx;
    fx_ok(nn_ctx_init(&ctx, 0, &e), &e);
    for (int L = 0; L <= 2; L++) {
        pgn_autoencoder *ae = new_ae(L, 11);
        char path[96];
        state_path(L, path, sizeof path);
        fx_ok(pgn_autoencoder_load_file(ae, path, &e), &e);
        enum { N = 2, H = 16, W = 16 };
        float x[N * 3 * H * W], dy[N * 3 * H * W];
        for (int i = 0; i < N * 3 * H * W; i++) {
            x[i] = sinf(0.37f * (float)i);
            dy[i] = cosf(0.11f * (float)i);
        }
        pgn_autoencoder_zero_grad(ae);
        fx_ok(pgn_autoencoder_forward(&ctx, ae, x, N, H, W, NULL, &e), &e);
        fx_ok(pgn_autoencoder_backward(&ctx, ae, dy, &e), &e);

        int np;
        const nn_param *p = pgn_autoencoder_params(ae, &np);
        nn_param before[PGN_AE_MAX_PARAM_TENSORS];
        float *copy[PGN_AE_MAX_PARAM_TENSORS], *gcopy[PGN_AE_MAX_PARAM_TENSORS];
        for (int i = 0; i < np; i++) {
            before[i] = p[i];
            copy[i] = malloc(p[i].value->numel * sizeof(float));
            gcopy[i] = malloc(p[i].grad->numel * sizeof(float));
            assert_true(copy[i] && gcopy[i]);
            memcpy(copy[i], p[i].value->data, p[i].value->numel * sizeof(float));
            memcpy(gcopy[i], p[i].grad->data, p[i].grad->numel * sizeof(float));
        }
        nn_rng rng;
        nn_rng_seed(&rng, 99);
        pgn_autoencoder_reset(ae, &rng);
        p = pgn_autoencoder_params(ae, &np);
        assert_int_equal(np, PGN_AE_PARAM_TENSORS[L]);
        assert_int_equal(pgn_autoencoder_param_count(ae), PGN_AE_PARAM_COUNT[L]);
        for (int i = 0; i < np; i++) {
            assert_ptr_equal(p[i].value, before[i].value);
            assert_ptr_equal(p[i].value->data, before[i].value->data);
            assert_memory_equal(p[i].grad->data, gcopy[i], p[i].grad->numel * sizeof(float));
            size_t same = 0;
            for (size_t j = 0; j < p[i].value->numel; j++)
                same += p[i].value->data[j] == copy[i][j];
            /* BN weight/bias: the fixture's U[0.5,1.5) / U[-0.2,0.2) never equal 1 / 0 */
            assert_true(same * 100 <= p[i].value->numel);
            free(copy[i]);
            free(gcopy[i]);
        }
        for (int m = 0; m < ae->nmod; m++) {
            const pgn_module *md = &ae->mod[m];
            if (md->conv) {
                const nn_conv2d *c = md->conv;
                const float bound = 1.0f / sqrtf((float)(c->geo.cin / c->geo.groups * c->geo.kh * c->geo.kw));
                float mx = 0;
                for (size_t j = 0; j < c->weight.numel; j++)
                    mx = fmaxf(mx, fabsf(c->weight.data[j]));
                assert_true(mx <= bound && mx > 0.5f * bound);
                if (c->geo.has_bias)
                    for (size_t j = 0; j < c->bias.numel; j++)
                        assert_true(fabsf(c->bias.data[j]) <= bound);
            } else {
                const nn_batchnorm2d *bn = md->bn;
                for (int j = 0; j < bn->c; j++)
                    assert_true(bn->gamma.data[j] == 1.0f && bn->beta.data[j] == 0.0f &&
                                bn->running_mean.data[j] == 0.0f && bn->running_var.data[j] == 1.0f);
                assert_int_equal(bn->num_batches_tracked, 0);
            }
        }
        /* The reset net keeps its mode and runs with finite output and gradients. */
        assert_int_equal(ae->training, 1);
        float o[N * 3 * H * W];
        pgn_autoencoder_zero_grad(ae);
        fx_ok(pgn_autoencoder_forward(&ctx, ae, x, N, H, W, o, &e), &e);
        for (int i = 0; i < N * 3 * H * W; i++)
            assert_true(isfinite(o[i]));
        fx_ok(pgn_autoencoder_backward(&ctx, ae, dy, &e), &e);
        const double gn = nn_grad_norm(ae->params, ae->nparams);
        assert_true(isfinite(gn) && gn > 0);
        del_ae(ae);
    }
    nn_ctx_free(&ctx);
}

/* The §4.1 rule: a new best is tracked, L1 above the limit (or NaN) resets, a plateau resets with
 * its probability (1: always, 0: never), and a reset restarts the tracking. */
static void reset_rule(void **state)
{
    pgn_autoencoder ae;
    nn_err e;
    fx_ok(pgn_autoencoder_init(&ae, 0, 1, &e), &e);
    nn_rng r;
    nn_rng_seed(&r, 5);
    double best = INFINITY, at = 0;
    assert_int_equal(pgn_autoencoder_reset_if_stale(&ae, 0.8, 6, &best, &at, 1e3, 100, 1.0, &r), 0);
    assert_true(best == 0.8 && at == 6);
    assert_int_equal(pgn_autoencoder_reset_if_stale(&ae, 0.9, 100, &best, &at, 1e3, 100, 1.0, &r), 0); /* 94 < 100 */
    assert_int_equal(pgn_autoencoder_reset_if_stale(&ae, 0.9, 106, &best, &at, 1e3, 100, 0.0, &r), 0); /* prob 0 */
    assert_int_equal(pgn_autoencoder_reset_if_stale(&ae, 0.9, 106, &best, &at, 1e3, 100, 1.0, &r), 1); /* plateau */
    assert_true(isinf(best) && at == 106);
    assert_int_equal(pgn_autoencoder_reset_if_stale(&ae, 2e3, 112, &best, &at, 1e3, 1e9, 0.0, &r), 1); /* limit */
    assert_int_equal(pgn_autoencoder_reset_if_stale(&ae, NAN, 118, &best, &at, 1e3, 1e9, 0.0, &r), 1); /* NaN */
    pgn_autoencoder_free(&ae);
}

static void refusals(void **state)
{
    (void)state;
    nn_err e;
    nn_ctx ctx;
    fx_ok(nn_ctx_init(&ctx, 0, &e), &e);
    pgn_autoencoder *ae = new_ae(2, 5);
    float *x = calloc(3 * 40 * 40, sizeof *x);
    assert_non_null(x);
    fx_expect_error(pgn_autoencoder_forward(&ctx, ae, x, 1, 12, 16, NULL, &e), &e,
                    "input 12x16 is not supported: height and width must be positive multiples of 8");
    fx_expect_error(pgn_autoencoder_forward(&ctx, ae, x, 1, 8, 8, NULL, &e), &e, "deepest batch norm");
    fx_expect_error(pgn_autoencoder_backward(&ctx, ae, x, &e), &e, "backward without a train-mode forward");
    /* max_layer 0 takes multiples of 2 */
    pgn_autoencoder *a0 = new_ae(0, 5);
    fx_ok(pgn_autoencoder_forward(&ctx, a0, x, 1, 6, 10, NULL, &e), &e);
    assert_int_equal(a0->out.h, 6);
    assert_int_equal(a0->out.w, 10);
    /* another max_layer's state dict */
    fx_expect_error(pgn_autoencoder_load_file(a0, "tests/fixtures/autoencoder2_legacy.pth", &e), &e,
                    "autoencoder2_legacy.pth is not a max_layer 0 autoencoder state dict");
    fx_expect_error(pgn_autoencoder_load_file(ae, "tests/fixtures/autoencoder1_legacy.pth", &e), &e,
                    "missing key model.2.c1.weight");
    del_ae(a0);
    free(x);
    del_ae(ae);
    nn_ctx_free(&ctx);
}

/* forward_act equals forward; a few Adam steps on the params list reduce an MSE reconstruction loss. */
static void act_input_and_adam(void **state)
{
    (void)state;
    nn_err e;
    nn_ctx ctx;
    fx_ok(nn_ctx_init(&ctx, 0, &e), &e);
    enum { N = 2, H = 32, W = 32, CNT = N * 3 * H * W };
    float *x = malloc(CNT * sizeof *x), *o1 = malloc(CNT * sizeof *o1), *o2 = malloc(CNT * sizeof *o2);
    assert_true(x && o1 && o2);
    for (int i = 0; i < CNT; i++)
        x[i] = 1.5f * sinf(0.013f * (float)i) * cosf(0.003f * (float)i);
    for (int L = 0; L <= 2; L++) {
        pgn_autoencoder *ae = new_ae(L, 42);
        nn_act ax = {0}, dy = {0};
        fx_act_from(&ctx, &ax, x, N, 3, H, W);
        pgn_autoencoder_set_training(ae, 0);
        fx_ok(pgn_autoencoder_forward(&ctx, ae, x, N, H, W, o1, &e), &e);
        fx_ok(pgn_autoencoder_forward_act(&ctx, ae, &ax, &e), &e);
        fx_ok(nn_act_to_nchw(&ctx, &ae->out, o2, &e), &e);
        assert_memory_equal(o1, o2, CNT * sizeof *o1);
        pgn_autoencoder_set_training(ae, 1);
        int np;
        const nn_param *p = pgn_autoencoder_params(ae, &np);
        nn_adam opt;
        fx_ok(nn_adam_init(&opt, p, np, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f, &e), &e);
        double first = 0, last = 0;
        for (int k = 0; k < 8; k++) {
            pgn_autoencoder_zero_grad(ae);
            fx_ok(pgn_autoencoder_forward_act(&ctx, ae, &ax, &e), &e);
            double loss;
            fx_ok(nn_mse_loss(&ctx, &ae->out, &ax, &loss, NULL, &e), &e);
            nn_act_grad_reset(&dy);
            fx_ok(nn_mse_loss_backward(&ctx, &ae->out, &ax, 1.0f, &dy, &e), &e);
            fx_ok(pgn_autoencoder_backward_act(&ctx, ae, &dy, &e), &e);
            nn_adam_step(&opt);
            assert_true(isfinite(loss));
            if (k == 0)
                first = loss;
            last = loss;
        }
        print_message("max_layer %d MSE fit: loss %.4f at step 1, %.4f at step 8\n", L, first, last);
        assert_true(last < 0.9 * first);
        nn_adam_free(&opt);
        nn_act_free(&ax);
        nn_act_free(&dy);
        del_ae(ae);
    }
    free(x);
    free(o1);
    free(o2);
    nn_ctx_free(&ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(param_counts_and_keys), cmocka_unit_test(match_torch_0),
        cmocka_unit_test(match_torch_1),         cmocka_unit_test(match_torch_2),
        cmocka_unit_test(reset_reinitialises),   cmocka_unit_test(refusals),
        cmocka_unit_test(act_input_and_adam),    cmocka_unit_test(reset_rule),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
