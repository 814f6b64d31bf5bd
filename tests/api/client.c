#include "tests/api/client.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

static int connect_local(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa)) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

static int send_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0)
            return -1;
        p += w, n -= (size_t)w;
    }
    return 0;
}

int http_do(int port, const char *method, const char *path, const char *body, const char *headers, http_reply *r)
{
    memset(r, 0, sizeof *r);
    int fd = connect_local(port);
    if (fd < 0)
        return -1;
    char head[4096];
    size_t blen = body ? strlen(body) : 0;
    int hn = snprintf(head, sizeof head,
                      "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s%s%sContent-Length: %zu\r\n\r\n",
                      method, path, body ? "Content-Type: application/json\r\n" : "", headers ? headers : "", "",
                      blen);
    /* A server may answer (e.g. 413) and close before the body is all sent: read the answer anyway. */
    if (send_all(fd, head, (size_t)hn) == 0 && blen)
        send_all(fd, body, blen);
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (len + 4096 > cap)
            buf = realloc(buf, cap *= 2);
        ssize_t got = recv(fd, buf + len, cap - len - 1, 0);
        if (got <= 0)
            break;
        len += (size_t)got;
    }
    close(fd);
    buf[len] = 0;
    char *sep = strstr(buf, "\r\n\r\n");
    if (!sep || sscanf(buf, "HTTP/1.%*d %d", &r->status) != 1) {
        free(buf);
        return -1;
    }
    size_t hl = (size_t)(sep - buf);
    memcpy(r->headers, buf, hl < sizeof r->headers - 1 ? hl : sizeof r->headers - 1);
    char *b = sep + 4;
    /* Chunked bodies (libmicrohttpd uses them for unknown sizes) are de-chunked here. */
    const char *te = http_reply_header(r, "Transfer-Encoding");
    if (te && strstr(te, "chunked")) {
        char *out = malloc(len + 1), *p = b;
        size_t o = 0;
        for (;;) {
            long n = strtol(p, &p, 16);
            p = strstr(p, "\r\n");
            if (!p || n <= 0)
                break;
            p += 2;
            memcpy(out + o, p, (size_t)n);
            o += (size_t)n;
            p += n + 2;
        }
        out[o] = 0;
        r->body = out;
        r->len = o;
        free(buf);
        return 0;
    }
    r->len = len - (size_t)(b - buf);
    r->body = malloc(r->len + 1);
    memcpy(r->body, b, r->len);
    r->body[r->len] = 0;
    free(buf);
    return 0;
}

int http_status(int port, const char *method, const char *path, const char *body, const char *headers)
{
    http_reply r;
    if (http_do(port, method, path, body, headers, &r))
        return -1;
    int st = r.status;
    http_reply_free(&r);
    return st;
}

void http_reply_free(http_reply *r)
{
    free(r->body);
    memset(r, 0, sizeof *r);
}

const char *http_reply_header(const http_reply *r, const char *name)
{
    static __thread char val[1024];
    size_t n = strlen(name);
    for (const char *p = r->headers; (p = strstr(p, "\r\n")); ) {
        p += 2;
        if (!strncasecmp(p, name, n) && p[n] == ':') {
            const char *v = p + n + 1;
            while (*v == ' ')
                v++;
            size_t l = strcspn(v, "\r\n");
            if (l >= sizeof val)
                l = sizeof val - 1;
            memcpy(val, v, l);
            val[l] = 0;
            return val;
        }
    }
    return NULL;
}

json_t *http_reply_json(const http_reply *r) { return r->body ? json_loads(r->body, 0, NULL) : NULL; }

int sse_read(int port, const char *path, const char *headers, int count, int timeout_ms, long long *ids,
             char (*types)[32])
{
    int fd = connect_local(port);
    if (fd < 0)
        return -1;
    char head[2048];
    /* HTTP/1.0: no chunked framing inside the event stream. */
    int hn = snprintf(head, sizeof head, "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n%s\r\n",
                      path, headers ? headers : "");
    if (send_all(fd, head, (size_t)hn)) {
        close(fd);
        return -1;
    }
    char buf[1 << 16];
    size_t len = 0;
    int got = 0;
    long long deadline = now_ms() + timeout_ms;
    while (got < count && now_ms() < deadline) {
        struct pollfd pf = {fd, POLLIN, 0};
        if (poll(&pf, 1, 100) <= 0)
            continue;
        ssize_t n = recv(fd, buf + len, sizeof buf - len - 1, 0);
        if (n <= 0)
            break;
        len += (size_t)n;
        buf[len] = 0;
        /* Count complete events: blocks ending in a blank line that have an "event:" field. */
        got = 0;
        char *body = strstr(buf, "\r\n\r\n");
        for (char *blk = body ? body + 4 : buf, *end; got < count && (end = strstr(blk, "\n\n")); blk = end + 2) {
            long long id = 0;
            char type[32] = "";
            for (char *line = blk; line < end; line = strchr(line, '\n') + 1) {
                if (!strncmp(line, "id: ", 4))
                    id = atoll(line + 4);
                else if (!strncmp(line, "event: ", 7))
                    sscanf(line + 7, "%31[^\n]", type);
                if (!strchr(line, '\n') || strchr(line, '\n') >= end)
                    break;
            }
            if (!type[0])
                continue; /* a comment (keepalive) or chunk framing */
            if (ids)
                ids[got] = id;
            if (types)
                memcpy(types[got], type, sizeof type);
            got++;
        }
    }
    close(fd);
    return got;
}

static int wait_port(int rfd, int timeout_ms)
{
    char buf[32];
    size_t len = 0;
    long long deadline = now_ms() + timeout_ms;
    while (now_ms() < deadline) {
        struct pollfd pf = {rfd, POLLIN, 0};
        if (poll(&pf, 1, 100) <= 0)
            continue;
        ssize_t n = read(rfd, buf + len, sizeof buf - 1 - len);
        if (n <= 0)
            return -1;
        len += (size_t)n;
        buf[len] = 0;
        if (strchr(buf, '\n'))
            return atoi(buf);
    }
    return -1;
}

int pgnd_start(pgnd_proc *p, const char *state_dir, const char *const *extra_env)
{
    if (state_dir)
        snprintf(p->state_dir, sizeof p->state_dir, "%s", state_dir);
    else {
        snprintf(p->state_dir, sizeof p->state_dir, "/tmp/pgnd-api-XXXXXX");
        if (!mkdtemp(p->state_dir))
            return -1;
    }
    int pipefd[2];
    if (pipe(pipefd))
        return -1;
    p->pid = fork();
    if (p->pid < 0)
        return -1;
    if (p->pid == 0) {
        /* a test that fails mid-way must not leave its pgnd running (it would hold the runner's
         * output pipe open): the daemon dies with the test process */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        close(pipefd[0]);
        char fdarg[16];
        snprintf(fdarg, sizeof fdarg, "%d", pipefd[1]);
        setenv("PGND_STATE_DIR", p->state_dir, 1);
        setenv("PGND_LISTEN", "127.0.0.1:0", 1);
        setenv("PGND_WEB_DIR", "web", 1);
        setenv("PGND_LOG_LEVEL", "warn", 1);
        for (int i = 0; extra_env && extra_env[i]; i++)
            putenv((char *)extra_env[i]);
        execl("build/pgnd", "pgnd", "serve", "--ready-fd", fdarg, (char *)NULL);
        _exit(127);
    }
    close(pipefd[1]);
    p->port = wait_port(pipefd[0], 20000);
    close(pipefd[0]);
    return p->port > 0 ? 0 : -1;
}

int pgnd_stop(pgnd_proc *p, int sig, int timeout_ms)
{
    kill(p->pid, sig);
    long long deadline = now_ms() + timeout_ms;
    int status;
    while (now_ms() < deadline) {
        pid_t r = waitpid(p->pid, &status, WNOHANG);
        if (r == p->pid)
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        usleep(20000);
    }
    kill(p->pid, SIGKILL);
    waitpid(p->pid, &status, 0);
    return -1;
}

int pgnd_cli(const char *state_dir, char *out, size_t outlen, const char *const *args)
{
    int pipefd[2];
    if (pipe(pipefd))
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(pipefd[1], 1);
        close(pipefd[0]);
        setenv("PGND_STATE_DIR", state_dir, 1);
        const char *argv[16] = {"pgnd"};
        int n = 1;
        for (int i = 0; args[i] && n < 15; i++)
            argv[n++] = args[i];
        argv[n] = NULL;
        execv("build/pgnd", (char *const *)argv);
        _exit(127);
    }
    close(pipefd[1]);
    size_t len = 0;
    ssize_t got;
    while (len + 1 < outlen && (got = read(pipefd[0], out + len, outlen - 1 - len)) > 0)
        len += (size_t)got;
    out[len] = 0;
    close(pipefd[0]);
    int status;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static json_t *poll_job(int port, long long id, const char *states, long long step, int timeout_ms, const char *auth)
{
    char path[64];
    snprintf(path, sizeof path, "/api/v1/jobs/%lld", id);
    long long deadline = now_ms() + timeout_ms;
    while (now_ms() < deadline) {
        http_reply r;
        if (http_do(port, "GET", path, NULL, auth, &r) == 0 && r.status == 200) {
            json_t *j = http_reply_json(&r);
            http_reply_free(&r);
            const char *st = json_string_value(json_object_get(j, "state"));
            if (states && st) {
                char pat[64];
                snprintf(pat, sizeof pat, "|%s|", st);
                char all[128];
                snprintf(all, sizeof all, "|%s|", states);
                if (strstr(all, pat))
                    return j;
            }
            if (!states && json_integer_value(json_object_get(j, "step")) >= step)
                return j;
            json_decref(j);
        } else
            http_reply_free(&r);
        usleep(50000);
    }
    return NULL;
}

json_t *wait_job_state(int port, long long id, const char *states, int timeout_ms, const char *auth)
{
    return poll_job(port, id, states, 0, timeout_ms, auth);
}

json_t *wait_job_step(int port, long long id, long long step, int timeout_ms, const char *auth)
{
    return poll_job(port, id, NULL, step, timeout_ms, auth);
}
