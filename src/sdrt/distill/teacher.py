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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sdrt.distill.data import DistillExample
from sdrt.models.base import EncodedImage, Prompt, ScoreOutput, VisionLanguageModel, gather_positions
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
    rows = [(ex, i) for ex in examples for i in range(len(ex.prompt_ids))]
    row_images = [images[b] for b, ex in enumerate(examples) for _ in ex.prompt_ids]
    per_row = score_teacher_rows(model, rows, row_images, library, layers, top_k)
    targets, start = [], 0
    for ex in examples:
        targets.append(stack_rows(per_row[start : start + len(ex.prompt_ids)]))
        start += len(ex.prompt_ids)
    return targets


def score_teacher_rows(
    model: VisionLanguageModel,
    rows: Sequence[tuple[DistillExample, int]],
    images: Sequence[EncodedImage],
    library: PromptLibrary | None,
    layers: Sequence[int],
    top_k: int = 32,
) -> list[TeacherTargets]:
    """One batched forward over (example, prompt index) rows: each row's targets, K = 1, unpadded."""
    prompts = [teacher_prompt(ex, i, library) for ex, i in rows]
    with torch.no_grad():
        out = model.score(images, prompts, [ex.pseudo_label for ex, _ in rows], layers=layers)
    span = aligned_span(out)
    hidden = {layer: gather_positions(out.hidden_states[layer], span) for layer in layers}  # (R, S, d)
    logp = torch.log_softmax(out.answer_logits.float(), dim=-1)
    top_logp, top_ids = logp.topk(min(top_k, logp.shape[-1]), dim=-1)  # (R, A, k)
    targets = []
    for r in range(len(rows)):
        n_span, n_answer = int(span[r].sum()), int(out.answer_token_mask[r].sum())
        targets.append(
            TeacherTargets(
                hidden={layer: h[r : r + 1, :n_span].float().cpu() for layer, h in hidden.items()},
                topk_logprobs=top_logp[r : r + 1, :n_answer].cpu(),
                topk_ids=top_ids[r : r + 1, :n_answer].cpu(),
            )
        )
    return targets


def teacher_prompt(example: DistillExample, i: int, library: PromptLibrary | None) -> Prompt:
    """Teacher ``i``'s step-2 conversation: the question, prompt ``i``'s analysis, the answer request."""
    record = example.record
    return example.prompt(i, library).step2(record.question, example.analyses[i], record.choices)


def stack_rows(rows: Sequence[TeacherTargets]) -> TeacherTargets:
    """An example's K single-row targets as one (K, ...) target.

    The rows share the aligned span's length: the same answer tokens after the same header.
    """
    return TeacherTargets(
        hidden={layer: torch.cat([row.hidden[layer] for row in rows]) for layer in rows[0].hidden},
        topk_logprobs=torch.cat([row.topk_logprobs for row in rows]),
        topk_ids=torch.cat([row.topk_ids for row in rows]),
    )


def fill_teacher_cache(
    model: VisionLanguageModel,
    cache: TeacherCache,
    examples: Sequence[DistillExample],
    library: PromptLibrary | None,
    layers: Sequence[int],
    top_k: int,
    rows_per_batch: int,
    on_batch: Callable[[int, int], None] | None = None,
    batches_per_group: int = 16,
) -> int:
    """Compute the targets of every example ``cache`` lacks; returns how many were computed.

    Rows (example, prompt) are batched by the length of their step-2 conversation, longest first,
    rather than by training batch: an example's K analyses differ in length (a count by
    attribute runs long, a relation short), and a training batch pads all of its B·K rows to the
    longest. Rows are sorted within groups of ``batches_per_group`` batches' worth of examples,
    and a group's examples are all written by its end (each batch's finished ones as one shard),
    so a killed fill loses at most one group. ``on_batch(rows_done, rows_total)`` reports
    progress. Call with the adapter detached.
    """
    missing = list({ex.record.id: ex for ex in examples if ex.record.id not in cache}.values())
    if not missing:
        return 0
    k = len(missing[0].prompt_ids)
    group = max(1, batches_per_group * rows_per_batch // k)  # examples
    done, total = 0, k * len(missing)
    for first in range(0, len(missing), group):
        rows = _longest_first(model, missing[first : first + group], library)
        pending: dict[str, dict[int, TeacherTargets]] = {}  # example id -> prompt index -> its row
        for start in range(0, len(rows), rows_per_batch):
            batch = rows[start : start + rows_per_batch]
            scored = score_teacher_rows(model, batch, _row_images(model, batch), library, layers, top_k)
            finished = _completed_examples(pending, batch, scored)
            if finished:
                cache.put(list(finished), list(finished.values()))
            done += len(batch)
            if on_batch:
                on_batch(done, total)
    return len(missing)


def _longest_first(
    model: VisionLanguageModel, examples: Sequence[DistillExample], library: PromptLibrary | None
) -> list[tuple[DistillExample, int]]:
    """Every (example, prompt index) row, by its rendered step-2 length, longest first.

    Characters stand in for tokens: rendering needs no tokenizer call, and the order is what
    matters. The sort is stable: ties keep the examples' order.
    """
    rows = [(ex, i) for ex in examples for i in range(len(ex.prompt_ids))]
    lengths = [len(model.render_prompt(teacher_prompt(ex, i, library))) for ex, i in rows]
    return [rows[j] for j in sorted(range(len(rows)), key=lambda j: -lengths[j])]


def _row_images(model: VisionLanguageModel, rows: Sequence[tuple[DistillExample, int]]) -> list[EncodedImage]:
    """Each row's image, every example's encoded once however many of its rows the batch holds."""
    distinct = list({ex.record.id: ex for ex, _ in rows}.values())
    encoded = model.encode_images([ex.record.load_image() for ex in distinct])
    by_id = {ex.record.id: image for ex, image in zip(distinct, encoded, strict=True)}
    return [by_id[ex.record.id] for ex, _ in rows]


def _completed_examples(
    pending: dict[str, dict[int, TeacherTargets]],
    rows: Sequence[tuple[DistillExample, int]],
    scored: Sequence[TeacherTargets],
) -> dict[str, TeacherTargets]:
    """Add ``scored`` rows to ``pending``; take out and stack the examples whose K rows are all in."""
    finished = {}
    for (ex, i), target in zip(rows, scored, strict=True):
        pending.setdefault(ex.record.id, {})[i] = target
        if len(pending[ex.record.id]) == len(ex.prompt_ids):
            done = pending.pop(ex.record.id)
            finished[ex.record.id] = stack_rows([done[k] for k in range(len(ex.prompt_ids))])
    return finished


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
        self._loaded: dict[Path, dict[str, torch.Tensor]] = {}
        self.refresh()

    def refresh(self) -> None:
        """Index the shards on disk, those other processes wrote included."""
        for shard in sorted(self.root.glob("teacher-*.safetensors")):
            meta = _metadata(shard)
            if meta.get("fingerprint") != self.fingerprint:
                continue
            for i, example_id in enumerate(json.loads(meta["example_ids"])):
                self._index.setdefault(example_id, (shard, i))

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
