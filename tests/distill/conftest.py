"""A small trace folder made in-process by the tiny LLaVA backend, shared by the distillation tests."""

from pathlib import Path

import pytest

from sdrt.data import load_records
from sdrt.models.tiny import load_tiny_model
from sdrt.prompts.library import PromptLibrary
from sdrt.reasoning.modes import GenerationBudget
from sdrt.traces.generate import generate_traces
from sdrt.traces.store import TraceStore


@pytest.fixture(scope="session")
def tiny_model():
    return load_tiny_model("llava")


@pytest.fixture(scope="session")
def trace_dir(tmp_path_factory, tiny_model) -> Path:
    out = tmp_path_factory.mktemp("traces")
    library = PromptLibrary.load()
    records = load_records("easy-vqa", split="train", limit=8, seed=0)
    prompts = library.select(task_type="scene", k=2)
    store = TraceStore(out)
    store.check_or_write_manifest(
        {
            "model": "tiny:llava",
            "model_config_hash": tiny_model.config_hash,
            "data": {"source": "easy-vqa", "split": "train", "limit": 8, "seed": 0, "layout": None},
            "prompt_ids": [p.id for p in prompts],
            "prompt_library_hash": library.content_hash,
            "prompts_yaml": None,
        }
    )
    generate_traces(
        tiny_model,
        records,
        prompts,
        store,
        source="easy-vqa:train",
        library_hash=library.content_hash,
        batch_size=4,
        budget=GenerationBudget(analysis_tokens=8, answer_tokens=3),
    )
    return out
