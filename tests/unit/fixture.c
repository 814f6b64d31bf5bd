#include "tests/unit/fixture.h"

#include <jansson.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "nn/rng.h"

void fx_open(nn_weights *w, const char *name)
{
    char path[512];
    nn_err e;
    snprintf(path, sizeof path, "tests/fixtures/%s", name);
    if (nn_weights_read(w, path, &e)) {
        print_error("cannot read fixture: %s\n", e.msg);
        fail();
    }
}

float *fx_find(const nn_weights *w, const char *name, size_t *numel)
{
    const nn_weight_entry *t = nn_weights_find(w, name);
    if (!t)
        return NULL;
    if (t->dtype != NN_F32) {
        print_error("fixture tensor %s is not F32\n", name);
        fail();
    }
    if (numel)
        *numel = t->numel;
    return t->data;
}

float *fx_get(const nn_weights *w, const char *name, size_t *numel)
{
    float *p = fx_find(w, name, numel);
    if (!p) {
        print_error("fixture tensor %s missing\n", name);
        fail();
    }
    return p;
}

static json_t *case_params(const nn_weights *w, const char *case_name)
{
    static json_t *cached;
    static char cached_name[256];
    if (cached && !strcmp(cached_name, case_name))
        return cached;
    const nn_weight_meta *m = nn_weights_meta(w, case_name);
    if (!m) {
        print_error("fixture case %s has no metadata\n", case_name);
        fail();
    }
    json_decref(cached);
    cached = json_loads(m->str, 0, NULL);
    snprintf(cached_name, sizeof cached_name, "%s", case_name);
    return cached;
}

double fx_param(const nn_weights *w, const char *case_name, const char *key)
{
    json_t *v = json_object_get(case_params(w, case_name), key);
    if (!json_is_number(v) && !json_is_boolean(v)) {
        print_error("fixture case %s: parameter %s missing\n", case_name, key);
        fail();
    }
    return json_is_boolean(v) ? json_is_true(v) : json_number_value(v);
}

const char *fx_param_str(const nn_weights *w, const char *case_name, const char *key)
{
    return json_string_value(json_object_get(case_params(w, case_name), key));
}

double fx_rel_err(const float *a, const float *b, size_t n)
{
    double maxb = 0, maxd = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= maxd)) /* also catches NaN */
            maxd = isnan(d) ? INFINITY : d;
        if (fabs(b[i]) > maxb)
            maxb = fabs(b[i]);
    }
    if (maxb == 0)
        return maxd;
    return maxd / maxb;
}

void fx_expect_close(const char *label, const float *got, const float *want, size_t n, double tol)
{
    double err = fx_rel_err(got, want, n);
    if (!(err <= tol)) {
        print_error("%s: max error relative to max |value| %.3g > %.3g\n", label, err, tol);
        fail();
    }
}

void fx_act_from(nn_ctx *ctx, nn_act *a, const float *data, int n, int c, int h, int w)
{
    nn_err e;
    if (nn_act_from_nchw(ctx, a, data, n, c, h, w, &e)) {
        print_error("%s\n", e.msg);
        fail();
    }
}

void fx_act_blocked(nn_ctx *ctx, nn_act *a, const float *data, int n, int c, int h, int w, int blk)
{
    nn_err e;
    fx_act_from(ctx, a, data, n, c, h, w);
    dnnl_memory_desc_t md = nn_md_blocked(n, c, h, w, blk);
    fx_ok(nn_act_convert(ctx, a, &md, &e), &e);
}

float *fx_randv(size_t n, uint64_t seed)
{
    nn_rng r;
    nn_rng_seed(&r, seed);
    float *v = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        v[i] = nn_rng_uniform_range(&r, -1.0f, 1.0f);
    return v;
}

float *fx_act_to(nn_ctx *ctx, const nn_act *a)
{
    nn_err e;
    float *out = malloc(nn_act_count(a) * sizeof(float));
    if (nn_act_to_nchw(ctx, a, out, &e)) {
        print_error("%s\n", e.msg);
        fail();
    }
    return out;
}

void fx_ok(int rc, const nn_err *e)
{
    if (rc) {
        print_error("%s\n", e->msg);
        fail();
    }
}

void fx_expect_error(int rc, const nn_err *e, const char *needle)
{
    if (!rc) {
        print_error("expected an error containing '%s'\n", needle);
        fail();
    }
    if (!strstr(e->msg, needle)) {
        print_error("error '%s' does not contain '%s'\n", e->msg, needle);
        fail();
    }
}

int fx_pin(nn_ctx *ctx, nn_act *a, const nn_weights *fx, const char *name, int *pinned)
{
    char key[96];
    snprintf(key, sizeof key, "pin.%s.index", name);
    const nn_weight_entry *ix = nn_weights_find(fx, key);
    snprintf(key, sizeof key, "pin.%s.sign", name);
    const nn_weight_entry *sg = nn_weights_find(fx, key);
    if (!ix || !sg || ix->dtype != NN_I32 || sg->dtype != NN_I8 || ix->numel != sg->numel) {
        print_error("fixture pins of %s missing or malformed\n", name);
        fail();
    }
    const dnnl_memory_desc_t md = a->md;
    float *buf = fx_act_to(ctx, a);
    const size_t count = nn_act_count(a);
    int flips = 0;
    for (size_t j = 0; j < ix->numel; j++) {
        const int32_t at = ((const int32_t *)ix->data)[j];
        const int8_t sign = ((const int8_t *)sg->data)[j];
        assert_true(at >= 0 && (size_t)at < count);
        /* Only where the float32 sign differs: elsewhere the mask already agrees, and the value
         * stays (it may also be the next layer's input, when the activation ran in place). */
        if ((buf[at] > 0) != (sign > 0)) {
            flips++;
            buf[at] = sign > 0 ? 1e-20f : -1e-20f;
        }
    }
    *pinned += (int)ix->numel;
    nn_err e;
    fx_ok(nn_act_from_nchw(ctx, a, buf, a->n, a->c, a->h, a->w, &e), &e);
    fx_ok(nn_act_convert(ctx, a, &md, &e), &e);
    free(buf);
    return flips;
}

nn_ctx fx_ctx;

int fx_ctx_setup(void **state)
{
    (void)state;
    nn_err e;
    if (nn_ctx_init(&fx_ctx, 2, &e)) {
        print_error("%s\n", e.msg);
        return -1;
    }
    return 0;
}

int fx_ctx_teardown(void **state)
{
    (void)state;
    nn_ctx_free(&fx_ctx);
    return 0;
}
