"""Distillation examples from a trace folder: stored pseudo-labels, or voted again by reliability."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

from sdrt.distill.data import DistillDataError, load_distill_examples, with_reference_labels
from sdrt.traces.store import TraceStore

PROMPTS = ("strong", "weak_a", "weak_b", "weak_c", "weak_d")


def strong_and_weak_folder(trace_dir: Path, out: Path) -> Path:
    """``trace_dir``'s examples answered by five made-up prompts: one right 95% of the time,
    four right 45% of the time (else one of two wrong answers), stored with majority labels."""
    rows = TraceStore(trace_dir).read().to_pylist()
    firsts = {row["example_id"]: row for row in rows if row["prompt_rank"] == 0}
    rng = random.Random(0)
    new_rows = []
    for first in firsts.values():
        truth = first["references"][0]
        answers = [
            truth if rng.random() < (0.95 if pid == "strong" else 0.45) else rng.choice(["wrong1", "wrong2"])
            for pid in PROMPTS
        ]
        majority = max(answers, key=lambda a: (answers.count(a), -answers.index(a)))
        members = [a == majority for a in answers]
        for rank, (pid, answer) in enumerate(zip(PROMPTS, answers, strict=True)):
            new_rows.append(
                first
                | {
                    "prompt_id": pid,
                    "prompt_rank": rank,
                    "answer": answer,
                    "raw_answer": answer,
                    "answer_logprob": -1.0,
                    "answer_mean_logprob": -0.5,
                    "ensemble_answer": majority,
                    "ensemble_agreement": sum(members) / len(PROMPTS),
                    "prompt_weight": members[rank] / sum(members),
                }
            )
    out.mkdir()
    manifest = json.loads((trace_dir / "manifest.json").read_text()) | {"prompt_ids": list(PROMPTS)}
    store = TraceStore(out)
    store.check_or_write_manifest(manifest)
    store.write_shard(new_rows)
    return out


def accuracy(examples) -> float:
    return sum(ex.pseudo_label in ex.record.answers for ex in examples) / len(examples)


def test_reliability_labels_trust_the_prompt_the_others_agree_with_most(make_traces, tmp_path, caplog):
    traces = make_traces(tmp_path / "tiny", limit=60)
    folder = strong_and_weak_folder(traces, tmp_path / "five")
    stored = load_distill_examples(folder)
    with caplog.at_level(logging.INFO, logger="sdrt.distill.data"):
        reweighed = load_distill_examples(folder, vote="reliability")
    assert [ex.record.id for ex in stored] == [ex.record.id for ex in reweighed]
    assert accuracy(reweighed) > accuracy(stored) + 0.1  # references read here only, to check
    assert all(abs(sum(ex.weights) - 1) < 1e-9 for ex in reweighed)
    strong_share = [ex.weights[ex.prompt_ids.index("strong")] for ex in reweighed]
    assert sum(w > 0 for w in strong_share) >= 0.9 * len(reweighed)  # the label is mostly its answer
    assert "prompt reliability from 60 examples" in caplog.text
    kept = load_distill_examples(folder, vote="reliability", min_agreement=0.5)
    assert kept and len(kept) < len(reweighed)  # the threshold applies to the re-voted agreement
    assert all(ex.agreement >= 0.5 for ex in kept)


def test_traces_of_questions_the_data_no_longer_asks_are_refused(make_traces, tmp_path):
    import pytest

    from sdrt.distill.data import DistillDataError

    traces = make_traces(tmp_path / "tiny", limit=4)
    rows = TraceStore(traces).read().to_pylist()
    changed = tmp_path / "changed"
    changed.mkdir()
    store = TraceStore(changed)
    store.check_or_write_manifest(json.loads((traces / "manifest.json").read_text()))
    store.write_shard([row | {"question": row["question"] + " (as once asked)"} for row in rows])
    with pytest.raises(DistillDataError, match="trace again"):
        load_distill_examples(changed)


def test_a_run_with_reliability_labels_trains_and_keeps_its_own_teacher_cache(
    trace_dir, tmp_path, tiny_model
):
    import pytest

    from sdrt.distill.config import DistillConfig
    from sdrt.distill.trainer import DistillError, DistillTrainer, run_distillation

    def config(**overrides) -> DistillConfig:
        values = dict(model="tiny:llava", traces=[trace_dir], steps=2, batch_size=2, checkpoint_every=1)
        return DistillConfig(**(values | overrides))

    out = tmp_path / "adapter"
    run_distillation(config(out=out, labels="reliability", cache_teacher=True), tiny_model)
    assert (out / "adapter_config.json").exists()
    with pytest.raises(DistillError, match="labels"):  # a resume with other labels is refused
        run_distillation(config(out=out, steps=3, labels="ensemble"), tiny_model)
    from sdrt.prompts.library import PromptLibrary

    examples = load_distill_examples(trace_dir, library=PromptLibrary.builtin())
    trainers = {
        labels: DistillTrainer(config(out=tmp_path / labels, labels=labels), tiny_model, examples)
        for labels in ("ensemble", "reliability")
    }
    fingerprints = {labels: trainer._cache_fingerprint() for labels, trainer in trainers.items()}
    assert fingerprints["ensemble"] != fingerprints["reliability"]  # other labels, other teacher targets


def test_reference_labels_take_the_most_common_reference_and_count_examples_without_any(trace_dir, caplog):
    from dataclasses import replace

    import pytest

    examples = load_distill_examples(trace_dir)[:3]
    first, second, third = examples
    first = replace(first, record=replace(first.record, answers=["two", "three", "three"]))
    second = replace(second, record=replace(second.record, answers=[]))
    third = replace(third, record=replace(third.record, answers=["red"]))
    with caplog.at_level(logging.WARNING):
        relabelled = with_reference_labels([first, second, third])
    assert [(ex.record.id, ex.pseudo_label) for ex in relabelled] == [
        (first.record.id, "three"),
        (third.record.id, "red"),
    ]
    assert relabelled[0].analyses == first.analyses  # only the label changes
    assert "left out 1 examples without reference answers" in caplog.text
    with pytest.raises(DistillDataError, match="no example has reference answers"):
        with_reference_labels([second])
