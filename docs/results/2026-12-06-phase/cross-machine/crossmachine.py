"""Cross-machine repeat: a cell's paired differences (row − alp-seq) from the first machine's
warm start against the same cell rerun on another machine's warm start with the same seeds.
Usage: crossmachine.py OLD.json NEW.json SETTING..."""
import json, sys

old_path, new_path, *settings = sys.argv[1:]
old = json.load(open(old_path))
new = json.load(open(new_path))

def rows(d, setting):
    return {m["method"]: m for m in d["methods"] if m["setting"] == setting}

f = lambda x: f"{x:+.1f}"
for s in settings:
    o, n = rows(old, s), rows(new, s)
    print(f"## {s}\n")
    print("| row | first machine: row − alp-seq [t 95%] (pairs) | range a repeat should land in | second machine: row − alp-seq [t 95%] (pairs) | inside |")
    print("| --- | --- | --- | --- | --- |")
    inside = total = 0
    for m, po in o.items():
        a = po.get("accuracy_minus_alp_seq_paired")
        b = n.get(m, {}).get("accuracy_minus_alp_seq_paired")
        if not a or not b:
            continue
        lo, hi = a["replication_ci95_same_number_of_new_seeds"]
        ok = lo <= b["mean"] <= hi
        inside += ok
        total += 1
        print(f"| {m} | {f(a['mean'])} [{f(a['ci95'][0])}, {f(a['ci95'][1])}] ({a['pairs']}) | [{f(lo)}, {f(hi)}] | {f(b['mean'])} [{f(b['ci95'][0])}, {f(b['ci95'][1])}] ({b['pairs']}) | {'yes' if ok else 'no'} |")
    print(f"\n{inside} of {total} rows inside.\n")
