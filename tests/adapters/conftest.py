"""A small stand-in VLM (residual linear layers, one hook point each), layout helpers, and a
generation-against-score check shared by the adapter tests on real backends."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from sdrt.models.base import TokenLayout, VisionLanguageModel


class _Layer(nn.Module):
    """``h + tanh(A h)`` per position: no token mixing, so an edit stays where it was made."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + torch.tanh(self.lin(h))


class StandInVLM(VisionLanguageModel):
    """Just enough of the model interface for hooks: layers, layouts, a config hash."""

    def __init__(self, d: int = 16, num_layers: int = 4, seed: int = 0, name: str = "standin") -> None:
        super().__init__(name)
        gen = torch.Generator().manual_seed(seed)
        self.layers = nn.ModuleList(_Layer(d) for _ in range(num_layers))
        with torch.no_grad():
            for p in self.layers.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        self.d = d

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return self.layers

    @property
    def hidden_size(self) -> int:
        return self.d

    def config_dict(self) -> dict:
        return {"kind": "standin", "d": self.d, "layers": len(self.layers)}

    def __call__(self, x: torch.Tensor, layout: TokenLayout) -> list[torch.Tensor]:
        """Run the stack under ``layout``; returns every layer's (hooked) output, each (B, L, d)."""
        self._set_layout(layout)
        return self._run(x)

    def decode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """One decode step (B, 1, d) after a prefill; like a backend, it names its layout."""
        self._set_layout(TokenLayout.decode_step(x.shape[0], x.device))
        return self._run(x)

    def _run(self, h: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for layer in self.layers:
            h = layer(h)
            outs.append(h)
        return outs

    def encode_images(self, images):
        raise NotImplementedError

    def generate(self, images, prompts, **kwargs):
        raise NotImplementedError

    def score(self, images, prompts, answers, **kwargs):
        raise NotImplementedError

    def render_prompt(self, prompt):
        raise NotImplementedError


def layout_from(rows: list[str]) -> TokenLayout:
    """Hand-made layout: '.' padding, 'i' image, 't' prompt text, 'a' answer, one string per row."""
    width = len(rows[0])
    assert all(len(r) == width for r in rows), "rows must be padded to one length"

    def mask(chars: str) -> torch.Tensor:
        return torch.tensor([[c in chars for c in row] for row in rows], dtype=torch.bool)

    return TokenLayout(mask("ita"), mask("i"), mask("a"))


@pytest.fixture
def standin() -> Callable[..., StandInVLM]:
    return StandInVLM


@pytest.fixture
def layout() -> Callable[[list[str]], TokenLayout]:
    return layout_from


def first_two_tokens_match_score(model, images, prompts, generations) -> int:
    """Per row, the first generated token's log-prob (the prefill) and the second's (a decode
    step) against a teacher-forced score of the first token; returns how many rows were checked
    (a row whose first token does not re-tokenise to itself cannot be scored and is left out)."""
    tok, checked = model.tokenizer, 0
    for row, gen in enumerate(generations):
        first = tok.decode(gen.token_ids[:1])
        if tok.encode(first, add_special_tokens=False) != gen.token_ids[:1]:
            continue
        # answer = [first token, eos]: logits at the first token's position predict the second
        scored = model.score(images[row : row + 1], prompts[row : row + 1], [first], append_eos=True)
        logp = torch.log_softmax(scored.answer_logits[0].float(), dim=-1)  # (T, V)
        got = [logp[i, token].item() for i, token in enumerate(gen.token_ids[:2])]
        assert got == pytest.approx(gen.token_logprobs[:2], abs=2e-5)
        checked += 1
    return checked


@pytest.fixture
def decode_matches_score() -> Callable[..., int]:
    return first_two_tokens_match_score


def fresh_is_identity_and_learns(model, adapter, x: torch.Tensor, layout: TokenLayout, read: torch.Tensor):
    """A fresh adapter leaves every layer's output of ``model`` as it was, and a loss on the last
    layer's ``read`` positions reaches its parameters; returns the adapter for the caller's check."""
    model.layers.requires_grad_(False)  # frozen, as a VLM under an adapter is
    base = model(x, layout)
    with adapter.attach(model):
        edited = model(x, layout)
        assert all(torch.equal(a, b) for a, b in zip(base, edited, strict=True))
        edited[-1][read].pow(2).sum().backward()
    return adapter


def decode_steps_untouched(model, adapter, x: torch.Tensor, layout: TokenLayout) -> None:
    """After a prefill of ``x`` with the adapter attached, a decode step's outputs are the bare model's."""
    step = torch.randn(x.shape[0], 1, x.shape[-1])
    with torch.no_grad():
        base = model.decode(step)
        with adapter.attach(model):
            model(x, layout)
            assert all(torch.equal(a, b) for a, b in zip(base, model.decode(step), strict=True))


@pytest.fixture
def identity_then_learns() -> Callable[..., object]:
    return fresh_is_identity_and_learns


@pytest.fixture
def decode_untouched() -> Callable[..., None]:
    return decode_steps_untouched


def reloads_the_same(model, adapter, x: torch.Tensor, layout: TokenLayout, folder):
    """Save ``adapter``, load it onto ``model``: the same outputs; returns the loaded adapter."""
    from sdrt.adapters.files import load_adapter, save_adapter

    with adapter.attach(model), torch.no_grad():
        before = model(x, layout)
    save_adapter(adapter, folder)
    loaded = load_adapter(folder, model)
    with loaded.attach(model), torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(before, model(x, layout), strict=True))
    return loaded


@pytest.fixture
def round_trip() -> Callable[..., object]:
    return reloads_the_same
