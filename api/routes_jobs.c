/* /api/v1/jobs...: submit, list, inspect, cancel / pause / resume, delete, metrics, artifacts. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api/auth.h"
#include "api/response_cache.h"
#include "api/routes.h"
#include "daemon/jobtypes.h"

int api_parse_id(const char *text, int64_t *id)
{
    char *end;
    errno = 0;
    long long v = strtoll(text ? text : "", &end, 10);
    if (errno || !text || end == text || *end || v <= 0)
        return -1;
    *id = v;
    return 0;
}

json_t *api_job_json(const store_job *j)
{
    json_t *params = j->params_json ? json_loads(j->params_json, 0, NULL) : NULL;
    json_t *o = json_pack("{s:I, s:s, s:s, s:s, s:i, s:o, s:I, s:I}", "id", (json_int_t)j->id, "type", j->type,
                          "owner", j->owner, "state", job_state_name(j->state), "priority", j->priority, "params",
                          params ? params : json_object(), "step", (json_int_t)j->step, "total_steps",
                          (json_int_t)j->total_steps);
    json_object_set_new(o, "created_ms", json_integer(j->created_ms));
    json_object_set_new(o, "started_ms", j->started_ms ? json_integer(j->started_ms) : json_null());
    json_object_set_new(o, "finished_ms", j->finished_ms ? json_integer(j->finished_ms) : json_null());
    json_object_set_new(o, "checkpoint_step", j->checkpoint_step >= 0 ? json_integer(j->checkpoint_step) : json_null());
    json_object_set_new(o, "error", j->error ? json_string(j->error) : json_null());
    double progress = j->total_steps > 0 ? (double)j->step / (double)j->total_steps : 0;
    json_object_set_new(o, "progress", json_real(progress));
    if (j->state == JOB_RUNNING && j->step > 0 && j->total_steps > j->step && j->started_ms) {
        double per = (double)(store_now_ms() - j->started_ms) / 1000.0 / (double)j->step;
        json_object_set_new(o, "eta_s", json_real(per * (double)(j->total_steps - j->step)));
    }
    return o;
}

/* 1 when a cached JSON body for key answered the request. */
static int answer_from_cache(const char *key, http_response *res)
{
    size_t len;
    char *body = response_cache_get(key, &len);
    if (!body)
        return 0;
    res->status = 200;
    snprintf(res->content_type, sizeof res->content_type, "application/json");
    res->body = body;
    res->body_len = len;
    return 1;
}

static int get_job(pgnd_daemon *d, const http_request *r, store_job *j, http_response *res)
{
    int64_t id;
    store_err err;
    if (api_parse_id(r->params[0], &id)) {
        http_problem(res, 404, "job ids are positive whole numbers", NULL);
        return -1;
    }
    int rc = store_job_get(d->store, id, j, &err);
    if (rc == STORE_NOT_FOUND) {
        char msg[96];
        snprintf(msg, sizeof msg, "no job %lld", (long long)id);
        http_problem(res, 404, msg, NULL);
        return -1;
    }
    if (rc) {
        http_problem(res, 500, err.msg, NULL);
        return -1;
    }
    return 0;
}

/* A reader's view of job {id}: authorised (role read) and loaded, or res filled. */
static int read_job(pgnd_daemon *d, const http_request *r, store_job *j, http_response *res)
{
    api_identity who;
    return auth_check(d->store, r, ROLE_READ, &who, res) || get_job(d, r, j, res) ? -1 : 0;
}

static void submit(const http_request *r, http_response *res, void *ctx)
{
    pgnd_daemon *d = ctx;
    api_identity who;
    if (auth_check(d->store, r, ROLE_SUBMIT, &who, res))
        return;
    if (d->stopping) {
        http_problem(res, 503, "pgnd is shutting down and accepts no new jobs", NULL);
        return;
    }
    json_t *body = http_parse_json(r, res);
    if (!body)
        return;
    json_t *problems = json_array();
    json_t *type_j = json_object_get(body, "type"), *params = json_object_get(body, "params");
    json_t *prio_j = json_object_get(body, "priority");
    const char *key;
    json_t *v;
    json_object_foreach(body, key, v) if (strcmp(key, "type") && strcmp(key, "params") && strcmp(key, "priority"))
        job_problem(problems, key, "unknown field (a job is {type, params, priority})");
    const job_type *t = NULL;
    if (!json_is_string(type_j))
        job_problem(problems, "type", "is required and must be a string");
    else if (!(t = job_type_find(json_string_value(type_j))))
        job_problem(problems, "type", "unknown job type '%s' (GET /api/v1/job-types lists them)",
                    json_string_value(type_j));
    if (prio_j && (!json_is_integer(prio_j) || json_integer_value(prio_j) < -100 || json_integer_value(prio_j) > 100))
        job_problem(problems, "priority", "must be a whole number from -100 to 100");
    json_t *full = NULL;
    if (t) {
        json_t *empty = json_object();
        full = job_params_validate(t, params ? params : empty, problems, &d->cfg);
        json_decref(empty);
    }
    if (json_array_size(problems)) {
        char detail[160];
        snprintf(detail, sizeof detail, "the job has %zu problem%s", json_array_size(problems),
                 json_array_size(problems) == 1 ? "" : "s");
        http_problem(res, 422, detail, json_pack("{s:O}", "problems", problems));
        json_decref(problems), json_decref(body), json_decref(full);
        return;
    }
    char *params_text = json_dumps(full, JSON_COMPACT | JSON_SORT_KEYS);
    int64_t id = 0;
    store_err err;
    int rc = store_job_create(d->store, t->name, who.name, params_text, prio_j ? (int)json_integer_value(prio_j) : 0,
                              d->cfg.queue_limit, &id, &err);
    free(params_text);
    json_decref(full), json_decref(problems), json_decref(body);
    if (rc == STORE_FULL) {
        char msg[128];
        snprintf(msg, sizeof msg, "the queue is full (%d jobs queued); try again later", d->cfg.queue_limit);
        http_problem(res, 503, msg, NULL);
        snprintf(res->extra_headers, sizeof res->extra_headers, "Retry-After: 30\r\n");
        return;
    }
    if (rc) {
        http_problem(res, 500, err.msg, NULL);
        return;
    }
    store_job j;
    if (store_job_get(d->store, id, &j, &err)) {
        http_problem(res, 500, err.msg, NULL);
        return;
    }
    daemon_event(d, id, "state", json_pack("{s:I, s:s, s:s}", "job", (json_int_t)id, "state", "queued", "type", j.type));
    daemon_wake(d);
    http_json(res, 201, api_job_json(&j));
    snprintf(res->location, sizeof res->location, "/api/v1/jobs/%lld", (long long)id);
    store_job_free(&j);
}

static void list(const http_request *r, http_response *res, void *ctx)
{
    pgnd_daemon *d = ctx;
    api_identity who;
    if (auth_check(d->store, r, ROLE_READ, &who, res))
        return;
    const char *state = http_query(r, "state"), *type = http_query(r, "type");
    const char *before = http_query(r, "before"), *limit_s = http_query(r, "limit");
    job_state st;
    if (state && job_state_parse(state, &st)) {
        http_problem(res, 422, "state must be queued, running, paused, succeeded, failed or cancelled", NULL);
        return;
    }
    int64_t before_id = 0, limit = 50;
    if ((before && api_parse_id(before, &before_id)) || (limit_s && (api_parse_id(limit_s, &limit) || limit > 500))) {
        http_problem(res, 422, "before must be a job id and limit a whole number from 1 to 500", NULL);
        return;
    }
    /* Readers polling the list share one rendering for up to 250 ms (or until the next event). */
    char key[512];
    pthread_mutex_lock(&d->lock);
    long long last_event = (long long)d->last_event;
    pthread_mutex_unlock(&d->lock);
    snprintf(key, sizeof key, "jobs/%lld/%lld|%s|%s|%lld|%lld", last_event, (long long)(store_now_ms() / 250),
             state ? state : "", type ? type : "", (long long)before_id, (long long)limit);
    if (answer_from_cache(key, res))
        return;
    store_job *jobs = NULL;
    int n = 0;
    store_err err;
    if (store_job_list(d->store, state, type, before_id, (int)limit, &jobs, &n, &err)) {
        http_problem(res, 500, err.msg, NULL);
        return;
    }
    json_t *arr = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(arr, api_job_json(&jobs[i]));
    json_t *out = json_pack("{s:o}", "jobs", arr);
    if (n == limit && n > 0) {
        char next[256];
        snprintf(next, sizeof next, "/api/v1/jobs?before=%lld&limit=%lld%s%s%s%s", (long long)jobs[n - 1].id,
                 (long long)limit, state ? "&state=" : "", state ? state : "", type ? "&type=" : "", type ? type : "");
        json_object_set_new(out, "next", json_string(next));
    }
    store_jobs_free(jobs, n);
    http_json(res, 200, out);
    if (res->body)
        response_cache_put(key, res->body, res->body_len);
}

static void get(const http_request *r, http_response *res, void *ctx)
{
    pgnd_daemon *d = ctx;
    store_job j;
    if (read_job(d, r, &j, res))
        return;
    http_json(res, 200, api_job_json(&j));
    store_job_free(&j);
}

/* Submitters act on their own jobs; admins on all. */
static int may_act(const api_identity *who, const store_job *j, http_response *res)
{
    if (who->role == ROLE_ADMIN || !strcmp(who->name, j->owner))
        return 0;
    char msg[200];
    snprintf(msg, sizeof msg, "job %lld belongs to '%s'; only its owner or an admin may change it", (long long)j->id,
             j->owner);
    http_problem(res, 403, msg, NULL);
    return -1;
}

static void act(const http_request *r, http_response *res, pgnd_daemon *d, const char *what)
{
    api_identity who;
    store_job j;
    if (auth_check(d->store, r, ROLE_SUBMIT, &who, res) || get_job(d, r, &j, res))
        return;
    if (may_act(&who, &j, res)) {
        store_job_free(&j);
        return;
    }
    store_err err;
    int rc = 0;
    const char *now = NULL;
    if (!strcmp(what, "cancel")) {
        if (j.state == JOB_RUNNING)
            rc = store_job_request(d->store, j.id, 1, 0, &err), now = "cancelling";
        else
            rc = store_job_transition(d->store, j.id, 1u << JOB_QUEUED | 1u << JOB_PAUSED, JOB_CANCELLED, NULL, &err),
            now = "cancelled";
    } else if (!strcmp(what, "pause")) {
        if (j.state == JOB_RUNNING)
            rc = store_job_request(d->store, j.id, 0, 1, &err), now = "pausing";
        else
            rc = store_job_transition(d->store, j.id, 1u << JOB_QUEUED, JOB_PAUSED, NULL, &err), now = "paused";
    } else {
        rc = store_job_transition(d->store, j.id, 1u << JOB_PAUSED, JOB_QUEUED, NULL, &err), now = "queued";
    }
    if (rc == STORE_CONFLICT) {
        char msg[160];
        snprintf(msg, sizeof msg, "cannot %s job %lld: it is %s", what, (long long)j.id, job_state_name(j.state));
        http_problem(res, 409, msg, NULL);
    } else if (rc) {
        http_problem(res, rc == STORE_NOT_FOUND ? 404 : 500, err.msg, NULL);
    } else {
        daemon_event(d, j.id, "state", json_pack("{s:I, s:s, s:s}", "job", (json_int_t)j.id, "state", now, "by", who.name));
        daemon_wake(d);
        store_job fresh;
        if (store_job_get(d->store, j.id, &fresh, &err) == 0) {
            json_t *o = api_job_json(&fresh);
            json_object_set_new(o, "action", json_string(now));
            http_json(res, 202, o);
            store_job_free(&fresh);
        } else
            http_problem(res, 500, err.msg, NULL);
    }
    store_job_free(&j);
}

static void cancel(const http_request *r, http_response *res, void *ctx) { act(r, res, ctx, "cancel"); }
static void pause_(const http_request *r, http_response *res, void *ctx) { act(r, res, ctx, "pause"); }
static void resume(const http_request *r, http_response *res, void *ctx) { act(r, res, ctx, "resume"); }

static void del(const http_request *r, http_response *res, void *ctx)
{
    pgnd_daemon *d = ctx;
    api_identity who;
    store_job j;
    if (auth_check(d->store, r, ROLE_SUBMIT, &who, res) || get_job(d, r, &j, res))
        return;
    if (may_act(&who, &j, res)) {
        store_job_free(&j);
        return;
    }
    if (!job_state_terminal(j.state)) {
        char msg[160];
        snprintf(msg, sizeof msg, "job %lld is %s; cancel it before deleting it", (long long)j.id,
                 job_state_name(j.state));
        http_problem(res, 409, msg, NULL);
        store_job_free(&j);
        return;
    }
    /* Files first (the rows name them), then the rows. */
    store_file *files = NULL;
    int n = 0;
    store_err err;
    if (store_artifact_list(d->store, j.id, &files, &n, &err) == 0) {
        for (int i = 0; i < n; i++)
            unlink(files[i].path);
        free(files);
    }
    store_file *dropped = NULL;
    int nd = 0;
    if (store_checkpoint_prune(d->store, j.id, 0, &dropped, &nd, &err) == 0) {
        for (int i = 0; i < nd; i++)
            unlink(dropped[i].path);
        free(dropped);
    }
    char dir[1100];
    snprintf(dir, sizeof dir, "%s/jobs/%lld", d->cfg.state_dir, (long long)j.id);
    int rc = store_job_delete(d->store, j.id, &err);
    if (rc) {
        http_problem(res, rc == STORE_CONFLICT ? 409 : 500, err.msg, NULL);
    } else {
        rmdir(dir); /* empty by now unless a job left stray files; those stay for the admin */
        daemon_event(d, 0, "deleted", json_pack("{s:I}", "job", (json_int_t)j.id)); /* its own rows are gone */
        res->status = 204;
    }
    store_job_free(&j);
}

static void metrics(const http_request *r, http_response *res, void *ctx)
{
    pgnd_daemon *d = ctx;
    store_job j;
    if (read_job(d, r, &j, res))
        return;
    const char *keys_s = http_query(r, "keys"), *since_s = http_query(r, "since_step"), *mp_s = http_query(r, "max_points");
    int64_t since = -1, max_points = 1000;
    if (since_s) {
        char *end;
        since = strtoll(since_s, &end, 10);
        if (*end || end == since_s) {
            http_problem(res, 422, "since_step must be a whole number", NULL);
            store_job_free(&j);
            return;
        }
    }
    if (mp_s && (api_parse_id(mp_s, &max_points) || max_points > 100000)) {
        http_problem(res, 422, "max_points must be a whole number from 1 to 100000", NULL);
        store_job_free(&j);
        return;
    }
    char buf[2048];
    const char *keys[64];
    int nk = 0;
    if (keys_s && *keys_s) {
        snprintf(buf, sizeof buf, "%s", keys_s);
        for (char *save, *tok = strtok_r(buf, ",", &save); tok && nk < 64; tok = strtok_r(NULL, ",", &save))
            keys[nk++] = tok;
    }
    /* The body only changes when the job moves on (step, state, a resume's truncation). */
    char key[512];
    snprintf(key, sizeof key, "metrics/%lld/%lld/%d/%lld/%lld|%s|%lld|%lld", (long long)j.id, (long long)j.step,
             (int)j.state, (long long)j.checkpoint_step, (long long)j.finished_ms, keys_s ? keys_s : "",
             (long long)since, (long long)max_points);
    if (answer_from_cache(key, res)) {
        store_job_free(&j);
        return;
    }
    store_series *sr = NULL;
    int ns = 0;
    store_err err;
    if (store_metrics_query(d->store, j.id, nk ? keys : NULL, nk, since, (int)max_points, &sr, &ns, &err)) {
        http_problem(res, 500, err.msg, NULL);
        store_job_free(&j);
        return;
    }
    json_t *series = json_object();
    for (int i = 0; i < ns; i++) {
        json_t *steps = json_array(), *vals = json_array();
        for (int k = 0; k < sr[i].n; k++) {
            json_array_append_new(steps, json_integer(sr[i].steps[k]));
            json_array_append_new(vals, json_real(sr[i].values[k]));
        }
        json_object_set_new(series, sr[i].key, json_pack("{s:o, s:o}", "steps", steps, "values", vals));
    }
    store_series_free(sr, ns);
    http_json(res, 200, json_pack("{s:I, s:o}", "job", (json_int_t)j.id, "series", series));
    if (res->body)
        response_cache_put(key, res->body, res->body_len);
    store_job_free(&j);
}

static json_t *file_json(int64_t job, const store_file *f)
{
    char url[300];
    snprintf(url, sizeof url, "/api/v1/jobs/%lld/artifacts/%s", (long long)job, f->name);
    return json_pack("{s:s, s:s, s:I, s:s, s:I, s:I, s:s}", "name", f->name, "kind", f->kind, "size",
                     (json_int_t)f->size, "sha256", f->sha256, "step", (json_int_t)f->step, "at_ms",
                     (json_int_t)f->at_ms, "url", url);
}

static void artifacts(const http_request *r, http_response *res, void *ctx)
{
    pgnd_daemon *d = ctx;
    store_job j;
    if (read_job(d, r, &j, res))
        return;
    store_file *files = NULL;
    int n = 0;
    store_err err;
    if (store_artifact_list(d->store, j.id, &files, &n, &err)) {
        http_problem(res, 500, err.msg, NULL);
        store_job_free(&j);
        return;
    }
    json_t *arr = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(arr, file_json(j.id, &files[i]));
    free(files);
    store_file ck;
    if (store_checkpoint_latest(d->store, j.id, &ck, &err) == 0)
        json_array_append_new(arr, file_json(j.id, &ck));
    http_json(res, 200, json_pack("{s:I, s:o}", "job", (json_int_t)j.id, "artifacts", arr));
    store_job_free(&j);
}

static void artifact(const http_request *r, http_response *res, void *ctx)
{
    pgnd_daemon *d = ctx;
    store_job j;
    if (read_job(d, r, &j, res))
        return;
    store_file f;
    store_err err;
    int rc = store_artifact_get(d->store, j.id, r->params[1], &f, &err);
    if (rc == STORE_NOT_FOUND) {
        store_file ck;
        if (store_checkpoint_latest(d->store, j.id, &ck, &err) == 0 && !strcmp(ck.name, r->params[1]))
            f = ck, rc = 0;
    }
    if (rc) {
        char msg[300];
        snprintf(msg, sizeof msg, "job %lld has no artifact '%s'", (long long)j.id, r->params[1]);
        http_problem(res, rc == STORE_NOT_FOUND ? 404 : 500, rc == STORE_NOT_FOUND ? msg : err.msg, NULL);
    } else if (access(f.path, R_OK)) {
        char msg[300];
        snprintf(msg, sizeof msg, "artifact '%s' is recorded but its file is gone", f.name);
        http_problem(res, 410, msg, NULL);
    } else {
        res->status = 200;
        const char *dot = strrchr(f.name, '.');
        snprintf(res->content_type, sizeof res->content_type, "%s",
                 dot && !strcmp(dot, ".png") ? "image/png" : dot && !strcmp(dot, ".json") ? "application/json"
                                                                                           : "application/octet-stream");
        snprintf(res->file_path, sizeof res->file_path, "%s", f.path);
        snprintf(res->extra_headers, sizeof res->extra_headers, "Content-Disposition: attachment; filename=\"%s\"\r\n",
                 f.name);
    }
    store_job_free(&j);
}

void api_register_jobs(http_server *srv, pgnd_daemon *d)
{
    http_route(srv, "POST", "/api/v1/jobs", submit, d);
    http_route(srv, "GET", "/api/v1/jobs", list, d);
    http_route(srv, "GET", "/api/v1/jobs/{id}", get, d);
    http_route(srv, "DELETE", "/api/v1/jobs/{id}", del, d);
    http_route(srv, "POST", "/api/v1/jobs/{id}/cancel", cancel, d);
    http_route(srv, "POST", "/api/v1/jobs/{id}/pause", pause_, d);
    http_route(srv, "POST", "/api/v1/jobs/{id}/resume", resume, d);
    http_route(srv, "GET", "/api/v1/jobs/{id}/metrics", metrics, d);
    http_route(srv, "GET", "/api/v1/jobs/{id}/artifacts", artifacts, d);
    http_route(srv, "GET", "/api/v1/jobs/{id}/artifacts/{name}", artifact, d);
}
