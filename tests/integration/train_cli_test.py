"""train_cli_test.py — `chordd train` and `chordd eval` as a user runs them (the real binary,
$CHORDD, set by tests/integration/train.cmake):

- error paths: a bad job file names the field (or the line and column of a syntax error), a
  missing dataset names the data field and the path, a bad JSONL line names the file and line,
  before any training step;
- --stop-after then --resume gives the metrics of an uninterrupted run (timings and memory
  peaks aside);
- checkpoints are model directories that `chordd eval` loads; its accuracy / avg@k / pass@k are
  recomputed here from its per-sample output, with the answers re-checked by Python
  (the last \\boxed{} against the integer answer of the arithmetic problem, evaluated here).

Tiny models and a few steps: the whole file runs in seconds."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from chordd_harness import CHORDD, TINY_CONFIG as TINY  # noqa: E402


def run(*args, check=None, input=None):
    p = subprocess.run([CHORDD, *args], capture_output=True, text=True, timeout=300,
                       input=input)
    if check is not None:
        assert p.returncode == check, (p.returncode, p.stdout, p.stderr)
    return p


def write_jsonl(path, records):
    with open(path, "w") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


def problems(n, seed):
    out = []
    for i in range(n):
        a, b = (seed * 31 + i * 7) % 50, (seed * 17 + i * 13) % 50
        out.append((f"Compute {a}+{b}.", str(a + b), f"{a}+{b}={a + b} \\boxed{{{a + b}}}"))
    return out


@pytest.fixture
def data(tmp_path):
    prompts = write_jsonl(tmp_path / "prompts.jsonl",
                          [{"prompt": p, "answer": a} for p, a, _ in problems(40, 1)])
    expert = write_jsonl(tmp_path / "expert.jsonl",
                         [{"prompt": p, "response": r} for p, _, r in problems(40, 2)])
    evals = write_jsonl(tmp_path / "eval.jsonl",
                        [{"prompt": p, "answer": a} for p, a, _ in problems(12, 3)])
    return {"prompts": prompts, "expert": expert, "eval": evals}


def job(tmp_path, data, **over):
    doc = {
        "model": {"init": {"seed": 1, "config": TINY}},
        "data": data,
        "algorithm": "chord",
        "chord": {"mu": 0.5},
        "grpo": {"group_size": 2, "prompts_per_step": 4},
        "expert_per_step": 4,
        "sampling": {"max_new_tokens": 8},
        "optimizer": {"lr": 0.003},
        "steps": 4,
        "seed": 5,
        "checkpoint_every": 2,
        "keep_checkpoints": 0,
        "eval": {"every": 2, "k": 2, "temperature": 1.0},
    }
    doc.update(over)
    path = tmp_path / "job.json"
    path.write_text(json.dumps(doc))
    return str(path)


# ---- error paths -----------------------------------------------------------------------------


def test_bad_job_names_the_field(tmp_path, data):
    p = run("train", job(tmp_path, data, grpo={"clip_low": 2}), "--out", str(tmp_path / "o"),
            check=2)
    assert "grpo.clip_low" in p.stderr
    p = run("train", job(tmp_path, data, grpo={"clipp_low": 0.1}), "--out",
            str(tmp_path / "o"), check=2)
    assert "grpo.clipp_low" in p.stderr
    p = run("train", job(tmp_path, data, model={"init": {"config": dict(TINY, hidden_size=-4)}}),
            "--out", str(tmp_path / "o"), check=2)
    assert "model.init.config" in p.stderr and "hidden_size" in p.stderr
    bad = tmp_path / "syntax.json"
    bad.write_text('{"steps": 3,\n  "seed": }\n')
    p = run("train", str(bad), check=2)
    assert "syntax.json" in p.stderr and re.search(r"line 2", p.stderr), p.stderr
    p = run("train", str(tmp_path / "absent.json"), check=2)
    assert "absent.json" in p.stderr


def test_missing_dataset_names_field_and_path(tmp_path, data):
    missing = str(tmp_path / "nope.jsonl")
    p = run("train", job(tmp_path, dict(data, expert=missing)), "--out", str(tmp_path / "o"),
            check=1)
    assert "data.expert" in p.stderr and missing in p.stderr
    assert not (tmp_path / "o" / "checkpoints").exists()  # failed before any step
    p = run("train", job(tmp_path, {"expert": data["expert"]}), "--out", str(tmp_path / "o"),
            check=2)
    assert "data.prompts" in p.stderr  # required by the algorithm


def test_job_that_cannot_fit_is_refused(tmp_path, data):
    """A model far larger than the machine's memory fails before any allocation, saying why."""
    huge = dict(TINY, vocab_size=151936, hidden_size=8192, num_hidden_layers=80,
                num_attention_heads=64, num_key_value_heads=8, intermediate_size=29568,
                max_position_embeddings=32768)
    p = run("train", job(tmp_path, data, model={"init": {"seed": 1, "config": huge}}), "--out",
            str(tmp_path / "o"), check=1)
    assert "GiB" in p.stderr and "free" in p.stderr, p.stderr
    assert not (tmp_path / "o" / "checkpoints").exists()


def test_bad_jsonl_line_names_the_line(tmp_path, data):
    lines = [json.dumps({"prompt": "Compute 1+1.", "answer": "2"})] * 30
    lines[16] = '{"prompt": "Compute 2+2.", answer: 4}'  # line 17
    bad = write_jsonl(tmp_path / "bad_prompts.jsonl", lines)
    p = run("train", job(tmp_path, dict(data, prompts=bad)), "--out", str(tmp_path / "o"),
            check=1)
    assert "bad_prompts.jsonl: line 17" in p.stderr, p.stderr
    assert "data.prompts" in p.stderr
    lines = [json.dumps({"prompt": "Compute 1+1.", "response": "\\boxed{2}"})] * 5
    lines.insert(3, "")  # blank lines are skipped but counted
    lines[4] = json.dumps({"prompt": "Compute 1+1."})  # line 5: no response
    bad = write_jsonl(tmp_path / "bad_expert.jsonl", lines)
    p = run("train", job(tmp_path, dict(data, expert=bad)), "--out", str(tmp_path / "o"),
            check=1)
    assert "bad_expert.jsonl: line 5" in p.stderr and "response" in p.stderr, p.stderr
    assert not (tmp_path / "o" / "checkpoints").exists()


# ---- stop and resume -------------------------------------------------------------------------


def read_metrics(path):
    rows = {}
    for line in open(path):
        d = json.loads(line)
        rows[d["step"]] = {k: v for k, v in d["metrics"].items()
                           if not k.startswith(("time/", "tokens_per_s", "memory/"))
                           and k != "eval/time"}
    return rows


def test_stop_and_resume_repeat_the_metrics(tmp_path, data):
    j = job(tmp_path, data)
    run("train", j, "--out", str(tmp_path / "whole"), "--threads", "1", "--metrics-out",
        str(tmp_path / "whole.jsonl"), check=0)
    run("train", j, "--out", str(tmp_path / "part"), "--threads", "1", "--stop-after", "3",
        "--metrics-out", str(tmp_path / "part.jsonl"), check=0)
    assert sorted(os.listdir(tmp_path / "part" / "checkpoints")) == ["step_2", "step_3"]
    run("train", j, "--out", str(tmp_path / "part"), "--threads", "1", "--resume",
        "--metrics-out", str(tmp_path / "part.jsonl"), check=0)
    whole, part = read_metrics(tmp_path / "whole.jsonl"), read_metrics(tmp_path / "part.jsonl")
    assert sorted(whole) == [1, 2, 3, 4] and sorted(part) == [1, 2, 3, 4]
    for s in whole:
        assert whole[s] == part[s], s
    assert "eval/accuracy" in part[4]


# ---- chordd eval -----------------------------------------------------------------------------


def boxed(text):
    """The content of the last \\boxed{...} (balanced braces), or None."""
    i = text.rfind("\\boxed{")
    if i < 0:
        return None
    depth, j = 0, i + len("\\boxed")
    for k in range(j, len(text)):
        depth += {"{": 1, "}": -1}.get(text[k], 0)
        if depth == 0:
            return text[j + 1:k]
    return None


def same_number(text, answer):
    try:
        return float(text.strip()) == float(answer)
    except ValueError:
        return False


def test_eval_a_checkpoint(tmp_path, data):
    j = job(tmp_path, data, algorithm="sft", steps=30, expert_per_step=8, chord=None,
            optimizer={"lr": 0.01}, eval={"every": 0}, keep_checkpoints=2, checkpoint_every=10)
    run("train", j, "--out", str(tmp_path / "o"), "--threads", "1", check=0)
    # keep_checkpoints = 2: the older ones are gone
    assert sorted(os.listdir(tmp_path / "o" / "checkpoints")) == ["step_20", "step_30"]
    ck = tmp_path / "o" / "checkpoints" / "step_30"
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (ck / f).is_file(), f
    samples = tmp_path / "samples.jsonl"
    p = run("eval", "--model", str(ck), "--data", data["eval"], "--k", "3", "--temperature",
            "1.0", "--max-new-tokens", "16", "--samples-out", str(samples), "--threads", "1",
            check=0)
    out = json.loads(p.stdout)
    rows = [json.loads(l) for l in open(samples)]
    answers = [json.loads(l)["answer"] for l in open(data["eval"])]
    assert out["prompts"] == 12 and out["k"] == 3 and len(rows) == 36
    correct = {}
    for r in rows:
        assert r["answer"] == answers[r["index"]]
        mine = boxed(r["completion"])
        ok = mine is not None and same_number(mine, r["answer"])
        assert ok == (r["reason"] == "correct"), r
        correct.setdefault(r["index"], []).append(ok)
    assert sorted(correct) == list(range(12)) and all(len(v) == 3 for v in correct.values())
    acc = sum(sum(v) for v in correct.values()) / 36
    pass_k = sum(any(v) for v in correct.values()) / 12
    assert abs(out["accuracy"] - acc) < 1e-6 and abs(out["avg_at_k"] - acc) < 1e-6
    assert abs(out["pass_at_k"] - pass_k) < 1e-6
    assert out["errors"] == 0
    # the same seed gives the same numbers; greedy k = 1 is the default
    again = json.loads(run("eval", "--model", str(ck), "--data", data["eval"], "--k", "3",
                           "--temperature", "1.0", "--max-new-tokens", "16", "--threads", "1",
                           check=0).stdout)
    assert again["accuracy"] == out["accuracy"] and again["pass_at_k"] == out["pass_at_k"]
    greedy = json.loads(run("eval", "--model", str(ck), "--data", data["eval"], "--threads", "1",
                            check=0).stdout)
    assert greedy["k"] == 1 and greedy["temperature"] == 0
    assert greedy["accuracy"] == greedy["pass_at_k"]


def test_eval_errors(tmp_path, data):
    p = run("eval", "--data", data["eval"], check=2)
    assert "--model" in p.stderr
    p = run("eval", "--model", str(tmp_path / "none"), "--data", data["eval"], check=1)
    assert "none" in p.stderr
    p = run("eval", "--model", str(tmp_path), "--data", data["eval"], "--reward", "{bad",
            check=1)
    assert "--reward" in p.stderr
    p = run("eval", "--model", str(tmp_path), "--data", data["eval"], "--reward",
            '{"type": "nope"}', check=1)
    assert "reward" in p.stderr and "type" in p.stderr
    p = run("eval", "--model", str(tmp_path), "--data", data["eval"], "--k", "0", check=2)
    assert "--k" in p.stderr


def test_checkpoint_loads_in_transformers(tmp_path, data):
    """A checkpoint is a Hugging Face model directory: transformers loads the weights and the
    tokenizer (the embedded default's files) and renders the chat prompt to chord's ids."""
    transformers = pytest.importorskip("transformers")
    j = job(tmp_path, data, algorithm="sft", steps=1, chord=None, eval={"every": 0})
    run("train", j, "--out", str(tmp_path / "o"), "--threads", "1", check=0)
    ck = str(tmp_path / "o" / "checkpoints" / "step_1")
    model = transformers.AutoModelForCausalLM.from_pretrained(ck)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert model.config.hidden_size == TINY["hidden_size"]
    tok = transformers.AutoTokenizer.from_pretrained(ck)
    ids = tok.apply_chat_template([{"role": "user", "content": "Compute 37+48."}],
                                  add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if not isinstance(ids, list) else ids
    text = tok.decode(ids)
    mine = json.loads(run("tokenize", "--tokenizer", ck, input=text, check=0).stdout)
    assert mine == list(ids)


def test_lora_job_checkpoint_merge_and_score(tmp_path, data):
    """A LoRA job on a base directory (`chordd init-model`): its checkpoint is the adapter alone
    (a PEFT directory naming the base); `chordd score` opens it as base + adapter, and
    `chordd merge-lora` writes a model directory that scores the same (the merged weights, not
    the adapter beside them), unlike the base alone; bad uses are refused by name."""
    base = tmp_path / "base"
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(TINY))
    run("init-model", "--config", str(cfg), "--seed", "3", "--out", str(base), check=0)
    # the base needs the tokenizer beside it: take it from a checkpoint of a one-step job
    j = job(tmp_path, data, algorithm="sft", steps=1, chord=None, eval={"every": 0},
            model={"path": str(base)}, lora={"rank": 4, "alpha": 8,
                                              "target_modules": "all-linear"},
            optimizer={"lr": 0.02})
    j2 = json.loads(open(j).read())
    j2["steps"] = 3
    open(j, "w").write(json.dumps(j2))
    run("train", j, "--out", str(tmp_path / "o"), "--threads", "1", check=0)
    ck = tmp_path / "o" / "checkpoints" / "step_3"
    assert (ck / "adapter_config.json").exists() and (ck / "adapter_model.safetensors").exists()
    assert not (ck / "model.safetensors").exists()
    acfg = json.loads((ck / "adapter_config.json").read_text())
    assert acfg["peft_type"] == "LORA" and acfg["r"] == 4
    assert os.path.realpath(acfg["base_model_name_or_path"]) == os.path.realpath(base)
    merged = tmp_path / "merged"
    run("merge-lora", "--adapter", str(ck), "--out", str(merged), check=0)
    assert (merged / "config.json").exists() and (merged / "tokenizer.json").exists()
    ids = "[1, 17, 300, 5, 42, 99, 7, 512, 3]\n[4, 4, 8]\n"
    s_ad = [json.loads(x) for x in run("score", "--model", str(ck), input=ids,
                                       check=0).stdout.splitlines()]
    s_mg = [json.loads(x) for x in run("score", "--model", str(merged), input=ids,
                                       check=0).stdout.splitlines()]
    s_base = [json.loads(x) for x in run("score", "--model", str(base), input=ids,
                                         check=0).stdout.splitlines()]
    for a, m, b in zip(s_ad, s_mg, s_base):
        assert len(a) == len(m)
        for x, y in zip(a, m):
            assert abs(x - y) <= 1e-4 * (1 + abs(x)), (a, m)
    assert max(abs(x - y) for a, b in zip(s_ad, s_base) for x, y in zip(a, b)) > 1e-3
    # refusals: not an adapter; a LoRA checkpoint as a full fine-tuning job's model
    p = run("merge-lora", "--adapter", str(base), "--out", str(tmp_path / "m2"), check=1)
    assert "not a LoRA adapter directory" in p.stderr
    j3 = job(tmp_path, data, algorithm="sft", steps=1, chord=None, eval={"every": 0},
             model={"path": str(ck)})
    p = run("train", j3, "--out", str(tmp_path / "o3"), "--threads", "1")
    assert p.returncode != 0 and "is a LoRA adapter" in p.stderr, p.stderr


# ---- --out is a path; numeric answers are the text written ------------------------------------


def test_out_dir_is_a_path_never_shell_text(tmp_path, data):
    """keep_checkpoints pruning and the replacement of a checkpoint written again (the one a
    stop writes at a step the schedule already saved) remove directories without a shell: an
    --out holding quotes and a command separator keeps only its newest checkpoint and runs
    nothing (it used to be pasted into system("rm -rf '...'"))."""
    out = tmp_path / "o'; touch PWNED; echo '"
    j = job(tmp_path, data, algorithm="sft", steps=3, chord=None, checkpoint_every=1,
            keep_checkpoints=1, eval={"every": 0})

    def train(*extra):
        p = subprocess.run([CHORDD, "train", j, "--out", str(out), "--threads", "1", "--quiet",
                            *extra], capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert p.returncode == 0, p.stderr
        assert not (tmp_path / "PWNED").exists(), "a shell ran a command from --out"

    train("--stop-after", "2")  # step 2: saved by the schedule, then again on the stop
    assert sorted(os.listdir(out / "checkpoints")) == ["step_2"]
    train("--resume")
    assert sorted(os.listdir(out / "checkpoints")) == ["step_3"]


def test_numeric_answers_are_the_text_written(tmp_path, data):
    """A dataset's numeric answer reaches the verifier and the samples as the shortest text
    that means it (docs/api.md, Records): 0.1 is "0.1", never "0.10000000000000001"; 1.0 is "1";
    1e21 is "1e+21"; -0.0 is "0" — in training, at eval steps and in `chordd eval`."""
    rows = [{"prompt": "What is 1/10?", "answer": 0.1}, {"prompt": "One?", "answer": 1.0},
            {"prompt": "Big?", "answer": 1e21}, {"prompt": "Zero?", "answer": -0.0}]
    nums = write_jsonl(tmp_path / "numbers.jsonl", rows)
    assert '"answer": 0.1}' in open(nums).read()
    want = {"0.1", "1", "1e+21", "0"}
    j = job(tmp_path, dict(data, prompts=nums, eval=nums), steps=2,
            grpo={"group_size": 1, "prompts_per_step": 2}, checkpoint_every=0,
            eval={"every": 1, "k": 1})
    samples = tmp_path / "samples.jsonl"
    run("train", j, "--out", str(tmp_path / "o"), "--threads", "1", "--samples-out",
        str(samples), check=0)
    got = [json.loads(l) for l in open(samples)]
    assert {s["answer"] for s in got if s["kind"] == "rollout"} == want
    assert {s["answer"] for s in got if s["kind"] == "eval"} == want
    evals = tmp_path / "eval_samples.jsonl"
    run("eval", "--model", str(tmp_path / "o" / "checkpoints" / "step_2"), "--data", nums,
        "--max-new-tokens", "4", "--samples-out", str(evals), "--threads", "1", check=0)
    assert [json.loads(l)["answer"] for l in open(evals)] == ["0.1", "1", "1e+21", "0"]


@pytest.mark.parametrize("args,flag", [
    (["train", "--demo", "--threads", "abc"], "--threads"),
    (["train", "--demo", "--steps", "1e3x"], "--steps"),
    (["train", "--demo", "--stop-after", "-2"], "--stop-after"),
    (["eval", "--model", "m", "--data", "d", "--k", "2x"], "--k"),
    (["tokenizer", "train", "--corpus", "c", "--out", "o", "--vocab-size", "1k"],
     "--vocab-size"),
    (["tokenizer", "train", "--corpus", "c", "--out", "o", "--min-frequency", "0"],
     "--min-frequency"),
])
def test_number_arguments_one_rule(tmp_path, args, flag):
    """Every subcommand reads a number flag by one rule (cmd/cmd_args.c): a bad value is refused
    with exit 2 and a message naming the flag and its range, never read as 0 or its prefix."""
    p = run(*args, check=2)
    assert (f"{flag}: must be an integer in [" in p.stderr
            or f"{flag}: must be a number in [" in p.stderr), p.stderr
    assert f"got '{args[-1]}'" in p.stderr, p.stderr


@pytest.mark.parametrize("var,value,names", [
    ("CHORD_CUDA_ATTENTION", "bogus", "auto, tensor, wmma, flash or naive"),
    ("CHORD_CUDA_MATMUL", "fp16", "bf16, tf32 or fp32"),
])
def test_unknown_cuda_mode_is_refused(tmp_path, var, value, names):
    """A typo in a CUDA mode variable is refused by name before any device work (so even here,
    with no GPU), never silently read as the default."""
    p = subprocess.run([CHORDD, "train", "--demo", "--device", "cuda", "--out",
                        str(tmp_path / "o")], capture_output=True, text=True, timeout=60,
                       env={**os.environ, var: value})
    if "no CUDA backend" in p.stderr:
        pytest.skip("this build has no CUDA backend")
    assert p.returncode != 0
    assert f"{var}: unknown mode '{value}' ({names})" in p.stderr, p.stderr


def test_cuda_all_without_a_gpu_is_refused(tmp_path):
    """--device cuda:all (every GPU of the host, one rank each: docs/distributed.md) on a host
    with no GPU says so and exits 2 before any work; a host with GPUs runs it instead."""
    p = run("train", "--demo", "--device", "cuda:all", "--out", str(tmp_path / "o"))
    if p.returncode == 0:
        pytest.skip("this host has a GPU")
    assert p.returncode == 2, p.stderr
    assert "--device cuda:all: no CUDA device on this host" in p.stderr, p.stderr
    assert not (tmp_path / "o").exists()


def test_bf16_weights(tmp_path):
    """CHORD_WEIGHTS=bf16 (model.h precision; the GPU's default, here on the CPU): the GEMMs run
    on bf16 weights, so the metrics differ from float32's (by bf16's rounding: under 1 %), and the
    checkpoint holds the float32 master weights (values bf16 cannot hold), as float32 runs do.
    A value other than auto, fp32 or bf16 is refused by name."""
    def train(weights, name):
        out = tmp_path / name
        p = subprocess.run([CHORDD, "train", "--demo", "--steps", "3", "--device", "cpu",
                            "--quiet", "--out", str(out), "--metrics-out", str(out) + ".jsonl"],
                           capture_output=True, text=True, timeout=300,
                           env={**os.environ, "CHORD_WEIGHTS": weights})
        assert p.returncode == 0, p.stderr
        rows = [json.loads(line)["metrics"] for line in open(str(out) + ".jsonl")]
        return out, rows
    out16, m16 = train("bf16", "bf16")
    _, m32 = train("fp32", "fp32")
    assert len(m16) == len(m32) == 3
    # step 1's loss is computed before any update: the same model, different GEMM operands
    assert m16[0]["loss"] != m32[0]["loss"], (m16[0], m32[0])
    assert abs(m16[0]["loss"] - m32[0]["loss"]) < 1e-2 * abs(m32[0]["loss"])
    from safetensors.numpy import load_file
    w = load_file(str(out16 / "checkpoints" / "step_3" / "model.safetensors"))
    emb = w["model.embed_tokens.weight"]
    assert emb.dtype == np.float32
    assert np.any(emb.view(np.uint32) & 0xFFFF), "the checkpoint holds bf16-rounded weights"

    p = subprocess.run([CHORDD, "train", "--demo", "--device", "cpu", "--out",
                        str(tmp_path / "bad")], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "CHORD_WEIGHTS": "fp16"})
    assert p.returncode != 0
    assert "CHORD_WEIGHTS='fp16' is not auto, fp32 or bf16" in p.stderr, p.stderr


def junk(rng, n):
    """Text the embedded tokenizer cannot merge much: about one token per byte, so the memory
    estimate's byte bound on a record's tokens is nearly exact."""
    return "".join(rng.choice("qzxjkvwy0123456789#%&*+=<>~^|") for _ in range(n))


def test_memory_estimate_bounds_the_real_peak(tmp_path, data):
    """The memory estimate that refuses work at submission (server/train/mem_estimate.h) against
    what the engine really allocates: every step's `memory/peak_mib` (ops_mem_usage: the device
    buffers of the weights, gradients, moments, run states and KV caches) never exceeds its
    `memory/estimate_mib`, for chord with eval, GRPO with a KL reference (its own run state),
    SFT with bf16 weights and activations (CHORD_WEIGHTS=bf16), LoRA with shared prompts and a
    small micro_batch_tokens. Where the data's length bound is nearly exact (text of about a
    token per byte, every micro-batch trained) the estimate is also within 2x of the peak: a
    term counted twice, or a budget's bf16 saving miscounted, shows."""
    import random
    rng = random.Random(3)
    tight = {"prompts": write_jsonl(tmp_path / "junk-prompts.jsonl",
                                    [{"prompt": junk(rng, 120), "answer": "1"}
                                     for _ in range(20)]),
             "expert": write_jsonl(tmp_path / "junk-expert.jsonl",
                                   [{"prompt": junk(rng, 60), "response": junk(rng, 100)}
                                    for _ in range(20)])}
    wide = TINY | {"hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 2,
                   "num_attention_heads": 4, "num_key_value_heads": 2,
                   "max_position_embeddings": 512}
    big = {"model": {"init": {"seed": 1, "config": wide}}, "steps": 2, "checkpoint_every": 0,
           "micro_batch_tokens": 100000, "eval": {"every": 0}, "chord": {},
           "grpo": {"group_size": 4, "prompts_per_step": 8}, "expert_per_step": 8,
           "sampling": {"max_new_tokens": 48}}
    cases = [  # name, job overrides, CHORD_WEIGHTS, tight
        ("chord+eval", {"checkpoint_every": 0}, "fp32", False),
        ("grpo+kl", big | {"algorithm": "grpo", "data": {"prompts": tight["prompts"]},
                           "grpo": {"group_size": 4, "prompts_per_step": 8, "kl_coef": 0.05}},
         "fp32", True),
        ("sft bf16", big | {"algorithm": "sft", "data": {"expert": tight["expert"]}}, "bf16",
         True),
        ("lora+share", {"checkpoint_every": 0, "lora": {"rank": 4}, "micro_batch_tokens": 64,
                        "grpo": {"group_size": 2, "prompts_per_step": 4,
                                 "share_prompt": True}}, "fp32", False),
    ]
    seen = []
    for name, over, weights, is_tight in cases:
        metrics = tmp_path / f"{name.replace(' ', '_')}.jsonl"
        over = dict(over)
        d = over.pop("data", data)
        p = subprocess.run([CHORDD, "train", job(tmp_path, d, **over), "--device", "cpu",
                            "--quiet", "--out", str(tmp_path / "out" / name),
                            "--metrics-out", str(metrics)],
                           capture_output=True, text=True, timeout=300,
                           env={**os.environ, "CHORD_WEIGHTS": weights})
        assert p.returncode == 0, (name, p.stderr)
        rows = [json.loads(line)["metrics"] for line in open(metrics)]
        assert rows, name
        for r in rows:
            peak, est = r["memory/peak_mib"], r["memory/estimate_mib"]
            assert 0 < peak <= est, (name, peak, est)
        peak = max(r["memory/peak_mib"] for r in rows)
        est = rows[-1]["memory/estimate_mib"]
        if is_tight:
            assert est <= 2 * peak, (name, peak, est)
        seen.append(f"{name}: peak {peak:.1f} MiB, estimate {est:.1f} MiB")
    print("; ".join(seen))
