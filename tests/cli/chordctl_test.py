"""chordctl_test.py — the chordctl client (clients/cli, docs/cli.md) against a real chordd on a
free loopback port with a temp data dir (tests/integration/chordd_harness.py), used the way a
person or a script uses it: datasets uploaded (a bad one exits 1 with the server's message
naming the line), listed and shown; models registered; jobs created, listed, shown, cancelled;
`jobs watch` inside a pseudo-terminal (the live bar, a queued state, the final line) and through
a pipe (a line per step, --json event lines); a rollout from a checkpoint; checkpoints listed
and downloaded byte for byte; every --json output parses; exit statuses 0 / 1 / 2 / 3 / 5 as
documented; bearer tokens when the server asks for them.

Run: CHORDD=build/chordd CHORDCTL=build/chordctl python -m pytest tests/cli/chordctl_test.py"""
import fcntl
import hashlib
import json
import os
import pty
import re
import secrets
import select
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))
from chordd_harness import (Chordd, TINY_CONFIG, arith_expert, arith_prompts, free_port,  # noqa: E402
                            jsonl, tiny_job)

CHORDCTL = os.environ.get("CHORDCTL", "build/chordctl")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@pytest.fixture(scope="module")
def srv():
    s = Chordd(extra_args=["--sse-heartbeat", "1"]).start()
    yield s
    rc = s.stop()
    s.cleanup()
    assert rc == 0, "chordd did not exit cleanly on SIGTERM"


def ctl(srv, *args, input=None, env=None, timeout=120):
    """Runs chordctl with pipes (not a terminal): (exit status, stdout, stderr)."""
    e = dict(os.environ)
    e.pop("CHORD_TOKEN", None)
    e.update(env or {})
    server = ["--server", srv.url] if srv else []
    p = subprocess.run([CHORDCTL, *server, *args], input=input, capture_output=True,
                       timeout=timeout, env=e)
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def ctl_json(srv, *args, **kw):
    rc, out, err = ctl(srv, "--json", *args, **kw)
    assert rc == 0, (args, rc, out, err)
    return json.loads(out)


def ctl_pty(srv, *args, cols=120, timeout=180, cwd=None, interrupt_after=None):
    """Runs chordctl with stdout and stderr on a pseudo-terminal: (exit status, what it drew).
    interrupt_after: seconds after which it gets SIGINT (Ctrl-C)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, cols, 0, 0))
    env = dict(os.environ, LANG="C.UTF-8", LC_ALL="C.UTF-8")
    p = subprocess.Popen([CHORDCTL, "--server", srv.url, *args], stdin=slave, stdout=slave,
                         stderr=slave, close_fds=True, env=env, cwd=cwd)
    os.close(slave)
    out = b""
    deadline = time.time() + timeout
    interrupt_at = time.time() + interrupt_after if interrupt_after else None
    while True:
        if time.time() > deadline:
            p.kill()
            raise AssertionError(f"chordctl {args} still running; drew {out[-2000:]!r}")
        if interrupt_at and time.time() > interrupt_at:
            p.send_signal(signal.SIGINT)
            interrupt_at = None
        ready, _, _ = select.select([master], [], [], 0.2)
        if not ready:
            if p.poll() is not None and not select.select([master], [], [], 0.2)[0]:
                break
            continue
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    p.wait(30)
    os.close(master)
    return p.returncode, out.decode(errors="replace")


@pytest.fixture(scope="module")
def prompts(srv, tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "math.jsonl"
    path.write_bytes(jsonl(arith_prompts(40)))
    return ctl_json(srv, "datasets", "upload", str(path), "--kind", "prompts")["id"]


@pytest.fixture(scope="module")
def finished_job(srv, prompts, tmp_path_factory):
    """A job that ran to the end, with checkpoints at steps 2, 4 and 6."""
    doc = tmp_path_factory.mktemp("jobs") / "job.json"
    doc.write_text(json.dumps(tiny_job(prompts, steps=6, checkpoint_every=2, keep_checkpoints=0)))
    job = ctl_json(srv, "jobs", "create", str(doc))
    srv.wait_job(job["id"], lambda j: j["state"] == "succeeded")
    return job["id"]


def write_job(tmp_path, doc, name="job.json"):
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return str(path)


# ---- exit statuses and usage ----------------------------------------------------------------

def test_usage_and_exit_statuses(srv):
    rc, out, err = ctl(None)
    assert rc == 2 and "usage: chordctl" in err
    rc, out, err = ctl(None, "--help")
    assert rc == 0 and "jobs watch" in out and "exit status" in out
    rc, out, err = ctl(srv, "frobnicate")
    assert rc == 2 and "unknown command 'frobnicate'" in err
    rc, out, err = ctl(srv, "jobs", "list", "--limit", "0")
    assert rc == 2 and "--limit: must be an integer in [1, 1000], got '0'" in err, err
    rc, out, err = ctl(srv, "jobs", "list", "--limit", "1e3x")
    assert rc == 2 and "--limit" in err
    rc, out, err = ctl(srv, "datasets", "list", "--bogus")
    assert rc == 2 and "unknown option '--bogus'" in err
    rc, out, err = ctl(srv, "datasets", "upload", "x.jsonl")  # no --kind
    assert rc == 2 and "usage" in err
    rc, out, err = ctl(srv, "datasets", "upload", "/nonexistent/x.jsonl", "--kind", "prompts")
    assert rc == 4 and "/nonexistent/x.jsonl" in err
    # nothing listens on this port: 3, whatever the command
    nobody = f"http://127.0.0.1:{free_port()}"
    for args in (["datasets", "list"], ["jobs", "watch", "job_x"], ["rollout", "show", "roll_x"]):
        p = subprocess.run([CHORDCTL, "--server", nobody, *args], capture_output=True, timeout=60)
        assert p.returncode == 3 and b"cannot connect to " + nobody.encode() in p.stderr, p
    # the server from the environment, and a bare host:port
    p = subprocess.run([CHORDCTL, "datasets", "list", "--json"], capture_output=True, timeout=60,
                       env=dict(os.environ, CHORD_SERVER=f"127.0.0.1:{srv.port}"))
    assert p.returncode == 0 and "items" in json.loads(p.stdout)


# ---- datasets --------------------------------------------------------------------------------

def test_datasets_upload_list_show(srv, tmp_path):
    good = tmp_path / "arith.jsonl"
    good.write_bytes(jsonl(arith_prompts(12)))
    rc, out, err = ctl(srv, "datasets", "upload", str(good), "--kind", "prompts")
    assert rc == 0, err
    m = re.match(r"uploaded (ds_\w+): prompts 'arith', 12 lines", out)
    assert m, out
    ds = m.group(1)
    # --json is the server's document
    d = ctl_json(srv, "datasets", "upload", str(good), "--kind", "eval", "--name", "held-out")
    assert d["kind"] == "eval" and d["name"] == "held-out" and d["lines"] == 12
    assert d["sha256"] == hashlib.sha256(good.read_bytes()).hexdigest()
    # from stdin (sent chunked)
    rc, out, err = ctl(srv, "datasets", "upload", "-", "--kind", "expert", "--name", "piped",
                       input=jsonl(arith_expert(5)))
    assert rc == 0 and "expert 'piped', 5 lines" in out, (out, err)

    rc, out, err = ctl(srv, "datasets", "list")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "NAME", "KIND", "LINES", "SIZE", "AGE"]
    assert any(line.startswith(ds) and "arith" in line and "prompts" in line for line in lines)
    listed = ctl_json(srv, "datasets", "list", "--limit", "2")
    assert len(listed["items"]) == 2 and listed["limit"] == 2
    rc, out, err = ctl(srv, "datasets", "list", "--limit", "1")
    assert rc == 0 and "--offset 1 for more" in err

    rc, out, err = ctl(srv, "datasets", "show", ds)
    assert rc == 0 and re.search(r"^id:\s+" + ds, out, re.M) and re.search(r"^lines:\s+12", out,
                                                                              re.M)
    assert ctl_json(srv, "datasets", "show", ds)["id"] == ds
    rc, out, err = ctl(srv, "datasets", "show", "ds_000000000000000000000000")
    assert rc == 1 and "(404 not_found)" in err, err


def test_bad_upload_names_the_line(srv, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(jsonl(arith_prompts(2)) + b'{"prompt": "Compute 1+1."}\n')
    before = ctl_json(srv, "datasets", "list")["total"]
    rc, out, err = ctl(srv, "datasets", "upload", str(bad), "--kind", "prompts")
    assert rc == 1 and out == "", (out, err)
    assert err.startswith('chordctl: line 3: "answer": required') and "400 invalid_argument" in err
    rc, out, err = ctl(srv, "--json", "datasets", "upload", str(bad), "--kind", "nope")
    assert rc == 1 and "kind" in err and out == ""
    assert ctl_json(srv, "datasets", "list")["total"] == before


def test_upload_progress_on_a_terminal(srv, tmp_path):
    big = tmp_path / "big.jsonl"
    row = json.dumps({"prompt": "Compute 1+1. " + "x" * 2000, "answer": "2"}).encode() + b"\n"
    big.write_bytes(row * 2000)  # about 4 MiB
    rc, drawn = ctl_pty(srv, "datasets", "upload", str(big), "--kind", "prompts")
    assert rc == 0, drawn
    text = ANSI.sub("", drawn)
    assert "big.jsonl  [" in text and "3.9 MiB / 3.9 MiB" in text and "/s" in text, drawn
    assert re.search(r"\[[█#]+\]", text), drawn  # the bar, full at the end
    assert "uploaded ds_" in text


# ---- models ----------------------------------------------------------------------------------

def test_models_add_list(srv, tmp_path):
    d = os.path.join(srv.models_root, "tiny-cli")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(TINY_CONFIG, f)
    rc, out, err = ctl(srv, "models", "add", "tiny-cli", "--name", "tiny")
    assert rc == 0 and re.match(r"registered mdl_\w+: 'tiny' \(directory, qwen2 L=1 d=32\)", out), \
        (out, err)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(TINY_CONFIG))
    m = ctl_json(srv, "models", "add", "--init", str(cfg), "--name", "random")
    assert m["source"] == "init" and m["config"]["hidden_size"] == 32
    rc, out, err = ctl(srv, "models", "list")
    assert rc == 0 and out.splitlines()[0].split()[:4] == ["ID", "NAME", "SOURCE", "ARCH"]
    assert m["id"] in out and "tiny-cli" in out
    assert ctl_json(srv, "models", "show", m["id"])["name"] == "random"
    rc, out, err = ctl(srv, "models", "add", "../outside")
    assert rc == 1 and "path" in err and "400 invalid_argument" in err
    rc, out, err = ctl(srv, "models", "add", "tiny-cli", "--init", str(cfg))
    assert rc == 2


# ---- jobs ------------------------------------------------------------------------------------

def test_job_create_refused_names_the_field(srv, prompts, tmp_path):
    rc, out, err = ctl(srv, "jobs", "create",
                       write_job(tmp_path, tiny_job(prompts, grpo={"clipp_low": 0.1})))
    assert rc == 1 and 'unknown field "grpo.clipp_low"' in err, err
    (tmp_path / "broken.json").write_text('{"model": ')
    rc, out, err = ctl(srv, "jobs", "create", str(tmp_path / "broken.json"))
    assert rc == 1 and "400 invalid_argument" in err
    rc, out, err = ctl(srv, "jobs", "show", "job_000000000000000000000000")
    assert rc == 1 and "404 not_found" in err


def test_jobs_list_show(srv, finished_job):
    rc, out, err = ctl(srv, "jobs", "list")
    assert rc == 0
    assert out.splitlines()[0].split() == ["ID", "NAME", "STATE", "STEP", "ALGORITHM", "MODEL",
                                           "AGE"]
    row = next(line for line in out.splitlines() if line.startswith(finished_job))
    assert row.split()[1:5] == ["tiny", "succeeded", "6/6", "grpo"], row
    jobs = ctl_json(srv, "jobs", "list", "--state", "succeeded")
    assert finished_job in [j["id"] for j in jobs["items"]]
    assert all(j["state"] == "succeeded" for j in jobs["items"])
    rc, out, err = ctl(srv, "jobs", "list", "--state", "sleeping")
    assert rc == 1 and "state" in err
    rc, out, err = ctl(srv, "jobs", "show", finished_job)
    assert rc == 0 and re.search(r"^state:\s+succeeded$", out, re.M)
    assert "metrics at step 6:" in out and re.search(r"^\s+reward_mean\s+\S+", out, re.M), out
    j = ctl_json(srv, "jobs", "show", finished_job)
    assert j["id"] == finished_job and j["current_step"] == 6


def test_watch_in_a_terminal(srv, prompts, tmp_path):
    """The live bar while the job waits and runs, then the final line in its place."""
    blocker = ctl_json(srv, "jobs", "create",
                       write_job(tmp_path, tiny_job(prompts, steps=100000, checkpoint_every=0),
                                 "blocker.json"))
    job = ctl_json(srv, "jobs", "create",
                   write_job(tmp_path, tiny_job(prompts, steps=40, checkpoint_every=20,
                                                sampling={"max_new_tokens": 16})))
    srv.wait_job(blocker["id"], lambda j: j["state"] == "running")
    # the watch starts while the job is queued behind the blocker; the blocker is cancelled
    # a moment later, and the job runs under the watcher's eyes
    import threading
    timer = threading.Timer(1.5, lambda: srv.post(f"/v1/jobs/{blocker['id']}/cancel"))
    timer.start()
    try:
        rc, drawn = ctl_pty(srv, "jobs", "watch", job["id"], cols=150)
    finally:
        timer.cancel()
    assert rc == 0, drawn
    frames = [ANSI.sub("", f) for f in drawn.split("\r")]
    bars = [f for f in frames if re.search(r"\[[█░#.]+\]", f)]
    assert any(job["id"] in f and "queued" in f and " 0/40 " in f for f in bars), frames[:8]
    running = [f for f in bars if "running" in f]
    assert running, frames[:20]
    for f in running:
        assert re.search(r"\d+/40 +\d+%  ETA (\d+:\d\d|--:--)", f), f
    assert any("reward " in f and "acc " in f and "loss " in f for f in running), running[-3:]
    assert any(re.search(r"ETA \d+:\d\d", f) for f in running)
    assert "checkpoint at step 20: ckpt_" in drawn and "checkpoint at step 40: ckpt_" in drawn
    final = [line for line in ANSI.sub("", drawn).replace("\r\n", "\n").split("\n")
             if line.strip()][-1]
    final = final.split("\r")[-1]
    assert re.match(job["id"] + r" succeeded: 40/40 steps in \d+:\d\d  reward \S+  acc \S+  "
                    r"loss \S+", final), final
    # a bar line never outgrows the terminal (no wrapping)
    assert all(len(f) < 150 for f in frames), max(frames, key=len)


def test_watch_through_a_pipe_and_json(srv, finished_job):
    rc, out, err = ctl(srv, "jobs", "watch", finished_job)
    assert rc == 0, err
    lines = out.splitlines()
    steps = [line for line in lines if line.startswith("step ")]
    assert [s.split()[1] for s in steps] == [f"{i}/6" for i in range(1, 7)], out
    assert all("reward_mean " in s and "accuracy " in s and "loss " in s and "ETA " in s
               for s in steps)
    assert "\r" not in out and "\x1b" not in out
    assert [line for line in lines if line.startswith("checkpoint at step")] == \
        [line for line in lines if re.match(r"checkpoint at step [246]: ckpt_\w+ \(", line)]
    assert re.match(finished_job + r" succeeded: 6/6 steps in \d+:\d\d", lines[-1]), lines[-1]
    # from a later step
    rc, out, err = ctl(srv, "jobs", "watch", finished_job, "--since-step", "5")
    assert [line.split()[1] for line in out.splitlines() if line.startswith("step ")] == \
        ["5/6", "6/6"]
    # --json: one event a line, the server's data
    rc, out, err = ctl(srv, "--json", "jobs", "watch", finished_job)
    assert rc == 0
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["data"]["step"] for e in events if e["event"] == "step"] == [1, 2, 3, 4, 5, 6]
    assert "loss" in events[0]["data"]["metrics"] or events[0]["event"] != "step"
    assert events[-1]["event"] == "state" and events[-1]["data"]["state"] == "succeeded"
    rc, out, err = ctl(srv, "jobs", "watch", "job_000000000000000000000000")
    assert rc == 1 and "404 not_found" in err


def test_cancel(srv, prompts, tmp_path):
    job = ctl_json(srv, "jobs", "create",
                   write_job(tmp_path, tiny_job(prompts, steps=100000, checkpoint_every=0)))
    srv.wait_job(job["id"], lambda j: j["state"] == "running" and j["current_step"] >= 2)
    # Ctrl-C on a watch: the bar's line is ended, so the shell's prompt starts on a fresh one
    rc, drawn = ctl_pty(srv, "jobs", "watch", job["id"], interrupt_after=1.5)
    assert rc == -signal.SIGINT, (rc, drawn)
    assert "running  [" in drawn and drawn.endswith("\r\n"), drawn[-300:]
    rc, out, err = ctl(srv, "jobs", "cancel", job["id"])
    assert rc == 0 and ("cancel requested" in out or "cancelled" in out), (out, err)
    rc, out, err = ctl(srv, "jobs", "watch", job["id"])  # ends with the job: cancelled -> 5
    assert rc == 5, (out, err)
    assert re.match(job["id"] + r" cancelled at step \d+/100000", out.splitlines()[-1])
    rc, out, err = ctl(srv, "jobs", "cancel", job["id"])
    assert rc == 1 and "409 conflict" in err, err
    # a queued job is cancelled at once; --json gives the job
    blocker = ctl_json(srv, "jobs", "create",
                       write_job(tmp_path, tiny_job(prompts, steps=100000, checkpoint_every=0),
                                 "b.json"))
    queued = ctl_json(srv, "jobs", "create",
                      write_job(tmp_path, tiny_job(prompts, steps=5), "q.json"))
    j = ctl_json(srv, "jobs", "cancel", queued["id"])
    assert j["state"] == "cancelled"
    assert ctl_json(srv, "jobs", "cancel", blocker["id"])["id"] == blocker["id"]
    srv.wait_job(blocker["id"], lambda j: j["state"] == "cancelled")


def test_create_and_watch(srv, prompts, tmp_path):
    rc, out, err = ctl(srv, "jobs", "create", "-", "--watch",
                       input=json.dumps(tiny_job(prompts, steps=3, checkpoint_every=0)).encode())
    assert rc == 0, err
    lines = out.splitlines()
    assert re.match(r"created job_\w+ 'tiny': grpo, 3 steps, (queued|running)", lines[0]), out
    assert re.search(r"succeeded: 3/3 steps", lines[-1])


# ---- rollouts and checkpoints ----------------------------------------------------------------

def test_rollout_from_a_checkpoint(srv, finished_job):
    rc, out, err = ctl(srv, "rollout", "--checkpoint", finished_job + ":4", "-p", "Compute 1+2.",
                       "-p", "Compute 2+2.", "-a", "3", "-a", "4", "-n", "2", "--max-tokens",
                       "8", "--seed", "3")
    assert rc == 0, (out, err)
    assert re.match(r"roll_\w+  succeeded  4 completions, \d+ tokens", out), out
    assert "prompt 0: Compute 1+2." in out and "prompt 1: Compute 2+2." in out
    assert len(re.findall(r"^\[\d\.\d\] reward \S+ \((correct|wrong|no_answer)\), (stop|length)",
                          out, re.M)) == 4, out
    ro = ctl_json(srv, "rollout", "--checkpoint", finished_job, "-p", "Compute 1+2.", "-n", "3",
                  "--max-tokens", "4", "--temperature", "0.7")
    assert ro["state"] == "succeeded" and len(ro["result"]["completions"]) == 3
    assert ctl_json(srv, "rollout", "show", ro["id"])["id"] == ro["id"]
    # a request document, not waited for
    rc, out, err = ctl(srv, "rollout", "-", "--no-wait", input=json.dumps(
        {"prompts": ["hi"], "checkpoint": {"job_id": finished_job}, "max_tokens": 2}).encode())
    assert rc == 0 and re.match(r"roll_\w+ pending", out), (out, err)
    # refused: exit 1 with the server's message; failed: exit 5 with the rollout's error
    rc, out, err = ctl(srv, "rollout", "--model", "nope", "-p", "x")
    assert rc == 1 and "model" in err and "400 invalid_argument" in err
    rc, out, err = ctl(srv, "rollout", "--checkpoint", finished_job, "-p", "x", "-n", "65")
    assert rc == 2 and "-n: must be an integer in [1, 64]" in err
    d = os.path.join(srv.models_root, "noweights")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(TINY_CONFIG, f)
    rc, out, err = ctl(srv, "rollout", "--model", "noweights", "-p", "x", "--max-tokens", "2")
    assert rc == 5 and "failed" in out and "safetensors" in err, (out, err)


def test_checkpoints_list_and_download(srv, finished_job, tmp_path):
    rc, out, err = ctl(srv, "checkpoints", "list", finished_job)
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split() == ["STEP", "ID", "FILES", "SIZE", "SHA256", "AGE"]
    assert [line.split()[0] for line in lines[1:]] == ["2", "4", "6"]
    cks = ctl_json(srv, "checkpoints", "list", finished_job)["items"]
    latest = cks[-1]

    # the whole latest checkpoint: every file byte for byte as the server serves it
    rc, out, err = ctl(srv, "checkpoints", "download", finished_job, "--out",
                       str(tmp_path / "ck"))
    assert rc == 0 and "downloaded checkpoint 6 of " + finished_job in out, (out, err)
    for f in latest["files"]:
        served = srv.get(f"/v1/jobs/{finished_job}/checkpoints/6/files/{f['path']}").body
        got = (tmp_path / "ck" / f["path"]).read_bytes()
        assert got == served and len(got) == f["bytes"], f["path"]
    assert hashlib.sha256((tmp_path / "ck" / "SHA256SUMS").read_bytes()).hexdigest() == \
        latest["sha256"]
    assert not list((tmp_path / "ck").glob("*.part"))
    # one file of an older step; to stdout; the default directory name
    rc, out, err = ctl(srv, "checkpoints", "download", finished_job, "2", "--file",
                       "model.safetensors", "-o", str(tmp_path / "m2.safetensors"))
    assert rc == 0, err
    assert (tmp_path / "m2.safetensors").read_bytes() == \
        srv.get(f"/v1/jobs/{finished_job}/checkpoints/2/files/model.safetensors").body
    p = subprocess.run([CHORDCTL, "--server", srv.url, "checkpoints", "download", finished_job,
                        "4", "--file", "config.json", "-o", "-"], capture_output=True, timeout=60)
    assert p.returncode == 0 and json.loads(p.stdout) == \
        srv.get(f"/v1/jobs/{finished_job}/checkpoints/4/files/config.json").json()
    p = subprocess.run([CHORDCTL, "--server", srv.url, "--json", "checkpoints", "download",
                        finished_job, "4"], capture_output=True, timeout=60, cwd=tmp_path)
    assert p.returncode == 0 and json.loads(p.stdout)["step"] == 4
    assert (tmp_path / f"{finished_job}-step-4" / "model.safetensors").is_file()
    # missing step, missing file, unknown job
    rc, out, err = ctl(srv, "checkpoints", "download", finished_job, "3")
    assert rc == 1 and "no checkpoint at step 3 (it has: 2, 4, 6)" in err
    rc, out, err = ctl(srv, "checkpoints", "download", finished_job, "--file", "nope.bin")
    assert rc == 1 and "no file 'nope.bin'" in err
    rc, out, err = ctl(srv, "checkpoints", "list", "job_000000000000000000000000")
    assert rc == 1 and "404 not_found" in err


def test_download_progress_on_a_terminal(srv, finished_job, tmp_path):
    rc, drawn = ctl_pty(srv, "checkpoints", "download", finished_job, "--out", str(tmp_path / "d"))
    assert rc == 0, drawn
    text = ANSI.sub("", drawn)
    assert "model.safetensors" in text and "KiB" in text and "/s" in text, drawn
    assert re.search(r"\[[█]+\]", text), drawn


# ---- a server that asks for tokens -----------------------------------------------------------

def test_bearer_token(tmp_path):
    help_text = subprocess.run([os.environ.get("CHORDD", "build/chordd"), "--help"],
                               capture_output=True).stdout + \
        subprocess.run([os.environ.get("CHORDD", "build/chordd"), "serve", "--help"],
                       capture_output=True).stdout
    if b"--auth-token-file" not in help_text:
        pytest.skip("this chordd has no --auth-token-file")
    token = "adm-" + secrets.token_hex(20)
    tokens = tmp_path / "tokens"
    tokens.write_text(f"admin {token}\n")
    tokens.chmod(0o600)
    s = Chordd(extra_args=["--auth-token-file", str(tokens)]).start()
    try:
        rc, out, err = ctl(s, "datasets", "list")
        assert rc == 1 and "401 unauthenticated" in err, err
        assert ctl(s, "datasets", "list", env={"CHORD_TOKEN": token})[0] == 0
        mine = tmp_path / "mine"
        mine.write_text(token + "\n")
        rc, out, err = ctl(s, "--token-file", str(mine), "--json", "datasets", "list")
        assert rc == 0 and json.loads(out)["total"] == 0
        rc, out, err = ctl(s, "datasets", "list", env={"CHORD_TOKEN": "wrong-" + token})
        assert rc == 1 and "401" in err and token not in err
    finally:
        s.stop()
        s.cleanup()


# ---- a server restart under a watcher --------------------------------------------------------

def test_watch_survives_a_server_restart(tmp_path):
    """The server stops mid-job (the job goes back to the queue) and comes back on the same
    port: the watcher reopens the stream from the next step and ends with the job."""
    import chordd_harness
    s = Chordd().start()
    try:
        p = ctl_json(s, "datasets", "upload", "-", "--kind", "prompts",
                     input=jsonl(arith_prompts(40)))["id"]
        job = ctl_json(s, "jobs", "create", write_job(tmp_path, tiny_job(
            p, steps=400, checkpoint_every=50, sampling={"max_new_tokens": 16})))
        watcher = subprocess.Popen([CHORDCTL, "--server", s.url, "jobs", "watch", job["id"]],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        s.wait_job(job["id"], lambda j: j["current_step"] >= 20)
        port = s.port
        assert s.stop() == 0
        time.sleep(1.5)  # the watcher finds nobody there and keeps trying
        real_free_port = chordd_harness.free_port
        chordd_harness.free_port = lambda: port
        try:
            s.start()
        finally:
            chordd_harness.free_port = real_free_port
        out, err = watcher.communicate(timeout=300)
        out, err = out.decode(), err.decode()
        assert watcher.returncode == 0, (out, err)
        steps = [int(line.split()[1].split("/")[0]) for line in out.splitlines()
                 if line.startswith("step ")]
        assert steps == list(range(1, 401)), steps  # each step once, in order
        assert "lost the connection" in err, err
        assert out.splitlines()[-1].startswith(job["id"] + " succeeded: 400/400 steps")
    finally:
        s.stop()
        s.cleanup()
