#include "pgn/viz.h"

#include <float.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pgn/image.h"
#include "pgn/teacher.h"

static float clamp01(float v) { return v < 0 ? 0 : v > 1 ? 1 : v; }

void pgn_viz_gradient(float *dst, const float *g, const float *ref, int h, int w)
{
    size_t plane = (size_t)h * w;
    for (int c = 0; c < 3; c++) {
        const float *r = ref + c * plane;
        float lo = FLT_MAX, hi = -FLT_MAX;
        for (size_t i = 0; i < plane; i++) {
            lo = r[i] < lo ? r[i] : lo;
            hi = r[i] > hi ? r[i] : hi;
        }
        float scale = 1.0f / (hi - lo + 1e-8f);
        for (size_t i = 0; i < plane; i++)
            dst[c * plane + i] = clamp01((g[c * plane + i] - lo) * scale);
    }
}

void pgn_viz_denormalise(float *dst, const float *xn, int h, int w)
{
    size_t plane = (size_t)h * w;
    for (int c = 0; c < 3; c++)
        for (size_t i = 0; i < plane; i++)
            dst[c * plane + i] = clamp01(xn[c * plane + i] * pgn_imagenet_std[c] + pgn_imagenet_mean[c]);
}

int pgn_viz_fields_png(const char *path, const pgn_fields *f, char *err, size_t errlen)
{
    enum { PANELS = 6, GAP = 2 };
    int h = f->h, w = f->w, W = PANELS * w + (PANELS - 1) * GAP;
    size_t plane = (size_t)h * w, big = (size_t)h * W;
    float *out = malloc(3 * big * sizeof(float)), *tmp = malloc(3 * plane * sizeof(float));
    if (!out || !tmp) {
        free(out), free(tmp);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < 3 * big; i++)
        out[i] = 1.0f; /* white gaps and blank panels */
    for (int k = 0; k < PANELS; k++) {
        const float *src = k == 0 ? f->target : k == 1 ? f->generated : k == 2 ? f->g_true : k == 3 ? f->g_pred
                           : k == 4 ? f->p_true : f->p_pred;
        if (!src)
            continue;
        if (k == 2 || k == 3)
            pgn_viz_gradient(tmp, src, f->g_true, h, w);
        else
            pgn_viz_denormalise(tmp, src, h, w);
        for (int c = 0; c < 3; c++)
            for (int y = 0; y < h; y++)
                memcpy(out + c * big + (size_t)y * W + (size_t)k * (w + GAP), tmp + c * plane + (size_t)y * w,
                       (size_t)w * sizeof(float));
    }
    int rc = pgn_image_save_png(path, out, h, W, err, errlen);
    free(out), free(tmp);
    return rc;
}
