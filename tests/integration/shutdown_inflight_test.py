"""shutdown_inflight_test.py — SIGTERM while requests are in flight on both transports: a real
chordd (REST + gRPC) with a job training, REST clients on keep-alive connections and gRPC clients
on their own channels creating jobs, cancelling them and creating rollouts in a loop, an SSE
stream and a WatchJob stream open on the training job — then SIGTERM, and the clients go on until
the server is gone.

What must hold: chordd exits 0 (in the Sanitize and TSan builds a use-after-free or data race
makes it exit non-zero, and the report is in its log); every answer is a success or a clean
refusal — 503 "unavailable" / UNAVAILABLE once the server stops (409 / FAILED_PRECONDITION for a
cancel that finds the job finished), or the connection refused or closed once the transport has
stopped; the streams end; the training job went back to the queue. The service-level version of
this (many more calls, exactly timed around svc_shutdown) is service_shutdown_test.c.

Run: CHORDD=build/chordd python -m pytest tests/integration/shutdown_inflight_test.py"""
import collections
import http.client
import json
import socket
import threading
import time

import grpc

from chordd_harness import TINY_CONFIG, arith_prompts, jsonl, tiny_job
from grpc_harness import GrpcChordd, stubs, to_struct

pb, pbg = stubs()

# what a call may end with: ok, refused because the server stops, or the transport is gone
REST_OK = {200, 201, 202}
GONE = (ConnectionError, socket.timeout, http.client.HTTPException, OSError)
GRPC_CLEAN = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = collections.Counter()
        self.bad = []

    def add(self, key):
        with self.lock:
            self.counts[key] += 1

    def fail(self, what):
        with self.lock:
            self.bad.append(what)


def rest_client(srv, prompts, model, stop, tally):
    """One keep-alive connection (requests keep reaching the service after the listening socket
    closed); a new one when the server closes it, until it refuses."""
    conn, last_job, i = None, None, 0
    while not stop.is_set():
        i += 1
        op = ("job", "cancel", "rollout")[i % 3]
        if op == "job":
            method, path, body = "POST", "/v1/jobs", tiny_job(prompts, steps=2, checkpoint_every=0)
        elif op == "cancel":
            if not last_job:
                continue
            method, path, body = "POST", f"/v1/jobs/{last_job}/cancel", None
        else:
            method, path, body = "POST", "/v1/rollouts", {
                "prompts": ["Compute 1+2."], "model": model, "max_tokens": 2, "seed": 1}
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
            data = json.dumps(body).encode() if body is not None else b""
            conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            payload = r.read()
        except GONE:
            tally.add((op, "gone"))
            if conn is not None:
                conn.close()
            conn = None
            if srv.proc is None or srv.proc.poll() is not None:
                break
            time.sleep(0.01)
            continue
        if r.status in REST_OK:
            tally.add((op, "ok"))
            if op == "job":
                last_job = json.loads(payload)["id"]
        elif r.status == 503 and json.loads(payload)["error"]["code"] == "unavailable":
            tally.add((op, "unavailable"))
        elif r.status == 409 and op == "cancel":
            tally.add((op, "conflict"))
        else:
            tally.fail(f"REST {op}: {r.status} {payload[:300]!r}")
    if conn is not None:
        conn.close()


def grpc_client(srv, prompts, model, stop, tally):
    ch = grpc.insecure_channel(srv.target)
    stub = pbg.ChordStub(ch)
    last_job, i = None, 0
    while not stop.is_set():
        i += 1
        op = ("job", "cancel", "rollout")[i % 3]
        try:
            if op == "job":
                j = stub.CreateJob(pb.CreateJobRequest(job=to_struct(
                    tiny_job(prompts, steps=2, checkpoint_every=0))), timeout=30)
                last_job = j.id
            elif op == "cancel":
                if not last_job:
                    continue
                stub.CancelJob(pb.CancelJobRequest(id=last_job), timeout=30)
            else:
                stub.Rollout(pb.RolloutRequest(prompts=["Compute 1+2."], model=model,
                                               max_tokens=2, seed=1), timeout=30)
            tally.add((op, "ok"))
        except grpc.RpcError as e:
            code = e.code()
            if code in GRPC_CLEAN:
                tally.add((op, "unavailable"))
                if srv.proc is None or srv.proc.poll() is not None:
                    break
                time.sleep(0.01)
            elif code == grpc.StatusCode.FAILED_PRECONDITION and op == "cancel":
                tally.add((op, "conflict"))
            else:
                tally.fail(f"gRPC {op}: {code} {e.details()}")
    ch.close()


def sse_watcher(srv, job_id, tally):
    try:
        for _ in srv.sse(f"/v1/jobs/{job_id}/events"):
            pass
        tally.add(("sse", "ended"))
    except GONE:
        tally.add(("sse", "gone"))


def grpc_watcher(srv, job_id, tally):
    ch = grpc.insecure_channel(srv.target)
    try:
        for _ in pbg.ChordStub(ch).WatchJob(pb.WatchJobRequest(id=job_id), timeout=120):
            pass
        tally.add(("watch", "ended"))
    except grpc.RpcError as e:
        if e.code() in GRPC_CLEAN:
            tally.add(("watch", "unavailable"))
        else:
            tally.fail(f"WatchJob: {e.code()} {e.details()}")
    ch.close()


def test_sigterm_with_requests_in_flight():
    srv = GrpcChordd(extra_args=["--sse-heartbeat", "1"]).start()
    try:
        prompts = srv.upload("prompts", jsonl(arith_prompts(40))).json()["id"]
        r = srv.post("/v1/models", {"name": "tiny", "init": {"config": TINY_CONFIG}})
        assert r.status == 201, r
        model = r.json()["id"]
        r = srv.post("/v1/jobs", tiny_job(prompts, steps=100000, checkpoint_every=0, name="long"))
        assert r.status == 201, r
        long_id = r.json()["id"]
        srv.wait_job(long_id, lambda j: j["state"] == "running" and j["current_step"] >= 1)

        stop, tally = threading.Event(), Tally()
        threads = [threading.Thread(target=rest_client, args=(srv, prompts, model, stop, tally))
                   for _ in range(4)]
        threads += [threading.Thread(target=grpc_client, args=(srv, prompts, model, stop, tally))
                    for _ in range(3)]
        threads += [threading.Thread(target=sse_watcher, args=(srv, long_id, tally)),
                    threading.Thread(target=grpc_watcher, args=(srv, long_id, tally))]
        for t in threads:
            t.start()
        time.sleep(1.5)  # requests flowing, the job training
        log = srv.log_path
        rc = srv.stop()  # SIGTERM, then waits for the exit
        stop.set()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads), "a client hung after the server stopped"
        with open(log, "rb") as f:
            text = f.read().decode(errors="replace")
        assert rc == 0, f"chordd exited {rc}:\n{text[-6000:]}"
        assert "Sanitizer" not in text, text[-6000:]
        assert not tally.bad, tally.bad[:10]
        ok = sum(n for (op, what), n in tally.counts.items() if what == "ok")
        assert ok > 0, tally.counts
        assert tally.counts[("sse", "ended")] + tally.counts[("sse", "gone")] == 1, tally.counts
        assert tally.counts[("watch", "unavailable")] + tally.counts[("watch", "ended")] == 1, \
            tally.counts
        # the training job stopped after a step and went back to the queue
        assert f"job {long_id} queued" in text, text[-3000:]
        print(dict(tally.counts))
    finally:
        srv.cleanup()
