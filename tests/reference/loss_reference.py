"""loss_reference.py — chord's CHORD loss and GRPO advantages against PyTorch autograd.

An independent implementation of ALGORITHM.md's loss (and the reference's entropy bonus and
k3 KL) in PyTorch, float64 on fp32 inputs, differentiated by autograd; chord's values come from
tests/reference/loss_tool.c (argv[1]). Random inputs cover φ on/off, μ = 0, 1, 0.37, clipping
inactive and active, dual clip, ratio clamping, empty streams, several micro-batches. Loss and
dL/dlogp must agree to a relative error of 1e-4; the metrics too.

Usage: python loss_reference.py path/to/loss_tool
"""
import json
import math
import subprocess
import sys

import torch

REL = 1e-4
rng = torch.Generator().manual_seed(1234)


def f32(x):
    """fp32 inputs, as Python floats (exact)."""
    return [float(v) for v in x.to(torch.float32)]


def make_loss_case(n, mu, phi, regime, dual_clip, micro_batches, *, kinds=None, entropy=False,
                   kl=False, extreme=False, kl_estimator="k3", grpo_agg="token-mean",
                   sft_agg="token-mean", norm_tokens=0, policy_loss="ppo", ratio_level="token"):
    if kinds is None:
        # segments like packed sequences: prompt (0), then a response (1 or 2)
        kinds = []
        while len(kinds) < n:
            kinds += [0] * int(torch.randint(1, 6, (1,), generator=rng))
            kinds += [int(torch.randint(1, 3, (1,), generator=rng))] * int(
                torch.randint(3, 20, (1,), generator=rng))
        kinds = kinds[:n]
    # the sequence of each token: a new one starts where a prompt (kind 0) follows a response,
    # or a response of one kind follows one of the other (packed sequences hold one kind each)
    seq, cur = [], -1
    for t, k in enumerate(kinds):
        if t == 0 or (k == 0 and kinds[t - 1] != 0) or (k != 0 and kinds[t - 1] not in (0, k)):
            cur += 1
        seq.append(cur)
    kinds = torch.tensor(kinds)
    logp = -torch.rand(n, generator=rng) * 4.0 - 0.002
    noise = {"inactive": 0.03, "active": 0.6}[regime]
    logp_old = logp + torch.randn(n, generator=rng) * noise
    if extreme:  # log-ratios beyond ±20 exercise the ratio clamp
        idx = torch.randperm(n, generator=rng)[: n // 10]
        logp_old[idx] = logp[idx] + torch.where(torch.rand(len(idx), generator=rng) < 0.5,
                                                torch.tensor(-25.0), torch.tensor(25.0))
    # one advantage per response segment, some exactly zero
    adv = torch.zeros(n)
    seg_adv = 0.0
    for t in range(n):
        if t == 0 or kinds[t] != kinds[t - 1]:
            seg_adv = float(torch.randn(1, generator=rng)) * 1.5
            if float(torch.rand(1, generator=rng)) < 0.15:
                seg_adv = 0.0
        adv[t] = seg_adv
    case = {
        "mode": "loss",
        "params": {"mu": mu, "phi": phi, "clip_low": 0.2, "clip_high": 0.28 if regime == "active"
                   else 0.2, "dual_clip": dual_clip, "entropy_coef": 0.01 if entropy else 0.0,
                   "kl_coef": 0.05 if kl else 0.0, "kl_estimator": kl_estimator,
                   "grpo_agg": grpo_agg, "sft_agg": sft_agg, "norm_tokens": norm_tokens,
                   "policy_loss": policy_loss, "ratio_level": ratio_level},
        "seq": seq,
        "micro_batches": micro_batches,
        "kind": [int(k) for k in kinds],
        "logp": f32(logp),
        "logp_old": f32(logp_old),
        "advantage": f32(adv),
        "entropy": f32(torch.rand(n, generator=rng) * 3.0) if entropy else None,
        "ref_logp": f32(logp + torch.randn(n, generator=rng) * 0.3) if kl else None,
    }
    return case


def reference_loss(case):
    """ALGORITHM.md, written with torch ops; gradients by autograd."""
    p = case["params"]
    dt = torch.float64
    kind = torch.tensor(case["kind"])
    logp = torch.tensor(case["logp"], dtype=torch.float32).to(dt).requires_grad_(True)
    logp_old = torch.tensor(case["logp_old"], dtype=torch.float32).to(dt)
    adv = torch.tensor(case["advantage"], dtype=torch.float32).to(dt)
    pol = (kind == 1).to(dt)
    exp_mask = (kind == 2).to(dt)
    n_pol, n_exp = int(pol.sum()), int(exp_mask.sum())

    seq = torch.tensor(case["seq"])
    log_ratio = logp - logp_old
    if p.get("ratio_level") == "sequence":
        # GSPO: one ratio per sequence, exp of the mean log-ratio over its on-policy tokens
        # (autograd carries each token's share of the mean)
        per_tok = []
        for t in range(len(kind)):
            m = pol * (seq == seq[t]).to(dt)
            per_tok.append((log_ratio * m).sum() / m.sum() if int(m.sum()) else log_ratio[t])
        log_ratio = torch.stack(per_tok)
    ratio = torch.exp(torch.clamp(log_ratio, -20.0, 20.0))
    lo, hi = 1.0 - p["clip_low"], 1.0 + p["clip_high"]
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, lo, hi)
    token_pg = torch.maximum(unclipped, clipped)
    clip_active = (clipped > unclipped).to(dt)
    if p.get("policy_loss") == "cispo":
        # CISPO (MiniMax-M1): the clipped ratio, detached, weighs A · log π_θ
        token_pg = -torch.clamp(ratio, lo, hi).detach() * adv * logp
        clip_active = ((ratio < lo) | (ratio > hi)).to(dt)
    dual_active = torch.zeros_like(adv)
    if p["dual_clip"]:
        bound = -adv * p["dual_clip"]
        dual_active = ((token_pg > bound) & (adv < 0)).to(dt)
        token_pg = torch.where(adv < 0, torch.minimum(token_pg, bound), token_pg)
    def agg(vals, mask, mode):
        """verl's / Trinity-RFT's loss_agg_mode over the sequences holding mask's tokens; for
        seq-mean-token-sum-norm the constant M is params["norm_tokens"] (Dr. GRPO)."""
        if not int(mask.sum()):
            return torch.zeros((), dtype=dt)
        if mode == "token-mean":
            return (vals * mask).sum() / mask.sum()
        per_seq = []
        for s_id in sorted(set(seq[mask > 0].tolist())):
            m = mask * (seq == s_id).to(dt)
            total = (vals * m).sum()
            per_seq.append(total / m.sum() if mode == "seq-mean-token-mean" else total)
        out = torch.stack(per_seq).mean()
        return out / p["norm_tokens"] if mode == "seq-mean-token-sum-norm" else out

    pg_loss = agg(token_pg, pol, p["grpo_agg"])

    prob = torch.exp(logp)
    phi = (prob * (1.0 - prob)).detach()
    token_sft = -phi * logp if p["phi"] else -logp
    sft_loss = agg(token_sft, exp_mask, p["sft_agg"])

    mu = p["mu"]
    loss = (1.0 - mu) * pg_loss + mu * sft_loss

    ent = None
    entropy_mean = 0.0
    if case["entropy"] is not None:
        ent = torch.tensor(case["entropy"], dtype=torch.float32).to(dt).requires_grad_(True)
        if n_pol:
            entropy_mean = float(((ent * pol).sum() / n_pol).detach())  # the metric: a mean
            loss = loss - p["entropy_coef"] * agg(ent, pol, p["grpo_agg"])
    kl_mean = 0.0
    if case["ref_logp"] is not None:
        ref = torch.tensor(case["ref_logp"], dtype=torch.float32).to(dt)
        # Schulman's estimators of KL(π_θ || π_ref) at a sampled token, as verl's kl_penalty:
        # k1 "kl" = logp − ref; k2 "mse" = ½ (logp − ref)²;
        # k3 "low_var_kl" = clamp(exp(d) − d − 1, −10, 10), d = clamp(ref − logp, −20, 20)
        est = p.get("kl_estimator", "k3")
        if est == "k1":
            k = logp - ref
        elif est == "k2":
            k = 0.5 * (logp - ref) ** 2
        else:
            d = torch.clamp(ref - logp, -20.0, 20.0)
            k = torch.clamp(torch.exp(d) - d - 1.0, -10.0, 10.0)
        if n_pol:
            kl_mean = float(((k * pol).sum() / n_pol).detach())  # the metric: a mean
            loss = loss + p["kl_coef"] * agg(k, pol, p["grpo_agg"])

    loss.backward()
    dent = ent.grad if ent is not None and ent.grad is not None else torch.zeros(len(kind), dtype=dt)

    def mean_over(x, m, n):
        return float((x.detach() * m).sum() / n) if n else 0.0

    metrics = {
        "pg_loss": float(pg_loss.detach()),
        "pg_clipfrac": mean_over(clip_active, pol, n_pol),
        "pg_clipfrac_lower": mean_over(dual_active, pol, n_pol),
        "ppo_kl": mean_over(logp_old - logp, pol, n_pol),
        "ratio_mean": mean_over(ratio, pol, n_pol),
        "sft_loss": float(sft_loss.detach()),
        "sft_nll": mean_over(-logp, exp_mask, n_exp),
        "phi_mean": mean_over(phi, exp_mask, n_exp),
        "entropy": entropy_mean,
        "kl": kl_mean,
        "n_policy_tokens": n_pol,
        "n_expert_tokens": n_exp,
    }
    return float(loss.detach()), logp.grad, dent, metrics


def reference_advantages(rewards, group_sizes, norm_by_std=True):
    """GRPO outcome advantages from ALGORITHM.md, with torch.std (unbiased)."""
    r_all = torch.tensor(rewards, dtype=torch.float32).to(torch.float64)
    out, zero, off = [], 0, 0
    for g in group_sizes:
        r = r_all[off:off + g]
        off += g
        if g == 1:
            mean, std = torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
        else:
            mean, std = r.mean(), r.std(unbiased=True)
        if g >= 2 and bool((r == r[0]).all()):
            out += [0.0] * g
            zero += 1
        else:
            # Dr. GRPO (norm_by_std False): the group mean only, no division by the std
            out += [float(v) for v in ((r - mean) / (std + 1e-6) if norm_by_std else r - mean)]
    return out, zero


def close(a, b, scale):
    return abs(a - b) <= REL * max(abs(b), scale)


def run_tool(tool, cases):
    res = subprocess.run([tool], input=json.dumps({"cases": cases}), capture_output=True,
                         text=True, timeout=120)
    if res.returncode != 0:
        sys.exit(f"loss_tool failed ({res.returncode}): {res.stderr}")
    return json.loads(res.stdout)["results"]


def main():
    tool = sys.argv[1]
    cases, names = [], []
    for phi in (False, True):
        for mu in (0.0, 1.0, 0.37):
            for regime in ("inactive", "active"):
                for dual in (0.0, 3.0):
                    mb = 1 + len(cases) % 4
                    cases.append(make_loss_case(256, mu, phi, regime, dual, mb))
                    names.append(f"phi={phi} mu={mu} clip={regime} dual={dual} mb={mb}")
    cases.append(make_loss_case(300, 0.37, True, "active", 3.0, 3, extreme=True))
    names.append("ratio clamp ±20")
    cases.append(make_loss_case(200, 0.37, False, "active", 0.0, 2, entropy=True, kl=True))
    names.append("entropy bonus + k3 KL")
    cases.append(make_loss_case(200, 0.5, True, "active", 2.0, 2, entropy=True, kl=True))
    names.append("entropy + KL + phi + dual")
    cases.append(make_loss_case(200, 0.37, False, "active", 0.0, 3, kl=True, kl_estimator="k1"))
    names.append("k1 KL")
    cases.append(make_loss_case(200, 0.2, True, "active", 3.0, 2, kl=True, kl_estimator="k2"))
    names.append("k2 KL + phi + dual")
    for grpo_agg, sft_agg in (("seq-mean-token-mean", "seq-mean-token-mean"),
                              ("seq-mean-token-sum", "seq-mean-token-sum"),
                              ("seq-mean-token-sum-norm", "token-mean"),
                              ("token-mean", "seq-mean-token-mean")):
        cases.append(make_loss_case(300, 0.37, True, "active", 3.0, 3, entropy=True, kl=True,
                                    grpo_agg=grpo_agg, sft_agg=sft_agg, norm_tokens=24))
        names.append(f"aggregation grpo {grpo_agg}, sft {sft_agg} (+ entropy, KL)")
    # GSPO: a sequence's tokens must share a micro-batch, so one micro-batch here
    for regime, agg_mode in (("active", "seq-mean-token-mean"), ("inactive", "token-mean")):
        cases.append(make_loss_case(300, 0.37, True, regime, 0.0, 1, kl=True,
                                    ratio_level="sequence", grpo_agg=agg_mode))
        names.append(f"GSPO sequence ratio, clip {regime}, {agg_mode} (+ KL)")
    cases.append(make_loss_case(300, 0.2, False, "active", 3.0, 1, ratio_level="sequence"))
    names.append("GSPO + dual clip")
    cases.append(make_loss_case(300, 0.37, True, "active", 0.0, 3, entropy=True,
                                policy_loss="cispo"))
    names.append("CISPO (+ entropy)")
    cases.append(make_loss_case(64, 0.37, True, "active", 0.0, 2, kinds=[0, 1] * 32))
    names.append("no expert tokens")
    cases.append(make_loss_case(64, 0.37, False, "active", 0.0, 2, kinds=[2, 0] * 32))
    names.append("no on-policy tokens")
    cases.append(make_loss_case(64, 0.0, False, "active", 3.0, 5, kinds=[1] * 64))
    names.append("all on-policy, 5 micro-batches")

    results = run_tool(tool, cases)
    failures = 0
    seen_clip = seen_noclip = seen_dual = 0
    for name, case, got in zip(names, cases, results):
        loss, dlogp, dent, metrics = reference_loss(case)
        errs = []
        if not close(got["loss"], loss, 1e-6):
            errs.append(f"loss {got['loss']!r} vs torch {loss!r}")
        g_ref = dlogp.tolist()
        scale = max(max(abs(v) for v in g_ref), 1e-12) * 1e-3
        worst = 0.0
        for i, (a, b) in enumerate(zip(got["dlogp"], g_ref)):
            if not close(a, b, scale):
                errs.append(f"dlogp[{i}] {a!r} vs torch {b!r} (kind {case['kind'][i]})")
                if len(errs) > 5:
                    break
            worst = max(worst, abs(a - b) / max(abs(b), scale))
        e_ref = dent.tolist()
        for i, (a, b) in enumerate(zip(got["dentropy"], e_ref)):
            if not close(a, b, 1e-9):
                errs.append(f"dentropy[{i}] {a!r} vs torch {b!r}")
                break
        for key, ref in metrics.items():
            if not close(got["metrics"][key], ref, 1e-6):
                errs.append(f"metric {key} {got['metrics'][key]!r} vs torch {ref!r}")
        if metrics["n_policy_tokens"]:
            if metrics["pg_clipfrac"] > 0:
                seen_clip += 1
            else:
                seen_noclip += 1
        seen_dual += metrics["pg_clipfrac_lower"] > 0
        status = "ok" if not errs else "FAIL"
        print(f"{status:4} {name}: loss {got['loss']:.6g} (torch {loss:.6g}), max rel err of "
              f"dL/dlogp {worst:.2e}, clipfrac {metrics['pg_clipfrac']:.3f}")
        for e in errs:
            print("     ", e)
        failures += bool(errs)
    # the grid must actually exercise both sides of the clip and the dual clip
    if not (seen_clip and seen_noclip and seen_dual):
        print(f"FAIL coverage: clipped cases {seen_clip}, unclipped {seen_noclip}, dual {seen_dual}")
        failures += 1

    # GRPO advantages
    adv_cases = []
    sizes_sets = [[8] * 6, [1, 4, 2, 8, 1, 3], [5] * 4]
    for sizes in sizes_sets:
        rewards = []
        for j, g in enumerate(sizes):
            if j % 3 == 0:
                rewards += [float(torch.randint(0, 2, (1,), generator=rng))] * g  # all equal
            elif j % 3 == 1:
                rewards += [float(v) for v in torch.randint(0, 2, (g,), generator=rng)]
            else:
                rewards += f32(torch.randn(g, generator=rng))
        adv_cases.append({"mode": "advantages", "rewards": rewards, "group_sizes": sizes})
    adv_cases.append({"mode": "advantages", "rewards": [0.1, 0.1, 0.1, -0.1, 1.0, 0.1],
                      "group_sizes": [3, 3]})
    for c in list(adv_cases[:2]):
        adv_cases.append(dict(c, norm_by_std=False))
    for case, got in zip(adv_cases, run_tool(tool, adv_cases)):
        ref, zero = reference_advantages(case["rewards"], case["group_sizes"],
                                         case.get("norm_by_std", True))
        bad = [i for i, (a, b) in enumerate(zip(got["advantages"], ref)) if not close(a, b, 1e-6)]
        ok = not bad and got["zero_adv_groups"] == zero
        print(f"{'ok' if ok else 'FAIL':4} advantages groups={case['group_sizes']}"
              f"{'' if case.get('norm_by_std', True) else ' (Dr. GRPO: no std)'}: "
              f"zero_adv_groups {got['zero_adv_groups']} (torch {zero})")
        for i in bad[:5]:
            print(f"      A[{i}] {got['advantages'][i]!r} vs torch {ref[i]!r}")
        failures += not ok

    # DAPO's soft overlong punishment (the paper's eq. 13, written from it): with L_max the
    # length limit and L_cache the buffer, R = 0 for |y| <= L_max − L_cache,
    # ((L_max − L_cache) − |y|) / L_cache up to L_max, −1 beyond; scaled by a factor
    def dapo_penalty(n, l_max, l_cache, factor):
        if n <= l_max - l_cache:
            return 0.0
        if n <= l_max:
            return factor * ((l_max - l_cache) - n) / l_cache
        return -factor
    ol_cases = [{"mode": "overlong", "lengths": list(range(0, 70)), "max": 64, "buffer": b,
                 "factor": f} for b, f in ((16, 1.0), (1, 0.5), (64, 2.0))]
    for case, got in zip(ol_cases, run_tool(tool, ol_cases)):
        ref = [dapo_penalty(n, case["max"], case["buffer"], case["factor"]) for n in case["lengths"]]
        bad = [i for i, (a, b) in enumerate(zip(got["penalty"], ref)) if not close(a, b, 1e-12)]
        print(f"{'ok' if not bad else 'FAIL':4} overlong penalty max={case['max']} "
              f"buffer={case['buffer']} factor={case['factor']}")
        for i in bad[:5]:
            print(f"      len {case['lengths'][i]}: {got['penalty'][i]!r} vs {ref[i]!r}")
        failures += bool(bad)

    print(f"{failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
