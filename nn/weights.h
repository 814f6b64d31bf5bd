/* Named tensors read from (or written to) a weights file.
 * Readers: safetensors (F32/F64/F16/BF16/I64/I32/... ), torch .pth in the zip layout (PyTorch >= 1.6)
 * and in the legacy layout (magic number + pickles + raw storages; torchvision's vgg19-dcbb9e9d.pth
 * and the paper's released checkpoints). Writer: safetensors, F32 only, with string metadata.
 * Every error names the file and, where it applies, the tensor and both shapes. */
#ifndef NN_WEIGHTS_H
#define NN_WEIGHTS_H

#include <stddef.h>
#include <stdint.h>

#include "nn/err.h"
#include "nn/tensor.h"

typedef enum nn_dtype {
    NN_F32, NN_F64, NN_F16, NN_BF16, NN_I64, NN_I32, NN_I16, NN_I8, NN_U8, NN_BOOL
} nn_dtype;

typedef struct nn_weight_entry {
    char *name;
    nn_dtype dtype;
    int ndim;
    int64_t shape[NN_MAX_DIMS];
    size_t numel;
    void *data; /* numel elements of dtype, C order, little-endian, owned by the nn_weights */
} nn_weight_entry;

/* A non-tensor value found in a checkpoint dict (e.g. "grad_scale": 0.048, "backbone_type": "unet"),
 * or a safetensors __metadata__ entry (always a string). Nested dicts are flattened with '.' keys
 * ("backbone_to_grad_params.sigmoid.scale"). */
typedef struct nn_weight_meta {
    char *key;
    char *str;      /* value rendered as text: strings as-is, ints "%lld", floats "%.17g", bools true/false */
    int is_number;  /* 1 for int/float values (num holds it) */
    double num;
} nn_weight_meta;

/* Which tensors to load; the others are listed (name, dtype, shape) with data NULL. */
typedef int (*nn_weights_filter)(const char *name, void *arg);

typedef struct nn_weights {
    char *path;
    nn_weights_filter want; /* NULL: load every tensor */
    void *want_arg;
    nn_weight_entry *entries;
    int count;
    nn_weight_meta *meta;
    int meta_count;
} nn_weights;

/* Detects the format from the first bytes (safetensors / zip / legacy pickle) and reads the file.
 * For torch files, tensors are collected from the top-level dict; when it holds a dict under
 * "state_dict" (a checkpoint), that dict's tensors are used and the other scalar/str entries
 * become meta. Non-contiguous or offset tensors are materialised into C order. */
int nn_weights_read(nn_weights *w, const char *path, nn_err *e);
/* The same, materialising only the tensors `want` accepts (e.g. the teacher needs 80 MB of
 * torchvision's 548 MB file). The file is mapped, not copied, while it is parsed. */
int nn_weights_read_filtered(nn_weights *w, const char *path, nn_weights_filter want, void *arg, nn_err *e);
void nn_weights_free(nn_weights *w);

const nn_weight_entry *nn_weights_find(const nn_weights *w, const char *name);
const nn_weight_meta *nn_weights_meta(const nn_weights *w, const char *key);

/* Keeps only the tensors whose names start with prefix, with the prefix removed (e.g. the "pgn/"
 * part of a training checkpoint); frees the others. Returns how many were kept. */
int nn_weights_select_prefix(nn_weights *w, const char *prefix);

/* Copies tensor `name` into `dst` (already allocated with the expected shape), converting any
 * floating or integer dtype to float32. Errors: "FILE: tensor 'NAME' not found",
 * "FILE: tensor 'NAME' has shape [a, b] but the model expects [c, d]". */
int nn_weights_get_f32(const nn_weights *w, const char *name, nn_tensor *dst, nn_err *e);

/* Writes a safetensors file atomically (tmp file, fsync, rename, fsync dir).
 * names[i] <-> tensors[i], all F32. meta_keys/meta_vals (meta_count pairs) go to __metadata__. */
int nn_safetensors_write(const char *path, int count, const char *const *names, const nn_tensor *const *tensors,
                         int meta_count, const char *const *meta_keys, const char *const *meta_vals, nn_err *e);
/* The same, and the file's SHA-256 (lowercase hex) into sha256_hex (may be NULL), taken from the
 * bytes in memory while they are written, on a second OpenMP thread when one is allowed (no
 * reading back: a 256-sample 64x64 shard 92-125 -> 43-72 ms on two cores). */
int nn_safetensors_write_hashed(const char *path, int count, const char *const *names, const nn_tensor *const *tensors,
                                int meta_count, const char *const *meta_keys, const char *const *meta_vals,
                                char sha256_hex[65], nn_err *e);
/* The first half of that: the file complete under a temporary name next to path (its name into tmp,
 * tmp_len bytes; strlen(path) + 12 suffice), not synced; path itself is not touched yet. Then
 * nn_safetensors_commit(tmp, path) syncs it, renames it into place and syncs the folder: the part
 * that waits for the disk, which another thread may do while this one goes on. */
int nn_safetensors_write_unsynced(const char *path, int count, const char *const *names,
                                  const nn_tensor *const *tensors, int meta_count, const char *const *meta_keys,
                                  const char *const *meta_vals, char sha256_hex[65], char *tmp, size_t tmp_len,
                                  nn_err *e);
int nn_safetensors_commit(const char *tmp, const char *path, nn_err *e);

/* Safetensors spelling: "F32", "I64", ... */
const char *nn_dtype_name(nn_dtype t);
/* Bytes per element. */
size_t nn_dtype_size(nn_dtype t);

/* ---- For the format readers (weights.c, safetensors.c, torch_pth.c). Each reader parses a whole
 * file held in memory; its messages leave out the path, which nn_weights_read puts in front. ---- */

int nn_safetensors_parse(nn_weights *w, const uint8_t *buf, size_t len, nn_err *e);
int nn_torch_zip_parse(nn_weights *w, const uint8_t *buf, size_t len, nn_err *e);
int nn_torch_legacy_parse(nn_weights *w, const uint8_t *buf, size_t len, nn_err *e);

/* Appends a tensor with room for its data (uninitialised). Returns it, or NULL with e filled. */
nn_weight_entry *nn_weights_add(nn_weights *w, const char *name, nn_dtype dtype, int ndim, const int64_t *shape,
                                nn_err *e);
int nn_weights_add_meta(nn_weights *w, const char *key, const char *str, int is_number, double num, nn_err *e);

#endif
