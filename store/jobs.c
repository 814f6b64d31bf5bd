/* Jobs: creation with a queue limit, listing, claiming, the state machine, progress, deletion. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "store/store_internal.h"

static const char *const STATE_NAMES[JOB_STATE_COUNT] = {"queued", "running", "paused",
                                                         "succeeded", "failed", "cancelled"};

const char *job_state_name(job_state s)
{
    return (unsigned)s < JOB_STATE_COUNT ? STATE_NAMES[s] : "unknown";
}

int job_state_parse(const char *name, job_state *out)
{
    for (int i = 0; name && i < JOB_STATE_COUNT; i++)
        if (!strcmp(name, STATE_NAMES[i])) {
            *out = (job_state)i;
            return 0;
        }
    return -1;
}

int job_state_terminal(job_state s)
{
    return s == JOB_SUCCEEDED || s == JOB_FAILED || s == JOB_CANCELLED;
}

/* The state machine, checked on top of the caller's from_mask so that no mask, however wide, can
 * revive a finished job or skip the queue. Beyond the header's diagram: running -> queued is a
 * worker giving its job back at shutdown; queued -> paused holds a job before it starts (the API's
 * pause of a queued job); queued/paused -> failed/cancelled stop a job that is not running. */
static int transition_legal(job_state from, job_state to)
{
    switch (to) {
    case JOB_QUEUED:
        return from == JOB_RUNNING || from == JOB_PAUSED;
    case JOB_RUNNING:
        return from == JOB_QUEUED;
    case JOB_PAUSED:
        return from == JOB_RUNNING || from == JOB_QUEUED;
    case JOB_SUCCEEDED:
        return from == JOB_RUNNING;
    case JOB_FAILED:
    case JOB_CANCELLED:
        return !job_state_terminal(from);
    default:
        return 0;
    }
}

void store_job_free(store_job *j)
{
    if (!j)
        return;
    free(j->params_json);
    free(j->error);
    j->params_json = j->error = NULL;
}

void store_jobs_free(store_job *jobs, int n)
{
    for (int i = 0; jobs && i < n; i++)
        store_job_free(&jobs[i]);
    free(jobs);
}

#define JOB_COLS                                                                                               \
    "id, type, owner, state, priority, params_json, error, created_ms, started_ms, finished_ms, step, "        \
    "total_steps, checkpoint_step, cancel_requested, pause_requested"

/* One row of JOB_COLS into *j (zeroed first). */
static int read_job(pgnd_store *s, sqlite3_stmt *st, store_job *j, store_err *err)
{
    memset(j, 0, sizeof *j);
    j->id = sqlite3_column_int64(st, 0);
    sdb_col_copy(st, 1, j->type, sizeof j->type);
    sdb_col_copy(st, 2, j->owner, sizeof j->owner);
    if (job_state_parse((const char *)sqlite3_column_text(st, 3), &j->state))
        return sdb_fail(err, -1, "job %lld has an unknown state \"%s\" in %s", (long long)j->id,
                        (const char *)sqlite3_column_text(st, 3), s->path);
    j->priority = sqlite3_column_int(st, 4);
    if (sdb_col_dup(st, 5, &j->params_json) || sdb_col_dup(st, 6, &j->error)) {
        store_job_free(j);
        return sdb_fail(err, -1, "out of memory");
    }
    j->created_ms = sqlite3_column_int64(st, 7);
    j->started_ms = sqlite3_column_int64(st, 8);
    j->finished_ms = sqlite3_column_int64(st, 9);
    j->step = sqlite3_column_int64(st, 10);
    j->total_steps = sqlite3_column_int64(st, 11);
    j->checkpoint_step = sqlite3_column_int64(st, 12);
    j->cancel_requested = sqlite3_column_int(st, 13);
    j->pause_requested = sqlite3_column_int(st, 14);
    return 0;
}

static int count_queued(pgnd_store *s, int *count, store_err *err)
{
    sqlite3_stmt *st = sdb_prepare(s, "SELECT count(*) FROM jobs WHERE state = 'queued'", err);
    if (!st)
        return -1;
    int rc = sqlite3_step(st) == SQLITE_ROW ? 0 : sdb_dbfail(s, err, "counting queued jobs");
    if (rc == 0)
        *count = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    return rc;
}

int store_count_queued(pgnd_store *s, int *count, store_err *err)
{
    *count = 0;
    sdb_lock(s);
    int rc = count_queued(s, count, err);
    sdb_unlock(s);
    return rc;
}

static int job_create(pgnd_store *s, const char *type, const char *owner, const char *params_json, int priority,
                      int queue_limit, int64_t *id, store_err *err)
{
    if (queue_limit > 0) {
        int queued;
        if (count_queued(s, &queued, err))
            return -1;
        if (queued >= queue_limit)
            return sdb_fail(err, STORE_FULL, "the queue is full: %d jobs are queued and the limit is %d", queued,
                            queue_limit);
    }
    sqlite3_stmt *st = sdb_prepare(s,
                                   "INSERT INTO jobs (type, owner, state, priority, params_json, created_ms) "
                                   "VALUES (?1, ?2, 'queued', ?3, ?4, ?5)",
                                   err);
    if (!st)
        return -1;
    sqlite3_bind_text(st, 1, type, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, owner ? owner : "", -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 3, priority);
    sqlite3_bind_text(st, 4, params_json ? params_json : "{}", -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, store_now_ms());
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : sdb_dbfail(s, err, "inserting the job");
    if (rc == 0)
        *id = sqlite3_last_insert_rowid(s->db);
    sqlite3_finalize(st);
    return rc;
}

int store_job_create(pgnd_store *s, const char *type, const char *owner, const char *params_json, int priority,
                     int queue_limit, int64_t *id, store_err *err)
{
    *id = 0;
    if (sdb_check_text(type, sizeof ((store_job *)0)->type, 0, "job type", err) ||
        sdb_check_text(owner ? owner : "", sizeof ((store_job *)0)->owner, 1, "job owner", err))
        return -1;
    sdb_lock(s);
    /* Count and insert in one write transaction: two submitters cannot both take the last slot. */
    int rc = sdb_begin(s, err);
    if (rc == 0)
        rc = sdb_end(s, job_create(s, type, owner, params_json, priority, queue_limit, id, err), err);
    if (rc)
        *id = 0;
    sdb_unlock(s);
    return rc;
}

int store_job_get(pgnd_store *s, int64_t id, store_job *out, store_err *err)
{
    memset(out, 0, sizeof *out);
    sdb_lock(s);
    sqlite3_stmt *st = sdb_prepare(s, "SELECT " JOB_COLS " FROM jobs WHERE id = ?1", err);
    int rc = -1;
    if (st) {
        sqlite3_bind_int64(st, 1, id);
        int r = sqlite3_step(st);
        if (r == SQLITE_ROW)
            rc = read_job(s, st, out, err);
        else if (r == SQLITE_DONE)
            rc = sdb_fail(err, STORE_NOT_FOUND, "job %lld not found", (long long)id);
        else
            rc = sdb_dbfail(s, err, "reading the job");
        sqlite3_finalize(st);
    }
    sdb_unlock(s);
    return rc;
}

/* One statement per filter combination, so each can use its index (jobs_state_id, jobs_type_id,
 * or the rowid for no filter) and walk it newest first without sorting. */
static const char *const LIST_SQL[4] = {
    "SELECT " JOB_COLS " FROM jobs WHERE id < ?3 ORDER BY id DESC LIMIT ?4",
    "SELECT " JOB_COLS " FROM jobs WHERE state = ?1 AND id < ?3 ORDER BY id DESC LIMIT ?4",
    "SELECT " JOB_COLS " FROM jobs WHERE type = ?2 AND id < ?3 ORDER BY id DESC LIMIT ?4",
    "SELECT " JOB_COLS " FROM jobs WHERE state = ?1 AND type = ?2 AND id < ?3 ORDER BY id DESC LIMIT ?4",
};

int store_job_list(pgnd_store *s, const char *state, const char *type, int64_t before_id, int limit,
                   store_job **out, int *n, store_err *err)
{
    *out = NULL;
    *n = 0;
    job_state parsed;
    if (state && job_state_parse(state, &parsed))
        return sdb_fail(err, -1, "unknown job state \"%s\"", state);
    sdb_lock(s);
    sqlite3_stmt *st = sdb_prepare(s, LIST_SQL[(state ? 1 : 0) | (type ? 2 : 0)], err);
    if (!st) {
        sdb_unlock(s);
        return -1;
    }
    if (state)
        sqlite3_bind_text(st, 1, state, -1, SQLITE_STATIC);
    if (type)
        sqlite3_bind_text(st, 2, type, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, before_id > 0 ? before_id : INT64_MAX);
    sqlite3_bind_int(st, 4, limit > 0 ? limit : -1); /* LIMIT -1: no limit */
    store_job *jobs = NULL;
    int count = 0, cap = 0, rc = 0, r;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        if (count == cap) {
            int ncap = cap ? cap * 2 : 16;
            store_job *grown = realloc(jobs, (size_t)ncap * sizeof *jobs);
            if (!grown) {
                rc = sdb_fail(err, -1, "out of memory");
                break;
            }
            jobs = grown;
            cap = ncap;
        }
        if ((rc = read_job(s, st, &jobs[count], err)))
            break;
        count++;
    }
    if (rc == 0 && r != SQLITE_DONE)
        rc = sdb_dbfail(s, err, "listing jobs");
    sqlite3_finalize(st);
    sdb_unlock(s);
    if (rc) {
        store_jobs_free(jobs, count);
        return rc;
    }
    *out = jobs;
    *n = count;
    return 0;
}

static int job_claim(pgnd_store *s, int64_t *id, store_err *err)
{
    sqlite3_stmt *st =
        sdb_prepare(s, "SELECT id FROM jobs WHERE state = 'queued' ORDER BY priority DESC, id LIMIT 1", err);
    if (!st)
        return -1;
    int r = sqlite3_step(st);
    int64_t found = r == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    int rc = r == SQLITE_ROW || r == SQLITE_DONE ? 0 : sdb_dbfail(s, err, "finding a queued job");
    sqlite3_finalize(st);
    if (rc || !found)
        return rc;
    /* started_ms keeps the first start: a resumed job has been running since then. */
    st = sdb_prepare(s,
                     "UPDATE jobs SET state = 'running', started_ms = CASE WHEN started_ms = 0 THEN ?2 ELSE "
                     "started_ms END, cancel_requested = 0, pause_requested = 0 WHERE id = ?1",
                     err);
    if (!st)
        return -1;
    sqlite3_bind_int64(st, 1, found);
    sqlite3_bind_int64(st, 2, store_now_ms());
    rc = sqlite3_step(st) == SQLITE_DONE ? 0 : sdb_dbfail(s, err, "claiming the job");
    sqlite3_finalize(st);
    if (rc == 0)
        *id = found;
    return rc;
}

int store_job_claim(pgnd_store *s, int64_t *id, store_err *err)
{
    *id = 0;
    sdb_lock(s);
    /* Select and update under one IMMEDIATE transaction: the write lock is taken before the
     * select, so another connection (or process) cannot pick the same job in between. */
    int rc = sdb_begin(s, err);
    if (rc == 0)
        rc = sdb_end(s, job_claim(s, id, err), err);
    if (rc)
        *id = 0;
    sdb_unlock(s);
    return rc;
}

/* The job's state into *state; STORE_NOT_FOUND when absent. */
static int read_state(pgnd_store *s, int64_t id, job_state *state, store_err *err)
{
    sqlite3_stmt *st = sdb_prepare(s, "SELECT state FROM jobs WHERE id = ?1", err);
    if (!st)
        return -1;
    sqlite3_bind_int64(st, 1, id);
    int r = sqlite3_step(st), rc;
    if (r == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(st, 0);
        rc = job_state_parse(name, state) ? sdb_fail(err, -1, "job %lld has an unknown state \"%s\" in %s",
                                                     (long long)id, name ? name : "", s->path)
                                          : 0;
    } else if (r == SQLITE_DONE) {
        rc = sdb_fail(err, STORE_NOT_FOUND, "job %lld not found", (long long)id);
    } else {
        rc = sdb_dbfail(s, err, "reading the job's state");
    }
    sqlite3_finalize(st);
    return rc;
}

static int job_transition(pgnd_store *s, int64_t id, unsigned from_mask, job_state to, const char *error,
                          store_err *err)
{
    job_state from;
    int rc = read_state(s, id, &from, err);
    if (rc)
        return rc;
    if (!(from_mask & (1u << from)) || !transition_legal(from, to))
        return sdb_fail(err, STORE_CONFLICT, "job %lld is %s; it cannot become %s", (long long)id,
                        job_state_name(from), job_state_name(to));
    int64_t now = store_now_ms();
    sqlite3_stmt *st = sdb_prepare(s,
                                   "UPDATE jobs SET state = ?2, "
                                   "started_ms = CASE WHEN ?2 = 'running' AND started_ms = 0 THEN ?3 ELSE "
                                   "started_ms END, "
                                   "finished_ms = CASE WHEN ?4 THEN ?3 ELSE 0 END, "
                                   "error = CASE WHEN ?2 = 'failed' THEN ?5 ELSE error END, "
                                   "cancel_requested = 0, pause_requested = 0 WHERE id = ?1",
                                   err);
    if (!st)
        return -1;
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_text(st, 2, job_state_name(to), -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, now);
    sqlite3_bind_int(st, 4, job_state_terminal(to));
    if (error)
        sqlite3_bind_text(st, 5, error, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 5);
    rc = sqlite3_step(st) == SQLITE_DONE ? 0 : sdb_dbfail(s, err, "updating the job's state");
    sqlite3_finalize(st);
    return rc;
}

int store_job_transition(pgnd_store *s, int64_t id, unsigned from_mask, job_state to, const char *error,
                         store_err *err)
{
    if ((unsigned)to >= JOB_STATE_COUNT)
        return sdb_fail(err, -1, "job %lld: %d is not a job state", (long long)id, (int)to);
    sdb_lock(s);
    int rc = sdb_begin(s, err);
    if (rc == 0)
        rc = sdb_end(s, job_transition(s, id, from_mask, to, error, err), err);
    sdb_unlock(s);
    return rc;
}

static int job_request(pgnd_store *s, int64_t id, int cancel, int pause, store_err *err)
{
    job_state state;
    int rc = read_state(s, id, &state, err);
    if (rc)
        return rc;
    if (state != JOB_RUNNING)
        return sdb_fail(err, STORE_CONFLICT, "job %lld is %s, not running", (long long)id, job_state_name(state));
    /* Flags only ever get set here; the transition that follows clears them. */
    sqlite3_stmt *st = sdb_prepare(s,
                                   "UPDATE jobs SET cancel_requested = cancel_requested OR ?2, "
                                   "pause_requested = pause_requested OR ?3 WHERE id = ?1",
                                   err);
    if (!st)
        return -1;
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_int(st, 2, cancel != 0);
    sqlite3_bind_int(st, 3, pause != 0);
    rc = sqlite3_step(st) == SQLITE_DONE ? 0 : sdb_dbfail(s, err, "flagging the job");
    sqlite3_finalize(st);
    return rc;
}

int store_job_request(pgnd_store *s, int64_t id, int cancel, int pause, store_err *err)
{
    sdb_lock(s);
    int rc = sdb_begin(s, err);
    if (rc == 0)
        rc = sdb_end(s, job_request(s, id, cancel, pause, err), err);
    sdb_unlock(s);
    return rc;
}

int store_job_progress(pgnd_store *s, int64_t id, int64_t step, int64_t total_steps, store_err *err)
{
    sdb_lock(s);
    int rc = sdb_begin(s, err);
    if (rc == 0) {
        sqlite3_stmt *st = sdb_prepare(s, "UPDATE jobs SET step = ?2, total_steps = ?3 WHERE id = ?1", err);
        int r = -1;
        if (st) {
            sqlite3_bind_int64(st, 1, id);
            sqlite3_bind_int64(st, 2, step);
            sqlite3_bind_int64(st, 3, total_steps);
            if (sqlite3_step(st) != SQLITE_DONE)
                r = sdb_dbfail(s, err, "recording progress");
            else if (sqlite3_changes(s->db) == 0)
                r = sdb_fail(err, STORE_NOT_FOUND, "job %lld not found", (long long)id);
            else
                r = 0;
            sqlite3_finalize(st);
        }
        rc = sdb_end(s, r, err);
    }
    sdb_unlock(s);
    return rc;
}

static int job_delete(pgnd_store *s, int64_t id, store_err *err)
{
    job_state state;
    int rc = read_state(s, id, &state, err);
    if (rc)
        return rc;
    if (!job_state_terminal(state))
        return sdb_fail(err, STORE_CONFLICT, "job %lld is %s; only finished jobs can be deleted", (long long)id,
                        job_state_name(state));
    /* Metrics, events, artifacts and checkpoints go with it (ON DELETE CASCADE). */
    sqlite3_stmt *st = sdb_prepare(s, "DELETE FROM jobs WHERE id = ?1", err);
    if (!st)
        return -1;
    sqlite3_bind_int64(st, 1, id);
    rc = sqlite3_step(st) == SQLITE_DONE ? 0 : sdb_dbfail(s, err, "deleting the job");
    sqlite3_finalize(st);
    return rc;
}

int store_job_delete(pgnd_store *s, int64_t id, store_err *err)
{
    sdb_lock(s);
    int rc = sdb_begin(s, err);
    if (rc == 0)
        rc = sdb_end(s, job_delete(s, id, err), err);
    sdb_unlock(s);
    return rc;
}

int store_requeue_running(pgnd_store *s, int *count, store_err *err)
{
    *count = 0;
    sdb_lock(s);
    int rc = sdb_begin(s, err);
    if (rc == 0) {
        sqlite3_stmt *st = sdb_prepare(s,
                                       "UPDATE jobs SET state = 'queued', cancel_requested = 0, pause_requested = 0 "
                                       "WHERE state = 'running'",
                                       err);
        int r = -1;
        if (st) {
            r = sqlite3_step(st) == SQLITE_DONE ? 0 : sdb_dbfail(s, err, "requeueing running jobs");
            if (r == 0)
                *count = sqlite3_changes(s->db);
            sqlite3_finalize(st);
        }
        rc = sdb_end(s, r, err);
        if (rc)
            *count = 0;
    }
    sdb_unlock(s);
    return rc;
}
