/* `pgnd selfcheck`: a short engine check that prints what it computed (oneDNN vs the plain-C
 * reference on a small conv stack, and one VGG-19 perceptual gradient). Returns 0 when the two
 * paths agree. */
#ifndef DAEMON_SELFCHECK_H
#define DAEMON_SELFCHECK_H

#include <stdio.h>

int selfcheck_run(FILE *out, int threads);

#endif
