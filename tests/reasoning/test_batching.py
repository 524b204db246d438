"""Length-bucketed batches: every record once, like lengths together, results in the records' order."""

import pytest
from PIL import Image

from sdrt.data.records import VQARecord
from sdrt.reasoning.modes import Answer, length_batches, longest_record

QUESTIONS = ["Is it red?", "What colour is the big shape left of the circle?", "Why?", "What shape is it?"]


def records(questions=QUESTIONS, choices=None) -> list[VQARecord]:
    image = Image.new("RGB", (8, 8))
    return [VQARecord(id=f"r{i}", question=q, image=image, choices=choices) for i, q in enumerate(questions)]


def test_batches_cover_every_record_once_longest_first():
    batches = length_batches(records(), 3)
    assert batches == [[1, 3, 0], [2]]  # 47, 17, 10 characters; then the 4-character question
    flat = [row for batch in batches for row in batch]
    assert sorted(flat) == list(range(len(QUESTIONS)))


def test_equal_lengths_keep_the_records_order_and_choices_count():
    same = records(["Is it A?", "Is it B?", "Is it C?"])
    assert length_batches(same, 2) == [[0, 1], [2]]
    with_choices = records(["Which?", "Which one is it?"], choices=["a very long choice", "b"])
    assert longest_record(with_choices).id == "r1"
    assert longest_record(records()).id == "r1"


def test_a_batch_size_below_one_is_refused():
    with pytest.raises(ValueError, match="batch_size"):
        length_batches(records(), 0)


def test_evaluation_returns_items_in_the_records_order(monkeypatch):
    from sdrt.evaluation import evaluate
    from sdrt.evaluation.benchmarks import get_benchmark
    from sdrt.prompts.library import PromptLibrary

    seen_batches = []

    def answer_by_question(model, batch, images, *args, **kwargs):
        seen_batches.append([r.id for r in batch])
        return [Answer(record_id=r.id, answer=r.question, raw_answer=r.question) for r in batch]

    class NoModel:
        def encode_images(self, images):
            return list(images)

    monkeypatch.setattr(evaluate, "answer_with_mode", answer_by_question)
    data = records()
    items = evaluate.evaluate_mode(
        NoModel(), get_benchmark("easy-vqa"), data, "direct", PromptLibrary.builtin(), batch_size=2
    )
    assert seen_batches == [["r1", "r3"], ["r0", "r2"]]
    assert [item.record_id for item in items] == [r.id for r in data]
    assert [item.prediction for item in items] == QUESTIONS
