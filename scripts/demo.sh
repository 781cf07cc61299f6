#!/usr/bin/env bash
# Builds chord and runs the main job on the embedded default: a random-init model trained with
# CHORD on the built-in arithmetic task (no downloads). Extra arguments go to `chordd`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
exec build/api/chordd "$@"
