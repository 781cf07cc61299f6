/* numtext.c — chord_number_text (numtext.h): ECMAScript's Number-to-String layout over the
 * shortest round-trip digits, found by asking printf for 1, 2, ... 17 significant digits and
 * keeping the first that strtod reads back as the same double (glibc rounds both correctly). */
#include "server/base/numtext.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

size_t chord_number_text(double v, char out[CHORD_NUMBER_TEXT_MAX]) {
    if (isnan(v)) return (size_t)snprintf(out, CHORD_NUMBER_TEXT_MAX, "NaN");
    if (isinf(v))
        return (size_t)snprintf(out, CHORD_NUMBER_TEXT_MAX, v < 0 ? "-Infinity" : "Infinity");
    if (v == 0) return (size_t)snprintf(out, CHORD_NUMBER_TEXT_MAX, "0"); /* -0.0 too */
    char sci[40];
    for (int p = 0; p <= 16; p++) {
        snprintf(sci, sizeof sci, "%.*e", p, fabs(v));
        if (strtod(sci, NULL) == fabs(v)) break;
    }
    /* sci is "d[.ddd]e±X": the digits s (k of them) and n = X + 1, so that v = s·10^(n-k) */
    char digits[24];
    int k = 0;
    const char *p = sci;
    for (; *p && *p != 'e'; p++)
        if (*p != '.') digits[k++] = *p;
    while (k > 1 && digits[k - 1] == '0')
        k--;
    digits[k] = '\0';
    int n = atoi(p + 1) + 1;
    size_t len = 0;
    char *o = out;
    if (v < 0) o[len++] = '-';
    if (k <= n && n <= 21) { /* an integer: the digits, then n - k zeros */
        memcpy(o + len, digits, (size_t)k);
        len += (size_t)k;
        for (int i = 0; i < n - k; i++)
            o[len++] = '0';
    } else if (0 < n && n <= 21) { /* a point inside the digits */
        memcpy(o + len, digits, (size_t)n);
        len += (size_t)n;
        o[len++] = '.';
        memcpy(o + len, digits + n, (size_t)(k - n));
        len += (size_t)(k - n);
    } else if (-6 < n && n <= 0) { /* 0.000ddd */
        o[len++] = '0';
        o[len++] = '.';
        for (int i = 0; i < -n; i++)
            o[len++] = '0';
        memcpy(o + len, digits, (size_t)k);
        len += (size_t)k;
    } else { /* d[.ddd]e±(n-1) */
        o[len++] = digits[0];
        if (k > 1) {
            o[len++] = '.';
            memcpy(o + len, digits + 1, (size_t)(k - 1));
            len += (size_t)(k - 1);
        }
        len += (size_t)snprintf(o + len, CHORD_NUMBER_TEXT_MAX - len, "e%c%d",
                                n - 1 < 0 ? '-' : '+', abs(n - 1));
    }
    o[len] = '\0';
    return len;
}
