"""Batch sizes from free GPU memory: the estimate by hand, and the wiring on the tiny backends."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from sdrt.models import memory
from sdrt.models.memory import bytes_per_token, choose_batch_size, examples_that_fit

# A 7B-like decoder: 28 layers, 28 heads of 128, 4 KV heads, MLP 18944 wide.
SEVEN_B = SimpleNamespace(
    num_hidden_layers=28,
    hidden_size=3584,
    num_attention_heads=28,
    num_key_value_heads=4,
    intermediate_size=18944,
)


def test_bytes_per_token_counts_the_kv_cache_and_the_mlp():
    cache = 2 * 28 * 4 * 128 * 2  # keys and values, bf16
    mlp = 3 * 18944 * 2
    assert bytes_per_token(SEVEN_B, torch.bfloat16) == cache + mlp
    assert bytes_per_token(SEVEN_B, torch.float32) == 2 * (cache + mlp)


def test_examples_that_fit_keep_headroom_and_bounds():
    per_token = bytes_per_token(SEVEN_B, torch.bfloat16)
    free = 64 * 2**30
    rows = int(memory.HEADROOM * free) // (1200 * per_token)
    assert examples_that_fit(free, 1200, 3, per_token) == rows // 3
    assert examples_that_fit(10, 1200, 3, per_token) == 1  # never zero
    assert examples_that_fit(2**50, 10, 1, per_token) == memory.MAX_EXAMPLES


def test_a_cpu_model_gets_the_default_and_a_gpu_model_what_fits(monkeypatch):
    cpu = SimpleNamespace(device=torch.device("cpu"))
    assert choose_batch_size(cpu, 1000, 3) == memory.CPU_DEFAULT
    gpu = SimpleNamespace(device=torch.device("cuda", 0), decoder_config=SEVEN_B, dtype=torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (64 * 2**30, 80 * 2**30))
    expected = examples_that_fit(64 * 2**30, 1000, 3, bytes_per_token(SEVEN_B, torch.bfloat16))
    assert choose_batch_size(gpu, 1000, 3) == expected > memory.CPU_DEFAULT


def test_prompt_tokens_are_the_rows_a_batch_holds(tiny_model, image):
    prompt = [("user", "What colour is the circle?")]
    batch = tiny_model._build_batch([image], [prompt], [[]])
    assert tiny_model.prompt_tokens(image, prompt) == batch.layout.seq_len  # one row: no padding
    assert tiny_model.decoder_config.num_hidden_layers == tiny_model.num_layers


def test_traces_without_a_batch_size_size_it_from_the_longest_conversation(tiny_model, monkeypatch):
    from sdrt.data import load_records
    from sdrt.prompts.library import PromptLibrary
    from sdrt.reasoning.modes import GenerationBudget, batch_size_for

    seen = {}

    def record(model, tokens, rows):
        seen.update(tokens=tokens, rows=rows)
        return 5

    monkeypatch.setattr(memory, "choose_batch_size", record)
    library = PromptLibrary.builtin()
    prompts = [library.get("image_description"), library.get("counting")]
    first = load_records("easy-vqa", split="train", limit=1)[0]
    image = tiny_model.encode_images([first.load_image()])[0]
    budget = GenerationBudget(analysis_tokens=40, answer_tokens=6)
    assert batch_size_for(tiny_model, first, prompts, budget) == 5
    step1 = tiny_model.prompt_tokens(image, prompts[0].step1(first.question))
    assert seen["rows"] == 2 and seen["tokens"] > step1 + 40  # step 2 holds the analysis and more


def test_direct_rows_are_sized_as_asked_with_pause_slots_and_open_replies(tiny_model, monkeypatch):
    from sdrt.data import load_records
    from sdrt.prompts.library import StudentLayout, direct_prompt, pause_turn
    from sdrt.reasoning.modes import GenerationBudget, batch_size_for

    seen = []
    monkeypatch.setattr(
        memory, "choose_batch_size", lambda model, tokens, rows: seen.append((tokens, rows)) or 3
    )
    first = load_records("easy-vqa", split="train", limit=1)[0]
    image = tiny_model.encode_images([first.load_image()])[0]
    budget = GenerationBudget(answer_tokens=6, open_tokens=50)
    slots = StudentLayout(pause_tokens=8)
    assert batch_size_for(tiny_model, first, [], budget, layout=slots) == 3
    assert batch_size_for(tiny_model, first, [], budget, open_ended=True, layout=slots) == 3
    short = tiny_model.prompt_tokens(image, direct_prompt(first.question, first.choices, slots)) + 6
    opened = tiny_model.prompt_tokens(image, [("user", first.question), *pause_turn(8)]) + 50
    assert seen == [(short, 1), (opened, 1)]
    plain = tiny_model.prompt_tokens(image, direct_prompt(first.question, first.choices)) + 6
    assert short > plain  # the slots count
