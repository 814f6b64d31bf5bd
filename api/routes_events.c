/* Server-Sent Events: GET /api/v1/events and /api/v1/jobs/{id}/events. Each event carries its
 * store id, so a client that reconnects with Last-Event-ID gets exactly what it missed.
 * GET /api/v1/events/latest gives the newest id, where a client that has just read the state opens
 * its stream. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "api/auth.h"
#include "api/routes.h"

typedef struct events_route {
    pgnd_daemon *d;
    int per_job;
} events_route;

static void stream(const http_request *r, http_sse *s, void *ctx)
{
    events_route *er = ctx;
    pgnd_daemon *d = er->d;
    int64_t job = 0, after = 0;
    if (er->per_job && api_parse_id(r->params[0], &job))
        return;
    const char *from = r->last_event_id ? r->last_event_id : http_query(r, "after");
    if (from)
        after = strtoll(from, NULL, 10);
    while (!http_sse_stopping(s) && !d->stopping) {
        store_event *ev = NULL;
        int n = 0;
        store_err err;
        if (store_events_since(d->store, job, after, 500, &ev, &n, &err))
            return;
        for (int i = 0; i < n; i++) {
            if (http_sse_send(s, ev[i].id, ev[i].type, ev[i].data_json)) {
                store_events_free(ev, n);
                return;
            }
            after = ev[i].id;
        }
        store_events_free(ev, n);
        if (n == 500)
            continue; /* more to replay */
        int64_t newest = daemon_wait_event(d, after, 15000);
        if (d->stopping)
            return; /* the daemon is shutting down: the client reconnects with Last-Event-ID */
        if (newest <= after && http_sse_comment(s, "keepalive"))
            return;
    }
}

/* Runs before the stream opens, so a refused client gets a plain 401/403/404 problem. */
static int guard(const http_request *r, http_response *res, void *ctx)
{
    events_route *er = ctx;
    api_identity who;
    if (auth_check(er->d->store, r, ROLE_READ, &who, res))
        return -1;
    int64_t job;
    store_job j;
    store_err err;
    if (er->per_job) {
        if (api_parse_id(r->params[0], &job) || store_job_get(er->d->store, job, &j, &err)) {
            http_problem(res, 404, "no such job", NULL);
            return -1;
        }
        store_job_free(&j);
    }
    return 0;
}

/* Where the dashboard opens its live stream: the newest event id, so that it does not replay the
 * whole event log it has just read as a job list. */
static void events_latest(const http_request *r, http_response *res, void *ctx)
{
    pgnd_daemon *d = ctx;
    api_identity who;
    if (auth_check(d->store, r, ROLE_READ, &who, res))
        return;
    pthread_mutex_lock(&d->lock);
    long long last = (long long)d->last_event;
    pthread_mutex_unlock(&d->lock);
    http_json(res, 200, json_pack("{s:I}", "last_event_id", (json_int_t)last));
}

static events_route all_events, job_events;

void api_register_events(http_server *srv, pgnd_daemon *d)
{
    all_events = (events_route){d, 0};
    job_events = (events_route){d, 1};
    http_route_sse(srv, "/api/v1/events", guard, stream, &all_events);
    http_route_sse(srv, "/api/v1/jobs/{id}/events", guard, stream, &job_events);
    http_route(srv, "GET", "/api/v1/events/latest", events_latest, d);
}
