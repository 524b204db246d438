#!/usr/bin/env bash
# Ablations of the SDRT adapter on the demo's traces: run `sdrt demo` first.
# Each variant changes one thing against the demo's adapter (configs/ablations/*.yaml), trains with
# the same steps, batch and seed on the same traces (teacher targets shared), and is evaluated on
# the same held-out examples as the demo. Prints a Markdown table at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-runs/demo}
STEPS=${STEPS:-60}
LIMIT=${LIMIT:-60}
SDRT=.venv/bin/sdrt
traces=(--traces "$WORK/traces-easy-vqa" --traces "$WORK/traces-scenes-multi-hop")
for variant in no-skip uniform-weights ce-only hidden-only; do
    out="$WORK/ablation-$variant"
    $SDRT distill --config "configs/ablations/$variant.yaml" "${traces[@]}" --out "$out" --steps "$STEPS" \
        --cache-teacher --teacher-cache "$WORK/adapter/teacher-cache"
    [ -f "$out/results.json" ] || $SDRT eval --benchmark easy-vqa --benchmark scenes --mode adapter \
        --adapter "$out" --limit "$LIMIT" --out "$out/results.json"
done
.venv/bin/python scripts/ablation_table.py "$WORK"
