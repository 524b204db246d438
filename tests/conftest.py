"""Small trace folders made in-process by the tiny LLaVA backend (distillation and benchmark tests)."""

from pathlib import Path

import pytest

from sdrt.config import TraceConfig
from sdrt.models.tiny import load_tiny_model
from sdrt.traces.job import run_trace_job


def make_trace_dir(
    out: Path, model, source: str = "easy-vqa", prompts_yaml: Path | None = None, limit: int = 8
) -> Path:
    """Traces of two scene prompts on ``limit`` training questions, written by ``sdrt traces``' job."""
    config = TraceConfig(
        model="tiny:llava",
        data={"source": source, "split": "train", "limit": limit, "seed": 0},
        prompts_yaml=prompts_yaml,
        k=2,
        batch_size=4,
        analysis_tokens=8,
        answer_tokens=3,
        out=out,
    )
    run_trace_job(config, model)
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
