/* The collect job: a reusable collection of teacher gradients (issue 5; spec/method.md §2.2-2.3,
 * §3.4, §4.1), written as shards (pgn/shards.h) into the job's folder.
 *
 * One step on a data batch y of B target crops (pgn_data_train_batch; normalised space; B a multiple
 * of the k active generators, generator j of the mix gets samples [j*B/k, (j+1)*B/k)):
 *   1. y_hat_j = A_j(y_j)                    autoencoders (spec §3.4) in train mode
 *   2. loss, g_true = P(y_hat, y), dP/dy_hat  the teacher, per sample (pgn/teacher.h)
 *   3. the samples (y_hat, y, g_true, loss) go into the current shard buffer
 *   4. the autoencoders step on g_true, or on the prediction of a given PGN (pgn_net_predict on
 *      (y_hat, y)), as fit does: max = clip_factor * ae_avg, per generator zero grads, backward,
 *      clip_grad_norm, Adam; then ae_avg is updated k times with the last generator's norm (the
 *      official code's shared-average quirk, as pgn/fit.h)
 *   5. resets (§4.1), as fit: L1 > reset_l1 -> reset; no new best L1 for plateau_samples samples ->
 *      reset with probability reset_prob (one draw per generator per step, only then).
 * Autoencoder ae<i> is max_layer i, seeded seed+1+i (as fit); the reset RNG seed ^ 0x5eed0f17; the
 * data seed. A step's samples may straddle two shards; the last shard holds what is left of
 * `samples` (extra samples of the last step are dropped).
 *
 * After a step that filled shards: the shard files and the collect checkpoint (generators' weights,
 * BN statistics, Adam moments and steps, clipping average, reset tracking, the reset and data RNGs,
 * the shard list, and the samples already drawn for the next shard), each complete under a
 * temporary name; metrics. A thread then syncs them and renames them into place (shards first)
 * while the next steps run; at the next such step, or at the end, or on a stop request, the job
 * waits for it and only then records what it made: io->checkpoint, the manifest, artifacts. What
 * is recorded or listed is therefore always on the disk; the metrics and the progress run one
 * commit ahead of it. The manifest is rewritten from the checkpoint's shard list on resume, so a
 * shard newer than the checkpoint is regenerated, and temporary files a killed run left behind are
 * removed at the start. A resumed run therefore writes the remaining shards byte for byte as an
 * uninterrupted run with the same parameters and thread count. Stop requests are honoured after
 * any step; the run continues from the last complete shard. */
#ifndef PGN_COLLECT_H
#define PGN_COLLECT_H

#include <stddef.h>
#include <stdint.h>

#include "nn/err.h"
#include "pgn/job.h"
#include "pgn/shards.h"

#define PGN_COLLECT_AES 3

typedef struct pgn_collect_params {
    char data[1024];            /* image folder (PNG/JPEG, recursive) */
    char teacher_weights[1024]; /* "" = the runner's default (or a random teacher) */
    char pgn[1024];             /* PGN checkpoint that drives the generators; "" = the true gradient */
    int size;                   /* crop side, a multiple of 8 */
    int batch;                  /* samples per step, a multiple of the active generators */
    int samples_per_shard;
    int64_t samples;            /* samples wanted */
    uint64_t seed;
    double image_cache_mb;      /* decoded training images kept in memory (pgn_data_set_cache_mb) */
    unsigned generators;        /* bit i: ae<i> generates (default 7: all three, equal shares) */
    double ae_lr;
    double clip_factor, clip_init, clip_ema_weight;
    double ae_plateau_samples, ae_reset_prob, ae_reset_l1;
    char generator_precision[8]; /* "bf16": the generators' dense convolutions multiply in bf16
                                  * (pgn_autoencoder_set_bf16) where the CPU has bf16 kernels, else
                                  * f32; "f32": all f32, as PyTorch. The teacher is always f32. */
} pgn_collect_params;

/* Size 64, batch 6, 256 samples per shard, 1024 samples, seed 0, all three generators in bf16,
 * Adam lr 1e-3, clipping 5 x average (init 200, weight 0.01), resets after 300,000 samples (p 0.01)
 * or above L1 1e3. */
void pgn_collect_params_default(pgn_collect_params *p);
/* "ae0,ae2" for mask 5. */
void pgn_collect_generators_str(unsigned mask, char *buf, size_t len);

typedef struct pgn_collect_stats {
    double loss;                    /* mean teacher P over the step's samples */
    double ae_l1[PGN_COLLECT_AES];  /* mean |y_hat_i - y_i| (inactive: 0) */
    double ae_norm[PGN_COLLECT_AES], ae_avg;
    int ae_reset[PGN_COLLECT_AES];
    double ms_total, ms_ae, ms_teacher, ms_pgn, ms_update;
} pgn_collect_stats;

typedef struct pgn_collect pgn_collect;

/* Builds the active autoencoders with their optimisers, the teacher (teacher_weights NULL or "":
 * random, seed 0) and the driving PGN (p->pgn). threads: OpenMP threads (0 = default). */
int pgn_collect_open(pgn_collect **out, const pgn_collect_params *p, const char *teacher_weights, int threads,
                     nn_err *e);
void pgn_collect_close(pgn_collect *c);
/* One step on y [batch, 3, size, size] (normalised). The step's samples stay readable until the
 * next step: pgn_collect_last (after pgn_collect_step_into, that points into the caller's
 * buffers, valid as long as the caller leaves them). */
int pgn_collect_step(pgn_collect *c, const float *y, pgn_collect_stats *st, nn_err *e);
/* The same, with y_hat and g_true ([batch, 3, S, S] each, NULL: the collect's own buffers) written
 * straight where the caller keeps them (the job: into the shard being filled, no copy). They must
 * not overlap y or each other (y is read after y_hat is written). */
int pgn_collect_step_into(pgn_collect *c, const float *y, float *y_hat, float *g_true, pgn_collect_stats *st,
                          nn_err *e);
/* The last step's y_hat, g_true ([batch, 3, S, S]) and per-sample loss ([batch]). */
void pgn_collect_last(const pgn_collect *c, const float **y_hat, const float **g_true, const double **loss);
/* The collection identity this collect writes (teacher, space, size, seed, mix, driver, version). */
const pgn_collection_info *pgn_collect_info(const pgn_collect *c);
/* The teacher (for tests and the bench: the bare teacher cost on the same batches). */
struct pgn_teacher *pgn_collect_teacher(pgn_collect *c);
struct nn_ctx *pgn_collect_ctx(pgn_collect *c);

/* The job: data, steps, shards, manifest, metrics, checkpoints, resume (pgn/job.h). The collection
 * is written into io->dir. */
int pgn_collect_run(const pgn_collect_params *p, const pgn_job_io *io, char *err, size_t errlen);

#endif
