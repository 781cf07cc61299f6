"""mpi_serve_test.py — `mpirun -np 2 chordd serve` (docs/distributed.md, "A data-parallel
service"): rank 0 serves the REST API and owns SQLite, rank 1 computes every job with it.

- a job submitted over REST to the two-rank service gives the same per-step metrics and the
  same final checkpoint (its weights file, to fp32 round-off) as the same job on a one-process
  service, CHORD with full fine-tuning and with LoRA (rank 0 takes the base from the shared
  bases, rank 1 loads its own); the metrics carry each rank's throughput;
- pause, resume and cancel reach both ranks (the job stops at one step on both: the next job
  still runs), and SIGTERM to rank 0 checkpoints the running job with both ranks, ends rank 1
  and mpirun exits 0; the restarted service resumes the job from that checkpoint to the end;
- a rank that hangs (SIGSTOP) fails the job with an error naming rank 1 within --dist-timeout
  (plus the pings), and the service ends (exit != 0); a killed rank ends the MPI job, and the
  restarted service resumes the job from its last checkpoint;
- what two ranks cannot do is refused up front, naming the flag.

Tiny random-init models, one OpenMP thread per rank: about 40 s on two cores. Skipped when
mpirun is absent (scripts/install-deps.sh installs openmpi-bin)."""
import os
import re
import signal
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import load

sys.path.insert(0, os.path.dirname(__file__))
from mpi_test import (ENV, NOT_COMPARED, assert_tensor_close, mpirun_args,  # noqa: E402
                      rank_pid)  # (skips without mpirun)
from chordd_harness import (CHORDD, Chordd, arith_expert, arith_prompts, jsonl,  # noqa: E402
                            tiny_job)

DONE = ("succeeded", "failed", "cancelled")


def two_ranks(*extra, data_dir=None):
    return Chordd(extra_args=list(extra), data_dir=data_dir, launcher=mpirun_args(2), env=ENV)


def one_process(*extra):
    return Chordd(extra_args=list(extra), env=ENV)


def upload(s):
    p = s.upload("prompts", jsonl(arith_prompts(8))).json()["id"]
    e = s.upload("expert", jsonl(arith_expert(8))).json()["id"]
    return p, e


def submit(s, doc):
    r = s.post("/v1/jobs", doc)
    assert r.status == 201, r
    return r.json()["id"]


def metrics(s, job_id):
    return [(x["step"], x["metrics"]) for x in s.get(f"/v1/jobs/{job_id}/metrics").json()["steps"]]


def final_checkpoint(s, job_id):
    items = s.get(f"/v1/jobs/{job_id}/checkpoints").json()["items"]
    last = max(items, key=lambda c: c["step"])
    tensors = {}  # every safetensors file of it: the weights and the optimizer's moments
    for name in (f["path"] for f in last["files"] if f["path"].endswith(".safetensors")):
        r = s.get(f"/v1/jobs/{job_id}/checkpoints/{last['step']}/files/{name}")
        assert r.status == 200, r
        tensors |= {f"{name}:{k}": v for k, v in load(r.body).items()}
    return last["step"], tensors


def rank(s, r):
    return rank_pid(s.proc.pid, r, time.time() + 30)


def wait_steps(s, job_id, n, timeout=60):
    return s.wait_job(job_id, lambda j: j["current_step"] >= n or j["state"] in DONE, timeout)


def long_job(p, e, **over):
    return tiny_job(p, e, **({"steps": 100000, "checkpoint_every": 3} | over))


@pytest.fixture
def servers():
    made = []
    yield made
    for s in made:
        if s.alive():  # never leave a stopped rank or a service behind
            for r in (0, 1):
                try:
                    os.kill(rank_pid(s.proc.pid, r, time.time() + 1), signal.SIGKILL)
                except (AssertionError, ProcessLookupError):
                    pass
        s.cleanup()


@pytest.mark.parametrize("variant", ["chord", "lora", "resumed", "zero", "buckets"])
def test_two_rank_service_equals_one_process(servers, variant):
    """resumed: the two-rank service is stopped (SIGTERM to rank 0) mid-job and started again;
    both ranks resume from the checkpoint, and the run still equals the uninterrupted one.
    zero: --zero 1 (each rank keeps half the AdamW moments; the checkpoint holds them all);
    buckets: --bucket-mb 0.02, the gradients summed in several buckets."""
    over = {"lora": {"rank": 4, "alpha": 8}} if variant == "lora" else {}
    flags = {"zero": ["--zero", "1"], "buckets": ["--bucket-mb", "0.02"]}.get(variant, [])
    steps = 6
    if variant == "resumed":
        steps = 150
        over = {"steps": steps, "checkpoint_every": 50}
    runs = []
    for make in (one_process, two_ranks):
        s = make(*flags) if make is two_ranks else make()
        servers.append(s)
        s.start()
        assert s.get("/healthz").json()["ranks"] == (2 if make is two_ranks else 1)
        p, e = upload(s)
        job_id = submit(s, tiny_job(p, e, **over))
        if variant == "resumed" and make is two_ranks:
            wait_steps(s, job_id, 10)
            os.kill(rank(s, 0), signal.SIGTERM)
            assert s.proc.wait(60) == 0, s.read_log()[-3000:]
            s.stop()
            s.start()
        j = s.wait_job(job_id, lambda j: j["state"] in DONE)
        assert j["state"] == "succeeded", (j, s.read_log()[-3000:])
        runs.append((metrics(s, job_id), final_checkpoint(s, job_id)))
    if variant == "resumed":
        found = re.search(rf"job {job_id} running on cpu, resuming after step (\d+) ", s.read_log())
        assert found and 10 <= int(found.group(1)) < steps, s.read_log()[-3000:]
    if variant == "zero":
        assert re.search(r"ZeRO-1: AdamW moments of \d+ of the \d+ trainable parameters on each "
                         r"rank", s.read_log()), s.read_log()[-3000:]
    if variant == "buckets":
        assert re.search(r"gradients summed in ([3-9]|\d\d+) buckets of up to 0.02 MiB",
                         s.read_log()), s.read_log()[-3000:]
    (m1, (step1, w1)), (m2, (step2, w2)) = runs
    assert [st for st, _ in m1] == [st for st, _ in m2] == list(range(1, steps + 1))
    for (st, a), (_, b) in zip(m1, m2):
        keys = {k for k in a if not k.startswith(NOT_COMPARED)}
        assert keys == {k for k in b if not k.startswith(NOT_COMPARED)}, st
        for k in keys:
            assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-6), (st, k, a[k], b[k])
        # each rank's throughput: two ranks, two figures of each kind
        assert {k for k in b if k.startswith("tokens_per_s/train/rank_")} == {
            "tokens_per_s/train/rank_0", "tokens_per_s/train/rank_1"}
        assert not any("/rank_" in k for k in a)
    assert step1 == step2 == steps and w1.keys() == w2.keys() and w1
    assert any(n.startswith("optimizer.safetensors:adam_m") for n in w1)
    for name in w1:
        assert_tensor_close(name, w2[name], w1[name])
    if variant == "lora":  # the adapter's tensors: trained (B starts at zero)
        assert any("lora_B" in n and np.abs(w1[n]).max() > 0 for n in w1)


def test_pause_cancel_and_stop_reach_every_rank(servers):
    s = two_ranks()
    servers.append(s)
    s.start()
    p, e = upload(s)
    first = submit(s, long_job(p, e))
    wait_steps(s, first, 4)
    assert s.post(f"/v1/jobs/{first}/pause").status == 200
    j = s.wait_job(first, lambda j: j["state"] in ("paused",) + DONE)
    paused_at = j["current_step"]
    assert j["state"] == "paused", j
    assert s.post(f"/v1/jobs/{first}/resume").status == 200
    wait_steps(s, first, paused_at + 2)
    assert s.post(f"/v1/jobs/{first}/cancel").status in (200, 202)
    assert s.wait_job(first, lambda j: j["state"] in DONE)["state"] == "cancelled"
    # the ranks are still in step: the next job runs to its end
    short = submit(s, tiny_job(p, e))
    j = s.wait_job(short, lambda j: j["state"] in DONE)
    assert j["state"] == "succeeded", (j, s.read_log()[-3000:])

    # SIGTERM to rank 0: the running job checkpoints on both ranks, rank 1 is told to quit
    third = submit(s, long_job(p, e, checkpoint_every=1000))
    wait_steps(s, third, 3)
    os.kill(rank(s, 0), signal.SIGTERM)
    assert s.proc.wait(60) == 0, s.read_log()[-3000:]
    s.stop()
    assert s.read_log().rstrip().endswith("chordd: stopped"), s.read_log()[-2000:]
    s.start()  # the same data directory, two ranks again
    wait_steps(s, third, 5)
    found = re.search(rf"job {third} running on cpu, resuming after step (\d+) ", s.read_log())
    assert found and int(found.group(1)) >= 3, s.read_log()[-3000:]
    steps = [st for st, _ in metrics(s, third)]
    assert steps == list(range(1, len(steps) + 1)), steps  # each step once, none lost
    assert s.post(f"/v1/jobs/{third}/cancel").status in (200, 202)
    assert s.wait_job(third, lambda j: j["state"] in DONE)["state"] == "cancelled"
    os.kill(rank(s, 0), signal.SIGTERM)
    assert s.proc.wait(60) == 0, s.read_log()[-3000:]


def test_a_failure_of_rank_0_alone_fails_the_job_and_the_service_goes_on(servers):
    """Rank 0 alone writes checkpoints: with checkpoints/ read-only (EROFS) its write fails
    while rank 1 has nothing to write. The failure is kept until the next step's agreement, where
    both ranks stop, so the job fails with rank 0's error, the ranks stay in step, the service
    stays up and the next job runs on both (before: rank 0 left while rank 1 went on, and the
    service ended on the divergence)."""
    from faults_test import EROFS, read_only
    s = two_ranks("--dist-timeout", "10")
    servers.append(s)
    s.start()
    p, e = upload(s)
    first = submit(s, tiny_job(p, e, steps=2, checkpoint_every=2))
    assert s.wait_job(first, lambda j: j["state"] in DONE)["state"] == "succeeded"
    with read_only(os.path.join(s.data_dir, "checkpoints")):
        job = submit(s, tiny_job(p, e, steps=6, checkpoint_every=2))
        j = s.wait_job(job, lambda j: j["state"] in DONE)
        assert j["state"] == "failed" and EROFS in j["error"], j
        assert j["current_step"] == 2, j  # stopped at step 3's agreement, none stored after
        assert s.alive() and s.get("/healthz").status == 200, s.read_log()[-3000:]
    again = submit(s, tiny_job(p, e))
    j = s.wait_job(again, lambda j: j["state"] in DONE)
    assert j["state"] == "succeeded", (j, s.read_log()[-3000:])
    assert "out of step" not in s.read_log()


def test_rollouts_wait_for_the_job(servers):
    """With several ranks a rollout is not run between a job's steps (rank 1 would wait at the
    next collective meanwhile, and a long rollout would trip its watchdog): it stays pending
    while the job runs, and runs once no job does."""
    s = two_ranks()
    servers.append(s)
    s.start()
    p, e = upload(s)
    first = submit(s, tiny_job(p, e, steps=2, checkpoint_every=2))
    assert s.wait_job(first, lambda j: j["state"] in DONE)["state"] == "succeeded"
    job = submit(s, long_job(p, e, checkpoint_every=1000))
    wait_steps(s, job, 2)
    r = s.post("/v1/rollouts", {"prompts": ["Compute 1+2."], "checkpoint": {"job_id": first},
                                "answers": ["3"], "max_tokens": 4})
    assert r.status == 202, r
    rid = r.json()["id"]
    at = s.get(f"/v1/jobs/{job}").json()["current_step"]
    wait_steps(s, job, at + 20)  # steps went on; the rollout did not run between them
    assert s.get(f"/v1/rollouts/{rid}").json()["state"] == "pending"
    assert s.post(f"/v1/jobs/{job}/cancel").status in (200, 202)
    assert s.wait_job(job, lambda j: j["state"] in DONE)["state"] == "cancelled"
    ro = s.wait_rollout(rid)
    assert ro["state"] == "succeeded", ro
    assert len(ro["result"]["completions"]) == 1


def test_hung_rank_fails_the_job_naming_it(servers):
    s = two_ranks("--dist-timeout", "3")
    servers.append(s)
    s.start()
    p, e = upload(s)
    job_id = submit(s, long_job(p, e))
    wait_steps(s, job_id, 3)
    victim = rank(s, 1)
    os.kill(victim, signal.SIGSTOP)  # alive but silent: only chordd's watchdog can tell
    t0 = time.time()
    try:
        code = s.proc.wait(30)
    finally:
        os.kill(victim, signal.SIGKILL)
    took = time.time() - t0
    assert code != 0, s.read_log()[-3000:]
    assert took < 3 + 3 + 10, took
    s.stop()
    log = s.read_log()
    assert "the service's MPI ranks are out of step" in log, log[-3000:]
    s.start()
    j = s.get(f"/v1/jobs/{job_id}").json()
    assert j["state"] == "failed", j
    assert re.search(r"rank 1 (did not reach|stopped answering during) the collective '[^']+' "
                     r"\(?(not done )?within 3 s", j["error"]), j


def test_killed_rank_ends_the_service_and_the_job_resumes(servers):
    s = two_ranks("--dist-timeout", "10")
    servers.append(s)
    s.start()
    p, e = upload(s)
    job_id = submit(s, long_job(p, e, steps=400, checkpoint_every=2))
    wait_steps(s, job_id, 5)
    os.kill(rank(s, 1), signal.SIGKILL)
    assert s.proc.wait(30) != 0  # mpirun ends the MPI job: Open MPI names rank 1
    s.stop()
    assert "rank 1" in s.read_log(), s.read_log()[-3000:]
    s.start()
    j = s.wait_job(job_id, lambda j: j["state"] in DONE, timeout=180)
    assert j["state"] == "succeeded", (j, s.read_log()[-3000:])
    assert re.search(rf"job {job_id} running on cpu, resuming after step \d+ ", s.read_log())
    steps = [st for st, _ in metrics(s, job_id)]
    assert steps == list(range(1, 401)), steps[:20]


@pytest.mark.parametrize("flags,says", [
    (["--slots", "2"], "--slots: under mpirun"),
    (["--device", "cuda:0"], "--device cuda:0: under mpirun each rank takes one device"),
])
def test_refused_with_two_ranks(tmp_path, flags, says):
    import subprocess
    cmd = mpirun_args(2) + [CHORDD, "serve", "--data-dir", str(tmp_path / "d"), "--http", "off",
                            "--grpc", "off"] + flags
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=ENV)
    assert p.returncode != 0 and says in p.stderr, (p.returncode, p.stderr[-2000:])
    assert not (tmp_path / "d").exists()  # refused before anything was opened


@pytest.mark.parametrize("flag", [["--zero", "1"], ["--dist-timeout", "5"], ["--bucket-mb", "4"]])
def test_rank_flags_refused_without_mpirun(tmp_path, flag):
    import subprocess
    env = {k: v for k, v in ENV.items() if not k.startswith(("OMPI_COMM", "PMIX", "PMI_"))}
    p = subprocess.run([CHORDD, "serve", "--data-dir", str(tmp_path / "d"), "--http", "off",
                        "--grpc", "off"] + flag, capture_output=True, text=True, timeout=30,
                       env=env)
    assert p.returncode == 2 and "launched by mpirun" in p.stderr, p.stderr


def test_cuda_all_without_a_gpu_is_refused(tmp_path):
    """--device cuda:all (every GPU, one rank each under mpirun, chordd running itself there) on
    a host without a GPU: refused before the data directory is opened. Only this refusal ran
    here: the re-execution under mpirun needs a host with GPUs."""
    import subprocess
    p = subprocess.run([CHORDD, "serve", "--device", "cuda:all", "--data-dir", str(tmp_path / "d"),
                        "--http", "off", "--grpc", "off"], capture_output=True, text=True,
                       timeout=30, env=ENV)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "--device cuda:all: no CUDA device on this host" in p.stderr, p.stderr
    assert not (tmp_path / "d").exists()
