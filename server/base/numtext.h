/* numtext.h — a number as the text a person would write for it: the shortest decimal that reads
 * back as the same double. The one rule by which a JSON number becomes text where text is
 * compared (a dataset's or a rollout request's numeric `answer`, scored by exact / contains /
 * regex verifiers), so `0.1` stays "0.1" and never becomes "0.10000000000000001".
 *
 * The layout is ECMAScript's Number.prototype.toString (what JSON.stringify prints), so JSON
 * users meet no surprise: the fewest significant digits that round-trip, written
 *   - as an integer, without a decimal point, when the value is integral and below 1e21:
 *     1.0 -> "1", 1e20 -> "100000000000000000000", 12345678.0 -> "12345678";
 *   - in plain decimal notation from 1e-6 up: 0.1 -> "0.1", -2.5 -> "-2.5", 1e-6 -> "0.000001";
 *   - in exponent notation outside that range: 1e21 -> "1e+21", 1.5e-7 -> "1.5e-7";
 *   - -0.0 -> "0" (a sign on zero is never what an answer means), NaN -> "NaN",
 *     ±infinity -> "Infinity" / "-Infinity" (JSON has neither; for completeness).
 * Integers that JSON holds exactly (json_integer, up to 2^63) are printed with %lld by the
 * caller, not through a double.
 *
 * Not here: parsing, locale (always '.'), JSON. */
#ifndef CHORD_BASE_NUMTEXT_H
#define CHORD_BASE_NUMTEXT_H

#include <stddef.h>

/* Longest text chord_number_text writes, NUL included ("-1.2345678901234567e-308" and the
 * 21-digit integers fit). */
#define CHORD_NUMBER_TEXT_MAX 32

/* Writes v as described above into out; returns the length (without the NUL). */
size_t chord_number_text(double v, char out[CHORD_NUMBER_TEXT_MAX]);

#endif
