/* Metrics: (job, step, key, value) points, truncation on resume, and downsampled series.
 *
 * Downsampling (store_metrics_query): when a key has n > max_points rows after since_step, the
 * first and the last row are returned exactly, and the n - 2 rows between them are split, in step
 * order, into max_points - 2 consecutive buckets whose sizes differ by at most one (row i, counted
 * from 0 among the inner rows, falls in bucket floor(i * buckets / inner)). Each bucket becomes one
 * point: the mean of its values at the mean of its steps (rounded to the nearest step), so the
 * point sits at the middle of the stretch it summarises rather than lagging behind at its end. A NaN
 * in a bucket makes that bucket's value NaN: a diverged stretch stays visible. max_points == 1
 * returns the last point alone, max_points == 2 the first and the last. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "store/store_internal.h"

void store_series_free(store_series *sr, int n)
{
    for (int i = 0; sr && i < n; i++) {
        free(sr[i].steps);
        free(sr[i].values);
    }
    free(sr);
}

static int metrics_append(pgnd_store *s, int64_t job, int64_t step, int n, const char *const *keys,
                          const double *values, store_err *err)
{
    int rc = sdb_job_exists(s, job, err);
    if (rc <= 0)
        return rc < 0 ? -1 : STORE_NOT_FOUND;
    rc = 0;
    sqlite3_stmt *st =
        sdb_prepare(s, "INSERT OR REPLACE INTO metrics (job, step, key, value) VALUES (?1, ?2, ?3, ?4)", err);
    if (!st)
        return -1;
    sqlite3_bind_int64(st, 1, job);
    sqlite3_bind_int64(st, 2, step);
    for (int i = 0; i < n && rc == 0; i++) {
        sqlite3_bind_text(st, 3, keys[i], -1, SQLITE_STATIC);
        if (isnan(values[i]))
            sqlite3_bind_null(st, 4);
        else
            sqlite3_bind_double(st, 4, values[i]);
        if (sqlite3_step(st) != SQLITE_DONE)
            rc = sdb_dbfail(s, err, "inserting a metric");
        sqlite3_reset(st);
    }
    sqlite3_finalize(st);
    return rc;
}

int store_metrics_append(pgnd_store *s, int64_t job, int64_t step, int n, const char *const *keys,
                         const double *values, store_err *err)
{
    if (n < 0 || (n > 0 && (!keys || !values)))
        return sdb_fail(err, -1, "job %lld: bad metrics (n = %d)", (long long)job, n);
    for (int i = 0; i < n; i++)
        if (sdb_check_text(keys[i], sizeof ((store_series *)0)->key, 0, "metric key", err))
            return -1;
    sdb_lock(s);
    /* All keys of one step in one transaction: one commit per step, not per value. */
    int rc = sdb_begin(s, err);
    if (rc == 0)
        rc = sdb_end(s, metrics_append(s, job, step, n, keys, values, err), err);
    sdb_unlock(s);
    return rc;
}

int store_metrics_truncate(pgnd_store *s, int64_t job, int64_t after_step, store_err *err)
{
    sdb_lock(s);
    int rc = sdb_begin(s, err);
    if (rc == 0) {
        sqlite3_stmt *st = sdb_prepare(s, "DELETE FROM metrics WHERE job = ?1 AND step > ?2", err);
        int r = -1;
        if (st) {
            sqlite3_bind_int64(st, 1, job);
            sqlite3_bind_int64(st, 2, after_step);
            r = sqlite3_step(st) == SQLITE_DONE ? 0 : sdb_dbfail(s, err, "truncating metrics");
            sqlite3_finalize(st);
        }
        rc = sdb_end(s, r, err);
    }
    sdb_unlock(s);
    return rc;
}

/* Bucket accumulator: steps as offsets from the bucket's first step, so the sum stays exact. */
typedef struct bucket {
    int64_t base, dsum, count;
    double vsum;
} bucket;

static void bucket_emit(const bucket *b, store_series *sr)
{
    if (b->count == 0)
        return;
    sr->steps[sr->n] = b->base + llround((double)b->dsum / (double)b->count);
    sr->values[sr->n] = b->vsum / (double)b->count;
    sr->n++;
}

static double column_value(sqlite3_stmt *st, int col)
{
    return sqlite3_column_type(st, col) == SQLITE_NULL ? NAN : sqlite3_column_double(st, col);
}

/* One key's series, read in step order along the (job, key, step) primary key and downsampled as
 * it streams by (see the top of the file). Called inside a read transaction. */
static int query_series(pgnd_store *s, int64_t job, int64_t since_step, int max_points, store_series *sr,
                        store_err *err)
{
    sqlite3_stmt *st = sdb_prepare(s, "SELECT count(*) FROM metrics WHERE job = ?1 AND key = ?2 AND step > ?3", err);
    if (!st)
        return -1;
    sqlite3_bind_int64(st, 1, job);
    sqlite3_bind_text(st, 2, sr->key, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, since_step);
    int rc = sqlite3_step(st) == SQLITE_ROW ? 0 : sdb_dbfail(s, err, "counting metrics");
    int64_t n = rc == 0 ? sqlite3_column_int64(st, 0) : 0;
    sqlite3_finalize(st);
    if (rc || n == 0)
        return rc;
    int64_t m = n < max_points ? n : max_points;
    sr->steps = malloc((size_t)m * sizeof *sr->steps);
    sr->values = malloc((size_t)m * sizeof *sr->values);
    if (!sr->steps || !sr->values)
        return sdb_fail(err, -1, "out of memory for %lld points of %s", (long long)m, sr->key);

    st = sdb_prepare(s, "SELECT step, value FROM metrics WHERE job = ?1 AND key = ?2 AND step > ?3 ORDER BY step",
                     err);
    if (!st)
        return -1;
    sqlite3_bind_int64(st, 1, job);
    sqlite3_bind_text(st, 2, sr->key, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, since_step);
    const int64_t inner = n - 2, buckets = max_points - 2; /* used only when n > max_points >= 2 */
    bucket b = {0, 0, 0, 0.0};
    int64_t cur = -1, i = 0;
    int r = SQLITE_DONE;
    /* The read transaction pins the snapshot, so the rows are exactly the n counted; i < n is a guard. */
    while (i < n && (r = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t step = sqlite3_column_int64(st, 0);
        double value = column_value(st, 1);
        if (n <= max_points || (i == n - 1 && max_points == 1)) {
            sr->steps[sr->n] = step;
            sr->values[sr->n++] = value;
        } else if (max_points >= 2 && (i == 0 || i == n - 1)) {
            bucket_emit(&b, sr); /* the last bucket, before the last row (no-op at i == 0) */
            b.count = 0;
            sr->steps[sr->n] = step;
            sr->values[sr->n++] = value;
        } else if (buckets > 0 && i > 0 && i < n - 1) {
            int64_t j = (i - 1) * buckets / inner;
            if (j != cur) {
                bucket_emit(&b, sr);
                b = (bucket){step, 0, 0, 0.0};
                cur = j;
            }
            b.dsum += step - b.base;
            b.vsum += value;
            b.count++;
        }
        i++;
    }
    if (i < n && r != SQLITE_DONE)
        rc = sdb_dbfail(s, err, "reading metrics");
    sqlite3_finalize(st);
    return rc;
}

/* The job's keys, sorted, into a new series array. */
static int job_keys(pgnd_store *s, int64_t job, store_series **out, int *count, store_err *err)
{
    sqlite3_stmt *st = sdb_prepare(s, "SELECT DISTINCT key FROM metrics WHERE job = ?1 ORDER BY key", err);
    if (!st)
        return -1;
    sqlite3_bind_int64(st, 1, job);
    store_series *sr = NULL;
    int n = 0, cap = 0, rc = 0, r;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap) {
            int ncap = cap ? cap * 2 : 8;
            store_series *grown = realloc(sr, (size_t)ncap * sizeof *sr);
            if (!grown) {
                rc = sdb_fail(err, -1, "out of memory");
                break;
            }
            sr = grown;
            cap = ncap;
        }
        memset(&sr[n], 0, sizeof sr[n]);
        sdb_col_copy(st, 0, sr[n].key, sizeof sr[n].key);
        n++;
    }
    if (rc == 0 && r != SQLITE_DONE)
        rc = sdb_dbfail(s, err, "listing metric keys");
    sqlite3_finalize(st);
    *out = sr;
    *count = n;
    return rc;
}

int store_metrics_query(pgnd_store *s, int64_t job, const char *const *keys, int n_keys, int64_t since_step,
                        int max_points, store_series **out, int *n_series, store_err *err)
{
    *out = NULL;
    *n_series = 0;
    if (max_points <= 0)
        return sdb_fail(err, -1, "job %lld: max_points must be positive, not %d", (long long)job, max_points);
    if (n_keys < 0 || (n_keys > 0 && !keys))
        return sdb_fail(err, -1, "job %lld: bad key list (n_keys = %d)", (long long)job, n_keys);
    for (int i = 0; i < n_keys; i++)
        if (sdb_check_text(keys[i], sizeof ((store_series *)0)->key, 0, "metric key", err))
            return -1;
    store_series *sr = NULL;
    int n = 0;
    sdb_lock(s);
    int rc = sdb_begin_read(s, err);
    if (rc) {
        sdb_unlock(s);
        return rc;
    }
    if (n_keys > 0) {
        /* The keys asked for, in that order, each present even when it has no points. */
        if (!(sr = calloc((size_t)n_keys, sizeof *sr)))
            rc = sdb_fail(err, -1, "out of memory");
        for (int i = 0; rc == 0 && i < n_keys; i++)
            strcpy(sr[n++].key, keys[i]);
    } else {
        rc = job_keys(s, job, &sr, &n, err);
    }
    for (int i = 0; rc == 0 && i < n; i++)
        rc = query_series(s, job, since_step, max_points, &sr[i], err);
    rc = sdb_end(s, rc, err); /* read only: COMMIT just ends the snapshot */
    sdb_unlock(s);
    if (rc) {
        store_series_free(sr, n);
        return rc;
    }
    *out = sr;
    *n_series = n;
    return 0;
}
