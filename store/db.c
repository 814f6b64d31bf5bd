/* The store's connection: open (pragmas, migrations), close, locking, transactions and the small
 * helpers the table files share. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "store/migrations_internal.h"
#include "store/store_internal.h"

/* ---- helpers ---- */

void sdb_lock(pgnd_store *s)
{
    pthread_mutex_lock(&s->mu);
}

void sdb_unlock(pgnd_store *s)
{
    pthread_mutex_unlock(&s->mu);
}

int sdb_fail(store_err *err, int rc, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return rc;
}

int sdb_dbfail(pgnd_store *s, store_err *err, const char *what)
{
    return sdb_fail(err, -1, "%s: %s", what, sqlite3_errmsg(s->db));
}

sqlite3_stmt *sdb_prepare(pgnd_store *s, const char *sql, store_err *err)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK) {
        sdb_fail(err, -1, "preparing \"%.120s\": %s", sql, sqlite3_errmsg(s->db));
        sqlite3_finalize(st);
        return NULL;
    }
    return st;
}

static int exec_simple(pgnd_store *s, const char *sql, store_err *err)
{
    char *msg = NULL;
    if (sqlite3_exec(s->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        sdb_fail(err, -1, "%s: %s", sql, msg ? msg : sqlite3_errmsg(s->db));
        sqlite3_free(msg);
        return -1;
    }
    return 0;
}

int sdb_begin(pgnd_store *s, store_err *err)
{
    return exec_simple(s, "BEGIN IMMEDIATE", err);
}

int sdb_begin_read(pgnd_store *s, store_err *err)
{
    return exec_simple(s, "BEGIN", err);
}

int sdb_end(pgnd_store *s, int rc, store_err *err)
{
    if (rc == 0) {
        if (exec_simple(s, "COMMIT", err) == 0)
            return 0;
        rc = -1;
    }
    /* A failed statement may already have rolled the transaction back (e.g. SQLITE_FULL). */
    if (!sqlite3_get_autocommit(s->db))
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

int sdb_job_exists(pgnd_store *s, int64_t id, store_err *err)
{
    sqlite3_stmt *st = sdb_prepare(s, "SELECT 1 FROM jobs WHERE id = ?1", err);
    if (!st)
        return -1;
    sqlite3_bind_int64(st, 1, id);
    int rc = sqlite3_step(st);
    int out = rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : sdb_dbfail(s, err, "looking up the job");
    sqlite3_finalize(st);
    if (out == 0)
        sdb_fail(err, 0, "job %lld not found", (long long)id);
    return out;
}

int sdb_check_text(const char *v, size_t cap, int allow_empty, const char *what, store_err *err)
{
    if (!v || (!*v && !allow_empty))
        return sdb_fail(err, -1, "%s is empty", what);
    size_t n = strlen(v);
    if (n >= cap)
        return sdb_fail(err, -1, "%s is %zu bytes long; at most %zu are stored", what, n, cap - 1);
    return 0;
}

int sdb_check_field(const char *field, size_t cap, int allow_empty, const char *what, store_err *err)
{
    if (!memchr(field, 0, cap))
        return sdb_fail(err, -1, "%s is not NUL-terminated within its %zu bytes", what, cap);
    return sdb_check_text(field, cap, allow_empty, what, err);
}

void sdb_col_copy(sqlite3_stmt *st, int col, char *dst, size_t cap)
{
    const char *v = (const char *)sqlite3_column_text(st, col);
    snprintf(dst, cap, "%s", v ? v : "");
}

int sdb_col_dup(sqlite3_stmt *st, int col, char **out)
{
    *out = NULL;
    const char *v = (const char *)sqlite3_column_text(st, col);
    if (!v)
        return 0;
    *out = strdup(v);
    return *out ? 0 : -1;
}

int64_t store_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- migrations ---- */

int store_schema_known(void)
{
    return store_migrations_count > 0 ? store_migrations[store_migrations_count - 1].version : 0;
}

/* The highest recorded migration, 0 for a fresh database. */
static int read_version(pgnd_store *s, int *version, store_err *err)
{
    sqlite3_stmt *st = sdb_prepare(s,
                                   "SELECT CASE WHEN EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                                   "name = 'schema_migrations') THEN 1 ELSE 0 END",
                                   err);
    if (!st)
        return -1;
    int rc = sqlite3_step(st);
    int exists = rc == SQLITE_ROW && sqlite3_column_int(st, 0);
    if (rc != SQLITE_ROW)
        sdb_dbfail(s, err, "reading the schema");
    sqlite3_finalize(st);
    if (rc != SQLITE_ROW)
        return -1;
    *version = 0;
    if (!exists)
        return 0;
    st = sdb_prepare(s, "SELECT coalesce(max(version), 0) FROM schema_migrations", err);
    if (!st)
        return -1;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        *version = sqlite3_column_int(st, 0);
    else
        sdb_dbfail(s, err, "reading schema_migrations");
    sqlite3_finalize(st);
    return rc == SQLITE_ROW ? 0 : -1;
}

static int refuse_newer(pgnd_store *s, int version, store_err *err)
{
    return sdb_fail(err, -1,
                    "database %s has schema version %d but this pgnd knows only up to %d; use a newer pgnd or "
                    "another state directory",
                    s->path, version, store_schema_known());
}

/* Applies one migration unless another process got there first. Called inside BEGIN IMMEDIATE,
 * so the version read here cannot change before the commit. */
static int apply_one(pgnd_store *s, const store_migration *m, store_err *err)
{
    int cur;
    if (read_version(s, &cur, err))
        return -1;
    if (cur > store_schema_known())
        return refuse_newer(s, cur, err);
    if (cur >= m->version)
        return 0;
    char *msg = NULL;
    if (sqlite3_exec(s->db, m->sql, NULL, NULL, &msg) != SQLITE_OK) {
        sdb_fail(err, -1, "database %s: migration %03d_%s: %s", s->path, m->version, m->name,
                 msg ? msg : sqlite3_errmsg(s->db));
        sqlite3_free(msg);
        return -1;
    }
    sqlite3_stmt *st =
        sdb_prepare(s, "INSERT INTO schema_migrations (version, name, applied_ms) VALUES (?1, ?2, ?3)", err);
    if (!st)
        return -1;
    sqlite3_bind_int(st, 1, m->version);
    sqlite3_bind_text(st, 2, m->name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, store_now_ms());
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : sdb_dbfail(s, err, "recording the migration");
    sqlite3_finalize(st);
    return rc;
}

static int migrate(pgnd_store *s, store_err *err)
{
    int cur;
    if (read_version(s, &cur, err))
        return -1;
    if (cur > store_schema_known())
        return refuse_newer(s, cur, err);
    for (int i = 0; i < store_migrations_count; i++) {
        const store_migration *m = &store_migrations[i];
        if (m->version <= cur)
            continue;
        if (sdb_begin(s, err))
            return -1;
        if (sdb_end(s, apply_one(s, m, err), err))
            return -1;
    }
    return read_version(s, &s->version, err);
}

/* ---- open / close ---- */

/* Runs a PRAGMA and checks the text of its first result column (want NULL: not checked). */
static int pragma(pgnd_store *s, const char *sql, const char *want, store_err *err)
{
    sqlite3_stmt *st = sdb_prepare(s, sql, err);
    if (!st)
        return -1;
    int rc = sqlite3_step(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        sdb_fail(err, -1, "database %s: %s: %s", s->path, sql, sqlite3_errmsg(s->db));
        sqlite3_finalize(st);
        return -1;
    }
    const char *got = rc == SQLITE_ROW ? (const char *)sqlite3_column_text(st, 0) : NULL;
    if (want && (!got || strcmp(got, want))) {
        sdb_fail(err, -1, "database %s: %s gave \"%s\", not \"%s\"", s->path, sql, got ? got : "(nothing)", want);
        sqlite3_finalize(st);
        return -1;
    }
    sqlite3_finalize(st);
    return 0;
}

int store_open(pgnd_store **out, const char *path, store_err *err)
{
    *out = NULL;
    if (!path || !*path)
        return sdb_fail(err, -1, "no database path given");
    if (!sqlite3_threadsafe())
        return sdb_fail(err, -1, "this SQLite library was built without thread support");
    pgnd_store *s = calloc(1, sizeof *s);
    if (!s || !(s->path = strdup(path))) {
        free(s);
        return sdb_fail(err, -1, "out of memory");
    }
    pthread_mutex_init(&s->mu, NULL);
    /* FULLMUTEX (serialized): SQLite locks too, so even a call that slipped past our mutex is safe. */
    if (sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, NULL) !=
        SQLITE_OK) {
        sdb_fail(err, -1, "cannot open database %s: %s", path, s->db ? sqlite3_errmsg(s->db) : "out of memory");
        store_close(s);
        return -1;
    }
    sqlite3_extended_result_codes(s->db, 1);
    /* Other connections (another pgnd, the sqlite3 shell) may hold the lock briefly. */
    sqlite3_busy_timeout(s->db, 5000);
    /* WAL: readers (the API) never block the writer (the workers) and vice versa. NORMAL is
     * durable across process crashes in WAL mode; only an OS crash can lose the last commits. */
    if (pragma(s, "PRAGMA journal_mode = WAL", "wal", err) || pragma(s, "PRAGMA synchronous = NORMAL", NULL, err) ||
        pragma(s, "PRAGMA foreign_keys = ON", NULL, err) || pragma(s, "PRAGMA foreign_keys", "1", err) ||
        migrate(s, err)) {
        /* Every open error names the database (several pgnds may run on one machine). */
        if (err && !strstr(err->msg, path)) {
            char msg[sizeof err->msg];
            snprintf(msg, sizeof msg, "%s", err->msg);
            sdb_fail(err, -1, "database %s: %s", path, msg);
        }
        store_close(s);
        return -1;
    }
    *out = s;
    return 0;
}

void store_close(pgnd_store *s)
{
    if (!s)
        return;
    if (s->db && sqlite3_close(s->db) != SQLITE_OK)
        sqlite3_close_v2(s->db); /* a statement left open is a bug; still release what we can */
    pthread_mutex_destroy(&s->mu);
    free(s->path);
    free(s);
}

int store_schema_version(pgnd_store *s)
{
    sdb_lock(s);
    int v = s->version;
    sdb_unlock(s);
    return v;
}
