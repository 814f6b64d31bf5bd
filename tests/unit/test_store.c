/* The SQLite store (store/): migrations, jobs and their state machine, metrics and downsampling,
 * events, artifacts, checkpoints, tokens, and claims/creates from several threads and connections.
 * Every test works on a fresh database in its own mkdtemp directory under /tmp, removed after. */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <dirent.h>
#include <sqlite3.h>

#include "store/migrations_internal.h"
#include "store/store.h"

typedef struct fixture {
    char dir[64];
    char path[128];
    pgnd_store *s;
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    snprintf(f->dir, sizeof f->dir, "/tmp/pgnd_store_XXXXXX");
    if (!mkdtemp(f->dir)) {
        free(f);
        return -1;
    }
    snprintf(f->path, sizeof f->path, "%s/state.db", f->dir);
    store_err err;
    if (store_open(&f->s, f->path, &err)) {
        fprintf(stderr, "store_open: %s\n", err.msg);
        rmdir(f->dir);
        free(f);
        return -1;
    }
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    store_close(f->s);
    /* Whatever a test left in its directory (the database, -wal, -shm, test files). */
    DIR *d = opendir(f->dir);
    if (d) {
        struct dirent *e;
        char p[400];
        while ((e = readdir(d)))
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
                snprintf(p, sizeof p, "%s/%s", f->dir, e->d_name);
                unlink(p);
            }
        closedir(d);
    }
    int rc = rmdir(f->dir);
    free(f);
    return rc;
}

#define OK(call)                                                                                               \
    do {                                                                                                       \
        store_err err_;                                                                                        \
        err_.msg[0] = 0;                                                                                       \
        int rc_ = (call);                                                                                      \
        if (rc_ != 0)                                                                                          \
            fail_msg("%s returned %d: %s", #call, rc_, err_.msg);                                              \
    } while (0)
/* For OK(): the calls name the error struct err_. */
#define E (&err_)

/* ---- raw SQLite, to look behind the API ---- */

static int64_t raw_int(const char *path, const char *sql, int64_t arg)
{
    sqlite3 *db;
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        fail_msg("%s: %s", sql, sqlite3_errmsg(db));
    if (sqlite3_bind_parameter_count(st) > 0)
        sqlite3_bind_int64(st, 1, arg);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    int64_t v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

/* EXPLAIN QUERY PLAN's details, joined by " | ". */
static void raw_plan(const char *path, const char *sql, char *out, size_t cap)
{
    sqlite3 *db;
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    char q[512];
    snprintf(q, sizeof q, "EXPLAIN QUERY PLAN %s", sql);
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, q, -1, &st, NULL) != SQLITE_OK)
        fail_msg("%s: %s", q, sqlite3_errmsg(db));
    out[0] = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        size_t len = strlen(out);
        snprintf(out + len, cap - len, "%s | ", (const char *)sqlite3_column_text(st, 3));
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
}

static void raw_exec(const char *path, const char *sql)
{
    sqlite3 *db;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK)
        fail_msg("%s: %s", sql, msg);
    sqlite3_close(db);
}

static int64_t new_job(pgnd_store *s, const char *type, int priority)
{
    int64_t id = 0;
    OK(store_job_create(s, type, "tester", "{\"a\":1}", priority, 0, &id, E));
    assert_true(id > 0);
    return id;
}

static job_state state_of(pgnd_store *s, int64_t id)
{
    store_job j;
    OK(store_job_get(s, id, &j, E));
    job_state st = j.state;
    store_job_free(&j);
    return st;
}

#define BIT(st) (1u << (st))
#define ALL_STATES ((1u << JOB_STATE_COUNT) - 1)

/* ---- names ---- */

static void test_names(void **state)
{
    (void)state;
    for (int i = 0; i < JOB_STATE_COUNT; i++) {
        job_state p;
        assert_int_equal(job_state_parse(job_state_name((job_state)i), &p), 0);
        assert_int_equal(p, i);
    }
    job_state p;
    assert_int_equal(job_state_parse("done", &p), -1);
    assert_string_equal(job_state_name(JOB_CANCELLED), "cancelled");
    assert_true(job_state_terminal(JOB_SUCCEEDED) && job_state_terminal(JOB_FAILED) &&
                job_state_terminal(JOB_CANCELLED));
    assert_false(job_state_terminal(JOB_QUEUED) || job_state_terminal(JOB_RUNNING) || job_state_terminal(JOB_PAUSED));
    token_role r;
    assert_int_equal(token_role_parse("submit", &r), 0);
    assert_int_equal(r, ROLE_SUBMIT);
    assert_string_equal(token_role_name(ROLE_ADMIN), "admin");
    assert_int_equal(token_role_parse("root", &r), -1);
}

/* ---- open and migrations ---- */

static void test_migrations_applied(void **state)
{
    fixture *f = *state;
    int known = store_schema_known();
    assert_true(known >= 1);
    assert_int_equal(store_schema_version(f->s), known);
    /* The embedded list is sorted, without duplicates, and ends at `known`. */
    assert_true(store_migrations_count >= 1);
    assert_int_equal(store_migrations[0].version, 1);
    assert_string_equal(store_migrations[0].name, "init");
    for (int i = 1; i < store_migrations_count; i++)
        assert_true(store_migrations[i].version > store_migrations[i - 1].version);
    assert_int_equal(store_migrations[store_migrations_count - 1].version, known);
    /* One row per migration, with a time. */
    assert_int_equal(raw_int(f->path, "SELECT count(*) FROM schema_migrations", 0), store_migrations_count);
    assert_int_equal(raw_int(f->path, "SELECT max(version) FROM schema_migrations", 0), known);
    assert_int_equal(raw_int(f->path, "SELECT count(*) FROM schema_migrations WHERE version = 1 AND name = 'init' "
                                      "AND applied_ms > 1600000000000",
                             0),
                     1);
    static const char *const tables[] = {"jobs", "metrics", "events", "artifacts", "checkpoints", "tokens"};
    for (size_t i = 0; i < sizeof tables / sizeof *tables; i++) {
        char sql[160];
        snprintf(sql, sizeof sql, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '%s'",
                 tables[i]);
        if (raw_int(f->path, sql, 0) != 1)
            fail_msg("table %s is missing", tables[i]);
    }
    assert_int_equal(raw_int(f->path,
                             "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name IN ('jobs_claim', "
                             "'jobs_state_id', 'jobs_type_id', 'events_job_id')",
                             0),
                     4);
    /* The claim walks jobs_claim without sorting; child rows cascade with their job. */
    char plan[512];
    raw_plan(f->path, "SELECT id FROM jobs WHERE state = 'queued' ORDER BY priority DESC, id LIMIT 1", plan,
             sizeof plan);
    if (!strstr(plan, "jobs_claim") || strstr(plan, "TEMP B-TREE"))
        fail_msg("claim plan: %s", plan);
    assert_int_equal(raw_int(f->path,
                             "SELECT count(*) FROM pragma_foreign_key_list('metrics') WHERE \"table\" = 'jobs' AND "
                             "on_delete = 'CASCADE'",
                             0),
                     1);
}

static void test_reopen_idempotent(void **state)
{
    fixture *f = *state;
    int64_t id = new_job(f->s, "fit", 0);
    int64_t applied = raw_int(f->path, "SELECT applied_ms FROM schema_migrations WHERE version = 1", 0);
    for (int round = 0; round < 2; round++) {
        store_close(f->s);
        f->s = NULL;
        OK(store_open(&f->s, f->path, E));
        assert_int_equal(store_schema_version(f->s), store_schema_known());
    }
    assert_int_equal(raw_int(f->path, "SELECT count(*) FROM schema_migrations", 0), store_migrations_count);
    assert_int_equal(raw_int(f->path, "SELECT applied_ms FROM schema_migrations WHERE version = 1", 0), applied);
    assert_int_equal(state_of(f->s, id), JOB_QUEUED);
}

static void test_newer_schema_refused(void **state)
{
    fixture *f = *state;
    store_close(f->s);
    f->s = NULL;
    char sql[200];
    int newer = store_schema_known() + 1;
    snprintf(sql, sizeof sql, "INSERT INTO schema_migrations VALUES (%d, 'from_the_future', 1)", newer);
    raw_exec(f->path, sql);
    store_err err;
    pgnd_store *s = (pgnd_store *)&err; /* must come back NULL */
    assert_int_equal(store_open(&s, f->path, &err), -1);
    assert_null(s);
    char want[600];
    snprintf(want, sizeof want,
             "database %s has schema version %d but this pgnd knows only up to %d; use a newer pgnd or another "
             "state directory",
             f->path, newer, store_schema_known());
    assert_string_equal(err.msg, want);
}

static void test_wal(void **state)
{
    fixture *f = *state;
    char wal[160];
    snprintf(wal, sizeof wal, "%s-wal", f->path);
    new_job(f->s, "fit", 0);
    assert_int_equal(access(wal, F_OK), 0);
    sqlite3 *db;
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), "wal");
    sqlite3_finalize(st);
    sqlite3_close(db);
}

static void test_open_errors(void **state)
{
    fixture *f = *state;
    store_err err;
    pgnd_store *s = NULL;
    assert_int_equal(store_open(&s, "/nonexistent-pgnd-dir/state.db", &err), -1);
    assert_null(s);
    assert_string_equal(err.msg, "cannot open database /nonexistent-pgnd-dir/state.db: unable to open database file");
    /* A file that is not a database. */
    char path[128];
    snprintf(path, sizeof path, "%s/junk.db", f->dir);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    for (int i = 0; i < 200; i++)
        fputs("this is not an SQLite database\n", fp);
    fclose(fp);
    assert_int_equal(store_open(&s, path, &err), -1);
    assert_null(s);
    if (!strstr(err.msg, path) || !strstr(err.msg, "not a database"))
        fail_msg("unexpected message: %s", err.msg);
    print_message("%s\n", err.msg);
}

/* ---- jobs ---- */

static void test_job_create_get(void **state)
{
    fixture *f = *state;
    int64_t before = store_now_ms(), id = 0;
    OK(store_job_create(f->s, "train", "alice", "{\"steps\":10}", 3, 0, &id, E));
    store_job j;
    OK(store_job_get(f->s, id, &j, E));
    assert_int_equal(j.id, id);
    assert_string_equal(j.type, "train");
    assert_string_equal(j.owner, "alice");
    assert_int_equal(j.state, JOB_QUEUED);
    assert_int_equal(j.priority, 3);
    assert_string_equal(j.params_json, "{\"steps\":10}");
    assert_null(j.error);
    assert_true(j.created_ms >= before && j.created_ms <= store_now_ms());
    assert_int_equal(j.started_ms, 0);
    assert_int_equal(j.finished_ms, 0);
    assert_int_equal(j.step, 0);
    assert_int_equal(j.checkpoint_step, -1);
    assert_int_equal(j.cancel_requested + j.pause_requested, 0);
    store_job_free(&j);
    /* NULL owner and params take defaults. */
    OK(store_job_create(f->s, "fit", NULL, NULL, 0, 0, &id, E));
    OK(store_job_get(f->s, id, &j, E));
    assert_string_equal(j.owner, "");
    assert_string_equal(j.params_json, "{}");
    store_job_free(&j);

    store_err err;
    assert_int_equal(store_job_get(f->s, 9999, &j, &err), STORE_NOT_FOUND);
    assert_string_equal(err.msg, "job 9999 not found");
    store_job_free(&j); /* harmless on a zeroed job */
    char longtype[40];
    memset(longtype, 't', sizeof longtype - 1);
    longtype[sizeof longtype - 1] = 0;
    assert_int_equal(store_job_create(f->s, longtype, NULL, NULL, 0, 0, &id, &err), -1);
    assert_non_null(strstr(err.msg, "job type"));
    assert_int_equal(store_job_create(f->s, "", NULL, NULL, 0, 0, &id, &err), -1);
}

static void test_job_list(void **state)
{
    fixture *f = *state;
    int64_t ids[10];
    for (int i = 0; i < 10; i++)
        ids[i] = new_job(f->s, i % 2 ? "odd" : "even", 0);
    /* The three oldest (priority ties: lowest id first) become running. */
    for (int i = 0; i < 3; i++) {
        int64_t c;
        OK(store_job_claim(f->s, &c, E));
        assert_int_equal(c, ids[i]);
    }
    store_job *jobs;
    int n;
    OK(store_job_list(f->s, NULL, NULL, 0, 0, &jobs, &n, E));
    assert_int_equal(n, 10);
    for (int i = 0; i < n; i++)
        assert_int_equal(jobs[i].id, ids[9 - i]); /* newest first */
    assert_string_equal(jobs[0].params_json, "{\"a\":1}");
    store_jobs_free(jobs, n);

    OK(store_job_list(f->s, "running", NULL, 0, 0, &jobs, &n, E));
    assert_int_equal(n, 3);
    assert_int_equal(jobs[0].id, ids[2]);
    assert_int_equal(jobs[2].id, ids[0]);
    store_jobs_free(jobs, n);

    OK(store_job_list(f->s, NULL, "odd", 0, 0, &jobs, &n, E));
    assert_int_equal(n, 5);
    for (int i = 0; i < n; i++)
        assert_string_equal(jobs[i].type, "odd");
    store_jobs_free(jobs, n);

    OK(store_job_list(f->s, "queued", "even", 0, 0, &jobs, &n, E));
    assert_int_equal(n, 3); /* even ids 4, 6, 8 (0 and 2 run) */
    assert_int_equal(jobs[0].id, ids[8]);
    assert_int_equal(jobs[2].id, ids[4]);
    store_jobs_free(jobs, n);

    /* Paging: 4 at a time, each page before the last id seen. */
    int64_t before = 0, seen = 0;
    for (int page = 0; page < 4; page++) {
        OK(store_job_list(f->s, NULL, NULL, before, 4, &jobs, &n, E));
        assert_int_equal(n, page < 2 ? 4 : page == 2 ? 2 : 0);
        for (int i = 0; i < n; i++)
            assert_int_equal(jobs[i].id, ids[9 - seen - i]);
        seen += n;
        if (n)
            before = jobs[n - 1].id;
        store_jobs_free(jobs, n);
    }
    assert_int_equal(seen, 10);
    assert_null(jobs); /* the empty page */

    store_err err;
    assert_int_equal(store_job_list(f->s, "done", NULL, 0, 0, &jobs, &n, &err), -1);
    assert_non_null(strstr(err.msg, "done"));
}

static void test_queue_limit(void **state)
{
    fixture *f = *state;
    int64_t id;
    for (int i = 0; i < 3; i++)
        OK(store_job_create(f->s, "fit", NULL, NULL, 0, 3, &id, E));
    store_err err;
    assert_int_equal(store_job_create(f->s, "fit", NULL, NULL, 0, 3, &id, &err), STORE_FULL);
    assert_int_equal(id, 0);
    assert_string_equal(err.msg, "the queue is full: 3 jobs are queued and the limit is 3");
    int n;
    OK(store_count_queued(f->s, &n, E));
    assert_int_equal(n, 3);
    /* A running job does not count against the queue. */
    OK(store_job_claim(f->s, &id, E));
    OK(store_job_create(f->s, "fit", NULL, NULL, 0, 3, &id, E));
    /* 0 = no limit. */
    OK(store_job_create(f->s, "fit", NULL, NULL, 0, 0, &id, E));
    OK(store_count_queued(f->s, &n, E));
    assert_int_equal(n, 4);
}

static void test_claim_priority(void **state)
{
    fixture *f = *state;
    int64_t a = new_job(f->s, "fit", 0), b = new_job(f->s, "fit", 5), c = new_job(f->s, "fit", 5),
            d = new_job(f->s, "fit", -1), e = new_job(f->s, "fit", 10);
    const int64_t want[] = {e, b, c, a, d, 0};
    for (int i = 0; i < 6; i++) {
        int64_t id = -1;
        OK(store_job_claim(f->s, &id, E));
        assert_int_equal(id, want[i]);
        if (id) {
            store_job j;
            OK(store_job_get(f->s, id, &j, E));
            assert_int_equal(j.state, JOB_RUNNING);
            assert_true(j.started_ms > 0);
            store_job_free(&j);
        }
    }
}

static void test_transitions(void **state)
{
    fixture *f = *state;
    int64_t id = new_job(f->s, "fit", 0), claimed;
    store_err err;
    /* Not in from_mask. */
    assert_int_equal(store_job_transition(f->s, id, BIT(JOB_RUNNING), JOB_SUCCEEDED, NULL, &err), STORE_CONFLICT);
    assert_string_equal(err.msg, "job 1 is queued; it cannot become succeeded");
    /* In the mask but not a legal move: queued cannot succeed without running. */
    assert_int_equal(store_job_transition(f->s, id, ALL_STATES, JOB_SUCCEEDED, NULL, &err), STORE_CONFLICT);
    assert_int_equal(store_job_transition(f->s, id, ALL_STATES, JOB_QUEUED, NULL, &err), STORE_CONFLICT);
    /* A queued job can be held (paused) and released again. */
    OK(store_job_transition(f->s, id, BIT(JOB_QUEUED), JOB_PAUSED, NULL, E));
    assert_int_equal(store_job_transition(f->s, id, ALL_STATES, JOB_SUCCEEDED, NULL, &err), STORE_CONFLICT);
    assert_int_equal(store_job_transition(f->s, id, ALL_STATES, JOB_RUNNING, NULL, &err), STORE_CONFLICT);
    OK(store_job_transition(f->s, id, BIT(JOB_PAUSED), JOB_QUEUED, NULL, E));
    /* Unknown job. */
    assert_int_equal(store_job_transition(f->s, 4242, ALL_STATES, JOB_CANCELLED, NULL, &err), STORE_NOT_FOUND);
    assert_string_equal(err.msg, "job 4242 not found");
    assert_int_equal(store_job_transition(f->s, id, ALL_STATES, (job_state)42, NULL, &err), -1);

    /* queued -> running -> paused -> queued -> running -> failed. */
    OK(store_job_claim(f->s, &claimed, E));
    assert_int_equal(claimed, id);
    store_job j;
    OK(store_job_get(f->s, id, &j, E));
    int64_t started = j.started_ms;
    store_job_free(&j);
    OK(store_job_transition(f->s, id, BIT(JOB_RUNNING), JOB_PAUSED, NULL, E));
    assert_int_equal(store_job_transition(f->s, id, ALL_STATES, JOB_RUNNING, NULL, &err), STORE_CONFLICT);
    OK(store_job_transition(f->s, id, BIT(JOB_PAUSED), JOB_QUEUED, NULL, E));
    OK(store_job_claim(f->s, &claimed, E));
    assert_int_equal(claimed, id);
    OK(store_job_transition(f->s, id, BIT(JOB_RUNNING), JOB_FAILED, "out of memory at step 3", E));
    OK(store_job_get(f->s, id, &j, E));
    assert_int_equal(j.state, JOB_FAILED);
    assert_string_equal(j.error, "out of memory at step 3");
    assert_int_equal(j.started_ms, started); /* the first start is kept */
    assert_true(j.finished_ms >= j.started_ms);
    store_job_free(&j);
    /* Terminal is final, whatever the mask. */
    for (int to = 0; to < JOB_STATE_COUNT; to++)
        assert_int_equal(store_job_transition(f->s, id, ALL_STATES, (job_state)to, NULL, &err), STORE_CONFLICT);
    assert_int_equal(state_of(f->s, id), JOB_FAILED);

    /* Queued and paused jobs can be cancelled; running ones succeed. */
    int64_t q = new_job(f->s, "fit", 0);
    OK(store_job_transition(f->s, q, BIT(JOB_QUEUED) | BIT(JOB_PAUSED), JOB_CANCELLED, NULL, E));
    OK(store_job_get(f->s, q, &j, E));
    assert_int_equal(j.state, JOB_CANCELLED);
    assert_true(j.finished_ms > 0);
    assert_int_equal(j.started_ms, 0);
    assert_null(j.error);
    store_job_free(&j);
    int64_t r = new_job(f->s, "fit", 0);
    OK(store_job_transition(f->s, r, BIT(JOB_QUEUED), JOB_RUNNING, NULL, E));
    OK(store_job_transition(f->s, r, BIT(JOB_RUNNING), JOB_SUCCEEDED, "ignored unless failed", E));
    OK(store_job_get(f->s, r, &j, E));
    assert_int_equal(j.state, JOB_SUCCEEDED);
    assert_true(j.started_ms > 0 && j.finished_ms >= j.started_ms);
    assert_null(j.error);
    store_job_free(&j);
}

static void test_requests_and_progress(void **state)
{
    fixture *f = *state;
    int64_t id = new_job(f->s, "fit", 0), claimed;
    store_err err;
    /* Only running jobs take requests. */
    assert_int_equal(store_job_request(f->s, id, 1, 0, &err), STORE_CONFLICT);
    assert_string_equal(err.msg, "job 1 is queued, not running");
    assert_int_equal(store_job_request(f->s, 77, 1, 0, &err), STORE_NOT_FOUND);
    OK(store_job_claim(f->s, &claimed, E));
    OK(store_job_request(f->s, id, 0, 1, E));
    OK(store_job_request(f->s, id, 1, 0, E)); /* adds; does not clear the pause */
    store_job j;
    OK(store_job_get(f->s, id, &j, E));
    assert_int_equal(j.cancel_requested, 1);
    assert_int_equal(j.pause_requested, 1);
    store_job_free(&j);
    OK(store_job_progress(f->s, id, 40, 100, E));
    OK(store_job_transition(f->s, id, BIT(JOB_RUNNING), JOB_PAUSED, NULL, E));
    OK(store_job_get(f->s, id, &j, E));
    assert_int_equal(j.cancel_requested + j.pause_requested, 0); /* the transition clears them */
    assert_int_equal(j.step, 40);
    assert_int_equal(j.total_steps, 100);
    store_job_free(&j);
    assert_int_equal(store_job_progress(f->s, 77, 1, 2, &err), STORE_NOT_FOUND);
}

static void test_requeue_running(void **state)
{
    fixture *f = *state;
    int64_t ids[5];
    for (int i = 0; i < 5; i++)
        ids[i] = new_job(f->s, "fit", 0);
    int64_t c;
    for (int i = 0; i < 3; i++)
        OK(store_job_claim(f->s, &c, E));
    OK(store_job_request(f->s, ids[0], 0, 1, E));
    OK(store_job_transition(f->s, ids[2], BIT(JOB_RUNNING), JOB_SUCCEEDED, NULL, E));
    int n = -1;
    OK(store_requeue_running(f->s, &n, E));
    assert_int_equal(n, 2);
    assert_int_equal(state_of(f->s, ids[0]), JOB_QUEUED);
    assert_int_equal(state_of(f->s, ids[1]), JOB_QUEUED);
    assert_int_equal(state_of(f->s, ids[2]), JOB_SUCCEEDED);
    store_job j;
    OK(store_job_get(f->s, ids[0], &j, E));
    assert_int_equal(j.pause_requested, 0);
    store_job_free(&j);
    OK(store_count_queued(f->s, &n, E));
    assert_int_equal(n, 4);
    OK(store_requeue_running(f->s, &n, E));
    assert_int_equal(n, 0);
}

static void add_children(pgnd_store *s, int64_t job)
{
    const char *keys[] = {"loss", "lr"};
    const double vals[] = {0.5, 1e-3};
    for (int step = 1; step <= 5; step++)
        OK(store_metrics_append(s, job, step, 2, keys, vals, E));
    int64_t ev;
    OK(store_event_append(s, job, "log", "{\"m\":\"hi\"}", &ev, E));
    store_file fl;
    memset(&fl, 0, sizeof fl);
    snprintf(fl.name, sizeof fl.name, "sample.png");
    snprintf(fl.path, sizeof fl.path, "/var/lib/pgnd/jobs/%lld/sample.png", (long long)job);
    snprintf(fl.kind, sizeof fl.kind, "image");
    fl.step = 5;
    OK(store_artifact_put(s, job, &fl, E));
    snprintf(fl.name, sizeof fl.name, "checkpoint-5");
    snprintf(fl.kind, sizeof fl.kind, "checkpoint");
    OK(store_checkpoint_record(s, job, &fl, E));
}

static int64_t children(const char *path, int64_t job)
{
    return raw_int(path,
                   "SELECT (SELECT count(*) FROM metrics WHERE job = ?1) + (SELECT count(*) FROM events WHERE job = "
                   "?1) + (SELECT count(*) FROM artifacts WHERE job = ?1) + (SELECT count(*) FROM checkpoints "
                   "WHERE job = ?1)",
                   job);
}

static void test_delete_cascades(void **state)
{
    fixture *f = *state;
    int64_t a = new_job(f->s, "fit", 1), b = new_job(f->s, "fit", 0), c;
    add_children(f->s, a);
    add_children(f->s, b);
    int64_t daemon_ev;
    OK(store_event_append(f->s, 0, "started", NULL, &daemon_ev, E));
    assert_int_equal(children(f->path, a), 10 + 1 + 1 + 1);
    store_err err;
    /* Queued, then running: refused, nothing removed. */
    assert_int_equal(store_job_delete(f->s, a, &err), STORE_CONFLICT);
    assert_string_equal(err.msg, "job 1 is queued; only finished jobs can be deleted");
    OK(store_job_claim(f->s, &c, E));
    assert_int_equal(c, a);
    assert_int_equal(store_job_delete(f->s, a, &err), STORE_CONFLICT);
    assert_int_equal(children(f->path, a), 13);
    OK(store_job_transition(f->s, a, BIT(JOB_RUNNING), JOB_SUCCEEDED, NULL, E));
    OK(store_job_delete(f->s, a, E));
    assert_int_equal(children(f->path, a), 0);
    assert_int_equal(children(f->path, b), 13); /* the other job keeps its rows */
    assert_int_equal(raw_int(f->path, "SELECT count(*) FROM events WHERE job IS NULL", 0), 1);
    store_job j;
    assert_int_equal(store_job_get(f->s, a, &j, &err), STORE_NOT_FOUND);
    assert_int_equal(store_job_delete(f->s, a, &err), STORE_NOT_FOUND);
    /* Ids are not reused after a delete. */
    int64_t d = new_job(f->s, "fit", 0);
    assert_true(d > b);
}

/* ---- metrics ---- */

static void test_metrics_append_truncate(void **state)
{
    fixture *f = *state;
    int64_t job = new_job(f->s, "fit", 0);
    const char *keys[] = {"loss", "acc"};
    for (int step = 0; step < 10; step++) {
        const double vals[] = {10.0 - step, step * 0.1};
        OK(store_metrics_append(f->s, job, step, 2, keys, vals, E));
    }
    /* Appending a (step, key) again replaces its value. */
    const double again[] = {99.0};
    OK(store_metrics_append(f->s, job, 3, 1, keys, again, E));
    store_series *sr;
    int n;
    OK(store_metrics_query(f->s, job, NULL, 0, -1, 1000, &sr, &n, E));
    assert_int_equal(n, 2);
    assert_string_equal(sr[0].key, "acc"); /* every key, sorted */
    assert_string_equal(sr[1].key, "loss");
    assert_int_equal(sr[1].n, 10);
    for (int i = 0; i < 10; i++) {
        assert_int_equal(sr[1].steps[i], i);
        assert_true(sr[1].values[i] == (i == 3 ? 99.0 : 10.0 - i));
        assert_true(fabs(sr[0].values[i] - i * 0.1) < 1e-15);
    }
    store_series_free(sr, n);

    OK(store_metrics_truncate(f->s, job, 4, E));
    OK(store_metrics_query(f->s, job, keys, 1, -1, 1000, &sr, &n, E));
    assert_int_equal(n, 1);
    assert_int_equal(sr[0].n, 5);
    assert_int_equal(sr[0].steps[4], 4);
    store_series_free(sr, n);
    OK(store_metrics_truncate(f->s, job, -1, E));
    assert_int_equal(raw_int(f->path, "SELECT count(*) FROM metrics", 0), 0);

    store_err err;
    assert_int_equal(store_metrics_append(f->s, 999, 0, 2, keys, again, &err), STORE_NOT_FOUND);
    assert_string_equal(err.msg, "job 999 not found");
    const char *bad[] = {""};
    assert_int_equal(store_metrics_append(f->s, job, 0, 1, bad, again, &err), -1);
    assert_int_equal(store_metrics_query(f->s, job, NULL, 0, -1, 0, &sr, &n, &err), -1);
}

static double loss_at(int64_t i)
{
    return (double)(i * i) + 0.25 * (double)(i % 7);
}

static void test_metrics_downsample(void **state)
{
    fixture *f = *state;
    int64_t job = new_job(f->s, "fit", 0);
    const int64_t N = 10000;
    const char *keys[] = {"loss", "lr"};
    for (int64_t i = 0; i < N; i++) {
        const double vals[] = {loss_at(i), 1.0};
        OK(store_metrics_append(f->s, job, 10 + 3 * i, 2, keys, vals, E));
    }
    const int M = 100;
    store_series *sr;
    int n;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    OK(store_metrics_query(f->s, job, keys, 2, -1, M, &sr, &n, E));
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ms = (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6;
    print_message("metrics query: 2 x %lld points to %d each in %.1f ms\n", (long long)N, M, ms);
    assert_true(ms < 5000); /* generous: valgrind runs this too */
    assert_int_equal(n, 2);
    const store_series *s = &sr[0];
    assert_string_equal(s->key, "loss");
    assert_int_equal(s->n, M);
    /* First and last exact. */
    assert_int_equal(s->steps[0], 10);
    assert_true(s->values[0] == loss_at(0));
    assert_int_equal(s->steps[M - 1], 10 + 3 * (N - 1));
    assert_true(s->values[M - 1] == loss_at(N - 1));
    /* Inner rows 1..N-2 in M-2 buckets: bucket b holds inner rows [ceil(b*K/B), ceil((b+1)*K/B)). */
    const int64_t K = N - 2, B = M - 2;
    int64_t total = 0;
    for (int64_t b = 0; b < B; b++) {
        int64_t lo = 1 + (b * K + B - 1) / B, hi = 1 + ((b + 1) * K + B - 1) / B;
        assert_true(hi - lo == K / B || hi - lo == K / B + 1);
        total += hi - lo;
        double vsum = 0, ssum = 0;
        for (int64_t i = lo; i < hi; i++) {
            vsum += loss_at(i);
            ssum += (double)(10 + 3 * i);
        }
        int64_t want_step = llround(ssum / (double)(hi - lo));
        double want = vsum / (double)(hi - lo);
        if (s->steps[1 + b] != want_step || fabs(s->values[1 + b] - want) > 1e-12 * want)
            fail_msg("bucket %lld: got (%lld, %.17g), want (%lld, %.17g)", (long long)b, (long long)s->steps[1 + b],
                     s->values[1 + b], (long long)want_step, want);
    }
    assert_int_equal(total, K);
    for (int i = 1; i < M; i++)
        assert_true(s->steps[i] > s->steps[i - 1]);
    assert_string_equal(sr[1].key, "lr");
    assert_int_equal(sr[1].n, M);
    for (int i = 0; i < M; i++)
        assert_true(sr[1].values[i] == 1.0);
    store_series_free(sr, n);

    /* max_points >= n: every point, exact. */
    OK(store_metrics_query(f->s, job, keys, 1, -1, (int)N, &sr, &n, E));
    assert_int_equal(sr[0].n, N);
    for (int64_t i = 0; i < N; i++)
        if (sr[0].steps[i] != 10 + 3 * i || sr[0].values[i] != loss_at(i))
            fail_msg("point %lld differs", (long long)i);
    store_series_free(sr, n);

    /* since_step: steps strictly after it. Step 10 + 3 * 5000 is excluded. */
    OK(store_metrics_query(f->s, job, keys, 1, 10 + 3 * 5000, 1000000, &sr, &n, E));
    assert_int_equal(sr[0].n, N - 5001);
    assert_int_equal(sr[0].steps[0], 10 + 3 * 5001);
    store_series_free(sr, n);

    /* Tiny max_points: 1 = the last point, 2 = first and last, 3 = first, mean of the rest, last. */
    OK(store_metrics_query(f->s, job, keys, 1, -1, 1, &sr, &n, E));
    assert_int_equal(sr[0].n, 1);
    assert_int_equal(sr[0].steps[0], 10 + 3 * (N - 1));
    store_series_free(sr, n);
    OK(store_metrics_query(f->s, job, keys, 1, -1, 2, &sr, &n, E));
    assert_int_equal(sr[0].n, 2);
    assert_int_equal(sr[0].steps[0], 10);
    assert_int_equal(sr[0].steps[1], 10 + 3 * (N - 1));
    store_series_free(sr, n);
    OK(store_metrics_query(f->s, job, keys, 1, -1, 3, &sr, &n, E));
    assert_int_equal(sr[0].n, 3);
    assert_int_equal(sr[0].steps[1], llround(10 + 3 * 4999.5)); /* inner rows 1..N-2: mean row 4999.5 */
    store_series_free(sr, n);

    /* A key with no points, and a job with none, give empty series. */
    const char *none[] = {"nothing"};
    OK(store_metrics_query(f->s, job, none, 1, -1, 10, &sr, &n, E));
    assert_int_equal(n, 1);
    assert_int_equal(sr[0].n, 0);
    assert_null(sr[0].steps);
    store_series_free(sr, n);
    OK(store_metrics_query(f->s, 12345, NULL, 0, -1, 10, &sr, &n, E));
    assert_int_equal(n, 0);
    store_series_free(sr, n);
}

static void test_metrics_nan(void **state)
{
    fixture *f = *state;
    int64_t job = new_job(f->s, "fit", 0);
    const char *keys[] = {"loss"};
    for (int i = 0; i < 10; i++) {
        const double v[] = {i == 4 ? NAN : i == 6 ? INFINITY : (double)i};
        OK(store_metrics_append(f->s, job, i, 1, keys, v, E));
    }
    store_series *sr;
    int n;
    OK(store_metrics_query(f->s, job, keys, 1, -1, 10, &sr, &n, E));
    assert_true(isnan(sr[0].values[4]));
    assert_true(isinf(sr[0].values[6]));
    assert_true(sr[0].values[5] == 5.0);
    store_series_free(sr, n);
    /* 8 inner rows in 4 buckets of 2: the bucket holding the NaN is NaN, the others plain means. */
    OK(store_metrics_query(f->s, job, keys, 1, -1, 6, &sr, &n, E));
    assert_int_equal(sr[0].n, 6);
    assert_true(sr[0].values[1] == 1.5);
    assert_true(isnan(sr[0].values[2]));
    assert_true(sr[0].values[4] == 7.5);
    store_series_free(sr, n);
}

/* ---- events ---- */

static void test_events(void **state)
{
    fixture *f = *state;
    int64_t a = new_job(f->s, "fit", 0), b = new_job(f->s, "fit", 0);
    int64_t ids[9], prev = 0;
    for (int i = 0; i < 9; i++) {
        char data[32];
        snprintf(data, sizeof data, "{\"i\":%d}", i);
        OK(store_event_append(f->s, i % 3 == 0 ? 0 : i % 3 == 1 ? a : b, "log", data, &ids[i], E));
        assert_true(ids[i] > prev);
        prev = ids[i];
    }
    store_event *ev;
    int n;
    OK(store_events_since(f->s, 0, 0, 0, &ev, &n, E));
    assert_int_equal(n, 9);
    for (int i = 0; i < 9; i++) {
        char data[32];
        snprintf(data, sizeof data, "{\"i\":%d}", i);
        assert_int_equal(ev[i].id, ids[i]);
        assert_string_equal(ev[i].data_json, data);
        assert_string_equal(ev[i].type, "log");
        assert_int_equal(ev[i].job, i % 3 == 0 ? 0 : i % 3 == 1 ? a : b);
        assert_true(ev[i].at_ms > 0);
    }
    store_events_free(ev, n);
    /* after_id and limit. */
    OK(store_events_since(f->s, 0, ids[3], 4, &ev, &n, E));
    assert_int_equal(n, 4);
    assert_int_equal(ev[0].id, ids[4]);
    assert_int_equal(ev[3].id, ids[7]);
    store_events_free(ev, n);
    /* One job's only (no daemon-wide ones). */
    OK(store_events_since(f->s, a, 0, 100, &ev, &n, E));
    assert_int_equal(n, 3);
    for (int i = 0; i < n; i++) {
        assert_int_equal(ev[i].job, a);
        assert_int_equal(ev[i].id, ids[1 + 3 * i]);
    }
    store_events_free(ev, n);
    OK(store_events_since(f->s, b, ids[5], 100, &ev, &n, E));
    assert_int_equal(n, 1);
    assert_int_equal(ev[0].id, ids[8]);
    store_events_free(ev, n);
    OK(store_events_since(f->s, 0, ids[8], 10, &ev, &n, E));
    assert_int_equal(n, 0);
    assert_null(ev);
    /* NULL data is stored as {}; an unknown job is refused. */
    int64_t id;
    OK(store_event_append(f->s, a, "state", NULL, &id, E));
    int64_t newest = id;
    OK(store_events_since(f->s, a, ids[8], 10, &ev, &n, E));
    assert_int_equal(n, 1);
    assert_string_equal(ev[0].data_json, "{}");
    store_events_free(ev, n);
    store_err err;
    assert_int_equal(store_event_append(f->s, 555, "log", "{}", &id, &err), STORE_NOT_FOUND);
    assert_int_equal(store_event_append(f->s, a, "", "{}", &id, &err), -1);
    /* Pruning keeps the newest events: 10 exist (9 + the NULL-data one), keep 4. */
    int deleted = -1;
    OK(store_events_prune(f->s, 4, &deleted, E));
    assert_int_equal(deleted, 6);
    OK(store_events_since(f->s, 0, 0, 0, &ev, &n, E));
    assert_int_equal(n, 4);
    assert_int_equal(ev[0].id, ids[6]);
    assert_int_equal(ev[3].id, newest);
    store_events_free(ev, n);
}

/* ---- artifacts and checkpoints ---- */

static store_file file_of(const char *name, const char *path, const char *kind, int64_t step, int64_t size)
{
    store_file fl;
    memset(&fl, 0, sizeof fl);
    snprintf(fl.name, sizeof fl.name, "%s", name);
    snprintf(fl.path, sizeof fl.path, "%s", path);
    snprintf(fl.kind, sizeof fl.kind, "%s", kind);
    memset(fl.sha256, 'a', 64);
    fl.size = size;
    fl.step = step;
    fl.at_ms = 1700000000000 + step;
    return fl;
}

static void test_artifacts(void **state)
{
    fixture *f = *state;
    int64_t job = new_job(f->s, "fit", 0), other = new_job(f->s, "fit", 0);
    store_file s200 = file_of("sample_200.png", "/j/1/sample_200.png", "image", 200, 10),
               s1000 = file_of("sample_1000.png", "/j/1/sample_1000.png", "image", 1000, 11),
               cfg = file_of("params.json", "/j/1/params.json", "params", -1, 12);
    OK(store_artifact_put(f->s, job, &s1000, E));
    OK(store_artifact_put(f->s, job, &s200, E));
    OK(store_artifact_put(f->s, job, &cfg, E));
    OK(store_artifact_put(f->s, other, &cfg, E)); /* same name, other job: fine */
    store_file *list;
    int n;
    OK(store_artifact_list(f->s, job, &list, &n, E));
    assert_int_equal(n, 3);
    assert_string_equal(list[0].name, "params.json"); /* by step, -1 first */
    assert_string_equal(list[1].name, "sample_200.png");
    assert_string_equal(list[2].name, "sample_1000.png");
    assert_int_equal(list[2].size, 11);
    assert_int_equal(list[2].at_ms, 1700000000000 + 1000);
    assert_string_equal(list[2].kind, "image");
    assert_int_equal(strlen(list[2].sha256), 64);
    free(list);
    /* Replace by name. */
    store_file again = file_of("sample_200.png", "/j/1/sample_200_v2.png", "image", 200, 99);
    again.at_ms = 0; /* = now */
    OK(store_artifact_put(f->s, job, &again, E));
    store_file got;
    OK(store_artifact_get(f->s, job, "sample_200.png", &got, E));
    assert_string_equal(got.path, "/j/1/sample_200_v2.png");
    assert_int_equal(got.size, 99);
    assert_true(got.at_ms > 1700000000000 + 1000);
    OK(store_artifact_list(f->s, job, &list, &n, E));
    assert_int_equal(n, 3);
    free(list);
    store_err err;
    assert_int_equal(store_artifact_get(f->s, job, "nope.png", &got, &err), STORE_NOT_FOUND);
    assert_string_equal(err.msg, "job 1 has no artifact named \"nope.png\"");
    assert_int_equal(store_artifact_put(f->s, 4321, &cfg, &err), STORE_NOT_FOUND);
    store_file bad = cfg;
    memset(bad.name, 'x', sizeof bad.name); /* not NUL-terminated */
    assert_int_equal(store_artifact_put(f->s, job, &bad, &err), -1);
    OK(store_artifact_list(f->s, 4321, &list, &n, E));
    assert_int_equal(n, 0);
    assert_null(list);
}

static void test_checkpoints(void **state)
{
    fixture *f = *state;
    int64_t job = new_job(f->s, "fit", 0);
    store_file got;
    store_err err;
    assert_int_equal(store_checkpoint_latest(f->s, job, &got, &err), STORE_NOT_FOUND);
    assert_string_equal(err.msg, "job 1 has no checkpoint");
    for (int step = 100; step <= 400; step += 100) {
        char name[32], path[64];
        snprintf(name, sizeof name, "checkpoint-%d", step);
        snprintf(path, sizeof path, "/j/1/checkpoint-%d.safetensors", step);
        store_file fl = file_of(name, path, "checkpoint", step, step);
        OK(store_checkpoint_record(f->s, job, &fl, E));
    }
    store_job j;
    OK(store_job_get(f->s, job, &j, E));
    assert_int_equal(j.checkpoint_step, 400);
    store_job_free(&j);
    OK(store_checkpoint_latest(f->s, job, &got, E));
    assert_int_equal(got.step, 400);
    assert_string_equal(got.name, "checkpoint-400");
    assert_string_equal(got.path, "/j/1/checkpoint-400.safetensors");
    assert_string_equal(got.kind, "checkpoint");
    assert_int_equal(got.size, 400);
    /* Recording the same step again replaces it. */
    store_file redo = file_of("checkpoint-400", "/j/1/redo.safetensors", "checkpoint", 400, 1);
    OK(store_checkpoint_record(f->s, job, &redo, E));
    OK(store_checkpoint_latest(f->s, job, &got, E));
    assert_string_equal(got.path, "/j/1/redo.safetensors");

    store_file *dropped;
    int n;
    OK(store_checkpoint_prune(f->s, job, 2, &dropped, &n, E));
    assert_int_equal(n, 2);
    assert_int_equal(dropped[0].step, 200); /* newest first */
    assert_int_equal(dropped[1].step, 100);
    assert_string_equal(dropped[1].path, "/j/1/checkpoint-100.safetensors");
    free(dropped);
    OK(store_checkpoint_prune(f->s, job, 2, &dropped, &n, E));
    assert_int_equal(n, 0);
    assert_null(dropped);
    OK(store_checkpoint_latest(f->s, job, &got, E));
    assert_int_equal(got.step, 400);
    assert_int_equal(raw_int(f->path, "SELECT count(*) FROM checkpoints WHERE job = ?1", job), 2);
    /* keep 0: all go, and the job has nothing to resume from. */
    OK(store_checkpoint_prune(f->s, job, 0, &dropped, &n, E));
    assert_int_equal(n, 2);
    free(dropped);
    assert_int_equal(store_checkpoint_latest(f->s, job, &got, &err), STORE_NOT_FOUND);
    OK(store_job_get(f->s, job, &j, E));
    assert_int_equal(j.checkpoint_step, -1);
    store_job_free(&j);
    assert_int_equal(store_checkpoint_prune(f->s, job, -1, &dropped, &n, &err), -1);
    store_file nostep = file_of("c", "/j/c", "checkpoint", -1, 0);
    assert_int_equal(store_checkpoint_record(f->s, job, &nostep, &err), -1);
    store_file fl = file_of("c", "/j/c", "checkpoint", 5, 0);
    assert_int_equal(store_checkpoint_record(f->s, 777, &fl, &err), STORE_NOT_FOUND);
}

/* ---- tokens ---- */

static void test_tokens(void **state)
{
    fixture *f = *state;
    char ha[65], hb[65], hc[65];
    memset(ha, 'a', 64);
    memset(hb, 'b', 64);
    memset(hc, 'c', 64);
    ha[64] = hb[64] = hc[64] = 0;
    hb[0] = 'B'; /* stored lowercase, found in any case */
    int n;
    OK(store_token_count(f->s, &n, E));
    assert_int_equal(n, 0);
    OK(store_token_add(f->s, "alice", ROLE_ADMIN, ha, E));
    OK(store_token_add(f->s, "bob", ROLE_READ, hb, E));
    store_err err;
    assert_int_equal(store_token_add(f->s, "alice", ROLE_READ, hc, &err), STORE_CONFLICT);
    assert_non_null(strstr(err.msg, "\"alice\" already exists"));
    assert_int_equal(store_token_add(f->s, "carol", ROLE_READ, ha, &err), STORE_CONFLICT);
    assert_int_equal(store_token_add(f->s, "dave", ROLE_READ, "abc", &err), -1);
    assert_non_null(strstr(err.msg, "64 hex digits"));
    assert_int_equal(store_token_add(f->s, "", ROLE_READ, hc, &err), -1);
    assert_int_equal(store_token_add(f->s, "erin", (token_role)7, hc, &err), -1);

    store_token t;
    OK(store_token_lookup(f->s, ha, &t, E));
    assert_string_equal(t.name, "alice");
    assert_int_equal(t.role, ROLE_ADMIN);
    assert_int_equal(t.revoked, 0);
    assert_true(t.created_ms > 0);
    hb[0] = 'b';
    OK(store_token_lookup(f->s, hb, &t, E));
    assert_string_equal(t.name, "bob");
    assert_int_equal(t.role, ROLE_READ);
    assert_int_equal(store_token_lookup(f->s, hc, &t, &err), STORE_NOT_FOUND);
    assert_int_equal(store_token_lookup(f->s, "zz", &t, &err), STORE_NOT_FOUND);
    OK(store_token_count(f->s, &n, E));
    assert_int_equal(n, 2);

    OK(store_token_revoke(f->s, "bob", E));
    OK(store_token_revoke(f->s, "bob", E)); /* twice is fine */
    assert_int_equal(store_token_revoke(f->s, "nobody", &err), STORE_NOT_FOUND);
    assert_int_equal(store_token_lookup(f->s, hb, &t, &err), STORE_NOT_FOUND);
    OK(store_token_count(f->s, &n, E));
    assert_int_equal(n, 1);
    store_token *list;
    OK(store_token_list(f->s, &list, &n, E));
    assert_int_equal(n, 2);
    assert_string_equal(list[0].name, "alice");
    assert_int_equal(list[0].revoked, 0);
    assert_string_equal(list[1].name, "bob");
    assert_int_equal(list[1].revoked, 1);
    free(list);
    /* A revoked token's name stays taken. */
    assert_int_equal(store_token_add(f->s, "bob", ROLE_READ, hc, &err), STORE_CONFLICT);
    /* Only the hash is stored. */
    assert_int_equal(raw_int(f->path, "SELECT count(*) FROM tokens WHERE sha256 = lower(sha256)", 0), 2);
}

/* ---- concurrency ---- */

typedef struct claimer {
    pgnd_store *s;
    int64_t *ids;
    int n, failed;
    char msg[512];
} claimer;

static void *claim_loop(void *arg)
{
    claimer *c = arg;
    for (;;) {
        int64_t id;
        store_err err;
        if (store_job_claim(c->s, &id, &err)) {
            c->failed = 1;
            snprintf(c->msg, sizeof c->msg, "%s", err.msg);
            return NULL;
        }
        if (!id)
            return NULL;
        c->ids[c->n++] = id;
    }
}

/* `threads` claimers spread over `handles` connections to one database drain 200 jobs. */
static void claim_race(fixture *f, int threads, int handles)
{
    enum { JOBS = 200 };
    int64_t first = new_job(f->s, "fit", 0);
    for (int i = 1; i < JOBS; i++)
        new_job(f->s, "fit", i % 4); /* mixed priorities */
    pgnd_store *extra[4] = {NULL};
    for (int h = 1; h < handles; h++)
        OK(store_open(&extra[h], f->path, E));
    claimer c[8];
    pthread_t th[8];
    for (int t = 0; t < threads; t++) {
        memset(&c[t], 0, sizeof c[t]);
        c[t].s = t % handles ? extra[t % handles] : f->s;
        c[t].ids = calloc(JOBS, sizeof *c[t].ids);
        assert_non_null(c[t].ids);
        assert_int_equal(pthread_create(&th[t], NULL, claim_loop, &c[t]), 0);
    }
    /* Join every thread before any check can fail the test (and close the store under them). */
    for (int t = 0; t < threads; t++)
        pthread_join(th[t], NULL);
    for (int h = 1; h < handles; h++)
        store_close(extra[h]);
    int seen[JOBS] = {0}, total = 0;
    for (int t = 0; t < threads; t++) {
        if (c[t].failed)
            fail_msg("thread %d: %s", t, c[t].msg);
        for (int i = 0; i < c[t].n; i++) {
            int64_t k = c[t].ids[i] - first;
            assert_true(k >= 0 && k < JOBS);
            seen[k]++;
        }
        total += c[t].n;
        free(c[t].ids);
    }
    assert_int_equal(total, JOBS);
    for (int k = 0; k < JOBS; k++)
        if (seen[k] != 1)
            fail_msg("job %lld claimed %d times", (long long)(first + k), seen[k]);
    int q;
    OK(store_count_queued(f->s, &q, E));
    assert_int_equal(q, 0);
    assert_int_equal(raw_int(f->path, "SELECT count(*) FROM jobs WHERE state = 'running'", 0), JOBS);
}

static void test_concurrent_claim(void **state)
{
    claim_race(*state, 4, 1);
}

/* Two connections, as two pgnd processes would have: only SQLite's locking keeps them apart. */
static void test_concurrent_claim_two_connections(void **state)
{
    claim_race(*state, 4, 2);
}

typedef struct creator {
    pgnd_store *s;
    int64_t ids[25];
    int failed;
    char msg[512];
} creator;

static void *create_loop(void *arg)
{
    creator *c = arg;
    for (int i = 0; i < 25; i++) {
        store_err err;
        if (store_job_create(c->s, "fit", "thread", "{}", 0, 0, &c->ids[i], &err)) {
            c->failed = 1;
            snprintf(c->msg, sizeof c->msg, "%s", err.msg);
            return NULL;
        }
    }
    return NULL;
}

static int cmp_id(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static void test_concurrent_create(void **state)
{
    fixture *f = *state;
    creator c[8];
    pthread_t th[8];
    for (int t = 0; t < 8; t++) {
        memset(&c[t], 0, sizeof c[t]);
        c[t].s = f->s;
        assert_int_equal(pthread_create(&th[t], NULL, create_loop, &c[t]), 0);
    }
    for (int t = 0; t < 8; t++)
        pthread_join(th[t], NULL);
    int64_t all[200];
    for (int t = 0; t < 8; t++) {
        if (c[t].failed)
            fail_msg("thread %d: %s", t, c[t].msg);
        memcpy(&all[25 * t], c[t].ids, sizeof c[t].ids);
    }
    qsort(all, 200, sizeof *all, cmp_id);
    assert_true(all[0] > 0);
    for (int i = 1; i < 200; i++)
        assert_true(all[i] > all[i - 1]);
    int q;
    OK(store_count_queued(f->s, &q, E));
    assert_int_equal(q, 200);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names),
        T(test_migrations_applied),
        T(test_reopen_idempotent),
        T(test_newer_schema_refused),
        T(test_wal),
        T(test_open_errors),
        T(test_job_create_get),
        T(test_job_list),
        T(test_queue_limit),
        T(test_claim_priority),
        T(test_transitions),
        T(test_requests_and_progress),
        T(test_requeue_running),
        T(test_delete_cascades),
        T(test_metrics_append_truncate),
        T(test_metrics_downsample),
        T(test_metrics_nan),
        T(test_events),
        T(test_artifacts),
        T(test_checkpoints),
        T(test_tokens),
        T(test_concurrent_claim),
        T(test_concurrent_claim_two_connections),
        T(test_concurrent_create),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
