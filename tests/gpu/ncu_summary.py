#!/usr/bin/env python3
"""ncu_summary.py — groups the kernel times of an `ncu --csv --metrics gpu__time_duration.sum`
log (tests/gpu/profile.sh: one profiled range per log) by kernel: time, share, launches.
Usage: ncu_summary.py LOG [WALL_MS] (WALL_MS: the range's wall time, to show the launch gaps)"""
import csv
import re
import sys
from collections import defaultdict

UNITS = {"ns": 1, "nsecond": 1, "us": 1e3, "usecond": 1e3, "ms": 1e6, "msecond": 1e6}


def short(name):
    name = re.sub(r"\(.*", "", name)  # drop the argument list
    name = re.sub(r"<.*", "", name)  # and template arguments
    name = re.sub(r"^(void|float|int) ", "", name)
    return name.split("::")[-1][:70]


def main(path, wall_ms=None):
    ks = defaultdict(lambda: [0.0, 0])
    header = None
    with open(path, errors="replace") as f:
        for line in f:
            if not line.startswith('"'):
                continue
            row = next(csv.reader([line]))
            if row[0] == "ID":
                header = row
                continue
            if header is None:
                continue
            r = dict(zip(header, row))
            if r.get("Metric Name") != "gpu__time_duration.sum":
                continue
            v = float(r["Metric Value"].replace(",", ""))
            ns = v * UNITS.get(r.get("Metric Unit", "ns"), 1)
            k = short(r["Kernel Name"])
            ks[k][0] += ns
            ks[k][1] += 1
    if not ks:
        print("ncu_summary: no kernel times in", path)
        return 1
    tot = sum(v[0] for v in ks.values())
    n = sum(v[1] for v in ks.values())
    line = f"{n} kernels, {tot / 1e6:.3f} ms of kernel time"
    if wall_ms:
        line += f" in {wall_ms:.3f} ms wall ({100 * tot / 1e6 / wall_ms:.0f}% busy)"
    print(line)
    for k, (ns, c) in sorted(ks.items(), key=lambda kv: -kv[1][0])[:30]:
        print(f"  {ns / 1e6:9.3f} ms {100 * ns / tot:5.1f}% {c:6d}x  {k}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else None))
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        sys.exit(0)
