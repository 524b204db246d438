"""The shared training core: schedule, checkpoint folder, resume rule."""

from __future__ import annotations

import math

import pytest
import torch

from sdrt.training.core import load_checkpoint, save_checkpoint, scheduler, warmup_cosine


def test_warmup_then_cosine_to_the_floor():
    assert [warmup_cosine(s, 4, 20) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert warmup_cosine(4, 4, 20) == pytest.approx(1.0)
    assert warmup_cosine(12, 4, 20) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert warmup_cosine(20, 4, 20) == pytest.approx(0.1) == warmup_cosine(50, 4, 20)


def test_a_checkpoint_restores_tensors_optimiser_schedule_and_extras(tmp_path):
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([weight], lr=0.1)
    schedule = scheduler(optimizer, 2, 10)
    for _ in range(3):
        weight.grad = torch.ones(3)
        optimizer.step()
        schedule.step()
    save_checkpoint(
        tmp_path, 3, {"lr": 0.1}, {"w": weight}, optimizer, schedule, extra={"history": [1, 2, 3]}
    )
    save_checkpoint(tmp_path, 4, {"lr": 0.1}, {"w": weight * 2}, optimizer, schedule)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-0000004"]  # older ones go

    fresh = torch.nn.Parameter(torch.zeros(3))
    other = torch.optim.AdamW([fresh], lr=0.1)
    other_schedule = scheduler(other, 2, 10)
    saved = load_checkpoint(tmp_path, {"lr": 0.1}, "start over")
    saved.restore(other, other_schedule)
    assert saved.step == 4 and saved.extra == {}
    torch.testing.assert_close(saved.trainable["w"], weight.detach() * 2)
    assert other_schedule.last_epoch == schedule.last_epoch
    assert other.state_dict()["state"][0]["step"] == optimizer.state_dict()["state"][0]["step"]
    with pytest.raises(RuntimeError, match=r"differs in: lr\); start over"):
        load_checkpoint(tmp_path, {"lr": 0.2}, "start over", RuntimeError)
    assert load_checkpoint(tmp_path / "nothing", {"lr": 0.1}, "start over") is None
