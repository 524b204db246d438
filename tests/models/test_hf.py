"""The transformers backend on tiny random VLMs: shapes, positions and equalities, never words."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from generation_checks import assert_answer_opens_with_pause_marks, assert_same_generations
from transformers import LlamaConfig, LlamaForCausalLM

from sdrt.models.base import EncodedImage, Generation, ModelError, TokenLayout
from sdrt.models.hf import HFVisionLanguageModel
from sdrt.models.registry import load_model
from sdrt.models.tiny import tiny_model_path

SHORT = "What colour is the circle?"
LONG = [
    ("system", "Answer briefly."),
    ("user", "How many shapes are there, and which one is left of the square?"),
]


def _image_token_count(model: HFVisionLanguageModel, image, prompt) -> int:
    processed = model.processor(images=[image], text=[model.render_prompt(prompt)], return_tensors="pt")
    return int((processed["input_ids"] == model.image_token_id).sum())


# --- generate --------------------------------------------------------------------------------------


def test_generate_returns_generations_with_token_logprobs(tiny_model, image, other_image):
    gens = tiny_model.generate([image, other_image], [SHORT, LONG], max_new_tokens=6)
    assert len(gens) == 2
    for gen in gens:
        assert isinstance(gen, Generation)
        assert 1 <= gen.num_tokens <= 6
        assert len(gen.token_logprobs) == gen.num_tokens
        assert all(lp <= 0.0 for lp in gen.token_logprobs)
        assert tiny_model.tokenizer.pad_token_id not in gen.token_ids[:-1]


def test_greedy_logprobs_equal_score_of_the_same_tokens(tiny_model, image, other_image):
    images, prompts = [image, other_image], [SHORT, LONG]
    gens = tiny_model.generate(images, prompts, max_new_tokens=6)
    scored = tiny_model.score_ids(images, prompts, [g.token_ids for g in gens])
    token_logp = torch.log_softmax(scored.answer_logits, -1).gather(-1, scored.answer_ids[..., None])[..., 0]
    for row, gen in enumerate(gens):
        torch.testing.assert_close(
            token_logp[row, : gen.num_tokens], torch.tensor(gen.token_logprobs), atol=1e-4, rtol=0
        )
    torch.testing.assert_close(
        scored.answer_logprobs(), torch.tensor([g.logprob for g in gens]), atol=1e-4, rtol=0
    )


def test_seeded_sampling_repeats_and_leaves_global_rng_alone(tiny_model, image):
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = tiny_model.generate([image], [SHORT], max_new_tokens=5, do_sample=True, temperature=1.5, seed=7)
    second = tiny_model.generate([image], [SHORT], max_new_tokens=5, do_sample=True, temperature=1.5, seed=7)
    assert first[0].token_ids == second[0].token_ids
    assert torch.equal(torch.rand(1), expected_next)


# --- score -------------------------------------------------------------------------------------------


def test_score_shapes_masks_and_eos(tiny_model, image, other_image):
    answers = ["red", "two circles"]
    out = tiny_model.score([image, other_image], [SHORT, LONG], answers, layers=[0, 1])
    lengths = [len(tiny_model.answer_ids(a)) for a in answers]
    batch, seq_len = out.layout.attention_mask.shape
    assert out.answer_logits.shape == (2, max(lengths), len(tiny_model.tokenizer))
    assert out.answer_token_mask.sum(1).tolist() == lengths
    assert out.layout.answer_mask.sum(1).tolist() == lengths
    # Left padding: every row's answer ends the row.
    assert out.layout.answer_mask[:, -1].all()
    eos = tiny_model.eos_token_ids[0]
    assert [out.answer_ids[row, n - 1].item() for row, n in enumerate(lengths)] == [eos, eos]
    for layer in (0, 1):
        assert out.hidden_states[layer].shape == (batch, seq_len, tiny_model.hidden_size)
    assert out.answer_hidden(1).shape == (2, max(lengths), tiny_model.hidden_size)


def test_image_mask_counts_the_tokens_the_processor_inserted(tiny_model, image, other_image):
    out = tiny_model.score([image, other_image], [SHORT, LONG], ["yes", "no"])
    expected = [
        _image_token_count(tiny_model, image, SHORT),
        _image_token_count(tiny_model, other_image, LONG),
    ]
    assert out.layout.image_mask.sum(1).tolist() == expected
    assert not (out.layout.image_mask & out.layout.answer_mask).any()


def test_prompt_tokens_match_the_processor_on_raw_images(tiny_model, image, other_image):
    prompts = [SHORT, LONG]
    texts = [tiny_model.render_prompt(p) for p in prompts]
    processed = tiny_model.processor(
        images=[image, other_image], text=texts, padding=True, return_tensors="pt"
    )
    out = tiny_model.score([image, other_image], prompts, ["", ""], append_eos=False)
    assert torch.equal(out.layout.attention_mask.long(), processed["attention_mask"])
    assert torch.equal(out.layout.image_mask, processed["input_ids"] == tiny_model.image_token_id)


def test_hidden_states_equal_what_a_hook_on_the_layer_sees(tiny_model, image, other_image):
    seen: dict[int, torch.Tensor] = {}

    def record(layer: int, hidden: torch.Tensor, layout: TokenLayout) -> None:
        seen[layer] = hidden.detach().clone()

    last = tiny_model.num_layers - 1
    handles = [tiny_model.add_layer_hook(layer, record) for layer in (0, last)]
    try:
        out = tiny_model.score([image, other_image], [SHORT, LONG], ["red", "two"], layers=[0, last])
    finally:
        for handle in handles:
            handle.remove()
    for layer in (0, last):
        assert torch.equal(out.hidden_states[layer], seen[layer])


def test_decoder_layers_are_the_language_models(tiny_model):
    inner = tiny_model.model.model
    text_model = getattr(inner, "language_model", None) or inner.text_model
    assert tiny_model.decoder_layers is text_model.layers
    assert tiny_model.num_layers == 2


# --- left padding ------------------------------------------------------------------------------------


def test_row_alone_equals_row_inside_a_padded_batch(tiny_model, image, other_image):
    alone = tiny_model.score([image], [SHORT], ["red circle"], layers=[1])
    batch = tiny_model.score([image, other_image], [SHORT, LONG], ["red circle", "no"], layers=[1])
    assert batch.layout.attention_mask[0].sum() < batch.layout.seq_len  # row 0 really is padded
    n = int(alone.answer_token_mask[0].sum())
    torch.testing.assert_close(batch.answer_logits[0, :n], alone.answer_logits[0, :n], atol=1e-4, rtol=0)
    torch.testing.assert_close(
        batch.answer_hidden(1)[0, :n], alone.answer_hidden(1)[0, :n], atol=1e-4, rtol=0
    )

    gen_alone = tiny_model.generate([image], [SHORT], max_new_tokens=6)[0]
    gen_batch = tiny_model.generate([image, other_image], [SHORT, LONG], max_new_tokens=6)[0]
    assert gen_batch.token_ids == gen_alone.token_ids
    assert gen_batch.text == gen_alone.text


def test_score_uses_the_positions_of_the_generate_prefill(tiny_model, image, other_image):
    """Rotary models hide a constant position shift, so compare the positions themselves."""
    seen: list[dict] = []

    def record(module, args, kwargs) -> None:
        seen.append({k: kwargs[k] for k in ("position_ids", "position_embeddings")})

    handle = tiny_model.decoder_layers[0].register_forward_pre_hook(record, with_kwargs=True)
    try:
        tiny_model.generate([image, other_image], [SHORT, LONG], max_new_tokens=1)
        scored = tiny_model.score([image, other_image], [SHORT, LONG], ["", ""], append_eos=False)
    finally:
        handle.remove()
    prefill, forward = seen[0], seen[-1]
    real = scored.layout.attention_mask
    assert torch.equal(forward["position_ids"][real], prefill["position_ids"][real])
    assert (forward["position_ids"] * real).amax(1).tolist() == (real.sum(1) - 1).tolist()
    for ours, theirs in zip(forward["position_embeddings"], prefill["position_embeddings"], strict=True):
        assert torch.equal(ours[real], theirs[real])


# --- hooks ---------------------------------------------------------------------------------------------


def test_hooks_see_prefill_layout_then_decode_steps(tiny_model, image, other_image):
    layouts: list[TokenLayout] = []
    shapes: list[tuple[int, ...]] = []

    def record(layer: int, hidden: torch.Tensor, layout: TokenLayout) -> None:
        layouts.append(layout)
        shapes.append(tuple(hidden.shape))

    with tiny_model.add_layer_hook(0, record):
        gens = tiny_model.generate([image, other_image], [SHORT, LONG], max_new_tokens=4)
    prefill = layouts[0]
    assert shapes[0][:2] == (2, prefill.seq_len)
    assert prefill.image_mask.sum(1).tolist() == [
        _image_token_count(tiny_model, image, SHORT),
        _image_token_count(tiny_model, other_image, LONG),
    ]
    assert not prefill.answer_mask.any()
    steps = max(g.num_tokens for g in gens)
    assert len(layouts) == steps  # one prefill + one call per further token
    for layout, shape in zip(layouts[1:], shapes[1:], strict=True):
        assert shape[:2] == (2, 1)
        assert layout.seq_len == 1 and layout.answer_mask.all() and not layout.image_mask.any()
    assert tiny_model._layout is None


def test_a_hook_that_edits_hidden_states_changes_the_outputs(tiny_model, image):
    base = tiny_model.score([image], [SHORT], ["red"])
    base_gen = tiny_model.generate([image], [SHORT], max_new_tokens=3)[0]

    def shift(layer: int, hidden: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        mask = layout.attention_mask[..., None].to(hidden.dtype)  # (B, L, 1)
        return hidden + 3.0 * mask

    with tiny_model.add_layer_hook(0, shift):
        edited = tiny_model.score([image], [SHORT], ["red"])
        edited_gen = tiny_model.generate([image], [SHORT], max_new_tokens=3)[0]
    assert not torch.allclose(edited.answer_logits, base.answer_logits, atol=1e-3)
    assert edited_gen.token_logprobs[0] != pytest.approx(base_gen.token_logprobs[0], abs=1e-4)
    after = tiny_model.score([image], [SHORT], ["red"])
    assert torch.equal(after.answer_logits, base.answer_logits)


def test_score_keeps_the_callers_grad_mode(tiny_model, image):
    def shift(layer: int, hidden: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        return hidden + bias

    bias = torch.zeros(tiny_model.hidden_size, requires_grad=True)
    with tiny_model.add_layer_hook(0, shift):
        out = tiny_model.score([image], [SHORT], ["red"])
    out.answer_logprobs().sum().backward()
    assert bias.grad is not None and bias.grad.abs().sum() > 0


# --- encoded images ------------------------------------------------------------------------------------


def test_encoded_images_score_like_raw_images(tiny_model, image, other_image):
    encoded = tiny_model.encode_images([image, other_image])
    assert all(isinstance(e, EncodedImage) and e.backend == "hf" for e in encoded)
    raw = tiny_model.score([image, other_image], [SHORT, LONG], ["red", "two"], layers=[0])
    reused = tiny_model.score(encoded, [SHORT, LONG], ["red", "two"], layers=[0])
    assert torch.equal(raw.answer_logits, reused.answer_logits)
    assert torch.equal(raw.hidden_states[0], reused.hidden_states[0])
    assert torch.equal(raw.layout.image_mask, reused.layout.image_mask)


def test_encoded_images_skip_preprocessing_and_vision_tower(tiny_model, image, monkeypatch):
    [encoded] = tiny_model.encode_images([image])
    expected = tiny_model.score([encoded], [SHORT], ["red"]).answer_logits

    def refuse(*args, **kwargs):
        raise AssertionError("image work repeated for an encoded image")

    monkeypatch.setattr(tiny_model.processor.image_processor, "preprocess", refuse)
    assert tiny_model.reuses_vision_features
    monkeypatch.setattr(tiny_model.model, "get_image_features", refuse)
    monkeypatch.setattr(tiny_model.model.model, "get_image_features", refuse)
    reused = tiny_model.score([encoded, encoded], [SHORT, LONG], ["red", "no"])
    torch.testing.assert_close(reused.answer_logits[0, : expected.shape[1]], expected[0], atol=1e-5, rtol=0)
    assert tiny_model.generate([encoded], [SHORT], max_new_tokens=2)[0].num_tokens >= 1


def test_pixel_path_matches_vision_feature_reuse(tiny_model, image, monkeypatch):
    """Models that cannot take precomputed vision features get pixels; the result must agree."""
    prompts, answers = [SHORT, LONG], ["red", "no"]
    reused = tiny_model.score([image, image], prompts, answers, layers=[1])
    monkeypatch.setattr(tiny_model, "_forward_params", tiny_model._forward_params - {"mm_encoder_outputs"})
    assert not tiny_model.reuses_vision_features
    encoded = tiny_model.encode_images([image])
    assert encoded[0].features.vision_features is None
    pixels = tiny_model.score(encoded * 2, prompts, answers, layers=[1])
    torch.testing.assert_close(pixels.answer_logits, reused.answer_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(pixels.hidden_states[1], reused.hidden_states[1], atol=1e-5, rtol=0)


def test_foreign_encoded_image_is_refused(tiny_model, image):
    with pytest.raises(ModelError, match="encoded by backend"):
        tiny_model.score([EncodedImage("embedded", object(), image)], [SHORT], ["red"])


# --- prompts and bad input --------------------------------------------------------------------------------


def test_render_prompt_places_image_in_first_user_turn(tiny_model):
    conversation = [
        ("system", "Be brief."),
        ("user", "first question"),
        ("assistant", "ok"),
        ("user", "second"),
    ]
    text = tiny_model.render_prompt(conversation)
    assert text.count(tiny_model.image_token) == 1
    assert text.index("Be brief.") < text.index(tiny_model.image_token) < text.index("first question")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "second"}]}]
    without = tiny_model.processor.apply_chat_template(messages, add_generation_prompt=False, tokenize=False)
    rendered = tiny_model.render_prompt("second")
    assert rendered.startswith(without) and len(rendered) > len(without)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m, im: m.score([im], [SHORT, LONG], ["a", "b"]), "one image and one prompt"),
        (lambda m, im: m.score([im], [SHORT], ["a"], layers=[5]), "layer 5 out of range"),
        (lambda m, im: m.score([im], [[("user", "hi"), ("robot", "hi")]], ["a"]), "unknown role"),
        (lambda m, im: m.generate([im], [[("system", "no user")]]), "user turn"),
        (lambda m, im: m.generate([im], ["x"], max_new_tokens=0), "max_new_tokens"),
        (lambda m, im: m.score([im], [f"{m.image_token} twice"], ["a"]), "exactly one image placeholder"),
        (lambda m, im: m.score(["not an image"], [SHORT], ["a"]), "expected a PIL image"),
    ],
)
def test_bad_input_raises_model_error(tiny_model, image, call, message):
    with pytest.raises(ModelError, match=message):
        call(tiny_model, image)


def test_too_long_prompt_raises_instead_of_truncating(tiny_model, image, monkeypatch):
    prompt_len = tiny_model.score([image], [SHORT], [""], append_eos=False).layout.seq_len
    monkeypatch.setattr(tiny_model.model.config.get_text_config(), "max_position_embeddings", prompt_len)
    with pytest.raises(ModelError, match="never truncated"):
        tiny_model.score([image], [SHORT], ["red"])
    with pytest.raises(ModelError, match="exceed"):
        tiny_model.generate([image], [SHORT], max_new_tokens=3)


def test_config_hash_is_stable_across_loads(tiny_model):
    again = HFVisionLanguageModel.from_pretrained(tiny_model_path(tiny_model.name.removeprefix("tiny:")))
    assert again.config_hash == tiny_model.config_hash
    assert "transformers_version" not in again.config_dict()


# --- loading errors -----------------------------------------------------------------------------------------


def test_folder_without_processor_raises_naming_the_folder(tiny_cache, tmp_path):
    source = tiny_model_path("llava")
    bare = tmp_path / "weights-only"
    bare.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(source / name, bare / name)
    with pytest.raises(ModelError, match=f"{bare}.*processor"):
        HFVisionLanguageModel.from_pretrained(bare)


def test_folder_with_only_a_tokenizer_raises(tiny_cache, tmp_path):
    source = tiny_model_path("idefics3")
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(source / name, tmp_path / name)
    with pytest.raises(ModelError, match=f"{tmp_path}: no usable processor.*image processor"):
        HFVisionLanguageModel.from_pretrained(tmp_path)


def test_model_is_frozen_in_eval_mode(tiny_model):
    assert not tiny_model.model.training
    assert not any(p.requires_grad for p in tiny_model.model.parameters())


def test_text_only_model_folder_raises(tmp_path: Path):
    config = LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    with pytest.raises(ModelError, match=f"{tmp_path}.*not an image-text-to-text"):
        HFVisionLanguageModel.from_pretrained(tmp_path)


def test_missing_folder_and_bad_dtype_raise(tmp_path: Path):
    with pytest.raises(ModelError, match="config"):
        HFVisionLanguageModel.from_pretrained(tmp_path / "nothing-here")
    from pydantic import ValidationError

    from sdrt.config import LoadOptions

    with pytest.raises(ValidationError, match="dtype"):
        HFVisionLanguageModel.from_pretrained(tmp_path, LoadOptions(dtype="float8"))


def test_unknown_tiny_family_raises():
    with pytest.raises(ModelError, match="tiny:foo"):
        load_model("tiny:foo")


# --- step 2 continues step 1's KV cache --------------------------------------------------------


@pytest.mark.parametrize("first_tokens", [10, 2])  # 2: every analysis cut at the budget
def test_two_step_generation_continues_the_cache_and_matches_recomputation(
    tiny_model, image, other_image, first_tokens, monkeypatch
):
    from sdrt.models.base import VisionLanguageModel
    from sdrt.prompts.library import PromptLibrary

    library = PromptLibrary.builtin()
    prompts = [library.get(i) for i in ("image_description", "counting")]
    rows = [(picture, prompt) for picture in (image, other_image) for prompt in prompts]
    question = "What color is the circle?"
    first = [prompt.step1(question) for _, prompt in rows]

    def follow_up(analyses):
        return [prompt.step2(question, a.text) for (_, prompt), a in zip(rows, analyses, strict=True)]

    pictures = tiny_model.encode_images([image, other_image])
    encoded = [pictures[0], pictures[0], pictures[1], pictures[1]]  # as traces pass the K rows of an image
    fed_blocks, prefix_rows = [], []
    real_feed, real_batch = tiny_model._feed, tiny_model._batch_from_ids
    monkeypatch.setattr(
        tiny_model,
        "_feed",
        lambda cached, blocks, n: (
            fed_blocks.append(sum(b is not None for b in blocks)) or real_feed(cached, blocks, n)
        ),
    )
    monkeypatch.setattr(
        tiny_model, "_batch_from_ids", lambda rows, *a: prefix_rows.append(len(rows)) or real_batch(rows, *a)
    )
    kwargs = dict(first_tokens=first_tokens, second_tokens=5)
    continued = tiny_model.generate_two_step(encoded, first, follow_up, **kwargs)
    assert prefix_rows[0] == 2  # two images: their shared prefixes ran for two rows, not four
    assert fed_blocks[0] == 4 and fed_blocks[1] > 0  # step 2 continued the cache, not only the fallback
    monkeypatch.setattr(tiny_model, "_batch_from_ids", real_batch)
    recomputed = VisionLanguageModel.generate_two_step(tiny_model, encoded, first, follow_up, **kwargs)
    assert_same_generations(continued, recomputed)


def test_two_step_generation_recomputes_while_a_hook_is_attached(tiny_model, image, monkeypatch):
    calls = []
    real = tiny_model.generate
    monkeypatch.setattr(tiny_model, "generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    with tiny_model.add_layer_hook(0, lambda layer, hidden, layout: None):
        tiny_model.generate_two_step(
            [image],
            [SHORT],
            lambda a: [[("user", SHORT), ("assistant", a[0].text), ("user", "So?")]],
            first_tokens=3,
            second_tokens=2,
        )
    assert len(calls) == 2  # both steps through the plain path, where hooks see whole forwards


def test_an_opened_answer_is_continued_after_its_pause_marks(tiny_model, image):
    assert_answer_opens_with_pause_marks(tiny_model, image)
