/* pgnd's SQLite store: jobs, metrics, events, artifacts, checkpoints and API tokens.
 *
 * One pgnd_store per process, shared by all threads (SQLite serialized mode + one connection
 * guarded by a mutex inside; WAL, busy_timeout 5 s, BEGIN IMMEDIATE for every write).
 * Numbered migrations (migrations/NNN_*.sql, compiled into the binary) are applied at open and
 * recorded in table schema_migrations; a database whose schema is newer than the binary knows is
 * refused with a message naming both versions.
 *
 * Conventions: functions return 0 on success, -1 on error (err filled, never exit()), and where
 * documented a positive code (STORE_NOT_FOUND, STORE_CONFLICT, STORE_FULL). Times are Unix
 * milliseconds. Strings returned inside structs are malloc'ed and freed by the *_free helpers.
 * The store knows nothing of HTTP or tensors. */
#ifndef PGND_STORE_H
#define PGND_STORE_H

#include <stddef.h>
#include <stdint.h>

#define STORE_NOT_FOUND 1
#define STORE_CONFLICT 2 /* illegal state transition */
#define STORE_FULL 3     /* queue limit reached */

typedef struct pgnd_store pgnd_store;

typedef struct store_err {
    char msg[512];
} store_err;

int store_open(pgnd_store **s, const char *path, store_err *err);
void store_close(pgnd_store *s);
int store_schema_version(pgnd_store *s);   /* applied migrations */
int store_schema_known(void);              /* the newest migration this binary has */
int64_t store_now_ms(void);

/* ---- jobs ----
 * States: queued -> running -> succeeded | failed | cancelled; running <-> paused (via queued:
 * pause = running -> paused, resume = paused -> queued). */
typedef enum job_state {
    JOB_QUEUED, JOB_RUNNING, JOB_PAUSED, JOB_SUCCEEDED, JOB_FAILED, JOB_CANCELLED, JOB_STATE_COUNT
} job_state;
const char *job_state_name(job_state s);
int job_state_parse(const char *name, job_state *out); /* 0 ok, -1 unknown */
int job_state_terminal(job_state s);

typedef struct store_job {
    int64_t id;
    char type[32];
    char owner[64];
    job_state state;
    int priority;             /* higher runs first; ties by id */
    char *params_json;        /* the validated parameters, as submitted plus defaults */
    char *error;              /* failure text, or NULL */
    int64_t created_ms, started_ms, finished_ms; /* 0 = not yet */
    int64_t step, total_steps;                   /* progress */
    int64_t checkpoint_step;                     /* last recorded checkpoint, -1 = none */
    int cancel_requested, pause_requested;       /* seen by the worker between steps */
} store_job;
void store_job_free(store_job *j);
void store_jobs_free(store_job *jobs, int n);

/* STORE_FULL when `queue_limit` (> 0) jobs are already queued. */
int store_job_create(pgnd_store *s, const char *type, const char *owner, const char *params_json, int priority,
                     int queue_limit, int64_t *id, store_err *err);
int store_job_get(pgnd_store *s, int64_t id, store_job *out, store_err *err); /* STORE_NOT_FOUND */
/* Newest first; state/type may be NULL (any); before_id > 0 pages (jobs with id < before_id). */
int store_job_list(pgnd_store *s, const char *state, const char *type, int64_t before_id, int limit,
                   store_job **out, int *n, store_err *err);
/* Atomically moves the highest-priority queued job (then lowest id) to running and returns its id
 * in *id; 0 and *id = 0 when none is queued. */
int store_job_claim(pgnd_store *s, int64_t *id, store_err *err);
/* Moves job id to `to` if its state is in `from_mask` (bit i = state i): STORE_CONFLICT otherwise,
 * STORE_NOT_FOUND if absent. Sets started/finished times as appropriate; `error` (may be NULL) is
 * recorded for failed. Clears the request flags. */
int store_job_transition(pgnd_store *s, int64_t id, unsigned from_mask, job_state to, const char *error,
                         store_err *err);
/* Flags a running job for the worker (cancel or pause between steps). */
int store_job_request(pgnd_store *s, int64_t id, int cancel, int pause, store_err *err);
int store_job_progress(pgnd_store *s, int64_t id, int64_t step, int64_t total_steps, store_err *err);
/* Removes the job and all its rows (metrics, events, artifacts, checkpoints). Only terminal jobs:
 * STORE_CONFLICT otherwise. The caller removes the files (store_artifact_list first). */
int store_job_delete(pgnd_store *s, int64_t id, store_err *err);
/* At start-up: every running job goes back to queued (it resumes from its last checkpoint). */
int store_requeue_running(pgnd_store *s, int *count, store_err *err);
int store_count_queued(pgnd_store *s, int *count, store_err *err);

/* ---- metrics: (job, step, key, value) ---- */
int store_metrics_append(pgnd_store *s, int64_t job, int64_t step, int n, const char *const *keys,
                         const double *values, store_err *err);
/* Deletes rows with step > after_step (a resumed run replaces what came after its checkpoint). */
int store_metrics_truncate(pgnd_store *s, int64_t job, int64_t after_step, store_err *err);
typedef struct store_series {
    char key[64];
    int n;
    int64_t *steps;
    double *values;
} store_series;
/* One series per key (keys NULL/n_keys 0 = every key the job has), steps > since_step, each
 * downsampled to at most max_points (> 0) by averaging consecutive buckets (first/last kept). */
int store_metrics_query(pgnd_store *s, int64_t job, const char *const *keys, int n_keys, int64_t since_step,
                        int max_points, store_series **out, int *n_series, store_err *err);
void store_series_free(store_series *sr, int n);

/* ---- events (for Server-Sent Events; ids increase) ---- */
typedef struct store_event {
    int64_t id;
    int64_t job; /* 0 for daemon-wide */
    char type[32];
    char *data_json;
    int64_t at_ms;
} store_event;
int store_event_append(pgnd_store *s, int64_t job, const char *type, const char *data_json, int64_t *id,
                       store_err *err);
/* Events with id > after_id (job > 0: only that job's), oldest first, at most limit. */
int store_events_since(pgnd_store *s, int64_t job, int64_t after_id, int limit, store_event **out, int *n,
                       store_err *err);
void store_events_free(store_event *ev, int n);
/* Keeps the newest `keep` events (a client further behind gets the newest ones it can). */
int store_events_prune(pgnd_store *s, int64_t keep, int *deleted, store_err *err);

/* ---- artifacts and checkpoints (files under the job's directory) ---- */
typedef struct store_file {
    char name[128];  /* unique per job */
    char path[512];
    char kind[32];   /* "image", "checkpoint", "shard", "metrics", ... */
    int64_t size;
    char sha256[65];
    int64_t step;    /* -1 when not tied to a step */
    int64_t at_ms;
} store_file;
/* Insert or replace by (job, name). */
int store_artifact_put(pgnd_store *s, int64_t job, const store_file *f, store_err *err);
int store_artifact_list(pgnd_store *s, int64_t job, store_file **out, int *n, store_err *err);
int store_artifact_get(pgnd_store *s, int64_t job, const char *name, store_file *out, store_err *err);
/* Records a checkpoint (after the file is durably written) and sets the job's checkpoint_step. */
int store_checkpoint_record(pgnd_store *s, int64_t job, const store_file *f, store_err *err);
int store_checkpoint_latest(pgnd_store *s, int64_t job, store_file *out, store_err *err); /* STORE_NOT_FOUND */
/* Keeps the newest `keep` checkpoints; returns the dropped ones so the caller removes the files. */
int store_checkpoint_prune(pgnd_store *s, int64_t job, int keep, store_file **dropped, int *n, store_err *err);

/* ---- API tokens (only their SHA-256 is stored) ---- */
typedef enum token_role { ROLE_READ = 0, ROLE_SUBMIT = 1, ROLE_ADMIN = 2 } token_role;
const char *token_role_name(token_role r);
int token_role_parse(const char *name, token_role *out);
typedef struct store_token {
    int64_t id;
    char name[64];
    token_role role;
    int64_t created_ms;
    int revoked;
} store_token;
int store_token_add(pgnd_store *s, const char *name, token_role role, const char *sha256_hex, store_err *err);
/* STORE_NOT_FOUND for unknown or revoked tokens. */
int store_token_lookup(pgnd_store *s, const char *sha256_hex, store_token *out, store_err *err);
int store_token_list(pgnd_store *s, store_token **out, int *n, store_err *err);
int store_token_revoke(pgnd_store *s, const char *name, store_err *err); /* STORE_NOT_FOUND */
int store_token_count(pgnd_store *s, int *n, store_err *err);            /* active tokens */

#endif
