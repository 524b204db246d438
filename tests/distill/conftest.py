"""A small trace folder made in-process by the tiny LLaVA backend, shared by the distillation tests."""

from pathlib import Path

import pytest

from sdrt.data import load_records
from sdrt.models.tiny import load_tiny_model
from sdrt.prompts.library import PromptLibrary
from sdrt.reasoning.modes import GenerationBudget
from sdrt.traces.generate import generate_traces
from sdrt.traces.store import TraceStore


def make_trace_dir(
    out: Path, model, source: str = "easy-vqa", prompts_yaml: Path | None = None, limit: int = 8
) -> Path:
    """Traces of two scene prompts on ``limit`` training questions, as ``sdrt traces`` writes them."""
    library = PromptLibrary.load(prompts_yaml)
    records = load_records(source, split="train", limit=limit, seed=0)
    prompts = library.select(task_type="scene", k=2)
    store = TraceStore(out)
    store.check_or_write_manifest(
        {
            "model": "tiny:llava",
            "model_config_hash": model.config_hash,
            "data": {"source": source, "split": "train", "limit": limit, "seed": 0, "layout": None},
            "prompt_ids": [p.id for p in prompts],
            "prompt_library_hash": library.content_hash,
            "prompts_yaml": str(prompts_yaml) if prompts_yaml else None,
        }
    )
    generate_traces(
        model,
        records,
        prompts,
        store,
        source=f"{source}:train",
        library_hash=library.content_hash,
        batch_size=4,
        budget=GenerationBudget(analysis_tokens=8, answer_tokens=3),
    )
    return out


@pytest.fixture(scope="session")
def tiny_model():
    return load_tiny_model("llava")


@pytest.fixture(scope="session")
def trace_dir(tmp_path_factory, tiny_model) -> Path:
    return make_trace_dir(tmp_path_factory.mktemp("traces"), tiny_model)


@pytest.fixture(scope="session")
def make_traces(tiny_model):
    """``make_traces(out, source=..., prompts_yaml=...)``: another trace folder of the tiny model."""
    return lambda out, **options: make_trace_dir(out, tiny_model, **options)
