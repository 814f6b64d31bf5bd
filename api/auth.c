#include "api/auth.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "nn/sha256.h"

#define SESSIONS 256
#define SESSION_MS (12LL * 3600 * 1000)

/* Session tickets live in memory only: a restart signs everyone out, which is fine. */
static struct {
    char sha[65];
    api_identity id;
    int64_t expires_ms;
} sessions[SESSIONS];
static pthread_mutex_t sessions_lock = PTHREAD_MUTEX_INITIALIZER;

void auth_hash(const char *token, char sha_hex[65])
{
    nn_sha256 s;
    nn_sha256_init(&s);
    nn_sha256_update(&s, token, strlen(token));
    nn_sha256_final_hex(&s, sha_hex);
}

static int random_hex(char *out, int bytes)
{
    unsigned char buf[64];
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd < 0 || bytes > (int)sizeof buf || read(fd, buf, (size_t)bytes) != bytes) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    for (int i = 0; i < bytes; i++)
        snprintf(out + 2 * i, 3, "%02x", buf[i]);
    return 0;
}

int auth_new_token(char token[64], char sha_hex[65])
{
    char hex[41];
    if (random_hex(hex, 20))
        return -1;
    snprintf(token, 64, "pgnd_%s", hex);
    auth_hash(token, sha_hex);
    return 0;
}

int auth_session_cookie(const api_identity *id, char *buf, size_t len)
{
    char ticket[65], sha[65];
    if (random_hex(ticket, 32))
        return -1;
    auth_hash(ticket, sha);
    int64_t now = store_now_ms();
    pthread_mutex_lock(&sessions_lock);
    int slot = 0;
    for (int i = 0; i < SESSIONS; i++) /* a free or expired slot, else the one expiring first */
        if (sessions[i].expires_ms < sessions[slot].expires_ms || sessions[i].expires_ms < now) {
            slot = i;
            if (sessions[i].expires_ms < now)
                break;
        }
    memcpy(sessions[slot].sha, sha, sizeof sha);
    sessions[slot].id = *id;
    sessions[slot].expires_ms = now + SESSION_MS;
    pthread_mutex_unlock(&sessions_lock);
    snprintf(buf, len, "Set-Cookie: pgnd_session=%s; Path=/; HttpOnly; SameSite=Strict; Max-Age=%lld\r\n", ticket,
             SESSION_MS / 1000);
    return 0;
}

static int session_lookup(const char *cookie, api_identity *id)
{
    const char *p = cookie ? strstr(cookie, "pgnd_session=") : NULL;
    if (!p)
        return -1;
    p += strlen("pgnd_session=");
    char ticket[80];
    size_t n = strcspn(p, "; ");
    if (n == 0 || n >= sizeof ticket)
        return -1;
    memcpy(ticket, p, n);
    ticket[n] = 0;
    char sha[65];
    auth_hash(ticket, sha);
    int found = -1;
    int64_t now = store_now_ms();
    pthread_mutex_lock(&sessions_lock);
    for (int i = 0; i < SESSIONS && found < 0; i++)
        if (sessions[i].expires_ms > now && !strcmp(sessions[i].sha, sha)) {
            *id = sessions[i].id;
            found = 0;
        }
    pthread_mutex_unlock(&sessions_lock);
    return found;
}

int auth_check(pgnd_store *s, const http_request *r, token_role need, api_identity *id, http_response *res)
{
    memset(id, 0, sizeof *id);
    int count = 0;
    store_err err;
    if (store_token_count(s, &count, &err)) {
        http_problem(res, 500, err.msg, NULL);
        return -1;
    }
    if (count == 0) {
        snprintf(id->name, sizeof id->name, "local");
        id->role = ROLE_ADMIN;
        return 0;
    }
    const char *a = r->authorization;
    if (a && !strncmp(a, "Bearer ", 7)) {
        char sha[65];
        store_token t;
        auth_hash(a + 7, sha);
        if (store_token_lookup(s, sha, &t, &err) != 0) {
            http_problem(res, 401, "the bearer token is not valid (unknown or revoked)", NULL);
            snprintf(res->extra_headers, sizeof res->extra_headers, "WWW-Authenticate: Bearer realm=\"pgnd\"\r\n");
            return -1;
        }
        snprintf(id->name, sizeof id->name, "%s", t.name);
        id->role = t.role;
        id->authenticated = 1;
    } else if (session_lookup(r->cookie, id) == 0) {
        id->authenticated = 1;
    } else {
        http_problem(res, 401, "authentication required: send 'Authorization: Bearer <token>'", NULL);
        snprintf(res->extra_headers, sizeof res->extra_headers, "WWW-Authenticate: Bearer realm=\"pgnd\"\r\n");
        return -1;
    }
    if (id->role < need) {
        char msg[200];
        snprintf(msg, sizeof msg, "token '%s' has role %s; this needs %s", id->name, token_role_name(id->role),
                 token_role_name(need));
        http_problem(res, 403, msg, NULL);
        return -1;
    }
    return 0;
}
