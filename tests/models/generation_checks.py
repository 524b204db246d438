"""Checks shared by the backends' generation tests."""

from __future__ import annotations

import torch


def assert_same_generations(mine, plain, atol: float = 2e-4) -> None:
    """Two lists of steps' generations: the same tokens, log-probs equal to ``atol``."""
    for ours, theirs in zip(mine, plain, strict=True):
        assert [g.token_ids for g in ours] == [g.token_ids for g in theirs]
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a.token_logprobs, b.token_logprobs, atol=atol, rtol=0)


def assert_answer_opens_with_pause_marks(model, image, question: str = "What colour is the circle?") -> None:
    """A prompt that opens its answer with pause marks renders as the plain prompt (its
    generation header included) followed by the marks, one token each, and nothing after them."""
    from sdrt.prompts.library import StudentLayout, direct_prompt

    plain, opened = direct_prompt(question), direct_prompt(question, layout=StudentLayout(pause_tokens=5))
    rendered = model.render_prompt(opened)
    assert rendered.startswith(model.render_prompt(plain))
    assert rendered.endswith(opened[-1][1])
    assert model.prompt_tokens(image, opened) - model.prompt_tokens(image, plain) == 5
