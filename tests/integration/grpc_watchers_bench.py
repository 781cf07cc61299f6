"""grpc_watchers_bench.py — do 100 concurrent WatchJob streams on one training job slow the
training down? A real chordd (one CPU worker, --threads 1) trains the same job (same config, same
seed) several times, alternately with no watcher and with N gRPC watchers (grpc.aio, one client
process) streaming every event; the trainer's own per-step wall time (metric `time/step`) and
the job's wall time are compared. Every watcher must receive every step and the final state.

Prints a table (docs/benchmarks.md "gRPC watchers"). Timing is reported, not asserted (a shared
machine's load swamps a few percent) unless --max-slowdown is given; what is asserted is that
every watcher got every event and chordd exited cleanly.

Run: CHORDD=build/chordd python tests/integration/grpc_watchers_bench.py [--watchers 100]"""
import argparse
import asyncio
import os
import platform
import statistics
import sys
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chordd_harness import arith_expert, arith_prompts, jsonl  # noqa: E402
from grpc_harness import GrpcChordd, stubs, to_struct  # noqa: E402

pb, pbg = stubs()

# A step of ~tens of ms on one core: big enough that per-step costs are visible, small enough
# for a test.
CONFIG = {
    "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "vocab_size": 1024,
    "hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
    "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
}


def job_doc(prompts, expert, steps):
    return {
        "name": "bench-watchers",
        "model": {"init": {"config": CONFIG, "seed": 1}},
        "data": {"prompts": prompts, "expert": expert},
        "algorithm": "chord",
        "chord": {"mu": {"warmup_steps": 2, "decay_steps": 20, "peak": 0.5, "valley": 0.1}},
        "grpo": {"group_size": 4, "prompts_per_step": 4},
        "expert_per_step": 4,
        "sampling": {"max_new_tokens": 12},
        "optimizer": {"lr": 1e-3},
        "steps": steps, "seed": 11, "checkpoint_every": 0,
        "eval": {"every": 0}, "micro_batch_tokens": 4096,
    }


async def watch_all(target, job_id, n, started):
    """n WatchJob streams on job_id; returns each one's list of step numbers and final flag."""
    async with grpc.aio.insecure_channel(target) as ch:
        stub = pbg.ChordStub(ch)

        async def one():
            steps, final = [], False
            async for ev in stub.WatchJob(pb.WatchJobRequest(id=job_id), timeout=600):
                if ev.type == "step":
                    steps.append(ev.step)
                final = final or ev.final
            return steps, final
        tasks = [asyncio.ensure_future(one()) for _ in range(n)]
        await asyncio.sleep(0.5)  # every stream is open before the job is released
        started.set_result(True)
        return await asyncio.gather(*tasks)


def cpu_seconds(pid):
    """User + system CPU time of the whole chordd process (every thread)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_job(srv, stub, prompts, expert, steps, watchers):
    """Trains one job with `watchers` streams on it; returns (median time/step, sum of step
    times, chordd CPU seconds from release to the end)."""
    doc = job_doc(prompts, expert, steps)
    # hold the worker while the watchers connect: a blocker job that we cancel
    blocker = stub.CreateJob(pb.CreateJobRequest(job=to_struct(job_doc(prompts, expert, 100000))))
    job = stub.CreateJob(pb.CreateJobRequest(job=to_struct(doc)))
    srv.wait_job(blocker.id, lambda j: j["state"] == "running")

    async def main():
        started = asyncio.get_running_loop().create_future()
        w = asyncio.ensure_future(watch_all(srv.target, job.id, watchers, started)) \
            if watchers else None
        if w:
            await started
        cpu[0] = cpu_seconds(srv.proc.pid)
        stub.CancelJob(pb.CancelJobRequest(id=blocker.id))
        return await w if w else []
    cpu = [0.0]
    results = asyncio.run(main())
    done = srv.wait_job(job.id, lambda j: j["state"] in ("succeeded", "failed", "cancelled"),
                        timeout=600)
    cpu = cpu_seconds(srv.proc.pid) - cpu[0]
    assert done["state"] == "succeeded", done
    for steps_seen, final in results:
        assert steps_seen == list(range(1, steps + 1)) and final, (steps_seen[:5], final)
    m = srv.get(f"/v1/jobs/{job.id}/metrics").json()["steps"]
    times = [s["metrics"]["time/step"] for s in m[1:]]  # step 1 warms caches
    wall = sum(s["metrics"]["time/step"] for s in m)
    return statistics.median(times), wall, cpu


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--watchers", type=int, default=100)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--max-slowdown", type=float, default=None,
                    help="fail when the median-of-runs time/step grows by more (e.g. 0.05)")
    a = ap.parse_args()
    srv = GrpcChordd().start()
    try:
        stub = srv.stub()

        def up(kind, body):
            return stub.UploadDataset(iter([pb.UploadDatasetRequest(kind=kind, data=body)])).id
        prompts = up("prompts", jsonl(arith_prompts(200)))
        expert = up("expert", jsonl(arith_expert(200)))
        runs = {0: [], a.watchers: []}
        for r in range(a.rounds):
            for n in ((0, a.watchers) if r % 2 == 0 else (a.watchers, 0)):
                med, wall, cpu = run_job(srv, stub, prompts, expert, a.steps, n)
                runs[n].append((med, wall, cpu))
                print(f"round {r}: {n:3d} watchers: median time/step {med * 1e3:.2f} ms, "
                      f"sum of step times {wall:.2f} s, chordd CPU {cpu:.2f} s", flush=True)

        def best(n, i):  # the least disturbed run: other load on the machine only adds
            return min(x[i] for x in runs[n])

        def mid(n, i):
            return statistics.median(x[i] for x in runs[n])
        b, w = best(0, 0), best(a.watchers, 0)
        bm, wm = mid(0, 0), mid(a.watchers, 0)
        bw, ww = best(0, 1), best(a.watchers, 1)
        bc, wc = mid(0, 2), mid(a.watchers, 2)
        machine = f"{platform.machine()}, {os.cpu_count()} cores, chordd --threads 1"
        print()
        print(f"| measured ({a.steps} steps, {a.rounds} rounds each) | {a.watchers} watchers | "
              f"no watcher | ratio | machine |")
        print("|---|---|---|---|---|")
        print(f"| time/step, best run's median | {w * 1e3:.2f} ms | {b * 1e3:.2f} ms | "
              f"{w / b:.3f} | {machine} |")
        print(f"| time/step, median of runs | {wm * 1e3:.2f} ms | {bm * 1e3:.2f} ms | "
              f"{wm / bm:.3f} | {machine} |")
        print(f"| job time (sum of step times), best run | {ww:.2f} s | {bw:.2f} s | "
              f"{ww / bw:.3f} | {machine} |")
        print(f"| chordd CPU per step (all threads) | {wc / a.steps * 1e3:.2f} ms | "
              f"{bc / a.steps * 1e3:.2f} ms | {wc / bc:.3f} | {machine} |")
        print(f"\ngRPC cost per watcher per step: "
              f"{(wc - bc) / a.steps / a.watchers * 1e6:.0f} us of CPU")
        rc = srv.stop()
        assert rc == 0, "chordd did not exit cleanly"
        if a.max_slowdown is not None and wm / bm - 1 > a.max_slowdown:
            print(f"FAIL: {a.watchers} watchers slow a step by {100 * (wm / bm - 1):.1f}% "
                  f"(> {100 * a.max_slowdown:.0f}%)")
            return 1
        return 0
    except BaseException:
        print("chordd log (tail):\n" + srv.read_log()[-4000:], file=sys.stderr)
        raise
    finally:
        srv.cleanup()


if __name__ == "__main__":
    sys.exit(main())
