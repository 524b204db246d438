"""The embedded VLM against the model interface: log-probs, hidden states, layouts, padding, errors.

Uses the shipped projector when present, else a seeded random one: every check here is an
equality or a shape, never the words a model writes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from generation_checks import assert_answer_opens_with_pause_marks, assert_same_generations
from PIL import Image, ImageDraw

from sdrt.data.records import DataError
from sdrt.models.base import EncodedImage, ModelError, TokenLayout

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("gguf")

# Read at collection, before any fixture can point SDRT_CACHE at a fresh temporary folder:
# the converted SmolLM2 lives in the user's cache and converting it again costs a minute.
USER_CACHE = os.environ.get("SDRT_CACHE")


@pytest.fixture(scope="module")
def user_cache():
    """The user's SDRT_CACHE, whatever other test modules set it to."""
    with pytest.MonkeyPatch.context() as patch:
        if USER_CACHE is None:
            patch.delenv("SDRT_CACHE", raising=False)
        else:
            patch.setenv("SDRT_CACHE", USER_CACHE)
        yield


@pytest.fixture(scope="module")
def vlm(user_cache):
    from sdrt.models.embedded import WEIGHTS_DIR, WEIGHTS_FILE, EmbeddedVLM

    untrained = not (WEIGHTS_DIR / WEIGHTS_FILE).is_file()
    return EmbeddedVLM.load(untrained=untrained, feature_cache=False)


def shape_image(colour: str, shape: str) -> Image.Image:
    image = Image.new("RGB", (64, 64), "white")
    draw = ImageDraw.Draw(image)
    if shape == "circle":
        draw.ellipse((12, 12, 52, 52), fill=colour)
    else:
        draw.rectangle((14, 20, 50, 44), fill=colour)
    return image


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    return [shape_image("red", "circle"), shape_image("blue", "rectangle")]


PROMPTS = ["what color is the shape?", "Is there a circle in the image? Answer yes or no, then explain."]


def test_generation_logprobs_equal_score_of_generated_text(vlm, images):
    generations = vlm.generate(images, PROMPTS, max_new_tokens=5)
    for image, prompt, generation in zip(images, PROMPTS, generation_list(generations), strict=True):
        assert len(generation.token_logprobs) == len(generation.token_ids) > 0
        assert "<|im_end|>" not in generation.text and "<|im_start|>" not in generation.text
        ended = generation.token_ids[-1] in vlm.stop_ids
        text_ids = generation.token_ids[:-1] if ended else generation.token_ids
        assert vlm.tokenizer.decode(text_ids, skip_special_tokens=True) == generation.text
        assert vlm._tokenize(generation.text) == text_ids, "generated text must re-tokenise to its own ids"
        with torch.no_grad():
            scored = vlm.score([image], [prompt], [generation.text], append_eos=ended)
        assert scored.answer_logprobs()[0].item() == pytest.approx(generation.logprob, abs=1e-4)


def test_a_back_patched_generation_equals_the_score_of_its_text(vlm, images):
    """The rerun of a back-patch inside the preallocated-cache prefill (whose mask spans every
    slot) sees what a scored forward sees, and writes nothing into the cache."""
    from sdrt.adapters.config import AdapterConfig
    from sdrt.adapters.model import SDRTAdapter

    patch = {"enabled": True, "target_layer": 4, "source_layer": 12, "rank": 4}
    config = AdapterConfig(layers=[4, 20], positions=["answer"], back_patch=patch)
    adapter = SDRTAdapter.for_model(config, vlm)
    with torch.no_grad():
        adapter.back_patch.up.weight.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(0))
        plain = vlm.generate(images, PROMPTS, max_new_tokens=5)
        with adapter.attached(vlm):
            patched = vlm.generate(images, PROMPTS, max_new_tokens=5)
            for image, prompt, generation in zip(images, PROMPTS, patched, strict=True):
                ended = generation.token_ids[-1] in vlm.stop_ids
                scored = vlm.score([image], [prompt], [generation.text], append_eos=ended)
                assert scored.answer_logprobs()[0].item() == pytest.approx(generation.logprob, abs=1e-4)
    assert [g.token_logprobs for g in patched] != [g.token_logprobs for g in plain]


def generation_list(generations):
    assert isinstance(generations, list)
    return generations


def test_hidden_states_have_layer_shape_and_equal_hook_view(vlm, images):
    layers = [0, 7, vlm.num_layers - 1]
    seen: dict[int, torch.Tensor] = {}

    def record(layer: int, hidden: torch.Tensor, layout: TokenLayout) -> None:
        seen[layer] = hidden.detach().clone()

    handles = [vlm.add_layer_hook(layer, record) for layer in layers]
    try:
        with torch.no_grad():
            out = vlm.score(images, PROMPTS, ["red", "yes"], layers=layers)
    finally:
        for handle in handles:
            handle.remove()
    batch, length = out.layout.batch_size, out.layout.seq_len
    for layer in layers:
        assert out.hidden_states[layer].shape == (batch, length, vlm.hidden_size)
        torch.testing.assert_close(out.hidden_states[layer], seen[layer], rtol=0, atol=0)
    assert not torch.equal(out.hidden_states[0], out.hidden_states[layers[-1]])


def test_hook_edit_is_seen_by_captured_states_and_changes_logits(vlm, images):
    with torch.no_grad():
        plain = vlm.score(images[:1], PROMPTS[:1], ["red"], layers=[3])

    def shift(layer: int, hidden: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        return hidden + layout.answer_mask.unsqueeze(-1).to(hidden.dtype)

    with vlm.add_layer_hook(3, shift), torch.no_grad():
        edited = vlm.score(images[:1], PROMPTS[:1], ["red"], layers=[3])
    answer = plain.layout.answer_mask[0]
    torch.testing.assert_close(edited.hidden_states[3][0, answer], plain.hidden_states[3][0, answer] + 1)
    assert not torch.allclose(edited.answer_logits, plain.answer_logits)


def test_layout_counts_image_and_answer_tokens_per_row(vlm, images):
    answers = ["red", "yes it is a circle"]
    with torch.no_grad():
        out = vlm.score(images, PROMPTS, answers)
    layout = out.layout
    assert layout.image_mask.sum(1).tolist() == [vlm.image_tokens] * 2
    expected_answer = [len(vlm._tokenize(a)) + 1 for a in answers]  # + eos
    assert layout.answer_mask.sum(1).tolist() == expected_answer
    assert out.answer_token_mask.sum(1).tolist() == expected_answer
    for row in range(2):
        positions = layout.image_mask[row].nonzero().squeeze(-1)
        assert (positions.diff() == 1).all(), "image tokens must be contiguous"
        assert layout.attention_mask[row, positions].all()
        assert not (layout.image_mask[row] & layout.answer_mask[row]).any()
    assert out.answer_ids[1, expected_answer[1] - 1].item() == vlm.eos_id


def test_left_padding_gives_the_same_answer_logits(vlm, images):
    long_prompt = "Look carefully at every part of the picture before you reply. " * 4 + PROMPTS[1]
    with torch.no_grad():
        alone = vlm.score(images[:1], PROMPTS[:1], ["red"])
        batched = vlm.score([images[0], images[1]], [PROMPTS[0], long_prompt], ["red", "no"])
    assert batched.layout.attention_mask[0].sum() < batched.layout.attention_mask[1].sum()
    width = int(alone.answer_token_mask[0].sum())
    # Logits are O(10) after 30 fp32 layers; a different padding width changes the summation
    # order, hence the small relative term on top of 1e-4.
    torch.testing.assert_close(
        batched.answer_logits[0, :width], alone.answer_logits[0, :width], rtol=1e-5, atol=1e-4
    )
    logprob_alone, logprob_batched = alone.answer_logprobs()[0], batched.answer_logprobs()[0]
    assert logprob_batched.item() == pytest.approx(logprob_alone.item(), abs=1e-4)


def test_left_padding_gives_the_same_greedy_generation(vlm, images):
    long_prompt = "Please be precise. " * 6 + PROMPTS[0]
    alone = vlm.generate(images[:1], PROMPTS[:1], max_new_tokens=3)[0]
    batched = vlm.generate([images[0], images[1]], [PROMPTS[0], long_prompt], max_new_tokens=3)[0]
    assert batched.token_ids == alone.token_ids
    assert batched.token_logprobs == pytest.approx(alone.token_logprobs, abs=1e-4)


def test_hooks_see_prefill_layout_then_decode_steps(vlm, images):
    calls: list[TokenLayout] = []

    def record(layer: int, hidden: torch.Tensor, layout: TokenLayout) -> None:
        assert hidden.shape[:2] == (layout.batch_size, layout.seq_len)
        calls.append(layout)

    with vlm.add_layer_hook(2, record):
        generations = vlm.generate(images, PROMPTS, max_new_tokens=3)
    prefill, *steps = calls
    assert prefill.seq_len > 1
    assert prefill.image_mask.sum(1).tolist() == [vlm.image_tokens] * 2
    assert not prefill.answer_mask.any()
    longest = max(g.num_tokens for g in generations)
    assert len(steps) == longest - 1  # the last chosen token is never fed back
    for step in steps:
        assert step.seq_len == 1 and step.answer_mask.all() and not step.image_mask.any()


def test_encoded_images_reuse_gives_identical_outputs(vlm, images):
    encoded = vlm.encode_images(images)
    assert all(isinstance(e, EncodedImage) and e.backend == "embedded" for e in encoded)
    assert encoded[0].features.shape == (vlm.image_tokens, vlm.vision.feature_dim)
    with torch.no_grad():
        raw = vlm.score(images, PROMPTS, ["red", "yes"])
        first = vlm.score(encoded, PROMPTS, ["red", "yes"])
        second = vlm.score(encoded, PROMPTS[::-1], ["yes", "red"])
    assert torch.equal(raw.answer_logits, first.answer_logits)
    assert not torch.equal(first.answer_logits[0], second.answer_logits[0])  # other prompt, other logits
    assert [g.token_ids for g in vlm.generate(encoded, PROMPTS, max_new_tokens=2)] == [
        g.token_ids for g in vlm.generate(images, PROMPTS, max_new_tokens=2)
    ]


def test_seeded_sampling_is_reproducible(vlm, images):
    first = vlm.generate(
        images, PROMPTS, max_new_tokens=6, do_sample=True, temperature=1.5, top_p=0.9, seed=3
    )
    again = vlm.generate(
        images, PROMPTS, max_new_tokens=6, do_sample=True, temperature=1.5, top_p=0.9, seed=3
    )
    assert [g.token_ids for g in first] == [g.token_ids for g in again]


def test_render_prompt_puts_the_image_in_the_first_user_turn(vlm):
    from sdrt.models.embedded import IMAGE_PLACEHOLDER, SYSTEM_PROMPT

    rendered = vlm.render_prompt([("user", "first"), ("assistant", "reply"), ("user", "second")])
    assert rendered.startswith(f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>")
    assert rendered.count(IMAGE_PLACEHOLDER) == 1
    assert rendered.index(IMAGE_PLACEHOLDER) < rendered.index("first") < rendered.index("second")
    assert rendered.endswith("<|im_start|>assistant\n")
    own_system = vlm.render_prompt([("system", "Be terse."), ("user", "q")])
    assert SYSTEM_PROMPT not in own_system and "Be terse." in own_system


def test_a_question_first_prompt_states_the_question_before_the_image(vlm):
    from sdrt.models.embedded import IMAGE_PLACEHOLDER, SYSTEM_PROMPT
    from sdrt.prompts.library import StudentLayout, direct_prompt

    layout = StudentLayout(question_first=True)
    rendered = vlm.render_prompt(direct_prompt("Which colour?", layout=layout, system=vlm.system_prompt))
    before, after = rendered.split(IMAGE_PLACEHOLDER)
    assert before.startswith(f"<|im_start|>system\n{SYSTEM_PROMPT}\nQuestion: Which colour?<|im_end|>")
    assert after.startswith("\nWhich colour?\n")  # asked again after the image, as the plain prompt asks it
    assert vlm.render_prompt(direct_prompt("Which colour?")).split(IMAGE_PLACEHOLDER)[1] == after


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda m, im: m.encode_images([Path("/nonexistent/picture.png")]), DataError, "picture.png"),
        (lambda m, im: m.generate([42], ["q"]), ModelError, "image 0"),
        (lambda m, im: m.generate(im, ["only one prompt"]), ModelError, "differ in length"),
        (lambda m, im: m.score(im[:1], ["q"], ["a"], layers=[99]), ModelError, "layer 99"),
        (lambda m, im: m.generate([EncodedImage("hf", torch.zeros(16, 1280))], ["q"]), ModelError, "'hf'"),
        (lambda m, im: m.generate(im[:1], ["what is <image>?"]), ModelError, "<image>"),
        (lambda m, im: m.generate(im[:1], [[("system", "only a system turn")]]), ModelError, "no user turn"),
        (lambda m, im: m.generate(im[:1], ["q"], max_new_tokens=0), ModelError, "max_new_tokens"),
    ],
)
def test_bad_input_raises_a_clear_error(vlm, images, call, error, words):
    with pytest.raises(error, match=None) as caught:
        call(vlm, images)
    assert words in str(caught.value)


def test_missing_weights_folder_is_a_clear_error(tmp_path):
    from sdrt.models.embedded import read_weights

    with pytest.raises(ModelError, match="sdrt align"):
        read_weights(tmp_path)


def test_embedded_with_a_weights_folder_loads_those_weights_under_their_own_hash(user_cache, tmp_path):
    from safetensors.torch import load_file, save_file

    from sdrt.models import load_model
    from sdrt.models.embedded import CONFIG_FILE, PROJECTOR_PREFIX, WEIGHTS_DIR, WEIGHTS_FILE

    if not (WEIGHTS_DIR / WEIGHTS_FILE).is_file():
        pytest.skip("needs the shipped weights to derive a candidate from")
    with pytest.raises(ModelError, match="no embedded weights"):
        load_model(f"embedded:{tmp_path / 'nowhere'}")

    shipped = load_model("embedded")
    tensors = load_file(WEIGHTS_DIR / WEIGHTS_FILE)
    name = next(key for key in sorted(tensors) if key.startswith(PROJECTOR_PREFIX))
    tensors[name] = tensors[name] + 0.5  # a candidate alignment run's weights: one tensor moved
    save_file(tensors, tmp_path / WEIGHTS_FILE)
    (tmp_path / CONFIG_FILE).write_text((WEIGHTS_DIR / CONFIG_FILE).read_text())
    candidate = load_model(f"embedded:{tmp_path}")

    assert candidate.name == f"embedded:{tmp_path}"  # what traces and adapters record
    moved = name.removeprefix(PROJECTOR_PREFIX)
    assert torch.equal(candidate.projector.state_dict()[moved], shipped.projector.state_dict()[moved] + 0.5)
    assert candidate.config_hash != shipped.config_hash  # traces of one are refused by the other
    again = load_model(f"embedded:{WEIGHTS_DIR}")
    assert again.config_hash == shipped.config_hash  # the hash is of the weights, not the name


def test_config_dict_names_the_parts(vlm):
    config = vlm.config_dict()
    assert config["backend"] == "embedded" and config["image_tokens"] == vlm.image_tokens
    assert config["hidden_size"] == vlm.hidden_size == vlm.decoder_layers[0].self_attn.q_proj.in_features
    assert len(vlm.config_hash) == 16


# --- alignment -------------------------------------------------------------------------------


def test_align_config_keeps_multi_hop_out():
    from pydantic import ValidationError

    from sdrt.training.align import AlignConfig

    with pytest.raises(ValidationError, match="multi-hop"):
        AlignConfig(mix={"describe": 1.0, "multi-hop": 1.0})


SKILLS = {
    "image_description": "description",
    "image_decomposition": "objects",
    "spatial_relations": "relations",
    "counting": "counts",
    "attribute_comparison": "sizes",
    "planned_reasoning_path": "plan",
    "knowledge_recall": "facts",
}
ALL_POOLS = {"easy-vqa": 1.0, "describe": 1.0, "single-hop": 1.0, "analysis": 1.0, "reasoning": 1.0}


def scene_data(scenes: int = 30):
    from sdrt.data.scenes import make_scenes
    from sdrt.training.align import AlignData, Example

    easy = [Example(i, f"What color is shape {i}?", "red") for i in range(5)]
    return AlignData(torch.zeros(5 + scenes, 1, 1), easy, make_scenes(scenes, seed=3), scene_offset=5)


def test_batches_depend_only_on_seed_and_step_and_come_from_one_pool():
    from sdrt.training.align import AlignConfig, sample_batch

    data = scene_data()
    config = AlignConfig(batch_size=6, scenes=30, mix=ALL_POOLS, analysis_prompts=SKILLS, seed=4)
    batches = [sample_batch(data, config, step) for step in range(60)]
    assert batches == [sample_batch(data, config, step) for step in range(60)]
    assert batches[3] != batches[4]
    assert all(len({item.pool for item in batch}) == 1 for batch in batches)
    assert {batch[0].pool for batch in batches} == set(ALL_POOLS)
    scene_rows = {item.image for batch in batches for item in batch if item.pool != "easy-vqa"}
    assert scene_rows and min(scene_rows) >= 5  # scene images follow the easy-vqa ones


def test_alignment_never_answers_a_multi_hop_question_in_one_step():
    """The reasoning gap by construction: a multi-hop question is answered only after an analysis."""
    from sdrt.training.align import AlignConfig, sample_batch

    data = scene_data()
    config = AlignConfig(batch_size=8, scenes=30, mix=ALL_POOLS, analysis_prompts=SKILLS, seed=1)
    multi_hop = multi_hop_questions(data.scenes)
    answered_after_analysis = 0
    for step in range(150):
        for item in sample_batch(data, config, step):
            has_analysis = any(role == "assistant" for role, _ in item.prompt)
            asked = [q for q in multi_hop if q in item.prompt[-1][1]]
            if item.pool in ("easy-vqa", "describe", "single-hop"):
                assert not asked, item
            elif item.pool == "analysis":
                assert not has_analysis and len(item.answer.split()) > 3  # an analysis, not an answer
            elif asked:
                assert has_analysis
                answered_after_analysis += 1
    assert answered_after_analysis > 20


def multi_hop_questions(scenes) -> set[str]:
    """Every multi-hop question text the generator can ask of these scenes (or altered ones)."""
    import random

    from sdrt.data.scenes import MULTI_HOP_MAKERS, _View

    texts = set()
    for scene in scenes:
        view = _View(scene)
        for make in MULTI_HOP_MAKERS:
            for trial in range(20):
                question = make(view, random.Random(trial))
                if question is not None:
                    texts.add(question.question)
    return texts


def description_step_2_items(steps: int, scenes: int = 30, **shares: Any):
    """(image's scene, item) of step-2 batches that show the description analysis."""
    from sdrt.training.align import AlignConfig, sample_batch

    data = scene_data(scenes)
    config = AlignConfig(
        batch_size=8,
        scenes=scenes,
        mix={"reasoning": 1.0},
        analysis_prompts={"image_description": "description"},
        seed=2,
        **shares,
    )
    for step in range(steps):
        for item in sample_batch(data, config, step):
            yield data.scenes[item.image - data.scene_offset], item


def told_scene(scene, item):
    """The scene the item's description analysis tells of (same seed and index as the image's,
    so the same question stream)."""
    from dataclasses import replace

    from sdrt.data.scenes import SceneObject, description_objects

    shown = item.prompt[1][1]  # the analysis, replayed as the assistant turn
    objects = tuple(
        SceneObject(shape, colour, size, position, 0.5)
        for position, (size, colour, shape) in enumerate(description_objects(shown))
    )
    return replace(scene, objects=objects)


def test_reasoning_items_answer_from_the_analysis_they_show():
    """Altered analyses: the answer is computed on the scene the text describes, not the image's."""
    from sdrt.data.scenes import scene_questions

    altered = 0
    for scene, item in description_step_2_items(20, altered_share=0.5):
        altered += item.prompt[1][1] != scene.description
        told = told_scene(scene, item)
        asked = item.prompt[-1][1]
        answers = {
            q.answer
            for kind in ("single-hop", "multi-hop")
            for q in scene_questions(told, kind, 3)
            if f": {q.question}\n" in asked
        }
        assert answers == {item.answer}, (item.prompt[1][1], asked)
    assert 40 <= altered <= 120


def test_multi_hop_step_2_can_be_asked_of_altered_scenes_only():
    """multi_hop_altered_share=1: a multi-hop step-2 item never shows its image's own description."""
    from sdrt.data.scenes import description_objects, scene_questions

    faithful = {True: [], False: []}  # keyed by "the question is single-hop"
    for scene, item in description_step_2_items(30, altered_share=0.0, multi_hop_altered_share=1.0):
        shown = description_objects(item.prompt[1][1])  # the analysis, replayed
        seen = [(o.size, o.colour, o.shape) for o in scene.objects]
        asked = item.prompt[-1][1]
        single_hop = any(f": {q.question}\n" in asked for q in scene_questions(scene, "single-hop", 3))
        faithful[single_hop].append(shown == seen)
    assert len(faithful[False]) > 100 and len(faithful[True]) > 30
    assert all(faithful[True])  # altered_share=0: single-hop questions see their own scene
    # A swap of two identical objects leaves the text as it was: rare, never the rule.
    assert sum(faithful[False]) <= 0.03 * len(faithful[False])


def test_balanced_step_2_reads_rare_multi_hop_types_about_as_often_as_common_ones():
    """balance_multi_hop_types: the types few scenes offer are asked several times as often."""
    from collections import Counter

    from sdrt.data.scenes import MULTI_HOP_MAKERS, scene_questions

    def type_counts(**options: Any) -> Counter:
        asked: Counter = Counter()
        for scene, item in description_step_2_items(100, 300, multi_hop_altered_share=1.0, **options):
            prompt = item.prompt[-1][1]
            for question in scene_questions(told_scene(scene, item), "multi-hop", None):
                asked[question.question_type] += f": {question.question}\n" in prompt
        return asked

    balanced, as_drawn = type_counts(balance_multi_hop_types=True), type_counts()
    assert len(balanced) == len(MULTI_HOP_MAKERS) and sum(balanced.values()) > 400
    rarest = sorted(as_drawn, key=as_drawn.__getitem__)[:3]  # same colour, counts: 27 of 632
    assert sum(balanced[t] for t in rarest) >= 2.5 * sum(as_drawn[t] for t in rarest), (balanced, as_drawn)
    assert min(balanced.values()) >= 0.25 * max(balanced.values()), balanced  # 22 and 72 here


def test_step_2_reads_three_hop_questions_only_from_altered_analyses():
    """reasoning_three_hop_share: a share of step-2 multi-hop items asks the harder kind, each
    answered on the scene its analysis tells of, and never beside its image's own description."""
    from collections import Counter

    from sdrt.data.scenes import THREE_HOP_MAKERS, description_objects, scene_questions

    kinds: Counter = Counter()
    three_hop_types: Counter = Counter()
    faithful = 0
    options = {"multi_hop_altered_share": 1.0, "reasoning_three_hop_share": 0.5}
    for scene, item in description_step_2_items(60, 300, balance_multi_hop_types=True, **options):
        told, asked = told_scene(scene, item), item.prompt[-1][1]
        matches = {
            kind: [q for q in scene_questions(told, kind, None) if f": {q.question}\n" in asked]
            for kind in ("single-hop", "multi-hop", "three-hop")
        }
        (kind,) = [kind for kind, found in matches.items() if found]
        kinds[kind] += 1
        assert {q.answer for q in matches[kind]} == {item.answer}
        if kind == "three-hop":
            three_hop_types[matches[kind][0].question_type] += 1
            seen = [(o.size, o.colour, o.shape) for o in scene.objects]
            faithful += description_objects(item.prompt[1][1]) == seen
    chained = kinds["multi-hop"] + kinds["three-hop"]
    assert 0.4 <= kinds["three-hop"] / chained <= 0.6, kinds  # scenes of one object fall back
    assert len(three_hop_types) == len(THREE_HOP_MAKERS), three_hop_types  # the rare one included
    # A swap of two identical objects leaves the text as it was: rare, never the rule.
    assert faithful <= 0.03 * kinds["three-hop"]


def test_reasoning_batches_of_recorded_runs_are_drawn_as_before():
    """Without multi_hop_altered_share the step-2 stream is the one the shipped weights saw."""
    import hashlib

    from sdrt.training.align import AlignConfig, sample_batch

    config = AlignConfig(
        batch_size=8, scenes=30, mix={"reasoning": 1.0}, analysis_prompts=SKILLS, altered_share=0.5, seed=5
    )
    data = scene_data()
    stream = repr([sample_batch(data, config, step) for step in range(10)])
    # Fingerprint of this stream before the multi-hop share existed: a changed draw order would
    # make the recorded alignment commands train other weights.
    assert hashlib.sha256(stream.encode()).hexdigest()[:16] == "af0e334b3c0cb929"


def test_killed_alignment_resumes_to_the_same_weights(user_cache, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from sdrt.models.embedded import WEIGHTS_FILE
    from sdrt.training import align as alignment

    def config(out: Path) -> alignment.AlignConfig:
        return alignment.AlignConfig(
            out=out,
            steps=2,
            batch_size=2,
            easyvqa_limit=12,
            checkpoint_every=1,
            eval_questions=0,
            lora_rank=2,
            bf16=False,  # the resume is what is checked (the test below aligns in bfloat16): on a CPU
            # without bfloat16 units it is emulated, and these three runs would take 9x as long
        )

    straight = load_file(alignment.align(config(tmp_path / "straight")) / WEIGHTS_FILE)
    real_step, calls = alignment.train_step, []

    def dies_on_second_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(alignment, "train_step", dies_on_second_step)
    with pytest.raises(KeyboardInterrupt):
        alignment.align(config(tmp_path / "killed"))
    monkeypatch.setattr(alignment, "train_step", real_step)
    resumed = load_file(alignment.align(config(tmp_path / "killed")) / WEIGHTS_FILE)
    log = (tmp_path / "killed" / "train_log.txt").read_text()
    assert "resumed from" in log and "at step 1" in log
    assert resumed.keys() == straight.keys() and any(k.startswith("lora.") for k in resumed)
    for key, value in straight.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=1e-6)


# --- step 2 continues step 1's KV cache --------------------------------------------------------


@pytest.mark.parametrize("first_tokens", [24, 3])  # 3: analyses cut at the budget, none stopped
@pytest.mark.parametrize("narrow_runs", [False, True])  # True: decode steps only the live rows
def test_two_step_generation_continues_the_cache_and_matches_recomputation(
    vlm, images, first_tokens, narrow_runs, monkeypatch
):
    from functools import partial

    from sdrt.models import embedded
    from sdrt.models.base import VisionLanguageModel
    from sdrt.prompts.library import PromptLibrary

    if narrow_runs:  # six rows would otherwise be widened to one run of all of them
        monkeypatch.setattr(embedded, "_live_runs", partial(embedded._live_runs, gap=1, multiple=1))

    library = PromptLibrary.builtin()
    prompts = [library.get(i) for i in ("image_description", "counting", "planned_reasoning_path")]
    rows = [(image, prompt) for image in images for prompt in prompts]
    question = "What color is the shape?"
    first = [prompt.step1(question) for _, prompt in rows]

    def follow_up(analyses):
        return [prompt.step2(question, a.text) for (_, prompt), a in zip(rows, analyses, strict=True)]

    encoded = vlm.encode_images([image for image, _ in rows])
    kwargs = dict(first_tokens=first_tokens, second_tokens=6)
    continued = vlm.generate_two_step(encoded, first, follow_up, **kwargs)
    recomputed = VisionLanguageModel.generate_two_step(vlm, encoded, first, follow_up, **kwargs)
    assert_same_generations(continued, recomputed)


def test_two_step_generation_falls_back_where_step_2_does_not_replay_step_1(vlm, images, monkeypatch):
    from sdrt.models.base import VisionLanguageModel

    first = [[("user", "Describe the image.")]] * 2
    quoted = lambda analyses: [[("user", f"Given: {a.text}\nWhat color is it?")] for a in analyses]  # noqa: E731
    calls = []
    real = vlm.generate
    monkeypatch.setattr(vlm, "generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    continued = vlm.generate_two_step(images, first, quoted, first_tokens=12, second_tokens=4)
    assert calls, "a quoting step 2 is generated from scratch"
    recomputed = VisionLanguageModel.generate_two_step(
        vlm, images, first, quoted, first_tokens=12, second_tokens=4
    )
    assert [g.token_ids for g in continued[1]] == [g.token_ids for g in recomputed[1]]


def test_rows_sharing_an_image_prefill_it_once_and_answer_as_alone(vlm, images, monkeypatch):
    encoded = vlm.encode_images(images)
    prompts = ["Describe the image.", "What color is the shape?", "What shape is it?"]
    rows = [(encoded[i], prompt) for i in range(2) for prompt in prompts]
    widths = []
    real = vlm._prefill
    monkeypatch.setattr(
        vlm, "_prefill", lambda state, embeds, *a: widths.append(embeds.shape[0]) or real(state, embeds, *a)
    )
    together = vlm.generate([image for image, _ in rows], [prompt for _, prompt in rows], max_new_tokens=8)
    assert widths[0] == 2  # two distinct images: the shared prefix ran for two rows, not six
    monkeypatch.setattr(vlm, "_prefill", real)
    for (image, prompt), generation in zip(rows, together, strict=True):
        alone = vlm.generate([image], [prompt], max_new_tokens=8)[0]
        assert generation.token_ids == alone.token_ids
        torch.testing.assert_close(generation.token_logprobs, alone.token_logprobs, atol=2e-4, rtol=0)


def test_alignment_refuses_a_checkpoint_of_other_settings_naming_them(tmp_path):
    from sdrt.training import align as alignment
    from sdrt.training.core import save_checkpoint

    config = alignment.AlignConfig(out=tmp_path / "run", steps=10)
    saved = alignment.run_fingerprint(config.model_copy(update={"lr_lora": 1e-3, "steps": 20}))
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    save_checkpoint(config.out, 5, saved, {"w": torch.zeros(1)}, optimizer, schedule)
    with pytest.raises(DataError, match=r"differs in: lr_lora, steps"):
        alignment.resume(None, None, None, config)  # refused before anything is loaded
    # A run checkpointed in the one-file format before the shared core follows the same rule.
    legacy = alignment.AlignConfig(out=tmp_path / "legacy", steps=10)
    legacy.out.mkdir()
    torch.save({"step": 5, "fingerprint": saved}, legacy.out / alignment.LEGACY_CHECKPOINT)
    with pytest.raises(DataError, match=r"differs in: lr_lora, steps"):
        alignment.resume(None, None, None, legacy)


def test_alignment_can_start_from_exported_weights(user_cache, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from sdrt.models.embedded import WEIGHTS_FILE
    from sdrt.training import align as alignment

    def config(out, **extra):
        return alignment.AlignConfig(
            out=out, steps=1, batch_size=2, easyvqa_limit=8, eval_questions=0, lora_rank=2, **extra
        )

    first = alignment.align(config(tmp_path / "first"))
    monkeypatch.setattr(alignment, "train_step", lambda *args, **kwargs: 0.0)  # no update at all
    second = alignment.align(config(tmp_path / "second", init_from=first, seed=5))
    before, after = load_file(first / WEIGHTS_FILE), load_file(second / WEIGHTS_FILE)
    assert before.keys() == after.keys()
    for key in before:
        torch.testing.assert_close(after[key], before[key], rtol=0, atol=0)
    with pytest.raises(DataError, match="reads images"):
        alignment.align(config(tmp_path / "third", init_from=first, grid=7))


def test_alignment_fingerprint_names_later_options_only_when_set(tmp_path):
    from sdrt.training import align as alignment

    unset = alignment.run_fingerprint(alignment.AlignConfig())
    assert "init_from" not in unset and "multi_hop_altered_share" not in unset  # old checkpoints resume
    assert alignment.run_fingerprint(alignment.AlignConfig(init_from=tmp_path))["init_from"] == str(tmp_path)
    assert "balance_multi_hop_types" not in unset
    altered = alignment.run_fingerprint(alignment.AlignConfig(multi_hop_altered_share=1.0))
    assert altered["multi_hop_altered_share"] == 1.0  # a resume with another share is refused
    balanced = alignment.run_fingerprint(alignment.AlignConfig(balance_multi_hop_types=True))
    assert balanced["balance_multi_hop_types"] is True
    assert "reasoning_three_hop_share" not in unset
    harder = alignment.run_fingerprint(alignment.AlignConfig(reasoning_three_hop_share=0.5))
    assert harder["reasoning_three_hop_share"] == 0.5


def test_bfloat16_runs_the_language_model_in_bfloat16_and_keeps_the_config_hash(vlm, images):
    from sdrt.models.embedded import WEIGHTS_DIR, WEIGHTS_FILE, EmbeddedVLM

    untrained = not (WEIGHTS_DIR / WEIGHTS_FILE).is_file()
    half = EmbeddedVLM.load(untrained=untrained, feature_cache=False, dtype=torch.bfloat16)
    assert {p.dtype for p in half.lm.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in half.projector.parameters()} == {torch.float32}
    assert half.config_hash == vlm.config_hash  # an adapter loads in either precision
    prompts = [[("user", PROMPTS[0])]] * 2
    out = half.score(images, prompts, ["red", "blue"], layers=[3])
    assert out.hidden_states[3].dtype == torch.bfloat16
    full = vlm.score(images, prompts, ["red", "blue"])

    # Same model, another precision: the answers' log-probs agree to bfloat16's resolution.
    def answer_logprobs(output):
        logp = output.answer_logits.float().log_softmax(-1).gather(-1, output.answer_ids.unsqueeze(-1))
        return logp.squeeze(-1)[output.answer_token_mask]

    assert torch.allclose(answer_logprobs(out), answer_logprobs(full), atol=0.5)
    assert [g.text for g in half.generate(images, prompts, max_new_tokens=6)]


def test_a_full_static_cache_is_copied_into_a_larger_one_only_when_needed():
    from transformers import LlamaConfig, StaticCache

    from sdrt.models.embedded import _with_room

    config = LlamaConfig(num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, hidden_size=8)
    cache = StaticCache(config=config, max_cache_len=8)
    keys = [torch.randn(3, 1, 5, 4) for _ in range(2)]
    for layer, key in enumerate(keys):
        cache.update(key, -key, layer)
    assert _with_room(cache, 8, config) is cache
    larger = _with_room(cache, 9, config)
    assert larger.get_max_length() >= 9 and int(larger.get_seq_length()) == 5
    for layer, key in enumerate(keys):
        torch.testing.assert_close(larger.layers[layer].keys[:, :, :5], key)
        torch.testing.assert_close(larger.layers[layer].values[:, :, :5], -key)
        assert not larger.layers[layer].keys[:, :, 5:].any()


def test_a_dynamic_cache_decodes_the_same_tokens_and_unknown_kinds_are_refused(vlm, images):
    from sdrt.models.base import ModelError

    shared = vlm.encode_images(images[:1]) * 2  # one image, two rows: the shared-prefix path
    prompts = ["Describe the image.", "What color is the shape?"]
    static = vlm.generate(shared, prompts, max_new_tokens=6)
    dynamic = vlm.with_kv_cache("dynamic").generate(shared, prompts, max_new_tokens=6)
    assert vlm.kv_cache == "static"  # the copy changed, the model did not
    assert [g.token_ids for g in static] == [g.token_ids for g in dynamic]
    with pytest.raises(ModelError, match="kv_cache"):
        vlm.with_kv_cache("paged")


@pytest.mark.parametrize(
    ("lengths", "expected"),
    [
        ([40, 40, 40, 4, 4, 4], [(0, 3), (3, 6)]),  # two runs beat padding the short rows to 40
        ([8, 8, 7, 6], [(0, 4)]),  # one forward: splitting saves less than a forward costs
        ([3], [(0, 1)]),
    ],
)
def test_segments_split_a_block_where_padding_costs_more_than_a_forward(lengths, expected):
    from sdrt.models.embedded import _segments

    assert [(run.start, run.stop) for run in _segments(lengths, overhead=16)] == expected


def test_a_block_of_short_and_long_prompts_runs_in_segments_and_answers_as_alone(vlm, images, monkeypatch):
    long_prompt = "Look at every shape, its colour, its size and where it is, then say what the image shows."
    prompts = ["Hi.", long_prompt, "Hi.", long_prompt]
    shared = vlm.encode_images(images[:2])
    encoded = [shared[i // 2] for i in range(4)]  # two rows per image: the prefix is shared
    batches = []
    real = vlm._prefill
    monkeypatch.setattr(
        vlm, "_prefill", lambda state, embeds, *a: batches.append(embeds.shape[:2]) or real(state, embeds, *a)
    )
    together = vlm.generate(encoded, prompts, max_new_tokens=6)
    assert len(batches) == 3 and batches[1][0] + batches[2][0] == 4  # the prefix, then two runs
    assert batches[1][1] > batches[2][1]  # the long prompts' run first, the short one narrower
    monkeypatch.setattr(vlm, "_prefill", real)
    for image, prompt, generation in zip(encoded, prompts, together, strict=True):
        alone = vlm.generate([image], [prompt], max_new_tokens=6)[0]
        assert generation.token_ids == alone.token_ids
        torch.testing.assert_close(generation.token_logprobs, alone.token_logprobs, atol=2e-4, rtol=0)


@pytest.mark.parametrize(
    ("live", "expected"),
    [
        ([True] * 6, [(0, 6)]),  # everyone decodes: one forward over all rows
        ([True, True] + [False] * 14, [(0, 8)]),  # two live rows, widened to a multiple of 8
        ([True] + [False] * 22 + [True], [(0, 8), (16, 24)]),  # far apart: two runs
        ([True, False, False, True] + [False] * 12, [(0, 8)]),  # a small gap is decoded through
        ([False] * 20 + [True] * 4, [(16, 24)]),  # widened backwards at the end
    ],
)
def test_live_runs_cover_every_live_row_in_few_wide_runs(live, expected):
    from sdrt.models.embedded import _live_runs

    runs = _live_runs(live, gap=4, multiple=8)
    assert [(run.start, run.stop) for run in runs] == expected
    covered = {row for run in runs for row in range(run.start, run.stop)}
    assert {row for row, alive in enumerate(live) if alive} <= covered


def test_stopped_rows_leave_the_decode_steps_and_tokens_do_not_change(vlm, images, monkeypatch):
    from functools import partial

    from sdrt.models import embedded

    # decode runs exactly as wide as the live rows
    monkeypatch.setattr(embedded, "_live_runs", partial(embedded._live_runs, gap=1, multiple=1))
    prompts = ["Say yes.", "Describe the image in detail.", "Say no.", "What color is the shape?"]
    rows = [images[i % 2] for i in range(4)]
    widths = []
    real = vlm._decode_step
    monkeypatch.setattr(
        vlm,
        "_decode_step",
        lambda cache, token, mask, positions, hidden, runs: (
            widths.append(sum(r.stop - r.start for r in runs))
            or real(cache, token, mask, positions, hidden, runs)
        ),
    )
    static = vlm.generate(rows, prompts, max_new_tokens=16)
    monkeypatch.setattr(vlm, "_decode_step", real)
    dynamic = vlm.with_kv_cache("dynamic").generate(rows, prompts, max_new_tokens=16)
    assert [g.token_ids for g in static] == [g.token_ids for g in dynamic]
    for a, b in zip(static, dynamic, strict=True):
        torch.testing.assert_close(a.token_logprobs, b.token_logprobs, atol=2e-4, rtol=0)
    lengths = [len(g.token_ids) for g in static]
    if min(lengths) == max(lengths):
        pytest.skip("no row stopped before another with these weights")
    assert widths[0] == 4 and min(widths) == sum(n > min(lengths) for n in lengths)


def test_an_opened_answer_is_continued_after_its_pause_marks(vlm, images):
    assert_answer_opens_with_pause_marks(vlm, images[0])
