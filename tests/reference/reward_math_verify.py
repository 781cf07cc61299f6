"""Reference test: chord's math_boxed verifier against Hugging Face math-verify 0.9.

Every (gold, prediction) pair below carries the mathematically correct verdict (MATH conventions:
an answer is its canonical form; "\\%" is a unit, so 50\\% answers "50", not "0.5").
  - AGREE: math-verify gets these right; the test checks that math-verify really does (so a
    mislabelled row fails loudly) and that chord gives the same verdict.
  - MV_FALSE_POSITIVES: math-verify 0.9 accepts these wrong answers; the test checks that it still
    does (the row documents a real false positive) and that chord rejects them.
  - MV_FALSE_NEGATIVES: math-verify rejects these right answers; chord must accept them.
  - CHORD_STRICTER: math-verify is right (symbolic equivalence) and chord, which does no algebra,
    rejects them. Being stricter is the safe direction for a reward (no false positives); the test
    only checks that chord says `wrong`, never `error`, so the gap stays visible and documented.
Run: reward_math_verify.py <path to reward_tool>
"""
import json
import subprocess
import sys

from math_verify import parse, verify

T, F = True, False

AGREE = [
    # equal forms of one value
    (r"\frac{1}{2}", r"0.5", T),
    (r"0.5", r"\frac12", T),
    (r"\frac{1}{2}", r"1/2", T),
    (r"\dfrac{3}{4}", r"\frac{3}{4}", T),
    (r"\tfrac{3}{4}", r"0.75", T),
    (r"1.5", r"\frac{3}{2}", T),
    (r"10", r"10.0", T),
    (r"10", r"10.00", T),
    (r"-2", r"-2.0", T),
    (r"1000", r"1,000", T),
    (r"1000000", r"1{,}000{,}000", T),
    (r"1234567", r"1,234,567", T),
    (r"0.25", r".25", T),
    (r"-\frac{1}{2}", r"\frac{-1}{2}", T),
    (r"\frac{1}{3}", r"0.3333333", T),
    (r"18.90", r"\$18.90", T),
    (r"18.9", r"\$18.90", T),
    # units, degrees, percent signs, assignments
    (r"50", r"50\%", T),
    (r"9", r"9\%", T),
    (r"30", r"30^\circ", T),
    (r"30^{\circ}", r"30", T),
    (r"5", r"5\text{ cm}", T),
    (r"12", r"12 \text{ inches}", T),
    (r"5", r"x = 5", T),
    (r"-3", r"y=-3", T),
    (r"\frac{1}{2}", r"k = \frac{1}{2}", T),
    # radicals, fractions, spacing, delimiters
    (r"\sqrt{2}", r"\sqrt2", T),
    (r"2\sqrt{3}", r"2 \sqrt 3", T),
    (r"\frac{\sqrt{3}}{2}", r"\frac{\sqrt3}{2}", T),
    (r"3\pi", r"3 \pi", T),
    (r"x^2+2x+1", r"x^2 + 2x + 1", T),
    (r"(3, \frac{\pi}{2})", r"\left( 3, \frac{\pi}{2} \right)", T),
    (r"[1, 2)", r"[1,2)", T),
    (r"2, 5", r"5, 2", T),
    (r"-1, 3", r"3, -1", T),
    (r"\{1,2\}", r"\{2,1\}", T),
    (r"\text{Monday}", r"Monday", T),
    (r"\pi", r"\pi", T),
    (r"\infty", r"\infty", T),
    (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\begin{pmatrix}1\\2\end{pmatrix}", T),
    # wrong answers both reject
    (r"\frac{1}{2}", r"0.6", F),
    (r"2", r"3", F),
    (r"1000", r"100", F),
    (r"\frac{1}{3}", r"0.333", F),
    (r"\frac{1}{3}", r"0.33", F),
    (r"\frac{2}{3}", r"0.666666", F),
    (r"(1,2)", r"(2,1)", F),
    (r"[1,2]", r"(1,2)", F),
    (r"\sqrt{2}", r"\sqrt{3}", F),
    (r"x^2+1", r"x^2-1", F),
    (r"y=2x+1", r"y=2x+2", F),
    (r"x+2y=3", r"x+2y=4", F),
    (r"12", r"0.12", F),
    (r"9", r"0.09", F),
    (r"50", r"0.5", F),
    (r"\pi", r"3.14", F),
    (r"2, 5", r"2, 6", F),
    (r"1,2", r"12", F),
    (r"-5", r"5", F),
    (r"2\sqrt{2}", r"\sqrt{2}", F),
    (r"10", r"1", F),
    (r"\frac{3}{4}", r"\frac{4}{3}", F),
    (r"2^{100}", r"2^{100}+1", F),
    (r"1", r"1.0000001", F),
    (r"x=2", r"2x=4", F),
    (r"123456789012345678901", r"123456789012345678902", F),
]

# math-verify 0.9 says "equal" for every one of these; each is a wrong answer.
MV_FALSE_POSITIVES = [
    # numerically tiny values compared at fixed precision
    (r"\frac{1}{2004!}", r"\frac{1}{2006!}", F),
    (r"1/2004!", r"1/2005!", F),
    (r"10^{-20}", r"10^{-21}", F),
    (r"\frac{1}{10^{9}}", r"\frac{1}{10^{9}+1}", F),
    # equations with different coefficients (MATH wants the canonical form, e.g. a plane with
    # gcd 1 coefficients): sympy solves both to the same set
    (r"3x+2y=5", r"6x+4y=10", F),
    (r"2x-3y+z-4=0", r"4x-6y+2z-8=0", F),
    (r"y=2x+1", r"2y=4x+2", F),
    # off by a factor of 100, accepted as percentages: "9\%" accepts both 9 and 0.09
    (r"9\%", r"0.09", F),
    (r"12.5\%", r"0.125", F),
    (r"50\%", r"0.5", F),
    (r"0.5", r"50\%", F),
    (r"0.1", r"10\%", F),
]

# math-verify 0.9 rejects these right answers (it does not read the LaTeX); chord accepts them.
MV_FALSE_NEGATIVES = [
    (r"1000", r"1\,000", T),
    (r"\frac{\pi}{4}", r"\frac\pi4", T),
]

# math-verify right, chord stricter (no symbolic algebra): chord must say `wrong` (never `error`).
CHORD_STRICTER = [
    (r"\frac{\sqrt{3}}{2}", r"\frac{1}{2}\sqrt{3}", T),
    (r"2x+1", r"1+2x", T),
]


def mv_verdict(gold, pred):
    return bool(verify(parse("\\boxed{" + gold + "}"), parse("The answer is \\boxed{" + pred + "}.")))


def chord_verdicts(tool, rows):
    lines = "".join(
        json.dumps({"completion": "The answer is \\boxed{" + pred + "}.", "answer": gold}) + "\n"
        for gold, pred, _ in rows
    )
    out = subprocess.run(
        [tool, json.dumps({"type": "math_boxed"})],
        input=lines, capture_output=True, text=True, timeout=60, check=True,
    )
    results = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(results) == len(rows), (len(results), len(rows), out.stderr)
    return results


def main():
    tool = sys.argv[1]
    rows = AGREE + MV_FALSE_POSITIVES + MV_FALSE_NEGATIVES + CHORD_STRICTER
    kinds = (["agree"] * len(AGREE) + ["mv-fp"] * len(MV_FALSE_POSITIVES)
             + ["mv-fn"] * len(MV_FALSE_NEGATIVES) + ["stricter"] * len(CHORD_STRICTER))
    assert len(AGREE) + len(MV_FALSE_POSITIVES) >= 60
    results = chord_verdicts(tool, rows)
    failures = []
    print(f"{'set':<10} {'gold':<36} {'prediction':<36} truth  mv     chord")
    for i, ((gold, pred, truth), res) in enumerate(zip(rows, results)):
        kind = kinds[i]
        mv = mv_verdict(gold, pred)
        chord = res["reason"] == "correct"
        print(f"{kind:<10} {gold:<36} {pred:<36} {truth!s:<6} {mv!s:<6} {chord!s:<6} "
              f"{res['reason']}")
        if res["reason"] not in ("correct", "wrong"):
            failures.append(f"{gold!r} vs {pred!r}: chord reason {res['reason']} ({res['detail']})")
        if res["reward"] != (1.0 if chord else 0.0):
            failures.append(f"{gold!r} vs {pred!r}: reward {res['reward']} for {res['reason']}")
        if kind == "agree":
            if mv != truth:
                failures.append(f"{gold!r} vs {pred!r}: math-verify says {mv}, table says {truth}")
            if chord != truth:
                failures.append(f"{gold!r} vs {pred!r}: chord says {chord}, math-verify and truth {truth}")
        elif kind in ("mv-fp", "mv-fn"):
            if mv == truth:
                failures.append(f"{gold!r} vs {pred!r}: math-verify now gets this right; move it")
            if chord != truth:
                failures.append(f"{gold!r} vs {pred!r}: chord says {chord}, truth {truth}")
        else:
            if mv != truth:
                failures.append(f"{gold!r} vs {pred!r}: math-verify says {mv}, table says {truth}")
            if chord:
                failures.append(f"{gold!r} vs {pred!r}: chord now accepts it; move it to AGREE")
    checked = [i for i in range(len(rows)) if kinds[i] != "stricter"]
    right = sum(1 for i in checked if (results[i]["reason"] == "correct") == rows[i][2])
    print(f"\nchord right on {right}/{len(checked)} pairs (math-verify: {len(AGREE)} agreed, "
          f"{len(MV_FALSE_POSITIVES)} false positives and {len(MV_FALSE_NEGATIVES)} false negatives "
          f"corrected); {len(CHORD_STRICTER)} documented cases where chord is stricter")
    if failures:
        print("\nFAILURES:\n" + "\n".join(failures))
        sys.exit(1)


if __name__ == "__main__":
    main()
