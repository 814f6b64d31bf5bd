/* The registry of job types (daemon/jobtype_list.c): one entry per type that has landed. */
#ifndef DAEMON_JOBTYPE_LIST_H
#define DAEMON_JOBTYPE_LIST_H

#include "daemon/jobtypes.h"

extern const job_type *const all_job_types[];
extern const int n_job_types;

#endif
