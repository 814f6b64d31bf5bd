/* A collection of teacher gradients on disk (spec/method.md §2.2-2.3, §4.1; issue 5): what `collect`
 * writes and a fit from shards reads.
 *
 * A collection is a folder holding
 *   shard-%06d.safetensors   F32 tensors y_hat [n,3,S,S], y [n,3,S,S], g_true [n,3,S,S] (dP/dy_hat,
 *                            normalised space) and loss [n] (the teacher's P per sample), with the
 *                            collection's identity as metadata (pgn_collection_info) plus "shard"
 *                            (its index) and "count"; written atomically (tmp, fsync, rename);
 *   manifest.json            the collection's parameters and every COMPLETE shard with its count
 *                            and the sha256 of its file; written atomically after each shard.
 * A shard file the manifest does not list is an interrupted write: readers ignore it, and a
 * resumed collect overwrites it.
 *
 * Reading (pgn_shards_open / pgn_shards_next_batch): the manifest is checked against what the fit
 * expects (teacher, its weights' sha256, input space, crop size) and refused naming the mismatch.
 * Shards are streamed one at a time (one shard resident, read into one buffer whose sha256 is
 * checked against the manifest every time it is loaded, so the bytes used are the bytes checked).
 * A shard failing its checksum, or whose tensors do not fit the manifest, is reported through the
 * skip callback with its file name and reason, counted, and never used.
 * Order: each epoch visits the shards in a permutation drawn from (seed, epoch), and the samples of
 * a shard in a permutation drawn from (seed, epoch, shard index): no RNG state to carry, so the
 * reading position (pgn_shards_pos, four integers) is all a checkpoint needs to resume exactly.
 * Batches run across shard and epoch boundaries. */
#ifndef PGN_SHARDS_H
#define PGN_SHARDS_H

#include <stddef.h>
#include <stdint.h>

#include "nn/err.h"

#ifndef PGND_VERSION
#define PGND_VERSION "0.1.0"
#endif

#define PGN_SHARD_FORMAT "pgnd shard v1"
#define PGN_MANIFEST_FORMAT "pgnd collection v1"
#define PGN_MANIFEST_NAME "manifest.json"
#define PGN_SPACE_NAME_NORMALISED "normalised"

/* What made the collection: in the manifest and in every shard's metadata. */
typedef struct pgn_collection_info {
    char teacher[512];          /* pgn_teacher_describe of the teacher */
    char teacher_name[16];      /* "vgg19" */
    char teacher_sha256[65];    /* of its weights file; "" = the random teacher */
    uint64_t teacher_seed;      /* the random teacher's seed (its identity when teacher_sha256 is "") */
    char space[16];             /* input space of y_hat, y and g_true: "normalised" */
    int size;                   /* crop side S */
    uint64_t seed;              /* the collect's seed */
    int samples_per_shard;
    int64_t samples_wanted;     /* the collect's target size */
    char generators[32];        /* autoencoders that generated y_hat, e.g. "ae0,ae1,ae2" */
    char generator_precision[8]; /* their convolutions' arithmetic: "bf16" or "f32" (a manifest
                                  * without the field was written before it existed: "f32") */
    int batch;                  /* the collect's step batch */
    char driver[600];           /* what trained the generators: "teacher" or "pgn FILE (sha256 ...)" */
    char version[32];           /* pgnd version that wrote it */
} pgn_collection_info;

/* One complete shard as the manifest lists it. */
typedef struct pgn_shard_entry {
    char file[40];      /* "shard-000000.safetensors" */
    int count;          /* samples */
    char sha256[65];    /* of the whole file */
} pgn_shard_entry;

/* ---- writing (the collect job) ---- */

/* File name of shard `index`: "shard-%06d.safetensors". */
void pgn_shard_name(char *buf, size_t len, int index);
/* Writes shard `index` of n samples into folder (atomically) and fills *out (name, count, sha256 of
 * the written file). loss: n per-sample values. */
int pgn_shard_write(const char *folder, const pgn_collection_info *info, int index, int n, const float *y_hat,
                    const float *y, const float *g_true, const float *loss, pgn_shard_entry *out, nn_err *e);
/* Its first half: the shard complete (and *out filled) under a temporary name next to it, written
 * into tmp (tmp_len bytes; strlen(folder) + 40 suffice), not synced. pgn_shard_commit(tmp, path)
 * then puts it in place (path: folder/out->file). */
int pgn_shard_write_unsynced(const char *folder, const pgn_collection_info *info, int index, int n,
                             const float *y_hat, const float *y, const float *g_true, const float *loss,
                             pgn_shard_entry *out, char *tmp, size_t tmp_len, nn_err *e);
/* The second half (the collect's sync thread runs it, for its checkpoints too): nn_safetensors_commit
 * (fsync, rename into place, fsync of the folder), then the file's pages dropped from the page cache
 * (POSIX_FADV_DONTNEED), so that they serve the next shard. */
int pgn_shard_commit(const char *tmp, const char *path, nn_err *e);
/* Writes folder/manifest.json atomically (tmp, fsync, rename, fsync of the folder). complete: 1 once
 * the collect has written every sample it wanted. */
int pgn_manifest_write(const char *folder, const pgn_collection_info *info, const pgn_shard_entry *shards, int n,
                       int complete, nn_err *e);
/* Reads folder/manifest.json: *shards is malloc'ed (free it), *n entries. complete may be NULL.
 * Errors name the file and the field. */
int pgn_manifest_read(const char *folder, pgn_collection_info *info, pgn_shard_entry **shards, int *n,
                      int *complete, nn_err *e);
/* Writes len bytes to path atomically (tmp file next to it, fsync, rename, fsync of the folder). */
int pgn_write_file_atomic(const char *path, const void *data, size_t len, nn_err *e);

/* ---- reading (a fit from shards) ---- */

/* What the reader must find. NULL strings and size 0 are not checked. */
typedef struct pgn_collection_expect {
    const char *teacher;        /* the fit's pgn_teacher_describe (used in messages only) */
    const char *teacher_name;   /* "vgg19" */
    const char *teacher_sha256; /* "" = the random teacher */
    uint64_t teacher_seed;      /* checked when teacher_sha256 is "" */
    const char *space;          /* "normalised" */
    int size;
} pgn_collection_expect;

struct pgn_teacher;
/* What a fit with teacher t (normalised space, crops of size) expects; desc (len bytes, e.g. 512)
 * holds the teacher's description and must outlive x. */
void pgn_collection_expect_teacher(pgn_collection_expect *x, const struct pgn_teacher *t, int size, char *desc,
                                   size_t len);

/* 0, or -1 naming the first mismatch, e.g. "collection /x was made with teacher 'vgg19, weights
 * vgg19-dcbb9e9d.pth (sha256 dcbb9e9d...)', this fit uses 'vgg19, random teacher: ... (seed 0)'".
 * folder is only used in the message. */
int pgn_collection_check(const char *folder, const pgn_collection_info *have, const pgn_collection_expect *want,
                         nn_err *e);

/* The reading position: where the next sample comes from. Set it back (pgn_shards_set_pos) to
 * resume a fit exactly; write it as text with pgn_shards_pos_format ("epoch slot row served"). */
typedef struct pgn_shards_pos {
    int64_t epoch;   /* epochs completed */
    int64_t slot;    /* index into this epoch's shard order */
    int64_t row;     /* index into the current shard's sample order */
    int64_t served;  /* samples returned so far */
} pgn_shards_pos;

/* Where one returned sample came from (pgn_shards_next_batch_ex). */
typedef struct pgn_shard_sample {
    int shard;  /* manifest index */
    int row;    /* row in the shard file */
} pgn_shard_sample;

/* Called once per shard found bad: its file name (not the path) and why. */
typedef void (*pgn_shards_skip_fn)(void *ctx, const char *file, const char *why);

typedef struct pgn_shards pgn_shards;

/* Opens folder's collection: reads and checks the manifest (want may be NULL), no shard is read
 * yet. seed: of the shuffling (a fit uses its own). on_skip may be NULL. */
int pgn_shards_open(pgn_shards **out, const char *folder, const pgn_collection_expect *want, uint64_t seed,
                    pgn_shards_skip_fn on_skip, void *skip_ctx, nn_err *e);
void pgn_shards_close(pgn_shards *r);

/* The next `batch` samples into y_hat, y, g_true (each [batch, 3, S, S]; any may be NULL). Fails
 * when no shard is usable ("every shard of /x is unusable (N skipped)"). */
int pgn_shards_next_batch(pgn_shards *r, int batch, float *y_hat, float *y, float *g_true, nn_err *e);
/* The same, with each sample's teacher loss (loss[batch]) and origin (from[batch]); any may be NULL. */
int pgn_shards_next_batch_ex(pgn_shards *r, int batch, float *y_hat, float *y, float *g_true, float *loss,
                             pgn_shard_sample *from, nn_err *e);

const pgn_collection_info *pgn_shards_info(const pgn_shards *r);
int pgn_shards_count(const pgn_shards *r);          /* shards in the manifest */
int64_t pgn_shards_samples(const pgn_shards *r);    /* samples in the manifest's shards */
long pgn_shards_skipped(const pgn_shards *r);       /* shards found bad so far */
int pgn_shards_is_bad(const pgn_shards *r, int i);  /* shard i found bad */
const pgn_shard_entry *pgn_shards_entry(const pgn_shards *r, int i);

pgn_shards_pos pgn_shards_get_pos(const pgn_shards *r);
/* Continues from pos (the next batch starts there). Refuses a position outside the collection. */
int pgn_shards_set_pos(pgn_shards *r, const pgn_shards_pos *pos, nn_err *e);
/* "epoch slot row served" and back (0, or -1 when malformed). */
void pgn_shards_pos_format(const pgn_shards_pos *pos, char *buf, size_t len);
int pgn_shards_pos_parse(const char *s, pgn_shards_pos *pos);

#endif
