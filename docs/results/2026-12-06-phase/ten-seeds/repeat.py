"""The repeat check on the ten-seed cells: rows minus alp-seq paired by seed, on seeds 0–4 (the
main sweep) and 5–9 (new, same warm start), whether the second mean lands in the range the first
five predict for five new pairs (mean ± t₄·sd·√(1/5 + 1/5), as compare.json's
`replication_ci95_same_number_of_new_seeds`), and the interval over all ten pairs.
Usage: python3 repeat.py compare.json"""
import json, math, statistics as st, sys

T975 = {4: 2.7764451051977987, 9: 2.2621571627409915}
d = json.load(open(sys.argv[1]))
by = {(m["setting"], m["method"]): {s["seed"]: 100 * s["final_accuracy"] for s in m["seeds"]} for m in d["methods"]}
f = lambda x: f"{x:+.1f}"
for setting in [s["name"] for s in d["settings"]]:
    ref = by.get((setting, "alp-seq"), {})
    print(f"## {setting}\n")
    print("| row − alp-seq | seeds 0–4 [t 95%] | range for 5 new pairs | seeds 5–9 | inside | all 10 [t 95%] | detectable (10 pairs) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for (s, m), acc in by.items():
        if s != setting or m == "alp-seq":
            continue
        diff = {k: acc[k] - ref[k] for k in acc if k in ref}
        a = [diff[k] for k in range(5) if k in diff]
        b = [diff[k] for k in range(5, 10) if k in diff]
        if len(a) < 5 or len(b) < 5:
            continue
        ma, sa = st.mean(a), st.stdev(a)
        ha = T975[4] * sa / math.sqrt(5)
        r = T975[4] * sa * math.sqrt(2 / 5)
        mb = st.mean(b)
        al = a + b
        m10, s10 = st.mean(al), st.stdev(al)
        h10 = T975[9] * s10 / math.sqrt(10)
        # 80% power at the 5% level: (t_{.975} + t_{.80}) · sd / √n, t_{.80, 9} = 0.883.
        det = (T975[9] + 0.8834) * s10 / math.sqrt(10)
        print(f"| {m} | {f(ma)} [{f(ma - ha)}, {f(ma + ha)}] | [{f(ma - r)}, {f(ma + r)}] | {f(mb)} | {'yes' if abs(mb - ma) <= r else 'no'} | {f(m10)} [{f(m10 - h10)}, {f(m10 + h10)}] | ±{det:.1f} |")
    print()
