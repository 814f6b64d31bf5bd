#include "pgn/l1_taps.h"

#include <stdlib.h>
#include <string.h>

int pgn_l1_taps_sum(nn_ctx *ctx, pgn_l1_taps *s, const nn_act *const *x, const nn_act *target, int taps, int n,
                    double *loss, double *per_sample, nn_err *e)
{
    if (n > s->cap) {
        pgn_l1_taps_free(s);
        s->ps = calloc((size_t)n, sizeof *s->ps);
        s->tap = calloc((size_t)n, sizeof *s->tap);
        if (!s->ps || !s->tap) {
            pgn_l1_taps_free(s);
            return nn_errf(e, "out of memory");
        }
        s->cap = n;
    }
    memset(s->ps, 0, (size_t)n * sizeof *s->ps);
    double total = 0;
    for (int k = 0; k < taps; k++) {
        double l;
        if (nn_l1_loss(ctx, x[k], &target[k], &l, s->tap, e))
            return -1;
        total += l * n; /* sum over samples of per-sample means */
        for (int i = 0; i < n; i++)
            s->ps[i] += s->tap[i];
    }
    if (loss)
        *loss = total;
    if (per_sample)
        memcpy(per_sample, s->ps, (size_t)n * sizeof(double));
    return 0;
}

double *pgn_l1_taps_raw(pgn_l1_taps *s, int taps, int n, nn_err *e)
{
    if (taps * n > s->raw_cap) {
        free(s->raw);
        s->raw = calloc((size_t)taps * n, sizeof *s->raw);
        s->raw_cap = s->raw ? taps * n : 0;
        if (!s->raw) {
            nn_errf(e, "out of memory");
            return NULL;
        }
    }
    return s->raw;
}

/* As pgn_l1_taps_sum combines nn_l1_loss's results: tap means, taps in order. */
void pgn_l1_taps_total(pgn_l1_taps *s, const nn_act *const *x, int taps, int n, double *loss, double *per_sample)
{
    double total = 0;
    if (per_sample)
        memset(per_sample, 0, (size_t)n * sizeof *per_sample);
    for (int k = 0; k < taps; k++) {
        const double chw = (double)x[k]->c * x[k]->h * x[k]->w, *r = s->raw + (size_t)k * n;
        double tap_total = 0;
        for (int i = 0; i < n; i++) {
            tap_total += r[i];
            if (per_sample)
                per_sample[i] += r[i] / chw;
        }
        total += tap_total / (chw * n) * n;
    }
    if (loss)
        *loss = total;
}

void pgn_l1_taps_free(pgn_l1_taps *s)
{
    free(s->ps);
    free(s->tap);
    free(s->raw);
    memset(s, 0, sizeof *s);
}
