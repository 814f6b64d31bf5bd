/* Online PGN fitting (pgn/fit.h): parity of 10 steps with the PyTorch replica
 * (tools/fixtures_fit.py), exact resume of the job after a pause, validation against the MSE
 * direction, the exported checkpoint, and the errors a user can cause. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fixture.h"
#include "nn/rng.h"
#include "pgn/fit.h"
#include "pgn/image.h"
#include "pgn/pgn_net.h"
#include "pgn/shards.h"
#include "pgn/teacher.h"

/* ---- a folder of small synthetic photographs ---- */

static char data_dir[256];

static void write_images(const char *dir, int n, int w, int h, uint64_t seed)
{
    mkdir(dir, 0755);
    nn_rng r;
    nn_rng_seed(&r, seed);
    float *img = malloc((size_t)3 * w * h * sizeof(float));
    for (int k = 0; k < n; k++) {
        float fx = nn_rng_uniform_range(&r, 0.02f, 0.2f), fy = nn_rng_uniform_range(&r, 0.02f, 0.2f);
        for (int c = 0; c < 3; c++)
            for (int y = 0; y < h; y++)
                for (int x = 0; x < w; x++)
                    img[((size_t)c * h + y) * w + x] =
                        0.5f + 0.4f * sinf(fx * x * (c + 1) + fy * y + k) * cosf(fy * y * 0.7f + c);
        char path[512], err[256];
        snprintf(path, sizeof path, "%s/img%02d.png", dir, k);
        assert_int_equal(pgn_image_save_png(path, img, h, w, err, sizeof err), 0);
    }
    free(img);
}

static int setup_data(void **state)
{
    snprintf(data_dir, sizeof data_dir, "/tmp/pgnd-test-fit-%d", (int)getpid());
    mkdir(data_dir, 0755);
    char d[300];
    snprintf(d, sizeof d, "%s/photos", data_dir);
    write_images(d, 6, 96, 80, 1);
    snprintf(d, sizeof d, "%s/empty", data_dir);
    mkdir(d, 0755);
    return 0;
}

static int teardown_data(void **state)
{
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", data_dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* ---- a job runner that records metrics in memory and can pause at a step ---- */

#define MAXM 4096
typedef struct rec {
    char dir[300];
    int64_t pause_at;
    int64_t step_seen;
    int n;
    int64_t step[MAXM];
    char key[MAXM][40];
    double val[MAXM];
    char ck[600];
    int64_t ck_step;
    int artifacts, models;
} rec;

static int r_metrics(void *c, int64_t step, int n, const char *const *keys, const double *values)
{
    rec *r = c;
    for (int i = 0; i < n && r->n < MAXM; i++, r->n++) {
        r->step[r->n] = step;
        snprintf(r->key[r->n], sizeof r->key[0], "%s", keys[i]);
        r->val[r->n] = values[i];
    }
    return 0;
}
static int r_progress(void *c, int64_t step, int64_t total)
{
    ((rec *)c)->step_seen = step;
    return 0;
}
static int r_artifact(void *c, const char *name, const char *path, const char *kind, int64_t step)
{
    rec *r = c;
    r->artifacts++;
    r->models += !strcmp(kind, "model");
    assert_int_equal(access(path, R_OK), 0);
    return 0;
}
static int r_checkpoint(void *c, const char *path, int64_t step)
{
    rec *r = c;
    snprintf(r->ck, sizeof r->ck, "%s", path);
    r->ck_step = step;
    return 0;
}
static pgn_stop r_should_stop(void *c)
{
    rec *r = c;
    return r->pause_at > 0 && r->step_seen >= r->pause_at ? PGN_STOP_PAUSE : PGN_CONTINUE;
}
static void r_log(void *c, const char *level, const char *msg) {}

static pgn_job_io io_for(rec *r, const char *resume, int64_t resume_step)
{
    pgn_job_io io = {r, r->dir, 2, "", resume, resume_step, r_metrics, r_progress, r_artifact, r_checkpoint,
                     r_should_stop, r_log};
    return io;
}

static double metric(const rec *r, int64_t step, const char *key)
{
    for (int i = 0; i < r->n; i++)
        if (r->step[i] == step && !strcmp(r->key[i], key))
            return r->val[i];
    return NAN;
}

static void small_params(pgn_fit_params *p, const char *arch)
{
    pgn_fit_params_default(p);
    snprintf(p->data, sizeof p->data, "%s/photos", data_dir);
    snprintf(p->arch, sizeof p->arch, "%s", arch);
    p->size = 32;
    p->batch = 3;
    p->steps = 6;
    p->log_every = 1;
    p->val_every = 3;
    p->image_every = 0;
    p->checkpoint_every = 3;
    p->val_fraction = 0.34; /* 2 of 6 held out */
    p->seed = 7;
}

static double meta_num(const nn_weights *w, const char *key)
{
    const nn_weight_meta *m = nn_weights_meta(w, key);
    if (!m)
        fail_msg("fit.safetensors has no metadata %s", key);
    return atof(m->str);
}

static void expect_rel(const char *what, int step, double got, double want, double tol)
{
    double rel = fabs(got - want) / fmax(fabs(want), 1e-30);
    if (!(rel <= tol))
        fail_msg("step %d %s: pgnd %.9g, PyTorch %.9g (relative error %.2e > %.0e)", step, what, got, want, rel, tol);
}

/* Ten steps from the replica's start state (its UNet, autoencoders and teacher weights) on its
 * targets reproduce its losses, gradient statistics, clipping averages and autoencoder errors to a
 * relative 1e-3, and the raw gradient norms to 1e-2 (tools/fixtures_fit.py; lr 1e-4 there, see its
 * docstring). */
static void test_ten_steps_match_pytorch(void **state)
{
    nn_weights fx;
    fx_open(&fx, "fit.safetensors");
    pgn_fit_params p;
    pgn_fit_params_default(&p);
    snprintf(p.arch, sizeof p.arch, "unet");
    snprintf(p.init, sizeof p.init, "tests/fixtures/%s", nn_weights_meta(&fx, "pgn_weights")->str);
    p.size = (int)meta_num(&fx, "size");
    p.batch = (int)meta_num(&fx, "batch");
    p.lr = meta_num(&fx, "lr");
    p.ae_lr = meta_num(&fx, "ae_lr");
    p.w_grad = meta_num(&fx, "w_grad");
    p.w_proxy_perceptual = meta_num(&fx, "w_proxy_perceptual");
    p.w_proxy_l1 = meta_num(&fx, "w_proxy_l1");
    p.grad_scale = meta_num(&fx, "grad_scale");
    p.clip_factor = meta_num(&fx, "clip_factor");
    p.clip_init = meta_num(&fx, "clip_init");
    p.clip_ema_weight = meta_num(&fx, "clip_ema_weight");
    p.ae_plateau_samples = 1e18; /* no resets, as the replica */
    p.fast_teacher = 0;          /* the teacher's exact policy: direct forward, like the float64 replica */
    int steps = (int)meta_num(&fx, "steps");
    char teacher[300], aes[300];
    snprintf(teacher, sizeof teacher, "tests/fixtures/%s", nn_weights_meta(&fx, "teacher_weights")->str);
    snprintf(aes, sizeof aes, "%s", nn_weights_meta(&fx, "ae_weights")->str);
    nn_err e;
    pgn_fit *f;
    fx_ok(pgn_fit_open(&f, &p, teacher, 2, &e), &e);
    char *save = NULL, *tok = strtok_r(aes, ",", &save);
    for (int i = 0; i < 3; i++, tok = strtok_r(NULL, ",", &save)) {
        assert_non_null(tok);
        char path[300];
        snprintf(path, sizeof path, "tests/fixtures/%s", tok);
        fx_ok(pgn_fit_load_autoencoder(f, i, path, &e), &e);
    }
    const nn_weight_entry *yu = nn_weights_find(&fx, "y_u8");
    assert_non_null(yu);
    assert_int_equal(yu->dtype, NN_U8);
    size_t per = (size_t)p.batch * 3 * p.size * p.size, plane = (size_t)p.size * p.size;
    float *y = malloc(per * sizeof(float));
    const uint8_t *u8 = yu->data;
    const float *loss = fx_get(&fx, "loss", NULL), *gm = fx_get(&fx, "grad_mse", NULL);
    const float *pp = fx_get(&fx, "proxy_perceptual", NULL), *pl = fx_get(&fx, "proxy_l1", NULL);
    const float *cs = fx_get(&fx, "cos", NULL), *nr = fx_get(&fx, "norm_ratio", NULL), *re = fx_get(&fx, "rel_err", NULL);
    const float *mc = fx_get(&fx, "mse_cos", NULL), *mr = fx_get(&fx, "mse_rel_err", NULL);
    const float *pn = fx_get(&fx, "pgn_norm", NULL), *pa = fx_get(&fx, "pgn_avg", NULL);
    const float *an = fx_get(&fx, "ae_norm", NULL), *aa = fx_get(&fx, "ae_avg", NULL), *al = fx_get(&fx, "ae_l1", NULL);
    for (int k = 0; k < steps; k++) {
        for (size_t i = 0; i < per; i++) { /* (u8/255 - mean)/std in double, rounded to float */
            int c = (int)(i / plane % 3);
            y[i] = (float)(((double)u8[(size_t)k * per + i] / 255.0 - (double)pgn_imagenet_mean[c]) /
                           (double)pgn_imagenet_std[c]);
        }
        pgn_fit_stats st;
        fx_ok(pgn_fit_step(f, y, &st, &e), &e);
        print_message("step %d: loss %.6g (torch %.6g) cos %.5f (torch %.5f) pgn norm %.6g (torch %.6g)\n", k,
                      st.loss, loss[k], st.cos, cs[k], st.pgn_norm, pn[k]);
        expect_rel("loss", k, st.loss, loss[k], 1e-3);
        expect_rel("grad_mse", k, st.grad_mse, gm[k], 1e-3);
        expect_rel("proxy_perceptual", k, st.proxy_perceptual, pp[k], 1e-3);
        expect_rel("proxy_l1", k, st.proxy_l1, pl[k], 1e-3);
        expect_rel("cos", k, st.cos, cs[k], 1e-3);
        expect_rel("norm_ratio", k, st.norm_ratio, nr[k], 1e-3);
        expect_rel("rel_err", k, st.rel_err, re[k], 1e-3);
        expect_rel("mse_cos", k, st.mse_cos, mc[k], 1e-3);
        expect_rel("mse_rel_err", k, st.mse_rel_err, mr[k], 1e-3);
        /* Gradient norms are dominated by a few large entries and move with single ReLU decisions that
         * float32 takes the other way (the replica's own float32 run is 7.5e-4 off): 1e-2 for them. */
        expect_rel("pgn_norm", k, st.pgn_norm, pn[k], 1e-2);
        expect_rel("pgn_avg", k, st.pgn_avg, pa[k], 1e-3);
        expect_rel("ae_avg", k, st.ae_avg, aa[k], 1e-3);
        for (int i = 0; i < 3; i++) {
            expect_rel("ae_norm", k, st.ae_norm[i], an[k * 3 + i], 1e-2);
            expect_rel("ae_l1", k, st.ae_l1[i], al[k * 3 + i], 1e-3);
        }
    }
    free(y);
    pgn_fit_close(f);
    nn_weights_free(&fx);
}

/* A fit paused after step 4 (checkpoint at 4) and resumed reproduces the uninterrupted run's
 * metrics at steps 5 and 6 exactly: weights, Adam moments, BN statistics, clipping averages, RNGs
 * and the data sampler all come back. */
static void test_resume_is_exact(void **state)
{
    pgn_fit_params p;
    small_params(&p, "resnet4");
    static rec a, b;
    memset(&a, 0, sizeof a), memset(&b, 0, sizeof b);
    snprintf(a.dir, sizeof a.dir, "%s/run-a", data_dir);
    snprintf(b.dir, sizeof b.dir, "%s/run-b", data_dir);
    mkdir(a.dir, 0755), mkdir(b.dir, 0755);
    char err[1024] = "";
    pgn_job_io io = io_for(&a, NULL, 0);
    int rc = pgn_fit_run(&p, &io, err, sizeof err);
    if (rc != PGN_DONE)
        fail_msg("uninterrupted fit: %s", err);
    assert_int_equal(a.models, 1);
    assert_false(isnan(metric(&a, 3, "val.cos")));
    assert_false(isnan(metric(&a, 0, "val.mse_dir_cos")));
    b.pause_at = 4;
    io = io_for(&b, NULL, 0);
    assert_int_equal(pgn_fit_run(&p, &io, err, sizeof err), PGN_STOPPED);
    assert_int_equal(b.ck_step, 4);
    b.pause_at = 0;
    char ck[600];
    snprintf(ck, sizeof ck, "%s", b.ck);
    io = io_for(&b, ck, 4);
    rc = pgn_fit_run(&p, &io, err, sizeof err);
    if (rc != PGN_DONE)
        fail_msg("resumed fit: %s", err);
    static const char *const keys[] = {"loss", "loss_grad_mse", "loss_proxy_perceptual", "loss_proxy_l1",
                                       "grad_cos", "pgn_grad_norm", "pgn_clip_avg", "ae_clip_avg", "ae0_l1",
                                       "ae2_l1", "val.cos", "val.ae.rel_err", "val.blur.cos"};
    for (int64_t s = 5; s <= 6; s++)
        for (size_t k = 0; k < sizeof keys / sizeof *keys; k++) {
            double x = metric(&a, s, keys[k]), y = metric(&b, s, keys[k]);
            if (isnan(x) && !strncmp(keys[k], "val.", 4))
                continue; /* validation only at 3 and 6 */
            if (!(x == y))
                fail_msg("step %lld %s: uninterrupted %.17g, resumed %.17g", (long long)s, keys[k], x, y);
        }
    /* the loss moved: the fit is doing something */
    assert_true(metric(&a, 6, "loss") != metric(&a, 1, "loss"));
    /* the last training checkpoint (step 6) predicts exactly what the exported PGN predicts */
    char fin[400];
    snprintf(fin, sizeof fin, "%s/pgn-final.safetensors", a.dir);
    pgn_net n1, n2;
    nn_err e;
    fx_ok(pgn_net_load(&n1, fin, &e), &e);
    fx_ok(pgn_net_load(&n2, a.ck, &e), &e);
    size_t cnt = (size_t)3 * 32 * 32;
    float *yh = calloc(cnt, sizeof(float)), *yy = calloc(cnt, sizeof(float));
    float *g1 = malloc(cnt * sizeof(float)), *g2 = malloc(cnt * sizeof(float));
    for (size_t i = 0; i < cnt; i++)
        yh[i] = 0.5f * sinf(0.1f * (float)i), yy[i] = 0.4f * cosf(0.07f * (float)i);
    nn_ctx ctx;
    fx_ok(nn_ctx_init(&ctx, 2, &e), &e);
    fx_ok(pgn_net_predict(&ctx, &n1, yh, yy, 1, 32, 32, NULL, g1, &e), &e);
    fx_ok(pgn_net_predict(&ctx, &n2, yh, yy, 1, 32, 32, NULL, g2, &e), &e);
    assert_memory_equal(g1, g2, cnt * sizeof(float));
    pgn_net_free(&n1), pgn_net_free(&n2);
    nn_ctx_free(&ctx);
    free(yh), free(yy), free(g1), free(g2);
}

/* Validation compares the PGN with the MSE direction on the same pairs; the blur pairs' MSE
 * direction is a good predictor (positive cosine), and the numbers are finite. */
static void test_validation_and_export(void **state)
{
    pgn_fit_params p;
    small_params(&p, "unet");
    nn_err e;
    pgn_fit *f;
    fx_ok(pgn_fit_open(&f, &p, NULL, 2, &e), &e);
    size_t cnt = (size_t)3 * 32 * 32;
    float *y = malloc(3 * cnt * sizeof(float));
    char path[400], err[256];
    for (int i = 0; i < 3; i++) {
        float *img;
        snprintf(path, sizeof path, "%s/photos/img%02d.png", data_dir, i);
        assert_int_equal(pgn_image_load_square(path, 32, &img, err, sizeof err), 0);
        pgn_to_normalised(y + i * cnt, img, 1, 32, 32, PGN_SPACE_UNIT);
        free(img);
    }
    pgn_fit_stats st;
    fx_ok(pgn_fit_step(f, y, &st, &e), &e);
    assert_true(isfinite(st.loss) && st.loss > 0);
    assert_true(st.cos >= -1 && st.cos <= 1);
    assert_true(st.mse_cos > 0);
    assert_true(st.g_true_pct[0] <= st.g_true_pct[1] && st.g_true_pct[1] <= st.g_true_pct[2]);
    pgn_fit_val v;
    fx_ok(pgn_fit_validate(f, y, 3, &v, &e), &e);
    assert_int_equal(v.ae.n, 9);
    assert_int_equal(v.blur.n, 3);
    assert_int_equal(v.all.n, 12);
    assert_true(v.blur.mse_cos > 0.2);
    assert_true(isfinite(v.all.cos) && isfinite(v.all.rel_err));
    /* the exported PGN loads for prediction and predicts what the fit's eval mode predicts */
    snprintf(path, sizeof path, "%s/export.safetensors", data_dir);
    fx_ok(pgn_fit_export(f, path, &e), &e);
    pgn_net net;
    fx_ok(pgn_net_load(&net, path, &e), &e);
    assert_non_null(net.unet);
    assert_float_equal(net.head.grad_scale, 0.048f, 1e-9);
    float *g1 = malloc(cnt * sizeof(float)), *p1 = malloc(cnt * sizeof(float));
    nn_ctx ctx;
    fx_ok(nn_ctx_init(&ctx, 2, &e), &e);
    /* the blur validation's last pair is (blur(y2), y2); recompute the fit's prediction for it */
    float *yh = malloc(cnt * sizeof(float));
    memcpy(yh, y + 2 * cnt, cnt * sizeof(float));
    for (size_t i = 0; i < cnt; i++)
        yh[i] *= 0.9f;
    fx_ok(pgn_net_predict(&ctx, &net, yh, y + 2 * cnt, 1, 32, 32, p1, g1, &e), &e);
    pgn_fit_val v2;
    fx_ok(pgn_fit_validate(f, y, 3, &v2, &e), &e); /* validation changes nothing the PGN uses */
    assert_float_equal(v2.blur.cos, v.blur.cos, 1e-6);
    double norm = 0;
    for (size_t i = 0; i < cnt; i++)
        norm += (double)g1[i] * g1[i];
    assert_true(norm > 0 && isfinite(norm));
    pgn_net_free(&net);
    nn_ctx_free(&ctx);
    pgn_fit_close(f);
    free(y), free(yh), free(g1), free(p1);
}

/* A collection of two shards written here from the random teacher: (y_hat, y, g_true) at 32x32. */
static void write_collection(const char *dir, int size)
{
    mkdir(dir, 0755);
    nn_err e;
    pgn_teacher t;
    fx_ok(pgn_teacher_open(&t, NULL, 0, &e), &e);
    nn_ctx ctx;
    fx_ok(nn_ctx_init(&ctx, 2, &e), &e);
    pgn_collection_info info;
    memset(&info, 0, sizeof info);
    pgn_teacher_describe(&t, info.teacher, sizeof info.teacher);
    snprintf(info.teacher_name, sizeof info.teacher_name, "%s", t.name);
    info.teacher_seed = t.seed;
    snprintf(info.space, sizeof info.space, PGN_SPACE_NAME_NORMALISED);
    info.size = size;
    info.seed = 3;
    info.samples_per_shard = 6;
    info.samples_wanted = 12;
    info.batch = 3;
    snprintf(info.generators, sizeof info.generators, "test");
    snprintf(info.generator_precision, sizeof info.generator_precision, "f32");
    snprintf(info.driver, sizeof info.driver, "teacher");
    snprintf(info.version, sizeof info.version, PGND_VERSION);
    int n = 6;
    size_t cnt = (size_t)3 * size * size;
    float *y = malloc(n * cnt * sizeof(float)), *yh = malloc(n * cnt * sizeof(float)), *g = malloc(n * cnt * sizeof(float));
    float loss[6];
    double per[6];
    pgn_shard_entry ent[2];
    nn_rng r;
    nn_rng_seed(&r, 11);
    for (int k = 0; k < 2; k++) {
        for (size_t i = 0; i < n * cnt; i++) {
            y[i] = nn_rng_uniform_range(&r, -1.5f, 1.5f);
            yh[i] = 0.7f * y[i] + nn_rng_uniform_range(&r, -0.3f, 0.3f);
        }
        fx_ok(pgn_teacher_loss_grad_pair(&ctx, &t, yh, y, n, size, size, PGN_SPACE_NORMALISED, per, NULL, g, &e), &e);
        for (int i = 0; i < n; i++)
            loss[i] = (float)per[i];
        fx_ok(pgn_shard_write(dir, &info, k, n, yh, y, g, loss, &ent[k], &e), &e);
    }
    fx_ok(pgn_manifest_write(dir, &info, ent, 2, 1, &e), &e);
    free(y), free(yh), free(g);
    nn_ctx_free(&ctx);
    pgn_teacher_close(&t);
}

/* A fit from a collection steps on the stored pairs, resumes exactly (the reader's position is in
 * the checkpoint), and refuses a collection made at another crop size, naming it. */
static void test_fit_from_collection(void **state)
{
    char coll[300];
    snprintf(coll, sizeof coll, "%s/collection", data_dir);
    write_collection(coll, 32);
    pgn_fit_params p;
    small_params(&p, "resnet4");
    p.data[0] = 0;
    snprintf(p.collection, sizeof p.collection, "%s", coll);
    snprintf(p.val_data, sizeof p.val_data, "%s/photos", data_dir);
    p.steps = 5; /* 15 samples: across both shards and into the second epoch */
    p.image_every = 5;
    static rec a, b;
    memset(&a, 0, sizeof a), memset(&b, 0, sizeof b);
    snprintf(a.dir, sizeof a.dir, "%s/coll-a", data_dir);
    snprintf(b.dir, sizeof b.dir, "%s/coll-b", data_dir);
    mkdir(a.dir, 0755), mkdir(b.dir, 0755);
    char err[1024] = "";
    pgn_job_io io = io_for(&a, NULL, 0);
    if (pgn_fit_run(&p, &io, err, sizeof err) != PGN_DONE)
        fail_msg("fit from a collection: %s", err);
    assert_true(isfinite(metric(&a, 5, "loss")) && metric(&a, 5, "loss") > 0);
    assert_true(metric(&a, 1, "ae0_l1") == 0); /* no autoencoders ran */
    char png[400];
    snprintf(png, sizeof png, "%s/fields-blur-step00000005.png", a.dir);
    assert_int_equal(access(png, R_OK), 0);
    b.pause_at = 2;
    io = io_for(&b, NULL, 0);
    assert_int_equal(pgn_fit_run(&p, &io, err, sizeof err), PGN_STOPPED);
    b.pause_at = 0;
    char ck[600];
    snprintf(ck, sizeof ck, "%s", b.ck);
    io = io_for(&b, ck, b.ck_step);
    if (pgn_fit_run(&p, &io, err, sizeof err) != PGN_DONE)
        fail_msg("resumed fit from a collection: %s", err);
    for (int64_t s = 3; s <= 5; s++)
        for (const char *k = "loss"; k; k = !strcmp(k, "loss") ? "grad_cos" : !strcmp(k, "grad_cos") ? "pgn_grad_norm" : NULL)
            if (!(metric(&a, s, k) == metric(&b, s, k)))
                fail_msg("step %lld %s: uninterrupted %.17g, resumed %.17g", (long long)s, k, metric(&a, s, k),
                         metric(&b, s, k));
    /* a collection made at 32x32 is refused by a 64x64 fit, naming both */
    p.size = 64;
    io = io_for(&a, NULL, 0);
    assert_int_equal(pgn_fit_run(&p, &io, err, sizeof err), PGN_FAILED);
    if (!strstr(err, "32") || !strstr(err, "64"))
        fail_msg("size mismatch message: %s", err);
}

static void test_bad_input(void **state)
{
    pgn_fit_params p;
    nn_err e;
    pgn_fit *f;
    small_params(&p, "resnet5x");
    fx_expect_error(pgn_fit_open(&f, &p, NULL, 1, &e), &e, "arch 'resnet5x' is not one of");
    small_params(&p, "unet");
    p.batch = 4;
    fx_expect_error(pgn_fit_open(&f, &p, NULL, 1, &e), &e, "batch 4 must be a positive multiple of 3");
    small_params(&p, "unet");
    p.size = 48;
    fx_expect_error(pgn_fit_open(&f, &p, NULL, 1, &e), &e, "size 48 must be a positive multiple of 32");
    small_params(&p, "resnet4");
    snprintf(p.init, sizeof p.init, "tests/fixtures/pgn_unet_legacy.pth");
    fx_expect_error(pgn_fit_open(&f, &p, NULL, 1, &e), &e, "missing key");
    /* an empty and a missing folder: clear errors before any work */
    static rec r;
    memset(&r, 0, sizeof r);
    snprintf(r.dir, sizeof r.dir, "%s", data_dir);
    pgn_job_io io = io_for(&r, NULL, 0);
    char err[1024];
    small_params(&p, "resnet4");
    snprintf(p.data, sizeof p.data, "%s/empty", data_dir);
    assert_int_equal(pgn_fit_run(&p, &io, err, sizeof err), PGN_FAILED);
    assert_non_null(strstr(err, "no PNG or JPEG images found"));
    snprintf(p.data, sizeof p.data, "%s/nowhere", data_dir);
    assert_int_equal(pgn_fit_run(&p, &io, err, sizeof err), PGN_FAILED);
    assert_non_null(strstr(err, "cannot open"));
    assert_int_equal(r.n, 0);
    /* resuming from a checkpoint of another architecture names the mismatch */
    small_params(&p, "resnet4");
    fx_ok(pgn_fit_open(&f, &p, NULL, 1, &e), &e);
    char path[400];
    snprintf(path, sizeof path, "%s/ck-resnet4.safetensors", data_dir);
    fx_ok(pgn_fit_save(f, path, NULL, &e), &e);
    pgn_fit_close(f);
    small_params(&p, "resnet6");
    fx_ok(pgn_fit_open(&f, &p, NULL, 1, &e), &e);
    fx_expect_error(pgn_fit_load(f, path, NULL, &e), &e, "arch resnet4, size 32, batch 3; this one has resnet6");
    fx_expect_error(pgn_fit_load(f, "tests/fixtures/pgn_unet_legacy.pth", NULL, &e), &e, "not a pgnd fit checkpoint");
    pgn_fit_close(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_ten_steps_match_pytorch),
        cmocka_unit_test(test_validation_and_export),
        cmocka_unit_test(test_resume_is_exact),
        cmocka_unit_test(test_fit_from_collection),
    };
    return cmocka_run_group_tests(tests, setup_data, teardown_data);
}
