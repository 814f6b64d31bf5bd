#include "daemon/jobtype_list.h"

/* Each job type lives in its own daemon/job_<type>.c. */
extern const job_type job_type_fit;
extern const job_type job_type_train;
extern const job_type job_type_collect;

const job_type *const all_job_types[] = {&job_type_fit, &job_type_train, &job_type_collect};
const int n_job_types = sizeof all_job_types / sizeof *all_job_types;
