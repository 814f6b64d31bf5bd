/* Job type "collect": a reusable collection of teacher gradients (pgn/collect, pgn/shards), written
 * as shards and a manifest into the job's folder. The paper's generator settings as defaults
 * except the crop size (64 on a CPU) and the batch (6). */
#include <string.h>

#include "daemon/jobtypes.h"
#include "nn/weights.h"
#include "pgn/collect.h"
#include "pgn/teacher.h"

static const param_spec params[] = {
    {"data", P_DIR, "\"\"", 0, 0, NULL, NULL,
     "Folder of training photographs (PNG/JPEG, searched recursively), as the daemon sees the path (default: the daemon's images folder)"},
    {"samples", P_INT, "1024", 1, 1000000000, NULL, "samples", "Samples (y_hat, y, g_true, loss) to collect"},
    {"samples_per_shard", P_INT, "256", 1, 65536, NULL, "samples", "Samples per shard file"},
    {"size", P_INT, "64", 8, 1024, NULL, "px", "Crop side (the paper: 224); a multiple of 8"},
    {"batch", P_INT, "6", 1, 384, NULL, "images",
     "Images per step, split evenly over the generators (the paper: 48 per GPU)"},
    {"generators", P_CHOICES, "[\"ae0\", \"ae1\", \"ae2\"]", 0, 0, "ae0|ae1|ae2", NULL,
     "Autoencoders that generate y_hat (method.md §3.4, max_layer 0/1/2), equal shares of each batch"},
    {"generator_precision", P_CHOICE, "\"bf16\"", 0, 0, "bf16|f32", NULL,
     "Arithmetic of the generators' dense convolutions: bf16 (mixed precision, about a third faster; taken where the CPU has bf16 kernels, else f32) or f32 (as PyTorch). The teacher's gradients are always f32"},
    {"pgn", P_FILE, "\"\"", 0, 0, NULL, NULL,
     "PGN checkpoint whose predicted gradient trains the generators (default: the teacher's true gradient)"},
    {"ae_lr", P_NUMBER, "0.001", 1e-7, 1.0, NULL, NULL, "Autoencoders' Adam learning rate (the paper: 1e-3)"},
    {"clip_factor", P_NUMBER, "5", 1e-3, 1e6, NULL, "x", "Clip gradients at this many times their running average"},
    {"clip_init", P_NUMBER, "200", 1e-9, 1e12, NULL, NULL, "Initial running average of the gradient norm"},
    {"clip_ema_weight", P_NUMBER, "0.01", 1e-6, 1, NULL, NULL, "Update weight of the running average"},
    {"ae_plateau_samples", P_NUMBER, "300000", 0, 1e12, NULL, "samples",
     "An autoencoder whose L1 has not improved for this many samples is reset with probability ae_reset_prob per step"},
    {"ae_reset_prob", P_NUMBER, "0.01", 0, 1, NULL, NULL, "Per-step reset probability of a stale autoencoder"},
    {"ae_reset_l1", P_NUMBER, "1000", 0, 1e12, NULL, NULL, "An autoencoder whose L1 exceeds this is reset"},
    {"image_cache_mb", P_INT, "512", 0, 1048576, NULL, "MiB",
     "Decoded training photographs kept in memory, so each is decoded once (8-bit images as bytes); 0: decode at every draw"},
    {"seed", P_INT, "0", 0, 2147483647, NULL, NULL, "Seed of the generators, the data order and the resets"},
    {"teacher_weights", P_PATH, "\"\"", 0, 0, NULL, NULL,
     "Teacher weights for this job: VGG-19 (.pth or .safetensors) or an InceptionV3 tfjs model directory (nsfwjs 4.4.0 inception_v3; see make teacher). Default: the daemon's teacher_weights; none: random VGG-19, not a perceptual loss"},
};

static unsigned generator_mask(json_t *list)
{
    unsigned m = 0;
    size_t i;
    json_t *g;
    json_array_foreach(list, i, g)
    {
        const char *s = json_string_value(g);
        if (s && !strncmp(s, "ae", 2) && s[2] >= '0' && s[2] <= '2' && !s[3])
            m |= 1u << (s[2] - '0');
    }
    return m;
}

static void check(json_t *p, json_t *problems, const pgnd_config *cfg)
{
    json_int_t size = json_integer_value(json_object_get(p, "size"));
    json_int_t batch = json_integer_value(json_object_get(p, "batch"));
    unsigned m = generator_mask(json_object_get(p, "generators"));
    int k = (m & 1) + (m >> 1 & 1) + (m >> 2 & 1);
    const char *data = json_string_value(json_object_get(p, "data"));
    if (!data || !*data) {
        if (cfg && cfg->images[0]) /* the daemon's default photographs */
            json_object_set_new(p, "data", json_string(cfg->images));
        else
            job_problem(problems, "data", "is required (a folder of photographs; or set the daemon's images)");
    }
    if (size % 8)
        job_problem(problems, "size", "must be a multiple of 8 (the autoencoders halve it three times), got %lld",
                    (long long)size);
    const char *tw = json_string_value(json_object_get(p, "teacher_weights"));
    if (!tw || !*tw)
        tw = cfg ? cfg->teacher_weights : "";
    if (size < INC3_MIN_SIZE && !strcmp(pgn_teacher_kind_of_path(tw), "inception3"))
        job_problem(problems, "size", "must be at least %d with the inception3 teacher (its mixed2 needs a %dx%d input), got %lld",
                    INC3_MIN_SIZE, INC3_MIN_SIZE, INC3_MIN_SIZE, (long long)size);
    if (k && batch % k)
        job_problem(problems, "batch", "must be a multiple of %d (one equal share per generator), got %lld", k,
                    (long long)batch);
    const char *pgn = json_string_value(json_object_get(p, "pgn"));
    if (pgn && *pgn) { /* refused now rather than when the job starts */
        nn_weights w;
        nn_err e;
        if (nn_weights_read(&w, pgn, &e)) {
            job_problem(problems, "pgn", "%s", e.msg);
        } else {
            if (!nn_weights_find(&w, "model.0.weight") && !nn_weights_find(&w, "layer0.0.weight"))
                job_problem(problems, "pgn", "%s holds neither a PGN ResNet nor a PGN UNet", pgn);
            nn_weights_free(&w);
        }
    }
}

static int run(const char *params_json, const pgn_job_io *io, char *err, size_t errlen)
{
    json_t *j = json_loads(params_json, 0, NULL);
    if (!j) {
        snprintf(err, errlen, "stored parameters are not JSON");
        return PGN_FAILED;
    }
    pgn_collect_params p;
    pgn_collect_params_default(&p);
#define STR(dst, key)                                                                                                  \
    snprintf(dst, sizeof dst, "%s",                                                                                    \
             json_string_value(json_object_get(j, key)) ? json_string_value(json_object_get(j, key)) : "")
#define NUM(key) json_number_value(json_object_get(j, key))
#define INT(key) json_integer_value(json_object_get(j, key))
    STR(p.data, "data");
    STR(p.pgn, "pgn");
    STR(p.teacher_weights, "teacher_weights");
    STR(p.generator_precision, "generator_precision");
    if (!p.generator_precision[0]) /* a job stored before the parameter existed: its shards are f32 */
        snprintf(p.generator_precision, sizeof p.generator_precision, "f32");
    p.samples = INT("samples");
    p.samples_per_shard = (int)INT("samples_per_shard");
    p.size = (int)INT("size");
    p.batch = (int)INT("batch");
    p.generators = generator_mask(json_object_get(j, "generators"));
    p.ae_lr = NUM("ae_lr");
    p.clip_factor = NUM("clip_factor");
    p.clip_init = NUM("clip_init");
    p.clip_ema_weight = NUM("clip_ema_weight");
    p.ae_plateau_samples = NUM("ae_plateau_samples");
    p.ae_reset_prob = NUM("ae_reset_prob");
    p.ae_reset_l1 = NUM("ae_reset_l1");
    p.seed = (uint64_t)INT("seed");
    p.image_cache_mb = (double)INT("image_cache_mb");
#undef STR
#undef NUM
#undef INT
    json_decref(j);
    return pgn_collect_run(&p, io, err, errlen);
}

const job_type job_type_collect = {"collect",
                                   "Collect teacher gradients into shards (generators on real trajectories + the perceptual teacher)",
                                   params, sizeof params / sizeof *params, check, run};
