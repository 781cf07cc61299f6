"""crash_test.py — chordd SIGKILLed at random instants, again and again, on one data directory:
nothing committed is lost, nothing is duplicated, nothing is half-written, and the jobs end with
the same weights as an uninterrupted run.

Each round draws a phase (seeded RNG) and kills chordd in it: during a training step, during a
checkpoint write (a step_N.tmp directory seen on disk), during a dataset upload (a few MiB of
JSONL streamed slowly), with rollout requests pending, during its own start-up (recovery,
requeue, resume), or during a graceful stop (SIGTERM, then SIGKILL). Then, with chordd dead, a
copy of the database as the crash left it (chord.db + chord.db-wal, SQLite's own recovery) is
checked:
  - PRAGMA integrity_check = ok, foreign keys hold;
  - every job's metrics are steps 1..current_step, each step once with every metric name, and
    its samples cover exactly those steps;
  - every checkpoint row's directory verifies by its SHA256SUMS (every file listed, every hash
    right, the manifest's own hash = the row's sha256);
  - every dataset row's file has the row's bytes, lines and sha256, which are those of what the
    test sent under that name (an upload is complete or absent, never partial);
  - every rollout request that was accepted (202) has its row.
chordd restarts on the same directory and the live server is checked again (integrity, the
metrics over REST, no dataset leftovers); an interrupted upload is sent again and must succeed
whole; every pending rollout ends succeeded (with the samples of the same seeded request run
uninterrupted) or failed with an error — never pending for ever.
At the end every job runs to completion: each ends succeeded with steps 1..N exactly once, the
metric values of the uninterrupted reference run (the same job document, run first without
kills) and byte-identical final weights (model.safetensors and optimizer.safetensors of the last
checkpoint).

    CHORDD=build/chordd python tests/integration/crash_test.py              # 8 kills (CI)
    CHORDD=build/chordd python tests/integration/crash_test.py --kills 60 --report r.json

Figures (kills by phase and by what was found in flight, checks made, time) are printed at the
end and written as JSON with --report; docs/robustness.md records a full run."""
import argparse
import hashlib
import http.client
import json
import os
import platform
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

from chordd_harness import TINY_CONFIG, Chordd, arith_expert, arith_prompts, jsonl, tiny_job

PHASES = ("training", "checkpoint", "upload", "rollout", "startup", "shutdown")
# Larger than the harness's tiny model so that a step, a checkpoint write and a rollout each
# take long enough (milliseconds to tens of milliseconds on one CPU thread) to be hit.
CRASH_CONFIG = TINY_CONFIG | {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
                              "num_attention_heads": 4, "num_key_value_heads": 2}
ROLLOUT_SEEDS = (11, 12, 13)


class CheckFailed(AssertionError):
    pass


def check(cond, what):
    if not cond:
        raise CheckFailed(what)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def deterministic(metrics):
    """The metrics that do not depend on wall time or on the process (its memory peak)."""
    return {k: v for k, v in metrics.items()
            if not k.startswith(("time/", "tokens_per_s/", "memory/"))}


class Figures:
    def __init__(self):
        self.kills = 0
        self.by_phase = {p: 0 for p in PHASES}
        # what the data directory and database showed right after each kill
        self.found = {"job running": 0, "checkpoint .tmp on disk": 0,
                      "checkpoint renamed, no row yet": 0, "upload .tmp on disk": 0,
                      "upload body in flight": 0, "rollouts pending": 0, "chordd starting": 0,
                      "stopped before the kill": 0, "job requeued by the stop": 0}
        self.restarts = 0
        self.jobs = 0
        self.steps_checked = 0
        self.checkpoints_verified = 0
        self.datasets_verified = 0
        self.uploads = {"sent": 0, "interrupted": 0, "absent after restart": 0,
                        "complete after restart": 0, "retried ok": 0}
        self.rollouts = {"accepted": 0, "pending at a kill": 0, "succeeded": 0, "failed": 0}
        self.resumes = 0
        self.integrity_checks = 0

    def as_dict(self):
        return dict(self.__dict__)


class CrashTest:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.fig = Figures()
        self.srv = Chordd()
        self.sent = {}  # upload name -> (sha256, lines, bytes) of what was sent
        self.rollouts = {}  # accepted rollout id -> seed
        self.ref_rollouts = {}  # seed -> token ids of the uninterrupted request
        self.jobs = []  # crash job ids
        self.upload_seq = 0

    # ---- set-up: datasets, the reference job, calibration -----------------------------------
    def setup(self):
        t0 = time.time()
        s = self.srv.start()
        self.start_seconds = time.time() - t0
        self.prompts = self.upload_ok(jsonl(arith_prompts(200)), "prompts", "crash-prompts")
        self.expert = self.upload_ok(jsonl(arith_expert(200)), "expert", "crash-expert")
        self.doc = tiny_job(self.prompts, self.expert, name="crash",
                            model={"init": {"config": CRASH_CONFIG, "seed": 5}},
                            steps=self.args.steps, checkpoint_every=3, keep_checkpoints=3,
                            grpo={"group_size": 4, "prompts_per_step": 4}, expert_per_step=4,
                            sampling={"max_new_tokens": 32})
        t0 = time.time()
        self.ref = s.post("/v1/jobs", self.doc).json()["id"]
        j = s.wait_job(self.ref, lambda j: j["state"] not in ("queued", "running"), timeout=600)
        check(j["state"] == "succeeded", f"reference job: {j}")
        self.job_seconds = time.time() - t0
        self.step_seconds = self.job_seconds / self.args.steps
        self.ref_metrics = self.metrics_db(s.data_dir, self.ref)
        self.metric_names = set(self.ref_metrics[1])
        ck = self.checkpoint_rows(s.data_dir, self.ref)
        self.ref_final = ck[-1][2]
        check(ck[-1][1] == self.args.steps, "the reference's last checkpoint is its last step")
        for seed in ROLLOUT_SEEDS:
            ro = s.wait_rollout(s.post("/v1/rollouts", self.rollout_request(seed)).json()["id"])
            check(ro["state"] == "succeeded", f"reference rollout: {ro}")
            self.ref_rollouts[seed] = [c["token_ids"] for c in ro["result"]["completions"]]
        t0 = time.time()
        for seed in ROLLOUT_SEEDS:
            s.wait_rollout(s.post("/v1/rollouts", self.rollout_request(seed)).json()["id"])
        self.rollout_seconds = (time.time() - t0) / len(ROLLOUT_SEEDS)
        name, body = self.next_upload()
        t0 = time.time()
        status, _ = self.stream_upload(body, name, threading.Event())
        self.upload_seconds = time.time() - t0
        check(status == 201, f"calibration upload: {status}")
        print(f"reference job: {self.args.steps} steps in {self.job_seconds:.1f}s; a rollout "
              f"{self.rollout_seconds * 1000:.0f}ms; a {len(body) >> 20} MiB upload "
              f"{self.upload_seconds:.2f}s", flush=True)

    def rollout_request(self, seed):
        prompts = [r["prompt"] for r in arith_prompts(6, seed=seed)]
        return {"prompts": prompts, "checkpoint": {"job_id": self.ref, "step": self.args.steps},
                "n": 8, "max_tokens": 48, "seed": seed, "temperature": 1.0,
                "answers": [r["answer"] for r in arith_prompts(6, seed=seed)]}

    def upload_ok(self, body, kind, name):
        r = self.srv.upload(kind, body, name=name)
        check(r.status == 201, f"upload {name}: {r}")
        d = r.json()
        check(d["sha256"] == hashlib.sha256(body).hexdigest(), f"upload {name}: sha256")
        return d["id"]

    def next_upload(self):
        """A fresh upload (name and body), recorded as sent."""
        self.upload_seq += 1
        name = f"crash-upload-{self.upload_seq}"
        n = max(1, self.args.upload_mb * (1 << 20) // 44)
        body = jsonl(arith_prompts(n, seed=self.upload_seq))
        self.sent[name] = (hashlib.sha256(body).hexdigest(), body.count(b"\n"), len(body))
        self.fig.uploads["sent"] += 1
        return name, body

    def stream_upload(self, body, name, done, chunk=1 << 16, pause=0.004):
        """POSTs body in chunks with short pauses (so that a kill can land inside it).
        Returns (status, json) or (None, exception); sets done when it returns."""
        try:
            c = http.client.HTTPConnection("127.0.0.1", self.srv.port, timeout=60)
            c.putrequest("POST", f"/v1/datasets?kind=prompts&name={name}")
            c.putheader("Content-Type", "application/x-ndjson")
            c.putheader("Content-Length", str(len(body)))
            c.endheaders()
            for off in range(0, len(body), chunk):
                c.send(body[off:off + chunk])
                time.sleep(pause)
            r = c.getresponse()
            out = (r.status, json.loads(r.read()))
            c.close()
            return out
        except (OSError, http.client.HTTPException, ValueError) as e:
            return None, e
        finally:
            done.set()

    # ---- reading the store ------------------------------------------------------------------
    @staticmethod
    def connect(path, ro=True):
        """Autocommit (isolation_level None): check_db opens its own read transaction."""
        if ro:
            return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30,
                                   isolation_level=None)
        return sqlite3.connect(path, timeout=30, isolation_level=None)

    def metrics_db(self, data_dir, job):
        con = self.connect(os.path.join(data_dir, "chord.db"))
        try:
            out = {}
            for step, name, value in con.execute(
                    "SELECT step, name, value FROM metrics WHERE job_id = ?", (job,)):
                out.setdefault(step, {})[name] = value
            return out
        finally:
            con.close()

    def checkpoint_rows(self, data_dir, job):
        con = self.connect(os.path.join(data_dir, "chord.db"))
        try:
            return [(p, st, os.path.join(data_dir, p), sha) for p, st, sha in con.execute(
                "SELECT path, step, sha256 FROM checkpoints WHERE job_id = ? ORDER BY step",
                (job,))]
        finally:
            con.close()

    def checkpoint_row_now(self, data_dir, job, step):
        """Whether the row is there now (outside check_db's snapshot)."""
        con = self.connect(os.path.join(data_dir, "chord.db"))
        try:
            return con.execute("SELECT 1 FROM checkpoints WHERE job_id = ? AND step = ?",
                               (job, step)).fetchall() != []
        finally:
            con.close()

    def verify_checkpoint(self, path, sha):
        """The directory verifies by its SHA256SUMS and the manifest's hash is the row's."""
        manifest = os.path.join(path, "SHA256SUMS")
        check(os.path.isfile(manifest), f"{path}: no SHA256SUMS")
        check(sha256_file(manifest) == sha, f"{path}: SHA256SUMS hash is not the row's")
        listed = set()
        with open(manifest) as f:
            for line in f:
                digest, rel = line.rstrip("\n").split("  ", 1)
                listed.add(rel)
                check(sha256_file(os.path.join(path, rel)) == digest, f"{path}/{rel}: hash")
        on_disk = set()
        for root, _, files in os.walk(path):
            for f in files:
                on_disk.add(os.path.relpath(os.path.join(root, f), path))
        check(on_disk - {"SHA256SUMS"} == listed, f"{path}: files {on_disk} vs listed {listed}")
        self.fig.checkpoints_verified += 1

    def check_db(self, con, data_dir, live):
        """The store's invariants on one connection (a crash copy, or the live database), read
        in one transaction: one snapshot while chordd goes on writing."""
        check(con.execute("PRAGMA integrity_check").fetchall() == [("ok",)], "integrity_check")
        con.execute("BEGIN")
        try:
            self.check_snapshot(con, data_dir, live)
        finally:
            con.execute("COMMIT")

    def check_snapshot(self, con, data_dir, live):
        check(con.execute("PRAGMA foreign_key_check").fetchall() == [], "foreign_key_check")
        self.fig.integrity_checks += 1
        jobs = con.execute("SELECT id, state, current_step FROM jobs").fetchall()
        for job, state, current in jobs:
            rows = con.execute("SELECT step, COUNT(*), COUNT(DISTINCT name) FROM metrics "
                               "WHERE job_id = ? GROUP BY step ORDER BY step", (job,)).fetchall()
            steps = [r[0] for r in rows]
            check(steps == list(range(1, len(steps) + 1)),
                  f"job {job}: metric steps not 1..n: {steps}")
            for step, count, distinct in rows:
                names = {n for n, in con.execute(
                    "SELECT name FROM metrics WHERE job_id = ? AND step = ?", (job, step))}
                check(count == distinct and names == self.metric_names,
                      f"job {job} step {step}: metrics {sorted(names)} ({count} rows)")
            if steps:
                check(current == steps[-1],
                      f"job {job}: current_step {current}, metrics to {steps[-1]}")
            else:
                check(current <= 0, f"job {job}: current_step {current} but no metrics")
            sample_steps = [s for s, in con.execute(
                "SELECT DISTINCT step FROM samples WHERE job_id = ? ORDER BY step", (job,))]
            check(sample_steps == steps, f"job {job}: samples of steps {sample_steps} vs {steps}")
            self.fig.steps_checked += len(steps)
        ckpts = con.execute("SELECT job_id, step, path, sha256 FROM checkpoints").fetchall()
        for job, step, path, sha in ckpts:
            full = os.path.join(data_dir, path)
            try:
                self.verify_checkpoint(full, sha)
            except (CheckFailed, FileNotFoundError):
                # live: keep-last may have deleted it since (rows first, then directories)
                if live and not self.checkpoint_row_now(data_dir, job, step):
                    continue
                raise
        for ds, name, path, lines, size, sha in con.execute(
                "SELECT id, name, path, line_count, bytes, sha256 FROM datasets"):
            full = os.path.join(data_dir, path)
            check(os.path.isfile(full), f"dataset {ds}: no file")
            check(os.path.getsize(full) == size and sha256_file(full) == sha,
                  f"dataset {ds}: file differs from its row")
            if name in self.sent:
                check(self.sent[name] == (sha, lines, size),
                      f"dataset {ds} ({name}): partial or wrong content {(sha, lines, size)} "
                      f"vs sent {self.sent[name]}")
            self.fig.datasets_verified += 1
        known = {r for r, in con.execute("SELECT id FROM rollouts")}
        lost = set(self.rollouts) - known
        check(not lost, f"accepted rollouts lost: {lost}")

    def crash_copy_checks(self, evidence):
        """With chordd dead: the database as the crash left it, on a copy (SQLite recovers the
        WAL there; the live directory is left to chordd's own recovery)."""
        d = self.srv.data_dir
        tmp = tempfile.mkdtemp(prefix="crash-copy-")
        try:
            for f in ("chord.db", "chord.db-wal"):
                if os.path.exists(os.path.join(d, f)):
                    shutil.copyfile(os.path.join(d, f), os.path.join(tmp, f))
            con = self.connect(os.path.join(tmp, "chord.db"), ro=False)
            try:
                self.check_db(con, d, live=False)
                if con.execute("SELECT 1 FROM jobs WHERE state = 'running'").fetchall():
                    evidence.add("job running")
                rows = {(j, st) for j, st in con.execute("SELECT job_id, step FROM checkpoints")}
                pending = {r for r, in con.execute("SELECT id FROM rollouts WHERE state='pending'")}
                names = {n for n, in con.execute("SELECT name FROM datasets")}
            finally:
                con.close()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        ck_root = os.path.join(d, "checkpoints")
        for job in os.listdir(ck_root) if os.path.isdir(ck_root) else []:
            for e in os.listdir(os.path.join(ck_root, job)):
                if e.endswith(".tmp"):
                    evidence.add("checkpoint .tmp on disk")
                elif e.startswith("step_") and (job, int(e[5:])) not in rows:
                    evidence.add("checkpoint renamed, no row yet")
        if any(e.endswith(".jsonl.tmp") for e in os.listdir(os.path.join(d, "datasets"))):
            evidence.add("upload .tmp on disk")
        mine = pending & set(self.rollouts)
        if mine:
            evidence.add("rollouts pending")
            self.fig.rollouts["pending at a kill"] += len(mine)
        return names

    def live_checks(self):
        s = self.srv
        con = self.connect(os.path.join(s.data_dir, "chord.db"))
        try:
            self.check_db(con, s.data_dir, live=True)
        finally:
            con.close()
        for job in self.jobs + [self.ref]:
            r = s.get(f"/v1/jobs/{job}/metrics?since_step=0")
            check(r.status == 200, f"metrics of {job}: {r}")
            steps = [x["step"] for x in r.json()["steps"]]
            check(steps == list(range(1, len(steps) + 1)), f"REST metrics of {job}: {steps}")
            for x in r.json()["steps"]:
                check(set(x["metrics"]) == self.metric_names, f"REST metrics of {job}: names")

    def check_leftovers(self):
        """After a restart (no upload in flight): no upload temp file and no dataset file without
        its row; no checkpoint directory without its row under a job that has ended."""
        d = self.srv.data_dir
        con = self.connect(os.path.join(d, "chord.db"))
        try:
            datasets = {i for i, in con.execute("SELECT id FROM datasets")}
            ended = {i for i, in con.execute(
                "SELECT id FROM jobs WHERE state NOT IN ('queued', 'running')")}
            ckpts = set(con.execute("SELECT job_id, step FROM checkpoints").fetchall())
        finally:
            con.close()
        for e in os.listdir(os.path.join(d, "datasets")):
            check(e.endswith(".jsonl") and e[:-6] in datasets,
                  f"dataset leftover after restart: {e}")
        for job in ended & set(os.listdir(os.path.join(d, "checkpoints"))):
            for e in os.listdir(os.path.join(d, "checkpoints", job)):
                check(e.startswith("step_") and not e.endswith(".tmp")
                      and (job, int(e[5:])) in ckpts,
                      f"checkpoint leftover after restart: {job}/{e}")

    # ---- the kill loop -----------------------------------------------------------------------
    def active_job(self):
        """A crash job queued or running (submitting a new one when none is)."""
        for job in self.jobs:
            if self.srv.get(f"/v1/jobs/{job}").json()["state"] in ("queued", "running"):
                return job
        r = self.srv.post("/v1/jobs", self.doc)
        check(r.status == 201, f"job submission: {r}")
        self.jobs.append(r.json()["id"])
        self.fig.jobs += 1
        return self.jobs[-1]

    def wait_running(self, job, min_step):
        return self.srv.wait_job(job, lambda j: j["state"] != "queued" and (
            j["current_step"] >= min_step or j["state"] != "running"), timeout=120, poll=0.005)

    def kill(self):
        self.srv.stop(signal.SIGKILL)
        self.fig.kills += 1

    def round(self, phase):
        s = self.srv
        evidence = set()
        upload = None
        job = self.active_job()
        j = self.wait_running(job, 0)
        if phase == "training":
            if j["state"] == "running":
                self.wait_running(job, j["current_step"] + 1)
            time.sleep(self.rng.uniform(0, 2 * self.step_seconds))
            self.kill()
        elif phase == "checkpoint":
            jobdir = os.path.join(s.data_dir, "checkpoints", job)
            deadline = time.time() + 60
            delay = self.rng.uniform(0, 0.01)
            polls = 0
            while time.time() < deadline:
                try:
                    if any(e.endswith(".tmp") for e in os.listdir(jobdir)):
                        break
                except FileNotFoundError:
                    pass
                polls += 1
                if polls % 500 == 0 and s.get(f"/v1/jobs/{job}").json()["state"] not in (
                        "queued", "running"):
                    job = self.active_job()  # it ended between two polls: the next one
                    jobdir = os.path.join(s.data_dir, "checkpoints", job)
            time.sleep(delay)
            self.kill()
        elif phase == "upload":
            name, body = self.next_upload()
            done = threading.Event()
            result = []
            t = threading.Thread(target=lambda: result.append(self.stream_upload(body, name, done)))
            t.start()
            # a third of the kills near the end of the body: the commit (fsync, rename, row)
            end = self.rng.random() < 1 / 3
            time.sleep(self.upload_seconds * (self.rng.uniform(0.9, 1.1) if end
                                              else self.rng.uniform(0, 1)))
            if not done.is_set():
                evidence.add("upload body in flight")
            self.kill()
            t.join()
            upload = (name, body, result[0])
        elif phase == "rollout":
            ck = s.get(f"/v1/jobs/{job}/checkpoints").json()["items"]
            for _ in range(self.rng.randint(1, 3)):
                seed = self.rng.choice(ROLLOUT_SEEDS)
                req = self.rollout_request(seed)
                if ck and self.rng.random() < 0.5:
                    # on the crashing job's newest checkpoint: its samples are not known in
                    # advance (and keep-last may delete it before the request runs)
                    req["checkpoint"] = {"job_id": job, "step": ck[-1]["step"]}
                    seed = None
                r = s.post("/v1/rollouts", req)
                check(r.status == 202, f"rollout: {r}")
                self.rollouts[r.json()["id"]] = seed
                self.fig.rollouts["accepted"] += 1
            time.sleep(self.rng.uniform(0, 1.5 * self.rollout_seconds))
            self.kill()
        elif phase == "startup":
            # killed, then killed again while the next process recovers the directory (WAL
            # replay, leftovers removed, jobs requeued, rollouts queued again) or resumes a job
            self.wait_running(job, j["current_step"] + 1)
            self.kill()
            self.fig.by_phase["training"] += 1
            s.start(wait=False)
            self.fig.restarts += 1
            time.sleep(self.rng.uniform(0, self.start_seconds))
            self.kill()
        elif phase == "shutdown":
            # SIGTERM (stop after the step, checkpoint it, requeue the job), then SIGKILL while
            # that graceful stop is under way
            self.wait_running(job, j["current_step"] + 1)
            s.proc.send_signal(signal.SIGTERM)
            time.sleep(self.rng.uniform(0, 0.1))
            if s.proc.poll() is not None:
                evidence.add("stopped before the kill")
            self.kill()
        self.fig.by_phase[phase] += 1
        if phase == "startup":
            evidence.add("chordd starting")
        names = self.crash_copy_checks(evidence)
        if phase == "shutdown" and "job running" not in evidence:
            evidence.add("job requeued by the stop")
        for e in evidence:
            self.fig.found[e] += 1

        s.start()
        self.fig.restarts += 1
        self.live_checks()
        self.check_leftovers()
        if upload:
            name, body, (status, answer) = upload
            if status is None:
                self.fig.uploads["interrupted"] += 1
            committed = name in names
            self.fig.uploads["complete after restart" if committed else "absent after restart"] += 1
            # sent again (what a client whose upload broke does): complete, whole
            self.sent[name + "-retry"] = self.sent[name]
            d = s.upload("prompts", body, name=name + "-retry")
            check(d.status == 201, f"retried upload {name}: {d}")
            d = d.json()
            check((d["sha256"], d["lines"], d["bytes"]) == self.sent[name],
                  f"retried upload {name}: {d}")
            with open(os.path.join(s.data_dir, "datasets", d["id"] + ".jsonl"), "rb") as f:
                check(f.read() == body, f"retried upload {name}: file content")
            self.fig.uploads["retried ok"] += 1
        self.settle_rollouts()
        print(f"kill {self.fig.kills:3d} [{phase:10s}] found: {', '.join(sorted(evidence)) or '-'}",
              flush=True)

    def settle_rollouts(self):
        """Every accepted rollout ends: succeeded with the uninterrupted samples, or failed with
        an error."""
        for rid, seed in list(self.rollouts.items()):
            ro = self.srv.wait_rollout(rid, timeout=120)
            if ro["state"] == "succeeded":
                ids = [c["token_ids"] for c in ro["result"]["completions"]]
                if seed is None:
                    check(len(ids) == len(self.ref_rollouts[ROLLOUT_SEEDS[0]]),
                          f"rollout {rid}: {len(ids)} completions")
                else:
                    check(ids == self.ref_rollouts[seed], f"rollout {rid}: samples differ")
                self.fig.rollouts["succeeded"] += 1
            else:
                check(ro["state"] == "failed" and ro.get("error"), f"rollout {rid}: {ro}")
                print(f"  rollout {rid} failed: {ro['error']}", flush=True)
                self.fig.rollouts["failed"] += 1
            del self.rollouts[rid]

    # ---- the end: every job to completion, identical to the reference ----------------------
    def finish(self):
        s = self.srv
        for job in self.jobs:
            j = s.wait_job(job, lambda j: j["state"] not in ("queued", "running"), timeout=600)
            check(j["state"] == "succeeded", f"job {job}: {j}")
            m = self.metrics_db(s.data_dir, job)
            check(sorted(m) == list(range(1, self.args.steps + 1)), f"job {job}: steps {sorted(m)}")
            for step in m:
                check(deterministic(m[step]) == deterministic(self.ref_metrics[step]),
                      f"job {job} step {step}: metrics differ from the uninterrupted run")
            ck = self.checkpoint_rows(s.data_dir, job)
            check(ck[-1][1] == self.args.steps, f"job {job}: last checkpoint {ck[-1][1]}")
            for f in ("model.safetensors", "optimizer.safetensors"):
                with open(os.path.join(ck[-1][2], f), "rb") as a, \
                        open(os.path.join(self.ref_final, f), "rb") as b:
                    check(a.read() == b.read(), f"job {job}: final {f} differs from the reference")
        self.live_checks()
        self.fig.resumes = s.read_log().count("resuming after step")
        check(s.stop() == 0, "clean stop")

    def run(self):
        t0 = time.time()
        self.setup()
        phases = []
        while self.fig.kills < self.args.kills:
            if not phases:
                phases = list(PHASES)
                self.rng.shuffle(phases)
            self.round(phases.pop())
        self.finish()
        return time.time() - t0


def machine():
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--steps", type=int, default=40, help="steps of each job")
    ap.add_argument("--upload-mb", type=int, default=4, help="size of an upload in flight")
    ap.add_argument("--report", help="write the figures as JSON here")
    args = ap.parse_args()
    t = CrashTest(args)
    ok = False
    try:
        seconds = t.run()
        ok = True
    except CheckFailed as e:
        print(f"CHECK FAILED after {t.fig.kills} kills: {e}", flush=True)
        print(t.srv.read_log()[-4000:] if os.path.exists(t.srv.log_path) else "")
        seconds = None
    finally:
        t.srv.cleanup()
    fig = t.fig.as_dict()
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=here).stdout.strip()
    except OSError:
        commit = ""
    fig.update(seed=args.seed, steps_per_job=args.steps, upload_mb=args.upload_mb,
               seconds=round(seconds, 1) if seconds else None, ok=ok, machine=machine(),
               date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), commit=commit)
    print(json.dumps(fig, indent=2))
    if args.report:
        with open(args.report, "w") as f:
            json.dump(fig, f, indent=2)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
