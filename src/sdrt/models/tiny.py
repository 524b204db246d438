"""Tiny randomly initialised VLMs of real transformers classes, built offline.

They exist so that every stage (generation, scoring, hooks, adapters, training) can be tested end
to end on a laptop CPU in seconds, through the same loading path a real checkpoint takes. Each
family uses its real model, processor and image-processor classes; only the sizes are tiny
(hidden 64, 2 decoder layers) and the tokenizer is a small byte-level BPE trained here. The
weights are random, so the generated text is junk: test shapes, positions and equalities.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPVisionConfig,
    GenerationConfig,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaImageProcessorPil,
    LlavaProcessor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
)

from sdrt.models.base import ModelError
from sdrt.models.hf import HFVisionLanguageModel, ImageOnlyQwen2VLProcessor

HIDDEN_SIZE = 64
NUM_LAYERS = 2
NUM_HEADS = 4
VOCAB_SIZE = 600
SEED = 0

# Enough text for BPE to learn merges that cover chat-template words and typical VQA prompts.
_CORPUS = [
    "What is in the image? Answer the question with a single word or phrase.",
    "Describe the image. Which objects matter for the question and how do they relate?",
    "Plan a reasoning path as knowledge triplets (subject, relation, object). Do not answer yet.",
    "Extract the visible text, the layout and the positions of tables, lists and titles.",
    "Given the analysis above, give the final answer. The answer is: yes, no, red, blue, green, 1, 2, 3.",
    "USER: ASSISTANT: user assistant system Assistant: User: How many circles are there? "
    "What colour is the shape? Is the triangle left of the square? Count the objects and read the chart.",
    "0 1 2 3 4 5 6 7 8 9 10 100 % . , ; : ! ? ( ) [ ] { } - + = / * # @ & ' \"",
]


@dataclass(frozen=True)
class _TokenizerSpec:
    """Special tokens and chat template of one family's tokenizer."""

    special_tokens: tuple[str, ...]
    bos: str | None
    eos: str
    pad: str
    unk: str | None
    image_token: str
    chat_template: str


_LLAVA_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{% for item in message['content'] %}{{ item['text'] }}{% endfor %}{{ '\\n' }}"
    "{% else %}{{ message['role'].upper() }}: "
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% else %}{{ item['text'] }}{% endif %}"
    "{% endfor %}"
    "{% if message['role'] == 'assistant' %}</s>{% endif %}{{ '\\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
_QWEN2_VL_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ item['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_IDEFICS3_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}:{% else %}: {% endif %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>{% else %}{{ item['text'] }}{% endif %}"
    "{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)

_TOKENIZER_SPECS = {
    "llava": _TokenizerSpec(
        special_tokens=("<unk>", "<s>", "</s>", "<pad>", "<image>"),
        bos="<s>",
        eos="</s>",
        pad="<pad>",
        unk="<unk>",
        image_token="<image>",
        chat_template=_LLAVA_TEMPLATE,
    ),
    "qwen2-vl": _TokenizerSpec(
        special_tokens=(
            "<|endoftext|>",
            "<|im_start|>",
            "<|im_end|>",
            "<|vision_start|>",
            "<|vision_end|>",
            "<|image_pad|>",
            "<|video_pad|>",
        ),
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        unk=None,
        image_token="<|image_pad|>",
        chat_template=_QWEN2_VL_TEMPLATE,
    ),
    "idefics3": _TokenizerSpec(
        special_tokens=(
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<end_of_utterance>",
            "<fake_token_around_image>",
            "<image>",
            "<global-img>",
            *(f"<row_{row}_col_{col}>" for row in range(1, 7) for col in range(1, 7)),
        ),
        bos="<|begin_of_text|>",
        eos="<end_of_utterance>",
        pad="<|end_of_text|>",
        unk=None,
        image_token="<image>",
        chat_template=_IDEFICS3_TEMPLATE,
    ),
}


def build_tokenizer(family: str) -> PreTrainedTokenizerFast:
    """A byte-level BPE (so any text round-trips) carrying the family's special tokens and template."""
    spec = _TOKENIZER_SPECS[family]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(spec.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=spec.bos,
        eos_token=spec.eos,
        pad_token=spec.pad,
        unk_token=spec.unk,
        chat_template=spec.chat_template,
        extra_special_tokens={"image_token": spec.image_token},
        padding_side="left",
    )


def _text_config(tok: PreTrainedTokenizerFast) -> dict:
    return {
        "vocab_size": len(tok),
        "hidden_size": HIDDEN_SIZE,
        "intermediate_size": 2 * HIDDEN_SIZE,
        "num_hidden_layers": NUM_LAYERS,
        "num_attention_heads": NUM_HEADS,
        "num_key_value_heads": NUM_HEADS // 2,
        "max_position_embeddings": 2048,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }


def _build_llava(tok: PreTrainedTokenizerFast) -> tuple[PreTrainedModel, ProcessorMixin]:
    # 32 px image, 8 px patches: 16 patches + CLS; the "default" strategy drops CLS -> 16 image tokens.
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=LlamaConfig(**_text_config(tok)),
        image_token_id=tok.image_token_id,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    image_processor = LlavaImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=tok.chat_template,
    )
    return LlavaForConditionalGeneration(config), processor


def _build_qwen2_vl(tok: PreTrainedTokenizerFast) -> tuple[PreTrainedModel, ProcessorMixin]:
    text = _text_config(tok) | {
        # mrope splits the rotary half-dimension into (temporal, height, width) sections.
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
    }
    vision = {"depth": 2, "embed_dim": 32, "hidden_size": HIDDEN_SIZE, "num_heads": 2}
    # At most 32x32 px -> a grid of 8x8 patches of 4 px -> 16 image tokens after the 2x2 merge.
    config, processor = qwen2_vl_parts(tok, text, vision, pixels=(16 * 16, 32 * 32), patch=4, merge=2)
    return Qwen2VLForConditionalGeneration(config), processor


def qwen2_vl_parts(
    tok: PreTrainedTokenizerFast,
    text: dict,
    vision: dict,
    *,
    pixels: tuple[int, int],
    patch: int,
    merge: int,
    **config: object,
) -> tuple[Qwen2VLConfig, ImageOnlyQwen2VLProcessor]:
    """A Qwen2-VL config and its processor from text and vision sizes (tests, GPU benchmark).

    ``pixels`` is the image processor's (fewest, most) pixels; ``config`` passes further
    top-level fields (e.g. ``tie_word_embeddings``).
    """
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    section = text["rope_parameters"]["mrope_section"]
    if sum(section) != head_dim // 2:
        raise ModelError(
            f"qwen2-vl config: mrope_section {section} must sum to head_dim / 2 = {head_dim // 2}"
        )
    ids = tok.convert_tokens_to_ids
    qwen_config = Qwen2VLConfig(
        text_config=text,
        vision_config=vision | {"patch_size": patch, "spatial_merge_size": merge, "temporal_patch_size": 2},
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        **config,
    )
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": pixels[0], "longest_edge": pixels[1]},
        patch_size=patch,
        temporal_patch_size=2,
        merge_size=merge,
    )
    processor = ImageOnlyQwen2VLProcessor(
        image_processor=image_processor, tokenizer=tok, chat_template=tok.chat_template
    )
    return qwen_config, processor


def _build_idefics3(tok: PreTrainedTokenizerFast) -> tuple[PreTrainedModel, ProcessorMixin]:
    # 32 px tiles of 8 px patches, pixel-shuffled by 2 -> 4 image tokens per tile; a 64 px image
    # splits into 2x2 tiles + the global view, so its image tokens are not contiguous.
    scale_factor = 2
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    image_seq_len = (vision["image_size"] // vision["patch_size"]) ** 2 // scale_factor**2
    config = Idefics3Config(
        vision_config=vision,
        text_config=LlamaConfig(**_text_config(tok)).to_dict(),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=scale_factor,
    )
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": 64}, max_image_size={"longest_edge": 32}, do_image_splitting=True
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tok,
        image_seq_len=image_seq_len,
        chat_template=tok.chat_template,
    )
    return Idefics3ForConditionalGeneration(config), processor


_BUILDERS: dict[str, Callable[[PreTrainedTokenizerFast], tuple[PreTrainedModel, ProcessorMixin]]] = {
    "llava": _build_llava,
    "qwen2-vl": _build_qwen2_vl,
    "idefics3": _build_idefics3,
}
TINY_FAMILIES = tuple(_BUILDERS)


def _check_family(family: str) -> None:
    if family not in _BUILDERS:
        raise ModelError(f"unknown tiny model family {family!r}; known: {', '.join(TINY_FAMILIES)}")


def build_tiny_model(family: str, out_dir: str | os.PathLike) -> Path:
    """Build the tiny ``family`` model with fixed-seed random weights and save it to ``out_dir``."""
    _check_family(family)
    tok = build_tokenizer(family)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model, processor = _BUILDERS[family](tok)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def tiny_cache_dir() -> Path:
    return Path(os.environ.get("SDRT_CACHE", "~/.cache/sdrt")).expanduser() / "tiny"


def tiny_model_path(family: str) -> Path:
    """Folder of the built tiny model, building it first if needed.

    The build goes to a temporary sibling folder that is renamed into place when complete, so
    an interrupted build never leaves a half-written model behind.
    """
    _check_family(family)
    target = tiny_cache_dir() / family
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{family}-", dir=target.parent))
    try:
        build_tiny_model(family, staging)
        try:
            staging.rename(target)
        except OSError:
            # Another process finished the same build first; its copy is as good as ours.
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def load_tiny_model(family: str, device: str = "cpu") -> HFVisionLanguageModel:
    """The tiny ``family`` model, built once into the cache and loaded like any local checkpoint."""
    from sdrt.models.registry import load_model

    model = load_model(f"tiny:{family}", device=device)
    assert isinstance(model, HFVisionLanguageModel)
    return model
