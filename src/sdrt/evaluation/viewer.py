"""``sdrt view``: a static page to read what the model wrote at each step, one example at a time.

A prompt that does not help is diagnosed by reading its step-1 analyses, which is slow in
Parquet rows. ``write_viewer`` turns trace folders (and optionally the per-item results of
``sdrt eval``) into ``index.html`` with the data embedded as JSON and the images as small JPEG
files in ``images/`` beside it: the page opens from disk, needs no server and fetches nothing
from the network. Everything a filter needs is computed here once (each answer right or wrong
against the references, agreeing with the ensemble or not, stating the answer in step 1 or
not), so the page only counts and renders.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from html import escape as html_escape
from importlib.resources import files
from pathlib import Path
from typing import Any

from PIL import Image

from sdrt.data import load_records
from sdrt.data.records import DataError, VQARecord
from sdrt.evaluation.benchmarks import BENCHMARKS, get_benchmark
from sdrt.evaluation.evaluate import EvalResults, ItemResult
from sdrt.evaluation.metrics import score
from sdrt.reasoning.extract import extract_short_answer, normalize_answer
from sdrt.traces.store import TraceStore

log = logging.getLogger(__name__)

THUMBNAIL_SIDE = 320  # pixels: enough to read a chart's labels, small enough for 10,000 files
RIGHT_SCORE = 0.5  # a score at or above this counts as right (exact match is 0/1; ANLS and VQA in between)
ASSETS = ("viewer.html", "viewer.css", "viewer.js")


@dataclass
class ViewerStats:
    """What went into the page, printed by ``sdrt view`` so that gaps are not silent."""

    examples: int = 0
    traced: int = 0
    result_only: int = 0
    images: int = 0
    missing_images: int = 0
    prompts: list[str] = field(default_factory=list)
    modes: list[str] = field(default_factory=list)


class ImageWriter:
    """Thumbnails under ``images/``, named by content hash: identical images are written once."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self._by_key: dict[str, str | None] = {}
        self.missing = 0

    def add(self, key: str, load: Callable[[], Image.Image]) -> str | None:
        """The page-relative path of the image, or None when it cannot be read (counted)."""
        if key not in self._by_key:
            self._by_key[key] = self._write(load)
        if self._by_key[key] is None:
            self.missing += 1
        return self._by_key[key]

    @property
    def written(self) -> int:
        return len({name for name in self._by_key.values() if name})

    def _write(self, load: Callable[[], Image.Image]) -> str | None:
        try:
            image = load().convert("RGB")
        except (DataError, OSError, ValueError) as exc:
            log.warning("no image: %s", exc)
            return None
        image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=88)
        data = buffer.getvalue()
        name = f"images/{hashlib.sha1(data).hexdigest()[:16]}.jpg"
        path = self.folder.parent / name
        if not path.exists():
            path.write_bytes(data)
        return name


def metric_for(source: str | None, task_type: str | None) -> str:
    """The benchmark's metric when the source names one, else that of the first with the task type.

    Multiple choice needs the options, which traces do not keep, so it falls back to exact match.
    """
    name = (source or "").split(":", 1)[0]
    metric = BENCHMARKS[name].metric if name in BENCHMARKS else None
    if metric is None:
        metric = next((b.metric for b in BENCHMARKS.values() if b.task_type == task_type), None)
    return "exact_match" if metric in (None, "multiple_choice_accuracy") else metric


def is_right(metric: str, answer: str, references: Sequence[str]) -> bool | None:
    """Right or wrong against the references; None when there are none to judge by."""
    if not references:
        return None
    return score(metric, answer or "", {"answers": list(references)}) >= RIGHT_SCORE


def states_answer(analysis: str | None, answer: str | None) -> bool:
    """Step 1 already gave the final answer: its own short answer is the step-2 answer.

    The same extraction as step 2 is applied to the analysis, so "The shape is a circle." states
    "circle", while "A blue circle on a white background." describes without answering.
    """
    final = normalize_answer(answer or "")
    return bool(final) and normalize_answer(extract_short_answer(analysis or "")) == final


def same_answer(a: str | None, b: str | None) -> bool:
    return normalize_answer(a or "") == normalize_answer(b or "")


def trace_entry(row: dict[str, Any], metric: str, references: Sequence[str]) -> dict[str, Any]:
    """One prompt's two steps, with the flags the page filters and summarises by."""
    return {
        "p": row["prompt_id"],
        "a": row["analysis"] or "",
        "raw": row["raw_answer"] or "",
        "ans": row["answer"] or "",
        "lp": row["answer_logprob"],
        "mlp": row["answer_mean_logprob"],
        "at": row["analysis_tokens"],
        "w": row["prompt_weight"],
        "ok": is_right(metric, row["answer"] or "", references),
        "agree": same_answer(row["answer"], row["ensemble_answer"]),
        "states": states_answer(row["analysis"], row["answer"]),
    }


def example_entry(rows: list[dict[str, Any]], image: str | None) -> dict[str, Any]:
    """One example: its K rows (sorted by prompt rank) folded into one object for the page."""
    first = rows[0]
    references = list(first["references"] or [])
    metric = metric_for(first["source"], first["task_type"])
    answers = {normalize_answer(r["answer"] or "") for r in rows}
    return {
        "id": first["example_id"],
        "src": first["source"] or "",
        "task": first["task_type"] or "",
        "q": first["question"],
        "refs": references,
        "img": image,
        "ens": first["ensemble_answer"] or "",
        "agr": first["ensemble_agreement"],
        "una": len(answers) == 1,
        "ensOk": is_right(metric, first["ensemble_answer"] or "", references),
        "tr": [trace_entry(r, metric, references) for r in rows],
        "res": {},
    }


def group_rows(rows: Iterable[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Rows of one example together, in the order the store sorted them (example, then prompt)."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(row["example_id"], []).append(row)
    return list(grouped.values())


class SourceRecords:
    """The data source of a trace folder, read again only if an image is not on disk."""

    def __init__(self, manifest: dict[str, Any]) -> None:
        self.data = manifest.get("data") or {}
        self._records: dict[str, VQARecord] | None = None

    def get(self, example_id: str) -> VQARecord | None:
        if self._records is None:
            self._records = self._load()
        return self._records.get(example_id)

    def _load(self) -> dict[str, VQARecord]:
        if not self.data.get("source"):
            return {}
        kwargs = {"layout": self.data["layout"]} if self.data.get("layout") else {}
        try:
            records = load_records(
                self.data["source"],
                split=self.data.get("split", "train"),
                limit=self.data.get("limit"),
                seed=self.data.get("seed", 0),
                skip_bad=True,
                **kwargs,
            )
        except (DataError, OSError, KeyError) as exc:
            log.warning("cannot read %s again for its images: %s", self.data.get("source"), exc)
            return {}
        return {r.id: r for r in records}


def image_of(row: dict[str, Any], folder: Path, records: SourceRecords, images: ImageWriter) -> str | None:
    """The example's image file if it exists, else the record's image from the data source."""
    path = row["image_path"]
    if path and Path(path).is_file():
        return images.add(f"file:{Path(path).resolve()}", lambda: _open(Path(path)))
    record = records.get(row["example_id"])
    if record is None:
        images.missing += 1
        return None
    return images.add(f"record:{folder.resolve()}:{record.id}", record.load_image)


def _open(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image.copy()


def trace_examples(folder: Path, images: ImageWriter) -> list[dict[str, Any]]:
    """Every example of a trace folder, read through the trace store (all shards, all ranks)."""
    store = TraceStore(folder)
    records = SourceRecords(store.manifest())
    return [
        example_entry(rows, image_of(rows[0], folder, records, images))
        for rows in group_rows(store.read().to_pylist())
    ]


def result_entry(item: ItemResult) -> dict[str, Any]:
    return {
        "pred": item.prediction,
        "score": item.score,
        "ok": item.score >= RIGHT_SCORE if item.references else None,
    }


def result_only_example(items: list[ItemResult], image: str | None) -> dict[str, Any]:
    """An evaluated example with no trace: its modes' answers, and the ensemble's prompt answers."""
    first = items[0]
    benchmark = get_benchmark(first.benchmark) if first.benchmark in BENCHMARKS else None
    metric = benchmark.metric if benchmark else "exact_match"
    voted = next((i for i in items if i.prompt_answers), None)
    traces = [
        {"p": p, "a": None, "raw": "", "ans": a, "lp": None, "mlp": None, "at": None, "w": None}
        | {"ok": is_right(metric, a, first.references), "agree": same_answer(a, voted.prediction)}
        | {"states": False}
        for p, a in (voted.prompt_answers.items() if voted else [])
    ]
    answers = {normalize_answer(t["ans"]) for t in traces}
    return {
        "id": first.record_id,
        "src": f"{first.benchmark}:{benchmark.split if benchmark else 'eval'}",
        "task": benchmark.task_type if benchmark else "",
        "q": first.question,
        "refs": list(first.references),
        "img": image,
        "ens": voted.prediction if voted else "",
        "agr": None,
        "una": len(answers) <= 1,
        "ensOk": (voted.score >= RIGHT_SCORE if first.references else None) if voted else None,
        "tr": traces,
        "res": {i.mode: result_entry(i) for i in items},
    }


def benchmark_images(
    name: str, items: list[ItemResult], data_dir: Path, images: ImageWriter
) -> dict[str, str | None]:
    """Images of evaluated examples, from the benchmark read again (same id and same question only).

    Results do not keep the sample size or seed, so the evaluation's default seed and the
    number of items are tried first, then the whole split.
    """
    wanted = {i.record_id: i.question for i in items}
    found: dict[str, VQARecord] = {}
    if name in BENCHMARKS:
        for limit in (len(wanted), None):
            try:
                records = get_benchmark(name).load(data_dir, limit=limit, seed=0, skip_bad=True)
            except (DataError, OSError, KeyError, ValueError) as exc:
                log.warning("cannot read benchmark %s again for its images: %s", name, exc)
                break
            found |= {r.id: r for r in records if wanted.get(r.id) == r.question}
            if len(found) == len(wanted):
                break
    paths: dict[str, str | None] = {}
    for record_id in wanted:
        record = found.get(record_id)
        if record is None:
            images.missing += 1
            paths[record_id] = None
        else:
            paths[record_id] = images.add(f"benchmark:{name}:{record_id}", record.load_image)
    return paths


def attach_results(
    examples: list[dict[str, Any]], results: EvalResults, data_dir: Path, images: ImageWriter
) -> list[dict[str, Any]]:
    """Results beside the traced example of the same id; the others become examples of their own."""
    by_id = {e["id"]: e for e in examples}
    unmatched: dict[tuple[str, str], list[ItemResult]] = {}
    for item in results.items:
        if item.record_id in by_id:
            by_id[item.record_id]["res"][item.mode] = result_entry(item)
        else:
            unmatched.setdefault((item.benchmark, item.record_id), []).append(item)
    extra: list[dict[str, Any]] = []
    for name in dict.fromkeys(b for b, _ in unmatched):
        groups = [items for (b, _), items in unmatched.items() if b == name]
        paths = benchmark_images(name, [g[0] for g in groups], data_dir, images)
        extra.extend(result_only_example(g, paths[g[0].record_id]) for g in groups)
    return extra


def view_data(
    trace_dirs: Sequence[Path],
    images: ImageWriter,
    *,
    results: EvalResults | None = None,
    data_dir: Path = Path("data"),
    title: str = "sdrt traces",
) -> dict[str, Any]:
    """The JSON the page reads: examples, the prompts and modes present, where they came from."""
    examples = [e for folder in trace_dirs for e in trace_examples(Path(folder), images)]
    traced = len(examples)
    if results is not None:
        examples += attach_results(examples, results, data_dir, images)
    prompts = list(dict.fromkeys(t["p"] for e in examples for t in e["tr"]))
    modes = list(dict.fromkeys(m for e in examples for m in e["res"]))
    return {
        "title": title,
        "traceDirs": [str(d) for d in trace_dirs],
        "prompts": prompts,
        "modes": modes,
        "traced": traced,
        "rightScore": RIGHT_SCORE,
        "examples": examples,
    }


def render_page(data: dict[str, Any]) -> str:
    """index.html: the template with its stylesheet, script and data inlined (one file to open)."""
    assets = files("sdrt.evaluation")
    html, css, js = (assets.joinpath(name).read_text(encoding="utf-8") for name in ASSETS)
    blob = json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")
    return (
        html.replace("/*SDRT:STYLE*/", css)
        .replace("/*SDRT:SCRIPT*/", js)
        .replace("/*SDRT:DATA*/", blob)
        .replace("<!--SDRT:TITLE-->", html_escape(data["title"], quote=False))
    )


def write_viewer(
    trace_dirs: Sequence[Path],
    out: Path,
    *,
    results: Path | None = None,
    data_dir: Path = Path("data"),
    title: str = "sdrt traces",
) -> tuple[Path, ViewerStats]:
    """Write ``out/index.html`` and ``out/images/``; return the page and what went into it."""
    out.mkdir(parents=True, exist_ok=True)
    images = ImageWriter(out / "images")
    loaded = EvalResults.load(results) if results is not None else None
    data = view_data(trace_dirs, images, results=loaded, data_dir=data_dir, title=title)
    page = out / "index.html"
    page.write_text(render_page(data), encoding="utf-8")
    stats = ViewerStats(
        examples=len(data["examples"]),
        traced=data["traced"],
        result_only=len(data["examples"]) - data["traced"],
        images=images.written,
        missing_images=images.missing,
        prompts=data["prompts"],
        modes=data["modes"],
    )
    return page, stats


# --- opening the page in a headless browser (the test and the benchmark) -------------------------

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def find_chromium() -> str | None:
    """The system chromium (``SDRT_CHROMIUM`` overrides): no browser build is ever downloaded."""
    for candidate in (os.environ.get("SDRT_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def launch_headless(playwright: Any, executable: str, profile: Path) -> Any:
    """A Playwright browser context on the system chromium, with a fresh profile and no network."""
    return playwright.chromium.launch_persistent_context(
        str(profile), executable_path=executable, headless=True, args=list(CHROMIUM_FLAGS)
    )
