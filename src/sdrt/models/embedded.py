"""The embedded offline VLM: EfficientNet-Lite0 -> MLP projector -> SmolLM2-135M-Instruct.

LLaVA-style: the image becomes ``grid * grid`` pooled feature tokens, projected into the
language model's embedding space and placed where the first user turn holds the image
placeholder. Everything is frozen except the projector (and, during alignment only, LoRA on
the language model, which is merged into the weights when shipped weights are loaded).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from transformers import (
    Cache,
    DynamicCache,
    LogitsProcessorList,
    StaticCache,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from sdrt.data.records import DataError
from sdrt.models.base import (
    EncodedImage,
    Generation,
    ImageInput,
    ModelError,
    Prompt,
    ScoreOutput,
    TokenLayout,
    VisionLanguageModel,
    as_conversation,
    continuation,
    opens_answer,
)
from sdrt.models.smollm import load_smollm
from sdrt.models.vision import FEATURE_DIM, VisionEncoder, feature_dim

log = logging.getLogger(__name__)

BACKEND = "embedded"
WEIGHTS_DIR = Path(__file__).parent / "weights"
WEIGHTS_FILE = "embedded_projector.safetensors"
CONFIG_FILE = "embedded_config.json"
IMAGE_PLACEHOLDER = "<image>"
SYSTEM_PROMPT = "Answer questions about the image."
DEFAULT_GRID = 4
PROJECTOR_PREFIX = "projector."
LORA_PREFIX = "lora."
# CPU matmul kernels are prepared once per input shape, which costs seconds; rounding the
# batch width up keeps the number of distinct shapes (and so that cost) small.
PAD_MULTIPLE = 8
KV_CACHES = ("static", "dynamic")
# A forward's fixed cost, in positions, when a block of new tokens is split into runs of rows.
SEGMENT_OVERHEAD = 16
# A decode step skips rows that have stopped unless fewer than this many stopped rows lie
# between two runs of live ones (a forward's fixed cost, in rows; an estimate).
DECODE_GAP = 4
ANSWER_SLOT_MULTIPLE = 4


class Projector(nn.Module):
    """Pooled image features (N, T, C) -> language-model embeddings (N, T, d).

    The input LayerNorm makes the projector indifferent to the trunk's feature scale. With
    ``grid`` set, a learned row and a learned column embedding are added per cell, so the
    language model knows where on the 2-D grid each token lies (the trunk's features say what
    is there, only weakly where).
    """

    def __init__(self, hidden_size: int, feature_dim: int = FEATURE_DIM, grid: int | None = None) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(feature_dim)
        self.up = nn.Linear(feature_dim, hidden_size)
        self.act = nn.GELU()
        self.out = nn.Linear(hidden_size, hidden_size)
        self.grid = grid
        if grid is not None:
            self.row = nn.Parameter(torch.zeros(grid, hidden_size))
            self.column = nn.Parameter(torch.zeros(grid, hidden_size))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        tokens = self.out(self.act(self.up(self.norm(features))))  # (N, T, d)
        if self.grid is None:
            return tokens
        cells = (self.row[:, None, :] + self.column[None, :, :]).flatten(0, 1)  # (g*g, d), row-major
        return tokens + cells.to(tokens.dtype)


@dataclass(frozen=True)
class VisionSpec:
    """How images become tokens: the pooled grid, the intermediate block, grid positions."""

    grid: int = DEFAULT_GRID
    mid_block: int | None = None
    positions: bool = False  # learned 2-D grid position embeddings in the projector

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> VisionSpec:
        """Read from a weights config; keys absent from older weights take the old defaults."""
        return cls(
            int(config.get("grid", DEFAULT_GRID)), config.get("mid_block"), bool(config.get("positions"))
        )

    def as_dict(self) -> dict[str, Any]:
        return {"grid": self.grid, "mid_block": self.mid_block, "positions": self.positions}

    def encoder(self, device: torch.device | str, cache: Path | None | bool) -> VisionEncoder:
        return VisionEncoder(grid=self.grid, device=device, cache=cache, mid_block=self.mid_block)

    def projector(self, hidden_size: int) -> Projector:
        grid = self.grid if self.positions else None
        return Projector(hidden_size, feature_dim(self.mid_block), grid)


@dataclass
class EmbeddedBatch:
    """A left-padded batch ready for the language model."""

    inputs_embeds: torch.Tensor  # (B, L, d)
    attention_mask: torch.Tensor  # (B, L) long
    position_ids: torch.Tensor  # (B, L)
    layout: TokenLayout
    answer_ids: torch.Tensor  # (B, T), right-padded
    answer_token_mask: torch.Tensor  # (B, T) bool


class EmbeddedVLM(VisionLanguageModel):
    """The offline default backend (``--model embedded``); see the module docstring."""

    system_prompt = SYSTEM_PROMPT

    def __init__(
        self,
        lm: nn.Module,
        tokenizer: Any,
        projector: Projector,
        vision: VisionEncoder,
        *,
        device: torch.device | str = "cpu",
        weights_info: dict[str, Any] | None = None,
        kv_cache: str = "static",
    ) -> None:
        super().__init__(BACKEND, device)
        self.kv_cache = _kv_cache_kind(kv_cache)
        self.lm = lm
        self.tokenizer = tokenizer
        self.projector = projector.to(self.device)
        self.vision = vision
        self.weights_info = weights_info or {}
        self.image_tokens = vision.grid**2
        # Image positions hold a real id only so that every row is a valid token sequence;
        # their embeddings are always replaced by the projected image features.
        self.image_token_id = int(tokenizer.pad_token_id)
        self.eos_id = int(tokenizer.eos_token_id)
        self.stop_ids = [self.eos_id, *self._optional_ids("<|endoftext|>")]

    # --- loading -----------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        device: str | torch.device = "cpu",
        weights_dir: str | Path | None = None,
        *,
        untrained: bool = False,
        vision: VisionSpec | None = None,
        feature_cache: bool = True,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> EmbeddedVLM:
        """Load the language model, vision trunk and trained projector (+ merged LoRA).

        ``untrained=True`` builds a seeded random projector for ``vision`` instead (alignment
        starts there); trained weights carry their own vision settings in their config.
        ``dtype=torch.bfloat16`` casts the language model (after the LoRA merge) and runs its
        matmuls in bfloat16, as alignment's autocast did; on CPUs with AMX or AVX512-BF16 this
        is the fast path for generation. The small projector stays in float32. As for every
        backend, the config hash ignores the dtype (an adapter loads in either precision).
        """
        lm, tokenizer = load_smollm(device)
        hidden = int(lm.config.hidden_size)
        cache = None if feature_cache else False
        if untrained:
            spec = vision or VisionSpec()
            torch.manual_seed(seed)
            return cls(
                lm.to(dtype),
                tokenizer,
                spec.projector(hidden),
                spec.encoder(device, cache),
                device=device,
                weights_info={"untrained": True},
            )
        folder = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
        config, tensors = read_weights(folder)
        spec = VisionSpec.from_config(config)
        projector = spec.projector(hidden)
        projector.load_state_dict(_strip_prefix(tensors, PROJECTOR_PREFIX))
        lora = _strip_prefix(tensors, LORA_PREFIX)
        if lora:
            lm = merge_lora(lm, lora, config.get("lora", {}))
        info = {
            "weights_sha256": _file_digest(folder / WEIGHTS_FILE),
            **spec.as_dict(),
            "lora": config.get("lora"),
        }
        lm.to(dtype)
        return cls(lm, tokenizer, projector, spec.encoder(device, cache), device=device, weights_info=info)

    def with_kv_cache(self, kind: str) -> EmbeddedVLM:
        """The same weights, decoding with another KV cache: ``"static"`` (preallocated, the
        default) or ``"dynamic"`` (grown by concatenation every step, as transformers'
        ``DynamicCache`` does and as this backend did before; benchmarks measure against it).
        The copy shares the language model, so use it while no layer hook is attached: a hook
        added through the original reads the original's layout, which the copy does not set."""
        other = copy.copy(self)
        other.kv_cache = _kv_cache_kind(kind)
        return other

    # --- interface ---------------------------------------------------------------------------

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return self.lm.model.layers

    @property
    def hidden_size(self) -> int:
        return int(self.lm.config.hidden_size)

    @property
    def decoder_config(self) -> Any:
        return self.lm.config

    def prompt_tokens(self, image: ImageInput, prompt: Prompt) -> int:
        before, after = self._prompt_pieces(prompt)
        return len(before) + self.image_tokens + len(after)

    def image_grid(self, num_tokens: int) -> tuple[int, int]:
        grid = self.vision.grid
        if num_tokens != grid * grid:
            raise ModelError(f"{self.name}: an image is {grid}x{grid} tokens, not {num_tokens}")
        return grid, grid

    def config_dict(self) -> dict[str, Any]:
        return {
            "backend": BACKEND,
            "language_model": "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised)",
            "vision": self.vision.tag,
            "image_tokens": self.image_tokens,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "system_prompt": self.system_prompt,
            **self.weights_info,
        }

    def render_prompt(self, prompt: Prompt) -> str:
        """SmolLM2's chat template with our short system prompt and the image placeholder."""
        turns = as_conversation(prompt)
        messages, image_placed = [], False
        for role, content in turns:
            if role not in ("system", "user", "assistant"):
                raise ModelError(
                    f"{self.name}: unknown role {role!r} in prompt (use system, user, assistant)"
                )
            if IMAGE_PLACEHOLDER in content:
                raise ModelError(f"{self.name}: prompt text must not contain {IMAGE_PLACEHOLDER!r}")
            if role == "user" and not image_placed:
                content, image_placed = f"{IMAGE_PLACEHOLDER}\n{content}", True
            messages.append({"role": role, "content": content})
        if not image_placed:
            raise ModelError(f"{self.name}: prompt has no user turn to hold the image")
        if messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        opened = opens_answer(turns)
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=not opened, continue_final_message=opened
        )

    def encode_images(self, images: Sequence[Image.Image | str | Path]) -> list[EncodedImage]:
        """Pooled trunk features per image (cached on disk); the projector runs later, per forward."""
        pil = [_as_pil(image, i) for i, image in enumerate(images)]
        features = self.vision(pil)  # (N, T, C)
        return [EncodedImage(BACKEND, features=row, source=None) for row in features]

    def score(
        self,
        images: Sequence[ImageInput],
        prompts: Sequence[Prompt],
        answers: Sequence[str],
        *,
        layers: Sequence[int] = (),
        append_eos: bool = True,
    ) -> ScoreOutput:
        _check_lengths(images, prompts, answers)
        for layer in layers:
            if not 0 <= layer < self.num_layers:
                raise ModelError(f"{self.name}: layer {layer} out of range (model has {self.num_layers})")
        answer_ids = [self._tokenize(answer) + ([self.eos_id] if append_eos else []) for answer in answers]
        for i, ids in enumerate(answer_ids):
            if not ids:
                raise ModelError(f"{self.name}: answer {i} is empty and append_eos is off: nothing to score")
        batch = self._build_batch(images, prompts, answer_ids)
        self._set_layout(batch.layout)
        try:
            # Registered after any user hook, so the captured states include the user's edits.
            with self.captured_layers(layers) as captured:
                hidden = self.lm.model(
                    inputs_embeds=batch.inputs_embeds,
                    attention_mask=batch.attention_mask,
                    position_ids=batch.position_ids,
                    use_cache=False,
                ).last_hidden_state  # (B, L, d), after the final norm
        finally:
            self._set_layout(None)
        answer_logits = self._answer_logits(hidden, batch.answer_token_mask)
        return ScoreOutput(
            layout=batch.layout,
            hidden_states=captured,
            answer_logits=answer_logits,
            answer_ids=batch.answer_ids,
            answer_token_mask=batch.answer_token_mask,
        )

    @torch.no_grad()
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
    ) -> list[Generation]:
        """KV-cached decoding by our own loop rather than ``lm.generate(inputs_embeds=...)``.

        The loop owns position ids, the layout each step, and log-probs. Reported log-probs
        are the model's own (temperature 1, no top-p), so they equal what ``score`` gives
        for the same tokens whatever sampler picked them.
        """
        _check_lengths(images, prompts)
        _check_budget(self.name, max_new_tokens)
        decode = _Decoder(_sampler(do_sample, temperature, top_p), seed)
        order = self._longest_first(prompts)
        state = self._start_shared(_picked(images, order), _picked(prompts, order), room=max_new_tokens)
        tokens, logprobs, _ = self._decode(state, max_new_tokens, decode)
        return _in_callers_order(self._generations(tokens, logprobs), order)

    @torch.no_grad()
    def generate_two_step(
        self,
        images: Sequence[ImageInput],
        first: Sequence[Prompt],
        follow_up: Callable[[list[Generation]], Sequence[Prompt]],
        *,
        first_tokens: int,
        second_tokens: int,
    ) -> tuple[list[Generation], list[Generation]]:
        """Step 2 continues step 1's KV cache: only its new tokens are prefilled.

        Step 2 replays step 1 as earlier turns (step-1 request, the analysis as the assistant
        turn), so its rendered prompt starts with step 1's prompt and the generated analysis.
        A row continues only when that holds token for token; any other row (a step 2 that
        quotes the analysis in one turn, an analysis that would tokenize differently) is
        generated again from scratch, as are all rows while a layer hook is attached (hooks
        expect the image in the prefill they see).
        """
        _check_lengths(images, first)
        _check_budget(self.name, first_tokens)
        _check_budget(self.name, second_tokens)
        decode = _Decoder(None, None)
        order = self._longest_first(first)  # every list below is in this order
        images, first = _picked(images, order), _picked(first, order)
        state = self._start_shared(images, first, room=first_tokens)
        tokens, logprobs, state = self._decode(state, first_tokens, decode)
        analyses = self._generations(tokens, logprobs)
        second = list(follow_up(_in_callers_order(analyses, order)))
        _check_lengths(images, second)
        second = _picked(second, order)
        hooked = self._hooked()
        blocks = [
            None if hooked else self._continuation(first[b], analyses[b], second[b], state.fed)
            for b in range(len(second))
        ]
        answers: list[Generation | None] = [None] * len(second)
        rows = [b for b, block in enumerate(blocks) if block is not None]
        if rows:
            continued = self._continue(state, blocks, second_tokens, decode)
            for b in rows:
                answers[b] = continued[b]
        rest = [b for b, block in enumerate(blocks) if block is None]
        if rest:
            fresh = self.generate(_picked(images, rest), _picked(second, rest), max_new_tokens=second_tokens)
            for b, generation in zip(rest, fresh, strict=True):
                answers[b] = generation
        done = [a for a in answers if a is not None]
        return _in_callers_order(analyses, order), _in_callers_order(done, order)

    def _longest_first(self, prompts: Sequence[Prompt]) -> list[int]:
        """Rows by the length of their text after the image, longest first (ties in order).

        Rows of like length then sit next to each other, so a block of new tokens can be
        prefilled in a few runs of rows, each padded only to its own longest row.
        """
        lengths = [len(self._prompt_pieces(p)[1]) for p in prompts]
        return sorted(range(len(prompts)), key=lambda b: (-lengths[b], b))

    def _start_shared(
        self, images: Sequence[ImageInput], prompts: Sequence[Prompt], room: int
    ) -> _DecodeState:
        """Prefill the rows, computing each shared (image, text before it) prefix only once.

        The K prompts of one example share the system turn and the image, which is most of a
        step-1 prompt. Each distinct prefix is prefilled once, its cache rows are repeated for
        the rows that share it, and each row's own text is prefilled after it, left-padded with
        the padding masked and positions continuing the prefix's. Rows that share nothing (or
        a model with layer hooks) take the plain batched prefill. The cache is allocated once,
        with ``room`` slots after the prompts for the tokens to be generated.
        """
        pieces = [self._prompt_pieces(p) for p in prompts]
        keys = [(id(image), tuple(before)) for image, (before, _) in zip(images, pieces, strict=True)]
        distinct = list(dict.fromkeys(keys))
        if len(distinct) == len(keys) or self._hooked():
            batch = self._batch_of(images, pieces, None)
            return self._start(
                batch.inputs_embeds, batch.attention_mask, batch.position_ids, batch.layout, room
            )
        first_row = {key: keys.index(key) for key in distinct}
        prefix = self._batch_of(
            [images[first_row[key]] for key in distinct], [(list(key[1]), []) for key in distinct], None
        )
        afters = [after for _, after in pieces]
        state = self._start(
            prefix.inputs_embeds,
            prefix.attention_mask,
            prefix.position_ids,
            prefix.layout,
            _block_width(afters) + room,
        )
        index = torch.tensor([distinct.index(key) for key in keys], device=self.device)
        state.cache.reorder_cache(index)  # (U, ...) -> (B, ...): each row gets its prefix's cache
        lengths = prefix.attention_mask.sum(1)[index].tolist()  # real prefix tokens per row
        shared = _DecodeState(state.cache, state.mask[index], state.last_position[index], 0, None)
        return self._prefill_block(shared, afters, lengths)

    def _prefill_block(
        self, state: _DecodeState, rows: Sequence[list[int] | None], starts: Sequence[int]
    ) -> _DecodeState:
        """Prefill each row's new tokens after what its cache holds, left-padded in the block.

        ``starts[b]`` is row b's next position id (its real length so far). A row given None
        gets one masked token; its output is not used. In a preallocated cache the block runs
        as a few forwards over runs of adjacent rows (``_segments``), each run's tokens
        right-aligned in the block's slots and padded only to the run's longest row, so a
        block of short and long prompts does not pay for padding every short row to the longest.
        """
        width = _block_width(rows)
        ids, mask, positions = self._block_tensors(rows, starts, width)
        segments = [slice(0, len(rows))]
        if isinstance(state.cache, StaticCache) and state.cache.is_initialized:
            segments = _segments([len(row) if row else 1 for row in rows])
        if len(segments) == 1:
            return self._prefill(state, self._embed_tokens(ids), mask, positions, _text_layout(mask))
        held = state.mask.shape[1]
        hidden = []
        for rows_in in segments:
            cut = width - _block_width(rows[rows_in])  # leading slots all padding for these rows
            run = _DecodeState(
                _rows_view(state.cache, rows_in, held + cut),
                torch.cat([state.mask[rows_in], mask[rows_in, :cut]], dim=1),
                state.last_position[rows_in],
                0,
                None,
            )
            part = mask[rows_in, cut:]
            embeds = self._embed_tokens(ids[rows_in, cut:])
            hidden.append(
                self._prefill(run, embeds, part, positions[rows_in, cut:], _text_layout(part)).hidden
            )
        for layer in state.cache.layers:
            layer.cumulative_length.fill_(held + width)
        full_mask = torch.cat([state.mask, mask], dim=1)
        return _DecodeState(state.cache, full_mask, positions[:, -1:], 0, torch.cat(hidden))

    def _block_tensors(
        self, rows: Sequence[list[int] | None], starts: Sequence[int], width: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, width) token ids, attention mask and position ids, each row left-padded."""
        size = len(rows)
        ids = torch.full((size, width), self.image_token_id, dtype=torch.long)
        mask = torch.zeros(size, width, dtype=torch.long)
        positions = torch.zeros(size, width, dtype=torch.long)
        for b, (row, start) in enumerate(zip(rows, starts, strict=True)):
            tokens = row or [self.image_token_id]
            ids[b, width - len(tokens) :] = torch.tensor(tokens)
            mask[b, width - len(tokens) :] = 1 if row else 0
            positions[b, width - len(tokens) :] = torch.arange(start, start + len(tokens))
        return ids.to(self.device), mask.to(self.device), positions.to(self.device)

    def _start(
        self,
        embeds: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        layout: TokenLayout,
        room: int,
    ) -> _DecodeState:
        """Prefill ``embeds`` into a fresh cache preallocated for them and ``room`` more positions.

        A preallocated (static) cache writes each decode step in place; a growing one copies
        every layer's keys and values at every step, which costs decoding about a quarter of
        its time on a CPU at trace-generation batch sizes.
        """
        capacity = _round_up(mask.shape[1] + room, PAD_MULTIPLE)
        cache = (
            StaticCache(config=self.lm.config, max_cache_len=capacity)
            if self.kv_cache == "static"
            else DynamicCache(config=self.lm.config)
        )
        state = _DecodeState(cache, mask.new_zeros(mask.shape[0], 0), positions[:, :0], 0, None)
        return self._prefill(state, embeds, mask, positions, layout)

    def _prefill(
        self,
        state: _DecodeState,
        embeds: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        layout: TokenLayout,
    ) -> _DecodeState:
        """Run new positions ``embeds`` (B, S, d) through the cache; the last one predicts next."""
        full_mask = torch.cat([state.mask, mask], dim=1)
        self._set_layout(layout)
        try:
            hidden = self.lm.model(
                inputs_embeds=embeds,
                attention_mask=full_mask,
                position_ids=positions,
                cache=state.cache,
                use_cache=True,
            ).last_hidden_state[:, -1]  # (B, d): left padding puts every row's last token here
        finally:
            self._set_layout(None)
        return _DecodeState(state.cache, full_mask, positions[:, -1:], 0, hidden)

    def _decode(
        self, state: _DecodeState, max_new_tokens: int, decode: _Decoder
    ) -> tuple[torch.Tensor, torch.Tensor, _DecodeState]:
        """Greedy or sampled tokens after a prefill: (B, T) ids, (B, T) log-probs, the new state.

        In the returned state, ``fed`` counts the generated tokens that went into the cache
        (all but the last one); after a row's stop token its slots hold padding or, once the row
        leaves the decode steps (static cache), nothing.
        """
        size = state.mask.shape[0]
        mask, positions, hidden = state.mask, state.last_position, state.hidden
        chosen: list[torch.Tensor] = []
        chosen_logp: list[torch.Tensor] = []
        finished = torch.zeros(size, dtype=torch.bool, device=self.device)
        stop = torch.tensor(self.stop_ids, device=self.device)
        # Rows that stopped are left out of later steps, which writes nothing into their cache
        # slots: only a preallocated cache can be written a few rows at a time, and hooks
        # expect every row at every step. Step 2 masks those slots (``_continue``).
        skip_stopped = isinstance(state.cache, StaticCache) and not self._hooked()
        try:
            for step in range(max_new_tokens):
                logits = self.lm.lm_head(hidden).float()  # (B, V)
                token = decode.pick(logits, chosen)  # (B,)
                token = torch.where(finished, torch.full_like(token, self.image_token_id), token)
                chosen.append(token)
                chosen_logp.append(torch.log_softmax(logits, -1).gather(-1, token[:, None]).squeeze(-1))
                live = (~finished).tolist()  # rows whose token this step is real (or their stop)
                finished = finished | torch.isin(token, stop)
                if bool(finished.all()) or step + 1 == max_new_tokens:
                    break
                mask = torch.cat([mask, mask.new_ones(size, 1)], dim=1)
                positions = positions + 1
                runs = _live_runs(live) if skip_stopped else [slice(0, size)]
                hidden = self._decode_step(state.cache, token, mask, positions, hidden, runs)
        finally:
            self._set_layout(None)
        fed = len(chosen) - 1
        return (
            torch.stack(chosen, 1),
            torch.stack(chosen_logp, 1),
            _DecodeState(state.cache, mask, positions, fed, None),
        )

    def _decode_step(
        self,
        cache: Cache,
        token: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        hidden: torch.Tensor,
        runs: list[slice],
    ) -> torch.Tensor:
        """Feed one token per row of ``runs`` (all rows: one forward); other rows keep ``hidden``."""
        if runs == [slice(0, token.shape[0])]:
            return self._step_forward(cache, token, mask, positions)
        held = mask.shape[1] - 1  # cache slots written before this token
        hidden = hidden.clone()
        for rows in runs:
            view = _rows_view(cache, rows, held)
            hidden[rows] = self._step_forward(view, token[rows], mask[rows], positions[rows])
        for layer in cache.layers:
            layer.cumulative_length.fill_(held + 1)
        return hidden

    def _step_forward(
        self, cache: Cache, token: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        """One generated token per row through ``cache``: the (rows, d) states predicting the next."""
        self._set_layout(TokenLayout.decode_step(token.shape[0], self.device))
        return self.lm.model(
            inputs_embeds=self._embed_tokens(token[:, None]),
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
        ).last_hidden_state[:, -1]

    def _continuation(
        self, first: Prompt, analysis: Generation, second: Prompt, fed: int
    ) -> tuple[list[int], int] | None:
        """Row's step-2 tokens still to feed, and how many of its analysis tokens the cache keeps.

        The image sits between the two pieces of a prompt; the text before it must be the
        same, and the text after it follows the one continuation rule of ``continuation``.
        """
        first_before, first_after = self._prompt_pieces(first)
        second_before, second_after = self._prompt_pieces(second)
        if second_before != first_before:
            return None
        return continuation(first_after, second_after, analysis.token_ids, fed)

    def _continue(
        self,
        state: _DecodeState,
        blocks: list[tuple[list[int], int] | None],
        max_new_tokens: int,
        decode: _Decoder,
    ) -> list[Generation]:
        """Prefill each row's remaining step-2 tokens after its analysis, then decode.

        Cache positions after a row's stop (padding, or never written) are masked out, and the new
        tokens' positions continue each row's own count, as a fresh prompt's would.
        """
        history = state.mask.clone()
        prompt_width = state.mask.shape[1] - state.fed
        starts = []
        for b, block in enumerate(blocks):
            in_cache = block[1] if block else state.fed
            history[b, prompt_width + in_cache :] = 0  # after the row's stop: padding or unwritten
            starts.append(int(history[b].sum()))
        rows = [block[0] if block else None for block in blocks]
        cache = _with_room(
            state.cache, history.shape[1] + _block_width(rows) + max_new_tokens, self.lm.config
        )
        resumed = _DecodeState(cache, history, state.last_position, 0, None)
        prefilled = self._prefill_block(resumed, rows, starts)
        tokens, logprobs, _ = self._decode(prefilled, max_new_tokens, decode)
        return self._generations(tokens, logprobs)

    def _answer_logits(self, hidden: torch.Tensor, answer_token_mask: torch.Tensor) -> torch.Tensor:
        """Logits predicting each answer token, (B, T, V), left-aligned as ``ScoreOutput`` wants.

        Left padding puts every answer at the end of its row, so the states predicting answer
        tokens are a window at the end of the batch; only it goes through the head (a full
        (B, L, 49152) logits tensor would cost more than the answer needs). The window is
        rounded up for the same reason as the sequence width (see ``PAD_MULTIPLE``).
        """
        size, width = answer_token_mask.shape
        seq_len = hidden.shape[1]
        slots = min(_round_up(max(width, 1), ANSWER_SLOT_MULTIPLE), seq_len - 1)
        window = hidden[:, seq_len - 1 - slots : seq_len - 1]  # (B, S, d): predicts the last S tokens
        logits = self.lm.lm_head(window)  # (B, S, V)
        lengths = answer_token_mask.sum(1, keepdim=True)  # (B, 1)
        # Row b's t_b answer tokens are predicted by the last t_b states of the window.
        index = (slots - lengths + torch.arange(width, device=hidden.device)).clamp(0, slots - 1)  # (B, T)
        picked = logits.gather(1, index.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))  # (B, T, V)
        return picked.masked_fill(~answer_token_mask.unsqueeze(-1), 0.0)

    # --- batch assembly ----------------------------------------------------------------------

    def project(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """Projected image tokens (N, T, d), under the caller's grad mode (alignment trains this).

        Raw images are encoded together in one batch, as ``encode_images`` would encode them.
        """
        raw = [i for i, image in enumerate(images) if not isinstance(image, EncodedImage)]
        pictures = [_as_pil(images[i], i) for i in raw]
        encoded = dict(zip(raw, self.encode_images(pictures), strict=True)) if raw else {}
        rows = [self._features(encoded.get(i, image), i) for i, image in enumerate(images)]
        features = torch.stack(rows)  # (N, T, C)
        return self.projector(features.to(self.device))

    def _build_batch(
        self, images: Sequence[ImageInput], prompts: Sequence[Prompt], answer_ids: list[list[int]] | None
    ) -> EmbeddedBatch:
        """Left-pad prompt (+ answer) rows and scatter projected image tokens into their embeddings."""
        return self._batch_of(images, [self._prompt_pieces(p) for p in prompts], answer_ids)

    def _batch_of(
        self,
        images: Sequence[ImageInput],
        pieces: Sequence[tuple[list[int], list[int]]],
        answer_ids: list[list[int]] | None,
    ) -> EmbeddedBatch:
        """The batch of rows ``before + image tokens + after (+ answer)``, from token pieces."""
        rows, image_rows, answer_rows = [], [], []
        for i, (before, after) in enumerate(pieces):
            answer = answer_ids[i] if answer_ids is not None else []
            rows.append(before + [self.image_token_id] * self.image_tokens + after + answer)
            image_rows.append((len(before), len(before) + self.image_tokens))
            answer_rows.append(len(answer))
        width = _round_up(max(len(row) for row in rows), PAD_MULTIPLE)
        limit = int(getattr(self.lm.config, "max_position_embeddings", 8192))
        if width > limit:
            raise ModelError(f"{self.name}: a prompt of {width} tokens exceeds the model's {limit}")
        size = len(rows)
        ids = torch.full((size, width), self.image_token_id, dtype=torch.long)
        image_mask = torch.zeros(size, width, dtype=torch.bool)
        answer_mask = torch.zeros(size, width, dtype=torch.bool)
        attention = torch.zeros(size, width, dtype=torch.long)
        for b, row in enumerate(rows):
            pad = width - len(row)
            ids[b, pad:] = torch.tensor(row)
            attention[b, pad:] = 1
            start, end = image_rows[b]
            image_mask[b, pad + start : pad + end] = True
            if answer_rows[b]:
                answer_mask[b, width - answer_rows[b] :] = True
        ids, attention = ids.to(self.device), attention.to(self.device)
        image_mask, answer_mask = image_mask.to(self.device), answer_mask.to(self.device)
        embeds = self._embed_tokens(ids)  # (B, L, d)
        image_embeds = self.project(images).to(embeds.dtype)  # (B, T_img, d)
        embeds = embeds.masked_scatter(image_mask.unsqueeze(-1), image_embeds)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)  # (B, L): padding does not shift positions
        answers = answer_ids or [[] for _ in rows]
        answer_width = max((len(a) for a in answers), default=0)
        answer_tensor = torch.full((size, answer_width), self.image_token_id, dtype=torch.long)
        answer_token_mask = torch.zeros(size, answer_width, dtype=torch.bool)
        for b, answer in enumerate(answers):
            answer_tensor[b, : len(answer)] = torch.tensor(answer, dtype=torch.long)
            answer_token_mask[b, : len(answer)] = True
        layout = TokenLayout(attention.bool(), image_mask, answer_mask)
        return EmbeddedBatch(
            embeds,
            attention,
            positions,
            layout,
            answer_tensor.to(self.device),
            answer_token_mask.to(self.device),
        )

    def _prompt_pieces(self, prompt: Prompt) -> tuple[list[int], list[int]]:
        """Token ids before and after the image placeholder of the rendered prompt."""
        before, after = self.render_prompt(prompt).split(IMAGE_PLACEHOLDER, 1)
        return self._tokenize(before), self._tokenize(after)

    def _tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm.get_input_embeddings()(ids)

    def _features(self, image: ImageInput, index: int) -> torch.Tensor:
        if isinstance(image, EncodedImage):
            if image.backend != BACKEND or not isinstance(image.features, torch.Tensor):
                raise ModelError(
                    f"{self.name}: image {index} was encoded by backend {image.backend!r}, not {BACKEND!r}"
                )
            expected = (self.image_tokens, self.vision.feature_dim)
            if tuple(image.features.shape) != expected:
                raise ModelError(
                    f"{self.name}: image {index} has features {tuple(image.features.shape)}, "
                    f"expected {expected}"
                )
            return image.features
        raise ModelError(f"{self.name}: image {index} is a {type(image).__name__}, expected an EncodedImage")

    def _generations(self, tokens: torch.Tensor, logprobs: torch.Tensor) -> list[Generation]:
        """Cut each row after its first stop token; the text drops special tokens."""
        results = []
        stops = set(self.stop_ids)
        for row_tokens, row_logp in zip(tokens.tolist(), logprobs.tolist(), strict=True):
            end = next((t + 1 for t, tok in enumerate(row_tokens) if tok in stops), len(row_tokens))
            kept = row_tokens[:end]
            text = self.tokenizer.decode(kept, skip_special_tokens=True)
            results.append(Generation(text=text, token_ids=kept, token_logprobs=row_logp[:end]))
        return results

    def _optional_ids(self, token: str) -> list[int]:
        token_id = self.tokenizer.get_vocab().get(token)
        return [] if token_id is None or token_id == self.eos_id else [int(token_id)]


# --- helpers ---------------------------------------------------------------------------------


def read_weights(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The shipped (or trained) projector folder: its JSON config and tensors."""
    weights, config_path = folder / WEIGHTS_FILE, folder / CONFIG_FILE
    if not weights.is_file():
        raise ModelError(
            f"embedded model: no trained projector at {weights}; run `sdrt align` to train one, "
            "or load with untrained=True for a random projector"
        )
    try:
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        tensors = load_file(weights)
    except (OSError, ValueError) as exc:
        raise ModelError(f"embedded model: cannot read {folder}: {exc}") from exc
    return config, tensors


def merge_lora(lm: nn.Module, lora_state: dict[str, torch.Tensor], lora_config: dict[str, Any]) -> nn.Module:
    """Fold alignment-time LoRA into the language model so inference runs the plain model."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    try:
        config = LoraConfig(
            r=int(lora_config["r"]),
            lora_alpha=int(lora_config["alpha"]),
            target_modules=list(lora_config["target_modules"]),
            lora_dropout=0.0,
        )
    except KeyError as exc:
        raise ModelError(f"embedded model: LoRA weights present but config lacks {exc}") from exc
    peft_model = get_peft_model(lm, config)
    result = set_peft_model_state_dict(peft_model, lora_state)
    if result.unexpected_keys:
        raise ModelError(f"embedded model: LoRA weights do not fit SmolLM2: {result.unexpected_keys[:3]}")
    merged = peft_model.merge_and_unload()
    return merged.eval().requires_grad_(False)


def _picked(items: Sequence[Any], order: Sequence[int]) -> list[Any]:
    return [items[i] for i in order]


def _in_callers_order(items: Sequence[Any], order: Sequence[int]) -> list[Any]:
    """Undo ``_picked``: ``items[j]`` belongs to the caller's row ``order[j]``."""
    out: list[Any] = [None] * len(order)
    for j, row in enumerate(order):
        out[row] = items[j]
    return out


def _text_layout(mask: torch.Tensor) -> TokenLayout:
    none = torch.zeros_like(mask, dtype=torch.bool)
    return TokenLayout(mask.bool(), none, none.clone())


def _segments(lengths: Sequence[int], overhead: int = SEGMENT_OVERHEAD) -> list[slice]:
    """Runs of adjacent rows, each padded to its own longest row, that cost the fewest padded
    positions plus ``overhead`` positions per forward (dynamic programming over cut points;
    no library partitions a sequence this way)."""
    count = len(lengths)
    best = [0] + [float("inf")] * count
    cut = [0] * (count + 1)
    for end in range(1, count + 1):
        longest = 0
        for start in range(end - 1, -1, -1):
            longest = max(longest, lengths[start])
            cost = best[start] + (end - start) * _round_up(longest, PAD_MULTIPLE) + overhead
            if cost < best[end]:
                best[end], cut[end] = cost, start
    runs, end = [], count
    while end > 0:
        runs.append(slice(cut[end], end))
        end = cut[end]
    return runs[::-1]


def _live_runs(live: Sequence[bool], gap: int = DECODE_GAP, multiple: int = PAD_MULTIPLE) -> list[slice]:
    """Runs of adjacent rows covering every live row, for one decode step.

    Runs closer than ``gap`` stopped rows are merged (a forward costs more than a few padded
    rows), and each run is widened to a multiple of ``multiple`` rows, so that decoding meets
    few distinct batch shapes (each costs the CPU kernels a preparation).
    """
    size = len(live)
    runs: list[list[int]] = []
    for row, alive in enumerate(live):
        if not alive:
            continue
        if runs and row - runs[-1][1] < gap:
            runs[-1][1] = row + 1
        else:
            runs.append([row, row + 1])
    widened: list[list[int]] = []
    for start, stop in runs:
        width = _round_up(stop - start, multiple)
        stop = min(size, start + width)
        start = max(0, stop - width)
        if widened and start <= widened[-1][1]:
            widened[-1][1] = max(widened[-1][1], stop)
        else:
            widened.append([start, stop])
    return [slice(start, stop) for start, stop in widened]


def _rows_view(cache: StaticCache, rows: slice, length: int) -> StaticCache:
    """A cache over ``rows`` of ``cache`` that writes into the same storage, next at slot
    ``length`` (the rows' leading block slots stay empty and masked)."""
    view = copy.copy(cache)
    view.layers = []
    for layer in cache.layers:
        part = copy.copy(layer)
        part.keys, part.values = layer.keys[rows], layer.values[rows]  # views: writes land in cache
        part.cumulative_length = torch.tensor(length, device=layer.keys.device)
        view.layers.append(part)
    return view


def _kv_cache_kind(kind: str) -> str:
    if kind not in KV_CACHES:
        raise ModelError(f"embedded: unknown kv_cache {kind!r}; known: {', '.join(KV_CACHES)}")
    return kind


def _block_width(rows: Sequence[Sequence[int] | None]) -> int:
    """Width of a left-padded block of new tokens (a row given None takes one masked slot)."""
    return _round_up(max(len(row) if row else 1 for row in rows), PAD_MULTIPLE)


def _with_room(cache: Cache, capacity: int, config: Any) -> Cache:
    """``cache`` itself if it holds ``capacity`` positions (a dynamic one always does), else a
    larger copy of what it holds."""
    if not isinstance(cache, StaticCache) or cache.get_max_length() >= capacity:
        return cache
    held = int(cache.get_seq_length())
    larger = StaticCache(config=config, max_cache_len=_round_up(capacity, PAD_MULTIPLE))
    for index, layer in enumerate(cache.layers):
        larger.update(layer.keys[:, :, :held], layer.values[:, :, :held], index)
    return larger


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _strip_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key.removeprefix(prefix): value for key, value in tensors.items() if key.startswith(prefix)}


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _as_pil(image: Any, index: int) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, str | Path):
        path = Path(image)
        if not path.is_file():
            raise DataError(f"image {index}: file not found: {path}")
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except OSError as exc:
            raise DataError(f"image {index}: cannot read {path}: {exc}") from exc
    raise ModelError(
        f"embedded: image {index} is a {type(image).__name__}, expected a PIL image or EncodedImage"
    )


def _check_lengths(*columns: Sequence[Any]) -> None:
    sizes = [len(column) for column in columns]
    if len(set(sizes)) != 1:
        raise ModelError(f"embedded: images, prompts (and answers) differ in length: {sizes}")
    if sizes[0] == 0:
        raise ModelError("embedded: empty batch")


@dataclass
class _DecodeState:
    """A KV cache and what continuing it needs."""

    cache: Cache
    mask: torch.Tensor  # (B, cached) attention over every cached position
    last_position: torch.Tensor  # (B, 1) position id of the last fed token
    fed: int  # generated tokens fed into the cache by the last decode loop
    hidden: torch.Tensor | None  # (B, d) last state, which predicts the next token


class _Decoder:
    """Greedy argmax, or draws from a tempered / nucleus-filtered distribution."""

    def __init__(self, sampler: LogitsProcessorList | None, seed: int | None) -> None:
        self.sampler = sampler
        self.generator = torch.Generator(device="cpu").manual_seed(seed) if seed is not None else None

    def pick(self, logits: torch.Tensor, chosen: list[torch.Tensor]) -> torch.Tensor:
        return _pick(logits, chosen, self.sampler, self.generator)


def _check_budget(name: str, max_new_tokens: int) -> None:
    if max_new_tokens < 1:
        raise ModelError(f"{name}: max_new_tokens must be >= 1, got {max_new_tokens}")


def _sampler(do_sample: bool, temperature: float, top_p: float) -> LogitsProcessorList | None:
    if not do_sample:
        return None
    if temperature <= 0 or not 0 < top_p <= 1:
        raise ModelError(f"embedded: need temperature > 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature)])
    if top_p < 1:
        warpers.append(TopPLogitsWarper(top_p))
    return warpers


def _pick(
    logits: torch.Tensor,
    chosen: list[torch.Tensor],
    sampler: LogitsProcessorList | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Greedy argmax, or a draw from the tempered / nucleus-filtered distribution."""
    if sampler is None:
        return logits.argmax(-1)
    history = torch.stack(chosen, 1) if chosen else logits.new_zeros(logits.shape[0], 0, dtype=torch.long)
    warped = sampler(history, logits)
    probs = torch.softmax(warped, -1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)
