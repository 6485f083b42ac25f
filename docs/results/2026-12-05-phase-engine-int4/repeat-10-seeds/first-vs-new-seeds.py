import json, itertools, sys
j = json.load(open(sys.argv[1]))
acc = {}
for m in j["methods"]:
    acc[m["method"]] = {r["seed"]: 100 * r["final_accuracy"] for r in m["seeds"]}
def interval(d):
    n = len(d)
    means = sorted(sum(c) / n for c in itertools.product(d, repeat=n))
    q = lambda p: means[round((len(means) - 1) * p)]
    return sum(d) / n, q(0.025), q(0.975)
for seeds, label in ((range(0, 5), "seeds 0-4"), (range(5, 10), "seeds 5-9 (new)")):
    for m in ("grpo", "bypass", "alp-loss-no-noise"):
        d = [acc[m][s] - acc["alp-seq"][s] for s in seeds if s in acc[m] and s in acc["alp-seq"]]
        if len(d) == 5:
            mean, lo, hi = interval(d)
            print(f"{label:16} {m:18} - alp-seq: {mean:+.1f} [{lo:+.1f}, {hi:+.1f}]  per seed {', '.join(f'{x:+.1f}' for x in d)}")
