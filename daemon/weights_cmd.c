#include "daemon/weights_cmd.h"

#include <string.h>

#include "nn/sha256.h"
#include "nn/weights.h"
#include "nn/tfjs.h"
#include "pgn/teacher.h"

static size_t dtype_bytes(nn_dtype t) { return nn_dtype_size(t); }

int weights_inspect(FILE *out, FILE *err, const char *path)
{
    nn_weights w;
    nn_err e;
    if (nn_weights_read(&w, path, &e)) {
        fprintf(err, "pgnd weights inspect: %s\n", e.msg);
        return 1;
    }
    char file_hex[65] = "";
    const nn_weight_meta *tfjs_sha = nn_weights_meta(&w, NN_TFJS_SHA256_KEY);
    if (tfjs_sha) /* a tfjs model is a directory: the checksum of its files, as the teacher records it */
        snprintf(file_hex, sizeof file_hex, "%s", tfjs_sha->str);
    else if (nn_sha256_file(path, file_hex))
        snprintf(file_hex, sizeof file_hex, "(unreadable)");
    fprintf(out, "file    %s\nsha256  %s\ntensors %d\n\n", path, file_hex, w.count);
    fprintf(out, "%-28s %-5s %-22s %12s  %s\n", "name", "dtype", "shape", "elements", "sha256 (first 16)");
    size_t total = 0;
    for (int i = 0; i < w.count; i++) {
        const nn_weight_entry *t = &w.entries[i];
        char shape[128], hex[65];
        nn_sha256 s;
        nn_sha256_init(&s);
        nn_sha256_update(&s, t->data, t->numel * dtype_bytes(t->dtype));
        nn_sha256_final_hex(&s, hex);
        nn_shape_str(shape, sizeof shape, t->ndim, t->shape);
        fprintf(out, "%-28s %-5s %-22s %12zu  %.16s\n", t->name, nn_dtype_name(t->dtype), shape, t->numel, hex);
        total += t->numel;
    }
    fprintf(out, "\n%zu elements in all\n", total);
    for (int i = 0; i < w.meta_count; i++)
        if (!strcmp(w.meta[i].key, NN_TFJS_TOPOLOGY_KEY)) /* the whole Keras model config: too long to print */
            fprintf(out, "meta    %s = (%zu bytes of JSON)\n", w.meta[i].key, strlen(w.meta[i].str));
        else
            fprintf(out, "meta    %s = %s\n", w.meta[i].key, w.meta[i].str);
    char report[16384];
    int problems = pgn_teacher_check_weights(&w, report, sizeof report);
    int tfjs = nn_weights_meta(&w, NN_TFJS_TOPOLOGY_KEY) != NULL;
    const char *what = tfjs ? "inception3" : "VGG-19";
    if (problems == 0)
        fprintf(out, "usable as the %s teacher: yes (%s)\n", what,
                tfjs ? "conv2d_1 .. conv2d_26 with their batch norms, up to mixed2"
                     : "26 tensors of features.0 .. features.28 used");
    else
        fprintf(out, "usable as the %s teacher: no, %d problem%s:\n%s", what, problems, problems == 1 ? "" : "s", report);
    nn_weights_free(&w);
    return problems ? 3 : 0;
}
