/* Configuration: defaults, file parsing with line-numbered errors, environment precedence, and
 * the printed effective configuration. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "daemon/config.h"

static char path[64];

static void write_conf(const char *text)
{
    snprintf(path, sizeof path, "/tmp/pgnd-conf-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
}

static void defaults_and_file(void **s)
{
    pgnd_config c;
    char err[512];
    config_defaults(&c);
    assert_string_equal(c.listen_host, "127.0.0.1");
    assert_int_equal(c.listen_port, 8080);
    write_conf("# comment\n\nlisten = [::1]:9090  # trailing comment\nworkers=2\nteacher_weights = /w/vgg19.pth\n"
               "state_dir = /tmp/pgnd-state\n");
    assert_int_equal(config_load(&c, path, err, sizeof err), 0);
    assert_string_equal(c.listen_host, "::1");
    assert_int_equal(c.listen_port, 9090);
    assert_int_equal(c.workers, 2);
    assert_string_equal(c.teacher_weights, "/w/vgg19.pth");
    char db[1100];
    assert_string_equal(config_database(&c, db, sizeof db), "/tmp/pgnd-state/pgnd.db");
    assert_true(config_is_loopback(&c));
    unlink(path);
}

static void expect_error(const char *text, const char *needle)
{
    pgnd_config c;
    char err[512] = "";
    config_defaults(&c);
    write_conf(text);
    assert_int_equal(config_load(&c, path, err, sizeof err), -1);
    print_message("%s\n", err);
    if (!strstr(err, needle) || !strstr(err, path)) {
        print_error("'%s' lacks '%s' or the path\n", err, needle);
        fail();
    }
    unlink(path);
}

static void errors_name_the_line(void **s)
{
    expect_error("workers = 1\nbogus = 3\n", ":2: unknown key 'bogus'");
    expect_error("workers = many\n", ":1: workers must be a whole number from 1 to 256, got 'many'");
    expect_error("\n\nlisten = localhost\n", ":3: listen must be HOST:PORT");
    expect_error("listen = 127.0.0.1:70000\n", ":1: listen must be HOST:PORT");
    expect_error("threads = 2\nthreads = 3\n", ":2: threads is set twice (first on line 1)");
    expect_error("just words\n", ":1: expected 'key = value'");
    expect_error("log_level = loud\n", ":1: log_level must be error, warn, info or debug");
    pgnd_config c;
    char err[512];
    config_defaults(&c);
    assert_int_equal(config_load(&c, "/nonexistent/pgnd.conf", err, sizeof err), -1);
    assert_non_null(strstr(err, "/nonexistent/pgnd.conf: cannot open"));
}

static void environment_overrides_file(void **s)
{
    pgnd_config c;
    char err[512];
    config_defaults(&c);
    write_conf("workers = 2\nqueue_limit = 5\n");
    setenv("PGND_WORKERS", "3", 1);
    setenv("PGND_LISTEN", "0.0.0.0:8181", 1);
    assert_int_equal(config_load(&c, path, err, sizeof err), 0);
    assert_int_equal(c.workers, 3);
    assert_int_equal(c.queue_limit, 5);
    assert_false(config_is_loopback(&c));
    setenv("PGND_THREADS", "zero", 1);
    assert_int_equal(config_load(&c, path, err, sizeof err), -1);
    assert_non_null(strstr(err, "PGND_THREADS"));
    unsetenv("PGND_WORKERS"), unsetenv("PGND_LISTEN"), unsetenv("PGND_THREADS");
    /* Printed configuration names each value's source. */
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    config_defaults(&c);
    assert_int_equal(config_load(&c, path, err, sizeof err), 0);
    assert_int_equal(config_set(&c, "threads", "4", SRC_FLAG, err, sizeof err), 0);
    config_print(&c, f);
    fclose(f);
    assert_non_null(strstr(buf, "workers = 2  # file"));
    assert_non_null(strstr(buf, "threads = 4  # command line"));
    assert_non_null(strstr(buf, "listen = 127.0.0.1:8080  # default"));
    assert_non_null(strstr(buf, "random teacher"));
    free(buf);
    unlink(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(defaults_and_file),
        cmocka_unit_test(errors_name_the_line),
        cmocka_unit_test(environment_overrides_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
