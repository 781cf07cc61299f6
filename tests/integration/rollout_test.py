"""rollout_test.py — POST /v1/rollouts end to end on a real chordd, checked against Hugging Face.

A model directory written by `chordd init-model` is registered under the models root; a rollout
request samples n completions per prompt; the log-probs chord returns must equal transformers'
log_softmax(logits / T) of the same tokens (an independent implementation), and answers are scored.
"""
import json
import os
import sqlite3
import subprocess
import sys
import time

import pytest
import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, os.path.dirname(__file__))
from chordd_harness import CHORDD, TINY_CONFIG, Chordd  # noqa: E402


@pytest.fixture(scope="module")
def srv():
    s = Chordd().start()
    yield s
    rc = s.stop()
    s.cleanup()
    assert rc == 0, "chordd did not exit cleanly on SIGTERM"  # a sanitizer report makes it fail


def make_model(srv, name, seed=3):
    cfg = dict(TINY_CONFIG, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, intermediate_size=96)
    cfg_path = os.path.join(srv.tmp, name + ".json")
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)
    out = os.path.join(srv.models_root, name)
    subprocess.run([CHORDD, "init-model", "--config", cfg_path, "--seed", str(seed), "--out", out],
                   check=True, capture_output=True)
    return out


def wait_rollout(srv, rid, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        ro = srv.get("/v1/rollouts/" + rid).json()
        if ro["state"] != "pending":
            return ro
        time.sleep(0.05)
    raise AssertionError("rollout still pending:\n" + srv.read_log()[-2000:])


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_rollout_logprobs_match_transformers(srv, temperature):
    mdir = make_model(srv, f"roll_t{temperature}")
    r = srv.post("/v1/rollouts", {"prompts": ["Compute 12+30.", "Compute 7-5."],
                                  "model": os.path.basename(mdir), "n": 3,
                                  "temperature": temperature, "max_tokens": 12, "seed": 5,
                                  "answers": ["42", 2]})
    assert r.status == 202, r
    ro = wait_rollout(srv, r.json()["id"])
    assert ro["state"] == "succeeded", ro
    comps = ro["result"]["completions"]
    assert len(comps) == 6
    assert sorted((c["prompt_index"], c["index"]) for c in comps) == \
        [(p, i) for p in range(2) for i in range(3)]
    hf = AutoModelForCausalLM.from_pretrained(mdir, dtype=torch.float32)
    hf.eval()
    # "tokens": the text each token adds, joining into Hugging Face tokenizers' decode of the ids
    # with special tokens kept (the model has no tokenizer.json: the embedded default's)
    from tokenizers import Tokenizer
    hf_tok = Tokenizer.from_file(os.path.join(os.path.dirname(__file__), "..", "..", "server",
                                              "model", "default_tokenizer", "tokenizer.json"))
    worst = 0.0
    for c in comps:
        assert 1 <= len(c["token_ids"]) == len(c["logprobs"]) == len(c["tokens"]) <= 12
        assert "".join(c["tokens"]) == hf_tok.decode(c["token_ids"], skip_special_tokens=False)
        assert c["finish_reason"] in ("stop", "length")
        assert c["reason"] in ("correct", "wrong", "no_answer")  # a verdict, never an error
        ids = c["prompt_token_ids"] + c["token_ids"]
        with torch.no_grad():
            logits = hf(torch.tensor([ids])).logits[0].double() / temperature
        lp = torch.log_softmax(logits, dim=-1)
        n_prompt = len(c["prompt_token_ids"])
        for t, tok in enumerate(c["token_ids"]):
            ref = lp[n_prompt + t - 1, tok].item()
            worst = max(worst, abs(ref - c["logprobs"][t]) / max(1.0, abs(ref)))
    assert worst <= 1e-4, worst


def test_rollout_from_a_lora_adapter_matches_peft(srv):
    """A PEFT LoRA directory under the models root (written by peft itself, its
    base_model_name_or_path the base's directory) samples as base + adapter, unmerged: the
    log-probs equal peft's model in PyTorch, and differ from the base's alone."""
    from peft import LoraConfig, get_peft_model
    base = make_model(srv, "lora_base", seed=4)
    hf = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    torch.manual_seed(0)
    pm = get_peft_model(hf, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                       target_modules=["q_proj", "v_proj", "down_proj"]))
    pm.eval()
    adir = os.path.join(srv.models_root, "lora_adapter")
    pm.save_pretrained(adir)
    cfg_path = os.path.join(adir, "adapter_config.json")
    with open(cfg_path) as f:
        acfg = json.load(f)
    acfg["base_model_name_or_path"] = base
    with open(cfg_path, "w") as f:
        json.dump(acfg, f)
    r = srv.post("/v1/rollouts", {"prompts": ["Compute 12+30."], "model": "lora_adapter",
                                  "n": 2, "temperature": 1.0, "max_tokens": 10, "seed": 3})
    assert r.status == 202, r
    ro = wait_rollout(srv, r.json()["id"])
    assert ro["state"] == "succeeded", ro
    worst, off_base = 0.0, 0.0
    for c in ro["result"]["completions"]:
        ids = c["prompt_token_ids"] + c["token_ids"]
        with torch.no_grad():
            lp = torch.log_softmax(pm(torch.tensor([ids])).logits[0].double(), dim=-1)
            with pm.disable_adapter():
                lpb = torch.log_softmax(pm(torch.tensor([ids])).logits[0].double(), dim=-1)
        n_prompt = len(c["prompt_token_ids"])
        for t, tok in enumerate(c["token_ids"]):
            ref = lp[n_prompt + t - 1, tok].item()
            worst = max(worst, abs(ref - c["logprobs"][t]) / max(1.0, abs(ref)))
            off_base = max(off_base, abs(lpb[n_prompt + t - 1, tok].item() - c["logprobs"][t]))
    assert worst <= 1e-4, worst
    assert off_base > 1e-3, off_base  # the adapter mattered
    # an adapter naming a base outside the models root is refused, naming the field
    bad = os.path.join(srv.models_root, "lora_outside")
    os.makedirs(bad, exist_ok=True)
    with open(os.path.join(bad, "adapter_config.json"), "w") as f:
        json.dump(dict(acfg, base_model_name_or_path=srv.tmp), f)
    r = srv.post("/v1/rollouts", {"prompts": ["x"], "model": "lora_outside"})
    msg = r.json()["error"]["message"]
    assert r.status == 400 and "base_model_name_or_path" in msg and "outside" in msg, r
    # registered as a model: the same rules, and its id samples as base + adapter
    r = srv.post("/v1/models", {"path": "lora_outside"})
    assert r.status == 400 and "base_model_name_or_path" in r.json()["error"]["message"], r
    r = srv.post("/v1/models", {"name": "adapter", "path": "lora_adapter"})
    assert r.status == 201, r
    mid = r.json()["id"]
    got = srv.get("/v1/models/" + mid).json()
    assert got["source"] == "lora" and got["lora"]["r"] == 4, got
    assert os.path.realpath(got["lora"]["base"]) == os.path.realpath(base), got
    assert got["config"]["hidden_size"] == 48  # the base's architecture
    req = {"prompts": ["Compute 12+30."], "n": 2, "temperature": 1.0, "max_tokens": 10,
           "seed": 3}
    by_id = wait_rollout(srv, srv.post("/v1/rollouts", dict(req, model=mid)).json()["id"])
    assert by_id["state"] == "succeeded", by_id
    assert [c["logprobs"] for c in by_id["result"]["completions"]] == \
        [c["logprobs"] for c in ro["result"]["completions"]]


def test_rollout_is_seeded(srv):
    mdir = make_model(srv, "roll_seed")
    req = {"prompts": ["Compute 1+2."], "model": os.path.basename(mdir), "n": 2,
           "max_tokens": 8, "seed": 11}
    a = wait_rollout(srv, srv.post("/v1/rollouts", req).json()["id"])
    b = wait_rollout(srv, srv.post("/v1/rollouts", req).json()["id"])
    c = wait_rollout(srv, srv.post("/v1/rollouts", dict(req, seed=12)).json()["id"])
    ids = lambda ro: [x["token_ids"] for x in ro["result"]["completions"]]  # noqa: E731
    assert ids(a) == ids(b)
    assert ids(a) != ids(c)


def test_rollout_missing_weights_fails_cleanly(srv):
    d = os.path.join(srv.models_root, "noweights")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(TINY_CONFIG, f)
    r = srv.post("/v1/rollouts", {"prompts": ["x"], "model": "noweights"})
    assert r.status == 202
    ro = wait_rollout(srv, r.json()["id"])
    assert ro["state"] == "failed" and "safetensors" in ro["error"], ro
    assert srv.get("/healthz").status == 200


def test_pending_rollouts_run_again_after_a_restart():
    """A rollout request accepted by a process that died before running it (left 'pending' in
    SQLite) is run by the next process: it ends 'succeeded' with the same samples as the same
    seeded request run normally. The pending row is written here straight into the database,
    as a SIGKILL between accepting and running would leave it."""
    s = Chordd().start()
    try:
        mdir = make_model(s, "roll_restart")
        req = {"prompts": ["Compute 3+4.", "Compute 9-2."], "model": os.path.basename(mdir),
               "n": 2, "max_tokens": 8, "seed": 21}
        done = wait_rollout(s, s.post("/v1/rollouts", req).json()["id"])
        assert done["state"] == "succeeded", done
        assert s.stop() == 0

        db = os.path.join(s.data_dir, "chord.db")
        con = sqlite3.connect(db)
        (request_json,), = con.execute("SELECT request_json FROM rollouts WHERE id = ?",
                                       (done["id"],)).fetchall()
        pending = ["roll_" + os.urandom(12).hex() for _ in range(2)]
        with con:
            for rid in pending:
                con.execute("INSERT INTO rollouts (id, state, request_json, created_ms) "
                            "VALUES (?, 'pending', ?, ?)", (rid, request_json,
                                                            int(time.time() * 1000)))
        con.close()

        s.start()
        for rid in pending:
            ro = wait_rollout(s, rid)
            assert ro["state"] == "succeeded", (ro, s.read_log()[-2000:])
            ids = [c["token_ids"] for c in ro["result"]["completions"]]
            assert ids == [c["token_ids"] for c in done["result"]["completions"]]
        assert "pending rollout request(s) queued again" in s.read_log()
        assert s.stop() == 0
    finally:
        s.cleanup()


def test_requests_join_a_running_batch(srv):
    """The growing batch (docs/api.md "Rollouts"): requests queued while another decodes join its
    batch when they sample from the same model (each with its own n, temperature, top_p,
    max_tokens and seed), are answered with what each draws alone, and say how many decoded
    together (batched_requests); a request for another model waits and runs alone. The queue is
    filled behind a slow request for a third model, so that they are all waiting when it ends."""
    slow_cfg = dict(TINY_CONFIG, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    cfg_path = os.path.join(srv.tmp, "slow.json")
    with open(cfg_path, "w") as f:
        json.dump(slow_cfg, f)
    subprocess.run([CHORDD, "init-model", "--config", cfg_path, "--seed", "1", "--out",
                    os.path.join(srv.models_root, "roll_slow")], check=True, capture_output=True)
    m = os.path.basename(make_model(srv, "roll_join"))
    other = os.path.basename(make_model(srv, "roll_join_other", seed=4))
    slow = srv.post("/v1/rollouts", {"prompts": ["x"], "model": "roll_slow", "n": 8,
                                     "temperature": 0, "max_tokens": 900, "seed": 1}).json()["id"]
    reqs = [{"prompts": ["Compute 12+30.", "Compute 7-5."], "model": m, "n": 2,
             "max_tokens": 100, "seed": 5},
            {"prompts": ["Name a colour."], "model": m, "n": 3, "temperature": 0.7, "top_p": 0.9,
             "max_tokens": 20, "seed": 6},
            {"prompts": ["Hi"], "model": m,
             "temperature": 0, "max_tokens": 30, "seed": 7},
            {"prompts": ["Compute 1+1."], "model": other, "max_tokens": 10, "seed": 8}]
    ids = [srv.post("/v1/rollouts", r).json()["id"] for r in reqs]
    assert srv.get("/v1/rollouts/" + slow).json()["state"] == "pending", \
        "the slow request ended before the others were queued: make it slower"
    got = [wait_rollout(srv, i, timeout=120) for i in ids]
    assert wait_rollout(srv, slow)["result"]["batched_requests"] == 1
    for ro in got:
        assert ro["state"] == "succeeded", ro
    batched = [ro["result"]["batched_requests"] for ro in got]
    assert batched[0] == 3 and batched[1] >= 2 and batched[2] >= 2, batched
    assert batched[3] == 1, batched  # another model: alone
    for r, ro in zip(reqs, got):  # each again, alone now: the same draws
        alone = wait_rollout(srv, srv.post("/v1/rollouts", r).json()["id"])
        assert alone["result"]["batched_requests"] == 1
        a, b = alone["result"]["completions"], ro["result"]["completions"]
        assert [c["token_ids"] for c in a] == [c["token_ids"] for c in b]
        assert [c["finish_reason"] for c in a] == [c["finish_reason"] for c in b]
        for x, y in zip(a, b):
            assert max((abs(p - q) for p, q in zip(x["logprobs"], y["logprobs"])),
                       default=0) <= 1e-5
