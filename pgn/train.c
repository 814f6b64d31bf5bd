#include "pgn/train.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "nn/adam.h"
#include "nn/memstat.h"
#include "nn/weights.h"
#include "pgn/dip.h"
#include "pgn/image.h"
#include "pgn/pgn_net.h"
#include "pgn/quality.h"
#include "pgn/viz.h"
#include "pgn/teacher.h"

static const char *const arm_names[PGN_ARMS] = {"vgg", "mse", "pgn"};

const char *pgn_arm_name(int arm) { return arm_names[arm]; }

typedef struct arm {
    int on;
    pgn_dip net;
    nn_adam opt;
    float *y, *grad; /* output in [0,1] space and dL/dy */
    double step_ms, loss;
    /* engine memory (nn/memstat) the arm's first step in this process added: its generator's and
     * its loss's buffers, which later steps reuse (the teacher's forward buffers for the target are
     * made at set-up and shared); < 0 until measured */
    double mem_added_mb;
    /* stability mode */
    int stopped, stop_reason;
    int64_t stop_step, best_step;
    double p_init, p_best; /* p_init < 0: not seen yet */
} arm;

typedef struct run {
    const pgn_train_params *p;
    const pgn_job_io *io;
    nn_ctx ctx;
    pgn_teacher teacher;
    int teacher_open;
    arm arms[PGN_ARMS];
    pgn_net net;     /* the pgn arm's PGN */
    int net_open;
    float *target, *target_n, *noise, *yn, *p_buf, *g_pred, *g_true;
    int s;         /* image side */
    size_t count;  /* 3*s*s */
    int64_t step;  /* steps done */
} run;

static int pgn_quality(run *r, arm *am, double out[6], nn_err *e);

/* An arm reports at this step: it runs, or it stopped at this very step (its last values). */
static int reports(const run *r, int a) { return r->arms[a].on && (!r->arms[a].stopped || r->arms[a].stop_step == r->step); }

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static double peak_rss_mb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss / 1024.0;
}

/* MSE in normalised space and its gradient w.r.t. the [0,1] image (chain rule through 1/std). */
static double mse_loss_grad(run *r, const float *y, float *grad)
{
    size_t plane = (size_t)r->s * r->s;
    double sum = 0;
    pgn_to_normalised(r->yn, y, 1, r->s, r->s, PGN_SPACE_UNIT);
    for (size_t i = 0; i < r->count; i++) {
        double d = (double)r->yn[i] - r->target_n[i];
        sum += d * d;
        if (grad)
            grad[i] = (float)(2.0 * d / (double)r->count / pgn_imagenet_std[i / plane]);
    }
    return sum / (double)r->count;
}

static int checkpoint_path(run *r, int64_t step, char *buf, size_t len)
{
    return snprintf(buf, len, "%s/checkpoint-%08lld.safetensors", r->io->dir, (long long)step) >= (int)len ? -1 : 0;
}

/* Every arm's parameters, BN running statistics and Adam moments, by name. */
typedef struct ck_list {
    int n;
    char (*names)[96];
    const nn_tensor **t;
} ck_list;

static int ck_collect(run *r, ck_list *l)
{
    int cap = PGN_ARMS * (3 * PGN_DIP_PARAM_TENSORS + 2 * PGN_DIP_BNS);
    l->names = calloc((size_t)cap, sizeof *l->names);
    l->t = calloc((size_t)cap, sizeof *l->t);
    l->n = 0;
    if (!l->names || !l->t)
        return -1;
    for (int a = 0; a < PGN_ARMS; a++) {
        arm *am = &r->arms[a];
        if (!am->on)
            continue;
        int np;
        const nn_param *ps = pgn_dip_params(&am->net, &np);
        for (int i = 0; i < np; i++) {
            snprintf(l->names[l->n], 96, "%s/param.%d", arm_names[a], i);
            l->t[l->n++] = ps[i].value;
            snprintf(l->names[l->n], 96, "%s/adam_m.%d", arm_names[a], i);
            l->t[l->n++] = &am->opt.m[i];
            snprintf(l->names[l->n], 96, "%s/adam_v.%d", arm_names[a], i);
            l->t[l->n++] = &am->opt.v[i];
        }
        for (int k = 0; k < PGN_DIP_CONVS + PGN_DIP_BNS; k++) {
            nn_batchnorm2d *bn = am->net.mod[k].bn;
            if (!bn)
                continue;
            snprintf(l->names[l->n], 96, "%s/%s.running_mean", arm_names[a], am->net.mod[k].prefix);
            l->t[l->n++] = &bn->running_mean;
            snprintf(l->names[l->n], 96, "%s/%s.running_var", arm_names[a], am->net.mod[k].prefix);
            l->t[l->n++] = &bn->running_var;
        }
    }
    return 0;
}

static void ck_free(ck_list *l)
{
    free(l->names);
    free(l->t);
}

static int write_checkpoint(run *r, char *err, size_t errlen)
{
    char path[1200], step_s[32], seed_s[32], adam_s[32], arms_s[64] = "";
    if (checkpoint_path(r, r->step, path, sizeof path)) {
        snprintf(err, errlen, "job directory path too long");
        return -1;
    }
    ck_list l;
    if (ck_collect(r, &l)) {
        ck_free(&l);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    const char **names = malloc((size_t)l.n * sizeof *names);
    for (int i = 0; i < l.n; i++)
        names[i] = l.names[i];
    snprintf(step_s, sizeof step_s, "%lld", (long long)r->step);
    snprintf(seed_s, sizeof seed_s, "%llu", (unsigned long long)r->p->seed);
    long adam_steps = 0;
    for (int a = 0; a < PGN_ARMS; a++)
        if (r->arms[a].on) {
            adam_steps = r->arms[a].opt.step;
            if (arms_s[0])
                strcat(arms_s, ",");
            strcat(arms_s, arm_names[a]);
        }
    snprintf(adam_s, sizeof adam_s, "%ld", adam_steps);
    /* the teacher (the vgg arm's loss and every perceptual metric): a resume with another is refused */
    char tdesc[256];
    pgn_teacher_describe(&r->teacher, tdesc, sizeof tdesc);
    const char *mk[9 + PGN_ARMS] = {"format", "step", "seed", "adam_steps", "arms", "generator",
                                    "teacher", "teacher_sha256", "teacher_description"};
    const char *mv[9 + PGN_ARMS] = {"pgnd train checkpoint v1", step_s, seed_s, adam_s, arms_s, "dip-skip",
                                    r->teacher.name, r->teacher.random ? "random" : r->teacher.weights_sha256, tdesc};
    char stab_k[PGN_ARMS][32], stab_v[PGN_ARMS][160];
    int nm = 9;
    for (int a = 0; a < PGN_ARMS; a++) /* stability state: stopped reason stop_step p_init p_best best_step */
        if (r->arms[a].on) {
            arm *am = &r->arms[a];
            snprintf(stab_k[a], sizeof stab_k[a], "stability.%s", arm_names[a]);
            snprintf(stab_v[a], sizeof stab_v[a], "%d %d %lld %.17g %.17g %lld", am->stopped, am->stop_reason,
                     (long long)am->stop_step, am->p_init, am->p_best, (long long)am->best_step);
            mk[nm] = stab_k[a];
            mv[nm++] = stab_v[a];
        }
    nn_err e;
    int rc = nn_safetensors_write(path, l.n, names, l.t, nm, mk, mv, &e);
    free(names);
    ck_free(&l);
    if (rc) {
        snprintf(err, errlen, "writing the checkpoint: %s", e.msg);
        return -1;
    }
    return r->io->checkpoint(r->io->ctx, path, r->step);
}

static int load_checkpoint(run *r, char *err, size_t errlen)
{
    nn_weights w;
    nn_err e;
    if (nn_weights_read(&w, r->io->resume_checkpoint, &e)) {
        snprintf(err, errlen, "cannot resume: %s", e.msg);
        return -1;
    }
    const nn_weight_meta *st = nn_weights_meta(&w, "step"), *as = nn_weights_meta(&w, "adam_steps");
    const nn_weight_meta *fm = nn_weights_meta(&w, "format");
    int rc = 0;
    if (!st || !as || !fm || strcmp(fm->str, "pgnd train checkpoint v1")) {
        snprintf(err, errlen, "cannot resume: %s is not a pgnd train checkpoint", r->io->resume_checkpoint);
        rc = -1;
    }
    const nn_weight_meta *tn = nn_weights_meta(&w, "teacher"), *ts = nn_weights_meta(&w, "teacher_sha256");
    const char *want_sha = r->teacher.random ? "random" : r->teacher.weights_sha256;
    if (!rc && tn && (strcmp(tn->str, r->teacher.name) || !ts || strcmp(ts->str, want_sha))) {
        const nn_weight_meta *td = nn_weights_meta(&w, "teacher_description");
        char desc[256];
        snprintf(err, errlen, "cannot resume: %s was made with the teacher %s; this job has %s",
                 r->io->resume_checkpoint, td ? td->str : tn->str, pgn_teacher_describe(&r->teacher, desc, sizeof desc));
        rc = -1;
    } else if (!rc && !tn)
        r->io->log(r->io->ctx, "warn", "resuming from a checkpoint that does not record its teacher (made before pgnd "
                                       "recorded it): the teacher cannot be checked");
    ck_list l;
    if (!rc && ck_collect(r, &l))
        rc = -1;
    for (int i = 0; !rc && i < l.n; i++)
        if (nn_weights_get_f32(&w, l.names[i], (nn_tensor *)l.t[i], &e)) {
            snprintf(err, errlen, "cannot resume: %s", e.msg);
            rc = -1;
        }
    for (int a = 0; !rc && a < PGN_ARMS; a++) {
        char k[32];
        snprintf(k, sizeof k, "stability.%s", arm_names[a]);
        const nn_weight_meta *m = nn_weights_meta(&w, k);
        arm *am = &r->arms[a];
        long long ss, bs;
        if (am->on && m && sscanf(m->str, "%d %d %lld %lf %lf %lld", &am->stopped, &am->stop_reason, &ss, &am->p_init,
                                  &am->p_best, &bs) == 6)
            am->stop_step = ss, am->best_step = bs;
    }
    if (!rc) {
        r->step = atoll(st->str);
        for (int a = 0; a < PGN_ARMS; a++)
            if (r->arms[a].on) {
                r->arms[a].opt.step = atol(as->str);
                for (int k = 0; k < PGN_DIP_CONVS; k++)
                    if (r->arms[a].net.mod[k].conv)
                        r->arms[a].net.mod[k].conv->weights_stale = 1;
            }
        ck_free(&l);
    }
    nn_weights_free(&w);
    return rc;
}

static int log_metrics(run *r, char *err, size_t errlen)
{
    const char *keys[PGN_ARMS * 16 + 16];
    double vals[PGN_ARMS * 16 + 16];
    char names[PGN_ARMS * 16 + 15][48];
    int n = 0;
    nn_err e;
    for (int a = 0; a < PGN_ARMS; a++) {
        arm *am = &r->arms[a];
        if (!reports(r, a))
            continue;
        double perceptual;
        if (pgn_teacher_loss_grad(&r->ctx, &r->teacher, am->y, 1, r->s, r->s, PGN_SPACE_UNIT, NULL, &perceptual, NULL,
                                  &e)) {
            snprintf(err, errlen, "perceptual metric: %s", e.msg);
            return -1;
        }
        pgn_to_normalised(r->yn, am->y, 1, r->s, r->s, PGN_SPACE_UNIT);
        double l1 = 0, l2 = 0;
        for (size_t i = 0; i < r->count; i++) {
            double d = (double)r->yn[i] - r->target_n[i];
            l1 += fabs(d), l2 += d * d;
        }
        struct {
            const char *k;
            double v;
        } m[] = {{"loss", am->loss},
                 {"l1", l1 / (double)r->count},
                 {"l2", l2 / (double)r->count},
                 {"psnr", pgn_psnr(am->y, r->target, r->count)},
                 {"ssim", pgn_ssim(am->y, r->target, 3, r->s, r->s)},
                 {"ssim_paper", pgn_ssim_paper(r->yn, r->target_n, 3, r->s, r->s)},
                 {"perceptual", perceptual},
                 {"step_ms", am->step_ms},
                 {"engine_added_mb", am->mem_added_mb}};
        for (size_t k = 0; k < sizeof m / sizeof *m; k++) {
            snprintf(names[n], sizeof names[n], "%s.%s", arm_names[a], m[k].k);
            keys[n] = names[n];
            vals[n++] = m[k].v;
        }
        if (a == PGN_ARM_PGN) {
            static const char *const q[6] = {"grad_cos", "grad_norm_ratio", "grad_rel_err",
                                             "mse_dir_cos", "mse_dir_norm_ratio", "mse_dir_rel_err"};
            double qv[6];
            if (pgn_quality(r, am, qv, &e)) {
                snprintf(err, errlen, "gradient quality: %s", e.msg);
                return -1;
            }
            for (int k = 0; k < 6; k++) {
                snprintf(names[n], sizeof names[n], "pgn.%s", q[k]);
                keys[n] = names[n];
                vals[n++] = qv[k];
            }
        }
    }
    /* Ratios as the paper reports them (§5.4): PGN/VGG, PGN/MSE, VGG/MSE of each quality figure. */
    static const char *const q[] = {"l1", "l2", "perceptual", "ssim", "psnr"};
    static const int pairs[3][2] = {{PGN_ARM_PGN, PGN_ARM_VGG}, {PGN_ARM_PGN, PGN_ARM_MSE}, {PGN_ARM_VGG, PGN_ARM_MSE}};
    int base = n;
    for (int k = 0; k < 3; k++) {
        int a = pairs[k][0], b = pairs[k][1];
        if (!reports(r, a) || !reports(r, b))
            continue;
        for (size_t i = 0; i < sizeof q / sizeof *q; i++) {
            double va = NAN, vb = NAN;
            for (int j = 0; j < base; j++) { /* the values logged above */
                char want[48];
                snprintf(want, sizeof want, "%s.%s", arm_names[a], q[i]);
                if (!strcmp(keys[j], want))
                    va = vals[j];
                snprintf(want, sizeof want, "%s.%s", arm_names[b], q[i]);
                if (!strcmp(keys[j], want))
                    vb = vals[j];
            }
            snprintf(names[n], sizeof names[n], "ratio.%s_%s.%s", arm_names[a], arm_names[b], q[i]);
            keys[n] = names[n];
            vals[n++] = vb != 0 ? va / vb : NAN;
        }
    }
    keys[n] = "peak_rss_mb";
    vals[n++] = peak_rss_mb();
    nn_memstat ms;
    nn_memstat_get(&ms);
    keys[n] = "engine_mb"; /* everything the engine holds now, all arms and the teacher */
    vals[n++] = ms.total / 1048576.0;
    keys[n] = "engine_peak_mb"; /* since the arms' first steps */
    vals[n++] = ms.total_peak / 1048576.0;
    return r->io->metrics(r->io->ctx, r->step, n, keys, vals);
}

/* The pgn arm's gradient-field panels at its current image (§7). */
static int save_fields(run *r, char *err, size_t errlen)
{
    arm *am = &r->arms[PGN_ARM_PGN];
    nn_err e;
    float *p_true = malloc(r->count * sizeof(float));
    if (!p_true) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    pgn_to_normalised(r->yn, am->y, 1, r->s, r->s, PGN_SPACE_UNIT);
    if (pgn_net_predict(&r->ctx, &r->net, r->yn, r->target_n, 1, r->s, r->s, r->p_buf, r->g_pred, &e) ||
        pgn_teacher_loss_grad(&r->ctx, &r->teacher, r->yn, 1, r->s, r->s, PGN_SPACE_NORMALISED, NULL, NULL, r->g_true,
                              &e)) {
        free(p_true);
        snprintf(err, errlen, "gradient fields: %s", e.msg);
        return -1;
    }
    float step = 0.5f * (float)r->count * r->net.head.grad_scale; /* N s / 2: the proxy a perfect PGN gives */
    for (size_t i = 0; i < r->count; i++)
        p_true[i] = r->yn[i] - step * r->g_true[i];
    pgn_fields f = {r->s, r->s, r->target_n, r->yn, r->g_true, r->g_pred, p_true, r->p_buf};
    char name[96], path[1200];
    snprintf(name, sizeof name, "fields-step%06lld.png", (long long)r->step);
    snprintf(path, sizeof path, "%s/%s", r->io->dir, name);
    int rc = pgn_viz_fields_png(path, &f, err, errlen);
    free(p_true);
    if (rc || r->io->artifact(r->io->ctx, name, path, "fields", r->step))
        return -1;
    return 0;
}

static int save_images(run *r, char *err, size_t errlen)
{
    if (reports(r, PGN_ARM_PGN) && save_fields(r, err, errlen))
        return -1;
    for (int a = 0; a < PGN_ARMS; a++) {
        if (!reports(r, a))
            continue;
        char name[96], path[1200];
        snprintf(name, sizeof name, "%s-step%06lld.png", arm_names[a], (long long)r->step);
        snprintf(path, sizeof path, "%s/%s", r->io->dir, name);
        if (pgn_image_save_png(path, r->arms[a].y, r->s, r->s, err, errlen) ||
            r->io->artifact(r->io->ctx, name, path, "image", r->step))
            return -1;
    }
    return 0;
}

static int setup(run *r, char *err, size_t errlen)
{
    const pgn_train_params *p = r->p;
    nn_err e;
    if (nn_ctx_init(&r->ctx, r->io->threads, &e)) {
        snprintf(err, errlen, "%s", e.msg);
        return -1;
    }
    r->s = p->size;
    r->count = (size_t)3 * r->s * r->s;
    if (pgn_image_load_square(p->image, r->s, &r->target, err, errlen))
        return -1;
    const char *weights = p->teacher_weights[0] ? p->teacher_weights : r->io->teacher_weights;
    if (pgn_teacher_open(&r->teacher, weights, 0, &e)) {
        snprintf(err, errlen, "%s", e.msg);
        return -1;
    }
    r->teacher_open = 1;
    char desc[1400], msg[1500];
    snprintf(msg, sizeof msg, "teacher: %s", pgn_teacher_describe(&r->teacher, desc, sizeof desc));
    r->io->log(r->io->ctx, r->teacher.random ? "warn" : "info", msg);
    if (pgn_teacher_set_target(&r->ctx, &r->teacher, r->target, 1, r->s, r->s, PGN_SPACE_UNIT, &e)) {
        snprintf(err, errlen, "%s", e.msg);
        return -1;
    }
    r->target_n = malloc(r->count * sizeof(float));
    r->yn = malloc(r->count * sizeof(float));
    r->noise = malloc(r->count * sizeof(float));
    if (!r->target_n || !r->yn || !r->noise) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    pgn_to_normalised(r->target_n, r->target, 1, r->s, r->s, PGN_SPACE_UNIT);
    if (p->arms[PGN_ARM_PGN]) {
        if (pgn_net_load(&r->net, p->pgn_checkpoint, &e)) {
            snprintf(err, errlen, "%s", e.msg);
            return -1;
        }
        r->net_open = 1;
        char msg[1400];
        snprintf(msg, sizeof msg, "pgn arm: %s from %s", r->net.desc, p->pgn_checkpoint);
        r->io->log(r->io->ctx, "info", msg);
        r->p_buf = malloc(r->count * sizeof(float));
        r->g_pred = malloc(r->count * sizeof(float));
        r->g_true = malloc(r->count * sizeof(float));
        if (!r->p_buf || !r->g_pred || !r->g_true) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
    }
    pgn_dip_noise(r->noise, r->count, p->seed);
    for (int a = 0; a < PGN_ARMS; a++) {
        arm *am = &r->arms[a];
        am->on = p->arms[a];
        am->p_init = -1;
        am->mem_added_mb = -1;
        if (!am->on)
            continue;
        /* Same seed for every arm: the arms start from identical weights (§5.1). */
        int np;
        if (pgn_dip_init(&am->net, p->seed, &e) || pgn_dip_set_input(&r->ctx, &am->net, r->noise, 1, r->s, r->s, &e)) {
            snprintf(err, errlen, "%s", e.msg);
            return -1;
        }
        const nn_param *ps = pgn_dip_params(&am->net, &np);
        if (nn_adam_init(&am->opt, ps, np, (float)p->lr, 0.9f, 0.999f, 1e-8f, 0.0f, &e)) {
            snprintf(err, errlen, "%s", e.msg);
            return -1;
        }
        am->y = malloc(r->count * sizeof(float));
        am->grad = malloc(r->count * sizeof(float));
        if (!am->y || !am->grad) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
    }
    return 0;
}

static void teardown(run *r)
{
    for (int a = 0; a < PGN_ARMS; a++) {
        if (!r->arms[a].on)
            continue;
        pgn_dip_free(&r->arms[a].net);
        nn_adam_free(&r->arms[a].opt);
        free(r->arms[a].y);
        free(r->arms[a].grad);
    }
    if (r->teacher_open)
        pgn_teacher_close(&r->teacher);
    if (r->net_open)
        pgn_net_free(&r->net);
    free(r->p_buf);
    free(r->g_pred);
    free(r->g_true);
    free(r->target);
    free(r->target_n);
    free(r->yn);
    free(r->noise);
    nn_ctx_free(&r->ctx);
}

/* The pgn arm's gradient w.r.t. the [0,1] image: the PGN's prediction in normalised space, taken
 * through 1/std, plus lambda * MSE's. Its "loss" is the proxy-target view, mean (y_hat - p)^2 / s. */
static int pgn_arm_grad(run *r, arm *am, nn_err *e)
{
    size_t plane = (size_t)r->s * r->s;
    pgn_to_normalised(r->yn, am->y, 1, r->s, r->s, PGN_SPACE_UNIT);
    if (pgn_net_predict(&r->ctx, &r->net, r->yn, r->target_n, 1, r->s, r->s, r->p_buf, r->g_pred, e))
        return -1;
    double proxy = 0;
    for (size_t i = 0; i < r->count; i++) {
        double d = (double)r->yn[i] - r->p_buf[i];
        proxy += d * d;
        am->grad[i] = r->g_pred[i] / pgn_imagenet_std[i / plane];
    }
    am->loss = proxy / (double)r->count / r->net.head.grad_scale;
    if (r->p->lambda_mse > 0) {
        float *mg = r->g_true; /* free until the metrics need it */
        am->loss += r->p->lambda_mse * mse_loss_grad(r, am->y, mg);
        for (size_t i = 0; i < r->count; i++)
            am->grad[i] += (float)r->p->lambda_mse * mg[i];
    }
    return 0;
}

/* How well a gradient field g matches the true one t: cosine, norm ratio, relative error. */
static void compare_fields(const float *g, const float *t, size_t n, double *cos, double *ratio, double *rel)
{
    double gt = 0, gg = 0, tt = 0, dd = 0;
    for (size_t i = 0; i < n; i++) {
        gt += (double)g[i] * t[i], gg += (double)g[i] * g[i], tt += (double)t[i] * t[i];
        dd += ((double)g[i] - t[i]) * ((double)g[i] - t[i]);
    }
    *cos = gg > 0 && tt > 0 ? gt / sqrt(gg * tt) : 0;
    *ratio = tt > 0 ? sqrt(gg / tt) : 0;
    *rel = tt > 0 ? sqrt(dd / tt) : 0;
}

/* The pgn arm's gradient quality at its current image, next to the MSE direction's. */
static int pgn_quality(run *r, arm *am, double out[6], nn_err *e)
{
    pgn_to_normalised(r->yn, am->y, 1, r->s, r->s, PGN_SPACE_UNIT);
    if (pgn_net_predict(&r->ctx, &r->net, r->yn, r->target_n, 1, r->s, r->s, NULL, r->g_pred, e) ||
        pgn_teacher_loss_grad(&r->ctx, &r->teacher, r->yn, 1, r->s, r->s, PGN_SPACE_NORMALISED, NULL, NULL,
                              r->g_true, e))
        return -1;
    compare_fields(r->g_pred, r->g_true, r->count, &out[0], &out[1], &out[2]);
    /* The trivial predictor, the MSE direction y_hat - y, at its best scale (least squares onto
     * the true field): its norm ratio and relative error are then comparable with the PGN's. */
    double dt = 0, dd = 0;
    for (size_t i = 0; i < r->count; i++) {
        r->g_pred[i] = r->yn[i] - r->target_n[i];
        dt += (double)r->g_pred[i] * r->g_true[i], dd += (double)r->g_pred[i] * r->g_pred[i];
    }
    float alpha = dd > 0 ? (float)(dt / dd) : 0.0f;
    for (size_t i = 0; i < r->count; i++)
        r->g_pred[i] *= alpha;
    compare_fields(r->g_pred, r->g_true, r->count, &out[3], &out[4], &out[5]);
    return 0;
}

/* One optimisation step of one arm. */
static int arm_step(run *r, int a, char *err, size_t errlen)
{
    arm *am = &r->arms[a];
    nn_err e;
    double t0 = now_ms();
    pgn_dip_zero_grad(&am->net);
    if (pgn_dip_forward(&r->ctx, &am->net, am->y, &e))
        goto fail;
    if (a == PGN_ARM_VGG) {
        if (pgn_teacher_loss_grad(&r->ctx, &r->teacher, am->y, 1, r->s, r->s, PGN_SPACE_UNIT, NULL, &am->loss,
                                  am->grad, &e))
            goto fail;
    } else if (a == PGN_ARM_MSE) {
        am->loss = mse_loss_grad(r, am->y, am->grad);
    } else if (pgn_arm_grad(r, am, &e)) {
        goto fail;
    }
    if (!isfinite(am->loss)) {
        snprintf(err, errlen, "arm %s diverged at step %lld (loss %g)", arm_names[a], (long long)r->step + 1, am->loss);
        return -1;
    }
    if (pgn_dip_backward(&r->ctx, &am->net, am->grad, &e))
        goto fail;
    nn_adam_step(&am->opt);
    am->step_ms = now_ms() - t0;
    return 0;
fail:
    snprintf(err, errlen, "arm %s, step %lld: %s", arm_names[a], (long long)r->step + 1, e.msg);
    return -1;
}

/* Stability mode: after step r->step, stops the arms that diverged or reached a plateau. Returns
 * the number of arms still running, or -1 on error. */
static int stability(run *r, char *err, size_t errlen)
{
    const pgn_train_params *p = r->p;
    int running = 0;
    for (int a = 0; a < PGN_ARMS; a++) {
        arm *am = &r->arms[a];
        if (!am->on || am->stopped)
            continue;
        if (p->stop_divergence <= 0 && p->stop_plateau <= 0) {
            running++;
            continue;
        }
        double pv = am->loss; /* the vgg arm's loss is P itself */
        if (a != PGN_ARM_VGG) {
            nn_err e;
            if (pgn_teacher_loss_grad(&r->ctx, &r->teacher, am->y, 1, r->s, r->s, PGN_SPACE_UNIT, NULL, &pv, NULL, &e)) {
                snprintf(err, errlen, "stability: %s", e.msg);
                return -1;
            }
        }
        if (am->p_init < 0)
            am->p_init = am->p_best = pv, am->best_step = r->step;
        if (pv < am->p_best)
            am->p_best = pv, am->best_step = r->step;
        if (p->stop_divergence > 0 && pv >= p->stop_divergence * am->p_init)
            am->stop_reason = 1;
        else if (p->stop_plateau > 0 && r->step - am->best_step >= p->stop_plateau)
            am->stop_reason = 2;
        if (!am->stop_reason) {
            running++;
            continue;
        }
        am->stopped = 1;
        am->stop_step = r->step;
        char k1[48], k2[48], msg[256];
        snprintf(k1, sizeof k1, "%s.stop_step", arm_names[a]);
        snprintf(k2, sizeof k2, "%s.stop_reason", arm_names[a]);
        const char *keys[] = {k1, k2};
        double vals[] = {(double)r->step, (double)am->stop_reason};
        snprintf(msg, sizeof msg, "arm %s stopped at step %lld: %s (perceptual %.6g, first %.6g, best %.6g at step %lld)",
                 arm_names[a], (long long)r->step, am->stop_reason == 1 ? "diverged" : "plateau", pv, am->p_init,
                 am->p_best, (long long)am->best_step);
        r->io->log(r->io->ctx, "info", msg);
        if (r->io->metrics(r->io->ctx, r->step, 2, keys, vals))
            return -1;
    }
    return running;
}

/* One arm's step; the first one's engine memory is measured (process-wide counters: with several
 * workers, other jobs' allocations count too), and the job's peak is tracked for the log. */
static int measured_arm_step(run *r, int a, char *err, size_t errlen)
{
    arm *am = &r->arms[a];
    nn_memstat before, after;
    if (am->mem_added_mb < 0)
        nn_memstat_reset_peak();
    nn_memstat_get(&before);
    if (arm_step(r, a, err, errlen))
        return -1;
    nn_memstat_get(&after);
    if (am->mem_added_mb < 0)
        am->mem_added_mb = (after.total_peak > before.total ? after.total_peak - before.total : 0) / 1048576.0;
    return 0;
}

int pgn_train_run(const pgn_train_params *p, const pgn_job_io *io, char *err, size_t errlen)
{
    /* Each arm's net is ~200 KB of layer state: keep it off the worker thread's stack. */
    run *rp = calloc(1, sizeof *rp);
    if (!rp) {
        snprintf(err, errlen, "out of memory");
        return PGN_FAILED;
    }
#define r (*rp)
    r.p = p;
    r.io = io;
    int rc = PGN_FAILED;
    if (setup(&r, err, errlen))
        goto out;
    if (io->resume_checkpoint && load_checkpoint(&r, err, errlen))
        goto out;
    if (r.step == 0) {
        char path[1200];
        snprintf(path, sizeof path, "%s/target.png", io->dir);
        if (pgn_image_save_png(path, r.target, r.s, r.s, err, errlen) ||
            io->artifact(io->ctx, "target.png", path, "image", -1))
            goto out;
    }
    io->progress(io->ctx, r.step, p->steps);
    int64_t last_ck = r.step;
    while (r.step < p->steps) {
        for (int a = 0; a < PGN_ARMS; a++)
            if (r.arms[a].on && !r.arms[a].stopped && measured_arm_step(&r, a, err, errlen))
                goto out;
        r.step++;
        int running = stability(&r, err, errlen);
        if (running < 0)
            goto out;
        int last = r.step == p->steps || running == 0;
        if ((r.step % p->log_every == 0 || last) && log_metrics(&r, err, errlen))
            goto out;
        if ((r.step % p->image_every == 0 || last) && save_images(&r, err, errlen))
            goto out;
        if (r.step % p->checkpoint_every == 0 || last) {
            if (write_checkpoint(&r, err, errlen))
                goto out;
            last_ck = r.step;
        }
        io->progress(io->ctx, r.step, p->steps);
        pgn_stop stop = last ? PGN_CONTINUE : io->should_stop(io->ctx);
        if (stop == PGN_STOP_CANCEL) {
            rc = PGN_STOPPED;
            goto out;
        }
        if (stop == PGN_STOP_PAUSE || stop == PGN_STOP_SHUTDOWN) {
            if (last_ck != r.step && write_checkpoint(&r, err, errlen))
                goto out;
            rc = PGN_STOPPED;
            goto out;
        }
        if (running == 0)
            break; /* stability mode: every arm has stopped */
    }
    rc = PGN_DONE;
out:
    teardown(&r);
#undef r
    free(rp);
    return rc;
}
