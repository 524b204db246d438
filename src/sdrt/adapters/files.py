"""Adapter folders: ``adapter_config.json`` (sorted keys) + ``adapter.safetensors`` (weights only).

The format is described in ``docs/adapter-format.md``. Orthonormal matrices are stored as the
parameters under torch's parametrisation, so a reload recomputes the very same R.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

import sdrt
from sdrt.adapters.config import AdapterConfig, AdapterError
from sdrt.adapters.lora import METHOD as LORA_METHOD
from sdrt.adapters.lora import LoRAAdapter, load_lora_adapter, save_lora_adapter
from sdrt.adapters.model import SDRTAdapter
from sdrt.models.base import VisionLanguageModel

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter.safetensors"
METHOD = "sdrt"


def adapter_config_dict(adapter: SDRTAdapter) -> dict[str, Any]:
    """The JSON-ready config of ``adapter``, stamped with this sdrt version."""
    return {"method": METHOD, **adapter.config.model_dump(mode="json"), "sdrt_version": sdrt.__version__}


def save_adapter(adapter: SDRTAdapter | LoRAAdapter, out_dir: str | Path) -> Path:
    """Write the adapter folder; returns its path. Only weights go into the safetensors file."""
    if isinstance(adapter, LoRAAdapter):
        return save_lora_adapter(adapter, out_dir, CONFIG_NAME, WEIGHTS_NAME)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(adapter_config_dict(adapter), sort_keys=True, indent=2) + "\n"
    (out / CONFIG_NAME).write_text(text, encoding="utf-8")
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in adapter.state_dict().items()}
    save_file(tensors, str(out / WEIGHTS_NAME), metadata={"format": "pt", "method": METHOD})
    return out


def read_raw_config(adapter_dir: str | Path) -> dict[str, Any]:
    """``adapter_config.json`` as a JSON object (the method decides how to read the rest)."""
    path = Path(adapter_dir) / CONFIG_NAME
    if not path.is_file():
        raise AdapterError(f"no {CONFIG_NAME} in {path.parent}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise AdapterError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(raw, dict):
        raise AdapterError(f"{path}: expected a JSON object")
    return raw


def read_adapter_config(adapter_dir: str | Path) -> AdapterConfig:
    """Read and validate an SDRT ``adapter_config.json``; unknown keys are warned about and ignored."""
    path = Path(adapter_dir) / CONFIG_NAME
    raw = read_raw_config(adapter_dir)
    method = raw.pop("method", None)
    if method != METHOD:
        raise AdapterError(f"{path}: method is {method!r}, expected {METHOD!r}")
    unknown = sorted(set(raw) - set(AdapterConfig.model_fields))
    if unknown:
        warnings.warn(f"{path}: ignoring unknown keys {unknown}", UserWarning, stacklevel=2)
    known = {key: value for key, value in raw.items() if key in AdapterConfig.model_fields}
    try:
        return AdapterConfig.model_validate(known)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in err.errors())
        raise AdapterError(f"{path}: invalid adapter config: {problems}") from err


def load_adapter(adapter_dir: str | Path, model: VisionLanguageModel) -> SDRTAdapter | LoRAAdapter:
    """Rebuild a saved adapter for ``model`` (not attached), after checking it is the same model.

    SDRT adapters and the LoRA-SFT control (``"method": "lora-sft"``) load alike.
    """
    folder = Path(adapter_dir)
    raw = read_raw_config(folder)
    if raw.get("method") == LORA_METHOD:
        return load_lora_adapter(raw, folder / WEIGHTS_NAME, model)
    config = read_adapter_config(folder)
    if config.base_model_config_hash != model.config_hash:
        raise AdapterError(
            f"{folder}: adapter was trained on {config.base_model or 'an unnamed model'} with config hash "
            f"{config.base_model_config_hash or '(none)'}, but {model.name} has config hash "
            f"{model.config_hash}; load it on the model it was trained on"
        )
    adapter = SDRTAdapter(config, model.hidden_size)
    adapter.check_model(model)
    weights_path = folder / WEIGHTS_NAME
    if not weights_path.is_file():
        raise AdapterError(f"no {WEIGHTS_NAME} in {folder}")
    state = load_file(str(weights_path))
    expected = adapter.state_dict()
    problems = [f"missing {name}" for name in sorted(set(expected) - set(state))]
    problems += [f"unexpected {name}" for name in sorted(set(state) - set(expected))]
    problems += [
        f"{name}: shape {tuple(state[name].shape)} != {tuple(t.shape)}"
        for name, t in expected.items()
        if name in state and state[name].shape != t.shape
    ]
    if problems:
        raise AdapterError(f"{weights_path}: weights do not match the config: " + "; ".join(problems))
    adapter.load_state_dict({name: t.to(torch.float32) for name, t in state.items()})
    return adapter.to(model.device)
