"""Distillation examples: a trace folder grouped by example, with the images to read again."""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from sdrt.data import load_records
from sdrt.data.records import VQARecord
from sdrt.models.base import VisionLanguageModel
from sdrt.prompts.library import DualQueryPrompt, PromptLibrary
from sdrt.reasoning.reliability import estimate_reliability
from sdrt.traces.store import TraceStore, row_candidates

log = logging.getLogger(__name__)


class DistillDataError(ValueError):
    """The trace folder cannot feed distillation (empty, or its records cannot be found)."""


@dataclass
class DistillExample:
    record: VQARecord  # question and image; references train only the labels=reference diagnostic
    pseudo_label: str  # the ensemble answer
    prompt_ids: list[str]  # K, in prompt order
    analyses: list[str]  # K step-1 analyses
    weights: list[float]  # K ensemble weights, summing to 1
    agreement: float
    # The library the prompt ids belong to (that of the example's trace folder): folders made
    # with different libraries may give one id different templates. None: the trainer's library.
    library: PromptLibrary | None = None
    answers: list[str] = field(default_factory=list)  # K step-2 answers, in prompt order

    def prompt(self, i: int, default: PromptLibrary | None = None) -> DualQueryPrompt:
        """Prompt ``i`` of this example, from its own library."""
        library = self.library or default
        if library is None:
            raise DistillDataError(f"example {self.record.id} has no prompt library to render its prompts")
        return library.get(self.prompt_ids[i])


def load_distill_examples(
    traces_dir: str | Path,
    *,
    min_agreement: float = 0.0,
    library: PromptLibrary | None = None,
    vote: Literal["stored", "reliability"] = "stored",
) -> list[DistillExample]:
    """Group trace rows by example and attach each example's record (for its image).

    ``library`` (the one the folder was traced with) goes with every example, so that the
    teacher renders each example's prompts from its own folder's library.

    ``vote``: "stored" keeps the pseudo-labels and weights the traces were written with;
    "reliability" votes again, weighting each prompt by its accuracy as estimated from the
    whole folder's answers (``sdrt.reasoning.reliability``; no references are read).

    Examples whose pseudo-label is empty or whose agreement is below ``min_agreement`` are
    left out and counted in the log.
    """
    store = TraceStore(traces_dir)
    manifest = store.manifest()
    table = store.read().to_pylist()
    if not table:
        raise DistillDataError(f"{traces_dir} holds no traces yet: run `sdrt traces` first")
    records = _records_by_id(manifest, {row["example_id"] for row in table})
    changed = sorted({r["example_id"] for r in table if r["question"] != records[r["example_id"]].question})
    if changed:
        raise DistillDataError(
            f"{len(changed)} traced questions differ from what {manifest['data']['source']} asks now "
            f"(e.g. {changed[0]}): the data changed since the traces were made; trace again"
        )
    grouped: dict[str, list[dict]] = {}
    for row in table:
        grouped.setdefault(row["example_id"], []).append(row)
    for rows in grouped.values():
        rows.sort(key=lambda r: r["prompt_rank"])
    labels = _stored_labels(grouped) if vote == "stored" else _reliability_labels(grouped, traces_dir)

    examples, dropped = [], 0
    for example_id, rows in grouped.items():
        label, agreement, weights = labels[example_id]
        if not label or agreement < min_agreement:
            dropped += 1
            continue
        examples.append(
            DistillExample(
                record=records[example_id],
                pseudo_label=label,
                prompt_ids=[r["prompt_id"] for r in rows],
                analyses=[r["analysis"] or "" for r in rows],
                answers=[r["answer"] or "" for r in rows],
                weights=_normalised(weights),
                agreement=agreement,
                library=library,
            )
        )
    if dropped:
        log.warning(
            "left out %d of %d examples (empty pseudo-label or agreement < %s)",
            dropped,
            len(grouped),
            min_agreement,
        )
    if not examples:
        raise DistillDataError(f"no usable examples in {traces_dir} (all {dropped} were left out)")
    return examples


Labels = dict[str, tuple[str, float, list[float]]]  # example id -> label, agreement, K weights


def _stored_labels(grouped: dict[str, list[dict]]) -> Labels:
    return {
        example_id: (
            (rows[0]["ensemble_answer"] or "").strip(),
            float(rows[0]["ensemble_agreement"] or 0.0),
            [float(r["prompt_weight"] or 0.0) for r in rows],
        )
        for example_id, rows in grouped.items()
    }


def _reliability_labels(grouped: dict[str, list[dict]], traces_dir: str | Path) -> Labels:
    candidates = {example_id: row_candidates(rows) for example_id, rows in grouped.items()}
    reliability = estimate_reliability(list(candidates.values()))
    log.info(
        "%s: prompt reliability from %d examples (no references read): %s",
        traces_dir,
        reliability.examples,
        ", ".join(
            f"{pid} {p:.3f} (vote weight {reliability.vote_weights[pid]:.2f})"
            for pid, p in reliability.accuracy.items()
        ),
    )
    labels: Labels = {}
    for example_id, cands in candidates.items():
        result = reliability.vote(cands)
        labels[example_id] = (
            result.answer.strip(),
            result.agreement,
            [result.prompt_weights[c.prompt_id] for c in cands],
        )
    return labels


def _records_by_id(manifest: dict, wanted: set[str]) -> dict[str, VQARecord]:
    """Read the traces' data source again: generated scenes live in memory, not on disk."""
    data = manifest["data"]
    kwargs = {"layout": data["layout"]} if data.get("layout") else {}
    records = load_records(
        data["source"],
        split=data["split"],
        limit=data.get("limit"),
        seed=data.get("seed", 0),
        skip_bad=True,
        **kwargs,
    )
    by_id = {r.id: r for r in records if r.id in wanted}
    missing = wanted - by_id.keys()
    if missing:
        raise DistillDataError(
            f"{len(missing)} traced examples are not in {data['source']}:{data['split']} any more, "
            f"e.g. {sorted(missing)[:3]}"
        )
    return by_id


def _normalised(weights: list[float]) -> list[float]:
    total = sum(weights)
    return [w / total for w in weights] if total > 0 else [1.0 / len(weights)] * len(weights)


def with_direct_labels(
    model: VisionLanguageModel, examples: list[DistillExample], cache: Path, batch_size: int = 16
) -> list[DistillExample]:
    """The examples relabelled with the model's own greedy direct answers (self-training control).

    The answers are kept in ``cache`` (JSON, by record id), so a resumed run trains on the very
    labels it started with; examples whose direct answer is empty are left out and counted.
    """
    from sdrt.reasoning.modes import answer_direct

    known: dict[str, str] = json.loads(cache.read_text()) if cache.is_file() else {}
    missing = [ex for ex in examples if ex.record.id not in known]
    for start in range(0, len(missing), batch_size):
        chunk = missing[start : start + batch_size]
        images = model.encode_images([ex.record.load_image() for ex in chunk])
        for ex, answer in zip(chunk, answer_direct(model, [ex.record for ex in chunk], images), strict=True):
            known[ex.record.id] = answer.answer.strip()
    if missing:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(known, indent=1, sort_keys=True))
    relabelled = [replace(ex, pseudo_label=known[ex.record.id]) for ex in examples if known[ex.record.id]]
    if len(relabelled) < len(examples):
        log.warning("left out %d examples whose direct answer is empty", len(examples) - len(relabelled))
    if not relabelled:
        raise DistillDataError("every direct answer was empty: nothing to train on")
    return relabelled


def with_reference_labels(examples: list[DistillExample]) -> list[DistillExample]:
    """The examples relabelled with their records' most common reference answer.

    A diagnostic, not SDRT: the same one-pass student trained on right labels shows how much of
    the reasoning's gain one pass can hold at all. Examples without references are left out and
    counted.
    """
    relabelled = [
        replace(ex, pseudo_label=Counter(ex.record.answers).most_common(1)[0][0])
        for ex in examples
        if ex.record.answers
    ]
    if len(relabelled) < len(examples):
        log.warning("left out %d examples without reference answers", len(examples) - len(relabelled))
    if not relabelled:
        raise DistillDataError("no example has reference answers: labels=reference has nothing to train on")
    return relabelled
