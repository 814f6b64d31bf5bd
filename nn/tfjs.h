/* TensorFlow.js layers models as weights: a directory holding model.json (or the model.min.js /
 * model.js wrapper npm packages ship) and its weight shards (binary, or base64 inside .min.js / .js
 * wrappers). Weights are float32 under their tfjs names in the file's layout; uint8/uint16
 * quantised ones are dequantised as tfjs does (min + scale * q). The model topology is kept as the
 * meta entry NN_TFJS_TOPOLOGY_KEY (compact JSON text), the files' checksum as NN_TFJS_SHA256_KEY. */
#ifndef NN_TFJS_H
#define NN_TFJS_H

#include <stddef.h>

#include "nn/weights.h"

#define NN_TFJS_TOPOLOGY_KEY "tfjs.modelTopology"
/* SHA-256 of the files as stored, in reading order: the manifest, then the shards in manifest order
 * (for nsfwjs: cat model.min.js group1-shard1of6.min.js ... group1-shard6of6.min.js | sha256sum). */
#define NN_TFJS_SHA256_KEY "tfjs.sha256"

/* Is path a tfjs layers model (a directory with model.json / model.min.js / model.js, or such a
 * file)? Fills its directory and manifest file. Returns 1 or 0. */
int nn_tfjs_locate(const char *path, char *dir, size_t dirlen, char *manifest, size_t manlen);
/* Reads the model; `want` (may be NULL) picks the tensors to materialise, the others are listed. */
int nn_tfjs_read(nn_weights *w, const char *path, nn_weights_filter want, void *arg, nn_err *e);

#endif
