import pytest

from sdrt.reasoning.extract import extract_short_answer, normalize_answer

OPEN_CASES = [
    # (model output, expected short answer)
    ("blue", "blue"),
    ("  Banana  ", "Banana"),
    ("Blue.", "Blue"),
    ("3.5", "3.5"),
    ("U.S.", "U.S."),
    ("The answer is 2.", "2"),
    ("the answer is: **two**", "two"),
    ("Answer: blue", "blue"),
    ("Final answer: 42\n", "42"),
    ("I looked at it. The answer is red. Answer: crimson", "crimson"),
    ("The answer would be 10%.", "10%"),
    ("Red. Because the car is red.", "Red"),
    ("red, because it is red", "red"),
    ("Cat - it is sitting on the mat", "Cat"),
    ("Green.\nThe leaves are green.", "Green"),
    ("Paris (the capital of France)", "Paris"),
    ("**Paris**", "Paris"),
    ("*Paris*", "Paris"),
    ('"STOP"', "STOP"),
    ("“Exit”.", "Exit"),
    ("`42`", "42"),
    ("It is a red car.", "red car"),
    ("It's the kitchen.", "kitchen"),
    ("I think it is a cat.", "cat"),
    ("The image shows a dog.", "dog"),
    ("The colour of the car is red.", "red"),
    ("Based on the image, it is a bus.", "bus"),
    ("There are 3 apples on the table.", "3"),
    ("There is a man.", "man"),
    ("Yes, the cat is black.", "Yes"),
    ("No.", "No"),
    ("yes it is", "yes"),
    ("no smoking", "no smoking"),
    ("Dr. Smith wrote it", "Dr. Smith wrote it"),
    ("- apples", "apples"),
    ("<|im_end|>blue", "blue"),
    ("", ""),
    ("   \n  ", ""),
]


@pytest.mark.parametrize(("text", "expected"), OPEN_CASES)
def test_extract_open_question(text: str, expected: str) -> None:
    assert extract_short_answer(text) == expected


CHOICES = ["red", "blue", "green"]

CHOICE_CASES = [
    ("B", "B"),
    ("B.", "B"),
    ("(B)", "B"),
    ("b", "B"),
    ("B) blue", "B"),
    ("B. Because the sky is blue.", "B"),
    ("(c) green, since grass is green", "C"),
    ("Option C", "C"),
    ("The answer is (A).", "A"),
    ("Answer: C) green because", "C"),
    ("It's B.", "B"),
    ("blue", "B"),
    ("Blue.", "B"),
    ("The color is green.", "C"),
    ("I think the flag is mostly red", "A"),
    ("red or blue", "red or blue"),  # names two options: no letter
    ("D", "D"),  # not an option: unmapped
    ("A cat", "A cat"),  # "A" here is an article, not option A
]


@pytest.mark.parametrize(("text", "expected"), CHOICE_CASES)
def test_extract_multiple_choice_gives_letters(text: str, expected: str) -> None:
    assert extract_short_answer(text, CHOICES) == expected


NORMAL_FORMS = [
    ("Two", "2"),
    ("two.", "2"),
    ("2", "2"),
    ("Twenty", "20"),
    ("The Cat!", "cat"),
    ("a dog", "dog"),
    ("1,000", "1000"),
    ("3.50", "3.5"),
    ("3.0", "3"),
    ("Yes.", "yes"),
    ("  New   York ", "new york"),
    ("T-shirt", "t shirt"),
    ("", ""),
]


@pytest.mark.parametrize(("text", "expected"), NORMAL_FORMS)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


def test_normal_form_merges_surface_variants() -> None:
    variants = ["Two", "2", "two.", extract_short_answer("The answer is **two**.")]
    assert len({normalize_answer(t) for t in variants}) == 1
