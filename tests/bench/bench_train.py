"""bench_train.py — throughput of a CHORD training step: rollout (sampled tokens/s) and training
(forward + backward tokens/s), chord vs PyTorch + transformers on the same model and batch
shapes, same thread count, in one run. Not a test: prints a table for docs/benchmarks.md.

chord: `chordd train` on the demo job (the built-in task, random-init model), every response
trained (a 1e-30 entropy bonus turns off the zero-advantage skip), the steps' own
tokens_per_s/rollout and tokens_per_s/train metrics averaged after two warm-up steps.
PyTorch: Qwen2ForCausalLM from the same config; rollout = generate() of the same B·G responses
(sampling, KV cache, max_new_tokens, no early stop); training = forward + log-softmax gather +
backward + AdamW over a padded batch with the same sequences count and length.

usage: python bench_train.py CHORDD [--threads N] [--steps N]"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def chord_numbers(chordd, threads, steps, job):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "job.json")
        with open(path, "w") as f:
            json.dump(job, f)
        metrics = os.path.join(d, "m.jsonl")
        env = dict(os.environ, OMP_WAIT_POLICY="passive")
        subprocess.run([chordd, "train", path, "--out", os.path.join(d, "o"), "--threads",
                        str(threads), "--quiet", "--metrics-out", metrics], check=True, env=env)
        rows = [json.loads(l)["metrics"] for l in open(metrics)][2:]
    avg = lambda k: sum(r[k] for r in rows) / len(rows)
    return {k: avg(k) for k in ("tokens_per_s/rollout", "tokens_per_s/train", "policy_tokens",
                                "expert_tokens", "response_len_mean")}


def torch_numbers(job, threads, reps, seq_len, n_seqs, prompt_len):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = dict(job["model"]["init"]["config"])
    cfg.pop("architectures", None)
    cfg.pop("model_type", None)
    model = Qwen2ForCausalLM(Qwen2Config(**cfg)).float()
    B, G = job["grpo"]["prompts_per_step"], job["grpo"]["group_size"]
    new = job["sampling"]["max_new_tokens"]
    # rollout: B prompts x G samples, fixed length
    prompts = torch.randint(0, 1000, (B * G, prompt_len))
    model.eval()
    with torch.no_grad():
        model.generate(prompts, max_new_tokens=4, min_new_tokens=4, do_sample=True)
        t0 = time.perf_counter()
        for _ in range(reps):
            model.generate(prompts, max_new_tokens=new, min_new_tokens=new, do_sample=True,
                           temperature=1.0, top_p=1.0, top_k=0, pad_token_id=0)
        roll = reps * B * G * new / (time.perf_counter() - t0)
    # training: n_seqs sequences of seq_len tokens, forward + backward + AdamW
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    ids = torch.randint(0, 1000, (n_seqs, seq_len))

    def step():
        logits = model(ids).logits[:, :-1] / job["sampling"]["temperature"]
        logp = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        loss = -logp.mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    step()
    t0 = time.perf_counter()
    for _ in range(reps):
        step()
    train = reps * n_seqs * seq_len / (time.perf_counter() - t0)
    return {"tokens_per_s/rollout": roll, "tokens_per_s/train": train, "torch": torch.__version__}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("chordd")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    out = subprocess.run([a.chordd, "train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    # the demo job, as `chordd train --demo` runs it, with every response trained
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([a.chordd, "train", "--demo", "--steps", "1", "--out", d, "--quiet",
                        "--threads", "1"], check=True, env=dict(os.environ,
                                                                OMP_WAIT_POLICY="passive"))
        job = json.load(open(os.path.join(d, "checkpoints", "step_1", "job.json")))
        data = os.path.join(d, "data")
        job["data"] = {"prompts": os.path.join(data, "prompts.jsonl"),
                       "expert": os.path.join(data, "expert.jsonl")}
        job["grpo"]["entropy_coef"] = 1e-30
        job["steps"], job["checkpoint_every"], job["eval"]["every"] = a.steps, 0, 0
        c = chord_numbers(a.chordd, a.threads, a.steps, job)
    n_seqs = job["grpo"]["prompts_per_step"] * job["grpo"]["group_size"] + job["expert_per_step"]
    tokens = c["policy_tokens"] + c["expert_tokens"]
    prompt_len = 16
    seq_len = int(round(prompt_len + tokens / n_seqs))
    t = torch_numbers(job, a.threads, a.reps, seq_len, n_seqs, prompt_len)
    load = os.getloadavg()[0]
    print(f"CHORD step throughput, demo model ({job['model']['init']['config']['hidden_size']} x "
          f"{job['model']['init']['config']['num_hidden_layers']} layers), {a.threads} thread(s), "
          f"load {load:.1f}, torch {t['torch']}")
    print("| phase | chord tokens/s | PyTorch tokens/s | chord / PyTorch |")
    print("|---|---:|---:|---:|")
    for k, name in (("tokens_per_s/rollout", "rollout (sampled tokens)"),
                    ("tokens_per_s/train", "train (forward + backward tokens)")):
        print(f"| {name} | {c[k]:.0f} | {t[k]:.0f} | {c[k] / t[k]:.2f}x |")
    print(f"(chord: {n_seqs} sequences/step, mean response {c['response_len_mean']:.1f} tokens; "
          f"PyTorch: {n_seqs} x {seq_len} padded tokens, generate {job['sampling']['max_new_tokens']} "
          f"new tokens x {job['grpo']['prompts_per_step'] * job['grpo']['group_size']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
