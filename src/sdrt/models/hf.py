"""Hugging Face transformers backend: any image-text-to-text model with its processor.

Every batch is built the same way, whether the caller passes PIL images or ``EncodedImage``
handles: each image is first encoded once (``encode_images``), the rendered prompts get the
image placeholder expanded by the processor's own replacement text, rows are tokenized,
answers appended, and the batch is left-padded by the tokenizer. Keeping one path means a
prompt scores the same however its image arrived, and ``generate`` and ``score`` see the same
prompt tokens and positions.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoProcessor,
    DynamicCache,
    PreTrainedModel,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLProcessor,
)
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

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

BACKEND = "hf"
ROLES = ("system", "user", "assistant")
if TYPE_CHECKING:
    from sdrt.models.registry import LoadOptions

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Families whose every image is one square raster of tokens, row by row (``image_grid``).
SINGLE_GRID_MODEL_TYPES = ("llava",)
# Keys of a config that say nothing about the architecture; they must not change the config hash.
_VOLATILE_CONFIG_KEYS = {"transformers_version", "_name_or_path", "dtype", "torch_dtype", "_commit_hash"}
# Processor outputs that belong to the text, not to the image.
_TEXT_KEYS = {
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "mm_token_type_ids",
    "text_replacement_offsets",
}


# --- processors that load without torchvision ---------------------------------------------------


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """Qwen2-VL's processor minus the video processor, whose construction requires torchvision."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs) -> None:
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):  # noqa: N801 (mirrors the transformers name)
    """Qwen2.5-VL's processor minus the video processor, whose construction requires torchvision."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs) -> None:
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


_IMAGE_ONLY_PROCESSORS: dict[str, type[ProcessorMixin]] = {
    "qwen2_vl": ImageOnlyQwen2VLProcessor,
    "qwen2_5_vl": ImageOnlyQwen2_5_VLProcessor,
}
# Registered so that AutoProcessor finds a saved image-only processor by its class name.
AutoProcessor.register(Qwen2VLConfig, ImageOnlyQwen2VLProcessor, exist_ok=True)
AutoProcessor.register(Qwen2_5_VLConfig, ImageOnlyQwen2_5_VLProcessor, exist_ok=True)


# --- encoded images ------------------------------------------------------------------------------


@dataclass
class HFImageFeatures:
    """One image prepared for this model, reusable across any number of prompts.

    ``placeholder_text`` is what the processor puts in the prompt in place of the image token
    (its count of image tokens depends on the image size). ``vision_features`` is the projected
    vision-tower output (N, d) when the model accepts precomputed encoder outputs, and then
    ``pixel_inputs`` keeps only the non-pixel inputs (e.g. Qwen2-VL's ``image_grid_thw``);
    otherwise ``pixel_inputs`` are fed again and only the preprocessing is saved.
    """

    config_hash: str
    placeholder_text: str
    num_image_tokens: int
    pixel_inputs: dict[str, torch.Tensor]
    vision_features: torch.Tensor | None = None


@dataclass
class _Batch:
    """A left-padded batch ready for the model, with the layout hooks must see."""

    model_inputs: dict[str, Any]
    layout: TokenLayout
    answer_lengths: list[int] = field(default_factory=list)


@dataclass
class _Cached:
    """A KV cache and, per row, which of its slots are real and where the row's positions are."""

    cache: Any
    mask: torch.Tensor  # (B, C): 1 where a slot holds one of the row's own tokens
    last: torch.Tensor  # (B,) or (S, B): position id of the row's last token fed, per rotary section

    def resumed(self, plans: Sequence[tuple[list[int], int] | None], fed: int) -> _Cached:
        """The state step 2 continues from: per row, only ``kept`` of the ``fed`` analysis slots."""
        mask = self.mask.clone()
        width = mask.shape[1] - fed  # slots up to the end of step 1's prompt
        kept = torch.tensor([plan[1] if plan else 0 for plan in plans], device=mask.device)
        for b, keep in enumerate(kept.tolist()):
            mask[b, width + keep :] = 0
        return _Cached(self.cache, mask, self.last + kept)


# --- loading -------------------------------------------------------------------------------------


def _parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _load_config(name_or_path: str) -> Any:
    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError, KeyError) as err:
        raise ModelError(f"{name_or_path}: cannot read a model config (config.json): {err}") from err
    if type(config) not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING:
        raise ModelError(
            f"{name_or_path}: model type {config.model_type!r} is not an image-text-to-text model "
            "(no AutoModelForImageTextToText class for it)"
        )
    return config


def _load_processor(name_or_path: str, model_type: str) -> ProcessorMixin:
    """The model's processor; image-only variants stand in where video processors cannot load."""
    missing = (
        f"{name_or_path}: no usable processor (needs a tokenizer, an image processor and their "
        "config files: tokenizer.json / tokenizer_config.json, processor_config.json or "
        "preprocessor_config.json)"
    )
    try:
        processor = AutoProcessor.from_pretrained(name_or_path)
    except (OSError, ValueError, ImportError, TypeError, AttributeError) as err:
        fallback = _IMAGE_ONLY_PROCESSORS.get(model_type)
        if fallback is None:
            raise ModelError(f"{missing}: {err}") from err
        try:
            processor = fallback.from_pretrained(name_or_path)
        except (OSError, ValueError, TypeError) as fallback_err:
            raise ModelError(f"{missing}: {fallback_err}") from fallback_err
    has_parts = all(getattr(processor, part, None) is not None for part in ("tokenizer", "image_processor"))
    if not isinstance(processor, ProcessorMixin) or not has_parts:
        raise ModelError(f"{missing}: found only {type(processor).__name__}")
    return processor


# --- the backend ---------------------------------------------------------------------------------


class HFVisionLanguageModel(VisionLanguageModel):
    """A frozen transformers VLM behind the SDRT model interface.

    Vision features are reused (``encode_images`` runs the vision tower once per image and
    later calls pass ``mm_encoder_outputs``) for every model whose forward accepts precomputed
    encoder outputs: in transformers 5.x that includes LLaVA, LLaVA-NeXT, Qwen2-VL,
    Qwen2.5-VL, Idefics3 and SmolVLM. Other models reuse only the image preprocessing and run
    the vision tower on every call.
    """

    def __init__(
        self, model: PreTrainedModel, processor: ProcessorMixin, name: str, device: str | None = None
    ) -> None:
        """``device``: where inputs go; by default the model's own (a sharded model's first part)."""
        super().__init__(name, device=device or model.device)
        self.model = model.eval().requires_grad_(False)
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_token: str = processor.image_token
        self.image_token_id: int = int(self.model.config.image_token_id)
        self._forward_params = set(inspect.signature(self.model.forward).parameters)
        self._config_hash: str | None = None
        if self.tokenizer.pad_token_id is None:
            raise ModelError(f"{name}: the tokenizer has no pad token; batches cannot be left-padded")

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike, options: LoadOptions | None = None
    ) -> HFVisionLanguageModel:
        """Load model and processor from a local folder (or a hub id when online).

        ``options`` give the dtype (bfloat16 for a 7B model on one GPU), a ``device_map``
        (``"auto"`` spreads a larger model over the GPUs; the model is then not moved) and the
        attention implementation.
        """
        from sdrt.models.registry import LoadOptions

        options = options or LoadOptions()
        name = str(name_or_path)
        config = _load_config(name)
        processor = _load_processor(name, config.model_type)
        extra: dict[str, Any] = {}
        if options.device_map:
            extra["device_map"] = options.device_map
        if options.attn_implementation:
            extra["attn_implementation"] = options.attn_implementation
        try:
            model = AutoModelForImageTextToText.from_pretrained(
                name, dtype=_parse_dtype(options.dtype), **extra
            )
        except (OSError, ValueError, ImportError) as err:
            raise ModelError(f"{name}: cannot load the model weights: {err}") from err
        if not options.device_map:
            model = model.to(options.device)
        return cls(model, processor, name, device=options.device)

    # --- descriptive properties -------------------------------------------------------------

    @property
    def decoder_layers(self) -> nn.ModuleList:
        for owner in self._decoder_candidates():
            layers = getattr(owner, "layers", None)
            if isinstance(layers, nn.ModuleList):
                return layers
        raise ModelError(f"{self.name}: cannot find the language model's decoder layers")

    def _decoder_candidates(self) -> Iterator[nn.Module]:
        if hasattr(self.model, "get_decoder"):
            yield self.model.get_decoder()
        inner = getattr(self.model, "model", None)
        for holder in (inner, self.model):
            for attr in ("language_model", "text_model"):
                module = getattr(holder, attr, None)
                if isinstance(module, nn.Module):
                    yield module

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.get_text_config().hidden_size)

    @property
    def decoder_config(self) -> Any:
        return self.model.config.get_text_config()

    def prompt_tokens(self, image: ImageInput, prompt: Prompt) -> int:
        return len(self._prompt_ids(prompt, self._features([image])[0]))

    def image_grid(self, num_tokens: int) -> tuple[int, int]:
        """LLaVA-1.5-style models give every image one square raster of patch tokens; others
        (Qwen2-VL's size-dependent grids, Idefics3's tiles, LLaVA-NeXT's crops) are refused."""
        model_type = self.model.config.model_type
        side = math.isqrt(num_tokens)
        if model_type not in SINGLE_GRID_MODEL_TYPES or side * side != num_tokens:
            raise ModelError(
                f"{self.name}: {model_type} images are not one square token grid here "
                f"({num_tokens} tokens); grid mixing knows {', '.join(SINGLE_GRID_MODEL_TYPES)} "
                "and the embedded model"
            )
        return side, side

    @property
    def max_length(self) -> int:
        return int(getattr(self.model.config.get_text_config(), "max_position_embeddings", 1 << 30))

    @property
    def reuses_vision_features(self) -> bool:
        return "mm_encoder_outputs" in self._forward_params and hasattr(self.model, "get_image_features")

    def config_dict(self) -> dict[str, Any]:
        return _drop_volatile(self.model.config.to_dict())

    @property
    def config_hash(self) -> str:
        if self._config_hash is None:
            self._config_hash = super().config_hash
        return self._config_hash

    # --- prompts -----------------------------------------------------------------------------

    def render_prompt(self, prompt: Prompt) -> str:
        if not getattr(self.processor, "chat_template", None):
            raise ModelError(f"{self.name}: the processor has no chat template")
        turns = as_conversation(prompt)
        messages = _chat_messages(turns, self.name)
        opened = opens_answer(turns)
        return self.processor.apply_chat_template(
            messages, add_generation_prompt=not opened, continue_final_message=opened, tokenize=False
        )

    def _prompt_ids(self, prompt: Prompt, image: HFImageFeatures) -> list[int]:
        text = self.render_prompt(prompt)
        if text.count(self.image_token) != 1:
            raise ModelError(
                f"{self.name}: the prompt must hold exactly one image placeholder {self.image_token!r} "
                f"after rendering, found {text.count(self.image_token)}"
            )
        [expanded], _ = self.processor.get_text_with_replacements(
            [text], images_replacements=[image.placeholder_text]
        )
        # The same rule the processor's apply_chat_template uses: a template that writes the BOS
        # itself must not get a second one from the tokenizer.
        bos = self.tokenizer.bos_token
        add_special = not (bos is not None and expanded.startswith(bos))
        return self.tokenizer(expanded, add_special_tokens=add_special)["input_ids"]

    def answer_ids(self, answer: str, append_eos: bool = True) -> list[int]:
        """Token ids of an answer as it follows a prompt: no BOS, optionally the end-of-turn id."""
        ids = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
        return [*ids, self.eos_token_ids[0]] if append_eos else ids

    @property
    def eos_token_ids(self) -> list[int]:
        """Ids that end a generation; the first is the one appended to scored answers."""
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        if eos is None:
            raise ModelError(f"{self.name}: neither the generation config nor the tokenizer names an EOS")
        return [int(e) for e in eos] if isinstance(eos, list | tuple) else [int(eos)]

    # --- images ------------------------------------------------------------------------------

    def encode_images(self, images: Sequence[Image.Image]) -> list[EncodedImage]:
        return [EncodedImage(BACKEND, self._encode_one(image), source=image) for image in images]

    @torch.no_grad()
    def _encode_one(self, image: Image.Image) -> HFImageFeatures:
        if not isinstance(image, Image.Image):
            raise ModelError(f"{self.name}: expected a PIL image, got {type(image).__name__}")
        # The processor itself expands a lone placeholder, which tells us the replacement text
        # and image-token count for this image size without re-implementing family rules.
        processed = self.processor(
            images=[image], text=[self.image_token], return_text_replacement_offsets=True, return_tensors="pt"
        )
        offsets = processed.get("text_replacement_offsets")
        if not offsets or not offsets[0]:
            raise ModelError(
                f"{self.name}: {type(self.processor).__name__} does not report how it expands the image "
                f"placeholder {self.image_token!r}, so prompts cannot reuse encoded images"
            )
        placeholder = offsets[0][0]["replacement"]
        num_tokens = int((processed["input_ids"] == self.image_token_id).sum())
        pixel_inputs = {k: v.to(self.device) for k, v in processed.items() if k not in _TEXT_KEYS}
        features = HFImageFeatures(self.config_hash, placeholder, num_tokens, pixel_inputs)
        if self.reuses_vision_features:
            features.vision_features = self._vision_features(pixel_inputs)
            # The pixels are not needed again; only grid-like inputs that shape positions stay.
            features.pixel_inputs = {k: v for k, v in pixel_inputs.items() if not k.startswith("pixel_")}
        return features

    def _vision_features(self, pixel_inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        params = inspect.signature(self.model.get_image_features).parameters
        accepted = {k: v for k, v in pixel_inputs.items() if k in params}
        output = self.model.get_image_features(**accepted, return_dict=True)
        pooled = output.pooler_output
        return (
            torch.cat(list(pooled), dim=0)
            if isinstance(pooled, list | tuple)
            else pooled.reshape(-1, pooled.shape[-1])
        )  # (N image tokens, d)

    def _features(self, images: Sequence[ImageInput]) -> list[HFImageFeatures]:
        """Features for each row; images repeated by object identity are encoded once."""
        cache: dict[int, HFImageFeatures] = {}
        out = []
        for image in images:
            if isinstance(image, EncodedImage):
                out.append(self._check_encoded(image))
            elif id(image) in cache:
                out.append(cache[id(image)])
            else:
                cache[id(image)] = self._encode_one(image)
                out.append(cache[id(image)])
        return out

    def _check_encoded(self, image: EncodedImage) -> HFImageFeatures:
        features = image.features
        if image.backend != BACKEND or not isinstance(features, HFImageFeatures):
            raise ModelError(
                f"{self.name}: image was encoded by backend {image.backend!r}, not by this model"
            )
        if features.config_hash != self.config_hash:
            raise ModelError(f"{self.name}: image was encoded by a different model (config hash differs)")
        return features

    # --- batches -----------------------------------------------------------------------------

    def _build_batch(
        self, images: Sequence[ImageInput], prompts: Sequence[Prompt], answers: Sequence[Sequence[int]]
    ) -> _Batch:
        if not (len(images) == len(prompts) == len(answers)) or not prompts:
            raise ModelError(
                f"{self.name}: need one image and one prompt per row (and one answer when scoring), "
                f"got {len(images)} images, {len(prompts)} prompts, {len(answers)} answers"
            )
        features = self._features(images)
        rows = [self._prompt_ids(p, f) + list(a) for p, f, a in zip(prompts, features, answers, strict=True)]
        return self._batch_from_ids(rows, features, [len(a) for a in answers])

    def _batch_from_ids(
        self, rows: list[list[int]], features: list[HFImageFeatures], answer_lengths: list[int]
    ) -> _Batch:
        """Left-padded token rows (each ending in its answer's ``answer_lengths`` tokens) + images."""
        longest = max(len(row) for row in rows)
        if longest > self.max_length:
            raise ModelError(
                f"{self.name}: a row has {longest} tokens, more than the model's {self.max_length}; "
                "shorten the prompt (image tokens are never truncated)"
            )
        padded = self.tokenizer.pad(
            {"input_ids": rows}, padding=True, padding_side="left", return_tensors="pt"
        )
        input_ids = padded["input_ids"].to(self.device)  # (B, L)
        attention_mask = padded["attention_mask"].to(self.device)  # (B, L)
        layout = self._layout_of(input_ids, attention_mask, answer_lengths)
        inputs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        inputs |= self._image_inputs(features)
        if "mm_token_type_ids" in self._forward_params:
            inputs["mm_token_type_ids"] = layout.image_mask.long()  # 1 marks image tokens, 0 text
        position_ids = self._position_ids(inputs)
        if position_ids is not None:
            inputs["position_ids"] = position_ids
        return _Batch(inputs, layout, answer_lengths)

    def _layout_of(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, answer_lengths: list[int]
    ) -> TokenLayout:
        real = attention_mask.bool()
        seq_len = input_ids.shape[1]
        positions = torch.arange(seq_len, device=input_ids.device)  # (L,)
        starts = seq_len - torch.tensor(
            answer_lengths, device=input_ids.device
        )  # (B,) left padding: answers end rows
        answer = positions[None, :] >= starts[:, None]  # (B, L)
        image = (input_ids == self.image_token_id) & real & ~answer
        return TokenLayout(real, image, answer & real)

    def _image_inputs(self, features: list[HFImageFeatures]) -> dict[str, Any]:
        """Image inputs of a batch: precomputed vision features when possible, else pixels."""
        if all(f.vision_features is not None for f in features):
            pooled = [f.vision_features for f in features]
            inputs: dict[str, Any] = {
                "mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=pooled)}
            }
            # Non-pixel image inputs (e.g. Qwen2-VL's image_grid_thw) still shape the positions.
            keys = [k for k in features[0].pixel_inputs if not k.startswith("pixel_")]
        else:
            inputs = {}
            keys = list(features[0].pixel_inputs)
        for key in keys:
            parts = [f.pixel_inputs[key] for f in features]
            try:
                inputs[key] = torch.cat(parts, dim=0)
            except RuntimeError as err:
                raise ModelError(
                    f"{self.name}: images of one batch differ in {key} shape; batch same-size images"
                ) from err
        return inputs

    def _position_ids(self, inputs: dict[str, Any]) -> torch.Tensor | None:
        """Position ids exactly as ``generate`` would build them for this prefill.

        Without them a plain forward numbers left-padded rows from the padding, so a row would
        score differently alone and in a batch; families with multimodal rotary positions
        (Qwen2-VL) derive theirs from the attention mask and image grids here too.
        """
        if "position_ids" not in self._forward_params:
            return None
        kwargs = {k: v for k, v in inputs.items() if k != "mm_encoder_outputs"}
        return self.model._prepare_position_ids_for_generation(inputs["input_ids"], kwargs)

    @contextmanager
    def _layout_for(self, layout: TokenLayout) -> Iterator[None]:
        """Each forward inside names its own layout: the batch's first, then one decode step each.

        ``generate`` runs the prefill and then one forward per new token; a pre-hook on the
        model sets the layout before each of them, so layer hooks are told which positions
        they see rather than inferring it from a tensor's shape.
        """
        calls = 0

        def before_forward(module: nn.Module, args: tuple, kwargs: dict) -> None:
            nonlocal calls
            rows = kwargs["input_ids"].shape[0] if kwargs.get("input_ids") is not None else layout.batch_size
            self._set_layout(layout if calls == 0 else TokenLayout.decode_step(rows, self.device))
            calls += 1

        handle = self.model.register_forward_pre_hook(before_forward, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()
            self._set_layout(None)

    # --- generate ----------------------------------------------------------------------------

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
        """Generate for a left-padded batch.

        ``token_logprobs`` are log-softmax of the raw logits (the model's distribution, before
        temperature or top-p), so they equal what ``score`` gives for the same tokens. A row
        that stopped includes its EOS token in ``token_ids``; the padding after it is dropped.
        """
        if max_new_tokens < 1:
            raise ModelError(f"{self.name}: max_new_tokens must be at least 1, got {max_new_tokens}")
        batch = self._build_batch(images, prompts, [[] for _ in prompts])
        prompt_len = batch.layout.seq_len
        if prompt_len + max_new_tokens > self.max_length:
            raise ModelError(
                f"{self.name}: prompt ({prompt_len} tokens) + {max_new_tokens} new tokens exceed the "
                f"model's {self.max_length} positions"
            )
        options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": do_sample}
        if do_sample:
            options |= {"temperature": temperature, "top_p": top_p}
        eos_ids = self.eos_token_ids
        with self._seeded(seed), self._layout_for(batch.layout):
            out = self.model.generate(
                **batch.model_inputs,
                **options,
                eos_token_id=eos_ids,
                pad_token_id=self.tokenizer.pad_token_id,
                return_dict_in_generate=True,
                output_logits=True,
            )
        return self._generations(out, prompt_len, eos_ids)

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
        """Both steps greedy on one KV cache: a shared prefix once, step 2 after step 1.

        Rows of one image share the conversation up to the image and the token after it
        (system turn, user-turn opening, image tokens); each distinct prefix is prefilled
        once and its cache rows repeated, then each row's own text is fed after it. Step 2
        replays step 1 as earlier turns, so its ids start with step 1's prompt: a row then
        feeds only what follows the longest stretch of its analysis that step 2 repeats and
        the cache holds. Slots a row must not see (padding fed after it stopped, a stop token
        the template writes otherwise) are masked, and positions continue each row's own
        count in every rotary section (Qwen2-VL's multimodal ones too: a prefix always ends
        in text, where all sections advance together). Rows whose step 2 does not start with
        step 1's prompt, and every row while a layer hook is attached (hooks expect whole
        forwards), are generated from scratch as the base class does.
        """
        features = self._features(images)  # each image encoded once, for both steps
        encoded = [EncodedImage(BACKEND, f, source=None) for f in features]
        first_ids = [self._prompt_ids(p, f) for p, f in zip(first, features, strict=True)]
        if self._hooked() or "position_ids" not in self._forward_params:
            return super().generate_two_step(
                encoded, first, follow_up, first_tokens=first_tokens, second_tokens=second_tokens
            )
        cached, blocks = self._prefill_shared(features, first_ids)
        analyses, cached, fed = self._feed(cached, blocks, first_tokens)
        second = list(follow_up(analyses))
        plans = [
            continuation(ids, self._prompt_ids(prompt, f), a.token_ids, fed)
            for ids, prompt, f, a in zip(first_ids, second, features, analyses, strict=True)
        ]
        answers: list[Generation | None] = [None] * len(second)
        if any(plans):
            continued, _, _ = self._feed(
                cached.resumed(plans, fed), [p and p[0] for p in plans], second_tokens
            )
            for b, plan in enumerate(plans):
                answers[b] = continued[b] if plan else None
        rest = [b for b, plan in enumerate(plans) if plan is None]
        if rest:
            fresh = self.generate(
                [encoded[b] for b in rest], [second[b] for b in rest], max_new_tokens=second_tokens
            )
            for b, generation in zip(rest, fresh, strict=True):
                answers[b] = generation
        return analyses, [a for a in answers if a is not None]

    def _generations(self, out: Any, prompt_len: int, eos_ids: list[int]) -> list[Generation]:
        new_ids = out.sequences[:, prompt_len:]  # (B, N)
        logprobs = torch.log_softmax(torch.stack(out.logits, dim=1).float(), dim=-1)  # (B, N, V)
        chosen = logprobs.gather(-1, new_ids.unsqueeze(-1)).squeeze(-1)  # (B, N)
        return [
            self._generation(ids, lp, eos_ids)
            for ids, lp in zip(new_ids.tolist(), chosen.tolist(), strict=True)
        ]

    def _prefill_shared(
        self, features: list[HFImageFeatures], rows: list[list[int]]
    ) -> tuple[_Cached, list[list[int]]]:
        """Each distinct (image, prefix) prefilled once, repeated per row; each row's rest of ids."""
        splits = [_prefix_end(ids, self.image_token_id) for ids in rows]
        keys = [(id(f), tuple(ids[:split])) for f, ids, split in zip(features, rows, splits, strict=True)]
        distinct = list(dict.fromkeys(keys))
        owner = [keys.index(key) for key in distinct]
        prefix = self._batch_from_ids(
            [list(key[1]) for key in distinct], [features[b] for b in owner], [0] * len(owner)
        )
        cache = DynamicCache(config=self.model.config)
        self.model(**prefix.model_inputs, cache=cache, use_cache=True, **self._last_logits_only)
        index = torch.tensor([distinct.index(key) for key in keys], device=self.device)
        cache.reorder_cache(index)  # (U, ...) -> (B, ...): each row gets its prefix's cache
        mask = prefix.model_inputs["attention_mask"][index]
        last = prefix.model_inputs["position_ids"][..., -1][..., index]  # (B,) or (S, B)
        return _Cached(cache, mask, last), [ids[split:] for ids, split in zip(rows, splits, strict=True)]

    @property
    def _last_logits_only(self) -> dict[str, Any]:
        return {"logits_to_keep": 1} if "logits_to_keep" in self._forward_params else {}

    def _feed(
        self, cached: _Cached, blocks: Sequence[list[int] | None], max_new_tokens: int
    ) -> tuple[list[Generation], _Cached, int]:
        """Prefill each row's block after what the cache holds, then decode greedily.

        A block is left-padded to the longest (padding masked); None gives a row one masked
        token, whose output is not used. Returns the generations, the cache state after the
        blocks (the last block token's position per row), and how many generated tokens
        went into the cache after the blocks (all but the last).
        """
        size, pad = len(blocks), self.tokenizer.pad_token_id
        width = max(len(block) if block else 1 for block in blocks)
        ids = torch.full((size, width), pad, dtype=torch.long)
        block_mask = torch.zeros(size, width, dtype=torch.long)
        offsets = torch.zeros(size, width, dtype=torch.long)  # position - the row's last cached one
        for b, block in enumerate(blocks):
            tokens = block or [pad]
            ids[b, width - len(tokens) :] = torch.tensor(tokens)
            block_mask[b, width - len(tokens) :] = 1 if block else 0
            offsets[b, width - len(tokens) :] = torch.arange(1, len(tokens) + 1)
        ids, block_mask, offsets = ids.to(self.device), block_mask.to(self.device), offsets.to(self.device)
        mask = torch.cat([cached.mask, block_mask], dim=1)
        positions = cached.last.unsqueeze(-1) + offsets  # (B, W) or (S, B, W)
        blocks_end = mask, positions[..., -1]  # the state after the blocks, before any new token
        eos = torch.tensor(eos_ids := self.eos_token_ids, device=self.device)
        chosen, chosen_logp = [], []
        finished = torch.zeros(size, dtype=torch.bool, device=self.device)
        for step in range(max_new_tokens):
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                cache=cached.cache,
                use_cache=True,
                **self._last_logits_only,
            )
            logits = out.logits[:, -1].float()  # (B, V)
            token = torch.where(finished, torch.full((size,), pad, device=self.device), logits.argmax(-1))
            chosen.append(token)
            chosen_logp.append(torch.log_softmax(logits, -1).gather(-1, token[:, None]).squeeze(-1))
            finished = finished | torch.isin(token, eos)
            if bool(finished.all()) or step + 1 == max_new_tokens:
                break
            ids = token[:, None]
            mask = torch.cat([mask, mask.new_ones(size, 1)], dim=1)
            positions = positions[..., -1:] + 1
        fed = len(chosen) - 1
        tokens, logprobs = torch.stack(chosen, 1).tolist(), torch.stack(chosen_logp, 1).tolist()
        generations = [self._generation(t, lp, eos_ids) for t, lp in zip(tokens, logprobs, strict=True)]
        blocks_mask, last = blocks_end
        after = _Cached(cached.cache, torch.cat([blocks_mask, blocks_mask.new_ones(size, fed)], dim=1), last)
        return generations, after, fed

    def _generation(self, ids: list[int], logprobs: list[float], eos_ids: list[int]) -> Generation:
        end = next((i + 1 for i, token in enumerate(ids) if token in eos_ids), len(ids))
        text = self.tokenizer.decode(ids[:end], skip_special_tokens=True)
        return Generation(text=text, token_ids=ids[:end], token_logprobs=logprobs[:end])

    @contextmanager
    def _seeded(self, seed: int | None) -> Iterator[None]:
        """Seed sampling without disturbing the caller's global random state."""
        if seed is None:
            yield
            return
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield

    # --- score -------------------------------------------------------------------------------

    def score(
        self,
        images: Sequence[ImageInput],
        prompts: Sequence[Prompt],
        answers: Sequence[str],
        *,
        layers: Sequence[int] = (),
        append_eos: bool = True,
    ) -> ScoreOutput:
        ids = [self.answer_ids(answer, append_eos) for answer in answers]
        return self.score_ids(images, prompts, ids, layers=layers)

    def score_ids(
        self,
        images: Sequence[ImageInput],
        prompts: Sequence[Prompt],
        answer_ids: Sequence[Sequence[int]],
        *,
        layers: Sequence[int] = (),
    ) -> ScoreOutput:
        """``score`` on exact answer token ids (for example a generation's), with no re-tokenizing."""
        for layer in layers:
            if not 0 <= layer < self.num_layers:
                raise ModelError(f"{self.name}: layer {layer} out of range (model has {self.num_layers})")
        batch = self._build_batch(images, prompts, answer_ids)
        width = max(batch.answer_lengths)
        inputs = dict(batch.model_inputs)
        if "logits_to_keep" in self._forward_params:
            inputs["logits_to_keep"] = width + 1  # only the positions that predict answer tokens
        with self._layout_for(batch.layout), self.captured_layers(layers) as hidden:
            out = self.model(**inputs, use_cache=False)
        logits = out.logits[:, -(width + 1) : -1] if width else out.logits[:, :0]  # (B, T, V)
        return ScoreOutput(
            layout=batch.layout,
            hidden_states=dict(hidden),
            answer_logits=_left_to_right_aligned(logits, batch.answer_lengths),
            answer_ids=_right_padded(answer_ids, width, self.device),
            answer_token_mask=_right_padded_mask(batch.answer_lengths, width, self.device),
        )


# --- helpers ---------------------------------------------------------------------------------------


def _chat_messages(conversation: list[tuple[str, str]], name: str) -> list[dict[str, Any]]:
    """Conversation -> processor chat messages, the image in the first user turn."""
    if not any(role == "user" for role, _ in conversation):
        raise ModelError(f"{name}: a prompt needs at least one user turn")
    messages = []
    image_placed = False
    for role, text in conversation:
        if role not in ROLES:
            raise ModelError(f"{name}: unknown role {role!r} in prompt; known: {', '.join(ROLES)}")
        content: list[dict[str, str]] = [{"type": "text", "text": text}]
        if role == "user" and not image_placed:
            content.insert(0, {"type": "image"})
            image_placed = True
        messages.append({"role": role, "content": content})
    return messages


def _prefix_end(ids: list[int], image_token_id: int) -> int:
    """Where a row's shareable prefix ends: after its image tokens and the text token after them.

    Ending in text matters: there every rotary section advances by one per token, so the rest
    of the row continues from the prefix's last position whatever the family's scheme.
    No image, or an image too close to the end, shares nothing (the prefix is the first token).
    """
    last_image = max((i for i, token in enumerate(ids) if token == image_token_id), default=-1)
    end = last_image + 2
    return end if last_image > 0 and end < len(ids) else 1


def _left_to_right_aligned(logits: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """Move each row's last ``lengths[b]`` entries to the front: (B, T, V) right-padded with zeros."""
    width = logits.shape[1]
    out = torch.zeros_like(logits)
    for row, n in enumerate(lengths):
        if n:
            out[row, :n] = logits[row, width - n :]
    return out


def _right_padded(rows: Sequence[Sequence[int]], width: int, device: torch.device) -> torch.Tensor:
    out = torch.zeros(len(rows), width, dtype=torch.long, device=device)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(list(row), dtype=torch.long, device=device)
    return out


def _right_padded_mask(lengths: list[int], width: int, device: torch.device) -> torch.Tensor:
    return torch.arange(width, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]


def _drop_volatile(config: Any) -> Any:
    if isinstance(config, dict):
        return {k: _drop_volatile(v) for k, v in config.items() if k not in _VOLATILE_CONFIG_KEYS}
    return config
