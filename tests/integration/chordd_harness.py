"""chordd_harness.py — starts a real `chordd` on a free loopback port with a temp data dir and
talks to it over real HTTP (the service integration tests and the schemathesis run use it).

Not a test by itself. The binary comes from $CHORDD (set by tests/integration/service.cmake)."""
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

CHORDD = os.environ.get("CHORDD", "build/chordd")

# A tiny Qwen2-style config: trains a step in well under a second on one CPU thread.
TINY_CONFIG = {
    "model_type": "qwen2",
    "architectures": ["Qwen2ForCausalLM"],
    "vocab_size": 1024,  # the embedded default tokenizer's
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 128,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}

# About 1.5e12 parameters (5.5 TiB in float32): more than any host's or GPU's memory, so a job,
# model or rollout on it is refused at submission on any machine (no weights need exist: the
# check runs before anything is loaded).
HUGE_CONFIG = TINY_CONFIG | {"vocab_size": 151936, "hidden_size": 16384, "num_hidden_layers": 400,
                             "num_attention_heads": 128, "num_key_value_heads": 8,
                             "intermediate_size": 65536, "max_position_embeddings": 32768}
# Small weights but a large KV cache per position (64 layers x 1024 floats each of K and V) and
# a long context: 256 prompts x n 64 x 32768 new tokens need about 256 TiB of KV cache.
LONG_KV_CONFIG = TINY_CONFIG | {"num_hidden_layers": 64, "num_attention_heads": 8,
                                "num_key_value_heads": 8, "head_dim": 128,
                                "max_position_embeddings": 65536}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def arith_prompts(n, seed=0):
    """{"prompt","answer"} lines like the built-in task's (computed here, independently)."""
    out = []
    for i in range(n):
        a, b = (i * 7 + seed) % 50, (i * 13 + 3 * seed) % 50
        out.append({"prompt": f"Compute {a}+{b}.", "answer": str(a + b)})
    return out


def arith_expert(n, seed=0):
    out = []
    for i in range(n):
        a, b = (i * 11 + seed) % 50, (i * 5 + 1) % 50
        out.append({"prompt": f"Compute {a}+{b}.", "response": f"{a}+{b}={a + b} \\boxed{{{a + b}}}"})
    return out


def jsonl(rows):
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<{self.status} {self.body[:300]!r}>"


class Chordd:
    """One chordd process on a temp data dir; restartable on the same dir."""

    def __init__(self, extra_args=(), data_dir=None, models_root=None, launcher=(), env=None):
        """launcher: a command chordd runs under (e.g. mpirun -np 2); env: its environment."""
        self.launcher = list(launcher)
        self.env = env
        self.tmp = tempfile.mkdtemp(prefix="chordd-test-")
        self.data_dir = data_dir or os.path.join(self.tmp, "data")
        self.models_root = models_root or os.path.join(self.tmp, "models")
        os.makedirs(self.models_root, exist_ok=True)
        self.extra_args = list(extra_args)
        self.proc = None
        self.port = None
        self.log_path = os.path.join(self.tmp, "chordd.log")

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout=30, wait=True):
        """Starts chordd and waits until /healthz answers 200 (wait=False: returns at once,
        e.g. to kill it while it recovers its data directory)."""
        self.port = free_port()
        args = self.launcher + [
            CHORDD, "--data-dir", self.data_dir, "--http", f"127.0.0.1:{self.port}",
            "--grpc", "off", "--device", "cpu", "--threads", "1",
            "--models-root", self.models_root] + self.extra_args
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=self.env)
        if not wait:
            return self
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chordd exited with {self.proc.returncode}:\n{self.read_log()}")
            try:
                if self.get("/healthz").status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("chordd did not become healthy:\n" + self.read_log())

    def read_log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if not self.proc:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        self.proc = None
        self.log.close()
        return rc

    def cleanup(self):
        self.stop()
        if os.environ.get("CHORD_TEST_KEEP"):  # keep the data dir and log for a post-mortem
            print(f"chordd test data kept in {self.tmp}")
            return
        shutil.rmtree(self.tmp, ignore_errors=True)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    # ---- HTTP ----
    def request(self, method, path, body=None, headers=None, timeout=30):
        data = body
        hdrs = dict(headers or {})
        if isinstance(body, (dict, list)):
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        elif isinstance(body, str):
            data = body.encode()
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return Response(r.status, dict(r.headers), r.read())
        except urllib.error.HTTPError as e:
            return Response(e.code, dict(e.headers), e.read())

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body, **kw)

    def upload(self, kind, data, name=None, content_type="application/x-ndjson"):
        q = f"?kind={kind}" + (f"&name={name}" if name else "")
        return self.request("POST", "/v1/datasets" + q, data,
                            {"Content-Type": content_type} if content_type else {})

    def wait_job(self, job_id, pred, timeout=120, poll=0.05):
        deadline = time.time() + timeout
        while time.time() < deadline:
            j = self.get(f"/v1/jobs/{job_id}").json()
            if pred(j):
                return j
            time.sleep(poll)
        raise AssertionError(f"timeout waiting on job {job_id}: {j}\n{self.read_log()[-3000:]}")

    def wait_rollout(self, rollout_id, timeout=60, poll=0.05):
        """The rollout once it is no longer pending."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            ro = self.get("/v1/rollouts/" + rollout_id).json()
            if ro["state"] != "pending":
                return ro
            time.sleep(poll)
        raise AssertionError(f"rollout {rollout_id} still pending:\n{self.read_log()[-2000:]}")

    def sse(self, path, timeout=120):
        """Yields (event, data) pairs of a Server-Sent Events stream until it ends."""
        req = urllib.request.Request(self.url + path, headers={"Accept": "text/event-stream"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            event, data = None, []
            for raw in r:
                line = raw.decode().rstrip("\n")
                if line == "":
                    if data:
                        yield event or "message", json.loads("\n".join(data))
                    event, data = None, []
                elif line.startswith(":"):
                    yield ":comment", line
                elif line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data.append(line[6:])


def tiny_job(prompts, expert=None, **over):
    doc = {
        "name": "tiny",
        "model": {"init": {"config": TINY_CONFIG, "seed": 3}},
        "data": {"prompts": prompts} | ({"expert": expert} if expert else {}),
        "algorithm": "chord" if expert else "grpo",
        "grpo": {"group_size": 2, "prompts_per_step": 2},
        "sampling": {"max_new_tokens": 6},
        "optimizer": {"lr": 1e-3},
        "steps": 6,
        "seed": 7,
        "checkpoint_every": 2,
        "eval": {"every": 0},
        "micro_batch_tokens": 1024,
    }
    if expert:
        doc["expert_per_step"] = 2
        doc["chord"] = {"mu": {"warmup_steps": 1, "decay_steps": 4, "peak": 0.5, "valley": 0.1}}
    doc.update(over)
    return doc
