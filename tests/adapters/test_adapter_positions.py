"""Position specs: parsing, left-padded layouts, decode steps."""

from __future__ import annotations

import pytest
import torch

from sdrt.adapters.positions import parse_position_specs, position_mask
from sdrt.models.base import TokenLayout

CASES = [
    # spec, rows ('.' pad, 'i' image, 't' text, 'a' answer), expected marks
    ("answer", ["..iittaa", "iitttaaa"], ["------xx", "-----xxx"]),
    ("last_prompt:2", ["..iittaa", "iitttaaa"], ["----xx--", "---xx---"]),
    ("last_prompt:5", ["...ittaa", "iitttaaa"], ["---xxx--", "xxxxx---"]),
    ("all_text", ["..iittaa", "iitttaaa"], ["----xxxx", "--xxxxxx"]),
    ("image", ["..ttiita", "tiiittaa"], ["----xx--", "-xxx----"]),
    (["image", "first_prompt:1"], ["..ttiita", "tiiittaa"], ["----xxx-", "-xxxx---"]),
    (["last_prompt:1", "answer"], ["..iittaa", "....itta"], ["-----xxx", "------xx"]),
    ("last_prompt:3", ["...iitt", "iittttt"], ["----xxx", "----xxx"]),  # prompt-only rows (prefill)
    # text before the image (a system turn) is not counted; only text after the last image token
    ("first_prompt:2", [".ttiitttaa", "tiittaaaaa"], ["-----xx---", "---xx-----"]),
    ("first_prompt:4", ["..ttiitta", "ttiittttt"], ["------xx-", "----xxxx-"]),
    (["first_prompt:1", "last_prompt:1"], ["..tiittta", "tiitttttt"], ["-----x-x-", "---x----x"]),
]


def marks(mask: torch.Tensor) -> list[str]:
    """A mask as strings of 'x' (selected) and '-' (not), for readable assertions."""
    return ["".join("x" if v else "-" for v in row) for row in mask.tolist()]


@pytest.mark.parametrize(("spec", "rows", "expected"), CASES)
def test_masks_on_left_padded_layouts(spec, rows, expected, layout) -> None:
    assert marks(position_mask(spec, layout(rows))) == expected


PAUSE_CASES = [
    # with two pause slots (the last two prompt positions): the slots are always edited, and a
    # prompt spec counts the prompt before them
    ("last_prompt:2", ["..iittttaa", "iitttttaaa"], ["----xxxx--", "---xxxx---"]),
    ("answer", ["..iittttaa", "iitttttaaa"], ["------xxxx", "-----xxxxx"]),
    ("first_prompt:1", ["..iittttaa", "iitttttaaa"], ["----x-xx--", "--x--xx---"]),
    ("last_prompt:1", ["..iitttt", ".iittttt"], ["-----xxx", "-----xxx"]),  # prefill rows
]


@pytest.mark.parametrize(("spec", "rows", "expected"), PAUSE_CASES)
def test_pause_slots_are_edited_and_prompt_specs_count_before_them(spec, rows, expected, layout) -> None:
    assert marks(position_mask(spec, layout(rows), pause=2)) == expected


def test_row_alone_equals_row_inside_padded_batch(layout) -> None:
    alone = layout(["iitta"])
    batch = layout(["...iitta", "iiitttaa"])
    spec = ["last_prompt:3", "answer"]
    assert torch.equal(position_mask(spec, batch)[0, 3:], position_mask(spec, alone)[0])
    assert not position_mask(spec, batch)[0, :3].any()


def test_decode_step_edits_answer_only() -> None:
    step = TokenLayout.decode_step(3, "cpu")
    assert position_mask("answer", step).tolist() == [[True]] * 3
    assert not position_mask("last_prompt:4", step).any()
    assert not position_mask("first_prompt:2", step).any()
    assert position_mask(["last_prompt:4", "answer"], step).all()
    assert position_mask("all_text", step).all()
    assert not position_mask("image", step).any()


def test_bad_specs_are_all_reported() -> None:
    with pytest.raises(ValueError) as err:
        parse_position_specs(["answer", "bogus", "last_prompt:0", "last_prompt"])
    message = str(err.value)
    assert "'bogus'" in message and "'last_prompt:0'" in message and "'last_prompt'" in message
    with pytest.raises(ValueError, match="no position spec"):
        parse_position_specs([])
    assert [str(s) for s in parse_position_specs(" last_prompt:4 ")] == ["last_prompt:4"]
