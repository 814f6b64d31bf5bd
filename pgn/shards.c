/* A collection of teacher gradients on disk: see shards.h. */
#include "pgn/shards.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nn/rng.h"
#include "nn/sha256.h"
#include "nn/tensor.h"
#include "nn/weights.h"
#include "pgn/teacher.h"

static const char *const TENSORS[4] = {"y_hat", "y", "g_true", "loss"};

void pgn_shard_name(char *buf, size_t len, int index) { snprintf(buf, len, "shard-%06d.safetensors", index); }

/* ---- atomic files ---- */

static int sync_dir_of(const char *path)
{
    char *copy = strdup(path);
    if (!copy)
        return -1;
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    free(copy);
    if (fd < 0)
        return -1;
    int rc = fsync(fd) == 0 || errno == EINVAL ? 0 : -1; /* some file systems cannot sync a folder */
    close(fd);
    return rc;
}

int pgn_write_file_atomic(const char *path, const void *data, size_t len, nn_err *e)
{
    size_t plen = strlen(path);
    char *tmp = malloc(plen + sizeof ".tmp-XXXXXX");
    if (!tmp)
        return nn_errf(e, "%s: out of memory", path);
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp-XXXXXX", sizeof ".tmp-XXXXXX");
    int fd = mkstemp(tmp);
    if (fd < 0) {
        int rc = nn_errf(e, "%s: cannot create a temporary file next to it: %s", path, strerror(errno));
        free(tmp);
        return rc;
    }
    int rc = 0;
    const char *p = data;
    for (size_t done = 0; done < len && !rc;) {
        ssize_t w = write(fd, p + done, len - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            rc = nn_errf(e, "%s: cannot write: %s", path, strerror(errno));
        else
            done += (size_t)w;
    }
    if (!rc && (fchmod(fd, 0644) || fsync(fd)))
        rc = nn_errf(e, "%s: cannot write: %s", path, strerror(errno));
    if (close(fd) && !rc)
        rc = nn_errf(e, "%s: cannot write: %s", path, strerror(errno));
    if (!rc && rename(tmp, path))
        rc = nn_errf(e, "%s: cannot rename the temporary file into place: %s", path, strerror(errno));
    if (rc)
        unlink(tmp);
    else if (sync_dir_of(path))
        rc = nn_errf(e, "%s: written, but syncing its folder failed: %s", path, strerror(errno));
    free(tmp);
    return rc;
}

/* ---- shards ---- */

/* tmp NULL: the whole atomic write; otherwise its first half (nn_safetensors_write_unsynced). */
static int precision_ok(const pgn_collection_info *info, const char *path, nn_err *e)
{
    if (strcmp(info->generator_precision, "bf16") && strcmp(info->generator_precision, "f32"))
        return nn_errf(e, "%s: generator_precision '%s' is not bf16 or f32", path, info->generator_precision);
    return 0;
}

static int shard_write(const char *folder, const pgn_collection_info *info, int index, int n, const float *y_hat,
                       const float *y, const float *g_true, const float *loss, pgn_shard_entry *out, char *tmp,
                       size_t tmp_len, nn_err *e)
{
    char path[1200];
    memset(out, 0, sizeof *out);
    pgn_shard_name(out->file, sizeof out->file, index);
    snprintf(path, sizeof path, "%s/%s", folder, out->file);
    if (n <= 0)
        return nn_errf(e, "%s: a shard needs at least one sample (got %d)", path, n);
    if (precision_ok(info, path, e))
        return -1;
    int64_t img[4] = {n, 3, info->size, info->size}, one[1] = {n};
    nn_tensor t[4] = {nn_tensor_view((float *)y_hat, 4, img), nn_tensor_view((float *)y, 4, img),
                      nn_tensor_view((float *)g_true, 4, img), nn_tensor_view((float *)loss, 1, one)};
    const nn_tensor *tp[4] = {&t[0], &t[1], &t[2], &t[3]};
    enum { NMETA = 17 };
    char v[NMETA][640];
    const char *k[NMETA] = {"format", "teacher", "teacher_name", "teacher_sha256", "teacher_seed", "space", "size",
                            "seed", "samples_per_shard", "samples_wanted", "generators", "batch", "driver",
                            "pgnd_version", "shard", "count", "generator_precision"};
    snprintf(v[0], sizeof v[0], PGN_SHARD_FORMAT);
    snprintf(v[1], sizeof v[1], "%s", info->teacher);
    snprintf(v[2], sizeof v[2], "%s", info->teacher_name);
    snprintf(v[3], sizeof v[3], "%s", info->teacher_sha256);
    snprintf(v[4], sizeof v[4], "%llu", (unsigned long long)info->teacher_seed);
    snprintf(v[5], sizeof v[5], "%s", info->space);
    snprintf(v[6], sizeof v[6], "%d", info->size);
    snprintf(v[7], sizeof v[7], "%llu", (unsigned long long)info->seed);
    snprintf(v[8], sizeof v[8], "%d", info->samples_per_shard);
    snprintf(v[9], sizeof v[9], "%lld", (long long)info->samples_wanted);
    snprintf(v[10], sizeof v[10], "%s", info->generators);
    snprintf(v[11], sizeof v[11], "%d", info->batch);
    snprintf(v[12], sizeof v[12], "%s", info->driver);
    snprintf(v[13], sizeof v[13], "%s", info->version);
    snprintf(v[14], sizeof v[14], "%d", index);
    snprintf(v[15], sizeof v[15], "%d", n);
    snprintf(v[16], sizeof v[16], "%s", info->generator_precision);
    const char *vv[NMETA];
    for (int i = 0; i < NMETA; i++)
        vv[i] = v[i];
    if (tmp ? nn_safetensors_write_unsynced(path, 4, TENSORS, tp, NMETA, k, vv, out->sha256, tmp, tmp_len, e)
            : nn_safetensors_write_hashed(path, 4, TENSORS, tp, NMETA, k, vv, out->sha256, e))
        return -1;
    out->count = n;
    return 0;
}

int pgn_shard_write(const char *folder, const pgn_collection_info *info, int index, int n, const float *y_hat,
                    const float *y, const float *g_true, const float *loss, pgn_shard_entry *out, nn_err *e)
{
    return shard_write(folder, info, index, n, y_hat, y, g_true, loss, out, NULL, 0, e);
}

int pgn_shard_commit(const char *tmp, const char *path, nn_err *e)
{
    if (nn_safetensors_commit(tmp, path, e))
        return -1;
    /* Synced, so its pages are clean and can go: the file is read later (by a fit, maybe on
     * another machine), and keeping each 37-150 MB shard cached would evict other jobs' data on a
     * shared server. The freed pages can serve the next shard's write: on this project's VM some
     * processes wrote a 37 MB shard into fresh pages in 85-115 ms against 21 ms (2 of 10 runs of a
     * test driver without this, none of 8 with it). */
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        (void)posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED); /* advice only: nothing to report */
        close(fd);
    }
    return 0;
}

int pgn_shard_write_unsynced(const char *folder, const pgn_collection_info *info, int index, int n,
                             const float *y_hat, const float *y, const float *g_true, const float *loss,
                             pgn_shard_entry *out, char *tmp, size_t tmp_len, nn_err *e)
{
    return shard_write(folder, info, index, n, y_hat, y, g_true, loss, out, tmp, tmp_len, e);
}

/* ---- the manifest ---- */

static json_t *info_json(const pgn_collection_info *info)
{
    return json_pack("{s:s, s:s, s:s, s:s, s:s, s:I, s:s, s:i, s:I, s:i, s:I, s:s, s:s, s:i, s:s}", "format",
                     PGN_MANIFEST_FORMAT, "pgnd_version", info->version, "teacher", info->teacher, "teacher_name",
                     info->teacher_name, "teacher_sha256", info->teacher_sha256, "teacher_seed",
                     (json_int_t)info->teacher_seed, "space", info->space, "size", info->size, "seed",
                     (json_int_t)info->seed, "samples_per_shard", info->samples_per_shard, "samples_wanted",
                     (json_int_t)info->samples_wanted, "generators", info->generators, "generator_precision",
                     info->generator_precision, "batch", info->batch, "driver", info->driver);
}

int pgn_manifest_write(const char *folder, const pgn_collection_info *info, const pgn_shard_entry *shards, int n,
                       int complete, nn_err *e)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", folder, PGN_MANIFEST_NAME);
    if (precision_ok(info, path, e))
        return -1;
    json_t *root = info_json(info), *list = json_array();
    int64_t samples = 0;
    int bad = !root || !list;
    for (int i = 0; i < n && !bad; i++) {
        samples += shards[i].count;
        bad = json_array_append_new(list, json_pack("{s:s, s:i, s:s}", "file", shards[i].file, "count",
                                                    shards[i].count, "sha256", shards[i].sha256)) != 0;
    }
    if (!bad)
        bad = json_object_set_new(root, "samples", json_integer((json_int_t)samples)) ||
              json_object_set_new(root, "complete", json_boolean(complete)) || json_object_set(root, "shards", list);
    char *text = bad ? NULL : json_dumps(root, JSON_INDENT(2));
    json_decref(root);
    json_decref(list);
    if (!text)
        return nn_errf(e, "%s: cannot build the manifest (out of memory, or a string is not UTF-8)", path);
    size_t len = strlen(text);
    text[len] = '\n'; /* json_dumps leaves room for its NUL: a final newline instead */
    int rc = pgn_write_file_atomic(path, text, len + 1, e);
    free(text);
    return rc;
}

static int get_str(json_t *o, const char *key, char *dst, size_t len, const char *path, nn_err *e)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_string(v))
        return nn_errf(e, "%s: field '%s' is missing or not a string", path, key);
    if (strlen(json_string_value(v)) >= len)
        return nn_errf(e, "%s: field '%s' is too long (%zu bytes at most)", path, key, len - 1);
    snprintf(dst, len, "%s", json_string_value(v));
    return 0;
}

static int get_int(json_t *o, const char *key, int64_t lo, int64_t hi, int64_t *dst, const char *path, nn_err *e)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v))
        return nn_errf(e, "%s: field '%s' is missing or not an integer", path, key);
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi)
        return nn_errf(e, "%s: field '%s' is %lld, outside [%lld, %lld]", path, key, (long long)x, (long long)lo,
                       (long long)hi);
    *dst = x;
    return 0;
}

static int is_hex64(const char *s)
{
    for (int i = 0; i < 64; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    return s[64] == 0;
}

int pgn_manifest_read(const char *folder, pgn_collection_info *info, pgn_shard_entry **shards, int *n,
                      int *complete, nn_err *e)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", folder, PGN_MANIFEST_NAME);
    memset(info, 0, sizeof *info);
    *shards = NULL;
    *n = 0;
    if (access(path, F_OK))
        return nn_errf(e, "%s: cannot open: %s (is %s a collection made by collect?)", path, strerror(errno), folder);
    json_error_t je;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return nn_errf(e, "%s:%d:%d: %s", path, je.line, je.column, je.text);
    int rc = 0;
    char fmt[64];
    int64_t size, spp, want, batch, tseed, seed;
    if (!json_is_object(root))
        rc = nn_errf(e, "%s: not a JSON object", path);
    else if (get_str(root, "format", fmt, sizeof fmt, path, e))
        rc = -1;
    else if (strcmp(fmt, PGN_MANIFEST_FORMAT))
        rc = nn_errf(e, "%s: format '%s' is not '%s'", path, fmt, PGN_MANIFEST_FORMAT);
    else if (get_str(root, "pgnd_version", info->version, sizeof info->version, path, e) ||
             get_str(root, "teacher", info->teacher, sizeof info->teacher, path, e) ||
             get_str(root, "teacher_name", info->teacher_name, sizeof info->teacher_name, path, e) ||
             get_str(root, "teacher_sha256", info->teacher_sha256, sizeof info->teacher_sha256, path, e) ||
             get_int(root, "teacher_seed", 0, INT64_MAX, &tseed, path, e) ||
             get_str(root, "space", info->space, sizeof info->space, path, e) ||
             get_int(root, "size", 1, 1 << 16, &size, path, e) || get_int(root, "seed", 0, INT64_MAX, &seed, path, e) ||
             get_int(root, "samples_per_shard", 1, 1 << 30, &spp, path, e) ||
             get_int(root, "samples_wanted", 0, INT64_MAX, &want, path, e) ||
             get_str(root, "generators", info->generators, sizeof info->generators, path, e) ||
             get_int(root, "batch", 1, 1 << 30, &batch, path, e) ||
             get_str(root, "driver", info->driver, sizeof info->driver, path, e))
        rc = -1;
    if (!rc && !json_object_get(root, "generator_precision")) /* written before the field existed */
        snprintf(info->generator_precision, sizeof info->generator_precision, "f32");
    else if (!rc && get_str(root, "generator_precision", info->generator_precision, sizeof info->generator_precision,
                            path, e))
        rc = -1;
    else if (!rc && strcmp(info->generator_precision, "bf16") && strcmp(info->generator_precision, "f32"))
        rc = nn_errf(e, "%s: field 'generator_precision' is '%s', not bf16 or f32", path, info->generator_precision);
    if (!rc && info->teacher_sha256[0] && !is_hex64(info->teacher_sha256))
        rc = nn_errf(e, "%s: field 'teacher_sha256' is not 64 lowercase hex digits", path);
    if (!rc) {
        info->teacher_seed = (uint64_t)tseed, info->size = (int)size, info->seed = (uint64_t)seed;
        info->samples_per_shard = (int)spp, info->samples_wanted = want, info->batch = (int)batch;
        if (complete)
            *complete = json_is_true(json_object_get(root, "complete"));
    }
    json_t *list = json_object_get(root, "shards");
    if (!rc && !json_is_array(list))
        rc = nn_errf(e, "%s: field 'shards' is missing or not a list", path);
    size_t count = rc ? 0 : json_array_size(list);
    if (!rc && count && !(*shards = calloc(count, sizeof **shards)))
        rc = nn_errf(e, "%s: out of memory", path);
    for (size_t i = 0; !rc && i < count; i++) {
        json_t *s = json_array_get(list, i);
        pgn_shard_entry *d = &(*shards)[i];
        char where[1300], expect[40];
        snprintf(where, sizeof where, "%s: shards[%zu]", path, i);
        int64_t c;
        if (!json_is_object(s))
            rc = nn_errf(e, "%s is not an object", where);
        else if (get_str(s, "file", d->file, sizeof d->file, where, e) || get_int(s, "count", 1, spp, &c, where, e) ||
                 get_str(s, "sha256", d->sha256, sizeof d->sha256, where, e))
            rc = -1;
        else if (pgn_shard_name(expect, sizeof expect, (int)i), strcmp(d->file, expect))
            /* shards are numbered in order; a name is never a path out of the folder */
            rc = nn_errf(e, "%s: file '%s' should be '%s'", where, d->file, expect);
        else if (!is_hex64(d->sha256))
            rc = nn_errf(e, "%s: sha256 is not 64 lowercase hex digits", where);
        else
            d->count = (int)c;
    }
    json_decref(root);
    if (rc) {
        free(*shards);
        *shards = NULL;
        return -1;
    }
    *n = (int)count;
    return 0;
}

/* ---- identity checks ---- */

void pgn_collection_expect_teacher(pgn_collection_expect *x, const struct pgn_teacher *t, int size, char *desc,
                                   size_t len)
{
    memset(x, 0, sizeof *x);
    pgn_teacher_describe(t, desc, len);
    x->teacher = desc;
    x->teacher_name = t->name;
    x->teacher_sha256 = t->random ? "" : t->weights_sha256;
    x->teacher_seed = t->seed;
    x->space = PGN_SPACE_NAME_NORMALISED;
    x->size = size;
}

int pgn_collection_check(const char *folder, const pgn_collection_info *have, const pgn_collection_expect *want,
                         nn_err *e)
{
    if (!want)
        return 0;
    int teacher_differs = (want->teacher_name && strcmp(want->teacher_name, have->teacher_name)) ||
                          (want->teacher_sha256 && strcmp(want->teacher_sha256, have->teacher_sha256)) ||
                          (want->teacher_sha256 && !want->teacher_sha256[0] && want->teacher_seed != have->teacher_seed);
    if (teacher_differs) {
        char mine[700];
        if (want->teacher)
            snprintf(mine, sizeof mine, "%s", want->teacher);
        else
            snprintf(mine, sizeof mine, "%s (sha256 %s)", want->teacher_name ? want->teacher_name : "?",
                     want->teacher_sha256 && want->teacher_sha256[0] ? want->teacher_sha256 : "none: random teacher");
        return nn_errf(e, "collection %s was made with teacher '%s' (weights sha256 %s), this fit uses '%s' (weights sha256 %s)",
                       folder, have->teacher, have->teacher_sha256[0] ? have->teacher_sha256 : "none: random teacher",
                       mine, want->teacher_sha256 && want->teacher_sha256[0] ? want->teacher_sha256 : "none: random teacher");
    }
    if (want->space && strcmp(want->space, have->space))
        return nn_errf(e, "collection %s holds images and gradients in %s space, this fit uses %s space", folder,
                       have->space, want->space);
    if (want->size && want->size != have->size)
        return nn_errf(e, "collection %s holds %dx%d crops, this fit uses size %d", folder, have->size, have->size,
                       want->size);
    return 0;
}

/* ---- the reader ---- */

struct pgn_shards {
    char folder[1024];
    pgn_collection_info info;
    pgn_shard_entry *e;
    int n;
    unsigned char *bad;
    long skipped;
    int64_t samples;
    uint64_t seed;
    pgn_shards_skip_fn on_skip;
    void *skip_ctx;
    pgn_shards_pos pos;
    int *order;              /* the shard order of order_epoch */
    int64_t order_epoch;
    /* the resident shard */
    int cur;                 /* manifest index, -1 = none */
    int64_t cur_epoch, cur_slot;
    unsigned char *buf;      /* the whole file */
    size_t buf_cap;
    const float *t[4];       /* y_hat, y, g_true, loss inside buf */
    int *perm;               /* its sample order */
    int perm_cap;
    size_t cnt;              /* 3 S S */
};

/* splitmix64's finaliser: independent streams from (seed, epoch, shard). */
static uint64_t mix(uint64_t a, uint64_t b)
{
    uint64_t z = a ^ (b + 0x9e3779b97f4a7c15ull + (a << 6) + (a >> 2));
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void shuffle(int *v, int n, uint64_t seed)
{
    nn_rng r;
    nn_rng_seed(&r, seed);
    for (int i = 0; i < n; i++)
        v[i] = i;
    for (int i = n - 1; i > 0; i--) { /* Fisher-Yates */
        int j = (int)nn_rng_below(&r, (uint32_t)i + 1), t = v[i];
        v[i] = v[j], v[j] = t;
    }
}

static void ensure_order(pgn_shards *r, int64_t epoch)
{
    if (r->order_epoch != epoch) {
        shuffle(r->order, r->n, mix(r->seed, (uint64_t)epoch));
        r->order_epoch = epoch;
    }
}

int pgn_shards_open(pgn_shards **out, const char *folder, const pgn_collection_expect *want, uint64_t seed,
                    pgn_shards_skip_fn on_skip, void *skip_ctx, nn_err *e)
{
    *out = NULL;
    pgn_shards *r = calloc(1, sizeof *r);
    if (!r)
        return nn_errf(e, "out of memory");
    snprintf(r->folder, sizeof r->folder, "%s", folder);
    r->cur = -1;
    r->order_epoch = -1;
    r->seed = seed;
    r->on_skip = on_skip;
    r->skip_ctx = skip_ctx;
    if (pgn_manifest_read(folder, &r->info, &r->e, &r->n, NULL, e) || pgn_collection_check(folder, &r->info, want, e))
        goto fail;
    if (r->n == 0) {
        nn_errf(e, "collection %s lists no complete shard yet (its collect has not written one)", folder);
        goto fail;
    }
    r->cnt = (size_t)3 * r->info.size * r->info.size;
    r->bad = calloc((size_t)r->n, 1);
    r->order = malloc((size_t)r->n * sizeof *r->order);
    if (!r->bad || !r->order) {
        nn_errf(e, "out of memory");
        goto fail;
    }
    for (int i = 0; i < r->n; i++)
        r->samples += r->e[i].count;
    *out = r;
    return 0;
fail:
    pgn_shards_close(r);
    return -1;
}

void pgn_shards_close(pgn_shards *r)
{
    if (!r)
        return;
    free(r->e), free(r->bad), free(r->order), free(r->buf), free(r->perm);
    free(r);
}

const pgn_collection_info *pgn_shards_info(const pgn_shards *r) { return &r->info; }
int pgn_shards_count(const pgn_shards *r) { return r->n; }
int64_t pgn_shards_samples(const pgn_shards *r) { return r->samples; }
long pgn_shards_skipped(const pgn_shards *r) { return r->skipped; }
int pgn_shards_is_bad(const pgn_shards *r, int i) { return i >= 0 && i < r->n && r->bad[i]; }
const pgn_shard_entry *pgn_shards_entry(const pgn_shards *r, int i) { return i >= 0 && i < r->n ? &r->e[i] : NULL; }
pgn_shards_pos pgn_shards_get_pos(const pgn_shards *r) { return r->pos; }

static void mark_bad(pgn_shards *r, int i, const char *why)
{
    r->bad[i] = 1;
    r->skipped++;
    r->cur = -1;
    if (r->on_skip)
        r->on_skip(r->skip_ctx, r->e[i].file, why);
}

/* The tensor `name` of a parsed shard header: F32, the expected shape, inside the data. */
static const char *find_tensor(json_t *hdr, const char *name, int ndim, const int64_t *shape, const unsigned char *data,
                               size_t data_len, const float **out, char *why, size_t wlen)
{
    json_t *t = json_object_get(hdr, name), *dt = json_object_get(t, "dtype"), *sh = json_object_get(t, "shape");
    json_t *off = json_object_get(t, "data_offsets");
    if (!json_is_object(t) || !json_is_string(dt) || strcmp(json_string_value(dt), "F32") || !json_is_array(sh) ||
        (int)json_array_size(sh) != ndim || !json_is_array(off) || json_array_size(off) != 2) {
        snprintf(why, wlen, "tensor '%s' is missing or not F32 with %d dimensions", name, ndim);
        return why;
    }
    size_t numel = 1;
    for (int d = 0; d < ndim; d++) {
        json_int_t v = json_integer_value(json_array_get(sh, (size_t)d));
        if (v != shape[d]) {
            snprintf(why, wlen, "tensor '%s' has dimension %d of %lld, the manifest implies %lld", name, d,
                     (long long)v, (long long)shape[d]);
            return why;
        }
        numel *= (size_t)v;
    }
    json_int_t a = json_integer_value(json_array_get(off, 0)), b = json_integer_value(json_array_get(off, 1));
    if (a < 0 || b < a || (size_t)b > data_len || (size_t)(b - a) != numel * sizeof(float) ||
        ((uintptr_t)(data + a)) % sizeof(float)) {
        snprintf(why, wlen, "tensor '%s' has bad data offsets [%lld, %lld]", name, (long long)a, (long long)b);
        return why;
    }
    *out = (const float *)(data + a);
    return NULL;
}

/* Reads shard i into buf, checks its sha256 and its tensors. 0, or 1 when it is bad (reported). */
static int load_shard(pgn_shards *r, int i, nn_err *e)
{
    char path[1200], why[512] = "";
    snprintf(path, sizeof path, "%s/%s", r->folder, r->e[i].file);
    r->cur = -1;
    FILE *f = fopen(path, "rb");
    struct stat st;
    if (!f || fstat(fileno(f), &st)) {
        snprintf(why, sizeof why, "cannot open: %s", strerror(errno));
        if (f)
            fclose(f);
        mark_bad(r, i, why);
        return 1;
    }
    size_t len = (size_t)st.st_size;
    if (len > r->buf_cap) {
        free(r->buf);
        r->buf = malloc(len ? len : 1);
        r->buf_cap = r->buf ? len : 0;
        if (!r->buf) {
            fclose(f);
            return nn_errf(e, "%s: out of memory (%zu bytes)", path, len);
        }
    }
    size_t got = fread(r->buf, 1, len, f);
    fclose(f);
    if (got != len) {
        snprintf(why, sizeof why, "cannot read (%zu of %zu bytes)", got, len);
        mark_bad(r, i, why);
        return 1;
    }
    nn_sha256 h;
    char hex[65];
    nn_sha256_init(&h);
    nn_sha256_update(&h, r->buf, len);
    nn_sha256_final_hex(&h, hex);
    if (strcmp(hex, r->e[i].sha256)) {
        snprintf(why, sizeof why, "sha256 %s does not match the manifest's %s", hex, r->e[i].sha256);
        mark_bad(r, i, why);
        return 1;
    }
    /* the checksum matched: the header is ours, but check it anyway before trusting offsets */
    uint64_t hlen = 0;
    for (int k = 0; k < 8 && len >= 8; k++)
        hlen |= (uint64_t)r->buf[k] << (8 * k);
    json_t *hdr = len >= 8 && hlen <= len - 8 ? json_loadb((const char *)r->buf + 8, (size_t)hlen, 0, NULL) : NULL;
    const char *bad = hdr ? NULL : "no readable safetensors header";
    int64_t img[4] = {r->e[i].count, 3, r->info.size, r->info.size}, one[1] = {r->e[i].count};
    const unsigned char *data = r->buf + 8 + (hlen <= len - 8 ? hlen : 0);
    size_t data_len = len - 8 - (size_t)(hlen <= len - 8 ? hlen : 0);
    json_t *fmt = json_object_get(json_object_get(hdr, "__metadata__"), "format");
    if (!bad && (!json_is_string(fmt) || strcmp(json_string_value(fmt), PGN_SHARD_FORMAT)))
        bad = "its metadata format is not '" PGN_SHARD_FORMAT "'";
    for (int k = 0; k < 4 && !bad; k++)
        bad = find_tensor(hdr, TENSORS[k], k == 3 ? 1 : 4, k == 3 ? one : img, data, data_len, &r->t[k], why,
                          sizeof why);
    json_decref(hdr);
    if (bad) {
        if (bad != why)
            snprintf(why, sizeof why, "%s", bad);
        mark_bad(r, i, why);
        return 1;
    }
    r->cur = i;
    return 0;
}

/* Makes the shard at (pos.epoch, pos.slot) resident, skipping bad ones and wrapping epochs. */
static int ensure_resident(pgn_shards *r, nn_err *e)
{
    for (;;) {
        if (r->skipped >= r->n)
            return nn_errf(e, "every shard of collection %s is unusable (%ld skipped)", r->folder, r->skipped);
        if (r->pos.slot >= r->n)
            r->pos.epoch++, r->pos.slot = 0, r->pos.row = 0;
        ensure_order(r, r->pos.epoch);
        int i = r->order[r->pos.slot];
        if (r->cur == i && r->cur_epoch == r->pos.epoch && r->cur_slot == r->pos.slot) {
            if (r->pos.row < r->e[i].count)
                return 0;
            r->pos.slot++, r->pos.row = 0; /* this shard is used up */
            continue;
        }
        if (r->bad[i]) {
            r->pos.slot++, r->pos.row = 0;
            continue;
        }
        int rc = load_shard(r, i, e);
        if (rc < 0)
            return -1;
        if (rc > 0) {
            r->pos.slot++, r->pos.row = 0;
            continue;
        }
        if (r->e[i].count > r->perm_cap) {
            free(r->perm);
            r->perm = malloc((size_t)r->e[i].count * sizeof *r->perm);
            r->perm_cap = r->perm ? r->e[i].count : 0;
            if (!r->perm)
                return nn_errf(e, "out of memory");
        }
        shuffle(r->perm, r->e[i].count, mix(mix(r->seed, (uint64_t)r->pos.epoch), (uint64_t)i + 1));
        r->cur_epoch = r->pos.epoch, r->cur_slot = r->pos.slot;
    }
}

int pgn_shards_next_batch_ex(pgn_shards *r, int batch, float *y_hat, float *y, float *g_true, float *loss,
                             pgn_shard_sample *from, nn_err *e)
{
    float *dst[4] = {y_hat, y, g_true, loss};
    for (int b = 0; b < batch; b++) {
        if (ensure_resident(r, e))
            return -1;
        int row = r->perm[r->pos.row];
        for (int k = 0; k < 3; k++)
            if (dst[k])
                memcpy(dst[k] + (size_t)b * r->cnt, r->t[k] + (size_t)row * r->cnt, r->cnt * sizeof(float));
        if (loss)
            loss[b] = r->t[3][row];
        if (from)
            from[b].shard = r->cur, from[b].row = row;
        r->pos.row++;
        r->pos.served++;
    }
    return 0;
}

int pgn_shards_next_batch(pgn_shards *r, int batch, float *y_hat, float *y, float *g_true, nn_err *e)
{
    return pgn_shards_next_batch_ex(r, batch, y_hat, y, g_true, NULL, NULL, e);
}

int pgn_shards_set_pos(pgn_shards *r, const pgn_shards_pos *pos, nn_err *e)
{
    if (pos->epoch < 0 || pos->slot < 0 || pos->slot >= r->n || pos->row < 0 || pos->served < 0)
        return nn_errf(e, "collection %s: reading position (epoch %lld, slot %lld, row %lld) is outside its %d shards",
                       r->folder, (long long)pos->epoch, (long long)pos->slot, (long long)pos->row, r->n);
    ensure_order(r, pos->epoch);
    int i = r->order[pos->slot];
    if (pos->row > r->e[i].count)
        return nn_errf(e, "collection %s: reading position row %lld is past the %d samples of %s", r->folder,
                       (long long)pos->row, r->e[i].count, r->e[i].file);
    r->pos = *pos;
    r->cur = -1; /* reloaded (and re-checked) by the next batch */
    return 0;
}

void pgn_shards_pos_format(const pgn_shards_pos *pos, char *buf, size_t len)
{
    snprintf(buf, len, "%lld %lld %lld %lld", (long long)pos->epoch, (long long)pos->slot, (long long)pos->row,
             (long long)pos->served);
}

int pgn_shards_pos_parse(const char *s, pgn_shards_pos *pos)
{
    long long a, b, c, d;
    char extra;
    if (!s || sscanf(s, "%lld %lld %lld %lld %c", &a, &b, &c, &d, &extra) != 4)
        return -1;
    pos->epoch = a, pos->slot = b, pos->row = c, pos->served = d;
    return 0;
}
