"""tinker_loss_reference.py — chord's Tinker losses against PyTorch autograd.

An independent implementation of the per-position terms written in server/tinker/tinker_loss.h
(cross_entropy, importance_sampling, ppo, cispo, chord with φ off and on), in float64 on fp32
inputs, with lp a leaf tensor: loss.sum().backward() gives dL/dlp. chord's values come from
tests/reference/tinker_loss_tool.c (argv[1]). Random seeded datums cover ratios inside and
outside the clip range (and beyond the ±20 log-ratio clamp), negative and zero advantages
(prompt positions: A = 0, q = 0), zero, negative and absent weights, μ in (0, 1), 0 and 1, and a
mixed chord batch of on-policy and expert datums. Every term, every gradient and every metric
must agree to a relative 1e-6 (chord's outputs are fp32); refusals are checked too.

Usage: python tinker_loss_reference.py path/to/tinker_loss_tool
"""
import json
import subprocess
import sys

import torch

REL = 1e-6
rng = torch.Generator().manual_seed(20261205)


def f32(x):
    """fp32 values as Python floats (exact in JSON and in double)."""
    return [float(v) for v in x.to(torch.float32)]


def rand(n):
    return torch.rand(n, generator=rng, dtype=torch.float64)


def randn(n):
    return torch.randn(n, generator=rng, dtype=torch.float64)


def policy_datum(n, noise, extreme=False):
    """An on-policy datum: a prompt (A = 0, q = 0) then a response with one advantage."""
    prompt = int(torch.randint(1, max(2, n // 3), (1,), generator=rng))
    lp = -rand(n) * 4.0 - 0.01
    q = lp + randn(n) * noise
    if extreme:  # log-ratios beyond ±20: the clamp
        idx = torch.randperm(n, generator=rng)[: max(1, n // 5)]
        q[idx] = lp[idx] + torch.where(rand(len(idx)) < 0.5, -25.0, 25.0).to(torch.float64)
    adv = torch.full((n,), float(randn(1)) * 1.5, dtype=torch.float64)
    if float(rand(1)) < 0.15:
        adv[:] = 0.0
    q[:prompt] = 0.0
    adv[:prompt] = 0.0
    return {"lp": f32(lp), "logprobs": f32(q), "advantages": f32(adv)}


def expert_datum(n, weights="mixed"):
    """An SFT / expert datum: weights 0 on a prompt, real-valued after (some negative), or
    none at all (every weight 1)."""
    lp = -rand(n) * 4.0 - 0.01
    d = {"lp": f32(lp)}
    if weights == "none":
        return d
    prompt = int(torch.randint(0, max(1, n // 3), (1,), generator=rng))
    w = rand(n) * 2.0
    w[rand(n) < 0.2] = 0.0
    if weights == "signed":
        w = w - 1.0
    w[:prompt] = 0.0
    d["weights"] = f32(w)
    return d


def ratio_of(lp, q):
    return torch.exp(torch.clamp(lp - q, -20.0, 20.0))


def reference(case):
    """Terms, dL/dlp and metrics from the header's formulas, by autograd."""
    loss_fn, cfg = case["loss"], case["config"]
    lo = cfg.get("clip_low_threshold", 0.8)
    hi = cfg.get("clip_high_threshold", 1.2)
    mu = cfg.get("mu", 0.0)
    phi = cfg.get("phi", 0)
    out_el, out_g = [], []
    loss_sum = 0.0
    parity, clipped, policy_tokens, expert_tokens = 0.0, 0.0, 0.0, 0.0
    for d in case["data"]:
        lp = torch.tensor(d["lp"], dtype=torch.float64, requires_grad=True)
        n = len(d["lp"])
        w = torch.tensor(d.get("weights", [1.0] * n), dtype=torch.float64)
        on_policy = loss_fn != "cross_entropy" and (loss_fn != "chord" or "advantages" in d)
        if on_policy:
            q = torch.tensor(d["logprobs"], dtype=torch.float64)
            adv = torch.tensor(d["advantages"], dtype=torch.float64)
            r = ratio_of(lp, q)
            if loss_fn == "importance_sampling":
                terms = -r * adv
            elif loss_fn == "cispo":
                terms = -torch.clamp(r, lo, hi).detach() * adv * lp
            else:  # ppo, and chord's on-policy term
                terms = -torch.minimum(r * adv, torch.clamp(r, lo, hi) * adv)
                if loss_fn == "chord":
                    terms = (1.0 - mu) * terms
            active = adv != 0
            rd = r.detach()
            if loss_fn == "cispo":
                clip_hit = torch.clamp(rd, lo, hi) != rd
            else:
                clip_hit = torch.clamp(rd, lo, hi) * adv < rd * adv
            if loss_fn != "importance_sampling":
                clipped += float((clip_hit & active).sum())
            policy_tokens += float(active.sum())
            if active.any():
                parity = max(parity, float((lp.detach() - q).abs()[active].max()))
        else:
            m = 1.0 if loss_fn == "cross_entropy" else mu
            if phi:
                p = torch.exp(lp).detach()
                terms = m * w * (-(p * (1.0 - p)) * lp)
            else:
                terms = m * w * (-lp)
            if loss_fn == "chord":
                expert_tokens += float((w != 0).sum())
        terms.sum().backward()
        out_el.append([float(v) for v in terms.detach()])
        out_g.append([float(v) for v in lp.grad])
        loss_sum += float(terms.detach().sum())
    metrics = {"loss:sum": loss_sum}
    if loss_fn != "cross_entropy":
        if policy_tokens > 0:
            metrics["parity_max:max"] = parity
            if loss_fn != "importance_sampling":
                metrics["clipfrac:mean"] = clipped / policy_tokens
        metrics["policy_tokens:sum"] = policy_tokens
        if loss_fn == "chord":
            metrics["expert_tokens:sum"] = expert_tokens
    return {"elementwise": out_el, "dlp": out_g, "metrics": metrics}


def close(got, want, scale):
    return abs(got - want) <= REL * max(abs(want), scale) + 1e-12


def compare(name, got, want):
    errors = []
    if "error" in got:
        return [f"{name}: refused: {got['error']}"]
    for i, (ge, we, gg, wg) in enumerate(zip(got["elementwise"], want["elementwise"], got["dlp"],
                                             want["dlp"])):
        for t in range(len(we)):
            if not close(ge[t], we[t], 0.0):
                errors.append(f"{name}: data[{i}] elementwise[{t}] = {ge[t]!r}, want {we[t]!r}")
            if not close(gg[t], wg[t], 0.0):
                errors.append(f"{name}: data[{i}] dlp[{t}] = {gg[t]!r}, want {wg[t]!r}")
    if len(got["elementwise"]) != len(want["elementwise"]):
        errors.append(f"{name}: {len(got['elementwise'])} datums, want {len(want['elementwise'])}")
    if set(got["metrics"]) != set(want["metrics"]):
        errors.append(f"{name}: metrics {sorted(got['metrics'])}, want {sorted(want['metrics'])}")
    # the loss sum may cancel: scale by the sum of the magnitudes
    scale = sum(abs(v) for row in want["elementwise"] for v in row)
    for k, v in want["metrics"].items():
        if k in got["metrics"] and not close(got["metrics"][k], v, scale if k == "loss:sum" else 0):
            errors.append(f"{name}: metric {k} = {got['metrics'][k]!r}, want {v!r}")
    return errors


def make_cases():
    cases = []
    lens = lambda: int(torch.randint(4, 40, (1,), generator=rng))  # noqa: E731

    def policy_batch(noise, k=4, extreme=False):
        return [policy_datum(lens(), noise, extreme) for _ in range(k)]

    cases.append(("cross_entropy", {}, [expert_datum(lens()) for _ in range(3)]))
    cases.append(("cross_entropy/signed+absent weights", {},
                  [expert_datum(lens(), "signed"), expert_datum(lens(), "none")]))
    for noise in (0.05, 0.6):
        cases.append((f"importance_sampling/noise {noise}", {}, policy_batch(noise)))
        cases.append((f"ppo/noise {noise}", {}, policy_batch(noise)))
        cases.append((f"cispo/noise {noise}", {}, policy_batch(noise)))
    cases.append(("importance_sampling/extreme", {}, policy_batch(0.3, extreme=True)))
    cases.append(("ppo/extreme", {}, policy_batch(0.3, extreme=True)))
    cases.append(("ppo/0.9-1.1", {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1},
                  policy_batch(0.3)))
    cases.append(("cispo/0.5-2", {"clip_low_threshold": 0.5, "clip_high_threshold": 2.0},
                  policy_batch(0.6)))
    for phi in (0, 1):
        for mu in (0.37, 0.0, 1.0):
            data = policy_batch(0.6, k=3) + [expert_datum(lens()), expert_datum(lens(), "none"),
                                             expert_datum(lens(), "signed")]
            order = torch.randperm(len(data), generator=rng).tolist()
            cases.append((f"chord/phi {phi} mu {mu}", {"mu": mu, "phi": phi},
                          [data[i] for i in order]))
    cases.append(("chord/phi 1 mu 0.8 clip 0.7-1.4",
                  {"mu": 0.8, "phi": 1, "clip_low_threshold": 0.7, "clip_high_threshold": 1.4},
                  policy_batch(0.6, k=2) + [expert_datum(lens())]))
    cases.append(("chord/expert only", {"mu": 0.5}, [expert_datum(lens()) for _ in range(2)]))
    return [{"name": name, "loss": loss.split("/")[0], "config": cfg, "data": data}
            for (loss, cfg, data), name in ((c[0:3], c[0]) for c in cases)]


def refusals():
    """Inputs chord must refuse, and a part of each message."""
    good = policy_datum(6, 0.1)
    short = dict(good, advantages=good["advantages"][:5])
    no_q = {k: v for k, v in good.items() if k != "logprobs"}
    nan_adv = dict(good, advantages=["nan"] + good["advantages"][1:])  # the tool's NaN
    return [
        ({"loss": "dro", "config": {}, "data": [good]}, 'loss_fn: "dro" is not supported'),
        ({"loss": "ppo", "config": {"beta": 0.1}, "data": [good]}, "loss_fn_config.beta"),
        ({"loss": "ppo", "config": {"clip_low_threshold": "x"}, "data": [good]},
         "a number is needed"),
        ({"loss": "chord", "config": {"phi": 1}, "data": [good]}, "loss_fn_config.mu"),
        ({"loss": "ppo", "config": {}, "data": [good, short]},
         "data[1].loss_fn_inputs.advantages: 5 values for 6 positions"),
        ({"loss": "importance_sampling", "config": {}, "data": [no_q]},
         "data[0].loss_fn_inputs.logprobs: missing"),
        ({"loss": "chord", "config": {"mu": 0.5}, "data": [good, no_q]},
         "data[1].loss_fn_inputs.logprobs: missing"),
        ({"loss": "cispo", "config": {}, "data": [nan_adv]},
         "data[0].loss_fn_inputs.advantages[0]"),
    ]


def main():
    tool = sys.argv[1]
    cases = make_cases()
    bad = refusals()
    doc = {"cases": cases + [c for c, _ in bad]}
    proc = subprocess.run([tool], input=json.dumps(doc), capture_output=True, text=True,
                          check=True)
    results = json.loads(proc.stdout)["results"]
    errors = []
    for case, got in zip(cases, results):
        errors += compare(case["name"], got, reference(case))
    for (case, part), got in zip(bad, results[len(cases):]):
        if part not in got.get("error", ""):
            errors.append(f"refusal {part!r}: got {got.get('error', 'no error')!r}")
    # the cases must exercise what they claim: both ppo branches, clamped ratios, φ
    n_clipped = sum(r["metrics"].get("clipfrac:mean", 0) > 0 for r in results[: len(cases)])
    if n_clipped < 5:
        errors.append(f"only {n_clipped} cases had clipped positions")
    for e in errors[:40]:
        print(e)
    if errors:
        print(f"FAIL: {len(errors)} mismatches over {len(cases)} cases")
        return 1
    n_pos = sum(len(d["lp"]) for c in cases for d in c["data"])
    print(f"OK: {len(cases)} cases, {n_pos} positions, {len(bad)} refusals")
    return 0


if __name__ == "__main__":
    sys.exit(main())
