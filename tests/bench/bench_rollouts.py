"""bench_rollouts.py — serving rollout requests: K requests for one model sent at once to a
chordd (they decode in one growing batch: docs/api.md "Requests decode together") against the
same K requests sent one after another to the same server (each decodes alone), and against
transformers' generate() running each request (its prompts x n as one batch) one after another:
the way a Python stack without a batching server answers them. Same model (a random-init
`chordd init-model` directory loaded by both), same thread count; tokens/s counts each side's sampled
tokens (chord's responses may end at the default tokenizer's stop token, the same ones alone and
batched, which the script checks; transformers' run the full max_tokens: min_new_tokens). Not a test: prints a table for
docs/benchmarks.md ("Rollout serving").

usage: python bench_rollouts.py CHORDD [--requests K] [--threads N] [--max-tokens T]"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

if len(sys.argv) > 1 and not sys.argv[1].startswith("-"):
    os.environ["CHORDD"] = os.path.abspath(sys.argv[1])  # read by the harness at import
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))
from chordd_harness import TINY_CONFIG, Chordd  # noqa: E402

CONFIG = dict(TINY_CONFIG, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)


def wait(srv, rid, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        ro = srv.get("/v1/rollouts/" + rid).json()
        if ro["state"] != "pending":
            assert ro["state"] == "succeeded", ro
            return ro
        time.sleep(0.01)
    raise AssertionError("rollout still pending")


def requests(model, k, max_tokens):
    return [{"prompts": [f"Compute {i}+{i + 3}.", f"Name the colour number {i}."],
             "model": model, "n": 2, "temperature": 1.0, "max_tokens": max_tokens,
             "seed": 100 + i} for i in range(k)]


def chord_side(chordd, threads, k, max_tokens):
    srv = Chordd(extra_args=["--threads", str(threads)],
                 env=dict(os.environ, OMP_WAIT_POLICY="passive")).start()
    try:
        cfg = os.path.join(srv.tmp, "cfg.json")
        with open(cfg, "w") as f:
            json.dump(CONFIG, f)
        mdir = os.path.join(srv.models_root, "bench")
        subprocess.run([chordd, "init-model", "--config", cfg, "--seed", "1", "--out", mdir],
                       check=True, capture_output=True)
        reqs = requests("bench", k, max_tokens)
        wait(srv, srv.post("/v1/rollouts", reqs[0]).json()["id"])  # warm-up
        t0 = time.perf_counter()
        alone = [wait(srv, srv.post("/v1/rollouts", r).json()["id"]) for r in reqs]
        t_alone = time.perf_counter() - t0
        t0 = time.perf_counter()
        ids = [srv.post("/v1/rollouts", r).json()["id"] for r in reqs]
        together = [wait(srv, i) for i in ids]
        t_together = time.perf_counter() - t0
    finally:
        srv.stop()
        srv.cleanup()
    tokens = lambda ros: sum(ro["result"]["tokens"] for ro in ros)  # noqa: E731
    assert tokens(alone) == tokens(together), "the batched requests drew other lengths"
    same = all([c["token_ids"] for c in a["result"]["completions"]] ==
               [c["token_ids"] for c in b["result"]["completions"]]
               for a, b in zip(alone, together))
    batched = max(ro["result"]["batched_requests"] for ro in together)
    return mdir, tokens(alone), t_alone, t_together, batched, same


def torch_side(cfg, threads, k, max_tokens):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.set_num_threads(threads)
    c = dict(cfg)
    c.pop("architectures", None)
    c.pop("model_type", None)
    model = Qwen2ForCausalLM(Qwen2Config(**c)).float().eval()
    prompts = torch.randint(0, 1000, (4, 12))  # 2 prompts x n 2 per request, ~12 tokens
    with torch.no_grad():
        model.generate(prompts, max_new_tokens=4, min_new_tokens=4, do_sample=True,
                       pad_token_id=0)
        t0 = time.perf_counter()
        for _ in range(k):
            model.generate(prompts, max_new_tokens=max_tokens, min_new_tokens=max_tokens,
                           do_sample=True, temperature=1.0, top_p=1.0, top_k=0, pad_token_id=0)
        return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("chordd")
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=64)
    a = ap.parse_args()
    _, tokens, t_alone, t_together, batched, same = chord_side(a.chordd, a.threads, a.requests,
                                                              a.max_tokens)
    t_torch = torch_side(CONFIG, a.threads, a.requests, a.max_tokens)
    torch_tokens = a.requests * 4 * a.max_tokens
    print(f"{a.requests} requests x (2 prompts x n 2) x {a.max_tokens} tokens = {tokens} tokens, "
          f"{a.threads} threads, model {CONFIG['hidden_size']}x{CONFIG['num_hidden_layers']} "
          f"V {CONFIG['vocab_size']}")
    print("| | seconds | tokens/s | tokens/s vs chord one at a time |")
    print("|---|---|---|---|")
    print(f"| chord, sent at once (up to {batched} requests in one batch) | {t_together:.2f} | "
          f"{tokens / t_together:.0f} | {t_alone / t_together:.2f}x |")
    print(f"| chord, one at a time | {t_alone:.2f} | {tokens / t_alone:.0f} | 1.00x |")
    print(f"| transformers generate(), one request at a time | {t_torch:.2f} | "
          f"{torch_tokens / t_torch:.0f} | {torch_tokens / t_torch / (tokens / t_alone):.2f}x |")
    print(f"same tokens batched and alone: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
