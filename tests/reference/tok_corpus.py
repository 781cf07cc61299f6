"""tok_corpus.py — the text corpus chord's tokenizer is compared on against Hugging Face
`tokenizers` (English, code, numbers and long digit runs, LaTeX, CJK, emoji and combining marks,
whitespace runs, every kind of newline, special tokens inside text, empty strings, long inputs),
plus byte strings that are not UTF-8. Deterministic: no randomness without a fixed seed."""
import random

ENGLISH = [
    "Hello world!",
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure you'll see it's what they've done; we'd say I'd've.",
    "DON'T SHOUT, It'S fine. HE'LL COME 'S 'T 'RE 'VE 'M 'LL 'D",
    "Mr. O'Neil's cat—a tabby—sat on the mat... \"quoted\" and 'single' text?!",
    "  leading spaces and trailing spaces   ",
    "a",
    " ",
    "e.g. i.e. etc. U.S.A. 3.14 v2.0.1 x86_64",
    "Compute 37+48.",
    "37+48=85 \\boxed{85}",
    "The answer is \\boxed{-12}.",
]

CODE = [
    "def f(x):\n    return x ** 2  # square\n\nprint(f(3))\n",
    "int main(void) {\n\tprintf(\"%d\\n\", 42);\n\treturn 0;\n}\n",
    "for (size_t i = 0; i < n; i++) { a[i] += b[i] * c; }",
    "const re = /^[a-z]+$/gi; x => x?.y ?? z;",
    "<div class=\"x\">&amp; &lt;tag&gt;</div>",
    "    if x:\n        y = [1, 2, 3]\n        z = {'a': 1}\n",
    "SELECT * FROM t WHERE id = 7 AND name LIKE '%abc%';",
    "#include <stdio.h>\n#define MAX(a,b) ((a)>(b)?(a):(b))\n",
]

NUMBERS = [
    "0", "7", "42", "123", "1234", "12345", "1234567",
    "3.14159265358979323846", "-0.5e-10", "1,000,000", "1 000 000", "2024-01-31T12:00:00Z",
    "1" * 100, "9876543210" * 7, "0.000000001", "+1 (555) 123-4567", "١٢٣٤٥ ٦٧٨", "Ⅻ ½ ² ³ ①②",
    "12+34=46", "99*99=9801", "100-1=99",
]

LATEX = [
    r"$\frac{a}{b} + \sqrt{x^2 + y^2} = \int_0^\infty e^{-t} dt$",
    r"\begin{align} f(x) &= \sum_{n=0}^{N} \binom{N}{n} x^n \\ g &= \alpha\beta\gamma \end{align}",
    r"\boxed{\dfrac{3\pi}{4}} \quad \text{and} \quad \mathbb{R}^{n \times m}",
    "∀ε>0 ∃δ>0: |x−y|<δ ⇒ |f(x)−f(y)|<ε",
]

CJK = [
    "你好，世界！今天天气很好。",
    "日本語のテキストとカタカナ、ひらがな。",
    "한국어 텍스트입니다.",
    "中文English混合123数字",
    "我爱北京天安门",
    "「引用」『二重』【括弧】",
]

EMOJI_MARKS = [
    "😀😃😄 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️",
    "e\u0301 (e + combining acute) vs é; a\u0308 o\u0302\u0323",
    "Å (A + ring) \u212b (angstrom sign) ﬁ ligature ＡＢＣ full-width",
    "Z̤͔ͧ̑̓ä͖̭̈̇lͮ̒ͫǧ̗͚̚o̙̔ͮ̇͐̇",
    "\u1100\u1161\u11a8 hangul jamo",
    "देवनागरी हिन्दी",
    "مرحبا بالعالم",
    "שלום עולם",
    "Ελληνικά και Кириллица",
    "\u200b zero\u200dwidth\u2060joiners \ufeff bom",
]

WHITESPACE = [
    "a  b   c    d",
    "tab\tseparated\t\tvalues",
    "line1\nline2\n\nline4\n\n\n",
    "windows\r\nline\r\nendings\r\n",
    "old\rmac\rendings",
    "unicode\u2028line\u2029separator",
    "next\u0085line",
    "nbsp\u00a0here\u3000ideographic\u2003em\u202fnarrow",
    "\n\n\n",
    "   \n   \n",
    " \t \r\n \x0b \x0c ",
    "trailing     ",
    "\x1c\x1d\x1e\x1f control separators",
    "\x00 nul \x01 \x7f",
]

SPECIAL_QWEN = [
    "hello<|im_end|>world",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "a<|endoftext|><|endoftext|>b",
    "<think>\nreasoning\n</think>\n\nanswer",
    "<|im_start|> spaced <|im_end|> tokens",
    "<|im_end",
    "<|im_start|><|im_end|>",
]

SPECIAL_DEEPSEEK = [
    "<｜begin▁of▁sentence｜>Hello<｜User｜>Hi<｜Assistant｜>Yo<｜end▁of▁sentence｜>",
    "text<｜tool▁calls▁begin｜>x<｜tool▁sep｜>y",
    "<｜end▁of▁sentence｜ partial",
]

EMPTY = [""]

INVALID_UTF8 = [
    b"\xff\xfe bad lead bytes",
    b"truncated \xe4\xbd",
    b"\xe4\xbd at start then ok",
    b"overlong \xc0\xaf and \xe0\x80\xaf",
    b"surrogate \xed\xa0\x80 half",
    b"too big \xf4\x90\x80\x80 and \xf5\x80",
    b"lone continuation \x80\x80\x80 bytes",
    b"mixed \xf0\x9f\x98 emoji cut",
    b"\xc3",
]


def long_text(n_bytes, seed=7):
    """About n_bytes of mixed text drawn from every category."""
    rng = random.Random(seed)
    pool = ENGLISH + CODE + NUMBERS + LATEX + CJK + EMOJI_MARKS + WHITESPACE
    out, size = [], 0
    while size < n_bytes:
        s = rng.choice(pool)
        sep = rng.choice([" ", "\n", "", "  ", "\n\n", "\t"])
        out.append(s + sep)
        size += len((s + sep).encode())
    return "".join(out)


def cases(specials):
    """(name, text) for every valid-UTF-8 case; specials picks the family's special tokens."""
    groups = [("english", ENGLISH), ("code", CODE), ("numbers", NUMBERS), ("latex", LATEX),
              ("cjk", CJK), ("emoji_marks", EMOJI_MARKS), ("whitespace", WHITESPACE),
              ("special", specials), ("empty", EMPTY)]
    out = []
    for g, items in groups:
        for i, s in enumerate(items):
            out.append((f"{g}[{i}]", s))
    out.append(("mixed_64k", long_text(64 * 1024)))
    return out
