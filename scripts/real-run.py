#!/usr/bin/env python3
"""real-run.py — a real post-training run through the service, measured before and after:
SmolLM2-135M-Instruct (scripts/fetch-smollm2.sh) on real verifiable math data
(scripts/real-data.py), eval -> CHORD job over REST -> eval, plus the general-knowledge retention
check (scripts/retention-quiz.py) on both models. A benchmark, not a test: it asserts nothing and
prints what it measured (docs/training.md "A real model").

Usage:
  real-run.py --chordd build/chordd --model ~/.cache/chord/models/SmolLM2-135M-Instruct \\
              --data DIR --out RUNDIR [--steps 30] [--threads N] [--quiz 120]

DIR holds prompts.jsonl, expert.jsonl and eval.jsonl. RUNDIR receives the server's data
directory, every sample, the per-step metrics and summary.json. The job document is printed in
the summary; edit JOB below to try others.
"""
import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))


def job_doc(steps, model_id, ds):
    """CHORD with the SFT weight mu falling from 0.9 to 0.1 over the run (the default schedule's
    200 warm-up steps are longer than this whole run), phi on, small batches for a CPU."""
    return {
        "name": "smollm2-real-chord",
        "model": {"path": model_id},
        "data": {"prompts": ds["prompts"], "expert": ds["expert"], "eval": ds["eval"]},
        "algorithm": "chord",
        "chord": {"mu": {"warmup_steps": 0, "decay_steps": steps, "peak": 0.9, "valley": 0.1},
                  "phi": True},
        "grpo": {"group_size": 4, "prompts_per_step": 8},
        "expert_per_step": 16,
        "sampling": {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 64},
        "optimizer": {"lr": 1e-5, "schedule": "constant", "weight_decay": 0.0, "grad_clip": 1.0},
        "reward": {"type": "math_boxed"},
        "steps": steps, "seed": 1, "checkpoint_every": steps, "keep_checkpoints": 1,
        "eval": {"every": max(1, steps // 3), "k": 1, "temperature": 0.0, "max_new_tokens": 64},
        "device": "cpu",
    }


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def call(base, method, path, body=None, ctype="application/json"):
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    r = urllib.request.Request(base + path, data=data, method=method,
                               headers={"Content-Type": ctype} if data is not None else {})
    try:
        with urllib.request.urlopen(r, timeout=120) as f:
            return f.status, json.loads(f.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def lenient(completion, answer):
    """the last number of the text equals the answer (whether or not it is boxed)"""
    nums = re.findall(r"-?\d+(?:\.\d+)?", completion.replace(",", ""))
    try:
        return bool(nums) and float(nums[-1]) == float(answer)
    except ValueError:
        return False


def evaluate(chordd, model, tokenizer, data, out, threads):
    cmd = [chordd, "eval", "--model", model, "--tokenizer", tokenizer, "--data", data,
           "--max-new-tokens", "64", "--device", "cpu", "--samples-out", out]
    if threads:
        cmd += ["--threads", str(threads)]
    if os.path.exists(out):
        os.remove(out)
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    res = json.loads(r.stdout.strip().splitlines()[-1])
    samples = [json.loads(line) for line in open(out)]
    res["lenient_accuracy"] = sum(lenient(s["completion"], s["answer"]) for s in samples) / len(
        samples)
    res["boxed_fraction"] = sum("\\boxed{" in s["completion"] for s in samples) / len(samples)
    res["example"] = samples[0]["completion"][:200]
    return res


def quiz(chordd, model, tokenizer, n, threads):
    cmd = [sys.executable, os.path.join(HERE, "retention-quiz.py"), "--chordd", chordd,
           "--model", model, "--tokenizer", tokenizer, "--n", str(n), "--device", "cpu"]
    if threads:
        cmd += ["--threads", str(threads)]
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    q = json.loads(r.stdout)
    return {"questions": q["questions"], "acc": q["acc"], "acc_norm": q["acc_norm"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chordd", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--quiz", type=int, default=120, help="retention questions (0: skip)")
    a = ap.parse_args()
    chordd, model = os.path.abspath(a.chordd), os.path.abspath(os.path.expanduser(a.model))
    os.makedirs(a.out, exist_ok=True)
    summary = {"model": model, "data": os.path.abspath(a.data), "steps": a.steps}
    eval_file = os.path.join(a.data, "eval.jsonl")

    t0 = time.time()
    summary["before"] = evaluate(chordd, model, model, eval_file,
                                 os.path.join(a.out, "eval-before.jsonl"), a.threads)
    if a.quiz:
        summary["before"]["retention"] = quiz(chordd, model, model, a.quiz, a.threads)
    print("before:", json.dumps(summary["before"]), flush=True)

    data_dir = os.path.join(a.out, "server")
    shutil.rmtree(data_dir, ignore_errors=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [chordd, "serve", "--data-dir", data_dir, "--http", f"127.0.0.1:{port}", "--grpc", "off",
           "--models-root", os.path.dirname(model)]
    if a.threads:
        cmd += ["--threads", str(a.threads)]
    log = open(os.path.join(a.out, "chordd.log"), "wb")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(300):
            try:
                if call(base, "GET", "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        st, m = call(base, "POST", "/v1/models", {"name": "smollm2", "path": model})
        if st != 201:
            sys.exit(f"real-run: model registration: {st} {m}")
        ds = {}
        for kind in ("prompts", "expert", "eval"):
            body = open(os.path.join(a.data, kind + ".jsonl"), "rb").read()
            st, d = call(base, "POST", f"/v1/datasets?kind={kind}&name={kind}", body,
                         "application/x-ndjson")
            if st != 201:
                sys.exit(f"real-run: upload {kind}: {st} {d}")
            ds[kind] = d["id"]
        job = job_doc(a.steps, m["id"], ds)
        summary["job"] = job
        st, j = call(base, "POST", "/v1/jobs", job)
        if st != 201:
            sys.exit(f"real-run: job: {st} {j}")
        jid, since, steps = j["id"], 0, []
        t_job = time.time()
        while True:
            st, mt = call(base, "GET", f"/v1/jobs/{jid}/metrics?since_step={since}")
            for s in mt.get("steps", []):
                steps.append(s)
                mm = s["metrics"]
                line = (f"step {s['step']:3d}  mu {mm.get('mu', 0):.2f}  reward "
                        f"{mm.get('reward_mean', 0):.3f}  sft {mm.get('sft_loss', 0):.3f}  "
                        f"{mm.get('time/step', 0):.1f} s")
                if "eval/accuracy" in mm:
                    line += f"  eval {mm['eval/accuracy']:.3f}"
                print(line, flush=True)
            since = mt.get("next_step", since)
            st, j = call(base, "GET", f"/v1/jobs/{jid}")
            if j["state"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(2)
        summary["job_state"], summary["job_error"] = j["state"], j.get("error")
        summary["job_seconds"] = time.time() - t_job
        # the metrics the loop may have missed after the last poll
        st, mt = call(base, "GET", f"/v1/jobs/{jid}/metrics?since_step={since}")
        steps += mt.get("steps", [])
        with open(os.path.join(a.out, "metrics.jsonl"), "w") as f:
            for s in steps:
                f.write(json.dumps(s) + "\n")
        st, cks = call(base, "GET", f"/v1/jobs/{jid}/checkpoints")
    finally:
        server.terminate()
        server.wait(60)
    if summary["job_state"] != "succeeded":
        print(json.dumps(summary, indent=1))
        sys.exit("real-run: the job did not succeed")
    last = max(cks["items"], key=lambda c: c["step"])
    ckdir = os.path.join(data_dir, "checkpoints", jid, f"step_{last['step']}")
    times = [s["metrics"].get("time/step", 0) for s in steps if "time/step" in s["metrics"]]
    summary["seconds_per_step"] = sum(times) / max(1, len(times))
    summary["time_split"] = {k: sum(s["metrics"].get(k, 0) for s in steps) / max(1, len(steps))
                             for k in ("time/rollout", "time/reward", "time/train", "time/eval")}
    summary["reward_first_last"] = [steps[0]["metrics"].get("reward_mean"),
                                    steps[-1]["metrics"].get("reward_mean")]
    summary["after"] = evaluate(chordd, ckdir, model, eval_file,
                                os.path.join(a.out, "eval-after.jsonl"), a.threads)
    if a.quiz:
        summary["after"]["retention"] = quiz(chordd, ckdir, model, a.quiz, a.threads)
    summary["checkpoint"] = ckdir
    summary["total_seconds"] = time.time() - t0
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps({k: v for k, v in summary.items() if k != "job"}, indent=1))


if __name__ == "__main__":
    main()
