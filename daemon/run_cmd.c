#include "daemon/run_cmd.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "daemon/jobtypes.h"

typedef struct fg_ctx {
    FILE *metrics;
    char dir[1024];
    char last_ck[1100];
    int64_t last_ck_step;
    double t0, last_print;
    int64_t step0; /* the first step reported (a resumed run starts past 0) and when: the ETA's rate */
    double t_step0;
    int has_step0;
    /* the headline figures of the progress line, when the job logs them */
    double loss, cos, val_cos, val_base;
    int has_loss, has_cos, has_val;
    int keep; /* checkpoints kept (the config's checkpoint_retention), as the daemon does */
} fg_ctx;

static volatile sig_atomic_t interrupted;
static void on_signal(int sig) { interrupted = sig; }

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int fg_metrics(void *c, int64_t step, int n, const char *const *keys, const double *values)
{
    fg_ctx *f = c;
    fprintf(f->metrics, "{\"step\": %lld", (long long)step);
    for (int i = 0; i < n; i++) {
        fprintf(f->metrics, ", \"%s\": %.9g", keys[i], values[i]);
        if (!strcmp(keys[i], "loss"))
            f->loss = values[i], f->has_loss = 1;
        else if (!strcmp(keys[i], "grad_cos"))
            f->cos = values[i], f->has_cos = 1;
        else if (!strcmp(keys[i], "val.cos"))
            f->val_cos = values[i], f->has_val = 1;
        else if (!strcmp(keys[i], "val.mse_dir_cos"))
            f->val_base = values[i];
    }
    fprintf(f->metrics, "}\n");
    fflush(f->metrics);
    return 0;
}

static int fg_progress(void *c, int64_t step, int64_t total)
{
    fg_ctx *f = c;
    double now = now_s(), el = now - f->t0;
    if (step != total && now - f->last_print < 0.5)
        return 0; /* a readable line, not a flood */
    f->last_print = now;
    if (!f->has_step0)
        f->step0 = step, f->t_step0 = now, f->has_step0 = 1;
    double eta = step > f->step0 ? (now - f->t_step0) / (double)(step - f->step0) * (double)(total - step) : 0;
    char extra[160] = "";
    size_t at = 0;
    if (f->has_loss)
        at += (size_t)snprintf(extra + at, sizeof extra - at, "  loss %.4g", f->loss);
    if (f->has_cos && at < sizeof extra)
        at += (size_t)snprintf(extra + at, sizeof extra - at, "  cos %.3f", f->cos);
    if (f->has_val && at < sizeof extra)
        snprintf(extra + at, sizeof extra - at, "  val cos %.3f (mse dir %.3f)", f->val_cos, f->val_base);
    fprintf(stderr, "\rstep %lld/%lld  %.1f%%%s  elapsed %.0fs  eta %.0fs   ", (long long)step, (long long)total,
            total ? 100.0 * (double)step / (double)total : 0, extra, el, eta);
    if (step == total)
        fputc('\n', stderr);
    return 0;
}

static int fg_artifact(void *c, const char *name, const char *path, const char *kind, int64_t step)
{
    return 0; /* files already sit in the output directory */
}

typedef struct ck_file {
    long long step;
    char name[256];
} ck_file;

static int cmp_step_desc(const void *a, const void *b)
{
    long long x = ((const ck_file *)a)->step, y = ((const ck_file *)b)->step;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* Keeps the newest `keep` checkpoints named like path (same prefix before the step number, same
 * extension) up to path's own step, this run's and earlier runs' alike; never path itself. Files of
 * later steps (left by an earlier, longer run) are not this run's history and stay. */
static void prune_checkpoints(const char *dir, const char *path, int keep)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    const char *ext = strrchr(base, '.');
    if (!ext || keep < 1)
        return;
    size_t plen = (size_t)(ext - base);
    while (plen && base[plen - 1] >= '0' && base[plen - 1] <= '9')
        plen--;
    long long now = strtoll(base + plen, NULL, 10);
    DIR *d = opendir(dir);
    if (!d)
        return;
    ck_file *f = NULL;
    int n = 0, cap = 0;
    for (struct dirent *de; (de = readdir(d));) {
        char *end;
        if (strncmp(de->d_name, base, plen) || !(de->d_name[plen] >= '0' && de->d_name[plen] <= '9') ||
            strlen(de->d_name) >= sizeof f->name)
            continue;
        long long v = strtoll(de->d_name + plen, &end, 10);
        if (strcmp(end, ext) || v > now)
            continue;
        if (n == cap) {
            ck_file *g = realloc(f, (size_t)(cap = cap ? 2 * cap : 64) * sizeof *f);
            if (!g)
                break;
            f = g;
        }
        f[n].step = v;
        snprintf(f[n].name, sizeof f[n].name, "%s", de->d_name);
        n++;
    }
    closedir(d);
    if (f)
        qsort(f, (size_t)n, sizeof *f, cmp_step_desc);
    for (int i = keep; i < n; i++)
        if (strcmp(f[i].name, base)) {
            char victim[1400];
            snprintf(victim, sizeof victim, "%s/%s", dir, f[i].name);
            unlink(victim);
        }
    free(f);
}

static int fg_checkpoint(void *c, const char *path, int64_t step)
{
    fg_ctx *f = c;
    snprintf(f->last_ck, sizeof f->last_ck, "%s", path);
    f->last_ck_step = step;
    /* A pointer file so the next `pgnd run` finds where to resume. */
    char ptr[1100], tmp[1200];
    snprintf(ptr, sizeof ptr, "%s/LATEST_CHECKPOINT", f->dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", ptr);
    FILE *o = fopen(tmp, "w");
    if (!o)
        return -1;
    fprintf(o, "%lld %s\n", (long long)step, path);
    if (fclose(o) || rename(tmp, ptr))
        return -1;
    prune_checkpoints(f->dir, path, f->keep);
    return 0;
}

static pgn_stop fg_should_stop(void *c) { return interrupted ? PGN_STOP_PAUSE : PGN_CONTINUE; }

static void fg_log(void *c, const char *level, const char *msg) { fprintf(stderr, "\n%s: %s\n", level, msg); }

/* A resumed run repeats the steps after its checkpoint: drop their metric lines first, so every
 * step appears once (as the daemon does with its metrics table). */
static int drop_metrics_after(const char *path, long long step)
{
    FILE *in = fopen(path, "r");
    if (!in)
        return errno == ENOENT ? 0 : -1;
    char tmp[1200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *out = fopen(tmp, "w");
    if (!out) {
        fclose(in);
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, in) > 0) {
        long long s;
        if (sscanf(line, "{\"step\": %lld", &s) == 1 && s > step)
            continue;
        fputs(line, out);
    }
    free(line);
    fclose(in);
    if (fclose(out) || rename(tmp, path))
        return -1;
    return 0;
}

int run_job_file(const char *job_path, const char *out_dir, const pgnd_config *cfg)
{
    json_error_t je;
    json_t *job = json_load_file(job_path, JSON_REJECT_DUPLICATES, &je);
    if (!job) {
        fprintf(stderr, "pgnd run: %s:%d:%d: %s\n", job_path, je.line, je.column, je.text);
        return 2;
    }
    const char *type = json_string_value(json_object_get(job, "type"));
    const job_type *t = type ? job_type_find(type) : NULL;
    if (!t) {
        fprintf(stderr, "pgnd run: %s: \"type\" must name a job type (%s)\n", job_path, type ? "unknown" : "missing");
        json_decref(job);
        return 2;
    }
    json_t *problems = json_array(), *given = json_object_get(job, "params");
    json_t *empty = json_object();
    json_t *params = job_params_validate(t, given ? given : empty, problems, cfg);
    json_decref(empty);
    if (!params) {
        size_t i;
        json_t *p;
        fprintf(stderr, "pgnd run: %s has %zu problem%s:\n", job_path, json_array_size(problems),
                json_array_size(problems) == 1 ? "" : "s");
        json_array_foreach(problems, i, p) fprintf(stderr, "  params.%s: %s\n",
                                                   json_string_value(json_object_get(p, "field")),
                                                   json_string_value(json_object_get(p, "detail")));
        json_decref(problems), json_decref(job);
        return 2;
    }
    json_decref(problems);
    fg_ctx f;
    memset(&f, 0, sizeof f);
    snprintf(f.dir, sizeof f.dir, "%s", out_dir);
    f.keep = cfg->checkpoint_retention;
    if (mkdir(out_dir, 0750) && errno != EEXIST) {
        fprintf(stderr, "pgnd run: cannot create %s: %s\n", out_dir, strerror(errno));
        return 1;
    }
    char mpath[1100], ptr[1100], resume[1100] = "";
    long long resume_step = -1;
    snprintf(ptr, sizeof ptr, "%s/LATEST_CHECKPOINT", out_dir);
    FILE *pf = fopen(ptr, "r");
    if (pf) {
        if (fscanf(pf, "%lld %1023s", &resume_step, resume) != 2)
            resume_step = -1, resume[0] = 0;
        fclose(pf);
    }
    snprintf(mpath, sizeof mpath, "%s/metrics.jsonl", out_dir);
    if (resume[0] && drop_metrics_after(mpath, resume_step)) {
        fprintf(stderr, "pgnd run: cannot rewrite %s: %s\n", mpath, strerror(errno));
        return 1;
    }
    f.metrics = fopen(mpath, "a");
    if (!f.metrics) {
        fprintf(stderr, "pgnd run: cannot write %s: %s\n", mpath, strerror(errno));
        return 1;
    }
    if (resume[0])
        fprintf(stderr, "resuming from %s (step %lld)\n", resume, resume_step);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    f.t0 = now_s();
    pgn_job_io io = {&f,          out_dir,      cfg->threads,  cfg->teacher_weights,
                     resume[0] ? resume : NULL, resume_step,
                     fg_metrics,  fg_progress,  fg_artifact,   fg_checkpoint,
                     fg_should_stop, fg_log};
    char *text = json_dumps(params, JSON_COMPACT | JSON_SORT_KEYS);
    char err[1024] = "";
    int rc = t->run(text, &io, err, sizeof err);
    free(text);
    json_decref(params), json_decref(job);
    fclose(f.metrics);
    if (rc == PGN_DONE) {
        fprintf(stderr, "done: outputs in %s\n", out_dir);
        return 0;
    }
    if (rc == PGN_STOPPED) {
        fprintf(stderr, "\nstopped at a checkpoint (step %lld); run the same command to resume\n",
                (long long)f.last_ck_step);
        return 130;
    }
    fprintf(stderr, "\npgnd run: failed: %s\n", err);
    return 1;
}
