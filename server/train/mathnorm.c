/* mathnorm.c — MATH-style answer normalisation and comparison (see mathnorm.h).
 *
 * The rules follow Hendrycks' MATH `strip_string` (what verl / Trinity-RFT's math reward use),
 * made safe for arbitrary model output: every pass is one left-to-right scan over a buffer whose
 * size is capped, recursion is depth-capped, and nothing is evaluated symbolically. On top of the
 * string rules, numbers compare by exact rational value (so 0.5 = \frac{1}{2} = 1/2 = 0.50) and
 * comma lists compare element-wise (bare lists and sets ignore order, tuples and intervals don't).
 *
 * Not done on purpose: symbolic equivalence (\frac{\sqrt3}{2} vs \frac{1}{2}\sqrt3), equation
 * rescaling (2x+4y=6 is not 3x+... answer-equal to x+2y=3: MATH answers are canonical forms), and
 * percent conversion (50\% is the number 50, never 0.5 — the % sign is a unit as in MATH). */
#include "server/train/mathnorm.h"

#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server/base/buf.h"

/* Normalisation can grow a string (\frac12 -> \frac{1}{2}); bound the growth. */
#define MS_HARD_CAP (4 * MATHNORM_MAX_LEN + 64)
#define MAX_DEPTH 32
#define MAX_LIST 64

/* ---- a capped growable string ---- */

/* The text a pass builds; it never grows past MS_HARD_CAP. */
typedef chord_buf mstr;

static int ms_putn(mstr *m, const char *p, size_t n) {
    if (m->len + n + 1 > MS_HARD_CAP) return -1;
    return chord_buf_append(m, p, n);
}

static int ms_puts(mstr *m, const char *p) {
    return ms_putn(m, p, strlen(p));
}
static int ms_putc(mstr *m, char c) {
    return ms_putn(m, &c, 1);
}

/* Replaces *m by the scan output *out (takes ownership). */
static void ms_swap(mstr *m, mstr *out) {
    chord_buf_free(m);
    *m = *out;
    memset(out, 0, sizeof *out);
}

static bool starts_with(const char *s, size_t n, const char *prefix) {
    size_t k = strlen(prefix);
    return n >= k && memcmp(s, prefix, k) == 0;
}

/* Length of the command name after a backslash at s[0] (letters only), 0 when s[1] is no letter. */
static size_t command_len(const char *s, size_t n) {
    size_t i = 1;
    while (i < n && isalpha((unsigned char)s[i]))
        i++;
    return i - 1;
}

/* Index just past the group starting with the open char at s[0] (balanced, skipping escaped
 * braces), or 0 when unbalanced. */
static size_t group_end(const char *s, size_t n, char open, char close) {
    int depth = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\\' && i + 1 < n && (s[i + 1] == '{' || s[i + 1] == '}')) {
            i++;
            continue;
        }
        if (s[i] == open)
            depth++;
        else if (s[i] == close && --depth == 0)
            return i + 1;
    }
    return 0;
}

/* ---- boxed extraction ---- */

bool mathnorm_last_boxed(const char *text, const char **start, size_t *len) {
    const char *last = NULL;
    size_t skip = 0;
    for (const char *p = text; (p = strchr(p, '\\')) != NULL; p++) {
        if (strncmp(p, "\\boxed", 6) == 0 && !isalpha((unsigned char)p[6])) {
            last = p;
            skip = 6;
        } else if (strncmp(p, "\\fbox", 5) == 0 && !isalpha((unsigned char)p[5])) {
            last = p;
            skip = 5;
        }
    }
    if (!last) return false;
    const char *q = last + skip;
    if (*q == '{') {
        size_t end = group_end(q, strlen(q), '{', '}');
        if (end == 0) return false; /* unterminated: the response was cut inside the box */
        *start = q + 1;
        *len = end - 2;
        return true;
    }
    /* `\boxed 5$`: the brace-less form takes the token after the space. */
    if (*q != ' ') return false;
    while (*q == ' ')
        q++;
    size_t n = 0;
    while (q[n] && q[n] != '$' && !isspace((unsigned char)q[n]))
        n++;
    if (n == 0) return false;
    *start = q;
    *len = n;
    return true;
}

/* ---- normalisation passes ---- */

/* Replaces every occurrence of `from` by `to`. */
static int pass_replace(mstr *m, const char *from, const char *to) {
    if (!strstr(m->data, from)) return 0;
    mstr out = {0};
    size_t k = strlen(from);
    const char *p = m->data;
    for (const char *hit; (hit = strstr(p, from)) != NULL; p = hit + k) {
        if (ms_putn(&out, p, (size_t)(hit - p)) || ms_puts(&out, to)) goto fail;
    }
    if (ms_puts(&out, p)) goto fail;
    ms_swap(m, &out);
    return 0;
fail:
    chord_buf_free(&out);
    return -1;
}

/* Spacing, sizing and delimiter commands: what each backslash command becomes (NULL = keep). */
static const char *command_rewrite(const char *name, size_t n) {
    static const struct {
        const char *name, *to;
    } table[] = {
        {"left", ""},         {"right", ""},
        {"bigl", ""},         {"bigr", ""},
        {"Bigl", ""},         {"Bigr", ""},
        {"big", ""},          {"Big", ""},
        {"bigg", ""},         {"Bigg", ""},
        {"displaystyle", ""}, {"textstyle", ""},
        {"degree", ""},       {"dfrac", "\\frac"},
        {"tfrac", "\\frac"},  {"cfrac", "\\frac"},
        {"quad", " "},        {"qquad", " "},
        {"leq", "\\le"},      {"geq", "\\ge"},
        {"neq", "\\ne"},      {"emptyset", "\\varnothing"},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        if (strlen(table[i].name) == n && memcmp(table[i].name, name, n) == 0) return table[i].to;
    }
    return NULL;
}

/* One scan over backslash commands and dollar/percent signs. */
static int pass_commands(mstr *m) {
    mstr out = {0};
    const char *s = m->data;
    size_t n = m->len;
    for (size_t i = 0; i < n;) {
        char c = s[i];
        if (c == '$' || c == '%') { /* math delimiters and percent signs carry no value */
            i++;
            continue;
        }
        if (c == '\n' || c == '\r' || c == '\t') {
            if (ms_putc(&out, ' ')) goto fail;
            i++;
            continue;
        }
        if (c != '\\' || i + 1 >= n) {
            if (ms_putc(&out, c)) goto fail;
            i++;
            continue;
        }
        char d = s[i + 1];
        if (d == '\\') { /* a LaTeX line break (matrix rows): keep as one token */
            if (ms_puts(&out, "\\\\")) goto fail;
            i += 2;
            continue;
        }
        if (d == '!' || d == '$' || d == '%') {
            i += 2;
            continue;
        }
        if (d == ',' || d == ';' || d == ':' || d == ' ') {
            if (ms_putc(&out, ' ')) goto fail;
            i += 2;
            continue;
        }
        size_t k = command_len(s + i, n - i);
        if (k == 0) {
            if (ms_putn(&out, s + i, 2)) goto fail;
            i += 2;
            continue;
        }
        const char *to = command_rewrite(s + i + 1, k);
        if (to ? ms_puts(&out, to) : ms_putn(&out, s + i, k + 1)) goto fail;
        i += k + 1;
    }
    if (!out.data && ms_puts(&out, "")) goto fail;
    ms_swap(m, &out);
    return 0;
fail:
    chord_buf_free(&out);
    return -1;
}

static bool is_text_command(const char *s, size_t n, size_t *cmd_len) {
    static const char *names[] = {"\\text{",   "\\textbf{", "\\textrm{",
                                  "\\textit{", "\\mathrm{", "\\mathbf{",
                                  "\\mathit{", "\\mbox{",   "\\textnormal{"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (starts_with(s, n, names[i])) {
            *cmd_len = strlen(names[i]) - 1; /* up to, not including, the brace */
            return true;
        }
    }
    return false;
}

static bool has_digit_or_pi(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (isdigit((unsigned char)s[i])) return true;
        if (starts_with(s + i, n - i, "\\pi")) return true;
    }
    return false;
}

/* Units: a trailing `\text{...}` (optionally `^2` / `^{...}` after it) after a numeric value is
 * dropped, repeatedly ("5\text{ cm}^2" -> "5"). Then every remaining text wrapper is unwrapped
 * ("\text{Monday}" -> "Monday"). */
static int pass_units(mstr *m) {
    for (;;) {
        const char *s = m->data;
        size_t n = m->len;
        while (n > 0 && s[n - 1] == ' ')
            n--;
        /* find the start of a text command whose group ends the string (modulo an exponent) */
        size_t found = SIZE_MAX;
        for (size_t i = 0; i < n; i++) {
            size_t cl;
            if (s[i] != '\\' || !is_text_command(s + i, n - i, &cl)) continue;
            size_t end = group_end(s + i + cl, n - i - cl, '{', '}');
            if (end == 0) break;
            size_t j = i + cl + end;
            while (j < n && s[j] == ' ')
                j++;
            if (j < n && s[j] == '^') {
                j++;
                if (j < n && s[j] == '{') {
                    size_t e = group_end(s + j, n - j, '{', '}');
                    j = e ? j + e : n + 1;
                } else if (j < n) {
                    j++;
                }
            }
            if (j == n) found = i;
        }
        if (found == SIZE_MAX || !has_digit_or_pi(s, found)) break;
        size_t keep = found;
        while (keep > 0 && s[keep - 1] == ' ')
            keep--;
        if (keep == 0) break;
        m->len = keep;
        m->data[keep] = '\0';
    }
    /* unwrap the rest */
    if (!strstr(m->data, "\\text") && !strstr(m->data, "\\math") && !strstr(m->data, "\\mbox"))
        return 0;
    mstr out = {0};
    const char *s = m->data;
    size_t n = m->len;
    for (size_t i = 0; i < n;) {
        size_t cl, end;
        if (s[i] == '\\' && is_text_command(s + i, n - i, &cl) &&
            (end = group_end(s + i + cl, n - i - cl, '{', '}')) != 0) {
            if (ms_putn(&out, s + i + cl + 1, end - 2)) goto fail;
            i += cl + end;
            continue;
        }
        if (ms_putc(&out, s[i])) goto fail;
        i++;
    }
    if (!out.data && ms_puts(&out, "")) goto fail;
    ms_swap(m, &out);
    return 0;
fail:
    chord_buf_free(&out);
    return -1;
}

/* ".5" -> "0.5" wherever a '.' starts a number. */
static int pass_leading_zero(mstr *m) {
    mstr out = {0};
    const char *s = m->data;
    for (size_t i = 0; i < m->len; i++) {
        if (s[i] == '.' && isdigit((unsigned char)s[i + 1]) &&
            (i == 0 || !isdigit((unsigned char)s[i - 1]))) {
            if (ms_putc(&out, '0')) goto fail;
        }
        if (ms_putc(&out, s[i])) goto fail;
    }
    if (!out.data && ms_puts(&out, "")) goto fail;
    ms_swap(m, &out);
    return 0;
fail:
    chord_buf_free(&out);
    return -1;
}

static int emit_args(mstr *out, const char *s, size_t n, size_t *i, int nargs, int depth);

/* Scans s[0..n) and writes it to out, rewriting `\sqrt2` -> `\sqrt{2}` and `\frac12` ->
 * `\frac{1}{2}` (LaTeX reads one token per missing brace group). */
static int scan_fracs(mstr *out, const char *s, size_t n, int depth) {
    for (size_t i = 0; i < n;) {
        if (s[i] == '\\' &&
            (starts_with(s + i, n - i, "\\frac") || starts_with(s + i, n - i, "\\sqrt"))) {
            bool frac = s[i + 1] == 'f';
            if (i + 5 < n && isalpha((unsigned char)s[i + 5])) { /* \fracture, \sqrtx: not ours */
                size_t k = command_len(s + i, n - i);
                if (ms_putn(out, s + i, k + 1)) return -1;
                i += k + 1;
                continue;
            }
            if (ms_putn(out, s + i, 5)) return -1;
            i += 5;
            if (!frac) { /* optional index: \sqrt[3]{x} */
                size_t j = i;
                while (j < n && s[j] == ' ')
                    j++;
                if (j < n && s[j] == '[') {
                    size_t e = group_end(s + j, n - j, '[', ']');
                    if (e) {
                        if (ms_putn(out, s + j, e)) return -1;
                        i = j + e;
                    }
                }
            }
            if (emit_args(out, s, n, &i, frac ? 2 : 1, depth) != 0) return -1;
            continue;
        }
        if (ms_putc(out, s[i])) return -1;
        i++;
    }
    return 0;
}

/* Emits nargs brace-wrapped arguments read from s at *i. */
static int emit_args(mstr *out, const char *s, size_t n, size_t *i, int nargs, int depth) {
    for (int a = 0; a < nargs; a++) {
        size_t j = *i;
        while (j < n && s[j] == ' ')
            j++;
        if (j >= n) return 0; /* missing argument: leave as is */
        if (s[j] == '{') {
            size_t e = group_end(s + j, n - j, '{', '}');
            if (e == 0) { /* unbalanced: copy the rest verbatim */
                if (ms_putn(out, s + j, n - j)) return -1;
                *i = n;
                return 0;
            }
            if (ms_putc(out, '{')) return -1;
            if (depth >= MAX_DEPTH ? ms_putn(out, s + j + 1, e - 2)
                                   : scan_fracs(out, s + j + 1, e - 2, depth + 1))
                return -1;
            if (ms_putc(out, '}')) return -1;
            *i = j + e;
            continue;
        }
        if (s[j] == '}' || s[j] == '^' || s[j] == '_') return 0; /* not an argument */
        size_t tok = 1;
        if (s[j] == '\\') {
            size_t k = command_len(s + j, n - j);
            tok = k ? k + 1 : (j + 1 < n ? 2 : 1);
        }
        if (ms_putc(out, '{') || ms_putn(out, s + j, tok) || ms_putc(out, '}')) return -1;
        *i = j + tok;
    }
    return 0;
}

static int pass_fracs(mstr *m) {
    if (!strstr(m->data, "\\frac") && !strstr(m->data, "\\sqrt")) return 0;
    mstr out = {0};
    if (scan_fracs(&out, m->data, m->len, 0) != 0 || (!out.data && ms_puts(&out, ""))) {
        chord_buf_free(&out);
        return -1;
    }
    ms_swap(m, &out);
    return 0;
}

static void pass_remove_spaces(mstr *m) {
    size_t w = 0;
    for (size_t r = 0; r < m->len; r++) {
        if (m->data[r] != ' ') m->data[w++] = m->data[r];
    }
    m->len = w;
    m->data[w] = '\0';
}

/* A single variable name: x, k, x1, x_1, x_{12}, \theta. */
static bool is_variable(const char *s, size_t n) {
    if (n == 0) return false;
    if (s[0] == '\\') return command_len(s, n) + 1 == n && n > 1;
    if (!isalpha((unsigned char)s[0])) return false;
    if (n == 1) return true;
    size_t i = 1;
    if (s[i] == '_') i++;
    if (i < n && s[i] == '{' && s[n - 1] == '}') {
        for (size_t j = i + 1; j < n - 1; j++)
            if (!isalnum((unsigned char)s[j])) return false;
        return n - i > 2;
    }
    if (i == n) return false;
    for (; i < n; i++)
        if (!isdigit((unsigned char)s[i])) return false;
    return true;
}

/* "x=5" -> "5" when the left side is one variable and there is exactly one '='. */
static void pass_assignment(mstr *m) {
    char *eq = strchr(m->data, '=');
    if (!eq || strchr(eq + 1, '=')) return;
    if (eq > m->data && (eq[-1] == '<' || eq[-1] == '>' || eq[-1] == '!')) return;
    if (!is_variable(m->data, (size_t)(eq - m->data))) return;
    size_t rest = m->len - (size_t)(eq + 1 - m->data);
    memmove(m->data, eq + 1, rest + 1);
    m->len = rest;
}

/* Final cosmetic rules: "(A)" -> "A" (multiple choice), "a/b" -> "\frac{a}{b}" for integers,
 * a trailing "." after a number dropped. */
static int pass_final(mstr *m) {
    char *s = m->data;
    size_t n = m->len;
    if (n == 3 && s[0] == '(' && s[2] == ')' && isupper((unsigned char)s[1])) {
        s[0] = s[1];
        s[1] = '\0';
        m->len = 1;
        return 0;
    }
    if (n >= 2 && s[n - 1] == '.' && isdigit((unsigned char)s[n - 2])) {
        s[--n] = '\0';
        m->len = n;
    }
    const char *slash = strchr(s, '/');
    if (!slash || strchr(slash + 1, '/')) return 0;
    size_t a0 = (s[0] == '-') ? 1 : 0, alen = (size_t)(slash - s) - a0;
    size_t blen = n - (size_t)(slash - s) - 1;
    if (alen == 0 || blen == 0) return 0;
    for (size_t i = a0; i < a0 + alen; i++)
        if (!isdigit((unsigned char)s[i])) return 0;
    for (size_t i = 0; i < blen; i++)
        if (!isdigit((unsigned char)slash[1 + i])) return 0;
    mstr out = {0};
    if (ms_putn(&out, s, a0) || ms_puts(&out, "\\frac{") || ms_putn(&out, s + a0, alen) ||
        ms_puts(&out, "}{") || ms_putn(&out, slash + 1, blen) || ms_puts(&out, "}")) {
        chord_buf_free(&out);
        return -1;
    }
    ms_swap(m, &out);
    return 0;
}

char *mathnorm_normalize(const char *in, size_t len) {
    if (len > MATHNORM_MAX_LEN) return NULL;
    while (len > 0 && isspace((unsigned char)in[0]))
        in++, len--;
    while (len > 0 && isspace((unsigned char)in[len - 1]))
        len--;
    mstr m = {0};
    if (ms_putn(&m, in, len)) goto fail;
    /* Unicode spellings models like to use. */
    if (pass_replace(&m, "\xe2\x88\x92", "-") || pass_replace(&m, "\xc2\xb0", "") ||
        pass_replace(&m, "\xc2\xa0", " "))
        goto fail;
    /* Degrees go before the command scan, which would otherwise keep \circ. */
    if (pass_replace(&m, "^{\\circ}", "") || pass_replace(&m, "^\\circ", "")) goto fail;
    if (pass_commands(&m) || pass_units(&m)) goto fail;
    if (pass_replace(&m, "{,}", ",")) goto fail; /* 1{,}000 */
    if (pass_leading_zero(&m) || pass_fracs(&m)) goto fail;
    pass_remove_spaces(&m);
    pass_assignment(&m);
    if (pass_final(&m)) goto fail;
    return m.data;
fail:
    chord_buf_free(&m);
    return NULL;
}

/* ---- numbers ---- */

typedef __int128 i128;

typedef struct number {
    i128 num, den;   /* den > 0, reduced */
    bool decimal;    /* written as a decimal literal (not a fraction) */
    int frac_digits; /* digits after the point, for decimal literals */
} number;

static const i128 NUM_LIMIT = (i128)1000000000000000000LL; /* 1e18 */

static i128 i128_abs(i128 x) {
    return x < 0 ? -x : x;
}

static i128 gcd128(i128 a, i128 b) {
    a = i128_abs(a);
    b = i128_abs(b);
    while (b) {
        i128 t = a % b;
        a = b;
        b = t;
    }
    return a;
}

static i128 pow10_128(int k) {
    i128 p = 1;
    while (k-- > 0)
        p *= 10;
    return p;
}

/* True when s[0..n) is [-+]d{1,3}(,ddd)+(.d+)? — commas as thousands separators, strictly. */
static bool thousands_form(const char *s, size_t n) {
    size_t i = (n > 0 && (s[0] == '-' || s[0] == '+')) ? 1 : 0, first = 0, groups = 0;
    while (i < n && isdigit((unsigned char)s[i]))
        i++, first++;
    if (first < 1 || first > 3) return false;
    while (i < n && s[i] == ',') {
        size_t g = 0;
        for (i++; i < n && isdigit((unsigned char)s[i]); i++)
            g++;
        if (g != 3) return false;
        groups++;
    }
    if (groups == 0) return false;
    if (i < n && s[i] == '.') {
        size_t f = 0;
        for (i++; i < n && isdigit((unsigned char)s[i]); i++)
            f++;
        if (f == 0) return false;
    }
    return i == n;
}

/* Parses a plain decimal literal s[0..n): [-+]digits[.digits], or the thousands form above when
 * allow_commas. At most 18 significant and 18 fractional digits (else: not a number). */
static bool parse_decimal(const char *s, size_t n, bool allow_commas, number *out) {
    char buf[64];
    if (allow_commas && memchr(s, ',', n)) {
        if (n >= sizeof buf || !thousands_form(s, n)) return false;
        size_t w = 0;
        for (size_t i = 0; i < n; i++)
            if (s[i] != ',') buf[w++] = s[i];
        s = buf;
        n = w;
    }
    size_t i = 0;
    bool neg = false;
    if (i < n && (s[i] == '-' || s[i] == '+')) neg = s[i++] == '-';
    i128 mant = 0;
    int digits = 0, frac = 0;
    bool seen_digit = false, point = false;
    for (; i < n; i++) {
        char c = s[i];
        if (isdigit((unsigned char)c)) {
            if (mant != 0 || c != '0') digits++;
            if (digits > 18) return false;
            mant = mant * 10 + (c - '0');
            seen_digit = true;
            if (point && ++frac > 18) return false;
        } else if (c == '.' && !point) {
            point = true;
        } else {
            return false;
        }
    }
    if (!seen_digit) return false;
    out->num = neg ? -mant : mant;
    out->den = pow10_128(frac);
    out->decimal = true;
    out->frac_digits = frac;
    i128 g = gcd128(out->num, out->den);
    if (g > 1) {
        out->num /= g;
        out->den /= g;
    }
    return true;
}

/* Parses a normalised number: a decimal literal, [-]\frac{D}{D}, or an integer ratio. */
static bool parse_number(const char *s, number *out) {
    size_t n = strlen(s);
    if (parse_decimal(s, n, true, out)) return true;
    size_t i = 0;
    bool neg = false;
    if (s[0] == '-' || s[0] == '+') neg = s[i++] == '-';
    if (!starts_with(s + i, n - i, "\\frac{")) return false;
    i += 5;
    size_t e1 = group_end(s + i, n - i, '{', '}');
    if (e1 == 0 || i + e1 >= n || s[i + e1] != '{') return false;
    size_t j = i + e1;
    size_t e2 = group_end(s + j, n - j, '{', '}');
    if (e2 == 0 || j + e2 != n) return false;
    number a, b;
    if (!parse_decimal(s + i + 1, e1 - 2, false, &a) ||
        !parse_decimal(s + j + 1, e2 - 2, false, &b))
        return false;
    if (b.num == 0) return false;
    /* (a.num/a.den) / (b.num/b.den) */
    i128 num = a.num * b.den, den = a.den * b.num;
    if (den < 0) num = -num, den = -den;
    i128 g = gcd128(num, den);
    if (g > 1) num /= g, den /= g;
    if (i128_abs(num) > NUM_LIMIT || den > NUM_LIMIT) return false;
    out->num = neg ? -num : num;
    out->den = den;
    out->decimal = false;
    out->frac_digits = 0;
    return true;
}

static i128 floor_div(i128 a, i128 b) { /* b > 0 */
    i128 q = a / b;
    if ((a % b != 0) && (a < 0)) q--;
    return q;
}

/* x rounded to 6 decimal places, scaled by 1e6. */
static i128 round6(const number *x) {
    return floor_div(2 * x->num * 1000000 + x->den, 2 * x->den);
}

/* True when the reduced denominator has a prime factor other than 2 and 5. */
static bool non_terminating(i128 den) {
    while (den % 2 == 0)
        den /= 2;
    while (den % 5 == 0)
        den /= 5;
    return den != 1;
}

static bool numbers_equal(const number *a, const number *b) {
    if (a->num == b->num && a->den == b->den) return true;
    /* A fraction with no finite decimal form (1/3) accepts a decimal written to >= 6 places that
     * rounds to the same 6 places (0.3333333), as math-verify does; 0.333 stays wrong. */
    const number *dec = a->decimal ? a : b, *fr = a->decimal ? b : a;
    if (dec->decimal && !fr->decimal && non_terminating(fr->den) && dec->frac_digits >= 6)
        return round6(dec) == round6(fr);
    return false;
}

/* ---- comparison ---- */

/* Splits s at top-level commas (outside (), [], {}). Returns the number of parts (0 when more
 * than MAX_LIST). */
static size_t split_top(const char *s, size_t n, const char **part, size_t *plen) {
    size_t count = 0, start = 0;
    int depth = 0;
    for (size_t i = 0; i <= n; i++) {
        char c = i < n ? s[i] : ',';
        if (c == '\\' && i + 1 < n) {
            if (s[i + 1] == '{')
                depth++;
            else if (s[i + 1] == '}')
                depth--;
            i++;
            continue;
        }
        if (c == '(' || c == '[' || c == '{')
            depth++;
        else if (c == ')' || c == ']' || c == '}')
            depth--;
        else if (c == ',' && depth == 0) {
            if (count == MAX_LIST) return 0;
            part[count] = s + start;
            plen[count] = i - start;
            count++;
            start = i + 1;
        }
    }
    return count;
}

/* Outer wrapper of a list: "(...)", "[...]", "(...]", "[...)", "\{...\}" or none. */
typedef struct wrapper {
    char open[3], close[3];
    size_t lo, hi; /* content is s[lo..hi) */
} wrapper;

/* True when the delimiter opened at s[0] closes exactly at the end of s[0..n): "(1,2)" but not
 * "(1,2),(3,4)". Escaped braces \{ \} count as one delimiter pair. */
static bool closes_at_end(const char *s, size_t n) {
    int depth = 0;
    for (size_t i = 0; i < n; i++) {
        bool escaped = s[i] == '\\' && i + 1 < n && (s[i + 1] == '{' || s[i + 1] == '}');
        char c = escaped ? s[i + 1] : s[i];
        size_t end = escaped ? i + 1 : i;
        if (c == '(' || c == '[' || c == '{') {
            depth++;
        } else if (c == ')' || c == ']' || c == '}') {
            if (--depth == 0) return end == n - 1;
        }
        i = end;
    }
    return false;
}

static void find_wrapper(const char *s, size_t n, wrapper *w) {
    memset(w, 0, sizeof *w);
    w->lo = 0;
    w->hi = n;
    if (n >= 4 && starts_with(s, n, "\\{") && s[n - 2] == '\\' && s[n - 1] == '}') {
        if (!closes_at_end(s, n)) return;
        strcpy(w->open, "\\{");
        strcpy(w->close, "\\}");
        w->lo = 2;
        w->hi = n - 2;
        return;
    }
    if (n >= 2 && (s[0] == '(' || s[0] == '[') && (s[n - 1] == ')' || s[n - 1] == ']')) {
        if (!closes_at_end(s, n)) return;
        w->open[0] = s[0];
        w->close[0] = s[n - 1];
        w->lo = 1;
        w->hi = n - 1;
    }
}

static bool equiv_norm(const char *a, size_t an, const char *b, size_t bn, int depth, long *budget);

static bool equiv_lists(const char *a, size_t an, const char *b, size_t bn, int depth,
                        long *budget) {
    wrapper wa, wb;
    find_wrapper(a, an, &wa);
    find_wrapper(b, bn, &wb);
    if (strcmp(wa.open, wb.open) != 0 || strcmp(wa.close, wb.close) != 0) return false;
    const char *pa[MAX_LIST], *pb[MAX_LIST];
    size_t la[MAX_LIST], lb[MAX_LIST];
    size_t na = split_top(a + wa.lo, wa.hi - wa.lo, pa, la);
    size_t nb = split_top(b + wb.lo, wb.hi - wb.lo, pb, lb);
    if (na < 2 || na != nb) return false;
    /* tuples and intervals are ordered; bare lists ("2, 5") and sets are not */
    bool ordered = wa.open[0] == '(' || wa.open[0] == '[';
    if (ordered) {
        for (size_t i = 0; i < na; i++)
            if (!equiv_norm(pa[i], la[i], pb[i], lb[i], depth + 1, budget)) return false;
        return true;
    }
    bool used[MAX_LIST] = {false};
    for (size_t i = 0; i < na; i++) {
        bool hit = false;
        for (size_t j = 0; j < nb && !hit; j++) {
            if (!used[j] && equiv_norm(pa[i], la[i], pb[j], lb[j], depth + 1, budget))
                used[j] = hit = true;
        }
        if (!hit) return false;
    }
    return true;
}

/* Element comparisons of nested unordered lists are quadratic per level: *budget bounds the total
 * number of comparisons; when it runs out the answer is "different" and *budget is negative. */
static bool equiv_norm(const char *a, size_t an, const char *b, size_t bn, int depth,
                       long *budget) {
    if (an == bn && memcmp(a, b, an) == 0) return true;
    if (depth > MAX_DEPTH || --*budget < 0) return false;
    char *sa = strndup(a, an), *sb = strndup(b, bn);
    bool eq = false;
    if (sa && sb) {
        number x, y;
        if (parse_number(sa, &x) && parse_number(sb, &y))
            eq = numbers_equal(&x, &y);
        else
            eq = equiv_lists(a, an, b, bn, depth, budget);
    }
    free(sa);
    free(sb);
    return eq;
}

/* Unwraps a gold answer given as "\boxed{...}" or "$...$". */
static void unwrap_gold(const char **s, size_t *n) {
    const char *start;
    size_t len;
    if (strstr(*s, "\\boxed") || strstr(*s, "\\fbox")) {
        if (mathnorm_last_boxed(*s, &start, &len)) {
            *s = start;
            *n = len;
        }
    }
}

mathnorm_verdict mathnorm_equiv(const char *gold, const char *pred) {
    size_t gn = strlen(gold), pn = strlen(pred);
    unwrap_gold(&gold, &gn);
    if (gn > MATHNORM_MAX_LEN || pn > MATHNORM_MAX_LEN) return MATHNORM_TOO_LONG;
    char *g = mathnorm_normalize(gold, gn);
    char *p = g ? mathnorm_normalize(pred, pn) : NULL;
    mathnorm_verdict v = MATHNORM_NOMEM;
    long budget = MATHNORM_MAX_COMPARISONS;
    if (g && p) {
        bool eq = equiv_norm(g, strlen(g), p, strlen(p), 0, &budget);
        v = eq ? MATHNORM_EQUAL : budget < 0 ? MATHNORM_TOO_COMPLEX : MATHNORM_DIFFERENT;
    }
    free(g);
    free(p);
    return v;
}
