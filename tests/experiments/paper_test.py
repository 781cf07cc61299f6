"""paper_test.py — `paper.py --budget small` end to end against a real chordd (started by the
script on a temp data dir): the table, the JSON and the plots exist and every row of the paper's
comparison is in each, with one run per seed that trained every step and was evaluated on both
the target and the general problems. The numbers themselves are not checked (a CI budget
learns little); docs/experiments.md has a real run."""
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from paper import LAST_NUMBER  # noqa: E402
ROWS = ["sft", "grpo", "sft_then_grpo", "chord_mu", "chord_phi", "chord", "fixed_mu"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_small_budget_produces_table_json_and_plots(tmp_path):
    out = tmp_path / "paper"
    env = dict(os.environ)
    r = subprocess.run([sys.executable, os.path.join(HERE, "paper.py"), "--start-server",
                        "--chordd", env.get("CHORDD", "build/chordd"), "--budget", "small",
                        "--out", str(out), "--reward", json.dumps(LAST_NUMBER)],
                       capture_output=True, text=True, timeout=540, env=env)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]

    res = json.loads((out / "results.json").read_text())
    meta, table, runs = res["meta"], res["table"], res["runs"]
    steps, n_seeds = meta["settings"]["steps"], len(meta["seeds"])
    assert [t["row"] for t in table] == ["original"] + ROWS
    assert res["base"]["final"]["n_target"] > 0 and res["base"]["final"]["n_general"] > 0
    for row in ROWS:
        assert len(runs[row]) == n_seeds, row
        for run in runs[row]:
            # every step ran and was recorded, with μ on each
            assert [s for s, _ in run["series"]["mu"]] == list(range(1, steps + 1)), row
            # the eval steps measured both skills on every eval problem
            ev = run["eval"]
            assert ev and ev[-1]["step"] == steps, row
            for e in ev:
                assert e["n_target"] == meta["settings"]["n_eval"] * meta["eval_k"], (row, e)
                assert e["n_general"] == meta["settings"]["n_eval"] * meta["eval_k"], (row, e)
                assert 0.0 <= e["target"] <= 1.0 and 0.0 <= e["general"] <= 1.0
            assert run["wall_s"] is not None and run["wall_s"] >= 0
            assert run["job"]["steps"] == steps and run["job"]["model"]["path"] == meta["base_model"]
            # --reward is every job's verifier (the answers end in \boxed{N}: N is the last number)
            assert run["job"]["reward"] == LAST_NUMBER, row
    assert meta["reward"] == LAST_NUMBER
    # μ is what each row means: 1 for sft, 0 for grpo, 1 then 0 for sft_then_grpo
    mu = {row: [v for _, v in runs[row][0]["series"]["mu"]] for row in ROWS}
    assert all(v == 1.0 for v in mu["sft"]) and all(v == 0.0 for v in mu["grpo"])
    assert mu["sft_then_grpo"][0] == 1.0 and mu["sft_then_grpo"][-1] == 0.0
    assert all(abs(v - 0.1) < 1e-6 for v in mu["fixed_mu"] + mu["chord_phi"])

    md = (out / "table.md").read_text()
    for t in table:
        assert f"| {t['label']} |" in md, t["label"]
    for png in ("accuracy.png", "retention.png", "mu.png", "entropy_length.png"):
        data = (out / png).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, png

    # --render redraws the same table and plots from results.json alone (no server); the SFT
    # row sampled nothing, so its entropy and rollout length are "—", not 0
    for png in ("accuracy.png", "mu.png"):
        (out / png).unlink()
    (out / "table.md").unlink()
    r = subprocess.run([sys.executable, os.path.join(HERE, "paper.py"), "--render", "--out",
                        str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert (out / "table.md").read_text() == md
    for png in ("accuracy.png", "mu.png"):
        assert (out / png).read_bytes().startswith(PNG_MAGIC), png
    sft = next(t for t in table if t["row"] == "sft")
    assert sft["entropy"] == [None, None] and sft["response_len"] == [None, None]
    r = subprocess.run([sys.executable, os.path.join(HERE, "paper.py"), "--render", "--out",
                        str(tmp_path / "nothing")], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "results.json" in r.stderr


def test_bad_reward_is_refused(tmp_path):
    for bad, says in (("{", "--reward: not JSON"), ("[1]", "--reward: must be a JSON object")):
        r = subprocess.run([sys.executable, os.path.join(HERE, "paper.py"), "--start-server",
                            "--budget", "small", "--out", str(tmp_path / "p"), "--reward", bad],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and says in r.stderr, r.stderr[-2000:]
