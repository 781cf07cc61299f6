#!/usr/bin/env bash
# Builds chord and runs the main job on the embedded default: chordd serves its REST and gRPC APIs
# and trains the demo job — a random-init tiny model, CHORD on the built-in arithmetic task, no
# downloads. Training progress is logged one line per step; stop with Ctrl-C (the job checkpoints
# and resumes at the next start). Extra arguments go to chordd, e.g. --data-dir, --http.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
exec build/chordd --demo "$@"
