#!/usr/bin/env bash
# The per-step costs of remote rollouts that grow with the model, at a given shape (default the
# Qwen2.5-0.5B shape in bf16, the rollout dtype): the size of one published model directory,
# the time to write it (fsync'd), and the time a server takes to load it (`/reload`'s
# load_seconds) and to answer the reload call. Usage: scripts/remote-cost.sh [PRESET] [DTYPE]
set -euo pipefail
cd "$(dirname "$0")/.."
preset=${1:-qwen2.5-0.5b}
dtype=${2:-bf16}
alp=target/release/alp
[ -x "$alp" ] || cargo build --release -p alp-cli
d=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill $pid 2>/dev/null; rm -rf "$d"' EXIT
"$alp" init --preset "$preset" --dtype "$dtype" --out "$d/m" >/dev/null
bytes=$(du -sb "$d/m" | cut -f1)
write_s=$(python3 - "$d/m" "$d/copy" <<'PY'
import os, shutil, sys, time
src, dst = sys.argv[1], sys.argv[2]
os.makedirs(dst)
t = time.perf_counter()
for name in os.listdir(src):
    with open(os.path.join(src, name), "rb") as f, open(os.path.join(dst, name), "wb") as g:
        shutil.copyfileobj(f, g, 1 << 24)
        g.flush(); os.fsync(g.fileno())
print(f"{time.perf_counter() - t:.3f}")
PY
)
export ALP_RELOAD_TOKEN=remote-cost-measurement-token
"$alp" serve --port 0 >"$d/serve.log" 2>&1 &
pid=$!
for _ in $(seq 100); do url=$(grep -o 'http://[0-9.:]*' "$d/serve.log" || true); [ -n "$url" ] && break; sleep 0.1; done
for v in 1 2; do
    t0=$(date +%s.%N)
    r=$(curl -s -H "Authorization: Bearer $ALP_RELOAD_TOKEN" -H 'Content-Type: application/json' \
        -d "{\"path\": \"$d/copy\", \"version\": $v}" "$url/reload")
    t1=$(date +%s.%N)
    echo "reload $v: $r, call $(echo "$t1 - $t0" | bc) s"
done
echo "preset $preset ($dtype): directory $((bytes / 1000000)) MB, write+fsync ${write_s} s"
lscpu | grep 'Model name'
