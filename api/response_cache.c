#include "api/response_cache.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define ENTRIES 32
#define MAX_BODY (8u << 20) /* bodies larger than this are not kept */

static struct {
    char key[512];
    char *body;
    size_t len;
    uint64_t used;
} cache[ENTRIES];
static uint64_t clock_;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

char *response_cache_get(const char *key, size_t *len)
{
    char *out = NULL;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < ENTRIES; i++)
        if (cache[i].body && !strcmp(cache[i].key, key)) {
            out = malloc(cache[i].len + 1);
            if (out) {
                memcpy(out, cache[i].body, cache[i].len + 1);
                *len = cache[i].len;
                cache[i].used = ++clock_;
            }
            break;
        }
    pthread_mutex_unlock(&lock);
    return out;
}

void response_cache_put(const char *key, const char *body, size_t len)
{
    if (len > MAX_BODY || strlen(key) >= sizeof cache[0].key)
        return;
    char *copy = malloc(len + 1);
    if (!copy)
        return;
    memcpy(copy, body, len);
    copy[len] = 0;
    pthread_mutex_lock(&lock);
    int slot = 0;
    for (int i = 0; i < ENTRIES; i++) {
        if (cache[i].body && !strcmp(cache[i].key, key)) {
            slot = i;
            break;
        }
        if (!cache[i].body || cache[i].used < cache[slot].used)
            slot = i;
    }
    free(cache[slot].body);
    strcpy(cache[slot].key, key);
    cache[slot].body = copy;
    cache[slot].len = len;
    cache[slot].used = ++clock_;
    pthread_mutex_unlock(&lock);
}
