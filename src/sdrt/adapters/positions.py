"""Which positions an intervention edits, read from a ``TokenLayout``.

A spec is a short string, so that configs stay plain data:

* ``"answer"``: every answer position (teacher-forced answer tokens in ``score``, the newly
  generated token in each KV-cached decode step);
* ``"last_prompt:N"``: the last ``N`` prompt positions of each row (none in a decode step);
* ``"first_prompt:N"``: the first ``N`` prompt-text positions after the image (LoReFT edits the
  first and the last prompt positions; in a VLM the text right after the image is where the
  question starts and the image has been read; none in a decode step);
* ``"all_text"``: every real token that is not an image token (prompt text and answer);
* ``"image"``: every image token (where a question stated before the image, ``question_first``,
  can be read while the image is; none in a decode step).

A list of specs edits the union. Every mask comes from the layout, which already accounts for
left padding, so a row edits the same tokens whether it runs alone or inside a padded batch.
Edits at the same positions in ``score`` and in ``generate`` keep training and inference alike.

An adapter with pause slots (``pause``: the prompt's last positions, where its answer opens
with pause marks) edits them too, and its prompt specs count without them: ``last_prompt:4``
is still the end of the chat template's turn, as it is for the adapter without slots.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sdrt.models.base import TokenLayout

KINDS = ("answer", "last_prompt", "first_prompt", "all_text", "image")
COUNTED = ("last_prompt", "first_prompt")


@dataclass(frozen=True)
class PositionSpec:
    """A parsed spec: ``kind`` is one of ``KINDS``; ``count`` is N for ``last_prompt``."""

    kind: str
    count: int = 0

    def __str__(self) -> str:
        return f"{self.kind}:{self.count}" if self.kind in COUNTED else self.kind


def parse_position_spec(spec: str) -> PositionSpec:
    """Parse one spec string; raise ``ValueError`` naming the accepted forms."""
    text = spec.strip()
    if text in ("answer", "all_text", "image"):
        return PositionSpec(text)
    kind, sep, count = text.partition(":")
    if kind in COUNTED and sep and count.isdigit() and int(count) > 0:
        return PositionSpec(kind, int(count))
    raise ValueError(
        f"bad position spec {spec!r}: expected 'answer', 'all_text', 'image', 'last_prompt:N' or "
        "'first_prompt:N' with N >= 1"
    )


def parse_position_specs(specs: str | Sequence[str]) -> list[PositionSpec]:
    """Parse a spec or a list of specs; gather every bad one into one ``ValueError``."""
    items = [specs] if isinstance(specs, str) else list(specs)
    parsed: list[PositionSpec] = []
    problems: list[str] = []
    for item in items:
        try:
            parsed.append(parse_position_spec(item))
        except ValueError as err:
            problems.append(str(err))
    if not items:
        problems.append("no position spec given")
    if problems:
        raise ValueError("; ".join(problems))
    return parsed


def _one_mask(spec: PositionSpec, layout: TokenLayout, pause: int, slots: torch.Tensor) -> torch.Tensor:
    """``spec``'s positions; ``slots``: the ``pause`` slots' mask, which prompt specs count before."""
    real = layout.attention_mask.bool()  # (B, L)
    if spec.kind == "answer":
        return layout.answer_mask.bool() & real
    if spec.kind == "all_text":
        return real & ~layout.image_mask.bool()
    if spec.kind == "image":
        return real & layout.image_mask.bool()
    if spec.kind == "first_prompt":
        return first_text_after_image(layout, spec.count)
    return layout.last_prompt_positions(spec.count + pause).bool() & ~slots


def pause_slots(layout: TokenLayout, pause: int) -> torch.Tensor:
    """(B, L) mask of each row's last ``pause`` prompt positions (none in a decode step)."""
    if pause == 0:
        return torch.zeros_like(layout.attention_mask, dtype=torch.bool)
    return layout.last_prompt_positions(pause).bool()


def first_text_after_image(layout: TokenLayout, n: int) -> torch.Tensor:
    """(B, L) mask of each row's first ``n`` prompt-text positions after its last image token."""
    image = layout.image_mask.bool()
    after_image = image.flip(1).cumsum(1).flip(1) == 0  # no image token at or after the position
    text = layout.text_mask.bool() & after_image
    return text & (text.long().cumsum(1) <= n)


def position_mask(
    spec: str | PositionSpec | Sequence[str | PositionSpec], layout: TokenLayout, pause: int = 0
) -> torch.Tensor:
    """(B, L) bool mask of the positions selected by ``spec`` (a union if several), and of the
    last ``pause`` prompt positions, an adapter's pause slots."""
    items = [spec] if isinstance(spec, str | PositionSpec) else list(spec)
    parsed = [item if isinstance(item, PositionSpec) else parse_position_spec(item) for item in items]
    slots = pause_slots(layout, pause)  # (B, L)
    mask = slots.clone()
    for one in parsed:
        mask |= _one_mask(one, layout, pause, slots)
    return mask
