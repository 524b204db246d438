"""The whole pipeline (traces -> distillation -> adapter answers) on each tiny transformers family."""

import pytest

from sdrt.adapters.files import load_adapter
from sdrt.config import TraceConfig
from sdrt.distill.config import DistillConfig
from sdrt.distill.data import load_distill_examples
from sdrt.distill.trainer import run_distillation
from sdrt.models.tiny import load_tiny_model
from sdrt.prompts.library import direct_prompt
from sdrt.traces.job import run_trace_job
from sdrt.traces.store import TraceStore


@pytest.mark.parametrize("family", ["qwen2-vl", "idefics3"])
def test_pipeline_on_family(family, tmp_path):
    model = load_tiny_model(family)
    traces = TraceConfig(
        model=f"tiny:{family}",
        data={"source": "scenes", "split": "train", "limit": 4, "seed": 0},
        k=2,
        batch_size=2,
        analysis_tokens=6,
        answer_tokens=3,
        out=tmp_path / "traces",
    )
    run_trace_job(traces, model)
    store = TraceStore(tmp_path / "traces")
    assert store.read().num_rows == 8

    config = DistillConfig(
        model=f"tiny:{family}",
        traces=tmp_path / "traces",
        out=tmp_path / "adapter",
        steps=12,
        batch_size=4,
        lr=2e-2,
        warmup_steps=0,
        adapter={"skip": {"enabled": False}},
    )
    history = run_distillation(config, model).history
    assert len(history) == 12 and all(step.loss == step.loss for step in history)  # finite, not NaN

    # The saved adapter, reloaded, makes the direct pass fit the pseudo-labels better than the
    # bare model does: what training optimised, read back from the files.
    examples = load_distill_examples(tmp_path / "traces")
    images = model.encode_images([ex.record.load_image() for ex in examples])
    prompts_direct = [direct_prompt(ex.record.question) for ex in examples]
    labels = [ex.pseudo_label for ex in examples]
    plain = -model.score(images, prompts_direct, labels).answer_logprobs().sum()
    with load_adapter(tmp_path / "adapter", model).attached(model):
        adapted = -model.score(images, prompts_direct, labels).answer_logprobs().sum()
    assert adapted < plain, (float(plain), float(adapted))
