"""pipeline_test.py — what a nightly retraining pipeline relies on (docs/pipelines.md), end to end
on a real chordd: datasets named by name (the newest upload of that name), a job that starts
from another job's checkpoint (`model: {"checkpoint": {"job_id", "step"?}}`), a model
registered from a checkpoint without copying (`POST /v1/models {"from_checkpoint"}`) that
samples exactly what the checkpoint samples, bad references refused naming the field, and
Idempotency-Key on every POST that creates (jobs, datasets, models, rollouts): the same key and
body give the first result, another body a 409 naming the key, across a restart, until
--idempotency-ttl; the same over gRPC (ALREADY_EXISTS); signed webhooks checked by an independent
receiver, retried after a 500, logged, never slowing training when the receiver hangs.

Run: CHORDD=build/chordd python -m pytest tests/integration/pipeline_test.py"""
import json
import os
import time

import grpc
import pytest

from chordd_harness import TINY_CONFIG, Chordd, arith_prompts, jsonl, tiny_job
from grpc_harness import GrpcChordd, assert_same, stubs, to_struct


def assert_error(r, status, code, *needles):
    assert r.status == status, r
    e = r.json()["error"]
    assert e["code"] == code, r
    for n in needles:
        assert n in e["message"], (n, r)


def keyed(key):
    return {"Idempotency-Key": key}


def upload(srv, kind, data, name, key=None):
    headers = {"Content-Type": "application/x-ndjson"} | (keyed(key) if key else {})
    return srv.request("POST", f"/v1/datasets?kind={kind}&name={name}", data, headers)


def count(srv, path):
    return srv.get(path + "?limit=1000").json()["total"]


@pytest.fixture(scope="module")
def srv():
    s = GrpcChordd().start()
    yield s
    rc = s.stop()
    s.cleanup()
    assert rc == 0, "chordd did not exit cleanly on SIGTERM"


@pytest.fixture(scope="module")
def trained(srv):
    """Two uploads named "nightly" (the job must take the second), and a job trained on it."""
    first = upload(srv, "prompts", jsonl(arith_prompts(20, seed=1)), "nightly").json()
    second = upload(srv, "prompts", jsonl(arith_prompts(20, seed=2)), "nightly").json()
    assert first["id"] != second["id"]
    r = srv.post("/v1/jobs", tiny_job("nightly", steps=4, checkpoint_every=2))
    assert r.status == 201, r
    job = r.json()
    assert job["config"]["data"]["prompts"] == second["id"]  # resolved at submission, kept
    job = srv.wait_job(job["id"], lambda j: j["state"] in ("succeeded", "failed"))
    assert job["state"] == "succeeded", job
    return job, second


# ---- chaining ----------------------------------------------------------------------------------

def test_job_from_checkpoint_and_model_from_checkpoint(srv, trained):
    job, _ = trained
    cks = srv.get(f"/v1/jobs/{job['id']}/checkpoints").json()["items"]
    assert [c["step"] for c in cks] == [2, 4]
    latest_dir = os.path.join(srv.data_dir, "checkpoints", job["id"], "step_4")

    # step left out: the latest kept checkpoint
    doc = tiny_job("nightly", steps=2, checkpoint_every=2)
    doc["model"] = {"checkpoint": {"job_id": job["id"]}}
    r = srv.post("/v1/jobs", doc)
    assert r.status == 201, r
    chained = r.json()
    assert os.path.realpath(chained["config"]["model"]["path"]) == os.path.realpath(latest_dir)
    # an explicit step
    doc["model"] = {"checkpoint": {"job_id": job["id"], "step": 2}}
    r = srv.post("/v1/jobs", doc)
    assert r.status == 201, r
    assert r.json()["config"]["model"]["path"].endswith(f"{job['id']}/step_2")
    for j in (chained, r.json()):
        done = srv.wait_job(j["id"], lambda x: x["state"] in ("succeeded", "failed"))
        assert done["state"] == "succeeded", (done, srv.read_log()[-3000:])

    # a model from the checkpoint: no copy, its files are the checkpoint's
    before = sorted(os.listdir(srv.models_root))
    r = srv.post("/v1/models", {"name": "nightly-prod",
                                "from_checkpoint": {"job_id": job["id"], "step": 4}})
    assert r.status == 201, r
    model = r.json()
    assert model["source"] == "checkpoint", model
    assert model["checkpoint"]["job_id"] == job["id"] and model["checkpoint"]["step"] == 4
    assert os.path.realpath(model["path"]) == os.path.realpath(latest_dir)
    assert model["config"]["hidden_size"] == 32
    assert sorted(os.listdir(srv.models_root)) == before
    assert srv.get("/v1/models/" + model["id"]).json() == model
    # default name
    r = srv.post("/v1/models", {"from_checkpoint": {"job_id": job["id"]}})
    assert r.status == 201 and r.json()["name"] == f"{job['id']}-step-4", r

    # the registered model samples exactly what the checkpoint does (greedy)
    req = {"prompts": ["Compute 3+4."], "max_tokens": 5, "temperature": 0}
    a = srv.post("/v1/rollouts", req | {"model": model["id"]}).json()
    b = srv.post("/v1/rollouts", req | {"checkpoint": {"job_id": job["id"], "step": 4}}).json()
    a, b = srv.wait_rollout(a["id"]), srv.wait_rollout(b["id"])
    assert a["state"] == "succeeded" and b["state"] == "succeeded", (a, b)
    assert ([c["token_ids"] for c in a["result"]["completions"]] ==
            [c["token_ids"] for c in b["result"]["completions"]])

    # and a job can start from the registered model too
    doc["model"] = {"path": model["id"]}
    r = srv.post("/v1/jobs", doc | {"steps": 1})
    assert r.status == 201, r
    assert os.path.realpath(r.json()["config"]["model"]["path"]) == os.path.realpath(latest_dir)
    srv.wait_job(r.json()["id"], lambda x: x["state"] in ("succeeded", "failed"))


def test_bad_references_name_the_field(srv, trained):
    job, _ = trained
    jobs_before, models_before = count(srv, "/v1/jobs"), count(srv, "/v1/models")
    base = tiny_job("nightly", steps=1)
    cases = [
        ({"checkpoint": {"job_id": "job_000000000000000000000000"}}, "model.checkpoint.job_id"),
        ({"checkpoint": {"job_id": "nope"}}, "model.checkpoint.job_id"),
        ({"checkpoint": {"job_id": job["id"], "step": 3}}, "model.checkpoint.step"),
        ({"checkpoint": {"job_id": job["id"], "step": -1}}, "model.checkpoint.step"),
        ({"checkpoint": {"job_id": job["id"], "step": "4"}}, "model.checkpoint.step"),
        ({"checkpoint": {"job_id": job["id"], "step": 4.5}}, "model.checkpoint.step"),
        ({"checkpoint": {"job_id": job["id"], "steps": 4}}, "model.checkpoint"),
        ({"checkpoint": {}}, "model.checkpoint.job_id"),
        ({"checkpoint": "latest"}, "model.checkpoint"),
        ({"checkpoint": {"job_id": job["id"]}, "path": "x"}, "model"),
    ]
    for model, field in cases:
        r = srv.post("/v1/jobs", base | {"model": model})
        assert_error(r, 400, "invalid_argument", field)
    # a job with no checkpoint yet
    queued = srv.post("/v1/jobs", tiny_job("nightly", steps=1, device="cpu")).json()
    r = srv.post("/v1/jobs", base | {"model": {"checkpoint": {"job_id": queued["id"]}}})
    if r.status == 400:  # it may already have trained and checkpointed: then it is accepted
        assert_error(r, 400, "invalid_argument", "model.checkpoint.job_id", "no checkpoint")
    # datasets by name: unknown name, a name whose uploads are of another kind
    upload(srv, "expert", b'{"prompt": "a", "response": "b"}\n', "only-expert")
    for name in ("no-such-dataset", "only-expert"):
        r = srv.post("/v1/jobs", tiny_job(name, steps=1))
        assert_error(r, 400, "invalid_argument", "data.prompts", name)
    # models from a checkpoint
    for body, field in [({"from_checkpoint": {"job_id": job["id"], "step": 99}},
                         "from_checkpoint.step"),
                        ({"from_checkpoint": {"job_id": "job_000000000000000000000000"}},
                         "from_checkpoint.job_id"),
                        ({"from_checkpoint": {"job_id": job["id"]}, "path": "x"}, "path"),
                        ({"from_checkpoint": [1]}, "from_checkpoint")]:
        assert_error(srv.post("/v1/models", body), 400, "invalid_argument", field)
    srv.wait_job(queued["id"], lambda x: x["state"] in ("succeeded", "failed"))
    assert count(srv, "/v1/jobs") == jobs_before + 1 + (r.status == 201)
    assert count(srv, "/v1/models") == models_before
    assert srv.get("/healthz").status == 200


# ---- idempotency keys --------------------------------------------------------------------------

def test_idempotency_keys_rest(srv, trained):
    job, ds = trained
    jobs_before = count(srv, "/v1/jobs")
    doc = tiny_job("nightly", steps=1, name="keyed")
    a = srv.post("/v1/jobs", doc, headers=keyed("nightly-2026-12-05"))
    b = srv.post("/v1/jobs", doc, headers=keyed("nightly-2026-12-05"))
    assert a.status == b.status == 201, (a, b)
    assert a.json()["id"] == b.json()["id"]
    assert b.json() == a.json()  # the first result, as it was
    assert count(srv, "/v1/jobs") == jobs_before + 1
    # the same key with another body: 409 naming the key; nothing created
    r = srv.post("/v1/jobs", doc | {"steps": 2}, headers=keyed("nightly-2026-12-05"))
    assert_error(r, 409, "idempotency_key_reused", "nightly-2026-12-05")
    # the same key on another route is another request too
    r = srv.post("/v1/rollouts", {"prompts": ["a"], "checkpoint": {"job_id": job["id"]}},
                 headers=keyed("nightly-2026-12-05"))
    assert_error(r, 409, "idempotency_key_reused", "nightly-2026-12-05")
    # keys that are not keys
    for bad in ("x" * 256, "with space"):
        assert_error(srv.post("/v1/jobs", doc, headers=keyed(bad)), 400, "invalid_argument",
                     "Idempotency-Key")
    # a request refused is not kept: the key stays free
    r = srv.post("/v1/jobs", doc | {"steps": -1}, headers=keyed("fresh"))
    assert r.status == 400, r
    assert srv.post("/v1/jobs", doc, headers=keyed("fresh")).status == 201
    assert count(srv, "/v1/jobs") == jobs_before + 2
    srv.wait_job(a.json()["id"], lambda x: x["state"] in ("succeeded", "failed"))

    # datasets: the bytes are the request
    files = len(os.listdir(os.path.join(srv.data_dir, "datasets")))
    n = count(srv, "/v1/datasets")
    data = jsonl(arith_prompts(5, seed=9))
    a = upload(srv, "prompts", data, "keyed", key="ds-key")
    b = upload(srv, "prompts", data, "keyed", key="ds-key")
    assert a.status == b.status == 201 and a.json() == b.json(), (a, b)
    assert count(srv, "/v1/datasets") == n + 1
    assert len(os.listdir(os.path.join(srv.data_dir, "datasets"))) == files + 1
    r = upload(srv, "prompts", jsonl(arith_prompts(6, seed=9)), "keyed", key="ds-key")
    assert_error(r, 409, "idempotency_key_reused", "ds-key")
    r = upload(srv, "eval", data, "keyed", key="ds-key")
    assert_error(r, 409, "idempotency_key_reused", "ds-key")
    assert count(srv, "/v1/datasets") == n + 1
    assert len(os.listdir(os.path.join(srv.data_dir, "datasets"))) == files + 1

    # models
    n = count(srv, "/v1/models")
    body = {"name": "prod", "from_checkpoint": {"job_id": job["id"], "step": 2}}
    a = srv.post("/v1/models", body, headers=keyed("promote-1"))
    b = srv.post("/v1/models", body, headers=keyed("promote-1"))
    assert a.status == b.status == 201 and a.json()["id"] == b.json()["id"], (a, b)
    assert count(srv, "/v1/models") == n + 1
    assert_error(srv.post("/v1/models", body | {"name": "prod2"}, headers=keyed("promote-1")),
                 409, "idempotency_key_reused", "promote-1")

    # rollouts: the same id (202 both times)
    req = {"prompts": ["Compute 1+1."], "checkpoint": {"job_id": job["id"]}, "max_tokens": 3}
    a = srv.post("/v1/rollouts", req, headers=keyed("roll-1"))
    b = srv.post("/v1/rollouts", req, headers=keyed("roll-1"))
    assert a.status == b.status == 202 and a.json()["id"] == b.json()["id"], (a, b)
    srv.wait_rollout(a.json()["id"])


def test_idempotency_keys_survive_restart_and_expire():
    srv = Chordd(extra_args=["--idempotency-ttl", "3s"]).start()
    try:
        ds = upload(srv, "prompts", jsonl(arith_prompts(4)), "p").json()
        doc = tiny_job(ds["id"], steps=1, device="cpu")
        first = srv.post("/v1/jobs", doc, headers=keyed("k-restart"))
        assert first.status == 201, first
        t0 = time.time()
        assert srv.stop() == 0
        srv.start()
        again = srv.post("/v1/jobs", doc, headers=keyed("k-restart"))
        assert again.status == 201 and again.json()["id"] == first.json()["id"], again
        assert count(srv, "/v1/jobs") == 1
        assert time.time() - t0 < 3, "the restart took longer than the TTL: test inconclusive"
        time.sleep(max(0.0, 3.2 - (time.time() - t0)))
        later = srv.post("/v1/jobs", doc, headers=keyed("k-restart"))  # past the TTL: new
        assert later.status == 201 and later.json()["id"] != first.json()["id"], later
        assert count(srv, "/v1/jobs") == 2
        srv.stop()
        # a bad TTL is refused at start-up
        for bad in ("0", "x", "5w", "-3"):
            bad_srv = Chordd(extra_args=["--idempotency-ttl", bad])
            with pytest.raises(RuntimeError, match="idempotency-ttl"):
                bad_srv.start(timeout=10)
            bad_srv.cleanup()
    finally:
        srv.cleanup()


# ---- gRPC --------------------------------------------------------------------------------------

def test_grpc_chaining_and_keys(srv, trained):
    pb = stubs()[0]
    stub = srv.stub()
    job, ds = trained
    doc = tiny_job("nightly", steps=1)
    doc["model"] = {"checkpoint": {"job_id": job["id"], "step": 2}}
    a = stub.CreateJob(pb.CreateJobRequest(job=to_struct(doc), idempotency_key="g-job"), timeout=30)
    b = stub.CreateJob(pb.CreateJobRequest(job=to_struct(doc), idempotency_key="g-job"), timeout=30)
    assert a.id == b.id and a.config["model"]["path"].endswith(f"{job['id']}/step_2")
    with pytest.raises(grpc.RpcError) as e:
        stub.CreateJob(pb.CreateJobRequest(job=to_struct(doc | {"steps": 2}),
                                           idempotency_key="g-job"), timeout=30)
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS and "g-job" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        bad = doc | {"model": {"checkpoint": {"job_id": job["id"], "step": 3}}}
        stub.CreateJob(pb.CreateJobRequest(job=to_struct(bad)), timeout=30)
    assert (e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and
            "model.checkpoint.step" in e.value.details())

    ref = pb.CheckpointRef(job_id=job["id"], step=4)
    m1 = stub.RegisterModel(pb.RegisterModelRequest(name="g", from_checkpoint=ref,
                                                    idempotency_key="g-model"), timeout=30)
    m2 = stub.RegisterModel(pb.RegisterModelRequest(name="g", from_checkpoint=ref,
                                                    idempotency_key="g-model"), timeout=30)
    assert m1.id == m2.id and m1.source == "checkpoint"
    assert m1.checkpoint.job_id == job["id"] and m1.checkpoint.step == 4
    assert_same(srv.get("/v1/models/" + m1.id).json(), m1)  # the REST resource, field by field
    with pytest.raises(grpc.RpcError) as e:
        stub.RegisterModel(pb.RegisterModelRequest(name="other", from_checkpoint=ref,
                                                   idempotency_key="g-model"), timeout=30)
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS

    data = jsonl(arith_prompts(3, seed=5))

    def chunks(key, payload):
        yield pb.UploadDatasetRequest(kind="prompts", name="g-ds", data=payload[:10],
                                      idempotency_key=key)
        yield pb.UploadDatasetRequest(data=payload[10:])

    n = count(srv, "/v1/datasets")
    d1 = stub.UploadDataset(chunks("g-ds-key", data), timeout=30)
    d2 = stub.UploadDataset(chunks("g-ds-key", data), timeout=30)
    assert d1.id == d2.id and count(srv, "/v1/datasets") == n + 1
    with pytest.raises(grpc.RpcError) as e:
        stub.UploadDataset(chunks("g-ds-key", data + b'{"prompt": "x", "answer": 1}\n'),
                           timeout=30)
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS

    r1 = stub.Rollout(pb.RolloutRequest(prompts=["Compute 2+2."], model=m1.id, max_tokens=2,
                                        idempotency_key="g-roll"), timeout=30)
    r2 = stub.Rollout(pb.RolloutRequest(prompts=["Compute 2+2."], model=m1.id, max_tokens=2,
                                        idempotency_key="g-roll"), timeout=30)
    assert r1.id == r2.id
    assert srv.wait_rollout(r1.id)["state"] == "succeeded"
    srv.wait_job(a.id, lambda x: x["state"] in ("succeeded", "failed"))


# ---- cursor pagination -------------------------------------------------------------------------

def walk(srv, path, limit, between=None):
    """Every item of a list, page by page with after=next_cursor; between(page_no) runs between
    pages (inserting items there must neither skip nor repeat one)."""
    seen, after, pages = [], None, 0
    while True:
        sep = "&" if "?" in path else "?"
        q = f"{path}{sep}limit={limit}" + (f"&after={after}" if after else "")
        r = srv.get(q)
        assert r.status == 200, r
        page = r.json()
        assert len(page["items"]) <= limit
        seen += page["items"]
        pages += 1
        if page["items"]:
            last = page["items"][-1]
            want = last["id"] if "id" in last else f"{last['step']}.{last['index']}"
            assert page["next_cursor"] == want
        else:
            assert page["next_cursor"] is None
        if not page["has_more"]:
            return seen, pages
        after = page["next_cursor"]
        if between:
            between(pages)


def test_cursor_pagination(srv, trained):
    for i in range(5):
        assert upload(srv, "prompts", jsonl(arith_prompts(2, seed=40 + i)), "pages").status == 201
    before = [d["id"] for d in srv.get("/v1/datasets?limit=1000").json()["items"]]
    added = []

    def insert(_):
        added.append(upload(srv, "prompts", jsonl(arith_prompts(2, seed=60)), "pages").json())

    seen, pages = walk(srv, "/v1/datasets", 2, insert)
    ids = [d["id"] for d in seen]
    assert ids == before, "inserts between pages skipped or repeated an item"
    assert pages == (len(before) + 1) // 2 and len(added) == pages - 1
    # offset applies after the cursor; total counts the whole list
    page = srv.get(f"/v1/datasets?after={ids[0]}&offset=1&limit=2").json()
    assert [d["id"] for d in page["items"]] == ids[2:4]
    assert page["total"] == len(before) + len(added) and page["has_more"] is True
    last = srv.get(f"/v1/datasets?after={ids[-1]}").json()
    assert last["items"] == [] and last["has_more"] is False and last["next_cursor"] is None

    # every list: jobs (also with a state filter), models, samples, deliveries, sessions
    jobs = [j["id"] for j in srv.get("/v1/jobs?limit=1000").json()["items"]]
    assert [j["id"] for j in walk(srv, "/v1/jobs", 1)[0]] == jobs
    done = [j["id"] for j in srv.get("/v1/jobs?state=succeeded&limit=1000").json()["items"]]
    assert [j["id"] for j in walk(srv, "/v1/jobs?state=succeeded", 1)[0]] == done
    models = [m["id"] for m in srv.get("/v1/models?limit=1000").json()["items"]]
    assert [m["id"] for m in walk(srv, "/v1/models", 1)[0]] == models
    job, _ = trained
    samples = srv.get(f"/v1/jobs/{job['id']}/samples?limit=1000").json()["items"]
    assert len(samples) > 3
    assert walk(srv, f"/v1/jobs/{job['id']}/samples", 3)[0] == samples
    for path in ("/v1/webhooks/deliveries", "/v1/tinker/sessions"):
        page = srv.get(path).json()
        assert page["has_more"] is False and "next_cursor" in page

    # a cursor that is not one is a 400 naming after
    for path, bad in (("/v1/datasets", "ds_nope"), ("/v1/jobs", ids[0]),
                      ("/v1/models", "x"), (f"/v1/jobs/{job['id']}/samples", "3"),
                      (f"/v1/jobs/{job['id']}/samples", "-1.0"),
                      ("/v1/webhooks/deliveries", "msg_x"), ("/v1/tinker/sessions", "ses_x")):
        assert_error(srv.get(f"{path}?after={bad}"), 400, "invalid_argument", "after")

    # gRPC: the same fields
    pb = stubs()[0]
    stub = srv.stub()
    got, after = [], ""
    while True:
        page = stub.ListDatasets(pb.ListDatasetsRequest(limit=3, after=after), timeout=30)
        got += [d.id for d in page.items]
        if not page.has_more:
            break
        assert page.next_cursor == page.items[-1].id
        after = page.next_cursor
    assert got == [d["id"] for d in srv.get("/v1/datasets?limit=1000").json()["items"]]
    page = stub.ListSamples(pb.ListSamplesRequest(id=job["id"], limit=2), timeout=30)
    nxt = stub.ListSamples(pb.ListSamplesRequest(id=job["id"], limit=2, after=page.next_cursor),
                           timeout=30)
    assert [(s.step, s.index) for s in nxt.items] == [(s["step"], s["index"]) for s in samples[2:4]]
    page = stub.ListJobs(pb.ListJobsRequest(limit=1), timeout=30)
    assert page.has_more == (page.total > 1) and page.next_cursor == page.items[0].id
    with pytest.raises(grpc.RpcError) as e:
        stub.ListModels(pb.ListModelsRequest(after="mdl_nope"), timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "after" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        stub.ListTinkerSessions(pb.ListTinkerSessionsRequest(after="ses_nope"), timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# ---- webhooks ----------------------------------------------------------------------------------

class Receiver:
    """An independent Standard Webhooks receiver: verifies every request's signature by hand
    (HMAC-SHA256 over "id.timestamp.body", base64, "v1," prefix, as the standardwebhooks library
    does); answers 500 to the first `fail_first` requests, or hangs `hang_s` seconds."""

    def __init__(self, secret_key, fail_first=0, hang_s=0.0):
        import http.server
        import threading
        self.key, self.fail_first, self.hang_s = secret_key, fail_first, hang_s
        self.requests, self.bad = [], []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.check(dict(self.headers), body)
                n = len(outer.requests)
                if outer.hang_s:
                    time.sleep(outer.hang_s)
                code = 500 if n <= outer.fail_first else 204
                try:
                    self.send_response(code)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def check(self, headers, body):
        import base64
        import hashlib
        import hmac
        import json as js
        h = {k.lower(): v for k, v in headers.items()}
        msg_id, ts, sigs = h["webhook-id"], h["webhook-timestamp"], h["webhook-signature"]
        signed = f"{msg_id}.{ts}.".encode() + body
        expected = base64.b64encode(hmac.new(self.key, signed, hashlib.sha256).digest()).decode()
        ok = any(s.split(",", 1) == ["v1", expected] for s in sigs.split(" "))
        if not ok or abs(time.time() - int(ts)) > 300:
            self.bad.append((headers, body))
        self.requests.append((msg_id, js.loads(body)))

    def close(self):
        self.server.shutdown()


def webhook_server(tmp, url, key):
    import base64
    path = os.path.join(tmp, "whsec")
    with open(path, "w") as f:
        f.write("whsec_" + base64.b64encode(key).decode() + "\n")
    return Chordd(extra_args=["--webhook-url", url, "--webhook-secret-file", path])


def deliveries(srv):
    return srv.get("/v1/webhooks/deliveries?limit=1000").json()["items"]


def wait_deliveries(srv, pred, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        items = deliveries(srv)
        if pred(items):
            return items
        time.sleep(0.1)
    raise AssertionError(f"deliveries: {deliveries(srv)}\n{srv.read_log()[-3000:]}")


def test_webhooks_signed_retried_logged(tmp_path):
    key = os.urandom(24)
    rx = Receiver(key, fail_first=2)
    srv = webhook_server(str(tmp_path), rx.url, key)
    try:
        srv.start()
        ds = upload(srv, "prompts", jsonl(arith_prompts(8)), "p").json()
        ok = srv.post("/v1/jobs", tiny_job(ds["id"], steps=2, checkpoint_every=2)).json()
        os.makedirs(os.path.join(srv.models_root, "noweights"))
        with open(os.path.join(srv.models_root, "noweights", "config.json"), "w") as f:
            f.write(json.dumps(TINY_CONFIG))
        bad_doc = tiny_job(ds["id"], steps=2)
        bad_doc["model"] = {"path": "noweights"}
        bad = srv.post("/v1/jobs", bad_doc).json()
        queued = srv.post("/v1/jobs", tiny_job(ds["id"], steps=50)).json()
        srv.post(f"/v1/jobs/{queued['id']}/cancel")
        for j in (ok, bad, queued):
            srv.wait_job(j["id"], lambda x: x["state"] in ("succeeded", "failed", "cancelled"))
        want = {("checkpoint.created", None), ("job.succeeded", ok["id"]),
                ("job.failed", bad["id"]), ("job.cancelled", queued["id"])}
        items = wait_deliveries(srv, lambda it: len(it) >= 4 and
                                all(d["state"] == "delivered" for d in it))
        got = {(d["event"], None if d["event"] == "checkpoint.created" else d["subject"])
               for d in items}
        assert got == want, items
        # the first deliveries met the two 500s: retried, and the log says so
        assert sum(d["attempts"] for d in items) == len(items) + 2, items
        assert all(d["last_status"] == 204 for d in items), items
        ck = next(d for d in items if d["event"] == "checkpoint.created")
        assert ck["payload"]["data"]["job_id"] == ok["id"] and ck["payload"]["data"]["step"] == 2
        failed = next(d for d in items if d["event"] == "job.failed")
        assert failed["payload"]["data"]["error"], failed
        # every request the receiver saw was signed right; each event arrived (once 2xx)
        assert not rx.bad, rx.bad
        ids = [i for i, _ in rx.requests]
        assert set(ids) == {d["id"] for d in items}
        assert len(ids) == len(items) + 2  # the two retried ones, same webhook-id
        for msg_id, body in rx.requests:
            assert body["type"] in {e for e, _ in want} and "timestamp" in body, body
        # a restart sends nothing again
        assert srv.stop() == 0
        srv.start()
        time.sleep(1.5)
        assert len(rx.requests) == len(ids)
        assert len(deliveries(srv)) == len(items)
    finally:
        srv.cleanup()
        rx.close()


def test_webhook_receiver_that_hangs_does_not_slow_training(tmp_path):
    key = b"k" * 32
    rx = Receiver(key, hang_s=8)
    srv = webhook_server(str(tmp_path), rx.url, key)
    try:
        srv.start()
        ds = upload(srv, "prompts", jsonl(arith_prompts(8)), "p").json()
        # checkpoints every step: an event per step while the receiver hangs
        job = srv.post("/v1/jobs", tiny_job(ds["id"], steps=6, checkpoint_every=1)).json()
        t0 = time.time()
        done = srv.wait_job(job["id"], lambda x: x["state"] in ("succeeded", "failed"))
        took = time.time() - t0
        assert done["state"] == "succeeded", done
        # the first delivery is still hanging (5 s timeout), yet the 6 steps are done
        assert took < 4.5, f"training waited for the receiver: {took:.1f} s"
        items = wait_deliveries(srv, lambda it: any(d["attempts"] >= 1 and d["last_error"]
                                                    for d in it), timeout=20)
        timed_out = [d for d in items if d["last_error"]]
        assert "timed out" in timed_out[0]["last_error"].lower(), timed_out
        assert timed_out[0]["state"] == "pending" and timed_out[0]["next_attempt_at"], timed_out
        t1 = time.time()
        assert srv.stop() == 0
        assert time.time() - t1 < 15, "stopping waited too long for the receiver"
    finally:
        srv.cleanup()
        rx.close()


def test_webhooks_outlive_sigkill(tmp_path):
    """Events not delivered when chordd is SIGKILLed go out after the restart, once each."""
    import signal
    import socket
    key = os.urandom(16)
    dead = socket.socket()  # a port nobody answers on: every attempt is refused
    dead.bind(("127.0.0.1", 0))
    dead_url = f"http://127.0.0.1:{dead.getsockname()[1]}/hook"
    dead.close()
    srv = webhook_server(str(tmp_path), dead_url, key)
    rx = Receiver(key)
    try:
        srv.start()
        ds = upload(srv, "prompts", jsonl(arith_prompts(8)), "p").json()
        job = srv.post("/v1/jobs", tiny_job(ds["id"], steps=2, checkpoint_every=1)).json()
        srv.wait_job(job["id"], lambda x: x["state"] == "succeeded")
        items = wait_deliveries(srv, lambda it: len(it) == 3 and all(d["attempts"] >= 1
                                                                     for d in it))
        assert all(d["state"] == "pending" and "connect" in d["last_error"].lower()
                   for d in items), [(d["state"], d["last_error"]) for d in items]
        srv.stop(sig=signal.SIGKILL)
        i = srv.extra_args.index("--webhook-url")
        srv.extra_args[i + 1] = rx.url  # the receiver is back (at another address)
        srv.start()
        items = wait_deliveries(srv, lambda it: all(d["state"] == "delivered" for d in it))
        assert len(items) == 3
        assert sorted(i for i, _ in rx.requests) == sorted(d["id"] for d in items)
        assert not rx.bad
    finally:
        srv.cleanup()
        rx.close()


# ---- model aliases and eval gates ---------------------------------------------------------------

def wait_promotion(srv, job_id, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = srv.get(f"/v1/jobs/{job_id}").json()
        if job["promotion"] and job["promotion"]["state"] != "pending":
            return job
        time.sleep(0.1)
    raise AssertionError(f"promotion of {job_id} not decided\n{srv.read_log()[-3000:]}")


def gated_job(prompts, min_accuracy, **over):
    doc = tiny_job(prompts, **({"steps": 2, "checkpoint_every": 2,
                                "eval": {"every": 2, "k": 1, "max_new_tokens": 4,
                                         "temperature": 0}} | over))
    doc["data"]["eval"] = "gate-eval"
    doc["model"] = {"alias": "prod"}
    doc["promote"] = {"alias": "prod", "min_eval_accuracy": min_accuracy}
    return doc


def test_aliases_and_eval_gates(tmp_path):
    key = os.urandom(24)
    rx = Receiver(key)
    srv = webhook_server(str(tmp_path), rx.url, key)
    try:
        srv.start()
        ds = upload(srv, "prompts", jsonl(arith_prompts(8)), "gate-prompts").json()
        assert upload(srv, "eval", jsonl(arith_prompts(4, seed=9)), "gate-eval").status == 201
        m0 = srv.post("/v1/models", {"name": "base", "init": {"config": TINY_CONFIG}}).json()

        # aliases: bad input names the field; PUT creates or moves, GET, list
        assert_error(srv.request("PUT", "/v1/aliases/prod", {"model": "mdl_" + "0" * 24}),
                     400, "invalid_argument", "model")
        assert_error(srv.request("PUT", "/v1/aliases/prod", {"model": m0["id"], "x": 1}),
                     400, "invalid_argument", "x")
        assert_error(srv.request("PUT", "/v1/aliases/-x", {"model": m0["id"]}),
                     400, "invalid_argument", "name")
        assert srv.get("/v1/aliases/prod").status == 404
        r = srv.request("PUT", "/v1/aliases/prod", {"model": m0["id"]})
        assert r.status == 200 and r.json()["model_id"] == m0["id"], r
        assert srv.get("/v1/aliases/prod").json()["model_id"] == m0["id"]
        page = srv.get("/v1/aliases").json()
        assert [a["name"] for a in page["items"]] == ["prod"] and page["next_cursor"] == "prod"

        # refused at submission, naming the field
        no_eval = tiny_job(ds["id"], steps=2)
        no_eval["promote"] = {"alias": "prod", "min_eval_accuracy": 0.5}
        assert_error(srv.post("/v1/jobs", no_eval), 400, "invalid_argument", "promote", "eval")
        for promote, field in (({"alias": "prod"}, "promote.min_eval_accuracy"),
                               ({"alias": "prod", "min_eval_accuracy": 2}, "promote.min_eval_accuracy"),
                               ({"min_eval_accuracy": 0.5}, "promote.alias"),
                               ({"alias": "prod", "min_eval_accuracy": 0.5, "y": 1}, "y")):
            assert_error(srv.post("/v1/jobs", gated_job(ds["id"], 0) | {"promote": promote}),
                         400, "invalid_argument", field)
        unknown = gated_job(ds["id"], 0)
        unknown["model"] = {"alias": "nope"}
        assert_error(srv.post("/v1/jobs", unknown), 400, "invalid_argument", "model.alias")

        # a job from the alias whose gate passes: its final checkpoint becomes the alias's model
        r = srv.post("/v1/jobs", gated_job(ds["id"], 0.0))
        assert r.status == 201, r
        j1 = r.json()
        assert j1["model_alias"] == {"name": "prod", "model_id": m0["id"]}
        assert j1["promote"] == {"alias": "prod", "min_eval_accuracy": 0.0}
        assert j1["promotion"]["state"] == "pending" and j1["promotion"]["promoted"] is False
        j1 = wait_promotion(srv, j1["id"])
        assert j1["state"] == "succeeded", j1
        p1 = j1["promotion"]
        assert p1["promoted"] is True and p1["state"] == "promoted" and p1["reason"] is None, p1
        assert p1["eval_step"] == 2 and 0.0 <= p1["eval_accuracy"] <= 1.0, p1
        m1 = srv.get(f"/v1/models/{p1['model_id']}").json()
        assert m1["source"] == "checkpoint" and m1["checkpoint"]["job_id"] == j1["id"]
        assert m1["checkpoint"]["step"] == 2
        assert srv.get("/v1/aliases/prod").json()["model_id"] == m1["id"]

        # the next run starts from it; a gate it cannot pass leaves the alias
        r = srv.post("/v1/jobs", gated_job(ds["id"], 1.0, seed=8))
        assert r.status == 201, r
        j2 = r.json()
        assert j2["model_alias"]["model_id"] == m1["id"]
        assert j2["config"]["model"]["path"] == m1["path"]
        j2 = wait_promotion(srv, j2["id"])
        p2 = j2["promotion"]
        assert p2["eval_accuracy"] < 1.0, p2  # a 2-step tiny model is never perfect
        assert p2["promoted"] is False and p2["state"] == "not_promoted", p2
        assert "below min_eval_accuracy" in p2["reason"] and p2["model_id"] is None, p2
        assert srv.get("/v1/aliases/prod").json()["model_id"] == m1["id"]

        # a job that does not succeed is not promoted either
        r = srv.post("/v1/jobs", gated_job(ds["id"], 0.0, steps=500))
        j3 = r.json()
        srv.post(f"/v1/jobs/{j3['id']}/cancel")
        j3 = wait_promotion(srv, j3["id"])
        assert j3["promotion"]["promoted"] is False and "cancelled" in j3["promotion"]["reason"]
        assert srv.get("/v1/aliases/prod").json()["model_id"] == m1["id"]

        # rollouts take the alias too, and record what it named
        r = srv.post("/v1/rollouts", {"alias": "prod", "prompts": ["Compute 2+2."],
                                      "max_tokens": 2, "temperature": 0})
        assert r.status == 202, r
        assert r.json()["request"]["alias"] == {"name": "prod", "model_id": m1["id"]}
        assert srv.wait_rollout(r.json()["id"])["state"] == "succeeded"
        assert_error(srv.post("/v1/rollouts", {"alias": "prod", "model": m0["id"],
                                               "prompts": ["x"]}), 400, "invalid_argument", "model")

        # webhooks: eval.completed per job that evaluated, alias.moved for the PUT and the
        # promotion, checked by the independent receiver
        r = srv.request("DELETE", "/v1/aliases/prod")
        assert r.status == 200 and r.json()["model_id"] == m1["id"]
        assert srv.get("/v1/aliases/prod").status == 404
        items = wait_deliveries(srv, lambda it: sum(d["event"] == "alias.moved" for d in it) == 3
                                and all(d["state"] == "delivered" for d in it))
        got = [b for _, b in rx.requests]
        moves = [b["data"] for b in got if b["type"] == "alias.moved"]
        assert moves == [
            {"alias": "prod", "model_id": m0["id"], "previous_model_id": None, "job_id": None},
            {"alias": "prod", "model_id": m1["id"], "previous_model_id": m0["id"],
             "job_id": j1["id"]},
            {"alias": "prod", "model_id": None, "previous_model_id": m1["id"], "job_id": None}]
        evals = {b["data"]["job_id"]: b["data"] for b in got if b["type"] == "eval.completed"}
        # (the cancelled job too, when it evaluated before its cancel landed)
        assert {j1["id"], j2["id"]} <= set(evals) <= {j1["id"], j2["id"], j3["id"]}, got
        assert evals[j1["id"]]["step"] == 2
        assert evals[j1["id"]]["metrics"]["accuracy"] == p1["eval_accuracy"]
        assert evals[j2["id"]]["metrics"]["accuracy"] == p2["eval_accuracy"]
        assert not rx.bad, rx.bad
    finally:
        rx.close()
        srv.stop()
        srv.cleanup()


def test_grpc_aliases(srv, trained):
    pb = stubs()[0]
    stub = srv.stub()
    job, _ = trained
    model = srv.post("/v1/models", {"from_checkpoint": {"job_id": job["id"]}}).json()
    a = stub.SetAlias(pb.SetAliasRequest(name="g-prod", model=model["id"]), timeout=30)
    assert_same(srv.get("/v1/aliases/g-prod").json(), a)
    page = stub.ListAliases(pb.ListAliasesRequest(limit=1), timeout=30)
    assert page.items[0].name == page.next_cursor
    assert_same(srv.get("/v1/aliases?limit=1").json(), page)
    assert stub.GetAlias(pb.GetAliasRequest(name="g-prod"), timeout=30).model_id == model["id"]
    with pytest.raises(grpc.RpcError) as e:
        stub.SetAlias(pb.SetAliasRequest(name="g-prod", model="mdl_nope"), timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "model" in e.value.details()
    # a job's pipeline fields over gRPC are REST's, field by field
    doc = tiny_job("nightly", steps=1)
    doc["model"] = {"alias": "g-prod"}
    j = stub.CreateJob(pb.CreateJobRequest(job=to_struct(doc)), timeout=30)
    assert j.model_alias.name == "g-prod" and j.model_alias.model_id == model["id"]
    assert_same(srv.get(f"/v1/jobs/{j.id}").json() | {"state": j.state, "started_at": None,
                                                      "device": None, "current_step": -1}, j)
    r = stub.Rollout(pb.RolloutRequest(prompts=["Compute 2+2."], alias="g-prod", max_tokens=2),
                     timeout=30)
    assert srv.wait_rollout(r.id)["request"]["alias"]["model_id"] == model["id"]
    assert stub.DeleteAlias(pb.DeleteAliasRequest(name="g-prod"), timeout=30).name == "g-prod"
    with pytest.raises(grpc.RpcError) as e:
        stub.GetAlias(pb.GetAliasRequest(name="g-prod"), timeout=30)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    srv.wait_job(j.id, lambda x: x["state"] in ("succeeded", "failed"))


# ---- schedules: a week of a pipeline in fast time -----------------------------------------------

def schedule(srv, sid):
    return srv.get(f"/v1/schedules/{sid}").json()


def wait_fires(srv, sid, pred, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        fires = schedule(srv, sid)["recent_fires"]
        if pred(fires):
            return fires
        time.sleep(0.1)
    raise AssertionError(f"fires of {sid}: {schedule(srv, sid)}\n{srv.read_log()[-3000:]}")


def pause(srv, sid, paused=True):
    r = srv.post(f"/v1/schedules/{sid}/{'pause' if paused else 'resume'}")
    assert r.status == 200 and r.json()["paused"] is paused, r
    return r.json()


def settle(srv, sid):
    """Pauses the schedule and waits until every job it made has its promotion decided."""
    pause(srv, sid)
    jobs = [f["job_id"] for f in schedule(srv, sid)["recent_fires"] if f["job_id"]]
    return {j: wait_promotion(srv, j) for j in jobs}


def week_template(min_accuracy):
    doc = gated_job("wk-prompts", min_accuracy)
    del doc["name"]  # the job takes the schedule's name
    doc["data"]["eval"] = "wk-eval"
    doc["model"] = {"alias": "wk-prod"}
    doc["promote"] = {"alias": "wk-prod", "min_eval_accuracy": min_accuracy}
    return doc


def killed_fire(srv, sid, where):
    """Restarts chordd with the test hook that SIGKILLs it `where` in its next fire that makes a
    job, resumes the schedule, and returns the fire time it was killed in."""
    pause(srv, sid)
    assert srv.stop() == 0
    os.environ["CHORD_TEST_KILL_IN_FIRE"] = where
    try:
        srv.start()
        at = pause(srv, sid, False)["next_fire_at"]
        srv.proc.wait(30)
        assert srv.proc.returncode == -9, srv.read_log()[-2000:]
    finally:
        del os.environ["CHORD_TEST_KILL_IN_FIRE"]
    srv.stop()
    srv.start()
    return at


def test_week_of_a_pipeline(tmp_path):
    key = os.urandom(24)
    rx = Receiver(key)
    srv = webhook_server(str(tmp_path), rx.url, key)
    try:
        srv.start()
        assert upload(srv, "eval", jsonl(arith_prompts(4, seed=9)), "wk-eval").status == 201
        day1 = upload(srv, "prompts", jsonl(arith_prompts(8, seed=1)), "wk-prompts").json()
        m0 = srv.post("/v1/models", {"name": "base", "init": {"config": TINY_CONFIG}}).json()
        assert srv.request("PUT", "/v1/aliases/wk-prod", {"model": m0["id"]}).status == 200

        body = {"name": "nightly", "cron": "* * * * * *", "template": week_template(0.0),
                "missed": "run_once"}
        for bad, field in (({"cron": "61 * * * *"}, "cron: minute"), ({"cron": "* * *"}, "cron"),
                           ({"missed": "sometimes"}, "missed"), ({"paused": 1}, "paused"),
                           ({"template": week_template(0.0) | {"stepz": 1}}, "template"),
                           ({"template": week_template(0.0) | {"steps": 0}}, "template: steps"),
                           ({"x": 1}, "x")):
            assert_error(srv.post("/v1/schedules", body | bad), 400, "invalid_argument", field)
        no_eval = week_template(0.0)
        no_eval["eval"] = {"every": 0}
        assert_error(srv.post("/v1/schedules", body | {"template": no_eval}), 400,
                     "invalid_argument", "template: promote")

        # a retried POST with the same key creates nothing
        r1 = srv.post("/v1/schedules", body, headers=keyed("wk-sched"))
        r2 = srv.post("/v1/schedules", body, headers=keyed("wk-sched"))
        assert r1.status == r2.status == 201 and r1.json()["id"] == r2.json()["id"], (r1, r2)
        assert_error(srv.post("/v1/schedules", body | {"name": "other"}, headers=keyed("wk-sched")),
                     409, "idempotency_key_reused", "wk-sched")
        assert srv.get("/v1/schedules").json()["total"] == 1
        sid = r1.json()["id"]

        # night 1: the job from the alias, on the newest upload; its gate passes
        wait_fires(srv, sid, lambda f: any(x["job_id"] for x in f))
        decided = settle(srv, sid)
        first = [f for f in schedule(srv, sid)["recent_fires"] if f["job_id"]][-1]
        j1 = decided[first["job_id"]]
        assert j1["name"] == "nightly" and j1["state"] == "succeeded", j1
        assert j1["model_alias"] == {"name": "wk-prod", "model_id": m0["id"]}
        assert j1["config"]["data"]["prompts"] == day1["id"]
        assert j1["promotion"]["promoted"] is True, j1
        prod = srv.get("/v1/aliases/wk-prod").json()["model_id"]
        assert prod in {j["promotion"]["model_id"] for j in decided.values()}

        # night 2: new data arrives; the next run starts from the promoted model, on it
        day2 = upload(srv, "prompts", jsonl(arith_prompts(8, seed=2)), "wk-prompts").json()
        seen = {f["fire_time"] for f in schedule(srv, sid)["recent_fires"]}
        pause(srv, sid, False)
        fires = wait_fires(srv, sid, lambda f: any(x["job_id"] and x["fire_time"] not in seen
                                                   for x in f))
        nxt = [f for f in fires if f["job_id"] and f["fire_time"] not in seen][-1]
        j2 = srv.get(f"/v1/jobs/{nxt['job_id']}").json()
        assert j2["model_alias"]["model_id"] == prod, (j2, prod)
        assert j2["config"]["data"]["prompts"] == day2["id"]
        settle(srv, sid)

        # a strict gate fails and leaves the alias
        prod = srv.get("/v1/aliases/wk-prod").json()["model_id"]
        strict = srv.post("/v1/schedules", {"name": "strict", "cron": "* * * * * *",
                                            "template": week_template(1.0)}).json()
        wait_fires(srv, strict["id"], lambda f: any(x["job_id"] for x in f))
        for j in settle(srv, strict["id"]).values():
            assert j["promotion"]["promoted"] is False and "below" in j["promotion"]["reason"], j
        assert srv.get("/v1/aliases/wk-prod").json()["model_id"] == prod

        # the pipeline heard it all, signed: the jobs, their evals, the alias's moves
        wait_deliveries(srv, lambda it: all(d["state"] == "delivered" for d in it) and
                        any(d["event"] == "alias.moved" and
                            d["payload"]["data"]["job_id"] == j1["id"] for d in it))
        got = [(b["type"], b["data"].get("job_id")) for _, b in rx.requests]
        assert ("job.succeeded", j1["id"]) in got and ("eval.completed", j1["id"]) in got
        assert ("alias.moved", j1["id"]) in got
        assert not rx.bad, rx.bad

        # SIGKILL in the middle of a tick: the fire is done once after the restart, never lost
        # (killed before its commit) nor doubled (killed after it)
        for where in ("before_commit", "after_commit"):
            at = killed_fire(srv, sid, where)
            fires = wait_fires(srv, sid, lambda f: any(x["fire_time"] == at for x in f))
            mine = [f for f in fires if f["fire_time"] == at]
            assert len(mine) == 1 and mine[0]["job_id"], (where, at, fires)
            assert srv.get(f"/v1/jobs/{mine[0]['job_id']}").status == 200
            assert mine[0]["missed"] == 0, mine  # it was due while chordd ran
            settle(srv, sid)
        times = [f["fire_time"] for f in schedule(srv, sid)["recent_fires"]]
        assert len(times) == len(set(times))
        jobs = [f["job_id"] for f in schedule(srv, sid)["recent_fires"] if f["job_id"]]
        assert len(jobs) == len(set(jobs))

        # fire times missed while chordd was down: run_once runs one job, skip records the skip
        skipper = srv.post("/v1/schedules", {"name": "skipper", "cron": "* * * * * *",
                                             "template": week_template(1.0),
                                             "missed": "skip"}).json()
        pause(srv, skipper["id"])
        seen = {f["fire_time"] for f in schedule(srv, sid)["recent_fires"]}
        pause(srv, sid, False)
        pause(srv, skipper["id"], False)
        assert srv.stop() == 0
        time.sleep(5)
        srv.start()
        caught = wait_fires(srv, sid, lambda f: any(x["missed"] for x in f
                                                    if x["fire_time"] not in seen))
        caught = [f for f in caught if f["missed"] and f["fire_time"] not in seen]
        assert len(caught) == 1 and caught[0]["job_id"] and caught[0]["missed"] >= 2, caught
        skipped = wait_fires(srv, skipper["id"], lambda f: any(x["missed"] for x in f))
        skipped = [f for f in skipped if f["missed"]]
        assert len(skipped) == 1 and skipped[0]["job_id"] is None, skipped
        assert "skipped" in skipped[0]["error"] and skipped[0]["missed"] >= 2, skipped
        pause(srv, skipper["id"])
        settle(srv, sid)

        # deleting a schedule stops it; its jobs stay
        r = srv.request("DELETE", f"/v1/schedules/{skipper['id']}")
        assert r.status == 200 and srv.get(f"/v1/schedules/{skipper['id']}").status == 404
        page = srv.get("/v1/schedules?limit=1").json()
        assert page["has_more"] is True and page["items"][0]["id"] == strict["id"]
    finally:
        rx.close()
        srv.stop()
        srv.cleanup()


# ---- pause and resume ---------------------------------------------------------------------------

def weights(srv, job_id, step):
    cks = [c for c in srv.get(f"/v1/jobs/{job_id}/checkpoints").json()["items"] if c["step"] == step]
    assert cks, (job_id, step)
    names = sorted(f["path"] for f in cks[0]["files"] if f["path"].endswith(".safetensors"))
    assert names, cks
    return {n: srv.get(f"/v1/jobs/{job_id}/checkpoints/{step}/files/{n}").body for n in names}


def test_pause_resume_is_bit_identical_and_keeps_its_place(srv, trained):
    steps = 200
    # slow enough a step (a wider model, longer responses) that the pause lands before the end
    # on any build: with the tiny model's ~1 ms steps the whole job could end inside one poll
    slow = {"model": {"init": {"config": dict(TINY_CONFIG, hidden_size=128,
                                              intermediate_size=256, num_hidden_layers=2,
                                              num_attention_heads=4, num_key_value_heads=2),
                               "seed": 3}},
            "sampling": {"max_new_tokens": 24}}
    doc = tiny_job("nightly", steps=steps, checkpoint_every=100, seed=11, name="pausable", **slow)
    a = srv.post("/v1/jobs", doc).json()
    a = srv.wait_job(a["id"], lambda j: j["state"] in ("succeeded", "failed"))
    assert a["state"] == "succeeded", a

    b = srv.post("/v1/jobs", doc).json()
    srv.wait_job(b["id"], lambda j: j["state"] == "running" and j["current_step"] >= 2)
    r = srv.post(f"/v1/jobs/{b['id']}/pause")
    assert r.status == 200 and r.json()["pause_requested"] is True, r
    b = srv.wait_job(b["id"], lambda j: j["state"] == "paused")
    assert b["pause_requested"] is True and b["current_step"] < steps, b
    paused_at = b["current_step"]
    assert [c["step"] for c in srv.get(f"/v1/jobs/{b['id']}/checkpoints").json()["items"]][-1] \
        == paused_at  # checkpointed where it stopped
    assert b["id"] in [j["id"] for j in srv.get("/v1/jobs?state=paused").json()["items"]]
    assert b["id"] not in [j["id"] for j in srv.get("/v1/jobs?state=queued").json()["items"]]
    assert_error(srv.post("/v1/jobs/job_000000000000000000000000/pause"), 404, "not_found")
    assert_error(srv.post(f"/v1/jobs/{a['id']}/pause"), 409, "conflict", "succeeded")

    # the device is free: another job runs meanwhile; one queued behind b waits for b
    c = srv.post("/v1/jobs", tiny_job("nightly", steps=100000, name="meanwhile")).json()
    srv.wait_job(c["id"], lambda j: j["state"] == "running")
    d = srv.post("/v1/jobs", tiny_job("nightly", steps=1, name="behind")).json()
    r = srv.post(f"/v1/jobs/{b['id']}/resume")
    assert r.status == 200 and r.json()["state"] == "queued", r
    assert r.json()["pause_requested"] is False
    srv.post(f"/v1/jobs/{c['id']}/cancel")  # the worker is free: b, then d
    b = srv.wait_job(b["id"], lambda j: j["state"] in ("succeeded", "failed"))
    d = srv.wait_job(d["id"], lambda j: j["state"] in ("succeeded", "failed"))
    assert b["state"] == "succeeded" and d["started_at"] >= b["finished_at"], (b, d)

    # bit-identical to the run that was never paused
    assert weights(srv, a["id"], steps) == weights(srv, b["id"], steps)
    ma = srv.get(f"/v1/jobs/{a['id']}/metrics").json()["steps"]
    mb = srv.get(f"/v1/jobs/{b['id']}/metrics").json()["steps"]
    assert [s["metrics"]["loss"] for s in ma] == [s["metrics"]["loss"] for s in mb]

    # over gRPC too
    pb = stubs()[0]
    stub = srv.stub()
    e = srv.post("/v1/jobs", tiny_job("nightly", steps=200, name="grpc-pause", **slow)).json()
    srv.wait_job(e["id"], lambda j: j["state"] == "running" and j["current_step"] >= 1)
    assert stub.PauseJob(pb.PauseJobRequest(id=e["id"]), timeout=30).pause_requested
    srv.wait_job(e["id"], lambda j: j["state"] == "paused")
    assert stub.ResumeJob(pb.ResumeJobRequest(id=e["id"]), timeout=30).state in ("queued",
                                                                              "running")
    srv.post(f"/v1/jobs/{e['id']}/cancel")
    srv.wait_job(e["id"], lambda j: j["state"] == "cancelled")


def test_grpc_schedules(srv, trained):
    pb = stubs()[0]
    stub = srv.stub()
    tmpl = tiny_job("nightly", steps=1)
    req = pb.CreateScheduleRequest(name="g-sched", cron="0 3 * * *", template=to_struct(tmpl),
                                   missed="run_once", idempotency_key="g-sched")
    a = stub.CreateSchedule(req, timeout=30)
    assert stub.CreateSchedule(req, timeout=30).id == a.id  # the key: created once
    assert a.missed == "run_once" and not a.paused and a.next_fire_at.endswith("03:00:00.000Z")
    assert_same(srv.get(f"/v1/schedules/{a.id}").json(), stub.GetSchedule(
        pb.GetScheduleRequest(id=a.id), timeout=30))
    page = stub.ListSchedules(pb.ListSchedulesRequest(limit=1), timeout=30)
    assert page.items[0].id == page.next_cursor
    assert_same(srv.get("/v1/schedules?limit=1").json(), page)
    p = stub.PauseSchedule(pb.PauseScheduleRequest(id=a.id), timeout=30)
    assert p.paused and p.next_fire_at == ""
    assert not stub.ResumeSchedule(pb.ResumeScheduleRequest(id=a.id), timeout=30).paused
    with pytest.raises(grpc.RpcError) as e:
        stub.CreateSchedule(pb.CreateScheduleRequest(name="x", cron="* * *",
                                                     template=to_struct(tmpl)), timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "cron" in e.value.details()
    assert stub.DeleteSchedule(pb.DeleteScheduleRequest(id=a.id), timeout=30).id == a.id
    with pytest.raises(grpc.RpcError) as e:
        stub.GetSchedule(pb.GetScheduleRequest(id=a.id), timeout=30)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
