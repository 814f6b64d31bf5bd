/* Who is calling: bearer tokens (stored hashed, roles read / submit / admin), or a short-lived
 * session cookie minted from a token (so the browser's event stream never carries the long-lived
 * token in a URL). With no token configured at all the daemon is open ("local", admin): it then
 * refuses to listen anywhere but loopback. */
#ifndef PGND_API_AUTH_H
#define PGND_API_AUTH_H

#include "api/http.h"
#include "store/store.h"

typedef struct api_identity {
    char name[64];
    token_role role;
    int authenticated; /* 0 when the daemon has no tokens (open, loopback only) */
} api_identity;

/* A new random token ("pgnd_" + 40 hex digits) and its SHA-256. */
int auth_new_token(char token[64], char sha_hex[65]);
void auth_hash(const char *token, char sha_hex[65]);
/* 0 with *id filled; -1 with res filled (401 / 403 problem) when the request is not allowed for
 * `need` (the role the operation requires). */
int auth_check(pgnd_store *s, const http_request *r, token_role need, api_identity *id, http_response *res);
/* Mints a session ticket for id (valid 12 h); writes the Set-Cookie header line into buf. */
int auth_session_cookie(const api_identity *id, char *buf, size_t len);

#endif
