/* Job type "fit": online fitting of a perceptual gradient network (pgn/fit), the paper's values as
 * defaults except the crop size (64 on a CPU) and the batch (6). */
#include <string.h>

#include "daemon/jobtypes.h"
#include "nn/weights.h"
#include "pgn/pgn_net.h"
#include "pgn/fit.h"

static const param_spec params[] = {
    {"data", P_DIR, "\"\"", 0, 0, NULL, NULL,
     "Folder of training photographs (PNG/JPEG, searched recursively), as the daemon sees the path (or give collection; default: the daemon's images folder)"},
    {"collection", P_DIR, "\"\"", 0, 0, NULL, NULL,
     "Fit from a collect job's folder of teacher gradients instead of online autoencoders (the PGN alone steps; "
     "the teacher still runs for the proxy's perceptual term unless w_proxy_perceptual is 0)"},
    {"val_data", P_DIR, "\"\"", 0, 0, NULL, NULL,
     "Folder of held-out photographs for validation (default: hold out val_fraction of data's files)"},
    {"arch", P_CHOICE, "\"unet\"", 0, 0, "unet|resnet4|resnet6|resnet8", NULL, "PGN backbone (method.md §3.1-3.2)"},
    {"steps", P_INT, "2000", 1, 100000000, NULL, "steps", "Training steps"},
    {"size", P_INT, "64", 32, 1024, NULL, "px",
     "Crop side (the paper: 224); a multiple of 32 for the UNet, of 8 for the ResNets"},
    {"batch", P_INT, "6", 3, 384, NULL, "images",
     "Images per step, split evenly over the three autoencoders (the paper: 48 per GPU)"},
    {"lr", P_NUMBER, "0.001", 1e-7, 1.0, NULL, NULL, "PGN Adam learning rate (the paper: 1e-3)"},
    {"ae_lr", P_NUMBER, "0.001", 1e-7, 1.0, NULL, NULL, "Autoencoders' Adam learning rate (the paper: 1e-3)"},
    {"w_grad", P_NUMBER, "67108864", 0, 1e12, NULL, NULL, "Weight of MSE(g_pred, g_true) (the paper: 2^26)"},
    {"w_proxy_perceptual", P_NUMBER, "0.2", 0, 1e6, NULL, NULL, "Weight of P(proxy, target) (the paper: 0.2)"},
    {"w_proxy_l1", P_NUMBER, "0.5", 0, 1e6, NULL, NULL, "Weight of L1(proxy, target) (the paper: 0.5)"},
    {"grad_scale", P_NUMBER, "0", 0, 1e3, NULL, NULL,
     "Proxy grad scale s (0: the arch default, 0.048 UNet, 0.025 ResNet; or the init checkpoint's)"},
    {"head", P_CHOICE, "\"proxy\"", 0, 0, "proxy|direct", NULL,
     "proxy: sigmoid proxy target (the paper); direct: the output is the gradient (the no-proxy ablation)"},
    {"fast_teacher", P_BOOL, "true", 0, 0, NULL, NULL,
     "Run the teacher's 3x3 convolutions as Winograd (VGG-19 at batch 6, 64x64: about 25% faster; ~1e-6 relative rounding, a few near-zero ReLU decisions differ from direct convolution)"},
    {"clip_factor", P_NUMBER, "5", 1e-3, 1e6, NULL, "x", "Clip gradients at this many times their running average"},
    {"clip_init", P_NUMBER, "200", 1e-9, 1e12, NULL, NULL, "Initial running average of the gradient norm"},
    {"clip_ema_weight", P_NUMBER, "0.01", 1e-6, 1, NULL, NULL, "Update weight of the running average"},
    {"ae_plateau_samples", P_NUMBER, "300000", 0, 1e12, NULL, "samples",
     "An autoencoder whose L1 has not improved for this many samples is reset with probability ae_reset_prob per step"},
    {"ae_reset_prob", P_NUMBER, "0.01", 0, 1, NULL, NULL, "Per-step reset probability of a stale autoencoder"},
    {"ae_reset_l1", P_NUMBER, "1000", 0, 1e12, NULL, NULL, "An autoencoder whose L1 exceeds this is reset"},
    {"init", P_FILE, "\"\"", 0, 0, NULL, NULL,
     "Start from this PGN checkpoint (pgnd's or the authors' .pth) instead of a fresh initialisation"},
    {"image_cache_mb", P_INT, "512", 0, 1048576, NULL, "MiB",
     "Decoded training photographs kept in memory, so each is decoded once (8-bit images as bytes); 0: decode at every draw"},
    {"val_fraction", P_NUMBER, "0.2", 0, 0.9, NULL, NULL, "Fraction of the image files held out for validation"},
    {"val_max", P_INT, "8", 1, 1024, NULL, "images", "Held-out images used per validation"},
    {"val_every", P_INT, "100", 0, 10000000, NULL, "steps", "Validate every this many steps (0: never)"},
    {"log_every", P_INT, "10", 1, 10000000, NULL, "steps", "Metrics (means over the window) every this many steps"},
    {"image_every", P_INT, "500", 0, 10000000, NULL, "steps", "Gradient-field panels every this many steps (0: never)"},
    {"checkpoint_every", P_INT, "100", 1, 10000000, NULL, "steps", "Checkpoints every this many steps"},
    {"seed", P_INT, "0", 0, 2147483647, NULL, NULL, "Seed of the initialisation, the data order and the split"},
    {"teacher_weights", P_PATH, "\"\"", 0, 0, NULL, NULL,
     "Teacher weights for this job: VGG-19 (.pth or .safetensors) or an InceptionV3 tfjs model directory (nsfwjs 4.4.0 inception_v3; see make teacher). Default: the daemon's teacher_weights; none: random VGG-19, not a perceptual loss"},
};

static void check(json_t *p, json_t *problems, const pgnd_config *cfg)
{
    const char *arch = json_string_value(json_object_get(p, "arch"));
    json_int_t size = json_integer_value(json_object_get(p, "size"));
    json_int_t batch = json_integer_value(json_object_get(p, "batch"));
    int unet = arch && !strcmp(arch, "unet");
    if (size % (unet ? 32 : 8))
        job_problem(problems, "size", "must be a multiple of %d for %s (and the autoencoders), got %lld", unet ? 32 : 8,
                    arch ? arch : "?", (long long)size);
    if (batch % 3)
        job_problem(problems, "batch", "must be a multiple of 3 (one share per autoencoder), got %lld", (long long)batch);
    const char *data = json_string_value(json_object_get(p, "data"));
    const char *coll = json_string_value(json_object_get(p, "collection"));
    if ((!data || !*data) && (!coll || !*coll)) {
        if (cfg && cfg->images[0]) /* the daemon's default photographs (`images`, e.g. make run's samples) */
            json_object_set_new(p, "data", json_string(cfg->images));
        else
            job_problem(problems, "data", "is required (a folder of photographs), unless a collection is given");
    }
    const char *init = json_string_value(json_object_get(p, "init"));
    if (init && *init) {
        nn_weights w;
        nn_err e;
        if (pgn_checkpoint_read(&w, init, &e)) {
            job_problem(problems, "init", "%s", e.msg);
        } else {
            int has_unet = nn_weights_find(&w, "layer0.0.weight") != NULL;
            int has_resnet = nn_weights_find(&w, "model.0.weight") != NULL;
            if (!has_unet && !has_resnet)
                job_problem(problems, "init", "%s holds neither a PGN ResNet nor a PGN UNet", init);
            else if (arch && has_unet != unet)
                job_problem(problems, "init", "%s holds a PGN %s, but arch is %s", init, has_unet ? "UNet" : "ResNet",
                            arch);
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
    pgn_fit_params p;
    pgn_fit_params_default(&p);
#define STR(dst, key)                                                                                                  \
    snprintf(dst, sizeof dst, "%s",                                                                                    \
             json_string_value(json_object_get(j, key)) ? json_string_value(json_object_get(j, key)) : "")
#define NUM(key) json_number_value(json_object_get(j, key))
#define INT(key) json_integer_value(json_object_get(j, key))
    STR(p.data, "data");
    STR(p.arch, "arch");
    STR(p.val_data, "val_data");
    STR(p.collection, "collection");
    STR(p.init, "init");
    STR(p.teacher_weights, "teacher_weights");
    p.steps = INT("steps");
    p.size = (int)INT("size");
    p.batch = (int)INT("batch");
    p.lr = NUM("lr");
    p.ae_lr = NUM("ae_lr");
    p.w_grad = NUM("w_grad");
    p.w_proxy_perceptual = NUM("w_proxy_perceptual");
    p.w_proxy_l1 = NUM("w_proxy_l1");
    p.grad_scale = NUM("grad_scale");
    const char *head = json_string_value(json_object_get(j, "head"));
    p.direct = head && !strcmp(head, "direct");
    p.fast_teacher = json_is_true(json_object_get(j, "fast_teacher"));
    p.clip_factor = NUM("clip_factor");
    p.clip_init = NUM("clip_init");
    p.clip_ema_weight = NUM("clip_ema_weight");
    p.ae_plateau_samples = NUM("ae_plateau_samples");
    p.ae_reset_prob = NUM("ae_reset_prob");
    p.ae_reset_l1 = NUM("ae_reset_l1");
    p.val_fraction = NUM("val_fraction");
    p.val_max = (int)INT("val_max");
    p.val_every = (int)INT("val_every");
    p.log_every = (int)INT("log_every");
    p.image_every = (int)INT("image_every");
    p.checkpoint_every = (int)INT("checkpoint_every");
    p.seed = (uint64_t)INT("seed");
    p.image_cache_mb = (double)INT("image_cache_mb");
#undef STR
#undef NUM
#undef INT
    json_decref(j);
    return pgn_fit_run(&p, io, err, errlen);
}

const job_type job_type_fit = {"fit", "Fit a perceptual gradient network online (autoencoders + the perceptual teacher)",
                               params, sizeof params / sizeof *params, check, run};
