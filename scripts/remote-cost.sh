#!/usr/bin/env bash
# The per-step costs of remote rollouts that grow with the model, at a given shape (default the
# Qwen2.5-0.5B shape in bf16, the rollout dtype): the size of one published model directory,
# the time to write it (fsync'd), and the time a server takes to load it (`/reload`'s
# load_seconds) and to answer the reload call; then the same for a LoRA adapter of rank
# LORA_R (default 16, every projection) over that base, which is what a LoRA run publishes per
# step (the server keeps the base between reloads).
# Usage: scripts/remote-cost.sh [PRESET] [DTYPE]
set -euo pipefail
cd "$(dirname "$0")/.."
preset=${1:-qwen2.5-0.5b}
dtype=${2:-bf16}
alp=target/release/alp
[ -x "$alp" ] || cargo build --release -p alp-cli
d=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill $pid 2>/dev/null; rm -rf "$d"' EXIT
lora_r=${LORA_R:-16}
"$alp" init --preset "$preset" --dtype "$dtype" --out "$d/m" --lora-r "$lora_r" >/dev/null 2>&1
mv "$d/m/adapter" "$d/adapter"
bytes=$(du -sb "$d/m" | cut -f1)
write_s() { python3 - "$1" "$2" <<'PY'
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
}
write_s=$(write_s "$d/m" "$d/copy")
adapter_bytes=$(du -sb "$d/adapter" | cut -f1)
adapter_write_s=$(write_s "$d/adapter" "$d/adapter-copy")
export ALP_RELOAD_TOKEN=remote-cost-measurement-token
"$alp" serve --port 0 >"$d/serve.log" 2>&1 &
pid=$!
for _ in $(seq 100); do url=$(grep -o 'http://[0-9.:]*' "$d/serve.log" || true); [ -n "$url" ] && break; sleep 0.1; done
# reload LABEL BODY: one /reload call, timed from the client.
reload() {
    t0=$(date +%s.%N)
    r=$(curl -s -H "Authorization: Bearer $ALP_RELOAD_TOKEN" -H 'Content-Type: application/json' \
        -d "$2" "$url/reload")
    t1=$(date +%s.%N)
    echo "reload $1: $r, call $(echo "$t1 - $t0" | bc) s"
}
for v in 1 2; do
    reload "$v" "{\"path\": \"$d/copy\", \"version\": $v}"
done
for v in 3 4; do
    reload "$v (adapter over the base; the first also reads the base)" \
        "{\"path\": \"$d/copy\", \"adapter\": \"$d/adapter-copy\", \"version\": $v}"
done
echo "preset $preset ($dtype): directory $((bytes / 1000000)) MB, write+fsync ${write_s} s"
echo "rank-$lora_r adapter ($dtype): directory $((adapter_bytes / 1000)) kB, write+fsync ${adapter_write_s} s"
lscpu | grep 'Model name'
