"""Every built-in prompt rendered for fixed questions, compared with checked-in snapshots.

A template change fails here until the snapshots are rewritten on purpose:
``SDRT_UPDATE_SNAPSHOTS=1 pytest tests/prompts/test_prompt_snapshots.py`` (then review the diff).
"""

import os
from pathlib import Path

import pytest

from sdrt.prompts import DualQueryPrompt, PromptLibrary, direct_prompt

SNAPSHOTS = Path(__file__).parent / "snapshots"
UPDATE = os.environ.get("SDRT_UPDATE_SNAPSHOTS") == "1"

OPEN_QUESTION = "How many red cubes are left of the blue sphere?"
CHOICE_QUESTION = "Which colour is the largest shape?"
CHOICES = ["red", "blue", "green", "yellow"]
ANALYSIS = "There are two red cubes and one blue sphere. Both cubes are on the left."

LIBRARY = PromptLibrary.builtin()


def show(conversation: list[tuple[str, str]]) -> str:
    return "\n".join(f"[{role}]\n{text}" for role, text in conversation)


def render_prompt_snapshot(prompt: DualQueryPrompt) -> str:
    sections = [f"# {prompt.id}", f"task types: {', '.join(prompt.task_types)}"]
    if not prompt.needs_choices:
        sections += [
            "## open question: step 1",
            show(prompt.step1(OPEN_QUESTION)),
            "## open question: step 2",
            show(prompt.step2(OPEN_QUESTION, ANALYSIS)),
        ]
    sections += [
        "## multiple choice: step 1",
        show(prompt.step1(CHOICE_QUESTION, CHOICES)),
        "## multiple choice: step 2",
        show(prompt.step2(CHOICE_QUESTION, ANALYSIS, CHOICES)),
    ]
    return "\n".join(sections) + "\n"


def render_direct_snapshot() -> str:
    return (
        "\n".join(
            [
                "# direct (no reasoning)",
                "## open question",
                show(direct_prompt(OPEN_QUESTION)),
                "## multiple choice",
                show(direct_prompt(CHOICE_QUESTION, CHOICES)),
            ]
        )
        + "\n"
    )


def check_snapshot(name: str, rendered: str) -> None:
    path = SNAPSHOTS / f"{name}.txt"
    if UPDATE:
        SNAPSHOTS.mkdir(exist_ok=True)
        path.write_text(rendered, encoding="utf-8")
        return
    assert path.is_file(), f"no snapshot {path}; run with SDRT_UPDATE_SNAPSHOTS=1 to write it"
    assert rendered == path.read_text(encoding="utf-8"), (
        f"{name} renders differently from {path}; if the change is intended, "
        "rerun with SDRT_UPDATE_SNAPSHOTS=1 and review the diff"
    )


@pytest.mark.parametrize("prompt_id", LIBRARY.ids)
def test_builtin_prompt_renders_as_snapshot(prompt_id: str) -> None:
    prompt = LIBRARY.get(prompt_id)
    check_snapshot(prompt_id, render_prompt_snapshot(prompt))
    assert prompt.direct(OPEN_QUESTION) == direct_prompt(OPEN_QUESTION)


def test_direct_prompt_renders_as_snapshot() -> None:
    check_snapshot("direct", render_direct_snapshot())


def test_no_stale_snapshots() -> None:
    expected = {*LIBRARY.ids, "direct"}
    stale = sorted(p.stem for p in SNAPSHOTS.glob("*.txt") if p.stem not in expected)
    if UPDATE:
        for name in stale:
            (SNAPSHOTS / f"{name}.txt").unlink()
        return
    assert not stale, f"snapshots of prompts that no longer exist: {stale}"
