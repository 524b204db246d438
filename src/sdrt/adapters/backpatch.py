"""Back-patching: a later layer's reading of the question, fed back to an earlier layer.

At the target layer ``t`` the frozen layers ``t+1 .. s`` run once more on the target's output
(``VisionLanguageModel.add_rerun_hook``); their states at the chosen prompt positions are
normalised, mapped through a rank-r bottleneck and added back at layer ``t``:

    h_t <- h_t + U D rms(h_s)          D: Linear(d, r), U: Linear(r, d), U zero-init

The forward then goes on from layer ``t`` as usual, so the positions of the question read, in
the layers above ``t``, what the stack had only worked out by layer ``s`` the first time: a
learned form of the back-patching of Biran et al. (2024), who found one-pass multi-hop answers
failing because the first hop resolves too late for the second. No library offers it as a
trainable module; it is a few lines here.
"""

from __future__ import annotations

import torch
from torch import nn


def rms_normalised(hidden: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``hidden`` over its root mean square per position (late layers' states are far larger)."""
    return hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + eps)


class BackPatch(nn.Module):
    """``U D rms(h_s)``: what is added at the target layer's positions (zero when fresh)."""

    def __init__(self, d: int, rank: int) -> None:
        super().__init__()
        self.down = nn.Linear(d, rank, bias=False)
        self.up = nn.Linear(rank, d, bias=False)
        nn.init.zeros_(self.up.weight)  # a fresh back-patch adds nothing; down gets a gradient at once

    def forward(self, later: torch.Tensor) -> torch.Tensor:
        """(N, d) later states -> (N, d) additions, in fp32."""
        with torch.autocast(device_type=later.device.type, enabled=False):
            return self.up(self.down(rms_normalised(later.float())))
