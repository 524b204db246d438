"""Grid mixing: image tokens read their neighbours on the image's 2-D token grid."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from sdrt.adapters.backpatch import rms_normalised
from sdrt.adapters.config import AdapterConfig, AdapterError
from sdrt.adapters.grid import image_cells
from sdrt.adapters.model import SDRTAdapter
from sdrt.models.base import ModelError

D = 16
GRID = (2, 3)  # two rows of three cells: six image tokens per image
ROWS = ["..iiiiiittaa", "iiiiiitttaaa", "....ttttttaa"]  # left padding; the last row has no image


@pytest.fixture
def grid_model(standin):
    """The stand-in VLM, its images a 2x3 grid of tokens."""

    class GridStandIn(standin):
        def image_grid(self, num_tokens: int) -> tuple[int, int]:
            if num_tokens != GRID[0] * GRID[1]:
                raise ModelError(f"not {num_tokens}")
            return GRID

    return GridStandIn


def inputs(rows: list[str]) -> torch.Tensor:
    return torch.randn(len(rows), len(rows[0]), D, generator=torch.Generator().manual_seed(0))


def grid_adapter(model, layer: int = 1, kernel=(3, 3), rank: int = 4) -> SDRTAdapter:
    config = AdapterConfig(
        layers=[2, 3],
        rank=2,
        positions=["answer"],
        grid_mix={"enabled": True, "layer": layer, "rank": rank, "kernel": list(kernel)},
    )
    return SDRTAdapter.for_model(config, model)


def reads_right_neighbour(adapter: SDRTAdapter) -> SDRTAdapter:
    """Each channel's kernel takes the cell one column to the right; U random."""
    mix = adapter.grid_mix
    with torch.no_grad():
        kernel = torch.zeros_like(mix.kernel.weight)  # (r, 1, kh, kw)
        kh, kw = kernel.shape[-2:]
        kernel[:, 0, kh // 2, kw // 2 + 1] = 1.0
        mix.kernel.weight.copy_(kernel)
        mix.up.weight.copy_(torch.randn(mix.up.weight.shape, generator=torch.Generator().manual_seed(3)))
    return adapter


def test_a_cell_reads_the_cell_to_its_right_and_nothing_else_moves(grid_model, layout) -> None:
    """With a kernel that picks the offset (0, +1), cell (i, j) gains ``U D rms(h)`` of cell
    (i, j+1) in raster order, the last column gains nothing, and text and padding are untouched."""
    model = grid_model(D)
    x, lay = inputs(ROWS), layout(ROWS)
    base = model(x, lay)
    adapter = reads_right_neighbour(grid_adapter(model))
    mix = adapter.grid_mix
    with adapter.attach(model), torch.no_grad():
        edited = model(x, lay)
    for row, text in enumerate(ROWS):
        cells = [pos for pos, char in enumerate(text) if char == "i"]
        for index, pos in enumerate(cells):
            i, j = divmod(index, GRID[1])
            added = edited[1][row, pos] - base[1][row, pos]
            if j + 1 < GRID[1]:
                right = base[1][row, cells[i * GRID[1] + j + 1]]
                expected = mix.up(mix.down(rms_normalised(right)))
            else:
                expected = torch.zeros(D)
            torch.testing.assert_close(added, expected, rtol=1e-5, atol=1e-5)
        others = [pos for pos, char in enumerate(text) if char != "i"]
        assert torch.equal(edited[1][row, others], base[1][row, others])
    assert torch.equal(edited[0], base[0])  # below the mix's layer


def test_a_fresh_mix_is_the_identity_and_learns(grid_model, layout, identity_then_learns) -> None:
    model = grid_model(D)
    lay = layout(ROWS)
    adapter = identity_then_learns(model, grid_adapter(model), inputs(ROWS), lay, lay.image_mask)
    assert adapter.grid_mix.up.weight.grad.abs().sum() > 0


def test_decode_steps_are_not_mixed(grid_model, layout, decode_untouched) -> None:
    model = grid_model(D)
    decode_untouched(model, reads_right_neighbour(grid_adapter(model)), inputs(ROWS[:2]), layout(ROWS[:2]))


def test_rows_that_are_not_one_grid_are_refused(grid_model, standin, layout) -> None:
    with pytest.raises(ValueError, match="row 0: 5"):
        image_cells(layout([".iiiiitt", "iiiiiitt"]).image_mask, GRID)
    model = grid_model(D)
    adapter = reads_right_neighbour(grid_adapter(model))
    rows = ["iiiiiitt", "..iiiitt"]
    with adapter.attach(model), pytest.raises(AdapterError, match="row 1: 4"):
        model(inputs(rows), layout(rows))
    bare = standin(D)  # says nothing of its image layout
    with grid_adapter(bare).attach(bare), pytest.raises(ModelError, match="laid out"):
        bare(inputs(ROWS), layout(ROWS))


def test_config_resolves_checks_and_lowers_the_frozen_prefix(standin) -> None:
    with pytest.raises(ValueError, match="two odd sizes"):
        AdapterConfig(grid_mix={"enabled": True, "kernel": [4, 3]})
    resolved = AdapterConfig(layers=[6, 10], grid_mix={"enabled": True}).resolved(30)
    assert resolved.grid_mix.layer == 6 and resolved.lowest_edited_layer == 6
    lower = AdapterConfig(layers=[6, 10], grid_mix={"enabled": True, "layer": 2}).resolved(30)
    assert lower.lowest_edited_layer == 2
    assert AdapterConfig(layers=[6, 10], grid_mix={"layer": 2}).resolved(30).lowest_edited_layer == 6
    with pytest.raises(AdapterError, match=r"grid_mix.layer 9 out of range"):
        SDRTAdapter.for_model(AdapterConfig(layers=[1], grid_mix={"enabled": True, "layer": 9}), standin(D))


def test_parameters_are_the_bottleneck_and_the_kernel(grid_model) -> None:
    adapter = grid_adapter(grid_model(D), kernel=(3, 5), rank=4)
    assert sum(p.numel() for p in adapter.grid_mix.parameters()) == 2 * D * 4 + 4 * 3 * 5


def test_saved_and_loaded_with_its_weights(grid_model, layout, tmp_path, round_trip) -> None:
    model = grid_model(D)
    adapter = reads_right_neighbour(grid_adapter(model, kernel=(1, 3)))
    loaded = round_trip(model, adapter, inputs(ROWS), layout(ROWS), tmp_path)
    assert loaded.config.grid_mix == adapter.config.grid_mix


# --- on real (tiny, random) transformers VLMs and the embedded model's grid ------------------

PROMPTS = ["What colour is it?", "Count the things in this picture, then say how many there are."]


def test_generation_with_a_mix_matches_its_teacher_forced_score(decode_matches_score) -> None:
    """On tiny LLaVA (a 4x4 grid): the mixed image tokens go into the KV cache at prefill, so a
    decode step reads what the teacher-forced score reads, and the mix changes what is generated."""
    from sdrt.models.tiny import load_tiny_model

    model = load_tiny_model("llava")
    images = [Image.new("RGB", (32, 32), colour) for colour in ("red", "blue")]
    config = AdapterConfig(layers=[1], rank=2, positions=["answer"], grid_mix={"enabled": True, "layer": 0})
    torch.manual_seed(0)
    adapter = SDRTAdapter.for_model(config, model)
    with torch.no_grad():
        adapter.grid_mix.up.weight.normal_(0, 50.0, generator=torch.Generator().manual_seed(4))
        plain = [g.token_ids for g in model.generate(images, PROMPTS, max_new_tokens=2)]
        with adapter.attached(model):
            gens = model.generate(images, PROMPTS, max_new_tokens=2)
            assert decode_matches_score(model, images, PROMPTS, gens)
    assert [g.token_ids for g in gens] != plain


def test_image_grids_of_the_backends() -> None:
    from sdrt.models.tiny import load_tiny_model

    assert load_tiny_model("llava").image_grid(16) == (4, 4)
    with pytest.raises(ModelError, match="not one square token grid"):
        load_tiny_model("llava").image_grid(12)
    with pytest.raises(ModelError, match="qwen2_vl images are not one square token grid"):
        load_tiny_model("qwen2-vl").image_grid(16)
