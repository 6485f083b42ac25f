"""The repeat check with the intervals `alp compare` now reads: for each row, seeds 0-4 and
seeds 5-9 (new) minus alp-seq paired by seed, the Student t 95% interval of each half, and the
range the mean of five new pairs should land in given the first half (mean ± t·sd·sqrt(1/5 + 1/5)).
Usage: python3 t-and-replication.py compare.json"""
import json, math, sys
T975_4 = 2.776445  # Student t, 4 degrees of freedom
j = json.load(open(sys.argv[1]))
acc = {m["method"]: {r["seed"]: 100 * r["final_accuracy"] for r in m["seeds"]} for m in j["methods"]}
def stats(d):
    n = len(d); m = sum(d) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in d) / (n - 1))
    return m, sd
for row in ("grpo", "bypass", "alp-loss-no-noise"):
    halves = []
    for seeds in (range(0, 5), range(5, 10)):
        d = [acc[row][s] - acc["alp-seq"][s] for s in seeds if s in acc[row] and s in acc["alp-seq"]]
        halves.append(stats(d))
    (m1, sd1), (m2, sd2) = halves
    h1, h2 = T975_4 * sd1 / math.sqrt(5), T975_4 * sd2 / math.sqrt(5)
    rep = T975_4 * sd1 * math.sqrt(1 / 5 + 1 / 5)
    inside_ci = m1 - h1 <= m2 <= m1 + h1
    inside_rep = m1 - rep <= m2 <= m1 + rep
    print(f"{row:18} seeds 0-4 {m1:+.1f} [{m1-h1:+.1f}, {m1+h1:+.1f}]  seeds 5-9 {m2:+.1f} [{m2-h2:+.1f}, {m2+h2:+.1f}]  "
          f"repeat range [{m1-rep:+.1f}, {m1+rep:+.1f}]  new mean inside: t interval {'yes' if inside_ci else 'no'}, repeat range {'yes' if inside_rep else 'no'}")
