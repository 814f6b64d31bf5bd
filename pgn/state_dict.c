#include "pgn/state_dict.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pgn/report.h"

static const char *const BN_SUFFIX[5] = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"};

typedef struct want_key {
    char name[64];
    int ndim;
    int64_t shape[4];
    int is_count;   /* num_batches_tracked: a 0-dim integer */
    nn_tensor *dst; /* float destination */
    long *count_dst;
} want_key;

int pgn_state_key_count(const pgn_module *mods, int n)
{
    int k = 0;
    for (int m = 0; m < n; m++)
        k += mods[m].conv ? 1 + mods[m].conv->geo.has_bias : 5;
    return k;
}

/* The keys in state-dict order; *k is malloc'ed. */
static int expected_keys(const pgn_module *mods, int n, want_key **out)
{
    want_key *k = calloc((size_t)pgn_state_key_count(mods, n) + 1, sizeof *k);
    int nk = 0;
    for (int m = 0; k && m < n; m++) {
        const pgn_module *md = &mods[m];
        if (md->conv) {
            nn_tensor *ts[2] = {&md->conv->weight, &md->conv->bias};
            for (int j = 0; j < 1 + md->conv->geo.has_bias; j++, nk++) {
                snprintf(k[nk].name, sizeof k[nk].name, "%s.%s", md->prefix, j ? "bias" : "weight");
                k[nk].ndim = ts[j]->ndim;
                memcpy(k[nk].shape, ts[j]->shape, sizeof k[nk].shape);
                k[nk].dst = ts[j];
            }
        } else {
            nn_tensor *ts[4] = {&md->bn->gamma, &md->bn->beta, &md->bn->running_mean, &md->bn->running_var};
            for (int j = 0; j < 5; j++, nk++) {
                snprintf(k[nk].name, sizeof k[nk].name, "%s.%s", md->prefix, BN_SUFFIX[j]);
                k[nk].is_count = j == 4;
                k[nk].ndim = j == 4 ? 0 : 1;
                k[nk].shape[0] = md->bn->c;
                k[nk].dst = j < 4 ? ts[j] : NULL;
                k[nk].count_dst = j == 4 ? &md->bn->num_batches_tracked : NULL;
            }
        }
    }
    *out = k;
    return k ? nk : -1;
}

static int is_float_dtype(nn_dtype t) { return t == NN_F32 || t == NN_F64 || t == NN_F16 || t == NN_BF16; }
static int is_count_dtype(nn_dtype t)
{
    return t == NN_I64 || t == NN_I32 || t == NN_I16 || t == NN_I8 || t == NN_U8 || t == NN_F32 || t == NN_F64;
}

int pgn_state_check(const pgn_module *mods, int n, const nn_weights *w, char *report, size_t len)
{
    want_key *k;
    int nk = expected_keys(mods, n, &k), problems = 0;
    size_t at = 0;
    if (len)
        report[0] = 0;
    if (nk < 0) {
        pgn_report_append(report, len, 0, "out of memory\n");
        return 1;
    }
    for (int i = 0; i < nk; i++) {
        const nn_weight_entry *t = nn_weights_find(w, k[i].name);
        if (!t) {
            at = pgn_report_append(report, len, at, "missing key %s\n", k[i].name);
            problems++;
            continue;
        }
        if (t->ndim != k[i].ndim || (t->ndim && memcmp(t->shape, k[i].shape, (size_t)t->ndim * sizeof *t->shape))) {
            char have[96], exp[96];
            nn_shape_str(have, sizeof have, t->ndim, t->shape);
            nn_shape_str(exp, sizeof exp, k[i].ndim, k[i].shape);
            at = pgn_report_append(report, len, at, "key %s has shape %s, expected %s\n", k[i].name, have, exp);
            problems++;
        } else if (k[i].is_count ? !is_count_dtype(t->dtype) : !is_float_dtype(t->dtype)) {
            at = pgn_report_append(report, len, at, "key %s has dtype %s, expected %s\n", k[i].name, nn_dtype_name(t->dtype),
                         k[i].is_count ? "an integer" : "a floating type");
            problems++;
        } else if (!t->data) {
            at = pgn_report_append(report, len, at, "key %s was not loaded\n", k[i].name);
            problems++;
        }
    }
    for (int j = 0; j < w->count; j++) {
        int found = 0;
        for (int i = 0; i < nk && !found; i++)
            found = !strcmp(w->entries[j].name, k[i].name);
        if (!found) {
            at = pgn_report_append(report, len, at, "unexpected key %s\n", w->entries[j].name);
            problems++;
        }
    }
    free(k);
    return problems;
}

static long count_value(const nn_weight_entry *t)
{
    switch (t->dtype) {
    case NN_I64: return (long)*(const int64_t *)t->data;
    case NN_I32: return (long)*(const int32_t *)t->data;
    case NN_I16: return (long)*(const int16_t *)t->data;
    case NN_I8: return (long)*(const int8_t *)t->data;
    case NN_U8: return (long)*(const uint8_t *)t->data;
    case NN_F32: return (long)*(const float *)t->data;
    case NN_F64: return (long)*(const double *)t->data;
    default: return 0;
    }
}

int pgn_state_load(const pgn_module *mods, int n, const nn_weights *w, const char *what, const char *hint, nn_err *e)
{
    char report[8192];
    int problems = pgn_state_check(mods, n, w, report, sizeof report);
    if (problems) {
        pgn_report_one_line(report);
        return nn_errf(e, "%s is not a %s state dict (%d problem%s%s): %s", w->path ? w->path : "(weights)", what,
                       problems, problems == 1 ? "" : "s", hint ? hint : "", report);
    }
    want_key *k;
    int nk = expected_keys(mods, n, &k);
    if (nk < 0)
        return nn_errf(e, "out of memory");
    int rc = 0;
    for (int i = 0; i < nk && !rc; i++) {
        if (k[i].is_count)
            *k[i].count_dst = count_value(nn_weights_find(w, k[i].name));
        else
            rc = nn_weights_get_f32(w, k[i].name, k[i].dst, e);
    }
    free(k);
    for (int m = 0; !rc && m < n; m++)
        if (mods[m].conv)
            mods[m].conv->weights_stale = 1;
    return rc;
}

int pgn_state_export_init(pgn_state_export *x, const pgn_module *mods, int n, const char *prefix, nn_err *e)
{
    memset(x, 0, sizeof *x);
    want_key *k;
    int nk = expected_keys(mods, n, &k);
    if (nk < 0)
        return nn_errf(e, "out of memory");
    int nbn = 0;
    for (int m = 0; m < n; m++)
        nbn += mods[m].bn != NULL;
    x->names = calloc((size_t)nk + 1, sizeof *x->names);
    x->t = calloc((size_t)nk + 1, sizeof *x->t);
    x->counts = calloc((size_t)nbn + 1, sizeof *x->counts);
    x->count_vals = calloc((size_t)nbn + 1, sizeof *x->count_vals);
    x->count_dst = calloc((size_t)nbn + 1, sizeof *x->count_dst);
    if (!x->names || !x->t || !x->counts || !x->count_vals || !x->count_dst) {
        free(k);
        pgn_state_export_free(x);
        return nn_errf(e, "out of memory");
    }
    for (int i = 0; i < nk; i++) {
        if (snprintf(x->names[i], sizeof x->names[i], "%s%s", prefix ? prefix : "", k[i].name) >=
            (int)sizeof x->names[i]) {
            free(k);
            pgn_state_export_free(x);
            return nn_errf(e, "state-dict key %s%s is too long", prefix, k[i].name);
        }
        if (k[i].is_count) {
            int c = x->n_counts++;
            x->count_vals[c] = (float)*k[i].count_dst;
            x->counts[c] = nn_tensor_view(&x->count_vals[c], 0, NULL);
            x->count_dst[c] = k[i].count_dst;
            x->t[i] = &x->counts[c];
        } else {
            x->t[i] = k[i].dst;
        }
    }
    x->n = nk;
    x->mods = mods;
    x->nmods = n;
    free(k);
    return 0;
}

void pgn_state_export_free(pgn_state_export *x)
{
    free(x->names);
    free(x->t);
    free(x->counts);
    free(x->count_vals);
    free(x->count_dst);
    memset(x, 0, sizeof *x);
}

int pgn_state_export_read(pgn_state_export *x, const nn_weights *w, nn_err *e)
{
    for (int i = 0; i < x->n; i++)
        if (nn_weights_get_f32(w, x->names[i], (nn_tensor *)x->t[i], e))
            return -1;
    for (int c = 0; c < x->n_counts; c++)
        *x->count_dst[c] = (long)x->count_vals[c];
    for (int m = 0; m < x->nmods; m++)
        if (x->mods[m].conv)
            x->mods[m].conv->weights_stale = 1;
    return 0;
}
