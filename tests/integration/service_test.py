"""service_test.py — chordd's REST API end to end: a real chordd on a free loopback port with a
temp data dir, driven over real HTTP. Datasets (valid, invalid lines naming the line, empty,
too large), models (incl. paths escaping the models root), jobs (bad documents naming the
field, list / get / cancel), a job that trains with SSE per step, metrics and checkpoints (files
checked against their SHA256SUMS with hashlib), rollouts, 404 / 405 / 413 / 415, /metrics, and
after every bad request the server is up and stored data unchanged; jobs, rollouts and models
that would not fit the device's memory refused at submission (413, with the figures) and
--device-memory-mb observed both at submission and when a job starts. Crash-and-resume tests are
in service_resume_test.py.

Run: CHORDD=build/chordd python -m pytest tests/integration/service_test.py"""
import hashlib
import http.server
import json
import os
import socket
import sqlite3
import subprocess
import threading
import time

import pytest

from chordd_harness import (Chordd, HUGE_CONFIG, LONG_KV_CONFIG, TINY_CONFIG, arith_expert,
                            arith_prompts, jsonl, tiny_job)


@pytest.fixture(scope="module")
def srv():
    s = Chordd(extra_args=["--max-upload-mb", "1", "--sse-heartbeat", "1"]).start()
    yield s
    rc = s.stop()
    s.cleanup()
    assert rc == 0, "chordd did not exit cleanly on SIGTERM"


@pytest.fixture(scope="module")
def datasets(srv):
    p = srv.upload("prompts", jsonl(arith_prompts(40)), name="p").json()
    e = srv.upload("expert", jsonl(arith_expert(40)), name="e").json()
    return p["id"], e["id"]


def snapshot(srv):
    """What is stored: every list, for 'stored data untouched' checks."""
    out = {}
    for path in ("/v1/datasets", "/v1/models", "/v1/jobs"):
        items = srv.get(path + "?limit=1000").json()["items"]
        # running jobs move on their own; compare what a bad request could corrupt
        out[path] = [{k: v for k, v in it.items()
                      if k not in ("state", "current_step", "started_at", "finished_at", "error",
                                   "device", "cancel_requested")} for it in items]
    files = sorted(os.listdir(os.path.join(srv.data_dir, "datasets")))
    out["files"] = files
    return out


def raw_chunked(srv, path, content_type, body, piece=65536):
    """POSTs body with chunked transfer encoding on a raw socket; returns the raw response."""
    sock = socket.create_connection(("127.0.0.1", srv.port))
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                 f"Content-Type: {content_type}\r\nConnection: close\r\n\r\n".encode())
    try:
        for i in range(0, len(body), piece):
            part = body[i:i + piece]
            sock.sendall(b"%x\r\n" % len(part) + part + b"\r\n")
        sock.sendall(b"0\r\n\r\n")
    except OSError:
        pass
    resp = b""
    sock.settimeout(30)
    while True:
        try:
            chunk = sock.recv(65536)
        except OSError:
            break
        if not chunk:
            break
        resp += chunk
    sock.close()
    return resp


def assert_error(r, status, code, *needles):
    assert r.status == status, r
    e = r.json()["error"]
    assert e["code"] == code, r
    for n in needles:
        assert n in e["message"], (n, r)


# ---- health, metrics, routing ------------------------------------------------------------

def test_healthz(srv):
    r = srv.get("/healthz")
    assert r.status == 200
    h = r.json()
    assert h["status"] == "ok" and h["devices"] == ["cpu"] and h["workers"] == 1
    assert set(h["jobs"]) == {"queued", "running", "succeeded", "failed", "cancelled"}


def test_unknown_paths_and_methods(srv):
    assert_error(srv.get("/v1/nothing"), 404, "not_found")
    assert_error(srv.get("/v1/jobs/"), 404, "not_found")
    r = srv.request("DELETE", "/v1/jobs")
    assert_error(r, 405, "method_not_allowed")
    assert set(x.strip() for x in r.headers["Allow"].split(",")) == {"GET", "POST"}
    assert_error(srv.get("/v1/jobs/job_0000/cancel"), 405, "method_not_allowed")
    for path in ("/v1/jobs/job_nope", "/v1/jobs/job_nope/metrics", "/v1/jobs/job_nope/events",
                 "/v1/jobs/job_nope/checkpoints", "/v1/jobs/job_nope/samples",
                 "/v1/datasets/ds_nope", "/v1/models/mdl_nope", "/v1/rollouts/roll_nope",
                 "/v1/jobs/job_nope/checkpoints/1/files/config.json"):
        assert_error(srv.get(path), 404, "not_found")
    assert_error(srv.post("/v1/jobs/job_nope/cancel"), 404, "not_found")


def test_prometheus_text(srv):
    srv.get("/healthz")
    r = srv.get("/metrics")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
    text = r.body.decode()
    for state in ("queued", "running", "succeeded", "failed", "cancelled"):
        assert f'chord_jobs{{state="{state}"}}' in text
    assert 'chord_requests_total{transport="http",route="/healthz",method="GET",code="200"}' in text
    assert 'chord_request_duration_seconds_bucket{transport="http",route="/healthz",le="+Inf"}' in text
    assert "chord_steps_total" in text and 'chord_tokens_per_second{phase="train"}' in text
    # every sample line is NAME{labels} VALUE or NAME VALUE with a float value
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        float(line.rsplit(" ", 1)[1])


# ---- datasets ------------------------------------------------------------------------------

def test_dataset_upload_and_get(srv):
    body = jsonl(arith_prompts(25)) + b'{"messages": [{"role": "user", "content": "hi"}], "answer": 3}'
    r = srv.upload("prompts", body, name="mine")
    assert r.status == 201, r
    d = r.json()
    assert d["id"].startswith("ds_") and d["kind"] == "prompts" and d["name"] == "mine"
    assert d["lines"] == 26 and d["bytes"] == len(body)
    assert d["sha256"] == hashlib.sha256(body).hexdigest()
    assert srv.get("/v1/datasets/" + d["id"]).json() == d
    ids = [x["id"] for x in srv.get("/v1/datasets?limit=1000").json()["items"]]
    assert d["id"] in ids
    page = srv.get("/v1/datasets?limit=1&offset=0").json()
    assert len(page["items"]) == 1 and page["total"] >= 1 and page["limit"] == 1


def test_dataset_expert_messages(srv):
    body = jsonl([{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                                {"role": "assistant", "content": "a"}]}] + arith_expert(3))
    r = srv.upload("expert", body)
    assert r.status == 201, r
    assert r.json()["lines"] == 4


def test_dataset_chunked_upload(srv):
    """A body sent with chunked transfer encoding in pieces that split lines and UTF-8."""
    rows = arith_prompts(200) + [{"prompt": "Combien font 2+2 ? é", "answer": "4"}]
    body = jsonl(rows)
    sock = socket.create_connection(("127.0.0.1", srv.port))
    head = (f"POST /v1/datasets?kind=eval HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            f"Content-Type: application/x-ndjson\r\nConnection: close\r\n\r\n")
    sock.sendall(head.encode())
    for i in range(0, len(body), 777):
        piece = body[i:i + 777]
        sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
    sock.sendall(b"0\r\n\r\n")
    resp = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        resp += chunk
    sock.close()
    assert resp.startswith(b"HTTP/1.1 201"), resp[:200]
    d = json.loads(resp.split(b"\r\n\r\n", 1)[1])
    assert d["lines"] == 201 and d["sha256"] == hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize("kind,body,status,needles", [
    ("prompts", b'{"prompt":"a","answer":"1"}\n{"prompt":"b","answer":"2"}\n{"prompt": "c", "answer": \n',
     400, ["line 3", "invalid JSON"]),
    ("prompts", b'{"prompt":"a","answer":"1"}\n{"prompt":"b"}\n', 400, ["line 2", "answer"]),
    # blank lines are skipped (docs/api.md, Records) but counted: the bad record is line 3
    ("prompts", b'{"prompt":"a","answer":"1"}\n\n{"prompt":"b"}\n', 400, ["line 3", "answer"]),
    ("prompts", b'[1,2]\n', 400, ["line 1", "object"]),
    ("prompts", b'{"prompt":"a","answer":"1"}\n{"prompt":"\xff\xfe","answer":"1"}\n', 400, ["line 2"]),
    ("prompts", b'{"prompt": 5, "answer": "1"}\n', 400, ["line 1", "prompt"]),
    ("prompts", b'{"prompt":"a","answer":"1","prompt":"b"}\n', 400, ["line 1", "duplicate"]),
    ("expert", b'{"prompt":"a","response":"b"}\n{"prompt":"a","answer":"1"}\n', 400, ["line 2", "response"]),
    ("expert", b'{"messages":[{"role":"user","content":"q"}]}\n', 400, ["line 1", "assistant"]),
    ("expert", b'{"messages":[{"role":"robot","content":"q"}]}\n', 400, ["line 1", "messages[0].role"]),
    ("prompts", b'', 400, ["empty"]),
    ("prompts", b'{"prompt":"a","answer":"1"}\n{"prompt":"b","answer":"2"', 400, ["line 2"]),
    ("bogus", b'{"prompt":"a","answer":"1"}\n', 400, ["kind"]),
    (None, b'{"prompt":"a","answer":"1"}\n', 400, ["kind"]),
])
def test_dataset_bad_uploads(srv, kind, body, status, needles):
    before = snapshot(srv)
    path = "/v1/datasets" + (f"?kind={kind}" if kind else "")
    r = srv.request("POST", path, body, {"Content-Type": "application/x-ndjson"})
    assert_error(r, status, "invalid_argument", *needles)
    assert snapshot(srv) == before
    assert srv.get("/healthz").status == 200


def test_dataset_too_large(srv):
    before = snapshot(srv)
    line = json.dumps({"prompt": "x" * 1000, "answer": "1"}).encode() + b"\n"
    big = line * (2 * 1024 * 1024 // len(line))  # 2 MiB, limit is 1 MiB
    # Content-Length over the limit: answered from the headers alone, before any body byte
    sock = socket.create_connection(("127.0.0.1", srv.port))
    sock.sendall(b"POST /v1/datasets?kind=prompts HTTP/1.1\r\nHost: x\r\n"
                 b"Content-Type: application/x-ndjson\r\nContent-Length: %d\r\n\r\n" % len(big))
    sock.settimeout(10)
    resp = sock.recv(65536)
    sock.close()
    assert resp.startswith(b"HTTP/1.1 413"), resp[:300]
    assert b"payload_too_large" in resp
    # chunked (no Content-Length): rejected once the limit is crossed, answered at the end
    resp = raw_chunked(srv, "/v1/datasets?kind=prompts", "application/x-ndjson", big)
    assert resp.startswith(b"HTTP/1.1 413"), resp[:300]
    assert snapshot(srv) == before
    assert not [f for f in os.listdir(os.path.join(srv.data_dir, "datasets")) if f.endswith(".tmp")]


def test_dataset_wrong_content_type(srv):
    r = srv.upload("prompts", jsonl(arith_prompts(2)), content_type="multipart/form-data; boundary=x")
    assert_error(r, 415, "unsupported_media_type")
    r = srv.upload("prompts", jsonl(arith_prompts(2)), content_type="application/x-www-form-urlencoded")
    assert_error(r, 415, "unsupported_media_type", "x-ndjson")


# ---- models --------------------------------------------------------------------------------

def test_models(srv):
    d = os.path.join(srv.models_root, "tiny")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(TINY_CONFIG, f)
    r = srv.post("/v1/models", {"name": "tiny", "path": "tiny"})
    assert r.status == 201, r
    m = r.json()
    assert m["source"] == "directory" and m["path"] == os.path.realpath(d)
    assert m["config"]["hidden_size"] == 32
    assert srv.get("/v1/models/" + m["id"]).json() == m
    r = srv.post("/v1/models", {"init": {"config": TINY_CONFIG}})
    assert r.status == 201, r
    assert r.json()["source"] == "init" and r.json()["path"] is None
    ids = [x["id"] for x in srv.get("/v1/models").json()["items"]]
    assert m["id"] in ids and r.json()["id"] in ids


def test_models_bad(srv):
    outside = os.path.join(srv.tmp, "outside")  # a sibling of the models root
    os.makedirs(outside, exist_ok=True)
    with open(os.path.join(outside, "config.json"), "w") as f:
        json.dump(TINY_CONFIG, f)
    link = os.path.join(srv.models_root, "escape")
    if not os.path.islink(link):
        os.symlink(str(outside), link)
    before = snapshot(srv)
    cases = [
        ({"path": "../outside"}, ["path", "outside the models root"]),
        ({"path": outside}, ["path", "outside the models root"]),
        ({"path": "tiny/../../outside"}, ["path", "outside the models root"]),
        ({"path": "escape"}, ["path", "outside the models root"]),
        ({"path": "nope"}, ["path", "does not exist"]),
        ({"path": ""}, ["path"]),
        ({"path": 5}, ["path"]),
        ({"name": "x"}, ["path"]),
        ({"path": "tiny", "bogus": 1}, ['unknown field "bogus"']),
        ({"init": {"config": TINY_CONFIG | {"hidden_size": -4}}}, ["init.config", "hidden_size"]),
        ({"init": {"config": TINY_CONFIG, "seed": 1}}, ['unknown field "init.seed"']),
        ({"init": {"config": "x"}}, ["init.config"]),
    ]
    for body, needles in cases:
        assert_error(srv.post("/v1/models", body), 400, "invalid_argument", *needles)
    assert snapshot(srv) == before


# ---- jobs: bad documents -------------------------------------------------------------------

def test_job_bad_documents(srv, datasets):
    p, e = datasets
    good = tiny_job(p)
    before = snapshot(srv)
    raw_cases = [
        (b'{"model": {"init"', 400, "invalid_argument", ["body", "invalid JSON"]),
        (b'{"model": }', 400, "invalid_argument", ["invalid JSON", "line 1"]),
        (b'', 400, "invalid_argument", ["body"]),
        (b'[1, 2]', 400, "invalid_argument", ["JSON object"]),
        (b'"job"', 400, "invalid_argument", []),
        (b'{"a": 1, "a": 2}', 400, "invalid_argument", ["duplicate"]),
        (b'\xff\xfe{}', 400, "invalid_argument", []),
    ]
    for body, status, code, needles in raw_cases:
        r = srv.request("POST", "/v1/jobs", body, {"Content-Type": "application/json"})
        assert_error(r, status, code, *needles)
    doc_cases = [
        (good | {"steps": "ten"}, ["steps"]),
        (good | {"steps": 0}, ["steps"]),
        (good | {"seed": -1}, ["seed"]),
        (good | {"bogus": 1}, ['unknown field "bogus"']),
        (good | {"grpo": {"clipp_low": 0.2}}, ['unknown field "grpo.clipp_low"']),
        (good | {"grpo": {"clip_low": "a"}}, ["grpo.clip_low"]),
        (good | {"sampling": {"temperature": -1}}, ["sampling.temperature"]),
        (good | {"algorithm": "ppo"}, ["algorithm"]),
        (good | {"data": {"prompts": "ds_nope"}}, ["data.prompts"]),
        (good | {"data": {"prompts": e}}, ["data.prompts", "expert"]),
        (good | {"model": {"path": "nope"}}, ["model.path"]),
        (good | {"model": {"path": "../x"}}, ["model.path"]),
        (good | {"model": {"path": "mdl_nope"}}, ["model.path"]),
        (good | {"model": {"init": {"config": {"hidden_size": 8}}}}, ["model.init.config"]),
        (good | {"model": {}}, ["model"]),
        (good | {"device": "cuda:0"}, ["device"]),
        (good | {"device": "tpu"}, ["device"]),
        ({k: v for k, v in good.items() if k != "model"}, ["model"]),
        ({k: v for k, v in good.items() if k != "data"}, ["data.prompts"]),
    ]
    for doc, needles in doc_cases:
        assert_error(srv.post("/v1/jobs", doc), 400, "invalid_argument", *needles)
    r = srv.request("POST", "/v1/jobs", json.dumps(good), {"Content-Type": "text/plain"})
    assert_error(r, 415, "unsupported_media_type")
    big = b'{"name": "' + b"x" * (2 << 20) + b'"}'
    resp = raw_chunked(srv, "/v1/jobs", "application/json", big)
    assert resp.startswith(b"HTTP/1.1 413") and b"payload_too_large" in resp, resp[:300]
    assert snapshot(srv) == before
    assert srv.get("/healthz").status == 200


# ---- work that would not fit the device's memory -------------------------------------------

def write_model_dir(srv, name, config):
    d = os.path.join(srv.models_root, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f) if isinstance(config, dict) else f.write(config)
    return d


def stored_rollouts(srv):
    con = sqlite3.connect(f"file:{os.path.join(srv.data_dir, 'chord.db')}?mode=ro", uri=True)
    try:
        return con.execute("SELECT COUNT(*) FROM rollouts").fetchone()[0]
    finally:
        con.close()


def assert_too_large(r, *needles):
    """413 with the figures: needed and free GiB, the breakdown, what to lower."""
    assert_error(r, 413, "payload_too_large", "GiB", "free", *needles)
    m = r.json()["error"]["message"]
    assert "needs about" in m or "need about" in m, m
    assert "or use a larger device" in m or "use a smaller model or a larger device" in m, m


def test_job_that_cannot_fit_is_refused_at_submission(srv, datasets):
    p, e = datasets
    write_model_dir(srv, "huge", HUGE_CONFIG)
    write_model_dir(srv, "badcfg", '{"hidden_size": ')
    before = snapshot(srv)
    # the model: weights, gradients and AdamW moments alone are ~22 TiB
    r = srv.post("/v1/jobs", tiny_job(p, model={"init": {"config": HUGE_CONFIG}}))
    assert_too_large(r, "the job needs about", "on cpu", "weights", "gradients and AdamW moments",
                     "(biggest share first) the model's size")
    # the same model as a directory: its config.json is read at submission
    assert_too_large(srv.post("/v1/jobs", tiny_job(p, model={"path": "huge"})), "weights")
    # a tiny model with a rollout batch of 1e9 slots: the KV cache is named, and what to lower
    r = srv.post("/v1/jobs", tiny_job(p, grpo={"group_size": 100, "prompts_per_step": 10**7}))
    # (positions: the tiny dataset's longest prompt bound plus max_new_tokens, within the
    # model's 128; mem_prompt_tokens_of_file)
    assert_too_large(r, "KV cache", "1000000000 slots x ",
                     "to fit, lower (biggest share first) grpo.prompts_per_step x "
                     "grpo.group_size or sampling.max_new_tokens")
    # a tiny model with micro-batches of 1e10 tokens and 1e7 expert records a step (of at most
    # 128 tokens): 1.28e9 rows in a micro-batch, activations first in what to lower
    r = srv.post("/v1/jobs", tiny_job(p, e, micro_batch_tokens=10**10, expert_per_step=10**7))
    assert_too_large(r, "activations", "1280000488 tokens per micro-batch",
                     "to fit, lower (biggest share first) micro_batch_tokens")
    # a config.json that does not parse is refused at submission too, naming the field
    assert_error(srv.post("/v1/jobs", tiny_job(p, model={"path": "badcfg"})), 400,
                 "invalid_argument", "model.path")
    # nothing stored, the server up, and a job that fits still accepted
    assert snapshot(srv) == before
    assert srv.get("/healthz").status == 200
    r = srv.post("/v1/jobs", tiny_job(p, steps=1))
    assert r.status == 201, r
    srv.wait_job(r.json()["id"], lambda j: j["state"] == "succeeded")


def test_model_that_cannot_hold_its_weights_is_refused(srv):
    write_model_dir(srv, "huge", HUGE_CONFIG)
    before = snapshot(srv)
    r = srv.post("/v1/models", {"init": {"config": HUGE_CONFIG}})
    assert_too_large(r, "the model's weights need about", "parameters in float32")
    assert_too_large(srv.post("/v1/models", {"name": "huge", "path": "huge"}), "weights")
    assert snapshot(srv) == before


def test_rollout_that_cannot_fit_is_refused_at_submission(srv):
    write_model_dir(srv, "huge", HUGE_CONFIG)
    write_model_dir(srv, "longkv", LONG_KV_CONFIG)
    before, rows = snapshot(srv), stored_rollouts(srv)
    r = srv.post("/v1/rollouts", {"prompts": ["Compute 1+2."] * 256, "model": "longkv", "n": 64,
                                  "max_tokens": 32768})
    assert_too_large(r, "the rollout needs about", "KV cache", "16384 slots x ",
                     "to fit, lower (biggest share first) the number of prompts x n, the "
                     "prompts' length or max_tokens")
    r = srv.post("/v1/rollouts", {"messages": [[{"role": "user", "content": "hi"}]] * 256,
                                  "model": "longkv", "n": 64, "max_tokens": 32768})
    assert_too_large(r, "KV cache")
    r = srv.post("/v1/rollouts", {"prompts": ["Compute 1+2."], "model": "huge", "max_tokens": 4})
    assert_too_large(r, "the rollout needs about", "weights")
    # nothing stored (not even a failed row), the server up
    assert stored_rollouts(srv) == rows
    assert snapshot(srv) == before
    assert srv.get("/healthz").status == 200
    # the same model with a small request fits (it then fails at run time: no weights on disk)
    r = srv.post("/v1/rollouts", {"prompts": ["Compute 1+2."], "model": "longkv", "max_tokens": 4})
    assert r.status == 202, r


def test_device_memory_limit_caps_submission_and_start(srv, datasets):
    """--device-memory-mb: what the same job needs (~12 MiB at 1024 tokens per micro-batch, ~91
    MiB at 8192) is refused over the limit, accepted under it and without it; a running job's
    share is not a rollout's; and a job accepted before a restart with a lower limit fails when
    it starts, saying so."""
    p, _ = datasets
    # 16 prompts x 8 responses of up to 122 tokens a step: micro-batches fill micro_batch_tokens
    wide_step = {"group_size": 8, "prompts_per_step": 16}
    big_batch = tiny_job(p, steps=1, micro_batch_tokens=8192, grpo=wide_step)
    r = srv.post("/v1/jobs", big_batch)  # no limit: the host's free memory
    assert r.status == 201, r
    srv.wait_job(r.json()["id"], lambda j: j["state"] == "succeeded")
    lim = Chordd(extra_args=["--device-memory-mb", "64"]).start()
    try:
        lp = lim.upload("prompts", jsonl(arith_prompts(20))).json()["id"]
        r = lim.post("/v1/jobs", tiny_job(lp, steps=1, micro_batch_tokens=8192, grpo=wide_step))
        assert_error(r, 413, "payload_too_large",
                     "on cpu but the device memory limit (--device-memory-mb) allows 64.0 MiB",
                     "activations", "(biggest share first) micro_batch_tokens")
        assert lim.get("/v1/jobs").json()["total"] == 0
        r = lim.post("/v1/jobs", tiny_job(lp, steps=1, micro_batch_tokens=1024, grpo=wide_step))
        assert r.status == 201, r
        lim.wait_job(r.json()["id"], lambda j: j["state"] == "succeeded")
        # a running job (~52 MiB at 4096 tokens per micro-batch) keeps its share of the limit: a
        # rollout (~35 MiB) runs between its steps, so only the rest (~12 MiB) is left for it;
        # another such job runs after it, so it may use the whole limit
        write_model_dir(lim, "tiny", TINY_CONFIG)
        wide = {"prompts": ["Compute 1+2."] * 32, "model": "tiny", "n": 48, "max_tokens": 64}
        running = lim.post("/v1/jobs", tiny_job(lp, steps=100000, micro_batch_tokens=4096,
                                                grpo=wide_step)).json()
        lim.wait_job(running["id"], lambda j: j["state"] == "running" and j["current_step"] >= 1)
        assert_error(lim.post("/v1/rollouts", wide), 413, "payload_too_large",
                     "the rollout needs about 34.9 MiB on cpu but the device memory limit "
                     "(--device-memory-mb) allows 12.4 MiB")
        queued = lim.post("/v1/jobs", tiny_job(lp, steps=100000, micro_batch_tokens=4096,
                                               grpo=wide_step))
        assert queued.status == 201, queued
        for job_id in (queued.json()["id"], running["id"]):
            lim.post(f"/v1/jobs/{job_id}/cancel")
            lim.wait_job(job_id, lambda j: j["state"] == "cancelled")
        assert lim.post("/v1/rollouts", wide).status == 202  # idle: the whole limit
        # a long job interrupted by a stop resumes under a limit it no longer fits in
        long_job = lim.post("/v1/jobs", tiny_job(lp, steps=100000, checkpoint_every=0)).json()
        lim.wait_job(long_job["id"], lambda j: j["current_step"] >= 1)
        assert lim.stop() == 0
        lim.extra_args = ["--device-memory-mb", "1"]
        lim.start()
        j = lim.wait_job(long_job["id"], lambda j: j["state"] in ("failed", "succeeded"))
        assert j["state"] == "failed", j
        assert "the device memory limit (--device-memory-mb) allows 1.0 MiB" in j["error"], j
        assert lim.get("/healthz").status == 200
    finally:
        lim.cleanup()


def test_list_bad_query(srv):
    assert_error(srv.get("/v1/jobs?state=bogus"), 400, "invalid_argument", "state")
    assert_error(srv.get("/v1/jobs?limit=0"), 400, "invalid_argument", "limit")
    assert_error(srv.get("/v1/jobs?offset=-1"), 400, "invalid_argument", "offset")
    assert_error(srv.get("/v1/datasets?limit=abc"), 400, "invalid_argument", "limit")


# ---- jobs: running ----------------------------------------------------------------------------

def test_job_trains_with_events_metrics_checkpoints(srv, datasets):
    p, e = datasets
    ev = srv.upload("eval", jsonl(arith_prompts(4, seed=9))).json()["id"]
    doc = tiny_job(p, e, steps=6, checkpoint_every=2, keep_checkpoints=0,
                   eval={"every": 3, "k": 1, "max_new_tokens": 4})
    doc["data"]["eval"] = ev
    r = srv.post("/v1/jobs", doc)
    assert r.status == 201, r
    job = r.json()
    assert job["state"] in ("queued", "running") and job["config"]["steps"] == 6
    assert job["config"]["algorithm"] == "chord" and job["config"]["grpo"]["group_size"] == 2
    events = []
    for ev, data in srv.sse(f"/v1/jobs/{job['id']}/events"):
        events.append((ev, data))
    steps = [d["step"] for ev, d in events if ev == "step"]
    assert steps == [1, 2, 3, 4, 5, 6], events
    assert events[-1][0] == "state" and events[-1][1]["state"] == "succeeded"
    for ev, d in events:
        if ev == "step":
            assert "loss" in d["metrics"] and "mu" in d["metrics"]
    assert [d["step"] for ev, d in events if ev == "checkpoint"] == [2, 4, 6]

    j = srv.get(f"/v1/jobs/{job['id']}").json()
    assert j["state"] == "succeeded" and j["current_step"] == 6 and j["finished_at"]
    m = srv.get(f"/v1/jobs/{job['id']}/metrics").json()
    assert [s["step"] for s in m["steps"]] == [1, 2, 3, 4, 5, 6] and m["next_step"] == 7
    # metrics over HTTP equal what the event stream carried
    by_step = {d["step"]: d["metrics"] for ev, d in events if ev == "step"}
    for s in m["steps"]:
        assert s["metrics"] == by_step[s["step"]]
    m4 = srv.get(f"/v1/jobs/{job['id']}/metrics?since_step=4&max_steps=2").json()
    assert [s["step"] for s in m4["steps"]] == [4, 5] and m4["next_step"] == 6
    assert_error(srv.get(f"/v1/jobs/{job['id']}/metrics?since_step=x"), 400, "invalid_argument",
                 "since_step")
    samples = srv.get(f"/v1/jobs/{job['id']}/samples?step=2").json()
    assert samples["total"] == len(samples["items"]) == 4  # prompts_per_step x group_size
    assert all(s["step"] == 2 and s["kind"] == "rollout" for s in samples["items"])
    # an eval step stores its rollouts and its eval samples (4 eval prompts x k=1)
    kinds = [s["kind"] for s in srv.get(f"/v1/jobs/{job['id']}/samples?step=3").json()["items"]]
    assert kinds.count("rollout") == 4 and kinds.count("eval") == 4, kinds
    assert "eval/accuracy" in by_step[3] or any(k.startswith("eval/") for k in by_step[3])

    cks = srv.get(f"/v1/jobs/{job['id']}/checkpoints").json()["items"]
    assert [c["step"] for c in cks] == [2, 4, 6]
    ck = cks[-1]
    names = [f["path"] for f in ck["files"]]
    assert "SHA256SUMS" in names and "config.json" in names
    manifest = srv.get(f"/v1/jobs/{job['id']}/checkpoints/6/files/SHA256SUMS")
    assert manifest.status == 200 and manifest.headers["Content-Type"] == "application/octet-stream"
    assert hashlib.sha256(manifest.body).hexdigest() == ck["sha256"]
    total = 0
    for line in manifest.body.decode().splitlines():
        digest, name = line.split(None, 1)
        name = name.lstrip("*")
        f = srv.get(f"/v1/jobs/{job['id']}/checkpoints/6/files/{name}")
        assert f.status == 200, (name, f)
        assert hashlib.sha256(f.body).hexdigest() == digest, name
        total += len(f.body)
    assert total == ck["bytes"]
    for bad in ("../../chord.db", "..", "a/../../x"):
        r = srv.get(f"/v1/jobs/{job['id']}/checkpoints/6/files/{bad}")
        assert r.status in (400, 404), r
    assert_error(srv.get(f"/v1/jobs/{job['id']}/checkpoints/3/files/config.json"), 404, "not_found")
    assert_error(srv.get(f"/v1/jobs/{job['id']}/checkpoints/x/files/config.json"), 400,
                 "invalid_argument", "step")
    # a finished job cannot be cancelled
    assert_error(srv.post(f"/v1/jobs/{job['id']}/cancel"), 409, "conflict")
    # events of a finished job: its steps again, then the final state
    again = [(ev, d) for ev, d in srv.sse(f"/v1/jobs/{job['id']}/events?since_step=5") if ev != ":comment"]
    assert [d["step"] for ev, d in again if ev == "step"] == [5, 6]
    assert again[-1][1]["state"] == "succeeded"


def test_cancel_queued_and_running(srv, datasets):
    p, _ = datasets
    long_a = srv.post("/v1/jobs", tiny_job(p, steps=100000, checkpoint_every=0)).json()
    long_b = srv.post("/v1/jobs", tiny_job(p, steps=100000, checkpoint_every=0)).json()
    # b waits behind a on the only worker: cancelling it is immediate
    r = srv.post(f"/v1/jobs/{long_b['id']}/cancel")
    assert r.status == 200 and r.json()["state"] == "cancelled", r
    srv.wait_job(long_a["id"], lambda j: j["state"] == "running" and j["current_step"] >= 2)
    t0 = time.time()
    r = srv.post(f"/v1/jobs/{long_a['id']}/cancel")
    assert r.status == 200 and r.json()["cancel_requested"] is True
    j = srv.wait_job(long_a["id"], lambda j: j["state"] == "cancelled", timeout=30)
    assert time.time() - t0 < 10
    m = srv.get(f"/v1/jobs/{long_a['id']}/metrics").json()
    steps = [s["step"] for s in m["steps"]]
    assert steps == list(range(1, len(steps) + 1)) and steps[-1] == j["current_step"]
    listed = srv.get("/v1/jobs?state=cancelled&limit=1000").json()["items"]
    assert {long_a["id"], long_b["id"]} <= {x["id"] for x in listed}


def test_sse_heartbeat_and_concurrent_readers(srv, datasets):
    """Several streams on one job, a heartbeat while it waits in the queue, all end together."""
    p, _ = datasets
    blocker = srv.post("/v1/jobs", tiny_job(p, steps=100000, checkpoint_every=0)).json()
    job = srv.post("/v1/jobs", tiny_job(p, steps=3, checkpoint_every=0)).json()
    results = []

    def read():
        results.append(list(srv.sse(f"/v1/jobs/{job['id']}/events")))

    threads = [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(2.5)  # heartbeat is 1 s: comments arrive while the job is queued
    srv.post(f"/v1/jobs/{blocker['id']}/cancel")
    for t in threads:
        t.join(60)
    assert len(results) == 4
    for evs in results:
        assert any(ev == ":comment" and "heartbeat" in d for ev, d in evs)
        assert [d["step"] for ev, d in evs if ev == "step"] == [1, 2, 3]
        assert evs[-1][0] == "state" and evs[-1][1]["state"] == "succeeded"


# ---- rollouts ------------------------------------------------------------------------------

def test_rollouts(srv):
    r = srv.post("/v1/rollouts", {"prompts": ["Compute 1+2."], "model": "nope"})
    assert_error(r, 400, "invalid_argument", "model")
    assert_error(srv.post("/v1/rollouts", {"prompts": []}), 400, "invalid_argument", "prompts")
    assert_error(srv.post("/v1/rollouts", {"prompts": ["a"], "checkpoint": {"job_id": "job_x"}}),
                 400, "invalid_argument", "checkpoint")
    assert_error(srv.post("/v1/rollouts", {"prompts": ["a"], "model": "m", "n": 0}), 400,
                 "invalid_argument")
    assert_error(srv.post("/v1/rollouts", {"prompts": ["a"], "temperature": "hot"}), 400,
                 "invalid_argument")
    assert_error(srv.post("/v1/rollouts", {"prompts": ["a"], "model": "m", "x": 1}), 400,
                 "invalid_argument", 'unknown field "x"')
    d = os.path.join(srv.models_root, "tiny2")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(TINY_CONFIG, f)
    r = srv.post("/v1/rollouts", {"prompts": ["Compute 1+2."], "model": "tiny2", "n": 2,
                                  "answers": ["3"], "max_tokens": 4})
    assert r.status == 202, r
    ro = r.json()
    assert ro["id"].startswith("roll_") and ro["request"]["n"] == 2
    deadline = time.time() + 30
    while time.time() < deadline:
        ro = srv.get("/v1/rollouts/" + ro["id"]).json()
        if ro["state"] != "pending":
            break
        time.sleep(0.1)
    # a model directory without weights: the rollout fails, saying why, and the server stays up
    # (successful rollouts, checked against transformers: tests/integration/rollout_test.py)
    assert ro["state"] == "failed" and "safetensors" in ro["error"], ro
    assert ro["result"] is None
    assert srv.get("/healthz").status == 200


@pytest.mark.parametrize("reward,needle", [
    (5, "reward: must be an object"),
    ({"type": "nope"}, "reward.type"),
    ({"type": "regex"}, "reward.pattern"),
    ({"type": "math_boxed", "length_penalty": "low"}, "reward.length_penalty"),
    ({"type": "sum", "terms": [{"type": "math_boxed"}, {"type": "exact", "x": 1}]},
     "reward.terms[1]"),
])
def test_rollout_reward_refused_at_submission(srv, reward, needle):
    """A rollout's verifier is checked whole when it is submitted, as a job's is (by the same
    parser, naming the field), not when it runs; nothing is stored."""
    write_model_dir(srv, "tiny_reward", TINY_CONFIG)
    before = stored_rollouts(srv)
    r = srv.post("/v1/rollouts", {"prompts": ["Compute 1+2."], "model": "tiny_reward",
                                  "answers": ["3"], "reward": reward})
    assert_error(r, 400, "invalid_argument", needle)
    assert stored_rollouts(srv) == before


def test_rollout_reward_scores_the_completions(srv, datasets):
    """The request's "reward" is the verifier that scores its completions: a length penalty of
    -1 gives the truncated, answerless completions of a 4-token budget -1 where the default
    math_boxed gives 0."""
    job = srv.post("/v1/jobs", tiny_job(*datasets, steps=2)).json()["id"]
    assert srv.wait_job(job, lambda j: j["state"] in ("succeeded", "failed"))["state"] == \
        "succeeded"
    results = {}
    for name, reward in (("default", None), ("penalty", {"type": "math_boxed",
                                                         "length_penalty": -1})):
        body = {"prompts": ["Compute 1+2."], "checkpoint": {"job_id": job}, "n": 4,
                "answers": ["3"], "max_tokens": 4, "temperature": 1.0, "seed": 5}
        if reward:
            body["reward"] = reward
        r = srv.post("/v1/rollouts", body)
        assert r.status == 202, r
        assert r.json()["request"]["reward"] == reward
        ro = srv.wait_rollout(r.json()["id"])
        assert ro["state"] == "succeeded", ro
        results[name] = ro["result"]["completions"]
    truncated = [i for i, c in enumerate(results["default"])
                 if c["finish_reason"] == "length" and c["reason"] == "no_answer"]
    assert truncated, results["default"]  # 4 tokens of a tiny model: cut off, no \boxed{}
    for i in truncated:  # the same seed: the same texts, scored by each request's verifier
        assert results["penalty"][i]["text"] == results["default"][i]["text"]
        assert results["default"][i]["reward"] == 0.0
        assert results["penalty"][i]["reward"] == -1.0


def test_server_survives_garbage(srv):
    """Raw garbage on the socket: the server answers or closes, and stays up."""
    before = snapshot(srv)
    for payload in (b"GARBAGE\r\n\r\n", b"POST /v1/jobs HTTP/1.1\r\nContent-Length: 100\r\n\r\n{",
                    b"GET /" + b"a" * 100000 + b" HTTP/1.1\r\n\r\n", b"\x00\x01\x02\r\n\r\n"):
        s = socket.create_connection(("127.0.0.1", srv.port))
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(5)
            s.recv(65536)
        except OSError:
            pass
        s.close()
    assert srv.get("/healthz").status == 200
    assert snapshot(srv) == before


# ---- records: one parser for uploads, training, eval and rollouts (docs/api.md, Records) -------

# Every rule where the upload validation, the trainer and the rollout executor used to disagree:
# a BOM, blank and whitespace-only lines, text-part content, a trailing assistant turn (a
# reference solution: not part of the prompt), "answer": null, numeric answers.
EDGE_PROMPTS = (b"\xef\xbb\xbf" + json.dumps({"prompt": "What is 1/10?", "answer": 0.1}).encode()
                + b"\n\n" + json.dumps({"messages": [{"role": "user", "content": [
                    {"type": "text", "text": "Compute 2+"}, {"type": "text", "text": "2."}]}],
                    "answer": 4}).encode()
                + b"\n  \t\n" + json.dumps({"messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Compute 1+1."},
                    {"role": "assistant", "content": "\\boxed{2}"}], "answer": "2"}).encode()
                + b"\n" + json.dumps({"prompt": "Say hi.", "answer": None}).encode() + b"\n\n")
EDGE_EXPERT = (json.dumps({"messages": [
                   {"role": "user", "content": [{"type": "text", "text": "Compute 1+1."}]},
                   {"role": "assistant", "content": "1+1=2 \\boxed{2}"}]}).encode()
               + b"\n\n" + json.dumps({"prompt": "Compute 2+2.", "response": "\\boxed{4}",
                                       "answer": 4}).encode() + b"\n")


def test_records_that_upload_train(srv):
    """A file that uploads trains: the same records through a job, their answers (0.1 stays
    "0.1", not "0.10000000000000001") in the stored samples."""
    p = srv.upload("prompts", EDGE_PROMPTS, name="edge")
    assert p.status == 201, p
    assert p.json()["lines"] == 7  # the file's lines, blank ones included
    e = srv.upload("expert", EDGE_EXPERT, name="edge-expert")
    assert e.status == 201, e
    r = srv.post("/v1/jobs", tiny_job(p.json()["id"], e.json()["id"], steps=2,
                                      checkpoint_every=0))
    assert r.status == 201, r
    j = srv.wait_job(r.json()["id"], lambda j: j["state"] in ("succeeded", "failed"))
    assert j["state"] == "succeeded", j
    answers = set()
    for step in (1, 2):
        for s in srv.get(f"/v1/jobs/{j['id']}/samples?step={step}").json()["items"]:
            answers.add(s["answer"])
    # two steps of two prompts: each of the four records once (one epoch)
    assert answers == {"0.1", "4", "2", None}, answers
    # the prompt a verifier saw: the last user turn, text parts joined
    prompts = {s["prompt"] for s in srv.get(f"/v1/jobs/{j['id']}/samples?step=1").json()["items"]
               + srv.get(f"/v1/jobs/{j['id']}/samples?step=2").json()["items"]}
    assert "Compute 2+2." in prompts and "Compute 1+1." in prompts, prompts


BAD_RECORDS = [
    ("prompts", b'{"prompt":"a","answer":"1"}\n{"prompt":"b"}\n', 'line 2: "answer": required'),
    ("prompts", b'{"prompt":"a","answer":"1"} trailing\n', "line 1: invalid JSON"),
    ("prompts", b'{"prompt":"a","answer":"1","prompt":"b"}\n', "line 1: invalid JSON: duplicate"),
    ("prompts", b'\n{"prompt":"a","messages":[{"role":"user","content":"q"}],"answer":1}\n',
     'line 2: give "prompt" or "messages", not both'),
    ("prompts", b'{"messages":[{"role":"assistant","content":"a"}],"answer":1}\n',
     'line 1: "messages": a prompt needs a system, user or tool turn'),
    ("prompts", b'{"prompt":"","answer":1}\n', 'line 1: "prompt": must be a non-empty string'),
    ("prompts", b'{"prompt":"a","answer":[1]}\n', 'line 1: "answer": must be a string, a number'),
    ("expert", b'{"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}],'
               b'"response":"r"}\n', 'line 1: "response": not used with "messages"'),
    ("expert", b'{"messages":[{"role":"user","content":"q"}]}\n',
     'line 1: "messages": needs at least one assistant message'),
    ("expert", b'{"prompt":"q","response":"a"}\n{"prompt":"q"}\n', 'line 2: "response": required'),
]


@pytest.mark.parametrize("kind,body,message", BAD_RECORDS)
def test_records_refused_alike(srv, tmp_path, kind, body, message):
    """A file that is refused says why, naming the line and the field, with the same words
    whether it is uploaded or handed to `chordd train`."""
    r = srv.upload(kind, body)
    assert_error(r, 400, "invalid_argument", message)
    upload_message = r.json()["error"]["message"]
    path = tmp_path / f"bad_{kind}.jsonl"
    path.write_bytes(body)
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"prompt": "q", "answer": "1", "response": "a"}) + "\n")
    doc = {"model": {"init": {"config": TINY_CONFIG, "seed": 1}},
           "data": {"prompts": str(path if kind == "prompts" else good),
                    "expert": str(path if kind == "expert" else good)},
           "algorithm": "chord", "steps": 1, "eval": {"every": 0}}
    job_path = tmp_path / "job.json"
    job_path.write_text(json.dumps(doc))
    p = subprocess.run([os.environ["CHORDD"], "train", str(job_path), "--out",
                        str(tmp_path / "out"), "--quiet"], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode != 0
    assert f"{path}: {upload_message}" in p.stderr, (upload_message, p.stderr)


def test_rollout_prompts_and_answers_by_the_record_rules(srv):
    """Rollout requests read prompts and answers as datasets do: text-part content and a
    trailing assistant turn are accepted, "answer" null is allowed, and a numeric answer reaches
    the verifier as the text a person wrote (a webhook records what it is sent). A model whose
    vocabulary is smaller than its tokenizer's is refused before sampling (it would index past
    the embedding table)."""
    seen = []

    class Score(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body)
            out = b'{"reward": 1}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args):
            pass

    hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Score)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    try:
        m = srv.post("/v1/models", {"init": {"config": TINY_CONFIG}})
        assert m.status == 201, m
        conv = [{"role": "user", "content": [{"type": "text", "text": "Compute 2+"},
                                             {"type": "text", "text": "2."}]},
                {"role": "assistant", "content": "a reference solution"}]
        r = srv.post("/v1/rollouts", {
            "messages": [conv, [{"role": "user", "content": "What is 1/10?"}],
                         [{"role": "user", "content": "Say hi."}]],
            "answers": [4, 0.1, None], "model": m.json()["id"], "max_tokens": 2,
            "reward": {"type": "webhook", "url": f"http://127.0.0.1:{hook.server_port}/",
                       "timeout_ms": 5000}})
        assert r.status == 202, r
        ro = srv.wait_rollout(r.json()["id"])
        assert ro["state"] == "succeeded", ro
        by_prompt = {s["prompt"]: s["answer"] for s in seen}
        assert by_prompt == {"Compute 2+2.": "4", "What is 1/10?": "0.1", "Say hi.": None}, seen
        # the refusals name the field
        assert_error(srv.post("/v1/rollouts", {
            "messages": [[{"role": "assistant", "content": "a"}]], "model": m.json()["id"]}),
            400, "invalid_argument", "messages[0]", "a prompt needs")
        assert_error(srv.post("/v1/rollouts", {"prompts": ["a"], "answers": [[1]],
                                               "model": m.json()["id"]}),
                     400, "invalid_argument", "answers[0]", "must be a string, a number or null")
        # the vocabulary check every model open makes
        small = srv.post("/v1/models", {"init": {"config": TINY_CONFIG | {"vocab_size": 512}}})
        assert small.status == 201, small
        r = srv.post("/v1/rollouts", {"prompts": ["Compute 1+2."], "model": small.json()["id"],
                                      "max_tokens": 2})
        assert r.status == 202, r
        ro = srv.wait_rollout(r.json()["id"])
        assert ro["state"] == "failed" and "vocab_size is 512" in ro["error"], ro
        assert srv.get("/healthz").status == 200
    finally:
        hook.shutdown()
        hook.server_close()
