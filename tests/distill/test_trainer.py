import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from sdrt.adapters.config import default_layers
from sdrt.adapters.files import load_adapter
from sdrt.distill.config import DistillConfig
from sdrt.distill.data import load_distill_examples
from sdrt.distill.trainer import DistillError, run_distillation, snapshot_folder
from sdrt.prompts.library import PromptLibrary, StudentLayout, direct_prompt
from sdrt.training.core import fingerprint_mismatch


def config(trace_dir: Path, out: Path, **overrides) -> DistillConfig:
    values = dict(
        model="tiny:llava",
        traces=trace_dir,
        out=out,
        steps=6,
        batch_size=2,
        checkpoint_every=3,
        warmup_steps=2,
        lr=5e-3,
        seed=0,
    )
    values.update(overrides)
    return DistillConfig(**values)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter.safetensors"))


@pytest.fixture
def scored_prompts(tiny_model, monkeypatch) -> list:
    """Every conversation ``tiny_model.score`` is given, in order, as the test runs."""
    scored: list = []
    real_score = tiny_model.score

    def recording_score(images, prompts, *args, **kwargs):
        scored.extend(prompts)
        return real_score(images, prompts, *args, **kwargs)

    monkeypatch.setattr(tiny_model, "score", recording_score)
    return scored


def assert_same_weights(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0 if atol == 0 else 1e-4, msg=key)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_distillation_drives_the_hidden_state_loss_down(tiny_model, trace_dir, tmp_path, dtype):
    cfg = config(
        trace_dir,
        tmp_path,
        steps=30,
        lr=2e-2,
        loss={"hidden": 1.0, "ce": 0.0},
        warmup_steps=0,
        batch_size=8,
        adapter={"skip": {"enabled": False}},
        dtype=dtype,
    )
    # In bfloat16 the run loads its own model in that precision; the adapter stays float32.
    history = run_distillation(cfg, tiny_model if dtype == "float32" else None).history
    first = history[0].terms["hidden"]
    last = sum(e.terms["hidden"] for e in history[-3:]) / 3
    assert last < 0.7 * first, (first, last)
    assert {t.dtype for t in weights(tmp_path).values()} == {torch.float32}


@pytest.mark.parametrize("gate_weight", [0.5, 0.0])
def test_the_gate_term_enters_the_loss_with_its_weight(tiny_model, trace_dir, tmp_path, gate_weight):
    loss = {"hidden": 1.0, "ce": 1.0, "gate": gate_weight}
    cfg = config(trace_dir, tmp_path, steps=2, loss=loss, adapter={"gate": {"enabled": True}})
    history = run_distillation(cfg, tiny_model).history
    for entry in history:
        assert ("gate" in entry.terms) == (gate_weight > 0)  # a term with weight 0 is not computed
        expected = sum(loss[name] * value for name, value in entry.terms.items())
        assert entry.loss == pytest.approx(expected, rel=1e-5)
    assert load_adapter(tmp_path, tiny_model).config.gate.num_heads == 2  # one head per prompt


def test_resumed_run_equals_an_uninterrupted_one(tiny_model, trace_dir, tmp_path):
    # Bit for bit, so without the frozen-prefix cache: a resumed run starts it cold, and states
    # it computes in full differ from cached ones in the last bits (the cache's own test).
    straight = run_distillation(config(trace_dir, tmp_path / "straight", cache_prefix=False), tiny_model)

    class Killed(Exception):
        pass

    def kill_after_step_4(entry):
        if entry.step == 4:
            raise Killed

    interrupted = config(trace_dir, tmp_path / "resumed", cache_prefix=False)
    with pytest.raises(Killed):
        run_distillation(interrupted, tiny_model, on_step=kill_after_step_4)
    assert not (tmp_path / "resumed" / "adapter.safetensors").exists()
    resumed = run_distillation(interrupted, tiny_model)
    assert resumed.resumed_from == 3
    assert [e.step for e in resumed.history] == list(range(1, 7))
    assert_same_weights(weights(tmp_path / "straight"), weights(tmp_path / "resumed"))
    assert resumed.history[-1].loss == pytest.approx(straight.history[-1].loss, abs=1e-9)


def test_snapshots_keep_the_adapter_of_each_step_they_name(tiny_model, trace_dir, tmp_path):
    # A run killed in step 4 leaves its step-3 checkpoint: the snapshot of that step must hold
    # the same weights, and the last snapshot the final adapter's.
    class Killed(Exception):
        pass

    def kill_in_step_4(entry):
        if entry.step == 4:
            raise Killed

    cfg = config(trace_dir, tmp_path, snapshot_every=3, cache_prefix=False)
    with pytest.raises(Killed):
        run_distillation(cfg, tiny_model, on_step=kill_in_step_4)
    checkpoint = load_file(str(tmp_path / "checkpoints" / "step-0000003" / "trainable.safetensors"))
    assert_same_weights(weights(snapshot_folder(tmp_path, 3)), checkpoint)
    run_distillation(cfg, tiny_model)  # resumes; snapshot_every is not part of the fingerprint
    assert sorted(p.name for p in (tmp_path / "snapshots").iterdir()) == ["step-0000003", "step-0000006"]
    assert_same_weights(weights(snapshot_folder(tmp_path, 6)), weights(tmp_path))
    load_adapter(snapshot_folder(tmp_path, 3), tiny_model)  # a snapshot is a whole adapter folder


def test_cached_teacher_targets_train_like_online_ones(tiny_model, trace_dir, tmp_path):
    online = run_distillation(config(trace_dir, tmp_path / "online", steps=3, loss={"kl": 1.0}), tiny_model)
    cached = run_distillation(
        config(trace_dir, tmp_path / "cached", steps=3, loss={"kl": 1.0}, cache_teacher=True), tiny_model
    )
    assert list((tmp_path / "cached" / "teacher-cache").glob("teacher-*.safetensors"))
    for a, b in zip(online.history, cached.history, strict=True):
        assert a.terms == pytest.approx(b.terms, rel=1e-5, abs=1e-7)


def test_saved_adapter_loads_onto_the_model(tiny_model, trace_dir, tmp_path):
    run_distillation(config(trace_dir, tmp_path, steps=2), tiny_model)
    adapter = load_adapter(tmp_path, tiny_model)
    assert adapter.config.layers == default_layers(tiny_model.num_layers)


def test_nan_loss_stops_with_a_clear_message(tiny_model, trace_dir, tmp_path):
    with pytest.raises(DistillError, match="lower the learning rate"):
        run_distillation(
            config(trace_dir, tmp_path, lr=float("1e30"), steps=4, warmup_steps=0, max_grad_norm=1e30),
            tiny_model,
        )


def test_traces_of_another_model_are_refused(trace_dir, tmp_path):
    from sdrt.models.tiny import load_tiny_model

    with pytest.raises(DistillError, match="another model"):
        run_distillation(config(trace_dir, tmp_path, model="tiny:qwen2-vl"), load_tiny_model("qwen2-vl"))


WORKER = Path(__file__).with_name("ddp_worker.py")


def test_two_processes_match_one_process(trace_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for procs, out in ((2, tmp_path / "ddp"), (1, tmp_path / "single")):
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node",
                str(procs),
                str(WORKER),
                str(trace_dir),
                str(out),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        assert run.returncode == 0, f"{procs} process(es) failed:\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}"
    rank0, rank1 = (
        load_file(str(tmp_path / "ddp" / "rank0.safetensors")),
        load_file(str(tmp_path / "ddp" / "rank1.safetensors")),
    )
    assert_same_weights(rank0, rank1)  # identical on both ranks
    single = load_file(str(tmp_path / "single" / "rank0.safetensors"))
    assert_same_weights(rank0, single, atol=1e-5)  # the same global batch gives the same update
    untrained = load_file(str(tmp_path / "single" / "initial.safetensors"))
    assert any(not torch.equal(single[k], untrained[k]) for k in single)


# --- resuming into an existing --out: only with the settings that wrote the checkpoint ------------


def test_fingerprint_mismatch_names_nested_fields():
    saved = {"lr": 1e-3, "loss": {"hidden": 1.0, "ce": 1.0}, "layers": None}
    current = {"lr": 1e-3, "loss": {"hidden": 1.0, "ce": 0.5}, "layers": [0, 1], "rank": 4}
    assert fingerprint_mismatch(saved, current) == ["layers", "loss.ce", "rank"]
    assert fingerprint_mismatch(saved, dict(saved)) == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"lr": 1e-2}, "lr"),
        ({"adapter": {"layers": [0, 1], "skip": {"enabled": False}}}, "adapter.layers"),
        ({"loss": {"ce": 0.5}}, "loss.ce"),
    ],
)
def test_resuming_with_other_settings_is_refused(tiny_model, trace_dir, tmp_path, change, field):
    settings = {"steps": 3, "adapter": {"skip": {"enabled": False}}}
    run_distillation(config(trace_dir, tmp_path, **settings), tiny_model)
    with pytest.raises(DistillError, match="other settings") as refused:
        run_distillation(config(trace_dir, tmp_path, **(settings | change)), tiny_model)
    message = str(refused.value)
    assert f"(differs in: {field})" in message, message
    assert "--restart" in message


def test_restart_trains_like_a_fresh_run(tiny_model, trace_dir, tmp_path):
    run_distillation(config(trace_dir, tmp_path / "old", steps=3), tiny_model)
    restarted = run_distillation(config(trace_dir, tmp_path / "old", lr=1e-2), tiny_model, restart=True)
    fresh = run_distillation(config(trace_dir, tmp_path / "fresh", lr=1e-2), tiny_model)
    assert restarted.resumed_from == 0
    assert [e.lr for e in restarted.history] == [e.lr for e in fresh.history]
    assert_same_weights(weights(tmp_path / "old"), weights(tmp_path / "fresh"))


def test_the_command_refuses_in_one_line(trace_dir, tmp_path):
    def distill(*extra: str) -> subprocess.CompletedProcess:
        args = ["--model", "tiny:llava", "--traces", str(trace_dir), "--out", str(tmp_path / "a")]
        command = [sys.executable, "-m", "sdrt.cli", "distill", *args, *extra]
        return subprocess.run(command, capture_output=True, text=True, timeout=300)

    settings = tmp_path / "lr.yaml"
    settings.write_text("lr: 0.01\nbatch_size: 2\nwarmup_steps: 0\n")
    first = distill("--steps", "2", "--config", str(settings))
    assert first.returncode == 0, first.stderr
    settings.write_text("lr: 0.02\nbatch_size: 2\nwarmup_steps: 0\n")
    refused = distill("--steps", "2", "--config", str(settings))
    assert refused.returncode == 2, refused.stderr
    assert "Traceback" not in refused.stderr
    error = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "(differs in: lr)" in error[0] and "--restart" in error[0], refused.stderr
    restarted = distill("--steps", "2", "--config", str(settings), "--restart")
    assert restarted.returncode == 0, restarted.stderr


# --- several trace folders --------------------------------------------------------------------------


def test_each_trace_folder_keeps_its_own_prompt_library(
    tiny_model, trace_dir, make_traces, tmp_path, scored_prompts
):
    # A second folder whose library gives the same prompt ids other step-2 templates.
    builtin = PromptLibrary.load()
    entries = [
        {
            "id": p.id,
            "description": p.description,
            "task_types": list(p.task_types),
            "step1": p.step1_template,
            "step2": "Reply from the second library: {question}",
        }
        for p in builtin.select(task_type="scene", k=2)
    ]
    override = tmp_path / "prompts.yaml"
    override.write_text(yaml.safe_dump({"prompts": entries}))
    other = make_traces(tmp_path / "other", source="scenes:multi-hop", prompts_yaml=override)
    libraries = {trace_dir: builtin, other: PromptLibrary.load(override)}

    scored = scored_prompts  # every conversation scored from here on: the student's and the teachers'
    scored.clear()
    cfg = config(trace_dir, tmp_path / "adapter", traces=[trace_dir, other], steps=1, batch_size=16)
    run_distillation(cfg, tiny_model)

    for folder, own in libraries.items():
        wrong = libraries[other if folder == trace_dir else trace_dir]
        for ex in load_distill_examples(folder):
            for prompt_id, analysis in zip(ex.prompt_ids, ex.analyses, strict=True):
                args = (ex.record.question, analysis, ex.record.choices)
                assert own.get(prompt_id).step2(*args) in scored, (folder.name, ex.record.id, prompt_id)
                assert wrong.get(prompt_id).step2(*args) not in scored, (folder.name, ex.record.id, prompt_id)


def test_the_student_opens_its_answer_with_the_adapters_pause_slots(
    tiny_model, trace_dir, tmp_path, scored_prompts
):
    scored = scored_prompts  # cross-entropy only: every conversation scored is the student's
    settings = {"steps": 3, "lr": 2e-2, "warmup_steps": 0, "loss": {"hidden": 0.0, "ce": 1.0}}
    # the slots' states enter below the top layer, so that the first slot can reach the answer
    adapter = {"pause_tokens": 2, "layers": [0, 1], "skip": {"enabled": False}}
    run_distillation(config(trace_dir, tmp_path, adapter=adapter, **settings), tiny_model)
    questions = {
        (ex.record.question, tuple(ex.record.choices or ())) for ex in load_distill_examples(trace_dir)
    }
    assert len(scored) == 3 * 2
    slots = StudentLayout(pause_tokens=2)
    for prompt in scored:
        assert prompt[-1] == ("assistant", ". .")
        assert any(prompt == direct_prompt(q, list(c) or None, slots) for q, c in questions), prompt
    assert weights(tmp_path)["pause_states"].abs().sum(-1).gt(0).all()  # both slots learned


@pytest.mark.parametrize("method", ["sdrt", "lora-sft"])
def test_the_student_is_asked_the_question_before_the_image_when_its_adapter_says_so(
    tiny_model, trace_dir, tmp_path, monkeypatch, scored_prompts, method
):
    scored = scored_prompts  # cross-entropy only: every conversation scored is the student's
    monkeypatch.setattr(tiny_model, "system_prompt", "Look closely.")
    settings = {"steps": 2, "warmup_steps": 0, "loss": {"hidden": 0.0, "ce": 1.0}, "method": method}
    where = "adapter" if method == "sdrt" else "lora"
    run_distillation(config(trace_dir, tmp_path, **{where: {"question_first": True}}, **settings), tiny_model)
    layout = StudentLayout(question_first=True)
    asked = {
        tuple(direct_prompt(ex.record.question, ex.record.choices, layout, "Look closely."))
        for ex in load_distill_examples(trace_dir)
    }
    assert len(scored) == 2 * 2 and all(tuple(prompt) in asked for prompt in scored), scored
    assert json.loads((tmp_path / "adapter_config.json").read_text())["question_first"] is True


def test_a_back_patch_trains_and_is_saved_with_its_layers(tiny_model, trace_dir, tmp_path) -> None:
    settings = {"steps": 4, "lr": 2e-2, "warmup_steps": 0, "loss": {"hidden": 0.0, "ce": 1.0}}
    patch = {"enabled": True, "target_layer": 0, "source_layer": 1, "rank": 2}
    adapter = {"layers": [1], "skip": {"enabled": False}, "back_patch": patch}
    run_distillation(config(trace_dir, tmp_path, adapter=adapter, **settings), tiny_model)
    learned = weights(tmp_path)
    assert learned["back_patch.up.weight"].abs().sum() > 0  # zero at first: it learned
    assert learned["back_patch.down.weight"].shape == (2, tiny_model.hidden_size)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())["back_patch"]
    assert (saved["target_layer"], saved["source_layer"], saved["rank"]) == (0, 1, 2)


def test_the_frozen_prefix_cache_trains_exactly_like_full_forwards(
    tiny_model, trace_dir, tmp_path, monkeypatch
):
    calls = {"replaced": 0}
    real = type(tiny_model).prefix_replaced

    def counting(model, below, supply):
        calls["replaced"] += 1
        return real(model, below, supply)

    monkeypatch.setattr(type(tiny_model), "prefix_replaced", counting)
    settings = {"steps": 8, "batch_size": 4, "lr": 2e-2, "warmup_steps": 0}  # 8 examples: 4 epochs
    cached = run_distillation(config(trace_dir, tmp_path / "cached", **settings), tiny_model)
    assert calls["replaced"] >= 4  # later epochs ran only the upper layers
    calls["replaced"] = 0
    full = run_distillation(config(trace_dir, tmp_path / "full", cache_prefix=False, **settings), tiny_model)
    assert calls["replaced"] == 0
    for a, b in zip(cached.history, full.history, strict=True):
        assert a.loss == pytest.approx(b.loss, rel=1e-4, abs=1e-6), (a, b)
    assert_same_weights(weights(tmp_path / "cached"), weights(tmp_path / "full"), atol=1e-5)


def test_the_prefix_cache_keeps_real_positions_within_its_bound():
    from sdrt.distill.prefix import FrozenPrefixCache

    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)  # (B, W, d)
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    one_row = 4 * 3 * 4  # the longer row's bytes at layer 1
    cache = FrozenPrefixCache(below=2, layers=[1], max_bytes=one_row)
    cache.put(["a", "b"], {1: hidden}, mask)
    assert cache.has(["a"]) and not cache.has(["a", "b"]) and cache.full_computes == 1  # b did not fit
    supplied = cache.supply(["a"], torch.device("cpu"))(1, torch.ones(1, 5, 3))  # a wider batch
    assert torch.equal(supplied[0, 2:], hidden[0, 1:]) and not supplied[0, :2].any()
    assert torch.equal(cache.supply(["a"], torch.device("cpu"))(0, hidden[:1]), hidden[:1])  # not kept
    with pytest.raises(ValueError, match="below"):
        FrozenPrefixCache(below=2, layers=[0], max_bytes=1)


def test_a_grid_mix_below_the_interventions_trains_the_same_with_the_prefix_cache(
    tiny_model, trace_dir, tmp_path
) -> None:
    """The mix at layer 0 lowers the cached prefix to nothing below it; trained with the cache
    on and off it gives the same losses and weights, and it learns (it starts at zero)."""
    ce_only = {"hidden": 0.0, "ce": 1.0}
    settings = {"steps": 6, "batch_size": 4, "lr": 2e-2, "warmup_steps": 0, "loss": ce_only}
    mix = {"enabled": True, "layer": 0, "rank": 2}
    adapter = {"layers": [1], "skip": {"enabled": False}, "grid_mix": mix}
    runs = {
        cache: run_distillation(
            config(trace_dir, tmp_path / str(cache), adapter=adapter, cache_prefix=cache, **settings),
            tiny_model,
        )
        for cache in (True, False)
    }
    for a, b in zip(runs[True].history, runs[False].history, strict=True):
        assert a.loss == pytest.approx(b.loss, rel=1e-4, abs=1e-6), (a, b)
    learned = weights(tmp_path / "True")
    assert learned["grid_mix.up.weight"].abs().sum() > 0
    assert_same_weights(learned, weights(tmp_path / "False"), atol=1e-5)
    saved = json.loads((tmp_path / "True" / "adapter_config.json").read_text())["grid_mix"]
    assert (saved["layer"], saved["rank"], saved["kernel"]) == (0, 2, [7, 13])
