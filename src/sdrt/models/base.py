"""The one model interface every SDRT stage talks to.

A backend wraps a frozen vision-language model and offers four things:

* ``generate``: batched (image, prompt) -> text, with per-token log-probabilities;
* ``score``: teacher-forced forward on (image, prompt, answer), returning hidden states of
  chosen decoder layers, the logits that predict each answer token and a ``TokenLayout``
  saying which position holds image, prompt text, answer or padding;
* ``add_layer_hook``: a forward hook on a decoder layer that receives the layout of the
  current forward (prefill or one KV-cached decode step), so that interventions can edit
  exactly the positions they are meant to edit;
* ``encode_images``: turn images into reusable ``EncodedImage`` handles, so that K prompts
  and both dual-query steps on one image pay for the vision tower once.

Batches are left-padded. Every position mask is computed from the real token ids after
padding, so nothing downstream needs to know how much padding a row got.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import nn
from torch.utils.hooks import RemovableHandle

Role = str  # "system" | "user" | "assistant"
Conversation = list[tuple[Role, str]]
Prompt = str | Conversation
"""A bare string is one user turn. The image always goes into the first user turn."""


def as_conversation(prompt: Prompt) -> Conversation:
    return [("user", prompt)] if isinstance(prompt, str) else list(prompt)


def opens_answer(conversation: Conversation) -> bool:
    """Whether a conversation ends in an assistant turn: the start of the answer, which the
    model continues (rendered without an end of turn), rather than a finished earlier turn."""
    return bool(conversation) and conversation[-1][0] == "assistant"


@dataclass
class EncodedImage:
    """An image already run through a backend's preprocessing (and vision tower, if it can).

    ``features`` is backend-specific; ``source`` keeps the original for backends that must
    re-run the processor (for example to expand image placeholder tokens).
    """

    backend: str
    features: Any
    source: Image.Image | None = None


ImageInput = Image.Image | EncodedImage


@dataclass
class TokenLayout:
    """Roles of the positions of a left-padded batch, each a bool tensor of shape (B, L)."""

    attention_mask: torch.Tensor
    image_mask: torch.Tensor
    answer_mask: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.attention_mask.shape[0]

    @property
    def seq_len(self) -> int:
        return self.attention_mask.shape[1]

    @property
    def text_mask(self) -> torch.Tensor:
        """Prompt text: real tokens that are neither image tokens nor answer tokens."""
        return self.attention_mask & ~self.image_mask & ~self.answer_mask

    @property
    def prompt_mask(self) -> torch.Tensor:
        return self.attention_mask & ~self.answer_mask

    def last_prompt_positions(self, n: int) -> torch.Tensor:
        """Mask of the last ``n`` prompt (non-answer) positions of each row."""
        prompt = self.prompt_mask
        from_end = prompt.flip(1).cumsum(1).flip(1)  # (B, L) prompt tokens at or after each position
        return prompt & (from_end <= n)

    def to(self, device: torch.device | str) -> TokenLayout:
        return TokenLayout(
            self.attention_mask.to(device), self.image_mask.to(device), self.answer_mask.to(device)
        )

    @staticmethod
    def decode_step(batch_size: int, device: torch.device | str) -> TokenLayout:
        """Layout of one KV-cached generation step: every row gets one new (answer) token."""
        ones = torch.ones(batch_size, 1, dtype=torch.bool, device=device)
        return TokenLayout(ones, torch.zeros_like(ones), ones.clone())


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    token_logprobs: list[float]

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def logprob(self) -> float:
        return float(sum(self.token_logprobs))


@dataclass
class ScoreOutput:
    """Teacher-forced forward of (image, prompt, answer) rows.

    ``answer_logits[b, t]`` are the logits that predict ``answer_ids[b, t]``; rows with shorter
    answers are right-padded and ``answer_token_mask`` marks the real ones.
    """

    layout: TokenLayout
    hidden_states: dict[int, torch.Tensor]  # layer -> (B, L, d), output of that decoder layer
    answer_logits: torch.Tensor  # (B, T, V)
    answer_ids: torch.Tensor  # (B, T)
    answer_token_mask: torch.Tensor  # (B, T) bool

    def answer_logprobs(self) -> torch.Tensor:
        """Sum of log p(answer token) over each row's answer: (B,)."""
        logp = torch.log_softmax(self.answer_logits.float(), dim=-1)
        token_logp = logp.gather(-1, self.answer_ids.unsqueeze(-1)).squeeze(-1)
        return (token_logp * self.answer_token_mask).sum(-1)

    def answer_hidden(self, layer: int) -> torch.Tensor:
        """Hidden states of ``layer`` at the answer positions, right-padded to (B, T, d)."""
        return gather_positions(self.hidden_states[layer], self.layout.answer_mask)


def gather_positions(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Pack the masked positions of each row to the left: (B, L, d) + (B, L) -> (B, T, d)."""
    counts = mask.sum(1)
    width = int(counts.max().item()) if counts.numel() else 0
    out = values.new_zeros(values.shape[0], width, *values.shape[2:])
    for row in range(values.shape[0]):
        picked = values[row][mask[row]]
        out[row, : picked.shape[0]] = picked
    return out


def continuation(
    first_ids: Sequence[int], second_ids: Sequence[int], analysis: Sequence[int], fed: int
) -> tuple[list[int], int] | None:
    """Step 2's tokens still to feed after step 1's cache, and how many analysis tokens it keeps.

    The one rule both backends continue by. None when step 2 does not start with step 1's
    prompt (it does not replay step 1 as earlier turns). Of the analysis, the longest start
    that step 2 repeats token for token and the cache holds (``fed`` tokens) is kept; the rest
    of step 2 is new. None as well when nothing would be new: no position would predict the
    answer's first token.
    """
    start = len(first_ids)
    if list(second_ids[:start]) != list(first_ids):
        return None
    rest = list(second_ids[start:])
    kept = 0
    while kept < min(len(analysis), len(rest), fed) and analysis[kept] == rest[kept]:
        kept += 1
    if kept == len(rest):
        return None
    return rest[kept:], kept


LayerHook = Callable[[int, torch.Tensor, TokenLayout], torch.Tensor | None]
"""``hook(layer_index, hidden (B, L, d), layout) -> new hidden or None``.

During KV-cached generation the prefill call sees the prompt layout and each decode step
sees ``TokenLayout.decode_step`` (one generated position per row).
"""

RerunHook = Callable[[int, torch.Tensor, TokenLayout, Callable[[], torch.Tensor]], torch.Tensor | None]
"""``hook(layer_index, hidden, layout, later) -> new hidden or None``, as ``LayerHook``, where
``later()`` runs the frozen layers above ``layer_index`` on ``hidden`` (see ``add_rerun_hook``).
"""


class ModelError(RuntimeError):
    """A model could not be found, loaded or used; the message names what and why."""


class VisionLanguageModel(ABC):
    """Base class holding what all backends share: hooks, layouts, config hash.

    A backend sets ``self._layout`` (via ``_set_layout``) before every forward or generate call
    it makes, so hooks always know the roles of the positions they see.
    """

    system_prompt: str | None = None
    """The system text a prompt without a system turn gets from the backend itself (None: the
    chat template's own default), for a prompt that writes its own system turn to keep."""

    def __init__(self, name: str, device: torch.device | str = "cpu") -> None:
        self.name = name
        self.device = torch.device(device)
        self._layout: TokenLayout | None = None

    # --- what a backend provides -----------------------------------------------------------

    @property
    @abstractmethod
    def decoder_layers(self) -> nn.ModuleList:
        """The language model's decoder layers (where hooks and interventions go)."""

    @property
    @abstractmethod
    def hidden_size(self) -> int: ...

    @abstractmethod
    def config_dict(self) -> dict[str, Any]:
        """Architecture config; its hash pins adapters to the model they were trained on."""

    @property
    def decoder_config(self) -> Any:
        """The language model's config (layers, heads, sizes): what memory estimates read."""
        raise NotImplementedError(f"{self.name} does not describe its language model")

    def prompt_tokens(self, image: ImageInput, prompt: Prompt) -> int:
        """Length in tokens of ``prompt`` rendered with ``image`` (image tokens included)."""
        raise NotImplementedError(f"{self.name} does not count prompt tokens")

    def image_grid(self, num_tokens: int) -> tuple[int, int]:
        """(rows, columns) of the token grid an image of ``num_tokens`` tokens is laid out in,
        row by row (what a spatial edit of the image tokens needs). Backends whose images are
        one fixed raster say so; others raise ``ModelError``."""
        raise ModelError(f"{self.name} does not say how its image tokens are laid out")

    @abstractmethod
    def encode_images(self, images: Sequence[Image.Image]) -> list[EncodedImage]: ...

    @abstractmethod
    def generate(
        self,
        images: Sequence[ImageInput],
        prompts: Sequence[Prompt],
        *,
        max_new_tokens: int = 32,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[Generation]: ...

    @abstractmethod
    def score(
        self,
        images: Sequence[ImageInput],
        prompts: Sequence[Prompt],
        answers: Sequence[str],
        *,
        layers: Sequence[int] = (),
        append_eos: bool = True,
    ) -> ScoreOutput:
        """Teacher-forced forward. Runs under the caller's grad mode (adapters train through it)."""

    @abstractmethod
    def render_prompt(self, prompt: Prompt) -> str:
        """The prompt as the model's own chat template renders it (generation prompt added)."""

    def generate_two_step(
        self,
        images: Sequence[ImageInput],
        first: Sequence[Prompt],
        follow_up: Callable[[list[Generation]], Sequence[Prompt]],
        *,
        first_tokens: int,
        second_tokens: int,
    ) -> tuple[list[Generation], list[Generation]]:
        """Greedy step 1, then step 2 on prompts that ``follow_up`` builds from step 1's output.

        This plain version generates step 2 from scratch. A backend may override it to
        continue step 1's KV cache (step 2 replays step 1 as earlier turns, so only its new
        tokens need a prefill); an override must give the same tokens as this version.
        """
        analyses = self.generate(images, first, max_new_tokens=first_tokens)
        answers = self.generate(images, list(follow_up(analyses)), max_new_tokens=second_tokens)
        return analyses, answers

    # --- shared machinery --------------------------------------------------------------------

    @property
    def num_layers(self) -> int:
        return len(self.decoder_layers)

    @property
    def dtype(self) -> torch.dtype:
        """The language model's dtype (that of its first decoder layer's weights)."""
        return next(self.decoder_layers.parameters()).dtype

    @property
    def config_hash(self) -> str:
        blob = json.dumps(self.config_dict(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def num_parameters(self) -> int:
        """Every parameter the backend holds (vision tower, projector, language model), counted once.

        Looks at the backend's ``nn.Module`` attributes and one level into helper objects.
        """
        unique: dict[int, int] = {}
        for value in vars(self).values():
            parts = [value] if isinstance(value, nn.Module) else list(getattr(value, "__dict__", {}).values())
            for module in parts:
                if isinstance(module, nn.Module):
                    unique.update((id(p), p.numel()) for p in module.parameters())
        return sum(unique.values())

    def add_layer_hook(self, layer: int, hook: LayerHook) -> RemovableHandle:
        """Register ``hook`` on decoder layer ``layer``; the handle works as a context manager."""
        if not 0 <= layer < self.num_layers:
            raise ModelError(f"{self.name}: layer {layer} out of range (model has {self.num_layers})")
        return self._hook_hidden(layer, lambda hidden, layout, args, kwargs: hook(layer, hidden, layout))

    def add_rerun_hook(self, layer: int, upto: int, hook: RerunHook) -> RemovableHandle:
        """Register ``hook`` on ``layer``, offering it what layers ``layer+1 .. upto`` make of its output.

        ``later()`` runs those layers again on the hidden states the hook received, with the
        forward's own masks and position embeddings but without its KV cache (which they must not
        write twice) and without their hooks: the frozen model's later states of this forward, for
        an edit that feeds them back down (back-patching). Computed only when called.
        """
        if not 0 <= layer < upto < self.num_layers:
            raise ModelError(
                f"{self.name}: cannot rerun layers {layer + 1}..{upto} of {self.num_layers} "
                f"from layer {layer}"
            )
        above = [self.decoder_layers[i] for i in range(layer + 1, upto + 1)]

        def offered(hidden: torch.Tensor, layout: TokenLayout, args: tuple, kwargs: dict[str, Any]) -> Any:
            return hook(layer, hidden, layout, lambda: _rerun(above, layer + 1, hidden, args, kwargs))

        return self._hook_hidden(layer, offered)

    def _hook_hidden(self, layer: int, edit: Callable[..., torch.Tensor | None]) -> RemovableHandle:
        """The one torch forward hook behind ``add_layer_hook`` and ``add_rerun_hook``:
        ``edit(hidden, layout, args, kwargs)`` sees the layer's hidden states and the forward's
        layout; what it returns (unless ``None``) replaces them in the layer's output."""

        def torch_hook(module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
            hidden = _hidden_of(output)
            new = edit(hidden, self.current_layout(hidden), args, kwargs)
            if new is None:
                return output
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return self.decoder_layers[layer].register_forward_hook(torch_hook, with_kwargs=True)

    @contextmanager
    def captured_layers(self, layers: Sequence[int]) -> Iterator[dict[int, torch.Tensor]]:
        """Record the outputs (B, L, d) of decoder layers, after any hooks registered before.

        Hooks rather than ``output_hidden_states``: the model's last hidden state is taken
        after the final norm, not at the last layer's output, and only requested layers are kept.
        """
        captured: dict[int, torch.Tensor] = {}

        def record(layer: int) -> Callable[..., None]:
            def hook(module: nn.Module, args: tuple, output: Any) -> None:
                captured[layer] = _hidden_of(output)

            return hook

        handles = [
            self.decoder_layers[layer].register_forward_hook(record(layer)) for layer in sorted(set(layers))
        ]
        try:
            yield captured
        finally:
            for handle in handles:
                handle.remove()

    @contextmanager
    def prefix_replaced(
        self, below: int, supply: Callable[[int, torch.Tensor], torch.Tensor]
    ) -> Iterator[None]:
        """Forwards that skip decoder layers ``0 .. below-1``: layer i returns ``supply(i, its input)``.

        For a frozen prefix whose outputs are known (``sdrt distill`` caches them per example):
        the layers from ``below`` on compute as usual, hooks on the replaced layers still run on
        what ``supply`` returns, and the embeddings under them still run (cheap). Decoder layers
        return their hidden states as a tensor (transformers' convention); so does ``supply``.
        """
        layers = self.decoder_layers
        if not 0 < below <= len(layers):
            raise ModelError(f"{self.name}: cannot replace layers below {below} of {len(layers)}")

        def stand_in(layer: int) -> Callable[..., torch.Tensor]:
            return lambda hidden_states, *args, **kwargs: supply(layer, hidden_states)

        for layer in range(below):
            layers[layer].forward = stand_in(layer)
        try:
            yield
        finally:
            for layer in range(below):
                del layers[layer].forward  # the class's own forward again

    def _hooked(self) -> bool:
        """Whether a layer hook is attached: such hooks expect whole forwards (cache paths skip)."""
        return any(layer._forward_hooks for layer in self.decoder_layers)

    def current_layout(self, hidden: torch.Tensor) -> TokenLayout:
        """The layout the backend set for the forward now running (prefill, score or one step)."""
        layout = self._layout
        if layout is not None and tuple(hidden.shape[:2]) == (layout.batch_size, layout.seq_len):
            return layout
        raise ModelError(
            f"{self.name}: a layer hook ran outside a forward of this interface, or in one whose "
            f"layout was not set (hidden {tuple(hidden.shape)}, "
            f"layout {None if layout is None else (layout.batch_size, layout.seq_len)})"
        )

    def _set_layout(self, layout: TokenLayout | None) -> None:
        self._layout = layout


def _rerun(
    layers: Sequence[nn.Module], first: int, hidden: torch.Tensor, args: tuple, kwargs: dict[str, Any]
) -> torch.Tensor:
    """``hidden`` through ``layers`` (decoder layers ``first``, ``first+1``, ...) with a forward's
    own arguments, its KV cache left out.

    ``forward`` rather than the call: the layers' hooks (adapter edits) belong to the forward
    that is running, not to this frozen rerun. Without the cache only this forward's positions
    are keys, so the forward must start from an empty cache (a prefill, a scored forward).
    """
    caches = [value for value in kwargs.values() if _is_kv_cache(value)]
    if any(cache.get_seq_length(first) > 0 for cache in caches):  # layer ``first`` has not run yet
        raise ModelError("layers can only be rerun in a forward that starts from an empty KV cache")
    kept = {key: None if _is_kv_cache(value) else value for key, value in kwargs.items()}
    if "use_cache" in kept:
        kept["use_cache"] = False
    mask, width = kept.get("attention_mask"), hidden.shape[1]
    if isinstance(mask, torch.Tensor) and mask.shape[-1] != width:
        kept["attention_mask"] = mask[..., :width]  # a preallocated cache's mask spans all its slots
    for layer in layers:
        hidden = _hidden_of(layer.forward(hidden, *args[1:], **kept))
    return hidden


def _hidden_of(output: Any) -> torch.Tensor:
    """A decoder layer's hidden states, whether it returns them alone or first in a tuple."""
    return output[0] if isinstance(output, tuple) else output


def _is_kv_cache(value: Any) -> bool:
    """A transformers ``Cache`` by its interface: importing transformers here would cost every
    light import of this module a second."""
    return callable(getattr(value, "get_seq_length", None)) and callable(getattr(value, "update", None))
