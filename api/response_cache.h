/* A small in-memory cache of rendered response bodies, keyed by a string that includes whatever
 * version makes a body stale (e.g. a job's step and state). Metric curves of thousands of points
 * cost milliseconds to query and render; a dashboard full of viewers asks for the same ones. */
#ifndef PGND_API_RESPONSE_CACHE_H
#define PGND_API_RESPONSE_CACHE_H

#include <stddef.h>

/* A malloc'ed copy of the cached body for key (length in *len), or NULL. */
char *response_cache_get(const char *key, size_t *len);
/* Stores a copy of body under key (evicting the least recently used entry). */
void response_cache_put(const char *key, const char *body, size_t len);

#endif
