#include "nn/err.h"

#include <stdio.h>
#include <string.h>

int nn_errf(nn_err *e, const char *fmt, ...)
{
    if (e) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
    }
    return -1;
}

int nn_err_prefix(nn_err *e, const char *fmt, ...)
{
    if (e) {
        char head[512], old[sizeof e->msg];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(head, sizeof head, fmt, ap);
        va_end(ap);
        memcpy(old, e->msg, sizeof old);
        snprintf(e->msg, sizeof e->msg, "%s: %s", head, old);
    }
    return -1;
}
