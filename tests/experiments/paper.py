#!/usr/bin/env python3
"""paper.py — the CHORD paper's comparison (its Table 1) at small scale, in one command, through
the REST API of a running chordd: every row trains from the same base, on the same data, for the
same step budget, over several seeds; the outputs are a table (mean ± std over seeds), PNG curves
and a JSON of every number. docs/experiments.md has the design, a run and its reading.

    tests/experiments/paper.py --start-server --out /tmp/paper              # ~the full run
    tests/experiments/paper.py --start-server --budget small --out /tmp/p   # CI, a few minutes
    tests/experiments/paper.py --server http://127.0.0.1:8080 --models-root DIR --out /tmp/p

The design (built-in data, all generated here):
  * general skill: 1-2 digit addition, taught to a random-init model by an `sft` job on worked
    solutions ("37+48: 7+8+0=15, 3+4+1=8. \\boxed{85}"). Its final checkpoint is the base.
  * target task: a 2-digit number times a digit, with expert worked solutions in a form the base
    never writes ("47*3: 7*3+0=21, 4*3+2=14. \\boxed{141}"): the base answers these prompts
    with an addition-style column sum, so its rollouts are (almost) never right and the expert
    tokens ("*", the products) have near-zero probability under it — off-policy as in the paper.
  * every row trains on the target only; one eval set holds held-out target AND held-out general
    problems, so each eval step of the job measures target accuracy and retention at once (the
    eval samples are split by prompt).

Rows: sft, grpo, sft_then_grpo, chord_mu, chord_phi, chord (the presets, their μ schedules
scaled to the step budget) and fixed_mu (μ = 0.1 constant with φ off: chord_phi without φ).

Other data in chord's JSONL formats: --target-prompts/--target-expert/--target-eval (and
--general-eval for retention, --general-expert for the base's SFT, or --base-model to start from
a model of yours: a registered id or a directory under the server's models root).

This talks to chordd over REST only. A checkpoint becomes the base by downloading its files
(GET /v1/jobs/{id}/checkpoints/{step}/files/...) into the models root and registering the
directory (POST /v1/models): the server has no "model from checkpoint" route yet, so the script
needs write access to the models root (--models-root; --start-server makes its own).
"""
import argparse
import hashlib
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime

ROWS = ["sft", "grpo", "sft_then_grpo", "chord_mu", "chord_phi", "chord", "fixed_mu"]
LABELS = {
    "original": "Original (base)",
    "sft": "SFT",
    "grpo": "GRPO",
    "sft_then_grpo": "SFT + GRPO",
    "chord_mu": "CHORD-μ",
    "chord_phi": "CHORD-φ",
    "chord": "CHORD (μ schedule + φ)",
    "fixed_mu": "fixed μ = 0.1, φ off",
}

# The base model: the demo's shape (server/train/demo.c), the embedded 1024-token tokenizer.
def model_config(hidden, layers):
    return {
        "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "vocab_size": 1024,
        "hidden_size": hidden, "num_hidden_layers": layers,
        "num_attention_heads": max(1, hidden // 64), "num_key_value_heads": max(1, hidden // 128),
        "intermediate_size": 3 * hidden, "max_position_embeddings": 128, "rope_theta": 10000.0,
        "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "initializer_range": 0.02,
    }


# Budgets. `steps`: every row's step budget; `seeds`: seeds per row; base_*: the base's SFT.
# A regex verifier (docs/rewards.md) scoring the last number of a response: for a base model that
# answers in prose instead of \\boxed{} (the real-model run, docs/experiments.md).
LAST_NUMBER = {"type": "regex", "pattern": r"(?s)(-?\d+(?:\.\d+)?)(?!.*\d)"}

BUDGETS = {
    "small": dict(hidden=64, layers=1, base_steps=60, base_lr=3e-3, steps=8, seeds=1,
                  eval_every=4, n_eval=24, k=1, prompts_per_step=4, group_size=4,
                  expert_per_step=8, lr=1e-3, max_new_tokens=32),
    "medium": dict(hidden=256, layers=2, base_steps=300, base_lr=1e-3, steps=300, seeds=1,
                   eval_every=30, n_eval=100, k=2, prompts_per_step=8, group_size=8,
                   expert_per_step=32, lr=3e-5, max_new_tokens=56),
    "full": dict(hidden=256, layers=2, base_steps=300, base_lr=1e-3, steps=300, seeds=3,
                 eval_every=30, n_eval=100, k=2, prompts_per_step=8, group_size=8,
                 expert_per_step=32, lr=3e-5, max_new_tokens=56),
    # A pretrained model (tests/experiments/paper_realmodel.sh: SmolLM2-135M-Instruct on
    # GSM-Symbolic, retention on held-out one-digit arithmetic). hidden/layers/base_* unused.
    # real-gpu: sized for about ten minutes on one GPU; real-cpu: hours on a CPU.
    "real-gpu": dict(hidden=0, layers=0, base_steps=0, base_lr=0, steps=40, seeds=1,
                     eval_every=20, n_eval=100, k=1, prompts_per_step=16, group_size=8,
                     expert_per_step=16, lr=1e-5, max_new_tokens=256),
    "real-cpu": dict(hidden=0, layers=0, base_steps=0, base_lr=0, steps=30, seeds=1,
                     eval_every=15, n_eval=50, k=1, prompts_per_step=4, group_size=4,
                     expert_per_step=8, lr=1e-5, max_new_tokens=192),
}


def log(msg):
    print(f"[paper {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- the built-in data


def heldout(key, percent):
    """A fixed hash of the problem puts it in the held-out split (the same for every seed)."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 100 < percent


def add_worked(a, b):
    """The demo's worked addition: the columns from the units with their carries."""
    s, carry, col, x, y = [], 0, 0, a, b
    while x > 0 or y > 0 or col == 0:
        dx, dy = x % 10, y % 10
        t = dx + dy + carry
        s.append(f"{dx}+{dy}+{carry}={t}")
        carry, x, y, col = t // 10, x // 10, y // 10, col + 1
    return f"{a}+{b}: " + ", ".join(s) + f". \\boxed{{{a + b}}}"


def mul_worked(a, b):
    """Column multiplication by one digit: each digit of a times b plus the carry."""
    s, carry, x = [], 0, a
    while x > 0:
        d = x % 10
        t = d * b + carry
        s.append(f"{d}*{b}+{carry}={t}")
        carry, x = t // 10, x // 10
    return f"{a}*{b}: " + ", ".join(s) + f". \\boxed{{{a * b}}}"


def mul_repeated(a, b):
    """Multiplication as repeated column addition, in the tokens of the addition format only:
    "47*3: 7+7+7+0=21, 4+4+4+2=14. \\boxed{141}" (each digit of a written b times, plus the
    carry)."""
    s, carry, x = [], 0, a
    while x > 0:
        d = x % 10
        t = d * b + carry
        s.append("+".join([str(d)] * b) + f"+{carry}={t}")
        carry, x = t // 10, x // 10
    return f"{a}*{b}: " + ", ".join(s) + f". \\boxed{{{a * b}}}"


TARGET_FORMATS = {"repeated": (mul_repeated, 2, 5), "column": (mul_worked, 2, 9)}


def builtin_problems(target_format="repeated"):
    """(general train, general held-out, target train, target held-out), each a list of
    (prompt, answer, worked response), in a fixed order."""
    worked, b_lo, b_hi = TARGET_FORMATS[target_format]
    gen_tr, gen_ho, tgt_tr, tgt_ho = [], [], [], []
    for a in range(100):
        for b in range(100):
            p = (f"Compute {a}+{b}.", str(a + b), add_worked(a, b))
            (gen_ho if heldout(f"add {min(a, b)} {max(a, b)}", 10) else gen_tr).append(p)
    for a in range(10, 100):
        for b in range(b_lo, b_hi + 1):
            p = (f"Compute {a}*{b}.", str(a * b), worked(a, b))
            (tgt_ho if heldout(f"mul {a} {b}", 25) else tgt_tr).append(p)
    return gen_tr, gen_ho, tgt_tr, tgt_ho


def shuffled(items, seed):
    import random
    items = list(items)
    random.Random(seed).shuffle(items)
    return items


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def prompt_key(rec):
    """What the eval samples show as the prompt: `prompt`, or the last user turn's text."""
    if "prompt" in rec:
        return rec["prompt"]
    msgs = [m for m in rec["messages"]]
    while msgs and msgs[-1].get("role") == "assistant":
        msgs.pop()
    users = [m for m in msgs if m.get("role") == "user"] or msgs
    c = users[-1]["content"]
    if isinstance(c, list):
        c = "".join(p.get("text", "") for p in c)
    return c


def make_data(args, b, d):
    """Writes the data files into d and returns their paths plus the eval prompt groups."""
    files = {}
    gen_tr, gen_ho, tgt_tr, tgt_ho = builtin_problems(args.target_format)
    if not args.base_model:
        if args.general_expert:
            files["general_expert"] = args.general_expert
        else:
            files["general_expert"] = os.path.join(d, "general_expert.jsonl")
            write_jsonl(files["general_expert"],
                        [{"prompt": p, "response": r} for p, _, r in shuffled(gen_tr, 1)])
    for name, flag, rows, kind in [
            ("target_prompts", args.target_prompts, tgt_tr, "prompts"),
            ("target_expert", args.target_expert, tgt_tr, "expert"),
            ("target_eval", args.target_eval, tgt_ho, "eval"),
            ("general_eval", args.general_eval, gen_ho, "eval")]:
        if flag:
            files[name] = flag
            continue
        files[name] = os.path.join(d, name + ".jsonl")
        seed = {"target_prompts": 2, "target_expert": 3, "target_eval": 4, "general_eval": 5}[name]
        if kind == "expert":
            recs = [{"prompt": p, "response": r} for p, _, r in shuffled(rows, seed)]
        else:
            recs = [{"prompt": p, "answer": a} for p, a, _ in shuffled(rows, seed)]
        write_jsonl(files[name], recs)
    # One eval set: n_eval target + n_eval general held-out problems, told apart by prompt.
    tgt = read_jsonl(files["target_eval"])[: b["n_eval"]]
    gen = read_jsonl(files["general_eval"])[: b["n_eval"]]
    groups = {}
    for rec in tgt:
        groups[prompt_key(rec)] = "target"
    for rec in gen:
        k = prompt_key(rec)
        if groups.get(k) == "target":
            sys.exit(f"paper.py: the prompt {k!r} is in both eval sets; they must differ")
        groups[k] = "general"
    files["eval"] = os.path.join(d, "eval_mixed.jsonl")
    write_jsonl(files["eval"], tgt + gen)
    return files, groups


# ---------------------------------------------------------------- REST


class Api:
    def __init__(self, url, token=None):
        self.url = url.rstrip("/")
        self.token = token

    def call(self, method, path, body=None, ctype="application/json", raw=False, timeout=120):
        data = body
        headers = {}
        if isinstance(body, (dict, list)):
            data = json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = ctype
        if self.token:
            headers["Authorization"] = "Bearer " + self.token
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        for attempt in range(30):
            try:
                with urllib.request.urlopen(req, timeout=timeout) as r:
                    out = r.read()
                    return out if raw else json.loads(out)
            except urllib.error.HTTPError as e:
                if e.code == 429 and attempt < 29:
                    time.sleep(1)
                    continue
                raise RuntimeError(f"{method} {path}: {e.code} {e.read().decode()[:500]}") from None

    def upload(self, path, kind, name):
        with open(path, "rb") as f:
            body = f.read()
        q = urllib.parse.urlencode({"kind": kind, "name": name})
        return self.call("POST", f"/v1/datasets?{q}", body, "application/x-ndjson")["id"]

    def wait_job(self, job_id, progress=None):
        last = -2
        while True:
            j = self.call("GET", f"/v1/jobs/{job_id}")
            if j["current_step"] != last and progress:
                progress(j)
                last = j["current_step"]
            if j["state"] in ("succeeded", "failed", "cancelled"):
                return j
            time.sleep(0.5)

    def metrics(self, job_id):
        steps, since = [], 0
        while True:
            page = self.call("GET", f"/v1/jobs/{job_id}/metrics?since_step={since}&max_steps=1000")
            steps += page["steps"]
            if not page["steps"] or page["next_step"] <= since:
                return steps
            since = page["next_step"]

    def samples(self, job_id, step):
        out, offset = [], 0
        while True:
            page = self.call("GET", f"/v1/jobs/{job_id}/samples?step={step}&offset={offset}&limit=1000")
            out += page["items"]
            offset += len(page["items"])
            if not page["items"] or offset >= page["total"]:
                return out


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start_server(chordd, root, threads, models_root=None):
    port = free_port()
    data, models = os.path.join(root, "data"), models_root or os.path.join(root, "models")
    os.makedirs(models, exist_ok=True)
    logf = open(os.path.join(root, "chordd.log"), "ab")
    cmd = [chordd, "serve", "--data-dir", data, "--http", f"127.0.0.1:{port}", "--grpc", "off",
           "--models-root", models] + (["--threads", str(threads)] if threads > 0 else [])
    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT)
    api = Api(f"http://127.0.0.1:{port}")
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"paper.py: chordd exited with {proc.returncode}; see {root}/chordd.log")
        try:
            if api.call("GET", "/healthz")["status"] == "ok":
                return proc, api, models
        except (OSError, RuntimeError):
            time.sleep(0.2)
    proc.kill()
    sys.exit("paper.py: chordd did not become healthy")


def parse_time(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() if s else None


# ---------------------------------------------------------------- jobs


def mu_spec(row, steps):
    """The preset's μ, its schedule scaled to this step budget (the paper's presets are for runs
    of hundreds of steps: chord_mu decays over 200, chord warms up 200 and decays over 400)."""
    if row == "chord_mu":
        return {"warmup_steps": 0, "decay_steps": max(1, round(steps * 0.6)), "peak": 0.9,
                "valley": 0.05}
    if row == "chord":
        w = max(1, round(steps / 3))
        return {"warmup_steps": w, "decay_steps": max(1, steps - w), "peak": 0.5, "valley": 0.02}
    if row == "chord_phi":
        return 0.1
    if row == "fixed_mu":
        return 0.1
    return None


def row_job(row, b, base, ds, seed, eval_k, reward):
    algo = "chord_mu" if row == "fixed_mu" else row
    doc = {
        "name": f"paper-{row}-s{seed}",
        "model": {"path": base},
        "data": {"prompts": ds["target_prompts"], "expert": ds["target_expert"],
                 "eval": ds["eval"]},
        "algorithm": algo,
        "grpo": {"group_size": b["group_size"], "prompts_per_step": b["prompts_per_step"]},
        "expert_per_step": b["expert_per_step"],
        "sampling": {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": b["max_new_tokens"]},
        "optimizer": {"lr": b["lr"], "schedule": "constant", "weight_decay": 0.01,
                      "grad_clip": 1.0},
        "reward": reward,
        "steps": b["steps"], "seed": seed, "checkpoint_every": 0, "keep_checkpoints": 1,
        "eval": {"every": b["eval_every"], "k": eval_k, "temperature": 0.6 if eval_k > 1 else 0.0,
                 "max_new_tokens": b["max_new_tokens"]},
    }
    mu = mu_spec(row, b["steps"])
    if mu is not None:
        doc["chord"] = {"mu": mu}
    if row == "fixed_mu":
        doc["chord"]["phi"] = False
    if row == "sft_then_grpo":
        doc["chord"] = {"sft_steps": max(1, b["steps"] // 2)}
    return doc


def eval_curves(api, job_id, metric_steps, groups):
    """[(step, target avg@k, general avg@k, mean completion length in chars)] over eval steps."""
    out = []
    for st in metric_steps:
        if "eval/accuracy" not in st["metrics"]:
            continue
        acc = {"target": [], "general": []}
        lens = []
        for s in api.samples(job_id, st["step"]):
            if s.get("kind") != "eval":
                continue
            g = groups.get(s.get("prompt"))
            if g is None:
                continue
            acc[g].append(1.0 if (s.get("reward") or 0) >= 1.0 else 0.0)
            lens.append(len(s.get("completion") or ""))
        out.append({"step": st["step"],
                    "target": sum(acc["target"]) / max(1, len(acc["target"])),
                    "general": sum(acc["general"]) / max(1, len(acc["general"])),
                    "n_target": len(acc["target"]), "n_general": len(acc["general"]),
                    "eval_len_chars": sum(lens) / max(1, len(lens))})
    return out


def run_job(api, doc, groups, label):
    t0 = time.time()
    job = api.call("POST", "/v1/jobs", doc)
    jid = job["id"]

    def progress(j):
        if j["current_step"] > 0 and j["current_step"] % max(1, doc["steps"] // 4) == 0:
            log(f"  {label}: step {j['current_step']}/{doc['steps']}")

    j = api.wait_job(jid, progress)
    if j["state"] != "succeeded":
        raise RuntimeError(f"{label}: job {jid} {j['state']}: {j.get('error')}")
    steps = api.metrics(jid)
    series = {}
    for name in ("mu", "entropy", "response_len_mean", "reward_mean", "sft_loss", "phi_mean",
                 "accuracy", "loss"):
        series[name] = [[s["step"], s["metrics"][name]] for s in steps
                        if s["metrics"].get(name) is not None]
    curves = eval_curves(api, jid, steps, groups)
    started, finished = parse_time(j["started_at"]), parse_time(j["finished_at"])
    return {"job_id": jid, "wall_s": (finished - started) if started and finished else None,
            "client_s": time.time() - t0, "series": series, "eval": curves,
            "final": curves[-1] if curves else None}


def eval_model(api, model, eval_path, groups, k, max_tokens, reward, chunk=64):
    """avg@k of a model on the eval set through POST /v1/rollouts (the "Original" row of a base
    given with --base-model): the same prompts, k, temperature and verifier as the jobs' evals."""
    recs = read_jsonl(eval_path)
    acc = {"target": [], "general": []}
    lens = []
    for i in range(0, len(recs), chunk):
        part = recs[i:i + chunk]
        body = {"model": model, "n": k, "temperature": 0.6 if k > 1 else 0.0, "top_p": 1.0,
                "max_tokens": max_tokens, "seed": 1, "answers": [r["answer"] for r in part],
                "reward": reward}
        if any("messages" in r for r in part):
            body["messages"] = [r.get("messages") or [{"role": "user", "content": r["prompt"]}]
                                for r in part]
        else:
            body["prompts"] = [r["prompt"] for r in part]
        ro = api.call("POST", "/v1/rollouts", body)
        while ro["state"] == "pending":
            time.sleep(0.5)
            ro = api.call("GET", f"/v1/rollouts/{ro['id']}")
        if ro["state"] != "succeeded":
            raise RuntimeError(f"eval of {model}: rollout {ro['id']} {ro['state']}: {ro.get('error')}")
        for c in ro["result"]["completions"]:
            g = groups[prompt_key(part[c["prompt_index"]])]
            acc[g].append(1.0 if (c.get("reward") or 0) >= 1.0 else 0.0)
            lens.append(len(c.get("text") or ""))
    return {"step": 0, "target": sum(acc["target"]) / max(1, len(acc["target"])),
            "general": sum(acc["general"]) / max(1, len(acc["general"])),
            "n_target": len(acc["target"]), "n_general": len(acc["general"]),
            "eval_len_chars": sum(lens) / max(1, len(lens))}


def make_base(api, args, b, ds, groups, models_root):
    """The base: an `sft` job teaching the general skill from random weights; its final
    checkpoint is downloaded into the models root and registered."""
    doc = {
        "name": "paper-base-general",
        "model": {"init": {"config": model_config(b["hidden"], b["layers"]), "seed": 1}},
        "data": {"expert": ds["general_expert"], "eval": ds["eval"]},
        "algorithm": "sft", "expert_per_step": 64,
        "sampling": {"max_new_tokens": b["max_new_tokens"]},
        "optimizer": {"lr": b["base_lr"], "schedule": "cosine", "warmup_steps": 10,
                      "min_lr_ratio": 0.1},
        "reward": args.reward,
        "steps": b["base_steps"], "seed": 1, "checkpoint_every": 0, "keep_checkpoints": 1,
        "eval": {"every": b["base_steps"], "k": args.eval_k, "temperature": 0.6 if args.eval_k > 1 else 0.0,
                 "max_new_tokens": b["max_new_tokens"]},
    }
    log(f"base: sft on the general skill, {b['base_steps']} steps")
    res = run_job(api, doc, groups, "base")
    ck = api.call("GET", f"/v1/jobs/{res['job_id']}/checkpoints")["items"][-1]
    name = f"paper-base-{res['job_id']}"
    d = os.path.join(models_root, name)
    os.makedirs(d, exist_ok=True)
    for f in ck["files"]:
        if f["path"].startswith("optimizer") or f["path"] in ("trainer_state.json", "SHA256SUMS"):
            continue
        body = api.call("GET", f"/v1/jobs/{res['job_id']}/checkpoints/{ck['step']}/files/"
                        + urllib.parse.quote(f["path"]), raw=True)
        os.makedirs(os.path.dirname(os.path.join(d, f["path"])), exist_ok=True)
        with open(os.path.join(d, f["path"]), "wb") as out:
            out.write(body)
    model = api.call("POST", "/v1/models", {"name": name, "path": os.path.abspath(d)})
    log(f"base: {model['id']} (target {res['final']['target']:.3f}, "
        f"general {res['final']['general']:.3f}, {res['wall_s']:.0f} s)")
    return model["id"], res


# ---------------------------------------------------------------- outputs


def mean_std(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def last_of(series, name):
    s = series.get(name) or []
    return s[-1][1] if s else None


def mean_of_tail(series, name, frac=0.2):
    s = series.get(name) or []
    if not s:
        return None
    tail = s[-max(1, int(len(s) * frac)):]
    return statistics.fmean(v for _, v in tail)


def has_rollouts(run):
    """A row that sampled (an SFT row has none: its entropy and length series are all 0)."""
    return any(v for _, v in run["series"].get("response_len_mean") or [])


def sampled(run):
    """The steps at which a run sampled rollouts."""
    return {st for st, v in run["series"].get("response_len_mean") or [] if v}


def summarize(results, base_res):
    rows = []
    if base_res:
        f = base_res["final"]
        rows.append({"row": "original", "label": LABELS["original"], "seeds": 1,
                     "target": [f["target"], 0.0], "general": [f["general"], 0.0],
                     "target_best": [f["target"], 0.0], "entropy": [None, None],
                     "response_len": [None, None], "eval_len_chars": [f["eval_len_chars"], 0.0],
                     "wall_s": [base_res["wall_s"], 0.0]})
    for row in ROWS:
        runs = results.get(row) or []
        if not runs:
            continue
        rows.append({
            "row": row, "label": LABELS[row], "seeds": len(runs),
            "target": list(mean_std([r["final"]["target"] for r in runs])),
            "general": list(mean_std([r["final"]["general"] for r in runs])),
            "target_best": list(mean_std([max(e["target"] for e in r["eval"]) for r in runs])),
            "entropy": list(mean_std([mean_of_tail(r["series"], "entropy")
                                      for r in runs if has_rollouts(r)])),
            "response_len": list(mean_std([mean_of_tail(r["series"], "response_len_mean")
                                           for r in runs if has_rollouts(r)])),
            "eval_len_chars": list(mean_std([r["final"]["eval_len_chars"] for r in runs])),
            "wall_s": list(mean_std([r["wall_s"] for r in runs])),
        })
    return rows


def fmt(ms, pct=False, digits=1):
    m, s = ms
    if m is None:
        return "—"
    if pct:
        return f"{100 * m:.{digits}f} ± {100 * s:.{digits}f}"
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def table_md(rows, meta):
    lines = [
        f"| method | target avg@{meta['eval_k']} (%) | best during training (%) | "
        f"general, retention (%) | entropy (last 20%) | rollout length, tokens | "
        f"eval answer, chars | wall s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['label']} | {fmt(r['target'], True)} | {fmt(r['target_best'], True)} | "
                     f"{fmt(r['general'], True)} | {fmt(r['entropy'], digits=2)} | "
                     f"{fmt(r['response_len'])} | {fmt(r['eval_len_chars'])} | {fmt(r['wall_s'], digits=0)} |")
    return "\n".join(lines) + "\n"


def plot(results, out, meta):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = dict(zip(ROWS, ["#1f77b4", "#d62728", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b",
                             "#7f7f7f"]))
    written = []

    def band(ax, row, xs_ys_list):
        # mean and std over seeds at the steps every seed has
        steps = sorted(set.intersection(*[set(x for x, _ in s) for s in xs_ys_list]))
        if not steps:
            return
        vals = [[dict(s)[x] for s in xs_ys_list] for x in steps]
        m = [statistics.fmean(v) for v in vals]
        sd = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in vals]
        ax.plot(steps, m, label=LABELS[row], color=colors[row], lw=1.6)
        ax.fill_between(steps, [a - b for a, b in zip(m, sd)], [a + b for a, b in zip(m, sd)],
                        color=colors[row], alpha=0.15, lw=0)

    base0 = meta.get("base_final")
    for key, fname, title in [("target", "accuracy.png", "target task: held-out avg@k"),
                              ("general", "retention.png", "general skill (retention): held-out avg@k")]:
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=90)
        for row in ROWS:
            runs = results.get(row) or []
            if runs:
                series = [[(0, base0[key])] * (base0 is not None) +
                          [(e["step"], e[key]) for e in r["eval"]] for r in runs]
                band(ax, row, series)
        ax.set_xlabel("step")
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        fig.savefig(os.path.join(out, fname))
        plt.close(fig)
        written.append(fname)

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=90)
    for row in ROWS:
        runs = results.get(row) or []
        if runs and runs[0]["series"].get("mu"):
            xs, ys = zip(*runs[0]["series"]["mu"])
            ax.plot(xs, ys, label=LABELS[row], color=colors[row], lw=1.6)
    ax.set_xlabel("step")
    ax.set_ylabel("μ (weight of the SFT term)")
    ax.set_ylim(-0.03, 1.05)
    ax.set_title("μ over steps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "mu.png"))
    plt.close(fig)
    written.append("mu.png")

    fig, axs = plt.subplots(1, 2, figsize=(9.6, 3.6), dpi=90)
    for ax, name, yl in [(axs[0], "entropy", "entropy of on-policy tokens"),
                         (axs[1], "response_len_mean", "rollout length (tokens)")]:
        for row in ROWS:
            runs = [r for r in results.get(row) or [] if r["series"].get(name) and has_rollouts(r)]
            if runs:
                # only the steps that sampled (SFT + GRPO samples nothing in its SFT phase)
                band(ax, row, [[tuple(p) for p in r["series"][name] if p[0] in sampled(r)]
                               for r in runs])
        ax.set_xlabel("step")
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3)
    axs[0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "entropy_length.png"))
    plt.close(fig)
    written.append("entropy_length.png")
    return written


def render(out):
    """Redraw table.md and the PNGs from out/results.json with this version of the script."""
    path = os.path.join(out, "results.json")
    try:
        with open(path) as f:
            saved = json.load(f)
        meta, runs = saved["meta"], saved["runs"]
    except (OSError, ValueError, KeyError) as e:
        sys.exit(f"paper.py --render: {path}: {e}")
    table = summarize(runs, saved.get("base"))
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(table_md(table, meta))
    pngs = plot(runs, out, meta)
    saved["table"] = table
    with open(path, "w") as f:
        json.dump(saved, f, indent=1)
    print(table_md(table, meta))
    log(f"redrawn from {path}: table.md, " + ", ".join(pngs))


# ---------------------------------------------------------------- main


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output directory (table.md, results.json, PNGs)")
    ap.add_argument("--budget", choices=sorted(BUDGETS), default="full")
    ap.add_argument("--seeds", type=int, help="seeds per row (default: the budget's)")
    ap.add_argument("--steps", type=int, help="steps per row (default: the budget's)")
    ap.add_argument("--rows", default=",".join(ROWS), help="comma-separated subset of " + ",".join(ROWS))
    ap.add_argument("--eval-k", type=int, help="samples per eval prompt (default: the budget's)")
    srv = ap.add_mutually_exclusive_group(required=True)
    srv.add_argument("--render", action="store_true", help="no training: redraw table.md and the "
                     "PNGs of --out from its results.json (a finished or interrupted run)")
    srv.add_argument("--server", help="URL of a running chordd (needs --models-root unless --base-model)")
    srv.add_argument("--start-server", action="store_true", help="run build/chordd on a temp data dir")
    ap.add_argument("--chordd", default=os.environ.get("CHORDD", "build/chordd"))
    ap.add_argument("--threads", type=int, default=1, help="--threads of a started chordd (0: its default, all cores) [1]")
    ap.add_argument("--models-root", help="the server's --models-root, writable from here (with "
                    "--start-server: the started server's, default a temp dir)")
    ap.add_argument("--token", default=os.environ.get("CHORD_TOKEN"))
    ap.add_argument("--keep", action="store_true", help="keep the started server's data dir")
    ap.add_argument("--base-model", help="start every row from this model (registered id or a "
                    "directory under the models root) instead of training the built-in base")
    ap.add_argument("--general-expert", help="JSONL expert data teaching the base's general skill")
    ap.add_argument("--general-eval", help="JSONL held-out general problems (retention)")
    ap.add_argument("--target-prompts", help="JSONL RL prompts of the target task")
    ap.add_argument("--target-expert", help="JSONL expert demonstrations of the target task")
    ap.add_argument("--target-eval", help="JSONL held-out target problems")
    ap.add_argument("--target-format", choices=sorted(TARGET_FORMATS), default="repeated",
                    help="the built-in target's expert worked solutions: 'repeated' (47*3: "
                    "7+7+7+0=21, ... — the base's own tokens, a new procedure) or 'column' (47*3: "
                    "7*3+0=21, ... — a '*' token the base has never written) [repeated]")
    ap.add_argument("--n-eval", type=int, help="eval problems per set (default: the budget's)")
    ap.add_argument("--lr", type=float)
    ap.add_argument("--reward", default='{"type": "math_boxed"}',
                    help="the verifier (JSON, docs/rewards.md) of every job and eval, e.g. the last "
                         "number of a response: " + json.dumps(LAST_NUMBER) + " [math_boxed]")
    args = ap.parse_args(argv)
    try:
        args.reward = json.loads(args.reward)
    except ValueError as e:
        sys.exit(f"paper.py: --reward: not JSON: {e}")
    if not isinstance(args.reward, dict):
        sys.exit("paper.py: --reward: must be a JSON object with a \"type\" (docs/rewards.md)")

    if args.render:
        return render(args.out)
    b = dict(BUDGETS[args.budget])
    for k in ("seeds", "steps", "n_eval", "lr"):
        if getattr(args, k) is not None:
            b[k] = getattr(args, k)
    args.eval_k = args.eval_k or b["k"]
    if args.budget.startswith("real") and not args.base_model:
        sys.exit(f"paper.py: --budget {args.budget} is for a pretrained model: give --base-model")
    rows = [r for r in args.rows.split(",") if r]
    for r in rows:
        if r not in ROWS:
            sys.exit(f"paper.py: --rows: unknown row {r!r}")
    os.makedirs(args.out, exist_ok=True)
    t_start = time.time()

    proc, tmp = None, None
    if args.start_server:
        tmp = tempfile.mkdtemp(prefix="chord-paper-")
        proc, api, models_root = start_server(args.chordd, tmp, args.threads,
                                                args.models_root)
        log(f"chordd on {api.url}, data in {tmp}")
    else:
        api, models_root = Api(args.server, args.token), args.models_root
        if not args.base_model and not models_root:
            sys.exit("paper.py: --server needs --models-root (to register the base) or --base-model")
    try:
        ddir = os.path.join(args.out, "data")
        os.makedirs(ddir, exist_ok=True)
        files, groups = make_data(args, b, ddir)
        ds = {}
        for name, kind in [("target_prompts", "prompts"), ("target_expert", "expert"),
                           ("eval", "eval"), ("general_expert", "expert")]:
            if name in files:
                ds[name] = api.upload(files[name], kind, "paper-" + name)
        base_res = None
        if args.base_model:
            base = args.base_model
            log(f"base: {base}, evaluating it (POST /v1/rollouts)")
            t0 = time.time()
            f = eval_model(api, base, files["eval"], groups, args.eval_k, b["max_new_tokens"],
                           args.reward)
            base_res = {"job_id": None, "wall_s": None, "final": f, "eval": [f], "series": {}}
            log(f"base: target {f['target']:.3f}, general {f['general']:.3f} "
                f"({time.time() - t0:.0f} s)")
        else:
            base, base_res = make_base(api, args, b, ds, groups, models_root)
        results = {r: [] for r in rows}
        seeds = list(range(1, b["seeds"] + 1))

        def write_outputs(complete):
            """table.md, results.json and the plots of what has run so far (after every job, so
            an interrupted run keeps its finished rows; meta.complete says whether all ran)."""
            meta = {"budget": args.budget, "settings": b, "eval_k": args.eval_k, "seeds": seeds,
                    "reward": args.reward,
                    "rows": rows, "base_model": base, "complete": complete,
                    "base_final": base_res["final"] if base_res else None,
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "host": {"cpus": os.cpu_count(), "uname": " ".join(os.uname())},
                    "total_s": time.time() - t_start, "data": files}
            table = summarize(results, base_res)
            with open(os.path.join(args.out, "table.md"), "w") as f:
                f.write(table_md(table, meta))
            pngs = plot(results, args.out, meta)
            with open(os.path.join(args.out, "results.json"), "w") as f:
                json.dump({"meta": meta, "table": table, "base": base_res, "runs": results}, f,
                          indent=1)
            return table, meta, pngs

        for seed in seeds:
            for row in rows:
                doc = row_job(row, b, base, ds, seed, args.eval_k, args.reward)
                res = run_job(api, doc, groups, f"{row} seed {seed}")
                res["job"] = doc
                results[row].append(res)
                f = res["final"]
                log(f"{row} seed {seed}: target {f['target']:.3f} general {f['general']:.3f} "
                    f"({res['wall_s']:.0f} s)")
                write_outputs(False)
        table, meta, pngs = write_outputs(True)
        print(table_md(table, meta))
        log(f"done in {time.time() - t_start:.0f} s: {args.out}/table.md, results.json, "
            + ", ".join(pngs))
    finally:
        if proc:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
            if not args.keep:
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                log(f"server data kept in {tmp}")


if __name__ == "__main__":
    main()
