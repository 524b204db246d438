"""The static trace viewer: the data it embeds, and the page itself in a real headless chromium.

The fixture is hand-made so that every figure the page shows is known in advance: 30 colour
questions (every third without references) answered by two prompts, one that describes and is
always right, one that answers in step 1 and is right on odd examples only; two generated
scenes whose images exist only in memory; results of ``sdrt eval`` for some of the traced
examples and for two easy-vqa test questions that were never traced.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from sdrt.data import load_records
from sdrt.evaluation.evaluate import EvalResults, ItemResult
from sdrt.evaluation.viewer import (
    find_chromium,
    launch_headless,
    states_answer,
    write_viewer,
)
from sdrt.traces.store import TraceStore

COLOURS = ("red", "green", "blue")
N_COLOUR = 30
PAGE_SIZE = 25


def colour_rows(image_dir: Path) -> list[dict]:
    """K = 2 rows per example; the image files are three colours, shared by ten examples each."""
    paths = []
    for colour in COLOURS:
        path = image_dir / f"{colour}.png"
        Image.new("RGB", (48, 32), colour).save(path)
        paths.append(str(path))
    rows = []
    for i in range(N_COLOUR):
        odd = i % 2 == 1
        second = "red" if odd else "blue"
        common = {
            "example_id": f"colour-{i:02d}",
            "example_index": i,
            "source": "easy-vqa:train",
            "image_path": paths[i % 3],
            "question": f"What colour is shape {i}?",
            "task_type": "scene",
            "references": ["red"] if i % 3 != 2 else [],
            "ensemble_answer": "red",
            "ensemble_agreement": 1.0 if odd else 0.5,
        }
        rows.append(
            common
            | {"prompt_id": "describe", "prompt_rank": 0, "analysis": "A red circle on a white background."}
            | {"raw_answer": "Red.", "answer": "red", "answer_logprob": -0.5, "answer_mean_logprob": -0.25}
            | {"analysis_tokens": 8, "answer_tokens": 2, "prompt_weight": 1.0 if odd else 0.5}
        )
        rows.append(
            common
            | {"prompt_id": "answer-first", "prompt_rank": 1, "analysis": f"The colour is {second}."}
            | {"raw_answer": second, "answer": second, "answer_logprob": -2.0, "answer_mean_logprob": -2.0}
            | {"analysis_tokens": 4, "answer_tokens": 1, "prompt_weight": 0.0 if odd else 0.5}
        )
    return rows


def write_folder(root: Path, manifest: dict, rows: list[dict]) -> Path:
    store = TraceStore(root)
    store.check_or_write_manifest(manifest)
    store.write_shard(rows)
    return root


def scene_rows() -> tuple[dict, list[dict]]:
    """Two generated scenes: no image file, the viewer must draw them again from the manifest's source."""
    data = {"source": "scenes:multi-hop", "split": "train", "limit": 2, "seed": 0}
    records = load_records(data["source"], split=data["split"], limit=data["limit"], seed=data["seed"])
    rows = [
        {
            "example_id": r.id,
            "example_index": i,
            "source": "scenes:multi-hop:train",
            "image_path": None,
            "question": r.question,
            "task_type": r.task_type,
            "references": list(r.answers),
            "prompt_id": prompt,
            "prompt_rank": rank,
            "analysis": "Two objects.",
            "analysis_tokens": 3,
            "raw_answer": r.answers[0],
            "answer": r.answers[0],
            "ensemble_answer": r.answers[0],
            "ensemble_agreement": 1.0,
            "prompt_weight": 0.5,
        }
        for i, r in enumerate(records)
        for rank, prompt in enumerate(("describe", "answer-first"))
    ]
    return {"model": "test", "data": data}, rows


def eval_results(path: Path) -> Path:
    """direct wrong on colour-00 and colour-01, right elsewhere; two untraced easy-vqa questions."""
    items = []
    for i in range(6):
        references = ["red"] if i % 3 != 2 else []
        question = f"What colour is shape {i}?"
        for mode, prediction in (("direct", "blue" if i < 2 else "red"), ("adapter", "red")):
            items.append(_item(mode, f"colour-{i:02d}", question, prediction, references))
    for record in load_records("easy-vqa", split="test", limit=2, seed=0):
        answer = record.answers[0]
        for mode in ("direct", "ensemble"):
            items.append(_item(mode, record.id, record.question, answer, [answer], {"describe": answer}))
    EvalResults(items=items).save(path)
    return path


def _item(mode, record_id, question, prediction, references, prompt_answers=None) -> ItemResult:
    return ItemResult(
        benchmark="easy-vqa",
        mode=mode,
        record_id=record_id,
        question=question,
        prediction=prediction,
        raw_prediction=prediction,
        references=references,
        score=float(prediction in references),
        generated_tokens=1,
        model_calls=1,
        seconds=0.1,
        prompt_answers=prompt_answers or {},
    )


@pytest.fixture(scope="module")
def viewer(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("viewer")
    (root / "img").mkdir()
    colour = write_folder(
        root / "colour", {"model": "test", "data": {"source": "none"}}, colour_rows(root / "img")
    )
    scene_manifest, rows = scene_rows()
    scenes = write_folder(root / "scenes", scene_manifest, rows)
    results = eval_results(root / "results.json")
    page, stats = write_viewer([colour, scenes], root / "out", results=results)
    return page, {"stats": stats, "data": embedded_data(page)}


def embedded_data(page: Path) -> dict:
    html = page.read_text()
    start = html.index('<script id="sdrt-data" type="application/json">') + len(
        '<script id="sdrt-data" type="application/json">'
    )
    return json.loads(html[start : html.index("</script>", start)])


# --- the data the page is written with --------------------------------------------------------


def test_step1_answers_are_told_from_descriptions():
    assert states_answer("The colour is blue.", "blue")
    assert states_answer("Answer: 3", "three")
    assert not states_answer("A blue circle on a white background.", "blue")
    assert not states_answer("", "blue")


def test_every_example_is_embedded_with_its_flags(viewer):
    _, info = viewer
    stats, examples = info["stats"], info["data"]["examples"]
    assert (stats.examples, stats.traced, stats.result_only) == (34, 32, 2)
    assert [e["id"] for e in examples[:3]] == ["colour-00", "colour-01", "colour-02"]
    first, third = examples[0], examples[2]
    assert [t["ok"] for t in first["tr"]] == [True, False]
    assert [t["agree"] for t in first["tr"]] == [True, False]
    assert [t["states"] for t in first["tr"]] == [False, True]
    assert first["una"] is False and examples[1]["una"] is True
    assert [t["ok"] for t in third["tr"]] == [None, None]  # no references: neither right nor wrong
    assert first["res"]["direct"] == {"pred": "blue", "score": 0.0, "ok": False}
    assert examples[4]["res"]["adapter"]["ok"] is True and examples[5]["res"]["adapter"]["ok"] is None
    assert info["data"]["prompts"] == ["describe", "answer-first"]
    assert info["data"]["modes"] == ["direct", "adapter", "ensemble"]


def test_images_are_written_once_each_and_regenerated_when_in_memory(viewer):
    page, info = viewer
    examples = info["data"]["examples"]
    colour_images = {e["img"] for e in examples[:N_COLOUR]}
    assert len(colour_images) == 3  # three files, each shared by ten examples
    assert all(e["img"] for e in examples), "scenes and untraced easy-vqa questions get their images too"
    assert info["stats"].missing_images == 0
    for name in {e["img"] for e in examples}:
        with Image.open(page.parent / name) as image:
            assert image.size[0] > 0
    with Image.open(page.parent / examples[0]["img"]) as image:
        assert image.convert("RGB").getpixel((5, 5))[0] > 200  # colour-00 is the red one


def test_the_page_fetches_nothing_from_the_network(viewer):
    html = viewer[0].read_text()
    for pattern in ('src="http', "src='http", 'href="http', "url(http", "@import", "<link"):
        assert pattern not in html


def test_the_command_writes_the_page_and_prints_its_address(viewer, tmp_path):
    from typer.testing import CliRunner

    from sdrt.cli import app

    colour = viewer[0].parent.parent / "colour"
    result = CliRunner().invoke(app, ["view", str(colour), "--out", str(tmp_path / "v")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "v" / "index.html").resolve().as_uri() in result.output
    assert len(embedded_data(tmp_path / "v" / "index.html")["examples"]) == N_COLOUR


# --- the page in a real browser ---------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    executable = find_chromium()
    if executable is None:
        pytest.skip("no chromium found (apt-get install chromium chromium-driver, or set SDRT_CHROMIUM)")
    with sync_playwright() as playwright:
        try:
            context = launch_headless(playwright, executable, tmp_path_factory.mktemp("profile"))
        except Exception as exc:  # a browser that cannot start on this machine is not a viewer bug
            pytest.skip(f"chromium did not start: {exc}")
        yield context
        context.close()


@pytest.fixture
def page(browser, viewer):
    tab = browser.new_page()
    errors: list[str] = []
    requests: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    tab.on("request", lambda request: requests.append(request.url))
    tab.goto(viewer[0].resolve().as_uri())
    tab.wait_for_selector("body[data-rendered-ms]")
    yield tab
    assert errors == []
    assert [url for url in requests if not url.startswith("file://")] == []
    tab.close()


def shown(tab) -> tuple[int, int, list[str]]:
    """(examples passing the filters, cards on this page, their ids)."""
    ids = tab.eval_on_selector_all("article.ex", "cards => cards.map(c => c.dataset.id)")
    return int(tab.inner_text("#shown-count")), len(ids), ids


def summary_cell(tab, prompt: str, column: str) -> str:
    return tab.inner_text(f'#summary tr[data-prompt="{prompt}"] td.{column}')


def test_page_counts_filters_and_turns(page, viewer, tmp_path):
    assert shown(page)[:2] == (34, PAGE_SIZE)
    assert page.inner_text("#total-count") == "34"
    assert page.inner_text(".page-info") == "page 1 of 2"

    page.wait_for_function("() => Array.from(document.images).every(img => img.complete)")
    widths = page.eval_on_selector_all("article.ex img", "imgs => imgs.map(i => i.naturalWidth)")
    assert len(widths) == PAGE_SIZE and all(w > 0 for w in widths)

    artefacts = Path(os.environ.get("SDRT_TEST_ARTEFACTS", tmp_path))
    artefacts.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": 1280, "height": 900})
    page.screenshot(path=str(artefacts / "viewer.png"))
    assert (artefacts / "viewer.png").stat().st_size > 10_000

    page.click("nav.pager >> nth=0 >> button.next")
    count, cards, ids = shown(page)
    assert (count, cards) == (34, 34 - PAGE_SIZE)
    assert ids[0] == "colour-25" and ids[-1].startswith("easy-vqa/test/")
    assert page.inner_text(".page-info") == "page 2 of 2"

    page.select_option("#f-agreement", "split")  # the even colour examples
    count, cards, ids = shown(page)
    assert (count, cards) == (15, 15)
    assert ids == [f"colour-{i:02d}" for i in range(0, N_COLOUR, 2)]


def test_summary_is_counted_over_the_filtered_examples(page):
    # 20 colour examples have references; "answer-first" is right on the 10 odd ones, and on 2 scenes
    assert summary_cell(page, "answer-first", "acc").startswith("54.5% (12/22)")
    assert summary_cell(page, "describe", "acc").startswith("100.0% (24/24)")  # + 2 untraced easy-vqa
    assert summary_cell(page, "answer-first", "states").startswith("93.8% (30/32)")  # scenes: no
    assert summary_cell(page, "describe", "states").startswith("0.0% (0/34)")
    assert summary_cell(page, "describe", "alen") == "7.7"  # (30 * 8 + 2 * 3) / 32; untraced: none
    assert page.inner_text('#modes tr[data-mode="direct"] td.acc').startswith("66.7% (4/6)")
    page.select_option("#f-source", "easy-vqa:train")
    assert summary_cell(page, "describe", "alen") == "8.0"
    assert summary_cell(page, "answer-first", "agree").startswith("50.0% (15/30)")
    assert page.inner_text('#modes tr[data-mode="direct"] td.acc').startswith("50.0% (2/4)")


def test_right_or_wrong_per_mode_and_search(page):
    page.select_option("#f-mode", "r:direct")
    page.select_option("#f-verdict", "wrong")
    assert shown(page)[2] == ["colour-00", "colour-01"]
    page.select_option("#f-verdict", "right")
    assert shown(page)[0] == 2 + 2  # colour-02 and colour-05 have no references, so they are neither
    page.click("#reset")
    page.fill("#f-search", "shape 7?")
    page.wait_for_function("() => document.getElementById('shown-count').textContent === '1'")
    assert shown(page)[2] == ["colour-07"]


def test_prompt_filter_shows_that_prompt_only(page):
    page.select_option("#f-prompt", "answer-first")
    assert shown(page)[0] == 32  # the untraced easy-vqa questions have only "describe" answers
    prompts = page.eval_on_selector_all("article.ex tr.trace", "rows => rows.map(r => r.dataset.prompt)")
    assert set(prompts) == {"answer-first"} and len(prompts) == PAGE_SIZE
