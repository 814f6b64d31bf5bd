/* Internals shared by api/http.c (server, routing, responses, static files) and api/http_sse.c
 * (Server-Sent Event streams). Not part of the API. */
#ifndef PGND_API_HTTP_INTERNAL_H
#define PGND_API_HTTP_INTERNAL_H

#include <microhttpd.h>
#include <pthread.h>
#include <semaphore.h>

#include "api/http.h"

/* One request header (kind 0) or query argument (kind 1). */
typedef struct http_kv {
    int kind;
    const char *key;
    const char *val;
} http_kv;

/* What http_request.conn points to: the headers and query arguments of the request. For normal
 * requests the strings live in MHD's connection memory (valid while the handler runs); an SSE
 * stream holds its own copies (its handler outlives the MHD callback that started it). */
typedef struct http_reqinfo {
    http_kv *kv;
    int nkv;
} http_reqinfo;

struct http_server {
    struct MHD_Daemon *d;
    int port;
    size_t max_body;
    char *static_dir;
    int nice;
    sem_t busy;                /* bounds the handlers computing at once */

    pthread_rwlock_t rt_lock;  /* the routing table (routes may be added while serving) */
    struct http_route_ent *routes;
    int nroutes, cap_routes;

    pthread_mutex_t mu;        /* stopping, streams */
    pthread_cond_t cond;       /* a stream handler finished */
    int stopping;
    http_sse *streams;         /* live and finished-but-not-joined stream handlers */
};

/* Queues res (takes its body) on c; the common headers are added here. is_api: the path is under
 * /api/ (Cache-Control: no-store). */
enum MHD_Result http_send_(struct MHD_Connection *c, http_response *res, int is_api);
/* Queues a problem response. */
enum MHD_Result http_send_problem_(struct MHD_Connection *c, int status, const char *detail,
                                   int is_api);

/* Starts a stream for request r (strings valid for this call only: they are copied) on c:
 * spawns the handler's thread and queues the event-stream response. */
enum MHD_Result http_sse_start_(http_server *srv, struct MHD_Connection *c, const http_request *r,
                                http_sse_handler h, void *ctx, int is_api);
/* Sets srv->stopping, tells every stream, waits for every stream handler to return and joins
 * its thread. */
void http_sse_stop_all_(http_server *srv);

/* CLOCK_MONOTONIC deadline ms from now, for pthread_cond_timedwait on our conds. */
void http_deadline_(struct timespec *ts, int ms);
/* A condition variable on CLOCK_MONOTONIC. */
int http_cond_init_(pthread_cond_t *c);

#endif
