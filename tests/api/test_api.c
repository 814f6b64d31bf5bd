/* A real pgnd on a free loopback port with a temporary state directory, driven over HTTP:
 * submit / run / metrics / artifacts; cancel, pause, resume; every kind of bad input; auth;
 * SSE replay; SIGTERM and kill -9 mid-job with resume and a continuous curve; concurrent
 * submitters. */
#include <pthread.h>
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

static pgnd_proc srv;

static int start(void **s)
{
    const char *env[] = {"PGND_QUEUE_LIMIT=1000", "PGND_WORKERS=1", NULL};
    if (pgnd_start(&srv, NULL, env)) {
        print_error("pgnd did not start\n");
        return -1;
    }
    return 0;
}

static int stop(void **s)
{
    pgnd_stop(&srv, SIGTERM, 20000);
    return 0;
}

static long long submit(int port, const char *body, const char *auth, int expect)
{
    http_reply r;
    assert_int_equal(http_do(port, "POST", "/api/v1/jobs", body, auth, &r), 0);
    if (r.status != expect) {
        print_error("POST %s -> %d %s\n", body, r.status, r.body);
        fail();
    }
    long long id = 0;
    if (expect == 201) {
        json_t *j = http_reply_json(&r);
        id = json_integer_value(json_object_get(j, "id"));
        char loc[64];
        snprintf(loc, sizeof loc, "/api/v1/jobs/%lld", id);
        assert_string_equal(http_reply_header(&r, "Location"), loc);
        json_decref(j);
    }
    http_reply_free(&r);
    return id;
}

static char *train_job(char *buf, size_t len, int steps, const char *arms)
{
    snprintf(buf, len,
             "{\"type\": \"train\", \"params\": {\"image\": \"" IMAGE "\", \"size\": 64, \"steps\": %d, \"arms\": [%s],"
             " \"log_every\": 5, \"image_every\": 20, \"checkpoint_every\": 10}}",
             steps, arms);
    return buf;
}

static void health_info_and_types(void **s)
{
    http_reply r;
    assert_int_equal(http_do(srv.port, "GET", "/healthz", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    http_reply_free(&r);
    assert_int_equal(http_do(srv.port, "GET", "/api/v1/info", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "random teacher: not a perceptual loss"));
    http_reply_free(&r);
    assert_int_equal(http_do(srv.port, "GET", "/api/v1/job-types", NULL, NULL, &r), 0);
    json_t *j = http_reply_json(&r);
    json_t *types = json_object_get(j, "types"), *t;
    size_t i;
    int seen = 0;
    json_array_foreach(types, i, t) {
        const char *name = json_string_value(json_object_get(t, "name"));
        seen |= !strcmp(name, "train") ? 1 : !strcmp(name, "fit") ? 2 : 0;
        assert_true(json_array_size(json_object_get(t, "params")) >= 5);
    }
    assert_int_equal(seen, 3);
    json_decref(j);
    http_reply_free(&r);
    assert_int_equal(http_do(srv.port, "GET", "/metrics", NULL, NULL, &r), 0);
    assert_non_null(strstr(r.body, "pgnd_jobs{state=\"queued\"}"));
    http_reply_free(&r);
}

static void a_job_runs_to_the_end(void **s)
{
    char body[512];
    long long id = submit(srv.port, train_job(body, sizeof body, 30, "\"mse\", \"vgg\""), NULL, 201);
    json_t *j = wait_job_state(srv.port, id, "succeeded|failed", 120000, NULL);
    assert_non_null(j);
    if (strcmp(json_string_value(json_object_get(j, "state")), "succeeded")) {
        print_error("job failed: %s\n", json_string_value(json_object_get(j, "error")));
        fail();
    }
    assert_int_equal(json_integer_value(json_object_get(j, "step")), 30);
    json_decref(j);
    char path[128];
    http_reply r;
    snprintf(path, sizeof path, "/api/v1/jobs/%lld/metrics?max_points=1000", id);
    assert_int_equal(http_do(srv.port, "GET", path, NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    json_t *m = http_reply_json(&r);
    json_t *series = json_object_get(m, "series");
    json_t *psnr = json_object_get(series, "mse.psnr");
    assert_non_null(psnr);
    assert_true(json_array_size(json_object_get(psnr, "steps")) >= 6);
    assert_non_null(json_object_get(series, "vgg.perceptual"));
    json_decref(m);
    http_reply_free(&r);
    snprintf(path, sizeof path, "/api/v1/jobs/%lld/artifacts", id);
    assert_int_equal(http_do(srv.port, "GET", path, NULL, NULL, &r), 0);
    assert_non_null(strstr(r.body, ".png"));
    assert_non_null(strstr(r.body, "checkpoint"));
    json_t *a = http_reply_json(&r);
    const char *url = json_string_value(json_object_get(json_array_get(json_object_get(a, "artifacts"), 0), "url"));
    http_reply f;
    assert_int_equal(http_do(srv.port, "GET", url, NULL, NULL, &f), 0);
    assert_int_equal(f.status, 200);
    assert_true(f.len > 8);
    http_reply_free(&f);
    json_decref(a);
    http_reply_free(&r);
    /* Deleting a finished job removes it and its files. */
    snprintf(path, sizeof path, "/api/v1/jobs/%lld", id);
    assert_int_equal(http_status(srv.port, "DELETE", path, NULL, NULL), 204);
    assert_int_equal(http_status(srv.port, "GET", path, NULL, NULL), 404);
    char dir[512];
    snprintf(dir, sizeof dir, "%s/jobs/%lld", srv.state_dir, id);
    assert_int_not_equal(access(dir, F_OK), 0);
}

static void expect_problem(const char *method, const char *path, const char *body, int status, const char *needle)
{
    http_reply r;
    assert_int_equal(http_do(srv.port, method, path, body, NULL, &r), 0);
    if (r.status != status || !strstr(r.body ? r.body : "", needle) ||
        !strstr(http_reply_header(&r, "Content-Type") ? http_reply_header(&r, "Content-Type") : "", "problem+json")) {
        print_error("%s %s: got %d %s (want %d with '%s')\n", method, path, r.status, r.body, status, needle);
        fail();
    }
    http_reply_free(&r);
}

/* The pgn arm with a PGN checkpoint in the authors' v2 format (a random ResNet-4: the numbers mean
 * nothing, the path through PGN, proxy head and generator is what is tested), and its refusals. */
static void pgn_arm_runs_and_is_compared(void **s)
{
    char body[1024], path[160];
    snprintf(body, sizeof body,
             "{\"type\": \"train\", \"params\": {\"image\": \"" IMAGE "\", \"size\": 64, \"steps\": 10,"
             " \"arms\": [\"pgn\", \"mse\"], \"pgn_checkpoint\": \"tests/fixtures/pgn_resnet4_v2_legacy.pth\","
             " \"log_every\": 5}}");
    long long id = submit(srv.port, body, NULL, 201);
    json_t *j = wait_job_state(srv.port, id, "succeeded|failed", 120000, NULL);
    assert_non_null(j);
    if (strcmp(json_string_value(json_object_get(j, "state")), "succeeded")) {
        print_error("pgn job failed: %s\n", json_string_value(json_object_get(j, "error")));
        fail();
    }
    json_decref(j);
    snprintf(path, sizeof path, "/api/v1/jobs/%lld/metrics?keys=pgn.grad_cos,pgn.mse_dir_cos,pgn.psnr", id);
    http_reply r;
    assert_int_equal(http_do(srv.port, "GET", path, NULL, NULL, &r), 0);
    json_t *m = http_reply_json(&r);
    json_t *series = json_object_get(m, "series");
    for (const char *k = "pgn.grad_cos"; k; k = strcmp(k, "pgn.grad_cos") ? NULL : "pgn.mse_dir_cos") {
        json_t *v = json_object_get(json_object_get(series, k), "values");
        assert_int_equal(json_array_size(v), 2);
        double c = json_number_value(json_array_get(v, 0));
        assert_true(c >= -1.0 && c <= 1.0);
    }
    json_decref(m);
    http_reply_free(&r);
    snprintf(path, sizeof path, "/api/v1/jobs/%lld/artifacts", id);
    assert_int_equal(http_do(srv.port, "GET", path, NULL, NULL, &r), 0);
    assert_non_null(strstr(r.body, "fields-step000010.png")); /* the gradient-field panels */
    http_reply_free(&r);
    /* The pgn arm without a checkpoint, or with a file that holds no PGN. */
    expect_problem("POST", "/api/v1/jobs",
                   "{\"type\": \"train\", \"params\": {\"image\": \"" IMAGE "\", \"size\": 64, \"arms\": [\"pgn\"]}}",
                   422, "is required by the pgn arm");
    expect_problem("POST", "/api/v1/jobs",
                   "{\"type\": \"train\", \"params\": {\"image\": \"" IMAGE "\", \"size\": 64, \"arms\": [\"pgn\"],"
                   " \"pgn_checkpoint\": \"tests/fixtures/dip_state.safetensors\"}}",
                   422, "holds neither a PGN ResNet nor a PGN UNet");
}

/* A PGN fit runs as a queued job: loss and validation metrics, the exported PGN as an artifact,
 * and the train job's pgn arm accepts that export. Bad fit parameters are refused by name. */
static void fit_job_runs_and_its_pgn_trains(void **s)
{
    char body[1024], path[160];
    long long id = submit(srv.port,
                          "{\"type\": \"fit\", \"params\": {\"data\": \"tests/fixtures/images\", \"val_data\":"
                          " \"tests/fixtures/images\", \"arch\": \"resnet4\", \"size\": 32, \"batch\": 3, \"steps\": 6,"
                          " \"log_every\": 2, \"val_every\": 3, \"image_every\": 6, \"checkpoint_every\": 3}}",
                          NULL, 201);
    json_t *j = wait_job_state(srv.port, id, "succeeded|failed", 120000, NULL);
    assert_non_null(j);
    if (strcmp(json_string_value(json_object_get(j, "state")), "succeeded")) {
        print_error("fit job failed: %s\n", json_string_value(json_object_get(j, "error")));
        fail();
    }
    json_decref(j);
    snprintf(path, sizeof path, "/api/v1/jobs/%lld/metrics?keys=loss,grad_cos,val.cos,val.mse_dir_cos", id);
    http_reply r;
    assert_int_equal(http_do(srv.port, "GET", path, NULL, NULL, &r), 0);
    json_t *m = http_reply_json(&r);
    json_t *series = json_object_get(m, "series");
    assert_int_equal(json_array_size(json_object_get(json_object_get(series, "loss"), "values")), 3);
    assert_int_equal(json_array_size(json_object_get(json_object_get(series, "val.cos"), "values")), 3); /* 0, 3, 6 */
    assert_int_equal(json_array_size(json_object_get(json_object_get(series, "val.mse_dir_cos"), "values")), 3);
    json_decref(m);
    http_reply_free(&r);
    snprintf(path, sizeof path, "/api/v1/jobs/%lld/artifacts", id);
    assert_int_equal(http_do(srv.port, "GET", path, NULL, NULL, &r), 0);
    assert_non_null(strstr(r.body, "pgn-final.safetensors"));
    assert_non_null(strstr(r.body, "fields-ae2-step00000006.png"));
    http_reply_free(&r);
    /* the exported PGN drives a train job's pgn arm */
    char pgn[600];
    snprintf(pgn, sizeof pgn, "%s/jobs/%lld/pgn-final.safetensors", srv.state_dir, id);
    snprintf(body, sizeof body,
             "{\"type\": \"train\", \"params\": {\"image\": \"" IMAGE "\", \"size\": 64, \"steps\": 3,"
             " \"arms\": [\"pgn\"], \"pgn_checkpoint\": \"%s\", \"log_every\": 3}}", pgn);
    id = submit(srv.port, body, NULL, 201);
    j = wait_job_state(srv.port, id, "succeeded|failed", 120000, NULL);
    assert_non_null(j);
    if (strcmp(json_string_value(json_object_get(j, "state")), "succeeded")) {
        print_error("train with the fitted PGN failed: %s\n", json_string_value(json_object_get(j, "error")));
        fail();
    }
    json_decref(j);
    expect_problem("POST", "/api/v1/jobs",
                   "{\"type\": \"fit\", \"params\": {\"data\": \"tests/fixtures/images\", \"size\": 48, \"batch\": 4}}",
                   422, "must be a multiple of 32 for unet");
    expect_problem("POST", "/api/v1/jobs",
                   "{\"type\": \"fit\", \"params\": {\"data\": \"tests/fixtures/images\", \"batch\": 4}}", 422,
                   "must be a multiple of 3");
    expect_problem("POST", "/api/v1/jobs", "{\"type\": \"fit\", \"params\": {\"data\": \"/nonexistent\"}}", 422,
                   "/nonexistent does not exist");
    expect_problem("POST", "/api/v1/jobs",
                   "{\"type\": \"fit\", \"params\": {\"data\": \"tests/fixtures/images\", \"arch\": \"resnet4\","
                   " \"init\": \"tests/fixtures/pgn_unet_legacy.pth\"}}",
                   422, "holds a PGN UNet, but arch is resnet4");
}

/* Stability mode stops an arm by its rule and ends the job when no arm runs. A divergence factor
 * of 0.5 fires at the first step (the loss is >= half of itself), which makes the test exact. */
static void stability_mode_stops_arms(void **s)
{
    char body[512], path[160];
    snprintf(body, sizeof body,
             "{\"type\": \"train\", \"params\": {\"image\": \"" IMAGE "\", \"size\": 64, \"steps\": 500,"
             " \"arms\": [\"mse\"], \"stop_divergence\": 0.5, \"log_every\": 5}}");
    long long id = submit(srv.port, body, NULL, 201);
    json_t *j = wait_job_state(srv.port, id, "succeeded|failed", 60000, NULL);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "state")), "succeeded");
    assert_int_equal(json_integer_value(json_object_get(j, "step")), 1);
    json_decref(j);
    snprintf(path, sizeof path, "/api/v1/jobs/%lld/metrics?keys=mse.stop_step,mse.stop_reason", id);
    http_reply r;
    assert_int_equal(http_do(srv.port, "GET", path, NULL, NULL, &r), 0);
    json_t *m = http_reply_json(&r), *series = json_object_get(m, "series");
    assert_int_equal(json_number_value(json_array_get(json_object_get(json_object_get(series, "mse.stop_step"), "values"), 0)), 1);
    assert_int_equal(json_number_value(json_array_get(json_object_get(json_object_get(series, "mse.stop_reason"), "values"), 0)), 1);
    json_decref(m);
    http_reply_free(&r);
}

static void cancel_pause_resume(void **s)
{
    char body[512], path[128];
    long long id = submit(srv.port, train_job(body, sizeof body, 100000, "\"mse\""), NULL, 201);
    json_t *j = wait_job_step(srv.port, id, 15, 60000, NULL);
    assert_non_null(j);
    json_decref(j);
    snprintf(path, sizeof path, "/api/v1/jobs/%lld/resume", id);
    assert_int_equal(http_status(srv.port, "POST", path, "", NULL), 409); /* running: cannot resume */
    snprintf(path, sizeof path, "/api/v1/jobs/%lld", id);
    assert_int_equal(http_status(srv.port, "DELETE", path, NULL, NULL), 409); /* not terminal */
    snprintf(path, sizeof path, "/api/v1/jobs/%lld/pause", id);
    assert_int_equal(http_status(srv.port, "POST", path, "", NULL), 202);
    j = wait_job_state(srv.port, id, "paused", 30000, NULL);
    assert_non_null(j);
    long long ck = json_integer_value(json_object_get(j, "checkpoint_step"));
    assert_true(ck >= 15);
    json_decref(j);
    snprintf(path, sizeof path, "/api/v1/jobs/%lld/resume", id);
    assert_int_equal(http_status(srv.port, "POST", path, "", NULL), 202);
    j = wait_job_step(srv.port, id, ck + 10, 60000, NULL);
    assert_non_null(j);
    json_decref(j);
    snprintf(path, sizeof path, "/api/v1/jobs/%lld/cancel", id);
    assert_int_equal(http_status(srv.port, "POST", path, "", NULL), 202);
    j = wait_job_state(srv.port, id, "cancelled", 30000, NULL);
    assert_non_null(j);
    json_decref(j);
    /* Metrics of a paused-and-resumed run have no step twice. */
    snprintf(path, sizeof path, "/api/v1/jobs/%lld/metrics?keys=mse.loss&max_points=100000", id);
    http_reply r;
    assert_int_equal(http_do(srv.port, "GET", path, NULL, NULL, &r), 0);
    json_t *m = http_reply_json(&r);
    json_t *steps = json_object_get(json_object_get(json_object_get(m, "series"), "mse.loss"), "steps");
    for (size_t i = 1; i < json_array_size(steps); i++)
        assert_true(json_integer_value(json_array_get(steps, i)) > json_integer_value(json_array_get(steps, i - 1)));
    json_decref(m);
    http_reply_free(&r);
}


static void bad_input_is_refused_precisely(void **s)
{
    expect_problem("POST", "/api/v1/jobs", "{\"type\": \"train\",", 400, "line");
    expect_problem("POST", "/api/v1/jobs", "", 400, "empty");
    expect_problem("POST", "/api/v1/jobs", "{\"type\": \"bake\"}", 422, "unknown job type 'bake'");
    expect_problem("POST", "/api/v1/jobs",
                   "{\"type\": \"train\", \"params\": {\"image\": \"/nonexistent.png\", \"size\": 50, \"steps\": -1,"
                   " \"arms\": [\"mse\", \"mse\"], \"colour\": 1}}",
                   422, "\"problems\"");
    http_reply r;
    assert_int_equal(http_do(srv.port, "POST", "/api/v1/jobs",
                             "{\"type\": \"train\", \"params\": {\"image\": \"/nonexistent.png\", \"size\": 50, "
                             "\"steps\": -1, \"arms\": [\"mse\", \"mse\"], \"colour\": 1}}",
                             NULL, &r),
                     0);
    json_t *j = http_reply_json(&r);
    json_t *problems = json_object_get(j, "problems");
    assert_true(json_array_size(problems) >= 4); /* image, steps, arms, colour (size checked after) */
    json_decref(j);
    http_reply_free(&r);
    /* 2 MiB body: over the 1 MiB limit. */
    size_t big = 2u << 20;
    char *huge = malloc(big + 1);
    memset(huge, ' ', big);
    huge[0] = '{', huge[big - 1] = '}', huge[big] = 0;
    expect_problem("POST", "/api/v1/jobs", huge, 413, "");
    free(huge);
    expect_problem("GET", "/api/v1/jobs/999999", NULL, 404, "no job 999999");
    expect_problem("GET", "/api/v1/jobs/abc", NULL, 404, "");
    expect_problem("GET", "/api/v1/nothing-here", NULL, 404, "");
    expect_problem("PUT", "/api/v1/jobs", "{}", 405, "");
    expect_problem("GET", "/api/v1/jobs?state=sleeping", NULL, 422, "state must be");
}

static void events_replay_after_reconnect(void **s)
{
    long long ids[8];
    char types[8][32];
    int n = sse_read(srv.port, "/api/v1/events", NULL, 4, 5000, ids, types);
    assert_true(n >= 4);
    /* Reconnect from the second event: the stream starts right after it. */
    char hdr[64];
    snprintf(hdr, sizeof hdr, "Last-Event-ID: %lld\r\n", ids[1]);
    long long ids2[2];
    char types2[2][32];
    assert_int_equal(sse_read(srv.port, "/api/v1/events", hdr, 2, 5000, ids2, types2), 2);
    assert_true(ids2[0] == ids[2]);
    assert_true(ids2[1] == ids[3]);
}

typedef struct submitter {
    int port;
    long long ids[25];
} submitter;

static void *submit_many(void *arg)
{
    submitter *sm = arg;
    for (int i = 0; i < 25; i++) {
        http_reply r;
        sm->ids[i] = 0;
        /* Paused straight away by a huge priority-less queue? No: priority -100 keeps them behind. */
        if (http_do(sm->port, "POST", "/api/v1/jobs",
                    "{\"type\": \"train\", \"priority\": -100, \"params\": {\"image\": \"" IMAGE
                    "\", \"size\": 64, \"steps\": 1, \"arms\": [\"mse\"]}}",
                    NULL, &r) == 0 &&
            r.status == 201) {
            json_t *j = http_reply_json(&r);
            sm->ids[i] = json_integer_value(json_object_get(j, "id"));
            json_decref(j);
        }
        http_reply_free(&r);
    }
    return NULL;
}

static int cmp_ll(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

static void parallel_submitters_each_recorded_once(void **s)
{
    pthread_t t[8];
    submitter sm[8];
    for (int i = 0; i < 8; i++) {
        sm[i].port = srv.port;
        pthread_create(&t[i], NULL, submit_many, &sm[i]);
    }
    long long all[200];
    for (int i = 0; i < 8; i++) {
        pthread_join(t[i], NULL);
        memcpy(all + 25 * i, sm[i].ids, sizeof sm[i].ids);
    }
    qsort(all, 200, sizeof *all, cmp_ll);
    for (int i = 0; i < 200; i++) {
        assert_true(all[i] > 0);
        if (i)
            assert_true(all[i] != all[i - 1]);
    }
    /* Every one of them is listed exactly once. */
    int seen = 0;
    char path[128] = "/api/v1/jobs?limit=500";
    http_reply r;
    assert_int_equal(http_do(srv.port, "GET", path, NULL, NULL, &r), 0);
    json_t *j = http_reply_json(&r);
    json_t *jobs = json_object_get(j, "jobs");
    for (size_t i = 0; i < json_array_size(jobs); i++) {
        long long id = json_integer_value(json_object_get(json_array_get(jobs, i), "id"));
        if (bsearch(&id, all, 200, sizeof *all, cmp_ll))
            seen++;
    }
    assert_int_equal(seen, 200);
    json_decref(j);
    http_reply_free(&r);
    /* Clean the queue so later tests are not behind 200 jobs. */
    for (int i = 0; i < 200; i++) {
        snprintf(path, sizeof path, "/api/v1/jobs/%lld/cancel", all[i]);
        http_status(srv.port, "POST", path, "", NULL);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(health_info_and_types),
        cmocka_unit_test(bad_input_is_refused_precisely),
        cmocka_unit_test(a_job_runs_to_the_end),
        cmocka_unit_test(pgn_arm_runs_and_is_compared),
        cmocka_unit_test(stability_mode_stops_arms),
        cmocka_unit_test(fit_job_runs_and_its_pgn_trains),
        cmocka_unit_test(cancel_pause_resume),
        cmocka_unit_test(events_replay_after_reconnect),
        cmocka_unit_test(parallel_submitters_each_recorded_once),
    };
    return cmocka_run_group_tests(tests, start, stop);
}
