/* How a long-running method (fit, train, collect) talks to whoever runs it: the daemon's worker
 * or `pgnd run` in the foreground. pgn/ knows nothing of SQLite or HTTP; it calls these. */
#ifndef PGN_JOB_H
#define PGN_JOB_H

#include <stdint.h>

typedef enum pgn_stop {
    PGN_CONTINUE = 0,
    PGN_STOP_CANCEL = 1,   /* stop now, no checkpoint needed */
    PGN_STOP_PAUSE = 2,    /* write a checkpoint, then return PGN_STOPPED */
    PGN_STOP_SHUTDOWN = 3, /* the daemon is stopping: checkpoint, return PGN_STOPPED; it resumes later */
} pgn_stop;

/* Return values of a job's run function. */
#define PGN_DONE 0
#define PGN_FAILED -1
#define PGN_STOPPED 1 /* stopped on request (see pgn_job_io.should_stop) */

typedef struct pgn_job_io {
    void *ctx;
    const char *dir;          /* the job's own directory (exists) */
    int threads;              /* OpenMP threads for this job */
    const char *teacher_weights; /* from the daemon's config ("" = random teacher) */
    /* Resume point: the checkpoint the run must continue from, or NULL for a fresh start. */
    const char *resume_checkpoint;
    int64_t resume_step;
    int (*metrics)(void *ctx, int64_t step, int n, const char *const *keys, const double *values);
    int (*progress)(void *ctx, int64_t step, int64_t total_steps);
    /* A finished file under dir (written atomically) to publish as an artifact. */
    int (*artifact)(void *ctx, const char *name, const char *path, const char *kind, int64_t step);
    /* A durable checkpoint file for step: recorded only after this returns 0. */
    int (*checkpoint)(void *ctx, const char *path, int64_t step);
    pgn_stop (*should_stop)(void *ctx);
    void (*log)(void *ctx, const char *level, const char *msg);
} pgn_job_io;

#endif
