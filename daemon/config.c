#include "daemon/config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* The keys, in the order config_print shows them. */
enum { K_LISTEN, K_STATE_DIR, K_DATABASE, K_WEB_DIR, K_WORKERS, K_THREADS, K_TEACHER, K_QUEUE, K_TOKENS,
       K_LOG, K_RETENTION, K_MAX_BODY, K_IMAGES, K_COUNT };
static const char *const key_names[K_COUNT] = {"listen", "state_dir", "database", "web_dir",
                                               "workers", "threads", "teacher_weights", "queue_limit",
                                               "token_file", "log_level", "checkpoint_retention", "max_body",
                                               "images"};
static const char *const source_names[] = {"default", "file", "environment", "command line"};

void config_defaults(pgnd_config *c)
{
    memset(c, 0, sizeof *c);
    snprintf(c->listen_host, sizeof c->listen_host, "127.0.0.1");
    c->listen_port = 8080;
    snprintf(c->state_dir, sizeof c->state_dir, "/var/lib/pgnd");
    snprintf(c->web_dir, sizeof c->web_dir, "web");
    c->workers = 1;
    c->threads = 2;
    c->queue_limit = 100;
    snprintf(c->log_level, sizeof c->log_level, "info");
    c->checkpoint_retention = 3;
    c->max_body = 1 << 20;
}

static int key_index(const char *key)
{
    for (int i = 0; i < K_COUNT; i++)
        if (!strcmp(key_names[i], key))
            return i;
    return -1;
}

static int parse_int(const char *v, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi)
        return -1;
    *out = x;
    return 0;
}

static int copy_str(char *dst, size_t len, const char *v, char *err, size_t errlen, const char *key)
{
    if (strlen(v) >= len) {
        snprintf(err, errlen, "%s is longer than %zu characters", key, len - 1);
        return -1;
    }
    snprintf(dst, len, "%s", v);
    return 0;
}

/* "host:port", "[v6]:port" or ":port". */
static int parse_listen(pgnd_config *c, const char *v, char *err, size_t errlen)
{
    const char *colon = strrchr(v, ':');
    long port;
    if (!colon || parse_int(colon + 1, 0, 65535, &port)) {
        snprintf(err, errlen, "listen must be HOST:PORT (e.g. 127.0.0.1:8080 or [::1]:8080), got '%s'", v);
        return -1;
    }
    size_t hl = (size_t)(colon - v);
    const char *h = v;
    if (hl >= 2 && v[0] == '[' && v[hl - 1] == ']')
        h++, hl -= 2;
    if (hl == 0)
        h = "127.0.0.1", hl = strlen(h);
    if (hl >= sizeof c->listen_host) {
        snprintf(err, errlen, "listen host is too long");
        return -1;
    }
    memcpy(c->listen_host, h, hl);
    c->listen_host[hl] = 0;
    c->listen_port = (int)port;
    return 0;
}

int config_set(pgnd_config *c, const char *key, const char *v, config_source src, char *err, size_t errlen)
{
    int k = key_index(key);
    long x;
    int rc = 0;
    switch (k) {
    case K_LISTEN: rc = parse_listen(c, v, err, errlen); break;
    case K_STATE_DIR:
        if (!*v) {
            snprintf(err, errlen, "state_dir must not be empty");
            return -1;
        }
        rc = copy_str(c->state_dir, sizeof c->state_dir, v, err, errlen, key);
        break;
    case K_DATABASE: rc = copy_str(c->database, sizeof c->database, v, err, errlen, key); break;
    case K_WEB_DIR: rc = copy_str(c->web_dir, sizeof c->web_dir, v, err, errlen, key); break;
    case K_TEACHER: rc = copy_str(c->teacher_weights, sizeof c->teacher_weights, v, err, errlen, key); break;
    case K_IMAGES: rc = copy_str(c->images, sizeof c->images, v, err, errlen, key); break;
    case K_TOKENS: rc = copy_str(c->token_file, sizeof c->token_file, v, err, errlen, key); break;
    case K_WORKERS:
    case K_THREADS:
    case K_QUEUE:
    case K_RETENTION: {
        long lo = 1, hi = k == K_QUEUE ? 1000000 : 256;
        if (parse_int(v, lo, hi, &x)) {
            snprintf(err, errlen, "%s must be a whole number from %ld to %ld, got '%s'", key, lo, hi, v);
            return -1;
        }
        int *dst = k == K_WORKERS ? &c->workers : k == K_THREADS ? &c->threads : k == K_QUEUE ? &c->queue_limit
                                                                                     : &c->checkpoint_retention;
        *dst = (int)x;
        break;
    }
    case K_MAX_BODY:
        if (parse_int(v, 1024, 1L << 30, &x)) {
            snprintf(err, errlen, "max_body must be a byte count from 1024 to 1073741824, got '%s'", v);
            return -1;
        }
        c->max_body = x;
        break;
    case K_LOG:
        if (strcmp(v, "error") && strcmp(v, "warn") && strcmp(v, "info") && strcmp(v, "debug")) {
            snprintf(err, errlen, "log_level must be error, warn, info or debug, got '%s'", v);
            return -1;
        }
        snprintf(c->log_level, sizeof c->log_level, "%s", v);
        break;
    default: snprintf(err, errlen, "unknown key '%s'", key); return -1;
    }
    if (!rc)
        c->src[k] = src;
    return rc;
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = 0;
    return s;
}

static int load_file(pgnd_config *c, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    char line[4096], msg[512];
    int lineno = 0, rc = 0, seen[K_COUNT] = {0};
    while (!rc && fgets(line, sizeof line, f)) {
        lineno++;
        if (!strchr(line, '\n') && !feof(f)) {
            snprintf(err, errlen, "%s:%d: line longer than %zu characters", path, lineno, sizeof line - 2);
            rc = -1;
            break;
        }
        char *hash = strchr(line, '#');
        if (hash)
            *hash = 0;
        char *s = trim(line);
        if (!*s)
            continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            snprintf(err, errlen, "%s:%d: expected 'key = value', got '%s'", path, lineno, s);
            rc = -1;
            break;
        }
        *eq = 0;
        char *key = trim(s), *val = trim(eq + 1);
        int k = key_index(key);
        if (k >= 0 && seen[k]) {
            snprintf(err, errlen, "%s:%d: %s is set twice (first on line %d)", path, lineno, key, seen[k]);
            rc = -1;
            break;
        }
        if (config_set(c, key, val, SRC_FILE, msg, sizeof msg)) {
            snprintf(err, errlen, "%s:%d: %s", path, lineno, msg);
            rc = -1;
            break;
        }
        seen[k] = lineno;
    }
    fclose(f);
    return rc;
}

int config_load(pgnd_config *c, const char *path, char *err, size_t errlen)
{
    if (path && load_file(c, path, err, errlen))
        return -1;
    for (int k = 0; k < K_COUNT; k++) {
        char name[64], msg[512];
        int n = snprintf(name, sizeof name, "PGND_%s", key_names[k]);
        for (int i = 5; i < n; i++)
            name[i] = (char)toupper((unsigned char)name[i]);
        const char *v = getenv(name);
        if (v && config_set(c, key_names[k], v, SRC_ENV, msg, sizeof msg)) {
            snprintf(err, errlen, "environment %s: %s", name, msg);
            return -1;
        }
    }
    return 0;
}

const char *config_database(const pgnd_config *c, char *buf, size_t len)
{
    if (c->database[0])
        snprintf(buf, len, "%s", c->database);
    else
        snprintf(buf, len, "%s/pgnd.db", c->state_dir);
    return buf;
}

int config_is_loopback(const pgnd_config *c)
{
    return !strncmp(c->listen_host, "127.", 4) || !strcmp(c->listen_host, "::1") ||
           !strcmp(c->listen_host, "localhost");
}

void config_print(const pgnd_config *c, FILE *out)
{
    char db[1100];
    const char *colon6 = strchr(c->listen_host, ':') ? "]" : "";
    fprintf(out, "listen = %s%s%s:%d  # %s\n", *colon6 ? "[" : "", c->listen_host, colon6, c->listen_port,
            source_names[c->src[K_LISTEN]]);
    fprintf(out, "state_dir = %s  # %s\n", c->state_dir, source_names[c->src[K_STATE_DIR]]);
    fprintf(out, "database = %s  # %s\n", config_database(c, db, sizeof db),
            c->database[0] ? source_names[c->src[K_DATABASE]] : "default: <state_dir>/pgnd.db");
    fprintf(out, "web_dir = %s  # %s\n", c->web_dir, source_names[c->src[K_WEB_DIR]]);
    fprintf(out, "workers = %d  # %s\n", c->workers, source_names[c->src[K_WORKERS]]);
    fprintf(out, "threads = %d  # %s\n", c->threads, source_names[c->src[K_THREADS]]);
    fprintf(out, "teacher_weights = %s  # %s\n", c->teacher_weights[0] ? c->teacher_weights : "(none: random teacher, not a perceptual loss)",
            source_names[c->src[K_TEACHER]]);
    fprintf(out, "queue_limit = %d  # %s\n", c->queue_limit, source_names[c->src[K_QUEUE]]);
    /* The token file's path is not secret; its contents are and are never printed. */
    fprintf(out, "token_file = %s  # %s\n", c->token_file[0] ? c->token_file : "(none)", source_names[c->src[K_TOKENS]]);
    fprintf(out, "log_level = %s  # %s\n", c->log_level, source_names[c->src[K_LOG]]);
    fprintf(out, "checkpoint_retention = %d  # %s\n", c->checkpoint_retention, source_names[c->src[K_RETENTION]]);
    fprintf(out, "max_body = %ld  # %s\n", c->max_body, source_names[c->src[K_MAX_BODY]]);
    fprintf(out, "images = %s  # %s\n", c->images[0] ? c->images : "(none: jobs must name their photographs)",
            source_names[c->src[K_IMAGES]]);
}
