"""service_resume_test.py — chordd killed mid-training resumes its jobs: after SIGKILL the job
goes back to the queue at the next start, resumes from its last checkpoint, and the metrics
table ends with every step exactly once — and with the same values as an uninterrupted run of
the same job (read from SQLite directly, not only through the API). After SIGTERM the server
exits 0 once the running job wrote a checkpoint of its last step and went back to queued.

Run: CHORDD=build/chordd python -m pytest tests/integration/service_resume_test.py"""
import os
import signal
import sqlite3
import time

import pytest

from chordd_harness import Chordd, arith_expert, arith_prompts, jsonl, tiny_job

STEPS = 24


def db_rows(data_dir, sql, *args):
    con = sqlite3.connect(f"file:{os.path.join(data_dir, 'chord.db')}?mode=ro", uri=True)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def metrics_by_step(data_dir, job_id):
    out = {}
    for step, name, value in db_rows(data_dir, "SELECT step, name, value FROM metrics WHERE job_id = ?",
                                     job_id):
        out.setdefault(step, {})[name] = value
    return out


def deterministic(metrics):
    """The metrics that do not depend on wall time or on the process (its memory peak)."""
    return {k: v for k, v in metrics.items()
            if not k.startswith(("time/", "tokens_per_s/", "memory/"))}


@pytest.fixture
def srv():
    s = Chordd()
    yield s
    s.cleanup()


def submit(s):
    p = s.upload("prompts", jsonl(arith_prompts(40))).json()["id"]
    e = s.upload("expert", jsonl(arith_expert(40))).json()["id"]
    doc = tiny_job(p, e, steps=STEPS, checkpoint_every=4, keep_checkpoints=0)
    return doc, s.post("/v1/jobs", doc).json()["id"]


def test_sigkill_resume_every_step_once(srv):
    srv.start()
    doc, job = submit(srv)
    srv.wait_job(job, lambda j: j["current_step"] >= 10, poll=0.01)
    srv.stop(signal.SIGKILL)
    (state, step), = db_rows(srv.data_dir, "SELECT state, current_step FROM jobs WHERE id = ?", job)
    assert state == "running" and 10 <= step < STEPS
    killed_at = step

    srv.start()
    j = srv.wait_job(job, lambda j: j["state"] not in ("queued", "running"))
    assert j["state"] == "succeeded", (j, srv.read_log()[-3000:])
    assert "resuming after step" in srv.read_log()
    m = metrics_by_step(srv.data_dir, job)
    assert sorted(m) == list(range(1, STEPS + 1))
    # exactly once: one row per (step, name), the same names every step
    counts = db_rows(srv.data_dir, "SELECT step, COUNT(*) FROM metrics WHERE job_id = ? AND name = 'loss' "
                     "GROUP BY step", job)
    assert all(c == 1 for _, c in counts) and len(counts) == STEPS
    names = {frozenset(v) for v in m.values()}
    assert len({frozenset(k for k in n if not k.startswith("eval/")) for n in names}) == 1
    api = srv.get(f"/v1/jobs/{job}/metrics").json()["steps"]
    assert [s["step"] for s in api] == list(range(1, STEPS + 1))

    # the same job uninterrupted: the same metrics at every step (resume equals a straight run)
    ref = srv.post("/v1/jobs", doc).json()["id"]
    assert srv.wait_job(ref, lambda j: j["state"] not in ("queued", "running"))["state"] == "succeeded"
    r = metrics_by_step(srv.data_dir, ref)
    for step in range(1, STEPS + 1):
        assert deterministic(m[step]) == deterministic(r[step]), (step, killed_at)
    # samples: one set per step, as many as the straight run
    a = db_rows(srv.data_dir, "SELECT step, COUNT(*) FROM samples WHERE job_id = ? GROUP BY step", job)
    b = db_rows(srv.data_dir, "SELECT step, COUNT(*) FROM samples WHERE job_id = ? GROUP BY step", ref)
    assert a == b
    assert srv.stop() == 0


def test_sigterm_checkpoints_and_requeues(srv):
    srv.start()
    _, job = submit(srv)
    srv.wait_job(job, lambda j: j["current_step"] >= 5, poll=0.01)
    t0 = time.time()
    assert srv.stop(signal.SIGTERM) == 0
    assert time.time() - t0 < 30
    (state, step), = db_rows(srv.data_dir, "SELECT state, current_step FROM jobs WHERE id = ?", job)
    assert state == "queued" and step >= 5
    ck = db_rows(srv.data_dir, "SELECT MAX(step) FROM checkpoints WHERE job_id = ?", job)[0][0]
    assert ck == step, "the stop wrote a checkpoint of the last step"
    srv.start()
    j = srv.wait_job(job, lambda j: j["state"] not in ("queued", "running"))
    assert j["state"] == "succeeded"
    assert sorted(metrics_by_step(srv.data_dir, job)) == list(range(1, STEPS + 1))
    assert srv.stop() == 0
