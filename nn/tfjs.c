/* TensorFlow.js layers-model reader: a model.json (topology + weightsManifest) and its weight shards,
 * either plain (model.json + binary shards, as tfjs converters write them) or wrapped in JavaScript
 * modules as npm packages ship them (nsfwjs: model.min.js exporting the manifest as a JS object
 * literal, group1-shardKofN.min.js exporting each shard as a base64 string).
 *
 * Weights come out as float32 tensors under their tfjs names ("conv2d_1/kernel"), in the file's own
 * layout (a Keras Conv2D kernel is [kh, kw, cin, cout]); quantised ones are dequantised as tfjs does,
 * w = min + scale * q for uint8/uint16. The topology is kept as the meta entry "tfjs.modelTopology"
 * (JSON text) so a network can check its layers' configuration against it. */
#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "nn/sha256.h"
#include "nn/tfjs.h"

/* ---- files ---- */

static int slurp(const char *path, char **out, size_t *len, nn_err *e)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return nn_errf(e, "%s: %s", path, strerror(errno));
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n + 65536 + 1 > cap) {
            cap = cap ? 2 * cap : 1 << 20;
            char *p = realloc(buf, cap);
            if (!p) {
                free(buf);
                fclose(f);
                return nn_errf(e, "%s: out of memory", path);
            }
            buf = p;
        }
        size_t r = fread(buf + n, 1, cap - n - 1, f);
        n += r;
        if (r == 0)
            break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return nn_errf(e, "%s: read error", path);
    }
    buf[n] = 0;
    *out = buf;
    *len = n;
    return 0;
}

static int is_file(const char *p)
{
    struct stat st;
    return !stat(p, &st) && S_ISREG(st.st_mode);
}

static int is_dir(const char *p)
{
    struct stat st;
    return !stat(p, &st) && S_ISDIR(st.st_mode);
}

int nn_tfjs_locate(const char *path, char *dir, size_t dirlen, char *manifest, size_t manlen)
{
    if (is_dir(path)) {
        snprintf(dir, dirlen, "%s", path);
        static const char *const names[] = {"model.json", "model.min.js", "model.js"};
        for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
            snprintf(manifest, manlen, "%s/%s", path, names[i]);
            if (is_file(manifest))
                return 1;
        }
        return 0;
    }
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    size_t bl = strlen(base);
    int json = bl >= 5 && !strcmp(base + bl - 5, ".json");
    int js = bl >= 3 && !strcmp(base + bl - 3, ".js");
    if (!(json || js) || !is_file(path))
        return 0;
    /* a .json file is a tfjs manifest only if it says so; checked by the reader */
    snprintf(manifest, manlen, "%s", path);
    snprintf(dir, dirlen, "%.*s", base == path ? 1 : (int)(base - path - 1), base == path ? "." : path);
    return 1;
}

/* ---- JavaScript wrappers ---- */

/* The JS object literal after "exports=" rewritten as JSON: bare keys quoted, !0/!1 as true/false,
 * numbers such as .5 or -.5 given their leading zero. Enough for what minifiers emit for data.
 * No construct more than triples in length, so the output buffer is sized once. */
static char *js_literal_to_json(const char *s, size_t len, nn_err *e)
{
    const char *p = strstr(s, "exports={");
    if (!p)
        p = strstr(s, "exports = {");
    if (!p) {
        nn_errf(e, "no \"exports={...}\" object in the JavaScript wrapper");
        return NULL;
    }
    p = strchr(p, '{');
    const char *end = s + len;
    char *out = malloc(3 * (size_t)(end - p) + 16);
    if (!out) {
        nn_errf(e, "out of memory");
        return NULL;
    }
    size_t n = 0;
    int depth = 0;
#define PUT(c) (out[n++] = (c))
    while (p < end) {
        char c = *p;
        if (c == '"' || c == '\'') {
            char quote = c;
            PUT('"');
            for (p++; p < end && *p != quote; p++) {
                if (*p == '\\' && p + 1 < end) {
                    if (p[1] != '\'')
                        PUT('\\');
                    PUT(*++p);
                } else if (*p == '"') /* inside a single-quoted string */
                    PUT('\\'), PUT('"');
                else
                    PUT(*p);
            }
            if (p >= end) {
                free(out);
                nn_errf(e, "unterminated string in the JavaScript object literal");
                return NULL;
            }
            PUT('"');
            p++;
        } else if (c == '{' || c == '[') {
            depth++;
            PUT(*p++);
        } else if (c == '}' || c == ']') {
            PUT(*p++);
            if (--depth == 0)
                break;
        } else if (c == '!' && p + 1 < end && (p[1] == '0' || p[1] == '1')) {
            const char *word = p[1] == '0' ? "true" : "false";
            memcpy(out + n, word, strlen(word));
            n += strlen(word);
            p += 2;
        } else if (isdigit((unsigned char)c) || c == '.' || c == '-') {
            if (c == '-')
                PUT(*p++);
            if (p < end && *p == '.')
                PUT('0');
            for (; p < end && (isdigit((unsigned char)*p) || *p == '.' || *p == 'e' || *p == 'E' ||
                               ((*p == '-' || *p == '+') && (p[-1] == 'e' || p[-1] == 'E')));
                 p++) {
                PUT(*p);
                if (*p == '.' && !(p + 1 < end && isdigit((unsigned char)p[1]))) /* "5." */
                    PUT('0');
            }
        } else if (isalpha((unsigned char)c) || c == '_' || c == '$') {
            const char *w0 = p;
            while (p < end && (isalnum((unsigned char)*p) || *p == '_' || *p == '$'))
                p++;
            size_t wl = (size_t)(p - w0);
            int literal = (wl == 4 && (!memcmp(w0, "true", 4) || !memcmp(w0, "null", 4))) ||
                          (wl == 5 && !memcmp(w0, "false", 5));
            if (wl == 4 && !memcmp(w0, "void", 4)) { /* void 0 */
                while (p < end && (*p == ' ' || isdigit((unsigned char)*p)))
                    p++;
                memcpy(out + n, "null", 4);
                n += 4;
                continue;
            }
            if (!literal) { /* a bare word is only accepted as an object key */
                const char *q = p;
                while (q < end && (*q == ' ' || *q == '\n' || *q == '\t' || *q == '\r'))
                    q++;
                if (q >= end || *q != ':') {
                    free(out);
                    nn_errf(e, "unsupported JavaScript value '%.*s' in the object literal (only data: strings, "
                               "numbers, true/false/null, arrays, objects)", (int)(wl > 40 ? 40 : wl), w0);
                    return NULL;
                }
                PUT('"');
            }
            memcpy(out + n, w0, wl);
            n += wl;
            if (!literal)
                PUT('"');
        } else
            PUT(*p++);
    }
#undef PUT
    if (depth != 0) {
        free(out);
        nn_errf(e, "unbalanced braces in the JavaScript object literal");
        return NULL;
    }
    out[n] = 0;
    return out;
}

static int b64v(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+' || c == '-')
        return 62;
    if (c == '/' || c == '_')
        return 63;
    return -1;
}

/* The base64 string after "exports=\"" decoded in place into buf; returns the byte count or -1. */
static long js_base64_payload(char *buf, size_t len, nn_err *e)
{
    char *p = strstr(buf, "exports=\"");
    if (!p)
        return nn_errf(e, "no \"exports=\\\"...\\\"\" base64 string in the JavaScript wrapper");
    p += 9;
    uint8_t *out = (uint8_t *)buf;
    size_t n = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (; p < buf + len && *p != '"'; p++) {
        if (*p == '=')
            continue;
        int v = b64v((unsigned char)*p);
        if (v < 0)
            return nn_errf(e, "invalid base64 character 0x%02x at offset %ld", (unsigned char)*p, (long)(p - buf));
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[n++] = (uint8_t)(acc >> bits);
        }
    }
    if (p >= buf + len)
        return nn_errf(e, "unterminated base64 string");
    return (long)n;
}

/* One shard's bytes: the file as named in the manifest (binary), or its JavaScript wrapper. */
static int read_shard(const char *dir, const char *name, uint8_t **out, size_t *len, nn_sha256 *sha, nn_err *e)
{
    char path[2048];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (is_file(path)) {
        if (slurp(path, (char **)out, len, e))
            return -1;
        nn_sha256_update(sha, *out, *len);
        return 0;
    }
    static const char *const ext[] = {".min.js", ".js"};
    for (size_t i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%s/%s%s", dir, name, ext[i]);
        if (!is_file(path))
            continue;
        char *buf;
        size_t n;
        if (slurp(path, &buf, &n, e))
            return -1;
        nn_sha256_update(sha, buf, n);
        long got = js_base64_payload(buf, n, e);
        if (got < 0) {
            free(buf);
            return nn_err_prefix(e, "%s", path);
        }
        *out = (uint8_t *)buf;
        *len = (size_t)got;
        return 0;
    }
    return nn_errf(e, "weight shard %s/%s is missing (also looked for %s.min.js and %s.js)", dir, name, name, name);
}

/* ---- the reader ---- */

static int read_group(nn_weights *w, const char *dir, json_t *group, nn_sha256 *sha, nn_err *e)
{
    json_t *paths = json_object_get(group, "paths"), *specs = json_object_get(group, "weights");
    if (!json_is_array(paths) || !json_is_array(specs))
        return nn_errf(e, "weightsManifest entry without \"paths\" and \"weights\" arrays");
    /* The group's weights are one byte stream cut into shards: concatenate them. */
    uint8_t *all = NULL;
    size_t total = 0;
    for (size_t i = 0; i < json_array_size(paths); i++) {
        const char *name = json_string_value(json_array_get(paths, i));
        if (!name || strstr(name, "..") || name[0] == '/') {
            free(all);
            return nn_errf(e, "weightsManifest path %zu is not a plain file name", i);
        }
        uint8_t *b = NULL;
        size_t n = 0;
        if (read_shard(dir, name, &b, &n, sha, e)) {
            free(all);
            return -1;
        }
        uint8_t *p = realloc(all, total + n + 1);
        if (!p) {
            free(all);
            free(b);
            return nn_errf(e, "out of memory");
        }
        all = p;
        memcpy(all + total, b, n);
        total += n;
        free(b);
    }
    size_t at = 0;
    int rc = 0;
    for (size_t i = 0; i < json_array_size(specs) && !rc; i++) {
        json_t *s = json_array_get(specs, i), *shape = json_object_get(s, "shape");
        const char *name = json_string_value(json_object_get(s, "name"));
        const char *dtype = json_string_value(json_object_get(s, "dtype"));
        if (!name || !dtype || !json_is_array(shape) || json_array_size(shape) > NN_MAX_DIMS) {
            rc = nn_errf(e, "weight spec %zu: needs name, dtype and a shape of at most %d dims", i, NN_MAX_DIMS);
            break;
        }
        int64_t dims[NN_MAX_DIMS];
        size_t numel = 1;
        int nd = (int)json_array_size(shape);
        for (int d = 0; d < nd; d++) {
            dims[d] = json_integer_value(json_array_get(shape, (size_t)d));
            numel *= (size_t)dims[d];
        }
        json_t *q = json_object_get(s, "quantization");
        const char *qd = q ? json_string_value(json_object_get(q, "dtype")) : NULL;
        size_t esize;
        if (q && qd && !strcmp(qd, "uint8"))
            esize = 1;
        else if (q && qd && !strcmp(qd, "uint16"))
            esize = 2;
        else if (q) {
            rc = nn_errf(e, "weight %s: quantisation dtype %s is not supported (uint8 and uint16 are)", name,
                         qd ? qd : "(none)");
            break;
        } else if (!strcmp(dtype, "float32") || !strcmp(dtype, "int32"))
            esize = 4;
        else {
            rc = nn_errf(e, "weight %s: dtype %s is not supported", name, dtype);
            break;
        }
        if (at + numel * esize > total) {
            rc = nn_errf(e, "weight %s needs bytes %zu..%zu but the shards hold %zu", name, at, at + numel * esize,
                         total);
            break;
        }
        nn_weight_entry *t = nn_weights_add(w, name, NN_F32, nd, dims, e); /* data NULL unless w->want takes it */
        if (!t) {
            rc = -1;
            break;
        }
        if (t->data) {
            float *dst = t->data;
            const uint8_t *src = all + at;
            if (q) {
                double mn = json_number_value(json_object_get(q, "min"));
                double sc = json_number_value(json_object_get(q, "scale"));
                for (size_t k = 0; k < numel; k++) {
                    unsigned v = esize == 1 ? src[k] : (unsigned)(src[2 * k] | src[2 * k + 1] << 8);
                    dst[k] = (float)(mn + sc * v);
                }
            } else if (!strcmp(dtype, "int32")) {
                for (size_t k = 0; k < numel; k++) {
                    int32_t v;
                    memcpy(&v, src + 4 * k, 4);
                    dst[k] = (float)v;
                }
            } else
                memcpy(dst, src, numel * 4);
        }
        at += numel * esize;
    }
    if (!rc && at != total)
        rc = nn_errf(e, "the shards hold %zu bytes but the manifest's weights take %zu", total, at);
    free(all);
    return rc;
}

int nn_tfjs_read(nn_weights *w, const char *path, nn_weights_filter want, void *arg, nn_err *e)
{
    memset(w, 0, sizeof *w);
    w->want = want;
    w->want_arg = arg;
    char dir[1024], manifest[1200];
    if (!nn_tfjs_locate(path, dir, sizeof dir, manifest, sizeof manifest))
        return nn_errf(e, "%s: not a tfjs layers model (no model.json or model.min.js)", path);
    if (!(w->path = strdup(path)))
        return nn_errf(e, "out of memory");
    char *text;
    size_t len;
    if (slurp(manifest, &text, &len, e)) {
        nn_weights_free(w);
        return -1;
    }
    nn_sha256 sha;
    nn_sha256_init(&sha);
    nn_sha256_update(&sha, text, len);
    size_t ml = strlen(manifest);
    int wrapped = ml >= 3 && !strcmp(manifest + ml - 3, ".js");
    char *json_text = wrapped ? js_literal_to_json(text, len, e) : text;
    if (!json_text) {
        free(text);
        nn_weights_free(w);
        return nn_err_prefix(e, "%s", manifest);
    }
    json_error_t je;
    json_t *root = json_loads(json_text, 0, &je);
    if (json_text != text)
        free(json_text);
    free(text);
    if (!root) {
        nn_weights_free(w);
        return nn_errf(e, "%s: not valid JSON%s: %s (line %d)", manifest, wrapped ? " after unwrapping" : "", je.text,
                       je.line);
    }
    int rc = 0;
    json_t *topo = json_object_get(root, "modelTopology"), *wm = json_object_get(root, "weightsManifest");
    if (!json_is_object(topo) || !json_is_array(wm))
        rc = nn_errf(e, "%s: a tfjs layers model needs \"modelTopology\" and \"weightsManifest\"", manifest);
    for (size_t g = 0; !rc && g < json_array_size(wm); g++)
        if (read_group(w, dir, json_array_get(wm, g), &sha, e))
            rc = nn_err_prefix(e, "%s", manifest);
    if (!rc) {
        char *t = json_dumps(topo, JSON_COMPACT);
        rc = !t ? nn_errf(e, "out of memory") : nn_weights_add_meta(w, NN_TFJS_TOPOLOGY_KEY, t, 0, 0, e);
        free(t);
    }
    if (!rc) {
        char hex[65];
        nn_sha256_final_hex(&sha, hex);
        rc = nn_weights_add_meta(w, NN_TFJS_SHA256_KEY, hex, 0, 0, e);
    }
    json_decref(root);
    if (rc)
        nn_weights_free(w);
    return rc;
}
