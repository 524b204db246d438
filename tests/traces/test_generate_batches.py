"""generate_traces in batches of like length: every example once, each row with its own record."""

from PIL import Image

from sdrt.data.records import VQARecord
from sdrt.reasoning.modes import Answer, PromptTrace
from sdrt.traces import generate
from sdrt.traces.store import TraceStore, read_traces

QUESTIONS = [
    "Is it red?",
    "What colour is the big shape left of the circle?",
    "Why?",
    "What is it?",
    "How many?",
]


class StandIn:
    name = "stand-in"
    config_hash = "0" * 16

    def encode_images(self, images):
        return list(images)


def test_batches_of_like_length_keep_each_row_with_its_record(tmp_path, monkeypatch):
    image = Image.new("RGB", (8, 8))
    records = [
        VQARecord(id=f"r{i}", question=q, answers=[f"a{i}"], image=image) for i, q in enumerate(QUESTIONS)
    ]
    batches = []

    def echo(model, batch, images, prompts, budget, strategy):
        batches.append([r.id for r in batch])
        trace = lambda r: PromptTrace("p", f"about {r.question}", r.question, r.question, 0.0, 0.0, 1, 1)  # noqa: E731
        return [Answer(r.id, r.question, r.question, traces=[trace(r)]) for r in batch]

    monkeypatch.setattr(generate, "answer_dual_query", echo)
    store = TraceStore(tmp_path)
    stats = generate.generate_traces(
        StandIn(), records, [], store, source="test", library_hash="h", batch_size=2, shard_examples=1
    )
    assert batches == [["r1", "r3"], ["r0", "r4"], ["r2"]]  # longest question first
    assert stats.examples_done == len(records)
    rows = read_traces(tmp_path).to_pylist()
    assert sorted(row["example_id"] for row in rows) == [r.id for r in records]
    for row in rows:
        index = int(row["example_id"][1:])
        assert row["example_index"] == index
        assert row["question"] == row["answer"] == QUESTIONS[index]
        assert row["references"] == [f"a{index}"]
