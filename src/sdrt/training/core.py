"""What every training job shares: the LR schedule, the checkpoint folder and the resume rule.

Alignment (the embedded VLM's projector and LoRA) and distillation (adapters) both train a
small set of tensors on a frozen model. Both checkpoint the same way: a folder
``<out>/checkpoints/step-NNNNNNN`` with the trainable tensors (safetensors), the optimiser and
scheduler state, and ``state.json`` (the step, the settings' fingerprint, job extras), which
appears atomically by a rename. A checkpoint resumes only the settings that wrote it: any
difference is refused, naming the fields, because restoring the old optimiser and schedule
under new settings silently trains something else.
"""

from __future__ import annotations

import json
import math
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

CHECKPOINTS = "checkpoints"


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, floor: float = 0.1) -> float:
    """LR factor: linear warm-up to 1, then cosine decay to ``floor`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> Any:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup_steps, total_steps)
    )


@dataclass
class Checkpoint:
    step: int
    trainable: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)  # what a job keeps besides (its history)

    def restore(self, optimizer: torch.optim.Optimizer, schedule: Any) -> None:
        optimizer.load_state_dict(self.optimizer)
        schedule.load_state_dict(self.scheduler)


def save_checkpoint(
    out: Path,
    step: int,
    settings: Mapping[str, Any],
    trainable: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    schedule: Any,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """``out/checkpoints/step-N`` appears complete (built aside, then renamed); older ones go."""
    root = out / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    staging = root / f".tmp-{uuid.uuid4().hex}"
    staging.mkdir()
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in trainable.items()},
        str(staging / "trainable.safetensors"),
    )
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": schedule.state_dict()}, staging / "optimizer.pt"
    )
    state = {"step": step, "settings": dict(settings), **({"extra": dict(extra)} if extra else {})}
    (staging / "state.json").write_text(json.dumps(state))
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
    for old in root.glob("step-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(out: Path) -> Path | None:
    root = out / CHECKPOINTS
    found = sorted(root.glob("step-*")) if root.exists() else []
    return found[-1] if found else None


def load_checkpoint(
    out: Path, settings: Mapping[str, Any], restart_hint: str, error: type[Exception] = ValueError
) -> Checkpoint | None:
    """The newest checkpoint under ``out``, or None; ``error`` if other settings wrote it."""
    latest = latest_checkpoint(out)
    if latest is None:
        return None
    saved = json.loads((latest / "state.json").read_text())
    check_settings(latest, saved.get("settings"), settings, restart_hint, error)
    states = torch.load(latest / "optimizer.pt", map_location="cpu", weights_only=False)
    return Checkpoint(
        step=int(saved["step"]),
        trainable=load_file(str(latest / "trainable.safetensors")),
        optimizer=states["optimizer"],
        scheduler=states["scheduler"],
        extra=saved.get("extra", {}),
    )


def check_settings(
    checkpoint: object,
    saved: Mapping[str, Any] | None,
    current: Mapping[str, Any],
    restart_hint: str,
    error: type[Exception] = ValueError,
) -> None:
    if saved is None:
        raise error(f"{checkpoint} records no settings to compare with; {restart_hint}")
    differing = fingerprint_mismatch(saved, current)
    if differing:
        raise error(mismatch_message(checkpoint, differing, restart_hint))


def fingerprint_mismatch(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Dotted names of the settings that differ (nested sections compared field by field)."""
    differing: list[str] = []
    for key in sorted(set(saved) | set(current), key=str):
        old, new = saved.get(key), current.get(key)
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            differing += [f"{key}.{name}" for name in fingerprint_mismatch(old, new)]
        elif key not in saved or key not in current or old != new:
            differing.append(str(key))
    return differing


def mismatch_message(checkpoint: object, differing: list[str], restart_hint: str) -> str:
    """One line for the user: where, which fields, and how to start over."""
    return (
        f"{checkpoint} was written with other settings (differs in: {', '.join(differing)}); {restart_hint}"
    )
