"""Step-1 analyses of a scene, written from its scene graph, and altered scenes.

A real VLM brings analysis skills from pretraining: it can list the objects of an image, say
where they are, count them or plan a lookup. The embedded model learns them in alignment from
these texts, one skill per scene-suited prompt of the library. Every text is computed from the
scene's objects, so it is exact; none names the answer to a question (questions only choose
which objects a plan mentions first).

``alter_scene`` changes one fact of a scene. Alignment pairs an altered scene's analysis with
the *original* image and an answer computed on the altered scene, so that step 2 learns to
answer from the analysis it is given rather than from the pixels.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import replace

from sdrt.data.records import DataError
from sdrt.data.scenes import COLOURS, SHAPES, SIZES, Scene, SceneObject

ORDINALS = ("1st", "2nd", "3rd", "4th", "5th", "6th")


def _name(obj: SceneObject) -> str:
    return f"{obj.size} {obj.colour} {obj.shape}"


def _place(obj: SceneObject, count: int) -> str:
    """Where an object stands in the row, in words."""
    if obj.position == 0:
        return "leftmost"
    if obj.position == count - 1:
        return "rightmost"
    return f"{ORDINALS[obj.position]} from the left"


def _plural(word: str, n: int) -> str:
    return word if n == 1 else f"{word}s"


def describe(scene: Scene, question: str = "") -> str:
    """The plain description: every object, left to right."""
    return scene.description


def object_list(scene: Scene, question: str = "") -> str:
    """One line per object with its position."""
    count = len(scene.objects)
    return "\n".join(
        f"Object {obj.position + 1} ({_place(obj, count)}): {_name(obj)}." for obj in scene.objects
    )


def relations(scene: Scene, question: str = "") -> str:
    """Who is directly left of whom, for every adjacent pair."""
    pairs = zip(scene.objects, scene.objects[1:], strict=False)
    return " ".join(f"The {_name(a)} is directly left of the {_name(b)}." for a, b in pairs)


def counts(scene: Scene, question: str = "") -> str:
    """The objects one per line with their place, then counts by shape, colour and size."""
    count = len(scene.objects)
    lines = [f"{obj.position + 1}. {_name(obj)}, {_place(obj, count)}" for obj in scene.objects]
    shapes = Counter(obj.shape for obj in scene.objects)
    colours = Counter(obj.colour for obj in scene.objects)
    sizes = Counter(obj.size for obj in scene.objects)
    by_shape = ", ".join(f"{shapes[s]} {_plural(s, shapes[s])}" for s in SHAPES)
    by_colour = ", ".join(f"{colours[c]} {c}" for c in COLOURS if colours[c])
    by_size = ", ".join(f"{sizes[s]} {s}" for s in SIZES)
    lines.append(f"In all: {count} shapes; {by_shape}; {by_colour}; {by_size}.")
    return "\n".join(lines)


def size_order(scene: Scene, question: str = "") -> str:
    """The objects grouped by size, large first, each with its colour, shape and position."""
    parts = []
    for size in reversed(SIZES):  # "large" before "small"
        group = [obj for obj in scene.objects if obj.size == size]
        listed = ", ".join(f"the {obj.colour} {obj.shape} ({ORDINALS[obj.position]})" for obj in group)
        parts.append(f"{size.capitalize()}: {listed or 'none'}.")
    return " ".join(parts)


def plan(scene: Scene, question: str = "") -> str:
    """(subject, relation, object) triplets: the question's referents first, the answer left open."""
    count = len(scene.objects)
    mentioned = _referents(scene, question)
    triplets = [f"({phrase}, is at, position {obj.position + 1} of {count})" for phrase, obj in mentioned]
    triplets += [f"(position {obj.position + 1}, holds, {_name(obj)})" for obj in scene.objects]
    triplets.append("(answer, is, ?)")
    return "; ".join(triplets)


def facts(scene: Scene, question: str = "") -> str:
    """What the image shows, then what is known about its shapes."""
    names = [f"a {_name(obj)}" for obj in scene.objects]
    listed = ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else names[0]
    present = [s for s in SHAPES if any(obj.shape == s for obj in scene.objects)]
    known = {
        "circle": "a circle is round",
        "rectangle": "a rectangle has four corners",
        "triangle": "a triangle has three corners",
    }
    return (
        f"The image shows {len(names)} shapes in a row on a light background: {listed}. "
        + "; ".join(known[s] for s in present).capitalize()
        + "."
    )


ANALYSES: dict[str, Callable[[Scene, str], str]] = {
    "description": describe,
    "objects": object_list,
    "relations": relations,
    "counts": counts,
    "sizes": size_order,
    "plan": plan,
    "facts": facts,
}


def analysis(skill: str, scene: Scene, question: str = "") -> str:
    """The exact step-1 text of ``skill`` for ``scene`` (and ``question``, for the plan)."""
    try:
        return ANALYSES[skill](scene, question)
    except KeyError:
        raise DataError(f"unknown analysis skill {skill!r}; known: {', '.join(ANALYSES)}") from None


def _referents(scene: Scene, question: str) -> list[tuple[str, SceneObject]]:
    """Objects the question names unambiguously ("the triangle", "the red object"), in order."""
    text = question.lower()
    found = []
    shape_counts = Counter(obj.shape for obj in scene.objects)
    colour_counts = Counter(obj.colour for obj in scene.objects)
    for obj in scene.objects:
        for phrase, unique in (
            (f"the {obj.colour} {obj.shape}", True),
            (f"the {obj.shape}", shape_counts[obj.shape] == 1),
            (f"the {obj.colour} object", colour_counts[obj.colour] == 1),
        ):
            match = re.search(rf"\b{re.escape(phrase)}\b", text)
            if unique and match:
                found.append((match.start(), phrase, obj))
                break
    return [(phrase, obj) for _, phrase, obj in sorted(found, key=lambda item: item[0])]


def alter_scene(scene: Scene, rng: random.Random) -> Scene:
    """The scene with one fact changed: an object's colour, shape or size, or two objects swapped."""
    objects = list(scene.objects)
    changes = ("colour", "shape", "size", "swap") if len(objects) > 1 else ("colour", "shape", "size")
    change = rng.choice(changes)
    if change == "swap":
        i, j = rng.sample(range(len(objects)), 2)
        objects[i], objects[j] = replace(objects[j], position=i), replace(objects[i], position=j)
    else:
        i = rng.randrange(len(objects))
        values = {"colour": list(COLOURS), "shape": list(SHAPES), "size": list(SIZES)}[change]
        current = getattr(objects[i], change)
        objects[i] = replace(objects[i], **{change: rng.choice([v for v in values if v != current])})
    return replace(scene, objects=tuple(objects))
