#!/usr/bin/env bash
# paper_realmodel.sh — the paper's comparison (tests/experiments/paper.py) on a real pretrained
# model and real math data: SmolLM2-135M-Instruct (scripts/fetch-smollm2.sh) post-trained on
# GSM-Symbolic (scripts/real-data.py gsm-symbolic: worked human solutions ending in \boxed{N},
# train and eval split by original GSM8K problem), retention measured on held-out one-digit
# arithmetic the model already half-knows (reasoning-gym basic_arithmetic with a \boxed{}
# instruction). Every row (sft, grpo, sft_then_grpo, chord_mu, chord_phi, chord, fixed_mu)
# starts from the same model with the same data and step budget.
#
# usage: tests/experiments/paper_realmodel.sh gpu|cpu OUT_DIR [extra paper.py flags]
#   gpu: --budget real-gpu, all 7 rows x 1 seed x 40 steps (16 prompts x 8 samples + 16
#        demonstrations a step, 256 new tokens): sized for about ten minutes on one GPU
#   cpu: --budget real-cpu, 30 steps of 4 x 4 + 8 at 192 new tokens: about 20 s a step on two
#        cores (docs/training.md "A real model"), so hours in all: run it overnight
# Env: CHORDD (default build/chordd), CHORD_VENV (default ~/.cache/chord/venv).
# docs/experiments.md says what was run and what was not.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
mode=${1:?usage: paper_realmodel.sh gpu|cpu OUT_DIR}
out=${2:?usage: paper_realmodel.sh gpu|cpu OUT_DIR}
shift 2
venv=${CHORD_VENV:-$HOME/.cache/chord/venv}
py="$venv/bin/python"
chordd=${CHORDD:-$here/build/chordd}
case "$mode" in
  gpu) budget=real-gpu; threads=0 ;;
  cpu) budget=real-cpu; threads=0 ;;
  *) echo "paper_realmodel.sh: mode must be gpu or cpu" >&2; exit 2 ;;
esac
mkdir -p "$out/data"
model=$("$here/scripts/fetch-smollm2.sh" | tail -n 1)
[ -f "$model/config.json" ] || { echo "no model at '$model'" >&2; exit 1; }
"$py" "$here/scripts/real-data.py" gsm-symbolic --out "$out/data/gsm" --variants 8 --seed 1
"$py" "$here/scripts/real-data.py" reasoning-gym --task basic_arithmetic --n 50 --n-eval 200 \
      --out "$out/data/general" --seed 2
# The started server's models root is the model's parent directory, so the model is found.
exec "$py" "$here/tests/experiments/paper.py" --start-server --chordd "$chordd" \
     --threads "$threads" --models-root "$(dirname "$model")" --base-model "$model" \
     --target-prompts "$out/data/gsm/prompts.jsonl" --target-expert "$out/data/gsm/expert.jsonl" \
     --target-eval "$out/data/gsm/eval.jsonl" --general-eval "$out/data/general/eval.jsonl" \
     --budget "$budget" --out "$out" "$@"
