#!/usr/bin/env bash
# tests/gpu/run.sh — the GPU check of the CUDA backend, for a machine with an NVIDIA GPU:
# builds chord (Release, CUDA backend required) and runs tests/gpu/gpu_check: every op against
# the CPU backend, a full ~100M-parameter training step on both backends, and the benchmarks.
# Results (gpu_check.md, gpu_check.json, the build and run logs) go to $1, else $OUT, else
# ./gpu-results. Exit status: gpu_check's (0 all checks passed, 1 a check failed, 77 no GPU).
# Environment: CHORD_GPU_BUILD (build directory, default build-gpu), GPU_CHECK_ARGS (extra
# arguments, e.g. "--quick" or "--no-bench"). Prerequisites: the Debian packages of
# scripts/deps-debian.txt, CMake >= 3.25 and the CUDA toolkit (nvcc, cuBLAS) — see docs/cuda.md.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-${OUT:-$PWD/gpu-results}}
build=${CHORD_GPU_BUILD:-$root/build-gpu}
mkdir -p "$out"
out=$(cd "$out" && pwd)

{
    echo "== $(date -u '+%Y-%m-%d %H:%M UTC') on $(hostname)"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
    command -v nvcc >/dev/null && nvcc --version | tail -1 || true
} | tee "$out/machine.txt"

jobs=$(nproc 2>/dev/null || echo 4)
set -o pipefail
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DCHORD_CUDA=ON 2>&1 | tee "$out/build.log"
cmake --build "$build" -j"$jobs" --target gpu_check 2>&1 | tee -a "$out/build.log"

# shellcheck disable=SC2086
"$build/tests/gpu_check" --out "$out" ${GPU_CHECK_ARGS:-} 2>&1 | tee "$out/gpu_check.log"
