"""tok_chat.py — chord's chat templates against transformers' apply_chat_template.

For each tokenizer with its own template (real Qwen3 and DeepSeek-V3 files; a Llama 3 file and a
Qwen2.5-template file built here; chord's embedded default, plain ChatML) and each conversation,
with and without the generation prompt, `chordd tokenize --chat` must give the text of
apply_chat_template(tokenize=False), the ids of apply_chat_template(tokenize=True), and a mask
that is 1 on exactly the tokens that start inside an assistant turn (content + end-of-turn
token), found here from HF's own offsets and the family's markers. Template recognition, the
explicit override, and the error for an unknown template are checked too.

usage: tok_chat.py CHORDD DATA_DIR"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

from transformers import AutoTokenizer

from tok_files import QWEN25_TEMPLATE, train_hf_tokenizer

CHORDD, DATA = sys.argv[1], sys.argv[2]
failures = []

SYS = {"role": "system", "content": "You are a careful math tutor."}
U1 = {"role": "user", "content": "Compute 37+48."}
A1 = {"role": "assistant", "content": "37+48=85 \\boxed{85}"}
U2 = {"role": "user", "content": "And 12*7? Explain in 中文 please 😀"}
A2 = {"role": "assistant", "content": "12*7=84，答案是 \\boxed{84}"}
CONVS = {
    "single": [U1],
    "system_user": [SYS, U1],
    "one_turn": [SYS, U1, A1],
    "multi_turn": [SYS, U1, A1, U2, A2],
    "no_system_multi": [U1, A1, U2, A2],
    "ends_with_user": [U1, A1, U2],
    "whitespace": [{"role": "user", "content": "  padded question \n\n"},
                   {"role": "assistant", "content": "\n  padded answer  \n"}],
    "two_systems": [SYS, U1, {"role": "system", "content": "Be brief."}, U2, A2],
    "think": [U1, {"role": "assistant",
                   "content": "<think>\nadd tens, then ones\n</think>\n\n37+48=85 \\boxed{85}"}],
    "think_multi": [U1, {"role": "assistant", "content": "<think>\nfirst\n</think>\n\nA"},
                    U2, {"role": "assistant", "content": "<think>\nsecond\n</think>\n\nB"}],
    "reasoning_field": [U1, {"role": "assistant", "content": "85",
                             "reasoning_content": "37 plus 48"}],
    "tool": [U1, {"role": "assistant", "content": "let me check"},
             {"role": "tool", "content": "85"}, {"role": "tool", "content": "ok"}],
    "empty_content": [U1, {"role": "assistant", "content": ""}],
    "parts": [{"role": "user", "content": [{"type": "text", "text": "part one, "},
                                           {"type": "text", "text": "part two"}]}],
}
# which conversations each family runs (tool turns and think blocks are family features)
SKIP = {
    "chatml": {"tool", "think", "think_multi", "reasoning_field"},
    "qwen25": {"tool", "think", "think_multi", "reasoning_field"},
    "llama3": {"tool", "think", "think_multi", "reasoning_field"},
    "deepseek_v3": {"think", "think_multi", "reasoning_field"},
    "qwen3": set(),
}

# the assistant turns, per family: (header before the span, end token closing it)
MARKERS = {
    "qwen3": ("<|im_start|>assistant\n", "<|im_end|>"),
    "chatml": ("<|im_start|>assistant\n", "<|im_end|>"),
    "qwen25": ("<|im_start|>assistant\n", "<|im_end|>"),
    "deepseek_v3": ("<｜Assistant｜>", "<｜end▁of▁sentence｜>"),
    "llama3": ("<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
}


def fail(msg):
    failures.append(msg)
    print("FAIL:", msg[:3000], flush=True)


def flat(msgs):
    """transformers wants string contents; join text parts as chord does."""
    out = []
    for m in msgs:
        m = dict(m)
        if isinstance(m["content"], list):
            m["content"] = "".join(p["text"] for p in m["content"])
        out.append(m)
    return out


def assistant_spans(text, family):
    head, end = MARKERS[family]
    spans = []
    for m in re.finditer(re.escape(head), text):
        start = m.end()
        stop = text.find(end, start)
        if stop < 0:
            continue  # the generation prompt: nothing of the assistant yet
        if family == "deepseek_v3" and "<｜User｜>" in text[start:stop]:
            continue
        spans.append((start, stop + len(end)))
    # DeepSeek: an assistant turn right after tool outputs opens with the outputs-end marker
    if family == "deepseek_v3":
        for m in re.finditer(re.escape("<｜tool▁outputs▁end｜>"), text):
            stop = text.find(end, m.end())
            if stop >= 0 and "<｜" not in text[m.end():stop]:
                spans.append((m.end(), stop + len(end)))
    return sorted(spans)


_loaded = {}


def reference(tdir, family, msgs, gen):
    if tdir not in _loaded:
        _loaded[tdir] = AutoTokenizer.from_pretrained(tdir)
    tok = _loaded[tdir]
    text = tok.apply_chat_template(flat(msgs), tokenize=False, add_generation_prompt=gen)
    ids = tok.apply_chat_template(flat(msgs), tokenize=True, add_generation_prompt=gen)
    if not isinstance(ids, list):
        ids = ids["input_ids"]
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    if enc["input_ids"] != ids:
        fail(f"{family}: reference ids of the text differ from apply_chat_template's")
    spans = assistant_spans(text, family)
    mask = [1 if any(s <= a < e for s, e in spans) else 0 for a, _ in enc["offset_mapping"]]
    return text, ids, mask


def chord_chat(tdir, convs, gen, template=None):
    args = ["tokenize", "--tokenizer", tdir, "--chat"]
    if gen:
        args.append("--add-generation-prompt")
    if template:
        args += ["--template", template]
    inp = "".join(json.dumps({"messages": m}) + "\n" for m in convs).encode()
    p = subprocess.run([CHORDD] + args, input=inp, capture_output=True, timeout=600)
    if p.returncode != 0:
        raise RuntimeError(p.stderr.decode())
    return [json.loads(l) for l in p.stdout.decode().split("\n") if l]


def check_family(family, tdir, template=None):
    names = [n for n in CONVS if n not in SKIP[family]]
    n_ok = 0
    for gen in (False, True):
        got = chord_chat(tdir, [CONVS[n] for n in names], gen, template)
        for name, g in zip(names, got):
            text, ids, mask = reference(tdir, family, CONVS[name], gen)
            where = f"{family} {name} gen={gen}"
            ok = True
            if g["text"] != text:
                fail(f"{where}: text differs:\nchord {g['text']!r}\nhf    {text!r}")
                ok = False
            if g["ids"] != ids:
                fail(f"{where}: ids differ:\nchord {g['ids']}\nhf    {ids}")
                ok = False
            if g["mask"] != mask:
                fail(f"{where}: mask differs:\nchord {g['mask']}\nref   {mask}")
                ok = False
            if sum(mask) == 0 and any(m["role"] == "assistant" for m in CONVS[name]) and \
                    any(m["content"] for m in CONVS[name] if m["role"] == "assistant"):
                fail(f"{where}: the reference mask is empty")
            n_ok += ok
    print(f"{family}: {n_ok} of {2 * len(names)} renderings equal transformers", flush=True)


def run(args, data=b""):
    p = subprocess.run([CHORDD] + args, input=data, capture_output=True, timeout=120)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def check_detection(tmp, qwen):
    # an explicit override renders the family whatever the file says
    got = chord_chat(qwen, [CONVS["one_turn"]], False, template="deepseek_v3")[0]
    if not got["text"].startswith("You are a careful math tutor.<｜User｜>"):
        fail(f"override deepseek_v3 on qwen3: {got['text']!r}")
    # an unknown template is an error that says so, never a guess
    d = os.path.join(tmp, "unknown_tpl")
    os.makedirs(d)
    shutil.copy(os.path.join(qwen, "tokenizer.json"), d)
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"chat_template": "{% for m in messages %}[[{{ m.content }}]]{% endfor %}"}, f)
    rc, out, err = run(["tokenize", "--tokenizer", d, "--chat"], b'{"messages": []}\n')
    if rc == 0 or "unrecognised chat template" not in err:
        fail(f"unknown template: rc {rc} err {err!r}")
    rc, out, err = run(["tokenize", "--tokenizer", qwen, "--chat", "--template", "vicuna"],
                       b'{"messages": []}\n')
    if rc == 0 or "unknown chat template 'vicuna'" not in err:
        fail(f"unknown template name: rc {rc} err {err!r}")
    # bad messages name the field
    rc, out, err = run(["tokenize", "--tokenizer", qwen, "--chat"],
                       b'{"messages": [{"role": "robot", "content": "x"}]}\n')
    if rc == 0 or "messages[0].role 'robot'" not in err:
        fail(f"bad role: rc {rc} err {err!r}")
    print("detection and errors checked", flush=True)


def main():
    qwen = os.path.join(DATA, "tokenizers/qwen3")
    ds = os.path.join(DATA, "tokenizers/deepseek_v3")
    default = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "server",
                           "model", "default_tokenizer")
    with tempfile.TemporaryDirectory() as tmp:
        check_family("qwen3", qwen)
        check_family("deepseek_v3", ds)
        l3 = os.path.join(tmp, "llama3")
        train_hf_tokenizer(l3, "llama3")
        check_family("llama3", l3)
        q25 = os.path.join(tmp, "qwen25")
        os.makedirs(q25)
        shutil.copy(os.path.join(qwen, "tokenizer.json"), q25)
        cfg = json.load(open(os.path.join(qwen, "tokenizer_config.json")))
        cfg["chat_template"] = QWEN25_TEMPLATE
        with open(os.path.join(q25, "tokenizer_config.json"), "w") as f:
            json.dump(cfg, f)
        check_family("qwen25", q25)
        check_family("chatml", default)
        check_detection(tmp, qwen)
    if failures:
        print(f"{len(failures)} failures")
        sys.exit(1)
    print("all chat template checks passed")


if __name__ == "__main__":
    main()
