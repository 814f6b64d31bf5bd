/* Job workers: each claims the highest-priority queued job, runs it through its job type with a
 * pgn_job_io wired to the store, and records how it ended. A job resumes from its last recorded
 * checkpoint, and metrics logged after that checkpoint are dropped first, so curves never show a
 * step twice. */
#ifndef DAEMON_WORKER_H
#define DAEMON_WORKER_H

#include "daemon/daemon.h"

typedef struct pgnd_workers pgnd_workers;

int workers_start(pgnd_workers **w, pgnd_daemon *d, int count, char *err, size_t errlen);
/* Call after d->stopping is set: running jobs checkpoint at their next step and are requeued. */
void workers_join(pgnd_workers *w);
/* Runs one job in the calling thread (used by the workers and by tests). */
void worker_run_job(pgnd_daemon *d, int64_t id);
/* The job's directory: <state_dir>/jobs/<id>. */
void job_dir(const pgnd_daemon *d, int64_t id, char *buf, size_t len);
/* Records a finished file as an artifact (size + SHA-256 computed here). */
int job_record_file(pgnd_daemon *d, int64_t job, const char *name, const char *path, const char *kind, int64_t step,
                    int checkpoint, char *err, size_t errlen);

#endif
