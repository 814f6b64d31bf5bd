/* Test support: PyTorch fixtures (safetensors written by tools/make_fixtures.py) and comparisons. */
#ifndef TEST_FIXTURE_H
#define TEST_FIXTURE_H

#include <stddef.h>
#include <stdint.h>

#include "nn/engine.h"
#include "nn/weights.h"

/* Opens tests/fixtures/NAME (tests run from the repository root); fails the test if missing. */
void fx_open(nn_weights *w, const char *name);
/* Tensor `name` as float32 (points into w, valid while w lives); *numel filled if not NULL.
 * Fails the test when absent. */
float *fx_get(const nn_weights *w, const char *name, size_t *numel);
/* Same, or NULL when absent. */
float *fx_find(const nn_weights *w, const char *name, size_t *numel);
/* Integer / float parameter `key` of a case's JSON metadata (fails the test when absent). */
double fx_param(const nn_weights *w, const char *case_name, const char *key);
/* String parameter, or NULL. Returned pointer valid until the next call. */
const char *fx_param_str(const nn_weights *w, const char *case_name, const char *key);

/* Fails the test with e's message when rc is not 0. */
void fx_ok(int rc, const nn_err *e);
/* Fails the test unless rc is an error whose message contains needle. */
void fx_expect_error(int rc, const nn_err *e, const char *needle);
/* Mask pinning: of the activation's elements listed in the fixture's "pin.<name>.index" (I32),
 * sets those whose sign differs from "pin.<name>.sign" (I8) to +-1e-20 by it, so a ReLU-like
 * backward follows float64's decision where float32 rounding would flip it. Adds the count listed
 * to *pinned; returns how many had flipped (and were set). */
int fx_pin(nn_ctx *ctx, nn_act *a, const nn_weights *fx, const char *name, int *pinned);

/* max |a - b| / max |b| (0 when b is all zero and a == b). */
double fx_rel_err(const float *a, const float *b, size_t n);
/* Asserts fx_rel_err <= tol, printing the label and the error on failure. */
void fx_expect_close(const char *label, const float *got, const float *want, size_t n, double tol);

/* Act <-> plain float arrays, converting layouts with the engine. */
void fx_act_from(nn_ctx *ctx, nn_act *a, const float *data, int n, int c, int h, int w);
/* The same, then converted to plain NCHW (blk 1) or nChw<blk>c. */
void fx_act_blocked(nn_ctx *ctx, nn_act *a, const float *data, int n, int c, int h, int w, int blk);
/* n floats uniform in [-1, 1) from a seeded RNG (malloc'ed). */
float *fx_randv(size_t n, uint64_t seed);
/* Copies a (any layout) into a newly malloc'ed NCHW array. */
float *fx_act_to(nn_ctx *ctx, const nn_act *a);

/* One 2-thread context for a test file's kernel tests: cmocka group setup and teardown. */
extern nn_ctx fx_ctx;
int fx_ctx_setup(void **state);
int fx_ctx_teardown(void **state);

#endif
