/* cron.h — cron expressions in UTC, for schedules (docs/pipelines.md, "Schedules").
 *
 * Five fields, `minute hour day-of-month month day-of-week`, as Vixie cron and croniter read
 * them, or six with a leading `second` field (for fast-time tests and sub-minute schedules).
 * Each field is `*` or a comma list of `N`, `A-B`, `*` / `N` / `A-B` followed by `/STEP`
 * (`N/STEP` is N, N+STEP, ... to the field's end). Ranges: second and minute 0-59, hour 0-23,
 * day-of-month 1-31, month 1-12, day-of-week 0-7 (0 and 7 are Sunday); months and days may be
 * named (`JAN`-`DEC`, `SUN`-`SAT`, any case, in lists and ranges: `MON-FRI`). The nicknames
 * `@yearly` (`@annually`), `@monthly`, `@weekly`, `@daily` (`@midnight`), `@hourly` stand for
 * their five fields. No `L`, `W`, `#`, `?` or `@reboot`. When both day fields are restricted a day matches if
 * either does, otherwise both must (Vixie cron); a day field is unrestricted when it is exactly
 * `*`, or for day-of-week when it names all seven days (croniter's reading, which differs from
 * Vixie's "starts with `*`" for e.g. `*​/2`).
 *
 * Not here: time zones (always UTC), what a schedule does when it fires (service_schedules.c). */
#ifndef CHORD_SERVER_JOBS_CRON_H
#define CHORD_SERVER_JOBS_CRON_H

#include <stdint.h>

#include "server/base/err.h"

typedef struct cron_expr {
    uint64_t second, minute; /* bit i: value i matches */
    uint32_t hour, dom, month, dow;
    int dom_any, dow_any; /* the field started with '*' */
} cron_expr;

/* Parses text; errors (CHORD_E_INVALID) name the field: `cron: minute: 61 is outside 0-59`. */
int cron_parse(const char *text, cron_expr *out, chord_err *err);
/* The first matching time strictly after after_ms (unix ms, UTC), on a whole second; -1 when
 * none comes within 8 years (e.g. `0 0 31 2 *`). */
int64_t cron_next(const cron_expr *c, int64_t after_ms);

#endif
