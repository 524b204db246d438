"""Teacher targets: the frozen model reading prompt k's analysis, teacher-forced on the pseudo-label.

For each example and each of its K prompts, the teacher reads the step-2 conversation (question,
step-1 analysis, answer request) and is teacher-forced on the ensemble answer. What the student
must match is taken on the *aligned span*: the last prompt position (the assistant header, the
same tokens for teacher and student) and every answer token. Both read the same answer tokens,
so the spans line up position by position even though the prompts differ in length.

Targets are computed online without gradients, or once and cached in safetensors shards.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sdrt.distill.data import DistillExample
from sdrt.models.base import EncodedImage, ScoreOutput, VisionLanguageModel, gather_positions
from sdrt.prompts.library import PromptLibrary


@dataclass
class TeacherTargets:
    """Targets for one example (unpadded): K teachers, S aligned positions, A answer tokens."""

    hidden: dict[int, torch.Tensor]  # layer -> (K, S, d)
    topk_logprobs: torch.Tensor  # (K, A, k)
    topk_ids: torch.Tensor  # (K, A, k)


def aligned_span(output: ScoreOutput) -> torch.Tensor:
    """(B, L) mask of the last prompt position and the answer tokens."""
    return output.layout.last_prompt_positions(1) | output.layout.answer_mask


def compute_teacher_targets(
    model: VisionLanguageModel,
    examples: Sequence[DistillExample],
    images: Sequence[EncodedImage],
    library: PromptLibrary | None,
    layers: Sequence[int],
    top_k: int = 32,
) -> list[TeacherTargets]:
    """One batched teacher forward over B·K rows. Call with the adapter detached.

    Each example's prompts come from its own library; ``library`` serves examples without one.
    """
    rows = [(b, i) for b, ex in enumerate(examples) for i in range(len(ex.prompt_ids))]
    prompts = [
        examples[b]
        .prompt(i, library)
        .step2(examples[b].record.question, examples[b].analyses[i], examples[b].record.choices)
        for b, i in rows
    ]
    with torch.no_grad():
        out = model.score(
            [images[b] for b, _ in rows], prompts, [examples[b].pseudo_label for b, _ in rows], layers=layers
        )
    span = aligned_span(out)
    hidden = {layer: gather_positions(out.hidden_states[layer], span) for layer in layers}  # (BK, S, d)
    logp = torch.log_softmax(out.answer_logits.float(), dim=-1)
    top_logp, top_ids = logp.topk(min(top_k, logp.shape[-1]), dim=-1)  # (BK, A, k)

    targets, start = [], 0
    for ex in examples:
        k = len(ex.prompt_ids)
        n_span = int(span[start].sum())
        n_answer = int(out.answer_token_mask[start].sum())
        sl = slice(start, start + k)
        targets.append(
            TeacherTargets(
                hidden={layer: h[sl, :n_span].float().cpu() for layer, h in hidden.items()},
                topk_logprobs=top_logp[sl, :n_answer].cpu(),
                topk_ids=top_ids[sl, :n_answer].cpu(),
            )
        )
        start += k
    return targets


class TeacherCache:
    """Teacher targets on disk, one safetensors shard per computed batch, keyed by example id.

    Shards are written to a temporary name and renamed, so a killed run keeps every finished
    shard; the index is rebuilt from the shards' metadata on open.
    """

    def __init__(self, root: str | Path, fingerprint: str) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.fingerprint = fingerprint  # model hash + layers + traces: a stale cache is never read
        self._index: dict[str, tuple[Path, int]] = {}
        for shard in sorted(self.root.glob("teacher-*.safetensors")):
            meta = _metadata(shard)
            if meta.get("fingerprint") != fingerprint:
                continue
            for i, example_id in enumerate(json.loads(meta["example_ids"])):
                self._index[example_id] = (shard, i)
        self._loaded: dict[Path, dict[str, torch.Tensor]] = {}

    def __contains__(self, example_id: str) -> bool:
        return example_id in self._index

    def get(self, example_id: str) -> TeacherTargets:
        shard, i = self._index[example_id]
        if shard not in self._loaded:
            self._loaded[shard] = load_file(shard)
        tensors = self._loaded[shard]
        layers = sorted(int(key.split(".")[2]) for key in tensors if key.startswith(f"{i}.hidden."))
        return TeacherTargets(
            hidden={layer: tensors[f"{i}.hidden.{layer}"] for layer in layers},
            topk_logprobs=tensors[f"{i}.topk_logprobs"],
            topk_ids=tensors[f"{i}.topk_ids"],
        )

    def put(self, example_ids: Sequence[str], targets: Sequence[TeacherTargets]) -> None:
        tensors: dict[str, torch.Tensor] = {}
        for i, target in enumerate(targets):
            for layer, h in target.hidden.items():
                tensors[f"{i}.hidden.{layer}"] = h.contiguous()
            tensors[f"{i}.topk_logprobs"] = target.topk_logprobs.contiguous()
            tensors[f"{i}.topk_ids"] = target.topk_ids.contiguous()
        final = self.root / f"teacher-{uuid.uuid4().hex[:12]}.safetensors"
        tmp = final.with_name(f".{final.name}.tmp")
        meta = {"fingerprint": self.fingerprint, "example_ids": json.dumps(list(example_ids))}
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(final)
        for i, example_id in enumerate(example_ids):
            self._index[example_id] = (final, i)


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata() or {}
