/* Gradient-field panels (spec/method.md §7), rendered to PNG for the dashboard and reports:
 *   target | generated | true gradient | predicted gradient | true proxy | predicted proxy
 * Gradients are mapped to [0,1] per channel with the TRUE gradient's min and max (+1e-8), the same
 * map applied to the prediction, then clamped, so the two fields are comparable. Images and proxies
 * are de-normalised from ImageNet space. The true proxy is y_hat - (N s / 2) g_true, the proxy a
 * perfect PGN with grad scale s would predict (the official videos omit s; see §7). */
#ifndef PGN_VIZ_H
#define PGN_VIZ_H

#include <stddef.h>

typedef struct pgn_fields {
    int h, w;
    const float *target, *generated;   /* normalised space, CHW */
    const float *g_true, *g_pred;      /* gradients w.r.t. the normalised image, CHW */
    const float *p_true, *p_pred;      /* proxies, normalised space, CHW (either may be NULL: blank) */
} pgn_fields;

/* Writes the six panels side by side (a 2-pixel white gap between them) as one RGB PNG. */
int pgn_viz_fields_png(const char *path, const pgn_fields *f, char *err, size_t errlen);
/* The per-channel map of §7 applied to one field (dst in [0,1]). */
void pgn_viz_gradient(float *dst, const float *g, const float *ref, int h, int w);
/* De-normalises an ImageNet-normalised image into [0,1] (clamped). */
void pgn_viz_denormalise(float *dst, const float *xn, int h, int w);

#endif
