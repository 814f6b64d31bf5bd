/* Online PGN fitting: see fit.h. */
#include "pgn/fit.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "nn/adam.h"
#include "nn/rng.h"
#include "nn/weights.h"
#include "pgn/autoencoder.h"
#include "pgn/data.h"
#include "pgn/image.h"
#include "pgn/pgn_net.h"
#include "pgn/pgn_resnet.h"
#include "pgn/pgn_unet.h"
#include "pgn/proxy.h"
#include "pgn/shards.h"
#include "pgn/state_dict.h"
#include "pgn/teacher.h"
#include "pgn/viz.h"

static void teacher_meta(const struct pgn_fit *f, char *name, char *sha, char *desc, size_t len);

#define CK_FORMAT "pgnd fit checkpoint v1"
#define PCT_SAMPLES 16384 /* percentiles from an evenly strided subset: cheap and deterministic */

struct pgn_fit {
    pgn_fit_params p;
    nn_ctx ctx;
    int ctx_open;
    pgn_teacher teacher;
    int teacher_open;
    pgn_unet *unet; /* exactly one backbone */
    pgn_resnet *resnet;
    pgn_proxy head;
    nn_adam opt;
    int opt_open;
    pgn_autoencoder ae[PGN_FIT_AES];
    nn_adam ae_opt[PGN_FIT_AES];
    int ae_open[PGN_FIT_AES];
    double pgn_avg, ae_avg;                          /* clipping averages */
    double ae_best[PGN_FIT_AES], ae_best_at[PGN_FIT_AES];
    long resets;
    nn_rng rng;                                      /* reset draws */
    int64_t step;
    double samples;
    char source_pos[128];                            /* a collection reader's position */
    int s;                                           /* crop side */
    size_t cnt;                                      /* 3 s s */
    int cap_n;                                       /* images the buffers hold */
    float *yhat, *o, *pb, *g, *gt, *dpp, *dp, *dg, *dout, *x6, *tmp;
};

void pgn_fit_params_default(pgn_fit_params *p)
{
    memset(p, 0, sizeof *p);
    snprintf(p->arch, sizeof p->arch, "unet");
    p->size = 64;
    p->batch = 6;
    p->steps = 1000;
    p->lr = 1e-3;
    p->ae_lr = 1e-3;
    p->w_grad = 67108864.0; /* 2^26 */
    p->w_proxy_perceptual = 0.2;
    p->w_proxy_l1 = 0.5;
    p->clip_factor = 5;
    p->clip_init = 200;
    p->clip_ema_weight = 0.01;
    p->ae_plateau_samples = 300000;
    p->ae_reset_prob = 0.01;
    p->ae_reset_l1 = 1e3;
    p->val_fraction = 0.2;
    p->image_cache_mb = PGN_DATA_CACHE_MB_DEFAULT;
    p->val_max = 8;
    p->log_every = 10;
    p->val_every = 100;
    p->image_every = 500;
    p->checkpoint_every = 100;
    p->fast_teacher = 1;
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* ---- the backbone, either kind ---- */

static int resnet_blocks(const char *arch)
{
    if (strncmp(arch, "resnet", 6) || !arch[6])
        return 0;
    char *end;
    long n = strtol(arch + 6, &end, 10);
    return *end || n < 1 || n > PGN_RESNET_MAX_BLOCKS ? 0 : (int)n;
}

static const nn_param *bb_params(pgn_fit *f, int *n)
{
    return f->unet ? pgn_unet_params(f->unet, n) : pgn_resnet_params(f->resnet, n);
}

static const pgn_module *bb_modules(pgn_fit *f, int *n)
{
    if (f->unet) {
        *n = PGN_UNET_MODULES;
        return f->unet->mod;
    }
    *n = f->resnet->nmod;
    return f->resnet->mod;
}

static void bb_set_training(pgn_fit *f, int on)
{
    if (f->unet)
        pgn_unet_set_training(f->unet, on);
    else
        pgn_resnet_set_training(f->resnet, on);
}

static int bb_forward(pgn_fit *f, const float *yhat, const float *y, int n, float *o, nn_err *e)
{
    if (f->resnet)
        return pgn_resnet_forward(&f->ctx, f->resnet, yhat, y, n, f->s, f->s, o, e);
    for (int i = 0; i < n; i++) { /* concat[y_hat, y] per sample */
        memcpy(f->x6 + (size_t)i * 2 * f->cnt, yhat + (size_t)i * f->cnt, f->cnt * sizeof(float));
        memcpy(f->x6 + (size_t)i * 2 * f->cnt + f->cnt, y + (size_t)i * f->cnt, f->cnt * sizeof(float));
    }
    return pgn_unet_forward(&f->ctx, f->unet, f->x6, n, f->s, f->s, o, e);
}

static int bb_backward(pgn_fit *f, const float *dout, nn_err *e)
{
    return f->unet ? pgn_unet_backward(&f->ctx, f->unet, dout, e) : pgn_resnet_backward(&f->ctx, f->resnet, dout, e);
}

/* ---- set-up ---- */

static int reserve(pgn_fit *f, int n, nn_err *e)
{
    if (n <= f->cap_n)
        return 0;
    float **bufs[] = {&f->yhat, &f->o, &f->pb, &f->g, &f->gt, &f->dpp, &f->dp, &f->dg, &f->dout, &f->tmp};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) {
        free(*bufs[i]);
        *bufs[i] = malloc((size_t)n * f->cnt * sizeof(float));
        if (!*bufs[i])
            return nn_errf(e, "out of memory (%d images of %dx%d)", n, f->s, f->s);
    }
    free(f->x6);
    f->x6 = malloc((size_t)2 * n * f->cnt * sizeof(float));
    if (!f->x6)
        return nn_errf(e, "out of memory (%d images of %dx%d)", n, f->s, f->s);
    f->cap_n = n;
    return 0;
}

static int check_params(const pgn_fit_params *p, nn_err *e)
{
    int blocks = resnet_blocks(p->arch);
    if (strcmp(p->arch, "unet") && !blocks)
        return nn_errf(e, "arch '%s' is not one of unet, resnet4, resnet6, resnet8 (resnetN, N 1..%d)", p->arch,
                       PGN_RESNET_MAX_BLOCKS);
    if (p->batch < PGN_FIT_AES || p->batch % PGN_FIT_AES)
        return nn_errf(e, "batch %d must be a positive multiple of %d (one share per autoencoder)", p->batch,
                       PGN_FIT_AES);
    int mult = blocks ? 8 : 32; /* the autoencoders need 8 (three halvings), the UNet 32 */
    if (p->size < mult || p->size % mult)
        return nn_errf(e, "size %d must be a positive multiple of %d for %s and the autoencoders", p->size, mult,
                       p->arch);
    if (!blocks && (long)p->batch * (p->size / 32) * (p->size / 32) < 2)
        return nn_errf(e, "the UNet's deepest batch norm needs batch * (size/32)^2 >= 2");
    if (!(p->lr > 0) || !(p->ae_lr > 0) || !(p->clip_factor > 0) || !(p->clip_init > 0) ||
        !(p->clip_ema_weight > 0 && p->clip_ema_weight <= 1))
        return nn_errf(e, "learning rates, clip factor and clip average must be positive, the average weight in (0, 1]");
    if (p->grad_scale < 0)
        return nn_errf(e, "grad_scale %g must be positive (0: the arch default)", p->grad_scale);
    return 0;
}

int pgn_fit_open(pgn_fit **out, const pgn_fit_params *p, const char *teacher_weights, int threads, nn_err *e)
{
    *out = NULL;
    if (check_params(p, e))
        return -1;
    pgn_fit *f = calloc(1, sizeof *f);
    if (!f)
        return nn_errf(e, "out of memory");
    f->p = *p;
    f->s = p->size;
    f->cnt = (size_t)3 * p->size * p->size;
    if (nn_ctx_init(&f->ctx, threads, e))
        goto fail;
    f->ctx_open = 1;
    int blocks = resnet_blocks(p->arch);
    if (blocks) {
        f->resnet = calloc(1, sizeof *f->resnet);
        if (!f->resnet || pgn_resnet_init(f->resnet, blocks, p->seed, e))
            goto fail;
    } else {
        f->unet = calloc(1, sizeof *f->unet);
        if (!f->unet || pgn_unet_init(f->unet, p->seed, e))
            goto fail;
    }
    f->head = pgn_proxy_default(blocks ? PGN_GRAD_SCALE_RESNET : PGN_GRAD_SCALE_UNET);
    if (p->init[0]) { /* start from a checkpoint: its weights and, unless overridden, its head */
        nn_weights w;
        if (pgn_checkpoint_read(&w, p->init, e)) {
            nn_err_prefix(e, "init checkpoint");
            goto fail;
        }
        int rc = f->unet ? pgn_unet_load(f->unet, &w, e) : pgn_resnet_load(f->resnet, &w, e);
        if (!rc)
            rc = pgn_proxy_from_meta(&f->head, &w, e);
        nn_weights_free(&w);
        if (rc)
            goto fail;
        if (f->unet && f->head.grad_scale == 1e-3f) /* the authors' legacy UNet files (method.md §4.4) */
            f->head.grad_scale = PGN_GRAD_SCALE_UNET;
        bb_set_training(f, 1);
    }
    if (p->grad_scale > 0)
        f->head.grad_scale = (float)p->grad_scale;
    f->head.mode = p->direct ? PGN_PROXY_DIRECT : PGN_PROXY_SIGMOID;
    int np;
    const nn_param *ps = bb_params(f, &np);
    if (nn_adam_init(&f->opt, ps, np, (float)p->lr, 0.9f, 0.999f, 1e-8f, 0.0f, e))
        goto fail;
    f->opt_open = 1;
    for (int i = 0; i < PGN_FIT_AES; i++) {
        if (pgn_autoencoder_init(&f->ae[i], i, p->seed + 1 + (uint64_t)i, e))
            goto fail;
        f->ae_open[i] = 1;
        ps = pgn_autoencoder_params(&f->ae[i], &np);
        if (nn_adam_init(&f->ae_opt[i], ps, np, (float)p->ae_lr, 0.9f, 0.999f, 1e-8f, 0.0f, e))
            goto fail;
        f->ae_best[i] = INFINITY;
        f->ae_best_at[i] = 0;
    }
    if (pgn_teacher_open(&f->teacher, teacher_weights, 0, e))
        goto fail;
    f->teacher_open = 1;
    if (p->fast_teacher)
        pgn_teacher_set_fast(&f->teacher);
    f->pgn_avg = f->ae_avg = p->clip_init;
    nn_rng_seed(&f->rng, p->seed ^ 0x5eed0f17ULL);
    if (reserve(f, p->batch, e))
        goto fail;
    *out = f;
    return 0;
fail:
    pgn_fit_close(f);
    return -1;
}

void pgn_fit_close(pgn_fit *f)
{
    if (!f)
        return;
    if (f->unet)
        pgn_unet_free(f->unet);
    if (f->resnet)
        pgn_resnet_free(f->resnet);
    free(f->unet);
    free(f->resnet);
    if (f->opt_open)
        nn_adam_free(&f->opt);
    for (int i = 0; i < PGN_FIT_AES; i++)
        if (f->ae_open[i]) {
            pgn_autoencoder_free(&f->ae[i]);
            nn_adam_free(&f->ae_opt[i]);
        }
    if (f->teacher_open)
        pgn_teacher_close(&f->teacher);
    free(f->yhat), free(f->o), free(f->pb), free(f->g), free(f->gt), free(f->dpp), free(f->dp), free(f->dg);
    free(f->dout), free(f->x6), free(f->tmp);
    if (f->ctx_open)
        nn_ctx_free(&f->ctx);
    free(f);
}

int pgn_fit_load_autoencoder(pgn_fit *f, int i, const char *path, nn_err *e)
{
    if (i < 0 || i >= PGN_FIT_AES)
        return nn_errf(e, "no autoencoder %d", i);
    return pgn_autoencoder_load_file(&f->ae[i], path, e);
}

int64_t pgn_fit_steps_done(const pgn_fit *f) { return f->step; }

void pgn_fit_set_source_pos(pgn_fit *f, const char *pos) { snprintf(f->source_pos, sizeof f->source_pos, "%s", pos); }

const char *pgn_fit_source_pos(const pgn_fit *f) { return f->source_pos; }

/* ---- gradient quality ---- */

/* How well g matches the true field t: cosine, norm ratio, relative error. */
static void compare(const float *g, const float *t, size_t n, double *cos, double *ratio, double *rel)
{
    double gt = 0, gg = 0, tt = 0, dd = 0;
    for (size_t i = 0; i < n; i++) {
        double a = g[i], b = t[i];
        gt += a * b, gg += a * a, tt += b * b, dd += (a - b) * (a - b);
    }
    *cos = gg > 0 && tt > 0 ? gt / sqrt(gg * tt) : 0;
    *ratio = tt > 0 ? sqrt(gg / tt) : 0;
    *rel = tt > 0 ? sqrt(dd / tt) : 0;
}

/* The MSE direction y_hat - y at its least-squares scale onto t, compared with t. */
static void compare_mse_dir(const float *yhat, const float *y, const float *t, size_t n, double *cos, double *ratio,
                            double *rel)
{
    double dt = 0, dd = 0, tt = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)yhat[i] - y[i];
        dt += d * t[i], dd += d * d, tt += (double)t[i] * t[i];
    }
    double a = dd > 0 ? dt / dd : 0, ee = 0;
    for (size_t i = 0; i < n; i++) {
        double r = a * ((double)yhat[i] - y[i]) - t[i];
        ee += r * r;
    }
    *cos = dd > 0 && tt > 0 ? dt / sqrt(dd * tt) : 0;
    *ratio = tt > 0 ? sqrt(a * a * dd / tt) : 0;
    *rel = tt > 0 ? sqrt(ee / tt) : 0;
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* 50th, 90th and 99th percentiles of |v| over an evenly strided subset (scratch: PCT_SAMPLES floats). */
static void abs_percentiles(const float *v, size_t n, float *scratch, double out[3])
{
    size_t stride = n > PCT_SAMPLES ? (n + PCT_SAMPLES - 1) / PCT_SAMPLES : 1, m = 0;
    for (size_t i = 0; i < n; i += stride)
        scratch[m++] = fabsf(v[i]);
    qsort(scratch, m, sizeof *scratch, cmp_float);
    static const double q[3] = {0.5, 0.9, 0.99};
    for (int k = 0; k < 3; k++)
        out[k] = m ? scratch[(size_t)(q[k] * (double)(m - 1) + 0.5)] : 0;
}

/* ---- one step ---- */

/* One step. Online (pairs == NULL): the autoencoders make y_hat from y and step on the PGN's
 * prediction. From a collection: y_hat and g_true are given, and only the PGN steps. */
static int step(pgn_fit *f, const float *y, const float *yhat_in, const float *gt_in, pgn_fit_stats *st, nn_err *e)
{
    int online = yhat_in == NULL;
    const pgn_fit_params *p = &f->p;
    int B = p->batch, b = B / PGN_FIT_AES, S = f->s;
    size_t cnt = f->cnt, tot = (size_t)B * cnt;
    double N = (double)cnt;
    memset(st, 0, sizeof *st);
    double t0 = now_ms();
    /* 1. the autoencoders' outputs (train mode), then detached */
    if (!online)
        memcpy(f->yhat, yhat_in, tot * sizeof(float));
    for (int i = 0; online && i < PGN_FIT_AES; i++)
        if (pgn_autoencoder_forward(&f->ctx, &f->ae[i], y + (size_t)i * b * cnt, b, S, S, f->yhat + (size_t)i * b * cnt,
                                    e))
            return nn_err_prefix(e, "autoencoder forward");
    double t1 = now_ms();
    /* 2. the PGN's proxy and predicted gradient */
    if (bb_forward(f, f->yhat, y, B, f->o, e))
        return nn_err_prefix(e, "PGN forward");
    pgn_proxy_forward(&f->head, f->o, f->yhat, B, S, S, f->pb, f->g);
    double t2 = now_ms();
    /* 3. the teacher: g_true at y_hat, P(p, y) and its gradient at p */
    double per_p[B];
    int need_prc = p->w_proxy_perceptual > 0 || online; /* online: P(p, y) is reported anyway */
    if (!online)
        memcpy(f->gt, gt_in, tot * sizeof(float));
    if ((online || need_prc) && pgn_teacher_set_target(&f->ctx, &f->teacher, y, B, S, S, PGN_SPACE_NORMALISED, e))
        return nn_err_prefix(e, "teacher");
    if (online &&
        pgn_teacher_loss_grad(&f->ctx, &f->teacher, f->yhat, B, S, S, PGN_SPACE_NORMALISED, NULL, NULL, f->gt, e))
        return nn_err_prefix(e, "teacher");
    if (need_prc &&
        pgn_teacher_loss_grad(&f->ctx, &f->teacher, f->pb, B, S, S, PGN_SPACE_NORMALISED, per_p, NULL, f->dpp, e))
        return nn_err_prefix(e, "teacher");
    if (!need_prc) { /* from a collection with no perceptual proxy term: no VGG pass at all */
        memset(f->dpp, 0, tot * sizeof(float));
        for (int n = 0; n < B; n++)
            per_p[n] = 0;
    }
    double t3 = now_ms();
    /* 4. the autoencoders step on the PGN's prediction; they share one clipping average */
    double ae_max = p->clip_factor * f->ae_avg;
    for (int i = 0; online && i < PGN_FIT_AES; i++) {
        int np;
        const nn_param *ps = pgn_autoencoder_params(&f->ae[i], &np);
        pgn_autoencoder_zero_grad(&f->ae[i]);
        if (pgn_autoencoder_backward(&f->ctx, &f->ae[i], f->g + (size_t)i * b * cnt, e))
            return nn_err_prefix(e, "autoencoder backward");
        st->ae_norm[i] = nn_clip_grad_norm(ps, np, ae_max);
        nn_adam_step(&f->ae_opt[i]);
    }
    for (int k = 0; online && k < PGN_FIT_AES; k++)
        f->ae_avg = (1 - p->clip_ema_weight) * f->ae_avg + p->clip_ema_weight * st->ae_norm[PGN_FIT_AES - 1];
    st->ae_avg = f->ae_avg;
    double t4 = now_ms();
    /* 5. the PGN's loss, its gradient through the head, and the PGN step */
    float kg = (float)(p->w_grad * 2.0 / N), kl = (float)(p->w_proxy_l1 / N), kp = (float)p->w_proxy_perceptual;
    double sum_g = 0, sum_l1 = 0, sum_p = 0;
    for (int n = 0; n < B; n++) {
        size_t o = (size_t)n * cnt;
        double mse = 0, l1 = 0;
        for (size_t i = o; i < o + cnt; i++) {
            float d = f->g[i] - f->gt[i], r = f->pb[i] - y[i];
            mse += (double)d * d;
            l1 += fabs((double)r);
            f->dg[i] = kg * d;
            f->dp[i] = kp * f->dpp[i] + kl * (float)((r > 0) - (r < 0));
        }
        sum_g += p->w_grad * mse / N;
        sum_l1 += l1 / N;
        sum_p += per_p[n];
        double c, ra, re;
        compare(f->g + o, f->gt + o, cnt, &c, &ra, &re);
        st->cos += c / B, st->norm_ratio += ra / B, st->rel_err += re / B;
        compare_mse_dir(f->yhat + o, y + o, f->gt + o, cnt, &c, &ra, &re);
        st->mse_cos += c / B, st->mse_norm_ratio += ra / B, st->mse_rel_err += re / B;
    }
    st->grad_mse = sum_g / B;
    st->proxy_perceptual = sum_p / B;
    st->proxy_l1 = sum_l1 / B;
    st->loss = st->grad_mse + p->w_proxy_perceptual * st->proxy_perceptual + p->w_proxy_l1 * st->proxy_l1;
    double t5 = now_ms();
    pgn_proxy_backward(&f->head, f->o, f->dp, f->dg, B, S, S, f->dout);
    int np;
    const nn_param *ps = bb_params(f, &np);
    nn_params_zero_grad(ps, np);
    if (bb_backward(f, f->dout, e))
        return nn_err_prefix(e, "PGN backward");
    double t6 = now_ms();
    st->pgn_norm = nn_clip_grad_norm(ps, np, p->clip_factor * f->pgn_avg);
    if (!isfinite(st->pgn_norm) || !isfinite(st->loss))
        return nn_errf(e, "step %lld diverged: loss %g, PGN gradient norm %g", (long long)f->step + 1, st->loss,
                       st->pgn_norm);
    nn_adam_step(&f->opt);
    f->pgn_avg = (1 - p->clip_ema_weight) * f->pgn_avg + p->clip_ema_weight * st->pgn_norm;
    st->pgn_avg = f->pgn_avg;
    double t7 = now_ms();
    /* 6. the autoencoders' L1 and resets (§4.1) */
    f->step++;
    f->samples += B;
    for (int i = 0; online && i < PGN_FIT_AES; i++) {
        double l1 = 0;
        const float *a = f->yhat + (size_t)i * b * cnt, *t = y + (size_t)i * b * cnt;
        for (size_t k = 0; k < (size_t)b * cnt; k++)
            l1 += fabs((double)a[k] - t[k]);
        st->ae_l1[i] = l1 / ((double)b * cnt);
        if (pgn_autoencoder_reset_if_stale(&f->ae[i], st->ae_l1[i], f->samples, &f->ae_best[i], &f->ae_best_at[i],
                                           p->ae_reset_l1, p->ae_plateau_samples, p->ae_reset_prob, &f->rng)) {
            f->resets++;
            st->ae_reset[i] = 1;
        }
    }
    abs_percentiles(f->g, tot, f->tmp, st->g_pred_pct);
    abs_percentiles(f->gt, tot, f->tmp, st->g_true_pct);
    st->ms_ae = (t1 - t0) + (t4 - t3);
    st->ms_pgn = (t2 - t1) + (t6 - t5);
    st->ms_teacher = t3 - t2;
    st->ms_update = (t5 - t4) + (t7 - t6);
    st->ms_total = now_ms() - t0;
    return 0;
}

int pgn_fit_step(pgn_fit *f, const float *y, pgn_fit_stats *st, nn_err *e) { return step(f, y, NULL, NULL, st, e); }

int pgn_fit_step_pairs(pgn_fit *f, const float *yhat, const float *y, const float *g_true, pgn_fit_stats *st,
                       nn_err *e)
{
    if (!yhat || !g_true)
        return nn_errf(e, "pgn_fit_step_pairs needs y_hat and g_true");
    return step(f, y, yhat, g_true, st, e);
}

/* ---- validation ---- */

/* torchvision's gaussian_blur(img, 9, 1.5) on one CHW image: separable, reflection padding. */
static void gaussian_blur(const float *src, float *dst, float *tmp, int h, int w)
{
    enum { K = 9, R = 4 };
    double k[K], sum = 0;
    for (int i = 0; i < K; i++)
        sum += k[i] = exp(-0.5 * ((i - R) / 1.5) * ((i - R) / 1.5));
    float kf[K];
    for (int i = 0; i < K; i++)
        kf[i] = (float)(k[i] / sum);
#define REFL(i, n) ((i) < 0 ? -(i) : (i) >= (n) ? 2 * (n) - 2 - (i) : (i))
    for (int c = 0; c < 3; c++) {
        const float *s = src + (size_t)c * h * w;
        float *t = tmp + (size_t)c * h * w, *d = dst + (size_t)c * h * w;
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) {
                float a = 0;
                for (int j = 0; j < K; j++)
                    a += kf[j] * s[(size_t)y * w + REFL(x + j - R, w)];
                t[(size_t)y * w + x] = a;
            }
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) {
                float a = 0;
                for (int j = 0; j < K; j++)
                    a += kf[j] * t[(size_t)REFL(y + j - R, h) * w + x];
                d[(size_t)y * w + x] = a;
            }
    }
#undef REFL
}

static void pairs_add(pgn_fit_val_pairs *v, const float *g, const float *gt, const float *yhat, const float *y, size_t n)
{
    double c, r, e;
    compare(g, gt, n, &c, &r, &e);
    v->cos += c, v->norm_ratio += r, v->rel_err += e;
    compare_mse_dir(yhat, y, gt, n, &c, &r, &e);
    v->mse_cos += c, v->mse_norm_ratio += r, v->mse_rel_err += e;
    v->n++;
}

static void pairs_mean(pgn_fit_val_pairs *v)
{
    if (!v->n)
        return;
    v->cos /= v->n, v->norm_ratio /= v->n, v->rel_err /= v->n;
    v->mse_cos /= v->n, v->mse_norm_ratio /= v->n, v->mse_rel_err /= v->n;
}

/* The PGN's (eval mode) prediction and the teacher's gradient for pairs (yhat, y) of n images. */
static int predict_and_truth(pgn_fit *f, const float *yhat, const float *y, int n, nn_err *e)
{
    bb_set_training(f, 0);
    int rc = bb_forward(f, yhat, y, n, f->o, e);
    bb_set_training(f, 1);
    if (rc)
        return -1;
    pgn_proxy_forward(&f->head, f->o, yhat, n, f->s, f->s, f->pb, f->g);
    return pgn_teacher_loss_grad_pair(&f->ctx, &f->teacher, yhat, y, n, f->s, f->s, PGN_SPACE_NORMALISED, NULL, NULL,
                                      f->gt, e);
}

int pgn_fit_validate(pgn_fit *f, const float *y, int n, pgn_fit_val *out, nn_err *e)
{
    memset(out, 0, sizeof *out);
    if (n <= 0)
        return 0;
    if (reserve(f, n, e))
        return -1;
    int S = f->s;
    size_t cnt = f->cnt;
    /* The autoencoders stay in train mode (batch statistics over the held-out batch), as the
     * authors' evaluation; only their BN running statistics move, which train mode never reads. */
    float *yh = malloc((size_t)n * cnt * sizeof(float));
    if (!yh)
        return nn_errf(e, "out of memory");
    int rc = 0;
    for (int i = 0; i < PGN_FIT_AES && !rc; i++) {
        rc = pgn_autoencoder_forward(&f->ctx, &f->ae[i], y, n, S, S, yh, e) || predict_and_truth(f, yh, y, n, e);
        for (int k = 0; !rc && k < n; k++)
            pairs_add(&out->ae, f->g + (size_t)k * cnt, f->gt + (size_t)k * cnt, yh + (size_t)k * cnt,
                      y + (size_t)k * cnt, cnt);
    }
    for (int k = 0; !rc && k < n; k++)
        gaussian_blur(y + (size_t)k * cnt, yh + (size_t)k * cnt, f->tmp, S, S);
    if (!rc)
        rc = predict_and_truth(f, yh, y, n, e);
    for (int k = 0; !rc && k < n; k++)
        pairs_add(&out->blur, f->g + (size_t)k * cnt, f->gt + (size_t)k * cnt, yh + (size_t)k * cnt,
                  y + (size_t)k * cnt, cnt);
    free(yh);
    if (rc)
        return nn_err_prefix(e, "validation");
    out->all = out->ae;
    out->all.cos += out->blur.cos, out->all.norm_ratio += out->blur.norm_ratio, out->all.rel_err += out->blur.rel_err;
    out->all.mse_cos += out->blur.mse_cos, out->all.mse_norm_ratio += out->blur.mse_norm_ratio;
    out->all.mse_rel_err += out->blur.mse_rel_err;
    out->all.n += out->blur.n;
    pairs_mean(&out->ae);
    pairs_mean(&out->blur);
    pairs_mean(&out->all);
    return 0;
}

int pgn_fit_fields_png(pgn_fit *f, const float *y, int ae, const char *path, nn_err *e)
{
    if (ae < -1 || ae >= PGN_FIT_AES)
        return nn_errf(e, "no autoencoder %d", ae);
    size_t cnt = f->cnt;
    float *yh = malloc(3 * cnt * sizeof(float));
    if (!yh)
        return nn_errf(e, "out of memory");
    float *pt = yh + cnt;
    /* ae -1: the blurred target (validation's fixed degradation); else the autoencoder in train mode
     * as validation runs it (batch statistics of this one image) */
    int rc = 0;
    if (ae < 0)
        gaussian_blur(y, yh, yh + 2 * cnt, f->s, f->s);
    else
        rc = pgn_autoencoder_forward(&f->ctx, &f->ae[ae], y, 1, f->s, f->s, yh, e);
    rc = rc || predict_and_truth(f, yh, y, 1, e);
    if (!rc) {
        float step = 0.5f * (float)cnt * f->head.grad_scale; /* the proxy a perfect PGN would give */
        for (size_t i = 0; i < cnt; i++)
            pt[i] = yh[i] - step * f->gt[i];
        pgn_fields fl = {f->s, f->s, y, yh, f->gt, f->g, pt, f->pb};
        char err[512];
        if (pgn_viz_fields_png(path, &fl, err, sizeof err))
            rc = nn_errf(e, "%s", err);
    }
    free(yh);
    return rc ? -1 : 0;
}

/* ---- checkpoints ---- */

typedef struct ck_set {
    pgn_state_export x[1 + PGN_FIT_AES];
    int n;
    char (*names)[96]; /* Adam moments */
    const nn_tensor **t;
    int nt;
} ck_set;

static void ck_free(ck_set *c)
{
    for (int i = 0; i < 1 + PGN_FIT_AES; i++)
        pgn_state_export_free(&c->x[i]);
    free(c->names);
    free(c->t);
}

static int ck_build(pgn_fit *f, ck_set *c, nn_err *e)
{
    memset(c, 0, sizeof *c);
    int nm;
    const pgn_module *mods = bb_modules(f, &nm);
    if (pgn_state_export_init(&c->x[0], mods, nm, "pgn/", e))
        return -1;
    for (int i = 0; i < PGN_FIT_AES; i++) {
        char pre[16];
        snprintf(pre, sizeof pre, "ae%d/", i);
        if (pgn_state_export_init(&c->x[1 + i], f->ae[i].mod, f->ae[i].nmod, pre, e)) {
            ck_free(c);
            return -1;
        }
    }
    int cap = 2 * f->opt.count;
    for (int i = 0; i < PGN_FIT_AES; i++)
        cap += 2 * f->ae_opt[i].count;
    for (int i = 0; i < 1 + PGN_FIT_AES; i++)
        cap += c->x[i].n;
    c->names = calloc((size_t)cap, sizeof *c->names);
    c->t = calloc((size_t)cap, sizeof *c->t);
    if (!c->names || !c->t) {
        ck_free(c);
        return nn_errf(e, "out of memory");
    }
    for (int i = 0; i < 1 + PGN_FIT_AES; i++)
        for (int k = 0; k < c->x[i].n; k++) {
            memcpy(c->names[c->nt], c->x[i].names[k], sizeof c->names[0]);
            c->t[c->nt++] = c->x[i].t[k];
        }
    for (int i = 0; i < 1 + PGN_FIT_AES; i++) {
        nn_adam *o = i ? &f->ae_opt[i - 1] : &f->opt;
        const char *who = i ? (const char *[]){"ae0", "ae1", "ae2"}[i - 1] : "pgn";
        for (int k = 0; k < o->count; k++) {
            /* "<net>_adam/", not "<net>/": the "pgn/" tensors are exactly the PGN's state dict */
            snprintf(c->names[c->nt], sizeof c->names[0], "%s_adam/m.%d", who, k);
            c->t[c->nt++] = &o->m[k];
            snprintf(c->names[c->nt], sizeof c->names[0], "%s_adam/v.%d", who, k);
            c->t[c->nt++] = &o->v[k];
        }
    }
    return 0;
}

int pgn_fit_save(pgn_fit *f, const char *path, const uint32_t data_rng[4], nn_err *e)
{
    ck_set c;
    if (ck_build(f, &c, e))
        return -1;
    const char **names = malloc((size_t)c.nt * sizeof *names);
    if (!names) {
        ck_free(&c);
        return nn_errf(e, "out of memory");
    }
    for (int i = 0; i < c.nt; i++)
        names[i] = c.names[i];
    char v[20][160];
    /* "grad_scale" and "backbone_to_grad_type" are also what pgn_checkpoint_read's callers read */
    const char *k[20] = {"format", "arch", "size", "batch", "step", "samples", "avg", "adam_steps", "rng",
                         "data_rng", "ae_best", "ae_best_at", "resets", "grad_scale", "backbone_to_grad_type",
                         "seed", "source_pos", "teacher", "teacher_sha256", "teacher_description"};
    snprintf(v[0], sizeof v[0], CK_FORMAT);
    snprintf(v[1], sizeof v[1], "%s", f->p.arch);
    snprintf(v[2], sizeof v[2], "%d", f->p.size);
    snprintf(v[3], sizeof v[3], "%d", f->p.batch);
    snprintf(v[4], sizeof v[4], "%lld", (long long)f->step);
    snprintf(v[5], sizeof v[5], "%.17g", f->samples);
    snprintf(v[6], sizeof v[6], "%.17g %.17g", f->pgn_avg, f->ae_avg);
    snprintf(v[7], sizeof v[7], "%ld %ld %ld %ld", f->opt.step, f->ae_opt[0].step, f->ae_opt[1].step, f->ae_opt[2].step);
    snprintf(v[8], sizeof v[8], "%u %u %u %u", f->rng.s[0], f->rng.s[1], f->rng.s[2], f->rng.s[3]);
    if (data_rng)
        snprintf(v[9], sizeof v[9], "%u %u %u %u", data_rng[0], data_rng[1], data_rng[2], data_rng[3]);
    else
        snprintf(v[9], sizeof v[9], "none");
    snprintf(v[10], sizeof v[10], "%.17g %.17g %.17g", f->ae_best[0], f->ae_best[1], f->ae_best[2]);
    snprintf(v[11], sizeof v[11], "%.17g %.17g %.17g", f->ae_best_at[0], f->ae_best_at[1], f->ae_best_at[2]);
    snprintf(v[12], sizeof v[12], "%ld", f->resets);
    snprintf(v[13], sizeof v[13], "%.9g", f->head.grad_scale);
    snprintf(v[14], sizeof v[14], "%s", f->head.mode == PGN_PROXY_DIRECT ? "direct" : "proxy");
    snprintf(v[15], sizeof v[15], "%llu", (unsigned long long)f->p.seed);
    snprintf(v[16], sizeof v[16], "%s", f->source_pos);
    teacher_meta(f, v[17], v[18], v[19], sizeof v[17]);
    const char *vv[20];
    for (int i = 0; i < 20; i++)
        vv[i] = v[i];
    int rc = nn_safetensors_write(path, c.nt, names, c.t, 20, k, vv, e);
    free(names);
    ck_free(&c);
    return rc;
}

static const char *meta_str(const nn_weights *w, const char *k)
{
    const nn_weight_meta *m = nn_weights_meta(w, k);
    return m ? m->str : NULL;
}

/* The teacher's identity, recorded in checkpoints and exports: its name, the weights' checksum
 * ("random" for a random teacher) and the one-line description. */
static void teacher_meta(const pgn_fit *f, char *name, char *sha, char *desc, size_t len)
{
    snprintf(name, len, "%s", f->teacher.name);
    snprintf(sha, len, "%s", f->teacher.random ? "random" : f->teacher.weights_sha256);
    pgn_teacher_describe(&f->teacher, desc, len);
}

int pgn_fit_load(pgn_fit *f, const char *path, uint32_t data_rng[4], nn_err *e)
{
    char want_name[160], want_sha[160], want_desc[160];
    teacher_meta(f, want_name, want_sha, want_desc, sizeof want_name);
    nn_weights w;
    if (nn_weights_read(&w, path, e))
        return nn_err_prefix(e, "cannot resume");
    int rc = 0;
    const char *fmt = meta_str(&w, "format"), *arch = meta_str(&w, "arch"), *size = meta_str(&w, "size");
    const char *batch = meta_str(&w, "batch"), *step = meta_str(&w, "step"), *samples = meta_str(&w, "samples");
    const char *avg = meta_str(&w, "avg"), *adam = meta_str(&w, "adam_steps"), *rng = meta_str(&w, "rng");
    const char *drng = meta_str(&w, "data_rng"), *best = meta_str(&w, "ae_best"), *best_at = meta_str(&w, "ae_best_at");
    const char *resets = meta_str(&w, "resets");
    if (!fmt || strcmp(fmt, CK_FORMAT) || !arch || !size || !batch || !step || !samples || !avg || !adam || !rng ||
        !best || !best_at || !resets) {
        rc = nn_errf(e, "cannot resume: %s is not a pgnd fit checkpoint", path);
    } else if (strcmp(arch, f->p.arch) || atoi(size) != f->p.size || atoi(batch) != f->p.batch) {
        rc = nn_errf(e, "cannot resume: %s was made by a fit with arch %s, size %s, batch %s; this one has %s, %d, %d",
                     path, arch, size, batch, f->p.arch, f->p.size, f->p.batch);
    } else if (meta_str(&w, "teacher") && (strcmp(meta_str(&w, "teacher"), want_name) ||
                                           strcmp(meta_str(&w, "teacher_sha256") ?: "", want_sha))) {
        /* older checkpoints carry no teacher and are taken as they are */
        rc = nn_errf(e, "cannot resume: %s was made with the teacher %s; this fit has %s", path,
                     meta_str(&w, "teacher_description") ?: meta_str(&w, "teacher"), want_desc);
    }
    ck_set c;
    if (!rc && ck_build(f, &c, e))
        rc = -1;
    if (!rc) {
        for (int i = 0; !rc && i < 1 + PGN_FIT_AES; i++)
            rc = pgn_state_export_read(&c.x[i], &w, e);
        int first_adam = 0;
        for (int i = 0; i < 1 + PGN_FIT_AES; i++)
            first_adam += c.x[i].n;
        for (int i = first_adam; !rc && i < c.nt; i++)
            rc = nn_weights_get_f32(&w, c.names[i], (nn_tensor *)c.t[i], e);
        ck_free(&c);
        if (rc)
            nn_err_prefix(e, "cannot resume");
    }
    if (!rc) {
        long a0, a1, a2, a3;
        unsigned r[4];
        if (sscanf(avg, "%lf %lf", &f->pgn_avg, &f->ae_avg) != 2 || sscanf(adam, "%ld %ld %ld %ld", &a0, &a1, &a2, &a3) != 4 ||
            sscanf(rng, "%u %u %u %u", &r[0], &r[1], &r[2], &r[3]) != 4 ||
            sscanf(best, "%lf %lf %lf", &f->ae_best[0], &f->ae_best[1], &f->ae_best[2]) != 3 ||
            sscanf(best_at, "%lf %lf %lf", &f->ae_best_at[0], &f->ae_best_at[1], &f->ae_best_at[2]) != 3) {
            rc = nn_errf(e, "cannot resume: %s has malformed state metadata", path);
        } else {
            f->opt.step = a0, f->ae_opt[0].step = a1, f->ae_opt[1].step = a2, f->ae_opt[2].step = a3;
            for (int i = 0; i < 4; i++)
                f->rng.s[i] = r[i];
            f->step = atoll(step);
            f->samples = atof(samples);
            f->resets = atol(resets);
            const char *sp = meta_str(&w, "source_pos");
            pgn_fit_set_source_pos(f, sp ? sp : "");
            if (data_rng && drng && sscanf(drng, "%u %u %u %u", &r[0], &r[1], &r[2], &r[3]) == 4)
                for (int i = 0; i < 4; i++)
                    data_rng[i] = r[i];
        }
    }
    nn_weights_free(&w);
    return rc ? -1 : 0;
}

int pgn_fit_export(pgn_fit *f, const char *path, nn_err *e)
{
    int nm;
    const pgn_module *mods = bb_modules(f, &nm);
    pgn_state_export x;
    if (pgn_state_export_init(&x, mods, nm, "", e))
        return -1;
    const char **names = malloc((size_t)x.n * sizeof *names);
    if (!names) {
        pgn_state_export_free(&x);
        return nn_errf(e, "out of memory");
    }
    for (int i = 0; i < x.n; i++)
        names[i] = x.names[i];
    char gs[32], ks[32], os[32], st[32];
    snprintf(gs, sizeof gs, "%.9g", f->head.grad_scale);
    snprintf(ks, sizeof ks, "%.9g", f->head.kappa);
    snprintf(os, sizeof os, "%.9g", f->head.out_scale);
    snprintf(st, sizeof st, "%lld", (long long)f->step);
    int direct = f->head.mode == PGN_PROXY_DIRECT;
    char tn[160], tsha[160], tdesc[160];
    teacher_meta(f, tn, tsha, tdesc, sizeof tn);
    const char *k[] = {"format", "backbone_type", "arch", "fit_step", "backbone_to_grad_type",
                       "backbone_to_grad_params.grad_type", "backbone_to_grad_params.grad_scale", "teacher",
                       "teacher_sha256", "teacher_description",
                       direct ? "backbone_to_grad_params.out_scale" : "backbone_to_grad_params.type",
                       "backbone_to_grad_params.sigmoid.scale"};
    const char *v[] = {"pgnd pgn v1", f->unet ? "unet" : "resnet", f->p.arch, st, direct ? "direct" : "proxy",
                       "mse", gs, tn, tsha, tdesc, direct ? os : "sigmoid", ks};
    int nk = direct ? 11 : 12;
    int rc = nn_safetensors_write(path, x.n, names, x.t, nk, k, v, e);
    free(names);
    pgn_state_export_free(&x);
    return rc;
}

/* ---- the job ---- */

typedef struct window {
    int n;
    double loss, grad_mse, proxy_perceptual, proxy_l1, cos, norm_ratio, rel_err, mse_cos, mse_norm_ratio, mse_rel_err;
    double pgn_norm, ms_total, ms_ae, ms_pgn, ms_teacher, ms_update;
} window;

static void window_add(window *w, const pgn_fit_stats *s)
{
    w->n++;
    w->loss += s->loss, w->grad_mse += s->grad_mse, w->proxy_perceptual += s->proxy_perceptual;
    w->proxy_l1 += s->proxy_l1, w->cos += s->cos, w->norm_ratio += s->norm_ratio, w->rel_err += s->rel_err;
    w->mse_cos += s->mse_cos, w->mse_norm_ratio += s->mse_norm_ratio, w->mse_rel_err += s->mse_rel_err;
    w->pgn_norm += s->pgn_norm, w->ms_total += s->ms_total, w->ms_ae += s->ms_ae, w->ms_pgn += s->ms_pgn;
    w->ms_teacher += s->ms_teacher, w->ms_update += s->ms_update;
}

static double rss_mb(void)
{
    long pages = 0, resident = 0;
    FILE *fp = fopen("/proc/self/statm", "r");
    if (fp) {
        if (fscanf(fp, "%ld %ld", &pages, &resident) != 2)
            resident = 0;
        fclose(fp);
    }
    return (double)resident * (double)sysconf(_SC_PAGESIZE) / 1048576.0;
}

static double peak_rss_mb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss / 1024.0;
}

#define MAXK 64
typedef struct kv {
    int n;
    const char *k[MAXK];
    double v[MAXK];
} kv;

static void put(kv *m, const char *k, double v)
{
    if (m->n < MAXK)
        m->k[m->n] = k, m->v[m->n++] = v;
}

static int log_window(pgn_fit *f, const pgn_job_io *io, window *w, const pgn_fit_stats *last, long skipped)
{
    if (!w->n)
        return 0;
    double n = w->n;
    kv m = {0};
    put(&m, "loss", w->loss / n);
    put(&m, "loss_grad_mse", w->grad_mse / n);
    put(&m, "loss_proxy_perceptual", w->proxy_perceptual / n);
    put(&m, "loss_proxy_l1", w->proxy_l1 / n);
    put(&m, "grad_cos", w->cos / n);
    put(&m, "grad_norm_ratio", w->norm_ratio / n);
    put(&m, "grad_rel_err", w->rel_err / n);
    put(&m, "mse_dir_cos", w->mse_cos / n);
    put(&m, "mse_dir_norm_ratio", w->mse_norm_ratio / n);
    put(&m, "mse_dir_rel_err", w->mse_rel_err / n);
    put(&m, "pgn_grad_norm", w->pgn_norm / n);
    put(&m, "pgn_clip_avg", f->pgn_avg);
    put(&m, "ae_clip_avg", f->ae_avg);
    put(&m, "ae0_l1", last->ae_l1[0]);
    put(&m, "ae1_l1", last->ae_l1[1]);
    put(&m, "ae2_l1", last->ae_l1[2]);
    put(&m, "ae_resets", (double)f->resets);
    put(&m, "g_pred_abs_p50", last->g_pred_pct[0]);
    put(&m, "g_pred_abs_p90", last->g_pred_pct[1]);
    put(&m, "g_pred_abs_p99", last->g_pred_pct[2]);
    put(&m, "g_true_abs_p50", last->g_true_pct[0]);
    put(&m, "g_true_abs_p90", last->g_true_pct[1]);
    put(&m, "g_true_abs_p99", last->g_true_pct[2]);
    put(&m, "step_ms", w->ms_total / n);
    put(&m, "teacher_ms", w->ms_teacher / n);
    put(&m, "pgn_ms", w->ms_pgn / n);
    put(&m, "ae_ms", w->ms_ae / n);
    put(&m, "update_ms", w->ms_update / n);
    put(&m, "samples", f->samples);
    put(&m, "data_skipped", (double)skipped);
    put(&m, "rss_mb", rss_mb());
    put(&m, "peak_rss_mb", peak_rss_mb());
    memset(w, 0, sizeof *w);
    return io->metrics(io->ctx, f->step, m.n, m.k, m.v);
}

static int log_validation(pgn_fit *f, const pgn_job_io *io, const pgn_fit_val *v)
{
    kv m = {0};
    const pgn_fit_val_pairs *ps[3] = {&v->ae, &v->blur, &v->all};
    static const char *const names[3][6] = {
        {"val.ae.cos", "val.ae.norm_ratio", "val.ae.rel_err", "val.ae.mse_dir_cos", "val.ae.mse_dir_norm_ratio",
         "val.ae.mse_dir_rel_err"},
        {"val.blur.cos", "val.blur.norm_ratio", "val.blur.rel_err", "val.blur.mse_dir_cos",
         "val.blur.mse_dir_norm_ratio", "val.blur.mse_dir_rel_err"},
        {"val.cos", "val.norm_ratio", "val.rel_err", "val.mse_dir_cos", "val.mse_dir_norm_ratio", "val.mse_dir_rel_err"}};
    for (int i = 0; i < 3; i++) {
        const pgn_fit_val_pairs *p = ps[i];
        double vals[6] = {p->cos, p->norm_ratio, p->rel_err, p->mse_cos, p->mse_norm_ratio, p->mse_rel_err};
        for (int k = 0; k < 6; k++)
            put(&m, names[i][k], vals[k]);
    }
    put(&m, "val.pairs", v->all.n);
    /* 1 when the PGN beats the trivial predictor on held-out pairs (cosine), else 0 */
    put(&m, "val.beats_mse_dir", v->all.cos > v->all.mse_cos);
    return io->metrics(io->ctx, f->step, m.n, m.k, m.v);
}

static void logf_(const pgn_job_io *io, const char *level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
#include <stdarg.h>
static void logf_(const pgn_job_io *io, const char *level, const char *fmt, ...)
{
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    io->log(io->ctx, level, msg);
}


typedef struct job {
    const pgn_fit_params *p;
    const pgn_job_io *io;
    pgn_fit *f;
    pgn_data data;
    int data_open;
    pgn_shards *shards; /* fitting from a collection */
    float *y, *val, *yh, *gt;
    int n_val;
} job;

static int publish(job *j, const char *name, const char *kind, int (*write)(job *, const char *, nn_err *),
                   char *err, size_t errlen)
{
    char path[1200];
    nn_err e;
    snprintf(path, sizeof path, "%s/%s", j->io->dir, name);
    if (write(j, path, &e)) {
        snprintf(err, errlen, "%s", e.msg);
        return -1;
    }
    return j->io->artifact(j->io->ctx, name, path, kind, j->f->step);
}

static int write_model(job *j, const char *path, nn_err *e) { return pgn_fit_export(j->f, path, e); }

static int write_fields(job *j, char *err, size_t errlen)
{
    if (!j->n_val)
        return 0;
    /* online: each autoencoder's output; from a collection (no autoencoders trained): the blur pair */
    for (int i = j->shards ? -1 : 0; i < (j->shards ? 0 : PGN_FIT_AES); i++) {
        char name[96], path[1200];
        nn_err e;
        if (i < 0)
            snprintf(name, sizeof name, "fields-blur-step%08lld.png", (long long)j->f->step);
        else
            snprintf(name, sizeof name, "fields-ae%d-step%08lld.png", i, (long long)j->f->step);
        snprintf(path, sizeof path, "%s/%s", j->io->dir, name);
        if (pgn_fit_fields_png(j->f, j->val, i, path, &e)) {
            snprintf(err, errlen, "gradient fields: %s", e.msg);
            return -1;
        }
        if (j->io->artifact(j->io->ctx, name, path, "fields", j->f->step))
            return -1;
    }
    return 0;
}

static int checkpoint(job *j, char *err, size_t errlen)
{
    char path[1200];
    nn_err e;
    if (j->shards) {
        char pos[128];
        pgn_shards_pos ps = pgn_shards_get_pos(j->shards);
        pgn_shards_pos_format(&ps, pos, sizeof pos);
        pgn_fit_set_source_pos(j->f, pos);
    }
    snprintf(path, sizeof path, "%s/checkpoint-%08lld.safetensors", j->io->dir, (long long)j->f->step);
    if (pgn_fit_save(j->f, path, j->data.rng.s, &e)) {
        snprintf(err, errlen, "writing the checkpoint: %s", e.msg);
        return -1;
    }
    return j->io->checkpoint(j->io->ctx, path, j->f->step);
}

static int validate(job *j, char *err, size_t errlen)
{
    pgn_fit_val v;
    nn_err e;
    if (!j->n_val)
        return 0;
    if (pgn_fit_validate(j->f, j->val, j->n_val, &v, &e)) {
        snprintf(err, errlen, "%s", e.msg);
        return -1;
    }
    return log_validation(j->f, j->io, &v);
}

static int load_val(job *j, char *err, size_t errlen)
{
    pgn_data vd, *d = &j->data;
    int own = j->p->val_data[0] != 0;
    if (!own && !j->data_open)
        return 0; /* a collection without held-out images: no validation */
    if (own) { /* a separate held-out folder: every file in it is a validation image */
        if (pgn_data_open(&vd, j->p->val_data, 0.0, j->p->seed, err, errlen))
            return -1;
        vd.quiet = 1;
        d = &vd;
    }
    int avail = own ? d->n_train : d->n_val;
    int want = avail < j->p->val_max ? avail : j->p->val_max;
    size_t cnt = (size_t)3 * j->p->size * j->p->size;
    j->val = malloc(((size_t)want + 1) * cnt * sizeof(float));
    int rc = 0;
    if (!j->val) {
        snprintf(err, errlen, "out of memory");
        rc = -1;
    }
    for (int i = 0; !rc && i < avail && j->n_val < want; i++) {
        char msg[1024];
        float *dst = j->val + (size_t)j->n_val * cnt, *img = NULL;
        int r;
        if (own) { /* the same transform as pgn_data_val_image: Resize(size*256/224) + CenterCrop */
            r = pgn_image_load_square(pgn_data_train_path(d, i), j->p->size, &img, msg, sizeof msg) ? 1 : 0;
            if (!r) {
                pgn_to_normalised(dst, img, 1, j->p->size, j->p->size, PGN_SPACE_UNIT);
                free(img);
            }
        } else {
            r = pgn_data_val_image(d, i, j->p->size, dst, msg, sizeof msg);
        }
        if (r < 0) {
            snprintf(err, errlen, "%s", msg);
            rc = -1;
        } else if (r == 0) {
            j->n_val++;
        } else {
            logf_(j->io, "warn", "held-out image skipped: %s", msg);
        }
    }
    if (own)
        pgn_data_close(&vd);
    return rc;
}

static void shard_skipped(void *ctx, const char *file, const char *why)
{
    logf_(ctx, "warn", "collection shard %s skipped: %s", file, why);
}

/* A collection must come from the teacher and space this fit uses: its reader checks. */
static int open_collection(job *j, char *err, size_t errlen)
{
    const pgn_teacher *t = &j->f->teacher;
    char desc[1400];
    pgn_collection_expect want = {pgn_teacher_describe(t, desc, sizeof desc), t->name, t->weights_sha256, t->seed,
                                  PGN_SPACE_NAME_NORMALISED, j->p->size};
    nn_err e;
    if (pgn_shards_open(&j->shards, j->p->collection, &want, j->p->seed, shard_skipped, (void *)j->io, &e)) {
        snprintf(err, errlen, "%s", e.msg);
        return -1;
    }
    const char *pos = pgn_fit_source_pos(j->f);
    if (j->f->step > 0 && pos[0]) { /* resuming: continue where the checkpoint's reader stood */
        pgn_shards_pos ps;
        if (pgn_shards_pos_parse(pos, &ps) || pgn_shards_set_pos(j->shards, &ps, &e)) {
            snprintf(err, errlen, "cannot resume the collection's position '%s': %s", pos,
                     pgn_shards_pos_parse(pos, &ps) ? "malformed" : e.msg);
            return -1;
        }
    }
    size_t n = (size_t)j->p->batch * j->f->cnt * sizeof(float);
    j->yh = malloc(n), j->gt = malloc(n);
    if (!j->yh || !j->gt) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

/* The next training batch: images for the online fit, or pairs with their true gradients. */
static int next_batch(job *j, pgn_fit_stats *st, char *err, size_t errlen)
{
    nn_err e;
    if (j->shards) {
        if (pgn_shards_next_batch(j->shards, j->p->batch, j->yh, j->y, j->gt, &e) ||
            pgn_fit_step_pairs(j->f, j->yh, j->y, j->gt, st, &e)) {
            snprintf(err, errlen, "%s", e.msg);
            return -1;
        }
        return 0;
    }
    char derr[1100];
    long before = j->data.n_skipped;
    if (pgn_data_train_batch(&j->data, j->y, j->p->batch, j->p->size, derr, sizeof derr)) {
        snprintf(err, errlen, "%s", derr);
        return -1;
    }
    if (j->data.n_skipped > before)
        logf_(j->io, "warn", "%ld image file(s) skipped so far; last: %s", j->data.n_skipped, j->data.last_error);
    if (pgn_fit_step(j->f, j->y, st, &e)) {
        snprintf(err, errlen, "%s", e.msg);
        return -1;
    }
    return 0;
}

int pgn_fit_run(const pgn_fit_params *p, const pgn_job_io *io, char *err, size_t errlen)
{
    job j;
    memset(&j, 0, sizeof j);
    j.p = p;
    j.io = io;
    int rc = PGN_FAILED;
    nn_err e;
    /* the data first: an empty or missing folder is an error before any work */
    if (!p->data[0] && !p->collection[0]) {
        snprintf(err, errlen, "a fit needs an image folder (data) or a collection of teacher gradients");
        goto out;
    }
    if (p->data[0]) {
        if (pgn_data_open(&j.data, p->data, p->val_data[0] ? 0.0 : p->val_fraction, p->seed, err, errlen))
            goto out;
        j.data_open = 1;
        j.data.quiet = 1;
        if (pgn_data_set_cache_mb(&j.data, p->image_cache_mb)) {
            snprintf(err, errlen, "image_cache_mb %g: not a size, or out of memory", p->image_cache_mb);
            goto out;
        }
    }
    const char *tw = p->teacher_weights[0] ? p->teacher_weights : io->teacher_weights;
    if (pgn_fit_open(&j.f, p, tw, io->threads, &e)) {
        snprintf(err, errlen, "%s", e.msg);
        goto out;
    }
    if (io->resume_checkpoint && pgn_fit_load(j.f, io->resume_checkpoint, j.data_open ? j.data.rng.s : NULL, &e)) {
        snprintf(err, errlen, "%s", e.msg);
        goto out;
    }
    if (p->collection[0] && open_collection(&j, err, errlen))
        goto out;
    if (load_val(&j, err, errlen))
        goto out;
    char desc[1400], src[1200];
    logf_(io, j.f->teacher.random ? "warn" : "info", "teacher: %s", pgn_teacher_describe(&j.f->teacher, desc, sizeof desc));
    if (j.shards)
        snprintf(src, sizeof src, "the collection %s (%d shards, %lld samples)", p->collection,
                 pgn_shards_count(j.shards), (long long)pgn_shards_samples(j.shards));
    else
        snprintf(src, sizeof src, "%d training images in %s (online autoencoders)", j.data.n_train, p->data);
    logf_(io, "info", "fit %s (%zu parameters, %s head, grad scale %g), batch %d of %dx%d from %s, %d held out%s",
          p->arch, j.f->unet ? pgn_unet_param_count(j.f->unet) : pgn_resnet_param_count(j.f->resnet),
          j.f->head.mode == PGN_PROXY_DIRECT ? "direct" : "proxy", j.f->head.grad_scale, p->batch, p->size, p->size,
          src, j.n_val, j.f->step ? ", resumed" : "");
    if (!j.n_val && p->val_every > 0)
        logf_(io, "warn", "no held-out images: no validation (give val_data)");
    j.y = malloc((size_t)p->batch * j.f->cnt * sizeof(float));
    if (!j.y) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    if (j.f->step == 0 && p->val_every > 0 && validate(&j, err, errlen))
        goto out;
    io->progress(io->ctx, j.f->step, p->steps);
    int64_t last_ck = j.f->step;
    window w = {0};
    pgn_fit_stats st;
    while (j.f->step < p->steps) {
        if (next_batch(&j, &st, err, errlen))
            goto out;
        window_add(&w, &st);
        for (int i = 0; i < PGN_FIT_AES; i++)
            if (st.ae_reset[i])
                logf_(io, "info", "autoencoder %d reset at step %lld (L1 %.4g)", i, (long long)j.f->step, st.ae_l1[i]);
        int64_t s = j.f->step;
        int last = s == p->steps;
        long skipped = j.shards ? pgn_shards_skipped(j.shards) : j.data.n_skipped;
        if ((s % p->log_every == 0 || last) && log_window(j.f, io, &w, &st, skipped))
            goto out;
        if (p->val_every > 0 && (s % p->val_every == 0 || last) && validate(&j, err, errlen))
            goto out;
        if (p->image_every > 0 && (s % p->image_every == 0 || last) && write_fields(&j, err, errlen))
            goto out;
        if (s % p->checkpoint_every == 0 || last) {
            if (checkpoint(&j, err, errlen))
                goto out;
            last_ck = s;
        }
        io->progress(io->ctx, s, p->steps);
        pgn_stop stop = last ? PGN_CONTINUE : io->should_stop(io->ctx);
        if (stop == PGN_STOP_CANCEL) {
            rc = PGN_STOPPED;
            goto out;
        }
        if (stop == PGN_STOP_PAUSE || stop == PGN_STOP_SHUTDOWN) {
            if (last_ck != s && checkpoint(&j, err, errlen))
                goto out;
            rc = PGN_STOPPED;
            goto out;
        }
    }
    if (publish(&j, "pgn-final.safetensors", "model", write_model, err, errlen))
        goto out;
    rc = PGN_DONE;
out:
    if (j.data_open) {
        char cache[256];
        logf_(io, "info", "%s", pgn_data_cache_describe(&j.data, cache, sizeof cache));
    }
    pgn_fit_close(j.f);
    if (j.data_open)
        pgn_data_close(&j.data);
    if (j.shards)
        pgn_shards_close(j.shards);
    free(j.y), free(j.val), free(j.yh), free(j.gt);
    return rc;
}
