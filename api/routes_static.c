/* The dashboard's routes (see api/routes_static.h): GET / and /index.html, /assets/{name},
 * /vendor/{name}. Only single file names under the two folders
 * are served (no directory traversal: a name is [A-Za-z0-9._-] without a leading dot, and the
 * route patterns match one path segment); other paths keep the HTTP layer's behaviour. */
#define _GNU_SOURCE
#include "api/routes_static.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "api/auth.h"
#include "api/routes.h"

#ifndef PGND_SHARE_WEB_DIR
#define PGND_SHARE_WEB_DIR "/usr/local/share/pgnd/web"
#endif

/* The page may load scripts, styles, images and data from pgnd only (no CDN, no inline script);
 * uPlot sets inline styles on its elements. */
#define CSP                                                                                                  \
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; " \
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

typedef struct static_routes {
    pgnd_daemon *d;
    char root[PATH_MAX];
    int found;
} static_routes;

static static_routes routes_ctx;

int static_name_ok(const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n > 128 || name[0] == '.')
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == '-'))
            return 0;
    }
    return 1;
}

const char *static_mime(const char *name)
{
    static const char *const map[][2] = {
        {"html", "text/html; charset=utf-8"},
        {"js", "text/javascript; charset=utf-8"},
        {"mjs", "text/javascript; charset=utf-8"},
        {"css", "text/css; charset=utf-8"},
        {"svg", "image/svg+xml"},
        {"png", "image/png"},
        {"ico", "image/x-icon"},
        {"json", "application/json"},
        {"map", "application/json"},
        {"woff2", "font/woff2"},
        {"txt", "text/plain; charset=utf-8"},
    };
    const char *dot = name ? strrchr(name, '.') : NULL;
    if (!dot)
        return NULL;
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (strcasecmp(dot + 1, map[i][0]) == 0)
            return map[i][1];
    return NULL;
}

static int has_index(const char *dir)
{
    char p[PATH_MAX + 16];
    struct stat st;
    snprintf(p, sizeof p, "%.*s/index.html", PATH_MAX - 1, dir);
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

int static_web_root(const char *configured_dir, char *out, size_t outlen)
{
    char cand[3][PATH_MAX];
    int n = 0;
    if (configured_dir && *configured_dir)
        snprintf(cand[n++], sizeof cand[0], "%s", configured_dir);
    /* next to an installed binary: PREFIX/bin/pgnd -> PREFIX/share/pgnd/web */
    char exe[PATH_MAX];
    ssize_t l = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (l > 0) {
        exe[l] = 0;
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = 0;
            snprintf(cand[n++], sizeof cand[0], "%.*s/../share/pgnd/web", PATH_MAX - 24, exe);
        }
    }
    snprintf(cand[n++], sizeof cand[0], "%s", PGND_SHARE_WEB_DIR);
    for (int i = 0; i < n; i++) {
        if (!has_index(cand[i]))
            continue;
        char real[PATH_MAX];
        snprintf(out, outlen, "%s", realpath(cand[i], real) ? real : cand[i]);
        return 0;
    }
    snprintf(out, outlen, "%s", configured_dir ? configured_dir : "");
    return -1;
}

/* A weak validator from the file's size and modification time. */
static void etag_of(const struct stat *st, char *out, size_t len)
{
    snprintf(out, len, "W/\"%llx-%llx\"", (unsigned long long)st->st_size,
             (unsigned long long)st->st_mtim.tv_sec * 1000000000ull + (unsigned long long)st->st_mtim.tv_nsec);
}

static int etag_matches(const char *header, const char *etag)
{
    if (!header)
        return 0;
    if (!strcmp(header, "*"))
        return 1;
    /* a list of tags; weak comparison: W/"x" matches "x" too */
    const char *bare = etag + 2;
    return strstr(header, bare) != NULL;
}

static void not_found_page(http_response *res, const static_routes *sr)
{
    char page[2048];
    snprintf(page, sizeof page,
             "<!doctype html><meta charset=utf-8><title>pgnd</title>"
             "<body style=\"font:15px system-ui,sans-serif;max-width:40em;margin:3em auto\">"
             "<h1>pgnd is running</h1><p>but its dashboard files were not found: no <code>index.html</code> in the "
             "configured <code>web_dir</code> (<code>%s</code>), next to the binary "
             "(<code>../share/pgnd/web</code>) or in <code>%s</code>.</p>"
             "<p>From a source tree run <code>make web</code> and start pgnd with <code>--web-dir web</code>; an "
             "installed pgnd gets them from <code>make install</code>. The REST API is under "
             "<a href=\"/api/v1/info\"><code>/api/v1/</code></a>.</p>",
             sr->d->cfg.web_dir, PGND_SHARE_WEB_DIR);
    http_text(res, 404, "text/html; charset=utf-8", page);
}

/* Serves root/sub/name (sub may be ""), or fills res with a 404 / 304. */
static void serve_file(const http_request *r, http_response *res, const char *sub, const char *name)
{
    static_routes *sr = &routes_ctx;
    const char *mime = static_mime(name);
    if (!static_name_ok(name) || !mime) {
        http_problem(res, 404, "not found", NULL);
        return;
    }
    char root[PATH_MAX];
    if (!sr->found) {
        /* The files may have appeared since the start (`make web` while pgnd runs). */
        if (static_web_root(sr->d->cfg.web_dir, root, sizeof root)) {
            if (!strcmp(name, "index.html"))
                not_found_page(res, sr);
            else
                http_problem(res, 404, "not found (the dashboard's files are missing)", NULL);
            return;
        }
    } else {
        memcpy(root, sr->root, sizeof root);
    }
    int n = snprintf(res->file_path, sizeof res->file_path, "%s/%s%s%s", root, sub, *sub ? "/" : "", name);
    struct stat st;
    if (n < 0 || (size_t)n >= sizeof res->file_path || stat(res->file_path, &st) != 0 || !S_ISREG(st.st_mode)) {
        res->file_path[0] = 0;
        http_problem(res, 404, "not found", NULL);
        return;
    }
    char etag[64], date[64];
    etag_of(&st, etag, sizeof etag);
    struct tm tm;
    gmtime_r(&st.st_mtim.tv_sec, &tm);
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    /* Revalidate every time (a 304 costs nothing on a LAN), so an upgraded pgnd never mixes old
     * and new scripts. */
    int at = snprintf(res->extra_headers, sizeof res->extra_headers,
                      "Cache-Control: no-cache\r\nETag: %s\r\nLast-Modified: %s\r\n", etag, date);
    if (!strcmp(name, "index.html") && !*sub && at > 0)
        snprintf(res->extra_headers + at, sizeof res->extra_headers - (size_t)at,
                 "Content-Security-Policy: " CSP "\r\nReferrer-Policy: no-referrer\r\n");
    if (etag_matches(http_header(r, "If-None-Match"), etag)) {
        res->file_path[0] = 0;
        res->status = 304;
        return;
    }
    res->status = 200;
    snprintf(res->content_type, sizeof res->content_type, "%s", mime);
}

static void index_page(const http_request *r, http_response *res, void *ctx) { serve_file(r, res, "", "index.html"); }
static void asset(const http_request *r, http_response *res, void *ctx) { serve_file(r, res, "assets", r->params[0]); }
static void vendor(const http_request *r, http_response *res, void *ctx) { serve_file(r, res, "vendor", r->params[0]); }

void api_register_static(http_server *srv, pgnd_daemon *d)
{
    routes_ctx.d = d;
    routes_ctx.found = static_web_root(d->cfg.web_dir, routes_ctx.root, sizeof routes_ctx.root) == 0;
    if (routes_ctx.found)
        daemon_log(d, "info", "dashboard files from %s", routes_ctx.root);
    else
        daemon_log(d, "warn",
                   "no dashboard files (no index.html in web_dir \"%s\", ../share/pgnd/web or %s): / answers 404",
                   d->cfg.web_dir, PGND_SHARE_WEB_DIR);
    http_route(srv, "GET", "/", index_page, d);
    http_route(srv, "GET", "/index.html", index_page, d);
    http_route(srv, "GET", "/assets/{name}", asset, d);
    http_route(srv, "GET", "/vendor/{name}", vendor, d);
}
