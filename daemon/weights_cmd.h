/* `pgnd weights inspect FILE`: lists a weights file's tensors (dtype, shape, checksum), the file's
 * SHA-256, and whether it is a usable VGG-19 teacher. Exit status: 0 usable teacher, 3 readable
 * but not a usable teacher, 1 unreadable. */
#ifndef DAEMON_WEIGHTS_CMD_H
#define DAEMON_WEIGHTS_CMD_H

#include <stdio.h>

int weights_inspect(FILE *out, FILE *err, const char *path);

#endif
