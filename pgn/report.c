#include "pgn/report.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

size_t pgn_report_append(char *buf, size_t len, size_t at, const char *fmt, ...)
{
    if (at >= len)
        return at;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf + at, len - at, fmt, ap);
    va_end(ap);
    return n > 0 ? at + (size_t)n : at;
}

void pgn_report_one_line(char *report)
{
    size_t n = strlen(report);
    if (n && report[n - 1] == '\n')
        report[n - 1] = 0;
    for (char *p = report; (p = strchr(p, '\n'));)
        *p = ';', p++;
}
