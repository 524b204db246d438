"""The command line: bad input gives one clear line and exit code 2, never a traceback."""

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from sdrt.models.tiny import tiny_model_path


def sdrt(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sdrt.cli", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "shape.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(path)
    return path


def assert_clean_error(result: subprocess.CompletedProcess, *words: str) -> None:
    """Exit code 2 and one error line naming ``words``, unwrapped although stderr is a pipe."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], result.stderr


def test_ask_prints_the_answer_last(image):
    from sdrt.ask import ask_question

    result = sdrt("ask", "--model", "tiny:llava", "--image", str(image), "--question", "what color is it?")
    assert result.returncode == 0, result.stderr
    expected = ask_question("tiny:llava", image, "what color is it?").answer  # greedy: deterministic
    assert result.stdout.splitlines()[-1] == expected


def test_ask_dual_query_shows_the_analysis(image):
    result = sdrt(
        "ask",
        "--model",
        "tiny:llava",
        "--image",
        str(image),
        "--question",
        "what shape?",
        "--mode",
        "dual:image_description",
    )
    assert result.returncode == 0, result.stderr
    assert "image_description analysis:" in result.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (
            ["--model", "tiny:llava", "--image", "/no/such.png", "--question", "q?"],
            ["/no/such.png", "not found"],
        ),
        (["--model", "no-such-model", "--question", "q?"], ["unknown model", "no-such-model"]),
        (["--model", "tiny:llava", "--question", "  "], ["empty question"]),
        (["--model", "tiny:llava", "--question", "q?", "--mode", "dual:nope"], ["nope"]),
        (["--model", "tiny:llava", "--question", "q?", "--mode", "sideways"], ["unknown mode"]),
    ],
)
def test_ask_bad_input(image, args, words):
    if "--image" not in args:
        args = [*args, "--image", str(image)]
    assert_clean_error(sdrt("ask", *args), *words)


def test_corrupt_image(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    assert_clean_error(
        sdrt("ask", "--model", "tiny:llava", "--image", str(broken), "--question", "q?"),
        "broken.png",
        "cannot read image",
    )


def test_model_folder_without_processor(tmp_path, image):
    folder = tmp_path / "model"
    folder.mkdir()
    source = tiny_model_path("llava")
    for name in ("config.json", "model.safetensors"):
        (folder / name).write_bytes((source / name).read_bytes())
    assert_clean_error(
        sdrt("ask", "--model", str(folder), "--image", str(image), "--question", "q?"), str(folder)
    )


def test_malformed_config_file(tmp_path):
    config = tmp_path / "traces.yaml"
    config.write_text("k: -1\nbatch_size: many\nunknown_key: 1\n")
    result = sdrt("traces", "--model", "tiny:llava", "--config", str(config), "--out", str(tmp_path / "o"))
    # every problem is listed at once
    assert_clean_error(result, "k", "batch_size", "unknown_key")


def test_malformed_jsonl_is_named_or_skipped(tmp_path, image):
    data = tmp_path / "qs.jsonl"
    data.write_text(
        f'{{"id": "a", "image": "{image}", "question": "what?", "answers": ["red"]}}\n'
        '{"id": "b", "image": "missing.png", "question": "what?"}\n'
        "{not json\n"
    )
    out = tmp_path / "traces"
    common = ["traces", "--model", "tiny:llava", "--benchmark", str(data), "--k", "1", "--out", str(out)]
    assert_clean_error(sdrt(*common), "qs.jsonl")
    skipped = sdrt(*common, "--skip-bad")
    assert skipped.returncode == 0, skipped.stderr
    assert "skip" in skipped.stderr.lower()
    assert "1 new examples" in skipped.stderr


def test_ask_with_an_adapter_answers_in_one_pass(image, tmp_path):
    from sdrt.adapters.config import AdapterConfig
    from sdrt.adapters.files import save_adapter
    from sdrt.adapters.model import SDRTAdapter
    from sdrt.models.tiny import load_tiny_model

    adapter = SDRTAdapter.for_model(AdapterConfig(layers=[1], rank=2), load_tiny_model("llava"))
    folder = save_adapter(adapter, tmp_path / "adapter")
    question = ["--model", "tiny:llava", "--image", str(image), "--question", "what color?"]
    plain = sdrt("ask", *question)
    adapted = sdrt("ask", *question, "--adapter", str(folder))
    assert adapted.returncode == 0, adapted.stderr
    assert adapted.stdout == plain.stdout  # a fresh adapter is the identity

    other = sdrt("ask", *question[:1], "tiny:qwen2-vl", *question[2:], "--adapter", str(folder))
    assert_clean_error(other, "config hash")


def test_ask_with_a_pause_adapter_opens_the_answer_with_its_slots(image, tmp_path, monkeypatch):
    from sdrt.adapters.config import AdapterConfig
    from sdrt.adapters.files import save_adapter
    from sdrt.adapters.model import SDRTAdapter
    from sdrt.ask import ask_question
    from sdrt.models.hf import HFVisionLanguageModel
    from sdrt.models.tiny import load_tiny_model
    from sdrt.prompts.library import StudentLayout, direct_prompt

    config = AdapterConfig(layers=[1], rank=2, pause_tokens=3)
    folder = save_adapter(SDRTAdapter.for_model(config, load_tiny_model("llava")), tmp_path / "adapter")
    asked = []
    real_generate = HFVisionLanguageModel.generate

    def recording_generate(self, images, prompts, **kwargs):
        asked.extend(prompts)
        return real_generate(self, images, prompts, **kwargs)

    monkeypatch.setattr(HFVisionLanguageModel, "generate", recording_generate)
    ask_question("tiny:llava", image, "what color?", mode="adapter", adapter=folder)
    assert asked == [direct_prompt("what color?", None, StudentLayout(pause_tokens=3))]


def test_ask_refuses_an_adapter_inside_a_reasoning_mode(image, tmp_path):
    from sdrt.adapters.config import AdapterConfig
    from sdrt.adapters.files import save_adapter
    from sdrt.adapters.model import SDRTAdapter
    from sdrt.models.tiny import load_tiny_model

    adapter = SDRTAdapter.for_model(AdapterConfig(layers=[1], rank=2), load_tiny_model("llava"))
    folder = save_adapter(adapter, tmp_path / "adapter")
    question = ["--model", "tiny:llava", "--image", str(image), "--question", "what color?"]
    for mode in ("ensemble", "dual:image_description"):
        refused = sdrt("ask", *question, "--mode", mode, "--adapter", str(folder))
        assert_clean_error(refused, "--adapter answers in one pass", mode)


PROMPT_FILE = """\
prompts:
  - id: colour_check
    description: Name the colours before answering.
    task_types: [scene]
    step1: "Name the colours of the objects in this question: {question}"
    step2: "Using those colours, answer the question: {question}"
"""


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a, b", (["a", "b"], None)),
        ("my.yaml", (None, "my.yaml")),
        ("my.yml,a", (["a"], "my.yml")),
    ],
)
def test_prompts_option_takes_ids_a_file_or_both(value, expected):
    from sdrt.cli import _split_prompts_option

    ids, file = _split_prompts_option(value)
    assert (ids, None if file is None else str(file)) == expected
    assert file is None or isinstance(file, Path)


def test_ask_reads_a_prompt_file_and_named_ids(image, tmp_path):
    prompts = tmp_path / "mine.yaml"
    prompts.write_text(PROMPT_FILE)
    question = ["--model", "tiny:llava", "--image", str(image), "--question", "what color?"]
    dual = sdrt("ask", *question, "--mode", "dual:colour_check", "--prompts", str(prompts))
    assert dual.returncode == 0, dual.stderr
    assert "colour_check analysis:" in dual.stderr

    named = sdrt("ask", *question, "--mode", "ensemble", "--prompts", f"{prompts},counting,colour_check")
    assert named.returncode == 0, named.stderr
    shown = [line.split()[0] for line in named.stderr.splitlines() if " analysis:" in line]
    assert shown == ["counting", "colour_check"]

    assert_clean_error(sdrt("ask", *question, "--mode", "ensemble", "--prompts", "nope"), "nope")


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """``sdrt eval`` with a prompt file and named ids, its output piped."""
    folder = tmp_path_factory.mktemp("eval")
    prompts = folder / "mine.yaml"
    prompts.write_text(PROMPT_FILE)
    out = folder / "results.json"
    result = sdrt(
        "eval",
        *("--model", "tiny:llava", "--benchmark", "easy-vqa", "--limit", "2", "--k", "2"),
        *("--mode", "ensemble", "--mode", "dual:colour_check"),
        *("--prompts", f"{prompts},colour_check,counting", "--out", str(out)),
    )
    assert result.returncode == 0, result.stderr
    return result, out


def test_eval_uses_the_prompts_named(evaluated):
    import json

    _, out = evaluated
    items = json.loads(out.read_text())["items"]
    used = {(i["mode"], tuple(i["prompt_answers"])) for i in items}
    assert used == {("ensemble", ("colour_check", "counting")), ("dual:colour_check", ("colour_check",))}


def test_eval_table_is_whole_in_a_pipe(evaluated):
    result, _ = evaluated
    table = [line for line in result.stderr.splitlines() if line.startswith(("┃", "│"))]
    header = "".join(table[0].split())
    assert header == "┃benchmark┃mode┃metric┃n┃score┃95%CI┃tokens/ans┃calls/ans┃s/ans┃", table[0]
    row = next(line for line in table if "dual:colour_check" in line)
    assert "│ easy-vqa " in row and "│ exact_match " in row, row
    assert not any("…" in line for line in table), table


def test_config_files_merge_in_order_then_flags(tmp_path):
    from sdrt.config import load_config
    from sdrt.distill.config import DistillConfig

    base = tmp_path / "base.yaml"
    base.write_text("adapter: {rank: 8}\nlr: 0.01\nloss: {hidden: 1.0, ce: 0.5}\n")
    change = tmp_path / "change.yaml"
    change.write_text("adapter: {skip: {enabled: false}}\nloss: {ce: 0.0}\n")
    config = load_config(DistillConfig, [base, change], steps=7)
    assert (config.adapter.rank, config.lr, config.adapter.skip.enabled, config.steps) == (8, 0.01, False, 7)
    assert (config.loss.hidden, config.loss.ce) == (1.0, 0.0)  # one field of a section overridden
    alone = load_config(DistillConfig, base)  # a single file still reads alone
    assert alone.adapter.skip.enabled is True  # an adapter section keeps SDRT's skip on


def test_demo_options_override_only_what_they_name(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import sdrt.demo
    from sdrt.cli import app

    plans = []
    monkeypatch.setattr(sdrt.demo, "run_demo", plans.append)
    args = ["demo", "--train-scenes", "7", "--steps", "3", "--work-dir", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (plan,) = plans
    default = sdrt.demo.DemoPlan()
    assert (plan.train_scenes, plan.distill_steps, plan.work_dir) == (7, 3, tmp_path)
    assert (plan.train_easy_vqa, plan.eval_examples, plan.dtype) == (
        default.train_easy_vqa,
        default.eval_examples,
        default.dtype,
    )
