/* Weights files (nn/weights.c, safetensors.c, torch_pth.c, pickle.c) against the fixtures of
 * tools/fixtures_weights.py: every tensor is compared bit for bit, as float32, with
 * weights_expected.safetensors; then broken files of every kind must fail cleanly with a message
 * that starts with the path (run under valgrind to check no read goes out of bounds). */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "nn/pickle.h"
#include "nn/sha256.h"
#include "nn/weights.h"

#define FIX "tests/fixtures/"

static const char *const GOOD[] = {
    FIX "weights_sd_zip.pth",  FIX "weights_sd_legacy.pth",   FIX "weights_sd_p4.pth",
    FIX "weights_ckpt_legacy.pth", FIX "weights_misc_zip.pth", FIX "weights_misc_legacy.pth",
    FIX "weights_old_legacy.pth", FIX "weights_py.safetensors", FIX "weights_expected.safetensors",
};
#define NGOOD (sizeof GOOD / sizeof GOOD[0])

static char tmpdir[] = "/tmp/test_weights_XXXXXX";

/* ---- helpers ---- */

static char *tmp_path(const char *name)
{
    static char buf[4][256];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%.200s", tmpdir, name);
    return buf[k];
}

static uint8_t *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc(*len ? *len : 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, *len, f), *len);
    fclose(f);
    return buf;
}

static void spit(const char *path, const void *buf, size_t len)
{
    unlink(path); /* truncating an ext4 file in place is far slower than making a new one */
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(buf, 1, len, f), len);
    fclose(f);
}

static int starts_with_path(const char *msg, const char *path)
{
    size_t n = strlen(path);
    return !strncmp(msg, path, n) && msg[n] == ':' && msg[n + 1] == ' ';
}

/* The read must fail, leave w empty, and say which file and (if given) what. */
static void expect_fail(const char *path, const char *needle)
{
    nn_weights w;
    nn_err e = {{0}};
    int rc = nn_weights_read(&w, path, &e);
    if (rc == 0 || !starts_with_path(e.msg, path) || (needle && !strstr(e.msg, needle)))
        fail_msg("%s: rc %d, message \"%s\", wanted \"%s\"", path, rc, e.msg, needle ? needle : "");
    assert_int_equal(w.count, 0);
    assert_null(w.entries);
    assert_null(w.path);
    nn_weights_free(&w);
}

/* A read that may succeed or fail but must not crash; failures name the file. */
static void read_any(const char *path)
{
    nn_weights w;
    nn_err e = {{0}};
    if (nn_weights_read(&w, path, &e) && !starts_with_path(e.msg, path))
        fail_msg("%s: message does not start with the path: %s", path, e.msg);
    nn_weights_free(&w);
}

static void read_ok(nn_weights *w, const char *path)
{
    nn_err e = {{0}};
    if (nn_weights_read(w, path, &e))
        fail_msg("%s", e.msg);
}

static uint32_t rng_state = 12345;

static uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 17;
    rng_state ^= rng_state << 5;
    return rng_state;
}

/* Every tensor of set `set` in weights_expected.safetensors must be in `path` with the same name,
 * shape and stored dtype, and convert to the same float32 bits; and `path` holds nothing else. */
static void check_set(const char *path, const char *set)
{
    nn_weights want, got;
    nn_err e = {{0}};
    read_ok(&want, FIX "weights_expected.safetensors");
    read_ok(&got, path);
    size_t plen = strlen(set);
    int matched = 0;
    for (int i = 0; i < want.count; i++) {
        const nn_weight_entry *x = &want.entries[i];
        if (strncmp(x->name, set, plen) || x->name[plen] != '/')
            continue;
        const char *name = x->name + plen + 1;
        const nn_weight_entry *t = nn_weights_find(&got, name);
        if (!t)
            fail_msg("%s: no tensor '%s'", path, name);
        const nn_weight_meta *dt = nn_weights_meta(&want, x->name);
        assert_non_null(dt);
        if (strcmp(nn_dtype_name(t->dtype), dt->str))
            fail_msg("%s: '%s' is %s, expected %s", path, name, nn_dtype_name(t->dtype), dt->str);
        nn_tensor out;
        assert_int_equal(nn_tensor_alloc(&out, x->ndim, x->shape, &e), 0);
        if (nn_weights_get_f32(&got, name, &out, &e))
            fail_msg("%s", e.msg);
        if (x->numel && memcmp(out.data, x->data, x->numel * sizeof(float)))
            fail_msg("%s: values of '%s' differ", path, name);
        nn_tensor_free(&out);
        matched++;
    }
    assert_true(matched > 0);
    assert_int_equal(got.count, matched);
    assert_string_equal(got.path, path);
    nn_weights_free(&want);
    nn_weights_free(&got);
}

/* Writes a legacy-layout torch file around `main`, a hand-written object pickle. */
static void write_legacy(const char *path, const char *main, size_t main_len)
{
    static const char head[] = "\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19." /* magic */
                               "\x80\x02M\xe9\x03."                                  /* 1001 */
                               "\x80\x02}.";                                         /* sys_info {} */
    static const char keys[] = "\x80\x02].";                                         /* no storages */
    size_t n = sizeof head - 1 + main_len + sizeof keys - 1;
    char *buf = malloc(n);
    assert_non_null(buf);
    memcpy(buf, head, sizeof head - 1);
    memcpy(buf + sizeof head - 1, main, main_len);
    memcpy(buf + sizeof head - 1 + main_len, keys, sizeof keys - 1);
    spit(path, buf, n);
    free(buf);
}

/* ---- reading good files ---- */

static void test_zip_state_dict(void **state)
{
    (void)state;
    check_set(FIX "weights_sd_zip.pth", "sd");
    nn_weights w;
    read_ok(&w, FIX "weights_sd_zip.pth");
    const nn_weight_entry *n = nn_weights_find(&w, "1.num_batches_tracked");
    assert_non_null(n);
    assert_int_equal(n->dtype, NN_I64);
    assert_int_equal(n->ndim, 0);
    assert_int_equal(n->numel, 1);
    assert_int_equal(*(const int64_t *)n->data, 7);
    assert_null(nn_weights_find(&w, "2.weight")); /* LeakyReLU: no parameters */
    assert_int_equal(w.meta_count, 0);
    nn_weights_free(&w);
}

static void test_legacy_state_dict(void **state)
{
    (void)state;
    check_set(FIX "weights_sd_legacy.pth", "sd");
}

static void test_protocol4_state_dict(void **state)
{
    (void)state;
    check_set(FIX "weights_sd_p4.pth", "sd");
}

static void test_legacy_checkpoint(void **state)
{
    (void)state;
    check_set(FIX "weights_ckpt_legacy.pth", "sd");
    nn_weights w;
    read_ok(&w, FIX "weights_ckpt_legacy.pth");
    const nn_weight_meta *m = nn_weights_meta(&w, "backbone_type");
    assert_non_null(m);
    assert_string_equal(m->str, "resnet");
    assert_int_equal(m->is_number, 0);
    m = nn_weights_meta(&w, "backbone_params.num_blocks");
    assert_non_null(m);
    assert_int_equal(m->is_number, 1);
    assert_true(m->num == 4);
    assert_string_equal(m->str, "4");
    m = nn_weights_meta(&w, "backbone_params.down_channels");
    assert_non_null(m);
    assert_string_equal(m->str, "[64, 128]");
    m = nn_weights_meta(&w, "backbone_to_grad_params.sigmoid.scale");
    assert_non_null(m);
    assert_true(m->is_number && m->num == 1.1);
    m = nn_weights_meta(&w, "backbone_to_grad_params.grad_scale");
    assert_non_null(m);
    assert_true(m->is_number && m->num == 0.025);
    assert_string_equal(m->str, "0.025000000000000001");
    m = nn_weights_meta(&w, "backbone_to_grad_type");
    assert_non_null(m);
    assert_string_equal(m->str, "proxy");
    m = nn_weights_meta(&w, "version");
    assert_non_null(m);
    assert_true(m->is_number && m->num == 2);
    assert_null(nn_weights_meta(&w, "state_dict"));
    assert_int_equal(w.meta_count, 11);
    nn_weights_free(&w);
}

static void test_views_and_dtypes_zip(void **state)
{
    (void)state;
    check_set(FIX "weights_misc_zip.pth", "misc");
}

static void test_views_and_dtypes_legacy(void **state)
{
    (void)state;
    check_set(FIX "weights_misc_legacy.pth", "misc");
}

static void test_old_rebuild_and_storage_views(void **state)
{
    (void)state;
    check_set(FIX "weights_old_legacy.pth", "old");
}

static void test_python_safetensors(void **state)
{
    (void)state;
    check_set(FIX "weights_py.safetensors", "st");
    nn_weights w;
    read_ok(&w, FIX "weights_py.safetensors");
    assert_int_equal(w.meta_count, 2);
    assert_string_equal(nn_weights_meta(&w, "format")->str, "pt");
    assert_string_equal(nn_weights_meta(&w, "note")->str, "caf\xc3\xa9 \"quoted\"");
    const nn_weight_entry *t = nn_weights_find(&w, "empty");
    assert_non_null(t);
    assert_int_equal(t->numel, 0);
    nn_weights_free(&w);
}

static void test_dtype_names(void **state)
{
    (void)state;
    static const struct { nn_dtype t; const char *name; size_t size; } all[] = {
        {NN_F32, "F32", 4}, {NN_F64, "F64", 8}, {NN_F16, "F16", 2}, {NN_BF16, "BF16", 2}, {NN_I64, "I64", 8},
        {NN_I32, "I32", 4}, {NN_I16, "I16", 2}, {NN_I8, "I8", 1},   {NN_U8, "U8", 1},     {NN_BOOL, "BOOL", 1},
    };
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        assert_string_equal(nn_dtype_name(all[i].t), all[i].name);
        assert_int_equal(nn_dtype_size(all[i].t), all[i].size);
    }
    assert_string_equal(nn_dtype_name((nn_dtype)99), "?");
}

/* ---- nn_weights_get_f32 errors ---- */

static void test_get_f32_errors(void **state)
{
    (void)state;
    const char *path = FIX "weights_sd_zip.pth";
    nn_weights w;
    nn_err e;
    nn_tensor t;
    char want[512];
    read_ok(&w, path);
    assert_int_equal(nn_tensor_alloc(&t, 3, (int64_t[]){4, 3, 3}, &e), 0);
    assert_int_equal(nn_weights_get_f32(&w, "missing.weight", &t, &e), -1);
    snprintf(want, sizeof want, "%s: tensor 'missing.weight' not found", path);
    assert_string_equal(e.msg, want);
    assert_int_equal(nn_weights_get_f32(&w, "0.weight", &t, &e), -1);
    snprintf(want, sizeof want, "%s: tensor '0.weight' has shape [4, 3, 3, 3] but the model expects [4, 3, 3]", path);
    assert_string_equal(e.msg, want);
    nn_tensor_free(&t);
    assert_int_equal(nn_tensor_alloc(&t, 1, (int64_t[]){1}, &e), 0);
    assert_int_equal(nn_weights_get_f32(&w, "1.num_batches_tracked", &t, &e), -1);
    snprintf(want, sizeof want, "%s: tensor '1.num_batches_tracked' has shape [] but the model expects [1]", path);
    assert_string_equal(e.msg, want);
    nn_tensor_free(&t);
    nn_weights_free(&w);
}

/* ---- safetensors writer ---- */

static void test_safetensors_roundtrip(void **state)
{
    (void)state;
    nn_err e;
    nn_tensor a, b, c, d;
    assert_int_equal(nn_tensor_alloc4(&a, 2, 3, 4, 5, &e), 0);
    assert_int_equal(nn_tensor_alloc1(&b, 7, &e), 0);
    assert_int_equal(nn_tensor_alloc(&c, 0, NULL, &e), 0);
    assert_int_equal(nn_tensor_alloc(&d, 2, (int64_t[]){0, 3}, &e), 0);
    for (size_t i = 0; i < a.numel; i++)
        a.data[i] = (float)i * 0.25f - 7.0f;
    for (size_t i = 0; i < b.numel; i++)
        b.data[i] = 1.0f / (float)(i + 1);
    c.data[0] = -0.0f;
    const char *names[] = {"layer.0.weight", "b", "scalar", "empty"};
    const nn_tensor *ts[] = {&a, &b, &c, &d};
    const char *keys[] = {"backbone_type", "grad_scale", "quote"};
    const char *vals[] = {"resnet", "0.025", "a \"b\" \\ c\n"};
    const char *path = tmp_path("rt.safetensors");
    for (int pass = 0; pass < 2; pass++) /* the second write replaces the first */
        if (nn_safetensors_write(path, 4, names, ts, 3, keys, vals, &e))
            fail_msg("%s", e.msg);

    size_t len;
    uint8_t *raw = slurp(path, &len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | raw[i];
    assert_int_equal(hlen % 8, 0);
    assert_int_equal(len, 8 + hlen + (a.numel + b.numel + 1) * 4);
    free(raw);
    /* the checksum taken from memory while writing is the file's */
    char hex[65], want[65];
    if (nn_safetensors_write_hashed(path, 4, names, ts, 3, keys, vals, hex, &e))
        fail_msg("%s", e.msg);
    assert_int_equal(nn_sha256_file(path, want), 0);
    assert_string_equal(hex, want);

    nn_weights w;
    read_ok(&w, path);
    assert_int_equal(w.count, 4);
    for (int i = 0; i < 4; i++) {
        const nn_weight_entry *t = nn_weights_find(&w, names[i]);
        assert_non_null(t);
        assert_int_equal(t->dtype, NN_F32);
        assert_int_equal(t->ndim, ts[i]->ndim);
        assert_memory_equal(t->shape, ts[i]->shape, (size_t)t->ndim * sizeof(int64_t));
        assert_int_equal(t->numel, ts[i]->numel);
        if (t->numel)
            assert_memory_equal(t->data, ts[i]->data, t->numel * sizeof(float));
    }
    assert_int_equal(w.meta_count, 3);
    for (int i = 0; i < 3; i++)
        assert_string_equal(nn_weights_meta(&w, keys[i])->str, vals[i]);
    nn_weights_free(&w);

    /* Nothing but the file itself is left in the directory. */
    DIR *dir = opendir(tmpdir);
    assert_non_null(dir);
    for (struct dirent *de; (de = readdir(dir));)
        if (strstr(de->d_name, ".tmp"))
            fail_msg("temporary file left behind: %s", de->d_name);
    closedir(dir);
    unlink(path);
    nn_tensor_free(&a);
    nn_tensor_free(&b);
    nn_tensor_free(&c);
    nn_tensor_free(&d);
}

/* The write in two halves: the file complete under a temporary name (path untouched), then synced
 * and renamed into place; the same bytes and checksum as the one-call write. */
static void test_safetensors_unsynced_then_commit(void **state)
{
    (void)state;
    nn_err e;
    nn_tensor a;
    assert_int_equal(nn_tensor_alloc1(&a, 1000, &e), 0);
    for (size_t i = 0; i < a.numel; i++)
        a.data[i] = (float)i - 3.5f;
    const char *names[] = {"a"}, *keys[] = {"k"}, *vals[] = {"v"};
    const nn_tensor *ts[] = {&a};
    const char *path = tmp_path("two-halves.safetensors");
    char once[700];
    snprintf(once, sizeof once, "%s", tmp_path("one-call.safetensors"));
    char tmp[700], hex[65], hex1[65], want[65], want1[65];
    unlink(path);
    if (nn_safetensors_write_unsynced(path, 1, names, ts, 1, keys, vals, hex, tmp, sizeof tmp, &e))
        fail_msg("%s", e.msg);
    assert_int_equal(access(path, F_OK), -1); /* not there before the commit */
    assert_int_equal(access(tmp, R_OK), 0);
    assert_non_null(strstr(tmp, "two-halves.safetensors.tmp-"));
    if (nn_safetensors_commit(tmp, path, &e))
        fail_msg("%s", e.msg);
    assert_int_equal(access(tmp, F_OK), -1);
    if (nn_safetensors_write_hashed(once, 1, names, ts, 1, keys, vals, hex1, &e))
        fail_msg("%s", e.msg);
    assert_int_equal(nn_sha256_file(path, want), 0);
    assert_int_equal(nn_sha256_file(once, want1), 0);
    assert_string_equal(hex, want);
    assert_string_equal(want, want1);
    /* a temporary name too long for the caller's room: nothing left behind */
    char small[8];
    assert_int_equal(nn_safetensors_write_unsynced(path, 1, names, ts, 1, keys, vals, NULL, small, sizeof small, &e), -1);
    assert_true(starts_with_path(e.msg, path) && strstr(e.msg, "too long"));
    /* a commit that cannot rename (no such folder) says so and removes the temporary file */
    if (nn_safetensors_write_unsynced(path, 1, names, ts, 1, keys, vals, NULL, tmp, sizeof tmp, &e))
        fail_msg("%s", e.msg);
    const char *nodir = "/nonexistent-dir-for-pgnd-tests/w.safetensors";
    assert_int_equal(nn_safetensors_commit(tmp, nodir, &e), -1);
    assert_true(starts_with_path(e.msg, nodir) && strstr(e.msg, "rename"));
    assert_int_equal(access(tmp, F_OK), -1);
    assert_int_equal(nn_safetensors_commit(tmp, path, &e), -1); /* gone: cannot be synced */
    assert_true(starts_with_path(e.msg, path) && strstr(e.msg, "cannot open the temporary file"));
    unlink(path), unlink(once);
    nn_tensor_free(&a);
}

static void test_safetensors_write_errors(void **state)
{
    (void)state;
    nn_err e;
    nn_tensor a;
    assert_int_equal(nn_tensor_alloc1(&a, 3, &e), 0);
    const nn_tensor *ts[] = {&a, &a};
    const char *path = tmp_path("bad.safetensors");

    const char *dup[] = {"x", "x"};
    assert_int_equal(nn_safetensors_write(path, 2, dup, ts, 0, NULL, NULL, &e), -1);
    assert_true(starts_with_path(e.msg, path) && strstr(e.msg, "repeated"));
    const char *reserved[] = {"__metadata__"};
    assert_int_equal(nn_safetensors_write(path, 1, reserved, ts, 0, NULL, NULL, &e), -1);
    assert_true(starts_with_path(e.msg, path));
    assert_int_equal(access(path, F_OK), -1);

    const char *nodir = "/nonexistent-dir-for-pgnd-tests/w.safetensors", *ok[] = {"x"};
    assert_int_equal(nn_safetensors_write(nodir, 1, ok, ts, 0, NULL, NULL, &e), -1);
    assert_true(starts_with_path(e.msg, nodir) && strstr(e.msg, "temporary file"));
    nn_tensor_free(&a);
}

/* ---- broken files ---- */

static void test_missing_empty_and_wrong_files(void **state)
{
    (void)state;
    expect_fail(tmp_path("does-not-exist.pth"), "cannot open: No such file or directory");
    expect_fail(tmpdir, "a folder, but not a tfjs layers model");
    spit(tmp_path("empty.pth"), "", 0);
    expect_fail(tmp_path("empty.pth"), "the file is empty");
    static const uint8_t png[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 0, 13, 'I', 'H', 'D', 'R'};
    spit(tmp_path("image.png"), png, sizeof png);
    expect_fail(tmp_path("image.png"), "not a weights file (safetensors, torch zip or legacy torch); it starts "
                                       "with 89 50 4e 47 0d 0a 1a 0a");
    const char *text = "model.0.weight = [1, 2, 3]\n";
    spit(tmp_path("weights.txt"), text, strlen(text));
    expect_fail(tmp_path("weights.txt"), "not a weights file");
    spit(tmp_path("short.bin"), "\x80", 1);
    expect_fail(tmp_path("short.bin"), "not a weights file");
    /* A pickle that is not torch's, and a zip without data.pkl. */
    spit(tmp_path("plain.pkl"), "\x80\x02K\x05.", 5);
    expect_fail(tmp_path("plain.pkl"), "not a torch file");
    static const uint8_t zip[] =
        "PK\x03\x04" "\x14\0\0\0\0\0" "\0\0\0\0" "\0\0\0\0" "\0\0\0\0\0\0\0\0" "\x01\0\0\0" "a"
        "PK\x01\x02" "\x14\0\x14\0" "\0\0\0\0" "\0\0\0\0" "\0\0\0\0" "\0\0\0\0\0\0\0\0" "\x01\0\0\0\0\0"
        "\0\0\0\0\0\0\0\0" "\0\0\0\0" "a"
        "PK\x05\x06" "\0\0\0\0" "\x01\0\x01\0" "\x2f\0\0\0" "\x1f\0\0\0" "\0\0"; /* one stored entry "a" */
    spit(tmp_path("other.zip"), zip, sizeof zip - 1);
    expect_fail(tmp_path("other.zip"), "without a <folder>/data.pkl");
}

static void test_random_garbage(void **state)
{
    (void)state;
    static const char *const heads[] = {"", "PK\x03\x04", "\x80\x02", "\x80\x04\x95", "\x10\0\0\0\0\0\0\0{"};
    uint8_t buf[600];
    const char *path = tmp_path("garbage.bin");
    for (int i = 0; i < 200; i++) {
        size_t len = 1 + rnd() % sizeof buf;
        for (size_t k = 0; k < len; k++)
            buf[k] = (uint8_t)rnd();
        const char *h = heads[i % 5];
        size_t hl = i % 5 == 4 ? 9 : strlen(h);
        memcpy(buf, h, hl < len ? hl : len);
        spit(path, buf, len);
        expect_fail(path, NULL);
    }
}

static void test_truncated_files(void **state)
{
    (void)state;
    const char *path = tmp_path("truncated");
    for (size_t f = 0; f < NGOOD; f++) {
        size_t len;
        uint8_t *buf = slurp(GOOD[f], &len);
        for (size_t cut = 0; cut < len; cut++) { /* inside every header, pickle and data byte */
            spit(path, buf, cut);
            expect_fail(path, NULL);
        }
        free(buf);
    }
    /* Typical messages at a few cut points. */
    size_t len;
    uint8_t *buf = slurp(FIX "weights_sd_legacy.pth", &len);
    spit(path, buf, 200);
    expect_fail(path, "truncated");
    spit(path, buf, len - 1);
    expect_fail(path, "truncated");
    free(buf);
    buf = slurp(FIX "weights_py.safetensors", &len);
    spit(path, buf, 40);
    expect_fail(path, "truncated");
    spit(path, buf, len - 3);
    expect_fail(path, "truncated");
    free(buf);
    buf = slurp(FIX "weights_sd_zip.pth", &len);
    spit(path, buf, len / 2);
    expect_fail(path, "end-of-central-directory record not found");
    free(buf);
}

static size_t find_last(const uint8_t *buf, size_t len, const char *sig)
{
    for (size_t p = len - 4; p > 0; p--)
        if (!memcmp(buf + p, sig, 4))
            return p;
    fail_msg("signature not found");
    return 0;
}

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void test_corrupt_zip(void **state)
{
    (void)state;
    size_t len;
    uint8_t *good = slurp(FIX "weights_sd_zip.pth", &len), *buf = malloc(len);
    const char *path = tmp_path("corrupt.pth");
    size_t eocd = find_last(good, len, "PK\x05\x06"), cd = good[eocd + 16] | good[eocd + 17] << 8;
    assert_memory_equal(good + cd, "PK\x01\x02", 4); /* first central entry: data.pkl */
    static const struct { size_t at; uint32_t value; const char *needle; } cases[] = {
        {16, 0xffffffffu, "zip64"}, /* central directory offset (field offsets are relative to the EOCD) */
        {16, 0x7ffffff0u, "central directory lies outside"},
        {12, 0x7ffffff0u, "central directory lies outside"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        memcpy(buf, good, len);
        put32(buf + eocd + cases[i].at, cases[i].value);
        spit(path, buf, len);
        expect_fail(path, cases[i].needle);
    }
    memcpy(buf, good, len);
    buf[cd + 1] = 'X'; /* central entry signature */
    spit(path, buf, len);
    expect_fail(path, "central directory entry 0 is corrupt");
    memcpy(buf, good, len);
    put32(buf + cd + 42, 0x7fffff00u); /* local header offset of data.pkl */
    spit(path, buf, len);
    expect_fail(path, "no local header");
    memcpy(buf, good, len);
    put32(buf + cd + 20, 0x7fffff00u); /* sizes of data.pkl */
    put32(buf + cd + 24, 0x7fffff00u);
    spit(path, buf, len);
    expect_fail(path, "runs past the end of the file");
    memcpy(buf, good, len);
    buf[cd + 46 + (good[cd + 28] | good[cd + 29] << 8) - 1] = 'X'; /* data.pkl -> data.pkX */
    spit(path, buf, len);
    expect_fail(path, "without a <folder>/data.pkl");
    free(good);
    free(buf);
}

static void test_bad_fixtures(void **state)
{
    (void)state;
    expect_fail(FIX "weights_bad_oob_legacy.pth",
                "tensor 'x' (size [2, 4], stride [4, 1], offset 0) reaches past the end of its storage");
    expect_fail(FIX "weights_bad_oob_zip.pth",
                "tensor 'x' (size [3, 3], stride [1, 3], offset 0) reaches past the end of its storage");
    expect_fail(FIX "weights_bad_numel_legacy.pth", "claims 1099511627776 F32 elements but only 24 bytes");
    expect_fail(FIX "weights_bad_short_zip.pth", "should hold 100 F32 elements but the file has 24 bytes");
    expect_fail(FIX "weights_bad_global_legacy.pth", "system' is not allowed");
    expect_fail(FIX "weights_bad_deflate_zip.pth", "is compressed (method 8)");
}

/* Random byte changes in every good file: any outcome but a crash or a bad read is fine. */
static void test_mutated_files(void **state)
{
    (void)state;
    const char *path = tmp_path("mutated");
    for (size_t f = 0; f < NGOOD; f++) {
        size_t len;
        uint8_t *good = slurp(GOOD[f], &len), *buf = malloc(len);
        for (int i = 0; i < 150; i++) {
            memcpy(buf, good, len);
            for (int k = 1 + (int)(rnd() % 4); k > 0; k--) {
                size_t at = rnd() % len;
                buf[at] = rnd() % 3 ? (uint8_t)rnd() : (uint8_t)(buf[at] ^ (1u << (rnd() % 8)));
            }
            spit(path, buf, len);
            read_any(path);
        }
        free(good);
        free(buf);
    }
}

/* Hand-written object pickles inside a legacy file. */
static void test_legacy_object_errors(void **state)
{
    (void)state;
    static const struct { const char *pickle; size_t len; const char *needle; } cases[] = {
#define P(s) s, sizeof s - 1
        {P("\x80\x02]."), "the pickle holds a list, not a dict of tensors"},
        {P("\x80\x02}q\x00X\x01\x00\x00\x00" "ah\x00s."), "nested more than 16 deep"}, /* d['a'] = d */
        {P("\x80\x02}X\x01\x00\x00\x00x" "ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storage"
           "ctorch\nFloatStorage\nX\x01\x00\x00\x00" "9X\x03\x00\x00\x00" "cpuK\x04NtQK\x00K\x04\x85K\x01\x85tRs."),
         "tensor 'x': its storage '9' is not in the file"},
        {P("\x80\x02}X\x01\x00\x00\x00x(X\x06\x00\x00\x00modulecos\nsystem\nNNtQs."), "os.system' is not allowed"},
        {P("\x80\x02}X\x01\x00\x00\x00x(X\x06\x00\x00\x00moduleK\x01NNtQs."), "persistent id 'module'"},
        {P("\x80\x02}X\x01\x00\x00\x00xctorch._utils\n_rebuild_tensor_v2\nK\x01\x85Rs."),
         "needs at least 4 arguments"},
#undef P
    };
    const char *path = tmp_path("object.pth");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_legacy(path, cases[i].pickle, cases[i].len);
        expect_fail(path, cases[i].needle);
    }
    /* An empty dict is a valid file with nothing in it. */
    write_legacy(path, "\x80\x02}.", 4);
    nn_weights w;
    read_ok(&w, path);
    assert_int_equal(w.count, 0);
    nn_weights_free(&w);
}

/* ---- the pickle VM on its own ---- */

static int pk(const char *bytes, size_t len, nn_pk_vm *vm, nn_pk_value **out, nn_err *e)
{
    size_t used;
    nn_pk_init(vm);
    return nn_pk_load(vm, (const uint8_t *)bytes, len, 100, &used, out, e);
}

static void test_pickle_opcodes(void **state)
{
    (void)state;
    nn_pk_vm vm;
    nn_pk_value *v;
    nn_err e;
    /* [b'ab', 'cd', b'ef', b'g', (1, -2, 1.5), 2**63 - 1 via LONG1, True] with memo round trips */
    static const char p[] = "\x80\x02](U\x02" "abT\x02\x00\x00\x00" "cdB\x02\x00\x00\x00" "efC\x01g"
                            "K\x01\x8a\x01\xfeG\x3f\xf8\x00\x00\x00\x00\x00\x00\x87r\x00\x00\x00\x00"
                            "j\x00\x00\x00\x00\x8a\x08\xff\xff\xff\xff\xff\xff\xff\x7f\x88" "e\x8c\x01z\x94" "a.";
    assert_int_equal(pk(p, sizeof p - 1, &vm, &v, &e), 0);
    assert_int_equal(v->kind, NN_PK_LIST);
    assert_int_equal(v->u.seq.len, 9);
    const char *strs[] = {"ab", "cd", "ef", "g"};
    for (int i = 0; i < 4; i++) {
        assert_int_equal(v->u.seq.v[i]->kind, NN_PK_STR);
        assert_string_equal(v->u.seq.v[i]->u.str.s, strs[i]);
    }
    const nn_pk_value *t = v->u.seq.v[4];
    assert_int_equal(t->kind, NN_PK_TUPLE);
    assert_int_equal(t->u.seq.len, 3);
    assert_int_equal(t->u.seq.v[0]->u.i, 1);
    assert_int_equal(t->u.seq.v[1]->u.i, -2);
    assert_true(t->u.seq.v[2]->u.f == 1.5);
    assert_ptr_equal(v->u.seq.v[5], t); /* LONG_BINGET returns the same object */
    assert_int_equal(v->u.seq.v[6]->u.i, INT64_MAX);
    assert_int_equal(v->u.seq.v[7]->kind, NN_PK_BOOL);
    assert_string_equal(v->u.seq.v[8]->u.str.s, "z"); /* APPEND */
    nn_pk_free(&vm);

    static const struct { const char *pickle; size_t len; const char *needle; } bad[] = {
#define P(s) s, sizeof s - 1
        {P("\x80\x02\x8f."), "at byte 102: unsupported pickle opcode EMPTY_SET (0x8f)"},
        {P("\x80\x02]\x8f\x90."), "EMPTY_SET"},
        {P("\x80\x02\x81."), "NEWOBJ"},
        {P("\x80\x02\xff."), "unknown pickle opcode 0xff"},
        {P("\x80\x06N."), "protocol 6"},
        {P("\x80\x02t."), "no MARK"},
        {P("\x80\x02\x86."), "stack underflow"},
        {P("\x80\x02(s."), "stack underflow"},
        {P("\x80\x02."), "stack underflow"},
        {P("\x80\x02h\x07."), "memo index 7 was never stored"},
        {P("\x80\x02Nq\x01."), "memo index 1 out of sequence"},
        {P("\x80\x02Nr\xff\xff\xff\x7f."), "memo index 2147483647 out of sequence"},
        {P("\x80\x02N"), "ends before the pickle's STOP"},
        {P("\x80\x02X\xff\xff\xff\xff"), "truncated"},
        {P("\x80\x02T\xff\xff\xff\xff"), "negative string length"},
        {P("\x80\x02" "cos\nsys"), "truncated GLOBAL"},
        {P("\x80\x02" "cbuiltins\neval\n."), "GLOBAL 'builtins.eval' is not allowed"},
        {P("\x80\x04\x8c\x02os\x8c\x06system\x93."), "GLOBAL 'os.system' is not allowed"},
        {P("\x80\x02K\x01)R."), "REDUCE calls a int"},
        {P("\x80\x02" "ccollections\nOrderedDict\nK\x01\x85R."), "OrderedDict called with arguments"},
        {P("\x80\x02" "ctorch\nFloatStorage\n)R."), "REDUCE calls a storage class"},
        {P("\x80\x02]K\x01K\x02s."), "SETITEM on a list"},
        {P("\x80\x02}K\x01" "a."), "APPEND on a dict"},
        {P("\x80\x02}(K\x01u."), "odd number"},
        {P("\x80\x02(K\x01tQ."), "not a tuple starting with a string"},
        {P("\x80\x02(X\x07\x00\x00\x00storageK\x01tQ."), "malformed storage persistent id"},
#undef P
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        e.msg[0] = 0;
        int rc = pk(bad[i].pickle, bad[i].len, &vm, &v, &e);
        if (rc != -1 || !strstr(e.msg, bad[i].needle) || strncmp(e.msg, "pickle at byte ", 15))
            fail_msg("case %zu: rc %d, \"%s\", wanted \"%s\"", i, rc, e.msg, bad[i].needle);
        nn_pk_free(&vm);
    }
}

static int setup(void **state)
{
    (void)state;
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    DIR *dir = opendir(tmpdir);
    for (struct dirent *de; dir && (de = readdir(dir));)
        if (de->d_name[0] != '.')
            unlink(tmp_path(de->d_name));
    if (dir)
        closedir(dir);
    return rmdir(tmpdir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_zip_state_dict),
        cmocka_unit_test(test_legacy_state_dict),
        cmocka_unit_test(test_protocol4_state_dict),
        cmocka_unit_test(test_legacy_checkpoint),
        cmocka_unit_test(test_views_and_dtypes_zip),
        cmocka_unit_test(test_views_and_dtypes_legacy),
        cmocka_unit_test(test_old_rebuild_and_storage_views),
        cmocka_unit_test(test_python_safetensors),
        cmocka_unit_test(test_dtype_names),
        cmocka_unit_test(test_get_f32_errors),
        cmocka_unit_test(test_safetensors_roundtrip),
        cmocka_unit_test(test_safetensors_unsynced_then_commit),
        cmocka_unit_test(test_safetensors_write_errors),
        cmocka_unit_test(test_missing_empty_and_wrong_files),
        cmocka_unit_test(test_random_garbage),
        cmocka_unit_test(test_truncated_files),
        cmocka_unit_test(test_corrupt_zip),
        cmocka_unit_test(test_bad_fixtures),
        cmocka_unit_test(test_mutated_files),
        cmocka_unit_test(test_legacy_object_errors),
        cmocka_unit_test(test_pickle_opcodes),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
