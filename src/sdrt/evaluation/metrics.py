"""Per-item scores for the VQA benchmarks, computed the way the community's evaluators compute them.

Every function scores one prediction against its references and returns a float in [0, 1]; a
benchmark's number is the mean over its items. Published numbers are only comparable when the
per-item rules agree to the digit, so each function names the evaluator it follows (lmms-eval or
VLMEvalKit) and, where they differ, offers the other convention through a keyword.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = [
    "METRICS",
    "Scorer",
    "anls",
    "exact_match",
    "multiple_choice_accuracy",
    "normalize_vqa_answer",
    "relaxed_accuracy",
    "score",
    "vqa_accuracy",
]

# --------------------------------------------------------------------------------------------
# ANLS (DocVQA, InfoVQA)
# --------------------------------------------------------------------------------------------


def _levenshtein(a: str, b: str) -> int:
    """Unit-cost edit distance.

    Hand-written: none of the project's dependencies ships one, and two rows of the
    dynamic-programming table are all it takes.
    """
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def _collapse_lower(text: str) -> str:
    """Lower-case with runs of white space made single spaces and the ends trimmed."""
    return " ".join(text.lower().split())


def anls(
    prediction: str,
    answers: list[str],
    threshold: float = 0.5,
    *,
    strict: bool = False,
    raw_lengths: bool = False,
) -> float:
    """Average Normalised Levenshtein Similarity for one item (DocVQA, InfoVQA).

    Both strings are lower-cased and their white space collapsed; the similarity to a reference
    is ``1 - dist / max(len)`` and the item's score is the best over its references, set to 0
    when it falls below ``threshold``.

    Default (VLMEvalKit's ``anls_compute``): lengths of the normalised strings, and a similarity
    exactly at the threshold is kept (lmms-eval keeps it too), so ``"abcd"`` against ``"abef"``
    scores 0.5.
    ``strict=True``: the published definition (and the ``anls`` package) keeps a similarity
    only when it is strictly above the threshold, so the same pair scores 0.
    ``raw_lengths=True``: lmms-eval's ``anls`` metric, which divides the distance between the
    normalised strings by the longer of the *unnormalised* strings, so padding white space
    raises the score.
    No references gives 0.0 (lmms-eval raises on them).
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    if not answers:
        return 0.0
    pred = _collapse_lower(prediction)
    best = max(_similarity(pred, prediction, answer, raw_lengths) for answer in answers)
    kept = best > threshold if strict else best >= threshold
    return best if kept else 0.0


def _similarity(pred: str, raw_prediction: str, answer: str, raw_lengths: bool) -> float:
    """``1 - NL`` between a normalised prediction and one reference."""
    ref = _collapse_lower(answer)
    if raw_lengths:
        # lmms-eval measures ``len(s.upper())``; upper() changes the length of a few letters (ß).
        length = max(len(answer.upper()), len(raw_prediction.upper()))
    else:
        length = max(len(ref), len(pred))
    distance = _levenshtein(ref, pred) / length if length else 0.0
    return max(0.0, 1.0 - distance)


# --------------------------------------------------------------------------------------------
# VQA soft accuracy (VQAv2, TextVQA)
# --------------------------------------------------------------------------------------------

# Characters EvalAI removes (when next to a space) or turns into a space (elsewhere).
_EVALAI_PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!'
# A period survives only when a digit follows it ("3.5" stays, "yes." loses it).
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
# The reference code passes ``re.UNICODE`` (= 32) where ``count`` goes, so at most 32 periods go.
_PERIOD_REMOVAL_LIMIT = 32
_NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})
# Full forms EvalAI restores. Its table maps each of these, written with any one apostrophe
# missing, back to the full form ("dont" -> "don't", "couldnt've" -> "couldn't've"); the table is
# rebuilt from this list below. Its upper-case keys ("Im") never meet the lower-cased text and
# its identity entries ("let's") change nothing, so both are left out.
_FULL_CONTRACTIONS = """
ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't
haven't he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am mightn't mightn't've
might've mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't she'd've should've
shouldn't shouldn't've somebody'd've somebody'll somebody's someone'd someone'd've someone'll
someone's something'd something'd've something'll that's there'd there'd've there're there's
they'd they'd've they'll they're they've 'twas wasn't we'd've we've weren't what'll what're
what's what've when's where'd where's where've who'd who'd've who'll who's who've why'll why're
why's won't would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll
you're you've
"""


def _build_contractions() -> dict[str, str]:
    """EvalAI's contraction table: every one-apostrophe-missing spelling -> the full form."""
    table: dict[str, str] = {}
    for full in _FULL_CONTRACTIONS.split():
        for i, char in enumerate(full):
            if char == "'":
                table[full[:i] + full[i + 1 :]] = full
    # EvalAI's table holds this entry backwards; kept so that scores match it.
    table["somebody'd"] = "somebodyd"
    return table


_CONTRACTIONS = _build_contractions()


def _split_possessive(text: str) -> str:
    """EvalAI's first step: lower-case, drop commas and question marks, detach "'s"."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's")
    return text.strip().replace("\n", " ").replace("\t", " ").strip()


def _strip_punctuation(text: str) -> str:
    """Remove punctuation that touches a space, turn the rest into spaces, drop stray periods.

    Which of the two happens to a character is decided on the text as it came in, as EvalAI does.
    """
    out = text
    for char in _EVALAI_PUNCTUATION:
        touches_space = f"{char} " in text or f" {char}" in text
        out = out.replace(char, "" if touches_space else " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=_PERIOD_REMOVAL_LIMIT)


def _rewrite_words(text: str) -> str:
    """Number words to digits, articles dropped, contractions restored, single spaces."""
    words = [_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES)


def normalize_vqa_answer(text: str) -> str:
    """The EvalAI answer processor as lmms-eval applies it to TextVQA and VQAv2 answers.

    Commas vanish in the first step, so "1,000" and "1000" agree; "'s" is detached, so "it's"
    becomes "it 's" and does not equal "its".
    """
    return _rewrite_words(_strip_punctuation(_split_possessive(text)))


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """VQA soft accuracy for one item (VQAv2, TextVQA), as lmms-eval's TextVQA task computes it.

    The prediction and every reference go through ``normalize_vqa_answer``. For each reference
    left out in turn, the prediction earns ``min(1, matches among the others / 3)``; the score is
    the mean over the references, so 3 matching references of 10 give 0.9 and 4 give 1.0.

    With fewer than 10 references the same formula runs over those present: n references that
    all match give ``min(1, (n - 1) / 3)``, so a single reference always scores 0 (use
    ``exact_match`` for single-answer data). No references gives 0.0. lmms-eval's VQAv2 task
    skips normalising the references when all ten are the same string; this function always
    normalises them.
    """
    if not answers:
        return 0.0
    pred = normalize_vqa_answer(prediction)
    hits = [normalize_vqa_answer(answer) == pred for answer in answers]
    total = sum(hits)
    # Leaving reference i out leaves ``total - hits[i]`` matches among the others.
    return statistics.mean(min(1.0, (total - hit) / 3) for hit in hits)


# --------------------------------------------------------------------------------------------
# Relaxed accuracy (ChartQA)
# --------------------------------------------------------------------------------------------


def _chart_number(text: str) -> float | None:
    """A number as ChartQA's evaluators read it: ``float()``, a trailing "%" meaning /100.

    Infinities and NaN count as text, so "nan" is compared as a word rather than never matching.
    """
    try:
        value = float(text.rstrip("%")) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _relaxed_match(prediction: str, target: str, tolerance: float) -> bool:
    """Relative tolerance for a non-zero numeric reference, else case-insensitive equality."""
    pred_value, target_value = _chart_number(prediction), _chart_number(target)
    if pred_value is not None and target_value:
        return abs(pred_value - target_value) / abs(target_value) <= tolerance
    return prediction.lower() == target.lower()


def relaxed_accuracy(prediction: str, answers: list[str], tolerance: float = 0.05) -> float:
    """ChartQA's relaxed accuracy for one item, as lmms-eval's and VLMEvalKit's
    ``relaxed_correctness`` compute it, best over the references.

    A number within ``tolerance`` (relative, inclusive) of a non-zero numeric reference is right;
    anything else needs a case-insensitive exact match. A trailing "%" divides by 100, so "10%"
    equals "0.1" but not "10". A zero reference needs the same text ("0.0" is not "0"); "1,000"
    is text, not a number. Both strings are stripped first (VLMEvalKit strips the prediction,
    lmms-eval neither). No references gives 0.0.
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be non-negative, got {tolerance}")
    pred = prediction.strip()
    return max((float(_relaxed_match(pred, answer.strip(), tolerance)) for answer in answers), default=0.0)


# --------------------------------------------------------------------------------------------
# Exact match (easy-vqa, generated scenes)
# --------------------------------------------------------------------------------------------


def _plain(text: str) -> str:
    """Lower-case, single-spaced, without trailing periods: how short answers differ harmlessly."""
    return _collapse_lower(text).rstrip(".").rstrip()


def exact_match(prediction: str, answers: list[str]) -> float:
    """1.0 when the prediction equals a reference up to case, spacing and a trailing period.

    Meant for closed answer sets (easy-vqa, generated scenes) where references are single words
    written one way; no number words or articles are rewritten. No references gives 0.0.
    """
    pred = _plain(prediction)
    return float(any(_plain(answer) == pred for answer in answers))


# --------------------------------------------------------------------------------------------
# Multiple choice (ScienceQA, A-OKVQA)
# --------------------------------------------------------------------------------------------

_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# "B", "B.", "B)", "B:", "(B)", "(B).", "B)." -- upper-case only: a lone "a" is usually an article.
_LETTER_ALONE = re.compile(r"(?:\((?P<paren>[A-Z])\)|(?P<bare>[A-Z])[).:]?)\.?")
# "B. dog", "(B) dog", "B) dog": a letter with its punctuation, then text.
_LETTER_THEN_TEXT = re.compile(r"(?:\((?P<paren>[A-Z])\)|(?P<bare>[A-Z])[).:])\.? (?P<text>.+)")
# "The answer is", "Answer:", "The correct option is", "Final answer:" ...
_ANSWER_PHRASE = re.compile(
    r"(?:the )?(?:correct |final |best )?(?:answer|option|choice)(?: is:?|:) ?", re.IGNORECASE
)


def _letter_of(match: re.Match[str]) -> str:
    return match.group("paren") or match.group("bare")


def _lenient_choice(prediction: str, choices: Sequence[str]) -> int | None:
    """The option a free-form prediction names, or None when it names none or several."""
    text = " ".join(prediction.split())
    phrase = _ANSWER_PHRASE.match(text)
    if phrase:
        text = text[phrase.end() :]
    texts = [_plain(choice) for choice in choices]
    if alone := _LETTER_ALONE.fullmatch(text):
        index = _LETTERS.index(_letter_of(alone))
        return index if index < len(choices) else None
    if with_text := _LETTER_THEN_TEXT.fullmatch(text):
        index = _LETTERS.index(_letter_of(with_text))
        named = _plain(with_text.group("text"))
        if index >= len(choices) or (named in texts and texts[index] != named):
            return None  # the letter and the text name different options
        return index
    matches = [i for i, choice in enumerate(texts) if choice == _plain(text)]
    return matches[0] if len(matches) == 1 else None


def _strict_choice(prediction: str, answer_letter: str) -> bool:
    """lmms-eval's ScienceQA rule: exactly the letter, or an upper-case letter then "."."""
    if prediction == answer_letter:
        return True
    return (
        len(prediction) >= 2
        and prediction[0].isupper()
        and prediction[1] == "."
        and prediction[0] == answer_letter
    )


def multiple_choice_accuracy(
    prediction: str, choices: list[str], answer_index: int, *, strict: bool = False
) -> float:
    """1.0 when the prediction names the right option (ScienceQA, A-OKVQA).

    Default (lenient, in the spirit of VLMEvalKit's rule-based matching): after an optional lead
    such as "The answer is" or "Answer:", the prediction may be an upper-case letter alone
    ("B", "B.", "(B)", "B)", "B:"), a letter followed by text ("B. dog": the letter decides unless
    the text is another option's), or the option's text (case, spacing and a trailing period
    ignored). Predictions that name no option, name two
    ("A or B"), whose letter and text disagree, or whose letter is out of range score 0. Option
    text inside a longer sentence is not searched for.
    ``strict=True``: lmms-eval's ScienceQA rule, applied to the prediction as given: only the
    exact letter, or a string starting with an upper-case letter and ".", whose letter decides
    ("B. cat" counts as B even when B is "dog").
    """
    if len(choices) > len(_LETTERS):
        raise ValueError(f"at most {len(_LETTERS)} choices can be named by a letter, got {len(choices)}")
    if not 0 <= answer_index < len(choices):
        raise ValueError(f"answer_index {answer_index} is not one of {len(choices)} choices")
    if strict:
        return float(_strict_choice(prediction, _LETTERS[answer_index]))
    return float(_lenient_choice(prediction, choices) == answer_index)


# --------------------------------------------------------------------------------------------
# Registry: benchmarks name their metric in data
# --------------------------------------------------------------------------------------------

Scorer = Callable[[str, Any], float]


def _field(record: Any, name: str) -> Any:
    """A field from a mapping or an object (a ``VQARecord``, a JSON row), None when absent."""
    if isinstance(record, Mapping):
        return record.get(name)
    return getattr(record, name, None)


def _answers(record: Any) -> list[str]:
    answers = _field(record, "answers")
    if answers is None:
        return []
    return [answers] if isinstance(answers, str) else list(answers)


def _score_multiple_choice(prediction: str, record: Any) -> float:
    choices, index = _field(record, "choices"), _field(record, "answer_index")
    if choices is None or index is None:
        raise ValueError("multiple_choice_accuracy needs a record with 'choices' and 'answer_index'")
    return multiple_choice_accuracy(prediction, list(choices), int(index))


def object_accuracy(prediction: str, answers: list[str]) -> float:
    """The share of a scene's objects described right, in the right place; best over references.

    Objects are the "size colour shape" phrases of a description, read left to right; the
    i-th predicted object must equal the i-th reference object in all three. Dividing by the
    longer of the two lists charges a missing or an invented object as one wrong object. A
    reference that names no object is matched as ``exact_match`` would. Our own metric (the
    community evaluators have no scene descriptions).
    """
    from sdrt.data.scenes import description_objects

    predicted = description_objects(prediction)
    best = 0.0
    for answer in answers:
        reference = description_objects(answer)
        if not reference:
            best = max(best, exact_match(prediction, [answer]))
            continue
        right = sum(p == r for p, r in zip(predicted, reference, strict=False))
        best = max(best, right / max(len(predicted), len(reference)))
    return best


METRICS: dict[str, Scorer] = {
    "anls": lambda prediction, record: anls(prediction, _answers(record)),
    "vqa_accuracy": lambda prediction, record: vqa_accuracy(prediction, _answers(record)),
    "relaxed_accuracy": lambda prediction, record: relaxed_accuracy(prediction, _answers(record)),
    "multiple_choice_accuracy": _score_multiple_choice,
    "exact_match": lambda prediction, record: exact_match(prediction, _answers(record)),
    "object_accuracy": lambda prediction, record: object_accuracy(prediction, _answers(record)),
}


def score(metric: str, prediction: str, record: Any) -> float:
    """Score one prediction with the metric a benchmark names; unknown names list the known ones."""
    try:
        scorer = METRICS[metric]
    except KeyError:
        raise KeyError(f"unknown metric {metric!r}; known: {sorted(METRICS)}") from None
    return scorer(prediction, record)
