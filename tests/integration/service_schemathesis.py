"""service_schemathesis.py — schemathesis (PyPI) against api/proto/openapi.yaml and a live
chordd: generated requests for every operation, checked for no 5xx and for responses that
match the spec. Then the server must still be up, its stored data intact, and its log free of
internal errors. A bounded number of examples keeps it to a minute or two.

Run: CHORDD=build/chordd python tests/integration/service_schemathesis.py api/proto/openapi.yaml"""
import os
import subprocess
import sys

from chordd_harness import Chordd, arith_prompts, jsonl

MAX_EXAMPLES = os.environ.get("CHORD_SCHEMATHESIS_EXAMPLES", "100")


def main():
    spec = os.path.abspath(sys.argv[1])
    srv = Chordd(extra_args=["--max-upload-mb", "1"]).start()
    try:
        # some stored data, which the fuzzing must leave untouched
        ds = srv.upload("prompts", jsonl(arith_prompts(5)), name="keep").json()
        before = srv.get(f"/v1/datasets/{ds['id']}").json()
        exe = os.path.join(os.path.dirname(sys.executable), "schemathesis")
        cmd = [exe, "run", spec, "--url", srv.url,
               "--checks", "not_a_server_error,response_schema_conformance",
               "--max-examples", MAX_EXAMPLES, "--seed", "1", "--workers", "1",  # hypothesis lambda parsing is not thread-safe on 3.11
               "--request-timeout", "20", "--generation-database", "none", "--no-color",
               "--phases", "examples,coverage,fuzzing"]
        print(" ".join(cmd), flush=True)
        here = os.path.dirname(os.path.abspath(__file__))
        env = dict(os.environ, SCHEMATHESIS_HOOKS="schemathesis_hooks",
                   PYTHONPATH=here + os.pathsep + os.environ.get("PYTHONPATH", ""))
        # run in the temp dir: schemathesis writes a cache (.schemathesis/) into its cwd
        rc = subprocess.run(cmd, env=env, cwd=srv.tmp).returncode
        assert srv.alive(), "chordd died under schemathesis:\n" + srv.read_log()[-3000:]
        assert srv.get("/healthz").status == 200
        assert srv.get(f"/v1/datasets/{ds['id']}").json() == before
        errors = [l for l in srv.read_log().splitlines() if " ERROR " in l]
        assert not errors, "internal errors in the log:\n" + "\n".join(errors[:20])
        if rc != 0:
            print(f"schemathesis failed (exit {rc}); server log tail:\n{srv.read_log()[-2000:]}")
            return 1
        assert srv.stop() == 0
        print("schemathesis: no server errors, every response matches the spec")
        return 0
    finally:
        srv.cleanup()


if __name__ == "__main__":
    sys.exit(main())
