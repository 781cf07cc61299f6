#!/usr/bin/env bash
# tests/gpu/first-light.sh — the whole GPU check in one command, for a lent GPU machine that has
# the NVIDIA driver and the CUDA toolkit's libraries (cuBLAS) but none of chord's Debian packages
# and no package registry (docs/cuda.md "First light").
#
# Usage: tests/gpu/first-light.sh BUNDLE [OUTDIR] [SECONDS]
#   BUNDLE   the tarball (or its unpacked directory) made by scripts/gpu-bundle.sh on a Debian 12
#            machine: bin/chordd, bin/gpu_check (built for sm_80 + sm_90) and lib/ (every shared
#            library they need except glibc, the driver and the CUDA toolkit's own)
#   OUTDIR   where results go (default $OUT, else ./gpu-results); 8 files, the most a lent
#            machine's call returns: summary.txt (the machine first), gpu_check.md,
#            gpu_check.json, gpu_check.log, demo.log, demo.jsonl, realmodel.log, sanitizer.log
#            (memcheck, then racecheck)
#   SECONDS  the time the whole run may take (default 540); each stage gets a share and is cut
#            off at its limit, so a hang in one stage still leaves the others' results
#
# Stages (each runs even when an earlier one failed):
#   1. the machine: GPU, driver, CUDA runtime, CPU, where cuBLAS was found
#   2. gpu_check: every op against the CPU backend, full forward/backward/AdamW steps and decode on
#      both backends (three small models and a ~100M one, fp32 and bf16 GEMMs), then benchmarks
#      (training MFU at ~100M and 0.5B, T = 1024; decode at batch 1/32/256; memory bandwidth)
#   2b. the 0.5B training benchmark again with CHORD_CUDA_ATTENTION=wmma (the previous tensor-core
#      attention kernels), for the ratio to the default mma.sync kernels (appended to
#      gpu_check.log; its bench lines go to summary.txt)
#   3. the demo job (chordd train --demo) on the GPU: held-out accuracy and seconds per step
#   3b. the real model (tests/gpu/realmodel.sh): SmolLM2-135M-Instruct, from the two parts
#      scripts/gpu-model.sh makes (the first call leaves part a in /tmp/chord-model), scored,
#      sampled greedily and trained one SFT step on the GPU against transformers and the CPU;
#      skipped (noted) when a part is missing
#   4. compute-sanitizer memcheck, then racecheck (shared-memory hazards), over the op checks and
#      the small models (when the tool exists)
# Exit status: 0 when gpu_check passed, the demo ran to its end and the real-model checks passed
# or were skipped, else 1.
set -uo pipefail
bundle=${1:?usage: first-light.sh BUNDLE [OUTDIR] [SECONDS]}
out=${2:-${OUT:-$PWD/gpu-results}}
budget=${3:-540}
root=$(cd "$(dirname "$0")/../.." && pwd)
if [ -f "$bundle" ]; then
    rm -rf /tmp/chord-gpu && mkdir -p /tmp/chord-gpu && tar -C /tmp/chord-gpu -xJf "$bundle" || exit 1
    bundle=/tmp/chord-gpu
fi
bundle=$(cd "$bundle" && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
t_start=$(date +%s)
left() { echo $((budget - ($(date +%s) - t_start))); }
summary=$out/summary.txt
: >"$summary"
note() { echo "$*" | tee -a "$summary"; }

# cuBLAS / cudart from the machine's CUDA toolkit (or the Python wheels that carry them)
cudalib=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu; do
    if ls "$d"/libcublas.so.* >/dev/null 2>&1; then cudalib=$d; break; fi
done
if [ -z "$cudalib" ]; then
    f=$(find / -xdev -name 'libcublas.so.1*' 2>/dev/null | head -1)
    [ -n "$f" ] && cudalib=$(dirname "$f")
fi
export LD_LIBRARY_PATH="$bundle/lib${cudalib:+:$cudalib}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

{
    echo "== first light $(date -u '+%Y-%m-%d %H:%M UTC') on $(hostname)"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit \
        --format=csv 2>&1 || true
    command -v nvcc >/dev/null && nvcc --version | tail -2
    echo "cuBLAS from: ${cudalib:-not found}"
    lscpu 2>/dev/null | grep -E '^(Model name|CPU\(s\)|Thread)' || true
    echo "memory: $(awk '/MemTotal/ {print $2 / 1048576 " GiB"}' /proc/meminfo)"
    echo "== libraries chordd resolves"
    ldd "$bundle/bin/chordd" | grep -E 'not found|cublas|cudart|cuda' || true
} 2>&1 | tee -a "$summary"

rc=0
# 2. gpu_check (checks, then benchmarks): about half the budget
lim=$(( $(left) * 45 / 100 ))
note "== gpu_check (limit ${lim}s)"
t0=$(date +%s)
timeout -k 5 "$lim" "$bundle/bin/gpu_check" --out "$out" ${GPU_CHECK_ARGS:-} >"$out/gpu_check.log" 2>&1
g=$?
note "gpu_check exit $g after $(( $(date +%s) - t0 ))s ($(grep -c '^ok ' "$out/gpu_check.log") ok, $(grep -c '^FAIL' "$out/gpu_check.log") FAIL)"
grep -E '^(FAIL|bench)' "$out/gpu_check.log" | tee -a "$summary"
[ "$g" -eq 0 ] || rc=1

# 2b. the previous tensor-core attention kernels (wmma) on the 0.5B training step, for the ratio
lim=$(( $(left) * 10 / 100 ))
note "== gpu_check --bench train-0.5b with CHORD_CUDA_ATTENTION=wmma (limit ${lim}s)"
echo "== CHORD_CUDA_ATTENTION=wmma gpu_check --bench train-0.5b" >>"$out/gpu_check.log"
CHORD_CUDA_ATTENTION=wmma timeout -k 5 "$lim" "$bundle/bin/gpu_check" --bench train-0.5b \
    --out /tmp ${GPU_CHECK_ARGS:-} >>"$out/gpu_check.log" 2>&1
note "wmma bench exit $?"
sed -n '/^== CHORD_CUDA_ATTENTION=wmma/,$p' "$out/gpu_check.log" | grep -E '^bench' | sed 's/^/wmma: /' |
    tee -a "$summary"

# 3. the demo job on the GPU
lim=$(( $(left) * 70 / 100 ))
note "== chordd train --demo --device cuda (limit ${lim}s)"
t0=$(date +%s)
rm -rf /tmp/chord-demo
timeout -k 5 "$lim" "$bundle/bin/chordd" train --demo --device cuda --out /tmp/chord-demo \
    --metrics-out "$out/demo.jsonl" >"$out/demo.log" 2>&1
d=$?
note "demo exit $d after $(( $(date +%s) - t0 ))s"
tail -n 4 "$out/demo.log" | tee -a "$summary"
grep -o '"eval/accuracy":[0-9.e+-]*' "$out/demo.jsonl" 2>/dev/null | tail -n 3 | tee -a "$summary"
[ "$d" -eq 0 ] || rc=1

# 3b. the real model (two parts, two calls: scripts/gpu-model.sh); at most 300 s
lim=$(( $(left) * 70 / 100 ))
[ "$lim" -gt 300 ] && lim=300
note "== real model: tests/gpu/realmodel.sh (limit ${lim}s)"
t0=$(date +%s)
"$root/tests/gpu/realmodel.sh" "$bundle/bin/chordd" "$lim" >"$out/realmodel.log" 2>&1
r=$?
note "realmodel exit $r after $(( $(date +%s) - t0 ))s"
grep -E '^(realmodel:|chordd score|score:|bf16 weights|greedy|train|checkpoint|OK|FAILED|  )' \
    "$out/realmodel.log" | cut -c1-300 | tee -a "$summary"
[ "$r" -eq 0 ] || [ "$r" -eq 77 ] || rc=1

# 4. compute-sanitizer memcheck on the op checks and the small models (no 100M step, no benches)
cs=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
lim=$(( $(left) - 10 ))
if [ -n "$cs" ] && [ "$lim" -gt 30 ]; then
    note "== compute-sanitizer (${lim}s left)"
    for tool in memcheck racecheck; do
        lim=$(( $(left) - 10 ))
        [ "$lim" -gt 20 ] || { note "$tool skipped (${lim}s left)"; continue; }
        echo "== $tool" >>"$out/sanitizer.log"
        timeout -k 5 "$lim" "$cs" --tool "$tool" --print-limit 20 "$bundle/bin/gpu_check" \
            --no-bench --no-step --out /tmp >>"$out/sanitizer.log" 2>&1
        note "$tool exit $?: $(grep '^========= ERROR SUMMARY\|RACECHECK SUMMARY' "$out/sanitizer.log" | tail -1)"
    done
else
    note "== compute-sanitizer skipped (${cs:-not found}, ${lim}s left)"
fi
note "== first light done in $(( $(date +%s) - t_start ))s, exit $rc"
exit $rc
