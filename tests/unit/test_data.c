/* pgn/data.h: an image folder tree (PNGs of several sizes, a nested subfolder, upper-case and
 * .jpeg names, a symlink loop) with bad files (truncated PNG, text named .jpg, 4x4 PNG): the
 * listing, skipping with a count, batch shape and normalisation range, determinism per seed,
 * varying crops and flips, RandomResizedCrop's parameters and fallback, the validation split, and
 * the empty / missing folder errors; the decoded-image cache (pgn/image_cache.h): batches and
 * validation images bit-identical with it, without it and with a budget that forces evictions;
 * bytes for 8-bit images, floats otherwise; LRU eviction; images over the budget not kept. */
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
#include <omp.h>

#include "pgn/data.h"
#include "pgn/image_cache.h"
#include "pgn/image.h"
#include "pgn/teacher.h"

static char dir[64];
static char err[1024];

static const char *path_of(const char *name)
{
    static char buf[8][512];
    static int k;
    k = (k + 1) % 8;
    if ((size_t)snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name) >= sizeof buf[k])
        fail();
    return buf[k];
}

/* A smooth, asymmetric test image (so flips and crops show). */
static void write_png(const char *name, int h, int w, int variant)
{
    float *img = malloc((size_t)3 * h * w * sizeof(float));
    assert_non_null(img);
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
                img[((size_t)c * h + y) * w + x] =
                    (c == 0 ? (float)x / w : c == 1 ? (float)y / h : 0.5f + 0.4f * sinf(0.3f * x + variant));
    if (pgn_image_save_png(path_of(name), img, h, w, err, sizeof err))
        fail_msg("%s", err);
    free(img);
}

static void write_bytes(const char *name, const void *data, size_t len)
{
    FILE *f = fopen(path_of(name), "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    fclose(f);
}

static const char *good[] = {"a.png", "b.PNG", "c.png", "sub/d.png", "sub/deeper/e.jpeg.png", "sub/f.png"};
#define N_GOOD 6

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/pgnd_test_data_XXXXXX");
    if (!mkdtemp(dir))
        return -1;
    mkdir(path_of("sub"), 0700);
    mkdir(path_of("sub/deeper"), 0700);
    mkdir(path_of("empty"), 0700);
    mkdir(path_of("empty/inner"), 0700);
    write_png("a.png", 40, 60, 0);
    write_png("b.PNG", 64, 48, 1);
    write_png("c.png", 32, 32, 2);
    write_png("sub/d.png", 100, 30, 3); /* tall: RandomResizedCrop often falls back */
    write_png("sub/deeper/e.jpeg.png", 24, 80, 4);
    write_png("sub/f.png", 50, 50, 5);
    write_png("tiny.png", 4, 4, 6);
    /* truncated PNG: the first half of a valid one */
    write_png("whole.tmp", 40, 40, 7);
    FILE *f = fopen(path_of("whole.tmp"), "rb");
    assert_non_null(f);
    unsigned char buf[65536];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    unlink(path_of("whole.tmp"));
    write_bytes("trunc.png", buf, n / 2);
    const char *text = "this is not a JPEG\n";
    write_bytes("sub/notes.jpg", text, strlen(text));
    write_bytes("readme.txt", text, strlen(text));
    write_bytes("empty/inner/readme.txt", text, strlen(text));
    if (symlink("..", path_of("sub/loop")))
        return -1;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    const char *files[] = {"a.png", "b.PNG", "c.png", "sub/d.png", "sub/deeper/e.jpeg.png", "sub/f.png",
                           "tiny.png", "trunc.png", "sub/notes.jpg", "readme.txt", "empty/inner/readme.txt",
                           "sub/loop"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++)
        unlink(path_of(files[i]));
    rmdir(path_of("empty/inner"));
    rmdir(path_of("empty"));
    rmdir(path_of("sub/deeper"));
    rmdir(path_of("sub"));
    return rmdir(dir);
}

static int is_good(const char *path)
{
    for (int i = 0; i < N_GOOD; i++)
        if (!strcmp(path, path_of(good[i])))
            return 1;
    return 0;
}

static void listing(void **state)
{
    (void)state;
    pgn_data d;
    if (pgn_data_open(&d, dir, 0, 1, err, sizeof err))
        fail_msg("%s", err);
    /* 6 good + tiny + trunc + notes.jpg; readme.txt ignored; the loop visited once */
    assert_int_equal(d.n_files, 9);
    for (int i = 1; i < d.n_files; i++)
        assert_true(strcmp(d.files[i - 1], d.files[i]) < 0);
    for (int i = 0; i < N_GOOD; i++) {
        int found = 0;
        for (int j = 0; j < d.n_files; j++)
            found += !strcmp(d.files[j], path_of(good[i]));
        assert_int_equal(found, 1);
    }
    assert_int_equal(d.n_val, 0);
    assert_int_equal(d.n_train, 9);
    pgn_data_close(&d);
}

static void errors(void **state)
{
    (void)state;
    pgn_data d;
    char expect[1024];
    assert_int_equal(pgn_data_open(&d, path_of("empty"), 0.1, 1, err, sizeof err), -1);
    snprintf(expect, sizeof expect, "%s: no PNG or JPEG images found", path_of("empty"));
    assert_string_equal(err, expect);
    assert_int_equal(pgn_data_open(&d, path_of("missing"), 0.1, 1, err, sizeof err), -1);
    snprintf(expect, sizeof expect, "%s: cannot open: ", path_of("missing"));
    assert_non_null(strstr(err, expect));
    assert_int_equal(pgn_data_open(&d, path_of("a.png"), 0.1, 1, err, sizeof err), -1);
    snprintf(expect, sizeof expect, "%s: cannot open: ", path_of("a.png"));
    assert_non_null(strstr(err, expect));
    assert_int_equal(pgn_data_open(&d, dir, 1.0, 1, err, sizeof err), -1);
    pgn_data_close(&d); /* safe after a failed open */
}

static void batches(void **state)
{
    (void)state;
    const int B = 16, S = 24;
    size_t n = (size_t)B * 3 * S * S;
    float *x = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float)), *z = malloc(n * sizeof(float));
    assert_non_null(x);
    assert_non_null(y);
    assert_non_null(z);
    pgn_data d1, d2, d3;
    assert_int_equal(pgn_data_open(&d1, dir, 0, 7, err, sizeof err), 0);
    assert_int_equal(pgn_data_open(&d2, dir, 0, 7, err, sizeof err), 0);
    assert_int_equal(pgn_data_open(&d3, dir, 0, 8, err, sizeof err), 0);
    d1.quiet = d2.quiet = d3.quiet = 1;
    for (int it = 0; it < 4; it++) {
        if (pgn_data_train_batch(&d1, x, B, S, err, sizeof err))
            fail_msg("%s", err);
        assert_int_equal(pgn_data_train_batch(&d2, y, B, S, err, sizeof err), 0);
        assert_int_equal(pgn_data_train_batch(&d3, z, B, S, err, sizeof err), 0);
        assert_memory_equal(x, y, n * sizeof(float));
        assert_memory_not_equal(x, z, n * sizeof(float));
        /* normalised range: (0 - mean) / std .. (1 - mean) / std per channel */
        for (int b = 0; b < B; b++)
            for (int c = 0; c < 3; c++) {
                float lo = -pgn_imagenet_mean[c] / pgn_imagenet_std[c] - 1e-5f;
                float hi = (1 - pgn_imagenet_mean[c]) / pgn_imagenet_std[c] + 1e-5f;
                const float *p = x + ((size_t)b * 3 + c) * S * S;
                for (int k = 0; k < S * S; k++) {
                    assert_true(isfinite(p[k]));
                    assert_true(p[k] >= lo && p[k] <= hi);
                }
            }
        /* samples within a batch differ (different images, crops, flips) */
        assert_memory_not_equal(x, x + (size_t)3 * S * S, (size_t)3 * S * S * sizeof(float));
    }
    /* all three bad files were met by now (64 draws over 9 files), each counted once */
    assert_int_equal(d1.n_skipped, 3);
    assert_int_equal(d1.n_bad_train, 3);
    assert_true(strlen(d1.last_error) > 0);
    assert_int_equal(d2.n_skipped, 3);
    for (int i = 0; i < d1.n_files; i++)
        assert_int_equal(d1.bad[i], !is_good(d1.files[i]));
    pgn_data_close(&d1);
    pgn_data_close(&d2);
    pgn_data_close(&d3);
    free(x);
    free(y);
    free(z);
}

/* An image whose red channel is x / w: a flip reverses the horizontal red gradient. */
static void crops_and_flips(void **state)
{
    (void)state;
    const int H = 60, W = 80, S = 16;
    float *img = malloc((size_t)3 * H * W * sizeof(float)), out[3 * 16 * 16];
    assert_non_null(img);
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++)
                img[((size_t)c * H + y) * W + x] = c == 0 ? (x + 0.5f) / W : c == 1 ? (y + 0.5f) / H : 0.5f;
    nn_rng r;
    nn_rng_seed(&r, 3);
    int flipped = 0, kept = 0;
    float min_span = 1, max_span = 0;
    for (int t = 0; t < 200; t++) {
        pgn_data_random_resized_crop(&r, img, H, W, out, S);
        /* back to [0, 1] red */
        float left = out[0] * pgn_imagenet_std[0] + pgn_imagenet_mean[0];
        float right = out[S - 1] * pgn_imagenet_std[0] + pgn_imagenet_mean[0];
        if (right > left)
            kept++;
        else if (right < left)
            flipped++;
        float span = fabsf(right - left);
        if (span < min_span)
            min_span = span;
        if (span > max_span)
            max_span = span;
    }
    assert_true(flipped > 60 && kept > 60);
    assert_true(max_span > 0.6f); /* large crops */
    assert_true(min_span < 0.3f); /* small crops */
    free(img);

    /* parameters: inside the image, area within scale, ratio within bounds (up to rounding) */
    for (int t = 0; t < 2000; t++) {
        int top, left, ch, cw;
        pgn_data_rrc_params(&r, H, W, &top, &left, &ch, &cw);
        assert_true(top >= 0 && left >= 0 && ch >= 1 && cw >= 1 && top + ch <= H && left + cw <= W);
        double ratio = (double)cw / ch;
        assert_true(ratio > 0.75 * 0.8 && ratio < 4.0 / 3.0 * 1.25);
        assert_true(ch * cw >= 0.08 * H * W * 0.8);
    }
    /* a 1000x10 strip: 10 attempts almost surely fail -> central crop at ratio 4/3 */
    int hits = 0;
    for (int t = 0; t < 50; t++) {
        int top, left, ch, cw;
        pgn_data_rrc_params(&r, 10, 1000, &top, &left, &ch, &cw);
        if (ch == 10 && cw == 13) { /* round(10 * 4/3) = 13 */
            assert_int_equal(top, 0);
            assert_int_equal(left, (1000 - 13) / 2);
            hits++;
        }
    }
    assert_true(hits > 40);
    /* tall: 1000 high, 10 wide -> w = 10, h = round(10 / 0.75) = 13 */
    int top, left, ch, cw;
    do
        pgn_data_rrc_params(&r, 1000, 10, &top, &left, &ch, &cw);
    while (!(cw == 10 && ch == 13 && top == (1000 - 13) / 2));
}

static void validation(void **state)
{
    (void)state;
    pgn_data a, b, c;
    assert_int_equal(pgn_data_open(&a, dir, 0.3, 11, err, sizeof err), 0);
    assert_int_equal(pgn_data_open(&b, dir, 0.3, 11, err, sizeof err), 0);
    assert_int_equal(pgn_data_open(&c, dir, 0.01, 12, err, sizeof err), 0);
    a.quiet = b.quiet = c.quiet = 1;
    assert_int_equal(a.n_val, 3); /* round(9 * 0.3) */
    assert_int_equal(a.n_train, 6);
    assert_int_equal(c.n_val, 1); /* at least one */
    assert_int_equal(b.n_val, a.n_val);
    assert_memory_equal(a.val, b.val, (size_t)a.n_val * sizeof(int));
    assert_memory_equal(a.train, b.train, (size_t)a.n_train * sizeof(int));
    /* disjoint and covering */
    int seen[9] = {0};
    for (int i = 0; i < a.n_val; i++)
        seen[a.val[i]]++;
    for (int i = 0; i < a.n_train; i++)
        seen[a.train[i]]++;
    for (int i = 0; i < 9; i++)
        assert_int_equal(seen[i], 1);
    /* some seed gives a different split */
    int differs = 0;
    for (uint64_t s = 100; s < 110 && !differs; s++) {
        pgn_data e;
        assert_int_equal(pgn_data_open(&e, dir, 0.3, s, err, sizeof err), 0);
        differs = memcmp(e.val, a.val, (size_t)a.n_val * sizeof(int)) != 0;
        pgn_data_close(&e);
    }
    assert_true(differs);
    /* validation images: the evaluation transform, deterministic; bad ones skipped and counted */
    float out[3 * 20 * 20], ref[3 * 20 * 20];
    int ok = 0, skipped = 0;
    for (int i = 0; i < a.n_val; i++) {
        int rc = pgn_data_val_image(&a, i, 20, out, err, sizeof err);
        assert_true(rc == 0 || rc == 1);
        if (rc == 0) {
            ok++;
            /* same pixels as pgn_image_load_square, normalised */
            float *sq;
            if (pgn_image_load_square(pgn_data_val_path(&a, i), 20, &sq, err, sizeof err))
                fail_msg("%s", err);
            memcpy(ref, sq, sizeof ref);
            free(sq);
            pgn_to_normalised(ref, ref, 1, 20, 20, PGN_SPACE_UNIT);
            assert_memory_equal(out, ref, sizeof ref);
            assert_int_equal(pgn_data_val_image(&b, i, 20, ref, err, sizeof err), 0);
            assert_memory_equal(out, ref, sizeof ref);
        } else {
            skipped++;
            assert_true(!is_good(pgn_data_val_path(&a, i)));
        }
    }
    assert_int_equal(ok + skipped, a.n_val);
    assert_int_equal(a.n_skipped, skipped);
    pgn_data_close(&a);
    pgn_data_close(&b);
    pgn_data_close(&c);
}

/* The cache changes nothing but the time: batches and validation images are bit-identical with the
 * default budget, with none, and with one so small that images are evicted all the time; and the
 * crops, run on all threads together, are the same on one thread. */
static void cache_same_batches(void **state)
{
    (void)state;
    const int B = 16, S = 24, N = 6;
    size_t n = (size_t)B * 3 * S * S;
    float *x = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float)), *z = malloc(n * sizeof(float));
    float *one = malloc(n * sizeof(float));
    assert_non_null(one);
    assert_non_null(x);
    assert_non_null(y);
    assert_non_null(z);
    pgn_data a, b, c, t1;
    assert_int_equal(pgn_data_open(&t1, dir, 0.3, 5, err, sizeof err), 0);
    t1.quiet = 1;
    assert_int_equal(pgn_data_open(&a, dir, 0.3, 5, err, sizeof err), 0);
    assert_int_equal(pgn_data_open(&b, dir, 0.3, 5, err, sizeof err), 0);
    assert_int_equal(pgn_data_open(&c, dir, 0.3, 5, err, sizeof err), 0);
    a.quiet = b.quiet = c.quiet = 1;
    assert_int_equal(pgn_data_set_cache_mb(&b, 0), 0);
    assert_int_equal(pgn_data_set_cache_mb(&c, 0.012), 0); /* about one of these images */
    assert_int_equal(pgn_data_set_cache_mb(&c, -1), -1);
    for (int it = 0; it < N; it++) {
        assert_int_equal(pgn_data_train_batch(&a, x, B, S, err, sizeof err), 0);
        assert_int_equal(pgn_data_train_batch(&b, y, B, S, err, sizeof err), 0);
        assert_int_equal(pgn_data_train_batch(&c, z, B, S, err, sizeof err), 0);
        assert_memory_equal(x, y, n * sizeof(float));
        assert_memory_equal(x, z, n * sizeof(float));
        const int threads = omp_get_max_threads();
        omp_set_num_threads(1);
        assert_int_equal(pgn_data_train_batch(&t1, one, B, S, err, sizeof err), 0);
        omp_set_num_threads(threads);
        assert_memory_equal(x, one, n * sizeof(float));
    }
    /* every good training image decoded once, then served from memory */
    assert_true(a.cache.hits > N * B / 2);
    assert_int_equal(a.cache.evictions, 0);
    assert_int_equal(b.cache.hits, 0);
    assert_int_equal(b.cache.bytes, 0);
    assert_true(c.cache.evictions > 0);
    assert_true(c.cache.bytes <= c.cache.budget);
    assert_int_equal(a.n_skipped, b.n_skipped);
    float va[3 * 20 * 20], vb[3 * 20 * 20];
    for (int i = 0; i < a.n_val; i++)
        for (int twice = 0; twice < 2; twice++) { /* the second read comes from the cache */
            int ra = pgn_data_val_image(&a, i, 20, va, err, sizeof err);
            int rb = pgn_data_val_image(&b, i, 20, vb, err, sizeof err);
            assert_int_equal(ra, rb);
            if (ra == 0)
                assert_memory_equal(va, vb, sizeof va);
        }
    pgn_data_close(&a);
    pgn_data_close(&b);
    pgn_data_close(&c);
    pgn_data_close(&t1);
    free(x);
    free(y);
    free(z);
    free(one);
}

/* The cache itself: storage kinds, exact read-back, LRU eviction, the budget. */
static void cache_entries(void **state)
{
    (void)state;
    const int H = 5, W = 7, CNT = 3 * 5 * 7;
    float bytes_img[3 * 5 * 7], float_img[3 * 5 * 7], back[3 * 5 * 7];
    for (int k = 0; k < CNT; k++) {
        bytes_img[k] = (float)((k * 37) % 256) / 255.0f; /* as an 8-bit decoder gives them */
        float_img[k] = (float)((k * 4099) % 65536) / 65535.0f; /* a 16-bit PNG's values */
    }
    pgn_image_cache c;
    assert_int_equal(pgn_image_cache_init(&c, 4, 2 * (size_t)CNT + 8), 0);
    assert_null(pgn_image_cache_get(&c, 0));
    pgn_image_cache_put(&c, 0, bytes_img, H, W);
    pgn_image_cache_put(&c, 1, bytes_img, H, W);
    const pgn_image_cache_entry *en = pgn_image_cache_get(&c, 0);
    assert_non_null(en);
    assert_int_equal(en->bytes_per, 1);
    pgn_image_cache_read(en, back);
    assert_memory_equal(back, bytes_img, sizeof back);
    /* a crop, and a crop resized, as pgn_image_resize gives them on the float crop */
    float crop[3 * 3 * 4], rs[3 * 6 * 5], rs_ref[3 * 6 * 5];
    pgn_image_cache_crop(en, 1, 2, 3, 4, crop);
    for (int ch = 0; ch < 3; ch++)
        for (int y = 0; y < 3; y++)
            for (int x = 0; x < 4; x++)
                assert_true(crop[(ch * 3 + y) * 4 + x] == bytes_img[(ch * H + 1 + y) * W + 2 + x]);
    pgn_image_cache_crop_resize(en, 1, 2, 3, 4, rs, 6, 5);
    pgn_image_resize(crop, 3, 3, 4, rs_ref, 6, 5);
    assert_memory_equal(rs, rs_ref, sizeof rs);
    /* slot 0 was used last: slot 1 is the one evicted for slot 2 */
    pgn_image_cache_put(&c, 2, bytes_img, H, W);
    assert_int_equal(c.evictions, 1);
    assert_non_null(pgn_image_cache_get(&c, 0));
    assert_null(pgn_image_cache_get(&c, 1));
    assert_non_null(pgn_image_cache_get(&c, 2));
    /* values that are not k / 255: floats, four times the bytes: more than this budget, not kept */
    pgn_image_cache_put(&c, 3, float_img, H, W);
    assert_null(pgn_image_cache_get(&c, 3));
    assert_int_equal(c.bytes, 2 * (size_t)CNT);
    pgn_image_cache_free(&c);
    assert_int_equal(pgn_image_cache_init(&c, 2, 4 * (size_t)CNT), 0);
    pgn_image_cache_put(&c, 1, float_img, H, W);
    en = pgn_image_cache_get(&c, 1);
    assert_non_null(en);
    assert_int_equal(en->bytes_per, 4);
    pgn_image_cache_read(en, back);
    assert_memory_equal(back, float_img, sizeof back);
    pgn_image_cache_crop_resize(en, 0, 1, 5, 6, rs, 6, 5);
    float crop2[3 * 5 * 6];
    pgn_image_cache_crop(en, 0, 1, 5, 6, crop2);
    pgn_image_resize(crop2, 3, 5, 6, rs_ref, 6, 5);
    assert_memory_equal(rs, rs_ref, sizeof rs);
    pgn_image_cache_free(&c);
}

static void all_bad(void **state)
{
    (void)state;
    /* a folder of bad files only: a clear error, not a hang or crash */
    char sub[600];
    snprintf(sub, sizeof sub, "%s", path_of("bad"));
    mkdir(sub, 0700);
    const char *text = "nope";
    write_bytes("bad/x.png", text, 4);
    write_bytes("bad/y.jpg", text, 4);
    pgn_data d;
    assert_int_equal(pgn_data_open(&d, sub, 0, 1, err, sizeof err), 0);
    d.quiet = 1;
    float out[3 * 8 * 8 * 2];
    assert_int_equal(pgn_data_train_batch(&d, out, 2, 8, err, sizeof err), -1);
    assert_non_null(strstr(err, "every training image is unreadable"));
    assert_int_equal(d.n_skipped, 2);
    pgn_data_close(&d);
    unlink(path_of("bad/x.png"));
    unlink(path_of("bad/y.jpg"));
    rmdir(sub);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(listing),         cmocka_unit_test(errors),     cmocka_unit_test(batches),
        cmocka_unit_test(crops_and_flips), cmocka_unit_test(validation), cmocka_unit_test(all_bad),
        cmocka_unit_test(cache_same_batches), cmocka_unit_test(cache_entries),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
