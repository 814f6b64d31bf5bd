/* Internals shared by the files under store/; not part of the API. */
#ifndef PGND_STORE_INTERNAL_H
#define PGND_STORE_INTERNAL_H

#include <pthread.h>
#include <sqlite3.h>

#include "store/store.h"

struct pgnd_store {
    sqlite3 *db;
    pthread_mutex_t mu; /* one call at a time: statements and transactions never interleave */
    char *path;
    int version;        /* applied schema version, read at open */
};

void sdb_lock(pgnd_store *s);
void sdb_unlock(pgnd_store *s);

/* Fills err (may be NULL) and returns rc. */
int sdb_fail(store_err *err, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* "<what>: <sqlite3_errmsg>"; returns -1. Call before anything else touches the connection. */
int sdb_dbfail(pgnd_store *s, store_err *err, const char *what);

/* NULL (err filled) on failure. */
sqlite3_stmt *sdb_prepare(pgnd_store *s, const char *sql, store_err *err);
/* BEGIN IMMEDIATE: writers queue on the database lock up front, so a read-then-write never has to
 * be retried half way (and two claimers cannot both see the same queued job). */
int sdb_begin(pgnd_store *s, store_err *err);
/* BEGIN DEFERRED: one snapshot for reads made of several statements. */
int sdb_begin_read(pgnd_store *s, store_err *err);
/* COMMIT when rc == 0, ROLLBACK otherwise. Returns rc, or -1 if the commit fails. */
int sdb_end(pgnd_store *s, int rc, store_err *err);

/* 1 if job `id` exists, 0 if not (err says so), -1 on error. */
int sdb_job_exists(pgnd_store *s, int64_t id, store_err *err);

/* Inputs headed for fixed-size fields: NULL/empty (unless allow_empty) or too long is an error. */
int sdb_check_text(const char *v, size_t cap, int allow_empty, const char *what, store_err *err);
/* Same for a char array inside a caller's struct, which need not be NUL-terminated. */
int sdb_check_field(const char *field, size_t cap, int allow_empty, const char *what, store_err *err);
/* Copies a text column into a fixed buffer (truncating; "" for NULL). */
void sdb_col_copy(sqlite3_stmt *st, int col, char *dst, size_t cap);
/* malloc'ed copy of a text column into *out (NULL for NULL); -1 when out of memory. */
int sdb_col_dup(sqlite3_stmt *st, int col, char **out);

#endif
