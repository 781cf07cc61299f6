"""mpi_test.py — data-parallel `chordd train` under `mpirun -np 2` (CPU backend, Open MPI) against
one process with the same job (docs/distributed.md):

- the same per-sample records (every rollout's text and reward, the eval samples: the same
  responses were sampled), the same per-step metrics (losses, grad_norm, rewards, token counts)
  and the same final weights, to fp32 round-off, for an SFT job, a CHORD job (GRPO +
  SFT, run as 2 ranks to step 2, one process to step 4, 2 ranks to step 6, resuming each
  time), a GRPO job with uneven shares of prompts, and a LoRA CHORD job; the metrics file has
  each step once (rank 0 writes);
- a rank killed (SIGKILL) mid-job ends the job, the output naming rank 1, within seconds;
- a rank that hangs (SIGSTOP) ends the job with chordd's error naming rank 1 within
  --dist-timeout (plus as long again to ping the ranks when it hangs inside a collective);
- what several ranks do not run yet is refused up front, naming the field or flag.

Tiny random-init models, one OpenMP thread per rank: about 20 s on two cores. Skipped when
mpirun is absent (scripts/install-deps.sh installs openmpi-bin)."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

sys.path.insert(0, os.path.dirname(__file__))
from chordd_harness import CHORDD, TINY_CONFIG as TINY  # noqa: E402

MPIRUN = shutil.which("mpirun")
if MPIRUN is None:
    pytest.skip("mpirun not found (install openmpi-bin: scripts/install-deps.sh)",
                allow_module_level=True)

ENV = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="passive",
           OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_rmaps_base_oversubscribe="1")
# Timings, throughputs and memory (a process's, a rank's) differ between runs; everything else
# must match.
NOT_COMPARED = ("time/", "tokens_per_s/", "eval/time", "memory/")


def mpirun_args(n):
    return [MPIRUN, "-np", str(n), "--oversubscribe", "--bind-to", "none"]


def train(job_path, out, ranks, *extra, check=0, timeout=120, threads="1", quiet=True, env=None):
    cmd = [CHORDD, "train", job_path, "--out", str(out), "--metrics-out", str(out) + ".jsonl",
           "--samples-out", str(out) + ".samples.jsonl", *extra]
    cmd += ["--threads", threads] if threads else []
    cmd += ["--quiet"] if quiet else []
    if ranks > 1:
        cmd = mpirun_args(ranks) + cmd
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV | (env or {}))
    if check is not None:
        assert p.returncode == check, (p.returncode, p.stdout[-3000:], p.stderr[-3000:])
    return p


def write_jsonl(path, records):
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return str(path)


@pytest.fixture
def data(tmp_path):
    probs = []
    for i in range(48):
        a, b = (31 + i * 7) % 50, (17 + i * 13) % 50
        probs.append((f"Compute {a}+{b}.", str(a + b), f"{a}+{b}={a + b} \\boxed{{{a + b}}}"))
    return {"prompts": write_jsonl(tmp_path / "prompts.jsonl",
                                   [{"prompt": p, "answer": a} for p, a, _ in probs]),
            "expert": write_jsonl(tmp_path / "expert.jsonl",
                                  [{"prompt": p, "response": r} for p, _, r in probs]),
            "eval": write_jsonl(tmp_path / "eval.jsonl",
                                [{"prompt": p, "answer": a} for p, a, _ in probs[:8]])}


def job(tmp_path, data, name="job", drop=(), **over):
    doc = {
        "model": {"init": {"seed": 1, "config": TINY}},
        "data": data,
        "algorithm": "chord",
        "chord": {"mu": 0.5},
        "grpo": {"group_size": 4, "prompts_per_step": 4},
        "expert_per_step": 5,
        "sampling": {"max_new_tokens": 8},
        # a digit anywhere: the random model gets mixed rewards, so GRPO has a signal
        "reward": {"type": "regex", "pattern": "[0-9]"},
        "optimizer": {"lr": 0.003},
        "micro_batch_tokens": 64,  # several micro-batches per rank
        "steps": 6,
        "seed": 5,
        "checkpoint_every": 3,
        "eval": {"every": 3, "k": 2, "temperature": 1.0},
    }
    doc.update(over)
    for k in drop:
        del doc[k]
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(doc))
    return str(path)


def metrics(out):
    with open(str(out) + ".jsonl") as f:
        return [json.loads(line) for line in f]


def close(a, b, rel=1e-5, abs_=1e-6):
    return abs(a - b) <= rel * max(abs(a), abs(b)) + abs_


def samples(out):
    with open(str(out) + ".samples.jsonl") as f:
        return [json.loads(line) for line in f]


# What N ranks and one process may differ by, per tensor (fp32 round-off: the gradients are summed
# in another order; AdamW turns a gradient that is zero in exact arithmetic, a key bias, into
# ~1e-7 steps of either sign): (rtol, atol) of the weights and of the AdamW moments.
WEIGHTS_TOL = (1e-5, 1e-5)
MOMENTS_TOL = {"adam_m": (1e-4, 1e-7), "adam_v": (1e-4, 1e-10)}


def assert_tensor_close(name, got, want):
    """One tensor of a checkpoint of N ranks (got) against one process's (want); name ends with
    the tensor's name (adam_m / adam_v: the moments' bounds; adam_t: exact)."""
    key = name.rsplit(":", 1)[-1]
    if key == "adam_t":
        np.testing.assert_array_equal(got, want, err_msg=name)
        return
    rtol, atol = MOMENTS_TOL.get(key, WEIGHTS_TOL)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=name)


def assert_same_run(one, two, steps, weights_file, ranks=2):
    # the same responses sampled, scored and numbered: rank 0 gathers every rank's rollouts
    s1, s2 = samples(one), samples(two)
    assert s1 == s2
    m1, m2 = metrics(one), metrics(two)
    assert [r["step"] for r in m1] == list(range(1, steps + 1))
    assert [r["step"] for r in m2] == list(range(1, steps + 1)), "each step written once"
    for r1, r2 in zip(m1, m2):
        per_rank = {k for k in r2["metrics"] if "/rank_" in k}
        if per_rank:  # the steps the 2 ranks ran (not those of the resume in one process)
            assert per_rank == {f"tokens_per_s/{p}/rank_{r}" for p in ("rollout", "train")
                                for r in range(ranks)}
            # every rank sampled or trained (a rank whose groups all have zero advantage skips
            # its forward/backward: its train throughput is 0)
            assert all(r2["metrics"][f"tokens_per_s/rollout/rank_{r}"] +
                       r2["metrics"][f"tokens_per_s/train/rank_{r}"] > 0 for r in range(ranks))
        assert r1["metrics"].keys() == r2["metrics"].keys() - per_rank
        for k, v in r1["metrics"].items():
            if k.startswith(NOT_COMPARED):
                continue
            assert close(v, r2["metrics"][k]), (r1["step"], k, v, r2["metrics"][k])
    w1 = load_file(f"{one}/checkpoints/step_{steps}/{weights_file}")
    w2 = load_file(f"{two}/checkpoints/step_{steps}/{weights_file}")
    assert w1.keys() == w2.keys()
    moved = 0.0
    for k in w1:
        assert_tensor_close(k, w2[k], w1[k])
        moved = max(moved, float(np.abs(w1[k]).max()))
    assert moved > 0
    return m1


def assert_same_moments(one, two, steps):
    """The AdamW moments of the last checkpoints (ZeRO-1's gathered from the ranks' slices)."""
    o1 = load_file(f"{one}/checkpoints/step_{steps}/optimizer.safetensors")
    o2 = load_file(f"{two}/checkpoints/step_{steps}/optimizer.safetensors")
    assert o1.keys() == o2.keys() == {"adam_m", "adam_v", "adam_t"}
    assert o1["adam_t"][0] == o2["adam_t"][0] == steps
    for k in ("adam_m", "adam_v"):
        assert_tensor_close(k, o2[k], o1[k])
        assert np.abs(o1[k]).max() > 0


@pytest.mark.parametrize("variant", ["sft", "chord", "grpo", "dapo", "lora", "zero",
                                     "zero_lora", "zero_split", "zero3", "buckets"])
def test_two_ranks_equal_one_process(tmp_path, data, variant):
    over, weights, resume = {}, "model.safetensors", False
    if variant == "sft":
        over = {"algorithm": "sft", "drop": ("chord",), "expert_per_step": 7}
    elif variant == "chord":
        resume = True
    elif variant == "grpo":  # 5 prompts over 2 ranks: shares of 3 and 2
        over = {"algorithm": "grpo", "drop": ("chord",),
                "grpo": {"group_size": 4, "prompts_per_step": 5}}
    elif variant == "dapo":  # dynamic sampling: rounds of 5 prompts until 5 informative groups
        over = {"algorithm": "grpo", "drop": ("chord",),
                "grpo": {"group_size": 4, "prompts_per_step": 5, "filter_groups": True,
                         "max_sample_batches": 3}}
    elif variant in ("lora", "zero_lora"):
        over = {"lora": {"rank": 4, "alpha": 8}}
        weights = "adapter_model.safetensors"
    elif variant == "buckets":  # two layers: buckets above the embedding finish first
        over = {"model": {"init": {"seed": 1, "config": TINY | {"num_hidden_layers": 2}}}}
    path = job(tmp_path, data, **over)
    one, two = tmp_path / "one", tmp_path / "two"
    train(path, one, 1)
    if variant == "zero":  # ZeRO-1, resumed across ZeRO-1, one process and plain data parallel
        p = train(path, two, 2, "--zero", "1", "--stop-after", "2", quiet=False)
        # the moments of half the parameters each (the demo's tiny model: 2 x 4 bytes each)
        found = re.search(r"ZeRO-1: AdamW moments of (\d+) of the (\d+) trainable parameters on "
                          r"each rank \(rank 0: \[0, (\d+)\)\): ([0-9.]+) MB per rank instead of "
                          r"([0-9.]+) MB", p.stderr)
        assert found, p.stderr[-3000:]
        half, n, hi = int(found[1]), int(found[2]), int(found[3])
        assert half == hi == (n + 1) // 2
        assert abs(float(found[4]) - 8 * half / 1e6) < 0.06
        assert "ZeRO-1" in p.stderr.split("data parallel: 2 ranks")[1].splitlines()[0]
        train(path, two, 1, "--resume", "--stop-after", "3")
        train(path, two, 2, "--resume", "--stop-after", "4")
        # one reduce-scatter after the backward instead of the per-slice reduces of the buckets
        train(path, two, 2, "--resume", "--zero", "1", "--bucket-mb", "0")
    elif variant == "buckets":  # 10 KiB buckets: several, most started during the backward
        p = train(path, two, 2, "--bucket-mb", "0.01", quiet=False)
        found = re.search(r"step 1: gradients summed in (\d+) buckets of up to 0\.01 MiB, "
                          r"(\d+) started during the backward", p.stderr)
        assert found and int(found[1]) > 3 and int(found[2]) > 0, p.stderr[-3000:]
        # one sum after the backward instead: the same bits (a + b = b + a per element)
        whole = tmp_path / "whole"
        p = train(path, whole, 2, "--bucket-mb", "0", quiet=False)
        assert "gradients summed in" not in p.stderr
        assert samples(whole) == samples(two)
        for r1, r2 in zip(metrics(whole), metrics(two)):
            assert {k: v for k, v in r1["metrics"].items() if not k.startswith(NOT_COMPARED)} \
                == {k: v for k, v in r2["metrics"].items() if not k.startswith(NOT_COMPARED)}
        for f in ("model.safetensors", "optimizer.safetensors"):
            w1, w2 = (load_file(f"{d}/checkpoints/step_6/{f}") for d in (whole, two))
            assert all(np.array_equal(w1[k], w2[k]) for k in w1), f
        # ZeRO-1: each bucket's parts reduced to their slices' owners, against one
        # reduce-scatter after the backward, and against the plain runs: the same bits again
        for d, mb in (("zb", "0.01"), ("zw", "0")):
            train(path, tmp_path / d, 2, "--zero", "1", "--bucket-mb", mb)
        for f in ("model.safetensors", "optimizer.safetensors"):
            w = [load_file(f"{tmp_path / d}/checkpoints/step_6/{f}") for d in ("zb", "zw", "two")]
            assert all(np.array_equal(w[0][k], w[i][k]) for k in w[0] for i in (1, 2)), f
    elif variant == "zero_split":  # MPI calls of at most 1000 floats: the >2^31-float paths
        train(path, two, 2, "--zero", "1", "--stop-after", "3",
              env={"CHORD_DIST_MAX_COUNT": "1000"})
        train(path, two, 2, "--zero", "1", "--resume", env={"CHORD_DIST_MAX_COUNT": "999"})
        p = train(path, two, 2, "--zero", "1", check=None, env={"CHORD_DIST_MAX_COUNT": "0"})
        assert p.returncode != 0 and "CHORD_DIST_MAX_COUNT: must be an integer" in p.stderr
    elif variant == "zero3":  # 3 ranks: uneven slices, buckets across their edges
        p = train(path, two, 3, "--zero", "1", "--bucket-mb", "0.01", quiet=False)
        assert "ZeRO-1: AdamW moments of" in p.stderr, p.stderr[-3000:]
    elif variant == "zero_lora":  # and small buckets: the adapter's buffer is cut too
        p = train(path, two, 2, "--zero", "1", "--bucket-mb", "0.001", quiet=False)
        assert re.search(r"gradients summed in \d+ buckets", p.stderr), p.stderr[-3000:]
        assert "ZeRO-1: AdamW moments of" in p.stderr, p.stderr[-3000:]
    elif resume:  # 2 ranks, 1 process, 2 ranks again: a checkpoint does not depend on the count
        train(path, two, 2, "--stop-after", "2")
        assert [r["step"] for r in metrics(two)] == [1, 2]
        train(path, two, 1, "--resume", "--stop-after", "4")
        train(path, two, 2, "--resume")
    elif variant == "sft":  # without --threads: the host's cores shared by its 2 ranks
        p = train(path, two, 2, threads=None, quiet=False)
        per_rank = max(1, os.cpu_count() // 2)
        assert re.search(rf"data parallel: 2 ranks \(mpi\), 2 on this host, {per_rank} CPU "
                         rf"threads? per rank", p.stderr), p.stderr[-3000:]
        assert p.stderr.count("job job: sft") == 1, p.stderr[-3000:]  # rank 0 alone logs
    else:
        p = train(path, two, 2)
        assert "data parallel: 2 ranks" not in p.stderr  # --quiet
    m = assert_same_run(one, two, 6, weights, ranks=3 if variant == "zero3" else 2)
    assert_same_moments(one, two, 6)
    if variant != "sft":  # the rollouts had a signal: the comparison bites
        assert any(r["metrics"]["reward_std"] > 0 for r in m)
        assert any(abs(r["metrics"]["pg_loss"]) > 0 for r in m)
    if variant == "dapo":  # groups were dropped and more rounds drawn
        assert any(r["metrics"]["prompts_drawn"] > 5 for r in m)
        assert any(r["metrics"]["groups_dropped"] > 0 for r in m)


def rank_pid(mpirun_pid, rank, deadline):
    """The pid of MPI rank `rank` among mpirun's children (its environment says its rank)."""
    want = f"OMPI_COMM_WORLD_RANK={rank}".encode()
    while time.time() < deadline:
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                if ppid != mpirun_pid:
                    continue
                with open(f"/proc/{d}/environ", "rb") as f:
                    if want in f.read().split(b"\0"):
                        return int(d)
            except (OSError, ValueError, IndexError):
                continue
        time.sleep(0.05)
    raise AssertionError(f"rank {rank} not found")


def start_long_job(tmp_path, data, timeout_s):
    path = job(tmp_path, data, name="long", steps=100000, checkpoint_every=0, eval={"every": 0})
    out = tmp_path / "long"
    cmd = mpirun_args(2) + [CHORDD, "train", path, "--out", str(out), "--metrics-out",
                            str(out) + ".jsonl", "--threads", "1", "--quiet",
                            "--dist-timeout", str(timeout_s)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    deadline = time.time() + 60
    while time.time() < deadline:  # a few steps done: the ranks are mid-job
        if os.path.exists(str(out) + ".jsonl") and len(metrics(out)) >= 3:
            break
        assert p.poll() is None, p.stdout.read()
        time.sleep(0.05)
    return p, rank_pid(p.pid, 1, deadline)


def finish(p, victim, limit):
    t0 = time.time()
    try:
        output, _ = p.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        p.kill()
        output, _ = p.communicate()
        pytest.fail(f"the job did not end within {limit} s:\n{output[-3000:]}")
    finally:
        try:  # never leave a stopped rank behind
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return output, time.time() - t0


def test_killed_rank_ends_the_job_naming_it(tmp_path, data):
    p, victim = start_long_job(tmp_path, data, 10)
    os.kill(victim, signal.SIGKILL)
    output, took = finish(p, victim, 30)
    assert p.returncode != 0, output
    assert "rank 1" in output, output  # Open MPI: "process rank 1 with PID ... exited on signal 9"
    assert took < 30


def test_hung_rank_ends_the_job_naming_it(tmp_path, data):
    p, victim = start_long_job(tmp_path, data, 3)
    os.kill(victim, signal.SIGSTOP)  # alive but silent: only chordd's watchdog can tell
    t0 = time.time()
    output, _ = finish(p, victim, 30)
    assert p.returncode != 0, output
    # stopped before its next collective (rank 0 waits for its arrival) or inside one (rank 0
    # pings the ranks and rank 1 stays silent)
    assert re.search(r"rank 1 (did not reach|stopped answering during) the collective '[^']+' "
                     r"\(?(not done )?within 3 s", output), output
    assert "rank 0 of 2" in output, output
    assert time.time() - t0 < 3 + 3 + 10, output


def test_refused_with_several_ranks(tmp_path, data):
    path = job(tmp_path, data, name="one_prompt", grpo={"group_size": 4, "prompts_per_step": 1})
    p = train(path, tmp_path / "p", 2, check=None)
    assert p.returncode != 0 and "grpo.prompts_per_step" in p.stderr, p.stderr[-2000:]
    p = train(job(tmp_path, data), tmp_path / "t", 1, "--dist-timeout", "0", check=2)
    assert "--dist-timeout" in p.stderr
    # ZeRO-1 shards over ranks: one process has none to shard
    p = train(job(tmp_path, data), tmp_path / "z", 1, "--zero", "1", check=2)
    assert "--zero 1 shards the optimizer state over the ranks" in p.stderr, p.stderr
    p = train(job(tmp_path, data), tmp_path / "z", 2, "--zero", "2", check=None)
    assert p.returncode != 0 and "--zero" in p.stderr, p.stderr[-2000:]
    p = train(job(tmp_path, data), tmp_path / "b", 1, "--bucket-mb", "1", check=2)
    assert "--bucket-mb sizes the buckets" in p.stderr, p.stderr
    # every GPU of the host, under mpirun too: there are none here (a GPU host runs it)
    p = train(job(tmp_path, data), tmp_path / "c", 2, "--device", "cuda:all", check=None)
    assert p.returncode == 0 or "--device cuda:all: no CUDA device" in p.stderr, p.stderr
