/* Events: an append-only log that Server-Sent Events replay from a client's last id. */
#include <stdlib.h>
#include <string.h>

#include "store/store_internal.h"

void store_events_free(store_event *ev, int n)
{
    for (int i = 0; ev && i < n; i++)
        free(ev[i].data_json);
    free(ev);
}

static int event_append(pgnd_store *s, int64_t job, const char *type, const char *data_json, int64_t *id,
                        store_err *err)
{
    if (job > 0) {
        int rc = sdb_job_exists(s, job, err);
        if (rc <= 0)
            return rc < 0 ? -1 : STORE_NOT_FOUND;
    }
    sqlite3_stmt *st = sdb_prepare(s, "INSERT INTO events (job, type, data, at_ms) VALUES (?1, ?2, ?3, ?4)", err);
    if (!st)
        return -1;
    /* Daemon-wide events (job 0) are stored with a NULL job: there is no job 0 to reference. */
    if (job > 0)
        sqlite3_bind_int64(st, 1, job);
    else
        sqlite3_bind_null(st, 1);
    sqlite3_bind_text(st, 2, type, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, data_json ? data_json : "{}", -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, store_now_ms());
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : sdb_dbfail(s, err, "inserting the event");
    if (rc == 0)
        *id = sqlite3_last_insert_rowid(s->db);
    sqlite3_finalize(st);
    return rc;
}

int store_event_append(pgnd_store *s, int64_t job, const char *type, const char *data_json, int64_t *id,
                       store_err *err)
{
    int64_t ignored;
    if (!id)
        id = &ignored;
    *id = 0;
    if (sdb_check_text(type, sizeof ((store_event *)0)->type, 0, "event type", err))
        return -1;
    sdb_lock(s);
    int rc = sdb_begin(s, err);
    if (rc == 0)
        rc = sdb_end(s, event_append(s, job, type, data_json, id, err), err);
    if (rc)
        *id = 0;
    sdb_unlock(s);
    return rc;
}

int store_events_since(pgnd_store *s, int64_t job, int64_t after_id, int limit, store_event **out, int *n,
                       store_err *err)
{
    *out = NULL;
    *n = 0;
    sdb_lock(s);
    /* job > 0 walks events_job_id; otherwise the rowid, i.e. id order. */
    sqlite3_stmt *st = sdb_prepare(s,
                                   job > 0 ? "SELECT id, job, type, data, at_ms FROM events WHERE job = ?1 AND id > ?2 "
                                             "ORDER BY id LIMIT ?3"
                                           : "SELECT id, job, type, data, at_ms FROM events WHERE id > ?2 "
                                             "ORDER BY id LIMIT ?3",
                                   err);
    if (!st) {
        sdb_unlock(s);
        return -1;
    }
    sqlite3_bind_int64(st, 1, job);
    sqlite3_bind_int64(st, 2, after_id);
    sqlite3_bind_int(st, 3, limit > 0 ? limit : -1); /* LIMIT -1: no limit */
    store_event *ev = NULL;
    int count = 0, cap = 0, rc = 0, r;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        if (count == cap) {
            int ncap = cap ? cap * 2 : 16;
            store_event *grown = realloc(ev, (size_t)ncap * sizeof *ev);
            if (!grown) {
                rc = sdb_fail(err, -1, "out of memory");
                break;
            }
            ev = grown;
            cap = ncap;
        }
        store_event *e = &ev[count];
        memset(e, 0, sizeof *e);
        e->id = sqlite3_column_int64(st, 0);
        e->job = sqlite3_column_int64(st, 1); /* NULL reads as 0 */
        sdb_col_copy(st, 2, e->type, sizeof e->type);
        e->at_ms = sqlite3_column_int64(st, 4);
        if (sdb_col_dup(st, 3, &e->data_json)) {
            rc = sdb_fail(err, -1, "out of memory");
            break;
        }
        count++;
    }
    if (rc == 0 && r != SQLITE_DONE)
        rc = sdb_dbfail(s, err, "reading events");
    sqlite3_finalize(st);
    sdb_unlock(s);
    if (rc) {
        store_events_free(ev, count);
        return rc;
    }
    *out = ev;
    *n = count;
    return 0;
}

int store_events_prune(pgnd_store *s, int64_t keep, int *deleted, store_err *err)
{
    if (deleted)
        *deleted = 0;
    sdb_lock(s);
    int rc = sdb_begin(s, err);
    if (rc == 0) {
        /* Ids only grow, so the newest `keep` events are those above max(id) - keep. */
        sqlite3_stmt *st = sdb_prepare(s, "DELETE FROM events WHERE id <= (SELECT MAX(id) FROM events) - ?1", err);
        if (!st)
            rc = -1;
        else {
            sqlite3_bind_int64(st, 1, keep);
            rc = sqlite3_step(st) == SQLITE_DONE ? 0 : sdb_dbfail(s, err, "pruning events");
            if (rc == 0 && deleted)
                *deleted = sqlite3_changes(s->db);
            sqlite3_finalize(st);
        }
        rc = sdb_end(s, rc, err);
    }
    sdb_unlock(s);
    return rc;
}
