/* The dashboard's routes: the files under web/ at "/" (index.html, assets/, vendor/), with their
 * content types, validators (ETag, Last-Modified, 304) and cache headers, and the event cursor the
 * dashboard opens its live stream at (GET /api/v1/events/latest).
 *
 * The web root is the first of: the configured web_dir (`web_dir` key, --web-dir, PGND_WEB_DIR;
 * default "web", relative to the working directory), <dir of the pgnd binary>/../share/pgnd/web
 * (where `make install PREFIX=...` puts the files), and PGND_SHARE_WEB_DIR (compile-time,
 * default /usr/local/share/pgnd/web) that holds an index.html. */
#ifndef PGND_API_ROUTES_STATIC_H
#define PGND_API_ROUTES_STATIC_H

#include <stddef.h>

#include "api/http.h"
#include "daemon/daemon.h"

void api_register_static(http_server *srv, pgnd_daemon *d);

/* Exposed for tests. The web root chosen for configured_dir (see above) into out; -1 when none
 * of the candidates holds an index.html (out then holds configured_dir). */
int static_web_root(const char *configured_dir, char *out, size_t outlen);
/* 1 when name is a file name the dashboard routes may serve: [A-Za-z0-9._-], not starting with a
 * dot, at most 128 characters. */
int static_name_ok(const char *name);
/* The Content-Type for a file name (by extension); NULL for extensions that are not served. */
const char *static_mime(const char *name);

#endif
