/* pgnd's configuration: `key = value` lines ('#' comments), every key optional with a default.
 * Precedence: command-line flag, then environment (PGND_<KEY>, e.g. PGND_LISTEN), then the file,
 * then the default. Errors name the file and line. */
#ifndef DAEMON_CONFIG_H
#define DAEMON_CONFIG_H

#include <stdio.h>

typedef enum config_source { SRC_DEFAULT, SRC_FILE, SRC_ENV, SRC_FLAG } config_source;

typedef struct pgnd_config {
    char listen_host[256];   /* "127.0.0.1", "::1", "0.0.0.0" ... */
    int listen_port;         /* 0 = any free port (tests) */
    char state_dir[1024];
    char database[1024];     /* "" = <state_dir>/pgnd.db */
    char web_dir[1024];      /* static dashboard files */
    int workers;
    int threads;             /* OpenMP threads per job */
    char teacher_weights[1024]; /* "" = seeded random teacher */
    int queue_limit;
    char token_file[1024];   /* tokens to import at start ("" = none); secrets never printed */
    char log_level[16];      /* error | warn | info | debug */
    int checkpoint_retention;
    long max_body;           /* request bodies over this get 413 */
    char images[1024];       /* default folder of photographs for fit and collect jobs ("" = none) */
    config_source src[16];   /* where each key's value came from (index = key order) */
} pgnd_config;

void config_defaults(pgnd_config *c);
/* Reads path (NULL: defaults only), then the environment. 0, or -1 with "FILE:LINE: problem". */
int config_load(pgnd_config *c, const char *path, char *err, size_t errlen);
/* Sets one key as the command line would (same validation). */
int config_set(pgnd_config *c, const char *key, const char *value, config_source src, char *err, size_t errlen);
/* The effective configuration, one `key = value  # source` line each, secrets redacted. */
void config_print(const pgnd_config *c, FILE *out);
/* <state_dir>/pgnd.db when database is empty. */
const char *config_database(const pgnd_config *c, char *buf, size_t len);
/* Refuses settings that are unsafe together (e.g. a non-loopback listen address with no token
 * configured is checked by the daemon, which knows the token count). */
int config_is_loopback(const pgnd_config *c);

#endif
