"""tok_reference.py — chord's tokenizer against Hugging Face `tokenizers`.

For each tokenizer file (the real Qwen3 and DeepSeek-V3 files, GPT-2 and Llama 3 style files that
`tokenizers` trains here, and chord's embedded default), every corpus case (tok_corpus.py) is
encoded by `chordd tokenize` and by `Tokenizer.from_file(path).encode(text,
add_special_tokens=False).ids`; the ids must be equal. decode(encode(x)) must give x back, and equal
HF's decode. Invalid UTF-8 is compared with HF on the text Python's errors="replace" gives, and a
1 MB input is compared whole. Malformed files must fail with an error naming what is wrong.

usage: tok_reference.py CHORDD DATA_DIR"""
import json
import os
import subprocess
import sys
import tempfile
import unicodedata

from tokenizers import Tokenizer

import tok_corpus
from tok_files import train_hf_tokenizer

CHORDD, DATA = sys.argv[1], sys.argv[2]
failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL:", msg[:2000], flush=True)


def chordd(args, data):
    p = subprocess.run([CHORDD] + args, input=data, capture_output=True, timeout=600)
    return p.returncode, p.stdout, p.stderr.decode(errors="replace")


def chord_encode_many(tdir, texts):
    inp = "".join(json.dumps(t) + "\n" for t in texts).encode()
    rc, out, err = chordd(["tokenize", "--tokenizer", tdir, "--jsonl"], inp)
    if rc != 0:
        raise RuntimeError(f"chordd tokenize failed: {err}")
    return [json.loads(l) for l in out.decode().split("\n") if l]


def chord_decode_many(tdir, id_lists, skip=False):
    inp = "".join(json.dumps(ids) + "\n" for ids in id_lists).encode()
    args = ["tokenize", "--tokenizer", tdir, "--jsonl", "--decode"]
    if skip:
        args.append("--skip-special-tokens")
    rc, out, err = chordd(args, inp)
    if rc != 0:
        raise RuntimeError(f"chordd tokenize --decode failed: {err}")
    return [json.loads(l) for l in out.decode().split("\n") if l]


def first_diff(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def check_tokenizer(name, tdir, specials, roundtrip=True):
    hf = Tokenizer.from_file(os.path.join(tdir, "tokenizer.json"))
    cs = tok_corpus.cases(specials)
    texts = [t for _, t in cs]
    # blank lines are skipped by --jsonl, so the empty string goes through the raw mode below
    nonempty = [(n, t) for n, t in cs if t != ""]
    got = chord_encode_many(tdir, [t for _, t in nonempty])
    n_ok = 0
    for (case, text), ids in zip(nonempty, got):
        want = hf.encode(text, add_special_tokens=False).ids
        if ids != want:
            i = first_diff(ids, want)
            fail(f"{name} {case}: ids differ at {i}: chord {ids[max(0, i-3):i+5]} "
                 f"hf {want[max(0, i-3):i+5]} text {text[:80]!r}")
        else:
            n_ok += 1
    # decode(encode(x)) == x, and chord's decode equals HF's
    dec = chord_decode_many(tdir, got)
    nfc = '"NFC"' in json.dumps(json.load(open(os.path.join(tdir, "tokenizer.json")))["normalizer"])
    for (case, text), ids, d in zip(nonempty, got, dec):
        # a normalizing tokenizer gives back the normalized text
        if nfc:
            text = unicodedata.normalize("NFC", text)
        if roundtrip and d != text:
            fail(f"{name} {case}: decode(encode(x)) != x: {d[:80]!r} vs {text[:80]!r}")
        hd = hf.decode(ids, skip_special_tokens=False)
        if d != hd:
            fail(f"{name} {case}: decode differs from HF: {d[:80]!r} vs {hd[:80]!r}")
    dec_skip = chord_decode_many(tdir, got, skip=True)
    for (case, text), ids, d in zip(nonempty, got, dec_skip):
        hd = hf.decode(ids, skip_special_tokens=True)
        if d != hd:
            fail(f"{name} {case}: decode(skip_special) differs from HF: {d[:80]!r} vs {hd[:80]!r}")
    # raw stdin mode: empty input, invalid UTF-8, 1 MB
    raw_cases = [("empty", b"")] + [(f"invalid[{i}]", b) for i, b in
                                    enumerate(tok_corpus.INVALID_UTF8)]
    raw_cases.append(("1MB", tok_corpus.long_text(1 << 20, seed=11).encode()))
    for case, data in raw_cases:
        rc, out, err = chordd(["tokenize", "--tokenizer", tdir], data)
        if rc != 0:
            fail(f"{name} {case}: chordd exited {rc}: {err}")
            continue
        ids = json.loads(out)
        want = hf.encode(data.decode("utf-8", errors="replace"), add_special_tokens=False).ids
        if ids != want:
            i = first_diff(ids, want)
            fail(f"{name} {case}: ids differ at {i} of {len(want)}: chord {ids[max(0, i-3):i+5]} "
                 f"hf {want[max(0, i-3):i+5]}")
        else:
            n_ok += 1
    print(f"{name}: {n_ok} of {len(nonempty) + len(raw_cases)} cases equal HF", flush=True)


def check_add_special(name, tdir, hf_expect_fn):
    """--add-special-tokens: the post-processor (and add_bos_token) applied."""
    rc, out, err = chordd(["tokenize", "--tokenizer", tdir, "--add-special-tokens"],
                          b"Hello world")
    if rc != 0:
        fail(f"{name} add-special: {err}")
        return
    ids = json.loads(out)
    want = hf_expect_fn("Hello world")
    if ids != want:
        fail(f"{name} add-special: chord {ids} want {want}")


def check_errors(tmp):
    qwen = json.load(open(os.path.join(DATA, "tokenizers/qwen3/tokenizer.json")))
    bad = {}
    bad["malformed"] = ('{"model": {"type": "BPE", "vocab": {"a": 0}', "malformed JSON")
    t = dict(qwen)
    t["pre_tokenizer"] = {"type": "UnicodeScripts"}
    bad["pretok"] = (json.dumps(t), "unsupported pre-tokenizer type 'UnicodeScripts'")
    t = dict(qwen)
    t["normalizer"] = {"type": "BertNormalizer"}
    bad["normalizer"] = (json.dumps(t), "unsupported normalizer type 'BertNormalizer'")
    t = dict(qwen)
    t["model"] = {"type": "WordPiece", "vocab": {"a": 0}}
    bad["model"] = (json.dumps(t), "unsupported model type 'WordPiece'")
    t = dict(qwen)
    t["pre_tokenizer"] = {"type": "Split", "pattern": {"Regex": "(unclosed"},
                          "behavior": "Isolated", "invert": False}
    bad["regex"] = (json.dumps(t), "does not compile")
    t = dict(qwen)
    t["model"] = dict(qwen["model"])
    t["model"]["merges"] = [["Ġ", "Ġ"], ["no_such_token", "x"]]
    bad["merge"] = (json.dumps(t), "merges[1]: token 'no_such_token' is not in the vocabulary")
    for case, (text, expect) in bad.items():
        d = os.path.join(tmp, "bad_" + case)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "tokenizer.json"), "w") as f:
            f.write(text)
        rc, out, err = chordd(["tokenize", "--tokenizer", d], b"x")
        if rc == 0 or rc >= 128 or rc < 0:
            fail(f"error case {case}: exit {rc} (want a clean failure)")
        elif expect not in err:
            fail(f"error case {case}: message {err!r} does not say {expect!r}")
    print("error cases checked", flush=True)


def main():
    qwen = os.path.join(DATA, "tokenizers/qwen3")
    ds = os.path.join(DATA, "tokenizers/deepseek_v3")
    check_tokenizer("qwen3", qwen, tok_corpus.SPECIAL_QWEN)
    check_tokenizer("deepseek_v3", ds, tok_corpus.SPECIAL_DEEPSEEK)
    with tempfile.TemporaryDirectory() as tmp:
        for style in ("gpt2", "gpt2_prefix", "llama3"):
            d = os.path.join(tmp, style)
            specials = train_hf_tokenizer(d, style)
            inside = [f"a{specials[0]}b", f"x {specials[-1]} y {specials[0]}{specials[-1]}"]
            # add_prefix_space puts a space before every piece: no round trip by design
            check_tokenizer(style, d, inside, roundtrip=style != "gpt2_prefix")
        # chord's own default tokenizer, written by `chordd tokenizer train` (in the repo)
        src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "server",
                           "model", "default_tokenizer")
        if os.path.exists(os.path.join(src, "tokenizer.json")):
            check_tokenizer("default", src, tok_corpus.SPECIAL_QWEN[:3])
        # add_special_tokens: Llama 3's TemplateProcessing adds BOS; DeepSeek's config asks for
        # BOS (add_bos_token, as transformers' LlamaTokenizerFast applies it); Qwen adds none.
        l3 = Tokenizer.from_file(os.path.join(tmp, "llama3", "tokenizer.json"))
        check_add_special("llama3", os.path.join(tmp, "llama3"),
                          lambda s: l3.encode(s, add_special_tokens=True).ids)
        q = Tokenizer.from_file(os.path.join(qwen, "tokenizer.json"))
        check_add_special("qwen3", qwen, lambda s: q.encode(s, add_special_tokens=True).ids)
        d = Tokenizer.from_file(os.path.join(ds, "tokenizer.json"))
        check_add_special("deepseek_v3", ds,
                          lambda s: [0] + d.encode(s, add_special_tokens=False).ids)
        check_errors(tmp)
    if failures:
        print(f"{len(failures)} failures")
        sys.exit(1)
    print("all tokenizer reference checks passed")


if __name__ == "__main__":
    main()
