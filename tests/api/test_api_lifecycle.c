/* pgnd across stops and crashes, and with authentication: a job interrupted by SIGTERM or by
 * kill -9 resumes from its last checkpoint after a restart and finishes with a curve that has
 * every logged step exactly once; tokens and roles are enforced; a non-loopback address without
 * tokens is refused at start. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "tests/api/client.h"

#define IMAGE "tests/fixtures/images/pattern_80x72.png"

static long long submit(int port, int steps, const char *auth)
{
    char body[512];
    snprintf(body, sizeof body,
             "{\"type\": \"train\", \"params\": {\"image\": \"" IMAGE "\", \"size\": 64, \"steps\": %d,"
             " \"arms\": [\"mse\"], \"log_every\": 1, \"image_every\": 1000, \"checkpoint_every\": 25}}",
             steps);
    http_reply r;
    assert_int_equal(http_do(port, "POST", "/api/v1/jobs", body, auth, &r), 0);
    if (r.status != 201) {
        print_error("submit: %d %s\n", r.status, r.body);
        fail();
    }
    json_t *j = http_reply_json(&r);
    long long id = json_integer_value(json_object_get(j, "id"));
    json_decref(j);
    http_reply_free(&r);
    return id;
}

/* Every logged step appears once, in order, from 1 to steps. */
static void curve_is_continuous(int port, long long id, int steps)
{
    char path[128];
    snprintf(path, sizeof path, "/api/v1/jobs/%lld/metrics?keys=mse.loss&max_points=100000", id);
    http_reply r;
    assert_int_equal(http_do(port, "GET", path, NULL, NULL, &r), 0);
    json_t *m = http_reply_json(&r);
    json_t *st = json_object_get(json_object_get(json_object_get(m, "series"), "mse.loss"), "steps");
    assert_int_equal(json_array_size(st), (size_t)steps);
    for (size_t i = 0; i < json_array_size(st); i++)
        assert_int_equal(json_integer_value(json_array_get(st, i)), (long long)i + 1);
    json_decref(m);
    http_reply_free(&r);
}

static void interrupted_job_resumes(int sig)
{
    pgnd_proc p;
    assert_int_equal(pgnd_start(&p, NULL, NULL), 0);
    const int steps = 150;
    long long id = submit(p.port, steps, NULL);
    json_t *j = wait_job_step(p.port, id, 60, 180000, NULL); /* generous: CI machines can be slow */
    assert_non_null(j);
    json_decref(j);
    int status = pgnd_stop(&p, sig, 30000);
    if (sig == SIGTERM)
        assert_int_equal(status, 0); /* clean exit after checkpointing */
    else
        assert_int_equal(status, 128 + SIGKILL);
    pgnd_proc q;
    assert_int_equal(pgnd_start(&q, p.state_dir, NULL), 0);
    j = wait_job_state(q.port, id, "succeeded|failed", 120000, NULL);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "state")), "succeeded");
    json_decref(j);
    curve_is_continuous(q.port, id, steps);
    assert_int_equal(pgnd_stop(&q, SIGTERM, 30000), 0);
}

static void sigterm_mid_job_then_restart_resumes(void **s) { interrupted_job_resumes(SIGTERM); }
static void kill9_mid_job_then_restart_resumes(void **s) { interrupted_job_resumes(SIGKILL); }

static void tokens_and_roles(void **s)
{
    char dir[] = "/tmp/pgnd-auth-XXXXXX", admin[320], reader[320], alice[320], bob[320], out[256];
    assert_non_null(mkdtemp(dir));
    const char *a1[] = {"token", "add", "root", "--role", "admin", NULL};
    const char *a2[] = {"token", "add", "viewer", "--role", "read", NULL};
    const char *a3[] = {"token", "add", "alice", "--role", "submit", NULL};
    const char *a4[] = {"token", "add", "bob", "--role", "submit", NULL};
    const char *const *adds[] = {a1, a2, a3, a4};
    char *hdrs[] = {admin, reader, alice, bob};
    for (int i = 0; i < 4; i++) {
        assert_int_equal(pgnd_cli(dir, out, sizeof out, adds[i]), 0);
        out[strcspn(out, "\n")] = 0;
        assert_true(!strncmp(out, "pgnd_", 5));
        snprintf(hdrs[i], 320, "Authorization: Bearer %s\r\n", out);
    }
    pgnd_proc p;
    assert_int_equal(pgnd_start(&p, dir, NULL), 0);
    assert_int_equal(http_status(p.port, "GET", "/api/v1/jobs", NULL, NULL), 401);
    assert_int_equal(http_status(p.port, "GET", "/api/v1/jobs", NULL, "Authorization: Bearer pgnd_wrong\r\n"), 401);
    assert_int_equal(http_status(p.port, "GET", "/api/v1/jobs", NULL, reader), 200);
    char body[512];
    snprintf(body, sizeof body,
             "{\"type\": \"train\", \"params\": {\"image\": \"" IMAGE "\", \"size\": 64, \"steps\": 100000,"
             " \"arms\": [\"mse\"]}}");
    assert_int_equal(http_status(p.port, "POST", "/api/v1/jobs", body, reader), 403);
    long long id = submit(p.port, 100000, alice);
    char path[128];
    snprintf(path, sizeof path, "/api/v1/jobs/%lld/cancel", id);
    assert_int_equal(http_status(p.port, "POST", path, "", bob), 403);    /* someone else's job */
    assert_int_equal(http_status(p.port, "POST", path, "", reader), 403); /* read-only */
    assert_int_equal(http_status(p.port, "POST", path, "", alice), 202);  /* her own */
    /* The event stream refuses an anonymous client and accepts a session cookie. */
    assert_int_equal(sse_read(p.port, "/api/v1/events", NULL, 1, 1500, NULL, NULL), 0);
    http_reply r;
    assert_int_equal(http_do(p.port, "POST", "/api/v1/session", "", reader, &r), 0);
    assert_int_equal(r.status, 200);
    const char *sc = http_reply_header(&r, "Set-Cookie");
    assert_non_null(sc);
    char cookie[256];
    snprintf(cookie, sizeof cookie, "Cookie: %.*s\r\n", (int)strcspn(sc, ";"), sc);
    http_reply_free(&r);
    assert_true(sse_read(p.port, "/api/v1/events", cookie, 1, 5000, NULL, NULL) >= 1);
    /* Revoked tokens stop working at once. */
    const char *rv[] = {"token", "revoke", "viewer", NULL};
    assert_int_equal(pgnd_cli(dir, out, sizeof out, rv), 0);
    assert_int_equal(http_status(p.port, "GET", "/api/v1/jobs", NULL, reader), 401);
    assert_int_equal(pgnd_stop(&p, SIGTERM, 30000), 0);
}

static void open_daemon_refuses_public_address(void **s)
{
    pgnd_proc p;
    const char *env[] = {"PGND_LISTEN=0.0.0.0:0", NULL};
    /* pgnd_start fails: the daemon exits before it listens. */
    assert_int_not_equal(pgnd_start(&p, NULL, env), 0);
    pgnd_stop(&p, SIGKILL, 5000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(sigterm_mid_job_then_restart_resumes),
        cmocka_unit_test(kill9_mid_job_then_restart_resumes),
        cmocka_unit_test(tokens_and_roles),
        cmocka_unit_test(open_daemon_refuses_public_address),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
