/* The inception3 teacher (issue 7): the tfjs reader (plain and JavaScript-wrapped models, uint8
 * dequantisation), the network against @tensorflow/tfjs-layers on nsfwjs 4.4.0's real weights (taps,
 * loss and gradient), its gradient by finite differences, and refusals that name the problem.
 *
 * The tfjs comparison reads var/teachers/inception3-nsfwjs-4.4.0 (tools/fetch_inception3.sh) and
 * build/fixtures/inception3_tfjs.safetensors (tests/fidelity/inception3_tfjs.mjs); `make test` makes
 * both first. PGND_INCEPTION3_DIR / PGND_INCEPTION3_TFJS override the paths. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "nn/tfjs.h"
#include "pgn/inception3.h"
#include "pgn/teacher.h"
#include "tests/unit/fixture.h"

static nn_ctx ctx;

static int setup(void **s)
{
    nn_err e;
    return nn_ctx_init(&ctx, 2, &e);
}

static int teardown(void **s)
{
    nn_ctx_free(&ctx);
    return 0;
}

static const char *env_or(const char *k, const char *dflt)
{
    const char *v = getenv(k);
    return v && *v ? v : dflt;
}

static void write_file(const char *path, const char *text, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, len, f), len);
    fclose(f);
}

static char tmpdir[256];

static void make_tmpdir(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/pgnd-test-inc3-XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
}

static void rm_tmpdir(void)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    assert_int_equal(system(cmd), 0);
}

/* A JavaScript-wrapped model as nsfwjs ships one: bare keys, !1, .5, a base64 shard in a wrapper,
 * split over two shards; plus a float32 weight. Values come back dequantised. */
static void reads_wrapped_tfjs_models(void **s)
{
    make_tmpdir();
    char p[512];
    /* uint8 weight "a" [2,2]: q = 0,1,2,255 with min -.5 scale .25; float32 weight "b" [1] = 1.5 */
    const char *model =
        "!function(a){module.exports=a()}(function(){return function a(n,i,e){}({1:[function(a,n,i){"
        "n.exports={modelTopology:{keras_version:\"2.2.4\",model_config:{class_name:\"Model\",config:{name:'m',"
        "layers:[{name:\"x\",trainable:!1,v:-.5e1}]}}},weightsManifest:[{paths:[\"s1\",\"s2\"],weights:["
        "{name:\"a\",shape:[2,2],dtype:\"float32\",quantization:{min:-.5,scale:.25,dtype:\"uint8\"}},"
        "{name:\"b\",shape:[1],dtype:\"float32\"}]}]}},{}]},{},[1])(1)});";
    snprintf(p, sizeof p, "%s/model.min.js", tmpdir);
    write_file(p, model, strlen(model));
    /* bytes 00 01 02 ff | 00 00 c0 3f (1.5f), cut after 3 bytes: "AAEC" and "/wAAwD8=" */
    const char *s1 = "!function(d){module.exports=d()}(function(){return function(){}({1:[function(d,h,Z){h.exports=\"AAEC\"},{}]},{},[1])(1)});";
    const char *s2 = "!function(d){module.exports=d()}(function(){return function(){}({1:[function(d,h,Z){h.exports=\"/wAAwD8=\"},{}]},{},[1])(1)});";
    snprintf(p, sizeof p, "%s/s1.min.js", tmpdir);
    write_file(p, s1, strlen(s1));
    snprintf(p, sizeof p, "%s/s2.min.js", tmpdir);
    write_file(p, s2, strlen(s2));
    nn_weights w;
    nn_err e;
    fx_ok(nn_weights_read(&w, tmpdir, &e), &e);
    const nn_weight_entry *a = nn_weights_find(&w, "a"), *b = nn_weights_find(&w, "b");
    assert_non_null(a);
    assert_non_null(b);
    const float *fa = a->data, *fb = b->data;
    assert_true(fabsf(fa[0] + 0.5f) < 1e-7f && fabsf(fa[1] + 0.25f) < 1e-7f && fabsf(fa[2]) < 1e-7f &&
                fabsf(fa[3] - 63.25f) < 1e-5f);
    assert_true(fb[0] == 1.5f);
    const nn_weight_meta *topo = nn_weights_meta(&w, NN_TFJS_TOPOLOGY_KEY);
    assert_non_null(topo);
    assert_non_null(strstr(topo->str, "\"trainable\":false"));
    assert_non_null(strstr(topo->str, "\"name\":\"m\""));
    assert_non_null(nn_weights_meta(&w, NN_TFJS_SHA256_KEY));
    nn_weights_free(&w);
    /* a shard that is missing, then one with fewer bytes than the manifest needs */
    snprintf(p, sizeof p, "%s/s2.min.js", tmpdir);
    unlink(p);
    fx_expect_error(nn_weights_read(&w, tmpdir, &e), &e, "weight shard");
    fx_expect_error(nn_weights_read(&w, tmpdir, &e), &e, "s2 is missing");
    const char *s2short = "h.exports=\"/wA=\"";
    write_file(p, s2short, strlen(s2short));
    fx_expect_error(nn_weights_read(&w, tmpdir, &e), &e, "but the shards hold");
    /* a bare word as a value (not data) is refused, not read as a string */
    const char *code = "n.exports={modelTopology:{a:NaN},weightsManifest:[]}";
    snprintf(p, sizeof p, "%s/model.min.js", tmpdir);
    write_file(p, code, strlen(code));
    fx_expect_error(nn_weights_read(&w, tmpdir, &e), &e, "unsupported JavaScript value 'NaN'");
    /* a folder without a model is named as such, and leaves w empty */
    unlink(p);
    fx_expect_error(nn_weights_read(&w, tmpdir, &e), &e, "a folder, but not a tfjs layers model");
    assert_int_equal(w.count, 0);
    nn_weights_free(&w);
    rm_tmpdir();
}

/* A tfjs model that is not InceptionV3 is refused with every missing key named, by the teacher
 * and before any work. */
static void refuses_other_tfjs_models(void **s)
{
    make_tmpdir();
    char p[512];
    const char *json = "{\"modelTopology\": {\"model_config\": {\"config\": {\"layers\": []}}},"
                       " \"weightsManifest\": [{\"paths\": [\"w.bin\"], \"weights\": ["
                       "{\"name\": \"conv2d_1/kernel\", \"shape\": [3, 3, 3, 16], \"dtype\": \"float32\","
                       " \"quantization\": {\"min\": 0, \"scale\": 1, \"dtype\": \"uint8\"}}]}]}";
    snprintf(p, sizeof p, "%s/model.json", tmpdir);
    write_file(p, json, strlen(json));
    char bytes[432] = {0};
    snprintf(p, sizeof p, "%s/w.bin", tmpdir);
    write_file(p, bytes, sizeof bytes);
    pgn_teacher t;
    nn_err e;
    assert_string_equal(pgn_teacher_kind_of_path(tmpdir), "inception3");
    int rc = pgn_teacher_open(&t, tmpdir, 0, &e);
    fx_expect_error(rc, &e, "not a usable InceptionV3 teacher");
    assert_non_null(strstr(e.msg, "key conv2d_1/kernel has shape [3, 3, 3, 16], expected [3, 3, 3, 32]"));
    assert_non_null(strstr(e.msg, "missing key batch_normalization_1/beta"));
    /* the whole report (the message above is cut at its buffer's size) */
    nn_weights w;
    fx_ok(nn_weights_read(&w, tmpdir, &e), &e);
    char report[16384];
    int problems = pgn_teacher_check_weights(&w, report, sizeof report);
    assert_true(problems > 100);
    assert_non_null(strstr(report, "missing key batch_normalization_26/moving_variance"));
    assert_non_null(strstr(report, "topology has no Conv2D layer conv2d_26"));
    assert_non_null(strstr(report, "topology layer mixed2 does not concatenate activation_20"));
    nn_weights_free(&w);
    /* naming the other teacher for these weights is refused too */
    fx_expect_error(pgn_teacher_open_named(&t, "vgg19", tmpdir, 0, &e), &e, "holds inception3 weights");
    fx_expect_error(pgn_teacher_open_named(&t, "resnet50", NULL, 0, &e), &e, "unknown teacher \"resnet50\"");
    rm_tmpdir();
}

/* The random inception3 teacher: a directional finite difference agrees with the gradient, each
 * sample's gradient is its own, and a too-small input is refused with the size it needs. */
static void random_gradient_matches_finite_differences(void **s)
{
    nn_err e;
    pgn_teacher t;
    fx_ok(pgn_teacher_open_named(&t, "inception3", NULL, 5, &e), &e);
    char d[256];
    assert_non_null(strstr(pgn_teacher_describe(&t, d, sizeof d), "inception3, " PGN_TEACHER_RANDOM_NOTE));
    const int n = 2, h = 48, w = 40;
    size_t one = (size_t)3 * h * w, count = n * one;
    float *x = malloc(count * 4), *y = malloc(count * 4), *g = malloc(count * 4), *g1 = malloc(count * 4);
    float *xp = malloc(count * 4), *xm = malloc(count * 4);
    nn_rng r;
    nn_rng_seed(&r, 21);
    for (size_t i = 0; i < count; i++) {
        x[i] = nn_rng_uniform(&r);
        y[i] = nn_rng_uniform(&r);
    }
    double ps[2], loss;
    fx_ok(pgn_teacher_loss_grad_pair(&ctx, &t, x, y, n, h, w, PGN_SPACE_UNIT, ps, &loss, g, &e), &e);
    assert_true(loss > 0 && fabs(ps[0] + ps[1] - loss) <= 1e-9 * loss);
    /* sample 1 alone gives sample 1's gradient */
    fx_ok(pgn_teacher_loss_grad_pair(&ctx, &t, x + one, y + one, 1, h, w, PGN_SPACE_UNIT, NULL, NULL, g1, &e), &e);
    fx_expect_close("per-sample gradient", g + one, g1, one, 1e-5);
    double eps = 1e-3, gg = 0;
    for (size_t i = 0; i < count; i++)
        gg += (double)g[i] * g[i];
    double k = eps / sqrt(gg), lp, lm;
    for (size_t i = 0; i < count; i++) {
        xp[i] = x[i] + (float)(k * g[i]);
        xm[i] = x[i] - (float)(k * g[i]);
    }
    fx_ok(pgn_teacher_loss_grad_pair(&ctx, &t, xp, y, n, h, w, PGN_SPACE_UNIT, NULL, &lp, NULL, &e), &e);
    fx_ok(pgn_teacher_loss_grad(&ctx, &t, xm, n, h, w, PGN_SPACE_UNIT, NULL, &lm, NULL, &e), &e);
    double fd = (lp - lm) / (2 * eps), analytic = sqrt(gg);
    print_message("inception3 directional derivative: finite difference %.6e, gradient norm %.6e\n", fd, analytic);
    assert_true(fabs(fd - analytic) <= 0.02 * analytic);
    fx_expect_error(pgn_teacher_set_target(&ctx, &t, y, 1, 26, 64, PGN_SPACE_UNIT, &e), &e,
                    "smaller than 27x27");
    free(x), free(y), free(g), free(g1), free(xp), free(xm);
    pgn_teacher_close(&t);
}

/* The C network with nsfwjs 4.4.0's weights against @tensorflow/tfjs-layers on the same model:
 * every tap within 1e-4 of its max |activation| (issue 7's bound), the loss and the gradient of
 * the perceptual loss too. */
static void matches_tfjs_layers(void **s)
{
    const char *dir = env_or("PGND_INCEPTION3_DIR", "var/teachers/inception3-nsfwjs-4.4.0");
    const char *fxp = env_or("PGND_INCEPTION3_TFJS", "build/fixtures/inception3_tfjs.safetensors");
    struct stat st;
    if (stat(dir, &st) || stat(fxp, &st))
        fail_msg("%s or %s is missing: run `make test` (it fetches nsfwjs 4.4.0 with tools/fetch_inception3.sh "
                 "and runs tests/fidelity/inception3_tfjs.mjs)", dir, fxp);
    nn_weights fx;
    nn_err e;
    fx_ok(nn_weights_read(&fx, fxp, &e), &e);
    const nn_weight_entry *xe = nn_weights_find(&fx, "x");
    assert_non_null(xe);
    int n = (int)xe->shape[0], h = (int)xe->shape[2], w = (int)xe->shape[3];
    pgn_teacher t;
    fx_ok(pgn_teacher_open(&t, dir, 0, &e), &e);
    assert_string_equal(t.name, "inception3");
    assert_int_equal(t.random, 0);
    char d[256];
    print_message("%s\n", pgn_teacher_describe(&t, d, sizeof d));
    const float *x = fx_get(&fx, "x", NULL), *y = fx_get(&fx, "y", NULL);
    fx_ok(inception3_forward(&ctx, &t.inc, x, n, h, w, &e), &e);
    for (int k = 0; k < INC3_TAPS; k++) {
        size_t cnt;
        const float *want = fx_get(&fx, inc3_tap_names[k], &cnt);
        const nn_act *a = inception3_tap(&t.inc, k);
        assert_int_equal(nn_act_count(a), cnt);
        float *got = fx_act_to(&ctx, a);
        print_message("%-12s [%d, %d, %d, %d] max error / max |activation| = %.2e\n", inc3_tap_names[k], a->n, a->c,
                      a->h, a->w, fx_rel_err(got, want, cnt));
        fx_expect_close(inc3_tap_names[k], got, want, cnt, 1e-4);
        free(got);
    }
    size_t count = (size_t)n * 3 * h * w;
    float *g = malloc(count * 4);
    double loss;
    fx_ok(pgn_teacher_loss_grad_pair(&ctx, &t, x, y, n, h, w, PGN_SPACE_PM1, NULL, &loss, g, &e), &e);
    double want_loss = fx_get(&fx, "loss", NULL)[0];
    print_message("loss %.7f (tfjs %.7f); gradient max error / max |g| = %.2e\n", loss, want_loss,
                  fx_rel_err(g, fx_get(&fx, "grad", NULL), count));
    assert_true(fabs(loss - want_loss) <= 1e-5 * want_loss);
    fx_expect_close("gradient", g, fx_get(&fx, "grad", NULL), count, 1e-4);
    free(g);
    pgn_teacher_close(&t);
    nn_weights_free(&fx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(reads_wrapped_tfjs_models),
        cmocka_unit_test(refuses_other_tfjs_models),
        cmocka_unit_test(random_gradient_matches_finite_differences),
        cmocka_unit_test(matches_tfjs_layers),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
