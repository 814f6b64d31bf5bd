/* Error reporting for the engine: functions return 0 on success or -1 and fill an nn_err.
 * Nothing in nn/ calls exit(): the daemon must survive one job's failure. */
#ifndef NN_ERR_H
#define NN_ERR_H

#include <stdarg.h>

typedef struct nn_err {
    char msg[1024];
} nn_err;

/* Formats the message into e (if e is not NULL) and returns -1, so callers can write
 * `return nn_errf(e, "...", ...);`. */
int nn_errf(nn_err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prepends "prefix: " to an existing message (context as the error travels up). */
int nn_err_prefix(nn_err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
