/* API tokens: only the SHA-256 of a token is stored, as 64 lowercase hex digits. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "store/store_internal.h"

static const char *const ROLE_NAMES[] = {"read", "submit", "admin"};
#define ROLE_COUNT ((int)(sizeof ROLE_NAMES / sizeof ROLE_NAMES[0]))

const char *token_role_name(token_role r)
{
    return (unsigned)r < (unsigned)ROLE_COUNT ? ROLE_NAMES[r] : "unknown";
}

int token_role_parse(const char *name, token_role *out)
{
    for (int i = 0; name && i < ROLE_COUNT; i++)
        if (!strcmp(name, ROLE_NAMES[i])) {
            *out = (token_role)i;
            return 0;
        }
    return -1;
}

/* 64 hex digits into lowercase `out` (65 bytes), so lookups match whatever case the caller used. */
static int normalize_hash(const char *hex, char out[65], store_err *err)
{
    size_t n = hex ? strlen(hex) : 0;
    if (n != 64)
        return sdb_fail(err, -1, "a token hash must be 64 hex digits, not %zu characters", n);
    for (size_t i = 0; i < 64; i++) {
        if (!isxdigit((unsigned char)hex[i]))
            return sdb_fail(err, -1, "a token hash must be 64 hex digits; character %zu is not one", i + 1);
        out[i] = (char)tolower((unsigned char)hex[i]);
    }
    out[64] = 0;
    return 0;
}

#define TOKEN_COLS "id, name, role, created_ms, revoked"

static void read_token(sqlite3_stmt *st, store_token *t)
{
    memset(t, 0, sizeof *t);
    t->id = sqlite3_column_int64(st, 0);
    sdb_col_copy(st, 1, t->name, sizeof t->name);
    token_role role = ROLE_READ; /* the CHECK constraint admits only known names; read is the safe fallback */
    token_role_parse((const char *)sqlite3_column_text(st, 2), &role);
    t->role = role;
    t->created_ms = sqlite3_column_int64(st, 3);
    t->revoked = sqlite3_column_int(st, 4);
}

static int token_add(pgnd_store *s, const char *name, token_role role, const char *hash, store_err *err)
{
    /* Say which of the two unique columns clashed; the constraint error alone would not. */
    sqlite3_stmt *st = sdb_prepare(s, "SELECT name = ?1 FROM tokens WHERE name = ?1 OR sha256 = ?2 LIMIT 1", err);
    if (!st)
        return -1;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, hash, -1, SQLITE_STATIC);
    int r = sqlite3_step(st), rc = 0;
    if (r == SQLITE_ROW)
        rc = sqlite3_column_int(st, 0)
                 ? sdb_fail(err, STORE_CONFLICT, "a token named \"%s\" already exists (revoked ones keep their name)",
                            name)
                 : sdb_fail(err, STORE_CONFLICT, "this token is already registered (under another name)");
    else if (r != SQLITE_DONE)
        rc = sdb_dbfail(s, err, "looking up tokens");
    sqlite3_finalize(st);
    if (rc)
        return rc;
    st = sdb_prepare(s, "INSERT INTO tokens (name, role, sha256, created_ms) VALUES (?1, ?2, ?3, ?4)", err);
    if (!st)
        return -1;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, token_role_name(role), -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, hash, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, store_now_ms());
    rc = sqlite3_step(st) == SQLITE_DONE ? 0 : sdb_dbfail(s, err, "inserting the token");
    sqlite3_finalize(st);
    return rc;
}

int store_token_add(pgnd_store *s, const char *name, token_role role, const char *sha256_hex, store_err *err)
{
    char hash[65];
    if (sdb_check_text(name, sizeof ((store_token *)0)->name, 0, "token name", err) ||
        normalize_hash(sha256_hex, hash, err))
        return -1;
    if ((unsigned)role >= (unsigned)ROLE_COUNT)
        return sdb_fail(err, -1, "token \"%s\": %d is not a role", name, (int)role);
    sdb_lock(s);
    int rc = sdb_begin(s, err);
    if (rc == 0)
        rc = sdb_end(s, token_add(s, name, role, hash, err), err);
    sdb_unlock(s);
    return rc;
}

int store_token_lookup(pgnd_store *s, const char *sha256_hex, store_token *out, store_err *err)
{
    memset(out, 0, sizeof *out);
    char hash[65];
    /* A malformed hash cannot match any token: not found, like any other wrong token. */
    if (normalize_hash(sha256_hex, hash, err))
        return STORE_NOT_FOUND;
    sdb_lock(s);
    sqlite3_stmt *st = sdb_prepare(s, "SELECT " TOKEN_COLS " FROM tokens WHERE sha256 = ?1 AND revoked = 0", err);
    int rc = -1;
    if (st) {
        sqlite3_bind_text(st, 1, hash, -1, SQLITE_STATIC);
        int r = sqlite3_step(st);
        if (r == SQLITE_ROW) {
            read_token(st, out);
            rc = 0;
        } else if (r == SQLITE_DONE) {
            rc = sdb_fail(err, STORE_NOT_FOUND, "unknown or revoked token");
        } else {
            rc = sdb_dbfail(s, err, "looking up the token");
        }
        sqlite3_finalize(st);
    }
    sdb_unlock(s);
    return rc;
}

int store_token_list(pgnd_store *s, store_token **out, int *n, store_err *err)
{
    *out = NULL;
    *n = 0;
    sdb_lock(s);
    sqlite3_stmt *st = sdb_prepare(s, "SELECT " TOKEN_COLS " FROM tokens ORDER BY id", err);
    if (!st) {
        sdb_unlock(s);
        return -1;
    }
    store_token *tokens = NULL;
    int count = 0, cap = 0, rc = 0, r;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        if (count == cap) {
            int ncap = cap ? cap * 2 : 8;
            store_token *grown = realloc(tokens, (size_t)ncap * sizeof *tokens);
            if (!grown) {
                rc = sdb_fail(err, -1, "out of memory");
                break;
            }
            tokens = grown;
            cap = ncap;
        }
        read_token(st, &tokens[count++]);
    }
    if (rc == 0 && r != SQLITE_DONE)
        rc = sdb_dbfail(s, err, "listing tokens");
    sqlite3_finalize(st);
    sdb_unlock(s);
    if (rc) {
        free(tokens);
        return rc;
    }
    *out = tokens;
    *n = count;
    return 0;
}

int store_token_revoke(pgnd_store *s, const char *name, store_err *err)
{
    if (!name)
        return sdb_fail(err, -1, "no token name given");
    sdb_lock(s);
    int rc = sdb_begin(s, err);
    if (rc == 0) {
        /* Revoking twice is fine; only an unknown name is an error. */
        sqlite3_stmt *st = sdb_prepare(s, "UPDATE tokens SET revoked = 1 WHERE name = ?1", err);
        int r = -1;
        if (st) {
            sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
            if (sqlite3_step(st) != SQLITE_DONE)
                r = sdb_dbfail(s, err, "revoking the token");
            else if (sqlite3_changes(s->db) == 0)
                r = sdb_fail(err, STORE_NOT_FOUND, "no token named \"%.100s\"", name);
            else
                r = 0;
            sqlite3_finalize(st);
        }
        rc = sdb_end(s, r, err);
    }
    sdb_unlock(s);
    return rc;
}

int store_token_count(pgnd_store *s, int *n, store_err *err)
{
    *n = 0;
    sdb_lock(s);
    sqlite3_stmt *st = sdb_prepare(s, "SELECT count(*) FROM tokens WHERE revoked = 0", err);
    int rc = -1;
    if (st) {
        rc = sqlite3_step(st) == SQLITE_ROW ? 0 : sdb_dbfail(s, err, "counting tokens");
        if (rc == 0)
            *n = sqlite3_column_int(st, 0);
        sqlite3_finalize(st);
    }
    sdb_unlock(s);
    return rc;
}
