"""The feature cache under concurrent writers: two ranks encoding the same image at once."""

import torch
from safetensors.torch import load_file

from sdrt.models import vision
from sdrt.models.vision import VisionEncoder


def test_two_writers_of_one_image_both_succeed(tmp_path, monkeypatch):
    encoder = VisionEncoder(grid=2, cache=tmp_path)
    ours, theirs = torch.full((4, 8), 1.0), torch.full((4, 8), 2.0)
    real_save = vision.save_file
    calls = []

    def save_then_let_the_other_rank_write(tensors, filename, *args, **kwargs):
        real_save(tensors, filename, *args, **kwargs)
        calls.append(filename)
        if len(calls) == 1:  # the other rank writes the same entry between our save and our rename
            encoder._write("ab" * 16, theirs)

    monkeypatch.setattr(vision, "save_file", save_then_let_the_other_rank_write)
    encoder._write("ab" * 16, ours)

    assert calls[0] != calls[1], "each writer stages under its own name"
    path = encoder._path("ab" * 16)
    torch.testing.assert_close(load_file(path)["features"].float(), ours)  # the last rename wins
    assert [p.name for p in path.parent.iterdir()] == [path.name], "no staging file is left behind"
