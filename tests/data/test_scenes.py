"""The scene generator: determinism, pictures that match the objects, and correct answers.

Answers are re-derived here by a separate solver that reads only the question text and the
scene's objects, so a slip in the generator's bookkeeping cannot pass unnoticed.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

import pytest

from sdrt.data import COLOURS, SCENE_KINDS, SHAPES, DataError, make_scenes, scene_records
from sdrt.data.scenes import Scene, SceneObject

ALL_KINDS = set(SCENE_KINDS)
SIZE_RANK = {"small": 1, "large": 2}


# --- an independent solver -----------------------------------------------------------------------


def _resolve(scene: Scene, phrase: str) -> SceneObject:
    """The one object a phrase like "the circle", "the red object" or "the red circle" names."""
    words = phrase.removeprefix("the ").split()
    if len(words) == 2 and words[1] == "object":
        matches = [o for o in scene.objects if o.colour == words[0]]
    elif len(words) == 2:
        matches = [o for o in scene.objects if (o.colour, o.shape) == (words[0], words[1])]
    else:
        matches = [o for o in scene.objects if o.shape == words[0]]
    assert len(matches) == 1, f"{phrase!r} does not name exactly one object in {scene.description}"
    return matches[0]


def _ordered(scene: Scene) -> list[SceneObject]:
    return sorted(scene.objects, key=lambda o: o.position)


def _step(scene: Scene, obj: SceneObject, direction: str) -> SceneObject:
    row = _ordered(scene)
    at = row.index(obj) + (1 if direction == "right" else -1)
    assert 0 <= at < len(row), "question asks past the end of the row"
    return row[at]


def _extreme(scene: Scene, end: str, size: str) -> SceneObject:
    row = [o for o in _ordered(scene) if o.size == size]
    assert row, f"no {size} shape"
    return row[0] if end == "leftmost" else row[-1]


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _between(scene: Scene, first: str, second: str) -> str:
    a, b = _resolve(scene, first), _resolve(scene, second)
    low, high = sorted((a.position, b.position))
    inside = [o for o in scene.objects if low < o.position < high]
    assert len(inside) == 1, "not exactly one shape between"
    return inside[0].colour


def _next_to(scene: Scene, ref: str) -> str:
    target = _resolve(scene, ref)
    shapes = {o.shape for o in scene.objects if abs(o.position - target.position) == 1}
    assert len(shapes) == 1, "neighbours disagree: no unique answer"
    return shapes.pop()


def _largest_is(scene: Scene, shape: str) -> str:
    top = max(SIZE_RANK[o.size] for o in scene.objects)
    largest = [o for o in scene.objects if SIZE_RANK[o.size] == top]
    assert len(largest) == 1, "largest shape is not unique"
    return _yes(largest[0].shape == shape)


def _exists_beside(scene: Scene, shape: str, direction: str, ref: str) -> str:
    pivot = _resolve(scene, ref).position
    side = [o for o in scene.objects if (o.position < pivot if direction == "left" else o.position > pivot)]
    return _yes(any(o.shape == shape for o in side))


def _count(scene: Scene, **wanted: str) -> str:
    return str(len([o for o in scene.objects if all(getattr(o, k) == v for k, v in wanted.items())]))


def _end(scene: Scene, end: str) -> SceneObject:
    return _ordered(scene)[0 if end == "leftmost" else -1]


# question_type -> (the exact wording, answer from the wording's groups)
SOLVERS: dict[str, tuple[str, Callable[..., str]]] = {
    "describe": (r"Describe the image\.", lambda s: s.description),
    "colour_of_shape": (r"What color is (the .+)\?", lambda s, r: _resolve(s, r).colour),
    "shape_of_colour": (r"What shape is (the .+)\?", lambda s, r: _resolve(s, r).shape),
    "size_of_colour": (r"What size is (the .+)\?", lambda s, r: _resolve(s, r).size),
    "count_all": (r"How many shapes are there\?", lambda s: str(len(s.objects))),
    "count_shape": (r"How many (\w+)s are there\?", lambda s, shape: _count(s, shape=shape)),
    "count_colour": (r"How many (\w+) shapes are there\?", lambda s, c: _count(s, colour=c)),
    "exists_shape": (r"Is there a (\w+)\?", lambda s, shape: _yes(_count(s, shape=shape) != "0")),
    "exists_colour": (r"Is there a (\w+) shape\?", lambda s, c: _yes(_count(s, colour=c) != "0")),
    "colour_at_end": (r"What color is the (leftmost|rightmost) shape\?", lambda s, e: _end(s, e).colour),
    "shape_at_end": (r"What shape is the (leftmost|rightmost) object\?", lambda s, e: _end(s, e).shape),
    "colour_beside": (
        r"What color is the shape directly to the (left|right) of (the .+)\?",
        lambda s, d, r: _step(s, _resolve(s, r), d).colour,
    ),
    "shape_beside": (
        r"What shape is directly to the (left|right) of (the .+)\?",
        lambda s, d, r: _step(s, _resolve(s, r), d).shape,
    ),
    "shape_next_to": (r"What shape is next to (the .+)\?", _next_to),
    "count_larger_than": (
        r"How many shapes are larger than (the .+)\?",
        lambda s, r: str(sum(SIZE_RANK[o.size] > SIZE_RANK[_resolve(s, r).size] for o in s.objects)),
    ),
    "largest_is_shape": (r"Is the largest shape a (\w+)\?", _largest_is),
    "colour_of_extreme": (
        r"What color is the (leftmost|rightmost) (small|large) shape\?",
        lambda s, e, size: _extreme(s, e, size).colour,
    ),
    "colour_between": (r"What color is the shape between (the .+?) and (the .+)\?", _between),
    "same_colour": (
        r"Are (the .+?) and (the .+) the same color\?",
        lambda s, a, b: _yes(_resolve(s, a).colour == _resolve(s, b).colour),
    ),
    "count_same_colour": (
        r"How many other shapes have the same color as (the .+)\?",
        lambda s, r: str(sum(o.colour == _resolve(s, r).colour for o in s.objects) - 1),
    ),
    "exists_beside": (r"Is there a (\w+) anywhere to the (left|right) of (the .+)\?", _exists_beside),
    "shape_beside_extreme": (
        r"What shape is directly to the (left|right) of the (leftmost|rightmost) (small|large) shape\?",
        lambda s, d, e, size: _step(s, _extreme(s, e, size), d).shape,
    ),
    "colour_beside_extreme": (
        r"What color is the shape directly to the (left|right) of the (leftmost|rightmost) (small|large) "
        r"shape\?",
        lambda s, d, e, size: _step(s, _extreme(s, e, size), d).colour,
    ),
    "colour_beside_twice": (
        r"What color is the shape directly to the (left|right) of the shape directly to the \1 of (the .+)\?",
        lambda s, d, r: _step(s, _step(s, _resolve(s, r), d), d).colour,
    ),
    "shape_beside_twice": (
        r"What shape is directly to the (left|right) of the shape directly to the \1 of (the .+)\?",
        lambda s, d, r: _step(s, _step(s, _resolve(s, r), d), d).shape,
    ),
    "beside_same_colour": (
        r"Is the shape directly to the (left|right) of (the .+?) the same color as (the .+)\?",
        lambda s, d, r, other: _yes(_step(s, _resolve(s, r), d).colour == _resolve(s, other).colour),
    ),
}


def _solve(scene: Scene, question_type: str, question: str) -> str:
    assert question_type in SOLVERS, f"no solver for question type {question_type!r}"
    pattern, answer = SOLVERS[question_type]
    found = re.fullmatch(pattern, question)
    assert found, f"{question_type}: unexpected wording {question!r}"
    return answer(scene, *found.groups())


# --- tests -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    return make_scenes(150, seed=11)


@pytest.fixture(scope="module")
def records(scenes):
    return scene_records(scenes, kinds=ALL_KINDS)


def test_every_answer_matches_an_independent_solver(scenes, records):
    by_id = {scene.id: scene for scene in scenes}
    questions = [r for r in records if r.metadata["hops"] > 0]
    assert len(questions) >= 300
    for record in records:
        scene = by_id[record.metadata["scene_id"]]
        expected = _solve(scene, record.metadata["question_type"], record.question)
        assert record.answers == [expected], f"{record.id}: {record.question} ({scene.description})"


def test_every_question_type_is_exercised(records):
    assert {r.metadata["question_type"] for r in records} == set(SOLVERS)


def test_answers_are_short_lower_case_words_or_digits(records):
    for record in records:
        if record.metadata["question_type"] != "describe":
            assert re.fullmatch(r"[a-z]+|\d", record.answers[0]), record


def test_hops_follow_the_kind(records):
    hops = {"describe": {0}, "single-hop": {1}, "multi-hop": {2, 3}, "three-hop": {3}}
    for record in records:
        assert record.metadata["hops"] in hops[record.metadata["kind"]]
    assert {r.metadata["kind"] for r in records} == ALL_KINDS


def test_yes_no_answers_are_balanced(records):
    yes_no = Counter(r.answers[0] for r in records if r.answers[0] in {"yes", "no"})
    total = yes_no["yes"] + yes_no["no"]
    assert total >= 100
    assert 0.35 <= yes_no["yes"] / total <= 0.65, yes_no


def test_description_lists_the_objects_left_to_right(scenes):
    pattern = re.compile(r"(small|large) (\w+) (circle|rectangle|triangle)")
    for scene in scenes:
        assert scene.description.startswith("From left to right: a ")
        assert scene.description.endswith(".")
        listed = pattern.findall(scene.description)
        actual = [(o.size, o.colour, o.shape) for o in _ordered(scene)]
        assert listed == actual
        assert 2 <= len(actual) <= 4


def test_vocabulary_is_easy_vqas(scenes):
    easy_vqa = pytest.importorskip("easy_vqa")
    vocabulary = set(easy_vqa.get_answers())
    assert set(SHAPES) | set(COLOURS) <= vocabulary
    assert {o.shape for s in scenes for o in s.objects} == set(SHAPES)
    assert {o.colour for s in scenes for o in s.objects} == set(COLOURS)


def test_same_seed_gives_identical_records_and_pixels():
    first, second = make_scenes(12, seed=3), make_scenes(12, seed=3)
    assert first == second
    assert all(a.image().tobytes() == b.image().tobytes() for a, b in zip(first, second, strict=True))
    records_a = scene_records(first, kinds=ALL_KINDS)
    records_b = scene_records(second, kinds=ALL_KINDS)
    assert [(r.id, r.question, r.answers, r.metadata) for r in records_a] == [
        (r.id, r.question, r.answers, r.metadata) for r in records_b
    ]
    assert make_scenes(5, seed=3) == first[:5]  # scene i does not depend on how many are made


def test_different_seeds_give_different_scenes():
    descriptions = [[s.description for s in make_scenes(10, seed)] for seed in (0, 1, 2)]
    assert descriptions[0] != descriptions[1] != descriptions[2] != descriptions[0]


def test_ids_are_unique_and_stable_across_kind_selections(scenes, records):
    ids = [r.id for r in records]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"scenes/11/\d+/\d+", i) for i in ids)
    multi_only = scene_records(scenes[:20], kinds={"multi-hop"})
    full = {r.id: r.question for r in records}
    assert multi_only and all(full[r.id] == r.question for r in multi_only)
    assert {r.metadata["kind"] for r in multi_only} == {"multi-hop"}


def test_describe_records(scenes):
    described = scene_records(scenes[:5], kinds={"describe"})
    assert [r.question for r in described] == ["Describe the image."] * 5
    assert [r.answers for r in described] == [[s.description] for s in scenes[:5]]
    assert all(r.metadata["hops"] == 0 and r.task_type == "scene" for r in described)


def test_pixels_show_each_object_in_its_colour_and_size(scenes):
    size = 128
    for scene in scenes[:40]:
        image = scene.image(size)
        slot = size / len(scene.objects)
        areas = {}
        for obj in scene.objects:
            centre = (int((obj.position + 0.5) * slot), int(obj.y * size))
            assert image.getpixel(centre) == COLOURS[obj.colour], (scene.description, obj)
            left, right = int(obj.position * slot), int((obj.position + 1) * slot)
            column = image.crop((left, 0, right, size))
            areas[obj.position] = sum(1 for p in column.getdata() if p == COLOURS[obj.colour])
        for a in scene.objects:
            for b in scene.objects:
                if a.shape == b.shape and a.size == "large" and b.size == "small":
                    assert areas[a.position] > 3 * areas[b.position], scene.description


def test_background_is_plain_and_light(scenes):
    for scene in scenes[:20]:
        assert scene.image().getpixel((0, 0)) == scene.background
        assert min(scene.background) >= 220
        assert scene.background not in COLOURS.values()


def test_unknown_kind_and_bad_count():
    with pytest.raises(DataError, match="unknown scene question kind"):
        scene_records(make_scenes(1, 0), kinds={"four-hop"})
    with pytest.raises(DataError, match=">= 0"):
        make_scenes(-1, 0)


def test_no_multi_hop_type_rewards_guessing_its_most_common_answer():
    """Types with few possible answers are balanced over the dataset: guessing the prior of
    any type gets at most 60% of it (colour and shape types have more answers than that)."""
    from sdrt.data.scenes import scene_questions

    by_type: dict[str, Counter] = {}
    for scene in make_scenes(3000, seed=5):
        for question in scene_questions(scene, "multi-hop", 3):
            by_type.setdefault(question.question_type, Counter())[question.answer] += 1
    for question_type, answers in by_type.items():
        total = sum(answers.values())
        assert total >= 100, (question_type, total)
        assert answers.most_common(1)[0][1] / total <= 0.6, (question_type, answers)
    assert set(by_type["count_larger_than"]) == {"0", "1", "2", "3"}
    assert set(by_type["same_colour"]) == {"yes", "no"}
