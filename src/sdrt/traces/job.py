"""``sdrt traces``: load what the config names and run the resumable generation loop."""

from __future__ import annotations

from sdrt.config import TraceConfig
from sdrt.data import load_records
from sdrt.data.records import VQARecord
from sdrt.models import VisionLanguageModel, load_model
from sdrt.progress import progress_bar
from sdrt.prompts.library import DualQueryPrompt, PromptLibrary
from sdrt.reasoning.modes import GenerationBudget, batch_size_for, longest_record
from sdrt.traces.generate import DistributedRank, TraceRunStats, generate_traces
from sdrt.traces.store import TraceStore


def select_prompts(
    library: PromptLibrary, ids: list[str] | None, k: int, task_type: str
) -> list[DualQueryPrompt]:
    """The prompts named, or the first ``k`` the library marks as suited to the task type."""
    if ids:
        return [library.get(i) for i in ids][:k]
    return library.select(task_type=task_type, k=k)


def read_data(config: TraceConfig) -> list[VQARecord]:
    data = config.data
    return load_records(
        data.source,
        split=data.split,
        limit=data.limit,
        seed=data.seed,
        skip_bad=config.skip_bad,
        **({"layout": data.layout} if data.layout else {}),
    )


def run_trace_job(config: TraceConfig, model: VisionLanguageModel | None = None) -> TraceRunStats:
    library = PromptLibrary.load(config.prompts_yaml)
    records = read_data(config)
    prompts = select_prompts(library, config.prompts, config.k, records[0].task_type if records else "scene")
    rank = DistributedRank.from_env()
    store = TraceStore(config.out, rank=rank.rank)
    model = model or load_model(config.model, config.load_options)
    store.check_or_write_manifest(
        {
            "model": config.model,
            "model_config_hash": model.config_hash,
            "data": config.data.model_dump(mode="json"),
            "prompt_ids": [p.id for p in prompts],
            "prompt_library_hash": library.content_hash,
            "prompts_yaml": str(config.prompts_yaml) if config.prompts_yaml else None,
            "strategy": config.strategy,
            "analysis_tokens": config.analysis_tokens,
            "answer_tokens": config.answer_tokens,
        }
    )
    budget = GenerationBudget(config.analysis_tokens, config.answer_tokens)
    batch_size = config.batch_size or (
        batch_size_for(model, longest_record(records), prompts, budget) if records else 1
    )
    with progress_bar(rank.share(len(records)), f"traces (rank {rank.rank})", unit="ex") as advance:
        return generate_traces(
            model,
            records,
            prompts,
            store,
            source=config.data.label,
            library_hash=library.content_hash,
            strategy=config.strategy,
            batch_size=batch_size,
            shard_examples=config.shard_examples,
            budget=budget,
            rank=rank,
            skip_bad=config.skip_bad,
            on_progress=advance,
        )
