/* REST API v1 of pgnd (JSON; errors as application/problem+json). Registered on an http_server;
 * handlers read and write the store and wake the daemon's workers. */
#ifndef PGND_API_ROUTES_H
#define PGND_API_ROUTES_H

#include "api/http.h"
#include "daemon/daemon.h"

int api_register(http_server *srv, pgnd_daemon *d);

/* Shared by the route files. */
json_t *api_job_json(const store_job *j);
int api_parse_id(const char *text, int64_t *id);

void api_register_jobs(http_server *srv, pgnd_daemon *d);
void api_register_events(http_server *srv, pgnd_daemon *d);
void api_register_info(http_server *srv, pgnd_daemon *d);

#endif
