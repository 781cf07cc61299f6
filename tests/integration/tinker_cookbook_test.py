"""tinker_cookbook_test.py — recipes of PyPI tinker-cookbook 0.6.1, unmodified, run as their
command lines against a real chordd on loopback (only TINKER_BASE_URL and TINKER_API_KEY point
them at it; no hub access: the model names are local directories under chordd's models root,
which the cookbook loads its tokenizer from and chordd its weights from).

  - supervised: `tinker_cookbook.recipes.chat_sl.train` on the cookbook's own example
    conversations (example_data/conversations.jsonl), a LoRA on a small random-init Qwen2-style
    model with the real Qwen3 tokenizer: the training NLL goes down over 6 steps, and the
    checkpoints the recipe saved (every 3 steps and "final") are listed by the RestClient;
  - RL: `tinker_cookbook.recipes.math_rl.train env=arithmetic loss_fn=importance_sampling` on
    SmolLM2-135M-Instruct (scripts/fetch-smollm2.sh; skipped when it cannot be fetched) with the
    ChatML renderer: sampling with the stop token, rewards, importance-sampling steps; the
    sampler's log-probs equal the trainer's for every sampled token (the recipe's own
    optim/kl_sample_train metrics, ~1e-6), and the final checkpoints are listed.

docs/tinker.md ("The cookbook") says how to run them by hand and what is not supported.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from chordd_harness import CHORDD, TINY_CONFIG, Chordd  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", ".."))
TEST_DATA = os.environ.get("CHORD_TEST_DATA", os.path.join(REPO, "..", "shared", "data"))
KEY = "tml-chord-cookbook"


def run_recipe(srv, module, args, log_path, timeout=500):
    env = dict(os.environ, TINKER_BASE_URL=srv.url, TINKER_API_KEY=KEY, TINKER_TELEMETRY="0",
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled")
    r = subprocess.run([sys.executable, "-m", module] + args +
                       [f"log_path={log_path}", "behavior_if_log_dir_exists=delete"],
                       env=env, cwd=srv.tmp, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-5000:], srv.read_log()[-3000:])
    with open(os.path.join(log_path, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def listed_checkpoints(srv, log_path):
    """The recipe's checkpoints.jsonl rows, each checked against the RestClient's listing of its
    training run (and the files under the data directory)."""
    import tinker
    with open(os.path.join(log_path, "checkpoints.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert rows
    os.environ.update(TINKER_TELEMETRY="0")
    rest = tinker.RestClient(base_url=srv.url, api_key=KEY)
    run_id = rows[-1]["state_path"].split("/")[2]
    listed = {c.tinker_path: c for c in rest.list_checkpoints(run_id).result().checkpoints}
    for row in rows:
        for key in ("state_path", "sampler_path"):
            if row.get(key):
                assert row[key] in listed, (row[key], sorted(listed))
                assert listed[row[key]].size_bytes > 0
    assert rest.get_training_run(run_id).result().is_lora
    return rows


def test_chat_sl_recipe_learns_and_saves(tmp_path):
    s = Chordd(extra_args=["--threads", "2"]).start()
    try:
        base = os.path.join(s.models_root, "tiny-qwen")
        cfg = os.path.join(s.tmp, "tiny.json")
        with open(cfg, "w") as f:  # the Qwen3 tokenizer's 151669 ids fit Qwen's padded 151936
            json.dump(dict(TINY_CONFIG, vocab_size=151936, hidden_size=64, intermediate_size=128,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           max_position_embeddings=1024), f)
        subprocess.run([CHORDD, "init-model", "--config", cfg, "--seed", "1", "--out", base],
                       check=True, capture_output=True)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(os.path.join(TEST_DATA, "tokenizers", "qwen3", name), base)
        import tinker_cookbook
        data = os.path.join(os.path.dirname(tinker_cookbook.__file__), "example_data",
                            "conversations.jsonl")
        log = str(tmp_path / "sl")
        metrics = run_recipe(s, "tinker_cookbook.recipes.chat_sl.train", [
            f"model_name={base}", f"dataset={data}", "renderer_name=role_colon",
            "max_length=128", "batch_size=4", "lora_rank=8", "learning_rate=1e-2",
            "max_steps=6", "save_every=3", "eval_every=0", "infrequent_eval_every=0"], log)
        nll = [m["train_mean_nll"] for m in metrics if "train_mean_nll" in m]
        print("cookbook chat_sl train_mean_nll:", " ".join(f"{x:.3f}" for x in nll))
        assert len(nll) == 6 and nll[-1] < nll[0] - 0.5, nll
        rows = listed_checkpoints(s, log)
        assert [r["name"] for r in rows] == ["000003", "final"], rows
        assert s.get("/healthz").status == 200
    finally:
        s.stop()
        s.cleanup()


def smollm2():
    r = subprocess.run([os.path.join(REPO, "scripts", "fetch-smollm2.sh")], capture_output=True,
                       text=True, timeout=900)
    if r.returncode == 77:
        pytest.skip("SmolLM2-135M-Instruct could not be fetched: " + r.stderr[-300:])
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip().splitlines()[-1]


def test_math_rl_recipe_samples_rewards_and_trains(tmp_path):
    model = smollm2()
    s = Chordd(extra_args=["--threads", "2"], models_root=os.path.dirname(model)).start()
    try:
        log = str(tmp_path / "rl")
        metrics = run_recipe(s, "tinker_cookbook.recipes.math_rl.train", [
            f"model_name={model}", "renderer_name=qwen3_instruct", "env=arithmetic",
            "group_size=8", "groups_per_batch=2", "max_tokens=16", "learning_rate=3e-3",
            "lora_rank=8", "loss_fn=importance_sampling", "max_steps=4", "save_every=0",
            "eval_every=0"], log)
        steps = [m for m in metrics if "env/all/format" in m]
        fmt = [m["env/all/format"] for m in steps]
        kl = [(m["optim/kl_sample_train_v1"], m["optim/kl_sample_train_v2"]) for m in steps]
        print("cookbook math_rl format:", fmt,
              "reward:", [m["env/all/reward/total"] for m in steps],
              "correct:", [m["env/all/correct"] for m in steps],
              "kl_sample_train (v1, v2):", kl)
        assert len(steps) == 4, metrics
        # One engine samples and trains: the recipe recomputes every sampled token's log-prob
        # with forward_backward and compares it with the sampler's (optim/kl_sample_train_*); on
        # Tinker or a two-engine stack these differ by ~1e-3, here by float rounding (~1e-6).
        for v1, v2 in kl:
            assert abs(v1) < 1e-4 and v2 < 1e-6, kl
        # The format term of the reward is printed, not asserted: with 16 samples a step it is
        # too noisy for 4 steps (0.44 -> 1.0 in one run, 0.62 -> 0.81 with a 0.62 in between in
        # another); the learning itself is asserted by the chat_sl test above and by the
        # reference GRPO/importance-sampling loss tests.
        assert all(0.0 <= f <= 1.0 for f in fmt), fmt
        rows = listed_checkpoints(s, log)
        assert rows[-1]["name"] == "final", rows
        assert s.get("/healthz").status == 200
    finally:
        s.stop()
        s.cleanup()
