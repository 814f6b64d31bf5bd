/* /api/v1/info, /api/v1/job-types, /api/v1/session, /healthz and /metrics (Prometheus text). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/auth.h"
#include "api/routes.h"
#include "api/routes_static.h"
#include "daemon/jobtypes.h"

#ifndef PGND_VERSION
#define PGND_VERSION "0.1.0"
#endif

static void info(const http_request *r, http_response *res, void *ctx)
{
    pgnd_daemon *d = ctx;
    api_identity who;
    if (auth_check(d->store, r, ROLE_READ, &who, res))
        return;
    json_t *o = json_pack("{s:s, s:{s:s, s:b, s:s}, s:i, s:i, s:i, s:I, s:{s:s, s:s}, s:b}", "version", PGND_VERSION,
                          "teacher", "description", d->teacher_desc, "random", d->teacher_random, "note",
                          d->teacher_random ? "random teacher: not a perceptual loss" : "", "threads_per_job",
                          d->cfg.threads, "workers", d->cfg.workers, "queue_limit", d->cfg.queue_limit, "started_ms",
                          (json_int_t)d->started_ms, "you", "name", who.name, "role", token_role_name(who.role),
                          "auth_required", who.authenticated);
    http_json(res, 200, o);
}

static void job_types(const http_request *r, http_response *res, void *ctx)
{
    pgnd_daemon *d = ctx;
    api_identity who;
    if (auth_check(d->store, r, ROLE_READ, &who, res))
        return;
    http_json(res, 200, job_types_schema());
}

/* Trades a bearer token for an HttpOnly session cookie (the dashboard's event stream uses it). */
static void session(const http_request *r, http_response *res, void *ctx)
{
    pgnd_daemon *d = ctx;
    api_identity who;
    if (auth_check(d->store, r, ROLE_READ, &who, res))
        return;
    char cookie[256];
    if (auth_session_cookie(&who, cookie, sizeof cookie)) {
        http_problem(res, 500, "cannot mint a session", NULL);
        return;
    }
    http_json(res, 200, json_pack("{s:s, s:s}", "name", who.name, "role", token_role_name(who.role)));
    snprintf(res->extra_headers, sizeof res->extra_headers, "%s", cookie);
}

static void healthz(const http_request *r, http_response *res, void *ctx)
{
    pgnd_daemon *d = ctx;
    int queued = 0;
    store_err err;
    if (store_count_queued(d->store, &queued, &err)) {
        http_problem(res, 503, err.msg, NULL);
        return;
    }
    http_json(res, d->stopping ? 503 : 200,
              json_pack("{s:s, s:i, s:i}", "status", d->stopping ? "stopping" : "ok", "queued", queued, "running",
                        d->running_jobs));
}

static void prometheus(const http_request *r, http_response *res, void *ctx)
{
    pgnd_daemon *d = ctx;
    int counts[JOB_STATE_COUNT] = {0};
    store_job *jobs = NULL;
    int n = 0;
    store_err err;
    for (int s = 0; s < JOB_STATE_COUNT; s++) {
        /* Counting through the list API keeps the store's surface small; jobs are few. */
        if (store_job_list(d->store, job_state_name((job_state)s), NULL, 0, 100000, &jobs, &n, &err) == 0) {
            counts[s] = n;
            store_jobs_free(jobs, n);
        }
    }
    char text[2048];
    size_t at = 0;
    at += (size_t)snprintf(text + at, sizeof text - at, "# HELP pgnd_jobs Jobs by state.\n# TYPE pgnd_jobs gauge\n");
    for (int s = 0; s < JOB_STATE_COUNT; s++)
        at += (size_t)snprintf(text + at, sizeof text - at, "pgnd_jobs{state=\"%s\"} %d\n", job_state_name((job_state)s),
                               counts[s]);
    at += (size_t)snprintf(text + at, sizeof text - at,
                           "# HELP pgnd_uptime_seconds Seconds since start.\n# TYPE pgnd_uptime_seconds gauge\n"
                           "pgnd_uptime_seconds %.1f\n# HELP pgnd_teacher_random 1 when the teacher has random weights.\n"
                           "# TYPE pgnd_teacher_random gauge\npgnd_teacher_random %d\n",
                           (store_now_ms() - d->started_ms) / 1000.0, d->teacher_random);
    http_text(res, 200, "text/plain; version=0.0.4", text);
}

void api_register_info(http_server *srv, pgnd_daemon *d)
{
    http_route(srv, "GET", "/api/v1/info", info, d);
    http_route(srv, "GET", "/api/v1/job-types", job_types, d);
    http_route(srv, "POST", "/api/v1/session", session, d);
    http_route(srv, "GET", "/healthz", healthz, d);
    http_route(srv, "GET", "/metrics", prometheus, d);
}

int api_register(http_server *srv, pgnd_daemon *d)
{
    api_register_jobs(srv, d);
    api_register_events(srv, d);
    api_register_info(srv, d);
    api_register_static(srv, d); /* the dashboard: web/ at / */
    return 0;
}
