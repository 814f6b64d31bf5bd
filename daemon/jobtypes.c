#include "daemon/jobtypes.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon/jobtype_list.h"
#include "pgn/teacher.h"

const job_type *job_type_find(const char *name)
{
    for (int i = 0; i < n_job_types; i++)
        if (!strcmp(all_job_types[i]->name, name))
            return all_job_types[i];
    return NULL;
}

static const char *kind_name(param_kind k)
{
    static const char *const names[] = {"integer", "number", "boolean", "string", "choice", "choices", "file", "dir", "path"};
    return names[k];
}

json_t *job_types_schema(void)
{
    json_t *types = json_array();
    for (int i = 0; i < n_job_types; i++) {
        const job_type *t = all_job_types[i];
        json_t *ps = json_array();
        for (int k = 0; k < t->n_params; k++) {
            const param_spec *p = &t->params[k];
            json_t *o = json_pack("{s:s, s:s, s:b, s:s}", "name", p->name, "kind", kind_name(p->kind), "required",
                                  p->def == NULL, "help", p->help ? p->help : "");
            if (p->def)
                json_object_set_new(o, "default", json_loads(p->def, JSON_DECODE_ANY, NULL));
            if (p->kind == P_INT || p->kind == P_NUMBER) {
                json_object_set_new(o, "min", json_real(p->min));
                json_object_set_new(o, "max", json_real(p->max));
            }
            if (p->choices) {
                json_t *c = json_array();
                char buf[256];
                snprintf(buf, sizeof buf, "%s", p->choices);
                for (char *save, *tok = strtok_r(buf, "|", &save); tok; tok = strtok_r(NULL, "|", &save))
                    json_array_append_new(c, json_string(tok));
                json_object_set_new(o, "choices", c);
            }
            if (p->unit)
                json_object_set_new(o, "unit", json_string(p->unit));
            json_array_append_new(ps, o);
        }
        json_array_append_new(types, json_pack("{s:s, s:s, s:o}", "name", t->name, "title", t->title, "params", ps));
    }
    return json_pack("{s:o}", "types", types);
}

void job_problem(json_t *problems, const char *field, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    json_array_append_new(problems, json_pack("{s:s, s:s}", "field", field, "detail", msg));
}

static int in_choices(const char *choices, const char *v)
{
    size_t n = strlen(v);
    for (const char *p = choices; p && *p;) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && !strncmp(p, v, n))
            return 1;
        p = bar ? bar + 1 : NULL;
    }
    return 0;
}

static void check_value(const param_spec *p, json_t *v, json_t *problems)
{
    const char *f = p->name;
    switch (p->kind) {
    case P_INT:
        if (!json_is_integer(v))
            return job_problem(problems, f, "must be a whole number");
        if (json_integer_value(v) < p->min || json_integer_value(v) > p->max)
            return job_problem(problems, f, "must be from %.0f to %.0f, got %lld", p->min, p->max,
                               (long long)json_integer_value(v));
        return;
    case P_NUMBER:
        if (!json_is_number(v))
            return job_problem(problems, f, "must be a number");
        if (json_number_value(v) < p->min || json_number_value(v) > p->max)
            return job_problem(problems, f, "must be from %g to %g, got %g", p->min, p->max, json_number_value(v));
        return;
    case P_BOOL:
        if (!json_is_boolean(v))
            job_problem(problems, f, "must be true or false");
        return;
    case P_STRING:
        if (!json_is_string(v))
            job_problem(problems, f, "must be a string");
        return;
    case P_CHOICE:
        if (!json_is_string(v) || !in_choices(p->choices, json_string_value(v)))
            job_problem(problems, f, "must be one of %s", p->choices);
        return;
    case P_CHOICES: {
        if (!json_is_array(v) || json_array_size(v) == 0)
            return job_problem(problems, f, "must be a non-empty list of %s", p->choices);
        size_t i, j;
        json_t *x;
        json_array_foreach(v, i, x) {
            if (!json_is_string(x) || !in_choices(p->choices, json_string_value(x)))
                return job_problem(problems, f, "item %zu must be one of %s", i, p->choices);
            for (j = 0; j < i; j++)
                if (json_equal(x, json_array_get(v, j)))
                    return job_problem(problems, f, "'%s' is listed twice", json_string_value(x));
        }
        return;
    }
    case P_FILE:
    case P_DIR:
    case P_PATH: {
        /* An optional path whose default is "" may stay empty ("not given"). */
        if (json_is_string(v) && !*json_string_value(v) && p->def && !strcmp(p->def, "\"\""))
            return;
        if (!json_is_string(v) || !*json_string_value(v))
            return job_problem(problems, f, "must be a path");
        struct stat st;
        const char *path = json_string_value(v);
        if (stat(path, &st))
            return job_problem(problems, f, "%s does not exist or cannot be reached by pgnd", path);
        if (p->kind == P_FILE && !S_ISREG(st.st_mode))
            return job_problem(problems, f, "%s is not a regular file", path);
        if (p->kind == P_DIR && !S_ISDIR(st.st_mode))
            return job_problem(problems, f, "%s is not a directory", path);
        if (p->kind == P_PATH && !S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode))
            return job_problem(problems, f, "%s is neither a regular file nor a directory", path);
        if (access(path, R_OK | (S_ISDIR(st.st_mode) ? X_OK : 0)))
            job_problem(problems, f, "%s is not readable by pgnd", path);
        return;
    }
    }
}

json_t *job_params_validate(const job_type *t, json_t *given, json_t *problems, const pgnd_config *cfg)
{
    if (!json_is_object(given)) {
        job_problem(problems, "params", "must be a JSON object");
        return NULL;
    }
    const char *key;
    json_t *v;
    json_object_foreach(given, key, v) {
        int known = 0;
        for (int k = 0; k < t->n_params && !known; k++)
            known = !strcmp(t->params[k].name, key);
        if (!known)
            job_problem(problems, key, "unknown parameter for job type %s", t->name);
    }
    json_t *out = json_object();
    for (int k = 0; k < t->n_params; k++) {
        const param_spec *p = &t->params[k];
        json_t *x = json_object_get(given, p->name);
        if (!x && !p->def) {
            job_problem(problems, p->name, "is required");
            continue;
        }
        x = x ? json_incref(x) : json_loads(p->def, JSON_DECODE_ANY, NULL);
        size_t before = json_array_size(problems);
        check_value(p, x, problems);
        /* Paths are stored absolute: the daemon's working directory is not the submitter's. */
        if ((p->kind == P_FILE || p->kind == P_DIR || p->kind == P_PATH) && json_array_size(problems) == before && json_is_string(x) &&
            *json_string_value(x)) {
            char *abs = realpath(json_string_value(x), NULL);
            if (abs) {
                json_decref(x);
                x = json_string(abs);
                free(abs);
            }
        }
        json_object_set_new(out, p->name, x);
    }
    if (json_array_size(problems) == 0 && t->check)
        t->check(out, problems, cfg);
    if (json_array_size(problems)) {
        json_decref(out);
        return NULL;
    }
    /* The job records the teacher it runs with: the daemon's default is written into its params, so
     * a restart with another teacher_weights does not change the loss of a job already queued. */
    json_t *tw = json_object_get(out, "teacher_weights");
    struct stat tst;
    if (json_is_string(tw) && *json_string_value(tw) && !stat(json_string_value(tw), &tst) && S_ISDIR(tst.st_mode) &&
        strcmp(pgn_teacher_kind_of_path(json_string_value(tw)), "inception3")) {
        job_problem(problems, "teacher_weights",
                    "%s is a folder but not a tfjs layers model (no model.json, model.min.js or model.js in it)",
                    json_string_value(tw));
        json_decref(out);
        return NULL;
    }
    if (json_is_string(tw) && !*json_string_value(tw) && cfg && cfg->teacher_weights[0]) {
        char *abs = realpath(cfg->teacher_weights, NULL);
        json_object_set_new(out, "teacher_weights", json_string(abs ? abs : cfg->teacher_weights));
        free(abs);
    }
    return out;
}
