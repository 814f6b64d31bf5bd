/* safetensors: u64 little-endian header length N, N bytes of JSON
 * {"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets": [begin, end]}, ...},
 * then the raw little-endian tensor data; offsets are relative to the end of the header. */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <libgen.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nn/sha256.h"
#include "nn/weights.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian; this code copies it as is"
#endif

/* ---- reader ---- */

static int parse_meta(nn_weights *w, json_t *obj, nn_err *e)
{
    const char *key;
    json_t *val;
    if (!json_is_object(obj))
        return nn_errf(e, "safetensors __metadata__ is not an object");
    json_object_foreach(obj, key, val) {
        if (!json_is_string(val))
            return nn_errf(e, "safetensors __metadata__ value for '%s' is not a string", key);
        if (nn_weights_add_meta(w, key, json_string_value(val), 0, 0, e))
            return -1;
    }
    return 0;
}

static int parse_tensor(nn_weights *w, const char *name, json_t *obj, const uint8_t *data, size_t data_len,
                        nn_err *e)
{
    json_t *dt = json_object_get(obj, "dtype"), *shape = json_object_get(obj, "shape"),
           *offs = json_object_get(obj, "data_offsets");
    if (!json_is_string(dt) || !json_is_array(shape) || !json_is_array(offs) || json_array_size(offs) != 2)
        return nn_errf(e, "tensor '%s': header entry needs dtype, shape and data_offsets", name);
    int dtype = -1;
    for (int t = NN_F32; t <= NN_BOOL; t++)
        if (!strcmp(json_string_value(dt), nn_dtype_name((nn_dtype)t)))
            dtype = t;
    if (dtype < 0)
        return nn_errf(e, "tensor '%s': dtype %s is not supported", name, json_string_value(dt));
    size_t ndim = json_array_size(shape);
    if (ndim > NN_MAX_DIMS)
        return nn_errf(e, "tensor '%s' has %zu dimensions (at most %d supported)", name, ndim, NN_MAX_DIMS);
    int64_t dims[NN_MAX_DIMS];
    size_t bytes = nn_dtype_size((nn_dtype)dtype);
    for (size_t d = 0; d < ndim; d++) {
        json_t *v = json_array_get(shape, d);
        dims[d] = json_is_integer(v) ? json_integer_value(v) : -1;
        if (dims[d] < 0 || __builtin_mul_overflow(bytes, (size_t)dims[d], &bytes))
            return nn_errf(e, "tensor '%s' has an invalid shape", name);
    }
    json_t *b = json_array_get(offs, 0), *end = json_array_get(offs, 1);
    if (!json_is_integer(b) || !json_is_integer(end) || json_integer_value(b) < 0 ||
        json_integer_value(end) < json_integer_value(b) || (uint64_t)json_integer_value(end) > data_len)
        return nn_errf(e, "tensor '%s': data_offsets lie outside the %zu data bytes (truncated file?)", name,
                       data_len);
    size_t begin = (size_t)json_integer_value(b), have = (size_t)json_integer_value(end) - begin;
    if (have != bytes)
        return nn_errf(e, "tensor '%s': data_offsets span %zu bytes but dtype and shape need %zu", name, have,
                       bytes);
    nn_weight_entry *t = nn_weights_add(w, name, (nn_dtype)dtype, (int)ndim, dims, e);
    if (!t)
        return -1;
    if (t->data)
        memcpy(t->data, data + begin, bytes);
    return 0;
}

int nn_safetensors_parse(nn_weights *w, const uint8_t *buf, size_t len, nn_err *e)
{
    uint64_t n = 0;
    if (len < 8)
        return nn_errf(e, "safetensors file shorter than its 8-byte header length");
    for (int i = 7; i >= 0; i--)
        n = n << 8 | buf[i];
    if (n > len - 8)
        return nn_errf(e, "safetensors header is %llu bytes but only %zu follow (truncated file?)",
                       (unsigned long long)n, len - 8);
    json_error_t jerr;
    json_t *root = json_loadb((const char *)buf + 8, (size_t)n, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return nn_errf(e, "safetensors header is not valid JSON: %s (header byte %d)", jerr.text, jerr.position);
    int rc = json_is_object(root) ? 0 : nn_errf(e, "safetensors header is not a JSON object");
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (rc)
            break;
        rc = !strcmp(key, "__metadata__") ? parse_meta(w, val, e)
                                          : parse_tensor(w, key, val, buf + 8 + n, len - 8 - (size_t)n, e);
    }
    json_decref(root);
    return rc;
}

/* ---- writer ---- */

static json_t *build_header(int count, const char *const *names, const nn_tensor *const *tensors, int meta_count,
                            const char *const *meta_keys, const char *const *meta_vals, const char *path,
                            nn_err *e)
{
    json_t *root = json_object(), *meta = NULL;
    if (!root || (meta_count > 0 && json_object_set_new(root, "__metadata__", meta = json_object())))
        goto fail;
    for (int i = 0; i < meta_count; i++)
        if (!meta_keys[i] || !meta_vals[i] || json_object_set_new(meta, meta_keys[i], json_string(meta_vals[i]))) {
            nn_errf(e, "%s: metadata entry %d is missing or not UTF-8", path, i);
            json_decref(root);
            return NULL;
        }
    size_t offset = 0;
    for (int i = 0; i < count; i++) {
        const nn_tensor *t = tensors[i];
        if (!names[i] || !*names[i] || !strcmp(names[i], "__metadata__") || json_object_get(root, names[i]) ||
            !t || (t->numel && !t->data)) {
            nn_errf(e, "%s: tensor %d ('%s') has an empty, reserved or repeated name, or no data", path, i,
                    names[i] ? names[i] : "(null)");
            json_decref(root);
            return NULL;
        }
        json_t *shape = json_array();
        int bad = !shape;
        for (int d = 0; d < t->ndim && !bad; d++)
            bad = json_array_append_new(shape, json_integer(t->shape[d]));
        if (bad) {
            json_decref(shape);
            goto fail;
        }
        size_t bytes = t->numel * sizeof(float);
        json_t *entry = json_pack("{s:s, s:o, s:[I, I]}", "dtype", "F32", "shape", shape, "data_offsets",
                                  (json_int_t)offset, (json_int_t)(offset + bytes));
        if (json_object_set_new(root, names[i], entry))
            goto fail;
        offset += bytes;
    }
    return root;
fail:
    json_decref(root);
    nn_errf(e, "%s: cannot build the safetensors header (out of memory, or a name is not UTF-8)", path);
    return NULL;
}

/* The file's first bytes: the header's length (little-endian), then the header padded with spaces
 * so that the data starts 8-byte aligned. */
static size_t header_prefix(size_t hlen, uint8_t len8[8])
{
    size_t padded = (hlen + 7) / 8 * 8;
    for (int i = 0; i < 8; i++)
        len8[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    return padded;
}

/* Writes everything to the temporary file; fsync (when sync) so the rename never exposes a partial
 * file. */
static int write_body(FILE *f, const char *header, size_t hlen, int count, const nn_tensor *const *tensors, int sync)
{
    uint8_t len8[8];
    size_t padded = header_prefix(hlen, len8);
    int ok = fwrite(len8, 1, 8, f) == 8 && fwrite(header, 1, hlen, f) == hlen;
    for (size_t i = hlen; i < padded && ok; i++)
        ok = fputc(' ', f) != EOF;
    for (int i = 0; i < count && ok; i++)
        ok = fwrite(tensors[i]->data, sizeof(float), tensors[i]->numel, f) == tensors[i]->numel;
    return ok && fflush(f) == 0 && (!sync || fsync(fileno(f)) == 0) ? 0 : -1;
}

/* SHA-256 of the bytes write_body writes, from memory. */
static void hash_body(const char *header, size_t hlen, int count, const nn_tensor *const *tensors, char hex[65])
{
    uint8_t len8[8];
    size_t padded = header_prefix(hlen, len8);
    nn_sha256 h;
    nn_sha256_init(&h);
    nn_sha256_update(&h, len8, 8);
    nn_sha256_update(&h, header, hlen);
    for (size_t i = hlen; i < padded; i++)
        nn_sha256_update(&h, " ", 1);
    for (int i = 0; i < count; i++)
        nn_sha256_update(&h, tensors[i]->data, tensors[i]->numel * sizeof(float));
    nn_sha256_final_hex(&h, hex);
}

/* After the rename, the directory entry itself must reach the disk. Some file systems cannot
 * fsync a directory (EINVAL); the data is already safe there. */
static int sync_dir(const char *path)
{
    char *copy = strdup(path);
    if (!copy)
        return -1;
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    free(copy);
    if (fd < 0)
        return -1;
    int rc = fsync(fd) == 0 || errno == EINVAL ? 0 : -1;
    close(fd);
    return rc;
}

int nn_safetensors_write(const char *path, int count, const char *const *names, const nn_tensor *const *tensors,
                         int meta_count, const char *const *meta_keys, const char *const *meta_vals, nn_err *e)
{
    return nn_safetensors_write_hashed(path, count, names, tensors, meta_count, meta_keys, meta_vals, NULL, e);
}

/* The whole atomic write; with tmp_out, only its first half: the file complete under a temporary
 * name, not synced (nn_safetensors_commit does the rest), the name in tmp_out. */
static int write_file(const char *path, int count, const char *const *names, const nn_tensor *const *tensors,
                      int meta_count, const char *const *meta_keys, const char *const *meta_vals, char sha256_hex[65],
                      char *tmp_out, size_t tmp_len, nn_err *e)
{
    json_t *root = build_header(count, names, tensors, meta_count, meta_keys, meta_vals, path, e);
    if (!root)
        return -1;
    char *header = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    size_t plen = strlen(path);
    char *tmp = malloc(plen + sizeof ".tmp-XXXXXX");
    if (!header || !tmp) {
        free(header);
        free(tmp);
        return nn_errf(e, "%s: out of memory", path);
    }
    if (tmp_out && plen + sizeof ".tmp-XXXXXX" > tmp_len) {
        free(header);
        free(tmp);
        return nn_errf(e, "%s: temporary name too long", path);
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp-XXXXXX", sizeof ".tmp-XXXXXX");
    int rc = 0, fd = mkstemp(tmp);
    FILE *f = fd < 0 ? NULL : fdopen(fd, "wb");
    if (!f) {
        rc = nn_errf(e, "%s: cannot create a temporary file next to it: %s", path, strerror(errno));
        if (fd >= 0) {
            close(fd);
            unlink(tmp);
        }
    } else {
        /* mkstemp makes the file 0600; weights are not secret. The checksum, when asked for, is
         * taken from the same bytes in memory on a second thread while the first writes them
         * (with one thread allowed: one after the other). */
        const size_t hlen = strlen(header);
        int wno = fchmod(fd, 0644) ? errno : 0; /* written by the writing section only */
        const int hash = sha256_hex != NULL;
#pragma omp parallel sections num_threads(2) if (hash && omp_get_max_threads() > 1)
        {
#pragma omp section
            {
                if (!wno && write_body(f, header, hlen, count, tensors, tmp_out == NULL))
                    wno = errno ? errno : EIO;
            }
#pragma omp section
            {
                if (hash)
                    hash_body(header, hlen, count, tensors, sha256_hex);
            }
        }
        if (wno)
            rc = nn_errf(e, "%s: cannot write: %s", path, strerror(wno));
        if (fclose(f) && !rc)
            rc = nn_errf(e, "%s: cannot write: %s", path, strerror(errno));
        if (!rc && tmp_out) /* the caller's nn_safetensors_commit renames it */
            memcpy(tmp_out, tmp, strlen(tmp) + 1);
        else if (!rc && rename(tmp, path))
            rc = nn_errf(e, "%s: cannot rename the temporary file into place: %s", path, strerror(errno));
        if (rc)
            unlink(tmp);
        else if (!tmp_out && sync_dir(path))
            rc = nn_errf(e, "%s: written, but syncing its directory failed: %s", path, strerror(errno));
    }
    free(header);
    free(tmp);
    return rc;
}

int nn_safetensors_write_hashed(const char *path, int count, const char *const *names, const nn_tensor *const *tensors,
                                int meta_count, const char *const *meta_keys, const char *const *meta_vals,
                                char sha256_hex[65], nn_err *e)
{
    return write_file(path, count, names, tensors, meta_count, meta_keys, meta_vals, sha256_hex, NULL, 0, e);
}

int nn_safetensors_write_unsynced(const char *path, int count, const char *const *names,
                                  const nn_tensor *const *tensors, int meta_count, const char *const *meta_keys,
                                  const char *const *meta_vals, char sha256_hex[65], char *tmp, size_t tmp_len,
                                  nn_err *e)
{
    return write_file(path, count, names, tensors, meta_count, meta_keys, meta_vals, sha256_hex, tmp, tmp_len, e);
}

int nn_safetensors_commit(const char *tmp, const char *path, nn_err *e)
{
    int fd = open(tmp, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        nn_errf(e, "%s: cannot open the temporary file %s to sync it: %s", path, tmp, strerror(errno));
        unlink(tmp); /* nothing is left behind, whatever the reason */
        return -1;
    }
    int rc = 0;
    if (fsync(fd))
        rc = nn_errf(e, "%s: cannot sync the temporary file %s: %s", path, tmp, strerror(errno));
    close(fd);
    if (!rc && rename(tmp, path))
        rc = nn_errf(e, "%s: cannot rename the temporary file into place: %s", path, strerror(errno));
    if (rc)
        unlink(tmp);
    else if (sync_dir(path))
        rc = nn_errf(e, "%s: written, but syncing its directory failed: %s", path, strerror(errno));
    return rc;
}
