"""Short answers out of verbose model outputs, and the normal form answers are voted in.

Step-2 outputs of small models rarely obey "a single word or phrase": they say "The answer is
**2**.", "Yes, the cat is black." or "B. Because ...". String metrics (ANLS, VQA accuracy) and
the ensemble vote need the short answer alone, so it is cut out here by a fixed sequence of
rules, each one a common surface form:

1. markup: markdown bold/italics/code, list bullets, chat special tokens;
2. an explicit marker ("the answer is X", "Answer: X", "final answer: X"): its last one wins;
3. the first non-empty line, then its first sentence ("X. Because ..." -> "X");
4. trailing explanations (", because ...", " since ...", " - ...", a closing parenthetical);
5. lead-ins ("Based on the image, ", "It is a ", "I think ", "The colour of the car is ",
   "There are " (followed by a number: the number alone));
6. yes/no at the start ("Yes, the cat is black" -> "Yes");
7. surrounding quotes and a trailing period (not one that ends an abbreviation like "U.S.").

For a multiple-choice question the result is the option **letter** ("B"), whether the model
wrote "B", "(B)", "B.", "B. red", "Option B", "The answer is (B)" or the option's text: the
direct baseline asks for the letter, and lmms-eval and VLMEvalKit score multiple choice by
letter. Output that names no option is returned as its short answer, unmapped.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from sdrt.prompts.library import OPTION_LETTERS

_SPECIAL_TOKENS = re.compile(r"<\|[^|>]*\|>|</?s>|<end_of_turn>|<eos>", re.IGNORECASE)
_MARKDOWN = re.compile(r"\*\*|__|`+|(?<!\w)\*(?=\S)|(?<=\S)\*(?!\w)")
_BULLET = re.compile(r"^\s*(?:[-*•]|#+)\s+", re.MULTILINE)
_ANSWER_MARKER = re.compile(
    r"\b(?:final\s+answer|correct\s+answer|short\s+answer|answer)\b\s*"
    r"(?:is|would\s+be|should\s+be|will\s+be|[:=])\s*:?\s*",
    re.IGNORECASE,
)
_EXPLANATION = re.compile(
    r"(?:\s*[,;:]\s*|\s+)(?:because|since|as\s+(?:shown|seen|indicated|it|they|there)|which\s+(?:is|are|means)"
    r"|due\s+to|according\s+to|given\s+that|so\s+the|this\s+is)\b|\s+[-–—]\s+|\s*\([^()]*\)\s*$",
    re.IGNORECASE,
)
_LEAD_IN_CONTEXT = re.compile(
    r"^(?:based\s+on|according\s+to|looking\s+at|from|in)\s+(?:the|this|my|your)\s+[^,]{1,60},\s*",
    re.IGNORECASE,
)
_LEAD_IN_COPULA = re.compile(
    r"^(?:i\s+think|i\s+believe|i\s+see|the\s+(?:image|picture|photo)\s+shows|it\s+is|it's|it\s+was"
    r"|this\s+is|that\s+is|these\s+are|those\s+are|they\s+are)\s+(?:(?:a|an|the)\s+)?",
    re.IGNORECASE,
)
_LEAD_IN_ATTRIBUTE = re.compile(
    r"^the\s+(?:colou?r|number|total|value|name|word|text|shape|time|year|count|price|title|amount)\b"
    r"[^,]{0,40}?\s+(?:is|are|was|were|reads|says)\s+(?:(?:a|an|the)\s+)?",
    re.IGNORECASE,
)
_THERE_IS = re.compile(r"^there\s+(?:is|are)\s+(?:(?:a|an|the)\s+)?", re.IGNORECASE)
_YES_NO = re.compile(
    r"^(yes|no)\b(?:\s*[,.!;:]|\s+(?:it|there|the|they|he|she|this|that|i|you|we)\b|\s*$)", re.IGNORECASE
)
_ABBREVIATIONS = frozenset(
    {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "no", "mt", "inc", "ltd", "co", "etc"}
)
_QUOTES = "\"'“”‘’`"
_BARE_LETTER = re.compile(r"^\(?([A-Za-z])\)?\s*[.):]?$")
_LETTER_WITH_TEXT = re.compile(r"^(?:\(([A-Za-z])\)|([A-Z])[.):])\s*\S")
_NAMED_OPTION = re.compile(r"^(?:the\s+)?(?:option|choice)\s*\(?([A-Za-z])\)?(?:\W|$)", re.IGNORECASE)
_LEADING_NUMBER = re.compile(r"^(\d+(?:[.,]\d+)*)\b")


def extract_short_answer(text: str, choices: Sequence[str] | None = None) -> str:
    """The short answer in ``text``; for multiple choice, the option letter when one can be read."""
    cleaned = _after_answer_marker(_strip_markup(text))
    if choices and (letter := _letter_form(_first_line(cleaned), choices)):
        return letter
    short = _shorten(cleaned)
    if choices:
        return _letter_form(short, choices) or _option_text_letter(short, choices) or short
    return short


def _shorten(text: str) -> str:
    short = _first_sentence(_first_line(text))
    short = _cut_explanation(short)
    short = _strip_lead_ins(short)
    if yes_no := _YES_NO.match(short):
        return yes_no.group(1)
    return _strip_quotes_and_period(short)


def _strip_markup(text: str) -> str:
    text = _SPECIAL_TOKENS.sub(" ", text or "")
    text = _BULLET.sub("", _MARKDOWN.sub("", text))
    return text.strip()


def _after_answer_marker(text: str) -> str:
    """Text after the last "answer is"/"answer:" marker that has something after it."""
    for match in reversed(list(_ANSWER_MARKER.finditer(text))):
        rest = text[match.end() :].strip()
        if rest:
            return rest
    return text


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _first_sentence(text: str) -> str:
    """Cut at the first sentence end, skipping decimals, initials and common abbreviations."""
    for match in re.finditer(r"[.!?](?=\s+\S)", text):
        words = text[: match.start()].split()
        last = words[-1].lower() if words else ""
        if len(last) <= 1 or "." in last or last in _ABBREVIATIONS:
            continue
        return text[: match.start() + (0 if text[match.start()] == "." else 1)].strip()
    return text


def _cut_explanation(text: str) -> str:
    match = _EXPLANATION.search(text)
    return text[: match.start()].strip() if match and match.start() > 0 else text


def _strip_lead_ins(text: str) -> str:
    text = _replace_if_left(_LEAD_IN_CONTEXT, text)
    for _ in range(3):  # "I think it is a cat": lead-ins stack
        shorter = _replace_if_left(_LEAD_IN_ATTRIBUTE, _replace_if_left(_LEAD_IN_COPULA, text))
        if shorter == text:
            break
        text = shorter
    there = _THERE_IS.match(text)
    if there and text[there.end() :].strip():
        rest = text[there.end() :].strip()
        number = _LEADING_NUMBER.match(rest)  # "There are 3 apples" answers a count: "3"
        return number.group(1) if number else rest
    return text


def _replace_if_left(pattern: re.Pattern[str], text: str) -> str:
    match = pattern.match(text)
    return text[match.end() :].strip() if match and text[match.end() :].strip() else text


def _strip_quotes_and_period(text: str) -> str:
    text = text.strip().rstrip("!,;:").strip()
    if len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    if text.endswith(".") and not re.search(r"(?:\b[A-Za-z]\.){2,}$", text):
        text = text[:-1].rstrip()
    if len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    return text


# --- multiple choice ---------------------------------------------------------------------------


def _letter_form(text: str, choices: Sequence[str]) -> str | None:
    """ "B", "(B)", "B.", "B) red", "Option B" -> "B", if B is one of the options."""
    text = text.strip()
    for pattern in (_BARE_LETTER, _LETTER_WITH_TEXT, _NAMED_OPTION):
        match = pattern.match(text)
        if match:
            letter = next(g for g in match.groups() if g).upper()
            if letter in OPTION_LETTERS[: len(choices)]:
                return letter
    return None


def _option_text_letter(text: str, choices: Sequence[str]) -> str | None:
    """The letter of the option the answer names: exactly, else the one option it alone contains."""
    answer = normalize_answer(text)
    if not answer:
        return None
    options = [normalize_answer(c) for c in choices]
    for letter, option in zip(OPTION_LETTERS, options, strict=False):
        if option and option == answer:
            return letter
    contained = [
        letter
        for letter, option in zip(OPTION_LETTERS, options, strict=False)
        if option and re.search(rf"(?<!\w){re.escape(option)}(?!\w)", answer)
    ]
    return contained[0] if len(contained) == 1 else None


# --- normal form for voting --------------------------------------------------------------------

_SMALL_NUMBERS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty"
)
_TENS = "thirty forty fifty sixty seventy eighty ninety"
_NUMBER_WORDS = {word: str(value) for value, word in enumerate(_SMALL_NUMBERS.split())} | {
    word: str(30 + 10 * i) for i, word in enumerate(_TENS.split())
}
_ARTICLES = frozenset({"a", "an", "the"})


def normalize_answer(text: str) -> str:
    """Lower-case, no punctuation or articles, small number words as digits: "Two." == "2" == "two"."""
    text = (text or "").lower().strip()
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 1,000 -> 1000
    text = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", text)  # periods, except inside numbers
    text = re.sub(r"[^\w\s.]|_", " ", text)
    tokens = [_NUMBER_WORDS.get(token, token) for token in text.split() if token not in _ARTICLES]
    return " ".join(_trim_decimal(token) for token in tokens)


def _trim_decimal(token: str) -> str:
    if re.fullmatch(r"\d+\.\d+", token):
        return token.rstrip("0").rstrip(".")
    return token
