"""limits_test.py — chordd's limits (docs/operations.md, "Limits"), each set low on a real chordd
(REST + gRPC): the refusal — 413 / 429 over REST, RESOURCE_EXHAUSTED over gRPC — with a message
naming the limit and its value, then the server still serving (and serving the same client
again once the limit no longer holds).

Run: CHORDD=build/chordd python -m pytest tests/integration/limits_test.py"""
import os
import socket
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chordd_harness import TINY_CONFIG, arith_prompts, jsonl, tiny_job
from grpc_harness import GrpcChordd, stubs

pb, pbg = stubs()


def serving(srv):
    """The server answers over both transports."""
    assert srv.alive(), srv.read_log()[-2000:]
    assert srv.get("/healthz").status == 200
    h = health_pb2_grpc.HealthStub(srv.channel())
    assert h.Check(health_pb2.HealthCheckRequest(), timeout=10).status == \
        health_pb2.HealthCheckResponse.SERVING


def grpc_error(fn, *a, **kw):
    with pytest.raises(grpc.RpcError) as e:
        fn(*a, **kw)
    return e.value.code(), e.value.details()


@pytest.fixture
def server(request):
    started = []

    def start(*args):
        s = GrpcChordd(extra_args=list(args)).start()
        started.append(s)
        return s
    yield start
    for s in started:
        rc = s.stop()
        s.cleanup()
        assert rc == 0, "chordd did not exit cleanly"


def test_jsonl_line_length(server):
    srv = server("--max-line-kb", "1")
    long_line = b'{"prompt": "' + b"x" * 2000 + b'", "answer": 1}\n'
    r = srv.upload("prompts", jsonl(arith_prompts(3)) + long_line)
    assert r.status == 413, r
    msg = r.json()["error"]["message"]
    assert "line 4" in msg and "1024 bytes" in msg and "--max-line-kb" in msg, msg
    # over gRPC, cut inside the line
    stub = srv.stub()
    data = long_line + jsonl(arith_prompts(1))
    chunks = [pb.UploadDatasetRequest(kind="prompts", data=data[:700])] + \
        [pb.UploadDatasetRequest(data=data[i:i + 700]) for i in range(700, len(data), 700)]
    code, details = grpc_error(stub.UploadDataset, iter(chunks), timeout=10)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "line 1" in details and \
        "--max-line-kb" in details, details
    assert srv.get("/v1/datasets").json()["total"] == 0  # nothing stored
    serving(srv)
    assert srv.upload("prompts", jsonl(arith_prompts(3))).status == 201


def test_rollout_tokens(server):
    srv = server("--max-rollout-tokens", "100")
    mdl = srv.post("/v1/models", {"name": "m", "init": {"config": TINY_CONFIG}}).json()["id"]
    req = {"prompts": ["Compute 1+1.", "Compute 2+2."], "model": mdl, "n": 4, "max_tokens": 16}
    r = srv.post("/v1/rollouts", req)
    assert r.status == 413, r
    msg = r.json()["error"]["message"]
    assert "2 prompts x n 4 x max_tokens 16 = 128 tokens" in msg and "limit of 100" in msg and \
        "--max-rollout-tokens" in msg, msg
    code, details = grpc_error(srv.stub().Rollout, pb.RolloutRequest(
        prompts=req["prompts"], model=mdl, n=4, max_tokens=16), timeout=10)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-rollout-tokens" in details
    serving(srv)
    assert srv.post("/v1/rollouts", dict(req, n=3)).status == 202  # 96 tokens


def test_queued_jobs(server):
    srv = server("--max-queued-jobs", "2")
    ds = srv.upload("prompts", jsonl(arith_prompts(8))).json()["id"]
    doc = tiny_job(ds, steps=100000)
    ids, refused = [], None
    for _ in range(5):  # the first starts running at once (or soon): at most 2 wait
        r = srv.post("/v1/jobs", doc)
        if r.status == 429:
            refused = r
            break
        assert r.status == 201, r
        ids.append(r.json()["id"])
    assert refused is not None, "no job was refused"
    msg = refused.json()["error"]
    assert msg["code"] == "too_many_requests"
    assert "2 jobs are queued" in msg["message"] and "--max-queued-jobs 2" in msg["message"], msg
    assert len(srv.get("/v1/jobs?state=queued").json()["items"]) <= 2
    for _ in range(4):  # the same over gRPC (the first job may have started meanwhile)
        try:
            ids.append(srv.stub().CreateJob(pb.CreateJobRequest(job=_struct(doc)), timeout=10).id)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e
            assert "--max-queued-jobs 2" in e.details(), e.details()
            break
    else:
        pytest.fail("no job was refused over gRPC")
    serving(srv)
    for jid in ids:  # once the queue empties, jobs are taken again
        srv.post(f"/v1/jobs/{jid}/cancel")
    r = srv.post("/v1/jobs", dict(doc, steps=1))
    assert r.status == 201, r
    srv.post(f"/v1/jobs/{r.json()['id']}/cancel")


def _struct(doc):
    from google.protobuf import struct_pb2
    s = struct_pb2.Struct()
    s.update(doc)
    return s


def test_pending_rollouts(server):
    srv = server("--max-pending-rollouts", "1")
    ds = srv.upload("prompts", jsonl(arith_prompts(8))).json()["id"]
    mdl = srv.post("/v1/models", {"name": "m", "init": {"config": TINY_CONFIG}}).json()["id"]
    # a training job keeps the worker: rollouts wait for the end of its current step
    job = srv.post("/v1/jobs", tiny_job(ds, steps=100000)).json()["id"]
    srv.wait_job(job, lambda j: j["state"] == "running")
    req = {"prompts": ["Compute 1+1."], "model": mdl, "max_tokens": 4}
    refused = None
    for _ in range(50):
        r = srv.post("/v1/rollouts", req)
        if r.status == 429:
            refused = r
            break
        assert r.status == 202, r
    assert refused is not None, "no rollout was refused"
    msg = refused.json()["error"]["message"]
    assert "rollout requests are pending" in msg and "--max-pending-rollouts 1" in msg, msg
    serving(srv)
    srv.post(f"/v1/jobs/{job}/cancel")
    srv.wait_job(job, lambda j: j["state"] == "cancelled")
    deadline = time.time() + 30  # the pending one runs once the worker is free; then room again
    while time.time() < deadline:
        r = srv.post("/v1/rollouts", req)
        if r.status == 202:
            break
        assert r.status == 429, r
        time.sleep(0.1)
    assert r.status == 202, r


def test_http_connections(server):
    srv = server("--http-max-connections", "4")
    idle = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(4)]
    try:
        time.sleep(0.3)  # accepted
        r = srv.get("/v1/jobs")
        assert r.status == 429, r
        msg = r.json()["error"]["message"]
        assert "too many connections" in msg and "--http-max-connections 4" in msg, msg
        assert r.headers.get("Connection", "").lower() == "close"
        assert srv.get("/healthz").status == 200  # probes still answered
    finally:
        for s in idle:
            s.close()
    deadline = time.time() + 10
    while srv.get("/v1/jobs").status != 200 and time.time() < deadline:
        time.sleep(0.05)
    assert srv.get("/v1/jobs").status == 200
    serving(srv)


def test_grpc_streams(server):
    srv = server("--grpc-max-streams", "2")
    stub = srv.stub()
    release = threading.Event()

    def held_upload():  # a client stream that stays open until released
        yield pb.UploadDatasetRequest(kind="prompts", data=jsonl(arith_prompts(1)))
        release.wait(30)

    futures = [stub.UploadDataset.future(held_upload(), timeout=30) for _ in range(2)]
    try:
        time.sleep(0.5)
        code, details = grpc_error(stub.ListJobs, pb.ListJobsRequest(), timeout=10)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
        assert "too many calls" in details and "--grpc-max-streams 2" in details, details
        assert srv.get("/healthz").status == 200
        h = health_pb2_grpc.HealthStub(srv.channel())  # health is exempt
        assert h.Check(health_pb2.HealthCheckRequest(), timeout=10).status == \
            health_pb2.HealthCheckResponse.SERVING
    finally:
        release.set()
    for f in futures:
        assert f.result(timeout=30).lines == 1
    stub.ListJobs(pb.ListJobsRequest(), timeout=10)
    serving(srv)


def test_rate_per_ip(server):
    srv = server("--rate-limit", "5", "--rate-burst", "5")
    statuses = [srv.get("/v1/jobs").status for _ in range(12)]
    assert statuses[:5] == [200] * 5 and 429 in statuses, statuses
    r = srv.get("/v1/jobs")
    assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
    msg = r.json()["error"]["message"]
    assert "--rate-limit 5" in msg and "--rate-burst 5" in msg, msg
    assert srv.get("/healthz").status == 200  # exempt
    # gRPC from the same address shares the bucket
    code, details = grpc_error(srv.stub().ListJobs, pb.ListJobsRequest(), timeout=10)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "--rate-limit 5" in details
    time.sleep(1.2)  # refilled: served again
    assert srv.get("/v1/jobs").status == 200
    serving(srv)


def test_rate_per_token(server, tmp_path):
    a, b = "a" * 32, "b" * 32
    tokens = tmp_path / "tokens"
    tokens.write_text(f"admin {a}\nadmin {b}\n")
    srv = server("--auth-token-file", str(tokens), "--rate-limit", "3", "--rate-burst", "3")
    ha = {"Authorization": f"Bearer {a}"}
    hb = {"Authorization": f"Bearer {b}"}
    statuses = [srv.get("/v1/jobs", headers=ha).status for _ in range(6)]
    assert statuses[:3] == [200] * 3 and statuses[-1] == 429, statuses
    assert srv.get("/v1/jobs", headers=hb).status == 200  # another token: its own bucket
    md = [("authorization", f"Bearer {b}")]
    for _ in range(2):
        srv.stub().ListJobs(pb.ListJobsRequest(), metadata=md, timeout=10)
    code, details = grpc_error(srv.stub().ListJobs, pb.ListJobsRequest(), metadata=md, timeout=10)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "--rate-limit 3" in details
    assert srv.get("/healthz").status == 200
