"""shared_base_test.py — several LoRA adapters trained and sampled at once on one base, in one
chordd, with one copy of the base (issue 14; server/jobs/bases.h).

chordd runs with `--slots 2` on the CPU. Two LoRA jobs (different ranks, targets and seeds) on one
base directory run at the same time; while both run:
  - GET /healthz lists ONE shared base, used by both jobs, whose bytes are the base's weights
    (checked against the safetensors file written by `chordd init-model`, an independent figure);
  - the server's resident memory (VmRSS from /proc) grew by about one copy of the base, not two;
  - rollouts from each job's first checkpoint (its adapter over the same base) succeed, sampled
    from the shared copy too.
Afterwards the base is freed (no users, no entry), and each adapter equals, byte for byte, the
adapter of the same job run alone: training beside another job changes nothing.
"""
import json
import os
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from chordd_harness import (CHORDD, TINY_CONFIG, Chordd, arith_expert, arith_prompts,  # noqa: E402
                            jsonl)

# About 23 M parameters (93 MB in float32): large beside a job's adapter, activations and KV cache,
# so a second copy would show in the process's memory; a step still takes well under a second.
BASE_CONFIG = dict(TINY_CONFIG, hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
                   num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=256)


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def sanitized(pid):
    """Whether the process runs with ASan or TSan (their runtime libraries are mapped)."""
    with open(f"/proc/{pid}/maps") as f:
        maps = f.read()
    return "libasan" in maps or "libtsan" in maps


def lora_job(name, prompts, expert, rank, targets, seed, steps):
    return {
        "name": name,
        "model": {"path": "base"},
        "data": {"prompts": prompts, "expert": expert},
        "algorithm": "chord",
        "grpo": {"group_size": 2, "prompts_per_step": 2},
        "expert_per_step": 2,
        "chord": {"mu": {"warmup_steps": 1, "decay_steps": 4, "peak": 0.5, "valley": 0.1}},
        "sampling": {"max_new_tokens": 8},
        "optimizer": {"lr": 5e-3},
        "lora": {"rank": rank, "alpha": 2 * rank, "target_modules": targets},
        "steps": steps,
        "seed": seed,
        "checkpoint_every": 2,
        "eval": {"every": 0},
        "micro_batch_tokens": 1024,
    }


def adapter_bytes(srv, job_id, step):
    r = srv.get(f"/v1/jobs/{job_id}/checkpoints/{step}/files/adapter_model.safetensors")
    assert r.status == 200, r
    return r.body


def base_weights_bytes(model_dir):
    """The float32 tensor bytes of model.safetensors (the file minus its JSON header)."""
    path = os.path.join(model_dir, "model.safetensors")
    with open(path, "rb") as f:
        header = int.from_bytes(f.read(8), "little")
    return os.path.getsize(path) - 8 - header


@pytest.fixture(scope="module")
def srv():
    s = Chordd(extra_args=["--slots", "2"]).start()
    yield s
    rc = s.stop()
    s.cleanup()
    assert rc == 0, "chordd did not exit cleanly on SIGTERM"


def test_two_adapters_at_once_on_one_base(srv):
    cfg_path = os.path.join(srv.tmp, "base.json")
    with open(cfg_path, "w") as f:
        json.dump(BASE_CONFIG, f)
    base = os.path.join(srv.models_root, "base")
    subprocess.run([CHORDD, "init-model", "--config", cfg_path, "--seed", "11", "--out", base],
                   check=True, capture_output=True)
    weights = base_weights_bytes(base)
    assert weights > 80e6, weights

    health = srv.get("/healthz").json()
    assert health["slots"] == 2 and health["workers"] == 2, health
    assert health["shared_bases"] == [], health

    p = srv.upload("prompts", jsonl(arith_prompts(16))).json()["id"]
    e = srv.upload("expert", jsonl(arith_expert(16))).json()["id"]
    steps = 10
    docs = [lora_job("a", p, e, 4, ["q_proj", "v_proj"], 7, steps),
            lora_job("b", p, e, 8, "all-linear", 8, steps)]
    rss0 = rss_bytes(srv.proc.pid)
    ids = []
    for d in docs:
        r = srv.post("/v1/jobs", d)
        assert r.status == 201, r
        ids.append(r.json()["id"])

    # both running at once, on one copy of the base
    deadline, seen = time.time() + 120, None
    while time.time() < deadline:
        states = [srv.get("/v1/jobs/" + i).json()["state"] for i in ids]
        health = srv.get("/healthz").json()
        if states == ["running", "running"] and health["shared_bases"] and \
                health["shared_bases"][0]["users"] >= 2:
            seen = health
            break
        assert "failed" not in states, (states, srv.read_log()[-3000:])
        time.sleep(0.05)
    assert seen, "the two jobs never ran at once:\n" + srv.read_log()[-3000:]
    assert len(seen["shared_bases"]) == 1, seen  # one copy, whatever the number of users
    sb = seen["shared_bases"][0]
    assert sb["device"] == "cpu" and sb["model"] == "dir:" + os.path.realpath(base), sb
    # the shared bytes are the base's weights (plus RoPE's inverse frequencies, a few floats)
    assert weights <= sb["bytes"] <= weights + 4096, (sb, weights)
    prom = srv.get("/metrics").body.decode()
    label = f'{{device="cpu",model="dir:{os.path.realpath(base)}"}}'
    assert f"chord_shared_base_bytes{label} {sb['bytes']}" in prom, prom[-1500:]
    assert f"chord_shared_base_users{label} " in prom, prom[-1500:]
    rss_both = rss_bytes(srv.proc.pid)
    print(f"shared base {sb['bytes'] / 1e6:.1f} MB, users {sb['users']}; resident memory grew "
          f"{(rss_both - rss0) / 1e6:.1f} MB with both jobs running (two copies: "
          f"{2 * weights / 1e6:.1f} MB)")
    # one copy of the base plus two jobs' adapters, activations and caches (a few MB each);
    # two copies would be at least 2 x weights (not under a sanitizer: its shadow memory and
    # quarantine of freed blocks make the resident size no measure of the heap)
    if not sanitized(srv.proc.pid):
        assert rss_both - rss0 < 1.5 * weights, (rss_both - rss0, weights)

    # sample from each adapter while both train: the first checkpoint of each job (its adapter
    # over the same shared base)
    rollouts = []
    for i in ids:
        deadline = time.time() + 120
        while time.time() < deadline:
            ck = srv.get(f"/v1/jobs/{i}/checkpoints").json()["items"]
            if ck:
                break
            time.sleep(0.05)
        assert ck, "no checkpoint:\n" + srv.read_log()[-3000:]
        r = srv.post("/v1/rollouts", {"prompts": ["Compute 12+30."], "n": 2, "max_tokens": 8,
                                      "seed": 1, "checkpoint": {"job_id": i, "step": 2}})
        assert r.status == 202, r
        rollouts.append(r.json()["id"])
    outs = [srv.wait_rollout(r, timeout=120) for r in rollouts]
    for o in outs:
        assert o["state"] == "succeeded", o
        assert len(o["result"]["completions"]) == 2
    # two different adapters: different log-probs for the same prompt and seed
    assert outs[0]["result"]["completions"][0]["logprobs"] != \
        outs[1]["result"]["completions"][0]["logprobs"]

    for i in ids:
        j = srv.wait_job(i, lambda j: j["state"] in ("succeeded", "failed", "cancelled"),
                         timeout=300)
        assert j["state"] == "succeeded", (j, srv.read_log()[-3000:])
    # the last user gone, the base is freed
    deadline = time.time() + 10
    while srv.get("/healthz").json()["shared_bases"] and time.time() < deadline:
        time.sleep(0.05)
    assert srv.get("/healthz").json()["shared_bases"] == []
    metrics = srv.get("/metrics").body.decode()
    assert "chord_workers 2" in metrics, metrics[:2000]

    # each adapter trained beside the other equals the same job trained alone
    alone = srv.post("/v1/jobs", docs[0])
    assert alone.status == 201, alone
    j = srv.wait_job(alone.json()["id"],
                     lambda j: j["state"] in ("succeeded", "failed", "cancelled"), timeout=300)
    assert j["state"] == "succeeded", j
    assert adapter_bytes(srv, alone.json()["id"], steps) == adapter_bytes(srv, ids[0], steps)
    assert adapter_bytes(srv, ids[0], steps) != adapter_bytes(srv, ids[1], steps)


def test_a_second_slot_waits_for_memory():
    """With two slots but a memory limit one job fills (--device-memory-mb 100, a job estimated
    at about 71 MiB), the second queued job waits for the first instead of running beside it,
    then runs: never both at once, both succeed."""
    from chordd_harness import tiny_job
    s = Chordd(extra_args=["--slots", "2", "--device-memory-mb", "100"]).start()
    try:
        p = s.upload("prompts", jsonl(arith_prompts(8))).json()["id"]
        e = s.upload("expert", jsonl(arith_expert(8))).json()["id"]
        doc = tiny_job(p, e)
        doc["model"] = {"init": {"config": dict(TINY_CONFIG, hidden_size=256,
                                                intermediate_size=512, num_hidden_layers=2,
                                                num_attention_heads=4, num_key_value_heads=2),
                                 "seed": 3}}
        ids = []
        for _ in range(2):
            r = s.post("/v1/jobs", doc)
            assert r.status == 201, r
            ids.append(r.json()["id"])
        both, states = False, []
        deadline = time.time() + 180
        while time.time() < deadline:
            states = [s.get("/v1/jobs/" + i).json()["state"] for i in ids]
            both |= states == ["running", "running"]
            if all(x in ("succeeded", "failed", "cancelled") for x in states):
                break
            time.sleep(0.02)
        assert states == ["succeeded", "succeeded"], (states, s.read_log()[-3000:])
        assert not both, "the second job ran beside the first over the memory limit"
    finally:
        rc = s.stop()
        s.cleanup()
    assert rc == 0
