/* `pgnd run JOB.json` in the foreground: a collect run keeps only the newest checkpoint_retention
 * checkpoints (as the daemon does); a train run does not resume with another teacher than its
 * checkpoint's (needs var/teachers/inception3-nsfwjs-4.4.0, which `make test` fetches). */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "tests/api/client.h"

static int count_prefix(const char *dir, const char *prefix)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    for (struct dirent *de; (de = readdir(d));)
        n += !strncmp(de->d_name, prefix, strlen(prefix));
    closedir(d);
    return n;
}

static void collect_keeps_the_newest_checkpoints(void **s)
{
    char tmp[] = "/tmp/pgnd-test-run-XXXXXX";
    assert_non_null(mkdtemp(tmp));
    char job[512], out[512], conf[512], cwd[1024];
    assert_non_null(getcwd(cwd, sizeof cwd));
    snprintf(job, sizeof job, "%s/collect.json", tmp);
    snprintf(out, sizeof out, "%s/out", tmp);
    snprintf(conf, sizeof conf, "%s/pgnd.conf", tmp);
    FILE *f = fopen(job, "w");
    assert_non_null(f);
    /* 5 shards of 3 samples: a checkpoint after each */
    fprintf(f, "{\"type\": \"collect\", \"params\": {\"data\": \"%s/tests/fixtures/images\", \"samples\": 15, "
               "\"samples_per_shard\": 3, \"size\": 32, \"batch\": 3}}\n", cwd);
    fclose(f);
    f = fopen(conf, "w");
    assert_non_null(f);
    fprintf(f, "checkpoint_retention = 2\n");
    fclose(f);
    char text[8192];
    const char *args[] = {"run", job, "--out", out, "--config", conf, NULL};
    assert_int_equal(pgnd_cli(tmp, text, sizeof text, args), 0);
    assert_int_equal(count_prefix(out, "shard-"), 5);
    assert_int_equal(count_prefix(out, "collect-checkpoint-"), 2);
    char newest[600];
    snprintf(newest, sizeof newest, "%s/collect-checkpoint-000005.safetensors", out);
    assert_int_equal(access(newest, R_OK), 0);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    assert_int_equal(system(cmd), 0);
}

static void resume_with_another_teacher_is_refused(void **s)
{
    char tmp[] = "/tmp/pgnd-test-run-XXXXXX";
    assert_non_null(mkdtemp(tmp));
    char job1[512], job2[512], out[512], cwd[1024];
    assert_non_null(getcwd(cwd, sizeof cwd));
    snprintf(job1, sizeof job1, "%s/a.json", tmp);
    snprintf(job2, sizeof job2, "%s/b.json", tmp);
    snprintf(out, sizeof out, "%s/out", tmp);
    FILE *f = fopen(job1, "w");
    assert_non_null(f);
    fprintf(f, "{\"type\": \"train\", \"params\": {\"image\": \"%s/tests/fixtures/images/pattern_80x72.png\", "
               "\"size\": 64, \"steps\": 4, \"arms\": [\"mse\"], \"log_every\": 2, \"checkpoint_every\": 2}}\n", cwd);
    fclose(f);
    f = fopen(job2, "w");
    assert_non_null(f);
    fprintf(f, "{\"type\": \"train\", \"params\": {\"image\": \"%s/tests/fixtures/images/pattern_80x72.png\", "
               "\"size\": 64, \"steps\": 6, \"arms\": [\"mse\"], \"log_every\": 2, \"checkpoint_every\": 2, "
               "\"teacher_weights\": \"%s/var/teachers/inception3-nsfwjs-4.4.0\"}}\n", cwd, cwd);
    fclose(f);
    char text[8192];
    const char *a1[] = {"run", job1, "--out", out, NULL};
    assert_int_equal(pgnd_cli(tmp, text, sizeof text, a1), 0);
    /* the same folder, now with the inception3 teacher: the random VGG-19 checkpoint is refused, and
     * for that reason (the message names both teachers) */
    if (access("var/teachers/inception3-nsfwjs-4.4.0/model.min.js", R_OK))
        fail_msg("var/teachers/inception3-nsfwjs-4.4.0 is missing: run `make test` (make teacher fetches it)");
    char cmd2[1400];
    snprintf(cmd2, sizeof cmd2, "build/pgnd run '%s' --out '%s' 2>&1", job2, out);
    FILE *pp = popen(cmd2, "r");
    assert_non_null(pp);
    size_t got = fread(text, 1, sizeof text - 1, pp);
    text[got] = 0;
    assert_int_not_equal(pclose(pp), 0);
    if (!strstr(text, "was made with the teacher vgg19") || !strstr(text, "this job has inception3"))
        fail_msg("the resume was not refused for its teacher: %s", text);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(collect_keeps_the_newest_checkpoints),
        cmocka_unit_test(resume_with_another_teacher_is_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
