"""Every built-in prompt rendered through each tiny backend's own chat template."""

import pytest

from sdrt.models.tiny import load_tiny_model
from sdrt.prompts.library import SHORT_ANSWER_INSTRUCTION, PromptLibrary, direct_prompt

QUESTION = "What color is the shape left of the triangle?"
ANALYSIS = "From left to right: a large red circle, a small blue triangle."


@pytest.fixture(scope="module", params=["llava", "qwen2-vl", "idefics3"])
def model(request):
    return load_tiny_model(request.param)


def image_placeholders(model, text: str) -> int:
    return text.count(model.image_token)


def generation_suffix(model) -> str:
    """What the template puts after a user turn's text: end of turn and the assistant header."""
    return model.render_prompt("MARKER").rsplit("MARKER", 1)[1]


@pytest.mark.parametrize("prompt_id", PromptLibrary.load().ids)
def test_dual_query_steps_render_through_the_chat_template(model, prompt_id):
    prompt = PromptLibrary.load().get(prompt_id)
    if prompt.needs_choices:
        pytest.skip("multiple-choice-only prompt; rendered with options in the snapshot tests")
    step1 = model.render_prompt(prompt.step1(QUESTION))
    step2 = model.render_prompt(prompt.step2(QUESTION, ANALYSIS))
    assert image_placeholders(model, step1) >= 1
    assert image_placeholders(model, step2) == image_placeholders(
        model, step1
    )  # one image, in the first turn
    assert step2.index(model.image_token) < step2.index(ANALYSIS)
    assert SHORT_ANSWER_INSTRUCTION in step2 and SHORT_ANSWER_INSTRUCTION not in step1
    assert ANALYSIS in step2 and ANALYSIS not in step1
    # the step-2 conversation ends in a generation prompt, like step 1
    assert step2.endswith(
        step1[len(step1.rstrip()) - len(step1) :] if step1 != step1.rstrip() else step1[-3:]
    )


def test_direct_prompt_renders_with_the_short_answer_instruction(model):
    text = model.render_prompt(direct_prompt(QUESTION))
    assert QUESTION in text and SHORT_ANSWER_INSTRUCTION in text
    assert image_placeholders(model, text) >= 1
