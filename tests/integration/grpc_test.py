"""grpc_test.py — chordd's gRPC API end to end with clients nobody here wrote: Python grpcio with
stubs that grpcio-tools generates from api/proto/chord.proto at test time, and the standard
health client of grpcio-health-checking. A real chordd (REST + gRPC on free loopback ports, temp
data dir): datasets uploaded in chunks, a job created and streamed to the end, a rollout, REST
and gRPC seeing the same resources field for field (both ways), and bad input — garbage bytes,
wrong wire types, wrong JSON types, oversized messages, work that would not fit the device's
memory, clients that vanish mid-stream and mid-upload, expired deadlines, unknown methods — each
with its status code, the server up after each and nothing half-stored.

Run: CHORDD=build/chordd python -m pytest tests/integration/grpc_test.py"""
import hashlib
import json
import os
import subprocess
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chordd_harness import (CHORDD, HUGE_CONFIG, LONG_KV_CONFIG, TINY_CONFIG, arith_expert,
                            arith_prompts, jsonl, tiny_job)
from grpc_harness import GrpcChordd, assert_same, raw_unary, struct_to_py, stubs, to_struct

pb, pbg = stubs()
HEALTH_SERVING = health_pb2.HealthCheckResponse.SERVING
HEALTH_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def srv():
    s = GrpcChordd(extra_args=["--max-upload-mb", "1"]).start()
    yield s
    rc = s.stop()
    s.cleanup()
    assert rc == 0, "chordd did not exit cleanly on SIGTERM"


@pytest.fixture(autouse=True)
def server_stays_up(request):
    yield
    if "srv" in request.fixturenames:
        s = request.getfixturevalue("srv")
        assert s.alive(), "chordd died:\n" + s.read_log()[-3000:]
        h = health_pb2_grpc.HealthStub(s.channel())
        assert h.Check(health_pb2.HealthCheckRequest(), timeout=10).status == HEALTH_SERVING


@pytest.fixture(scope="module")
def stub(srv):
    return srv.stub()


def upload(stub, kind, data, name="", piece=7):
    """UploadDataset with the JSONL cut into `piece`-byte chunks (inside lines and UTF-8)."""
    def chunks():
        yield pb.UploadDatasetRequest(kind=kind, name=name, data=data[:piece])
        for i in range(piece, len(data), piece):
            yield pb.UploadDatasetRequest(data=data[i:i + piece])
    return stub.UploadDataset(chunks(), timeout=30)


@pytest.fixture(scope="module")
def datasets(stub):
    p = upload(stub, "prompts", jsonl(arith_prompts(40)), name="p", piece=4096)
    e = upload(stub, "expert", jsonl(arith_expert(40)), name="e", piece=4096)
    return p.id, e.id


def stored(srv):
    """What is stored: dataset rows and files, for 'nothing half-written' checks."""
    rows = sorted(d["id"] for d in srv.get("/v1/datasets?limit=1000").json()["items"])
    files = sorted(os.listdir(os.path.join(srv.data_dir, "datasets")))
    return rows, files


def code_of(fn, *a, **kw):
    with pytest.raises(grpc.RpcError) as e:
        fn(*a, **kw)
    return e.value.code(), e.value.details()


def long_job(stub, prompts, steps=100000):
    """A job that trains until cancelled (the tiny model, many steps)."""
    return stub.CreateJob(pb.CreateJobRequest(job=to_struct(tiny_job(
        prompts, steps=steps, checkpoint_every=0, name="long"))), timeout=30)


def wait_state(srv, job_id, states, timeout=60):
    return srv.wait_job(job_id, lambda j: j["state"] in states, timeout=timeout)


# ---- health --------------------------------------------------------------------------------

def test_health_check(srv):
    h = health_pb2_grpc.HealthStub(srv.channel())
    assert h.Check(health_pb2.HealthCheckRequest(service="")).status == HEALTH_SERVING
    assert h.Check(health_pb2.HealthCheckRequest(service="chord.v1.Chord")).status == \
        HEALTH_SERVING
    code, _ = code_of(h.Check, health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert code == grpc.StatusCode.NOT_FOUND


def test_health_watch_sees_shutdown():
    """Watch says SERVING, then NOT_SERVING when the server stops; chordd exits 0."""
    s = GrpcChordd().start()
    try:
        h = health_pb2_grpc.HealthStub(s.channel())
        seen, ended = [], []
        call = h.Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)

        def read():
            try:
                for r in call:
                    seen.append(r.status)
            except grpc.RpcError as e:
                ended.append(e.code())
            else:
                ended.append(grpc.StatusCode.OK)
        t = threading.Thread(target=read)
        t.start()
        deadline = time.time() + 10
        while not seen and time.time() < deadline:
            time.sleep(0.02)
        assert seen == [HEALTH_SERVING]
        unknown = h.Watch(health_pb2.HealthCheckRequest(service="nope"), timeout=10)
        assert next(unknown).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        unknown.cancel()
        assert s.stop() == 0
        t.join(10)
        assert not t.is_alive()
        assert seen == [HEALTH_SERVING, HEALTH_NOT_SERVING], seen
        assert ended and ended[0] in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.OK), ended
    finally:
        s.cleanup()


def test_shutdown_ends_open_streams():
    """SIGTERM with a WatchJob stream open on a running job: the stream ends (UNAVAILABLE),
    the job goes back to the queue with a checkpoint, chordd exits 0."""
    s = GrpcChordd().start()
    try:
        stub = s.stub()
        p = stub.UploadDataset(iter([pb.UploadDatasetRequest(kind="prompts",
                                                             data=jsonl(arith_prompts(20)))]))
        job = long_job(stub, p.id)
        call = stub.WatchJob(pb.WatchJobRequest(id=job.id), timeout=60)
        next(call)
        got, ended = [], []

        def read():
            try:
                for e in call:
                    got.append(e)
            except grpc.RpcError as e:
                ended.append(e.code())
        t = threading.Thread(target=read)
        t.start()
        wait_state(s, job.id, ("running",))
        assert s.stop() == 0
        t.join(20)
        assert not t.is_alive() and ended == [grpc.StatusCode.UNAVAILABLE], ended
    finally:
        s.cleanup()


def test_port_taken_is_an_error(srv):
    """GRPC_ARG_ALLOW_REUSEPORT is off: a second server on the same port fails to start."""
    other = GrpcChordd()
    other.grpc_port = srv.grpc_port
    other.extra_args[1] = f"127.0.0.1:{srv.grpc_port}"
    try:
        with pytest.raises(RuntimeError, match="exited"):
            other.start(timeout=20)
    finally:
        other.cleanup()


def test_unknown_method_is_unimplemented(srv):
    t = time.time()
    code, details = code_of(raw_unary(srv.channel(), "/chord.v1.Chord/NoSuchMethod"), b"",
                            timeout=10)
    assert code == grpc.StatusCode.UNIMPLEMENTED and "NoSuchMethod" in details
    code, _ = code_of(raw_unary(srv.channel(), "/other.Service/Method"), b"\x01\x02", timeout=10)
    assert code == grpc.StatusCode.UNIMPLEMENTED
    assert time.time() - t < 5, "unknown methods must be answered, not left to the deadline"


# ---- datasets --------------------------------------------------------------------------------

def test_upload_in_chunks(srv, stub):
    rows = arith_prompts(30) + [{"prompt": "Wie viel ist 2+2? Größe ü", "answer": 4}]
    body = jsonl(rows)
    d = upload(stub, "prompts", body, name="chunky", piece=5)  # cuts inside "ö" / "ü" too
    assert d.id.startswith("ds_") and d.kind == "prompts" and d.name == "chunky"
    assert d.lines == 31 and d.bytes == len(body)
    assert d.sha256 == hashlib.sha256(body).hexdigest()
    assert_same(srv.get("/v1/datasets/" + d.id).json(), d)
    assert_same(srv.get("/v1/datasets/" + d.id).json(),
                stub.GetDataset(pb.GetDatasetRequest(id=d.id)))
    rest = srv.get("/v1/datasets?limit=1000").json()
    assert_same(rest, stub.ListDatasets(pb.ListDatasetsRequest(limit=1000)))
    page = stub.ListDatasets(pb.ListDatasetsRequest(limit=1))
    assert len(page.items) == 1 and page.limit == 1 and page.total >= 1


def test_upload_empty_chunks_are_chunks(srv, stub):
    body = jsonl(arith_prompts(3))
    d = stub.UploadDataset(iter([pb.UploadDatasetRequest(kind="prompts"),
                                 pb.UploadDatasetRequest(),
                                 pb.UploadDatasetRequest(data=body[:10]),
                                 pb.UploadDatasetRequest(),
                                 pb.UploadDatasetRequest(data=body[10:])]))
    assert d.lines == 3 and d.sha256 == hashlib.sha256(body).hexdigest()


def test_upload_bad_line_names_it_and_stores_nothing(srv, stub):
    before = stored(srv)
    body = jsonl(arith_prompts(5)) + b'{"prompt": "no answer"}\n' + jsonl(arith_prompts(5))
    code, details = code_of(upload, stub, "prompts", body, piece=16)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "line 6" in details, details
    code, details = code_of(upload, stub, "weights", b'{"prompt": "a", "answer": 1}\n')
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "kind" in details, details
    code, details = code_of(stub.UploadDataset, iter([pb.UploadDatasetRequest(data=b"{}")]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "kind" in details, details
    code, details = code_of(stub.UploadDataset, iter([]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    code, details = code_of(stub.UploadDataset, iter([
        pb.UploadDatasetRequest(kind="prompts", data=b'{"prompt": "a", "answer": 1}\n'),
        pb.UploadDatasetRequest(kind="expert", data=b'{"prompt": "a", "answer": 1}\n')]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "kind" in details, details
    assert stored(srv) == before


def test_upload_over_the_limit_is_resource_exhausted(srv, stub):
    """--max-upload-mb 1: the upload is refused while it streams; nothing is stored."""
    before = stored(srv)
    line = json.dumps({"prompt": "x" * 1000, "answer": "1"}).encode() + b"\n"
    body = line * 1200  # ~1.2 MiB
    code, details = code_of(upload, stub, "prompts", body, piece=256 * 1024)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
    assert stored(srv) == before


def test_oversized_message_is_resource_exhausted(srv, stub):
    """One message over the 4 MiB receive limit: RESOURCE_EXHAUSTED, for unary and stream."""
    before = stored(srv)
    big = pb.GetJobRequest(id="job_" + "x" * (5 << 20))
    code, _ = code_of(stub.GetJob, big, timeout=30)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    code, _ = code_of(stub.UploadDataset, iter([pb.UploadDatasetRequest(
        kind="prompts", data=b" " * (5 << 20))]), timeout=30)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert stored(srv) == before


def test_client_vanishes_mid_upload(srv, stub):
    """A client that cancels, or whose channel closes, in the middle of an upload: no row, no
    file."""
    before = stored(srv)
    for how in ("cancel", "close"):
        sent, release = threading.Event(), threading.Event()

        def chunks():
            yield pb.UploadDatasetRequest(kind="prompts", name="half",
                                          data=jsonl(arith_prompts(200)))
            yield pb.UploadDatasetRequest(data=b'{"prompt": "Compute 1+')
            sent.set()
            release.wait(30)
        ch = grpc.insecure_channel(srv.target) if how == "close" else srv.channel()
        fut = pbg.ChordStub(ch).UploadDataset.future(chunks(), timeout=60)
        assert sent.wait(10)
        time.sleep(0.5)  # the server has the chunks
        if how == "cancel":
            fut.cancel()
        else:
            ch.close()
        release.set()
        with pytest.raises((grpc.FutureCancelledError, grpc.RpcError)):
            fut.result(timeout=10)
        time.sleep(0.5)
        assert stored(srv) == before, how


# ---- models, jobs, REST parity ----------------------------------------------------------------

def test_models_both_ways(srv, stub):
    d = os.path.join(srv.models_root, "tiny_g")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(TINY_CONFIG, f)
    m = stub.RegisterModel(pb.RegisterModelRequest(name="tiny_g", path="tiny_g"))
    assert m.source == "directory" and struct_to_py(m.config)["hidden_size"] == 32
    assert_same(srv.get("/v1/models/" + m.id).json(), m)
    m2 = stub.RegisterModel(pb.RegisterModelRequest(init=pb.ModelInit(
        config=to_struct(TINY_CONFIG))))
    assert m2.source == "init" and m2.path == ""
    assert_same(srv.get("/v1/models/" + m2.id).json(), m2)
    r = srv.post("/v1/models", {"name": "via-rest", "init": {"config": TINY_CONFIG}}).json()
    assert_same(r, stub.GetModel(pb.GetModelRequest(id=r["id"])))
    assert_same(srv.get("/v1/models?limit=1000").json(),
                stub.ListModels(pb.ListModelsRequest(limit=1000)))
    code, details = code_of(stub.RegisterModel, pb.RegisterModelRequest(path="../../etc"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "path" in details, details
    code, _ = code_of(stub.GetModel, pb.GetModelRequest(id="mdl_nope"))
    assert code == grpc.StatusCode.NOT_FOUND


def test_job_created_over_grpc_is_the_rest_job_and_back(srv, stub, datasets):
    prompts, expert = datasets
    doc = tiny_job(prompts, expert, name="parity", steps=2)
    g = stub.CreateJob(pb.CreateJobRequest(job=to_struct(doc)))
    rest = srv.get("/v1/jobs/" + g.id).json()
    # the same resource; the stored config is the resolved document both sides
    assert_same({**rest, "state": g.state, "current_step": g.current_step,
                 "started_at": g.started_at or None, "finished_at": g.finished_at or None,
                 "device": g.device or None}, g)
    assert rest["config"]["grpo"]["group_size"] == 2 and rest["name"] == "parity"
    # REST → gRPC: the same job document posted over REST reads the same over gRPC
    r = srv.post("/v1/jobs", doc).json()
    got = stub.GetJob(pb.GetJobRequest(id=r["id"]))
    assert struct_to_py(got.config) == r["config"] == rest["config"]
    for job_id in (g.id, r["id"]):
        done = wait_state(srv, job_id, ("succeeded", "failed"))
        assert done["state"] == "succeeded", done
        assert_same(done, stub.GetJob(pb.GetJobRequest(id=job_id)))
    lst = srv.get("/v1/jobs?limit=1000").json()
    assert_same(lst, stub.ListJobs(pb.ListJobsRequest(limit=1000)))
    assert_same(srv.get("/v1/jobs?state=succeeded&limit=5").json(),
                stub.ListJobs(pb.ListJobsRequest(state="succeeded", limit=5)))
    assert_same(srv.get(f"/v1/jobs/{g.id}/checkpoints").json(),
                stub.ListCheckpoints(pb.ListCheckpointsRequest(id=g.id)))
    assert_same(srv.get(f"/v1/jobs/{g.id}/metrics").json(),
                stub.GetMetrics(pb.GetMetricsRequest(id=g.id)))
    assert_same(srv.get(f"/v1/jobs/{g.id}/samples?step=1&limit=50").json(),
                stub.ListSamples(pb.ListSamplesRequest(id=g.id, step=1, limit=50)))
    assert_same(srv.get(f"/v1/jobs/{g.id}/samples?limit=3&offset=1").json(),
                stub.ListSamples(pb.ListSamplesRequest(id=g.id, limit=3, offset=1)))


def test_create_job_streams_to_the_end(srv, stub, datasets):
    prompts, expert = datasets
    job = stub.CreateJob(pb.CreateJobRequest(job=to_struct(tiny_job(prompts, expert))))
    assert job.id.startswith("job_") and job.steps == 6
    events = list(stub.WatchJob(pb.WatchJobRequest(id=job.id), timeout=120))
    steps = [e.step for e in events if e.type == "step"]
    assert steps == [1, 2, 3, 4, 5, 6], [(e.type, e.step) for e in events]
    assert all(e.WhichOneof("data") == "metrics" and e.metrics.step == e.step
               for e in events if e.type == "step")
    assert [e.step for e in events if e.type == "checkpoint"] == [2, 4, 6]
    last = events[-1]
    assert last.type == "state" and last.final and last.job.state == "succeeded"
    assert sum(e.final for e in events) == 1
    # the streamed metrics are the stored ones, as REST reports them
    rest = srv.get(f"/v1/jobs/{job.id}/metrics").json()
    assert [s["step"] for s in rest["steps"]] == steps
    for s, e in zip(rest["steps"], [e for e in events if e.type == "step"]):
        assert_same(s, e.metrics)
    # a watch from a later step gets only what follows, then the final state
    tail = list(stub.WatchJob(pb.WatchJobRequest(id=job.id, since_step=5), timeout=30))
    assert [e.step for e in tail if e.type == "step"] == [5, 6] and tail[-1].final


def test_many_watchers_share_one_feed(srv, stub, datasets):
    """Watchers opened together, and one that joins after events flowed, each get every event
    in order (the shared feed replays its history to a late joiner)."""
    prompts, expert = datasets
    blocker = long_job(stub, prompts)
    wait_state(srv, blocker.id, ("running",))
    job = stub.CreateJob(pb.CreateJobRequest(job=to_struct(tiny_job(prompts, expert))))
    results = [None] * 6

    def watch(i):
        results[i] = [(e.type, e.step, e.final) for e in
                      stub.WatchJob(pb.WatchJobRequest(id=job.id), timeout=120)]
    threads = [threading.Thread(target=watch, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    stub.CancelJob(pb.CancelJobRequest(id=blocker.id))
    srv.wait_job(job.id, lambda j: j["current_step"] >= 2)
    late = threading.Thread(target=watch, args=(5,))
    late.start()
    for t in threads + [late]:
        t.join(120)
    for r in results:
        assert [s for k, s, _ in r if k == "step"] == [1, 2, 3, 4, 5, 6], r
        assert r[-1][2] and sum(f for _, _, f in r) == 1
    assert all(r == results[0] for r in results[:5])
    assert results[5][-1] == results[0][-1]


def test_cancel_job(srv, stub, datasets):
    job = long_job(stub, datasets[0])
    wait_state(srv, job.id, ("running",))
    c = stub.CancelJob(pb.CancelJobRequest(id=job.id))
    assert c.id == job.id and (c.cancel_requested or c.state == "cancelled")
    assert wait_state(srv, job.id, ("cancelled",))["state"] == "cancelled"
    code, details = code_of(stub.CancelJob, pb.CancelJobRequest(id=job.id))
    assert code == grpc.StatusCode.FAILED_PRECONDITION, details
    code, _ = code_of(stub.CancelJob, pb.CancelJobRequest(id="job_nope"))
    assert code == grpc.StatusCode.NOT_FOUND


# ---- bad input ----------------------------------------------------------------------------------

def test_garbage_bytes_and_wrong_wire_types(srv, stub):
    before = stored(srv)
    ch = srv.channel()
    for method in ("/chord.v1.Chord/GetJob", "/chord.v1.Chord/CreateJob",
                   "/chord.v1.Chord/Rollout", "/grpc.health.v1.Health/Check"):
        # a length-delimited field whose length runs past the end
        code, details = code_of(raw_unary(ch, method), b"\x0a\xff\xff\xff\xff\x0f", timeout=10)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "protobuf" in details, (method,
                                                                                   details)
    # field 1 (string id) sent as a varint: the wrong wire type
    code, _ = code_of(raw_unary(ch, "/chord.v1.Chord/GetJob"), b"\x08\x05", timeout=10)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    # ListJobs.limit (field 3, int64) sent as a string
    code, _ = code_of(raw_unary(ch, "/chord.v1.Chord/ListJobs"), b"\x1a\x02ab", timeout=10)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, details = code_of(raw_unary(ch, "/chord.v1.Chord/UploadDataset"), b"\xff\xff\xff",
                            timeout=10)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert stored(srv) == before


def test_bad_documents_name_the_field(srv, stub, datasets):
    before_jobs = srv.get("/v1/jobs?limit=1000").json()["total"]
    cases = [
        ({**tiny_job(datasets[0]), "steps": "ten"}, "steps"),
        ({**tiny_job(datasets[0]), "grpo": {"clipp_low": 0.2}}, "clipp_low"),
        (tiny_job("ds_nope"), "data.prompts"),
        ({"model": {"path": "nope"}, "data": {"prompts": datasets[0]}, "algorithm": "grpo"},
         "model"),
    ]
    for doc, field in cases:
        code, details = code_of(stub.CreateJob, pb.CreateJobRequest(job=to_struct(doc)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and field in details, (field, details)
    code, details = code_of(stub.CreateJob, pb.CreateJobRequest())
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "job" in details
    code, details = code_of(stub.ListJobs, pb.ListJobsRequest(state="sleeping"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "state" in details, details
    code, details = code_of(stub.ListJobs, pb.ListJobsRequest(limit=5000))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "limit" in details, details
    code, details = code_of(stub.GetJob, pb.GetJobRequest())
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "id" in details, details
    for fn, req in ((stub.GetJob, pb.GetJobRequest(id="job_nope")),
                    (stub.GetDataset, pb.GetDatasetRequest(id="ds_nope")),
                    (stub.GetRollout, pb.GetRolloutRequest(id="roll_nope")),
                    (stub.GetMetrics, pb.GetMetricsRequest(id="job_nope")),
                    (stub.ListCheckpoints, pb.ListCheckpointsRequest(id="job_nope"))):
        assert code_of(fn, req)[0] == grpc.StatusCode.NOT_FOUND
    code, _ = code_of(lambda: next(stub.WatchJob(pb.WatchJobRequest(id="job_nope"))))
    assert code == grpc.StatusCode.NOT_FOUND
    assert srv.get("/v1/jobs?limit=1000").json()["total"] == before_jobs


def test_work_that_cannot_fit_is_resource_exhausted(srv, stub, datasets):
    """A job, a model or a rollout that would not fit the device's memory: RESOURCE_EXHAUSTED
    (REST's 413) with the figures and what to lower, nothing stored, the server up."""
    d = os.path.join(srv.models_root, "longkv_g")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(LONG_KV_CONFIG, f)
    totals = {p: srv.get(p + "?limit=1000").json()["total"] for p in ("/v1/jobs", "/v1/models")}
    exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED
    huge_job = tiny_job(datasets[0], model={"init": {"config": HUGE_CONFIG}})
    code, details = code_of(stub.CreateJob, pb.CreateJobRequest(job=to_struct(huge_job)))
    assert code == exhausted, (code, details)
    for needle in ("the job needs about", "GiB", "free", "weights", "gradients and AdamW moments",
                   "(biggest share first) the model's size", "or use a larger device"):
        assert needle in details, (needle, details)
    wide = tiny_job(datasets[0], grpo={"group_size": 100, "prompts_per_step": 10**7})
    code, details = code_of(stub.CreateJob, pb.CreateJobRequest(job=to_struct(wide)))
    assert code == exhausted and "KV cache" in details, details
    assert "(biggest share first) grpo.prompts_per_step x grpo.group_size" in details, details
    code, details = code_of(stub.RegisterModel, pb.RegisterModelRequest(
        init=pb.ModelInit(config=to_struct(HUGE_CONFIG))))
    assert code == exhausted and "the model's weights need about" in details, details
    code, details = code_of(stub.Rollout, pb.RolloutRequest(
        prompts=["Compute 1+2."] * 256, model="longkv_g", n=64, max_tokens=32768))
    assert code == exhausted and "the rollout needs about" in details, details
    assert "KV cache" in details and "max_tokens" in details, details
    assert {p: srv.get(p + "?limit=1000").json()["total"] for p in totals} == totals


def test_client_vanishes_mid_stream_and_deadline(srv, stub, datasets):
    job = long_job(stub, datasets[0])
    try:
        # cancel after a few events
        call = stub.WatchJob(pb.WatchJobRequest(id=job.id), timeout=60)
        got = [next(call) for _ in range(3)]
        call.cancel()
        assert len(got) == 3
        # a whole channel closed mid-stream
        ch = grpc.insecure_channel(srv.target)
        call = pbg.ChordStub(ch).WatchJob(pb.WatchJobRequest(id=job.id), timeout=60)
        next(call)
        ch.close()
        # an expired deadline on a stream that would run for ever
        t = time.time()
        with pytest.raises(grpc.RpcError) as e:
            for _ in stub.WatchJob(pb.WatchJobRequest(id=job.id), timeout=1.0):
                pass
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.time() - t < 10
        # the job trains on, and new watchers are served
        j = srv.get("/v1/jobs/" + job.id).json()
        assert j["state"] == "running", j
        call = stub.WatchJob(pb.WatchJobRequest(id=job.id, since_step=j["current_step"] + 1),
                             timeout=30)
        e = next(call)
        assert e.type in ("step", "state", "checkpoint")
        call.cancel()
    finally:
        stub.CancelJob(pb.CancelJobRequest(id=job.id))
        wait_state(srv, job.id, ("cancelled",))


# ---- rollouts -----------------------------------------------------------------------------------

def test_rollout(srv, stub):
    d = os.path.join(srv.models_root, "tiny_roll")
    cfg = os.path.join(srv.tmp, "tiny_roll.json")
    with open(cfg, "w") as f:
        json.dump(TINY_CONFIG, f)
    subprocess.run([CHORDD, "init-model", "--config", cfg, "--seed", "2", "--out", d], check=True,
                   capture_output=True)
    req = pb.RolloutRequest(prompts=["Compute 1+2.", "Compute 3+4."], model="tiny_roll", n=2,
                            answers=["3", "7"], max_tokens=4, temperature=0.0, seed=5)
    ro = stub.Rollout(req)
    assert ro.id.startswith("roll_") and ro.state in ("pending", "succeeded")
    r = struct_to_py(ro.request)
    # temperature 0 was heard (a set oneof), not taken for "left out" (default 1.0)
    assert r["n"] == 2 and r["temperature"] == 0.0 and r["max_tokens"] == 4 and r["seed"] == 5
    deadline = time.time() + 60
    while ro.state == "pending" and time.time() < deadline:
        time.sleep(0.1)
        ro = stub.GetRollout(pb.GetRolloutRequest(id=ro.id))
    assert ro.state == "succeeded", ro.error
    comps = struct_to_py(ro.result)["completions"]
    assert len(comps) == 4
    for c in comps:
        assert 1 <= len(c["token_ids"]) == len(c["logprobs"]) <= 4
        assert c["reason"] in ("correct", "wrong", "no_answer")
    # temperature 0 is greedy: both samples of a prompt are the same tokens
    by_prompt = {}
    for c in comps:
        by_prompt.setdefault(int(c["prompt_index"]), []).append(c["token_ids"])
    assert all(a == b for a, b in by_prompt.values()), by_prompt
    assert_same(srv.get("/v1/rollouts/" + ro.id).json(), ro)
    # messages (a list of conversations) reach the service as REST's [[...], ...]
    conv = pb.Conversation(messages=[pb.ChatMessage(role="user", content="Compute 2+2.")])
    ro2 = stub.Rollout(pb.RolloutRequest(messages=[conv], model="tiny_roll", max_tokens=2))
    assert struct_to_py(ro2.request)["messages"] == [[{"role": "user",
                                                       "content": "Compute 2+2."}]]
    # bad requests name the field
    for bad, field in ((pb.RolloutRequest(prompts=["a"], model="nope"), "model"),
                       (pb.RolloutRequest(model="tiny_roll"), "prompts"),
                       (pb.RolloutRequest(prompts=["a"], model="tiny_roll", n=0), "n"),
                       (pb.RolloutRequest(prompts=["a"], checkpoint=pb.CheckpointRef(
                           job_id="job_x")), "checkpoint")):
        code, details = code_of(stub.Rollout, bad)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and field in details, (field, details)


def test_prometheus_counts_grpc(srv, stub):
    stub.ListJobs(pb.ListJobsRequest())
    text = srv.get("/metrics").body.decode()
    assert 'transport="grpc",route="/chord.v1.Chord/ListJobs"' in text
