#!/usr/bin/env bash
# The main job (`alp train`, embedded default) with in-process rollouts and with rollouts on two
# local `alp serve` processes, seed by seed (the two alternate, so machine noise hits both), then
# a table of held-out accuracy and time per RL step.
# Usage: scripts/remote-vs-local.sh OUT_DIR [SEEDS...]   (default seeds 0 1 2)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/remote-vs-local.sh OUT_DIR [SEEDS...]}
shift
if [ $# -gt 0 ]; then seeds=("$@"); else seeds=(0 1 2); fi
alp=target/release/alp
[ -x "$alp" ] || cargo build --release -p alp-cli
mkdir -p "$out"
ALP_RELOAD_TOKEN=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
export ALP_RELOAD_TOKEN
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
start_server() { # starts one and sets $url (not in a subshell, so that cleanup knows its pid)
    local log=$1
    "$alp" serve --port 0 >"$log" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do
        url=$(grep -o 'http://[0-9.:]*' "$log" || true)
        [ -n "$url" ] && return
        sleep 0.1
    done
    echo "alp serve did not start: $(cat "$log")" >&2
    exit 1
}
for s in "${seeds[@]}"; do
    [ -f "$out/local-$s/summary.json" ] || "$alp" train --force --out "$out/local-$s" --set seed="$s" >"$out/local-$s.log" 2>&1
    if [ ! -f "$out/remote-$s/summary.json" ]; then
        start_server "$out/remote-$s.server-a.log"; a=$url
        start_server "$out/remote-$s.server-b.log"; b=$url
        "$alp" train --force --out "$out/remote-$s" --set seed="$s" \
            --set rl.rollout.backend=remote --set "rl.rollout.servers=[\"$a\",\"$b\"]" >"$out/remote-$s.log" 2>&1
        cleanup; pids=()
    fi
done
python3 - "$out" "${seeds[@]}" <<'PY'
import json, statistics as st, sys
out, seeds = sys.argv[1], sys.argv[2:]
rows = {}
for kind in ("local", "remote"):
    acc, step, roll, sync = [], [], [], []
    for s in seeds:
        d = f"{out}/{kind}-{s}"
        acc.append(100 * json.load(open(f"{d}/summary.json"))["eval_after_rl"]["accuracy"])
        recs = [json.loads(l) for l in open(f"{d}/metrics.jsonl")]
        recs = [r for r in recs if "time/train_s" in r.get("metrics", r)]
        m = [r.get("metrics", r) for r in recs]
        step.append(st.mean(x["time/wait_for_rollout_s"] + x["time/train_s"] + x["time/sync_s"] for x in m))
        roll.append(st.mean(x["time/rollout_s"] for x in m))
        sync.append(st.mean(x["time/sync_s"] for x in m))
    rows[kind] = (acc, step, roll, sync)
    print(f"{kind:6}  held-out % {' '.join(f'{a:5.1f}' for a in acc)}  (mean {st.mean(acc):.1f}, range {min(acc):.1f}-{max(acc):.1f})"
          f"  s/step {st.mean(step):.3f}  rollout s {st.mean(roll):.3f}  publish+sync s {st.mean(sync):.3f}")
print(f"time per step, remote / local: {st.mean(rows['remote'][1]) / st.mean(rows['local'][1]):.2f}")
PY
