"""Collect the demo's and the ablations' results into one Markdown table."""

import json
import sys
from pathlib import Path


def main(work: Path) -> None:
    rows: dict[str, dict[str, float]] = {}
    demo = json.loads((work / "results.json").read_text())
    for s in demo["summaries"]:
        name = "SDRT (full)" if s["mode"] == "adapter" else s["mode"]
        rows.setdefault(name, {})[s["benchmark"]] = s["score"]
    for folder in sorted(work.glob("ablation-*")):
        results = folder / "results.json"
        if results.exists():
            for s in json.loads(results.read_text())["summaries"]:
                rows.setdefault(folder.name.removeprefix("ablation-"), {})[s["benchmark"]] = s["score"]
    benchmarks = sorted({b for scores in rows.values() for b in scores})
    print("| variant | " + " | ".join(benchmarks) + " |")
    print("|---|" + "---:|" * len(benchmarks))
    for name, scores in rows.items():
        print(f"| {name} | " + " | ".join(f"{scores.get(b, float('nan')):.3f}" for b in benchmarks) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/demo"))
