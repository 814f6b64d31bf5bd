/* The PGN ResNet-N backbone (pgn/pgn_resnet.h) and the proxy head (pgn/proxy.h) against a PyTorch
 * replica (tests/fixtures/pgn_resnet*, written by tools/fixtures_pgn_resnet.py; see
 * tests/fixtures/README.md "pgn_resnet*"):
 *   - parameter counts for N = 4, 6, 8 (1,335,875 / 1,927,235 / 2,518,595), key names and order;
 *   - eval-mode (running statistics) and train-mode (batch statistics) forward of ResNet-4 at
 *     2x6x16x16 within 1e-4 of max |value|; BN running statistics after the train forward;
 *   - every parameter gradient within 1e-4 of max |value| (big conv weights: a stored subset of
 *     elements and the sums over input channels), with the LeakyReLU masks pinned to the float64
 *     signs where the reference pre-activation is within 5e-3 of zero (a float32 forward may land
 *     on the other side of zero there, and one flip of the slope moves gradients by ~1e-2); the 8
 *     block conv biases whose exact gradient is zero are measured against their weight's gradient;
 *     unpinned, the relative L2 error of all gradients together must stay under 1e-2;
 *   - proxy head (sigmoid and direct modes) forward and backward within 1e-5;
 *   - loading the legacy state dict and the v2 checkpoint (meta: grad scale 0.025, 4 blocks);
 *   - state-dict refusals; odd sizes refused.
 * PGN_RESNET_VERBOSE=1 prints every parameter's error. */
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
#include "pgn/pgn_resnet.h"
#include "pgn/proxy.h"
#include "tests/unit/fixture.h"

#define TOL 1e-4
#define PROXY_TOL 1e-5
#define SD_FILE "tests/fixtures/pgn_resnet4_sd_legacy.pth"
#define V2_FILE "tests/fixtures/pgn_resnet4_v2_legacy.pth"

static double max_abs(const float *a, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++)
        m = fmax(m, fabs((double)a[i]));
    return m;
}

/* Key names of the parameters, parallel to pgn_resnet_params. */
static int param_keys(const pgn_resnet *r, char keys[][64])
{
    int n = 0;
    for (int m = 0; m < r->nmod; m++) {
        const pgn_resnet_module *md = &r->mod[m];
        snprintf(keys[n++], 64, "%s.weight", md->prefix);
        if (md->bn || md->conv->geo.has_bias)
            snprintf(keys[n++], 64, "%s.bias", md->prefix);
    }
    return n;
}

static pgn_resnet *new_net(int blocks, uint64_t seed)
{
    nn_err e;
    pgn_resnet *r = calloc(1, sizeof *r);
    assert_non_null(r);
    fx_ok(pgn_resnet_init(r, blocks, seed, &e), &e);
    return r;
}

static void del_net(pgn_resnet *r)
{
    pgn_resnet_free(r);
    free(r);
}

static void param_counts_and_keys(void **state)
{
    (void)state;
    const size_t want[3] = {1335875, 1927235, 2518595};
    for (int k = 0; k < 3; k++) {
        const int nb = 4 + 2 * k;
        pgn_resnet *r = new_net(nb, 7);
        assert_int_equal(pgn_resnet_param_count(r), want[k]);
        assert_int_equal(PGN_RESNET_PARAM_COUNT(nb), want[k]);
        int n;
        const nn_param *p = pgn_resnet_params(r, &n);
        assert_int_equal(n, PGN_RESNET_PARAM_TENSORS(nb));
        for (int i = 0; i < n; i++) {
            assert_non_null(p[i].value);
            assert_non_null(p[i].grad);
            assert_int_equal(p[i].value->numel, p[i].grad->numel);
        }
        char last[32];
        snprintf(last, sizeof last, "model.%d", 10 + nb);
        assert_string_equal(r->mod[r->nmod - 1].prefix, last);
        del_net(r);
    }
    nn_err e;
    pgn_resnet r0;
    fx_expect_error(pgn_resnet_init(&r0, 0, 1, &e), &e, "0 residual blocks");
    fx_expect_error(pgn_resnet_init(&r0, PGN_RESNET_MAX_BLOCKS + 1, 1, &e), &e, "residual blocks");

    /* PyTorch default init: conv weights within +-1/sqrt(fan_in); BN weight 1, bias 0. */
    pgn_resnet *r = new_net(4, 3);
    const float bound = 1.0f / sqrtf(128 * 9);
    float mx = 0;
    for (size_t i = 0; i < r->blk[2].conv2.weight.numel; i++)
        mx = fmaxf(mx, fabsf(r->blk[2].conv2.weight.data[i]));
    assert_true(mx <= bound && mx > 0.9f * bound);
    assert_true(r->up_bn.gamma.data[0] == 1.0f && r->up_bn.beta.data[0] == 0.0f);

    /* The module table gives exactly the state dict's keys, in its order (the 76 keys of the
     * spec's table; the file was asserted equal to it by the generator). */
    nn_weights w;
    fx_ok(nn_weights_read(&w, SD_FILE, &e), &e);
    assert_int_equal(w.count, PGN_RESNET_STATE_KEYS(4));
    char report[256];
    assert_int_equal(pgn_resnet_check_state(r, &w, report, sizeof report), 0);
    int k = 0;
    for (int m = 0; m < r->nmod; m++) {
        const int nsuf = r->mod[m].bn ? 5 : 1 + r->mod[m].conv->geo.has_bias;
        for (int s = 0; s < nsuf; s++, k++) {
            const size_t plen = strlen(r->mod[m].prefix);
            if (strncmp(w.entries[k].name, r->mod[m].prefix, plen) || w.entries[k].name[plen] != '.') {
                print_error("key %d: file %s, module %s\n", k, w.entries[k].name, r->mod[m].prefix);
                fail();
            }
        }
    }
    assert_int_equal(k, 76);
    int blocks = 0;
    fx_ok(pgn_resnet_blocks_of(&w, &blocks, &e), &e);
    assert_int_equal(blocks, 4);
    nn_weights_free(&w);
    del_net(r);
}

/* Sets the stored LeakyReLU inputs (BN outputs) at the fixture's pinned elements to +-1e-20 with
 * the float64 sign. Returns how many of them the float32 forward had on the other side of zero. */
static int pin_masks(nn_ctx *ctx, pgn_resnet *r, const nn_weights *fx, int *pinned)
{
    struct {
        const char *prefix;
        nn_act *a;
    } taps[3 + PGN_RESNET_MAX_BLOCKS];
    int nt = 0;
    taps[nt].prefix = "model.1", taps[nt++].a = &r->act[PGN_RS_STEM_BN];
    taps[nt].prefix = "model.4", taps[nt++].a = &r->act[PGN_RS_DOWN_BN];
    for (int i = 0; i < r->blocks; i++)
        taps[nt].prefix = r->mod[5 + 4 * i].prefix, taps[nt++].a = &r->blk[i].act[PGN_RB_B1];
    taps[nt].prefix = r->mod[r->nmod - 2].prefix, taps[nt++].a = &r->act[PGN_RS_UP_BN];
    int flips = 0;
    *pinned = 0;
    for (int k = 0; k < nt; k++) {
        flips += fx_pin(ctx, taps[k].a, fx, taps[k].prefix, pinned);
    }
    return flips;
}

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

/* max |g| of the fixture's gradient of `key` (whole tensor). */
static double fixture_absmax(const nn_weights *fx, const char *key)
{
    char name[96];
    snprintf(name, sizeof name, "grad.%s", key);
    size_t n;
    const float *g = fx_find(fx, name, &n);
    if (g)
        return max_abs(g, n);
    snprintf(name, sizeof name, "grad.%s.absmax", key);
    return fx_get(fx, name, NULL)[0];
}

/* Compares every parameter gradient with the fixture's; returns the worst max error / max |value|
 * (zero-gradient biases apart, in *worst_zero; the sums over input channels apart, in *worst_sum),
 * failing above tol when tol > 0. *rel_l2: relative L2 error over every compared value. */
static double compare_grads(const pgn_resnet *r, const nn_weights *fx, double tol, double *worst_zero,
                            double *worst_sum, double *rel_l2, char *worst_key)
{
    const nn_weight_meta *zm = nn_weights_meta(fx, "zero_grad");
    assert_non_null(zm);
    char keys[PGN_RESNET_MAX_PARAMS][64];
    int np, nzero = 0;
    const nn_param *p = pgn_resnet_params(r, &np);
    assert_int_equal(param_keys(r, keys), np);
    double worst = 0, diff2 = 0, ref2 = 0;
    *worst_zero = *worst_sum = 0;
    worst_key[0] = 0;
    for (int i = 0; i < np; i++) {
        const char *key = keys[i];
        const float *got = p[i].grad->data;
        const size_t n = p[i].grad->numel;
        char name[96];
        double err = 0, scale = fixture_absmax(fx, key), sum_err = 0;
        const int zero = in_list(zm->str, key);
        if (zero) {
            char wkey[64];
            snprintf(wkey, sizeof wkey, "%.*s.weight", (int)(strlen(key) - 5), key);
            scale = fixture_absmax(fx, wkey);
            nzero++;
        }
        snprintf(name, sizeof name, "grad.%s", key);
        size_t nw;
        const float *want = fx_find(fx, name, &nw);
        if (want) {
            assert_int_equal(nw, n);
            for (size_t j = 0; j < n; j++) {
                const double dj = (double)got[j] - want[j];
                err = fmax(err, fabs(dj));
                diff2 += dj * dj;
                ref2 += (double)want[j] * want[j];
            }
        } else {
            /* A big conv weight: a subset of elements, and the sums over input channels. */
            snprintf(name, sizeof name, "grad.%s.index", key);
            const nn_weight_entry *ix = nn_weights_find(fx, name);
            assert_non_null(ix);
            assert_int_equal(ix->dtype, NN_I32);
            snprintf(name, sizeof name, "grad.%s.value", key);
            size_t nv;
            const float *val = fx_get(fx, name, &nv);
            assert_int_equal(nv, ix->numel);
            for (size_t j = 0; j < nv; j++) {
                const int32_t at = ((const int32_t *)ix->data)[j];
                assert_true(at >= 0 && (size_t)at < n);
                const double dj = (double)got[at] - val[j];
                err = fmax(err, fabs(dj));
                diff2 += dj * dj;
                ref2 += (double)val[j] * val[j];
            }
            snprintf(name, sizeof name, "grad.%s.sum_in", key);
            size_t ns;
            const float *sum = fx_get(fx, name, &ns);
            const int64_t cout = p[i].grad->shape[0], cin = p[i].grad->shape[1], kk = p[i].grad->shape[2] * p[i].grad->shape[3];
            assert_int_equal(ns, (size_t)(cout * kk));
            for (int64_t o = 0; o < cout; o++)
                for (int64_t t = 0; t < kk; t++) {
                    double s = 0;
                    for (int64_t c = 0; c < cin; c++)
                        s += got[(o * cin + c) * kk + t];
                    sum_err = fmax(sum_err, fabs(s - sum[o * kk + t]));
                }
            sum_err /= max_abs(sum, ns);
            *worst_sum = fmax(*worst_sum, sum_err);
        }
        err /= scale;
        if (getenv("PGN_RESNET_VERBOSE"))
            print_message("%-30s %.3e%s\n", key, err, want ? "" : " (subset)");
        if (tol > 0 && (!(err <= tol) || !(sum_err <= tol))) {
            print_error("gradient of %s: max error / max |value| = %.3g (sums over cin %.3g) > %.3g\n", key, err,
                        sum_err, tol);
            fail();
        }
        if (zero)
            *worst_zero = fmax(*worst_zero, err);
        else if (err > worst) {
            worst = err;
            snprintf(worst_key, 64, "%s", key);
        }
    }
    assert_int_equal(nzero, 8);
    *rel_l2 = sqrt(diff2 / ref2);
    return worst;
}

static void forward_backward_match_torch(void **state)
{
    (void)state;
    nn_err e;
    nn_ctx ctx;
    fx_ok(nn_ctx_init(&ctx, 0, &e), &e);
    pgn_resnet *r = new_net(4, 1);
    fx_ok(pgn_resnet_load_file(r, SD_FILE, &e), &e);
    nn_weights fx, st;
    fx_open(&fx, "pgn_resnet.safetensors");
    fx_ok(nn_weights_read(&st, SD_FILE, &e), &e);
    size_t nx, no;
    const float *yhat = fx_get(&fx, "yhat", &nx), *target = fx_get(&fx, "target", NULL);
    const float *dout = fx_get(&fx, "do", &no);
    const nn_weight_entry *ye = nn_weights_find(&fx, "yhat");
    const int n = (int)ye->shape[0], h = (int)ye->shape[2], w = (int)ye->shape[3];
    assert_int_equal(nx, (size_t)n * 3 * h * w);
    assert_int_equal(no, nx);
    float *o = malloc(no * sizeof *o);
    assert_non_null(o);

    /* Eval mode: running statistics as loaded; they do not change. */
    pgn_resnet_set_training(r, 0);
    const float rm0 = r->blk[1].bn2.running_mean.data[5];
    fx_ok(pgn_resnet_forward(&ctx, r, yhat, target, n, h, w, o, &e), &e);
    fx_expect_close("o_eval", o, fx_get(&fx, "o_eval", NULL), no, TOL);
    print_message("eval output: relative error %.3g\n", fx_rel_err(o, fx_get(&fx, "o_eval", NULL), no));
    assert_true(r->blk[1].bn2.running_mean.data[5] == rm0);

    /* Train mode. */
    pgn_resnet_set_training(r, 1);
    pgn_resnet_zero_grad(r);
    fx_ok(pgn_resnet_forward(&ctx, r, yhat, target, n, h, w, o, &e), &e);
    fx_expect_close("o", o, fx_get(&fx, "o", NULL), no, TOL);
    print_message("train output: relative error %.3g\n", fx_rel_err(o, fx_get(&fx, "o", NULL), no));
    double worst_stat = 0;
    for (int m = 0; m < r->nmod; m++) {
        const nn_batchnorm2d *bn = r->mod[m].bn;
        if (!bn)
            continue;
        char name[96];
        snprintf(name, sizeof name, "after.%s.running_mean", r->mod[m].prefix);
        fx_expect_close(name, bn->running_mean.data, fx_get(&fx, name, NULL), (size_t)bn->c, TOL);
        worst_stat = fmax(worst_stat, fx_rel_err(bn->running_mean.data, fx_get(&fx, name, NULL), (size_t)bn->c));
        snprintf(name, sizeof name, "after.%s.running_var", r->mod[m].prefix);
        fx_expect_close(name, bn->running_var.data, fx_get(&fx, name, NULL), (size_t)bn->c, TOL);
        worst_stat = fmax(worst_stat, fx_rel_err(bn->running_var.data, fx_get(&fx, name, NULL), (size_t)bn->c));
        snprintf(name, sizeof name, "%s.num_batches_tracked", r->mod[m].prefix);
        const nn_weight_entry *t = nn_weights_find(&st, name);
        assert_non_null(t);
        assert_int_equal(bn->num_batches_tracked, *(const int64_t *)t->data + 1);
    }
    print_message("BN running statistics: max relative error %.3g\n", worst_stat);

    /* Gradients as they come (any flipped LeakyReLU masks included). */
    fx_ok(pgn_resnet_backward(&ctx, r, dout, &e), &e);
    double worst_zero, worst_sum, rel_l2;
    char worst_key[64];
    double worst = compare_grads(r, &fx, 0, &worst_zero, &worst_sum, &rel_l2, worst_key);
    print_message("unpinned: max relative error %.3g (%s), sums over cin %.3g, relative L2 %.3g\n", worst, worst_key,
                  worst_sum, rel_l2);
    assert_true(rel_l2 <= 1e-2);

    /* Pinned masks: every gradient within 1e-4. */
    pgn_resnet_zero_grad(r);
    fx_ok(pgn_resnet_forward(&ctx, r, yhat, target, n, h, w, NULL, &e), &e);
    int pinned;
    const int flips = pin_masks(&ctx, r, &fx, &pinned);
    fx_ok(pgn_resnet_backward(&ctx, r, dout, &e), &e);
    worst = compare_grads(r, &fx, TOL, &worst_zero, &worst_sum, &rel_l2, worst_key);
    print_message("pinned (%d masks pinned, %d flipped by the float32 forward): max relative error %.3g (%s), sums "
                  "over cin %.3g, relative L2 %.3g; zero-gradient biases %.3g of their weight's gradient\n",
                  pinned, flips, worst, worst_key, worst_sum, rel_l2, worst_zero);
    assert_true(worst_zero <= TOL);

    /* The same forward through activations. */
    nn_act ya = {0}, ta = {0};
    fx_act_from(&ctx, &ya, yhat, n, 3, h, w);
    fx_act_from(&ctx, &ta, target, n, 3, h, w);
    pgn_resnet_set_training(r, 0);
    fx_ok(pgn_resnet_forward_act(&ctx, r, &ya, &ta, &e), &e);
    float *o2 = fx_act_to(&ctx, pgn_resnet_output(r));
    /* running stats changed by the train forwards: compare with the array path instead */
    fx_ok(pgn_resnet_forward(&ctx, r, yhat, target, n, h, w, o, &e), &e);
    assert_true(fx_rel_err(o2, o, no) <= 1e-6);
    free(o2);
    nn_act_free(&ya);
    nn_act_free(&ta);

    free(o);
    nn_weights_free(&fx);
    nn_weights_free(&st);
    del_net(r);
    nn_ctx_free(&ctx);
}

static void proxy_head_matches_torch(void **state)
{
    (void)state;
    nn_weights fx;
    fx_open(&fx, "pgn_resnet.safetensors");
    size_t count;
    const float *o = fx_get(&fx, "proxy.o", &count), *yhat = fx_get(&fx, "yhat", NULL);
    const float *dp = fx_get(&fx, "proxy.dp", NULL), *dg = fx_get(&fx, "proxy.dg", NULL);
    const nn_weight_entry *oe = nn_weights_find(&fx, "proxy.o");
    const int n = (int)oe->shape[0], h = (int)oe->shape[2], w = (int)oe->shape[3];
    assert_int_equal(count, (size_t)n * 3 * h * w);
    float *p = malloc(count * sizeof *p), *g = malloc(count * sizeof *g), *d = malloc(count * sizeof *d);
    assert_true(p && g && d);

    pgn_proxy hd = pgn_proxy_default(PGN_GRAD_SCALE_RESNET);
    assert_true(hd.mode == PGN_PROXY_SIGMOID && hd.kappa == 1.1f && hd.grad_scale == 0.025f);
    pgn_proxy_forward(&hd, o, yhat, n, h, w, p, g);
    fx_expect_close("proxy.p", p, fx_get(&fx, "proxy.p", NULL), count, PROXY_TOL);
    fx_expect_close("proxy.g", g, fx_get(&fx, "proxy.g", NULL), count, PROXY_TOL);
    double ep = fx_rel_err(p, fx_get(&fx, "proxy.p", NULL), count), eg = fx_rel_err(g, fx_get(&fx, "proxy.g", NULL), count);
    pgn_proxy_backward(&hd, o, dp, dg, n, h, w, d);
    fx_expect_close("proxy.do", d, fx_get(&fx, "proxy.do", NULL), count, PROXY_TOL);
    double ed = fx_rel_err(d, fx_get(&fx, "proxy.do", NULL), count);
    pgn_proxy_backward(&hd, o, dp, NULL, n, h, w, d);
    fx_expect_close("proxy.do_dp", d, fx_get(&fx, "proxy.do_dp", NULL), count, PROXY_TOL);
    print_message("proxy: p %.3g, g %.3g, do %.3g, do (dp only) %.3g\n", ep, eg, ed,
                  fx_rel_err(d, fx_get(&fx, "proxy.do_dp", NULL), count));
    /* p only / g only give the same values. */
    float *p2 = malloc(count * sizeof *p2);
    assert_non_null(p2);
    pgn_proxy_forward(&hd, o, yhat, n, h, w, p2, NULL);
    assert_memory_equal(p, p2, count * sizeof *p);
    pgn_proxy_forward(&hd, o, yhat, n, h, w, NULL, p2);
    assert_memory_equal(g, p2, count * sizeof *g);
    free(p2);

    hd.mode = PGN_PROXY_DIRECT;
    pgn_proxy_forward(&hd, o, yhat, n, h, w, p, g);
    fx_expect_close("direct.p", p, fx_get(&fx, "direct.p", NULL), count, PROXY_TOL);
    fx_expect_close("direct.g", g, fx_get(&fx, "direct.g", NULL), count, PROXY_TOL);
    pgn_proxy_backward(&hd, o, dp, dg, n, h, w, d);
    fx_expect_close("direct.do", d, fx_get(&fx, "direct.do", NULL), count, PROXY_TOL);
    print_message("direct: p %.3g, g %.3g, do %.3g\n", fx_rel_err(p, fx_get(&fx, "direct.p", NULL), count),
                  fx_rel_err(g, fx_get(&fx, "direct.g", NULL), count),
                  fx_rel_err(d, fx_get(&fx, "direct.do", NULL), count));
    free(p);
    free(g);
    free(d);
    nn_weights_free(&fx);
}

static void checkpoints_load(void **state)
{
    (void)state;
    nn_err e;
    pgn_resnet *a = new_net(4, 1), *b = new_net(4, 2);
    fx_ok(pgn_resnet_load_file(a, SD_FILE, &e), &e);
    fx_ok(pgn_resnet_load_file(b, V2_FILE, &e), &e);
    int np;
    const nn_param *pa = pgn_resnet_params(a, &np), *pb = pgn_resnet_params(b, NULL);
    for (int i = 0; i < np; i++)
        assert_memory_equal(pa[i].value->data, pb[i].value->data, pa[i].value->numel * sizeof(float));
    assert_memory_equal(a->up_bn.running_var.data, b->up_bn.running_var.data, 64 * sizeof(float));
    assert_true(a->stem_bn.num_batches_tracked >= 3 && a->stem_bn.num_batches_tracked <= 7);
    assert_int_equal(a->stem_bn.num_batches_tracked, b->stem_bn.num_batches_tracked);

    nn_weights w;
    fx_ok(nn_weights_read(&w, V2_FILE, &e), &e);
    int blocks = 0;
    fx_ok(pgn_resnet_blocks_of(&w, &blocks, &e), &e);
    assert_int_equal(blocks, 4);
    pgn_proxy hd = pgn_proxy_default(PGN_GRAD_SCALE_UNET);
    fx_ok(pgn_proxy_from_meta(&hd, &w, &e), &e);
    assert_true(hd.mode == PGN_PROXY_SIGMOID);
    assert_true(hd.grad_scale == 0.025f);
    assert_true(hd.kappa == 1.1f);
    assert_string_equal(nn_weights_meta(&w, "backbone_type")->str, "resnet");
    nn_weights_free(&w);

    /* The plain state dict has no meta: the defaults stay. */
    fx_ok(nn_weights_read(&w, SD_FILE, &e), &e);
    hd = pgn_proxy_default(PGN_GRAD_SCALE_RESNET);
    fx_ok(pgn_proxy_from_meta(&hd, &w, &e), &e);
    assert_true(hd.grad_scale == 0.025f && hd.mode == PGN_PROXY_SIGMOID);
    nn_weights_free(&w);
    del_net(a);
    del_net(b);
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
    pgn_resnet *r = new_net(4, 3);
    const float w0 = r->blk[0].conv1.weight.data[0];
    nn_weights w;
    fx_ok(nn_weights_read(&w, SD_FILE, &e), &e);
    rename_entry(&w, "model.7.conv_block.1.bias", "model.7.conv_block.1.bias_x"); /* missing + unexpected */
    rename_entry(&w, "model.12.num_batches_tracked", "model.12.num_batches");     /* missing + unexpected */
    for (int i = 0; i < w.count; i++)
        if (!strcmp(w.entries[i].name, "model.11.weight"))
            w.entries[i].shape[1] = 64, w.entries[i].shape[2] = 6; /* [64, 128, 3, 3] -> [64, 64, 6, 3] */
    char report[2048];
    int problems = pgn_resnet_check_state(r, &w, report, sizeof report);
    print_message("%s", report);
    assert_int_equal(problems, 5);
    assert_non_null(strstr(report, "missing key model.7.conv_block.1.bias\n"));
    assert_non_null(strstr(report, "missing key model.12.num_batches_tracked\n"));
    assert_non_null(strstr(report, "key model.11.weight has shape [64, 64, 6, 3], expected [64, 128, 3, 3]\n"));
    assert_non_null(strstr(report, "unexpected key model.7.conv_block.1.bias_x\n"));
    assert_non_null(strstr(report, "unexpected key model.12.num_batches\n"));
    fx_expect_error(pgn_resnet_load(r, &w, &e), &e, SD_FILE " is not a PGN ResNet-4 state dict (5 problems)");
    assert_non_null(strstr(e.msg, "missing key model.7.conv_block.1.bias"));
    assert_non_null(strstr(e.msg, "unexpected key model.12.num_batches"));
    assert_true(r->blk[0].conv1.weight.data[0] == w0); /* nothing was loaded */
    nn_weights_free(&w);

    /* A wrong dtype. */
    fx_ok(nn_weights_read(&w, SD_FILE, &e), &e);
    for (int i = 0; i < w.count; i++)
        if (!strcmp(w.entries[i].name, "model.4.weight"))
            w.entries[i].dtype = NN_I32; /* same byte count as the F32 it holds */
    assert_int_equal(pgn_resnet_check_state(r, &w, report, sizeof report), 1);
    assert_non_null(strstr(report, "key model.4.weight has dtype I32, expected a floating type"));
    nn_weights_free(&w);

    /* A ResNet-6 refuses the ResNet-4 file; blocks_of tells the right N. */
    pgn_resnet *r6 = new_net(6, 3);
    fx_expect_error(pgn_resnet_load_file(r6, V2_FILE, &e), &e, "is not a PGN ResNet-6 state dict");
    assert_non_null(strstr(e.msg, "; it holds a ResNet-4): missing key model.10.conv_block.0.weight"));
    fx_ok(nn_weights_read(&w, V2_FILE, &e), &e);
    char big[8192];
    problems = pgn_resnet_check_state(r6, &w, big, sizeof big);
    assert_non_null(strstr(big, "missing key model.11.conv_block.4.weight\n"));
    assert_non_null(strstr(big, "key model.14.bias has shape [3], expected [64]\n"));
    assert_non_null(strstr(big, "unexpected key model.11.weight\n"));
    print_message("ResNet-6 against the ResNet-4 file: %d problems\n", problems);
    nn_weights_free(&w);
    del_net(r6);

    /* Another net's file; a missing file. */
    fx_expect_error(pgn_resnet_load_file(r, "tests/fixtures/dip_state.safetensors", &e), &e,
                 "dip_state.safetensors is not a PGN ResNet-4 state dict");
    assert_non_null(strstr(e.msg, "missing key model.0.weight"));
    fx_expect_error(pgn_resnet_load_file(r, "tests/fixtures/no_such_resnet.pth", &e), &e, "no_such_resnet.pth");
    assert_true(r->blk[0].conv1.weight.data[0] == w0);
    fx_ok(nn_weights_read(&w, "tests/fixtures/dip_state.safetensors", &e), &e);
    int blocks;
    fx_expect_error(pgn_resnet_blocks_of(&w, &blocks, &e), &e, "the state dict has 0 residual blocks");
    nn_weights_free(&w);
    del_net(r);
}

static void size_refusals(void **state)
{
    (void)state;
    nn_err e;
    nn_ctx ctx;
    fx_ok(nn_ctx_init(&ctx, 0, &e), &e);
    pgn_resnet *r = new_net(4, 5);
    enum { H = 10, W = 6, COUNT = 2 * 3 * H * W };
    float *x = calloc(COUNT, sizeof *x), *t = calloc(COUNT, sizeof *t), *o = calloc(COUNT, sizeof *o);
    assert_true(x && t && o);
    for (int i = 0; i < COUNT; i++)
        x[i] = sinf(0.37f * (float)i), t[i] = cosf(0.11f * (float)i);
    fx_expect_error(pgn_resnet_backward(&ctx, r, x, &e), &e, "backward without a forward");
    fx_expect_error(pgn_resnet_forward(&ctx, r, x, t, 1, 9, 6, NULL, &e), &e, "input 9x6 is not supported");
    fx_expect_error(pgn_resnet_forward(&ctx, r, x, t, 1, 10, 7, NULL, &e), &e, "must be even");
    fx_expect_error(pgn_resnet_forward(&ctx, r, x, t, 0, 10, 6, NULL, &e), &e, "batch size 0");
    /* A non-square even size, batch 2: 10x6 (5x3 in the middle). */
    fx_ok(pgn_resnet_forward(&ctx, r, x, t, 2, H, W, o, &e), &e);
    assert_int_equal(r->act[PGN_RS_OUT].h, H);
    assert_int_equal(r->act[PGN_RS_OUT].w, W);
    assert_int_equal(r->act[PGN_RS_OUT].c, 3);
    fx_ok(pgn_resnet_backward(&ctx, r, x, &e), &e);
    pgn_resnet_set_training(r, 0);
    fx_expect_error(pgn_resnet_backward(&ctx, r, x, &e), &e, "backward without a forward");
    nn_act a = {0}, b = {0};
    fx_act_from(&ctx, &a, x, 1, 3, H, W);
    fx_act_from(&ctx, &b, t, 1, 3, 8, W);
    fx_expect_error(pgn_resnet_forward_act(&ctx, r, &a, &b, &e), &e, "not two 3-channel images");
    fx_act_from(&ctx, &a, x, 1, 3, 7, W);
    fx_act_from(&ctx, &b, t, 1, 3, 7, W);
    fx_expect_error(pgn_resnet_forward_act(&ctx, r, &a, &b, &e), &e, "must be even");
    nn_act_free(&a);
    nn_act_free(&b);
    free(x);
    free(t);
    free(o);
    del_net(r);
    nn_ctx_free(&ctx);
}

/* 15 Adam steps of the PGN's own objective shape: fit o so that the proxy p matches a target
 * (MSE through the proxy head's backward) reduce the loss. */
static void adam_fits_through_proxy(void **state)
{
    (void)state;
    nn_err e;
    nn_ctx ctx;
    fx_ok(nn_ctx_init(&ctx, 0, &e), &e);
    pgn_resnet *r = new_net(4, 42);
    enum { N = 2, H = 8, W = 8, COUNT = N * 3 * H * W };
    float yh[COUNT], tg[COUNT], o[COUNT], p[COUNT], dp[COUNT], dout[COUNT];
    for (int i = 0; i < COUNT; i++) {
        yh[i] = sinf(0.3f * (float)i);
        tg[i] = 0.8f * cosf(0.17f * (float)i + 0.5f);
    }
    pgn_proxy hd = pgn_proxy_default(PGN_GRAD_SCALE_RESNET);
    int np;
    const nn_param *pp = pgn_resnet_params(r, &np);
    nn_adam opt;
    fx_ok(nn_adam_init(&opt, pp, np, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f, &e), &e);
    double first = 0, last = 0;
    for (int k = 0; k < 15; k++) {
        pgn_resnet_zero_grad(r);
        fx_ok(pgn_resnet_forward(&ctx, r, yh, tg, N, H, W, o, &e), &e);
        pgn_proxy_forward(&hd, o, yh, N, H, W, p, NULL);
        double loss = 0;
        for (int i = 0; i < COUNT; i++) {
            loss += (double)(p[i] - tg[i]) * (p[i] - tg[i]) / COUNT;
            dp[i] = 2.0f * (p[i] - tg[i]) / COUNT;
        }
        pgn_proxy_backward(&hd, o, dp, NULL, N, H, W, dout);
        fx_ok(pgn_resnet_backward(&ctx, r, dout, &e), &e);
        nn_adam_step(&opt);
        assert_true(isfinite(loss));
        if (k == 0)
            first = loss;
        last = loss;
    }
    print_message("proxy MSE fit: loss %.4f at step 1, %.4f at step 15\n", first, last);
    assert_true(last < 0.7 * first);
    nn_adam_free(&opt);
    del_net(r);
    nn_ctx_free(&ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(param_counts_and_keys),
        cmocka_unit_test(forward_backward_match_torch),
        cmocka_unit_test(proxy_head_matches_torch),
        cmocka_unit_test(checkpoints_load),
        cmocka_unit_test(state_dict_refusals),
        cmocka_unit_test(size_refusals),
        cmocka_unit_test(adam_fits_through_proxy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
