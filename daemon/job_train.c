/* Job type "train": Deep Image Prior generators fitted to one image with a PGN, with the VGG
 * perceptual loss and with MSE, side by side from one initialisation (pgn/train). */
#include <string.h>

#include "daemon/jobtypes.h"
#include "nn/weights.h"
#include "pgn/pgn_net.h"
#include "pgn/train.h"

static const param_spec params[] = {
    {"image", P_FILE, NULL, 0, 0, NULL, NULL, "Target photograph (PNG or JPEG), as the daemon sees the path"},
    {"size", P_INT, "128", 64, 1024, NULL, "px",
     "Crop side: the shorter side is resized to size*256/224 and a centre crop taken, as the paper's Resize 256 + CenterCrop 224; a multiple of 32"},
    {"steps", P_INT, "3000", 1, 1000000, NULL, "steps", "Optimisation steps per arm (the paper: 3000)"},
    {"arms", P_CHOICES, "[\"vgg\", \"mse\"]", 0, 0, "vgg|mse|pgn", NULL,
     "Losses to train with, each its own generator from the same initialisation (pgn needs pgn_checkpoint)"},
    {"pgn_checkpoint", P_FILE, "\"\"", 0, 0, NULL, NULL,
     "PGN for the pgn arm: a pgnd checkpoint or the authors' released .pth (ResNet-N or UNet)"},
    {"stop_divergence", P_NUMBER, "0", 0, 1000, NULL, "x",
     "Stability mode: stop an arm once its perceptual loss reaches this many times its first value (the paper: 2; 0: off)"},
    {"stop_plateau", P_INT, "0", 0, 10000000, NULL, "steps",
     "Stability mode: stop an arm whose perceptual loss has not improved for this many steps (the paper: 2000; 0: off)"},
    {"lambda_mse", P_NUMBER, "0", 0, 1000, NULL, NULL, "pgn arm: add lambda * MSE to its gradient (the paper: 0 for DIP)"},
    {"lr", P_NUMBER, "0.01", 1e-6, 1.0, NULL, NULL, "Adam learning rate (the paper: 0.01)"},
    {"seed", P_INT, "0", 0, 2147483647, NULL, NULL, "Seed of the generators' initialisation and input noise"},
    {"log_every", P_INT, "50", 1, 1000000, NULL, "steps", "Metrics every this many steps"},
    {"image_every", P_INT, "500", 1, 1000000, NULL, "steps", "Generated images every this many steps"},
    {"checkpoint_every", P_INT, "100", 1, 1000000, NULL, "steps", "Checkpoints every this many steps"},
    {"teacher_weights", P_PATH, "\"\"", 0, 0, NULL, NULL,
     "Teacher weights for this job: VGG-19 (.pth or .safetensors) or an InceptionV3 tfjs model directory (nsfwjs 4.4.0 inception_v3; see make teacher). Default: the daemon's teacher_weights; none: random VGG-19, not a perceptual loss"},
};

static void check(json_t *p, json_t *problems, const pgnd_config *cfg)
{
    json_int_t size = json_integer_value(json_object_get(p, "size"));
    if (size % 32)
        job_problem(problems, "size", "must be a multiple of 32 (the generator halves it five times), got %lld",
                    (long long)size);
    int pgn = 0;
    size_t i;
    json_t *a;
    json_array_foreach(json_object_get(p, "arms"), i, a) pgn |= !strcmp(json_string_value(a), "pgn");
    const char *ck = json_string_value(json_object_get(p, "pgn_checkpoint"));
    if (pgn && (!ck || !*ck)) {
        job_problem(problems, "pgn_checkpoint", "is required by the pgn arm");
    } else if (pgn) {
        /* Refused now rather than when the job starts: a file that holds no PGN backbone. */
        nn_weights w;
        nn_err e;
        if (pgn_checkpoint_read(&w, ck, &e))
            job_problem(problems, "pgn_checkpoint", "%s", e.msg);
        else {
            if (!nn_weights_find(&w, "model.0.weight") && !nn_weights_find(&w, "layer0.0.weight"))
                job_problem(problems, "pgn_checkpoint", "%s holds neither a PGN ResNet nor a PGN UNet", ck);
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
    const char *ck = json_string_value(json_object_get(j, "pgn_checkpoint"));
    snprintf(p.pgn_checkpoint, sizeof p.pgn_checkpoint, "%s", ck ? ck : "");
    p.lambda_mse = json_number_value(json_object_get(j, "lambda_mse"));
    p.stop_divergence = json_number_value(json_object_get(j, "stop_divergence"));
    p.stop_plateau = (int)json_integer_value(json_object_get(j, "stop_plateau"));
    size_t i;
    json_t *a;
    json_array_foreach(json_object_get(j, "arms"), i, a) for (int k = 0; k < PGN_ARMS; k++) if (
        !strcmp(json_string_value(a), pgn_arm_name(k))) p.arms[k] = 1;
    json_decref(j);
    return pgn_train_run(&p, io, err, errlen);
}

const job_type job_type_train = {"train", "Train generators (Deep Image Prior) with a PGN, VGG and MSE side by side", params,
                                 sizeof params / sizeof *params, check, run};
