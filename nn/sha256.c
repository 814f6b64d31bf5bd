/* SHA-256: the x86 SHA extensions where the CPU has them (1.8 GB/s here, the portable code 0.27:
 * shards and weight files are hashed as they are written and read), else portable C.
 * PGND_SHA_NI=0 forces the portable code (A/B, and tools that cannot run the instructions). */
#include "nn/sha256.h"

#include <cpuid.h>
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void block(uint32_t *hs, const uint8_t *p)
{
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = hs[0], b = hs[1], c = hs[2], d = hs[3], e = hs[4], f = hs[5], g = hs[6], h = hs[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = h + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
        uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        h = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
    }
    hs[0] += a, hs[1] += b, hs[2] += c, hs[3] += d, hs[4] += e, hs[5] += f, hs[6] += g, hs[7] += h;
}

static void blocks_portable(uint32_t *h, const uint8_t *p, size_t n)
{
    for (; n; n--, p += 64)
        block(h, p);
}

/* The SHA extensions' four-rounds-at-a-time schedule (Intel's reference arrangement): the state as
 * ABEF / CDGH, message words W[4i..4i+3] in w[i % 4]. */
__attribute__((target("sha,sse4.1"))) static void blocks_shani(uint32_t *h, const uint8_t *p, size_t n)
{
    const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i t = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&h[0]), 0xB1);  /* CDAB */
    __m128i s1 = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&h[4]), 0x1B); /* EFGH */
    __m128i s0 = _mm_alignr_epi8(t, s1, 8);                                         /* ABEF */
    s1 = _mm_blend_epi16(s1, t, 0xF0);                                              /* CDGH */
    for (; n; n--, p += 64) {
        const __m128i abef = s0, cdgh = s1;
        __m128i w[4];
#pragma GCC unroll 16 /* w[] in registers, the conditions resolved at compile time */
        for (int i = 0; i < 16; i++) {
            if (i < 4)
                w[i] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16 * i)), bswap);
            __m128i m = _mm_add_epi32(w[i % 4], _mm_loadu_si128((const __m128i *)&K[4 * i]));
            s1 = _mm_sha256rnds2_epu32(s1, s0, m);
            if (i >= 3 && i <= 14) { /* finish W[4(i+1)..]: msg2 with the previous words */
                __m128i *nx = &w[(i + 1) % 4];
                *nx = _mm_sha256msg2_epu32(_mm_add_epi32(*nx, _mm_alignr_epi8(w[i % 4], w[(i + 3) % 4], 4)), w[i % 4]);
            }
            s0 = _mm_sha256rnds2_epu32(s0, s1, _mm_shuffle_epi32(m, 0x0E));
            if (i >= 1 && i <= 12) /* start W[4(i+3)..] */
                w[(i + 3) % 4] = _mm_sha256msg1_epu32(w[(i + 3) % 4], w[i % 4]);
        }
        s0 = _mm_add_epi32(s0, abef);
        s1 = _mm_add_epi32(s1, cdgh);
    }
    t = _mm_shuffle_epi32(s0, 0x1B);  /* FEBA */
    s1 = _mm_shuffle_epi32(s1, 0xB1); /* DCHG */
    _mm_storeu_si128((__m128i *)&h[0], _mm_blend_epi16(t, s1, 0xF0)); /* DCBA */
    _mm_storeu_si128((__m128i *)&h[4], _mm_alignr_epi8(s1, t, 8));    /* HGFE */
}

static void (*blocks)(uint32_t *, const uint8_t *, size_t) = blocks_portable;
static pthread_once_t pick_once = PTHREAD_ONCE_INIT;

static void pick(void)
{
    unsigned a, b, c, d;
    const char *env = getenv("PGND_SHA_NI");
    if ((!env || strcmp(env, "0")) && __get_cpuid_count(7, 0, &a, &b, &c, &d) && (b & (1u << 29)) &&
        __get_cpuid(1, &a, &b, &c, &d) && (c & bit_SSE4_1))
        blocks = blocks_shani;
}

int nn_sha256_use_shani(int on)
{
    pthread_once(&pick_once, pick);
    unsigned a, b, c, d;
    if (on && !(__get_cpuid_count(7, 0, &a, &b, &c, &d) && (b & (1u << 29))))
        return -1;
    blocks = on ? blocks_shani : blocks_portable;
    return 0;
}

void nn_sha256_init(nn_sha256 *s)
{
    static const uint32_t h0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(s->h, h0, sizeof h0);
    s->len = 0;
    s->fill = 0;
}

void nn_sha256_update(nn_sha256 *s, const void *data, size_t len)
{
    pthread_once(&pick_once, pick);
    const uint8_t *p = data;
    s->len += len;
    while (len) {
        if (s->fill == 0 && len >= 64) { /* whole blocks straight from the caller's buffer */
            size_t nb = len / 64;
            blocks(s->h, p, nb);
            p += nb * 64, len -= nb * 64;
            continue;
        }
        size_t take = 64 - s->fill < len ? 64 - s->fill : len;
        memcpy(s->buf + s->fill, p, take);
        s->fill += take, p += take, len -= take;
        if (s->fill == 64) {
            blocks(s->h, s->buf, 1);
            s->fill = 0;
        }
    }
}

void nn_sha256_final_hex(nn_sha256 *s, char hex[65])
{
    uint64_t bits = s->len * 8;
    uint8_t pad = 0x80, zero = 0, lenb[8];
    nn_sha256_update(s, &pad, 1);
    while (s->fill != 56)
        nn_sha256_update(s, &zero, 1);
    for (int i = 0; i < 8; i++)
        lenb[i] = (uint8_t)(bits >> (56 - 8 * i));
    nn_sha256_update(s, lenb, 8);
    for (int i = 0; i < 8; i++)
        snprintf(hex + 8 * i, 9, "%08x", s->h[i]);
}

int nn_sha256_file(const char *path, char hex[65])
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    nn_sha256 s;
    nn_sha256_init(&s);
    static _Thread_local uint8_t buf[1 << 16];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0)
        nn_sha256_update(&s, buf, n);
    int bad = ferror(f);
    fclose(f);
    if (bad)
        return -1;
    nn_sha256_final_hex(&s, hex);
    return 0;
}
