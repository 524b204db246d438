"""Dual-query prompts: step 1 analyses the image and question, step 2 answers given that analysis.

Prompts are data. The built-in set lives in ``builtin.yaml`` beside this module; a user file in
the same format adds prompts or replaces built-in ones by id::

    prompts:
      - id: colour_check                 # lower-case letters, digits, '_' or '-'
        description: Name the colours before answering.
        task_types: [scene]              # any of sdrt.data.records.TASK_TYPES
        step1: "Name the colours of the objects in this question: {question}"
        step2: "Using those colours, answer the question: {question}"

Placeholders (``{{`` and ``}}`` give literal braces; nothing else may stand in braces):

* ``{question}``: the question text. It must appear in step 1 or step 2.
* ``{options}``: the choices as ``A. ...`` lines. A template that uses it is for multiple-choice
  questions only. Without it, a question with choices gets the options appended on their own
  lines after any template that mentions ``{question}``.
* ``{analysis}``: step 2 only. A step-2 template that quotes the analysis itself is rendered as a
  single user turn; otherwise step 2 is a three-turn conversation (step-1 request, the model's
  analysis as the assistant turn, step-2 request).

Step 2 always ends with the same answer instruction as the direct baseline (a single word or
phrase, or the option letter), so prompts differ only in their reasoning and every answer has
the format the extraction and metrics expect.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sdrt.data.records import TASK_TYPES

if TYPE_CHECKING:  # the model interface imports torch; prompts stay light to import
    from sdrt.models.base import Conversation

SHORT_ANSWER_INSTRUCTION = "Answer the question using a single word or phrase."
CHOICE_INSTRUCTION = "Answer with the option's letter from the given choices directly."
PLACEHOLDERS: frozenset[str] = frozenset({"question", "options", "analysis"})
RENDER_VERSION = 1
"""Bump when the rendering rules change, so that every recorded content hash changes with them."""

PAUSE_MARK = "."
"""What stands at a pause slot in the text; the adapter adds its learned state there, so any
one-token mark that means nothing serves."""
OPTION_LETTERS = string.ascii_uppercase
_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
BUILTIN_FILE = "builtin.yaml"


class PromptError(ValueError):
    """A prompt file or template is invalid; the message names the file and every prompt at fault."""


# --- rendering ---------------------------------------------------------------------------------


def format_options(choices: Sequence[str]) -> str:
    """Choices as ``A. first`` lines, the layout lmms-eval and VLMEvalKit use for multiple choice."""
    if not choices:
        raise ValueError("a multiple-choice question needs at least one choice")
    if len(choices) > len(OPTION_LETTERS):
        raise ValueError(f"at most {len(OPTION_LETTERS)} choices can be lettered, got {len(choices)}")
    lettered = zip(OPTION_LETTERS[: len(choices)], choices, strict=True)
    return "\n".join(f"{letter}. {str(choice).strip()}" for letter, choice in lettered)


def answer_instruction(choices: Sequence[str] | None) -> str:
    return CHOICE_INSTRUCTION if choices else SHORT_ANSWER_INSTRUCTION


@dataclass(frozen=True)
class StudentLayout:
    """How the one-pass student's prompt is laid out: an adapter's choice, saved with it, so
    that it is asked at evaluation exactly as it was trained.

    ``pause_tokens`` > 0 opens the answer with that many pause marks (an unfinished assistant
    turn the answer continues): the positions where an adapter with pause slots writes its
    learned states, so the one pass has room to compute before the first answer token.
    ``question_first`` also states the question in a system turn, before the image: a causal
    model's image positions then see the question, so the work of finding what it asks about
    can be spread over them, layer by layer, rather than left to the few positions after it.
    """

    pause_tokens: int = 0
    question_first: bool = False


QUESTION_PREVIEW = "Question: {question}"
"""The system turn's line that states the question before the image (``question_first``)."""


def direct_prompt(
    question: str,
    choices: Sequence[str] | None = None,
    layout: StudentLayout = StudentLayout(),
    system: str | None = None,
) -> Conversation:
    """The no-reasoning baseline: question, options if any, and the standard answer instruction.

    ``layout``: an adapter's student layout (the plain baseline by default). ``system``: the
    model's own system text, which a ``question_first`` system turn keeps before the question
    (it replaces the model's default otherwise).
    """
    lines = [_clean_question(question)]
    if choices:
        lines.append(format_options(choices))
    lines.append(answer_instruction(choices))
    return laid_out("\n".join(lines), lines[0], layout, system)


def laid_out(request: str, question: str, layout: StudentLayout, system: str | None = None) -> Conversation:
    """The one user turn ``request`` in a student ``layout``: its answer opened with the pause
    slots, and ``question`` stated in a system turn before the image (after ``system``)."""
    asked: Conversation = [("user", request), *pause_turn(layout.pause_tokens)]
    if not layout.question_first:
        return asked
    preview = QUESTION_PREVIEW.format(question=_clean_question(question))
    return [("system", f"{system}\n{preview}" if system else preview), *asked]


def pause_turn(count: int) -> Conversation:
    """The opened answer turn of ``count`` pause marks (none for 0), to end a conversation with.

    Spaced full stops: one token each in the tokenizers sdrt's backends use.
    """
    if count < 0:
        raise ValueError(f"pause_tokens must be >= 0, got {count}")
    return [("assistant", " ".join([PAUSE_MARK] * count))] if count else []


def _clean_question(question: str) -> str:
    if not question or not question.strip():
        raise ValueError("empty question")
    return question.strip()


def template_fields(template: str) -> list[str]:
    """Placeholder names in a template, in order; malformed braces raise ``ValueError``."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"malformed braces ({exc}); write {{{{ and }}}} for literal braces") from None
    names = []
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if spec or conversion:
            raise ValueError(f"placeholder {{{name}}} may not carry a format spec or conversion")
        names.append(name)
    return names


# --- the prompt --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DualQueryPrompt:
    """One dual-query prompt; build it through ``PromptLibrary`` so its templates are validated."""

    id: str
    description: str
    task_types: tuple[str, ...]
    step1_template: str
    step2_template: str

    @property
    def quotes_analysis(self) -> bool:
        """Step 2 embeds the analysis in its own text instead of replaying it as an assistant turn."""
        return "analysis" in template_fields(self.step2_template)

    @property
    def needs_choices(self) -> bool:
        return any("options" in template_fields(t) for t in (self.step1_template, self.step2_template))

    @property
    def content_hash(self) -> str:
        return _sha256({"render": _render_rules(), "prompt": self.as_dict()})

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["task_types"] = list(self.task_types)
        return data

    def step1(self, question: str, choices: Sequence[str] | None = None) -> Conversation:
        """The analysis request; the backend attaches the image to this (first) user turn."""
        return [("user", self._fill(self.step1_template, question, choices))]

    def step2(self, question: str, analysis: str, choices: Sequence[str] | None = None) -> Conversation:
        """The answer request given the analysis, ending with the direct baseline's answer instruction."""
        request = self._fill(self.step2_template, question, choices, analysis=analysis.strip())
        request = f"{request}\n{answer_instruction(choices)}"
        if self.quotes_analysis:
            return [("user", request)]
        return [
            ("user", self._fill(self.step1_template, question, choices)),
            ("assistant", analysis.strip()),
            ("user", request),
        ]

    def direct(self, question: str, choices: Sequence[str] | None = None) -> Conversation:
        """The no-reasoning baseline (the same for every prompt), offered here for symmetry."""
        return direct_prompt(question, choices)

    def _fill(self, template: str, question: str, choices: Sequence[str] | None, analysis: str = "") -> str:
        fields = template_fields(template)
        if "options" in fields and not choices:
            raise ValueError(f"prompt {self.id!r} is for multiple-choice questions: it needs choices")
        options = format_options(choices) if choices else ""
        text = template.format(question=_clean_question(question), options=options, analysis=analysis)
        if options and "options" not in fields and "question" in fields:
            text = f"{text}\n{options}"
        return text


# --- the library -------------------------------------------------------------------------------


class PromptLibrary:
    """An ordered, immutable set of prompts: the built-in ones, then any a user file adds."""

    def __init__(self, prompts: Sequence[DualQueryPrompt]) -> None:
        self._prompts: dict[str, DualQueryPrompt] = {}
        for prompt in prompts:
            if prompt.id in self._prompts:
                raise PromptError(f"duplicate prompt id {prompt.id!r}")
            self._prompts[prompt.id] = prompt

    @classmethod
    def builtin(cls) -> PromptLibrary:
        return cls(_builtin_prompts())

    @classmethod
    def load(cls, extra_yaml: str | Path | None = None) -> PromptLibrary:
        """The built-in prompts, with those of ``extra_yaml`` added or replacing built-ins by id.

        A replaced prompt keeps its built-in position; new prompts follow in file order.
        """
        merged = {p.id: p for p in _builtin_prompts()}
        if extra_yaml is not None:
            for prompt in read_prompt_file(extra_yaml):
                merged[prompt.id] = prompt
        return cls(list(merged.values()))

    @property
    def ids(self) -> list[str]:
        return list(self._prompts)

    @property
    def content_hash(self) -> str:
        """sha256 of every prompt's content; outputs record it so that template drift is visible."""
        return prompt_set_hash(self._prompts.values())

    def get(self, prompt_id: str) -> DualQueryPrompt:
        try:
            return self._prompts[prompt_id]
        except KeyError:
            raise KeyError(f"unknown prompt id {prompt_id!r}; known ids: {', '.join(self.ids)}") from None

    def select(
        self,
        ids: Sequence[str] | None = None,
        task_type: str | None = None,
        k: int | None = None,
    ) -> list[DualQueryPrompt]:
        """Prompts in ``ids`` order (or library order), kept if suited to ``task_type``, at most ``k``."""
        if task_type is not None and task_type not in TASK_TYPES:
            raise ValueError(f"unknown task type {task_type!r}; known: {', '.join(TASK_TYPES)}")
        if k is not None and k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        chosen = [self.get(i) for i in ids] if ids is not None else list(self._prompts.values())
        if task_type is not None:
            chosen = [p for p in chosen if task_type in p.task_types]
        return chosen if k is None else chosen[:k]

    def __len__(self) -> int:
        return len(self._prompts)

    def __iter__(self) -> Iterator[DualQueryPrompt]:
        return iter(self._prompts.values())

    def __contains__(self, prompt_id: object) -> bool:
        return prompt_id in self._prompts


def prompt_set_hash(prompts: Sequence[DualQueryPrompt] | Any) -> str:
    """Order-independent sha256 of the prompts' content and the rendering rules."""
    ordered = sorted((p.as_dict() for p in prompts), key=lambda d: d["id"])
    return _sha256({"render": _render_rules(), "prompts": ordered})


def _render_rules() -> dict[str, Any]:
    return {
        "version": RENDER_VERSION,
        "short_answer": SHORT_ANSWER_INSTRUCTION,
        "choice": CHOICE_INSTRUCTION,
    }


def _sha256(payload: Any) -> str:
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


# --- reading and validating files --------------------------------------------------------------


class PromptSpec(BaseModel):
    """The schema of one prompt entry in a YAML file."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    id: str = Field(pattern=_ID_PATTERN)
    description: str = Field(min_length=1)
    task_types: list[str] = Field(min_length=1)
    step1: str = Field(min_length=1)
    step2: str = Field(min_length=1)

    @field_validator("task_types")
    @classmethod
    def _known_task_types(cls, values: list[str]) -> list[str]:
        unknown = [v for v in values if v not in TASK_TYPES]
        if unknown:
            raise ValueError(f"unknown task type(s) {unknown}; known: {', '.join(TASK_TYPES)}")
        if len(set(values)) != len(values):
            raise ValueError(f"repeated task type in {values}")
        return values

    @field_validator("step1", "step2")
    @classmethod
    def _known_placeholders(cls, template: str) -> str:
        unknown = sorted(set(template_fields(template)) - PLACEHOLDERS)
        if unknown:
            shown = ", ".join("{" + name + "}" for name in unknown)
            known = ", ".join("{" + name + "}" for name in sorted(PLACEHOLDERS))
            raise ValueError(f"unknown placeholder(s) {shown}; known: {known}")
        return template

    def problems(self) -> list[str]:
        """Checks that span both templates."""
        step1, step2 = set(template_fields(self.step1)), set(template_fields(self.step2))
        found = []
        if "analysis" in step1:
            found.append("step1: {analysis} is only known in step 2")
        if "question" not in step1 | step2:
            found.append("{question} must appear in step1 or step2")
        if "analysis" in step2 and "question" not in step2:
            found.append("step2: quoting {analysis} makes step 2 one turn, so it must mention {question}")
        return found

    def to_prompt(self) -> DualQueryPrompt:
        return DualQueryPrompt(self.id, self.description, tuple(self.task_types), self.step1, self.step2)


def read_prompt_file(path: str | Path) -> list[DualQueryPrompt]:
    """Read and validate a prompt file; every problem is gathered into one ``PromptError``."""
    path = Path(path)
    if not path.is_file():
        raise PromptError(f"{path}: prompt file not found")
    return parse_prompts(path.read_text(encoding="utf-8"), source=str(path))


def parse_prompts(text: str, source: str) -> list[DualQueryPrompt]:
    """Validate prompt YAML text; ``source`` names the file in error messages."""
    entries = _prompt_entries(_load_yaml(text, source), source)
    prompts: list[DualQueryPrompt] = []
    problems: list[str] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        label = _entry_label(entry, index)
        spec, entry_problems = _validate_entry(entry)
        problems.extend(f"{source}: prompt {label}: {p}" for p in entry_problems)
        if spec is None:
            continue
        if spec.id in seen:
            problems.append(f"{source}: prompt {label}: id defined twice in this file")
        seen.add(spec.id)
        prompts.append(spec.to_prompt())
    if problems:
        raise PromptError(f"{len(problems)} problem(s) in prompt file {source}:\n  " + "\n  ".join(problems))
    return prompts


def _load_yaml(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise PromptError(f"{source}: not valid YAML{where}: {problem}") from None


def _prompt_entries(data: Any, source: str) -> list[Any]:
    if not isinstance(data, dict) or "prompts" not in data:
        raise PromptError(f"{source}: expected a mapping with a 'prompts' list at the top level")
    extra = sorted(str(key) for key in data if key != "prompts")
    if extra:
        raise PromptError(f"{source}: unknown top-level key(s) {extra}; only 'prompts' is known")
    entries = data["prompts"]
    if not isinstance(entries, list) or not entries:
        raise PromptError(f"{source}: 'prompts' must be a non-empty list of prompt entries")
    return entries


def _entry_label(entry: Any, index: int) -> str:
    if isinstance(entry, dict) and isinstance(entry.get("id"), str) and entry["id"].strip():
        return repr(entry["id"].strip())
    return f"#{index + 1} (no id)"


def _validate_entry(entry: Any) -> tuple[PromptSpec | None, list[str]]:
    if not isinstance(entry, dict):
        return None, [f"expected a mapping of fields, got {type(entry).__name__}"]
    try:
        spec = PromptSpec.model_validate(entry)
    except ValidationError as exc:
        return None, [_describe_error(err) for err in exc.errors()]
    problems = spec.problems()
    return (None if problems else spec), problems


def _describe_error(err: Any) -> str:
    field = ".".join(str(part) for part in err["loc"]) or "entry"
    message = re.sub(r"^Value error, ", "", err["msg"])
    if err["type"] == "missing":
        message = "required field is missing"
    elif err["type"] == "extra_forbidden":
        message = "unknown field"
    elif err["type"] == "string_too_short":
        message = "must not be empty"
    elif err["type"] == "string_pattern_mismatch":
        message = "must be lower-case letters, digits, '_' or '-' (starting with a letter or digit)"
    return f"{field}: {message}"


@cache
def _builtin_prompts() -> tuple[DualQueryPrompt, ...]:
    source = resources.files("sdrt.prompts").joinpath(BUILTIN_FILE)
    return tuple(parse_prompts(source.read_text(encoding="utf-8"), source=str(source)))
