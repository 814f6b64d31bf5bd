/* The collect job: see collect.h. */
#include "pgn/collect.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "nn/adam.h"
#include "nn/rng.h"
#include "nn/sha256.h"
#include "nn/weights.h"
#include "pgn/autoencoder.h"
#include "pgn/data.h"
#include "pgn/pgn_net.h"
#include "pgn/state_dict.h"
#include "pgn/teacher.h"

#define PATH_LEN 1200 /* a file in the job folder */

#define CK_FORMAT "pgnd collect checkpoint v1"

struct pgn_collect {
    pgn_collect_params p;
    pgn_collection_info info;
    nn_ctx ctx;
    int ctx_open;
    pgn_teacher teacher;
    int teacher_open;
    pgn_net net;                          /* the driving PGN, when p.pgn is given */
    int net_open;
    int act[PGN_COLLECT_AES], k;          /* active generators, in index order */
    pgn_autoencoder ae[PGN_COLLECT_AES];
    nn_adam opt[PGN_COLLECT_AES];
    int ae_open[PGN_COLLECT_AES];
    double ae_avg;                        /* shared clipping average */
    double ae_best[PGN_COLLECT_AES], ae_best_at[PGN_COLLECT_AES];
    long resets;
    nn_rng rng;                           /* reset draws */
    int64_t step;
    double samples;                       /* samples generated (step * batch) */
    int s;
    size_t cnt;                           /* 3 S S */
    float *yhat, *gt, *gpred;             /* [batch] each; gpred only with a PGN */
    float *out_yhat, *out_gt;             /* where the last step put y_hat and g_true */
    double *loss;                         /* [batch] */
};

void pgn_collect_params_default(pgn_collect_params *p)
{
    memset(p, 0, sizeof *p);
    p->size = 64;
    p->batch = 6;
    p->samples_per_shard = 256;
    p->samples = 1024;
    p->image_cache_mb = PGN_DATA_CACHE_MB_DEFAULT;
    p->generators = 7;
    p->ae_lr = 1e-3;
    p->clip_factor = 5;
    p->clip_init = 200;
    p->clip_ema_weight = 0.01;
    p->ae_plateau_samples = 300000;
    p->ae_reset_prob = 0.01;
    p->ae_reset_l1 = 1e3;
    snprintf(p->generator_precision, sizeof p->generator_precision, "bf16");
}

void pgn_collect_generators_str(unsigned mask, char *buf, size_t len)
{
    size_t at = 0;
    buf[0] = 0;
    for (int i = 0; i < PGN_COLLECT_AES; i++)
        if (mask & (1u << i) && at < len)
            at += (size_t)snprintf(buf + at, len - at, "%sae%d", at ? "," : "", i);
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int popcount3(unsigned m) { return (m & 1) + (m >> 1 & 1) + (m >> 2 & 1); }

static int check_params(const pgn_collect_params *p, nn_err *e)
{
    if (!p->generators || p->generators > 7)
        return nn_errf(e, "generators must name at least one of ae0, ae1, ae2");
    int k = popcount3(p->generators);
    if (p->size < 8 || p->size % 8)
        return nn_errf(e, "size %d must be a positive multiple of 8 (the autoencoders halve it three times)", p->size);
    if (p->batch < k || p->batch % k)
        return nn_errf(e, "batch %d must be a positive multiple of %d (one equal share per generator)", p->batch, k);
    if (p->samples < 1)
        return nn_errf(e, "samples %lld must be at least 1", (long long)p->samples);
    if (p->samples_per_shard < 1)
        return nn_errf(e, "samples_per_shard %d must be at least 1", p->samples_per_shard);
    if (!(p->ae_lr > 0) || !(p->clip_factor > 0) || !(p->clip_init > 0) ||
        !(p->clip_ema_weight > 0 && p->clip_ema_weight <= 1))
        return nn_errf(e, "ae_lr, clip_factor and clip_init must be positive, clip_ema_weight in (0, 1]");
    if (strcmp(p->generator_precision, "bf16") && strcmp(p->generator_precision, "f32"))
        return nn_errf(e, "generator_precision '%s' must be bf16 or f32", p->generator_precision);
    return 0;
}

int pgn_collect_open(pgn_collect **out, const pgn_collect_params *p, const char *teacher_weights, int threads,
                     nn_err *e)
{
    *out = NULL;
    if (check_params(p, e))
        return -1;
    pgn_collect *c = calloc(1, sizeof *c);
    if (!c)
        return nn_errf(e, "out of memory");
    c->p = *p;
    c->s = p->size;
    c->cnt = (size_t)3 * p->size * p->size;
    if (nn_ctx_init(&c->ctx, threads, e))
        goto fail;
    c->ctx_open = 1;
    /* bf16 only where it is native: elsewhere oneDNN would emulate it, slower than f32 */
    const int bf16 = !strcmp(p->generator_precision, "bf16") && nn_conv2d_bf16_native(&c->ctx);
    for (int i = 0; i < PGN_COLLECT_AES; i++) {
        if (!(p->generators & (1u << i)))
            continue;
        c->act[c->k++] = i;
        if (pgn_autoencoder_init(&c->ae[i], i, p->seed + 1 + (uint64_t)i, e))
            goto fail;
        c->ae_open[i] = 1;
        if (pgn_autoencoder_set_bf16(&c->ae[i], bf16, e))
            goto fail;
        int np;
        const nn_param *ps = pgn_autoencoder_params(&c->ae[i], &np);
        if (nn_adam_init(&c->opt[i], ps, np, (float)p->ae_lr, 0.9f, 0.999f, 1e-8f, 0.0f, e))
            goto fail;
        c->ae_best[i] = INFINITY;
        c->ae_best_at[i] = 0;
    }
    if (pgn_teacher_open(&c->teacher, teacher_weights, 0, e))
        goto fail;
    c->teacher_open = 1;
    pgn_collection_info *in = &c->info;
    pgn_teacher_describe(&c->teacher, in->teacher, sizeof in->teacher);
    snprintf(in->teacher_name, sizeof in->teacher_name, "%s", c->teacher.name);
    snprintf(in->teacher_sha256, sizeof in->teacher_sha256, "%s", c->teacher.random ? "" : c->teacher.weights_sha256);
    in->teacher_seed = c->teacher.seed;
    snprintf(in->space, sizeof in->space, PGN_SPACE_NAME_NORMALISED);
    in->size = p->size;
    in->seed = p->seed;
    in->samples_per_shard = p->samples_per_shard;
    in->samples_wanted = p->samples;
    pgn_collect_generators_str(p->generators, in->generators, sizeof in->generators);
    snprintf(in->generator_precision, sizeof in->generator_precision, "%s", bf16 ? "bf16" : "f32");
    in->batch = p->batch;
    snprintf(in->version, sizeof in->version, "%s", PGND_VERSION);
    snprintf(in->driver, sizeof in->driver, "teacher");
    if (p->pgn[0]) {
        if (pgn_net_load(&c->net, p->pgn, e)) {
            nn_err_prefix(e, "pgn");
            goto fail;
        }
        c->net_open = 1;
        char hex[65];
        if (nn_sha256_file(p->pgn, hex)) {
            nn_errf(e, "pgn %s: cannot read it for its checksum: %s", p->pgn, strerror(errno));
            goto fail;
        }
        const char *base = strrchr(p->pgn, '/');
        snprintf(in->driver, sizeof in->driver, "pgn %.200s (%.200s, sha256 %s)", base ? base + 1 : p->pgn, c->net.desc, hex);
    }
    size_t bytes = (size_t)p->batch * c->cnt * sizeof(float);
    c->yhat = malloc(bytes);
    c->gt = malloc(bytes);
    c->gpred = p->pgn[0] ? malloc(bytes) : NULL;
    c->loss = malloc((size_t)p->batch * sizeof(double));
    if (!c->yhat || !c->gt || (p->pgn[0] && !c->gpred) || !c->loss) {
        nn_errf(e, "out of memory (batch %d of %dx%d)", p->batch, p->size, p->size);
        goto fail;
    }
    c->ae_avg = p->clip_init;
    nn_rng_seed(&c->rng, p->seed ^ 0x5eed0f17ULL);
    *out = c;
    return 0;
fail:
    pgn_collect_close(c);
    return -1;
}

void pgn_collect_close(pgn_collect *c)
{
    if (!c)
        return;
    for (int i = 0; i < PGN_COLLECT_AES; i++)
        if (c->ae_open[i]) {
            pgn_autoencoder_free(&c->ae[i]);
            nn_adam_free(&c->opt[i]);
        }
    if (c->teacher_open)
        pgn_teacher_close(&c->teacher);
    if (c->net_open)
        pgn_net_free(&c->net);
    free(c->yhat), free(c->gt), free(c->gpred), free(c->loss);
    if (c->ctx_open)
        nn_ctx_free(&c->ctx);
    free(c);
}

void pgn_collect_last(const pgn_collect *c, const float **y_hat, const float **g_true, const double **loss)
{
    if (y_hat)
        *y_hat = c->out_yhat ? c->out_yhat : c->yhat;
    if (g_true)
        *g_true = c->out_gt ? c->out_gt : c->gt;
    if (loss)
        *loss = c->loss;
}

const pgn_collection_info *pgn_collect_info(const pgn_collect *c) { return &c->info; }
struct pgn_teacher *pgn_collect_teacher(pgn_collect *c) { return &c->teacher; }
struct nn_ctx *pgn_collect_ctx(pgn_collect *c) { return &c->ctx; }

/* ---- one step ---- */

/* mean |a - b| (a generator's L1 error, for the reset rule), in 8 double sums (element q in sum
 * q % 8, so the loop vectorises) added in order: a fixed result. */
static double mean_abs_diff(const float *a, const float *b, size_t n)
{
    double acc[8] = {0}, s = 0;
    size_t q = 0;
    for (; q + 8 <= n; q += 8)
        for (int l = 0; l < 8; l++)
            acc[l] += fabs((double)a[q + l] - b[q + l]);
    for (; q < n; q++)
        acc[q % 8] += fabs((double)a[q] - b[q]);
    for (int l = 0; l < 8; l++)
        s += acc[l];
    return s / (double)n;
}

int pgn_collect_step(pgn_collect *c, const float *y, pgn_collect_stats *st, nn_err *e)
{
    return pgn_collect_step_into(c, y, NULL, NULL, st, e);
}

int pgn_collect_step_into(pgn_collect *c, const float *y, float *yhat, float *gt, pgn_collect_stats *st, nn_err *e)
{
    const pgn_collect_params *p = &c->p;
    int B = p->batch, b = B / c->k, S = c->s;
    size_t cnt = c->cnt;
    memset(st, 0, sizeof *st);
    c->out_yhat = yhat = yhat ? yhat : c->yhat;
    c->out_gt = gt = gt ? gt : c->gt;
    double t0 = now_ms();
    /* 1. each generator reconstructs its share (train mode) */
    for (int j = 0; j < c->k; j++)
        if (pgn_autoencoder_forward(&c->ctx, &c->ae[c->act[j]], y + (size_t)j * b * cnt, b, S, S,
                                    yhat + (size_t)j * b * cnt, e))
            return nn_err_prefix(e, "autoencoder ae%d forward", c->act[j]);
    double t1 = now_ms();
    /* 2. the teacher: P and g_true at y_hat, per sample */
    if (pgn_teacher_set_target(&c->ctx, &c->teacher, y, B, S, S, PGN_SPACE_NORMALISED, e) ||
        pgn_teacher_loss_grad(&c->ctx, &c->teacher, yhat, B, S, S, PGN_SPACE_NORMALISED, c->loss, NULL, gt, e))
        return nn_err_prefix(e, "teacher");
    double t2 = now_ms();
    /* 3. what drives the generators: the true gradient, or a PGN's prediction */
    const float *drive = gt;
    if (c->net_open) {
        if (pgn_net_predict(&c->ctx, &c->net, yhat, y, B, S, S, NULL, c->gpred, e))
            return nn_err_prefix(e, "pgn");
        drive = c->gpred;
    }
    double t3 = now_ms();
    /* 4. the generators step; one shared clipping average, updated with the last one's norm */
    double max = p->clip_factor * c->ae_avg;
    for (int j = 0; j < c->k; j++) {
        int i = c->act[j], np;
        const nn_param *ps = pgn_autoencoder_params(&c->ae[i], &np);
        pgn_autoencoder_zero_grad(&c->ae[i]);
        if (pgn_autoencoder_backward(&c->ctx, &c->ae[i], drive + (size_t)j * b * cnt, e))
            return nn_err_prefix(e, "autoencoder ae%d backward", i);
        st->ae_norm[i] = nn_clip_grad_norm(ps, np, max);
        nn_adam_step(&c->opt[i]);
    }
    for (int j = 0; j < c->k; j++)
        c->ae_avg = (1 - p->clip_ema_weight) * c->ae_avg + p->clip_ema_weight * st->ae_norm[c->act[c->k - 1]];
    st->ae_avg = c->ae_avg;
    double t4 = now_ms();
    /* 5. L1 and resets (§4.1) */
    c->step++;
    c->samples += B;
    for (int j = 0; j < c->k; j++) {
        int i = c->act[j];
        st->ae_l1[i] = mean_abs_diff(yhat + (size_t)j * b * cnt, y + (size_t)j * b * cnt, (size_t)b * cnt);
        if (pgn_autoencoder_reset_if_stale(&c->ae[i], st->ae_l1[i], c->samples, &c->ae_best[i], &c->ae_best_at[i],
                                           p->ae_reset_l1, p->ae_plateau_samples, p->ae_reset_prob, &c->rng)) {
            c->resets++;
            st->ae_reset[i] = 1;
        }
    }
    for (int n = 0; n < B; n++)
        st->loss += c->loss[n] / B;
    st->ms_ae = (t1 - t0) + (t4 - t3);
    st->ms_teacher = t2 - t1;
    st->ms_pgn = t3 - t2;
    st->ms_update = t4 - t3;
    st->ms_total = now_ms() - t0;
    return 0;
}

/* ---- the disk's half of a commit, on its own thread ---- */

/* Files complete under temporary names, each with the name it goes to. */
typedef struct file_list {
    char (*tmp)[PATH_LEN], (*dst)[PATH_LEN];
    int n, cap;
} file_list;

/* A commit's files (its new shards, then the checkpoint), synced and renamed into place
 * (pgn_shard_commit) by a thread while the next steps run: an fsync of a 37 MB shard waits
 * 15-25 ms for the disk here, far longer on a busy or network disk. Only once they are on the disk
 * are the checkpoint recorded and the shards listed in the manifest, on the job's thread, at the
 * next commit or at the end (sync_finish): what is recorded is always on the disk. */
typedef struct syncer {
    file_list files;
    int pending;          /* handed off, not yet recorded */
    int running;          /* a thread to join */
    pthread_t th;
    int nshards, first_new; /* what the commit records */
    int64_t written;
    int rc;               /* the thread's result */
    nn_err e;
} syncer;

static int files_add(file_list *f)
{
    if (f->n == f->cap) {
        int cap = f->cap ? 2 * f->cap : 4;
        char(*t)[PATH_LEN] = realloc(f->tmp, (size_t)cap * sizeof *t);
        if (!t)
            return -1;
        f->tmp = t;
        char(*d)[PATH_LEN] = realloc(f->dst, (size_t)cap * sizeof *d);
        if (!d)
            return -1;
        f->dst = d;
        f->cap = cap;
    }
    f->tmp[f->n][0] = f->dst[f->n][0] = 0;
    return 0;
}

static void files_discard(file_list *f, int from)
{
    for (int i = from; i < f->n; i++)
        if (f->tmp[i][0])
            unlink(f->tmp[i]);
    f->n = 0;
}

static void *sync_main(void *arg)
{
    syncer *s = arg;
    int i = 0;
    for (s->rc = 0; i < s->files.n && !s->rc; i++)
        s->rc = pgn_shard_commit(s->files.tmp[i], s->files.dst[i], &s->e);
    if (s->rc)
        files_discard(&s->files, i);
    return NULL;
}

/* ---- the job's state ---- */

typedef struct job {
    const pgn_collect_params *p;
    const pgn_job_io *io;
    pgn_collect *c;
    pgn_data data;
    int data_open;
    float *y;
    /* the shard being filled */
    float *b_yhat, *b_y, *b_gt, *b_loss;
    int fill;
    /* complete shards */
    pgn_shard_entry *shards;
    int nshards, cap_shards;
    int64_t written;       /* samples in complete shards */
    long dropped;          /* samples with a non-finite value, never stored */
    file_list next;        /* this step's shards, written, not synced yet */
    syncer sync;           /* the last commit's files, being synced */
} job;

static void logf_(const pgn_job_io *io, const char *level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void logf_(const pgn_job_io *io, const char *level, const char *fmt, ...)
{
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    io->log(io->ctx, level, msg);
}

#define PRECISION_ITEM "generator_precision "

/* What must not change across a resume, as one comparable line. */
static void identity(const job *j, char *buf, size_t len)
{
    const pgn_collection_info *in = &j->c->info;
    snprintf(buf, len, "size %d, batch %d, seed %llu, generators %s, samples_per_shard %d, samples %lld, teacher %s, driver %s",
             in->size, in->batch, (unsigned long long)in->seed, in->generators, in->samples_per_shard,
             (long long)in->samples_wanted,
             in->teacher_sha256[0] ? in->teacher_sha256 : "random", in->driver);
    size_t at = strlen(buf);
    if (!in->teacher_sha256[0]) /* the random teacher is identified by its seed */
        at += (size_t)snprintf(buf + at, len - at, " (teacher seed %llu)", (unsigned long long)in->teacher_seed);
    const pgn_collect_params *p = j->p; /* the generators' training: the trajectories depend on it */
    if (at < len)
        at += (size_t)snprintf(buf + at, len - at, ", ae_lr %.9g, clip %.9g x avg (init %.9g, weight %.9g), resets after %.9g samples (p %.9g) or L1 > %.9g",
                 p->ae_lr, p->clip_factor, p->clip_init, p->clip_ema_weight, p->ae_plateau_samples, p->ae_reset_prob,
                 p->ae_reset_l1);
    if (at < len) /* last: a checkpoint written before it existed lacks it (see load_checkpoint) */
        snprintf(buf + at, len - at, ", " PRECISION_ITEM "%s", in->generator_precision);
}

/* Length of the item at s: up to the first ',' outside parentheses. */
static size_t item_len(const char *s)
{
    size_t n = 0;
    for (int depth = 0; s[n] && (depth > 0 || s[n] != ','); n++)
        depth += (s[n] == '(') - (s[n] == ')');
    return n;
}

/* The items (", "-separated) where two identity lines differ, for a message that names only them. */
static void identity_diff(const char *a, const char *b, char *da, size_t la, char *db, size_t lb)
{
    size_t at_a = 0, at_b = 0;
    da[0] = db[0] = 0;
    while (*a || *b) {
        size_t na = item_len(a), nb = item_len(b);
        if ((na != nb || strncmp(a, b, na)) && at_a < la && at_b < lb) {
            at_a += (size_t)snprintf(da + at_a, la - at_a, "%s%.*s", at_a ? ", " : "", (int)na, a);
            at_b += (size_t)snprintf(db + at_b, lb - at_b, "%s%.*s", at_b ? ", " : "", (int)nb, b);
        }
        a += na, b += nb;
        a += strspn(a, ", "), b += strspn(b, ", ");
    }
}

/* ---- checkpoints ---- */

typedef struct ck_set {
    pgn_state_export x[PGN_COLLECT_AES];
    int nx;
    char (*names)[96];
    const nn_tensor **t;
    int nt, first_adam;
    nn_tensor pend[4];
} ck_set;

static void ck_free(ck_set *s)
{
    for (int i = 0; i < s->nx; i++)
        pgn_state_export_free(&s->x[i]);
    free(s->names);
    free(s->t);
}

/* Every tensor of the state: generators (state dicts), their Adam moments, and the `pending`
 * samples already drawn for the next shard. */
static int ck_build(job *j, int pending, ck_set *s, nn_err *e)
{
    pgn_collect *c = j->c;
    memset(s, 0, sizeof *s);
    int cap = 4;
    for (int q = 0; q < c->k; q++) {
        int i = c->act[q];
        char pre[16];
        snprintf(pre, sizeof pre, "ae%d/", i);
        if (pgn_state_export_init(&s->x[q], c->ae[i].mod, c->ae[i].nmod, pre, e)) {
            ck_free(s);
            return -1;
        }
        s->nx++;
        cap += s->x[q].n + 2 * c->opt[i].count;
    }
    s->names = calloc((size_t)cap, sizeof *s->names);
    s->t = calloc((size_t)cap, sizeof *s->t);
    if (!s->names || !s->t) {
        ck_free(s);
        return nn_errf(e, "out of memory");
    }
    for (int q = 0; q < s->nx; q++)
        for (int k = 0; k < s->x[q].n; k++) {
            memcpy(s->names[s->nt], s->x[q].names[k], sizeof s->names[0]);
            s->t[s->nt++] = s->x[q].t[k];
        }
    s->first_adam = s->nt;
    for (int q = 0; q < c->k; q++) {
        int i = c->act[q];
        for (int k = 0; k < c->opt[i].count; k++) {
            snprintf(s->names[s->nt], sizeof s->names[0], "ae%d/adam_m.%d", i, k);
            s->t[s->nt++] = &c->opt[i].m[k];
            snprintf(s->names[s->nt], sizeof s->names[0], "ae%d/adam_v.%d", i, k);
            s->t[s->nt++] = &c->opt[i].v[k];
        }
    }
    if (pending > 0) {
        int64_t img[4] = {pending, 3, c->s, c->s}, one[1] = {pending};
        float *src[4] = {j->b_yhat, j->b_y, j->b_gt, j->b_loss};
        static const char *const pn[4] = {"pending/y_hat", "pending/y", "pending/g_true", "pending/loss"};
        for (int k = 0; k < 4; k++) {
            s->pend[k] = nn_tensor_view(src[k], k == 3 ? 1 : 4, k == 3 ? one : img);
            snprintf(s->names[s->nt], sizeof s->names[0], "%s", pn[k]);
            s->t[s->nt++] = &s->pend[k];
        }
    }
    return 0;
}

/* The shard list as text: one "file count sha256" line per shard. */
static char *shards_text(const job *j)
{
    size_t len = (size_t)j->nshards * 120 + 1;
    char *s = malloc(len), *at = s;
    if (!s)
        return NULL;
    *s = 0;
    for (int i = 0; i < j->nshards; i++)
        at += snprintf(at, len - (size_t)(at - s), "%s %d %s\n", j->shards[i].file, j->shards[i].count,
                       j->shards[i].sha256);
    return s;
}

/* Written unsynced: its temporary name into tmp (PATH_LEN), for the syncer. */
static int save_checkpoint(job *j, const char *path, char *tmp, nn_err *e)
{
    pgn_collect *c = j->c;
    ck_set s;
    if (ck_build(j, j->fill, &s, e))
        return -1;
    const char **names = malloc((size_t)s.nt * sizeof *names);
    char *list = shards_text(j);
    if (!names || !list) {
        free(names), free(list), ck_free(&s);
        return nn_errf(e, "out of memory");
    }
    for (int i = 0; i < s.nt; i++)
        names[i] = s.names[i];
    enum { NK = 16 };
    char v[NK][1400];
    const char *k[NK] = {"format", "identity", "step", "samples_drawn", "avg", "adam_steps", "rng", "data_rng",
                         "ae_best", "ae_best_at", "resets", "written", "fill", "dropped", "pgnd_version", "shards"};
    const char *vv[NK];
    char adam[128] = "", best[160] = "", best_at[160] = "";
    for (int q = 0; q < c->k; q++) {
        int i = c->act[q];
        size_t a = strlen(adam), b = strlen(best), d = strlen(best_at);
        snprintf(adam + a, sizeof adam - a, "%s%ld", q ? " " : "", c->opt[i].step);
        snprintf(best + b, sizeof best - b, "%s%.17g", q ? " " : "", c->ae_best[i]);
        snprintf(best_at + d, sizeof best_at - d, "%s%.17g", q ? " " : "", c->ae_best_at[i]);
    }
    snprintf(v[0], sizeof v[0], CK_FORMAT);
    identity(j, v[1], sizeof v[1]);
    snprintf(v[2], sizeof v[2], "%lld", (long long)c->step);
    snprintf(v[3], sizeof v[3], "%.17g", c->samples);
    snprintf(v[4], sizeof v[4], "%.17g", c->ae_avg);
    snprintf(v[5], sizeof v[5], "%s", adam);
    snprintf(v[6], sizeof v[6], "%u %u %u %u", c->rng.s[0], c->rng.s[1], c->rng.s[2], c->rng.s[3]);
    snprintf(v[7], sizeof v[7], "%u %u %u %u", j->data.rng.s[0], j->data.rng.s[1], j->data.rng.s[2], j->data.rng.s[3]);
    snprintf(v[8], sizeof v[8], "%s", best);
    snprintf(v[9], sizeof v[9], "%s", best_at);
    snprintf(v[10], sizeof v[10], "%ld", c->resets);
    snprintf(v[11], sizeof v[11], "%lld", (long long)j->written);
    snprintf(v[12], sizeof v[12], "%d", j->fill);
    snprintf(v[13], sizeof v[13], "%ld", j->dropped);
    snprintf(v[14], sizeof v[14], "%s", PGND_VERSION);
    for (int i = 0; i < NK - 1; i++)
        vv[i] = v[i];
    vv[NK - 1] = list;
    int rc = nn_safetensors_write_unsynced(path, s.nt, names, s.t, NK, k, vv, NULL, tmp, PATH_LEN, e);
    free(names), free(list), ck_free(&s);
    return rc;
}

static const char *meta_str(const nn_weights *w, const char *k)
{
    const nn_weight_meta *m = nn_weights_meta(w, k);
    return m ? m->str : NULL;
}

static int grow_shards(job *j)
{
    if (j->nshards < j->cap_shards)
        return 0;
    int cap = j->cap_shards ? 2 * j->cap_shards : 64;
    pgn_shard_entry *s = realloc(j->shards, (size_t)cap * sizeof *s);
    if (!s)
        return -1;
    j->shards = s, j->cap_shards = cap;
    return 0;
}

/* Reads n space-separated numbers of `key`. */
static int parse_doubles(const char *s, double *out, int n)
{
    char *end;
    for (int i = 0; i < n; i++) {
        if (!s)
            return -1;
        out[i] = strtod(s, &end);
        if (end == s)
            return -1;
        s = end;
    }
    return 0;
}

static int load_checkpoint(job *j, const char *path, nn_err *e)
{
    pgn_collect *c = j->c;
    nn_weights w;
    if (nn_weights_read(&w, path, e))
        return nn_err_prefix(e, "cannot resume");
    int rc = 0;
    const char *fmt = meta_str(&w, "format"), *id = meta_str(&w, "identity");
    const char *need[] = {"step", "samples_drawn", "avg", "adam_steps", "rng", "data_rng", "ae_best", "ae_best_at",
                          "resets", "written", "fill", "dropped", "shards"};
    char mine[1400], old[1400];
    identity(j, mine, sizeof mine);
    if (id && !strstr(id, PRECISION_ITEM)) { /* written before the field existed: its generators ran in f32 */
        snprintf(old, sizeof old, "%s, " PRECISION_ITEM "f32", id);
        id = old;
    }
    if (!fmt || strcmp(fmt, CK_FORMAT) || !id) {
        rc = nn_errf(e, "%s is not a pgnd collect checkpoint", path);
    } else if (strcmp(id, mine)) {
        char had[700], has[700];
        identity_diff(id, mine, had, sizeof had, has, sizeof has);
        rc = nn_errf(e, "%s was made by a collect with %s; this one has %s", path, had, has);
    }
    for (size_t i = 0; !rc && i < sizeof need / sizeof *need; i++)
        if (!meta_str(&w, need[i]))
            rc = nn_errf(e, "%s lacks its '%s' metadata", path, need[i]);
    int fill = rc ? 0 : atoi(meta_str(&w, "fill"));
    if (!rc && (fill < 0 || fill >= j->p->samples_per_shard))
        rc = nn_errf(e, "%s holds %d pending samples, more than a shard", path, fill);
    ck_set s;
    if (!rc && ck_build(j, 0, &s, e))
        rc = -1;
    if (!rc) {
        for (int q = 0; !rc && q < s.nx; q++)
            rc = pgn_state_export_read(&s.x[q], &w, e);
        for (int i = s.first_adam; !rc && i < s.nt; i++)
            rc = nn_weights_get_f32(&w, s.names[i], (nn_tensor *)s.t[i], e);
        ck_free(&s);
    }
    if (!rc && fill > 0) {
        int64_t img[4] = {fill, 3, c->s, c->s}, one[1] = {fill};
        float *dst[4] = {j->b_yhat, j->b_y, j->b_gt, j->b_loss};
        static const char *const pn[4] = {"pending/y_hat", "pending/y", "pending/g_true", "pending/loss"};
        for (int k = 0; !rc && k < 4; k++) {
            nn_tensor t = nn_tensor_view(dst[k], k == 3 ? 1 : 4, k == 3 ? one : img);
            rc = nn_weights_get_f32(&w, pn[k], &t, e);
        }
    }
    if (rc) {
        nn_err_prefix(e, "cannot resume");
        nn_weights_free(&w);
        return -1;
    }
    /* the scalars */
    double adam[PGN_COLLECT_AES], best[PGN_COLLECT_AES], best_at[PGN_COLLECT_AES], rng[4], drng[4];
    if (parse_doubles(meta_str(&w, "adam_steps"), adam, c->k) || parse_doubles(meta_str(&w, "ae_best"), best, c->k) ||
        parse_doubles(meta_str(&w, "ae_best_at"), best_at, c->k) || parse_doubles(meta_str(&w, "rng"), rng, 4) ||
        parse_doubles(meta_str(&w, "data_rng"), drng, 4)) {
        nn_weights_free(&w);
        return nn_errf(e, "cannot resume: %s has malformed state metadata", path);
    }
    for (int q = 0; q < c->k; q++) {
        int i = c->act[q];
        c->opt[i].step = (long)adam[q];
        c->ae_best[i] = best[q];
        c->ae_best_at[i] = best_at[q];
    }
    for (int i = 0; i < 4; i++) {
        c->rng.s[i] = (uint32_t)rng[i];
        j->data.rng.s[i] = (uint32_t)drng[i];
    }
    c->step = atoll(meta_str(&w, "step"));
    c->samples = atof(meta_str(&w, "samples_drawn"));
    c->ae_avg = atof(meta_str(&w, "avg"));
    c->resets = atol(meta_str(&w, "resets"));
    j->written = atoll(meta_str(&w, "written"));
    j->dropped = atol(meta_str(&w, "dropped"));
    j->fill = fill;
    /* the shard list: the checkpoint's, whatever the manifest says (newer shards are regenerated) */
    j->nshards = 0;
    const char *l = meta_str(&w, "shards");
    int64_t total = 0;
    while (!rc && *l) {
        if (grow_shards(j)) {
            rc = nn_errf(e, "out of memory");
            break;
        }
        pgn_shard_entry *d = &j->shards[j->nshards];
        char expect[40];
        int used = 0;
        pgn_shard_name(expect, sizeof expect, j->nshards);
        if (sscanf(l, "%39s %d %64s%n", d->file, &d->count, d->sha256, &used) != 3 || strcmp(d->file, expect) ||
            d->count < 1 || strlen(d->sha256) != 64)
            rc = nn_errf(e, "cannot resume: %s has a malformed shard list at shard %d", path, j->nshards);
        total += d->count;
        j->nshards++;
        l += used;
        while (*l == '\n' || *l == ' ')
            l++;
    }
    if (!rc && total != j->written)
        rc = nn_errf(e, "cannot resume: %s lists %lld samples in its shards but says %lld were written", path,
                     (long long)total, (long long)j->written);
    nn_weights_free(&w);
    return rc;
}

/* ---- the job ---- */

typedef struct window {
    int steps;
    int64_t samples;       /* placed into shards */
    double t0, ms_total, ms_teacher, ms_ae, ms_pgn, ms_update, ms_data, ms_write, loss_sum;
} window;

#define MAXK 24
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

static int log_window(job *j, window *w, const pgn_collect_stats *last)
{
    double n = w->steps ? w->steps : 1, wall = (now_ms() - w->t0) / 1e3;
    static const char *const l1[PGN_COLLECT_AES] = {"ae0_l1", "ae1_l1", "ae2_l1"};
    kv m = {0};
    put(&m, "samples", (double)j->written);
    put(&m, "shards", j->nshards);
    put(&m, "samples_per_s", wall > 0 ? (double)w->samples / wall : 0);
    put(&m, "loss", w->samples ? w->loss_sum / (double)w->samples : 0);
    put(&m, "step_ms", w->ms_total / n);
    put(&m, "teacher_ms", w->ms_teacher / n);
    put(&m, "ae_ms", w->ms_ae / n);
    if (j->c->net_open)
        put(&m, "pgn_ms", w->ms_pgn / n);
    put(&m, "data_ms", w->ms_data / n);
    put(&m, "write_ms", w->ms_write);
    for (int q = 0; q < j->c->k; q++)
        put(&m, l1[j->c->act[q]], last->ae_l1[j->c->act[q]]);
    put(&m, "ae_clip_avg", j->c->ae_avg);
    put(&m, "ae_resets", (double)j->c->resets);
    put(&m, "dropped_nonfinite", (double)j->dropped);
    put(&m, "data_skipped", (double)j->data.n_skipped);
    put(&m, "rss_mb", rss_mb());
    double t0 = now_ms();
    memset(w, 0, sizeof *w);
    w->t0 = t0;
    return j->io->metrics(j->io->ctx, j->written, m.n, m.k, m.v);
}

/* n floats from src to dst, which may be the same place or overlap (a sample moved down). */
static void place(float *dst, const float *src, size_t n)
{
    if (dst != src)
        memmove(dst, src, n * sizeof(float));
}

static int finite_row(const float *a, size_t n)
{
    /* the exponent bits, without an early exit, so the loop vectorises (rows are nearly always
     * finite, and the job checks every row of every step) */
    uint32_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, a + i, sizeof u);
        bad |= (u & 0x7f800000u) == 0x7f800000u;
    }
    return !bad;
}

/* The shard in the buffer, written (unsynced: into j->next for the next commit). */
static int write_shard(job *j, char *err, size_t errlen)
{
    nn_err e;
    if (grow_shards(j) || files_add(&j->next)) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    file_list *f = &j->next;
    pgn_shard_entry *ent = &j->shards[j->nshards];
    if (pgn_shard_write_unsynced(j->io->dir, &j->c->info, j->nshards, j->fill, j->b_yhat, j->b_y, j->b_gt,
                                 j->b_loss, ent, f->tmp[f->n], PATH_LEN, &e)) {
        snprintf(err, errlen, "%s", e.msg);
        return -1;
    }
    snprintf(f->dst[f->n], PATH_LEN, "%s/%s", j->io->dir, ent->file);
    f->n++;
    j->nshards++;
    j->written += j->fill;
    j->fill = 0;
    return 0;
}

static void checkpoint_path(const job *j, int nshards, char *path)
{
    snprintf(path, PATH_LEN, "%s/collect-checkpoint-%06d.safetensors", j->io->dir, nshards);
}

static int sync_finish(job *j, char *err, size_t errlen);

/* After a step that wrote shards: the previous commit finished and recorded (sync_finish), this
 * step's checkpoint (unsynced), then the step's files to the syncer's thread. */
static int handoff(job *j, int first_new, char *err, size_t errlen)
{
    nn_err e;
    if (sync_finish(j, err, errlen))
        return -1;
    file_list *f = &j->next;
    if (files_add(f)) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    checkpoint_path(j, j->nshards, f->dst[f->n]);
    if (save_checkpoint(j, f->dst[f->n], f->tmp[f->n], &e)) {
        snprintf(err, errlen, "writing the checkpoint: %s", e.msg);
        return -1;
    }
    f->n++;
    syncer *s = &j->sync;
    file_list done = s->files; /* the finished commit's lists, reused for the next step */
    s->files = *f;
    done.n = 0;
    *f = done;
    s->pending = 1;
    s->nshards = j->nshards, s->first_new = first_new, s->written = j->written;
    s->running = pthread_create(&s->th, NULL, sync_main, s) == 0;
    if (!s->running) /* no thread to be had: the job's thread waits for the disk itself */
        sync_main(s);
    return 0;
}

/* Waits for the commit handed off last, then records it: the checkpoint, the manifest, the
 * artifacts. Nothing pending: nothing to do. */
static int sync_finish(job *j, char *err, size_t errlen)
{
    syncer *s = &j->sync;
    if (!s->pending)
        return 0;
    if (s->running) {
        pthread_join(s->th, NULL);
        s->running = 0;
    }
    s->pending = 0;
    if (s->rc) {
        snprintf(err, errlen, "%s", s->e.msg);
        return -1;
    }
    char path[PATH_LEN], mpath[PATH_LEN];
    nn_err e;
    checkpoint_path(j, s->nshards, path);
    if (j->io->checkpoint(j->io->ctx, path, s->written)) {
        snprintf(err, errlen, "recording the checkpoint %s failed", path);
        return -1;
    }
    if (pgn_manifest_write(j->io->dir, &j->c->info, j->shards, s->nshards, s->written >= j->p->samples, &e)) {
        snprintf(err, errlen, "%s", e.msg);
        return -1;
    }
    for (int i = s->first_new; i < s->nshards; i++) {
        snprintf(path, sizeof path, "%s/%s", j->io->dir, j->shards[i].file);
        if (j->io->artifact(j->io->ctx, j->shards[i].file, path, "shard", s->written)) {
            snprintf(err, errlen, "publishing %s failed", path);
            return -1;
        }
    }
    snprintf(mpath, sizeof mpath, "%s/%s", j->io->dir, PGN_MANIFEST_NAME);
    if (j->io->artifact(j->io->ctx, PGN_MANIFEST_NAME, mpath, "manifest", s->written)) {
        snprintf(err, errlen, "publishing %s failed", mpath);
        return -1;
    }
    logf_(j->io, "info", "shard %d written (%lld of %lld samples)", s->nshards - 1, (long long)s->written,
          (long long)j->p->samples);
    return 0;
}

/* Temporary files of shards and checkpoints that a killed run left in dir (never recorded, never
 * listed: a resume writes them again). */
static void remove_stale_tmp(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    char path[PATH_LEN];
    for (struct dirent *de; (de = readdir(d));)
        if ((!strncmp(de->d_name, "shard-", 6) || !strncmp(de->d_name, "collect-checkpoint-", 19)) &&
            strstr(de->d_name, ".safetensors.tmp-")) {
            snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
            unlink(path);
        }
    closedir(d);
}

static void job_free(job *j)
{
    if (j->sync.running) /* a failed job: its last commit is not recorded (a resume redoes it) */
        pthread_join(j->sync.th, NULL);
    files_discard(&j->next, 0);
    free(j->next.tmp), free(j->next.dst), free(j->sync.files.tmp), free(j->sync.files.dst);
    pgn_collect_close(j->c);
    if (j->data_open)
        pgn_data_close(&j->data);
    free(j->y), free(j->b_yhat), free(j->b_y), free(j->b_gt), free(j->b_loss), free(j->shards);
}

int pgn_collect_run(const pgn_collect_params *p, const pgn_job_io *io, char *err, size_t errlen)
{
    job j;
    memset(&j, 0, sizeof j);
    j.p = p;
    j.io = io;
    int rc = PGN_FAILED;
    nn_err e;
    if (check_params(p, &e)) {
        snprintf(err, errlen, "%s", e.msg);
        return PGN_FAILED;
    }
    /* the data first: an empty or missing folder is an error before any work */
    if (pgn_data_open(&j.data, p->data, 0.0, p->seed, err, errlen))
        goto out;
    j.data_open = 1;
    j.data.quiet = 1;
    if (pgn_data_set_cache_mb(&j.data, p->image_cache_mb)) {
        snprintf(err, errlen, "image_cache_mb %g: not a size, or out of memory", p->image_cache_mb);
        goto out;
    }
    if (!io->resume_checkpoint) {
        /* a fresh start never silently replaces another collection's shards */
        pgn_collection_info old;
        pgn_shard_entry *olds = NULL;
        int n_old = 0;
        char mpath[1200];
        snprintf(mpath, sizeof mpath, "%s/%s", io->dir, PGN_MANIFEST_NAME);
        if (!access(mpath, F_OK)) {
            if (pgn_manifest_read(io->dir, &old, &olds, &n_old, NULL, &e) == 0)
                free(olds);
            else
                n_old = 1; /* unreadable: not ours to overwrite either */
        }
        if (n_old > 0) {
            snprintf(err, errlen, "%s already holds a collection (%s); resume it from its checkpoint or collect into another folder",
                     io->dir, mpath);
            goto out;
        }
    }
    remove_stale_tmp(io->dir);
    const char *tw = p->teacher_weights[0] ? p->teacher_weights : io->teacher_weights;
    if (pgn_collect_open(&j.c, p, tw, io->threads, &e)) {
        snprintf(err, errlen, "%s", e.msg);
        goto out;
    }
    size_t cnt = j.c->cnt, sps = (size_t)p->samples_per_shard;
    j.y = malloc((size_t)p->batch * cnt * sizeof(float));
    j.b_yhat = malloc(sps * cnt * sizeof(float));
    j.b_y = malloc(sps * cnt * sizeof(float));
    j.b_gt = malloc(sps * cnt * sizeof(float));
    j.b_loss = malloc(sps * sizeof(float));
    if (!j.y || !j.b_yhat || !j.b_y || !j.b_gt || !j.b_loss) {
        snprintf(err, errlen, "out of memory (shards of %d samples of %dx%d)", p->samples_per_shard, p->size, p->size);
        goto out;
    }
    if (io->resume_checkpoint) {
        if (load_checkpoint(&j, io->resume_checkpoint, &e)) {
            snprintf(err, errlen, "%s", e.msg);
            goto out;
        }
    }
    /* the manifest says what is complete now (on resume: the checkpoint's shards) */
    if (pgn_manifest_write(io->dir, &j.c->info, j.shards, j.nshards, j.written >= p->samples, &e)) {
        snprintf(err, errlen, "%s", e.msg);
        goto out;
    }
    char gens[32];
    pgn_collect_generators_str(p->generators, gens, sizeof gens);
    logf_(io, j.c->teacher.random ? "warn" : "info", "teacher: %s", j.c->info.teacher);
    logf_(io, "info", "collect %lld samples of %dx%d into %s (shards of %d), generators %s in %s driven by %s, batch %d, %d images in %s%s",
          (long long)p->samples, p->size, p->size, io->dir, p->samples_per_shard, gens, j.c->info.generator_precision,
          j.c->info.driver, p->batch, j.data.n_train, p->data, io->resume_checkpoint ? ", resumed" : "");
    if (strcmp(p->generator_precision, j.c->info.generator_precision))
        logf_(io, "warn", "generator_precision %s asked for, but this CPU has no native bf16 kernels: the generators run in f32",
              p->generator_precision);
    if (io->resume_checkpoint)
        logf_(io, "info", "resumed with %d complete shard(s) (%lld samples written, %d drawn for the next)", j.nshards, (long long)j.written,
              j.fill);
    io->progress(io->ctx, j.written + j.fill, p->samples);
    window w;
    memset(&w, 0, sizeof w);
    w.t0 = now_ms();
    pgn_collect_stats st;
    memset(&st, 0, sizeof st);
    long skipped_reported = j.data.n_skipped;
    int B = p->batch;
    while (j.written < p->samples) {
        char derr[1100];
        /* A step that fits in the shard being filled draws its batch and has y_hat and g_true
         * written straight into it (no copies); one that straddles two shards goes through the
         * collect's own buffers. */
        const int direct = j.fill + B <= p->samples_per_shard;
        const size_t at = (size_t)j.fill * cnt;
        float *y = direct ? j.b_y + at : j.y;
        double t0 = now_ms();
        if (pgn_data_train_batch(&j.data, y, B, p->size, derr, sizeof derr)) {
            snprintf(err, errlen, "%s", derr);
            goto out;
        }
        w.ms_data += now_ms() - t0;
        if (j.data.n_skipped > skipped_reported) {
            logf_(io, "warn", "%ld image file(s) skipped so far; last: %s", j.data.n_skipped, j.data.last_error);
            skipped_reported = j.data.n_skipped;
        }
        if (pgn_collect_step_into(j.c, y, direct ? j.b_yhat + at : NULL, direct ? j.b_gt + at : NULL, &st, &e)) {
            snprintf(err, errlen, "%s", e.msg);
            goto out;
        }
        w.steps++;
        w.ms_total += st.ms_total, w.ms_teacher += st.ms_teacher, w.ms_ae += st.ms_ae, w.ms_pgn += st.ms_pgn;
        w.ms_update += st.ms_update;
        for (int q = 0; q < j.c->k; q++)
            if (st.ae_reset[j.c->act[q]])
                logf_(io, "info", "autoencoder ae%d reset after %.0f samples (L1 %.4g)", j.c->act[q], j.c->samples,
                      st.ae_l1[j.c->act[q]]);
        /* the step's samples into the shard buffer, shards written as they fill */
        int first_new = j.nshards;
        const float *yh_all, *g_all;
        pgn_collect_last(j.c, &yh_all, &g_all, NULL);
        for (int n = 0; n < B && j.written + j.fill < p->samples; n++) {
            const float *yh = yh_all + (size_t)n * cnt, *g = g_all + (size_t)n * cnt;
            if (!isfinite(j.c->loss[n]) || !finite_row(yh, cnt) || !finite_row(g, cnt)) {
                j.dropped++; /* a diverged generator's output is no training sample */
                continue;
            }
            /* in place already unless written aside or moved down past a dropped sample */
            place(j.b_yhat + (size_t)j.fill * cnt, yh, cnt);
            place(j.b_y + (size_t)j.fill * cnt, y + (size_t)n * cnt, cnt);
            place(j.b_gt + (size_t)j.fill * cnt, g, cnt);
            j.b_loss[j.fill] = (float)j.c->loss[n];
            w.loss_sum += j.c->loss[n];
            w.samples++;
            j.fill++;
            if (j.fill == p->samples_per_shard || j.written + j.fill == p->samples) {
                double tw0 = now_ms();
                if (write_shard(&j, err, errlen))
                    goto out;
                w.ms_write += now_ms() - tw0;
            }
        }
        if (j.nshards > first_new) {
            double tw0 = now_ms();
            if (handoff(&j, first_new, err, errlen))
                goto out;
            w.ms_write += now_ms() - tw0;
            if (log_window(&j, &w, &st))
                goto out;
        }
        io->progress(io->ctx, j.written + j.fill, p->samples);
        if (j.written >= p->samples)
            break;
        if (io->should_stop(io->ctx) != PGN_CONTINUE) {
            /* the last checkpoint is the last complete shard's: once on the disk and recorded,
             * nothing else to save */
            rc = sync_finish(&j, err, errlen) ? PGN_FAILED : PGN_STOPPED;
            goto out;
        }
    }
    rc = sync_finish(&j, err, errlen) ? PGN_FAILED : PGN_DONE;
out:
    if (j.data_open) {
        char cache[256];
        logf_(io, "info", "%s", pgn_data_cache_describe(&j.data, cache, sizeof cache));
    }
    job_free(&j);
    return rc;
}
