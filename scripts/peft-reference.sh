#!/usr/bin/env bash
# Python with torch (CPU), transformers, safetensors and PEFT for the LoRA parity tests, from the
# Python package registries. Prints the environment the tests read; use it as:
#   eval "$(bash scripts/peft-reference.sh)"
# An environment that already has them is used as it is: PEFT_PYTHON=/path/to/python, else the
# reference environment of ../shared/bench/setup_reference.sh when present, else python3 (into
# which the packages are installed: torch's CPU wheel first, PyPI's wheel if that index is out
# of reach).
set -euo pipefail
has() { "$1" -c "import torch, transformers, safetensors, peft" >/dev/null 2>&1; }
for py in "${PEFT_PYTHON:-}" "$HOME/.cache/alp-refenv/bin/python"; do
    if [ -n "$py" ] && [ -x "$py" ] && has "$py"; then
        echo "export ALP_PEFT_PYTHON=$py"
        exit 0
    fi
done
py=$(command -v python3)
if ! has "$py"; then
    if ! "$py" -c "import torch" >/dev/null 2>&1; then
        "$py" -m pip install --quiet torch --index-url https://download.pytorch.org/whl/cpu >&2 \
            || "$py" -m pip install --quiet torch >&2
    fi
    "$py" -m pip install --quiet "transformers>=4.45" safetensors peft >&2
fi
echo "export ALP_PEFT_PYTHON=$py"
