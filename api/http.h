/* pgnd's HTTP layer on libmicrohttpd: one server, a routing table, request bodies with a size
 * limit, JSON bodies parsed with jansson (error position reported), problem+json errors, static
 * files, and Server-Sent Event streams. It knows nothing of jobs or tensors: routes are handlers
 * the API registers. */
#ifndef PGND_API_HTTP_H
#define PGND_API_HTTP_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

typedef struct http_server http_server;

typedef struct http_request {
    const char *method;         /* "GET", "POST", ... */
    const char *path;           /* without the query string */
    const char *params[4];      /* path parameters captured by "{...}" segments, in order */
    int n_params;
    const char *body;           /* NUL-terminated; NULL when empty */
    size_t body_len;
    const char *authorization;  /* the Authorization header or NULL */
    const char *cookie;         /* the Cookie header or NULL */
    const char *last_event_id;  /* the Last-Event-ID header or NULL */
    const char *remote;         /* client address as text */
    void *conn;                 /* internal */
} http_request;

/* Query-string argument or NULL. */
const char *http_query(const http_request *r, const char *key);
/* Any request header or NULL. */
const char *http_header(const http_request *r, const char *name);

typedef struct http_response {
    int status;
    char content_type[64];
    char *body;        /* malloc'ed, owned by the layer after return */
    size_t body_len;
    char location[256];  /* Location header when not empty */
    char extra_headers[512]; /* "Name: value\r\n" lines, optional */
    /* For a file response: path of a file to stream (body NULL). */
    char file_path[1024];
} http_response;

/* Helpers that fill a response. */
void http_json(http_response *res, int status, json_t *body /* stolen */);
/* application/problem+json: {"type": "about:blank", "title": <reason phrase>, "status": status,
 * "detail": detail, ...extra fields of `extra` (stolen, may be NULL)}. */
void http_problem(http_response *res, int status, const char *detail, json_t *extra);
void http_text(http_response *res, int status, const char *content_type, const char *text);

/* Parses r->body as JSON: on failure fills res with a 400 problem whose detail gives line, column
 * and jansson's text, and returns NULL. An empty body is an error too. */
json_t *http_parse_json(const http_request *r, http_response *res);

/* A handler fills res (status 0 means 404 problem). */
typedef void (*http_handler)(const http_request *r, http_response *res, void *ctx);

/* Server-Sent Events: a stream handler is called once on its own thread and writes events with
 * http_sse_send until it returns (client gone, or server stopping). */
typedef struct http_sse http_sse;
typedef void (*http_sse_handler)(const http_request *r, http_sse *stream, void *ctx);
/* Writes "id: <id>\nevent: <event>\ndata: <data>\n\n" (id <= 0 omits the id line). Returns -1
 * when the client has gone or the server is stopping. */
int http_sse_send(http_sse *s, int64_t id, const char *event, const char *data);
/* Writes a ": keepalive" comment; -1 as above. */
int http_sse_comment(http_sse *s, const char *text);
/* 1 once the server is stopping (streams should return promptly). */
int http_sse_stopping(http_sse *s);
/* Added: waits up to timeout_ms for the stream to end (server stopping or client gone). Returns 1
 * when the handler should return, 0 on timeout. Lets a handler sleep between keepalives yet return at once on http_stop or on a
 * client hang-up. Note: http_sse_stopping also returns 1 once the client has gone. */
int http_sse_wait(http_sse *s, int timeout_ms);

typedef struct http_config {
    const char *address;      /* "127.0.0.1" or "::1" etc. */
    int port;                 /* 0 = pick a free port (tests); the chosen one via http_port() */
    size_t max_body;          /* bodies over this get 413 without calling the handler */
    int threads;              /* connection threads */
    const char *static_dir;   /* served at "/" (GET only, no directory listing, index.html), or NULL */
    int nice;                 /* request and stream threads run at this nice value (0: unchanged), so
                               * that serving never takes the cores from a training job */
} http_config;

int http_start(http_server **srv, const http_config *cfg, char *err, size_t errlen);
int http_port(const http_server *srv);
/* Routes: pattern segments "{name}" capture one path segment, e.g. "/api/v1/jobs/{id}/cancel".
 * A path that matches a pattern with another method gets 405; no match gets 404 (problem+json)
 * for /api/... and the static file or 404 otherwise. */
int http_route(http_server *srv, const char *method, const char *pattern, http_handler h, void *ctx);
/* guard (may be NULL) runs first as a normal handler: returning -1 sends its response (e.g. 401)
 * instead of opening the stream. */
typedef int (*http_sse_guard)(const http_request *r, http_response *res, void *ctx);
int http_route_sse(http_server *srv, const char *pattern, http_sse_guard guard, http_sse_handler h, void *ctx);
/* Applies the configured nice value to the calling thread once (request and stream threads). */
void http_thread_nice(const http_server *srv);
/* Stops accepting, tells SSE streams to end, waits for handlers. */
void http_stop(http_server *srv);

#endif
