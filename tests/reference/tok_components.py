"""tok_components.py — the tokenizer.json components beyond the byte-level families, against
Hugging Face `tokenizers`: the pre-tokenizers Digits (individual_digits true and false),
Whitespace, WhitespaceSplit, Punctuation, BertPreTokenizer, CharDelimiterSplit and Metaspace
(prepend_scheme always / first / never, split or not), the normalizers Lowercase, Strip, Replace
(String and Regex) and Prepend next to the Unicode forms, BPE with byte_fallback and fuse_unk, and
the decoders Metaspace, Replace, ByteFallback, Fuse and Strip — among them the Llama-2 / TinyLlama
file (normalizer Prepend + Replace) and the Mistral / newer Llama-2 one (Metaspace
prepend_scheme first), and SmolLM2's (Digits + ByteLevel).

Each tokenizer is trained by `tokenizers` on the corpus with its final pipeline (or a convenient
one, then given its pipeline) and saved; every corpus case (tok_corpus.py, the same adversarial
corpus as tok_reference.py) is encoded by `chordd tokenize` and by
`Tokenizer.encode(text, add_special_tokens=False)`: the ids must be equal, and chord's decode
(with and without skip_special_tokens) must equal HF's. Components chord does not read must fail
with an error naming them.

usage: tok_components.py CHORDD DATA_DIR"""
import json
import os
import sys
import tempfile

from tokenizers import (Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers,
                        trainers)

import tok_corpus
import tok_reference as ref  # check_tokenizer, fail, failures, chordd (argv: CHORDD DATA_DIR)

SPECIALS = ["<unk>", "<s>", "</s>"]
INSIDE = ["a<s>b", "x </s> y <s></s>", "<s> Hello</s>", " <s>  spaced"]
META = "\u2581"


def corpus(byte_level=True):
    texts = [t for _, t in tok_corpus.cases([])] * 3
    # a character-level vocabulary would get a "\u0000" key, which chord's JSON reader (jansson)
    # cannot hold: real files have byte-fallback tokens instead; NUL then encodes as unk
    return texts if byte_level else [t.replace("\x00", "") for t in texts]


def llama_decoder():
    return decoders.Sequence([decoders.Replace(META, " "), decoders.ByteFallback(),
                              decoders.Fuse(), decoders.Strip(" ", 1, 0)])


def add_byte_tokens(path):
    """SentencePiece-converted BPE vocabularies carry <0x00>..<0xFF> for byte_fallback."""
    j = json.load(open(path))
    vocab = j["model"]["vocab"]
    nxt = max(vocab.values()) + 1
    for b in range(256):
        name = f"<0x{b:02X}>"
        if name not in vocab:
            vocab[name] = nxt
            nxt += 1
    with open(path, "w") as f:
        json.dump(j, f, ensure_ascii=False)


def build(out_dir, name):
    """Trains and saves the tokenizer `name`; returns roundtrip (decode(encode(x)) == x)."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "tokenizer.json")
    roundtrip = False
    byte_tokens = False
    post = None  # (field, value) set after training
    bl_alphabet = pre_tokenizers.ByteLevel.alphabet()
    if name in ("digits_individual", "digits_contiguous", "punctuation_bytelevel",
                "normalizers_bytelevel"):
        tok = Tokenizer(models.BPE())
        first = {"digits_individual": pre_tokenizers.Digits(individual_digits=True),
                 "digits_contiguous": pre_tokenizers.Digits(individual_digits=False),
                 "punctuation_bytelevel": pre_tokenizers.Punctuation(),
                 "normalizers_bytelevel": None}[name]
        steps = ([first] if first else []) + [
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=name != "digits_contiguous")]
        tok.pre_tokenizer = pre_tokenizers.Sequence(steps)
        tok.decoder = decoders.ByteLevel()
        if name == "normalizers_bytelevel":
            tok.normalizer = normalizers.Sequence([
                normalizers.Strip(left=True, right=False), normalizers.NFKC(),
                normalizers.Replace(Regex(r"\s{2,}"), "\u2003"), normalizers.Lowercase(),
                normalizers.Replace("e", "E"), normalizers.Prepend("^")])
        else:
            roundtrip = True  # byte-level with no normalizer gives every text back
        trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=SPECIALS,
                                      initial_alphabet=bl_alphabet, show_progress=False)
    elif name in ("whitespace", "whitespace_split", "bert", "punct_contiguous", "char_delimiter"):
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = {
            "whitespace": pre_tokenizers.Whitespace(),
            "whitespace_split": pre_tokenizers.WhitespaceSplit(),
            "bert": pre_tokenizers.BertPreTokenizer(),
            "punct_contiguous": pre_tokenizers.Sequence([
                pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("contiguous")]),
            "char_delimiter": pre_tokenizers.CharDelimiterSplit(" "),
        }[name]
        if name == "bert":
            tok.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.Lowercase(),
                                                   normalizers.Strip()])
        # no decoder: HF joins the tokens with spaces
        trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=SPECIALS,
                                      show_progress=False)
    elif name in ("metaspace_first", "metaspace_always_split", "metaspace_never",
                  "llama2_legacy", "metaspace_first_unk"):
        fallback = name != "metaspace_first_unk"
        tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=fallback, fuse_unk=True))
        # a small alphabet: CJK, emoji and marks go through byte_fallback (or fused unks)
        trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=SPECIALS,
                                      limit_alphabet=120, show_progress=False)
        byte_tokens = fallback
        if name == "metaspace_first" or name == "metaspace_first_unk":
            tok.pre_tokenizer = pre_tokenizers.Metaspace(META, prepend_scheme="first", split=False)
            tok.decoder = llama_decoder()
        elif name == "metaspace_always_split":
            tok.pre_tokenizer = pre_tokenizers.Metaspace(META, prepend_scheme="always", split=True)
            tok.decoder = decoders.Metaspace(META, prepend_scheme="always", split=True)
        elif name == "metaspace_never":
            tok.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.WhitespaceSplit(),
                pre_tokenizers.Metaspace(META, prepend_scheme="never", split=True)])
            tok.decoder = decoders.Sequence([decoders.Metaspace(META, prepend_scheme="never"),
                                             decoders.ByteFallback(), decoders.Fuse()])
        else:  # llama2_legacy: trained on Metaspace words, then Llama 2's own pipeline
            tok.pre_tokenizer = pre_tokenizers.Metaspace(META, prepend_scheme="first", split=True)
            post = [("normalizer", normalizers.Sequence([normalizers.Prepend(META),
                                                         normalizers.Replace(" ", META)])),
                    ("pre_tokenizer", None), ("decoder", llama_decoder())]
    else:
        raise ValueError(name)
    tok.train_from_iterator(corpus(byte_level=bool(tok.decoder) and "ByteLevel" in
                                   str(tok.decoder)), trainer)
    for field, value in post or []:
        setattr(tok, field, value)
    tok.save(path)
    if byte_tokens:
        add_byte_tokens(path)
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, f)
    return roundtrip


NAMES = ["digits_individual", "digits_contiguous", "punctuation_bytelevel",
         "normalizers_bytelevel", "whitespace", "whitespace_split", "bert", "punct_contiguous",
         "char_delimiter", "metaspace_first", "metaspace_first_unk", "metaspace_always_split",
         "metaspace_never", "llama2_legacy"]


def check_decode_edges(name, tdir):
    """Decoding where the decoders treat the start apart (Metaspace's first token, Strip): a
    leading space, a special token first, byte-fallback characters."""
    hf = Tokenizer.from_file(os.path.join(tdir, "tokenizer.json"))
    texts = ["Hello world", " leading", "  two", "你好 😀 x", "a<s>b", "<s> x", "\u2581 lit"]
    ids = [hf.encode(t, add_special_tokens=False).ids for t in texts]
    got = ref.chord_decode_many(tdir, ids)
    for t, i, g in zip(texts, ids, got):
        want = hf.decode(i, skip_special_tokens=False)
        if g != want:
            ref.fail(f"{name} decode {t!r}: chord {g!r} hf {want!r}")


def check_errors(tmp):
    base = json.load(open(os.path.join(tmp, "whitespace", "tokenizer.json")))
    bad = {
        "pretok": ("pre_tokenizer", {"type": "UnicodeScripts"},
                   "unsupported pre-tokenizer type 'UnicodeScripts'"),
        "normalizer": ("normalizer", {"type": "Precompiled", "precompiled_charsmap": ""},
                       "unsupported normalizer type 'Precompiled'"),
        "normalizer_bert": ("normalizer", {"type": "BertNormalizer"},
                            "unsupported normalizer type 'BertNormalizer'"),
        "decoder": ("decoder", {"type": "WordPiece", "prefix": "##", "cleanup": True},
                    "unsupported decoder type 'WordPiece'"),
        "decoder_regex": ("decoder", {"type": "Replace", "pattern": {"Regex": "x"},
                                      "content": "y"}, "a Regex pattern is not supported"),
        "after_bytelevel": ("pre_tokenizer", {"type": "Sequence", "pretokenizers": [
            {"type": "ByteLevel"}, {"type": "Digits", "individual_digits": True}]},
            "a pre-tokenizer after ByteLevel is not supported"),
        "metaspace_scheme": ("pre_tokenizer", {"type": "Metaspace", "replacement": META,
                                               "prepend_scheme": "sometimes"},
                             "prepend_scheme must be always, first or never"),
        "model": ("model", {"type": "Unigram", "vocab": [["a", 0.0]]},
                  "unsupported model type 'Unigram'"),
    }
    for case, (field, value, expect) in bad.items():
        t = dict(base)
        t[field] = value
        d = os.path.join(tmp, "bad_" + case)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "tokenizer.json"), "w") as f:
            json.dump(t, f)
        rc, out, err = ref.chordd(["tokenize", "--tokenizer", d], b"x")
        if rc == 0 or rc >= 128 or rc < 0:
            ref.fail(f"error case {case}: exit {rc} (want a clean failure)")
        elif expect not in err:
            ref.fail(f"error case {case}: message {err!r} does not say {expect!r}")
    print("error cases checked", flush=True)


def main():
    only = os.environ.get("TOK_COMPONENTS_ONLY")
    with tempfile.TemporaryDirectory() as tmp:
        for name in NAMES:
            if only and only not in name:
                continue
            d = os.path.join(tmp, name)
            roundtrip = build(d, name)
            ref.check_tokenizer(name, d, INSIDE, roundtrip=roundtrip)
            check_decode_edges(name, d)
        if not only:
            check_errors(tmp)
    if ref.failures:
        print(f"{len(ref.failures)} failures")
        sys.exit(1)
    print("all tokenizer component checks passed")


if __name__ == "__main__":
    main()
