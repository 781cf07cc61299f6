#!/usr/bin/env bash
# tests/gpu/chord-step.sh — a whole CHORD step at Qwen2.5-0.5B shapes on a lent GPU: rollouts
# (B prompts x G samples, decoded together), rewards, advantages, the loss over every response and
# the expert batch, AdamW. Reports time/rollout, time/train and tokens/s per step from the
# trainer's own metrics (docs/benchmarks.md "CUDA"). A random-init model never ends a response
# early, so every response is max_new_tokens long, and rewards are all 0: entropy_coef > 0 keeps
# every response in the forward/backward (a zero-advantage response is otherwise skipped), so the
# step does the work a real one of these sizes does.
#
# Usage: tests/gpu/chord-step.sh CHORDD OUTDIR [STEPS] [DEVICE]
#   CHORDD  the chordd binary (a bundle's bin/chordd, with LD_LIBRARY_PATH set by the caller)
#   OUTDIR  where chord-step.jsonl (metrics), chord-step.log and chord-step.txt (summary) go
#   STEPS   steps to run (default 4; the first one includes the lazy set-up)
#   DEVICE  cuda (default), or cpu with CHORD_STEP_CONFIG=tiny to rehearse the script here
# Sizes: CHORD_STEP_B (16 prompts), CHORD_STEP_G (8), CHORD_STEP_NEW (256 new tokens),
#        CHORD_STEP_E (64 expert records), CHORD_STEP_MBT (8192 tokens per micro-batch).
set -uo pipefail
chordd=${1:?usage: chord-step.sh CHORDD OUTDIR [STEPS] [DEVICE]}
out=${2:?usage: chord-step.sh CHORDD OUTDIR [STEPS] [DEVICE]}
steps=${3:-4}
device=${4:-cuda}
B=${CHORD_STEP_B:-16} G=${CHORD_STEP_G:-8} NEW=${CHORD_STEP_NEW:-256} E=${CHORD_STEP_E:-64}
MBT=${CHORD_STEP_MBT:-8192}
mkdir -p "$out"
if [ "${CHORD_STEP_CONFIG:-0.5b}" = tiny ]; then
    cfg='"vocab_size": 1024, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "intermediate_size": 128, "max_position_embeddings": 2048'
else # Qwen2.5-0.5B's shapes (494M parameters)
    cfg='"vocab_size": 151936, "hidden_size": 896, "num_hidden_layers": 24,
         "num_attention_heads": 14, "num_key_value_heads": 2, "intermediate_size": 4864,
         "max_position_embeddings": 32768'
fi
job=$out/chord-step-job.json
cat >"$job" <<JSON
{"name": "chord-step-0.5b",
 "model": {"init": {"seed": 1, "config": {"model_type": "qwen2",
   "architectures": ["Qwen2ForCausalLM"], $cfg, "rope_theta": 1000000.0,
   "rms_norm_eps": 1e-6, "tie_word_embeddings": true}}},
 "data": {"prompts": "builtin:arith", "expert": "builtin:arith"},
 "algorithm": "chord",
 "chord": {"mu": {"adaptive": {"tau": 0.5}}, "phi": true},
 "grpo": {"group_size": $G, "prompts_per_step": $B, "entropy_coef": 0.001},
 "expert_per_step": $E,
 "sampling": {"temperature": 1.0, "top_p": 0.95, "max_new_tokens": $NEW},
 "optimizer": {"lr": 1e-6},
 "micro_batch_tokens": $MBT,
 "reward": {"type": "math_boxed"},
 "steps": $steps, "seed": 42, "checkpoint_every": 0}
JSON
rm -rf /tmp/chord-step-run "$out/chord-step.jsonl"
# the memory estimate the job is checked against: a 1 MiB limit makes chordd print its figures
"$chordd" train "$job" --device "$device" --device-memory-mb 1 --out /tmp/chord-step-est \
    2>&1 | grep -o 'the job needs.*' | head -1 >"$out/chord-step-estimate.txt" || true
# the real peak: nvidia-smi's used memory every 100 ms while the job runs (GPU only)
peak_file=/tmp/chord-step-peak.txt
: >"$peak_file"
poller=""
if [ "$device" != cpu ] && command -v nvidia-smi >/dev/null; then
    (while :; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 \
        >>"$peak_file" 2>/dev/null; sleep 0.1; done) &
    poller=$!
fi
t0=$(date +%s)
"$chordd" train "$job" --device "$device" --out /tmp/chord-step-run \
    --metrics-out "$out/chord-step.jsonl" >"$out/chord-step.log" 2>&1
rc=$?
[ -n "$poller" ] && kill "$poller" 2>/dev/null
echo "chordd train exit $rc after $(( $(date +%s) - t0 ))s (B=$B G=$G new=$NEW E=$E)" | tee "$out/chord-step.txt"
echo "estimate: $(cat "$out/chord-step-estimate.txt")" | tee -a "$out/chord-step.txt"
[ -s "$peak_file" ] && echo "peak used (nvidia-smi): $(sort -n "$peak_file" | tail -1) MiB" | tee -a "$out/chord-step.txt"
# one line a step: seconds of rollout / train / step, tokens and tokens/s
python3 - "$out/chord-step.jsonl" <<'PY' 2>&1 | tee -a "$out/chord-step.txt" || true
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
for r in rows:
    m = r.get("metrics", r)
    g = lambda k: float(m.get(k, 0.0))
    print(f"step {r.get('step')}: rollout {g('time/rollout'):.3f}s ({g('tokens_per_s/rollout'):.0f} tok/s)"
          f"  train {g('time/train'):.3f}s ({g('tokens_per_s/train'):.0f} tok/s,"
          f" {g('policy_tokens'):.0f} policy + {g('expert_tokens'):.0f} expert targets,"
          f" {g('policy_tokens_skipped'):.0f} skipped)  step {g('time/step'):.3f}s")
PY
exit $rc
