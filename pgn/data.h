/* An image-folder dataset for fitting PGNs (method.md §4.1).
 *
 * pgn_data_open lists every *.png, *.jpg and *.jpeg (extension case-insensitive) under a folder,
 * recursively, following symbolic links but visiting each directory once (so a link loop is
 * skipped), and sorts the paths with strcmp, so the file order never depends on the file system.
 * A missing folder ("FOLDER: cannot open: REASON") and a folder with no such file ("FOLDER: no PNG
 * or JPEG images found") are errors before any decoding.
 *
 * Validation split: the file indices are shuffled (Fisher-Yates) by an RNG seeded from `seed`, and
 * the first round(n * val_fraction) of that order are held out (at least 1 when val_fraction > 0
 * and n >= 2; never all of them: at least one training file is kept). Both lists are kept in
 * sorted-path order. Same folder + fraction + seed -> the same split on every run.
 *
 * Training batches (torchvision's RandomResizedCrop(size) + RandomHorizontalFlip + ToTensor +
 * Normalize(ImageNet)): each image is drawn with replacement from the training files by the
 * dataset's RNG (seeded by `seed`, continuing from batch to batch), decoded, cropped by
 * RandomResizedCrop's parameters (scale U(0.08, 1) of the area, aspect ratio exp(U(log 3/4,
 * log 4/3)), w = round(sqrt(area * ratio)), h = round(sqrt(area / ratio)) with Python's round, up
 * to 10 attempts, then torchvision's central-crop fallback), the crop resized bilinearly to
 * size x size (pgn_image_resize: align_corners=False, no antialiasing), flipped left-right with
 * probability 0.5, and normalised with ImageNet mean/std. Same seed -> the same batches.
 *
 * Bad files (unreadable, truncated, not an image whatever the name says, or smaller than
 * PGN_DATA_MIN_SIDE on a side) are skipped: each is counted once in n_skipped, its message kept
 * in last_error, a warning printed to stderr (unless quiet), and it is never decoded again; the
 * draw is retried. When every training file is known bad, or PGN_DATA_MAX_CONSECUTIVE_FAILURES
 * draws fail in a row, the batch is an error.
 *
 * Validation images: Resize(round(size * 256 / 224)) (shorter side, bilinear, no antialias) +
 * CenterCrop(size), normalised -- the same pixels as pgn_image_load_square, then normalised.
 *
 * Decoded images are kept in a cache (pgn/image_cache.h; PGN_DATA_CACHE_MB_DEFAULT, or
 * pgn_data_set_cache_mb), so a file is decoded once while it stays there; the pixels, and so the
 * batches, are the same with or without it.
 *
 * Functions return 0, or -1 with a message in err (errlen bytes). Not thread-safe per dataset. */
#ifndef PGN_DATA_H
#define PGN_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "nn/rng.h"
#include "pgn/image_cache.h"

#define PGN_DATA_MIN_SIDE 8
#define PGN_DATA_MAX_CONSECUTIVE_FAILURES 100
#define PGN_DATA_MAX_DEPTH 64
#define PGN_DATA_CACHE_MB_DEFAULT 512

typedef struct pgn_data {
    char folder[1024];
    char **files;          /* every image path found, sorted (n_files) */
    int n_files;
    int *train, n_train;   /* indices into files, ascending */
    int *val, n_val;       /* indices into files, ascending; disjoint from train */
    unsigned char *bad;    /* per file: 1 once it failed to decode (never retried) */
    int n_bad_train;       /* how many training files are marked bad */
    nn_rng rng;            /* the training sampler's RNG */
    uint64_t seed;
    long n_skipped;        /* distinct files skipped as bad */
    char last_error[1024]; /* the last skipped file's message ("" when none) */
    int quiet;             /* 1: no warnings on stderr */
    pgn_image_cache cache; /* decoded images (hits / misses counted there) */
} pgn_data;

/* Lists the folder and splits it. val_fraction in [0, 1). On failure *d is left closed (safe to
 * pgn_data_close). */
int pgn_data_open(pgn_data *d, const char *folder, double val_fraction, uint64_t seed, char *err, size_t errlen);
void pgn_data_close(pgn_data *d);
/* The decoded-image cache's budget in MiB (0: decode at every draw); empties the cache. Returns 0,
 * or -1 on a bad value or out of memory. */
int pgn_data_set_cache_mb(pgn_data *d, double mb);
/* One line on the cache: "image cache: 19 images (41.3 MiB of 512), 1200 reads, 19 decoded, 0 evicted". */
const char *pgn_data_cache_describe(const pgn_data *d, char *buf, size_t len);

/* A training batch: out [batch, 3, size, size] NCHW, ImageNet-normalised. */
int pgn_data_train_batch(pgn_data *d, float *out, int batch, int size, char *err, size_t errlen);

/* The one training-sample transform on an already decoded [3, h, w] image in [0, 1] (the RNG is
 * advanced exactly as in a batch): out [3, size, size], normalised. Exposed for tests. */
void pgn_data_random_resized_crop(nn_rng *rng, const float *img, int h, int w, float *out, int size);
/* torchvision's RandomResizedCrop.get_params (scale 0.08-1, ratio 3/4-4/3): crop top/left/h/w. */
void pgn_data_rrc_params(nn_rng *rng, int h, int w, int *top, int *left, int *ch, int *cw);

/* Validation image i (0 <= i < n_val): out [3, size, size], normalised. Returns 0, 1 when the file
 * is bad (skipped: counted, out untouched, err holds the reason), or -1 on bad arguments / out of
 * memory. */
int pgn_data_val_image(pgn_data *d, int i, int size, float *out, char *err, size_t errlen);
/* Path of validation image i / training image i. */
const char *pgn_data_val_path(const pgn_data *d, int i);
const char *pgn_data_train_path(const pgn_data *d, int i);

#endif
