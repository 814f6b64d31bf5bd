/* pgnd's HTTP layer on libmicrohttpd (see api/http.h): the server, the routing table, request
 * bodies with a size limit, problem+json, static files. SSE streams are in api/http_sse.c.
 *
 * MHD runs one thread per connection (MHD_USE_THREAD_PER_CONNECTION), so handlers run
 * concurrently, each on its connection's thread, and may block. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "api/http_internal.h"

#include <semaphore.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAX_SEGS 32            /* path segments a route may have */
#define MAX_PARAMS 4           /* as http_request.params */
#define DEFAULT_MAX_BODY (1u << 20)
#define CONN_TIMEOUT_S 30
/* A chunked body over the limit is read and thrown away (MHD cannot answer in the middle of an
 * upload) so that the client gets its 413; past this much more, the connection is cut instead. */
#define DISCARD_MAX (8u << 20)

typedef struct http_route_ent {
    char method[16];
    char *pattern;             /* for messages */
    char *segs[MAX_SEGS];      /* NULL = "{param}" segment */
    int nsegs;
    int sse;
    http_handler h;
    http_sse_handler sh;
    http_sse_guard guard;
    void *ctx;
} http_route_ent;

/* Per-request state (MHD's *con_cls), freed when MHD completes the request. */
typedef struct req_ctx {
    char *body;
    size_t len, cap;
    int too_large;             /* over max_body: data is being discarded */
    size_t discarded;
    int responded;             /* a response was queued on the first call */
} req_ctx;

/* ---- small helpers ---- */

int http_cond_init_(pthread_cond_t *c)
{
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(c, &a);
    pthread_condattr_destroy(&a);
    return rc;
}

void http_deadline_(struct timespec *ts, int ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static int is_api_path(const char *path)
{
    return strncmp(path, "/api/", 5) == 0 || strcmp(path, "/api") == 0;
}

static const char *reason(int status)
{
    const char *p = MHD_get_reason_phrase_for((unsigned)status);
    return p && *p ? p : "Unknown";
}

/* ---- public helpers that fill a response ---- */

static void set_body(http_response *res, int status, const char *ctype, char *body, size_t len)
{
    free(res->body);
    res->status = status;
    snprintf(res->content_type, sizeof res->content_type, "%s", ctype);
    res->body = body;
    res->body_len = len;
    res->file_path[0] = 0;
}

void http_problem(http_response *res, int status, const char *detail, json_t *extra)
{
    json_t *o = json_object();
    json_object_set_new(o, "type", json_string("about:blank"));
    json_object_set_new(o, "title", json_string(reason(status)));
    json_object_set_new(o, "status", json_integer(status));
    if (detail)
        json_object_set_new(o, "detail", json_string(detail));
    if (json_is_object(extra)) {
        json_object_update(o, extra);
        json_object_set_new(o, "status", json_integer(status));  /* always the real status */
    }
    json_decref(extra);
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!s) /* only on out of memory, or detail not UTF-8 */
        s = strdup("{\"type\":\"about:blank\",\"title\":\"Internal Server Error\",\"status\":500}");
    set_body(res, status, "application/problem+json", s, s ? strlen(s) : 0);
}

void http_json(http_response *res, int status, json_t *body)
{
    /* 9 significant digits round-trip a float32 exactly and keep metric curves small. */
    char *s = json_dumps(body ? body : json_null(), JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(9));
    json_decref(body);
    if (!s) {
        http_problem(res, 500, "the response could not be encoded as JSON", NULL);
        return;
    }
    set_body(res, status, "application/json", s, strlen(s));
}

void http_text(http_response *res, int status, const char *content_type, const char *text)
{
    char *s = strdup(text ? text : "");
    set_body(res, status, content_type ? content_type : "text/plain; charset=utf-8", s,
             s ? strlen(s) : 0);
}

json_t *http_parse_json(const http_request *r, http_response *res)
{
    if (!r->body || r->body_len == 0) {
        http_problem(res, 400, "empty body", NULL);
        return NULL;
    }
    json_error_t e;
    json_t *j = json_loadb(r->body, r->body_len, JSON_REJECT_DUPLICATES, &e);
    if (!j) {
        char d[320];
        snprintf(d, sizeof d, "malformed JSON at line %d, column %d: %s", e.line, e.column, e.text);
        http_problem(res, 400, d, NULL);
    }
    return j;
}

/* ---- request headers and query arguments ---- */

static const char *kv_find(const http_request *r, int kind, const char *key)
{
    const http_reqinfo *in = r ? r->conn : NULL;
    if (!in || !key)
        return NULL;
    for (int i = 0; i < in->nkv; i++) {
        const http_kv *k = &in->kv[i];
        if (k->kind != kind || !k->key)
            continue;
        if (kind == 0 ? strcasecmp(k->key, key) == 0 : strcmp(k->key, key) == 0)
            return k->val ? k->val : "";
    }
    return NULL;
}

const char *http_query(const http_request *r, const char *key) { return kv_find(r, 1, key); }
const char *http_header(const http_request *r, const char *name) { return kv_find(r, 0, name); }

typedef struct kv_collect {
    http_kv *kv;
    int n, cap;
} kv_collect;

static enum MHD_Result collect_kv(void *cls, enum MHD_ValueKind kind, const char *key,
                                  const char *value)
{
    kv_collect *c = cls;
    if (c->n == c->cap) {
        int cap = c->cap ? c->cap * 2 : 16;
        http_kv *p = realloc(c->kv, (size_t)cap * sizeof *p);
        if (!p)
            return MHD_NO;
        c->kv = p;
        c->cap = cap;
    }
    c->kv[c->n++] = (http_kv){kind == MHD_HEADER_KIND ? 0 : 1, key, value};
    return MHD_YES;
}

/* ---- responses ---- */

static const char *mime_for(const char *path)
{
    static const char *const map[][2] = {
        {"html", "text/html; charset=utf-8"},
        {"js", "text/javascript; charset=utf-8"},
        {"css", "text/css; charset=utf-8"},
        {"svg", "image/svg+xml"},
        {"png", "image/png"},
        {"json", "application/json"},
        {"map", "application/json"},
        {"woff2", "font/woff2"},
    };
    const char *slash = strrchr(path, '/');
    const char *dot = strrchr(path, '.');
    if (dot && (!slash || dot > slash))
        for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
            if (strcasecmp(dot + 1, map[i][0]) == 0)
                return map[i][1];
    return "application/octet-stream";
}

/* "Name: value\r\n" lines (a bare "\n" also ends a line). */
static void add_extra_headers(struct MHD_Response *mr, const char *lines)
{
    char buf[sizeof ((http_response *)0)->extra_headers + 1];
    snprintf(buf, sizeof buf, "%s", lines);
    char *save = NULL;
    for (char *ln = strtok_r(buf, "\r\n", &save); ln; ln = strtok_r(NULL, "\r\n", &save)) {
        char *colon = strchr(ln, ':');
        if (!colon || colon == ln)
            continue;
        *colon = 0;
        char *v = colon + 1;
        while (*v == ' ' || *v == '\t')
            v++;
        if (MHD_add_response_header(mr, ln, v) != MHD_YES)
            fprintf(stderr, "http: header \"%s\" refused\n", ln);
    }
}

enum MHD_Result http_send_(struct MHD_Connection *c, http_response *res, int is_api)
{
    struct MHD_Response *mr = NULL;
    const char *ctype = res->content_type;
    if (!res->body && res->file_path[0]) {
        int fd = open(res->file_path, O_RDONLY | O_CLOEXEC);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
            if (fd >= 0)
                close(fd);
            return http_send_problem_(c, 404, "no such file", is_api);
        }
        mr = MHD_create_response_from_fd64((uint64_t)st.st_size, fd);
        if (!mr) {
            close(fd);
            return MHD_NO;
        }
        if (!ctype[0])
            ctype = mime_for(res->file_path);
    } else {
        mr = MHD_create_response_from_buffer(res->body ? res->body_len : 0, res->body,
                                             MHD_RESPMEM_MUST_FREE);
        if (!mr) {
            free(res->body);
            res->body = NULL;
            return MHD_NO;
        }
        res->body = NULL;  /* MHD frees it */
    }
    if (ctype[0])
        MHD_add_response_header(mr, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    if (res->location[0])
        MHD_add_response_header(mr, MHD_HTTP_HEADER_LOCATION, res->location);
    if (res->extra_headers[0])
        add_extra_headers(mr, res->extra_headers);
    MHD_add_response_header(mr, "X-Content-Type-Options", "nosniff");
    if (is_api && !MHD_get_response_header(mr, MHD_HTTP_HEADER_CACHE_CONTROL))
        MHD_add_response_header(mr, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    int status = res->status >= 100 && res->status <= 999 ? res->status : 500;
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)status, mr);
    MHD_destroy_response(mr);
    return ret;
}

enum MHD_Result http_send_problem_(struct MHD_Connection *c, int status, const char *detail,
                                   int is_api)
{
    http_response res;
    memset(&res, 0, sizeof res);
    http_problem(&res, status, detail, NULL);
    return http_send_(c, &res, is_api);
}

static enum MHD_Result send_405(struct MHD_Connection *c, const char *allow, int is_api)
{
    http_response res;
    memset(&res, 0, sizeof res);
    char d[160];
    snprintf(d, sizeof d, "method not allowed here; allowed: %s", allow);
    http_problem(&res, 405, d, NULL);
    snprintf(res.extra_headers, sizeof res.extra_headers, "Allow: %s\r\n", allow);
    return http_send_(c, &res, is_api);
}

/* ---- routing ---- */

/* Splits "/a/b/c" (in place, p is a copy) into segments; -1 when too many. */
static int split_path(char *p, char **segs, int max)
{
    int n = 0;
    if (*p == '/')
        p++;
    if (!*p)
        return 0;
    for (;;) {
        if (n == max)
            return -1;
        segs[n++] = p;
        char *s = strchr(p, '/');
        if (!s)
            break;
        *s = 0;
        p = s + 1;
    }
    return n;
}

/* Does the route match these segments? Fills params; returns a specificity score (literal
 * segments to the left weigh more) + 1, or 0. */
static unsigned route_match(const http_route_ent *rt, char **segs, int n, const char **params)
{
    if (rt->nsegs != n)
        return 0;
    unsigned score = 1;
    int np = 0;
    for (int i = 0; i < n; i++) {
        if (rt->segs[i]) {
            if (strcmp(rt->segs[i], segs[i]) != 0)
                return 0;
            score += 1u << (MAX_SEGS - 1 - i);
        } else {
            if (!segs[i][0])
                return 0;
            if (params)
                params[np] = segs[i];
            np++;
        }
    }
    return score;
}

static int add_route(http_server *srv, const char *method, const char *pattern, int sse,
                     http_handler h, http_sse_guard guard, http_sse_handler sh, void *ctx)
{
    if (!srv || !method || !pattern || pattern[0] != '/' || (!h && !sh) ||
        strlen(method) >= sizeof ((http_route_ent *)0)->method) {
        fprintf(stderr, "http: bad route %s %s\n", method ? method : "?",
                pattern ? pattern : "?");
        return -1;
    }
    http_route_ent rt;
    memset(&rt, 0, sizeof rt);
    snprintf(rt.method, sizeof rt.method, "%s", method);
    rt.pattern = strdup(pattern);
    char *tmp = strdup(pattern);
    char *segs[MAX_SEGS];
    int n = tmp ? split_path(tmp, segs, MAX_SEGS) : -1;
    int nparams = 0, ok = rt.pattern && n >= 0;
    for (int i = 0; ok && i < n; i++) {
        size_t l = strlen(segs[i]);
        if (l >= 2 && segs[i][0] == '{' && segs[i][l - 1] == '}') {
            if (++nparams > MAX_PARAMS)
                ok = 0;
            rt.segs[i] = NULL;
        } else if (!(rt.segs[i] = strdup(segs[i]))) {
            ok = 0;
        }
    }
    rt.nsegs = n;
    free(tmp);
    rt.sse = sse;
    rt.h = h;
    rt.sh = sh;
    rt.guard = guard;
    rt.ctx = ctx;
    if (ok) {
        pthread_rwlock_wrlock(&srv->rt_lock);
        if (srv->nroutes == srv->cap_routes) {
            int cap = srv->cap_routes ? srv->cap_routes * 2 : 32;
            http_route_ent *p = realloc(srv->routes, (size_t)cap * sizeof *p);
            if (p) {
                srv->routes = p;
                srv->cap_routes = cap;
            } else {
                ok = 0;
            }
        }
        if (ok)
            srv->routes[srv->nroutes++] = rt;
        pthread_rwlock_unlock(&srv->rt_lock);
    }
    if (!ok) {
        fprintf(stderr, "http: cannot add route %s %s (too many segments or parameters?)\n",
                method, pattern);
        for (int i = 0; i < MAX_SEGS; i++)
            free(rt.segs[i]);
        free(rt.pattern);
        return -1;
    }
    return 0;
}

int http_route(http_server *srv, const char *method, const char *pattern, http_handler h, void *ctx)
{
    return add_route(srv, method, pattern, 0, h, NULL, NULL, ctx);
}

int http_route_sse(http_server *srv, const char *pattern, http_sse_guard guard, http_sse_handler h,
                   void *ctx)
{
    return add_route(srv, "GET", pattern, 1, NULL, guard, h, ctx);
}

/* ---- static files ---- */

static enum MHD_Result serve_static(http_server *srv, struct MHD_Connection *c, const char *method,
                                    const char *url)
{
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return send_405(c, "GET, HEAD", 0);
    /* url is already percent-decoded by MHD, so "%2e%2e" arrives as "..". Refuse any "." or ".."
     * segment, backslashes and control characters. */
    const char *p = url;
    if (*p != '/')
        return http_send_problem_(c, 404, "not found", 0);
    while (*p) {
        const char *seg = ++p;
        while (*p && *p != '/')
            p++;
        size_t l = (size_t)(p - seg);
        if ((l == 1 && seg[0] == '.') || (l == 2 && seg[0] == '.' && seg[1] == '.'))
            return http_send_problem_(c, 404, "not found", 0);
    }
    for (p = url; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == '\\' || *p == 0x7f)
            return http_send_problem_(c, 404, "not found", 0);

    http_response res;
    memset(&res, 0, sizeof res);
    res.status = 200;
    size_t ul = strlen(url);
    int n = snprintf(res.file_path, sizeof res.file_path, "%s%s%s", srv->static_dir, url,
                     url[ul - 1] == '/' ? "index.html" : "");
    if (n < 0 || (size_t)n >= sizeof res.file_path)
        return http_send_problem_(c, 404, "not found", 0);
    struct stat st;
    if (stat(res.file_path, &st) == 0 && S_ISDIR(st.st_mode)) {
        /* a directory without the trailing slash: its index.html, no listing */
        if (strlen(res.file_path) + sizeof "/index.html" > sizeof res.file_path)
            return http_send_problem_(c, 404, "not found", 0);
        strcat(res.file_path, "/index.html");
    }
    return http_send_(c, &res, 0);
}

/* ---- the MHD callbacks ---- */

static void request_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                              enum MHD_RequestTerminationCode toe)
{
    req_ctx *rc = *con_cls;
    if (rc) {
        free(rc->body);
        free(rc);
        *con_cls = NULL;
    }
}

static void remote_text(struct MHD_Connection *c, char *out, size_t n)
{
    out[0] = 0;
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (!ci || !ci->client_addr)
        return;
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, out, (socklen_t)n);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, out, (socklen_t)n);
}

static enum MHD_Result dispatch(http_server *srv, struct MHD_Connection *c, const char *url,
                                const char *method, req_ctx *rc)
{
    int is_api = is_api_path(url);
    char *pathcopy = strdup(url);
    if (!pathcopy)
        return MHD_NO;
    char *segs[MAX_SEGS + 1];
    int n = split_path(pathcopy, segs, MAX_SEGS + 1);

    /* find the route: the most specific match with this method (HEAD runs GET routes); else the
     * methods that would match, for 405 */
    const char *want = strcmp(method, "HEAD") == 0 ? "GET" : method;
    const char *params[MAX_PARAMS] = {0};
    int nparams = 0, found = 0, sse = 0;
    http_handler h = NULL;
    http_sse_handler sh = NULL;
    http_sse_guard guard = NULL;
    void *hctx = NULL;
    char allow[160] = "";
    unsigned best = 0;
    pthread_rwlock_rdlock(&srv->rt_lock);
    for (int i = 0; n >= 0 && i < srv->nroutes; i++) {
        const http_route_ent *rt = &srv->routes[i];
        unsigned sc = route_match(rt, segs, n, NULL);
        if (!sc)
            continue;
        if (strcmp(rt->method, want) == 0 && !(rt->sse && strcmp(method, "GET") != 0)) {
            if (sc > best) {
                best = sc;
                found = 1;
                sse = rt->sse;
                h = rt->h;
                sh = rt->sh;
                guard = rt->guard;
                hctx = rt->ctx;
                nparams = 0;
                for (int k = 0; k < rt->nsegs; k++)
                    if (!rt->segs[k])
                        params[nparams++] = segs[k];
            }
        } else {
            /* collect "A, B" without duplicates; GET routes allow HEAD too (not SSE ones) */
            const char *ms[2] = {rt->method, strcmp(rt->method, "GET") == 0 && !rt->sse ? "HEAD" : NULL};
            for (int m = 0; m < 2 && ms[m]; m++) {
                int dup = 0;
                for (const char *q = allow; (q = strstr(q, ms[m])); q++) {
                    size_t l = strlen(ms[m]);
                    if ((q == allow || q[-1] == ' ') && (q[l] == ',' || q[l] == 0)) {
                        dup = 1;
                        break;
                    }
                }
                if (!dup && strlen(allow) + strlen(ms[m]) + 3 < sizeof allow)
                    snprintf(allow + strlen(allow), sizeof allow - strlen(allow), "%s%s",
                             allow[0] ? ", " : "", ms[m]);
            }
        }
    }
    pthread_rwlock_unlock(&srv->rt_lock);

    enum MHD_Result ret;
    if (!found && allow[0]) {
        ret = send_405(c, allow, is_api);
    } else if (!found) {
        if (!is_api && srv->static_dir)
            ret = serve_static(srv, c, method, url);
        else
            ret = http_send_problem_(c, 404, "no such resource", is_api);
    } else {
        kv_collect kc = {0};
        MHD_get_connection_values(c, MHD_HEADER_KIND | MHD_GET_ARGUMENT_KIND, collect_kv, &kc);
        http_reqinfo info = {kc.kv, kc.n};
        char remote[INET6_ADDRSTRLEN + 1];
        remote_text(c, remote, sizeof remote);
        http_request r;
        memset(&r, 0, sizeof r);
        r.method = method;
        r.path = url;
        for (int i = 0; i < nparams; i++)
            r.params[i] = params[i];
        r.n_params = nparams;
        r.body = rc->len ? rc->body : NULL;
        r.body_len = rc->len;
        r.conn = &info;
        r.authorization = http_header(&r, MHD_HTTP_HEADER_AUTHORIZATION);
        r.cookie = http_header(&r, MHD_HTTP_HEADER_COOKIE);
        r.last_event_id = http_header(&r, "Last-Event-ID");
        r.remote = remote;
        http_response res;
        memset(&res, 0, sizeof res);
        if (sse && guard && guard(&r, &res, hctx) != 0) {
            /* refused before the stream opens */
            if (res.status == 0) {
                free(res.body);
                memset(&res, 0, sizeof res);
                http_problem(&res, 403, "not allowed", NULL);
            }
            ret = http_send_(c, &res, is_api);
        } else if (sse) {
            free(res.body);
            ret = http_sse_start_(srv, c, &r, sh, hctx, is_api);
        } else {
            /* At most a few handlers compute at once: 50 clients must not become 50 runnable
             * threads taking the cores from a training job (waiting threads cost nothing). */
            sem_wait(&srv->busy);
            h(&r, &res, hctx);
            sem_post(&srv->busy);
            if (res.status == 0) {
                free(res.body);
                memset(&res, 0, sizeof res);
                http_problem(&res, 404, "no such resource", NULL);
            }
            ret = http_send_(c, &res, is_api);
        }
        free(kc.kv);
    }
    free(pathcopy);
    return ret;
}

/* Handlers running at the same time (request threads beyond it wait for a turn). */
#define HANDLERS_AT_ONCE 2

void http_thread_nice(const http_server *srv)
{
    static __thread int done;
    if (!done && srv->nice) {
        /* Linux: a thread id is a process id for setpriority, so this lowers this thread only. */
        setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), srv->nice);
    }
    done = 1;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_size, void **con_cls)
{
    http_server *srv = cls;
    http_thread_nice(srv);
    req_ctx *rc = *con_cls;
    if (!rc) {
        /* first call: headers only. Refuse a declared oversized body before reading it. */
        rc = calloc(1, sizeof *rc);
        if (!rc)
            return MHD_NO;
        *con_cls = rc;
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                     MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl) {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(cl, &end, 10);
            if (errno == ERANGE || v > srv->max_body) {
                rc->responded = 1;
                char d[96];
                snprintf(d, sizeof d, "request body over the limit of %zu bytes", srv->max_body);
                return http_send_problem_(c, 413, d, is_api_path(url));
            }
        }
        return MHD_YES;
    }
    if (rc->responded)
        return MHD_YES;
    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (!rc->too_large && n > srv->max_body - rc->len) {
            rc->too_large = 1;
            free(rc->body);
            rc->body = NULL;
            rc->len = rc->cap = 0;
        }
        if (rc->too_large) {
            rc->discarded += n;
            if (rc->discarded <= DISCARD_MAX)
                return MHD_YES;
            fprintf(stderr, "http: %s %s: body far over the limit of %zu bytes, connection cut\n",
                    method, url, srv->max_body);
            return MHD_NO;
        }
        if (rc->len + n + 1 > rc->cap) {
            size_t cap = rc->cap ? rc->cap : 4096;
            while (cap < rc->len + n + 1)
                cap *= 2;
            if (cap > srv->max_body + 1)
                cap = srv->max_body + 1;
            char *b = realloc(rc->body, cap);
            if (!b)
                return MHD_NO;
            rc->body = b;
            rc->cap = cap;
        }
        memcpy(rc->body + rc->len, upload_data, n);
        rc->len += n;
        rc->body[rc->len] = 0;
        return MHD_YES;
    }
    /* last call: the whole request is here */
    rc->responded = 1;
    if (rc->too_large) {
        char d[96];
        snprintf(d, sizeof d, "request body over the limit of %zu bytes", srv->max_body);
        return http_send_problem_(c, 413, d, is_api_path(url));
    }
    return dispatch(srv, c, url, method, rc);
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    char buf[512];
    vsnprintf(buf, sizeof buf, fmt, ap);
    size_t l = strlen(buf);
    while (l && (buf[l - 1] == '\n' || buf[l - 1] == '\r'))
        buf[--l] = 0;
    fprintf(stderr, "http: %s\n", buf);
}

/* ---- start / stop ---- */

static void free_server(http_server *srv)
{
    for (int i = 0; i < srv->nroutes; i++) {
        for (int k = 0; k < srv->routes[i].nsegs; k++)
            free(srv->routes[i].segs[k]);
        free(srv->routes[i].pattern);
    }
    free(srv->routes);
    free(srv->static_dir);
    pthread_rwlock_destroy(&srv->rt_lock);
    pthread_mutex_destroy(&srv->mu);
    pthread_cond_destroy(&srv->cond);
    sem_destroy(&srv->busy);
    free(srv);
}

int http_start(http_server **out, const http_config *cfg, char *err, size_t errlen)
{
    char dummy[8];
    if (!err || !errlen) {
        err = dummy;
        errlen = sizeof dummy;
    }
    err[0] = 0;
    *out = NULL;
    if (!cfg || cfg->port < 0 || cfg->port > 65535) {
        snprintf(err, errlen, "http: bad configuration");
        return -1;
    }
    const char *addr = cfg->address && *cfg->address ? cfg->address : "127.0.0.1";
    struct sockaddr_in6 sa6;
    struct sockaddr_in sa4;
    struct sockaddr *sa;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION |
                     MHD_USE_ERROR_LOG | MHD_USE_ITC | MHD_USE_POLL;  /* poll: no FD_SETSIZE cap */
    memset(&sa4, 0, sizeof sa4);
    memset(&sa6, 0, sizeof sa6);
    if (inet_pton(AF_INET, addr, &sa4.sin_addr) == 1) {
        sa4.sin_family = AF_INET;
        sa4.sin_port = htons((uint16_t)cfg->port);
        sa = (struct sockaddr *)&sa4;
    } else {
        /* "::1" or "[::1]" */
        char a6[INET6_ADDRSTRLEN + 2];
        size_t l = strlen(addr);
        if (addr[0] == '[' && l >= 2 && addr[l - 1] == ']' && l - 2 < sizeof a6)
            snprintf(a6, sizeof a6, "%.*s", (int)(l - 2), addr + 1);
        else
            snprintf(a6, sizeof a6, "%s", addr);
        if (inet_pton(AF_INET6, a6, &sa6.sin6_addr) != 1) {
            snprintf(err, errlen, "http: listen address \"%s\" is not an IPv4 or IPv6 address",
                     addr);
            return -1;
        }
        sa6.sin6_family = AF_INET6;
        sa6.sin6_port = htons((uint16_t)cfg->port);
        sa = (struct sockaddr *)&sa6;
        flags |= MHD_USE_IPv6;
    }

    http_server *srv = calloc(1, sizeof *srv);
    if (!srv) {
        snprintf(err, errlen, "http: out of memory");
        return -1;
    }
    srv->max_body = cfg->max_body ? cfg->max_body : DEFAULT_MAX_BODY;
    srv->nice = cfg->nice;
    sem_init(&srv->busy, 0, HANDLERS_AT_ONCE);
    if (cfg->static_dir && *cfg->static_dir) {
        srv->static_dir = strdup(cfg->static_dir);
        size_t l = srv->static_dir ? strlen(srv->static_dir) : 0;
        while (l > 1 && srv->static_dir[l - 1] == '/')
            srv->static_dir[--l] = 0;
    }
    pthread_rwlock_init(&srv->rt_lock, NULL);
    pthread_mutex_init(&srv->mu, NULL);
    http_cond_init_(&srv->cond);

    /* (no MHD_OPTION_LISTENING_ADDRESS_REUSE: on Linux it means SO_REUSEPORT, which would let a
     * second pgnd share the port; MHD sets SO_REUSEADDR itself) */
    srv->d = MHD_start_daemon(flags, (uint16_t)cfg->port, NULL, NULL, on_request, srv,
                              MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
                              MHD_OPTION_SOCK_ADDR, sa,
                              MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)CONN_TIMEOUT_S,
                              MHD_OPTION_NOTIFY_COMPLETED, request_completed, srv,
                              MHD_OPTION_END);
    if (!srv->d) {
        snprintf(err, errlen, "http: cannot listen on %s port %d (address in use or not local?)",
                 addr, cfg->port);
        free_server(srv);
        return -1;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(srv->d, MHD_DAEMON_INFO_BIND_PORT);
    srv->port = di && di->port ? di->port : cfg->port;
    *out = srv;
    return 0;
}

int http_port(const http_server *srv) { return srv ? srv->port : 0; }

void http_stop(http_server *srv)
{
    if (!srv)
        return;
    /* no new connections; then end the streams (their handlers return), then MHD, which waits
     * for the connection threads, i.e. for handlers still running */
    MHD_socket ls = MHD_quiesce_daemon(srv->d);
    http_sse_stop_all_(srv);
    MHD_stop_daemon(srv->d);
    if (ls != MHD_INVALID_SOCKET)
        close(ls);
    free_server(srv);
}
