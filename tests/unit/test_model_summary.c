/* `pgnd model summary`: parameter counts and forward multiply-adds at 224x224 against the table of
 * spec/method.md §3.3, and the stable last line `params <count>`. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "daemon/model_cmd.h"

/* gmacs as the spec prints it, to the given last digit (unit): the count must round to it. */
static void check(const char *arch, size_t params, double gmacs, double unit)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&buf, &len);
    model_summary sum;
    assert_int_equal(model_summary_run(arch, 1, 224, 224, out, stderr, &sum), 0);
    fclose(out);
    print_message("%s: %zu params, %.3f G MACs\n", arch, sum.params, sum.macs / 1e9);
    assert_int_equal(sum.params, params);
    assert_true(fabs(sum.macs / 1e9 - gmacs) <= unit / 2);
    char last[64];
    snprintf(last, sizeof last, "params %zu\n", params);
    assert_true(len >= strlen(last) && !strcmp(buf + len - strlen(last), last));
    free(buf);
}

static void spec_table(void **s)
{
    check("resnet4", 1335875, 19.7, 0.1);
    check("resnet6", 1927235, 27.1, 0.1);
    check("resnet8", 2518595, 34.5, 0.1);
    check("unet", 1765891, 1.94, 0.01);
    check("dip", 572827, 0.33, 0.01);
    check("ae0", 54019, 1.34, 0.01);
    check("ae1", 111491, 1.53, 0.01);
    check("ae2", 408195, 1.90, 0.01);
}

static void bad_arguments(void **s)
{
    model_summary sum;
    FILE *devnull = fopen("/dev/null", "w");
    assert_int_equal(model_summary_run("vgg11", 1, 224, 224, NULL, devnull, &sum), -1);
    assert_int_equal(model_summary_run("unet", 1, 48, 48, NULL, devnull, &sum), -1);
    assert_int_equal(model_summary_run("resnet4", 1, 15, 16, NULL, devnull, &sum), -1);
    fclose(devnull);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(spec_table), cmocka_unit_test(bad_arguments)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
