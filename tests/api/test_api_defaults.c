/* The embedded defaults (issue 7) through a real pgnd: with teacher_weights naming the inception3
 * tfjs model folder and `images` naming a photo folder, /api/v1/info reports the inception3 teacher,
 * a fit job submitted with no data and no teacher gets both written into its params (so a restart
 * with other defaults does not change a queued job), and it runs to the end on them; a crop too
 * small for inception3 and a non-model folder as teacher weights are refused at submission.
 * Needs var/teachers/inception3-nsfwjs-4.4.0 (`make test` fetches it). */
#include <limits.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>

#include "tests/api/client.h"

static void fit_job_takes_the_daemons_teacher_and_images(void **s)
{
    char teacher[PATH_MAX], images[PATH_MAX];
    if (!realpath("var/teachers/inception3-nsfwjs-4.4.0", teacher))
        fail_msg("var/teachers/inception3-nsfwjs-4.4.0 is missing: run `make test` (make teacher fetches it)");
    assert_non_null(realpath("tests/fixtures/images", images));
    char env_t[PATH_MAX + 32], env_i[PATH_MAX + 32];
    snprintf(env_t, sizeof env_t, "PGND_TEACHER_WEIGHTS=%s", teacher);
    snprintf(env_i, sizeof env_i, "PGND_IMAGES=%s", images);
    const char *env[] = {env_t, env_i, "PGND_WORKERS=1", NULL};
    pgnd_proc srv;
    assert_int_equal(pgnd_start(&srv, NULL, env), 0);

    http_reply r;
    assert_int_equal(http_do(srv.port, "GET", "/api/v1/info", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "inception3, weights"));
    http_reply_free(&r);

    assert_int_equal(http_do(srv.port, "POST", "/api/v1/jobs",
                             "{\"type\": \"fit\", \"params\": {\"steps\": 2, \"val_every\": 0, \"image_every\": 0, "
                             "\"val_fraction\": 0, \"log_every\": 1}}",
                             NULL, &r),
                     0);
    if (r.status != 201)
        fail_msg("POST fit -> %d %s", r.status, r.body);
    json_t *j = http_reply_json(&r);
    json_t *p = json_object_get(j, "params");
    assert_string_equal(json_string_value(json_object_get(p, "teacher_weights")), teacher);
    assert_string_equal(json_string_value(json_object_get(p, "data")), images);
    long long id = json_integer_value(json_object_get(j, "id"));
    json_decref(j);
    http_reply_free(&r);

    /* refused at submission, not when the job starts: a crop inception3 cannot take, and a folder
     * that is not a tfjs model as teacher weights */
    assert_int_equal(http_do(srv.port, "POST", "/api/v1/jobs", "{\"type\": \"collect\", \"params\": {\"size\": 16}}",
                             NULL, &r),
                     0);
    assert_int_equal(r.status, 422);
    assert_non_null(strstr(r.body, "with the inception3 teacher"));
    http_reply_free(&r);
    char body[PATH_MAX + 128];
    snprintf(body, sizeof body, "{\"type\": \"fit\", \"params\": {\"teacher_weights\": \"%s\"}}", images);
    assert_int_equal(http_do(srv.port, "POST", "/api/v1/jobs", body, NULL, &r), 0);
    assert_int_equal(r.status, 422);
    assert_non_null(strstr(r.body, "is a folder but not a tfjs layers model"));
    http_reply_free(&r);

    json_t *done = wait_job_state(srv.port, id, "succeeded|failed", 180000, NULL);
    assert_non_null(done);
    const char *state = json_string_value(json_object_get(done, "state"));
    if (strcmp(state, "succeeded"))
        fail_msg("the fit ended %s: %s", state, json_string_value(json_object_get(done, "error")));
    json_decref(done);
    pgnd_stop(&srv, SIGTERM, 20000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(fit_job_takes_the_daemons_teacher_and_images),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
