"""Grid mixing: each image token reads its neighbours on the image's 2-D token grid.

Most questions the one pass gets wrong and the reasoning gets right name one object and ask
about its neighbour ("the shape directly to the right of the brown object"). Answered from the
image in one pass, that is two lookups: find the object, then find what lies beside it. The
frozen attention over the flattened image tokens has no notion of "beside"; its relative
positions are those of a 1-D sequence. Grid mixing gives the image tokens that notion, at one
layer, so that the object's own tokens come to carry what lies around it and the question needs
one lookup instead of two:

    z      = D rms(h_cell)                         (h, w, r),  D: Linear(d, r)
    h_cell <- h_cell + U (K * z)_cell              K: per-channel (depthwise) kernel over the grid,
                                                       U: Linear(r, d), zero-init

The kernel is indexed by offset (so "one cell to the right" has its own weight in every
channel), and the bottleneck keeps it small: 2·d·r + r·kh·kw parameters. Image tokens are
only in a prefill or a scored forward; decode steps read them from the KV cache as edited there.
No library offers a trainable spatial edit of a VLM's image tokens; it is a few lines here.
"""

from __future__ import annotations

import torch
from torch import nn

from sdrt.adapters.backpatch import rms_normalised


class GridMix(nn.Module):
    """``U (K * D rms(h))`` over each image's token grid: the additions (zero when fresh)."""

    def __init__(self, d: int, rank: int, kernel: tuple[int, int]) -> None:
        super().__init__()
        kh, kw = kernel
        self.down = nn.Linear(d, rank, bias=False)
        self.kernel = nn.Conv2d(rank, rank, (kh, kw), padding=(kh // 2, kw // 2), groups=rank, bias=False)
        self.up = nn.Linear(rank, d, bias=False)
        nn.init.zeros_(self.up.weight)  # a fresh mix adds nothing; D and K get a gradient at once

    def forward(self, cells: torch.Tensor) -> torch.Tensor:
        """(N, h, w, d) image-token states -> (N, h, w, d) additions, in fp32."""
        with torch.autocast(device_type=cells.device.type, enabled=False):
            z = self.down(rms_normalised(cells.float())).permute(0, 3, 1, 2)  # (N, r, h, w)
            return self.up(self.kernel(z).permute(0, 2, 3, 1))  # (N, h, w, d)


def image_cells(image_mask: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of every image token, in raster order, for rows holding one image each.

    ``image_mask`` (B, L); a row holds no image token or exactly ``h * w`` of them (one image,
    laid out row by row). Returns two (N * h * w,) index tensors; N is the number of rows
    with an image. Anything else raises ``ValueError``: mixing a row whose tokens are not one
    grid would mix unrelated positions.
    """
    cells = grid[0] * grid[1]
    counts = image_mask.sum(1)  # (B,)
    bad = [(row, int(n)) for row, n in enumerate(counts.tolist()) if n not in (0, cells)]
    if bad:
        shown = ", ".join(f"row {row}: {n}" for row, n in bad[:4])
        raise ValueError(
            f"grid mixing needs 0 or {cells} image tokens per row (a {grid[0]}x{grid[1]} grid); {shown}"
        )
    return image_mask.nonzero(as_tuple=True)  # row-major: each row's tokens in sequence order
