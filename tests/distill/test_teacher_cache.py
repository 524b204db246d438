"""The teacher-cache fill: rows batched by length, the same targets as batch-by-batch, resumable."""

import json

import pytest
import torch
from safetensors import safe_open

from sdrt.distill.config import DistillConfig
from sdrt.distill.data import load_distill_examples
from sdrt.distill.teacher import TeacherCache, compute_teacher_targets, fill_teacher_cache
from sdrt.distill.trainer import check_traces, global_batch_indices, run_distillation


@pytest.fixture
def examples(tiny_model, trace_dir):
    return load_distill_examples(trace_dir, library=check_traces(trace_dir, tiny_model))


def layers_of(model) -> list[int]:
    return [0, model.num_layers - 1]


def fill(model, cache, examples, rows_per_batch=3, on_batch=None) -> int:
    return fill_teacher_cache(model, cache, examples, None, layers_of(model), 8, rows_per_batch, on_batch)


def cached_ids(folder) -> set[str]:
    ids = set()
    for shard in folder.glob("teacher-*.safetensors"):
        with safe_open(str(shard), "pt") as f:
            ids |= set(json.loads(f.metadata()["example_ids"]))
    return ids


def test_the_fill_gives_the_targets_of_batch_by_batch_computation(tiny_model, examples, tmp_path):
    cache = TeacherCache(tmp_path, "fp")
    assert fill(tiny_model, cache, examples) == len(examples)
    images = tiny_model.encode_images([ex.record.load_image() for ex in examples])
    expected = compute_teacher_targets(tiny_model, examples, images, None, layers_of(tiny_model), 8)
    for ex, want in zip(examples, expected, strict=True):
        got = cache.get(ex.record.id)
        assert got.hidden.keys() == want.hidden.keys()
        for layer in want.hidden:
            torch.testing.assert_close(got.hidden[layer], want.hidden[layer], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got.topk_logprobs, want.topk_logprobs, atol=1e-5, rtol=1e-4)
        assert torch.equal(got.topk_ids, want.topk_ids)


def test_rows_are_batched_longest_first(tiny_model, examples, tmp_path, monkeypatch):
    calls = []
    score = tiny_model.score

    def recording(images, prompts, answers, **kwargs):
        calls.append([len(tiny_model.render_prompt(p)) for p in prompts])
        return score(images, prompts, answers, **kwargs)

    monkeypatch.setattr(tiny_model, "score", recording)
    fill(tiny_model, TeacherCache(tmp_path, "fp"), examples, rows_per_batch=3)
    k = len(examples[0].prompt_ids)
    assert [len(c) for c in calls[:-1]] == [3] * (len(calls) - 1)
    assert sum(map(len, calls)) == k * len(examples)
    lengths = [n for call in calls for n in call]
    assert lengths == sorted(lengths, reverse=True) and lengths[0] > lengths[-1]


def test_a_killed_fill_keeps_its_finished_groups_and_resumes(tiny_model, examples, tmp_path):
    # K = 2 rows per example, 3 rows a batch, 2 batches a group: groups of 3 examples
    class Killed(Exception):
        pass

    def kill_in_the_second_group(done, total):
        if done > 6:
            raise Killed

    layers = layers_of(tiny_model)
    with pytest.raises(Killed):
        fill_teacher_cache(
            tiny_model, TeacherCache(tmp_path, "fp"), examples, None, layers, 8, 3,
            kill_in_the_second_group, batches_per_group=2,
        )  # fmt: skip
    kept = cached_ids(tmp_path)
    assert len(examples[0].prompt_ids) == 2 and {ex.record.id for ex in examples[:3]} <= kept
    assert len(kept) < len(examples)
    resumed = TeacherCache(tmp_path, "fp")
    assert fill(tiny_model, resumed, examples) == len(examples) - len(kept)
    assert cached_ids(tmp_path) == {ex.record.id for ex in examples}
    assert fill(tiny_model, TeacherCache(tmp_path, "fp"), examples) == 0  # nothing left to compute
    assert fill(tiny_model, TeacherCache(tmp_path, "other model"), examples) == len(examples)


@pytest.mark.parametrize("steps", [1, 4])
def test_training_fills_the_cache_with_what_its_steps_read_before_the_first(
    tiny_model, trace_dir, tmp_path, steps
):
    config = DistillConfig(
        model="tiny:llava", traces=trace_dir, out=tmp_path, steps=steps, batch_size=2, cache_teacher=True
    )
    reported = []
    run_distillation(config, tiny_model, on_teachers=lambda done, total: reported.append((done, total)))
    read = {  # the examples of the run's batches (8 examples: one step reads 2, four steps all)
        i for step in range(steps) for i in global_batch_indices(step, 0, config, 8)
    }
    examples = load_distill_examples(trace_dir)
    assert len(examples) == 8 and len(read) == 2 * steps
    assert cached_ids(tmp_path / "teacher-cache") == {examples[i].record.id for i in read}
    k = len(examples[0].prompt_ids)
    assert reported and reported[-1] == (k * len(read), k * len(read))  # all of them in the fill
