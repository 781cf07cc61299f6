/* err.h — the one error-carrying convention of chord.
 *
 * Functions that can fail return 0 on success and -1 on failure, and fill a caller-owned
 * chord_err with a message that names what went wrong (the field, the line, the file).
 * Callers add context on the way up with chord_err_prefix. A NULL chord_err is allowed. */
#ifndef CHORD_BASE_ERR_H
#define CHORD_BASE_ERR_H

#include <stddef.h>

#define CHORD_ERR_MSG 1024

typedef struct chord_err {
    int code;                 /* optional category (see CHORD_E_*); 0 when unset */
    char msg[CHORD_ERR_MSG];
} chord_err;

/* Categories transports map to HTTP / gRPC status codes. */
enum {
    CHORD_E_NONE = 0,
    CHORD_E_INVALID = 1,      /* bad input: 400 / INVALID_ARGUMENT */
    CHORD_E_NOT_FOUND = 2,    /* 404 / NOT_FOUND */
    CHORD_E_CONFLICT = 3,     /* 409 / FAILED_PRECONDITION */
    CHORD_E_TOO_LARGE = 4,    /* 413 / RESOURCE_EXHAUSTED */
    CHORD_E_IO = 5,           /* 500 / INTERNAL (disk, database) */
    CHORD_E_INTERNAL = 6,     /* 500 / INTERNAL */
    CHORD_E_UNAVAILABLE = 7,  /* 503 / UNAVAILABLE */
    /* 8 is the service layer's SVC_E_BUSY (server/service.h): 429; 16 its SVC_E_KEY_REUSED */
    CHORD_E_NO_SPACE = 9,     /* 507 / RESOURCE_EXHAUSTED: the disk or the database is full */
};

/* The category of a failed file operation's errno: CHORD_E_NO_SPACE for ENOSPC and EDQUOT (the
 * client may retry once space is freed), CHORD_E_IO otherwise. */
int chord_errno_code(int e);

/* Sets the message (printf-style) with category CHORD_E_INVALID unless one is set. Returns -1. */
int chord_err_set(chord_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Same, with an explicit category. Returns -1. */
int chord_err_setc(chord_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* "out of memory" with category CHORD_E_INTERNAL (a failed host allocation). Returns -1. */
int chord_err_oom(chord_err *err);
/* Prepends "<context>: " to the current message. Returns -1. */
int chord_err_prefix(chord_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Clears the error. */
void chord_err_clear(chord_err *err);

#endif
