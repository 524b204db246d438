"""The SDRT adapter: interventions at a few decoder layers of a frozen VLM, run through hooks.

``SDRTAdapter`` holds, per intervened layer, one LoReFT intervention (or K heads mixed by a
learned prompt gate), plus an optional cross-modal skip fed from an earlier layer and an
optional grid mix of the image tokens. ``attach`` registers one hook per layer on a
``VisionLanguageModel``; the hooks read the ``TokenLayout`` of the forward now running, so
the same positions are edited in ``score`` (training) and in ``generate`` (prefill, then one
KV-cached decode step at a time).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from sdrt.adapters.backpatch import BackPatch
from sdrt.adapters.config import AdapterConfig, AdapterError, check_against_model
from sdrt.adapters.grid import GridMix, image_cells
from sdrt.adapters.intervention import LoReFTIntervention, MixedLoReFT
from sdrt.adapters.positions import parse_position_specs, pause_slots, position_mask
from sdrt.adapters.skip import CrossModalSkip
from sdrt.adapters.weighting import PromptGate, check_prompt_weights, gate_loss, pool_prompt_states
from sdrt.models.base import TokenLayout, VisionLanguageModel
from sdrt.prompts.library import StudentLayout


def is_decode_step(layout: TokenLayout) -> bool:
    """True for the layout of one KV-cached generation step (one new answer token per row)."""
    return layout.seq_len == 1 and bool(layout.answer_mask.all()) and not bool(layout.image_mask.any())


def added_at(
    hidden: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, delta: torch.Tensor
) -> torch.Tensor:
    """``hidden`` (B, L, d) with ``delta`` (N, d) added at positions (rows, cols), summed in fp32
    (the adapter's precision) and stored back in the model's dtype."""
    added = hidden[rows, cols].float() + delta  # (N, d)
    return hidden.index_put((rows, cols), added.to(hidden.dtype))


class AdapterHandle:
    """Removes every hook an ``attach`` registered; also a context manager."""

    def __init__(self, adapter: SDRTAdapter, handles: list[RemovableHandle]) -> None:
        self._adapter = adapter
        self._handles = handles

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._adapter._forget(self)

    def __enter__(self) -> AdapterHandle:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()


class SDRTAdapter(nn.Module):
    """Intervention adapter of a frozen VLM, built from a validated ``AdapterConfig``.

    Parameters are fp32 whatever the model's dtype. A fresh adapter is exactly the identity.
    """

    def __init__(self, config: AdapterConfig, hidden_size: int) -> None:
        if not config.is_resolved:
            raise AdapterError("adapter config leaves layers, skip source or gate heads open: use for_model")
        super().__init__()
        self.config = config
        self.hidden_size = hidden_size
        self.layers = list(config.layers)
        self.position_specs = parse_position_specs(config.positions)
        d, r = hidden_size, config.rank
        self.gates: nn.ModuleDict | None = None
        if config.gate.enabled:
            k = config.gate.num_heads
            self.interventions = nn.ModuleDict(
                {str(layer): MixedLoReFT(d, r, k, config.dropout) for layer in self.layers}
            )
            self.gates = nn.ModuleDict({str(layer): PromptGate(d, k) for layer in self.layers})
        else:
            self.interventions = nn.ModuleDict(
                {str(layer): LoReFTIntervention(d, r, config.dropout) for layer in self.layers}
            )
        self.skip: CrossModalSkip | None = None
        if config.skip.enabled:
            self.skip = CrossModalSkip(d, config.skip.rank, r, self.layers)
        # learned states added at the pause slots' positions at the lowest layer; zero at first
        self.pause_states: nn.Parameter | None = None
        if config.pause_tokens:
            self.pause_states = nn.Parameter(torch.zeros(config.pause_tokens, d))
        self.back_patch: BackPatch | None = None
        if config.back_patch.enabled:
            self.back_patch = BackPatch(d, config.back_patch.rank)
            self.back_patch_specs = parse_position_specs(config.back_patch.positions)
        self.grid_mix: GridMix | None = None
        if config.grid_mix.enabled:
            self.grid_mix = GridMix(d, config.grid_mix.rank, config.grid_mix.kernel)
        self._gate_weights: dict[int, torch.Tensor] = {}  # layer -> (B, K), kept for decode steps
        self._gate_override: torch.Tensor | None = None
        self._handle: AdapterHandle | None = None
        self._model: VisionLanguageModel | None = None

    @classmethod
    def for_model(
        cls, config: AdapterConfig, model: VisionLanguageModel, num_prompts: int | None = None
    ) -> SDRTAdapter:
        """A fresh adapter for ``model``: the config resolved for it, checked, pinned to its hash.

        ``num_prompts`` gives a gated adapter its heads when the config leaves them open.
        """
        resolved = config.resolved(model.num_layers, num_prompts)
        check_against_model(resolved, model.num_layers, model.hidden_size)
        pins = {"base_model": config.base_model or model.name, "base_model_config_hash": model.config_hash}
        return cls(resolved.model_copy(update=pins), model.hidden_size)

    # --- attaching ---------------------------------------------------------------------------

    def check_model(self, model: VisionLanguageModel) -> None:
        """Raise one ``AdapterError`` listing every way this adapter does not fit ``model``."""
        problems: list[str] = []
        if model.hidden_size != self.hidden_size:
            problems.append(f"hidden size {model.hidden_size} != adapter's {self.hidden_size}")
        expected = self.config.base_model_config_hash
        if expected and expected != model.config_hash:
            problems.append(
                f"config hash {model.config_hash} != {expected} the adapter was trained on "
                f"({self.config.base_model or 'unnamed model'})"
            )
        try:
            check_against_model(self.config, model.num_layers, model.hidden_size)
        except AdapterError as err:
            problems.append(str(err))
        if problems:
            raise AdapterError(f"adapter does not fit {model.name}: " + "; ".join(problems))

    def attach(self, model: VisionLanguageModel) -> AdapterHandle:
        """Hook the adapter into ``model`` (moving it to the model's device); undo with the handle."""
        if self._handle is not None:
            raise AdapterError("adapter is already attached; detach it first")
        self.check_model(model)
        self.to(model.device)
        self.reset_state()
        handles: list[RemovableHandle] = []
        if self.skip is not None:
            handles.append(model.add_layer_hook(self.config.skip.source_layer, self._skip_hook))
        if self.back_patch is not None:  # before the edit at a shared layer: it reads the frozen state
            patch = self.config.back_patch
            hook = model.add_rerun_hook(patch.target_layer, patch.source_layer, self._back_patch_hook)
            handles.append(hook)
        if self.grid_mix is not None:  # before an edit at the same layer, which then reads the mixed states
            handles.append(model.add_layer_hook(self.config.grid_mix.layer, self._grid_hook))
        handles.extend(model.add_layer_hook(layer, self._edit_hook) for layer in self.layers)
        self._handle = AdapterHandle(self, handles)
        self._model = model
        return self._handle

    def detach(self) -> None:
        """Remove the hooks of the current attachment (no-op if not attached)."""
        if self._handle is not None:
            self._handle.remove()

    @property
    def is_attached(self) -> bool:
        return self._handle is not None

    @contextmanager
    def attached(self, model: VisionLanguageModel) -> Iterator[SDRTAdapter]:
        """``with adapter.attached(model):`` the model runs with the adapter, then without."""
        self.attach(model)
        try:
            yield self
        finally:
            self.detach()

    @contextmanager
    def detached(self, model: VisionLanguageModel | None = None) -> Iterator[None]:
        """Run the bare model for a while (e.g. the teacher's forward), then re-attach."""
        target = self._model if self._handle is not None else None
        if model is not None and target is not None and model is not target:
            raise AdapterError(f"adapter is attached to {target.name}, not to {model.name}")
        self.detach()
        try:
            yield
        finally:
            if target is not None:
                self.attach(target)

    def _forget(self, handle: AdapterHandle) -> None:
        if self._handle is handle:
            self._handle = None
            self._model = None
            self.reset_state()

    def reset_state(self) -> None:
        """Drop what was kept from the last prefill (image summary, gate weights)."""
        self._gate_weights = {}
        if self.skip is not None:
            self.skip.reset()

    # --- hooks -------------------------------------------------------------------------------

    def _skip_hook(self, layer: int, hidden: torch.Tensor, layout: TokenLayout) -> None:
        """Source layer: summarise the image at prefill / score; keep it through decode steps."""
        if self.skip is not None and not is_decode_step(layout):
            self.skip.summarise(hidden, layout.image_mask)

    def _back_patch_hook(
        self, layer: int, hidden: torch.Tensor, layout: TokenLayout, later: Callable[[], torch.Tensor]
    ) -> torch.Tensor | None:
        """Add the back-patch at its prompt positions (a prefill or score forward; never a decode step)."""
        if self.back_patch is None or is_decode_step(layout):
            return None
        mask = position_mask(self.back_patch_specs, layout, self.pause_tokens).to(hidden.device)  # (B, L)
        if not bool(mask.any()):
            return None
        with torch.set_grad_enabled(torch.is_grad_enabled() and hidden.requires_grad):
            source = later()  # (B, L, d): frozen layers above, no gradient unless something below trains
        rows, cols = mask.nonzero(as_tuple=True)  # (N,), (N,)
        return added_at(hidden, rows, cols, self.back_patch(source[rows, cols]))

    def _grid_hook(self, layer: int, hidden: torch.Tensor, layout: TokenLayout) -> torch.Tensor | None:
        """Add the grid mix at every image token (a prefill or score forward; decode steps have none)."""
        image = layout.image_mask.bool().to(hidden.device)  # (B, L)
        if self.grid_mix is None or self._model is None or not bool(image.any()):
            return None
        grid = self._model.image_grid(int(image.sum(1).max()))
        try:
            rows, cols = image_cells(image, grid)  # (N*h*w,) each, raster order
        except ValueError as err:
            raise AdapterError(f"layer {layer}: {err}") from err
        cells = hidden[rows, cols].reshape(-1, *grid, hidden.shape[-1])  # (N, h, w, d)
        return added_at(hidden, rows, cols, self.grid_mix(cells).reshape(rows.shape[0], -1))

    def _edit_hook(self, layer: int, hidden: torch.Tensor, layout: TokenLayout) -> torch.Tensor | None:
        decode = is_decode_step(layout)
        weights = self._mixing_weights(layer, hidden, layout, decode)  # (B, K) or None
        given = hidden
        if self.pause_states is not None and layer == self.layers[0] and not decode:
            hidden = self._with_pause_states(hidden, layout)
        mask = position_mask(self.position_specs, layout, self.pause_tokens).to(hidden.device)  # (B, L)
        if not bool(mask.any()):
            return None if hidden is given else hidden
        rows, cols = mask.nonzero(as_tuple=True)  # (N,), (N,)
        picked = hidden[rows, cols]  # (N, d)
        context = self._skip_context(layer, layout, rows, cols, hidden.shape[0])  # (N, r) or None
        intervention = self.interventions[str(layer)]
        if weights is None:
            edited = intervention(picked, context)
        else:
            edited = intervention(picked, weights[rows], context)
        return hidden.index_put((rows, cols), edited)  # (B, L, d)

    def _with_pause_states(self, hidden: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        """``hidden`` with the i-th learned pause state added at each row's i-th pause slot."""
        slots = pause_slots(layout, self.pause_tokens).to(hidden.device)  # (B, L)
        rows, cols = slots.nonzero(as_tuple=True)  # (N,), (N,)
        # a row whose prompt is shorter than the slots holds only the last ones
        first = self.pause_tokens - slots.sum(1)  # (B,)
        which = first[rows] + slots.long().cumsum(1)[rows, cols] - 1  # (N,) slot index
        return added_at(hidden, rows, cols, self.pause_states[which])

    @property
    def pause_tokens(self) -> int:
        """Pause marks the adapter's prompts open their answer with (``direct_prompt``)."""
        return self.config.pause_tokens

    @property
    def layout(self) -> StudentLayout:
        """How the adapter's prompts are laid out, as it was trained on them."""
        return StudentLayout(self.config.pause_tokens, self.config.question_first)

    def _skip_context(
        self, layer: int, layout: TokenLayout, rows: torch.Tensor, cols: torch.Tensor, batch: int
    ) -> torch.Tensor | None:
        """Per-position skip context, zero at image positions: (N, r)."""
        if self.skip is None:
            return None
        summary = self.skip.summary
        if summary is None or summary.shape[0] != batch:
            got = "none" if summary is None else f"batch {summary.shape[0]}"
            raise AdapterError(
                f"layer {layer}: no image summary for a batch of {batch} ({got}); a prefill or score "
                "forward must run with the adapter attached before decode steps"
            )
        not_image = ~layout.image_mask.to(rows.device)[rows, cols]  # (N,)
        return self.skip.context(layer)[rows] * not_image.unsqueeze(-1)  # (N, r)

    def _mixing_weights(
        self, layer: int, hidden: torch.Tensor, layout: TokenLayout, decode: bool
    ) -> torch.Tensor | None:
        """Gate weights (B, K): computed from the prompt at prefill / score, reused when decoding."""
        if self.gates is None:
            return None
        if self._gate_override is not None:
            return self._gate_override.to(hidden.device)
        if not decode:
            self._gate_weights[layer] = self.gates[str(layer)](pool_prompt_states(hidden, layout))
        kept = self._gate_weights.get(layer)
        if kept is None or kept.shape[0] != hidden.shape[0]:
            raise AdapterError(f"layer {layer}: no gate weights kept from a prefill for this batch")
        return kept

    # --- the gate ----------------------------------------------------------------------------

    @property
    def gate_weights(self) -> dict[int, torch.Tensor]:
        """Gate weights (B, K) per layer from the last prefill / score forward."""
        return dict(self._gate_weights)

    def gate_loss(self, target_weights: torch.Tensor) -> torch.Tensor | None:
        """Mean over layers of ``KL(target weights || gate weights)`` for the last forward.

        ``target_weights`` (B, K): the teachers' ensemble weights of that forward's batch,
        passed with the call. ``None`` when the gate is off.
        """
        if self.gates is None:
            return None
        check_prompt_weights(target_weights, self.config.gate.num_heads)
        if not self._gate_weights:
            raise AdapterError("gate_loss needs a forward with the adapter attached first")
        target = target_weights.to(next(iter(self._gate_weights.values())).device)
        losses = [gate_loss(weights, target) for weights in self._gate_weights.values()]
        return torch.stack(losses).mean()

    @contextmanager
    def use_gate_weights(self, weights: torch.Tensor) -> Iterator[None]:
        """Mix the heads with given weights (B, K) instead of the gate, e.g. one-hot per teacher."""
        if self.gates is None:
            raise AdapterError("use_gate_weights needs gate.enabled")
        check_prompt_weights(weights, self.config.gate.num_heads)
        self._gate_override = weights.float()
        try:
            yield
        finally:
            self._gate_override = None

    # --- sizes -------------------------------------------------------------------------------

    def trainable_parameters(self) -> int:
        """Number of trainable parameters (what an optimiser updates)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def _meta_copy(module: nn.Module) -> nn.Module:
    """A structural copy of ``module`` on the meta device: no weights are copied or allocated."""
    memo: dict[int, torch.Tensor] = {}
    for param in module.parameters():
        memo[id(param)] = nn.Parameter(torch.empty_like(param, device="meta"), param.requires_grad)
    for buffer in module.buffers():
        memo[id(buffer)] = torch.empty_like(buffer, device="meta")
    return copy.deepcopy(module, memo)


class _Holder(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner


def _excluded_heads(module: nn.Module) -> set[int]:
    """Output heads that an ``all-linear`` LoRA leaves out (a causal LM's ``lm_head``)."""
    get_output = getattr(module, "get_output_embeddings", None)
    head = get_output() if callable(get_output) else None
    return {id(head)} if head is not None else set()


def lora_parameter_count_by_shapes(module: nn.Module, rank: int = 8) -> int:
    """``sum r (in + out)`` over the ``nn.Linear`` layers of ``module`` (output head excluded)."""
    skip = _excluded_heads(module)
    return sum(
        rank * (m.in_features + m.out_features)
        for m in module.modules()
        if isinstance(m, nn.Linear) and id(m) not in skip
    )


def lora_parameter_count_with_peft(module: nn.Module, rank: int = 8) -> int:
    """Trainable parameters of ``peft`` LoRA (``target_modules="all-linear"``) on a meta copy."""
    import peft

    copied = _meta_copy(module)
    wrapped = copied if hasattr(copied, "get_output_embeddings") else _Holder(copied)
    lora = peft.LoraConfig(r=rank, lora_alpha=rank, target_modules="all-linear", bias="none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = peft.get_peft_model(wrapped, lora)
    trainable, _ = peft_model.get_nb_trainable_parameters()
    return int(trainable)


def lora_parameter_count(model: VisionLanguageModel | nn.Module, rank: int = 8) -> int:
    """What a rank-``rank`` LoRA on every linear layer of the language model would train.

    For a ``VisionLanguageModel`` that is its decoder layers (never the vision tower or the
    projector); for a bare module, every linear layer except a causal LM's output head. Counted
    by ``peft`` itself on a weightless copy, or from the layer shapes if ``peft`` cannot wrap it.
    """
    module = model.decoder_layers if isinstance(model, VisionLanguageModel) else model
    try:
        return lora_parameter_count_with_peft(module, rank)
    except (ImportError, ValueError, TypeError, RuntimeError, AttributeError, NotImplementedError):
        return lora_parameter_count_by_shapes(module, rank)
