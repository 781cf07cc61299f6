/* err.c — chord_err helpers (see err.h). */
#include "server/base/err.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static void vset(chord_err *err, const char *fmt, va_list ap) {
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
}

int chord_err_set(chord_err *err, const char *fmt, ...) {
    if (!err) return -1;
    va_list ap;
    va_start(ap, fmt);
    vset(err, fmt, ap);
    va_end(ap);
    if (!err->code) err->code = CHORD_E_INVALID;
    return -1;
}

int chord_err_setc(chord_err *err, int code, const char *fmt, ...) {
    if (!err) return -1;
    va_list ap;
    va_start(ap, fmt);
    vset(err, fmt, ap);
    va_end(ap);
    err->code = code;
    return -1;
}

int chord_err_oom(chord_err *err) {
    return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
}

int chord_err_prefix(chord_err *err, const char *fmt, ...) {
    if (!err) return -1;
    char prefix[CHORD_ERR_MSG];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    char joined[2 * CHORD_ERR_MSG + 4];
    snprintf(joined, sizeof joined, "%s: %s", prefix, err->msg);
    memcpy(err->msg, joined, sizeof err->msg - 1);
    err->msg[sizeof err->msg - 1] = '\0';
    return -1;
}

void chord_err_clear(chord_err *err) {
    if (!err) return;
    err->code = 0;
    err->msg[0] = '\0';
}

int chord_errno_code(int e) {
    return e == ENOSPC || e == EDQUOT ? CHORD_E_NO_SPACE : CHORD_E_IO;
}
