/* `pgnd serve`: opens the store, re-queues jobs a crash or stop left running, checks the teacher,
 * starts the HTTP API and the workers, tells systemd it is ready, and on SIGTERM / SIGINT stops
 * intake, lets running jobs checkpoint and re-queue at their next step, and exits. */
#ifndef DAEMON_SERVE_H
#define DAEMON_SERVE_H

#include "daemon/config.h"

/* Blocks until a stop signal; returns the exit status. ready_fd >= 0 receives "PORT\n" once
 * listening (tests use it with listen port 0). */
int serve_run(const pgnd_config *cfg, int ready_fd);

#endif
