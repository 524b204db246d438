"""``python -m benchmarks.viewer``: how fast the trace viewer shows 10,000 examples in headless chromium.

A synthetic trace folder (K prompts per example, analyses of a few sentences, a few hundred
distinct image files shared by the examples) is written through the trace store, turned into a
viewer by ``write_viewer``, and opened from disk in the system chromium several times, each in a
fresh profile. Per opening: the time from navigation start until the first page of cards is in
the DOM (measured in the page), the wall time of the whole load as the driver sees it, and the
time of a filter change, a text search and a page turn. The target is a first page in < 2 s.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw

from sdrt.evaluation.viewer import find_chromium, launch_headless, write_viewer
from sdrt.traces.store import TraceStore

TARGET_MS = 2000.0
SENTENCE = (
    "the image shows a small red circle next to a large blue square on a white background there are two "
    "objects left of right above below the question asks about colour shape count which one"
)
WORDS = tuple(SENTENCE.split())
ANSWERS = ("red", "blue", "green", "circle", "square", "triangle", "2", "3", "yes", "no")


def synthetic_image(path: Path, rng: random.Random) -> None:
    image = Image.new("RGB", (160, 120), "white")
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x, y = rng.randrange(0, 120), rng.randrange(0, 80)
        colour = tuple(rng.randrange(0, 256) for _ in range(3))
        draw.rectangle((x, y, x + rng.randrange(10, 40), y + rng.randrange(10, 40)), fill=colour)
    image.save(path)


def synthetic_folder(root: Path, examples: int, k: int, images: int, seed: int = 0) -> Path:
    """A trace folder of ``examples`` x ``k`` rows, written in shards of 1,000 examples."""
    rng = random.Random(seed)
    image_dir = root / "images-src"
    image_dir.mkdir(parents=True, exist_ok=True)
    paths = [image_dir / f"{i}.png" for i in range(images)]
    for path in paths:
        synthetic_image(path, rng)
    store = TraceStore(root / "traces")
    store.check_or_write_manifest({"model": "synthetic", "data": {"source": "synthetic"}})
    rows: list[dict] = []
    for i in range(examples):
        answers = [rng.choice(ANSWERS[:4]) for _ in range(k)]
        pseudo = max(set(answers), key=answers.count)
        for rank, answer in enumerate(answers):
            rows.append(
                {
                    "example_id": f"synthetic-{i:05d}",
                    "example_index": i,
                    "source": rng.choice(("easy-vqa:train", "scenes:multi-hop:train")),
                    "image_path": str(paths[i % images]),
                    "question": f"What colour is the object {i}?",
                    "task_type": "scene",
                    "references": [rng.choice(ANSWERS[:4])] if i % 2 else [],
                    "prompt_id": f"prompt-{rank}",
                    "prompt_rank": rank,
                    "analysis": " ".join(rng.choice(WORDS) for _ in range(rng.randrange(10, 70))),
                    "raw_answer": f"The answer is {answer}.",
                    "answer": answer,
                    "answer_logprob": -rng.random() * 5,
                    "answer_mean_logprob": -rng.random(),
                    "analysis_tokens": rng.randrange(10, 90),
                    "answer_tokens": 4,
                    "ensemble_answer": pseudo,
                    "ensemble_agreement": answers.count(pseudo) / k,
                    "prompt_weight": 1.0 / k,
                }
            )
        if (i + 1) % 1000 == 0 or i + 1 == examples:
            store.write_shard(rows)
            rows = []
    return root / "traces"


IMAGES_DECODED = "() => Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
INTERACTIONS = """() => {
  const time = (act) => { const t = performance.now(); act(); return performance.now() - t; };
  const change = (id, value) => { const el = document.getElementById(id); el.value = value;
    el.dispatchEvent(new Event("change")); };
  const filter = time(() => change("f-agreement", "split"));
  const turn = time(() => document.querySelector("button.next").click());
  change("f-agreement", "");
  const sort = time(() => change("sort", "agreement-asc"));
  return {filter, turn, sort};
}"""


def open_once(playwright, executable: str, url: str, examples: int) -> dict[str, float]:
    """One opening in a fresh profile: first page, images of that page, then three interactions."""
    with tempfile.TemporaryDirectory() as profile:
        context = launch_headless(playwright, executable, Path(profile))
        try:
            page = context.new_page()
            start = time.perf_counter()
            page.goto(url, wait_until="commit")
            page.wait_for_selector("article.ex", state="attached")
            wall_ms = (time.perf_counter() - start) * 1000
            page.wait_for_selector("body[data-rendered-ms]", state="attached")
            rendered_ms = float(page.get_attribute("body", "data-rendered-ms") or "nan")
            page.wait_for_function(IMAGES_DECODED)
            images_ms = (time.perf_counter() - start) * 1000
            actions = page.evaluate(INTERACTIONS)
            search_start = time.perf_counter()
            page.fill("#f-search", f"object {examples // 2}?")  # one question only
            page.wait_for_function("() => document.getElementById('shown-count').textContent === '1'")
            search_ms = (time.perf_counter() - search_start) * 1000 - 120  # less the typing debounce
        finally:
            context.close()
    return {
        "first page (in page)": rendered_ms,
        "first page (driver wall)": wall_ms,
        "images of the first page": images_ms,
        "filter change": actions["filter"],
        "page turn": actions["turn"],
        "sort": actions["sort"],
        "text search": search_ms,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.viewer", description=__doc__)
    parser.add_argument("--examples", type=int, default=10_000)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--images", type=int, default=300, help="distinct image files")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--work", type=Path, help="where the folder and viewer go (default: a temp dir)")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    executable = find_chromium()
    if executable is None:
        raise SystemExit("no chromium: apt-get install chromium (or set SDRT_CHROMIUM)")
    work = args.work or Path(tempfile.mkdtemp(prefix="sdrt-viewer-bench-"))
    traces = synthetic_folder(work, args.examples, args.k, args.images)
    start = time.perf_counter()
    page, stats = write_viewer([traces], work / "viewer")
    write_s = time.perf_counter() - start
    size_mib = page.stat().st_size / 2**20
    print(f"viewer: {stats.examples} examples, K {args.k}, {stats.images} images, page {size_mib:.1f} MiB")
    print(f"write_viewer: {write_s:.1f} s")
    with sync_playwright() as playwright:
        url = page.resolve().as_uri()
        runs = [open_once(playwright, executable, url, stats.examples) for _ in range(args.repeats)]
    for name in runs[0]:
        values = [r[name] for r in runs]
        print(f"{name}: median {statistics.median(values):.0f} ms, max {max(values):.0f} ms")
    worst = max(r["first page (driver wall)"] for r in runs)
    verdict = "met" if worst < TARGET_MS else "missed"
    print(f"target first page < {TARGET_MS:.0f} ms (worst of {args.repeats}, driver wall): {verdict}")
    (work / "viewer-benchmark.json").write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
