/* Decoded-image cache: see image_cache.h. */
#include <stdlib.h>
#include <string.h>

#include "pgn/image.h"
#include "pgn/image_cache.h"

int pgn_image_cache_init(pgn_image_cache *c, int n, size_t budget)
{
    memset(c, 0, sizeof *c);
    c->e = calloc(n > 0 ? (size_t)n : 1, sizeof *c->e);
    if (!c->e)
        return -1;
    c->n = n;
    c->budget = budget;
    return 0;
}

static size_t entry_bytes(const pgn_image_cache_entry *en)
{
    return (size_t)3 * en->h * en->w * en->bytes_per;
}

static void drop(pgn_image_cache *c, int i)
{
    pgn_image_cache_entry *en = &c->e[i];
    if (!en->data)
        return;
    c->bytes -= entry_bytes(en);
    free(en->data);
    en->data = NULL;
}

void pgn_image_cache_free(pgn_image_cache *c)
{
    if (c->e)
        for (int i = 0; i < c->n; i++)
            drop(c, i);
    free(c->e);
    memset(c, 0, sizeof *c);
}

const pgn_image_cache_entry *pgn_image_cache_get(pgn_image_cache *c, int i)
{
    if (i < 0 || i >= c->n || !c->e[i].data) {
        c->misses++;
        return NULL;
    }
    c->hits++;
    c->e[i].used = ++c->clock;
    return &c->e[i];
}

void pgn_image_cache_put(pgn_image_cache *c, int i, const float *img, int h, int w)
{
    if (i < 0 || i >= c->n || c->e[i].data)
        return;
    size_t count = (size_t)3 * h * w;
    /* bytes when every value is exactly k / 255 (the decoder's 8-bit values), floats otherwise */
    int bytes_per = 1;
    for (size_t k = 0; k < count && bytes_per == 1; k++) {
        float v = img[k];
        if (!(v >= 0.0f && v <= 1.0f) || (float)(int)(v * 255.0f + 0.5f) / 255.0f != v)
            bytes_per = 4;
    }
    size_t need = count * (size_t)bytes_per;
    if (need > c->budget)
        return;
    while (c->bytes + need > c->budget) { /* least recently used first */
        int victim = -1;
        for (int k = 0; k < c->n; k++)
            if (c->e[k].data && (victim < 0 || c->e[k].used < c->e[victim].used))
                victim = k;
        if (victim < 0)
            return;
        drop(c, victim);
        c->evictions++;
    }
    void *data = malloc(need);
    if (!data)
        return; /* a cache that cannot grow is only slower */
    if (bytes_per == 1) {
        uint8_t *b = data;
        for (size_t k = 0; k < count; k++)
            b[k] = (uint8_t)(int)(img[k] * 255.0f + 0.5f);
    } else {
        memcpy(data, img, need);
    }
    pgn_image_cache_entry *en = &c->e[i];
    en->data = data;
    en->h = h;
    en->w = w;
    en->bytes_per = bytes_per;
    en->used = ++c->clock;
    c->bytes += need;
}

void pgn_image_cache_crop(const pgn_image_cache_entry *en, int top, int left, int ch, int cw, float *out)
{
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < ch; y++) {
            size_t at = ((size_t)c * en->h + top + y) * en->w + left;
            float *o = out + ((size_t)c * ch + y) * cw;
            if (en->bytes_per == 1) {
                const uint8_t *b = (const uint8_t *)en->data + at;
                for (int x = 0; x < cw; x++)
                    o[x] = b[x] / 255.0f; /* as the decoders compute it */
            } else {
                memcpy(o, (const float *)en->data + at, (size_t)cw * sizeof(float));
            }
        }
}

void pgn_image_cache_read(const pgn_image_cache_entry *en, float *out)
{
    pgn_image_cache_crop(en, 0, 0, en->h, en->w, out);
}

/* pgn_image_resize's arithmetic (its pgn_resize_coord and pgn_bilerp), reading the crop straight from
 * the entry: byte values become the decoder's floats (b / 255.0f) before the same products, so the
 * output is bit-identical to cropping into floats and resizing those. */
void pgn_image_cache_crop_resize(const pgn_image_cache_entry *en, int top, int left, int ch, int cw, float *out,
                                 int oh, int ow)
{
    const float sh = (float)ch / (float)oh, sw = (float)cw / (float)ow;
    const uint8_t *b = en->data;
    const float *f = en->data;
#define AT(c, y, x) (((size_t)(c) * en->h + top + (y)) * en->w + left + (x))
#define PX(c, y, x) (en->bytes_per == 1 ? b[AT(c, y, x)] / 255.0f : f[AT(c, y, x)])
    for (int i = 0; i < oh; i++) {
        int y0, y1;
        float ly0, ly1;
        pgn_resize_coord(i, sh, ch, &y0, &y1, &ly0, &ly1);
        for (int j = 0; j < ow; j++) {
            int x0, x1;
            float lx0, lx1;
            pgn_resize_coord(j, sw, cw, &x0, &x1, &lx0, &lx1);
            for (int c = 0; c < 3; c++)
                out[((size_t)c * oh + i) * ow + j] =
                    pgn_bilerp(PX(c, y0, x0), PX(c, y0, x1), PX(c, y1, x0), PX(c, y1, x1), lx0, lx1, ly0, ly1);
        }
    }
#undef PX
#undef AT
}
