/* Job type "train": Deep Image Prior generators fitted to one image with the VGG perceptual loss and
 * with MSE, side by side from one initialisation (pgn/train). The PGN arm joins with the PGN issue. */
#include <string.h>

#include "daemon/jobtypes.h"
#include "pgn/train.h"

static const param_spec params[] = {
    {"image", P_FILE, NULL, 0, 0, NULL, NULL, "Target photograph (PNG or JPEG), as the daemon sees the path"},
    {"size", P_INT, "128", 64, 1024, NULL, "px",
     "Crop side: the shorter side is resized to size*256/224 and a centre crop taken, as the paper's Resize 256 + CenterCrop 224; a multiple of 32"},
    {"steps", P_INT, "3000", 1, 1000000, NULL, "steps", "Optimisation steps per arm (the paper: 3000)"},
    {"arms", P_CHOICES, "[\"vgg\", \"mse\"]", 0, 0, "vgg|mse", NULL,
     "Losses to train with, each its own generator from the same initialisation"},
    {"lr", P_NUMBER, "0.01", 1e-6, 1.0, NULL, NULL, "Adam learning rate (the paper: 0.01)"},
    {"seed", P_INT, "0", 0, 2147483647, NULL, NULL, "Seed of the generators' initialisation and input noise"},
    {"log_every", P_INT, "50", 1, 1000000, NULL, "steps", "Metrics every this many steps"},
    {"image_every", P_INT, "500", 1, 1000000, NULL, "steps", "Generated images every this many steps"},
    {"checkpoint_every", P_INT, "100", 1, 1000000, NULL, "steps", "Checkpoints every this many steps"},
    {"teacher_weights", P_FILE, "\"\"", 0, 0, NULL, NULL,
     "VGG-19 weights for this job (default: the daemon's teacher_weights; none: random teacher)"},
};

static void check(json_t *p, json_t *problems, const pgnd_config *cfg)
{
    json_int_t size = json_integer_value(json_object_get(p, "size"));
    if (size % 32)
        job_problem(problems, "size", "must be a multiple of 32 (the generator halves it five times), got %lld",
                    (long long)size);
}

static int run(const char *params_json, const pgn_job_io *io, char *err, size_t errlen)
{
    json_t *j = json_loads(params_json, 0, NULL);
    if (!j) {
        snprintf(err, errlen, "stored parameters are not JSON");
        return PGN_FAILED;
    }
    pgn_train_params p;
    memset(&p, 0, sizeof p);
    snprintf(p.image, sizeof p.image, "%s", json_string_value(json_object_get(j, "image")));
    snprintf(p.teacher_weights, sizeof p.teacher_weights, "%s",
             json_string_value(json_object_get(j, "teacher_weights")) ? json_string_value(json_object_get(j, "teacher_weights")) : "");
    p.size = (int)json_integer_value(json_object_get(j, "size"));
    p.steps = (int)json_integer_value(json_object_get(j, "steps"));
    p.lr = json_number_value(json_object_get(j, "lr"));
    p.seed = (uint64_t)json_integer_value(json_object_get(j, "seed"));
    p.log_every = (int)json_integer_value(json_object_get(j, "log_every"));
    p.image_every = (int)json_integer_value(json_object_get(j, "image_every"));
    p.checkpoint_every = (int)json_integer_value(json_object_get(j, "checkpoint_every"));
    size_t i;
    json_t *a;
    json_array_foreach(json_object_get(j, "arms"), i, a) for (int k = 0; k < PGN_ARMS; k++) if (
        !strcmp(json_string_value(a), pgn_arm_name(k))) p.arms[k] = 1;
    json_decref(j);
    return pgn_train_run(&p, io, err, errlen);
}

const job_type job_type_train = {"train", "Train generators (Deep Image Prior) with VGG and MSE side by side", params,
                                 sizeof params / sizeof *params, check, run};
