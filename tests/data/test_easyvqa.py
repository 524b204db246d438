from __future__ import annotations

from pathlib import Path

import pytest

from sdrt.data import DataError, read_easy_vqa

easy_vqa = pytest.importorskip("easy_vqa")


@pytest.mark.parametrize("split", ["train", "test"])
def test_reads_every_question_of_a_split(split):
    questions, answers, image_ids = getattr(easy_vqa, f"get_{split}_questions")()
    records = read_easy_vqa(split)
    assert len(records) == len(questions)
    index = len(records) // 2
    record = records[index]
    assert record.id == f"easy-vqa/{split}/{index}"
    assert record.question == questions[index]
    assert record.answers == [answers[index]]
    assert record.metadata == {"image_id": image_ids[index], "split": split}
    assert Path(record.image_path).name == f"{image_ids[index]}.png"
    assert record.task_type == "scene"


def test_answers_are_the_packages_vocabulary():
    vocabulary = set(easy_vqa.get_answers())
    assert len(vocabulary) == 13
    assert {answer for record in read_easy_vqa("test") for answer in record.answers} <= vocabulary


def test_limit_is_a_seeded_sample_not_the_first_rows():
    sample = read_easy_vqa("test", limit=20, seed=5)
    again = read_easy_vqa("test", limit=20, seed=5)
    other = read_easy_vqa("test", limit=20, seed=6)
    ids = [record.id for record in sample]
    assert len(ids) == 20 == len(set(ids))
    assert ids == [record.id for record in again]
    assert ids != [record.id for record in other]
    assert ids != [f"easy-vqa/test/{i}" for i in range(20)]
    questions = easy_vqa.get_test_questions()[0]
    for record in sample:  # ids stay the row numbers of the full split
        assert record.question == questions[int(record.id.rsplit("/", 1)[1])]


def test_sampled_images_load():
    record = read_easy_vqa("test", limit=1, seed=0)[0]
    assert record.load_image().size == (64, 64)


def test_unknown_split():
    with pytest.raises(DataError, match="unknown split"):
        read_easy_vqa("validation")
