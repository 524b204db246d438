"""SDRT adapters: LoReFT interventions, cross-modal skip, prompt weighting, adapter files."""

from sdrt.adapters.config import AdapterConfig, AdapterError, GateConfig, SkipConfig, check_against_model
from sdrt.adapters.files import load_adapter, read_adapter_config, save_adapter
from sdrt.adapters.intervention import LoReFTIntervention, MixedLoReFT
from sdrt.adapters.model import AdapterHandle, SDRTAdapter, is_decode_step, lora_parameter_count
from sdrt.adapters.positions import PositionSpec, parse_position_specs, position_mask
from sdrt.adapters.skip import CrossModalSkip, pool_image_states
from sdrt.adapters.weighting import PromptGate, gate_loss, pool_prompt_states, weighted_teacher_loss

__all__ = [
    "AdapterConfig",
    "AdapterError",
    "AdapterHandle",
    "CrossModalSkip",
    "GateConfig",
    "LoReFTIntervention",
    "MixedLoReFT",
    "PositionSpec",
    "PromptGate",
    "SDRTAdapter",
    "SkipConfig",
    "check_against_model",
    "gate_loss",
    "is_decode_step",
    "load_adapter",
    "lora_parameter_count",
    "parse_position_specs",
    "pool_image_states",
    "pool_prompt_states",
    "position_mask",
    "read_adapter_config",
    "save_adapter",
    "weighted_teacher_loss",
]
