#!/bin/bash
# The cost of bit-exact rollouts (`rl.rollout_numerics = "exact"`): each `alp bench` run with
# the fast numerics, then with `--exact`, one after the other on this machine (peak RSS of the
# rollout runs by /usr/bin/time). Usage: bash scripts/exact-bench.sh [path to alp]
set -euo pipefail
A=${1:-target/release/alp}
lscpu | grep "Model name"
for ex in "" "--exact"; do
  /usr/bin/time -f "peak_rss_kb %M" "$A" bench rollout --preset alp-default --batch 64 --prompt-len 16 --new-tokens 48 --repeats 3 --json $ex 2>&1 | tail -2
done
for ex in "" "--exact"; do
  /usr/bin/time -f "peak_rss_kb %M" "$A" bench rollout --preset qwen2.5-0.5b --batch 16 --prompt-len 32 --new-tokens 32 --repeats 1 --json $ex 2>&1 | tail -2
done
for ex in "" "--exact"; do
  "$A" bench train --preset alp-default --batch 32 --seq-len 64 --steps 5 --json $ex 2>&1 | tail -1
done
for ex in "" "--exact"; do
  "$A" bench train --preset qwen2-25m --batch 8 --seq-len 128 --steps 2 --json $ex 2>&1 | tail -1
done
for ex in "" "--exact"; do
  /usr/bin/time -f "peak_rss_kb %M" "$A" bench rollout --preset alp-default --dtype bf16 --batch 64 --prompt-len 16 --new-tokens 48 --repeats 3 --json $ex 2>&1 | tail -2
done
for ex in "" "--exact"; do
  /usr/bin/time -f "peak_rss_kb %M" "$A" bench rollout --preset qwen2.5-0.5b --dtype bf16 --batch 16 --prompt-len 32 --new-tokens 32 --repeats 1 --json $ex 2>&1 | tail -2
done
