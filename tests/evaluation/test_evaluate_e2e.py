"""``sdrt eval`` end to end on a tiny backend, built-in and published (Parquet fixture) benchmarks."""

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from sdrt.adapters.config import AdapterConfig
from sdrt.adapters.files import save_adapter
from sdrt.adapters.model import SDRTAdapter
from sdrt.cli import app
from sdrt.models.tiny import load_tiny_model

runner = CliRunner()


def png(rgb) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), rgb).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    (root / "docvqa").mkdir()
    rows = {
        "questionId": [1, 2, 3],
        "question": ["What is the title?", "What is the date?", "Who signed it?"],
        "question_types": [["layout"], ["form"], ["form"]],
        "image": [{"bytes": png((255, 255, 255)), "path": f"doc{i}.png"} for i in range(3)],
        "docId": [10, 11, 12],
        "ucsf_document_id": ["a", "b", "c"],
        "ucsf_document_page_no": ["1", "1", "2"],
        "answers": [["report"], ["1 may 1990", "may 1, 1990"], ["j. smith"]],
        "data_split": ["validation"] * 3,
    }
    pq.write_table(pa.table(rows), root / "docvqa" / "validation-00000-of-00001.parquet")
    return root


@pytest.fixture(scope="module")
def identity_adapter(tmp_path_factory):
    model = load_tiny_model("llava")
    adapter = SDRTAdapter.for_model(AdapterConfig(layers=[1], rank=2), model)
    return save_adapter(adapter, tmp_path_factory.mktemp("adapter"))


def run_eval(tmp_path, *args):
    out = tmp_path / "results.json"
    result = runner.invoke(app, ["eval", "--model", "tiny:llava", "--out", str(out), *args])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def test_modes_on_a_builtin_benchmark(tmp_path, identity_adapter):
    results = run_eval(
        tmp_path,
        "--benchmark",
        "easy-vqa",
        "--limit",
        "4",
        "--mode",
        "direct",
        "--mode",
        "dual:image_description",
        "--mode",
        "ensemble",
        "--mode",
        "adapter",
        "--adapter",
        str(identity_adapter),
        "--k",
        "2",
    )
    summaries = {s["mode"]: s for s in results["summaries"]}
    assert set(summaries) == {"direct", "dual:image_description", "ensemble", "adapter"}
    assert all(s["n"] == 4 and 0.0 <= s["score"] <= 1.0 for s in summaries.values())
    assert summaries["direct"]["calls_per_answer"] == 1
    assert summaries["dual:image_description"]["calls_per_answer"] == 2
    assert summaries["ensemble"]["calls_per_answer"] == 4  # K = 2 prompts, two steps each
    items = {(i["mode"], i["record_id"]): i for i in results["items"]}
    # a freshly initialised adapter is the identity: its answers are the direct answers
    for (mode, record_id), item in items.items():
        if mode == "adapter":
            assert item["raw_prediction"] == items[("direct", record_id)]["raw_prediction"]
    assert {c["mode"] for c in results["comparisons"]} == {"dual:image_description", "ensemble", "adapter"}
    assert all(c["baseline"] == "direct" and c["n"] == 4 for c in results["comparisons"])
    assert (tmp_path / "results.predictions.jsonl").read_text().count("\n") == 16


def test_published_benchmark_from_local_parquet(tmp_path, data_dir):
    results = run_eval(tmp_path, "--benchmark", "docvqa", "--data-dir", str(data_dir))
    (summary,) = results["summaries"]
    assert (summary["benchmark"], summary["metric"], summary["n"]) == ("docvqa", "anls", 3)
    assert {tuple(i["references"]) for i in results["items"]} == {
        ("report",),
        ("1 may 1990", "may 1, 1990"),
        ("j. smith",),
    }


def test_missing_benchmark_data_is_a_clear_error(tmp_path):
    result = runner.invoke(
        app,
        [
            "eval",
            "--model",
            "tiny:llava",
            "--benchmark",
            "chartqa",
            "--data-dir",
            str(tmp_path),
            "--out",
            str(tmp_path / "r.json"),
        ],
    )
    assert result.exit_code != 0
    assert "chartqa" in str(result.exception) and "no data" in str(result.exception)


def test_benchmarks_command_lists_metric_and_presence(data_dir):
    result = runner.invoke(app, ["benchmarks", "--data-dir", str(data_dir)])
    assert result.exit_code == 0
    lines = {line.split()[1]: line for line in result.output.splitlines() if line.strip().startswith("│")}
    assert "present" in lines["docvqa"] and "anls" in lines["docvqa"]
    assert "missing" in lines["chartqa"] and "relaxed_accuracy" in lines["chartqa"]
    assert "built in" in lines["scenes"]


def test_changed_share_and_question_types_on_scenes(tmp_path, identity_adapter):
    from sdrt.evaluation.evaluate import EvalResults, answer_changed, changes_by_question_type
    from sdrt.evaluation.report import changes_section

    run_eval(
        tmp_path,
        "--benchmark",
        "scenes",
        "--limit",
        "6",
        "--mode",
        "direct",
        "--mode",
        "dual:image_description",
        "--mode",
        "adapter",
        "--adapter",
        str(identity_adapter),
    )
    loaded = EvalResults.load(tmp_path / "results.json")
    assert all(i.question_type for i in loaded.items)  # every multi-hop scene question has its type
    by = {(i.mode, i.record_id): i for i in loaded.items}
    for comparison in loaded.comparisons:
        pairs = [(i, by[("direct", i.record_id)]) for i in loaded.items if i.mode == comparison.mode]
        expected = sum(answer_changed(a, b) for a, b in pairs) / len(pairs)
        assert comparison.changed == pytest.approx(expected)
    adapter = next(c for c in loaded.comparisons if c.mode == "adapter")
    assert adapter.changed == 0.0  # the identity adapter changes no answer
    rows = changes_by_question_type(loaded, "scenes", "dual:image_description", "direct")
    assert sum(n for _, n, *_ in rows) == 6
    assert {t for t, *_ in rows} == {i.question_type for i in loaded.items}
    section = "\n".join(changes_section(loaded))
    assert ("by question type" in section) == (len(rows) > 1)


def test_describe_benchmark_is_answered_open_ended(tmp_path):
    results = run_eval(tmp_path, "--benchmark", "scenes-describe", "--limit", "3", "--mode", "direct")
    (summary,) = results["summaries"]
    assert summary["metric"] == "object_accuracy" and summary["n"] == 3
    for item in results["items"]:
        assert item["prediction"] == item["raw_prediction"].strip()  # the whole reply, not a short answer


def test_describe_benchmark_refuses_reasoning_modes(tmp_path):
    result = runner.invoke(
        app,
        [
            "eval",
            "--model",
            "tiny:llava",
            "--benchmark",
            "scenes-describe",
            "--limit",
            "2",
            "--mode",
            "ensemble",
            "--out",
            str(tmp_path / "r.json"),
        ],
    )
    assert result.exit_code != 0
    assert "open-ended" in (result.output + str(result.exception))


def test_eval_on_a_users_own_jsonl(tmp_path):
    for i, colour in enumerate(("red", "blue", "green")):
        Image.new("RGB", (32, 32), colour).save(tmp_path / f"img{i}.png")
    lines = [
        {"id": f"q{i}", "image": f"img{i}.png", "question": "What color is it?", "answers": [colour]}
        for i, colour in enumerate(("red", "blue", "green"))
    ]
    data = tmp_path / "mine.jsonl"
    data.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    results = run_eval(
        tmp_path, "--data", str(data), "--metric", "vqa_accuracy", "--mode", "direct", "--mode", "ensemble"
    )
    summaries = {s["mode"]: s for s in results["summaries"]}
    assert set(summaries) == {"direct", "ensemble"}
    assert all(
        (s["benchmark"], s["metric"], s["n"]) == ("mine", "vqa_accuracy", 3) for s in summaries.values()
    )
    assert {tuple(i["references"]) for i in results["items"]} == {("red",), ("blue",), ("green",)}
    from sdrt.evaluation.metrics import vqa_accuracy

    for item in results["items"]:  # scored by the metric asked for
        assert item["score"] == vqa_accuracy(item["prediction"], item["references"])


def test_eval_on_own_data_needs_a_known_metric(tmp_path):
    data = tmp_path / "mine.jsonl"
    data.write_text("")
    for args, words in (([], "--metric"), (["--metric", "bleu"], "unknown metric")):
        result = runner.invoke(
            app,
            ["eval", "--model", "tiny:llava", "--data", str(data), *args, "--out", str(tmp_path / "r.json")],
        )
        assert result.exit_code != 0, result.output
        assert words in str(result.exception)  # the console entry prints it as one line, exit 2


def test_eval_on_a_users_own_parquet_folder_guesses_its_layout(tmp_path, data_dir):
    results = run_eval(
        tmp_path, "--data", str(data_dir / "docvqa"), "--metric", "anls", "--task-type", "document"
    )
    (summary,) = results["summaries"]
    assert (summary["benchmark"], summary["metric"], summary["n"]) == ("docvqa", "anls", 3)


def test_eval_reads_a_yaml_config_and_flags_override_it(tmp_path, identity_adapter):
    config = tmp_path / "eval.yaml"
    config.write_text(
        f"model: tiny:llava\nbenchmarks: [easy-vqa]\nmodes: [direct, adapter]\nadapter: {identity_adapter}\n"
        "limit: 6\nseed: 3\n"
    )
    out = tmp_path / "results.json"
    result = runner.invoke(app, ["eval", "--config", str(config), "--limit", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    results = json.loads(out.read_text())
    assert {s["mode"] for s in results["summaries"]} == {"direct", "adapter"}
    assert {s["n"] for s in results["summaries"]} == {3}  # the flag, not the file's 6


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"modes": ["adapter"]}, "needs an adapter"),
        ({"modes": ["majority"]}, "unknown modes"),
        ({"limit": 0}, "limit"),
        ({"data": [{"file": "x.jsonl"}]}, "metric"),
    ],
)
def test_eval_config_refuses_what_cannot_run(values, words):
    from sdrt.config import ConfigError, load_config
    from sdrt.evaluation.config import EvalConfig

    with pytest.raises(ConfigError, match=words):
        load_config(EvalConfig, None, **values)


def test_eval_config_defaults_to_easy_vqa_only_without_own_data():
    from sdrt.evaluation.config import EvalConfig

    assert EvalConfig().benchmark_names == ["easy-vqa"]
    assert EvalConfig(data=[{"file": "x.jsonl", "metric": "exact_match"}]).benchmark_names == []


def _opened_with_two_pause_marks(plain: list) -> list:
    return [*plain, ("assistant", ". .")]


def _question_stated_first(plain: list) -> list:
    question = plain[0][1].split("\n")[0]  # the short-answer prompt's first line, or the open question
    return [("system", f"Question: {question}"), *plain]


@pytest.mark.parametrize("benchmark", ["easy-vqa", "scenes-describe"])  # short answer, open reply
@pytest.mark.parametrize(
    ("layout", "laid_out"),
    [({"pause_tokens": 2}, _opened_with_two_pause_marks), ({"question_first": True}, _question_stated_first)],
)
def test_adapter_mode_asks_in_the_adapters_student_layout(tmp_path, monkeypatch, benchmark, layout, laid_out):
    from sdrt.models.hf import HFVisionLanguageModel

    model = load_tiny_model("llava")
    config = AdapterConfig(layers=[1], rank=2, **layout)
    folder = save_adapter(SDRTAdapter.for_model(config, model), tmp_path / "adapter")
    asked = []  # every prompt generated from, in order: the direct mode's, then the adapter's
    real_generate = HFVisionLanguageModel.generate

    def recording_generate(self, images, prompts, **kwargs):
        asked.extend(prompts)
        return real_generate(self, images, prompts, **kwargs)

    monkeypatch.setattr(HFVisionLanguageModel, "generate", recording_generate)
    args = ["--benchmark", benchmark, "--limit", "3", "--mode", "direct", "--mode", "adapter"]
    run_eval(tmp_path, *args, "--adapter", str(folder))
    direct, adapter = asked[:3], asked[3:]
    assert len(adapter) == 3
    assert all(prompt[-1][0] == "user" for prompt in direct)
    for prompt, plain in zip(adapter, direct, strict=True):
        assert prompt == laid_out(plain)
