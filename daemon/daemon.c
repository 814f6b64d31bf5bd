#include "daemon/daemon.h"

#include <errno.h>
#include <stdlib.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

static int level_rank(const char *l)
{
    return !strcmp(l, "error") ? 0 : !strcmp(l, "warn") ? 1 : !strcmp(l, "info") ? 2 : 3;
}

void daemon_log(pgnd_daemon *d, const char *level, const char *fmt, ...)
{
    if (level_rank(level) > level_rank(d->cfg.log_level))
        return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "pgnd: %s: %s\n", level, msg);
}

void daemon_event(pgnd_daemon *d, int64_t job, const char *type, json_t *data)
{
    json_t *obj = data ? data : json_object();
    char *text = json_dumps(obj, JSON_COMPACT);
    json_decref(obj);
    int64_t id = 0;
    store_err err;
    if (!text || store_event_append(d->store, job, type, text, &id, &err))
        daemon_log(d, "warn", "cannot record event %s of job %lld: %s", type, (long long)job,
                   text ? err.msg : "out of memory");
    free(text);
    pthread_mutex_lock(&d->lock);
    if (id > d->last_event)
        d->last_event = id;
    pthread_cond_broadcast(&d->changed);
    pthread_mutex_unlock(&d->lock);
}

void daemon_wake(pgnd_daemon *d)
{
    pthread_mutex_lock(&d->lock);
    pthread_cond_broadcast(&d->changed);
    pthread_mutex_unlock(&d->lock);
}

static struct timespec deadline(int timeout_ms)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += timeout_ms / 1000;
    until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L)
        until.tv_sec++, until.tv_nsec -= 1000000000L;
    return until;
}

void daemon_nap(pgnd_daemon *d, int timeout_ms)
{
    struct timespec until = deadline(timeout_ms);
    pthread_mutex_lock(&d->lock);
    if (!d->stopping)
        pthread_cond_timedwait(&d->changed, &d->lock, &until);
    pthread_mutex_unlock(&d->lock);
}

int64_t daemon_wait_event(pgnd_daemon *d, int64_t after_id, int timeout_ms)
{
    struct timespec until = deadline(timeout_ms);
    pthread_mutex_lock(&d->lock);
    while (d->last_event <= after_id && !d->stopping)
        if (pthread_cond_timedwait(&d->changed, &d->lock, &until) == ETIMEDOUT)
            break;
    int64_t last = d->last_event;
    pthread_mutex_unlock(&d->lock);
    return last;
}

int daemon_mkdirs(const char *path)
{
    char tmp[1200];
    if (snprintf(tmp, sizeof tmp, "%s", path) >= (int)sizeof tmp) {
        errno = ENAMETOOLONG;
        return -1;
    }
    for (char *p = tmp + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            if (mkdir(tmp, 0750) && errno != EEXIST)
                return -1;
            *p = '/';
        }
    return mkdir(tmp, 0750) && errno != EEXIST ? -1 : 0;
}
