"""Model placement from the command line: dtype, device map, attention kernel (on what a CPU can run)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from sdrt.cli import app
from sdrt.config import ConfigError, LoadOptions, load_config
from sdrt.models import load_model
from sdrt.models.base import ModelError

runner = CliRunner()


def test_bfloat16_loads_in_bfloat16_with_the_same_config_hash():
    plain = load_model("tiny:llava")
    half = load_model("tiny:llava", LoadOptions(dtype="bfloat16"))
    assert {p.dtype for p in half.model.parameters()} == {torch.bfloat16}
    assert half.config_hash == plain.config_hash  # adapters trained in fp32 still fit
    image = Image.new("RGB", (32, 32), "red")
    (generation,) = half.generate([image], ["What color?"], max_new_tokens=3)
    assert generation.num_tokens >= 1


def test_device_map_and_attention_kernel_reach_transformers(monkeypatch):
    from sdrt.models import hf

    seen, real = {}, hf.AutoModelForImageTextToText.from_pretrained

    def spy(name, **kwargs):
        seen.update(kwargs)
        return real(name, **kwargs)

    monkeypatch.setattr(hf.AutoModelForImageTextToText, "from_pretrained", spy)
    moved = []
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: moved.append(a) or self)
    model = load_model("tiny:llava", LoadOptions(device_map="auto", attn_implementation="eager"))
    assert seen["device_map"] == "auto" and seen["attn_implementation"] == "eager"
    assert model.model.config._attn_implementation == "eager"
    assert not moved  # accelerate placed it: a sharded model is never moved as a whole
    assert str(model.device) == "cpu"  # where inputs go


def test_embedded_model_refuses_other_placements():
    with pytest.raises(ModelError, match="bfloat16"):
        load_model("embedded", LoadOptions(dtype="float16"))
    with pytest.raises(ModelError, match="device-map"):
        load_model("embedded", LoadOptions(device_map="auto"))


def test_bad_placement_values_are_one_clear_error():
    with pytest.raises(ConfigError, match="dtype"):
        load_config(LoadOptions, None, dtype="float8")


def test_ask_takes_the_placement_flags(tmp_path):
    image = tmp_path / "red.png"
    Image.new("RGB", (32, 32), "red").save(image)
    args = ["ask", "--model", "tiny:llava", "--image", str(image), "--question", "What color?"]
    result = runner.invoke(app, [*args, "--dtype", "bfloat16", "--attn", "sdpa"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, [*args, "--dtype", "float8"])
    assert result.exit_code != 0 and "dtype" in str(result.exception)
