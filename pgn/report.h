/* Problem reports of weight checks (missing key, mis-shaped key, ...): one line per problem while
 * they are gathered, one "a; b; c" line when they go into an error message. */
#ifndef PGN_REPORT_H
#define PGN_REPORT_H

#include <stddef.h>

/* Appends to buf (len bytes) at offset at; returns the new offset (stops growing when full). */
size_t pgn_report_append(char *buf, size_t len, size_t at, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* The report as one line: the trailing newline dropped, the others turned into "; ". */
void pgn_report_one_line(char *report);

#endif
