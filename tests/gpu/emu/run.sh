#!/usr/bin/env bash
# tests/gpu/emu/run.sh — runs tests/gpu/gpu_check against the CUDA backend's kernels executed by
# the CPU emulator (cuda_emu.h), on a machine without a GPU: the kernels/cuda/*.cu sources are
# translated to C++ (translate.py), compiled with g++ against the emulator, and linked with
# gpu_check and the CPU libraries of an existing chord build. It checks the kernels' logic
# (indexing, tiling, reductions, barriers) against the CPU backend; it cannot check GPU timing,
# races or the device's own expf/sincosf. Slow (one host thread): op checks only, no 100M step.
# Usage: tests/gpu/emu/run.sh [BUILD_DIR (default build-cuda)] [gpu_check args...]
# CUDA_EMU_PROGRAM=FILE.c builds and runs that program instead of gpu_check (e.g.
# tests/gpu/emu/attn_check.c, the attention ops alone, in seconds).
set -euo pipefail
root=$(cd "$(dirname "$0")/../../.." && pwd)
build=${1:-$root/build-cuda}
shift || true
emu=$root/tests/gpu/emu
work=$build/cuda_emu
mkdir -p "$work"
CXXFLAGS="-std=c++17 -O2 -g -ffp-contract=off -D_GNU_SOURCE -Wall -Wno-unused-function -Wno-unknown-pragmas"
# CUDA_EMU_ASAN=1: the kernels, the emulator and gpu_check under AddressSanitizer (an out-of-bounds
# access of device or shared memory is reported; dynamic shared memory is allocated exactly)
san=""
if [ "${CUDA_EMU_ASAN:-0}" = 1 ]; then
    san="-fsanitize=address -fno-omit-frame-pointer"
    work=$work-asan
    mkdir -p "$work"
    export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:detect_stack_use_after_return=0}
fi
CXXFLAGS="$CXXFLAGS $san"
objs=()
for src in "$root"/kernels/cuda/*.cu; do
    name=$(basename "$src" .cu)
    python3 "$emu/translate.py" "$src" "$work/$name.cpp"
    g++ $CXXFLAGS -I"$emu/include" -I"$root" -I/usr/include/x86_64-linux-gnu/openblas-pthread \
        -c "$work/$name.cpp" -o "$work/$name.o"
    objs+=("$work/$name.o")
done
g++ $CXXFLAGS -I/usr/include/x86_64-linux-gnu/openblas-pthread -c "$emu/cuda_emu.cpp" \
    -o "$work/cuda_emu.o"
prog=${CUDA_EMU_PROGRAM:-$root/tests/gpu/gpu_check.c}
gcc -std=c11 -O2 -g -D_GNU_SOURCE -Wall $san -I"$emu/include" -I"$root" -c "$prog" \
    -o "$work/gpu_check.o"
b=$build
g++ $san -o "$work/gpu_check_emu" "$work/gpu_check.o" -Wl,--start-group "${objs[@]}" \
    "$work/cuda_emu.o" "$b/server/libchord_service.a" "$b/server/libchord_train.a" \
    "$b/server/libchord_model.a" "$b/storage/libchord_storage.a" "$b/kernels/libchord_kernels.a" \
    "$b/server/base/libchord_base.a" -Wl,--end-group \
    -lcurl -lpcre2-8 -lutf8proc -ljansson -lsqlite3 -lopenblas -lgomp -lcrypto -lpthread -lm
if [ -n "${CUDA_EMU_PROGRAM:-}" ]; then
    "$work/gpu_check_emu" "$@"
else
    "$work/gpu_check_emu" --out "$work" "$@"
fi
