/* SHA-256 (FIPS 180-4), for weights-file identity and artifact checksums. */
#ifndef NN_SHA256_H
#define NN_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef struct nn_sha256 {
    uint32_t h[8];
    uint64_t len;
    uint8_t buf[64];
    size_t fill;
} nn_sha256;

void nn_sha256_init(nn_sha256 *s);
void nn_sha256_update(nn_sha256 *s, const void *data, size_t len);
/* Writes 64 lowercase hex digits and a NUL into hex[65]. */
void nn_sha256_final_hex(nn_sha256 *s, char hex[65]);
/* Which block function runs: 1 the x86 SHA extensions (-1 where the CPU lacks them), 0 the
 * portable code. Chosen at first use otherwise (PGND_SHA_NI=0: portable). For tests and A/B
 * only: not to be called while another thread hashes. */
int nn_sha256_use_shani(int on);
/* SHA-256 of a whole file; 0 or -1 (errno set). */
int nn_sha256_file(const char *path, char hex[65]);

#endif
