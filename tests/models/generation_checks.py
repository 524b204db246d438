"""Checks shared by the backends' generation tests."""

from __future__ import annotations

import torch


def assert_same_generations(mine, plain, atol: float = 2e-4) -> None:
    """Two lists of steps' generations: the same tokens, log-probs equal to ``atol``."""
    for ours, theirs in zip(mine, plain, strict=True):
        assert [g.token_ids for g in ours] == [g.token_ids for g in theirs]
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a.token_logprobs, b.token_logprobs, atol=atol, rtol=0)
