/* Teacher-gradient collection (pgn/collect.h, pgn/shards.h): a tiny collect's shards and manifest
 * read back sample by sample, the stored gradient against the teacher's, a corrupted shard
 * reported and skipped, a collection from another teacher refused, an interrupted collect resumed
 * into exactly the shards an uninterrupted one writes, and the errors a user can cause. */
#include <dirent.h>
#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon/jobtype_list.h"
#include "fixture.h"
#include "nn/rng.h"
#include "nn/sha256.h"
#include "nn/weights.h"
#include "pgn/collect.h"
#include "pgn/image.h"
#include "pgn/shards.h"
#include "pgn/teacher.h"

#define SIZE 16
#define CNT ((size_t)3 * SIZE * SIZE)
#define TOTAL 17 /* shards of 5: 5, 5, 5, 2; batch 3, so steps straddle shards */
#define PER_SHARD 5

static char base[256], photos[300], dir_a[300];

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

static int setup(void **state)
{
    snprintf(base, sizeof base, "/tmp/pgnd-test-collect-%d", (int)getpid());
    mkdir(base, 0755);
    snprintf(photos, sizeof photos, "%s/photos", base);
    write_images(photos, 5, 72, 64, 2);
    char d[400];
    snprintf(d, sizeof d, "%s/empty", base);
    mkdir(d, 0755);
    snprintf(dir_a, sizeof dir_a, "%s/a", base);
    return 0;
}

static int teardown(void **state)
{
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", base);
    return system(cmd) == 0 ? 0 : -1;
}

/* ---- a runner that records what the job reports and can pause ---- */

typedef struct rec {
    char dir[300];
    int64_t pause_at;  /* pause once progress reaches this many samples (0: never) */
    int64_t seen;
    int metrics, checkpoints, shards_published;
    double last_samples_per_s, dropped;
    char ck[600];
    int64_t ck_step;
} rec;

static int r_metrics(void *c, int64_t step, int n, const char *const *keys, const double *values)
{
    rec *r = c;
    r->metrics++;
    for (int i = 0; i < n; i++)
        if (!strcmp(keys[i], "samples_per_s"))
            r->last_samples_per_s = values[i];
        else if (!strcmp(keys[i], "dropped_nonfinite"))
            r->dropped = values[i];
    return 0;
}
static int r_progress(void *c, int64_t step, int64_t total)
{
    ((rec *)c)->seen = step;
    return 0;
}
static int r_artifact(void *c, const char *name, const char *path, const char *kind, int64_t step)
{
    rec *r = c;
    r->shards_published += !strcmp(kind, "shard");
    assert_int_equal(access(path, R_OK), 0);
    return 0;
}
static int r_checkpoint(void *c, const char *path, int64_t step)
{
    rec *r = c;
    assert_int_equal(access(path, R_OK), 0); /* recorded only once synced and in place */
    snprintf(r->ck, sizeof r->ck, "%s", path);
    r->ck_step = step;
    r->checkpoints++;
    return 0;
}
static pgn_stop r_should_stop(void *c)
{
    rec *r = c;
    return r->pause_at > 0 && r->seen >= r->pause_at ? PGN_STOP_PAUSE : PGN_CONTINUE;
}
static void r_log(void *c, const char *level, const char *msg) {}

/* *r emptied, its folder base/name made. */
static void rec_in(rec *r, const char *name)
{
    memset(r, 0, sizeof *r);
    snprintf(r->dir, sizeof r->dir, "%s/%s", base, name);
    mkdir(r->dir, 0755);
}

static pgn_job_io io_for(rec *r, const char *resume, int64_t resume_step)
{
    pgn_job_io io = {r, r->dir, 2, "", resume, resume_step, r_metrics, r_progress, r_artifact, r_checkpoint,
                     r_should_stop, r_log};
    return io;
}

static void small_params(pgn_collect_params *p)
{
    pgn_collect_params_default(p);
    snprintf(p->data, sizeof p->data, "%s", photos);
    p->size = SIZE;
    p->batch = 3;
    p->samples = TOTAL;
    p->samples_per_shard = PER_SHARD;
    p->seed = 3;
}

/* No temporary file left in dir: every shard and checkpoint was synced and renamed into place. */
static void no_tmp_files(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    for (struct dirent *de; (de = readdir(d));)
        if (strstr(de->d_name, ".tmp-"))
            fail_msg("%s: temporary file left behind: %s", dir, de->d_name);
    closedir(d);
}

/* Collection A: the uninterrupted reference, made once. */
static void ensure_a(void)
{
    char m[400];
    snprintf(m, sizeof m, "%s/%s", dir_a, PGN_MANIFEST_NAME);
    if (!access(m, F_OK))
        return;
    mkdir(dir_a, 0755);
    pgn_collect_params p;
    small_params(&p);
    static rec a;
    memset(&a, 0, sizeof a);
    snprintf(a.dir, sizeof a.dir, "%s", dir_a);
    pgn_job_io io = io_for(&a, NULL, 0);
    char err[1024] = "";
    if (pgn_collect_run(&p, &io, err, sizeof err) != PGN_DONE)
        fail_msg("collect: %s", err);
    assert_int_equal(a.checkpoints, 4);
    assert_int_equal(a.shards_published, 4);
    assert_int_equal(a.metrics, 4);
    assert_int_equal(a.ck_step, TOTAL);
    assert_true(a.last_samples_per_s > 0);
    no_tmp_files(dir_a);
}

static void expect_random_teacher(pgn_collection_expect *x, uint64_t seed)
{
    static char desc[300];
    snprintf(desc, sizeof desc, "vgg19, %s (seed %llu)", PGN_TEACHER_RANDOM_NOTE, (unsigned long long)seed);
    memset(x, 0, sizeof *x);
    x->teacher = desc;
    x->teacher_name = "vgg19";
    x->teacher_sha256 = "";
    x->teacher_seed = seed;
    x->space = PGN_SPACE_NAME_NORMALISED;
    x->size = SIZE;
}

static void sha_of(const char *dir, int shard, char hex[65])
{
    char name[64], path[400];
    pgn_shard_name(name, sizeof name, shard);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (nn_sha256_file(path, hex))
        fail_msg("cannot read %s", path);
}

/* ---- tests ---- */

static void test_round_trip(void **state)
{
    ensure_a();
    pgn_collection_info info;
    pgn_shard_entry *sh;
    int n, complete;
    nn_err e;
    fx_ok(pgn_manifest_read(dir_a, &info, &sh, &n, &complete, &e), &e);
    assert_int_equal(n, 4);
    assert_true(complete);
    static const int counts[4] = {5, 5, 5, 2};
    for (int i = 0; i < 4; i++) {
        char hex[65];
        assert_int_equal(sh[i].count, counts[i]);
        sha_of(dir_a, i, hex);
        assert_string_equal(hex, sh[i].sha256);
    }
    assert_string_equal(info.space, "normalised");
    assert_string_equal(info.teacher_sha256, "");
    assert_string_equal(info.teacher_name, "vgg19");
    assert_string_equal(info.generators, "ae0,ae1,ae2");
    /* the default: the generators in bf16 where this CPU has bf16 kernels */
    nn_ctx pctx;
    fx_ok(nn_ctx_init(&pctx, 2, &e), &e);
    const char *precision = nn_conv2d_bf16_native(&pctx) ? "bf16" : "f32";
    nn_ctx_free(&pctx);
    assert_string_equal(info.generator_precision, precision);
    /* a manifest written before the field existed reads as f32; another value is refused */
    {
        char mpath[400], opath[400], odir[300];
        snprintf(mpath, sizeof mpath, "%s/%s", dir_a, PGN_MANIFEST_NAME);
        snprintf(odir, sizeof odir, "%s/oldmanifest", base);
        mkdir(odir, 0755);
        snprintf(opath, sizeof opath, "%s/%s", odir, PGN_MANIFEST_NAME);
        json_t *m = json_load_file(mpath, 0, NULL);
        assert_non_null(m);
        assert_int_equal(json_object_del(m, "generator_precision"), 0);
        assert_int_equal(json_dump_file(m, opath, 0), 0);
        pgn_collection_info old;
        pgn_shard_entry *osh;
        int on, oc;
        fx_ok(pgn_manifest_read(odir, &old, &osh, &on, &oc, &e), &e);
        assert_string_equal(old.generator_precision, "f32");
        free(osh);
        json_object_set_new(m, "generator_precision", json_string("fp16"));
        assert_int_equal(json_dump_file(m, opath, 0), 0);
        fx_expect_error(pgn_manifest_read(odir, &old, &osh, &on, &oc, &e), &e,
                        "field 'generator_precision' is 'fp16', not bf16 or f32");
        json_decref(m);
    }
    assert_int_equal(info.size, SIZE);
    assert_int_equal(info.seed, 3);
    assert_int_equal(info.samples_wanted, TOTAL);
    assert_string_equal(info.version, PGND_VERSION);

    /* every shard's own tensors, to check what the reader returns */
    nn_weights w[4];
    char path[400];
    for (int i = 0; i < 4; i++) {
        snprintf(path, sizeof path, "%s/%s", dir_a, sh[i].file);
        fx_ok(nn_weights_read(&w[i], path, &e), &e);
        assert_string_equal(nn_weights_meta(&w[i], "format")->str, PGN_SHARD_FORMAT);
        assert_string_equal(nn_weights_meta(&w[i], "space")->str, "normalised");
        assert_string_equal(nn_weights_meta(&w[i], "teacher_sha256")->str, "");
        assert_string_equal(nn_weights_meta(&w[i], "pgnd_version")->str, PGND_VERSION);
        assert_int_equal(atoi(nn_weights_meta(&w[i], "shard")->str), i);
        assert_int_equal(atoi(nn_weights_meta(&w[i], "count")->str), counts[i]);
        assert_int_equal(atoi(nn_weights_meta(&w[i], "size")->str), SIZE);
        assert_string_equal(nn_weights_meta(&w[i], "generator_precision")->str, precision);
    }

    pgn_collection_expect want;
    expect_random_teacher(&want, 0);
    pgn_shards *r;
    fx_ok(pgn_shards_open(&r, dir_a, &want, 11, NULL, NULL, &e), &e);
    assert_int_equal(pgn_shards_samples(r), TOTAL);
    float *yh = malloc(4 * CNT * sizeof(float)), *y = malloc(4 * CNT * sizeof(float)), *g = malloc(4 * CNT * sizeof(float));
    float loss[4];
    pgn_shard_sample from[4], first[TOTAL];
    for (int epoch = 0; epoch < 2; epoch++) {
        int seen[4][PER_SHARD] = {{0}};
        for (int got = 0; got < TOTAL;) {
            int b = TOTAL - got < 4 ? TOTAL - got : 4; /* batches cross shard boundaries */
            fx_ok(pgn_shards_next_batch_ex(r, b, yh, y, g, loss, from, &e), &e);
            for (int k = 0; k < b; k++) {
                int s = from[k].shard, row = from[k].row;
                assert_true(s >= 0 && s < 4 && row >= 0 && row < counts[s]);
                seen[s][row]++;
                if (epoch == 0)
                    first[got + k] = from[k];
                const char *names[3] = {"y_hat", "y", "g_true"};
                const float *mine[3] = {yh + k * CNT, y + k * CNT, g + k * CNT};
                for (int t = 0; t < 3; t++) {
                    const nn_weight_entry *en = nn_weights_find(&w[s], names[t]);
                    assert_non_null(en);
                    assert_memory_equal(mine[t], (const float *)en->data + (size_t)row * CNT, CNT * sizeof(float));
                }
                assert_true(loss[k] == ((const float *)nn_weights_find(&w[s], "loss")->data)[row]);
            }
            got += b;
        }
        for (int s = 0; s < 4; s++)
            for (int row = 0; row < counts[s]; row++)
                if (seen[s][row] != 1)
                    fail_msg("epoch %d: shard %d row %d returned %d times", epoch, s, row, seen[s][row]);
    }
    /* the position resumes the exact order, also in a new reader */
    pgn_shards_pos pos = pgn_shards_get_pos(r);
    assert_int_equal(pos.served, 2 * TOTAL);
    pgn_shard_sample a[7], b[7];
    fx_ok(pgn_shards_next_batch_ex(r, 7, NULL, NULL, NULL, NULL, a, &e), &e);
    char text[128];
    pgn_shards_pos_format(&pos, text, sizeof text);
    pgn_shards_pos back;
    assert_int_equal(pgn_shards_pos_parse(text, &back), 0);
    pgn_shards *r2;
    fx_ok(pgn_shards_open(&r2, dir_a, &want, 11, NULL, NULL, &e), &e);
    fx_ok(pgn_shards_set_pos(r2, &back, &e), &e);
    fx_ok(pgn_shards_next_batch_ex(r2, 7, NULL, NULL, NULL, NULL, b, &e), &e);
    for (int k = 0; k < 7; k++)
        assert_true(a[k].shard == b[k].shard && a[k].row == b[k].row);
    /* shuffled: the first epoch is not the files' order */
    int in_order = 1;
    for (int k = 0; k < TOTAL && in_order; k++)
        in_order = first[k].shard == k / PER_SHARD && first[k].row == k % PER_SHARD;
    assert_false(in_order);
    pgn_shards_close(r2);

    /* g_true and the loss are the teacher's at (y_hat, y), recomputed here for one sample */
    fx_ok(pgn_shards_next_batch_ex(r, 1, yh, y, g, loss, from, &e), &e);
    pgn_teacher t;
    nn_ctx ctx;
    fx_ok(nn_ctx_init(&ctx, 2, &e), &e);
    fx_ok(pgn_teacher_open(&t, NULL, 0, &e), &e);
    double per[1];
    float *g2 = malloc(CNT * sizeof(float));
    fx_ok(pgn_teacher_loss_grad_pair(&ctx, &t, yh, y, 1, SIZE, SIZE, PGN_SPACE_NORMALISED, per, NULL, g2, &e), &e);
    print_message("sample (shard %d, row %d): loss %.7g, recomputed %.7g; g_true rel err %.2e\n", from[0].shard,
                  from[0].row, loss[0], per[0], fx_rel_err(g, g2, CNT));
    assert_true(fabs(per[0] - loss[0]) <= 1e-5 * fabs(per[0]));
    fx_expect_close("g_true", g, g2, CNT, 1e-4);
    double norm = 0;
    for (size_t i = 0; i < CNT; i++)
        norm += (double)g[i] * g[i];
    assert_true(norm > 0);
    pgn_teacher_close(&t);
    nn_ctx_free(&ctx);
    pgn_shards_close(r);
    for (int i = 0; i < 4; i++)
        nn_weights_free(&w[i]);
    free(yh), free(y), free(g), free(g2), free(sh);
}

typedef struct skips {
    int n;
    char file[8][64];
    char why[8][512];
} skips;

static void on_skip(void *ctx, const char *file, const char *why)
{
    skips *s = ctx;
    if (s->n < 8) {
        snprintf(s->file[s->n], sizeof s->file[0], "%s", file);
        snprintf(s->why[s->n], sizeof s->why[0], "%s", why);
    }
    s->n++;
}

static void flip_byte(const char *dir, int shard, long from_end)
{
    char name[64], path[400];
    pgn_shard_name(name, sizeof name, shard);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "r+b");
    assert_non_null(f);
    assert_int_equal(fseek(f, -from_end, SEEK_END), 0);
    int c = fgetc(f);
    assert_int_equal(fseek(f, -from_end, SEEK_END), 0);
    fputc(c ^ 0x01, f);
    fclose(f);
}

static void test_corrupt_shard_is_skipped(void **state)
{
    ensure_a();
    char dir_c[300], cmd[1000];
    snprintf(dir_c, sizeof dir_c, "%s/c", base);
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && cp -r '%s' '%s'", dir_c, dir_a, dir_c);
    assert_int_equal(system(cmd), 0);
    flip_byte(dir_c, 1, 40); /* one bit of one g_true/loss value */
    skips s = {0};
    pgn_collection_expect want;
    expect_random_teacher(&want, 0);
    pgn_shards *r;
    nn_err e;
    fx_ok(pgn_shards_open(&r, dir_c, &want, 5, on_skip, &s, &e), &e);
    pgn_shard_sample from[TOTAL];
    /* three epochs' worth of the good samples: shard 1 never appears, reported once */
    for (int rep = 0; rep < 3; rep++) {
        fx_ok(pgn_shards_next_batch_ex(r, TOTAL - PER_SHARD, NULL, NULL, NULL, NULL, from, &e), &e);
        for (int k = 0; k < TOTAL - PER_SHARD; k++)
            assert_int_not_equal(from[k].shard, 1);
    }
    assert_int_equal(s.n, 1);
    assert_string_equal(s.file[0], "shard-000001.safetensors");
    assert_non_null(strstr(s.why[0], "does not match the manifest"));
    assert_int_equal(pgn_shards_skipped(r), 1);
    assert_true(pgn_shards_is_bad(r, 1));
    pgn_shards_close(r);
    /* every shard bad: an error, not an endless loop */
    for (int i = 0; i < 4; i++)
        if (i != 1)
            flip_byte(dir_c, i, 8);
    memset(&s, 0, sizeof s);
    fx_ok(pgn_shards_open(&r, dir_c, &want, 5, on_skip, &s, &e), &e);
    float *yh = malloc(CNT * sizeof(float));
    char needle[500];
    snprintf(needle, sizeof needle, "every shard of collection %s is unusable (4 skipped)", dir_c);
    fx_expect_error(pgn_shards_next_batch(r, 1, yh, NULL, NULL, &e), &e, needle);
    assert_int_equal(s.n, 4);
    free(yh);
    pgn_shards_close(r);
}

static void test_teacher_mismatch_is_refused(void **state)
{
    ensure_a();
    pgn_collection_expect want;
    pgn_shards *r;
    nn_err e;
    char needle[600];
    /* a fit with real VGG-19 weights */
    expect_random_teacher(&want, 0);
    want.teacher = "vgg19, weights vgg19-dcbb9e9d.pth (sha256 ab12cd34ef567890...)";
    want.teacher_sha256 = "ab12cd34ef5678900000000000000000000000000000000000000000000000ff";
    snprintf(needle, sizeof needle, "collection %s was made with teacher 'vgg19, %s (seed 0)'", dir_a,
             PGN_TEACHER_RANDOM_NOTE);
    fx_expect_error(pgn_shards_open(&r, dir_a, &want, 0, NULL, NULL, &e), &e, needle);
    fx_expect_error(-1, &e, "this fit uses 'vgg19, weights vgg19-dcbb9e9d.pth (sha256 ab12cd34ef567890...)' (weights sha256 ab12cd34ef5678900000");
    assert_null(r);
    /* another random teacher */
    expect_random_teacher(&want, 1);
    fx_expect_error(pgn_shards_open(&r, dir_a, &want, 0, NULL, NULL, &e), &e, "this fit uses 'vgg19, random teacher");
    /* another space, another size */
    expect_random_teacher(&want, 0);
    want.space = "unit";
    fx_expect_error(pgn_shards_open(&r, dir_a, &want, 0, NULL, NULL, &e), &e,
                    "holds images and gradients in normalised space, this fit uses unit space");
    expect_random_teacher(&want, 0);
    want.size = 64;
    fx_expect_error(pgn_shards_open(&r, dir_a, &want, 0, NULL, NULL, &e), &e, "holds 16x16 crops, this fit uses size 64");
    /* what a fit passes: its teacher's identity; the collect's own teacher is accepted, another refused */
    pgn_teacher t;
    char desc[512];
    fx_ok(pgn_teacher_open(&t, NULL, 0, &e), &e);
    pgn_collection_expect_teacher(&want, &t, SIZE, desc, sizeof desc);
    fx_ok(pgn_shards_open(&r, dir_a, &want, 0, NULL, NULL, &e), &e);
    pgn_shards_close(r);
    pgn_teacher_close(&t);
    fx_ok(pgn_teacher_open(&t, NULL, 2, &e), &e);
    pgn_collection_expect_teacher(&want, &t, SIZE, desc, sizeof desc);
    fx_expect_error(pgn_shards_open(&r, dir_a, &want, 0, NULL, NULL, &e), &e, "random teacher: not a perceptual loss (seed 2)");
    pgn_teacher_close(&t);
}

/* Paused mid-shard after the 2nd shard, resumed: the same four shards (sha256) and manifest as
 * the uninterrupted run. A half-written shard left behind is not listed, and is overwritten. */
static void test_resume_is_byte_identical(void **state)
{
    ensure_a();
    pgn_collect_params p;
    small_params(&p);
    static rec b;
    rec_in(&b, "b");
    b.pause_at = 12; /* step 4 ends at 12 drawn: shard 1 closed at 10, two pending */
    pgn_job_io io = io_for(&b, NULL, 0);
    char err[1024] = "";
    assert_int_equal(pgn_collect_run(&p, &io, err, sizeof err), PGN_STOPPED);
    assert_int_equal(b.checkpoints, 2);
    assert_int_equal(b.ck_step, 10);
    no_tmp_files(b.dir); /* the stop waited for the last shard's sync, and recorded it */
    /* an interrupted write of the next shard: ignored by readers */
    char junk[400];
    snprintf(junk, sizeof junk, "%s/shard-000002.safetensors", b.dir);
    FILE *f = fopen(junk, "wb");
    fputs("half a shard", f);
    fclose(f);
    pgn_shards *r;
    nn_err e;
    fx_ok(pgn_shards_open(&r, b.dir, NULL, 0, NULL, NULL, &e), &e);
    assert_int_equal(pgn_shards_count(r), 2);
    assert_int_equal(pgn_shards_samples(r), 10);
    pgn_shards_close(r);
    /* a fresh start into the same folder is refused; resuming continues */
    rec fresh = b;
    io = io_for(&fresh, NULL, 0);
    assert_int_equal(pgn_collect_run(&p, &io, err, sizeof err), PGN_FAILED);
    assert_non_null(strstr(err, "already holds a collection"));
    b.pause_at = 0;
    char ck[600];
    snprintf(ck, sizeof ck, "%s", b.ck);
    io = io_for(&b, ck, 10);
    if (pgn_collect_run(&p, &io, err, sizeof err) != PGN_DONE)
        fail_msg("resumed collect: %s", err);
    assert_int_equal(b.ck_step, TOTAL);
    no_tmp_files(b.dir);
    for (int i = 0; i < 4; i++) {
        char ha[65], hb[65];
        sha_of(dir_a, i, ha);
        sha_of(b.dir, i, hb);
        if (strcmp(ha, hb))
            fail_msg("shard %d: uninterrupted sha256 %s, resumed %s", i, ha, hb);
    }
    char ma[400], mb[400], ha[65], hb[65];
    snprintf(ma, sizeof ma, "%s/%s", dir_a, PGN_MANIFEST_NAME);
    snprintf(mb, sizeof mb, "%s/%s", b.dir, PGN_MANIFEST_NAME);
    assert_int_equal(nn_sha256_file(ma, ha), 0);
    assert_int_equal(nn_sha256_file(mb, hb), 0);
    assert_string_equal(ha, hb);
    /* a checkpoint from another collect is refused, naming both */
    p.seed = 4;
    rec other = b;
    io = io_for(&other, ck, 10);
    assert_int_equal(pgn_collect_run(&p, &io, err, sizeof err), PGN_FAILED);
    assert_non_null(strstr(err, "was made by a collect with seed 3; this one has seed 4"));
    /* and one whose generators ran in another precision */
    nn_ctx ctx;
    fx_ok(nn_ctx_init(&ctx, 2, &e), &e);
    const int native = nn_conv2d_bf16_native(&ctx);
    nn_ctx_free(&ctx);
    if (native) {
        small_params(&p);
        snprintf(p.generator_precision, sizeof p.generator_precision, "f32");
        io = io_for(&other, ck, 10);
        assert_int_equal(pgn_collect_run(&p, &io, err, sizeof err), PGN_FAILED);
        assert_non_null(strstr(err, "with generator_precision bf16; this one has generator_precision f32"));
    }
}

/* A PGN checkpoint drives the generators instead of the true gradient; the manifest says which. */
static void test_pgn_drives_generators(void **state)
{
    pgn_collect_params p;
    small_params(&p);
    p.samples = 6;
    p.samples_per_shard = 6;
    snprintf(p.pgn, sizeof p.pgn, "tests/fixtures/pgn_resnet4_v2_legacy.pth");
    static rec r;
    rec_in(&r, "pgn");
    pgn_job_io io = io_for(&r, NULL, 0);
    char err[1024] = "";
    if (pgn_collect_run(&p, &io, err, sizeof err) != PGN_DONE)
        fail_msg("collect driven by a PGN: %s", err);
    pgn_collection_info info;
    pgn_shard_entry *sh;
    int n;
    nn_err e;
    fx_ok(pgn_manifest_read(r.dir, &info, &sh, &n, NULL, &e), &e);
    assert_int_equal(n, 1);
    assert_non_null(strstr(info.driver, "pgn pgn_resnet4_v2_legacy.pth ("));
    assert_non_null(strstr(info.driver, "sha256 "));
    free(sh);
    /* the first step is the same as the teacher-driven collection A's (same seed, same data); the
     * second comes from generators that stepped on the PGN's gradient instead */
    ensure_a();
    nn_weights wa, wp;
    char path[400];
    snprintf(path, sizeof path, "%s/shard-000000.safetensors", dir_a);
    fx_ok(nn_weights_read(&wa, path, &e), &e);
    snprintf(path, sizeof path, "%s/shard-000000.safetensors", r.dir);
    fx_ok(nn_weights_read(&wp, path, &e), &e);
    const float *ya = nn_weights_find(&wa, "y_hat")->data, *yp = nn_weights_find(&wp, "y_hat")->data;
    assert_memory_equal(ya, yp, 3 * CNT * sizeof(float));
    assert_memory_equal(nn_weights_find(&wa, "y")->data, nn_weights_find(&wp, "y")->data, 5 * CNT * sizeof(float));
    assert_memory_not_equal(ya + 3 * CNT, yp + 3 * CNT, CNT * sizeof(float));
    nn_weights_free(&wa), nn_weights_free(&wp);
    snprintf(p.pgn, sizeof p.pgn, "tests/fixtures/pgn_resnet.safetensors.missing");
    snprintf(r.dir, sizeof r.dir, "%s/pgn2", base);
    mkdir(r.dir, 0755);
    assert_int_equal(pgn_collect_run(&p, &io, err, sizeof err), PGN_FAILED);
    assert_non_null(strstr(err, "pgn_resnet.safetensors.missing"));
}

static void test_bad_input(void **state)
{
    pgn_collect_params p;
    static rec r;
    rec_in(&r, "bad");
    pgn_job_io io = io_for(&r, NULL, 0);
    char err[1024], m[400];
    small_params(&p);
    snprintf(p.data, sizeof p.data, "%s/nowhere", base);
    assert_int_equal(pgn_collect_run(&p, &io, err, sizeof err), PGN_FAILED);
    assert_non_null(strstr(err, "nowhere: cannot open"));
    snprintf(p.data, sizeof p.data, "%s/empty", base);
    assert_int_equal(pgn_collect_run(&p, &io, err, sizeof err), PGN_FAILED);
    assert_non_null(strstr(err, "no PNG or JPEG images found"));
    snprintf(m, sizeof m, "%s/%s", r.dir, PGN_MANIFEST_NAME);
    assert_int_not_equal(access(m, F_OK), 0); /* nothing was started */
    assert_int_equal(r.metrics + r.checkpoints, 0);
    small_params(&p);
    p.size = 36;
    assert_int_equal(pgn_collect_run(&p, &io, err, sizeof err), PGN_FAILED);
    assert_non_null(strstr(err, "size 36 must be a positive multiple of 8"));
    small_params(&p);
    snprintf(p.generator_precision, sizeof p.generator_precision, "fp16");
    assert_int_equal(pgn_collect_run(&p, &io, err, sizeof err), PGN_FAILED);
    assert_non_null(strstr(err, "generator_precision 'fp16' must be bf16 or f32"));
    small_params(&p);
    p.generators = 5; /* ae0 and ae2: batch 3 cannot split evenly */
    assert_int_equal(pgn_collect_run(&p, &io, err, sizeof err), PGN_FAILED);
    assert_non_null(strstr(err, "batch 3 must be a positive multiple of 2"));
    /* a folder that is no collection */
    pgn_shards *sr;
    nn_err e;
    fx_expect_error(pgn_shards_open(&sr, r.dir, NULL, 0, NULL, NULL, &e), &e, "manifest.json: cannot open");
    /* the job type checks the same across parameters */
    const job_type *t = job_type_find("collect");
    assert_non_null(t);
    json_t *given = json_pack("{s:s, s:i, s:i, s:[s,s]}", "data", photos, "size", 36, "batch", 3, "generators", "ae0",
                              "ae1");
    json_t *problems = json_array();
    assert_null(job_params_validate(t, given, problems, NULL));
    char *txt = json_dumps(problems, 0);
    assert_non_null(strstr(txt, "\"size\""));
    assert_non_null(strstr(txt, "must be a multiple of 2"));
    free(txt);
    json_decref(given), json_decref(problems);
}

/* Generators that diverge (a learning rate of 1e6): their non-finite outputs are dropped and the
 * step's later samples move down in the shard buffer (shards of 6 with batch 3: every step is
 * written straight into the shard, so the drops happen there). Every stored value is finite, every
 * row's g_true and loss are the teacher's at its (y_hat, y) (the move kept a sample's tensors
 * together), and the shards hold exactly `samples`. On this machine ae0 overflows every other step
 * (3 drops); a CPU whose kernels round differently could drop none, and the test says so. */
static void test_diverged_samples_dropped(void **state)
{
    pgn_collect_params p;
    small_params(&p);
    p.ae_lr = 1e6;
    p.samples_per_shard = 6;
    static rec r;
    rec_in(&r, "diverged");
    pgn_job_io io = io_for(&r, NULL, 0);
    char err[1024] = "";
    if (pgn_collect_run(&p, &io, err, sizeof err) != PGN_DONE)
        fail_msg("collect: %s", err);
    print_message("diverging generators: %.0f samples dropped\n", r.dropped);
    if (r.dropped == 0)
        fail_msg("no generator diverged to a non-finite value: the drop path was not exercised");
    nn_ctx ctx;
    nn_err e;
    pgn_teacher t;
    fx_ok(nn_ctx_init(&ctx, 2, &e), &e);
    fx_ok(pgn_teacher_open(&t, NULL, 0, &e), &e);
    float *g2 = malloc(CNT * sizeof(float));
    long total = 0;
    for (int i = 0; i < 3; i++) {
        char name[64], path[400];
        pgn_shard_name(name, sizeof name, i);
        snprintf(path, sizeof path, "%s/%s", r.dir, name);
        nn_weights w;
        fx_ok(nn_weights_read(&w, path, &e), &e);
        for (int k = 0; k < w.count; k++) {
            const nn_weight_entry *te = &w.entries[k];
            assert_int_equal(te->dtype, NN_F32);
            const float *v = te->data;
            for (size_t q = 0; q < te->numel; q++)
                if (!isfinite(v[q]))
                    fail_msg("%s: %s[%zu] is not finite", name, te->name, q);
        }
        const float *yh = nn_weights_find(&w, "y_hat")->data, *y = nn_weights_find(&w, "y")->data;
        const float *g = nn_weights_find(&w, "g_true")->data, *loss = nn_weights_find(&w, "loss")->data;
        const int rows = (int)nn_weights_find(&w, "loss")->numel;
        for (int row = 0; row < rows; row++) {
            double per[1];
            fx_ok(pgn_teacher_loss_grad_pair(&ctx, &t, yh + (size_t)row * CNT, y + (size_t)row * CNT, 1, SIZE, SIZE,
                                             PGN_SPACE_NORMALISED, per, NULL, g2, &e),
                  &e);
            if (!(fabs(per[0] - loss[row]) <= 1e-5 * fabs(per[0])))
                fail_msg("%s row %d: stored loss %.7g, the teacher's at its pair %.7g", name, row, loss[row], per[0]);
            fx_expect_close("g_true of a stored row", g + (size_t)row * CNT, g2, CNT, 1e-4);
        }
        total += rows;
        nn_weights_free(&w);
    }
    assert_int_equal(total, TOTAL);
    free(g2);
    pgn_teacher_close(&t);
    nn_ctx_free(&ctx);
}

/* The disk refuses a shard (its name is taken by a folder, so the rename fails) on the sync thread:
 * the job fails naming the file, the shards before it stay recorded, the failed commit is not
 * recorded, and nothing temporary is left. A stale temporary file of a killed run goes too. */
static void test_sync_failure(void **state)
{
    pgn_collect_params p;
    small_params(&p);
    static rec r;
    rec_in(&r, "syncfail");
    char blocker[400], stale[400];
    snprintf(blocker, sizeof blocker, "%s/shard-000001.safetensors", r.dir);
    mkdir(blocker, 0755);
    snprintf(stale, sizeof stale, "%s/shard-000007.safetensors.tmp-AbC123", r.dir);
    FILE *f = fopen(stale, "wb");
    fputs("left by a killed run", f);
    fclose(f);
    pgn_job_io io = io_for(&r, NULL, 0);
    char err[1024] = "";
    assert_int_equal(pgn_collect_run(&p, &io, err, sizeof err), PGN_FAILED);
    assert_non_null(strstr(err, blocker));
    assert_non_null(strstr(err, "rename"));
    assert_int_equal(r.checkpoints, 1); /* shard 0's commit only */
    assert_int_equal(r.ck_step, PER_SHARD);
    assert_int_equal(r.shards_published, 1);
    no_tmp_files(r.dir);
    pgn_shards *sr;
    nn_err e;
    fx_ok(pgn_shards_open(&sr, r.dir, NULL, 0, NULL, NULL, &e), &e);
    assert_int_equal(pgn_shards_count(sr), 1); /* the manifest lists what is on the disk */
    pgn_shards_close(sr);
    rmdir(blocker);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_corrupt_shard_is_skipped),
        cmocka_unit_test(test_teacher_mismatch_is_refused),
        cmocka_unit_test(test_resume_is_byte_identical),
        cmocka_unit_test(test_pgn_drives_generators),
        cmocka_unit_test(test_sync_failure),
        cmocka_unit_test(test_diverged_samples_dropped),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
