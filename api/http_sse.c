/* Server-Sent Event streams (see api/http.h).
 *
 * Threads: the user's stream handler runs on a thread of its own (started here, joined by the
 * next stream start or by http_stop). It formats events into the stream's byte queue. The MHD
 * connection thread serves the response through a content-reader callback (sse_reader) that
 * blocks until the queue has bytes, the handler has returned, the server is stopping, or the
 * client has gone: it poll()s an eventfd (rung by the handler side) and the client socket for
 * POLLRDHUP, so a client that hangs up is noticed at once even when nothing is being sent.
 * Blocking in the reader is fine because MHD runs one thread per connection.
 *
 * Lifetime: a stream has two references, the server's list (dropped after the handler thread is
 * joined) and the MHD response (dropped by MHD's free callback, when the connection is done with
 * it). Lock order: srv->mu, then s->mu. */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "api/http_internal.h"

#define SSE_MAX_QUEUE (1u << 20)  /* bytes queued for a slow client before http_sse_send waits */

struct http_sse {
    http_server *srv;
    struct http_sse *next;     /* srv->streams, under srv->mu */
    pthread_t th;
    int final;                 /* under srv->mu: the handler thread is about to exit */

    pthread_mutex_t mu;
    pthread_cond_t cond;       /* state changed or queue drained */
    char *q;                   /* queued bytes: q[head .. head+len) */
    size_t head, len, cap;
    int gone;                  /* the client has gone or the response is finished */
    int stopping;              /* the server is stopping */
    int handler_done;
    int refs;

    int efd;                   /* eventfd: the reader's wake-up */
    int sockfd;                /* the client socket (only the reader polls it), or -1 */

    http_sse_handler h;
    void *ctx;
    http_request req;          /* owned copies */
    http_reqinfo info;
};

static void notify(http_sse *s)
{
    uint64_t one = 1;
    ssize_t w = write(s->efd, &one, sizeof one);
    (void)w;  /* EAGAIN: the counter is already non-zero, the reader wakes anyway */
}

static void free_req(http_sse *s)
{
    http_request *r = &s->req;
    free((char *)r->method);
    free((char *)r->path);
    for (int i = 0; i < r->n_params; i++)
        free((char *)r->params[i]);
    free((char *)r->body);
    free((char *)r->remote);
    for (int i = 0; i < s->info.nkv; i++) {
        free((char *)s->info.kv[i].key);
        free((char *)s->info.kv[i].val);
    }
    free(s->info.kv);
}

static char *dup_or_null(const char *p, int *ok)
{
    if (!p)
        return NULL;
    char *d = strdup(p);
    if (!d)
        *ok = 0;
    return d;
}

/* Deep copy of r and its headers / query arguments into s. */
static int copy_req(http_sse *s, const http_request *r)
{
    int ok = 1;
    http_request *d = &s->req;
    const http_reqinfo *in = r->conn;
    d->method = dup_or_null(r->method, &ok);
    d->path = dup_or_null(r->path, &ok);
    d->n_params = r->n_params;
    for (int i = 0; i < r->n_params; i++)
        d->params[i] = dup_or_null(r->params[i], &ok);
    if (r->body) {
        char *b = malloc(r->body_len + 1);
        if (b) {
            memcpy(b, r->body, r->body_len);
            b[r->body_len] = 0;
        } else {
            ok = 0;
        }
        d->body = b;
        d->body_len = r->body_len;
    }
    d->remote = dup_or_null(r->remote, &ok);
    if (in && in->nkv) {
        s->info.kv = calloc((size_t)in->nkv, sizeof *s->info.kv);
        if (s->info.kv) {
            s->info.nkv = in->nkv;
            for (int i = 0; i < in->nkv; i++) {
                s->info.kv[i].kind = in->kv[i].kind;
                s->info.kv[i].key = dup_or_null(in->kv[i].key, &ok);
                s->info.kv[i].val = dup_or_null(in->kv[i].val, &ok);
            }
        } else {
            ok = 0;
        }
    }
    d->conn = &s->info;
    d->authorization = http_header(d, "Authorization");
    d->cookie = http_header(d, "Cookie");
    d->last_event_id = http_header(d, "Last-Event-ID");
    return ok ? 0 : -1;
}

static void sse_unref(http_sse *s)
{
    pthread_mutex_lock(&s->mu);
    int n = --s->refs;
    pthread_mutex_unlock(&s->mu);
    if (n > 0)
        return;
    if (s->efd >= 0)
        close(s->efd);
    free(s->q);
    free_req(s);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cond);
    free(s);
}

/* ---- the MHD side (connection thread) ---- */

static ssize_t sse_reader(void *cls, uint64_t pos, char *out, size_t max)
{
    http_sse *s = cls;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        if (s->len) {
            size_t n = s->len < max ? s->len : max;
            memcpy(out, s->q + s->head, n);
            s->head += n;
            s->len -= n;
            if (!s->len)
                s->head = 0;
            pthread_cond_broadcast(&s->cond);
            pthread_mutex_unlock(&s->mu);
            return (ssize_t)n;
        }
        int end = s->handler_done || s->stopping, gone = s->gone;
        pthread_mutex_unlock(&s->mu);
        if (end)
            return MHD_CONTENT_READER_END_OF_STREAM;
        if (gone)
            return MHD_CONTENT_READER_END_OF_STREAM;
        struct pollfd p[2] = {{.fd = s->efd, .events = POLLIN},
                              {.fd = s->sockfd, .events = POLLRDHUP}};
        int k = poll(p, s->sockfd >= 0 ? 2 : 1, 1000);
        if (k < 0 && errno != EINTR)
            k = 0;
        if (k > 0 && s->sockfd >= 0 && (p[1].revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL))) {
            pthread_mutex_lock(&s->mu);
            s->gone = 1;
            pthread_cond_broadcast(&s->cond);
            pthread_mutex_unlock(&s->mu);
            /* (END_WITH_ERROR would have MHD log an "application error" for every closed tab) */
            return MHD_CONTENT_READER_END_OF_STREAM;
        }
        if (k > 0 && (p[0].revents & POLLIN)) {
            uint64_t v;
            ssize_t r = read(s->efd, &v, sizeof v);
            (void)r;
        }
    }
}

static void sse_response_freed(void *cls)
{
    http_sse *s = cls;
    pthread_mutex_lock(&s->mu);
    s->gone = 1;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->mu);
    sse_unref(s);
}

/* ---- the handler thread ---- */

static void *sse_thread(void *arg)
{
    http_sse *s = arg;
    http_server *srv = s->srv;
    http_thread_nice(srv);
    s->h(&s->req, s, s->ctx);
    pthread_mutex_lock(&s->mu);
    s->handler_done = 1;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->mu);
    notify(s);
    pthread_mutex_lock(&srv->mu);
    s->final = 1;
    pthread_cond_broadcast(&srv->cond);
    pthread_mutex_unlock(&srv->mu);
    return NULL;
}

/* Joins and drops finished handler threads; srv->mu held. */
static void reap_locked(http_server *srv)
{
    http_sse **pp = &srv->streams;
    while (*pp) {
        http_sse *s = *pp;
        if (s->final) {
            *pp = s->next;
            pthread_join(s->th, NULL);
            sse_unref(s);
        } else {
            pp = &s->next;
        }
    }
}

enum MHD_Result http_sse_start_(http_server *srv, struct MHD_Connection *c, const http_request *r,
                                http_sse_handler h, void *ctx, int is_api)
{
    http_sse *s = calloc(1, sizeof *s);
    if (!s)
        return http_send_problem_(c, 503, "out of memory", is_api);
    s->srv = srv;
    s->h = h;
    s->ctx = ctx;
    s->refs = 1;  /* the response's, until the thread is started */
    pthread_mutex_init(&s->mu, NULL);
    http_cond_init_(&s->cond);
    s->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    s->sockfd = ci ? ci->connect_fd : -1;
    if (s->efd < 0 || copy_req(s, r) != 0) {
        sse_unref(s);
        return http_send_problem_(c, 503, "cannot start the stream", is_api);
    }

    struct MHD_Response *mr = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024,
                                                                sse_reader, s, sse_response_freed);
    if (!mr) {
        sse_unref(s);
        return http_send_problem_(c, 503, "cannot start the stream", is_api);
    }
    MHD_add_response_header(mr, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(mr, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(mr, "X-Accel-Buffering", "no");
    MHD_add_response_header(mr, "X-Content-Type-Options", "nosniff");

    pthread_mutex_lock(&srv->mu);
    const char *why = NULL;
    if (srv->stopping) {
        why = "the server is stopping";
    } else {
        reap_locked(srv);
        s->refs = 2;  /* + the server's list */
        if (pthread_create(&s->th, NULL, sse_thread, s) != 0) {
            s->refs = 1;
            why = "cannot start the stream";
        } else {
            s->next = srv->streams;
            srv->streams = s;
        }
    }
    pthread_mutex_unlock(&srv->mu);
    if (why) {
        MHD_destroy_response(mr);  /* frees s */
        return http_send_problem_(c, 503, why, is_api);
    }
    /* no idle timeout for streams */
    MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT, 0u);
    enum MHD_Result ret = MHD_queue_response(c, MHD_HTTP_OK, mr);
    MHD_destroy_response(mr);  /* if not queued: the free callback marks the stream gone */
    return ret;
}

void http_sse_stop_all_(http_server *srv)
{
    pthread_mutex_lock(&srv->mu);
    srv->stopping = 1;
    for (http_sse *s = srv->streams; s; s = s->next) {
        pthread_mutex_lock(&s->mu);
        s->stopping = 1;
        pthread_cond_broadcast(&s->cond);
        pthread_mutex_unlock(&s->mu);
        notify(s);
    }
    int waited = 0;
    for (;;) {
        int live = 0;
        for (http_sse *s = srv->streams; s; s = s->next)
            live += !s->final;
        if (!live)
            break;
        struct timespec ts;
        http_deadline_(&ts, 1000);
        if (pthread_cond_timedwait(&srv->cond, &srv->mu, &ts) == ETIMEDOUT && ++waited % 2 == 0)
            fprintf(stderr, "http: waiting for %d stream handler(s) to return (%d s)\n", live,
                    waited);
    }
    reap_locked(srv);
    pthread_mutex_unlock(&srv->mu);
}

/* ---- the handler's side ---- */

static int enqueue(http_sse *s, const char *data, size_t n)
{
    pthread_mutex_lock(&s->mu);
    while (!s->gone && !s->stopping && s->len && s->len + n > SSE_MAX_QUEUE) {
        struct timespec ts;
        http_deadline_(&ts, 1000);
        pthread_cond_timedwait(&s->cond, &s->mu, &ts);
    }
    if (s->gone || s->stopping) {
        pthread_mutex_unlock(&s->mu);
        return -1;
    }
    if (s->head && s->head + s->len + n > s->cap) {
        memmove(s->q, s->q + s->head, s->len);
        s->head = 0;
    }
    if (s->len + n > s->cap) {
        size_t cap = s->cap ? s->cap : 4096;
        while (cap < s->len + n)
            cap *= 2;
        char *q = realloc(s->q, cap);
        if (!q) {
            pthread_mutex_unlock(&s->mu);
            return -1;
        }
        s->q = q;
        s->cap = cap;
    }
    memcpy(s->q + s->head + s->len, data, n);
    s->len += n;
    pthread_mutex_unlock(&s->mu);
    notify(s);
    return 0;
}

typedef struct sbuf {
    char *p;
    size_t n, cap;
    int oom;
} sbuf;

static void sb_add(sbuf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void sb_str(sbuf *b, const char *s) { sb_add(b, s, strlen(s)); }

/* "<prefix>line\n" for every line of text (CR, LF and CRLF all end a line). */
static void sb_lines(sbuf *b, const char *prefix, const char *text)
{
    const char *p = text ? text : "";
    for (;;) {
        size_t l = strcspn(p, "\r\n");
        sb_str(b, prefix);
        sb_add(b, p, l);
        sb_add(b, "\n", 1);
        p += l;
        if (!*p)
            break;
        p += (p[0] == '\r' && p[1] == '\n') ? 2 : 1;
    }
}

int http_sse_send(http_sse *s, int64_t id, const char *event, const char *data)
{
    if (!s)
        return -1;
    sbuf b = {0};
    if (id > 0) {
        char t[40];
        snprintf(t, sizeof t, "id: %lld\n", (long long)id);
        sb_str(&b, t);
    }
    if (event && *event) {
        /* an event name is one line: CR / LF become spaces */
        sb_str(&b, "event: ");
        size_t at = b.n;
        sb_str(&b, event);
        for (size_t i = at; !b.oom && i < b.n; i++)
            if (b.p[i] == '\r' || b.p[i] == '\n')
                b.p[i] = ' ';
        sb_add(&b, "\n", 1);
    }
    sb_lines(&b, "data: ", data);
    sb_add(&b, "\n", 1);
    int rc = b.oom ? -1 : enqueue(s, b.p, b.n);
    free(b.p);
    return rc;
}

int http_sse_comment(http_sse *s, const char *text)
{
    if (!s)
        return -1;
    sbuf b = {0};
    sb_lines(&b, ": ", text ? text : "keepalive");
    sb_add(&b, "\n", 1);
    int rc = b.oom ? -1 : enqueue(s, b.p, b.n);
    free(b.p);
    return rc;
}

int http_sse_stopping(http_sse *s)
{
    if (!s)
        return 1;
    pthread_mutex_lock(&s->mu);
    int r = s->stopping || s->gone;
    pthread_mutex_unlock(&s->mu);
    return r;
}

int http_sse_wait(http_sse *s, int timeout_ms)
{
    if (!s)
        return 1;
    struct timespec ts;
    http_deadline_(&ts, timeout_ms > 0 ? timeout_ms : 0);
    pthread_mutex_lock(&s->mu);
    while (!s->stopping && !s->gone)
        if (pthread_cond_timedwait(&s->cond, &s->mu, &ts) == ETIMEDOUT)
            break;
    int r = s->stopping || s->gone;
    pthread_mutex_unlock(&s->mu);
    return r;
}
