"""train_demo_test.py — the embedded default job, `chordd train --demo`, run to the end as the
README tells a user to, must take its random-init model to >= 90 % greedy accuracy on the
built-in task's held-out problems (issue 4's target; the time it takes on this machine is
recorded in docs/training.md, not asserted here).

The accuracy is not taken from chordd's word: the final checkpoint is evaluated again by
`chordd eval --samples-out`, and every completion is re-scored here in Python — the last
\\boxed{...} of the completion against the answer of the problem, computed here from the prompt
text ("Compute 37+48." -> 85). The held-out problems must also be disjoint from the problems
the demo trained on (its RL prompts and its expert demonstrations).

The run takes a few minutes on two cores (CHORDD is set by tests/integration/train.cmake)."""
import json
import os
import re
import subprocess

CHORDD = os.environ.get("CHORDD", "build/api/chordd")
PROBLEM = re.compile(r"^Compute (\d+)([+\-*])(\d+)\.$")


def answer_of(prompt):
    m = PROBLEM.match(prompt)
    assert m, prompt
    a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
    return a + b if op == "+" else a - b if op == "-" else a * b


def last_boxed(text):
    found = re.findall(r"\\boxed\{([^{}]*)\}", text)
    return found[-1].strip() if found else None


def problem_key(prompt):
    a, op, b = PROBLEM.match(prompt).groups()
    if op in "+*" and int(a) > int(b):
        a, b = b, a
    return (int(a), op, int(b))


def test_demo_reaches_90_percent_on_held_out_problems(tmp_path):
    out = tmp_path / "demo"
    metrics = tmp_path / "metrics.jsonl"
    p = subprocess.run([CHORDD, "train", "--demo", "--out", str(out), "--metrics-out",
                        str(metrics)], capture_output=True, text=True, timeout=1800)
    assert p.returncode == 0, p.stderr[-4000:]

    rows = [json.loads(line) for line in open(metrics)]
    evals = [(r["step"], r["metrics"]["eval/accuracy"]) for r in rows
             if "eval/accuracy" in r["metrics"]]
    assert evals, "no eval metrics recorded"
    last_step = max(r["step"] for r in rows)
    assert evals[-1][0] == last_step, evals
    assert evals[0][1] < 0.2, f"the random-init model already solves the task: {evals}"
    assert evals[-1][1] >= 0.9, f"held-out accuracy per eval step: {evals}"

    # the data the demo used, and the final checkpoint
    data = out / "data"
    held_out = [json.loads(line) for line in open(data / "eval.jsonl")]
    trained = {problem_key(json.loads(line)["prompt"])
               for name in ("prompts.jsonl", "expert_worked.jsonl")
               for line in open(data / name)}
    assert len(held_out) >= 100
    assert not trained & {problem_key(r["prompt"]) for r in held_out}, \
        "held-out problems appear in the training data"
    ckpt = out / "checkpoints" / f"step_{last_step}"
    assert (ckpt / "model.safetensors").is_file()

    samples = tmp_path / "samples.jsonl"
    p = subprocess.run([CHORDD, "eval", "--model", str(ckpt), "--data", str(data / "eval.jsonl"),
                        "--max-new-tokens", "40", "--samples-out", str(samples)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    reported = json.loads(p.stdout)
    done = [json.loads(line) for line in open(samples)]
    assert len(done) == len(held_out)
    right = sum(last_boxed(s["completion"]) == str(answer_of(s["prompt"])) for s in done)
    assert right / len(done) >= 0.9, f"re-scored accuracy {right}/{len(done)}"
    assert abs(reported["accuracy"] - right / len(done)) < 1e-9, (reported, right)
    assert abs(reported["accuracy"] - evals[-1][1]) < 1e-9, (reported, evals[-1])
