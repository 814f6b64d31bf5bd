/* Artifacts and checkpoints: rows describing files under a job's directory. The store never
 * touches the files; callers remove them (store_artifact_list, store_checkpoint_prune). */
#include <stdlib.h>
#include <string.h>

#include "store/store_internal.h"

/* The fields both kinds of row must have in a usable shape. */
static int check_file(const store_file *f, store_err *err)
{
    if (!f)
        return sdb_fail(err, -1, "no file given");
    return sdb_check_field(f->name, sizeof f->name, 0, "file name", err) ||
                   sdb_check_field(f->path, sizeof f->path, 0, "file path", err) ||
                   sdb_check_field(f->kind, sizeof f->kind, 1, "file kind", err) ||
                   sdb_check_field(f->sha256, sizeof f->sha256, 1, "file sha256", err)
               ? -1
               : 0;
}

/* Grows *arr (of store_file) to hold one more; -1 when out of memory. */
static int grow(store_file **arr, int count, int *cap)
{
    if (count < *cap)
        return 0;
    int ncap = *cap ? *cap * 2 : 8;
    store_file *grown = realloc(*arr, (size_t)ncap * sizeof **arr);
    if (!grown)
        return -1;
    *arr = grown;
    *cap = ncap;
    return 0;
}

/* ---- artifacts ---- */

#define ARTIFACT_COLS "name, path, kind, size, sha256, step, at_ms"

static void read_artifact(sqlite3_stmt *st, store_file *f)
{
    memset(f, 0, sizeof *f);
    sdb_col_copy(st, 0, f->name, sizeof f->name);
    sdb_col_copy(st, 1, f->path, sizeof f->path);
    sdb_col_copy(st, 2, f->kind, sizeof f->kind);
    f->size = sqlite3_column_int64(st, 3);
    sdb_col_copy(st, 4, f->sha256, sizeof f->sha256);
    f->step = sqlite3_column_int64(st, 5);
    f->at_ms = sqlite3_column_int64(st, 6);
}

static int artifact_put(pgnd_store *s, int64_t job, const store_file *f, store_err *err)
{
    int rc = sdb_job_exists(s, job, err);
    if (rc <= 0)
        return rc < 0 ? -1 : STORE_NOT_FOUND;
    /* Upsert rather than INSERT OR REPLACE: the row keeps its id, so list order stays stable. */
    sqlite3_stmt *st = sdb_prepare(s,
                                   "INSERT INTO artifacts (job, name, path, kind, size, sha256, step, at_ms) "
                                   "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (job, name) DO UPDATE SET "
                                   "path = excluded.path, kind = excluded.kind, size = excluded.size, "
                                   "sha256 = excluded.sha256, step = excluded.step, at_ms = excluded.at_ms",
                                   err);
    if (!st)
        return -1;
    sqlite3_bind_int64(st, 1, job);
    sqlite3_bind_text(st, 2, f->name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, f->path, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, f->kind, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, f->size);
    sqlite3_bind_text(st, 6, f->sha256, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 7, f->step);
    sqlite3_bind_int64(st, 8, f->at_ms > 0 ? f->at_ms : store_now_ms());
    rc = sqlite3_step(st) == SQLITE_DONE ? 0 : sdb_dbfail(s, err, "recording the artifact");
    sqlite3_finalize(st);
    return rc;
}

int store_artifact_put(pgnd_store *s, int64_t job, const store_file *f, store_err *err)
{
    if (check_file(f, err))
        return -1;
    sdb_lock(s);
    int rc = sdb_begin(s, err);
    if (rc == 0)
        rc = sdb_end(s, artifact_put(s, job, f, err), err);
    sdb_unlock(s);
    return rc;
}

int store_artifact_list(pgnd_store *s, int64_t job, store_file **out, int *n, store_err *err)
{
    *out = NULL;
    *n = 0;
    sdb_lock(s);
    /* By step (-1, i.e. not tied to a step, first), then name: samples come out in training order. */
    sqlite3_stmt *st =
        sdb_prepare(s, "SELECT " ARTIFACT_COLS " FROM artifacts WHERE job = ?1 ORDER BY step, name", err);
    if (!st) {
        sdb_unlock(s);
        return -1;
    }
    sqlite3_bind_int64(st, 1, job);
    store_file *files = NULL;
    int count = 0, cap = 0, rc = 0, r;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        if (grow(&files, count, &cap)) {
            rc = sdb_fail(err, -1, "out of memory");
            break;
        }
        read_artifact(st, &files[count++]);
    }
    if (rc == 0 && r != SQLITE_DONE)
        rc = sdb_dbfail(s, err, "listing artifacts");
    sqlite3_finalize(st);
    sdb_unlock(s);
    if (rc) {
        free(files);
        return rc;
    }
    *out = files;
    *n = count;
    return 0;
}

int store_artifact_get(pgnd_store *s, int64_t job, const char *name, store_file *out, store_err *err)
{
    memset(out, 0, sizeof *out);
    if (!name)
        return sdb_fail(err, -1, "job %lld: no artifact name given", (long long)job);
    sdb_lock(s);
    sqlite3_stmt *st = sdb_prepare(s, "SELECT " ARTIFACT_COLS " FROM artifacts WHERE job = ?1 AND name = ?2", err);
    int rc = -1;
    if (st) {
        sqlite3_bind_int64(st, 1, job);
        sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
        int r = sqlite3_step(st);
        if (r == SQLITE_ROW) {
            read_artifact(st, out);
            rc = 0;
        } else if (r == SQLITE_DONE) {
            rc = sdb_fail(err, STORE_NOT_FOUND, "job %lld has no artifact named \"%.200s\"", (long long)job, name);
        } else {
            rc = sdb_dbfail(s, err, "reading the artifact");
        }
        sqlite3_finalize(st);
    }
    sdb_unlock(s);
    return rc;
}

/* ---- checkpoints ---- */

#define CHECKPOINT_COLS "name, path, size, sha256, step, at_ms"

static void read_checkpoint(sqlite3_stmt *st, store_file *f)
{
    memset(f, 0, sizeof *f);
    sdb_col_copy(st, 0, f->name, sizeof f->name);
    sdb_col_copy(st, 1, f->path, sizeof f->path);
    strcpy(f->kind, "checkpoint");
    f->size = sqlite3_column_int64(st, 2);
    sdb_col_copy(st, 3, f->sha256, sizeof f->sha256);
    f->step = sqlite3_column_int64(st, 4);
    f->at_ms = sqlite3_column_int64(st, 5);
}

static int checkpoint_record(pgnd_store *s, int64_t job, const store_file *f, store_err *err)
{
    int rc = sdb_job_exists(s, job, err);
    if (rc <= 0)
        return rc < 0 ? -1 : STORE_NOT_FOUND;
    sqlite3_stmt *st = sdb_prepare(s,
                                   "INSERT OR REPLACE INTO checkpoints (job, step, name, path, size, sha256, at_ms) "
                                   "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                                   err);
    if (!st)
        return -1;
    sqlite3_bind_int64(st, 1, job);
    sqlite3_bind_int64(st, 2, f->step);
    sqlite3_bind_text(st, 3, f->name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, f->path, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, f->size);
    sqlite3_bind_text(st, 6, f->sha256, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 7, f->at_ms > 0 ? f->at_ms : store_now_ms());
    rc = sqlite3_step(st) == SQLITE_DONE ? 0 : sdb_dbfail(s, err, "recording the checkpoint");
    sqlite3_finalize(st);
    if (rc)
        return rc;
    /* Same transaction: the job never points at a checkpoint that has no row. */
    st = sdb_prepare(s, "UPDATE jobs SET checkpoint_step = ?2 WHERE id = ?1", err);
    if (!st)
        return -1;
    sqlite3_bind_int64(st, 1, job);
    sqlite3_bind_int64(st, 2, f->step);
    rc = sqlite3_step(st) == SQLITE_DONE ? 0 : sdb_dbfail(s, err, "setting the job's checkpoint step");
    sqlite3_finalize(st);
    return rc;
}

int store_checkpoint_record(pgnd_store *s, int64_t job, const store_file *f, store_err *err)
{
    if (check_file(f, err))
        return -1;
    if (f->step < 0)
        return sdb_fail(err, -1, "job %lld: checkpoint %s has no step", (long long)job, f->path);
    sdb_lock(s);
    int rc = sdb_begin(s, err);
    if (rc == 0)
        rc = sdb_end(s, checkpoint_record(s, job, f, err), err);
    sdb_unlock(s);
    return rc;
}

int store_checkpoint_latest(pgnd_store *s, int64_t job, store_file *out, store_err *err)
{
    memset(out, 0, sizeof *out);
    sdb_lock(s);
    sqlite3_stmt *st = sdb_prepare(
        s, "SELECT " CHECKPOINT_COLS " FROM checkpoints WHERE job = ?1 ORDER BY step DESC LIMIT 1", err);
    int rc = -1;
    if (st) {
        sqlite3_bind_int64(st, 1, job);
        int r = sqlite3_step(st);
        if (r == SQLITE_ROW) {
            read_checkpoint(st, out);
            rc = 0;
        } else if (r == SQLITE_DONE) {
            rc = sdb_fail(err, STORE_NOT_FOUND, "job %lld has no checkpoint", (long long)job);
        } else {
            rc = sdb_dbfail(s, err, "reading the latest checkpoint");
        }
        sqlite3_finalize(st);
    }
    sdb_unlock(s);
    return rc;
}

static int checkpoint_prune(pgnd_store *s, int64_t job, int keep, store_file **dropped, int *n, store_err *err)
{
    /* Everything past the newest `keep`, read first and deleted after: the select is finished
     * before the table changes under it. */
    sqlite3_stmt *st = sdb_prepare(s,
                                   "SELECT " CHECKPOINT_COLS " FROM checkpoints WHERE job = ?1 "
                                   "ORDER BY step DESC LIMIT -1 OFFSET ?2",
                                   err);
    if (!st)
        return -1;
    sqlite3_bind_int64(st, 1, job);
    sqlite3_bind_int(st, 2, keep);
    int count = 0, cap = 0, rc = 0, r;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        if (grow(dropped, count, &cap)) {
            rc = sdb_fail(err, -1, "out of memory");
            break;
        }
        read_checkpoint(st, &(*dropped)[count++]);
    }
    if (rc == 0 && r != SQLITE_DONE)
        rc = sdb_dbfail(s, err, "listing checkpoints");
    sqlite3_finalize(st);
    *n = count;
    if (rc || count == 0)
        return rc;
    /* (job, step) is unique, so the same select by step picks exactly the rows read above. */
    st = sdb_prepare(s,
                     "DELETE FROM checkpoints WHERE job = ?1 AND step IN (SELECT step FROM checkpoints "
                     "WHERE job = ?1 ORDER BY step DESC LIMIT -1 OFFSET ?2)",
                     err);
    if (!st)
        return -1;
    sqlite3_bind_int64(st, 1, job);
    sqlite3_bind_int(st, 2, keep);
    rc = sqlite3_step(st) == SQLITE_DONE ? 0 : sdb_dbfail(s, err, "deleting old checkpoints");
    sqlite3_finalize(st);
    if (rc || keep > 0)
        return rc;
    /* Nothing left: the job no longer has a checkpoint to resume from. */
    st = sdb_prepare(s, "UPDATE jobs SET checkpoint_step = -1 WHERE id = ?1", err);
    if (!st)
        return -1;
    sqlite3_bind_int64(st, 1, job);
    rc = sqlite3_step(st) == SQLITE_DONE ? 0 : sdb_dbfail(s, err, "clearing the job's checkpoint step");
    sqlite3_finalize(st);
    return rc;
}

int store_checkpoint_prune(pgnd_store *s, int64_t job, int keep, store_file **dropped, int *n, store_err *err)
{
    *dropped = NULL;
    *n = 0;
    if (keep < 0)
        return sdb_fail(err, -1, "job %lld: cannot keep %d checkpoints", (long long)job, keep);
    sdb_lock(s);
    int rc = sdb_begin(s, err);
    if (rc == 0)
        rc = sdb_end(s, checkpoint_prune(s, job, keep, dropped, n, err), err);
    sdb_unlock(s);
    if (rc) {
        free(*dropped);
        *dropped = NULL;
        *n = 0;
    }
    return rc;
}
