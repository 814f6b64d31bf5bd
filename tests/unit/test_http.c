/* api/http.c and api/http_sse.c against a real server on 127.0.0.1 (port 0) and a small blocking
 * HTTP/1.1 client over plain sockets written here (no libcurl): routing with parameters, 404 /
 * 405 + Allow, 413 (Content-Length and chunked), malformed JSON with line and column, the
 * problem+json shape, common headers, static files and path traversal, file responses, SSE
 * (events in order with ids, multi-line data, comments, Last-Event-ID, a guard, client hang-up,
 * http_stop ending live streams promptly) and 8 threads x 50 concurrent requests. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "api/http.h"

#define MAX_BODY 4096

static http_server *srv;
static int port;
static char tmpdir[] = "/tmp/test_http_XXXXXX";
static char wwwdir[512];

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- a minimal HTTP/1.1 client ---- */

typedef struct hresp {
    int status;
    char *raw;           /* everything received */
    size_t raw_len;
    char *head;          /* the header block (points into raw, NUL-terminated) */
    char *body;          /* decoded body (malloc'ed, NUL-terminated) */
    size_t body_len;
} hresp;

static void hresp_free(hresp *r)
{
    free(r->raw);
    free(r->body);
    memset(r, 0, sizeof *r);
}

static int conn_open(int p)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)p)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int send_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

static int send_fmt(int fd, const char *fmt, ...)
{
    char buf[4096];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return send_all(fd, buf, (size_t)n);
}

/* Reads until EOF (or error / timeout); returns the bytes, NUL-terminated. */
static char *read_all(int fd, size_t *len)
{
    size_t cap = 8192, n = 0;
    char *b = malloc(cap);
    for (;;) {
        if (n + 4096 + 1 > cap)
            b = realloc(b, cap *= 2);
        ssize_t r = recv(fd, b + n, cap - n - 1, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    b[n] = 0;
    *len = n;
    return b;
}

/* Decodes a chunked body as far as it is complete; returns the decoded length. *done set when
 * the last chunk was seen. */
static size_t dechunk(const char *p, size_t n, char *out, int *done)
{
    size_t o = 0, i = 0;
    *done = 0;
    while (i < n) {
        const char *eol = memmem(p + i, n - i, "\r\n", 2);
        if (!eol)
            break;
        size_t sz = strtoul(p + i, NULL, 16);
        size_t start = (size_t)(eol - p) + 2;
        if (sz == 0) {
            *done = 1;
            break;
        }
        if (start + sz + 2 > n)
            break;
        memcpy(out + o, p + start, sz);
        o += sz;
        i = start + sz + 2;
    }
    out[o] = 0;
    return o;
}

static const char *hdr(const hresp *r, const char *name, char *out, size_t outlen)
{
    size_t l = strlen(name);
    for (const char *p = r->head; p && *p;) {
        const char *eol = strstr(p, "\r\n");
        if (!eol)
            eol = p + strlen(p);
        if ((size_t)(eol - p) > l && strncasecmp(p, name, l) == 0 && p[l] == ':') {
            const char *v = p + l + 1;
            while (*v == ' ')
                v++;
            snprintf(out, outlen, "%.*s", (int)(eol - v), v);
            return out;
        }
        p = *eol ? eol + 2 : eol;
    }
    return NULL;
}

/* Parses the first response in raw (status line, headers, body by Content-Length, chunked, or to
 * EOF). Returns 0 or -1. */
static int parse_resp(hresp *r)
{
    char *sep = strstr(r->raw, "\r\n\r\n");
    if (!sep || sscanf(r->raw, "HTTP/1.%*d %d", &r->status) != 1)
        return -1;
    *sep = 0;
    r->head = r->raw;
    char *b = sep + 4;
    size_t blen = r->raw_len - (size_t)(b - r->raw);
    char v[64];
    r->body = malloc(blen + 1);
    if (hdr(r, "Transfer-Encoding", v, sizeof v) && strcasecmp(v, "chunked") == 0) {
        int done;
        r->body_len = dechunk(b, blen, r->body, &done);
    } else {
        if (hdr(r, "Content-Length", v, sizeof v) && (size_t)atol(v) < blen)
            blen = (size_t)atol(v);
        memcpy(r->body, b, blen);
        r->body[blen] = 0;
        r->body_len = blen;
    }
    return 0;
}

/* One request on a new connection ("Connection: close"); body NULL: no Content-Length. */
static void do_req(hresp *r, const char *method, const char *path, const char *extra,
                   const char *body, size_t blen)
{
    memset(r, 0, sizeof *r);
    int fd = conn_open(port);
    assert_true(fd >= 0);
    if (body)
        send_fmt(fd, "%s %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n%sContent-Length: %zu\r\n\r\n",
                 method, path, extra ? extra : "", blen);
    else
        send_fmt(fd, "%s %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n%s\r\n", method, path,
                 extra ? extra : "");
    if (body && blen)
        send_all(fd, body, blen);
    r->raw = read_all(fd, &r->raw_len);
    close(fd);
    if (parse_resp(r) != 0)
        fail_msg("no HTTP response to %s %s: got %zu bytes \"%.200s\"", method, path, r->raw_len, r->raw);
}

static json_t *body_json(const hresp *r)
{
    json_error_t e;
    json_t *j = json_loadb(r->body, r->body_len, 0, &e);
    if (!j)
        fail_msg("body is not JSON (%s): %.300s", e.text, r->body);
    return j;
}

static void expect_problem(const hresp *r, int status, const char *detail_part)
{
    char v[128];
    assert_int_equal(r->status, status);
    assert_non_null(hdr(r, "Content-Type", v, sizeof v));
    assert_string_equal(v, "application/problem+json");
    json_t *j = body_json(r);
    assert_string_equal(json_string_value(json_object_get(j, "type")), "about:blank");
    assert_non_null(json_string_value(json_object_get(j, "title")));
    assert_int_equal(json_integer_value(json_object_get(j, "status")), status);
    if (detail_part) {
        const char *d = json_string_value(json_object_get(j, "detail"));
        assert_non_null(d);
        if (!strstr(d, detail_part))
            fail_msg("detail \"%s\" lacks \"%s\"", d, detail_part);
    }
    json_decref(j);
}

/* ---- handlers ---- */

static void h_echo(const http_request *r, http_response *res, void *ctx)
{
    json_t *p = json_array();
    for (int i = 0; i < r->n_params; i++)
        json_array_append_new(p, json_string(r->params[i]));
    const char *q = http_query(r, "x"), *h = http_header(r, "x-test");
    json_t *o = json_pack("{s:s, s:s, s:s, s:o, s:i, s:s?, s:s?, s:s?, s:s?, s:s?}", "route", (const char *)ctx,
                          "method", r->method, "path", r->path, "params", p, "body_len",
                          (int)r->body_len, "x", q, "hdr", h, "auth", r->authorization,
                          "cookie", r->cookie, "remote", r->remote);
    if (r->body)
        json_object_set_new(o, "body", json_string(r->body));
    http_json(res, 200, o);
}

static void h_json(const http_request *r, http_response *res, void *ctx)
{
    json_t *j = http_parse_json(r, res);
    if (!j)
        return;
    http_json(res, 201, json_pack("{s:b, s:i}", "ok", 1, "size", (int)json_object_size(j)));
    json_decref(j);
    snprintf(res->location, sizeof res->location, "/api/v1/things/1");
}

static void h_problem(const http_request *r, http_response *res, void *ctx)
{
    http_problem(res, 409, "the job is already running", json_pack("{s:i, s:s}", "job", 7, "state", "running"));
}

static void h_zero(const http_request *r, http_response *res, void *ctx) {}

static void h_file(const http_request *r, http_response *res, void *ctx)
{
    res->status = 200;
    snprintf(res->file_path, sizeof res->file_path, "%s/%s", tmpdir, http_query(r, "f"));
}

static void h_headers(const http_request *r, http_response *res, void *ctx)
{
    http_text(res, 200, NULL, "hi");
    snprintf(res->extra_headers, sizeof res->extra_headers,
             "X-One: 1\r\nCache-Control: max-age=5\r\nX-Two: two words\r\n");
}

static void h_num(const http_request *r, http_response *res, void *ctx)
{
    usleep(500);
    char t[64];
    snprintf(t, sizeof t, "n=%s", r->params[0]);
    http_text(res, 200, "text/plain", t);
}

/* SSE: events from Last-Event-ID + 1, then a comment, then waits for the end. */
static volatile int stream_done, stream_started;
static char stream_seen_last[32], stream_seen_query[32];

static void s_events(const http_request *r, http_sse *s, void *ctx)
{
    __atomic_store_n(&stream_done, 0, __ATOMIC_SEQ_CST);
    snprintf(stream_seen_last, sizeof stream_seen_last, "%s", r->last_event_id ? r->last_event_id : "");
    snprintf(stream_seen_query, sizeof stream_seen_query, "%s", http_query(r, "q") ? http_query(r, "q") : "");
    __atomic_store_n(&stream_started, 1, __ATOMIC_SEQ_CST);
    int64_t first = r->last_event_id ? atoll(r->last_event_id) + 1 : 1;
    for (int64_t id = first; id < first + 3; id++) {
        char d[64];
        snprintf(d, sizeof d, id == first + 1 ? "line one\nline two\r\nline three" : "{\"n\":%lld}",
                 (long long)id);
        if (http_sse_send(s, id, "tick", d))
            goto out;
    }
    if (http_sse_comment(s, NULL) || http_sse_send(s, 0, NULL, "last"))
        goto out;
    while (!http_sse_wait(s, 60000)) {
    }
out:
    __atomic_store_n(&stream_done, 1, __ATOMIC_SEQ_CST);
}

static int g_events(const http_request *r, http_response *res, void *ctx)
{
    if (http_header(r, "X-Deny")) {
        http_problem(res, 401, "no token", NULL);
        return -1;
    }
    return 0;
}

/* ---- fixtures ---- */

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static int setup(void **state)
{
    signal(SIGPIPE, SIG_IGN);
    if (!mkdtemp(tmpdir))
        return -1;
    char p[700];
    snprintf(wwwdir, sizeof wwwdir, "%s/www", tmpdir);
    mkdir(wwwdir, 0755);
    snprintf(p, sizeof p, "%s/sub", wwwdir);
    mkdir(p, 0755);
    const char *files[][2] = {
        {"www/index.html", "<!doctype html><title>pgnd</title>"},
        {"www/app.js", "console.log('pgnd');"},
        {"www/style.css", "body{}"},
        {"www/logo.svg", "<svg/>"},
        {"www/data.bin", "\x01\x02"},
        {"www/font.woff2", "wOF2"},
        {"www/sub/index.html", "<p>sub</p>"},
        {"secret.txt", "TOP-SECRET-OUTSIDE"},
        {"blob.txt", "file response body"},
    };
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", tmpdir, files[i][0]);
        write_file(p, files[i][1]);
    }
    http_config cfg = {"127.0.0.1", 0, MAX_BODY, 8, wwwdir, 0};
    char err[256];
    if (http_start(&srv, &cfg, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    port = http_port(srv);
    if (port <= 0)
        return -1;
    int rc = 0;
    rc |= http_route(srv, "GET", "/api/v1/jobs/{id}", h_echo, "job");
    rc |= http_route(srv, "DELETE", "/api/v1/jobs/{id}", h_echo, "job-delete");
    rc |= http_route(srv, "GET", "/api/v1/jobs/stats", h_echo, "stats");
    rc |= http_route(srv, "POST", "/api/v1/jobs/{id}/cancel", h_echo, "cancel");
    rc |= http_route(srv, "GET", "/api/v1/jobs/{id}/files/{name}", h_echo, "file");
    rc |= http_route(srv, "POST", "/api/v1/echo", h_echo, "echo");
    rc |= http_route(srv, "POST", "/api/v1/things", h_json, NULL);
    rc |= http_route(srv, "GET", "/api/v1/conflict", h_problem, NULL);
    rc |= http_route(srv, "GET", "/api/v1/zero", h_zero, NULL);
    rc |= http_route(srv, "GET", "/api/v1/download", h_file, NULL);
    rc |= http_route(srv, "GET", "/api/v1/headers", h_headers, NULL);
    rc |= http_route(srv, "GET", "/api/v1/n/{k}", h_num, NULL);
    rc |= http_route(srv, "GET", "/healthz", h_echo, "healthz");
    rc |= http_route_sse(srv, "/api/v1/events", g_events, s_events, NULL);
    /* bad patterns are refused */
    assert_int_equal(http_route(srv, "GET", "no-slash", h_echo, NULL), -1);
    assert_int_equal(http_route(srv, "GET", "/a/{1}/{2}/{3}/{4}/{5}", h_echo, NULL), -1);
    return rc ? -1 : 0;
}

static int teardown(void **state)
{
    http_stop(srv);
    srv = NULL;
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* ---- tests ---- */

static void test_routing_params(void **state)
{
    hresp r;
    char v[128];
    do_req(&r, "GET", "/api/v1/jobs/42?x=hello%20world&y=2", "X-Test: yes\r\nAuthorization: Bearer abc\r\nCookie: s=1\r\n", NULL, 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(hdr(&r, "Content-Type", v, sizeof v), "application/json");
    assert_string_equal(hdr(&r, "Cache-Control", v, sizeof v), "no-store");
    assert_string_equal(hdr(&r, "X-Content-Type-Options", v, sizeof v), "nosniff");
    json_t *j = body_json(&r);
    assert_string_equal(json_string_value(json_object_get(j, "route")), "job");
    assert_string_equal(json_string_value(json_object_get(j, "path")), "/api/v1/jobs/42");
    assert_int_equal(json_array_size(json_object_get(j, "params")), 1);
    assert_string_equal(json_string_value(json_array_get(json_object_get(j, "params"), 0)), "42");
    assert_string_equal(json_string_value(json_object_get(j, "x")), "hello world");
    assert_string_equal(json_string_value(json_object_get(j, "hdr")), "yes");
    assert_string_equal(json_string_value(json_object_get(j, "auth")), "Bearer abc");
    assert_string_equal(json_string_value(json_object_get(j, "cookie")), "s=1");
    assert_string_equal(json_string_value(json_object_get(j, "remote")), "127.0.0.1");
    json_decref(j);
    hresp_free(&r);

    /* a literal segment wins over a parameter, whatever the registration order */
    do_req(&r, "GET", "/api/v1/jobs/stats", NULL, NULL, 0);
    j = body_json(&r);
    assert_string_equal(json_string_value(json_object_get(j, "route")), "stats");
    assert_int_equal(json_array_size(json_object_get(j, "params")), 0);
    json_decref(j);
    hresp_free(&r);

    /* two parameters, percent-decoded */
    do_req(&r, "GET", "/api/v1/jobs/7/files/a%20b.png", NULL, NULL, 0);
    j = body_json(&r);
    assert_string_equal(json_string_value(json_object_get(j, "route")), "file");
    assert_string_equal(json_string_value(json_array_get(json_object_get(j, "params"), 0)), "7");
    assert_string_equal(json_string_value(json_array_get(json_object_get(j, "params"), 1)), "a b.png");
    json_decref(j);
    hresp_free(&r);

    /* POST with a body: passed whole and NUL-terminated */
    do_req(&r, "POST", "/api/v1/jobs/9/cancel", NULL, "{\"why\":1}", 9);
    assert_int_equal(r.status, 200);
    j = body_json(&r);
    assert_string_equal(json_string_value(json_object_get(j, "route")), "cancel");
    assert_int_equal(json_integer_value(json_object_get(j, "body_len")), 9);
    assert_string_equal(json_string_value(json_object_get(j, "body")), "{\"why\":1}");
    json_decref(j);
    hresp_free(&r);

    /* no body: body NULL */
    do_req(&r, "POST", "/api/v1/echo", NULL, "", 0);
    j = body_json(&r);
    assert_int_equal(json_integer_value(json_object_get(j, "body_len")), 0);
    assert_null(json_object_get(j, "body"));
    json_decref(j);
    hresp_free(&r);

    /* routes outside /api/: no Cache-Control */
    do_req(&r, "GET", "/healthz", NULL, NULL, 0);
    assert_int_equal(r.status, 200);
    assert_null(hdr(&r, "Cache-Control", v, sizeof v));
    assert_non_null(hdr(&r, "X-Content-Type-Options", v, sizeof v));
    hresp_free(&r);

    /* HEAD runs the GET route without a body */
    do_req(&r, "HEAD", "/api/v1/jobs/5", NULL, NULL, 0);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body_len, 0);
    hresp_free(&r);
}

static void test_keepalive_two_requests(void **state)
{
    int fd = conn_open(port);
    assert_true(fd >= 0);
    send_fmt(fd, "POST /api/v1/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
                 "GET /api/v1/jobs/1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    size_t n;
    char *all = read_all(fd, &n);
    close(fd);
    char *second = strstr(all + 1, "HTTP/1.1 200");
    assert_true(strncmp(all, "HTTP/1.1 200", 12) == 0);
    assert_non_null(second);
    assert_non_null(strstr(all, "\"body\":\"abc\""));
    assert_non_null(strstr(second, "\"route\":\"job\""));
    free(all);
}

static void test_404_405(void **state)
{
    hresp r;
    char v[128];
    do_req(&r, "GET", "/api/v1/nope", NULL, NULL, 0);
    expect_problem(&r, 404, NULL);
    assert_string_equal(hdr(&r, "Cache-Control", v, sizeof v), "no-store");
    hresp_free(&r);
    do_req(&r, "GET", "/api/v1/jobs/1/cancel/extra", NULL, NULL, 0);
    expect_problem(&r, 404, NULL);
    hresp_free(&r);
    do_req(&r, "GET", "/api/v1/jobs/", NULL, NULL, 0);  /* empty parameter segment */
    expect_problem(&r, 404, NULL);
    hresp_free(&r);

    /* the path exists with other methods */
    do_req(&r, "GET", "/api/v1/jobs/3/cancel", NULL, NULL, 0);
    expect_problem(&r, 405, NULL);
    assert_string_equal(hdr(&r, "Allow", v, sizeof v), "POST");
    hresp_free(&r);
    do_req(&r, "PUT", "/api/v1/jobs/3", NULL, "{}", 2);
    expect_problem(&r, 405, NULL);
    assert_string_equal(hdr(&r, "Allow", v, sizeof v), "GET, HEAD, DELETE");
    hresp_free(&r);
    do_req(&r, "POST", "/api/v1/events", NULL, "", 0);
    expect_problem(&r, 405, NULL);
    assert_string_equal(hdr(&r, "Allow", v, sizeof v), "GET");
    hresp_free(&r);

    /* a handler that leaves status 0 gives a 404 problem */
    do_req(&r, "GET", "/api/v1/zero", NULL, NULL, 0);
    expect_problem(&r, 404, NULL);
    hresp_free(&r);
}

static void test_413_content_length(void **state)
{
    /* headers only: the 413 must come without the body being sent */
    int fd = conn_open(port);
    assert_true(fd >= 0);
    double t0 = now_s();
    send_fmt(fd, "POST /api/v1/echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n", 100 * MAX_BODY);
    hresp r = {0};
    r.raw = read_all(fd, &r.raw_len);
    close(fd);
    assert_int_equal(parse_resp(&r), 0);
    expect_problem(&r, 413, "limit");
    assert_true(now_s() - t0 < 3.0);
    hresp_free(&r);

    /* huge and absurd lengths */
    fd = conn_open(port);
    send_fmt(fd, "POST /api/v1/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999999999999999\r\n\r\n");
    r.raw = read_all(fd, &r.raw_len);
    close(fd);
    assert_int_equal(parse_resp(&r), 0);
    assert_true(r.status == 413 || r.status == 400);
    hresp_free(&r);

    /* headers and some of the body already sent */
    char *big = malloc(MAX_BODY + 1);
    memset(big, 'a', MAX_BODY + 1);
    do_req(&r, "POST", "/api/v1/echo", NULL, big, MAX_BODY + 1);
    expect_problem(&r, 413, NULL);
    hresp_free(&r);

    /* exactly the limit is fine */
    do_req(&r, "POST", "/api/v1/echo", NULL, big, MAX_BODY);
    assert_int_equal(r.status, 200);
    json_t *j = body_json(&r);
    assert_int_equal(json_integer_value(json_object_get(j, "body_len")), MAX_BODY);
    json_decref(j);
    hresp_free(&r);
    free(big);
}

static void send_chunked(int fd, size_t total, size_t chunk)
{
    char *buf = malloc(chunk);
    memset(buf, 'b', chunk);
    for (size_t sent = 0; sent < total; sent += chunk) {
        size_t n = total - sent < chunk ? total - sent : chunk;
        if (send_fmt(fd, "%zx\r\n", n) || send_all(fd, buf, n) || send_all(fd, "\r\n", 2))
            break;
    }
    send_all(fd, "0\r\n\r\n", 5);
    free(buf);
}

static void test_413_chunked(void **state)
{
    /* under the limit: assembled across upload calls */
    int fd = conn_open(port);
    send_fmt(fd, "POST /api/v1/echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n");
    send_chunked(fd, MAX_BODY - 10, 333);
    hresp r = {0};
    r.raw = read_all(fd, &r.raw_len);
    close(fd);
    assert_int_equal(parse_resp(&r), 0);
    assert_int_equal(r.status, 200);
    json_t *j = body_json(&r);
    assert_int_equal(json_integer_value(json_object_get(j, "body_len")), MAX_BODY - 10);
    assert_int_equal(strlen(json_string_value(json_object_get(j, "body"))), MAX_BODY - 10);
    json_decref(j);
    hresp_free(&r);

    /* over it: 413, the handler is not called */
    fd = conn_open(port);
    send_fmt(fd, "POST /api/v1/echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n");
    send_chunked(fd, 20 * MAX_BODY, 1000);
    r.raw = read_all(fd, &r.raw_len);
    close(fd);
    assert_int_equal(parse_resp(&r), 0);
    expect_problem(&r, 413, NULL);
    hresp_free(&r);
}

static void test_malformed_json(void **state)
{
    hresp r;
    const char *bad = "{\n  \"a\": 1,\n  \"b\": }";
    do_req(&r, "POST", "/api/v1/things", NULL, bad, strlen(bad));
    expect_problem(&r, 400, "malformed JSON at line 3, column 8: ");
    hresp_free(&r);

    do_req(&r, "POST", "/api/v1/things", NULL, "", 0);
    expect_problem(&r, 400, "empty body");
    hresp_free(&r);

    const char *dup = "{\"a\":1,\"a\":2}";
    do_req(&r, "POST", "/api/v1/things", NULL, dup, strlen(dup));
    expect_problem(&r, 400, "duplicate");
    hresp_free(&r);

    const char *good = "{\"a\":1,\"b\":[1,2]}";
    do_req(&r, "POST", "/api/v1/things", NULL, good, strlen(good));
    assert_int_equal(r.status, 201);
    char v[128];
    assert_string_equal(hdr(&r, "Location", v, sizeof v), "/api/v1/things/1");
    json_t *j = body_json(&r);
    assert_int_equal(json_integer_value(json_object_get(j, "size")), 2);
    json_decref(j);
    hresp_free(&r);
}

static void test_problem_shape(void **state)
{
    hresp r;
    char v[128];
    do_req(&r, "GET", "/api/v1/conflict", NULL, NULL, 0);
    expect_problem(&r, 409, "already running");
    json_t *j = body_json(&r);
    assert_string_equal(json_string_value(json_object_get(j, "title")), "Conflict");
    assert_int_equal(json_integer_value(json_object_get(j, "job")), 7);
    assert_string_equal(json_string_value(json_object_get(j, "state")), "running");
    assert_int_equal(json_object_size(j), 6);
    json_decref(j);
    assert_string_equal(hdr(&r, "Cache-Control", v, sizeof v), "no-store");
    assert_string_equal(hdr(&r, "X-Content-Type-Options", v, sizeof v), "nosniff");
    hresp_free(&r);

    /* the helpers alone */
    http_response res;
    memset(&res, 0, sizeof res);
    http_problem(&res, 404, NULL, NULL);
    assert_string_equal(res.content_type, "application/problem+json");
    assert_string_equal(res.body, "{\"type\":\"about:blank\",\"title\":\"Not Found\",\"status\":404}");
    http_problem(&res, 422, "bad \"value\"", json_pack("{s:[s]}", "errors", "x"));
    assert_int_equal(res.status, 422);
    assert_string_equal(res.body, "{\"type\":\"about:blank\",\"title\":\"Unprocessable Content\",\"status\":422,"
                                  "\"detail\":\"bad \\\"value\\\"\",\"errors\":[\"x\"]}");
    assert_int_equal(res.body_len, strlen(res.body));
    http_text(&res, 200, NULL, "plain");
    assert_string_equal(res.body, "plain");
    assert_string_equal(res.content_type, "text/plain; charset=utf-8");
    http_json(&res, 200, json_pack("{s:i}", "a", 1));
    assert_string_equal(res.body, "{\"a\":1}");
    free(res.body);

    /* extra headers from a handler; its own Cache-Control wins */
    do_req(&r, "GET", "/api/v1/headers", NULL, NULL, 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(hdr(&r, "X-One", v, sizeof v), "1");
    assert_string_equal(hdr(&r, "X-Two", v, sizeof v), "two words");
    assert_string_equal(hdr(&r, "Cache-Control", v, sizeof v), "max-age=5");
    assert_string_equal(r.body, "hi");
    hresp_free(&r);
}

static void expect_static(const char *path, int status, const char *ctype, const char *body)
{
    hresp r;
    char v[128];
    do_req(&r, "GET", path, NULL, NULL, 0);
    if (r.status != status)
        fail_msg("GET %s: status %d, want %d", path, r.status, status);
    if (ctype)
        assert_string_equal(hdr(&r, "Content-Type", v, sizeof v), ctype);
    if (body)
        assert_string_equal(r.body, body);
    assert_null(strstr(r.raw, "TOP-SECRET"));
    assert_null(strstr(r.raw, "root:"));
    assert_string_equal(hdr(&r, "X-Content-Type-Options", v, sizeof v), "nosniff");
    hresp_free(&r);
}

static void test_static_files(void **state)
{
    expect_static("/", 200, "text/html; charset=utf-8", "<!doctype html><title>pgnd</title>");
    expect_static("/index.html", 200, "text/html; charset=utf-8", NULL);
    expect_static("/app.js", 200, "text/javascript; charset=utf-8", "console.log('pgnd');");
    expect_static("/style.css", 200, "text/css; charset=utf-8", NULL);
    expect_static("/logo.svg", 200, "image/svg+xml", NULL);
    expect_static("/font.woff2", 200, "font/woff2", NULL);
    expect_static("/data.bin", 200, "application/octet-stream", "\x01\x02");
    expect_static("/sub/", 200, "text/html; charset=utf-8", "<p>sub</p>");
    expect_static("/sub", 200, "text/html; charset=utf-8", "<p>sub</p>");
    expect_static("/app.js?v=3", 200, NULL, "console.log('pgnd');");
    expect_static("/missing.js", 404, NULL, NULL);
    /* traversal, raw and percent-encoded */
    expect_static("/../secret.txt", 404, NULL, NULL);
    expect_static("/../etc/passwd", 404, NULL, NULL);
    expect_static("/../../../../../../etc/passwd", 404, NULL, NULL);
    expect_static("/%2e%2e/secret.txt", 404, NULL, NULL);
    expect_static("/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd", 404, NULL, NULL);
    expect_static("/%2E%2E%2Fsecret.txt", 404, NULL, NULL);
    expect_static("/sub/../../secret.txt", 404, NULL, NULL);
    expect_static("/sub/%2e%2e/%2e%2e/secret.txt", 404, NULL, NULL);
    expect_static("/./index.html", 404, NULL, NULL);
    expect_static("/..%5csecret.txt", 404, NULL, NULL);

    hresp r;
    char v[64];
    do_req(&r, "HEAD", "/app.js", NULL, NULL, 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(hdr(&r, "Content-Length", v, sizeof v), "20");
    assert_int_equal(r.body_len, 0);
    hresp_free(&r);
    do_req(&r, "POST", "/app.js", NULL, "x", 1);
    assert_int_equal(r.status, 405);
    assert_string_equal(hdr(&r, "Allow", v, sizeof v), "GET, HEAD");
    hresp_free(&r);
}

static void test_file_response(void **state)
{
    hresp r;
    char v[64];
    do_req(&r, "GET", "/api/v1/download?f=blob.txt", NULL, NULL, 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "file response body");
    assert_string_equal(hdr(&r, "Content-Type", v, sizeof v), "application/octet-stream");
    hresp_free(&r);
    do_req(&r, "GET", "/api/v1/download?f=nope.txt", NULL, NULL, 0);
    expect_problem(&r, 404, NULL);
    hresp_free(&r);
    do_req(&r, "GET", "/api/v1/download?f=www", NULL, NULL, 0);  /* a directory */
    expect_problem(&r, 404, NULL);
    hresp_free(&r);
}

/* ---- SSE ---- */

typedef struct sse_client {
    int fd;
    char *raw;
    size_t n, cap;
    int status;
    char *body;       /* decoded so far */
    size_t body_len;
    int eof;
} sse_client;

static void sse_open(sse_client *c, int p, const char *path, const char *extra)
{
    memset(c, 0, sizeof *c);
    c->fd = conn_open(p);
    assert_true(c->fd >= 0);
    send_fmt(c->fd, "GET %s HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n%s\r\n", path,
             extra ? extra : "");
    c->cap = 65536;
    c->raw = malloc(c->cap);
    c->body = malloc(c->cap);
    c->body[0] = 0;
}

/* Reads until the decoded body contains `want` (or EOF when want is NULL) or timeout_s passes;
 * returns 1 when found. */
static int sse_wait_for(sse_client *c, const char *want, double timeout_s)
{
    double end = now_s() + timeout_s;
    for (;;) {
        char *sep = memmem(c->raw, c->n, "\r\n\r\n", 4);
        if (sep) {
            if (!c->status)
                sscanf(c->raw, "HTTP/1.%*d %d", &c->status);
            int done;
            size_t off = (size_t)(sep - c->raw) + 4;
            c->body_len = dechunk(c->raw + off, c->n - off, c->body, &done);
            if (want && strstr(c->body, want))
                return 1;
        }
        if (c->eof)
            return want == NULL;
        if (now_s() > end)
            return 0;
        struct timeval tv = {0, 100000};
        setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        assert_true(c->n + 4096 < c->cap);
        ssize_t r = recv(c->fd, c->raw + c->n, c->cap - c->n - 1, 0);
        if (r > 0)
            c->n += (size_t)r;
        else if (r == 0 || (errno != EAGAIN && errno != EINTR))
            c->eof = 1;
    }
}

static void sse_close(sse_client *c)
{
    if (c->fd >= 0)
        close(c->fd);
    free(c->raw);
    free(c->body);
    c->fd = -1;
}

static int wait_flag(volatile int *flag, int want, double timeout_s)
{
    double end = now_s() + timeout_s;
    while (__atomic_load_n(flag, __ATOMIC_SEQ_CST) != want)
        if (now_s() > end)
            return 0;
        else
            usleep(2000);
    return 1;
}

static void test_sse_events(void **state)
{
    sse_client c;
    __atomic_store_n(&stream_started, 0, __ATOMIC_SEQ_CST);
    sse_open(&c, port, "/api/v1/events?q=7", NULL);
    assert_true(sse_wait_for(&c, "data: last\n\n", 5));
    assert_int_equal(c.status, 200);
    char *head = strndup(c.raw, (size_t)((char *)memmem(c.raw, c.n, "\r\n\r\n", 4) - c.raw));
    assert_non_null(strcasestr(head, "\r\nContent-Type: text/event-stream"));
    assert_non_null(strcasestr(head, "\r\nCache-Control: no-cache"));
    assert_non_null(strcasestr(head, "\r\nX-Accel-Buffering: no"));
    free(head);
    const char *want =
        "id: 1\nevent: tick\ndata: {\"n\":1}\n\n"
        "id: 2\nevent: tick\ndata: line one\ndata: line two\ndata: line three\n\n"
        "id: 3\nevent: tick\ndata: {\"n\":3}\n\n"
        ": keepalive\n\n"
        "data: last\n\n";
    assert_string_equal(c.body, want);
    assert_string_equal(stream_seen_query, "7");
    assert_string_equal(stream_seen_last, "");

    /* the client hangs up: the handler (waiting, sending nothing) sees it at once */
    assert_int_equal(__atomic_load_n(&stream_done, __ATOMIC_SEQ_CST), 0);
    double t0 = now_s();
    sse_close(&c);
    assert_true(wait_flag(&stream_done, 1, 2.0));
    assert_true(now_s() - t0 < 1.0);

    /* reconnect with Last-Event-ID */
    sse_open(&c, port, "/api/v1/events", "Last-Event-ID: 41\r\n");
    assert_true(sse_wait_for(&c, "data: last\n\n", 5));
    assert_non_null(strstr(c.body, "id: 42\nevent: tick\n"));
    assert_non_null(strstr(c.body, "id: 44\n"));
    assert_null(strstr(c.body, "id: 41\n"));
    assert_string_equal(stream_seen_last, "41");
    sse_close(&c);
    assert_true(wait_flag(&stream_done, 1, 2.0));

    /* the guard refuses before the stream opens */
    hresp r;
    __atomic_store_n(&stream_started, 0, __ATOMIC_SEQ_CST);
    do_req(&r, "GET", "/api/v1/events", "X-Deny: 1\r\n", NULL, 0);
    expect_problem(&r, 401, "no token");
    hresp_free(&r);
    assert_int_equal(__atomic_load_n(&stream_started, __ATOMIC_SEQ_CST), 0);
}

/* http_stop with live streams: one handler sends in a loop (send fails), one waits (woken). */
static volatile int stop_sender_done, stop_waiter_done, stop_blocked_done;

static void s_sender(const http_request *r, http_sse *s, void *ctx)
{
    for (int64_t i = 1; http_sse_send(s, i, "n", "x") == 0; i++)
        usleep(10000);
    __atomic_store_n(&stop_sender_done, 1, __ATOMIC_SEQ_CST);
}

static void s_waiter(const http_request *r, http_sse *s, void *ctx)
{
    http_sse_send(s, 1, "hello", "w");
    while (!http_sse_wait(s, 60000)) {
    }
    __atomic_store_n(&stop_waiter_done, 1, __ATOMIC_SEQ_CST);
}

/* Polls http_sse_stopping only, as a handler waiting on something of its own would. */
static void s_poller(const http_request *r, http_sse *s, void *ctx)
{
    http_sse_send(s, 1, "hello", "p");
    while (!http_sse_stopping(s))
        usleep(20000);
    __atomic_store_n(&stop_blocked_done, 1, __ATOMIC_SEQ_CST);
}

static void test_sse_stop(void **state)
{
    http_server *s2;
    http_config cfg = {"127.0.0.1", 0, 1024, 4, NULL, 0};
    char err[256];
    assert_int_equal(http_start(&s2, &cfg, err, sizeof err), 0);
    int p2 = http_port(s2);
    assert_int_equal(http_route_sse(s2, "/api/s/send", NULL, s_sender, NULL), 0);
    assert_int_equal(http_route_sse(s2, "/api/s/wait", NULL, s_waiter, NULL), 0);
    assert_int_equal(http_route_sse(s2, "/api/s/poll", NULL, s_poller, NULL), 0);
    sse_client a, b, c;
    sse_open(&a, p2, "/api/s/send", NULL);
    sse_open(&b, p2, "/api/s/wait", NULL);
    sse_open(&c, p2, "/api/s/poll", NULL);
    assert_true(sse_wait_for(&a, "id: 3\n", 5));
    assert_true(sse_wait_for(&b, "data: w\n", 5));
    assert_true(sse_wait_for(&c, "data: p\n", 5));
    double t0 = now_s();
    http_stop(s2);
    double dt = now_s() - t0;
    assert_int_equal(stop_sender_done, 1);
    assert_int_equal(stop_waiter_done, 1);
    assert_int_equal(stop_blocked_done, 1);
    if (dt > 1.0)
        fail_msg("http_stop took %.2f s", dt);
    /* the clients see their streams end */
    assert_true(sse_wait_for(&a, NULL, 2));
    assert_true(sse_wait_for(&b, NULL, 2));
    assert_true(sse_wait_for(&c, NULL, 2));
    sse_close(&a);
    sse_close(&b);
    sse_close(&c);
}

/* ---- concurrency ---- */

static int ok_count;

static void *client_thread(void *arg)
{
    int t = (int)(intptr_t)arg;
    for (int i = 0; i < 50; i++) {
        int k = t * 1000 + i;
        char path[64], want[32];
        snprintf(path, sizeof path, "/api/v1/n/%d", k);
        snprintf(want, sizeof want, "n=%d", k);
        int fd = conn_open(port);
        if (fd < 0)
            continue;
        send_fmt(fd, "GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", path);
        hresp r = {0};
        r.raw = read_all(fd, &r.raw_len);
        close(fd);
        if (parse_resp(&r) == 0 && r.status == 200 && strcmp(r.body, want) == 0)
            __atomic_add_fetch(&ok_count, 1, __ATOMIC_SEQ_CST);
        hresp_free(&r);
    }
    return NULL;
}

static void test_concurrent(void **state)
{
    pthread_t th[8];
    ok_count = 0;
    for (int t = 0; t < 8; t++)
        assert_int_equal(pthread_create(&th[t], NULL, client_thread, (void *)(intptr_t)t), 0);
    for (int t = 0; t < 8; t++)
        pthread_join(th[t], NULL);
    assert_int_equal(ok_count, 400);
}

static void test_start_errors(void **state)
{
    http_server *s;
    char err[256];
    http_config bad = {"not-an-address", 0, 0, 1, NULL, 0};
    assert_int_equal(http_start(&s, &bad, err, sizeof err), -1);
    assert_non_null(strstr(err, "not-an-address"));
    /* the port in use */
    http_config same = {"127.0.0.1", port, 0, 1, NULL, 0};
    assert_int_equal(http_start(&s, &same, err, sizeof err), -1);
    assert_true(err[0] != 0);
    /* IPv6 loopback, where the host has it */
    http_config v6 = {"::1", 0, 0, 1, NULL, 0};
    if (http_start(&s, &v6, err, sizeof err) == 0) {
        assert_true(http_port(s) > 0);
        http_stop(s);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_routing_params),
        cmocka_unit_test(test_keepalive_two_requests),
        cmocka_unit_test(test_404_405),
        cmocka_unit_test(test_413_content_length),
        cmocka_unit_test(test_413_chunked),
        cmocka_unit_test(test_malformed_json),
        cmocka_unit_test(test_problem_shape),
        cmocka_unit_test(test_static_files),
        cmocka_unit_test(test_file_response),
        cmocka_unit_test(test_sse_events),
        cmocka_unit_test(test_sse_stop),
        cmocka_unit_test(test_concurrent),
        cmocka_unit_test(test_start_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
