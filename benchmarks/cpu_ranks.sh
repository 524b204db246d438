#!/usr/bin/env bash
# Trace generation on a CPU: one process using every core against one single-threaded process
# per core, each taking its share of the examples (the ranks torchrun would start;
# docs/traces.md). Small decode matmuls share threads badly, separate processes do not.
# Both sides write a trace folder; the answers and analyses of the two are compared at the end.
# Usage: bash benchmarks/cpu_ranks.sh [EXAMPLES] [PROCESSES]   (defaults 48 and the core count)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -z "${PYTHON:-}" && -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; fi
PYTHON=${PYTHON:-python}
EXAMPLES=${1:-48}
PROCESSES=${2:-$(nproc)}
OUT=${OUT:-runs/cpu-ranks}
MODEL=${MODEL:-embedded}
rm -rf "$OUT" && mkdir -p "$OUT"
printf "analysis_tokens: 128\n" > "$OUT/traces.yaml"  # the study's and the demo's step-1 budget
ARGS=(traces --model "$MODEL" --benchmark scenes:multi-hop --split train --limit "$EXAMPLES"
  --seed 11 --prompts image_description,counting,spatial_relations --k 3 --batch-size 16
  --dtype float32 --config "$OUT/traces.yaml")

since() {  # seconds since a `date +%s%N` stamp, to the millisecond
  local ms=$((($(date +%s%N) - $1) / 1000000))
  printf "%d.%03d" $((ms / 1000)) $((ms % 1000))
}

began=$(date +%s%N)
"$PYTHON" -m sdrt.cli "${ARGS[@]}" --out "$OUT/one-process" > "$OUT/one-process.log" 2>&1
one=$(since "$began")

began=$(date +%s%N)
for ((rank = 0; rank < PROCESSES; rank++)); do
  RANK=$rank WORLD_SIZE=$PROCESSES OMP_NUM_THREADS=1 \
    "$PYTHON" -m sdrt.cli "${ARGS[@]}" --out "$OUT/ranks" > "$OUT/rank$rank.log" 2>&1 &
done
wait
ranks=$(since "$began")

echo "one process, $(nproc) threads: $one s; $PROCESSES processes of one thread: $ranks s (wall, model loading included)"
grep -h "^done:" "$OUT"/one-process.log "$OUT"/rank*.log
"$PYTHON" - "$OUT" <<'EOF'
import sys
from sdrt.traces.store import read_traces

def rows(folder):
    table = read_traces(folder).to_pydict()
    keys = zip(table["example_id"], table["prompt_id"], strict=True)
    return dict(zip(keys, zip(table["answer"], table["analysis"], strict=True), strict=True))

one, ranks = rows(f"{sys.argv[1]}/one-process"), rows(f"{sys.argv[1]}/ranks")
assert one.keys() == ranks.keys(), "the two sides traced different examples"
print(f"answers the same: {sum(one[k][0] == ranks[k][0] for k in one)}/{len(one)}; "
      f"analyses the same: {sum(one[k][1] == ranks[k][1] for k in one)}/{len(one)}")
EOF
