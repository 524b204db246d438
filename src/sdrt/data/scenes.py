"""Generated scenes of a few shapes in a row, with exact descriptions and multi-hop questions.

Why: SDRT's premise is that a model answers better in two steps (describe, then answer) than in
one. Scenes make that measurable offline. Their exact text description is what a good step-1
analysis should contain, and multi-hop questions (the colour of the shape left of the triangle)
need that analysis, while single-hop ones (the colour of the triangle) mostly do not.

Everything is seeded: scene ``i`` of seed ``s`` depends only on ``(s, i)``, so the same seed
gives identical records and identical pixels, and a longer run extends a shorter one.
Vocabulary (shapes, colours) is easy-vqa's, so a model aligned on easy-vqa knows the words.
Every answer is computed from the scene's objects by construction and is one lower-case word
or a digit; a question is only asked when its answer is unique and well defined.
"""

from __future__ import annotations

import functools
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, TypeVar

from PIL import Image, ImageDraw

from sdrt.data.records import DataError, VQARecord

SHAPES = ("circle", "rectangle", "triangle")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25),
    "green": (20, 160, 40),
    "blue": (25, 60, 230),
    "yellow": (240, 200, 0),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
    "teal": (0, 128, 128),
    "brown": (130, 70, 20),
}
SIZES = ("small", "large")
SCENE_KINDS = ("describe", "single-hop", "multi-hop", "three-hop")
MIN_SHAPES, MAX_SHAPES = 2, 4
DESCRIBE_QUESTION = "Describe the image."
T = TypeVar("T")

# Extents as fractions of the image width: one slot of a full row is 1/MAX_SHAPES = 0.25 wide.
LARGE_EXTENT, SMALL_EXTENT = 0.23, 0.11


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    position: int  # 0 is the leftmost
    y: float  # vertical centre, as a fraction of the image height

    @property
    def phrase(self) -> str:
        return f"a {self.size} {self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """2-4 shapes in a row, left to right, on a plain light background."""

    seed: int
    index: int
    objects: tuple[SceneObject, ...]
    background: tuple[int, int, int]

    @property
    def id(self) -> str:
        return f"scenes/{self.seed}/{self.index}"

    @property
    def description(self) -> str:
        return "From left to right: " + ", ".join(obj.phrase for obj in self.objects) + "."

    def image(self, size: int = 128) -> Image.Image:
        """The scene drawn at ``size`` x ``size`` pixels; no randomness, so pixels are reproducible."""
        img = Image.new("RGB", (size, size), self.background)
        draw = ImageDraw.Draw(img)
        slot = size / len(self.objects)
        for obj in self.objects:
            centre = ((obj.position + 0.5) * slot, obj.y * size)
            extent = (LARGE_EXTENT if obj.size == "large" else SMALL_EXTENT) * size
            _draw_shape(draw, obj.shape, centre, extent, COLOURS[obj.colour])
        return img


_OBJECT_PHRASE = re.compile(
    rf"\b({'|'.join(SIZES)})\s+({'|'.join(COLOURS)})\s+({'|'.join(SHAPES)})\b", re.IGNORECASE
)


def description_objects(text: str) -> list[tuple[str, str, str]]:
    """The (size, colour, shape) phrases of a description, in the order written (left to right)."""
    return [tuple(part.lower() for part in m.groups()) for m in _OBJECT_PHRASE.finditer(text)]  # type: ignore[misc]


def _draw_shape(
    draw: ImageDraw.ImageDraw,
    shape: str,
    centre: tuple[float, float],
    extent: float,
    rgb: tuple[int, int, int],
) -> None:
    x, y, half = centre[0], centre[1], extent / 2
    if shape == "circle":
        draw.ellipse((x - half, y - half, x + half, y + half), fill=rgb)
    elif shape == "rectangle":
        draw.rectangle((x - half, y - 0.7 * half, x + half, y + 0.7 * half), fill=rgb)
    else:
        draw.polygon(((x, y - half), (x - half, y + half), (x + half, y + half)), fill=rgb)


def make_scenes(n: int, seed: int) -> list[Scene]:
    """``n`` scenes of ``seed``; scene ``i`` is the same whatever ``n`` is."""
    if n < 0:
        raise DataError(f"number of scenes must be >= 0, got {n}")
    return [_make_scene(seed, index) for index in range(n)]


def scene_by_id(scene_id: str) -> Scene:
    """The scene a record's ``metadata["scene_id"]`` names ("scenes/<seed>/<index>")."""
    try:
        prefix, seed, index = scene_id.split("/")
        if prefix != "scenes":
            raise ValueError(prefix)
        return _make_scene(int(seed), int(index))
    except ValueError:
        raise DataError(f"not a scene id: {scene_id!r} (expected scenes/<seed>/<index>)") from None


def _make_scene(seed: int, index: int) -> Scene:
    rng = random.Random(f"sdrt-scene/{seed}/{index}")  # str seeds hash the same in every process
    count = rng.randint(MIN_SHAPES, MAX_SHAPES)
    objects = tuple(
        SceneObject(
            shape=rng.choice(SHAPES),
            colour=rng.choice(list(COLOURS)),
            size=rng.choice(SIZES),
            position=position,
            y=round(rng.uniform(0.3, 0.7), 3),
        )
        for position in range(count)
    )
    red, green, blue = (rng.randint(232, 255) for _ in range(3))
    return Scene(seed, index, objects, (red, green, blue))


# --- questions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneQuestion:
    question: str
    answer: str
    question_type: str
    hops: int


@dataclass(frozen=True)
class Reference:
    """A phrase that picks out exactly one object of a scene ("the circle", "the red object")."""

    phrase: str
    target: SceneObject


class _View:
    """Lookups over one scene's objects that the question makers share."""

    def __init__(self, scene: Scene) -> None:
        self.objects = scene.objects
        self.shape_counts = Counter(obj.shape for obj in self.objects)
        self.colour_counts = Counter(obj.colour for obj in self.objects)
        self.pair_counts = Counter((obj.colour, obj.shape) for obj in self.objects)

    @cached_property
    def references(self) -> list[Reference]:
        refs = []
        for obj in self.objects:
            if self.shape_counts[obj.shape] == 1:
                refs.append(Reference(f"the {obj.shape}", obj))
            if self.colour_counts[obj.colour] == 1:
                refs.append(Reference(f"the {obj.colour} object", obj))
            if self.pair_counts[(obj.colour, obj.shape)] == 1 and self.shape_counts[obj.shape] > 1:
                refs.append(Reference(f"the {obj.colour} {obj.shape}", obj))
        return refs

    def colour_refs(self) -> list[Reference]:
        """References by colour alone ("the red object")."""
        return [ref for ref in self.references if ref.phrase == f"the {ref.target.colour} object"]

    def shape_refs(self) -> list[Reference]:
        """References by shape alone ("the circle"): they do not give a colour away."""
        return [ref for ref in self.references if ref.phrase == f"the {ref.target.shape}"]

    def beside(self, obj: SceneObject, direction: str, steps: int = 1) -> SceneObject | None:
        """The object ``steps`` places to the left (or right) of ``obj``, if the row has one."""
        position = obj.position + steps * (-1 if direction == "left" else 1)
        return self.objects[position] if 0 <= position < len(self.objects) else None

    def side(self, obj: SceneObject, direction: str) -> tuple[SceneObject, ...]:
        """Every object to the left (or right) of ``obj``, not only the adjacent one."""
        return self.objects[: obj.position] if direction == "left" else self.objects[obj.position + 1 :]

    def besides(self, obj: SceneObject, steps: int = 1) -> list[tuple[str, SceneObject]]:
        """(direction, object) for each side of ``obj`` that has an object ``steps`` places away."""
        return [(d, other) for d in ("left", "right") if (other := self.beside(obj, d, steps)) is not None]

    def neighbours(self, obj: SceneObject) -> list[SceneObject]:
        return [other for _, other in self.besides(obj)]

    def extreme(self, size: str, end: str) -> SceneObject | None:
        """The leftmost (or rightmost) object of ``size``."""
        matching = [obj for obj in self.objects if obj.size == size]
        if not matching:
            return None
        return matching[0] if end == "leftmost" else matching[-1]


QuestionMaker = Callable[[_View, random.Random], SceneQuestion | None]


def _yes_no(rng: random.Random, yes_options: list[T], no_options: list[T]) -> tuple[bool, T] | None:
    """Pick a yes or a no case with equal odds when both exist, so answers stay balanced."""
    want_yes = rng.random() < 0.5
    options = yes_options if want_yes else no_options
    if not options:
        want_yes, options = not want_yes, no_options if want_yes else yes_options
    if not options:
        return None
    return want_yes, rng.choice(options)


def _answer(flag: bool) -> str:
    return "yes" if flag else "no"


# Single-hop: one lookup or one filter.


def _lookup(refs: str, attribute: str, template: str, question_type: str) -> QuestionMaker:
    """One attribute of an object named by ``refs`` ("shape_refs" or "colour_refs")."""

    def make(view: _View, rng: random.Random) -> SceneQuestion | None:
        found = getattr(view, refs)()
        if not found:
            return None
        ref = rng.choice(found)
        return SceneQuestion(
            template.format(ref=ref.phrase), getattr(ref.target, attribute), question_type, 1
        )

    return make


_colour_of_shape = _lookup("shape_refs", "colour", "What color is {ref}?", "colour_of_shape")
_shape_of_colour = _lookup("colour_refs", "shape", "What shape is {ref}?", "shape_of_colour")
_size_of_colour = _lookup("colour_refs", "size", "What size is {ref}?", "size_of_colour")


def _count_all(view: _View, rng: random.Random) -> SceneQuestion | None:
    return SceneQuestion("How many shapes are there?", str(len(view.objects)), "count_all", 1)


def _count_shape(view: _View, rng: random.Random) -> SceneQuestion | None:
    shape = rng.choice(SHAPES)
    return SceneQuestion(f"How many {shape}s are there?", str(view.shape_counts[shape]), "count_shape", 1)


def _count_colour(view: _View, rng: random.Random) -> SceneQuestion | None:
    colour = rng.choice(sorted(view.colour_counts) + [rng.choice(list(COLOURS))])
    answer = str(view.colour_counts[colour])
    return SceneQuestion(f"How many {colour} shapes are there?", answer, "count_colour", 1)


def _exists(counts: str, universe: tuple[str, ...], template: str, question_type: str) -> QuestionMaker:
    """Whether a shape or colour is present; yes and no equally likely where both can be asked."""

    def make(view: _View, rng: random.Random) -> SceneQuestion | None:
        present = sorted(getattr(view, counts))
        picked = _yes_no(rng, present, [v for v in universe if v not in present])
        if picked is None:
            return None
        flag, value = picked
        return SceneQuestion(template.format(value), _answer(flag), question_type, 1)

    return make


_exists_shape = _exists("shape_counts", SHAPES, "Is there a {}?", "exists_shape")
_exists_colour = _exists("colour_counts", tuple(COLOURS), "Is there a {} shape?", "exists_colour")


def _at_end(attribute: str, template: str, question_type: str) -> QuestionMaker:
    """An attribute of the leftmost or rightmost object."""

    def make(view: _View, rng: random.Random) -> SceneQuestion | None:
        end = rng.choice(("leftmost", "rightmost"))
        obj = view.objects[0] if end == "leftmost" else view.objects[-1]
        return SceneQuestion(template.format(end), getattr(obj, attribute), question_type, 1)

    return make


_colour_at_end = _at_end("colour", "What color is the {} shape?", "colour_at_end")
_shape_at_end = _at_end("shape", "What shape is the {} object?", "shape_at_end")


# Multi-hop: resolve a reference, then follow a relation or compare, then read an attribute.


def _beside(attribute: str, template: str, question_type: str, steps: int = 1) -> QuestionMaker:
    """An attribute of the object ``steps`` places left or right of a named one (1 + steps hops)."""

    def make(view: _View, rng: random.Random) -> SceneQuestion | None:
        cases = [(ref, d, other) for ref in view.references for d, other in view.besides(ref.target, steps)]
        if not cases:
            return None
        ref, direction, other = rng.choice(cases)
        text = template.format(direction=direction, ref=ref.phrase)
        return SceneQuestion(text, getattr(other, attribute), question_type, 1 + steps)

    return make


_colour_beside = _beside(
    "colour", "What color is the shape directly to the {direction} of {ref}?", "colour_beside"
)
_shape_beside = _beside("shape", "What shape is directly to the {direction} of {ref}?", "shape_beside")


def _shape_next_to(view: _View, rng: random.Random) -> SceneQuestion | None:
    cases = [ref for ref in view.references if len({n.shape for n in view.neighbours(ref.target)}) == 1]
    if not cases:
        return None
    ref = rng.choice(cases)
    shape = view.neighbours(ref.target)[0].shape
    return SceneQuestion(f"What shape is next to {ref.phrase}?", shape, "shape_next_to", 2)


# Some multi-hop types, left to chance, have one answer most of the time: with at most four
# shapes, "how many other shapes share this colour" is 0 for most shapes, and two named shapes
# rarely share a colour. A model then does well by guessing the prior, in one step or in two,
# and the testbed cannot tell reasoning from guessing. These types draw the answer first, each
# value with probability inversely proportional to how often a scene offers it, so that over
# the dataset every value is asked about equally often (a scene lacking the drawn value asks
# another type instead).
AVAILABILITY_SCENES, AVAILABILITY_SEED = 2000, 2**20  # a seed of its own, for the statistics only
MIN_AVAILABILITY = 0.05  # values rarer than this in scenes are not asked for

Cases = dict[str, list]  # answer -> the cases (references, pairs) that have it


def _larger_than_cases(view: _View) -> Cases:
    large = sum(obj.size == "large" for obj in view.objects)
    cases: Cases = {}
    for ref in view.references:
        cases.setdefault(str(0 if ref.target.size == "large" else large), []).append(ref)
    return cases


def _same_colour_count_cases(view: _View) -> Cases:
    cases: Cases = {}
    for ref in view.shape_refs():
        others = sum(obj.colour == ref.target.colour and obj is not ref.target for obj in view.objects)
        cases.setdefault(str(others), []).append(ref)
    return cases


def _same_colour_cases(view: _View) -> Cases:
    refs = view.shape_refs()
    cases: Cases = {}
    for a in refs:
        for b in refs:
            if a.target.position < b.target.position:
                cases.setdefault(_answer(a.target.colour == b.target.colour), []).append((a, b))
    return cases


def _share_of_scenes(offers: Callable[[Scene], Iterable[str]]) -> dict[str, float]:
    """Share of the statistics' scenes that offer each value (a value counted once per scene)."""
    offered: Counter[str] = Counter()
    for scene in make_scenes(AVAILABILITY_SCENES, AVAILABILITY_SEED):
        offered.update(set(offers(scene)))
    return {value: n / AVAILABILITY_SCENES for value, n in sorted(offered.items())}


@functools.cache
def _availability(cases_of: Callable[[_View], Cases]) -> dict[str, float]:
    """Share of scenes that offer each answer (those offered by at least MIN_AVAILABILITY)."""
    shares = _share_of_scenes(lambda scene: [a for a, cases in cases_of(_View(scene)).items() if cases])
    return {answer: share for answer, share in shares.items() if share >= MIN_AVAILABILITY}


def _balanced(view: _View, rng: random.Random, cases_of: Callable[[_View], Cases]) -> tuple[str, Any] | None:
    """An (answer, case) with the answer drawn so that answers are balanced over the dataset."""
    availability = _availability(cases_of)
    answers = list(availability)
    wanted = rng.choices(answers, weights=[1 / availability[a] for a in answers])[0]
    cases = cases_of(view).get(wanted)
    return (wanted, rng.choice(cases)) if cases else None


def _count_larger_than(view: _View, rng: random.Random) -> SceneQuestion | None:
    picked = _balanced(view, rng, _larger_than_cases)
    if picked is None:
        return None
    larger, ref = picked
    return SceneQuestion(f"How many shapes are larger than {ref.phrase}?", larger, "count_larger_than", 2)


def _largest_is_shape(view: _View, rng: random.Random) -> SceneQuestion | None:
    large = [obj for obj in view.objects if obj.size == "large"]
    if len(large) != 1 or len(view.objects) < 2:
        return None
    actual = large[0].shape
    picked = _yes_no(rng, [actual], [s for s in SHAPES if s != actual])
    if picked is None:
        return None
    flag, shape = picked
    return SceneQuestion(f"Is the largest shape a {shape}?", _answer(flag), "largest_is_shape", 2)


def _colour_of_extreme(view: _View, rng: random.Random) -> SceneQuestion | None:
    cases = [
        (end, size, obj)
        for end in ("leftmost", "rightmost")
        for size in SIZES
        if sum(o.size == size for o in view.objects) >= 2 and (obj := view.extreme(size, end)) is not None
    ]
    if not cases:
        return None
    end, size, obj = rng.choice(cases)
    return SceneQuestion(f"What color is the {end} {size} shape?", obj.colour, "colour_of_extreme", 2)


def _colour_between(view: _View, rng: random.Random) -> SceneQuestion | None:
    cases = [
        (a, b) for a in view.references for b in view.references if b.target.position - a.target.position == 2
    ]
    if not cases:
        return None
    a, b = rng.choice(cases)
    if rng.random() < 0.5:
        a, b = b, a  # "between x and y" reads either way round
    middle = view.objects[(a.target.position + b.target.position) // 2]
    text = f"What color is the shape between {a.phrase} and {b.phrase}?"
    return SceneQuestion(text, middle.colour, "colour_between", 2)


def _same_colour(view: _View, rng: random.Random) -> SceneQuestion | None:
    picked = _balanced(view, rng, _same_colour_cases)
    if picked is None:
        return None
    answer, (a, b) = picked
    return SceneQuestion(f"Are {a.phrase} and {b.phrase} the same color?", answer, "same_colour", 2)


def _count_same_colour(view: _View, rng: random.Random) -> SceneQuestion | None:
    picked = _balanced(view, rng, _same_colour_count_cases)
    if picked is None:
        return None
    others, ref = picked
    text = f"How many other shapes have the same color as {ref.phrase}?"
    return SceneQuestion(text, others, "count_same_colour", 2)


def _exists_beside(view: _View, rng: random.Random) -> SceneQuestion | None:
    cases = [(ref, d) for ref in view.references for d in ("left", "right") if view.side(ref.target, d)]
    if not cases:  # an empty side would make every answer "no"
        return None
    ref, direction = rng.choice(cases)
    present = sorted({obj.shape for obj in view.side(ref.target, direction)})
    picked = _yes_no(rng, present, [s for s in SHAPES if s not in present])
    if picked is None:
        return None
    flag, shape = picked
    text = f"Is there a {shape} anywhere to the {direction} of {ref.phrase}?"
    return SceneQuestion(text, _answer(flag), "exists_beside", 2)


def _beside_extreme(attribute: str, template: str, question_type: str) -> QuestionMaker:
    """An attribute of the object beside the leftmost or rightmost object of a size (three hops)."""

    def make(view: _View, rng: random.Random) -> SceneQuestion | None:
        cases = [
            (end, size, d, other)
            for end in ("leftmost", "rightmost")
            for size in SIZES
            if (obj := view.extreme(size, end)) is not None
            for d, other in view.besides(obj)
        ]
        if not cases:
            return None
        end, size, direction, other = rng.choice(cases)
        text = template.format(direction=direction, end=end, size=size)
        return SceneQuestion(text, getattr(other, attribute), question_type, 3)

    return make


_shape_beside_extreme = _beside_extreme(
    "shape", "What shape is directly to the {direction} of the {end} {size} shape?", "shape_beside_extreme"
)


# Three hops, a harder kind of its own: two relations chained, or a relation and a second
# reference compared, before the attribute is read. One-step answers must compose all three
# inside one forward pass; a description written first leaves step 2 a lookup in text.


_colour_beside_twice = _beside(
    "colour",
    "What color is the shape directly to the {direction} of the shape directly to the {direction} of {ref}?",
    "colour_beside_twice",
    steps=2,
)
_shape_beside_twice = _beside(
    "shape",
    "What shape is directly to the {direction} of the shape directly to the {direction} of {ref}?",
    "shape_beside_twice",
    steps=2,
)
_colour_beside_extreme = _beside_extreme(
    "colour",
    "What color is the shape directly to the {direction} of the {end} {size} shape?",
    "colour_beside_extreme",
)


def _beside_same_colour_cases(view: _View) -> Cases:
    cases: Cases = {}
    for ref in view.references:
        for d, neighbour in view.besides(ref.target):
            for second in view.shape_refs():
                if second.target is not neighbour and second.target is not ref.target:
                    answer = _answer(second.target.colour == neighbour.colour)
                    cases.setdefault(answer, []).append((ref, d, second))
    return cases


def _beside_same_colour(view: _View, rng: random.Random) -> SceneQuestion | None:
    """Whether the neighbour of one named object has the colour of another (named by shape)."""
    picked = _balanced(view, rng, _beside_same_colour_cases)
    if picked is None:
        return None
    answer, (ref, direction, second) = picked
    text = f"Is the shape directly to the {direction} of {ref.phrase} the same color as {second.phrase}?"
    return SceneQuestion(text, answer, "beside_same_colour", 3)


SINGLE_HOP_MAKERS: tuple[QuestionMaker, ...] = (
    _colour_of_shape,
    _shape_of_colour,
    _size_of_colour,
    _count_all,
    _count_shape,
    _count_colour,
    _exists_shape,
    _exists_colour,
    _colour_at_end,
    _shape_at_end,
)
MULTI_HOP_MAKERS: tuple[QuestionMaker, ...] = (
    _colour_beside,
    _shape_beside,
    _shape_next_to,
    _count_larger_than,
    _largest_is_shape,
    _colour_of_extreme,
    _colour_between,
    _same_colour,
    _count_same_colour,
    _exists_beside,
    _shape_beside_extreme,
)
THREE_HOP_MAKERS: tuple[QuestionMaker, ...] = (
    _colour_beside_twice,
    _shape_beside_twice,
    _colour_beside_extreme,
    _beside_same_colour,
)
QUESTION_MAKERS = {
    "single-hop": SINGLE_HOP_MAKERS,
    "multi-hop": MULTI_HOP_MAKERS,
    "three-hop": THREE_HOP_MAKERS,
}


def scene_questions(scene: Scene, kind: str, count: int | None) -> list[SceneQuestion]:
    """Up to ``count`` questions of one kind (None: every type the scene offers), each of a
    different type, chosen with the scene's seed; the first ``count`` do not depend on ``count``."""
    makers = QUESTION_MAKERS[kind]
    rng = random.Random(f"sdrt-questions/{scene.seed}/{scene.index}/{kind}")
    view = _View(scene)
    order = list(makers)
    rng.shuffle(order)
    questions: list[SceneQuestion] = []
    for make in order:
        if len(questions) == count:
            break
        question = make(view, rng)
        if question is not None:
            questions.append(question)
    return questions


@functools.cache
def question_type_shares(kind: str) -> dict[str, float]:
    """Share of scenes that offer a question of each type of ``kind`` (on the statistics' seed)."""
    return _share_of_scenes(lambda scene: [q.question_type for q in scene_questions(scene, kind, None)])


def scene_records(
    scenes: Iterable[Scene], *, kinds: set[str], per_scene: int = 3, image_size: int = 128
) -> list[VQARecord]:
    """Records of the chosen kinds: "describe" (hops 0), "single-hop" (1), "multi-hop" (2-3),
    "three-hop" (3, the harder kind).

    Question numbers within a scene do not depend on ``kinds`` (0 is the description, then
    ``per_scene`` single-hop slots, then ``per_scene`` multi-hop ones, then three-hop), so an id
    names the same question in every selection.
    """
    unknown = set(kinds) - set(SCENE_KINDS)
    if unknown:
        raise DataError(f"unknown scene question kind(s) {sorted(unknown)}; known: {SCENE_KINDS}")
    records: list[VQARecord] = []
    for scene in scenes:
        image = scene.image(image_size)
        for number, kind, question in _numbered_questions(scene, kinds, per_scene):
            records.append(
                VQARecord(
                    id=f"{scene.id}/{number}",
                    question=question.question,
                    answers=[question.answer],
                    image=image,
                    task_type="scene",
                    metadata={
                        "scene_id": scene.id,
                        "hops": question.hops,
                        "question_type": question.question_type,
                        "description": scene.description,
                        "kind": kind,
                    },
                )
            )
    return records


def _numbered_questions(
    scene: Scene, kinds: set[str], per_scene: int
) -> Iterable[tuple[int, str, SceneQuestion]]:
    if "describe" in kinds:
        yield 0, "describe", SceneQuestion(DESCRIBE_QUESTION, scene.description, "describe", 0)
    for offset, kind in ((1, "single-hop"), (1 + per_scene, "multi-hop"), (1 + 2 * per_scene, "three-hop")):
        if kind in kinds:
            for i, question in enumerate(scene_questions(scene, kind, per_scene)):
                yield offset + i, kind, question
