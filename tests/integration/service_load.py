"""service_load.py — a load check: wrk with many concurrent connections on chordd's read
endpoints while a job trains. Passes when every response is 2xx, the server stays up, the job
keeps training, and its metrics table has every step exactly once afterwards. Prints a table of
requests/s and latency percentiles (docs/operations.md records a run).

Run: CHORDD=build/chordd python tests/integration/service_load.py [SECONDS] [CONNECTIONS]"""
import os
import re
import shutil
import sqlite3
import subprocess
import sys

from chordd_harness import Chordd, arith_expert, arith_prompts, jsonl, tiny_job


def wrk(url, seconds, connections):
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", url],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = dict(re.findall(r"^\s+(50|90|99)%\s+(\S+)", out, re.M))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return rps, lat, int(bad.group(1)) if bad else 0, errors.group(1) if errors else "", out


def main():
    seconds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    conns = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    if not shutil.which("wrk"):
        print("wrk not installed: skipped")
        return 0
    srv = Chordd(extra_args=["--http-threads", "4"]).start()
    try:
        p = srv.upload("prompts", jsonl(arith_prompts(40))).json()["id"]
        e = srv.upload("expert", jsonl(arith_expert(40))).json()["id"]
        job = srv.post("/v1/jobs", tiny_job(p, e, steps=100000, checkpoint_every=50)).json()["id"]
        srv.wait_job(job, lambda j: j["current_step"] >= 3)
        rows = []
        for name, path in (("GET /healthz", "/healthz"),
                           ("GET /v1/jobs/{id}", f"/v1/jobs/{job}"),
                           ("GET /v1/jobs/{id}/metrics (10 steps)",
                            f"/v1/jobs/{job}/metrics?since_step=1&max_steps=10"),
                           ("GET /v1/jobs?limit=10", "/v1/jobs?limit=10")):
            rps, lat, bad, errs, raw = wrk(srv.url + path, seconds, conns)
            assert bad == 0, raw
            assert "timeout" not in errs or errs.endswith("timeout 0"), raw
            rows.append((name, rps, lat.get("50", "?"), lat.get("99", "?")))
        before = srv.get(f"/v1/jobs/{job}").json()["current_step"]
        srv.post(f"/v1/jobs/{job}/cancel")
        j = srv.wait_job(job, lambda j: j["state"] == "cancelled")
        con = sqlite3.connect(os.path.join(srv.data_dir, "chord.db"))
        steps = [r[0] for r in con.execute(
            "SELECT step FROM metrics WHERE job_id = ? AND name = 'loss' ORDER BY step", (job,))]
        con.close()
        assert steps == list(range(1, j["current_step"] + 1)), "lost or duplicated metrics"
        print(f"\nload check: wrk -t2 -c{conns} -d{seconds}s per endpoint while a job trained "
              f"({before} steps by then, {len(steps)} stored, none lost), {os.cpu_count()} CPUs\n")
        print(f"| {'endpoint':<40} | {'requests/s':>10} | {'p50':>8} | {'p99':>8} |")
        print(f"|{'-' * 42}|{'-' * 12}|{'-' * 10}|{'-' * 10}|")
        for name, rps, p50, p99 in rows:
            print(f"| {name:<40} | {rps:>10.0f} | {p50:>8} | {p99:>8} |")
        assert srv.stop() == 0
        return 0
    finally:
        srv.cleanup()


if __name__ == "__main__":
    sys.exit(main())
