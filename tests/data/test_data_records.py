from __future__ import annotations

import pytest

from sdrt.data import DataError, VQARecord, seeded_subset


def test_embedded_bytes_decode_only_when_asked(png_bytes):
    record = VQARecord(id="r1", question="what?", image_bytes=png_bytes((10, 200, 30)))
    assert record.image is None  # nothing decoded at construction
    image = record.load_image()
    assert image.mode == "RGB" and image.size == (8, 6)
    assert image.getpixel((3, 3)) == (10, 200, 30)


def test_corrupt_image_file_names_the_record(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    record = VQARecord(id="doc/7", question="what?", image_path=str(bad))
    with pytest.raises(DataError, match=r"doc/7.*broken\.png"):
        record.load_image()


def test_missing_image_file_names_the_record(tmp_path):
    record = VQARecord(id="doc/8", question="what?", image_path=str(tmp_path / "gone.png"))
    with pytest.raises(DataError, match=r"doc/8.*not found"):
        record.load_image()


def test_corrupt_embedded_bytes_name_the_record():
    record = VQARecord(
        id="chart/3", question="what?", image_bytes=b"garbage", metadata={"image_name": "c3.png"}
    )
    with pytest.raises(DataError, match=r"chart/3.*c3\.png"):
        record.load_image()


def test_a_record_needs_some_image():
    with pytest.raises(DataError, match="no image"):
        VQARecord(id="x", question="what?")


def test_seeded_subset_is_reproducible_ordered_and_seed_dependent():
    items = list(range(1000))
    first = seeded_subset(items, 50, seed=3)
    assert first == seeded_subset(items, 50, seed=3)
    assert first == sorted(first) and len(set(first)) == 50
    assert first != seeded_subset(items, 50, seed=4)
    assert first != items[:50]
    assert seeded_subset(items, None, seed=0) == items
    assert seeded_subset(items, 5000, seed=0) == items
    with pytest.raises(DataError, match="limit"):
        seeded_subset(items, -1, seed=0)
