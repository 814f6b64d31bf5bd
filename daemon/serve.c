#include "daemon/serve.h"

#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "api/auth.h"
#include "api/routes.h"
#include "daemon/daemon.h"
#include "daemon/worker.h"
#include "nn/weights.h"
#include "pgn/teacher.h"

#ifndef SERVE_NICE
#define SERVE_NICE 19
#endif

/* sd_notify without libsystemd: one datagram to $NOTIFY_SOCKET. */
static void sd_notify(const char *msg)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path)
        return;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t len = strlen(path);
    if (len < sizeof sa.sun_path) {
        memcpy(sa.sun_path, path, len);
        if (sa.sun_path[0] == '@')
            sa.sun_path[0] = 0; /* abstract namespace */
        sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&sa,
               (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len));
    }
    close(fd);
}

/* The teacher's weights are checked at start (keys and shapes), not loaded: each job loads them. */
static int check_teacher(pgnd_daemon *d)
{
    if (!d->cfg.teacher_weights[0]) {
        d->teacher_random = 1;
        snprintf(d->teacher_desc, sizeof d->teacher_desc, "vgg19, random teacher: not a perceptual loss");
        return 0;
    }
    const char *kind = pgn_teacher_kind_of_path(d->cfg.teacher_weights);
    nn_weights w;
    nn_err e;
    /* only the tensors the teacher reads are materialised (torchvision's file is 548 MB) */
    nn_weights_filter want = strcmp(kind, "inception3") ? pgn_teacher_vgg19_needs_key : inception3_needs_key;
    if (nn_weights_read_filtered(&w, d->cfg.teacher_weights, want, NULL, &e)) {
        daemon_log(d, "error", "teacher_weights: %s", e.msg);
        return -1;
    }
    char report[4096];
    int problems = pgn_teacher_check_weights(&w, report, sizeof report);
    nn_weights_free(&w);
    if (problems) {
        daemon_log(d, "error", "teacher_weights %s is not a usable %s teacher:\n%s", d->cfg.teacher_weights,
                   strcmp(kind, "inception3") ? "VGG-19" : "InceptionV3", report);
        return -1;
    }
    snprintf(d->teacher_desc, sizeof d->teacher_desc, "%s, weights %s", kind, d->cfg.teacher_weights);
    return 0;
}

/* Imports tokens from the token file (systemd: LoadCredential=api-tokens:FILE lands it in
 * $CREDENTIALS_DIRECTORY/api-tokens): lines "NAME ROLE TOKEN"; only their hashes are stored. */
static int import_tokens(pgnd_daemon *d)
{
    char path[1200];
    const char *cred = getenv("CREDENTIALS_DIRECTORY");
    if (d->cfg.token_file[0])
        snprintf(path, sizeof path, "%s", d->cfg.token_file);
    else if (cred)
        snprintf(path, sizeof path, "%s/api-tokens", cred);
    else
        return 0;
    FILE *f = fopen(path, "r");
    if (!f) {
        if (!d->cfg.token_file[0] && errno == ENOENT)
            return 0;
        daemon_log(d, "error", "token file %s: %s", path, strerror(errno));
        return -1;
    }
    char line[512];
    int lineno = 0, rc = 0, added = 0;
    while (!rc && fgets(line, sizeof line, f)) {
        lineno++;
        char name[64], role_s[16], token[256];
        if (line[0] == '#' || strspn(line, " \t\r\n") == strlen(line))
            continue;
        token_role role;
        if (sscanf(line, "%63s %15s %255s", name, role_s, token) != 3 || token_role_parse(role_s, &role)) {
            daemon_log(d, "error", "token file %s:%d: expected 'NAME read|submit|admin TOKEN'", path, lineno);
            rc = -1;
            break;
        }
        char sha[65];
        store_token t;
        store_err err;
        auth_hash(token, sha);
        if (store_token_lookup(d->store, sha, &t, &err) == 0)
            continue; /* already known */
        if (store_token_add(d->store, name, role, sha, &err)) {
            daemon_log(d, "error", "token file %s:%d: %s", path, lineno, err.msg);
            rc = -1;
        } else
            added++;
    }
    fclose(f);
    if (added)
        daemon_log(d, "info", "imported %d token%s from %s", added, added == 1 ? "" : "s", path);
    return rc;
}

int serve_run(const pgnd_config *cfg, int ready_fd)
{
    static pgnd_daemon d; /* one per process; lives until exit */
    memset(&d, 0, sizeof d);
    d.cfg = *cfg;
    pthread_mutex_init(&d.lock, NULL);
    pthread_cond_init(&d.changed, NULL);
    d.started_ms = store_now_ms();

    /* Signals are taken synchronously by this thread (sigwait); every other thread blocks them. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    signal(SIGPIPE, SIG_IGN);

    char db[1100], jobs[1100], err[512];
    snprintf(jobs, sizeof jobs, "%s/jobs", cfg->state_dir);
    if (daemon_mkdirs(cfg->state_dir) || daemon_mkdirs(jobs)) {
        daemon_log(&d, "error", "cannot create the state directory %s: %s", cfg->state_dir, strerror(errno));
        return 1;
    }
    store_err se;
    if (store_open(&d.store, config_database(cfg, db, sizeof db), &se)) {
        daemon_log(&d, "error", "%s", se.msg);
        return 1;
    }
    if (import_tokens(&d)) {
        store_close(d.store);
        return 1;
    }
    int tokens = 0;
    if (store_token_count(d.store, &tokens, &se)) {
        daemon_log(&d, "error", "%s", se.msg);
        return 1;
    }
    if (!config_is_loopback(cfg) && tokens == 0) {
        daemon_log(&d, "error",
                   "refusing to listen on %s without any API token: anyone who reaches it could run jobs. "
                   "Create one with `pgnd token add NAME --role admin --config FILE`, or listen on 127.0.0.1",
                   cfg->listen_host);
        store_close(d.store);
        return 1;
    }
    if (check_teacher(&d)) {
        store_close(d.store);
        return 1;
    }
    /* The event log is for live views and reconnects, not an archive: keep the newest 100,000. */
    int pruned = 0;
    if (store_events_prune(d.store, 100000, &pruned, &se))
        daemon_log(&d, "warn", "cannot prune old events: %s", se.msg);
    int requeued = 0;
    if (store_requeue_running(d.store, &requeued, &se))
        daemon_log(&d, "error", "cannot re-queue interrupted jobs: %s", se.msg);
    else if (requeued)
        daemon_log(&d, "info", "re-queued %d job%s interrupted by the last stop; they resume from their checkpoints",
                   requeued, requeued == 1 ? "" : "s");

    http_server *srv = NULL;
    struct stat st;
    /* Serving runs niced: under load the training job keeps its cores (the API answers a little
     * later instead of the job stepping much slower). */
    http_config hc = {cfg->listen_host, cfg->listen_port, (size_t)cfg->max_body, 8,
                      cfg->web_dir[0] && stat(cfg->web_dir, &st) == 0 ? cfg->web_dir : NULL, SERVE_NICE};
    if (http_start(&srv, &hc, err, sizeof err)) {
        daemon_log(&d, "error", "cannot listen on %s:%d: %s", cfg->listen_host, cfg->listen_port, err);
        store_close(d.store);
        return 1;
    }
    api_register(srv, &d);
    pgnd_workers *workers = NULL;
    if (workers_start(&workers, &d, cfg->workers, err, sizeof err)) {
        daemon_log(&d, "error", "%s", err);
        http_stop(srv);
        store_close(d.store);
        return 1;
    }
    int port = http_port(srv);
    daemon_log(&d, "info", "listening on http://%s%s%s:%d/ with %d worker%s, %d threads per job; teacher: %s",
               strchr(cfg->listen_host, ':') ? "[" : "", cfg->listen_host, strchr(cfg->listen_host, ':') ? "]" : "",
               port, cfg->workers, cfg->workers == 1 ? "" : "s", cfg->threads, d.teacher_desc);
    daemon_event(&d, 0, "daemon", json_pack("{s:s, s:i}", "state", "started", "requeued", requeued));
    if (ready_fd >= 0) {
        dprintf(ready_fd, "%d\n", port);
        close(ready_fd);
    }
    sd_notify("READY=1\nSTATUS=serving");

    int sig = 0;
    sigwait(&stop, &sig);
    daemon_log(&d, "info", "%s: no new jobs; running jobs checkpoint at their next step and are re-queued",
               sig == SIGTERM ? "SIGTERM" : "SIGINT");
    sd_notify("STOPPING=1\nSTATUS=checkpointing running jobs");
    pthread_mutex_lock(&d.lock);
    d.stopping = 1;
    pthread_cond_broadcast(&d.changed);
    pthread_mutex_unlock(&d.lock);
    workers_join(workers);
    daemon_event(&d, 0, "daemon", json_pack("{s:s}", "state", "stopped"));
    http_stop(srv);
    store_close(d.store);
    daemon_log(&d, "info", "stopped");
    return 0;
}
