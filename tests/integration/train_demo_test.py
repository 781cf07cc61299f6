"""train_demo_test.py — the embedded default job, `chordd train --demo`, run to the end as the
README tells a user to, must take its random-init model to >= 90 % greedy accuracy on the
built-in task's held-out problems (issue 4's target; the time it takes on this machine is
recorded in docs/training.md, not asserted here).

The accuracy is not taken from chordd's word: the final checkpoint is evaluated again by
`chordd eval --samples-out`, and every completion is re-scored here in Python — the last
\\boxed{...} of the completion, read as an integer, against the answer of the problem, computed
here from the prompt text ("Compute 37+48." -> 85). The random-init model the job starts from
(rebuilt by `chordd init-model` from the checkpoint's job.json) must score below 5 %. The
held-out problems must also be disjoint from the problems the demo trained on (its RL prompts
and its expert demonstrations).

The run takes a few minutes on two cores (CHORDD is set by tests/integration/train.cmake)."""
import json
import os
import re
import subprocess

CHORDD = os.environ.get("CHORDD", "build/chordd")
PROBLEM = re.compile(r"^Compute (\d+)([+\-*])(\d+)\.$")


def answer_of(prompt):
    m = PROBLEM.match(prompt)
    assert m, prompt
    a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
    return a + b if op == "+" else a - b if op == "-" else a * b


def last_boxed(text):
    found = re.findall(r"\\boxed\{([^{}]*)\}", text)
    return found[-1].strip() if found else None


def as_integer(text):
    """The boxed answer as a number ("05" is 5: numeric answers compare as numbers, as in
    ALGORITHM.md's math_boxed and math-verify), None when it is not an integer."""
    return int(text) if text is not None and re.fullmatch(r"[+-]?\d+", text) else None


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
    check_demo_run(out, metrics, tmp_path)


def chordd_eval(model, data, samples):
    p = subprocess.run([CHORDD, "eval", "--model", str(model), "--data", str(data),
                        "--max-new-tokens", "40", "--samples-out", str(samples)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    reported = json.loads(p.stdout)
    done = [json.loads(line) for line in open(samples)]
    right = sum(as_integer(last_boxed(s["completion"])) == answer_of(s["prompt"]) for s in done)
    assert abs(reported["accuracy"] - right / len(done)) < 1e-9, (reported, right)
    return done, right / len(done)


def check_demo_run(out, metrics, tmp_path):
    rows = [json.loads(line) for line in open(metrics)]
    evals = [(r["step"], r["metrics"]["eval/accuracy"]) for r in rows
             if "eval/accuracy" in r["metrics"]]
    assert evals, "no eval metrics recorded"
    last_step = max(r["step"] for r in rows)
    assert evals[-1][0] == last_step, evals
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

    # the final checkpoint, re-scored here
    done, acc = chordd_eval(ckpt, data / "eval.jsonl", tmp_path / "samples.jsonl")
    assert len(done) == len(held_out)
    assert acc >= 0.9, f"re-scored accuracy {acc}"
    assert abs(acc - evals[-1][1]) < 1e-9, (acc, evals[-1])

    # the model it started from (the job's random init) solves nothing
    job = json.load(open(ckpt / "job.json"))
    init = job["model"]["init"]
    with open(tmp_path / "config.json", "w") as f:
        json.dump(init["config"], f)
    p = subprocess.run([CHORDD, "init-model", "--config", str(tmp_path / "config.json"),
                        "--seed", str(init["seed"]), "--out", str(tmp_path / "init")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    _, acc0 = chordd_eval(tmp_path / "init", data / "eval.jsonl", tmp_path / "samples0.jsonl")
    assert acc0 < 0.05, f"the random-init model already scores {acc0}"


if __name__ == "__main__":  # check an existing run: train_demo_test.py OUT_DIR METRICS.jsonl
    import pathlib
    import sys
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        check_demo_run(pathlib.Path(sys.argv[1]), sys.argv[2], pathlib.Path(d))
    print("ok")
