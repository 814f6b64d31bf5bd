/* The job types pgnd runs, their parameter schemas (served by GET /api/v1/job-types and used to
 * build the dashboard's forms) and parameter validation: every problem is collected, so a 422
 * answer lists them all. */
#ifndef DAEMON_JOBTYPES_H
#define DAEMON_JOBTYPES_H

#include <jansson.h>
#include <stddef.h>

#include "daemon/config.h"
#include "pgn/job.h"

typedef enum param_kind {
    P_INT,     /* whole number in [min, max] */
    P_NUMBER,  /* real number in [min, max] */
    P_BOOL,
    P_STRING,
    P_CHOICE,  /* one of `choices` ("a|b|c") */
    P_CHOICES, /* a non-empty list of distinct values from `choices` */
    P_FILE,    /* path of a readable regular file */
    P_DIR,     /* path of a readable directory */
    P_PATH,    /* path of a readable file or directory (weights: a file, or a tfjs model folder) */
} param_kind;

typedef struct param_spec {
    const char *name;
    param_kind kind;
    const char *def;   /* default as JSON text; NULL = required */
    double min, max;   /* P_INT / P_NUMBER */
    const char *choices;
    const char *unit;
    const char *help;
} param_spec;

typedef struct job_type {
    const char *name;
    const char *title;
    const param_spec *params;
    int n_params;
    /* Extra checks across parameters (e.g. size divisible by 32); append {field, detail} objects
     * to problems. May be NULL. */
    void (*check)(json_t *params, json_t *problems, const pgnd_config *cfg);
    /* Runs the job: PGN_DONE, PGN_STOPPED or PGN_FAILED (err filled). */
    int (*run)(const char *params_json, const pgn_job_io *io, char *err, size_t errlen);
} job_type;

const job_type *job_type_find(const char *name);
/* {"types": [{"name", "title", "params": [{"name","kind","default","min","max","choices","unit","help","required"}]}]} */
json_t *job_types_schema(void);
/* Returns the parameters with defaults filled in (new reference), or NULL when problems (a JSON
 * array, appended to) is not empty. Unknown keys, wrong types, out-of-range values, missing
 * files and directories are each one problem. */
json_t *job_params_validate(const job_type *t, json_t *given, json_t *problems, const pgnd_config *cfg);
void job_problem(json_t *problems, const char *field, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
