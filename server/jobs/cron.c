/* cron.c — cron expressions (cron.h): a parser into one bit set per field, and the next
 * matching time, found by jumping field by field (month, day, hour, minute, second) through
 * timegm's normalisation rather than stepping second by second. Checked against croniter
 * (tests/reference/cron_reference.py). */
#include "server/jobs/cron.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

typedef struct field_spec {
    const char *name;
    int lo, hi;
    int end; /* where "*" and "N/STEP" stop: hi, but 6 for day-of-week (7 is Sunday again) */
} field_spec;

static const field_spec fields[6] = {{"second", 0, 59, 59}, {"minute", 0, 59, 59},
                                     {"hour", 0, 23, 23},   {"day-of-month", 1, 31, 31},
                                     {"month", 1, 12, 12},  {"day-of-week", 0, 7, 6}};

/* A decimal number at *p (advanced past it); -1 when there is none or it is too long. */
static int number(const char **p) {
    if (!isdigit((unsigned char)**p)) return -1;
    long v = 0;
    while (isdigit((unsigned char)**p)) {
        v = v * 10 + (**p - '0');
        if (v > 1000) return -1;
        (*p)++;
    }
    return (int)v;
}

/* A month or day-of-week name at *p (3 letters, any case: JAN..DEC = 1..12, SUN..SAT = 0..6;
 * advanced past it); -1 when there is none or the field takes no names. */
static int name(const field_spec *f, const char **p) {
    static const char *const months[12] = {"jan", "feb", "mar", "apr", "may", "jun",
                                           "jul", "aug", "sep", "oct", "nov", "dec"};
    static const char *const days[7] = {"sun", "mon", "tue", "wed", "thu", "fri", "sat"};
    const int month = !strcmp(f->name, "month"), dow = !strcmp(f->name, "day-of-week");
    const char *s = *p;
    if (!(month || dow) || !isalpha((unsigned char)s[0]) || !isalpha((unsigned char)s[1]) ||
        !isalpha((unsigned char)s[2]) || isalpha((unsigned char)s[3]))
        return -1;
    const char *const *table = month ? months : days;
    for (int i = 0; i < (month ? 12 : 7); i++)
        if (tolower((unsigned char)s[0]) == table[i][0] &&
            tolower((unsigned char)s[1]) == table[i][1] &&
            tolower((unsigned char)s[2]) == table[i][2]) {
            *p += 3;
            return month ? i + 1 : i;
        }
    return -1;
}

/* A field's value at *p: a number, or a name where the field has them. */
static int value(const field_spec *f, const char **p) {
    return isalpha((unsigned char)**p) ? name(f, p) : number(p);
}

/* One field's text [s, e) into bits. */
static int parse_field(const field_spec *f, const char *s, const char *e, uint64_t *bits,
                       chord_err *err) {
    char text[128];
    size_t len = (size_t)(e - s);
    if (len >= sizeof text) return chord_err_set(err, "cron: %s: too long", f->name);
    memcpy(text, s, len);
    text[len] = '\0';
    *bits = 0;
    char *save = NULL;
    for (char *item = strtok_r(text, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        const char *p = item;
        int a, b, step = 1;
        if (*p == '*') {
            a = f->lo;
            b = f->end;
            p++;
        } else {
            a = value(f, &p);
            if (a < 0)
                return chord_err_set(err, "cron: %s: \"%s\" is not a number%s", f->name, item,
                                     f->lo == 1 && f->hi == 12 ? " or a month name (JAN-DEC)"
                                     : f->hi == 7              ? " or a day name (SUN-SAT)"
                                                               : "");
            b = a;
            if (*p == '-') {
                p++;
                b = value(f, &p);
                if (b < 0)
                    return chord_err_set(err, "cron: %s: \"%s\": a range needs an end", f->name,
                                         item);
            } else if (*p == '/') {
                b = a > f->end ? a : f->end; /* N/STEP: from N to the end */
            }
        }
        if (*p == '/') {
            p++;
            step = number(&p);
            if (step < 1)
                return chord_err_set(err, "cron: %s: \"%s\": a step is a number >= 1", f->name,
                                     item);
        }
        if (*p) return chord_err_set(err, "cron: %s: \"%s\": unexpected \"%s\"", f->name, item, p);
        if (a < f->lo || a > f->hi || b < f->lo || b > f->hi)
            return chord_err_set(err, "cron: %s: \"%s\" is outside %d-%d", f->name, item, f->lo,
                                 f->hi);
        if (a > b)
            return chord_err_set(err, "cron: %s: \"%s\": the range runs backwards", f->name, item);
        for (int v = a; v <= b; v += step)
            *bits |= 1ull << v;
    }
    if (!*bits) return chord_err_set(err, "cron: %s: empty", f->name);
    return 0;
}

/* The nicknames of Vixie cron and croniter: the five-field expression each stands for. */
static const char *macro(const char *text) {
    static const char *const names[][2] = {{"@yearly", "0 0 1 1 *"},  {"@annually", "0 0 1 1 *"},
                                           {"@monthly", "0 0 1 * *"}, {"@weekly", "0 0 * * 0"},
                                           {"@daily", "0 0 * * *"},   {"@midnight", "0 0 * * *"},
                                           {"@hourly", "0 * * * *"}};
    size_t len = strlen(text);
    while (len > 0 && isspace((unsigned char)text[len - 1]))
        len--;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strlen(names[i][0]) == len && !strncasecmp(text, names[i][0], len)) return names[i][1];
    return NULL;
}

int cron_parse(const char *text, cron_expr *out, chord_err *err) {
    memset(out, 0, sizeof *out);
    while (text && isspace((unsigned char)*text))
        text++;
    if (text && *text == '@') {
        const char *expanded = macro(text);
        if (!expanded)
            return chord_err_set(err,
                                 "cron: \"%s\" is not one of @yearly, @annually, @monthly, "
                                 "@weekly, @daily, @midnight, @hourly",
                                 text);
        text = expanded;
    }
    const char *start[6], *end[6];
    int n = 0;
    const char *p = text ? text : "";
    while (*p) {
        while (isspace((unsigned char)*p))
            p++;
        if (!*p) break;
        if (n == 6) return chord_err_set(err, "cron: more than 6 fields");
        start[n] = p;
        while (*p && !isspace((unsigned char)*p))
            p++;
        end[n++] = p;
    }
    if (n != 5 && n != 6)
        return chord_err_set(err,
                             "cron: %d fields; want 5 (minute hour day-of-month month "
                             "day-of-week) or 6 (a leading second)",
                             n);
    uint64_t bits[6];
    int first = n == 5 ? 1 : 0; /* five fields: second 0 */
    bits[0] = 1;
    for (int i = 0; i < n; i++)
        if (parse_field(&fields[first + i], start[i], end[i], &bits[first + i], err)) return -1;
    out->second = bits[0];
    out->minute = bits[1];
    out->hour = (uint32_t)bits[2];
    out->dom = (uint32_t)bits[3];
    out->month = (uint32_t)bits[4];
    out->dow = (uint32_t)(bits[5] & 0x7f);
    if (bits[5] & (1u << 7)) out->dow |= 1; /* 7 is Sunday too */
    /* a day field is unrestricted when it is exactly "*" (croniter's reading) */
    out->dom_any = end[first == 1 ? 2 : 3] - start[first == 1 ? 2 : 3] == 1 &&
                   *start[first == 1 ? 2 : 3] == '*';
    out->dow_any = end[first == 1 ? 4 : 5] - start[first == 1 ? 4 : 5] == 1 &&
                   *start[first == 1 ? 4 : 5] == '*';
    return 0;
}

static int day_matches(const cron_expr *c, const struct tm *tm) {
    int dom = (c->dom >> tm->tm_mday) & 1, dow = (c->dow >> tm->tm_wday) & 1;
    if (c->dom_any || c->dow_any) return dom && dow;
    return dom || dow;
}

int64_t cron_next(const cron_expr *c, int64_t after_ms) {
    time_t t = (time_t)(after_ms >= 0 ? after_ms / 1000 : (after_ms - 999) / 1000) + 1;
    const time_t limit = t + (time_t)8 * 366 * 86400;
    struct tm tm;
    if (!gmtime_r(&t, &tm)) return -1;
    while (t <= limit) {
        int carry = 0;
        if (!((c->month >> (tm.tm_mon + 1)) & 1)) {
            tm.tm_mon++;
            tm.tm_mday = 1;
            tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
            carry = 1;
        } else if (!day_matches(c, &tm)) {
            tm.tm_mday++;
            tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
            carry = 1;
        } else if (!((c->hour >> tm.tm_hour) & 1)) {
            tm.tm_hour++;
            tm.tm_min = tm.tm_sec = 0;
            carry = 1;
        } else if (!((c->minute >> tm.tm_min) & 1)) {
            tm.tm_min++;
            tm.tm_sec = 0;
            carry = 1;
        } else if (!((c->second >> tm.tm_sec) & 1)) {
            tm.tm_sec++;
            carry = 1;
        }
        if (!carry) return (int64_t)t * 1000;
        tm.tm_isdst = 0;
        t = timegm(&tm); /* normalises the field that ran over */
        if (t == (time_t)-1 || !gmtime_r(&t, &tm)) return -1;
    }
    return -1;
}
