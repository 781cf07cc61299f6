"""train_sft_reference.py — `chordd train` (an `sft` job, end to end) against the same training
written independently in PyTorch: Hugging Face `tokenizers` for the ids, the chat text built
here from the default template's documented form, transformers' Qwen2ForCausalLM (float64),
the mean NLL over response tokens, `clip_grad_norm_`, `torch.optim.AdamW` (decay on matrices
only) and transformers' `get_cosine_with_min_lr_schedule_with_warmup`.

What it covers beyond the per-op and per-gradient reference tests: the trainer's own plumbing —
prompt/response masking through the chat template, token-averaging across micro-batches (the
job's micro_batch_tokens forces several per step) and, in a second run, the per-sequence average
(chord.sft_loss_agg_mode "seq-mean-token-mean"), the learning-rate schedule, clipping and the
optimizer, step after step. Every expert record is used every step (expert_per_step = all of
them), so the batch is the same set on both sides whatever order chord draws it in.

Checks per step: chord's sft_loss, grad_norm and lr metrics vs PyTorch's (relative 1e-5, 1e-4,
1e-9), and after the last step every weight tensor of chord's checkpoint vs PyTorch's
(max |delta| <= 5e-3 of the tensor's max |w|: AdamW's first steps divide tiny gradients by tiny
second moments, which amplifies fp32 round-off in near-zero entries; a masking or
normalisation bug moves whole tensors by ~lr).

usage: train_sft_reference.py --chordd build/chordd"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from safetensors.numpy import load_file
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, get_cosine_with_min_lr_schedule_with_warmup

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKENIZER = os.path.join(ROOT, "server", "model", "default_tokenizer", "tokenizer.json")

CONFIG = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "vocab_size": 1024,
          "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
          "num_key_value_heads": 2, "intermediate_size": 160, "max_position_embeddings": 128,
          "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
          "initializer_range": 0.02}
STEPS, WARMUP, LR, MIN_RATIO, WD, CLIP = 6, 2, 3e-3, 0.1, 0.01, 1.0


def records():
    out = []
    for i in range(24):
        a, b = (i * 37 + 11) % 100, (i * 53 + 7) % 60
        if i % 3 == 2:
            a, b = max(a, b), min(a, b)
            out.append({"prompt": f"Compute {a}-{b}.", "response": f"{a}-{b}={a - b} \\boxed{{{a - b}}}"})
        else:
            out.append({"prompt": f"Compute {a}+{b}.", "response": f"{a}+{b}={a + b} \\boxed{{{a + b}}}"})
    return out


def run(chordd, agg, failures):
    """One sft job with chord.sft_loss_agg_mode = agg, chord against PyTorch."""
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(CONFIG, f)
        init = os.path.join(d, "init")
        subprocess.run([chordd, "init-model", "--config", os.path.join(d, "config.json"),
                        "--seed", "3", "--out", init], check=True, capture_output=True)
        recs = records()
        expert = os.path.join(d, "expert.jsonl")
        with open(expert, "w") as f:
            for r in recs:
                f.write(json.dumps(r) + "\n")
        job = {"name": "sft-ref", "model": {"path": init}, "data": {"expert": expert},
               "algorithm": "sft", "chord": {"sft_loss_agg_mode": agg},
               "expert_per_step": len(recs), "micro_batch_tokens": 160,
               "optimizer": {"lr": LR, "schedule": "cosine", "warmup_steps": WARMUP,
                             "min_lr_ratio": MIN_RATIO, "weight_decay": WD, "grad_clip": CLIP},
               "steps": STEPS, "seed": 5, "checkpoint_every": STEPS}
        with open(os.path.join(d, "job.json"), "w") as f:
            json.dump(job, f)
        metrics = os.path.join(d, "metrics.jsonl")
        out = os.path.join(d, "out")
        p = subprocess.run([chordd, "train", os.path.join(d, "job.json"), "--out", out,
                            "--metrics-out", metrics, "--quiet", "--threads", "1"],
                           capture_output=True, text=True)
        if p.returncode != 0:
            print(p.stderr)
            failures.append(f"{agg}: chordd train failed")
            return
        chord = [json.loads(line)["metrics"] for line in open(metrics)]
        final = load_file(os.path.join(out, "checkpoints", f"step_{STEPS}", "model.safetensors"))

        # --- the same training in PyTorch -------------------------------------------------
        tok = Tokenizer.from_file(TOKENIZER)
        eos = tok.token_to_id("<|im_end|>")
        seqs = []
        for r in recs:
            prompt = tok.encode("<|im_start|>user\n" + r["prompt"] + "<|im_end|>\n"
                                "<|im_start|>assistant\n").ids
            response = tok.encode(r["response"]).ids + [eos]
            seqs.append((prompt, response))
        model = AutoModelForCausalLM.from_pretrained(init, dtype=torch.float64)
        decay = [p for n, p in model.named_parameters() if p.dim() == 2]
        no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": WD},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=LR, betas=(0.9, 0.999), eps=1e-8)
        sched = get_cosine_with_min_lr_schedule_with_warmup(
            opt, num_warmup_steps=WARMUP, num_training_steps=STEPS, min_lr_rate=MIN_RATIO)
        n_tokens = sum(len(r) for _, r in seqs)
        for step in range(1, STEPS + 1):
            lr = opt.param_groups[0]["lr"]
            total = 0
            for prompt, response in seqs:
                logits = model(input_ids=torch.tensor([prompt + response])).logits[0]
                logits = logits[len(prompt) - 1:-1]
                nll = torch.nn.functional.cross_entropy(logits, torch.tensor(response),
                                                        reduction="sum")
                # token-mean: every response token weighs the same; seq-mean-token-mean: every
                # response does (its NLL averaged over its own tokens, then over responses)
                total = total + (nll if agg == "token-mean" else nll / len(response))
            loss = total / (n_tokens if agg == "token-mean" else len(seqs))
            opt.zero_grad()
            loss.backward()
            norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP))
            opt.step()
            sched.step()
            c = chord[step - 1]
            for name, mine, ref, tol in (("sft_loss", c["sft_loss"], loss.item(), 1e-5),
                                         ("grad_norm", c["grad_norm"], norm, 1e-4),
                                         ("lr", c["lr"], lr, 1e-9)):
                rel = abs(mine - ref) / max(abs(ref), 1e-12)
                ok = rel <= tol or abs(mine - ref) <= 1e-15
                print(f"{agg} step {step} {name}: chord {mine:.9g} torch {ref:.9g} rel {rel:.2e}"
                      f" {'ok' if ok else 'FAIL'}")
                if not ok:
                    failures.append(f"{agg} step {step} {name}")
            if c["expert_tokens"] != n_tokens:
                failures.append(f"step {step}: chord trained {c['expert_tokens']} response "
                                f"tokens, PyTorch {n_tokens}")
        state = model.state_dict()
        worst = (0.0, "")
        for name, w in final.items():
            ref = state[name].numpy()
            rel = float(np.max(np.abs(w.astype(np.float64) - ref)) / np.max(np.abs(ref)))
            worst = max(worst, (rel, name))
        print(f"{agg}: weights after step {STEPS}: worst max|delta|/max|w| {worst[0]:.2e} "
              f"({worst[1]})")
        if worst[0] > 5e-3:
            failures.append(f"{agg} weights: {worst[1]} off by {worst[0]:.2e}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--chordd", required=True)
    args = ap.parse_args()
    torch.set_num_threads(2)
    failures = []
    for agg in ("token-mean", "seq-mean-token-mean"):
        run(args.chordd, agg, failures)
    if failures:
        print("FAILED:", "; ".join(failures))
        return 1
    print("ok: chordd train (sft; token-mean and seq-mean-token-mean) follows PyTorch step for step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
