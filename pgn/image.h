/* Image files <-> float32 CHW RGB in [0, 1].
 *
 * Loading: the format is told by the first bytes (PNG "\x89PNG\r\n\x1a\n", JPEG FF D8 FF), not by
 * the name. PNG (libpng): grey, grey+alpha, palette, RGB, RGBA, 1..16 bits per sample, interlaced or
 * not; grey is replicated to RGB, palettes expanded, alpha (and tRNS) dropped without compositing
 * (as PIL's convert("RGB")), 16-bit samples scaled by 1/65535, 8-bit by 1/255; no gamma handling.
 * JPEG (libjpeg): greyscale and YCbCr/RGB (libjpeg's default decoding: islow DCT, fancy upsampling,
 * as PIL); CMYK / YCCK files are refused. A file that ends early (truncated PNG data or missing
 * chunks, a JPEG whose data runs out) is an error; libjpeg's other warnings (e.g. extraneous bytes
 * before a marker) are tolerated, as PIL does. Images larger than PGN_IMAGE_MAX_PIXELS are refused.
 * Every error message starts with the path. Nothing here aborts or crashes on a corrupt file.
 *
 * Saving: 8-bit RGB PNG of a [3, h, w] float image, each value clamped to [0, 1] and rounded
 * (round(255 x), NaN -> 0), written to "<path>.tmp.<pid>.<n>", fsynced, renamed over path (atomic),
 * and the directory fsynced. On failure the temporary is removed and path is left as it was.
 *
 * Functions return 0, or -1 with a message in err (errlen bytes). Returned arrays are malloc'ed
 * (release with free). */
#ifndef PGN_IMAGE_H
#define PGN_IMAGE_H

#include <math.h>
#include <stddef.h>

#define PGN_IMAGE_MAX_PIXELS (1L << 26) /* 64 Mpixel (768 MiB as float RGB) */

/* Any PNG or JPEG -> *out [3, *h, *w]. */
int pgn_image_load(const char *path, float **out, int *h, int *w, char *err, size_t errlen);
/* Decodes a file already in memory; `name` is used in messages. */
int pgn_image_decode(const void *data, size_t len, const char *name, float **out, int *h, int *w, char *err,
                     size_t errlen);

/* [3, h, w] in [0, 1] -> 8-bit RGB PNG, atomically. */
int pgn_image_save_png(const char *path, const float *chw, int h, int w, char *err, size_t errlen);

/* Bilinear resampling of a [c, h, w] image to [c, oh, ow] as PyTorch's
 * F.interpolate(mode="bilinear", align_corners=False, antialias=False): source coordinate
 * (dst + 0.5) * in / out - 0.5, clamped at 0. No antialiasing (downscaling aliases). */
void pgn_image_resize(const float *src, int c, int h, int w, float *dst, int oh, int ow);
/* Its source coordinate for output index o (scale = in / out, half-pixel centres, clamped at 0):
 * the two neighbours i0 <= i1 < in and their weights l0 + l1 = 1. Shared with the image cache's
 * resize, which must give the same pixels. */
static inline void pgn_resize_coord(int o, float scale, int in, int *i0, int *i1, float *l0, float *l1)
{
    float f = scale * ((float)o + 0.5f) - 0.5f;
    if (f < 0)
        f = 0;
    *i0 = (int)f;
    *i1 = *i0 + (*i0 < in - 1);
    *l1 = f - (float)*i0;
    *l0 = 1.0f - *l1;
}
/* Its interpolation of one value from the four neighbours a (y0, x0), b (y0, x1), c (y1, x0), d (y1,
 * x1), with explicit fused multiply-adds so that every caller rounds alike (the compiler's own
 * contraction choices differ between call sites). */
static inline float pgn_bilerp(float a, float b, float c, float d, float lx0, float lx1, float ly0, float ly1)
{
    return fmaf(ly1, fmaf(lx1, d, lx0 * c), ly0 * fmaf(lx1, b, lx0 * a));
}
/* torchvision's Resize(size) output size: the shorter side becomes `size`, the longer one
 * int(size * long / short). */
void pgn_image_shorter_side_size(int h, int w, int size, int *oh, int *ow);
/* torchvision's CenterCrop offsets: top = round((h - ch) / 2), left = round((w - cw) / 2), with
 * Python's round (halves to even). Requires ch <= h, cw <= w. */
void pgn_image_center_crop(const float *src, int c, int h, int w, float *dst, int ch, int cw);

/* The evaluation transform: load, Resize(resize) (shorter side, bilinear, no antialias), then
 * CenterCrop(crop x crop) -> *out [3, crop, crop]. Requires resize >= crop. */
int pgn_image_load_eval(const char *path, int resize, int crop, float **out, char *err, size_t errlen);
/* §5.1's transform (Resize 256 + CenterCrop 224) scaled to `size`: resize = round(size * 256 / 224),
 * crop = size. At size 224 exactly Resize(256) + CenterCrop(224). */
int pgn_image_load_square(const char *path, int size, float **out, char *err, size_t errlen);

#endif
