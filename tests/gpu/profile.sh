#!/usr/bin/env bash
# tests/gpu/profile.sh — where the GPU time goes: Nsight Compute (ncu) times every kernel of one
# training step (0.5B shapes, T = 1024 x 8) and of one decode step (0.5B, batch 1 and 256), and
# tests/gpu/ncu_summary.py groups them by kernel (docs/cuda.md "Profile").
# Usage: tests/gpu/profile.sh BUNDLE [OUTDIR]   (BUNDLE as for first-light.sh; OUTDIR default $OUT)
# ncu runs with --clock-control none and --cache-control none (clocks and caches as in a normal
# run); each kernel is serialised, so the sum of kernel times leaves out launch gaps: compare it
# with the step's time in gpu_check's benchmarks (first-light.sh), not with the wall times printed
# under ncu (replays slow the run down). Output: ncu-{train,decode1,decode256}.{csv,txt}.
# PROFILE_WMMA=1 profiles the training step a second time with CHORD_CUDA_ATTENTION=wmma (the
# previous tensor-core attention kernels): ncu-train-wmma.{csv,txt}.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bundle=${1:?usage: profile.sh BUNDLE [OUTDIR]}
out=${2:-${OUT:-$PWD/gpu-results}}
mkdir -p "$out"
if [ -f "$bundle" ]; then
    if [ ! -x /tmp/chord-gpu/bin/gpu_check ]; then
        mkdir -p /tmp/chord-gpu && tar -C /tmp/chord-gpu -xJf "$bundle" || exit 1
    fi
    bundle=/tmp/chord-gpu
fi
cudalib=$(dirname "$(ls /usr/local/cuda/lib64/libcublas.so.* 2>/dev/null | head -1)")
export LD_LIBRARY_PATH="$bundle/lib:$cudalib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
ncu=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
[ -n "$ncu" ] || { echo "profile: ncu not found"; exit 1; }
rc=0
# name, gpu_check benchmark, decode batch to bracket
runs=("train train-0.5b 1" "decode1 decode-0.5b 1" "decode256 decode-0.5b 256")
[ "${PROFILE_WMMA:-0}" = 1 ] && runs+=("train-wmma train-0.5b 1")
for run in "${runs[@]}"; do
    set -- $run
    name=$1
    att=${CHORD_CUDA_ATTENTION:-auto}
    [ "$name" = train-wmma ] && att=wmma
    CHORD_CUDA_ATTENTION=$att timeout -k 5 "${PROFILE_LIMIT:-150}" "$ncu" --profile-from-start off --clock-control none \
        --cache-control none --metrics gpu__time_duration.sum --csv --print-units base \
        "$bundle/bin/gpu_check" --bench "$2" --profile "$3" --out /tmp >"$out/ncu-$name.csv" 2>&1
    r=$?
    echo "== $name"
    python3 "$here/ncu_summary.py" "$out/ncu-$name.csv" | tee "$out/ncu-$name.txt" || rc=1
    [ "$r" -eq 0 ] || { echo "profile: $name exit $r"; grep -v '^"' "$out/ncu-$name.csv" | tail -5; rc=1; }
done
exit $rc
