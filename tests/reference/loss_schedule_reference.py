"""loss_schedule_reference.py — chord's learning-rate and μ schedules against their references.

Learning rate: the lr_lambda of transformers' get_constant_schedule_with_warmup,
get_linear_schedule_with_warmup, get_cosine_schedule_with_warmup and
get_cosine_with_min_lr_schedule_with_warmup, evaluated at every step of a run (and past its end
for the constant and linear ones). μ: ALGORITHM.md's formula written out here, at s = 1, W, W + D,
every step in between and beyond, for each preset's (W, D, peak, valley). chord's numbers come from
tests/reference/loss_tool.c (argv[1]).

Usage: python loss_schedule_reference.py path/to/loss_tool
"""
import json
import math
import subprocess
import sys

import torch
from transformers import (get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup,
                          get_cosine_with_min_lr_schedule_with_warmup,
                          get_linear_schedule_with_warmup)

TOL = 1e-12


def hf_factors(schedule, warmup, total, min_lr_ratio, steps):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    if schedule == "constant":
        sched = get_constant_schedule_with_warmup(opt, warmup)
    elif schedule == "linear":
        sched = get_linear_schedule_with_warmup(opt, warmup, total)
    elif min_lr_ratio:
        sched = get_cosine_with_min_lr_schedule_with_warmup(opt, warmup, total,
                                                            min_lr_rate=min_lr_ratio)
    else:
        sched = get_cosine_schedule_with_warmup(opt, warmup, total)
    lam = sched.lr_lambdas[0]
    return [float(lam(s)) for s in steps]


def mu_formula(s, W, D, peak, valley):
    """ALGORITHM.md, "μ schedule (step s counts from 1)"."""
    if s < W:
        return peak * s / W
    if s < W + D:
        return valley + (peak - valley) * 0.5 * (1 + math.cos(math.pi * (s - W) / D))
    return valley


def main():
    tool = sys.argv[1]
    lr_cases = []
    for schedule in ("constant", "linear", "cosine"):
        for warmup, total in ((0, 50), (10, 100), (1, 7), (30, 30)):
            for min_lr in ((0.0, 0.1) if schedule == "cosine" else (0.0,)):
                end = total + (10 if schedule != "cosine" else 0)
                lr_cases.append({"mode": "lr", "schedule": schedule, "warmup": warmup,
                                 "total": total, "min_lr_ratio": min_lr,
                                 "completed": list(range(0, end + 1))})
    presets = {"chord_mu": (0, 200, 0.9, 0.05), "chord_phi": (0, 0, 0.1, 0.1),
               "chord": (200, 400, 0.5, 0.02), "custom": (7, 13, 0.8, 0.1),
               "warmup only": (5, 0, 0.6, 0.2), "decay only": (0, 9, 1.0, 0.0)}
    mu_cases = []
    for name, (W, D, peak, valley) in presets.items():
        steps = sorted(set([1, W, W + D, W + D + 1, 2 * (W + D) + 5] + list(range(1, W + D + 3))))
        steps = [s for s in steps if s >= 1]
        mu_cases.append({"mode": "mu", "name": name, "warmup": W, "decay": D, "peak": peak,
                         "valley": valley, "steps": steps})
    res = subprocess.run([tool], input=json.dumps({"cases": lr_cases + mu_cases}),
                         capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        sys.exit(f"loss_tool failed: {res.stderr}")
    results = json.loads(res.stdout)["results"]
    failures = 0
    for case, got in zip(lr_cases, results[: len(lr_cases)]):
        ref = hf_factors(case["schedule"], case["warmup"], case["total"], case["min_lr_ratio"],
                         case["completed"])
        bad = [(s, a, b) for s, a, b in zip(case["completed"], got["factors"], ref)
               if abs(a - b) > TOL]
        print(f"{'ok' if not bad else 'FAIL':4} lr {case['schedule']} warmup={case['warmup']} "
              f"total={case['total']} min_lr_ratio={case['min_lr_ratio']}: "
              f"{len(ref)} steps vs transformers")
        for s, a, b in bad[:5]:
            print(f"      step {s}: {a!r} vs transformers {b!r}")
        failures += bool(bad)
    for case, got in zip(mu_cases, results[len(lr_cases):]):
        ref = [mu_formula(s, case["warmup"], case["decay"], case["peak"], case["valley"])
               for s in case["steps"]]
        bad = [(s, a, b) for s, a, b in zip(case["steps"], got["mu"], ref) if abs(a - b) > TOL]
        print(f"{'ok' if not bad else 'FAIL':4} mu {case['name']}: {len(ref)} steps, "
              f"mu(1)={got['mu'][0]:.6g}")
        for s, a, b in bad[:5]:
            print(f"      step {s}: {a!r} vs formula {b!r}")
        failures += bool(bad)
    print(f"{failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
