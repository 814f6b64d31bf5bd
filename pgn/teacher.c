#include "pgn/teacher.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "nn/sha256.h"
#include "nn/tfjs.h"
#include "pgn/report.h"

const float pgn_imagenet_mean[3] = {0.485f, 0.456f, 0.406f};
const float pgn_imagenet_std[3] = {0.229f, 0.224f, 0.225f};

/* Keys of torchvision's VGG-19 that the loss does not use (past relu5_1, and the classifier). */
static const char *const unused_keys[] = {
    "features.30.weight", "features.30.bias", "features.32.weight", "features.32.bias", "features.34.weight",
    "features.34.bias",   "classifier.0.weight", "classifier.0.bias", "classifier.3.weight", "classifier.3.bias",
    "classifier.6.weight", "classifier.6.bias"};

static void key_of(char *buf, size_t len, int conv, int bias)
{
    snprintf(buf, len, "features.%d.%s", vgg19_feature_index(conv), bias ? "bias" : "weight");
}

int pgn_teacher_vgg19_needs_key(const char *name, void *arg);
static int is_needed(const char *name, void *arg) { return pgn_teacher_vgg19_needs_key(name, arg); }

int pgn_teacher_vgg19_needs_key(const char *name, void *arg)
{
    char k[64];
    for (int i = 0; i < VGG19_CONVS; i++)
        for (int b = 0; b < 2; b++) {
            key_of(k, sizeof k, i, b);
            if (!strcmp(k, name))
                return 1;
        }
    return 0;
}

static int is_known_unused(const char *name)
{
    for (size_t i = 0; i < sizeof unused_keys / sizeof *unused_keys; i++)
        if (!strcmp(unused_keys[i], name))
            return 1;
    return 0;
}

static int vgg19_check_weights(const nn_weights *w, char *report, size_t len)
{
    int problems = 0;
    size_t at = 0;
    if (len)
        report[0] = 0;
    for (int i = 0; i < VGG19_CONVS; i++)
        for (int b = 0; b < 2; b++) {
            char k[64];
            key_of(k, sizeof k, i, b);
            const nn_weight_entry *t = nn_weights_find(w, k);
            int64_t want[4] = {vgg19_cout(i), vgg19_cin(i), 3, 3};
            int wnd = b ? 1 : 4;
            if (!t) {
                at = pgn_report_append(report, len, at, "missing key %s\n", k);
                problems++;
                continue;
            }
            if (t->ndim != wnd || memcmp(t->shape, want, (size_t)wnd * sizeof *want)) {
                char have[96], exp[96];
                nn_shape_str(have, sizeof have, t->ndim, t->shape);
                nn_shape_str(exp, sizeof exp, wnd, want);
                at = pgn_report_append(report, len, at, "key %s has shape %s, expected %s\n", k, have, exp);
                problems++;
            } else if (t->dtype != NN_F32 && t->dtype != NN_F64 && t->dtype != NN_F16 && t->dtype != NN_BF16) {
                at = pgn_report_append(report, len, at, "key %s has dtype %s, expected a floating type\n", k,
                             nn_dtype_name(t->dtype));
                problems++;
            }
        }
    for (int i = 0; i < w->count; i++) {
        const char *name = w->entries[i].name;
        if (!is_needed(name, NULL) && !is_known_unused(name)) {
            at = pgn_report_append(report, len, at, "unexpected key %s\n", name);
            problems++;
        }
    }
    return problems;
}

int pgn_teacher_check_weights(const nn_weights *w, char *report, size_t len)
{
    return nn_weights_meta(w, NN_TFJS_TOPOLOGY_KEY) ? inception3_check_weights(w, report, len)
                                                    : vgg19_check_weights(w, report, len);
}

const char *pgn_teacher_kind_of_path(const char *weights_path)
{
    char dir[1024], manifest[1200];
    return weights_path && *weights_path && nn_tfjs_locate(weights_path, dir, sizeof dir, manifest, sizeof manifest)
               ? "inception3"
               : "vgg19";
}

static int open_vgg19(pgn_teacher *t, const char *weights_path, nn_err *e)
{
    if (vgg19_init(&t->net, t->seed, e))
        return -1;
    if (!weights_path || !*weights_path)
        return 0;
    nn_weights w;
    if (nn_weights_read_filtered(&w, weights_path, is_needed, NULL, e)) {
        vgg19_free(&t->net);
        return nn_err_prefix(e, "teacher weights");
    }
    char report[4096];
    int problems = vgg19_check_weights(&w, report, sizeof report);
    int rc = 0;
    if (problems) {
        pgn_report_one_line(report);
        rc = nn_errf(e, "%s is not a usable VGG-19 teacher (%d problem%s): %s", weights_path, problems,
                     problems == 1 ? "" : "s", report);
    }
    for (int i = 0; !rc && i < VGG19_CONVS; i++) {
        char kw[64], kb[64];
        key_of(kw, sizeof kw, i, 0);
        key_of(kb, sizeof kb, i, 1);
        rc = nn_weights_get_f32(&w, kw, &t->net.conv[i].weight, e) || nn_weights_get_f32(&w, kb, &t->net.conv[i].bias, e);
        t->net.conv[i].weights_stale = 1;
    }
    nn_weights_free(&w);
    if (!rc && nn_sha256_file(weights_path, t->weights_sha256))
        rc = nn_errf(e, "%s: cannot read for its checksum", weights_path);
    if (rc)
        vgg19_free(&t->net);
    return rc;
}

static int open_inception3(pgn_teacher *t, const char *weights_path, nn_err *e)
{
    if (inception3_init(&t->inc, t->seed, e))
        return -1;
    if (!weights_path || !*weights_path)
        return 0;
    nn_weights w;
    if (nn_weights_read_filtered(&w, weights_path, inception3_needs_key, NULL, e)) {
        inception3_free(&t->inc);
        return nn_err_prefix(e, "teacher weights");
    }
    int rc = inception3_load(&t->inc, &w, e);
    if (rc)
        nn_err_prefix(e, "%s", weights_path);
    const nn_weight_meta *sha = nn_weights_meta(&w, NN_TFJS_SHA256_KEY);
    if (!rc)
        snprintf(t->weights_sha256, sizeof t->weights_sha256, "%s", sha ? sha->str : "");
    nn_weights_free(&w);
    if (rc)
        inception3_free(&t->inc);
    return rc;
}

/* The teacher never learns: its convs' weight gradients would only hold memory (49 MB for VGG-19,
 * until the first backward released them with the plain weights). */
static void drop_weight_grads(nn_conv2d *c, int n)
{
    for (int i = 0; i < n; i++) {
        nn_tensor_free(&c[i].dweight);
        nn_tensor_free(&c[i].dbias);
    }
}

int pgn_teacher_open_named(pgn_teacher *t, const char *name, const char *weights_path, uint64_t seed, nn_err *e)
{
    memset(t, 0, sizeof *t);
    int have = weights_path && *weights_path;
    const char *from_path = pgn_teacher_kind_of_path(weights_path);
    if (!name || !*name || !strcmp(name, "auto"))
        name = from_path;
    if (strcmp(name, "vgg19") && strcmp(name, "inception3"))
        return nn_errf(e, "unknown teacher \"%s\" (vgg19 or inception3)", name);
    if (have && !strcmp(name, "inception3") && strcmp(from_path, "inception3"))
        return nn_errf(e, "teacher inception3 asked for, but %s is not a tfjs layers model (no model.json, "
                          "model.min.js or model.js)", weights_path);
    if (have && strcmp(name, from_path))
        return nn_errf(e, "teacher %s asked for, but %s holds %s weights", name, weights_path, from_path);
    t->kind = strcmp(name, "inception3") ? PGN_TEACHER_VGG19 : PGN_TEACHER_INCEPTION3;
    snprintf(t->name, sizeof t->name, "%s", name);
    t->seed = seed;
    t->random = !have;
    if (t->kind == PGN_TEACHER_VGG19 ? open_vgg19(t, weights_path, e) : open_inception3(t, weights_path, e))
        return -1;
    if (t->kind == PGN_TEACHER_VGG19)
        drop_weight_grads(t->net.conv, VGG19_CONVS);
    else
        drop_weight_grads(t->inc.conv, INC3_CONVS);
    if (have)
        snprintf(t->weights_path, sizeof t->weights_path, "%s", weights_path);
    return 0;
}

int pgn_teacher_open(pgn_teacher *t, const char *weights_path, uint64_t seed, nn_err *e)
{
    return pgn_teacher_open_named(t, NULL, weights_path, seed, e);
}

void pgn_teacher_set_fast(pgn_teacher *t)
{
    if (t->kind == PGN_TEACHER_VGG19) {
        t->net.winograd_auto = 0;
        for (int i = 0; i < VGG19_CONVS; i++)
            t->net.conv[i].winograd = NN_WINO_FWD | NN_WINO_BWD_DATA;
        return;
    }
    for (int i = 0; i < INC3_CONVS; i++) {
        nn_conv2d *c = &t->inc.conv[i];
        if (c->geo.kh == 3 && c->geo.kw == 3 && c->geo.sh == 1 && c->geo.sw == 1)
            c->winograd = NN_WINO_FWD | NN_WINO_BWD_DATA;
    }
}

void pgn_teacher_close(pgn_teacher *t)
{
    if (t->kind == PGN_TEACHER_INCEPTION3)
        inception3_free(&t->inc);
    else
        vgg19_free(&t->net);
    nn_free(t->xn);
    memset(t, 0, sizeof *t);
}

const char *pgn_teacher_describe(const pgn_teacher *t, char *buf, size_t len)
{
    if (t->random)
        snprintf(buf, len, "%s, %s (seed %llu)", t->name, PGN_TEACHER_RANDOM_NOTE, (unsigned long long)t->seed);
    else {
        /* the file or folder name (a folder given as "dir/" is named by its last component) */
        const char *p = t->weights_path, *end = p + strlen(p);
        while (end > p + 1 && end[-1] == '/')
            end--;
        const char *base = end;
        while (base > p && base[-1] != '/')
            base--;
        snprintf(buf, len, "%s, weights %.*s (sha256 %.16s...)", t->name, (int)(end - base), base, t->weights_sha256);
    }
    return buf;
}

/* Every space is a per-channel affine image of [0, 1]: x = (unit - m_c) / s_c. */
static void space_affine(pgn_space sp, int c, float *m, float *s)
{
    switch (sp) {
    case PGN_SPACE_NORMALISED: *m = pgn_imagenet_mean[c], *s = pgn_imagenet_std[c]; break;
    case PGN_SPACE_PM1: *m = 0.5f, *s = 0.5f; break;
    default: *m = 0.0f, *s = 1.0f; break;
    }
}

void pgn_space_convert(float *dst, const float *src, int n, int h, int w, pgn_space from, pgn_space to)
{
    size_t plane = (size_t)h * w;
    for (int i = 0; i < n; i++)
        for (int c = 0; c < 3; c++) {
            const float *x = src + ((size_t)i * 3 + c) * plane;
            float *y = dst + ((size_t)i * 3 + c) * plane;
            if (from == to) {
                if (y != x)
                    memcpy(y, x, plane * sizeof(float));
                continue;
            }
            float ma, sa, mb, sb;
            space_affine(from, c, &ma, &sa);
            space_affine(to, c, &mb, &sb);
            for (size_t k = 0; k < plane; k++)
                y[k] = (x[k] * sa + ma - mb) / sb;
        }
}

void pgn_grad_convert(float *g, int n, int h, int w, pgn_space from, pgn_space to)
{
    if (from == to)
        return;
    size_t plane = (size_t)h * w;
    for (int i = 0; i < n; i++)
        for (int c = 0; c < 3; c++) {
            float ma, sa, mb, sb;
            space_affine(from, c, &ma, &sa);
            space_affine(to, c, &mb, &sb);
            float k = sb / sa; /* x_from = (x_to * sb + mb - ma) / sa */
            float *p = g + ((size_t)i * 3 + c) * plane;
            for (size_t j = 0; j < plane; j++)
                p[j] *= k;
        }
}

void pgn_to_normalised(float *dst, const float *src, int n, int h, int w, pgn_space space)
{
    pgn_space_convert(dst, src, n, h, w, space, PGN_SPACE_NORMALISED);
}

void pgn_grad_from_normalised(float *g, int n, int h, int w, pgn_space space)
{
    pgn_grad_convert(g, n, h, w, PGN_SPACE_NORMALISED, space);
}

static pgn_space native_space(const pgn_teacher *t)
{
    return t->kind == PGN_TEACHER_INCEPTION3 ? PGN_SPACE_PM1 : PGN_SPACE_NORMALISED;
}

/* The input in the teacher's own space: the caller's buffer itself, or a converted copy. */
static const float *native(pgn_teacher *t, const float *x, int n, int h, int w, pgn_space space, nn_err *e)
{
    if (space == native_space(t))
        return x;
    size_t bytes = (size_t)n * 3 * h * w * sizeof(float);
    if (bytes > t->xn_cap) {
        nn_free(t->xn);
        t->xn = nn_alloc(bytes);
        t->xn_cap = t->xn ? bytes : 0;
        if (!t->xn) {
            nn_errf(e, "out of memory");
            return NULL;
        }
    }
    pgn_space_convert(t->xn, x, n, h, w, space, native_space(t));
    return t->xn;
}

int pgn_teacher_set_target(nn_ctx *ctx, pgn_teacher *t, const float *y, int n, int h, int w, pgn_space space,
                           nn_err *e)
{
    const float *yn = native(t, y, n, h, w, space, e);
    if (!yn)
        return -1;
    return t->kind == PGN_TEACHER_INCEPTION3 ? inception3_set_target(ctx, &t->inc, yn, n, h, w, e)
                                             : vgg19_set_target(ctx, &t->net, yn, n, h, w, e);
}

int pgn_teacher_loss_grad(nn_ctx *ctx, pgn_teacher *t, const float *x, int n, int h, int w, pgn_space space,
                          double *per_sample, double *loss, float *grad, nn_err *e)
{
    const float *xn = native(t, x, n, h, w, space, e);
    double total;
    if (!xn)
        return -1;
    if (t->kind == PGN_TEACHER_INCEPTION3 ? inception3_perceptual(ctx, &t->inc, xn, n, h, w, &total, per_sample, grad, e)
                                          : vgg19_perceptual(ctx, &t->net, xn, n, h, w, &total, per_sample, grad, e))
        return -1;
    if (loss)
        *loss = total;
    if (grad)
        pgn_grad_convert(grad, n, h, w, native_space(t), space);
    return 0;
}

int pgn_teacher_loss_grad_pair(nn_ctx *ctx, pgn_teacher *t, const float *x, const float *y, int n, int h, int w,
                               pgn_space space, double *per_sample, double *loss, float *grad, nn_err *e)
{
    if (pgn_teacher_set_target(ctx, t, y, n, h, w, space, e))
        return -1;
    return pgn_teacher_loss_grad(ctx, t, x, n, h, w, space, per_sample, loss, grad, e);
}
