"""cron_reference.py — server/jobs/cron.c against croniter (PyPI, pinned in requirements.txt),
an independent implementation: 3000 random expressions of every shape cron.h accepts (lists,
ranges, steps, N/STEP, both day fields restricted or not, day-of-week 7, a leading seconds
field, month and day names in any case) and the @nicknames from random start times, 6 next times each, compared exactly; then malformed expressions,
each refused with a message naming its field.

Run: python tests/reference/cron_reference.py build/cron_tool"""
import random
import subprocess
import sys
from datetime import datetime, timezone

from croniter import croniter

FIELDS = [("second", 0, 59), ("minute", 0, 59), ("hour", 0, 23), ("day-of-month", 1, 31),
          ("month", 1, 12), ("day-of-week", 0, 7)]


MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]


def named(rng, v, names, lo):
    """v as a number, or (for month and day-of-week) half the time as its name in any case."""
    if names is None or rng.random() < 0.5:
        return f"{v}"
    return "".join(ch.upper() if rng.random() < 0.5 else ch for ch in names[v - lo])


def item(rng, lo, hi, names=None):
    # croniter reads a one-value range "A-A" as "*", and a "*" inside a list as making the whole
    # field "*": both left to the hand-written cases, not generated
    kind = rng.choice(["n", "range", "range_step", "n_step"])
    a = rng.randint(lo, hi - 1)
    b = rng.randint(a + 1, hi)
    step = rng.randint(1, max(1, (hi - lo) // 2))
    na, nb = named(rng, a, names, lo), named(rng, b, names, lo)
    return {"n": na, "range": f"{na}-{nb}", "range_step": f"{na}-{nb}/{step}",
            "n_step": f"{a}/{step}"}[kind]


def field(rng, lo, hi, star_weight, names=None):
    r = rng.random()
    if r < star_weight:
        return "*"
    if r < star_weight + 0.1:
        return f"*/{rng.randint(2, max(2, (hi - lo) // 2))}"
    return ",".join(item(rng, lo, hi, names) for _ in range(rng.randint(1, 3)))


def expression(rng):
    seconds = rng.random() < 0.4
    parts = []
    for name, lo, hi in FIELDS[0 if seconds else 1:]:
        star = {"second": 0.3, "minute": 0.2, "hour": 0.4, "day-of-month": 0.6,
                "month": 0.7, "day-of-week": 0.6}[name]
        if name == "day-of-month":
            hi = 28 if rng.random() < 0.7 else 31  # mostly days every month has
        if name == "day-of-week":
            hi = 6  # croniter reads 7 in a range or a step as "*"; 7 alone is a case below
        f = field(rng, lo, hi, star, {"month": MONTHS, "day-of-week": DAYS}.get(name))
        if name == "day-of-week" and f != "*":
            # croniter reads some lists naming all seven days as "*" (the day fields then AND)
            # and others not: leave those out
            days = set()
            day = lambda t: DAYS.index(t.lower()) if t.isalpha() else int(t)  # noqa: E731
            for it in f.split(","):
                base, _, step = it.partition("/")
                a, _, b = base.partition("-")
                a = 0 if a == "*" else day(a)
                b = day(b) if b else (6 if step or base == "*" else a)
                days |= set(range(a, b + 1, int(step or 1)))
            if len(days) == 7:
                f = "1-5"
        parts.append(f)
    return seconds, parts


def to_croniter(seconds, parts):
    # croniter's six-field form puts the seconds last
    return " ".join(parts[1:] + parts[:1]) if seconds else " ".join(parts)


def main():
    tool = sys.argv[1]
    rng = random.Random(17)
    cases = []
    for _ in range(3000):
        seconds, parts = expression(rng)
        start = rng.randint(1_600_000_000_000, 1_900_000_000_000)
        cases.append((" ".join(parts), to_croniter(seconds, parts), start))
    for expr in ("0 0 * * 7", "30 4 * * 5,7", "0 12 13 * 5", "*/15 9-17 * * 1-5", "0 0 29 2 *",
                 "0 0 31 * *", "59 23 31 12 *", "*/2 * * * * *", "0 30 4 1 1 *", "0 0 1-7 * 1",
                 "0 9 * * MON-FRI", "0 0 1 JAN,jul *", "30 8 * Mar-Oct sat,Sun"):
        for start in (1_700_000_000_000, 1_709_164_800_000, 1_735_689_599_999):
            seconds = len(expr.split()) == 6
            cases.append((expr, to_croniter(seconds, expr.split()), start))
    # the nicknames: ours against croniter reading the same text
    for expr in ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"):
        for start in (1_700_000_000_000, 1_709_164_800_000, 1_735_689_599_999):
            cases.append((expr, expr, start))
    bad = [("61 * * * *", "minute"), ("* 24 * * *", "hour"), ("* * 0 * *", "day-of-month"),
           ("* * * 13 *", "month"), ("* * * * 8", "day-of-week"), ("*/0 * * * *", "minute"),
           ("5-1 * * * *", "minute"), ("x * * * *", "minute"), ("* * * *", "fields"),
           ("1 2 3 4 5 6 7", "fields"), ("60 * * * * *", "second"), ("1- * * * *", "minute"),
           ("* * * JANUARY *", "month"), ("* * * * MONDAY", "day-of-week"),
           ("MON * * * *", "minute"), ("* * JAN * *", "day-of-month"), ("* * * foo *", "month"),
           ("@reboot", "@yearly"), ("@often", "@hourly"),
           ("", "fields")]
    lines = [f"{c}\t{s}\t6" for c, _, s in cases] + [f"{c}\t0\t1" for c, _ in bad]
    out = subprocess.run([tool], input="\n".join(lines) + "\n", capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert len(out) == len(lines), (len(out), len(lines))
    mismatches = 0
    for (ours, theirs, start), got in zip(cases, out):
        it = croniter(theirs, datetime.fromtimestamp(start / 1000, tz=timezone.utc))
        want = [int(it.get_next(datetime).timestamp()) * 1000 for _ in range(6)]
        got_times = [int(x) for x in got.split()] if not got.startswith("error") else got
        if got_times != want:
            mismatches += 1
            if mismatches <= 10:
                print(f"MISMATCH {ours!r} after {start}: ours {got_times}, croniter {want}")
    for (expr, name), got in zip(bad, out[len(cases):]):
        assert got.startswith("error\t"), (expr, got)
        assert name in got, (expr, name, got)
    print(f"{len(cases)} expressions x 6 times: {mismatches} mismatches; "
          f"{len(bad)} malformed expressions refused naming the field")
    sys.exit(1 if mismatches else 0)


if __name__ == "__main__":
    main()
