import pytest

from sdrt.distill.config import DistillConfig


def _retaining_config(traces, retain, out, **changes) -> DistillConfig:
    values = dict(model="tiny:llava", traces=traces, retain=retain, out=out, steps=2, batch_size=4)
    values.update(checkpoint_every=2, **changes)
    return DistillConfig(**values)


@pytest.fixture
def retaining_config():
    """``retaining_config(traces, retain, out, **changes)``: short steps of the tiny model on
    ``traces``, with ``retain`` kept on direct answers (two steps of batch 4 unless changed)."""
    return _retaining_config
