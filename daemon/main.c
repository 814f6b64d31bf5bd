/* pgnd command line: the daemon (`serve`), one job in the foreground (`run`), configuration and
 * token administration, weights inspection and the engine self-check. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/auth.h"
#include "daemon/config.h"
#include "daemon/model_cmd.h"
#include "daemon/run_cmd.h"
#include "daemon/selfcheck.h"
#include "daemon/serve.h"
#include "daemon/weights_cmd.h"
#include "store/store.h"

#define PGND_VERSION "0.1.0"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: pgnd serve [--config FILE] [--listen HOST:PORT] [--state-dir DIR]\n"
            "       pgnd run JOB.json [--out DIR] [--config FILE]   one job in the foreground\n"
            "       pgnd check-config FILE                        validate and print the effective configuration\n"
            "       pgnd token add NAME --role read|submit|admin [--config FILE]\n"
            "       pgnd token list|revoke NAME [--config FILE]\n"
            "       pgnd weights inspect FILE                     list a weights file; is it a usable teacher?\n"
            "       pgnd model summary unet|resnet4|resnet6|resnet8|dip [--size H [W]] [--batch N]\n"
            "       pgnd selfcheck [--threads N]                  short engine check, prints what it computed\n"
            "       pgnd --version\n");
}

/* Common options: --config FILE and key overrides (--listen, --state-dir, --threads, --workers).
 * Unconsumed arguments are left in rest[]. */
static int load_config(int argc, char **argv, pgnd_config *c, char **rest, int *nrest)
{
    const char *path = NULL;
    char err[1024];
    for (int i = 0; i < argc; i++)
        if (!strcmp(argv[i], "--config") && i + 1 < argc)
            path = argv[i + 1];
    config_defaults(c);
    if (config_load(c, path, err, sizeof err)) {
        fprintf(stderr, "pgnd: %s\n", err);
        return -1;
    }
    static const char *const flags[][2] = {{"--listen", "listen"},   {"--state-dir", "state_dir"},
                                           {"--threads", "threads"}, {"--workers", "workers"},
                                           {"--web-dir", "web_dir"}, {"--teacher-weights", "teacher_weights"},
                                           {"--images", "images"}};
    *nrest = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--config") && i + 1 < argc) {
            i++;
            continue;
        }
        int used = 0;
        for (size_t k = 0; k < sizeof flags / sizeof *flags && !used; k++)
            if (!strcmp(argv[i], flags[k][0])) {
                if (i + 1 >= argc) {
                    fprintf(stderr, "pgnd: %s needs a value\n", argv[i]);
                    return -1;
                }
                if (config_set(c, flags[k][1], argv[i + 1], SRC_FLAG, err, sizeof err)) {
                    fprintf(stderr, "pgnd: %s: %s\n", argv[i], err);
                    return -1;
                }
                used = 1, i++;
            }
        if (!used)
            rest[(*nrest)++] = argv[i];
    }
    return 0;
}

static int open_store(const pgnd_config *c, pgnd_store **s)
{
    char db[1100];
    store_err err;
    if (store_open(s, config_database(c, db, sizeof db), &err)) {
        fprintf(stderr, "pgnd: %s\n", err.msg);
        return -1;
    }
    return 0;
}

static int cmd_token(int argc, char **argv)
{
    pgnd_config c;
    char *rest[64];
    int n;
    if (argc > 64 || load_config(argc, argv, &c, rest, &n))
        return 2;
    pgnd_store *s;
    store_err err;
    if (n >= 1 && !strcmp(rest[0], "list")) {
        if (open_store(&c, &s))
            return 1;
        store_token *t = NULL;
        int k = 0;
        if (store_token_list(s, &t, &k, &err)) {
            fprintf(stderr, "pgnd: %s\n", err.msg);
            store_close(s);
            return 1;
        }
        printf("%-24s %-7s %s\n", "name", "role", "state");
        for (int i = 0; i < k; i++)
            printf("%-24s %-7s %s\n", t[i].name, token_role_name(t[i].role), t[i].revoked ? "revoked" : "active");
        free(t);
        store_close(s);
        return 0;
    }
    if (n == 2 && !strcmp(rest[0], "revoke")) {
        if (open_store(&c, &s))
            return 1;
        int rc = store_token_revoke(s, rest[1], &err);
        if (rc)
            fprintf(stderr, "pgnd: %s\n", rc == STORE_NOT_FOUND ? "no such token" : err.msg);
        else
            printf("revoked %s\n", rest[1]);
        store_close(s);
        return rc ? 1 : 0;
    }
    if (n == 4 && !strcmp(rest[0], "add") && !strcmp(rest[2], "--role")) {
        token_role role;
        if (token_role_parse(rest[3], &role)) {
            fprintf(stderr, "pgnd: --role must be read, submit or admin\n");
            return 2;
        }
        char token[64], sha[65];
        if (auth_new_token(token, sha)) {
            fprintf(stderr, "pgnd: cannot read /dev/urandom\n");
            return 1;
        }
        if (open_store(&c, &s))
            return 1;
        int rc = store_token_add(s, rest[1], role, sha, &err);
        store_close(s);
        if (rc) {
            fprintf(stderr, "pgnd: %s\n", err.msg);
            return 1;
        }
        /* Shown once: only its hash is kept. */
        printf("%s\n", token);
        fprintf(stderr, "token '%s' (%s) created; it is shown only now\n", rest[1], token_role_name(role));
        return 0;
    }
    fprintf(stderr, "usage: pgnd token add NAME --role read|submit|admin | list | revoke NAME [--config FILE]\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--version")) {
        printf("pgnd %s\n", PGND_VERSION);
        return 0;
    }
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "selfcheck")) {
        int threads = 2;
        for (int i = 2; i < argc; i++) {
            if (!strcmp(argv[i], "--threads") && i + 1 < argc)
                threads = atoi(argv[++i]);
            else {
                fprintf(stderr, "pgnd selfcheck: unknown argument '%s'\n", argv[i]);
                return 2;
            }
        }
        return selfcheck_run(stdout, threads);
    }
    if (!strcmp(cmd, "weights")) {
        if (argc != 4 || strcmp(argv[2], "inspect")) {
            fprintf(stderr, "usage: pgnd weights inspect FILE\n");
            return 2;
        }
        return weights_inspect(stdout, stderr, argv[3]);
    }
    if (!strcmp(cmd, "model")) {
        int h = 224, w = -1, batch = 1;
        if (argc < 4 || strcmp(argv[2], "summary")) {
            fprintf(stderr, "usage: pgnd model summary ARCH [--size H [W]] [--batch N]\n");
            return 2;
        }
        for (int i = 4; i < argc; i++) {
            if (!strcmp(argv[i], "--size") && i + 1 < argc) {
                h = atoi(argv[++i]);
                if (i + 1 < argc && argv[i + 1][0] != '-')
                    w = atoi(argv[++i]);
            } else if (!strcmp(argv[i], "--batch") && i + 1 < argc)
                batch = atoi(argv[++i]);
            else {
                fprintf(stderr, "pgnd model summary: unknown argument '%s'\n", argv[i]);
                return 2;
            }
        }
        if (w < 0)
            w = h;
        if (h < 1 || w < 1 || batch < 1) {
            fprintf(stderr, "pgnd model summary: sizes and batch must be positive\n");
            return 2;
        }
        model_summary sum;
        return model_summary_run(argv[3], batch, h, w, stdout, stderr, &sum) ? 1 : 0;
    }
    if (!strcmp(cmd, "check-config")) {
        if (argc != 3) {
            fprintf(stderr, "usage: pgnd check-config FILE\n");
            return 2;
        }
        pgnd_config c;
        char err[1024];
        config_defaults(&c);
        if (config_load(&c, argv[2], err, sizeof err)) {
            fprintf(stderr, "pgnd: %s\n", err);
            return 1;
        }
        config_print(&c, stdout);
        return 0;
    }
    if (!strcmp(cmd, "token"))
        return cmd_token(argc - 2, argv + 2);
    if (!strcmp(cmd, "serve") || !strcmp(cmd, "run")) {
        pgnd_config c;
        char *rest[64];
        int n;
        if (argc - 2 > 64 || load_config(argc - 2, argv + 2, &c, rest, &n))
            return 2;
        if (!strcmp(cmd, "serve")) {
            int ready_fd = -1; /* tests: the chosen port is written there once listening */
            for (int i = 0; i < n; i++) {
                if (!strcmp(rest[i], "--ready-fd") && i + 1 < n)
                    ready_fd = atoi(rest[++i]);
                else {
                    fprintf(stderr, "pgnd serve: unknown argument '%s'\n", rest[i]);
                    return 2;
                }
            }
            return serve_run(&c, ready_fd);
        }
        const char *job = NULL, *out = "pgnd-run";
        for (int i = 0; i < n; i++) {
            if (!strcmp(rest[i], "--out") && i + 1 < n)
                out = rest[++i];
            else if (!job)
                job = rest[i];
            else {
                fprintf(stderr, "pgnd run: unexpected argument '%s'\n", rest[i]);
                return 2;
            }
        }
        if (!job) {
            fprintf(stderr, "usage: pgnd run JOB.json [--out DIR] [--config FILE]\n");
            return 2;
        }
        return run_job_file(job, out, &c);
    }
    fprintf(stderr, "pgnd: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
