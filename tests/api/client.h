/* A minimal HTTP/1.1 client for the API tests (loopback only, one request per connection), and
 * helpers to run a real pgnd in a child process. */
#ifndef TESTS_API_CLIENT_H
#define TESTS_API_CLIENT_H

#include <jansson.h>
#include <stddef.h>
#include <sys/types.h>

typedef struct http_reply {
    int status;
    char headers[4096];
    char *body; /* NUL-terminated, malloc'ed */
    size_t len;
} http_reply;

/* method, path, optional body (JSON text or NULL), optional extra header lines ("K: V\r\n").
 * Returns 0 and fills r, or -1 on a connection error. */
int http_do(int port, const char *method, const char *path, const char *body, const char *headers, http_reply *r);
void http_reply_free(http_reply *r);
/* Just the status of a request (-1 on a connection error). */
int http_status(int port, const char *method, const char *path, const char *body, const char *headers);
/* The value of header `name` in r (static buffer) or NULL. */
const char *http_reply_header(const http_reply *r, const char *name);
/* Parses the body as JSON (NULL if it is not). */
json_t *http_reply_json(const http_reply *r);

/* Opens an SSE stream; reads until `count` events arrived or timeout_ms passed. Each event's id
 * and type go to ids[] / types[] (types as "name" strings copied into types[i][32]). Returns the
 * number of events read, -1 on error. */
int sse_read(int port, const char *path, const char *headers, int count, int timeout_ms, long long *ids,
             char (*types)[32]);

typedef struct pgnd_proc {
    pid_t pid;
    int port;
    char state_dir[256];
} pgnd_proc;

/* Starts build/pgnd serve on 127.0.0.1 with a free port and the given state dir (created when
 * NULL, as a fresh temporary directory); extra_env "K=V" strings (NULL-terminated list, may be
 * NULL). Waits until it listens. */
int pgnd_start(pgnd_proc *p, const char *state_dir, const char *const *extra_env);
/* Sends sig and waits up to timeout_ms for the exit; returns the exit status (128+signal when
 * killed), or -1 on timeout (then kills it). */
int pgnd_stop(pgnd_proc *p, int sig, int timeout_ms);
/* Runs `build/pgnd ARGS...` with PGND_STATE_DIR=state_dir; captures stdout into out. */
int pgnd_cli(const char *state_dir, char *out, size_t outlen, const char *const *args);

/* Polls GET /api/v1/jobs/{id} until its state is one of `states` ("succeeded|failed") or
 * timeout_ms; returns the job JSON (new ref) or NULL. */
json_t *wait_job_state(int port, long long id, const char *states, int timeout_ms, const char *auth);
/* Polls until the job reports step >= step. */
json_t *wait_job_step(int port, long long id, long long step, int timeout_ms, const char *auth);

#endif
