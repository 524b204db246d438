"""Stepwise internalisation: which analysis, how much of it, where the cut falls, and the trainer's use."""

import pytest

from sdrt.data.records import VQARecord
from sdrt.distill.config import DistillConfig
from sdrt.distill.curriculum import curriculum_label, kept_share, supporting_analysis
from sdrt.distill.data import DistillExample, load_distill_examples
from sdrt.distill.trainer import run_distillation


def example(label: str, answers: list[str], analyses: list[str], weights: list[float]) -> DistillExample:
    record = VQARecord(id="q", question="What colour is the shape left of the circle?", image_path="q.png")
    return DistillExample(record, label, ["a", "b", "c"], analyses, weights, 1.0, answers=answers)


def test_the_analysis_is_that_of_the_heaviest_prompt_answering_the_label() -> None:
    ex = example("Red", ["blue", "red.", "red"], ["one", "two", "three"], [0.5, 0.2, 0.3])
    assert supporting_analysis(ex) == "three"  # the heavier prompt is wrong; of the right ones, 0.3
    tie = example("red", ["red", "red", "blue"], ["one", "two", "three"], [0.4, 0.4, 0.2])
    assert supporting_analysis(tie) == "one"
    empty = example("red", ["red", "red", "blue"], ["  ", "two", "three"], [0.6, 0.3, 0.1])
    assert supporting_analysis(empty) == "two"  # an empty analysis supports nothing
    unsupported = example("green", ["red", "red", "blue"], ["a", "b", "c"], [0.4, 0.4, 0.2])
    assert supporting_analysis(unsupported) == ""


def test_the_analysis_is_kept_whole_first_and_gone_after_the_ramp() -> None:
    shares = [kept_share(step, 10, 0.5) for step in range(10)]
    assert shares[0] == 1.0
    assert shares[:6] == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2, 0.0])
    assert shares[5:] == [0.0] * 5
    assert kept_share(0, 10, 0.0) == 0.0  # off: the label alone from the start


def test_the_front_of_the_analysis_is_cut_first() -> None:
    analysis = "From left to right: a red square, a blue circle."
    assert curriculum_label(analysis, "red", 1.0) == analysis + "\nred"
    assert curriculum_label(analysis, "red", 0.6) == "a red square, a blue circle.\nred"  # 6 of 10 words
    assert curriculum_label(analysis, "red", 0.01) == "circle.\nred"  # any share keeps a word
    assert curriculum_label(analysis, "red", 0.0) == "red"
    assert curriculum_label("", "red", 1.0) == "red"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"loss": {"hidden": 1.0, "ce": 1.0}}, "cross-entropy alone"),
        ({"loss": {"hidden": 0.0, "ce": 1.0}, "labels": "direct"}, "labels=direct has none"),
    ],
)
def test_internalising_needs_cross_entropy_on_reasoned_labels(changes, message) -> None:
    with pytest.raises(ValueError, match=message):
        DistillConfig(internalize=0.5, **changes)


def test_the_student_writes_less_of_the_analysis_each_step_then_the_label_alone(
    tiny_model, trace_dir, make_traces, tmp_path, monkeypatch, retaining_config
) -> None:
    written: list[list[str]] = []  # the labels of each step's one scored batch
    real_score = tiny_model.score

    def recording_score(images, prompts, labels, *args, **kwargs):
        written.append(list(labels))
        return real_score(images, prompts, labels, *args, **kwargs)

    monkeypatch.setattr(tiny_model, "score", recording_score)
    retain = make_traces(tmp_path / "retain", source="scenes:single-hop", limit=4)
    settings = {"steps": 4, "warmup_steps": 0, "internalize": 0.75, "loss": {"hidden": 0.0, "ce": 1.0}}
    cfg = retaining_config(trace_dir, retain, tmp_path / "adapter", retain_share=0.5, **settings)
    run_distillation(cfg, tiny_model)
    assert len(written) == 4

    distilled = {ex.pseudo_label for ex in load_distill_examples(trace_dir)}
    reasoned = [[label for label in step if "\n" in label] for step in written]
    # steps 0-2 of a 3-step ramp: every distilled label after some of its analysis, fewer words each step
    assert all(len(step) == 2 for step in reasoned[:3]), written[:3]
    words = [sum(len(label.split()) for label in step) for step in reasoned[:3]]
    assert words[0] > words[1] > words[2] > 0, written[:3]
    for label in (label for step in reasoned for label in step):
        assert label.rsplit("\n", 1)[1] in distilled
    assert reasoned[3] == []  # then the label alone, as in the one pass
    # the retained half of every batch keeps its bare direct answer throughout
    assert all(sum("\n" not in label for label in step) >= 2 for step in written)


def test_the_prefix_cache_stays_exact_while_labels_change(tiny_model, trace_dir, tmp_path) -> None:
    settings = dict(
        model="tiny:llava",
        traces=trace_dir,
        steps=4,  # 8 examples: the first epoch writes analyses, the second reads its own labels
        batch_size=4,
        lr=2e-2,
        warmup_steps=0,
        internalize=0.5,
        loss={"hidden": 0.0, "ce": 1.0},
    )
    cached = run_distillation(DistillConfig(out=tmp_path / "cached", **settings), tiny_model)
    full = run_distillation(DistillConfig(out=tmp_path / "full", cache_prefix=False, **settings), tiny_model)
    for a, b in zip(cached.history, full.history, strict=True):
        assert a.loss == pytest.approx(b.loss, rel=1e-4, abs=1e-6), (a, b)
