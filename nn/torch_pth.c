/* torch.save files: the zip layout (PyTorch >= 1.6) and the legacy layout (magic number, pickles,
 * raw storages). Both end up as a pickle tree (pickle.c) whose tensors point at storages, which are
 * byte ranges of the file; this file finds those ranges, checks every tensor fits in its storage,
 * and copies the tensors out in C order. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn/pickle.h"
#include "nn/weights.h"

/* A storage's bytes in the file. */
typedef struct blob {
    const char *key;
    size_t klen;
    const uint8_t *data;
    size_t nbytes;
    int dtype; /* legacy: from the persistent id that sized it; zip: -1, the entry has no type */
} blob;

typedef struct ctx {
    nn_weights *w;
    blob *blobs; /* sorted by key */
    size_t nblobs;
    size_t file_len;
    nn_err *e;
} ctx;

#define MAX_DICT_DEPTH 16

static uint64_t rd_le(const uint8_t *b, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | b[i];
    return v;
}

static int cmp_keys(const char *a, size_t alen, const char *b, size_t blen)
{
    int c = memcmp(a, b, alen < blen ? alen : blen);
    return c ? c : (alen > blen) - (alen < blen);
}

static int cmp_blobs(const void *a, const void *b)
{
    const blob *x = a, *y = b;
    return cmp_keys(x->key, x->klen, y->key, y->klen);
}

static const blob *find_blob(const ctx *c, const char *key)
{
    blob k = {.key = key, .klen = strlen(key)};
    return c->nblobs ? bsearch(&k, c->blobs, c->nblobs, sizeof k, cmp_blobs) : NULL;
}

/* ---- tensors ---- */

static char *shape_and_stride(char *buf, size_t len, const nn_pk_tensor *t)
{
    char a[128], b[128];
    nn_shape_str(a, sizeof a, t->ndim, t->size);
    nn_shape_str(b, sizeof b, t->ndim, t->stride);
    snprintf(buf, len, "size %s, stride %s, offset %lld", a, b, (long long)t->offset);
    return buf;
}

/* Copies the elements a strided view selects into dst, in C order. */
static void gather(uint8_t *dst, const uint8_t *src, size_t isz, const nn_pk_tensor *t, size_t numel)
{
    int nd = t->ndim;
    int64_t expect = 1;
    int contiguous = 1;
    for (int d = nd - 1; d >= 0; d--) {
        if (t->size[d] != 1 && t->stride[d] != expect)
            contiguous = 0;
        expect *= t->size[d];
    }
    if (contiguous) {
        memcpy(dst, src + (size_t)t->offset * isz, numel * isz);
        return;
    }
    /* Rows along the last dimension are contiguous when its stride is 1; copy them whole. */
    int outer = nd;
    size_t row = 1;
    if (nd && t->stride[nd - 1] == 1) {
        outer = nd - 1;
        row = (size_t)t->size[nd - 1];
    }
    int64_t idx[NN_MAX_DIMS] = {0}, off = t->offset;
    for (size_t done = 0; done < numel; done += row) {
        memcpy(dst + done * isz, src + (size_t)off * isz, row * isz);
        for (int d = outer - 1; d >= 0; d--) {
            off += t->stride[d];
            if (++idx[d] < t->size[d])
                break;
            off -= t->stride[d] * t->size[d];
            idx[d] = 0;
        }
    }
}

static int add_tensor(ctx *c, const char *name, const nn_pk_tensor *t)
{
    const nn_pk_storage *s = &t->storage->u.storage;
    size_t isz = nn_dtype_size(s->dtype);
    char desc[400];
    const blob *b = find_blob(c, s->key);
    if (!b)
        return nn_errf(c->e, "tensor '%s': its storage '%s' is not in the file", name, s->key);
    if (b->dtype >= 0 && b->dtype != (int)s->dtype)
        return nn_errf(c->e, "tensor '%s': storage '%s' is read as %s but was sized as %s", name, s->key,
                       nn_dtype_name(s->dtype), nn_dtype_name((nn_dtype)b->dtype));
    if ((uint64_t)s->numel > b->nbytes / isz)
        return nn_errf(c->e, "tensor '%s': storage '%s' should hold %lld %s elements but the file has %zu bytes "
                             "for it", name, s->key, (long long)s->numel, nn_dtype_name(s->dtype), b->nbytes);
    const uint8_t *base = b->data;
    int64_t avail = s->numel;
    if (s->view_numel >= 0) {
        if (s->view_offset > s->numel || s->view_numel > s->numel - s->view_offset)
            return nn_errf(c->e, "tensor '%s': storage view [%lld, +%lld) lies outside storage '%s' (%lld elements)",
                           name, (long long)s->view_offset, (long long)s->view_numel, s->key, (long long)s->numel);
        base += (size_t)s->view_offset * isz;
        avail = s->view_numel;
    }
    /* The last element the view touches must lie inside the storage. Sizes and strides are
     * non-negative (checked by the pickle VM), so that is offset + sum (size - 1) * stride. */
    int64_t last = t->offset, numel = 1;
    int overflow = 0;
    for (int d = 0; d < t->ndim; d++)
        overflow |= __builtin_mul_overflow(numel, t->size[d], &numel);
    for (int d = 0; d < t->ndim && numel > 0; d++) {
        int64_t span;
        overflow |= __builtin_mul_overflow(t->size[d] - 1, t->stride[d], &span);
        overflow |= __builtin_add_overflow(last, span, &last);
    }
    if (overflow || (numel > 0 && last >= avail))
        return nn_errf(c->e, "tensor '%s' (%s) reaches past the end of its storage '%s' (%lld elements)", name,
                       shape_and_stride(desc, sizeof desc, t), s->key, (long long)avail);
    /* Cap what one tensor may allocate: a corrupt size with stride 0 must not make us allocate
     * terabytes. Views may legitimately exceed the file (a stride-0 or overlapping view of a small
     * storage), so the cap is the larger of the file size and 1 GiB. */
    uint64_t cap = c->file_len > (1ull << 30) ? c->file_len : (1ull << 30);
    if ((uint64_t)numel > cap / isz)
        return nn_errf(c->e, "tensor '%s' (%s) would need more than max(file size, 1 GiB) of memory", name,
                       shape_and_stride(desc, sizeof desc, t));
    nn_weight_entry *out = nn_weights_add(c->w, name, s->dtype, t->ndim, t->size, c->e);
    if (!out)
        return -1;
    if (numel > 0 && out->data)
        gather(out->data, base, isz, t, (size_t)numel);
    return 0;
}

/* ---- the dict tree: tensors become entries, plain values become meta ---- */

/* Renders a tuple or list of plain values as JSON ("[64, 128]"); NULL if it holds anything else. */
static char *render_list(const nn_pk_value *v)
{
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < v->u.seq.len; i++) {
        const nn_pk_value *x = v->u.seq.v[i];
        json_t *j = x->kind == NN_PK_INT     ? json_integer(x->u.i)
                    : x->kind == NN_PK_FLOAT ? json_real(x->u.f)
                    : x->kind == NN_PK_BOOL  ? json_boolean(x->u.i)
                    : x->kind == NN_PK_STR   ? json_stringn(x->u.str.s, x->u.str.len)
                    : x->kind == NN_PK_NONE  ? json_null()
                                             : NULL;
        if (json_array_append_new(arr, j)) {
            json_decref(arr);
            arr = NULL;
        }
    }
    char *s = arr ? json_dumps(arr, 0) : NULL;
    json_decref(arr);
    return s;
}

static int add_meta(ctx *c, const char *key, const nn_pk_value *v)
{
    char num[64];
    switch (v->kind) {
    case NN_PK_INT:
        snprintf(num, sizeof num, "%lld", (long long)v->u.i);
        return nn_weights_add_meta(c->w, key, num, 1, (double)v->u.i, c->e);
    case NN_PK_FLOAT:
        snprintf(num, sizeof num, "%.17g", v->u.f);
        return nn_weights_add_meta(c->w, key, num, 1, v->u.f, c->e);
    case NN_PK_BOOL:
        return nn_weights_add_meta(c->w, key, v->u.i ? "true" : "false", 0, (double)v->u.i, c->e);
    case NN_PK_STR:
        return nn_weights_add_meta(c->w, key, v->u.str.s, 0, 0, c->e);
    case NN_PK_TUPLE:
    case NN_PK_LIST: {
        char *s = render_list(v);
        int rc = s ? nn_weights_add_meta(c->w, key, s, 0, 0, c->e) : 0;
        free(s);
        return rc;
    }
    default: /* None, storages, objects: nothing a caller could use */
        return 0;
    }
}

/* Walks a dict: tensors (if `tensors`) become entries and plain values meta, both named
 * prefix + key; nested dicts add "key." to the prefix. `skip` is left out (the state_dict). */
static int walk(ctx *c, const nn_pk_value *dict, const char *prefix, int tensors, const nn_pk_value *skip,
                int depth)
{
    if (depth > MAX_DICT_DEPTH)
        return nn_errf(c->e, "dicts nested more than %d deep at '%s'", MAX_DICT_DEPTH, prefix);
    for (size_t i = 0; i + 1 < dict->u.seq.len; i += 2) {
        const nn_pk_value *k = dict->u.seq.v[i], *v = dict->u.seq.v[i + 1];
        char ibuf[32];
        const char *key = k->kind == NN_PK_STR ? k->u.str.s : NULL;
        if (k->kind == NN_PK_INT) { /* e.g. optimizer state, keyed by parameter index */
            snprintf(ibuf, sizeof ibuf, "%lld", (long long)k->u.i);
            key = ibuf;
        }
        if (!key || v == skip)
            continue;
        size_t n = strlen(prefix) + strlen(key) + 2;
        char *name = malloc(n);
        if (!name)
            return nn_errf(c->e, "out of memory");
        snprintf(name, n, "%s%s", prefix, key);
        int rc = 0;
        if (v->kind == NN_PK_TENSOR)
            rc = tensors ? add_tensor(c, name, &v->u.tensor) : 0;
        else if (v->kind == NN_PK_DICT)
            rc = walk(c, v, strcat(name, "."), tensors, NULL, depth + 1);
        else
            rc = add_meta(c, name, v);
        free(name);
        if (rc)
            return -1;
    }
    return 0;
}

/* A plain state dict, or a checkpoint dict whose "state_dict" holds the tensors. */
static int collect(ctx *c, const nn_pk_value *top)
{
    if (top->kind != NN_PK_DICT)
        return nn_errf(c->e, "the pickle holds a %s, not a dict of tensors", nn_pk_kind_name(top->kind));
    const nn_pk_value *sd = nn_pk_dict_get(top, "state_dict");
    if (sd && sd->kind == NN_PK_DICT)
        return walk(c, sd, "", 1, NULL, 0) || walk(c, top, "", 0, sd, 0) ? -1 : 0;
    return walk(c, top, "", 1, NULL, 0);
}

/* ---- zip layout ---- */

typedef struct zentry {
    const char *name;
    size_t nlen;
    unsigned method;
    uint64_t csize, size, local;
} zentry;

static int zentry_data(const zentry *z, const uint8_t *buf, size_t len, const uint8_t **data, nn_err *e)
{
    if (z->method != 0)
        return nn_errf(e, "zip entry '%.*s' is compressed (method %u); torch writes stored entries only",
                       (int)z->nlen, z->name, z->method);
    if (z->csize != z->size)
        return nn_errf(e, "zip entry '%.*s' is stored but its sizes differ", (int)z->nlen, z->name);
    const uint8_t *h = z->local <= len ? buf + z->local : buf;
    if (z->local > len || len - z->local < 30 || rd_le(h, 4) != 0x04034b50)
        return nn_errf(e, "zip entry '%.*s': no local header at offset %llu (corrupt or truncated file)",
                       (int)z->nlen, z->name, (unsigned long long)z->local);
    uint64_t start = z->local + 30 + rd_le(h + 26, 2) + rd_le(h + 28, 2);
    if (start > len || z->size > len - start)
        return nn_errf(e, "zip entry '%.*s' runs past the end of the file (truncated?)", (int)z->nlen, z->name);
    *data = buf + start;
    return 0;
}

/* Reads the central directory (local headers carry no sizes in torch files). */
static int read_central_dir(const uint8_t *buf, size_t len, zentry **out, size_t *count, nn_err *e)
{
    size_t eocd = SIZE_MAX;
    for (size_t p = len >= 22 ? len - 22 : SIZE_MAX; p != SIZE_MAX && len - p <= 22 + 65535; p--)
        if (rd_le(buf + p, 4) == 0x06054b50) {
            eocd = p;
            break;
        }
    if (eocd == SIZE_MAX)
        return nn_errf(e, "zip end-of-central-directory record not found (truncated file?)");
    uint64_t n = rd_le(buf + eocd + 10, 2), cd_size = rd_le(buf + eocd + 12, 4), cd = rd_le(buf + eocd + 16, 4);
    if (n == 0xffff || cd_size == 0xffffffff || cd == 0xffffffff)
        return nn_errf(e, "zip64 archives (files over 4 GiB) are not supported");
    if (cd > eocd || cd_size > eocd - cd)
        return nn_errf(e, "zip central directory lies outside the file (corrupt or truncated)");
    zentry *z = calloc(n ? n : 1, sizeof *z);
    if (!z)
        return nn_errf(e, "out of memory");
    size_t p = cd, end = cd + cd_size;
    for (size_t i = 0; i < n; i++) {
        if (end - p < 46 || rd_le(buf + p, 4) != 0x02014b50) {
            free(z);
            return nn_errf(e, "zip central directory entry %zu is corrupt", i);
        }
        const uint8_t *h = buf + p;
        size_t nlen = rd_le(h + 28, 2), skip = 46 + nlen + rd_le(h + 30, 2) + rd_le(h + 32, 2);
        if (end - p < skip) {
            free(z);
            return nn_errf(e, "zip central directory entry %zu runs past the directory", i);
        }
        z[i] = (zentry){.name = (const char *)h + 46, .nlen = nlen, .method = (unsigned)rd_le(h + 10, 2),
                        .csize = rd_le(h + 20, 4), .size = rd_le(h + 24, 4), .local = rd_le(h + 42, 4)};
        p += skip;
    }
    *out = z;
    *count = n;
    return 0;
}

/* The part of an entry's name after "<folder>/", or NULL for entries in other folders. */
static const char *under(const zentry *z, const char *prefix, size_t plen, size_t *rest_len)
{
    if (z->nlen < plen || memcmp(z->name, prefix, plen))
        return NULL;
    *rest_len = z->nlen - plen;
    return z->name + plen;
}

int nn_torch_zip_parse(nn_weights *w, const uint8_t *buf, size_t len, nn_err *e)
{
    zentry *z = NULL;
    size_t nz = 0;
    if (read_central_dir(buf, len, &z, &nz, e))
        return -1;
    /* Everything sits under one folder whose name varies: find it from <folder>/data.pkl. */
    const zentry *pkl = NULL;
    for (size_t i = 0; i < nz && !pkl; i++)
        if (z[i].nlen >= 9 && !memcmp(z[i].name + z[i].nlen - 9, "/data.pkl", 9))
            pkl = &z[i];
    ctx c = {.w = w, .file_len = len, .e = e};
    nn_pk_vm vm;
    nn_pk_init(&vm);
    int rc = pkl ? 0 : nn_errf(e, "zip archive without a <folder>/data.pkl entry: not a torch.save file");
    const char *prefix = pkl ? pkl->name : NULL;
    size_t plen = pkl ? pkl->nlen - 8 : 0; /* keeps the '/' */
    if (!rc && !(c.blobs = calloc(nz, sizeof *c.blobs)))
        rc = nn_errf(e, "out of memory");
    for (size_t i = 0; i < nz && !rc; i++) {
        const uint8_t *data;
        size_t rlen;
        const char *rest = under(&z[i], prefix, plen, &rlen);
        if (!rest)
            continue;
        if (rlen == 9 && !memcmp(rest, "byteorder", 9)) {
            if (!(rc = zentry_data(&z[i], buf, len, &data, e)) && z[i].size == 3 && !memcmp(data, "big", 3))
                rc = nn_errf(e, "big-endian torch files are not supported");
        } else if (rlen > 5 && !memcmp(rest, "data/", 5)) {
            if (!(rc = zentry_data(&z[i], buf, len, &data, e)))
                c.blobs[c.nblobs++] = (blob){.key = rest + 5, .klen = rlen - 5, .data = data, .nbytes = z[i].size,
                                             .dtype = -1};
        }
    }
    if (!rc)
        qsort(c.blobs, c.nblobs, sizeof *c.blobs, cmp_blobs);
    const uint8_t *pdata = NULL;
    nn_pk_value *top = NULL;
    size_t used;
    if (!rc)
        rc = zentry_data(pkl, buf, len, &pdata, e);
    if (!rc)
        rc = nn_pk_load(&vm, pdata, pkl->size, (size_t)(pdata - buf), &used, &top, e);
    if (!rc)
        rc = collect(&c, top);
    nn_pk_free(&vm);
    free(c.blobs);
    free(z);
    return rc;
}

/* ---- legacy layout ---- */

static int cmp_storages(const void *a, const void *b)
{
    const nn_pk_storage *x = &(*(nn_pk_value *const *)a)->u.storage, *y = &(*(nn_pk_value *const *)b)->u.storage;
    return strcmp(x->key, y->key);
}

/* Walks the storage section: for each key of the list, an int64 element count and the raw bytes.
 * The element size comes from the persistent ids that named the key in the main pickle. */
static int read_storages(ctx *c, nn_pk_vm *vm, const nn_pk_value *keys, const uint8_t *buf, size_t pos)
{
    if (keys->kind != NN_PK_LIST)
        return nn_errf(c->e, "the storage key list is a %s, not a list", nn_pk_kind_name(keys->kind));
    if (vm->nstorages)
        qsort(vm->storages, vm->nstorages, sizeof *vm->storages, cmp_storages);
    if (!(c->blobs = calloc(keys->u.seq.len ? keys->u.seq.len : 1, sizeof *c->blobs)))
        return nn_errf(c->e, "out of memory");
    for (size_t i = 0; i < keys->u.seq.len; i++) {
        const nn_pk_value *k = keys->u.seq.v[i];
        if (k->kind != NN_PK_STR)
            return nn_errf(c->e, "storage key %zu is a %s, not a string", i, nn_pk_kind_name(k->kind));
        nn_pk_value probe = {.kind = NN_PK_STORAGE, .u.storage.key = k->u.str.s}, *pp = &probe;
        nn_pk_value **s = vm->nstorages ? bsearch(&pp, vm->storages, vm->nstorages, sizeof pp, cmp_storages) : NULL;
        if (!s)
            return nn_errf(c->e, "storage '%s' is listed but no tensor uses it", k->u.str.s);
        nn_dtype dt = (*s)->u.storage.dtype;
        if (c->file_len - pos < 8)
            return nn_errf(c->e, "file ends at storage '%s' (truncated?)", k->u.str.s);
        uint64_t numel = rd_le(buf + pos, 8);
        pos += 8;
        if (numel > (c->file_len - pos) / nn_dtype_size(dt))
            return nn_errf(c->e, "storage '%s' claims %llu %s elements but only %zu bytes are left in the file "
                                 "(truncated or corrupt)", k->u.str.s, (unsigned long long)numel,
                           nn_dtype_name(dt), c->file_len - pos);
        size_t nbytes = (size_t)numel * nn_dtype_size(dt);
        c->blobs[c->nblobs++] = (blob){.key = k->u.str.s, .klen = k->u.str.len, .data = buf + pos,
                                       .nbytes = nbytes, .dtype = (int)dt};
        pos += nbytes;
    }
    qsort(c->blobs, c->nblobs, sizeof *c->blobs, cmp_blobs);
    return 0;
}

int nn_torch_legacy_parse(nn_weights *w, const uint8_t *buf, size_t len, nn_err *e)
{
    static const uint8_t magic[10] = {0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};
    ctx c = {.w = w, .file_len = len, .e = e};
    nn_pk_vm vm;
    nn_pk_init(&vm);
    /* Five pickles: magic number, protocol version, sys_info, the object, the storage keys. */
    nn_pk_value *v[5];
    size_t pos = 0, used;
    int rc = 0;
    for (int i = 0; i < 5 && !rc; i++) {
        rc = nn_pk_load(&vm, buf + pos, len - pos, pos, &used, &v[i], e);
        pos += used;
        if (!rc && i == 0 && (v[0]->kind != NN_PK_BIGINT || v[0]->u.str.len != 10 || memcmp(v[0]->u.str.s, magic, 10)))
            rc = nn_errf(e, "a pickle, but not a torch file (no torch magic number)");
        if (!rc && i == 1 && (v[1]->kind != NN_PK_INT || v[1]->u.i != 1001))
            rc = nn_errf(e, "torch legacy protocol version is not 1001");
        if (!rc && i == 2) {
            const nn_pk_value *le = nn_pk_dict_get(v[2], "little_endian");
            if (le && le->kind == NN_PK_BOOL && !le->u.i)
                rc = nn_errf(e, "big-endian torch files are not supported");
        }
    }
    if (!rc)
        rc = read_storages(&c, &vm, v[4], buf, pos);
    if (!rc)
        rc = collect(&c, v[3]);
    nn_pk_free(&vm);
    free(c.blobs);
    return rc;
}
