/* The running daemon's shared state: configuration, store, stop flag, and the event signal that
 * wakes idle workers and Server-Sent Event streams. */
#ifndef DAEMON_DAEMON_H
#define DAEMON_DAEMON_H

#include <jansson.h>
#include <pthread.h>
#include <stdint.h>

#include "daemon/config.h"
#include "store/store.h"

typedef struct pgnd_daemon {
    pgnd_config cfg;
    pgnd_store *store;
    volatile int stopping;  /* SIGTERM seen: no new work, running jobs checkpoint and requeue */
    pthread_mutex_t lock;
    pthread_cond_t changed; /* broadcast on every event and every new job */
    int64_t last_event;     /* id of the newest event */
    char teacher_desc[1200]; /* what /api/v1/info reports */
    int teacher_random;
    int64_t started_ms;
    int running_jobs;
} pgnd_daemon;

/* Appends an event (job 0 = daemon-wide) and wakes waiters. data may be NULL ({}). Errors are
 * logged, not returned: an event that cannot be stored must not fail a job. */
void daemon_event(pgnd_daemon *d, int64_t job, const char *type, json_t *data /* stolen */);
/* Wakes workers (a job was queued or resumed). */
void daemon_wake(pgnd_daemon *d);
/* Waits until an event newer than after_id exists, the daemon stops, or timeout_ms passes.
 * Returns the newest event id. */
int64_t daemon_wait_event(pgnd_daemon *d, int64_t after_id, int timeout_ms);
/* Sleeps until the next broadcast (event, new job, stop) or timeout_ms. */
void daemon_nap(pgnd_daemon *d, int timeout_ms);
/* mkdir -p with mode 0750; 0 or -1 (errno set). */
int daemon_mkdirs(const char *path);
/* Logs to stderr ("pgnd: level: message"), honouring cfg.log_level. */
void daemon_log(pgnd_daemon *d, const char *level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
