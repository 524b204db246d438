"""The trace generation loop: K dual-query prompts per example, ensembled, written as shards.

Work is split across processes by example index (rank r takes indices ≡ r mod world size),
so ``torchrun``/``accelerate launch`` need no communication: each rank writes its own
shards and readers merge them. Within a rank, examples go through in batches; every
``shard_examples`` finished examples become one atomic shard, so a kill loses at most the
examples of the unfinished shard and a rerun skips whatever is already on disk.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sdrt.data.records import DataError, VQARecord
from sdrt.models.base import VisionLanguageModel
from sdrt.prompts.library import DualQueryPrompt
from sdrt.reasoning.modes import Answer, GenerationBudget, answer_dual_query, length_batches
from sdrt.traces.store import TraceStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedRank:
    rank: int = 0
    world_size: int = 1

    @staticmethod
    def from_env() -> DistributedRank:
        """torchrun and accelerate launch both set RANK and WORLD_SIZE."""
        return DistributedRank(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))

    def owns(self, index: int) -> bool:
        """Example ``index`` is this rank's: ranks take every world-size-th example."""
        return index % self.world_size == self.rank

    def share(self, total: int) -> int:
        """How many of ``total`` examples are this rank's."""
        return sum(1 for i in range(total) if self.owns(i))


@dataclass
class TraceRunStats:
    examples_done: int = 0
    examples_skipped_bad: int = 0
    examples_already_done: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0


ProgressCallback = Callable[[int], None]


def generate_traces(
    model: VisionLanguageModel,
    records: Sequence[VQARecord],
    prompts: Sequence[DualQueryPrompt],
    store: TraceStore,
    *,
    source: str,
    library_hash: str,
    strategy: str = "majority",
    batch_size: int = 8,
    shard_examples: int = 32,
    budget: GenerationBudget = GenerationBudget(),
    rank: DistributedRank = DistributedRank(),
    skip_bad: bool = False,
    on_progress: ProgressCallback | None = None,
) -> TraceRunStats:
    stats = TraceRunStats()
    done = store.finished_example_ids()
    todo = [(i, r) for i, r in enumerate(records) if rank.owns(i) and r.id not in done]
    stats.examples_already_done = rank.share(len(records)) - len(todo)
    if on_progress and stats.examples_already_done:
        on_progress(stats.examples_already_done)
    context = {
        "source": source,
        "model_id": model.name,
        "model_config_hash": model.config_hash,
        "prompt_library_hash": library_hash,
    }
    start = time.perf_counter()
    pending: list[dict[str, Any]] = []
    pending_examples = 0
    for rows in length_batches([record for _, record in todo], batch_size):
        batch = [todo[row] for row in rows]
        loaded = _load_batch(batch, skip_bad)
        stats.examples_skipped_bad += len(batch) - len(loaded)
        if loaded:
            indices, recs, images = zip(*loaded, strict=True)
            encoded = model.encode_images(list(images))
            answers = answer_dual_query(model, recs, encoded, prompts, budget, strategy)
            for index, record, answer in zip(indices, recs, answers, strict=True):
                pending.extend(trace_rows(index, record, answer, context))
                stats.generated_tokens += answer.generated_tokens
            pending_examples += len(recs)
            stats.examples_done += len(recs)
        if on_progress:
            on_progress(len(batch))
        if pending_examples >= shard_examples:
            store.write_shard(pending)
            pending, pending_examples = [], 0
    if pending:
        store.write_shard(pending)
    stats.seconds = time.perf_counter() - start
    return stats


def _load_batch(batch: Sequence[tuple[int, VQARecord]], skip_bad: bool) -> list:
    loaded = []
    for index, record in batch:
        try:
            loaded.append((index, record, record.load_image()))
        except DataError as exc:
            if not skip_bad:
                raise
            log.warning("skipped %s", exc)
    return loaded


def trace_rows(
    index: int,
    record: VQARecord,
    answer: Answer,
    context: dict[str, Any],
) -> list[dict[str, Any]]:
    """One row per prompt; ``answer`` must come from dual-query answering (it has an ensemble)."""
    weights = answer.ensemble.prompt_weights if answer.ensemble else {}
    agreement = answer.ensemble.agreement if answer.ensemble else 1.0
    return [
        {
            "example_id": record.id,
            "example_index": index,
            "image_path": record.image_path,
            "question": record.question,
            "task_type": record.task_type,
            "references": list(record.answers),
            "prompt_id": trace.prompt_id,
            "prompt_rank": rank,
            "analysis": trace.analysis,
            "raw_answer": trace.raw_answer,
            "answer": trace.answer,
            "answer_logprob": trace.answer_logprob,
            "answer_mean_logprob": trace.answer_mean_logprob,
            "analysis_tokens": trace.analysis_tokens,
            "answer_tokens": trace.answer_tokens,
            "ensemble_answer": answer.answer,
            "ensemble_agreement": agreement,
            "prompt_weight": float(weights.get(trace.prompt_id, 0.0)),
            **context,
        }
        for rank, trace in enumerate(answer.traces)
    ]
