/* SHA-256 against FIPS 180-4's example digests, on both block functions (the SHA extensions where
 * the CPU has them, and the portable code), and the two against each other on random data fed in
 * uneven pieces (the buffered and the whole-block paths of nn_sha256_update). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "nn/sha256.h"

static void digest(const void *data, size_t len, char hex[65])
{
    nn_sha256 s;
    nn_sha256_init(&s);
    nn_sha256_update(&s, data, len);
    nn_sha256_final_hex(&s, hex);
}

static void check_vectors(void)
{
    char hex[65];
    digest("abc", 3, hex);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    digest("", 0, hex);
    assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    digest(two, strlen(two), hex);
    assert_string_equal(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    char *a = malloc(1000000);
    assert_non_null(a);
    memset(a, 'a', 1000000);
    digest(a, 1000000, hex);
    assert_string_equal(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    free(a);
}

static void fips_vectors_portable(void **state)
{
    (void)state;
    assert_int_equal(nn_sha256_use_shani(0), 0);
    check_vectors();
}

static void fips_vectors_sha_extensions(void **state)
{
    (void)state;
    if (nn_sha256_use_shani(1)) {
        print_message("this CPU has no SHA extensions: only the portable code runs here\n");
        skip();
    }
    check_vectors();
    nn_sha256_use_shani(0);
}

/* Random data in random pieces: both block functions, and one whole update, agree. */
static void paths_agree(void **state)
{
    (void)state;
    const size_t n = 300007;
    uint8_t *d = malloc(n);
    assert_non_null(d);
    uint64_t x = 88172645463325252ULL;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        d[i] = (uint8_t)x;
    }
    char whole[65], pieces[65], other[65];
    for (int impl = 0; impl <= 1; impl++) {
        if (nn_sha256_use_shani(impl))
            continue;
        digest(d, n, impl ? other : whole);
        nn_sha256 s;
        nn_sha256_init(&s);
        for (size_t at = 0, k = 1; at < n; k = k * 7 % 997 + 1) {
            size_t take = k < n - at ? k : n - at;
            nn_sha256_update(&s, d + at, take);
            at += take;
        }
        nn_sha256_final_hex(&s, pieces);
        assert_string_equal(pieces, whole);
    }
    if (!nn_sha256_use_shani(1))
        assert_string_equal(other, whole);
    nn_sha256_use_shani(0);
    free(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(fips_vectors_portable),
        cmocka_unit_test(fips_vectors_sha_extensions),
        cmocka_unit_test(paths_agree),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
