#!/usr/bin/env python3
"""retention-quiz.py — does post-training keep what a model knew? Four-choice general-knowledge
questions (capitals of countries and US states, chemical element names) from Debian's bsdgames
quiz tables, each scored by the likelihood the model gives every choice as the answer: chord itself
computes it (`chordd tokenize --chat` renders the conversation with the model's chat template,
`chordd score` gives the per-token log-probs), no sampling, no answer parsing.

Usage:
  retention-quiz.py --chordd build/chordd --model DIR [--n 240] [--seed 1] [--out FILE]

Prints one JSON object: accuracy by summed log-likelihood of the answer tokens (`acc`) and by
log-likelihood per byte of the answer (`acc_norm`, as lm-evaluation-harness), overall and per
table, with the counts. Chance is 0.25. Run it on the model before and after a job (docs/training.md
"A real model").

The tables come from the Debian package bsdgames (BSD licence), downloaded with `apt-get download`
into ~/.cache/chord/data/bsdgames (override: CHORD_DATA_CACHE) and unpacked there; nothing is
installed. The package's sha256 is checked: a different build is refused (say so with
--any-bsdgames to accept it and record its hash).
"""
import argparse
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import tempfile

BSDGAMES_DEB = "bsdgames_2.17-29+b1_amd64.deb"
BSDGAMES_SHA256 = "cc92de974a1f66623a05ac0aed6dc790f682e5aac5205f0210294744d1532d10"
QUIZ_DIR = "usr/share/games/bsdgames/quiz"

# table: (file, question template, field of the subject, field of the answer)
TABLES = [
    ("africa", "What is the capital of {}?", 0, 1),
    ("america", "What is the capital of {}?", 0, 1),
    ("asia", "What is the capital of {}?", 0, 1),
    ("europe", "What is the capital of {}?", 0, 1),
    ("state", "What is the capital of the US state of {}?", 0, 1),
    ("elements", "Which chemical element has the symbol {}?", 0, 3),
]


def fetch_tables(cache, any_build):
    """the bsdgames quiz folder, downloading and unpacking the package once"""
    os.makedirs(cache, exist_ok=True)
    root = os.path.join(cache, "unpacked")
    quiz = os.path.join(root, QUIZ_DIR)
    if os.path.isdir(quiz):
        return quiz
    subprocess.run(["apt-get", "download", "-q", "bsdgames"], cwd=cache, check=True,
                   stdout=subprocess.DEVNULL)
    debs = sorted(f for f in os.listdir(cache) if f.startswith("bsdgames_") and f.endswith(".deb"))
    if not debs:
        sys.exit("retention-quiz: apt-get download bsdgames gave no package")
    deb = os.path.join(cache, debs[-1])
    digest = hashlib.sha256(open(deb, "rb").read()).hexdigest()
    if (os.path.basename(deb), digest) != (BSDGAMES_DEB, BSDGAMES_SHA256) and not any_build:
        sys.exit(f"retention-quiz: {os.path.basename(deb)} has sha256 {digest}; expected "
                 f"{BSDGAMES_DEB} {BSDGAMES_SHA256} (--any-bsdgames accepts it)")
    subprocess.run(["dpkg-deb", "-x", deb, root], check=True)
    return quiz


def canonical(field):
    """the first spelling of a quiz field: 'a|b' -> a, '[x|y]' -> x, '{opt}' kept, '{a|b}' -> a"""
    def first(text):
        depth, cut = 0, len(text)
        for i, ch in enumerate(text):
            if ch in "[{":
                depth += 1
            elif ch in "]}":
                depth -= 1
            elif ch == "|" and depth == 0:
                cut = i
                break
        return text[:cut]

    text = first(field)
    pat = re.compile(r"[\[{]([^\[\]{}]*)[\]}]")
    while True:
        new = pat.sub(lambda m: first(m.group(1)), text)
        if new == text:
            break
        text = new
    return " ".join(text.split())


def load_questions(quiz, n, seed):
    rng = random.Random(seed)
    per_table = []
    for name, template, qi, ai in TABLES:
        rows = []
        with open(os.path.join(quiz, name), encoding="latin-1") as f:
            for line in f:
                parts = line.rstrip("\n").split(":")
                if len(parts) <= max(qi, ai) or not parts[qi] or not parts[ai]:
                    continue
                subject, answer = canonical(parts[qi]), canonical(parts[ai])
                if subject and answer:
                    rows.append((subject, answer))
        answers = sorted({a for _, a in rows})
        items = []
        for subject, answer in rows:
            others = [a for a in answers if a != answer]
            if len(others) < 3:
                continue
            choices = rng.sample(others, 3) + [answer]
            rng.shuffle(choices)
            items.append({"table": name, "question": template.format(subject),
                          "choices": choices, "gold": choices.index(answer)})
        rng.shuffle(items)
        per_table.append(items)
    # round-robin over the tables up to n questions
    out, i = [], 0
    while len(out) < n and any(i < len(t) for t in per_table):
        for t in per_table:
            if i < len(t) and len(out) < n:
                out.append(t[i])
        i += 1
    return out


def run(cmd, text):
    r = subprocess.run(cmd, input=text, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"retention-quiz: {' '.join(cmd[:2])} failed: {r.stderr.strip()[:500]}")
    return r.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chordd", required=True)
    ap.add_argument("--model", required=True, help="model directory (weights + tokenizer)")
    ap.add_argument("--tokenizer", help="tokenizer directory, when the model's has none (a "
                    "checkpoint) [--model]")
    ap.add_argument("--n", type=int, default=240)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", help="also write the per-question scores (JSONL) here")
    ap.add_argument("--any-bsdgames", action="store_true")
    a = ap.parse_args()
    cache = os.path.join(os.environ.get("CHORD_DATA_CACHE",
                                        os.path.expanduser("~/.cache/chord/data")), "bsdgames")
    quiz = fetch_tables(cache, a.any_bsdgames)
    qs = load_questions(quiz, a.n, a.seed)
    convs = [{"prompt": q["question"], "response": c} for q in qs for c in q["choices"]]
    rendered = run([a.chordd, "tokenize", "--tokenizer", a.tokenizer or a.model, "--chat"],
                   "".join(json.dumps(c) + "\n" for c in convs))
    rows = [json.loads(line) for line in rendered.splitlines() if line.strip()]
    if len(rows) != len(convs):
        sys.exit(f"retention-quiz: tokenize gave {len(rows)} lines for {len(convs)}")
    score_cmd = [a.chordd, "score", "--model", a.model, "--device", a.device]
    if a.threads:
        score_cmd += ["--threads", str(a.threads)]
    scored = run(score_cmd, "".join(json.dumps(r["ids"]) + "\n" for r in rows))
    logps = [json.loads(line) for line in scored.splitlines() if line.strip()]
    if len(logps) != len(rows):
        sys.exit(f"retention-quiz: score gave {len(logps)} lines for {len(rows)}")
    # log p of the response tokens: logp[i] is token i + 1's; mask marks the response's tokens
    ll = []
    for r, lp in zip(rows, logps):
        s = sum(lp[i - 1] for i, m in enumerate(r["mask"]) if m and i >= 1)
        ll.append(s)
    stats, per_q = {}, []
    for qn, q in enumerate(qs):
        sc = ll[4 * qn:4 * qn + 4]
        norm = [s / max(1, len(c.encode())) for s, c in zip(sc, q["choices"])]
        hit = int(max(range(4), key=lambda k: sc[k]) == q["gold"])
        hit_n = int(max(range(4), key=lambda k: norm[k]) == q["gold"])
        for key in ("all", q["table"]):
            st = stats.setdefault(key, [0, 0, 0])
            st[0] += 1
            st[1] += hit
            st[2] += hit_n
        per_q.append({**q, "loglik": sc, "correct": bool(hit), "correct_norm": bool(hit_n)})
    if a.out:
        with open(a.out, "w") as f:
            for p in per_q:
                f.write(json.dumps(p) + "\n")
    result = {"model": a.model, "questions": stats["all"][0], "seed": a.seed,
              "acc": stats["all"][1] / stats["all"][0],
              "acc_norm": stats["all"][2] / stats["all"][0],
              "by_table": {k: {"n": v[0], "acc": v[1] / v[0], "acc_norm": v[2] / v[0]}
                           for k, v in stats.items() if k != "all"},
              "source": {"package": BSDGAMES_DEB, "sha256": BSDGAMES_SHA256}}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
