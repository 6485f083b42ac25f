"""Builds a set of realistic (gold, prediction) pairs and, when math-verify is installed,
records its verdicts, so `alp grade` can be compared with it.

Usage: python3 scripts/mathverify_pairs.py OUT.jsonl   (needs `pip install math-verify`)
"""
import json
import random
import sys

random.seed(0)
golds = [
    "72", "18", "-5", "0", "1000", "7425000", "3.5", "0.25", "\\frac{1}{2}", "\\frac{3}{4}",
    "\\frac{14}{3}", "-\\frac{10}{9}", "\\sqrt{2}", "3\\sqrt{13}", "2\\pi", "\\frac{9}{4}\\pi",
    "(1,2)", "(3, \\frac{\\pi}{2})", "[0,1)", "(-\\infty, 3]", "\\{1,2,3\\}", "x^2+2x+1",
    "2x+3", "\\frac{x+2}{7}", "90", "28", "15", "125", "1 \\pm \\sqrt{19}", "-2,1",
    "\\text{B}", "B", "4.5", "12", "100", "\\frac{\\sqrt{3}}{2}", "2^{10}", "1.5", "64", "5",
]
right_forms = [
    lambda g: f"So the answer is $\\boxed{{{g}}}$.",
    lambda g: f"Therefore, the final answer is $\\boxed{{{g}}}$.",
    lambda g: f"We compute step by step.\n\n**Final Answer**\n\\[\\boxed{{{g}}}\\]",
    lambda g: f"Thus the result is \\boxed{{{g}}}",
    lambda g: f"The final answer is ${g}$. I hope it is correct.",
]
alt = {
    "72": ["72.0", "72.00", "\\$72"], "1000": ["1,000", "1000.0"], "7425000": ["7,425,000"],
    "3.5": ["\\frac{7}{2}", "7/2", "3\\frac{1}{2}"], "0.25": ["\\frac{1}{4}", "1/4", ".25"],
    "\\frac{1}{2}": ["0.5", "\\dfrac{1}{2}", "1/2", "\\frac12"], "\\frac{3}{4}": ["0.75", "\\tfrac{3}{4}"],
    "\\frac{14}{3}": ["\\dfrac{14}{3}", "4\\frac{2}{3}"], "-\\frac{10}{9}": ["\\frac{-10}{9}", "-10/9"],
    "\\sqrt{2}": ["\\sqrt2", "\\sqrt{2}"], "3\\sqrt{13}": ["\\sqrt{117}"], "2\\pi": ["2 \\pi", "\\pi \\cdot 2"],
    "\\frac{9}{4}\\pi": ["\\frac{9\\pi}{4}", "\\frac94\\pi"], "(1,2)": ["(1, 2)", "\\left(1,2\\right)"],
    "[0,1)": ["[0, 1)"], "\\{1,2,3\\}": ["\\{3,2,1\\}"], "x^2+2x+1": ["(x+1)^2"], "2x+3": ["3+2x"],
    "\\frac{x+2}{7}": ["\\frac{x}{7}+\\frac{2}{7}"], "90": ["90^\\circ", "90^{\\circ}"], "28": ["28\\%"],
    "15": ["15\\text{ cm}^2"], "125": ["125\\text{ miles}"], "-2,1": ["1,-2"], "B": ["\\text{B}"],
    "4.5": ["\\frac{9}{2}", "9/2"], "2^{10}": ["1024"], "64": ["2^6", "8^2"], "1.5": ["\\frac{3}{2}"],
    "\\frac{\\sqrt{3}}{2}": ["\\frac{1}{2}\\sqrt{3}"], "5": ["x = 5", "5.0"], "12": ["k=12"],
}
wrong = {
    "72": ["27", "72.5", "7.2"], "18": ["81", "-18"], "-5": ["5"], "0": ["1"], "1000": ["100", "10000"],
    "3.5": ["\\frac{5}{2}", "35"], "0.25": ["\\frac{1}{3}", "2.5"], "\\frac{1}{2}": ["\\frac{1}{3}", "2"],
    "\\frac{3}{4}": ["\\frac{4}{3}"], "\\sqrt{2}": ["2", "1.41"], "3\\sqrt{13}": ["3\\sqrt{12}", "13\\sqrt{3}"],
    "2\\pi": ["\\pi", "6.28"], "(1,2)": ["(2,1)"], "[0,1)": ["(0,1)", "[0,1]"], "(-\\infty, 3]": ["(-\\infty,3)"],
    "\\{1,2,3\\}": ["\\{1,2\\}"], "x^2+2x+1": ["x^2+1", "(x-1)^2"], "2x+3": ["2x-3"], "90": ["45"],
    "28": ["0.28", "72"], "15": ["16"], "B": ["C", "\\text{(D)}"], "4.5": ["4"], "64": ["2^5"],
    "12": ["13"], "5": ["6"], "-2,1": ["-1,2"], "1 \\pm \\sqrt{19}": ["1 + \\sqrt{19}"],
}
pairs = []
for g in golds:
    for form in right_forms:
        pairs.append((g, form(g)))
    for a in alt.get(g, []):
        pairs.append((g, random.choice(right_forms)(a)))
    for w in wrong.get(g, []):
        pairs.append((g, random.choice(right_forms)(w)))
    # Unboxed endings and traps.
    pairs.append((g, f"First we get \\boxed{{{g}}}, but recomputing gives \\boxed{{0.123}}."))
    pairs.append((g, f"So the total is {g}."))
    pairs.append((g, f"The answer is {g}"))
for g in ["72", "18", "1000", "5", "12", "64", "0"]:
    pairs.append((g, f"Janet sells 16 - 3 - 4 = 9 eggs.\nShe makes 9 * 2 = $18.\n#### {g}"))
    pairs.append((g, f"She has {g} apples left, and 3 friends."))
    pairs.append((g, "\\boxed{}"))

try:
    from math_verify import parse, verify
except ImportError:
    parse = None

with open(sys.argv[1], "w") as f:
    for g, p in pairs:
        rec = {"answer": g, "prediction": p}
        if parse is not None:
            rec["math_verify"] = bool(verify(parse(f"${g}$"), parse(p)))
            rec["math_verify_bare_gold"] = bool(verify(parse(g), parse(p)))
        f.write(json.dumps(rec) + "\n")
print(len(pairs), "pairs")
