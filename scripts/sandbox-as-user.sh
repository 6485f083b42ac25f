#!/usr/bin/env bash
# Runs the Python sandbox's hostile suite (alp-envs/tests/python_sandbox.rs) as an ordinary
# user, the second of the two callers it must hold against (`cargo test` runs it as the
# caller, root in CI). Run by root: creates the user (ALP_SANDBOX_USER, default
# alp-sandbox-user) when missing and runs a copy of the test binary as that user, in that
# user's home, with a clean environment.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
    echo "run this as root: it creates and becomes an unprivileged user" >&2
    exit 1
fi
user=${ALP_SANDBOX_USER:-alp-sandbox-user}
id -u "$user" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$user"
home=$(getent passwd "$user" | cut -d: -f6)
# The workspace's test build (the README's test command: the same features, nothing rebuilt).
# As the ordinary user the suite must run, not skip: ALP_REQUIRE_BWRAP=1 below.
bin=$(cargo test --workspace --release --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json, sys
for line in sys.stdin:
    j = json.loads(line)
    if j.get("reason") == "compiler-artifact" and j.get("executable") and j["target"]["name"] == "python_sandbox":
        print(j["executable"])' | head -1)
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cp "$bin" "$dir/python_sandbox"
chmod 755 "$dir" "$dir/python_sandbox"
echo "+ runuser -u $user -- $dir/python_sandbox (as $(id -u "$user"), in $home)"
cd "$home"
runuser -u "$user" -- env -i HOME="$home" USER="$user" PATH=/usr/local/bin:/usr/bin:/bin ALP_REQUIRE_BWRAP=1 \
    LANG=C.UTF-8 "$dir/python_sandbox" "$@"
