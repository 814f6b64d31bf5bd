/* `pgnd run JOB.json [--out DIR]`: one job in the foreground, the same code the daemon runs, with
 * a progress line on stderr, metrics appended to DIR/metrics.jsonl and checkpoints in DIR. Ctrl-C
 * checkpoints and stops; running the same command again resumes from the last checkpoint. */
#ifndef DAEMON_RUN_CMD_H
#define DAEMON_RUN_CMD_H

#include "daemon/config.h"

int run_job_file(const char *job_path, const char *out_dir, const pgnd_config *cfg);

#endif
