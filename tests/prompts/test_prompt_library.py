import dataclasses
import textwrap
from pathlib import Path

import pytest

from sdrt.data.records import TASK_TYPES
from sdrt.prompts import (
    CHOICE_INSTRUCTION,
    SHORT_ANSWER_INSTRUCTION,
    DualQueryPrompt,
    PromptError,
    PromptLibrary,
    StudentLayout,
    direct_prompt,
    prompt_set_hash,
)

PAPER_PROMPTS = ("image_decomposition", "planned_reasoning_path", "text_and_layout")

GOOD_ENTRY = """\
  - id: {id}
    description: A test prompt.
    task_types: [scene]
    step1: "Look closely: {{question}}"
    step2: "Now answer: {{question}}"
"""


def write_yaml(tmp_path: Path, body: str, name: str = "extra.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


def prompts_file(tmp_path: Path, *entries: str) -> Path:
    return write_yaml(tmp_path, "prompts:\n" + "".join(entries))


def load_error(path: Path) -> str:
    with pytest.raises(PromptError) as info:
        PromptLibrary.load(path)
    return str(info.value)


# --- the built-in set --------------------------------------------------------------------------


def test_builtin_holds_the_paper_prompts_and_more() -> None:
    library = PromptLibrary.builtin()
    assert set(PAPER_PROMPTS) <= set(library.ids)
    assert len(library) >= len(PAPER_PROMPTS) + 5
    assert library.ids == PromptLibrary.load().ids


def test_builtin_prompts_are_tagged_and_short() -> None:
    for prompt in PromptLibrary.builtin():
        assert prompt.task_types and set(prompt.task_types) <= set(TASK_TYPES), prompt.id
        assert len(prompt.step1_template.split()) <= 30, f"{prompt.id}: step 1 too long for a small model"


def test_one_builtin_prompt_asks_plainly_for_a_description() -> None:
    assert any(p.step1_template == "Describe the image." for p in PromptLibrary.builtin())


def test_every_task_type_has_a_prompt() -> None:
    library = PromptLibrary.builtin()
    for task_type in TASK_TYPES:
        assert library.select(task_type=task_type), task_type


# --- rendering ---------------------------------------------------------------------------------


def make_prompt(step1: str = "Look: {question}", step2: str = "Answer: {question}") -> DualQueryPrompt:
    return DualQueryPrompt("p", "test", ("scene",), step1, step2)


def test_step1_is_one_user_turn_without_answer_instruction() -> None:
    assert make_prompt().step1("What is it?") == [("user", "Look: What is it?")]


def test_step2_replays_the_analysis_as_an_assistant_turn() -> None:
    conversation = make_prompt().step2("What is it?", "  A cat.  ")
    assert conversation == [
        ("user", "Look: What is it?"),
        ("assistant", "A cat."),
        ("user", f"Answer: What is it?\n{SHORT_ANSWER_INSTRUCTION}"),
    ]


def test_step2_quoting_the_analysis_is_a_single_turn() -> None:
    prompt = make_prompt(step2="Notes: {analysis}\nQuestion: {question}")
    assert prompt.step2("What is it?", "A cat.") == [
        ("user", f"Notes: A cat.\nQuestion: What is it?\n{SHORT_ANSWER_INSTRUCTION}")
    ]


def test_choices_are_appended_as_lettered_options() -> None:
    conversation = make_prompt().step2("Colour?", "red", ["red", "blue"])
    assert conversation[0] == ("user", "Look: Colour?\nA. red\nB. blue")
    assert conversation[-1] == ("user", f"Answer: Colour?\nA. red\nB. blue\n{CHOICE_INSTRUCTION}")


def test_direct_prompt_matches_the_standard_instructions() -> None:
    assert direct_prompt(" What is it? ") == [("user", f"What is it?\n{SHORT_ANSWER_INSTRUCTION}")]
    assert direct_prompt("Colour?", ["red", "blue"]) == [
        ("user", f"Colour?\nA. red\nB. blue\n{CHOICE_INSTRUCTION}")
    ]
    assert SHORT_ANSWER_INSTRUCTION == "Answer the question using a single word or phrase."
    assert CHOICE_INSTRUCTION == "Answer with the option's letter from the given choices directly."


def test_pause_slots_open_the_answer_turn_after_the_direct_question() -> None:
    question = direct_prompt("Colour?", ["red", "blue"])
    assert direct_prompt("Colour?", ["red", "blue"], StudentLayout(pause_tokens=0)) == question
    assert direct_prompt("Colour?", ["red", "blue"], StudentLayout(pause_tokens=3)) == [
        *question,
        ("assistant", ". . ."),
    ]
    with pytest.raises(ValueError, match="pause_tokens must be >= 0"):
        direct_prompt("Colour?", layout=StudentLayout(pause_tokens=-1))


def test_question_first_states_the_question_in_a_system_turn_before_the_rest() -> None:
    question = direct_prompt(" Colour? ", ["red", "blue"])
    first = direct_prompt(" Colour? ", ["red", "blue"], StudentLayout(question_first=True), "Be brief.")
    assert first == [("system", "Be brief.\nQuestion: Colour?"), *question]
    alone = direct_prompt("Colour?", layout=StudentLayout(question_first=True))
    assert alone[0] == ("system", "Question: Colour?")
    both = direct_prompt("Colour?", layout=StudentLayout(pause_tokens=2, question_first=True))
    assert [role for role, _ in both] == ["system", "user", "assistant"]


def test_literal_braces_and_analysis_with_braces_survive() -> None:
    prompt = make_prompt(step1="Use {{x}} for unknowns: {question}")
    assert prompt.step1("Q?") == [("user", "Use {x} for unknowns: Q?")]
    assert prompt.step2("Q?", "set {a}")[1] == ("assistant", "set {a}")


def test_prompt_with_options_placeholder_needs_choices() -> None:
    prompt = PromptLibrary.builtin().get("option_elimination")
    assert prompt.needs_choices
    with pytest.raises(ValueError, match="option_elimination.*needs choices"):
        prompt.step1("Which?")


@pytest.mark.parametrize(
    ("question", "choices", "message"),
    [("  ", None, "empty question"), ("Q?", [], None), ("Q?", [str(i) for i in range(27)], "at most 26")],
)
def test_bad_render_inputs(question: str, choices: list[str] | None, message: str | None) -> None:
    prompt = make_prompt()
    if message is None:  # an empty choice list is an open question
        assert prompt.step1(question, choices) == prompt.step1(question)
        return
    with pytest.raises(ValueError, match=message):
        prompt.step1(question, choices)


# --- selection ---------------------------------------------------------------------------------


def test_get_unknown_id_lists_known_ids() -> None:
    with pytest.raises(KeyError, match="image_decomposition"):
        PromptLibrary.builtin().get("nope")


def test_select_filters_keeps_order_and_caps() -> None:
    library = PromptLibrary.builtin()
    charts = library.select(task_type="chart")
    assert charts and all("chart" in p.task_types for p in charts)
    assert [p.id for p in charts] == [i for i in library.ids if i in {p.id for p in charts}]
    assert library.select(task_type="chart", k=2) == charts[:2]
    named = ["counting", "text_and_layout"]
    assert [p.id for p in library.select(ids=named)] == named
    assert library.select(ids=named, task_type="document") == [library.get("text_and_layout")]
    assert library.select() == list(library)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [({"task_type": "video"}, ValueError), ({"k": 0}, ValueError), ({"ids": ["nope"]}, KeyError)],
)
def test_select_refuses_bad_arguments(kwargs: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        PromptLibrary.builtin().select(**kwargs)


# --- user files --------------------------------------------------------------------------------


def test_user_file_overrides_in_place_and_appends_new(tmp_path: Path) -> None:
    override = GOOD_ENTRY.format(id="counting")
    path = prompts_file(tmp_path, override, GOOD_ENTRY.format(id="my_prompt"))
    builtin, library = PromptLibrary.builtin(), PromptLibrary.load(path)
    assert library.ids == [*builtin.ids, "my_prompt"]
    assert library.get("counting").step1_template == "Look closely: {question}"
    assert library.get("counting").task_types == ("scene",)
    assert library.get("text_and_layout") == builtin.get("text_and_layout")
    assert library.content_hash != builtin.content_hash


def test_load_accepts_a_string_path(tmp_path: Path) -> None:
    path = prompts_file(tmp_path, GOOD_ENTRY.format(id="my_prompt"))
    assert "my_prompt" in PromptLibrary.load(str(path))


def entry(**fields: str | None) -> str:
    """One YAML prompt entry: valid defaults, overridden (or dropped with None) by ``fields``."""
    values = {"description": "d", "task_types": "[scene]", "step1": "'a {question}'", "step2": "'b'"}
    values.update(fields)
    lines = [f"{key}: {value}" for key, value in values.items() if value is not None]
    return "  - " + "\n    ".join(lines) + "\n"


BAD_ENTRIES = {
    "unknown task type": (
        entry(id="bad_type", task_types="[video]"),
        "'bad_type': task_types: unknown task type(s) ['video']",
    ),
    "missing field": (entry(id="no_step2", step2=None), "'no_step2': step2: required field is missing"),
    "unknown placeholder": (
        entry(id="bad_slot", step1="'a {question} {image}'"),
        "'bad_slot': step1: unknown placeholder(s) {image}",
    ),
    "empty template": (entry(id="blank", step2="'  '"), "'blank': step2: must not be empty"),
    "analysis in step 1": (
        entry(id="early", step1="'{analysis} {question}'"),
        "'early': step1: {analysis} is only known in step 2",
    ),
    "no question": (
        entry(id="mute", step1="look", step2="answer"),
        "'mute': {question} must appear in step1 or step2",
    ),
    "single-turn step 2 without question": (
        entry(id="lost", step2="'Notes: {analysis}'"),
        "'lost': step2: quoting {analysis} makes step 2 one turn",
    ),
    "malformed braces": (entry(id="brace", step1="'a {question'"), "'brace': step1: malformed braces"),
    "unknown field": (entry(id="extra", step3="c"), "'extra': step3: unknown field"),
    "bad id": (entry(id="Bad Id"), "'Bad Id': id: must be lower-case"),
    "not a mapping": ("  - just a string\n", "(no id): expected a mapping"),
}


@pytest.mark.parametrize("case", list(BAD_ENTRIES))
def test_each_validation_error_names_file_and_prompt(tmp_path: Path, case: str) -> None:
    entry, expected = BAD_ENTRIES[case]
    path = prompts_file(tmp_path, entry)
    message = load_error(path)
    assert str(path) in message
    assert expected in message


def test_all_problems_are_gathered_into_one_error(tmp_path: Path) -> None:
    entries = [entry for entry, _ in BAD_ENTRIES.values()]
    path = prompts_file(tmp_path, GOOD_ENTRY.format(id="fine"), *entries)
    message = load_error(path)
    for _, expected in BAD_ENTRIES.values():
        assert expected in message
    assert "'fine'" not in message
    assert all(line.strip().startswith(str(path)) for line in message.splitlines()[1:])


def test_duplicate_id_in_one_file(tmp_path: Path) -> None:
    path = prompts_file(tmp_path, GOOD_ENTRY.format(id="twice"), GOOD_ENTRY.format(id="twice"))
    assert "'twice': id defined twice" in load_error(path)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("prompts:\n  - id: x\n    step1: [unclosed\n", "not valid YAML (line"),
        ("- id: x\n", "expected a mapping with a 'prompts' list"),
        ("prompts: []\n", "non-empty list"),
        ("prompts:\n  - id: x\nextra: 1\n", "unknown top-level key(s) ['extra']"),
        ("", "expected a mapping"),
    ],
)
def test_file_level_errors_name_the_file(tmp_path: Path, body: str, expected: str) -> None:
    path = write_yaml(tmp_path, body)
    message = load_error(path)
    assert str(path) in message
    assert expected in message


def test_missing_file(tmp_path: Path) -> None:
    assert "prompt file not found" in load_error(tmp_path / "absent.yaml")


# --- content hash ------------------------------------------------------------------------------


def test_content_hash_is_stable_and_order_independent() -> None:
    prompts = list(PromptLibrary.builtin())
    assert PromptLibrary(prompts).content_hash == PromptLibrary.load().content_hash
    assert PromptLibrary(list(reversed(prompts))).content_hash == PromptLibrary(prompts).content_hash
    assert len(PromptLibrary(prompts).content_hash) == 64


@pytest.mark.parametrize("field", ["step1_template", "step2_template", "description", "task_types"])
def test_content_hash_changes_when_one_prompt_changes(field: str) -> None:
    prompts = list(PromptLibrary.builtin())
    first = prompts[0]
    changed_value = ("chart",) if field == "task_types" else getattr(first, field) + " Be brief."
    changed = [dataclasses.replace(first, **{field: changed_value}), *prompts[1:]]
    assert prompt_set_hash(changed) != prompt_set_hash(prompts)
    assert changed[0].content_hash != first.content_hash
    assert changed[1].content_hash == prompts[1].content_hash


def test_duplicate_ids_refused_by_library() -> None:
    prompt = make_prompt()
    with pytest.raises(PromptError, match="duplicate prompt id 'p'"):
        PromptLibrary([prompt, prompt])
