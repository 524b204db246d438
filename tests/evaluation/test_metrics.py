"""Metric checks: hand-computed cases, independent re-statements, the registry and input errors."""

from __future__ import annotations

import itertools
import random
import re
import string
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from types import SimpleNamespace

import pytest
from metric_cases import CASES, Case

from sdrt.evaluation.metrics import (
    METRICS,
    anls,
    exact_match,
    multiple_choice_accuracy,
    normalize_vqa_answer,
    object_accuracy,
    relaxed_accuracy,
    score,
    vqa_accuracy,
)

LIBRARY = {
    "anls": anls,
    "vqa_accuracy": vqa_accuracy,
    "relaxed_accuracy": relaxed_accuracy,
    "exact_match": exact_match,
    "object_accuracy": object_accuracy,
}


def library_score(case: Case) -> float:
    if case.metric == "multiple_choice_accuracy":
        return multiple_choice_accuracy(case.prediction, list(case.choices), case.answer_index, **case.kwargs)
    return LIBRARY[case.metric](case.prediction, list(case.answers), **case.kwargs)


def case_id(case: Case) -> str:
    return f"{case.metric}-{case.name}"


# --------------------------------------------------------------------------------------------
# Hand-computed values
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_case_matches_hand_computed_value(case: Case) -> None:
    assert library_score(case) == pytest.approx(case.expected, abs=1e-12), case.why


def test_case_table_covers_every_metric() -> None:
    assert len(CASES) >= 40
    assert {case.metric for case in CASES} == set(METRICS)
    assert len({case_id(case) for case in CASES}) == len(CASES)


# --------------------------------------------------------------------------------------------
# Independent re-statements of the community's definitions
# --------------------------------------------------------------------------------------------


def ref_edit_distance(a: list[str], b: list[str]) -> int:
    """The full (len(a)+1) x (len(b)+1) table, filled row by row."""
    table = [[i + j if i == 0 or j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i, j in itertools.product(range(1, len(a) + 1), range(1, len(b) + 1)):
        substitution = table[i - 1][j - 1] + (0 if a[i - 1] == b[j - 1] else 1)
        table[i][j] = min(table[i - 1][j] + 1, table[i][j - 1] + 1, substitution)
    return table[len(a)][len(b)]


def ref_anls(
    prediction: str,
    answers: list[str],
    threshold: float = 0.5,
    strict: bool = False,
    raw_lengths: bool = False,
) -> float:
    """Threshold each reference first, then take the best (the order of the published formula)."""
    pred = re.sub(r"\s+", " ", prediction).strip().lower()
    per_reference = [0.0]
    for answer in answers:
        ref = re.sub(r"\s+", " ", answer).strip().lower()
        if raw_lengths:
            longest = max(len(answer.upper()), len(prediction.upper()))
        else:
            longest = max(len(ref), len(pred))
        similarity = 1.0 if longest == 0 else 1.0 - ref_edit_distance(list(ref), list(pred)) / longest
        passes = similarity > threshold if strict else similarity >= threshold
        per_reference.append(similarity if passes else 0.0)
    return max(per_reference)


REF_PUNCTUATION = set(';/[]"{}()=+\\_-><@`,?!')
REF_NUMBER_WORDS = "zero one two three four five six seven eight nine ten"
REF_NUMBERS = {word: str(n) for n, word in enumerate(REF_NUMBER_WORDS.split())}
REF_NUMBERS["none"] = "0"
# Only the entries the cases reach; the full table is checked in test_contraction_table_spellings.
REF_CONTRACTIONS = {"dont": "don't", "hes": "he's"}


def ref_normalise(text: str) -> str:
    """EvalAI's processor, step by step, one character at a time."""
    text = text.lower()
    text = re.sub(r"[,?]", "", text)
    text = re.sub(r"'s", " 's", text).strip()
    text = re.sub(r"[\n\t]", " ", text).strip()
    kept = []
    for char in text:
        if char in REF_PUNCTUATION:
            beside_space = (" " + char) in text or (char + " ") in text
            kept.append("" if beside_space else " ")
        else:
            kept.append(char)
    spaced = "".join(kept)
    out, periods_removed = [], 0
    for i, char in enumerate(spaced):
        next_is_digit = i + 1 < len(spaced) and spaced[i + 1].isdigit()
        if char == "." and not next_is_digit and periods_removed < 32:
            periods_removed += 1
            continue
        out.append(char)
    words = []
    for word in "".join(out).split():
        word = REF_NUMBERS.get(word, word)
        if word in ("a", "an", "the"):
            continue
        words.append(REF_CONTRACTIONS.get(word, word))
    return " ".join(words)


def ref_vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """Explicit leave-one-out subsets, exact fractions."""
    if not answers:
        return 0.0
    pred = ref_normalise(prediction)
    refs = [ref_normalise(answer) for answer in answers]
    subsets = list(itertools.combinations(range(len(refs)), len(refs) - 1))
    total = sum(min(Fraction(1), Fraction(sum(refs[i] == pred for i in subset), 3)) for subset in subsets)
    return float(total / len(subsets))


def ref_number(text: str) -> Decimal | None:
    scale = Decimal(100) if text.endswith("%") else Decimal(1)
    try:
        value = Decimal(text.rstrip("%")) / scale
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def ref_relaxed(prediction: str, answers: list[str], tolerance: float = 0.05) -> float:
    """Exact decimal arithmetic: |p - t| <= tolerance * |t| for a non-zero numeric reference."""
    pred = prediction.strip()
    for answer in answers:
        target = answer.strip()
        p, t = ref_number(pred), ref_number(target)
        if p is not None and t is not None and t != 0:
            right = abs(p - t) <= Decimal(str(tolerance)) * abs(t)
        else:
            right = pred.casefold() == target.casefold()
        if right:
            return 1.0
    return 0.0


def ref_plain(text: str) -> str:
    return re.sub(r"[.\s]+$", "", re.sub(r"\s+", " ", text.strip().lower()))


def ref_exact_match(prediction: str, answers: list[str]) -> float:
    return 1.0 if ref_plain(prediction) in {ref_plain(answer) for answer in answers} else 0.0


REF_LEADS = sorted(
    {
        f"{the}{adjective}{noun}{separator}"
        for the in ("", "the ")
        for adjective in ("", "correct ", "final ", "best ")
        for noun in ("answer", "option", "choice")
        for separator in (" is", " is ", " is:", " is: ", ":", ": ")
    },
    key=len,
    reverse=True,
)


def ref_letter_forms(letter: str, before_text: bool) -> set[str]:
    marks = (")", ".", ":") if before_text else ("", ")", ".", ":")
    forms = {letter + mark + dot for mark in marks for dot in ("", ".")}
    return forms | {f"({letter})", f"({letter})."}


def ref_choice(prediction: str, choices: list[str]) -> int | None:
    """Which option a prediction names, by looking its forms up in enumerated sets."""
    text = " ".join(prediction.split())
    lead = next((lead for lead in REF_LEADS if text.lower().startswith(lead)), "")
    text = text[len(lead) :]
    for i, letter in enumerate(string.ascii_uppercase):
        if text in ref_letter_forms(letter, before_text=False):
            return i if i < len(choices) else None
    for i, letter in enumerate(string.ascii_uppercase):
        for form in ref_letter_forms(letter, before_text=True):
            tail = text[len(form) + 1 :]
            if text.startswith(form + " ") and tail:
                if i >= len(choices):
                    return None
                owners = {j for j, choice in enumerate(choices) if ref_plain(choice) == ref_plain(tail)}
                return i if not owners or i in owners else None
    owners = [j for j, choice in enumerate(choices) if ref_plain(choice) == ref_plain(text)]
    return owners[0] if len(owners) == 1 else None


def ref_multiple_choice(
    prediction: str, choices: list[str], answer_index: int, strict: bool = False
) -> float:
    letter = string.ascii_uppercase[answer_index]
    if strict:
        return float(prediction == letter or prediction.startswith(letter + "."))
    return float(ref_choice(prediction, choices) == answer_index)


def ref_objects(text: str) -> list[tuple[str, str, str]]:
    """Consecutive (size, colour, shape) words, found by walking the words one by one."""
    from sdrt.data.scenes import COLOURS, SHAPES, SIZES

    words = re.findall(r"[a-z]+", text.lower())
    return [
        (words[i], words[i + 1], words[i + 2])
        for i in range(len(words) - 2)
        if words[i] in SIZES and words[i + 1] in COLOURS and words[i + 2] in SHAPES
    ]


def ref_object_accuracy(prediction: str, answers: list[str]) -> float:
    predicted = ref_objects(prediction)
    scores = []
    for answer in answers:
        reference = ref_objects(answer)
        right = len([i for i in range(min(len(predicted), len(reference))) if predicted[i] == reference[i]])
        scores.append(right / max(len(predicted), len(reference)))
    return max(scores)


def reference_score(case: Case) -> float:
    if case.metric == "multiple_choice_accuracy":
        return ref_multiple_choice(case.prediction, list(case.choices), case.answer_index, **case.kwargs)
    functions = {
        "anls": ref_anls,
        "vqa_accuracy": ref_vqa_accuracy,
        "relaxed_accuracy": ref_relaxed,
        "exact_match": ref_exact_match,
        "object_accuracy": ref_object_accuracy,
    }
    return functions[case.metric](case.prediction, list(case.answers), **case.kwargs)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_case_agrees_with_independent_reference(case: Case) -> None:
    assert library_score(case) == pytest.approx(reference_score(case), abs=1e-9)


def test_reference_catches_a_wrong_value() -> None:
    """The agreement test can fail: a deliberately wrong expectation disagrees with the reference."""
    wrong = Case("wrong", "vqa_accuracy", "red", ("red",) * 3 + ("blue",) * 7, 1.0, "3 of 10 is not 1.0")
    assert reference_score(wrong) != pytest.approx(wrong.expected)


# --------------------------------------------------------------------------------------------
# Details of the VQA normalisation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spelling", "full"),
    [("dont", "don't"), ("couldnt've", "couldn't've"), ("couldn'tve", "couldn't've"), ("twas", "'twas")],
)
def test_contraction_table_spellings(spelling: str, full: str) -> None:
    assert normalize_vqa_answer(spelling) == full


def test_contraction_needs_one_apostrophe_left() -> None:
    """EvalAI's table lists each spelling with exactly one apostrophe missing, not two."""
    assert normalize_vqa_answer("couldntve") == "couldntve"


def test_only_32_stray_periods_are_removed() -> None:
    """The reference code's period rule stops after 32 matches; parity keeps that."""
    assert normalize_vqa_answer("." * 40 + "yes") == "." * 8 + "yes"


def test_random_inputs_score_in_unit_interval() -> None:
    rng = random.Random(0)
    alphabet = "ab AB.,-'%019()"
    for _ in range(200):
        pred = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))
        refs = [
            "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6))) for _ in range(rng.randint(0, 4))
        ]
        record = {"answers": refs, "choices": ["a", "b"], "answer_index": 0}
        for name, scorer in METRICS.items():
            assert 0.0 <= scorer(pred, record) <= 1.0, name


# --------------------------------------------------------------------------------------------
# Registry and input errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "record",
    [
        {"answers": ["dog"] * 10, "choices": ["cat", "dog"], "answer_index": 1},
        SimpleNamespace(answers=["dog"] * 10, choices=["cat", "dog"], answer_index=1),
    ],
    ids=["mapping", "object"],
)
def test_registry_reads_mappings_and_objects(record: object) -> None:
    names = {
        "anls",
        "vqa_accuracy",
        "relaxed_accuracy",
        "multiple_choice_accuracy",
        "exact_match",
        "object_accuracy",
    }
    assert set(METRICS) == names
    for name in METRICS:
        assert score(name, "dog", record) == 1.0, name


def test_registry_wraps_a_single_string_answer() -> None:
    assert METRICS["exact_match"]("Dog.", {"answers": "dog"}) == 1.0
    assert METRICS["anls"]("dog", {"answers": None}) == 0.0


def test_multiple_choice_record_needs_choices() -> None:
    with pytest.raises(ValueError, match="choices"):
        METRICS["multiple_choice_accuracy"]("B", {"answers": ["B"]})


def test_unknown_metric_lists_known_ones() -> None:
    with pytest.raises(KeyError, match="vqa_accuracy"):
        score("bleu", "x", {"answers": ["x"]})


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError):
        anls("a", ["a"], threshold=1.5)
    with pytest.raises(ValueError):
        relaxed_accuracy("1", ["1"], tolerance=-0.1)
    with pytest.raises(ValueError):
        multiple_choice_accuracy("A", ["x", "y"], 2)


def test_required_signatures_work_positionally() -> None:
    assert anls("abcd", ["abef"], 0.5) == 0.5
    assert relaxed_accuracy("108", ["100"], 0.1) == 1.0
    assert multiple_choice_accuracy("B", ["x", "y"], 1) == 1.0


# --- object accuracy (scene descriptions) -----------------------------------------------------


def test_object_accuracy_without_objects_in_the_reference_is_exact_match():
    assert object_accuracy("Nothing here.", ["nothing here"]) == 1.0
    assert object_accuracy("a small red circle", ["nothing here"]) == 0.0
