"""The benchmark registry: each scene benchmark holds records of the kind it names, and only those."""

from __future__ import annotations

import pytest

from sdrt.evaluation.benchmarks import BENCHMARKS, get_benchmark
from sdrt.evaluation.metrics import METRICS

SCENE_KINDS = {
    "scenes": ("multi-hop", {2, 3}),
    "scenes-three-hop": ("three-hop", {3}),
    "scenes-single-hop": ("single-hop", {1}),
    "scenes-describe": ("describe", {0}),
}


@pytest.mark.parametrize("name", sorted(SCENE_KINDS))
def test_scene_benchmarks_hold_one_kind(name):
    kind, hops = SCENE_KINDS[name]
    records = get_benchmark(name).load(limit=120, seed=3)
    assert len(records) == 120
    assert {r.metadata["kind"] for r in records} == {kind}
    assert {int(r.metadata["hops"]) for r in records} <= hops
    assert all(r.id.startswith("scenes/-4/") for r in records)  # the test split of seed 3


def test_every_benchmark_names_a_known_metric():
    assert {b.metric for b in BENCHMARKS.values()} <= set(METRICS)


def test_describe_benchmark_is_open_ended_and_scored_by_objects():
    describe = get_benchmark("scenes-describe")
    assert describe.prompt_style == "open" and describe.metric == "object_accuracy"
    record = describe.load(limit=1)[0]
    assert METRICS["object_accuracy"](record.answers[0], record) == 1.0


def test_validation_and_test_scenes_never_meet_training_scenes():
    from sdrt.data import scene_split_seed

    seeds = {
        split: {scene_split_seed(split, s) for s in range(200)} for split in ("train", "validation", "test")
    }
    assert not seeds["train"] & seeds["validation"]
    assert not seeds["train"] & seeds["test"]
    assert not seeds["validation"] & seeds["test"]
    validation = get_benchmark("scenes").load(split="validation", limit=20, seed=0)
    test = get_benchmark("scenes").load(split="test", limit=20, seed=0)
    assert {r.question for r in validation} != {r.question for r in test}
    assert not {r.metadata["scene_id"] for r in validation} & {r.metadata["scene_id"] for r in test}
