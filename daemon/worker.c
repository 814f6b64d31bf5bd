#include "daemon/worker.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon/jobtypes.h"
#include "nn/sha256.h"

struct pgnd_workers {
    pgnd_daemon *d;
    int count;
    pthread_t threads[64];
};

void job_dir(const pgnd_daemon *d, int64_t id, char *buf, size_t len)
{
    snprintf(buf, len, "%s/jobs/%lld", d->cfg.state_dir, (long long)id);
}

/* What the running job sees; one per job run. */
typedef struct run_ctx {
    pgnd_daemon *d;
    int64_t id;
    pgn_stop stop_reason;
    int64_t last_progress_ms;
} run_ctx;

static int io_metrics(void *c, int64_t step, int n, const char *const *keys, const double *values)
{
    run_ctx *r = c;
    store_err err;
    if (store_metrics_append(r->d->store, r->id, step, n, keys, values, &err)) {
        daemon_log(r->d, "error", "job %lld: cannot store metrics: %s", (long long)r->id, err.msg);
        return -1;
    }
    json_t *vals = json_object();
    for (int i = 0; i < n; i++)
        json_object_set_new(vals, keys[i], json_real(values[i]));
    daemon_event(r->d, r->id, "metrics", json_pack("{s:I, s:I, s:o}", "job", (json_int_t)r->id, "step",
                                                   (json_int_t)step, "values", vals));
    return 0;
}

static int io_progress(void *c, int64_t step, int64_t total)
{
    run_ctx *r = c;
    store_err err;
    if (store_job_progress(r->d->store, r->id, step, total, &err))
        return -1;
    /* Progress events at most twice a second: the dashboard interpolates. */
    int64_t now = store_now_ms();
    if (now - r->last_progress_ms >= 500 || step == total) {
        r->last_progress_ms = now;
        daemon_event(r->d, r->id, "progress",
                     json_pack("{s:I, s:I, s:I}", "job", (json_int_t)r->id, "step", (json_int_t)step, "total",
                               (json_int_t)total));
    }
    return 0;
}

int job_record_file(pgnd_daemon *d, int64_t job, const char *name, const char *path, const char *kind, int64_t step,
                    int checkpoint, char *err, size_t errlen)
{
    store_file f;
    memset(&f, 0, sizeof f);
    struct stat st;
    if (stat(path, &st)) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    if (nn_sha256_file(path, f.sha256)) {
        snprintf(err, errlen, "%s: cannot read for its checksum", path);
        return -1;
    }
    snprintf(f.name, sizeof f.name, "%s", name);
    snprintf(f.path, sizeof f.path, "%s", path);
    snprintf(f.kind, sizeof f.kind, "%s", kind);
    f.size = st.st_size;
    f.step = step;
    f.at_ms = store_now_ms();
    store_err se;
    int rc = checkpoint ? store_checkpoint_record(d->store, job, &f, &se) : store_artifact_put(d->store, job, &f, &se);
    if (rc) {
        snprintf(err, errlen, "%s", se.msg);
        return -1;
    }
    return 0;
}

static int io_artifact(void *c, const char *name, const char *path, const char *kind, int64_t step)
{
    run_ctx *r = c;
    char err[512];
    if (job_record_file(r->d, r->id, name, path, kind, step, 0, err, sizeof err)) {
        daemon_log(r->d, "error", "job %lld: artifact %s: %s", (long long)r->id, name, err);
        return -1;
    }
    daemon_event(r->d, r->id, "artifact",
                 json_pack("{s:I, s:s, s:s, s:I}", "job", (json_int_t)r->id, "name", name, "kind", kind, "step",
                           (json_int_t)step));
    return 0;
}

static int io_checkpoint(void *c, const char *path, int64_t step)
{
    run_ctx *r = c;
    char err[512], name[64];
    snprintf(name, sizeof name, "checkpoint-%lld", (long long)step);
    if (job_record_file(r->d, r->id, name, path, "checkpoint", step, 1, err, sizeof err)) {
        daemon_log(r->d, "error", "job %lld: checkpoint at step %lld: %s", (long long)r->id, (long long)step, err);
        return -1;
    }
    store_file *dropped = NULL;
    int n = 0;
    store_err se;
    if (store_checkpoint_prune(r->d->store, r->id, r->d->cfg.checkpoint_retention, &dropped, &n, &se) == 0) {
        for (int i = 0; i < n; i++)
            if (strcmp(dropped[i].path, path))
                unlink(dropped[i].path);
        free(dropped);
    }
    daemon_event(r->d, r->id, "checkpoint",
                 json_pack("{s:I, s:I}", "job", (json_int_t)r->id, "step", (json_int_t)step));
    return 0;
}

static pgn_stop io_should_stop(void *c)
{
    run_ctx *r = c;
    if (r->stop_reason)
        return r->stop_reason;
    if (r->d->stopping)
        return r->stop_reason = PGN_STOP_SHUTDOWN;
    store_job j;
    store_err err;
    if (store_job_get(r->d->store, r->id, &j, &err) == 0) {
        if (j.cancel_requested)
            r->stop_reason = PGN_STOP_CANCEL;
        else if (j.pause_requested)
            r->stop_reason = PGN_STOP_PAUSE;
        store_job_free(&j);
    }
    return r->stop_reason;
}

static void io_log(void *c, const char *level, const char *msg)
{
    run_ctx *r = c;
    daemon_log(r->d, level, "job %lld: %s", (long long)r->id, msg);
    daemon_event(r->d, r->id, "log", json_pack("{s:I, s:s, s:s}", "job", (json_int_t)r->id, "level", level, "message", msg));
}

static void finish(pgnd_daemon *d, int64_t id, job_state to, const char *error)
{
    store_err err;
    if (store_job_transition(d->store, id, 1u << JOB_RUNNING, to, error, &err))
        daemon_log(d, "error", "job %lld: cannot record state %s: %s", (long long)id, job_state_name(to), err.msg);
    json_t *ev = json_pack("{s:I, s:s}", "job", (json_int_t)id, "state", job_state_name(to));
    if (error)
        json_object_set_new(ev, "error", json_string(error));
    daemon_event(d, id, "state", ev);
}

void worker_run_job(pgnd_daemon *d, int64_t id)
{
    store_job j;
    store_err err;
    if (store_job_get(d->store, id, &j, &err)) {
        daemon_log(d, "error", "job %lld vanished after it was claimed: %s", (long long)id, err.msg);
        return;
    }
    char dir[1100], msg[2048] = "";
    job_dir(d, id, dir, sizeof dir);
    const job_type *t = job_type_find(j.type);
    store_file ck;
    int have_ck = 0;
    if (!t) {
        finish(d, id, JOB_FAILED, "this pgnd has no such job type");
        goto out;
    }
    if (daemon_mkdirs(dir)) {
        snprintf(msg, sizeof msg, "cannot create the job directory %s: %s", dir, strerror(errno));
        finish(d, id, JOB_FAILED, msg);
        goto out;
    }
    have_ck = store_checkpoint_latest(d->store, id, &ck, &err) == 0;
    /* Whatever was logged after the checkpoint we resume from is replaced by the resumed run. */
    if (store_metrics_truncate(d->store, id, have_ck ? ck.step : -1, &err))
        daemon_log(d, "warn", "job %lld: cannot drop metrics after the checkpoint: %s", (long long)id, err.msg);
    daemon_event(d, id, "state",
                 json_pack("{s:I, s:s, s:I}", "job", (json_int_t)id, "state", "running", "resume_step",
                           (json_int_t)(have_ck ? ck.step : -1)));
    run_ctx r = {d, id, PGN_CONTINUE, 0};
    pgn_job_io io = {&r,          dir,          d->cfg.threads, d->cfg.teacher_weights,
                     have_ck ? ck.path : NULL,  have_ck ? ck.step : -1,
                     io_metrics,  io_progress,  io_artifact,    io_checkpoint,
                     io_should_stop, io_log};
    pthread_mutex_lock(&d->lock);
    d->running_jobs++;
    pthread_mutex_unlock(&d->lock);
    int rc = t->run(j.params_json, &io, msg, sizeof msg);
    pthread_mutex_lock(&d->lock);
    d->running_jobs--;
    pthread_mutex_unlock(&d->lock);
    if (rc == PGN_DONE)
        finish(d, id, JOB_SUCCEEDED, NULL);
    else if (rc == PGN_STOPPED && r.stop_reason == PGN_STOP_CANCEL)
        finish(d, id, JOB_CANCELLED, NULL);
    else if (rc == PGN_STOPPED && r.stop_reason == PGN_STOP_PAUSE)
        finish(d, id, JOB_PAUSED, NULL);
    else if (rc == PGN_STOPPED)
        finish(d, id, JOB_QUEUED, NULL); /* shutdown: resumes at the next start */
    else
        finish(d, id, JOB_FAILED, msg[0] ? msg : "the job failed without saying why");
out:
    store_job_free(&j);
}

static void *worker_main(void *arg)
{
    pgnd_workers *w = arg;
    pgnd_daemon *d = w->d;
    while (!d->stopping) {
        int64_t id = 0;
        store_err err;
        if (store_job_claim(d->store, &id, &err)) {
            daemon_log(d, "error", "cannot claim a job: %s", err.msg);
            id = 0;
        }
        if (id) {
            worker_run_job(d, id);
            continue;
        }
        daemon_nap(d, 1000); /* woken by a new job, or poll once a second */
    }
    return NULL;
}

int workers_start(pgnd_workers **out, pgnd_daemon *d, int count, char *err, size_t errlen)
{
    pgnd_workers *w = calloc(1, sizeof *w);
    if (!w) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    w->d = d;
    if (count > 64)
        count = 64;
    for (int i = 0; i < count; i++) {
        if (pthread_create(&w->threads[i], NULL, worker_main, w)) {
            snprintf(err, errlen, "cannot start worker thread %d", i);
            d->stopping = 1;
            workers_join(w);
            return -1;
        }
        w->count++;
    }
    *out = w;
    return 0;
}

void workers_join(pgnd_workers *w)
{
    if (!w)
        return;
    daemon_wake(w->d);
    for (int i = 0; i < w->count; i++)
        pthread_join(w->threads[i], NULL);
    free(w);
}
