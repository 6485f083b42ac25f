"""A second set of realistic (gold, prediction) pairs, with math-verify's verdicts.

Usage: python3 scripts/mathverify_pairs_2.py  (needs `pip install math-verify`; writes /tmp/mv2/pairs.jsonl)
"""
import json, random, os
os.makedirs("/tmp/mv2", exist_ok=True)
random.seed(7)
pairs = []
golds = ["18", "3", "0.5", "\\frac{2}{3}", "-4", "12.5", "100", "\\sqrt{3}", "2\\sqrt{5}", "\\pi/4", "(2,-1)",
         "\\{-3, 3\\}", "[2, \\infty)", "x^2-4", "C", "\\text{(B)}", "45^\\circ", "5\\%", "1,250", "\\$15.50",
         "7", "0", "1/8", "\\dfrac{5}{12}", "3.14", "-\\frac{1}{2}", "(0,1]", "6x+2", "e^2", "\\log_2 8"]
tmpl_right = [
    "We compute carefully.\n\nTherefore, the answer is $\\boxed{%s}$.",
    "**Final Answer**\n\\[\n\\boxed{%s}\n\\]",
    "So the result is \\(\\boxed{%s}\\).",
    "The final answer is: $\\boxed{%s}$",
    "Answer: $%s$",
    "Thus $x = %s$.",
    "Hence the value is %s.",
    "...\n\nThe answer is %s",
]
def variants(g):
    v = {
        "0.5": ["\\frac{1}{2}", "1/2", "0.50", ".5"], "\\frac{2}{3}": ["2/3", "0.6667", "0.666667", "\\frac{4}{6}"],
        "12.5": ["\\frac{25}{2}", "12.50"], "100": ["100.0", "1e2", "10^2"], "\\sqrt{3}": ["1.732", "\\sqrt 3", "3^{1/2}"],
        "2\\sqrt{5}": ["\\sqrt{20}", "4.472"], "\\pi/4": ["\\frac{\\pi}{4}", "0.785398", "45^\\circ"],
        "(2,-1)": ["(2, -1)", "\\left(2,-1\\right)", "(-1,2)", "x=2, y=-1"],
        "\\{-3, 3\\}": ["\\pm 3", "-3, 3", "3, -3", "\\{3,-3\\}", "x = \\pm 3"],
        "[2, \\infty)": ["[2,\\infty)", "x \\geq 2", "(2, \\infty)"],
        "x^2-4": ["(x-2)(x+2)", "x^2 - 4", "x^2+4"], "C": ["(C)", "\\text{C}", "\\textbf{(C)}", "c"],
        "\\text{(B)}": ["B", "(B)", "\\text{B}"], "45^\\circ": ["45", "45°", "\\frac{\\pi}{4}"],
        "5\\%": ["5", "0.05", "5 \\%"], "1,250": ["1250", "1{,}250", "1 250"], "\\$15.50": ["15.5", "15.50", "\\$15.5"],
        "1/8": ["0.125", "\\frac18", "\\frac{1}{8}"], "\\dfrac{5}{12}": ["5/12", "0.4167", "0.416667"],
        "3.14": ["\\pi", "3.140"], "-\\frac{1}{2}": ["-0.5", "\\frac{-1}{2}", "-1/2"], "(0,1]": ["(0, 1]", "[0,1]", "0 < x \\le 1"],
        "6x+2": ["2(3x+1)", "6x + 2", "2+6x"], "e^2": ["7.389056", "e^{2}", "\\exp(2)"], "\\log_2 8": ["3"],
        "18": ["18.0", "\\$18", "18 dollars", "17"], "3": ["three", "3.0", "x=3"], "-4": ["-4.0", "4"], "7": ["7", "6"], "0": ["0.0", "-0"],
    }
    return v.get(g, [])
for g in golds:
    for t in random.sample(tmpl_right, 3):
        pairs.append((g, t % g))
    for a in variants(g):
        pairs.append((g, random.choice(tmpl_right) % a))
with open("/tmp/mv2/pairs.jsonl", "w") as f:
    from math_verify import parse, verify
    for g, p in pairs:
        f.write(json.dumps({"answer": g, "prediction": p, "math_verify": bool(verify(parse(f"${g}$"), parse(p)))}) + "\n")
print(len(pairs))
