"""bench_tokenizer.py — encode and decode throughput of chord's tokenizer against Hugging Face
`tokenizers` (Rust), single-threaded, on the same documents, for the Qwen3 and DeepSeek-V3 files.

Two texts: "mixed" (tests/reference/tok_corpus.py's cases: English, code, numbers, LaTeX, CJK,
emoji, whitespace; pieces repeat, as in real data) and "unique" (random words and numbers, few
repeats: the pre-token cache helps little). Documents of about 2 KB are encoded one by one
(`encode` per document on the HF side, never encode_batch), best of REPEATS after a warm-up.
MB/s counts input bytes for both directions.

usage: bench_tokenizer.py BENCH_TOKENIZER_BINARY [DATA_DIR] [MB] [REPEATS]"""
import datetime
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

from tokenizers import Tokenizer  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reference"))
import tok_corpus  # noqa: E402

BIN = sys.argv[1]
DATA = sys.argv[2] if len(sys.argv) > 2 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "data")
MB = float(sys.argv[3]) if len(sys.argv) > 3 else 2.0
REPEATS = int(sys.argv[4]) if len(sys.argv) > 4 else 3


def split_docs(text, size=2048):
    docs, i = [], 0
    while i < len(text):
        j = min(len(text), i + size)
        docs.append(text[i:j])
        i = j
    return docs


def unique_text(n_bytes, seed=5):
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    out, size = [], 0
    while size < n_bytes:
        r = rng.random()
        if r < 0.7:
            w = "".join(rng.choice(letters) for _ in range(rng.randint(2, 12)))
        elif r < 0.85:
            w = str(rng.randint(0, 10 ** rng.randint(1, 9)))
        else:
            w = rng.choice([",", ".", "!", "?", ";", ":", "(", ")", "\n"])
        out.append(w)
        size += len(w) + 1
    return " ".join(out)


def hf_bench(path, docs):
    tok = Tokenizer.from_file(path)
    nbytes = sum(len(d.encode()) for d in docs)
    best_enc = best_dec = float("inf")
    ids = None
    for r in range(REPEATS + 1):
        t0 = time.perf_counter()
        ids = [tok.encode(d, add_special_tokens=False).ids for d in docs]
        t1 = time.perf_counter()
        for x in ids:
            tok.decode(x, skip_special_tokens=False)
        t2 = time.perf_counter()
        if r > 0:
            best_enc = min(best_enc, t1 - t0)
            best_dec = min(best_dec, t2 - t1)
    return nbytes / best_enc / 1e6, nbytes / best_dec / 1e6, sum(len(x) for x in ids)


def chord_bench(tdir, docs):
    with tempfile.NamedTemporaryFile("wb", suffix=".docs", delete=False) as f:
        for d in docs:
            b = d.encode()
            f.write(b"%d\n" % len(b) + b)
        name = f.name
    try:
        out = subprocess.run([BIN, tdir, name, str(REPEATS)], capture_output=True, check=True)
    finally:
        os.unlink(name)
    r = json.loads(out.stdout)
    return r["encode_mb_s"], r["decode_mb_s"], r["tokens"]


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main():
    n = int(MB * 1e6)
    texts = {"mixed": tok_corpus.long_text(n, seed=3), "unique": unique_text(n)}
    rows = []
    for fam in ("qwen3", "deepseek_v3"):
        tdir = os.path.join(DATA, "tokenizers", fam)
        for tname, text in texts.items():
            docs = split_docs(text)
            ce, cd, ct = chord_bench(tdir, docs)
            he, hd, ht = hf_bench(os.path.join(tdir, "tokenizer.json"), docs)
            if ct != ht:
                print(f"warning: {fam}/{tname}: token counts differ ({ct} vs {ht})")
            rows.append((fam, tname, "encode", ce, he))
            rows.append((fam, tname, "decode", cd, hd))
    print(f"Tokenizer throughput, single thread, {MB:g} MB per text in ~2 KB documents, "
          f"best of {REPEATS}")
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores; {platform.system()} "
          f"{platform.release()}; tokenizers {__import__('tokenizers').__version__}; "
          f"{datetime.date.today().isoformat()}")
    print()
    print("| tokenizer | text | op | chord MB/s | HF tokenizers MB/s | chord / HF |")
    print("|---|---|---|---:|---:|---:|")
    for fam, tname, op, c, h in rows:
        print(f"| {fam} | {tname} | {op} | {c:.1f} | {h:.1f} | {c / h:.2f}x |")


if __name__ == "__main__":
    main()
