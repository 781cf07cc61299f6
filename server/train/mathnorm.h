/* mathnorm.h — MATH-style answer extraction, normalisation and comparison for the math_boxed
 * verifier (the Hendrycks MATH `is_equiv` / `strip_string` family, as used by verl and
 * Trinity-RFT), plus exact rational comparison of numbers.
 *
 * It does not do symbolic algebra: two answers are equal when their normalised strings are equal,
 * when both are numbers with the same value, or when both are lists whose elements are equal.
 * Every function runs in time linear-ish in its input, which is capped at MATHNORM_MAX_LEN bytes.
 * All functions are pure and thread-safe. */
#ifndef CHORD_TRAIN_MATHNORM_H
#define CHORD_TRAIN_MATHNORM_H

#include <stdbool.h>
#include <stddef.h>

/* Longest answer (gold or predicted, before normalisation) the normaliser accepts, in bytes. */
#define MATHNORM_MAX_LEN 16384
/* Most element comparisons one mathnorm_equiv may make (nested unordered lists). */
#define MATHNORM_MAX_COMPARISONS 100000

/* Finds the content of the LAST `\boxed{...}` or `\fbox{...}` in text (balanced braces; also the
 * brace-less `\boxed 5` form). On success sets *start / *len to the content inside the braces and
 * returns true; returns false when there is none or when the last one is unterminated. */
bool mathnorm_last_boxed(const char *text, const char **start, size_t *len);

/* Normalises an answer (len bytes at in) MATH-style into a malloc'd NUL-terminated string.
 * Returns NULL when the input is longer than MATHNORM_MAX_LEN or memory runs out. */
char *mathnorm_normalize(const char *in, size_t len);

/* Result of comparing a gold answer with a predicted one. */
typedef enum mathnorm_verdict {
    MATHNORM_EQUAL = 0,
    MATHNORM_DIFFERENT = 1,
    MATHNORM_TOO_LONG = 2, /* an input exceeds MATHNORM_MAX_LEN: no verdict */
    MATHNORM_NOMEM = 3,
    MATHNORM_TOO_COMPLEX = 4, /* nested lists over MATHNORM_MAX_COMPARISONS: no verdict */
} mathnorm_verdict;

/* Compares a gold answer and a predicted answer (both raw, not yet normalised; NUL-terminated).
 * A gold answer wrapped in `\boxed{}` or `$...$` is unwrapped first. */
mathnorm_verdict mathnorm_equiv(const char *gold, const char *pred);

#endif
