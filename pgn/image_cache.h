/* Decoded training images kept in memory, so a fit or a collect decodes each file once instead of
 * at every draw (a 1-2 megapixel JPEG takes 10-40 ms to decode on this machine kind, as long as a
 * third of a teacher step at 64x64).
 *
 * Images are [3, h, w] planes in [0, 1] as pgn_image_load gives them. One whose every value is an
 * exact k / 255 (any 8-bit PNG or JPEG) is stored as bytes, a quarter of the floats, and read back
 * bit-identical; others (16-bit PNGs) are stored as floats. Entries are evicted least recently used
 * first once the byte budget is reached; an image larger than the whole budget is not kept. A
 * budget of 0 keeps nothing. Slots are the caller's file indices. Not thread-safe. */
#ifndef PGN_IMAGE_CACHE_H
#define PGN_IMAGE_CACHE_H

#include <stddef.h>
#include <stdint.h>

typedef struct pgn_image_cache_entry {
    void *data;     /* uint8_t or float planes; NULL: not cached */
    int h, w;
    int bytes_per;  /* 1 (k / 255 bytes) or 4 (floats) */
    uint64_t used;  /* last use, for LRU */
} pgn_image_cache_entry;

typedef struct pgn_image_cache {
    pgn_image_cache_entry *e;
    int n;
    size_t budget, bytes;
    uint64_t clock;
    long hits, misses, evictions;
} pgn_image_cache;

/* n slots, budget bytes. Returns 0, -1 on out of memory. */
int pgn_image_cache_init(pgn_image_cache *c, int n, size_t budget);
void pgn_image_cache_free(pgn_image_cache *c);
/* The cached entry of slot i (and counts a hit), or NULL (and counts a miss). */
const pgn_image_cache_entry *pgn_image_cache_get(pgn_image_cache *c, int i);
/* Keeps a copy of img [3, h, w] for slot i when it fits the budget (evicting as needed). */
void pgn_image_cache_put(pgn_image_cache *c, int i, const float *img, int h, int w);
/* Rows top .. top + ch - 1, columns left .. left + cw - 1 of every channel of an entry, as floats:
 * out [3, ch, cw]. */
void pgn_image_cache_crop(const pgn_image_cache_entry *en, int top, int left, int ch, int cw, float *out);
/* That crop resized to oh x ow as pgn_image_resize does (bit-identical), without copying it. */
void pgn_image_cache_crop_resize(const pgn_image_cache_entry *en, int top, int left, int ch, int cw, float *out,
                                 int oh, int ow);
/* The whole entry as floats: out [3, h, w]. */
void pgn_image_cache_read(const pgn_image_cache_entry *en, float *out);

#endif
