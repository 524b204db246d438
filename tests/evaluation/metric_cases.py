"""Hand-checked metric cases: what the community's evaluators give, with the arithmetic.

Each case is scored by the library and by the independent re-statements in test_metrics.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Case:
    name: str
    metric: str
    prediction: str
    answers: tuple[str, ...]
    expected: float
    why: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    choices: tuple[str, ...] = ()
    answer_index: int = -1


def ten(match: str, other: str, k: int) -> tuple[str, ...]:
    """Ten VQA references, ``k`` of them ``match`` and the rest ``other``."""
    return (match,) * k + (other,) * (10 - k)


ANIMALS = ("cat", "dog", "bird", "fish")  # the right option is B, "dog"


def mc(name: str, prediction: str, expected: float, why: str, **kwargs: Any) -> Case:
    return Case(name, "multiple_choice_accuracy", prediction, (), expected, why, kwargs, ANIMALS, 1)


ANLS = [
    Case("case", "anls", "Hello World", ("hello world",), 1.0, "lower-cased on both sides: distance 0"),
    Case("spaces", "anls", "  hello   world ", ("hello world",), 1.0, "white space collapsed: distance 0"),
    Case("kitten", "anls", "kitten", ("sitting",), 4 / 7, "distance 3 (k->s, e->i, +g), max len 7: 1 - 3/7"),
    Case("tie", "anls", "abcd", ("abef",), 0.5, "distance 2, len 4: 1 - 2/4 = 0.5, kept at the threshold"),
    Case(
        "tie-strict",
        "anls",
        "abcd",
        ("abef",),
        0.0,
        "same 0.5, strict keeps only > 0.5",
        {"strict": True},
    ),
    Case("tie-6", "anls", "abcdef", ("abcxyz",), 0.5, "distance 3, len 6: 1 - 3/6 = 0.5, kept"),
    Case("below", "anls", "abcde", ("abxyz",), 0.0, "distance 3, len 5: 1 - 3/5 = 0.4 < 0.5 -> 0"),
    Case(
        "strict-no-tie",
        "anls",
        "kitten",
        ("sitting",),
        4 / 7,
        "strict changes nothing away from the threshold: 1 - 3/7",
        {"strict": True},
    ),
    Case(
        "threshold",
        "anls",
        "kitten",
        ("sitting",),
        0.0,
        "4/7 = 0.571 < 0.6 -> 0",
        {"threshold": 0.6},
    ),
    Case("empty-pred", "anls", "", ("abc",), 0.0, "distance 3, len 3: 1 - 3/3 = 0"),
    Case("both-empty", "anls", "", ("",), 1.0, "both empty: length 0 counts as distance 0 -> 1"),
    Case("no-refs", "anls", "abc", (), 0.0, "no references -> 0 by our rule"),
    Case(
        "best-of",
        "anls",
        "ab",
        ("xyz", "abc"),
        2 / 3,
        "vs 'xyz': 1 - 3/3 = 0; vs 'abc': distance 1, len 3: 1 - 1/3; max 2/3",
    ),
    Case(
        "phrase",
        "anls",
        "New York City",
        ("new york",),
        8 / 13,
        "'new york city' (13) vs 'new york' (8): 5 deletions, 1 - 5/13",
    ),
    Case("norm-len", "anls", "ab  c", ("abc",), 0.75, "'ab c' vs 'abc': distance 1, len 4: 1 - 1/4"),
    Case(
        "raw-len",
        "anls",
        "ab  c",
        ("abc",),
        0.8,
        "lmms-eval: distance 1 over raw len max(5, 3) = 5: 1 - 1/5",
        {"raw_lengths": True},
    ),
]

VQA = [
    Case("all-yes", "vqa_accuracy", "yes", ten("yes", "no", 10), 1.0, "10 match: every subset has 9 -> 1"),
    Case(
        "3-of-10",
        "vqa_accuracy",
        "red",
        ten("red", "blue", 3),
        0.9,
        "drop a match (3x): 2/3; drop another (7x): 3/3; (3*2/3 + 7)/10 = 0.9",
    ),
    Case("4-of-10", "vqa_accuracy", "red", ten("red", "blue", 4), 1.0, "every subset keeps >= 3 matches"),
    Case(
        "2-of-10",
        "vqa_accuracy",
        "red",
        ten("red", "blue", 2),
        0.6,
        "drop a match (2x): 1/3; drop another (8x): 2/3; (2/3 + 16/3)/10 = 0.6",
    ),
    Case(
        "1-of-10",
        "vqa_accuracy",
        "red",
        ten("red", "blue", 1),
        0.3,
        "drop the match: 0; drop another (9x): 1/3; 3/10 = 0.3",
    ),
    Case("word-to-digit", "vqa_accuracy", "Two", ten("2", "3", 10), 1.0, "'two' -> '2'"),
    Case(
        "refs-too", "vqa_accuracy", "2", ten("two", "3", 10), 1.0, "references normalised too: 'two' -> '2'"
    ),
    Case("none-zero", "vqa_accuracy", "none", ten("0", "1", 10), 1.0, "'none' -> '0' in the number map"),
    Case("article", "vqa_accuracy", "a dog", ten("dog", "cat", 10), 1.0, "'a' dropped"),
    Case("articles-both", "vqa_accuracy", "the dog", ten("a dog", "cat", 10), 1.0, "both become 'dog'"),
    Case(
        "bang", "vqa_accuracy", "yes!", ten("yes", "no", 10), 1.0, "'!' not beside a space -> ' ', then split"
    ),
    Case("period", "vqa_accuracy", "Yes.", ten("yes", "no", 10), 1.0, "period before no digit removed"),
    Case(
        "decimal", "vqa_accuracy", "3.5", ten("35", "3", 10), 0.0, "period before a digit kept: '3.5' != '35'"
    ),
    Case("decimal-ok", "vqa_accuracy", "3.5", ten("3.5", "3", 10), 1.0, "'3.5' kept on both sides"),
    Case("thousands", "vqa_accuracy", "1,000", ten("1000", "100", 10), 1.0, "commas removed: '1000'"),
    Case("contraction", "vqa_accuracy", "dont", ten("don't", "do", 10), 1.0, "'dont' -> \"don't\""),
    Case("hyphen", "vqa_accuracy", "t-shirt", ten("t shirt", "shirt", 10), 1.0, "'-' inside a word -> ' '"),
    Case(
        "spaced-hyphen",
        "vqa_accuracy",
        "t - shirt",
        ten("t shirt", "shirt", 10),
        1.0,
        "'-' beside a space removed: 't  shirt' -> 't shirt'",
    ),
    Case("newline", "vqa_accuracy", "red\ncar", ten("red car", "car", 10), 1.0, "newline -> space"),
    Case(
        "possessive",
        "vqa_accuracy",
        "it's",
        ten("its", "it", 10),
        0.0,
        "\"'s\" detached: \"it 's\" != 'its' (EvalAI's behaviour)",
    ),
    Case(
        "he-s",
        "vqa_accuracy",
        "hes",
        ten("he's", "he", 10),
        0.0,
        "'hes' -> \"he's\" but the reference \"he's\" -> \"he 's\": no match (EvalAI's behaviour)",
    ),
    Case(
        "three-refs",
        "vqa_accuracy",
        "cat",
        ("cat", "cat", "dog"),
        4 / 9,
        "n=3, 2 match: drop a cat (2x): 1/3; drop dog: 2/3; (1/3 + 1/3 + 2/3)/3 = 4/9",
    ),
    Case("one-ref", "vqa_accuracy", "cat", ("cat",), 0.0, "one reference: the only subset is empty -> 0"),
    Case("no-refs", "vqa_accuracy", "cat", (), 0.0, "no references -> 0 by our rule"),
    Case("empty-pred", "vqa_accuracy", "", ten("yes", "no", 10), 0.0, "'' matches nothing"),
]

RELAXED = [
    Case("pct-vs-frac", "relaxed_accuracy", "10%", ("0.1",), 1.0, "10/100 = 0.1: change 0"),
    Case("pct-vs-int", "relaxed_accuracy", "10%", ("10",), 0.0, "0.1 vs 10: |0.1 - 10|/10 = 0.99"),
    Case("int-vs-pct", "relaxed_accuracy", "10", ("10%",), 0.0, "10 vs 0.1: |10 - 0.1|/0.1 = 99"),
    Case("within", "relaxed_accuracy", "104", ("100",), 1.0, "4/100 = 0.04 <= 0.05"),
    Case("at-bound", "relaxed_accuracy", "105", ("100",), 1.0, "5/100 = 0.05 <= 0.05 (inclusive)"),
    Case("beyond", "relaxed_accuracy", "106", ("100",), 0.0, "6/100 = 0.06 > 0.05"),
    Case("negative", "relaxed_accuracy", "-5", ("-5.2",), 1.0, "|-5 + 5.2|/5.2 = 0.2/5.2 = 0.038"),
    Case("sign", "relaxed_accuracy", "5", ("-5",), 0.0, "|5 + 5|/5 = 2"),
    Case("zero-ref", "relaxed_accuracy", "0.0", ("0",), 0.0, "zero reference: text must match, '0.0' != '0'"),
    Case("zero-same", "relaxed_accuracy", "0", ("0",), 1.0, "zero reference, same text"),
    Case("text-case", "relaxed_accuracy", "Yes", ("yes",), 1.0, "non-numeric: case-insensitive equality"),
    Case("text-strip", "relaxed_accuracy", " yes ", ("yes",), 1.0, "stripped before comparing"),
    Case("comma", "relaxed_accuracy", "1,000", ("1000",), 0.0, "'1,000' is not a float: text differs"),
    Case("word-number", "relaxed_accuracy", "ten", ("10",), 0.0, "'ten' is text: differs from '10'"),
    Case("best-of", "relaxed_accuracy", "abc", ("x", "ABC"), 1.0, "second reference matches"),
    Case("empty-pred", "relaxed_accuracy", "", ("0",), 0.0, "'' is not '0'"),
    Case("no-refs", "relaxed_accuracy", "1", (), 0.0, "no references -> 0"),
    Case("tolerance", "relaxed_accuracy", "108", ("100",), 1.0, "8/100 <= 0.1", {"tolerance": 0.1}),
]

EXACT = [
    Case("period", "exact_match", "Yes.", ("yes",), 1.0, "case and trailing period ignored"),
    Case("spaces", "exact_match", "  Circle ", ("circle",), 1.0, "stripped"),
    Case("plural", "exact_match", "circles", ("circle",), 0.0, "different word"),
    Case("no-word-numbers", "exact_match", "two", ("2",), 0.0, "no number words rewritten"),
    Case("no-refs", "exact_match", "yes", (), 0.0, "no references -> 0"),
]

MULTIPLE_CHOICE = [
    mc("letter", "B", 1.0, "bare letter"),
    mc("letter-dot", "B.", 1.0, "letter and period"),
    mc("paren", "(B)", 1.0, "letter in parentheses"),
    mc("close-paren", "B)", 1.0, "letter and closing parenthesis"),
    mc("sentence", "The answer is B.", 1.0, "lead phrase, then 'B.'"),
    mc("answer-colon", "Answer: (B)", 1.0, "'Answer:' lead, then '(B)'"),
    mc("text", "dog", 1.0, "option text"),
    mc("text-case", "Dog.", 1.0, "option text, case and period ignored"),
    mc("letter-text", "B. dog", 1.0, "letter and its own text agree"),
    mc("letter-text-clash", "B. cat", 0.0, "B is 'dog' but the text is A's: ambiguous"),
    mc("wrong", "A", 0.0, "names option A"),
    mc("lower", "b", 0.0, "lower-case letters are not read as options"),
    mc("two-letters", "A or B", 0.0, "names two options"),
    mc("out-of-range", "E", 0.0, "only A-D exist"),
    mc("empty", "", 0.0, "names nothing"),
    mc("strict-letter", "B", 1.0, "lmms-eval: exact letter", strict=True),
    mc("strict-dot", "B. cat", 1.0, "lmms-eval: 'X.' prefix, its letter decides", strict=True),
    mc("strict-paren", "(B)", 0.0, "lmms-eval does not read '(B)'", strict=True),
    mc("strict-text", "dog", 0.0, "lmms-eval does not read option text", strict=True),
    mc("strict-sentence", "The answer is B.", 0.0, "lmms-eval does not read sentences", strict=True),
]

SCENE = "From left to right: a small red circle, a large blue triangle, a small gray rectangle."


def objects(name: str, prediction: str, expected: float, why: str) -> Case:
    return Case(name, "object_accuracy", prediction, (SCENE,), expected, why)


OBJECTS = [
    objects("exact", SCENE, 1.0, "every object right"),
    objects("case", SCENE.lower().replace("small red", "Small Red").rstrip("."), 1.0, "case, punctuation"),
    objects("attribute", SCENE.replace("large blue", "large green"), 2 / 3, "one colour wrong: 2 of 3"),
    objects(
        "order",
        "From left to right: a large blue triangle, a small red circle, a small gray rectangle.",
        1 / 3,
        "right objects in the wrong places are wrong objects",
    ),
    objects("missing", "From left to right: a small red circle, a large blue triangle.", 2 / 3, "2 of 3"),
    objects("invented", SCENE[:-1] + ", a large black circle.", 3 / 4, "3 right of the longer list's 4"),
    objects("none", "I see shapes.", 0.0, "no objects named"),
]

CASES: list[Case] = ANLS + VQA + RELAXED + EXACT + MULTIPLE_CHOICE + OBJECTS
