"""Adapter folders: JSON config + safetensors weights, round trip, hash checks."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import sdrt
from sdrt.adapters.config import AdapterConfig, AdapterError
from sdrt.adapters.files import CONFIG_NAME, WEIGHTS_NAME, load_adapter, read_adapter_config, save_adapter
from sdrt.adapters.model import SDRTAdapter

D = 16
ROWS = ["..iiittaa", "iiiitttaa"]


def trained_adapter(model) -> SDRTAdapter:
    config = AdapterConfig(
        layers=[2, 3],
        rank=4,
        positions=["last_prompt:3", "answer"],
        skip={"enabled": True, "source_layer": 1, "rank": 3},
        gate={"enabled": True, "num_heads": 2},
        prompt_library_hash="abc123",
    )
    adapter = SDRTAdapter.for_model(config, model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.5)  # moves R's stored parameters too
    return adapter


def run(model, adapter, layout) -> list[torch.Tensor]:
    x = torch.randn(len(ROWS), len(ROWS[0]), D, generator=torch.Generator().manual_seed(3))
    with adapter.attach(model):
        return model(x, layout(ROWS))


def test_round_trip_gives_identical_outputs(standin, layout, tmp_path) -> None:
    model = standin(D)
    adapter = trained_adapter(model)
    before = run(model, adapter, layout)
    save_adapter(adapter, tmp_path / "a")
    loaded = load_adapter(tmp_path / "a", model)
    assert loaded.config == adapter.config
    for layer in ("2", "3"):
        heads = zip(adapter.interventions[layer].heads, loaded.interventions[layer].heads, strict=True)
        for old, new in heads:
            assert torch.equal(old.R, new.R)
            torch.testing.assert_close(new.R @ new.R.T, torch.eye(4), rtol=0, atol=1e-5)
    after = run(model, loaded, layout)
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert not torch.equal(before[-1], run(model, SDRTAdapter.for_model(adapter.config, model), layout)[-1])


def test_config_file_is_sorted_and_complete(standin, tmp_path) -> None:
    model = standin(D)
    save_adapter(trained_adapter(model), tmp_path)
    text = (tmp_path / CONFIG_NAME).read_text()
    data = json.loads(text)
    assert list(data) == sorted(data)
    assert data["method"] == "sdrt"
    assert data["base_model"] == "standin"
    assert data["base_model_config_hash"] == model.config_hash
    assert data["layers"] == [2, 3] and data["rank"] == 4
    assert data["positions"] == ["last_prompt:3", "answer"]
    assert data["skip"] == {"enabled": True, "source_layer": 1, "rank": 3}
    assert data["gate"] == {"enabled": True, "num_heads": 2}
    assert data["prompt_library_hash"] == "abc123"
    assert data["sdrt_version"] == sdrt.__version__


def test_weights_file_holds_only_small_weight_tensors(standin, tmp_path) -> None:
    model = standin(D)
    adapter = trained_adapter(model)
    save_adapter(adapter, tmp_path)
    tensors = load_file(str(tmp_path / WEIGHTS_NAME))
    assert set(tensors) == set(adapter.state_dict())
    assert all(t.dtype == torch.float32 and t.numel() <= 4 * D for t in tensors.values())  # no d x d bases


def test_config_hash_mismatch_is_refused(standin, tmp_path) -> None:
    save_adapter(trained_adapter(standin(D)), tmp_path)
    other = standin(D, num_layers=5)
    with pytest.raises(AdapterError, match="config hash"):
        load_adapter(tmp_path, other)


def test_unknown_keys_warn_but_load(standin, tmp_path) -> None:
    model = standin(D)
    save_adapter(trained_adapter(model), tmp_path)
    path = tmp_path / CONFIG_NAME
    data = json.loads(path.read_text())
    data["future_setting"] = 7
    path.write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="future_setting"):
        assert load_adapter(tmp_path, model).config.layers == [2, 3]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(method="lora"), "method"),
        (lambda d: d.update(rank=0, layers=[]), "rank.*layers|layers.*rank"),
        (lambda d: d.update(rank=5), "rank|shape"),
    ],
)
def test_bad_folders_raise_adapter_error(standin, tmp_path, edit, message) -> None:
    model = standin(D)
    save_adapter(trained_adapter(model), tmp_path)
    path = tmp_path / CONFIG_NAME
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(AdapterError, match=message):
        load_adapter(tmp_path, model)


def test_missing_files_raise_adapter_error(standin, tmp_path) -> None:
    model = standin(D)
    with pytest.raises(AdapterError, match=CONFIG_NAME):
        read_adapter_config(tmp_path)
    save_adapter(trained_adapter(model), tmp_path)
    (tmp_path / WEIGHTS_NAME).unlink()
    with pytest.raises(AdapterError, match=WEIGHTS_NAME):
        load_adapter(tmp_path, model)
