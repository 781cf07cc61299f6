#!/usr/bin/env bash
# scripts/gpu-bundle.sh — builds chordd and gpu_check for a GPU machine that cannot install
# chord's Debian packages (a lent machine with only the NVIDIA driver, the CUDA toolkit and no
# package registry), and packs them with the shared libraries they need into one directory that
# tests/gpu/first-light.sh runs from (docs/cuda.md "First light").
#
# Usage: scripts/gpu-bundle.sh [TARBALL]    (default .gpu-bundle/chord-gpu.tar.xz, ignored by git)
# The tarball (about 15 MB; the files, about 75 MB, mostly OpenBLAS's kernels for every CPU)
# holds bin/chordd, bin/gpu_check, lib/*.so and COMMIT.
# Build: build-gpu/, Release, CUDA required (sm_80 + sm_90), no -march=native (the GPU
# machine's CPU may lack this one's instructions). Bundled: every library ldd resolves except
# glibc's, the driver's and the CUDA toolkit's (cudart, cuBLAS, cuBLASLt come from the target
# machine's toolkit, which must be CUDA 13). Prints the bundle's size.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tarball=${1:-$root/.gpu-bundle/chord-gpu.tar.xz}
build=${CHORD_GPU_BUNDLE_BUILD:-$root/build-gpu}
cd "$root"
bundle=$build/bundle
scripts/install-deps.sh
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DCHORD_CUDA=ON -DCHORD_NATIVE=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" --target chordd gpu_check
rm -rf "$bundle"
mkdir -p "$bundle/bin" "$bundle/lib"
cp "$build/chordd" "$build/tests/gpu_check" "$bundle/bin/"
strip "$bundle/bin/"*
skip='^(linux-vdso|ld-linux|libc|libm|libdl|libpthread|librt|libresolv|libcuda|libcudart|libcublas|libcublasLt|libnvidia)\.'
for b in "$bundle/bin/"*; do
    ldd "$b" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}'
done | sort -u | while read -r name path; do
    [[ $name =~ $skip ]] && continue
    cp -L "$path" "$bundle/lib/$name"
done
strip --strip-unneeded "$bundle/lib/"* 2>/dev/null || true
git -C "$root" rev-parse HEAD >"$bundle/COMMIT"
mkdir -p "$(dirname "$tarball")"
XZ_OPT=-6 tar -C "$bundle" -cJf "$tarball" .
echo "gpu-bundle: $tarball ($(du -sh "$tarball" | cut -f1); $(du -sh "$bundle" | cut -f1) unpacked, $(ls "$bundle/lib" | wc -l) libraries)"
