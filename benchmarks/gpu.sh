#!/usr/bin/env bash
# The benchmark figures on one NVIDIA GPU with no network: a randomly initialised model of
# Qwen2-VL-2B's size is built locally, then trace generation, the distillation step and
# answering are measured against their baselines (plus tokens per second and peak memory).
# Usage: bash benchmarks/gpu.sh [--examples N] [--k K] [--batch-size B]   (about 5-8 minutes)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -z "${PYTHON:-}" && -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; fi
PYTHON=${PYTHON:-python}
OUT=${OUT:-runs/gpu-bench}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/nvidia-smi.csv"
timeout "${LIMIT_S:-480}" "$PYTHON" -m benchmarks.gpu --device cuda --scale 2b --out "$OUT" "$@" \
  | tee "$OUT/figures.txt"
