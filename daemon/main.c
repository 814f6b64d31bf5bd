/* pgnd command line. Until the daemon lands, it offers the engine self-check. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/selfcheck.h"
#include "daemon/weights_cmd.h"

#define PGND_VERSION "0.1.0"

static void usage(FILE *f)
{
    fprintf(f, "usage: pgnd selfcheck [--threads N]   run a short engine check and print what it computed\n"
               "       pgnd weights inspect FILE      list a weights file and say whether it is a usable teacher\n"
               "       pgnd --version\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("pgnd %s\n", PGND_VERSION);
        return 0;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "selfcheck")) {
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
    if (!strcmp(argv[1], "weights")) {
        if (argc != 4 || strcmp(argv[2], "inspect")) {
            fprintf(stderr, "usage: pgnd weights inspect FILE\n");
            return 2;
        }
        return weights_inspect(stdout, stderr, argv[3]);
    }
    fprintf(stderr, "pgnd: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
