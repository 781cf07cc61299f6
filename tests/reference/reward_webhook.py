"""Reference test: chord's webhook verifier against a tiny Python HTTP server on 127.0.0.1.

The server (random free loopback port, started here, stopped at the end) offers endpoints that
score, answer with a bare number, stall, fail with 500, fail once then succeed, return garbage,
and return reasons. Each scenario runs reward_tool (chord's verifier) and checks the reasons, the
rewards, what the server received, how many attempts it saw, and the wall-time bound.
Run: reward_webhook.py <path to reward_tool>
"""
import json
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HITS = {}
BODIES = []
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, status, body):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        req = json.loads(self.rfile.read(length))
        path = self.path
        with LOCK:
            key = (path, req.get("completion"))
            HITS[key] = HITS.get(key, 0) + 1
            attempt = HITS[key]
            HITS[path] = HITS.get(path, 0) + 1
            BODIES.append((path, req, self.headers.get("Content-Type"),
                           self.headers.get("X-Token")))
        if path == "/score":
            ok = req["completion"].strip() == req["answer"]
            self.reply(200, json.dumps({"reward": 1.0 if ok else 0.0, "detail": "scored by python"}))
        elif path == "/number":
            self.reply(200, "0.75")
        elif path == "/delay":
            time.sleep(0.4)
            self.reply(200, json.dumps({"reward": 1.0}))
        elif path == "/slow":
            time.sleep(3.0)
            self.reply(200, json.dumps({"reward": 1.0}))
        elif path == "/fail500":
            self.reply(500, json.dumps({"error": "boom"}))
        elif path == "/flaky":
            if attempt == 1:
                self.reply(503, "{}")
            else:
                self.reply(200, json.dumps({"reward": 1.0}))
        elif path == "/garbage":
            self.reply(200, "this is {not json")
        elif path == "/noanswer":
            self.reply(200, json.dumps({"reward": 0.0, "reason": "no_answer", "detail": "empty"}))
        elif path == "/badreason":
            self.reply(200, json.dumps({"reward": 1.0, "reason": "maybe"}))
        elif path == "/notfound":
            self.reply(404, "{}")
        else:
            self.reply(400, "{}")


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_tool(tool, config, samples, batch=True):
    lines = "".join(json.dumps(s) + "\n" for s in samples)
    args = [tool, json.dumps(config)] + (["--batch"] if batch else [])
    out = subprocess.run(args, input=lines, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    elapsed = float(out.stderr.strip().split("elapsed_s=")[1].split()[0])
    return [json.loads(l) for l in out.stdout.splitlines()], elapsed


def main():
    tool = sys.argv[1]
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    base = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    failures = []

    def check(cond, msg):
        if not cond:
            failures.append(msg)

    def hook(path, **kw):
        return {"type": "webhook", "url": base + path, **kw}

    # 1. scoring: the server sees prompt, completion, answer, truncated; its verdict comes back
    samples = [
        {"prompt": "2+2?", "completion": "4", "answer": "4", "truncated": False},
        {"prompt": "2+3?", "completion": "6", "answer": "5", "truncated": True},
        {"prompt": "héllo ∑", "completion": "ünï", "answer": "ünï"},
    ]
    res, _ = run_tool(tool, hook("/score", headers={"X-Token": "t0k"}), samples)
    check([r["reason"] for r in res] == ["correct", "wrong", "correct"], f"/score reasons {res}")
    check([r["reward"] for r in res] == [1.0, 0.0, 1.0], f"/score rewards {res}")
    check(res[0]["detail"] == "scored by python", f"/score detail {res[0]}")
    got = sorted((b[1]["completion"], b[1]["prompt"], b[1]["answer"], b[1]["truncated"], b[2], b[3])
                 for b in BODIES if b[0] == "/score")
    want = sorted([("4", "2+2?", "4", False, "application/json", "t0k"),
                   ("6", "2+3?", "5", True, "application/json", "t0k"),
                   ("ünï", "héllo ∑", "ünï", False, "application/json", "t0k")])
    check(got == want, f"/score request bodies {got}")

    # the single-sample API (reward_score) gives the same
    res, _ = run_tool(tool, hook("/score"), samples[:2], batch=False)
    check([r["reason"] for r in res] == ["correct", "wrong"], f"/score single {res}")

    # 2. a bare JSON number is a reward
    res, _ = run_tool(tool, hook("/number"), [{"completion": "x", "answer": "y"}])
    check(res[0]["reason"] == "correct" and res[0]["reward"] == 0.75, f"/number {res}")

    # 3. concurrency: 8 requests of 0.4 s each finish together, not one after the other
    samples = [{"completion": f"c{i}", "answer": "a"} for i in range(8)]
    res, elapsed = run_tool(tool, hook("/delay", timeout_ms=5000, max_concurrency=8), samples)
    check(all(r["reason"] == "correct" for r in res), f"/delay {res}")
    check(elapsed < 2.0, f"/delay batch of 8 took {elapsed:.2f}s: not concurrent")

    # 4. a slow endpoint: timeout, retried, bounded by (retries+1)*timeout + back-off
    res, elapsed = run_tool(tool, hook("/slow", timeout_ms=300, retries=1),
                            [{"completion": "s1", "answer": "a"}, {"completion": "s2", "answer": "a"}])
    check(all(r["reason"] == "timeout" and r["reward"] == 0.0 for r in res), f"/slow {res}")
    check(elapsed < 0.3 * 2 + 0.1 + 0.8, f"/slow took {elapsed:.2f}s, over its bound")
    check(HITS.get(("/slow", "s1")) == 2, f"/slow attempts {HITS.get(('/slow', 's1'))}, want 2")

    # 5. HTTP 500: retried, then error (never `wrong`)
    res, _ = run_tool(tool, hook("/fail500", timeout_ms=2000, retries=2),
                      [{"completion": "f", "answer": "a"}])
    check(res[0]["reason"] == "error" and res[0]["reward"] == 0.0, f"/fail500 {res}")
    check("500" in res[0]["detail"], f"/fail500 detail {res}")
    check(HITS.get(("/fail500", "f")) == 3, f"/fail500 attempts {HITS.get(('/fail500', 'f'))}")

    # 6. a 503 once, then success: the retry recovers
    res, _ = run_tool(tool, hook("/flaky", retries=2), [{"completion": "k", "answer": "a"}])
    check(res[0]["reason"] == "correct", f"/flaky {res}")
    check(HITS.get(("/flaky", "k")) == 2, f"/flaky attempts {HITS.get(('/flaky', 'k'))}")

    # 7. garbage JSON: error, not retried
    res, _ = run_tool(tool, hook("/garbage", retries=2), [{"completion": "g", "answer": "a"}])
    check(res[0]["reason"] == "error" and "JSON" in res[0]["detail"], f"/garbage {res}")
    check(HITS.get(("/garbage", "g")) == 1, f"/garbage attempts {HITS.get(('/garbage', 'g'))}")

    # 8. reasons from the webhook; an unknown reason is an error; a 404 is not retried
    res, _ = run_tool(tool, hook("/noanswer"), [{"completion": "n"}])
    check(res[0]["reason"] == "no_answer", f"/noanswer {res}")
    res, _ = run_tool(tool, hook("/noanswer", length_penalty=-1),
                      [{"completion": "n", "truncated": True}])
    check(res[0]["reason"] == "no_answer" and res[0]["reward"] == -1.0, f"/noanswer penalty {res}")
    res, _ = run_tool(tool, hook("/badreason"), [{"completion": "b"}])
    check(res[0]["reason"] == "error", f"/badreason {res}")
    res, _ = run_tool(tool, hook("/notfound", retries=3), [{"completion": "nf"}])
    check(res[0]["reason"] == "error" and HITS.get(("/notfound", "nf")) == 1, f"/notfound {res}")

    # 9. nobody listening: connection refused, retried, error
    dead = f"http://127.0.0.1:{free_port()}/score"
    res, elapsed = run_tool(tool, {"type": "webhook", "url": dead, "timeout_ms": 500, "retries": 1},
                            [{"completion": "d"}])
    check(res[0]["reason"] == "error", f"dead port {res}")
    check(elapsed < 2.0, f"dead port took {elapsed:.2f}s")

    # 10. a sum: a local term and a webhook term add up; a failing webhook term fails the sample
    samples = [{"completion": "\\boxed{4}", "answer": "4"},
               {"completion": "\\boxed{5}", "answer": "4"}]
    summed = {"type": "sum", "terms": [{"type": "math_boxed"},
                                       {**hook("/number"), "weight": 0.5}]}
    res, _ = run_tool(tool, summed, samples)
    check([r["reward"] for r in res] == [1.375, 0.375], f"sum rewards {res}")
    check([r["reason"] for r in res] == ["correct", "wrong"], f"sum reasons {res}")
    res, _ = run_tool(tool, summed, samples[:1], batch=False)
    check(res[0]["reward"] == 1.375, f"sum single {res}")
    broken = {"type": "sum", "terms": [{"type": "math_boxed"},
                                       {**hook("/fail500", retries=0), "weight": 0.1}]}
    res, _ = run_tool(tool, broken, samples)
    check(all(r["reason"] == "error" and r["reward"] == 0.0 and "terms[1] (webhook)" in r["detail"]
              for r in res), f"sum with a failing webhook {res}")

    server.shutdown()
    if failures:
        print("FAILURES:\n" + "\n".join(failures))
        sys.exit(1)
    print("webhook: all scenarios passed")


if __name__ == "__main__":
    main()
