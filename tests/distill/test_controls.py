"""The LoRA-SFT control: PEFT LoRA fine-tuned on the pseudo-labels, saved and scored like an adapter."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from sdrt.adapters.config import AdapterError
from sdrt.adapters.files import load_adapter
from sdrt.adapters.lora import LoRAAdapter
from sdrt.adapters.model import lora_parameter_count
from sdrt.distill.config import DistillConfig
from sdrt.distill.trainer import run_distillation
from sdrt.models.tiny import load_tiny_model


@pytest.fixture()
def own_model():
    """A model of its own: LoRA layers are injected into the model they train in."""
    return load_tiny_model("llava")


def logits(model, prompt: str = "What color is the shape?", answer: str = "red") -> torch.Tensor:
    image = Image.new("RGB", (32, 32), "red")
    return model.score([image], [prompt], [answer]).answer_logits.detach()


def test_fresh_lora_is_the_identity_and_detaching_restores_the_model(own_model):
    base = logits(own_model)
    expected = lora_parameter_count(own_model, rank=8)  # counted before injection
    adapter = LoRAAdapter.for_model(own_model, rank=8)
    assert adapter.trainable_parameters() == expected
    with adapter.attached(own_model):
        assert torch.equal(logits(own_model), base)
        with torch.no_grad():
            for p in adapter.parameters():
                p.add_(0.05)
        assert not torch.allclose(logits(own_model), base)
    assert torch.equal(logits(own_model), base)


def test_lora_sft_learns_the_pseudo_labels_and_reloads_exactly(own_model, trace_dir, tmp_path):
    cfg = DistillConfig(
        model="tiny:llava",
        method="lora-sft",
        traces=trace_dir,
        out=tmp_path / "lora",
        steps=40,
        batch_size=8,
        warmup_steps=0,
        lr=1e-2,
        checkpoint_every=25,
    )
    result = run_distillation(cfg, own_model)
    ce = [entry.terms["ce"] for entry in result.history]
    assert set(result.history[0].terms) == {"ce"}  # no teacher terms for the control
    assert sum(ce[-3:]) / 3 < 0.9 * ce[0], ce  # frozen LoRA weights would keep it flat
    fresh = load_tiny_model("llava")
    untouched = logits(fresh)
    loaded = load_adapter(result.adapter_dir, fresh)
    assert isinstance(loaded, LoRAAdapter)
    assert loaded.trainable_parameters() == result.trainable_parameters
    with loaded.attached(fresh):
        reloaded = logits(fresh)
    for layer in own_model.decoder_layers.modules():  # the trained layers, switched on by hand
        if hasattr(layer, "enable_adapters"):
            layer.enable_adapters(True)
    torch.testing.assert_close(reloaded, logits(own_model), rtol=0, atol=1e-6)
    assert not torch.allclose(reloaded, untouched)


def test_lora_on_a_bfloat16_model_keeps_float32_weights_that_train():
    from sdrt.models.registry import LoadOptions, load_model

    model = load_model("tiny:llava", LoadOptions(dtype="bfloat16"))
    adapter = LoRAAdapter.for_model(model, rank=4)
    assert {p.dtype for p in adapter.parameters()} == {torch.float32}
    with adapter.attached(model):
        base = logits(model)
        with torch.no_grad():
            for p in adapter.parameters():
                p.add_(0.05)
        edited = model.score([Image.new("RGB", (32, 32), "red")], ["What color?"], ["red"])
        edited.answer_logits.float().sum().backward()
    assert edited.answer_logits.dtype == torch.bfloat16  # outputs keep the model's dtype
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in adapter.parameters())
    assert base.dtype == torch.bfloat16


def test_lora_adapter_refuses_another_model(own_model, tmp_path):
    from sdrt.adapters.files import save_adapter

    adapter = LoRAAdapter.for_model(own_model, rank=2)
    save_adapter(adapter, tmp_path / "a")
    other = load_tiny_model("qwen2-vl")
    with pytest.raises(AdapterError, match="trained on"):
        load_adapter(tmp_path / "a", other)


def test_self_training_control_learns_the_models_own_direct_answers(own_model, trace_dir, tmp_path):
    from sdrt.distill.data import load_distill_examples
    from sdrt.reasoning.modes import answer_direct

    cfg = DistillConfig(
        model="tiny:llava",
        labels="direct",
        loss={"hidden": 0.0, "ce": 1.0},
        adapter={"skip": {"enabled": False}},
        traces=trace_dir,
        out=tmp_path / "self",
        steps=3,
        batch_size=4,
        checkpoint_every=3,
    )
    result = run_distillation(cfg, own_model)
    saved = json.loads((tmp_path / "self" / "direct_labels.json").read_text())
    records = [ex.record for ex in load_distill_examples(trace_dir)]
    images = own_model.encode_images([r.load_image() for r in records])
    answers = answer_direct(fresh_copy(), records, images)  # the untrained model's own answers
    expected = {r.id: a.answer.strip() for r, a in zip(records, answers, strict=True)}
    assert saved == expected
    assert set(result.history[0].terms) == {"ce"}


def fresh_copy():
    return load_tiny_model("llava")


def test_controls_refuse_teacher_losses():
    with pytest.raises(ValueError, match="labels=direct"):
        DistillConfig(labels="direct")  # the default loss has a hidden-state term
    with pytest.raises(ValueError, match="labels=reference trains on the records' reference"):
        DistillConfig(labels="reference", loss={"hidden": 0.0, "ce": 1.0, "kl": 0.5})
    with pytest.raises(ValueError, match="lora-sft"):
        DistillConfig(method="lora-sft", loss={"hidden": 1.0, "ce": 0.0})


def test_lora_sft_has_no_pause_slots_and_reads_its_own_layout():
    with pytest.raises(ValueError, match="pause_tokens are the SDRT adapter's"):
        DistillConfig(method="lora-sft", loss={"hidden": 0.0, "ce": 1.0}, adapter={"pause_tokens": 4})
    with pytest.raises(ValueError, match="reads lora.question_first"):
        DistillConfig(method="lora-sft", loss={"hidden": 0.0, "ce": 1.0}, adapter={"question_first": True})
    assert DistillConfig(method="lora-sft", loss={"hidden": 0.0, "ce": 1.0}, lora={"question_first": True})


def test_retained_questions_train_on_the_models_own_answers_and_the_rest_on_the_ensemble(
    own_model, trace_dir, make_traces, tmp_path, retaining_config
):
    from sdrt.distill.data import load_distill_examples

    retain = make_traces(tmp_path / "retain", source="scenes:single-hop", limit=4)
    cfg = retaining_config(trace_dir, retain, tmp_path / "sdrt")
    result = run_distillation(cfg, own_model)
    relabelled = json.loads((tmp_path / "sdrt" / "direct_labels.json").read_text())
    retained_ids = {ex.record.id for ex in load_distill_examples(retain)}
    assert set(relabelled) == retained_ids  # the ensemble's examples keep their pseudo-labels
    assert retained_ids.isdisjoint(ex.record.id for ex in load_distill_examples(trace_dir))
    assert {"hidden", "ce"} <= set(result.history[0].terms)  # still SDRT's objective

    # retained examples are teacher-forced on their direct answers: another retained folder
    # (here the same questions traced again, one more of them) never reads this cache
    from sdrt.distill.trainer import DistillTrainer
    from sdrt.prompts.library import PromptLibrary

    examples = load_distill_examples(trace_dir, library=PromptLibrary.builtin())
    other = make_traces(tmp_path / "retain-2", source="scenes:single-hop", limit=5)
    fingerprints = {
        DistillTrainer(cfg.model_copy(update={"retain": [folder]}), own_model, examples)._cache_fingerprint()
        for folder in (retain, other)
    }
    assert len(fingerprints) == 2


def test_retain_share_gives_every_batch_its_share_of_retained_rows():
    from sdrt.distill.trainer import global_batch_indices

    n_examples, n_retained = 30, 6  # the last six are retained
    mixed = DistillConfig(retain=["runs/retain"], retain_share=0.25, batch_size=8)
    batches = [global_batch_indices(step, 0, mixed, n_examples, n_retained) for step in range(3)]
    retained = [[i for i in batch if i >= n_examples - n_retained] for batch in batches]
    assert [len(rows) for rows in retained] == [2, 2, 2]  # not the 1.6 of proportional draws
    assert sorted(i for rows in retained for i in rows) == list(range(24, 30))  # one epoch of them
    distilled = [i for batch in batches for i in batch if i < 24]
    assert len(distilled) == len(set(distilled)) == 18
    assert batches == [global_batch_indices(step, 0, mixed, n_examples, n_retained) for step in range(3)]

    proportional = mixed.model_copy(update={"retain_share": None})  # the draws as without retained rows
    assert all(
        global_batch_indices(step, 0, proportional, n_examples, n_retained)
        == global_batch_indices(step, 0, proportional, n_examples)
        for step in range(3)
    )


def test_retain_share_needs_retained_folders_and_a_batch_to_split():
    with pytest.raises(ValueError, match="retain"):
        DistillConfig(retain_share=0.3)
    with pytest.raises(ValueError, match="batch_size"):
        DistillConfig(retain=["runs/retain"], retain_share=0.3, batch_size=1)


def test_the_trainer_draws_retain_share_of_each_batch_from_the_retained_questions(
    own_model, trace_dir, make_traces, tmp_path, monkeypatch, retaining_config
):
    from sdrt.distill.data import load_distill_examples
    from sdrt.distill.trainer import DistillTrainer

    retain = make_traces(tmp_path / "retain", source="scenes:single-hop", limit=3)
    retained_ids = {ex.record.id for ex in load_distill_examples(retain)}
    seen: list[list[str]] = []
    train_on = DistillTrainer.micro_step_loss

    def recording(self, batch):
        seen.append([ex.record.id for ex in batch])
        return train_on(self, batch)

    monkeypatch.setattr(DistillTrainer, "micro_step_loss", recording)
    cfg = retaining_config(
        trace_dir, retain, tmp_path / "mixed", retain_share=0.5, steps=3, loss={"hidden": 0.0, "ce": 1.0}
    )
    run_distillation(cfg, own_model)
    assert [sum(i in retained_ids for i in batch) for batch in seen] == [2, 2, 2]  # of 3 against 8


def test_reference_labels_train_the_distilled_questions_on_their_references_and_retain_the_rest(
    own_model, trace_dir, make_traces, tmp_path, retaining_config
):
    from collections import Counter

    from sdrt.distill.data import load_distill_examples
    from sdrt.distill.trainer import labelled_examples

    retain = make_traces(tmp_path / "retain", source="scenes:single-hop", limit=4)
    cfg = retaining_config(
        trace_dir, retain, tmp_path / "reference", labels="reference", loss={"hidden": 0.0, "ce": 1.0}
    )
    examples, retained = labelled_examples(cfg, own_model)
    voted = {ex.record.id: ex.pseudo_label for ex in load_distill_examples(trace_dir)}
    references = {ex.record.id: Counter(ex.record.answers).most_common(1)[0][0] for ex in examples}
    assert {ex.record.id: ex.pseudo_label for ex in examples} == references
    assert references != voted  # the tiny model's votes are not the references: the swap is seen
    direct = json.loads((tmp_path / "reference" / "direct_labels.json").read_text())
    assert {ex.record.id: ex.pseudo_label for ex in retained} == direct  # the guards as before
    assert set(direct) == {ex.record.id for ex in load_distill_examples(retain)}

    result = run_distillation(cfg, own_model)
    assert set(result.history[0].terms) == {"ce"}  # no teacher forwards for right labels either
